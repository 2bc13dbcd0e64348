/*
 * chunkstore.c - content-addressed, zstd-compressed chunks and backup manifests in a
 * directory (chunkstore.h says the layout and that all of this runs off the loop).
 */
#include "json.h"
#include "chunkstore.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "log.h"
#include "util.h"

static int mkdir_one(const char *path, struct kerr *err)
{
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return err_set(err, errno, "cannot make %s: %s", path, strerror(errno));
	return 0;
}

/*
 * Make the store's directories. The root's parents are made too: a store is named
 * by a path under the shared pool that the first backup brings into being.
 */
int chunkstore_init(const char *root, struct kerr *err)
{
	static const char *const subdirs[] = {"chunks", "backups", "tmp"};
	char path[PATH_MAX];
	size_t len = strlen(root);

	if (len == 0 || len >= sizeof(path) - 16)
		return err_set(err, EINVAL, "store path '%.64s' is empty or too long", root);
	snprintf(path, sizeof(path), "%s", root);
	for (size_t i = 1; i < len; i++) {
		if (path[i] != '/')
			continue;
		path[i] = '\0';
		if (mkdir_one(path, err) < 0)
			return -1;
		path[i] = '/';
	}
	if (mkdir_one(path, err) < 0)
		return -1;
	for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
		snprintf(path, sizeof(path), "%s/%s", root, subdirs[i]);
		if (mkdir_one(path, err) < 0)
			return -1;
	}
	/* The fan-out directories up front: a chunk write then never needs a mkdir. */
	for (int i = 0; i < 256; i++) {
		snprintf(path, sizeof(path), "%s/chunks/%02x", root, i);
		if (mkdir_one(path, err) < 0)
			return -1;
	}
	return 0;
}

/* The zero chunks of every chunk size a manifest of this store may have. */
static const struct {
	size_t len;
	const char *hex;
} zero_chunks[] = {
	{CHUNKSTORE_CHUNK_SIZE, CHUNKSTORE_ZERO_HEX},
	{1024 * 1024, "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58"},
};

size_t chunkstore_zero_len(const char *hex)
{
	for (size_t i = 0; i < ARRAY_SIZE(zero_chunks); i++)
		if (!strcmp(hex, zero_chunks[i].hex))
			return zero_chunks[i].len;
	return 0;
}

int chunkstore_parent_check(struct json_object *parent, char *why, size_t len)
{
	int64_t size = json_object_get_int64(json_object_object_get(parent, "chunk_size"));

	if (size == CHUNKSTORE_CHUNK_SIZE)
		return 0;
	snprintf(why, len,
		 "the parent backup's chunks are of %lld bytes, this agent's of %d: a full "
		 "backup starts a chain of the new size",
		 (long long)size, CHUNKSTORE_CHUNK_SIZE);
	return -1;
}

void chunkstore_chunk_path(const char *root, const char *hex, char *out, size_t len)
{
	snprintf(out, len, "%s/chunks/%.2s/%s", root, hex, hex);
}

static void sha256_hex(const void *data, size_t len, char *hex)
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	hex_encode(md, sizeof(md), hex);
}

/*
 * O_DIRECT wants the buffer, the offset and the length aligned to the device's logical
 * block: 4096 covers every disk in use (512 and 4096).
 */
#define CHUNK_ALIGN 4096

/* Write all of buf to fd at off; -errno on failure. */
static int pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		p += n;
		off += n;
		len -= (size_t)n;
	}
	return 0;
}

void chunkstore_writer_init(struct chunkstore_writer *w)
{
	w->cctx = ZSTD_createCCtx();
	if (w->cctx == NULL)
		fatalx("out of memory for a zstd context");
	w->zcap = (ZSTD_compressBound(CHUNKSTORE_CHUNK_SIZE) + CHUNK_ALIGN - 1) &
		  ~(size_t)(CHUNK_ALIGN - 1);
	if (posix_memalign(&w->zbuf, CHUNK_ALIGN, w->zcap) != 0)
		fatalx("out of memory for a chunk buffer");
	w->buffered = false;
}

void chunkstore_writer_free(struct chunkstore_writer *w)
{
	ZSTD_freeCCtx(w->cctx);
	free(w->zbuf);
	w->cctx = w->zbuf = NULL;
}

int chunkstore_put(const char *root, const void *data, size_t len, char *hex, uint64_t *written,
		   struct kerr *err)
{
	struct chunkstore_writer w;
	int ret;

	chunkstore_writer_init(&w);
	ret = chunkstore_put_with(root, &w, data, len, hex, written, err);
	chunkstore_writer_free(&w);
	return ret;
}

/*
 * The chunk's plain bytes as the store keeps them, into w->zbuf: a zstd frame. This
 * is the one place a further transform of a chunk's stored bytes goes (after the
 * compression, which needs the plain ones). *zlen gets the encoded length.
 */
static int chunk_encode(struct chunkstore_writer *w, const char *hex, const void *data, size_t len,
			size_t *zlen, struct kerr *err)
{
	size_t n = ZSTD_compressCCtx(w->cctx, w->zbuf, w->zcap, data, len, CHUNKSTORE_ZSTD_LEVEL);

	if (ZSTD_isError(n))
		return err_set(err, EIO, "chunk %.12s: zstd: %s", hex, ZSTD_getErrorName(n));
	*zlen = n;
	return 0;
}

/* A new chunk file, its fan-out directory made if an older store lacks it; -errno. */
static int chunk_file_open(const char *root, const char *hex, const char *tmp, bool direct)
{
	int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct ? O_DIRECT : 0);
	int fd = open(tmp, flags, 0644);
	char dir[PATH_MAX];
	struct kerr err;

	if (fd < 0 && errno == ENOENT) {
		snprintf(dir, sizeof(dir), "%s/chunks/%.2s", root, hex);
		if (mkdir_one(dir, &err) < 0)
			return -err.code;
		fd = open(tmp, flags, 0644);
	}
	return fd < 0 ? -errno : fd;
}

/*
 * Write w->zbuf's len encoded bytes as the new file tmp: the aligned head with
 * O_DIRECT (no copy into the page cache, no writeback left for the flush), the tail
 * of less than a block through the cache (chunkstore_sync writes it). A file system
 * that refuses O_DIRECT (tmpfs before Linux 6.6, or a larger block) gets every later
 * chunk of this writer buffered. Returns 0 or -errno; tmp may exist after a failure.
 */
static int chunk_file_write(struct chunkstore_writer *w, const char *root, const char *hex,
			    const char *tmp, size_t len)
{
	size_t head = w->buffered ? 0 : len & ~(size_t)(CHUNK_ALIGN - 1);
	int fd = chunk_file_open(root, hex, tmp, head > 0);
	int ret = 0;

	if (fd == -EINVAL && head > 0) {
		w->buffered = true;
		head = 0;
		fd = chunk_file_open(root, hex, tmp, false);
	}
	if (fd < 0)
		return fd;
	if (head > 0) {
		ret = pwrite_all(fd, w->zbuf, head, 0);
		if (ret == -EINVAL) {
			w->buffered = true;
			head = 0;
			ret = 0;
		}
	}
	/* The rest through the page cache: the same file, O_DIRECT cleared. */
	if (ret == 0 && head > 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_DIRECT) < 0)
		ret = -errno;
	if (ret == 0)
		ret = pwrite_all(fd, (const char *)w->zbuf + head, len - head, (off_t)head);
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	return ret;
}

int chunkstore_put_with(const char *root, struct chunkstore_writer *w, const void *data, size_t len,
			char *hex, uint64_t *written, struct kerr *err)
{
	char path[PATH_MAX], tmp[PATH_MAX + 32];
	size_t zlen;
	struct stat sb;
	int ret;

	*written = 0;
	if (len > CHUNKSTORE_CHUNK_SIZE)
		return err_set(err, EINVAL, "a chunk of %zu bytes is over the chunk size", len);
	sha256_hex(data, len, hex);
	chunkstore_chunk_path(root, hex, path, sizeof(path));
	if (stat(path, &sb) == 0 && sb.st_size > 0)
		return 0; /* dedup: this content is stored already */
	if (chunk_encode(w, hex, data, len, &zlen, err) < 0)
		return -1;
	/* A unique temporary name: two writers of one chunk never share a file. */
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d.%llx", path, (int)getpid(),
		 (unsigned long long)now_us() ^ (unsigned long long)(uintptr_t)&zlen);
	ret = chunk_file_write(w, root, hex, tmp, zlen);
	if (ret == 0 && rename(tmp, path) < 0)
		ret = -errno;
	if (ret < 0) {
		unlink(tmp);
		return err_set(err, -ret, "cannot write chunk %.12s in %s: %s", hex, root,
			       strerror(-ret));
	}
	*written = zlen;
	return 0;
}

/* Read a whole small file into a new buffer. Returns 0 or -errno. */
static int file_read(const char *path, char **out, size_t *outlen)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ char *buf = NULL;
	size_t len = 0, cap = 0;
	struct stat sb;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &sb) < 0)
		return -errno;
	cap = (size_t)sb.st_size + 1;
	buf = xmalloc(cap);
	for (;;) {
		ssize_t n;

		if (len + 1 >= cap) {
			cap *= 2;
			buf = xrealloc(buf, cap);
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	*out = STEAL_POINTER(&buf);
	*outlen = len;
	return 0;
}

int chunkstore_get(const char *root, const char *hex, void *buf, size_t cap, size_t *len,
		   struct kerr *err)
{
	char path[PATH_MAX], got[CHUNKSTORE_HEX_LEN + 1];
	_cleanup_free_ char *z = NULL;
	size_t zlen, plain;
	int ret;

	if (strlen(hex) != CHUNKSTORE_HEX_LEN ||
	    strspn(hex, "0123456789abcdef") != CHUNKSTORE_HEX_LEN)
		return err_set(err, EINVAL, "'%.70s' is not a chunk name", hex);
	/* A zero chunk's content is known from its name: nothing to read or check. */
	plain = chunkstore_zero_len(hex);
	if (plain > 0 && cap >= plain) {
		memset(buf, 0, plain);
		*len = plain;
		return 0;
	}
	chunkstore_chunk_path(root, hex, path, sizeof(path));
	ret = file_read(path, &z, &zlen);
	if (ret < 0)
		return err_set(err, -ret, "chunk %s: %s", hex,
			       ret == -ENOENT ? "missing" : strerror(-ret));
	plain = ZSTD_decompress(buf, cap, z, zlen);
	if (ZSTD_isError(plain))
		return err_set(err, EBADMSG, "chunk %s: corrupt (%s)", hex,
			       ZSTD_getErrorName(plain));
	sha256_hex(buf, plain, got);
	if (strcmp(got, hex) != 0)
		return err_set(err, EBADMSG, "chunk %s: corrupt (its content hashes to %.12s...)",
			       hex, got);
	*len = plain;
	return 0;
}

int chunkstore_list_sum(struct json_object *chunks, int64_t size, int64_t chunk_size, char *hex,
			struct kerr *err)
{
	size_t n = json_object_is_type(chunks, json_type_array) ? json_array_len(chunks) : 0;
	EVP_MD_CTX *ctx;
	unsigned char md[32];

	if (!json_object_is_type(chunks, json_type_array) || size < 0 || chunk_size <= 0 ||
	    (int64_t)n != (size + chunk_size - 1) / chunk_size)
		return err_set(err, EBADMSG, "the chunk list does not fit a disk of %lld bytes",
			       (long long)size);
	ctx = EVP_MD_CTX_new();
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (size_t c = 0; c < n; c++) {
		const char *name = json_object_get_string(json_object_array_get_idx(chunks, c));
		int64_t left = size - (int64_t)c * chunk_size;
		uint64_t len = (uint64_t)(left < chunk_size ? left : chunk_size);
		unsigned char rec[32 + 8];

		if (name == NULL || strlen(name) != CHUNKSTORE_HEX_LEN ||
		    hex_decode(name, rec, 32) < 0) {
			EVP_MD_CTX_free(ctx);
			return err_set(err, EBADMSG, "chunk %zu: '%.70s' is not a chunk name", c,
				       name ? name : "");
		}
		for (int i = 0; i < 8; i++)
			rec[32 + i] = (unsigned char)(len >> (56 - 8 * i));
		EVP_DigestUpdate(ctx, rec, sizeof(rec));
	}
	EVP_DigestFinal_ex(ctx, md, NULL);
	EVP_MD_CTX_free(ctx);
	hex_encode(md, sizeof(md), hex);
	return 0;
}

int chunkstore_disk_sum(struct json_object *manifest, struct json_object *disk, char *hex,
			struct kerr *err)
{
	int64_t version = json_object_get_int64(json_object_object_get(manifest, "version"));
	int64_t chunk_size = json_object_get_int64(json_object_object_get(manifest, "chunk_size"));
	struct json_object *size;

	if (version <= CHUNKSTORE_SUM_WHOLE_DISK)
		return 1;
	if (!json_object_object_get_ex(disk, "virtual_size", &size))
		return err_set(err, EBADMSG, "the manifest's disk entry has no virtual_size");
	return chunkstore_list_sum(json_object_object_get(disk, "chunks"),
				   json_object_get_int64(size), chunk_size, hex, err);
}

int chunkstore_sync(const char *root, struct kerr *err)
{
	_cleanup_close_ int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || syncfs(fd) < 0)
		return err_set(err, errno, "cannot flush the store %s: %s", root, strerror(errno));
	return 0;
}

static int manifest_path(const char *root, const char *id, char *out, size_t len, struct kerr *err)
{
	/* The id becomes a file name: hold it to a plain shape. */
	if (id[0] == '\0' || strlen(id) > 64 ||
	    strspn(id, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(id))
		return err_set(err, EINVAL, "'%.64s' is not a backup id", id);
	snprintf(out, len, "%s/backups/%s.json", root, id);
	return 0;
}

int chunkstore_manifest_write(const char *root, const char *id, struct json_object *manifest,
			      struct kerr *err)
{
	char path[PATH_MAX];
	const char *text;
	int ret;

	if (manifest_path(root, id, path, sizeof(path), err) < 0)
		return -1;
	text = json_object_to_json_string_ext(manifest, JSON_C_TO_STRING_PLAIN);
	ret = file_write_atomic(path, text, strlen(text), 0644);
	if (ret < 0)
		return err_set(err, -ret, "cannot write manifest %s: %s", path, strerror(-ret));
	return 0;
}

int chunkstore_manifest_read(const char *root, const char *id, struct json_object **out,
			     struct kerr *err)
{
	char path[PATH_MAX];
	_cleanup_free_ char *text = NULL;
	struct json_object *m;
	size_t len;
	int ret;

	if (manifest_path(root, id, path, sizeof(path), err) < 0)
		return -1;
	ret = file_read(path, &text, &len);
	if (ret < 0)
		return err_set(err, -ret, "cannot read manifest %s: %s", path, strerror(-ret));
	m = json_tokener_parse(text);
	if (m == NULL || !json_object_is_type(m, json_type_object)) {
		json_object_put(m);
		return err_set(err, EBADMSG, "manifest %s is not a JSON object", path);
	}
	*out = m;
	return 0;
}

int chunkstore_verify(const char *root, struct json_object *manifest, struct json_object **bad,
		      struct kerr *err)
{
	struct json_object *disks = json_object_object_get(manifest, "disks");
	_cleanup_free_ void *buf = xmalloc(CHUNKSTORE_CHUNK_SIZE);
	int64_t chunk_size = json_object_get_int64(json_object_object_get(manifest, "chunk_size"));
	int nbad = 0;

	*bad = NULL;
	if (!json_object_is_type(disks, json_type_array) || chunk_size <= 0 ||
	    chunk_size > CHUNKSTORE_CHUNK_SIZE)
		return err_set(err, EBADMSG, "the manifest has no disks or a bad chunk_size");
	for (size_t d = 0; d < json_array_len(disks); d++) {
		struct json_object *disk = json_object_array_get_idx(disks, d);
		struct json_object *chunks = json_object_object_get(disk, "chunks");
		const char *name = json_object_get_string(json_object_object_get(disk, "name"));
		char sum[CHUNKSTORE_HEX_LEN + 1];
		struct kerr serr;
		const char *want;
		int ret;

		if (!json_object_is_type(chunks, json_type_array))
			return err_set(err, EBADMSG, "disk %zu of the manifest has no chunks", d);
		for (size_t c = 0; c < json_array_len(chunks); c++) {
			const char *hex =
				json_object_get_string(json_object_array_get_idx(chunks, c));
			struct json_object *b;
			struct kerr cerr;
			size_t len;

			if (chunkstore_get(root, hex ? hex : "", buf, CHUNKSTORE_CHUNK_SIZE, &len,
					   &cerr) == 0)
				continue;
			if (*bad == NULL)
				*bad = json_object_new_array();
			b = json_object_new_object();
			json_object_object_add(b, "disk", json_object_new_string(name ? name : ""));
			json_object_object_add(b, "offset",
					       json_object_new_int64((int64_t)c * chunk_size));
			json_object_object_add(b, "chunk", json_object_new_string(hex ? hex : ""));
			json_object_object_add(b, "error", json_object_new_string(cerr.msg));
			json_object_array_add(*bad, b);
			nbad++;
		}
		/* Version 2: the disk's checksum must still be its chunk list's (after the
		 * chunks, so a bad chunk is named first). */
		ret = chunkstore_disk_sum(manifest, disk, sum, &serr);
		want = json_object_get_string(json_object_object_get(disk, "sha256"));
		if (ret < 0 || (ret == 0 && strcmp(sum, want ? want : "") != 0)) {
			struct json_object *b = json_object_new_object();

			if (*bad == NULL)
				*bad = json_object_new_array();
			json_object_object_add(b, "disk", json_object_new_string(name ? name : ""));
			json_object_object_add(b, "offset", json_object_new_int64(-1));
			json_object_object_add(b, "chunk", json_object_new_string(""));
			json_object_object_add(
				b, "error",
				json_object_new_string(ret < 0 ? serr.msg
							       : "the disk's checksum is "
								 "not its chunk list's"));
			json_object_array_add(*bad, b);
			nbad++;
		}
	}
	return nbad;
}
