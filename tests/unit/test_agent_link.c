/*
 * test_agent_link.c - the agent's command socket (agentd/link.c) with its op cache
 * (agentd/opcache.c): a new command is acked only once its op id is on disk, that
 * write runs neither on the loop nor on libuv's shared pool, the replies keep their
 * order while a command waits for it, a stop drops the waiting command cleanly, and
 * an idempotent command (VF_IDEMPOTENT) waits for no write.
 *
 * The controller is two NN_REQ sockets in this process (nanomsg inproc) that seal
 * commands as controllerd/agentlink.c does; the drivers' entry points link.c calls
 * are stubs that record what ran.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>
#include <nanomsg/reqrep.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agentd.h"
#include "util.h"

#include "pool_fill.h"

#define AGENT_URL "inproc://kumo-unit-agent-link"
#define EVENT_URL "inproc://kumo-unit-agent-link-events"
#define WAIT_US	  (30 * 1000 * 1000) /* a bound for a busy machine, never a sleep */

static char dir[64], ops_path[96];
static uv_loop_t loop;
static struct agent_config cfg;
static struct agent agent;
static struct agent *a = &agent;
static int req1 = -1, req2 = -1, events = -1;
static int64_t tx_seq;

/* The loop turning: a timer counts its turns. */
static uv_timer_t ticker;
static atomic_int ticks;

/* The op ids' writer (on whatever thread opcache.c runs it): held until released. */
static atomic_bool write_hold, write_release, write_started, write_timed_out;
static atomic_int write_fail; /* the next writes fail with -EIO while > 0 */

/* libuv's pool (4 threads) full of long jobs, as four backups' disk reads fill it;
 * static, as the pool may still run them when a failed test has returned. */

/*
 * Every fsync and fdatasync the code makes lands here (the program's definitions come
 * before libc's). One on the loop's thread is counted: none may run there, as one
 * took hundreds of ms on a loaded host. One elsewhere waits while sync_hold is set.
 */
static pthread_t loop_thread;
static atomic_int loop_syncs;
static atomic_bool sync_hold, sync_started;

static void sync_wait(void)
{
	int64_t until = now_us() + WAIT_US;

	if (pthread_equal(pthread_self(), loop_thread)) {
		atomic_fetch_add(&loop_syncs, 1);
		return; /* never block the loop: the test sees the count */
	}
	atomic_store(&sync_started, true);
	while (atomic_load(&sync_hold) && now_us() < until)
		usleep(1000);
}

int fsync(int fd)
{
	sync_wait();
	return (int)syscall(SYS_fsync, fd);
}

int fdatasync(int fd)
{
	sync_wait();
	return (int)syscall(SYS_fdatasync, fd);
}

/* What the stubs saw. */
static char started[4][LINK_OP_ID_MAX + 1];
static bool started_on_disk[4];
static int nstarted;

/* Whether the ops file holds op: the next run, loading it, would know op. */
static bool ops_file_has(const char *op)
{
	struct opcache *c = calloc(1, sizeof(*c));
	bool has;

	opcache_load(c, ops_path);
	has = opcache_find(c, op) != NULL;
	opcache_clear(c);
	free(c);
	return has;
}

/* ---- stubs of the drivers link.c hands commands to ---------------------------------- */

static void started_record(const char *op)
{
	assert_true(nstarted < 4);
	snprintf(started[nstarted], sizeof(started[nstarted]), "%s", op);
	started_on_disk[nstarted] = ops_file_has(op);
	nstarted++;
}

void probe_cmd_start(struct agent *ag, const char *op, struct json_object *body)
{
	(void)ag;
	(void)body;
	started_record(op);
}

int instance_cmd_check(struct json_object *body, struct kerr *err)
{
	(void)body;
	(void)err;
	return 0;
}

static char started_key[80]; /* args.key as the last instance command saw it */

void instance_cmd_start(struct agent *ag, const char *op, struct json_object *body)
{
	(void)ag;
	snprintf(started_key, sizeof(started_key), "%s",
		 json_get_str(json_object_object_get(body, "args"), "key", ""));
	started_record(op);
}

static int64_t query_saw_seq; /* what link.seq held when the last query ran */

/* Every query is answered in its ack with {"query": op}. */
int instance_query(struct agent *ag, const char *op, struct json_object *body,
		   struct json_object **answer, struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/link.seq", dir), *text = NULL;

	query_saw_seq = file_read_all(path, 64, &text, NULL) == 0 ? strtoll(text, NULL, 10) : 0;
	(void)ag;
	(void)body;
	(void)err;
	*answer = json_object_new_object();
	json_object_object_add(*answer, "query", json_object_new_string(op));
	return 0;
}

struct json_object *job_cancel_cmd(struct agent *ag, const char *op, struct json_object *body,
				   struct kerr *err)
{
	(void)ag;
	(void)op;
	(void)body;
	err_set(err, 0, "no jobs here");
	return NULL;
}

bool lease_heartbeat_allowed(struct agent *ag)
{
	(void)ag;
	return true;
}

void console_relays_resume(struct agent *ag)
{
	(void)ag;
}

void vnc_streams_resume(struct agent *ag)
{
	(void)ag;
}

/* ---- the fixture ---------------------------------------------------------------------- */

/* The writer: file_write_atomic(), after waiting for the test when write_hold is set. */
static int write_cb(const char *path, const char *text, size_t len, bool append)
{
	int64_t until = now_us() + WAIT_US;

	atomic_store(&write_started, true);
	while (atomic_load(&write_hold) && !atomic_load(&write_release)) {
		if (now_us() > until) {
			atomic_store(&write_timed_out, true);
			break;
		}
		usleep(1000);
	}
	if (atomic_load(&write_fail) > 0) {
		atomic_fetch_sub(&write_fail, 1);
		return -EIO;
	}
	return opcache_write_file(path, text, len, append);
}

static void tick_cb(uv_timer_t *t)
{
	(void)t;
	atomic_fetch_add(&ticks, 1);
}

static int setup(void **state)
{
	struct kerr err;

	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kumo-unit-agent-link.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(ops_path, sizeof(ops_path), "%s/ops", dir);
	uv_loop_init(&loop);
	uv_timer_init(&loop, &ticker);
	uv_timer_start(&ticker, tick_cb, 1, 1);
	uv_unref((uv_handle_t *)&ticker);
	atomic_store(&ticks, 0);
	atomic_store(&write_hold, false);
	atomic_store(&write_release, false);
	atomic_store(&write_started, false);
	atomic_store(&write_timed_out, false);
	atomic_store(&write_fail, 0);
	atomic_store(&loop_syncs, 0);
	atomic_store(&sync_hold, false);
	atomic_store(&sync_started, false);
	loop_thread = pthread_self();
	nstarted = 0;
	query_saw_seq = 0;
	tx_seq = 0; /* a fresh agent's window: seqs at our clock again */

	memset(&agent, 0, sizeof(agent));
	memset(&cfg, 0, sizeof(cfg));
	cfg.state_dir = dir;
	a->cfg = &cfg;
	a->loop = &loop;
	a->started_us = now_us();
	a->lane = work_lane_new(&loop);
	snprintf(a->link.host, sizeof(a->link.host), "h1");
	random_bytes(a->link.key, sizeof(a->link.key));
	opcache_init(&a->ops, &loop, link_ops_written, a);
	a->ops.write = write_cb;
	opcache_load(&a->ops, ops_path);

	events = nn_socket(AF_SP, NN_PULL);
	a->rep_sock = nn_socket(AF_SP, NN_REP);
	a->push_sock = nn_socket(AF_SP, NN_PUSH);
	if (events < 0 || nn_bind(events, EVENT_URL) < 0 || a->rep_sock < 0 ||
	    nn_bind(a->rep_sock, AGENT_URL) < 0 || a->push_sock < 0 ||
	    nn_connect(a->push_sock, EVENT_URL) < 0)
		return -1;
	if (link_watch(a, &err) < 0) {
		print_error("%s\n", err.msg);
		return -1;
	}
	req1 = nn_socket(AF_SP, NN_REQ);
	req2 = nn_socket(AF_SP, NN_REQ);
	if (req1 < 0 || req2 < 0 || nn_connect(req1, AGENT_URL) < 0 ||
	    nn_connect(req2, AGENT_URL) < 0)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	atomic_store(&write_release, true);
	atomic_store(&sync_hold, false);
	pool_fill_release(); /* a failed test_not_behind_pool's jobs end */
	a->stopping = true;
	link_close(a);
	work_lane_close(a->lane);
	a->lane = NULL;
	uv_close((uv_handle_t *)&ticker, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	link_sockets_release(a);
	assert_int_equal(uv_loop_close(&loop), 0);
	nn_close(req1);
	nn_close(req2);
	nn_close(events);
	req1 = req2 = events = -1;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		return -1;
	/* Whatever the test did, nothing waited for the disk on the loop. */
	if (atomic_load(&loop_syncs) != 0) {
		print_error("%d fsyncs on the loop's thread\n", atomic_load(&loop_syncs));
		return -1;
	}
	return 0;
}

/* Seal a command (or query) of type for op, as the controller does, and send it on req. */
/* Seal a command of type for op with body (taken), as the controller does; send it on req. */
static void send_cmd_body(int req, enum link_type type, const char *op, struct json_object *body)
{
	struct link_msg m = {.type = type, .body = body};
	unsigned char *buf;
	size_t len;
	struct kerr err;

	snprintf(m.host, sizeof(m.host), "h1");
	snprintf(m.op, sizeof(m.op), "%s", op);
	m.seq = seal_seq_next(&tx_seq);
	if (type == LINK_CMD_QUERY)
		m.expires = now_us() + WAIT_US;
	assert_int_equal(link_msg_seal(a->link.key, SEAL_DIR_TO_AGENT, &m, &buf, &len, &err), 0);
	assert_true(nn_send(req, buf, len, NN_DONTWAIT) >= 0);
	free(buf);
	json_object_put(m.body);
}

static void send_cmd(int req, enum link_type type, const char *op)
{
	send_cmd_body(req, type, op, json_object_new_object());
}

/* A reply the agent sent: its type, op, seq and body's query (if any). */
struct reply {
	bool got;
	enum link_type type;
	char op[LINK_OP_ID_MAX + 1];
	int64_t seq;
	char query[LINK_OP_ID_MAX + 1];
	int at; /* the order replies came in, from 1 */
};
static int nreplies;

/* Take a reply from req into r if one is there. */
static void reply_try(int req, struct reply *r)
{
	unsigned char *buf = NULL;
	struct link_msg m;
	struct kerr err;
	int n;

	if (r->got)
		return;
	n = nn_recv(req, &buf, NN_MSG, NN_DONTWAIT);
	if (n < 0)
		return;
	assert_int_equal(
		link_msg_open(a->link.key, SEAL_DIR_TO_CONTROLLER, buf, (size_t)n, &m, &err), 0);
	nn_freemsg(buf);
	r->got = true;
	r->type = m.type;
	snprintf(r->op, sizeof(r->op), "%s", m.op);
	r->seq = m.seq;
	snprintf(r->query, sizeof(r->query), "%s", json_get_str(m.body, "query", ""));
	r->at = ++nreplies;
	link_msg_clear(&m);
}

/* Run the loop (and take replies) until done() or the bound; false at the bound. */
static bool run_until(bool (*done)(void), struct reply *r1, struct reply *r2)
{
	int64_t until = now_us() + WAIT_US;

	while (!done()) {
		uv_run(&loop, UV_RUN_NOWAIT);
		if (r1)
			reply_try(req1, r1);
		if (r2)
			reply_try(req2, r2);
		if (now_us() > until)
			return done();
		usleep(200); /* the lane and nanomsg's threads work meanwhile */
	}
	return true;
}

static struct reply *want1, *want2;
static int want_ticks;
static bool got_first(void)
{
	return want1->got;
}
static bool got_both(void)
{
	return want1->got && want2->got;
}
static bool write_begun(void)
{
	return atomic_load(&write_started);
}
static bool ticked(void)
{
	return atomic_load(&ticks) >= want_ticks;
}
static bool lane_closed(void)
{
	return a->ops.lane == NULL;
}

/*
 * A command's ack waits for its op id on disk, the loop turning meanwhile (the write
 * is not on it); a query sent meanwhile on another socket is answered only after
 * that ack, and the command starts with its id on disk.
 */
static void test_ack_after_id_on_disk_in_order(void **state)
{
	struct reply r1 = {0}, r2 = {0};

	(void)state;
	nreplies = 0;
	atomic_store(&write_hold, true);
	send_cmd(req1, LINK_CMD_PROBE, "op-a");
	assert_true(run_until(write_begun, NULL, NULL));
	send_cmd(req2, LINK_CMD_QUERY, "op-b");
	/* The loop turns while the id is written; nothing is answered meanwhile. */
	want_ticks = atomic_load(&ticks) + 50;
	if (!run_until(ticked, &r1, &r2) || atomic_load(&write_timed_out))
		fail_msg("the loop stood still while the op id was written");
	assert_false(r1.got);
	assert_false(r2.got);
	assert_int_equal(nstarted, 0);

	atomic_store(&write_release, true);
	want1 = &r1;
	want2 = &r2;
	if (!run_until(got_both, &r1, &r2))
		fail_msg("replies missing after the write: command %s, query %s",
			 r1.got ? "answered" : "not answered",
			 r2.got ? "answered" : "not answered");
	assert_int_equal(r1.type, LINK_ACK);
	assert_string_equal(r1.op, "op-a");
	assert_int_equal(r2.type, LINK_ACK);
	assert_string_equal(r2.op, "op-b");
	assert_string_equal(r2.query, "op-b");
	assert_true(r1.at < r2.at);
	assert_true(r1.seq < r2.seq);
	assert_int_equal(nstarted, 1);
	assert_string_equal(started[0], "op-a");
	assert_true(started_on_disk[0]);

	/* The same command again (its ack was lost): acked again, not run twice. */
	memset(&r1, 0, sizeof(r1));
	send_cmd(req1, LINK_CMD_PROBE, "op-a");
	want1 = &r1;
	assert_true(run_until(got_first, &r1, NULL));
	assert_int_equal(r1.type, LINK_ACK);
	assert_int_equal(nstarted, 1);
}

/*
 * The controller resends a command whose ack is overdue (its disk is slow): the
 * command runs once, and the resend is acked (the REQ socket drops the stale reply
 * to the first copy).
 */
static void test_resend_while_held(void **state)
{
	struct reply r1 = {0};

	(void)state;
	atomic_store(&write_hold, true);
	send_cmd(req1, LINK_CMD_PROBE, "op-r");
	assert_true(run_until(write_begun, NULL, NULL));
	send_cmd(req1, LINK_CMD_PROBE, "op-r"); /* a fresh seq, as agentlink.c resends */
	atomic_store(&write_release, true);
	want1 = &r1;
	if (!run_until(got_first, &r1, NULL))
		fail_msg("the resent command was not acked in %d s", WAIT_US / 1000000);
	assert_int_equal(r1.type, LINK_ACK);
	assert_string_equal(r1.op, "op-r");
	assert_int_equal(nstarted, 1);
	assert_true(started_on_disk[0]);
}

/*
 * The op id cannot be written (EIO): the command is refused with the reason and does
 * not run (acked and run, a restart could run its resend again); its id is forgotten,
 * so the resend, once the disk writes again, is taken and run once.
 */
static void test_failed_write_refuses(void **state)
{
	struct reply r1 = {0};

	(void)state;
	atomic_store(&write_fail, 1);
	send_cmd(req1, LINK_CMD_PROBE, "op-f");
	want1 = &r1;
	assert_true(run_until(got_first, &r1, NULL));
	assert_int_equal(r1.type, LINK_NACK);
	assert_string_equal(r1.op, "op-f");
	assert_int_equal(nstarted, 0);
	assert_null(opcache_find(&a->ops, "op-f"));

	memset(&r1, 0, sizeof(r1));
	send_cmd(req1, LINK_CMD_PROBE, "op-f");
	assert_true(run_until(got_first, &r1, NULL));
	assert_int_equal(r1.type, LINK_ACK);
	assert_int_equal(nstarted, 1);
	assert_string_equal(started[0], "op-f");
	assert_true(started_on_disk[0]);
}

/*
 * A command's secret (an encrypted store's key in args) reaches its start intact
 * though the command waited for its id's write: the message's copy is wiped when the
 * message is cleared, before the held command starts. (It was not: the backup then
 * ran without its key, its data in the clear in an encrypted store.)
 */
static void test_held_command_keeps_its_secret(void **state)
{
	const char *key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
	struct json_object *body = json_object_new_object(), *args = json_object_new_object();
	struct reply r1 = {0};

	(void)state;
	json_object_object_add(args, "key", json_object_new_string(key));
	json_object_object_add(body, "action", json_object_new_string("backup"));
	json_object_object_add(body, "instance", json_object_new_object());
	json_object_object_add(body, "args", args);
	atomic_store(&write_hold, true);
	send_cmd_body(req1, LINK_CMD_INSTANCE, "op-k", body);
	assert_true(run_until(write_begun, NULL, NULL));
	atomic_store(&write_release, true);
	want1 = &r1;
	assert_true(run_until(got_first, &r1, NULL));
	assert_int_equal(r1.type, LINK_ACK);
	assert_int_equal(nstarted, 1);
	assert_string_equal(started_key, key);
}

/* A command is acked (its id written) while every thread of libuv's pool is busy. */
static void test_not_behind_pool(void **state)
{
	struct reply r1 = {0};

	(void)state;
	assert_int_equal(pool_fill(&loop), 0);
	send_cmd(req1, LINK_CMD_PROBE, "op-p");
	want1 = &r1;
	if (!run_until(got_first, &r1, NULL))
		fail_msg("the command was not acked in %d s", WAIT_US / 1000000);
	assert_false(pool_fill_any_done()); /* the pool is still full, and the ack came */
	assert_int_equal(r1.type, LINK_ACK);
	assert_true(ops_file_has("op-p"));
	pool_fill_drain(&loop);
}

/*
 * The agent stops while a command's id is written: the command is neither acked nor
 * run, and its id is written out again before the loop ends, so the next run takes
 * the controller's resend as new (not as half done by this one).
 */
static void test_stop_drops_held(void **state)
{
	struct opcache *next_run;
	struct reply r1 = {0};

	(void)state;
	send_cmd(req1, LINK_CMD_PROBE, "op-old");
	want1 = &r1;
	assert_true(run_until(got_first, &r1, NULL));
	atomic_store(&write_hold, true);
	atomic_store(&write_started, false);
	memset(&r1, 0, sizeof(r1));
	send_cmd(req1, LINK_CMD_PROBE, "op-c");
	assert_true(run_until(write_begun, NULL, NULL));

	a->stopping = true; /* agent_stop()'s order: link_close() last */
	link_close(a);
	atomic_store(&write_release, true);
	assert_true(run_until(lane_closed, &r1, NULL));
	reply_try(req1, &r1);
	assert_false(r1.got);
	assert_int_equal(nstarted, 1); /* op-old only */
	assert_true(ops_file_has("op-old"));
	assert_false(ops_file_has("op-c"));

	next_run = calloc(1, sizeof(*next_run));
	opcache_load(next_run, ops_path);
	assert_non_null(opcache_find(next_run, "op-old"));
	assert_null(opcache_find(next_run, "op-c"));
	opcache_clear(next_run);
	free(next_run);
}

static bool sync_begun(void)
{
	return atomic_load(&sync_started);
}

/*
 * A query whose seq is ahead of our clock (the controller's runs ahead): link.seq must
 * keep that seq before the query runs, or a replay could run it again after a power
 * cut. The write and its fsyncs are not on the loop (which turns meanwhile), and the
 * query runs only once they are done.
 */
static void test_seq_ahead_kept_off_loop(void **state)
{
	struct reply r1 = {0};
	int64_t seq;

	(void)state;
	atomic_store(&sync_hold, true);
	tx_seq = now_us() + 5 * 1000000LL; /* 5 s ahead */
	send_cmd(req1, LINK_CMD_QUERY, "op-q");
	seq = tx_seq;
	want_ticks = atomic_load(&ticks) + 50;
	if (!run_until(ticked, &r1, NULL))
		fail_msg("the loop stood still while link.seq was written");
	assert_int_equal(atomic_load(&loop_syncs), 0);
	if (r1.got)
		fail_msg("the query was answered before link.seq was on disk");
	assert_true(run_until(sync_begun, NULL, NULL));

	atomic_store(&sync_hold, false);
	want1 = &r1;
	assert_true(run_until(got_first, &r1, NULL));
	assert_int_equal(r1.type, LINK_ACK);
	assert_string_equal(r1.query, "op-q");
	assert_true(query_saw_seq == seq); /* on disk when it ran */

	/* The next request is read again, and nothing fsynced on the loop. */
	memset(&r1, 0, sizeof(r1));
	send_cmd(req1, LINK_CMD_PROBE, "op-s");
	assert_true(run_until(got_first, &r1, NULL));
	assert_int_equal(r1.type, LINK_ACK);
	assert_int_equal(nstarted, 1);
	assert_int_equal(atomic_load(&loop_syncs), 0);
}

/*
 * The cache is full (AGENT_OPCACHE_SIZE ops): a new command evicts the oldest op's id.
 * The agent stops while the new id is written, dropping the command: the evicted id
 * comes back, in memory and on disk, so a very late resend of that old op is still
 * known to the next run (answered, never run again) rather than taken as new.
 */
static void test_stop_puts_back_evicted(void **state)
{
	char text[AGENT_OPCACHE_SIZE * 16] = "", id[16];
	struct opcache *next_run;
	size_t len = 0;

	(void)state;
	for (int i = 0; i < AGENT_OPCACHE_SIZE; i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len, "old-%03d\n", i);
	assert_int_equal(file_write_replace(ops_path, text, len, 0600), 0);
	opcache_clear(&a->ops);
	opcache_load(&a->ops, ops_path);
	assert_non_null(opcache_find(&a->ops, "old-000"));

	atomic_store(&write_hold, true);
	send_cmd(req1, LINK_CMD_PROBE, "op-e");
	assert_true(run_until(write_begun, NULL, NULL));
	assert_null(opcache_find(&a->ops, "old-000")); /* evicted by op-e */

	a->stopping = true; /* agent_stop()'s order: link_close() last */
	link_close(a);
	atomic_store(&write_release, true);
	assert_true(run_until(lane_closed, NULL, NULL));
	assert_int_equal(nstarted, 0);
	assert_false(ops_file_has("op-e"));
	if (!ops_file_has("old-000"))
		fail_msg("the op id op-e evicted is gone from the ops file after op-e was dropped");
	/* ... and it is the oldest again (the file is oldest first): the next add evicts it. */
	{
		_cleanup_free_ char *ops = NULL;

		assert_int_equal(file_read_all(ops_path, 64 * 1024, &ops, NULL), 0);
		if (strncmp(ops, "old-000\n", 8) != 0)
			fail_msg("old-000 came back, but not as the oldest: the ops file starts "
				 "%.16s",
				 ops);
	}

	next_run = calloc(1, sizeof(*next_run));
	opcache_load(next_run, ops_path);
	for (int i = 0; i < AGENT_OPCACHE_SIZE; i++) {
		snprintf(id, sizeof(id), "old-%03d", i);
		assert_non_null(opcache_find(next_run, id));
	}
	assert_null(opcache_find(next_run, "op-e"));
	opcache_clear(next_run);
	free(next_run);
}

/* An instance command's body with action (the stub check takes any instance). */
static struct json_object *instance_body(const char *action)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "action", json_object_new_string(action));
	json_object_object_add(body, "instance", json_object_new_object());
	return body;
}

/*
 * The disk is stuck: an idempotent command (resume, VF_IDEMPOTENT) is acked and
 * started at once, owes no write and stays out of the file, and its resend is acked
 * without a second run; a normal command (start) waits for its id's write.
 */
static void test_idempotent_not_held(void **state)
{
	struct reply r1 = {0};

	(void)state;
	atomic_store(&write_hold, true);
	send_cmd_body(req1, LINK_CMD_INSTANCE, "op-resume", instance_body("resume"));
	want1 = &r1;
	if (!run_until(got_first, &r1, NULL))
		fail_msg("the resume was not acked while the op ids' write was stuck%s",
			 atomic_load(&write_started) ? " (it waited for that write)" : "");
	assert_int_equal(r1.type, LINK_ACK);
	assert_string_equal(r1.op, "op-resume");
	assert_int_equal(nstarted, 1);
	assert_string_equal(started[0], "op-resume");
	assert_false(atomic_load(&write_started));

	memset(&r1, 0, sizeof(r1));
	send_cmd_body(req1, LINK_CMD_INSTANCE, "op-start", instance_body("start"));
	assert_true(run_until(write_begun, NULL, NULL));
	want_ticks = atomic_load(&ticks) + 50;
	if (!run_until(ticked, &r1, NULL) || atomic_load(&write_timed_out))
		fail_msg("the loop stood still while the op id was written");
	assert_false(r1.got);
	assert_int_equal(nstarted, 1);
	atomic_store(&write_release, true);
	if (!run_until(got_first, &r1, NULL))
		fail_msg("the start was not acked after its id's write");
	assert_int_equal(r1.type, LINK_ACK);
	assert_int_equal(nstarted, 2);
	assert_true(started_on_disk[1]);
	assert_true(ops_file_has("op-start"));
	assert_false(ops_file_has("op-resume"));

	/* Its ack was lost: the resend to this run is acked again, not run twice. */
	memset(&r1, 0, sizeof(r1));
	send_cmd_body(req1, LINK_CMD_INSTANCE, "op-resume", instance_body("resume"));
	assert_true(run_until(got_first, &r1, NULL));
	assert_int_equal(r1.type, LINK_ACK);
	assert_int_equal(nstarted, 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ack_after_id_on_disk_in_order, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_resend_while_held, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_behind_pool, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_write_refuses, setup, teardown),
		cmocka_unit_test_setup_teardown(test_held_command_keeps_its_secret, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_stop_drops_held, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_puts_back_evicted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seq_ahead_kept_off_loop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idempotent_not_held, setup, teardown),
	};

	setenv("UV_THREADPOOL_SIZE", "4", 1); /* POOL_FILL_THREADS, before the pool's first use */

	return cmocka_run_group_tests(tests, NULL, NULL);
}
