/*
 * test_opcache.c - the ops an agent took (agentd/opcache.c): found again within a
 * run, and, through {state_dir}/ops, by the agent's next run as taken "earlier", so a
 * command is never run twice across a restart.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/*
 * The file is a log: a write after the run's first appends to it (the same file, no
 * rename), a drop appends "~ID", and the next run takes what the lines say.
 */
static void test_log_appends(void **state)
{
	struct opcache *run1 = calloc(1, sizeof(*run1)), *run2 = calloc(1, sizeof(*run2));
	_cleanup_free_ char *text = NULL;
	struct stat before, after;
	uv_loop_t loop;
	uint64_t gen;

	unlink(path);
	uv_loop_init(&loop);
	opcache_init(run1, &loop, NULL, NULL);
	opcache_load(run1, path);
	opcache_add(run1, "op-1", LINK_CMD_INSTANCE);
	for (gen = run1->gen; !opcache_on_disk(run1, gen);)
		uv_run(&loop, UV_RUN_ONCE);
	assert_int_equal(stat(path, &before), 0);
	opcache_add(run1, "op-2", LINK_CMD_INSTANCE);
	opcache_add(run1, "op-3", LINK_CMD_INSTANCE);
	opcache_drop(run1, "op-3");
	settle_and_close(&loop, run1);
	assert_int_equal(stat(path, &after), 0);
	assert_true(before.st_ino == after.st_ino); /* appended, not replaced */
	assert_int_equal(file_read_all(path, 4096, &text, NULL), 0);
	assert_string_equal(text, "op-1\nop-2\nop-3\n~op-3\n");
	opcache_load(run2, path);
	assert_true(opcache_find(run2, "op-1")->earlier);
	assert_true(opcache_find(run2, "op-2")->earlier);
	assert_null(opcache_find(run2, "op-3"));
	assert_int_equal(uv_loop_close(&loop), 0);
	opcache_clear(run1);
	opcache_clear(run2);
	free(run1);
	free(run2);
}

/*
 * A write a crash cut leaves a last line without its newline: left out (that command
 * was never acked), the lines before it taken; the next run's first write rewrites the
 * file, so nothing is appended to the cut line.
 */
static void test_log_torn(void **state)
{
	struct opcache *c = calloc(1, sizeof(*c));
	const char *text = "op-a\nop-b\n~op-a\nop-c\nop-d";
	_cleanup_free_ char *after = NULL;
	uv_loop_t loop;

	assert_int_equal(file_write_atomic(path, text, strlen(text), 0600), 0);
	uv_loop_init(&loop);
	opcache_init(c, &loop, NULL, NULL);
	opcache_load(c, path);
	assert_null(opcache_find(c, "op-a")); /* dropped */
	assert_true(opcache_find(c, "op-b")->earlier);
	assert_true(opcache_find(c, "op-c")->earlier);
	assert_null(opcache_find(c, "op-d")); /* cut */
	opcache_add(c, "op-e", LINK_CMD_INSTANCE);
	settle_and_close(&loop, c);
	assert_int_equal(file_read_all(path, 4096, &after, NULL), 0);
	assert_string_equal(after, "op-b\nop-c\nop-e\n");
	assert_int_equal(uv_loop_close(&loop), 0);
	opcache_clear(c);
	free(c);
}

/* The file's writes, with the next fail_writes of them failing (EIO, nothing written). */
static int fail_writes;

static int write_or_fail(const char *p, const char *text, size_t len, bool append)
{
	if (fail_writes > 0) {
		fail_writes--;
		return -EIO;
	}
	return opcache_write_file(p, text, len, append);
}

/*
 * A failed write is made good as the agent stops: a drop whose "~" line could not be
 * written is not in the next run's ids (it would take the dropped op as its own and
 * refuse the controller's resend of it).
 */
static void test_failed_write_retried_at_close(void **state)
{
	struct opcache *run1 = calloc(1, sizeof(*run1)), *run2 = calloc(1, sizeof(*run2));
	_cleanup_free_ char *text = NULL;
	uv_loop_t loop;
	uint64_t gen;

	unlink(path);
	uv_loop_init(&loop);
	opcache_init(run1, &loop, NULL, NULL);
	run1->write = write_or_fail;
	opcache_load(run1, path);
	opcache_add(run1, "op-1", LINK_CMD_INSTANCE);
	opcache_add(run1, "op-2", LINK_CMD_INSTANCE);
	for (gen = run1->gen; !opcache_on_disk(run1, gen);)
		uv_run(&loop, UV_RUN_ONCE);
	fail_writes = 1;
	opcache_drop(run1, "op-2");
	for (gen = run1->gen; !opcache_on_disk(run1, gen);)
		uv_run(&loop, UV_RUN_ONCE);
	assert_non_null(opcache_write_error(run1));
	opcache_close(run1);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(file_read_all(path, 4096, &text, NULL), 0);
	assert_string_equal(text, "op-1\n");
	opcache_load(run2, path);
	assert_true(opcache_find(run2, "op-1")->earlier);
	assert_null(opcache_find(run2, "op-2"));
	assert_int_equal(uv_loop_close(&loop), 0);
	opcache_clear(run1);
	opcache_clear(run2);
	free(run1);
	free(run2);
}

/* A long run's log is compacted: the file stays bounded, the newest ids all in it. */
static void test_log_compacted(void **state)
{
	struct opcache *run1 = calloc(1, sizeof(*run1)), *run2 = calloc(1, sizeof(*run2));
	_cleanup_free_ char *text = NULL;
	size_t len = 0, lines = 0;
	char op[32];
	uv_loop_t loop;

	unlink(path);
	uv_loop_init(&loop);
	opcache_init(run1, &loop, NULL, NULL);
	opcache_load(run1, path);
	for (int i = 0; i < 4 * AGENT_OPCACHE_SIZE + 7; i++) {
		uint64_t gen;

		op_name(op, sizeof(op), i);
		opcache_add(run1, op, LINK_CMD_INSTANCE);
		for (gen = run1->gen; !opcache_on_disk(run1, gen);)
			uv_run(&loop, UV_RUN_ONCE);
	}
	settle_and_close(&loop, run1);
	assert_int_equal(file_read_all(path, 1 << 20, &text, &len), 0);
	for (size_t i = 0; i < len; i++)
		lines += text[i] == '\n';
	assert_true(lines <= 3 * AGENT_OPCACHE_SIZE + 1);
	opcache_load(run2, path);
	for (int i = 3 * AGENT_OPCACHE_SIZE + 7; i < 4 * AGENT_OPCACHE_SIZE + 7; i++) {
		op_name(op, sizeof(op), i);
		assert_non_null(opcache_find(run2, op));
	}
	op_name(op, sizeof(op), 3 * AGENT_OPCACHE_SIZE + 6);
	assert_null(opcache_find(run2, op));
	assert_int_equal(uv_loop_close(&loop), 0);
	opcache_clear(run1);
	opcache_clear(run2);
	free(run1);
	free(run2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find_and_finish),
		cmocka_unit_test(test_kept_across_runs),
		cmocka_unit_test(test_junk_ignored),
		cmocka_unit_test(test_log_appends),
		cmocka_unit_test(test_log_torn),
		cmocka_unit_test(test_log_compacted),
		cmocka_unit_test(test_failed_write_retried_at_close),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
