/*
 * ws.c - WebSocket (RFC 6455) on the API's connections, for the dashboard's consoles.
 *
 * A route answers the browser's upgrade request with ws_accept(): 101 and the accept
 * key, then libmicrohttpd hands over the connection's socket (with TLS, one end of a
 * socket pair it encrypts behind). From then on the socket is ours: a uv_poll on the
 * loop reads client frames (always masked, per the RFC) and hands whole text or binary
 * messages to the owner's callbacks; ws_send() frames and queues what the owner sends,
 * written as the socket takes it. Nothing here blocks: the socket is non-blocking and a
 * slow browser only grows the queue, up to WS_QUEUE_MAX, past which it is dropped.
 *
 * Only what a console needs: no extensions, no fragmented sends, pings answered,
 * messages up to WS_MESSAGE_MAX. The socket goes back to libmicrohttpd (which closes it)
 * once the poll handle is closed.
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define WS_GUID	       "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_MESSAGE_MAX (64 * 1024)
#define WS_QUEUE_MAX   (4 * 1024 * 1024)
/* Past this much queued for the browser we stop reading from it: a client that does
 * not read cannot make us read (and answer its pings) for it. */
#define WS_READ_PAUSE	 (WS_QUEUE_MAX / 2)
#define WS_PING_EVERY_MS (30 * 1000)

enum ws_opcode {
	WS_OP_CONTINUATION = 0x0,
	WS_OP_TEXT = 0x1,
	WS_OP_BINARY = 0x2,
	WS_OP_CLOSE = 0x8,
	WS_OP_PING = 0x9,
	WS_OP_PONG = 0xa,
};

struct ws {
	uv_poll_t poll;
	uv_timer_t ping;
	struct ws *next;
	int fd;
	struct MHD_UpgradeResponseHandle *urh;
	const struct ws_ops *ops;
	void *cls;
	bool closing, close_sent, told_closed;
	int handles_open;
	/* Bytes read and not yet a whole frame. */
	unsigned char *in;
	size_t in_len, in_cap;
	/* A message being assembled from fragments. */
	unsigned char *msg;
	size_t msg_len;
	enum ws_opcode msg_op;
	/* Framed bytes waiting for the socket. */
	unsigned char *out;
	size_t out_len, out_cap;
};

/* What ws_accept() needs until libmicrohttpd upgrades the connection. */
struct ws_pending {
	const struct ws_ops *ops;
	void *cls;
};

static struct ws *sockets;

static void poll_update(struct ws *w);

static void handle_closed_cb(uv_handle_t *h)
{
	struct ws *w = h->data;

	if (--w->handles_open > 0)
		return;
	free(w->in);
	free(w->msg);
	free(w->out);
	free(w);
}

/* End w now: its owner hears of it once (on_close), its memory goes in the close cb. */
static void teardown(struct ws *w)
{
	if (w->closing)
		return;
	w->closing = true;
	for (struct ws **pp = &sockets; *pp; pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	}
	if (!w->told_closed && w->ops->on_close) {
		w->told_closed = true;
		w->ops->on_close(w, w->cls);
	}
	/* The socket goes back to libmicrohttpd, which closes it, now and not in the close
	 * callback: http_stop() stops the daemon before the loop turns again. The poll is
	 * stopped first, so no poll watches a closed descriptor. */
	uv_poll_stop(&w->poll);
	MHD_upgrade_action(w->urh, MHD_UPGRADE_ACTION_CLOSE);
	w->fd = -1;
	http_kick();
	uv_close((uv_handle_t *)&w->poll, handle_closed_cb);
	uv_close((uv_handle_t *)&w->ping, handle_closed_cb);
}

static void out_append(struct ws *w, const void *data, size_t len)
{
	if (w->out_len + len > w->out_cap) {
		w->out_cap = (w->out_len + len) * 2;
		w->out = xrealloc(w->out, w->out_cap);
	}
	memcpy(w->out + w->out_len, data, len);
	w->out_len += len;
}

static void frame_queue(struct ws *w, enum ws_opcode op, const void *data, size_t len)
{
	unsigned char head[10];
	size_t n = 0;

	head[n++] = (unsigned char)(0x80 | op); /* FIN: the server never fragments */
	if (len < 126) {
		head[n++] = (unsigned char)len;
	} else if (len <= 0xffff) {
		head[n++] = 126;
		head[n++] = (unsigned char)(len >> 8);
		head[n++] = (unsigned char)len;
	} else {
		head[n++] = 127;
		for (int i = 7; i >= 0; i--)
			head[n++] = (unsigned char)((uint64_t)len >> (8 * i));
	}
	out_append(w, head, n);
	out_append(w, data, len);
}

static void flush(struct ws *w)
{
	while (w->out_len > 0) {
		ssize_t n = send(w->fd, w->out, w->out_len, MSG_NOSIGNAL);

		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n < 0) {
			teardown(w);
			return;
		}
		memmove(w->out, w->out + n, w->out_len - (size_t)n);
		w->out_len -= (size_t)n;
	}
	/* Our close frame is out and the browser's answer does not matter. */
	if (w->out_len == 0 && w->close_sent) {
		teardown(w);
		return;
	}
	poll_update(w);
}

/* Send a close frame (code, reason) and end once it is written. */
static void close_send(struct ws *w, uint16_t code, const char *reason)
{
	unsigned char body[125];
	size_t rlen = strlen(reason);

	if (w->close_sent || w->closing)
		return;
	if (rlen > sizeof(body) - 2)
		rlen = sizeof(body) - 2;
	body[0] = (unsigned char)(code >> 8);
	body[1] = (unsigned char)code;
	memcpy(body + 2, reason, rlen);
	frame_queue(w, WS_OP_CLOSE, body, rlen + 2);
	w->close_sent = true;
	flush(w);
}

static void message_done(struct ws *w)
{
	if (w->ops->on_message)
		w->ops->on_message(w, w->cls, (const char *)w->msg, w->msg_len,
				   w->msg_op == WS_OP_BINARY);
	w->msg_len = 0;
}

/* One frame whose payload (unmasked) is data: control frames are answered here. */
static void frame_handle(struct ws *w, bool fin, enum ws_opcode op, unsigned char *data, size_t len)
{
	switch (op) {
	case WS_OP_PING:
		if (w->out_len + len > WS_QUEUE_MAX) {
			close_send(w, 1008, "the browser reads too slowly");
			return;
		}
		frame_queue(w, WS_OP_PONG, data, len);
		flush(w);
		return;
	case WS_OP_PONG:
		return;
	case WS_OP_CLOSE:
		/* Echo the code, as the RFC asks, then go. */
		close_send(w, len >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : 1000, "");
		return;
	case WS_OP_TEXT:
	case WS_OP_BINARY:
		if (w->msg_len) {
			close_send(w, 1002, "a new message inside a fragmented one");
			return;
		}
		w->msg_op = op;
		break;
	case WS_OP_CONTINUATION:
		break;
	default:
		close_send(w, 1002, "unknown opcode");
		return;
	}
	if (w->msg_len + len > WS_MESSAGE_MAX) {
		close_send(w, 1009, "message too big");
		return;
	}
	if (w->msg == NULL)
		w->msg = xmalloc(WS_MESSAGE_MAX);
	memcpy(w->msg + w->msg_len, data, len);
	w->msg_len += len;
	if (fin)
		message_done(w);
}

/* Parse as many whole frames as w->in holds. */
static void frames_parse(struct ws *w)
{
	size_t off = 0;

	while (!w->closing && !w->close_sent) {
		unsigned char *p = w->in + off;
		size_t avail = w->in_len - off, head = 2;
		uint64_t len;
		bool fin;
		enum ws_opcode op;

		if (avail < 2)
			break;
		fin = p[0] & 0x80;
		op = (enum ws_opcode)(p[0] & 0x0f);
		if ((p[0] & 0x70) || !(p[1] & 0x80)) {
			/* No extension was agreed, and a client's frames are always masked. */
			close_send(w, 1002, "reserved bits set or an unmasked frame");
			break;
		}
		len = p[1] & 0x7f;
		if (len == 126) {
			if (avail < 4)
				break;
			len = (uint64_t)p[2] << 8 | p[3];
			head = 4;
		} else if (len == 127) {
			if (avail < 10)
				break;
			len = 0;
			for (int i = 0; i < 8; i++)
				len = len << 8 | p[2 + i];
			head = 10;
		}
		if (len > WS_MESSAGE_MAX) {
			close_send(w, 1009, "message too big");
			break;
		}
		/* RFC 6455 5.5: control frames carry at most 125 bytes and are never
		 * fragmented. */
		if ((op & 0x8) && (len > 125 || !fin)) {
			close_send(w, 1002, "a control frame over 125 bytes or fragmented");
			break;
		}
		if (avail < head + 4 + len)
			break;
		for (uint64_t i = 0; i < len; i++)
			p[head + 4 + i] ^= p[head + i % 4];
		frame_handle(w, fin, op, p + head + 4, (size_t)len);
		off += head + 4 + (size_t)len;
	}
	if (w->closing)
		return;
	memmove(w->in, w->in + off, w->in_len - off);
	w->in_len -= off;
}

static void in_append(struct ws *w, const void *data, size_t len)
{
	if (w->in_len + len > w->in_cap) {
		w->in_cap = (w->in_len + len) * 2;
		w->in = xrealloc(w->in, w->in_cap);
	}
	memcpy(w->in + w->in_len, data, len);
	w->in_len += len;
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
	struct ws *w = p->data;
	char buf[16384];

	if (w->closing)
		return;
	if (status < 0) {
		teardown(w);
		return;
	}
	if (events & UV_WRITABLE)
		flush(w);
	if (w->closing || !(events & UV_READABLE))
		return;
	for (;;) {
		ssize_t n = recv(w->fd, buf, sizeof(buf), 0);

		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			/* The browser went (page closed): the owner ends its relay. */
			teardown(w);
			return;
		}
		/* At most one frame's worth may wait: a client cannot make us hoard. */
		if (w->in_len + (size_t)n > WS_MESSAGE_MAX + 16) {
			close_send(w, 1009, "message too big");
			return;
		}
		in_append(w, buf, (size_t)n);
		frames_parse(w);
		if (w->closing || w->close_sent)
			return;
		if (w->out_len >= WS_READ_PAUSE) {
			poll_update(w);
			return;
		}
	}
}

static void poll_update(struct ws *w)
{
	if (w->closing)
		return;
	uv_poll_start(&w->poll,
		      (w->out_len < WS_READ_PAUSE ? UV_READABLE : 0) |
			      (w->out_len ? UV_WRITABLE : 0),
		      poll_cb);
}

static void ping_cb(uv_timer_t *t)
{
	struct ws *w = t->data;

	/* Keeps idle consoles open through proxies and libmicrohttpd's idle timeout. */
	frame_queue(w, WS_OP_PING, "", 0);
	flush(w);
}

static void upgrade_cb(void *cls, struct MHD_Connection *conn, void *req_cls, const char *extra_in,
		       size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
	struct ws_pending *pending = cls;
	struct ws *w = xcalloc(1, sizeof(*w));
	int flags;

	(void)conn;
	(void)req_cls;
	w->fd = sock;
	w->urh = urh;
	w->ops = pending->ops;
	w->cls = pending->cls;
	free(pending);
	flags = fcntl(sock, F_GETFL);
	fcntl(sock, F_SETFL, flags | O_NONBLOCK);
	w->next = sockets;
	sockets = w;
	uv_poll_init(ctl.loop, &w->poll, sock);
	w->poll.data = w;
	uv_timer_init(ctl.loop, &w->ping);
	w->ping.data = w;
	w->handles_open = 2;
	uv_timer_start(&w->ping, ping_cb, WS_PING_EVERY_MS, WS_PING_EVERY_MS);
	poll_update(w);
	if (w->ops->on_open)
		w->ops->on_open(w, w->cls);
	if (extra_in_size && !w->closing && !w->close_sent) {
		in_append(w, extra_in, extra_in_size);
		frames_parse(w);
	}
}

static bool header_has(struct request *req, const char *name, const char *word)
{
	const char *v = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
	size_t wl = strlen(word);

	/* A comma-separated list of words, any case ("keep-alive, Upgrade"). */
	for (const char *p = v; p && *p;) {
		p += strspn(p, " \t,");
		if (strncasecmp(p, word, wl) == 0 && (p[wl] == '\0' || strchr(" \t,", p[wl])))
			return true;
		p += strcspn(p, ",");
	}
	return false;
}

/* The accept key: base64 of the SHA-1 of the client's key and the RFC's GUID. */
static char *accept_key(const char *key)
{
	_cleanup_free_ char *both = xasprintf("%s%s", key, WS_GUID);
	unsigned char md[SHA_DIGEST_LENGTH];

	SHA1((const unsigned char *)both, strlen(both), md);
	return base64_encode(md, sizeof(md));
}

/* Is req a WebSocket handshake (version 13) that ws_accept() can answer? */
bool ws_handshake_valid(struct request *req)
{
	const char *key =
		MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Sec-WebSocket-Key");
	const char *version =
		MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Sec-WebSocket-Version");

	return header_has(req, "Upgrade", "websocket") &&
	       header_has(req, "Connection", "upgrade") && key && strlen(key) == 24 && version &&
	       strcmp(version, "13") == 0;
}

/*
 * Answer req, a valid handshake (ws_handshake_valid()), with 101 and hand the connection
 * to ops, which owns cls from now on (passed back to each callback). The subprotocol
 * "kumo" is agreed when offered (the browser also offers the token as another, http.c).
 */
enum MHD_Result ws_accept(struct request *req, const struct ws_ops *ops, void *cls)
{
	const char *key =
		MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Sec-WebSocket-Key");
	_cleanup_free_ char *accept = NULL;
	struct ws_pending *pending;
	struct MHD_Response *resp;

	accept = accept_key(key);
	pending = xcalloc(1, sizeof(*pending));
	pending->ops = ops;
	pending->cls = cls;
	resp = MHD_create_response_for_upgrade(upgrade_cb, pending);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket");
	MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept);
	if (header_has(req, "Sec-WebSocket-Protocol", "kumo"))
		MHD_add_response_header(resp, "Sec-WebSocket-Protocol", "kumo");
	return http_reply_response(req, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
}

/* Send one message (binary or text) to the browser; dropped when w is closing. */
void ws_send(struct ws *w, const void *data, size_t len, bool binary)
{
	if (w->closing || w->close_sent)
		return;
	if (w->out_len + len > WS_QUEUE_MAX) {
		log_warnx("websocket: the browser reads too slowly; closing");
		close_send(w, 1008, "the browser reads too slowly");
		return;
	}
	frame_queue(w, binary ? WS_OP_BINARY : WS_OP_TEXT, data, len);
	flush(w);
}

/* End w with a close frame (code, reason); its on_close is not called for this. */
void ws_close(struct ws *w, uint16_t code, const char *reason)
{
	w->told_closed = true;
	close_send(w, code, reason);
}

/* The API server stops: every WebSocket ends now, so libmicrohttpd can stop. */
void ws_close_all(void)
{
	while (sockets)
		teardown(sockets);
}
