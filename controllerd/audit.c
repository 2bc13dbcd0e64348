/*
 * audit.c - the audit log: every mutating request (POST, PUT, PATCH, DELETE; registry
 * pushes too) made with a valid token is recorded when it completes, with its time,
 * the acting token's id, name and role, the method, the route, the target path, the
 * answered status and the operation it started. Never a body, a query string or a
 * secret. The newest audit_keep rows are kept.
 */
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

static const char *const audited_methods[] = {"POST", "PUT", "PATCH", "DELETE"};

static bool method_audited(const char *method)
{
	for (size_t i = 0; i < ARRAY_SIZE(audited_methods); i++)
		if (!strcmp(method, audited_methods[i]))
			return true;
	return false;
}

/*
 * Record req if it is a mutating request made with a valid token (anonymous ones are
 * refused before they reach anything, and would let anyone flood the log). Called
 * once, when the request completes; status 0 means the client left before an answer.
 * A failure to record is logged: the change itself has happened.
 */
void audit_record(const struct request *req)
{
	sqlite3_stmt *st;

	if (req->token.id == 0 || !method_audited(req->method))
		return;
	st = db_prepare_cached(
		ctl.db, "INSERT INTO audit (time, token_id, token_name, role, method, "
			"route, target, status, operation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
	sqlite3_bind_int64(st, 1, now_ms());
	sqlite3_bind_int64(st, 2, req->token.id);
	sqlite3_bind_text(st, 3, req->token.name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, role_name(req->token.role), -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, req->method, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, req->route ? req->route->pattern : "unmatched", -1, SQLITE_STATIC);
	/* The path only: libmicrohttpd keeps the query apart. */
	sqlite3_bind_text(st, 7, req->url, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 8, (int)req->status);
	if (req->audit_op[0])
		sqlite3_bind_text(st, 9, req->audit_op, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("audit: cannot record %s %s by token %lld: %s", req->method, req->url,
			  (long long)req->token.id, sqlite3_errmsg(ctl.db));
	db_release(st);
}

/*
 * Keep the newest audit_keep requests that were carried out (2xx, 3xx) and, apart
 * from them, the newest audit_keep / 10 that were refused or abandoned: any valid
 * token, a viewer's too, can make refused requests as fast as it likes, and they must
 * never push what was done out of the log.
 */
void audit_prune(void)
{
	static const char *const sql[] = {
		"DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE status BETWEEN 200 "
		"AND 399 ORDER BY id DESC LIMIT -1 OFFSET ?)",
		"DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE status NOT BETWEEN "
		"200 AND 399 ORDER BY id DESC LIMIT -1 OFFSET ?)",
	};

	for (size_t i = 0; i < ARRAY_SIZE(sql); i++) {
		sqlite3_stmt *st = db_prepare(ctl.db, sql[i]);

		sqlite3_bind_int(st, 1, i == 0 ? ctl.cfg.audit_keep : ctl.cfg.audit_keep / 10);
		if (sqlite3_step(st) != SQLITE_DONE)
			log_warnx("audit: cannot prune: %s", sqlite3_errmsg(ctl.db));
		sqlite3_finalize(st);
	}
}
