/*
 * console.c - typing into a VM's serial port, and relaying what the guest writes there.
 *
 * QEMU serves the serial port as a socket (serial.sock in the VM's directory) and logs
 * everything the guest writes to console.log (qemuargs.c), so reading the console is
 * reading the log, and typing is writing to the socket. The guest's UART takes a few
 * bytes at a time and QEMU reads the socket only as fast as the guest drains it, so a
 * connection that wrote and closed would lose the rest: the agent keeps one connection
 * per VM open (QEMU serves one client at a time), writes through libuv without waiting,
 * and reads what QEMU sends it so QEMU never blocks on a full socket: dropped (the log
 * has it) unless the controller watches the VM for a dashboard terminal, then sent on
 * as LINK_CONSOLE_DATA. The controller renews a watch every LINK_RELAY_RENEW_MS while
 * a terminal reads it; a watch not renewed for LINK_RELAY_LEASE_MS ends (a controller
 * that restarted has no terminal behind it). The connection ends when QEMU closes it
 * (the VM stopped).
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

#define CONSOLE_INPUT_MAX 4096

struct serial_conn {
	uv_pipe_t pipe;
	uv_connect_t connect;
	struct serial_conn *next;
	char name[NAME_MAX_LEN + 1];
	bool connected, closing;
	bool watched;	       /* the controller relays what the guest writes (console-watch) */
	int64_t watch_renewed; /* ms; the watch ends LINK_RELAY_LEASE_MS after */
	struct agent *agent;   /* to send it on */
	struct pending *queue; /* written once connected */
	char *held;	       /* read but not yet sent: the link was busy (reading stopped) */
	size_t held_len;
};

struct pending {
	struct pending *next;
	uv_write_t req;
	size_t len;
	char data[];
};

static struct serial_conn *conns;

static void conn_closed_cb(uv_handle_t *h)
{
	struct serial_conn *c = h->data;

	while (c->queue) {
		struct pending *p = c->queue;

		c->queue = p->next;
		free(p);
	}
	free(c->held);
	free(c);
}

/* What the guest wrote (data, len), or that the port closed (data NULL), as the body
 * of a LINK_CONSOLE_DATA for the controller, which relays it to the dashboard's
 * terminals. */
static struct json_object *watch_body(struct serial_conn *c, const char *data, size_t len)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "name", json_object_new_string(c->name));
	if (data) {
		_cleanup_free_ char *b64 = base64_encode(data, len);

		json_object_object_add(body, "data", json_object_new_string(b64));
	} else {
		json_object_object_add(body, "closed", json_object_new_boolean(true));
	}
	return body;
}

/* Relay what the guest wrote if the link is free; else keep it and stop reading the
 * port until the link drained (console_relays_resume()): the guest then writes only
 * as fast as the link carries. */
static void watch_send(struct serial_conn *c, const char *data, size_t len)
{
	if (link_console_send(c->agent, watch_body(c, data, len)) != -EAGAIN)
		return;
	c->held = xmalloc(len);
	memcpy(c->held, data, len);
	c->held_len = len;
	uv_read_stop((uv_stream_t *)&c->pipe);
}

static void conn_close(struct serial_conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	/* Queued, not held: one small message that ends the terminal's stream. */
	if (c->watched)
		link_event_send(c->agent, LINK_CONSOLE_DATA, NULL, watch_body(c, NULL, 0));
	for (struct serial_conn **slot = &conns; *slot; slot = &(*slot)->next) {
		if (*slot == c) {
			*slot = c->next;
			break;
		}
	}
	uv_close((uv_handle_t *)&c->pipe, conn_closed_cb);
}

static void write_cb(uv_write_t *req, int status)
{
	struct pending *p = req->data;
	struct serial_conn *c = (struct serial_conn *)req->handle->data;

	if (status < 0 && status != UV_ECANCELED) {
		log_warnx("console %s: write: %s", c->name, uv_strerror(status));
		conn_close(c);
	}
	free(p);
}

static void conn_write(struct serial_conn *c, struct pending *p)
{
	uv_buf_t buf = uv_buf_init(p->data, (unsigned)p->len);
	int ret;

	p->req.data = p;
	ret = uv_write(&p->req, (uv_stream_t *)&c->pipe, &buf, 1, write_cb);
	if (ret < 0) {
		log_warnx("console %s: write: %s", c->name, uv_strerror(ret));
		free(p);
		conn_close(c);
	}
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char sink[4096]; /* the echo is in console.log already */

	(void)h;
	(void)suggested;
	*buf = uv_buf_init(sink, sizeof(sink));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct serial_conn *c = s->data;

	if (n < 0)
		conn_close(c);
	else if (n > 0 && c->watched)
		watch_send(c, buf->base, (size_t)n);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct serial_conn *c = req->data;
	struct pending *q;

	if (c->closing)
		return;
	if (status < 0) {
		log_warnx("console %s: cannot reach the serial port: %s", c->name,
			  uv_strerror(status));
		conn_close(c);
		return;
	}
	c->connected = true;
	uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb);
	/* The queue was built newest first. */
	for (q = NULL; c->queue;) {
		struct pending *p = c->queue;

		c->queue = p->next;
		p->next = q;
		q = p;
	}
	while (q) {
		struct pending *p = q;

		q = p->next;
		conn_write(c, p);
	}
}

static struct serial_conn *conn_get(struct agent *a, struct vm *vm, struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/serial.sock", vm->inst.dir);
	struct serial_conn *c;

	for (c = conns; c; c = c->next)
		if (strcmp(c->name, vm->inst.name) == 0)
			return c;
	if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		err_set(err, 0, "the serial socket path of %s is too long", vm->inst.name);
		return NULL;
	}
	c = xcalloc(1, sizeof(*c));
	c->agent = a;
	snprintf(c->name, sizeof(c->name), "%s", vm->inst.name);
	uv_pipe_init(a->loop, &c->pipe, 0);
	c->pipe.data = c;
	c->connect.data = c;
	c->next = conns;
	conns = c;
	uv_pipe_connect(&c->connect, &c->pipe, path, connect_cb);
	return c;
}

static const struct json_field input_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{"data", JK_STRING, true, NULL},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "console-input", "name": N, "data": text} -> {"queued": bytes}: the bytes go
 * to the guest's serial port as if typed, in order, as fast as the guest takes them.
 */
int console_input_query(struct agent *a, struct json_object *body, struct json_object **answer,
			struct kerr *err)
{
	const char *name = json_get_str(body, "name", "");
	struct vm *vm = vm_find(a, name);
	struct serial_conn *c;
	struct json_object *data;
	struct pending *p;
	size_t len;

	if (json_fields_check(body, input_fields, err) < 0)
		return -1;
	data = json_object_object_get(body, "data");
	len = (size_t)json_object_get_string_len(data);
	if (len == 0 || len > CONSOLE_INPUT_MAX || strlen(json_object_get_string(data)) != len)
		return err_set(err, 0, "field 'data' must be 1-%d bytes without NUL",
			       CONSOLE_INPUT_MAX);
	if (vm == NULL || !vm->inst.created)
		return err_set(err, 0, "there is no VM %s on this host", name);
	if (vm->inst.pid <= 0)
		return err_set(err, 0, "VM %s is not running", name);
	if ((c = conn_get(a, vm, err)) == NULL)
		return -1;
	p = xmalloc(sizeof(*p) + len);
	p->len = len;
	memcpy(p->data, json_object_get_string(data), len);
	if (c->connected) {
		conn_write(c, p);
	} else {
		p->next = c->queue;
		c->queue = p;
	}
	*answer = json_object_new_object();
	json_object_object_add(*answer, "queued", json_object_new_int64((int64_t)len));
	return 0;
}

static const struct json_field watch_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{"on", JK_BOOL, true, NULL},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "console-watch", "name": N, "on": bool} -> {"watching": bool}: while on, what
 * the guest writes to its serial port goes to the controller as LINK_CONSOLE_DATA, and
 * {name, closed: true} when QEMU closes the port (the VM stopped), which ends the watch.
 */
int console_watch_query(struct agent *a, struct json_object *body, struct json_object **answer,
			struct kerr *err)
{
	const char *name = json_get_str(body, "name", "");
	bool on = json_get_bool(body, "on", false);
	struct vm *vm = vm_find(a, name);
	struct serial_conn *c;

	if (json_fields_check(body, watch_fields, err) < 0)
		return -1;
	if (!on) {
		for (c = conns; c; c = c->next)
			if (strcmp(c->name, name) == 0)
				c->watched = false;
	} else {
		if (vm == NULL || !vm->inst.created)
			return err_set(err, 0, "there is no VM %s on this host", name);
		if (vm->inst.pid <= 0)
			return err_set(err, 0, "VM %s is not running", name);
		if ((c = conn_get(a, vm, err)) == NULL)
			return -1;
		c->watched = true;
		c->watch_renewed = now_ms();
	}
	*answer = json_object_new_object();
	json_object_object_add(*answer, "watching", json_object_new_boolean(on));
	return 0;
}

/*
 * Part of the agent's cron: a watch the controller has not renewed within
 * LINK_RELAY_LEASE_MS ends (its controller restarted, or lost this host, and no
 * terminal reads it any more); the serial connection stays for typing.
 */
void console_watches_expire(struct agent *a)
{
	int64_t now = now_ms();

	(void)a;
	for (struct serial_conn *c = conns; c; c = c->next) {
		if (c->watched && now - c->watch_renewed > LINK_RELAY_LEASE_MS) {
			log_info("console %s: the controller stopped renewing its watch; ended",
				 c->name);
			c->watched = false;
		}
	}
}

/*
 * Called by link.c once its queue drained after a relay stopped reading: send what each
 * held (dropped if the watch ended meanwhile: the log has it) and read again, until the
 * link is busy again.
 */
void console_relays_resume(struct agent *a)
{
	(void)a;
	for (struct serial_conn *c = conns; c; c = c->next) {
		_cleanup_free_ char *held = c->held;
		size_t len = c->held_len;

		if (held == NULL || c->closing)
			continue;
		c->held = NULL;
		c->held_len = 0;
		if (c->watched) {
			watch_send(c, held, len);
			if (c->held)
				continue; /* the link is busy again */
		}
		uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb);
	}
}
