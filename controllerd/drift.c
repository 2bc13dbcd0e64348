/*
 * drift.c - where a host and the database disagree, and how that is settled.
 *
 *   tombstones  An instance deleted with ?force=1 while its host is offline cannot be
 *               removed there yet. Its row stays, in state "deleting", held by a
 *               pending instance-delete operation whose result says "tombstone": its
 *               name stays taken and its addresses allocated. When the host comes
 *               back, that delete is the first command its agent gets (ahead of the
 *               network document); the row and its addresses go when the agent
 *               reports the instance gone (instances_op_done()).
 *   unmanaged   An instance a host reports that the database does not place there
 *               (its row was lost, or it was forgotten) - not the copy a migration
 *               brings or takes away (migrate_instance_on()). Kept per host from every
 *               heartbeat and shown in GET /hosts/{name}; an operator adopts it (a
 *               record made from the spec the agent holds, its addresses claimed as
 *               that spec says) or destroys it (the agent stops and removes it).
 */
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "scheduler.h"
#include "util.h"
#include "valid.h"

/* ---- tombstones ---- */

/* Is this operation result a tombstone's (a forced delete waiting for its host)? */
bool drift_tombstone_result(struct json_object *result)
{
	return json_get_bool(result, "tombstone", false);
}

/*
 * h is back online: send it the delete of every instance tombstoned while it was away,
 * ahead of anything else queued for it. A delete already queued or in flight (sent at
 * start-up) is not sent twice.
 */
void drift_tombstones_send(struct host *h)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id, result FROM operations WHERE host_id = ? "
					      "AND kind = 'instance-delete' AND status = 'pending' "
					      "ORDER BY created_at DESC, rowid DESC");

	sqlite3_bind_int64(st, 1, h->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		_cleanup_free_ char *id = xstrdup((const char *)sqlite3_column_text(st, 0));
		struct json_object *result =
			json_tokener_parse((const char *)sqlite3_column_text(st, 1));

		/* Newest first, each put at the head: they go oldest first. */
		if (drift_tombstone_result(result) && !agentlink_cmd_pending(h, id) &&
		    instances_op_send_first(h, id, json_object_object_get(result, "args")) == 0) {
			log_info("operation %s: host %s is back; its tombstoned instance goes "
				 "first",
				 id, h->name);
			op_update(id, NULL, -1, "sent to the returning host", NULL, NULL);
		}
		json_object_put(result);
	}
	sqlite3_finalize(st);
}

/* ---- unmanaged instances ---- */

/* Is name placed on h in the database? */
static bool placed_on(struct host *h, const char *name)
{
	sqlite3_stmt *st = db_prepare_cached(ctl.db, "SELECT 1 FROM instances WHERE name = ? AND "
						     "host_id = ?");
	bool found;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, h->id);
	found = sqlite3_step(st) == SQLITE_ROW;
	db_release(st);
	return found;
}

static struct json_object *unmanaged_find(struct host *h, const char *name)
{
	size_t n = h->unmanaged ? json_array_len(h->unmanaged) : 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *u = json_object_array_get_idx(h->unmanaged, i);

		if (!strcmp(json_get_str(u, "name", ""), name))
			return u;
	}
	return NULL;
}

/*
 * Every heartbeat: the instances h reports (checked by report_clean()) that the
 * database does not place on h become h's unmanaged list. Each is logged once, when
 * it appears, instead of at every beat.
 */
void drift_unmanaged_update(struct host *h, struct json_object *reports)
{
	size_t n = reports && json_object_is_type(reports, json_type_array)
			   ? json_array_len(reports)
			   : 0;
	struct json_object *list = json_object_new_array();

	for (size_t i = 0; i < n; i++) {
		struct json_object *r = json_object_array_get_idx(reports, i), *u;
		const char *name = json_get_str(r, "name", NULL);

		/* A migration's other end is no stranger: its copy comes or goes. */
		if (name == NULL || !name_valid(name) || placed_on(h, name) ||
		    migrate_instance_on(h, name))
			continue;
		if (unmanaged_find(h, name) == NULL)
			log_warnx("host %s: runs instance '%s' that the controller does not place "
				  "there; adopt or destroy it (GET /api/v1/hosts/%s)",
				  h->name, name, h->name);
		u = json_object_new_object();
		json_object_object_add(u, "name", json_object_new_string(name));
		json_object_object_add(u, "type",
				       json_object_new_string(json_get_str(r, "type", "vm")));
		json_object_object_add(u, "state",
				       json_object_new_string(json_get_str(r, "state", "")));
		json_object_array_add(list, u);
	}
	json_object_put(h->unmanaged);
	h->unmanaged = list;
}

/* The unmanaged instance name on h (borrowed), or NULL. */
struct json_object *drift_unmanaged_get(struct host *h, const char *name)
{
	return unmanaged_find(h, name);
}

/* The id a NIC's port name kp<ID>-<I> carries, or 0. */
static int64_t port_instance_id(struct json_object *nic)
{
	const char *ifname = json_get_str(nic, "ifname", "");
	long long id = 0;
	int i, end = 0;

	if (sscanf(ifname, "kp%lld-%d%n", &id, &i, &end) != 2 || ifname[end] || id <= 0)
		return 0;
	return id;
}

static bool id_taken(int64_t id)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT 1 FROM instances WHERE id = ?");
	bool taken;

	sqlite3_bind_int64(st, 1, id);
	taken = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	return taken;
}

/*
 * Record instance spec (as the agent of h holds it; report is what h says of it) as
 * placed on h: its row, its disks and its NICs' addresses, as the spec says, in one
 * transaction. The row keeps the id its ports are named after, so its taps and veths
 * stay what the network document names. Returns 0, or -1 with err: 409 when the name,
 * that id or an address is taken, 404 when a network is gone, 400 for a spec that
 * is not an instance's.
 */
int drift_adopt(struct host *h, struct json_object *spec, struct json_object *report,
		struct kerr *err)
{
	const char *name = json_get_str(spec, "name", ""), *type = json_get_str(spec, "type", "");
	const char *state = json_get_str(report, "state", "stopped");
	struct json_object *nics = json_object_object_get(spec, "nics"), *disks, *placement;
	struct sched_request sr = {0};
	int64_t id = 0, now = now_ms(), iid;
	sqlite3_stmt *st;
	int rc;

	if (!name_valid(name) || (strcmp(type, "vm") && strcmp(type, "container")))
		return err_input(err, 400, NULL, "the agent's spec of %s is not an instance's",
				 name);
	for (size_t i = 0; nics && i < json_array_len(nics); i++) {
		int64_t pid = port_instance_id(json_object_array_get_idx(nics, i));

		if (pid && id && pid != id)
			return err_input(err, 409, "nics", "the NICs of %s name two instance ids",
					 name);
		id = pid ? pid : id;
	}
	if (id && id_taken(id))
		return err_input(err, 409, "nics",
				 "the ports of %s are named after instance id %lld, which another "
				 "instance holds now",
				 name, (long long)id);
	if (!strcmp(type, "vm")) {
		struct json_object *m = json_object_object_get(spec, "memory");

		sr.vcpus = (int)json_get_int(spec, "vcpus", 1);
		sr.memory_mb = json_get_int(m, "mb", json_get_int(m, "max_mb", 0));
	} else {
		container_sched_request(spec, &sr);
	}
	if (db_begin(ctl.db) < 0)
		return err_input(err, 503, NULL, "the database is busy; try again");
	placement = json_object_new_object();
	json_object_object_add(placement, "host", json_object_new_string(h->name));
	json_object_object_add(placement, "adopted", json_object_new_boolean(1));
	st = db_prepare(ctl.db,
			"INSERT INTO instances (id, name, type, host_id, spec, state, desired, "
			"anti_affinity, vcpus, memory_mb, placement, created_at, updated_at) "
			"VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)");
	if (id)
		sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, type, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, h->id);
	sqlite3_bind_text(st, 5, json_text(spec), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 6, state, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 7,
			  !strcmp(state, "running") || !strcmp(state, "paused") ? "running"
										: "stopped",
			  -1, SQLITE_STATIC);
	if (json_get_str(spec, "anti_affinity", NULL))
		sqlite3_bind_text(st, 8, json_get_str(spec, "anti_affinity", ""), -1,
				  SQLITE_STATIC);
	sqlite3_bind_int(st, 9, sr.vcpus);
	sqlite3_bind_int64(st, 10, sr.memory_mb);
	sqlite3_bind_text(st, 11, json_text(placement), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 12, now);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(placement);
	if (rc != SQLITE_DONE) {
		err_input(err, rc == SQLITE_CONSTRAINT ? 409 : 500, "name", "cannot record %s: %s",
			  name, sqlite3_errmsg(ctl.db));
		db_rollback(ctl.db);
		return -1;
	}
	iid = sqlite3_last_insert_rowid(ctl.db);
	disks = json_object_object_get(spec, "disks");
	for (size_t i = 0; disks && i < json_array_len(disks) && rc == SQLITE_DONE; i++) {
		struct json_object *d = json_object_array_get_idx(disks, i);
		const char *image = json_get_str(json_object_object_get(d, "image"), "name", NULL);
		char path[512];
		int64_t image_id = image ? image_find(image, path, sizeof(path), NULL, NULL) : 0;

		st = db_prepare(ctl.db,
				"INSERT INTO disks (instance_id, name, image_id) VALUES (?, ?, ?)");
		sqlite3_bind_int64(st, 1, iid);
		sqlite3_bind_text(st, 2, json_get_str(d, "name", ""), -1, SQLITE_STATIC);
		if (image_id > 0)
			sqlite3_bind_int64(st, 3, image_id);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
	}
	if (rc != SQLITE_DONE) {
		err_input(err, 409, "disks", "cannot record the disks of %s: %s", name,
			  sqlite3_errmsg(ctl.db));
		db_rollback(ctl.db);
		return -1;
	}
	/* Each NIC's address as the spec has it: claimed, or 409 when it is taken. */
	if (nics_allocate(iid, name, spec, err) < 0) {
		db_rollback(ctl.db);
		return -1;
	}
	st = db_prepare(ctl.db, "UPDATE instances SET spec = ? WHERE id = ?");
	sqlite3_bind_text(st, 1, json_text(spec), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, iid);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE || db_commit(ctl.db, err) < 0) {
		db_rollback(ctl.db);
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	}
	log_info("instance %s: adopted on host %s", name, h->name);
	for (size_t i = 0; h->unmanaged && i < json_array_len(h->unmanaged); i++)
		if (!strcmp(json_get_str(json_object_array_get_idx(h->unmanaged, i), "name", ""),
			    name)) {
			json_object_array_del_idx(h->unmanaged, i, 1);
			break;
		}
	netsync_all();
	return 0;
}
