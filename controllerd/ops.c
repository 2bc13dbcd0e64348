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
	"updated_at"

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
	return o;
}

/* The operation as JSON (new reference), or NULL when there is no such id. */
struct json_object *op_get(const char *id)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT " OP_COLUMNS " FROM operations WHERE id = ?");
	struct json_object *o = NULL;

	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		o = op_row_json(st);
	sqlite3_finalize(st);
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

/*
 * Create a pending operation of kind on target, run by host h (may be NULL).
 * Durable before it returns. Returns the operation as JSON, or NULL with err.
 */
struct json_object *op_create(const char *kind, const char *target, struct host *h,
			      struct json_object *result, struct kerr *err)
{
	char id[LINK_OP_ID_MAX + 1];
	sqlite3_stmt *st;
	int64_t now = now_ms();
	int rc;

	link_op_id_new(id);
	st = db_prepare(
		ctl.db,
		"INSERT INTO operations (id, kind, target, host_id, host, status, "
		"created_at, updated_at, result) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)");
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
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(result);
	if (rc != SQLITE_DONE) {
		err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
		return NULL;
	}
	op_event("operation-created", id);
	return op_get(id);
}

/*
 * Move operation id on. status may be NULL (unchanged), progress < 0 unchanged,
 * phase NULL unchanged; result (a reference is consumed) and error only with a final
 * status. A final operation never changes again. Returns 0, or -1 when there is no
 * such operation or it is final already.
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
	sqlite3_stmt *st;
	int rc, changed;

	if (own) {
		if (!final)
			db_exec(ctl.db, "PRAGMA synchronous = NORMAL", NULL);
		db_begin(ctl.db);
	}
	st = db_prepare(ctl.db,
			"UPDATE operations SET status = coalesce(?, status), "
			"progress = CASE WHEN ? >= 0 THEN ? ELSE progress END, "
			"phase = coalesce(?, phase), result = coalesce(?, result), "
			"error = coalesce(?, error), updated_at = ? "
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
	sqlite3_bind_text(st, 8, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	changed = sqlite3_changes(ctl.db);
	json_object_put(result);
	if (rc != SQLITE_DONE || changed == 0) {
		if (rc != SQLITE_DONE)
			log_warnx("operation %s: cannot update: %s", id, sqlite3_errmsg(ctl.db));
		if (own) {
			db_rollback(ctl.db);
			db_exec(ctl.db, "PRAGMA synchronous = FULL", NULL);
		}
		return -1;
	}
	op_event("operation-updated", id);
	if (own) {
		struct kerr err;

		if (db_commit(ctl.db, &err) < 0)
			log_warnx("operation %s: %s", id, err.msg);
		if (!final)
			db_exec(ctl.db, "PRAGMA synchronous = FULL", NULL);
	}
	if (final)
		api_ops_wake(id);
	return 0;
}

/* Is an operation on target still pending or running? Its id goes to busy_id. */
bool op_busy(const char *target, char *busy_id, size_t len)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id FROM operations WHERE target = ? AND "
					      "status IN ('pending', 'running') LIMIT 1");
	bool busy = false;

	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		snprintf(busy_id, len, "%s", sqlite3_column_text(st, 0));
		busy = true;
	}
	sqlite3_finalize(st);
	return busy;
}

/* Send the command that carries out operation id of kind to h. */
static int op_dispatch(struct host *h, const char *id, const char *kind, struct json_object *result)
{
	if (!strcmp(kind, "probe")) {
		agentlink_cmd_send(h, LINK_CMD_PROBE, id, NULL);
		return 0;
	}
	return instances_op_resend(h, id, kind, result);
}

/*
 * Start-up: every operation that was pending or running when the controller stopped
 * is resumed (its command resent; agents run an operation id once) or, when it can't
 * be, failed with the reason.
 */
void ops_resume(void)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id, kind, host, result FROM operations "
					      "WHERE status IN ('pending', 'running')");

	while (sqlite3_step(st) == SQLITE_ROW) {
		_cleanup_free_ char *id = xstrdup((const char *)sqlite3_column_text(st, 0));
		const char *kind = (const char *)sqlite3_column_text(st, 1);
		const char *hname = (const char *)sqlite3_column_text(st, 2);
		struct host *h = hname ? host_find(hname) : NULL;

		struct json_object *result =
			sqlite3_column_type(st, 3) == SQLITE_TEXT
				? json_tokener_parse((const char *)sqlite3_column_text(st, 3))
				: NULL;
		int sent;

		/* A tombstone's delete waits for its host to come back (drift.c). */
		if (h && h->state != HOST_ONLINE && drift_tombstone_result(result)) {
			json_object_put(result);
			continue;
		}
		sent = h ? op_dispatch(h, id, kind, result) : -1;
		json_object_put(result);
		if (sent == 0) {
			log_info("operation %s: resumed after restart (%s on %s)", id, kind,
				 h->name);
			continue;
		}
		op_update(id, "failed", -1, "interrupted", NULL,
			  h || hname == NULL
				  ? "the controller restarted during this operation and cannot "
				    "resume "
				    "it"
				  : "the controller restarted and the operation's host is gone");
	}
	sqlite3_finalize(st);
}
