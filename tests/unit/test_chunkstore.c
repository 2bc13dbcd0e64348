/*
 * test_chunkstore.c - common/chunkstore.c: the backup store's chunks are named by
 * their content and stored once, a manifest comes back as written, and a chunk whose
 * bytes changed is caught on read and by verify, with the disk offset it holds; the
 * disk checksum rule of manifest version 2 (over the chunk list); and chunkpipe.c's
 * parallel pipeline names the same chunks, in the same order, as storing them one by
 * one, with zeros and holes named without hashing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <unistd.h>
#include <zstd.h>

#include "json.h"
#include "chunkpipe.h"
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

/* The store's directories are made 0755 whatever the umask (the agent's unit sets
 * 0077), so a VM's QEMU, under its own uid, reaches its backup's work directory. */
static void test_init_modes(void **state)
{
	struct fixture *f = *state;
	char root[128], path[160];
	/* QEMU passes the root and tmp/ (0711: searchable, not listable); nobody else
	 * enters chunks/ or backups/ (manifests, chunk names). */
	const struct {
		const char *dir;
		mode_t mode;
	} dirs[] = {{"", 0711}, {"/tmp", 0711}, {"/chunks", 0700}, {"/backups", 0700}};
	struct kerr err;
	struct stat sb;
	mode_t old = umask(0077);

	(void)state;
	snprintf(root, sizeof(root), "%s/m/n", f->root);
	assert_int_equal(chunkstore_init(root, &err), 0);
	snprintf(path, sizeof(path), "%s/m", f->root);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0711);
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(path, sizeof(path), "%s%s", root, dirs[i].dir);
		assert_int_equal(stat(path, &sb), 0);
		if ((sb.st_mode & 07777) != dirs[i].mode)
			fail_msg("%s: mode %o, not %o", path, sb.st_mode & 07777, dirs[i].mode);
	}
	/* A fan-out directory comes with its first chunk, 0700 as chunks/ itself. */
	{
		static const char data[] = "a chunk that makes its fan-out directory";
		char hex[CHUNKSTORE_HEX_LEN + 1];
		uint64_t written;

		snprintf(path, sizeof(path), "%s/chunks/00", root);
		assert_int_equal(stat(path, &sb), -1); /* none up front */
		assert_int_equal(chunkstore_put(root, data, sizeof(data), hex, &written, &err), 0);
		snprintf(path, sizeof(path), "%s/chunks/%.2s", root, hex);
		assert_int_equal(stat(path, &sb), 0);
		assert_int_equal(sb.st_mode & 07777, 0700);
	}
	/* A store made under umask 0077 before (all 0700): the root and tmp/ get the
	 * search bits QEMU needs, the rest stays as it was. */
	assert_int_equal(chmod(root, 0700), 0);
	snprintf(path, sizeof(path), "%s/tmp", root);
	assert_int_equal(chmod(path, 0700), 0);
	assert_int_equal(chunkstore_init(root, &err), 0);
	assert_int_equal(stat(root, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0711);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0711);
	/* A store made under umask 022 before (chunks/ and backups/ 0755): others lose
	 * their bits there, a group keeps its own. */
	snprintf(path, sizeof(path), "%s/chunks", root);
	assert_int_equal(chmod(path, 0755), 0);
	assert_int_equal(chunkstore_init(root, &err), 0);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0750);
	assert_int_equal(chmod(path, 0700), 0);
	/* Otherwise a directory that was there keeps its mode. */
	snprintf(path, sizeof(path), "%s/backups", root);
	assert_int_equal(chmod(path, 0750), 0);
	assert_int_equal(chmod(root, 0751), 0);
	assert_int_equal(chunkstore_init(root, &err), 0);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0750);
	assert_int_equal(stat(root, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0751);
	umask(old);
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
	/* As a backup does: the store's fd for the commit, opened before any chunk. */
	int fd, sfd = chunkstore_open(f->root, &err);

	assert_true(sfd >= 0);
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
	json_object_put(back);
	/* A backup's commit names the same manifest, and leaves no work file behind. */
	{
		int64_t flush_ms = -1;
		int n = 0;
		DIR *d;

		assert_int_equal(
			chunkstore_backup_commit(f->root, sfd, NULL, "b-2", m, &flush_ms, &err), 0);
		assert_true(flush_ms >= 0);
		assert_int_equal(chunkstore_manifest_read(f->root, "b-2", &back, &err), 0);
		assert_true(json_object_equal(m, back));
		json_object_put(back);
		snprintf(path, sizeof(path), "%s/backups", f->root);
		d = opendir(path);
		assert_non_null(d);
		for (struct dirent *e; (e = readdir(d)) != NULL;)
			n += e->d_name[0] != '.';
		closedir(d);
		assert_int_equal(n, 2); /* b-1.json and b-2.json */
		assert_true(chunkstore_backup_commit(f->root, sfd, NULL, "../x", m, NULL, &err) <
			    0);
		/* The flush runs on the fd given (the one opened before the chunks), not on
		 * one the commit opens: a flush that cannot run names nothing. */
		close(sfd);
		assert_true(chunkstore_backup_commit(f->root, -1, NULL, "b-3", m, NULL, &err) < 0);
		assert_int_equal(err.code, EBADF);
		n = 0;
		d = opendir(path);
		assert_non_null(d);
		for (struct dirent *e; (e = readdir(d)) != NULL;)
			n += e->d_name[0] != '.';
		closedir(d);
		assert_int_equal(n, 2); /* no b-3.json, no work file */
	}
	assert_int_equal(chunkstore_manifest_read(f->root, "b-1", &back, &err), 0);
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

/* Incompressible bytes (xorshift), as a disk of random data holds. */
static void fill_random(unsigned char *buf, size_t len, uint64_t seed)
{
	uint64_t x = seed | 1;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = (unsigned char)x;
	}
}

/*
 * The probe: random data is stored as a zstd frame of raw blocks (the file is the
 * chunk plus 105 bytes of framing, the writer counts it), any zstd decoder reads it
 * back, the name is still the plain SHA-256 (a second put dedups it), it round-trips
 * through chunkstore_get and verify, and a flipped byte in a raw block is caught. A
 * chunk half random, half text is still compressed, and so is a text-like one.
 */
static void test_incompressible_raw(void **state)
{
	struct fixture *f = *state;
	unsigned char *a = xmalloc(CHUNKSTORE_CHUNK_SIZE), *out = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	unsigned char *frame = xmalloc(CHUNKSTORE_CHUNK_SIZE + 4096);
	unsigned char md[32];
	char hex[65], again[65], want[65], path[PATH_MAX];
	struct chunkstore_writer w;
	struct json_object *m, *disks, *disk, *chunks, *bad = NULL;
	uint64_t written, w2;
	unsigned int mdlen;
	size_t len, n;
	struct stat sb;
	struct kerr err;
	int fd;

	fill_random(a, CHUNKSTORE_CHUNK_SIZE, 42);
	chunkstore_writer_init(&w);
	assert_true(chunkstore_probe_incompressible(w.cctx, a, CHUNKSTORE_CHUNK_SIZE));
	assert_int_equal(
		chunkstore_put_with(f->root, &w, a, CHUNKSTORE_CHUNK_SIZE, hex, &written, &err), 0);
	assert_int_equal(w.raw_chunks, 1);
	/* 9 bytes of frame header and 3 per 128 KiB block: 32 blocks. */
	assert_int_equal(written, CHUNKSTORE_CHUNK_SIZE + 9 + 32 * 3);
	EVP_Digest(a, CHUNKSTORE_CHUNK_SIZE, md, &mdlen, EVP_sha256(), NULL);
	hex_encode(md, sizeof(md), want);
	assert_string_equal(hex, want);
	assert_int_equal(
		chunkstore_put_with(f->root, &w, a, CHUNKSTORE_CHUNK_SIZE, again, &w2, &err), 0);
	assert_string_equal(again, hex);
	assert_int_equal(w2, 0);

	/* The file is a plain zstd frame: libzstd alone reads it. */
	chunkstore_chunk_path(f->root, hex, path, sizeof(path));
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, (off_t)written);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, frame, written, 0), (ssize_t)written);
	assert_int_equal(ZSTD_getFrameContentSize(frame, written), CHUNKSTORE_CHUNK_SIZE);
	n = ZSTD_decompress(out, CHUNKSTORE_CHUNK_SIZE, frame, written);
	assert_false(ZSTD_isError(n));
	assert_int_equal(n, CHUNKSTORE_CHUNK_SIZE);
	assert_memory_equal(out, a, n);
	close(fd);
	assert_int_equal(chunkstore_get(f->root, hex, out, CHUNKSTORE_CHUNK_SIZE, &len, &err), 0);
	assert_int_equal(len, CHUNKSTORE_CHUNK_SIZE);
	assert_memory_equal(out, a, len);

	/* Odd lengths and the empty chunk frame right too (a disk's tail). */
	for (size_t l = 0; l <= 300000; l += 100003) {
		size_t fl = chunkstore_raw_frame(frame, CHUNKSTORE_CHUNK_SIZE + 4096, a, l);

		assert_true(fl > 0);
		n = ZSTD_decompress(out, CHUNKSTORE_CHUNK_SIZE, frame, fl);
		assert_false(ZSTD_isError(n));
		assert_int_equal(n, l);
		assert_memory_equal(out, a, l);
	}
	assert_int_equal(chunkstore_raw_frame(frame, 100, a, 4096), 0); /* too small */

	/* Verify reads it; a flipped byte inside a raw block is named. */
	m = json_object_new_object();
	json_object_object_add(m, "version", json_object_new_int(CHUNKSTORE_MANIFEST_V));
	json_object_object_add(m, "chunk_size", json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	disks = json_object_new_array();
	disk = json_object_new_object();
	chunks = json_object_new_array();
	json_object_array_add(chunks, json_object_new_string(hex));
	json_object_object_add(disk, "name", json_object_new_string("root"));
	json_object_object_add(disk, "virtual_size", json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	assert_int_equal(chunkstore_list_sum(chunks, CHUNKSTORE_CHUNK_SIZE, CHUNKSTORE_CHUNK_SIZE,
					     want, &err),
			 0);
	json_object_object_add(disk, "sha256", json_object_new_string(want));
	json_object_object_add(disk, "chunks", chunks);
	json_object_array_add(disks, disk);
	json_object_object_add(m, "disks", disks);
	assert_int_equal(chunkstore_verify(f->root, m, &bad, &err), 0);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	{
		unsigned char c;

		assert_int_equal(pread(fd, &c, 1, 1 << 20), 1);
		c ^= 0x10;
		assert_int_equal(pwrite(fd, &c, 1, 1 << 20), 1);
	}
	close(fd);
	assert_int_equal(chunkstore_verify(f->root, m, &bad, &err), 1);
	assert_string_equal(json_get_str(json_object_array_get_idx(bad, 0), "chunk", ""), hex);
	json_object_put(bad);
	json_object_put(m);

	/* Half random, half text-like: the probe sees the text, zstd shrinks it. */
	fill(a + CHUNKSTORE_CHUNK_SIZE / 2, CHUNKSTORE_CHUNK_SIZE / 2, 3);
	assert_false(chunkstore_probe_incompressible(w.cctx, a, CHUNKSTORE_CHUNK_SIZE));
	assert_int_equal(
		chunkstore_put_with(f->root, &w, a, CHUNKSTORE_CHUNK_SIZE, hex, &written, &err), 0);
	assert_int_equal(w.raw_chunks, 1);
	assert_true(written < CHUNKSTORE_CHUNK_SIZE * 3 / 4);
	assert_int_equal(chunkstore_get(f->root, hex, out, CHUNKSTORE_CHUNK_SIZE, &len, &err), 0);
	assert_memory_equal(out, a, CHUNKSTORE_CHUNK_SIZE);
	/* Text-like throughout, and a small random tail: compressed as before. */
	fill(a, CHUNKSTORE_CHUNK_SIZE, 8);
	assert_false(chunkstore_probe_incompressible(w.cctx, a, CHUNKSTORE_CHUNK_SIZE));
	fill_random(a, 4096, 9);
	assert_false(chunkstore_probe_incompressible(w.cctx, a, 4096));
	chunkstore_writer_free(&w);
	free(frame);
	free(a);
	free(out);
}

/* The zero chunk's well-known name is its content's, and reads back as zeros. */
static void test_zero_chunk(void **state)
{
	struct fixture *f = *state;
	unsigned char *z = xcalloc(1, CHUNKSTORE_CHUNK_SIZE), *out = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	char hex[65];
	uint64_t w;
	size_t len;
	struct kerr err;

	assert_int_equal(chunkstore_put(f->root, z, CHUNKSTORE_CHUNK_SIZE, hex, &w, &err), 0);
	assert_string_equal(hex, CHUNKSTORE_ZERO_HEX);
	memset(out, 0xff, CHUNKSTORE_CHUNK_SIZE);
	assert_int_equal(chunkstore_get(f->root, CHUNKSTORE_ZERO_HEX, out, CHUNKSTORE_CHUNK_SIZE,
					&len, &err),
			 0);
	assert_int_equal(len, CHUNKSTORE_CHUNK_SIZE);
	assert_memory_equal(out, z, CHUNKSTORE_CHUNK_SIZE);
	free(z);
	free(out);
}

/* A zero chunk of an older chunk size (1 MiB) is known by its name too: read as zeros
 * without a file, so a backup made before the size changed still restores. */
static void test_zero_chunk_old_size(void **state)
{
	struct fixture *f = *state;
	unsigned char *out = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	const char *old = "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58";
	size_t len;
	struct kerr err;

	assert_int_equal(chunkstore_zero_len(CHUNKSTORE_ZERO_HEX), CHUNKSTORE_CHUNK_SIZE);
	assert_int_equal(chunkstore_zero_len(old), 1024 * 1024);
	assert_int_equal(
		chunkstore_zero_len(
			"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
		0);
	memset(out, 0xff, CHUNKSTORE_CHUNK_SIZE);
	assert_int_equal(chunkstore_get(f->root, old, out, CHUNKSTORE_CHUNK_SIZE, &len, &err), 0);
	assert_int_equal(len, 1024 * 1024);
	assert_true(mem_is_zero(out, len));
	free(out);
}

/* A backup builds on a parent only when their chunks are of one size; else it is full
 * and says why. */
static void test_parent_check(void **state)
{
	struct json_object *m = json_object_new_object();
	char why[200] = "";

	(void)state;
	json_object_object_add(m, "chunk_size", json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	assert_int_equal(chunkstore_parent_check(m, why, sizeof(why)), 0);
	json_object_object_add(m, "chunk_size", json_object_new_int64(1024 * 1024));
	assert_int_equal(chunkstore_parent_check(m, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "1048576"));
	json_object_put(m);
}

/*
 * A stored chunk's bytes bypass the page cache (O_DIRECT): at most its last page,
 * written through the cache, is resident after the put, and it reads back whole.
 * Skipped where the file system refused O_DIRECT (the writer fell back to buffered).
 */
static void test_put_bypasses_cache(void **state)
{
	struct fixture *f = *state;
	unsigned char *a = xmalloc(CHUNKSTORE_CHUNK_SIZE), *out = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	long page = sysconf(_SC_PAGESIZE);
	struct chunkstore_writer w;
	char hex[65], path[PATH_MAX];
	unsigned char *vec;
	size_t len, pages, resident = 0;
	uint64_t written;
	struct kerr err;
	struct stat sb;
	void *map;
	int fd;

	fill_random(a, CHUNKSTORE_CHUNK_SIZE, 42);
	chunkstore_writer_init(&w);
	assert_int_equal(
		chunkstore_put_with(f->root, &w, a, CHUNKSTORE_CHUNK_SIZE, hex, &written, &err), 0);
	/* zstd keeps random bytes as they are: a size that is no multiple of a block. */
	assert_true(written > CHUNKSTORE_CHUNK_SIZE && written % 4096 != 0);
	chunkstore_chunk_path(f->root, hex, path, sizeof(path));
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sb), 0);
	assert_int_equal(sb.st_size, (off_t)written);
	if (!w.buffered) {
		pages = ((size_t)sb.st_size + (size_t)page - 1) / (size_t)page;
		vec = xmalloc(pages);
		map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
		assert_true(map != MAP_FAILED);
		assert_int_equal(mincore(map, (size_t)sb.st_size, vec), 0);
		for (size_t i = 0; i < pages; i++)
			resident += vec[i] & 1;
		assert_true(resident <= 1);
		munmap(map, (size_t)sb.st_size);
		free(vec);
	} else {
		print_message("the store's file system refused O_DIRECT: buffered writes\n");
	}
	close(fd);
	assert_int_equal(chunkstore_get(f->root, hex, out, CHUNKSTORE_CHUNK_SIZE, &len, &err), 0);
	assert_int_equal(len, CHUNKSTORE_CHUNK_SIZE);
	assert_memory_equal(out, a, CHUNKSTORE_CHUNK_SIZE);
	chunkstore_writer_free(&w);
	free(a);
	free(out);
}

/* The version 2 disk checksum: a known vector (computed apart, in Python, as
 * tests/integration/lib.sh's chunk_sum does from a disk's bytes), and the list's
 * length must fit the disk's size. */
#define MIB	(1024 * 1024)
#define ZERO_1M "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58"

static void test_list_sum(void **state)
{
	struct json_object *chunks = json_object_new_array();
	struct json_object *m = json_object_new_object(), *disk = json_object_new_object();
	char hex[65];
	struct kerr err;

	(void)state;
	/* A manifest of 1 MiB chunks, as backups before 4 MiB ones have: their sum is
	 * computed with their own chunk size. */
	json_object_array_add(chunks, json_object_new_string(ZERO_1M));
	json_object_array_add(
		chunks,
		json_object_new_string(
			"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
	assert_int_equal(chunkstore_list_sum(chunks, MIB + 3, MIB, hex, &err), 0);
	assert_string_equal(hex,
			    "2856d9ab1f44fc360d6d2effcd623b64dbd3529082fca4686359957823a49b2a");
	/* One chunk too many or too few for the size: refused. */
	assert_true(chunkstore_list_sum(chunks, 3, MIB, hex, &err) < 0);
	assert_true(chunkstore_list_sum(chunks, 2 * MIB + 1, MIB, hex, &err) < 0);
	/* Old manifests (version 1) say only the bytes tell. */
	json_object_object_add(disk, "chunks", chunks);
	json_object_object_add(disk, "virtual_size", json_object_new_int64(MIB + 3));
	json_object_object_add(m, "chunk_size", json_object_new_int64(MIB));
	json_object_object_add(m, "version", json_object_new_int(1));
	assert_int_equal(chunkstore_disk_sum(m, disk, hex, &err), 1);
	json_object_object_add(m, "version", json_object_new_int(CHUNKSTORE_MANIFEST_V));
	assert_int_equal(chunkstore_disk_sum(m, disk, hex, &err), 0);
	assert_string_equal(hex,
			    "2856d9ab1f44fc360d6d2effcd623b64dbd3529082fca4686359957823a49b2a");
	json_object_put(m);
	json_object_put(disk);

	/* The same two names as a disk of 4 MiB chunks (the vector from the same Python). */
	chunks = json_object_new_array();
	json_object_array_add(chunks, json_object_new_string(CHUNKSTORE_ZERO_HEX));
	json_object_array_add(
		chunks,
		json_object_new_string(
			"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
	assert_int_equal(chunkstore_list_sum(chunks, 4 * MIB + 3, 4 * MIB, hex, &err), 0);
	assert_string_equal(hex,
			    "2d119a3fd96133dbd970f6434f163d1efb877b2a6189073c5897de98b60f030d");
	json_object_put(chunks);
}

/* Verify of a version 2 manifest checks each disk's checksum against its chunk list:
 * a manifest whose list was changed (or whose checksum was) is named bad. */
static void test_verify_list_sum(void **state)
{
	struct fixture *f = *state;
	struct json_object *m = json_object_new_object(), *disks = json_object_new_array();
	struct json_object *disk = json_object_new_object(), *chunks = json_object_new_array();
	struct json_object *bad = NULL;
	char hex[65];
	uint64_t w;
	struct kerr err;

	assert_int_equal(chunkstore_put(f->root, "abc", 3, hex, &w, &err), 0);
	json_object_array_add(chunks, json_object_new_string(CHUNKSTORE_ZERO_HEX));
	json_object_array_add(chunks, json_object_new_string(hex));
	json_object_object_add(disk, "name", json_object_new_string("root"));
	json_object_object_add(disk, "chunks", chunks);
	json_object_object_add(disk, "virtual_size",
			       json_object_new_int64(CHUNKSTORE_CHUNK_SIZE + 3));
	json_object_object_add(
		disk, "sha256",
		json_object_new_string(
			"2d119a3fd96133dbd970f6434f163d1efb877b2a6189073c5897de98b60f030d"));
	json_object_array_add(disks, disk);
	json_object_object_add(m, "version", json_object_new_int(CHUNKSTORE_MANIFEST_V));
	json_object_object_add(m, "chunk_size", json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	json_object_object_add(m, "disks", disks);
	assert_int_equal(chunkstore_verify(f->root, m, &bad, &err), 0);
	assert_null(bad);
	/* The two chunks swapped: each is whole, the disk is not. */
	json_object_array_put_idx(chunks, 0, json_object_new_string(hex));
	json_object_array_put_idx(chunks, 1, json_object_new_string(CHUNKSTORE_ZERO_HEX));
	assert_int_equal(chunkstore_verify(f->root, m, &bad, &err), 1);
	assert_int_equal(json_object_get_int64(json_object_object_get(
				 json_object_array_get_idx(bad, 0), "offset")),
			 -1);
	assert_string_equal(json_object_get_string(json_object_object_get(
				    json_object_array_get_idx(bad, 0), "disk")),
			    "root");
	json_object_put(bad);
	json_object_put(m);
}

/* A test disk of 7 chunks and a bit: data, zeros written, a hole, data again (dedup
 * within the disk), more data, another hole, a short tail. */
#define PIPE_DISK_SIZE (7 * (int64_t)CHUNKSTORE_CHUNK_SIZE + 4321)

static int pipe_disk_make(const char *path)
{
	unsigned char *buf = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	static const int kinds[] = {1, 0, -1, 1, 2, 3, -1}; /* seed; 0 zeros; -1 hole */

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, PIPE_DISK_SIZE), 0);
	for (size_t c = 0; c < ARRAY_SIZE(kinds); c++) {
		if (kinds[c] < 0)
			continue;
		if (kinds[c] == 0)
			memset(buf, 0, CHUNKSTORE_CHUNK_SIZE);
		else
			fill(buf, CHUNKSTORE_CHUNK_SIZE, (unsigned)kinds[c]);
		assert_int_equal(
			pwrite(fd, buf, CHUNKSTORE_CHUNK_SIZE, (off_t)c * CHUNKSTORE_CHUNK_SIZE),
			CHUNKSTORE_CHUNK_SIZE);
	}
	fill(buf, 4321, 5);
	assert_int_equal(pwrite(fd, buf, 4321, 7 * (off_t)CHUNKSTORE_CHUNK_SIZE), 4321);
	free(buf);
	return fd;
}

static int read_failing(void *data, int64_t off, void *buf, size_t len, struct kerr *err)
{
	if (off >= 4 * (int64_t)CHUNKSTORE_CHUNK_SIZE)
		return err_set(err, EIO, "disk read error at %lld", (long long)off);
	return chunkpipe_file_read(data, off, buf, len, err);
}

/* A source naming its odd chunks from a list, reading the rest from a file. */
struct named_src {
	struct chunkpipe_file file;
	struct json_object *names;
	int reads;
};

static int named_read(void *data, int64_t off, void *buf, size_t len, struct kerr *err)
{
	struct named_src *ns = data;

	assert_int_equal((off / CHUNKSTORE_CHUNK_SIZE) % 2, 0);
	ns->reads++;
	return chunkpipe_file_read(&ns->file, off, buf, len, err);
}

static bool named_odd(void *data, int64_t index, char *hex)
{
	struct named_src *ns = data;

	if (index % 2 == 0)
		return false;
	snprintf(hex, CHUNKSTORE_HEX_LEN + 1, "%s",
		 json_object_get_string(json_object_array_get_idx(ns->names, (size_t)index)));
	return true;
}

static void test_pipeline(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX];
	unsigned char *buf = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	struct json_object *serial = json_object_new_array();
	char hex[65], want_sum[65];
	uint64_t w;
	struct kerr err;
	int fd;

	snprintf(path, sizeof(path), "%s/disk.raw", f->root);
	fd = pipe_disk_make(path);
	/* What storing each chunk in turn names. */
	for (int64_t off = 0; off < PIPE_DISK_SIZE; off += CHUNKSTORE_CHUNK_SIZE) {
		size_t len = PIPE_DISK_SIZE - off < CHUNKSTORE_CHUNK_SIZE
				     ? (size_t)(PIPE_DISK_SIZE - off)
				     : CHUNKSTORE_CHUNK_SIZE;

		assert_int_equal(pread(fd, buf, len, off), (ssize_t)len);
		assert_int_equal(chunkstore_put(f->root, buf, len, hex, &w, &err), 0);
		json_object_array_add(serial, json_object_new_string(hex));
	}
	assert_int_equal(
		chunkstore_list_sum(serial, PIPE_DISK_SIZE, CHUNKSTORE_CHUNK_SIZE, want_sum, &err),
		0);

	for (int threads = 1; threads <= 3; threads += 2) {
		char other[PATH_MAX];
		struct chunkpipe_file file = {.fd = fd, .path = path};
		struct chunkpipe_source src = {.size = PIPE_DISK_SIZE,
					       .read = chunkpipe_file_read,
					       .hole = chunkpipe_file_hole,
					       .data = &file};
		struct json_object *chunks = json_object_new_array();
		struct chunkpipe_result res;

		/* Into a fresh store: every chunk is new there. */
		snprintf(other, sizeof(other), "%s/p%d", f->root, threads);
		assert_int_equal(chunkstore_init(other, &err), 0);
		assert_int_equal(chunkpipe_store(other, &src, threads, chunks, &res, &err), 0);
		assert_true(json_object_equal(chunks, serial));
		assert_string_equal(res.sum, want_sum);
		assert_int_equal(res.chunk_count, 8);
		/* The two holes were not read. */
		assert_int_equal(res.read_bytes, PIPE_DISK_SIZE - 2 * CHUNKSTORE_CHUNK_SIZE);
		assert_true(res.new_bytes > 0);
		/* Every named chunk is there and reads back as the disk's bytes. */
		for (size_t c = 0; c < json_array_len(chunks); c++) {
			unsigned char *disk = xmalloc(CHUNKSTORE_CHUNK_SIZE);
			size_t len, want;
			off_t off = (off_t)c * CHUNKSTORE_CHUNK_SIZE;

			want = PIPE_DISK_SIZE - off < CHUNKSTORE_CHUNK_SIZE
				       ? (size_t)(PIPE_DISK_SIZE - off)
				       : CHUNKSTORE_CHUNK_SIZE;
			assert_int_equal(
				chunkstore_get(other,
					       json_object_get_string(
						       json_object_array_get_idx(chunks, c)),
					       buf, CHUNKSTORE_CHUNK_SIZE, &len, &err),
				0);
			assert_int_equal(len, want);
			assert_int_equal(pread(fd, disk, want, off), (ssize_t)want);
			assert_memory_equal(buf, disk, want);
			free(disk);
		}
		/* The zero chunk is stored for readers that do not know its name. */
		{
			char zpath[PATH_MAX];

			chunkstore_chunk_path(other, CHUNKSTORE_ZERO_HEX, zpath, sizeof(zpath));
			assert_int_equal(access(zpath, F_OK), 0);
		}
		json_object_put(chunks);

		/* Again into the same store: nothing new. */
		chunks = json_object_new_array();
		assert_int_equal(chunkpipe_store(other, &src, threads, chunks, &res, &err), 0);
		assert_int_equal(res.new_bytes, 0);
		json_object_put(chunks);

		/* Chunks the source names itself are neither read nor stored: the odd
		 * ones here, by the serial run's names (an incremental's parent). */
		{
			struct named_src ns = {.file = {.fd = fd, .path = path}, .names = serial};
			struct chunkpipe_source nsrc = {.size = PIPE_DISK_SIZE,
							.read = named_read,
							.named = named_odd,
							.data = &ns};
			char fresh[PATH_MAX];

			snprintf(fresh, sizeof(fresh), "%s/n%d", f->root, threads);
			assert_int_equal(chunkstore_init(fresh, &err), 0);
			chunks = json_object_new_array();
			assert_int_equal(chunkpipe_store(fresh, &nsrc, threads, chunks, &res, &err),
					 0);
			assert_true(json_object_equal(chunks, serial));
			assert_string_equal(res.sum, want_sum);
			/* Read: chunks 0, 2, 4, 6 (6 is the hole, no hole callback here). */
			assert_int_equal(ns.reads, 4);
			assert_int_equal(res.read_bytes, 4 * CHUNKSTORE_CHUNK_SIZE);
			/* The named ones were not written into the fresh store: 5 and 7
			 * (1 is zeros, 3 the same bytes as 0, which was read). */
			for (size_t c = 5; c < json_array_len(chunks); c += 2) {
				char cpath[PATH_MAX];
				const char *name = json_object_get_string(
					json_object_array_get_idx(chunks, c));

				chunkstore_chunk_path(fresh, name, cpath, sizeof(cpath));
				assert_int_equal(access(cpath, F_OK), -1);
			}
			json_object_put(chunks);
		}

		/* A read that fails half-way fails the whole, with the reader's reason. */
		src.read = read_failing;
		chunks = json_object_new_array();
		assert_true(chunkpipe_store(other, &src, threads, chunks, &res, &err) < 0);
		assert_int_equal(err.code, EIO);
		assert_non_null(strstr(err.msg, "disk read error"));
		json_object_put(chunks);
	}
	close(fd);
	json_object_put(serial);
	free(buf);
}

/* The pacing of a limited read (bandwidth_mbps): one chunk may go at once, each byte
 * after it is due at bytes / rate, and the sum does not overflow for a huge disk. */
static void test_pace_wait(void **state)
{
	const uint64_t c = CHUNKSTORE_CHUNK_SIZE, rate = CHUNKSTORE_CHUNK_SIZE; /* a chunk/s */

	(void)state;
	assert_int_equal(chunkpipe_pace_wait_ms(c, rate, 0), 0);	/* the burst */
	assert_int_equal(chunkpipe_pace_wait_ms(2 * c, rate, 0), 1000); /* the next second */
	assert_int_equal(chunkpipe_pace_wait_ms(2 * c, rate, 400), 600);
	assert_int_equal(chunkpipe_pace_wait_ms(2 * c, rate, 1000), 0);
	assert_int_equal(chunkpipe_pace_wait_ms(2 * c, rate, 5000), 0); /* behind: go */
	assert_int_equal(chunkpipe_pace_wait_ms(11 * c, rate, 2500), 7500);
	/* 100 Mbit/s: 125,000 bytes a second; 10 MB beyond the burst take 80 s. */
	assert_int_equal(chunkpipe_pace_wait_ms(c + 10000000, 125000, 0), 80000);
	/* A 1 PiB disk at 1 byte/s: no overflow, a wait that stays positive. */
	assert_true(chunkpipe_pace_wait_ms((uint64_t)1 << 50, 1, 0) > 0);
}

static int pace_cancel_calls;

static bool pace_cancelled(void *data)
{
	(void)data;
	return ++pace_cancel_calls > 3;
}

/* A paced pipeline cancelled while it sleeps stops within a slice, not at the rate's
 * next chunk (here 4 s away). */
static void test_pace_cancel(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX];
	int fd;
	struct chunkpipe_file file = {.path = path};
	struct chunkpipe_source src = {.size = PIPE_DISK_SIZE,
				       .read = chunkpipe_file_read,
				       .data = &file,
				       .cancelled = pace_cancelled,
				       .rate_bytes_s = CHUNKSTORE_CHUNK_SIZE / 4};
	struct json_object *chunks = json_object_new_array();
	struct chunkpipe_result res;
	struct kerr err;
	int64_t t0;

	snprintf(path, sizeof(path), "%s/disk.raw", f->root);
	fd = pipe_disk_make(path);
	file.fd = fd;
	t0 = now_ms();
	assert_true(chunkpipe_store(f->root, &src, 1, chunks, &res, &err) < 0);
	assert_int_equal(err.code, ECANCELED);
	assert_true(now_ms() - t0 < 1500);
	json_object_put(chunks);
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_init_modes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedupe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_roundtrip_and_corruption, setup, teardown),
		cmocka_unit_test_setup_teardown(test_incompressible_raw, setup, teardown),
		cmocka_unit_test_setup_teardown(test_zero_chunk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_zero_chunk_old_size, setup, teardown),
		cmocka_unit_test(test_parent_check),
		cmocka_unit_test_setup_teardown(test_put_bypasses_cache, setup, teardown),
		cmocka_unit_test(test_list_sum),
		cmocka_unit_test_setup_teardown(test_verify_list_sum, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pipeline, setup, teardown),
		cmocka_unit_test(test_pace_wait),
		cmocka_unit_test_setup_teardown(test_pace_cancel, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
