/*
 * test_token.c - token generation, shape check and digests (common/token.c).
 */
#include <stdio.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "token.h"

#define B64URL "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_generate_well_formed(void **state)
{
	char tok[TOKEN_LEN + 1];

	memset(tok, 'x', sizeof(tok));
	token_generate(tok);
	assert_int_equal(strlen(tok), 48);
	assert_memory_equal(tok, "kumo_", 5);
	assert_int_equal(strspn(tok + 5, B64URL), 43);
	assert_true(token_well_formed(tok));
	/*
	 * 256 bits in 43 characters leave the last one 4 bits: a canonical base64url
	 * encoding has its two low bits zero.
	 */
	assert_non_null(strchr("AEIMQUYcgkosw048", tok[TOKEN_LEN - 1]));
}

static void test_generate_unique(void **state)
{
	enum {
		N = 1000
	};
	char(*toks)[TOKEN_LEN + 1] = calloc(N, sizeof(*toks));
	char **sorted = calloc(N, sizeof(*sorted));
	int seen[256] = {0};

	assert_non_null(toks);
	assert_non_null(sorted);
	for (int i = 0; i < N; i++) {
		token_generate(toks[i]);
		assert_true(token_well_formed(toks[i]));
		sorted[i] = toks[i];
		for (int j = 5; j < TOKEN_LEN - 1; j++)
			seen[(unsigned char)toks[i][j]]++;
	}
	qsort(sorted, N, sizeof(*sorted), cmp_str);
	for (int i = 1; i < N; i++)
		if (strcmp(sorted[i - 1], sorted[i]) == 0)
			fail_msg("token generated twice: %s", sorted[i]);
	/* 42,000 random characters: every one of the 64 must have turned up. */
	for (const char *c = B64URL; *c; c++)
		if (seen[(unsigned char)*c] == 0)
			fail_msg("character '%c' never generated", *c);
	free(sorted);
	free(toks);
}

static void test_well_formed_rejects(void **state)
{
	static const char good[] = "kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
	char tok[64];

	assert_int_equal(strlen(good), TOKEN_LEN);
	assert_true(token_well_formed(good));
	assert_true(token_well_formed("kumo_Zm9vYmFyLWpvaW4tdG9rZW4tZm9yLXVuaXQtdGVzdHM"));
	assert_true(token_well_formed("kumo_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-"));

	assert_false(token_well_formed(NULL));
	assert_false(token_well_formed(""));
	assert_false(token_well_formed("kumo_"));

	/* wrong prefix */
	assert_false(token_well_formed("KUMO_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
	assert_false(token_well_formed("kumo-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
	assert_false(token_well_formed("kuma_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
	assert_false(token_well_formed("AAAAAkumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));

	/* wrong length, one either side */
	assert_false(token_well_formed("kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
	assert_false(token_well_formed("kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));

	/* characters outside base64url, at the first, a middle and the last position */
	static const char bad_chars[] = "+/=. \t\n!%*~\"\x7f\xc3";
	static const int positions[] = {5, 20, TOKEN_LEN - 1};

	for (const char *c = bad_chars; *c; c++) {
		for (size_t p = 0; p < sizeof(positions) / sizeof(positions[0]); p++) {
			strcpy(tok, good);
			tok[positions[p]] = *c;
			if (token_well_formed(tok))
				fail_msg("accepted 0x%02x at %d", (unsigned char)*c, positions[p]);
		}
	}
	/* An embedded NUL shortens the string, so it fails on length. */
	strcpy(tok, good);
	tok[30] = '\0';
	assert_false(token_well_formed(tok));
}

static void test_digest_known_vectors(void **state)
{
	char hex[TOKEN_DIGEST_LEN + 1];
	unsigned char raw[32];

	/* FIPS 180-2 example, `printf %s abc | sha256sum` */
	token_digest("abc", hex);
	assert_string_equal(hex,
			    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

	token_digest("", hex);
	assert_string_equal(hex,
			    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

	/* A token-shaped string, `printf %s kumo_Zm9v... | sha256sum` */
	token_digest("kumo_Zm9vYmFyLWpvaW4tdG9rZW4tZm9yLXVuaXQtdGVzdHM", hex);
	assert_string_equal(hex,
			    "614974565fa71749b5a659140f44d4f8bd119f32df720c282682aa07ab8ca540");
	assert_int_equal(strlen(hex), TOKEN_DIGEST_LEN);

	/* The raw digest is the same bytes. */
	sha256("abc", 3, raw);
	assert_int_equal(raw[0], 0xba);
	assert_int_equal(raw[31], 0xad);
}

static void test_digest_distinguishes(void **state)
{
	char a[TOKEN_DIGEST_LEN + 1], b[TOKEN_DIGEST_LEN + 1];

	token_digest("kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", a);
	token_digest("kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB", b);
	assert_string_not_equal(a, b);
	assert_string_equal(a, "616495715635dd7ea7fcc46aa6d81956a3db302a0970dd019209d86629bcfc21");
}

/* The join proofs: HMAC-SHA256 keyed by the token's SHA-256, pinned by known values
 * (Python's hmac), and bound to every field they cover. */
static void test_join_proofs(void **state)
{
	const char *tok = "kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
	char a[65] = "", b[65] = "", ab[65], cd[65];
	unsigned char key[32], other[32];

	(void)state;
	for (int i = 0; i < 32; i++) {
		memcpy(ab + 2 * i, "ab", 2);
		memcpy(cd + 2 * i, "cd", 2);
	}
	ab[64] = '\0';
	cd[64] = '\0';
	sha256(tok, strlen(tok), key);
	join_proof(key, "h1", ab, "tcp://10.0.0.1:7710", a);
	assert_string_equal(a, "c71023b4847cb50cf6b342ecf3e15f0e8d2ad2fc9bbfa18ba64ecafb9ad7596c");
	join_confirm(key, "h1", "c0ffee", 7, cd, ab, "tcp://10.0.0.1:7701", 1, b);
	assert_string_equal(b, "0c097a640d0bed4d00fcbdc965ecf757e3c665aeee206ac34040a081be3ef345");
	assert_true(join_proof_equal(a, a));
	assert_false(join_proof_equal(a, b));
	assert_false(join_proof_equal(a, "c71023b4"));
	/* Another name, key, address or token: another proof. */
	join_proof(key, "h2", ab, "tcp://10.0.0.1:7710", b);
	assert_false(join_proof_equal(a, b));
	join_proof(key, "h1", cd, "tcp://10.0.0.1:7710", b);
	assert_false(join_proof_equal(a, b));
	join_proof(key, "h1", ab, "tcp://10.0.0.2:7710", b);
	assert_false(join_proof_equal(a, b));
	memcpy(other, key, sizeof(other));
	other[31] ^= 1;
	join_proof(other, "h1", ab, "tcp://10.0.0.1:7710", b);
	assert_false(join_proof_equal(a, b));
	/* Another host id, controller key, events address or interval: another answer. */
	join_confirm(key, "h1", "c0ffee", 7, cd, ab, "tcp://10.0.0.1:7701", 1, a);
	join_confirm(key, "h1", "c0ffee", 8, cd, ab, "tcp://10.0.0.1:7701", 1, b);
	assert_false(join_proof_equal(a, b));
	join_confirm(key, "h1", "c0ffee", 7, ab, ab, "tcp://10.0.0.1:7701", 1, b);
	assert_false(join_proof_equal(a, b));
	join_confirm(key, "h1", "c0ffee", 7, cd, ab, "tcp://10.6.6.6:7701", 1, b);
	assert_false(join_proof_equal(a, b));
	join_confirm(key, "h1", "c0ffee", 7, cd, ab, "tcp://10.0.0.1:7701", 3600, b);
	assert_false(join_proof_equal(a, b));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_generate_well_formed),
		cmocka_unit_test(test_generate_unique),
		cmocka_unit_test(test_well_formed_rejects),
		cmocka_unit_test(test_digest_known_vectors),
		cmocka_unit_test(test_digest_distinguishes),
		cmocka_unit_test(test_join_proofs),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
