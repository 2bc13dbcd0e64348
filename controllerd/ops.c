/*
 * ops.c - operations: anything that touches a host is a persisted state machine
 * (pending -> running -> succeeded | failed | cancelled) with progress and a phase,
 * written to SQLite at every step so a restarted controller resumes it.
 */
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define OP_COLUMNS                                                                                 \
	"id, kind, target, host, status, progress, phase, result, error, created_at, "             \
	"updated_at, deadline, cancel, step"

/* Who hears that an operation reached a final status (main.c sets it: long polls). */
static void (*final_hook)(const char *id);

/* The job engine's rules (jobs.c), set by main.c: the store calls nothing above it. */
static int64_t (*deadline_default)(const char *kind);
static const char *(*final_status)(const char *cancel, const char *status, const char **error);

/*
 * Set the job rules: a kind's default deadline in seconds, and the final status of a
 * job that had a cancel (jobs_timeout_default(), jobs_final_status()).
 */
void ops_rules_set(int64_t (*deadline)(const char *kind),
		   const char *(*final)(const char *cancel, const char *status, const char **error))
{
	deadline_default = deadline;
	final_status = final;
}

static struct json_object *op_row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object(), *result = NULL;
	static const char *const text_cols[] = {"id", "kind", "target", "host", "status"};

	for (int i = 0; i < 5; i++)
		json_object_object_add(
			o, text_cols[i],
			sqlite3_column_type(st, i) == SQLITE_NULL
				? NULL
				: json_object_new_string((const char *)sqlite3_column_text(st, i)));
	json_object_object_add(o, "progress", json_object_new_int(sqlite3_column_int(st, 5)));
	json_object_object_add(o, "phase",
			       json_object_new_string((const char *)sqlite3_column_text(st, 6)));
	if (sqlite3_column_type(st, 7) == SQLITE_TEXT)
		result = json_tokener_parse((const char *)sqlite3_column_text(st, 7));
	json_object_object_add(o, "result", result);
	json_object_object_add(
		o, "error",
		sqlite3_column_type(st, 8) == SQLITE_NULL
			? NULL
			: json_object_new_string((const char *)sqlite3_column_text(st, 8)));
	json_object_object_add(o, "created_at", json_object_new_int64(sqlite3_column_int64(st, 9)));
	json_object_object_add(o, "updated_at",
			       json_object_new_int64(sqlite3_column_int64(st, 10)));
	/* The job's side (jobs.c): when it times out, whether a cancel was asked. */
	json_object_object_add(o, "deadline",
			       sqlite3_column_type(st, 11) == SQLITE_NULL
				       ? NULL
				       : json_object_new_int64(sqlite3_column_int64(st, 11)));
	json_object_object_add(
		o, "cancel",
		sqlite3_column_type(st, 12) == SQLITE_NULL
			? NULL
			: json_object_new_string((const char *)sqlite3_column_text(st, 12)));
	json_object_object_add(o, "step",
			       json_object_new_string((const char *)sqlite3_column_text(st, 13)));
	return o;
}

/* The operation as JSON (new reference), or NULL when there is no such id. */
struct json_object *op_get(const char *id)
{
	sqlite3_stmt *st =
		db_prepare_cached(ctl.db, "SELECT " OP_COLUMNS " FROM operations WHERE id = ?");
	struct json_object *o = NULL;

	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		o = op_row_json(st);
	db_release(st);
	return o;
}

bool op_status_final(const char *status)
{
	return !strcmp(status, "succeeded") || !strcmp(status, "failed") ||
	       !strcmp(status, "cancelled");
}

static void op_event(const char *type, const char *id)
{
	struct json_object *o = op_get(id);

	if (o)
		event_emit(type, o);
}

/* Tell subscribers operation id changed (jobs.c, after a change of its own). */
void op_event_emit(const char *id)
{
	op_event("operation-updated", id);
}

/*
 * Create a pending operation of kind on target, run by host h (may be NULL), with
 * the default deadline of its kind (jobs.c). Durable before it returns (or part of
 * the caller's transaction). Returns the operation as JSON, or NULL with err.
 */
struct json_object *op_create(const char *kind, const char *target, struct host *h,
			      struct json_object *result, struct kerr *err)
{
	return op_create_timeout(kind, target, h, result, 0, err);
}

/*
 * The same with a deadline timeout_s seconds from now (0: the kind's default; a kind
 * without one has no deadline). Past it the job ends "timed out" (jobs.c).
 */
struct json_object *op_create_timeout(const char *kind, const char *target, struct host *h,
				      struct json_object *result, int64_t timeout_s,
				      struct kerr *err)
{
	char id[LINK_OP_ID_MAX + 1];
	sqlite3_stmt *st;
	int64_t now = now_ms();
	int rc;

	if (timeout_s <= 0 && deadline_default)
		timeout_s = deadline_default(kind);
	link_op_id_new(id);
	st = db_prepare_cached(ctl.db,
			       "INSERT INTO operations (id, kind, target, host_id, host, status, "
			       "created_at, updated_at, result, deadline) VALUES (?, ?, ?, ?, ?, "
			       "'pending', ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, target, -1, SQLITE_STATIC);
	if (h) {
		sqlite3_bind_int64(st, 4, h->id);
		sqlite3_bind_text(st, 5, h->name, -1, SQLITE_STATIC);
	}
	sqlite3_bind_int64(st, 6, now);
	sqlite3_bind_int64(st, 7, now);
	if (result)
		sqlite3_bind_text(st, 8, json_text(result), -1, SQLITE_TRANSIENT);
	if (timeout_s > 0)
		sqlite3_bind_int64(st, 9, now + timeout_s * 1000);
	rc = sqlite3_step(st);
	db_release(st);
	json_object_put(result);
	if (rc != SQLITE_DONE) {
		err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
		return NULL;
	}
	op_event("operation-created", id);
	return op_get(id);
}

/* Set the one listener for final statuses (main.c; the API layer's long polls). */
void ops_final_hook_set(void (*hook)(const char *id))
{
	final_hook = hook;
}

/* The cancel asked for on operation id ("cancelled", "timed out"), or "" (into buf). */
static const char *cancel_of(const char *id, char *buf, size_t len)
{
	sqlite3_stmt *st = db_prepare_cached(ctl.db, "SELECT cancel FROM operations WHERE id = ?");

	buf[0] = '\0';
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_TEXT)
		snprintf(buf, len, "%s", sqlite3_column_text(st, 0));
	db_release(st);
	return buf;
}

/*
 * Move operation id on. status may be NULL (unchanged), progress < 0 unchanged,
 * phase NULL unchanged; result (a reference is consumed) and error only with a final
 * status. A final operation never changes again. A job being cancelled that ends
 * "failed" ends as its cancel says (jobs_final_status()). Returns 0, or -1 when there
 * is no such operation, it is final already, or the store failed (logged).
 */
int op_update(const char *id, const char *status, int progress, const char *phase,
	      struct json_object *result, const char *error)
{
	bool final = status && op_status_final(status);
	/* Inside a caller's transaction the caller commits; else the update and its
	 * event are one transaction. Progress on the way is made durable against a
	 * crash of this process but not a power cut (WAL, synchronous=NORMAL): losing it
	 * loses nothing anyone was told. A final status is on disk before anyone hears. */
	bool own = sqlite3_get_autocommit(ctl.db);
	char cancel[32];
	sqlite3_stmt *st;
	struct kerr err;
	int rc, changed;

	if (final && final_status) {
		cancel_of(id, cancel, sizeof(cancel));
		status = final_status(cancel, status, &error);
	}
	if (own) {
		if (!final)
			db_sync_relax(ctl.db);
		if (db_begin(ctl.db) < 0) {
			/* Without a transaction the event could land without the update. */
			log_warnx("operation %s: cannot begin a transaction: %s", id,
				  sqlite3_errmsg(ctl.db));
			if (!final)
				db_sync_restore(ctl.db);
			json_object_put(result);
			return -1;
		}
	}
	st = db_prepare_cached(
		ctl.db, "UPDATE operations SET status = coalesce(?, status), "
			"progress = CASE WHEN ? >= 0 THEN ? ELSE progress END, "
			"phase = coalesce(?, phase), result = coalesce(?, result), "
			"error = coalesce(?, error), updated_at = ?, "
			"step = CASE WHEN ? THEN 'done' WHEN ? = 'running' AND step = 'queued' "
			"THEN 'agent' ELSE step END "
			"WHERE id = ? AND status NOT IN ('succeeded', 'failed', 'cancelled')");
	if (status)
		sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, progress);
	sqlite3_bind_int(st, 3, progress);
	if (phase)
		sqlite3_bind_text(st, 4, phase, -1, SQLITE_STATIC);
	if (result)
		sqlite3_bind_text(st, 5, json_text(result), -1, SQLITE_TRANSIENT);
	if (error)
		sqlite3_bind_text(st, 6, error, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, now_ms());
	sqlite3_bind_int(st, 8, final);
	if (status)
		sqlite3_bind_text(st, 9, status, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 10, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	db_release(st);
	changed = sqlite3_changes(ctl.db);
	json_object_put(result);
	if (rc != SQLITE_DONE || changed == 0) {
		if (rc != SQLITE_DONE)
			log_warnx("operation %s: cannot update: %s", id, sqlite3_errmsg(ctl.db));
		if (own) {
			db_rollback(ctl.db);
			if (!final)
				db_sync_restore(ctl.db);
		}
		return -1;
	}
	op_event("operation-updated", id);
	if (own) {
		if (db_commit(ctl.db, &err) < 0)
			log_warnx("operation %s: %s", id, err.msg);
		if (!final)
			db_sync_restore(ctl.db);
	}
	if (final && final_hook)
		final_hook(id);
	return 0;
}

/*
 * Record the step a live job is at (jobs.c names them). Returns 0, or -1 when the
 * operation is final or the store failed (logged).
 */
int op_step_set(const char *id, const char *step)
{
	sqlite3_stmt *st =
		db_prepare_cached(ctl.db, "UPDATE operations SET step = ?, updated_at = ? "
					  "WHERE id = ? AND status IN ('pending', 'running')");
	int rc, changed;

	sqlite3_bind_text(st, 1, step, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now_ms());
	sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	db_release(st);
	changed = sqlite3_changes(ctl.db);
	if (rc != SQLITE_DONE)
		log_warnx("operation %s: cannot record its step: %s", id, sqlite3_errmsg(ctl.db));
	return rc == SQLITE_DONE && changed == 1 ? 0 : -1;
}

/* Is an operation on target still pending or running? Its id goes to busy_id. */
bool op_busy(const char *target, char *busy_id, size_t len)
{
	sqlite3_stmt *st =
		db_prepare_cached(ctl.db, "SELECT id FROM operations WHERE target = ? AND "
					  "status IN ('pending', 'running') LIMIT 1");
	bool busy = false;

	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		snprintf(busy_id, len, "%s", sqlite3_column_text(st, 0));
		busy = true;
	}
	db_release(st);
	return busy;
}
