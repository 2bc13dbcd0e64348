/*
 * secgroups.c - security groups: named, ordered lists of rules that the NICs naming a
 * group get (stateful, per port, on the host of the instance), and the membership that
 * other rules and the group itself allow traffic from.
 *
 * A rule is {direction: ingress|egress, action: allow|deny, protocol:
 * tcp|udp|icmp|any, ports: "80" | "1000-2000" (tcp, udp), cidr | group}. A NIC names
 * up to 8 groups ("security_groups": ["web"]); one that names none is in the group
 * "default", which always exists (the schema makes it, with no rules) and cannot be
 * deleted. What a port gets, for a connection's first packet (replies of an
 * established connection always pass):
 *   egress: its groups' egress rules in order, the first match decides; no match
 *           allows (instances may connect out).
 *   ingress: its groups' ingress rules in order, the first match decides; then a
 *           source that is a member of one of its groups is allowed; anything else is
 *           dropped.
 * The hosts realise them (agentd/netnft.c) from their network documents (netsync.c),
 * which carry every group a local port names or one of those groups' rules refers to,
 * with its members' addresses. The REST side is api_security_groups.c.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controllerd.h"
#include "util.h"
#include "valid.h"

static const char *const directions[] = {"ingress", "egress", NULL};
static const char *const actions[] = {"allow", "deny", NULL};
static const char *const protocols[] = {"tcp", "udp", "icmp", "any", NULL};

static bool word_in(const char *s, const char *const *words)
{
	for (; *words; words++)
		if (strcmp(s, *words) == 0)
			return true;
	return false;
}

/* "80" or "1000-2000": ports 1..65535, ascending, no leading zeros. */
static bool ports_valid(const char *s)
{
	long a, b;
	char *end;

	if (*s < '1' || *s > '9')
		return false;
	a = strtol(s, &end, 10);
	b = a;
	if (*end == '-') {
		if (end[1] < '1' || end[1] > '9')
			return false;
		b = strtol(end + 1, &end, 10);
	}
	return *end == '\0' && a >= 1 && b <= 65535 && a <= b && end - s <= 11;
}

/* "A.B.C.D/P", P 0..32 without leading zeros, no host bits set. */
static bool cidr_valid(const char *s)
{
	char addr[INET_ADDRSTRLEN];
	const char *slash = strchr(s, '/');
	struct in_addr in;
	uint32_t a;
	char *end;
	long p;

	if (slash == NULL || (size_t)(slash - s) >= sizeof(addr) || slash[1] < '0' ||
	    slash[1] > '9' || (slash[1] == '0' && slash[2] != '\0'))
		return false;
	snprintf(addr, sizeof(addr), "%.*s", (int)(slash - s), s);
	p = strtol(slash + 1, &end, 10);
	if (*end != '\0' || p > 32 || inet_pton(AF_INET, addr, &in) != 1)
		return false;
	a = ntohl(in.s_addr);
	return p == 0 ? a == 0 : (a & ~(0xffffffffu << (32 - p))) == 0;
}

bool secgroup_exists(const char *name)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT 1 FROM security_groups WHERE name = ?");
	bool found;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	found = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	return found;
}

static const struct json_field rule_fields[] = {
	{"direction", JK_STRING, true, NULL},
	{"action", JK_STRING, false, NULL},
	{"protocol", JK_STRING, true, NULL},
	{"ports", JK_STRING, false, NULL},
	{"cidr", JK_STRING, false, NULL},
	{"group", JK_STRING, false, NULL},
	{NULL, 0, false, NULL},
};

/*
 * Check a group's rules (an array, from a request) for group self; returns a new array
 * of them normalised (action filled in, CIDR canonical), or NULL with err: 400 for a
 * malformed rule, 422 for a group that does not exist.
 */
struct json_object *secgroup_rules_build(const char *self, struct json_object *rules,
					 struct kerr *err)
{
	struct json_object *out;
	size_t n = json_array_len(rules);

	if (n > SECGROUP_RULES_MAX) {
		err_input(err, 400, "rules", "a group has at most %d rules", SECGROUP_RULES_MAX);
		return NULL;
	}
	out = json_object_new_array();
	for (size_t i = 0; i < n; i++) {
		struct json_object *r = json_object_array_get_idx(rules, i), *o;
		const char *proto, *ports, *cidr, *group;
		char where[32];

		snprintf(where, sizeof(where), "rules[%zu]", i);
		if (!json_object_is_type(r, json_type_object)) {
			err_input(err, 400, where, "%s must be an object", where);
			goto fail;
		}
		if (json_fields_check_in(r, rule_fields, where, err) < 0)
			goto fail;
		if (!word_in(json_get_str(r, "direction", ""), directions)) {
			err_input(err, 400, where, "%s.direction must be ingress or egress", where);
			goto fail;
		}
		if (!word_in(json_get_str(r, "action", "allow"), actions)) {
			err_input(err, 400, where, "%s.action must be allow or deny", where);
			goto fail;
		}
		proto = json_get_str(r, "protocol", "");
		if (!word_in(proto, protocols)) {
			err_input(err, 400, where, "%s.protocol must be tcp, udp, icmp or any",
				  where);
			goto fail;
		}
		ports = json_get_str(r, "ports", NULL);
		if (ports && strcmp(proto, "tcp") != 0 && strcmp(proto, "udp") != 0) {
			err_input(err, 400, where, "%s.ports needs protocol tcp or udp", where);
			goto fail;
		}
		if (ports && !ports_valid(ports)) {
			err_input(err, 400, where,
				  "%s.ports must be a port or a range like \"80\" or \"1000-2000\"",
				  where);
			goto fail;
		}
		cidr = json_get_str(r, "cidr", NULL);
		group = json_get_str(r, "group", NULL);
		if ((cidr == NULL) == (group == NULL)) {
			err_input(err, 400, where,
				  "%s needs exactly one of cidr (\"10.0.0.0/8\", \"0.0.0.0/0\") "
				  "and group",
				  where);
			goto fail;
		}
		if (cidr && !cidr_valid(cidr)) {
			err_input(err, 400, where,
				  "%s.cidr must be an IPv4 network without host bits, like "
				  "10.0.0.0/8 or 0.0.0.0/0",
				  where);
			goto fail;
		}
		if (group && !name_valid(group)) {
			err_input(err, 400, where, "%s.group must be a group name", where);
			goto fail;
		}
		if (group && strcmp(group, self) != 0 && !secgroup_exists(group)) {
			err_input(err, 422, where, "%s.group: no security group named %s", where,
				  group);
			goto fail;
		}
		o = json_object_new_object();
		json_object_object_add(o, "direction",
				       json_object_new_string(json_get_str(r, "direction", "")));
		json_object_object_add(o, "action",
				       json_object_new_string(json_get_str(r, "action", "allow")));
		json_object_object_add(o, "protocol", json_object_new_string(proto));
		if (ports)
			json_object_object_add(o, "ports", json_object_new_string(ports));
		if (cidr)
			json_object_object_add(o, "cidr", json_object_new_string(cidr));
		else
			json_object_object_add(o, "group", json_object_new_string(group));
		json_object_array_add(out, o);
	}
	return out;
fail:
	json_object_put(out);
	return NULL;
}

/* The groups a NIC of a spec names: its security_groups, or ["default"]. Borrowed or
 * static: valid while spec is. */
static struct json_object *nic_groups(struct json_object *nic)
{
	static struct json_object *dflt;
	struct json_object *names = json_object_object_get(nic, "security_groups");

	if (names && json_array_len(names) > 0)
		return names;
	if (dflt == NULL) {
		dflt = json_object_new_array();
		json_object_array_add(dflt, json_object_new_string(SECGROUP_DEFAULT));
	}
	return dflt;
}

struct json_object *secgroup_nic_groups(struct json_object *nic)
{
	return json_object_get(nic_groups(nic));
}

static bool names_has(struct json_object *names, const char *name)
{
	for (size_t i = 0; i < json_array_len(names); i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(names, i)), name) == 0)
			return true;
	return false;
}

/*
 * Every NIC with an address that is in group name, as
 * [{"instance", "nic", "network", "address"}]. A new reference.
 */
struct json_object *secgroup_members(const char *name)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT a.address, a.nic, i.name, i.spec, n.name "
					      "FROM addresses a JOIN instances i ON "
					      "a.instance_id = i.id JOIN networks n ON "
					      "a.network_id = n.id ORDER BY i.name, a.nic");
	struct json_object *out = json_object_new_array();

	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *spec =
			json_tokener_parse((const char *)sqlite3_column_text(st, 3));
		struct json_object *nic = json_object_array_get_idx(
			json_object_object_get(spec, "nics"), (size_t)sqlite3_column_int64(st, 1));

		if (nic && names_has(nic_groups(nic), name)) {
			struct json_object *m = json_object_new_object();

			json_object_object_add(
				m, "instance",
				json_object_new_string((const char *)sqlite3_column_text(st, 2)));
			json_object_object_add(m, "nic",
					       json_object_new_int64(sqlite3_column_int64(st, 1)));
			json_object_object_add(
				m, "network",
				json_object_new_string((const char *)sqlite3_column_text(st, 4)));
			json_object_object_add(
				m, "address",
				json_object_new_string((const char *)sqlite3_column_text(st, 0)));
			json_object_array_add(out, m);
		}
		json_object_put(spec);
	}
	sqlite3_finalize(st);
	return out;
}

/*
 * Who uses group name: "instance X" (a NIC names it) or "group Y" (a rule refers to
 * it), into by; false when nobody does.
 */
bool secgroup_in_use(const char *name, char *by, size_t len)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT name, spec FROM instances ORDER BY name");
	bool used = false;

	while (!used && sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *spec =
			json_tokener_parse((const char *)sqlite3_column_text(st, 1));
		struct json_object *nics = json_object_object_get(spec, "nics");

		for (size_t i = 0; !used && i < json_array_len(nics); i++) {
			struct json_object *names = json_object_object_get(
				json_object_array_get_idx(nics, i), "security_groups");

			if (names_has(names, name)) {
				snprintf(by, len, "instance %s", sqlite3_column_text(st, 0));
				used = true;
			}
		}
		json_object_put(spec);
	}
	sqlite3_finalize(st);
	st = db_prepare(ctl.db, "SELECT name, rules FROM security_groups WHERE name != ?");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	while (!used && sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *rules =
			json_tokener_parse((const char *)sqlite3_column_text(st, 1));

		for (size_t i = 0; !used && i < json_array_len(rules); i++)
			if (strcmp(json_get_str(json_object_array_get_idx(rules, i), "group", ""),
				   name) == 0) {
				snprintf(by, len, "group %s", sqlite3_column_text(st, 0));
				used = true;
			}
		json_object_put(rules);
	}
	sqlite3_finalize(st);
	return used;
}

/* The rules of group name (a new reference), or NULL when there is no such group. */
static struct json_object *group_rules(const char *name)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT rules FROM security_groups WHERE name = ?");
	struct json_object *rules = NULL;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	if (sqlite3_step(st) == SQLITE_ROW)
		rules = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return rules;
}

/* members_by_group()'s last answer and when: one pass over every NIC (a JSON parse
 * of each instance's spec) per document made each build O(instances), and a create
 * rebuilds the documents of every host in its groups. Forgotten at every change
 * netsync.c hears of, and after MEMBERS_CACHE_MS in case a change was not told. */
#define MEMBERS_CACHE_MS 15000
static struct json_object *members_cached;
static int64_t members_cached_at;

/* Something that decides group membership changed (or may have): recount next time. */
void secgroup_members_forget(void)
{
	json_object_put(members_cached);
	members_cached = NULL;
}

/*
 * Every group's member addresses, {"name": ["10.0.0.5", ...]}, from one pass over the
 * NICs, or the kept answer while nothing changed. A new reference.
 */
static struct json_object *members_by_group(void)
{
	struct json_object *out;
	sqlite3_stmt *st;

	if (members_cached && now_ms() - members_cached_at < MEMBERS_CACHE_MS)
		return json_object_get(members_cached);
	st = db_prepare(ctl.db, "SELECT a.address, a.nic, i.spec FROM addresses a "
				"JOIN instances i ON a.instance_id = i.id ORDER BY i.id, a.nic");
	out = json_object_new_object();
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *spec =
			json_tokener_parse((const char *)sqlite3_column_text(st, 2));
		struct json_object *nic = json_object_array_get_idx(
			json_object_object_get(spec, "nics"), (size_t)sqlite3_column_int64(st, 1));
		struct json_object *names = nic_groups(nic);
		const char *addr = (const char *)sqlite3_column_text(st, 0);

		for (size_t i = 0; nic && i < json_array_len(names); i++) {
			const char *name =
				json_object_get_string(json_object_array_get_idx(names, i));
			struct json_object *addrs = json_object_object_get(out, name);

			if (addrs == NULL) {
				addrs = json_object_new_array();
				json_object_object_add(out, name, addrs);
			}
			/* The same address on two networks is one element. */
			if (!names_has(addrs, addr))
				json_object_array_add(addrs, json_object_new_string(addr));
		}
		json_object_put(spec);
	}
	sqlite3_finalize(st);
	secgroup_members_forget();
	members_cached = json_object_get(out);
	members_cached_at = now_ms();
	return out;
}

/*
 * The security_groups of a host's network document: each group of names (those its
 * ports name) and each group their rules refer to, with its rules and its members'
 * addresses. A new array.
 */
struct json_object *secgroup_doc_json(struct json_object *names)
{
	struct json_object *out = json_object_new_array();
	struct json_object *want = json_object_new_array();
	struct json_object *members = members_by_group();

	for (size_t i = 0; i < json_array_len(names); i++)
		json_object_array_add(want, json_object_get(json_object_array_get_idx(names, i)));
	/* want grows while it is walked: rules bring in the groups they refer to. */
	for (size_t i = 0; i < json_array_len(want); i++) {
		const char *name = json_object_get_string(json_object_array_get_idx(want, i));
		struct json_object *rules = group_rules(name), *g, *addrs;

		if (rules == NULL)
			rules = json_object_new_array(); /* gone meanwhile: nobody is let in */
		for (size_t r = 0; r < json_array_len(rules); r++) {
			const char *ref =
				json_get_str(json_object_array_get_idx(rules, r), "group", NULL);

			if (ref && !names_has(want, ref))
				json_object_array_add(want, json_object_new_string(ref));
		}
		addrs = json_object_object_get(members, name);
		g = json_object_new_object();
		json_object_object_add(g, "name", json_object_new_string(name));
		json_object_object_add(g, "members",
				       addrs ? json_object_get(addrs) : json_object_new_array());
		json_object_object_add(g, "rules", rules);
		json_object_array_add(out, g);
	}
	json_object_put(want);
	json_object_put(members);
	return out;
}
