/*
 * netapply.c - the network driver's engine (agentd/netdrv.c) by hand: check a
 * desired-state document and make this host - in practice a scratch network namespace
 * (ip netns exec NS netapply ...) - match it, the way kumo-agentd does on each apply.
 *
 *   netapply [-v] DIR DOC.json
 *
 * DIR holds dnsmasq's files (made 0700 if missing), as {state_dir}/net does for the
 * agent. -v logs every command that changes something. Exit status: 0 applied (the
 * number of changes is printed), 1 the apply failed (first failure printed; the other
 * steps still ran), 2 bad usage or a document the check refuses (nothing changed).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "netdrv.h"
#include "util.h"

#define DOC_MAX (64 * 1024 * 1024)

int main(int argc, char **argv)
{
	_cleanup_free_ char *text = NULL, *abs = NULL;
	struct json_object *doc = NULL;
	bool verbose = argc > 1 && strcmp(argv[1], "-v") == 0;
	const char *dir, *path;
	struct kerr err;
	size_t len;
	int ret;

	if (argc != 3 + verbose) {
		fprintf(stderr, "usage: netapply [-v] DIR DOC.json\n");
		return 2;
	}
	dir = argv[1 + verbose];
	path = argv[2 + verbose];
	log_init("netapply", verbose ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO);
	ret = file_read_all(path, DOC_MAX, &text, &len);
	if (ret < 0) {
		fprintf(stderr, "netapply: cannot read %s: %s\n", path, strerror(-ret));
		return 2;
	}
	if (json_body_parse(text, len, &doc, &err) < 0 || netdrv_doc_check(doc, &err) < 0) {
		fprintf(stderr, "netapply: %s: %s\n", path, err.msg);
		json_object_put(doc);
		return 2;
	}
	ret = mkdir_p(dir, 0700);
	if (ret < 0) {
		fprintf(stderr, "netapply: cannot create %s: %s\n", dir, strerror(-ret));
		json_object_put(doc);
		return 2;
	}
	/* The engine wants an absolute path: dnsmasq's config names its files. */
	abs = realpath(dir, NULL);
	if (abs == NULL) {
		fprintf(stderr, "netapply: %s: %s\n", dir, strerror(errno));
		json_object_put(doc);
		return 2;
	}
	ret = netdrv_apply(doc, abs, &err);
	json_object_put(doc);
	if (ret < 0) {
		fprintf(stderr, "netapply: %s\n", err.msg);
		return 1;
	}
	printf("applied: %d change%s\n", ret, ret == 1 ? "" : "s");
	return 0;
}
