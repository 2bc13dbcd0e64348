/*
 * hosts.c - the host registry: hosts loaded from SQLite at start, joined over the
 * agent link, kept online by heartbeats and marked offline when they stop.
 *
 * last_seen and facts change every heartbeat; they are kept in memory and written
 * at state changes and every HOSTS_PERSIST_MS, not on every beat.
 */
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define HOSTS_PERSIST_MS 30000

static const char *const state_names[] = {"offline", "online"};

const char *host_state_name(enum host_state s)
{
	return state_names[s];
}

/*
 * Hosts by name: every message from an agent looks its host up, so a search through
 * the list made each heartbeat cost O(hosts). Open addressing over a power-of-two
 * table at most half full; a removed host leaves a tombstone until the next rebuild.
 */
#define TOMBSTONE ((struct host *)1)

static struct host **by_name;
static size_t by_name_cap, by_name_used; /* slots, and slots not empty (tombstones too) */
/* Hosts by id (SQLite rowids, dense from 1), for the same reason. */
static struct host **by_id;
static size_t by_id_cap;

static void by_id_set(int64_t id, struct host *h)
{
	size_t i = (size_t)id;

	if (id < 0)
		return;
	if (i >= by_id_cap) {
		size_t cap = by_id_cap ? by_id_cap : 64;

		while (cap <= i)
			cap *= 2;
		by_id = xrealloc(by_id, cap * sizeof(*by_id));
		memset(by_id + by_id_cap, 0, (cap - by_id_cap) * sizeof(*by_id));
		by_id_cap = cap;
	}
	by_id[i] = h;
}

/* The host with database id id, or NULL. */
struct host *host_find_id(int64_t id)
{
	return id >= 0 && (size_t)id < by_id_cap ? by_id[id] : NULL;
}

static size_t name_hash(const char *s)
{
	size_t h = 14695981039346656037ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static void by_name_insert(struct host *h)
{
	size_t i = name_hash(h->name) & (by_name_cap - 1);

	by_id_set(h->id, h);
	while (by_name[i] && by_name[i] != TOMBSTONE)
		i = (i + 1) & (by_name_cap - 1);
	if (by_name[i] == NULL)
		by_name_used++;
	by_name[i] = h;
}

/* Make the table fit the host list again (after growth or many removals). */
static void by_name_rebuild(void)
{
	size_t n = 0;

	for (struct host *h = ctl.hosts; h; h = h->next)
		n++;
	free(by_name);
	by_name_cap = 64;
	while (by_name_cap < 4 * n)
		by_name_cap *= 2;
	by_name = xcalloc(by_name_cap, sizeof(*by_name));
	by_name_used = 0;
	for (struct host *h = ctl.hosts; h; h = h->next)
		by_name_insert(h);
}

static void by_name_add(struct host *h)
{
	if (2 * (by_name_used + 1) > by_name_cap)
		by_name_rebuild(); /* h is on the list already */
	else
		by_name_insert(h);
}

static void by_name_del(struct host *h)
{
	size_t i;

	by_id_set(h->id, NULL);
	if (by_name_cap == 0)
		return;
	for (i = name_hash(h->name) & (by_name_cap - 1); by_name[i];
	     i = (i + 1) & (by_name_cap - 1))
		if (by_name[i] == h) {
			by_name[i] = TOMBSTONE;
			return;
		}
}

struct host *host_find(const char *name)
{
	size_t i;

	if (by_name_cap == 0)
		return NULL;
	for (i = name_hash(name) & (by_name_cap - 1); by_name[i]; i = (i + 1) & (by_name_cap - 1))
		if (by_name[i] != TOMBSTONE && strcmp(by_name[i]->name, name) == 0)
			return by_name[i];
	return NULL;
}

/* The host an instance is placed on, or NULL. */
struct host *host_find_instance(const char *instance)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT h.name FROM instances i JOIN hosts h ON "
					      "h.id = i.host_id WHERE i.name = ?");
	struct host *h = NULL;

	sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		h = host_find((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return h;
}

static struct json_object *parse_or_empty(const char *text)
{
	struct json_object *o = text ? json_tokener_parse(text) : NULL;

	if (o == NULL || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		o = json_object_new_object();
	}
	return o;
}

/*
 * Replace h's facts with facts (a reference is consumed). Every change gets a new
 * facts_version, never reused, so whoever keeps what it read of them (the
 * scheduler's view, instances.c) knows when to read them again.
 */
void host_facts_set(struct host *h, struct json_object *facts)
{
	static uint64_t seq;

	json_object_put(h->facts);
	h->facts = facts;
	h->facts_version = ++seq;
}

static void host_free(struct host *h)
{
	struct cmd *c, *next;

	for (c = h->queue; c; c = next) {
		next = c->next;
		json_object_put(c->body);
		free(c);
	}
	if (h->inflight) {
		json_object_put(h->inflight->body);
		json_object_put(h->inflight->early);
		free(h->inflight);
	}
	for (c = h->deferred; c; c = next) {
		next = c->next;
		json_object_put(c->body);
		free(c);
	}
	json_object_put(h->labels);
	json_object_put(h->facts);
	json_object_put(h->unmanaged);
	free(h->address);
	free(h);
}

/* Load every host from the database; each starts with a fresh heartbeat grace. */
int hosts_load(struct kerr *err)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id, name, link_key, address, state, "
					      "maintenance, labels, facts, joined_at, rx_seq, "
					      "rx_reply_seq, facts_digest FROM hosts");
	int64_t start = now_us();

	while (sqlite3_step(st) == SQLITE_ROW) {
		struct host *h = xcalloc(1, sizeof(*h));

		h->id = sqlite3_column_int64(st, 0);
		snprintf(h->name, sizeof(h->name), "%s", sqlite3_column_text(st, 1));
		if (hex_decode((const char *)sqlite3_column_text(st, 2), h->key, SEAL_KEY_LEN) <
		    0) {
			err_set(err, 0, "host %s: corrupt link key in the database", h->name);
			sqlite3_finalize(st);
			free(h);
			return -1;
		}
		h->address = xstrdup((const char *)sqlite3_column_text(st, 3));
		h->state = strcmp((const char *)sqlite3_column_text(st, 4), "online") == 0
				   ? HOST_ONLINE
				   : HOST_OFFLINE;
		h->maintenance = sqlite3_column_int(st, 5) != 0;
		h->labels = parse_or_empty((const char *)sqlite3_column_text(st, 6));
		host_facts_set(h, parse_or_empty((const char *)sqlite3_column_text(st, 7)));
		snprintf(h->facts_digest, sizeof(h->facts_digest), "%s",
			 sqlite3_column_text(st, 11));
		h->joined_at = sqlite3_column_int64(st, 8);
		/* Nothing sealed before this start is taken again (seal_replay_restore()). */
		seal_replay_restore(&h->rx, sqlite3_column_int64(st, 9), start);
		seal_replay_restore(&h->rx_reply, sqlite3_column_int64(st, 10), start);
		/* Grace: an online host has offline_after beats to show it still is. */
		h->last_seen = now_ms();
		h->req_sock = -1;
		h->next = ctl.hosts;
		ctl.hosts = h;
	}
	sqlite3_finalize(st);
	by_name_rebuild();
	return 0;
}

struct json_object *host_to_json(const struct host *h)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "name", json_object_new_string(h->name));
	json_object_object_add(o, "id", json_object_new_int64(h->id));
	json_object_object_add(o, "state", json_object_new_string(host_state_name(h->state)));
	json_object_object_add(o, "address", json_object_new_string(h->address));
	json_object_object_add(o, "maintenance", json_object_new_boolean(h->maintenance));
	json_object_object_add(o, "labels", json_object_get(h->labels));
	json_object_object_add(o, "facts", json_object_get(h->facts));
	json_object_object_add(o, "network", netsync_status_json((struct host *)h));
	json_object_object_add(o, "unmanaged",
			       h->unmanaged ? json_object_get(h->unmanaged)
					    : json_object_new_array());
	json_object_object_add(o, "joined_at", json_object_new_int64(h->joined_at));
	json_object_object_add(o, "last_seen", json_object_new_int64(h->last_seen));
	json_object_object_add(o, "heartbeat_age_ms",
			       json_object_new_int64(now_ms() - h->last_seen));
	ha_host_json(h, o); /* HA: failed, isolated, the storage lease */
	return o;
}

static void host_save(struct host *h)
{
	/* Cached: hosts_persist() saves every host every 30 s. */
	sqlite3_stmt *st =
		db_prepare_cached(ctl.db, "UPDATE hosts SET state = ?, address = ?, "
					  "facts = ?, last_seen = ?, rx_seq = ?, "
					  "rx_reply_seq = ?, facts_digest = ? WHERE id = ?");

	sqlite3_bind_text(st, 1, host_state_name(h->state), -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, h->address, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, json_text(h->facts), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 4, h->last_seen);
	sqlite3_bind_int64(st, 5, h->rx.last_seq);
	sqlite3_bind_int64(st, 6, h->rx_reply.last_seq);
	/* With the facts it describes: after a restart a digest-only beat matching it
	 * means these facts are current. */
	sqlite3_bind_text(st, 7, h->facts_digest, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 8, h->id);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("host %s: cannot save: %s", h->name, sqlite3_errmsg(ctl.db));
	db_release(st);
	h->facts_saved = now_ms();
}

static void host_state_set(struct host *h, enum host_state s, const char *why)
{
	struct json_object *ev;

	if (h->state == s)
		return;
	h->state = s;
	host_save(h);
	log_info("host %s: %s (%s)", h->name, host_state_name(s), why);
	ev = host_to_json(h);
	json_object_object_add(ev, "reason", json_object_new_string(why));
	event_emit(s == HOST_ONLINE ? "host-online" : "host-offline", ev);
	if (s != HOST_ONLINE)
		console_relay_host_offline(h->name);
}

static int addr_check(struct json_object *v, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strncmp(s, "tcp://", 6) != 0 || strlen(s) > 64)
		return err_input(err, 400, field, "'%s' must be tcp://address:port", field);
	return 0;
}

static int digest_check(struct json_object *v, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strlen(s) != LINK_FACTS_DIGEST_LEN || strspn(s, "0123456789abcdef") != strlen(s))
		return err_input(err, 400, field, "'%s' must be a hex SHA-256", field);
	return 0;
}

/* A heartbeat carries facts, or (link.h) only their digest and uptime when they are
 * unchanged; an agent from before digests always sends facts and no digest. */
static const struct json_field heartbeat_fields[] = {
	{"addr", JK_STRING, true, addr_check},
	{"facts", JK_OBJECT, false, NULL},
	{"facts_digest", JK_STRING, false, digest_check},
	{"uptime_s", JK_INT, false, NULL},
	{NULL, 0, false, NULL},
};

/*
 * The facts of a heartbeat: its own document (now h's, digest and all), or, for a
 * digest-only beat, h's facts with the new uptime. Returns the facts to use
 * (borrowed), or NULL when the beat cannot be used for facts: no document and a
 * digest that is not the one h's facts came with (a beat with the whole document was
 * lost, or the facts changed after they were last saved and the controller
 * restarted: the digest is saved with them); the agent sends the document again
 * within LINK_FACTS_FULL_S and the beat still counts for liveness.
 */
static struct json_object *heartbeat_facts(struct host *h, struct json_object *body,
					   int64_t *uptime)
{
	struct json_object *facts = json_object_object_get(body, "facts");
	const char *digest = json_get_str(body, "facts_digest", "");

	if (facts) {
		*uptime = json_get_int(facts, "uptime_s", 0);
		return facts;
	}
	*uptime = json_get_int(body, "uptime_s", 0);
	if (!h->facts_digest[0] || strcmp(digest, h->facts_digest) != 0)
		return NULL;
	return h->facts;
}

/* Network waits are checked on heartbeats at most this often (and by the cron every
 * second): during creates many hosts apply documents each second, and each check
 * looks at every waiting create. */
#define HOSTS_WAITS_CHECK_MS 250
static int64_t waits_checked_at;

/* A heartbeat arrived from h (already authenticated): refresh facts and liveness. */
void host_heartbeat(struct host *h, struct json_object *body)
{
	_cleanup_free_ char *applied_was = NULL;
	struct json_object *facts;
	struct kerr err;
	const char *addr, *applied;
	bool unchanged;
	int64_t uptime;

	if (json_fields_check(body, heartbeat_fields, &err) < 0) {
		log_warnx("host %s: malformed heartbeat: %s", h->name, err.msg);
		return;
	}
	if (!json_object_object_get(body, "facts") &&
	    !json_object_object_get(body, "facts_digest")) {
		log_warnx("host %s: malformed heartbeat: neither facts nor their digest", h->name);
		return;
	}
	addr = json_get_str(body, "addr", "");
	facts = heartbeat_facts(h, body, &uptime);
	unchanged = facts == h->facts;
	metrics_heartbeat(facts == NULL ? "unknown" : unchanged ? "unchanged" : "whole");
	/* An agent that restarted lost the commands it was still running for us. */
	if (uptime < json_get_int(h->facts, "uptime_s", 0)) {
		agentlink_deferred_fail(h, "the host's agent restarted before it answered");
		backups_agent_restarted(h);
		migrate_host_restarted(h);
	}
	if (facts == NULL) {
		/* Facts unknown here: alive, but nothing to judge from the old facts
		 * (reports, network) until the whole document comes. */
		if (h->state == HOST_ONLINE)
			h->last_seen = now_ms();
		return;
	}
	applied = json_get_str(json_object_object_get(h->facts, "network"), "applied", NULL);
	applied_was = xstrdup(applied ? applied : "");
	if (unchanged) {
		/* Unchanged: only the uptime moves, and nothing that caches on
		 * facts_version depends on it, so the version stays. */
		json_object_object_add(h->facts, "uptime_s", json_object_new_int64(uptime));
	} else {
		host_facts_set(h, json_object_get(facts));
		snprintf(h->facts_digest, sizeof(h->facts_digest), "%s",
			 json_get_str(body, "facts_digest", ""));
	}
	h->last_seen = now_ms();
	if (strcmp(addr, h->address) != 0) {
		log_info("host %s: command address is now %s", h->name, addr);
		free(h->address);
		h->address = xstrdup(addr);
		agentlink_host_disconnect(h);
		agentlink_host_connect(h);
		host_save(h);
		netsync_changed(NULL); /* peers reach it at its new address */
	}
	/* Facts due for saving wait for hosts_persist(), which writes them all in one
	 * transaction: a commit (an fsync) per host every 30 s was 167 a second at 5,000. */
	if (h->state != HOST_ONLINE) {
		host_state_set(h, HOST_ONLINE, "heartbeat received");
		/* What was deleted while it was away goes before anything else. */
		drift_tombstones_send(h);
	}
	/* The same reports against the same instances change nothing: at thousands of
	 * idle hosts, the reconcile's query was the largest cost of a heartbeat. */
	if (!unchanged || h->reconciled_generation != db_instances_generation()) {
		instances_reconcile(h, json_object_object_get(h->facts, "instances"));
		h->reconciled_generation = db_instances_generation();
	}
	netsync_heartbeat(h);
	/* An operation waiting for the network may be done now that this host applied
	 * another document (netsync.c's in_sync); the cron checks every second anyway.
	 * Checking at every heartbeat was a query per waiting create per heartbeat:
	 * thousands a second during creates at thousands of hosts. */
	applied = json_get_str(json_object_object_get(h->facts, "network"), "applied", NULL);
	if (strcmp(applied_was, applied ? applied : "") == 0)
		return;
	/* A migration's copy waits for the last of its hosts to apply, and the hosts
	 * it wired apply together: throttled, the last one's beat (ms after the others')
	 * was skipped and the copy waited for the cron, up to a second. Unthrottled, but
	 * only the migrations waiting for this very host look again (one query each). */
	migrate_net_waits_check(h);
	if (now_ms() - waits_checked_at >= HOSTS_WAITS_CHECK_MS) {
		waits_checked_at = now_ms();
		instances_net_waits_check();
	}
}

/*
 * At most this many hosts are judged offline per check (each second), in one
 * transaction. 5,000 simulated hosts at 1 s beats on a starved controller once went
 * offline together: one commit and one event each held the loop for seconds, their
 * unread beats brought them back all at once, and they flapped together. The rest
 * wait for the next check, still online (their beats may yet come).
 */
#define HOSTS_OFFLINE_BATCH 200

/*
 * Cron: a host that missed offline_after heartbeats is offline; at most
 * HOSTS_OFFLINE_BATCH of them per call. Returns how many it marked.
 */
size_t hosts_check_liveness(void)
{
	int64_t limit = (int64_t)ctl.cfg.offline_after * ctl.cfg.heartbeat_interval * 1000;
	int64_t now = now_ms();
	static int64_t last_check;
	size_t marked = 0;
	bool own = false;
	struct kerr err;

	/* After the loop stalled, heartbeats that arrived meanwhile are still unread:
	 * judge nobody this round, or every host would go offline at once. */
	if (last_check && now - last_check > 3000) {
		last_check = now;
		return 0;
	}
	last_check = now;
	for (struct host *h = ctl.hosts; h && marked < HOSTS_OFFLINE_BATCH; h = h->next) {
		if (h->state != HOST_ONLINE || now - h->last_seen <= limit)
			continue;
		if (!own && sqlite3_get_autocommit(ctl.db))
			own = db_begin(ctl.db) == 0;
		host_state_set(h, HOST_OFFLINE, "heartbeats missed");
		marked++;
	}
	if (own && db_commit(ctl.db, &err) < 0)
		log_warnx("hosts: cannot record the offline ones: %s", err.msg);
	return marked;
}

/*
 * Write last_seen and facts of every host (at shutdown) or of those due, in one
 * transaction (unless the caller has one open): one commit for all of them.
 */
void hosts_persist(bool all)
{
	int64_t now = now_ms();
	bool own = false;
	struct kerr err;

	for (struct host *h = ctl.hosts; h; h = h->next) {
		if (!all && now - h->facts_saved < HOSTS_PERSIST_MS)
			continue;
		if (!own && sqlite3_get_autocommit(ctl.db))
			own = db_begin(ctl.db) == 0;
		host_save(h);
	}
	if (own && db_commit(ctl.db, &err) < 0)
		log_warnx("hosts: cannot save their facts: %s", err.msg);
}

/*
 * Record a host that joined with key and command address, inside the caller's
 * transaction. A known name keeps its id (the same host re-keyed, never a
 * duplicate). Returns 0 and the id, or -1 with err.
 */
int host_join(const char *name, const unsigned char key[SEAL_KEY_LEN], const char *address,
	      int64_t *id, struct kerr *err)
{
	char hexkey[2 * SEAL_KEY_LEN + 1];
	struct host *h = host_find(name);
	sqlite3_stmt *st;
	bool moved;
	int rc;

	hex_encode(key, SEAL_KEY_LEN, hexkey);
	st = db_prepare(ctl.db, "INSERT INTO hosts (name, link_key, address, joined_at) "
				"VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO UPDATE SET "
				"link_key = ?2, address = ?3, joined_at = ?4");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, hexkey, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, address, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, now_ms());
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	st = db_prepare(ctl.db, "SELECT id, joined_at FROM hosts WHERE name = ?");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_ROW) {
		sqlite3_finalize(st);
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	}
	*id = sqlite3_column_int64(st, 0);
	if (h == NULL) {
		h = xcalloc(1, sizeof(*h));
		h->req_sock = -1;
		h->labels = json_object_new_object();
		host_facts_set(h, json_object_new_object());
		h->address = xstrdup("");
		h->next = ctl.hosts;
		ctl.hosts = h;
	}
	h->id = *id;
	h->joined_at = sqlite3_column_int64(st, 1);
	sqlite3_finalize(st);
	if (h->name[0] == '\0') {
		snprintf(h->name, sizeof(h->name), "%s", name);
		by_name_add(h);
	}
	memcpy(h->key, key, SEAL_KEY_LEN);
	memset(&h->rx, 0, sizeof(h->rx));
	memset(&h->rx_reply, 0, sizeof(h->rx_reply));
	moved = h->address && strcmp(h->address, address) != 0;
	free(h->address);
	h->address = xstrdup(address);
	h->last_seen = now_ms();
	agentlink_host_disconnect(h);
	agentlink_host_connect(h);
	/* A host that joins again at a new address is its instances' peers' VTEP; a new
	 * host has no instances and changes no document. */
	if (moved)
		netsync_changed(NULL);
	return 0;
}

/*
 * Forget h: its key stops working at once, its queries are answered, its unfinished
 * operations fail. The database row is the caller's.
 */
void host_remove(struct host *h)
{
	sqlite3_stmt *st;

	agentlink_queries_fail(h, "the host was removed");
	st = db_prepare(ctl.db, "SELECT id FROM operations WHERE host = ? AND "
				"status IN ('pending', 'running')");
	sqlite3_bind_text(st, 1, h->name, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		_cleanup_free_ char *id = xstrdup((const char *)sqlite3_column_text(st, 0));

		op_update(id, "failed", -1, "host removed", NULL,
			  "the host was removed from the cluster");
	}
	sqlite3_finalize(st);
	for (struct host **pp = &ctl.hosts; *pp; pp = &(*pp)->next)
		if (*pp == h) {
			*pp = h->next;
			break;
		}
	by_name_del(h);
	agentlink_host_disconnect(h);
	host_free(h);
}

/* Shutdown: free every host; unfinished operations stay for the next start. */
void hosts_free(void)
{
	free(by_name);
	by_name = NULL;
	by_name_cap = by_name_used = 0;
	free(by_id);
	by_id = NULL;
	by_id_cap = 0;
	while (ctl.hosts) {
		struct host *h = ctl.hosts;

		ctl.hosts = h->next;
		agentlink_host_disconnect(h);
		host_free(h);
	}
}
