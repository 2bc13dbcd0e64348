/*
 * test_link.c - the sealed JSON envelope of the agent link (common/link.c).
 *
 * Messages that link_msg_seal() would never produce are built by hand with
 * seal_pack(), as an attacker holding a stolen key or a buggy agent could.
 */
#include <stdio.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "link.h"
#include "seal.h"
#include "util.h"

static unsigned char key[SEAL_KEY_LEN];

static int setup(void **state)
{
	random_bytes(key, sizeof(key));
	return 0;
}

/*
 * Seal envelope text under header_host in direction dir, then try to open it as
 * the controller would. Returns link_msg_open()'s result; m is cleared afterwards.
 */
static int open_hand_built(char dir, char expect_dir, const char *header_host, const char *envelope,
			   struct kerr *err)
{
	unsigned char *buf = NULL;
	size_t buflen = 0;
	struct link_msg m;
	int ret;

	assert_int_equal(
		seal_pack(key, dir, header_host, envelope, strlen(envelope), &buf, &buflen, err),
		0);
	memset(&m, 0xa5, sizeof(m));
	err->msg[0] = '\0';
	ret = link_msg_open(key, expect_dir, buf, buflen, &m, err);
	if (ret < 0) {
		/* A refused message owns nothing. */
		assert_null(m.body);
		assert_true(err->msg[0] != '\0');
	}
	link_msg_clear(&m);
	free(buf);
	return ret;
}

static void test_round_trip_with_op_and_body(void **state)
{
	struct link_msg m = {.type = LINK_OP_PROGRESS, .seq = 1700000000123456LL}, got;
	unsigned char *buf = NULL;
	size_t buflen = 0;
	struct kerr err = {0};

	strcpy(m.host, "node-1");
	strcpy(m.op, "0123456789abcdef0123456789abcdef");
	m.body = json_object_new_object();
	json_object_object_add(m.body, "progress", json_object_new_int(40));
	json_object_object_add(m.body, "phase", json_object_new_string("probing kvm"));

	assert_int_equal(link_msg_seal(key, SEAL_DIR_TO_CONTROLLER, &m, &buf, &buflen, &err), 0);
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_CONTROLLER, buf, buflen, &got, &err), 0);
	assert_int_equal(got.type, LINK_OP_PROGRESS);
	assert_string_equal(got.host, "node-1");
	assert_int_equal(got.seq, 1700000000123456LL);
	assert_string_equal(got.op, m.op);
	assert_non_null(got.body);
	assert_true(json_object_is_type(got.body, json_type_object));
	assert_int_equal(json_object_object_length(got.body), 2);
	assert_int_equal(json_object_get_int(json_object_object_get(got.body, "progress")), 40);
	assert_string_equal(json_object_get_string(json_object_object_get(got.body, "phase")),
			    "probing kvm");

	link_msg_clear(&got);
	assert_null(got.body);
	link_msg_clear(&got); /* clearing twice is harmless */
	json_object_put(m.body);
	free(buf);
}

/* A query's deadline travels sealed; a message without one opens with 0. */
static void test_expires_round_trips(void **state)
{
	struct link_msg m = {.type = LINK_CMD_QUERY, .seq = 1700000000123456LL}, got;
	unsigned char *buf = NULL;
	size_t buflen = 0;
	struct kerr err = {0};

	strcpy(m.host, "node-1");
	strcpy(m.op, "0123456789abcdef0123456789abcdef");
	m.expires = 1700000005123456LL;
	assert_int_equal(link_msg_seal(key, SEAL_DIR_TO_AGENT, &m, &buf, &buflen, &err), 0);
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_AGENT, buf, buflen, &got, &err), 0);
	assert_int_equal(got.expires, 1700000005123456LL);
	link_msg_clear(&got);
	free(buf);
	buf = NULL;
	m.expires = 0;
	assert_int_equal(link_msg_seal(key, SEAL_DIR_TO_AGENT, &m, &buf, &buflen, &err), 0);
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_AGENT, buf, buflen, &got, &err), 0);
	assert_int_equal(got.expires, 0);
	link_msg_clear(&got);
	free(buf);
}

static void test_round_trip_without_op_or_body(void **state)
{
	struct link_msg m = {.type = LINK_HEARTBEAT, .seq = 7}, got;
	unsigned char *buf = NULL;
	size_t buflen = 0;
	struct kerr err = {0};

	strcpy(m.host, "h1");
	assert_int_equal(link_msg_seal(key, SEAL_DIR_TO_CONTROLLER, &m, &buf, &buflen, &err), 0);
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_CONTROLLER, buf, buflen, &got, &err), 0);
	assert_int_equal(got.type, LINK_HEARTBEAT);
	assert_string_equal(got.op, "");
	assert_non_null(got.body);
	assert_true(json_object_is_type(got.body, json_type_object));
	assert_int_equal(json_object_object_length(got.body), 0);
	link_msg_clear(&got);
	free(buf);
}

static void test_every_type_round_trips(void **state)
{
	for (int t = 0; t < LINK_TYPE_COUNT; t++) {
		struct link_msg m = {.type = (enum link_type)t, .seq = t + 1}, got;
		unsigned char *buf = NULL;
		size_t buflen = 0;
		struct kerr err = {0};

		strcpy(m.host, "h1");
		assert_int_equal(link_msg_seal(key, SEAL_DIR_TO_AGENT, &m, &buf, &buflen, &err), 0);
		assert_int_equal(link_msg_open(key, SEAL_DIR_TO_AGENT, buf, buflen, &got, &err), 0);
		assert_int_equal(got.type, t);
		link_msg_clear(&got);
		free(buf);
	}
}

/* The hand-built path itself works, so the refusals below are about content. */
static void test_hand_built_valid_envelope_accepted(void **state)
{
	struct kerr err = {0};

	assert_int_equal(open_hand_built(SEAL_DIR_TO_CONTROLLER, SEAL_DIR_TO_CONTROLLER, "h1",
					 "{\"type\":\"op-done\",\"host\":\"h1\",\"seq\":5,"
					 "\"op\":\"abc-123\",\"body\":{\"status\":\"succeeded\"}}",
					 &err),
			 0);
}

static void test_host_mismatch_rejected(void **state)
{
	struct kerr err = {0};

	/* Sealed under h1's header (and key) but claiming to be h2 inside. */
	assert_int_equal(open_hand_built(SEAL_DIR_TO_CONTROLLER, SEAL_DIR_TO_CONTROLLER, "h1",
					 "{\"type\":\"heartbeat\",\"host\":\"h2\",\"seq\":1,"
					 "\"body\":{}}",
					 &err),
			 -1);
	assert_non_null(strstr(err.msg, "host"));
	/* A prefix of the header host is not the same host either. */
	assert_int_equal(open_hand_built(SEAL_DIR_TO_CONTROLLER, SEAL_DIR_TO_CONTROLLER, "h10",
					 "{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1,"
					 "\"body\":{}}",
					 &err),
			 -1);
}

static void test_unknown_type_rejected(void **state)
{
	struct kerr err = {0};

	assert_int_equal(open_hand_built(SEAL_DIR_TO_AGENT, SEAL_DIR_TO_AGENT, "h1",
					 "{\"type\":\"reboot\",\"host\":\"h1\",\"seq\":1,"
					 "\"body\":{}}",
					 &err),
			 -1);
	assert_non_null(strstr(err.msg, "reboot"));
	assert_int_equal(open_hand_built(SEAL_DIR_TO_AGENT, SEAL_DIR_TO_AGENT, "h1",
					 "{\"type\":\"\",\"host\":\"h1\",\"seq\":1,\"body\":{}}",
					 &err),
			 -1);
	assert_int_equal(open_hand_built(SEAL_DIR_TO_AGENT, SEAL_DIR_TO_AGENT, "h1",
					 "{\"type\":7,\"host\":\"h1\",\"seq\":1,\"body\":{}}",
					 &err),
			 -1);
}

static void test_body_not_object_rejected(void **state)
{
	static const char *const envelopes[] = {
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1,\"body\":[]}",
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1,\"body\":\"facts\"}",
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1,\"body\":null}",
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1,\"body\":3}",
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1}",
	};
	struct kerr err = {0};

	for (size_t i = 0; i < sizeof(envelopes) / sizeof(envelopes[0]); i++) {
		if (open_hand_built(SEAL_DIR_TO_CONTROLLER, SEAL_DIR_TO_CONTROLLER, "h1",
				    envelopes[i], &err) == 0)
			fail_msg("accepted: %s", envelopes[i]);
		assert_non_null(strstr(err.msg, "body"));
	}
}

static void test_malformed_envelope_rejected(void **state)
{
	static const char *const envelopes[] = {
		/* not JSON, or not an object */
		"not json",
		"[1,2,3]",
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1,\"body\":{}} trailing",
		/* seq missing or not an integer */
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"body\":{}}",
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":\"1\",\"body\":{}}",
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1.5,\"body\":{}}",
		/* host missing */
		"{\"type\":\"heartbeat\",\"seq\":1,\"body\":{}}",
		/* an extra member */
		"{\"type\":\"heartbeat\",\"host\":\"h1\",\"seq\":1,\"body\":{},\"admin\":true}",
	};
	struct kerr err = {0};

	for (size_t i = 0; i < sizeof(envelopes) / sizeof(envelopes[0]); i++)
		if (open_hand_built(SEAL_DIR_TO_CONTROLLER, SEAL_DIR_TO_CONTROLLER, "h1",
				    envelopes[i], &err) == 0)
			fail_msg("accepted: %s", envelopes[i]);
}

static void test_malformed_op_id_rejected(void **state)
{
	static const char *const envelopes[] = {
		"{\"type\":\"op-done\",\"host\":\"h1\",\"seq\":1,\"op\":\"ABC\",\"body\":{}}",
		"{\"type\":\"op-done\",\"host\":\"h1\",\"seq\":1,\"op\":\"a/b\",\"body\":{}}",
		"{\"type\":\"op-done\",\"host\":\"h1\",\"seq\":1,\"op\":\"../x\",\"body\":{}}",
		"{\"type\":\"op-done\",\"host\":\"h1\",\"seq\":1,\"op\":\"a b\",\"body\":{}}",
		/* 41 characters: one over LINK_OP_ID_MAX */
		"{\"type\":\"op-done\",\"host\":\"h1\",\"seq\":1,"
		"\"op\":\"0123456789012345678901234567890123456789a\",\"body\":{}}",
		"{\"type\":\"op-done\",\"host\":\"h1\",\"seq\":1,\"op\":42,\"body\":{}}",
	};
	struct kerr err = {0};

	for (size_t i = 0; i < sizeof(envelopes) / sizeof(envelopes[0]); i++)
		if (open_hand_built(SEAL_DIR_TO_CONTROLLER, SEAL_DIR_TO_CONTROLLER, "h1",
				    envelopes[i], &err) == 0)
			fail_msg("accepted: %s", envelopes[i]);

	/* 40 characters is the longest id allowed. */
	assert_int_equal(open_hand_built(SEAL_DIR_TO_CONTROLLER, SEAL_DIR_TO_CONTROLLER, "h1",
					 "{\"type\":\"op-done\",\"host\":\"h1\",\"seq\":1,"
					 "\"op\":\"0123456789012345678901234567890123456789\","
					 "\"body\":{}}",
					 &err),
			 0);
}

static void test_wrong_direction_rejected(void **state)
{
	struct link_msg m = {.type = LINK_CMD_PROBE, .seq = 1}, got;
	unsigned char *buf = NULL;
	size_t buflen = 0;
	struct kerr err = {0};

	strcpy(m.host, "h1");
	strcpy(m.op, "abc");
	/* A command the controller sent, reflected back at the controller. */
	assert_int_equal(link_msg_seal(key, SEAL_DIR_TO_AGENT, &m, &buf, &buflen, &err), 0);
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_CONTROLLER, buf, buflen, &got, &err), -1);
	assert_null(got.body);
	assert_non_null(strstr(err.msg, "direction"));
	/* The same bytes open fine in the direction they were sealed for. */
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_AGENT, buf, buflen, &got, &err), 0);
	link_msg_clear(&got);
	free(buf);
}

static void test_wrong_key_and_tampering_rejected(void **state)
{
	struct link_msg m = {.type = LINK_HEARTBEAT, .seq = 1}, got;
	unsigned char *buf = NULL, other[SEAL_KEY_LEN];
	size_t buflen = 0;
	struct kerr err = {0};

	strcpy(m.host, "h1");
	assert_int_equal(link_msg_seal(key, SEAL_DIR_TO_CONTROLLER, &m, &buf, &buflen, &err), 0);
	random_bytes(other, sizeof(other));
	assert_int_equal(link_msg_open(other, SEAL_DIR_TO_CONTROLLER, buf, buflen, &got, &err), -1);
	assert_null(got.body);
	buf[buflen - 1] ^= 1;
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_CONTROLLER, buf, buflen, &got, &err), -1);
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_CONTROLLER, (const unsigned char *)"KM1", 3,
				       &got, &err),
			 -1);
	free(buf);
}

static void test_oversize_message_rejected(void **state)
{
	size_t len = LINK_MSG_MAX + 1;
	unsigned char *buf = calloc(1, len);
	struct link_msg got;
	struct kerr err = {0};

	assert_non_null(buf);
	memcpy(buf, "KM1C\002h1", 7);
	assert_int_equal(link_msg_open(key, SEAL_DIR_TO_AGENT, buf, len, &got, &err), -1);
	assert_non_null(strstr(err.msg, "limit"));
	free(buf);
}

static void test_type_names(void **state)
{
	enum link_type t;

	for (int i = 0; i < LINK_TYPE_COUNT; i++) {
		const char *name = link_type_name((enum link_type)i);

		assert_non_null(name);
		assert_string_not_equal(name, "?");
		assert_int_equal(link_type_parse(name, &t), 0);
		assert_int_equal(t, i);
	}
	assert_string_equal(link_type_name(LINK_OP_DONE), "op-done");
	assert_string_equal(link_type_name(LINK_TYPE_COUNT), "?");
	assert_int_equal(link_type_parse("join", &t), -1);
	assert_int_equal(link_type_parse("", &t), -1);
	assert_int_equal(link_type_parse("HEARTBEAT", &t), -1);
}

static void test_op_ids(void **state)
{
	char id[LINK_OP_ID_MAX + 1], other[LINK_OP_ID_MAX + 1];

	link_op_id_new(id);
	link_op_id_new(other);
	assert_int_equal(strlen(id), 32);
	assert_true(link_op_id_valid(id));
	assert_string_not_equal(id, other);

	assert_true(link_op_id_valid("a"));
	assert_true(link_op_id_valid("probe-0001"));
	assert_true(link_op_id_valid("0123456789012345678901234567890123456789"));
	assert_false(link_op_id_valid(""));
	assert_false(link_op_id_valid("0123456789012345678901234567890123456789a"));
	assert_false(link_op_id_valid("Abc"));
	assert_false(link_op_id_valid("a_b"));
	assert_false(link_op_id_valid("a.b"));
}

/* The facts digest ignores the uptime (it rides beside it), sees every other change,
 * and leaves the document as it was. */
static void test_facts_digest(void **state)
{
	struct json_object *a = json_tokener_parse(
		"{\"cpus\": 4, \"uptime_s\": 10, \"instances\": [{\"name\": \"web1\"}]}");
	struct json_object *b = json_tokener_parse(
		"{\"cpus\": 4, \"uptime_s\": 99, \"instances\": [{\"name\": \"web1\"}]}");
	struct json_object *c = json_tokener_parse(
		"{\"cpus\": 4, \"uptime_s\": 10, \"instances\": [{\"name\": \"web2\"}]}");
	char da[LINK_FACTS_DIGEST_LEN + 1], db[LINK_FACTS_DIGEST_LEN + 1];
	char dc[LINK_FACTS_DIGEST_LEN + 1], again[LINK_FACTS_DIGEST_LEN + 1];

	(void)state;
	link_facts_digest(a, da);
	link_facts_digest(b, db);
	link_facts_digest(c, dc);
	assert_int_equal(strlen(da), LINK_FACTS_DIGEST_LEN);
	assert_string_equal(da, db);
	assert_string_not_equal(da, dc);
	/* The uptime is still there, and a second digest is the same. */
	assert_int_equal(json_object_get_int(json_object_object_get(a, "uptime_s")), 10);
	link_facts_digest(a, again);
	assert_string_equal(da, again);
	json_object_put(a);
	json_object_put(b);
	json_object_put(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_with_op_and_body),
		cmocka_unit_test(test_round_trip_without_op_or_body),
		cmocka_unit_test(test_expires_round_trips),
		cmocka_unit_test(test_every_type_round_trips),
		cmocka_unit_test(test_hand_built_valid_envelope_accepted),
		cmocka_unit_test(test_host_mismatch_rejected),
		cmocka_unit_test(test_unknown_type_rejected),
		cmocka_unit_test(test_body_not_object_rejected),
		cmocka_unit_test(test_malformed_envelope_rejected),
		cmocka_unit_test(test_malformed_op_id_rejected),
		cmocka_unit_test(test_wrong_direction_rejected),
		cmocka_unit_test(test_wrong_key_and_tampering_rejected),
		cmocka_unit_test(test_oversize_message_rejected),
		cmocka_unit_test(test_type_names),
		cmocka_unit_test(test_facts_digest),
		cmocka_unit_test(test_op_ids),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
