/*
 * child.h - the one child-process runner: run a helper program (qemu-img, runc, the
 * kvm probe, skopeo) from a daemon's loop and hear how it ended, without blocking.
 *
 * child_run() spawns opts->argv (argv[0] looked up in PATH, opts->env's when given,
 * unless opts->file is set) with the environment, working directory, user and group
 * asked for (by posix_spawn, without a fork of the daemon: child.c says why; only a
 * change of user or group forks), its stdio pipes or /dev/null, feeds it
 * opts->in (or /dev/null), keeps the first out_max bytes of its stdout (the rest is
 * dropped and r->truncated set) and the last err_max bytes of its stderr (the reason
 * for a failure is printed last), and kills it and every descendant after timeout_ms.
 * done(r, data) is called once on the loop: after the exit, when the output is read
 * (or a short grace after the exit passed: a process it left in the background may
 * hold the pipes open for ever). child_cancel() kills it early (r->cancelled);
 * child_abandon() stops watching it (the daemon is stopping: r->abandoned).
 * The program is a binary or a script with a #! line: posix_spawn does not retry
 * one without it through /bin/sh as execvp() did.
 *
 * The struct child belongs to the runner: it is valid from child_run() until done()
 * returns, and freed right after.
 */
#ifndef KUMO_CHILD_H
#define KUMO_CHILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "err.h"

/* Where the child's stderr goes. */
enum child_err {
	CHILD_ERR_CAPTURE, /* its last err_max bytes are kept for r->err */
	CHILD_ERR_MERGE,   /* into the stdout pipe, in order (an exec's output) */
	CHILD_ERR_INHERIT, /* to ours: the daemon's log */
	CHILD_ERR_IGNORE,  /* /dev/null */
};

struct child_result {
	int64_t status;	  /* exit status, when signal is 0 */
	int signal;	  /* the signal that ended it, 0 if it exited */
	bool timed_out;	  /* killed at timeout_ms */
	bool cancelled;	  /* killed by child_cancel() */
	bool abandoned;	  /* child_abandon(): nobody watches it any more */
	bool truncated;	  /* stdout was longer than out_max */
	const char *out;  /* stdout as kept, NUL-terminated ("" if none) */
	size_t out_len;	  /* its length */
	const char *err;  /* stderr's tail, NUL-terminated ("" if none) */
	const char *prog; /* argv[0], for messages */
};

struct child;
typedef void (*child_done_cb)(const struct child_result *r, void *data);
/* Each piece of stdout as it comes (progress lines), before it is kept. */
typedef void (*child_output_cb)(const char *buf, size_t len, void *data);

struct child_opts {
	const char *file;  /* the program; NULL: argv[0], looked up in PATH */
	char *const *argv; /* NULL-terminated */
	char *const *env;  /* NULL: ours */
	const char *cwd;   /* NULL: ours */
	bool set_ids;	   /* run as uid:gid (needs root; forks, by uv_spawn) */
	uid_t uid;
	gid_t gid;
	const char *in; /* written to its stdin, which is then closed; NULL: /dev/null */
	size_t in_len;
	size_t out_max; /* stdout kept; 0: none kept, and stdout goes to /dev/null
			 * unless on_output takes it (a log a keeper writes) */
	size_t err_max; /* stderr tail kept (CHILD_ERR_CAPTURE); 0: 1024 */
	enum child_err err_mode;
	unsigned timeout_ms;	   /* 0: none */
	const char *pid_file;	   /* a process it starts elsewhere (runc exec --pid-file):
				    * killed with its descendants too, and the file removed */
	child_output_cb on_output; /* optional: progress, or the whole stdout */
	/* child_run_sync and child_run_wait only: asked every CHILD_CANCEL_POLL_MS on the
	 * calling thread's loop (so it must be thread-safe); true kills the child and its
	 * descendants (r->cancelled): a pool thread's child stops with its work. */
	bool (*cancelled)(void *data);
	void *cancel_data;
};
#define CHILD_CANCEL_POLL_MS 100

/*
 * Spawn the child described by opts (copied: the caller's buffers may go after the
 * call) and watch it; done(r, data) comes once on a later turn of loop. Returns the
 * runner's handle, or NULL with err when it could not be started (done is not called).
 */
struct child *child_run(uv_loop_t *loop, const struct child_opts *opts, child_done_cb done,
			void *data, struct kerr *err);
/* The child's pid (0 once it was reaped). */
pid_t child_pid(const struct child *c);
/* Kill the child and its descendants now; done() follows with r->cancelled. */
void child_cancel(struct child *c);
/*
 * Stop watching: done() follows soon with r->abandoned. With kill, the child and its
 * descendants are killed first; without, it runs on (a qemu-img convert cut short
 * leaves a broken file, one left alone finishes it).
 */
void child_abandon(struct child *c, bool kill);
/* Whether r is a plain success: exit status 0, no signal, not cut short. */
bool child_result_ok(const struct child_result *r);
/*
 * Why r is not a success, in one sentence into buf: the child's last non-empty stderr
 * line if it printed one, else how it ended ("qemu-img was killed by signal 9").
 */
void child_result_why(const struct child_result *r, char *buf, size_t len);
/*
 * For a pool thread, or a process without a loop (it blocks): child_run() on a loop of
 * the calling thread's own, returning once done(r, data) returned. *handle (when not
 * NULL) is set before any callback comes, so done and opts->on_output may
 * child_cancel() it. Returns 0, or -1 with err when it could not start (done is not
 * called then).
 */
int child_run_sync(const struct child_opts *opts, child_done_cb done, void *data,
		   struct child **handle, struct kerr *err);
/*
 * For a pool thread only (it blocks): run opts on a loop of the calling thread's own
 * and wait. *out (if out is not NULL) gets its stdout, the caller's to free. Returns
 * its exit status (0 and up), or -1 with err when it could not start, was killed or
 * timed out (the reason from its stderr when it printed one).
 */
int child_run_wait(const struct child_opts *opts, char **out, struct kerr *err);
/* SIGKILL pid and every descendant of it (found in /proc), the tree frozen first. */
void child_tree_kill(pid_t pid);
/*
 * SIGKILL every process whose environment holds the entry marker ("NAME=value", the
 * whole entry), whoever its parent is now: the tree a daemon that died left behind
 * (its children were reparented, so child_tree_kill() no longer finds them from the
 * root), found again by an entry the daemon put in the root's environment and every
 * descendant inherited. found(pid, data), when not NULL, sees each one stopped, before
 * its kill (its /proc entries still readable). Reads /proc (needs root to see other
 * users' processes). Returns how many processes it killed.
 */
int child_marked_kill(const char *marker, void (*found)(pid_t pid, void *data), void *data);

#endif
