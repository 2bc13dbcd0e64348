/*
 * backup_fleece.c - a running VM's disk read whole for a backup through image fleecing
 * (fleece.h says what QEMU is asked and why; backup.c says where this fits): the
 * overlay and the copy-before-write filter made, the point in time taken (frozen: the
 * new dirty bitmap, then the filter put in front of the disk), QEMU's NBD export of
 * the snapshot read by nbd.c into the chunk pipeline, the objects torn down. QEMU's
 * side is two lists run one command at a time: the setup (fleece_setup_step, with
 * setup_rows saying what the agent does between steps) and the teardown
 * (fleece_teardown_step). Any failure before the read falls back to QEMU's copy
 * (backup.c).
 */
#include "backup_int.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chunkstore.h"
#include "fleece.h"
#include "json.h"
#include "nbd.h"
#include "util.h"

/* How long a guest write may wait for its old block's copy into the overlay before
 * the filter gives up on the backup's view instead (the write then proceeds). */
#define BACKUP_FLEECE_CBW_TIMEOUT_S 20

/* disk i's fleecing names in vm (its device's QOM path depends on the disk's bus). */
static void vm_disk_names(struct vm *vm, size_t i, struct fleece_names *n)
{
	struct json_object *arr = NULL;
	const char *bus = NULL;

	if (json_object_object_get_ex(vm->inst.spec, "disks", &arr) &&
	    json_object_is_type(arr, json_type_array) && i < json_array_len(arr))
		bus = json_get_str(json_object_array_get_idx(arr, i), "bus", NULL);
	fleece_names_make(i, bus, n);
}

static void job_names(struct bjob *job, struct fleece_names *n)
{
	vm_disk_names(job->op->vm, job->disk, n);
}

/* QEMU's NBD socket and its directory (QEMU stopped its server: the teardown ran):
 * a finished read leaves nothing in the runtime directory. The directory only when
 * the uid is the VM's own: a shared one's may be in use by another VM's backup, about
 * to bind in it. Small local calls. */
static void sock_remove(struct bjob *job)
{
	char dir[sizeof(job->nbd_sock)];
	char *slash;

	if (!job->nbd_sock[0])
		return;
	unlink(job->nbd_sock);
	snprintf(dir, sizeof(dir), "%s", job->nbd_sock);
	if (job->qemu_uid_own && (slash = strrchr(dir, '/')) != NULL) {
		*slash = '\0';
		rmdir(dir);
	}
	job->nbd_sock[0] = '\0';
}

/* A teardown in flight: fleece.h's steps, one after the other on the VM's QMP
 * connection (each waits for the last: QEMU must have dropped the export before the
 * node, the device before the filter). job and then: who waits, or NULL. */
struct teardown {
	struct fleece_names n;
	int step;
	struct bjob *job;
	void (*then)(struct bjob *job);
};

static void teardown_send(struct qmp *q, struct teardown *t);

static void teardown_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct teardown *t = data;

	/* Each step may find nothing to undo: not an error. */
	if (error)
		log_debug("fleecing teardown %s: step %d: %s", t->n.node, t->step, error);
	if (t->step == FLEECE_STEP_QOM_GET)
		/* Back onto the disk only from the filter: onto itself aborts QEMU. */
		t->step = error == NULL && fleece_filter_in_front(&t->n, ret)
				  ? FLEECE_STEP_QOM_SET
				  : FLEECE_STEP_QOM_SET + 1;
	else
		t->step++;
	teardown_send(q, t);
}

static void teardown_send(struct qmp *q, struct teardown *t)
{
	const char *cmd;
	struct json_object *args = fleece_teardown_step(&t->n, t->step, &cmd);
	struct kerr err;

	if (args != NULL &&
	    qmp_cmd_send(q, cmd, args, BACKUP_JOB_TIMEOUT, teardown_cb, t, &err) == 0)
		return;
	/* Done, or the connection gone (QEMU with it, or the agent stopping). */
	if (t->job && t->then && !backup_job_gone(t->job))
		t->then(t->job);
	free(t);
}

/* Start disk i's teardown in vm's QEMU; then(job) after it (job may be NULL). */
static void teardown_start(struct vm *vm, size_t i, struct bjob *job,
			   void (*then)(struct bjob *job))
{
	struct teardown *t = xcalloc(1, sizeof(*t));

	backup_nodes_unknown(vm); /* its steps may fail quietly (nothing to undo, or not) */
	vm_disk_names(vm, i, &t->n);
	t->job = job;
	t->then = then;
	teardown_send(vm->qmp, t);
}

/* Remove the disk's fleecing objects from QEMU (whatever of them exists); then then(job). */
static void fleece_down(struct bjob *job, void (*then)(struct bjob *job))
{
	teardown_start(job->op->vm, job->disk, job, then);
}

/* The same, no one waiting (a failure or a cancel frees the job right after): the
 * steps still go in order, on their own. */
void backup_fleece_drop(struct bjob *job)
{
	teardown_start(job->op->vm, job->disk, NULL, NULL);
	job->fleece = false;
	/* The socket's path goes now (QEMU's listener, if any, stops in the teardown;
	 * it needs no path): a failed or cancelled read leaves no file behind either. */
	sock_remove(job);
}

/* ---- what this agent knows of backup nodes in a QEMU (struct vm's vm_bk_*) -------------
 * An incremental asks QEMU which nodes exist before its job (backup_fleece_clear()),
 * a QMP round trip on the serial path, to find what a killed agent or a failed
 * teardown left. It skips the question only when the answer is known to be "none":
 * a query on this QMP connection found no kfl- or kbt- node, and since then the only
 * such nodes were the incremental targets this agent added and saw removed. Anything
 * else forgets it until the next query: a fleecing (its teardown's steps may fail
 * quietly), a removal that failed or was not confirmed, a leftover found, a job that
 * ended with no backup waiting, a new QMP connection. */

/* The knowledge may be out of date: the next incremental asks QEMU. */
void backup_nodes_unknown(struct vm *vm)
{
	vm->vm_bk_known = false;
	vm->vm_bk_gen++;
}

/* A new QMP connection to vm's QEMU (vm.c): nothing known of it yet. */
void backup_nodes_reset(struct vm *vm)
{
	vm->vm_bk_nodes = 0;
	backup_nodes_unknown(vm);
}

/* Whether vm's QEMU is known to hold no backup node at all. */
bool backup_nodes_clean(const struct vm *vm)
{
	return vm->vm_bk_known && vm->vm_bk_nodes == 0;
}

/* An incremental's target node was asked for (blockdev-add sent). */
void backup_node_added(struct vm *vm)
{
	vm->vm_bk_nodes++;
	vm->vm_bk_gen++; /* a node list asked before it no longer says all */
}

/* An incremental's target node this agent added was removed, or its removal failed
 * (error): then what QEMU holds is not known. */
void backup_node_removed(struct vm *vm, const char *error)
{
	if (error || vm->vm_bk_nodes == 0)
		backup_nodes_unknown(vm);
	else
		vm->vm_bk_nodes--;
}

/* QEMU's node list (ret), asked when the knowledge was at gen: with no backup node in
 * it and nothing changed since the question, vm is known clean. */
static void nodes_listed(struct vm *vm, unsigned gen, struct json_object *ret)
{
	if (gen != vm->vm_bk_gen)
		return;
	for (size_t i = 0; i < json_array_len(ret); i++) {
		const char *name = json_get_str(json_object_array_get_idx(ret, i), "node-name", "");

		if (!strncmp(name, "kfl-", 4) || !strncmp(name, "kbt-", 4))
			return;
	}
	/* Every add counted was sent before the question (an add changes gen) and QMP
	 * answers in order: the list is whole, and none of them is left (one whose removal
	 * failed or went uncounted, a cancelled incremental's, no longer holds the skip off). */
	vm->vm_bk_nodes = 0;
	vm->vm_bk_known = true;
}

static void leftover_del_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	if (error)
		log_debug("backup: a leftover target node: %s", error);
}

/* node, when it is an incremental's target node (fleece.h) a killed agent left in
 * QEMU (holding its deleted work file open): removed, not waited for. */
static void target_leftover_drop(struct vm *vm, const char *node)
{
	struct json_object *args;

	if (strncmp(node, "kbt-", 4) != 0)
		return;
	backup_nodes_unknown(vm);
	log_info("vm %s: removing an incremental backup's target node %s an earlier backup left",
		 vm->inst.name, node);
	args = json_object_new_object();
	json_object_object_add(args, "node-name", json_object_new_string(node));
	vm_qmp(vm, "blockdev-del", args, BACKUP_JOB_TIMEOUT, leftover_del_cb, NULL, NULL);
}

/* A clear's question in flight: who waits for it. */
struct clear {
	struct bjob *job;
	void (*then)(struct bjob *job);
	unsigned gen; /* the VM's vm_bk_gen when asked */
};

static void clear_nodes_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct clear *c = data;
	struct bjob *job = c->job;
	void (*then)(struct bjob * job) = c->then;
	struct fleece_names n;
	bool found = error != NULL; /* not known: torn down to be sure */

	unsigned gen = c->gen;

	free(c);
	log_trace("backup %s: block nodes listed", job->id);
	if (backup_job_gone(job))
		return;
	if (error == NULL)
		nodes_listed(job->op->vm, gen, ret);
	job_names(job, &n);
	for (size_t i = 0; i < json_array_len(ret); i++) {
		const char *name = json_get_str(json_object_array_get_idx(ret, i), "node-name", "");

		found = found || !strcmp(name, n.node) || !strcmp(name, n.cbw) ||
			!strcmp(name, n.access);
		if (strcmp(name, job->target_node) != 0)
			target_leftover_drop(job->op->vm, name);
	}
	if (found) {
		log_info("vm %s: backup %s: removing the fleecing objects a backup left on disk "
			 "%s",
			 job->op->vm->inst.name, job->id, job->op->disks[job->disk].name);
		fleece_down(job, then);
		return;
	}
	then(job);
}

/*
 * Before a live read that does not fleece (an incremental, a copy): what a killed
 * agent (or a failed backup's teardown still under way) left of a fleecing on this
 * disk goes first, so QEMU's copy job does not run under a stale filter; then
 * then(job). QEMU is asked once which nodes exist, and the teardown's seven steps
 * (each a QMP round trip, most of them refused as there is nothing to undo) run only
 * when one of this disk's fleecing nodes is there: the NBD export and server and the
 * filter in front of the disk exist only while its nodes do (fleece.h's order).
 */
void backup_fleece_clear(struct bjob *job, void (*then)(struct bjob *job))
{
	struct json_object *args = json_object_new_object();
	struct clear *c = xcalloc(1, sizeof(*c));
	struct kerr err;

	c->job = job;
	c->then = then;
	c->gen = job->op->vm->vm_bk_gen;
	json_object_object_add(args, "flat", json_object_new_boolean(true));
	if (vm_qmp(job->op->vm, "query-named-block-nodes", args, BACKUP_JOB_TIMEOUT, clear_nodes_cb,
		   c, &err) < 0) {
		free(c);
		fleece_down(job, then);
	}
}

/* The socket a killed agent's fleecing read of vm left, under the uid its QEMU runs as
 * (as this agent is configured: a --qemu-user changed since leaves the old one), and
 * the directory when that uid is the VM's own. */
static void leftover_sock_remove(struct vm *vm)
{
	char dir[PATH_MAX], sock[FLEECE_SOCK_MAX];
	struct kerr err;
	uid_t uid;
	gid_t gid;
	bool own;

	if (backup_qemu_ids(vm, &uid, &gid, &own) < 0 ||
	    fleece_sock_path(vm->inst.agent->cfg->run_dir, uid, vm->inst.dir, dir, sizeof(dir),
			     sock, sizeof(sock), &err) < 0)
		return;
	/* unlink and rmdir never follow a link QEMU may have put there. */
	unlink(sock);
	if (own)
		rmdir(dir);
}

/* At a running VM's adoption: a killed agent's fleecing objects go, for every disk
 * (only when some are there: the teardown stops any NBD server, and an incoming
 * migration's may run). Its socket file goes in any case: an agent killed between the
 * teardown and sock_remove left it, and no NBD server of a fleecing listens on it
 * without the nodes. */
struct adopt {
	struct vm *vm;
	unsigned gen; /* the VM's vm_bk_gen when asked */
};

static void adopt_nodes_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct adopt *ad = data;
	struct vm *vm = ad->vm;
	unsigned gen = ad->gen;
	bool found = false;

	free(ad);
	if (error || vm->inst.removing)
		return;
	nodes_listed(vm, gen, ret);
	leftover_sock_remove(vm);
	for (size_t i = 0; i < json_array_len(ret); i++) {
		const char *name = json_get_str(json_object_array_get_idx(ret, i), "node-name", "");

		if (!strncmp(name, "kfl-", 4))
			found = true;
		target_leftover_drop(vm, name);
	}
	if (!found)
		return;
	log_info("vm %s: removing a backup's fleecing objects an earlier agent left",
		 vm->inst.name);
	for (size_t i = 0; i < vm->ndisks; i++)
		teardown_start(vm, i, NULL, NULL);
}

void backup_fleece_adopted(struct vm *vm)
{
	struct json_object *args = json_object_new_object();
	struct adopt *ad = xcalloc(1, sizeof(*ad));
	struct kerr err;

	ad->vm = vm;
	ad->gen = vm->vm_bk_gen;
	json_object_object_add(args, "flat", json_object_new_boolean(true));
	if (vm_qmp(vm, "query-named-block-nodes", args, BACKUP_JOB_TIMEOUT, adopt_nodes_cb, ad,
		   &err) < 0) {
		free(ad);
		log_debug("vm %s: %s", vm->inst.name, err.msg);
	}
}

/* After a fleecing that failed was torn down: this disk, and the rest of the backup's,
 * are read as before (drive-backup into a raw work file). */
static void fleece_copy_instead(struct bjob *job)
{
	job->fleece = false;
	sock_remove(job);
	if (job->fleece_tx) {
		/* The transaction added this backup's bitmap, and the copy's adds it again:
		 * removed first (one QMP connection: QEMU runs the two in order). */
		struct json_object *args = json_object_new_object();
		struct fleece_names n;
		char name[80];
		struct kerr err;

		job_names(job, &n);
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

/*
 * Thread: where QEMU's NBD server for the read listens (fleece.h): the agent's
 * runtime directory (--run-dir, root's and writable by root alone) 0711 when made
 * here, its fleece/ 0711, root's, and fleece/UID 0700, the VM's QEMU uid's
 * (fleece_sock_dir_make, through directory fds), so no QEMU of another uid can reach
 * the export; VMs that share a uid (--qemu-user) share that directory, and the reader
 * checks who serves the socket (nbd_conn_open). QEMU binds
 * the socket after it dropped root (-runas), hence a directory of its uid's; the VM's
 * run directory is root's alone. Local and short, not in the store: a store's path
 * may pass a unix socket's 107 bytes, and a socket on an NFS or FUSE store may not
 * work at all. The modes are set whatever the umask (systemd gives the agent 0077).
 * Making and handing them over needs root (chown).
 */
static int sock_dir_make(struct bjob *job, struct kerr *err)
{
	const char *run_dir = job->agent->cfg->run_dir;
	char dir[PATH_MAX];
	struct stat sb;
	int ret;

	if (fleece_sock_path(run_dir, job->qemu_uid, job->op->vm->inst.dir, dir, sizeof(dir),
			     job->nbd_sock, sizeof(job->nbd_sock), err) < 0)
		return -1;
	if (lstat(run_dir, &sb) < 0 && errno == ENOENT) {
		ret = mkdir_p(run_dir, 0711);
		if (ret < 0 || chmod(run_dir, 0711) < 0)
			return err_set(err, ret < 0 ? -ret : errno, "cannot make %s", run_dir);
	}
	if (fleece_sock_dir_make(run_dir, job->qemu_uid, job->qemu_gid, err) < 0)
		return -1;
	return fleece_dir_reachable(dir, job->qemu_uid, job->qemu_gid, err);
}

/*
 * Thread: the overlay job->overlay, an empty qcow2 of vsize bytes, QEMU's user's. The
 * work directory is that user's (QEMU writes its copy there), so a guest that took
 * QEMU over may have put a link at the name, to have root overwrite and hand over its
 * target (/etc/passwd): root never goes through the name. What is there goes (unlinkat
 * removes a link itself), the file is made new (O_CREAT|O_EXCL|O_NOFOLLOW: never an
 * existing file or a link's target), handed over by fd, and qemu-img writes the qcow2
 * into that very file through the agent's /proc entry of the fd, whatever the name
 * points to meanwhile. Returns 0, or < 0 with err.
 */
static int overlay_create(struct bjob *job, int64_t vsize, struct kerr *err)
{
	_cleanup_close_ int dfd = -1, fd = -1;
	const char *name = strrchr(job->overlay, '/') + 1;
	char size[32], fd_path[64];
	char *create_argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", fd_path, size, NULL};

	dfd = open(job->tmpdir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return err_set(err, errno, "cannot open %s: %s", job->tmpdir, strerror(errno));
	if (unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
		return err_set(err, errno, "cannot remove %s: %s", job->overlay, strerror(errno));
	fd = openat(dfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(err, errno, "cannot make %s: %s", job->overlay, strerror(errno));
	/* QEMU opens it after it dropped root (-runas). */
	if (fchown(fd, job->qemu_uid, job->qemu_gid) < 0)
		return err_set(err, errno, "cannot hand %s to the qemu user: %s", job->overlay,
			       strerror(errno));
	snprintf(size, sizeof(size), "%lld", (long long)vsize);
	snprintf(fd_path, sizeof(fd_path), "/proc/%d/fd/%d", (int)getpid(), fd);
	if (backup_run_wait(job, create_argv, NULL, BACKUP_QEMU_IMG_QUICK_MS) != 0)
		return err_set(err, EIO, "qemu-img create of %s failed", job->overlay);
	return 0;
}

/* Thread: the overlay (an empty qcow2 of the disk's size, QEMU's user's) in the
 * backup's work directory, which only that user and root may enter, and the NBD
 * socket's directory (sock_dir_make). The overlay stays on the store, not the local
 * pool: guest writes during the read fill it, and a full local pool would stop the VMs
 * whose disks are there, while a full store only breaks this backup (on-cbw-error
 * break-snapshot). */
static void fleece_prepare_work(struct bjob *job)
{
	struct vm_disk *d = &job->op->disks[job->disk];
	char *info_argv[] = {"qemu-img", "info", "-U", "--output=json", d->abs, NULL};
	_cleanup_free_ char *out = NULL;
	struct json_object *info = NULL;
	struct kerr err;
	int64_t vsize;

	snprintf(job->overlay, sizeof(job->overlay), "%s/%s.fleece.qcow2", job->tmpdir, d->name);
	if (sock_dir_make(job, &err) < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	if (backup_run_wait(job, info_argv, &out, BACKUP_QEMU_IMG_QUICK_MS) != 0 || out == NULL ||
	    (info = json_tokener_parse(out)) == NULL ||
	    (vsize = json_get_int(info, "virtual-size", -1)) <= 0) {
		json_object_put(info);
		snprintf(job->error, sizeof(job->error), "qemu-img info of %s failed", d->abs);
		return;
	}
	json_object_put(info);
	if (overlay_create(job, vsize, &err) < 0)
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
}

static void setup_begin(struct bjob *job);

static void fleece_prepare_after(struct bjob *job)
{
	if (job->error[0]) {
		fleece_fallback(job, job->error);
		return;
	}
	/* First clear what a killed agent may have left under these names. */
	fleece_down(job, setup_begin);
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
	char last[512];
	struct nbd_conn *c = NULL;
	struct fleece_names n;
	struct kerr err, probe;
	int ret;

	json_object_object_add(job->mdisk, "chunks", chunks);
	job_names(job, &n);
	if (job->nbd_server <= 0) {
		snprintf(job->error, sizeof(job->error), "the VM's QEMU is gone");
		return;
	}
	if (nbd_conn_open(job->nbd_sock, n.node, job->nbd_server, &c, &err) < 0) {
		snprintf(job->error, sizeof(job->error), "%s", err.msg);
		return;
	}
	nbd_conn_source(c, &src);
	__atomic_store_n(&job->piped_size, (uint64_t)src.size, __ATOMIC_RELAXED);
	ret = chunkpipe_store(job->store, &src, chunkpipe_threads(), chunks, &res, &err);
	/* A snapshot the filter broke (a copy failed: the overlay's file system full, or
	 * slower than its timeout) fails every read from then on: one last read that
	 * works proves every earlier one saw the point in time, and one that fails after
	 * a failed read tells why that read failed. */
	if (!backup_pipe_cancelled(job) && nbd_conn_read(c, 0, last, sizeof(last), &probe) < 0) {
		char first[sizeof(err.msg)];

		snprintf(first, sizeof(first), "%s", ret < 0 ? err.msg : probe.msg);
		ret = err_set(&err, 0,
			      "the disk's point in time broke during the read (QEMU could not copy "
			      "aside a block the guest overwrote: the store full, or slower than "
			      "%d s?): %s",
			      BACKUP_FLEECE_CBW_TIMEOUT_S, first);
	}
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
	sock_remove(job);
	if (!job->error[0])
		job->fleeced++;
	backup_chunk_after(job);
}

static void fleece_chunk_after(struct bjob *job)
{
	uv_timer_stop(&job->poll); /* backup_store_progress_cb */
	fleece_down(job, fleece_done);
}

/* ---- QEMU's side of the setup: fleece.h's steps, each command's answer sends the next -- */

/* The filter is made (not yet in front of the disk): the point in time, frozen around
 * the bitmap and the qom-set as a copy's transaction is (backup_guest_freeze ->
 * tx_send -> drive_backup_cb -> backup_fleece_started -> FLEECE_SETUP_INSERT, whose
 * answer thaws). */
static void point_in_time(struct bjob *job)
{
	struct fleece_names n;
	char bitmap[80];

	job_names(job, &n);
	snprintf(bitmap, sizeof(bitmap), "kumo-%s", job->id);
	json_object_put(job->tx);
	job->tx = fleece_transaction_args(&n, bitmap);
	backup_guest_freeze(job);
}

/* The export is up: the read runs on the thread pool, its progress on the poll timer. */
static void read_start(struct bjob *job)
{
	job->piped_bytes = job->piped_size = 0; /* no work runs: plain stores */
	uv_timer_start(&job->poll, backup_store_progress_cb, BACKUP_POLL_MS, BACKUP_POLL_MS);
	job->chunk_started_ms = now_ms();
	/* Taken on the loop, which owns the VM: the socket's directory is the VM's QEMU
	 * uid's, so the path alone could lead to another VM's export (nbd_conn_open). */
	job->nbd_server = job->op->vm->inst.pid;
	backup_pool_run(job, fleece_chunk_work, fleece_chunk_after);
}

/*
 * What the agent does at each setup step's success beside sending the next, in
 * fleece.h's order; a refusal at any step tears down what exists and copies the disk
 * instead (fleece_fallback). thaws: the guest thaws at the step's answer, whatever it
 * is (the qom-set: the point in time is taken, or never will be). then: what follows
 * instead of the next step.
 */
static const struct setup_row {
	bool thaws;
	void (*then)(struct bjob *job);
} setup_rows[] = {
	[FLEECE_SETUP_OVERLAY] = {false, NULL},		/* the overlay's node */
	[FLEECE_SETUP_FILTER] = {false, point_in_time}, /* then freeze, bitmap: started() */
	[FLEECE_SETUP_INSERT] = {true, NULL},		/* the point in time: thaw */
	[FLEECE_SETUP_ACCESS] = {false, NULL},		/* the snapshot, as a node */
	[FLEECE_SETUP_SERVER] = {false, NULL},		/* QEMU's NBD server on nbd_sock */
	[FLEECE_SETUP_EXPORT] = {false, read_start},	/* then the read */
};

static void setup_send(struct bjob *job, int step);

static void setup_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct bjob *job = data;
	const struct setup_row *row = &setup_rows[job->fleece_step];

	if (backup_job_gone(job))
		return; /* job_free thawed */
	if (row->thaws)
		backup_guest_thaw(job);
	if (error) {
		fleece_fallback(job, error);
		return;
	}
	if (row->then)
		row->then(job);
	else
		setup_send(job, job->fleece_step + 1);
}

/* Send setup step step of the disk at work; setup_cb takes its answer. */
static void setup_send(struct bjob *job, int step)
{
	struct fleece_names n;
	const char *cmd;
	struct json_object *args;
	struct kerr err;

	job->fleece_step = step;
	backup_nodes_unknown(job->op->vm); /* kfl- nodes: the next incremental asks QEMU */
	job_names(job, &n);
	args = fleece_setup_step(&n, step, job->overlay, job->nbd_sock, BACKUP_FLEECE_CBW_TIMEOUT_S,
				 &cmd);
	if (vm_qmp(job->op->vm, cmd, args, BACKUP_JOB_TIMEOUT, setup_cb, job, &err) < 0)
		backup_job_fail(job, "disk %s: %s", job->op->disks[job->disk].name, err.msg);
}

/* The teardown of what an earlier agent may have left is done: add the overlay. */
static void setup_begin(struct bjob *job)
{
	setup_send(job, FLEECE_SETUP_OVERLAY);
}

/* The bitmap's transaction answered (the guest still frozen): the filter goes in front
 * of the disk, the point in time. */
void backup_fleece_started(struct bjob *job, const char *error)
{
	if (error) {
		backup_guest_thaw(job);
		fleece_fallback(job, error); /* no bitmap was added */
		return;
	}
	job->fleece_tx = true;
	setup_send(job, FLEECE_SETUP_INSERT);
}
