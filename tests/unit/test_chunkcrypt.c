/*
 * test_chunkcrypt.c - common/chunkcrypt.c and the encrypted store in chunkstore.c:
 * AES-256-GCM seals with a fresh nonce and refuses a changed byte, another name or
 * another key; a store key wrapped under one master key opens only under it; an
 * encrypted store names chunks by a keyed digest (no plain SHA-256, none shared with
 * another key), keeps no plain text in its chunk files, catches a flipped byte on
 * read and in verify (naming the GCM tag), refuses a wrong key by its key check
 * value, and authenticates its manifests with the spec sealed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chunkcrypt.h"
#include "chunkpipe.h"
#include "chunkstore.h"
#include "json.h"
#include "tree.h"
#include "util.h"

#define KEY_A  "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define KEY_B  "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
#define MARKER "kumo-plaintext-marker-0123456789"

struct fixture {
	char base[64];
	char root[96];
	struct chunkcrypt_key a, b;
};

static void key_make(const char *hex, struct chunkcrypt_key *k)
{
	unsigned char raw[CHUNKCRYPT_KEY_LEN];
	struct kerr err;

	assert_int_equal(chunkcrypt_key_parse(hex, raw, &err), 0);
	chunkcrypt_key_derive(raw, CHUNKSTORE_CHUNK_SIZE, k);
}

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct kerr err;

	snprintf(f->base, sizeof(f->base), "/tmp/kumo-cc-XXXXXX");
	assert_non_null(mkdtemp(f->base));
	snprintf(f->root, sizeof(f->root), "%s/store", f->base);
	assert_int_equal(chunkstore_init(f->root, &err), 0);
	key_make(KEY_A, &f->a);
	key_make(KEY_B, &f->b);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	tree_remove(f->base);
	free(f);
	return 0;
}

/* A chunk of text-like data holding MARKER many times: compressible, findable. */
static unsigned char *marked_chunk(size_t len)
{
	unsigned char *buf = xmalloc(len);

	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)MARKER[i % strlen(MARKER)];
	return buf;
}

static bool file_has(const char *path, const void *needle, size_t nlen)
{
	_cleanup_free_ char *text = NULL;
	size_t len = 0;

	assert_int_equal(file_read_all(path, 64 << 20, &text, &len), 0);
	return memmem(text, len, needle, nlen) != NULL;
}

static void test_key_parse(void **state)
{
	unsigned char raw[CHUNKCRYPT_KEY_LEN];
	struct kerr err;

	(void)state;
	assert_int_equal(chunkcrypt_key_parse(KEY_A, raw, &err), 0);
	assert_int_equal(raw[1], 0x11);
	/* Upper case is the same key. */
	assert_int_equal(chunkcrypt_key_parse("00112233445566778899AABBCCDDEEFF00112233445566778899"
					      "AABBCCDDEEFF",
					      raw, &err),
			 0);
	assert_int_equal(raw[10], 0xaa);
	assert_true(chunkcrypt_key_parse("0011", raw, &err) < 0);
	assert_string_equal(err.field, "encryption_key");
	assert_true(chunkcrypt_key_parse(KEY_A "00", raw, &err) < 0);
	assert_true(chunkcrypt_key_parse("zz112233445566778899aabbccddeeff00112233445566778899aabb"
					 "ccddeeff",
					 raw, &err) < 0);
	assert_true(chunkcrypt_key_parse(NULL, raw, &err) < 0);
}

static void test_seal_open(void **state)
{
	struct fixture *f = *state;
	const char *msg = "compress, then encrypt";
	unsigned char s1[128], s2[128], out[128];
	size_t l1, l2, len;
	struct kerr err;

	assert_int_equal(
		chunkcrypt_seal(&f->a, "name1", msg, strlen(msg), s1, sizeof(s1), &l1, &err), 0);
	assert_int_equal(l1, strlen(msg) + CHUNKCRYPT_OVERHEAD);
	assert_memory_equal(s1, CHUNKCRYPT_MAGIC, 4);
	assert_null(memmem(s1, l1, "encrypt", 7));
	/* A fresh nonce each time: the same chunk seals differently. */
	assert_int_equal(
		chunkcrypt_seal(&f->a, "name1", msg, strlen(msg), s2, sizeof(s2), &l2, &err), 0);
	assert_memory_not_equal(s1 + 4, s2 + 4, CHUNKCRYPT_NONCE_LEN);

	assert_int_equal(chunkcrypt_open(&f->a, "name1", s1, l1, out, sizeof(out), &len, &err), 0);
	assert_int_equal(len, strlen(msg));
	assert_memory_equal(out, msg, len);
	/* Another name (a chunk file moved), another key, a flipped byte: refused. */
	assert_true(chunkcrypt_open(&f->a, "name2", s1, l1, out, sizeof(out), &len, &err) < 0);
	assert_int_equal(err.code, EBADMSG);
	assert_non_null(strstr(err.msg, "GCM tag"));
	assert_true(chunkcrypt_open(&f->b, "name1", s1, l1, out, sizeof(out), &len, &err) < 0);
	s1[20] ^= 1;
	assert_true(chunkcrypt_open(&f->a, "name1", s1, l1, out, sizeof(out), &len, &err) < 0);
	s1[20] ^= 1;
	s1[l1 - 1] ^= 0x80; /* the tag itself */
	assert_true(chunkcrypt_open(&f->a, "name1", s1, l1, out, sizeof(out), &len, &err) < 0);
	assert_true(chunkcrypt_open(&f->a, "name1", s1, 10, out, sizeof(out), &len, &err) < 0);
}

static void test_derive_and_names(void **state)
{
	struct fixture *f = *state;
	unsigned char raw[CHUNKCRYPT_KEY_LEN];
	char plain[65], na[65], nb[65], check[65];
	struct chunkcrypt_key again;
	struct kerr err;

	/* Deterministic: the same operator key gives the same keys. */
	key_make(KEY_A, &again);
	assert_memory_equal(&again, &f->a, sizeof(again));
	/* Names differ by key and from the plain store's SHA-256. */
	chunkcrypt_name(&f->a, "abc", 3, na);
	chunkcrypt_name(&f->b, "abc", 3, nb);
	assert_string_not_equal(na, nb);
	assert_string_equal(
		"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		(chunkstore_put(f->root, "abc", 3, plain, &(uint64_t){0}, &err), plain));
	assert_string_not_equal(na, plain);
	assert_string_not_equal(f->a.zero_name, CHUNKSTORE_ZERO_HEX);
	assert_string_not_equal(f->a.zero_name, f->b.zero_name);
	/* The check value is neither the key nor a derived key, and tells keys apart. */
	assert_int_equal(chunkcrypt_key_parse(KEY_A, raw, &err), 0);
	chunkcrypt_check_value(raw, check);
	assert_string_equal(check, f->a.check);
	assert_string_not_equal(f->a.check, f->b.check);
	assert_null(strstr(check, KEY_A));
	chunkcrypt_key_wipe(&again);
	assert_true(mem_is_zero(&again, sizeof(again)));
}

static void test_wrap(void **state)
{
	unsigned char m1[CHUNKCRYPT_KEY_LEN], m2[CHUNKCRYPT_KEY_LEN], key[CHUNKCRYPT_KEY_LEN],
		back[CHUNKCRYPT_KEY_LEN];
	_cleanup_free_ char *w1 = NULL, *w2 = NULL;
	struct kerr err;

	(void)state;
	random_bytes(m1, sizeof(m1));
	random_bytes(m2, sizeof(m2));
	assert_int_equal(chunkcrypt_key_parse(KEY_A, key, &err), 0);
	w1 = chunkcrypt_wrap(m1, key);
	w2 = chunkcrypt_wrap(m1, key);
	assert_true(!strncmp(w1, "v1:", 3));
	assert_string_not_equal(w1, w2); /* a fresh nonce */
	/* The wrapped text holds no trace of the key's hex. */
	assert_null(strstr(w1, KEY_A));
	assert_null(strstr(w1, "00112233445566778899"));
	assert_int_equal(chunkcrypt_unwrap(m1, w1, back, &err), 0);
	assert_memory_equal(back, key, sizeof(key));
	/* Another master key, a changed digit, a cut text: refused. */
	assert_true(chunkcrypt_unwrap(m2, w1, back, &err) < 0);
	assert_int_equal(err.code, EBADMSG);
	assert_non_null(strstr(err.msg, "another master key"));
	w1[10] = w1[10] == '0' ? '1' : '0';
	assert_true(chunkcrypt_unwrap(m1, w1, back, &err) < 0);
	w1[20] = '\0';
	assert_true(chunkcrypt_unwrap(m1, w1, back, &err) < 0);
	assert_true(chunkcrypt_unwrap(m1, "v2:00", back, &err) < 0);
}

static void test_store_chunks(void **state)
{
	struct fixture *f = *state;
	unsigned char *data = marked_chunk(CHUNKSTORE_CHUNK_SIZE);
	unsigned char *out = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	char hex[65], again[65], path[PATH_MAX];
	struct chunkstore_writer w;
	struct json_object *m, *disks, *disk, *chunks, *bad = NULL;
	uint64_t written, w2;
	size_t len;
	struct kerr err;
	int fd;

	chunkstore_writer_init(&w);
	w.key = &f->a;
	assert_int_equal(
		chunkstore_put_with(f->root, &w, data, CHUNKSTORE_CHUNK_SIZE, hex, &written, &err),
		0);
	assert_true(written > 0 && written < CHUNKSTORE_CHUNK_SIZE / 10); /* compressed first */
	/* Dedup within the store still works. */
	assert_int_equal(
		chunkstore_put_with(f->root, &w, data, CHUNKSTORE_CHUNK_SIZE, again, &w2, &err), 0);
	assert_string_equal(hex, again);
	assert_int_equal(w2, 0);
	chunkstore_writer_free(&w);

	/* No plain text in the file; reads back with the key, not without, not with another. */
	chunkstore_chunk_path(f->root, hex, path, sizeof(path));
	assert_false(file_has(path, MARKER, strlen(MARKER)));
	assert_true(file_has(path, CHUNKCRYPT_MAGIC, 4));
	assert_int_equal(
		chunkstore_get_with(f->root, &f->a, hex, out, CHUNKSTORE_CHUNK_SIZE, &len, &err),
		0);
	assert_int_equal(len, CHUNKSTORE_CHUNK_SIZE);
	assert_memory_equal(out, data, len);
	assert_true(chunkstore_get(f->root, hex, out, CHUNKSTORE_CHUNK_SIZE, &len, &err) < 0);
	assert_true(chunkstore_get_with(f->root, &f->b, hex, out, CHUNKSTORE_CHUNK_SIZE, &len,
					&err) < 0);
	assert_non_null(strstr(err.msg, "GCM tag"));

	/* A manifest naming it verifies; one flipped byte of the chunk file is named by
	 * verify as a GCM tag failure at its offset. */
	m = json_object_new_object();
	json_object_object_add(m, "version", json_object_new_int(CHUNKSTORE_MANIFEST_V));
	json_object_object_add(m, "chunk_size", json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	disks = json_object_new_array();
	disk = json_object_new_object();
	chunks = json_object_new_array();
	json_object_array_add(chunks, json_object_new_string(f->a.zero_name));
	json_object_array_add(chunks, json_object_new_string(hex));
	json_object_object_add(disk, "name", json_object_new_string("root"));
	json_object_object_add(disk, "virtual_size",
			       json_object_new_int64(2 * CHUNKSTORE_CHUNK_SIZE));
	assert_int_equal(chunkstore_list_sum(chunks, 2 * CHUNKSTORE_CHUNK_SIZE,
					     CHUNKSTORE_CHUNK_SIZE, again, &err),
			 0);
	json_object_object_add(disk, "sha256", json_object_new_string(again));
	json_object_object_add(disk, "chunks", chunks);
	json_object_array_add(disks, disk);
	json_object_object_add(m, "disks", disks);
	assert_int_equal(chunkstore_verify_with(f->root, &f->a, m, &bad, &err), 0);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	{
		unsigned char c;

		assert_int_equal(pread(fd, &c, 1, 40), 1);
		c ^= 0x01;
		assert_int_equal(pwrite(fd, &c, 1, 40), 1);
	}
	close(fd);
	assert_int_equal(chunkstore_verify_with(f->root, &f->a, m, &bad, &err), 1);
	assert_string_equal(json_get_str(json_object_array_get_idx(bad, 0), "chunk", ""), hex);
	assert_int_equal(json_get_int(json_object_array_get_idx(bad, 0), "offset", -1),
			 CHUNKSTORE_CHUNK_SIZE);
	assert_non_null(
		strstr(json_get_str(json_object_array_get_idx(bad, 0), "error", ""), "GCM tag"));
	json_object_put(bad);
	json_object_put(m);
	free(data);
	free(out);
}

/*
 * An incompressible chunk in an encrypted store: stored as a raw zstd frame, then
 * sealed, so its file still holds no plain text (a marker planted in random bytes is
 * not found), it is named by the keyed digest, dedups, reads back only with the key,
 * and a flipped byte fails the GCM tag.
 */
static void test_store_raw_chunk(void **state)
{
	struct fixture *f = *state;
	unsigned char *data = xmalloc(CHUNKSTORE_CHUNK_SIZE), *out = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	char hex[65], again[65], want[65], path[PATH_MAX];
	struct chunkstore_writer w;
	uint64_t written, w2, x = 0x1234567;
	size_t len;
	struct kerr err;
	int fd;

	for (size_t i = 0; i < CHUNKSTORE_CHUNK_SIZE; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		data[i] = (unsigned char)(x >> 24);
	}
	for (size_t at = 0; at < CHUNKSTORE_CHUNK_SIZE; at += 1 << 20)
		memcpy(data + at + 777, MARKER, strlen(MARKER));
	chunkstore_writer_init(&w);
	w.key = &f->a;
	assert_int_equal(
		chunkstore_put_with(f->root, &w, data, CHUNKSTORE_CHUNK_SIZE, hex, &written, &err),
		0);
	assert_int_equal(w.raw_chunks, 1);
	assert_int_equal(written, CHUNKSTORE_CHUNK_SIZE + 9 + 32 * 3 + CHUNKCRYPT_OVERHEAD);
	chunkcrypt_name(&f->a, data, CHUNKSTORE_CHUNK_SIZE, want);
	assert_string_equal(hex, want);
	assert_int_equal(
		chunkstore_put_with(f->root, &w, data, CHUNKSTORE_CHUNK_SIZE, again, &w2, &err), 0);
	assert_string_equal(again, hex);
	assert_int_equal(w2, 0);
	chunkstore_writer_free(&w);

	chunkstore_chunk_path(f->root, hex, path, sizeof(path));
	assert_false(file_has(path, MARKER, strlen(MARKER)));
	assert_int_equal(
		chunkstore_get_with(f->root, &f->a, hex, out, CHUNKSTORE_CHUNK_SIZE, &len, &err),
		0);
	assert_int_equal(len, CHUNKSTORE_CHUNK_SIZE);
	assert_memory_equal(out, data, len);
	assert_true(chunkstore_get_with(f->root, &f->b, hex, out, CHUNKSTORE_CHUNK_SIZE, &len,
					&err) < 0);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	{
		unsigned char c;

		assert_int_equal(pread(fd, &c, 1, 2 << 20), 1);
		c ^= 0x01;
		assert_int_equal(pwrite(fd, &c, 1, 2 << 20), 1);
	}
	close(fd);
	assert_true(chunkstore_get_with(f->root, &f->a, hex, out, CHUNKSTORE_CHUNK_SIZE, &len,
					&err) < 0);
	assert_int_equal(err.code, EBADMSG);
	assert_non_null(strstr(err.msg, "GCM tag"));
	free(data);
	free(out);
}

static void test_key_check_file(void **state)
{
	struct fixture *f = *state;
	char other[128];
	struct kerr err;

	/* A plain store takes no key file and no key. */
	assert_int_equal(chunkstore_key_check(f->root, NULL, true, &err), 0);
	/* The first backup with a key records it; then only that key passes. */
	assert_int_equal(chunkstore_key_check(f->root, &f->a, true, &err), 0);
	assert_int_equal(chunkstore_key_check(f->root, &f->a, false, &err), 0);
	assert_true(chunkstore_key_check(f->root, &f->b, true, &err) < 0);
	assert_int_equal(err.code, EACCES);
	assert_non_null(strstr(err.msg, "key check value"));
	assert_true(chunkstore_key_check(f->root, NULL, false, &err) < 0);
	assert_non_null(strstr(err.msg, "encrypted"));
	/* Without create (a restore), a store with no file is left as it is. */
	snprintf(other, sizeof(other), "%s/other", f->base);
	assert_int_equal(chunkstore_init(other, &err), 0);
	assert_int_equal(chunkstore_key_check(other, &f->a, false, &err), 0);
	assert_int_equal(access(other, F_OK), 0);
}

static void test_manifest(void **state)
{
	struct fixture *f = *state;
	struct json_object *m = json_object_new_object(), *spec = json_object_new_object(), *back;
	char path[PATH_MAX];
	_cleanup_free_ char *text = NULL;
	size_t len;
	struct kerr err;
	FILE *fp;

	json_object_object_add(spec, "env", json_object_new_string("PASSWORD=" MARKER));
	json_object_object_add(m, "version", json_object_new_int(CHUNKSTORE_MANIFEST_V));
	json_object_object_add(m, "id", json_object_new_string("b-1"));
	json_object_object_add(m, "spec", spec);
	json_object_object_add(m, "disks", json_object_new_array());
	assert_int_equal(chunkstore_manifest_write_with(f->root, &f->a, "b-1", m, &err), 0);
	/* The caller's manifest is untouched; the file holds no spec in the clear. */
	assert_non_null(json_object_object_get(m, "spec"));
	snprintf(path, sizeof(path), "%s/backups/b-1.json", f->root);
	assert_false(file_has(path, MARKER, strlen(MARKER)));

	assert_int_equal(chunkstore_manifest_read_with(f->root, &f->a, "b-1", &back, &err), 0);
	assert_string_equal(json_get_str(json_object_object_get(back, "spec"), "env", ""),
			    "PASSWORD=" MARKER);
	assert_null(json_object_object_get(back, "mac"));
	assert_null(json_object_object_get(back, "spec_sealed"));
	json_object_put(back);
	/* The garbage collection reads it without the key (chunk lists only). */
	assert_int_equal(chunkstore_manifest_read(f->root, "b-1", &back, &err), 0);
	assert_non_null(json_object_object_get(back, "disks"));
	json_object_put(back);
	/* Another key, or none: refused, saying why. */
	assert_true(chunkstore_manifest_read_with(f->root, &f->b, "b-1", &back, &err) < 0);
	assert_int_equal(err.code, EACCES);
	assert_non_null(strstr(err.msg, "key check value"));
	assert_true(chunkstore_manifest_read_with(f->root, NULL, "b-1", &back, &err) < 0);
	assert_non_null(strstr(err.msg, "encryption key is needed"));

	/* One changed character of the chunk list: the MAC refuses it. */
	assert_int_equal(file_read_all(path, 1 << 20, &text, &len), 0);
	{
		char *d = strstr(text, "\"disks\":[]");

		assert_non_null(d);
		memcpy(d, "\"disk2\"", 7);
	}
	fp = fopen(path, "w");
	fwrite(text, 1, len, fp);
	fclose(fp);
	assert_true(chunkstore_manifest_read_with(f->root, &f->a, "b-1", &back, &err) < 0);
	assert_int_equal(err.code, EBADMSG);
	assert_non_null(strstr(err.msg, "MAC"));
	json_object_put(m);
}

/* The pipeline names zeros by the store's keyed zero name and stores it sealed. */
static void test_pipeline_keyed(void **state)
{
	struct fixture *f = *state;
	char src_path[160], zpath[PATH_MAX];
	unsigned char *data = marked_chunk(CHUNKSTORE_CHUNK_SIZE);
	struct json_object *chunks = json_object_new_array();
	struct chunkpipe_result res;
	struct kerr err;
	int fd;

	snprintf(src_path, sizeof(src_path), "%s/disk.raw", f->base);
	fd = open(src_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, data, CHUNKSTORE_CHUNK_SIZE, 0), CHUNKSTORE_CHUNK_SIZE);
	assert_int_equal(ftruncate(fd, 3 * CHUNKSTORE_CHUNK_SIZE), 0);
	{
		struct chunkpipe_file file = {.fd = fd, .path = src_path};
		struct chunkpipe_source src = {.size = 3 * CHUNKSTORE_CHUNK_SIZE,
					       .read = chunkpipe_file_read,
					       .hole = chunkpipe_file_hole,
					       .data = &file,
					       .key = &f->a};

		assert_int_equal(chunkpipe_store(f->root, &src, 2, chunks, &res, &err), 0);
	}
	close(fd);
	assert_int_equal(json_array_len(chunks), 3);
	assert_string_equal(json_object_get_string(json_object_array_get_idx(chunks, 1)),
			    f->a.zero_name);
	chunkstore_chunk_path(f->root, f->a.zero_name, zpath, sizeof(zpath));
	assert_int_equal(access(zpath, F_OK), 0);
	chunkstore_chunk_path(f->root, CHUNKSTORE_ZERO_HEX, zpath, sizeof(zpath));
	assert_int_not_equal(access(zpath, F_OK), 0);
	{
		unsigned char *out = xmalloc(CHUNKSTORE_CHUNK_SIZE);
		size_t len;
		const char *h0 = json_object_get_string(json_object_array_get_idx(chunks, 0));

		assert_int_equal(chunkstore_get_with(f->root, &f->a, h0, out, CHUNKSTORE_CHUNK_SIZE,
						     &len, &err),
				 0);
		assert_memory_equal(out, data, CHUNKSTORE_CHUNK_SIZE);
		free(out);
	}
	json_object_put(chunks);
	free(data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key_parse),
		cmocka_unit_test_setup_teardown(test_seal_open, setup, teardown),
		cmocka_unit_test_setup_teardown(test_derive_and_names, setup, teardown),
		cmocka_unit_test(test_wrap),
		cmocka_unit_test_setup_teardown(test_store_chunks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_raw_chunk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_key_check_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_manifest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pipeline_keyed, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
