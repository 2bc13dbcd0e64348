/*
 * nics.c - the NICs of instances (VMs and containers alike) and the networks they
 * attach to: checking a create body's nics, handing each NIC on a network its address
 * (IPAM, in the create transaction, so an address is never given twice), and telling
 * the scheduler what those networks need of a host.
 *
 * A NIC on a network gets, in the spec the agent receives: its address and prefix, the
 * segment's bridge (kb<NID>-<VLAN>), its host-side port name (kp<IID>-<I>: the VM's tap
 * or the container's veth end), the MTU, the router (none on host-only networks) and
 * DNS servers. A NIC without a network is isolated (user-mode, VMs only).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controllerd.h"
#include "ipam.h"
#include "log.h"
#include "scheduler.h"
#include "util.h"
#include "spec.h"
#include "valid.h"

static int model_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "virtio") && strcmp(s, "e1000"))
		return err_input(err, 400, f, "'%s' must be virtio or e1000", f);
	return 0;
}

static int mac_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);
	unsigned int b[6];
	char end;

	if (strlen(s) != 17 ||
	    sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
		   &end) != 6 ||
	    strspn(s, "0123456789abcdefABCDEF:") != 17)
		return err_input(err, 400, f, "'%s' must be a MAC address like 52:54:00:12:34:56",
				 f);
	if (b[0] & 1)
		return err_input(err, 400, f, "'%s' is a multicast address; a NIC needs unicast",
				 f);
	if ((b[0] | b[1] | b[2] | b[3] | b[4] | b[5]) == 0)
		return err_input(err, 400, f, "'%s' is all zeros, which no NIC can have", f);
	/* 02:6b:... is the anycast gateway of each segment (netsync.c). */
	if (b[0] == 0x02 && b[1] == 0x6b)
		return err_input(err, 400, f, "'%s': 02:6b:... is Kumo's gateway prefix", f);
	return 0;
}

static int vlan_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 0 || n > 4094)
		return err_input(err, 400, f, "'%s' must be 1..4094 (or 0: untagged)", f);
	return 0;
}

static int address_check(struct json_object *v, const char *f, struct kerr *err)
{
	uint32_t a;
	struct kerr why;

	if (ipam_addr_parse(json_object_get_string(v), &a, &why) < 0)
		return err_input(err, 400, f, "'%s': %s", f, why.msg);
	return 0;
}

/* Group names, at most SECGROUP_NIC_MAX, each once (that they exist: nics_build()). */
static int groups_check(struct json_object *v, const char *f, struct kerr *err)
{
	size_t n = json_array_len(v);

	if (n > SECGROUP_NIC_MAX)
		return err_input(err, 400, f, "'%s' names at most %d groups", f, SECGROUP_NIC_MAX);
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(v, i);

		if (!json_object_is_type(e, json_type_string) ||
		    !name_valid(json_object_get_string(e)))
			return err_input(err, 400, f, "'%s' must be a list of group names", f);
		for (size_t j = 0; j < i; j++)
			if (strcmp(json_object_get_string(json_object_array_get_idx(v, j)),
				   json_object_get_string(e)) == 0)
				return err_input(err, 400, f, "'%s' names %s twice", f,
						 json_object_get_string(e));
	}
	return 0;
}

/*
 * port_security: false lifts the port's MAC and address checks (a router VM, a VM
 * that bridges). Operators may set it, as they create the instances: it hands the
 * instance its network segment's L2, never the hosts or the control plane.
 */
static const struct json_field vm_nic_fields[] = {
	{"model", JK_STRING, false, model_check},
	{"network", JK_STRING, false, name_check},
	{"vlan", JK_INT, false, vlan_check},
	{"address", JK_STRING, false, address_check},
	{"mac", JK_STRING, false, mac_check},
	{"port_security", JK_BOOL, false, NULL},
	{"security_groups", JK_ARRAY, false, groups_check},
	{NULL, 0, false, NULL},
};

static const struct json_field ctr_nic_fields[] = {
	{"network", JK_STRING, true, name_check},
	{"vlan", JK_INT, false, vlan_check},
	{"address", JK_STRING, false, address_check},
	{"mac", JK_STRING, false, mac_check},
	{"port_security", JK_BOOL, false, NULL},
	{"security_groups", JK_ARRAY, false, groups_check},
	{NULL, 0, false, NULL},
};

/* PATCH nics: one object per NIC of the instance, in order, with what changes. */
static const struct json_field nic_patch_fields[] = {
	{"port_security", JK_BOOL, false, NULL},
	{"security_groups", JK_ARRAY, false, groups_check},
	{NULL, 0, false, NULL},
};

int nics_patch_check(struct json_object *v, const char *f, struct kerr *err)
{
	return json_array_check(v, f, nic_patch_fields, SPEC_NICS_MAX, err);
}

/*
 * Apply a PATCH's nics (checked with nics_patch_check()) to the NICs of spec: as many
 * as the instance has (400), none on an isolated NIC (400), groups that exist (422).
 * Changes spec only when it all holds. Returns 0, or -1 with err.
 */
int nics_patch_apply(struct json_object *spec, struct json_object *patch, struct kerr *err)
{
	struct json_object *nics = json_object_object_get(spec, "nics");
	size_t n = nics ? json_array_len(nics) : 0;
	char where[40];

	if (json_array_len(patch) != n)
		return err_input(err, 400, "nics",
				 "'nics' must list one object per NIC of the instance (%zu)", n);
	for (size_t i = 0; i < n; i++) {
		struct json_object *p = json_object_array_get_idx(patch, i);
		struct json_object *groups = json_object_object_get(p, "security_groups");

		snprintf(where, sizeof(where), "nics[%zu]", i);
		if (json_get_str(json_object_array_get_idx(nics, i), "network", NULL) == NULL &&
		    json_object_object_length(p) > 0)
			return err_input(err, 400, where,
					 "%s is isolated: it has no port security or groups",
					 where);
		snprintf(where, sizeof(where), "nics[%zu].security_groups", i);
		for (size_t g = 0; groups && g < json_array_len(groups); g++) {
			const char *name =
				json_object_get_string(json_object_array_get_idx(groups, g));

			if (!secgroup_exists(name))
				return err_input(err, 422, where, "%s: no security group named %s",
						 where, name);
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct json_object *p = json_object_array_get_idx(patch, i);
		struct json_object *nic = json_object_array_get_idx(nics, i);

		json_object_object_foreach(p, key, val)
		{
			json_object_object_add(nic, key, json_object_get(val));
		}
	}
	return 0;
}

int nics_vm_check(struct json_object *v, const char *f, struct kerr *err)
{
	return json_array_check(v, f, vm_nic_fields, SPEC_NICS_MAX, err);
}

int nics_container_check(struct json_object *v, const char *f, struct kerr *err)
{
	return json_array_check(v, f, ctr_nic_fields, SPEC_NICS_MAX, err);
}

/* A network's record as the NIC code needs it. */
struct netrec {
	int64_t id;
	char mode[16];
	struct ipam_net net;
	uint32_t gateway;
	int mtu;
	struct json_object *vlans; /* owned */
	struct json_object *dns;   /* owned */
	struct json_object *uplinks;
};

static void netrec_free(struct netrec *r)
{
	json_object_put(r->vlans);
	json_object_put(r->dns);
	json_object_put(r->uplinks);
	memset(r, 0, sizeof(*r));
}

/* Load network name into r: 0, or -1 when there is no such network (or it is broken). */
static int netrec_load(const char *name, struct netrec *r)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id, mode, cidr, gateway, mtu, vlans, dns, "
					      "uplinks FROM networks WHERE name = ?");
	int ret = -1;

	memset(r, 0, sizeof(*r));
	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	if (sqlite3_step(st) == SQLITE_ROW &&
	    ipam_cidr_parse((const char *)sqlite3_column_text(st, 2), &r->net, NULL) == 0 &&
	    ipam_addr_parse((const char *)sqlite3_column_text(st, 3), &r->gateway, NULL) == 0) {
		r->id = sqlite3_column_int64(st, 0);
		snprintf(r->mode, sizeof(r->mode), "%s", sqlite3_column_text(st, 1));
		r->mtu = sqlite3_column_int(st, 4);
		r->vlans = json_tokener_parse((const char *)sqlite3_column_text(st, 5));
		r->dns = json_tokener_parse((const char *)sqlite3_column_text(st, 6));
		r->uplinks = json_tokener_parse((const char *)sqlite3_column_text(st, 7));
		ret = 0;
	}
	sqlite3_finalize(st);
	return ret;
}

static bool vlan_listed(struct json_object *vlans, int64_t vlan)
{
	for (size_t i = 0; i < json_array_len(vlans); i++)
		if (json_object_get_int64(json_object_array_get_idx(vlans, i)) == vlan)
			return true;
	return false;
}

/* Does an address row of network_id have column (address or mac) equal to value? */
static bool address_row_has(int64_t network_id, const char *column, const char *value)
{
	_cleanup_free_ char *sql =
		xasprintf("SELECT 1 FROM addresses WHERE network_id = ? AND %s = ?", column);
	sqlite3_stmt *st = db_prepare(ctl.db, sql);
	bool found;

	sqlite3_bind_int64(st, 1, network_id);
	sqlite3_bind_text(st, 2, value, -1, SQLITE_TRANSIENT);
	found = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	return found;
}

/*
 * The fixed address addr of a NIC on r: 0, or -1 with err - 422 when it is no address
 * a NIC can have there (outside the subnet, its network, broadcast or gateway
 * address), 409 when another NIC holds it.
 */
static int fixed_address_check(const struct netrec *r, const char *netname, const char *addr,
			       const char *where, struct kerr *err)
{
	char cidr[IPAM_CIDR_STRLEN], gw[IPAM_ADDR_STRLEN];
	struct kerr why;
	uint32_t a;

	if (ipam_addr_parse(addr, &a, &why) < 0)
		return err_input(err, 400, where, "%s: %s", where, why.msg);
	ipam_cidr_format(&r->net, cidr);
	if ((a & r->net.netmask) != r->net.network)
		return err_input(err, 422, where, "%s %s is outside network %s (%s)", where, addr,
				 netname, cidr);
	if (a == r->net.network || a == r->net.broadcast)
		return err_input(err, 422, where, "%s %s is the %s address of %s", where, addr,
				 a == r->net.network ? "network" : "broadcast", cidr);
	if (a == r->gateway)
		return err_input(err, 422, where, "%s %s is network %s's gateway (%s)", where, addr,
				 netname, ipam_addr_format(r->gateway, gw));
	if (address_row_has(r->id, "address", addr))
		return err_input(err, 409, where, "%s %s is in use in network %s", where, addr,
				 netname);
	return 0;
}

static bool mac_taken(int64_t network_id, const char *mac)
{
	return address_row_has(network_id, "mac", mac);
}

/* Is mac the MAC of one of the NICs built so far (out) on network net? */
static bool mac_listed(struct json_object *out, const char *net, const char *mac)
{
	for (size_t j = 0; j + 1 < json_array_len(out); j++) {
		struct json_object *p = json_object_array_get_idx(out, j);

		if (!strcmp(json_get_str(p, "network", ""), net) &&
		    !strcmp(json_get_str(p, "mac", ""), mac))
			return true;
	}
	return false;
}

static void mac_generate(char out[18])
{
	unsigned char b[3];

	random_bytes(b, sizeof(b));
	snprintf(out, 18, "52:54:00:%02x:%02x:%02x", b[0], b[1], b[2]);
}

/*
 * The spec's nics from a create body's (checked against nics_vm_check or
 * nics_container_check): MAC generated where missing, each network found and its
 * VLAN and fixed address checked. A new array, or NULL with err naming the NIC.
 */
struct json_object *nics_build(struct json_object *in, bool vm, struct kerr *err)
{
	struct json_object *out = json_object_new_array();
	size_t n = in ? json_array_len(in) : 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *d = json_object_array_get_idx(in, i),
				   *o = json_object_new_object();
		const char *net = json_get_str(d, "network", NULL);
		const char *addr = json_get_str(d, "address", NULL);
		int64_t vlan = json_get_int(d, "vlan", 0);
		struct json_object *groups;
		char mac[18], where[48];

		json_object_array_add(out, o);
		if (json_get_str(d, "mac", NULL)) {
			unsigned int b[6];

			/* Checked already; lower case, as the kernel prints it. */
			sscanf(json_get_str(d, "mac", ""), "%2x:%2x:%2x:%2x:%2x:%2x", &b[0], &b[1],
			       &b[2], &b[3], &b[4], &b[5]);
			snprintf(mac, sizeof(mac), "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1],
				 b[2], b[3], b[4], b[5]);
		} else
			mac_generate(mac);
		if (vm)
			json_object_object_add(
				o, "model",
				json_object_new_string(json_get_str(d, "model", "virtio")));
		json_object_object_add(o, "mac", json_object_new_string(mac));
		if (net == NULL) {
			snprintf(where, sizeof(where), "nics[%zu]", i);
			if (addr || vlan || json_object_object_get(d, "security_groups") ||
			    json_object_object_get(d, "port_security")) {
				err_input(err, 400, where,
					  "%s has no network: an isolated NIC has no VLAN, "
					  "address, port security or security groups",
					  where);
				goto fail;
			}
			json_object_object_add(o, "network", NULL);
			continue;
		}
		struct netrec r;

		snprintf(where, sizeof(where), "nics[%zu].network", i);
		if (netrec_load(net, &r) < 0) {
			err_input(err, 404, where, "no network named %s", net);
			goto fail;
		}
		if (vlan && !vlan_listed(r.vlans, vlan)) {
			snprintf(where, sizeof(where), "nics[%zu].vlan", i);
			err_input(err, 422, where,
				  "network %s does not carry VLAN %lld (it has %s)", net,
				  (long long)vlan,
				  json_array_len(r.vlans) ? json_text(r.vlans) : "no VLANs");
			netrec_free(&r);
			goto fail;
		}
		snprintf(where, sizeof(where), "nics[%zu].address", i);
		if (addr && fixed_address_check(&r, net, addr, where, err) < 0) {
			netrec_free(&r);
			goto fail;
		}
		/* Two NICs of one instance asking for one address. */
		for (size_t j = 0; addr && j < i; j++) {
			struct json_object *p = json_object_array_get_idx(in, j);

			if (!strcmp(json_get_str(p, "network", ""), net) &&
			    !strcmp(json_get_str(p, "address", ""), addr)) {
				err_input(err, 409, where, "nics[%zu] asks for %s too", j, addr);
				netrec_free(&r);
				goto fail;
			}
		}
		/* One MAC per NIC of a network: DHCP and the bridges' FDBs key on it. */
		snprintf(where, sizeof(where), "nics[%zu].mac", i);
		if (json_get_str(d, "mac", NULL) &&
		    (mac_taken(r.id, mac) || mac_listed(out, net, mac))) {
			err_input(err, 409, where, "MAC %s is in use in network %s", mac, net);
			netrec_free(&r);
			goto fail;
		}
		for (int tries = 0; !json_get_str(d, "mac", NULL) && tries < 16 &&
				    (mac_taken(r.id, mac) || mac_listed(out, net, mac));
		     tries++) {
			mac_generate(mac);
			json_object_object_add(o, "mac", json_object_new_string(mac));
		}
		snprintf(where, sizeof(where), "nics[%zu].security_groups", i);
		groups = json_object_object_get(d, "security_groups");
		for (size_t g = 0; g < (groups ? json_array_len(groups) : 0); g++) {
			const char *gname =
				json_object_get_string(json_object_array_get_idx(groups, g));

			if (!secgroup_exists(gname)) {
				err_input(err, 422, where, "%s: no security group named %s", where,
					  gname);
				netrec_free(&r);
				goto fail;
			}
		}
		json_object_object_add(o, "network", json_object_new_string(net));
		json_object_object_add(o, "vlan", json_object_new_int64(vlan));
		json_object_object_add(
			o, "port_security",
			json_object_new_boolean(json_get_bool(d, "port_security", true)));
		json_object_object_add(o, "security_groups",
				       groups && json_array_len(groups) ? json_object_get(groups)
									: json_object_new_array());
		json_object_object_add(o, "address", addr ? json_object_new_string(addr) : NULL);
		json_object_object_add(o, "fixed", json_object_new_boolean(addr != NULL));
		netrec_free(&r);
	}
	return out;
fail:
	json_object_put(out);
	return NULL;
}

/*
 * Fill sr->nets from the spec's NICs: what each network asks of a host (VXLAN for an
 * overlay, an uplink for bridge mode, 802.1Q for a VLAN on an uplink). The strings
 * point into the returned object (a new reference): keep it until the placement is
 * done, then drop it and call nics_sched_free(sr).
 */
struct json_object *nics_sched_request(struct json_object *spec, struct sched_request *sr)
{
	struct json_object *nics = json_object_object_get(spec, "nics"), *keep;
	size_t n = nics ? json_array_len(nics) : 0;
	struct sched_net *nets = xcalloc(n ? n : 1, sizeof(*nets));

	keep = json_object_new_array();
	sr->nets = nets;
	sr->nnets = 0;
	for (size_t i = 0; i < n; i++) {
		struct json_object *nic = json_object_array_get_idx(nics, i);
		const char *net = json_get_str(nic, "network", NULL);
		struct sched_net *s = &nets[sr->nnets];
		struct netrec r;

		if (net == NULL || netrec_load(net, &r) < 0)
			continue;
		s->network = net;
		s->vlan = (int)json_get_int(nic, "vlan", 0);
		s->overlay = strcmp(r.mode, "bridge") != 0;
		if (!s->overlay) {
			const char **hosts =
				xcalloc(json_object_object_length(r.uplinks) + 1, sizeof(*hosts));

			/* The keys stay alive in keep. */
			json_object_object_foreach(r.uplinks, host, iface)
			{
				(void)iface;
				hosts[s->nuplinks++] = host;
			}
			s->uplink_hosts = hosts;
			json_object_array_add(keep, json_object_get(r.uplinks));
		}
		netrec_free(&r);
		sr->nnets++;
	}
	return keep;
}

void nics_sched_free(struct sched_request *sr)
{
	for (size_t i = 0; i < sr->nnets; i++)
		free((void *)sr->nets[i].uplink_hosts);
	free((void *)sr->nets);
	sr->nets = NULL;
	sr->nnets = 0;
}

/*
 * Give instance iid's NICs their addresses, inside the caller's transaction: a fixed
 * address is claimed, any other NIC gets the lowest free one. Completes each NIC of
 * spec (port name, bridge, prefix, router, MTU, DNS). Returns 0, or -1 with err (409
 * when a fixed address went meanwhile or the network is full).
 */
int nics_allocate(int64_t iid, const char *instance, struct json_object *spec, struct kerr *err)
{
	struct json_object *nics = json_object_object_get(spec, "nics");
	size_t n = nics ? json_array_len(nics) : 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *nic = json_object_array_get_idx(nics, i);
		const char *net = json_get_str(nic, "network", NULL);
		const char *fixed = json_get_str(nic, "address", NULL);
		int64_t vlan = json_get_int(nic, "vlan", 0);
		char where[32], text[IPAM_ADDR_STRLEN], name[24];
		struct ipam_pool pool;
		struct netrec r;
		sqlite3_stmt *st;
		uint32_t a;
		int rc;

		if (net == NULL)
			continue;
		snprintf(where, sizeof(where), "nics[%zu].address", i);
		if (netrec_load(net, &r) < 0)
			return err_input(err, 404, where, "network %s is gone", net);
		if (ipam_pool_init(&pool, &r.net, r.gateway, err) < 0) {
			netrec_free(&r);
			return -1;
		}
		st = db_prepare(ctl.db, "SELECT address FROM addresses WHERE network_id = ?");
		sqlite3_bind_int64(st, 1, r.id);
		while (sqlite3_step(st) == SQLITE_ROW)
			if (ipam_addr_parse((const char *)sqlite3_column_text(st, 0), &a, NULL) ==
			    0)
				ipam_reserve(&pool, a, NULL);
		sqlite3_finalize(st);
		if (fixed) {
			struct kerr why;

			rc = ipam_addr_parse(fixed, &a, err);
			if (rc == 0 && ipam_reserve(&pool, a, &why) < 0)
				rc = err_input(err, why.status, where, "%s %s: %s", where, fixed,
					       why.msg);
		} else if ((rc = ipam_alloc(&pool, &a, err)) < 0) {
			rc = err_input(err, 409, where, "network %s has no free address left", net);
		}
		ipam_pool_free(&pool);
		if (rc < 0) {
			netrec_free(&r);
			return -1;
		}
		ipam_addr_format(a, text);
		st = db_prepare(
			ctl.db,
			"INSERT INTO addresses (network_id, address, kind, owner, created_at, "
			"instance_id, nic, vlan, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
		sqlite3_bind_int64(st, 1, r.id);
		sqlite3_bind_text(st, 2, text, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 3, fixed ? "static" : "dynamic", -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, instance, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 5, now_ms());
		sqlite3_bind_int64(st, 6, iid);
		sqlite3_bind_int64(st, 7, (int64_t)i);
		sqlite3_bind_int64(st, 8, vlan);
		sqlite3_bind_text(st, 9, json_get_str(nic, "mac", ""), -1, SQLITE_TRANSIENT);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE) {
			netrec_free(&r);
			return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
		}
		json_object_object_add(nic, "address", json_object_new_string(text));
		json_object_object_add(nic, "prefix", json_object_new_int(r.net.prefix));
		json_object_object_add(nic, "mode", json_object_new_string(r.mode));
		/* Host-only: the gateway is the host, and nothing lies beyond it. */
		json_object_object_add(
			nic, "router",
			strcmp(r.mode, "host-only")
				? json_object_new_string(ipam_addr_format(r.gateway, text))
				: NULL);
		json_object_object_add(nic, "mtu", json_object_new_int(r.mtu));
		json_object_object_add(nic, "dns", json_object_get(r.dns));
		snprintf(name, sizeof(name), "kb%lld-%lld", (long long)r.id, (long long)vlan);
		json_object_object_add(nic, "bridge", json_object_new_string(name));
		snprintf(name, sizeof(name), "kp%lld-%zu", (long long)iid, i);
		json_object_object_add(nic, "ifname", json_object_new_string(name));
		netrec_free(&r);
	}
	return 0;
}
