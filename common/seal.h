/*
 * seal.h - the agent link's cryptography: X25519 key agreement, HKDF-SHA256 key
 * derivation and ChaCha20-Poly1305 sealing of every message, with replay checks.
 *
 * Wire format of a sealed message (all of it authenticated, the tail encrypted):
 *
 *   "KM1" | dir (1) | hostlen (1) | host | nonce (12) | ciphertext | tag (16)
 *
 * dir is SEAL_DIR_TO_AGENT or SEAL_DIR_TO_CONTROLLER, so a message cannot be
 * reflected back at its sender. host names the key the receiver must use; it is
 * repeated inside the plaintext and the two must agree.
 */
#ifndef KUMO_SEAL_H
#define KUMO_SEAL_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define SEAL_KEY_LEN	       32
#define SEAL_PUB_LEN	       32
#define SEAL_NONCE_LEN	       12
#define SEAL_TAG_LEN	       16
#define SEAL_HOST_MAX	       63
#define SEAL_DIR_TO_AGENT      'C'
#define SEAL_DIR_TO_CONTROLLER 'A'

/* A new X25519 key pair. Returns 0 or -1. */
int seal_keypair(unsigned char priv[SEAL_KEY_LEN], unsigned char pub[SEAL_PUB_LEN],
		 struct kerr *err);

/*
 * Derive the link key: HKDF-SHA256 over the X25519 shared secret of priv and
 * peer_pub, with salt and an info string that binds the key to its use.
 */
int seal_derive(const unsigned char priv[SEAL_KEY_LEN], const unsigned char peer_pub[SEAL_PUB_LEN],
		const void *salt, size_t saltlen, const char *info, unsigned char key[SEAL_KEY_LEN],
		struct kerr *err);

/* Seal len bytes of plain for host in direction dir. *out is malloc'd, caller frees. */
int seal_pack(const unsigned char key[SEAL_KEY_LEN], char dir, const char *host, const void *plain,
	      size_t len, unsigned char **out, size_t *outlen, struct kerr *err);

/*
 * Read the clear header: direction and host name (host holds SEAL_HOST_MAX + 1).
 * Returns 0, or -1 when the buffer is not a sealed message at all.
 */
int seal_peek(const unsigned char *buf, size_t len, char *dir, char *host);

/*
 * Authenticate and decrypt. On success *plain is a malloc'd NUL-terminated copy of
 * the plaintext. Fails (and logs nothing) on any tampering.
 */
int seal_open(const unsigned char key[SEAL_KEY_LEN], const unsigned char *buf, size_t len,
	      char **plain, size_t *plainlen, struct kerr *err);

/*
 * Replay window per peer and direction. seq values are microsecond timestamps that
 * strictly increase per sender; a message must have seq above the last accepted one
 * and no older than window_us, so a receiver that restarted (and forgot last_seq)
 * still refuses old captures.
 */
struct seal_replay {
	int64_t last_seq;
};

int seal_replay_check(struct seal_replay *r, int64_t seq, int64_t now, int64_t window_us,
		      struct kerr *err);

/*
 * A receiver starting with a key it held before (a restart): the window resumes at
 * the later of saved (the last seq it recorded) and now. Every message sealed before
 * this moment carries a seq no later than its sender's clock then, so a capture taken
 * before the restart stays refused, where a window starting at 0 would take it once
 * more (within window_us). Senders' clocks must agree to well under a second.
 */
void seal_replay_restore(struct seal_replay *r, int64_t saved, int64_t now);

/* Next sequence number for a sender: max(now in µs, last + 1). */
int64_t seal_seq_next(int64_t *last);

#endif
