/*
 * fuzz_qcow2.c - the agent's in-process read of a qcow2 header (common/qcow2.c): the
 * backing file, its format and the data file of every disk and image it checks before
 * QEMU opens them (agentd/imagecheck.c). An image file is outside input.
 *
 * Input: the image's first bytes. Beyond not crashing, a header that passes must hold
 * what the check relies on: strings NUL-terminated within their fields.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "qcow2.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qcow2_header h;
	char why[256] = "";
	int ret = qcow2_header_parse(data, size, &h, why, sizeof(why));

	if (ret < 0 && why[0] == '\0') {
		fprintf(stderr, "refused without a message\n");
		abort();
	}
	if (ret == 0 &&
	    (strnlen(h.backing, sizeof(h.backing)) == sizeof(h.backing) ||
	     strnlen(h.backing_format, sizeof(h.backing_format)) == sizeof(h.backing_format) ||
	     (h.version != 2 && h.version != 3))) {
		fprintf(stderr, "accepted a header it should have refused\n");
		abort();
	}
	return 0;
}
