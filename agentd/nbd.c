/*
 * nbd.c - a small blocking NBD client over a unix socket (nbd.h says what of the
 * protocol it speaks and why it is not libnbd). Every number on the wire is
 * big-endian; the constants are the NBD project's doc/proto.md.
 */
#include "nbd.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "chunkpipe.h"
#include "util.h"

#define NBD_MAGIC		   0x4e42444d41474943ull /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC		   0x49484156454f5054ull /* "IHAVEOPT" */
#define NBD_REP_MAGIC		   0x0003e889045565a9ull
#define NBD_REQUEST_MAGIC	   0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC	   0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

#define NBD_FLAG_FIXED_NEWSTYLE	    (1u << 0) /* handshake flags, and the client's */
#define NBD_FLAG_NO_ZEROES	    (1u << 1)
#define NBD_OPT_ABORT		    2
#define NBD_OPT_GO		    7
#define NBD_OPT_STRUCTURED_REPLY    8
#define NBD_OPT_SET_META_CONTEXT    10
#define NBD_REP_ACK		    1
#define NBD_REP_INFO		    3
#define NBD_REP_META_CONTEXT	    4
#define NBD_REP_FLAG_ERROR	    (1u << 31)
#define NBD_REP_ERR_UNKNOWN	    (NBD_REP_FLAG_ERROR | 6)
#define NBD_INFO_EXPORT		    0
#define NBD_CMD_READ		    0
#define NBD_CMD_DISC		    2
#define NBD_CMD_BLOCK_STATUS	    7
#define NBD_REPLY_FLAG_DONE	    (1u << 0)
#define NBD_REPLY_TYPE_NONE	    0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR_BIT    (1u << 15)
#define NBD_STATE_ZERO		    (1u << 1) /* base:allocation: reads as zeros */

#define NBD_META_ALLOCATION "base:allocation"
#define NBD_TIMEOUT_S	    60	  /* one reply; QEMU answers a 4 MiB read in milliseconds */
#define NBD_OPT_REPLY_MAX   65536 /* an option reply larger than this is not a server's */
#define NBD_STATUS_ROUNDS   1024  /* block status replies walked for one range */

struct nbd_conn {
	int fd;
	int64_t size;
	bool structured; /* structured replies: reads may come back as holes */
	bool meta;	 /* base:allocation negotiated: block status works */
	uint32_t meta_id;
	uint64_t cookie;
};

/* ---- the socket --------------------------------------------------------------------- */

static int io_full(struct nbd_conn *c, void *buf, size_t len, bool out, struct kerr *err)
{
	char *p = buf;

	while (len > 0) {
		ssize_t n = out ? send(c->fd, p, len, MSG_NOSIGNAL) : recv(c->fd, p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return err_set(err, ETIMEDOUT, "nbd: no answer in %d s", NBD_TIMEOUT_S);
		if (n < 0)
			return err_set(err, errno, "nbd: %s", strerror(errno));
		if (n == 0)
			return err_set(err, EPIPE, "nbd: the server closed the connection");
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int recv_full(struct nbd_conn *c, void *buf, size_t len, struct kerr *err)
{
	return io_full(c, buf, len, false, err);
}

static int send_full(struct nbd_conn *c, const void *buf, size_t len, struct kerr *err)
{
	return io_full(c, (void *)buf, len, true, err);
}

/* Read and drop len bytes (a payload this client has no use for). */
static int recv_skip(struct nbd_conn *c, size_t len, struct kerr *err)
{
	char sink[4096];

	while (len > 0) {
		size_t n = len < sizeof(sink) ? len : sizeof(sink);

		if (recv_full(c, sink, n, err) < 0)
			return -1;
		len -= n;
	}
	return 0;
}

static void put16(unsigned char *p, uint16_t v)
{
	v = htobe16(v);
	memcpy(p, &v, 2);
}

static void put32(unsigned char *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}

static void put64(unsigned char *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

static uint16_t get16(const unsigned char *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return be16toh(v);
}

static uint32_t get32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return be32toh(v);
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return be64toh(v);
}

/* ---- the handshake ------------------------------------------------------------------ */

static int opt_send(struct nbd_conn *c, uint32_t opt, const void *data, size_t len,
		    struct kerr *err)
{
	unsigned char head[16];

	put64(head, NBD_OPTS_MAGIC);
	put32(head + 8, opt);
	put32(head + 12, (uint32_t)len);
	if (send_full(c, head, sizeof(head), err) < 0)
		return -1;
	return len ? send_full(c, data, len, err) : 0;
}

/* One reply to option opt: its type, and its payload in *data (freed by the caller). */
static int opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t *type, unsigned char **data,
		     uint32_t *len, struct kerr *err)
{
	unsigned char head[20];

	*data = NULL;
	if (recv_full(c, head, sizeof(head), err) < 0)
		return -1;
	if (get64(head) != NBD_REP_MAGIC || get32(head + 8) != opt)
		return err_set(err, EPROTO, "nbd: a malformed reply to option %u", opt);
	*type = get32(head + 12);
	*len = get32(head + 16);
	if (*len > NBD_OPT_REPLY_MAX)
		return err_set(err, EPROTO, "nbd: a reply of %u bytes to option %u", *len, opt);
	*data = xmalloc(*len + 1);
	return recv_full(c, *data, *len, err);
}

/* NBD_OPT_STRUCTURED_REPLY: c->structured when the server agrees. */
static int structured_ask(struct nbd_conn *c, struct kerr *err)
{
	_cleanup_free_ unsigned char *data = NULL;
	uint32_t type, len;

	if (opt_send(c, NBD_OPT_STRUCTURED_REPLY, NULL, 0, err) < 0 ||
	    opt_reply(c, NBD_OPT_STRUCTURED_REPLY, &type, &data, &len, err) < 0)
		return -1;
	c->structured = type == NBD_REP_ACK;
	if (!c->structured && !(type & NBD_REP_FLAG_ERROR))
		return err_set(err, EPROTO, "nbd: reply %u to structured replies", type);
	return 0;
}

/* NBD_OPT_SET_META_CONTEXT base:allocation on export name: c->meta and its id. */
static int meta_ask(struct nbd_conn *c, const char *name, struct kerr *err)
{
	size_t nlen = strlen(name), qlen = strlen(NBD_META_ALLOCATION);
	_cleanup_free_ unsigned char *req = xmalloc(4 + nlen + 4 + 4 + qlen);

	put32(req, (uint32_t)nlen);
	memcpy(req + 4, name, nlen);
	put32(req + 4 + nlen, 1);
	put32(req + 8 + nlen, (uint32_t)qlen);
	memcpy(req + 12 + nlen, NBD_META_ALLOCATION, qlen);
	if (opt_send(c, NBD_OPT_SET_META_CONTEXT, req, 12 + nlen + qlen, err) < 0)
		return -1;
	for (;;) {
		_cleanup_free_ unsigned char *data = NULL;
		uint32_t type, len;

		if (opt_reply(c, NBD_OPT_SET_META_CONTEXT, &type, &data, &len, err) < 0)
			return -1;
		if (type == NBD_REP_ACK || (type & NBD_REP_FLAG_ERROR))
			return 0; /* an error only means no block status */
		if (type != NBD_REP_META_CONTEXT || len < 4)
			return err_set(err, EPROTO, "nbd: reply %u to the meta context", type);
		data[len] = '\0';
		if (len - 4 == qlen && !memcmp(data + 4, NBD_META_ALLOCATION, qlen)) {
			c->meta = true;
			c->meta_id = get32(data);
		}
	}
}

/* NBD_OPT_GO: the export's size, then transmission. */
static int go(struct nbd_conn *c, const char *name, struct kerr *err)
{
	size_t nlen = strlen(name);
	_cleanup_free_ unsigned char *req = xmalloc(4 + nlen + 2);
	bool have_size = false;

	put32(req, (uint32_t)nlen);
	memcpy(req + 4, name, nlen);
	put16(req + 4 + nlen, 0); /* no information asked beyond the export's */
	if (opt_send(c, NBD_OPT_GO, req, 6 + nlen, err) < 0)
		return -1;
	for (;;) {
		_cleanup_free_ unsigned char *data = NULL;
		uint32_t type, len;

		if (opt_reply(c, NBD_OPT_GO, &type, &data, &len, err) < 0)
			return -1;
		if (type == NBD_REP_ACK)
			break;
		if (type == NBD_REP_ERR_UNKNOWN)
			return err_set(err, ENOENT, "nbd: the server has no export '%.64s'", name);
		if (type & NBD_REP_FLAG_ERROR) {
			data[len] = '\0';
			return err_set(err, EPROTO, "nbd: export '%.64s' refused (%#x: %.100s)",
				       name, type, (char *)data);
		}
		if (type == NBD_REP_INFO && len >= 12 && get16(data) == NBD_INFO_EXPORT) {
			c->size = (int64_t)get64(data + 2);
			have_size = c->size >= 0;
		}
		/* Other information (names, block sizes) is not needed. */
	}
	if (!have_size)
		return err_set(err, EPROTO, "nbd: export '%.64s' came without its size", name);
	return 0;
}

int nbd_conn_open(const char *path, const char *name, struct nbd_conn **out, struct kerr *err)
{
	struct nbd_conn *c = xcalloc(1, sizeof(*c));
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = NBD_TIMEOUT_S};
	unsigned char hello[18], flags[4];
	uint16_t sflags;

	c->fd = -1;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		err_set(err, ENAMETOOLONG, "nbd: socket path %s is too long", path);
		goto fail;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		err_set(err, errno, "nbd: cannot connect to %s: %s", path, strerror(errno));
		goto fail;
	}
	if (recv_full(c, hello, sizeof(hello), err) < 0)
		goto fail;
	sflags = get16(hello + 16);
	if (get64(hello) != NBD_MAGIC || get64(hello + 8) != NBD_OPTS_MAGIC ||
	    !(sflags & NBD_FLAG_FIXED_NEWSTYLE)) {
		err_set(err, EPROTO, "nbd: %s is not a fixed-newstyle NBD server", path);
		goto fail;
	}
	put32(flags, NBD_FLAG_FIXED_NEWSTYLE | (sflags & NBD_FLAG_NO_ZEROES));
	if (send_full(c, flags, sizeof(flags), err) < 0 || structured_ask(c, err) < 0 ||
	    (c->structured && meta_ask(c, name, err) < 0) || go(c, name, err) < 0)
		goto fail;
	*out = c;
	return 0;
fail:
	if (c->fd >= 0)
		close(c->fd);
	free(c);
	return -1;
}

int64_t nbd_conn_size(const struct nbd_conn *c)
{
	return c->size;
}

bool nbd_conn_sparse(const struct nbd_conn *c)
{
	return c->structured && c->meta;
}

/* ---- transmission ------------------------------------------------------------------- */

static int request_send(struct nbd_conn *c, uint16_t type, int64_t off, uint32_t len,
			struct kerr *err)
{
	unsigned char req[28];

	put32(req, NBD_REQUEST_MAGIC);
	put16(req + 4, 0);
	put16(req + 6, type);
	put64(req + 8, ++c->cookie);
	put64(req + 16, (uint64_t)off);
	put32(req + 24, len);
	return send_full(c, req, sizeof(req), err);
}

/* What one request's structured reply chunks are gathered into. */
struct reply {
	int64_t off; /* the request's range */
	uint32_t len;
	unsigned char *buf; /* a read's destination, NULL for block status */
	uint64_t covered;   /* a read: bytes of data and holes received */
	int64_t zero_to;    /* block status: the range reads as zeros up to here ... */
	bool not_zero;	    /* ... or part of it does not */
	int error;	    /* the server's errno, 0 if none */
	char why[128];
};

/* An error chunk: errno, message length, message (and an offset after, ignored). */
static int chunk_error(struct nbd_conn *c, struct reply *r, uint32_t len, struct kerr *err)
{
	unsigned char head[6];
	uint16_t mlen;
	size_t keep;

	if (len < 6 || recv_full(c, head, 6, err) < 0)
		return len < 6 ? err_set(err, EPROTO, "nbd: a short error chunk") : -1;
	mlen = get16(head + 4);
	if (mlen > len - 6)
		return err_set(err, EPROTO, "nbd: an error chunk's message overruns it");
	r->error = get32(head) ? (int)get32(head) : EIO;
	keep = mlen < sizeof(r->why) - 1 ? mlen : sizeof(r->why) - 1;
	if (recv_full(c, r->why, keep, err) < 0)
		return -1;
	r->why[keep] = '\0';
	return recv_skip(c, len - 6 - keep, err);
}

/* A data or hole chunk of a read, placed where it belongs in r->buf. */
static int chunk_read(struct nbd_conn *c, struct reply *r, uint16_t type, uint32_t len,
		      struct kerr *err)
{
	unsigned char head[12];
	int64_t at;
	uint64_t n;

	if (r->buf == NULL || len < (type == NBD_REPLY_TYPE_OFFSET_HOLE ? 12u : 8u) ||
	    (type == NBD_REPLY_TYPE_OFFSET_HOLE && len != 12))
		return err_set(err, EPROTO, "nbd: an unexpected chunk of type %u", type);
	if (recv_full(c, head, type == NBD_REPLY_TYPE_OFFSET_HOLE ? 12 : 8, err) < 0)
		return -1;
	at = (int64_t)get64(head);
	n = type == NBD_REPLY_TYPE_OFFSET_HOLE ? get32(head + 8) : len - 8;
	if (at < r->off || at + (int64_t)n > r->off + (int64_t)r->len)
		return err_set(err, EPROTO, "nbd: a chunk at %lld outside the read", (long long)at);
	if (type == NBD_REPLY_TYPE_OFFSET_HOLE)
		memset(r->buf + (at - r->off), 0, n);
	else if (recv_full(c, r->buf + (at - r->off), n, err) < 0)
		return -1;
	r->covered += n;
	return 0;
}

/* A block status chunk: extents of base:allocation from r->zero_to on. */
static int chunk_status(struct nbd_conn *c, struct reply *r, uint32_t len, struct kerr *err)
{
	unsigned char id[4], ext[8];

	if (r->buf != NULL || len < 12 || (len - 4) % 8 != 0)
		return err_set(err, EPROTO, "nbd: a malformed block status chunk");
	if (recv_full(c, id, 4, err) < 0)
		return -1;
	if (get32(id) != c->meta_id)
		return recv_skip(c, len - 4, err); /* a context not asked for */
	for (uint32_t i = 0; i < (len - 4) / 8; i++) {
		if (recv_full(c, ext, 8, err) < 0)
			return -1;
		if (get32(ext) == 0)
			continue;
		if (!(get32(ext + 4) & NBD_STATE_ZERO))
			r->not_zero = true;
		else if (!r->not_zero)
			r->zero_to += get32(ext);
	}
	return 0;
}

/* Read the reply to the last request into r: simple or a run of structured chunks. */
static int reply_read(struct nbd_conn *c, struct reply *r, struct kerr *err)
{
	unsigned char magic[4], head[16];
	uint16_t flags = 0;

	do {
		uint16_t type;
		uint32_t len;
		int ret = 0;

		if (recv_full(c, magic, 4, err) < 0)
			return -1;
		if (get32(magic) == NBD_SIMPLE_REPLY_MAGIC) {
			if (recv_full(c, head, 12, err) < 0)
				return -1;
			if (get64(head + 4) != c->cookie)
				return err_set(err, EPROTO, "nbd: a reply to another request");
			r->error = (int)get32(head);
			if (r->error == 0 && r->buf) {
				if (recv_full(c, r->buf, r->len, err) < 0)
					return -1;
				r->covered = r->len;
			}
			return 0;
		}
		if (get32(magic) != NBD_STRUCTURED_REPLY_MAGIC || !c->structured)
			return err_set(err, EPROTO, "nbd: a reply with a bad magic");
		if (recv_full(c, head, 16, err) < 0)
			return -1;
		flags = get16(head);
		type = get16(head + 2);
		len = get32(head + 12);
		if (get64(head + 4) != c->cookie)
			return err_set(err, EPROTO, "nbd: a reply to another request");
		if (type & NBD_REPLY_TYPE_ERROR_BIT)
			ret = chunk_error(c, r, len, err);
		else if (type == NBD_REPLY_TYPE_OFFSET_DATA || type == NBD_REPLY_TYPE_OFFSET_HOLE)
			ret = chunk_read(c, r, type, len, err);
		else if (type == NBD_REPLY_TYPE_BLOCK_STATUS)
			ret = chunk_status(c, r, len, err);
		else if (type != NBD_REPLY_TYPE_NONE || len != 0)
			ret = err_set(err, EPROTO, "nbd: an unexpected chunk of type %u", type);
		if (ret < 0)
			return -1;
	} while (!(flags & NBD_REPLY_FLAG_DONE));
	return 0;
}

int nbd_conn_read(struct nbd_conn *c, int64_t off, void *buf, size_t len, struct kerr *err)
{
	struct reply r = {.off = off, .len = (uint32_t)len, .buf = buf};

	if (len > NBD_READ_MAX || off < 0 || off + (int64_t)len > c->size)
		return err_set(err, EINVAL, "nbd: a read of %zu bytes at %lld is out of bounds",
			       len, (long long)off);
	if (len == 0)
		return 0;
	if (request_send(c, NBD_CMD_READ, off, (uint32_t)len, err) < 0 ||
	    reply_read(c, &r, err) < 0)
		return -1;
	if (r.error)
		return err_set(err, r.error, "nbd: read at %lld: %s%s%s", (long long)off,
			       strerror(r.error), r.why[0] ? ": " : "", r.why);
	if (r.covered != len)
		return err_set(err, EIO, "nbd: the read at %lld came back with %llu of %zu bytes",
			       (long long)off, (unsigned long long)r.covered, len);
	return 0;
}

int nbd_conn_zero(struct nbd_conn *c, int64_t off, size_t len, struct kerr *err)
{
	int64_t end = off + (int64_t)len;

	if (!nbd_conn_sparse(c))
		return 0;
	if (len > UINT32_MAX || off < 0 || end > c->size)
		return err_set(err, EINVAL,
			       "nbd: block status of %zu bytes at %lld is out of "
			       "bounds",
			       len, (long long)off);
	/* The server may describe less than was asked: ask again from where it stopped. */
	for (int round = 0; off < end && round < NBD_STATUS_ROUNDS; round++) {
		struct reply r = {.off = off, .len = (uint32_t)(end - off), .zero_to = off};

		if (request_send(c, NBD_CMD_BLOCK_STATUS, off, r.len, err) < 0 ||
		    reply_read(c, &r, err) < 0)
			return -1;
		if (r.error)
			return err_set(err, r.error, "nbd: block status at %lld: %s%s%s",
				       (long long)off, strerror(r.error), r.why[0] ? ": " : "",
				       r.why);
		if (r.not_zero)
			return 0;
		if (r.zero_to <= off)
			return err_set(err, EPROTO, "nbd: block status at %lld described nothing",
				       (long long)off);
		off = r.zero_to;
	}
	return off >= end ? 1 : 0;
}

void nbd_conn_close(struct nbd_conn *c)
{
	struct kerr err;

	if (c == NULL)
		return;
	/* Best effort: the server drops the connection either way. */
	request_send(c, NBD_CMD_DISC, 0, 0, &err);
	close(c->fd);
	free(c);
}

/* ---- as a backup's source ----------------------------------------------------------- */

static int source_read(void *data, int64_t off, void *buf, size_t len, struct kerr *err)
{
	return nbd_conn_read(data, off, buf, len, err);
}

static bool source_hole(void *data, int64_t off, size_t len)
{
	struct kerr err;

	return nbd_conn_zero(data, off, len, &err) == 1;
}

void nbd_conn_source(struct nbd_conn *c, struct chunkpipe_source *src)
{
	src->size = c->size;
	src->read = source_read;
	src->hole = source_hole;
	src->data = c;
}
