/*
 * chunkcrypt.c - AES-256-GCM chunks, keyed chunk names and the key wrap of an
 * encrypted backup store (chunkcrypt.h says the design).
 */
#include "chunkcrypt.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "log.h"
#include "util.h"

/* The labels each derived key is an HMAC of: a new version gets new labels. */
#define LABEL_ENC   "kumo backup chunk encryption v1"
#define LABEL_NAME  "kumo backup chunk name v1"
#define LABEL_MAC   "kumo backup manifest mac v1"
#define LABEL_CHECK "kumo backup key check v1"
/* Additional data of a wrapped key: a wrapped key is good for nothing else. */
#define WRAP_AAD    "kumo backup store key v1"
#define WRAP_PREFIX "v1:"

int chunkcrypt_key_parse(const char *hex, unsigned char out[CHUNKCRYPT_KEY_LEN], struct kerr *err)
{
	char lower[CHUNKCRYPT_HEX_LEN + 1];
	size_t len = hex ? strlen(hex) : 0;
	int ret;

	if (len != CHUNKCRYPT_HEX_LEN ||
	    strspn(hex, "0123456789abcdefABCDEF") != CHUNKCRYPT_HEX_LEN)
		return err_input(err, 400, "encryption_key",
				 "the encryption key must be %d hex digits (32 random bytes), "
				 "e.g. from `openssl rand -hex 32`",
				 CHUNKCRYPT_HEX_LEN);
	for (size_t i = 0; i < len; i++)
		lower[i] = (char)(hex[i] >= 'A' && hex[i] <= 'F' ? hex[i] - 'A' + 'a' : hex[i]);
	lower[len] = '\0';
	ret = hex_decode(lower, out, CHUNKCRYPT_KEY_LEN);
	OPENSSL_cleanse(lower, sizeof(lower));
	if (ret < 0)
		return err_input(err, 400, "encryption_key", "the encryption key is not hex");
	return 0;
}

static void hmac_label(const unsigned char *key, const char *label, unsigned char out[32])
{
	unsigned int n = 32;

	HMAC(EVP_sha256(), key, CHUNKCRYPT_KEY_LEN, (const unsigned char *)label, strlen(label),
	     out, &n);
}

void chunkcrypt_check_value(const unsigned char opkey[CHUNKCRYPT_KEY_LEN], char *hex)
{
	unsigned char md[32];

	hmac_label(opkey, LABEL_CHECK, md);
	hex_encode(md, sizeof(md), hex);
}

void chunkcrypt_key_derive(const unsigned char opkey[CHUNKCRYPT_KEY_LEN], size_t zero_len,
			   struct chunkcrypt_key *k)
{
	_cleanup_free_ void *zeros = xcalloc(1, zero_len ? zero_len : 1);

	hmac_label(opkey, LABEL_ENC, k->enc);
	hmac_label(opkey, LABEL_NAME, k->name);
	hmac_label(opkey, LABEL_MAC, k->mac);
	chunkcrypt_check_value(opkey, k->check);
	chunkcrypt_name(k, zeros, zero_len, k->zero_name);
}

void chunkcrypt_key_wipe(struct chunkcrypt_key *k)
{
	OPENSSL_cleanse(k, sizeof(*k));
}

void chunkcrypt_name(const struct chunkcrypt_key *k, const void *data, size_t len, char *hex)
{
	unsigned char md[32];
	unsigned int n = sizeof(md);

	HMAC(EVP_sha256(), k->name, CHUNKCRYPT_KEY_LEN, data, len, md, &n);
	hex_encode(md, sizeof(md), hex);
}

void chunkcrypt_mac(const struct chunkcrypt_key *k, const void *data, size_t len, char *hex)
{
	unsigned char md[32];
	unsigned int n = sizeof(md);

	HMAC(EVP_sha256(), k->mac, CHUNKCRYPT_KEY_LEN, data, len, md, &n);
	hex_encode(md, sizeof(md), hex);
}

/* AES-256-GCM of in under key with nonce and aad into out (len bytes) and tag. */
static int gcm(bool seal, const unsigned char *key, const unsigned char *nonce, const char *aad,
	       const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int n = 0, ok;

	if (ctx == NULL)
		return -1;
	ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, seal) == 1 &&
	     EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, CHUNKCRYPT_NONCE_LEN, NULL) == 1 &&
	     EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, seal) == 1 &&
	     EVP_CipherUpdate(ctx, NULL, &n, (const unsigned char *)aad, (int)strlen(aad)) == 1;
	/* EVP takes an int length: a chunk is at most a few MiB, but go in steps anyway. */
	for (size_t off = 0; ok && off < len;) {
		int step = len - off > (1u << 30) ? 1 << 30 : (int)(len - off);

		ok = EVP_CipherUpdate(ctx, out + off, &n, in + off, step) == 1;
		off += (size_t)step;
	}
	if (ok && !seal)
		ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CHUNKCRYPT_TAG_LEN, tag) == 1;
	/* Opening: this is where the tag is checked; a mismatch fails here. */
	ok = ok && EVP_CipherFinal_ex(ctx, out + len, &n) == 1;
	if (ok && seal)
		ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CHUNKCRYPT_TAG_LEN, tag) == 1;
	EVP_CIPHER_CTX_free(ctx);
	return ok ? 0 : -1;
}

static int seal_with(const unsigned char *key, const char *aad, const void *in, size_t len,
		     void *out, size_t cap, size_t *outlen, struct kerr *err)
{
	unsigned char *o = out;

	if (cap < len + CHUNKCRYPT_OVERHEAD)
		return err_set(err, EINVAL, "no room to seal %zu bytes", len);
	memcpy(o, CHUNKCRYPT_MAGIC, 4);
	random_bytes(o + 4, CHUNKCRYPT_NONCE_LEN);
	if (gcm(true, key, o + 4, aad, in, len, o + 4 + CHUNKCRYPT_NONCE_LEN,
		o + 4 + CHUNKCRYPT_NONCE_LEN + len) < 0)
		return err_set(err, EIO, "AES-256-GCM failed");
	*outlen = len + CHUNKCRYPT_OVERHEAD;
	return 0;
}

static int open_with(const unsigned char *key, const char *aad, const void *in, size_t len,
		     void *out, size_t cap, size_t *outlen, struct kerr *err)
{
	const unsigned char *i = in;
	unsigned char tag[CHUNKCRYPT_TAG_LEN];
	size_t plain;

	if (len < CHUNKCRYPT_OVERHEAD || memcmp(i, CHUNKCRYPT_MAGIC, 4) != 0)
		return err_set(err, EBADMSG, "not an encrypted chunk (no KCE1 header)");
	plain = len - CHUNKCRYPT_OVERHEAD;
	if (plain > cap)
		return err_set(err, EBADMSG, "an encrypted chunk of %zu bytes is too long", plain);
	/* The tag is copied: EVP wants it writable. */
	memcpy(tag, i + len - CHUNKCRYPT_TAG_LEN, CHUNKCRYPT_TAG_LEN);
	if (gcm(false, key, i + 4, aad, i + 4 + CHUNKCRYPT_NONCE_LEN, plain, out, tag) < 0) {
		/* Nothing of a forged chunk may be used: wipe what was decrypted. */
		OPENSSL_cleanse(out, plain);
		return err_set(err, EBADMSG,
			       "GCM tag check failed: changed, moved, or sealed with another key");
	}
	*outlen = plain;
	return 0;
}

int chunkcrypt_seal(const struct chunkcrypt_key *k, const char *aad, const void *in, size_t len,
		    void *out, size_t cap, size_t *outlen, struct kerr *err)
{
	return seal_with(k->enc, aad, in, len, out, cap, outlen, err);
}

int chunkcrypt_open(const struct chunkcrypt_key *k, const char *aad, const void *in, size_t len,
		    void *out, size_t cap, size_t *outlen, struct kerr *err)
{
	return open_with(k->enc, aad, in, len, out, cap, outlen, err);
}

char *chunkcrypt_wrap(const unsigned char master[CHUNKCRYPT_KEY_LEN],
		      const unsigned char opkey[CHUNKCRYPT_KEY_LEN])
{
	unsigned char sealed[CHUNKCRYPT_KEY_LEN + CHUNKCRYPT_OVERHEAD];
	char *out = xmalloc(strlen(WRAP_PREFIX) + 2 * sizeof(sealed) + 1);
	size_t len;

	if (seal_with(master, WRAP_AAD, opkey, CHUNKCRYPT_KEY_LEN, sealed, sizeof(sealed), &len,
		      NULL) < 0)
		fatalx("chunkcrypt: AES-256-GCM failed on a key wrap"); /* a broken OpenSSL */
	strcpy(out, WRAP_PREFIX);
	hex_encode(sealed, len, out + strlen(WRAP_PREFIX));
	return out;
}

int chunkcrypt_unwrap(const unsigned char master[CHUNKCRYPT_KEY_LEN], const char *wrapped,
		      unsigned char opkey[CHUNKCRYPT_KEY_LEN], struct kerr *err)
{
	unsigned char sealed[CHUNKCRYPT_KEY_LEN + CHUNKCRYPT_OVERHEAD];
	size_t plen = strlen(WRAP_PREFIX), len;

	if (wrapped == NULL || strncmp(wrapped, WRAP_PREFIX, plen) != 0 ||
	    strlen(wrapped + plen) != 2 * sizeof(sealed) ||
	    hex_decode(wrapped + plen, sealed, sizeof(sealed)) < 0)
		return err_set(err, EBADMSG, "the wrapped store key is malformed");
	if (open_with(master, WRAP_AAD, sealed, sizeof(sealed), opkey, CHUNKCRYPT_KEY_LEN, &len,
		      err) < 0 ||
	    len != CHUNKCRYPT_KEY_LEN)
		return err_set(err, EBADMSG,
			       "the store's key was wrapped under another master key");
	return 0;
}
