/*
 * test_child.c - common/child.c, the child-process runner: a real loop running real
 * programs (sh), checking what a caller hears: exit status and signal, output caps,
 * the deadline and cancel killing the whole tree, stdin, environment and directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "util.h"

struct heard {
	int calls;
	struct child_result r;
	char *out, *err;
	size_t pieces;
	char why[256];
};

static void done_cb(const struct child_result *r, void *data)
{
	struct heard *h = data;

	h->calls++;
	h->r = *r;
	h->out = xstrdup(r->out);
	h->err = xstrdup(r->err);
	child_result_why(r, h->why, sizeof(h->why));
	h->r.out = h->r.err = h->r.prog = NULL;
}

static void output_cb(const char *buf, size_t len, void *data)
{
	struct heard *h = data;

	h->pieces += len;
}

static void heard_free(struct heard *h)
{
	free(h->out);
	free(h->err);
}

/* Run sh -c script with opts filled in; the loop runs until done() came. */
static void run_sh(const char *script, struct child_opts *o, struct heard *h,
		   void (*meanwhile)(struct child *c))
{
	char *argv[] = {"sh", "-c", (char *)script, NULL};
	uv_loop_t loop;
	struct child *c;
	struct kerr err;

	memset(h, 0, sizeof(*h));
	uv_loop_init(&loop);
	o->argv = argv;
	c = child_run(&loop, o, done_cb, h, &err);
	assert_non_null(c);
	if (meanwhile)
		meanwhile(c);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(h->calls, 1);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_exit_status_and_stderr(void **state)
{
	struct child_opts o = {.out_max = 100};
	struct heard h;

	run_sh("echo hello; echo first >&2; echo 'the real reason' >&2; exit 3", &o, &h, NULL);
	assert_int_equal(h.r.status, 3);
	assert_int_equal(h.r.signal, 0);
	assert_false(child_result_ok(&h.r));
	assert_string_equal(h.out, "hello\n");
	assert_string_equal(h.why, "the real reason");
	heard_free(&h);

	run_sh("exit 0", &o, &h, NULL);
	assert_true(child_result_ok(&h.r));
	assert_string_equal(h.out, "");
	heard_free(&h);
}

static void test_exit_by_signal(void **state)
{
	struct child_opts o = {0};
	struct heard h;

	run_sh("kill -TERM $$", &o, &h, NULL);
	assert_int_equal(h.r.signal, SIGTERM);
	assert_false(h.r.timed_out);
	assert_false(child_result_ok(&h.r));
	assert_string_equal(h.why, "sh was killed by signal 15");
	heard_free(&h);
}

static void test_big_output_capped(void **state)
{
	struct child_opts o = {.out_max = 100000, .err_max = 16, .on_output = output_cb};
	struct heard h;

	/* 4 MB on stdout and 1 MB on stderr: the caps hold, nothing blocks the child. */
	run_sh("head -c 4000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero | tr '\\0' b "
	       ">&2; "
	       "echo END-OF-ERR >&2",
	       &o, &h, NULL);
	assert_true(child_result_ok(&h.r));
	assert_true(h.r.truncated);
	assert_int_equal(h.r.out_len, 100000);
	assert_int_equal(strlen(h.out), 100000);
	assert_int_equal(h.pieces, 4000000);
	assert_int_equal(strlen(h.err), 16);
	assert_string_equal(h.err, "bbbbbEND-OF-ERR\n");
	heard_free(&h);
}

static void test_timeout_kills_the_tree(void **state)
{
	struct child_opts o = {.out_max = 64, .timeout_ms = 300};
	struct heard h;
	pid_t grandchild;
	char path[64], *text = NULL;

	/* The shell's background sleep is a grandchild: the deadline takes it too. */
	run_sh("sleep 30 & echo $!; wait", &o, &h, NULL);
	assert_true(h.r.timed_out);
	assert_int_equal(h.r.signal, SIGKILL);
	assert_string_equal(h.why, "sh did not finish in time");
	grandchild = (pid_t)atoi(h.out);
	assert_true(grandchild > 0);
	/* SIGKILL is delivered at once but the exit is not: on a busy machine the
	 * grandchild can still be running its exit for a moment. Wait (10 s at most)
	 * until it is gone or a zombie waiting for whoever adopted it. */
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)grandchild);
	for (int i = 0; i < 1000; i++) {
		bool dead;

		if (file_read_all(path, 4096, &text, NULL) != 0)
			break;
		dead = strstr(text, ") Z") != NULL || strstr(text, ") X") != NULL;
		free(text);
		text = NULL;
		if (dead)
			break;
		assert_true(i < 999);
		usleep(10000);
	}
	heard_free(&h);
}

static void cancel_now(struct child *c)
{
	assert_true(child_pid(c) > 0);
	child_cancel(c);
}

static void test_cancel(void **state)
{
	struct child_opts o = {0};
	struct heard h;

	run_sh("sleep 30", &o, &h, cancel_now);
	assert_true(h.r.cancelled);
	assert_int_equal(h.r.signal, SIGKILL);
	assert_string_equal(h.why, "sh was cancelled");
	heard_free(&h);
}

static bool cancelled_on_second_ask(void *data)
{
	int *asked = data;

	return ++*asked >= 2;
}

/* child_run_wait with a cancel check (a pool thread's backup work): the child is
 * killed at the first poll that says cancelled, long before it would end. */
static void test_run_wait_cancelled(void **state)
{
	char *argv[] = {"sleep", "30", NULL};
	int asked = 0;
	struct child_opts o = {.argv = argv,
			       .err_mode = CHILD_ERR_IGNORE,
			       .cancelled = cancelled_on_second_ask,
			       .cancel_data = &asked};
	struct kerr err;
	int64_t t0 = now_ms();

	assert_int_equal(child_run_wait(&o, NULL, &err), -1);
	assert_int_equal(asked, 2);
	assert_true(now_ms() - t0 < 5000);
	assert_non_null(strstr(err.msg, "cancelled"));
	/* Never cancelled: it runs to its end. */
	argv[1] = "0";
	asked = -100;
	assert_int_equal(child_run_wait(&o, NULL, &err), 0);
}

/* child_run_sync hands on_output and done the caller's data (the namespace maker reads
 * its state through it), with or without a cancel poll. */
static void sync_output_cb(const char *buf, size_t len, void *data)
{
	int *seen = data;

	(void)buf;
	*seen += (int)len;
}

static void sync_done_cb(const struct child_result *r, void *data)
{
	int *seen = data;

	(void)r;
	*seen += 1000;
}

static bool never_cancelled(void *data)
{
	(void)data;
	return false;
}

static void test_run_sync_callers_data(void **state)
{
	char *argv[] = {"sh", "-c", "printf abc", NULL};
	struct child_opts o = {
		.argv = argv, .err_mode = CHILD_ERR_IGNORE, .on_output = sync_output_cb};
	struct kerr err;
	int seen = 0;

	(void)state;
	assert_int_equal(child_run_sync(&o, sync_done_cb, &seen, NULL, &err), 0);
	assert_int_equal(seen, 1003);
	o.cancelled = never_cancelled;
	seen = 0;
	assert_int_equal(child_run_sync(&o, sync_done_cb, &seen, NULL, &err), 0);
	assert_int_equal(seen, 1003);
}

static void abandon_now(struct child *c)
{
	child_abandon(c, true);
}

static void test_abandon(void **state)
{
	struct child_opts o = {.out_max = 10};
	struct heard h;

	run_sh("sleep 30", &o, &h, abandon_now);
	assert_true(h.r.abandoned);
	assert_false(child_result_ok(&h.r));
	heard_free(&h);
}

static void test_stdin_env_cwd(void **state)
{
	char *env[] = {"KUMO_CHILD_TEST=forty-two", "PATH=/usr/bin:/bin", NULL};
	struct child_opts o = {
		.out_max = 200, .in = "from stdin\n", .in_len = 11, .env = env, .cwd = "/tmp"};
	struct heard h;

	run_sh("read line; echo \"$line|$KUMO_CHILD_TEST|$(pwd)\"", &o, &h, NULL);
	assert_true(child_result_ok(&h.r));
	assert_string_equal(h.out, "from stdin|forty-two|/tmp\n");
	heard_free(&h);
}

/*
 * The child's stdio are pipes: a program may open /dev/stdin, /dev/stdout or
 * /dev/stderr by name (tee, a tool given an output path), which a socket (uv_spawn's
 * stdio) refuses with ENXIO.
 */
static void test_stdio_by_name(void **state)
{
	struct child_opts o = {.out_max = 200, .in = "in\n", .in_len = 3};
	struct heard h;

	run_sh("cat /dev/stdin > /dev/stdout; echo err > /dev/stderr", &o, &h, NULL);
	assert_string_equal(h.err, "err\n");
	assert_string_equal(h.out, "in\n");
	assert_true(child_result_ok(&h.r));
	heard_free(&h);

	o.err_mode = CHILD_ERR_MERGE;
	run_sh("echo out > /dev/stdout; echo err > /dev/stderr", &o, &h, NULL);
	assert_true(child_result_ok(&h.r));
	assert_string_equal(h.out, "out\nerr\n");
	heard_free(&h);
}

/* Given an environment, argv[0] is looked up in that environment's PATH (as
 * uv_spawn's execvp did), not in ours. */
static void test_env_path(void **state)
{
	char dir[] = "/tmp/kumo-child-XXXXXX", path[64];
	char *env[] = {path, NULL, NULL};
	char *argv[] = {"kumo-child-only-here", NULL};
	struct child_opts o = {.argv = argv, .out_max = 100, .env = env};
	struct kerr err;
	char *out = NULL;
	FILE *f;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "PATH=/nonexistent:%s", dir);
	{
		_cleanup_free_ char *prog = xasprintf("%s/%s", dir, argv[0]);

		f = fopen(prog, "w");
		assert_non_null(f);
		fputs("#!/bin/sh\necho found\n", f);
		fclose(f);
		assert_int_equal(chmod(prog, 0755), 0);
		assert_int_equal(child_run_wait(&o, &out, &err), 0);
		assert_string_equal(out, "found\n");
		free(out);
		/* The first PATH counts, as for getenv(). */
		env[1] = "PATH=/nonexistent";
		assert_int_equal(child_run_wait(&o, &out, &err), 0);
		free(out);
		env[1] = NULL;
		/* An empty element is the child's directory (cwd), not ours. */
		snprintf(path, sizeof(path), "PATH=/nonexistent:");
		o.cwd = dir;
		assert_int_equal(child_run_wait(&o, &out, &err), 0);
		assert_string_equal(out, "found\n");
		free(out);
		o.cwd = NULL;
		/* Not in that PATH: it does not start (ours is not searched). */
		snprintf(path, sizeof(path), "PATH=/nonexistent");
		assert_int_equal(child_run_wait(&o, NULL, &err), -1);
		assert_non_null(strstr(err.msg, "cannot run kumo-child-only-here"));
		unlink(prog);
	}
	rmdir(dir);
}

/* set_ids runs it as uid:gid, with no supplementary group (root only: the tests'). */
static void test_set_ids(void **state)
{
	char *argv[] = {"sh", "-c", "id -u; id -g; id -G", NULL};
	struct child_opts o = {
		.argv = argv, .out_max = 200, .set_ids = true, .uid = 65534, .gid = 65533};
	struct kerr err;
	char *out = NULL;

	if (geteuid() != 0) {
		/* Not root: it cannot drop to another user, and says so. */
		assert_int_equal(child_run_wait(&o, NULL, &err), -1);
		assert_non_null(strstr(err.msg, "cannot run sh"));
		return;
	}
	assert_int_equal(child_run_wait(&o, &out, &err), 0);
	assert_string_equal(out, "65534\n65533\n65533\n");
	free(out);
}

static void test_merge_keeps_order(void **state)
{
	struct child_opts o = {.out_max = 200, .err_mode = CHILD_ERR_MERGE};
	struct heard h;

	run_sh("echo one; echo two >&2; echo three", &o, &h, NULL);
	assert_string_equal(h.out, "one\ntwo\nthree\n");
	heard_free(&h);
}

static void test_cannot_start(void **state)
{
	char *argv[] = {"/nonexistent/kumo-program", NULL};
	struct child_opts o = {.argv = argv};
	struct heard h = {0};
	uv_loop_t loop;
	struct kerr err;

	uv_loop_init(&loop);
	assert_null(child_run(&loop, &o, done_cb, &h, &err));
	assert_non_null(strstr(err.msg, "cannot run /nonexistent/kumo-program"));
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(h.calls, 0);
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* found(): each process before its kill, its command line still readable (p2v reads
 * the libguestfs appliance's socket directory from it). */
struct marked_seen {
	int n, whole;
};

static void marked_found(pid_t pid, void *data)
{
	struct marked_seen *ms = data;
	_cleanup_free_ char *path = xasprintf("/proc/%d/cmdline", (int)pid), *cmd = NULL;
	size_t len = 0;

	ms->n++;
	if (file_read_all(path, 4096, &cmd, &len) == 0 && len > 0)
		ms->whole++;
}

/*
 * A tree whose parent is gone (as a daemon's children after its kill -9) is found by
 * the entry it inherited and killed whole; a process without the entry is left.
 */
static void test_marked_kill(void **state)
{
	struct marked_seen ms = {0};
	char marker[64];
	pid_t tree, other;
	int status;

	snprintf(marker, sizeof(marker), "KUMO_CHILD_MARK=%d", (int)getpid());
	tree = fork();
	if (tree == 0) {
		char *env[] = {marker, "PATH=/usr/bin:/bin", NULL};

		execle("/bin/sh", "sh", "-c", "sleep 60 & sleep 60 & wait", (char *)NULL, env);
		_exit(127);
	}
	other = fork();
	if (other == 0) {
		char *env[] = {"KUMO_CHILD_MARK=other", "PATH=/usr/bin:/bin", NULL};

		execle("/bin/sh", "sh", "-c", "exec sleep 60", (char *)NULL, env);
		_exit(127);
	}
	/* Both sleeps started: sh and two children hold the entry. */
	for (int i = 0; i < 500; i++) {
		_cleanup_free_ char *path = xasprintf("/proc/%d/task/%d/children", (int)tree,
						      (int)tree),
				    *text = NULL;

		if (file_read_all(path, 4096, &text, NULL) == 0 && strchr(text, ' ') &&
		    strchr(strchr(text, ' ') + 1, ' '))
			break;
		usleep(10000);
	}
	assert_int_equal(child_marked_kill(marker, marked_found, &ms), 3);
	assert_int_equal(ms.n, 3);
	assert_int_equal(ms.whole, 3); /* each command line read before its kill */
	assert_int_equal(waitpid(tree, &status, 0), tree);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	assert_int_equal(child_marked_kill(marker, NULL, NULL), 0);
	assert_int_equal(waitpid(other, &status, WNOHANG), 0); /* unmarked: still runs */
	kill(other, SIGKILL);
	waitpid(other, &status, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exit_status_and_stderr),
		cmocka_unit_test(test_exit_by_signal),
		cmocka_unit_test(test_big_output_capped),
		cmocka_unit_test(test_timeout_kills_the_tree),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_run_wait_cancelled),
		cmocka_unit_test(test_run_sync_callers_data),
		cmocka_unit_test(test_abandon),
		cmocka_unit_test(test_stdin_env_cwd),
		cmocka_unit_test(test_merge_keeps_order),
		cmocka_unit_test(test_stdio_by_name),
		cmocka_unit_test(test_env_path),
		cmocka_unit_test(test_set_ids),
		cmocka_unit_test(test_cannot_start),
		cmocka_unit_test(test_marked_kill),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
