/*
 * chunkstore.c - content-addressed, zstd-compressed chunks and backup manifests in a
 * directory (chunkstore.h says the layout and that all of this runs off the loop).
 */
#include "json.h"
#include "chunkstore.h"
#include "chunkcrypt.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "log.h"
#include "util.h"

/*
 * path made with mode whatever the umask (systemd gives the agent 0077). Only what a
 * running VM's QEMU, under its own uid, must pass to open its backup's work files in
 * STORE/tmp/ID/ is searchable by others, and none of it listable: the store's root, its
 * tmp/ and the parents made here are 0711; chunks/ and backups/ stay 0700, so no
 * other uid reads a manifest (a VM's spec, cloud-init secrets included) or confirms a
 * chunk's content by its name. A directory that was there and that the agent owns
 * keeps its mode, but for: DIR_PASS, a root or tmp/ others cannot search (a store made
 * under umask 0077 before) gets the search bits QEMU needs (g+x, o+x); DIR_PRIVATE,
 * chunks/ or backups/ that others may enter or read (a store made under umask 022
 * before, 0755) loses the others' bits (a group the operator gave stays: the agent
 * and the controller are root, and QEMU never goes there).
 */
enum dir_kind {
	DIR_KEEP,
	DIR_PASS,
	DIR_PRIVATE
};

static int mkdir_one(const char *path, mode_t mode, enum dir_kind kind, struct kerr *err)
{
	struct stat sb;

	if (mkdir(path, mode) < 0) {
		if (errno != EEXIST)
			return err_set(err, errno, "cannot make %s: %s", path, strerror(errno));
		if (kind == DIR_KEEP || lstat(path, &sb) < 0 || !S_ISDIR(sb.st_mode) ||
		    sb.st_uid != geteuid())
			return 0;
		if (kind == DIR_PASS && (sb.st_mode & 0011) != 0011)
			mode = (sb.st_mode & 07777) | 0011;
		else if (kind == DIR_PRIVATE && (sb.st_mode & 0007) != 0)
			mode = sb.st_mode & 07770;
		else
			return 0;
	}
	if (chmod(path, mode) < 0)
		return err_set(err, errno, "cannot set the mode of %s: %s", path, strerror(errno));
	return 0;
}

/*
 * Make the store's directories. The root's parents are made too: a store is named
 * by a path under the shared pool that the first backup brings into being.
 */
int chunkstore_init(const char *root, struct kerr *err)
{
	static const struct {
		const char *name;
		mode_t mode;
	} subdirs[] = {{"chunks", 0700}, {"backups", 0700}, {"tmp", 0711}};
	char path[PATH_MAX];
	size_t len = strlen(root);

	if (len == 0 || len >= sizeof(path) - 16)
		return err_set(err, EINVAL, "store path '%.64s' is empty or too long", root);
	snprintf(path, sizeof(path), "%s", root);
	for (size_t i = 1; i < len; i++) {
		if (path[i] != '/')
			continue;
		path[i] = '\0';
		if (mkdir_one(path, 0711, DIR_KEEP, err) < 0)
			return -1;
		path[i] = '/';
	}
	if (mkdir_one(path, 0711, DIR_PASS, err) < 0)
		return -1;
	for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
		snprintf(path, sizeof(path), "%s/%s", root, subdirs[i].name);
		if (mkdir_one(path, subdirs[i].mode,
			      subdirs[i].mode == 0711 ? DIR_PASS : DIR_PRIVATE, err) < 0)
			return -1;
	}
	/* The 256 fan-out directories are made as chunks first need them
	 * (chunk_file_open), by the writing threads side by side: made here up front they
	 * were 512 calls (mkdir, chmod) in the prepare step of a store's first backup
	 * (prepare_ms 24-54 on this busy 2-CPU host, 1-4 for a store that had them), and
	 * 256 refused mkdirs in every later backup's. */
	return 0;
}

/*
 * O_DIRECT wants the buffer, the offset and the length aligned to the device's logical
 * block: 4096 covers every disk in use (512 and 4096).
 */
#define CHUNK_ALIGN 4096

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

/* A chunk's name: SHA-256 of its content, or in an encrypted store its keyed digest. */
static void chunk_name(const struct chunkcrypt_key *key, const void *data, size_t len, char *hex)
{
	if (key)
		chunkcrypt_name(key, data, len, hex);
	else
		sha256_hex(data, len, hex);
}

const char *chunkstore_zero_name(const struct chunkcrypt_key *key)
{
	return key ? key->zero_name : CHUNKSTORE_ZERO_HEX;
}

/*
 * The write path's encryption step: in an encrypted store, seal the compressed chunk
 * *data (*len bytes) into w->ebuf and point *data there. A plain store: nothing.
 */
static int chunk_seal(struct chunkstore_writer *w, const char *hex, const void **data, size_t *len,
		      struct kerr *err)
{
	if (w->key == NULL)
		return 0;
	/* Aligned as zbuf is: chunk_file_write hands it to O_DIRECT. */
	if (w->ebuf == NULL && posix_memalign(&w->ebuf, CHUNK_ALIGN, w->zcap + CHUNK_ALIGN) != 0)
		fatalx("out of memory for a chunk buffer");
	if (chunkcrypt_seal(w->key, hex, *data, *len, w->ebuf, w->zcap + CHUNK_ALIGN, len, err) < 0)
		return err_prefix(err, "chunk: ");
	*data = w->ebuf;
	return 0;
}

/*
 * The read path's decryption step: in an encrypted store, open the sealed chunk *z
 * (*zlen bytes) in place (the plain text is shorter); the GCM tag is checked here.
 */
static int chunk_open(const struct chunkcrypt_key *key, const char *hex, char *z, size_t *zlen,
		      struct kerr *err)
{
	_cleanup_free_ char *plain = NULL;
	struct kerr cerr;
	size_t len;

	if (key == NULL)
		return 0;
	plain = xmalloc(*zlen ? *zlen : 1);
	if (chunkcrypt_open(key, hex, z, *zlen, plain, *zlen, &len, &cerr) < 0)
		return err_set(err, EBADMSG, "chunk %s: corrupt (%s)", hex, cerr.msg);
	memcpy(z, plain, len);
	*zlen = len;
	return 0;
}

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

void *chunkstore_buf_alloc(size_t len)
{
	void *p;

	/* Aligned to a huge page (which also suits O_DIRECT), and asked to be backed by
	 * huge pages where THP is "madvise": a 4 MiB chunk buffer then faults in as two
	 * pages, not 1,024. The first touch of each 4 KiB page of a backup's fresh
	 * buffers (some 60 MiB, 15,000 faults per full) was the largest kernel cost in a
	 * full backup's profile on this VM (a fault is dear under a hypervisor), and the
	 * hashing and copies run with fewer TLB misses: bench/chunkpipe_bench on 512 MiB
	 * of random data took 0.65-0.83 s of CPU against 0.85-1.02 s with small pages, 6
	 * of 6 paired runs less. */
	if (posix_memalign(&p, CHUNKSTORE_HUGE_ALIGN, len) != 0)
		fatalx("out of memory for a chunk buffer");
	madvise(p, len, MADV_HUGEPAGE); /* a hint: without THP, small pages as before */
	return p;
}

void chunkstore_writer_init(struct chunkstore_writer *w)
{
	w->cctx = ZSTD_createCCtx();
	if (w->cctx == NULL)
		fatalx("out of memory for a zstd context");
	w->zcap = (ZSTD_compressBound(CHUNKSTORE_CHUNK_SIZE) + CHUNK_ALIGN - 1) &
		  ~(size_t)(CHUNK_ALIGN - 1);
	w->zbuf = chunkstore_buf_alloc(w->zcap);
	w->buffered = false;
	w->key = NULL;
	w->ebuf = NULL;
	w->raw_chunks = 0;
}

void chunkstore_writer_free(struct chunkstore_writer *w)
{
	ZSTD_freeCCtx(w->cctx);
	free(w->zbuf);
	free(w->ebuf);
	w->cctx = w->zbuf = w->ebuf = NULL;
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

/* The probe: CHUNK_PROBE_SAMPLES slices of CHUNK_PROBE_LEN bytes spread over the chunk. */
#define CHUNK_PROBE_SAMPLES 8
#define CHUNK_PROBE_LEN	    8192
/* zstd frame format (RFC 8878): what a frame of raw blocks is made of. */
#define RAWFRAME_MAGIC	    0xFD2FB528u
#define RAWFRAME_BLOCK_MAX  (128 * 1024) /* Block_Maximum_Size */
#define RAWFRAME_HEAD	    9		 /* magic, descriptor, 4-byte content size */
#define RAWFRAME_BLOCK_HEAD 3

bool chunkstore_probe_incompressible(void *cctx, const void *data, size_t len)
{
	size_t in = 0, got = 0;

	if (len < CHUNK_PROBE_SAMPLES * CHUNK_PROBE_LEN * 4)
		return false; /* small: compressing it all costs little */
	for (size_t i = 0; i < CHUNK_PROBE_SAMPLES; i++) {
		/* Evenly spread, the last one ending at the chunk's end. */
		size_t off = (len - CHUNK_PROBE_LEN) / (CHUNK_PROBE_SAMPLES - 1) * i;
		unsigned char buf[ZSTD_COMPRESSBOUND(CHUNK_PROBE_LEN)];
		size_t n = ZSTD_compressCCtx(cctx, buf, sizeof(buf), (const char *)data + off,
					     CHUNK_PROBE_LEN, CHUNKSTORE_ZSTD_LEVEL);

		if (ZSTD_isError(n))
			return false; /* let the real compression say what is wrong */
		in += CHUNK_PROBE_LEN;
		got += n;
	}
	return got * 100 >= in * CHUNKSTORE_PROBE_PERCENT;
}

size_t chunkstore_raw_frame(void *dst, size_t cap, const void *data, size_t len)
{
	size_t blocks = len ? (len + RAWFRAME_BLOCK_MAX - 1) / RAWFRAME_BLOCK_MAX : 1;
	unsigned char *o = dst;
	size_t at = 0, pos;

	if (len > UINT32_MAX || cap < RAWFRAME_HEAD + blocks * RAWFRAME_BLOCK_HEAD + len)
		return 0;
	for (int i = 0; i < 4; i++)
		o[i] = (unsigned char)(RAWFRAME_MAGIC >> (8 * i));
	/* Frame_Header_Descriptor: Frame_Content_Size_flag 2 (4 bytes), Single_Segment
	 * (the window is the content: no Window_Descriptor), no checksum, no dictionary. */
	o[4] = (2 << 6) | (1 << 5);
	for (int i = 0; i < 4; i++)
		o[5 + i] = (unsigned char)((uint32_t)len >> (8 * i));
	pos = RAWFRAME_HEAD;
	do {
		size_t n = len - at < RAWFRAME_BLOCK_MAX ? len - at : RAWFRAME_BLOCK_MAX;
		/* Block_Header: Last_Block (bit 0), Block_Type 0 = Raw (bits 1-2), Block_Size. */
		uint32_t head = (uint32_t)(n << 3) | (at + n == len ? 1u : 0u);

		o[pos] = (unsigned char)head;
		o[pos + 1] = (unsigned char)(head >> 8);
		o[pos + 2] = (unsigned char)(head >> 16);
		memcpy(o + pos + RAWFRAME_BLOCK_HEAD, (const char *)data + at, n);
		pos += RAWFRAME_BLOCK_HEAD + n;
		at += n;
	} while (at < len);
	return pos;
}

/*
 * The chunk's plain bytes as the store keeps them: a zstd frame in w->zbuf (of raw
 * blocks when the probe finds the chunk incompressible), sealed into w->ebuf in an
 * encrypted store (chunk_seal). *out and *zlen get the bytes to write.
 */
static int chunk_encode(struct chunkstore_writer *w, const char *hex, const void *data, size_t len,
			const void **out, size_t *zlen, struct kerr *err)
{
	size_t n = 0;

	if (chunkstore_probe_incompressible(w->cctx, data, len))
		n = chunkstore_raw_frame(w->zbuf, w->zcap, data, len);
	if (n > 0)
		w->raw_chunks++;
	else
		n = ZSTD_compressCCtx(w->cctx, w->zbuf, w->zcap, data, len, CHUNKSTORE_ZSTD_LEVEL);
	if (ZSTD_isError(n))
		return err_set(err, EIO, "chunk %.12s: zstd: %s", hex, ZSTD_getErrorName(n));
	*out = w->zbuf;
	*zlen = n;
	return chunk_seal(w, hex, out, zlen, err);
}

/* A new chunk file, its fan-out directory made at its first chunk; -errno. */
static int chunk_file_open(const char *root, const char *hex, const char *tmp, bool direct)
{
	int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct ? O_DIRECT : 0);
	int fd = open(tmp, flags, 0644);
	char dir[PATH_MAX];
	struct kerr err;

	if (fd < 0 && errno == ENOENT) {
		snprintf(dir, sizeof(dir), "%s/chunks/%.2s", root, hex);
		if (mkdir_one(dir, 0700, DIR_KEEP, &err) < 0)
			return -err.code;
		fd = open(tmp, flags, 0644);
	}
	return fd < 0 ? -errno : fd;
}

/*
 * Write buf's len encoded bytes (aligned: w->zbuf or w->ebuf) as the new file tmp: the aligned head
 * with O_DIRECT (no copy into the page cache, no writeback left for the flush), the tail of less
 * than a block through the cache (chunkstore_sync writes it). A file system that refuses O_DIRECT
 * (tmpfs before Linux 6.6, or a larger block) gets every later chunk of this writer buffered.
 * Returns 0 or -errno; tmp may exist after a failure.
 */
static int chunk_file_write(struct chunkstore_writer *w, const char *root, const char *hex,
			    const char *tmp, const void *buf, size_t len)
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
		ret = pwrite_all(fd, buf, head, 0);
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
		ret = pwrite_all(fd, (const char *)buf + head, len - head, (off_t)head);
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	return ret;
}

int chunkstore_put_with(const char *root, struct chunkstore_writer *w, const void *data, size_t len,
			char *hex, uint64_t *written, struct kerr *err)
{
	char path[PATH_MAX], tmp[PATH_MAX + 32];
	const void *out = NULL;
	size_t zlen;
	struct stat sb;
	int ret;

	*written = 0;
	if (len > CHUNKSTORE_CHUNK_SIZE)
		return err_set(err, EINVAL, "a chunk of %zu bytes is over the chunk size", len);
	chunk_name(w->key, data, len, hex);
	chunkstore_chunk_path(root, hex, path, sizeof(path));
	if (stat(path, &sb) == 0 && sb.st_size > 0)
		return 0; /* dedup: this content is stored already */
	if (chunk_encode(w, hex, data, len, &out, &zlen, err) < 0)
		return -1;
	/* A unique temporary name: two writers of one chunk never share a file. */
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d.%llx", path, (int)getpid(),
		 (unsigned long long)now_us() ^ (unsigned long long)(uintptr_t)&zlen);
	ret = chunk_file_write(w, root, hex, tmp, out, zlen);
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
	return chunkstore_get_with(root, NULL, hex, buf, cap, len, err);
}

int chunkstore_get_with(const char *root, const struct chunkcrypt_key *key, const char *hex,
			void *buf, size_t cap, size_t *len, struct kerr *err)
{
	char path[PATH_MAX], got[CHUNKSTORE_HEX_LEN + 1];
	_cleanup_free_ char *z = NULL;
	size_t zlen, plain;
	int ret;

	if (strlen(hex) != CHUNKSTORE_HEX_LEN ||
	    strspn(hex, "0123456789abcdef") != CHUNKSTORE_HEX_LEN)
		return err_set(err, EINVAL, "'%.70s' is not a chunk name", hex);
	/* A zero chunk's content is known from its name: nothing to read or check. */
	plain = key ? (strcmp(hex, key->zero_name) ? 0 : CHUNKSTORE_CHUNK_SIZE)
		    : chunkstore_zero_len(hex);
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
	if (chunk_open(key, hex, z, &zlen, err) < 0)
		return -1;
	plain = ZSTD_decompress(buf, cap, z, zlen);
	if (ZSTD_isError(plain))
		return err_set(err, EBADMSG, "chunk %s: corrupt (%s)", hex,
			       ZSTD_getErrorName(plain));
	chunk_name(key, buf, plain, got);
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

int chunkstore_open(const char *root, struct kerr *err)
{
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return err_set(err, errno, "cannot open the store %s: %s", root, strerror(errno));
	return fd;
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
	return chunkstore_manifest_write_with(root, NULL, id, manifest, err);
}

/* Manifest id's file (path): its text (*text, *len; the caller frees) and that text parsed. */
static int manifest_load(const char *root, const char *id, char path[PATH_MAX], char **text,
			 size_t *len, struct json_object **out, struct kerr *err)
{
	struct json_object *m;
	int ret;

	*text = NULL;
	if (manifest_path(root, id, path, PATH_MAX, err) < 0)
		return -1;
	ret = file_read(path, text, len);
	if (ret < 0)
		return err_set(err, -ret, "cannot read manifest %s: %s", path, strerror(-ret));
	m = json_tokener_parse(*text);
	if (m == NULL || !json_object_is_type(m, json_type_object)) {
		json_object_put(m);
		return err_set(err, EBADMSG, "manifest %s is not a JSON object", path);
	}
	*out = m;
	return 0;
}

int chunkstore_manifest_read(const char *root, const char *id, struct json_object **out,
			     struct kerr *err)
{
	_cleanup_free_ char *text = NULL;
	char path[PATH_MAX];
	size_t len;

	return manifest_load(root, id, path, &text, &len, out, err);
}

int chunkstore_verify(const char *root, struct json_object *manifest, struct json_object **bad,
		      struct kerr *err)
{
	return chunkstore_verify_with(root, NULL, manifest, bad, err);
}

int chunkstore_verify_with(const char *root, const struct chunkcrypt_key *key,
			   struct json_object *manifest, struct json_object **bad, struct kerr *err)
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

			if (chunkstore_get_with(root, key, hex ? hex : "", buf,
						CHUNKSTORE_CHUNK_SIZE, &len, &cerr) == 0)
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

/* ---- encrypted stores: the key check and authenticated manifests ---- */

#define ENCRYPTION_FILE "encryption.json"
#define MAC_HEAD	"{\"mac\":\"" /* an authenticated manifest's text starts so */

int chunkstore_key_check(const char *root, const struct chunkcrypt_key *key, bool create,
			 struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", root, ENCRYPTION_FILE), *text = NULL;
	struct json_object *o, *doc;
	const char *check;
	size_t len;
	int ret = file_read(path, &text, &len);

	if (ret == -ENOENT) {
		if (key == NULL || !create)
			return 0;
		doc = json_object_new_object();
		json_object_object_add(doc, "cipher", json_object_new_string("aes-256-gcm"));
		json_object_object_add(doc, "chunk_names", json_object_new_string("hmac-sha256"));
		json_object_object_add(doc, "key_check", json_object_new_string(key->check));
		text = xstrdup(json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN));
		json_object_put(doc);
		ret = file_write_atomic(path, text, strlen(text), 0644);
		if (ret < 0)
			return err_set(err, -ret, "cannot write %s: %s", path, strerror(-ret));
		return 0;
	}
	if (ret < 0)
		return err_set(err, -ret, "cannot read %s: %s", path, strerror(-ret));
	if (key == NULL)
		return err_set(err, EACCES, "store %s is encrypted: its encryption key is needed",
			       root);
	o = json_tokener_parse(text);
	check = json_object_get_string(json_object_object_get(o, "key_check"));
	ret = check && CRYPTO_memcmp(check, key->check, CHUNKCRYPT_HEX_LEN) == 0 &&
	      strlen(check) == CHUNKCRYPT_HEX_LEN;
	json_object_put(o);
	if (!ret)
		return err_set(err, EACCES,
			       "the encryption key is not store %s's (its key check value differs)",
			       root);
	return 0;
}

/* The manifest as written to an encrypted store: a new object sharing manifest's
 * members, its spec sealed. */
static struct json_object *manifest_sealed(const struct chunkcrypt_key *key, const char *id,
					   struct json_object *manifest, struct kerr *err)
{
	struct json_object *out = json_object_new_object();
	_cleanup_free_ char *aad = xasprintf("spec:%s", id), *sealed = NULL, *hex = NULL;
	const char *spec = NULL;
	size_t len = 0;

	json_object_object_foreach(manifest, k, v)
	{
		if (!strcmp(k, "spec")) {
			spec = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
			continue;
		}
		json_object_object_add(out, k, json_object_get(v));
	}
	if (spec) {
		size_t slen = strlen(spec);

		sealed = xmalloc(slen + CHUNKCRYPT_OVERHEAD);
		if (chunkcrypt_seal(key, aad, spec, slen, sealed, slen + CHUNKCRYPT_OVERHEAD, &len,
				    err) < 0) {
			json_object_put(out);
			return NULL;
		}
		hex = xmalloc(2 * len + 1);
		hex_encode((unsigned char *)sealed, len, hex);
		json_object_object_add(out, "spec_sealed", json_object_new_string(hex));
	}
	json_object_object_add(out, "encrypted", json_object_new_boolean(true));
	json_object_object_add(out, "key_check", json_object_new_string(key->check));
	return out;
}

/* The text of manifest as the store keeps it (with key: sealed and MACed) into a new
 * string, and its path in path. NULL with err. */
static char *manifest_text(const char *root, const struct chunkcrypt_key *key, const char *id,
			   struct json_object *manifest, char path[PATH_MAX], struct kerr *err)
{
	char mac[CHUNKCRYPT_HEX_LEN + 1];
	struct json_object *sealed;
	const char *body;
	char *text;

	if (manifest_path(root, id, path, PATH_MAX, err) < 0)
		return NULL;
	if (key == NULL)
		return xstrdup(json_object_to_json_string_ext(manifest, JSON_C_TO_STRING_PLAIN));
	sealed = manifest_sealed(key, id, manifest, err);
	if (sealed == NULL)
		return NULL;
	/* The MAC is over the exact text that follows it, so reading it back needs no
	 * canonical form: {"mac":"HEX", + the text after its opening brace. */
	body = json_object_to_json_string_ext(sealed, JSON_C_TO_STRING_PLAIN);
	chunkcrypt_mac(key, body, strlen(body), mac);
	text = xasprintf(MAC_HEAD "%s\",%s", mac, body + 1);
	json_object_put(sealed);
	return text;
}

int chunkstore_manifest_write_with(const char *root, const struct chunkcrypt_key *key,
				   const char *id, struct json_object *manifest, struct kerr *err)
{
	char path[PATH_MAX];
	_cleanup_free_ char *text = manifest_text(root, key, id, manifest, path, err);
	int ret;

	if (text == NULL)
		return -1;
	ret = file_write_atomic(path, text, strlen(text), 0644);
	if (ret < 0)
		return err_set(err, -ret, "cannot write manifest %s: %s", path, strerror(-ret));
	return 0;
}

/* len bytes of data as the new file path (mode 0644 whatever the umask), fsynced
 * through the fd that wrote them (which sees their own write-back error whoever
 * flushed first). Returns 0 or -errno; path may exist after a failure. */
static int file_write_plain(const char *path, const char *data, size_t len)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int ret;

	if (fd < 0)
		return -errno;
	if (fchmod(fd, 0644) < 0)
		return -errno;
	ret = pwrite_all(fd, data, len, 0);
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	fd = -1;
	return ret;
}

int chunkstore_backup_commit(const char *root, int store_fd, const struct chunkcrypt_key *key,
			     const char *id, struct json_object *manifest, int64_t *flush_ms,
			     struct kerr *err)
{
	char path[PATH_MAX], tmp[PATH_MAX + 32], dir[PATH_MAX];
	_cleanup_free_ char *text = manifest_text(root, key, id, manifest, path, err);
	_cleanup_close_ int dfd = -1;
	int64_t t0 = now_ms();
	int ret;

	if (text == NULL)
		return -1;
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
	ret = file_write_plain(tmp, text, strlen(text));
	if (ret < 0) {
		unlink(tmp);
		return err_set(err, -ret, "cannot write manifest %s: %s", tmp, strerror(-ret));
	}
	/* Every chunk written so far, through the fd opened before the first of them:
	 * syncfs reports a write-back error only once per fd and only if it came after
	 * the fd's open, so one opened here would miss an error another backup's syncfs
	 * saw first. Nothing names the chunks yet. */
	if (syncfs(store_fd) < 0) {
		ret = errno;
		unlink(tmp);
		return err_set(err, ret, "cannot flush the store %s: %s", root, strerror(ret));
	}
	if (flush_ms)
		*flush_ms = now_ms() - t0;
	/* Then the name: the manifest appears whole, after its chunks are durable. */
	snprintf(dir, sizeof(dir), "%s/backups", root);
	if (rename(tmp, path) < 0) {
		ret = -errno;
		unlink(tmp);
		return err_set(err, -ret, "cannot write manifest %s: %s", path, strerror(-ret));
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0) {
		ret = errno;
		unlink(path); /* a failed backup names nothing */
		return err_set(err, ret, "cannot flush %s: %s", dir, strerror(ret));
	}
	return 0;
}

/* The spec of a manifest read with its key back in the clear as "spec". */
static int manifest_spec_open(const struct chunkcrypt_key *key, const char *id,
			      struct json_object *m, struct kerr *err)
{
	const char *hex = json_object_get_string(json_object_object_get(m, "spec_sealed"));
	_cleanup_free_ char *aad = xasprintf("spec:%s", id), *sealed = NULL, *plain = NULL;
	size_t slen, len;
	struct json_object *spec;

	if (hex == NULL)
		return 0;
	slen = strlen(hex) / 2;
	sealed = xmalloc(slen + 1);
	plain = xmalloc(slen + 1);
	if (hex_decode(hex, (unsigned char *)sealed, slen) < 0 ||
	    chunkcrypt_open(key, aad, sealed, slen, plain, slen, &len, err) < 0)
		return err_set(err, EBADMSG, "backup %s: its sealed spec does not open", id);
	plain[len] = '\0';
	spec = json_tokener_parse(plain);
	OPENSSL_cleanse(plain, len);
	if (spec == NULL)
		return err_set(err, EBADMSG, "backup %s: its sealed spec is not JSON", id);
	json_object_object_del(m, "spec_sealed");
	json_object_object_add(m, "spec", spec);
	return 0;
}

int chunkstore_manifest_read_with(const char *root, const struct chunkcrypt_key *key,
				  const char *id, struct json_object **out, struct kerr *err)
{
	char path[PATH_MAX], mac[CHUNKCRYPT_HEX_LEN + 1];
	_cleanup_free_ char *text = NULL;
	size_t head = strlen(MAC_HEAD), len;
	struct json_object *m;
	const char *check;

	if (manifest_load(root, id, path, &text, &len, &m, err) < 0)
		return -1;
	if (key == NULL) {
		if (json_object_object_get(m, "encrypted") == NULL) {
			*out = m;
			return 0;
		}
		json_object_put(m);
		return err_set(err, EACCES,
			       "backup %s is in an encrypted store: its encryption key is needed",
			       id);
	}
	check = json_object_get_string(json_object_object_get(m, "key_check"));
	if (check == NULL || strcmp(check, key->check) != 0) {
		json_object_put(m);
		return err_set(err, EACCES,
			       check ? "the encryption key is not backup %s's (its key check "
				       "value differs)"
				     : "backup %s is not encrypted, yet a key was given",
			       id);
	}
	/* {"mac":"HEX", then the text the MAC covers after a "{" of its own. */
	if (len < head + CHUNKCRYPT_HEX_LEN + 2 || strncmp(text, MAC_HEAD, head) != 0 ||
	    text[head + CHUNKCRYPT_HEX_LEN] != '"' || text[head + CHUNKCRYPT_HEX_LEN + 1] != ',') {
		json_object_put(m);
		return err_set(err, EBADMSG, "manifest %s has no MAC", path);
	}
	text[head + CHUNKCRYPT_HEX_LEN + 1] = '{';
	chunkcrypt_mac(key, text + head + CHUNKCRYPT_HEX_LEN + 1,
		       len - head - CHUNKCRYPT_HEX_LEN - 1, mac);
	if (CRYPTO_memcmp(mac, text + head, CHUNKCRYPT_HEX_LEN) != 0) {
		json_object_put(m);
		return err_set(err, EBADMSG, "manifest %s was changed: its MAC does not match",
			       path);
	}
	json_object_object_del(m, "mac");
	if (manifest_spec_open(key, id, m, err) < 0) {
		json_object_put(m);
		return -1;
	}
	*out = m;
	return 0;
}
