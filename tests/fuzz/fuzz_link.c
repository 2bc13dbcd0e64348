/*
 * fuzz_link.c - the agent link's receiving end: seal_peek/seal_open on raw bytes (what
 * anyone on the network can send), and link_msg_open on messages sealed with the
 * right key around fuzzed plaintext (what a host holding its key can send).
 *
 * Input: one byte choosing the mode, then the bytes:
 *   0  raw bytes, as anyone can send them; they must never open;
 *   1  plaintext, sealed by seal_pack() as host h1;
 *   2  a header host (a length byte, then that many bytes) and plaintext, sealed here
 *      by the wire format of seal.h: what seal_peek() accepts must then open, to the
 *      same plaintext.
 * A message that opens must seal and open again to the same envelope.
 */
#include <openssl/evp.h>
#include <string.h>

#include "fuzz.h"
#include "json.h"
#include "link.h"
#include "seal.h"
#include "util.h"

static const unsigned char key[SEAL_KEY_LEN] = {0x42, 0x17, 0x99};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

/* m opened: sealing it again must give a message that opens to the same thing. */
static void roundtrip(const struct link_msg *m, char dir)
{
	_cleanup_free_ unsigned char *buf = NULL;
	struct link_msg again;
	struct kerr err;
	size_t len;

	memset(&err, 0, sizeof(err));
	if (link_msg_seal(key, dir, m, &buf, &len, &err) < 0 ||
	    link_msg_open(key, dir, buf, len, &again, &err) < 0) {
		fprintf(stderr, "an opened message does not seal and open again: %s\n", err.msg);
		abort();
	}
	if (again.type != m->type || strcmp(again.host, m->host) || again.seq != m->seq ||
	    strcmp(again.op, m->op) || strcmp(json_text(again.body), json_text(m->body))) {
		fprintf(stderr, "an opened message changed when sealed again\n");
		abort();
	}
	link_msg_clear(&again);
}

static void open_one(const unsigned char *buf, size_t len, char dir)
{
	struct link_msg m;
	struct seal_replay replay = {0};
	struct kerr err;
	int ret;

	memset(&err, 0, sizeof(err));
	ret = link_msg_open(key, dir, buf, len, &m, &err);
	FUZZ_REFUSAL_EXPLAINED(ret, err);
	if (ret < 0)
		return;
	roundtrip(&m, dir);
	ret = seal_replay_check(&replay, m.seq, now_us(), LINK_REPLAY_WINDOW_US, &err);
	FUZZ_REFUSAL_EXPLAINED(ret, err);
	link_msg_clear(&m);
}

/*
 * Seal len bytes of plain for a header host of hostlen raw bytes, by seal.h's wire
 * format (fixed nonce): "KM1" dir hostlen host nonce ciphertext tag. *out is malloc'd.
 */
static size_t wire_seal(const uint8_t *host, size_t hostlen, const uint8_t *plain, size_t len,
			unsigned char **out)
{
	size_t hlen = 5 + hostlen, total = hlen + SEAL_NONCE_LEN + len + SEAL_TAG_LEN;
	unsigned char *buf = xmalloc(total), *nonce = buf + hlen, *ct = nonce + SEAL_NONCE_LEN;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int n;

	memcpy(buf, "KM1", 3);
	buf[3] = SEAL_DIR_TO_CONTROLLER;
	buf[4] = (unsigned char)hostlen;
	memcpy(buf + 5, host, hostlen);
	memset(nonce, 0x5a, SEAL_NONCE_LEN);
	if (ctx == NULL ||
	    EVP_EncryptInit_ex(ctx, EVP_chacha20_poly1305(), NULL, key, nonce) != 1 ||
	    EVP_EncryptUpdate(ctx, NULL, &n, buf, (int)(hlen + SEAL_NONCE_LEN)) != 1 ||
	    EVP_EncryptUpdate(ctx, ct, &n, plain, (int)len) != 1 ||
	    EVP_EncryptFinal_ex(ctx, ct + n, &n) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, SEAL_TAG_LEN, ct + len) != 1)
		abort();
	EVP_CIPHER_CTX_free(ctx);
	*out = buf;
	return total;
}

/* Mode 2: the receiving end must read the header as the wire format defines it. */
static void wire_check(const uint8_t *data, size_t size)
{
	_cleanup_free_ unsigned char *sealed = NULL;
	_cleanup_free_ char *plain = NULL;
	char dir, host[SEAL_HOST_MAX + 1];
	size_t hostlen, len, plainlen;
	struct kerr err;

	if (size < 1 || (hostlen = data[0] % (SEAL_HOST_MAX + 2)) > size - 1)
		return;
	len = wire_seal(data + 1, hostlen, data + 1 + hostlen, size - 1 - hostlen, &sealed);
	if (seal_peek(sealed, len, &dir, host) < 0)
		return;
	if (seal_open(key, sealed, len, &plain, &plainlen, &err) < 0) {
		fprintf(stderr, "seal_peek accepted a header that seal_open then misread: %s\n",
			err.msg);
		abort();
	}
	if (plainlen != size - 1 - hostlen || memcmp(plain, data + 1 + hostlen, plainlen)) {
		fprintf(stderr, "seal_open returned other plaintext than was sealed\n");
		abort();
	}
	open_one(sealed, len, SEAL_DIR_TO_CONTROLLER);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_free_ unsigned char *sealed = NULL;
	_cleanup_free_ char *plain = NULL;
	char dir, host[SEAL_HOST_MAX + 1];
	size_t len, plainlen;
	struct kerr err;

	if (size < 1)
		return 0;
	if (data[0] % 3 == 2) {
		wire_check(data + 1, size - 1);
		return 0;
	}
	if (data[0] % 3 == 0) {
		/* Raw: the header parse and the authentication (which must fail). */
		if (seal_peek(data + 1, size - 1, &dir, host) == 0 &&
		    seal_open(key, data + 1, size - 1, &plain, &plainlen, &err) == 0) {
			fprintf(stderr, "a message nobody sealed opened\n");
			abort();
		}
		open_one(data + 1, size - 1, SEAL_DIR_TO_CONTROLLER);
		return 0;
	}
	/* Sealed by a peer with the key, as the host named in the header. */
	if (seal_pack(key, SEAL_DIR_TO_CONTROLLER, "h1", data + 1, size - 1, &sealed, &len, &err) <
	    0)
		return 0;
	open_one(sealed, len, SEAL_DIR_TO_CONTROLLER);
	open_one(sealed, len, SEAL_DIR_TO_AGENT); /* wrong direction: refused */
	return 0;
}
