/*
 * qmp.c - an asynchronous client for QEMU's machine protocol on a unix socket.
 *
 * One struct qmp is one connection: uv_pipe connects, QEMU greets, we answer with
 * qmp_capabilities, and from then on commands go out with a numeric "id" and their
 * replies are matched by it. Events ("event": "STOP", ...) go to the owner's event
 * callback. The stream is parsed with a json-c tokener fed whatever arrives, so a
 * message split across reads, or several in one read, is handled the same way.
 *
 * Life cycle, all on the loop: qmp_open() -> ready (handshake done) -> commands and
 * events -> closed. The closed callback comes exactly once, last, whether the
 * connection failed, QEMU went away, or the owner called qmp_close(); every pending
 * command's callback has been called (with an error) before it. The object is freed
 * right after the closed callback returns.
 */
#include "agentd.h"

#include <errno.h>
#include <string.h>

#include "json.h"
#include "util.h"

#define QMP_DEPTH_MAX 64
#define QMP_MSG_MAX   (16 * 1024 * 1024) /* a reply larger than this is not QEMU's */
/* QEMU serves one client; a second one waits unanswered. A VM's start connects at the
 * spawn (vm.c binds the socket), so this also covers QEMU's start up to its chardevs. */
#define QMP_HANDSHAKE_MS 10000
#define QMP_TICK_MS	 500
#define QMP_ERROR_MAX	 256

struct qmp_cmd {
	uint64_t id;
	char name[48];
	int64_t deadline_us; /* 0: none */
	qmp_reply_cb cb;     /* NULL: nobody waits for the reply */
	void *data;
	struct qmp_cmd *next;
};

struct qmp_write {
	uv_write_t req;
	char *text;
};

struct qmp {
	uv_loop_t *loop;
	uv_pipe_t pipe;
	uv_connect_t connect;
	uv_timer_t tick; /* handshake deadline and command timeouts */
	const struct qmp_ops *ops;
	void *data;
	char path[PATH_MAX];
	struct json_tokener *tok;
	size_t msg_bytes; /* read since the last complete message */
	bool connected, greeted, ready, closing;
	int close_status; /* what the closed callback reports */
	char close_why[QMP_ERROR_MAX];
	int open_handles;
	int64_t opened_us;
	uint64_t next_id;
	struct qmp_cmd *pending; /* oldest first */
};

static void send_text(struct qmp *q, const char *text);

static void close_cb(uv_handle_t *handle)
{
	struct qmp *q = handle->data;
	struct qmp_cmd *c, *next;

	if (--q->open_handles > 0)
		return;
	/* Everyone waiting for a reply learns the connection is gone, then the owner. */
	for (c = q->pending, q->pending = NULL; c; c = next) {
		next = c->next;
		if (c->cb)
			c->cb(q, NULL, "the QMP connection closed before QEMU answered", c->data);
		free(c);
	}
	q->ops->closed(q, q->close_status, q->close_why, q->data);
	json_tokener_free(q->tok);
	free(q);
}

/* Start closing with status and reason (the first reason given wins). */
static void shut(struct qmp *q, int status, const char *why)
{
	if (q->closing)
		return;
	q->closing = true;
	q->close_status = status;
	snprintf(q->close_why, sizeof(q->close_why), "%s", why);
	uv_close((uv_handle_t *)&q->pipe, close_cb);
	uv_close((uv_handle_t *)&q->tick, close_cb);
}

static void cmd_reply(struct qmp *q, uint64_t id, struct json_object *msg)
{
	struct qmp_cmd **pp, *c;
	struct json_object *ret = NULL, *error;
	char why[QMP_ERROR_MAX];
	const char *errstr = NULL;

	for (pp = &q->pending; *pp && (*pp)->id != id; pp = &(*pp)->next)
		;
	c = *pp;
	if (c == NULL) {
		/* A reply after its command timed out: nobody waits any more. */
		log_debug("qmp %s: late reply to command id %llu", q->path, (unsigned long long)id);
		return;
	}
	*pp = c->next;
	if (json_object_object_get_ex(msg, "error", &error)) {
		snprintf(why, sizeof(why), "QEMU refused %s: %s", c->name,
			 json_get_str(error, "desc", "no reason given"));
		errstr = why;
	} else if (!json_object_object_get_ex(msg, "return", &ret)) {
		snprintf(why, sizeof(why), "QEMU answered %s without a result", c->name);
		errstr = why;
	}
	if (c->cb)
		c->cb(q, errstr ? NULL : ret, errstr, c->data);
	else if (errstr)
		log_warnx("qmp %s: %s", q->path, errstr);
	free(c);
}

static void message_handle(struct qmp *q, struct json_object *msg)
{
	struct json_object *id, *data;
	const char *event;

	if (!json_object_is_type(msg, json_type_object)) {
		shut(q, UV_EPROTO, "QEMU sent something that is not a QMP message");
		return;
	}
	if (!q->greeted) {
		if (!json_object_object_get_ex(msg, "QMP", NULL)) {
			shut(q, UV_EPROTO, "the socket does not speak QMP (no greeting)");
			return;
		}
		q->greeted = true;
		/* Capabilities negotiation: the reply (id 0) makes the connection ready. */
		send_text(q, "{\"execute\":\"qmp_capabilities\",\"id\":0}");
		return;
	}
	event = json_get_str(msg, "event", NULL);
	if (event) {
		if (q->ready && q->ops->event) {
			json_object_object_get_ex(msg, "data", &data);
			q->ops->event(q, event, data, q->data);
		}
		return;
	}
	if (!json_object_object_get_ex(msg, "id", &id) || !json_object_is_type(id, json_type_int)) {
		log_debug("qmp %s: message without a command id ignored", q->path);
		return;
	}
	if (!q->ready && json_object_get_int64(id) == 0) {
		if (!json_object_object_get_ex(msg, "return", NULL)) {
			shut(q, UV_EPROTO, "QEMU refused qmp_capabilities");
			return;
		}
		q->ready = true;
		q->ops->ready(q, q->data);
		return;
	}
	cmd_reply(q, (uint64_t)json_object_get_int64(id), msg);
}

/* Feed what arrived to the tokener; every complete message is handled in order. */
static void stream_feed(struct qmp *q, const char *buf, size_t len)
{
	size_t off = 0;

	q->msg_bytes += len;
	while (off < len && !q->closing) {
		struct json_object *msg;
		enum json_tokener_error jerr;

		msg = json_tokener_parse_ex(q->tok, buf + off, (int)(len - off));
		jerr = json_tokener_get_error(q->tok);
		if (jerr == json_tokener_continue)
			break;
		if (jerr != json_tokener_success) {
			json_object_put(msg);
			shut(q, UV_EPROTO, "QEMU sent malformed JSON on QMP");
			return;
		}
		off += json_tokener_get_parse_end(q->tok);
		json_tokener_reset(q->tok);
		q->msg_bytes = len - off;
		message_handle(q, msg);
		json_object_put(msg);
	}
	if (q->msg_bytes > QMP_MSG_MAX)
		shut(q, UV_EPROTO, "a QMP message is larger than any QEMU sends");
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	buf->base = xmalloc(suggested);
	buf->len = suggested;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct qmp *q = stream->data;

	if (nread > 0)
		stream_feed(q, buf->base, (size_t)nread);
	else if (nread == UV_EOF)
		shut(q, 0, "QEMU closed the QMP connection");
	else if (nread < 0)
		shut(q, (int)nread, uv_strerror((int)nread));
	free(buf->base);
}

static void write_cb(uv_write_t *req, int status)
{
	struct qmp_write *w = req->data;
	struct qmp *q = req->handle->data;

	if (status < 0 && status != UV_ECANCELED)
		shut(q, status, "cannot write to the QMP socket");
	free(w->text);
	free(w);
}

static void send_text(struct qmp *q, const char *text)
{
	struct qmp_write *w = xcalloc(1, sizeof(*w));
	uv_buf_t buf;
	int ret;

	w->text = xasprintf("%s\r\n", text);
	w->req.data = w;
	buf = uv_buf_init(w->text, (unsigned)strlen(w->text));
	ret = uv_write(&w->req, (uv_stream_t *)&q->pipe, &buf, 1, write_cb);
	if (ret < 0) {
		free(w->text);
		free(w);
		shut(q, ret, "cannot write to the QMP socket");
	}
}

/* Handshake deadline and command timeouts; a timed-out command's reply is ignored. */
static void tick_cb(uv_timer_t *timer)
{
	struct qmp *q = timer->data;
	int64_t now = now_us();
	struct qmp_cmd **pp = &q->pending;

	if (!q->ready) {
		if (now - q->opened_us > QMP_HANDSHAKE_MS * 1000LL)
			shut(q, UV_ETIMEDOUT,
			     "QEMU did not greet on QMP (is another client connected?)");
		return;
	}
	while (*pp) {
		struct qmp_cmd *c = *pp;
		char why[QMP_ERROR_MAX];

		if (c->deadline_us == 0 || now < c->deadline_us) {
			pp = &c->next;
			continue;
		}
		*pp = c->next;
		snprintf(why, sizeof(why), "QEMU did not answer %s in time", c->name);
		if (c->cb)
			c->cb(q, NULL, why, c->data);
		else
			log_warnx("qmp %s: %s", q->path, why);
		free(c);
		if (q->closing)
			return;
	}
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct qmp *q = req->data;
	int ret;

	if (q->closing)
		return;
	if (status < 0) {
		shut(q, status, uv_strerror(status));
		return;
	}
	q->connected = true;
	ret = uv_read_start((uv_stream_t *)&q->pipe, alloc_cb, read_cb);
	if (ret < 0)
		shut(q, ret, "cannot read from the QMP socket");
}

/*
 * Connect to the QMP socket at path. ops->ready is called once QEMU has greeted and
 * accepted qmp_capabilities; ops->event for each event afterwards (data borrowed, may
 * be NULL); ops->closed exactly once at the end with status 0 (QEMU hung up), a libuv
 * error (UV_ENOENT or UV_ECONNREFUSED: no QEMU listening yet) and a reason. Returns
 * the connection, owned by this module: it frees itself after ops->closed.
 */
struct qmp *qmp_open(uv_loop_t *loop, const char *path, const struct qmp_ops *ops, void *data)
{
	struct qmp *q = xcalloc(1, sizeof(*q));

	q->loop = loop;
	q->ops = ops;
	q->data = data;
	q->next_id = 1;
	q->opened_us = now_us();
	snprintf(q->path, sizeof(q->path), "%s", path);
	q->tok = json_tokener_new_ex(QMP_DEPTH_MAX);
	uv_pipe_init(loop, &q->pipe, 0);
	uv_timer_init(loop, &q->tick);
	q->pipe.data = q->tick.data = q->connect.data = q;
	q->open_handles = 2;
	uv_timer_start(&q->tick, tick_cb, QMP_TICK_MS, QMP_TICK_MS);
	uv_pipe_connect(&q->connect, &q->pipe, q->path, connect_cb);
	return q;
}

/*
 * Send command cmd with args (consumed; NULL for none). cb(q, ret, error, data) is
 * called once: with QEMU's "return" value (borrowed) and error NULL, or with ret NULL
 * and a sentence saying why (QEMU's error, no answer within timeout_ms, connection
 * closed). cb may be NULL when nobody waits; a refusal is then logged. timeout_ms 0
 * waits for ever. Returns 0, or -1 with err when the connection is not ready (cb is
 * then not called).
 */
int qmp_cmd_send(struct qmp *q, const char *cmd, struct json_object *args, unsigned timeout_ms,
		 qmp_reply_cb cb, void *data, struct kerr *err)
{
	struct json_object *msg;
	struct qmp_cmd *c, **pp;

	if (q == NULL || !q->ready || q->closing) {
		json_object_put(args);
		return err_set(err, 0, "QEMU's QMP connection is not ready");
	}
	c = xcalloc(1, sizeof(*c));
	c->id = q->next_id++;
	snprintf(c->name, sizeof(c->name), "%s", cmd);
	c->deadline_us = timeout_ms ? now_us() + timeout_ms * 1000LL : 0;
	c->cb = cb;
	c->data = data;
	for (pp = &q->pending; *pp; pp = &(*pp)->next)
		;
	*pp = c;

	msg = json_object_new_object();
	json_object_object_add(msg, "execute", json_object_new_string(cmd));
	if (args)
		json_object_object_add(msg, "arguments", args);
	json_object_object_add(msg, "id", json_object_new_int64((int64_t)c->id));
	send_text(q, json_text(msg));
	json_object_put(msg);
	return 0;
}

/* True once the handshake is done and until the connection starts closing. */
bool qmp_ready(const struct qmp *q)
{
	return q && q->ready && !q->closing;
}

/*
 * Close the connection. Pending commands are answered with an error and ops->closed
 * follows (status UV_ECANCELED), all on a later turn of the loop.
 */
void qmp_close(struct qmp *q)
{
	shut(q, UV_ECANCELED, "closed by the agent");
}
