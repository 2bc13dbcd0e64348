/*
 * tls.c - the API's key and certificate: the operator's own (tls_cert, tls_key), checked
 * to belong together before anything is served, or else a self-signed one made at first
 * start.
 *
 * The self-signed one is an ECDSA P-256 key (0600) and a certificate valid for ten years whose
 * subject alternative names cover localhost, 127.0.0.1 and the API's listen address, so `curl
 * --cacert state_dir/tls.crt` verifies it.
 */
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

static char *bio_text(BIO *bio, size_t *len)
{
	char *data;
	long n = BIO_get_mem_data(bio, &data);
	char *out = xmalloc((size_t)n + 1);

	memcpy(out, data, (size_t)n);
	out[n] = '\0';
	*len = (size_t)n;
	return out;
}

static int add_ext(X509 *cert, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;

	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (ext == NULL)
		return -1;
	X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return 0;
}

/* Make state_dir/tls.key and tls.crt unless both exist. */
int tls_ensure(const char *state_dir, const char *api_listen, struct kerr *err)
{
	_cleanup_free_ char *kp = xasprintf("%s/tls.key", state_dir);
	_cleanup_free_ char *cp = xasprintf("%s/tls.crt", state_dir);
	_cleanup_free_ char *keypem = NULL, *certpem = NULL, *san = NULL;
	char host[64];
	const char *colon = strrchr(api_listen, ':');
	EVP_PKEY *pkey = NULL;
	X509 *cert = NULL;
	X509_NAME *name;
	BIO *kb = NULL, *cb = NULL;
	unsigned char serial[16];
	BIGNUM *bn = NULL;
	size_t klen, clen;
	int ret = -1, rc;

	if (access(kp, R_OK) == 0 && access(cp, R_OK) == 0)
		return 0;
	snprintf(host, sizeof(host), "%.*s", colon ? (int)(colon - api_listen) : 0, api_listen);
	pkey = EVP_EC_gen("P-256");
	cert = X509_new();
	if (pkey == NULL || cert == NULL) {
		err_set(err, 0, "cannot generate a TLS key");
		goto out;
	}
	X509_set_version(cert, 2);
	random_bytes(serial, sizeof(serial));
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
	X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
	X509_gmtime_adj(X509_getm_notAfter(cert), 10L * 365 * 24 * 3600);
	X509_set_pubkey(cert, pkey);
	name = X509_get_subject_name(cert);
	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"Kumo", -1, -1,
				   0);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
				   (const unsigned char *)"kumo-controllerd", -1, -1, 0);
	X509_set_issuer_name(cert, name);
	if (strcmp(host, "127.0.0.1") && strcmp(host, "0.0.0.0") && host[0])
		san = xasprintf("DNS:localhost,IP:127.0.0.1,IP:%s", host);
	else
		san = xstrdup("DNS:localhost,IP:127.0.0.1");
	if (add_ext(cert, NID_subject_alt_name, san) < 0 ||
	    add_ext(cert, NID_basic_constraints, "critical,CA:TRUE") < 0 ||
	    add_ext(cert, NID_key_usage, "critical,digitalSignature,keyCertSign") < 0 ||
	    add_ext(cert, NID_ext_key_usage, "serverAuth") < 0 ||
	    X509_sign(cert, pkey, EVP_sha256()) == 0) {
		err_set(err, 0, "cannot build the TLS certificate");
		goto out;
	}
	kb = BIO_new(BIO_s_mem());
	cb = BIO_new(BIO_s_mem());
	if (!PEM_write_bio_PrivateKey(kb, pkey, NULL, NULL, 0, NULL, NULL) ||
	    !PEM_write_bio_X509(cb, cert)) {
		err_set(err, 0, "cannot encode the TLS key and certificate");
		goto out;
	}
	keypem = bio_text(kb, &klen);
	certpem = bio_text(cb, &clen);
	if ((rc = file_write_atomic(kp, keypem, klen, 0600)) < 0 ||
	    (rc = file_write_atomic(cp, certpem, clen, 0644)) < 0) {
		err_set(err, -rc, "cannot write %s", kp);
		goto out;
	}
	log_info("tls: created a self-signed certificate %s for %s", cp, san);
	ret = 0;
out:
	BN_free(bn);
	BIO_free(kb);
	BIO_free(cb);
	X509_free(cert);
	EVP_PKEY_free(pkey);
	return ret;
}

/* The newest OpenSSL error as text, for a start-up message. */
static const char *ssl_reason(void)
{
	static char buf[256];
	unsigned long e = ERR_peek_last_error();

	if (e == 0)
		return "not PEM";
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return buf;
}

/*
 * Check that cert_path holds a PEM certificate and key_path the PEM private key of
 * that certificate, so a mismatched pair is refused at start (and by -n) with a
 * clear message rather than failing every handshake. Returns 0 or -1 with err.
 */
int tls_pair_check(const char *cert_path, const char *key_path, struct kerr *err)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	struct stat st;
	FILE *f;
	int ret = -1;

	if ((f = fopen(cert_path, "re")) == NULL)
		return err_set(err, errno, "tls_cert: cannot open %s", cert_path);
	cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (cert == NULL) {
		err_set(err, 0, "tls_cert: %s holds no PEM certificate (%s)", cert_path,
			ssl_reason());
		goto out;
	}
	if ((f = fopen(key_path, "re")) == NULL) {
		err_set(err, errno, "tls_key: cannot open %s", key_path);
		goto out;
	}
	key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (key == NULL) {
		err_set(err, 0, "tls_key: %s holds no unencrypted PEM private key (%s)", key_path,
			ssl_reason());
		goto out;
	}
	if (X509_check_private_key(cert, key) != 1) {
		ERR_clear_error();
		err_set(err, 0, "tls_key %s is not the private key of tls_cert %s", key_path,
			cert_path);
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
		log_warnx("tls: the certificate %s has expired", cert_path);
	if (stat(key_path, &st) == 0 && (st.st_mode & 0077))
		log_warnx("tls: the key %s is readable by others than its owner (mode %03o)",
			  key_path, (unsigned)(st.st_mode & 0777));
	ret = 0;
out:
	X509_free(cert);
	EVP_PKEY_free(key);
	return ret;
}
