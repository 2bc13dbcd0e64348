/*
 * test_nbd.c - agentd/nbd.c against the real qemu-nbd (QEMU's own NBD server code, the
 * one a live backup reads from): a qcow2 with data, an unallocated stretch and an odd
 * tail reads back byte for byte as `qemu-img convert -O raw` gives it, block status
 * tells the unallocated chunk as zeros and the others not, an unknown export is
 * ENOENT, a read past the end is refused, and the chunk pipeline fed from the export
 * names the same chunks as from the raw file without reading the hole. Then a fake
 * server that refuses structured replies (qemu-nbd cannot be told to): libnbd falls
 * back to simple replies and no hole is known, a read goes whole once and then in
 * pieces all in flight, a server's error reply to one piece is named (after the other
 * pieces answered) and leaves the stream in step, and a server that stops answering (in the
 * handshake or a read) fails the call after the timeout rather than hanging.
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
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "chunkpipe.h"
#include "chunkstore.h"
#include "json.h"
#include "nbd.h"
#include "tree.h"
#include "util.h"

#define MiB	  (1024 * 1024)
#define DISK_SIZE (12 * MiB + 4096 * 3)

static char dir[64];
static char sock[128], sock2[128];
static pid_t server = -1, server2 = -1;

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
	char path[PATH_MAX];
	_cleanup_free_ char *pid = NULL;
	size_t len;

	(void)state;
	if (system("command -v qemu-nbd >/dev/null") != 0)
		return 0; /* each test skips */
	snprintf(dir, sizeof(dir), "/tmp/kumo-unit-nbd.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	/* 0-4 MiB data, 4-8 MiB never written, 9-10 MiB data, zeros written at 10 MiB,
	 * and a tail of 12 KiB past 12 MiB with data in it. */
	sh("cd %s && qemu-img create -q -f qcow2 d.qcow2 %d && "
	   "qemu-io -c 'write -P 0x5a 0 4M' -c 'write -P 0x33 9M 1M' -c 'write -z 10M 1M' "
	   "-c 'write -P 0x77 12292k 4k' d.qcow2 >/dev/null && "
	   "qemu-img convert -O raw d.qcow2 d.raw && "
	   "qemu-nbd --fork -t -e 4 -r -x kfl-d0 -f qcow2 -k %s/nbd.sock --pid-file %s/pid "
	   "d.qcow2",
	   dir, DISK_SIZE, dir, dir);
	snprintf(sock, sizeof(sock), "%s/nbd.sock", dir);
	snprintf(path, sizeof(path), "%s/pid", dir);
	if (file_read_all(path, 64, &pid, &len) < 0)
		return -1;
	server = (pid_t)atoi(pid);
	/* As fleecing reads it: an overlay backed by the disk, holding the old content of
	 * a block the guest overwrote (here 1 MiB at 6 MiB, inside the disk's hole). */
	sh("cd %s && qemu-img create -q -f qcow2 -b d.qcow2 -F qcow2 o.qcow2 && "
	   "qemu-io -c 'write -P 0x66 6M 1M' o.qcow2 >/dev/null && "
	   "qemu-img convert -O raw o.qcow2 o.raw && "
	   "qemu-nbd --fork -t -e 4 -r -x kfl-d1 -f qcow2 -k %s/nbd2.sock --pid-file %s/pid2 "
	   "o.qcow2",
	   dir, dir, dir);
	snprintf(sock2, sizeof(sock2), "%s/nbd2.sock", dir);
	snprintf(path, sizeof(path), "%s/pid2", dir);
	free(pid);
	pid = NULL;
	if (file_read_all(path, 64, &pid, &len) < 0)
		return -1;
	server2 = (pid_t)atoi(pid);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (server > 0)
		kill(server, SIGTERM);
	if (server2 > 0)
		kill(server2, SIGTERM);
	if (dir[0])
		tree_remove(dir);
	return 0;
}

static int raw_open(void)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/d.raw", dir);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	return fd;
}

static void test_read_and_status(void **state)
{
	struct nbd_conn *c = NULL;
	unsigned char *got = xmalloc(4 * MiB), *want = xmalloc(4 * MiB);
	struct kerr err;
	int fd;

	(void)state;
	if (server <= 0)
		skip();
	/* Served by another process than the one asked for: refused before any read. */
	assert_true(nbd_conn_open(sock, "kfl-d0", server2, &c, &err) < 0);
	assert_int_equal(err.code, EPERM);
	assert_non_null(strstr(err.msg, "is served by pid"));
	assert_null(c);
	assert_int_equal(nbd_conn_open(sock, "kfl-d0", server, &c, &err), 0);
	assert_int_equal(nbd_conn_size(c), DISK_SIZE);
	assert_true(nbd_conn_sparse(c));
	fd = raw_open();
	for (int64_t off = 0; off < DISK_SIZE; off += 4 * MiB) {
		size_t len = DISK_SIZE - off < 4 * MiB ? (size_t)(DISK_SIZE - off) : 4 * MiB;

		memset(got, 0xee, len);
		assert_int_equal(nbd_conn_read(c, off, got, len, &err), 0);
		assert_int_equal(pread(fd, want, len, off), (ssize_t)len);
		assert_memory_equal(got, want, len);
	}
	/* An odd range across data and zeros. */
	assert_int_equal(nbd_conn_read(c, 3 * MiB + 1, got, 7 * MiB / 2, &err), 0);
	assert_int_equal(pread(fd, want, 7 * MiB / 2, 3 * MiB + 1), 7 * MiB / 2);
	assert_memory_equal(got, want, 7 * MiB / 2);
	/* Block status: the unallocated chunk reads as zeros, the others do not; zeros
	 * written (10-11 MiB) count as zeros too. */
	assert_int_equal(nbd_conn_zero(c, 4 * MiB, 4 * MiB, &err), 1);
	assert_int_equal(nbd_conn_zero(c, 0, 4 * MiB, &err), 0);
	assert_int_equal(nbd_conn_zero(c, 8 * MiB, 4 * MiB, &err), 0);
	assert_int_equal(nbd_conn_zero(c, 10 * MiB, MiB, &err), 1);
	/* Past the end: refused here, before the server sees it. */
	assert_true(nbd_conn_read(c, DISK_SIZE - 4096, got, 8192, &err) < 0);
	assert_int_equal(err.code, EINVAL);
	/* The connection still works after that. */
	assert_int_equal(nbd_conn_read(c, 0, got, 4096, &err), 0);
	assert_int_equal(got[0], 0x5a);
	nbd_conn_close(c);
	close(fd);

	assert_true(nbd_conn_open(sock, "no-such", 0, &c, &err) < 0);
	assert_int_equal(err.code, ENOENT);
	assert_non_null(strstr(err.msg, "no-such"));
	free(got);
	free(want);
}

/* Through a backing chain, as the fleecing overlay is read: the overlay's own blocks,
 * the disk's beneath, and zeros only where neither has data. */
static void test_backing_chain(void **state)
{
	struct nbd_conn *c = NULL;
	unsigned char *got = xmalloc(4 * MiB), *want = xmalloc(4 * MiB);
	char path[PATH_MAX];
	struct kerr err;
	int fd;

	(void)state;
	if (server2 <= 0)
		skip();
	assert_int_equal(nbd_conn_open(sock2, "kfl-d1", 0, &c, &err), 0);
	assert_int_equal(nbd_conn_size(c), DISK_SIZE);
	snprintf(path, sizeof(path), "%s/o.raw", dir);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	for (int64_t off = 0; off < DISK_SIZE; off += 4 * MiB) {
		size_t len = DISK_SIZE - off < 4 * MiB ? (size_t)(DISK_SIZE - off) : 4 * MiB;

		assert_int_equal(nbd_conn_read(c, off, got, len, &err), 0);
		assert_int_equal(pread(fd, want, len, off), (ssize_t)len);
		assert_memory_equal(got, want, len);
	}
	/* 4-8 MiB: the overlay's 1 MiB makes it data now; 4-6 MiB alone is zeros in both. */
	assert_int_equal(nbd_conn_zero(c, 4 * MiB, 4 * MiB, &err), 0);
	assert_int_equal(nbd_conn_zero(c, 4 * MiB, 2 * MiB, &err), 1);
	assert_int_equal(nbd_conn_zero(c, 0, 4 * MiB, &err), 0); /* the backing file's data */
	nbd_conn_close(c);
	close(fd);
	free(got);
	free(want);
}

/* The export as a backup's source names the chunks the raw file does, hole unread. */
static void test_pipeline_source(void **state)
{
	char store[PATH_MAX], raw[PATH_MAX];
	struct json_object *a = json_object_new_array(), *b = json_object_new_array();
	struct chunkpipe_file file = {.path = raw};
	struct chunkpipe_source src = {0}, fsrc = {.read = chunkpipe_file_read,
						   .hole = chunkpipe_file_hole,
						   .data = &file};
	struct chunkpipe_result res, fres;
	struct nbd_conn *c = NULL;
	struct kerr err;

	(void)state;
	if (server <= 0)
		skip();
	snprintf(store, sizeof(store), "%s/store", dir);
	snprintf(raw, sizeof(raw), "%s/d.raw", dir);
	assert_int_equal(chunkstore_init(store, &err), 0);
	assert_int_equal(nbd_conn_open(sock, "kfl-d0", 0, &c, &err), 0);
	nbd_conn_source(c, &src);
	assert_int_equal(chunkpipe_store(store, &src, 2, a, &res, &err), 0);
	nbd_conn_close(c);
	file.fd = raw_open();
	fsrc.size = DISK_SIZE;
	assert_int_equal(chunkpipe_store(store, &fsrc, 2, b, &fres, &err), 0);
	close(file.fd);
	assert_true(json_object_equal(a, b));
	assert_string_equal(res.sum, fres.sum);
	assert_string_equal(json_object_get_string(json_object_array_get_idx(a, 1)),
			    CHUNKSTORE_ZERO_HEX);
	/* The unallocated chunk was named from block status, not read. */
	assert_int_equal(res.read_bytes, DISK_SIZE - 4 * MiB);
	json_object_put(a);
	json_object_put(b);
}

/* ---- a fake server: no structured replies, an error on the second read -------------- */

static char fake_sock[128];
static uint32_t fake_lens[8]; /* each read request's length, by its number (1, 2, ...) */

static void wr(int fd, const void *p, size_t n)
{
	assert_int_equal(write(fd, p, n), (ssize_t)n);
}

static void rd(int fd, void *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, (char *)p + got, n - got);

		assert_true(r > 0);
		got += (size_t)r;
	}
}

static void *fake_main(void *arg)
{
	int lfd = *(int *)arg, fd = accept(lfd, NULL, NULL);
	unsigned char buf[1024];
	uint64_t v64;
	uint32_t v32;
	uint16_t v16;
	int reads = 0;

	assert_true(fd >= 0);
	v64 = htobe64(0x4e42444d41474943ull);
	wr(fd, &v64, 8);
	v64 = htobe64(0x49484156454f5054ull);
	wr(fd, &v64, 8);
	v16 = htobe16(1);
	wr(fd, &v16, 2);
	rd(fd, buf, 4); /* client flags */
	for (;;) {
		uint32_t opt, len;
		unsigned char rep[20 + 12];

		rd(fd, buf, 16);
		memcpy(&v32, buf + 8, 4);
		opt = be32toh(v32);
		memcpy(&v32, buf + 12, 4);
		len = be32toh(v32);
		assert_true(len < sizeof(buf));
		rd(fd, buf, len);
		v64 = htobe64(0x0003e889045565a9ull);
		memcpy(rep, &v64, 8);
		v32 = htobe32(opt);
		memcpy(rep + 8, &v32, 4);
		if (opt != 7) { /* anything but GO: unsupported */
			v32 = htobe32(0x80000001u);
			memcpy(rep + 12, &v32, 4);
			v32 = 0;
			memcpy(rep + 16, &v32, 4);
			wr(fd, rep, 20);
			continue;
		}
		v32 = htobe32(3); /* NBD_REP_INFO: export, 1 MiB, flags */
		memcpy(rep + 12, &v32, 4);
		v32 = htobe32(12);
		memcpy(rep + 16, &v32, 4);
		v16 = 0;
		memcpy(rep + 20, &v16, 2);
		v64 = htobe64(MiB);
		memcpy(rep + 22, &v64, 8);
		v16 = htobe16(1 | 2);
		memcpy(rep + 30, &v16, 2);
		wr(fd, rep, 32);
		v32 = htobe32(1); /* ACK */
		memcpy(rep + 12, &v32, 4);
		v32 = 0;
		memcpy(rep + 16, &v32, 4);
		wr(fd, rep, 20);
		break;
	}
	for (;;) {
		unsigned char req[28], rep[16];
		uint32_t len;

		/* The client may hang up without NBD_CMD_DISC (after a timeout). */
		if (read(fd, req, 1) != 1)
			break;
		rd(fd, req + 1, 27);
		if (req[7] == 2) /* DISC */
			break;
		memcpy(&v32, req + 24, 4);
		len = be32toh(v32);
		if (++reads < (int)ARRAY_SIZE(fake_lens))
			fake_lens[reads] = len;
		if (reads == 5)
			continue; /* the fifth read: no answer at all */
		v32 = htobe32(0x67446698u);
		memcpy(rep, &v32, 4);
		v32 = htobe32(reads == 2 ? 5 : 0); /* the second read: EIO */
		memcpy(rep + 4, &v32, 4);
		memcpy(rep + 8, req + 8, 8); /* the cookie */
		wr(fd, rep, 16);
		if (reads != 2)
			for (uint32_t i = 0; i < len; i++)
				wr(fd, "\x42", 1);
	}
	close(fd);
	return NULL;
}

static void test_simple_replies(void **state)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	char base[64] = "/tmp/kumo-unit-nbdf.XXXXXX";
	unsigned char buf[8192];
	struct nbd_conn *c = NULL;
	struct kerr err;
	pthread_t tid;
	int lfd;

	(void)state;
	assert_non_null(mkdtemp(base));
	snprintf(fake_sock, sizeof(fake_sock), "%s/s", base);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", fake_sock);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	assert_int_equal(listen(lfd, 1), 0);
	assert_int_equal(pthread_create(&tid, NULL, fake_main, &lfd), 0);

	assert_int_equal(nbd_conn_open(fake_sock, "x", getpid(), &c, &err), 0);
	assert_int_equal(nbd_conn_size(c), MiB);
	assert_false(nbd_conn_sparse(c));
	assert_int_equal(nbd_conn_zero(c, 0, 4096, &err), 0); /* unknown: read it */
	/* Pieces of 4 KiB here (1 MiB in the agent): the first read of two pieces or more
	 * goes whole, the next ones in pieces, all in flight (nbd.c says why). */
	nbd_conn_piece_set(4096);
	assert_int_equal(nbd_conn_read(c, 4096, buf, sizeof(buf), &err), 0);
	assert_int_equal(buf[0], 0x42);
	assert_int_equal(buf[sizeof(buf) - 1], 0x42);
	assert_int_equal(fake_lens[1], sizeof(buf));
	/* The second read's first piece fails, its second succeeds: the read fails with
	 * the first's error, once both answered. */
	memset(buf, 0, sizeof(buf));
	assert_true(nbd_conn_read(c, 0, buf, sizeof(buf), &err) < 0);
	assert_int_equal(err.code, EIO);
	assert_int_equal(fake_lens[2], 4096);
	assert_int_equal(fake_lens[3], 4096);
	assert_int_equal(buf[4096], 0x42);
	nbd_conn_piece_set(0);
	/* An error reply carries no data: the stream stays in step. */
	assert_int_equal(nbd_conn_read(c, 0, buf, 512, &err), 0);
	/* A server that stops answering fails the read, not the thread; the connection is
	 * then done with, and closing it does not wait for the server. */
	nbd_conn_timeout_set(200);
	assert_true(nbd_conn_read(c, 0, buf, 512, &err) < 0);
	assert_int_equal(err.code, ETIMEDOUT);
	assert_true(nbd_conn_read(c, 0, buf, 512, &err) < 0);
	assert_int_equal(err.code, EIO);
	nbd_conn_timeout_set(0);
	nbd_conn_close(c);
	pthread_join(tid, NULL);
	close(lfd);
	tree_remove(base);
}

/* A server that accepts but never greets (a hung QEMU): the open fails after the
 * timeout instead of waiting for ever. */
static void test_silent_server(void **state)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	char base[64] = "/tmp/kumo-unit-nbds.XXXXXX";
	struct nbd_conn *c = NULL;
	struct kerr err;
	int lfd;

	(void)state;
	assert_non_null(mkdtemp(base));
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/s", base);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	assert_int_equal(listen(lfd, 1), 0); /* the kernel completes the connect */
	nbd_conn_timeout_set(200);
	assert_true(nbd_conn_open(sun.sun_path, "x", 0, &c, &err) < 0);
	nbd_conn_timeout_set(0);
	assert_int_equal(err.code, ETIMEDOUT);
	assert_null(c);
	close(lfd);
	tree_remove(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_read_and_status), cmocka_unit_test(test_pipeline_source),
		cmocka_unit_test(test_backing_chain),	cmocka_unit_test(test_simple_replies),
		cmocka_unit_test(test_silent_server),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
