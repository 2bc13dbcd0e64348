/*
 * child.c - the one child-process runner (child.h): posix_spawn (common/proc.c) with
 * pipes for stdin, stdout and stderr, the exit heard through a pidfd, output caps, a
 * deadline, cancel, and the kill of a whole process tree. Every handle lives in
 * struct child and the struct goes when the last one closed, right after done() was
 * called.
 *
 * Why not uv_spawn(): libuv 1.44's forks the daemon (proc.h: 3-10 ms per spawn in an
 * agent with its threads and heap, against well under 1 ms for posix_spawn), and the
 * daemons run a helper per ip, nft, qemu-img or runc step. Only a child to run as
 * another user (set_ids) still goes through uv_spawn(): posix_spawn cannot setgroups,
 * setgid and setuid in the child, and that case is rare enough to pay the fork.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "proc.h"
#include "util.h"

#define CHILD_ERR_DEFAULT 1024
#define CHILD_DRAIN_MS	  200 /* output read after the exit, at most */

struct child {
	struct proc_watch watch; /* posix_spawn's child: its pidfd */
	uv_process_t proc;	 /* set_ids only: uv_spawn's child */
	bool forked;		 /* proc is used (and initialised), not watch */
	bool watched;		 /* watch was started (and must close) */
	pid_t pid;
	uv_pipe_t in, out, err;
	uv_timer_t timer; /* the deadline, then the drain grace */
	uv_write_t write;
	int open_handles;
	bool spawned, exited;
	struct child_result r;
	size_t out_max, err_max;
	char *outbuf;
	size_t outlen;
	char *errbuf; /* err_max + 1 */
	size_t errlen;
	char *inbuf;
	char *prog;
	char *pid_file;
	child_output_cb on_output;
	child_done_cb done;
	void *data;
};

static pid_t pid_file_read(const char *path)
{
	_cleanup_free_ char *text = NULL;

	if (file_read_all(path, 64, &text, NULL) < 0)
		return 0;
	return (pid_t)atoi(text);
}

/*
 * SIGKILL root and every descendant of it, found in /proc. Root is stopped first so
 * it starts no new children while the tree is walked. Reading /proc is quick: it is
 * kernel memory, not a disk.
 */
void child_tree_kill(pid_t root)
{
	struct {
		pid_t pid, ppid;
	} *procs = NULL;
	size_t n = 0, cap = 0, ntodo = 0;
	pid_t *todo;
	struct dirent *e;
	DIR *d;

	if (root <= 0)
		return;
	kill(root, SIGSTOP);
	d = opendir("/proc");
	while (d && (e = readdir(d))) {
		_cleanup_free_ char *path = NULL, *text = NULL;
		const char *paren;
		pid_t pid = (pid_t)atoi(e->d_name);

		if (pid <= 0)
			continue;
		path = xasprintf("/proc/%d/stat", (int)pid);
		if (file_read_all(path, 4096, &text, NULL) < 0 ||
		    (paren = strrchr(text, ')')) == NULL || strlen(paren) < 5)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			procs = xrealloc(procs, cap * sizeof(*procs));
		}
		procs[n].pid = pid;
		procs[n++].ppid = (pid_t)atoi(paren + 4); /* ") S PPID" */
	}
	if (d)
		closedir(d);
	todo = xcalloc(n + 1, sizeof(*todo));
	todo[ntodo++] = root;
	for (size_t i = 0; i < ntodo; i++) {
		for (size_t k = 0; k < n; k++) {
			if (procs[k].ppid != todo[i])
				continue;
			kill(procs[k].pid, SIGKILL);
			if (ntodo <= n)
				todo[ntodo++] = procs[k].pid;
		}
	}
	kill(root, SIGKILL);
	free(todo);
	free(procs);
}

/* Whether pid's environment holds the entry marker (a zombie's reads empty). */
static bool env_marked(pid_t pid, const char *marker)
{
	_cleanup_free_ char *path = xasprintf("/proc/%d/environ", (int)pid), *env = NULL;
	size_t len = 0;

	/* 1 MiB: more than any environment execve() takes with its default limits. */
	if (file_read_all(path, 1 << 20, &env, &len) < 0)
		return false;
	for (size_t at = 0; at < len; at += strlen(env + at) + 1)
		if (!strcmp(env + at, marker))
			return true;
	return false;
}

int child_marked_kill(const char *marker, void (*found)(pid_t pid, void *data), void *data)
{
	pid_t *seen = NULL; /* the ones killed: counted once, though a busy host may show one
			     * again before it is a zombie */
	size_t nseen = 0;
	int killed = 0;

	/* A marked process may fork between the scan and its kill (a child that is not
	 * listed yet): scan again until a scan finds none not seen before. Each is stopped
	 * before it is killed so it starts nothing more; a killed one reads empty once it
	 * is a zombie. */
	for (int round = 0; round < 10; round++) {
		int nfound = 0;
		struct dirent *e;
		DIR *d = opendir("/proc");

		while (d && (e = readdir(d))) {
			pid_t pid = (pid_t)atoi(e->d_name);
			bool again = false;

			if (pid <= 0 || pid == getpid() || !env_marked(pid, marker))
				continue;
			for (size_t i = 0; i < nseen && !again; i++)
				again = seen[i] == pid;
			kill(pid, SIGSTOP);
			/* Stopped, not yet killed: its /proc entries are whole for found(). */
			if (!again && found)
				found(pid, data);
			kill(pid, SIGKILL);
			if (again)
				continue;
			seen = xrealloc(seen, (nseen + 1) * sizeof(*seen));
			seen[nseen++] = pid;
			nfound++;
		}
		if (d)
			closedir(d);
		killed += nfound;
		if (nfound == 0)
			break;
		usleep(10 * 1000); /* the killed ones become zombies */
	}
	free(seen);
	return killed;
}

static void handle_closed(struct child *c)
{
	if (--c->open_handles > 0)
		return;
	if (c->spawned) {
		c->r.out = c->outbuf ? c->outbuf : "";
		c->r.out_len = c->outlen;
		c->errbuf[c->errlen] = '\0';
		c->r.err = c->errbuf;
		c->r.prog = c->prog;
		if (c->pid_file)
			unlink(c->pid_file);
		c->done(&c->r, c->data);
	}
	free(c->outbuf);
	free(c->errbuf);
	free(c->inbuf);
	free(c->prog);
	free(c->pid_file);
	free(c);
}

static void close_cb(uv_handle_t *handle)
{
	handle_closed(handle->data);
}

static void watch_closed_cb(struct proc_watch *w)
{
	handle_closed(w->data);
}

static void close_one(struct child *c, void *handle)
{
	if (!uv_is_closing(handle))
		uv_close(handle, close_cb);
}

/* The process handle: uv_spawn's, or the pidfd's watch once it started. */
static void close_process(struct child *c)
{
	if (c->forked)
		close_one(c, &c->proc);
	else if (c->watched && !uv_is_closing((uv_handle_t *)&c->watch.poll))
		proc_watch_close(&c->watch, watch_closed_cb);
}

static void close_all(struct child *c)
{
	close_process(c);
	close_one(c, &c->in);
	close_one(c, &c->out);
	close_one(c, &c->err);
	close_one(c, &c->timer);
}

/* The child and what it started, and the process of its pid file. */
static void kill_all(struct child *c)
{
	if (c->exited)
		return;
	if (c->pid_file)
		child_tree_kill(pid_file_read(c->pid_file));
	child_tree_kill(c->pid);
}

/* Once it exited and both pipes reached their end, the result is complete. */
static void finish_maybe(struct child *c)
{
	if (c->exited && uv_is_closing((uv_handle_t *)&c->out) &&
	    uv_is_closing((uv_handle_t *)&c->err))
		close_all(c);
}

static void timer_cb(uv_timer_t *timer)
{
	struct child *c = timer->data;

	if (c->exited) {
		/* The drain grace is over. */
		close_all(c);
		return;
	}
	c->r.timed_out = true;
	kill_all(c);
}

static void exited(struct child *c, int64_t status, int term_signal)
{
	c->exited = true;
	c->r.status = status;
	c->r.signal = term_signal;
	close_process(c);
	uv_timer_start(&c->timer, timer_cb, CHILD_DRAIN_MS, 0);
	finish_maybe(c);
}

static void watch_exit_cb(struct proc_watch *w, int64_t status, int term_signal)
{
	exited(w->data, status, term_signal);
}

static void forked_exit_cb(uv_process_t *proc, int64_t status, int term_signal)
{
	exited(proc->data, status, term_signal);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	buf->base = xmalloc(suggested);
	buf->len = suggested;
}

static void keep_out(struct child *c, const char *buf, size_t n)
{
	size_t keep;

	if (c->out_max == 0)
		return; /* streamed to on_output only */
	keep = c->outlen + n > c->out_max ? c->out_max - c->outlen : n;
	if (keep < n)
		c->r.truncated = true;
	if (keep == 0)
		return;
	c->outbuf = xrealloc(c->outbuf, c->outlen + keep + 1);
	memcpy(c->outbuf + c->outlen, buf, keep);
	c->outlen += keep;
	c->outbuf[c->outlen] = '\0';
}

/* Keep the last err_max bytes. */
static void keep_err(struct child *c, const char *buf, size_t n)
{
	if (n >= c->err_max) {
		memcpy(c->errbuf, buf + n - c->err_max, c->err_max);
		c->errlen = c->err_max;
		return;
	}
	if (c->errlen + n > c->err_max) {
		size_t drop = c->errlen + n - c->err_max;

		memmove(c->errbuf, c->errbuf + drop, c->errlen - drop);
		c->errlen -= drop;
	}
	memcpy(c->errbuf + c->errlen, buf, n);
	c->errlen += n;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct child *c = stream->data;

	if (nread > 0 && stream == (uv_stream_t *)&c->out) {
		if (c->on_output)
			c->on_output(buf->base, (size_t)nread, c->data);
		keep_out(c, buf->base, (size_t)nread);
	} else if (nread > 0) {
		keep_err(c, buf->base, (size_t)nread);
	} else if (nread < 0) {
		close_one(c, stream);
		finish_maybe(c);
	}
	free(buf->base);
}

static void write_cb(uv_write_t *req, int status)
{
	struct child *c = req->data;

	/* Written, or it exited without reading (EPIPE): either way its stdin ends. */
	close_one(c, &c->in);
}

/*
 * A pipe for one of the child's stdio: both ends close-on-exec (the child's end is
 * dup2'd onto its stdio, which clears the flag there) and neither among 0-2, where the
 * dup2 of another of its stdio would overwrite it (a daemon started with one closed).
 * Returns 0, or a negative errno (nothing open then).
 */
static int pipe_make(int fds[2])
{
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	for (int i = 0; i < 2; i++) {
		int fd;

		if (fds[i] >= 3)
			continue;
		fd = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
		if (fd < 0) {
			int ret = -errno;

			close(fds[0]);
			close(fds[1]);
			fds[0] = fds[1] = -1;
			return ret;
		}
		close(fds[i]);
		fds[i] = fd;
	}
	return 0;
}

static void fd_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Our end fd of a pipe into pipe (non-blocking from here), or pipe closed unused. */
static bool pipe_take(struct child *c, uv_pipe_t *pipe, int fd)
{
	if (fd >= 0 && uv_pipe_open(pipe, fd) == 0)
		return true;
	if (fd >= 0)
		close(fd);
	close_one(c, pipe);
	return false;
}

/* Start the child opts describes (set_ids: by uv_spawn, or else by posix_spawn, its
 * pidfd watched) and set c->pid. Returns 0 or a negative errno (nothing runs then). */
static int spawn(uv_loop_t *loop, struct child *c, const struct child_opts *o,
		 uv_process_options_t *opts)
{
	int ret;

	if (o->set_ids) {
		/* Dropping to another user needs root (CAP_SETUID, CAP_SETGID), and a
		 * fork: posix_spawn cannot change ids, libuv's child does. */
		opts->flags |= UV_PROCESS_SETUID | UV_PROCESS_SETGID;
		opts->uid = o->uid;
		opts->gid = o->gid;
		opts->exit_cb = forked_exit_cb;
		/* The handle is initialised even when the spawn fails: it must close. */
		c->forked = true;
		c->open_handles++;
		ret = uv_spawn(loop, &c->proc, opts);
		c->pid = ret < 0 ? 0 : c->proc.pid;
		return ret;
	}
	c->pid = proc_spawn(opts);
	if (c->pid < 0) {
		ret = c->pid;
		c->pid = 0;
		return ret;
	}
	c->watch.data = c;
	ret = proc_watch_start(loop, &c->watch, c->pid, watch_exit_cb);
	if (ret < 0) {
		/* Unwatched, nothing would reap it or hear its end: it goes now. */
		child_tree_kill(c->pid);
		waitpid(c->pid, NULL, 0);
		c->pid = 0;
		return ret;
	}
	c->watched = true;
	c->open_handles++;
	return 0;
}

struct child *child_run(uv_loop_t *loop, const struct child_opts *o, child_done_cb done, void *data,
			struct kerr *err)
{
	struct child *c = xcalloc(1, sizeof(*c));
	uv_process_options_t opts = {0};
	uv_stdio_container_t stdio[3];
	/* Each pipe's [0] reads and [1] writes: the child's end goes to its stdio, ours
	 * to a uv_pipe_t. One pipe for stdout and stderr merged keeps their order. */
	int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1};
	bool merge = o->err_mode == CHILD_ERR_MERGE;
	int ret = 0;

	c->done = done;
	c->data = data;
	c->out_max = o->out_max;
	if (merge && !o->out_max && !o->on_output)
		c->out_max = 65536;
	c->err_max = o->err_max ? o->err_max : CHILD_ERR_DEFAULT;
	c->errbuf = xmalloc(c->err_max + 1);
	c->prog = xstrdup(o->argv[0]);
	c->pid_file = o->pid_file ? xstrdup(o->pid_file) : NULL;
	c->on_output = o->on_output;
	uv_pipe_init(loop, &c->in, 0);
	uv_pipe_init(loop, &c->out, 0);
	uv_pipe_init(loop, &c->err, 0);
	uv_timer_init(loop, &c->timer);
	c->proc.data = c->in.data = c->out.data = c->err.data = c->timer.data = c;
	c->write.data = c;
	c->open_handles = 4; /* and the process's, once spawn() made it */

	if (o->in)
		ret = pipe_make(in);
	if (ret == 0 && (o->out_max || o->on_output || merge))
		ret = pipe_make(out);
	if (ret == 0 && o->err_mode == CHILD_ERR_CAPTURE)
		ret = pipe_make(errp);
	for (int i = 0; i < 3; i++)
		stdio[i].flags = UV_IGNORE; /* /dev/null */
	if (in[0] >= 0) {
		stdio[0].flags = UV_INHERIT_FD;
		stdio[0].data.fd = in[0];
	}
	if (out[1] >= 0) {
		stdio[1].flags = UV_INHERIT_FD;
		stdio[1].data.fd = out[1];
	}
	/* Inherited only when ours is open (a daemon may run with fd 2 closed). */
	if (errp[1] >= 0 || (o->err_mode == CHILD_ERR_INHERIT && fcntl(2, F_GETFD) >= 0) ||
	    (merge && out[1] >= 0)) {
		stdio[2].flags = UV_INHERIT_FD;
		stdio[2].data.fd = errp[1] >= 0 ? errp[1] : merge ? out[1] : 2;
	}
	opts.file = o->file ? o->file : o->argv[0];
	opts.args = (char **)o->argv;
	opts.env = (char **)o->env;
	opts.cwd = o->cwd;
	opts.stdio = stdio;
	opts.stdio_count = 3;
	if (ret == 0)
		ret = spawn(loop, c, o, &opts);
	/* The child's ends are its own now. */
	fd_close(&in[0]);
	fd_close(&out[1]);
	fd_close(&errp[1]);
	if (ret < 0) {
		/* spawned is false: done() is not called. */
		fd_close(&in[1]);
		fd_close(&out[0]);
		fd_close(&errp[0]);
		close_all(c);
		err_set(err, -ret, "cannot run %s", o->argv[0]);
		return NULL;
	}
	c->spawned = true;
	if (pipe_take(c, &c->out, out[0]))
		uv_read_start((uv_stream_t *)&c->out, alloc_cb, read_cb);
	if (pipe_take(c, &c->err, errp[0]))
		uv_read_start((uv_stream_t *)&c->err, alloc_cb, read_cb);
	if (pipe_take(c, &c->in, in[1])) {
		uv_buf_t buf;

		c->inbuf = xmalloc(o->in_len ? o->in_len : 1);
		memcpy(c->inbuf, o->in, o->in_len);
		buf = uv_buf_init(c->inbuf, (unsigned)o->in_len);
		if (uv_write(&c->write, (uv_stream_t *)&c->in, &buf, 1, write_cb) < 0)
			close_one(c, &c->in);
	}
	if (o->timeout_ms)
		uv_timer_start(&c->timer, timer_cb, o->timeout_ms, 0);
	return c;
}

pid_t child_pid(const struct child *c)
{
	return c->exited ? 0 : c->pid;
}

void child_cancel(struct child *c)
{
	if (c->exited || c->r.cancelled)
		return;
	c->r.cancelled = true;
	kill_all(c);
}

void child_abandon(struct child *c, bool kill)
{
	if (kill)
		kill_all(c);
	c->r.abandoned = true;
	close_all(c);
}

bool child_result_ok(const struct child_result *r)
{
	return r->status == 0 && r->signal == 0 && !r->timed_out && !r->cancelled && !r->abandoned;
}

void child_result_why(const struct child_result *r, char *buf, size_t len)
{
	_cleanup_free_ char *tail = xstrdup(r->err ? r->err : "");
	char *end = tail + strlen(tail), *line;

	if (r->abandoned) {
		snprintf(buf, len, "%s was abandoned: the daemon is stopping", r->prog);
		return;
	}
	if (r->cancelled) {
		snprintf(buf, len, "%s was cancelled", r->prog);
		return;
	}
	if (r->timed_out) {
		snprintf(buf, len, "%s did not finish in time", r->prog);
		return;
	}
	while (end > tail && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
		*--end = '\0';
	line = strrchr(tail, '\n');
	line = line ? line + 1 : tail;
	if (*line)
		snprintf(buf, len, "%s", line);
	else if (r->signal)
		snprintf(buf, len, "%s was killed by signal %d", r->prog, r->signal);
	else if (r->status)
		snprintf(buf, len, "%s exited with status %lld", r->prog, (long long)r->status);
	else
		snprintf(buf, len, "%s succeeded", r->prog);
}

struct wait_result {
	int ret;
	char *out;
	struct kerr *err;
};

static void wait_done_cb(const struct child_result *r, void *data)
{
	struct wait_result *w = data;
	char why[200];

	w->out = xstrdup(r->out);
	if (r->signal || r->timed_out || r->cancelled || r->abandoned) {
		child_result_why(r, why, sizeof(why));
		w->ret = err_set(w->err, 0, "%s", why);
	} else {
		w->ret = (int)r->status;
	}
}

/* A child_run_sync in progress: the caller's done and on_output (both given the
 * caller's data, not this), and opts->cancelled's poll. */
struct sync_run {
	child_done_cb done;
	child_output_cb on_output;
	void *data;
	struct child *c; /* NULL once done came */
	bool (*cancelled)(void *data);
	void *cancel_data;
	uv_timer_t poll;
};

static void sync_poll_cb(uv_timer_t *timer)
{
	struct sync_run *s = timer->data;

	if (s->c && s->cancelled(s->cancel_data)) {
		child_cancel(s->c);
		uv_timer_stop(timer);
	}
}

static void sync_output_cb(const char *buf, size_t len, void *data)
{
	struct sync_run *s = data;

	s->on_output(buf, len, s->data);
}

static void sync_done_cb(const struct child_result *r, void *data)
{
	struct sync_run *s = data;

	s->c = NULL;
	if (s->cancelled)
		uv_close((uv_handle_t *)&s->poll, NULL); /* uv_run returns once it closed */
	s->done(r, s->data);
}

int child_run_sync(const struct child_opts *opts, child_done_cb done, void *data,
		   struct child **handle, struct kerr *err)
{
	struct sync_run s = {.done = done,
			     .on_output = opts->on_output,
			     .data = data,
			     .cancelled = opts->cancelled,
			     .cancel_data = opts->cancel_data};
	struct child_opts o = *opts;
	struct child *c;
	uv_loop_t loop;

	/* A loop of this thread's own: each child is reaped through its own pidfd (or,
	 * set_ids, by libuv by its pid), so the daemon's loop and this one do not take
	 * each other's. */
	if (uv_loop_init(&loop) < 0)
		return err_set(err, 0, "cannot make a loop to run %s", opts->argv[0]);
	if (o.on_output)
		o.on_output = sync_output_cb;
	c = child_run(&loop, &o, sync_done_cb, &s, err);
	if (c && handle)
		*handle = c;
	if (c && s.cancelled) {
		s.c = c;
		uv_timer_init(&loop, &s.poll);
		s.poll.data = &s;
		uv_timer_start(&s.poll, sync_poll_cb, CHILD_CANCEL_POLL_MS, CHILD_CANCEL_POLL_MS);
	}
	/* Also when it could not start: the runner's handles close on this loop. */
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	return c ? 0 : -1;
}

int child_run_wait(const struct child_opts *opts, char **out, struct kerr *err)
{
	struct wait_result w = {.ret = -1, .err = err};

	child_run_sync(opts, wait_done_cb, &w, NULL, err);
	if (out)
		*out = w.out;
	else
		free(w.out);
	return w.ret;
}
