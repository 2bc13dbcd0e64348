/*
 * api_tokens.c - /api/v1/tokens: API tokens with roles, and single-use expiring
 * join tokens for agents. A token's secret is shown once, in the 201 answer.
 */
#include <string.h>

#include "controllerd.h"
#include "token.h"
#include "util.h"

#define JOIN_DEFAULT_TTL 3600
#define TOKEN_TTL_MAX	 (10LL * 365 * 24 * 3600)

static int kind_check(struct json_object *v, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "api") && strcmp(s, "join"))
		return err_input(err, 400, field, "field '%s' must be \"api\" or \"join\"", field);
	return 0;
}

static int role_check(struct json_object *v, const char *field, struct kerr *err)
{
	enum role r;

	if (role_parse(json_object_get_string(v), &r) < 0)
		return err_input(err, 400, field,
				 "field '%s' must be \"admin\", \"operator\" or \"viewer\"", field);
	return 0;
}

static int token_name_check(struct json_object *v, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strlen(s) > 64)
		return err_input(err, 400, field, "field '%s' is longer than 64 characters", field);
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return err_input(err, 400, field, "field '%s' has a control character",
					 field);
	return 0;
}

static int ttl_check(struct json_object *v, const char *field, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 1 || n > TOKEN_TTL_MAX)
		return err_input(err, 400, field, "field '%s' must be 1..%lld seconds", field,
				 TOKEN_TTL_MAX);
	return 0;
}

static const struct json_field token_fields[] = {
	{"kind", JK_STRING, true, kind_check},
	{"role", JK_STRING, false, role_check},
	{"name", JK_STRING, false, token_name_check},
	{"expires_in", JK_INT, false, ttl_check},
	{NULL, 0, false, NULL},
};
const struct json_field *const token_create_fields = token_fields;

static struct json_object *token_row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "id", json_object_new_int64(sqlite3_column_int64(st, 0)));
	json_object_object_add(o, "kind",
			       json_object_new_string((const char *)sqlite3_column_text(st, 1)));
	json_object_object_add(
		o, "role",
		sqlite3_column_type(st, 2) == SQLITE_NULL
			? NULL
			: json_object_new_string((const char *)sqlite3_column_text(st, 2)));
	json_object_object_add(o, "name",
			       json_object_new_string((const char *)sqlite3_column_text(st, 3)));
	json_object_object_add(o, "created_at", json_object_new_int64(sqlite3_column_int64(st, 4)));
	for (int i = 5; i <= 7; i++) {
		static const char *const names[] = {"expires_at", "used_at", "used_by"};
		struct json_object *v = NULL;

		if (sqlite3_column_type(st, i) == SQLITE_INTEGER)
			v = json_object_new_int64(sqlite3_column_int64(st, i));
		else if (sqlite3_column_type(st, i) == SQLITE_TEXT)
			v = json_object_new_string((const char *)sqlite3_column_text(st, i));
		json_object_object_add(o, names[i - 5], v);
	}
	return o;
}

#define TOKEN_COLUMNS "id, kind, role, name, created_at, expires_at, used_at, used_by"

enum MHD_Result api_tokens_create(struct request *req)
{
	struct json_object *body, *out = NULL, *ev;
	char token[TOKEN_LEN + 1], digest[TOKEN_DIGEST_LEN + 1];
	const char *kind, *role;
	struct kerr err;
	sqlite3_stmt *st;
	int64_t now = now_ms(), ttl, id;
	int rc;

	if (http_body_json(req, token_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	kind = json_get_str(body, "kind", "");
	role = json_get_str(body, "role", NULL);
	if (!strcmp(kind, "api") && role == NULL) {
		json_object_put(body);
		return http_reply_error(req, 400, "role",
					"field 'role' is required for an api token");
	}
	if (!strcmp(kind, "join") && role) {
		json_object_put(body);
		return http_reply_error(req, 400, "role", "a join token has no role");
	}
	ttl = json_get_int(body, "expires_in", !strcmp(kind, "join") ? JOIN_DEFAULT_TTL : 0);
	token_generate(token);
	token_digest(token, digest);
	st = db_prepare(ctl.db,
			"INSERT INTO tokens (kind, role, name, digest, created_at, expires_at) "
			"VALUES (?, ?, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, kind, -1, SQLITE_TRANSIENT);
	if (role)
		sqlite3_bind_text(st, 2, role, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, json_get_str(body, "name", ""), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, digest, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, now);
	if (ttl)
		sqlite3_bind_int64(st, 6, now + ttl * 1000);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(body);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	id = sqlite3_last_insert_rowid(ctl.db);

	st = db_prepare(ctl.db, "SELECT " TOKEN_COLUMNS " FROM tokens WHERE id = ?");
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_step(st) == SQLITE_ROW)
		out = token_row_json(st);
	sqlite3_finalize(st);
	if (out == NULL)
		return http_reply_error(req, 500, NULL, "token vanished after insert");
	ev = json_object_get(out);
	event_emit("token-created", ev);
	json_object_object_add(out, "token", json_object_new_string(token));
	return http_reply_json(req, 201, out);
}

enum MHD_Result api_tokens_list(struct request *req)
{
	struct json_object *list = json_object_new_array(), *out = json_object_new_object();
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT " TOKEN_COLUMNS " FROM tokens ORDER BY id");

	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(list, token_row_json(st));
	sqlite3_finalize(st);
	json_object_object_add(out, "tokens", list);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_token_delete(struct request *req)
{
	struct json_object *ev;
	sqlite3_stmt *st;
	char *end;
	long long id = strtoll(req->params[0], &end, 10);
	int rc, changed;

	if (*end || id <= 0)
		return http_reply_error(req, 400, "id", "token id must be a positive integer");
	if (id == req->token_id)
		return http_reply_error(req, 409, "id",
					"a token cannot delete itself; use another admin token");
	st = db_prepare(ctl.db, "DELETE FROM tokens WHERE id = ?");
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	changed = sqlite3_changes(ctl.db);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	if (changed == 0)
		return http_reply_error(req, 404, NULL, "no token with id %lld", id);
	ev = json_object_new_object();
	json_object_object_add(ev, "id", json_object_new_int64(id));
	event_emit("token-deleted", ev);
	return http_reply_empty(req, 204);
}
