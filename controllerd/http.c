/*
 * http.c - the REST server: libmicrohttpd driven from the libuv loop through its
 * epoll fd (never spinning inside it: see http_run()), routing over the table routes.c
 * holds, authentication, body limits, and the one place that turns errors into HTTP
 * statuses and JSON bodies. It is the bottom of the API layer: the route table, the
 * registry's dialect and the authentication, audit and metrics callbacks are given to it
 * by main.c (http_hooks_set()), and a handler that parks a request hangs its state on
 * req->ctx with the function that lets go of it; http.c calls none of them by name.
 * tests/check_layers.sh keeps it so.
 */
#include <arpa/inet.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "controllerd.h"
#include "log.h"
#include "token.h"
#include "util.h"

/* The route table (routes.c, set by main.c) and the URL space with its own dialect. */
static const struct route *routes;
static size_t routes_count;
static const struct http_dialect *dialect;
static const struct http_hooks *hooks; /* auth, audit, metrics (main.c) */

/* Call auth, audit and metrics through h (the caller's, for the process's life). */
void http_hooks_set(const struct http_hooks *h)
{
	hooks = h;
}

/*
 * Serve routes[0..n) (the table stays the caller's). The HTTP layer knows handlers only
 * through it, so it calls no API code of its own accord.
 */
void http_routes_set(const struct route *table, size_t n)
{
	routes = table;
	routes_count = n;
}

/* Let d answer errors and challenges for the URLs it owns (the registry's /v2/). */
void http_dialect_set(const struct http_dialect *d)
{
	dialect = d;
}

static bool dialect_owns(const char *url)
{
	return dialect && dialect->owns(url);
}

/*
 * GnuTLS priorities: TLS 1.2 and 1.3 only, forward-secret ECDHE key exchange (for an
 * ECDSA or an RSA certificate) and AEAD ciphers only - no CBC, no SHA-1 MACs.
 */
#define TLS_PRIORITIES                                                                             \
	"SECURE256:+SECURE128:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:"       \
	"+AES-128-GCM:+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:"          \
	"%SERVER_PRECEDENCE"

/* Routes a configuration switch opens to anyone; their row's role applies otherwise. */
static const struct {
	const char *pattern;
	const bool *open;
} public_routes[] = {
	{"/metrics", &ctl.cfg.metrics_public},
};

static bool route_public(const struct route *r)
{
	for (size_t i = 0; r && i < ARRAY_SIZE(public_routes); i++)
		if (!strcmp(r->pattern, public_routes[i].pattern))
			return *public_routes[i].open;
	return false;
}

static struct MHD_Daemon *daemon_;
static uv_poll_t http_poll;
static uv_timer_t http_timer;
static uv_idle_t http_kicker;
static uv_timer_t http_watch_timer; /* checks the clients of watched requests */
static struct request *watched;	    /* suspended with http_suspend_watched() */

/* Match one pattern; on success fill params (malloc'd copies). */
static bool route_match(const char *pattern, const char *url, char *params[2])
{
	int n = 0;

	while (*pattern && *url) {
		if (pattern[0] == '*' && pattern[1] == '\0') {
			if (n == 2)
				goto fail;
			params[n] = xstrdup(url);
			return true;
		}
		if (pattern[0] == '{' && pattern[1] == '}') {
			const char *end = strchr(url, '/');
			size_t len = end ? (size_t)(end - url) : strlen(url);

			if (len == 0 || n == 2)
				goto fail;
			params[n] = xmalloc(len + 1);
			memcpy(params[n], url, len);
			params[n][len] = '\0';
			n++;
			pattern += 2;
			url += len;
			continue;
		}
		if (*pattern != *url)
			goto fail;
		pattern++;
		url++;
	}
	if (*pattern == '\0' && *url == '\0')
		return true;
fail:
	while (n > 0)
		free(params[--n]), params[n] = NULL;
	return false;
}

/* Find the route for method and url; *allow lists the methods the path has. */
static const struct route *route_find(const char *method, const char *url, char *params[2],
				      char *allow, size_t allowlen)
{
	const struct route *found = NULL;

	allow[0] = '\0';
	for (size_t i = 0; i < routes_count; i++) {
		char *p[2] = {NULL, NULL};

		if (!route_match(routes[i].pattern, url, p))
			continue;
		if (strlen(allow) + strlen(routes[i].method) + 3 < allowlen) {
			if (allow[0])
				strcat(allow, ", ");
			strcat(allow, routes[i].method);
		}
		if (found == NULL && strcmp(routes[i].method, method) == 0) {
			found = &routes[i];
			params[0] = p[0];
			params[1] = p[1];
		} else {
			free(p[0]);
			free(p[1]);
		}
	}
	return found;
}

static const char *route_label(const struct request *req)
{
	return req->route ? req->route->pattern : "unmatched";
}

/* Queue an answer now: the request's writes, if any, are durable. */
static enum MHD_Result reply_queue(struct request *req, unsigned status, struct MHD_Response *resp)
{
	enum MHD_Result ret = MHD_queue_response(req->conn, status, resp);

	MHD_destroy_response(resp);
	req->status = status;
	hooks->answered(req->method, route_label(req), status,
			(double)(now_us() - req->started_us) / 1e6);
	return ret;
}

/* The held answer, once the commit queue has made the request's writes durable. */
static enum MHD_Result reply_held(struct request *req)
{
	struct MHD_Response *resp = req->held;

	req->held = NULL;
	return reply_queue(req, req->held_status, resp);
}

static void reply_durable_cb(struct db_waiter *w)
{
	struct request *req = (struct request *)((char *)w - offsetof(struct request, durable));

	http_resume(req);
}

enum MHD_Result http_reply_response(struct request *req, unsigned status, struct MHD_Response *resp)
{
	uint64_t seq = db_commit_seq();

	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(resp, "X-Frame-Options", "DENY");
	MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
	/* JSON and text load nothing; the dashboard sets its own policy naming its code. */
	if (MHD_get_response_header(resp, "Content-Security-Policy") == NULL)
		MHD_add_response_header(resp, "Content-Security-Policy", HTTP_CSP_NONE);
	if (ctl.cfg.tls)
		MHD_add_response_header(resp, "Strict-Transport-Security", "max-age=31536000");
	if (dialect_owns(req->url) && dialect->header)
		MHD_add_response_header(resp, dialect->header, dialect->header_value);
	/* Group commit: something was committed while this request ran (its own writes,
	 * or its neighbours'), so the answer waits until that is on disk; the commit queue
	 * resumes the connection then, and reply_held() sends it. */
	if (seq > req->db_seq && db_durable_wait(&req->durable, seq, reply_durable_cb)) {
		req->held = resp;
		req->held_status = status;
		http_suspend(req, reply_held);
		return MHD_YES;
	}
	return reply_queue(req, status, resp);
}

enum MHD_Result http_reply_text(struct request *req, unsigned status, const char *ctype, char *text)
{
	struct MHD_Response *resp;

	/* Takes text: libmicrohttpd frees it with the response. */
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", ctype);
	return http_reply_response(req, status, resp);
}

/* "\"<32 hex>\"": the first 128 bits of the body's SHA-256, quoted as RFC 9110 wants. */
static void etag_of(const char *text, char *out, size_t len)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char hex[33];

	EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha256(), NULL);
	hex_encode(md, 16, hex);
	snprintf(out, len, "\"%s\"", hex);
}

/* Does an If-None-Match header (a list of tags, or "*") name etag? */
static bool etag_matches(const char *header, const char *etag)
{
	size_t n = strlen(etag);

	if (header == NULL)
		return false;
	for (const char *p = header; *p;) {
		p += strspn(p, " \t,");
		if (*p == '*')
			return true;
		if (strncmp(p, "W/", 2) == 0)
			p += 2;
		if (strncmp(p, etag, n) == 0 && (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
			return true;
		p += strcspn(p, ",");
	}
	return false;
}

/* Answer with obj as JSON (a reference is consumed). */
enum MHD_Result http_reply_json(struct request *req, unsigned status, struct json_object *obj)
{
	char *text = xasprintf(
		"%s\n", json_object_to_json_string_ext(
				obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	struct MHD_Response *resp;
	char etag[2 + 32 + 1];

	/* A 202 answers with the operation it started: the audit log names it. */
	if (status == 202 && json_object_object_get_ex(obj, "kind", NULL))
		snprintf(req->audit_op, sizeof(req->audit_op), "%s", json_get_str(obj, "id", ""));

	json_object_put(obj);
	if (status != 200 || strcmp(req->method, "GET") != 0)
		return http_reply_text(req, status, "application/json", text);
	/* A GET's answer carries a strong validator: a client that has it already gets a
	 * 304 without the body (a dashboard polling a large list, a script waiting for a
	 * change). */
	etag_of(text, etag, sizeof(etag));
	if (etag_matches(MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "If-None-Match"),
			 etag)) {
		free(text);
		resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
		MHD_add_response_header(resp, "ETag", etag);
		return http_reply_response(req, 304, resp);
	}
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "ETag", etag);
	return http_reply_response(req, 200, resp);
}

static enum MHD_Result reply_error_v(struct request *req, unsigned status, const char *field,
				     const char *allow, const char *fmt, va_list ap)
	__attribute__((format(printf, 5, 0)));
static enum MHD_Result reply_error_v(struct request *req, unsigned status, const char *field,
				     const char *allow, const char *fmt, va_list ap)
{
	struct json_object *obj = json_object_new_object();
	struct MHD_Response *resp;
	char msg[512], *text;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	json_object_object_add(obj, "error", json_object_new_string(msg));
	if (field && field[0])
		json_object_object_add(obj, "field", json_object_new_string(field));
	/* Registry clients read the distribution spec's error shape. */
	if (dialect_owns(req->url))
		text = dialect->error_text(status, NULL, msg, NULL);
	else
		text = xasprintf("%s\n", json_text(obj));
	json_object_put(obj);
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	if (allow)
		MHD_add_response_header(resp, "Allow", allow);
	/* A registry client needs to know where to get a token, and for what. */
	if (status == 401 && dialect_owns(req->url))
		dialect->challenge(req, resp, false);
	else if (status == 401)
		MHD_add_response_header(resp, "WWW-Authenticate", "Bearer realm=\"kumo\"");
	return http_reply_response(req, status, resp);
}

enum MHD_Result http_reply_error(struct request *req, unsigned status, const char *field,
				 const char *fmt, ...)
{
	enum MHD_Result ret;
	va_list ap;

	va_start(ap, fmt);
	ret = reply_error_v(req, status, field, NULL, fmt, ap);
	va_end(ap);
	return ret;
}

static enum MHD_Result reply_error_allow(struct request *req, const char *allow, const char *fmt,
					 ...) __attribute__((format(printf, 3, 4)));
static enum MHD_Result reply_error_allow(struct request *req, const char *allow, const char *fmt,
					 ...)
{
	enum MHD_Result ret;
	va_list ap;

	va_start(ap, fmt);
	ret = reply_error_v(req, 405, NULL, allow, fmt, ap);
	va_end(ap);
	return ret;
}

/* The REST layer's one translation of a struct kerr: its status, or 500. */
enum MHD_Result http_reply_kerr(struct request *req, const struct kerr *err)
{
	unsigned status = err->status ? (unsigned)err->status : 500;

	if (status >= 500)
		log_warnx("api: %s %s: %s", req->method, req->url, err->msg);
	return http_reply_error(req, status, err->field, "%s", err->msg);
}

enum MHD_Result http_reply_empty(struct request *req, unsigned status)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);

	return http_reply_response(req, status, resp);
}

/* Parse the request body as a JSON object and check it against fields. */
int http_body_json(struct request *req, const struct json_field *fields, struct json_object **out,
		   struct kerr *err)
{
	struct json_object *obj;

	if (json_body_parse(req->body ? req->body : "", req->body_len, &obj, err) < 0)
		return -1;
	if (json_fields_check(obj, fields, err) < 0) {
		json_object_put(obj);
		return -1;
	}
	*out = obj;
	return 0;
}

const char *http_query(struct request *req, const char *key)
{
	return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, key);
}

/* An integer query parameter in min..max, def when absent. */
int http_query_int(struct request *req, const char *key, int64_t min, int64_t max, int64_t def,
		   int64_t *out, struct kerr *err)
{
	const char *s = http_query(req, key);
	char *end;
	long long v;

	if (s == NULL) {
		*out = def;
		return 0;
	}
	v = strtoll(s, &end, 10);
	if (*s == '\0' || *end || v < min || v > max)
		return err_input(err, 400, key,
				 "query parameter '%s' must be an integer in %lld..%lld", key,
				 (long long)min, (long long)max);
	*out = v;
	return 0;
}

struct query_check {
	const char *allowed;
	char bad[64];
};

static enum MHD_Result query_iter(void *cls, enum MHD_ValueKind kind, const char *key,
				  const char *value)
{
	struct query_check *qc = cls;
	const char *p = qc->allowed;
	size_t klen = strlen(key);

	while (*p) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len == klen && strncmp(p, key, len) == 0)
			return MHD_YES;
		p += len + (end ? 1 : 0);
	}
	snprintf(qc->bad, sizeof(qc->bad), "%s", key);
	return MHD_NO;
}

/* One chunk of an upload on its way to disk. */
struct upload_write {
	uv_fs_t fs;
	struct request *req;
	size_t len, done;
	char data[];
};

static bool http_stopping;

static void upload_write_cb(uv_fs_t *fs)
{
	struct upload_write *w = fs->data;
	struct request *req = w->req;
	ssize_t n = fs->result;

	uv_fs_req_cleanup(fs);
	if (n < 0) {
		snprintf(req->upload_error, sizeof(req->upload_error),
			 "cannot store the upload: %s", uv_strerror((int)n));
	} else {
		w->done += (size_t)n;
		req->upload_len += (uint64_t)n;
		if (w->done < w->len && n > 0) {
			uv_buf_t buf = uv_buf_init(w->data + w->done, (unsigned)(w->len - w->done));

			uv_fs_write(ctl.loop, &w->fs, req->upload_fd, &buf, 1, -1, upload_write_cb);
			return;
		}
	}
	free(w);
	/* The daemon may be gone at shutdown; the connection with it. */
	if (!http_stopping) {
		MHD_resume_connection(req->conn);
		http_kick();
	}
}

/*
 * Append len bytes of a streamed body to req->upload_fd off the loop (a shared pool
 * may be NFS): the chunk is copied, the connection suspended until it is written.
 * A failure is kept in req->upload_error for the route's handler to answer.
 */
void http_upload_write(struct request *req, const char *data, size_t len)
{
	struct upload_write *w = xmalloc(sizeof(*w) + len);
	uv_buf_t buf;

	memcpy(w->data, data, len);
	w->req = req;
	w->len = len;
	w->done = 0;
	w->fs.data = w;
	buf = uv_buf_init(w->data, (unsigned)len);
	MHD_suspend_connection(req->conn);
	if (uv_fs_write(ctl.loop, &w->fs, req->upload_fd, &buf, 1, -1, upload_write_cb) < 0) {
		snprintf(req->upload_error, sizeof(req->upload_error), "cannot store the upload");
		free(w);
		MHD_resume_connection(req->conn);
	}
}

/* Stop processing the request until http_resume(); resume runs on the next call. */
void http_suspend(struct request *req, enum MHD_Result (*resume)(struct request *req))
{
	req->resume = resume;
	MHD_suspend_connection(req->conn);
}

static void watch_remove(struct request *req)
{
	if (!req->watched)
		return;
	for (struct request **pp = &watched; *pp; pp = &(*pp)->watch_next) {
		if (*pp == req) {
			*pp = req->watch_next;
			break;
		}
	}
	req->watched = false;
	req->watch_next = NULL;
}

void http_resume(struct request *req)
{
	watch_remove(req);
	MHD_resume_connection(req->conn);
	http_kick();
}

/*
 * Has the client closed its side of req's connection? libmicrohttpd does not watch a
 * suspended connection, so nobody would notice until the answer comes. POLLRDHUP says
 * so even with bytes still unread (a TLS close_notify before the FIN).
 */
static bool client_gone(struct request *req)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	struct pollfd p;

	if (ci == NULL)
		return false;
	p.fd = ci->connect_fd;
	p.events = POLLRDHUP;
	p.revents = 0;
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Let go of what the handler hung on req with its ctx_free, at most once. */
static void ctx_release(struct request *req)
{
	void (*release)(struct request *) = req->ctx_free;

	if (release == NULL)
		return; /* none, or a stream's: its end() releases it */
	req->ctx_free = NULL;
	release(req);
	req->ctx = NULL;
}

/*
 * Every second while requests are watched: one whose client went away lets go of what
 * it waits for at once (its ctx_free: a query is cancelled on its host, an exec
 * killed), then resumes with client_gone set and no ctx, for libmicrohttpd to end it.
 */
static void watch_cb(uv_timer_t *timer)
{
	struct request *req, *next;

	for (req = watched; req; req = next) {
		next = req->watch_next;
		if (!client_gone(req))
			continue;
		log_info("api: %s %s: the client went away; letting go of its wait", req->method,
			 req->url);
		ctx_release(req);
		req->client_gone = true;
		http_resume(req);
	}
	if (watched == NULL)
		uv_timer_stop(timer);
}

/*
 * http_suspend() for a wait that may be long and costs its host work (an exec): its
 * client is checked every second, and one that went away ends the wait (watch_cb()).
 */
void http_suspend_watched(struct request *req, enum MHD_Result (*resume)(struct request *req))
{
	http_suspend(req, resume);
	req->watched = true;
	req->watch_next = watched;
	watched = req;
	if (!uv_is_active((uv_handle_t *)&http_watch_timer))
		uv_timer_start(&http_watch_timer, watch_cb, 1000, 1000);
}

/*
 * Who the request acts as (req->role, req->token); ROLE_NONE with why for a 401.
 * Routes with credentials of their own (the registry: Basic, tokens from /v2/token)
 * check them through their stream's authenticate.
 */
/*
 * A browser cannot set headers on a WebSocket, and the token never goes in a URL (logs
 * keep URLs): the dashboard offers it as a subprotocol, "kumo.token.<token>", next to
 * "kumo" (the one ws.c agrees to, so the token is never echoed). Into buf as
 * "Bearer <token>"; NULL when the request offers none.
 */
static const char *websocket_bearer(struct request *req, char *buf, size_t len)
{
	const char *v =
		MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Sec-WebSocket-Protocol");
	const char *p = v ? strstr(v, "kumo.token.") : NULL;

	if (p == NULL)
		return NULL;
	p += strlen("kumo.token.");
	snprintf(buf, len, "Bearer %.*s", (int)strcspn(p, " \t,"), p);
	return buf;
}

static enum role request_authenticate(struct request *req, const char **why)
{
	const char *auth = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Authorization");
	char bearer[TOKEN_LEN + 16];

	if (auth == NULL)
		auth = websocket_bearer(req, bearer, sizeof(bearer));

	if (req->route && req->route->stream && req->route->stream->authenticate) {
		memset(&req->token, 0, sizeof(req->token));
		req->token_id = 0;
		req->role = req->route->stream->authenticate(req, auth);
		*why = "valid credentials are required: an API token (as a bearer or a Basic "
		       "password) or a token from /v2/token";
		if (req->role == ROLE_NONE)
			return ROLE_NONE;
		/* The API token behind them, for the audit log. */
		req->token.id = req->token_id;
		req->token.role = req->role;
		hooks->token_name(req->token_id, req->token.name, sizeof(req->token.name));
		return req->role;
	}
	req->role = hooks->authenticate(auth, &req->token, why);
	req->token_id = req->token.id;
	return req->role;
}

/* Does the request need a token? Under /api/v1 always, so an anonymous caller learns no
 * routes; elsewhere when its route says so. */
static bool token_needed(const struct request *req)
{
	return strncmp(req->url, "/api/", 5) == 0 ||
	       (req->route && req->route->role != ROLE_NONE && !route_public(req->route));
}

static enum MHD_Result dispatch(struct request *req)
{
	char allow[128];
	const char *why;
	bool public_route;
	struct query_check qc = {0};

	/* Matched at the first call already when the route streams; the Allow list of a
	 * path without this method is computed here. */
	if (!req->routed || req->route == NULL)
		req->route = route_find(req->method, req->url, req->params, allow, sizeof(allow));
	req->routed = true;
	public_route = route_public(req->route);
	/* Checked when the headers came in already (access_cb), unless resumed since. */
	if (token_needed(req) && !req->authenticated &&
	    request_authenticate(req, &why) == ROLE_NONE)
		return http_reply_error(req, 401, NULL, "%s", why);
	if (req->route == NULL) {
		if (allow[0])
			return reply_error_allow(req, allow,
						 "method %s is not allowed on %s; use %s",
						 req->method, req->url, allow);
		return http_reply_error(req, 404, NULL, "no such resource: %s", req->url);
	}
	if (req->role < req->route->role && !public_route)
		return http_reply_error(req, 403, NULL, "this needs the %s role; the token has %s",
					hooks->role_label(req->route->role),
					hooks->role_label(req->role));
	if (req->body_too_large)
		return http_reply_error(req, 413, NULL, "request body is over the %d-byte limit",
					ctl.cfg.max_body);
	qc.allowed = req->route->query;
	MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, query_iter, &qc);
	if (qc.bad[0])
		return http_reply_error(req, 400, qc.bad, "unknown query parameter '%s'", qc.bad);
	return req->route->fn(req);
}

/*
 * A streaming route is matched and authorised before its body arrives, so a large
 * upload is refused before a byte of it is stored. Returns true when this request
 * streams (and may have been answered already: req->status set).
 */
static bool stream_begin(struct request *req)
{
	char allow[128];
	const char *why;

	req->route = route_find(req->method, req->url, req->params, allow, sizeof(allow));
	req->routed = true;
	if (req->route == NULL || !req->route->stream)
		return false;
	if (request_authenticate(req, &why) == ROLE_NONE) {
		http_reply_error(req, 401, NULL, "%s", why);
	} else if (req->role < req->route->role) {
		http_reply_error(req, 403, NULL, "this needs the %s role; the token has %s",
				 hooks->role_label(req->route->role), hooks->role_label(req->role));
	} else {
		/* An upload its token allows may take as long as its bytes take. */
		http_conns_busy(req->conn);
		req->route->stream->begin(req);
	}
	return true;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn, const char *url,
				 const char *method, const char *version, const char *upload_data,
				 size_t *upload_data_size, void **con_cls)
{
	struct request *req = *con_cls;

	if (req == NULL) {
		const char *cl;

		req = xcalloc(1, sizeof(*req));
		req->conn = conn;
		req->started_us = now_us();
		req->db_seq = db_commit_seq();
		http_conns_headers_done(conn);
		req->url = url;
		req->method = method;
		req->upload_fd = -1;
		*con_cls = req;
		if (stream_begin(req))
			return MHD_YES;
		/* The token before the body: a caller without one is answered now and its
		 * body is never kept, so anonymous clients cannot hold memory or a
		 * connection's body time. */
		if (token_needed(req)) {
			const char *why;

			if (request_authenticate(req, &why) == ROLE_NONE) {
				http_reply_error(req, 401, NULL, "%s", why);
				return MHD_YES;
			}
			req->authenticated = true;
		}
		cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
		if (cl && strtoull(cl, NULL, 10) > (unsigned long long)ctl.cfg.max_body)
			req->body_too_large = true;
		return MHD_YES;
	}
	if (*upload_data_size && req->route && req->route->stream) {
		/* After an early answer (401, 400...) the body is read and dropped. */
		if (req->status == 0)
			req->route->stream->data(req, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (req->status) { /* answered early: the rest of the body is dropped */
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (*upload_data_size) {
		if (!req->body_too_large) {
			if (req->body_len + *upload_data_size > (size_t)ctl.cfg.max_body) {
				req->body_too_large = true;
				free(req->body);
				req->body = NULL;
				req->body_len = 0;
			} else {
				req->body =
					xrealloc(req->body, req->body_len + *upload_data_size + 1);
				memcpy(req->body + req->body_len, upload_data, *upload_data_size);
				req->body_len += *upload_data_size;
				req->body[req->body_len] = '\0';
			}
		}
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (req->resume) {
		enum MHD_Result (*fn)(struct request *) = req->resume;

		req->resume = NULL;
		return fn(req);
	}
	http_conns_busy(conn); /* the request is whole */
	return dispatch(req);
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct request *req = *con_cls;

	http_conns_request_done(conn);
	if (req == NULL)
		return;
	watch_remove(req);
	db_durable_cancel(&req->durable);
	if (req->held)
		MHD_destroy_response(req->held);
	ctx_release(req);
	hooks->ended(req);
	if (req->route && req->route->stream)
		req->route->stream->end(req);
	free(req->params[0]);
	free(req->params[1]);
	free(req->body);
	json_object_put(req->registry_access);
	free(req);
	*con_cls = NULL;
}

/*
 * How libmicrohttpd is run. It asks to be run again when its epoll fd is readable, after
 * MHD_get_timeout(), or at once (timeout 0) while a connection has work it did not finish.
 *
 * "At once" is never a zero-delay timer: libuv 1.44 runs a timer that its own callback
 * restarted with delay 0 again in the same timer phase, without polling, for as long as
 * the delay stays 0. And libmicrohttpd 0.9.75 (epoll and TLS) keeps a connection whose
 * TLS handshake is incomplete in its ready list (GnuTLS's EAGAIN does not clear it), so
 * its timeout stays 0 until the handshake ends: one client that sends five bytes of a
 * ClientHello and waits stalled the whole loop (agent link, timers, cron, the deadlines
 * of http_conns.c that would have closed it) for up to the 120 s idle timeout, and a
 * client trickling bytes for ever. So an immediate run goes through an idle handle,
 * after the loop has polled for I/O; and after HTTP_EAGER_RUNS immediate runs in a
 * row with no new event from the epoll fd or a resume (nothing can have changed but a
 * connection libmicrohttpd only believes ready), runs are HTTP_BUSY_MS apart until an
 * event comes. http_conns.c's header deadline closes the half-shaken connection.
 */
#define HTTP_EAGER_RUNS 64
#define HTTP_BUSY_MS	2

static unsigned http_eager_runs; /* immediate runs since the last event */

static void http_run(void);

static void timer_cb(uv_timer_t *t)
{
	http_run();
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
	http_eager_runs = 0;
	http_run();
}

static void kick_cb(uv_idle_t *idle)
{
	uv_idle_stop(idle);
	http_run();
}

/* Run libmicrohttpd soon, from the loop (never from inside its own callbacks). */
void http_kick(void)
{
	if (daemon_) {
		http_eager_runs = 0;
		uv_idle_start(&http_kicker, kick_cb);
	}
}

static void http_run(void)
{
	MHD_UNSIGNED_LONG_LONG timeout;

	MHD_run(daemon_);
	if (MHD_get_timeout(daemon_, &timeout) != MHD_YES) {
		uv_timer_stop(&http_timer);
		return;
	}
	if (timeout == 0 && http_eager_runs < HTTP_EAGER_RUNS) {
		http_eager_runs++;
		uv_timer_stop(&http_timer);
		uv_idle_start(&http_kicker, kick_cb);
		return;
	}
	if (timeout == 0)
		timeout = HTTP_BUSY_MS;
	else
		http_eager_runs = 0;
	uv_timer_start(&http_timer, timer_cb, timeout, 0);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	buf[strcspn(buf, "\n")] = '\0';
	log_debug("http: %s", buf);
}

/*
 * Start the API server on cfg.api_listen: TLS (TLS_PRIORITIES) with the operator's
 * certificate or the one tls_ensure() made, unless configured off. Returns 0 or -1 with err.
 */
int http_start(struct kerr *err)
{
	_cleanup_free_ char *key = NULL, *cert = NULL;
	struct sockaddr_in sin = {.sin_family = AF_INET};
	const union MHD_DaemonInfo *info;
	char host[64];
	const char *colon = strrchr(ctl.cfg.api_listen, ':');
	/* Upgrade: the consoles' WebSockets (ws.c). */
	unsigned flags =
		MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG;

	if (hooks == NULL || routes == NULL)
		fatalx("http: started before main.c set its routes and hooks");

	snprintf(host, sizeof(host), "%.*s", (int)(colon - ctl.cfg.api_listen), ctl.cfg.api_listen);
	inet_pton(AF_INET, host, &sin.sin_addr);
	sin.sin_port = htons((uint16_t)atoi(colon + 1));

	if (ctl.cfg.tls) {
		/* The operator's pair (checked to match by config_check), else the
		 * self-signed one tls_ensure() made. */
		_cleanup_free_ char *kp = ctl.cfg.tls_key[0]
						  ? xstrdup(ctl.cfg.tls_key)
						  : xasprintf("%s/tls.key", ctl.cfg.state_dir);
		_cleanup_free_ char *cp = ctl.cfg.tls_cert[0]
						  ? xstrdup(ctl.cfg.tls_cert)
						  : xasprintf("%s/tls.crt", ctl.cfg.state_dir);

		if (file_read_all(kp, 1 << 20, &key, NULL) < 0 ||
		    file_read_all(cp, 1 << 20, &cert, NULL) < 0)
			return err_set(err, 0, "cannot read %s or %s", kp, cp);
		flags |= MHD_USE_TLS;
	}
	if (http_conns_rlimit(err) < 0)
		return -1;
	/* The idle timeout only ends silent connections; http_conns.c gives each request
	 * deadlines that a trickle of bytes does not move. */
	daemon_ = MHD_start_daemon(
		flags, 0, NULL, NULL, access_cb, NULL, MHD_OPTION_SOCK_ADDR, &sin,
		MHD_OPTION_NOTIFY_COMPLETED, completed_cb, NULL, MHD_OPTION_NOTIFY_CONNECTION,
		http_conns_notify_cb, NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)ctl.cfg.api_max_connections,
		MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)ctl.cfg.api_max_connections_per_ip,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
		ctl.cfg.tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, key,
		MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES,
		MHD_OPTION_END);
	if (daemon_ == NULL)
		return err_set(err, 0, "cannot start the API server on %s (address in use?)",
			       ctl.cfg.api_listen);
	info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_EPOLL_FD);
	uv_poll_init(ctl.loop, &http_poll, info->epoll_fd);
	uv_poll_start(&http_poll, UV_READABLE, poll_cb);
	uv_timer_init(ctl.loop, &http_timer);
	uv_timer_init(ctl.loop, &http_watch_timer);
	uv_idle_init(ctl.loop, &http_kicker);
	http_run();
	log_info("api: serving %s://%s", ctl.cfg.tls ? "https" : "http", ctl.cfg.api_listen);
	return 0;
}

/*
 * Stop serving. libmicrohttpd aborts if a connection is still suspended, and an
 * upgraded socket left open would stop its stop, so first drain() (main.c's) ends every
 * event stream and WebSocket and answers every long poll and console query, and the
 * daemon runs until they are out.
 */
void http_stop(void (*drain)(void))
{
	if (daemon_ == NULL)
		return;
	MHD_quiesce_daemon(daemon_);
	http_stopping = true;
	if (drain)
		drain();
	for (int i = 0; i < 5; i++)
		MHD_run(daemon_);
	uv_poll_stop(&http_poll);
	uv_timer_stop(&http_timer);
	uv_idle_stop(&http_kicker);
	uv_close((uv_handle_t *)&http_poll, NULL);
	uv_close((uv_handle_t *)&http_timer, NULL);
	uv_close((uv_handle_t *)&http_watch_timer, NULL);
	uv_close((uv_handle_t *)&http_kicker, NULL);
	MHD_stop_daemon(daemon_);
	daemon_ = NULL;
}
