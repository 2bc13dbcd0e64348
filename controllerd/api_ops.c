/*
 * api_ops.c - /api/v1/operations, with ?wait=S long polls that suspend the
 * connection until the operation reaches a final status or S seconds pass. A long
 * poll counts against its token's max_streams_per_token and is answered 401 at once
 * when the token is deleted, rotated or expires.
 */
#include <string.h>

#include "controllerd.h"
#include "util.h"

#define WAIT_MAX_S 60

enum MHD_Result api_ops_list(struct request *req)
{
	const char *status = http_query(req, "status");
	struct json_object *list, *out;
	struct page page;
	struct kerr err;
	sqlite3_stmt *st;
	long long created = INT64_MAX, rowid = INT64_MAX;

	if (page_begin(req, &page, &err) < 0)
		return http_reply_kerr(req, &err);
	/* Newest first: the cursor is "created_at:rowid" of the last one shown. */
	if (page.after[0] && sscanf(page.after, "%lld:%lld", &created, &rowid) != 2)
		return http_reply_error(req, 400, "after",
					"query parameter 'after' must be the 'next' cursor of a "
					"previous page");
	if (status && strcmp(status, "pending") && strcmp(status, "running") &&
	    !op_status_final(status))
		return http_reply_error(req, 400, "status",
					"status must be pending, running, succeeded, failed or "
					"cancelled");
	st = db_prepare(
		ctl.db,
		"SELECT id, created_at, rowid FROM operations WHERE (?1 IS NULL OR status = "
		"?1) AND (created_at, rowid) < (?2, ?3) ORDER BY created_at DESC, rowid DESC "
		"LIMIT ?4");
	if (status)
		sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, created);
	sqlite3_bind_int64(st, 3, rowid);
	sqlite3_bind_int64(st, 4, page.limit + 1);
	list = json_object_new_array();
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *o = op_get((const char *)sqlite3_column_text(st, 0));
		char key[48];

		snprintf(key, sizeof(key), "%lld:%lld", (long long)sqlite3_column_int64(st, 1),
			 (long long)sqlite3_column_int64(st, 2));
		if (o && !page_add(&page, list, o, key)) {
			json_object_put(o);
			break;
		}
	}
	sqlite3_finalize(st);
	out = json_object_new_object();
	page_end(&page, out, "operations", list);
	return http_reply_json(req, 200, out);
}

/* A long poll on one operation: req->ctx while it is suspended, on the waiters list. */
struct op_wait {
	struct request *req;
	char op[LINK_OP_ID_MAX + 1];
	int64_t deadline;	  /* ms */
	struct token_watch watch; /* ends the poll when its token goes */
	struct op_wait *next;
};

static struct op_wait *waiters;

static enum MHD_Result reply_op(struct request *req)
{
	const char *id = req->params[0];
	struct json_object *o = op_get(id);

	if (o == NULL)
		return http_reply_error(req, 404, NULL, "no operation %s", id);
	return http_reply_json(req, 200, o);
}

/* w waits no more (its request is answered as it resumes); false when it was not. */
static bool waiter_remove(struct op_wait *w)
{
	tokens_watch_remove(&w->watch);
	for (struct op_wait **pp = &waiters; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			w->next = NULL;
			return true;
		}
	return false;
}

/* The request is over (ctx_free): it waits no more. */
static void wait_free(struct request *req)
{
	struct op_wait *w = req->ctx;

	waiter_remove(w);
	free(w);
}

static enum MHD_Result reply_revoked(struct request *req)
{
	return http_reply_error(req, 401, NULL, "the bearer token was revoked or has expired");
}

static void revoke_cb(void *cls)
{
	struct op_wait *w = cls;

	/* Only a poll still suspended; one already woken answers as it is. */
	if (!waiter_remove(w))
		return;
	w->req->resume = reply_revoked;
	http_resume(w->req);
}

enum MHD_Result api_op_get(struct request *req)
{
	struct json_object *o;
	struct op_wait *w;
	struct kerr err;
	int64_t wait;
	const char *status;

	if (!link_op_id_valid(req->params[0]))
		return http_reply_error(req, 400, "id", "malformed operation id");
	if (http_query_int(req, "wait", 0, WAIT_MAX_S, 0, &wait, &err) < 0)
		return http_reply_kerr(req, &err);
	o = op_get(req->params[0]);
	if (o == NULL)
		return http_reply_error(req, 404, NULL, "no operation %s", req->params[0]);
	status = json_object_get_string(json_object_object_get(o, "status"));
	if (wait == 0 || op_status_final(status))
		return http_reply_json(req, 200, o);
	json_object_put(o);
	w = xcalloc(1, sizeof(*w));
	if (tokens_watch_add(&w->watch, req, revoke_cb, w, &err) < 0) {
		free(w);
		return http_reply_kerr(req, &err);
	}
	w->req = req;
	snprintf(w->op, sizeof(w->op), "%s", req->params[0]);
	w->deadline = now_ms() + wait * 1000;
	w->next = waiters;
	waiters = w;
	req->ctx = w;
	req->ctx_free = wait_free;
	http_suspend(req, reply_op);
	return MHD_YES;
}

/*
 * POST /api/v1/operations/{id}/actions/cancel: stop a pending or running job at a
 * safe point and undo what it did (jobs.c). 202 with the operation, which ends
 * "cancelled" with what was undone in its result; 409 with the reason when it has
 * ended or its kind cannot be cancelled.
 */
enum MHD_Result api_op_cancel(struct request *req)
{
	struct json_object *o;
	struct kerr err = {0};

	if (!link_op_id_valid(req->params[0]))
		return http_reply_error(req, 400, "id", "malformed operation id");
	if (jobs_cancel(req->params[0], &o, &err) < 0)
		return http_reply_kerr(req, &err);
	snprintf(req->audit_op, sizeof(req->audit_op), "%s", req->params[0]);
	return http_reply_json(req, 202, o);
}

/* Operation id reached a final status: answer everyone waiting on it. */
void api_ops_wake(const char *id)
{
	struct op_wait **pp = &waiters;

	while (*pp) {
		struct op_wait *w = *pp;

		if (strcmp(w->op, id) == 0) {
			*pp = w->next;
			w->next = NULL;
			tokens_watch_remove(&w->watch);
			http_resume(w->req);
		} else {
			pp = &w->next;
		}
	}
}

/* Answer long polls whose time is up with the operation as it stands. */
void api_ops_cron(void)
{
	struct op_wait **pp = &waiters;
	int64_t now = now_ms();

	while (*pp) {
		struct op_wait *w = *pp;

		if (w->deadline <= now) {
			*pp = w->next;
			w->next = NULL;
			tokens_watch_remove(&w->watch);
			http_resume(w->req);
		} else {
			pp = &w->next;
		}
	}
}

/* Shutdown: answer every long poll with the operation as it stands. */
void api_ops_shutdown(void)
{
	while (waiters) {
		struct op_wait *w = waiters;

		waiters = w->next;
		w->next = NULL;
		tokens_watch_remove(&w->watch);
		MHD_resume_connection(w->req->conn);
	}
}
