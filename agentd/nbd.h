/*
 * nbd.h - read an export of QEMU's NBD server over a unix socket, for a live VM's full
 * backup (backup_fleece.c reads the point-in-time view of a disk that image fleecing
 * exports, see docs/architecture.md). A thin layer over libnbd (Debian's libnbd-dev),
 * which speaks the protocol: the handshake with structured replies and the
 * "base:allocation" meta context (both optional: a server without them is read with
 * simple replies and no hole is known), reads (holes a structured reply sends read as
 * zeros without crossing the socket) and block status (which ranges read as zeros, so
 * the backup names a zero chunk without reading it, as it does a hole of a file). No
 * TLS: the socket is a unix one in a directory only root and the VM's QEMU user may
 * enter.
 *
 * Blocking, with a timeout (a hung QEMU fails the read rather than hanging the
 * thread): call it from a worker thread, never from the loop. One connection serves
 * one thread.
 */
#ifndef KUMO_NBD_H
#define KUMO_NBD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

struct nbd_conn;
struct chunkpipe_source;

/*
 * Connect to the NBD server on the unix socket path and open export name (read
 * only). server, when > 0, is the pid that must serve it (SO_PEERCRED: who listens on
 * the socket): a path in a directory another uid owns may lead elsewhere. Returns 0
 * with *out (nbd_conn_close() it), or -1 with err: libnbd's reason and errno (an
 * unknown export is ENOENT; EPERM: another server), the export and socket named.
 */
int nbd_conn_open(const char *path, const char *name, pid_t server, struct nbd_conn **out,
		  struct kerr *err);

/* The export's size in bytes. */
int64_t nbd_conn_size(const struct nbd_conn *c);

/* Whether the server answers reads in structured replies and block status (holes). */
bool nbd_conn_sparse(const struct nbd_conn *c);

/*
 * Read len bytes at off into buf (len at most NBD_READ_MAX). Parts the server sends
 * as holes are zeroed. Returns 0 or -1 with err (the first failure: the server's
 * errno, EIO for a broken reply, ETIMEDOUT for none: the connection is then
 * unusable). On failure buf's content is undefined. Sent as requests of 1 MiB, up to
 * 8 in flight, once one read of 2 MiB or more went whole (nbd.c says why: QEMU's
 * server maps a fresh buffer for every large request otherwise).
 */
#define NBD_READ_MAX (32u << 20) /* QEMU's server refuses larger requests */
int nbd_conn_read(struct nbd_conn *c, int64_t off, void *buf, size_t len, struct kerr *err);

/*
 * Whether [off, off + len) reads as zeros, by block status ("base:allocation"'s zero
 * bit) without reading it: 1 yes, 0 no or unknown (no block status), -1 with err.
 */
int nbd_conn_zero(struct nbd_conn *c, int64_t off, size_t len, struct kerr *err);

/* How long a connection waits without progress before it fails (ms; 0 restores the
 * default, 60 s). For tests: the agent never calls it. Not thread-safe: set it before
 * any connection is used. */
void nbd_conn_timeout_set(int ms);

/* The size of a read's requests after the first large one (bytes; 0 restores the
 * default, 1 MiB). For tests, as nbd_conn_timeout_set. */
void nbd_conn_piece_set(size_t bytes);

/* Say goodbye (NBD_CMD_DISC, waiting a bounded time for the server to hang up) and
 * close. NULL is fine. */
void nbd_conn_close(struct nbd_conn *c);

/* Fill src to read the export c (size, read and hole; the rest is the caller's). A
 * block status that fails makes hole() answer false: the chunk is then read. */
void nbd_conn_source(struct nbd_conn *c, struct chunkpipe_source *src);

#endif
