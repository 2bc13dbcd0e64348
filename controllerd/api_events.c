/*
 * api_events.c - GET /api/v1/events: Server-Sent Events from the events table.
 *
 * Each stream is a libmicrohttpd callback response. When it has nothing to send the
 * reader suspends its connection and returns 0 (libmicrohttpd's prescribed way to
 * wait without busy-looping); event_emit() resumes every waiting stream, and the
 * cron sends a comment every 15 s so proxies and clients see the stream alive. A
 * stream counts against its token's max_streams_per_token and ends when the token is
 * deleted, rotated or expires.
 */
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define SSE_KEEPALIVE_MS 15000
#define SSE_BATCH	 64

struct sse_stream {
	struct MHD_Connection *conn;
	int64_t last_id;
	char *types; /* ",a,b," or NULL for all */
	char *buf;   /* formatted, not yet sent */
	size_t len, off;
	bool suspended;
	bool closing; /* the controller stops or the token went: end the stream */
	int64_t last_write;
	struct token_watch watch;
	struct sse_stream *next;
};

static struct sse_stream *streams;

static bool type_wanted(const struct sse_stream *s, const char *type)
{
	char needle[80];

	if (s->types == NULL)
		return true;
	snprintf(needle, sizeof(needle), ",%s,", type);
	return strstr(s->types, needle) != NULL;
}

static bool fill_batch(struct sse_stream *s, bool *more);

/* Format the next wanted events after last_id into s->buf; false when there are none. */
static bool fill(struct sse_stream *s)
{
	bool more = true;

	/* A filtered stream may skip whole batches before it finds one it wants. */
	while (more)
		if (fill_batch(s, &more))
			return true;
	return false;
}

static bool fill_batch(struct sse_stream *s, bool *more)
{
	int rows = 0;
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id, type, data, time FROM events "
					      "WHERE id > ? ORDER BY id LIMIT ?");
	size_t cap = 0;

	free(s->buf);
	s->buf = NULL;
	s->len = s->off = 0;
	sqlite3_bind_int64(st, 1, s->last_id);
	sqlite3_bind_int(st, 2, SSE_BATCH);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *type = (const char *)sqlite3_column_text(st, 1);
		const char *data = (const char *)sqlite3_column_text(st, 2);
		_cleanup_free_ char *line = NULL;
		size_t n;

		s->last_id = sqlite3_column_int64(st, 0);
		rows++;
		if (!type_wanted(s, type))
			continue;
		line = xasprintf("id: %lld\nevent: %s\ndata: {\"id\":%lld,\"type\":\"%s\","
				 "\"time\":%lld,\"data\":%s}\n\n",
				 (long long)s->last_id, type, (long long)s->last_id, type,
				 (long long)sqlite3_column_int64(st, 3), data);
		n = strlen(line);
		if (s->len + n > cap) {
			cap = (s->len + n) * 2;
			s->buf = xrealloc(s->buf, cap);
		}
		memcpy(s->buf + s->len, line, n);
		s->len += n;
	}
	sqlite3_finalize(st);
	*more = rows == SSE_BATCH;
	return s->len > 0;
}

static ssize_t reader_cb(void *cls, uint64_t pos, char *out, size_t max)
{
	struct sse_stream *s = cls;
	size_t n;

	if (s->closing)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (s->off >= s->len && !fill(s)) {
		if (now_ms() - s->last_write >= SSE_KEEPALIVE_MS) {
			s->buf = xstrdup(": keepalive\n\n");
			s->len = strlen(s->buf);
			s->off = 0;
		} else {
			s->suspended = true;
			MHD_suspend_connection(s->conn);
			return 0;
		}
	}
	n = s->len - s->off < max ? s->len - s->off : max;
	memcpy(out, s->buf + s->off, n);
	s->off += n;
	s->last_write = now_ms();
	return (ssize_t)n;
}

/* The stream's token was revoked or expired: it ends now. */
static void revoke_cb(void *cls)
{
	struct sse_stream *s = cls;

	s->closing = true;
	if (s->suspended) {
		s->suspended = false;
		MHD_resume_connection(s->conn);
		http_kick();
	}
}

static void free_cb(void *cls)
{
	struct sse_stream *s = cls, **pp;

	tokens_watch_remove(&s->watch);

	for (pp = &streams; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	free(s->buf);
	free(s->types);
	free(s);
}

/* Is types (the ?type= list, or NULL) made of known event types? 0, or -1 with err. */
static int types_check(const char *types, struct kerr *err)
{
	_cleanup_free_ char *copy = NULL;
	char *save = NULL;

	if (types == NULL)
		return 0;
	if (strlen(types) > 512)
		return err_input(err, 400, "type", "query parameter 'type' is too long");
	copy = xstrdup(types);
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		if (!event_type_known(t))
			return err_input(err, 400, "type", "unknown event type '%.64s'", t);
	return 0;
}

/*
 * GET /api/v1/events/history?type=a,b&limit=N: the newest N (default 100, at most
 * 1,000) events the controller keeps (the events table: events_prune()), of those
 * types, newest first, as {"events": [{id, type, time, data}]}. What a page shows of
 * the past (the HA view's fencing history) survives a reload and a controller restart.
 */
enum MHD_Result api_events_history(struct request *req)
{
	const char *types = http_query(req, "type");
	_cleanup_free_ char *wanted = NULL;
	struct json_object *list, *out;
	int64_t limit;
	struct kerr err;
	sqlite3_stmt *st;

	if (types_check(types, &err) < 0 ||
	    http_query_int(req, "limit", 1, 1000, 100, &limit, &err) < 0)
		return http_reply_kerr(req, &err);
	wanted = types ? xasprintf(",%s,", types) : NULL;
	st = db_prepare(ctl.db, "SELECT id, type, data, time FROM events WHERE ?1 IS NULL OR "
				"instr(?1, ',' || type || ',') > 0 ORDER BY id DESC LIMIT ?2");
	if (wanted)
		sqlite3_bind_text(st, 1, wanted, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, limit);
	list = json_object_new_array();
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "id", json_object_new_int64(sqlite3_column_int64(st, 0)));
		json_object_object_add(
			o, "type",
			json_object_new_string((const char *)sqlite3_column_text(st, 1)));
		json_object_object_add(o, "time",
				       json_object_new_int64(sqlite3_column_int64(st, 3)));
		json_object_object_add(
			o, "data", json_tokener_parse((const char *)sqlite3_column_text(st, 2)));
		json_object_array_add(list, o);
	}
	sqlite3_finalize(st);
	out = json_object_new_object();
	json_object_object_add(out, "events", list);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_events_stream(struct request *req)
{
	const char *types = http_query(req, "type");
	const char *last = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Last-Event-ID");
	struct MHD_Response *resp;
	struct sse_stream *s;
	struct kerr err;

	if (types_check(types, &err) < 0)
		return http_reply_kerr(req, &err);
	s = xcalloc(1, sizeof(*s));
	if (tokens_watch_add(&s->watch, req, revoke_cb, s, &err) < 0) {
		free(s);
		return http_reply_kerr(req, &err);
	}
	s->conn = req->conn;
	s->types = types ? xasprintf(",%s,", types) : NULL;
	s->last_write = now_ms();
	if (last) {
		char *end;
		long long v = strtoll(last, &end, 10);

		if (*last == '\0' || *end || v < 0) {
			tokens_watch_remove(&s->watch);
			free(s->types);
			free(s);
			return http_reply_error(req, 400, "Last-Event-ID",
						"header Last-Event-ID must be an event id");
		}
		s->last_id = v;
	} else {
		/* A new stream starts at now: history is in the Last-Event-ID replay. */
		s->last_id = db_count(ctl.db, "SELECT coalesce(max(id), 0) FROM events");
	}
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, reader_cb, s, free_cb);
	MHD_add_response_header(resp, "Content-Type", "text/event-stream");
	s->next = streams;
	streams = s;
	/* An opening comment, so a client sees the stream is established at once. */
	s->buf = xstrdup(": kumo events\n\n");
	s->len = strlen(s->buf);
	return http_reply_response(req, 200, resp);
}

/* Wake every stream that waits for events. */
void api_events_notify(void)
{
	bool any = false;

	for (struct sse_stream *s = streams; s; s = s->next) {
		if (s->suspended) {
			s->suspended = false;
			MHD_resume_connection(s->conn);
			any = true;
		}
	}
	if (any)
		http_kick();
}

/* Open event streams, for metrics. */
unsigned api_events_streams(void)
{
	unsigned n = 0;

	for (struct sse_stream *s = streams; s; s = s->next)
		n++;
	return n;
}

/* Wake idle streams so they send their keepalive comment. */
void api_events_cron(void)
{
	int64_t now = now_ms();
	bool any = false;

	for (struct sse_stream *s = streams; s; s = s->next) {
		if (s->suspended && now - s->last_write >= SSE_KEEPALIVE_MS) {
			s->suspended = false;
			MHD_resume_connection(s->conn);
			any = true;
		}
	}
	if (any)
		http_kick();
}

/* Shutdown: every stream ends, so no connection stays suspended. */
void api_events_shutdown(void)
{
	for (struct sse_stream *s = streams; s; s = s->next) {
		s->closing = true;
		if (s->suspended) {
			s->suspended = false;
			MHD_resume_connection(s->conn);
		}
	}
}
