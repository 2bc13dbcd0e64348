/*
 * fuzz_oci_manifest.c - the registry's check of a pushed manifest or index
 * (oci_manifest_check), against a store that holds one blob: the empty one
 * (sha256:e3b0c442..., 0 bytes), so seeds can name blobs that exist.
 *
 * Input: one byte choosing the request's Content-Type, then the body.
 */
#include <string.h>

#include "controllerd.h"
#include "fuzz.h"
#include "util.h"

struct controller ctl;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char digest[OCI_DIGEST_LEN + 1];
	struct kerr err;

	ctl.cfg.shared_pool = xstrdup(fuzz_scratch_dir("oci-manifest"));
	if (oci_store_init(&err) < 0 || oci_blob_put_mem("", 0, digest, &err) < 0) {
		fprintf(stderr, "cannot make the blob store: %s\n", err.msg);
		abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const types[] = {
		NULL,
		OCI_MT_MANIFEST,
		OCI_MT_INDEX,
		OCI_MT_DOCKER_MANIFEST,
		OCI_MT_DOCKER_LIST,
		"application/json; charset=utf-8",
		"text/plain",
	};
	struct oci_manifest_info info;
	struct kerr err;
	int ret;

	if (size < 1)
		return 0;
	memset(&err, 0, sizeof(err));
	ret = oci_manifest_check((const char *)data + 1, size - 1,
				 types[data[0] % ARRAY_SIZE(types)], &info, &err);
	FUZZ_REFUSAL_EXPLAINED(ret, err);
	if (ret == 0 && (info.media_type[0] == '\0' || info.content_size < 0)) {
		fprintf(stderr, "a manifest passed as '%s' of %lld bytes\n", info.media_type,
			(long long)info.content_size);
		abort();
	}
	return 0;
}
