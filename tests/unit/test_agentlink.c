/*
 * test_agentlink.c - the controller's command socket pool (controllerd/agentlink.c)
 * against a fake agent: an NN_REP socket in this process (nanomsg inproc) that opens
 * the sealed commands and answers them as kumo-agentd does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "controllerd.h"
#include "util.h"

/* main.c owns the controller's state; the tests set the loop and the store. */
struct controller ctl;

#define AGENT_URL  "inproc://kumo-unit-agentlink"
#define WAIT_US	   (30 * 1000 * 1000) /* a bound for a busy machine, never a sleep */
#define QUERY_WAIT 60000

static char dir[64];
static struct host host;
static int agent = -1; /* the fake agent's NN_REP */
static int64_t agent_seq;

/* What the queries were answered (static: teardown may answer one after a failure). */
static struct answer {
	int calls;
	char error[256];
} answer;

static void stub_heartbeat(struct host *h, struct json_object *body)
{
}
static void stub_report(struct host *h, struct json_object *report, const char *why)
{
}
static void stub_progress(const char *op, struct json_object *body)
{
}
static int stub_done(struct host *h, const char *op, const char *status, struct json_object *result,
		     const char *error)
{
	return 0;
}
static int stub_nack(const char *op, const char *why)
{
	return 0;
}
static void stub_console(struct host *h, struct json_object *body)
{
}

static const struct agentlink_hooks hooks = {
	.heartbeat = stub_heartbeat,
	.report = stub_report,
	.progress = stub_progress,
	.done = stub_done,
	.nack = stub_nack,
	.console = stub_console,
};

static int setup(void **state)
{
	char path[96];
	struct kerr err = {0};
	int timeout = 100;

	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kumo-unit-agentlink.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/kumo.db", dir);
	/* /metrics counts operations from the store. */
	if (db_open(&ctl.db, path, &err) < 0 || db_migrate(ctl.db, DB_SCHEMA_VERSION, &err) < 0 ||
	    migrate_db_init(ctl.db, &err) < 0) {
		print_error("db: %s\n", err.msg);
		return -1;
	}
	ctl.loop = xmalloc(sizeof(*ctl.loop));
	uv_loop_init(ctl.loop);
	agentlink_hooks_set(&hooks);

	agent = nn_socket(AF_SP, NN_REP);
	if (agent < 0 || nn_bind(agent, AGENT_URL) < 0)
		return -1;
	nn_setsockopt(agent, NN_SOL_SOCKET, NN_RCVTIMEO, &timeout, sizeof(timeout));

	memset(&answer, 0, sizeof(answer));
	memset(&host, 0, sizeof(host));
	host.id = 1;
	snprintf(host.name, sizeof(host.name), "h1");
	memset(host.key, 0x5a, sizeof(host.key));
	host.address = xstrdup(AGENT_URL);
	host.state = HOST_ONLINE;
	host.req_sock = -1;
	ctl.hosts = &host;
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	agentlink_deferred_fail(&host, "the test is over");
	agentlink_host_disconnect(&host);
	uv_run(ctl.loop, UV_RUN_NOWAIT); /* the polls' close callbacks free them */
	ctl.hosts = NULL;
	free(host.address);
	nn_close(agent);
	agent = -1;
	uv_loop_close(ctl.loop);
	free(ctl.loop);
	ctl.loop = NULL;
	db_close(ctl.db);
	ctl.db = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void answer_cb(struct json_object *body, const char *error, void *cls)
{
	struct answer *a = cls;

	a->calls++;
	snprintf(a->error, sizeof(a->error), "%s", error ? error : "");
}

/* The fake agent takes the next command (running the controller's loop meanwhile). */
static void agent_recv(struct link_msg *m)
{
	int64_t until = now_us() + WAIT_US;
	struct kerr err;

	for (;;) {
		unsigned char *buf = NULL;
		int n;

		uv_run(ctl.loop, UV_RUN_NOWAIT);
		n = nn_recv(agent, &buf, NN_MSG, 0); /* NN_RCVTIMEO bounds it */
		if (n >= 0) {
			int ret =
				link_msg_open(host.key, SEAL_DIR_TO_AGENT, buf, (size_t)n, m, &err);

			nn_freemsg(buf);
			assert_int_equal(ret, 0);
			return;
		}
		if (now_us() > until)
			fail_msg("the fake agent got no command in %d s", WAIT_US / 1000000);
	}
}

/* The fake agent acks op with body (consumed). */
static void agent_ack(const char *op, struct json_object *body)
{
	struct link_msg m = {.type = LINK_ACK, .body = body};
	unsigned char *buf;
	size_t len;
	struct kerr err;

	snprintf(m.host, sizeof(m.host), "%s", host.name);
	snprintf(m.op, sizeof(m.op), "%s", op);
	m.seq = seal_seq_next(&agent_seq);
	assert_int_equal(link_msg_seal(host.key, SEAL_DIR_TO_CONTROLLER, &m, &buf, &len, &err), 0);
	assert_int_equal(nn_send(agent, buf, len, 0), (int)len);
	free(buf);
	json_object_put(body);
}

/* Run the controller's loop until its reply to the in-flight command is handled. */
static void reply_wait(void)
{
	int64_t until = now_us() + WAIT_US;

	while (host.inflight) {
		uv_run(ctl.loop, UV_RUN_NOWAIT);
		if (now_us() > until)
			fail_msg("the controller did not take the agent's reply in %d s",
				 WAIT_US / 1000000);
		usleep(1000);
	}
}

static struct json_object *exec_body(void)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "what", json_object_new_string("exec"));
	return body;
}

static bool metrics_say(const char *line)
{
	_cleanup_free_ char *text = metrics_render();

	return strstr(text, line) != NULL;
}

/*
 * A query the agent acks as deferred (an exec) leaves the host with nothing to send:
 * its command socket goes back to the pool, idle, as after any other reply. It did
 * not once, and each exec stranded one of the pool's sockets.
 */
static void test_deferred_ack_frees_socket(void **state)
{
	struct link_msg m;
	struct json_object *deferred = json_object_new_object();

	(void)state;
	agentlink_query_timeout(&host, exec_body(), QUERY_WAIT, answer_cb, &answer);
	assert_true(host.req_sock >= 0);
	agent_recv(&m);
	assert_int_equal(m.type, LINK_CMD_QUERY);
	assert_string_equal(json_get_str(m.body, "what", ""), "exec");
	json_object_object_add(deferred, "deferred", json_object_new_boolean(true));
	agent_ack(m.op, deferred);
	reply_wait();

	/* The answer is still to come (as a query-done event)... */
	assert_int_equal(answer.calls, 0);
	assert_non_null(host.deferred);
	assert_string_equal(host.deferred->op, m.op);
	/* ... but the socket serves others meanwhile. */
	assert_true(metrics_say("kumo_link_command_sockets{state=\"idle\"} 1\n"));
	assert_true(metrics_say("kumo_link_command_sockets{state=\"busy\"} 0\n"));
	assert_true(host.req_idle);
	link_msg_clear(&m);

	/* And the host's next command goes on the same socket. */
	agentlink_query_timeout(&host, exec_body(), QUERY_WAIT, answer_cb, &answer);
	assert_false(host.req_idle);
	assert_true(metrics_say("kumo_link_command_sockets{state=\"busy\"} 1\n"));
	agent_recv(&m);
	agent_ack(m.op, json_object_new_object());
	reply_wait();
	assert_int_equal(answer.calls, 1);
	assert_string_equal(answer.error, "");
	assert_true(host.req_idle);
	link_msg_clear(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_deferred_ack_frees_socket, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
