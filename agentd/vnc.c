/*
 * vnc.c - relaying a VM's VNC server (its screen) for the dashboard's graphical console.
 *
 * QEMU serves VNC on vnc.sock in the VM's directory (qemuargs.c): a unix socket, never a
 * TCP port, so nothing on a network reaches it. For each browser the controller opens a
 * stream ("vnc-open", with an id of its choosing); the agent connects to the socket and
 * sends what QEMU writes as LINK_CONSOLE_DATA {name, stream, data} (or {name, stream,
 * closed} when QEMU hangs up: the VM stopped); "vnc-input" writes the browser's bytes;
 * "vnc-close" ends the stream. The controller renews each stream it relays ("vnc-open"
 * again, with "renew": true, which never opens one anew) every LINK_RELAY_RENEW_MS;
 * one not renewed for LINK_RELAY_LEASE_MS closes (vnc_streams_expire(): its controller
 * restarted or lost this host, and no browser is behind it any more). Everything goes
 * through libuv without waiting, and the stream's bytes are opaque here: the RFB
 * protocol runs between QEMU and noVNC.
 */
#include "agentd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "json.h"
#include "log.h"
#include "util.h"
#include "valid.h"

#define VNC_STREAM_ID_MAX 32
#define VNC_INPUT_MAX	  (64 * 1024)

struct vnc_stream {
	uv_pipe_t pipe;
	uv_connect_t connect;
	struct vnc_stream *next;
	struct agent *agent;
	char name[NAME_MAX_LEN + 1];
	char id[VNC_STREAM_ID_MAX + 1];
	bool connected, closing;
	int64_t renewed;	 /* ms; closed LINK_RELAY_LEASE_MS after unless renewed */
	struct vnc_write *queue; /* written once connected, newest first */
	char *held;		 /* read but not yet sent: the link was busy (reading stopped) */
	size_t held_len;
};

struct vnc_write {
	struct vnc_write *next;
	uv_write_t req;
	size_t len;
	char data[];
};

static struct vnc_stream *streams;

static struct json_object *report_body(struct vnc_stream *s, const char *data, size_t len)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "name", json_object_new_string(s->name));
	json_object_object_add(body, "stream", json_object_new_string(s->id));
	if (data) {
		_cleanup_free_ char *b64 = base64_encode(data, len);

		json_object_object_add(body, "data", json_object_new_string(b64));
	} else {
		json_object_object_add(body, "closed", json_object_new_boolean(true));
	}
	return body;
}

/* Relay what QEMU wrote if the link is free; else keep it and stop reading the socket
 * until the link drained (vnc_streams_resume()): QEMU's VNC server then sends updates
 * only as fast as the link carries them, as to any slow client. */
static void report(struct vnc_stream *s, const char *data, size_t len)
{
	if (link_console_send(s->agent, report_body(s, data, len)) != -EAGAIN)
		return;
	s->held = xmalloc(len);
	memcpy(s->held, data, len);
	s->held_len = len;
	uv_read_stop((uv_stream_t *)&s->pipe);
}

static void closed_cb(uv_handle_t *h)
{
	struct vnc_stream *s = h->data;

	while (s->queue) {
		struct vnc_write *w = s->queue;

		s->queue = w->next;
		free(w);
	}
	free(s->held);
	free(s);
}

/* End s; tell the controller unless it asked (told false). */
static void stream_close(struct vnc_stream *s, bool tell)
{
	if (s->closing)
		return;
	s->closing = true;
	for (struct vnc_stream **pp = &streams; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	/* Queued, not held: one small message that ends the browser's stream. */
	if (tell)
		link_event_send(s->agent, LINK_CONSOLE_DATA, NULL, report_body(s, NULL, 0));
	uv_close((uv_handle_t *)&s->pipe, closed_cb);
}

static void write_cb(uv_write_t *req, int status)
{
	struct vnc_write *w = req->data;
	struct vnc_stream *s = req->handle->data;

	if (status < 0 && status != UV_ECANCELED) {
		log_warnx("vnc %s: write: %s", s->name, uv_strerror(status));
		stream_close(s, true);
	}
	free(w);
}

static void stream_write(struct vnc_stream *s, struct vnc_write *w)
{
	uv_buf_t buf = uv_buf_init(w->data, (unsigned)w->len);
	int ret;

	w->req.data = w;
	ret = uv_write(&w->req, (uv_stream_t *)&s->pipe, &buf, 1, write_cb);
	if (ret < 0) {
		free(w);
		stream_close(s, true);
	}
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char chunk[64 * 1024]; /* sent on (base64-copied) before the next read */

	(void)h;
	(void)suggested;
	*buf = uv_buf_init(chunk, sizeof(chunk));
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
	struct vnc_stream *s = st->data;

	if (n < 0)
		stream_close(s, true);
	else if (n > 0)
		report(s, buf->base, (size_t)n);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct vnc_stream *s = req->data;
	struct vnc_write *q = NULL;

	if (s->closing)
		return;
	if (status < 0) {
		log_warnx("vnc %s: cannot reach the VNC socket: %s", s->name, uv_strerror(status));
		stream_close(s, true);
		return;
	}
	s->connected = true;
	uv_read_start((uv_stream_t *)&s->pipe, alloc_cb, read_cb);
	while (s->queue) { /* oldest first */
		struct vnc_write *w = s->queue;

		s->queue = w->next;
		w->next = q;
		q = w;
	}
	while (q && !s->closing) {
		struct vnc_write *w = q;

		q = w->next;
		stream_write(s, w);
	}
	while (q) {
		struct vnc_write *w = q;

		q = w->next;
		free(w);
	}
}

static struct vnc_stream *stream_find(const char *id)
{
	for (struct vnc_stream *s = streams; s; s = s->next)
		if (strcmp(s->id, id) == 0)
			return s;
	return NULL;
}

static int id_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);
	size_t len = strlen(s);

	if (len == 0 || len > VNC_STREAM_ID_MAX || strspn(s, "0123456789abcdef") != len)
		return err_set(err, 0, "field '%s' must be 1-%d hex digits", field,
			       VNC_STREAM_ID_MAX);
	return 0;
}

static const struct json_field open_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{"stream", JK_STRING, true, id_check},
	{"renew", JK_BOOL, false, NULL}, /* only renew: never open it anew */
	{NULL, 0, false, NULL},
};

static const struct json_field input_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, false, name_check},
	{"stream", JK_STRING, true, id_check},
	{"data", JK_STRING, false, NULL},
	{NULL, 0, false, NULL},
};

static int stream_open(struct agent *a, struct json_object *body, struct kerr *err)
{
	const char *name = json_get_str(body, "name", "");
	struct vm *vm = vm_find(a, name);
	_cleanup_free_ char *path = NULL;
	struct vnc_stream *s;

	if (vm == NULL || !vm->inst.created)
		return err_set(err, 0, "there is no VM %s on this host", name);
	if (vm->inst.pid <= 0)
		return err_set(err, 0, "VM %s is not running", name);
	if ((s = stream_find(json_get_str(body, "stream", ""))) != NULL) {
		/* The controller renews the streams it relays by opening them again. */
		if (strcmp(s->name, name) != 0)
			return err_set(err, 0, "stream %s is %s's", s->id, s->name);
		s->renewed = now_ms();
		return 0;
	}
	/* A renewal that comes after the stream ended must not open a second RFB session
	 * in the middle of the browser's. */
	if (json_get_bool(body, "renew", false))
		return err_set(err, 0, "stream %s is closed", json_get_str(body, "stream", ""));
	path = xasprintf("%s/vnc.sock", vm->inst.dir);
	if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return err_set(err, 0, "the VNC socket path of %s is too long", name);
	s = xcalloc(1, sizeof(*s));
	s->agent = a;
	s->renewed = now_ms();
	snprintf(s->name, sizeof(s->name), "%s", name);
	snprintf(s->id, sizeof(s->id), "%s", json_get_str(body, "stream", ""));
	uv_pipe_init(a->loop, &s->pipe, 0);
	s->pipe.data = s;
	s->connect.data = s;
	s->next = streams;
	streams = s;
	uv_pipe_connect(&s->connect, &s->pipe, path, connect_cb);
	return 0;
}

static int stream_input(struct json_object *body, struct kerr *err)
{
	struct vnc_stream *s = stream_find(json_get_str(body, "stream", ""));
	_cleanup_free_ char *data = NULL;
	struct vnc_write *w;
	size_t len = 0;

	if (s == NULL)
		return err_set(err, 0, "no VNC stream %s", json_get_str(body, "stream", ""));
	data = base64_decode(json_get_str(body, "data", ""), &len);
	if (data == NULL || len == 0 || len > VNC_INPUT_MAX)
		return err_set(err, 0, "field 'data' must be base64 of 1-%d bytes", VNC_INPUT_MAX);
	w = xmalloc(sizeof(*w) + len);
	w->len = len;
	memcpy(w->data, data, len);
	if (s->connected) {
		stream_write(s, w);
	} else {
		w->next = s->queue;
		s->queue = w;
	}
	return 0;
}

/*
 * The VNC queries: {"what": "vnc-open", "name": VM, "stream": id[, "renew": true]},
 * {"what": "vnc-input", "stream": id, "data": base64}, {"what": "vnc-close", "stream":
 * id} -> {} (see the top).
 */
int vnc_query(struct agent *a, struct json_object *body, struct json_object **answer,
	      struct kerr *err)
{
	const char *what = json_get_str(body, "what", "");
	int ret;

	if (strcmp(what, "vnc-open") == 0) {
		ret = json_fields_check(body, open_fields, err) < 0 ? -1
								    : stream_open(a, body, err);
	} else if (json_fields_check(body, input_fields, err) < 0) {
		ret = -1;
	} else if (strcmp(what, "vnc-input") == 0) {
		ret = stream_input(body, err);
	} else {
		struct vnc_stream *s = stream_find(json_get_str(body, "stream", ""));

		if (s)
			stream_close(s, false);
		ret = 0;
	}
	if (ret == 0)
		*answer = json_object_new_object();
	return ret;
}

/*
 * Part of the agent's cron: a stream the controller has not renewed (vnc-open again)
 * within LINK_RELAY_LEASE_MS closes, with QEMU's VNC connection: its controller
 * restarted or lost this host, and no browser is behind it any more.
 */
void vnc_streams_expire(struct agent *a)
{
	int64_t now = now_ms();

	(void)a;
	for (struct vnc_stream *s = streams, *next; s; s = next) {
		next = s->next;
		if (now - s->renewed > LINK_RELAY_LEASE_MS) {
			log_info("vnc %s: stream %s not renewed by the controller; closed", s->name,
				 s->id);
			stream_close(s, true);
		}
	}
}

/*
 * Called by link.c once its queue drained after a relay stopped reading: send what each
 * stream held and read again, until the link is busy again.
 */
void vnc_streams_resume(struct agent *a)
{
	(void)a;
	for (struct vnc_stream *s = streams; s; s = s->next) {
		_cleanup_free_ char *held = s->held;
		size_t len = s->held_len;

		if (held == NULL || s->closing)
			continue;
		s->held = NULL;
		s->held_len = 0;
		report(s, held, len);
		if (s->held == NULL)
			uv_read_start((uv_stream_t *)&s->pipe, alloc_cb, read_cb);
	}
}
