/*
 * work.h - the one wrapper around libuv's thread pool (uv_queue_work) for slow file
 * and disk work, so nothing blocks a daemon's loop.
 *
 * A struct work is embedded in the caller's job struct. run(w) runs on a pool thread
 * and touches nothing but the job; done(w) runs on the loop afterwards and owns the
 * job from then on (frees it). run reports failure through w->err and a negative
 * return kept in w->ret. A queued job that never ran (the loop is closing, or
 * work_cancel() came first) still gets done(), with w->ret < 0 and ECANCELED in
 * w->err. A long run checks work_cancelled(w) between its steps and stops early.
 */
#ifndef KUMO_WORK_H
#define KUMO_WORK_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#include "err.h"

struct work {
	uv_work_t req;
	void *owner;		      /* the caller's: the daemon's state for done() */
	int (*run)(struct work *w);   /* on a pool thread */
	void (*done)(struct work *w); /* on the loop, afterwards; owns the job */
	struct kerr err;	      /* why run failed */
	int ret;		      /* run's return */
	atomic_bool cancel;	      /* work_cancel() was called */
	struct work *lane_next;	      /* work_lane's queues */
};

/*
 * Queue w (run and done set; owner as the caller likes). The result of uv_queue_work
 * is checked: if libuv refuses, done() still follows, on this call, with w->ret < 0
 * and the reason in w->err, so a job can never be left waiting forever.
 */
void work_queue(uv_loop_t *loop, struct work *w);
/*
 * Ask w to stop: a job not started yet is dropped (done() gets ECANCELED), one running
 * sees work_cancelled() turn true at its next check.
 */
void work_cancel(struct work *w);
/* For run(): whether work_cancel() was called. */
bool work_cancelled(struct work *w);

/*
 * A thread of its own for short jobs that must not wait behind the pool's long ones (a
 * backup's disk read holds a pool thread for minutes; libuv has 4): the agent's small
 * durable files, a write and two fsyncs each. Jobs run one at a time in the order
 * queued; done() follows on the loop, in the same order. While a job is queued or runs
 * the lane keeps the loop alive, as a pool job does.
 */
struct work_lane;
struct work_lane *work_lane_new(uv_loop_t *loop);
/* Queue w on lane; w->run and w->done as for work_queue(). Not cancellable. */
void work_lane_queue(struct work_lane *lane, struct work *w);
/*
 * End lane: at once when no job is queued or running, else once the last one's done()
 * ran (which may queue more; they run first). Its thread exits, its memory goes once
 * the loop has closed its handle. No job may be queued once it has ended.
 */
void work_lane_close(struct work_lane *lane);

/*
 * A small file put in place at once and made durable off the loop: path gets text
 * (len bytes, mode) on the caller's thread without fsyncs (file_write_replace(): a
 * reader sees it whole at once, and it outlives this process), then its fsyncs (the
 * file and its directory, file_sync()) run on lane, and done(w) follows on the loop,
 * with w->ret < 0 and the reason in w->err when they failed. p is the caller's (w.done
 * and w.owner set) until done(). Returns 0, or -errno when the file could not be put:
 * nothing is queued then, and done() does not follow.
 */
struct work_put {
	struct work w; /* first: its done() is the caller's */
	char path[PATH_MAX];
};
int work_file_put(struct work_lane *lane, struct work_put *p, const char *path, const char *text,
		  size_t len, unsigned mode);

#endif
