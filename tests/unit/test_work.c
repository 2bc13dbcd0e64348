/*
 * test_work.c - common/work.c, the one thread-pool wrapper: a real loop and libuv's
 * real pool (one thread, so a job can be held queued). A job's done() always comes,
 * on the loop: after its run, or without it when it was cancelled before it started,
 * so no caller waits forever on work that never ran.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "work.h"

struct job {
	struct work w;
	uv_sem_t *started, *release; /* the job says it runs, then waits to be let go */
	bool wait_cancel;	     /* run until work_cancelled() */
	int runs, dones;
	uv_thread_t done_thread;
};

static int run(struct work *w)
{
	struct job *j = (struct job *)w;

	j->runs++;
	if (j->started)
		uv_sem_post(j->started);
	if (j->release)
		uv_sem_wait(j->release);
	while (j->wait_cancel && !work_cancelled(w))
		uv_sleep(1);
	if (j->wait_cancel)
		return err_set(&w->err, ECANCELED, "stopped at a safe point");
	return 7;
}

static void done(struct work *w)
{
	struct job *j = (struct job *)w;

	j->dones++;
	j->done_thread = uv_thread_self();
}

static void job_init(struct job *j)
{
	memset(j, 0, sizeof(*j));
	j->w.run = run;
	j->w.done = done;
}

static void test_run_then_done_on_the_loop(void **state)
{
	uv_loop_t loop;
	struct job j;
	uv_thread_t self = uv_thread_self();

	(void)state;
	uv_loop_init(&loop);
	job_init(&j);
	work_queue(&loop, &j.w);
	assert_int_equal(j.dones, 0); /* never inline when queued */
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(j.runs, 1);
	assert_int_equal(j.dones, 1);
	assert_int_equal(j.w.ret, 7);
	assert_true(uv_thread_equal(&j.done_thread, &self));
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* Queued behind a job that holds the only pool thread, cancelled: done(), no run. */
static void test_cancelled_before_it_starts(void **state)
{
	uv_loop_t loop;
	uv_sem_t started, release;
	struct job blocker, queued;

	(void)state;
	uv_loop_init(&loop);
	uv_sem_init(&started, 0);
	uv_sem_init(&release, 0);
	job_init(&blocker);
	blocker.started = &started;
	blocker.release = &release;
	job_init(&queued);
	work_queue(&loop, &blocker.w);
	uv_sem_wait(&started); /* the pool's one thread is taken */
	work_queue(&loop, &queued.w);
	work_cancel(&queued.w);
	uv_sem_post(&release);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(blocker.dones, 1);
	assert_int_equal(queued.runs, 0);
	assert_int_equal(queued.dones, 1);
	assert_true(queued.w.ret < 0);
	assert_int_equal(queued.w.err.code, ECANCELED);
	uv_sem_destroy(&started);
	uv_sem_destroy(&release);
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* A job that runs sees work_cancelled() turn true and stops early; done() follows. */
static void test_cancelled_while_it_runs(void **state)
{
	uv_loop_t loop;
	uv_sem_t started;
	struct job j;

	(void)state;
	uv_loop_init(&loop);
	uv_sem_init(&started, 0);
	job_init(&j);
	j.started = &started;
	j.wait_cancel = true;
	work_queue(&loop, &j.w);
	uv_sem_wait(&started);
	work_cancel(&j.w);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(j.runs, 1);
	assert_int_equal(j.dones, 1);
	assert_int_equal(j.w.ret, -ECANCELED);
	assert_int_equal(j.w.err.code, ECANCELED);
	uv_sem_destroy(&started);
	assert_int_equal(uv_loop_close(&loop), 0);
}

/*
 * A lane closed while a job is queued behind a running one (the agent stops while a
 * stop marker is being synced): both jobs still run and report, in order, and the
 * loop ends once the lane has.
 */
static void test_lane_closed_with_jobs_pending(void **state)
{
	uv_loop_t loop;
	uv_sem_t started, release;
	struct work_lane *lane;
	struct job a, b;

	(void)state;
	uv_loop_init(&loop);
	uv_sem_init(&started, 0);
	uv_sem_init(&release, 0);
	lane = work_lane_new(&loop);
	job_init(&a);
	job_init(&b);
	a.started = &started;
	a.release = &release;
	work_lane_queue(lane, &a.w);
	work_lane_queue(lane, &b.w);
	uv_sem_wait(&started);
	work_lane_close(lane);
	uv_sem_post(&release);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(a.runs, 1);
	assert_int_equal(a.dones, 1);
	assert_int_equal(b.runs, 1);
	assert_int_equal(b.dones, 1);
	assert_int_equal(b.w.ret, 7);
	assert_int_equal(uv_loop_close(&loop), 0);
	uv_sem_destroy(&started);
	uv_sem_destroy(&release);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_run_then_done_on_the_loop),
		cmocka_unit_test(test_cancelled_before_it_starts),
		cmocka_unit_test(test_cancelled_while_it_runs),
		cmocka_unit_test(test_lane_closed_with_jobs_pending),
	};

	/* One pool thread: a job can be held queued behind another (read at first use). */
	setenv("UV_THREADPOOL_SIZE", "1", 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
