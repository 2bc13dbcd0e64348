/*
 * fuzz_oci_image.c - the agent's reading of an image from the shared store: manifest
 * or index (the linux/amd64 entry picked), then config, then the list of layers
 * (layers_image_parse, which layers_image_load feeds from blob files).
 *
 * Input: up to three documents separated by NUL bytes, served in the order the parser
 * asks for blobs, whatever digest it names (the store's digest check is not what is
 * fuzzed here; a digest that is not sha256 is still refused as the store refuses it).
 */
#include <string.h>

#include "agentd.h"
#include "fuzz.h"
#include "json.h"

struct docs {
	const char *part[3];
	size_t len[3], n, next;
};

static int docs_read(void *cls, const char *digest, const char *what, struct json_object **out,
		     int64_t *size, struct kerr *err)
{
	struct docs *d = cls;
	size_t i = d->next++;

	if (!layers_digest_valid(digest))
		return err_set(err, 0, "%s'%.80s' is not a sha256 digest", what, digest);
	if (i >= d->n)
		return err_set(err, ENOENT, "%sblob %.19s is not in the image store", what, digest);
	if (json_body_parse(d->part[i], d->len[i], out, err) < 0)
		return -1;
	if (size)
		*size = (int64_t)d->len[i];
	return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char digest[] =
		"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	const char *p = (const char *)data, *end = p + size;
	struct docs d = {0};
	struct oci_image img;
	struct kerr err;
	int ret;

	while (d.n < 3 && p <= end) {
		const char *nul = memchr(p, '\0', (size_t)(end - p));
		size_t len = nul ? (size_t)(nul - p) : (size_t)(end - p);

		d.part[d.n] = p;
		d.len[d.n++] = len;
		p += len + 1;
	}
	memset(&err, 0, sizeof(err));
	ret = layers_image_parse(digest, docs_read, &d, &img, &err);
	FUZZ_REFUSAL_EXPLAINED(ret, err);
	/* What unpacking relies on: at most so many layers, each named by a digest and
	 * checked against its config's diff_id, when there is one, which is a digest too. */
	for (size_t i = 0; ret == 0 && i < img.nlayers; i++) {
		const struct oci_layer *l = &img.layers[i];

		if (img.nlayers > AGENT_OCI_LAYERS_MAX || !layers_digest_valid(l->digest) ||
		    (l->diff_id[0] && !layers_digest_valid(l->diff_id))) {
			fprintf(stderr,
				"an image passed with layer %zu of %zu '%s' (diff_id '%s')\n", i,
				img.nlayers, l->digest, l->diff_id);
			abort();
		}
	}
	layers_image_free(&img);
	return 0;
}
