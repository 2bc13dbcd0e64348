/*
 * work.c - libuv's thread pool behind one checked wrapper (work.h).
 */
#include "work.h"

#include <errno.h>

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
