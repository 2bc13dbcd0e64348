/*
 * backup_fleece.c - a running VM's disk read whole for a backup through image fleecing
 * (fleece.h says what QEMU is asked and why; backup.c says where this fits): the
 * overlay made, the point in time taken (frozen, with the new dirty bitmap, in one
 * transaction), QEMU's NBD export read by nbd.c into the chunk pipeline, the objects
 * torn down. Any failure before the read falls back to QEMU's copy (backup.c).
 */
#include "backup_int.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "chunkstore.h"
#include "fleece.h"
#include "json.h"
#include "nbd.h"
#include "util.h"

#define BACKUP_FLEECE_WAIT_MS 20  /* query-jobs while a cancelled fleecing job goes */
#define BACKUP_FLEECE_WAITS   250 /* ... at most this many times (5 s) */

static void fleece_down_send(struct bjob *job);

static void fleece_wait_cb(uv_timer_t *timer)
{
	struct bjob *job = timer->data;

	if (backup_job_gone(job))
		return;
	fleece_down_send(job);
}

static void fleece_down_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;
	struct fleece_names n;

	if (backup_job_gone(job))
		return;
	fleece_names_make(job->disk, &n);
	/* The overlay's node is the cancelled job's target until the job is gone. */
	if (job->fleece_step == FLEECE_STEP_WAIT && error == NULL && fleece_job_listed(&n, ret) &&
	    ++job->fleece_waits < BACKUP_FLEECE_WAITS) {
		uv_timer_start(&job->poll, fleece_wait_cb, BACKUP_FLEECE_WAIT_MS, 0);
		return;
	}
	/* Each step may find nothing to undo: not an error. */
	if (error)
		log_debug("backup %s: disk %s: fleecing teardown: %s", job->id,
			  job->op->disks[job->disk].name, error);
	job->fleece_step++;
	fleece_down_send(job);
}

/* The teardown's next step, or its end: fleece_then. */
static void fleece_down_send(struct bjob *job)
{
	struct fleece_names n;
	const char *cmd;
	struct json_object *args;
	struct kerr err;

	fleece_names_make(job->disk, &n);
	args = fleece_teardown_step(&n, job->fleece_step, &cmd);
	if (args == NULL) {
		void (*then)(struct bjob * job) = job->fleece_then;

		job->fleece_then = NULL;
		then(job);
		return;
	}
	if (vm_qmp(job->op->vm, cmd, args, BACKUP_JOB_TIMEOUT, fleece_down_cb, job, &err) < 0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}

/* Remove the disk's fleecing objects from QEMU (whatever of them exists), waiting for
 * its job to go before its node; then then(job). */
static void fleece_down(struct bjob *job, void (*then)(struct bjob *job))
{
	job->fleece_step = 0;
	job->fleece_waits = 0;
	job->fleece_then = then;
	fleece_down_send(job);
}

/* The same, now, no one waiting (a failure or a cancel frees the job right after): the
 * overlay's node may outlive its job's cancel; the next backup's teardown removes it. */
void backup_fleece_drop(struct bjob *job)
{
	struct fleece_names n;
	const char *cmd;
	struct json_object *args;
	struct kerr err;

	fleece_names_make(job->disk, &n);
	for (int step = 0; (args = fleece_teardown_step(&n, step, &cmd)) != NULL; step++) {
		if (step == FLEECE_STEP_WAIT) {
			json_object_put(args);
			continue;
		}
		vm_qmp(job->op->vm, cmd, args, BACKUP_JOB_TIMEOUT, NULL, NULL, &err);
	}
	job->fleece = false;
}

/* After a fleecing that failed was torn down: this disk, and the rest of the backup's,
 * are read as before (drive-backup into a raw work file). */
static void fleece_copy_instead(struct bjob *job)
{
	job->fleece = false;
	if (job->fleece_tx) {
		/* The transaction added this backup's bitmap, and the copy's adds it again:
		 * removed first (one QMP connection: QEMU runs the two in order). */
		struct json_object *args = json_object_new_object();
		struct fleece_names n;
		char name[80];
		struct kerr err;

		fleece_names_make(job->disk, &n);
		snprintf(name, sizeof(name), "kumo-%s", job->id);
		json_object_object_add(args, "node", json_object_new_string(n.device));
		json_object_object_add(args, "name", json_object_new_string(name));
		vm_qmp(job->op->vm, "block-dirty-bitmap-remove", args, BACKUP_JOB_TIMEOUT, NULL,
		       NULL, &err);
		job->fleece_tx = false;
	}
	backup_disk_read(job);
}

/* Fleecing did not work on this QEMU or disk (why): tear it down, then copy instead.
 * The backup says so (live_read "copy", live_read_reason). */
static void fleece_fallback(struct bjob *job, const char *why)
{
	if (!job->fleece_why[0])
		snprintf(job->fleece_why, sizeof(job->fleece_why), "disk %s: %s",
			 job->op->disks[job->disk].name, why);
	log_warnx("vm %s: backup %s: disk %s: no fleecing (%s); copying the disk instead",
		  job->op->vm->inst.name, job->id, job->op->disks[job->disk].name, why);
	job->fleece_off = true;
	job->error[0] = '\0';
	fleece_down(job, fleece_copy_instead);
}

/* Thread: the overlay (an empty qcow2 of the disk's size, QEMU's user's) and the
 * socket's path, both in the backup's work directory, which only that user and root
 * may enter. */
static void fleece_prepare_work(struct bjob *job)
{
	struct vm_disk *d = &job->op->disks[job->disk];
	char *info_argv[] = {"qemu-img", "info", "-U", "--output=json", d->abs, NULL};
	_cleanup_free_ char *out = NULL;
	struct json_object *info = NULL;
	char size[32];
	int64_t vsize;

	snprintf(job->overlay, sizeof(job->overlay), "%s/%s.fleece.qcow2", job->tmpdir, d->name);
	if ((size_t)snprintf(job->nbd_sock, sizeof(job->nbd_sock), "%s/nbd.sock", job->tmpdir) >=
	    sizeof(job->nbd_sock)) {
		snprintf(job->error, sizeof(job->error),
			 "the store's work directory is too long a path for a socket");
		return;
	}
	if (backup_run_wait(info_argv, &out) != 0 || out == NULL ||
	    (info = json_tokener_parse(out)) == NULL ||
	    (vsize = json_get_int(info, "virtual-size", -1)) <= 0) {
		json_object_put(info);
		snprintf(job->error, sizeof(job->error), "qemu-img info of %s failed", d->abs);
		return;
	}
	json_object_put(info);
	snprintf(size, sizeof(size), "%lld", (long long)vsize);
	{
		char *create_argv[] = {"qemu-img", "create",	 "-q", "-f",
				       "qcow2",	   job->overlay, size, NULL};

		if (backup_run_wait(create_argv, NULL) != 0) {
			snprintf(job->error, sizeof(job->error), "qemu-img create of %s failed",
				 job->overlay);
			return;
		}
	}
	/* QEMU opens it after it dropped root (-runas). */
	if (chown(job->overlay, job->qemu_uid, job->qemu_gid) < 0)
		snprintf(job->error, sizeof(job->error), "cannot hand %s to the qemu user: %s",
			 job->overlay, strerror(errno));
}

static void fleece_added_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;
	struct fleece_names n;
	char bitmap[80];

	if (backup_job_gone(job))
		return;
	if (error) {
		fleece_fallback(job, error);
		return;
	}
	/* The point in time: frozen around the transaction as a copy's is (tx_send ->
	 * drive_backup_cb -> backup_fleece_started). */
	fleece_names_make(job->disk, &n);
	snprintf(bitmap, sizeof(bitmap), "kumo-%s", job->id);
	json_object_put(job->tx);
	job->tx = fleece_transaction_args(&n, bitmap);
	backup_guest_freeze(job);
}

/* The teardown of what an earlier agent may have left is done: add the overlay. */
static void fleece_add(struct bjob *job)
{
	struct fleece_names n;
	struct kerr err;

	fleece_names_make(job->disk, &n);
	if (vm_qmp(job->op->vm, "blockdev-add", fleece_overlay_args(&n, job->overlay),
		   BACKUP_JOB_TIMEOUT, fleece_added_cb, job, &err) < 0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}

static void fleece_prepare_after(struct bjob *job)
{
	if (job->error[0]) {
		fleece_fallback(job, job->error);
		return;
	}
	/* First clear what a killed agent may have left under these names. */
	fleece_down(job, fleece_add);
}

/* Read the running disk job->disk whole through fleecing: the overlay first (a thread
 * step), then QEMU's side on the loop. */
void backup_fleece_start(struct bjob *job)
{
	job->fleece = true;
	job->fleece_tx = false;
	backup_pool_run(job, fleece_prepare_work, fleece_prepare_after);
}

/* Thread: the export, chunk by chunk, into the store (chunkpipe.h); zeros known from
 * block status are named without reading. Paced here when limited: QEMU's job copies
 * nothing on its own any more. */
static void fleece_chunk_work(struct bjob *job)
{
	struct json_object *chunks = json_object_new_array();
	struct chunkpipe_source src = {.cancelled = backup_pipe_cancelled,
				       .cancel_data = job,
				       .key = job->key,
				       .rate_bytes_s = job->rate_bytes_s,
				       .progress_bytes = &job->piped_bytes};
	struct chunkpipe_result res;
	struct nbd_conn *c = NULL;
	struct fleece_names n;
	struct kerr err;
	int ret;

	json_object_object_add(job->mdisk, "chunks", chunks);
	fleece_names_make(job->disk, &n);
	if (nbd_conn_open(job->nbd_sock, n.node, &c, &err) < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	nbd_conn_source(c, &src);
	__atomic_store_n(&job->piped_size, (uint64_t)src.size, __ATOMIC_RELAXED);
	ret = chunkpipe_store(job->store, &src, chunkpipe_threads(), chunks, &res, &err);
	nbd_conn_close(c);
	if (ret < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	backup_disk_stored(job, &res, src.size);
}

/* The disk is stored (or failed): its fleecing objects go, then the next disk. */
static void fleece_done(struct bjob *job)
{
	job->fleece = false;
	job->fleece_tx = false;
	unlink(job->overlay);
	unlink(job->nbd_sock);
	if (!job->error[0])
		job->fleeced++;
	backup_chunk_after(job);
}

/*
 * The read is over: was the point in time held all along? The sync=none job is what
 * copies a block aside before the guest overwrites it; had it failed meanwhile (the
 * overlay could not take a copy: the store full), later reads of those blocks gave
 * the guest's new data. Only a job still running proves the view whole.
 */
static void fleece_checked_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;
	struct fleece_names n;

	if (backup_job_gone(job))
		return;
	fleece_names_make(job->disk, &n);
	if (!job->error[0] && (error || !fleece_job_running(&n, ret)))
		snprintf(job->error, sizeof(job->error),
			 "QEMU's fleecing job ended before the disk was read (%s): the copy "
			 "is not of one point in time",
			 error ? error : "see the agent's log and QEMU's");
	fleece_down(job, fleece_done);
}

static void fleece_chunk_after(struct bjob *job)
{
	struct kerr err;

	uv_timer_stop(&job->poll); /* backup_store_progress_cb */
	if (vm_qmp(job->op->vm, "query-jobs", NULL, BACKUP_JOB_TIMEOUT, fleece_checked_cb, job,
		   &err) < 0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}

static void fleece_exported_cb(struct qmp *q, struct json_object *ret, const char *error,
			       void *data)
{
	struct bjob *job = data;

	if (backup_job_gone(job))
		return;
	if (error) {
		fleece_fallback(job, error);
		return;
	}
	job->piped_bytes = job->piped_size = 0; /* no work runs: plain stores */
	uv_timer_start(&job->poll, backup_store_progress_cb, BACKUP_POLL_MS, BACKUP_POLL_MS);
	backup_pool_run(job, fleece_chunk_work, fleece_chunk_after);
}

static void fleece_served_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;
	struct fleece_names n;
	struct kerr err;

	if (backup_job_gone(job))
		return;
	if (error) {
		fleece_fallback(job, error);
		return;
	}
	fleece_names_make(job->disk, &n);
	if (vm_qmp(job->op->vm, "block-export-add", fleece_export_args(&n), BACKUP_JOB_TIMEOUT,
		   fleece_exported_cb, job, &err) < 0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}

/* The transaction's answer (drive_backup_cb thawed the guest already). */
void backup_fleece_started(struct bjob *job, const char *error)
{
	struct kerr err;

	if (error) {
		/* Atomic: neither the bitmap nor the job exists. */
		fleece_fallback(job, error);
		return;
	}
	job->fleece_tx = true;
	if (vm_qmp(job->op->vm, "nbd-server-start", fleece_server_args(job->nbd_sock),
		   BACKUP_JOB_TIMEOUT, fleece_served_cb, job, &err) < 0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}
