/*
 * test_opcache.c - the ops an agent took (agentd/opcache.c): found again within a
 * run, and, through {state_dir}/ops, by the agent's next run as taken "earlier", so a
 * command is never run twice across a restart.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentd.h"
#include "util.h"

static char dir[] = "/tmp/kumo-unit-opcache-XXXXXX";
static char path[PATH_MAX];

static int setup(void **state)
{
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/ops", dir);
	return 0;
}

static int teardown(void **state)
{
	unlink(path);
	rmdir(dir);
	return 0;
}

static void op_name(char *out, size_t len, int i)
{
	snprintf(out, len, "op-%04d", i);
}

/* Found while remembered, with its result once finished. */
static void test_find_and_finish(void **state)
{
	struct opcache *c = calloc(1, sizeof(*c));
	struct json_object *done = json_object_new_object();
	struct op_entry *e;

	assert_null(opcache_find(c, "op-a"));
	opcache_add(c, "op-a", LINK_CMD_INSTANCE);
	e = opcache_find(c, "op-a");
	assert_non_null(e);
	assert_false(e->done);
	assert_false(e->earlier);
	opcache_finish(c, "op-a", done);
	json_object_put(done);
	assert_true(opcache_find(c, "op-a")->done);
	opcache_clear(c);
	assert_null(opcache_find(c, "op-a"));
	free(c);
}

static int nwritten_cb;

static void written_cb(struct opcache *c)
{
	(void)c;
	nwritten_cb++;
}

/* Run loop until c's ids as of now are on disk, then end its lane. */
static void settle_and_close(uv_loop_t *loop, struct opcache *c)
{
	uint64_t gen = c->gen;

	while (!opcache_on_disk(c, gen))
		uv_run(loop, UV_RUN_ONCE);
	opcache_close(c);
	uv_run(loop, UV_RUN_DEFAULT);
}

/*
 * The next run finds the ops of the previous one as earlier, the newest ones kept;
 * ops added while a write runs go in one more write after it, not one write each.
 */
static void test_kept_across_runs(void **state)
{
	struct opcache *run1 = calloc(1, sizeof(*run1)), *run2 = calloc(1, sizeof(*run2));
	char op[32];
	struct op_entry *e;
	uv_loop_t loop;

	unlink(path);
	uv_loop_init(&loop);
	nwritten_cb = 0;
	opcache_init(run1, &loop, written_cb, NULL);
	opcache_load(run1, path); /* no file yet: nothing earlier */
	for (int i = 0; i < AGENT_OPCACHE_SIZE + 5; i++) {
		op_name(op, sizeof(op), i);
		opcache_add(run1, op, LINK_CMD_INSTANCE);
	}
	assert_false(opcache_on_disk(run1, run1->gen)); /* written off the loop */
	settle_and_close(&loop, run1);
	assert_int_equal(nwritten_cb, 2); /* the first op's write, then all the others' */
	assert_int_equal(access(path, F_OK), 0);
	opcache_init(run2, &loop, NULL, NULL);
	opcache_load(run2, path);
	op_name(op, sizeof(op), 4); /* evicted from the ring, so from the file too */
	assert_null(opcache_find(run2, op));
	for (int i = 5; i < AGENT_OPCACHE_SIZE + 5; i++) {
		op_name(op, sizeof(op), i);
		e = opcache_find(run2, op);
		assert_non_null(e);
		assert_true(e->earlier);
		assert_false(e->done);
	}
	/* A new op of the second run is not earlier, and pushes out the oldest one. */
	opcache_add(run2, "op-new", LINK_CMD_INSTANCE);
	assert_false(opcache_find(run2, "op-new")->earlier);
	op_name(op, sizeof(op), 5);
	assert_null(opcache_find(run2, op));
	settle_and_close(&loop, run2);
	assert_int_equal(uv_loop_close(&loop), 0);
	opcache_clear(run1);
	opcache_clear(run2);
	free(run1);
	free(run2);
}

/* A file with junk lines: only valid op ids are taken. */
static void test_junk_ignored(void **state)
{
	struct opcache *c = calloc(1, sizeof(*c));
	const char *text = "op-good\n../../etc\nUPPER\n\nop-good-2\n";

	assert_int_equal(file_write_atomic(path, text, strlen(text), 0600), 0);
	opcache_load(c, path);
	assert_non_null(opcache_find(c, "op-good"));
	assert_non_null(opcache_find(c, "op-good-2"));
	assert_null(opcache_find(c, "../../etc"));
	assert_null(opcache_find(c, "UPPER"));
	opcache_clear(c);
	free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find_and_finish),
		cmocka_unit_test(test_kept_across_runs),
		cmocka_unit_test(test_junk_ignored),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
