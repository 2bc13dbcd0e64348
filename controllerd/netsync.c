/*
 * netsync.c - what each host must realise of the networks, and keeping the hosts at it.
 *
 * The controller derives, for every host, one desired-state document from the
 * database: the segments (network, VLAN) its instances' NICs are on, each with the
 * bridge, VXLAN and VNI, the anycast gateway MAC, the local ports (taps and veths with
 * their MACs and addresses, for DHCP and host routes) and the peers - the underlay
 * addresses of every other host with a NIC on the segment (head-end replication).
 * The document's SHA-256 is its version.
 *
 * Agents report the version they hold (facts.network.wanted) in every heartbeat; when
 * it differs from the current one the document is sent again (a link query "net",
 * idempotent), at once after a change here and at most every NETSYNC_RETRY_MS while a
 * host lags. So a host that joins, comes back, restarted its agent or missed a message
 * converges without any bookkeeping of who was told what.
 *
 * Building a document costs a query, JSON and a SHA-256, and at 5,000 hosts a
 * heartbeat per host per second made that the controller's main work. So the hash of
 * each host's last document is kept with a stamp of what it was built from
 * (netver.h): the versions of its segments and security groups, and one global
 * generation. A key's version moves only when what other hosts see of it changes -
 * a host joins or leaves a segment, an address joins or leaves a group - which the
 * rebuild of the host that changed finds by comparing its share of each key with
 * the last one (netsync_changed(h)); netsync_all() moves the global generation for
 * the rare changes of everything (networks, rules, addresses of hosts). A heartbeat
 * that reports the kept hash of a current stamp needs no new document, so a create
 * rebuilds only the documents of the hosts that share its segments or groups, and a
 * host without NICs is never rebuilt for others' creates. Kept hashes are rebuilt
 * after NETSYNC_CACHE_MS anyway, so a change that forgot to say so heals.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "netver.h"
#include "token.h"
#include "util.h"

#define NETSYNC_RETRY_MS 5000
/* A document the host took is not sent again for this long, whatever an older
 * heartbeat says: at thousands of hosts heartbeats lag, and resending every
 * NETSYNC_RETRY_MS then fed the lag (each send takes a command socket). */
#define NETSYNC_TAKEN_MS 30000
#define NETSYNC_CACHE_MS 30000

/* The last document sent to each host (by id), and when: to hold back repeats. */
struct sent {
	int64_t host_id;
	char hash[65];
	int64_t at;
	char refused[256]; /* why the host refused that document, or "" */
	char taken[65];	   /* the last document the host answered for without error */
	int64_t taken_at;
	/* The last document built for the host: its hash, stamp and time. */
	char built_hash[65];
	struct netver_stamp stamp;
	int64_t built_at;
};

/* Indexed by host id (SQLite rowids, dense from 1): one lookup per heartbeat. */
static struct sent **sent_by_id;
static size_t sent_cap;
static struct netver *versions;

static struct sent *sent_get(int64_t host_id)
{
	size_t id = (size_t)host_id;

	if (id >= sent_cap) {
		size_t cap = sent_cap ? sent_cap : 64;

		while (cap <= id)
			cap *= 2;
		sent_by_id = xrealloc(sent_by_id, cap * sizeof(*sent_by_id));
		memset(sent_by_id + sent_cap, 0, (cap - sent_cap) * sizeof(*sent_by_id));
		sent_cap = cap;
	}
	if (sent_by_id[id] == NULL) {
		sent_by_id[id] = xcalloc(1, sizeof(**sent_by_id));
		sent_by_id[id]->host_id = host_id;
	}
	return sent_by_id[id];
}

/* The IPv4 address part of "tcp://A.B.C.D:PORT" into out; false when there is none. */
static bool underlay_of(const struct host *h, char *out, size_t len)
{
	const char *a = h->address ? h->address : "";
	const char *colon;

	if (strncmp(a, "tcp://", 6) != 0)
		return false;
	a += 6;
	colon = strrchr(a, ':');
	if (colon == NULL || (size_t)(colon - a) >= len || colon == a)
		return false;
	snprintf(out, len, "%.*s", (int)(colon - a), a);
	return true;
}

/* The peers of segment (nid, vlan) for host h: other hosts with a NIC on it. */
static struct json_object *peers_json(const struct host *h, int64_t nid, int64_t vlan)
{
	/* The segment's addresses first, migration targets apart: through
	 * MIGRATE_WIRED_INSTANCES SQLite copied every instance per segment per build. */
	sqlite3_stmt *st = db_prepare(
		ctl.db,
		"SELECT i.host_id FROM addresses a JOIN instances i ON a.instance_id = i.id "
		"WHERE a.network_id = ?1 AND a.vlan = ?2 AND i.host_id IS NOT NULL AND "
		"i.host_id != ?3 UNION SELECT m.host_id FROM addresses a JOIN "
		"temp.migrating m ON m.instance_id = a.instance_id WHERE "
		"a.network_id = ?1 AND a.vlan = ?2 AND m.host_id != ?3 ORDER BY 1");
	struct json_object *peers = json_object_new_array();
	char self[64] = "";

	sqlite3_bind_int64(st, 1, nid);
	sqlite3_bind_int64(st, 2, vlan);
	sqlite3_bind_int64(st, 3, h->id);
	underlay_of(h, self, sizeof(self));
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct host *p = host_find_id(sqlite3_column_int64(st, 0));
		struct in_addr a;
		char addr[64];
		bool dup = false;

		/* Only real, distinct VTEPs: two agents behind one address (a test setup)
		 * would otherwise list this host as its own peer. */
		if (p == NULL || !underlay_of(p, addr, sizeof(addr)) ||
		    inet_pton(AF_INET, addr, &a) != 1 || strcmp(addr, self) == 0)
			continue;
		for (size_t i = 0; i < json_array_len(peers) && !dup; i++)
			dup = !strcmp(json_object_get_string(json_object_array_get_idx(peers, i)),
				      addr);
		if (!dup)
			json_object_array_add(peers, json_object_new_string(addr));
	}
	sqlite3_finalize(st);
	return peers;
}

static struct json_object *column_json(sqlite3_stmt *st, int col)
{
	const char *text = (const char *)sqlite3_column_text(st, col);

	return json_tokener_parse(text ? text : "null");
}

/* Add s to the array of strings arr unless it is there. */
static void strings_add(struct json_object *arr, const char *s)
{
	for (size_t i = 0; i < json_array_len(arr); i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(arr, i)), s) == 0)
			return;
	json_object_array_add(arr, json_object_new_string(s));
}

/* control_plane_json()'s last answer and when: it walks every host, and every document
 * carries it (at 5,000 hosts, 30% of the controller's time in a perf profile). Dropped
 * by netsync_all() and netsync_changed(NULL) (a host's address moved), and after
 * NETSYNC_PLANE_MS so a host that joined meanwhile is in it soon. */
#define NETSYNC_PLANE_MS 15000
static struct json_object *plane_cached;
static int64_t plane_cached_at;

static void plane_forget(void)
{
	json_object_put(plane_cached);
	plane_cached = NULL;
}

/*
 * What instances must never reach: every host's underlay address and the controller's
 * link address (join and event ports), and its API address unless that is a wildcard
 * or loopback (then the hosts' own input rules cover it). A new reference, shared:
 * the caller must not change it.
 */
static struct json_object *control_plane_json(void)
{
	struct json_object *out, *seen;
	char addr[64];
	struct in_addr a;
	const char *colon;

	if (plane_cached && now_ms() - plane_cached_at < NETSYNC_PLANE_MS)
		return json_object_get(plane_cached);
	out = json_object_new_array();
	seen = json_object_new_object();

	if (inet_pton(AF_INET, ctl.cfg.link_address, &a) == 1 && a.s_addr != INADDR_ANY)
		strings_add(out, ctl.cfg.link_address);
	colon = strrchr(ctl.cfg.api_listen, ':');
	if (colon && (size_t)(colon - ctl.cfg.api_listen) < sizeof(addr)) {
		snprintf(addr, sizeof(addr), "%.*s", (int)(colon - ctl.cfg.api_listen),
			 ctl.cfg.api_listen);
		if (inet_pton(AF_INET, addr, &a) == 1 && a.s_addr != INADDR_ANY &&
		    (ntohl(a.s_addr) >> 24) != 127)
			strings_add(out, addr);
	}
	for (size_t i = 0; i < json_array_len(out); i++)
		json_object_object_add(
			seen, json_object_get_string(json_object_array_get_idx(out, i)), NULL);
	/* A set by name: strings_add()'s linear search made this O(hosts^2). */
	for (struct host *h = ctl.hosts; h; h = h->next)
		if (underlay_of(h, addr, sizeof(addr)) && inet_pton(AF_INET, addr, &a) == 1 &&
		    !json_object_object_get_ex(seen, addr, NULL)) {
			json_object_object_add(seen, addr, NULL);
			json_object_array_add(out, json_object_new_string(addr));
		}
	json_object_put(seen);
	plane_forget();
	plane_cached = json_object_get(out);
	plane_cached_at = now_ms();
	return out;
}

/*
 * A port's protection from its NIC in the instance's spec (text): port_security
 * (default on) and its security groups ("default" when it names none), whose names
 * are added to groups.
 */
static void port_protection(struct json_object *port, struct json_object *groups,
			    const char *spec_text, int64_t nic_index)
{
	struct json_object *spec = json_tokener_parse(spec_text ? spec_text : "{}");
	struct json_object *nic =
		json_object_array_get_idx(json_object_object_get(spec, "nics"), (size_t)nic_index);
	struct json_object *names = secgroup_nic_groups(nic);

	json_object_object_add(port, "port_security",
			       json_object_new_boolean(json_get_bool(nic, "port_security", true)));
	for (size_t i = 0; i < json_array_len(names); i++)
		strings_add(groups, json_object_get_string(json_object_array_get_idx(names, i)));
	json_object_object_add(port, "security_groups", names);
	json_object_put(spec);
}

/* Everything host h must realise, with its "hash". A new reference. */
static struct json_object *doc_query(struct host *h)
{
	sqlite3_stmt *st = db_prepare_cached(
		ctl.db,
		"SELECT n.id, n.name, n.mode, n.cidr, n.gateway, n.mtu, n.dhcp, n.dns, "
		"n.uplinks, n.vni_base, a.vlan, a.address, a.mac, a.nic, i.id, i.name, "
		"i.spec "
		"FROM addresses a JOIN " MIGRATE_WIRED_INSTANCES " i ON a.instance_id = i.id "
		"JOIN networks n ON a.network_id = n.id WHERE i.host_id = ? "
		"ORDER BY n.id, a.vlan, i.id, a.nic");
	struct json_object *doc = json_object_new_object(), *nets = json_object_new_array();
	struct json_object *net = NULL, *segs = NULL, *seg = NULL, *ports = NULL;
	struct json_object *groups = json_object_new_array();
	int64_t cur_nid = -1, cur_vlan = -1;
	unsigned char digest[32];
	char under[64] = "", hex[65];

	metrics_netsync_build();
	underlay_of(h, under, sizeof(under));
	sqlite3_bind_int64(st, 1, h->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t nid = sqlite3_column_int64(st, 0), vlan = sqlite3_column_int64(st, 10);
		const char *mode = (const char *)sqlite3_column_text(st, 2);
		bool bridged = strcmp(mode, "bridge") == 0;
		char name[24], mac[18];

		if (nid != cur_nid) {
			const char *cidr = (const char *)sqlite3_column_text(st, 3);
			const char *slash = strchr(cidr, '/');
			struct json_object *uplinks = column_json(st, 8);

			net = json_object_new_object();
			json_object_array_add(nets, net);
			json_object_object_add(net, "id", json_object_new_int64(nid));
			json_object_object_add(
				net, "name",
				json_object_new_string((const char *)sqlite3_column_text(st, 1)));
			json_object_object_add(net, "mode", json_object_new_string(mode));
			json_object_object_add(net, "cidr", json_object_new_string(cidr));
			json_object_object_add(net, "prefix",
					       json_object_new_int(slash ? atoi(slash + 1) : 32));
			json_object_object_add(
				net, "gateway",
				json_object_new_string((const char *)sqlite3_column_text(st, 4)));
			json_object_object_add(net, "mtu",
					       json_object_new_int(sqlite3_column_int(st, 5)));
			json_object_object_add(net, "dhcp",
					       json_object_new_boolean(sqlite3_column_int(st, 6)));
			json_object_object_add(net, "dns", column_json(st, 7));
			json_object_object_add(
				net, "uplink",
				bridged ? json_object_get(json_object_object_get(uplinks, h->name))
					: NULL);
			json_object_put(uplinks);
			segs = json_object_new_array();
			json_object_object_add(net, "segments", segs);
			cur_nid = nid;
			cur_vlan = -1;
		}
		if (vlan != cur_vlan) {
			seg = json_object_new_object();
			json_object_array_add(segs, seg);
			json_object_object_add(seg, "vlan", json_object_new_int64(vlan));
			json_object_object_add(
				seg, "vni",
				json_object_new_int64(sqlite3_column_int64(st, 9) + vlan));
			snprintf(name, sizeof(name), "kb%lld-%lld", (long long)nid,
				 (long long)vlan);
			json_object_object_add(seg, "bridge", json_object_new_string(name));
			snprintf(name, sizeof(name), "kx%lld-%lld", (long long)nid,
				 (long long)vlan);
			json_object_object_add(seg, "vxlan",
					       bridged ? NULL : json_object_new_string(name));
			/* The same on every host: one anycast gateway per segment. */
			snprintf(mac, sizeof(mac), "02:6b:%02x:%02x:%02x:%02x",
				 (unsigned)(nid >> 8) & 0xff, (unsigned)nid & 0xff,
				 (unsigned)(vlan >> 8) & 0xff, (unsigned)vlan & 0xff);
			json_object_object_add(seg, "gateway_mac", json_object_new_string(mac));
			json_object_object_add(seg, "peers",
					       bridged ? json_object_new_array()
						       : peers_json(h, nid, vlan));
			ports = json_object_new_array();
			json_object_object_add(seg, "ports", ports);
			cur_vlan = vlan;
		}
		struct json_object *port = json_object_new_object();

		snprintf(name, sizeof(name), "kp%lld-%lld", (long long)sqlite3_column_int64(st, 14),
			 (long long)sqlite3_column_int64(st, 13));
		json_object_object_add(port, "ifname", json_object_new_string(name));
		json_object_object_add(
			port, "mac",
			json_object_new_string((const char *)sqlite3_column_text(st, 12)));
		json_object_object_add(
			port, "address",
			json_object_new_string((const char *)sqlite3_column_text(st, 11)));
		json_object_object_add(
			port, "instance",
			json_object_new_string((const char *)sqlite3_column_text(st, 15)));
		port_protection(port, groups, (const char *)sqlite3_column_text(st, 16),
				sqlite3_column_int64(st, 13));
		json_object_array_add(ports, port);
	}
	db_release(st);
	json_object_object_add(doc, "underlay", json_object_new_string(under));
	json_object_object_add(doc, "control_plane", control_plane_json());
	json_object_object_add(doc, "security_groups", secgroup_doc_json(groups));
	json_object_put(groups);
	json_object_object_add(doc, "networks", nets);
	sha256(json_text(doc), strlen(json_text(doc)), digest);
	hex_encode(digest, sizeof(digest), hex);
	json_object_object_add(doc, "hash", json_object_new_string(hex));
	return doc;
}

/* Add "seg/NET/VLAN" or "group/NAME" to keys (an array of strings), once. */
static void key_add(struct json_object *keys, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void key_add(struct json_object *keys, const char *fmt, ...)
{
	char key[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(key, sizeof(key), fmt, ap);
	va_end(ap);
	strings_add(keys, key);
}

/*
 * Stamp s from doc: it depends on its segments and the groups it carries; the host
 * contributes its presence to each segment and its ports' addresses to each of their
 * groups (a digest, so a new address in a group it was already in counts). Keys
 * whose share changed are bumped for the other hosts.
 */
static void doc_stamp(struct sent *s, struct json_object *doc)
{
	struct json_object *deps = json_object_new_array(), *contrib = json_object_new_object();
	struct json_object *nets = json_object_object_get(doc, "networks");
	struct json_object *groups = json_object_object_get(doc, "security_groups");
	const char **dep_keys;
	struct netver_entry *entries;
	size_t n, m = 0;

	for (size_t i = 0; i < json_array_len(nets); i++) {
		struct json_object *net = json_object_array_get_idx(nets, i);
		struct json_object *segs = json_object_object_get(net, "segments");
		int64_t nid = json_get_int(net, "id", 0);

		for (size_t j = 0; j < json_array_len(segs); j++) {
			struct json_object *seg = json_object_array_get_idx(segs, j);
			struct json_object *ports = json_object_object_get(seg, "ports");
			char key[64];

			snprintf(key, sizeof(key), "seg/%lld/%lld", (long long)nid,
				 (long long)json_get_int(seg, "vlan", 0));
			strings_add(deps, key);
			json_object_object_add(contrib, key, json_object_new_int64(1));
			for (size_t k = 0; k < json_array_len(ports); k++) {
				struct json_object *port = json_object_array_get_idx(ports, k);
				struct json_object *names =
					json_object_object_get(port, "security_groups");
				const char *addr = json_get_str(port, "address", NULL);

				for (size_t g = 0; addr && g < json_array_len(names); g++) {
					char gkey[160];
					struct json_object *d;
					uint64_t h;

					snprintf(gkey, sizeof(gkey), "group/%s",
						 json_object_get_string(
							 json_object_array_get_idx(names, g)));
					d = json_object_object_get(contrib, gkey);
					h = d ? (uint64_t)json_object_get_int64(d)
					      : NETVER_DIGEST_INIT;
					h = netver_digest(h, addr, strlen(addr) + 1);
					json_object_object_add(contrib, gkey,
							       json_object_new_int64((int64_t)h));
				}
			}
		}
	}
	for (size_t i = 0; i < json_array_len(groups); i++)
		key_add(deps, "group/%s",
			json_get_str(json_object_array_get_idx(groups, i), "name", ""));
	n = json_array_len(deps);
	dep_keys = xcalloc(n ? n : 1, sizeof(*dep_keys));
	for (size_t i = 0; i < n; i++)
		dep_keys[i] = json_object_get_string(json_object_array_get_idx(deps, i));
	entries = xcalloc(json_object_object_length(contrib) + 1, sizeof(*entries));
	json_object_object_foreach(contrib, key, val)
	{
		entries[m].key = key;
		entries[m++].value = (uint64_t)json_object_get_int64(val);
	}
	/* A share that changed unannounced (the heal): the members kept are stale too. */
	if (netver_stamp_record(versions, &s->stamp, dep_keys, n, entries, m) > 0)
		secgroup_members_forget();
	free(entries);
	free(dep_keys);
	json_object_put(contrib);
	json_object_put(deps);
}

/* h's document, built now and kept (its hash and stamp). A new reference. */
static struct json_object *doc_build(struct host *h)
{
	struct json_object *doc = doc_query(h);
	struct sent *s = sent_get(h->id);

	if (versions == NULL)
		versions = netver_new();
	doc_stamp(s, doc);
	snprintf(s->built_hash, sizeof(s->built_hash), "%s", json_get_str(doc, "hash", ""));
	s->built_at = now_ms();
	return doc;
}

/* The hash of h's document: the kept one while its stamp is current, else built. */
static void doc_hash(struct host *h, char out[65])
{
	struct sent *s = sent_get(h->id);

	if (versions && s->built_hash[0] && netver_stamp_current(versions, &s->stamp) &&
	    now_ms() - s->built_at < NETSYNC_CACHE_MS) {
		snprintf(out, 65, "%s", s->built_hash);
		return;
	}
	json_object_put(doc_build(h));
	snprintf(out, 65, "%s", s->built_hash);
}

struct netsync_call {
	int64_t host_id;
	char hash[65];
};

/* A hash as documents carry it: 64 lower-case hex digits. */
static bool doc_hash_valid(const char *hash)
{
	if (hash == NULL || strlen(hash) != 64)
		return false;
	for (const char *p = hash; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

/*
 * The agent's answer: {"hash"} of the document it holds on disk now, the one sent or
 * a newer one that replaced it while it waited for its write, or why it took none.
 */
static void netsync_reply_cb(struct json_object *body, const char *error, void *cls)
{
	struct netsync_call *c = cls;
	struct host *h = host_find_id(c->host_id);
	const char *taken = json_get_str(body, "hash", NULL);

	if (error == NULL && !doc_hash_valid(taken))
		error = "the agent's answer names no document hash";
	if (h) {
		struct sent *s = sent_get(c->host_id);

		/* A refused document is sent again after NETSYNC_RETRY_MS, as a lost one;
		 * the reason shows in GET /hosts/{name} meanwhile. */
		if (error && strcmp(s->refused, error) != 0)
			log_warnx("host %s: network state %.12s not taken: %s", h->name, c->hash,
				  error);
		if (strcmp(s->hash, c->hash) == 0)
			snprintf(s->refused, sizeof(s->refused), "%s", error ? error : "");
		if (error == NULL) {
			snprintf(s->taken, sizeof(s->taken), "%s", taken);
			s->taken_at = now_ms();
		}
	}
	free(c);
}

/* Send h its document when it does not hold it; force: even if sent a moment ago. */
static void netsync_host(struct host *h, const char *holds, bool force)
{
	struct json_object *doc, *q;
	struct netsync_call *c;
	struct sent *s;
	const char *hash;
	int64_t now = now_ms();

	if (h->state != HOST_ONLINE)
		return;
	doc = doc_build(h);
	hash = json_get_str(doc, "hash", "");
	s = sent_get(h->id);
	if ((holds && strcmp(holds, hash) == 0) ||
	    (!force && strcmp(s->hash, hash) == 0 && now - s->at < NETSYNC_RETRY_MS) ||
	    (!force && strcmp(s->taken, hash) == 0 && now - s->taken_at < NETSYNC_TAKEN_MS)) {
		json_object_put(doc);
		return;
	}
	snprintf(s->hash, sizeof(s->hash), "%s", hash);
	s->at = now;
	c = xcalloc(1, sizeof(*c));
	c->host_id = h->id;
	snprintf(c->hash, sizeof(c->hash), "%s", hash);
	log_debug("host %s: sending network state %.12s", h->name, hash);
	q = json_object_new_object();
	json_object_object_add(q, "what", json_object_new_string("net"));
	json_object_object_add(q, "doc", doc);
	agentlink_query(h, q, netsync_reply_cb, c);
}

/* Something that decides the documents changed: tell every online host that lags. */
void netsync_all(void)
{
	if (versions == NULL)
		versions = netver_new();
	netver_all_bump(versions);
	secgroup_members_forget();
	plane_forget();
	for (struct host *h = ctl.hosts; h; h = h->next)
		netsync_host(h, NULL, false);
}

/*
 * Something that decides documents changed on h (an instance with NICs came or went):
 * h is told at once, before any command queued after this call; the segments and
 * groups its rebuilt document shows it joined or left move on, and the hosts that
 * share them get their new documents at their next heartbeat. With h NULL (the host
 * is not known, or a host's address changed) every host's document is rebuilt.
 */
void netsync_changed(struct host *h)
{
	if (versions == NULL)
		versions = netver_new();
	secgroup_members_forget(); /* before h's rebuild reads the members */
	if (h == NULL) {
		netver_all_bump(versions);
		plane_forget();
		return;
	}
	/* Never built since start: its share was unknown, so all of it counts as new
	 * (the first heartbeat's build, by contrast, changes nobody's document). */
	sent_get(h->id)->stamp.valid = true;
	if (h->state == HOST_ONLINE)
		netsync_host(h, NULL, false);
	else
		json_object_put(doc_build(h)); /* only its share of the keys moves */
}

/* A heartbeat came in: resend when the host holds another version than ours. */
void netsync_heartbeat(struct host *h)
{
	struct json_object *net = json_object_object_get(h->facts, "network");
	const char *wanted = json_get_str(net, "wanted", NULL);
	struct sent *s = sent_get(h->id);

	/* It holds the document its stamp says is current: nothing to build. */
	if (wanted && versions && netver_stamp_current(versions, &s->stamp) &&
	    now_ms() - s->built_at < NETSYNC_CACHE_MS && strcmp(wanted, s->built_hash) == 0)
		return;
	netsync_host(h, wanted ? wanted : "", false);
}

/* Has h applied the document it should hold now? */
static bool host_in_sync(struct host *h)
{
	const char *applied =
		json_get_str(json_object_object_get(h->facts, "network"), "applied", NULL);
	char hash[65];

	doc_hash(h, hash);
	return applied && strcmp(applied, hash) == 0;
}

/*
 * Is the network of instance ready: its host and every host with a NIC on one of its
 * segments (the peers whose FDB must name its host) applied the document they should
 * hold? Offline hosts are not waited for: they learn it when they come back. Returns
 * true, or false with why naming a host that lags (and its apply error, if any).
 */
bool netsync_instance_ready(const char *instance, char *why, size_t len)
{
	return netsync_instance_lagging(instance, why, len) == 0;
}

/*
 * As netsync_instance_ready(), but the id of the first host found lagging (why names
 * it), or 0 when the network of instance is ready. A waiter needs to look again only
 * when that host applied another document: until then the answer cannot change.
 */
int64_t netsync_instance_lagging(const char *instance, char *why, size_t len)
{
	/* From the instance's own segments out, and the migration targets as their own
	 * part: joining MIGRATE_WIRED_INSTANCES made SQLite copy every instance (specs
	 * and all) per call, and during creates this runs for every waiting create
	 * whenever a host applies a document. */
	sqlite3_stmt *st = db_prepare_cached(
		ctl.db,
		"SELECT i.host_id FROM instances j JOIN addresses b ON b.instance_id = j.id "
		"JOIN addresses a ON a.network_id = b.network_id AND a.vlan = b.vlan "
		"JOIN instances i ON i.id = a.instance_id "
		"WHERE j.name = ?1 AND i.host_id IS NOT NULL "
		"UNION SELECT m.host_id FROM instances j JOIN addresses b ON "
		"b.instance_id = j.id JOIN addresses a ON a.network_id = b.network_id AND "
		"a.vlan = b.vlan JOIN temp.migrating m ON m.instance_id = a.instance_id "
		"WHERE j.name = ?1");
	int64_t lagging = 0;

	sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	while (lagging == 0 && sqlite3_step(st) == SQLITE_ROW) {
		struct host *h = host_find_id(sqlite3_column_int64(st, 0));
		const char *error;

		if (h == NULL || h->state != HOST_ONLINE || host_in_sync(h))
			continue;
		lagging = h->id;
		error = json_get_str(json_object_object_get(h->facts, "network"), "error", NULL);
		snprintf(why, len, "host %s has not applied the network state yet%s%s", h->name,
			 error ? ": " : "", error ? error : "");
	}
	db_release(st);
	return lagging;
}

/* For GET /hosts/{name}: the version the host should hold, and what it reports. */
struct json_object *netsync_status_json(struct host *h)
{
	struct json_object *o = json_object_new_object();
	struct json_object *net = json_object_object_get(h->facts, "network");
	const char *applied = json_get_str(net, "applied", NULL);
	const char *error = json_get_str(net, "error", NULL);
	struct sent *s = sent_get(h->id);
	char hash[65];

	/* The kept hash when current: a host list would build every host's document. */
	doc_hash(h, hash);

	/* The host's own apply error, or why it refused the document outright. */
	if (s->refused[0] && strcmp(s->hash, hash) == 0)
		error = s->refused;
	json_object_object_add(o, "wanted", json_object_new_string(hash));
	json_object_object_add(o, "applied", applied ? json_object_new_string(applied) : NULL);
	json_object_object_add(o, "error", error ? json_object_new_string(error) : NULL);
	json_object_object_add(o, "in_sync",
			       json_object_new_boolean(applied && strcmp(applied, hash) == 0));
	return o;
}

void netsync_free(void)
{
	for (size_t i = 0; i < sent_cap; i++) {
		if (sent_by_id[i])
			netver_stamp_clear(&sent_by_id[i]->stamp);
		free(sent_by_id[i]);
	}
	netver_free(versions);
	versions = NULL;
	secgroup_members_forget();
	plane_forget();
	free(sent_by_id);
	sent_by_id = NULL;
	sent_cap = 0;
}
