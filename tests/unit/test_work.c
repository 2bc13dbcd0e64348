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
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util.h"
#include "work.h"

/*
 * Every fsync the code makes lands here (the program's definition comes before
 * libc's): counted by thread, the loop's (the test's) or another; one on another
 * thread waits while sync_hold is set.
 */
static pthread_t loop_thread;
static atomic_int loop_syncs, lane_syncs;
static atomic_bool sync_hold;

int fsync(int fd)
{
	if (pthread_equal(pthread_self(), loop_thread)) {
		atomic_fetch_add(&loop_syncs, 1);
	} else {
		for (int i = 0; atomic_load(&sync_hold) && i < 30000; i++)
			usleep(1000); /* a bound for a busy machine */
		atomic_fetch_add(&lane_syncs, 1);
	}
	return (int)syscall(SYS_fsync, fd);
}

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

static int puts_done;

static void put_done(struct work *w)
{
	assert_int_equal(w->ret, 0);
	puts_done++;
}

/*
 * work_file_put() (the containers' stop marker): the file is in place when the call
 * returns, its fsyncs run on the lane, never on the loop's thread, and done() comes
 * only after them, the loop turning meanwhile.
 */
static void test_file_put_syncs_on_the_lane(void **state)
{
	char dir[] = "/tmp/kumo-unit-work.XXXXXX", path[64], cmd[96];
	_cleanup_free_ char *text = NULL;
	struct work_put put = {0};
	struct work_lane *lane;
	uv_loop_t loop;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/stop", dir);
	loop_thread = pthread_self();
	atomic_store(&loop_syncs, 0);
	atomic_store(&lane_syncs, 0);
	atomic_store(&sync_hold, true);
	puts_done = 0;
	uv_loop_init(&loop);
	lane = work_lane_new(&loop);
	put.w.done = put_done;
	assert_int_equal(work_file_put(lane, &put, path, "stop\n", 5, 0600), 0);
	assert_int_equal(file_read_all(path, 64, &text, NULL), 0);
	assert_string_equal(text, "stop\n");
	for (int i = 0; i < 20; i++)
		uv_run(&loop, UV_RUN_NOWAIT);
	if (atomic_load(&loop_syncs) != 0)
		fail_msg("%d fsyncs on the loop's thread", atomic_load(&loop_syncs));
	assert_int_equal(puts_done, 0); /* the fsyncs are held: no done() yet */
	atomic_store(&sync_hold, false);
	work_lane_close(lane);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(puts_done, 1);
	assert_int_equal(atomic_load(&lane_syncs), 2); /* the file and its directory */
	assert_int_equal(atomic_load(&loop_syncs), 0);
	assert_int_equal(uv_loop_close(&loop), 0);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_run_then_done_on_the_loop),
		cmocka_unit_test(test_cancelled_before_it_starts),
		cmocka_unit_test(test_cancelled_while_it_runs),
		cmocka_unit_test(test_lane_closed_with_jobs_pending),
		cmocka_unit_test(test_file_put_syncs_on_the_lane),
	};

	/* One pool thread: a job can be held queued behind another (read at first use). */
	setenv("UV_THREADPOOL_SIZE", "1", 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
