/*
 * fleece.h - the QMP of image fleecing for a live VM's full backup (backup.c runs it).
 *
 * A running VM's disk is read at a point in time without copying it first: QEMU 7.2's
 * fleecing, as its iotest "image-fleecing" (backup(sync=none)-based) and libvirt's
 * pull-mode backups do it:
 *
 *   [guest] -> dN (the disk's node)  <-- backing --  kfl-dN (qcow2 overlay, empty,
 *                                                     in the backup's work dir)
 *   blockdev-backup sync=none dN -> kfl-dN: a copy-before-write filter above dN copies
 *   the old content of every block the guest overwrites into kfl-dN first, so kfl-dN
 *   (its own clusters, else dN's through the backing) reads as dN did at the moment
 *   the job started. That moment is one QMP transaction with the new persistent dirty
 *   bitmap (kumo-BACKUP), so the next incremental moves exactly what changed after it.
 *   nbd-server-start on a unix socket + block-export-add kfl-dN (read-only): the agent
 *   reads the export with nbd.c, chunk by chunk, straight into the chunk pipeline.
 *
 * Only the blocks the guest writes during the backup are copied (into the overlay),
 * instead of the whole disk into a raw work file and back. The teardown (export,
 * server, job, node) is one list, also sent before a setup: what an agent killed
 * mid-backup left in QEMU is cleared by the next backup.
 *
 * Names are per disk index, not per backup (node names are at most 31 characters and
 * a leftover must be found by the next backup): the instance's operation lock keeps
 * one backup per VM at a time.
 *
 * Pure: JSON built here, sent by the caller.
 */
#ifndef KUMO_FLEECE_H
#define KUMO_FLEECE_H

#include <json-c/json.h>
#include <stddef.h>

/* The names of disk i's fleecing objects in QEMU. */
struct fleece_names {
	char device[16]; /* the disk's node, as qemuargs.c names it: d0, d1, ... */
	char node[32];	 /* the overlay's node, also the export's id and name */
	char job[40];	 /* the blockdev-backup sync=none job */
};
void fleece_names_make(size_t disk, struct fleece_names *n);

/* blockdev-add of the overlay: qcow2 at path (made by qemu-img, the disk's virtual
 * size), its backing the disk's node. */
struct json_object *fleece_overlay_args(const struct fleece_names *n, const char *path);

/* The point in time: transaction [block-dirty-bitmap-add bitmap (persistent),
 * blockdev-backup sync=none into the overlay]. */
struct json_object *fleece_transaction_args(const struct fleece_names *n, const char *bitmap);

/* nbd-server-start on the unix socket path. */
struct json_object *fleece_server_args(const char *path);

/* block-export-add of the overlay, read-only, exported under n->node. */
struct json_object *fleece_export_args(const struct fleece_names *n);

/*
 * The teardown, step by step (0, 1, ... until it returns NULL): *cmd gets the command,
 * the return its arguments. Steps: block-export-del (hard: a reader still connected is
 * dropped), nbd-server-stop, block-job-cancel (force), then query-jobs (the caller
 * waits until n->job is gone: the node is in use until then), blockdev-del of the
 * overlay. Every step may fail harmlessly (nothing of it there).
 */
#define FLEECE_STEP_WAIT 3 /* the step that is query-jobs */
struct json_object *fleece_teardown_step(const struct fleece_names *n, int step, const char **cmd);

/* Whether query-jobs' answer (an array) still lists n->job. */
int fleece_job_listed(const struct fleece_names *n, struct json_object *jobs);

/* Whether it lists n->job as running: the point in time still held (a failed job has
 * stopped copying old blocks aside, and dismissed itself). */
int fleece_job_running(const struct fleece_names *n, struct json_object *jobs);

#endif
