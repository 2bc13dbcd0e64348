/*
 * fleece.h - the QMP of image fleecing for a live VM's full backup (backup.c runs it),
 * and of the copy job a live backup falls back to or reads an incremental with
 * (fleece_copy_tx_args: kept here, pure, beside the fleecing's own transaction).
 *
 * A running VM's disk is read at a point in time without copying it first: QEMU 7.2's
 * fleecing with a hand-built copy-before-write filter and a snapshot-access node, as
 * its iotest "image-fleecing" (use_cbw, use_snapshot_access_filter) does it:
 *
 *   [guest device] -> kfl-cbw-dN (copy-before-write) --file--> dN (the disk's node)
 *                          |  --target--> kfl-dN (qcow2, empty, the disk's size)
 *   kfl-sa-dN (snapshot-access, file kfl-cbw-dN) <- NBD export "kfl-dN" (unix socket)
 *
 * The filter copies the old content of every block the guest overwrites into kfl-dN
 * first; kfl-sa-dN reads the disk as it was when the filter went in front of it (the
 * device's "drive" property set to it by qom-set: the point in time). The new
 * persistent dirty bitmap (kumo-BACKUP) is added just before, under the same freeze,
 * so a write in between is in this backup and marked for the next: never lost.
 *
 * Why not blockdev-backup sync=none: the filter it inserts uses
 * on-cbw-error=break-guest-write, and a disk's default werror=enospc then STOPS the
 * VM when a copy fails (the store, which holds the overlay, full). Here
 * on-cbw-error=break-snapshot: a failed or slow (cbw-timeout) copy breaks the
 * snapshot, every later read of kfl-sa-dN fails (EACCES), the backup fails, and the
 * guest's write goes through. A read that ends with a last good read therefore saw
 * one point in time throughout.
 *
 * The teardown (export, server, access node, the device back on dN, filter, overlay)
 * is one list, also run before a setup and before an incremental: what an agent
 * killed mid-backup left in QEMU is cleared by the next backup. qom-set of the drive
 * to the node it already has aborts QEMU 7.2 (an assertion in
 * bdrv_replace_child_noperm): the device goes back to dN only when qom-get says it
 * is on the filter.
 *
 * Names are per disk index, not per backup (node names are at most 31 characters and
 * a leftover must be found by the next backup): the instance's operation lock keeps
 * one backup per VM at a time.
 *
 * Where QEMU's NBD server listens (fleece_sock_path): RUN_DIR/fleece/UID/HASH.sock, in
 * the agent's own runtime directory (--run-dir: several agents may share a machine, the
 * test lab), in a directory only the VM's QEMU uid may enter. A unix socket's path is
 * at most FLEECE_SOCK_MAX - 1 bytes, so it is checked, and so is that the uid can walk
 * down to it (fleece_dir_reachable): either failing makes the backup copy the disk
 * instead, saying why.
 *
 * Pure but for fleece_sock_dir_make and fleece_dir_reachable (the socket's
 * directories): JSON built here, sent by the caller.
 */
#ifndef KUMO_FLEECE_H
#define KUMO_FLEECE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

#define FLEECE_SOCK_MAX 108 /* sizeof(struct sockaddr_un.sun_path), its NUL included */

/* The names of disk i's fleecing objects in QEMU. */
struct fleece_names {
	char device[16]; /* the disk's node, as qemuargs.c names it: d0, d1, ... */
	char node[32];	 /* the overlay's node (the filter's target), also the export */
	char cbw[32];	 /* the copy-before-write filter */
	char access[32]; /* the snapshot-access node the export reads */
	char qdev[64];	 /* the QOM path of the device whose "drive" is switched */
};
/* bus: the disk's spec "bus" (virtio, scsi, sata; NULL: virtio), as qemuargs.c
 * makes its device (id diskN). */
void fleece_names_make(size_t disk, const char *bus, struct fleece_names *n);

/* blockdev-add of the overlay: qcow2 at path (made by qemu-img, the disk's virtual
 * size), no backing (snapshot-access reads unchanged blocks from the disk). */
struct json_object *fleece_overlay_args(const struct fleece_names *n, const char *path);

/* blockdev-add of the copy-before-write filter over the disk's node into the
 * overlay: on-cbw-error break-snapshot, a copy waits at most timeout_s seconds. */
struct json_object *fleece_cbw_args(const struct fleece_names *n, unsigned timeout_s);

/*
 * The bitmap of the point in time: transaction [block-dirty-bitmap-add (persistent)],
 * one bit per chunk (granularity CHUNKSTORE_CHUNK_SIZE, which bitmaps_thread gives a
 * stopped disk's too). A write of any size marks the whole chunks it touches, so the
 * next incremental's job copies them whole and each is stored from QEMU's copy alone:
 * with QEMU's default (the disk's cluster, 64 KiB) a chunk the change covered in part
 * was its parent's chunk read back from the store, checked and laid under the change,
 * the largest step of a small incremental (26-55 ms of 130 for a 10 MiB write, the
 * parent's chunk cold on the shared pool). The cost: a small scattered write makes
 * the job copy 4 MiB where it copied a cluster (bounded by the chunks touched, as the
 * chunks stored always were). A bitmap made finer by an older agent still works: its
 * partly covered chunks are laid over their parent's as before (backupmap.c).
 */
struct json_object *fleece_transaction_args(const struct fleece_names *n, const char *bitmap);

/*
 * The transaction of a running disk's read by QEMU's own copy job instead (an
 * incremental, or a whole read whose fleecing failed): block-dirty-bitmap-add of the
 * new persistent bitmap (the point in time) and drive-backup job_id of the disk's
 * node into target. parent_bitmap NULL: the whole disk, a raw target (sync full).
 * Else an incremental of the clusters parent_bitmap marks into a qcow2 target, with
 * sync "bitmap" and bitmap-mode "never": QEMU leaves parent_bitmap as it was, every
 * write since the parent's point in time still marked, whatever becomes of the job or
 * of the backup after it. (sync "incremental" is bitmap-mode "on-success": a job that
 * succeeds clears the parent's bitmap down to the writes after this point in time, so
 * a backup that then failed left the next incremental without the writes in between,
 * reported good.) The backup drops parent_bitmap itself once it succeeded.
 * rate_bytes_s: the job's speed limit, 0 none. target_node: the target exists already
 * (an incremental's empty qcow2 of the disk's size, backup_target_create) and was
 * added as this node (fleece_target_add_args, sent just before): blockdev-backup into
 * it. NULL: drive-backup, QEMU creates target (mode "absolute-paths": a qcow2 made in
 * QEMU's monitor, about half of the transaction's time).
 */
struct json_object *fleece_copy_tx_args(const struct fleece_names *n, const char *job_id,
					const char *bitmap, const char *parent_bitmap,
					const char *target, uint64_t rate_bytes_s,
					const char *target_node);

/*
 * blockdev-add of an incremental's target qcow2 at path (made by the agent) as node,
 * with cache.no-flush on it and its file: QEMU never fdatasyncs it. drive-backup
 * opened the target with the disk's own cache mode, and closing it at the job's end
 * flushed it to disk: two fdatasyncs, 15-20 ms of a 10 MiB incremental's ~20 ms job,
 * for a work file the agent reads once and deletes (the backup's durability is its
 * chunks' and manifest's, chunkstore.h). Removed with blockdev-del once the job
 * concluded: the close writes QEMU's qcow2 tables out to the file (no-flush skips only
 * the fdatasync) before the agent reads them.
 */
struct json_object *fleece_target_add_args(const char *node, const char *path);

/* qom-set of the device's drive: onto the filter (the point in time) or back. */
struct json_object *fleece_insert_args(const struct fleece_names *n, int onto_filter);

/* blockdev-add of the snapshot-access node over the filter (after the qom-set: the
 * filter's permissions conflict with the device's while it is not in front). */
struct json_object *fleece_access_args(const struct fleece_names *n);

/* nbd-server-start on the unix socket path. */
struct json_object *fleece_server_args(const char *path);

/* block-export-add of the access node, read-only, exported under n->node. */
struct json_object *fleece_export_args(const struct fleece_names *n);

/*
 * The setup, step by step (FLEECE_SETUP_OVERLAY up to FLEECE_SETUP_EXPORT; the caller
 * sends each once the one before succeeded): *cmd gets the command, the return its
 * arguments, NULL past the last. overlay: the overlay's path; sock: the NBD server's
 * socket; cbw_timeout_s: the filter's. Between FLEECE_SETUP_FILTER and
 * FLEECE_SETUP_INSERT lies the point in time, which is not a step here: the guest
 * frozen and fleece_transaction_args() sent; the qom-set (INSERT) then puts the filter
 * in front of the disk, and the guest thaws at its answer. The access node only after
 * it (its permissions conflict with the device's before), then the server and the
 * export.
 */
enum fleece_setup {
	FLEECE_SETUP_OVERLAY,
	FLEECE_SETUP_FILTER,
	FLEECE_SETUP_INSERT,
	FLEECE_SETUP_ACCESS,
	FLEECE_SETUP_SERVER,
	FLEECE_SETUP_EXPORT,
};
struct json_object *fleece_setup_step(const struct fleece_names *n, int step, const char *overlay,
				      const char *sock, unsigned cbw_timeout_s, const char **cmd);

/*
 * The teardown, step by step (0, 1, ... until it returns NULL): *cmd gets the command,
 * the return its arguments. Steps: block-export-del (hard), nbd-server-stop,
 * blockdev-del of the access node, qom-get of the device's drive, qom-set back onto
 * the disk's node (the caller skips it unless fleece_filter_in_front() of the
 * qom-get's answer), blockdev-del of the filter, of the overlay. Every step may fail
 * harmlessly (nothing of it there).
 */
#define FLEECE_STEP_QOM_GET 3
#define FLEECE_STEP_QOM_SET 4
struct json_object *fleece_teardown_step(const struct fleece_names *n, int step, const char **cmd);

/* Whether qom-get's answer (the device's drive) is the filter. */
int fleece_filter_in_front(const struct fleece_names *n, struct json_object *drive);

/*
 * The NBD socket of a fleecing read of the VM whose directory is vm_dir and whose
 * QEMU runs as uid, under the agent's runtime directory run_dir: dir (dirlen bytes)
 * gets RUN_DIR/fleece/UID, sock (socklen bytes, at most FLEECE_SOCK_MAX) DIR/HASH.sock,
 * HASH 16 hex digits of vm_dir: VMs that share a uid (--qemu-uid-base 0, --qemu-user
 * root) never share a socket, which one QEMU's bind would take from the other's
 * reader. Returns 0, or < 0 with err when sock would not fit a unix socket address
 * (naming its length and --run-dir).
 */
int fleece_sock_path(const char *run_dir, uid_t uid, const char *vm_dir, char *dir, size_t dirlen,
		     char *sock, size_t socklen, struct kerr *err);

/*
 * Make the socket's directory RUN_DIR/fleece/UID (fleece_sock_path's dir) for uid (its
 * group gid): run_dir must exist, be the agent's (root's) and writable by no one else,
 * and so must every directory above it (or be sticky, as /tmp: no one else could move
 * run_dir then);
 * fleece/ is made or kept the agent's, 0711; fleece/UID made or kept (a directory,
 * never a link), handed to uid:gid, 0700. All through directory fds (openat with
 * O_NOFOLLOW, mkdirat, fchown, fchmod): no path is looked up twice, so no one can swap
 * a directory between a check and a chown. Returns 0, or < 0 with err. Needs root (the
 * chown).
 */
int fleece_sock_dir_make(const char *run_dir, uid_t uid, gid_t gid, struct kerr *err);

/*
 * Whether uid (group gid) may walk from / down into dir: every directory above it
 * searchable by that uid by its mode bits (owner, group or one of the uid's
 * supplementary groups, then other; root always; ACLs not looked at).
 * Returns 0, or < 0 with err naming the first directory it cannot pass. dir itself is
 * not checked: the caller makes it that uid's.
 */
int fleece_dir_reachable(const char *dir, uid_t uid, gid_t gid, struct kerr *err);

#endif
