/*
 * qga.c - one command to a guest's qemu-guest-agent, asynchronously.
 *
 * QEMU carries the guest agent's virtio-serial port to a unix socket in the VM's run
 * directory (qga.sock, qemuargs.c). A call connects, resynchronises the stream with
 * guest-sync-delimited (0xFF resets the guest's parser; its answer is 0xFF then
 * {"return": ID}, so whatever a previous, abandoned call left in the stream is skipped
 * up to the answer carrying our ID), sends one command, reads its answer and closes.
 * The freeze and the thaw of a backup are two calls: each stands on its own, so a
 * thaw works whatever happened to the freeze's connection.
 *
 * The guest is not trusted: every byte it sends counts against QGA_READ_MAX, garbage
 * before the sync answer is skipped, each phase has a deadline, and of an answer only
 * its success and, for a freeze, its integer count are used - none of the guest's
 * text reaches a log or a result. The callback comes exactly once, never from inside
 * qga_cmd_run(). Nothing here blocks the loop.
 */
#include "agentd.h"

#include <stdarg.h>
#include <string.h>

#include "json.h"
#include "util.h"

#define QGA_SYNC_MS  5000	 /* idle: milliseconds; a busy TCG guest about 1 s */
#define QGA_READ_MAX (64 * 1024) /* per call; every answer we ask for is tiny */
#define QGA_DEPTH    8

enum qga_phase {
	QGA_CONNECT,
	QGA_SYNC_MARK,
	QGA_SYNC_ANSWER,
	QGA_REPLY
};

struct qga_call {
	uv_pipe_t pipe;
	uv_connect_t connect;
	uv_timer_t timer;
	int open_handles;
	enum qga_phase phase;
	bool finished;
	char cmd[48];
	unsigned cmd_ms;
	int64_t sync_id;
	size_t read_bytes;
	struct json_tokener *tok;
	qga_done_cb cb;
	void *data;
};

struct qga_write {
	uv_write_t req;
	char *text;
};

static void call_closed_cb(uv_handle_t *handle)
{
	struct qga_call *c = handle->data;

	if (--c->open_handles > 0)
		return;
	json_tokener_free(c->tok);
	free(c);
}

/* The call's end: the callback once, then the handles close and free the call. */
static void finish(struct qga_call *c, int status, int64_t count, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void finish(struct qga_call *c, int status, int64_t count, const char *fmt, ...)
{
	char why[200] = "";
	va_list ap;

	if (c->finished)
		return;
	c->finished = true;
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(why, sizeof(why), fmt, ap);
		va_end(ap);
	}
	uv_timer_stop(&c->timer);
	c->cb(status, count, c->phase == QGA_REPLY, status < 0 ? why : NULL, c->data);
	uv_close((uv_handle_t *)&c->pipe, call_closed_cb);
	uv_close((uv_handle_t *)&c->timer, call_closed_cb);
}

static void timeout_cb(uv_timer_t *timer)
{
	struct qga_call *c = timer->data;

	if (c->phase == QGA_REPLY)
		finish(c, UV_ETIMEDOUT, 0, "the guest agent did not answer %s within %u s", c->cmd,
		       c->cmd_ms / 1000);
	else
		finish(c, UV_ETIMEDOUT, 0,
		       "no guest agent answered within %u s (is qemu-ga running in the guest?)",
		       QGA_SYNC_MS / 1000);
}

static void write_cb(uv_write_t *req, int status)
{
	struct qga_write *w = req->data;
	struct qga_call *c = req->handle->data;

	if (status < 0 && status != UV_ECANCELED)
		finish(c, status, 0, "cannot write to the guest agent's socket: %s",
		       uv_strerror(status));
	free(w->text);
	free(w);
}

static void send_text(struct qga_call *c, char *text)
{
	struct qga_write *w = xcalloc(1, sizeof(*w));
	uv_buf_t buf;
	int ret;

	w->text = text;
	w->req.data = w;
	buf = uv_buf_init(w->text, (unsigned)strlen(w->text));
	ret = uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, write_cb);
	if (ret < 0) {
		free(w->text);
		free(w);
		finish(c, ret, 0, "cannot write to the guest agent's socket: %s", uv_strerror(ret));
	}
}

/* The sync answered: the stream is clean, the command goes out. */
static void command_send(struct qga_call *c)
{
	c->phase = QGA_REPLY;
	json_tokener_reset(c->tok);
	uv_timer_start(&c->timer, timeout_cb, c->cmd_ms, 0);
	send_text(c, xasprintf("{\"execute\":\"%s\"}\n", c->cmd));
}

/* An answer to the command: only "return" (success, an integer for a count) or
 * "error" (refused) are read; anything else is not an answer and is skipped. */
static void reply_handle(struct qga_call *c, struct json_object *msg)
{
	struct json_object *ret;

	if (!json_object_is_type(msg, json_type_object))
		return;
	if (json_object_object_get_ex(msg, "error", NULL)) {
		finish(c, UV_EPROTO, 0, "the guest agent refused %s", c->cmd);
		return;
	}
	if (!json_object_object_get_ex(msg, "return", &ret))
		return;
	finish(c, 0, json_object_is_type(ret, json_type_int) ? json_object_get_int64(ret) : 0,
	       NULL);
}

/* Feed bytes to the phase at hand; returns how many it took. */
static size_t feed(struct qga_call *c, const char *buf, size_t len)
{
	struct json_object *msg;
	enum json_tokener_error jerr;
	size_t used;

	if (c->phase == QGA_SYNC_MARK) {
		const char *mark = memchr(buf, 0xff, len);

		if (mark == NULL)
			return len; /* garbage before the sync answer */
		c->phase = QGA_SYNC_ANSWER;
		json_tokener_reset(c->tok);
		return (size_t)(mark - buf) + 1;
	}
	msg = json_tokener_parse_ex(c->tok, buf, (int)len);
	jerr = json_tokener_get_error(c->tok);
	if (jerr == json_tokener_continue)
		return len;
	if (jerr != json_tokener_success) {
		json_object_put(msg);
		if (c->phase == QGA_REPLY) {
			finish(c, UV_EPROTO, 0, "the guest agent answered %s with malformed JSON",
			       c->cmd);
			return len;
		}
		/* Not the answer we wait for: look for the next 0xFF, past this byte. */
		c->phase = QGA_SYNC_MARK;
		used = json_tokener_get_parse_end(c->tok);
		return used ? used : 1;
	}
	used = json_tokener_get_parse_end(c->tok);
	json_tokener_reset(c->tok);
	if (c->phase == QGA_SYNC_ANSWER) {
		struct json_object *ret;

		if (json_object_is_type(msg, json_type_object) &&
		    json_object_object_get_ex(msg, "return", &ret) &&
		    json_object_is_type(ret, json_type_int) &&
		    json_object_get_int64(ret) == c->sync_id)
			command_send(c);
		else
			c->phase = QGA_SYNC_MARK; /* a stale answer: an earlier call's */
	} else {
		reply_handle(c, msg);
	}
	json_object_put(msg);
	return used ? used : len;
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	static char slab[4096]; /* the loop's one thread; consumed before the next read */

	buf->base = slab;
	buf->len = sizeof(slab);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct qga_call *c = stream->data;
	size_t off = 0;

	if (c->finished)
		return;
	if (nread == UV_EOF) {
		finish(c, UV_EOF, 0, "the guest agent's socket closed (QEMU stopped?)");
		return;
	}
	if (nread < 0) {
		finish(c, (int)nread, 0, "cannot read the guest agent's socket: %s",
		       uv_strerror((int)nread));
		return;
	}
	c->read_bytes += (size_t)nread;
	if (c->read_bytes > QGA_READ_MAX) {
		finish(c, UV_EPROTO, 0, "the guest agent sent more than %d bytes", QGA_READ_MAX);
		return;
	}
	while (off < (size_t)nread && !c->finished)
		off += feed(c, buf->base + off, (size_t)nread - off);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct qga_call *c = req->data;
	int ret;

	if (c->finished)
		return;
	if (status < 0) {
		finish(c, status, 0, "no guest agent channel: %s", uv_strerror(status));
		return;
	}
	ret = uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb);
	if (ret < 0) {
		finish(c, ret, 0, "cannot read the guest agent's socket: %s", uv_strerror(ret));
		return;
	}
	c->phase = QGA_SYNC_MARK;
	/* 0xFF first: a guest agent in the middle of a half-read request starts over. */
	send_text(c, xasprintf("\xff{\"execute\":\"guest-sync-delimited\","
			       "\"arguments\":{\"id\":%lld}}\n",
			       (long long)c->sync_id));
}

/*
 * Run the argument-less QGA command cmd (guest-fsfreeze-freeze, guest-fsfreeze-thaw,
 * ...) through the socket at path: the guest agent must answer the sync within 5 s
 * and cmd within cmd_ms. cb(status, count, cmd_sent, why, data) comes once, later:
 * status 0 and count (the command's integer return, 0 if none) or a negative libuv
 * status and a sentence saying why (no channel, no agent, refused, timed out);
 * cmd_sent tells whether cmd went out at all (after the sync answer), i.e. whether
 * the guest may have acted on it. The call owns its
 * memory and frees it after cb.
 */
void qga_cmd_run(uv_loop_t *loop, const char *path, const char *cmd, unsigned cmd_ms,
		 qga_done_cb cb, void *data)
{
	struct qga_call *c = xcalloc(1, sizeof(*c));
	static int64_t next_id;

	c->cb = cb;
	c->data = data;
	c->cmd_ms = cmd_ms;
	snprintf(c->cmd, sizeof(c->cmd), "%s", cmd);
	/* Unique per call, so a late answer to an abandoned call is never taken for ours. */
	c->sync_id = (now_us() & 0xffffffffffLL) * 64 + (next_id++ & 63);
	c->tok = json_tokener_new_ex(QGA_DEPTH);
	c->phase = QGA_CONNECT;
	uv_pipe_init(loop, &c->pipe, 0);
	uv_timer_init(loop, &c->timer);
	c->pipe.data = c->timer.data = c->connect.data = c;
	c->open_handles = 2;
	uv_timer_start(&c->timer, timeout_cb, QGA_SYNC_MS, 0);
	uv_pipe_connect(&c->connect, &c->pipe, path, connect_cb);
}
