/*
 * shim.c - `kumo-agentd --shim DIR`: the process that keeps one container running.
 *
 * The agent spawns it detached (its own session) for each start; it outlives the agent,
 * so an agent restart or crash never touches a container. It runs
 *
 *   runc --root ROOT run --bundle DIR --pid-file DIR/container.pid NAME
 *
 * in the foreground through the one child runner (common/child.c, on a libuv loop of
 * the shim's own), with the container's stdout and stderr (and runc's messages) read
 * from a pipe and appended to DIR/console.log, and waits. The log is rotated by
 * size (logfile.c; shim.json's log_max_bytes x log_files): a container that writes
 * without end fills at most that, and waits on the pipe while the shim writes. What it leaves in
 * DIR is all the agent reads to know the container's state, now or after a restart of its own:
 *
 *   shim.json      written by the agent: name, runtime, root, lower layers (top
 *                  first), restart policy
 *   shim.pid       this process, while it runs
 *   container.pid  the container's init (runc writes it; removed when the run ends)
 *   exit.json      the last run's end: {exit_code, signal, oom, started, started_at,
 *                  finished_at, error}
 *   restarts       how often the restart policy restarted the container
 *   stop           written by the agent: do not restart, end when the run ends
 *
 * The rootfs (DIR/rootfs) is an overlay of the image's layers and DIR/upper, mounted
 * here before the first run and unmounted when the shim ends: a container whose shim
 * is gone has nothing mounted. Mounting needs CAP_SYS_ADMIN: the shim runs as root,
 * like the agent that spawns it.
 *
 * Restart policy: "on-failure" restarts after a non-zero exit, "always" after any,
 * "no" never; a stop marker or a SIGTERM to the shim ends it. Back-off between
 * restarts doubles from 1 s to 30 s and starts again at 1 s after a run of 10 s or
 * more. A run that never started (runc failed: bad bundle, missing command) is not
 * retried: it will fail the same way again.
 *
 * Out-of-memory kills: the memory cgroup's OOM notification (cgroup v1
 * cgroup.event_control, cgroup v2 an inotify watch on memory.events) is watched
 * during a run, so exit.json can say "oom": true next to exit code 137.
 */
#include "agentd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "child.h"
#include "json.h"
#include "util.h"

#define OVERLAYFS_MAGIC	  0x794c7630
#define LOG_MAX_BYTES	  (10 * 1024 * 1024) /* shim.json's defaults */
#define LOG_FILES	  3
#define BACKOFF_MAX_S	  30
#define BACKOFF_RESET_MS  10000 /* a run this long starts the back-off again at 1 s */
#define SLEEP_SLICE_MS	  100
#define OOM_SETUP_POLL_MS 20

static volatile sig_atomic_t terminate;

struct shim {
	char dir[PATH_MAX];
	char name[NAME_MAX_LEN + 1];
	char runtime[64];
	char root[PATH_MAX];
	char restart[16];
	char *lower;	     /* "A:B:C", top first */
	unsigned idmap_base; /* the user namespace's base (uid.c): lowers idmapped; 0: none */
	char rootfs[PATH_MAX];
	struct logfile log; /* console.log */
	int64_t log_max_bytes;
	int log_files;
	/* The loop a run is watched from: runc run through the one child runner
	 * (common/child.c), its output, the OOM watch, and signals to pass on. */
	uv_loop_t loop;
	uv_async_t wake;    /* a signal came: terminate is set */
	uv_timer_t watch;   /* during a run: look for its memory cgroup and container.pid */
	uv_poll_t oom_poll; /* during a run: the OOM fd, once there is one */
	struct child *run;  /* runc run, while it runs */
	bool signalled;	    /* this run was passed a SIGTERM */
	bool watching;	    /* this run's OOM watch is set up (or cannot be) */
	bool polling;	    /* oom_poll is initialised (closed at the run's end) */
	int64_t started_at; /* this run's container.pid time, 0 until seen */
	int64_t run_status; /* how runc run ended */
	int run_signal;
	char run_error[512]; /* it could not be started */
	/* this run's OOM watch */
	int oom_fd, oom_ctl, oom_events; /* eventfd (v1) or inotify (v2); -1 if none */
	bool oom_v2;
	bool oom;
	char cgroup[PATH_MAX]; /* cgroupsPath of the container, from shim.json */
	bool cgroup_own;       /* ... unique to this host and cluster (not legacy /kumo/NAME) */
	char cgroup_mem[PATH_MAX];
};

static struct shim shim;

static void signal_cb(int sig)
{
	terminate = 1;
	/* Async-signal-safe: the loop passes the signal on to runc (wake_cb()). */
	uv_async_send(&shim.wake);
}

static char *path_in(const struct shim *s, const char *file)
{
	return xasprintf("%s/%s", s->dir, file);
}

static bool file_exists(const struct shim *s, const char *file)
{
	_cleanup_free_ char *p = path_in(s, file);

	return access(p, F_OK) == 0;
}

static int config_load(struct shim *s, struct kerr *err)
{
	_cleanup_free_ char *path = path_in(s, "shim.json"), *text = NULL;
	struct json_object *cfg = NULL, *lower;
	size_t len, used = 0;
	int ret;

	ret = file_read_all(path, 1024 * 1024, &text, &len);
	if (ret < 0)
		return err_set(err, -ret, "cannot read %s", path);
	if (json_body_parse(text, len, &cfg, err) < 0)
		return -1;
	snprintf(s->name, sizeof(s->name), "%s", json_get_str(cfg, "name", ""));
	snprintf(s->runtime, sizeof(s->runtime), "%s",
		 json_get_str(cfg, "runtime", AGENT_OCI_RUNTIME));
	snprintf(s->root, sizeof(s->root), "%s", json_get_str(cfg, "root", ""));
	snprintf(s->restart, sizeof(s->restart), "%s", json_get_str(cfg, "restart", "no"));
	s->log_max_bytes = json_get_int(cfg, "log_max_bytes", LOG_MAX_BYTES);
	s->log_files = (int)json_get_int(cfg, "log_files", LOG_FILES);
	s->idmap_base = (unsigned)json_get_int(cfg, "idmap_base", 0);
	/* Bundles written before shim.json named it lived under /kumo/NAME. */
	s->cgroup_own = json_object_object_get_ex(cfg, "cgroup", NULL);
	if (s->cgroup_own)
		snprintf(s->cgroup, sizeof(s->cgroup), "%s", json_get_str(cfg, "cgroup", ""));
	else
		snprintf(s->cgroup, sizeof(s->cgroup), "/kumo/%s", s->name);
	if (!name_valid(s->name) || s->root[0] != '/' || strpbrk(s->dir, ":,") ||
	    s->cgroup[0] != '/' || strstr(s->cgroup, "..") ||
	    !json_object_object_get_ex(cfg, "lower", &lower) ||
	    !json_object_is_type(lower, json_type_array) || json_array_len(lower) == 0) {
		json_object_put(cfg);
		return err_set(err, 0,
			       "%s lacks name, root or lower, or the directory has ':' or ','",
			       path);
	}
	s->lower = xcalloc(1, PATH_MAX * 2);
	for (size_t i = 0; i < json_array_len(lower); i++) {
		const char *l = json_object_get_string(json_object_array_get_idx(lower, i));

		/* ':' and ',' separate overlay options; such a path cannot be said. */
		if (l == NULL || l[0] != '/' || strpbrk(l, ":,") ||
		    used + strlen(l) + 2 > PATH_MAX * 2) {
			json_object_put(cfg);
			return err_set(err, 0, "%s: bad or too many lower layers", path);
		}
		used += (size_t)sprintf(s->lower + used, "%s%s", i ? ":" : "", l);
	}
	json_object_put(cfg);
	snprintf(s->rootfs, sizeof(s->rootfs), "%s/rootfs", s->dir);
	return 0;
}

/*
 * The lower layers as the container's user namespace sees them (uid.c): each layer
 * mounted through an idmapped mount on DIR/idmap/N, whose paths replace s->lower. The
 * overlay keeps its own references to its layers, so these mounts are detached once
 * it is up (idmap_undo()). Returns 0, or -1 with err.
 */
static int idmap_lowers(struct shim *s, char **lower, size_t *n, struct kerr *err)
{
	_cleanup_free_ char *dir = path_in(s, "idmap");
	_cleanup_free_ char *copy = xstrdup(s->lower);
	_cleanup_close_ int userns = -1;
	size_t used = 0;
	char *save = NULL;

	*n = 0;
	*lower = xcalloc(1, PATH_MAX * 2);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return err_set(err, errno, "cannot create %s", dir);
	userns = uid_userns_open(s->idmap_base, err);
	if (userns < 0)
		return -1;
	for (char *l = strtok_r(copy, ":", &save); l; l = strtok_r(NULL, ":", &save)) {
		_cleanup_free_ char *mnt = xasprintf("%s/%zu", dir, *n);

		umount2(mnt, MNT_DETACH); /* a dead shim's */
		if (mkdir(mnt, 0700) < 0 && errno != EEXIST)
			return err_set(err, errno, "cannot create %s", mnt);
		if (uid_idmap_mount(l, mnt, userns, err) < 0)
			return -1;
		(*n)++;
		if (used + strlen(mnt) + 2 > PATH_MAX * 2)
			return err_set(err, 0, "too many layers for one overlay mount");
		used += (size_t)sprintf(*lower + used, "%s%s", used ? ":" : "", mnt);
	}
	return 0;
}

/* Detach the n idmapped layer mounts idmap_lowers() made. */
static void idmap_undo(struct shim *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *mnt = xasprintf("%s/idmap/%zu", s->dir, i);

		umount2(mnt, MNT_DETACH);
		rmdir(mnt);
	}
}

static int overlay_mount(struct shim *s, const char *lower, struct kerr *err);

/* Mount the overlay on DIR/rootfs, first unmounting one a dead shim left. */
static int rootfs_mount(struct shim *s, struct kerr *err)
{
	_cleanup_free_ char *mapped = NULL;
	const char *lower = s->lower;
	struct statfs sf;
	size_t nmapped = 0;
	int ret;

	if (statfs(s->rootfs, &sf) == 0 && (unsigned long)sf.f_type == OVERLAYFS_MAGIC)
		umount2(s->rootfs, MNT_DETACH);
	if (s->idmap_base) {
		if (idmap_lowers(s, &mapped, &nmapped, err) < 0) {
			idmap_undo(s, nmapped);
			return -1;
		}
		lower = mapped;
	}
	ret = overlay_mount(s, lower, err);
	idmap_undo(s, nmapped);
	return ret;
}

/* The overlay of lower ("A:B:C", top first) and DIR/upper on DIR/rootfs. */
static int overlay_mount(struct shim *s, const char *lower, struct kerr *err)
{
	_cleanup_free_ char *opts = NULL, *plain = NULL;

	/*
	 * No redirects and no metadata-only copy-ups: the upper directory must hold whole
	 * files and plain whiteouts, as commit packs it into a layer.
	 */
	plain = xasprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, s->dir, s->dir);
	opts = xasprintf("%s,redirect_dir=off,metacopy=off", plain);
	if (strlen(opts) >= 4096)
		return err_set(err, 0, "too many layers for one overlay mount");
	if (mount("overlay", s->rootfs, "overlay", 0, opts) == 0)
		return 0;
	/* Kernels without those options (before 4.19) have neither feature anyway. */
	if (errno == EINVAL && mount("overlay", s->rootfs, "overlay", 0, plain) == 0)
		return 0;
	return err_set(err, errno, "cannot mount the overlay on %s", s->rootfs);
}

static void rootfs_umount(struct shim *s)
{
	struct statfs sf;

	if (statfs(s->rootfs, &sf) == 0 && (unsigned long)sf.f_type == OVERLAYFS_MAGIC &&
	    umount2(s->rootfs, MNT_DETACH) < 0)
		log_warn("shim %s: cannot unmount %s", s->name, s->rootfs);
}

/* Run the runtime with args to completion (runc delete); its messages to our log. */
static int runtime_run(struct shim *s, const char *const *args)
{
	char *argv[16];
	size_t n = 0;
	struct child_opts opts = {.argv = argv, .err_mode = CHILD_ERR_INHERIT};
	struct kerr err;
	int ret;

	argv[n++] = s->runtime;
	argv[n++] = "--root";
	argv[n++] = s->root;
	for (size_t i = 0; args[i] && n < ARRAY_SIZE(argv) - 1; i++)
		argv[n++] = (char *)args[i];
	argv[n] = NULL;
	ret = child_run_wait(&opts, NULL, &err);
	if (ret < 0)
		log_warnx("shim %s: %s", s->name, err.msg);
	return ret;
}

/* ---- an empty cgroup for each run ---- */

#define CGROUP_CLEAR_WAIT_MS 5000

/*
 * Call fn(dir) for the container's cgroup directory in every hierarchy that has one:
 * /sys/fs/cgroup{cgroup} (v2), or /sys/fs/cgroup/CONTROLLER{cgroup} for each v1
 * hierarchy (and the hybrid layout's "unified").
 */
static void cgroup_dirs_each(const struct shim *s, void (*fn)(const char *dir, void *data),
			     void *data)
{
	DIR *d;
	struct dirent *e;

	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
		_cleanup_free_ char *dir = xasprintf("/sys/fs/cgroup%s", s->cgroup);

		if (access(dir, F_OK) == 0)
			fn(dir, data);
		return;
	}
	d = opendir("/sys/fs/cgroup");
	while (d && (e = readdir(d))) {
		_cleanup_free_ char *dir = NULL;
		struct stat st;

		if (e->d_name[0] == '.')
			continue;
		dir = xasprintf("/sys/fs/cgroup/%s%s", e->d_name, s->cgroup);
		/* Combined controllers (cpu,cpuacct) show as symlinks to one hierarchy. */
		if (lstat(dir, &st) == 0 && S_ISDIR(st.st_mode))
			fn(dir, data);
	}
	if (d)
		closedir(d);
}

/* Each pid in dir's cgroup.procs and below: fn(pid, data). */
static void cgroup_pids_each(const char *dir, void (*fn)(pid_t pid, void *data), void *data)
{
	_cleanup_free_ char *procs = xasprintf("%s/cgroup.procs", dir), *text = NULL;
	DIR *d;
	struct dirent *e;

	if (file_read_all(procs, 1024 * 1024, &text, NULL) == 0)
		for (char *p = text, *end; *p; p = end) {
			long pid = strtol(p, &end, 10);

			if (end == p)
				break;
			if (pid > 0)
				fn((pid_t)pid, data);
		}
	d = opendir(dir);
	while (d && (e = readdir(d))) {
		_cleanup_free_ char *sub = NULL;

		if (e->d_type != DT_DIR || e->d_name[0] == '.')
			continue;
		sub = xasprintf("%s/%s", dir, e->d_name);
		cgroup_pids_each(sub, fn, data);
	}
	if (d)
		closedir(d);
}

struct leftovers {
	const struct shim *s;
	int found;
	bool kill;
};

static void leftover_pid(pid_t pid, void *data)
{
	struct leftovers *l = data;
	_cleanup_free_ char *path = xasprintf("/proc/%d/comm", (int)pid), *comm = NULL;

	l->found++;
	if (!l->kill)
		return;
	if (file_read_all(path, 256, &comm, NULL) == 0)
		comm[strcspn(comm, "\n")] = '\0';
	log_warnx("shim %s: pid %d (%s) is still in the container's cgroup %s; killing it",
		  l->s->name, (int)pid, comm ? comm : "?", l->s->cgroup);
	kill(pid, SIGKILL);
}

static void leftovers_count(const char *dir, void *data)
{
	cgroup_pids_each(dir, leftover_pid, data);
}

/* rmdir dir and the cgroups below it, deepest first; a busy one stays. */
static void cgroup_rmdir(const char *dir, void *data)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	while (d && (e = readdir(d))) {
		_cleanup_free_ char *sub = NULL;

		if (e->d_type != DT_DIR || e->d_name[0] == '.')
			continue;
		sub = xasprintf("%s/%s", dir, e->d_name);
		cgroup_rmdir(sub, data);
	}
	if (d)
		closedir(d);
	rmdir(dir);
}

/*
 * Before a run: the container's cgroup must hold no process, or runc runs the new init
 * beside it ("container's cgroup is not empty", deprecated by runc and never what we
 * want). Anything there is a remnant of an earlier run of this very container (the
 * path is unique to this host, cluster and name): it is killed, and the cgroups are
 * removed so runc makes them afresh. A legacy path (/kumo/NAME, shared by every lab
 * on a machine) may hold another cluster's container: that is only logged. The shim
 * itself lives wherever the agent that spawned it does, never in a container's cgroup.
 */
static void cgroup_clear(struct shim *s)
{
	struct leftovers l = {.s = s, .kill = s->cgroup_own};
	int64_t deadline = now_ms() + CGROUP_CLEAR_WAIT_MS;

	cgroup_dirs_each(s, leftovers_count, &l);
	if (l.found && !s->cgroup_own) {
		log_warnx("shim %s: %d process(es) in the shared cgroup %s; not touched", s->name,
			  l.found, s->cgroup);
		return;
	}
	/* Killed processes leave the cgroup once the kernel has reaped them; one forked
	 * meanwhile is killed on the next pass (every pass kills what it finds). */
	while (l.found && now_ms() < deadline) {
		struct timespec ts = {0, 50 * 1000000L};

		nanosleep(&ts, NULL);
		l.found = 0;
		cgroup_dirs_each(s, leftovers_count, &l);
	}
	if (l.found)
		log_warnx("shim %s: %d process(es) stay in the cgroup %s", s->name, l.found,
			  s->cgroup);
	cgroup_dirs_each(s, cgroup_rmdir, NULL);
}

/* Leftover runtime state of a container by this name (a shim killed mid-run). */
static void stale_delete(struct shim *s)
{
	_cleanup_free_ char *state = xasprintf("%s/%s", s->root, s->name);

	if (access(state, F_OK) == 0)
		runtime_run(s, (const char *const[]){"delete", "--force", s->name, NULL});
}

static void oom_close(struct shim *s)
{
	if (s->oom_fd >= 0)
		close(s->oom_fd);
	if (s->oom_ctl >= 0)
		close(s->oom_ctl);
	s->oom_fd = s->oom_ctl = -1;
}

/* oom_kill from memory.oom_control (v1) or memory.events (v2), -1 if unreadable. */
static long oom_kills(struct shim *s)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", s->cgroup_mem,
					      s->oom_v2 ? "memory.events" : "memory.oom_control");
	_cleanup_free_ char *text = NULL;
	const char *p;

	if (file_read_all(path, 65536, &text, NULL) < 0)
		return -1;
	p = strstr(text, "oom_kill ");
	return p ? strtol(p + 9, NULL, 10) : 0;
}

/*
 * Watch this run's memory cgroup for OOM kills, once runc made it. Returns true when
 * the watch is set up (or cannot be: no memory cgroup to watch).
 */
static bool oom_setup(struct shim *s)
{
	_cleanup_free_ char *ctl = NULL, *ctlfile = NULL, *line = NULL;
	int efd, cfd;

	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
		s->oom_v2 = true;
		snprintf(s->cgroup_mem, sizeof(s->cgroup_mem), "/sys/fs/cgroup%s", s->cgroup);
	} else {
		snprintf(s->cgroup_mem, sizeof(s->cgroup_mem), "/sys/fs/cgroup/memory%s",
			 s->cgroup);
	}
	if (access(s->cgroup_mem, F_OK) < 0)
		return false; /* not made yet */
	if (s->oom_v2) {
		_cleanup_free_ char *events = xasprintf("%s/memory.events", s->cgroup_mem);

		s->oom_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (s->oom_fd >= 0 && inotify_add_watch(s->oom_fd, events, IN_MODIFY) < 0)
			oom_close(s);
		return true;
	}
	/* cgroup v1: an eventfd that the kernel signals on each OOM in the group. */
	ctlfile = xasprintf("%s/memory.oom_control", s->cgroup_mem);
	ctl = xasprintf("%s/cgroup.event_control", s->cgroup_mem);
	s->oom_ctl = open(ctlfile, O_RDONLY | O_CLOEXEC);
	efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	cfd = open(ctl, O_WRONLY | O_CLOEXEC);
	s->oom_fd = efd;
	if (s->oom_ctl < 0 || efd < 0 || cfd < 0) {
		if (cfd >= 0)
			close(cfd);
		oom_close(s);
		return true;
	}
	line = xasprintf("%d %d", efd, s->oom_ctl);
	if (write(cfd, line, strlen(line)) < 0)
		oom_close(s);
	close(cfd);
	return true;
}

/* The OOM fd is readable: an OOM kill, or (v1) the cgroup going away. */
static void oom_event(struct shim *s)
{
	char buf[4096];
	uint64_t count = 0;
	long kills;

	if (s->oom_v2) {
		while (read(s->oom_fd, buf, sizeof(buf)) > 0)
			;
	} else if (read(s->oom_fd, &count, sizeof(count)) != sizeof(count)) {
		return;
	}
	kills = oom_kills(s);
	/* Gone already: v1 signals the removal too, so two or more events held an OOM. */
	if (kills > 0 || (kills < 0 && !s->oom_v2 && count >= 2)) {
		if (!s->oom)
			log_info("shim %s: the container hit its memory limit (OOM kill)", s->name);
		s->oom = true;
	}
}

/* runc's reason from the end of console.log (from logical offset from on): its
 * msg="..." if it has one. */
static void runc_error(struct shim *s, int64_t from, char *out, size_t outlen)
{
	struct logfile_span span = {0};
	int64_t end = logfile_end(&s->log);
	char *buf, *line, *msg;
	char *tail;

	out[0] = '\0';
	if (end - from > 2047)
		from = end - 2047;
	logfile_read(s->log.path, from, 0, false, 2047, &span);
	buf = (char *)span.data;
	buf[span.len] = '\0';
	tail = buf + span.len;
	while (tail > buf && (tail[-1] == '\n' || tail[-1] == ' '))
		*--tail = '\0';
	line = strrchr(buf, '\n');
	line = line ? line + 1 : buf;
	msg = strstr(line, "msg=\"");
	if (msg) {
		/* logfmt: msg="...", with \" and \\ inside */
		char *w = line = msg + 5;

		tail = strrchr(line, '"');
		if (tail)
			*tail = '\0';
		for (char *r = line; *r; r++) {
			if (*r == '\\' && (r[1] == '"' || r[1] == '\\'))
				r++;
			*w++ = *r;
		}
		*w = '\0';
	}
	snprintf(out, outlen, "%s", line);
	free(span.data);
}

static void exit_write(struct shim *s, int code, int sig, bool started, int64_t started_at,
		       const char *error)
{
	_cleanup_free_ char *path = path_in(s, "exit.json");
	struct json_object *e = json_object_new_object();
	const char *text;

	json_object_object_add(e, "exit_code", json_object_new_int(code));
	json_object_object_add(e, "signal", sig ? json_object_new_int(sig) : NULL);
	json_object_object_add(e, "oom", json_object_new_boolean(s->oom));
	json_object_object_add(e, "started", json_object_new_boolean(started));
	json_object_object_add(e, "started_at",
			       started_at ? json_object_new_int64(started_at) : NULL);
	json_object_object_add(e, "finished_at", json_object_new_int64(now_ms()));
	if (error && error[0])
		json_object_object_add(e, "error", json_object_new_string(error));
	text = json_text(e);
	if (file_write_atomic(path, text, strlen(text), 0600) < 0)
		log_warn("shim %s: cannot write %s", s->name, path);
	json_object_put(e);
}

static int restarts_read(struct shim *s)
{
	_cleanup_free_ char *path = path_in(s, "restarts"), *text = NULL;

	if (file_read_all(path, 64, &text, NULL) < 0)
		return 0;
	return atoi(text);
}

static void restarts_write(struct shim *s, int n)
{
	_cleanup_free_ char *path = path_in(s, "restarts");
	char text[32];

	snprintf(text, sizeof(text), "%d\n", n);
	file_write_atomic(path, text, strlen(text), 0600);
}

/* runc run's output (the container's stdout and stderr, and runc's messages). */
static void run_output_cb(const char *buf, size_t len, void *data)
{
	struct shim *s = data;

	if (logfile_write(&s->log, buf, len) < 0)
		log_warn("shim %s: cannot write %s", s->name, s->log.path);
}

/* The OOM fd is readable. */
static void oom_poll_cb(uv_poll_t *handle, int status, int events)
{
	oom_event(handle->data);
}

/* Until both are there: the memory cgroup to watch and container.pid's time. */
static void watch_cb(uv_timer_t *timer)
{
	struct shim *s = timer->data;
	_cleanup_free_ char *pidfile = path_in(s, "container.pid");
	struct stat st;

	if (!s->watching) {
		s->watching = oom_setup(s);
		if (s->oom_fd >= 0 && uv_poll_init(&s->loop, &s->oom_poll, s->oom_fd) == 0) {
			s->polling = true;
			s->oom_poll.data = s;
			uv_poll_start(&s->oom_poll, UV_READABLE, oom_poll_cb);
		}
	}
	if (s->started_at == 0 && stat(pidfile, &st) == 0) {
		s->started_at = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
		log_trace("shim %s: container.pid seen", s->name);
	}
	if (s->watching && s->started_at)
		uv_timer_stop(timer);
}

/* A signal came: runc passes a SIGTERM on to the container's init. */
static void wake_cb(uv_async_t *handle)
{
	struct shim *s = handle->data;
	pid_t pid = s->run ? child_pid(s->run) : 0;

	if (terminate && pid > 0 && !s->signalled) {
		kill(pid, SIGTERM);
		s->signalled = true;
	}
}

/* runc run returned and its output is read: the run is over, and so is the loop's turn. */
static void run_done_cb(const struct child_result *r, void *data)
{
	struct shim *s = data;

	s->run = NULL;
	s->run_status = r->status;
	s->run_signal = r->signal;
	uv_timer_stop(&s->watch);
	if (s->polling)
		uv_close((uv_handle_t *)&s->oom_poll, NULL);
	s->polling = false;
	log_trace("shim %s: runc run returned", s->name);
}

/*
 * One run of the container: runc run until it returns. *code and *sig describe the
 * container's end (runc reports a container killed by signal S as 128 + S).
 */
static void run_once(struct shim *s, int *code, int *sig, bool *started, int64_t *started_at,
		     char *error, size_t errlen)
{
	_cleanup_free_ char *pidfile = path_in(s, "container.pid");
	char *argv[] = {s->runtime, "--root",	  s->root, "run",   "--bundle",
			s->dir,	    "--pid-file", pidfile, s->name, NULL};
	/* stdin /dev/null, stdout and stderr on one pipe into console.log, nothing kept. */
	struct child_opts opts = {
		.argv = argv, .err_mode = CHILD_ERR_MERGE, .on_output = run_output_cb};
	int64_t log_from = logfile_end(&s->log);
	struct stat st;
	struct kerr err;

	*started = false;
	*started_at = 0;
	error[0] = '\0';
	s->oom = false;
	s->oom_fd = s->oom_ctl = -1;
	s->signalled = s->watching = s->polling = false;
	s->started_at = 0;
	unlink(pidfile);
	stale_delete(s);
	cgroup_clear(s);
	log_trace("shim %s: runc run", s->name);
	s->run = child_run(&s->loop, &opts, run_done_cb, s, &err);
	if (s->run == NULL) {
		*code = 127;
		*sig = 0;
		snprintf(error, errlen, "%s", err.msg);
		return;
	}
	uv_timer_start(&s->watch, watch_cb, 0, OOM_SETUP_POLL_MS);
	/* A signal that came before the spawn is passed on at once. */
	uv_async_send(&s->wake);
	/* Until runc run returned and its handles closed: wake is not counted. */
	uv_run(&s->loop, UV_RUN_DEFAULT);
	if (s->oom_fd >= 0)
		oom_event(s); /* a notification that came with the end */
	oom_close(s);
	*started_at = s->started_at;
	*started = stat(pidfile, &st) == 0;
	if (*started && *started_at == 0)
		*started_at = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
	unlink(pidfile);
	if (s->run_signal) {
		*sig = s->run_signal;
		*code = 128 + *sig;
	} else {
		*code = (int)s->run_status;
		*sig = *code > 128 && *code <= 128 + 64 ? *code - 128 : 0;
	}
	if (!*started)
		runc_error(s, log_from, error, errlen);
}

/* Sleep ms, or less if a stop marker or a signal says to end. */
static void backoff_sleep(struct shim *s, int64_t ms)
{
	for (int64_t slept = 0; slept < ms && !terminate && !file_exists(s, "stop");
	     slept += SLEEP_SLICE_MS) {
		struct timespec ts = {0, SLEEP_SLICE_MS * 1000000L};

		nanosleep(&ts, NULL);
	}
}

static bool restart_wanted(const struct shim *s, int code)
{
	if (strcmp(s->restart, "always") == 0)
		return true;
	return strcmp(s->restart, "on-failure") == 0 && code != 0;
}

static int console_open(struct shim *s)
{
	_cleanup_free_ char *path = path_in(s, "console.log");

	return logfile_open(&s->log, path, s->log_max_bytes, s->log_files);
}

/*
 * Main of `kumo-agentd --shim DIR`. Returns the process's exit status: 0 once the
 * container ended for good, 1 when it could not be set up (the reason is in
 * DIR/exit.json and on stderr, which the agent points at DIR/shim.log).
 */
int shim_main(const char *dir)
{
	struct shim *s = &shim;
	_cleanup_free_ char *pidpath = NULL;
	struct sigaction sa = {.sa_handler = signal_cb};
	char pidtext[32], error[512];
	int backoff = 1, restarts, code = 0, sig = 0;
	bool started;
	int64_t started_at, began;
	struct kerr err;

	/* Nothing of the agent's (sockets, pipes) may stay open in a long-lived process. */
	if (close_range(3, ~0U, 0) < 0)
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
	log_init("kumo-shim", LOG_LEVEL_INFO);
	log_trace("shim %s: main", dir);
	if (chdir("/") < 0 || dir[0] != '/') {
		log_warnx("shim: %s must be an absolute directory", dir);
		return 1;
	}
	snprintf(s->dir, sizeof(s->dir), "%s", dir);
	s->log.fd = s->oom_fd = s->oom_ctl = -1;
	if (uv_loop_init(&s->loop) < 0) {
		log_warnx("shim: cannot make a loop");
		return 1;
	}
	uv_async_init(&s->loop, &s->wake, wake_cb);
	uv_timer_init(&s->loop, &s->watch);
	s->wake.data = s->watch.data = s;
	/* The loop runs while runc run does: wake alone does not keep it running. */
	uv_unref((uv_handle_t *)&s->wake);
	uv_unref((uv_handle_t *)&s->watch);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (config_load(s, &err) < 0) {
		log_warnx("shim: %s", err.msg);
		exit_write(s, 1, 0, false, 0, err.msg);
		return 1;
	}
	pidpath = path_in(s, "shim.pid");
	snprintf(pidtext, sizeof(pidtext), "%d\n", (int)getpid());
	/* A pid means nothing after a reboot (pid_is_shim checks it anyway): no fsync. */
	if (file_write_replace(pidpath, pidtext, strlen(pidtext), 0600) < 0)
		log_warn("shim %s: cannot write %s", s->name, pidpath);
	if (console_open(s) < 0) {
		snprintf(error, sizeof(error), "cannot open %s/console.log: %s", s->dir,
			 strerror(errno));
		log_warnx("shim %s: %s", s->name, error);
		exit_write(s, 1, 0, false, 0, error);
		unlink(pidpath);
		return 1;
	}
	if (rootfs_mount(s, &err) < 0) {
		log_warnx("shim %s: %s", s->name, err.msg);
		exit_write(s, 1, 0, false, 0, err.msg);
		unlink(pidpath);
		return 1;
	}
	log_info("shim %s: pid %d, restart policy %s", s->name, (int)getpid(), s->restart);
	log_trace("shim %s: overlay mounted", s->name);
	restarts = restarts_read(s);
	while (!terminate && !file_exists(s, "stop")) {
		began = now_ms();
		run_once(s, &code, &sig, &started, &started_at, error, sizeof(error));
		exit_write(s, code, sig, started, started_at, error);
		log_info("shim %s: the container %s (exit code %d%s%s)", s->name,
			 started ? "ended" : "did not start", code, s->oom ? ", out of memory" : "",
			 error[0] ? error : "");
		if (!started || terminate || file_exists(s, "stop") || !restart_wanted(s, code))
			break;
		if (now_ms() - began >= BACKOFF_RESET_MS)
			backoff = 1;
		restarts_write(s, ++restarts);
		log_info("shim %s: restart %d in %d s", s->name, restarts, backoff);
		backoff_sleep(s, (int64_t)backoff * 1000);
		backoff = backoff * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : backoff * 2;
	}
	stale_delete(s);
	rootfs_umount(s);
	logfile_close(&s->log);
	free(s->lower);
	unlink(pidpath);
	uv_close((uv_handle_t *)&s->wake, NULL);
	uv_close((uv_handle_t *)&s->watch, NULL);
	uv_run(&s->loop, UV_RUN_DEFAULT);
	uv_loop_close(&s->loop);
	log_info("shim %s: done", s->name);
	return 0;
}
