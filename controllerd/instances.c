/*
 * instances.c - instances (VMs now, containers later) as the controller keeps them:
 * placement through the scheduler, the outcome of their operations, and what agents
 * report of them (command results, state changes, every heartbeat), with drift
 * between the database and the hosts surfaced as events.
 */
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "scheduler.h"
#include "util.h"
#include "valid.h"
#include "verbs.h"

#define REPORT_PERSIST_MS 30000
#define NET_WAIT_MS	  60000 /* an operation waits this long for its network */

/*
 * A create or start the agent finished whose instance's network is not in place yet
 * on every host it concerns: the operation stays running until it is (checked at
 * every heartbeat and cron tick), so "succeeded" means reachable.
 */
struct net_wait {
	char op[LINK_OP_ID_MAX + 1];
	char instance[64];
	struct json_object *result; /* the operation's result once it succeeds */
	int64_t deadline;
	struct net_wait *next;
};

static struct net_wait *net_waits;

static void json_putp(struct json_object **o)
{
	json_object_put(*o);
}

#define _cleanup_report_ __attribute__((cleanup(json_putp)))

static void instance_spec_save(const char *name, struct json_object *spec);

/* A commit's registry error, kept for the operation (the kerr is a local). */
static const char *commit_error(const char *msg)
{
	static char buf[256];

	snprintf(buf, sizeof(buf), "the committed image was refused: %s", msg);
	return buf;
}
static void instance_report_apply(struct host *h, struct json_object *report,
				  struct json_object *usage, const char *why);

/* Hosts as the scheduler sees them, with what is placed on each from the database. */
struct sched_view {
	struct sched_host *hosts;
	struct host **src;
	char **groups; /* flat storage for the groups arrays */
	size_t n;
};

static bool facts_pool(struct json_object *facts, const char *name)
{
	struct json_object *pools = json_object_object_get(facts, "pools");
	size_t n = pools && json_object_is_type(pools, json_type_array) ? json_array_len(pools) : 0;

	for (size_t i = 0; i < n; i++)
		if (!strcmp(json_get_str(json_object_array_get_idx(pools, i), "name", ""), name))
			return true;
	return false;
}

/*
 * What the scheduler reads of a host's facts, kept per host id and read again only
 * when its facts changed: reading them for every host on every placement was most
 * of a create's cost at 5,000 hosts.
 */
struct sched_facts {
	uint64_t version; /* the host's facts_version when read; 0: never */
	int cpus;
	int64_t memory_mb;
	bool kvm_usable, nested, shared_pool, local_pool, vxlan, vlan_8021q;
};

static struct sched_facts *facts_cache;
static size_t facts_cache_cap;

static const struct sched_facts *sched_facts_get(struct host *h)
{
	size_t id = h->id > 0 ? (size_t)h->id : 0;
	struct sched_facts *f;

	if (id >= facts_cache_cap) {
		size_t cap = facts_cache_cap ? facts_cache_cap : 64;

		while (cap <= id)
			cap *= 2;
		facts_cache = xrealloc(facts_cache, cap * sizeof(*facts_cache));
		memset(facts_cache + facts_cache_cap, 0,
		       (cap - facts_cache_cap) * sizeof(*facts_cache));
		facts_cache_cap = cap;
	}
	f = &facts_cache[id];
	if (f->version == h->facts_version && f->version != 0)
		return f;
	f->version = h->facts_version;
	f->cpus = (int)json_get_int(h->facts, "cpus", 0);
	f->memory_mb = json_get_int(h->facts, "memory_mb", 0);
	/* What the agent runs guests with (--accel may override its probe). */
	f->kvm_usable = !strcmp(json_get_str(h->facts, "accel", "tcg"), "kvm");
	f->nested = json_get_bool(h->facts, "nested", false);
	f->shared_pool = facts_pool(h->facts, "shared");
	f->local_pool = facts_pool(h->facts, "local");
	f->vxlan = json_get_bool(json_object_object_get(h->facts, "net"), "vxlan", false);
	f->vlan_8021q = json_get_bool(json_object_object_get(h->facts, "net"), "vlan_8021q", false);
	return f;
}

static void view_build(struct sched_view *v)
{
	size_t n = 0, i = 0, *by_id;
	int64_t max_id = 0;
	sqlite3_stmt *st;

	for (struct host *h = ctl.hosts; h; h = h->next)
		n++;
	v->n = n;
	v->hosts = xcalloc(n, sizeof(*v->hosts));
	v->src = xcalloc(n, sizeof(*v->src));
	v->groups = NULL;
	for (struct host *h = ctl.hosts; h; h = h->next, i++) {
		struct sched_host *s = &v->hosts[i];
		const struct sched_facts *f = sched_facts_get(h);

		v->src[i] = h;
		s->name = h->name;
		s->online = h->state == HOST_ONLINE;
		s->maintenance = h->maintenance;
		s->cpus = f->cpus;
		s->memory_mb = f->memory_mb;
		s->kvm_usable = f->kvm_usable;
		s->nested = f->nested;
		s->shared_pool = f->shared_pool;
		s->local_pool = f->local_pool;
		s->vxlan = f->vxlan;
		s->vlan_8021q = f->vlan_8021q;
	}
	/* Counters the schema's triggers keep (db.c): O(hosts), not O(instances). An
	 * instance migrating in holds its target's room already (migrate.c's
	 * temp.migrating): two migrations at once must not both count on it. */
	st = db_prepare_cached(
		ctl.db, "SELECT host_id, sum(vcpus), sum(memory_mb), group_concat(grp, char(10)), "
			"sum(n) FROM (SELECT u.host_id, u.vcpus, u.memory_mb, (SELECT "
			"group_concat(g.grp, char(10)) FROM host_groups g WHERE g.host_id = "
			"u.host_id) AS grp, u.instances AS n FROM host_usage u UNION ALL SELECT "
			"m.host_id, x.vcpus, x.memory_mb, x.anti_affinity, 1 FROM temp.migrating m "
			"JOIN instances x ON x.id = m.instance_id) GROUP BY host_id");
	v->groups = xcalloc(n ? n : 1, sizeof(char *));
	/* Host ids are SQLite rowids, dense from 1: an array finds a row's host at once
	 * (a search per row made this O(hosts x hosts) on every placement). */
	for (i = 0; i < n; i++)
		max_id = v->src[i]->id > max_id ? v->src[i]->id : max_id;
	by_id = xcalloc((size_t)max_id + 1, sizeof(*by_id));
	for (i = 0; i < n; i++)
		by_id[v->src[i]->id] = i + 1;
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t id = sqlite3_column_int64(st, 0);
		const char *g = (const char *)sqlite3_column_text(st, 3);
		struct sched_host *s;
		size_t count = 0;

		if (id < 1 || id > max_id || by_id[id] == 0)
			continue;
		i = by_id[id] - 1;
		s = &v->hosts[i];
		s->vcpus_used = sqlite3_column_int(st, 1);
		s->memory_used_mb = sqlite3_column_int64(st, 2);
		s->instances = sqlite3_column_int(st, 4);
		if (g) {
			const char **arr;
			char *p;

			/* One string, split in place: "a\nb" -> {"a", "b"}. */
			v->groups[i] = xstrdup(g);
			count = 1;
			for (p = v->groups[i]; *p; p++)
				count += *p == '\n';
			arr = xcalloc(count, sizeof(*arr));
			count = 0;
			for (p = v->groups[i];;) {
				char *nl = strchr(p, '\n');

				arr[count++] = p;
				if (nl == NULL)
					break;
				*nl = '\0';
				p = nl + 1;
			}
			s->groups = arr;
			s->ngroups = count;
		}
	}
	free(by_id);
	db_release(st);
}

static void view_free(struct sched_view *v)
{
	for (size_t i = 0; i < v->n; i++) {
		free((void *)v->hosts[i].groups);
		free(v->groups[i]);
	}
	free(v->groups);
	free(v->hosts);
	free(v->src);
}

/*
 * Choose a host for an instance needing req. Returns the host, or NULL with err
 * (422). *placement (new reference) always says why, in a bounded shape whatever the
 * cluster's size: the choice, the best few candidates with their scores, the first
 * few rejected hosts with their reasons, and how many hosts each reason rejected.
 */
struct host *instances_place(const struct sched_request *req, struct json_object **placement,
			     struct kerr *err)
{
	struct sched_params params = {
		.cpu_ratio = ctl.cfg.cpu_ratio,
		.mem_ratio = ctl.cfg.mem_ratio,
		.policy = strcmp(ctl.cfg.sched_policy, "pack") ? SCHED_SPREAD : SCHED_PACK,
	};
	struct json_object *p = json_object_new_object(), *cands = json_object_new_array();
	struct json_object *rejected = json_object_new_array(), *by = json_object_new_object();
	struct sched_outcome out;
	struct sched_view v;
	struct host *chosen = NULL;
	int best;

	view_build(&v);
	best = sched_place(req, &params, v.hosts, v.n, &out);
	for (size_t k = 0; k < out.ntop; k++) {
		struct json_object *o = json_object_new_object();
		char score[16];

		json_object_object_add(o, "host", json_object_new_string(v.hosts[out.top[k]].name));
		/* Three decimals, printed as such (a double would show its binary noise). */
		snprintf(score, sizeof(score), "%.3f", out.top_score[k]);
		json_object_object_add(o, "score",
				       json_object_new_double_s(out.top_score[k], score));
		json_object_array_add(cands, o);
	}
	for (size_t k = 0; k < out.nnamed; k++) {
		struct json_object *o = json_object_new_object();
		char reason[160];

		sched_host_fits(req, &params, &v.hosts[out.named[k]], reason, sizeof(reason));
		json_object_object_add(o, "host",
				       json_object_new_string(v.hosts[out.named[k]].name));
		json_object_object_add(o, "reason", json_object_new_string(reason));
		json_object_array_add(rejected, o);
	}
	for (int why = 0; why < SCHED_REJECT_COUNT; why++)
		if (out.rejected_by[why])
			json_object_object_add(
				by, sched_reject_name(why),
				json_object_new_int64((int64_t)out.rejected_by[why]));
	if (best >= 0)
		chosen = v.src[best];
	json_object_object_add(p, "host", chosen ? json_object_new_string(chosen->name) : NULL);
	json_object_object_add(p, "policy", json_object_new_string(ctl.cfg.sched_policy));
	json_object_object_add(p, "hosts", json_object_new_int64((int64_t)v.n));
	json_object_object_add(p, "candidates", cands);
	json_object_object_add(p, "candidates_total", json_object_new_int64((int64_t)out.nfit));
	json_object_object_add(p, "rejected", rejected);
	json_object_object_add(p, "rejected_total", json_object_new_int64((int64_t)out.nrejected));
	json_object_object_add(p, "rejected_by", by);
	*placement = p;
	if (chosen == NULL)
		err_input(err, 422, "",
			  v.n ? "no host can run this instance (see placement.rejected)"
			      : "no host has joined the cluster");
	view_free(&v);
	return chosen;
}

/* Instances placed on host id (any state); host deletion is refused while any are. */
int instances_on_host(int64_t host_id)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT count(*) FROM instances WHERE host_id = ?");
	int n;

	sqlite3_bind_int64(st, 1, host_id);
	/* Unknown counts as in use: a host is never deleted on a failed read. */
	n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 1;
	sqlite3_finalize(st);
	return n;
}

bool image_in_use(int64_t image_id)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT count(*) FROM disks WHERE image_id = ?");
	bool used;

	sqlite3_bind_int64(st, 1, image_id);
	/* Unknown counts as used: an image is never deleted on a failed read. */
	used = sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0) > 0;
	sqlite3_finalize(st);
	return used;
}

static void instance_state_set(const char *name, const char *state, struct json_object *report,
			       const char *why)
{
	sqlite3_stmt *st;
	char *old = NULL;
	int64_t updated = 0;
	bool changed;

	st = db_prepare_cached(ctl.db, "SELECT state, updated_at FROM instances WHERE name = ?");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		old = xstrdup((const char *)sqlite3_column_text(st, 0));
		updated = sqlite3_column_int64(st, 1);
	}
	db_release(st);
	if (old == NULL)
		return;
	changed = strcmp(old, state) != 0;
	/* Reports come every heartbeat; unchanged ones are written only now and then. */
	if (!changed && now_ms() - updated < REPORT_PERSIST_MS) {
		free(old);
		return;
	}
	st = db_prepare_cached(ctl.db,
			       "UPDATE instances SET state = ?, report = coalesce(?, report), "
			       "updated_at = ? WHERE name = ?");
	sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
	if (report)
		sqlite3_bind_text(st, 2, json_text(report), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 3, now_ms());
	sqlite3_bind_text(st, 4, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("instance %s: cannot save state: %s", name, sqlite3_errmsg(ctl.db));
	db_release(st);
	if (changed && strcmp(state, "running") != 0)
		console_relay_instance_stopped(name, state);
	if (changed) {
		struct json_object *ev = json_object_new_object();

		log_info("instance %s: %s -> %s (%s)", name, old, state, why);
		json_object_object_add(ev, "name", json_object_new_string(name));
		json_object_object_add(ev, "state", json_object_new_string(state));
		json_object_object_add(ev, "previous", json_object_new_string(old));
		json_object_object_add(ev, "reason", json_object_new_string(why));
		event_emit("instance-updated", ev);
	}
	free(old);
}

/*
 * Instance name runs nowhere any more and its memory is gone (a post-copy migration
 * broke, migrate.c): it becomes "missing" with why, its report emptied; its disks
 * stay, and it can be deleted or created again.
 */
void instances_lost(const char *name, const char *why)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT 1 FROM instances WHERE name = ? AND state "
					      "NOT IN ('creating', 'deleting')");
	struct json_object *empty;
	bool present;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	present = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	/* A delete under way (a forced one may cross a migration) has the last word. */
	if (!present)
		return;
	empty = json_object_new_object();
	instance_state_set(name, "missing", empty, why);
	json_object_put(empty);
}

static const char *const report_states[] = {"stopped",	"starting", "running", "paused",
					    "stopping", "crashed",  "error",   NULL};

static bool state_known(const char *state)
{
	for (size_t i = 0; report_states[i]; i++)
		if (!strcmp(report_states[i], state))
			return true;
	return false;
}

/*
 * An agent's report, cut to the fields the controller uses with the types it
 * expects: what is stored and shown later can never surprise a reader.
 * Returns a new object, or NULL when the report is unusable.
 */
static struct json_object *report_clean(struct json_object *r)
{
	static const char *const ints[] = {
		"pid",	     "started_at", "uptime_s", "balloon_actual_mb", "balloon_target_mb",
		"exit_code", "signal",	   "restarts", "rw_size",	    NULL};
	static const char *const strs[] = {"name",  "type",	    "state", "accel",
					   "error", "image_digest", NULL};
	struct json_object *out, *disks, *v;

	if (r == NULL || !json_object_is_type(r, json_type_object) ||
	    !state_known(json_get_str(r, "state", "")) || !json_get_str(r, "name", NULL))
		return NULL;
	out = json_object_new_object();
	for (size_t i = 0; strs[i]; i++)
		if (json_object_object_get_ex(r, strs[i], &v) &&
		    json_object_is_type(v, json_type_string) &&
		    json_object_get_string_len(v) < 1024)
			json_object_object_add(out, strs[i], json_object_get(v));
	for (size_t i = 0; ints[i]; i++)
		if (json_object_object_get_ex(r, ints[i], &v) &&
		    json_object_is_type(v, json_type_int))
			json_object_object_add(out, ints[i], json_object_get(v));
	if (json_object_object_get_ex(r, "oom", &v) && json_object_is_type(v, json_type_boolean))
		json_object_object_add(out, "oom", json_object_get(v));
	disks = json_object_new_array();
	if (json_object_object_get_ex(r, "disks", &v) && json_object_is_type(v, json_type_array)) {
		for (size_t i = 0; i < json_array_len(v) && i < 16; i++) {
			struct json_object *d = json_object_array_get_idx(v, i), *o;

			if (!json_object_is_type(d, json_type_object) ||
			    !json_get_str(d, "name", NULL))
				continue;
			o = json_object_new_object();
			json_object_object_add(o, "name",
					       json_object_new_string(json_get_str(d, "name", "")));
			json_object_object_add(
				o, "virtual_size",
				json_object_new_int64(json_get_int(d, "virtual_size", 0)));
			json_object_object_add(
				o, "allocated",
				json_object_new_int64(json_get_int(d, "allocated", 0)));
			json_object_array_add(disks, o);
		}
	}
	json_object_object_add(out, "disks", disks);
	return out;
}

/* An agent's report of one of its instances (already authenticated). */
void instances_report(struct host *h, struct json_object *raw, const char *why)
{
	struct json_object *report = report_clean(raw), *usage = NULL;

	if (report == NULL) {
		log_warnx("host %s: unusable report on instance '%.64s'", h->name,
			  json_object_is_type(raw, json_type_object)
				  ? json_get_str(raw, "name", "?")
				  : "?");
		return;
	}
	json_object_object_get_ex(raw, "usage", &usage);
	instance_report_apply(h, report, usage, why);
	json_object_put(report);
}

static void instance_report_apply(struct host *h, struct json_object *report,
				  struct json_object *usage, const char *why)
{
	const char *name = json_get_str(report, "name", ""),
		   *state = json_get_str(report, "state", "");
	sqlite3_stmt *st;
	int64_t host_id = -1;
	char cur[32] = "";
	size_t i;

	for (i = 0; report_states[i]; i++)
		if (!strcmp(report_states[i], state))
			break;
	if (report_states[i] == NULL) {
		log_warnx("host %s: report on instance '%.64s' has unknown state '%.32s'", h->name,
			  name, state);
		return;
	}
	/* Cached: every heartbeat runs this for each instance it reports. */
	st = db_prepare_cached(ctl.db, "SELECT host_id, state FROM instances WHERE name = ?");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		host_id = sqlite3_column_int64(st, 0);
		snprintf(cur, sizeof(cur), "%s", sqlite3_column_text(st, 1));
	}
	db_release(st);
	/* Drift: a workload the database does not place on this host. The heartbeat's
	 * list makes it the host's unmanaged list (drift.c). */
	if (host_id != h->id)
		return;
	usage_record(name, usage); /* only the host that runs it speaks for its use */
	/* While an operation creates or deletes it, the operation decides its state. */
	if (!strcmp(cur, "creating") || !strcmp(cur, "deleting"))
		return;
	instance_state_set(name, state, report, why);
}

/*
 * An operation's report is news even when the state is not (a balloon's actual size,
 * a disk's new size): stored at once, where instance_state_set() would keep an
 * unchanged state's report for the next persist. Only for an instance h runs.
 */
static void instance_report_store(struct host *h, const char *name, struct json_object *report)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "UPDATE instances SET report = ?, updated_at = ? "
					      "WHERE name = ? AND host_id = ? AND state NOT IN "
					      "('creating', 'deleting')");

	sqlite3_bind_text(st, 1, json_text(report), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, now_ms());
	sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, h->id);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("instance %s: cannot save its report: %s", name, sqlite3_errmsg(ctl.db));
	sqlite3_finalize(st);
}

/* Every heartbeat: the host's list of instances against the database. */
void instances_reconcile(struct host *h, struct json_object *reports)
{
	size_t n = reports && json_object_is_type(reports, json_type_array)
			   ? json_array_len(reports)
			   : 0;
	sqlite3_stmt *st;

	for (size_t i = 0; i < n; i++) {
		struct json_object *r = json_object_array_get_idx(reports, i);

		if (json_object_is_type(r, json_type_object))
			instances_report(h, r, "heartbeat");
	}
	drift_unmanaged_update(h, reports);
	/* Instances the database places here that the host does not know of (cached:
	 * this runs for every heartbeat). */
	st = db_prepare_cached(ctl.db, "SELECT name FROM instances WHERE host_id = ? AND state "
				       "NOT IN ('creating', 'deleting', 'missing', 'error')");
	sqlite3_bind_int64(st, 1, h->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);
		bool found = false;

		for (size_t i = 0; i < n && !found; i++)
			found = !strcmp(
				json_get_str(json_object_array_get_idx(reports, i), "name", ""),
				name);
		if (!found) {
			_cleanup_free_ char *copy = xstrdup(name);

			instance_state_set(copy, "missing", NULL, "the host does not report it");
		}
	}
	db_release(st);
}

static void snapshot_row(const char *instance, const char *snap, const char *state)
{
	sqlite3_stmt *st;

	if (state)
		st = db_prepare(ctl.db, "UPDATE snapshots SET state = ?3 WHERE name = ?2 AND "
					"instance_id = (SELECT id FROM instances WHERE name = ?1)");
	else
		st = db_prepare(ctl.db, "DELETE FROM snapshots WHERE name = ?2 AND "
					"instance_id = (SELECT id FROM instances WHERE name = ?1)");
	sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, snap, -1, SQLITE_STATIC);
	if (state)
		sqlite3_bind_text(st, 3, state, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("instance %s: cannot record snapshot %s: %s", instance, snap,
			  sqlite3_errmsg(ctl.db));
	sqlite3_finalize(st);
}

static void net_wait_free(struct net_wait *w)
{
	json_object_put(w->result);
	free(w);
}

/* Finish waiting operation w when its network is ready or its time is up; true if so. */
static bool net_wait_settle(struct net_wait *w, int64_t now)
{
	char why[300] = "";

	if (netsync_instance_ready(w->instance, why, sizeof(why))) {
		op_update(w->op, "succeeded", 100, "done", json_object_get(w->result), NULL);
		return true;
	}
	if (now < w->deadline)
		return false;
	log_warnx("instance %s: network not ready after %d s: %s", w->instance, NET_WAIT_MS / 1000,
		  why);
	op_update(w->op, "failed", -1, "failed", json_object_get(w->result), why);
	return true;
}

/* Hold operation id (its result consumed) until instance's network is ready. */
static void net_wait_add(const char *id, const char *instance, struct json_object *result)
{
	struct net_wait *w = xcalloc(1, sizeof(*w));

	snprintf(w->op, sizeof(w->op), "%s", id);
	snprintf(w->instance, sizeof(w->instance), "%s", instance);
	w->result = result;
	w->deadline = now_ms() + NET_WAIT_MS;
	if (net_wait_settle(w, now_ms())) {
		net_wait_free(w);
		return;
	}
	/* A resent operation reports again: the newer wait replaces the older. */
	for (struct net_wait **pp = &net_waits; *pp; pp = &(*pp)->next)
		if (!strcmp((*pp)->op, id)) {
			struct net_wait *old = *pp;

			*pp = old->next;
			net_wait_free(old);
			break;
		}
	log_debug("operation %s: waiting for the network of %s", id, instance);
	op_update(id, "running", 95, "waiting for the network", NULL, NULL);
	w->next = net_waits;
	net_waits = w;
}

/* Heartbeats and cron: finish the operations whose network is ready or overdue. */
void instances_net_waits_check(void)
{
	int64_t now = now_ms();

	for (struct net_wait **pp = &net_waits; *pp;) {
		struct net_wait *w = *pp;

		if (net_wait_settle(w, now)) {
			*pp = w->next;
			net_wait_free(w);
		} else {
			pp = &w->next;
		}
	}
}

/* Shutdown: forget the waits; their operations resume (resent) at the next start. */
void instances_net_waits_free(void)
{
	while (net_waits) {
		struct net_wait *w = net_waits;

		net_waits = w->next;
		net_wait_free(w);
	}
}

/*
 * An instance operation finished on its host (or was refused: h NULL). Applies the
 * outcome to the instance, then finishes the operation with the agent's result (and,
 * for a create, the placement that put the instance where it is).
 */
int instances_op_done(struct host *h, struct json_object *op, const char *status,
		      struct json_object *result, const char *error)
{
	const char *kind = json_object_get_string(json_object_object_get(op, "kind"));
	const char *target = json_object_get_string(json_object_object_get(op, "target"));
	const char *id = json_object_get_string(json_object_object_get(op, "id"));
	const char *action = kind + strlen("instance-");
	const char *name = strncmp(target, "instances/", 10) == 0 ? target + 10 : target;
	struct json_object *args =
		json_object_object_get(json_object_object_get(op, "result"), "args");
	_cleanup_report_ struct json_object *report =
		result ? report_clean(json_object_object_get(result, "instance")) : NULL;
	struct json_object *final = result ? json_object_get(result) : json_object_new_object();
	const char *snap = json_get_str(args, "snapshot", NULL);
	bool ok = !strcmp(status, "succeeded");
	/* A create cancelled (or timed out) was undone on the host: the name is free. */
	bool undone =
		!ok && !strcmp(action, "create") &&
		(json_get_str(op, "cancel", NULL) || json_object_object_get(result, "undone"));
	_cleanup_free_ char *iname = xstrdup(name);
	/* A create's outcome - the state and its event, the step, the operation's end and
	 * its event - is one transaction, not four commits. Other kinds may open their
	 * own (backups.c, oci_store.c), so they keep theirs. */
	bool own = !strcmp(action, "create") && sqlite3_get_autocommit(ctl.db) &&
		   db_begin(ctl.db) == 0;
	struct json_object *ev;
	struct kerr err;
	sqlite3_stmt *st;
	int rc;

	if ((ok && !strcmp(action, "delete")) || undone) {
		st = db_prepare(ctl.db, "DELETE FROM instances WHERE name = ?");
		sqlite3_bind_text(st, 1, iname, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		usage_forget(iname);
		if (rc != SQLITE_DONE)
			log_warnx("instance %s: cannot remove its row: %s", iname,
				  sqlite3_errmsg(ctl.db));
		ev = json_object_new_object();
		json_object_object_add(ev, "name", json_object_new_string(iname));
		event_emit("instance-deleted", ev);
		/* Its addresses went with it: the hosts drop what it used. */
		netsync_changed(h ? h : host_find(json_get_str(op, "host", "")));
	} else {
		if (!strcmp(action, "create") || !strcmp(action, "delete")) {
			/* Leave the creating/deleting hold: the result decides. */
			const char *st_new = ok ? json_get_str(report, "state", "stopped")
						: (!strcmp(action, "create") ? "error" : "stopped");

			if (!ok && report)
				st_new = json_get_str(report, "state", st_new);
			instance_state_set(iname, st_new, report, ok ? action : "operation failed");
		} else if (report && h) {
			instance_report_apply(h, report, NULL, action);
			instance_report_store(h, iname, report);
		}
		if (ok && !strcmp(action, "commit")) {
			/* The agent wrote the new blobs; the registry takes the tag once it has
			 * checked the manifest and every blob it names. */
			struct json_object *img = json_object_object_get(result, "image");
			struct kerr cerr;

			if (oci_image_record_stored(json_get_str(img, "repo", ""),
						    json_get_str(img, "tag", ""),
						    json_get_str(img, "manifest", ""), &cerr) < 0) {
				ok = false;
				error = cerr.msg[0] ? commit_error(cerr.msg)
						    : "the committed image is not valid";
			}
		}
		if (ok && !strcmp(action, "update") && json_object_object_get(args, "changes"))
			instance_spec_save(iname, json_object_object_get(args, "changes"));
		if (snap && !strcmp(action, "snapshot-create"))
			snapshot_row(iname, snap, ok ? "ready" : NULL);
		if (snap && !strcmp(action, "snapshot-delete") && ok)
			snapshot_row(iname, snap, NULL);
	}
	/* Only a create placed the instance: other results carry their own data only. */
	if (!strcmp(action, "create")) {
		st = db_prepare(ctl.db, "SELECT placement FROM instances WHERE name = ?");
		sqlite3_bind_text(st, 1, iname, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW) {
			struct json_object *p =
				json_tokener_parse((const char *)sqlite3_column_text(st, 0));

			if (p)
				json_object_object_add(final, "placement", p);
		}
		sqlite3_finalize(st);
	}
	if (args)
		json_object_object_add(final, "args", json_object_get(args));
	/* backups.c: a backup's row settles with its operation */
	if (!strcmp(action, "backup"))
		backups_op_done(id, ok, result, error);
	if (ok &&
	    (!strcmp(action, "create") || !strcmp(action, "start") || !strcmp(action, "restart"))) {
		/* Done on the host; a cancel from now on undoes it whole (jobs.c). */
		op_step_set(id, "agent-done");
		net_wait_add(id, iname, final);
	} else {
		op_update(id, ok ? "succeeded" : "failed", ok ? 100 : -1, ok ? "done" : "failed",
			  final, ok ? NULL : (error ? error : "the agent reported a failure"));
	}
	if (own && db_commit(ctl.db, &err) < 0)
		log_warnx("instance %s: cannot record the %s's outcome: %s", iname, action,
			  err.msg);
	return 0;
}

/*
 * A create was cancelled, but its host finished it before a safe point came: undo it
 * whole by deleting the instance (forced) under a new operation on h, whose id goes
 * to del_id. Returns 0, or -1 with err.
 */
int instances_create_undo(struct host *h, const char *name, char *del_id, size_t len,
			  struct kerr *err)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", name);
	struct json_object *spec = NULL, *args, *res, *op;
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT spec FROM instances WHERE name = ?");

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (spec == NULL)
		return err_set(err, 0, "instance %s has no record to delete", name);
	args = json_object_new_object();
	json_object_object_add(args, "keep_disks", json_object_new_boolean(false));
	json_object_object_add(args, "force", json_object_new_boolean(true));
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_get(args));
	op = op_create("instance-delete", target, h, res, err);
	if (op == NULL) {
		json_object_put(args);
		json_object_put(spec);
		return -1;
	}
	snprintf(del_id, len, "%s", json_get_str(op, "id", ""));
	instance_state_set(name, "deleting", NULL, "cancelled create");
	instances_cmd_send(h, del_id, "delete", spec, args);
	json_object_put(op);
	json_object_put(args);
	json_object_put(spec);
	return 0;
}

/* MiB the scheduler counts for a container without a limit. */
#define CONTAINER_DEFAULT_MEMORY 64

/* What the scheduler counts for a container: its limits, or a nominal share. */
void container_sched_request(struct json_object *spec, struct sched_request *sr)
{
	struct json_object *limits = json_object_object_get(spec, "limits");
	struct json_object *cpus = json_object_object_get(limits, "cpus");
	double c = cpus ? json_object_get_double(cpus) : 1;

	sr->vcpus = c > (int)c ? (int)c + 1 : (int)c;
	sr->memory_mb = json_get_int(limits, "memory_mb", CONTAINER_DEFAULT_MEMORY);
	sr->needs_shared_pool = true; /* its image's layers are read from there */
}

/* Instance id is being deleted (in the delete operation's transaction). 0 or -1. */
int instance_state_deleting(int64_t id, struct kerr *err)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, "UPDATE instances SET state = 'deleting' WHERE id = ?");
	int rc;

	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "cannot record the delete: %s", sqlite3_errmsg(ctl.db));
	return 0;
}

/*
 * Record snapshot name of instance id as being taken (in the snapshot operation's
 * transaction). Returns 0, or -1 with err.
 */
int instance_snapshot_insert(int64_t id, const char *name, bool with_memory, struct kerr *err)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "INSERT INTO snapshots (instance_id, name, "
					      "with_memory, created_at) VALUES (?, ?, ?, ?)");
	int rc;

	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, with_memory);
	sqlite3_bind_int64(st, 4, now_ms());
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "cannot record snapshot %s: %s", name,
			       sqlite3_errmsg(ctl.db));
	return 0;
}

/*
 * Set the desired state of instance id (inside the caller's transaction: an action's
 * operation and its desired state commit together). Returns 0, or -1 with err.
 */
int instance_desired_set(int64_t id, const char *desired, struct kerr *err)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "UPDATE instances SET desired = ? WHERE id = ?");
	int rc;

	sqlite3_bind_text(st, 1, desired, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "cannot record the desired state: %s",
			       sqlite3_errmsg(ctl.db));
	return 0;
}

/* Is instance name a tombstone: held by a forced delete waiting for its host? */
bool instance_tombstoned(const char *name)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", name);
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT result FROM operations WHERE target = ? "
					      "AND kind = 'instance-delete' AND status IN "
					      "('pending', 'running')");
	bool found = false;

	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	while (!found && sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *r =
			json_tokener_parse((const char *)sqlite3_column_text(st, 0));

		found = drift_tombstone_result(r);
		json_object_put(r);
	}
	sqlite3_finalize(st);
	return found;
}

/* The instance as the API shows it; with_history adds its last operations. */
struct json_object *instance_get_json(const char *name, bool with_history)
{
	/* Cached: a page of the list runs it for each of its instances. */
	sqlite3_stmt *st = db_prepare_cached(ctl.db, "SELECT i.name, i.type, i.state, i.desired, "
						     "h.name, i.spec, i.report, i.placement, "
						     "i.created_at, i.updated_at FROM instances i "
						     "LEFT JOIN hosts h ON h.id = i.host_id WHERE "
						     "i.name = ?");
	struct json_object *o = NULL, *spec, *report, *disks, *rdisks, *sdisks;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_ROW) {
		db_release(st);
		return NULL;
	}
	o = json_object_new_object();
	spec = json_tokener_parse((const char *)sqlite3_column_text(st, 5));
	report = json_tokener_parse((const char *)sqlite3_column_text(st, 6));
	json_object_object_add(o, "name",
			       json_object_new_string((const char *)sqlite3_column_text(st, 0)));
	json_object_object_add(o, "type",
			       json_object_new_string((const char *)sqlite3_column_text(st, 1)));
	json_object_object_add(o, "state",
			       json_object_new_string((const char *)sqlite3_column_text(st, 2)));
	json_object_object_add(
		o, "tombstone",
		json_object_new_boolean(
			!strcmp((const char *)sqlite3_column_text(st, 2), "deleting") &&
			instance_tombstoned(name)));
	json_object_object_add(o, "desired",
			       json_object_new_string((const char *)sqlite3_column_text(st, 3)));
	json_object_object_add(
		o, "host",
		sqlite3_column_type(st, 4) == SQLITE_TEXT
			? json_object_new_string((const char *)sqlite3_column_text(st, 4))
			: NULL);
	static const char *const vm_keys[] = {"vcpus", "memory", "nested",	  "accel", "nics",
					      "boot",  "labels", "anti_affinity", "ha",	   NULL};
	static const char *const ct_keys[] = {
		"image",  "command",	   "env",	   "workdir", "limits", "restart", "nics",
		"labels", "anti_affinity", "capabilities", "userns",  "ha",	NULL};
	bool container = !strcmp((const char *)sqlite3_column_text(st, 1), "container");

	for (const char *const *k = container ? ct_keys : vm_keys; *k; k++) {
		struct json_object *v = json_object_object_get(spec, *k);

		json_object_object_add(o, *k, v ? json_object_get(v) : NULL);
	}
	/* The grace a stop without timeout_s gets: the instance's, or its type's. */
	json_object_object_add(
		o, "stop_timeout_s",
		json_object_new_int64(json_get_int(
			spec, "stop_timeout_s",
			verb_timeout_default(VERB_STOP, container ? INST_CONTAINER : INST_VM))));
	/* Disks (VMs): what was asked for, with sizes as the host last reported them. */
	disks = json_object_new_array();
	rdisks = json_object_object_get(report, "disks");
	sdisks = json_object_object_get(spec, "disks");
	for (size_t i = 0; sdisks && i < json_array_len(sdisks); i++) {
		struct json_object *d = json_object_array_get_idx(sdisks, i);
		struct json_object *out = json_object_new_object(),
				   *img = json_object_object_get(d, "image");
		const char *dn = json_get_str(d, "name", "");

		json_object_object_add(out, "name", json_object_new_string(dn));
		json_object_object_add(out, "bus",
				       json_object_new_string(json_get_str(d, "bus", "")));
		json_object_object_add(out, "pool",
				       json_object_new_string(json_get_str(d, "pool", "")));
		json_object_object_add(out, "size_mb",
				       json_object_new_int64(json_get_int(d, "size_mb", 0)));
		json_object_object_add(out, "image",
				       img ? json_object_new_string(json_get_str(img, "name", ""))
					   : NULL);
		json_object_object_add(out, "clone",
				       img ? json_object_new_string(json_get_str(d, "clone", ""))
					   : NULL);
		for (size_t j = 0; rdisks && j < json_array_len(rdisks); j++) {
			struct json_object *r = json_object_array_get_idx(rdisks, j);

			if (!strcmp(json_get_str(r, "name", ""), dn)) {
				json_object_object_add(
					out, "virtual_size",
					json_object_new_int64(json_get_int(r, "virtual_size", 0)));
				json_object_object_add(
					out, "allocated",
					json_object_new_int64(json_get_int(r, "allocated", 0)));
			}
		}
		json_object_array_add(disks, out);
	}
	if (container)
		json_object_put(disks);
	else
		json_object_object_add(o, "disks", disks);
	json_object_object_add(
		o, "uptime_s",
		json_object_new_int64(!strcmp(json_get_str(report, "state", ""), "running")
					      ? json_get_int(report, "uptime_s", 0)
					      : 0));
	json_object_object_add(o, "pid", json_object_get(json_object_object_get(report, "pid")));
	json_object_object_add(
		o, "balloon_actual_mb",
		json_object_get(json_object_object_get(report, "balloon_actual_mb")));
	/* The balloon target last set (PATCH memory.target_mb), as the host reports it. */
	json_object_object_add(
		o, "balloon_target_mb",
		json_object_get(json_object_object_get(report, "balloon_target_mb")));
	json_object_object_add(o, "error",
			       json_object_get(json_object_object_get(report, "error")));
	if (container)
		for (const char *const *k =
			     (const char *const[]){"exit_code", "signal", "restarts",
						   "image_digest", "rw_size", "oom", NULL};
		     *k; k++)
			json_object_object_add(o, *k,
					       json_object_get(json_object_object_get(report, *k)));
	json_object_object_add(o, "placement",
			       json_tokener_parse((const char *)sqlite3_column_text(st, 7)));
	json_object_object_add(o, "created_at", json_object_new_int64(sqlite3_column_int64(st, 8)));
	json_object_object_add(o, "updated_at", json_object_new_int64(sqlite3_column_int64(st, 9)));
	db_release(st);
	json_object_put(spec);
	json_object_put(report);
	if (with_history) {
		_cleanup_free_ char *target = xasprintf("instances/%s", name);
		struct json_object *ops = json_object_new_array();

		st = db_prepare(ctl.db, "SELECT id FROM operations WHERE target = ? "
					"ORDER BY created_at DESC, rowid DESC LIMIT 20");
		sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
		while (sqlite3_step(st) == SQLITE_ROW) {
			struct json_object *op = op_get((const char *)sqlite3_column_text(st, 0));

			if (op) {
				json_object_object_del(op, "result");
				json_object_array_add(ops, op);
			}
		}
		sqlite3_finalize(st);
		json_object_object_add(o, "operations", ops);
	}
	return o;
}

/*
 * Apply validated resource changes {vcpus?, memory?, disks?: [{name, size_mb}]} to a
 * spec in place. The changes, not the whole spec, travel in an operation's result,
 * which viewers can read; the spec holds cloud-init user data they must not.
 */
void instance_spec_apply(struct json_object *spec, struct json_object *changes)
{
	struct json_object *v, *disks = json_object_object_get(spec, "disks");

	if (json_object_object_get_ex(changes, "vcpus", &v))
		json_object_object_add(spec, "vcpus", json_object_get(v));
	if (json_object_object_get_ex(changes, "memory", &v))
		json_object_object_add(spec, "memory", json_object_get(v));
	if (!json_object_object_get_ex(changes, "disks", &v) || disks == NULL)
		return;
	for (size_t i = 0; i < json_array_len(v); i++) {
		struct json_object *want = json_object_array_get_idx(v, i);

		for (size_t j = 0; j < json_array_len(disks); j++) {
			struct json_object *d = json_object_array_get_idx(disks, j);

			if (!strcmp(json_get_str(d, "name", ""), json_get_str(want, "name", "")))
				json_object_object_add(
					d, "size_mb",
					json_object_new_int64(json_get_int(want, "size_mb", 0)));
		}
	}
}

static struct json_object *instance_spec_load(const char *name)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT spec FROM instances WHERE name = ?");
	struct json_object *spec = NULL;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return spec;
}

/* An update succeeded: the new spec and its resources become the instance's. */
static void instance_spec_save(const char *name, struct json_object *changes)
{
	struct json_object *spec = instance_spec_load(name);

	if (spec == NULL)
		return;
	instance_spec_apply(spec, changes);
	struct json_object *m = json_object_object_get(spec, "memory");
	sqlite3_stmt *st = db_prepare(ctl.db, "UPDATE instances SET spec = ?, vcpus = ?, "
					      "memory_mb = ? WHERE name = ?");

	sqlite3_bind_text(st, 1, json_text(spec), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, json_get_int(spec, "vcpus", 1));
	sqlite3_bind_int64(st, 3, json_get_int(m, "mb", json_get_int(m, "max_mb", 0)));
	sqlite3_bind_text(st, 4, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("instance %s: cannot save its new spec: %s", name,
			  sqlite3_errmsg(ctl.db));
	sqlite3_finalize(st);
	json_object_put(spec);
}

/*
 * Send instance operation op_id (ACTION on spec) to h. The operation's args are
 * what users see; the agent gets only what it takes for the action: an update's
 * changes are already in spec, a snapshot delete needs only the name.
 */
void instances_cmd_send(struct host *h, const char *op_id, const char *action,
			struct json_object *spec, struct json_object *args)
{
	struct json_object *body = json_object_new_object(), *a = json_object_new_object(), *v;

	if (!strcmp(action, "update")) {
		/* nothing: the new spec says it all */
	} else if (!strncmp(action, "snapshot-", 9)) {
		if (json_object_object_get_ex(args, "snapshot", &v))
			json_object_object_add(a, "snapshot", json_object_get(v));
		if (strcmp(action, "snapshot-delete") &&
		    json_object_object_get_ex(args, "with_memory", &v))
			json_object_object_add(a, "with_memory", json_object_get(v));
	} else if (args) {
		json_object_put(a);
		a = json_object_get(args);
	}
	json_object_object_add(body, "action", json_object_new_string(action));
	json_object_object_add(body, "instance", json_object_get(spec));
	json_object_object_add(body, "args", a);
	{
		/* The agent keeps the job's deadline too (agentd/job.c): what is left of it,
		 * so the two clocks need not agree. */
		struct json_object *op = op_get(op_id);
		int64_t deadline = json_get_int(op, "deadline", 0);

		if (deadline > 0)
			json_object_object_add(body, "timeout_ms",
					       json_object_new_int64(deadline > now_ms()
									     ? deadline - now_ms()
									     : 1));
		json_object_put(op);
	}
	agentlink_cmd_send(h, LINK_CMD_INSTANCE, op_id, body);
}

/*
 * Send h the delete of tombstoned instance operation op_id (args as the operation
 * holds them) ahead of its other commands. Returns 0, or -1 when the instance is
 * gone from the database.
 */
int instances_op_send_first(struct host *h, const char *op_id, struct json_object *args)
{
	struct json_object *op = op_get(op_id), *spec = NULL, *body;
	const char *target = op ? json_get_str(op, "target", "") : "";
	sqlite3_stmt *st;

	if (strncmp(target, "instances/", 10) == 0) {
		st = db_prepare(ctl.db, "SELECT spec FROM instances WHERE name = ?");
		sqlite3_bind_text(st, 1, target + 10, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW)
			spec = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
	}
	json_object_put(op);
	if (spec == NULL)
		return -1;
	body = json_object_new_object();
	json_object_object_add(body, "action", json_object_new_string("delete"));
	json_object_object_add(body, "instance", spec);
	json_object_object_add(body, "args",
			       args ? json_object_get(args) : json_object_new_object());
	agentlink_cmd_send_first(h, LINK_CMD_INSTANCE, op_id, body);
	return 0;
}

/*
 * Controller restart: resend an instance operation that was in flight. The agent
 * runs an operation id once, so a command it already finished only reports again.
 */
int instances_op_resend(struct host *h, const char *id, const char *kind,
			struct json_object *result)
{
	const char *target_name;
	struct json_object *op = op_get(id), *spec = NULL, *wire;
	struct json_object *args = json_object_object_get(result, "args");
	sqlite3_stmt *st;
	struct kerr err;

	if (op == NULL || strncmp(kind, "instance-", 9)) {
		json_object_put(op);
		return -1;
	}
	target_name =
		json_object_get_string(json_object_object_get(op, "target")) + strlen("instances/");
	st = db_prepare(ctl.db, "SELECT spec FROM instances WHERE name = ?");
	sqlite3_bind_text(st, 1, target_name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (spec == NULL) {
		json_object_put(op);
		return -1;
	}
	if (json_object_object_get(args, "changes"))
		instance_spec_apply(spec, json_object_object_get(args, "changes"));
	/* A backup's or a restore's encrypted store key is in the command only, never in
	 * the operation's args: added again here (backups.c). */
	wire = args ? backup_cmd_args(args, &err) : NULL;
	if (args && wire == NULL) {
		log_warnx("operation %s: %s", id, err.msg);
		wire = json_object_get(args);
	}
	instances_cmd_send(h, id, kind + 9, spec, wire);
	json_object_put(wire);
	json_object_put(spec);
	json_object_put(op);
	return 0;
}
