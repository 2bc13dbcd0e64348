/*
 * test_backupmap.c - agentd/backupmap.c: a disk read from its qcow2 chain (data in
 * the top file, in its backing file, zeros written, unallocated) gives the same bytes
 * as `qemu-img convert -O raw`, holes are told without reading, and a chain with
 * compressed clusters is refused (the backup converts it instead).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentd.h"
#include "chunkpipe.h"
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
	if (backup_map_open(path, &m, &err) < 0)
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
	assert_true(backup_map_open(path, &m, &err) < 0);
	assert_null(m);
	assert_non_null(strstr(err.msg, "compressed"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chain_read),
		cmocka_unit_test(test_compressed_refused),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
