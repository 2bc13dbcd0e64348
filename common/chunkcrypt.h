/*
 * chunkcrypt.h - the encryption of a backup store: AES-256-GCM chunks named by a keyed
 * digest, and the wrapping of the operator's key under the controller's master key.
 *
 * An encrypted store has one key, 32 bytes the operator supplies when the store is
 * made. Nothing uses it directly: chunkcrypt_key_derive() makes from it, with
 * HMAC-SHA256 over fixed labels, independent keys for each use (as Proxmox Backup
 * Server does):
 *   enc    AES-256-GCM of each chunk (after zstd: compress, then encrypt) and of the
 *          manifest's instance spec
 *   name   HMAC-SHA256 of a chunk's plain content, its name in the store: dedup works
 *          within the store, but two stores with different keys share no name, and
 *          a name tells nothing of the content to someone without the key
 *   mac    HMAC-SHA256 of each manifest's text, so a changed chunk list is refused
 *   check  the key check value, HMAC-SHA256 of a constant: kept in the store's
 *          encryption.json and the controller's database, it refuses a wrong key
 *          before anything is read, and reveals nothing of the key
 *
 * A sealed chunk is "KCE1" | 12-byte nonce | ciphertext | 16-byte GCM tag, the nonce
 * fresh from the CSPRNG for every chunk (2^32 chunks of one store stay far below
 * the collision bound), the chunk's name as additional data: a chunk file moved
 * under another name fails its tag like a changed byte does.
 *
 * Pure computation, no I/O: safe on any thread.
 */
#ifndef KUMO_CHUNKCRYPT_H
#define KUMO_CHUNKCRYPT_H

#include <stddef.h>

#include "err.h"

#define CHUNKCRYPT_KEY_LEN   32
#define CHUNKCRYPT_HEX_LEN   64
#define CHUNKCRYPT_MAGIC     "KCE1"
#define CHUNKCRYPT_NONCE_LEN 12
#define CHUNKCRYPT_TAG_LEN   16
/* What sealing adds to a chunk's length. */
#define CHUNKCRYPT_OVERHEAD (4 + CHUNKCRYPT_NONCE_LEN + CHUNKCRYPT_TAG_LEN)

/* The keys one store's operator key yields (chunkcrypt_key_derive). Wipe after use. */
struct chunkcrypt_key {
	unsigned char enc[CHUNKCRYPT_KEY_LEN];
	unsigned char name[CHUNKCRYPT_KEY_LEN];
	unsigned char mac[CHUNKCRYPT_KEY_LEN];
	char check[CHUNKCRYPT_HEX_LEN + 1];	/* the key check value, hex */
	char zero_name[CHUNKCRYPT_HEX_LEN + 1]; /* the name of a whole chunk of zeros */
};

/*
 * An operator key as the API takes it: exactly 64 hex digits (either case) into 32
 * bytes. Returns 0, or -1 with err (its field "encryption_key").
 */
int chunkcrypt_key_parse(const char *hex, unsigned char out[CHUNKCRYPT_KEY_LEN], struct kerr *err);

/*
 * Derive k from operator key opkey; zero_len is the chunk size, whose all-zero chunk
 * gets its name computed once here (a reader answers it without reading).
 */
void chunkcrypt_key_derive(const unsigned char opkey[CHUNKCRYPT_KEY_LEN], size_t zero_len,
			   struct chunkcrypt_key *k);

/* The key check value of opkey alone (hex, 65 bytes with the NUL). */
void chunkcrypt_check_value(const unsigned char opkey[CHUNKCRYPT_KEY_LEN], char *hex);

/* Zero every byte of k. */
void chunkcrypt_key_wipe(struct chunkcrypt_key *k);

/* A chunk's name in an encrypted store: HMAC-SHA256 of its plain content, hex. */
void chunkcrypt_name(const struct chunkcrypt_key *k, const void *data, size_t len, char *hex);

/* HMAC-SHA256 of a manifest's text under k's mac key, hex. */
void chunkcrypt_mac(const struct chunkcrypt_key *k, const void *data, size_t len, char *hex);

/*
 * Seal len bytes of in (aad, a NUL-terminated string, bound to it) into out, which
 * holds cap >= len + CHUNKCRYPT_OVERHEAD bytes; *outlen gets the sealed length.
 * Returns 0, or -1 with err.
 */
int chunkcrypt_seal(const struct chunkcrypt_key *k, const char *aad, const void *in, size_t len,
		    void *out, size_t cap, size_t *outlen, struct kerr *err);

/*
 * Open what chunkcrypt_seal() made with the same aad into out (cap bytes); *outlen
 * gets the plain length. Returns 0, or -1 with err: EBADMSG when the GCM tag does not
 * match (a changed byte, a chunk under another name, or another key).
 */
int chunkcrypt_open(const struct chunkcrypt_key *k, const char *aad, const void *in, size_t len,
		    void *out, size_t cap, size_t *outlen, struct kerr *err);

/*
 * Wrap opkey under master (the controller's master key) for the database: returns a
 * new string "v1:" + hex of nonce | ciphertext | tag, the caller's to free.
 */
char *chunkcrypt_wrap(const unsigned char master[CHUNKCRYPT_KEY_LEN],
		      const unsigned char opkey[CHUNKCRYPT_KEY_LEN]);

/*
 * Unwrap what chunkcrypt_wrap() made into opkey. Returns 0, or -1 with err (EBADMSG:
 * malformed, or wrapped under another master key).
 */
int chunkcrypt_unwrap(const unsigned char master[CHUNKCRYPT_KEY_LEN], const char *wrapped,
		      unsigned char opkey[CHUNKCRYPT_KEY_LEN], struct kerr *err);

#endif
