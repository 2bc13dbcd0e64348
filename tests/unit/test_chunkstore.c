/*
 * test_chunkstore.c - common/chunkstore.c: the backup store's chunks are named by
 * their content and stored once, a manifest comes back as written, and a chunk whose
 * bytes changed is caught on read and by verify, with the disk offset it holds.
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

#include "chunkstore.h"
#include "tree.h"
#include "util.h"

struct fixture {
	char root[64];
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	char base[64];
	struct kerr err;

	snprintf(base, sizeof(base), "/tmp/kumo-cs-XXXXXX");
	assert_non_null(mkdtemp(base));
	/* The store's parents are made by init, as a first backup makes them. */
	snprintf(f->root, sizeof(f->root), "%s/a/b", base);
	assert_int_equal(chunkstore_init(f->root, &err), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char base[64];

	snprintf(base, sizeof(base), "%.*s", (int)(strlen(f->root) - 4), f->root);
	tree_remove(base);
	free(f);
	return 0;
}

static void fill(unsigned char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)((i * 31 + seed) % 251);
}

static void test_dedupe(void **state)
{
	struct fixture *f = *state;
	unsigned char *a = xmalloc(CHUNKSTORE_CHUNK_SIZE), *b = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	char h1[65], h2[65], h3[65];
	uint64_t w1, w2, w3;
	struct kerr err;

	fill(a, CHUNKSTORE_CHUNK_SIZE, 1);
	memcpy(b, a, CHUNKSTORE_CHUNK_SIZE);
	assert_int_equal(chunkstore_put(f->root, a, CHUNKSTORE_CHUNK_SIZE, h1, &w1, &err), 0);
	assert_true(w1 > 0);
	/* Compressed: a repetitive megabyte stores in far less. */
	assert_true(w1 < CHUNKSTORE_CHUNK_SIZE / 4);
	assert_int_equal(chunkstore_put(f->root, b, CHUNKSTORE_CHUNK_SIZE, h2, &w2, &err), 0);
	assert_string_equal(h1, h2);
	assert_int_equal(w2, 0); /* the same content adds nothing */
	b[12345] ^= 1;
	assert_int_equal(chunkstore_put(f->root, b, CHUNKSTORE_CHUNK_SIZE, h3, &w3, &err), 0);
	assert_string_not_equal(h1, h3);
	assert_true(w3 > 0);
	/* The name is the SHA-256 of the plain content: a known vector. */
	assert_int_equal(chunkstore_put(f->root, "abc", 3, h3, &w3, &err), 0);
	assert_string_equal(h3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	free(a);
	free(b);
}

static void test_roundtrip_and_corruption(void **state)
{
	struct fixture *f = *state;
	unsigned char *a = xmalloc(CHUNKSTORE_CHUNK_SIZE), *out = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	struct json_object *m = json_object_new_object(), *disks = json_object_new_array();
	struct json_object *disk = json_object_new_object(), *chunks = json_object_new_array();
	struct json_object *back = NULL, *bad = NULL;
	char h1[65], h2[65], path[PATH_MAX];
	uint64_t w;
	size_t len;
	struct kerr err;
	int fd;

	fill(a, CHUNKSTORE_CHUNK_SIZE, 7);
	assert_int_equal(chunkstore_put(f->root, a, CHUNKSTORE_CHUNK_SIZE, h1, &w, &err), 0);
	fill(a, 4096, 9);
	assert_int_equal(chunkstore_put(f->root, a, 4096, h2, &w, &err), 0);
	assert_int_equal(chunkstore_get(f->root, h2, out, CHUNKSTORE_CHUNK_SIZE, &len, &err), 0);
	assert_int_equal(len, 4096);
	assert_memory_equal(out, a, 4096);

	json_object_array_add(chunks, json_object_new_string(h1));
	json_object_array_add(chunks, json_object_new_string(h2));
	json_object_object_add(disk, "name", json_object_new_string("root"));
	json_object_object_add(disk, "chunks", chunks);
	json_object_array_add(disks, disk);
	json_object_object_add(m, "chunk_size", json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	json_object_object_add(m, "disks", disks);
	assert_int_equal(chunkstore_manifest_write(f->root, "b-1", m, &err), 0);
	assert_int_equal(chunkstore_manifest_read(f->root, "b-1", &back, &err), 0);
	assert_true(json_object_equal(m, back));
	assert_int_not_equal(chunkstore_manifest_read(f->root, "../x", &back, &err), 0);
	assert_int_equal(chunkstore_verify(f->root, back, &bad, &err), 0);
	assert_null(bad);

	/* One byte of the second chunk's file changes: read and verify both catch it. */
	chunkstore_chunk_path(f->root, h2, path, sizeof(path));
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	{
		unsigned char c;
		off_t at = lseek(fd, 0, SEEK_END) - 3;

		assert_int_equal(pread(fd, &c, 1, at), 1);
		c ^= 0x40;
		assert_int_equal(pwrite(fd, &c, 1, at), 1);
	}
	close(fd);
	assert_true(chunkstore_get(f->root, h2, out, CHUNKSTORE_CHUNK_SIZE, &len, &err) < 0);
	assert_int_equal(err.code, EBADMSG);
	assert_int_equal(chunkstore_verify(f->root, back, &bad, &err), 1);
	assert_string_equal(json_object_get_string(json_object_object_get(
				    json_object_array_get_idx(bad, 0), "chunk")),
			    h2);
	assert_int_equal(json_object_get_int64(json_object_object_get(
				 json_object_array_get_idx(bad, 0), "offset")),
			 CHUNKSTORE_CHUNK_SIZE);
	json_object_put(bad);

	/* A missing chunk is named as missing. */
	chunkstore_chunk_path(f->root, h1, path, sizeof(path));
	assert_int_equal(unlink(path), 0);
	assert_true(chunkstore_get(f->root, h1, out, CHUNKSTORE_CHUNK_SIZE, &len, &err) < 0);
	assert_int_equal(err.code, ENOENT);
	assert_int_equal(chunkstore_verify(f->root, back, &bad, &err), 2);
	json_object_put(bad);
	json_object_put(back);
	json_object_put(m);
	free(a);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_dedupe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_roundtrip_and_corruption, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
