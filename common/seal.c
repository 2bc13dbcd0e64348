/*
 * seal.c - X25519 + HKDF + ChaCha20-Poly1305 with OpenSSL's EVP interface.
 */
#include "seal.h"

#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <pthread.h>
#include <string.h>

#include "util.h"

static const unsigned char magic[3] = {'K', 'M', '1'};

/*
 * The AEAD, fetched from OpenSSL's provider once: EVP_chacha20_poly1305() makes every
 * Init fetch it again (a lock and a lookup), which was a tenth of the controller's
 * work per heartbeat at 1,000 hosts. Threads seal too, hence pthread_once.
 */
static EVP_CIPHER *aead_fetched;
static pthread_once_t aead_once = PTHREAD_ONCE_INIT;

static void aead_fetch(void)
{
	aead_fetched = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

static const EVP_CIPHER *aead(void)
{
	pthread_once(&aead_once, aead_fetch);
	return aead_fetched ? aead_fetched : EVP_chacha20_poly1305();
}

int seal_keypair(unsigned char priv[SEAL_KEY_LEN], unsigned char pub[SEAL_PUB_LEN],
		 struct kerr *err)
{
	EVP_PKEY *pkey;
	size_t len = SEAL_PUB_LEN;
	int ret = 0;

	random_bytes(priv, SEAL_KEY_LEN);
	pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, SEAL_KEY_LEN);
	if (pkey == NULL)
		return err_set(err, 0, "cannot create an X25519 key");
	if (EVP_PKEY_get_raw_public_key(pkey, pub, &len) != 1 || len != SEAL_PUB_LEN)
		ret = err_set(err, 0, "cannot compute the X25519 public key");
	EVP_PKEY_free(pkey);
	return ret;
}

int seal_derive(const unsigned char priv[SEAL_KEY_LEN], const unsigned char peer_pub[SEAL_PUB_LEN],
		const void *salt, size_t saltlen, const char *info, unsigned char key[SEAL_KEY_LEN],
		struct kerr *err)
{
	EVP_PKEY *mine = NULL, *peer = NULL;
	EVP_PKEY_CTX *ctx = NULL, *kdf = NULL;
	unsigned char shared[32];
	size_t sharedlen = sizeof(shared), keylen = SEAL_KEY_LEN;
	int ret = -1;

	mine = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, SEAL_KEY_LEN);
	peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub, SEAL_PUB_LEN);
	if (mine == NULL || peer == NULL) {
		err_set(err, 0, "invalid X25519 key");
		goto out;
	}
	ctx = EVP_PKEY_CTX_new(mine, NULL);
	if (ctx == NULL || EVP_PKEY_derive_init(ctx) != 1 ||
	    EVP_PKEY_derive_set_peer(ctx, peer) != 1 ||
	    EVP_PKEY_derive(ctx, shared, &sharedlen) != 1) {
		err_set(err, 0, "X25519 key agreement failed");
		goto out;
	}
	kdf = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	if (kdf == NULL || EVP_PKEY_derive_init(kdf) != 1 ||
	    EVP_PKEY_CTX_set_hkdf_md(kdf, EVP_sha256()) != 1 ||
	    EVP_PKEY_CTX_set1_hkdf_salt(kdf, salt, (int)saltlen) != 1 ||
	    EVP_PKEY_CTX_set1_hkdf_key(kdf, shared, (int)sharedlen) != 1 ||
	    EVP_PKEY_CTX_add1_hkdf_info(kdf, (const unsigned char *)info, (int)strlen(info)) != 1 ||
	    EVP_PKEY_derive(kdf, key, &keylen) != 1 || keylen != SEAL_KEY_LEN) {
		err_set(err, 0, "HKDF key derivation failed");
		goto out;
	}
	ret = 0;
out:
	OPENSSL_cleanse(shared, sizeof(shared));
	EVP_PKEY_CTX_free(kdf);
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(peer);
	EVP_PKEY_free(mine);
	return ret;
}

static size_t header_len(size_t hostlen)
{
	return sizeof(magic) + 2 + hostlen;
}

int seal_pack(const unsigned char key[SEAL_KEY_LEN], char dir, const char *host, const void *plain,
	      size_t len, unsigned char **out, size_t *outlen, struct kerr *err)
{
	size_t hostlen = strlen(host), hlen = header_len(hostlen), total;
	EVP_CIPHER_CTX *ctx;
	unsigned char *buf, *nonce, *ct;
	int n, ret = 0;

	if (hostlen == 0 || hostlen > SEAL_HOST_MAX)
		return err_set(err, 0, "host name of %zu bytes cannot be sealed", hostlen);
	if (len > 64 * 1024 * 1024)
		return err_set(err, 0, "message of %zu bytes is too large to seal", len);
	total = hlen + SEAL_NONCE_LEN + len + SEAL_TAG_LEN;
	buf = xmalloc(total);
	memcpy(buf, magic, sizeof(magic));
	buf[3] = (unsigned char)dir;
	buf[4] = (unsigned char)hostlen;
	memcpy(buf + 5, host, hostlen);
	nonce = buf + hlen;
	/* Random 96-bit nonces: the key outlives restarts, so a counter could repeat. */
	random_bytes(nonce, SEAL_NONCE_LEN);
	ct = nonce + SEAL_NONCE_LEN;

	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL || EVP_EncryptInit_ex(ctx, aead(), NULL, key, nonce) != 1 ||
	    EVP_EncryptUpdate(ctx, NULL, &n, buf, (int)(hlen + SEAL_NONCE_LEN)) != 1 ||
	    EVP_EncryptUpdate(ctx, ct, &n, plain, (int)len) != 1 ||
	    EVP_EncryptFinal_ex(ctx, ct + n, &n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, SEAL_TAG_LEN, ct + len) != 1) {
		ret = err_set(err, 0, "ChaCha20-Poly1305 encryption failed");
		free(buf);
		buf = NULL;
	}
	EVP_CIPHER_CTX_free(ctx);
	*out = buf;
	*outlen = buf ? total : 0;
	return ret;
}

int seal_peek(const unsigned char *buf, size_t len, char *dir, char *host)
{
	size_t hostlen;

	if (len < 5 || memcmp(buf, magic, sizeof(magic)) != 0)
		return -1;
	hostlen = buf[4];
	if (hostlen == 0 || hostlen > SEAL_HOST_MAX ||
	    len < header_len(hostlen) + SEAL_NONCE_LEN + SEAL_TAG_LEN)
		return -1;
	if (buf[3] != SEAL_DIR_TO_AGENT && buf[3] != SEAL_DIR_TO_CONTROLLER)
		return -1;
	/* A NUL would end the name early, and seal_open would then find the nonce and
	 * ciphertext inside the header: the name must be the hostlen bytes, all of them. */
	if (memchr(buf + 5, '\0', hostlen))
		return -1;
	*dir = (char)buf[3];
	memcpy(host, buf + 5, hostlen);
	host[hostlen] = '\0';
	return 0;
}

int seal_open(const unsigned char key[SEAL_KEY_LEN], const unsigned char *buf, size_t len,
	      char **plain, size_t *plainlen, struct kerr *err)
{
	char dir, host[SEAL_HOST_MAX + 1];
	size_t hlen, ctlen;
	const unsigned char *nonce, *ct;
	unsigned char tag[SEAL_TAG_LEN];
	EVP_CIPHER_CTX *ctx;
	char *out;
	int n, ok;

	if (seal_peek(buf, len, &dir, host) < 0)
		return err_set(err, 0, "not a sealed message");
	hlen = header_len(strlen(host));
	nonce = buf + hlen;
	ct = nonce + SEAL_NONCE_LEN;
	ctlen = len - hlen - SEAL_NONCE_LEN - SEAL_TAG_LEN;
	memcpy(tag, ct + ctlen, SEAL_TAG_LEN);
	out = xmalloc(ctlen + 1);

	ctx = EVP_CIPHER_CTX_new();
	ok = ctx && EVP_DecryptInit_ex(ctx, aead(), NULL, key, nonce) == 1 &&
	     EVP_DecryptUpdate(ctx, NULL, &n, buf, (int)(hlen + SEAL_NONCE_LEN)) == 1 &&
	     EVP_DecryptUpdate(ctx, (unsigned char *)out, &n, ct, (int)ctlen) == 1 &&
	     EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, SEAL_TAG_LEN, tag) == 1 &&
	     EVP_DecryptFinal_ex(ctx, (unsigned char *)out + n, &n) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok) {
		free(out);
		return err_set(err, 0, "message failed authentication (tampered or wrong key)");
	}
	out[ctlen] = '\0';
	*plain = out;
	if (plainlen)
		*plainlen = ctlen;
	return 0;
}

int seal_replay_check(struct seal_replay *r, int64_t seq, int64_t now, int64_t window_us,
		      struct kerr *err)
{
	if (seq <= r->last_seq)
		return err_set(err, 0, "replayed or reordered message (seq %lld, last %lld)",
			       (long long)seq, (long long)r->last_seq);
	if (seq < now - window_us)
		return err_set(err, 0, "stale message (seq %lld is older than the %llds window)",
			       (long long)seq, (long long)(window_us / 1000000));
	if (seq > now + window_us)
		return err_set(err, 0, "message from the future (seq %lld); are clocks in sync?",
			       (long long)seq);
	r->last_seq = seq;
	return 0;
}

void seal_replay_restore(struct seal_replay *r, int64_t saved, int64_t now)
{
	r->last_seq = saved > now ? saved : now;
}

int64_t seal_seq_next(int64_t *last)
{
	int64_t now = now_us();

	*last = now > *last ? now : *last + 1;
	return *last;
}
