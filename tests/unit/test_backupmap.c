/*
 * test_backupmap.c - agentd/backupmap.c: a disk read from its qcow2 chain (data in
 * the top file, in its backing file, zeros written, unallocated) gives the same bytes
 * as `qemu-img convert -O raw`, holes are told without reading, and a chain with
 * compressed clusters is refused (the backup converts it instead); backup_map_qcow2
 * (an incremental's target mapped from its own tables) says of every byte what
 * `qemu-img map` says (unallocated, zeros, or data at which file offset), over cluster
 * sizes of 512 bytes (many L2 tables) to 2 MiB (a part cluster at the end), versions
 * 2 and 3 (and backup_map_json reads qemu-img map's answer the same), and refuses
 * what it does not read (a backing file, compressed clusters, not a qcow2, not the
 * disk's size) and what a guest that took QEMU over could write to hurt the agent (one
 * L2 table or data cluster used twice, a huge L1 table, snapshots, a symlink, a FIFO,
 * another uid's file, too many extents), each at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentd.h"
#include "child.h"
#include "chunkpipe.h"
#include "chunkstore.h"
#include "json.h"
#include "tree.h"
#include "util.h"

#define MiB (1024 * 1024)

static char dir[64];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (system(cmd) != 0)
		fail_msg("failed: %s", cmd);
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kumo-unit-bmap.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	/* base: data at 0-1 MiB and 5-6 MiB, zeros written at 2-3 MiB. top (backing
	 * base, by a relative name): data over 512 KiB-1.5 MiB and zeros at 5 MiB. */
	sh("cd %s && qemu-img create -q -f qcow2 base.qcow2 8M && "
	   "qemu-io -c 'write -P 0x11 0 1M' -c 'write -z 2M 1M' -c 'write -P 0x33 5M 1M' "
	   "base.qcow2 >/dev/null && "
	   "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
	   "qemu-io -c 'write -P 0x22 512k 1M' -c 'write -z 5M 64k' top.qcow2 >/dev/null && "
	   "qemu-img convert -O raw top.qcow2 top.raw",
	   dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	tree_remove(dir);
	return 0;
}

static void test_chain_read(void **state)
{
	char path[PATH_MAX];
	struct backup_map *m = NULL;
	struct chunkpipe_source src = {0};
	unsigned char *got = xmalloc(8 * MiB), *want = xmalloc(8 * MiB);
	struct kerr err;
	int fd;

	(void)state;
	snprintf(path, sizeof(path), "%s/top.qcow2", dir);
	if (backup_map_open(path, NULL, NULL, &m, &err) < 0)
		fail_msg("backup_map_open: %s", err.msg);
	backup_map_source(m, &src);
	assert_int_equal(src.size, 8 * MiB);
	/* In chunk-sized reads, in order, as the pipeline does, and one across extents. */
	for (int64_t off = 0; off < src.size; off += MiB)
		assert_int_equal(src.read(src.data, off, got + off, MiB, &err), 0);
	snprintf(path, sizeof(path), "%s/top.raw", dir);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, want, 8 * MiB, 0), 8 * MiB);
	assert_memory_equal(got, want, 8 * MiB);
	assert_int_equal(src.read(src.data, 700 * 1024, got, 2 * MiB, &err), 0);
	assert_memory_equal(got, want + 700 * 1024, 2 * MiB);
	close(fd);
	/* Holes: 3-4 MiB is unallocated everywhere, 2-3 MiB zeros written; 0-1 MiB and
	 * 5-6 MiB hold data (5 MiB's first 64 KiB zeroed in top, the rest base's). */
	assert_true(src.hole(src.data, 3 * MiB, MiB));
	assert_true(src.hole(src.data, 2 * MiB, MiB));
	assert_false(src.hole(src.data, 0, MiB));
	assert_false(src.hole(src.data, 5 * MiB, MiB));
	backup_map_free(m);
	free(got);
	free(want);
}

static void test_compressed_refused(void **state)
{
	char path[PATH_MAX];
	struct backup_map *m = NULL;
	struct kerr err;

	(void)state;
	sh("cd %s && qemu-img convert -c -O qcow2 base.qcow2 comp.qcow2", dir);
	snprintf(path, sizeof(path), "%s/comp.qcow2", dir);
	assert_true(backup_map_open(path, NULL, NULL, &m, &err) < 0);
	assert_null(m);
	assert_non_null(strstr(err.msg, "compressed"));
}

/* backup_map_qcow2 of path as a size-byte disk, opened as backup.c opens it. */
static int map_path(const char *path, int64_t size, struct backup_extents *x, struct kerr *err)
{
	int fd = backup_target_open(path, getuid(), err), ret;

	if (fd < 0) {
		*x = (struct backup_extents){0};
		return fd;
	}
	ret = backup_map_qcow2(fd, path, size, 0, x, err);
	close(fd);
	return ret;
}

/* The same as sectors_of says it, of our extents. */
static int64_t *sectors_of_extents(const struct backup_extents *x, int64_t size)
{
	int64_t n = size / 512, *v = xcalloc((size_t)n + 1, sizeof(*v)), at = 0;

	for (int64_t i = 0; i < n; i++)
		v[i] = -2; /* not in the target */
	for (size_t e = 0; e < x->n; e++) {
		assert_true(x->v[e].start >= at); /* sorted, disjoint */
		at = x->v[e].start + x->v[e].length;
		assert_true(at <= size);
		for (int64_t b = x->v[e].start; b < at; b += 512)
			v[b / 512] = x->v[e].offset < 0 ? -1 : x->v[e].offset + (b - x->v[e].start);
	}
	return v;
}

/* What a map (qemu-img's or ours) says of each 512-byte sector of a size-byte disk:
 * -2 unallocated, -1 zeros, else the data's file offset. */
static int64_t *sectors_of(struct json_object *map, int64_t size)
{
	int64_t n = size / 512, *v = xcalloc((size_t)n + 1, sizeof(*v)), at = 0;

	for (int64_t i = 0; i < n; i++)
		v[i] = -3; /* said by no extent */
	for (size_t e = 0; e < json_array_len(map); e++) {
		struct json_object *x = json_object_array_get_idx(map, e), *o;
		int64_t start = json_get_int(x, "start", -1), len = json_get_int(x, "length", -1);

		assert_int_equal(start, at); /* the extents tile the disk, in order */
		at += len;
		for (int64_t b = start; b < start + len; b += 512) {
			if (!json_get_bool(x, "present", false))
				v[b / 512] = -2;
			else if (!json_get_bool(x, "data", false))
				v[b / 512] = -1;
			else {
				assert_true(json_object_object_get_ex(x, "offset", &o));
				v[b / 512] = json_object_get_int64(o) + (b - start);
			}
		}
	}
	assert_int_equal(at, size);
	return v;
}

/* Make image name with the shell's cmds in dir, then compare both maps of it. */
static void map_same(const char *name, int64_t size, const char *cmds)
{
	char path[PATH_MAX];
	struct backup_extents ours, again;
	struct json_object *theirs;
	char *argv[] = {"qemu-img", "map", "--output=json", "-f", "qcow2", path, NULL};
	struct child_opts opts = {.argv = argv, .out_max = 64 << 20, .err_mode = CHILD_ERR_INHERIT};
	_cleanup_free_ char *text = NULL;
	_cleanup_free_ int64_t *a = NULL, *b = NULL, *c = NULL;
	struct kerr err;

	sh("cd %s && %s", dir, cmds);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (map_path(path, size, &ours, &err) < 0)
		fail_msg("backup_map_qcow2 %s: %s", name, err.msg);
	assert_int_equal(child_run_wait(&opts, &text, &err), 0);
	theirs = json_tokener_parse(text);
	assert_non_null(theirs);
	/* qemu-img map's answer as the fallback reads it says the same too. */
	if (backup_map_json(theirs, size, path, &again, &err) < 0)
		fail_msg("backup_map_json %s: %s", name, err.msg);
	a = sectors_of_extents(&ours, size);
	b = sectors_of(theirs, size);
	c = sectors_of_extents(&again, size);
	for (int64_t i = 0; i < size / 512; i++)
		assert_int_equal(b[i], c[i]);
	for (int64_t i = 0; i < size / 512; i++)
		if (a[i] != b[i])
			fail_msg("%s: at %lld ours says %lld, qemu-img map %lld", name,
				 (long long)(i * 512), (long long)a[i], (long long)b[i]);
	backup_extents_free(&ours);
	backup_extents_free(&again);
	json_object_put(theirs);
}

static void test_qcow2_map(void **state)
{
	(void)state;
	/* As QEMU's incremental job leaves its target: a few clusters written. */
	map_same("t1.qcow2", 8 * MiB,
		 "qemu-img create -q -f qcow2 t1.qcow2 8M && qemu-io -c 'write -P 0x11 0 1M' "
		 "-c 'write -z 2M 1M' -c 'write -P 0x33 5M 100k' -c 'write -P 0x44 7M 64k' "
		 "-c 'write -P 0x55 3M 64k' t1.qcow2 >/dev/null");
	/* 512-byte clusters: an L2 table covers 32 KiB, so many L1 entries, some empty. */
	map_same("t2.qcow2", 8 * MiB,
		 "qemu-img create -q -f qcow2 -o cluster_size=512 t2.qcow2 8M && "
		 "qemu-io -c 'write -P 0x11 1000 70000' -c 'write -z 1M 4k' "
		 "-c 'write -P 0x22 6M 1M' -c 'write -P 0x33 8388096 512' t2.qcow2 >/dev/null");
	/* 2 MiB clusters and a size that is not a multiple of them. */
	map_same("t3.qcow2", 9 * MiB,
		 "qemu-img create -q -f qcow2 -o cluster_size=2M t3.qcow2 9M && "
		 "qemu-io -c 'write -P 0x11 8700k 100k' -c 'write -P 0x22 0 4k' t3.qcow2 "
		 ">/dev/null");
	/* Version 2 (no zero flag: zeros are written as data). */
	map_same("t4.qcow2", 8 * MiB,
		 "qemu-img create -q -f qcow2 -o compat=0.10 t4.qcow2 8M && "
		 "qemu-io -c 'write -P 0x11 64k 64k' -c 'write -z 4M 1M' t4.qcow2 >/dev/null");
	/* Nothing written, and an empty disk. */
	map_same("t5.qcow2", 8 * MiB, "qemu-img create -q -f qcow2 t5.qcow2 8M");
	map_same("t6.qcow2", 0, "qemu-img create -q -f qcow2 t6.qcow2 0");
}

/*
 * backup_target_create: an empty qcow2 qemu-img checks clean, of the size asked, that
 * QEMU writes into (qemu-io) and backup_map_qcow2 then maps as qemu-img map does; a
 * disk of an odd size and one of 1 TiB (two L1 entries... 2048) too; never over a file
 * that is there; sizes it does not make refused. Its L2 table is there before QEMU
 * writes and is the one QEMU then fills: QEMU allocates none (each allocation is three
 * flushes of the file inside an incremental's job).
 */
static uint64_t l1_entry0(const char *name)
{
	char path[PATH_MAX];
	uint64_t e = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &e, sizeof(e), 3 << 16), (ssize_t)sizeof(e)); /* the L1 */
	close(fd);
	return be64toh(e);
}

static void test_target_create(void **state)
{
	static const int64_t sizes[] = {8 * MiB, 9 * MiB + 512, (int64_t)1 << 40};
	char path[PATH_MAX], name[32];
	struct kerr err;

	(void)state;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		snprintf(name, sizeof(name), "made%zu.qcow2", i);
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		if (backup_target_create(path, sizes[i], geteuid(), getegid(), &err) < 0)
			fail_msg("backup_target_create %s: %s", name, err.msg);
		sh("cd %s && qemu-img check -q -f qcow2 %s && "
		   "test \"$(qemu-img info --output=json -f qcow2 %s | jq '.\"virtual-size\"')\" = "
		   "%lld",
		   dir, name, name, (long long)sizes[i]);
	}
	/* The L2 table right after the L1, flagged copied (refcount 1: QEMU writes it in
	 * place). */
	assert_int_equal(l1_entry0("made0.qcow2"), (4ULL << 16) | (1ULL << 63));
	/* QEMU's writes land in it as in one qemu-img made. */
	map_same("made0.qcow2", 8 * MiB,
		 "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -z 2M 1M' "
		 "-c 'write -P 0x33 5M 100k' made0.qcow2 >/dev/null && qemu-img check -q "
		 "made0.qcow2");
	assert_int_equal(l1_entry0("made0.qcow2"), (4ULL << 16) | (1ULL << 63));
	snprintf(path, sizeof(path), "%s/made0.qcow2", dir);
	assert_true(backup_target_create(path, 8 * MiB, geteuid(), getegid(), &err) < 0);
	assert_int_equal(err.code, EEXIST);
	snprintf(path, sizeof(path), "%s/big.qcow2", dir);
	assert_true(backup_target_create(path, (int64_t)5 << 40, geteuid(), getegid(), &err) < 0);
	assert_true(backup_target_create(path, 0, geteuid(), getegid(), &err) < 0);
	assert_int_equal(access(path, F_OK), -1); /* nothing left behind */
}

static void test_qcow2_map_refused(void **state)
{
	char path[PATH_MAX];
	struct backup_extents x = {0};
	struct kerr err;

	(void)state;
	/* base.qcow2 and top.qcow2 are setup()'s: top has a backing file. */
	snprintf(path, sizeof(path), "%s/top.qcow2", dir);
	assert_true(map_path(path, 8 * MiB, &x, &err) < 0);
	assert_non_null(strstr(err.msg, "backing file"));
	sh("cd %s && qemu-img create -q -f qcow2 c.qcow2 8M && "
	   "qemu-io -c 'write -c -P 0x11 0 64k' c.qcow2 >/dev/null",
	   dir);
	snprintf(path, sizeof(path), "%s/c.qcow2", dir);
	assert_true(map_path(path, 8 * MiB, &x, &err) < 0);
	assert_non_null(strstr(err.msg, "compressed"));
	snprintf(path, sizeof(path), "%s/top.raw", dir);
	assert_true(map_path(path, 8 * MiB, &x, &err) < 0);
	assert_non_null(strstr(err.msg, "not a qcow2"));
	snprintf(path, sizeof(path), "%s/missing.qcow2", dir);
	assert_true(map_path(path, 8 * MiB, &x, &err) < 0);
	assert_null(x.v);
	/* The agent asks for QEMU's 64 KiB clusters: 512-byte ones (128 times the work
	 * per byte) refused, the default taken. */
	{
		int fd;

		sh("cd %s && qemu-img create -q -f qcow2 -o cluster_size=512 k.qcow2 8M", dir);
		snprintf(path, sizeof(path), "%s/k.qcow2", dir);
		fd = backup_target_open(path, getuid(), &err);
		assert_true(fd >= 0);
		assert_true(backup_map_qcow2(fd, path, 8 * MiB, 16, &x, &err) < 0);
		assert_int_equal(err.code, ENOTSUP);
		assert_non_null(strstr(err.msg, "clusters of 512 bytes, not 65536"));
		assert_null(x.v);
		close(fd);
		snprintf(path, sizeof(path), "%s/base.qcow2", dir);
		fd = backup_target_open(path, getuid(), &err);
		assert_true(fd >= 0);
		assert_int_equal(backup_map_qcow2(fd, path, 8 * MiB, 16, &x, &err), 0);
		backup_extents_free(&x);
		close(fd);
	}
	/* Not the disk's size: ERANGE (the caller goes full, asks nobody else). */
	snprintf(path, sizeof(path), "%s/base.qcow2", dir);
	assert_true(map_path(path, 16 * MiB, &x, &err) < 0);
	assert_int_equal(err.code, ERANGE);
}

/* Patch len bytes at off of path. */
static void patch(const char *path, int64_t off, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, len, off), (ssize_t)len);
	close(fd);
}

static uint64_t be64_of(const char *path, int64_t off)
{
	uint64_t v = 0;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &v, sizeof(v), off), (ssize_t)sizeof(v));
	close(fd);
	return be64toh(v);
}

/* map_path must refuse path (a size-byte disk) with a message holding want, in less
 * than a second. */
static void refused_fast(const char *path, int64_t size, const char *want)
{
	struct backup_extents x = {0};
	struct kerr err;
	int64_t t0 = now_ms();

	assert_true(map_path(path, size, &x, &err) < 0);
	assert_null(x.v);
	if (strstr(err.msg, want) == NULL)
		fail_msg("%s: '%s', not '%s'", path, err.msg, want);
	assert_true(now_ms() - t0 < 1000);
}

/*
 * Targets a guest that took QEMU over could write (the review's): every L1 entry
 * pointing at one L2 table; L2 entries reusing one data cluster; a huge l1_size and
 * virtual size; snapshots; a symlink and a FIFO in the target's place. Each is
 * refused at once, nothing mapped. And more extents than BACKUP_MAP_MAX_EXTENTS
 * (zeros alternating with holes: no data needed) is refused as too many, for
 * qemu-img map to say instead.
 */
static void test_qcow2_map_hostile(void **state)
{
	char path[PATH_MAX], link[PATH_MAX];
	const int64_t size = 64 * MiB;
	uint64_t l1_offset, l1_0, v;
	uint32_t w;
	struct kerr err;
	int fd;

	(void)state;
	/* 512-byte clusters: 2048 L1 entries for 64 MiB, the first L2 table in use. */
	snprintf(path, sizeof(path), "%s/h1.qcow2", dir);
	sh("cd %s && qemu-img create -q -f qcow2 -o cluster_size=512 h1.qcow2 64M && "
	   "qemu-io -c 'write -P 0x11 0 4k' h1.qcow2 >/dev/null && cp h1.qcow2 h2.qcow2 && "
	   "cp h1.qcow2 h3.qcow2 && cp h1.qcow2 h4.qcow2",
	   dir);
	l1_offset = be64_of(path, 40);
	l1_0 = htobe64(be64_of(path, (int64_t)l1_offset));
	for (int i = 0; i < 2048; i++)
		patch(path, (int64_t)l1_offset + i * 8, &l1_0, 8);
	refused_fast(path, size, "used twice");

	/* One data cluster for every guest cluster of the first L2 table, every other
	 * one empty (the review's 512M extents, in small). */
	snprintf(path, sizeof(path), "%s/h2.qcow2", dir);
	{
		uint64_t l2 = be64_of(path, (int64_t)l1_offset) & 0x00fffffffffffe00ULL;
		uint64_t data = htobe64(be64_of(path, (int64_t)l2)), none = 0;

		for (int j = 0; j < 64; j++)
			patch(path, (int64_t)l2 + j * 8, j % 2 ? &none : &data, 8);
	}
	refused_fast(path, size, "used twice");

	/* A huge l1_size and virtual size on a small file. */
	snprintf(path, sizeof(path), "%s/h3.qcow2", dir);
	w = htobe32(32u << 20);
	patch(path, 36, &w, 4);
	v = htobe64(1ULL << 50);
	patch(path, 24, &v, 8);
	refused_fast(path, size, "not 67108864");
	/* ... and a huge l1_size alone reads only the entries the disk needs. */
	v = htobe64((uint64_t)size);
	patch(path, 24, &v, 8);
	{
		struct backup_extents x;

		assert_int_equal(map_path(path, size, &x, &err), 0);
		assert_int_equal(x.n, 1);
		assert_int_equal(x.v[0].length, 4096);
		backup_extents_free(&x);
	}

	/* Snapshots. */
	snprintf(path, sizeof(path), "%s/h4.qcow2", dir);
	w = htobe32(1);
	patch(path, 60, &w, 4);
	refused_fast(path, size, "snapshots");

	/* A symlink to a good image, and a FIFO (whose open would block). */
	snprintf(path, sizeof(path), "%s/h1.qcow2", dir);
	snprintf(link, sizeof(link), "%s/hlink.qcow2", dir);
	sh("cd %s && qemu-img create -q -f qcow2 good.qcow2 64M && ln -s good.qcow2 hlink.qcow2 "
	   "&& mkfifo hfifo.qcow2",
	   dir);
	refused_fast(link, size, "cannot read");
	snprintf(path, sizeof(path), "%s/hfifo.qcow2", dir);
	refused_fast(path, size, "is not a file");
	/* Somebody else's file. */
	snprintf(path, sizeof(path), "%s/good.qcow2", dir);
	fd = backup_target_open(path, getuid() + 1, &err);
	assert_true(fd < 0);
	assert_non_null(strstr(err.msg, "is not a file"));

	/* Too many extents: 64 KiB clusters (8192 per L2 table), zero entries
	 * alternating with empty ones, in 257 L2 tables: 1,052,672 extents. */
	{
		const int tables = 257, per = 8192;
		const int64_t cl = 65536, big = (int64_t)tables * per * cl;
		unsigned char h[112] = {0};
		uint64_t *l2 = xcalloc(per, sizeof(*l2));
		uint64_t zero = htobe64(1);

		snprintf(path, sizeof(path), "%s/many.qcow2", dir);
		fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		assert_true(fd >= 0);
		w = htobe32(0x514649fbu), memcpy(h, &w, 4);
		w = htobe32(3), memcpy(h + 4, &w, 4);
		w = htobe32(16), memcpy(h + 20, &w, 4);
		v = htobe64((uint64_t)big), memcpy(h + 24, &v, 8);
		w = htobe32(tables), memcpy(h + 36, &w, 4);
		v = htobe64((uint64_t)cl), memcpy(h + 40, &v, 8); /* L1 in cluster 1 */
		w = htobe32(104), memcpy(h + 100, &w, 4);
		assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
		for (int j = 0; j < per; j += 2)
			l2[j] = zero;
		for (int i = 0; i < tables; i++) {
			uint64_t at = htobe64((uint64_t)(2 + i) * (uint64_t)cl);

			assert_int_equal(pwrite(fd, &at, 8, cl + i * 8), 8);
			assert_int_equal(pwrite(fd, l2, per * 8, (2 + i) * cl), per * 8);
		}
		close(fd);
		free(l2);
		{
			struct backup_extents x = {0};
			int64_t t0 = now_ms();

			assert_true(map_path(path, big, &x, &err) < 0);
			assert_int_equal(err.code, E2BIG);
			assert_null(x.v);
			assert_true(now_ms() - t0 < 5000);
		}
	}
}

/* Store the raw file path whole into store (plain), its chunk list into *chunks. */
static void store_raw(const char *store, const char *path, int64_t size,
		      struct json_object **chunks, struct chunkpipe_result *res)
{
	int fd = open(path, O_RDONLY);
	struct chunkpipe_file f = {.fd = fd, .path = path};
	struct chunkpipe_source src = {
		.size = size, .read = chunkpipe_file_read, .hole = chunkpipe_file_hole, .data = &f};
	struct kerr err;

	assert_true(fd >= 0);
	*chunks = json_object_new_array();
	if (chunkpipe_store(store, &src, 2, *chunks, res, &err) < 0)
		fail_msg("chunkpipe_store %s: %s", path, err.msg);
	close(fd);
}

/*
 * An incremental's disk: a parent of 10 MiB (two whole chunks, a 2 MiB one) stored,
 * then a target qcow2 as QEMU's job leaves it: data over chunk 0, zeros in the last,
 * chunk 1 untouched. The pipeline over backup_incr_source names chunk 1 as the
 * parent's without reading it, rebuilds the others, and the list is the one a full
 * backup of the changed disk makes; dirty_bytes is what the target held.
 */
static void test_incr_source(void **state)
{
	char store[PATH_MAX], parent[PATH_MAX], changed[PATH_MAX], target[PATH_MAX];
	const int64_t size = 10 * MiB;
	struct json_object *pchunks, *want, *got = json_object_new_array();
	struct backup_extents map;
	struct chunkpipe_result res, wres;
	struct backup_incr bi = {0};
	struct chunkpipe_source src = {0};
	unsigned char *buf = xmalloc(size);
	struct kerr err;
	int fd;

	(void)state;
	snprintf(store, sizeof(store), "%s/store", dir);
	snprintf(parent, sizeof(parent), "%s/parent.raw", dir);
	snprintf(changed, sizeof(changed), "%s/changed.raw", dir);
	snprintf(target, sizeof(target), "%s/target.qcow2", dir);
	assert_int_equal(chunkstore_init(store, &err), 0);
	for (int64_t i = 0; i < size; i++)
		buf[i] = (unsigned char)((i * 7 + i / 4096) % 251 + 1);
	fd = open(parent, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_int_equal(pwrite(fd, buf, size, 0), size);
	close(fd);
	store_raw(store, parent, size, &pchunks, &res);
	/* The change, in the target (as the job copies it: whole 64 KiB clusters, the
	 * bitmap's granularity) and in a raw copy. */
	sh("cd %s && qemu-img create -q -f qcow2 target.qcow2 10M && "
	   "qemu-io -c 'write -P 0x5a 1M 64k' -c 'write -P 0x6b 4032k 128k' "
	   "-c 'write -z 9M 64k' target.qcow2 >/dev/null",
	   dir);
	memset(buf + MiB, 0x5a, 64 * 1024);
	memset(buf + 4032 * 1024, 0x6b, 128 * 1024); /* across chunks 0 and 1 */
	memset(buf + 9 * MiB, 0, 64 * 1024);
	fd = open(changed, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_int_equal(pwrite(fd, buf, size, 0), size);
	close(fd);
	store_raw(store, changed, size, &want, &wres);

	assert_int_equal(map_path(target, size, &map, &err), 0);
	bi = (struct backup_incr){
		.store = store, .pchunks = pchunks, .size = size, .target = target};
	bi.extents = &map;
	bi.fd = open(target, O_RDONLY);
	assert_true(bi.fd >= 0);
	/* Chunks 0 and 1 (the write across them) and 2 are touched. */
	assert_true(backup_incr_dirty(&bi, 0, 4 * MiB));
	assert_true(backup_incr_dirty(&bi, 4 * MiB, 8 * MiB));
	assert_true(backup_incr_dirty(&bi, 8 * MiB, size));
	assert_false(backup_incr_dirty(&bi, 2 * MiB, 3 * MiB));
	backup_incr_source(&bi, &src);
	assert_int_equal(chunkpipe_store(store, &src, 2, got, &res, &err), 0);
	assert_true(json_object_equal(got, want));
	assert_string_equal(res.sum, wres.sum);
	assert_int_equal(bi.dirty_bytes, 4 * 64 * 1024);
	close(bi.fd);
	json_object_put(got);

	/* Only the zeros at 9 MiB: chunks 0 and 1 are the parent's, named unread. */
	sh("cd %s && rm -f target.qcow2 && qemu-img create -q -f qcow2 target.qcow2 10M && "
	   "qemu-io -c 'write -z 9M 64k' target.qcow2 >/dev/null",
	   dir);
	backup_extents_free(&map);
	assert_int_equal(map_path(target, size, &map, &err), 0);
	bi.dirty_bytes = 0;
	bi.fd = open(target, O_RDONLY);
	got = json_object_new_array();
	backup_incr_source(&bi, &src);
	assert_int_equal(chunkpipe_store(store, &src, 1, got, &res, &err), 0);
	assert_int_equal(res.read_bytes, 2 * MiB); /* the last chunk only */
	assert_string_equal(json_object_get_string(json_object_array_get_idx(got, 0)),
			    json_object_get_string(json_object_array_get_idx(pchunks, 0)));
	assert_string_equal(json_object_get_string(json_object_array_get_idx(got, 1)),
			    json_object_get_string(json_object_array_get_idx(pchunks, 1)));
	assert_int_equal(bi.dirty_bytes, 64 * 1024);
	close(bi.fd);

	/* A parent chunk gone from the store: the rebuild says so. */
	{
		char cpath[PATH_MAX];

		chunkstore_chunk_path(store,
				      json_object_get_string(json_object_array_get_idx(pchunks, 2)),
				      cpath, sizeof(cpath));
		assert_int_equal(unlink(cpath), 0);
		json_object_put(got);
		got = json_object_new_array();
		bi.fd = open(target, O_RDONLY);
		assert_true(chunkpipe_store(store, &src, 1, got, &res, &err) < 0);
		assert_non_null(strstr(err.msg, "the parent backup: "));
		assert_true(bi.parent_bad); /* the caller reads the disk whole */
		close(bi.fd);
	}

	/* A chunk the change covers whole (data and zeros end to end) is rebuilt from the
	 * target alone: its parent chunk is never read, so one gone from the store does
	 * not matter; the other touched chunk's parent is read back. */
	{
		char cpath[PATH_MAX];

		sh("cd %s && rm -f target.qcow2 && qemu-img create -q -f qcow2 target.qcow2 10M && "
		   "qemu-io -c 'write -P 0x77 0 3M' -c 'write -z 3M 1M' -c 'write -P 0x78 5M 64k' "
		   "target.qcow2 >/dev/null",
		   dir);
		for (int64_t i = 0; i < size; i++) /* the parent's bytes again */
			buf[i] = (unsigned char)((i * 7 + i / 4096) % 251 + 1);
		memset(buf, 0x77, 3 * MiB);
		memset(buf + 3 * MiB, 0, MiB);
		memset(buf + 5 * MiB, 0x78, 64 * 1024);
		fd = open(changed, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		assert_int_equal(pwrite(fd, buf, size, 0), size);
		close(fd);
		json_object_put(want);
		store_raw(store, changed, size, &want, &wres);
		chunkstore_chunk_path(store,
				      json_object_get_string(json_object_array_get_idx(pchunks, 0)),
				      cpath, sizeof(cpath));
		assert_int_equal(unlink(cpath), 0);
		backup_extents_free(&map);
		assert_int_equal(map_path(target, size, &map, &err), 0);
		bi.dirty_bytes = 0;
		bi.parent_reads = 0;
		bi.fd = open(target, O_RDONLY);
		json_object_put(got);
		got = json_object_new_array();
		backup_incr_source(&bi, &src);
		if (chunkpipe_store(store, &src, 2, got, &res, &err) < 0)
			fail_msg("a chunk the target covers whole: %s", err.msg);
		assert_true(json_object_equal(got, want));
		assert_string_equal(res.sum, wres.sum);
		assert_int_equal(bi.parent_reads, 1); /* chunk 1's, not chunk 0's */
		assert_int_equal(bi.dirty_bytes, 4 * MiB + 64 * 1024);
		close(bi.fd);
	}

	json_object_put(got);
	backup_extents_free(&map);
	json_object_put(pchunks);
	json_object_put(want);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chain_read),	  cmocka_unit_test(test_compressed_refused),
		cmocka_unit_test(test_qcow2_map),	  cmocka_unit_test(test_qcow2_map_refused),
		cmocka_unit_test(test_qcow2_map_hostile), cmocka_unit_test(test_incr_source),
		cmocka_unit_test(test_target_create),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
