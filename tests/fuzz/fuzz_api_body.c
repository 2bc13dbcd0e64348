/*
 * fuzz_api_body.c - the controller's checks of JSON it is sent: request bodies
 * (instances, containers, networks, hosts, tokens) and the agents' join requests and
 * op reports, through the same tables and checks the handlers use.
 *
 * Input: one byte choosing the table, then the body as it would arrive.
 */
#include <string.h>

#include "controllerd.h"
#include "fuzz.h"
#include "ipam.h"
#include "util.h"

struct controller ctl;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
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
	if (ret == 0 && fields == network_create_fields) {
		struct ipam_net net;
		char gw[IPAM_ADDR_STRLEN];

		ret = network_body_check(body, &net, gw, &err);
		FUZZ_REFUSAL_EXPLAINED(ret, err);
	}
	json_object_put(body);
	return 0;
}
