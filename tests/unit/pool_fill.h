/*
 * pool_fill.h - for unit tests: fill libuv's thread pool with jobs that wait until
 * released, to show that some work does not wait behind the pool (a backup's reads can
 * hold its threads for minutes). The test sets UV_THREADPOOL_SIZE to POOL_FILL_THREADS
 * before the pool's first use. Include once, after <stdatomic.h>, <uv.h> and util.h.
 */
#ifndef KUMO_TESTS_POOL_FILL_H
#define KUMO_TESTS_POOL_FILL_H

#define POOL_FILL_THREADS  4
#define POOL_FILL_BOUND_US (60 * 1000 * 1000) /* a failed test's jobs end anyway */

static atomic_bool pool_fill_released;
static int pool_fill_done;
static uv_work_t pool_fill_reqs[POOL_FILL_THREADS];

static void pool_fill_block(uv_work_t *req)
{
	int64_t until = now_us() + POOL_FILL_BOUND_US;

	(void)req;
	while (!atomic_load(&pool_fill_released) && now_us() < until)
		usleep(1000);
}

static void pool_fill_after(uv_work_t *req, int status)
{
	(void)req;
	(void)status;
	pool_fill_done++;
}

/* Take every pool thread; 0, or a libuv error. */
static int pool_fill(uv_loop_t *loop)
{
	int ret = 0;

	atomic_store(&pool_fill_released, false);
	pool_fill_done = 0;
	for (int i = 0; i < POOL_FILL_THREADS && ret == 0; i++)
		ret = uv_queue_work(loop, &pool_fill_reqs[i], pool_fill_block, pool_fill_after);
	return ret;
}

/* Has any pool job ended? (None may, while the test shows its work went on.) */
static bool pool_fill_any_done(void)
{
	return pool_fill_done > 0;
}

/* Let the jobs end (a teardown calls it too, for a test that failed midway). */
static void pool_fill_release(void)
{
	atomic_store(&pool_fill_released, true);
}

/* Let the jobs end and run loop until they did. */
static void pool_fill_drain(uv_loop_t *loop)
{
	pool_fill_release();
	while (pool_fill_done < POOL_FILL_THREADS)
		uv_run(loop, UV_RUN_ONCE);
}

#endif
