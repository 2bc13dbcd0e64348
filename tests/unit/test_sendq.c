/*
 * test_sendq.c - the agent's queue of events for the controller (agentd/sendq.c): when
 * it is full, console data and heartbeats give way, an op's end never does, and one
 * heartbeat waits at most, with the newest facts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agentd.h"
#include "util.h"

static struct json_object *body_n(int n)
{
	struct json_object *b = json_object_new_object();

	json_object_object_add(b, "n", json_object_new_int(n));
	return b;
}

static unsigned count(const struct sendq *q, enum link_type type)
{
	unsigned n = 0;

	for (const struct sendq_item *it = q->head; it; it = it->next)
		n += it->type == type;
	return n;
}

static void test_heartbeat_coalesced(void **state)
{
	struct sendq q = {0};

	(void)state;
	assert_int_equal(sendq_add(&q, LINK_HEARTBEAT, NULL, body_n(1)), -1);
	assert_int_equal(sendq_add(&q, LINK_OP_DONE, "op-1", body_n(2)), -1);
	assert_int_equal(sendq_add(&q, LINK_HEARTBEAT, NULL, body_n(3)), -1);
	assert_int_equal(q.len, 2);
	assert_int_equal(q.head->type, LINK_HEARTBEAT);
	assert_int_equal(json_get_int(q.head->body, "n", 0), 3); /* the newest facts */
	sendq_clear(&q);
	assert_null(q.head);
	assert_null(q.tail);
}

/* A digest-only beat replacing a queued one with the whole facts keeps those facts:
 * the controller would otherwise meet a digest it never saw. */
static void test_heartbeat_keeps_whole_facts(void **state)
{
	struct sendq q = {0};
	struct json_object *whole = body_n(1), *digest_only = body_n(2);

	(void)state;
	json_object_object_add(whole, "facts", json_object_new_string("F"));
	assert_int_equal(sendq_add(&q, LINK_HEARTBEAT, NULL, whole), -1);
	assert_int_equal(sendq_add(&q, LINK_HEARTBEAT, NULL, digest_only), -1);
	assert_int_equal(q.len, 1);
	assert_int_equal(json_get_int(q.head->body, "n", 0), 2);
	assert_string_equal(json_get_str(q.head->body, "facts", ""), "F");
	sendq_clear(&q);
}

/* A full queue of console data and progress, with one op-done and one heartbeat in it:
 * the console data goes first, then the heartbeat, then progress; never the op-done. */
static void test_full_drops_lowest_kind(void **state)
{
	struct sendq q = {0};
	int i;

	(void)state;
	assert_int_equal(sendq_add(&q, LINK_OP_DONE, "op-done", body_n(0)), -1);
	assert_int_equal(sendq_add(&q, LINK_HEARTBEAT, NULL, body_n(0)), -1);
	for (i = 0; i < AGENT_SENDQ_MAX - 4; i++)
		assert_int_equal(sendq_add(&q, LINK_OP_PROGRESS, "op-p", body_n(i)), -1);
	assert_int_equal(sendq_add(&q, LINK_CONSOLE_DATA, NULL, body_n(0)), -1);
	assert_int_equal(sendq_add(&q, LINK_CONSOLE_DATA, NULL, body_n(1)), -1);
	assert_int_equal(q.len, AGENT_SENDQ_MAX);

	assert_int_equal(sendq_add(&q, LINK_OP_DONE, "op-2", body_n(0)), LINK_CONSOLE_DATA);
	assert_int_equal(sendq_add(&q, LINK_OP_DONE, "op-3", body_n(0)), LINK_CONSOLE_DATA);
	assert_int_equal(sendq_add(&q, LINK_OP_DONE, "op-4", body_n(0)), LINK_HEARTBEAT);
	assert_int_equal(sendq_add(&q, LINK_OP_DONE, "op-5", body_n(0)), LINK_OP_PROGRESS);
	assert_int_equal(q.len, AGENT_SENDQ_MAX);
	assert_int_equal(count(&q, LINK_OP_DONE), 5);
	assert_int_equal(count(&q, LINK_CONSOLE_DATA), 0);
	/* The oldest op-done is still first: order is kept. */
	assert_string_equal(q.head->op, "op-done");
	/* The oldest progress went, not a newer one. */
	assert_int_equal(json_get_int(q.head->next->body, "n", -1), 1);
	sendq_clear(&q);
}

/* Only op ends queued: none is dropped (the queue passes its bound); console data
 * arriving then is the one that gives way. */
static void test_op_done_never_dropped(void **state)
{
	struct sendq q = {0};
	char op[32];
	int i;

	(void)state;
	for (i = 0; i < AGENT_SENDQ_MAX + 3; i++) {
		snprintf(op, sizeof(op), "op-%d", i);
		assert_int_equal(
			sendq_add(&q, i % 2 ? LINK_QUERY_DONE : LINK_OP_DONE, op, body_n(i)), -1);
	}
	assert_int_equal(q.len, AGENT_SENDQ_MAX + 3);
	assert_int_equal(sendq_add(&q, LINK_CONSOLE_DATA, NULL, body_n(0)), LINK_CONSOLE_DATA);
	assert_int_equal(sendq_add(&q, LINK_HEARTBEAT, NULL, body_n(0)), LINK_HEARTBEAT);
	assert_int_equal(q.len, AGENT_SENDQ_MAX + 3);
	assert_string_equal(q.head->op, "op-0");
	sendq_pop(&q);
	assert_string_equal(q.head->op, "op-1");
	sendq_clear(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_heartbeat_coalesced),
		cmocka_unit_test(test_heartbeat_keeps_whole_facts),
		cmocka_unit_test(test_full_drops_lowest_kind),
		cmocka_unit_test(test_op_done_never_dropped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
