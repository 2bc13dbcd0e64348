/*
 * work.c - libuv's thread pool behind one checked wrapper (work.h).
 */
#include "work.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

static void work_cb(uv_work_t *req)
{
	struct work *w = req->data;

	if (atomic_load(&w->cancel)) {
		w->ret = err_set(&w->err, ECANCELED, "cancelled");
		return;
	}
	w->ret = w->run(w);
}

static void after_cb(uv_work_t *req, int status)
{
	struct work *w = req->data;

	/* The loop closing drops queued work: say so, as for a cancel. */
	if (status == UV_ECANCELED)
		w->ret = err_set(&w->err, ECANCELED, "cancelled: the daemon is stopping");
	w->done(w);
}

void work_queue(uv_loop_t *loop, struct work *w)
{
	int ret;

	w->req.data = w;
	w->ret = 0;
	atomic_init(&w->cancel, false);
	ret = uv_queue_work(loop, &w->req, work_cb, after_cb);
	if (ret < 0) {
		w->ret = err_set(&w->err, -ret, "cannot queue work: %s", uv_strerror(ret));
		w->done(w);
	}
}

void work_cancel(struct work *w)
{
	atomic_store(&w->cancel, true);
	uv_cancel((uv_req_t *)&w->req);
}

bool work_cancelled(struct work *w)
{
	return atomic_load(&w->cancel);
}

/* ---- a lane: one thread of its own ------------------------------------------------------ */

struct work_lane {
	uv_async_t async; /* the thread's "done" to the loop */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct work *todo, **todo_tail; /* queued, oldest first; the thread takes them */
	struct work *done, **done_tail; /* run, oldest first; the loop takes them */
	unsigned pending;		/* queued or running: the loop's, under no lock */
	bool closing;			/* work_lane_close(): ends once nothing is pending */
	bool stop;			/* the thread ends */
	bool ended;			/* lane_end() ran: the handle closes */
};

static void *lane_main(void *arg)
{
	struct work_lane *l = arg;

	for (;;) {
		struct work *w;

		pthread_mutex_lock(&l->lock);
		while (l->todo == NULL && !l->stop)
			pthread_cond_wait(&l->cond, &l->lock);
		if (l->todo == NULL) {
			pthread_mutex_unlock(&l->lock);
			return NULL;
		}
		w = l->todo;
		l->todo = w->lane_next;
		if (l->todo == NULL)
			l->todo_tail = &l->todo;
		pthread_mutex_unlock(&l->lock);

		w->ret = w->run(w);

		pthread_mutex_lock(&l->lock);
		w->lane_next = NULL;
		*l->done_tail = w;
		l->done_tail = &w->lane_next;
		pthread_mutex_unlock(&l->lock);
		uv_async_send(&l->async);
	}
	return NULL;
}

static void lane_end(struct work_lane *lane);

static void lane_async_cb(uv_async_t *a)
{
	struct work_lane *l = a->data;
	struct work *list;

	pthread_mutex_lock(&l->lock);
	list = l->done;
	l->done = NULL;
	l->done_tail = &l->done;
	pthread_mutex_unlock(&l->lock);
	while (list) {
		struct work *w = list;

		list = w->lane_next;
		if (--l->pending == 0)
			uv_unref((uv_handle_t *)&l->async);
		w->done(w); /* may queue more: pending counts it first */
	}
	/* A done() may have closed the lane already. */
	if (l->closing && l->pending == 0 && !l->ended)
		lane_end(l);
}

struct work_lane *work_lane_new(uv_loop_t *loop)
{
	struct work_lane *l = xcalloc(1, sizeof(*l));
	int ret;

	l->todo_tail = &l->todo;
	l->done_tail = &l->done;
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	ret = uv_async_init(loop, &l->async, lane_async_cb);
	if (ret < 0)
		fatalx("cannot make a work lane: %s", uv_strerror(ret));
	l->async.data = l;
	uv_unref((uv_handle_t *)&l->async); /* idle: the loop may end */
	ret = pthread_create(&l->thread, NULL, lane_main, l);
	if (ret != 0)
		fatalx("cannot start a work lane's thread: %s", strerror(ret));
	return l;
}

void work_lane_queue(struct work_lane *lane, struct work *w)
{
	w->ret = 0;
	w->lane_next = NULL;
	atomic_init(&w->cancel, false);
	if (lane->pending++ == 0)
		uv_ref((uv_handle_t *)&lane->async);
	pthread_mutex_lock(&lane->lock);
	*lane->todo_tail = w;
	lane->todo_tail = &w->lane_next;
	pthread_cond_signal(&lane->cond);
	pthread_mutex_unlock(&lane->lock);
}

static void lane_closed_cb(uv_handle_t *h)
{
	struct work_lane *l = h->data;

	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	free(l);
}

static void lane_end(struct work_lane *lane)
{
	lane->ended = true;
	pthread_mutex_lock(&lane->lock);
	lane->stop = true;
	pthread_cond_signal(&lane->cond);
	pthread_mutex_unlock(&lane->lock);
	pthread_join(lane->thread, NULL);
	uv_close((uv_handle_t *)&lane->async, lane_closed_cb);
}

void work_lane_close(struct work_lane *lane)
{
	if (lane == NULL || lane->closing)
		return;
	lane->closing = true;
	/* Jobs still to run or report: the lane ends after the last one's done(). */
	if (lane->pending == 0)
		lane_end(lane);
}

/* ---- a file put now, made durable on a lane --------------------------------------------- */

static int put_sync_run(struct work *w)
{
	struct work_put *p = (struct work_put *)w;
	int ret = file_sync(p->path);

	if (ret < 0)
		return err_set(&w->err, -ret, "cannot sync %s", p->path);
	return 0;
}

int work_file_put(struct work_lane *lane, struct work_put *p, const char *path, const char *text,
		  size_t len, unsigned mode)
{
	int ret = file_write_replace(path, text, len, mode);

	if (ret < 0)
		return ret;
	snprintf(p->path, sizeof(p->path), "%s", path);
	p->w.run = put_sync_run;
	work_lane_queue(lane, &p->w);
	return 0;
}
