/*
 * nbd.c - an export of QEMU's NBD server read through libnbd (nbd.h says what a backup
 * needs of it). libnbd parses the protocol; this file asks for base:allocation, turns
 * extents into "reads as zeros or not", and turns libnbd's errors into struct kerr.
 *
 * Why libnbd's asynchronous calls and nbd_poll() rather than nbd_connect_unix(),
 * nbd_pread() and nbd_block_status(): those wait in poll() with no timeout, so a hung
 * QEMU would hold the backup's worker thread forever, and with it the job (a cancel is
 * only seen between chunks). The calls here are the same requests, and the wait is the
 * one libnbd's synchronous calls run, with a timeout: NBD_TIMEOUT_S without any
 * progress fails the command, as the socket timeout of the client this replaced did.
 */
#include "nbd.h"

#include <errno.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "chunkpipe.h"
#include "util.h"

#define NBD_TIMEOUT_S	  60	     /* no progress; QEMU answers a 4 MiB read in milliseconds */
#define NBD_BYE_MS	  2000	     /* after NBD_CMD_DISC: the server hangs up, or we do */
#define NBD_STATUS_ROUNDS 1024	     /* block status replies walked for one range */
#define NBD_PIECE	  (1u << 20) /* a read's requests after the first large one */
#define NBD_IN_FLIGHT	  8	     /* of one read's requests at a time */

static int timeout_ms = NBD_TIMEOUT_S * 1000; /* unit_nbd shortens it */
static size_t piece = NBD_PIECE;	      /* unit_nbd shrinks it */

struct nbd_conn {
	struct nbd_handle *h;
	int64_t size;
	bool sparse; /* base:allocation negotiated (so structured replies too) */
	bool broken; /* a wait timed out: the server is taken for hung */
	bool primed; /* a read of at least two pieces went as one request */
};

/*
 * err from libnbd's last failure in this thread: its errno (EIO when it has none) and
 * message after what. libnbd's message starts with the call that failed ("nbd_poll:
 * handshake: ...") and ends with strerror, which err_set adds: both are cut.
 */
static int nbd_err(struct kerr *err, const char *what)
{
	int code = nbd_get_errno();
	const char *msg = nbd_get_error(), *colon; /* valid until the next nbd_* call */
	size_t len, tail;

	if (code == 0)
		code = EIO;
	tail = strlen(strerror(code)) + 2;
	if (msg == NULL)
		msg = "failed";
	colon = strstr(msg, ": ");
	if (strncmp(msg, "nbd_", 4) == 0 && colon != NULL)
		msg = colon + 2;
	len = strlen(msg);
	if (len > tail && strcmp(msg + len - tail + 2, strerror(code)) == 0 &&
	    strncmp(msg + len - tail, ": ", 2) == 0)
		len -= tail;
	return err_set(err, code, "nbd: %s: %.*s", what, (int)len, msg);
}

/*
 * Run libnbd's state machine until the command cookie completes, or for cookie 0
 * until the handshake ends: the loop libnbd's synchronous calls run, with poll()'s
 * timeout bounded. Returns 0, or negative with err (the command's or the connection's
 * failure, ETIMEDOUT when nothing moved for timeout_ms).
 */
static int wait_done(struct nbd_conn *c, int64_t cookie, const char *what, struct kerr *err)
{
	for (;;) {
		int ret = cookie ? nbd_aio_command_completed(c->h, (uint64_t)cookie)
				 : !nbd_aio_is_connecting(c->h);

		if (ret < 0)
			return nbd_err(err, what);
		if (ret > 0)
			return 0;
		ret = nbd_poll(c->h, timeout_ms);
		if (ret < 0) {
			/* Not the command's own failure: other requests may still be in
			 * flight into their buffers, so nothing is polled again. */
			c->broken = true;
			return nbd_err(err, what);
		}
		if (ret == 0) {
			c->broken = true;
			return err_set(err, ETIMEDOUT, "nbd: %s: no answer in %d ms", what,
				       timeout_ms);
		}
	}
}

/* After a timeout the server is taken for hung: a request fails at once rather than
 * wait as long again for each chunk, and no goodbye is waited for. */
static int conn_usable(const struct nbd_conn *c, const char *what, struct kerr *err)
{
	if (c->broken)
		return err_set(err, EIO, "nbd: %s: the connection timed out before", what);
	return 0;
}

void nbd_conn_timeout_set(int ms)
{
	timeout_ms = ms > 0 ? ms : NBD_TIMEOUT_S * 1000;
}

void nbd_conn_piece_set(size_t bytes)
{
	piece = bytes > 0 ? bytes : NBD_PIECE;
}

int nbd_conn_open(const char *path, const char *name, pid_t server, struct nbd_conn **out,
		  struct kerr *err)
{
	struct ucred cred = {.pid = -1};
	socklen_t credlen = sizeof(cred);
	struct nbd_conn *c = xcalloc(1, sizeof(*c));
	char what[192];

	snprintf(what, sizeof(what), "export '%.64s' at %.100s", name, path);
	c->h = nbd_create();
	if (c->h == NULL) {
		nbd_err(err, what);
		goto fail;
	}
	/* libnbd's default pread_initialize stays on: it zeroes each read's buffer first
	 * (about 0.2 ms per 4 MiB). libnbd 1.14 counts the bytes a structured reply's data
	 * chunks carry, not which ones, so a hostile server that sends one range twice
	 * gets a read reported whole with the rest never written: without the memset that
	 * rest is old heap (a freed chunk of another VM's backup) stored as this disk's. */
	if (nbd_add_meta_context(c->h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
	    nbd_set_export_name(c->h, name) < 0 || nbd_aio_connect_unix(c->h, path) < 0) {
		nbd_err(err, what);
		goto fail;
	}
	if (wait_done(c, 0, what, err) < 0)
		goto fail;
	if (!nbd_aio_is_ready(c->h)) {
		/* Ended without an error: a server that hung up in the handshake. */
		err_set(err, EPROTO, "nbd: %s: the handshake did not finish", what);
		goto fail;
	}
	/* Before any of the export is read: the process listening on the socket must be
	 * the one asked for. The handshake told the export's name and size only. */
	if (server > 0 &&
	    (getsockopt(nbd_aio_get_fd(c->h), SOL_SOCKET, SO_PEERCRED, &cred, &credlen) < 0 ||
	     cred.pid != server)) {
		err_set(err, EPERM, "nbd: %s is served by pid %d, not %d", what, (int)cred.pid,
			(int)server);
		goto fail;
	}
	c->size = nbd_get_size(c->h);
	if (c->size < 0) {
		nbd_err(err, what);
		goto fail;
	}
	/* Meta contexts need structured replies: libnbd asks for both, and answers 0 here
	 * when the server refused either. */
	c->sparse = nbd_can_meta_context(c->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
	*out = c;
	return 0;
fail:
	nbd_close(c->h);
	free(c);
	return -1;
}

int64_t nbd_conn_size(const struct nbd_conn *c)
{
	return c->size;
}

bool nbd_conn_sparse(const struct nbd_conn *c)
{
	return c->sparse;
}

/*
 * Why a read goes to the server in pieces of NBD_PIECE, several in flight, after one
 * whole: QEMU's NBD server takes each request's buffer from posix_memalign, and glibc
 * serves a request that large from its heap only below its dynamic mmap threshold,
 * which rises to the size of the largest mapped block freed so far. A block
 * posix_memalign mapped is freed a page smaller than the next request of the same size
 * asks for, so a server fed only 4 MiB reads never raises it past them: each read's
 * buffer was mapped fresh, faulted in page by page as the file was copied into it and
 * unmapped after (strace of the VM's QEMU: an mmap and a munmap of 4 MiB + 8 KiB per
 * read; perf: some 40,000-100,000 page faults per 512 MiB, the backup 4-8 times slower
 * than the same read with them gone, measured on this machine's hypervisor, where a
 * fault is dear). One whole read first raises the threshold above the pieces for good
 * (in that QEMU, whoever reads next), and the pieces then reuse heap memory; several
 * in flight also let QEMU read the next piece from its file while it sends one.
 */
static int read_pieces(struct nbd_conn *c, int64_t off, void *buf, size_t len, const char *what,
		       struct kerr *err)
{
	int64_t cookies[NBD_IN_FLIGHT];
	size_t sent = 0, done = 0, n = (len + piece - 1) / piece;
	struct kerr later;
	int ret = 0;

	while (done < n) {
		/* Keep NBD_IN_FLIGHT going (none more once one failed). */
		while (ret == 0 && sent < n && sent - done < NBD_IN_FLIGHT) {
			size_t at = sent * piece, plen = len - at < piece ? len - at : piece;
			int64_t cookie = nbd_aio_pread(c->h, (char *)buf + at, plen,
						       (uint64_t)(off + (int64_t)at),
						       NBD_NULL_COMPLETION, 0);

			if (cookie < 0) {
				ret = nbd_err(err, what);
				break;
			}
			cookies[sent++ % NBD_IN_FLIGHT] = cookie;
		}
		if (done == sent)
			break;
		/* The oldest: the others move meanwhile. Each sent request is waited for
		 * (libnbd writes its reply into buf while we poll), unless the server is
		 * taken for hung: nothing is polled again then, so nothing writes. The
		 * first failure is the one told. */
		if (wait_done(c, cookies[done++ % NBD_IN_FLIGHT], what, ret ? &later : err) < 0) {
			if (ret == 0)
				ret = -1;
			if (c->broken)
				return -1;
		}
	}
	return ret;
}

int nbd_conn_read(struct nbd_conn *c, int64_t off, void *buf, size_t len, struct kerr *err)
{
	char what[64];
	int64_t cookie;

	if (len > NBD_READ_MAX || off < 0 || off + (int64_t)len > c->size)
		return err_set(err, EINVAL, "nbd: a read of %zu bytes at %lld is out of bounds",
			       len, (long long)off);
	if (len == 0)
		return 0;
	snprintf(what, sizeof(what), "read at %lld", (long long)off);
	if (conn_usable(c, what, err) < 0)
		return -1;
	if (c->primed || len <= piece)
		return read_pieces(c, off, buf, len, what, err);
	/* Whole, until one of two pieces or more went so (read_pieces says why). */
	cookie = nbd_aio_pread(c->h, buf, len, (uint64_t)off, NBD_NULL_COMPLETION, 0);
	if (cookie < 0)
		return nbd_err(err, what);
	if (wait_done(c, cookie, what, err) < 0)
		return -1;
	c->primed = len >= 2 * piece;
	return 0;
}

/* What one block status reply's base:allocation extents say of the range asked. */
struct zeros {
	int64_t zero_to; /* the range reads as zeros up to here ... */
	bool not_zero;	 /* ... or part of it does not */
};

/* libnbd's extent callback: entries are (length, flags) pairs, nr_entries counts the
 * numbers. Runs inside libnbd with the handle locked: no nbd_* calls here. */
static int extent_cb(void *data, const char *context, uint64_t offset, uint32_t *entries,
		     size_t nr_entries, int *error)
{
	struct zeros *z = data;

	(void)offset;
	(void)error;
	if (strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
		return 0; /* a context not asked for */
	for (size_t i = 0; i + 1 < nr_entries && !z->not_zero; i += 2) {
		if (entries[i] == 0)
			continue; /* describes nothing */
		if (!(entries[i + 1] & LIBNBD_STATE_ZERO))
			z->not_zero = true;
		else
			z->zero_to += entries[i];
	}
	return 0;
}

int nbd_conn_zero(struct nbd_conn *c, int64_t off, size_t len, struct kerr *err)
{
	int64_t end = off + (int64_t)len;

	if (!c->sparse)
		return 0;
	if (len > UINT32_MAX || off < 0 || end > c->size)
		return err_set(err, EINVAL,
			       "nbd: block status of %zu bytes at %lld is out of bounds", len,
			       (long long)off);
	/* The server may describe less than was asked: ask again from where it stopped. */
	for (int round = 0; off < end && round < NBD_STATUS_ROUNDS; round++) {
		struct zeros z = {.zero_to = off};
		char what[64];
		int64_t cookie;

		snprintf(what, sizeof(what), "block status at %lld", (long long)off);
		if (conn_usable(c, what, err) < 0)
			return -1;
		cookie = nbd_aio_block_status(
			c->h, (uint64_t)(end - off), (uint64_t)off,
			(nbd_extent_callback){.callback = extent_cb, .user_data = &z},
			NBD_NULL_COMPLETION, 0);
		if (cookie < 0)
			return nbd_err(err, what);
		if (wait_done(c, cookie, what, err) < 0)
			return -1;
		if (z.not_zero)
			return 0;
		if (z.zero_to <= off)
			return err_set(err, EPROTO, "nbd: %s described nothing", what);
		off = z.zero_to;
	}
	return off >= end ? 1 : 0;
}

void nbd_conn_close(struct nbd_conn *c)
{
	if (c == NULL)
		return;
	/* Best effort, bounded (nbd_shutdown() would wait for the server without end): the
	 * server drops the connection either way, and nbd_close() closes our end. */
	if (!c->broken && nbd_aio_disconnect(c->h, 0) == 0)
		while (!nbd_aio_is_closed(c->h) && !nbd_aio_is_dead(c->h) &&
		       nbd_poll(c->h, NBD_BYE_MS) > 0)
			;
	nbd_close(c->h);
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
