/*
 * backup.c - backups and restores of a VM's disks into the chunk store
 * (common/chunkstore.h), as two instance actions of the vm driver:
 *
 *   backup  {backup: ID, store: PATH}   -> result {"backup": {kind, consistency,
 *                                          read_bytes, new_bytes, total_bytes,
 *                                          chunk_count, disks: [...]}}
 *   restore {backup: ID, store: PATH}   -> the stopped VM's disks hold the backup's
 *
 * STORE is relative to the shared pool, which the controller and every host mount, so
 * a backup made on one host restores on any other.
 *
 * How a disk is read, per disk:
 *   - a running (or paused) VM is never stopped. Read whole (a full backup, or an
 *     incremental whose bitmap cannot be used): image fleecing (fleece.h, the flow
 *     in backup_fleece.c): a copy-before-write filter put in front of the disk copies
 *     the blocks the guest overwrites into a qcow2 overlay in STORE/tmp/ID/ (a copy
 *     that fails breaks the backup, never the guest's write), a snapshot-access node
 *     reads the disk as it was, exported by QEMU's NBD server on a unix socket in the
 *     VM's run directory and read by nbd.c straight into the chunk pipeline: nothing
 *     is copied but what the guest writes meanwhile. When any
 *     of that fails (an older QEMU, a device that cannot switch), the backup's disks are
 *     copied as before and the result says why (live_read, live_read_reason): QMP
 *     drive-backup with sync=full copies the disk as it was when the job started into
 *     a raw file under STORE/tmp/ID/, which is then chunked. Incremental: blockdev-backup
 *     sync=bitmap (bitmap-mode never: the parent's bitmap is dropped only once the backup
 *     succeeded) of the clusters the parent's dirty bitmap marks, into a qcow2 the agent
 *     made and QEMU opened as a node that never fdatasyncs (fleece.h), closed once the
 *     job concluded.
 *   - a stopped VM: read straight from the files of its qcow2 chain where `qemu-img
 *     map` says the data lies (backupmap.c); a chain that cannot be read so
 *     (compressed clusters) is converted to a raw work file first.
 * Either is stored by common/chunkpipe.c on libuv's thread pool (read in order,
 * hashed and compressed by two threads per core, chunks already in the store skipped,
 * holes and zeros named without hashing); the manifest is written last, after the
 * store is flushed, so a backup that failed half-way names no chunk and is never
 * restorable. Each disk's checksum is over its chunk list (manifest version 2,
 * chunkstore_list_sum), so an incremental backup names the parent's untouched chunks
 * without reading them.
 *
 * Restore checks the chunk list against the disk's checksum, reassembles each disk
 * from its chunks (each checked against its name as it is read), then `qemu-img
 * convert -n` writes it into the VM's existing disk. Nothing here runs on the loop but
 * the steps' glue.
 *
 * A running VM's file systems are frozen through its guest agent (qga.c) just around
 * the transaction that starts each disk's read (the point in time) and thawed as soon
 * as QEMU answered it, whatever the answer, and on every other way out of the job
 * (job_free). No agent in the guest, a paused guest, a refusal or no answer within
 * BACKUP_FREEZE_MS: the backup goes on crash-consistent and says why
 * (consistency_reason).
 *
 * An encrypted store (common/chunkcrypt.h): the controller puts the store's key in
 * the sealed link command only, as args "key"; job_new() takes it out of the args at
 * once (so no reply, log or later reader of the op sees it), derives the store's keys
 * into job->key, wipes the text, and every chunk and manifest call gets job->key. The
 * store's key check value is checked before anything is read or written.
 */
#include "backup_int.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "child.h"
#include "chunkcrypt.h"
#include "chunkpipe.h"
#include "chunkstore.h"
#include "fleece.h"
#include "json.h"
#include "snaprevert.h"
#include "tree.h"
#include "util.h"

#define BACKUP_POLL_FIRST_MS 20	   /* query-jobs first: an incremental's job often ends at once */
#define BACKUP_FREEZE_MS     10000 /* guest-fsfreeze-freeze: the guest syncs, then freezes */
#define BACKUP_THAW_MS	     5000

/* job->error of an incremental read that cannot be (job->full_reason says why): the
 * disk is read whole instead (backup_chunk_after). */
#define BACKUP_READ_WHOLE "READ_WHOLE"

/* A backup id becomes a file name in the store: a plain shape only. */
int backup_id_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *id = json_object_get_string(val);

	if (id[0] == '\0' || strlen(id) > 64 ||
	    strspn(id, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(id))
		return err_input(err, 400, field, "'%.64s' is not a backup id", id);
	return 0;
}

/* A store is a directory relative to the shared pool, held to disk paths' shape. */
int backup_store_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_path_check(json_object_get_string(val), field, err);
}

/* An encrypted store's key: 64 hex digits (chunkcrypt_key_parse says why not). */
static int backup_key_check(struct json_object *val, const char *field, struct kerr *err)
{
	unsigned char key[CHUNKCRYPT_KEY_LEN];
	int ret = chunkcrypt_key_parse(json_object_get_string(val), key, err);

	OPENSSL_cleanse(key, sizeof(key));
	if (ret < 0)
		return err_input(err, 400, field, "the store's key is not 64 hex digits");
	return 0;
}

/* keep_bitmaps: at most BACKUP_KEEP_MAX backup ids. */
#define BACKUP_KEEP_MAX 64
static int backup_keep_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_array_len(val) > BACKUP_KEEP_MAX)
		return err_input(err, 400, field, "more than %d backups to keep", BACKUP_KEEP_MAX);
	for (size_t i = 0; i < json_array_len(val); i++) {
		struct json_object *id = json_object_array_get_idx(val, i);

		if (!json_object_is_type(id, json_type_string) ||
		    backup_id_check(id, field, err) < 0)
			return err_input(err, 400, field, "not a list of backup ids");
	}
	return 0;
}

/* The backup or restore's id and its store, relative to the shared pool */
const struct json_field backup_args[] = {
	{"backup", JK_STRING, true, backup_id_check},
	{"store", JK_STRING, true, backup_store_check},
	{"parent", JK_STRING, false, backup_id_check}, /* backup: build on it if its bitmap lives */
	{"full", JK_BOOL, false, NULL}, /* backup: never build on the parent, only supersede it */
	{"key", JK_STRING, false, backup_key_check}, /* an encrypted store's; job_new() takes it */
	{"bandwidth_mbps", JK_INT, false, NULL},     /* backup: the disk reads' limit (Mbit/s) */
	/* backup: the chain ends of the instance's other stores, whose bitmaps stay */
	{"keep_bitmaps", JK_ARRAY, false, backup_keep_check},
	{NULL, 0, false, NULL},
};

/* A child (qemu-img) this file started; freed in its close callback. */
struct bchild {
	struct bjob *job;
	void (*done)(struct bjob *job, const char *error);
};

static void disk_next(struct bjob *job);

/* The job's memory, its keys wiped first. */
static void job_release(struct bjob *job)
{
	if (job->store_fd >= 0)
		close(job->store_fd);
	json_object_put(job->tx);
	json_object_put(job->manifest);
	json_object_put(job->pmanifest);
	if (job->key) {
		chunkcrypt_key_wipe(job->key);
		free(job->key);
	}
	free(job);
}

static void job_closed_cb(uv_handle_t *handle)
{
	job_release(handle->data);
}

static void guest_thaw(struct bjob *job);

/* The VM backups in progress on this agent (linked by next_live): QEMU's job events
 * name a job by its id, backup_vm_job_event() finds its backup here. */
static struct bjob *live_jobs;

static void live_unlink(struct bjob *job)
{
	for (struct bjob **pp = &live_jobs; *pp; pp = &(*pp)->next_live)
		if (*pp == job) {
			*pp = job->next_live;
			return;
		}
}

static void target_node_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	/* Best effort: a node left holds a deleted work file open until QEMU exits, and
	 * the next backup's clear removes it (backup_fleece.c). */
	if (error)
		log_debug("backup: an incremental's target node: %s", error);
}

/* The removal of a target node this agent added: counted (backup_fleece.c). */
static void target_dropped_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	backup_node_removed(data, error);
	target_node_cb(q, ret, error, NULL);
}

/* The addition of an incremental's target node: refused, QEMU's nodes are not known. */
static void target_added_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	if (error)
		backup_nodes_unknown(data);
	target_node_cb(q, ret, error, NULL);
}

/*
 * The incremental's target node, if one was added: removed (not waited for). The op may
 * be answered and freed by now (job_free()), so the VM is found by the instance's name.
 * While QEMU's job still holds the node (a cancel is not over at once) QEMU refuses;
 * the job's end removes it then (orphan_job_end()).
 */
static void target_node_drop(struct bjob *job)
{
	struct json_object *args;
	struct vm *vm;

	if (!job->target_node[0])
		return;
	vm = vm_find(job->agent, json_get_str(job->manifest, "instance", ""));
	args = json_object_new_object();
	json_object_object_add(args, "node-name", json_object_new_string(job->target_node));
	if (vm) {
		if (vm_qmp(vm, "blockdev-del", args, BACKUP_JOB_TIMEOUT, target_dropped_cb, vm,
			   NULL) < 0)
			backup_nodes_unknown(vm);
	} else
		json_object_put(args);
	job->target_node[0] = '\0';
}

/* The job is over (the op was answered or dropped): release it. */
static void job_free(struct bjob *job)
{
	live_unlink(job); /* no event finds it from here on */
	target_node_drop(job);
	guest_thaw(job); /* a guest is never left frozen, whatever ended the job */
	if (job->poll_open) {
		uv_timer_stop(&job->poll);
		uv_close((uv_handle_t *)&job->poll, job_closed_cb);
		return;
	}
	job_release(job);
}

static void cancel_cleanup(struct bjob *job);

/* At each safe point: the agent stopping, or a cancel (job.c) that undoes the op. */
bool backup_job_gone(struct bjob *job)
{
	if (!job->op->agent->stopping && job_cancelled(job->op))
		cancel_cleanup(job);
	if (!instance_op_gone(job->op))
		return false;
	job_free(job);
	return true;
}

static void bitmap_removed_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	/* Best effort: a bitmap left behind costs QEMU a little work on writes and is
	 * never built on (its name is a backup that failed or was superseded). */
	if (error)
		log_debug("backup: %s", error);
}

/* Remove bitmap kumo-ID from every disk of the running VM (no one waits). */
static void bitmaps_drop(struct bjob *job, const char *id)
{
	struct kerr err;

	for (size_t i = 0; i < job->op->ndisks; i++) {
		struct json_object *args = json_object_new_object();
		char node[16], name[80];

		snprintf(node, sizeof(node), "d%zu", i);
		snprintf(name, sizeof(name), "kumo-%s", id);
		json_object_object_add(args, "node", json_object_new_string(node));
		json_object_object_add(args, "name", json_object_new_string(name));
		vm_qmp(job->op->vm, "block-dirty-bitmap-remove", args, BACKUP_JOB_TIMEOUT,
		       bitmap_removed_cb, NULL, &err);
	}
}

/* Remove bitmap kumo-ID (this backup's) from the disk at work only, before that disk
 * is read again: the read's transaction adds it anew, and QEMU refuses a bitmap that
 * exists ("Bitmap already exists"). One QMP connection: QEMU runs this before the
 * read's commands, so no one waits for it. */
static void bitmap_drop_at_work(struct bjob *job)
{
	struct json_object *args = json_object_new_object();
	char node[16], name[80];
	struct kerr err;

	snprintf(node, sizeof(node), "d%zu", job->disk);
	snprintf(name, sizeof(name), "kumo-%s", job->id);
	json_object_object_add(args, "node", json_object_new_string(node));
	json_object_object_add(args, "name", json_object_new_string(name));
	vm_qmp(job->op->vm, "block-dirty-bitmap-remove", args, BACKUP_JOB_TIMEOUT,
	       bitmap_removed_cb, NULL, &err);
}

/* A listing of a VM's bitmaps after its backup succeeded: which of Kumo's stay. */
struct stale {
	struct vm *vm;
	char self[80];		  /* kumo-ID of the backup that succeeded */
	struct json_object *keep; /* the other stores' chain ends (ids), owned */
};

static void stale_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct stale *s = data;
	struct json_object *list = json_object_new_array();
	struct kerr err;

	if (s->vm->inst.removing)
		goto out;
	if (error || snaprevert_bitmaps_from_nodes(ret, s->vm->ndisks, list, &err) < 0) {
		log_warnx("vm %s: stale bitmaps left on its disks: %s", s->vm->inst.name,
			  error ? error : err.msg);
		goto out;
	}
	for (size_t k = 0; k < json_array_len(list); k++) {
		struct json_object *e = json_object_array_get_idx(list, k), *args;
		const char *name = json_get_str(e, "name", "");
		char node[16];
		bool kept = !strcmp(name, s->self);

		if (!snaprevert_bitmap_is_kumo(name))
			continue; /* an operator's or a block job's: never ours to drop */
		for (size_t i = 0; !kept && i < json_array_len(s->keep); i++)
			kept = !strcmp(name + 5, json_object_get_string(
							 json_object_array_get_idx(s->keep, i)));
		if (kept)
			continue;
		log_info("vm %s: dropping bitmap %s of disk %d: no store's next incremental builds "
			 "on it",
			 s->vm->inst.name, name, (int)json_get_int(e, "disk", 0));
		args = json_object_new_object();
		snprintf(node, sizeof(node), "d%d", (int)json_get_int(e, "disk", 0));
		json_object_object_add(args, "node", json_object_new_string(node));
		json_object_object_add(args, "name", json_object_new_string(name));
		vm_qmp(s->vm, "block-dirty-bitmap-remove", args, BACKUP_JOB_TIMEOUT,
		       bitmap_removed_cb, NULL, &err);
	}
out:
	json_object_put(list);
	json_object_put(s->keep);
	free(s);
}

/*
 * A running VM's backup succeeded: the bitmaps the next incrementals build on are
 * this backup's (for its store) and keep's (the chain ends of the instance's other
 * stores, as the controller knows them); every other Kumo bitmap on its disks goes:
 * the parent's, superseded, and any a failed backup left (an agent killed -9 after
 * its transaction added one: nothing else would ever remove it, and QEMU keeps
 * tracking writes in it). Asked of QEMU once (query-named-block-nodes), no one waits.
 * Without keep, none is kept but this backup's: the controller sends it only when the
 * instance has backups in other stores (an agent from before the field refuses it).
 */
static void bitmaps_settle(struct bjob *job)
{
	struct json_object *keep = json_object_object_get(job->op->args, "keep_bitmaps");
	struct json_object *args;
	struct stale *s;
	struct kerr err;

	s = xcalloc(1, sizeof(*s));
	s->vm = job->op->vm;
	snprintf(s->self, sizeof(s->self), "kumo-%s", job->id);
	s->keep = json_object_is_type(keep, json_type_array) ? json_object_get(keep)
							     : json_object_new_array();
	args = json_object_new_object();
	json_object_object_add(args, "flat", json_object_new_boolean(true));
	if (vm_qmp(s->vm, "query-named-block-nodes", args, BACKUP_JOB_TIMEOUT, stale_cb, s, &err) <
	    0) {
		json_object_put(s->keep);
		free(s);
	}
}

/* QEMU's block job reading disk i for this backup: unique per backup, so one an
 * agent killed mid-backup left behind never blocks the next backup's. */
static void block_job_id(const struct bjob *job, size_t i, char *out, size_t len)
{
	snprintf(out, len, "kumo-%s-d%zu", job->id, i);
}

static void block_job_cancelled_cb(struct qmp *q, struct json_object *ret, const char *error,
				   void *data)
{
	if (error)
		log_debug("backup: block-job-cancel: %s", error);
}

/*
 * A cancelled backup or restore, before job.c undoes its op: what this file started
 * stops and what it wrote goes. QEMU's block job is cancelled (its target is in the
 * work directory), the bitmaps named after this backup are dropped (the next backup
 * must not build on a backup that never was), a manifest already written is removed
 * (the controller lists nothing for it), then the work files. The chunks it stored
 * stay for the store's collection: another backup may name them.
 */
static void cancel_cleanup(struct bjob *job)
{
	struct kerr err;

	log_info("backup %s: %s; stopping its work", job->id, job_cancel_reason(job->op));
	if (!job->restore && job->live && job->op->vm) {
		if (job->fleece) {
			backup_fleece_drop(job);
			job->block_job = false;
		}
		if (job->block_job) {
			struct json_object *args = json_object_new_object();
			char jid[96];

			block_job_id(job, job->disk, jid, sizeof(jid));
			if (job->ended_early) {
				/* Concluded already (its event came before the transaction's
				 * answer): a cancel is refused, and nothing else dismisses it. */
				json_object_object_add(args, "id", json_object_new_string(jid));
				vm_qmp(job->op->vm, "job-dismiss", args, BACKUP_JOB_TIMEOUT,
				       block_job_cancelled_cb, NULL, &err);
			} else {
				json_object_object_add(args, "device", json_object_new_string(jid));
				json_object_object_add(args, "force",
						       json_object_new_boolean(true));
				vm_qmp(job->op->vm, "block-job-cancel", args, BACKUP_JOB_TIMEOUT,
				       block_job_cancelled_cb, NULL, &err);
			}
			job->block_job = false;
		}
		bitmaps_drop(job, job->id);
	}
	if (job->manifest_written) {
		_cleanup_free_ char *m = xasprintf("%s/backups/%s.json", job->store, job->id);

		unlink(m);
	}
	if (job->tmpdir[0])
		tree_remove(job->tmpdir);
	job->tmpdir[0] = '\0';
}

/* The backup or restore failed (why, printf-style): its work files and what QEMU holds of
 * it go, the op fails, the job is freed. */
void backup_job_fail(struct bjob *job, const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	/* The work files go; chunks already stored stay for a later backup or the
	 * collector (no manifest names them). */
	if (job->tmpdir[0])
		tree_remove(job->tmpdir);
	if (!job->restore && job->live && job->op->vm && job->fleece)
		backup_fleece_drop(
			job); /* the export, the server, the job and the overlay's node */
	if (!job->restore && job->live && job->op->vm)
		bitmaps_drop(job, job->id); /* the next backup must not build on this one */
	instance_op_fail(job->op, "%s %s: %s", job->restore ? "restore of" : "backup", job->id,
			 why);
	job_free(job);
}

/* ---- thread pool steps ---------------------------------------------------------------- */

/*
 * Run work(job) on the thread pool, then after(job) on the loop. uv_work_t's data
 * is the job; the two functions travel in a small heap pair.
 */
struct work_req {
	uv_work_t req;
	struct bjob *job;
	work_fn work;
	after_fn after;
};

static void pool_work_cb(uv_work_t *req)
{
	struct work_req *w = req->data;

	log_trace("backup %s: pool work begins", w->job->id);
	w->work(w->job);
	log_trace("backup %s: pool work done", w->job->id);
}

static void pool_after_cb(uv_work_t *req, int status)
{
	struct work_req *w = req->data;
	struct bjob *job = w->job;
	after_fn after = w->after;

	free(w);
	if (backup_job_gone(job))
		return;
	if (status < 0) {
		backup_job_fail(job, "the thread pool refused the work: %s", uv_strerror(status));
		return;
	}
	after(job);
}

/* Queue work(job) on the thread pool; after(job) runs on the loop once it is done and
 * the job still stands (backup_job_gone). */
void backup_pool_run(struct bjob *job, work_fn work, after_fn after)
{
	struct work_req *w = xcalloc(1, sizeof(*w));
	int ret;

	w->job = job;
	w->work = work;
	w->after = after;
	w->req.data = w;
	job->error[0] = '\0';
	ret = uv_queue_work(job->agent->loop, &w->req, pool_work_cb, pool_after_cb);
	if (ret < 0) {
		free(w);
		backup_job_fail(job, "cannot queue disk work: %s", uv_strerror(ret));
	}
}

/* ---- qemu-img ------------------------------------------------------------------------- */

static void qemu_img_done_cb(const struct child_result *r, void *data)
{
	struct bchild *c = data;
	struct bjob *job = c->job;
	void (*done)(struct bjob *, const char *) = c->done;
	char why[128] = "";

	free(c);
	if (!child_result_ok(r))
		snprintf(why, sizeof(why), "qemu-img %s (its message is in the agent's log)",
			 r->signal ? "was killed" : "failed");
	if (backup_job_gone(job))
		return;
	done(job, why[0] ? why : NULL);
}

/* Run qemu-img with args (NULL-terminated); its stderr goes to the agent's log. */
static void qemu_img_run(struct bjob *job, char **args,
			 void (*done)(struct bjob *job, const char *error))
{
	struct bchild *c = xcalloc(1, sizeof(*c));
	struct child_opts opts = {.argv = args, .err_mode = CHILD_ERR_INHERIT};
	struct kerr err;

	c->job = job;
	c->done = done;
	if (child_run(job->agent->loop, &opts, qemu_img_done_cb, c, &err) == NULL) {
		free(c);
		backup_job_fail(job, "%s", err.msg);
	}
}

/* ---- backup: per disk, read it whole into a raw file, then chunk it --------------------- */

/*
 * Thread: was the VM reverted to a snapshot after the parent backup began? A revert
 * (vmaction.c) records itself in the VM's run directory (snaprevert.h) before it
 * removes the disks' bitmaps: the parent's bitmap is gone and the disks' content
 * jumped, so the backup is full and job->full_reason says it is because of the revert
 * (not that some bitmap cannot be used). The parent's manifest (its created_at) is read
 * into job->pmanifest when there is a record; a record or manifest that cannot be read
 * says nothing (the usual reasons stand).
 */
static bool reverted_since_parent(struct bjob *job)
{
	_cleanup_free_ char *text = NULL;
	char snapshot[64];
	size_t len;
	int64_t at, created;
	struct kerr err;

	if (file_read_all(job->revert_record, SNAPREVERT_RECORD_MAX, &text, &len) < 0)
		return false; /* none: no revert since the VM was made (or the host changed) */
	if (snaprevert_record_parse(text, len, &at, snapshot, sizeof(snapshot), &err) < 0) {
		log_warnx("backup %s: %s: %s", job->id, job->revert_record, err.msg);
		return false;
	}
	if (chunkstore_manifest_read_with(job->store, job->key, job->parent, &job->pmanifest,
					  &err) < 0)
		return false;
	created = json_get_int(job->pmanifest, "created_at", -1);
	if (created < 0 || created >= at)
		return false;
	snprintf(job->full_reason, sizeof(job->full_reason),
		 "a revert to snapshot %s began after the parent backup: Kumo's changed-block "
		 "bitmaps go before a revert, and the disks may have gone back",
		 snapshot);
	json_object_put(job->pmanifest);
	job->pmanifest = NULL;
	return true;
}

/*
 * Thread: each disk's incremental target, an empty qcow2 of the size the parent backup
 * gave the disk, made here (a few small writes) so QEMU's transaction opens it instead
 * of creating it in its monitor (measured here: 12-28 ms against 29-70 ms for the
 * transaction). A disk resized since is refused by QEMU (the sizes differ) and read
 * again with a target QEMU makes (drive_backup_cb), which then finds the resize.
 * A target that cannot be made is QEMU's to make, as before.
 */
static void targets_make(struct bjob *job)
{
	struct json_object *pdisks = json_object_object_get(job->pmanifest, "disks");

	for (size_t i = 0; i < job->op->ndisks && i < 64; i++) {
		const char *name = job->op->disks[i].name;
		char path[PATH_MAX];
		struct kerr err;

		for (size_t j = 0; j < json_array_len(pdisks); j++) {
			struct json_object *pd = json_object_array_get_idx(pdisks, j);

			if (strcmp(json_get_str(pd, "name", ""), name) != 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s.qcow2", job->tmpdir, name);
			if (backup_target_create(path, json_get_int(pd, "virtual_size", -1),
						 job->qemu_uid, job->qemu_gid, &err) == 0)
				job->targets_made |= (uint64_t)1 << i;
			else
				log_debug("backup %s: %s; QEMU makes it", job->id, err.msg);
		}
	}
}

/* A command's key that did not parse fails the job: run without it, a backup into an
 * encrypted store would write its data in the clear. True when so (job->error set). */
static bool key_refused(struct bjob *job)
{
	if (!job->key_bad)
		return false;
	snprintf(job->error, sizeof(job->error),
		 "the store's encryption key in the command is not a key");
	return true;
}

/* Thread: the store's directories, and a work directory QEMU may write into. */
static void prepare_work(struct bjob *job)
{
	struct kerr err;

	if (key_refused(job))
		return;
	/* A backup's first use of an encrypted store records its key check value. */
	if (chunkstore_init(job->store, &err) < 0 ||
	    chunkstore_key_check(job->store, job->key, !job->restore, &err) < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	/* The fd the commit's syncfs runs on, opened before any chunk is written: syncfs
	 * reports only a write-back error that came after its fd's open (chunkstore.h). */
	if (!job->restore && (job->store_fd = chunkstore_open(job->store, &err)) < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	tree_remove(job->tmpdir); /* what a killed agent left under this id */
	if (mkdir(job->tmpdir, 0700) < 0) {
		snprintf(job->error, sizeof(job->error), "cannot make %s: %s", job->tmpdir,
			 strerror(errno));
		return;
	}
	/* QEMU runs as the unprivileged qemu user (agent --qemu-user) and creates the
	 * drive-backup target itself: the work directory is that user's. Root (the agent)
	 * reads it all the same. */
	if (job->live && chown(job->tmpdir, job->qemu_uid, job->qemu_gid) < 0) {
		snprintf(job->error, sizeof(job->error), "cannot hand %s to the qemu user: %s",
			 job->tmpdir, strerror(errno));
		return;
	}
	/* chunkstore_init makes the store's root and tmp/ passable for it, but not what
	 * lies above the store: said here, not as QEMU's bare "Permission denied". */
	if (job->live &&
	    fleece_dir_reachable(job->tmpdir, job->qemu_uid, job->qemu_gid, &err) < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	if (job->parent[0] && !job->restore && !job->force_full) {
		if (reverted_since_parent(job)) {
			/* job->full_reason says so; every disk is read whole. */
		} else if (!job->live) {
			snprintf(job->full_reason, sizeof(job->full_reason),
				 "the VM is stopped: its disks are read whole");
		} else if (job->pmanifest == NULL &&
			   chunkstore_manifest_read_with(job->store, job->key, job->parent,
							 &job->pmanifest, &err) < 0) {
			snprintf(job->full_reason, sizeof(job->full_reason),
				 "the parent backup cannot be read: %s", err.msg);
		} else if (chunkstore_parent_check(job->pmanifest, job->full_reason,
						   sizeof(job->full_reason)) < 0) {
			/* Its chunks do not line up with this agent's: nothing to lay over. */
			json_object_put(job->pmanifest);
			job->pmanifest = NULL;
		} else if (job->op->vm) {
			targets_make(job);
		}
		if (!job->live) {
			json_object_put(job->pmanifest); /* read whole: nothing to lay over */
			job->pmanifest = NULL;
		}
	}
}

/* Run argv (no shell) for job from a worker thread and wait; *out (if not NULL) gets
 * its stdout. Killed at timeout_ms (0: none) and when the job is cancelled: a child
 * that hangs must not hold a pool thread and the VM's operation lock for ever.
 * Returns its exit status, or -1. Thread only: it blocks. */
int backup_run_wait(struct bjob *job, char *const argv[], char **out, unsigned timeout_ms)
{
	struct child_opts opts = {.argv = argv,
				  .out_max = out ? 1 << 20 : 0,
				  .err_mode = CHILD_ERR_INHERIT,
				  .timeout_ms = timeout_ms,
				  .cancelled = backup_pipe_cancelled,
				  .cancel_data = job};
	struct kerr err;
	int ret = child_run_wait(&opts, out, &err);

	if (ret < 0)
		log_warnx("%s", err.msg);
	return ret;
}

/*
 * Thread: an incremental read. job->target is a qcow2 holding only the clusters the
 * dirty bitmap marked; every chunk they touch is the parent's chunk with those bytes
 * laid over it (only those parent chunks are read back), every other chunk is the
 * parent's as it is, named without reading it. The dirty bytes are read from the qcow2
 * itself, where its own tables say they lie (backup_map_qcow2; a target it refuses
 * makes the disk read whole, BACKUP_READ_WHOLE), with no conversion into a raw work
 * file first:
 * that was a second qemu-img and a write of every dirty byte, a third of a small
 * incremental's time. The touched chunks go through the pipeline (chunkpipe.h): read
 * here in order, hashed, compressed and written by its threads side by side, not one
 * after another. The disk's checksum is its chunk list's (chunkstore_list_sum).
 */
static void chunk_incr_work(struct bjob *job)
{
	struct json_object *pchunks = json_object_object_get(job->pdisk, "chunks");
	struct json_object *chunks = json_object_new_array();
	int64_t size = json_get_int(job->pdisk, "virtual_size", -1);
	_cleanup_close_ int fd = -1;
	struct backup_extents extents = {0};
	struct backup_incr bi = {.store = job->store,
				 .key = job->key,
				 .pchunks = pchunks,
				 .extents = &extents,
				 .size = size,
				 .target = job->target};
	struct chunkpipe_source src = {
		.cancelled = backup_pipe_cancelled, .cancel_data = job, .key = job->key};
	struct chunkpipe_result res;
	struct kerr err;
	int64_t t0 = now_ms();
	int threads = 0, most = chunkpipe_threads(), ret;

	json_object_object_add(job->mdisk, "chunks", chunks);
	if (size < 0 || !json_object_is_type(pchunks, json_type_array) ||
	    (int64_t)json_array_len(pchunks) !=
		    (size + CHUNKSTORE_CHUNK_SIZE - 1) / CHUNKSTORE_CHUNK_SIZE) {
		snprintf(job->full_reason, sizeof(job->full_reason),
			 "disk %s: the parent backup's chunk list is not its size's",
			 job->op->disks[job->disk].name);
		snprintf(job->error, sizeof(job->error), BACKUP_READ_WHOLE);
		goto out;
	}
	/* Opened once, checked, and mapped and read through this fd (backupmap.c). */
	fd = backup_target_open(job->target, job->qemu_uid, &err);
	if (fd < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		goto out;
	}
	/* The target's own tables (backupmap.c): no qemu-img process. What they cannot say
	 * is never handed to root's qemu-img instead (a backing file QEMU names may be a
	 * FIFO that hangs it, or any path or protocol it then opens as root): the disk is
	 * read whole. */
	ret = backup_map_qcow2(fd, job->target, size, BACKUP_TARGET_CLUSTER_BITS, &extents, &err);
	job->map_ms += now_ms() - t0; /* read on the loop after this step */
	if (ret < 0) {
		/* ERANGE: resized, its bitmap cannot be trusted (or the file lies). */
		if (err.code == ERANGE)
			snprintf(job->full_reason, sizeof(job->full_reason),
				 "disk %s changed size since the parent backup",
				 job->op->disks[job->disk].name);
		else
			snprintf(job->full_reason, sizeof(job->full_reason),
				 "disk %s: QEMU's incremental copy cannot be read here (%s)",
				 job->op->disks[job->disk].name, err.msg);
		snprintf(job->error, sizeof(job->error), BACKUP_READ_WHOLE);
		goto out;
	}
	bi.fd = fd;
	backup_incr_source(&bi, &src);
	/* No more hashing threads than touched chunks (a small incremental has a few). */
	for (int64_t off = 0; off < size && threads < most; off += CHUNKSTORE_CHUNK_SIZE)
		threads += backup_incr_dirty(&bi, off, off + CHUNKSTORE_CHUNK_SIZE);
	if (chunkpipe_store(job->store, &src, threads > 0 ? threads : 1, chunks, &res, &err) < 0) {
		if (bi.parent_bad) {
			/* Not this backup's fault, and the next would fail the same way:
			 * this disk is read whole instead. */
			snprintf(job->full_reason, sizeof(job->full_reason),
				 "disk %s: a chunk of the parent backup cannot be read (%s)",
				 job->op->disks[job->disk].name, bi.parent_why);
			snprintf(job->error, sizeof(job->error), BACKUP_READ_WHOLE);
		} else {
			snprintf(job->error, sizeof(job->error), "%s", err.msg);
		}
		goto out;
	}
	/* What came from the disk: the dirty bytes, not the parent's around them. */
	res.read_bytes = bi.dirty_bytes;
	job->parent_reads += bi.parent_reads;
	backup_disk_stored(job, &res, size);
	json_object_object_add(job->mdisk, "kind", json_object_new_string("incremental"));
	unlink(job->target);
out:
	backup_extents_free(&extents);
}

/* chunkpipe's cancel check: data is the job. Thread-safe enough (see inside). */
bool backup_pipe_cancelled(void *data)
{
	/* Set on the loop; a stale read only delays the stop by a chunk. */
	return job_cancel_reason(((struct bjob *)data)->op) != NULL;
}

/* Thread: what the pipeline stored of the disk at work goes into the job and its
 * manifest entry. */
void backup_disk_stored(struct bjob *job, const struct chunkpipe_result *res, int64_t size)
{
	job->read_bytes += res->read_bytes;
	job->new_bytes += res->new_bytes;
	job->chunk_count += res->chunk_count;
	job->total_bytes += (uint64_t)size;
	json_object_object_add(job->mdisk, "virtual_size", json_object_new_int64(size));
	json_object_object_add(job->mdisk, "sha256", json_object_new_string(res->sum));
}

/* Run argv (no shell) from a worker thread and wait for it to end by itself: never
 * killed, for a child that writes a disk image. Returns its exit status, or -1. */
static int run_to_end(char *const argv[])
{
	struct child_opts opts = {.argv = argv, .err_mode = CHILD_ERR_INHERIT};
	struct kerr err;
	int ret = child_run_wait(&opts, NULL, &err);

	if (ret < 0)
		log_warnx("%s", err.msg);
	return ret;
}

/*
 * A stopped VM's disk gets a persistent bitmap named after this backup (QEMU loads it
 * at the next start and tracks writes from there), the parent's, superseded, removed
 * first: two `qemu-img bitmap` runs, tens of milliseconds each (hundreds on a busy
 * host), which used to come before the disk's read and now run beside it, on a thread
 * of chunk_work's own, once the disk is mapped: they change the image's header, its
 * refcounts and the bitmaps' own clusters, never a data cluster the map named (those
 * are in use, so never reallocated), and the map's qemu-img ran before (-U: no lock
 * either way). Neither run fails the backup: without a bitmap the next one is full and
 * says so. Thread only (it blocks).
 */
static void *bitmaps_thread(void *arg)
{
	struct bjob *job = arg;
	const char *disk = job->op->disks[job->disk].abs;
	char name[80], pname[80];
	char *remove_argv[] = {"qemu-img", "bitmap",	 "--remove", "-f",
			       "qcow2",	   (char *)disk, pname,	     NULL};
	char granularity[24];
	/* One bit per chunk, as a running disk's (fleece_transaction_args says why). */
	char *add_argv[] = {"qemu-img", "bitmap", "--add",	"-g", granularity,
			    "-f",	"qcow2",  (char *)disk, name, NULL};

	snprintf(granularity, sizeof(granularity), "%d", CHUNKSTORE_CHUNK_SIZE);
	snprintf(name, sizeof(name), "kumo-%s", job->id);
	snprintf(pname, sizeof(pname), "kumo-%s", job->parent);
	/* The parent's may be gone already (or never was): not an error. Both write the
	 * stopped VM's qcow2: neither is killed (no cancel, no timeout) mid-write. */
	if (job->parent[0])
		run_to_end(remove_argv);
	if (run_to_end(add_argv) != 0)
		log_warnx("backup %s: disk %s: no changed-block bitmap (qemu-img bitmap --add "
			  "failed; its message is in this log)",
			  job->id, job->op->disks[job->disk].name);
	return NULL;
}

/* Thread: cut the raw file into chunks and store them (chunkpipe.h: read in order,
 * hashed and compressed in parallel, zeros and holes named without hashing). */
static void chunk_work(struct bjob *job)
{
	_cleanup_close_ int fd = -1;
	struct json_object *chunks = json_object_new_array();
	struct chunkpipe_file file = {.fd = fd, .path = job->raw};
	struct chunkpipe_source src = {.read = chunkpipe_file_read,
				       .hole = chunkpipe_file_hole,
				       .data = &file,
				       .cancelled = backup_pipe_cancelled,
				       .cancel_data = job,
				       .key = job->key,
				       .progress_bytes = &job->piped_bytes};
	struct chunkpipe_result res;
	struct stat sb;
	struct kerr err;

	json_object_object_add(job->mdisk, "chunks", chunks);
	if (job->direct) {
		const char *disk = job->op->disks[job->disk].abs;
		struct backup_map *map = NULL;
		char *conv_argv[] = {"qemu-img", "convert",    "-q",	 "-U", "-O",
				     "raw",	 (char *)disk, job->raw, NULL};
		int ret;

		/* A stopped VM's disk is read here: the pipe paces it. (A live one was
		 * paced by QEMU; its raw work file is not the shared storage.) */
		src.rate_bytes_s = job->rate_bytes_s;
		/* A stopped VM's disk holds still: read it where it lies. */
		if (backup_map_open(disk, backup_pipe_cancelled, job, &map, &err) == 0) {
			pthread_t bitmaps;
			bool bitmaps_started =
				job->op->vm &&
				pthread_create(&bitmaps, NULL, bitmaps_thread, job) == 0;

			backup_map_source(map, &src);
			__atomic_store_n(&job->piped_size, (uint64_t)src.size, __ATOMIC_RELAXED);
			ret = chunkpipe_store(job->store, &src, chunkpipe_threads(), chunks, &res,
					      &err);
			backup_map_free(map);
			if (bitmaps_started)
				pthread_join(bitmaps, NULL);
			else if (job->op->vm)
				bitmaps_thread(job);
			if (ret < 0) {
				snprintf(job->error, sizeof(job->error), "%s", err.msg);
				return;
			}
			goto stored;
		}
		log_info("backup %s: %s; converting the disk to raw first", job->id, err.msg);
		if (job->op->vm)
			bitmaps_thread(job); /* before the conversion opens the image */
		if (backup_run_wait(job, conv_argv, NULL, 0) != 0) {
			snprintf(job->error, sizeof(job->error), "qemu-img convert of %s failed",
				 disk);
			return;
		}
	}
	/* A running VM's raw file is QEMU's copy in a work directory QEMU owns (which a
	 * guest that took QEMU over may fill with links to any file root can read): opened
	 * once, never through a link, and only the file QEMU's uid made. Else root made
	 * it (qemu-img convert, tar) in root's work directory. */
	fd = backup_target_open(job->raw, job->op->vm && job->live ? job->qemu_uid : geteuid(),
				&err);
	file.fd = fd;
	if (fd < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	if (fstat(fd, &sb) < 0) {
		snprintf(job->error, sizeof(job->error), "cannot read %s: %s", job->raw,
			 strerror(errno));
		return;
	}
	src.size = sb.st_size;
	__atomic_store_n(&job->piped_size, (uint64_t)src.size, __ATOMIC_RELAXED);
	if (chunkpipe_store(job->store, &src, chunkpipe_threads(), chunks, &res, &err) < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
stored:
	backup_disk_stored(job, &res, src.size);
	unlink(job->raw);
}

/* Thread: flush the chunks, then write the manifest that names them. */
static void manifest_work(struct bjob *job)
{
	int64_t t0 = now_ms(), flush_ms = 0;
	struct kerr err;

	json_object_object_add(job->manifest, "kind",
			       json_object_new_string(job->all_incr ? "incremental" : "full"));
	json_object_object_add(job->manifest, "parent",
			       job->all_incr ? json_object_new_string(job->parent) : NULL);
	json_object_object_add(job->manifest, "full_reason",
			       job->full_reason[0] ? json_object_new_string(job->full_reason)
						   : NULL);

	/* The chunks and the manifest's text flushed at once, then its name: the
	 * manifest never names a chunk a power cut could lose (chunkstore.h). */
	if (chunkstore_backup_commit(job->store, job->store_fd, job->key, job->id, job->manifest,
				     &flush_ms, &err) < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	/* syncfs flushes every writer's dirty pages on the store's file system, not only
	 * this backup's (O_DIRECT left it little of its own): on a shared pool other
	 * writers make this vary, which a full that stores nothing new shows most. */
	log_info("backup %s: store flushed in %lld ms, manifest named in %lld ms", job->id,
		 (long long)flush_ms, (long long)(now_ms() - t0 - flush_ms));
	job->manifest_ms = now_ms() - t0;
	job->manifest_written = true;
	tree_remove(job->tmpdir);
}

static void manifest_after(struct bjob *job)
{
	struct json_object *b = json_object_new_object(), *disks = json_object_new_array();
	struct json_object *mdisks = json_object_object_get(job->manifest, "disks");
	struct inst_op *op = job->op;

	log_trace("backup %s: manifest committed", job->id);
	if (job->error[0]) {
		backup_job_fail(job, "%s", job->error);
		return;
	}
	/* The controller indexes what the manifest says; chunk lists stay in the store. */
	for (size_t i = 0; i < json_array_len(mdisks); i++) {
		struct json_object *md = json_object_array_get_idx(mdisks, i), *d;

		d = json_object_new_object();
		json_object_object_add(d, "name",
				       json_object_get(json_object_object_get(md, "name")));
		json_object_object_add(d, "virtual_size",
				       json_object_get(json_object_object_get(md, "virtual_size")));
		json_object_object_add(d, "sha256",
				       json_object_get(json_object_object_get(md, "sha256")));
		json_object_object_add(d, "chunk_count",
				       json_object_new_int64((int64_t)json_array_len(
					       json_object_object_get(md, "chunks"))));
		json_object_array_add(disks, d);
	}
	json_object_object_add(b, "id", json_object_new_string(job->id));
	json_object_object_add(b, "kind",
			       json_object_get(json_object_object_get(job->manifest, "kind")));
	json_object_object_add(
		b, "consistency",
		json_object_get(json_object_object_get(job->manifest, "consistency")));
	json_object_object_add(b, "parent",
			       json_object_get(json_object_object_get(job->manifest, "parent")));
	json_object_object_add(
		b, "full_reason",
		json_object_get(json_object_object_get(job->manifest, "full_reason")));
	json_object_object_add(
		b, "consistency_reason",
		json_object_get(json_object_object_get(job->manifest, "consistency_reason")));
	json_object_object_add(b, "read_bytes", json_object_new_int64((int64_t)job->read_bytes));
	json_object_object_add(b, "new_bytes", json_object_new_int64((int64_t)job->new_bytes));
	json_object_object_add(b, "total_bytes", json_object_new_int64((int64_t)job->total_bytes));
	json_object_object_add(b, "chunk_count", json_object_new_int64((int64_t)job->chunk_count));
	json_object_object_add(b, "duration_ms", json_object_new_int64(now_ms() - job->started_ms));
	/* How a running VM's disks read whole were read: a check for the lab and the bench. */
	if (job->fleeced || job->copied) {
		json_object_object_add(b, "live_read",
				       json_object_new_string(job->copied ? "copy" : "fleecing"));
		if (job->fleece_why[0])
			json_object_object_add(b, "live_read_reason",
					       json_object_new_string(job->fleece_why));
	}
	json_object_object_add(b, "disks", disks);
	{
		/* Where the time went, for the lab and the bench (summed over the disks). */
		struct json_object *t = json_object_new_object();

		json_object_object_add(t, "job_ms", json_object_new_int64(job->job_ms));
		if (job->job_end_by)
			json_object_object_add(t, "job_end_seen_by",
					       json_object_new_string(job->job_end_by));
		json_object_object_add(t, "chunk_ms", json_object_new_int64(job->chunk_ms));
		json_object_object_add(t, "map_ms", json_object_new_int64(job->map_ms));
		json_object_object_add(t, "manifest_ms", json_object_new_int64(job->manifest_ms));
		json_object_object_add(t, "prepare_ms", json_object_new_int64(job->prepare_ms));
		json_object_object_add(t, "target_nodes",
				       json_object_new_int64((int64_t)job->node_targets));
		json_object_object_add(t, "close_ms", json_object_new_int64(job->close_ms));
		json_object_object_add(t, "leftover_checks",
				       json_object_new_int64((int64_t)job->leftover_checks));
		json_object_object_add(t, "parent_chunks_read",
				       json_object_new_int64((int64_t)job->parent_reads));
		json_object_object_add(b, "timings", t);
	}
	if (op->result == NULL)
		op->result = json_object_new_object();
	json_object_object_add(op->result, "backup", b);
	if (job->live && op->vm)
		bitmaps_settle(job); /* the parent's superseded, a failed backup's left */
	log_info("vm %s: backup %s: %llu bytes read, %llu new in the store, %llu chunks",
		 json_get_str(op->spec, "name", ""), job->id, (unsigned long long)job->read_bytes,
		 (unsigned long long)job->new_bytes, (unsigned long long)job->chunk_count);
	job_free(job);
	instance_op_succeed(op);
}

/* Loop: a disk was stored (or not: job->error): the next disk, or the job fails. */
void backup_chunk_after(struct bjob *job)
{
	if (job->direct)
		uv_timer_stop(&job->poll); /* backup_store_progress_cb */
	job->chunk_ms += now_ms() - job->chunk_started_ms;
	log_trace("backup %s: stored", job->id);
	/* An incremental that cannot be: the disk is read whole (full_reason says why). */
	if (job->incr && !strcmp(job->error, BACKUP_READ_WHOLE)) {
		job->incr = false;
		job->pdisk = NULL;
		json_object_object_del(job->mdisk, "chunks");
		/* The incremental's transaction added this backup's bitmap to the disk
		 * already; the whole read's adds it again (at its own point in time). */
		bitmap_drop_at_work(job);
		backup_disk_read(job);
		return;
	}
	if (job->error[0]) {
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, job->error);
		return;
	}
	job->all_incr = job->all_incr && job->incr;
	job->disk++;
	disk_next(job);
}

/* Loop, every BACKUP_POLL_MS while chunk_work stores a stopped VM's disk or
 * fleece_chunk_work a running one's (either reads the disk itself, paced when
 * limited): how far it got, so the progress moves meanwhile.
 * The work in the pool holds the job: this never frees it, backup_chunk_after stops it. */
void backup_store_progress_cb(uv_timer_t *timer)
{
	struct bjob *job = timer->data;
	uint64_t done = __atomic_load_n(&job->piped_bytes, __ATOMIC_RELAXED);
	uint64_t size = __atomic_load_n(&job->piped_size, __ATOMIC_RELAXED);
	int64_t steps = (int64_t)job->op->ndisks * BACKUP_READ_PHASES;
	char phase[96];

	if (size == 0 || job_cancel_reason(job->op) != NULL)
		return;
	/* A live disk read from its fleecing export is read and stored in one step: it
	 * says "reading", as QEMU's copy did, so the dashboard shows its read rate. */
	snprintf(phase, sizeof(phase), "%s disk %s: %llu of %llu MiB",
		 job->fleece ? "reading" : "storing", job->op->disks[job->disk].name,
		 (unsigned long long)(done >> 20), (unsigned long long)(size >> 20));
	instance_op_progress(job->op,
			     (int)(((int64_t)job->disk * BACKUP_READ_PHASES + 1) * 90 / steps +
				   (int64_t)(done * 90 / size) / steps),
			     phase);
}

static void read_done(struct bjob *job, const char *error)
{
	char phase[96];

	if (error) {
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, error);
		return;
	}
	snprintf(phase, sizeof(phase), "storing disk %s", job->op->disks[job->disk].name);
	instance_op_progress(job->op,
			     (int)((job->disk * BACKUP_READ_PHASES + 1) * 90 /
				   (job->op->ndisks * BACKUP_READ_PHASES)),
			     phase);
	if (job->direct) {
		job->piped_bytes = job->piped_size = 0; /* no work runs: plain stores */
		uv_timer_start(&job->poll, backup_store_progress_cb, BACKUP_POLL_MS,
			       BACKUP_POLL_MS);
	}
	job->chunk_started_ms = now_ms();
	log_trace("backup %s: storing", job->id);
	backup_pool_run(job, job->incr ? chunk_incr_work : chunk_work, backup_chunk_after);
}

static void job_dismissed_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	/* Nothing waits on the dismissal: the job's end was read from query-jobs. */
}

static void target_closed_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;

	log_trace("backup %s: target closed", job->id);
	backup_node_removed(job->op->vm, error);
	job->close_ms += now_ms() - job->close_started_ms;
	if (backup_job_gone(job))
		return;
	if (error) {
		backup_job_fail(job, "disk %s: QEMU did not close the incremental's target: %s",
				job->op->disks[job->disk].name, error);
		return;
	}
	read_done(job, NULL);
}

/* The job concluded: QEMU closes its target node (after the dismissal, sent first),
 * which writes its qcow2 tables out to the file, before the agent reads it (fleece.h:
 * no fdatasync). */
static void target_close(struct bjob *job)
{
	struct json_object *args = json_object_new_object();
	struct kerr err;

	json_object_object_add(args, "node-name", json_object_new_string(job->target_node));
	job->target_node[0] = '\0';
	job->node_targets++;
	job->close_started_ms = now_ms();
	if (vm_qmp(job->op->vm, "blockdev-del", args, BACKUP_JOB_TIMEOUT, target_closed_cb, job,
		   &err) < 0) {
		backup_nodes_unknown(job->op->vm);
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
	}
}

static void jobs_cb(struct qmp *q, struct json_object *ret, const char *error, void *data);
static bool incr_fallback(struct bjob *job, const char *why, bool bitmap_added);

static void poll_cb(uv_timer_t *timer)
{
	struct bjob *job = timer->data;
	struct kerr err;

	if (backup_job_gone(job))
		return;
	job->querying = true;
	job->poll_soon = false;
	if (vm_qmp(job->op->vm, "query-jobs", NULL, BACKUP_JOB_TIMEOUT, jobs_cb, job, &err) < 0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}

/*
 * QEMU's JOB_STATUS_CHANGE event of a job in vm (vm.c; QEMU sends them to every
 * monitor, no capability asked): when it is the copy job a backup polls and it
 * concluded, query-jobs goes at once, not at the next poll (20 ms, then doubling up
 * to BACKUP_POLL_MS: a small incremental's job ends in tens of milliseconds and its
 * end was seen ~22 ms late on average, a tenth of the backup). The query still
 * decides: it says whether the job failed and why. A query in flight asks again as
 * it ends.
 */
/*
 * Whether id names a backup job of Kumo's ("kumo-ID-dN", block_job_id()); if so, node
 * gets the incremental's target node it copies into: "kbt-ID-N", ID cut to 20, as
 * backup_disk_read() names it (the job may be a copy's, with no such node).
 */
static bool kumo_job_id(const char *id, char *node, size_t len)
{
	const char *bid, *d = strrchr(id, '-');

	if (strncmp(id, "kumo-", 5) != 0 || d == NULL)
		return false;
	/* A backup's id is hex: not a migration's "kumo-mirror-dN" (migrate_disk.c). */
	bid = id + 5;
	if (d - bid < 16 || strspn(bid, "0123456789abcdef") != (size_t)(d - bid) || d[1] != 'd' ||
	    d[2] == '\0' || strspn(d + 2, "0123456789") != strlen(d + 2) || strlen(d + 2) > 3)
		return false;
	snprintf(node, len, "kbt-%.*s-%s", (int)(d - bid < 20 ? d - bid : 20), bid, d + 2);
	return true;
}

/* The backup of this agent's that waits for QEMU's job id in vm (its transaction,
 * which made the job, may still be on its way), or NULL. */
static struct bjob *job_waiting(struct vm *vm, const char *id)
{
	char jid[96];

	for (struct bjob *job = live_jobs; job; job = job->next_live) {
		if (job->op->vm != vm || (!job->block_job && !job->tx_inflight))
			continue;
		block_job_id(job, job->disk, jid, sizeof(jid));
		if (strcmp(jid, id) == 0)
			return job;
	}
	return NULL;
}

/*
 * A backup job of QEMU's that concluded with no backup waiting for it: one cancelled
 * (the agent's block-job-cancel is not over at once) or left by a killed agent. It is
 * dismissed, and an incremental's target node it held removed; no such node is no harm.
 */
static void orphan_job_end(struct vm *vm, const char *id)
{
	struct json_object *args;
	char node[32];

	if (!kumo_job_id(id, node, sizeof(node)))
		return;
	log_info("backup: QEMU's job %s ended with no backup waiting for it; dismissed", id);
	backup_nodes_unknown(vm);
	args = json_object_new_object();
	json_object_object_add(args, "id", json_object_new_string(id));
	vm_qmp(vm, "job-dismiss", args, BACKUP_JOB_TIMEOUT, target_node_cb, NULL, NULL);
	args = json_object_new_object();
	json_object_object_add(args, "node-name", json_object_new_string(node));
	vm_qmp(vm, "blockdev-del", args, BACKUP_JOB_TIMEOUT, target_node_cb, NULL, NULL);
}

/*
 * At a VM's adoption: the backup jobs a killed agent left in its QEMU. No backup waits
 * for them any more (the controller fails a killed agent's backups): one that ended
 * while no agent listened is dismissed at once, with its target node (the node's own
 * sweep, backup_fleece_adopted(), cannot remove it while the job holds it); one still
 * copying is cancelled, and its end's event does the same (backup_vm_job_event()).
 * Without this, an incremental's job held to a low bandwidth went on copying into a
 * node nobody reads for as long as the copy takes, and a concluded one stayed for the
 * QEMU's life.
 */
static void adopt_jobs_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct vm *vm = data;
	char node[32];

	if (error || vm->inst.removing)
		return;
	for (size_t i = 0; i < json_array_len(ret); i++) {
		struct json_object *j = json_object_array_get_idx(ret, i), *args;
		const char *id = json_get_str(j, "id", "");
		const char *status = json_get_str(j, "status", "");

		/* Only backup jobs: a migration's mirror is the migration's (migrate.c). */
		if (strcmp(json_get_str(j, "type", ""), "backup") != 0 ||
		    !kumo_job_id(id, node, sizeof(node)) || job_waiting(vm, id))
			continue;
		if (!strcmp(status, "concluded")) {
			orphan_job_end(vm, id);
			continue;
		}
		if (!strcmp(status, "aborting") || !strcmp(status, "null"))
			continue; /* ending: its event follows */
		log_info("vm %s: cancelling QEMU's backup job %s an earlier agent left",
			 vm->inst.name, id);
		args = json_object_new_object();
		json_object_object_add(args, "id", json_object_new_string(id));
		vm_qmp(vm, "job-cancel", args, BACKUP_JOB_TIMEOUT, target_node_cb, NULL, NULL);
	}
}

void backup_jobs_adopted(struct vm *vm)
{
	struct kerr err;

	if (vm_qmp(vm, "query-jobs", NULL, BACKUP_JOB_TIMEOUT, adopt_jobs_cb, vm, &err) < 0)
		log_debug("vm %s: %s", vm->inst.name, err.msg);
}

void backup_vm_job_event(struct vm *vm, const char *id, const char *status)
{
	struct bjob *job;

	if (strcmp(status, "concluded") != 0)
		return;
	job = job_waiting(vm, id);
	if (job == NULL) {
		orphan_job_end(vm, id);
		return;
	}
	/* Its transaction's answer is still on its way: the query goes once it came
	 * (drive_backup_cb), at once. Not an orphan: dismissed and its target removed,
	 * the backup would find its job gone. */
	if (!job->block_job) {
		job->ended_early = true;
		return;
	}
	/* A query in flight may see the end first (then "poll"): only the one the event
	 * starts counts as the event's. */
	if (job->querying) {
		job->poll_soon = true;
	} else {
		job->job_end_by = "event";
		uv_timer_start(&job->poll, poll_cb, 0, 0);
	}
}

/* The drive-backup job's state: go on polling, or read its end. */
static void jobs_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;
	char jid[96];
	struct json_object *found = NULL;
	struct kerr err;

	job->querying = false;
	if (backup_job_gone(job))
		return;
	if (error) {
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, error);
		return;
	}
	block_job_id(job, job->disk, jid, sizeof(jid));
	for (size_t i = 0; i < json_array_len(ret); i++) {
		struct json_object *j = json_object_array_get_idx(ret, i);

		if (!strcmp(json_get_str(j, "id", ""), jid))
			found = j;
	}
	if (found == NULL) {
		backup_job_fail(job, "disk %s: QEMU's backup job vanished",
				job->op->disks[job->disk].name);
		return;
	}
	if (strcmp(json_get_str(found, "status", ""), "concluded") != 0) {
		int64_t total = json_get_int(found, "total-progress", 0);
		int64_t cur = json_get_int(found, "current-progress", 0);
		char phase[96];

		snprintf(phase, sizeof(phase), "reading disk %s: %lld of %lld MiB",
			 job->op->disks[job->disk].name, (long long)(cur >> 20),
			 (long long)(total >> 20));
		instance_op_progress(job->op,
				     (int)((job->disk * BACKUP_READ_PHASES * 90 +
					    (total > 0 ? 90 * cur / total : 0)) /
					   (job->op->ndisks * BACKUP_READ_PHASES)),
				     phase);
		job->poll_ms =
			job->poll_ms * 2 < BACKUP_POLL_MS ? job->poll_ms * 2 : BACKUP_POLL_MS;
		/* The job concluded while this query was on its way: ask again now. */
		if (job->poll_soon)
			job->job_end_by = "event";
		uv_timer_start(&job->poll, poll_cb, job->poll_soon ? 0 : job->poll_ms, 0);
		return;
	}
	job->block_job = false;
	job->job_ms += now_ms() - job->job_started_ms;
	log_trace("backup %s: QEMU's job ended (seen by %s)", job->id,
		  job->job_end_by ? job->job_end_by : "poll");
	if (job->job_end_by == NULL)
		job->job_end_by = "poll";
	{
		char why[200];
		const char *jerr = json_get_str(found, "error", NULL);
		struct json_object *args = json_object_new_object();

		snprintf(why, sizeof(why), "QEMU's backup job failed: %s", jerr ? jerr : "");
		json_object_object_add(args, "id", json_object_new_string(jid));
		vm_qmp(job->op->vm, "job-dismiss", args, BACKUP_JOB_TIMEOUT, job_dismissed_cb, NULL,
		       &err);
		if (jerr && incr_fallback(job, jerr, true))
			return;
		if (jerr == NULL && job->target_node[0]) {
			target_close(job);
			return;
		}
		read_done(job, jerr ? why : NULL);
	}
}

/* An incremental read QEMU refused (no such bitmap: lost, or left inconsistent by a
 * crash): the disk is read whole instead, and the backup says why. bitmap_added: the
 * refusal came after the transaction, whose new bitmap exists and would make the
 * whole read's transaction fail on adding it again: it goes first. */
static bool incr_fallback(struct bjob *job, const char *why, bool bitmap_added)
{
	if (!job->incr)
		return false;
	if (bitmap_added)
		bitmap_drop_at_work(job);
	snprintf(job->full_reason, sizeof(job->full_reason),
		 "disk %s: the changed-block bitmap cannot be used (%s)",
		 job->op->disks[job->disk].name, why);
	log_warnx("vm %s: backup %s: %s; reading the disk whole", job->op->vm->inst.name, job->id,
		  job->full_reason);
	job->incr = false;
	job->pdisk = NULL;
	backup_disk_read(job);
	return true;
}

/* Whether the disk at work has a target this agent made (targets_make). */
static bool target_made(const struct bjob *job)
{
	return job->disk < 64 && (job->targets_made >> job->disk) & 1;
}

static void drive_backup_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;

	log_trace("backup %s: transaction answered", job->id);
	job->tx_inflight = false;
	/* The point in time is taken (or the transaction failed): thaw at once. A
	 * fleecing's is the filter's qom-set still to come (backup_fleece.c thaws). */
	if (!job->fleece)
		guest_thaw(job);
	/* QEMU runs the job from here on: a cancel that came while the transaction was
	 * in flight must stop it too (cancel_cleanup, from backup_job_gone). Fleecing
	 * runs no job. */
	if (error == NULL && !job->fleece)
		job->block_job = true;
	if (backup_job_gone(job))
		return;
	if (job->fleece) {
		backup_fleece_started(job, error);
		return;
	}
	/* Refused with the target this agent made because the disk was resized since
	 * the parent (QEMU: "Source and target image have different sizes"): once more
	 * with one QEMU makes, at the disk's size. Any other refusal (a parent bitmap
	 * missing or inconsistent) is not retried: a second try would freeze the guest
	 * again for the same answer. */
	if (error && job->incr && target_made(job) && strstr(error, "different sizes")) {
		log_info("backup %s: disk %s: %s; QEMU makes the target", job->id,
			 job->op->disks[job->disk].name, error);
		job->targets_made &= ~((uint64_t)1 << job->disk);
		target_node_drop(job); /* QEMU closes it before the next transaction */
		unlink(job->target);
		backup_disk_read(job);
		return;
	}
	if (error && incr_fallback(job, error, false))
		return;
	if (error) {
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, error);
		return;
	}
	/* Soon, then every BACKUP_POLL_MS: a small incremental's job is done in tens of
	 * milliseconds, and a first look at 250 ms was a quarter of its backup's time.
	 * QEMU's event of its end brings the next look forward (backup_vm_job_event). */
	job->job_started_ms = now_ms();
	job->job_end_by = job->ended_early ? "event" : NULL;
	job->poll_ms = BACKUP_POLL_FIRST_MS;
	uv_timer_start(&job->poll, poll_cb, job->ended_early ? 0 : job->poll_ms, 0);
}

/* ---- fsfreeze around the point in time (qga.c) ------------------------------------------ */

/* The thaw outlives the job: it is sent whatever became of the backup. */
struct thaw {
	uv_loop_t *loop;
	char name[NAME_MAX_LEN + 1];
	char path[PATH_MAX];
	int64_t frozen_us;
	int tries;
	bool leftover; /* at adoption: a freeze an earlier agent may have left */
};

static void thawed_cb(int status, int64_t count, bool cmd_sent, const char *why, void *data)
{
	struct thaw *t = data;

	if (t->leftover) {
		if (status == 0 && count > 0)
			log_warnx("vm %s: thawed %lld file systems an earlier agent left frozen",
				  t->name, (long long)count);
		else if (status < 0)
			log_debug("vm %s: no leftover freeze to thaw: %s", t->name, why);
		free(t);
		return;
	}
	if (status < 0 && status != UV_ENOENT && status != UV_ECONNREFUSED && ++t->tries < 2) {
		log_warnx("vm %s: thaw of its file systems failed (%s); trying again", t->name,
			  why);
		qga_cmd_run(t->loop, t->path, "guest-fsfreeze-thaw", BACKUP_THAW_MS, thawed_cb, t);
		return;
	}
	if (status < 0)
		log_warnx("vm %s: its file systems may still be frozen: %s", t->name, why);
	else
		log_info("vm %s: file systems thawed %lld ms after the freeze was asked", t->name,
			 (long long)((now_us() - t->frozen_us) / 1000));
	free(t);
}

/* Thaw what the job's last freeze may have frozen; idempotent. */
void backup_guest_thaw(struct bjob *job)
{
	guest_thaw(job);
}

static void guest_thaw(struct bjob *job)
{
	struct thaw *t;

	if (!job->freeze_sent)
		return;
	job->freeze_sent = false;
	t = xcalloc(1, sizeof(*t));
	t->loop = job->agent->loop;
	t->frozen_us = job->frozen_us;
	snprintf(t->name, sizeof(t->name), "%s", json_get_str(job->manifest, "instance", "?"));
	snprintf(t->path, sizeof(t->path), "%s", job->qga_path);
	qga_cmd_run(t->loop, t->path, "guest-fsfreeze-thaw", BACKUP_THAW_MS, thawed_cb, t);
}

/*
 * At the adoption of a running VM (vm.c): an agent that died between a backup's freeze
 * and its thaw left the guest frozen, and nothing else would ever thaw it. A thaw is
 * harmless otherwise (a thawed guest answers 0); no one waits for it.
 */
void backup_vm_adopted(struct vm *vm)
{
	struct thaw *t = xcalloc(1, sizeof(*t));

	t->loop = vm->inst.agent->loop;
	t->leftover = true;
	snprintf(t->name, sizeof(t->name), "%s", vm->inst.name);
	snprintf(t->path, sizeof(t->path), "%s/qga.sock", vm->inst.dir);
	qga_cmd_run(t->loop, t->path, "guest-fsfreeze-thaw", BACKUP_THAW_MS, thawed_cb, t);
}

/* A disk read without a freeze: the backup is crash-consistent, and says why (the first
 * reason: every disk after it most likely has the same). */
static void freeze_missed(struct bjob *job, const char *why)
{
	if (!job->freeze_why[0])
		snprintf(job->freeze_why, sizeof(job->freeze_why), "disk %s: %s",
			 job->op->disks[job->disk].name, why);
	json_object_object_add(job->manifest, "consistency", json_object_new_string("crash"));
	json_object_object_add(job->manifest, "consistency_reason",
			       json_object_new_string(job->freeze_why));
	log_warnx("vm %s: backup %s: %s; crash-consistent", job->op->vm->inst.name, job->id,
		  job->freeze_why);
}

/* Start QEMU's side of the disk's read: the transaction backup_guest_freeze() kept. */
static void tx_send(struct bjob *job)
{
	struct json_object *tx = job->tx;
	struct kerr err;

	job->tx = NULL;
	job->tx_inflight = true;
	job->ended_early = false;
	log_trace("backup %s: transaction sent", job->id);
	if (vm_qmp(job->op->vm, "transaction", tx, BACKUP_JOB_TIMEOUT, drive_backup_cb, job, &err) <
	    0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}

static void frozen_cb(int status, int64_t count, bool cmd_sent, const char *why, void *data)
{
	struct bjob *job = data;

	/* No agent answered the sync: the freeze never went out, there is nothing to thaw. */
	if (!cmd_sent) {
		job->freeze_sent = false;
		job->no_guest_agent = status < 0;
	}
	if (backup_job_gone(job))
		return; /* job_free thawed */
	if (status < 0)
		freeze_missed(job, why);
	else if (count <= 0)
		freeze_missed(job, "the guest agent froze no file system");
	else {
		log_info("vm %s: backup %s: disk %s: %lld file systems frozen in %lld ms",
			 job->op->vm->inst.name, job->id, job->op->disks[job->disk].name,
			 (long long)count, (long long)((now_us() - job->frozen_us) / 1000));
		if (!job->freeze_why[0])
			json_object_object_add(job->manifest, "consistency",
					       json_object_new_string("filesystem"));
	}
	tx_send(job);
}

static void freeze_send(struct bjob *job)
{
	snprintf(job->qga_path, sizeof(job->qga_path), "%s/qga.sock", job->op->vm->inst.dir);
	job->freeze_sent = true;
	job->frozen_us = now_us();
	qga_cmd_run(job->agent->loop, job->qga_path, "guest-fsfreeze-freeze", BACKUP_FREEZE_MS,
		    frozen_cb, job);
}

/* query-chardev's answer: the guest agent's port (chardev "qga", qemuargs.c) open in
 * the guest, or not; unknown (an error, no such chardev): asked anyway. */
static void chardev_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;
	bool closed = false;

	log_trace("backup %s: chardevs listed", job->id);
	if (backup_job_gone(job))
		return;
	for (size_t i = 0; error == NULL && i < json_array_len(ret); i++) {
		struct json_object *c = json_object_array_get_idx(ret, i);
		struct json_object *open;

		if (!strcmp(json_get_str(c, "label", ""), "qga") &&
		    json_object_object_get_ex(c, "frontend-open", &open))
			closed = !json_object_get_boolean(open);
	}
	if (closed) {
		job->no_guest_agent = true;
		freeze_missed(job, "no guest agent has its port open (is qemu-ga running in the "
				   "guest?)");
		tx_send(job);
		return;
	}
	freeze_send(job);
}

/* Freeze the running guest's file systems (qga.c), then send the disk's transaction. */
void backup_guest_freeze(struct bjob *job)
{
	struct vm *vm = job->op->vm;
	struct kerr err;

	if (vm->inst.state == INST_PAUSED || job->no_guest_agent) {
		/* (no agent: the reason an earlier disk gave stands) */
		freeze_missed(job, "the VM is paused, so its guest agent cannot freeze");
		tx_send(job);
		return;
	}
	/* Is a guest agent there at all? QEMU knows whether the guest opened the port
	 * (libvirt watches the same flag): asking it costs a QMP round trip, asking a
	 * guest agent that is not there costs the freeze's whole timeout (5 s). */
	if (vm_qmp(vm, "query-chardev", NULL, BACKUP_JOB_TIMEOUT, chardev_cb, job, &err) < 0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}

/* Read disk job->disk: through QEMU when it runs, else from its file. */
void backup_disk_read(struct bjob *job)
{
	struct vm_disk *d = &job->op->disks[job->disk];
	char phase[96];

	snprintf(job->raw, sizeof(job->raw), "%s/%s.raw", job->tmpdir, d->name);
	snprintf(phase, sizeof(phase), "reading disk %s", d->name);
	instance_op_progress(
		job->op,
		(int)(job->disk * BACKUP_READ_PHASES * 90 / (job->op->ndisks * BACKUP_READ_PHASES)),
		phase);
	if (job->live) {
		struct json_object *tx;
		struct fleece_names n;
		char jid[96], name[80], pname[80];

		job->pdisk = NULL;
		for (size_t i = 0;
		     job->pmanifest && !job->full_reason[0] &&
		     i < json_array_len(json_object_object_get(job->pmanifest, "disks"));
		     i++) {
			struct json_object *pd = json_object_array_get_idx(
				json_object_object_get(job->pmanifest, "disks"), i);

			if (!strcmp(json_get_str(pd, "name", ""), d->name))
				job->pdisk = pd;
		}
		job->incr = job->pdisk != NULL;
		if (job->parent[0] && !job->incr && !job->full_reason[0] && !job->force_full)
			snprintf(job->full_reason, sizeof(job->full_reason),
				 "disk %s is not in the parent backup", d->name);
		/* Read whole: from a fleecing node's NBD export, unless that failed once. */
		if (!job->incr && !job->fleece_off) {
			backup_fleece_start(job);
			return;
		}
		/* An incremental's job must not run under a filter a killed agent's
		 * fleecing left in front of the disk: that goes first (once per disk),
		 * unless this agent knows there is none (backup_fleece.c). */
		if (job->incr && job->cleared_disk != job->disk + 1) {
			job->cleared_disk = job->disk + 1;
			if (!backup_nodes_clean(job->op->vm)) {
				log_trace("backup %s: clearing leftover fleecing", job->id);
				job->leftover_checks++;
				backup_fleece_clear(job, backup_disk_read);
				return;
			}
			log_trace("backup %s: no backup node in QEMU (known)", job->id);
		}
		if (!job->incr)
			job->copied++;
		/* The node names qemuargs.c gives the disks: d0, d1, ... */
		fleece_names_make(job->disk, NULL, &n);
		block_job_id(job, job->disk, jid, sizeof(jid));
		snprintf(name, sizeof(name), "kumo-%s", job->id);
		snprintf(pname, sizeof(pname), "kumo-%s", job->parent);
		snprintf(job->target, sizeof(job->target), "%s/%s.qcow2", job->tmpdir, d->name);
		/* One transaction: the new bitmap starts at exactly the backup's point in
		 * time, so the next incremental backup moves what changed after it. The
		 * parent's bitmap is left as it is (bitmap-mode never): dropped only once
		 * this backup succeeded (manifest_after), so one that fails after QEMU's
		 * job leaves the next incremental every write since the parent.
		 * The target the agent made goes in as a node of QEMU's that never
		 * fdatasyncs (fleece.h), added now: QEMU takes commands in order, so it
		 * is there for the transaction, and opened outside the freeze. */
		target_node_drop(job);
		if (job->incr && target_made(job)) {
			snprintf(job->target_node, sizeof(job->target_node), "kbt-%.20s-%zu",
				 job->id, job->disk);
			if (vm_qmp(job->op->vm, "blockdev-add",
				   fleece_target_add_args(job->target_node, job->target),
				   BACKUP_JOB_TIMEOUT, target_added_cb, job->op->vm, NULL) == 0)
				backup_node_added(job->op->vm);
		}
		tx = fleece_copy_tx_args(&n, jid, name, job->incr ? pname : NULL,
					 job->incr ? job->target : job->raw, job->rate_bytes_s,
					 job->target_node[0] ? job->target_node : NULL);
		json_object_put(job->tx);
		job->tx = tx;
		log_trace("backup %s: disk %s: asking for a freeze", job->id, d->name);
		backup_guest_freeze(job);
		return;
	}
	/* Stopped: chunk_work reads the disk file itself (backupmap.c), no copy first,
	 * and gives it its bitmap meanwhile (bitmaps_thread). */
	job->incr = false;
	job->direct = true;
	read_done(job, NULL);
}

/* ---- restore: per disk, reassemble a raw file from the chunks, then write it in -------- */

/* Thread: read the manifest, and make the work directory. */
static void restore_prepare_work(struct bjob *job)
{
	struct kerr err;

	/* The key first: a wrong one is named before any manifest is read. */
	if (key_refused(job))
		return;
	if (chunkstore_key_check(job->store, job->key, false, &err) < 0 ||
	    chunkstore_manifest_read_with(job->store, job->key, job->id, &job->manifest, &err) <
		    0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	prepare_work(job);
}

/*
 * Thread: write the disk job->mdisk names into job->raw, checking every byte: each
 * chunk against its name, and the disk against the manifest's checksum (version 2:
 * the chunk list's, before anything is read; version 1: the bytes', as they go).
 */
static void reassemble_work(struct bjob *job)
{
	struct json_object *chunks = json_object_object_get(job->mdisk, "chunks");
	int64_t size = json_get_int(job->mdisk, "virtual_size", -1), off = 0;
	_cleanup_free_ unsigned char *buf = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	_cleanup_close_ int fd = -1;
	EVP_MD_CTX *ctx = NULL;
	unsigned char md[32];
	char hex[CHUNKSTORE_HEX_LEN + 1];
	struct kerr err;
	int sum;

	if (!json_object_is_type(chunks, json_type_array) || size < 0) {
		snprintf(job->error, sizeof(job->error), "the manifest's disk entry is malformed");
		return;
	}
	sum = chunkstore_disk_sum(job->manifest, job->mdisk, hex, &err);
	if (sum < 0 || (sum == 0 && strcmp(hex, json_get_str(job->mdisk, "sha256", "")) != 0)) {
		snprintf(job->error, sizeof(job->error), "the backup's chunk list %s",
			 sum < 0 ? err.msg : "does not match its checksum");
		return;
	}
	fd = open(job->raw, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(job->error, sizeof(job->error), "cannot write %s: %s", job->raw,
			 strerror(errno));
		return;
	}
	if (sum == 1) {
		ctx = EVP_MD_CTX_new();
		EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	}
	for (size_t c = 0; c < json_array_len(chunks); c++) {
		const char *name = json_object_get_string(json_object_array_get_idx(chunks, c));
		size_t len;

		if (chunkstore_get_with(job->store, job->key, name ? name : "", buf,
					CHUNKSTORE_CHUNK_SIZE, &len, &err) < 0) {
			snprintf(job->error, sizeof(job->error), "at offset %lld: %s",
				 (long long)off, err.msg);
			goto out;
		}
		if (ctx)
			EVP_DigestUpdate(ctx, buf, len);
		/* Zeros stay a hole: the raw file is sparse, like the disk it becomes. */
		if (!(name && (chunkstore_zero_len(name) > 0 ||
			       !strcmp(name, chunkstore_zero_name(job->key)))) &&
		    !mem_is_zero(buf, len) && pwrite(fd, buf, len, off) != (ssize_t)len) {
			snprintf(job->error, sizeof(job->error), "cannot write %s: %s", job->raw,
				 strerror(errno));
			goto out;
		}
		off += (int64_t)len;
	}
	if (ctx) {
		EVP_DigestFinal_ex(ctx, md, NULL);
		hex_encode(md, sizeof(md), hex);
	}
	if (off != size || strcmp(hex, json_get_str(job->mdisk, "sha256", "")) != 0) {
		snprintf(job->error, sizeof(job->error),
			 "the reassembled disk does not match the backup's checksum");
		goto out;
	}
	if (ftruncate(fd, size) < 0)
		snprintf(job->error, sizeof(job->error), "cannot size %s: %s", job->raw,
			 strerror(errno));
	job->read_bytes += (uint64_t)size;
out:
	EVP_MD_CTX_free(ctx);
}

static void write_done(struct bjob *job, const char *error)
{
	if (error) {
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, error);
		return;
	}
	unlink(job->raw); /* small: a local unlink of a file we made */
	job->disk++;
	disk_next(job);
}

static void reassemble_after(struct bjob *job)
{
	struct vm_disk *d = &job->op->disks[job->disk];
	char phase[96];

	if (job->error[0]) {
		backup_job_fail(job, "disk %s: %s", d->name, job->error);
		return;
	}
	snprintf(phase, sizeof(phase), "writing disk %s", d->name);
	instance_op_progress(job->op, (int)((job->disk * 2 + 1) * 90 / (job->op->ndisks * 2)),
			     phase);
	{
		/* -n: into the existing disk, which keeps its file, owner and backing file;
		 * qemu-img then writes zeros where the backup has them. */
		char *args[] = {"qemu-img", "convert", "-q",	 "-n",	 "-f", "raw",
				"-O",	    "qcow2",   job->raw, d->abs, NULL};

		qemu_img_run(job, args, write_done);
	}
}

static void disk_restore(struct bjob *job)
{
	struct vm_disk *d = &job->op->disks[job->disk];
	struct json_object *mdisks = json_object_object_get(job->manifest, "disks");
	char phase[96];

	job->mdisk = NULL;
	for (size_t i = 0; i < json_array_len(mdisks); i++) {
		struct json_object *md = json_object_array_get_idx(mdisks, i);

		if (!strcmp(json_get_str(md, "name", ""), d->name))
			job->mdisk = md;
	}
	if (job->mdisk == NULL) {
		backup_job_fail(job, "the backup has no disk named %s", d->name);
		return;
	}
	snprintf(job->raw, sizeof(job->raw), "%s/%s.raw", job->tmpdir, d->name);
	snprintf(phase, sizeof(phase), "reading disk %s from the store", d->name);
	instance_op_progress(job->op, (int)(job->disk * 2 * 90 / (job->op->ndisks * 2)), phase);
	backup_pool_run(job, reassemble_work, reassemble_after);
}

static void restore_finish_work(struct bjob *job)
{
	tree_remove(job->tmpdir);
}

static void restore_finish_after(struct bjob *job)
{
	struct inst_op *op = job->op;
	struct json_object *r = json_object_new_object();

	json_object_object_add(r, "backup", json_object_new_string(job->id));
	json_object_object_add(r, "read_bytes", json_object_new_int64((int64_t)job->read_bytes));
	if (op->result == NULL)
		op->result = json_object_new_object();
	json_object_object_add(op->result, "restore", r);
	void (*then)(struct inst_op * op) = job->then;

	log_info("vm %s: restored from backup %s", json_get_str(op->spec, "name", ""), job->id);
	job_free(job);
	if (then)
		then(op);
	else
		instance_op_succeed(op);
}

/* The next disk, or the end: the manifest (backup) or the clean-up (restore). */
static void disk_next(struct bjob *job)
{
	if (job->disk < job->op->ndisks) {
		if (job->restore) {
			disk_restore(job);
			return;
		}
		job->mdisk = json_object_new_object();
		json_object_object_add(job->mdisk, "name",
				       json_object_new_string(job->op->disks[job->disk].name));
		json_object_array_add(json_object_object_get(job->manifest, "disks"), job->mdisk);
		backup_disk_read(job);
		return;
	}
	if (job->restore) {
		backup_pool_run(job, restore_finish_work, restore_finish_after);
		return;
	}
	instance_op_progress(job->op, 95, "writing the manifest");
	log_trace("backup %s: committing the manifest", job->id);
	backup_pool_run(job, manifest_work, manifest_after);
}

static void prepare_after(struct bjob *job)
{
	job->prepare_ms = now_ms() - job->started_ms;
	log_trace("backup %s: store prepared", job->id);
	if (job->error[0]) {
		backup_job_fail(job, "%s", job->error);
		return;
	}
	if (job->restore && strcmp(json_get_str(job->manifest, "type", "vm"), "vm") != 0) {
		backup_job_fail(job, "the backup is not of a VM");
		return;
	}
	disk_next(job);
}

/*
 * Take an encrypted store's key out of args (checked already by backup_args): its
 * derived keys go to job->key, its text is wiped and leaves the args, so nothing that
 * reads or reports the op later sees it.
 */
static void job_key_take(struct bjob *job, struct json_object *args)
{
	struct json_object *v;
	unsigned char key[CHUNKCRYPT_KEY_LEN];
	struct kerr err;

	if (!json_object_object_get_ex(args, "key", &v))
		return;
	if (chunkcrypt_key_parse(json_object_get_string(v), key, &err) == 0) {
		job->key = xmalloc(sizeof(*job->key));
		chunkcrypt_key_derive(key, CHUNKSTORE_CHUNK_SIZE, job->key);
	} else {
		/* Never a plain job for an encrypted store (key_refused()). */
		job->key_bad = true;
	}
	OPENSSL_cleanse(key, sizeof(key));
	/* json-c owns the text; it is ours to overwrite before it is freed. */
	OPENSSL_cleanse((char *)json_object_get_string(v), (size_t)json_object_get_string_len(v));
	json_object_object_del(args, "key");
}

/* A job for op; args holds its backup and store (op->args, or a create's "restore"). */
static struct bjob *job_new(struct inst_op *op, struct json_object *args, bool restore)
{
	struct bjob *job = xcalloc(1, sizeof(*job));
	const char *shared = disk_pool_root(op->agent->cfg, "shared");

	job->op = op;
	job->agent = op->agent;
	job->restore = restore;
	job->store_fd = -1;
	job->started_ms = now_ms();
	job_key_take(job, args);
	snprintf(job->id, sizeof(job->id), "%s", json_get_str(args, "backup", ""));
	snprintf(job->store, sizeof(job->store), "%s/%s", shared ? shared : "",
		 json_get_str(args, "store", ""));
	/* A restore's work files carry the instance's name too: one backup may be
	 * restored into several instances at once. */
	if (restore)
		snprintf(job->tmpdir, sizeof(job->tmpdir), "%s/tmp/%s.%s", job->store, job->id,
			 json_get_str(op->spec, "name", ""));
	else
		snprintf(job->tmpdir, sizeof(job->tmpdir), "%s/tmp/%s", job->store, job->id);
	uv_timer_init(op->agent->loop, &job->poll);
	job->poll.data = job;
	job->poll_open = true;
	return job;
}

/* The uid and gid vm's QEMU runs as: --qemu-user's (0 for root), or the VM's own
 * (uid.c: *own set). -1 when --qemu-user names no user. */
int backup_qemu_ids(struct vm *vm, uid_t *uid, gid_t *gid, bool *own)
{
	const char *user = vm->inst.agent->cfg->qemu_user;
	struct passwd *pw;

	*uid = 0;
	*gid = 0;
	*own = false;
	if (strcmp(user, "root") == 0)
		return 0;
	pw = getpwnam(user);
	if (pw == NULL)
		return -1;
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	if (uid_vm_read(vm->inst.dir) != 0) {
		*uid = *gid = uid_vm_read(vm->inst.dir);
		*own = true;
	}
	return 0;
}

/*
 * The "backup" action: every disk of op->vm into the store args.store, as backup
 * args.backup. A running VM goes on running. Ends in instance_op_succeed() with
 * result.backup, or instance_op_fail().
 */
void backup_vm_run(struct inst_op *op)
{
	struct vm *vm = op->vm;
	struct bjob *job;

	if (vm->inst.state == INST_STARTING || vm->inst.state == INST_STOPPING) {
		instance_op_fail(op,
				 "instance %s is starting or stopping; back it up once it "
				 "settled",
				 vm->inst.name);
		return;
	}
	if (disk_pool_root(op->agent->cfg, "shared") == NULL) {
		instance_op_fail(op, "this host has no shared pool for the backup store");
		return;
	}
	job = job_new(op, op->args, false);
	job->live = vm->inst.state == INST_RUNNING || vm->inst.state == INST_PAUSED;
	job->next_live = live_jobs;
	live_jobs = job;
	snprintf(job->parent, sizeof(job->parent), "%s", json_get_str(op->args, "parent", ""));
	snprintf(job->revert_record, sizeof(job->revert_record), "%s/%s", vm->inst.dir,
		 SNAPREVERT_RECORD);
	job->force_full = json_get_bool(op->args, "full", false);
	/* Mbit/s as a migration counts them: 10^6 bits, 125,000 bytes. */
	job->rate_bytes_s = (uint64_t)json_get_int(op->args, "bandwidth_mbps", 0) * 125000;
	job->all_incr = job->parent[0] != '\0' && !job->force_full;
	if (job->live &&
	    backup_qemu_ids(vm, &job->qemu_uid, &job->qemu_gid, &job->qemu_uid_own) < 0) {
		backup_job_fail(job, "no user %s for QEMU", op->agent->cfg->qemu_user);
		return;
	}
	job->manifest = json_object_new_object();
	json_object_object_add(job->manifest, "version",
			       json_object_new_int(CHUNKSTORE_MANIFEST_V));
	json_object_object_add(job->manifest, "id", json_object_new_string(job->id));
	json_object_object_add(job->manifest, "instance", json_object_new_string(vm->inst.name));
	json_object_object_add(job->manifest, "type", json_object_new_string("vm"));
	json_object_object_add(job->manifest, "spec", json_object_get(vm->inst.spec));
	/* A stopped VM's disks are at rest; a running one's are as after a power cut
	 * until its guest agent froze every disk's file systems (backup_guest_freeze). */
	json_object_object_add(job->manifest, "consistency",
			       json_object_new_string(job->live ? "crash" : "filesystem"));
	json_object_object_add(job->manifest, "created_at", json_object_new_int64(now_ms()));
	json_object_object_add(job->manifest, "chunk_size",
			       json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	json_object_object_add(job->manifest, "disks", json_object_new_array());
	instance_op_progress(op, 0, "preparing the store");
	backup_pool_run(job, prepare_work, prepare_after);
}

/*
 * The "restore" action: the stopped op->vm's disks take the content of backup
 * args.backup in store args.store, each checked against the backup's checksums
 * before it is written. Ends in instance_op_succeed() or instance_op_fail().
 */
void backup_vm_restore(struct inst_op *op)
{
	struct vm *vm = op->vm;

	if (vm->inst.state != INST_STOPPED && vm->inst.state != INST_CRASHED &&
	    vm->inst.state != INST_ERROR) {
		instance_op_fail(op, "instance %s must be stopped to be restored over",
				 vm->inst.name);
		return;
	}
	if (disk_pool_root(op->agent->cfg, "shared") == NULL) {
		instance_op_fail(op, "this host has no shared pool for the backup store");
		return;
	}
	instance_op_progress(op, 0, "reading the manifest");
	backup_pool_run(job_new(op, op->args, true), restore_prepare_work, prepare_after);
}

/*
 * The job of a restore within a create: args.restore checked ({backup, store}) and the
 * shared pool present, then(op) after it; NULL when the create failed already.
 */
static struct bjob *restore_job_new(struct inst_op *op, void (*then)(struct inst_op *op))
{
	struct json_object *args = json_object_object_get(op->args, "restore");
	struct bjob *job;
	struct kerr err;

	if (json_fields_check(args, backup_args, &err) < 0) {
		instance_op_fail(op, "restore: %s", err.msg);
		return NULL;
	}
	if (disk_pool_root(op->agent->cfg, "shared") == NULL) {
		instance_op_fail(op, "this host has no shared pool for the backup store");
		return NULL;
	}
	job = job_new(op, args, true);
	job->then = then;
	return job;
}

/*
 * Within a create (vmaction.c): the new VM's just-made disks take the content of the
 * backup args.restore names ({backup, store}), checked as in a restore; then(op)
 * goes on with the create. A failure fails the create, which removes what it made.
 */
void backup_vm_restore_then(struct inst_op *op, void (*then)(struct inst_op *op))
{
	struct bjob *job = restore_job_new(op, then);

	if (job == NULL)
		return;
	instance_op_progress(op, 65, "reading the backup's manifest");
	backup_pool_run(job, restore_prepare_work, prepare_after);
}

/* ---- containers: the writable layer as one tar stream, chunked like a disk ------------- */

/*
 * A container's backup is its spec (image reference included) and its writable
 * layer, upper/, packed by tar (numeric owners, extended attributes: overlayfs keeps
 * whiteouts and opaque directories there) into one file that is chunked, hashed and
 * stored as the manifest's disk "upper". A running container is paused (the cgroup
 * freezer) while tar reads it: every write its processes completed is in, none is
 * half-done, so the layer is as consistent as after a clean fsfreeze ("filesystem";
 * what the processes only held in memory is not, as for a VM). The owners are kept
 * relative to the container's root uid on the host (user namespaces give each
 * container its own range, uid.c), and shifted into the new one's on restore.
 */
#define CTR_LAYER "upper"

static void ctr_closing(struct bjob *job);

/* Thread: tar upper/ into job->raw, then chunk it. */
static void ctr_read_work(struct bjob *job)
{
	_cleanup_free_ char *upper = xasprintf("%s/" CTR_LAYER, job->op->ctr->inst.dir);
	char *argv[] = {"tar", "-C", upper, "--numeric-owner", "--xattrs", "--xattrs-include=*",
			/* A tenant's 15 TB sparse file is its data, not 15 TB of zeros on the
			 * shared pool: holes stay holes (and come back as holes on restore). */
			"--sparse", "-cf", job->raw, ".", NULL};
	struct stat sb;
	int rc;

	prepare_work(job);
	if (job->error[0])
		return;
	if (stat(upper, &sb) < 0) {
		snprintf(job->error, sizeof(job->error), "cannot read %s: %s", upper,
			 strerror(errno));
		return;
	}
	job->uid_base = sb.st_uid;
	rc = backup_run_wait(job, argv, NULL, 0);
	/* 1: a file changed while it was read; only a running container's can. */
	if (rc != 0 && !(rc == 1 && job->live)) {
		snprintf(job->error, sizeof(job->error), "tar of the writable layer failed (%d)",
			 rc);
		return;
	}
	chunk_work(job);
}

static void ctr_resumed_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	struct bjob *job = data;

	if (backup_job_gone(job))
		return;
	if (r->status != 0)
		log_warnx("container %s: resuming after the backup: %s", job->op->ctr->inst.name,
			  r->error);
	oci_refresh(job->op->ctr);
	job->resume = false;
	ctr_closing(job);
}

/* The layer is read: resume the container if the backup paused it, then finish. */
static void ctr_read_after(struct bjob *job)
{
	struct kerr err;

	if (job->resume &&
	    oci_runc(job->agent, (const char *const[]){"resume", job->op->ctr->inst.name, NULL},
		     30000, 0, false, NULL, ctr_resumed_cb, job, &err) == 0)
		return;
	if (job->resume)
		log_warnx("container %s: cannot resume after the backup: %s",
			  job->op->ctr->inst.name, err.msg);
	job->resume = false;
	ctr_closing(job);
}

static void ctr_closing(struct bjob *job)
{
	if (job->error[0]) {
		backup_job_fail(job, "the writable layer: %s", job->error);
		return;
	}
	json_object_object_add(job->manifest, "uid_base",
			       json_object_new_int64((int64_t)job->uid_base));
	instance_op_progress(job->op, 95, "writing the manifest");
	backup_pool_run(job, manifest_work, manifest_after);
}

static void ctr_paused_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	struct bjob *job = data;

	if (backup_job_gone(job))
		return;
	if (r->status != 0 || r->timed_out) {
		backup_job_fail(job, "cannot pause the container: %s", r->error);
		return;
	}
	job->resume = true;
	instance_op_progress(job->op, 10, "reading the writable layer (paused)");
	backup_pool_run(job, ctr_read_work, ctr_read_after);
}

/*
 * The "backup" action of the container driver: spec and writable layer into the
 * store args.store as backup args.backup, always full (there is no changed-block
 * tracking of a directory). Ends in instance_op_succeed() with result.backup, or
 * instance_op_fail().
 */
void backup_ctr_run(struct inst_op *op)
{
	struct ctr *ctr = op->ctr;
	struct bjob *job;
	struct kerr err;

	oci_refresh(ctr);
	if (ctr->inst.state == INST_STARTING || ctr->inst.state == INST_STOPPING) {
		instance_op_fail(op,
				 "container %s is starting or stopping; back it up once it "
				 "settled",
				 ctr->inst.name);
		return;
	}
	if (disk_pool_root(op->agent->cfg, "shared") == NULL) {
		instance_op_fail(op, "this host has no shared pool for the backup store");
		return;
	}
	job = job_new(op, op->args, false);
	job->manifest = json_object_new_object();
	json_object_object_add(job->manifest, "version",
			       json_object_new_int(CHUNKSTORE_MANIFEST_V));
	json_object_object_add(job->manifest, "id", json_object_new_string(job->id));
	json_object_object_add(job->manifest, "instance", json_object_new_string(ctr->inst.name));
	json_object_object_add(job->manifest, "type", json_object_new_string("container"));
	json_object_object_add(job->manifest, "spec", json_object_get(ctr->inst.spec));
	json_object_object_add(job->manifest, "consistency", json_object_new_string("filesystem"));
	json_object_object_add(job->manifest, "created_at", json_object_new_int64(now_ms()));
	json_object_object_add(job->manifest, "chunk_size",
			       json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	json_object_object_add(job->manifest, "disks", json_object_new_array());
	job->mdisk = json_object_new_object();
	json_object_object_add(job->mdisk, "name", json_object_new_string(CTR_LAYER));
	json_object_object_add(job->mdisk, "format", json_object_new_string("tar"));
	json_object_array_add(json_object_object_get(job->manifest, "disks"), job->mdisk);
	snprintf(job->raw, sizeof(job->raw), "%s/" CTR_LAYER ".tar", job->tmpdir);
	if (ctr->inst.state == INST_RUNNING) {
		/* Paused, as commit does: nothing writes while the layer is read. */
		job->live = true;
		instance_op_progress(op, 5, "pausing the container");
		if (oci_runc(op->agent, (const char *const[]){"pause", ctr->inst.name, NULL}, 30000,
			     0, false, NULL, ctr_paused_cb, job, &err) < 0)
			backup_job_fail(job, "%s", err.msg);
		return;
	}
	instance_op_progress(op, 10, "reading the writable layer");
	backup_pool_run(job, ctr_read_work, ctr_read_after);
}

/* nftw() has no user pointer: the shift of the one restore a worker runs at a time. */
static __thread int64_t shift_from, shift_to;

static int shift_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	int64_t uid = sb->st_uid, gid = sb->st_gid;

	if (uid >= shift_from && uid < shift_from + 65536)
		uid = uid - shift_from + shift_to;
	if (gid >= shift_from && gid < shift_from + 65536)
		gid = gid - shift_from + shift_to;
	if ((uid != sb->st_uid || gid != sb->st_gid) && lchown(path, (uid_t)uid, (gid_t)gid) < 0)
		return -1;
	return 0;
}

/* Thread: read the manifest, reassemble the layer's tar, unpack it into upper/. */
static void ctr_restore_work(struct bjob *job)
{
	_cleanup_free_ char *upper = xasprintf("%s/" CTR_LAYER, job->op->ctr->inst.dir);
	char *argv[] = {
		"tar",	"-C",	  upper, "--numeric-owner", "--xattrs", "--xattrs-include=*",
		"-xpf", job->raw, NULL};
	struct json_object *mdisks;
	struct stat sb;

	restore_prepare_work(job);
	if (job->error[0])
		return;
	if (strcmp(json_get_str(job->manifest, "type", ""), "container") != 0) {
		snprintf(job->error, sizeof(job->error), "the backup is not of a container");
		return;
	}
	mdisks = json_object_object_get(job->manifest, "disks");
	for (size_t i = 0; i < json_array_len(mdisks); i++)
		if (!strcmp(json_get_str(json_object_array_get_idx(mdisks, i), "name", ""),
			    CTR_LAYER))
			job->mdisk = json_object_array_get_idx(mdisks, i);
	if (job->mdisk == NULL) {
		snprintf(job->error, sizeof(job->error), "the backup holds no writable layer");
		return;
	}
	snprintf(job->raw, sizeof(job->raw), "%s/" CTR_LAYER ".tar", job->tmpdir);
	reassemble_work(job);
	if (job->error[0])
		return;
	if (stat(upper, &sb) < 0 || backup_run_wait(job, argv, NULL, 0) != 0) {
		snprintf(job->error, sizeof(job->error), "cannot unpack the layer into %s", upper);
		return;
	}
	/* The files belong to the new container's root, as they did to the old one's. */
	shift_from = json_get_int(job->manifest, "uid_base", 0);
	shift_to = sb.st_uid;
	if (shift_from != shift_to && nftw(upper, shift_one, 16, FTW_PHYS) != 0) {
		snprintf(job->error, sizeof(job->error), "cannot give the layer to uid %lld: %s",
			 (long long)shift_to, strerror(errno));
		return;
	}
	tree_remove(job->tmpdir);
}

static void ctr_restore_after(struct bjob *job)
{
	struct inst_op *op = job->op;
	void (*then)(struct inst_op * op) = job->then;

	if (job->error[0]) {
		backup_job_fail(job, "%s", job->error);
		return;
	}
	log_info("container %s: writable layer restored from backup %s", op->ctr->inst.name,
		 job->id);
	job_free(job);
	then(op);
}

/*
 * Within a container's create (ociaction.c), once its bundle is made and before it
 * starts: its writable layer takes the content of the backup args.restore names
 * ({backup, store}); then(op) goes on with the create. A failure fails the create.
 */
void backup_ctr_restore_then(struct inst_op *op, void (*then)(struct inst_op *op))
{
	struct bjob *job = restore_job_new(op, then);

	if (job == NULL)
		return;
	instance_op_progress(op, 70, "writing the writable layer from the backup");
	backup_pool_run(job, ctr_restore_work, ctr_restore_after);
}
