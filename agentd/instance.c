/*
 * instance.c - the controller's instance commands and queries.
 *
 * LINK_CMD_INSTANCE {action, instance: SPEC, args} is checked against tables before
 * it is acked (a malformed one is nacked and nothing runs), then runs as an operation
 * that reports op-progress and one op-done, like probe.c:
 *   succeeded  {"instance": REPORT, ...fields the action adds}
 *   failed     {"error": "<one sentence>"}; the instance's state is then pushed too.
 * One command works on a VM at a time; another one fails at once, except that a
 * force-stop may cut a graceful stop short (both then finish when QEMU is gone).
 *
 * create and update use the whole SPEC the command carries; the other actions work
 * from the spec the agent keeps and read only the SPEC's name.
 *
 * The actions themselves live in vmaction.c, as chains of steps, each started as the
 * last thing its predecessor does; a step waits on QMP (vm.c), a helper program or
 * the thread pool (disk.c). This file has the plumbing they share: progress, the
 * op-done with a fresh report, failure with clean-up, one step per disk.
 * When the agent stops, an operation in flight is dropped at its next step: the
 * controller resends it to the next agent, whose result decides.
 *
 * Containers (instance.type "container") take the same path with their own tables:
 * their actions live in ociaction.c and work on a struct ctr (oci.c) instead of a vm.
 *
 * LINK_CMD_QUERY is answered in the ack itself: {what: "console", name, bytes} for a
 * VM's serial console, {what: "logs", ...} for a container's output, {what: "spec",
 * name} for an instance's spec (the controller adopting it), and
 * {what: "exec", ...}, which runs a command in a container and answers when it ends.
 */
#include "agentd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "util.h"

#define USER_DATA_MAX	(1024 * 1024)
#define CONSOLE_DEFAULT (64 * 1024)

/* ---- validation ----------------------------------------------------------------------- */

static int one_of(struct json_object *val, const char *field, const char *const *allowed,
		  struct kerr *err)
{
	const char *s = json_object_get_string(val);

	for (size_t i = 0; allowed[i]; i++)
		if (strcmp(s, allowed[i]) == 0)
			return 0;
	return err_input(err, 400, field, "field '%s' has an unknown value '%.32s'", field, s);
}

static int type_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const types[] = {"vm", "container", NULL};

	return one_of(val, field, types, err);
}

static int accel_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const accels[] = {"tcg", "kvm", NULL};

	return one_of(val, field, accels, err);
}

static int bus_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const buses[] = {"virtio", "scsi", "sata", "ide", NULL};

	return one_of(val, field, buses, err);
}

static int pool_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const pools[] = {"shared", "local", NULL};

	return one_of(val, field, pools, err);
}

static int clone_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const clones[] = {"linked", "full", NULL};

	return one_of(val, field, clones, err);
}

static int model_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const models[] = {"virtio", "e1000", NULL};

	return one_of(val, field, models, err);
}

static int range_check(struct json_object *val, const char *field, int64_t lo, int64_t hi,
		       struct kerr *err)
{
	int64_t v = json_object_get_int64(val);

	if (v < lo || v > hi)
		return err_input(err, 400, field, "field '%s' must be between %lld and %lld", field,
				 (long long)lo, (long long)hi);
	return 0;
}

static int vcpus_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 1, 1024, err);
}

static int mb_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 16, 16LL * 1024 * 1024, err);
}

static int size_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 1, 64LL * 1024 * 1024, err);
}

static int path_check(struct json_object *val, const char *field, struct kerr *err)
{
	return disk_path_check(json_object_get_string(val), field, err);
}

static int mac_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);
	unsigned b[6];
	char tail;

	if (strlen(s) != 17 ||
	    sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
		   &tail) != 6 ||
	    strspn(s, "0123456789abcdefABCDEF:") != 17)
		return err_input(err, 400, field, "field '%s' must be a MAC like 52:54:00:ab:cd:ef",
				 field);
	if (b[0] & 1)
		return err_input(err, 400, field, "field '%s' is a multicast MAC", field);
	return 0;
}

static int network_check(struct json_object *val, const char *field, struct kerr *err)
{
	return name_check(val, field, err);
}

/* "<prefix><digits>-<digits>", at most 15 characters: a port or bridge name the
 * controller derived; never anything the host already had. */
static int kumo_ifname_check(struct json_object *val, const char *field, const char *prefix,
			     struct kerr *err)
{
	const char *s = json_object_get_string(val), *p;
	size_t len = strlen(s), a, b;

	if (len > 15 || strncmp(s, prefix, 2) != 0)
		goto bad;
	p = s + 2;
	a = strspn(p, "0123456789");
	if (a == 0 || p[a] != '-')
		goto bad;
	b = strspn(p + a + 1, "0123456789");
	if (b == 0 || p[a + 1 + b] != '\0')
		goto bad;
	return 0;
bad:
	return err_input(err, 400, field, "field '%s' must look like %s<n>-<n>", field, prefix);
}

static int port_check(struct json_object *val, const char *field, struct kerr *err)
{
	return kumo_ifname_check(val, field, "kp", err);
}

static int bridge_check(struct json_object *val, const char *field, struct kerr *err)
{
	return kumo_ifname_check(val, field, "kb", err);
}

static int ipv4_check(struct json_object *val, const char *field, struct kerr *err)
{
	struct in_addr a;

	if (inet_pton(AF_INET, json_object_get_string(val), &a) != 1)
		return err_input(err, 400, field, "field '%s' must be an IPv4 address", field);
	return 0;
}

static int ipv4s_check(struct json_object *val, const char *field, struct kerr *err)
{
	for (size_t i = 0; i < json_object_array_length(val); i++) {
		struct json_object *e = json_object_array_get_idx(val, i);

		if (!json_object_is_type(e, json_type_string) || ipv4_check(e, field, err) < 0)
			return err_input(err, 400, field,
					 "field '%s' must be a list of IPv4 addresses", field);
	}
	return 0;
}

static int prefix_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 8, 30, err);
}

static int mtu_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 576, 9000, err);
}

static int vlan_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 0, 4094, err);
}

static int netmode_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const modes[] = {"nat", "host-only", "bridge", NULL};

	return one_of(val, field, modes, err);
}

static int user_data_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_object_get_string_len(val) > USER_DATA_MAX)
		return err_input(err, 400, field, "field '%s' is larger than %d bytes", field,
				 USER_DATA_MAX);
	return 0;
}

static const struct json_field memory_fields[] = {
	{"mb", JK_INT, false, mb_check},
	{"min_mb", JK_INT, false, mb_check},
	{"max_mb", JK_INT, false, mb_check},
	{NULL, 0, false, NULL},
};

static int memory_check(struct json_object *val, const char *field, struct kerr *err)
{
	bool fixed = json_object_object_get_ex(val, "mb", NULL);
	bool min = json_object_object_get_ex(val, "min_mb", NULL);
	bool max = json_object_object_get_ex(val, "max_mb", NULL);

	if (json_fields_check(val, memory_fields, err) < 0)
		return agent_err_prefix(err, "memory: ");
	if (fixed == (min || max) || min != max)
		return err_input(err, 400, field,
				 "memory is either {\"mb\": N} or {\"min_mb\": A, \"max_mb\": B}");
	if (min && json_get_int(val, "min_mb", 0) > json_get_int(val, "max_mb", 0))
		return err_input(err, 400, field, "memory min_mb is larger than max_mb");
	return 0;
}

/* An image's SHA-256 as the controller recorded it: 64 lower-case hex digits. */
static int sha256_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);

	if (strlen(s) != 64 || strspn(s, "0123456789abcdef") != 64)
		return err_input(err, 400, field, "field '%s' must be 64 hex digits", field);
	return 0;
}

static const struct json_field image_fields[] = {
	{"path", JK_STRING, true, path_check},
	{"name", JK_STRING, false, NULL}, /* the controller's, for people */
	{"sha256", JK_STRING, false, sha256_check},
	{NULL, 0, false, NULL},
};

static int image_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_fields_check(val, image_fields, err) < 0)
		return agent_err_prefix(err, "image: ");
	return 0;
}

static const struct json_field disk_fields[] = {
	{"name", JK_STRING, true, name_check},	  {"bus", JK_STRING, true, bus_check},
	{"pool", JK_STRING, true, pool_check},	  {"path", JK_STRING, true, path_check},
	{"size_mb", JK_INT, false, size_check},	  {"image", JK_OBJECT, false, image_check},
	{"clone", JK_STRING, false, clone_check}, {NULL, 0, false, NULL},
};

/* A NIC on a network, as the controller completed it (nics_allocate()). */
#define NETWORK_NIC_FIELDS                                                                         \
	{"mac", JK_STRING, true, mac_check}, {"network", JK_STRING, false, network_check},         \
		{"vlan", JK_INT, false, vlan_check}, {"address", JK_STRING, false, ipv4_check},    \
		{"fixed", JK_BOOL, false, NULL}, {"prefix", JK_INT, false, prefix_check},          \
		{"mode", JK_STRING, false, netmode_check},                                         \
		{"router", JK_STRING, false, ipv4_check}, {"mtu", JK_INT, false, mtu_check},       \
		{"dns", JK_ARRAY, false, ipv4s_check},                                             \
		{"bridge", JK_STRING, false,                                                       \
		 bridge_check}, /* the host's network document realises these (netnft.c) */        \
		{"port_security", JK_BOOL, false, NULL},                                           \
		{"security_groups", JK_ARRAY, false, NULL},                                        \
	{                                                                                          \
		"ifname", JK_STRING, false, port_check                                             \
	}

static const struct json_field nic_fields[] = {
	{"model", JK_STRING, true, model_check},
	NETWORK_NIC_FIELDS,
	{NULL, 0, false, NULL},
};

static const struct json_field cloud_init_fields[] = {
	{"user_data", JK_STRING, true, user_data_check},
	{NULL, 0, false, NULL},
};

/* A NIC that names a network carries all the agent needs to wire it. */
static int nics_network_complete(struct json_object *nics, struct kerr *err)
{
	static const char *const needed[] = {"ifname", "bridge", "address", "prefix",
					     "mtu",    "mode",	 NULL};

	for (size_t i = 0; i < json_object_array_length(nics); i++) {
		struct json_object *nic = json_object_array_get_idx(nics, i);

		if (json_get_str(nic, "network", NULL) == NULL)
			continue;
		for (const char *const *k = needed; *k; k++)
			if (!json_object_object_get_ex(nic, *k, NULL) ||
			    json_object_is_type(json_object_object_get(nic, *k), json_type_null))
				return err_input(err, 400, "nics",
						 "nics[%zu] is on network %s but has no '%s'", i,
						 json_get_str(nic, "network", ""), *k);
	}
	return 0;
}

/* Each element of an array is an object checked against fields, named in errors. */
static int array_check(struct json_object *arr, const char *what, const struct json_field *fields,
		       size_t max, struct kerr *err)
{
	size_t n = json_object_array_length(arr);
	char prefix[64];

	if (n > max)
		return err_input(err, 400, what, "more than %zu %s", max, what);
	for (size_t i = 0; i < n; i++) {
		struct json_object *el = json_object_array_get_idx(arr, i);

		snprintf(prefix, sizeof(prefix), "%s[%zu]: ", what, i);
		if (!json_object_is_type(el, json_type_object)) {
			err_input(err, 400, what, "each of %s must be an object", what);
			return agent_err_prefix(err, prefix);
		}
		if (json_fields_check(el, fields, err) < 0)
			return agent_err_prefix(err, prefix);
	}
	return 0;
}

static int disks_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t n = json_object_array_length(val);

	if (array_check(val, "disks", disk_fields, AGENT_VM_DISKS_MAX, err) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		struct json_object *d = json_object_array_get_idx(val, i);

		if (!json_object_object_get_ex(d, "image", NULL) &&
		    !json_object_object_get_ex(d, "size_mb", NULL))
			return err_input(err, 400, "size_mb",
					 "disk %s: size_mb is required without an image",
					 json_get_str(d, "name", ""));
		for (size_t j = 0; j < i; j++) {
			struct json_object *o = json_object_array_get_idx(val, j);

			if (strcmp(json_get_str(d, "name", ""), json_get_str(o, "name", "")) == 0)
				return err_input(err, 400, "disks", "two disks are named %s",
						 json_get_str(d, "name", ""));
			if (strcmp(json_get_str(d, "pool", ""), json_get_str(o, "pool", "")) == 0 &&
			    strcmp(json_get_str(d, "path", ""), json_get_str(o, "path", "")) == 0)
				return err_input(err, 400, "disks", "two disks use the file %s",
						 json_get_str(d, "path", ""));
		}
	}
	return 0;
}

static int nics_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (array_check(val, "nics", nic_fields, AGENT_VM_NICS_MAX, err) < 0)
		return -1;
	return nics_network_complete(val, err);
}

static int boot_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t n = json_object_array_length(val);

	for (size_t i = 0; i < n; i++) {
		struct json_object *el = json_object_array_get_idx(val, i);
		const char *s = json_object_get_string(el);

		if (!json_object_is_type(el, json_type_string) ||
		    (strcmp(s, "disk") != 0 && strcmp(s, "network") != 0))
			return err_input(err, 400, field, "boot lists \"disk\" and \"network\"");
		for (size_t j = 0; j < i; j++)
			if (strcmp(s, json_object_get_string(json_object_array_get_idx(val, j))) ==
			    0)
				return err_input(err, 400, field, "boot lists %s twice", s);
	}
	return 0;
}

static int cloud_init_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_fields_check(val, cloud_init_fields, err) < 0)
		return agent_err_prefix(err, "cloud_init: ");
	return 0;
}

static const struct json_field spec_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"type", JK_STRING, true, type_check},
	{"vcpus", JK_INT, true, vcpus_check},
	{"memory", JK_OBJECT, true, memory_check},
	{"accel", JK_STRING, true, accel_check},
	{"nested", JK_BOOL, false, NULL},
	{"disks", JK_ARRAY, true, disks_check},
	{"nics", JK_ARRAY, false, nics_check},
	{"boot", JK_ARRAY, false, boot_check},
	{"cloud_init", JK_OBJECT, false, cloud_init_check},
	/* The controller's own: placement, grouping and the stop grace (each stop's
	 * timeout_s carries it). Checked, kept, not used here. */
	{"stop_timeout_s", JK_INT, false, stop_grace_check},
	{"labels", JK_OBJECT, false, labels_check},
	{"anti_affinity", JK_STRING, false, name_check},
	{"host", JK_STRING, false, name_check},
	{NULL, 0, false, NULL},
};

/* ---- container SPEC ---- */

#define CTR_ARGS_MAX	256
#define CTR_ARG_LEN_MAX 4096
#define CTR_ENV_MAX	256

static int digest_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (!layers_digest_valid(json_object_get_string(val)))
		return err_input(err, 400, field, "field '%s' must be a digest sha256:<64 hex>",
				 field);
	return 0;
}

static int strings_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t n = json_object_array_length(val);

	if (n < 1 || n > CTR_ARGS_MAX)
		return err_input(err, 400, field, "'%s' needs 1 to %d strings", field,
				 CTR_ARGS_MAX);
	for (size_t i = 0; i < n; i++) {
		struct json_object *el = json_object_array_get_idx(val, i);

		if (!json_object_is_type(el, json_type_string) || !json_string_clean(el) ||
		    json_object_get_string_len(el) > CTR_ARG_LEN_MAX)
			return err_input(err, 400, field,
					 "'%s[%zu]' must be a string of at most %d bytes", field, i,
					 CTR_ARG_LEN_MAX);
	}
	return 0;
}

static int env_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_object_object_length(val) > CTR_ENV_MAX)
		return err_input(err, 400, field, "'%s' has more than %d variables", field,
				 CTR_ENV_MAX);
	json_object_object_foreach(val, key, v)
	{
		size_t klen = strlen(key);

		if (klen == 0 || klen > 255 || (key[0] >= '0' && key[0] <= '9') ||
		    strspn(key,
			   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") !=
			    klen)
			return err_input(err, 400, field,
					 "environment variable name '%.64s' is not valid", key);
		if (!json_object_is_type(v, json_type_string) || !json_string_clean(v) ||
		    json_object_get_string_len(v) > CTR_ARG_LEN_MAX)
			return err_input(err, 400, field,
					 "environment variable %s must be a string", key);
	}
	return 0;
}

static int workdir_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);

	if (s[0] != '/' || strlen(s) > 1024 || !json_string_clean(val))
		return err_input(err, 400, field, "'%s' must be an absolute path", field);
	return 0;
}

static int cpus_check(struct json_object *val, const char *field, struct kerr *err)
{
	double d = json_object_get_double(val);

	if (!(d >= 0.01 && d <= 1024))
		return err_input(err, 400, field, "'%s' must be 0.01..1024", field);
	return 0;
}

static int limit_mb_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 4, 16LL * 1024 * 1024, err);
}

static int pids_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 1, 4194304, err);
}

static int restart_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const policies[] = {"no", "on-failure", "always", NULL};

	return one_of(val, field, policies, err);
}

static const struct json_field ctr_nic_fields[] = {
	NETWORK_NIC_FIELDS,
	{NULL, 0, false, NULL},
};

static int ctr_nics_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (array_check(val, field, ctr_nic_fields, AGENT_VM_NICS_MAX, err) < 0)
		return -1;
	for (size_t i = 0; i < json_object_array_length(val); i++)
		if (json_get_str(json_object_array_get_idx(val, i), "network", NULL) == NULL)
			return err_input(err, 400, field,
					 "nics[%zu] has no network: a container NIC is on one", i);
	return nics_network_complete(val, err);
}

static const struct json_field ctr_image_fields[] = {
	{"manifest", JK_STRING, true, digest_check},
	{"name", JK_STRING, false, NULL}, /* the controller's, for people */
	{NULL, 0, false, NULL},
};

static int ctr_image_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_fields_check(val, ctr_image_fields, err) < 0)
		return agent_err_prefix(err, "image: ");
	return 0;
}

static const struct json_field ctr_limits_fields[] = {
	{"cpus", JK_NUMBER, false, cpus_check},
	{"memory_mb", JK_INT, false, limit_mb_check},
	{"pids", JK_INT, false, pids_check},
	{NULL, 0, false, NULL},
};

static int ctr_limits_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_fields_check(val, ctr_limits_fields, err) < 0)
		return agent_err_prefix(err, "limits: ");
	return 0;
}

/* The capabilities a container may ask for beyond the base set (bundle.c). */
static int ctr_caps_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const allowed[] = {"NET_RAW", NULL};

	for (size_t i = 0; i < json_object_array_length(val); i++) {
		struct json_object *e = json_object_array_get_idx(val, i);

		if (!json_object_is_type(e, json_type_string))
			return err_input(err, 400, field, "field '%s' must hold strings", field);
		if (one_of(e, field, allowed, err) < 0)
			return -1;
	}
	return 0;
}

static const struct json_field ctr_spec_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"type", JK_STRING, true, type_check},
	{"image", JK_OBJECT, true, ctr_image_check},
	{"command", JK_ARRAY, false, strings_check},
	{"env", JK_OBJECT, false, env_check},
	{"workdir", JK_STRING, false, workdir_check},
	{"limits", JK_OBJECT, false, ctr_limits_check},
	{"restart", JK_STRING, false, restart_check},
	{"capabilities", JK_ARRAY, false, ctr_caps_check},
	{"nics", JK_ARRAY, false, ctr_nics_check},
	/* The controller's own: placement, grouping and the stop grace (each stop's
	 * timeout_s carries it). Checked, kept, not used here. */
	{"stop_timeout_s", JK_INT, false, stop_grace_check},
	{"labels", JK_OBJECT, false, labels_check},
	{"anti_affinity", JK_STRING, false, name_check},
	{"host", JK_STRING, false, name_check},
	{NULL, 0, false, NULL},
};

/* A SPEC's type: "container", or "vm" (also when absent). */
static bool spec_is_container(struct json_object *spec)
{
	return strcmp(json_get_str(spec, "type", "vm"), "container") == 0;
}

/* Drop members whose value is null, in obj and the objects and arrays inside it. */
static void nulls_strip(struct json_object *obj)
{
	if (json_object_is_type(obj, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(obj); i++)
			nulls_strip(json_object_array_get_idx(obj, i));
		return;
	}
	if (!json_object_is_type(obj, json_type_object))
		return;
	for (bool again = true; again;) {
		again = false;
		json_object_object_foreach(obj, key, val)
		{
			if (val == NULL) {
				json_object_object_del(obj, key);
				again = true; /* the iteration is void after a delete */
				break;
			}
			nulls_strip(val);
		}
	}
}

/*
 * A SPEC in the form the agent keeps: a deep copy with every null member dropped
 * (absent and null mean the same). Returns a new object.
 */
struct json_object *instance_spec_normalise(struct json_object *spec)
{
	struct json_object *copy = NULL;

	if (json_object_deep_copy(spec, &copy, NULL) < 0)
		fatalx("out of memory");
	nulls_strip(copy);
	return copy;
}

/*
 * Check a SPEC (as sent, nulls allowed where absent is) against the tables of its
 * type (VM or container): every field known and of its kind, names and paths of a
 * safe shape, counts within limits. Returns 0 or -1 with err naming the field.
 */
int instance_spec_check(struct json_object *spec, struct kerr *err)
{
	struct json_object *norm = instance_spec_normalise(spec);
	int ret = json_fields_check(norm, spec_is_container(norm) ? ctr_spec_fields : spec_fields,
				    err);

	json_object_put(norm);
	return ret < 0 ? agent_err_prefix(err, "instance: ") : 0;
}

/* The driver of each instance type: the verbs it implements (vmaction.c, ociaction.c). */
static const struct driver *const drivers[INST_TYPES] = {
	[INST_VM] = &vm_driver,
	[INST_CONTAINER] = &oci_driver,
};

static int action_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *name = json_object_get_string(val);

	if (verb_find(name) < 0)
		return err_input(err, 400, field, "unknown action '%.32s'", name);
	return 0;
}

static const struct json_field body_fields[] = {
	{"action", JK_STRING, true, action_check},
	{"instance", JK_OBJECT, true, NULL},
	{"args", JK_OBJECT, false, NULL},
	{NULL, 0, false, NULL},
};

static int body_check(struct json_object *body, struct kerr *err)
{
	struct json_object *spec, *args = NULL, *name;
	enum inst_type type;
	int verb;

	if (json_fields_check(body, body_fields, err) < 0)
		return -1;
	json_object_object_get_ex(body, "instance", &spec);
	type = inst_type_parse(json_get_str(spec, "type", "vm"));
	verb = verb_find(json_get_str(body, "action", ""));
	if (dispatch_verb_supported(drivers[type], verb, err) < 0)
		return -1;
	if ((verb_get(verb)->flags & VF_FULL_SPEC) && instance_spec_check(spec, err) < 0)
		return -1;
	if (!json_object_object_get_ex(spec, "name", &name) ||
	    !json_object_is_type(name, json_type_string))
		return err_input(err, 400, "name", "instance: field 'name' is required");
	if (name_check(name, "name", err) < 0)
		return agent_err_prefix(err, "instance: ");
	if (json_object_object_get_ex(body, "args", &args) &&
	    json_fields_check(args, verb_get(verb)->args, err) < 0)
		return agent_err_prefix(err, "args: ");
	return 0;
}

/*
 * Check an instance command's body before it is acked: the action is known, its args
 * match the action's table, the SPEC passes instance_spec_check() (create, update) or
 * has a valid name (the others). Null members count as absent. Returns 0 or -1 with
 * err.
 */
int instance_cmd_check(struct json_object *body, struct kerr *err)
{
	struct json_object *norm = instance_spec_normalise(body);
	int ret = body_check(norm, err);

	json_object_put(norm);
	return ret;
}

/* ---- operation plumbing ------------------------------------------------------------- */

static void op_free(struct inst_op *op)
{
	json_object_put(op->spec);
	json_object_put(op->args);
	json_object_put(op->result);
	json_object_put(op->report);
	free(op);
}

/* The agent is stopping: drop the op at its next step, touching nothing else. */
bool instance_op_gone(struct inst_op *op)
{
	if (!op->agent->stopping)
		return false;
	op_free(op);
	return true;
}

/* Tell the controller how far op got: progress 0-100 and a phase it shows. */
void instance_op_progress(struct inst_op *op, int progress, const char *phase)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "progress", json_object_new_int(progress));
	json_object_object_add(body, "phase", json_object_new_string(phase));
	link_event_send(op->agent, LINK_OP_PROGRESS, op->op, body);
}

/* Remember the op-done for resends, send it, and release the op. */
static void op_done(struct inst_op *op, struct json_object *body)
{
	if (op->owner && op->vm && op->vm->op == op)
		op->vm->op = NULL;
	if (op->owner && op->ctr && op->ctr->op == op)
		op->ctr->op = NULL;
	opcache_finish(&op->agent->ops, op->op, body);
	link_event_send(op->agent, LINK_OP_DONE, op->op, body);
	op_free(op);
}

static void succeed_with(struct inst_op *op, struct json_object *report)
{
	struct json_object *body = json_object_new_object(), *result = json_object_new_object();

	log_trace("op %s: succeeded", op->op);
	json_object_object_add(result, "instance", report);
	if (op->result) {
		json_object_object_foreach(op->result, key, val)
			json_object_object_add(result, key, json_object_get(val));
	}
	json_object_object_add(body, "status", json_object_new_string("succeeded"));
	json_object_object_add(body, "result", result);
	log_info("op %s: %s %s succeeded", op->op, verb_get(op->verb)->name,
		 json_get_str(op->spec, "name", ""));
	op_done(op, body);
}

static void measured_cb(struct vm *vm, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	succeed_with(op, vm ? vm_report(vm) : json_object_get(op->report));
}

static void ctr_measured_cb(struct ctr *ctr, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (ctr)
		oci_state_heard(ctr); /* the op-done carries this report */
	succeed_with(op, ctr ? oci_report(ctr) : json_object_get(op->report));
}

/* The action worked: report the instance with fresh disk (or writable layer) sizes. */
void instance_op_succeed(struct inst_op *op)
{
	if (op->ctr && !op->report) {
		oci_measure(op->ctr, ctr_measured_cb, op);
		return;
	}
	if (op->report || op->vm == NULL) {
		succeed_with(op, json_object_get(op->report));
		return;
	}
	vm_measure(op->vm, measured_cb, op);
}

static void fail_send(struct inst_op *op, const char *why)
{
	struct json_object *body = json_object_new_object();
	struct vm *vm = op->vm;

	log_warnx("op %s: %s %s failed: %s", op->op, verb_get(op->verb)->name,
		  json_get_str(op->spec, "name", ""), why);
	json_object_object_add(body, "status", json_object_new_string("failed"));
	json_object_object_add(body, "error", json_object_new_string(why));
	if (op->owner && vm && vm->op == op)
		vm->op = NULL;
	if (op->owner && op->ctr && op->ctr->op == op)
		op->ctr->op = NULL;
	/* The failure may have left the VM in another state; the controller hears it. */
	if (vm && vm->created && !vm->removing)
		vm_state_push(vm);
	if (op->ctr && op->ctr->created && !op->ctr->removing) {
		op->ctr->pushed[0] = '\0'; /* the refresh pushes its state, once */
		oci_refresh(op->ctr);
	}
	op->owner = false;
	op_done(op, body);
}

struct rollback {
	struct inst_op *op;
	char why[256];
};

static void rolled_back_cb(struct agent *a, const char *error, void *data)
{
	struct rollback *rb = data;
	struct inst_op *op = rb->op;

	if (error)
		log_warnx("op %s: cleaning up after the failure: %s", op->op, error);
	if (instance_op_gone(op)) {
		free(rb);
		return;
	}
	if (op->registered && op->vm) {
		op->vm->op = NULL;
		vm_remove(op->vm);
		op->vm = NULL;
	}
	if (op->registered && op->ctr) {
		op->ctr->op = NULL;
		oci_remove(op->ctr);
		op->ctr = NULL;
	}
	fail_send(op, rb->why);
	free(rb);
}

/*
 * The action failed: why is one sentence for the user. Disks this op made are
 * removed first, with the directories it made for the disks it planned (a file it
 * did not make may be another instance's, and stays), and the run directory when
 * the op was creating the instance.
 */
void instance_op_fail(struct inst_op *op, const char *fmt, ...)
{
	struct vm_disk planned[AGENT_VM_DISKS_MAX];
	bool keep[AGENT_VM_DISKS_MAX];
	struct rollback *rb = xcalloc(1, sizeof(*rb));
	size_t n = 0;
	va_list ap;

	rb->op = op;
	va_start(ap, fmt);
	vsnprintf(rb->why, sizeof(rb->why), fmt, ap);
	va_end(ap);
	if (op->ctr) {
		/* A container this op was creating goes, with what the op made of it. */
		if (op->registered) {
			oci_dir_remove(op->agent, op->ctr->dir, rolled_back_cb, rb);
			return;
		}
		fail_send(op, rb->why);
		free(rb);
		return;
	}
	for (size_t i = 0; i < op->ndisks; i++) {
		if (!op->make[i])
			continue;
		keep[n] = !op->made[i];
		planned[n++] = op->disks[i];
	}
	if (n == 0 && !op->registered) {
		fail_send(op, rb->why);
		free(rb);
		return;
	}
	disk_remove(op->agent, op->registered && op->vm ? op->vm->dir : NULL, planned, n, keep,
		    rolled_back_cb, rb);
}

/*
 * Go on with the loop instance_disks_each() started: the next disk it wants, or its
 * final step. A disk step's callback calls this (instance_disk_done_cb() does).
 */
void instance_each_next(struct inst_op *op)
{
	while (op->idx < op->ndisks && op->each_want && !op->each_want(op, op->idx))
		op->idx++;
	if (op->idx >= op->ndisks) {
		op->each_then(op);
		return;
	}
	op->idx++;
	op->each_fn(op, op->idx - 1);
}

/*
 * Run fn(op, i) on each of op's disks that want(op, i) picks (want NULL: all), one
 * after the other, then then(op). fn starts async work whose callback ends in
 * instance_each_next() (or fails the op); op->idx - 1 is the disk at work.
 */
void instance_disks_each(struct inst_op *op, bool (*want)(struct inst_op *, size_t), op_disk_fn fn,
			 op_step_fn then)
{
	op->idx = 0;
	op->each_want = want;
	op->each_fn = fn;
	op->each_then = then;
	instance_each_next(op);
}

/* A disk step finished: on to the next disk, or fail naming the disk. */
void instance_disk_done_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "disk %s: %s", op->disks[op->idx - 1].name, error);
		return;
	}
	instance_each_next(op);
}

/*
 * Whether op may start on an instance busy with busy (another command): only when the
 * verb table says op's verb preempts busy's (a force-stop cuts a graceful stop short;
 * both then finish when the instance is gone). Fails op and returns false otherwise.
 */
static bool busy_check(struct inst_op *op, const struct inst_op *busy, const char *name)
{
	struct kerr err;

	if (busy == NULL || dispatch_busy_check(op->verb, busy->verb, busy->op, name, &err) == 0)
		return true;
	instance_op_fail(op, "%s", err.msg);
	return false;
}

/* Whether the instance's state is one op's verb starts from; fails op if not. */
static bool state_check(struct inst_op *op, enum inst_state state, const char *name)
{
	struct kerr err;

	if (dispatch_state_check(op->verb, true, state, name, &err) == 0)
		return true;
	instance_op_fail(op, "%s", err.msg);
	return false;
}

/* A container command: op->ctr found (or not, for create and delete), then run. */
static void ctr_cmd_start(struct inst_op *op, const char *name)
{
	struct inst_op *busy;

	op->ctr = oci_find(op->agent, name);
	if ((verb_get(op->verb)->flags & VF_NEEDS_INSTANCE) &&
	    (op->ctr == NULL || !op->ctr->created)) {
		op->ctr = NULL;
		instance_op_fail(op, "there is no instance %s on this host", name);
		return;
	}
	busy = op->ctr ? op->ctr->op : NULL;
	if (!busy_check(op, busy, name)) {
		op->ctr = NULL;
		return;
	}
	if (op->ctr && busy == NULL) {
		/* The shim's files say what the container is doing now. */
		oci_refresh(op->ctr);
		if (!state_check(op, op->ctr->ctr_state, name)) {
			op->ctr = NULL;
			return;
		}
	}
	if (op->ctr && busy == NULL) {
		op->ctr->op = op;
		op->owner = true;
	}
	op->restart = op->verb == VERB_RESTART;
	op->driver->verbs[op->verb](op);
}

/*
 * Take an instance command (acked, in the op cache, body checked by
 * instance_cmd_check()) and run it; op-progress and op-done follow on the event
 * socket.
 */
void instance_cmd_start(struct agent *a, const char *opid, struct json_object *body)
{
	struct inst_op *op = xcalloc(1, sizeof(*op));
	struct json_object *norm = instance_spec_normalise(body), *spec, *args;
	struct inst_op *busy;
	struct kerr err;
	const char *name;
	enum inst_type type;

	op->agent = a;
	snprintf(op->op, sizeof(op->op), "%s", opid);
	json_object_object_get_ex(norm, "instance", &spec);
	op->spec = json_object_get(spec);
	type = inst_type_parse(json_get_str(op->spec, "type", "vm"));
	op->driver = drivers[type];
	/* instance_cmd_check() made sure the verb is known and the driver has it. */
	op->verb = (enum verb)verb_find(json_get_str(norm, "action", ""));
	if (json_object_object_get_ex(norm, "args", &args))
		op->args = json_object_get(args);
	else
		op->args = json_object_new_object();
	json_object_put(norm);
	name = json_get_str(op->spec, "name", "");
	log_trace("op %s: %s %s started", op->op, verb_get(op->verb)->name, name);
	if (type == INST_CONTAINER) {
		ctr_cmd_start(op, name);
		return;
	}
	op->vm = vm_find(a, name);
	if ((verb_get(op->verb)->flags & VF_NEEDS_INSTANCE) &&
	    (op->vm == NULL || !op->vm->created)) {
		op->vm = NULL;
		instance_op_fail(op, "there is no instance %s on this host", name);
		return;
	}
	if (op->vm == NULL && op->verb == VERB_CREATE && oci_find(a, name)) {
		instance_op_fail(op, "instance %s exists already on this host (a container)", name);
		return;
	}
	busy = op->vm ? op->vm->op : NULL;
	if (!busy_check(op, busy, name)) {
		op->vm = NULL;
		return;
	}
	if (op->vm && busy == NULL && !state_check(op, op->vm->vm_state, name)) {
		op->vm = NULL;
		return;
	}
	if (op->vm && busy == NULL) {
		op->vm->op = op;
		op->owner = true;
	}
	if (op->vm && op->verb != VERB_UPDATE) {
		memcpy(op->disks, op->vm->disks, op->vm->ndisks * sizeof(*op->disks));
		op->ndisks = op->vm->ndisks;
	} else if (vm_disks_resolve(a, op->spec, op->disks, &op->ndisks, &err) < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	op->driver->verbs[op->verb](op);
}

/* ---- queries ---------------------------------------------------------------------------- */

static const char *const query_whats[] = {"console", "logs", "exec", "net", "spec", NULL};

static int what_check(struct json_object *val, const char *field, struct kerr *err)
{
	return one_of(val, field, query_whats, err);
}

static int exec_timeout_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 1, AGENT_EXEC_TIMEOUT_MAX_S, err);
}

static int nonneg_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 0, INT64_MAX, err);
}

static const struct json_field console_fields[] = {
	{"what", JK_STRING, true, what_check},
	{"name", JK_STRING, true, name_check},
	{"bytes", JK_INT, false, NULL},
	{NULL, 0, false, NULL},
};

static const struct json_field logs_fields[] = {
	{"what", JK_STRING, true, what_check}, {"name", JK_STRING, true, name_check},
	{"tail", JK_INT, false, nonneg_check}, {"offset", JK_INT, false, nonneg_check},
	{"max", JK_INT, false, nonneg_check},  {NULL, 0, false, NULL},
};

static const struct json_field exec_fields[] = {
	{"what", JK_STRING, true, what_check},
	{"name", JK_STRING, true, name_check},
	{"command", JK_ARRAY, true, strings_check},
	{"timeout_s", JK_INT, false, exec_timeout_check},
	{"max_output", JK_INT, false, nonneg_check},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "console", "name": N, "bytes": B} -> {"data": base64 of the last B bytes
 * of a VM's serial console, "size": the log's total size}. The REP socket must answer
 * before it takes the next request, so the file is read here, on the loop: at most
 * AGENT_CONSOLE_MAX bytes of a file in the local pool.
 */
static int console_query(struct agent *a, struct json_object *body, struct json_object **answer,
			 struct kerr *err)
{
	_cleanup_free_ char *path = NULL, *data = NULL;
	int64_t bytes = json_get_int(body, "bytes", CONSOLE_DEFAULT);
	struct logfile_span span = {0};
	struct vm *vm;

	if (json_fields_check(body, console_fields, err) < 0)
		return -1;
	vm = vm_find(a, json_get_str(body, "name", ""));
	if (vm == NULL || !vm->created)
		return err_set(err, 0, "there is no VM %s on this host",
			       json_get_str(body, "name", ""));
	if (bytes < 1 || bytes > AGENT_CONSOLE_MAX)
		bytes = bytes < 1 ? 1 : AGENT_CONSOLE_MAX;
	/* The last bytes, across a trim (vm_cron()); a VM never started has none. */
	path = xasprintf("%s/console.log", vm->dir);
	logfile_read(path, -1, 0, true, bytes, &span);
	data = xmalloc(4 * (span.len + 2) / 3 + 1);
	EVP_EncodeBlock((unsigned char *)data, span.data, (int)span.len);
	free(span.data);
	*answer = json_object_new_object();
	json_object_object_add(*answer, "data", json_object_new_string(data));
	json_object_object_add(*answer, "size", json_object_new_int64(span.end));
	return 0;
}

static const struct json_field spec_query_fields[] = {
	{"what", JK_STRING, true, what_check},
	{"name", JK_STRING, true, name_check},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "spec", "name": N} -> {"spec": the instance's normalised SPEC as in its
 * spec.json}: what the controller records when it adopts an instance it did not
 * place here (a VM or a container).
 */
static int spec_query(struct agent *a, struct json_object *body, struct json_object **answer,
		      struct kerr *err)
{
	const char *name = json_get_str(body, "name", "");
	struct json_object *spec = NULL;
	struct ctr *ctr;
	struct vm *vm;

	if (json_fields_check(body, spec_query_fields, err) < 0)
		return -1;
	vm = vm_find(a, name);
	ctr = oci_find(a, name);
	if (vm && vm->created)
		spec = vm->spec;
	else if (ctr && ctr->created)
		spec = ctr->spec;
	else
		return err_set(err, 0, "there is no instance %s on this host", name);
	*answer = json_object_new_object();
	json_object_object_add(*answer, "spec", json_object_get(spec));
	return 0;
}

/*
 * {"what": "logs", "name": N, "tail": lines|null, "offset": bytes|null, "max": bytes}
 * -> {"data": base64, "offset": where to go on, "size": the log's size}: a
 * container's stdout and stderr (oci_logs_read()).
 */
static int logs_query(struct agent *a, struct json_object *body, struct json_object **answer,
		      struct kerr *err)
{
	int64_t max = json_get_int(body, "max", AGENT_LOGS_DEFAULT);
	struct ctr *ctr;

	if (json_fields_check(body, logs_fields, err) < 0)
		return -1;
	ctr = oci_find(a, json_get_str(body, "name", ""));
	if (ctr == NULL || !ctr->created)
		return err_set(err, 0, "there is no container %s on this host",
			       json_get_str(body, "name", ""));
	if (max < 1 || max > AGENT_CONSOLE_MAX)
		max = max < 1 ? 1 : AGENT_CONSOLE_MAX;
	return oci_logs_read(ctr, json_get_int(body, "tail", 0), json_get_int(body, "offset", -1),
			     max, answer, err);
}

/*
 * Answer a query (body; op is its id) in *answer (a new object): returns 0. An exec
 * answers when its command ends: returns 1, and link_query_reply() sends the answer
 * later. Returns -1 with err for a query that cannot be answered (the link nacks it).
 * Null members count as absent.
 */
int instance_query(struct agent *a, const char *op, struct json_object *body,
		   struct json_object **answer, struct kerr *err)
{
	struct json_object *norm;
	const char *what = json_get_str(body, "what", "");
	int ret;

	/* The networks this host must realise: a desired state, taken whole (its nulls
	 * mean something), answered at once; the apply runs off the loop (net.c). */
	if (strcmp(what, "net") == 0) {
		struct json_object *doc = json_object_object_get(body, "doc");

		if (json_object_object_length(body) != 2 ||
		    !json_object_is_type(doc, json_type_object))
			return err_input(err, 400, "doc",
					 "a net query is {\"what\": \"net\", \"doc\": {...}}");
		if (net_desired_set(a, doc, err) < 0)
			return -1;
		*answer = json_object_new_object();
		json_object_object_add(*answer, "hash",
				       json_object_get(json_object_object_get(doc, "hash")));
		return 0;
	}
	norm = instance_spec_normalise(body);
	what = json_get_str(norm, "what", "");
	if (strcmp(what, "logs") == 0)
		ret = logs_query(a, norm, answer, err);
	else if (strcmp(what, "spec") == 0)
		ret = spec_query(a, norm, answer, err);
	else if (strcmp(what, "exec") == 0)
		ret = json_fields_check(norm, exec_fields, err) < 0
			      ? -1
			      : ociaction_exec(a, op, norm, err);
	else
		ret = console_query(a, norm, answer, err);
	json_object_put(norm);
	return ret;
}
