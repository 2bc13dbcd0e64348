/*
 * images.c - the image records of the domain: the key that signs them and the lookup
 * that every user of an image goes through (create, adopt), refusing a record changed
 * behind the controller. The images API (api_images.c) and adopting (drift.c) both
 * read images here.
 */
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

/*
 * The image records' key: HMAC-SHA256 over each record's name, path, SHA-256 and size
 * (images.sig), so a record changed behind the controller (its database edited, or a
 * copy restored from elsewhere) is refused rather than sent to a host as the truth.
 * Hosts never see the key: what they get is the record inside a command sealed with
 * their own link key, which is the controller's word already. The record never lives
 * on the shared pool, so no host can rewrite it there.
 */
static unsigned char image_key[32];

/*
 * Load {state_dir}/image.key, or make it (32 random bytes, 0600). At start-up only.
 * Returns 0 or -1 with err.
 */
int images_key_load(const char *state_dir, struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/image.key", state_dir), *data = NULL;
	size_t len = 0;
	int rc;

	rc = file_read_all(path, 64, &data, &len);
	if (rc == 0 && len == sizeof(image_key)) {
		memcpy(image_key, data, sizeof(image_key));
		return 0;
	}
	if (rc == 0 || rc != -ENOENT)
		return err_set(err, rc < 0 ? -rc : 0, "%s is unreadable or not %zu bytes", path,
			       sizeof(image_key));
	random_bytes(image_key, sizeof(image_key));
	rc = file_write_atomic(path, image_key, sizeof(image_key), 0600);
	if (rc < 0)
		return err_set(err, -rc, "cannot write %s", path);
	return 0;
}

/*
 * The signature of an image record (hex, 64 characters and a NUL into out): what
 * images.sig holds.
 */
void image_sig(const char *name, const char *path, const char *sha256, int64_t size, char out[65])
{
	_cleanup_free_ char *msg =
		xasprintf("kumo-vm-image\n%s\n%s\n%s\n%lld", name, path, sha256, (long long)size);
	unsigned char mac[32];
	unsigned int len = sizeof(mac);

	HMAC(EVP_sha256(), image_key, sizeof(image_key), (const unsigned char *)msg, strlen(msg),
	     mac, &len);
	hex_encode(mac, sizeof(mac), out);
}

/*
 * Look up an image by name: id (0 when absent, -1 when its record does not verify
 * against its signature), path relative to the shared pool, its virtual size and its
 * SHA-256 as recorded at import (hex, 65 bytes with the NUL; the agent checks the file
 * against it before a VM uses it). Out pointers may be NULL.
 */
int64_t image_find(const char *name, char *path, size_t pathlen, int64_t *virtual_size,
		   char *sha256)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id, path, virtual_size, sha256, file_size, "
					      "sig FROM images WHERE name = ? AND kind = 'vm'");
	char sig[65], want[65];
	int64_t id = 0;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		id = sqlite3_column_int64(st, 0);
		image_sig(name, (const char *)sqlite3_column_text(st, 1),
			  (const char *)sqlite3_column_text(st, 3), sqlite3_column_int64(st, 4),
			  want);
		snprintf(sig, sizeof(sig), "%s", sqlite3_column_text(st, 5));
		if (path)
			snprintf(path, pathlen, "%s", sqlite3_column_text(st, 1));
		if (virtual_size)
			*virtual_size = sqlite3_column_int64(st, 2);
		if (sha256)
			snprintf(sha256, 65, "%s", sqlite3_column_text(st, 3));
	}
	sqlite3_finalize(st);
	if (id <= 0)
		return id;
	if (sig[0] == '\0') {
		/* Recorded before records were signed: trusted once, signed now. */
		st = db_prepare(ctl.db, "UPDATE images SET sig = ? WHERE id = ?");
		sqlite3_bind_text(st, 1, want, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, id);
		if (sqlite3_step(st) == SQLITE_DONE)
			log_info("image %s: record signed", name);
		else
			log_warnx("image %s: cannot sign its record: %s", name,
				  sqlite3_errmsg(ctl.db));
		sqlite3_finalize(st);
	} else if (CRYPTO_memcmp(sig, want, 64) != 0) {
		log_warnx("image %s: its record does not match its signature: changed outside "
			  "the controller",
			  name);
		return -1;
	}
	return id;
}
