/*
 * fuzz_api_body.c - the controller's checks of JSON it is sent: request bodies
 * (instances, containers, networks, hosts, tokens) and the agents' join requests and
 * op reports, through the same tables and checks the handlers use.
 *
 * Bodies that pass go on to what builds the spec the agent gets from them, against an
 * in-memory database with two networks ("lan": bridge, VLANs 100 and 200, 10.50.0.9
 * taken; "nat1") and one container image (busybox:latest).
 *
 * Input: one byte choosing the table, then the body as it would arrive.
 */
#include <string.h>

#include "controllerd.h"
#include "fuzz.h"
#include "ipam.h"
#include "util.h"

struct controller ctl;

static const char db_seed[] =
	"INSERT INTO networks (name, mode, cidr, gateway, vlans, vni_base, mtu, uplinks, "
	"  created_at, updated_at) VALUES"
	" ('lan', 'bridge', '10.50.0.0/24', '10.50.0.1', '[100, 200]', 4096, 1450,"
	"  '{\"h1\": \"eth1\"}', 0, 0),"
	" ('nat1', 'nat', '192.168.77.0/24', '192.168.77.1', '[]', 8192, 1450, '{}', 0, 0);"
	"INSERT INTO addresses (network_id, address, kind, owner, created_at)"
	" VALUES (1, '10.50.0.9', 'static', 'vm9', 0);"
	"INSERT INTO oci_tags VALUES ('busybox', 'latest', 'sha256:"
	"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', '" OCI_MT_MANIFEST
	"', 100, 0);";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct kerr err;

	if (db_open(&ctl.db, ":memory:", &err) < 0 ||
	    db_migrate(ctl.db, DB_SCHEMA_VERSION, &err) < 0 || db_exec(ctl.db, db_seed, &err) < 0) {
		fprintf(stderr, "fuzz_api_body: cannot make the database: %s\n", err.msg);
		abort();
	}
	return 0;
}

/* What a body that passed its table becomes: a container's spec, a VM's NICs. */
static void spec_build_check(struct json_object *body, const struct json_field *fields)
{
	struct json_object *built = NULL;
	struct kerr err;

	memset(&err, 0, sizeof(err));
	if (fields == container_create_fields)
		built = container_spec_build(body, &err);
	else if (fields == instance_vm_fields)
		built = nics_build(json_object_object_get(body, "nics"), true, &err);
	else
		return;
	FUZZ_REFUSAL_EXPLAINED(built ? 0 : -1, err);
	json_object_put(built);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct json_field *const tables[] = {
		instance_vm_fields,    container_create_fields, instance_patch_fields,
		network_create_fields, network_patch_fields,	host_patch_fields,
		token_create_fields,   agentlink_join_fields,	agentlink_progress_fields,
		agentlink_done_fields,
	};
	const struct json_field *fields;
	struct json_object *body = NULL;
	struct kerr err;
	int ret;

	if (size < 1)
		return 0;
	fields = tables[data[0] % ARRAY_SIZE(tables)];
	memset(&err, 0, sizeof(err));
	ret = json_body_parse((const char *)data + 1, size - 1, &body, &err);
	FUZZ_REFUSAL_EXPLAINED(ret, err);
	if (ret < 0)
		return 0;
	/* An instance's type decides its table (api_instances_create). */
	if (fields == instance_vm_fields || fields == container_create_fields) {
		const char *type = json_get_str(body, "type", "");

		if (strcmp(type, "vm") && strcmp(type, "container")) {
			json_object_put(body);
			return 0;
		}
		fields = !strcmp(type, "vm") ? instance_vm_fields : container_create_fields;
	}
	ret = json_fields_check(body, fields, &err);
	FUZZ_REFUSAL_EXPLAINED(ret, err);
	if (ret == 0)
		spec_build_check(body, fields);
	if (ret == 0 && fields == network_create_fields) {
		struct ipam_net net;
		char gw[IPAM_ADDR_STRLEN];

		ret = network_body_check(body, &net, gw, &err);
		FUZZ_REFUSAL_EXPLAINED(ret, err);
	}
	json_object_put(body);
	return 0;
}
