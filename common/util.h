/*
 * util.h - allocation, ownership and small helpers shared by both daemons.
 *
 * Allocation failure is not recoverable in a daemon that owns cluster state, so
 * xmalloc() and friends abort with a message instead of returning NULL.
 */
#ifndef KUMO_UTIL_H
#define KUMO_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline void cleanup_freep(void *p)
{
	free(*(void **)p);
}

static inline void cleanup_closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}

#define _cleanup_free_	  _attr_cleanup_(cleanup_freep)
#define _cleanup_close_	  _attr_cleanup_(cleanup_closep)
#define _attr_cleanup_(f) __attribute__((cleanup(f)))

/* Hand ownership out of a cleanup-managed local: returns the pointer and clears it. */
#define STEAL_POINTER(pp)                                                                          \
	({                                                                                         \
		__typeof__(*(pp)) _stolen = *(pp);                                                 \
		*(pp) = NULL;                                                                      \
		_stolen;                                                                           \
	})

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Wall-clock time in milliseconds and microseconds since the epoch. */
int64_t now_ms(void);
int64_t now_us(void);

/* Fill buf with len bytes from the kernel's CSPRNG; aborts if that is impossible. */
void random_bytes(void *buf, size_t len);

/* Lower-case hex of len bytes into out (which holds 2*len+1). */
void hex_encode(const unsigned char *in, size_t len, char *out);
/* True when all len bytes at p are zero (len 0: true). At memcmp's speed: a byte loop
 * costs as much as SHA-256 of the same bytes. */
bool mem_is_zero(const void *p, size_t len);
/* Decode exactly outlen bytes of hex; returns 0 or -1 on bad input. */
int hex_decode(const char *in, unsigned char *out, size_t outlen);

/* Base64 (RFC 4648, with padding): encode into a new string; decode into a new
 * NUL-terminated buffer with its length, or NULL for malformed input. */
char *base64_encode(const void *data, size_t len);
char *base64_decode(const char *in, size_t *outlen);

/*
 * Write data to path atomically (temporary file, fsync, rename, fsync of the
 * directory) with the given mode. Returns 0 or -errno.
 */
int file_write_atomic(const char *path, const void *data, size_t len, unsigned mode);
/*
 * The same without the two fsyncs: readers see the old or the new file whole, and a
 * crash of the writer leaves one of them, but a power cut may lose the change. Only
 * for files rebuilt before they are needed again after a reboot, or meaningless then
 * (a runtime config written at every start, a pid file). Returns 0 or -errno.
 */
int file_write_replace(const char *path, const void *data, size_t len, unsigned mode);
/*
 * Make what file_write_replace() put at path durable: fsync the file and its
 * directory, as file_write_atomic() would have. Returns 0 or -errno.
 */
int file_sync(const char *path);
/* Read a whole file (at most max bytes) into a NUL-terminated buffer the caller frees. */
int file_read_all(const char *path, size_t max, char **out, size_t *outlen);
/*
 * A secret key of len bytes kept as hex in the file path (mode 0600), read into key;
 * a missing file is made first from random bytes when create is set. Returns 1 made,
 * 0 read, -EINVAL when the file does not hold 2 * len hex digits, -ENOENT when it is
 * missing and create is not set, or another -errno.
 */
int key_file_load(const char *path, unsigned char *key, size_t len, bool create);
/* mkdir -p with mode for each created component. Returns 0 or -errno. */
int mkdir_p(const char *path, unsigned mode);

#endif
