/*
 * ociaction.c - what each instance action does to a container, as chains of steps,
 * and the exec query.
 *
 * instance.c has checked the command and made the op: op->ctr is the container (NULL
 * only for create and delete of an unknown one), op->spec and op->args what the
 * command says. Each step starts the next as the last thing it does and ends in
 * instance_op_succeed() or instance_op_fail(); a step resumed by a callback first asks
 * instance_op_gone(): the agent may be stopping.
 *
 *   create    prepare (below), spec.json (the container exists), then start if asked
 *   start     prepare again (layers may have been removed, the bundle is rewritten),
 *             then the shim (oci.c)
 *   stop, force-stop, restart    through the shim: SIGTERM, SIGKILL (oci.c)
 *   pause, resume                runc pause / resume
 *   delete    force-stop if asked, runc delete, unmount, the directory goes
 *   commit    the writable layer (paused meanwhile if running) becomes a new image in
 *             the shared store (layers.c)
 *
 * Prepare, on the thread pool: the image's manifest and config read from the shared
 * store and verified, each layer not yet on this host verified and unpacked (one job
 * per layer, so progress can be told), then the bundle: directories, config.json
 * (bundle.c), shim.json.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "child.h"
#include "json.h"
#include "tree.h"
#include "util.h"

#define OVERLAYFS_MAGIC 0x794c7630
#define RUNC_TIMEOUT_MS 30000
#define EXEC_TIMEOUT_S	10
#define EXEC_OUTPUT	(256 * 1024)

static const char *const cgroup_controllers[] = {
	"cpu",	   "cpuacct", "cpuset",	  "memory",	"devices", "freezer", "blkio", "pids",
	"systemd", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma",    "misc",  NULL,
};

/* ---- prepare: image, layers, bundle ---------------------------------------------------- */

struct prep {
	struct work job;
	struct inst_op *op;
	op_step_fn then;
	bool create;		  /* also write spec.json: the container then exists */
	struct json_object *spec; /* the worker's own copy */
	char name[NAME_MAX_LEN + 1];
	char dir[PATH_MAX], shared[PATH_MAX], local[PATH_MAX], root[PATH_MAX];
	char cgroup[PATH_MAX]; /* cgroupsPath, oci_cgroup_path() */
	struct bundle_defaults defaults;
	int64_t log_max_bytes; /* the console log's cap per file, and its files */
	int log_files;
	struct oci_image img;
	size_t layer; /* the layer at work */
};

static void prep_free(struct prep *p)
{
	layers_image_free(&p->img);
	json_object_put(p->spec);
	free(p);
}

static int image_work(struct work *job)
{
	struct prep *p = (struct prep *)job;

	return layers_image_load(
		p->shared, json_get_str(json_object_object_get(p->spec, "image"), "manifest", ""),
		&p->img, &job->err);
}

static int layer_work(struct work *job)
{
	struct prep *p = (struct prep *)job;

	return layers_unpack(p->shared, p->local, &p->img.layers[p->layer], &job->err);
}

static int dir_make(const char *path, unsigned mode, struct kerr *err)
{
	if (mkdir(path, mode) < 0 && errno != EEXIST)
		return err_set(err, errno, "cannot create %s", path);
	/* Exact modes whatever the umask (systemd gives the agent 0077). */
	chmod(path, mode);
	return 0;
}

static int bundle_work(struct work *job)
{
	struct prep *p = (struct prep *)job;
	struct json_object *cfg, *shim, *lower;
	_cleanup_free_ char *upper = xasprintf("%s/upper", p->dir);
	_cleanup_free_ char *work = xasprintf("%s/work", p->dir);
	_cleanup_free_ char *rootfs = xasprintf("%s/rootfs", p->dir);
	_cleanup_free_ char *cfg_path = xasprintf("%s/config.json", p->dir);
	_cleanup_free_ char *shim_path = xasprintf("%s/shim.json", p->dir);
	_cleanup_free_ char *spec_path = xasprintf("%s/spec.json", p->dir);
	const char *text;
	char *resolv;
	int ret;

	/* The upper directory is the container's "/": 0755 like any root directory. */
	if (dir_make(upper, 0755, &job->err) < 0 || dir_make(work, 0700, &job->err) < 0 ||
	    dir_make(rootfs, 0755, &job->err) < 0)
		return -1;
	/* isolation: in a user namespace (uid.c) the container's "/" is its root's, and
	 * its init (that root) must be able to pass every directory down to the rootfs. */
	if (p->defaults.userns_base) {
		if (uid_ctr_path_open(p->dir, &job->err) < 0)
			return -1;
		if (chown(upper, p->defaults.userns_base, p->defaults.userns_base) < 0)
			return err_set(&job->err, errno, "cannot give %s to uid %u", upper,
				       p->defaults.userns_base);
	}
	/* The NICs first: the bundle names the namespace they live in. */
	if (netport_ctr_prepare(p->dir, json_object_object_get(p->spec, "nics"),
				p->defaults.userns_base, &job->err) < 0)
		return err_prefix(&job->err, "network: ");
	cfg = bundle_config_build(p->name, p->cgroup, p->spec, p->img.config, &p->defaults,
				  &job->err);
	if (cfg == NULL)
		return -1;
	bundle_netns_set(cfg, netport_ctr_netns(p->dir, json_object_object_get(p->spec, "nics")));
	if (netport_ctr_resolv(p->dir, json_object_object_get(p->spec, "nics"), &resolv,
			       &job->err) < 0) {
		json_object_put(cfg);
		return -1;
	}
	bundle_resolv_set(cfg, resolv);
	text = json_object_to_json_string_ext(cfg, JSON_C_TO_STRING_PRETTY |
							   JSON_C_TO_STRING_NOSLASHESCAPE);
	/*
	 * config.json and shim.json are rebuilt by every start before anything reads them,
	 * so a power cut that loses them loses nothing: no fsync (two each) on the way to a
	 * start. spec.json below, the record that the container exists, is made durable
	 * (spec_sync) before the create's op-done, and its directory sync covers the other
	 * two names.
	 */
	ret = file_write_replace(cfg_path, text, strlen(text), 0600);
	json_object_put(cfg);
	if (ret < 0)
		return err_set(&job->err, -ret, "cannot write %s", cfg_path);

	shim = json_object_new_object();
	json_object_object_add(shim, "name", json_object_new_string(p->name));
	json_object_object_add(shim, "runtime", json_object_new_string(AGENT_OCI_RUNTIME));
	json_object_object_add(shim, "root", json_object_new_string(p->root));
	json_object_object_add(shim, "cgroup", json_object_new_string(p->cgroup));
	json_object_object_add(shim, "log_max_bytes", json_object_new_int64(p->log_max_bytes));
	json_object_object_add(shim, "log_files", json_object_new_int(p->log_files));
	json_object_object_add(shim, "restart",
			       json_object_new_string(json_get_str(p->spec, "restart", "no")));
	lower = json_object_new_array();
	/* overlayfs takes the top layer first. */
	for (size_t i = p->img.nlayers; i > 0; i--) {
		_cleanup_free_ char *l =
			xasprintf("%s/oci/layers/%s", p->local, p->img.layers[i - 1].digest + 7);

		json_object_array_add(lower, json_object_new_string(l));
	}
	if (p->img.nlayers == 0) {
		/* An image without layers: overlayfs still wants one lower directory. */
		_cleanup_free_ char *empty = xasprintf("%s/empty", p->dir);

		if (dir_make(empty, 0755, &job->err) < 0) {
			json_object_put(shim);
			json_object_put(lower);
			return -1;
		}
		json_object_array_add(lower, json_object_new_string(empty));
	}
	json_object_object_add(shim, "lower", lower);
	/* The shim shows the layers to the user namespace through idmapped mounts. */
	if (p->defaults.userns_base)
		json_object_object_add(shim, "idmap_base",
				       json_object_new_int64(p->defaults.userns_base));
	text = json_text(shim);
	ret = file_write_replace(shim_path, text, strlen(text), 0600);
	json_object_put(shim);
	if (ret < 0)
		return err_set(&job->err, -ret, "cannot write %s", shim_path);
	if (p->create) {
		text = json_text(p->spec);
		ret = file_write_replace(spec_path, text, strlen(text), 0600);
		if (ret < 0)
			return err_set(&job->err, -ret, "cannot write %s", spec_path);
	}
	return 0;
}

static void prep_step(struct prep *p);

static void prep_done(struct work *job)
{
	struct prep *p = (struct prep *)job;
	struct inst_op *op = p->op;

	log_trace("container %s: %s done", p->name,
		  job->run == image_work   ? "image"
		  : job->run == layer_work ? "layer"
					   : "bundle");
	if (instance_op_gone(op)) {
		prep_free(p);
		return;
	}
	if (job->ret < 0) {
		instance_op_fail(op, "%s", job->err.msg);
		prep_free(p);
		return;
	}
	if (job->run == image_work) {
		p->layer = 0;
	} else if (job->run == layer_work) {
		p->layer++;
	} else {
		op_step_fn then = p->then;

		prep_free(p);
		then(op);
		return;
	}
	prep_step(p);
}

/* The next step: the next layer this host lacks, else the bundle. */
static void prep_step(struct prep *p)
{
	char phase[96];
	struct stat st;

	while (p->layer < p->img.nlayers) {
		_cleanup_free_ char *dir =
			xasprintf("%s/oci/layers/%s", p->local, p->img.layers[p->layer].digest + 7);

		if (stat(dir, &st) < 0)
			break;
		p->layer++;
	}
	memset(&p->job.err, 0, sizeof(p->job.err));
	if (p->layer < p->img.nlayers) {
		snprintf(phase, sizeof(phase), "unpacking layer %zu of %zu (%.19s)", p->layer + 1,
			 p->img.nlayers, p->img.layers[p->layer].digest);
		instance_op_progress(p->op, 10 + (int)(60 * p->layer / p->img.nlayers), phase);
		p->job.run = layer_work;
	} else {
		instance_op_progress(p->op, 75, "writing the bundle");
		p->job.run = bundle_work;
	}
	p->job.done = prep_done;
	oci_job_queue(p->op->agent, &p->job);
}

/* Prepare op->ctr's image and bundle off the loop, then then(op). */
static void prepare(struct inst_op *op, bool create, op_step_fn then)
{
	struct prep *p = xcalloc(1, sizeof(*p));
	struct agent *a = op->agent;

	p->op = op;
	p->then = then;
	p->create = create;
	/* isolation: a new container records whether it has a user namespace (uid.c), so
	 * one made before they existed keeps running without one (its files are root's). */
	if (create && !json_object_is_type(json_object_object_get(op->ctr->inst.spec, "userns"),
					   json_type_boolean))
		json_object_object_add(op->ctr->inst.spec, "userns",
				       json_object_new_boolean(a->cfg->ctr_uid_base > 0));
	if (json_object_deep_copy(op->ctr->inst.spec, &p->spec, NULL) < 0)
		fatalx("out of memory");
	snprintf(p->name, sizeof(p->name), "%s", op->ctr->inst.name);
	snprintf(p->dir, sizeof(p->dir), "%s", op->ctr->inst.dir);
	snprintf(p->shared, sizeof(p->shared), "%s", a->cfg->shared_pool);
	snprintf(p->local, sizeof(p->local), "%s", a->cfg->local_pool);
	oci_runc_root(a, p->root, sizeof(p->root));
	oci_cgroup_path(a, p->name, p->cgroup, sizeof(p->cgroup));
	p->defaults.memory_mib = a->cfg->ctr_memory_mib;
	p->defaults.pids = a->cfg->ctr_pids;
	p->defaults.userns_base = uid_ctr_base(a->cfg, p->spec); /* isolation: uid.c */
	p->log_max_bytes = (int64_t)a->cfg->log_size_mib << 20;
	p->log_files = a->cfg->log_files;
	instance_op_progress(op, 5, "reading the image");
	p->job.run = image_work;
	p->job.done = prep_done;
	oci_job_queue(a, &p->job);
}

/* A container new on this host (a create, a cold migration's arrival): registered as
 * the op's, its directory made, then prepared (image, rootfs, bundle) before then. */
static void register_prepare(struct inst_op *op, op_step_fn then)
{
	struct ctr *ctr;
	struct kerr err;
	int ret;

	ctr = oci_register(op->agent, op->spec, &err);
	if (ctr == NULL) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	op->ctr = ctr;
	op->owner = op->registered = true;
	ctr->inst.op = op;
	ret = mkdir_p(ctr->inst.dir, 0700);
	if (ret < 0) {
		instance_op_fail(op, "cannot create %s: %s", ctr->inst.dir, strerror(-ret));
		return;
	}
	/* runc and the shim reach the bundle's rootfs through it. */
	chmod(ctr->inst.dir, 0711);
	prepare(op, true, then);
}

/* ---- start -------------------------------------------------------------------------------- */

static int shim_spawn(struct inst_op *op, inst_done_cb cb, void *data, struct kerr *err)
{
	if (mkdir_p(op->agent->cfg->local_pool, 0700) == 0) {
		char root[PATH_MAX];

		oci_runc_root(op->agent, root, sizeof(root));
		mkdir_p(root, 0700);
	}
	instance_op_progress(op, 85, "starting the container");
	return oci_start(op->ctr, cb, data, err);
}

static void shim_start(struct inst_op *op)
{
	struct kerr err;

	if (shim_spawn(op, instance_done_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

/*
 * start: prepare and run the container; running or paused already is success.
 */
void ociaction_start(struct inst_op *op)
{
	struct ctr *ctr = op->ctr;

	oci_refresh(ctr);
	if (ctr->inst.state == INST_RUNNING || ctr->inst.state == INST_PAUSED) {
		instance_op_succeed(op);
		return;
	}
	if (oci_alive(ctr)) {
		instance_op_fail(op, "container %s is %s", ctr->inst.name,
				 inst_state_name(ctr->inst.state));
		return;
	}
	prepare(op, false, shim_start);
}

/* ---- create ------------------------------------------------------------------------------- */

/*
 * spec.json records that the container exists, and the create's op-done tells the
 * controller so: it must be on disk before that answer, but the container need not
 * wait for it. Its fsyncs run on the thread pool while the shim starts; whichever of
 * the two ends last sends the answer.
 */
struct spec_sync {
	struct work job;
	struct inst_op *op;
	char path[PATH_MAX];
	bool synced, settled;
	char *error; /* why the start failed; NULL when it did not */
};

static int spec_sync_work(struct work *job)
{
	struct spec_sync *s = (struct spec_sync *)job;
	int ret = file_sync(s->path);

	if (ret < 0)
		return err_set(&job->err, -ret, "cannot sync %s", s->path);
	return 0;
}

static void spec_sync_answer(struct spec_sync *s)
{
	struct inst_op *op = s->op;

	if (!instance_op_gone(op)) {
		if (s->job.ret < 0)
			instance_op_fail(op, "%s", s->job.err.msg);
		else if (s->error)
			instance_op_fail(op, "%s", s->error);
		else
			instance_op_succeed(op);
	}
	free(s->error);
	free(s);
}

static void spec_sync_done(struct work *job)
{
	struct spec_sync *s = (struct spec_sync *)job;

	s->synced = true;
	if (s->settled)
		spec_sync_answer(s);
}

static void create_started_cb(struct inst *inst, const char *error, void *data)
{
	struct spec_sync *s = data;

	s->settled = true;
	s->error = error ? xstrdup(error) : NULL;
	if (s->synced)
		spec_sync_answer(s);
}

static void created(struct inst_op *op)
{
	struct spec_sync *s = xcalloc(1, sizeof(*s));
	struct kerr err;

	op->ctr->inst.created = true;
	op->registered = false; /* it exists now; a failure to start keeps it */
	log_info("container %s: created", op->ctr->inst.name);
	oci_refresh(op->ctr);
	s->op = op;
	snprintf(s->path, sizeof(s->path), "%s/spec.json", op->ctr->inst.dir);
	s->job.run = spec_sync_work;
	s->job.done = spec_sync_done;
	/* Not answered before the job is done, which is never before the loop runs again. */
	oci_job_queue(op->agent, &s->job);
	if (!json_get_bool(op->args, "start", false)) {
		s->settled = true;
	} else if (shim_spawn(op, create_started_cb, s, &err) < 0) {
		s->settled = true;
		s->error = xstrdup(err.msg);
	}
	if (s->synced && s->settled)
		spec_sync_answer(s);
}

/* A restore to a new container (backup.c): its writable layer is the backup's
 * before it is created and started. */
static void restore_then_created(struct inst_op *op)
{
	if (json_object_object_get(op->args, "restore")) {
		backup_ctr_restore_then(op, created);
		return;
	}
	created(op);
}

/*
 * create: unpack the image, write the bundle and spec.json; start if args.start. The
 * same spec again (a resend after an agent restart) only starts it if asked.
 */
void ociaction_create(struct inst_op *op)
{
	struct ctr *ctr = op->ctr;
	const char *name = json_get_str(op->spec, "name", "");

	if (ctr) {
		if (ctr->inst.created && json_object_equal(ctr->inst.spec, op->spec)) {
			if (json_get_bool(op->args, "start", false) && !oci_alive(ctr))
				prepare(op, false, shim_start);
			else
				instance_op_succeed(op);
			return;
		}
		instance_op_fail(op, "instance %s exists already on this host", name);
		return;
	}
	if (vm_find(op->agent, name)) {
		instance_op_fail(op, "instance %s exists already on this host (a VM)", name);
		return;
	}
	register_prepare(op, restore_then_created);
}

/* ---- stop, restart ------------------------------------------------------------------------ */

static void stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;
	const char *not_durable;

	if (!instance_stop_noted(op, inst, error))
		return;
	if (op->restart) {
		prepare(op, false, shim_start); /* the start drops the marker anyway */
		return;
	}
	/* A stop is done once a power cut cannot undo it (ocimarker.c). */
	not_durable = oci_marker_stop_error((struct ctr *)inst);
	if (not_durable) {
		instance_op_fail(op, "%s", not_durable);
		return;
	}
	instance_op_succeed(op);
}

static void stop_with(struct inst_op *op, unsigned timeout_s)
{
	struct ctr *ctr = op->ctr;

	oci_refresh(ctr);
	if (!oci_alive(ctr)) {
		/* Not running: a crashed or failed container is now simply stopped. */
		oci_mark_stopped(ctr, stopped_cb, op);
		return;
	}
	instance_op_progress(op, 10,
			     timeout_s ? "stopping the container (SIGTERM)"
				       : "stopping the container (SIGKILL)");
	oci_stop(ctr, timeout_s, stopped_cb, op);
}

/*
 * The grace of a stop or restart: args.timeout_s, which the controller always sends
 * (it decides: call, instance, type), or the type's default. Recorded in the result.
 */
static unsigned stop_grace(struct inst_op *op)
{
	int64_t grace = json_get_int(op->args, "timeout_s",
				     verb_timeout_default(VERB_STOP, INST_CONTAINER));

	if (op->result == NULL)
		op->result = json_object_new_object();
	json_object_object_add(op->result, "grace_s", json_object_new_int64(grace));
	return (unsigned)grace;
}

/*
 * stop: SIGTERM, SIGKILL after the grace (stop_grace()); not running is success. The
 * result says "forced" (SIGKILL was needed) and "grace_s".
 */
void ociaction_stop(struct inst_op *op)
{
	stop_with(op, stop_grace(op));
}

/* force-stop: SIGKILL at once; may cut a running stop short. */
void ociaction_force_stop(struct inst_op *op)
{
	stop_with(op, 0);
}

/* restart: stop (with its grace), then start. */
void ociaction_restart(struct inst_op *op)
{
	stop_with(op, stop_grace(op));
}

/* ---- pause, resume ------------------------------------------------------------------------ */

static void runc_done_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (r->status != 0 || r->term_signal || r->timed_out) {
		instance_op_fail(op, "runc: %s", r->error);
		return;
	}
	oci_refresh(op->ctr);
	instance_op_succeed(op);
}

static void simple_runc(struct inst_op *op, const char *verb)
{
	struct kerr err;

	instance_op_progress(op, 10, verb);
	if (oci_runc(op->agent, (const char *const[]){verb, op->ctr->inst.name, NULL},
		     RUNC_TIMEOUT_MS, 0, false, NULL, runc_done_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

/* pause: freeze the container (runc pause); paused already is success. The state was
 * refreshed and checked against the verb table (instance.c). */
void ociaction_pause(struct inst_op *op)
{
	if (op->ctr->inst.state == INST_PAUSED) {
		instance_op_succeed(op);
		return;
	}
	simple_runc(op, "pause");
}

/* resume: thaw the container (runc resume); running already is success. The state was
 * refreshed and checked against the verb table (instance.c). */
void ociaction_resume(struct inst_op *op)
{
	if (op->ctr->inst.state == INST_RUNNING) {
		instance_op_succeed(op);
		return;
	}
	simple_runc(op, "resume");
}

/* ---- delete ------------------------------------------------------------------------------- */

struct delete_job {
	struct work job;
	struct inst_op *op;
	char dir[PATH_MAX];
	char name[NAME_MAX_LEN + 1];
	char cgroup[PATH_MAX]; /* oci_cgroup_path() */
};

static int delete_work(struct work *job)
{
	struct delete_job *d = (struct delete_job *)job;
	_cleanup_free_ char *rootfs = xasprintf("%s/rootfs", d->dir);
	struct statfs sf;
	int ret;

	/* A shim that died left its overlay mounted (umount needs CAP_SYS_ADMIN). */
	if (statfs(rootfs, &sf) == 0 && (unsigned long)sf.f_type == OVERLAYFS_MAGIC &&
	    umount2(rootfs, MNT_DETACH) < 0)
		return err_set(&job->err, errno, "cannot unmount %s", rootfs);
	/* Empty cgroups runc left behind (a run that was killed). */
	for (size_t i = 0; cgroup_controllers[i]; i++) {
		_cleanup_free_ char *cg =
			xasprintf("/sys/fs/cgroup/%s%s", cgroup_controllers[i], d->cgroup);

		rmdir(cg);
	}
	{
		_cleanup_free_ char *cg = xasprintf("/sys/fs/cgroup/unified%s", d->cgroup);
		_cleanup_free_ char *cg2 = xasprintf("/sys/fs/cgroup%s", d->cgroup);

		rmdir(cg);
		rmdir(cg2);
	}
	netport_ctr_remove(d->dir);
	ret = tree_remove(d->dir);
	if (ret < 0)
		return err_set(&job->err, -ret, "cannot remove %s", d->dir);
	return 0;
}

static void delete_done(struct work *job)
{
	struct delete_job *d = (struct delete_job *)job;
	struct inst_op *op = d->op;
	struct kerr err = job->err;
	int ret = job->ret;
	struct ctr *ctr;

	free(d);
	if (instance_op_gone(op))
		return;
	if (ret < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	ctr = op->ctr;
	ctr->inst.state = INST_STOPPED;
	ctr->inst.pid = 0;
	op->report = oci_report(ctr);
	ctr->inst.op = NULL;
	op->owner = false;
	oci_remove(ctr);
	op->ctr = NULL;
	log_info("container %s: deleted", json_get_str(op->spec, "name", ""));
	if (op->undoing) {
		/* The undo of a cancelled create (job.c): the op ends as the cancel says. */
		instance_op_fail(op, "%s", job_cancel_reason(op));
		return;
	}
	instance_op_succeed(op);
}

static void runc_deleted_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	struct inst_op *op = data;
	struct delete_job *d;

	if (instance_op_gone(op))
		return;
	/* "container does not exist" is the usual answer: runc run cleaned up. */
	d = xcalloc(1, sizeof(*d));
	d->op = op;
	snprintf(d->dir, sizeof(d->dir), "%s", op->ctr->inst.dir);
	snprintf(d->name, sizeof(d->name), "%s", op->ctr->inst.name);
	oci_cgroup_path(op->agent, d->name, d->cgroup, sizeof(d->cgroup));
	d->job.run = delete_work;
	d->job.done = delete_done;
	instance_op_progress(op, 60, "removing the container");
	oci_job_queue(a, &d->job);
}

static void delete_files(struct inst_op *op)
{
	struct kerr err;

	op->result = json_object_new_object();
	json_object_object_add(op->result, "deleted", json_object_new_boolean(true));
	instance_op_progress(op, 50, "runc delete");
	if (oci_runc(op->agent,
		     (const char *const[]){"delete", "--force", op->ctr->inst.name, NULL},
		     RUNC_TIMEOUT_MS, 0, false, NULL, runc_deleted_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

/* The container part of the report of one this host does not have (instance_delete()). */
static void absent_report(struct json_object *r, struct json_object *spec)
{
	json_object_object_add(r, "exit_code", NULL);
	json_object_object_add(r, "restarts", json_object_new_int(0));
	json_object_object_add(r, "rw_size", NULL);
}

static void force_stop(struct inst_op *op, inst_done_cb cb)
{
	instance_op_progress(op, 10, "stopping the container (SIGKILL)");
	oci_stop(op->ctr, 0, cb, op);
}

static bool alive(const struct inst *inst)
{
	return oci_alive((const struct ctr *)inst);
}

/* ---- commit ------------------------------------------------------------------------------- */

struct commit_job {
	struct work job;
	struct inst_op *op;
	char shared[PATH_MAX], upper[PATH_MAX];
	char manifest[80];
	char comment[160];
	char repo[200], tag[160];
	struct oci_commit out;
	bool resume; /* this op paused the container */
};

static int commit_work(struct work *job)
{
	struct commit_job *c = (struct commit_job *)job;
	struct oci_image img;
	int ret;

	ret = layers_image_load(c->shared, c->manifest, &img, &job->err);
	if (ret == 0)
		ret = layers_commit(c->shared, c->upper, &img, c->comment, &c->out, &job->err);
	layers_image_free(&img);
	return ret;
}

static void commit_finish(struct commit_job *c, const char *why)
{
	struct inst_op *op = c->op;
	struct json_object *image;

	if (why) {
		instance_op_fail(op, "%s", why);
		free(c);
		return;
	}
	image = json_object_new_object();
	json_object_object_add(image, "repo", json_object_new_string(c->repo));
	json_object_object_add(image, "tag", json_object_new_string(c->tag));
	json_object_object_add(image, "manifest", json_object_new_string(c->out.manifest));
	json_object_object_add(image, "config", json_object_new_string(c->out.config));
	json_object_object_add(image, "layer", json_object_new_string(c->out.layer));
	json_object_object_add(image, "diff_id", json_object_new_string(c->out.diff_id));
	json_object_object_add(image, "size", json_object_new_int64(c->out.size));
	json_object_object_add(image, "manifest_size", json_object_new_int64(c->out.manifest_size));
	json_object_object_add(image, "layer_size", json_object_new_int64(c->out.layer_size));
	json_object_object_add(
		image, "media_type",
		json_object_new_string("application/vnd.oci.image.manifest.v1+json"));
	op->result = json_object_new_object();
	json_object_object_add(op->result, "image", image);
	log_info("container %s: committed as %s:%s (%s)", op->ctr->inst.name, c->repo, c->tag,
		 c->out.manifest);
	free(c);
	instance_op_succeed(op);
}

static void commit_resumed_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	struct commit_job *c = data;

	if (instance_op_gone(c->op)) {
		free(c);
		return;
	}
	if (r->status != 0)
		log_warnx("container %s: resuming after the commit: %s", c->op->ctr->inst.name,
			  r->error);
	oci_refresh(c->op->ctr);
	commit_finish(c, c->job.ret < 0 ? c->job.err.msg : NULL);
}

static void commit_done(struct work *job)
{
	struct commit_job *c = (struct commit_job *)job;
	struct kerr err;

	if (instance_op_gone(c->op)) {
		free(c);
		return;
	}
	if (c->resume && oci_runc(((struct agent *)job->owner),
				  (const char *const[]){"resume", c->op->ctr->inst.name, NULL},
				  RUNC_TIMEOUT_MS, 0, false, NULL, commit_resumed_cb, c, &err) == 0)
		return;
	commit_finish(c, job->ret < 0 ? job->err.msg : NULL);
}

static void commit_paused_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	struct commit_job *c = data;

	if (instance_op_gone(c->op)) {
		free(c);
		return;
	}
	if (r->status != 0 || r->timed_out) {
		commit_finish(c, r->error);
		return;
	}
	c->resume = true;
	instance_op_progress(c->op, 20, "packing the writable layer");
	oci_job_queue(a, &c->job);
}

/* "repo:tag" as the registry names them; false for anything else. */
static bool image_ref_split(const char *ref, char *repo, size_t rlen, char *tag, size_t tlen)
{
	const char *colon = strrchr(ref, ':');
	size_t n = colon ? (size_t)(colon - ref) : 0;

	if (colon == NULL || n == 0 || n >= rlen || strlen(colon + 1) == 0 ||
	    strlen(colon + 1) >= tlen ||
	    strspn(ref, "abcdefghijklmnopqrstuvwxyz0123456789._-/") != n ||
	    strspn(colon + 1,
		   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") !=
		    strlen(colon + 1))
		return false;
	snprintf(repo, rlen, "%.*s", (int)n, ref);
	snprintf(tag, tlen, "%s", colon + 1);
	return true;
}

/*
 * commit: the container's writable layer becomes the top layer of a new image
 * args.image ("repo:tag"), stored in the shared store; a running container is paused
 * while its layer is read. The result has "image": {repo, tag, manifest, config,
 * layer, diff_id, size (manifest + config + layers), manifest_size, layer_size,
 * media_type}; the controller records the tag.
 */
void ociaction_commit(struct inst_op *op)
{
	struct ctr *ctr = op->ctr;
	struct commit_job *c = xcalloc(1, sizeof(*c));
	const char *ref = json_get_str(op->args, "image", "");
	struct kerr err;

	if (!image_ref_split(ref, c->repo, sizeof(c->repo), c->tag, sizeof(c->tag))) {
		free(c);
		instance_op_fail(op, "image '%.64s' must be repo:tag, like mytools:v2", ref);
		return;
	}
	c->op = op;
	snprintf(c->shared, sizeof(c->shared), "%s", op->agent->cfg->shared_pool);
	snprintf(c->upper, sizeof(c->upper), "%s/upper", ctr->inst.dir);
	snprintf(c->manifest, sizeof(c->manifest), "%s",
		 json_get_str(json_object_object_get(ctr->inst.spec, "image"), "manifest", ""));
	snprintf(c->comment, sizeof(c->comment), "committed from container %s", ctr->inst.name);
	c->job.run = commit_work;
	c->job.done = commit_done;
	oci_refresh(ctr);
	if (ctr->inst.state == INST_RUNNING) {
		/* A consistent layer: nothing writes while it is read. */
		instance_op_progress(op, 10, "pausing the container");
		if (oci_runc(op->agent, (const char *const[]){"pause", ctr->inst.name, NULL},
			     RUNC_TIMEOUT_MS, 0, false, NULL, commit_paused_cb, c, &err) < 0) {
			free(c);
			instance_op_fail(op, "%s", err.msg);
		}
		return;
	}
	if (oci_alive(ctr) && ctr->inst.state != INST_PAUSED) {
		free(c);
		instance_op_fail(op, "container %s is %s; commit it running, paused or stopped",
				 ctr->inst.name, inst_state_name(ctr->inst.state));
		return;
	}
	instance_op_progress(op, 20, "packing the writable layer");
	oci_job_queue(op->agent, &c->job);
}

/* ---- exec (a query) ---------------------------------------------------------------------- */

struct exec_req {
	char op[LINK_OP_ID_MAX + 1];
	char name[NAME_MAX_LEN + 1];
	struct exec_req *next; /* in agent->exec_reqs */
};

static void exec_done_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	struct exec_req *x = data;
	struct json_object *answer;
	_cleanup_free_ char *b64 = NULL;
	int64_t code;

	a->execs--;
	for (struct exec_req **pp = &a->exec_reqs; *pp; pp = &(*pp)->next) {
		if (*pp == x) {
			*pp = x->next;
			break;
		}
	}
	if (r->cancelled) {
		free(x);
		return;
	}
	code = r->term_signal ? 128 + r->term_signal : r->status;
	b64 = xmalloc(4 * (r->outlen + 2) / 3 + 1);
	EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)r->out, (int)r->outlen);
	answer = json_object_new_object();
	json_object_object_add(answer, "exit_code", json_object_new_int64(code));
	json_object_object_add(answer, "output", json_object_new_string(b64));
	json_object_object_add(answer, "truncated", json_object_new_boolean(r->truncated));
	json_object_object_add(answer, "timed_out", json_object_new_boolean(r->timed_out));
	log_info("container %s: exec finished, exit code %lld%s", x->name, (long long)code,
		 r->timed_out ? " (timed out)" : "");
	link_query_reply(a, x->op, answer, NULL);
	free(x);
}

/*
 * The exec query: run command in container name with `runc exec` (the container's
 * user, environment and capabilities), output (stdout and stderr together) kept up to
 * max_output bytes, killed after timeout_s. Answered later through link_query_reply()
 * with {exit_code, output (base64), truncated, timed_out}: returns 1 then, or -1 with
 * err when it cannot run at all.
 */
int ociaction_exec(struct agent *a, const char *qop, struct json_object *q, struct kerr *err)
{
	struct ctr *ctr = oci_find(a, json_get_str(q, "name", ""));
	struct json_object *cmd;
	int64_t timeout = json_get_int(q, "timeout_s", EXEC_TIMEOUT_S);
	int64_t max = json_get_int(q, "max_output", EXEC_OUTPUT);
	_cleanup_free_ char *pid_file = NULL;
	const char **args;
	struct exec_req *x;
	size_t n;
	int ret;

	if (ctr == NULL || !ctr->inst.created)
		return err_set(err, 0, "there is no instance %s on this host",
			       json_get_str(q, "name", ""));
	oci_refresh(ctr);
	if (ctr->inst.state != INST_RUNNING)
		return err_set(err, 0, "container %s is %s; exec needs it running", ctr->inst.name,
			       inst_state_name(ctr->inst.state));
	if (max < 0 || max > AGENT_EXEC_OUTPUT_MAX)
		max = AGENT_EXEC_OUTPUT_MAX;
	if (a->execs >= AGENT_EXECS_MAX)
		return err_set(err, 0, "%d execs run on this host already; try again when one ends",
			       AGENT_EXECS_MAX);
	json_object_object_get_ex(q, "command", &cmd);
	n = json_array_len(cmd);
	x = xcalloc(1, sizeof(*x));
	snprintf(x->op, sizeof(x->op), "%s", qop);
	snprintf(x->name, sizeof(x->name), "%s", ctr->inst.name);
	pid_file = xasprintf("%s/exec-%s.pid", ctr->inst.dir, qop);
	args = xcalloc(n + 6, sizeof(*args));
	args[0] = "exec";
	args[1] = "--pid-file";
	args[2] = pid_file;
	args[3] = ctr->inst.name;
	for (size_t i = 0; i < n; i++)
		args[4 + i] = json_object_get_string(json_object_array_get_idx(cmd, i));
	args[4 + n] = NULL;
	log_info("container %s: exec %s%s (timeout %lld s)", ctr->inst.name, args[4],
		 n > 1 ? " ..." : "", (long long)timeout);
	ret = oci_runc(a, args, (unsigned)timeout * 1000, (size_t)max, true, pid_file, exec_done_cb,
		       x, err);
	free(args);
	if (ret < 0) {
		free(x);
		return -1;
	}
	a->execs++;
	x->next = a->exec_reqs;
	a->exec_reqs = x;
	return 1;
}

/*
 * The controller gave up on exec query qop (its HTTP client went away): kill the
 * command with what it started, as its timeout would. Its query-done still follows,
 * for nobody. Returns whether such an exec ran here.
 */
bool ociaction_exec_cancel(struct agent *a, const char *qop)
{
	for (struct exec_req *x = a->exec_reqs; x; x = x->next) {
		if (strcmp(x->op, qop) == 0) {
			log_info("container %s: exec %s abandoned by its client; killing it",
				 x->name, qop);
			return oci_cmd_cancel(a, x);
		}
	}
	return false;
}

static struct json_object *report(const struct inst *inst)
{
	return oci_report((const struct ctr *)inst);
}

static void refresh(struct inst *inst)
{
	oci_refresh((struct ctr *)inst);
}

/* Read the shim's files and push the state they show, even if unchanged. */
static void state_push(struct inst *inst)
{
	struct ctr *ctr = (struct ctr *)inst;

	ctr->pushed[0] = '\0'; /* the refresh pushes its state, once */
	oci_refresh(ctr);
}

static void heard(struct inst *inst)
{
	oci_state_heard((struct ctr *)inst);
}

extern const struct json_field oci_migrate_out_args[], oci_migrate_in_args[];
void ociaction_migrate_out(struct inst_op *op);
void ociaction_migrate_in(struct inst_op *op);

/* The container driver: a verb without a slot here is refused by the shared code. */
const struct driver oci_driver = {
	.type = INST_CONTAINER,
	.report = report,
	.refresh = refresh, /* the shim's files say what the container does */
	.state_push = state_push,
	.heard = heard,
	.forget = oci_forget,
	.alive = alive,
	.force_stop = force_stop,
	.delete_files = delete_files,
	.absent_report = absent_report,
	.cron = oci_cron,
	.subdir = "containers",
	.adopt_prepare = oci_adopt_prepare,
	.adopt_one = oci_adopt_one,
	.verbs =
		{
			[VERB_CREATE] = ociaction_create,
			[VERB_START] = ociaction_start,
			[VERB_STOP] = ociaction_stop,
			[VERB_FORCE_STOP] = ociaction_force_stop,
			[VERB_RESTART] = ociaction_restart,
			[VERB_PAUSE] = ociaction_pause,
			[VERB_RESUME] = ociaction_resume,
			[VERB_DELETE] = instance_delete,
			[VERB_COMMIT] = ociaction_commit,
			/* Cold migration: stop, pack, unpack, start (below). A backup of
			 * its spec and writable layer (backup.c); a restore makes a new
			 * container (a create with args.restore): restore over one is VMs'
			 * only, a container answers 422 (the verb table has no container bit). */
			[VERB_MIGRATE_OUT] = ociaction_migrate_out,
			[VERB_MIGRATE_IN] = ociaction_migrate_in,
			[VERB_BACKUP] = backup_ctr_run,
		},
	.args =
		{
			[VERB_MIGRATE_OUT] = oci_migrate_out_args,
			[VERB_MIGRATE_IN] = oci_migrate_in_args,
			[VERB_BACKUP] = backup_args,
		},
	.cancel = job_undo, /* job.c: a cancel or deadline undoes what the op did */
};

/* ---- cold migration ------------------------------------------------------------------------ */

/*
 * A container moves cold (controllerd/migrate.c): migrate-out on the source stops it
 * and packs its writable layer (upper/) into {shared_pool}/migrations/OP.tar; the
 * container stays here, stopped, until the controller deletes it after the
 * switchover. migrate-in on the target creates it from the same SPEC (its address
 * and MAC are in the SPEC), unpacks the archive as its writable layer, removes the
 * archive and starts it if it ran, carrying its restart count. tar keeps owners,
 * modes and the overlay's whiteouts and xattrs. Live migration (CRIU) would fill
 * these same slots; it cannot work on these hosts (issue 13).
 */
struct ctr_move {
	struct work job;
	struct inst_op *op;
	bool pack; /* upper/ -> archive, else archive -> upper/ */
	char upper[PATH_MAX], archive[PATH_MAX];
};

#define MOVE_DIR "migrations"

static int move_work(struct work *job)
{
	struct ctr_move *mv = (struct ctr_move *)job;
	char *pack[] = {"tar",
			"--xattrs",
			"--xattrs-include=*",
			"--numeric-owner",
			"--sparse", /* holes stay holes on the shared pool (backup.c) */
			"-C",
			mv->upper,
			"-cf",
			mv->archive,
			".",
			NULL};
	char *unpack[] = {"tar",
			  "--xattrs",
			  "--xattrs-include=*",
			  "--numeric-owner",
			  "-p",
			  "-C",
			  mv->upper,
			  "-xf",
			  mv->archive,
			  NULL};
	struct child_opts opts = {.argv = mv->pack ? pack : unpack, .err_mode = CHILD_ERR_CAPTURE};
	struct kerr err;
	int status;

	/* On a pool thread: tar runs as the agent (root: the layer holds any owner). */
	status = child_run_wait(&opts, NULL, &err);
	if (status != 0) {
		if (mv->pack)
			unlink(mv->archive);
		if (status < 0)
			return err_set(&job->err, err.code, "tar %s %s failed: %s",
				       mv->pack ? "-c" : "-x", mv->archive, err.msg);
		return err_set(&job->err, 0, "tar %s %s failed (status %d)", mv->pack ? "-c" : "-x",
			       mv->archive, status);
	}
	if (!mv->pack)
		unlink(mv->archive); /* the target holds the layer now */
	return 0;
}

static void move_queue(struct inst_op *op, bool pack, void (*done)(struct work *))
{
	struct ctr_move *mv = xcalloc(1, sizeof(*mv));
	_cleanup_free_ char *dir = xasprintf("%s/" MOVE_DIR, op->agent->cfg->shared_pool);

	mkdir_p(dir, 0700);
	mv->op = op;
	mv->pack = pack;
	snprintf(mv->upper, sizeof(mv->upper), "%s/upper", op->ctr->inst.dir);
	snprintf(mv->archive, sizeof(mv->archive), "%s/%s.tar", dir,
		 pack ? op->op : json_get_str(op->args, "archive", ""));
	mv->job.run = move_work;
	mv->job.done = done;
	oci_job_queue(op->agent, &mv->job);
}

static void packed_cb(struct work *job)
{
	struct ctr_move *mv = (struct ctr_move *)job;
	struct inst_op *op = mv->op;

	if (instance_op_gone(op)) {
		free(mv);
		return;
	}
	if (job->ret < 0) {
		instance_op_fail(op, "%s", job->err.msg);
		free(mv);
		return;
	}
	json_object_object_add(op->result, "archive", json_object_new_string(op->op));
	log_info("container %s: stopped and packed for its move (%s)", op->ctr->inst.name,
		 mv->archive);
	free(mv);
	instance_op_succeed(op);
}

static void move_stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_step_failed(op, error))
		return;
	instance_op_progress(op, 50, "packing the writable layer");
	move_queue(op, true, packed_cb);
}

/*
 * migrate-out (container, cold): stop it (its grace), pack upper/ into the shared
 * pool. Result {"archive": ID, "was_running", "restarts"}.
 */
void ociaction_migrate_out(struct inst_op *op)
{
	struct ctr *ctr = op->ctr;
	bool running;

	oci_refresh(ctr);
	running = oci_alive(ctr);
	op->result = json_object_new_object();
	json_object_object_add(op->result, "was_running", json_object_new_boolean(running));
	json_object_object_add(op->result, "restarts", json_object_new_int(ctr->restarts));
	if (!running) {
		oci_mark_stopped(ctr, move_stopped_cb, op);
		return;
	}
	instance_op_progress(op, 10, "stopping the container");
	oci_stop(ctr, (unsigned)verb_timeout_default(VERB_STOP, INST_CONTAINER), move_stopped_cb,
		 op);
}

static void unpacked_cb(struct work *job)
{
	struct ctr_move *mv = (struct ctr_move *)job;
	struct inst_op *op = mv->op;

	if (instance_op_gone(op)) {
		free(mv);
		return;
	}
	if (job->ret < 0) {
		instance_op_fail(op, "%s", job->err.msg);
		free(mv);
		return;
	}
	free(mv);
	/* The count goes on where the source left it (oci_start() writes it). */
	op->ctr->restarts_carried = (int)json_get_int(op->args, "restarts", 0);
	created(op);
}

static void move_in_prepared(struct inst_op *op)
{
	instance_op_progress(op, 70, "unpacking the writable layer");
	move_queue(op, false, unpacked_cb);
}

/*
 * migrate-in (container, cold): create it from the SPEC, its writable layer from
 * args.archive; start it if args.start. As create otherwise.
 */
void ociaction_migrate_in(struct inst_op *op)
{
	const char *name = json_get_str(op->spec, "name", "");

	if (op->ctr || vm_find(op->agent, name)) {
		instance_op_fail(op, "instance %s exists already on this host", name);
		return;
	}
	register_prepare(op, move_in_prepared);
}

static int archive_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);

	if (strlen(s) < 1 || strlen(s) > LINK_OP_ID_MAX ||
	    strspn(s, "0123456789abcdef") != strlen(s))
		return err_input(err, 400, field, "field '%s' must be an operation id", field);
	return 0;
}

const struct json_field oci_migrate_out_args[] = {
	{NULL, 0, false, NULL},
};

const struct json_field oci_migrate_in_args[] = {
	{"archive", JK_STRING, true, archive_check},
	{"restarts", JK_INT, false, NULL},
	{"start", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};
