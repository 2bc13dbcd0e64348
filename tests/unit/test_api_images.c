/*
 * test_api_images.c - controllerd/api_images.c's check of an uploaded qcow2's header
 * (image_qcow2_header_check(), common/qcow2.c's parser plus the upload's policy), done
 * before qemu-img opens the file: what it refused when it parsed by hand (fewer than 72
 * bytes, no magic, a backing file, the external data file bit) is still refused, and
 * what the one parser adds (a version QEMU does not open, an external data file named
 * only by its extension) too; a plain image passes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "controllerd.h"
#include "qcow2_fixture.h"

struct controller ctl;

/* image_qcow2_header_check() refuses the n bytes of b with a reason holding want. */
static void refused(const unsigned char *b, size_t n, const char *want)
{
	char why[256] = "";

	assert_int_equal(image_qcow2_header_check(b, n, why, sizeof(why)), -1);
	if (strstr(why, want) == NULL)
		fail_msg("'%s', not '%s'", why, want);
}

static void test_header_check(void **state)
{
	unsigned char b[BUF];
	char why[256] = "";

	(void)state;
	header_v3(b);
	assert_int_equal(image_qcow2_header_check(b, sizeof(b), why, sizeof(why)), 0);
	/* Version 2: its 72-byte header. */
	b[7] = 2;
	assert_int_equal(image_qcow2_header_check(b, sizeof(b), why, sizeof(why)), 0);

	/* What the hand parser refused. */
	header_v3(b);
	refused(b, 71, "not a qcow2 image");
	b[0] = 'X';
	refused(b, sizeof(b), "not a qcow2 image");
	header_v3(b);
	memcpy(b + 112, "/etc/hostname", 13);
	b[15] = 112; /* backing_file_offset */
	b[19] = 13;  /* backing_file_size */
	refused(b, sizeof(b), "backing file");
	refused(b, sizeof(b), "upload a self-contained image");
	header_v3(b);
	b[79] = 4; /* incompatible bit 2: external data file */
	refused(b, sizeof(b), "keeps its data in an external file");

	/* What the one parser adds. */
	header_v3(b);
	b[7] = 4;
	refused(b, sizeof(b), "version 4");
	header_v3(b);
	put32(b + 104, 0x44415441); /* a data file extension, without the feature bit */
	put32(b + 108, 11);
	memcpy(b + 112, "/etc/shadow", 11);
	refused(b, sizeof(b), "keeps its data in an external file");
	header_v3(b);
	refused(b, 100, "cut short");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_check),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
