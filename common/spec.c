/*
 * spec.c - the instance SPEC's schema and its one validator (spec.h), for the
 * controller, which checks every SPEC it builds before it stores and sends it, and
 * the agent, which checks every SPEC it receives or finds on disk.
 */
#include "json.h"
#include "spec.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "util.h"
#include "valid.h"

/*
 * A pool-relative path: 1-1023 characters of A-Z, a-z, 0-9, '.', '_', '-' and '/',
 * no empty, '.' or '..' component, none starting with '-', not absolute. Returns 0
 * or -1 with err naming field.
 */
int spec_path_check(const char *rel, const char *field, struct kerr *err)
{
	size_t len = strlen(rel), start = 0;

	if (len == 0 || len >= 1024)
		return err_input(err, 400, field, "path '%.64s' must be 1-1023 characters", rel);
	if (rel[0] == '/')
		return err_input(err, 400, field,
				 "path '%.64s' must be relative to its pool, not absolute", rel);
	for (size_t i = 0; i <= len; i++) {
		char c = rel[i];

		if (c == '/' || c == '\0') {
			size_t clen = i - start;
			const char *comp = rel + start;

			if (clen == 0 || (clen == 1 && comp[0] == '.') ||
			    (clen == 2 && comp[0] == '.' && comp[1] == '.'))
				return err_input(err, 400, field,
						 "path '%.64s' has an empty, '.' or '..' component",
						 rel);
			if (comp[0] == '-')
				return err_input(err, 400, field,
						 "path '%.64s' has a component starting with '-'",
						 rel);
			start = i + 1;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return err_input(err, 400, field,
					 "path '%.64s' may hold only A-Z, a-z, 0-9, '.', '_', '-' "
					 "and '/'",
					 rel);
	}
	return 0;
}

/* "sha256:" and 64 lower-case hex digits. */
bool spec_digest_valid(const char *s)
{
	return strncmp(s, "sha256:", 7) == 0 && strlen(s) == 7 + 64 &&
	       strspn(s + 7, "0123456789abcdef") == 64;
}

/* val (a string) is one of allowed (NULL-terminated); else -1 with err naming field. */
int spec_one_of(struct json_object *val, const char *field, const char *const *allowed,
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

	return spec_one_of(val, field, types, err);
}

static int accel_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const accels[] = {"tcg", "kvm", NULL};

	return spec_one_of(val, field, accels, err);
}

static int bus_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const buses[] = {"virtio", "scsi", "sata", "ide", NULL};

	return spec_one_of(val, field, buses, err);
}

static int pool_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const pools[] = {"shared", "local", NULL};

	return spec_one_of(val, field, pools, err);
}

static int clone_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const clones[] = {"linked", "full", NULL};

	return spec_one_of(val, field, clones, err);
}

static int model_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const models[] = {"virtio", "e1000", NULL};

	return spec_one_of(val, field, models, err);
}

/* val (an integer) is within lo..hi; else -1 with err naming field. */
int spec_range_check(struct json_object *val, const char *field, int64_t lo, int64_t hi,
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
	return spec_range_check(val, field, 1, SPEC_VCPUS_MAX, err);
}

static int mb_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, SPEC_MEMORY_MB_MIN, SPEC_MEMORY_MB_MAX, err);
}

static int size_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, 1, SPEC_DISK_MB_MAX, err);
}

static int path_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_path_check(json_object_get_string(val), field, err);
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
	for (size_t i = 0; i < json_array_len(val); i++) {
		struct json_object *e = json_object_array_get_idx(val, i);

		if (!json_object_is_type(e, json_type_string) || ipv4_check(e, field, err) < 0)
			return err_input(err, 400, field,
					 "field '%s' must be a list of IPv4 addresses", field);
	}
	return 0;
}

static int prefix_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, 8, 30, err);
}

static int mtu_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, 576, 9000, err);
}

static int vlan_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, 0, 4094, err);
}

static int netmode_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const modes[] = {"nat", "host-only", "bridge", NULL};

	return spec_one_of(val, field, modes, err);
}

static int user_data_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_object_get_string_len(val) > SPEC_USER_DATA_MAX)
		return err_input(err, 400, field, "field '%s' is larger than %d bytes", field,
				 SPEC_USER_DATA_MAX);
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
		return err_prefix(err, "memory: ");
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
		return err_prefix(err, "image: ");
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

	for (size_t i = 0; i < json_array_len(nics); i++) {
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
	size_t n = json_array_len(arr);
	char prefix[64];

	if (n > max)
		return err_input(err, 400, what, "more than %zu %s", max, what);
	for (size_t i = 0; i < n; i++) {
		struct json_object *el = json_object_array_get_idx(arr, i);

		snprintf(prefix, sizeof(prefix), "%s[%zu]: ", what, i);
		if (!json_object_is_type(el, json_type_object)) {
			err_input(err, 400, what, "each of %s must be an object", what);
			return err_prefix(err, prefix);
		}
		if (json_fields_check(el, fields, err) < 0)
			return err_prefix(err, prefix);
	}
	return 0;
}

static int disks_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t n = json_array_len(val);

	if (array_check(val, "disks", disk_fields, SPEC_DISKS_MAX, err) < 0)
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
	if (array_check(val, "nics", nic_fields, SPEC_NICS_MAX, err) < 0)
		return -1;
	return nics_network_complete(val, err);
}

static int boot_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t n = json_array_len(val);

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
		return err_prefix(err, "cloud_init: ");
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
	/* HA (agentd/lease.c): whether the fencer kills it here; after a failover the
	 * disks on the shared pool are the fenced host's, run as they are (vmaction.c). */
	{"ha", JK_OBJECT, false, NULL},
	{"adopt_disks", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};

/* ---- container SPEC ---- */

static int digest_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (!spec_digest_valid(json_object_get_string(val)))
		return err_input(err, 400, field, "field '%s' must be a digest sha256:<64 hex>",
				 field);
	return 0;
}

/* An argv: 1 to SPEC_ARGS_MAX clean strings of at most SPEC_ARG_LEN_MAX bytes. */
int spec_strings_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t n = json_array_len(val);

	if (n < 1 || n > SPEC_ARGS_MAX)
		return err_input(err, 400, field, "'%s' needs 1 to %d strings", field,
				 SPEC_ARGS_MAX);
	for (size_t i = 0; i < n; i++) {
		struct json_object *el = json_object_array_get_idx(val, i);

		if (!json_object_is_type(el, json_type_string) || !json_string_clean(el) ||
		    json_object_get_string_len(el) > SPEC_ARG_LEN_MAX)
			return err_input(err, 400, field,
					 "'%s[%zu]' must be a string of at most %d bytes", field, i,
					 SPEC_ARG_LEN_MAX);
	}
	return 0;
}

static int env_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_object_object_length(val) > SPEC_ENV_MAX)
		return err_input(err, 400, field, "'%s' has more than %d variables", field,
				 SPEC_ENV_MAX);
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
		    json_object_get_string_len(v) > SPEC_ARG_LEN_MAX)
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

	if (!(d >= 0.01 && d <= SPEC_CPUS_MAX))
		return err_input(err, 400, field, "'%s' must be 0.01..%d", field, SPEC_CPUS_MAX);
	return 0;
}

static int limit_mb_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, SPEC_LIMIT_MB_MIN, SPEC_LIMIT_MB_MAX, err);
}

static int pids_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, 1, SPEC_PIDS_MAX, err);
}

static int restart_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const policies[] = {"no", "on-failure", "always", NULL};

	return spec_one_of(val, field, policies, err);
}

static const struct json_field ctr_nic_fields[] = {
	NETWORK_NIC_FIELDS,
	{NULL, 0, false, NULL},
};

static int ctr_nics_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (array_check(val, field, ctr_nic_fields, SPEC_NICS_MAX, err) < 0)
		return -1;
	for (size_t i = 0; i < json_array_len(val); i++)
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
		return err_prefix(err, "image: ");
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
		return err_prefix(err, "limits: ");
	return 0;
}

/* The capabilities a container may ask for beyond the base set (bundle.c). */
static int ctr_caps_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const allowed[] = {"NET_RAW", NULL};

	for (size_t i = 0; i < json_array_len(val); i++) {
		struct json_object *e = json_object_array_get_idx(val, i);

		if (!json_object_is_type(e, json_type_string))
			return err_input(err, 400, field, "field '%s' must hold strings", field);
		if (spec_one_of(e, field, allowed, err) < 0)
			return -1;
	}
	return 0;
}

static const struct json_field ctr_spec_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"type", JK_STRING, true, type_check},
	{"image", JK_OBJECT, true, ctr_image_check},
	{"command", JK_ARRAY, false, spec_strings_check},
	{"env", JK_OBJECT, false, env_check},
	{"workdir", JK_STRING, false, workdir_check},
	{"limits", JK_OBJECT, false, ctr_limits_check},
	{"restart", JK_STRING, false, restart_check},
	{"capabilities", JK_ARRAY, false, ctr_caps_check},
	{"userns", JK_BOOL, false, NULL}, /* isolation: uid.c, false runs root as root */
	{"nics", JK_ARRAY, false, ctr_nics_check},
	/* The controller's own: placement, grouping and the stop grace (each stop's
	 * timeout_s carries it). Checked, kept, not used here. */
	{"stop_timeout_s", JK_INT, false, stop_grace_check},
	{"labels", JK_OBJECT, false, labels_check},
	{"anti_affinity", JK_STRING, false, name_check},
	{"host", JK_STRING, false, name_check},
	/* HA (agentd/lease.c): whether the fencer kills it here; after a failover the
	 * disks on the shared pool are the fenced host's, run as they are (vmaction.c). */
	{"ha", JK_OBJECT, false, NULL},
	{"adopt_disks", JK_BOOL, false, NULL},
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
		for (size_t i = 0; i < json_array_len(obj); i++)
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
struct json_object *spec_normalise(struct json_object *spec)
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
int spec_check(struct json_object *spec, struct kerr *err)
{
	struct json_object *norm = spec_normalise(spec);
	int ret = json_fields_check(norm, spec_is_container(norm) ? ctr_spec_fields : spec_fields,
				    err);

	json_object_put(norm);
	return ret < 0 ? err_prefix(err, "instance: ") : 0;
}
