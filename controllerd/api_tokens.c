/*
 * api_tokens.c - /api/v1/tokens: API tokens with roles and an optional expiry, and
 * single-use expiring join tokens for agents. A token's secret is shown once, in the
 * 201 answer (or the rotate answer); deleting or rotating a token ends its streams.
 */
#include <stdlib.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
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

static int expires_at_check(struct json_object *v, const char *field, struct kerr *err)
{
	int64_t at = json_object_get_int64(v), now = now_ms();

	if (at <= now || at > now + TOKEN_TTL_MAX * 1000)
		return err_input(err, 400, field,
				 "field '%s' must be a time in the future (ms since the epoch), "
				 "at most 10 years ahead",
				 field);
	return 0;
}

/* ttl_s and expires_in (its older name) are seconds from now; expires_at is a time. */
static const struct json_field token_fields[] = {
	{"kind", JK_STRING, true, kind_check},
	{"role", JK_STRING, false, role_check},
	{"name", JK_STRING, false, token_name_check},
	{"ttl_s", JK_INT, false, ttl_check},
	{"expires_in", JK_INT, false, ttl_check},
	{"expires_at", JK_INT, false, expires_at_check},
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
	for (int i = 5; i <= 8; i++) {
		static const char *const names[] = {"expires_at", "used_at", "used_by",
						    "rotated_at"};
		struct json_object *v = NULL;

		if (sqlite3_column_type(st, i) == SQLITE_INTEGER)
			v = json_object_new_int64(sqlite3_column_int64(st, i));
		else if (sqlite3_column_type(st, i) == SQLITE_TEXT)
			v = json_object_new_string((const char *)sqlite3_column_text(st, i));
		json_object_object_add(o, names[i - 5], v);
	}
	return o;
}

#define TOKEN_COLUMNS "id, kind, role, name, created_at, expires_at, used_at, used_by, rotated_at"

enum MHD_Result api_tokens_create(struct request *req)
{
	struct json_object *body, *out = NULL, *ev;
	char token[TOKEN_LEN + 1], digest[TOKEN_DIGEST_LEN + 1];
	const char *kind, *role;
	struct kerr err;
	sqlite3_stmt *st;
	int64_t now = now_ms(), ttl, expires, id;
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
	if (!!json_object_object_get_ex(body, "ttl_s", NULL) +
		    !!json_object_object_get_ex(body, "expires_in", NULL) +
		    !!json_object_object_get_ex(body, "expires_at", NULL) >
	    1) {
		json_object_put(body);
		return http_reply_error(req, 400, "expires_at",
					"give one of ttl_s, expires_in and expires_at");
	}
	ttl = json_get_int(
		body, "ttl_s",
		json_get_int(body, "expires_in", !strcmp(kind, "join") ? JOIN_DEFAULT_TTL : 0));
	expires = ttl ? now + ttl * 1000 : json_get_int(body, "expires_at", 0);
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
	if (expires)
		sqlite3_bind_int64(st, 6, expires);
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
	/* Events reach viewers: the id and kind only; the role, name and expiry (a join
	 * token's host) are for admins, through GET /api/v1/tokens. */
	ev = json_object_new_object();
	json_object_object_add(ev, "id", json_object_new_int64(id));
	json_object_object_add(ev, "kind", json_object_get(json_object_object_get(out, "kind")));
	event_emit("token-created", ev);
	json_object_object_add(out, "token", json_object_new_string(token));
	return http_reply_json(req, 201, out);
}

/* GET /api/v1/tokens: by id, paged (page.c). */
enum MHD_Result api_tokens_list(struct request *req)
{
	struct json_object *list, *out;
	struct page page;
	struct kerr err;
	sqlite3_stmt *st;
	char *end;
	long long after;

	if (page_begin(req, &page, &err) < 0)
		return http_reply_kerr(req, &err);
	after = strtoll(page.after, &end, 10);
	if (*end)
		return http_reply_error(req, 400, "after",
					"query parameter 'after' must be the 'next' cursor of a "
					"previous page");
	st = db_prepare(ctl.db, "SELECT " TOKEN_COLUMNS " FROM tokens WHERE id > ?1 ORDER BY id "
				"LIMIT ?2");
	sqlite3_bind_int64(st, 1, after);
	sqlite3_bind_int64(st, 2, page.limit + 1);
	list = json_object_new_array();
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *o = token_row_json(st);
		char key[24];

		snprintf(key, sizeof(key), "%lld", (long long)sqlite3_column_int64(st, 0));
		if (!page_add(&page, list, o, key)) {
			json_object_put(o);
			break;
		}
	}
	sqlite3_finalize(st);
	out = json_object_new_object();
	page_end(&page, out, "tokens", list);
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
	tokens_revoke(id);
	return http_reply_empty(req, 204);
}

/*
 * The bootstrap token's file holds the secret digest had: put the new secret there
 * (0600) so the operator's copy keeps working; a file removed by the operator (as
 * advised once the token is copied) stays removed.
 */
static void admin_file_rotate(const char *old_digest, const char *token)
{
	_cleanup_free_ char *path = xasprintf("%s/admin.token", ctl.cfg.state_dir);
	_cleanup_free_ char *text = NULL, *line = xasprintf("%s\n", token);
	char digest[TOKEN_DIGEST_LEN + 1];
	int rc;

	if (file_read_all(path, 4096, &text, NULL) < 0)
		return;
	text[strcspn(text, "\r\n")] = '\0';
	token_digest(text, digest);
	if (strcmp(digest, old_digest) != 0)
		return;
	/* A 50-byte file, like the database's own writes on this loop. */
	rc = file_write_atomic(path, line, strlen(line), 0600);
	if (rc < 0)
		log_warnx("tokens: cannot write the rotated admin token to %s: %s", path,
			  strerror(-rc));
	else
		log_info("tokens: %s now holds the rotated admin token", path);
}

/*
 * POST /api/v1/tokens/{id}/actions/rotate: a new secret for an API token, which keeps
 * its id, role, name and expiry; the old secret stops working at once and the token's
 * streams end. The new secret is in this answer only.
 */
enum MHD_Result api_token_rotate(struct request *req)
{
	char token[TOKEN_LEN + 1], digest[TOKEN_DIGEST_LEN + 1], old[TOKEN_DIGEST_LEN + 1] = "";
	struct json_object *out = NULL, *ev;
	sqlite3_stmt *st;
	char *end;
	long long id = strtoll(req->params[0], &end, 10);
	bool api = false;
	int rc;

	if (*end || id <= 0)
		return http_reply_error(req, 400, "id", "token id must be a positive integer");
	st = db_prepare(ctl.db, "SELECT kind, digest FROM tokens WHERE id = ?");
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_step(st) == SQLITE_ROW) {
		api = !strcmp((const char *)sqlite3_column_text(st, 0), "api");
		snprintf(old, sizeof(old), "%s", (const char *)sqlite3_column_text(st, 1));
	}
	sqlite3_finalize(st);
	if (old[0] == '\0')
		return http_reply_error(req, 404, NULL, "no token with id %lld", id);
	if (!api)
		return http_reply_error(req, 409, "id",
					"token %lld is a join token; make a new one instead", id);
	token_generate(token);
	token_digest(token, digest);
	st = db_prepare(ctl.db, "UPDATE tokens SET digest = ?, rotated_at = ? WHERE id = ?");
	sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now_ms());
	sqlite3_bind_int64(st, 3, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	tokens_revoke(id);
	admin_file_rotate(old, token);
	st = db_prepare(ctl.db, "SELECT " TOKEN_COLUMNS " FROM tokens WHERE id = ?");
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_step(st) == SQLITE_ROW)
		out = token_row_json(st);
	sqlite3_finalize(st);
	if (out == NULL)
		return http_reply_error(req, 500, NULL, "token vanished after rotation");
	ev = json_object_new_object();
	json_object_object_add(ev, "id", json_object_new_int64(id));
	event_emit("token-rotated", ev);
	json_object_object_add(out, "token", json_object_new_string(token));
	return http_reply_json(req, 200, out);
}
