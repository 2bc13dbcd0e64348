/*
 * token.c - token generation and hashing.
 */
#include "token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void token_generate(char out[TOKEN_LEN + 1])
{
	unsigned char raw[33];
	char *p = out + strlen(TOKEN_PREFIX);

	memcpy(out, TOKEN_PREFIX, strlen(TOKEN_PREFIX));
	random_bytes(raw, 32);
	raw[32] = 0;
	/* 32 bytes -> 43 characters: 10 full groups of 3 bytes, then 2 bytes -> 3 chars. */
	for (int i = 0; i < 33; i += 3) {
		unsigned v = (unsigned)raw[i] << 16 | (unsigned)raw[i + 1] << 8 |
			     (i + 2 < 33 ? raw[i + 2] : 0);

		*p++ = b64url[(v >> 18) & 63];
		*p++ = b64url[(v >> 12) & 63];
		*p++ = b64url[(v >> 6) & 63];
		if (i < 30)
			*p++ = b64url[v & 63];
	}
	out[TOKEN_LEN] = '\0';
}

bool token_well_formed(const char *s)
{
	size_t plen = strlen(TOKEN_PREFIX);

	if (s == NULL || strlen(s) != TOKEN_LEN || strncmp(s, TOKEN_PREFIX, plen) != 0)
		return false;
	for (s += plen; *s; s++)
		if (!strchr(b64url, *s))
			return false;
	return true;
}

void sha256(const void *data, size_t len, unsigned char out[32])
{
	unsigned int n = 32;

	EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

void token_digest(const char *s, char out[TOKEN_DIGEST_LEN + 1])
{
	unsigned char md[32];

	sha256(s, strlen(s), md);
	hex_encode(md, 32, out);
}

static void hmac_hex(const unsigned char key[32], const char *msg, char out[TOKEN_DIGEST_LEN + 1])
{
	unsigned char mac[32];
	unsigned int len = sizeof(mac);

	HMAC(EVP_sha256(), key, 32, (const unsigned char *)msg, strlen(msg), mac, &len);
	hex_encode(mac, sizeof(mac), out);
}

void join_proof(const unsigned char key[32], const char *name, const char *pubhex, const char *addr,
		char out[TOKEN_DIGEST_LEN + 1])
{
	char *msg = xasprintf("kumo-join-v2 request|%s|%s|%s", name, pubhex, addr);

	hmac_hex(key, msg, out);
	free(msg);
}

void join_confirm(const unsigned char key[32], const char *name, const char *cluster_id,
		  long long host_id, const char *ctl_pubhex, const char *agent_pubhex,
		  const char *events, long long heartbeat_interval, char out[TOKEN_DIGEST_LEN + 1])
{
	/* Everything the agent keeps from the answer: none of it can be swapped. */
	char *msg = xasprintf("kumo-join-v2 answer|%s|%s|%lld|%s|%s|%s|%lld", name, cluster_id,
			      host_id, ctl_pubhex, agent_pubhex, events, heartbeat_interval);

	hmac_hex(key, msg, out);
	free(msg);
}

bool join_proof_equal(const char *a, const char *b)
{
	return strlen(a) == TOKEN_DIGEST_LEN && strlen(b) == TOKEN_DIGEST_LEN &&
	       CRYPTO_memcmp(a, b, TOKEN_DIGEST_LEN) == 0;
}
