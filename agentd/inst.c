/*
 * inst.c - what every instance shares, whatever its type (struct inst, embedded
 * first in struct vm and struct ctr): the registry, the reference count that frees it
 * once its handles are closed, the waiters for a start or an exit, and the loops over
 * every instance (reports, running count, cron, adoption at start-up) that call into
 * each type's driver. Nothing here knows QEMU or runc.
 */
#include "agentd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "proc.h"
#include "util.h"

/* A child process an instance runs (QEMU, a container's shim), watched for its exit. */
struct inst_child {
	struct proc_watch watch; /* first: the watch's callbacks get it */
	struct inst *inst;	 /* NULL once the instance is removed */
	inst_exit_fn exit_fn;
};

/* Every workload type's driver, by type: the one row a new type adds. Their duties
 * (cron, adoption) run in this order. */
static const struct driver *const drivers[INST_TYPES] = {
	[INST_VM] = &vm_driver,
	[INST_CONTAINER] = &oci_driver,
};

/* The driver of instances of type t. */
const struct driver *inst_driver(enum inst_type t)
{
	return drivers[t];
}

/* The instance named name, of any type, created or being created, or NULL. */
struct inst *inst_find(struct agent *a, const char *name)
{
	for (struct inst *inst = a->insts; inst; inst = inst->next)
		if (strcmp(inst->name, name) == 0)
			return inst;
	return NULL;
}

/* Drop a reference an open handle (or a QMP connection) held: the last frees inst
 * once inst_remove() was called. */
void inst_unref(struct inst *inst)
{
	if (--inst->open_handles > 0 || !inst->removing)
		return;
	json_object_put(inst->spec);
	free(inst); /* the whole struct vm or ctr: inst is its first member */
}

/* The close callback of every handle an instance owns (handle->data is the inst):
 * the last one frees it. */
void inst_handle_close_cb(uv_handle_t *handle)
{
	inst_unref(handle->data);
}

/*
 * Fill the shared part of an instance the driver allocated (inst->dir already set)
 * and add it to the registry: spec (checked and normalised) gets a reference, the
 * state is stopped, not yet created. A driver with handles of its own sets their data
 * to inst and adds them to inst->open_handles.
 */
void inst_register(struct inst *inst, struct agent *a, const struct driver *drv,
		   struct json_object *spec)
{
	inst->agent = a;
	inst->driver = drv;
	snprintf(inst->name, sizeof(inst->name), "%s", json_get_str(spec, "name", ""));
	if (inst->spec != spec) {
		json_object_put(inst->spec);
		inst->spec = json_object_get(spec);
	}
	inst->state = INST_STOPPED;
	uv_timer_init(a->loop, &inst->timer);
	uv_timer_init(a->loop, &inst->poll_timer);
	inst->timer.data = inst->poll_timer.data = inst;
	inst->open_handles += 2;
	inst->next = a->insts;
	a->insts = inst;
}

static void child_close_cb(struct proc_watch *w)
{
	free(w);
}

static void child_exit_cb(struct proc_watch *w, int64_t status, int term_signal)
{
	struct inst_child *child = (struct inst_child *)w;
	struct inst *inst = child->inst;

	proc_watch_close(w, child_close_cb);
	if (inst == NULL)
		return;
	inst->child = NULL;
	child->exit_fn(inst, status, term_signal);
}

/*
 * Spawn the instance's child with opts (file, args, stdio, cwd, flags: the caller's;
 * proc_spawn() takes them, without fork) and watch it: exit_fn(inst, status,
 * term_signal) once it ends, unless the instance was removed first (the child then
 * runs on, unwatched). Returns its pid, or a negative errno (nothing runs then).
 */
int inst_child_spawn(struct inst *inst, uv_process_options_t *opts, inst_exit_fn exit_fn)
{
	struct inst_child *child;
	pid_t pid;
	int ret;

	pid = proc_spawn(opts);
	if (pid < 0)
		return pid;
	child = xcalloc(1, sizeof(*child));
	child->inst = inst;
	child->exit_fn = exit_fn;
	ret = proc_watch_start(inst->agent->loop, &child->watch, pid, child_exit_cb);
	if (ret < 0) {
		/* Unwatched, it would outlive every check: it goes now. */
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		free(child);
		return ret;
	}
	inst->child = child;
	return pid;
}

/* Stop watching the child; closing the handle does not kill it. */
static void child_forget(struct inst *inst)
{
	if (inst->child == NULL)
		return;
	inst->child->inst = NULL;
	proc_watch_close(&inst->child->watch, child_close_cb);
	inst->child = NULL;
}

/* Hand a start's outcome (error NULL: it runs) to whoever waits for it, once. */
void inst_start_settle(struct inst *inst, const char *error)
{
	inst_done_cb cb = inst->start_cb;

	inst->start_cb = NULL;
	if (cb)
		cb(inst, error, inst->start_data);
}

/* Have cb(inst, error, data) called once the instance's process is gone. */
void inst_exit_waiter_add(struct inst *inst, inst_done_cb cb, void *data)
{
	struct inst_waiter *w = xcalloc(1, sizeof(*w));

	w->cb = cb;
	w->data = data;
	w->next = inst->exit_waiters;
	inst->exit_waiters = w;
}

/* Tell whoever waits for the exit that it came (error NULL) or will not (error). */
void inst_exit_waiters_call(struct inst *inst, const char *error)
{
	struct inst_waiter *w, *next;

	for (w = inst->exit_waiters, inst->exit_waiters = NULL; w; w = next) {
		next = w->next;
		w->cb(inst, error, w->data);
		free(w);
	}
}

/*
 * Forget inst: out of the registry, its waiters told it is gone, the driver's handles
 * closed, then its own; it is freed once they all closed. A running process is left
 * running (the agent stopping uses this for every instance); a delete stops it first.
 */
void inst_remove(struct inst *inst)
{
	struct agent *a = inst->agent;
	const char *why = a->stopping ? "the agent is stopping" : "the instance was removed";

	for (struct inst **pp = &a->insts; *pp; pp = &(*pp)->next) {
		if (*pp == inst) {
			*pp = inst->next;
			break;
		}
	}
	inst->removing = true;
	inst_start_settle(inst, why);
	inst_exit_waiters_call(inst, why);
	child_forget(inst);
	if (inst->driver->forget)
		inst->driver->forget(inst);
	uv_close((uv_handle_t *)&inst->timer, inst_handle_close_cb);
	uv_close((uv_handle_t *)&inst->poll_timer, inst_handle_close_cb);
}

/* At agent shutdown: stop watching every instance; guests and containers keep running
 * and the next agent adopts them. */
void inst_close_all(struct agent *a)
{
	while (a->insts)
		inst_remove(a->insts);
}

/*
 * The head of every type's start deadline: false when the start settled meanwhile;
 * else why says what did not happen within timeout_ms ("<late> within N s"), logged,
 * and the driver stops what it started and settles the start with why.
 */
bool inst_start_overdue(struct inst *inst, const char *late, uint64_t timeout_ms, char *why,
			size_t len)
{
	if (inst->start_cb == NULL)
		return false;
	snprintf(why, len, "%s within %llu s", late, (unsigned long long)(timeout_ms / 1000));
	log_warnx("%s %s: %s; stopping it", inst_type_name(inst->driver->type), inst->name, why);
	return true;
}

/*
 * The last line of a process's log file at path (its reason to exit), read from the
 * file's last len - 1 bytes into buf and trimmed of trailing blanks: a pointer into
 * buf, or NULL when the file is missing or empty.
 */
char *inst_log_last_line(const char *path, char *buf, size_t len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *end, *line;
	struct stat st;
	ssize_t n;

	if (fd < 0 || fstat(fd, &st) < 0)
		return NULL;
	n = pread(fd, buf, len - 1, st.st_size > (off_t)len - 1 ? st.st_size - (off_t)len + 1 : 0);
	if (n <= 0)
		return NULL;
	buf[n] = '\0';
	end = buf + n;
	while (end > buf && (end[-1] == '\n' || end[-1] == ' '))
		*--end = '\0';
	line = strrchr(buf, '\n');
	return line ? line + 1 : buf;
}

/*
 * Adoption's reading of an instance's spec.json at path (ret, text and len as
 * file_read_all() gave them): the normalised spec (a new reference) when it parses,
 * passes the one spec schema and is the spec of instance name of type; else NULL, and
 * why is logged (the directory is then left alone).
 */
struct json_object *inst_spec_adopt(enum inst_type type, const char *name, const char *path,
				    int ret, const char *text, size_t len)
{
	const char *tname = inst_type_name(type);
	struct json_object *raw = NULL, *spec;
	struct kerr err;

	if (ret < 0 || json_body_parse(text, len, &raw, &err) < 0 || spec_check(raw, &err) < 0) {
		log_warnx("%s %s: %s: %s; ignored", tname, name, path,
			  ret < 0 ? strerror(-ret) : err.msg);
		json_object_put(raw);
		return NULL;
	}
	spec = spec_normalise(raw);
	json_object_put(raw);
	if (strcmp(json_get_str(spec, "name", ""), name) != 0 ||
	    inst_type_parse(json_get_str(spec, "type", NULL)) != type) {
		log_warnx("%s %s: %s is not this %s's; ignored", tname, name, path, tname);
		json_object_put(spec);
		return NULL;
	}
	return spec;
}

/* A report's number that is unknown while negative: the number, or JSON null. */
struct json_object *inst_int_or_null(int64_t v)
{
	return v < 0 ? NULL : json_object_new_int64(v);
}

/*
 * The start of every type's REPORT: name, type, state, and while its process runs
 * pid, started_at (ms) and uptime_s. Returns a new object the driver adds to.
 */
struct json_object *inst_report_base(const struct inst *inst)
{
	struct json_object *r = json_object_new_object();
	bool alive = inst->pid != 0;

	json_object_object_add(r, "name", json_object_new_string(inst->name));
	json_object_object_add(r, "type",
			       json_object_new_string(inst_type_name(inst->driver->type)));
	json_object_object_add(r, "state", json_object_new_string(inst_state_name(inst->state)));
	json_object_object_add(r, "pid", alive ? json_object_new_int(inst->pid) : NULL);
	json_object_object_add(r, "started_at",
			       alive ? json_object_new_int64(inst->started_at_ms) : NULL);
	json_object_object_add(
		r, "uptime_s",
		json_object_new_int64(alive && inst->started_at_ms > 0
					      ? (now_ms() - inst->started_at_ms) / 1000
					      : 0));
	return r;
}

/* Reports of every created instance, for the heartbeat's facts. Returns a new array. */
struct json_object *inst_reports(struct agent *a)
{
	struct json_object *arr = json_object_new_array();

	for (struct inst *inst = a->insts; inst; inst = inst->next)
		if (inst->created)
			json_object_array_add(arr, inst->driver->report(inst));
	return arr;
}

/* Instances with a process (QEMU, a container's init): what uses this host. */
int inst_running_count(struct agent *a)
{
	int n = 0;

	for (struct inst *inst = a->insts; inst; inst = inst->next)
		n += inst->created && inst->pid != 0;
	return n;
}

/* Every driver's periodic duties (heartbeat.c's timer). */
void inst_cron(struct agent *a)
{
	for (size_t i = 0; i < ARRAY_SIZE(drivers); i++)
		if (drivers[i]->cron)
			drivers[i]->cron(a);
}

/*
 * At start-up: every driver finds the instances a previous agent left, one directory
 * {local_pool}/SUBDIR/NAME each, and adopts them (their processes outlive the
 * agent). Start-up work before any command is taken, so the directories are read
 * right here.
 */
void inst_adopt_all(struct agent *a)
{
	for (size_t i = 0; i < ARRAY_SIZE(drivers); i++) {
		const struct driver *drv = drivers[i];
		_cleanup_free_ char *dir = xasprintf("%s/%s", a->cfg->local_pool, drv->subdir);
		struct dirent *e;
		DIR *d;

		if (drv->adopt_prepare)
			drv->adopt_prepare(a);
		d = opendir(dir);
		if (d == NULL) {
			if (errno != ENOENT)
				log_warn("%s: cannot read %s", inst_type_name(drv->type), dir);
			continue;
		}
		while ((e = readdir(d)))
			if (name_valid(e->d_name) && inst_find(a, e->d_name) == NULL)
				drv->adopt_one(a, e->d_name);
		closedir(d);
	}
}
