/*
 * ha.c - high availability: which instances are HA, which hosts have failed, and the
 * failover that restarts a failed host's HA instances elsewhere.
 *
 * Two independent signals judge a host (README "High availability" has the timeline):
 *   - heartbeats over the agent link (hosts.c keeps h->last_seen);
 *   - its storage lease on the shared pool (common/lease.h), read here every second
 *     off the loop; the time a lease's counter last moved is noted on this process's
 *     monotonic clock.
 * Per host, every second:
 *   ok        heartbeats arrive;
 *   isolated  no heartbeat for ha_detect_s, but the lease still moves: the host lives
 *             and reaches the pool, so nothing is restarted (its fencer fences it if
 *             it has lost the controller for good);
 *   failed    no heartbeat for ha_detect_s and the lease silent for ha_lease_s;
 *   fenced    failed, and the lease silent for its expiry: at least the host's own
 *             fence deadline plus LEASE_MARGIN_MS, so its fencer has killed its HA
 *             workloads. Only now are they restarted elsewhere, in priority order,
 *             each through the scheduler as an instance-create operation whose
 *             args.failover holds the timeline; the old placement is recorded in
 *             ha_fences.
 *   unprotected  heartbeats stopped and the host never wrote a lease: nothing can
 *             prove it fenced, so nothing is restarted.
 *   maintenance  the host is in maintenance and every HA instance it ran has been
 *             handed off (below): its lease is released, so its agent stopping is
 *             no failure and nothing is restarted.
 *
 * Planned maintenance hand-off: a host put into maintenance gives its HA instances
 * (desired running) away, one at a time each, driven from the same second's judge:
 * a running VM by a live migration (migrate.c); what cannot move live (a container,
 * a VM that is not running or whose migration failed) is stopped cleanly on the old
 * host, dropped there keeping its disks, and only then created and started on a host
 * the scheduler picks. At no moment do two copies run, and no fence is involved:
 * the old host lives and does what it is told. Only when nothing HA is left there
 * does the view list the host as released; its agent then writes one last lease
 * record saying so and stops renewing. Leaving maintenance drops it from the list:
 * the agent renews again (re-armed). A host that dies during its hand-off is judged
 * as any other host: its lease is still armed, so it is failed over.
 * Non-HA instances of a failed host show state "unknown" until it reports again.
 *
 * The list of HA instances ({shared}/ha/instances.json) is written here whenever it
 * may have changed, so agents (and through them their fencers) know what to fence
 * without a new link message.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "controllerd.h"
#include "scheduler.h"
#include "lease.h"
#include "log.h"
#include "util.h"
#include "valid.h"

#define HA_RETRY_MS 10000 /* a failover that found no host is tried again after this */

enum ha_state {
	HA_OK,
	HA_ISOLATED,
	HA_FAILED,
	HA_FENCED,
	HA_UNPROTECTED,
	HA_MAINTENANCE
};

static const char *const ha_state_names[] = {"ok",     "isolated",    "failed",
					     "fenced", "unprotected", "maintenance"};

/* What ha.c knows of one host, by name (a host re-joining keeps its name). */
struct ha_host {
	char name[64];
	bool lease_seen;
	struct lease_record lease;
	int64_t advanced_mono; /* when the counter last moved (lease_mono_ms) */
	enum ha_state state;
	int64_t detected_ms; /* wall clock: when it became failed */
	int64_t fenced_ms;   /* ... and fenced */
	int64_t retry_mono;  /* next failover attempt */
	bool forget_pending; /* ha_fences may hold rows for this host */
	bool released;	     /* maintenance, all handed off: listed in the view */
};

/* One HA instance being handed off from a host in maintenance. */
enum handoff_step {
	HANDOFF_MIGRATE, /* a live migration (op) is running */
	HANDOFF_STOP,	 /* a clean stop on the old host (op) */
	HANDOFF_DROP,	 /* the old host drops it, keeping its disks (op) */
	HANDOFF_PLACE,	 /* stopped and dropped: to be created elsewhere */
	HANDOFF_WAIT	 /* a step failed: tried again at retry_mono */
};

/* As ha_handoffs.step holds them. */
static const char *const handoff_step_names[] = {"migrate", "stop", "drop", "place", "wait"};

struct handoff {
	int64_t iid;
	char name[NAME_MAX_LEN + 1];
	char host[64];
	char op[LINK_OP_ID_MAX + 1];
	enum handoff_step step;
	int64_t retry_mono;
	bool cold; /* live is out: stop and start */
	struct handoff *next;
};

/*
 * A replacement made ready during a failed host's fence wait: created on its new host
 * with start=false (run directory, seed, spec; the disks adopted, not opened), so that
 * at the lease's expiry only the start is left to send. Nothing of it runs: no QEMU,
 * no runc, until the failover resends the very same spec with start=true (the agent's
 * create of an existing instance with an equal spec only starts it).
 */
struct prepared {
	int64_t iid;
	char name[NAME_MAX_LEN + 1];
	char from[64]; /* the failed host */
	char to[64];   /* the host it is created on */
	char op[LINK_OP_ID_MAX + 1];
	int64_t since_mono;
	bool removing;		       /* drop it once its create has ended */
	struct json_object *spec;      /* exactly as sent */
	struct json_object *placement; /* the scheduler's reasons, for the failover's op */
	struct prepared *next;
};

/* A lease read in flight: the names asked for, the records found. */
struct lease_read {
	uv_work_t req;
	char pool[4096];
	size_t n;
	char (*names)[64];
	struct lease_record *recs;
	bool *found;
};

/* A rewrite of the HA list or of the view in flight. */
struct list_write {
	uv_work_t req;
	char *path;
	char *text;
	bool view; /* the view (replaced, not synced: rewritten every second) */
};

static struct ha_host *hh;
static size_t hh_n, hh_cap;
static bool read_busy, list_dirty = true, list_busy, view_busy;
static int64_t view_counter;
static struct handoff *handoffs;
static struct prepared *prepareds;
static bool loaded; /* ha_handoffs and ha_released read back after a restart */

/*
 * hh is indexed by name in an open-addressing table of positions (position + 1; 0 is
 * empty), kept at most half full. Every lease read looks up every host: a linear
 * search made that O(hosts^2) a round (21% of the controller at 5,000 hosts).
 * Entries are never removed, so there are no tombstones.
 */
static size_t *hh_index;
static size_t hh_index_cap;

static size_t name_hash(const char *s)
{
	size_t h = 14695981039346656037ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static size_t index_slot(const char *name)
{
	size_t i = name_hash(name) & (hh_index_cap - 1);

	while (hh_index[i] && strcmp(hh[hh_index[i] - 1].name, name) != 0)
		i = (i + 1) & (hh_index_cap - 1);
	return i;
}

static void index_grow(void)
{
	hh_index_cap = hh_index_cap ? hh_index_cap * 2 : 64;
	free(hh_index);
	hh_index = xcalloc(hh_index_cap, sizeof(*hh_index));
	for (size_t k = 0; k < hh_n; k++)
		hh_index[index_slot(hh[k].name)] = k + 1;
}

static struct ha_host *ha_host_find(const char *name)
{
	size_t i;

	if (hh_index_cap == 0)
		return NULL;
	i = index_slot(name);
	return hh_index[i] ? &hh[hh_index[i] - 1] : NULL;
}

static struct ha_host *ha_host_get(const char *name)
{
	struct ha_host *x = ha_host_find(name);

	if (x)
		return x;
	if (hh_n == hh_cap) {
		hh_cap = hh_cap ? hh_cap * 2 : 16;
		hh = xrealloc(hh, hh_cap * sizeof(*hh));
	}
	x = &hh[hh_n];
	memset(x, 0, sizeof(*x));
	snprintf(x->name, sizeof(x->name), "%s", name);
	x->advanced_mono = lease_mono_ms();
	x->forget_pending = true; /* rows from before a restart */
	hh_n++;
	if (2 * hh_n > hh_index_cap)
		index_grow(); /* places the new entry too */
	else
		hh_index[index_slot(x->name)] = hh_n;
	return x;
}

/* ---- the "ha" field of instances ---- */

static const struct json_field ha_fields[] = {
	{"enabled", JK_BOOL, true, NULL},
	{"priority", JK_INT, false, NULL},
	{NULL, 0, false, NULL},
};

/*
 * Field check of "ha" in a create or PATCH body: {"enabled": bool, "priority":
 * 0-100}. Returns 0 or -1 with err (400).
 */
int ha_field_check(struct json_object *v, const char *f, struct kerr *err)
{
	struct json_object *p;

	if (json_fields_check_in(v, ha_fields, f, err) < 0)
		return -1;
	if (json_object_object_get_ex(v, "priority", &p)) {
		int64_t n = json_object_get_int64(p);

		if (n < 0 || n > 100)
			return err_input(err, 400, "ha.priority", "'ha.priority' must be 0..100");
	}
	return 0;
}

/*
 * Set spec's "ha" from a checked body field (NULL: not HA), normalised to
 * {"enabled", "priority"} (priority 50 unless given). An HA instance must have every
 * disk on the shared pool, or another host could not run it: 422 naming the first
 * disk that is not. Containers have no disks; their writable layer is lost in a
 * failover (they restart from their image). Returns 0 or -1 with err.
 */
int ha_spec_set(struct json_object *spec, struct json_object *ha, struct kerr *err)
{
	struct json_object *disks = json_object_object_get(spec, "disks"), *o;
	bool enabled = ha && json_get_bool(ha, "enabled", false);
	size_t n = disks ? json_array_len(disks) : 0;

	for (size_t i = 0; enabled && i < n; i++) {
		struct json_object *d = json_object_array_get_idx(disks, i);

		if (strcmp(json_get_str(d, "pool", "shared"), "shared"))
			return err_input(err, 422, "ha",
					 "disk %s is on pool %s: an HA instance needs every "
					 "disk on the shared pool",
					 json_get_str(d, "name", "?"),
					 json_get_str(d, "pool", "?"));
	}
	o = json_object_new_object();
	json_object_object_add(o, "enabled", json_object_new_boolean(enabled));
	json_object_object_add(o, "priority",
			       json_object_new_int((int)json_get_int(ha, "priority", 50)));
	json_object_object_add(spec, "ha", o);
	ha_list_changed();
	return 0;
}

/* ---- the HA list on the pool ---- */

static void list_write_work(uv_work_t *req)
{
	struct list_write *w = req->data;
	_cleanup_free_ char *dir = xstrdup(w->path);
	char *slash = strrchr(dir, '/');
	int ret;

	if (slash)
		*slash = '\0';
	mkdir_p(dir, 0755);
	ret = w->view ? file_write_replace(w->path, w->text, strlen(w->text), 0644)
		      : file_write_atomic(w->path, w->text, strlen(w->text), 0644);
	if (ret < 0) {
		errno = -ret;
		log_warn("ha: cannot write %s", w->path);
		free(w->text);
		w->text = NULL; /* tells the callback to try again */
	}
}

static void list_write_done(uv_work_t *req, int status)
{
	struct list_write *w = req->data;

	(void)status;
	if (w->view) {
		view_busy = false;
	} else {
		list_busy = false;
		if (w->text == NULL)
			list_dirty = true;
	}
	free(w->path);
	free(w->text);
	free(w);
}

/* The HA list may have changed (an instance created, patched, moved or deleted):
 * the next cron rewrites it. */
void ha_list_changed(void)
{
	list_dirty = true;
}

static void list_write_start(void)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT i.name, h.name, i.spec FROM instances i "
					      "LEFT JOIN hosts h ON h.id = i.host_id "
					      "WHERE json_extract(i.spec, '$.ha.enabled') = 1");
	struct json_object *doc = json_object_new_object(), *arr = json_object_new_array();
	struct list_write *w;

	while (st && sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(
			o, "name",
			json_object_new_string((const char *)sqlite3_column_text(st, 0)));
		json_object_object_add(
			o, "host",
			sqlite3_column_type(st, 1) == SQLITE_TEXT
				? json_object_new_string((const char *)sqlite3_column_text(st, 1))
				: NULL);
		json_object_array_add(arr, o);
	}
	sqlite3_finalize(st);
	json_object_object_add(doc, "instances", arr);
	w = xcalloc(1, sizeof(*w));
	w->req.data = w;
	w->path = xasprintf("%s/" LEASE_HA_LIST, ctl.cfg.shared_pool);
	w->text = xstrdup(json_text(doc));
	json_object_put(doc);
	list_dirty = false;
	list_busy = true;
	uv_queue_work(ctl.loop, &w->req, list_write_work, list_write_done);
}

/*
 * The controller's view for the agents ({shared}/ha/view.json), every second: a
 * counter that shows the controller lives, and how long ago it heard each host. An
 * agent the live controller has not heard for LEASE_UNHEARD_MS stops renewing its
 * lease, so its fencer fences it and the lease expires: a host cut off from the
 * controller but not from the pool is restarted elsewhere only after that. Hosts
 * whose lease is released (maintenance, all handed off) are listed under "released".
 */
static void view_write_start(void)
{
	struct json_object *doc = json_object_new_object(), *hosts = json_object_new_object();
	int64_t now = now_ms();
	struct list_write *w;

	for (struct host *h = ctl.hosts; h; h = h->next)
		json_object_object_add(
			hosts, h->name,
			json_object_new_int64(h->last_seen ? now - h->last_seen : now));
	json_object_object_add(doc, "counter", json_object_new_int64(++view_counter));
	json_object_object_add(doc, "unheard_ms", hosts);
	hosts = json_object_new_object();
	for (size_t i = 0; i < hh_n; i++)
		if (hh[i].released)
			json_object_object_add(hosts, hh[i].name, json_object_new_boolean(true));
	json_object_object_add(doc, "released", hosts);
	w = xcalloc(1, sizeof(*w));
	w->req.data = w;
	w->view = true;
	w->path = xasprintf("%s/" LEASE_VIEW, ctl.cfg.shared_pool);
	w->text = xstrdup(json_text(doc));
	json_object_put(doc);
	view_busy = true;
	uv_queue_work(ctl.loop, &w->req, list_write_work, list_write_done);
}

/* ---- leases ---- */

static void lease_read_work(uv_work_t *req)
{
	struct lease_read *r = req->data;

	for (size_t i = 0; i < r->n; i++) {
		_cleanup_free_ char *path = xasprintf("%s/" LEASE_DIR "/%s", r->pool, r->names[i]);
		char buf[LEASE_RECORD_LEN];
		ssize_t got;
		int fd = open(path, O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			continue;
		got = pread(fd, buf, sizeof(buf), 0);
		close(fd);
		if (got > 0 && lease_record_parse(buf, (size_t)got, &r->recs[i]) == 0 &&
		    !strcmp(r->recs[i].host, r->names[i]))
			r->found[i] = true;
	}
}

static void ha_judge(struct host *h, struct ha_host *x);

static void lease_read_done(uv_work_t *req, int status)
{
	struct lease_read *r = req->data;
	int64_t mono = lease_mono_ms();

	(void)status;
	read_busy = false;
	for (size_t i = 0; i < r->n; i++) {
		struct host *h = host_find(r->names[i]);
		struct ha_host *x;

		if (h == NULL)
			continue;
		x = ha_host_get(h->name);
		if (r->found[i] && (!x->lease_seen || r->recs[i].counter != x->lease.counter ||
				    r->recs[i].generation != x->lease.generation)) {
			x->advanced_mono = mono;
			x->lease = r->recs[i];
			x->lease_seen = true;
		}
		ha_judge(h, x);
	}
	free(r->names);
	free(r->recs);
	free(r->found);
	free(r);
}

static void lease_read_start(void)
{
	struct lease_read *r = xcalloc(1, sizeof(*r));
	size_t cap = 16;

	r->req.data = r;
	snprintf(r->pool, sizeof(r->pool), "%s", ctl.cfg.shared_pool);
	r->names = xcalloc(cap, sizeof(*r->names));
	for (struct host *h = ctl.hosts; h; h = h->next) {
		if (r->n == cap) {
			cap *= 2;
			r->names = xrealloc(r->names, cap * sizeof(*r->names));
		}
		snprintf(r->names[r->n++], sizeof(r->names[0]), "%s", h->name);
	}
	r->recs = xcalloc(r->n ? r->n : 1, sizeof(*r->recs));
	r->found = xcalloc(r->n ? r->n : 1, sizeof(*r->found));
	read_busy = true;
	uv_queue_work(ctl.loop, &r->req, lease_read_work, lease_read_done);
}

/* ---- failover ---- */

/* Fail the operations still open on target: their host is gone and will not answer. */
static void ops_abandon(const char *target, const char *why)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id FROM operations WHERE target = ? AND "
					      "status IN ('pending', 'running')");
	char ids[8][LINK_OP_ID_MAX + 1];
	size_t n = 0;

	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW && n < ARRAY_SIZE(ids))
		snprintf(ids[n++], sizeof(ids[0]), "%s", sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	for (size_t i = 0; i < n; i++)
		op_update(ids[i], "failed", -1, "failed", NULL, why);
}

static struct json_object *timeline(const struct ha_host *x, const char *from, bool handoff)
{
	struct json_object *t = json_object_new_object();

	if (handoff) {
		json_object_object_add(t, "from", json_object_new_string(from));
		json_object_object_add(t, "handoff", json_object_new_boolean(true));
		json_object_object_add(t, "restart_at", json_object_new_int64(now_ms()));
		return t;
	}

	json_object_object_add(t, "from", json_object_new_string(from));
	json_object_object_add(t, "detected_at", json_object_new_int64(x->detected_ms));
	json_object_object_add(t, "fenced_at", json_object_new_int64(x->fenced_ms));
	json_object_object_add(t, "restart_at", json_object_new_int64(now_ms()));
	json_object_object_add(t, "lease_fence_ms", json_object_new_int64(x->lease.fence_ms));
	return t;
}

/*
 * Choose the host that takes HA instance iid (name, spec) away from a failed host:
 * the scheduler's pick, never a host that still holds its fenced copy. spec gets what
 * that host runs it with (accel; adopt_disks: the new host runs the disks that are
 * there, never makes them anew). Returns the host, *placement the scheduler's reasons
 * (the caller's), or NULL (logged; *placement NULL): tried again later.
 */
static struct host *replacement_place(int64_t iid, const char *name, struct json_object *spec,
				      struct json_object **placement)
{
	struct json_object *netkeep;
	bool vm = !strcmp(json_get_str(spec, "type", "vm"), "vm");
	struct sched_request sr = {0};
	struct host *to;
	struct kerr err;
	sqlite3_stmt *st;
	int rc;

	*placement = NULL;
	if (vm) {
		struct json_object *m = json_object_object_get(spec, "memory");

		sr.vcpus = (int)json_get_int(spec, "vcpus", 1);
		sr.memory_mb = json_get_int(m, "mb", json_get_int(m, "max_mb", 0));
		sr.nested = json_get_bool(spec, "nested", false);
		sr.needs_shared_pool = true;
	} else {
		container_sched_request(spec, &sr);
	}
	/* A pin to the failed host cannot hold: HA outranks it. */
	sr.anti_affinity = json_get_str(spec, "anti_affinity", NULL);
	netkeep = nics_sched_request(spec, &sr);
	to = instances_place(&sr, placement, &err);
	nics_sched_free(&sr);
	json_object_put(netkeep);
	if (to == NULL) {
		log_warnx("ha: instance %s: no host can take it: %s", name, err.msg);
		json_object_put(*placement);
		*placement = NULL;
		return NULL;
	}
	/* A host that was fenced with this instance and has not forgotten it yet would
	 * refuse it ("exists already"): wait for its ha-forget. */
	st = db_prepare(ctl.db, "SELECT 1 FROM ha_fences WHERE instance_id = ? AND host_id = ?");
	sqlite3_bind_int64(st, 1, iid);
	sqlite3_bind_int64(st, 2, to->id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc == SQLITE_ROW) {
		log_warnx("ha: instance %s: %s still has its fenced copy; trying again later", name,
			  to->name);
		json_object_put(*placement);
		*placement = NULL;
		return NULL;
	}
	if (vm)
		json_object_object_add(
			spec, "accel",
			json_object_new_string(
				!strcmp(json_get_str(to->facts, "accel", "tcg"), "kvm") ? "kvm"
											: "tcg"));
	json_object_object_add(spec, "adopt_disks", json_object_new_boolean(true));
	return to;
}

/* ---- replacements prepared during the fence wait ---- */

/* A prepare still running this long after it was sent no longer holds the failover. */
#define PREPARE_WAIT_MS 30000

static struct prepared *prepared_find(int64_t iid)
{
	for (struct prepared *p = prepareds; p; p = p->next)
		if (p->iid == iid)
			return p;
	return NULL;
}

/* Forget p (its copy is either the instance now, or removed). */
static void prepared_drop(struct prepared *p)
{
	for (struct prepared **pp = &prepareds; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	json_object_put(p->spec);
	json_object_put(p->placement);
	free(p);
}

/* p's create: "succeeded", "failed", ... or "" while it runs; "failed" if it vanished. */
static bool prepared_status(const struct prepared *p, bool *ok)
{
	struct json_object *op = op_get(p->op);
	const char *status = op ? json_get_str(op, "status", "failed") : "failed";
	bool final = op_status_final(status);

	*ok = !strcmp(status, "succeeded");
	json_object_put(op);
	return final;
}

/*
 * The prepared copy p is not wanted (its failed host came back, the instance went,
 * or the failover chose otherwise): once its create has ended, its new host deletes
 * it keeping the disks (they are the instance's, wherever it runs) as an
 * "ha-unprepare" operation, whose end never touches the instance's row. Frees p
 * unless the create still runs (then ha_cron() comes back to it).
 */
static void prepared_remove(struct prepared *p, const char *why)
{
	_cleanup_free_ char *target = xasprintf("ha-unprepare/%s/%s", p->to, p->name);
	struct json_object *args, *res, *op;
	struct host *to = host_find(p->to);
	struct kerr err;
	bool ok;

	if (!prepared_status(p, &ok)) {
		p->removing = true;
		return;
	}
	if (!ok) { /* a failed create removed what it had made */
		prepared_drop(p);
		return;
	}
	if (to == NULL || to->state != HOST_ONLINE) {
		log_warnx("ha: instance %s: cannot remove its prepared copy from %s (offline); "
			  "it stays there stopped, listed as unmanaged",
			  p->name, p->to);
		prepared_drop(p);
		return;
	}
	args = json_object_new_object();
	json_object_object_add(args, "keep_disks", json_object_new_boolean(true));
	json_object_object_add(args, "force", json_object_new_boolean(true));
	res = json_object_new_object();
	json_object_object_add(res, "action", json_object_new_string("delete"));
	json_object_object_add(res, "args", json_object_get(args));
	op = op_create("ha-unprepare", target, to, res, &err);
	if (op == NULL) {
		log_warnx("ha: instance %s: cannot remove its prepared copy from %s: %s", p->name,
			  p->to, err.msg);
		json_object_put(args);
		prepared_drop(p);
		return;
	}
	log_info("ha: instance %s: removing its prepared copy from %s (%s; operation %s)", p->name,
		 p->to, why, json_get_str(op, "id", ""));
	instances_cmd_send(to, json_get_str(op, "id", ""), "delete", p->spec, args);
	json_object_put(op);
	json_object_put(args);
	prepared_drop(p);
}

/* Remove every copy prepared for failed host h's instances. */
static void prepared_remove_from(const struct host *h, const char *why)
{
	struct prepared *p, *next;

	for (p = prepareds; p; p = next) {
		next = p->next;
		if (!strcmp(p->from, h->name) && !p->removing)
			prepared_remove(p, why);
	}
}

/* Is a copy for h still being prepared, recently enough to wait for it? */
static bool prepared_pending(const struct host *h)
{
	int64_t mono = lease_mono_ms();
	bool ok;

	for (struct prepared *p = prepareds; p; p = p->next)
		if (!strcmp(p->from, h->name) && !p->removing && !prepared_status(p, &ok) &&
		    mono - p->since_mono < PREPARE_WAIT_MS)
			return true;
	return false;
}

/*
 * h was just judged failed: while its lease runs out, have a host ready for each of
 * its HA instances (desired running), created there with start=false: everything but
 * the start, nothing that executes guest code or opens its disks (a QEMU with -S
 * would open them while h's copy may still run). failover_one() then only starts it.
 */
static void prepare_host(struct host *h)
{
	sqlite3_stmt *st = db_prepare(
		ctl.db,
		"SELECT id, name, spec FROM instances WHERE host_id = ? AND "
		"json_extract(spec, '$.ha.enabled') = 1 AND desired = 'running' AND "
		"state <> 'deleting' ORDER BY json_extract(spec, '$.ha.priority') DESC, name");

	sqlite3_bind_int64(st, 1, h->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t iid = sqlite3_column_int64(st, 0);
		const char *name = (const char *)sqlite3_column_text(st, 1);
		_cleanup_free_ char *target = xasprintf("ha-prepare/%s/%s", h->name, name);
		struct json_object *spec, *placement, *args, *res, *op;
		struct prepared *p;
		struct host *to;
		struct kerr err;

		if (prepared_find(iid))
			continue;
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 2));
		if (spec == NULL)
			continue;
		to = replacement_place(iid, name, spec, &placement);
		if (to == NULL) {
			json_object_put(spec);
			continue;
		}
		args = json_object_new_object();
		json_object_object_add(args, "start", json_object_new_boolean(false));
		res = json_object_new_object();
		json_object_object_add(res, "action", json_object_new_string("create"));
		json_object_object_add(res, "args", json_object_get(args));
		op = op_create("ha-prepare", target, to, res, &err);
		if (op == NULL) {
			log_warnx("ha: instance %s: cannot prepare it on %s: %s", name, to->name,
				  err.msg);
			json_object_put(args);
			json_object_put(spec);
			json_object_put(placement);
			continue;
		}
		p = xcalloc(1, sizeof(*p));
		p->iid = iid;
		snprintf(p->name, sizeof(p->name), "%s", name);
		snprintf(p->from, sizeof(p->from), "%s", h->name);
		snprintf(p->to, sizeof(p->to), "%s", to->name);
		snprintf(p->op, sizeof(p->op), "%s", json_get_str(op, "id", ""));
		p->since_mono = lease_mono_ms();
		p->spec = spec;
		p->placement = placement;
		p->next = prepareds;
		prepareds = p;
		log_info("ha: instance %s: preparing it on %s while %s's lease runs out "
			 "(operation %s)",
			 name, to->name, h->name, p->op);
		instances_cmd_send(to, p->op, "create", spec, args);
		json_object_put(args);
		json_object_put(op);
	}
	sqlite3_finalize(st);
}

/* Every second: prepared copies waiting for their create to end before removal. */
static void prepared_pump(void)
{
	struct prepared *p, *next;

	for (p = prepareds; p; p = next) {
		next = p->next;
		if (p->removing)
			prepared_remove(p, "not wanted any more");
	}
}

/* ---- failover ---- */

/*
 * Restart HA instance name (id iid, spec owned by the caller) of fenced host h on
 * another host: the one it was prepared on during the fence wait when that went well
 * (only the start is left), else the scheduler's pick; with handoff, of host h in
 * maintenance, which has stopped and dropped it already (no fence to record, nothing
 * to abandon). Returns 0 when the operation went out, -1 when it could not (no host
 * fits, a database error): tried again later.
 */
static int failover_one(struct host *h, struct ha_host *x, int64_t iid, const char *name,
			struct json_object *spec, bool handoff)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", name);
	struct json_object *placement = NULL, *args, *res, *op, *ev, *nics, *tl;
	struct prepared *p = handoff ? NULL : prepared_find(iid);
	struct host *to = NULL;
	struct kerr err;
	sqlite3_stmt *st;
	bool ok;
	int rc;

	if (!handoff)
		ops_abandon(target,
			    "its host failed; the instance is being restarted elsewhere (HA)");
	if (p && !p->removing && prepared_status(p, &ok) && ok) {
		to = host_find(p->to);
		if (to && to->state == HOST_ONLINE) {
			spec = p->spec; /* the very spec it was created with: the agent starts it */
			placement = json_object_get(p->placement);
		} else {
			to = NULL;
		}
	}
	if (to == NULL) {
		if (p && !p->removing)
			prepared_remove(p, "it could not be used");
		p = NULL;
		to = replacement_place(iid, name, spec, &placement);
		if (to == NULL)
			return -1;
	}

	/* The agent gets the create's own args; the operation also keeps the timeline. */
	args = json_object_new_object();
	json_object_object_add(args, "start", json_object_new_boolean(true));
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_new_object());
	json_object_object_add(json_object_object_get(res, "args"), "start",
			       json_object_new_boolean(true));
	tl = timeline(x, h->name, handoff);
	if (!handoff)
		json_object_object_add(tl, "prepared", json_object_new_boolean(p != NULL));
	json_object_object_add(json_object_object_get(res, "args"), "failover", tl);
	json_object_object_add(res, "placement", json_object_get(placement));

	if (db_begin(ctl.db) < 0) {
		json_object_put(args);
		json_object_put(res);
		json_object_put(placement);
		return -1;
	}
	st = db_prepare(ctl.db, handoff ? "SELECT 1"
					: "INSERT OR REPLACE INTO ha_fences (instance_id, host_id, "
					  "fenced_at, operation) VALUES (?, ?, ?, NULL)");
	if (!handoff) {
		sqlite3_bind_int64(st, 1, iid);
		sqlite3_bind_int64(st, 2, h->id);
		sqlite3_bind_int64(st, 3, x->fenced_ms);
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		rc = SQLITE_DONE;
	sqlite3_finalize(st);
	if (rc == SQLITE_DONE) {
		st = db_prepare(ctl.db, "UPDATE instances SET host_id = ?, state = 'creating', "
					"spec = ?, placement = ?, updated_at = ? WHERE id = ?");
		sqlite3_bind_int64(st, 1, to->id);
		sqlite3_bind_text(st, 2, json_text(spec), -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 3, json_text(placement), -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 4, now_ms());
		sqlite3_bind_int64(st, 5, iid);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
	}
	op = rc == SQLITE_DONE ? op_create("instance-create", target, to, res, &err)
			       : (json_object_put(res), NULL);
	if (op) {
		ev = json_object_new_object();
		json_object_object_add(ev, "name", json_object_new_string(name));
		json_object_object_add(ev, "from", json_object_new_string(h->name));
		json_object_object_add(ev, "to", json_object_new_string(to->name));
		json_object_object_add(ev, "operation",
				       json_object_get(json_object_object_get(op, "id")));
		event_emit("instance-failover", ev);
	}
	if (op == NULL || db_commit(ctl.db, &err) < 0) {
		log_warnx("ha: instance %s: cannot record the failover: %s", name,
			  sqlite3_errmsg(ctl.db));
		db_rollback(ctl.db);
		json_object_put(op);
		json_object_put(args);
		json_object_put(placement);
		return -1;
	}
	log_info("ha: instance %s: %s %s, %s on %s (operation %s)", name,
		 handoff ? "handed off by" : "fenced on", h->name,
		 p ? "starting its prepared copy" : "restarting", to->name,
		 json_get_str(op, "id", "?"));
	nics = json_object_object_get(spec, "nics");
	if (json_object_is_type(nics, json_type_array) && json_array_len(nics) > 0)
		netsync_changed(to);
	instances_cmd_send(to, json_get_str(op, "id", ""), "create", spec, args);
	if (p)
		prepared_drop(p); /* it is the instance now; spec was p's */
	json_object_put(op);
	json_object_put(args);
	json_object_put(placement);
	ha_list_changed();
	if (!handoff)
		x->forget_pending = true;
	return 0;
}

/*
 * A fenced host is back: it still has a (dead) record of each instance restarted
 * elsewhere. Send it an ha-forget per instance (an instance delete that keeps the
 * disks: they are the ones the instance runs on now), once; a row goes when its
 * operation has succeeded, and a failed one is sent again. The operation's kind is
 * not "instance-...", so its result never touches the instance's row.
 */
static void forget_fenced(struct host *h, struct ha_host *x)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT f.instance_id, i.name, i.spec, f.operation "
					      "FROM ha_fences f JOIN instances i ON i.id = "
					      "f.instance_id WHERE f.host_id = ?");
	int rows = 0;

	sqlite3_bind_int64(st, 1, h->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t iid = sqlite3_column_int64(st, 0);
		const char *name = (const char *)sqlite3_column_text(st, 1);
		const char *opid = (const char *)sqlite3_column_text(st, 3);
		struct json_object *op = opid ? op_get(opid) : NULL, *spec, *args, *res;
		const char *status = op ? json_get_str(op, "status", "") : "";
		_cleanup_free_ char *target = xasprintf("ha-fences/%s/%s", h->name, name);
		sqlite3_stmt *up;
		struct kerr err;

		rows++;
		if (!strcmp(status, "succeeded")) {
			up = db_prepare(ctl.db, "DELETE FROM ha_fences WHERE instance_id = ? AND "
						"host_id = ?");
			sqlite3_bind_int64(up, 1, iid);
			sqlite3_bind_int64(up, 2, h->id);
			sqlite3_step(up);
			sqlite3_finalize(up);
			log_info("ha: host %s forgot its fenced copy of %s", h->name, name);
			json_object_put(op);
			rows--;
			continue;
		}
		if (op && !op_status_final(status)) {
			json_object_put(op);
			continue;
		}
		json_object_put(op);
		args = json_object_new_object();
		json_object_object_add(args, "keep_disks", json_object_new_boolean(true));
		json_object_object_add(args, "force", json_object_new_boolean(true));
		res = json_object_new_object();
		json_object_object_add(res, "args", json_object_get(args));
		op = op_create("ha-forget", target, h, res, &err);
		if (op == NULL) {
			json_object_put(args);
			continue;
		}
		up = db_prepare(ctl.db, "UPDATE ha_fences SET operation = ? WHERE instance_id = ? "
					"AND host_id = ?");
		sqlite3_bind_text(up, 1, json_get_str(op, "id", ""), -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(up, 2, iid);
		sqlite3_bind_int64(up, 3, h->id);
		sqlite3_step(up);
		sqlite3_finalize(up);
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 2));
		log_info("ha: host %s: forgetting its fenced copy of %s (operation %s)", h->name,
			 name, json_get_str(op, "id", ""));
		instances_cmd_send(h, json_get_str(op, "id", ""), "delete", spec, args);
		json_object_put(spec);
		json_object_put(args);
		json_object_put(op);
	}
	sqlite3_finalize(st);
	x->forget_pending = rows > 0;
}

/* Restart every HA instance still placed on fenced host h, highest priority first. */
static void failover_host(struct host *h, struct ha_host *x)
{
	sqlite3_stmt *st = db_prepare(
		ctl.db,
		"SELECT id, name, spec FROM instances WHERE host_id = ? AND "
		"json_extract(spec, '$.ha.enabled') = 1 AND desired = 'running' AND "
		"state <> 'deleting' ORDER BY json_extract(spec, '$.ha.priority') DESC, name");
	struct pending {
		int64_t id;
		char *name;
		struct json_object *spec;
	} *todo = NULL;
	size_t n = 0, cap = 0;
	bool failed = false;

	if (prepared_pending(h)) { /* a moment more, and only the start is left */
		sqlite3_finalize(st);
		return;
	}
	sqlite3_bind_int64(st, 1, h->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			todo = xrealloc(todo, cap * sizeof(*todo));
		}
		todo[n].id = sqlite3_column_int64(st, 0);
		todo[n].name = xstrdup((const char *)sqlite3_column_text(st, 1));
		todo[n].spec = json_tokener_parse((const char *)sqlite3_column_text(st, 2));
		n++;
	}
	sqlite3_finalize(st);
	for (size_t i = 0; i < n; i++) {
		if (todo[i].spec &&
		    failover_one(h, x, todo[i].id, todo[i].name, todo[i].spec, false) < 0)
			failed = true;
		json_object_put(todo[i].spec);
		free(todo[i].name);
	}
	free(todo);
	/* Copies prepared for instances that went meanwhile, or that could not be
	 * placed now (placed afresh when tried again). */
	prepared_remove_from(h, "not used by the failover");
	x->retry_mono = failed ? lease_mono_ms() + HA_RETRY_MS : INT64_MAX;
}

/*
 * Non-HA instances of a failed host that were live: nobody knows whether they still
 * run. A stopped or crashed one stays as it was (it does not start by itself), so it
 * can still be deleted, which then waits for its host (503).
 */
static void mark_unknown(struct host *h)
{
	sqlite3_stmt *st = db_prepare(
		ctl.db, "UPDATE instances SET state = 'unknown', updated_at = ? WHERE host_id = ? "
			"AND coalesce(json_extract(spec, '$.ha.enabled'), 0) = 0 AND state IN "
			"('running', 'paused', 'starting', 'stopping')");

	sqlite3_bind_int64(st, 1, now_ms());
	sqlite3_bind_int64(st, 2, h->id);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("ha: host %s: cannot mark its instances unknown: %s", h->name,
			  sqlite3_errmsg(ctl.db));
	sqlite3_finalize(st);
}

/* ---- planned maintenance hand-off ---- */

#define HANDOFF_RETRY_MS 10000 /* a hand-off step that failed is tried again after this */

static struct handoff *handoff_find(int64_t iid)
{
	for (struct handoff *ho = handoffs; ho; ho = ho->next)
		if (ho->iid == iid)
			return ho;
	return NULL;
}

/* Unlink ho from the list and free it; its row stays (shutdown) unless forget. */
static void handoff_unlink(struct handoff *ho, bool forget)
{
	sqlite3_stmt *st;

	for (struct handoff **pp = &handoffs; *pp; pp = &(*pp)->next)
		if (*pp == ho) {
			*pp = ho->next;
			break;
		}
	if (forget) {
		st = db_prepare(ctl.db, "DELETE FROM ha_handoffs WHERE instance_id = ?");
		sqlite3_bind_int64(st, 1, ho->iid);
		if (sqlite3_step(st) != SQLITE_DONE)
			log_warnx("ha: instance %s: cannot forget its hand-off: %s", ho->name,
				  sqlite3_errmsg(ctl.db));
		sqlite3_finalize(st);
	}
	free(ho);
}

/* ho is over (done, or to be started again from the instance's state). */
static void handoff_drop(struct handoff *ho)
{
	handoff_unlink(ho, true);
}

/*
 * Keep ho's step (and its operation) in ha_handoffs, so that a controller restart
 * goes on from there: the operation is resumed by jobs.c (its command resent; the
 * agent runs an operation id once) and its end read here as before.
 */
static void handoff_save(const struct handoff *ho)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, "INSERT OR REPLACE INTO ha_handoffs (instance_id, "
				   "host, step, operation, cold) VALUES (?, ?, ?, ?, ?)");

	sqlite3_bind_int64(st, 1, ho->iid);
	sqlite3_bind_text(st, 2, ho->host, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, handoff_step_names[ho->step], -1, SQLITE_STATIC);
	if (ho->op[0])
		sqlite3_bind_text(st, 4, ho->op, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 4);
	sqlite3_bind_int(st, 5, ho->cold);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("ha: instance %s: cannot save its hand-off: %s", ho->name,
			  sqlite3_errmsg(ctl.db));
	sqlite3_finalize(st);
}

static struct json_object *spec_load(int64_t iid)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT spec FROM instances WHERE id = ?");
	struct json_object *spec = NULL;

	sqlite3_bind_int64(st, 1, iid);
	if (sqlite3_step(st) == SQLITE_ROW)
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return spec;
}

/*
 * Send ho's next step to its old host h as an "ha-handoff" operation: "stop" (clean,
 * the verb's own grace), or "delete" keeping the disks (the instance now runs from
 * them elsewhere; force only matters for one that crashed meanwhile). The kind is not
 * "instance-...", so its end never touches the instance's row. Returns 0, or -1 with
 * the step left to be tried again.
 */
static int handoff_cmd(struct host *h, struct handoff *ho, enum handoff_step step)
{
	_cleanup_free_ char *target = xasprintf("ha-handoff/%s/%s", h->name, ho->name);
	const char *action = step == HANDOFF_STOP ? "stop" : "delete";
	struct json_object *spec = spec_load(ho->iid), *args, *res, *op;
	struct kerr err;

	if (spec == NULL)
		return -1;
	args = json_object_new_object();
	if (step == HANDOFF_DROP) {
		json_object_object_add(args, "keep_disks", json_object_new_boolean(true));
		json_object_object_add(args, "force", json_object_new_boolean(true));
	}
	res = json_object_new_object();
	json_object_object_add(res, "action", json_object_new_string(action));
	json_object_object_add(res, "args", json_object_get(args));
	op = op_create("ha-handoff", target, h, res, &err);
	if (op == NULL) {
		log_warnx("ha: instance %s: cannot hand it off: %s", ho->name, err.msg);
		json_object_put(args);
		json_object_put(spec);
		return -1;
	}
	snprintf(ho->op, sizeof(ho->op), "%s", json_get_str(op, "id", ""));
	ho->step = step;
	handoff_save(ho);
	log_info("ha: instance %s: hand-off from %s: %s (operation %s)", ho->name, h->name,
		 step == HANDOFF_STOP ? "stopping it cleanly" : "dropping it, keeping its disks",
		 ho->op);
	instances_cmd_send(h, ho->op, action, spec, args);
	json_object_put(op);
	json_object_put(args);
	json_object_put(spec);
	return 0;
}

static void handoff_wait(struct handoff *ho, const char *why)
{
	log_warnx("ha: instance %s: hand-off step failed (%s); trying again in %d s", ho->name, why,
		  HANDOFF_RETRY_MS / 1000);
	ho->step = HANDOFF_WAIT;
	ho->op[0] = '\0';
	ho->retry_mono = lease_mono_ms() + HANDOFF_RETRY_MS;
	handoff_save(ho);
}

/* Move ho on when its operation has ended. Returns false when ho is done (freed). */
static bool handoff_advance(struct host *h, struct ha_host *x, struct handoff *ho)
{
	struct json_object *op = ho->op[0] ? op_get(ho->op) : NULL, *spec;
	const char *status = op ? json_get_str(op, "status", "failed") : "failed";
	_cleanup_free_ char *error = xstrdup(op ? json_get_str(op, "error", "") : "it vanished");
	bool ended = ho->op[0] == '\0' || op_status_final(status),
	     ok = !strcmp(status, "succeeded");

	json_object_put(op);
	switch (ho->step) {
	case HANDOFF_MIGRATE:
		if (!ended)
			return true;
		if (ok) {
			log_info("ha: instance %s: handed off from %s by a live migration",
				 ho->name, h->name);
			ha_list_changed();
			handoff_drop(ho);
			return false;
		}
		/* Still on h, and running there unless the migration stopped it: the
		 * next round starts it afresh, this time stopped and started. */
		log_warnx("ha: instance %s: live migration failed (%s): stopping and starting "
			  "it elsewhere instead",
			  ho->name, error);
		ho->cold = true;
		if (handoff_cmd(h, ho, HANDOFF_STOP) < 0)
			handoff_wait(ho, "cannot send the stop");
		return true;
	case HANDOFF_STOP:
		if (!ended)
			return true;
		if (!ok || handoff_cmd(h, ho, HANDOFF_DROP) < 0)
			handoff_wait(ho, ok ? "cannot send the drop" : error);
		return true;
	case HANDOFF_DROP:
		if (!ended)
			return true;
		if (!ok) {
			handoff_wait(ho, error);
			return true;
		}
		ho->step = HANDOFF_PLACE;
		ho->op[0] = '\0';
		handoff_save(ho);
		/* stopped and dropped, nothing of it runs anywhere: place it now */
		__attribute__((fallthrough));
	case HANDOFF_PLACE:
		if (lease_mono_ms() < ho->retry_mono)
			return true;
		spec = spec_load(ho->iid);
		if (spec && failover_one(h, x, ho->iid, ho->name, spec, true) == 0) {
			json_object_put(spec);
			handoff_drop(ho);
			return false;
		}
		json_object_put(spec);
		ho->retry_mono = lease_mono_ms() + HANDOFF_RETRY_MS;
		return true;
	case HANDOFF_WAIT:
		if (lease_mono_ms() < ho->retry_mono)
			return true;
		handoff_drop(ho); /* the next round starts again from the instance's state */
		return false;
	}
	return true;
}

/* Start handing off instance iid (name, type, state) of h. */
static void handoff_start(struct host *h, int64_t iid, const char *name, const char *type,
			  const char *state)
{
	struct handoff *ho = xcalloc(1, sizeof(*ho));
	struct kerr err;

	ho->iid = iid;
	snprintf(ho->name, sizeof(ho->name), "%s", name);
	snprintf(ho->host, sizeof(ho->host), "%s", h->name);
	ho->next = handoffs;
	handoffs = ho;
	if (!strcmp(type, "vm") && !strcmp(state, "running")) {
		if (migrate_instance_start(name, ho->op, &err) == 0) {
			ho->step = HANDOFF_MIGRATE;
			handoff_save(ho);
			log_info("ha: instance %s: hand-off from %s: live migration (operation %s)",
				 name, h->name, ho->op);
			return;
		}
		if (err.status == 409) { /* busy with another operation: next round */
			handoff_drop(ho);
			return;
		}
		log_info("ha: instance %s: cannot migrate live (%s): stopping and starting it "
			 "elsewhere",
			 name, err.msg);
	}
	ho->cold = true;
	if (handoff_cmd(h, ho,
			!strcmp(state, "running") || !strcmp(state, "paused") ? HANDOFF_STOP
									      : HANDOFF_DROP) < 0)
		handoff_wait(ho, "cannot send it");
}

/*
 * One round of h's hand-off: move on what is under way, and, while h is in
 * maintenance and online, start on each HA instance (desired running) still placed
 * there. Returns how many HA instances are still to leave h.
 */
static size_t handoff_pump(struct host *h, struct ha_host *x)
{
	struct handoff *ho, *next;
	sqlite3_stmt *st;
	size_t left = 0;

	for (ho = handoffs; ho; ho = next) {
		next = ho->next;
		if (!strcmp(ho->host, h->name))
			handoff_advance(h, x, ho);
	}
	if (!h->maintenance)
		return 0;
	st = db_prepare(ctl.db, "SELECT id, name, type, state FROM instances WHERE host_id = ? "
				"AND json_extract(spec, '$.ha.enabled') = 1 AND desired = "
				"'running' AND state <> 'deleting' ORDER BY "
				"json_extract(spec, '$.ha.priority') DESC, name");
	sqlite3_bind_int64(st, 1, h->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t iid = sqlite3_column_int64(st, 0);

		left++;
		if (handoff_find(iid) || h->state != HOST_ONLINE)
			continue;
		handoff_start(h, iid, (const char *)sqlite3_column_text(st, 1),
			      (const char *)sqlite3_column_text(st, 2),
			      (const char *)sqlite3_column_text(st, 3));
	}
	sqlite3_finalize(st);
	return left;
}

static bool handoff_any(const struct host *h)
{
	for (struct handoff *ho = handoffs; ho; ho = ho->next)
		if (!strcmp(ho->host, h->name))
			return true;
	return false;
}

/* h failed during its hand-off: what was under way is failover's now. */
static void handoff_forget(const struct host *h)
{
	struct handoff *ho, *next;

	for (ho = handoffs; ho; ho = next) {
		next = ho->next;
		if (!strcmp(ho->host, h->name))
			handoff_drop(ho);
	}
}

/*
 * Keep whether host name's lease is released (ha_released), so that a controller
 * restart neither re-arms a host in maintenance that gave everything away (its
 * agent may be stopped for good) nor judges it failed.
 */
static void released_save(const char *name, bool released)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, released ? "INSERT OR IGNORE INTO ha_released (host) VALUES (?)"
					    : "DELETE FROM ha_released WHERE host = ?");

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("ha: host %s: cannot save its lease's release: %s", name,
			  sqlite3_errmsg(ctl.db));
	sqlite3_finalize(st);
}

/*
 * Start-up (the first cron, after jobs_resume()): the hand-offs under way and the
 * released hosts as they were when the controller stopped. A hand-off goes on from
 * its step: its operation, resumed by jobs.c, is read as before; one waiting to be
 * tried again waits its full delay; one to be placed is placed at once.
 */
static void ha_load(void)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT f.instance_id, i.name, f.host, f.step, "
					      "f.operation, f.cold FROM ha_handoffs f JOIN "
					      "instances i ON i.id = f.instance_id");

	while (st && sqlite3_step(st) == SQLITE_ROW) {
		struct handoff *ho = xcalloc(1, sizeof(*ho));
		const char *step = (const char *)sqlite3_column_text(st, 3);

		ho->iid = sqlite3_column_int64(st, 0);
		snprintf(ho->name, sizeof(ho->name), "%s", sqlite3_column_text(st, 1));
		snprintf(ho->host, sizeof(ho->host), "%s", sqlite3_column_text(st, 2));
		if (sqlite3_column_type(st, 4) == SQLITE_TEXT)
			snprintf(ho->op, sizeof(ho->op), "%s", sqlite3_column_text(st, 4));
		ho->cold = sqlite3_column_int(st, 5) != 0;
		ho->step = HANDOFF_WAIT;
		for (size_t i = 0; i < ARRAY_SIZE(handoff_step_names); i++)
			if (!strcmp(step, handoff_step_names[i]))
				ho->step = (enum handoff_step)i;
		if (ho->step == HANDOFF_WAIT)
			ho->retry_mono = lease_mono_ms() + HANDOFF_RETRY_MS;
		ho->next = handoffs;
		handoffs = ho;
		log_info(
			"ha: instance %s: hand-off from %s goes on after the restart (step %s%s%s)",
			ho->name, ho->host, handoff_step_names[ho->step],
			ho->op[0] ? ", operation " : "", ho->op);
	}
	sqlite3_finalize(st);
	st = db_prepare(ctl.db, "SELECT host FROM ha_released");
	while (st && sqlite3_step(st) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);

		if (host_find(name) == NULL)
			continue;
		ha_host_get(name)->released = true;
		log_info("ha: host %s: its lease stays released after the restart", name);
	}
	sqlite3_finalize(st);
}

/*
 * jobs.c's resume of an ha-handoff or ha-unprepare operation (id, on host h) after a
 * controller restart: its command (result.action, result.args) sent again with the
 * instance's spec; the agent runs an operation id once. Returns 0, or -1 when the
 * instance is gone (the operation then fails as interrupted).
 */
int ha_op_resend(struct host *h, const char *id, struct json_object *op)
{
	const char *target = json_get_str(op, "target", "");
	const char *name = strrchr(target, '/');
	struct json_object *res = json_object_object_get(op, "result"), *spec = NULL;
	sqlite3_stmt *st;

	if (h == NULL || name == NULL)
		return -1;
	st = db_prepare(ctl.db, "SELECT spec FROM instances WHERE name = ?");
	sqlite3_bind_text(st, 1, name + 1, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (spec == NULL)
		return -1;
	instances_cmd_send(h, id, json_get_str(res, "action", "stop"), spec,
			   json_object_object_get(res, "args"));
	json_object_put(spec);
	return 0;
}

static void state_set(struct host *h, struct ha_host *x, enum ha_state s, int64_t hb_age,
		      int64_t lease_age)
{
	struct json_object *ev;

	if (x->state == s)
		return;
	log_info("ha: host %s: %s -> %s (no heartbeat for %lld ms, lease still for %lld ms)",
		 h->name, ha_state_names[x->state], ha_state_names[s], (long long)hb_age,
		 (long long)lease_age);
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(h->name));
	json_object_object_add(ev, "state", json_object_new_string(ha_state_names[s]));
	json_object_object_add(ev, "previous", json_object_new_string(ha_state_names[x->state]));
	json_object_object_add(ev, "heartbeat_age_ms", json_object_new_int64(hb_age));
	json_object_object_add(ev, "lease_age_ms", json_object_new_int64(lease_age));
	event_emit("host-ha-changed", ev);
	x->state = s;
}

/* One host's two signals, after a lease read. */
static void ha_judge(struct host *h, struct ha_host *x)
{
	int64_t mono = lease_mono_ms(), now = now_ms();
	int64_t hb_age = h->last_seen ? now - h->last_seen : now;
	int64_t lease_age = mono - x->advanced_mono;
	int64_t detect = (int64_t)ctl.cfg.ha_detect_s * 1000;
	int64_t period = (int64_t)ctl.cfg.ha_lease_s * 1000;
	int64_t expiry = (int64_t)ctl.cfg.ha_lease_expire_s * 1000;

	if (x->lease_seen && expiry < x->lease.fence_ms + LEASE_MARGIN_MS)
		expiry = x->lease.fence_ms + LEASE_MARGIN_MS;
	if (x->state != HA_FAILED && x->state != HA_FENCED && (h->maintenance || handoff_any(h))) {
		size_t left = handoff_pump(h, x);

		/* Released only from a live host that has nothing HA left: its agent
		 * stopping from now on is no failure. */
		if (h->maintenance && left == 0 && !x->released && h->state == HOST_ONLINE &&
		    hb_age < detect) {
			log_info("ha: host %s: every HA instance handed off; releasing its lease",
				 h->name);
			x->released = true;
			released_save(h->name, true);
		}
	}
	if (x->released && !h->maintenance) {
		log_info("ha: host %s: out of maintenance; its lease is re-armed", h->name);
		x->released = false;
		released_save(h->name, false);
		x->advanced_mono = mono; /* judged from now: the agent renews again */
	}
	if (x->released) {
		state_set(h, x, HA_MAINTENANCE, hb_age, lease_age);
		if (hb_age < detect && x->forget_pending)
			forget_fenced(h, x);
		return;
	}
	if (h->state == HOST_ONLINE && hb_age < detect) {
		if (x->state == HA_FAILED)
			prepared_remove_from(h, "its host came back before its lease expired");
		state_set(h, x, HA_OK, hb_age, lease_age);
		if (x->forget_pending)
			forget_fenced(h, x);
		return;
	}
	if (hb_age < detect)
		return; /* offline by hosts.c's count, not yet by ours */
	if (!x->lease_seen) {
		state_set(h, x, HA_UNPROTECTED, hb_age, lease_age);
		return;
	}
	if (lease_age < period) {
		/* A host that was failed and renews again was only slow: it fenced
		 * itself if it had to; what moved stays moved, what was only
		 * prepared goes. */
		if (x->state == HA_FAILED)
			prepared_remove_from(h, "its host renews its lease again");
		state_set(h, x, HA_ISOLATED, hb_age, lease_age);
		return;
	}
	if (x->state != HA_FAILED && x->state != HA_FENCED) {
		x->detected_ms = now;
		state_set(h, x, HA_FAILED, hb_age, lease_age);
		handoff_forget(h);
		mark_unknown(h);
		prepare_host(h);
	}
	if (x->state == HA_FAILED && lease_age >= expiry) {
		x->fenced_ms = now;
		state_set(h, x, HA_FENCED, hb_age, lease_age);
		x->retry_mono = 0;
	}
	if (x->state == HA_FENCED && mono >= x->retry_mono)
		failover_host(h, x);
}

/* ---- cron, start-up, the host view ---- */

/*
 * Is a host between its last heartbeat and its failover? Then leases are read every
 * cron tick, not every second: failed and fenced are each seen up to a second sooner,
 * and nothing waits past the fence deadline plus margin for the next read. Bounded,
 * so that a host long dead does not keep every lease read at four a second.
 */
static bool ha_watching(void)
{
	int64_t now = now_ms();
	int64_t until = ((int64_t)ctl.cfg.ha_detect_s + ctl.cfg.ha_lease_expire_s) * 1000 +
			LEASE_MARGIN_MS + 10000;

	for (struct host *h = ctl.hosts; h; h = h->next)
		if (h->last_seen && now - h->last_seen > 1500 && now - h->last_seen < until)
			return true;
	return false;
}

/*
 * Every cron tick (main.c, 250 ms): each second, rewrite the HA list if it changed
 * and the view; read every lease each second, or each tick while a host is failing
 * (off the loop; the hosts are judged when the read completes).
 */
void ha_cron(void)
{
	static unsigned ticks;
	bool second = ticks++ % 4 == 0;

	if (!loaded) {
		loaded = true;
		ha_load();
	}

	if (second && list_dirty && !list_busy)
		list_write_start();
	if (second && !view_busy)
		view_write_start();
	if (!read_busy && (second || ha_watching()))
		lease_read_start();
	if (second && prepareds)
		prepared_pump();
}

/* Add h's "ha" object to its JSON view: state, lease counter and age. */
void ha_host_json(const struct host *h, struct json_object *o)
{
	struct json_object *v = json_object_new_object(), *l;
	struct ha_host *x = ha_host_find(h->name);

	json_object_object_add(v, "state",
			       json_object_new_string(x ? ha_state_names[x->state] : "ok"));
	if (x && x->lease_seen) {
		l = json_object_new_object();
		json_object_object_add(l, "generation",
				       json_object_new_int64((int64_t)x->lease.generation));
		json_object_object_add(l, "counter",
				       json_object_new_int64((int64_t)x->lease.counter));
		json_object_object_add(l, "age_ms",
				       json_object_new_int64(lease_mono_ms() - x->advanced_mono));
		json_object_object_add(l, "fence_ms", json_object_new_int64(x->lease.fence_ms));
		json_object_object_add(l, "released", json_object_new_boolean(x->lease.released));
		json_object_object_add(v, "lease", l);
	} else {
		json_object_object_add(v, "lease", NULL);
	}
	if (x && x->detected_ms)
		json_object_object_add(v, "detected_at", json_object_new_int64(x->detected_ms));
	if (x && x->fenced_ms)
		json_object_object_add(v, "fenced_at", json_object_new_int64(x->fenced_ms));
	json_object_object_add(o, "ha", v);
}

/* Forget what ha.c holds (shutdown). Work in flight frees itself. */
void ha_free(void)
{
	while (handoffs)
		handoff_unlink(handoffs, false); /* kept for the next start */
	while (prepareds)
		prepared_drop(prepareds);
	free(hh);
	hh = NULL;
	hh_n = hh_cap = 0;
	free(hh_index);
	hh_index = NULL;
	hh_index_cap = 0;
}
