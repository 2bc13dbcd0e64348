/*
 * test_proc.c - common/proc.c: a child started with posix_spawn and heard through its
 * pidfd on a real loop, running real programs (sh, sleep): exit status and signal,
 * signals back at their defaults, its own session, directory and output file, an fd
 * above 2, a program that does not exist, a watch closed while the child runs on, and
 * a child reaped by someone else (status -1).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"
#include "util.h"

struct heard {
	int calls;
	int64_t status;
	int signal;
	bool closed;
};

static void exit_cb(struct proc_watch *w, int64_t status, int term_signal)
{
	struct heard *h = w->data;

	h->calls++;
	h->status = status;
	h->signal = term_signal;
}

static void closed_cb(struct proc_watch *w)
{
	((struct heard *)w->data)->closed = true;
}

/* Spawn argv (stdout to out_fd, or ignored when -1) in cwd, detached. Returns the pid. */
static pid_t spawn(char **argv, const char *cwd, int out_fd)
{
	uv_stdio_container_t stdio[3] = {
		{.flags = UV_IGNORE}, {.flags = UV_IGNORE}, {.flags = UV_IGNORE}};
	uv_process_options_t opts = {0};

	if (out_fd >= 0) {
		stdio[1].flags = UV_INHERIT_FD;
		stdio[1].data.fd = out_fd;
	}
	opts.file = argv[0];
	opts.args = argv;
	opts.cwd = cwd;
	opts.stdio = stdio;
	opts.stdio_count = 3;
	opts.flags = UV_PROCESS_DETACHED;
	return proc_spawn(&opts);
}

/* Watch pid until it ended; what was heard in h. */
static void watch_to_end(pid_t pid, struct heard *h)
{
	uv_loop_t loop;
	struct proc_watch w = {.data = h};

	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(proc_watch_start(&loop, &w, pid, exit_cb), 0);
	while (h->calls == 0)
		uv_run(&loop, UV_RUN_ONCE);
	proc_watch_close(&w, closed_cb);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_true(h->closed);
	assert_int_equal(uv_loop_close(&loop), 0);
	/* Reaped: no zombie is left. */
	assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);
}

static void test_exit_status(void **state)
{
	char *argv[] = {"sh", "-c", "exit 7", NULL};
	struct heard h = {0};
	pid_t pid = spawn(argv, NULL, -1);

	(void)state;
	assert_true(pid > 0);
	watch_to_end(pid, &h);
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.status, 7);
	assert_int_equal(h.signal, 0);
}

/* SIGPIPE ignored here (as the daemons do) is at its default in the child: it dies. */
static void test_signal_defaults(void **state)
{
	char *argv[] = {"sh", "-c", "kill -PIPE $$; exit 3", NULL};
	struct heard h = {0};
	pid_t pid;

	(void)state;
	signal(SIGPIPE, SIG_IGN);
	pid = spawn(argv, NULL, -1);
	signal(SIGPIPE, SIG_DFL);
	assert_true(pid > 0);
	watch_to_end(pid, &h);
	assert_int_equal(h.signal, SIGPIPE);
}

/* Detached: a session of its own, so it leads it (its sid is its pid). */
static void test_session_and_kill(void **state)
{
	char *argv[] = {"sleep", "30", NULL};
	struct heard h = {0};
	pid_t pid = spawn(argv, NULL, -1);

	(void)state;
	assert_true(pid > 0);
	assert_int_equal(getsid(pid), pid);
	assert_int_equal(kill(pid, SIGKILL), 0);
	watch_to_end(pid, &h);
	assert_int_equal(h.signal, SIGKILL);
}

static void test_cwd_and_output(void **state)
{
	char dir[] = "/tmp/kumo-test-proc-XXXXXX", path[64], buf[128] = "";
	char *argv[] = {"sh", "-c", "pwd", NULL};
	struct heard h = {0};
	int fd;
	pid_t pid;
	ssize_t n;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/out", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	pid = spawn(argv, dir, fd);
	close(fd);
	assert_true(pid > 0);
	watch_to_end(pid, &h);
	assert_int_equal(h.status, 0);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n > 0);
	buf[strcspn(buf, "\n")] = '\0';
	assert_string_equal(buf, dir);
	unlink(path);
	rmdir(dir);
}

/* A signal blocked here is not blocked in the child: it dies of it. */
static void test_signal_mask_empty(void **state)
{
	char *argv[] = {"sh", "-c", "kill -TERM $$; exit 3", NULL};
	struct heard h = {0};
	sigset_t term, old;
	pid_t pid;

	(void)state;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);
	pid = spawn(argv, NULL, -1);
	sigprocmask(SIG_SETMASK, &old, NULL);
	assert_true(pid > 0);
	watch_to_end(pid, &h);
	assert_int_equal(h.signal, SIGTERM);
}

/* stdin is /dev/null, not ours: here a pipe with a line in it (read would succeed). */
static void test_stdin_null(void **state)
{
	char *argv[] = {"sh", "-c", "read x", NULL};
	struct heard h = {0};
	int p[2], saved;
	pid_t pid;

	(void)state;
	assert_int_equal(pipe(p), 0);
	assert_int_equal(write(p[1], "line\n", 5), 5);
	close(p[1]);
	saved = dup(0);
	dup2(p[0], 0);
	close(p[0]);
	pid = spawn(argv, NULL, -1);
	dup2(saved, 0);
	close(saved);
	assert_true(pid > 0);
	watch_to_end(pid, &h);
	assert_int_equal(h.status, 1); /* read hit the end of /dev/null */
}

/* An output fd that is itself 0 (a daemon started with stdin closed) still gets it. */
static void test_output_fd_zero(void **state)
{
	char path[] = "/tmp/kumo-test-proc-out-XXXXXX", buf[16] = "";
	char *argv[] = {"sh", "-c", "echo hi", NULL};
	struct heard h = {0};
	int fd, saved;
	pid_t pid;

	(void)state;
	fd = mkstemp(path);
	assert_true(fd >= 0);
	saved = dup(0);
	dup2(fd, 0);
	close(fd);
	pid = spawn(argv, NULL, 0);
	dup2(saved, 0);
	close(saved);
	assert_true(pid > 0);
	watch_to_end(pid, &h);
	assert_int_equal(h.status, 0);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(read(fd, buf, sizeof(buf) - 1) > 0);
	close(fd);
	unlink(path);
	assert_string_equal(buf, "hi\n");
}

/* Our fd at at (kept in *saved, -1 if it was not open), now a copy of fd. */
static void fd_put(int fd, int at, int *saved)
{
	*saved = fcntl(at, F_DUPFD_CLOEXEC, 20);
	assert_int_equal(dup2(fd, at), at);
}

/* fd moved to 30 or above (CLOEXEC or not), out of the way of the slots. */
static int fd_high(int fd, bool cloexec)
{
	int high = fcntl(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, 30);

	assert_true(fd >= 0 && high >= 0);
	close(fd);
	return high;
}

static void fd_restore(int at, int saved)
{
	if (saved >= 0) {
		dup2(saved, at);
		close(saved);
	} else {
		close(at);
	}
}

static void file_read(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got;

	assert_true(fd >= 0);
	got = read(fd, buf, len - 1);
	close(fd);
	unlink(path);
	buf[got > 0 ? got : 0] = '\0';
}

/*
 * Slots above 2, as QEMU gets its QMP socket at 3. Our 3 is file a, our 4 file b, our
 * 5 an fd without CLOEXEC. Slot 1 and 4 get our 3, slot 3 our 4: the action that fills
 * 3 must not be taken before our 3 was copied for 4. Slot 5 is not given: the child
 * finds it closed, though ours is open and inheritable.
 */
static void test_fd_above_stdio(void **state)
{
	char a_path[] = "/tmp/kumo-test-proc-a-XXXXXX", b_path[] = "/tmp/kumo-test-proc-b-XXXXXX";
	char a[64], b[64];
	char *argv[] = {"sh", "-c",
			"echo three >&3; echo four >&4; if (true >&5) 2>/dev/null; then echo "
			"open; else echo closed; fi",
			NULL};
	uv_stdio_container_t stdio[6] = {{.flags = UV_IGNORE},	   {.flags = UV_INHERIT_FD},
					 {.flags = UV_IGNORE},	   {.flags = UV_INHERIT_FD},
					 {.flags = UV_INHERIT_FD}, {.flags = UV_IGNORE}};
	uv_process_options_t opts = {0};
	struct heard h = {0};
	int fa, fb, fn, saved3, saved4, saved5;
	pid_t pid;

	(void)state;
	/* Out of 3-5 first: the copies below must not land on one of them. */
	fa = fd_high(mkostemp(a_path, O_CLOEXEC), true);
	fb = fd_high(mkostemp(b_path, O_CLOEXEC), true);
	fn = fd_high(open("/dev/null", O_WRONLY | O_CLOEXEC), false); /* inheritable */
	fd_put(fa, 3, &saved3);
	fd_put(fb, 4, &saved4);
	fd_put(fn, 5, &saved5);
	stdio[1].data.fd = stdio[4].data.fd = 3;
	stdio[3].data.fd = 4;
	opts.file = argv[0];
	opts.args = argv;
	opts.stdio = stdio;
	opts.stdio_count = 6;
	pid = proc_spawn(&opts);
	fd_restore(3, saved3);
	fd_restore(4, saved4);
	fd_restore(5, saved5);
	close(fa);
	close(fb);
	close(fn);
	assert_true(pid > 0);
	watch_to_end(pid, &h);
	assert_int_equal(h.status, 0);
	file_read(a_path, a, sizeof(a));
	file_read(b_path, b, sizeof(b));
	assert_string_equal(b, "three\n");
	assert_string_equal(a, "four\nclosed\n");
}

/* Reaped by someone else before the loop looked (ECHILD): it ended, status -1, once. */
static void test_reaped_elsewhere(void **state)
{
	char *argv[] = {"sh", "-c", "exit 3", NULL};
	struct heard h = {0};
	struct proc_watch w = {.data = &h};
	uv_loop_t loop;
	int status = 0;
	pid_t pid = spawn(argv, NULL, -1);

	(void)state;
	assert_true(pid > 0);
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(proc_watch_start(&loop, &w, pid, exit_cb), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(WEXITSTATUS(status), 3);
	while (h.calls == 0)
		uv_run(&loop, UV_RUN_ONCE);
	proc_watch_close(&w, closed_cb);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.status, -1);
	assert_int_equal(h.signal, 0);
	assert_true(h.closed);
}

static void test_missing_program(void **state)
{
	char *argv[] = {"kumo-no-such-program", NULL};

	(void)state;
	assert_int_equal(spawn(argv, NULL, -1), -ENOENT);
}

/* A watch closed before the end leaves the child running, unwatched. */
static void test_close_early(void **state)
{
	char *argv[] = {"sleep", "30", NULL};
	struct heard h = {0};
	struct proc_watch w = {.data = &h};
	uv_loop_t loop;
	pid_t pid = spawn(argv, NULL, -1);

	(void)state;
	assert_true(pid > 0);
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(proc_watch_start(&loop, &w, pid, exit_cb), 0);
	proc_watch_close(&w, closed_cb);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_true(h.closed);
	assert_int_equal(h.calls, 0);
	assert_int_equal(kill(pid, 0), 0);
	kill(pid, SIGKILL);
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exit_status),	 cmocka_unit_test(test_signal_defaults),
		cmocka_unit_test(test_session_and_kill), cmocka_unit_test(test_cwd_and_output),
		cmocka_unit_test(test_missing_program),	 cmocka_unit_test(test_signal_mask_empty),
		cmocka_unit_test(test_stdin_null),	 cmocka_unit_test(test_output_fd_zero),
		cmocka_unit_test(test_close_early),	 cmocka_unit_test(test_fd_above_stdio),
		cmocka_unit_test(test_reaped_elsewhere),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
