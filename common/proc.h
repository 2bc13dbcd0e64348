/*
 * proc.h - start a long-lived child (QEMU, a container's shim) without fork(), and
 * hear when it ends through a pidfd on the loop.
 *
 * uv_spawn() (libuv 1.44, Debian 12's) forks: the kernel copies the daemon's page
 * tables and write-protects its memory, and the parent waits for the child's exec.
 * In an agent with its threads and heap that took 3-10 ms per spawn on these
 * machines. posix_spawn(3) runs the child in the parent's memory until its exec
 * (glibc: clone(CLONE_VM | CLONE_VFORK)): 0.5-1 ms. A QEMU's start, and with it a
 * migration's target, waits for that.
 *
 * proc_spawn() takes a libuv option set so a caller can move from uv_spawn() as it
 * is: file (looked up in PATH: env's when env is given, as uv_spawn() did), args, env
 * (NULL: ours), cwd, stdio (UV_IGNORE or UV_INHERIT_FD only, at most PROC_STDIO_MAX:
 * slot i of the child gets the fd given for it; 0-2 not given are /dev/null, a slot
 * above 2 not given stays closed), flags
 * (UV_PROCESS_DETACHED only: a session of its own). The child starts with no signal
 * blocked and every signal at its default. exit_cb is not used: proc_watch_start()
 * watches the child.
 */
#ifndef KUMO_PROC_H
#define KUMO_PROC_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#define PROC_STDIO_MAX 8

/* Start the program opts describes. Returns its pid, or a negative errno (nothing
 * runs then; -EINVAL for an option it does not take). */
pid_t proc_spawn(const uv_process_options_t *opts);

struct proc_watch;
typedef void (*proc_exit_cb)(struct proc_watch *w, int64_t status, int term_signal);

/* A child of ours, watched on the loop: exit_cb once it ended (it is reaped then). */
struct proc_watch {
	uv_poll_t poll;	  /* its pidfd: readable once the child ended */
	uv_timer_t retry; /* ended but not yet waitable (traced): look again */
	int open;	  /* handles not yet closed */
	pid_t pid;
	int pidfd;
	proc_exit_cb exit_cb;
	void (*close_cb)(struct proc_watch *w);
	void *data; /* the caller's */
};

/*
 * Watch child pid (ours, not yet reaped) on loop: exit_cb(w, status, signal) once it
 * ended, with its exit status (signal 0) or the signal that ended it. Returns 0, or a
 * negative errno: nothing watches it then (the caller still owns the child).
 */
int proc_watch_start(uv_loop_t *loop, struct proc_watch *w, pid_t pid, proc_exit_cb exit_cb);
/* Stop watching (the child runs on, and is no longer reaped by us); close_cb(w) once
 * the handle closed. Also after exit_cb, to release w. */
void proc_watch_close(struct proc_watch *w, void (*close_cb)(struct proc_watch *w));

#endif
