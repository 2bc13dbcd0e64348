/*
 * proc.c - a child started with posix_spawn(3) and watched through its pidfd
 * (proc.h says why not uv_spawn()).
 *
 * The pidfd (pidfd_open(2), Linux 5.3) is a handle to this child alone: libuv's own
 * SIGCHLD handler reaps only the children of its uv_process_t handles, so nothing
 * else reaps this one and its pid cannot be reused while the pidfd is watched.
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

extern char **environ;

/*
 * The program file names, looked up as uv_spawn() did when given an environment:
 * libuv 1.44 sets environ to it in the child before execvp(), so the child's PATH
 * (or, without one, execvp's "/bin:/usr/bin") is searched, not ours as posix_spawnp()
 * would. Sets *found (the caller's to free) to the first regular executable file, or
 * to NULL when file is to be run as it is (a path, or no environment given). Returns
 * 0, or -ENOENT when no directory holds it.
 */
static int env_path_find(const char *file, char *const *env, char **found)
{
	const char *path = "/bin:/usr/bin";

	*found = NULL;
	if (env == NULL || strchr(file, '/'))
		return 0;
	for (char *const *e = env; *e; e++)
		if (!strncmp(*e, "PATH=", 5))
			path = *e + 5;
	for (const char *dir = path;; dir++) {
		size_t len = strcspn(dir, ":");
		char *candidate = xasprintf("%.*s%s%s", (int)len, dir, len ? "/" : "", file);
		struct stat st;

		/* An empty element is the current directory, as for execvp(). */
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
	pid_t pid = -1;
	int ret;

	if ((opts->flags & ~(unsigned)UV_PROCESS_DETACHED) || opts->stdio_count > 3)
		return -EINVAL;
	for (int i = 0; i < opts->stdio_count; i++)
		if (opts->stdio[i].flags != UV_IGNORE && opts->stdio[i].flags != UV_INHERIT_FD)
			return -EINVAL;
	ret = env_path_find(opts->file, opts->env, &found);
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
	ret = 0;
	for (int i = 0; i < 3 && ret == 0; i++) {
		if (i >= opts->stdio_count || opts->stdio[i].flags == UV_IGNORE)
			ret = posix_spawn_file_actions_addopen(&fa, i, "/dev/null",
							       i ? O_WRONLY : O_RDONLY, 0);
		else
			ret = posix_spawn_file_actions_adddup2(&fa, opts->stdio[i].data.fd, i);
	}
	if (ret == 0 && opts->cwd)
		ret = posix_spawn_file_actions_addchdir_np(&fa, opts->cwd);
	if (ret == 0)
		ret = posix_spawnp(&pid, found ? found : opts->file, &fa, &attr, opts->args,
				   opts->env ? opts->env : environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	return ret ? -ret : pid;
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
		if (info.si_pid == 0)
			return; /* not ended: a wake-up without news */
		if (info.si_code == CLD_EXITED)
			code = info.si_status;
		else
			sig = info.si_status;
	} else if (errno == EINTR) {
		return; /* the pidfd is still readable: polled again */
	} else {
		code = -1; /* reaped by someone else (ECHILD): it ended, how is unknown */
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
	w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (w->pidfd < 0)
		return -errno;
	ret = uv_poll_init(loop, &w->poll, w->pidfd);
	if (ret < 0) {
		close(w->pidfd);
		return ret;
	}
	w->poll.data = w;
	/* On Linux it only fails for a handle already closing. */
	if (uv_poll_start(&w->poll, UV_READABLE, watch_cb) < 0)
		fatalx("proc: cannot watch the pidfd of child %d", (int)pid);
	return 0;
}

static void watch_closed_cb(uv_handle_t *handle)
{
	struct proc_watch *w = handle->data;

	close(w->pidfd);
	if (w->close_cb)
		w->close_cb(w);
}

void proc_watch_close(struct proc_watch *w, void (*close_cb)(struct proc_watch *w))
{
	w->close_cb = close_cb;
	uv_close((uv_handle_t *)&w->poll, watch_closed_cb);
}
