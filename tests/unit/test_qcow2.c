/*
 * test_qcow2.c - the qcow2 header read the agent's image check relies on
 * (common/qcow2.c): the fields it needs, and every way an image file can lie about
 * its own layout refused with a reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"
#include "qcow2_fixture.h"

/* An extension at off: type, length, data; returns the offset after its padding. */
static size_t ext_put(unsigned char *b, size_t off, uint32_t type, const char *data, uint32_t len)
{
	put32(b + off, type);
	put32(b + off + 4, len);
	memcpy(b + off + 8, data, len);
	return off + 8 + ((len + 7) & ~7u);
}

/* A linked clone: backing format extension, end marker, then the backing file's name. */
static void header_clone(unsigned char *b, const char *backing, const char *fmt)
{
	size_t off;

	header_v3(b);
	off = ext_put(b, 104, 0xe2792aca, fmt, (uint32_t)strlen(fmt));
	memset(b + off, 0, 8);
	off += 8;
	put64(b + 8, off);
	put32(b + 16, (uint32_t)strlen(backing));
	memcpy(b + off, backing, strlen(backing));
}

static void test_plain(void **state)
{
	unsigned char b[BUF];
	struct qcow2_header h;
	char why[256];

	(void)state;
	header_v3(b);
	assert_int_equal(qcow2_header_parse(b, sizeof(b), &h, why, sizeof(why)), 0);
	assert_int_equal(h.version, 3);
	assert_int_equal(h.cluster_bits, 16);
	assert_int_equal(h.header_length, 104);
	assert_int_equal(h.virtual_size, 1ull << 30);
	assert_string_equal(h.backing, "");
	assert_string_equal(h.backing_format, "");
	assert_false(h.data_file);
	assert_int_equal(h.l1_size, 0);
	assert_int_equal(h.l1_offset, 0);
	/* The fields the backup's map of a target reads (agentd/backupmap.c) and checks
	 * itself: L1 table, encryption, snapshots, a longer v3 header. */
	put32(b + 32, 1);
	put32(b + 36, 16);
	put64(b + 40, 0x30000);
	put32(b + 60, 2);
	put32(b + 100, 112);
	b[79] = 8; /* compression type (zlib: the byte at 104 stays 0) */
	memset(b + 112, 0, 8);
	assert_int_equal(qcow2_header_parse(b, sizeof(b), &h, why, sizeof(why)), 0);
	assert_int_equal(h.crypt_method, 1);
	assert_int_equal(h.l1_size, 16);
	assert_int_equal(h.l1_offset, 0x30000);
	assert_int_equal(h.snapshots, 2);
	assert_int_equal(h.header_length, 112);
	assert_int_equal(h.incompatible, 8);
	/* Version 2: a 72-byte header, extensions right after it; no v3 fields read. */
	b[7] = 2;
	memset(b + 72, 0xff, 32);
	memset(b + 72, 0, 8);
	assert_int_equal(qcow2_header_parse(b, sizeof(b), &h, why, sizeof(why)), 0);
	assert_int_equal(h.version, 2);
	assert_int_equal(h.header_length, 72);
	assert_int_equal(h.incompatible, 0);
	assert_int_equal(h.l1_offset, 0x30000);
}

/* The read from an open file: a file shorter than QCOW2_HEADER_READ_MAX is parsed
 * whole; one that cannot be read is refused naming why, and no path. */
static void test_fd_read(void **state)
{
	char path[] = "/tmp/kumo-unit-qcow2.XXXXXX", why[256] = "";
	unsigned char b[BUF];
	struct qcow2_header h;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	unlink(path);
	header_clone(b, "/pool/images/base.qcow2", "qcow2");
	assert_int_equal(pwrite(fd, b, 300, 0), 300);
	assert_int_equal(qcow2_header_fd_read(fd, &h, why, sizeof(why)), 0);
	assert_string_equal(h.backing, "/pool/images/base.qcow2");
	/* Cut inside the backing file's name. */
	assert_int_equal(ftruncate(fd, 140), 0);
	assert_int_equal(qcow2_header_fd_read(fd, &h, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "past the first 140 bytes"));
	close(fd);
	fd = open("/tmp", O_RDONLY | O_DIRECTORY);
	assert_true(fd >= 0);
	assert_int_equal(qcow2_header_fd_read(fd, &h, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "cannot read it"));
	assert_null(strstr(why, "/tmp"));
	close(fd);
}

static void test_clone(void **state)
{
	unsigned char b[BUF];
	struct qcow2_header h;
	char why[256];

	(void)state;
	header_clone(b, "/pool/images/base.qcow2", "qcow2");
	assert_int_equal(qcow2_header_parse(b, sizeof(b), &h, why, sizeof(why)), 0);
	assert_string_equal(h.backing, "/pool/images/base.qcow2");
	assert_string_equal(h.backing_format, "qcow2");
	header_clone(b, "base.raw", "raw");
	assert_int_equal(qcow2_header_parse(b, sizeof(b), &h, why, sizeof(why)), 0);
	assert_string_equal(h.backing, "base.raw");
	assert_string_equal(h.backing_format, "raw");
}

/* Both ways of keeping the data elsewhere are seen: the feature bit, the name. */
static void test_data_file(void **state)
{
	unsigned char b[BUF];
	struct qcow2_header h;
	char why[256];

	(void)state;
	header_v3(b);
	b[79] = 4;
	assert_int_equal(qcow2_header_parse(b, sizeof(b), &h, why, sizeof(why)), 0);
	assert_true(h.data_file);
	header_v3(b);
	memset(b + ext_put(b, 104, 0x44415441, "/etc/shadow", 11), 0, 8);
	assert_int_equal(qcow2_header_parse(b, sizeof(b), &h, why, sizeof(why)), 0);
	assert_true(h.data_file);
}

static void refused(const unsigned char *b, size_t n, const char *what)
{
	struct qcow2_header h;
	char why[256] = "";

	if (qcow2_header_parse(b, n, &h, why, sizeof(why)) == 0)
		fail_msg("accepted: %s", what);
	assert_true(why[0] != '\0');
}

static void test_refused(void **state)
{
	unsigned char b[BUF];

	(void)state;
	header_v3(b);
	refused(b, 71, "a header cut short");
	refused(b, 100, "a version 3 header cut short");
	b[0] = 'X';
	refused(b, sizeof(b), "no magic");
	header_v3(b);
	b[7] = 4;
	refused(b, sizeof(b), "version 4");
	header_v3(b);
	b[23] = 22;
	refused(b, sizeof(b), "4 MiB clusters");
	header_v3(b);
	b[23] = 8;
	refused(b, sizeof(b), "256-byte clusters");
	header_v3(b);
	b[79] = 0x20;
	refused(b, sizeof(b), "an unknown incompatible feature");
	header_v3(b);
	put32(b + 100, 103);
	refused(b, sizeof(b), "a header length below 104");
	header_v3(b);
	put32(b + 100, 70000);
	refused(b, sizeof(b), "a header length past the cluster");
	header_v3(b);
	put32(b + 100, 2048);
	refused(b, 1024, "a header length past the bytes read");
	/* Extensions: one longer than the cluster, one past the bytes read, and a walk
	 * that reaches the end of the bytes read with no end marker. */
	header_v3(b);
	put32(b + 104, 0x12345678);
	put32(b + 108, 0xfffffff0);
	refused(b, sizeof(b), "an extension longer than the cluster");
	header_v3(b);
	put32(b + 104, 0x12345678);
	put32(b + 108, 8000);
	refused(b, sizeof(b), "an extension past the bytes read");
	header_v3(b);
	for (size_t off = 104; off + 8 <= sizeof(b); off += 16) {
		put32(b + off, 0x12345678);
		put32(b + off + 4, off + 16 <= sizeof(b) ? 8 : 0);
	}
	refused(b, sizeof(b), "no end marker within the bytes read");
	header_clone(b, "/pool/images/base.qcow2", "qcow2ffffffffffff");
	refused(b, sizeof(b), "a backing format name of 17 bytes");
	header_clone(b, "/pool/images/base.qcow2", "qcow2");
	put32(b + 16, 1024);
	refused(b, sizeof(b), "a backing file name of 1024 bytes");
	header_clone(b, "/pool/images/base.qcow2", "qcow2");
	put64(b + 8, 70000);
	refused(b, sizeof(b), "a backing file name past the cluster");
	header_clone(b, "/pool/images/base.qcow2", "qcow2");
	put64(b + 8, 50);
	refused(b, sizeof(b), "a backing file name inside the header");
	header_clone(b, "/pool/images/base.qcow2", "qcow2");
	put64(b + 8, 4090);
	refused(b, sizeof(b), "a backing file name past the bytes read");
	header_clone(b, "/pool/images/base.qcow2", "qcow2");
	put32(b + 16, 0);
	refused(b, sizeof(b), "an empty backing file name");
	header_clone(b, "/pool/images/base.qcow2", "qcow2");
	b[((size_t)b[14] << 8 | b[15]) + 5] = '\0'; /* the name's offset is below 64 KiB */
	refused(b, sizeof(b), "a NUL in the backing file name");
	/* Names go into logs and errors: a newline or an escape would forge lines. */
	header_clone(b, "/pool/images/base\n2026-12-07 agent: forged.qcow2", "qcow2");
	refused(b, sizeof(b), "a newline in the backing file name");
	header_clone(b, "/pool/images/\x1b[2Jbase.qcow2", "qcow2");
	refused(b, sizeof(b), "an escape in the backing file name");
	header_clone(b, "/pool/images/base.qcow2", "qcow\x80");
	refused(b, sizeof(b), "a byte above 0x7e in the backing format name");
}

/* An extension whose data runs past the bytes read: refused before any of it is read
 * (the buffer is exactly n bytes, so ASan would see a read past it). */
static void test_short_read(void **state)
{
	unsigned char b[BUF], *copy;
	struct qcow2_header h;
	char why[256] = "";

	(void)state;
	header_v3(b);
	ext_put(b, 104, 0xe2792aca, "qcow2qcow2ab", 12);
	copy = malloc(120);
	memcpy(copy, b, 120);
	assert_int_equal(qcow2_header_parse(copy, 120, &h, why, sizeof(why)), -1);
	assert_true(why[0] != '\0');
	free(copy);
}

/* The image check's decision on a parsed header: only the exact backing file passes. */
static void test_backing_check(void **state)
{
	const char *disk = "/pool/disks/vm1/disk0.qcow2", *image = "/pool/images/abc.qcow2";
	struct qcow2_header h;
	char why[512];

	(void)state;
	memset(&h, 0, sizeof(h));
	/* No backing file: right for an image, wrong for a clone. */
	assert_int_equal(qcow2_backing_check(image, &h, NULL, why, sizeof(why)), 0);
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "(none)"));
	/* The exact path, absolute or relative to the disk's directory. */
	strcpy(h.backing, image);
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), 0);
	strcpy(h.backing, "../../images/abc.qcow2");
	assert_int_equal(qcow2_backing_check(disk, &h, "/pool/disks/vm1/../../images/abc.qcow2",
					     why, sizeof(why)),
			 0);
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), -1);
	/* Names QEMU would open as something else than that file. */
	strcpy(h.backing,
	       "json:{\"file.driver\":\"file\",\"file.filename\":\"/pool/images/abc.qcow2\"}");
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), -1);
	strcpy(h.backing, "nbd:127.0.0.1:10809");
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), -1);
	strcpy(h.backing, "/etc/shadow");
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "/etc/shadow"));
	/* A backing file in an image that should have none. */
	assert_int_equal(qcow2_backing_check(image, &h, NULL, why, sizeof(why)), -1);
	/* The right file named as raw: QEMU would give the guest the qcow2 bytes. */
	strcpy(h.backing, image);
	strcpy(h.backing_format, "raw");
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "raw"));
	strcpy(h.backing_format, "qcow2");
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), 0);
	/* Data in an external file, whatever the backing. */
	h.data_file = true;
	assert_int_equal(qcow2_backing_check(disk, &h, image, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "external"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain),	   cmocka_unit_test(test_clone),
		cmocka_unit_test(test_data_file),  cmocka_unit_test(test_refused),
		cmocka_unit_test(test_short_read), cmocka_unit_test(test_backing_check),
		cmocka_unit_test(test_fd_read),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
