/*
 * proc.c - a child started with posix_spawn(3) and watched through its pidfd
 * (proc.h says why not uv_spawn()).
 *
 * The pidfd (pidfd_open(2): Linux 5.3 or later, which Kumo needs) is a handle to this
 * child alone. libuv's own SIGCHLD handler reaps only the children of its uv_process_t
 * handles and nothing else here waits for any child, so this one is reaped by
 * watch_cb() alone (its pid cannot be reused before that). A child whose watch was
 * closed early is never reaped by us: it stays a zombie once it ends, until the
 * daemon exits, as a closed uv_process_t's did.
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* How long a child that ended but cannot be waited for yet (traced) waits to be seen. */
#define PROC_RETRY_MS 100

extern char **environ;

/*
 * The program file names, looked up as uv_spawn() did when given an environment:
 * libuv 1.44 sets environ to it in the child before execvp(), so the child's PATH
 * (or, without one, execvp's "/bin:/usr/bin") is searched, not ours as posix_spawnp()
 * would. Sets *found (the caller's to free) to the first regular executable file, or
 * to NULL when file is to be run as it is (a path, or no environment given). Returns
 * 0, or -ENOENT when no directory holds it.
 */
static int env_path_find(const char *file, char *const *env, const char *cwd, char **found)
{
	const char *path = "/bin:/usr/bin";

	*found = NULL;
	if (env == NULL || strchr(file, '/'))
		return 0;
	for (char *const *e = env; *e; e++)
		if (!strncmp(*e, "PATH=", 5)) {
			path = *e + 5; /* the first, as getenv() */
			break;
		}
	for (const char *dir = path;; dir++) {
		size_t len = strcspn(dir, ":");
		char *candidate;
		struct stat st;

		/* As execvp() after uv_spawn's chdir: an empty element is the child's
		 * directory, a relative one is under it. */
		if (len && dir[0] == '/')
			candidate = xasprintf("%.*s/%s", (int)len, dir, file);
		else
			candidate = xasprintf("%s/%.*s%s%s", cwd ? cwd : ".", (int)len, dir,
					      len ? "/" : "", file);
		if (stat(candidate, &st) == 0 && S_ISREG(st.st_mode) &&
		    access(candidate, X_OK) == 0) {
			*found = candidate;
			return 0;
		}
		free(candidate);
		dir += len;
		if (*dir == '\0')
			return -ENOENT;
	}
}

pid_t proc_spawn(const uv_process_options_t *opts)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	_cleanup_free_ char *found = NULL;
	sigset_t none, all;
	short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
	int fds[PROC_STDIO_MAX]; /* copies above the slots of inherited fds inside them */
	int n = opts->stdio_count;
	pid_t pid = -1;
	int ret;

	if ((opts->flags & ~(unsigned)UV_PROCESS_DETACHED) || n < 0 || n > PROC_STDIO_MAX)
		return -EINVAL;
	for (int i = 0; i < n; i++)
		if (opts->stdio[i].flags != UV_IGNORE && opts->stdio[i].flags != UV_INHERIT_FD)
			return -EINVAL;
	ret = env_path_find(opts->file, opts->env, opts->cwd, &found);
	if (ret < 0)
		return ret;
	if (opts->flags & UV_PROCESS_DETACHED)
		flags |= POSIX_SPAWN_SETSID;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setflags(&attr, flags);
	/* An fd to inherit that is itself one of the slots (a daemon started with stdin
	 * closed has its log at 0) would be overwritten by an earlier action: the child
	 * gets a copy above the slots instead. */
	ret = 0;
	for (int i = 0; i < PROC_STDIO_MAX; i++)
		fds[i] = -1;
	for (int i = 0; i < n && ret == 0; i++) {
		if (opts->stdio[i].flags == UV_INHERIT_FD && opts->stdio[i].data.fd < n) {
			fds[i] = fcntl(opts->stdio[i].data.fd, F_DUPFD_CLOEXEC, n);
			if (fds[i] < 0)
				ret = errno;
		}
	}
	/* 0-2 not given are /dev/null; a slot above 2 not given is closed (glibc takes
	 * a close of an fd that is not open as done). */
	for (int i = 0; i < (n > 3 ? n : 3) && ret == 0; i++) {
		if (i >= n || opts->stdio[i].flags == UV_IGNORE) {
			if (i < 3)
				ret = posix_spawn_file_actions_addopen(&fa, i, "/dev/null",
								       i ? O_WRONLY : O_RDONLY, 0);
			else
				ret = posix_spawn_file_actions_addclose(&fa, i);
		} else {
			ret = posix_spawn_file_actions_adddup2(
				&fa, fds[i] >= 0 ? fds[i] : opts->stdio[i].data.fd, i);
		}
	}
	if (ret == 0 && opts->cwd)
		ret = posix_spawn_file_actions_addchdir_np(&fa, opts->cwd);
	if (ret == 0)
		ret = posix_spawnp(&pid, found ? found : opts->file, &fa, &attr, opts->args,
				   opts->env ? opts->env : environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	for (int i = 0; i < PROC_STDIO_MAX; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return ret ? -ret : pid;
}

static void watch_cb(uv_poll_t *poll, int status, int events);

/* Ended, but not yet waitable: poll the pidfd again. */
static void retry_cb(uv_timer_t *timer)
{
	struct proc_watch *w = timer->data;

	if (uv_poll_start(&w->poll, UV_READABLE, watch_cb) < 0)
		fatalx("proc: cannot watch the pidfd of child %d", (int)w->pid);
}

static void watch_cb(uv_poll_t *poll, int status, int events)
{
	struct proc_watch *w = poll->data;
	siginfo_t info = {0};
	int64_t code = 0;
	int sig = 0;

	(void)status;
	(void)events;
	if (waitid(P_PID, w->pid, &info, WEXITED | WNOHANG) == 0) {
		if (info.si_pid == 0) {
			/* The pidfd says it ended, yet it cannot be waited for: a tracer
			 * (strace, gdb) holds it until it reaps it first. The poll is level-
			 * triggered: looked at again later, not in a spin. */
			uv_poll_stop(poll);
			uv_timer_start(&w->retry, retry_cb, PROC_RETRY_MS, 0);
			return;
		}
		if (info.si_code == CLD_EXITED)
			code = info.si_status;
		else
			sig = info.si_status;
	} else if (errno == EINTR) {
		return; /* the pidfd is still readable: polled again */
	} else {
		/* Reaped by someone else (ECHILD): it ended, how is unknown; the caller
		 * hears status -1. */
		code = -1;
	}
	uv_poll_stop(poll);
	w->exit_cb(w, code, sig);
}

int proc_watch_start(uv_loop_t *loop, struct proc_watch *w, pid_t pid, proc_exit_cb exit_cb)
{
	int ret;

	w->pid = pid;
	w->exit_cb = exit_cb;
	w->close_cb = NULL;
	w->open = 0;
	w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (w->pidfd < 0)
		return -errno;
	ret = uv_poll_init(loop, &w->poll, w->pidfd);
	if (ret < 0) {
		close(w->pidfd);
		return ret;
	}
	uv_timer_init(loop, &w->retry);
	w->poll.data = w->retry.data = w;
	w->open = 2;
	/* On Linux it only fails for a handle already closing. */
	if (uv_poll_start(&w->poll, UV_READABLE, watch_cb) < 0)
		fatalx("proc: cannot watch the pidfd of child %d", (int)pid);
	return 0;
}

static void watch_closed_cb(uv_handle_t *handle)
{
	struct proc_watch *w = handle->data;

	if (--w->open > 0)
		return;
	close(w->pidfd);
	if (w->close_cb)
		w->close_cb(w);
}

void proc_watch_close(struct proc_watch *w, void (*close_cb)(struct proc_watch *w))
{
	w->close_cb = close_cb;
	uv_close((uv_handle_t *)&w->poll, watch_closed_cb);
	uv_close((uv_handle_t *)&w->retry, watch_closed_cb);
}
