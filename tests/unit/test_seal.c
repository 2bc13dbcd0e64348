/*
 * test_seal.c - the agent link's cryptography (common/seal.c): key agreement, the
 * sealed wire format, tamper detection and the replay window.
 */
#include <stdio.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "seal.h"
#include "util.h"

#define WINDOW_US (120LL * 1000000)
/* A fixed "now" in µs (2023-11-14), so the window tests do not depend on the clock. */
#define NOW_US 1700000000000000LL

static const char salt_a[] = "salt for the first join token....";
static const char info_a[] = "kumo-link-v1 0123456789abcdef h1";

struct pair {
	unsigned char priv[SEAL_KEY_LEN], pub[SEAL_PUB_LEN];
};

static void pair_new(struct pair *p)
{
	struct kerr err = {0};

	assert_int_equal(seal_keypair(p->priv, p->pub, &err), 0);
}

/* A random link key, as both ends would hold after the join. */
static void key_new(unsigned char key[SEAL_KEY_LEN])
{
	random_bytes(key, SEAL_KEY_LEN);
}

static size_t sealed_len(const char *host, size_t plainlen)
{
	return 3 + 2 + strlen(host) + SEAL_NONCE_LEN + plainlen + SEAL_TAG_LEN;
}

/* --- key agreement --- */

static void test_derive_both_sides_agree(void **state)
{
	struct pair agent, controller;
	unsigned char k1[SEAL_KEY_LEN], k2[SEAL_KEY_LEN], zero[SEAL_KEY_LEN] = {0};
	struct kerr err = {0};

	pair_new(&agent);
	pair_new(&controller);
	assert_memory_not_equal(agent.pub, controller.pub, SEAL_PUB_LEN);

	assert_int_equal(
		seal_derive(agent.priv, controller.pub, salt_a, sizeof(salt_a), info_a, k1, &err),
		0);
	assert_int_equal(
		seal_derive(controller.priv, agent.pub, salt_a, sizeof(salt_a), info_a, k2, &err),
		0);
	assert_memory_equal(k1, k2, SEAL_KEY_LEN);
	assert_memory_not_equal(k1, zero, SEAL_KEY_LEN);
}

static void test_derive_binds_salt_info_and_peer(void **state)
{
	struct pair a, b, c;
	unsigned char base[SEAL_KEY_LEN], k[SEAL_KEY_LEN];
	static const char salt_b[] = "salt for the second join token...";
	struct kerr err = {0};

	pair_new(&a);
	pair_new(&b);
	pair_new(&c);
	assert_int_equal(seal_derive(a.priv, b.pub, salt_a, sizeof(salt_a), info_a, base, &err), 0);

	/* Deterministic: the same inputs give the same key. */
	assert_int_equal(seal_derive(a.priv, b.pub, salt_a, sizeof(salt_a), info_a, k, &err), 0);
	assert_memory_equal(base, k, SEAL_KEY_LEN);

	assert_int_equal(seal_derive(a.priv, b.pub, salt_b, sizeof(salt_b), info_a, k, &err), 0);
	assert_memory_not_equal(base, k, SEAL_KEY_LEN);

	assert_int_equal(seal_derive(a.priv, b.pub, salt_a, sizeof(salt_a),
				     "kumo-link-v1 0123456789abcdef h2", k, &err),
			 0);
	assert_memory_not_equal(base, k, SEAL_KEY_LEN);

	assert_int_equal(seal_derive(a.priv, c.pub, salt_a, sizeof(salt_a), info_a, k, &err), 0);
	assert_memory_not_equal(base, k, SEAL_KEY_LEN);
}

/*
 * An all-zero public key is a small-order point: the shared secret would be zero
 * whatever our private key is, so a peer could force a known key.
 */
static void test_derive_rejects_small_order_peer(void **state)
{
	struct pair a;
	unsigned char zero_pub[SEAL_PUB_LEN] = {0}, k[SEAL_KEY_LEN];
	struct kerr err = {0};

	pair_new(&a);
	assert_true(seal_derive(a.priv, zero_pub, salt_a, sizeof(salt_a), info_a, k, &err) < 0);
	assert_true(err.msg[0] != '\0');
}

/* --- sealing --- */

static void test_seal_round_trip(void **state)
{
	unsigned char key[SEAL_KEY_LEN], *buf = NULL;
	/* Binary plaintext with a NUL inside: the length, not strlen, is what counts. */
	static const char plain[] = "{\"type\":\"heartbeat\"}\0tail";
	size_t buflen = 0, plainlen = 0;
	char *out = NULL;
	struct kerr err = {0};

	key_new(key);
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_CONTROLLER, "h1", plain, sizeof(plain), &buf,
				   &buflen, &err),
			 0);
	assert_non_null(buf);
	assert_int_equal(buflen, sealed_len("h1", sizeof(plain)));
	/* The clear header as documented in seal.h. */
	assert_memory_equal(buf, "KM1", 3);
	assert_int_equal(buf[3], SEAL_DIR_TO_CONTROLLER);
	assert_int_equal(buf[4], 2);
	assert_memory_equal(buf + 5, "h1", 2);
	/* The plaintext does not appear in the clear. */
	assert_null(memmem(buf, buflen, "heartbeat", 9));

	assert_int_equal(seal_open(key, buf, buflen, &out, &plainlen, &err), 0);
	assert_int_equal(plainlen, sizeof(plain));
	assert_memory_equal(out, plain, sizeof(plain));
	assert_int_equal(out[plainlen], '\0');
	free(out);
	free(buf);
}

static void test_seal_empty_plaintext(void **state)
{
	unsigned char key[SEAL_KEY_LEN], *buf = NULL;
	size_t buflen = 0, plainlen = 99;
	char *out = NULL;
	struct kerr err = {0};

	key_new(key);
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, "h1", "", 0, &buf, &buflen, &err), 0);
	assert_int_equal(buflen, sealed_len("h1", 0));
	assert_int_equal(seal_open(key, buf, buflen, &out, &plainlen, &err), 0);
	assert_int_equal(plainlen, 0);
	assert_string_equal(out, "");
	free(out);
	free(buf);
}

static void test_seal_nonces_differ(void **state)
{
	unsigned char key[SEAL_KEY_LEN], *b1 = NULL, *b2 = NULL;
	size_t l1, l2, hlen = 5 + 2;
	struct kerr err = {0};

	key_new(key);
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, "h1", "same", 4, &b1, &l1, &err), 0);
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, "h1", "same", 4, &b2, &l2, &err), 0);
	assert_int_equal(l1, l2);
	assert_memory_not_equal(b1 + hlen, b2 + hlen, SEAL_NONCE_LEN);
	assert_memory_not_equal(b1 + hlen + SEAL_NONCE_LEN, b2 + hlen + SEAL_NONCE_LEN, 4);
	free(b1);
	free(b2);
}

static void test_seal_host_length_limits(void **state)
{
	unsigned char key[SEAL_KEY_LEN], *buf = NULL;
	char host[SEAL_HOST_MAX + 2], peek_host[SEAL_HOST_MAX + 1], dir;
	size_t buflen = 0;
	struct kerr err = {0};

	key_new(key);
	assert_true(seal_pack(key, SEAL_DIR_TO_AGENT, "", "x", 1, &buf, &buflen, &err) < 0);
	assert_true(err.msg[0] != '\0');

	memset(host, 'a', SEAL_HOST_MAX + 1);
	host[SEAL_HOST_MAX + 1] = '\0';
	assert_true(seal_pack(key, SEAL_DIR_TO_AGENT, host, "x", 1, &buf, &buflen, &err) < 0);

	host[SEAL_HOST_MAX] = '\0';
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, host, "x", 1, &buf, &buflen, &err), 0);
	assert_int_equal(seal_peek(buf, buflen, &dir, peek_host), 0);
	assert_string_equal(peek_host, host);
	free(buf);
}

/* Flipping any one bit anywhere (header, nonce, ciphertext, tag) must be detected. */
static void test_open_detects_every_tampered_byte(void **state)
{
	unsigned char key[SEAL_KEY_LEN], *buf = NULL, *copy;
	static const char plain[] = "{\"type\":\"probe\",\"host\":\"node-7\"}";
	static const unsigned char flips[] = {0x01, 0x80, 0xff};
	size_t buflen = 0;
	struct kerr err = {0};

	key_new(key);
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, "node-7", plain, strlen(plain), &buf,
				   &buflen, &err),
			 0);
	copy = malloc(buflen);
	assert_non_null(copy);
	for (size_t i = 0; i < buflen; i++) {
		for (size_t f = 0; f < sizeof(flips); f++) {
			char *out = NULL;

			memcpy(copy, buf, buflen);
			copy[i] ^= flips[f];
			err.msg[0] = '\0';
			if (seal_open(key, copy, buflen, &out, NULL, &err) == 0) {
				free(out);
				free(copy);
				free(buf);
				fail_msg("byte %zu xor 0x%02x was not detected", i, flips[f]);
			}
			assert_null(out);
			assert_true(err.msg[0] != '\0');
		}
	}
	/* The untouched copy still opens: the failures above came from the flips. */
	{
		char *out = NULL;

		memcpy(copy, buf, buflen);
		assert_int_equal(seal_open(key, copy, buflen, &out, NULL, &err), 0);
		free(out);
	}
	free(copy);
	free(buf);
}

static void test_open_rejects_truncated(void **state)
{
	unsigned char key[SEAL_KEY_LEN], *buf = NULL;
	size_t buflen = 0;
	char *out = NULL;
	struct kerr err = {0};

	key_new(key);
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, "h1", "hello", 5, &buf, &buflen, &err),
			 0);
	for (size_t len = 0; len < buflen; len++) {
		assert_true(seal_open(key, buf, len, &out, NULL, &err) < 0);
		assert_null(out);
	}
	free(buf);
}

static void test_open_wrong_key_fails(void **state)
{
	unsigned char key[SEAL_KEY_LEN], other[SEAL_KEY_LEN], *buf = NULL;
	size_t buflen = 0;
	char *out = NULL;
	struct kerr err = {0};

	key_new(key);
	memcpy(other, key, SEAL_KEY_LEN);
	other[SEAL_KEY_LEN - 1] ^= 1;
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, "h1", "hello", 5, &buf, &buflen, &err),
			 0);
	assert_true(seal_open(other, buf, buflen, &out, NULL, &err) < 0);
	assert_null(out);
	assert_non_null(strstr(err.msg, "authentication"));
	free(buf);
}

/* --- the clear header --- */

static void test_peek_reports_direction_and_host(void **state)
{
	unsigned char key[SEAL_KEY_LEN], *buf = NULL;
	size_t buflen = 0;
	char dir = 0, host[SEAL_HOST_MAX + 1];
	struct kerr err = {0};

	key_new(key);
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, "web-1", "x", 1, &buf, &buflen, &err),
			 0);
	assert_int_equal(seal_peek(buf, buflen, &dir, host), 0);
	assert_int_equal(dir, SEAL_DIR_TO_AGENT);
	assert_string_equal(host, "web-1");
	/* A receiver expecting the other direction sees the mismatch before decrypting. */
	assert_int_not_equal(dir, SEAL_DIR_TO_CONTROLLER);
	free(buf);

	assert_int_equal(
		seal_pack(key, SEAL_DIR_TO_CONTROLLER, "web-1", "x", 1, &buf, &buflen, &err), 0);
	assert_int_equal(seal_peek(buf, buflen, &dir, host), 0);
	assert_int_equal(dir, SEAL_DIR_TO_CONTROLLER);
	free(buf);
}

static void test_peek_rejects_malformed_headers(void **state)
{
	unsigned char key[SEAL_KEY_LEN], *buf = NULL, *copy;
	size_t buflen = 0;
	char dir, host[SEAL_HOST_MAX + 1];
	struct kerr err = {0};

	key_new(key);
	assert_int_equal(seal_pack(key, SEAL_DIR_TO_AGENT, "h1", "x", 1, &buf, &buflen, &err), 0);
	copy = malloc(buflen);
	assert_non_null(copy);

	memcpy(copy, buf, buflen);
	copy[0] = 'X'; /* magic */
	assert_int_equal(seal_peek(copy, buflen, &dir, host), -1);

	memcpy(copy, buf, buflen);
	copy[3] = 'Z'; /* neither direction */
	assert_int_equal(seal_peek(copy, buflen, &dir, host), -1);

	memcpy(copy, buf, buflen);
	copy[4] = 0; /* empty host */
	assert_int_equal(seal_peek(copy, buflen, &dir, host), -1);

	memcpy(copy, buf, buflen);
	copy[4] = SEAL_HOST_MAX + 1; /* host longer than allowed */
	assert_int_equal(seal_peek(copy, buflen, &dir, host), -1);

	memcpy(copy, buf, buflen);
	copy[4] = 200; /* host running past the end of the buffer */
	assert_int_equal(seal_peek(copy, buflen, &dir, host), -1);

	memcpy(copy, buf, buflen);
	copy[6] = '\0'; /* "h\0": the name would be "h" and the header one byte longer */
	assert_int_equal(seal_peek(copy, buflen, &dir, host), -1);

	/* Too short to hold nonce and tag. */
	assert_int_equal(seal_peek(buf, 5 + 2 + SEAL_NONCE_LEN + SEAL_TAG_LEN - 1, &dir, host), -1);
	assert_int_equal(seal_peek(buf, 4, &dir, host), -1);
	assert_int_equal(seal_peek(buf, 0, &dir, host), -1);

	/* The exact minimum (empty ciphertext) is still a sealed message. */
	assert_int_equal(seal_peek(buf, 5 + 2 + SEAL_NONCE_LEN + SEAL_TAG_LEN, &dir, host), 0);

	free(copy);
	free(buf);
}

/* --- replay window --- */

static void test_replay_accepts_increasing(void **state)
{
	struct seal_replay r = {0};
	struct kerr err = {0};

	assert_int_equal(seal_replay_check(&r, NOW_US, NOW_US, WINDOW_US, &err), 0);
	assert_int_equal(r.last_seq, NOW_US);
	assert_int_equal(seal_replay_check(&r, NOW_US + 1, NOW_US, WINDOW_US, &err), 0);
	assert_int_equal(seal_replay_check(&r, NOW_US + 1000, NOW_US + 5, WINDOW_US, &err), 0);
	assert_int_equal(r.last_seq, NOW_US + 1000);
}

static void test_replay_rejects_equal_and_lower(void **state)
{
	struct seal_replay r = {0};
	struct kerr err = {0};

	assert_int_equal(seal_replay_check(&r, NOW_US, NOW_US, WINDOW_US, &err), 0);

	err.msg[0] = '\0';
	assert_true(seal_replay_check(&r, NOW_US, NOW_US, WINDOW_US, &err) < 0);
	assert_non_null(strstr(err.msg, "replayed"));
	assert_true(seal_replay_check(&r, NOW_US - 1, NOW_US, WINDOW_US, &err) < 0);
	assert_true(seal_replay_check(&r, 0, NOW_US, WINDOW_US, &err) < 0);
	assert_true(seal_replay_check(&r, INT64_MIN, NOW_US, WINDOW_US, &err) < 0);
	/* Rejections leave the window where it was. */
	assert_int_equal(r.last_seq, NOW_US);
}

static void test_replay_rejects_too_old(void **state)
{
	/* A receiver that just restarted has forgotten last_seq. */
	struct seal_replay r = {0};
	struct kerr err = {0};

	assert_true(seal_replay_check(&r, NOW_US - WINDOW_US - 1, NOW_US, WINDOW_US, &err) < 0);
	assert_non_null(strstr(err.msg, "stale"));
	assert_true(seal_replay_check(&r, NOW_US - 10 * WINDOW_US, NOW_US, WINDOW_US, &err) < 0);
	assert_int_equal(r.last_seq, 0);
	/* Exactly at the edge of the window is still fresh. */
	assert_int_equal(seal_replay_check(&r, NOW_US - WINDOW_US, NOW_US, WINDOW_US, &err), 0);
}

static void test_replay_rejects_far_future(void **state)
{
	struct seal_replay r = {0};
	struct kerr err = {0};

	assert_true(seal_replay_check(&r, NOW_US + WINDOW_US + 1, NOW_US, WINDOW_US, &err) < 0);
	assert_non_null(strstr(err.msg, "future"));
	assert_true(seal_replay_check(&r, INT64_MAX, NOW_US, WINDOW_US, &err) < 0);
	/* A rejected future seq must not raise the window and lock the peer out. */
	assert_int_equal(r.last_seq, 0);
	assert_int_equal(seal_replay_check(&r, NOW_US + WINDOW_US, NOW_US, WINDOW_US, &err), 0);
}

static void test_replay_restore_keeps_old_captures_out(void **state)
{
	struct seal_replay r = {0};
	struct kerr err = {0};

	/* A message sealed 5 s before a restart is inside the window, but not taken again
	 * after it: the restored window starts at the restart. */
	seal_replay_restore(&r, 0, NOW_US);
	assert_true(seal_replay_check(&r, NOW_US - 5000000, NOW_US + 1, WINDOW_US, &err) < 0);
	assert_non_null(strstr(err.msg, "replayed"));
	assert_int_equal(seal_replay_check(&r, NOW_US + 10, NOW_US + 10, WINDOW_US, &err), 0);
	/* A saved seq later than the clock (a clock stepped back) wins. */
	seal_replay_restore(&r, NOW_US + 2000, NOW_US);
	assert_true(seal_replay_check(&r, NOW_US + 1000, NOW_US, WINDOW_US, &err) < 0);
	assert_int_equal(seal_replay_check(&r, NOW_US + 2001, NOW_US, WINDOW_US, &err), 0);
}

static void test_seq_next_strictly_increases(void **state)
{
	int64_t last = 0, prev, before = now_us();

	prev = seal_seq_next(&last);
	assert_true(prev >= before);
	assert_int_equal(prev, last);
	for (int i = 0; i < 10000; i++) {
		int64_t s = seal_seq_next(&last);

		assert_true(s > prev);
		assert_int_equal(s, last);
		prev = s;
	}

	/* A last value ahead of the clock (clock stepped back) still moves forward by one. */
	last = now_us() + 3600LL * 1000000;
	prev = last;
	assert_int_equal(seal_seq_next(&last), prev + 1);
	assert_int_equal(seal_seq_next(&last), prev + 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_derive_both_sides_agree),
		cmocka_unit_test(test_derive_binds_salt_info_and_peer),
		cmocka_unit_test(test_derive_rejects_small_order_peer),
		cmocka_unit_test(test_seal_round_trip),
		cmocka_unit_test(test_seal_empty_plaintext),
		cmocka_unit_test(test_seal_nonces_differ),
		cmocka_unit_test(test_seal_host_length_limits),
		cmocka_unit_test(test_open_detects_every_tampered_byte),
		cmocka_unit_test(test_open_rejects_truncated),
		cmocka_unit_test(test_open_wrong_key_fails),
		cmocka_unit_test(test_peek_reports_direction_and_host),
		cmocka_unit_test(test_peek_rejects_malformed_headers),
		cmocka_unit_test(test_replay_accepts_increasing),
		cmocka_unit_test(test_replay_rejects_equal_and_lower),
		cmocka_unit_test(test_replay_rejects_too_old),
		cmocka_unit_test(test_replay_rejects_far_future),
		cmocka_unit_test(test_replay_restore_keeps_old_captures_out),
		cmocka_unit_test(test_seq_next_strictly_increases),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
