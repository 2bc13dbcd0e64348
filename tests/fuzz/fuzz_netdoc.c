/*
 * fuzz_netdoc.c - the agent's check of the networks document the controller sends
 * (agentd/netdoc.c), and the readers the engine then uses on a document it passed.
 *
 * Input: the document's JSON text.
 */
#include <string.h>

#include "fuzz.h"
#include "json.h"
#include "netdoc.h"
#include "netdrv.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json_object *doc = NULL, *networks;
	struct kerr err;
	int ret;

	memset(&err, 0, sizeof(err));
	if (json_body_parse((const char *)data, size, &doc, &err) < 0)
		return 0;
	ret = netdrv_doc_check(doc, &err);
	FUZZ_REFUSAL_EXPLAINED(ret, err);
	networks = json_object_object_get(doc, "networks");
	for (size_t i = 0; ret == 0 && i < netdoc_len(networks); i++) {
		struct netdoc_net n;

		netdoc_net_read(json_object_array_get_idx(networks, i), &n);
		for (size_t j = 0; j < netdoc_len(n.segments); j++) {
			struct netdoc_seg s;
			long long a, b;

			netdoc_seg_read(json_object_array_get_idx(n.segments, j), &s);
			/* The engine names the bridge after it; a passed document must too. */
			if (!netdoc_kumo_name(s.bridge, "kb", &a, &b) ||
			    !netdoc_ifname_safe(s.bridge)) {
				fprintf(stderr, "a checked document has bridge '%s'\n", s.bridge);
				abort();
			}
		}
	}
	json_object_put(doc);
	return 0;
}
