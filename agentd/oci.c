/*
 * oci.c - the containers this agent runs: each one a runc container kept by a shim
 * (shim.c) that outlives the agent, and found again by the next agent.
 *
 * Each container has a directory {local_pool}/containers/NAME/, the OCI bundle:
 *   spec.json      the normalised SPEC (the instance exists once this is written)
 *   config.json    the runtime config (bundle.c), regenerated at every start
 *   shim.json      what the shim needs: runtime, root, layers, restart policy
 *   upper/, work/  the overlay's writable layer and work directory
 *   rootfs/        the overlay, mounted by the shim while it runs
 *   console.log    the container's stdout and stderr
 *   shim.log       the shim's own messages
 * and the files the shim keeps (shim.c): shim.pid, container.pid, exit.json,
 * restarts, and the agent's stop marker.
 *
 * State is read from those files, never kept only in memory, so a restarted agent
 * knows what its predecessor knew: oci_refresh() looks at the shim (alive?), the
 * container's init (container.pid, checked against /proc/PID/cgroup so a reused pid
 * does not count), the freezer (paused?), exit.json and restarts. It runs every
 * heartbeat, and while a start or stop settles whenever the shim or runc puts one of
 * those files in place (inotify), with a 50-100 ms tick behind. A change no command
 * is working on is pushed to the controller as an instance-state message.
 *
 * Helpers for ociaction.c: runc subcommands as children (oci_runc(), with output
 * bounded and a deadline), file work on libuv's thread pool (oci_job_queue()).
 */
#include "agentd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "child.h"
#include "json.h"
#include "tree.h"
#include "util.h"

#define START_POLL_MS 50
#define STOP_POLL_MS  100
#define KILL_RETRY_MS 2000
#define KILL_GIVE_UP  15 /* KILL retries before the stop is reported as failed */
#define CMD_ERR_TAIL  1024
#define MEASURE_EVERY 10 /* heartbeats between measurements of the writable layer */
#define SPEC_FILE_MAX (4 * 1024 * 1024)

/* A runc subcommand at work. */
struct oci_cmd {
	struct agent *agent;
	struct child *child; /* common/child.h */
	bool exec;	     /* an exec (it has a pid file): killed at agent shutdown */
	oci_cmd_cb cb;
	void *data;
	struct oci_cmd *next;
};

/* ---- registry ------------------------------------------------------------------------- */

/* The container named name, created or being created, or NULL (also for a VM). */
struct ctr *oci_find(struct agent *a, const char *name)
{
	struct inst *inst = inst_find(a, name);

	return inst && inst->driver == &oci_driver ? (struct ctr *)inst : NULL;
}

/* A shim or the container's init is there (starting, running, paused, stopping). */
bool oci_alive(const struct ctr *ctr)
{
	return ctr->shim_pid != 0 || ctr->inst.pid != 0;
}

/* The runtime's state directory, {local_pool}/runc. */
void oci_runc_root(const struct agent *a, char *out, size_t len)
{
	snprintf(out, len, "%s/runc", a->cfg->local_pool);
}

/*
 * The cgroup (runc's absolute cgroupsPath) of container name: /kumo/HOST-CLUSTER/NAME.
 * Names are unique in a cluster, not on a machine: two clusters (two labs on one
 * machine) or two hosts of one lab may run containers of the same name side by side.
 */
void oci_cgroup_path(const struct agent *a, const char *name, char *out, size_t len)
{
	snprintf(out, len, "/kumo/%s-%.8s/%s", a->link.host, a->link.cluster_id, name);
}

/*
 * Register a container for spec (checked and normalised; the ctr takes a reference):
 * stopped, not yet created. Returns it, or NULL with err when its paths are too long.
 */
struct ctr *oci_register(struct agent *a, struct json_object *spec, struct kerr *err)
{
	struct ctr *ctr = xcalloc(1, sizeof(*ctr));
	int len;

	len = snprintf(ctr->inst.dir, sizeof(ctr->inst.dir), "%s/containers/%s", a->cfg->local_pool,
		       json_get_str(spec, "name", ""));
	if (len < 0 || (size_t)len + 64 > sizeof(ctr->inst.dir)) {
		free(ctr);
		err_set(err, 0, "the container directory %s/containers/%s is too long",
			a->cfg->local_pool, json_get_str(spec, "name", ""));
		return NULL;
	}
	ctr->exit_code = ctr->exit_signal = -1;
	ctr->rw_size = -1;
	inst_register(&ctr->inst, a, &oci_driver, spec);
	uv_fs_event_init(a->loop, &ctr->watch);
	ctr->watch.data = ctr;
	ctr->inst.open_handles++;
	return ctr;
}

/*
 * The driver's part of inst_remove(): stop watching the directory. A running
 * container and its shim are left alone.
 */
void oci_forget(struct inst *inst)
{
	struct ctr *ctr = (struct ctr *)inst;

	uv_close((uv_handle_t *)&ctr->watch, inst_handle_close_cb);
}

/* Forget ctr (inst_remove()): its handles close and it is freed once they did. */
void oci_remove(struct ctr *ctr)
{
	inst_remove(&ctr->inst);
}

/* ---- reading the shim's files --------------------------------------------------------- */

static char *ctr_path(const struct ctr *ctr, const char *file)
{
	return xasprintf("%s/%s", ctr->inst.dir, file);
}

static bool ctr_file_exists(const struct ctr *ctr, const char *file)
{
	_cleanup_free_ char *p = ctr_path(ctr, file);

	return access(p, F_OK) == 0;
}

/* A pid from a pid file, 0 if none; its mtime (ms) into *mtime if not NULL. */
static pid_t pid_file_read(const char *path, int64_t *mtime)
{
	_cleanup_free_ char *text = NULL;
	struct stat st;
	long pid;

	if (file_read_all(path, 64, &text, NULL) < 0)
		return 0;
	pid = strtol(text, NULL, 10);
	if (mtime && stat(path, &st) == 0)
		*mtime = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
	return pid > 0 && pid < (1 << 30) ? (pid_t)pid : 0;
}

/*
 * Is pid in the container's cgroup? Guards against a pid reused since. Containers
 * started before cgroups were per host lived in /kumo/NAME: those are found too.
 */
static bool pid_in_cgroup(pid_t pid, const struct ctr *ctr)
{
	_cleanup_free_ char *path = xasprintf("/proc/%d/cgroup", (int)pid);
	_cleanup_free_ char *text = NULL, *legacy = xasprintf(":/kumo/%s\n", ctr->inst.name);
	char cgroup[PATH_MAX], want[PATH_MAX + 2];

	if (file_read_all(path, 65536, &text, NULL) < 0)
		return false;
	oci_cgroup_path(ctr->inst.agent, ctr->inst.name, cgroup, sizeof(cgroup));
	snprintf(want, sizeof(want), ":%s\n", cgroup);
	return strstr(text, want) != NULL || strstr(text, legacy) != NULL;
}

/* Is pid a shim for dir ("--shim" DIR on its command line)? */
static bool pid_is_shim(pid_t pid, const char *dir)
{
	_cleanup_free_ char *path = xasprintf("/proc/%d/cmdline", (int)pid);
	_cleanup_free_ char *text = NULL;
	size_t len;

	if (!vm_pid_alive(pid) || file_read_all(path, 65536, &text, &len) < 0)
		return false;
	for (size_t off = 0; off < len; off += strlen(text + off) + 1) {
		if (strcmp(text + off, "--shim") == 0 && off + 7 < len)
			return strcmp(text + off + 7, dir) == 0;
	}
	return false;
}

/* The container's cgroup is frozen (runc pause): cgroup v1 freezer or v2 freeze. */
static bool ctr_frozen(const struct ctr *ctr)
{
	_cleanup_free_ char *v1 = NULL, *v2 = NULL, *text = NULL;
	char cgroup[PATH_MAX];

	oci_cgroup_path(ctr->inst.agent, ctr->inst.name, cgroup, sizeof(cgroup));
	v1 = xasprintf("/sys/fs/cgroup/freezer%s/freezer.state", cgroup);
	v2 = xasprintf("/sys/fs/cgroup%s/cgroup.freeze", cgroup);

	if (file_read_all(v1, 64, &text, NULL) == 0)
		return strncmp(text, "THAWED", 6) != 0;
	if (file_read_all(v2, 64, &text, NULL) == 0)
		return text[0] == '1';
	return false;
}

struct exit_info {
	bool known, started, oom;
	int code, signal;
	int64_t started_at, finished_at;
	char error[256];
};

static void exit_read(const struct ctr *ctr, struct exit_info *e)
{
	_cleanup_free_ char *path = ctr_path(ctr, "exit.json"), *text = NULL;
	struct json_object *obj = NULL;
	size_t len;

	memset(e, 0, sizeof(*e));
	if (file_read_all(path, 65536, &text, &len) < 0 ||
	    json_body_parse(text, len, &obj, NULL) < 0)
		return;
	e->known = true;
	e->code = (int)json_get_int(obj, "exit_code", -1);
	e->signal = (int)json_get_int(obj, "signal", 0);
	e->oom = json_get_bool(obj, "oom", false);
	e->started = json_get_bool(obj, "started", true);
	e->started_at = json_get_int(obj, "started_at", 0);
	e->finished_at = json_get_int(obj, "finished_at", 0);
	snprintf(e->error, sizeof(e->error), "%s", json_get_str(obj, "error", ""));
	json_object_put(obj);
}

static int restarts_read(const struct ctr *ctr)
{
	_cleanup_free_ char *path = ctr_path(ctr, "restarts"), *text = NULL;

	if (file_read_all(path, 64, &text, NULL) < 0)
		return 0;
	return atoi(text);
}

/* The last line of shim.log: why a shim ended early. */
static void shim_log_reason(const struct ctr *ctr, char *out, size_t outlen)
{
	_cleanup_free_ char *path = ctr_path(ctr, "shim.log");
	char buf[1024], *line, *p;

	out[0] = '\0';
	if ((line = inst_log_last_line(path, buf, sizeof(buf))) == NULL)
		return;
	/* "12:00:00.000 kumo-shim warning: shim c1: why" -> "why" */
	if ((p = strstr(line, ": shim ")) && (p = strstr(p + 7, ": ")))
		line = p + 2;
	snprintf(out, outlen, "%s", line);
}

/* ---- reports ---------------------------------------------------------------------------- */

/*
 * The REPORT of a container: name, type, state, pid, started_at (ms), uptime_s,
 * exit_code, signal, oom and finished_at of the last exit, restarts, image and
 * image_digest, rw_size (bytes in the writable layer, null until measured), and
 * error when it crashed or failed. Returns a new object.
 */
struct json_object *oci_report(const struct ctr *ctr)
{
	struct json_object *r = inst_report_base(&ctr->inst), *image = NULL;

	json_object_object_get_ex(ctr->inst.spec, "image", &image);
	json_object_object_add(r, "exit_code", inst_int_or_null(ctr->exit_code));
	json_object_object_add(r, "signal",
			       ctr->exit_signal > 0 ? json_object_new_int(ctr->exit_signal) : NULL);
	json_object_object_add(r, "oom", json_object_new_boolean(ctr->oom));
	json_object_object_add(r, "finished_at", inst_int_or_null(ctr->finished_at_ms));
	json_object_object_add(r, "restarts", json_object_new_int(ctr->restarts));
	json_object_object_add(
		r, "restart",
		json_object_new_string(json_get_str(ctr->inst.spec, "restart", "no")));
	json_object_object_add(r, "image", json_object_new_string(json_get_str(image, "name", "")));
	json_object_object_add(r, "image_digest",
			       json_object_new_string(json_get_str(image, "manifest", "")));
	json_object_object_add(r, "rw_size", inst_int_or_null(ctr->rw_size));
	if (ctr->inst.state == INST_CRASHED || ctr->inst.state == INST_ERROR)
		json_object_object_add(r, "error", json_object_new_string(ctr->inst.error));
	else if (ctr->orphan)
		json_object_object_add(r, "warning", json_object_new_string(ctr->inst.error));
	return r;
}

/* What the controller has heard: a change in any of these is news. */
static void signature(const struct ctr *ctr, char *out, size_t len)
{
	snprintf(out, len, "%d/%d/%d/%d/%d/%d/%d", ctr->inst.state, (int)ctr->inst.pid,
		 ctr->restarts, ctr->exit_code, ctr->exit_signal, ctr->oom, ctr->orphan);
}

/* The controller heard ctr's current state (an op-done carried its report). */
void oci_state_heard(struct ctr *ctr)
{
	signature(ctr, ctr->pushed, sizeof(ctr->pushed));
}

/* Send ctr's report to the controller as an instance-state message. */
void oci_state_push(struct ctr *ctr)
{
	if (!ctr->inst.created || ctr->inst.removing || ctr->inst.agent->stopping)
		return;
	signature(ctr, ctr->pushed, sizeof(ctr->pushed));
	log_info("container %s: %s%s%s", ctr->inst.name, inst_state_name(ctr->inst.state),
		 ctr->inst.error[0] ? ": " : "", ctr->inst.error);
	link_event_send(ctr->inst.agent, LINK_INSTANCE_STATE, NULL, oci_report(ctr));
}

/*
 * Set ctr's state; pushed to the controller at once unless a command is working on it
 * (its op-done carries the state).
 */
void oci_state_set(struct ctr *ctr, enum inst_state state)
{
	char sig[sizeof(ctr->pushed)];

	ctr->inst.state = state;
	if (state != INST_CRASHED && state != INST_ERROR && !ctr->orphan)
		ctr->inst.error[0] = '\0';
	signature(ctr, sig, sizeof(sig));
	if (ctr->inst.op == NULL && strcmp(sig, ctr->pushed) != 0)
		oci_state_push(ctr);
}

/* ---- state from the files ------------------------------------------------------------ */

static void poll_cb(uv_timer_t *timer)
{
	oci_refresh(timer->data);
}

/*
 * The files that tell a start or stop has settled: runc's pid file (renamed into
 * place), the shim's exit.json and shim.pid (likewise). Anything else in the
 * directory (console.log at every line the container prints) is not news.
 */
static void watch_cb(uv_fs_event_t *handle, const char *filename, int events, int status)
{
	static const char *const news[] = {"container.pid", "exit.json", "shim.pid", NULL};

	(void)events;
	if (status < 0 || filename == NULL)
		return;
	for (size_t i = 0; news[i]; i++)
		if (strcmp(filename, news[i]) == 0) {
			oci_refresh(handle->data);
			return;
		}
}

/*
 * Refresh ctr as soon as the shim or runc puts one of its files in place (inotify on
 * its directory), so a start is told when runc wrote the pid, not at the next tick;
 * the timer every interval_ms stays for what no file shows (a process gone) and for
 * when the watch cannot be had (inotify limits).
 */
static void settle_watch(struct ctr *ctr, unsigned interval_ms)
{
	uv_timer_start(&ctr->inst.poll_timer, poll_cb, interval_ms, interval_ms);
	if (!ctr->watching)
		ctr->watching = uv_fs_event_start(&ctr->watch, watch_cb, ctr->inst.dir, 0) == 0;
}

static void settle_unwatch(struct ctr *ctr)
{
	uv_timer_stop(&ctr->inst.poll_timer);
	if (ctr->watching)
		uv_fs_event_stop(&ctr->watch);
	ctr->watching = false;
}

static void start_settle(struct ctr *ctr, const char *error)
{
	log_trace("container %s: start settled", ctr->inst.name);
	uv_timer_stop(&ctr->inst.timer);
	if (ctr->inst.exit_waiters == NULL)
		settle_unwatch(ctr);
	inst_start_settle(&ctr->inst, error);
}

static void exit_settle(struct ctr *ctr)
{
	uv_timer_stop(&ctr->inst.timer);
	settle_unwatch(ctr);
	ctr->inst.stop_requested = false;
	/* The stop is answered once its marker is durable (ocimarker.c). */
	oci_marker_exit(ctr);
}

static void exit_describe(struct ctr *ctr, const struct exit_info *e)
{
	if (e->oom)
		snprintf(ctr->inst.error, sizeof(ctr->inst.error),
			 "the container was killed: out of memory (limit %lld MiB)",
			 (long long)json_get_int(json_object_object_get(ctr->inst.spec, "limits"),
						 "memory_mb", 0));
	else if (e->signal)
		snprintf(ctr->inst.error, sizeof(ctr->inst.error),
			 "the container was killed by signal %d (%s)", e->signal,
			 strsignal(e->signal));
	else
		snprintf(ctr->inst.error, sizeof(ctr->inst.error),
			 "the container exited with code %d", e->code);
}

/*
 * Read what the shim's files say and set ctr's state, pid, exit and restarts from it;
 * settle a start or stop waiting for it, and push a change no command is working on.
 */
void oci_refresh(struct ctr *ctr)
{
	_cleanup_free_ char *cpid_path = ctr_path(ctr, "container.pid");
	_cleanup_free_ char *shim_path = ctr_path(ctr, "shim.pid");
	enum inst_state state;
	struct exit_info e;
	int64_t mtime = 0;
	bool stop_marker;
	pid_t cpid;
	char why[200];

	if (!ctr->inst.created || ctr->inst.removing)
		return;
	if (ctr->inst.child == NULL && ctr->shim_pid && !pid_is_shim(ctr->shim_pid, ctr->inst.dir))
		ctr->shim_pid = 0;
	if (ctr->shim_pid == 0) {
		/* A shim started by another agent (or before this one's restart). */
		pid_t p = pid_file_read(shim_path, NULL);

		if (p && pid_is_shim(p, ctr->inst.dir))
			ctr->shim_pid = p;
	}
	cpid = pid_file_read(cpid_path, &mtime);
	if (cpid && !(vm_pid_alive(cpid) && pid_in_cgroup(cpid, ctr)))
		cpid = 0;
	if (ctr->orphan && cpid == 0 && ctr->inst.pid)
		ctr->orphan_lost = true;
	ctr->inst.pid = cpid;
	if (cpid)
		ctr->inst.started_at_ms = mtime;
	ctr->orphan = cpid && ctr->shim_pid == 0;
	ctr->restarts = restarts_read(ctr);
	exit_read(ctr, &e);
	ctr->exit_code = e.known ? e.code : -1;
	ctr->exit_signal = e.known ? e.signal : -1;
	ctr->oom = e.known && e.oom;
	ctr->finished_at_ms = e.known ? e.finished_at : -1;
	stop_marker = ctr_file_exists(ctr, "stop");

	if (cpid) {
		state = ctr->inst.stop_requested ? INST_STOPPING
			: ctr_frozen(ctr)	 ? INST_PAUSED
						 : INST_RUNNING;
		if (ctr->orphan)
			snprintf(ctr->inst.error, sizeof(ctr->inst.error),
				 "the container runs but its shim is gone: its exit and restart "
				 "policy are not looked after");
	} else if (ctr->shim_pid) {
		state = stop_marker ? INST_STOPPING : INST_STARTING;
	} else if (stop_marker) {
		state = INST_STOPPED;
	} else if (ctr->orphan_lost) {
		state = INST_CRASHED;
		snprintf(ctr->inst.error, sizeof(ctr->inst.error),
			 "the container ended while its shim was gone; its exit code is unknown");
	} else if (e.known && !e.started) {
		state = INST_ERROR;
		snprintf(ctr->inst.error, sizeof(ctr->inst.error),
			 "the container did not start: %s",
			 e.error[0] ? e.error : "no reason given");
	} else if (e.known && (e.code != 0 || e.signal || e.oom)) {
		state = INST_CRASHED;
		exit_describe(ctr, &e);
	} else if (!e.known && access(shim_path, F_OK) == 0) {
		state = INST_CRASHED;
		shim_log_reason(ctr, why, sizeof(why));
		snprintf(ctr->inst.error, sizeof(ctr->inst.error),
			 "the container's shim ended unexpectedly%s%s", why[0] ? ": " : "", why);
	} else {
		state = INST_STOPPED;
	}
	oci_state_set(ctr, state);

	if (ctr->inst.start_cb) {
		if (e.known && !e.started) {
			start_settle(ctr, ctr->inst.error);
		} else if (cpid || (e.known && e.finished_at >= ctr->start_ms) ||
			   ctr->restarts > 0) {
			start_settle(ctr, NULL);
		} else if (ctr->shim_pid == 0) {
			shim_log_reason(ctr, why, sizeof(why));
			snprintf(ctr->inst.error, sizeof(ctr->inst.error),
				 "the shim ended before the "
				 "container started%s%s",
				 why[0] ? ": " : "", why);
			ctr->inst.state = INST_ERROR;
			start_settle(ctr, ctr->inst.error);
		}
	}
	if (!oci_alive(ctr) && ctr->inst.exit_waiters)
		exit_settle(ctr);
}

/* ---- start ------------------------------------------------------------------------------ */

static void shim_exit_fn(struct inst *inst, int64_t status, int term_signal)
{
	struct ctr *ctr = (struct ctr *)inst;

	ctr->shim_pid = 0;
	if (status != 0 || term_signal)
		log_warnx("container %s: shim exited with status %lld, signal %d", ctr->inst.name,
			  (long long)status, term_signal);
	oci_refresh(ctr);
}

static void start_deadline_cb(uv_timer_t *timer)
{
	struct ctr *ctr = timer->data;
	char why[160];

	if (!inst_start_overdue(&ctr->inst, "the container did not start",
				AGENT_CTR_START_TIMEOUT_MS, why, sizeof(why)))
		return;
	/* The shim passes SIGTERM on to runc, and does not restart after it. */
	if (ctr->shim_pid)
		kill(ctr->shim_pid, SIGTERM);
	start_settle(ctr, why);
}

/*
 * Put ctr's file name in place with text (small, local: on the loop), without fsyncs:
 * a power cut must not lose only the stop marker (ocimarker.c).
 */
static int ctr_file_put(struct ctr *ctr, const char *file, const char *text, struct kerr *err)
{
	_cleanup_free_ char *path = ctr_path(ctr, file);
	int ret = file_write_replace(path, text, strlen(text), 0600);

	if (ret < 0)
		return err_set(err, -ret, "container %s: cannot write %s", ctr->inst.name, path);
	return 0;
}

static void ctr_file_drop(struct ctr *ctr, const char *file)
{
	_cleanup_free_ char *path = ctr_path(ctr, file);

	unlink(path);
}

/*
 * Start ctr's shim (ctr stopped, crashed or failed; its bundle prepared by
 * ociaction.c). cb(ctr, error, data) follows once the container runs (or ran: it may
 * have exited at once), or failed to start. The small files in its directory (local
 * pool) are touched on the loop. Returns 0, or -1 with err when the shim could not
 * be spawned (cb is then not called).
 */
int oci_start(struct ctr *ctr, inst_done_cb cb, void *data, struct kerr *err)
{
	struct agent *a = ctr->inst.agent;
	_cleanup_free_ char *log_path = ctr_path(ctr, "shim.log");
	char *args[] = {a->exe, "--shim", ctr->inst.dir, NULL};
	uv_stdio_container_t stdio[3];
	uv_process_options_t opts = {0};
	char count[16];
	int fd, ret;

	if (oci_alive(ctr))
		return err_set(err, 0, "container %s runs already (pid %d)", ctr->inst.name,
			       (int)(ctr->inst.pid ? ctr->inst.pid : ctr->shim_pid));
	/* A fresh start: no stop marker, no last exit, no restarts yet. */
	ctr_file_drop(ctr, "stop");
	oci_marker_forget(ctr);
	ctr_file_drop(ctr, "exit.json");
	ctr_file_drop(ctr, "container.pid");
	/* A power cut ends the container and its shim: the count starts again anyway.
	 * A container that migrated here cold goes on with its source's count. */
	snprintf(count, sizeof(count), "%d\n", ctr->restarts_carried);
	ctr->restarts_carried = 0;
	if (ctr_file_put(ctr, "restarts", count, err) < 0)
		return -1;
	fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(err, errno, "container %s: cannot open %s", ctr->inst.name,
			       log_path);
	stdio[0].flags = UV_IGNORE;
	stdio[1].flags = stdio[2].flags = UV_INHERIT_FD;
	stdio[1].data.fd = stdio[2].data.fd = fd;
	opts.file = a->exe;
	opts.args = args;
	opts.stdio = stdio;
	opts.stdio_count = 3;
	/*
	 * Detached: its own session, so the container outlives the agent and a signal to
	 * the agent's process group never reaches it. The shim runs as root, like the
	 * agent: it mounts the overlay (CAP_SYS_ADMIN) and runs runc.
	 */
	opts.flags = UV_PROCESS_DETACHED;
	ret = inst_child_spawn(&ctr->inst, &opts, shim_exit_fn);
	close(fd);
	if (ret < 0)
		return err_set(err, -ret, "container %s: cannot run the shim %s", ctr->inst.name,
			       a->exe);
	ctr->shim_pid = ret;
	ctr->inst.pid = 0;
	ctr->orphan = ctr->orphan_lost = false;
	ctr->inst.stop_requested = ctr->inst.stop_forced = false;
	ctr->inst.error[0] = '\0';
	ctr->inst.start_cb = cb;
	ctr->inst.start_data = data;
	ctr->start_ms = now_ms();
	log_info("container %s: shim started, pid %d", ctr->inst.name, (int)ctr->shim_pid);
	log_trace("container %s: shim spawned", ctr->inst.name);
	oci_state_set(ctr, INST_STARTING);
	uv_timer_start(&ctr->inst.timer, start_deadline_cb, AGENT_CTR_START_TIMEOUT_MS, 0);
	settle_watch(ctr, START_POLL_MS);
	return 0;
}

/* ---- stop ------------------------------------------------------------------------------- */

static void kill_done_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	char *name = data;
	struct ctr *ctr = a->stopping ? NULL : oci_find(a, name);

	/* "container not running" and the like are expected while it goes. */
	if (ctr && r->status != 0 && !r->cancelled)
		log_debug("container %s: runc kill: %s", name, r->error);
	free(name);
}

static void runc_signal(struct ctr *ctr, const char *signal)
{
	struct kerr err;

	if (oci_runc(ctr->inst.agent, (const char *const[]){"kill", ctr->inst.name, signal, NULL},
		     10000, 0, false, NULL, kill_done_cb, xstrdup(ctr->inst.name), &err) < 0)
		log_warnx("container %s: %s", ctr->inst.name, err.msg);
	/* Without a shim, runc run may be gone too: the init gets the signal directly. */
	if (ctr->orphan && ctr->inst.pid)
		kill(ctr->inst.pid, strcmp(signal, "KILL") == 0 ? SIGKILL : SIGTERM);
}

static void stop_escalate_cb(uv_timer_t *timer)
{
	struct ctr *ctr = timer->data;

	oci_refresh(ctr);
	if (!oci_alive(ctr) || ctr->inst.exit_waiters == NULL)
		return;
	if (++ctr->kill_attempts > KILL_GIVE_UP) {
		char why[160];

		snprintf(why, sizeof(why),
			 "the container did not stop: its shim (pid %d) is still there after "
			 "SIGKILL",
			 (int)ctr->shim_pid);
		log_warnx("container %s: %s", ctr->inst.name, why);
		settle_unwatch(ctr);
		ctr->inst.stop_requested = false;
		inst_exit_waiters_call(&ctr->inst, why);
		return;
	}
	if (ctr->kill_attempts == 1)
		log_info("container %s: still running after SIGTERM; SIGKILL", ctr->inst.name);
	ctr->inst.stop_forced = true;
	runc_signal(ctr, "KILL");
	/* A shim that lingers with nothing left to run is stuck: it goes too. */
	if (ctr->inst.pid == 0 && ctr->shim_pid && ctr->kill_attempts >= 3)
		kill(ctr->shim_pid, SIGKILL);
	uv_timer_start(&ctr->inst.timer, stop_escalate_cb, KILL_RETRY_MS, 0);
}

static void resumed_then_signal_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	char *name = data;
	struct ctr *ctr = a->stopping ? NULL : oci_find(a, name);

	free(name);
	if (ctr == NULL || r->cancelled)
		return;
	runc_signal(ctr, ctr->inst.stop_forced ? "KILL" : "TERM");
}

/*
 * Stop ctr (alive): the stop marker tells the shim not to restart it, SIGTERM goes to
 * the container's init (resumed first if paused), SIGKILL after timeout_s seconds (at
 * once for 0), again every 2 s while it lingers. cb(ctr, NULL, data) once the shim
 * and the container are gone (an error if they would not go); ctr->inst.stop_forced says
 * whether SIGKILL was needed. A second stop joins the first, a forced one hurries it.
 */
void oci_stop(struct ctr *ctr, unsigned timeout_s, inst_done_cb cb, void *data)
{
	bool paused = ctr->inst.state == INST_PAUSED;
	struct kerr err;

	inst_exit_waiter_add(&ctr->inst, cb, data);
	if (ctr->inst.start_cb)
		start_settle(ctr, "the container is being stopped");
	if (ctr->inst.stop_requested) {
		if (timeout_s == 0) {
			ctr->inst.stop_forced = true;
			uv_timer_start(&ctr->inst.timer, stop_escalate_cb, 0, 0);
		}
		return;
	}
	ctr->inst.stop_requested = true;
	ctr->inst.stop_forced = timeout_s == 0;
	ctr->kill_attempts = 0;
	/* No marker for the shim to see: it would restart the container (its restart
	 * policy) when init exits. A SIGTERM to the shim ends it instead. */
	if (oci_marker_put(ctr) < 0 && ctr->shim_pid)
		kill(ctr->shim_pid, SIGTERM);
	oci_state_set(ctr, INST_STOPPING);
	if (paused &&
	    oci_runc(ctr->inst.agent, (const char *const[]){"resume", ctr->inst.name, NULL}, 10000,
		     0, false, NULL, resumed_then_signal_cb, xstrdup(ctr->inst.name), &err) == 0) {
		/* A frozen init cannot act on SIGTERM: it is resumed first. */
	} else {
		runc_signal(ctr, ctr->inst.stop_forced ? "KILL" : "TERM");
	}
	uv_timer_start(&ctr->inst.timer, stop_escalate_cb,
		       ctr->inst.stop_forced ? KILL_RETRY_MS : (uint64_t)timeout_s * 1000, 0);
	settle_watch(ctr, STOP_POLL_MS);
}

/*
 * A container that is not running (crashed, failed) is stopped from now on: the stop
 * marker says so to every later refresh. cb(ctr, NULL, data) once the marker is
 * durable, or known not to be (at once when it could not be written): the stop verb
 * then fails with oci_marker_stop_error().
 */
void oci_mark_stopped(struct ctr *ctr, inst_done_cb cb, void *data)
{
	oci_marker_put(ctr);
	oci_refresh(ctr);
	inst_exit_waiter_add(&ctr->inst, cb, data);
	oci_marker_exit(ctr);
}

/* ---- runc subcommands ---------------------------------------------------------------- */

/* runc's reason from the tail of its stderr: the last line, its msg="..." if logfmt. */
static void runc_reason(const char *tail, char *buf, size_t len)
{
	_cleanup_free_ char *text = xstrdup(tail);
	char *end = text + strlen(text), *line;

	while (end > text && (end[-1] == '\n' || end[-1] == ' '))
		*--end = '\0';
	line = strrchr(text, '\n');
	line = line ? line + 1 : text;
	if ((end = strstr(line, "msg=\""))) {
		/* logfmt: msg="...", with \" and \\ inside */
		char *w = line = end + 5;

		if ((end = strrchr(line, '"')))
			*end = '\0';
		for (char *rd = line; *rd; rd++) {
			if (*rd == '\\' && (rd[1] == '"' || rd[1] == '\\'))
				rd++;
			*w++ = *rd;
		}
		*w = '\0';
	}
	snprintf(buf, len, "%s", line);
}

static void cmd_done_cb(const struct child_result *cr, void *data)
{
	struct oci_cmd *c = data;
	struct oci_cmd_result r = {0};

	for (struct oci_cmd **pp = &c->agent->oci_cmds; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	r.status = cr->status;
	r.term_signal = cr->signal;
	r.timed_out = cr->timed_out;
	r.cancelled = cr->abandoned;
	r.out = cr->out;
	r.outlen = cr->out_len;
	r.truncated = cr->truncated;
	if (cr->abandoned)
		snprintf(r.error, sizeof(r.error), "the agent is stopping");
	else if (cr->cancelled)
		snprintf(r.error, sizeof(r.error), "runc was cancelled");
	else if (cr->timed_out)
		snprintf(r.error, sizeof(r.error), "runc did not finish in time");
	else if (!child_result_ok(cr)) {
		runc_reason(cr->err, r.error, sizeof(r.error));
		if (!r.error[0])
			child_result_why(cr, r.error, sizeof(r.error));
	}
	c->cb(c->agent, &r, c->data);
	free(c);
}

/*
 * Run `runc --root {local}/runc ARGS...` (args NULL-terminated). stdout is kept up to
 * out_max bytes (more sets truncated), with stderr in it when merge is set (exec),
 * otherwise stderr's tail gives the error. After timeout_ms (0: none) runc is
 * killed, and the process in pid_file too if given (exec --pid-file). cb gets the
 * result on a later turn of the loop. Returns 0, or -1 with err (cb is not called).
 */
int oci_runc(struct agent *a, const char *const *args, unsigned timeout_ms, size_t out_max,
	     bool merge, const char *pid_file, oci_cmd_cb cb, void *data, struct kerr *err)
{
	struct oci_cmd *c = xcalloc(1, sizeof(*c));
	char root[PATH_MAX];
	struct argv av = {0};
	struct child_opts opts = {
		.out_max = merge && out_max == 0 ? 1 : out_max,
		.err_max = CMD_ERR_TAIL,
		.err_mode = merge ? CHILD_ERR_MERGE : CHILD_ERR_CAPTURE,
		.timeout_ms = timeout_ms,
		/* An exec's command is not runc's to take along: it goes by its pid file,
		 * with the processes it started that are still its descendants. (Ones it
		 * left in the background belong to the container's init by now, and stay,
		 * as under docker.) */
		.pid_file = pid_file,
	};

	oci_runc_root(a, root, sizeof(root));
	argv_add(&av, "%s", AGENT_OCI_RUNTIME);
	argv_add(&av, "--root");
	argv_add(&av, "%s", root);
	for (size_t i = 0; args[i]; i++)
		argv_add(&av, "%s", args[i]);
	opts.argv = av.v;
	c->agent = a;
	c->exec = pid_file != NULL;
	c->cb = cb;
	c->data = data;
	c->child = child_run(a->loop, &opts, cmd_done_cb, c, err);
	argv_free(&av);
	if (c->child == NULL) {
		free(c);
		return -1;
	}
	c->next = a->oci_cmds;
	a->oci_cmds = c;
	return 0;
}

/*
 * Kill the runc command whose callback data is data, with what it started (an exec's
 * command by its pid file): its callback follows with an error. Returns whether one
 * ran.
 */
bool oci_cmd_cancel(struct agent *a, const void *data)
{
	for (struct oci_cmd *c = a->oci_cmds; c; c = c->next) {
		if (c->data == data) {
			child_cancel(c->child);
			return true;
		}
	}
	return false;
}

/*
 * At agent shutdown: stop watching runc children; their callbacks hear "the agent is
 * stopping". An exec still running is killed (its command by its pid file, and
 * runc): nobody can hear its answer any more, and the controller has failed its
 * query. Other subcommands are short and finish on their own.
 */
void oci_cmds_close(struct agent *a)
{
	for (struct oci_cmd *c = a->oci_cmds; c; c = c->next)
		child_abandon(c->child, c->exec);
}

/* ---- the thread pool -------------------------------------------------------------------- */

/*
 * Run j->run(j) on libuv's thread pool (it must touch nothing but j), then
 * j->done(j) on the loop, which owns j from then on (common/work.h); j->owner is the
 * agent.
 */
void oci_job_queue(struct agent *a, struct work *j)
{
	j->owner = a;
	work_queue(a->loop, j);
}

/* ---- the writable layer's size ------------------------------------------------------- */

struct measure_job {
	struct work job;
	char upper[PATH_MAX];
	char name[NAME_MAX_LEN + 1];
	int64_t size;
	inst_done_cb cb;
	void *data;
};

struct inode_key {
	dev_t dev;
	ino_t ino;
};

static int64_t tree_size(int fd0, struct inode_key **seen, size_t *nseen, size_t *cap)
{
	DIR *d = fdopendir(fd0);
	struct dirent *e;
	int64_t total = 0;

	if (d == NULL) {
		close(fd0);
		return 0;
	}
	while ((e = readdir(d))) {
		struct stat st;
		bool dup = false;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
		    fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int fd = openat(dirfd(d), e->d_name,
					O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

			if (fd >= 0)
				total += tree_size(fd, seen, nseen, cap);
			continue;
		}
		if (st.st_nlink > 1) {
			for (size_t i = 0; i < *nseen && !dup; i++)
				dup = (*seen)[i].dev == st.st_dev && (*seen)[i].ino == st.st_ino;
			if (dup)
				continue;
			if (*nseen == *cap) {
				*cap = *cap ? *cap * 2 : 64;
				*seen = xrealloc(*seen, *cap * sizeof(**seen));
			}
			(*seen)[(*nseen)++] = (struct inode_key){st.st_dev, st.st_ino};
		}
		total += st.st_size;
	}
	closedir(d);
	return total;
}

static int measure_work(struct work *job)
{
	struct measure_job *m = (struct measure_job *)job;
	struct inode_key *seen = NULL;
	size_t nseen = 0, cap = 0;
	int fd = open(m->upper, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	m->size = -1;
	if (fd < 0)
		return 0;
	m->size = tree_size(fd, &seen, &nseen, &cap);
	free(seen);
	return 0;
}

static void measure_done(struct work *job)
{
	struct measure_job *m = (struct measure_job *)job;
	struct ctr *ctr = ((struct agent *)job->owner)->stopping
				  ? NULL
				  : oci_find(((struct agent *)job->owner), m->name);

	if (ctr) {
		ctr->measuring = false;
		if (m->size >= 0)
			ctr->rw_size = m->size;
	}
	if (m->cb)
		m->cb((struct inst *)ctr, NULL, m->data);
	free(m);
}

/*
 * Measure ctr's writable layer (bytes of its files, hard links once) off the loop,
 * then cb(ctr, NULL, data) (cb may be NULL), with ctr NULL if it went away meanwhile.
 */
void oci_measure(struct ctr *ctr, inst_done_cb cb, void *data)
{
	struct measure_job *m = xcalloc(1, sizeof(*m));

	snprintf(m->upper, sizeof(m->upper), "%s/upper", ctr->inst.dir);
	snprintf(m->name, sizeof(m->name), "%s", ctr->inst.name);
	m->cb = cb;
	m->data = data;
	m->job.run = measure_work;
	m->job.done = measure_done;
	ctr->measuring = true;
	oci_job_queue(ctr->inst.agent, &m->job);
}

/* ---- cron -------------------------------------------------------------------------------- */

/*
 * The oci driver's share of the agent's periodic duties (heartbeat timer): read every
 * container's state from its shim's files (exits, restarts, shims that went away) and,
 * every few beats, measure the writable layers for the next reports.
 */
void oci_cron(struct agent *a)
{
	for (struct inst *inst = a->insts, *next; inst; inst = next) {
		struct ctr *c = (struct ctr *)inst;

		next = inst->next;
		if (inst->driver != &oci_driver || !inst->created)
			continue;
		oci_refresh(c);
		if (inst->op == NULL && !c->measuring && c->measure_tick++ % MEASURE_EVERY == 0)
			oci_measure(c, NULL, NULL);
	}
}

/* ---- logs --------------------------------------------------------------------------------- */

/*
 * Read ctr's console log for a logs query (logfile_read(): across its rotated files,
 * by logical offset): from offset (one before the oldest byte kept: from that byte;
 * past the end, a log made anew: from its current file's start), or the last tail
 * lines, or from the start; at most max bytes. answer gets {"data": base64,
 * "offset": where the next read goes on, "size": the log's logical end}. The files are
 * local and the read bounded: done on the loop, as the REP socket answers before it
 * takes the next request. Returns 0.
 */
int oci_logs_read(struct ctr *ctr, int64_t tail, int64_t offset, int64_t max,
		  struct json_object **answer, struct kerr *err)
{
	_cleanup_free_ char *path = ctr_path(ctr, "console.log");
	_cleanup_free_ char *data = NULL;
	struct logfile_span span = {0};

	(void)err;
	logfile_read(path, offset, tail, false, max, &span);
	data = xmalloc(4 * (span.len + 2) / 3 + 1);
	EVP_EncodeBlock((unsigned char *)data, span.data, (int)span.len);
	free(span.data);
	*answer = json_object_new_object();
	json_object_object_add(*answer, "data", json_object_new_string(data));
	json_object_object_add(*answer, "offset",
			       json_object_new_int64(span.offset + (int64_t)span.len));
	json_object_object_add(*answer, "size", json_object_new_int64(span.end));
	return 0;
}

/* ---- re-adoption ------------------------------------------------------------------------- */

struct remove_job {
	struct work job;
	char path[PATH_MAX];
	disk_done_cb cb;
	void *data;
};

static int remove_work(struct work *job)
{
	struct remove_job *r = (struct remove_job *)job;
	int ret;

	/* A create that failed may have wired the NICs: their namespace goes first. */
	netport_ctr_remove(r->path);
	ret = tree_remove(r->path);

	if (ret < 0)
		return err_set(&job->err, -ret, "cannot remove %s", r->path);
	return 0;
}

static void remove_done(struct work *job)
{
	struct remove_job *r = (struct remove_job *)job;

	r->cb(((struct agent *)job->owner), job->ret < 0 ? job->err.msg : NULL, r->data);
	free(r);
}

/*
 * Remove the directory dir (a container's or an unpack's, made by this agent) off the
 * loop: no symlink is followed and no mount point crossed. cb(a, error, data) after.
 */
void oci_dir_remove(struct agent *a, const char *dir, disk_done_cb cb, void *data)
{
	struct remove_job *r = xcalloc(1, sizeof(*r));

	snprintf(r->path, sizeof(r->path), "%s", dir);
	r->cb = cb;
	r->data = data;
	r->job.run = remove_work;
	r->job.done = remove_done;
	oci_job_queue(a, &r->job);
}

static void leftover_removed_cb(struct agent *a, const char *error, void *data)
{
	char *what = data;

	if (error)
		log_warnx("oci: %s: %s", what, error);
	else
		log_info("oci: removed %s", what);
	free(what);
}

static void leftover_remove(struct agent *a, const char *path, const char *what)
{
	oci_dir_remove(a, path, leftover_removed_cb, xstrdup(what));
}

static void state_answer_cb(struct agent *a, const struct oci_cmd_result *r, void *data)
{
	char *name = data;
	struct ctr *ctr = a->stopping ? NULL : oci_find(a, name);
	struct json_object *st = NULL;
	const char *status;

	free(name);
	if (ctr == NULL || r->cancelled)
		return;
	if (r->status != 0 || json_body_parse(r->out, r->outlen, &st, NULL) < 0) {
		/* No runtime state: nothing runs, which the files said already. */
		return;
	}
	status = json_get_str(st, "status", "");
	log_info("container %s: runc says %s (pid %lld)%s", ctr->inst.name, status,
		 (long long)json_get_int(st, "pid", 0),
		 ctr->shim_pid ? "" : ", and no shim is watching it");
	if (strcmp(status, "stopped") == 0 && ctr->shim_pid == 0) {
		/* runc's leftover record of a run whose runc process was killed. */
		struct kerr err;

		oci_runc(a, (const char *const[]){"delete", "--force", ctr->inst.name, NULL}, 10000,
			 0, false, NULL, kill_done_cb, xstrdup(ctr->inst.name), &err);
	}
	json_object_put(st);
	oci_refresh(ctr);
}

/*
 * Kill the execs a previous run of the agent left in ctr (exec-OP.pid files): their
 * queries died with that run (the controller failed them), so their answers have
 * nowhere to go, and a command must not go on running unasked. Only a pid still in
 * the container's cgroup is killed, with its descendants.
 */
static void exec_orphans_kill(struct ctr *ctr)
{
	DIR *d = opendir(ctr->inst.dir);
	struct dirent *e;

	while (d && (e = readdir(d))) {
		size_t len = strlen(e->d_name);
		_cleanup_free_ char *path = NULL;
		pid_t pid;

		if (strncmp(e->d_name, "exec-", 5) != 0 || len < 9 ||
		    strcmp(e->d_name + len - 4, ".pid") != 0)
			continue;
		path = ctr_path(ctr, e->d_name);
		pid = pid_file_read(path, NULL);
		if (pid > 0 && vm_pid_alive(pid) && pid_in_cgroup(pid, ctr)) {
			log_info("container %s: killing exec pid %d, left by the agent's previous "
				 "run (%s)",
				 ctr->inst.name, (int)pid, e->d_name);
			child_tree_kill(pid);
		}
		unlink(path);
	}
	if (d)
		closedir(d);
}

/* A cancelled create that had not written spec.json yet: its op-done is still owed. */
struct unfinished_undo {
	struct job_file jf;
};

static void unfinished_undone_cb(struct agent *a, const char *error, void *data)
{
	struct unfinished_undo *u = data;
	struct json_object *undone = json_object_new_array();

	if (error)
		log_warnx("op %s: finishing the cancel of its create: %s", u->jf.op, error);
	json_object_array_add(undone, json_object_new_string("container directory"));
	job_file_done(a, u->jf.op, u->jf.cancel, undone);
	free(u);
}

/*
 * Register the container in {local_pool}/containers/NAME again (inst_adopt_all()):
 * its spec read, its state from the shim's files, runc asked about it, execs the last
 * agent left killed. A create the last agent had a cancel for but did not undo is
 * undone now instead (instance_undo_resume()).
 */
void oci_adopt_one(struct agent *a, const char *name)
{
	_cleanup_free_ char *dir = xasprintf("%s/containers/%s", a->cfg->local_pool, name);
	_cleanup_free_ char *spec_path = xasprintf("%s/spec.json", dir);
	_cleanup_free_ char *text = NULL, *what = NULL;
	struct json_object *spec;
	struct job_file jf;
	struct kerr err;
	struct ctr *ctr;
	bool undo;
	size_t len;
	int ret;

	/* A create the last agent had a cancel for but did not undo (job.c). */
	undo = job_file_take(dir, &jf);
	ret = file_read_all(spec_path, SPEC_FILE_MAX, &text, &len);
	if (ret == -ENOENT) {
		/* A create the last agent did not finish: nothing in it is anyone's. */
		if (undo) {
			struct unfinished_undo *u = xcalloc(1, sizeof(*u));

			u->jf = jf;
			log_info("container %s: its create (op %s) was %s before the last agent "
				 "ended; removing what it made",
				 name, jf.op, jf.cancel);
			oci_dir_remove(a, dir, unfinished_undone_cb, u);
			return;
		}
		what = xasprintf("container %s: an unfinished create (%s)", name, dir);
		leftover_remove(a, dir, what);
		return;
	}
	spec = inst_spec_adopt(INST_CONTAINER, name, spec_path, ret, text, len);
	if (spec == NULL)
		return;
	ctr = oci_register(a, spec, &err);
	json_object_put(spec);
	if (ctr == NULL) {
		log_warnx("container %s: %s; ignored", name, err.msg);
		return;
	}
	ctr->inst.created = true;
	exec_orphans_kill(ctr);
	/* One report whatever the state: pushed[] is empty, so the refresh sends it. */
	oci_refresh(ctr);
	if (undo) {
		/* What it runs is stopped and everything removed, as the live job would. */
		instance_undo_resume(a, &ctr->inst, &jf);
		return;
	}
	log_info("container %s: found, %s%s%s", name, inst_state_name(ctr->inst.state),
		 ctr->shim_pid ? ", shim adopted" : "", ctr->inst.pid ? ", container running" : "");
	/* runc's own view, to confirm a running container or clear a stale record. */
	if (oci_runc(a, (const char *const[]){"state", name, NULL}, 10000, 65536, false, NULL,
		     state_answer_cb, xstrdup(name), &err) < 0)
		log_warnx("container %s: %s", name, err.msg);
}

/*
 * At start-up, before inst_adopt_all() scans {local_pool}/containers/ and calls
 * oci_adopt_one() for each container there: remove layer unpacks a previous run left
 * unfinished.
 */
void oci_adopt_prepare(struct agent *a)
{
	_cleanup_free_ char *layers = xasprintf("%s/oci/layers", a->cfg->local_pool);
	struct dirent *e;
	DIR *d;

	d = opendir(layers);
	while (d && (e = readdir(d))) {
		if (strncmp(e->d_name, ".tmp-", 5) == 0) {
			_cleanup_free_ char *p = xasprintf("%s/%s", layers, e->d_name);
			_cleanup_free_ char *what = xasprintf("an unfinished layer unpack (%s)", p);

			leftover_remove(a, p, what);
		}
	}
	if (d)
		closedir(d);
}
