/*
 * token.h - bearer and join tokens: generation and SHA-256 digests.
 *
 * A token is "kumo_" followed by 43 base64url characters (256 random bits). Only its
 * SHA-256 digest is ever stored.
 */
#ifndef KUMO_TOKEN_H
#define KUMO_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

#define TOKEN_PREFIX	 "kumo_"
#define TOKEN_LEN	 (5 + 43)
#define TOKEN_DIGEST_LEN 64 /* hex characters */

/* A fresh token into out (TOKEN_LEN + 1 bytes). */
void token_generate(char out[TOKEN_LEN + 1]);
/* True when s has the shape of a token (prefix, length, alphabet). */
bool token_well_formed(const char *s);
/* SHA-256 of s as lower-case hex into out (TOKEN_DIGEST_LEN + 1 bytes). */
void token_digest(const char *s, char out[TOKEN_DIGEST_LEN + 1]);
/* Raw SHA-256 of len bytes. */
void sha256(const void *data, size_t len, unsigned char out[32]);

/*
 * The join exchange never carries the join token itself. The agent proves it holds
 * the token with HMAC-SHA256 keyed by the token's SHA-256 (what the controller keeps)
 * over what it asks for - its name, its link public key, its command address - and
 * the controller proves the same over its answer. Each is lower-case hex into out
 * (TOKEN_DIGEST_LEN + 1 bytes). key is the token's raw SHA-256.
 */
void join_proof(const unsigned char key[32], const char *name, const char *pubhex, const char *addr,
		char out[TOKEN_DIGEST_LEN + 1]);
void join_confirm(const unsigned char key[32], const char *name, const char *cluster_id,
		  long long host_id, const char *ctl_pubhex, const char *agent_pubhex,
		  const char *events, long long heartbeat_interval, char out[TOKEN_DIGEST_LEN + 1]);
/* Constant-time comparison of two proofs of TOKEN_DIGEST_LEN characters. */
bool join_proof_equal(const char *a, const char *b);

#endif
