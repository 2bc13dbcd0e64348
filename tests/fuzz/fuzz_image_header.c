/*
 * fuzz_image_header.c - the controller's checks of an uploaded disk image: its qcow2
 * header (read before qemu-img sees the file) and qemu-img's JSON about it (formats,
 * backing files, vmdk extents that name other files).
 *
 * Input: one byte choosing the check (even: the header, odd: the JSON, with the
 * format named by the byte), then the file's first bytes or qemu-img's answer.
 */
#include <string.h>

#include "controllerd.h"
#include "fuzz.h"
#include "util.h"

struct controller ctl;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const formats[] = {"qcow2", "raw", "vmdk", "vhdx", "vdi", "vpc"};
	char why[256] = "";
	int ret;

	if (size < 1)
		return 0;
	if ((data[0] & 1) == 0) {
		ret = image_qcow2_header_check(data + 1, size - 1, why, sizeof(why));
	} else {
		/* qemu-img's output reaches the check as a C string. */
		_cleanup_free_ char *text = xmalloc(size);
		int64_t vsize = 0;

		memcpy(text, data + 1, size - 1);
		text[size - 1] = '\0';
		ret = image_info_check(text, "/pool/uploads/up1",
				       formats[(data[0] >> 1) % ARRAY_SIZE(formats)], &vsize, why,
				       sizeof(why));
		if (ret == 0 && vsize <= 0) {
			fprintf(stderr, "an image passed with virtual size %lld\n",
				(long long)vsize);
			abort();
		}
	}
	if (ret < 0 && why[0] == '\0') {
		fprintf(stderr, "an image was refused without a reason\n");
		abort();
	}
	return 0;
}
