/*
 * backup_int.h - what the agent's VM backups share between backup.c (the job: store,
 * freeze, QEMU's copy and incremental jobs, manifest, restore) and backup_fleece.c (a
 * running VM's full read from an NBD export of a fleecing node): the job and the
 * steps both take. Private to those two files.
 */
#ifndef KUMO_BACKUP_INT_H
#define KUMO_BACKUP_INT_H

#include "agentd.h"

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "chunkpipe.h"

#define BACKUP_POLL_MS	   250	 /* query-jobs while drive-backup runs; progress while chunking */
#define BACKUP_JOB_TIMEOUT 10000 /* ms for one QMP command */
#define BACKUP_READ_PHASES 2	 /* per disk: read it, chunk it */

struct chunkcrypt_key;

/* One backup or restore in progress: the op it serves and where each step is. */
struct bjob {
	struct inst_op *op;
	struct agent *agent;
	bool restore;
	bool live;	 /* the VM runs: read through QEMU (fleecing or drive-backup) */
	bool direct;	 /* stopped: chunk the disk file's chain itself */
	char parent[65]; /* the backup an incremental one builds on, or "" */
	struct json_object *pmanifest;	  /* ... its manifest, NULL when it cannot be used */
	struct json_object *pdisk;	  /* ... its entry for the disk at work */
	bool incr;			  /* the disk at work is read incrementally */
	bool all_incr;			  /* every disk so far was */
	char full_reason[200];		  /* why a backup with a parent is full after all */
	char revert_record[PATH_MAX];	  /* the VM's snapshot revert record (snaprevert.h) */
	void (*then)(struct inst_op *op); /* restore within a create: its next step */
	bool resume;			  /* container: this backup paused it */
	bool block_job;			  /* QEMU's backup job for job->disk runs */
	bool manifest_written;		  /* the store names this backup */
	uid_t uid_base;			  /* container: its root's uid on the host */
	bool force_full;		  /* asked full: the parent's bitmaps only go */
	uint64_t rate_bytes_s;		  /* the disk reads' limit, 0: none */
	uint64_t piped_bytes, piped_size; /* stopped: chunk_work's reach (atomic) */
	char target[PATH_MAX];		  /* an incremental read's qcow2 (dirty clusters only) */
	char target_node[32];		  /* ... added to QEMU as this node (fleece.h), "" none */
	size_t node_targets;		  /* disks QEMU copied into such a node */
	int64_t close_ms;		  /* closing those nodes (blockdev-del) */
	int64_t close_started_ms;
	char id[65];
	char store[PATH_MAX]; /* absolute */
	int store_fd;	      /* a backup's store root, opened before its first chunk; -1 */
	char tmpdir[PATH_MAX];
	char raw[PATH_MAX]; /* the disk at work, as a raw file */
	uid_t qemu_uid;
	gid_t qemu_gid;
	bool qemu_uid_own; /* the VM's own uid (uid.c), not --qemu-user's shared one */
	size_t disk;	   /* index into op->disks */
	int64_t started_ms;

	uv_work_t work;
	uv_timer_t poll;
	uint64_t poll_ms; /* the next query-jobs after this long */
	bool poll_open;
	bool querying;		/* a query-jobs is in flight */
	bool poll_soon;		/* ... and QEMU said the job ended meanwhile: ask again at once */
	struct bjob *next_live; /* backup.c's list of VM backups, for QEMU's job events */
	/* The disk's transaction is sent, its answer not read yet; ended_early: its job
	 * concluded meanwhile (a job with nothing to copy ends inside the transaction,
	 * its events before the answer). */
	bool tx_inflight, ended_early;

	/* where the time went (result.backup.timings), summed over the disks */
	int64_t job_started_ms; /* QEMU's copy job of the disk at work: its transaction answered */
	int64_t job_ms;		/* QEMU's copy jobs, until the agent knew each ended */
	const char *job_end_by; /* "event" or "poll": how the last job's end was noticed */
	int64_t chunk_started_ms, chunk_ms; /* the disks' thread steps (map, read, store) */
	int64_t map_ms;			    /* ... of which the incrementals' maps */
	int64_t manifest_ms;		    /* the store's flush and the manifest */
	int64_t prepare_ms;		    /* the job's start to its store prepared */
	uint64_t parent_reads;		    /* the incrementals' parent chunks read back */
	uint64_t targets_made;	    /* bit i: disk i's incremental target made here, not by QEMU */
	char error[256];	    /* a thread step's failure, "" if none */
	struct chunkcrypt_key *key; /* an encrypted store's keys, NULL: plain; wiped in free */
	bool key_bad;		    /* the command had a key that did not parse: the job fails */

	/* fsfreeze (qga.c) around each live disk's point in time */
	struct json_object *tx;	 /* the transaction to send once frozen */
	bool freeze_sent;	 /* a freeze may have reached the guest: thaw it */
	char qga_path[PATH_MAX]; /* the VM's guest agent socket */
	int64_t frozen_us;	 /* when the freeze was asked */
	char freeze_why[200];	 /* why a disk was not frozen, "" if every one was */
	bool no_guest_agent;	 /* none answered: later disks are not tried (each costs 5 s) */

	/* a live full read from an NBD export of a fleecing node (fleece.h) */
	bool fleece;		/* the disk at work is read so (its QEMU objects may exist) */
	bool fleece_tx;		/* ... its transaction succeeded: its bitmap exists */
	int fleece_step;	/* ... the setup step QEMU is asked (fleece.h) */
	bool fleece_off;	/* fleecing failed once: this backup's disks are copied */
	int fleeced, copied;	/* disks read whole by fleecing, by the raw copy */
	size_t cleared_disk;	/* 1 + the disk a leftover fleecing was cleared from, 0: none */
	char fleece_why[200];	/* why a disk was copied instead, "" if none was */
	char overlay[PATH_MAX]; /* the fleecing overlay (qcow2, in tmpdir) */
	char nbd_sock[108];	/* QEMU's NBD server (fleece_sock_path): sun_path's size */
	pid_t nbd_server;	/* ... the VM's QEMU, the one process that may serve it */
	/* disks whose leftover fleecing QEMU was asked for (not known to be none) */
	unsigned leftover_checks;

	/* what the backup found */
	struct json_object *manifest; /* backup: being built; restore: as read */
	struct json_object *mdisk;    /* the disk at work's manifest entry */
	uint64_t read_bytes, new_bytes, total_bytes, chunk_count;
};

typedef void (*work_fn)(struct bjob *job);
typedef void (*after_fn)(struct bjob *job);

/* backup.c */
/* The uid and gid vm's QEMU runs as; *own: the VM's own uid (uid.c), not a shared
 * one. -1 when --qemu-user names no user. */
int backup_qemu_ids(struct vm *vm, uid_t *uid, gid_t *gid, bool *own);
/* At each safe point: true when the job is over (cancelled, the agent stopping) and
 * freed; the caller returns at once. */
bool backup_job_gone(struct bjob *job);
/* Fail the op with why, undo what QEMU holds of the backup, free the job. */
void backup_job_fail(struct bjob *job, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* work(job) on the thread pool, then after(job) on the loop (unless the job is gone). */
void backup_pool_run(struct bjob *job, work_fn work, after_fn after);
/* Thread: run argv for job and wait; *out (if not NULL) gets its stdout. Killed after
 * timeout_ms (0: never) or when the job is cancelled. Its exit status, or -1. */
int backup_run_wait(struct bjob *job, char *const argv[], char **out, unsigned timeout_ms);
/* What a qemu-img that only looks at or makes a small file (info, create) may take. */
#define BACKUP_QEMU_IMG_QUICK_MS 60000
/* Thread: the pipeline's result for the disk at work, into the job and its manifest entry. */
void backup_disk_stored(struct bjob *job, const struct chunkpipe_result *res, int64_t size);
/* The pipeline's cancel check (data: the job). */
bool backup_pipe_cancelled(void *data);
/* Loop timer (job->poll): how far the pipeline got, as the op's progress. */
void backup_store_progress_cb(uv_timer_t *timer);
/* Freeze the guest, then send job->tx (the disk's point in time); its answer goes to
 * backup_fleece_started() for a fleecing read. */
void backup_guest_freeze(struct bjob *job);
/* Thaw what the job's last freeze may have frozen; idempotent. */
void backup_guest_thaw(struct bjob *job);
/* Read disk job->disk: the way it is read is chosen here. */
void backup_disk_read(struct bjob *job);
/* A disk stored (or failed, job->error): the next disk, or the manifest. */
void backup_chunk_after(struct bjob *job);

/* backup_fleece.c */
/* Read the running disk job->disk whole through fleecing (falls back to the copy). */
void backup_fleece_start(struct bjob *job);
/* The fleecing transaction's answer (the guest thawed already). */
void backup_fleece_started(struct bjob *job, const char *error);
/* Remove the disk's fleecing objects from QEMU, in order, no one waiting. */
void backup_fleece_drop(struct bjob *job);
/* Remove what a killed agent may have left of a fleecing of the disk; then then(job). */
void backup_fleece_clear(struct bjob *job, void (*then)(struct bjob *job));
/* What this agent knows of the backup nodes in a VM's QEMU (the clear's shortcut). */
bool backup_nodes_clean(const struct vm *vm);
void backup_node_added(struct vm *vm);
void backup_node_removed(struct vm *vm, const char *error);

#endif
