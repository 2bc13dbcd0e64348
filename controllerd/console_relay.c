/*
 * console_relay.c - a VM's serial console and its screen (VNC) over WebSockets, for the
 * dashboard's terminal and its noVNC viewer.
 *
 * GET /api/v1/instances/{name}/console/ws (operator: typing reaches the guest) upgrades
 * to a WebSocket (ws.c). What the guest writes reaches the browser as binary messages;
 * what the browser sends (text or binary) is typed into the serial port. One relay per
 * socket. The agent holds the VM's one serial connection (agentd/console.c); while at
 * least one relay watches a VM, the controller asks it ("console-watch") to forward what
 * the guest writes as LINK_CONSOLE_DATA, and asks it to stop when the last relay goes.
 * The socket closes when the VM stops (the agent reports the serial port closed, or the
 * instance leaves "running"), when its host goes offline, and when the page closes.
 *
 * While a relay is open the controller renews what it holds on the agent every
 * LINK_RELAY_RENEW_MS (console_relay_cron()); the agent ends a watch or stream that is
 * not renewed, so none lingers after a controller restart.
 *
 * History is not replayed here: the page reads GET .../console first, then opens this.
 *
 * GET .../vnc/ws relays the VM's VNC server the same way, for noVNC: QEMU serves VNC on
 * a unix socket on its host, which the agent connects to per relay (a stream with an id
 * the controller picks: "vnc-open", "vnc-input", "vnc-close", agentd/vnc.c) and whose
 * bytes it sends as LINK_CONSOLE_DATA with that stream id. No VNC port is ever open on
 * a network; the browser reaches the screen only through the authenticated API.
 */
#include <stdlib.h>
#include <string.h>

#include "controllerd.h"
#include "json.h"
#include "log.h"
#include "util.h"
#include "valid.h"

#define SERIAL_INPUT_MAX	4096	    /* bytes of one browser message; as the POST's limit */
#define VNC_INPUT_MAX		(64 * 1024) /* an RFB client message (clipboard text included) */
#define RELAY_INPUT_BACKLOG_MAX (1024 * 1024) /* input waiting for the agent, per relay */

struct relay;

/* What differs between a serial console and a VNC screen: how the agent is asked. */
struct relay_kind {
	const char *what; /* for the log */
	size_t input_max; /* bytes of one browser message */
	bool text;	  /* serial: input is text without NUL */
	void (*open)(struct relay *r, struct host *h);
	void (*input)(struct relay *r, struct host *h, const char *data, size_t len);
	void (*close)(struct relay *r, struct host *h);
};

struct relay {
	struct relay *next;
	struct ws *ws;
	const struct relay_kind *kind;
	char host[NAME_MAX_LEN + 1];
	char name[NAME_MAX_LEN + 1];
	char stream[LINK_OP_ID_MAX + 1]; /* VNC: the agent's stream id */
	/* Input the browser sent while an input query of this relay was in flight: it goes
	 * as one query when the answer comes, so a burst of keys costs a round trip or two
	 * on the host's command queue (one command in flight per host), not one per key. */
	char *input;
	size_t input_len;
	bool input_inflight;
	/* The token the browser came with: its revocation or expiry ends the relay, and
	 * each relay counts in max_streams_per_token. */
	int64_t token_id, token_expires;
	struct token_watch watch;
};

static struct relay *relays;

static void answer_cb(struct json_object *body, const char *error, void *cls)
{
	char *what = cls;

	if (body == NULL)
		log_warnx("%s: the agent refused: %s", what, error);
	free(what);
}

static void query_send(struct relay *r, struct host *h, struct json_object *q)
{
	agentlink_query(h, q, answer_cb, xasprintf("%s %s", r->kind->what, r->name));
}

static struct json_object *query_new(const char *what, struct relay *r)
{
	struct json_object *q = json_object_new_object();

	json_object_object_add(q, "what", json_object_new_string(what));
	json_object_object_add(q, "name", json_object_new_string(r->name));
	if (r->stream[0])
		json_object_object_add(q, "stream", json_object_new_string(r->stream));
	return q;
}

/* Serial relays of VM name on host: the agent forwards its output while there is one. */
static int serial_watchers(const char *host, const char *name)
{
	int n = 0;

	for (struct relay *r = relays; r; r = r->next)
		if (!r->stream[0] && strcmp(r->host, host) == 0 && strcmp(r->name, name) == 0)
			n++;
	return n;
}

static void serial_watch(struct relay *r, struct host *h, bool on)
{
	struct json_object *q = query_new("console-watch", r);

	json_object_object_add(q, "on", json_object_new_boolean(on));
	query_send(r, h, q);
}

static void serial_open(struct relay *r, struct host *h)
{
	if (serial_watchers(r->host, r->name) == 1)
		serial_watch(r, h, true);
}

static void serial_close(struct relay *r, struct host *h)
{
	if (serial_watchers(r->host, r->name) == 0)
		serial_watch(r, h, false);
}

static void input_answer_cb(struct json_object *body, const char *error, void *cls);

static void serial_input(struct relay *r, struct host *h, const char *data, size_t len)
{
	struct json_object *q = query_new("console-input", r);

	json_object_object_add(q, "data", json_object_new_string_len(data, (int)len));
	agentlink_query(h, q, input_answer_cb, r);
}

static void vnc_open(struct relay *r, struct host *h)
{
	query_send(r, h, query_new("vnc-open", r));
}

static void vnc_close(struct relay *r, struct host *h)
{
	query_send(r, h, query_new("vnc-close", r));
}

static void vnc_input(struct relay *r, struct host *h, const char *data, size_t len)
{
	struct json_object *q = query_new("vnc-input", r);
	_cleanup_free_ char *b64 = base64_encode(data, len);

	json_object_object_add(q, "data", json_object_new_string(b64));
	agentlink_query(h, q, input_answer_cb, r);
}

static const struct relay_kind relay_serial = {
	.what = "console",
	.input_max = SERIAL_INPUT_MAX,
	.text = true,
	.open = serial_open,
	.input = serial_input,
	.close = serial_close,
};

static const struct relay_kind relay_vnc = {
	.what = "vnc",
	.input_max = VNC_INPUT_MAX,
	.text = false,
	.open = vnc_open,
	.input = vnc_input,
	.close = vnc_close,
};

static struct host *online_host(const char *name)
{
	struct host *h = host_find(name);

	return h && h->state == HOST_ONLINE ? h : NULL;
}

/* Send what input r holds, up to one message's worth, unless a query is in flight. */
static void input_flush(struct relay *r)
{
	struct host *h = online_host(r->host);
	size_t n = r->input_len < r->kind->input_max ? r->input_len : r->kind->input_max;

	if (r->input_inflight || n == 0)
		return;
	if (h == NULL) {
		r->input_len = 0; /* nothing would reach the VM */
		return;
	}
	r->input_inflight = true;
	r->kind->input(r, h, r->input, n);
	memmove(r->input, r->input + n, r->input_len - n);
	r->input_len -= n;
}

static void input_answer_cb(struct json_object *body, const char *error, void *cls)
{
	struct relay *r = cls;

	if (body == NULL)
		log_warnx("%s %s: the agent refused input: %s", r->kind->what, r->name, error);
	r->input_inflight = false;
	input_flush(r);
}

static void relay_remove(struct relay *r)
{
	struct host *h = online_host(r->host);

	for (struct relay **pp = &relays; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	}
	tokens_watch_remove(&r->watch);
	if (h)
		r->kind->close(r, h);
	/* An input query still queued or in flight answers nobody. */
	agentlink_query_cancel(r);
	free(r->input);
	free(r);
}

/* The relay's token was revoked or expired: the console ends now. */
static void revoke_cb(void *cls)
{
	struct relay *r = cls;

	ws_close(r->ws, 1008, "the token was revoked or expired");
	relay_remove(r);
}

static void open_cb(struct ws *ws, void *cls)
{
	struct relay *r = cls;
	struct host *h = online_host(r->host);
	struct kerr err;

	r->ws = ws;
	if (tokens_watch_token(&r->watch, NULL, r->token_id, r->token_expires, revoke_cb, r, &err) <
	    0) {
		ws_close(ws, 1008, err.msg);
		free(r);
		return;
	}
	r->next = relays;
	relays = r;
	if (h)
		r->kind->open(r, h);
}

static void message_cb(struct ws *ws, void *cls, const char *data, size_t len, bool binary)
{
	struct relay *r = cls;

	(void)binary;
	if (len == 0)
		return;
	if (len > r->kind->input_max || (r->kind->text && memchr(data, '\0', len))) {
		ws_close(ws, 1007,
			 r->kind->text ? "input must be 1-4096 bytes without NUL"
				       : "message too big");
		relay_remove(r);
		return;
	}
	if (r->input_len + len > RELAY_INPUT_BACKLOG_MAX) {
		ws_close(ws, 1008, "the guest takes input too slowly");
		relay_remove(r);
		return;
	}
	r->input = xrealloc(r->input, r->input_len + len);
	memcpy(r->input + r->input_len, data, len);
	r->input_len += len;
	input_flush(r);
}

static void close_cb(struct ws *ws, void *cls)
{
	(void)ws;
	relay_remove(cls);
}

static const struct ws_ops relay_ops = {
	.on_open = open_cb,
	.on_message = message_cb,
	.on_close = close_cb,
};

/*
 * Answer req (GET /api/v1/instances/{name}/console/ws or .../vnc/ws, checked by
 * api_instances.c: a running VM on an online host) by upgrading it to a WebSocket
 * relaying VM name's serial console (vnc false) or screen (vnc true) on host.
 */
enum MHD_Result console_relay_open(struct request *req, const char *host, const char *name,
				   bool vnc)
{
	struct relay *r;

	if (!ws_handshake_valid(req))
		return http_reply_error(req, 400, NULL,
					"this is a WebSocket (version 13): connect with a "
					"WebSocket client");
	r = xcalloc(1, sizeof(*r));
	r->kind = vnc ? &relay_vnc : &relay_serial;
	snprintf(r->host, sizeof(r->host), "%s", host);
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->token_id = req->token.id;
	r->token_expires = req->token.expires_at;
	if (vnc)
		link_op_id_new(r->stream);
	return ws_accept(req, &relay_ops, r);
}

/* End every relay of VM name (on host; NULL: any; with stream id, "" for the serial
 * console, NULL for all) with code and reason. */
static void relays_end(const char *host, const char *name, const char *stream, uint16_t code,
		       const char *reason)
{
	struct relay *r = relays, *next;

	for (; r; r = next) {
		next = r->next;
		if ((host && strcmp(r->host, host) != 0) || (name && strcmp(r->name, name) != 0) ||
		    (stream && strcmp(r->stream, stream) != 0))
			continue;
		ws_close(r->ws, code, reason);
		relay_remove(r);
	}
}

/*
 * LINK_CONSOLE_DATA from h: {name, data: base64} goes to every relay of that VM;
 * {name, closed: true} (QEMU closed the serial port: the VM stopped) ends them.
 */
void console_relay_data(struct host *h, struct json_object *body)
{
	const char *name = json_get_str(body, "name", "");
	const char *stream = json_get_str(body, "stream", "");
	_cleanup_free_ char *data = NULL;
	size_t len = 0;

	if (json_get_bool(body, "closed", false)) {
		relays_end(h->name, name, stream, 1000, "the VM stopped");
		return;
	}
	data = base64_decode(json_get_str(body, "data", ""), &len);
	if (data == NULL) {
		log_warnx("host %s: console data for %s is not base64", h->name, name);
		return;
	}
	for (struct relay *r = relays, *next; r; r = next) {
		next = r->next; /* a send that fails ends r's socket, and r with it */
		if (strcmp(r->host, h->name) == 0 && strcmp(r->name, name) == 0 &&
		    strcmp(r->stream, stream) == 0)
			ws_send(r->ws, data, len, true);
	}
}

/* Instance name is no longer running (or is gone): its consoles close. */
void console_relay_instance_stopped(const char *name, const char *state)
{
	char reason[64];

	snprintf(reason, sizeof(reason), "the VM is %s", state);
	relays_end(NULL, name, NULL, 1000, reason);
}

/* Host h went offline: its VMs' consoles close (nothing would reach them). */
void console_relay_host_offline(const char *host)
{
	relays_end(host, NULL, NULL, 1001, "the VM's host went offline");
}

/*
 * Part of the cron, each second: every LINK_RELAY_RENEW_MS, renew on its agent what each
 * relay holds open there (a serial watch, once per VM; a VNC stream), so the agent can
 * end what no controller renews (LINK_RELAY_LEASE_MS: a controller that restarted).
 */
void console_relay_cron(void)
{
	static int64_t last;
	int64_t now = now_ms();

	if (now - last < LINK_RELAY_RENEW_MS)
		return;
	last = now;
	for (struct relay *r = relays; r; r = r->next) {
		struct host *h = online_host(r->host);
		bool first = true;

		if (h == NULL)
			continue;
		if (r->stream[0]) {
			struct json_object *q = query_new("vnc-open", r);

			json_object_object_add(q, "renew", json_object_new_boolean(true));
			query_send(r, h, q);
			continue;
		}
		/* One watch per VM, however many terminals read it. */
		for (struct relay *o = relays; o != r; o = o->next)
			if (!o->stream[0] && strcmp(o->host, r->host) == 0 &&
			    strcmp(o->name, r->name) == 0)
				first = false;
		if (first)
			serial_watch(r, h, true);
	}
}
