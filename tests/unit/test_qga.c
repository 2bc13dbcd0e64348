/*
 * test_qga.c - the guest agent client (agentd/qga.c) against a fake qemu-ga on a unix
 * socket, run by a thread: the sync answer found behind garbage and a stale answer, a
 * refusal whose text stays out of the reason, a flood cut at the read bound, no
 * socket at all.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agentd.h"

enum script {
	GUEST_GOOD,
	GUEST_REFUSES,
	GUEST_FLOODS
};

struct fake {
	int listen_fd;
	enum script script;
	char path[108];
	char cmd_seen[256];
};

struct result {
	bool done;
	int status;
	int64_t count;
	bool cmd_sent;
	char why[256];
};

/* Read up to and including a newline; returns the bytes read (0 at EOF). */
static size_t line_read(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n + 1 < len && read(fd, buf + n, 1) == 1)
		if (buf[n++] == '\n')
			break;
	buf[n] = '\0';
	return n;
}

static void send_all(int fd, const void *buf, size_t len)
{
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
}

static void *guest_run(void *arg)
{
	struct fake *f = arg;
	int fd = accept(f->listen_fd, NULL, NULL);
	char line[512], reply[128];
	const char *id;
	long long sync_id;

	if (f->script == GUEST_FLOODS) {
		static char flood[70 * 1024];

		memset(flood, 'A', sizeof(flood));
		send(fd, flood, sizeof(flood), MSG_NOSIGNAL);
		close(fd);
		return NULL;
	}
	line_read(fd, line, sizeof(line));
	/* 0xFF first, then the sync with our id. */
	assert_int_equal((unsigned char)line[0], 0xff);
	id = strstr(line, "\"id\":");
	assert_non_null(id);
	sync_id = atoll(id + 5);
	/* Garbage, an earlier call's answer, then ours. */
	send_all(fd, "junk{\"return\": 1}\n", 18);
	snprintf(reply, sizeof(reply), "\xff{\"return\": %lld}\n\xff{\"return\": %lld}\n",
		 sync_id + 1, sync_id);
	send_all(fd, reply, strlen(reply));
	line_read(fd, f->cmd_seen, sizeof(f->cmd_seen));
	if (f->script == GUEST_GOOD) {
		send_all(fd, "{\"return\": 3}\n", 14);
	} else {
		const char *no = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"evil\"}}\n";

		send_all(fd, no, strlen(no));
	}
	/* Stay until the client hung up. */
	while (read(fd, line, sizeof(line)) > 0)
		;
	close(fd);
	return NULL;
}

static void done_cb(int status, int64_t count, bool cmd_sent, const char *why, void *data)
{
	struct result *r = data;

	assert_false(r->done);
	r->done = true;
	r->status = status;
	r->count = count;
	r->cmd_sent = cmd_sent;
	snprintf(r->why, sizeof(r->why), "%s", why ? why : "");
}

/* Run one call against a fake guest following script; returns its result. */
static struct result call_run(enum script script, bool listen_at_all, char *cmd_seen,
			      size_t cmd_len)
{
	struct fake f = {.script = script, .listen_fd = -1};
	struct result r = {0};
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	pthread_t thread;
	uv_loop_t loop;

	snprintf(f.path, sizeof(f.path), "/tmp/kumo-test-qga.%d.sock", (int)getpid());
	unlink(f.path);
	if (listen_at_all) {
		f.listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", f.path);
		assert_int_equal(bind(f.listen_fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
		assert_int_equal(listen(f.listen_fd, 1), 0);
		pthread_create(&thread, NULL, guest_run, &f);
	}
	uv_loop_init(&loop);
	qga_cmd_run(&loop, f.path, "guest-fsfreeze-freeze", 2000, done_cb, &r);
	assert_false(r.done); /* never from inside the call */
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	if (listen_at_all) {
		pthread_join(thread, NULL);
		close(f.listen_fd);
	}
	unlink(f.path);
	if (cmd_seen)
		snprintf(cmd_seen, cmd_len, "%s", f.cmd_seen);
	assert_true(r.done);
	return r;
}

static void test_sync_through_garbage(void **state)
{
	char cmd[256];
	struct result r = call_run(GUEST_GOOD, true, cmd, sizeof(cmd));

	(void)state;
	assert_int_equal(r.status, 0);
	assert_int_equal(r.count, 3);
	assert_true(r.cmd_sent);
	assert_string_equal(cmd, "{\"execute\":\"guest-fsfreeze-freeze\"}\n");
}

static void test_refusal(void **state)
{
	struct result r = call_run(GUEST_REFUSES, true, NULL, 0);

	(void)state;
	assert_true(r.status < 0);
	assert_non_null(strstr(r.why, "refused guest-fsfreeze-freeze"));
	assert_null(strstr(r.why, "evil")); /* the guest's words never reach a result */
	assert_true(r.cmd_sent);
}

static void test_flood(void **state)
{
	struct result r = call_run(GUEST_FLOODS, true, NULL, 0);

	(void)state;
	assert_true(r.status < 0);
	assert_non_null(strstr(r.why, "more than"));
	assert_false(r.cmd_sent); /* no sync answer: the command never went out */
}

static void test_no_socket(void **state)
{
	struct result r = call_run(GUEST_GOOD, false, NULL, 0);

	(void)state;
	assert_int_equal(r.status, UV_ENOENT);
	assert_non_null(strstr(r.why, "no guest agent channel"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sync_through_garbage),
		cmocka_unit_test(test_refusal),
		cmocka_unit_test(test_flood),
		cmocka_unit_test(test_no_socket),
	};

	signal(SIGPIPE, SIG_IGN); /* as the agent: a guest that hung up is an error, not a death */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
