/*
 * api_audit.c - GET /api/v1/audit (admins): the audit log oldest first, paged with
 * ?after=ID&limit=N (the answer's "next" is the after= of the following page) and
 * filtered by the acting token with ?token=ID.
 */
#include "controllerd.h"
#include "util.h"

static struct json_object *audit_row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object();
	static const char *const text_cols[] = {"token_name", "role", "method", "route", "target"};

	json_object_object_add(o, "id", json_object_new_int64(sqlite3_column_int64(st, 0)));
	json_object_object_add(o, "time", json_object_new_int64(sqlite3_column_int64(st, 1)));
	json_object_object_add(o, "token_id",
			       sqlite3_column_type(st, 2) == SQLITE_NULL
				       ? NULL
				       : json_object_new_int64(sqlite3_column_int64(st, 2)));
	for (int i = 0; i < 5; i++)
		json_object_object_add(
			o, text_cols[i],
			json_object_new_string((const char *)sqlite3_column_text(st, 3 + i)));
	json_object_object_add(o, "status", json_object_new_int(sqlite3_column_int(st, 8)));
	json_object_object_add(
		o, "operation",
		sqlite3_column_type(st, 9) == SQLITE_NULL
			? NULL
			: json_object_new_string((const char *)sqlite3_column_text(st, 9)));
	return o;
}

enum MHD_Result api_audit_list(struct request *req)
{
	struct json_object *list, *out;
	int64_t limit, after, token, last = -1;
	struct kerr err;
	sqlite3_stmt *st;

	if (http_query_int(req, "limit", 1, 1000, 100, &limit, &err) < 0 ||
	    http_query_int(req, "after", 0, INT64_MAX, 0, &after, &err) < 0 ||
	    http_query_int(req, "token", 0, INT64_MAX, 0, &token, &err) < 0)
		return http_reply_kerr(req, &err);
	st = db_prepare(ctl.db, "SELECT id, time, token_id, token_name, role, method, route, "
				"target, status, operation FROM audit WHERE id > ?1 AND "
				"(?2 = 0 OR token_id = ?2) ORDER BY id LIMIT ?3");
	sqlite3_bind_int64(st, 1, after);
	sqlite3_bind_int64(st, 2, token);
	sqlite3_bind_int64(st, 3, limit);
	list = json_object_new_array();
	while (sqlite3_step(st) == SQLITE_ROW) {
		last = sqlite3_column_int64(st, 0);
		json_object_array_add(list, audit_row_json(st));
	}
	sqlite3_finalize(st);
	out = json_object_new_object();
	json_object_object_add(out, "entries", list);
	/* A full page may have more after it; a short one is the end for now. */
	json_object_object_add(out, "next",
			       (int64_t)json_array_len(list) == limit ? json_object_new_int64(last)
								      : NULL);
	return http_reply_json(req, 200, out);
}
