/*
 * test_netsave.c - desired.json written on a thread of its own (agentd/netsave.c): one
 * write at a time, the newest document last on disk, a replaced one never written,
 * each write's outcome reported on the loop in order, and no write held behind the
 * shared thread pool's long jobs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentd.h"
#include "util.h"

#include "pool_fill.h"

#define WAIT_US	 (30 * 1000 * 1000) /* a bound for a busy machine, never a sleep */
#define SEEN_MAX 8

static char dir[64], path[96];
static uv_loop_t loop;
static struct netsave save;

/* libuv's pool (4 threads) full of long jobs, as four backups' disk reads fill it;
 * static, as the pool may still run them when a failed test has returned. */

/* What the writer wrote (on its thread) and what saved() heard (on the loop). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *written[SEEN_MAX];
static int nwritten, writing_now, writing_most, fail_writes;
static struct {
	uint64_t gen;
	char hash[16];
	int ret;
	char error[256];
} saved[SEEN_MAX];
static int nsaved;

static int write_cb(const char *p, const char *text, size_t len)
{
	int ret;

	pthread_mutex_lock(&lock);
	if (++writing_now > writing_most)
		writing_most = writing_now;
	if (nwritten < SEEN_MAX)
		written[nwritten++] = xstrdup(text);
	ret = fail_writes > 0 ? (fail_writes--, -EIO) : 0;
	pthread_mutex_unlock(&lock);
	if (ret == 0)
		ret = netsave_write_file(p, text, len);
	pthread_mutex_lock(&lock);
	writing_now--;
	pthread_mutex_unlock(&lock);
	return ret;
}

static void saved_cb(struct netsave *s, uint64_t gen, struct json_object *doc, int ret,
		     const struct kerr *err)
{
	assert_ptr_equal(s, &save);
	assert_true(nsaved < SEEN_MAX);
	saved[nsaved].gen = gen;
	snprintf(saved[nsaved].hash, sizeof(saved[nsaved].hash), "%s",
		 json_get_str(doc, "hash", ""));
	saved[nsaved].ret = ret;
	snprintf(saved[nsaved].error, sizeof(saved[nsaved].error), "%s", ret < 0 ? err->msg : "");
	nsaved++;
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kumo-unit-netsave.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/desired.json", dir);
	uv_loop_init(&loop);
	netsave_init(&save, &loop, path, saved_cb, NULL);
	save.write = write_cb;
	nwritten = nsaved = writing_now = writing_most = fail_writes = 0;
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	netsave_stop(&save);
	pool_fill_release(); /* a failed test_not_behind_pool's jobs end */
	uv_run(&loop, UV_RUN_DEFAULT);
	netsave_close(&save);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	for (int i = 0; i < nwritten; i++)
		free(written[i]);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* A document named hash (the field the real ones carry their version in). */
static struct json_object *doc_make(const char *hash)
{
	struct json_object *doc = json_object_new_object();

	json_object_object_add(doc, "hash", json_object_new_string(hash));
	return doc;
}

/* Put a document named hash; returns its generation. */
static uint64_t put(const char *hash)
{
	struct json_object *doc = doc_make(hash);
	uint64_t gen = netsave_put(&save, doc);

	json_object_put(doc); /* netsave keeps its own reference */
	return gen;
}

/* Run the loop until every write was reported. */
static void settle(void)
{
	int64_t until = now_us() + WAIT_US;

	while (netsave_busy(&save)) {
		uv_run(&loop, UV_RUN_ONCE);
		if (now_us() > until)
			fail_msg("the writes did not finish in %d s", WAIT_US / 1000000);
	}
}

/* The hash in the document on disk. */
static const char *disk_hash(void)
{
	static char hash[16];
	_cleanup_free_ char *text = NULL;
	struct json_object *doc;
	size_t len;

	assert_int_equal(file_read_all(path, 4096, &text, &len), 0);
	doc = json_tokener_parse(text);
	assert_non_null(doc);
	snprintf(hash, sizeof(hash), "%s", json_get_str(doc, "hash", ""));
	json_object_put(doc);
	return hash;
}

/*
 * Three documents in a row while the first is written: the second waits, the third
 * replaces it. The third is what stays on disk; the second is never written; saved()
 * hears generation 1, then 3 (which answers whoever waited for 2).
 */
static void test_newest_last_on_disk(void **state)
{
	struct json_object *newest;
	uint64_t gen;

	(void)state;
	assert_int_equal(put("a"), 1);
	newest = netsave_newest(&save, &gen);
	assert_string_equal(json_get_str(newest, "hash", ""), "a");
	assert_int_equal(gen, 1);
	assert_int_equal(put("b"), 2);
	assert_int_equal(put("c"), 3);
	newest = netsave_newest(&save, &gen);
	assert_string_equal(json_get_str(newest, "hash", ""), "c");
	assert_int_equal(gen, 3);
	settle();

	assert_string_equal(disk_hash(), "c");
	assert_int_equal(nsaved, 2);
	assert_int_equal(saved[0].gen, 1);
	assert_string_equal(saved[0].hash, "a");
	assert_int_equal(saved[0].ret, 0);
	assert_int_equal(saved[1].gen, 3);
	assert_string_equal(saved[1].hash, "c");
	assert_int_equal(saved[1].ret, 0);
	assert_int_equal(nwritten, 2);
	assert_non_null(strstr(written[0], "\"a\""));
	assert_non_null(strstr(written[1], "\"c\""));
	assert_int_equal(writing_most, 1);
	assert_null(netsave_newest(&save, &gen));

	/* Afterwards a document is written at once. */
	assert_int_equal(put("d"), 4);
	settle();
	assert_string_equal(disk_hash(), "d");
	assert_int_equal(nsaved, 3);
	assert_int_equal(saved[2].gen, 4);
}

/*
 * A failed write is reported with why, leaves the file as it was, and does not stop
 * the next document.
 */
static void test_failed_write_reported(void **state)
{
	(void)state;
	put("a");
	settle();
	fail_writes = 1;
	put("b");
	put("c");
	settle();

	assert_int_equal(nsaved, 3);
	assert_int_equal(saved[1].gen, 2);
	assert_true(saved[1].ret < 0);
	assert_non_null(strstr(saved[1].error, "cannot write"));
	assert_int_equal(saved[2].gen, 3);
	assert_int_equal(saved[2].ret, 0);
	assert_string_equal(disk_hash(), "c");
}

/* Stopping drops the waiting document; the write running still ends, reported. */
static void test_stop_drops_waiting(void **state)
{
	(void)state;
	put("a");
	put("b");
	netsave_stop(&save);
	assert_true(netsave_busy(&save));
	settle();
	assert_int_equal(nsaved, 1);
	assert_int_equal(saved[0].gen, 1);
	assert_string_equal(disk_hash(), "a");
}

/* A document is written (and the net query answered) while every pool thread is busy. */
static void test_not_behind_pool(void **state)
{
	(void)state;
	assert_int_equal(pool_fill(&loop), 0);
	put("a");
	settle();
	assert_false(pool_fill_any_done()); /* the pool is still full, and the write is done */
	assert_int_equal(nsaved, 1);
	assert_int_equal(saved[0].ret, 0);
	assert_string_equal(disk_hash(), "a");
	pool_fill_drain(&loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_newest_last_on_disk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_write_reported, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_drops_waiting, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_behind_pool, setup, teardown),
	};

	setenv("UV_THREADPOOL_SIZE", "4", 1); /* POOL_FILL_THREADS, before the pool's first use */

	return cmocka_run_group_tests(tests, NULL, NULL);
}
