/*
 * layers.c - OCI images on the shared pool, as the container driver reads and writes
 * them: blobs checked against their digest, layers unpacked by our own tar reader,
 * and the writable layer packed back into a layer blob (commit).
 *
 * Everything here runs on libuv's thread pool (ociaction.c queues it): it touches no
 * agent state, only the paths it is given, and reports through a struct kerr.
 *
 * Blobs live at {shared}/oci/blobs/sha256/<hex>. A blob is used only after its
 * SHA-256 matched the digest that named it: manifests and configs are read whole and
 * hashed; a layer is hashed in a first pass before its bytes reach the tar reader, and
 * hashed again while it is unpacked so a blob swapped between the passes is caught.
 * Its uncompressed stream is checked against the config's diff_id too.
 *
 * Unpacking ({local}/oci/layers/<hex>/, once per host): into a temporary directory
 * beside it, renamed into place when complete, so a layer directory that exists is
 * whole. The tar reader takes ustar, GNU long names (L, K) and pax headers (path,
 * linkpath, size, uid, gid, mtime, SCHILY.xattr.*). Safety, for images from anyone:
 *   - an entry with an absolute path or a ".." component refuses the whole layer, with
 *     an error naming the entry;
 *   - every entry is reached by an openat() walk from the layer's root with O_NOFOLLOW,
 *     so nothing is ever written through a symlink (an entry below one is refused);
 *   - hard links must point at an entry already in the layer;
 *   - whiteouts become what overlayfs reads: ".wh.X" a character device 0:0 named X,
 *     ".wh..wh..opq" the xattr trusted.overlay.opaque=y on its directory.
 * Creating device nodes, owners and trusted.* xattrs needs root (CAP_MKNOD, CAP_CHOWN,
 * CAP_SYS_ADMIN): the agent runs as root to unpack images for its containers.
 *
 * Writing layers and blobs (commit) is layerwrite.c's.
 */
#include "agentd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "json.h"
#include "layers_int.h"
#include "token.h"
#include "tree.h"
#include "util.h"

#define META_MAX (4 * 1024 * 1024) /* manifests and configs */
#define PAX_MAX	 (1024 * 1024)	   /* one pax header's records */
/* What one layer may hold: any entry's size, all entries' sizes, their number. A
 * small gzip stream can expand a thousandfold; these stop a layer filling a host. */
#define LAYER_ENTRY_MAX	  (64LL << 30)
#define LAYER_TOTAL_MAX	  (64LL << 30)
#define LAYER_ENTRIES_MAX 1000000

/* ---- digests and blobs ------------------------------------------------------------- */

/*
 * Is s a digest this store can hold: "sha256:" and 64 lower-case hex digits?
 */
bool layers_digest_valid(const char *s)
{
	return spec_digest_valid(s);
}

EVP_MD_CTX *layers_hash_new(void)
{
	EVP_MD_CTX *h = EVP_MD_CTX_new();

	if (h == NULL || EVP_DigestInit_ex(h, EVP_sha256(), NULL) != 1)
		fatalx("cannot set up SHA-256");
	return h;
}

/* Finish h into "sha256:<hex>" (out holds 72) and free it. */
void layers_hash_end(EVP_MD_CTX *h, char out[72])
{
	unsigned char md[32];
	unsigned len = 0;

	EVP_DigestFinal_ex(h, md, &len);
	EVP_MD_CTX_free(h);
	memcpy(out, "sha256:", 7);
	hex_encode(md, 32, out + 7);
}

void layers_blob_path(const char *shared, const char *digest, char *out, size_t len)
{
	snprintf(out, len, "%s/oci/blobs/sha256/%s", shared, digest + 7);
}

/*
 * Read the blob digest names (at most max bytes) from the shared store and check its
 * SHA-256. Returns 0 with a NUL-terminated copy in *out (caller frees), or -1 with err.
 */
int layers_blob_read(const char *shared, const char *digest, size_t max, char **out, size_t *outlen,
		     struct kerr *err)
{
	char path[PATH_MAX], got[72];
	unsigned char md[32];
	char *data = NULL;
	size_t len;
	int ret;

	if (!layers_digest_valid(digest))
		return err_set(err, 0, "'%.80s' is not a sha256 digest", digest);
	layers_blob_path(shared, digest, path, sizeof(path));
	ret = file_read_all(path, max, &data, &len);
	if (ret == -EFBIG)
		return err_set(err, EFBIG, "blob %.19s is larger than %zu bytes", digest, max);
	if (ret < 0)
		return err_set(err, -ret, "blob %.19s is not in the image store (%s)", digest,
			       path);
	sha256(data, len, md);
	memcpy(got, "sha256:", 7);
	hex_encode(md, 32, got + 7);
	if (strcmp(got, digest) != 0) {
		free(data);
		return err_set(err, 0, "blob %.19s is corrupt: its content hashes to %.19s", digest,
			       got);
	}
	*out = data;
	if (outlen)
		*outlen = len;
	return 0;
}

/* Hash a whole file into out ("sha256:<hex>"); its size into *size. */
int layers_file_hash(const char *path, char out[72], int64_t *size, struct kerr *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ unsigned char *buf = NULL;
	EVP_MD_CTX *h;
	int64_t total = 0;
	ssize_t n;

	if (fd < 0)
		return err_set(err, errno, "cannot open %s", path);
	buf = xmalloc(IO_CHUNK);
	h = layers_hash_new();
	while ((n = read(fd, buf, IO_CHUNK)) > 0) {
		EVP_DigestUpdate(h, buf, (size_t)n);
		total += n;
	}
	if (n < 0) {
		int e = errno;

		EVP_MD_CTX_free(h);
		return err_set(err, e, "cannot read %s", path);
	}
	layers_hash_end(h, out);
	if (size)
		*size = total;
	return 0;
}

/* ---- image: manifest, config, layers ----------------------------------------------- */

/* Release what layers_image_load() filled in. */
void layers_image_free(struct oci_image *img)
{
	json_object_put(img->manifest);
	json_object_put(img->config);
	free(img->layers);
	memset(img, 0, sizeof(*img));
}

/* In an index, the manifest for linux on this machine's architecture. */
static const char *index_pick(struct json_object *index)
{
	struct json_object *list;

	if (!json_object_object_get_ex(index, "manifests", &list) ||
	    !json_object_is_type(list, json_type_array))
		return NULL;
	for (size_t i = 0; i < json_array_len(list); i++) {
		struct json_object *m = json_object_array_get_idx(list, i), *p;

		if (json_object_object_get_ex(m, "platform", &p) &&
		    strcmp(json_get_str(p, "os", ""), "linux") == 0 &&
		    strcmp(json_get_str(p, "architecture", ""), "amd64") == 0)
			return json_get_str(m, "digest", NULL);
	}
	return NULL;
}

/* The layers_meta_fn of the shared store; cls is its path. */
static int meta_read_store(void *cls, const char *digest, const char *what,
			   struct json_object **out, int64_t *size, struct kerr *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len;

	if (layers_blob_read(cls, digest, META_MAX, &text, &len, err) < 0)
		return err_prefix(err, what);
	if (json_body_parse(text, len, out, err) < 0)
		return err_prefix(err, what);
	if (size)
		*size = (int64_t)len;
	return 0;
}

/*
 * Load the image whose manifest (or index: the linux/amd64 entry) is digest from the
 * shared store: manifest and config verified and parsed, the layers listed bottom
 * first with their digests, media types, sizes and diff_ids. Returns 0, or -1 with
 * err; release with layers_image_free() either way.
 */
int layers_image_load(const char *shared, const char *digest, struct oci_image *img,
		      struct kerr *err)
{
	return layers_image_parse(digest, meta_read_store, (void *)shared, img, err);
}

/*
 * What layers_image_load() does, with manifests and configs read through meta_read
 * (cls is its own): the parsing alone, which tests/fuzz feeds from memory.
 */
int layers_image_parse(const char *digest, layers_meta_fn meta_read, void *cls,
		       struct oci_image *img, struct kerr *err)
{
	struct json_object *config, *layers, *rootfs, *diff_ids = NULL;
	const char *mt, *picked;
	size_t n;

	memset(img, 0, sizeof(*img));
	if (meta_read(cls, digest, "manifest: ", &img->manifest, &img->manifest_size, err) < 0)
		return -1;
	snprintf(img->manifest_digest, sizeof(img->manifest_digest), "%s", digest);
	mt = json_get_str(img->manifest, "mediaType", "");
	if (strcmp(mt, MT_OCI_INDEX) == 0 || strcmp(mt, MT_DOCKER_LIST) == 0 ||
	    (mt[0] == '\0' && json_object_object_get_ex(img->manifest, "manifests", NULL))) {
		picked = index_pick(img->manifest);
		if (picked == NULL)
			return err_set(err, 0, "image index %.19s has no linux/amd64 manifest",
				       digest);
		snprintf(img->manifest_digest, sizeof(img->manifest_digest), "%s", picked);
		json_object_put(img->manifest);
		img->manifest = NULL;
		if (meta_read(cls, img->manifest_digest, "manifest: ", &img->manifest,
			      &img->manifest_size, err) < 0)
			return -1;
		mt = json_get_str(img->manifest, "mediaType", "");
	}
	snprintf(img->manifest_media_type, sizeof(img->manifest_media_type), "%s",
		 mt[0] ? mt : MT_OCI_MANIFEST);
	if (json_get_int(img->manifest, "schemaVersion", 0) != 2 ||
	    !json_object_object_get_ex(img->manifest, "config", &config) ||
	    !json_object_object_get_ex(img->manifest, "layers", &layers) ||
	    !json_object_is_type(layers, json_type_array))
		return err_set(err, 0, "manifest %.19s is not an image manifest (schema 2)",
			       img->manifest_digest);
	snprintf(img->config_digest, sizeof(img->config_digest), "%s",
		 json_get_str(config, "digest", ""));
	if (meta_read(cls, img->config_digest, "config: ", &img->config, &img->config_size, err) <
	    0)
		return -1;
	n = json_array_len(layers);
	if (n > AGENT_OCI_LAYERS_MAX)
		return err_set(err, 0, "image %.19s has %zu layers; at most %d are supported",
			       img->manifest_digest, n, AGENT_OCI_LAYERS_MAX);
	if (json_object_object_get_ex(img->config, "rootfs", &rootfs))
		json_object_object_get_ex(rootfs, "diff_ids", &diff_ids);
	if (diff_ids &&
	    (!json_object_is_type(diff_ids, json_type_array) || json_array_len(diff_ids) != n))
		return err_set(err, 0, "image %.19s: the config lists %zu diff_ids for %zu layers",
			       img->manifest_digest,
			       json_object_is_type(diff_ids, json_type_array)
				       ? json_array_len(diff_ids)
				       : 0,
			       n);
	img->layers = xcalloc(n ? n : 1, sizeof(*img->layers));
	img->nlayers = n;
	for (size_t i = 0; i < n; i++) {
		struct json_object *l = json_object_array_get_idx(layers, i);
		struct oci_layer *ol = &img->layers[i];

		snprintf(ol->digest, sizeof(ol->digest), "%s", json_get_str(l, "digest", ""));
		snprintf(ol->media_type, sizeof(ol->media_type), "%s",
			 json_get_str(l, "mediaType", MT_OCI_LAYER_GZIP));
		ol->size = json_get_int(l, "size", -1);
		if (diff_ids) {
			struct json_object *d = json_object_array_get_idx(diff_ids, i);

			/* Unpacking compares the tar's SHA-256 with it: anything else (null
			 * included, which printed as "(null)") would only fail there. */
			if (!json_object_is_type(d, json_type_string) ||
			    !layers_digest_valid(json_object_get_string(d)))
				return err_set(err, 0,
					       "image %.19s: the config's diff_ids[%zu] is not a "
					       "sha256 digest",
					       img->manifest_digest, i);
			snprintf(ol->diff_id, sizeof(ol->diff_id), "%s", json_object_get_string(d));
		}
		if (!layers_digest_valid(ol->digest))
			return err_set(err, 0, "image %.19s: layer %zu has no sha256 digest",
				       img->manifest_digest, i);
		if (strstr(ol->media_type, "zstd"))
			return err_set(err, 0,
				       "layer %.19s is zstd-compressed; only gzip and plain tar "
				       "layers are supported",
				       ol->digest);
	}
	return 0;
}

/* ---- the layer stream: file -> (gunzip) -> tar bytes, hashed on both sides --------- */

struct stream {
	int fd;
	z_stream zs;
	bool gzip, zs_open, in_eof, out_eof;
	unsigned char *in;
	EVP_MD_CTX *blob_hash; /* over the file's bytes */
	EVP_MD_CTX *tar_hash;  /* over the tar (the diff_id) */
	unsigned char pending[BLOCK * 2];
	const char *digest;	/* for messages */
	int64_t entries, total; /* what the layer held so far, against the limits */
};

static int stream_fill(struct stream *s, struct kerr *err)
{
	ssize_t n = read(s->fd, s->in, IO_CHUNK);

	if (n < 0)
		return err_set(err, errno, "layer %.19s: read", s->digest);
	if (n == 0)
		s->in_eof = true;
	EVP_DigestUpdate(s->blob_hash, s->in, (size_t)n);
	s->zs.next_in = s->in;
	s->zs.avail_in = (uInt)n;
	return 0;
}

/*
 * Read up to len tar bytes into buf. Returns the count (0 at the end of the stream),
 * or -1 with err.
 */
static ssize_t stream_read(struct stream *s, unsigned char *buf, size_t len, struct kerr *err)
{
	size_t got = 0;

	while (got < len && !s->out_eof) {
		if (s->zs.avail_in == 0 && !s->in_eof && stream_fill(s, err) < 0)
			return -1;
		if (!s->gzip) {
			size_t n = s->zs.avail_in < len - got ? s->zs.avail_in : len - got;

			if (n == 0) {
				s->out_eof = s->in_eof;
				continue;
			}
			memcpy(buf + got, s->zs.next_in, n);
			s->zs.next_in += n;
			s->zs.avail_in -= (uInt)n;
			got += n;
			continue;
		}
		if (s->zs.avail_in == 0 && s->in_eof) {
			return err_set(err, 0, "layer %.19s: the gzip stream is truncated",
				       s->digest);
		}
		s->zs.next_out = buf + got;
		s->zs.avail_out = (uInt)(len - got);
		int zret = inflate(&s->zs, Z_NO_FLUSH);

		got = len - s->zs.avail_out;
		if (zret == Z_STREAM_END) {
			/* Another gzip member may follow (concatenated streams). */
			if (s->zs.avail_in == 0 && !s->in_eof && stream_fill(s, err) < 0)
				return -1;
			if (s->zs.avail_in == 0 && s->in_eof)
				s->out_eof = true;
			else
				inflateReset(&s->zs);
		} else if (zret != Z_OK && zret != Z_BUF_ERROR) {
			return err_set(err, 0, "layer %.19s: gzip: %s", s->digest,
				       s->zs.msg ? s->zs.msg : "corrupt data");
		}
	}
	EVP_DigestUpdate(s->tar_hash, buf, got);
	return (ssize_t)got;
}

/* Exactly len bytes, or an error naming what was being read. */
static int stream_need(struct stream *s, void *buf, size_t len, const char *what, struct kerr *err)
{
	ssize_t n = stream_read(s, buf, len, err);

	if (n < 0)
		return -1;
	if ((size_t)n != len)
		return err_set(err, 0, "layer %.19s: the tar ends inside %s", s->digest, what);
	return 0;
}

static int stream_skip(struct stream *s, int64_t len, struct kerr *err)
{
	unsigned char buf[8192];

	while (len > 0) {
		size_t chunk = len > (int64_t)sizeof(buf) ? sizeof(buf) : (size_t)len;

		if (stream_need(s, buf, chunk, "an entry's data", err) < 0)
			return -1;
		len -= (int64_t)chunk;
	}
	return 0;
}

static int stream_open(struct stream *s, const char *path, const char *digest, struct kerr *err)
{
	unsigned char magic[4];
	ssize_t n;

	memset(s, 0, sizeof(*s));
	s->digest = digest;
	s->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (s->fd < 0)
		return err_set(err, errno, "layer %.19s is not in the image store", digest);
	s->in = xmalloc(IO_CHUNK);
	s->blob_hash = layers_hash_new();
	s->tar_hash = layers_hash_new();
	n = pread(s->fd, magic, sizeof(magic), 0);
	if (n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
		s->gzip = true;
		/* 15 + 32: zlib detects the gzip header itself. */
		if (inflateInit2(&s->zs, 15 + 32) != Z_OK)
			return err_set(err, 0, "layer %.19s: cannot start gunzip", digest);
		s->zs_open = true;
	} else if (n == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f &&
		   magic[3] == 0xfd) {
		return err_set(err, 0,
			       "layer %.19s is zstd-compressed; only gzip and plain tar layers "
			       "are supported",
			       digest);
	}
	return 0;
}

static void stream_close(struct stream *s)
{
	if (s->zs_open)
		inflateEnd(&s->zs);
	if (s->fd >= 0)
		close(s->fd);
	if (s->blob_hash)
		EVP_MD_CTX_free(s->blob_hash);
	if (s->tar_hash)
		EVP_MD_CTX_free(s->tar_hash);
	free(s->in);
	memset(s, 0, sizeof(*s));
	s->fd = -1;
}

/* ---- tar headers -------------------------------------------------------------------- */

struct entry {
	char path[PATH_MAX]; /* as in the archive */
	char link[PATH_MAX];
	char type;
	unsigned mode;
	int64_t uid, gid, size, mtime;
	unsigned devmajor, devminor;
	struct xattr xattrs[XATTRS_MAX];
	size_t nxattrs;
};

/* What GNU and pax headers said about the entry that follows them. */
struct pending {
	char path[PATH_MAX], link[PATH_MAX];
	bool has_path, has_link, has_size, has_uid, has_gid, has_mtime;
	int64_t size, uid, gid, mtime;
	struct xattr xattrs[XATTRS_MAX];
	size_t nxattrs;
};

void layers_xattrs_free(struct xattr *x, size_t *n)
{
	for (size_t i = 0; i < *n; i++)
		free(x[i].value);
	*n = 0;
}

/* An octal field (NUL or space ended) or GNU base-256 (high bit of the first byte). */
static int64_t tar_number(const unsigned char *f, size_t len)
{
	int64_t v = 0;
	size_t i = 0;

	if (f[0] & 0x80) {
		/* Base-256, big-endian; negative values are not valid here. */
		if (f[0] & 0x40)
			return -1;
		v = f[0] & 0x3f;
		for (i = 1; i < len; i++) {
			if (v > (INT64_MAX >> 8))
				return -1;
			v = (v << 8) | f[i];
		}
		return v;
	}
	while (i < len && (f[i] == ' ' || f[i] == '\0'))
		i++;
	for (; i < len && f[i] >= '0' && f[i] <= '7'; i++) {
		if (v > (INT64_MAX >> 3))
			return -1;
		v = (v << 3) | (f[i] - '0');
	}
	return v;
}

static bool header_checksum_ok(const unsigned char *h)
{
	int64_t want = tar_number(h + 148, 8);
	int64_t usum = 0, ssum = 0;

	for (int i = 0; i < BLOCK; i++) {
		unsigned char c = (i >= 148 && i < 156) ? ' ' : h[i];

		usum += c;
		ssum += (signed char)c;
	}
	return want == usum || want == ssum;
}

static bool block_zero(const unsigned char *h)
{
	for (int i = 0; i < BLOCK; i++)
		if (h[i])
			return false;
	return true;
}

/* Copy a fixed-width, maybe unterminated header string. */
static void field_str(char *out, size_t outlen, const unsigned char *f, size_t len)
{
	size_t n = strnlen((const char *)f, len);

	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, f, n);
	out[n] = '\0';
}

/* Read an extension header's data (GNU long name, pax records), bounded. */
static int ext_read(struct stream *s, int64_t size, int64_t max, char **out, struct kerr *err)
{
	int64_t padded = (size + BLOCK - 1) / BLOCK * BLOCK;
	char *buf;

	if (size < 0 || size > max)
		return err_set(err, 0, "layer %.19s: an extended tar header is too large",
			       s->digest);
	buf = xmalloc((size_t)padded + 1);
	if (stream_need(s, buf, (size_t)padded, "an extended header", err) < 0) {
		free(buf);
		return -1;
	}
	buf[size] = '\0';
	*out = buf;
	return 0;
}

static void pax_apply(struct pending *p, const char *key, const char *val, size_t vlen)
{
	if (strcmp(key, "path") == 0) {
		snprintf(p->path, sizeof(p->path), "%.*s", (int)vlen, val);
		p->has_path = true;
	} else if (strcmp(key, "linkpath") == 0) {
		snprintf(p->link, sizeof(p->link), "%.*s", (int)vlen, val);
		p->has_link = true;
	} else if (strcmp(key, "size") == 0) {
		char *end;
		long long v;

		errno = 0;
		v = strtoll(val, &end, 10);
		/* A size out of range marks the header broken (checked by the caller). */
		p->size = (errno || end == val || v < 0 || v > LAYER_ENTRY_MAX) ? -1 : v;
		p->has_size = true;
	} else if (strcmp(key, "uid") == 0) {
		p->uid = strtoll(val, NULL, 10);
		p->has_uid = true;
	} else if (strcmp(key, "gid") == 0) {
		p->gid = strtoll(val, NULL, 10);
		p->has_gid = true;
	} else if (strcmp(key, "mtime") == 0) {
		p->mtime = strtoll(val, NULL, 10);
		p->has_mtime = true;
	} else if (strncmp(key, "SCHILY.xattr.", 13) == 0 && p->nxattrs < XATTRS_MAX &&
		   vlen <= XATTR_VALUE_MAX && strlen(key + 13) < sizeof(p->xattrs[0].name)) {
		struct xattr *x = &p->xattrs[p->nxattrs++];

		snprintf(x->name, sizeof(x->name), "%s", key + 13);
		x->value = xmalloc(vlen ? vlen : 1);
		memcpy(x->value, val, vlen);
		x->len = vlen;
	}
}

/* Records "LEN key=value\n"; the value may hold any byte (xattrs are binary). */
static int pax_parse(struct pending *p, const char *buf, size_t len, const char *digest,
		     struct kerr *err)
{
	size_t off = 0;

	while (off < len) {
		char key[256];
		const char *rec = buf + off, *end = rec, *eq, *val;
		size_t reclen = 0;

		/* The length by hand: digits only, within the buffer (strtol would skip
		 * leading white space and let the record start outside itself). */
		while (end < buf + len && *end >= '0' && *end <= '9' && reclen <= len)
			reclen = reclen * 10 + (size_t)(*end++ - '0');
		if (end == rec || reclen == 0 || reclen > len - off || end >= rec + reclen - 1 ||
		    *end != ' ' || rec[reclen - 1] != '\n')
			return err_set(err, 0, "layer %.19s: a pax header is malformed", digest);
		eq = memchr(end + 1, '=', (size_t)(rec + reclen - (end + 1)));
		if (eq == NULL || (size_t)(eq - (end + 1)) >= sizeof(key))
			return err_set(err, 0, "layer %.19s: a pax record is malformed", digest);
		snprintf(key, sizeof(key), "%.*s", (int)(eq - (end + 1)), end + 1);
		val = eq + 1;
		pax_apply(p, key, val, (size_t)(rec + reclen - 1 - val));
		off += (size_t)reclen;
	}
	return 0;
}

/*
 * The next entry of the archive into e (extension headers folded in). Returns 1 for
 * an entry, 0 at the end of the archive, -1 with err.
 */
static int tar_next(struct stream *s, struct entry *e, struct kerr *err)
{
	struct pending p;
	unsigned char h[BLOCK];
	int ret = -1;

	memset(&p, 0, sizeof(p));
	for (;;) {
		ssize_t n = stream_read(s, h, BLOCK, err);
		_cleanup_free_ char *ext = NULL;
		int64_t size;
		char name[101], prefix[156];

		if (n < 0)
			goto out;
		if (n == 0) {
			ret = 0; /* no end-of-archive blocks: tolerated */
			goto out;
		}
		if (n != BLOCK) {
			err_set(err, 0, "layer %.19s: the tar ends inside a header", s->digest);
			goto out;
		}
		if (block_zero(h)) {
			ret = 0;
			goto out;
		}
		if (!header_checksum_ok(h)) {
			err_set(err, 0, "layer %.19s: a tar header has a bad checksum", s->digest);
			goto out;
		}
		/* A pax size applies to the real entry after it, not to another extension. */
		size = p.has_size && h[156] != 'x' && h[156] != 'g' && h[156] != 'L' &&
				       h[156] != 'K'
			       ? p.size
			       : tar_number(h + 124, 12);
		if (size < 0 || size > LAYER_ENTRY_MAX) {
			err_set(err, 0, "layer %.19s: a tar header has a bad size", s->digest);
			goto out;
		}
		if (++s->entries > LAYER_ENTRIES_MAX || (s->total += size) > LAYER_TOTAL_MAX) {
			err_set(err, 0, "layer %.19s: more than %d entries or %lld bytes; refused",
				s->digest, LAYER_ENTRIES_MAX, LAYER_TOTAL_MAX);
			goto out;
		}
		switch (h[156]) {
		case 'L':
		case 'K':
			if (ext_read(s, size, PATH_MAX - 1, &ext, err) < 0)
				goto out;
			snprintf(h[156] == 'L' ? p.path : p.link, PATH_MAX, "%s", ext);
			*(h[156] == 'L' ? &p.has_path : &p.has_link) = true;
			p.has_size = false;
			continue;
		case 'x':
			if (ext_read(s, size, PAX_MAX, &ext, err) < 0 ||
			    pax_parse(&p, ext, (size_t)size, s->digest, err) < 0)
				goto out;
			continue;
		case 'g': /* global pax header: nothing in it matters here */
			if (stream_skip(s, (size + BLOCK - 1) / BLOCK * BLOCK, err) < 0)
				goto out;
			continue;
		default:
			break;
		}
		memset(e, 0, sizeof(*e));
		e->type = h[156] ? (char)h[156] : '0';
		field_str(name, sizeof(name), h, 100);
		if (p.has_path) {
			snprintf(e->path, sizeof(e->path), "%s", p.path);
		} else if (memcmp(h + 257, "ustar\0", 6) == 0 && h[345]) {
			/* POSIX ustar: prefix "/" name. (Old GNU headers use that area for
			 * other things and say "ustar  ".) */
			field_str(prefix, sizeof(prefix), h + 345, 155);
			snprintf(e->path, sizeof(e->path), "%s/%s", prefix, name);
		} else {
			snprintf(e->path, sizeof(e->path), "%s", name);
		}
		if (p.has_link)
			snprintf(e->link, sizeof(e->link), "%s", p.link);
		else
			field_str(e->link, sizeof(e->link), h + 157, 100);
		e->mode = (unsigned)tar_number(h + 100, 8) & 07777;
		e->uid = p.has_uid ? p.uid : tar_number(h + 108, 8);
		e->gid = p.has_gid ? p.gid : tar_number(h + 116, 8);
		e->mtime = p.has_mtime ? p.mtime : tar_number(h + 136, 12);
		e->size = size;
		e->devmajor = (unsigned)tar_number(h + 329, 8);
		e->devminor = (unsigned)tar_number(h + 337, 8);
		memcpy(e->xattrs, p.xattrs, sizeof(p.xattrs));
		e->nxattrs = p.nxattrs;
		p.nxattrs = 0; /* the entry owns them now */
		ret = 1;
		goto out;
	}
out:
	layers_xattrs_free(p.xattrs, &p.nxattrs);
	return ret;
}

/* ---- entry paths ------------------------------------------------------------------- */

/*
 * Normalise an archive path into out: "./" and empty or "." components dropped, a
 * trailing '/' too. An absolute path or a ".." component is refused with err naming
 * the entry. Returns 0 ("" for the layer's root), or -1.
 */
static int path_clean(const char *in, char *out, size_t outlen, const char *digest,
		      struct kerr *err)
{
	size_t o = 0;
	const char *p = in;

	if (in[0] == '/')
		return err_set(err, 0,
			       "layer %.19s: entry '%.200s' has an absolute path; the layer is "
			       "refused",
			       digest, in);
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);

		if (len == 2 && p[0] == '.' && p[1] == '.')
			return err_set(err, 0,
				       "layer %.19s: entry '%.200s' has a '..' component and would "
				       "leave the layer; the layer is refused",
				       digest, in);
		if (len > NAME_MAX)
			return err_set(err, 0, "layer %.19s: entry '%.200s' has too long a name",
				       digest, in);
		if (len > 0 && !(len == 1 && p[0] == '.')) {
			if (o + len + 2 > outlen)
				return err_set(err, 0, "layer %.19s: entry '%.200s' is too long",
					       digest, in);
			if (o)
				out[o++] = '/';
			memcpy(out + o, p, len);
			o += len;
		}
		p += len;
		if (*p == '/')
			p++;
	}
	out[o] = '\0';
	return 0;
}

/*
 * Open the directory that holds rel (cleaned, not "") below root, one component at a
 * time with O_NOFOLLOW; missing directories are made when create is set. *base points
 * into rel at the last component. Returns an fd, or -1 with err.
 */
static int parent_open(int root, const char *rel, bool create, const char **base,
		       const char *digest, const char *entry, struct kerr *err)
{
	char comp[NAME_MAX + 1];
	const char *p = rel, *slash;
	int fd = fcntl(root, F_DUPFD_CLOEXEC, 0);

	if (fd < 0)
		return err_set(err, errno, "dup");
	while ((slash = strchr(p, '/'))) {
		size_t len = (size_t)(slash - p);
		int next;

		memcpy(comp, p, len);
		comp[len] = '\0';
		next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0 && errno == ENOENT && create) {
			if (mkdirat(fd, comp, 0755) < 0 && errno != EEXIST) {
				int e = errno;

				close(fd);
				return err_set(err, e, "layer %.19s: entry '%.200s': mkdir", digest,
					       entry);
			}
			fchmodat(fd, comp, 0755, 0);
			next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		}
		if (next < 0) {
			int e = errno;

			close(fd);
			if (e == ELOOP || e == ENOTDIR)
				return err_set(
					err, 0,
					"layer %.19s: entry '%.200s' lies below a symlink or "
					"file (%.*s); nothing is extracted through links, the "
					"layer is refused",
					digest, entry, (int)(slash - rel), rel);
			return err_set(err, e, "layer %.19s: entry '%.200s'", digest, entry);
		}
		close(fd);
		fd = next;
		p = slash + 1;
	}
	*base = p;
	return fd;
}

/* ---- extraction --------------------------------------------------------------------- */

/* Which xattrs an image may set: file capabilities and the user namespace. */
bool layers_xattr_allowed(const char *name)
{
	return strcmp(name, "security.capability") == 0 || strncmp(name, "user.", 5) == 0;
}

static int data_write(struct stream *s, int fd, int64_t size, const char *entry, struct kerr *err)
{
	unsigned char *buf = xmalloc(IO_CHUNK);
	int64_t left = size, padded = (size + BLOCK - 1) / BLOCK * BLOCK;
	int ret = 0;

	while (left > 0) {
		size_t chunk = left > IO_CHUNK ? IO_CHUNK : (size_t)left;

		if (stream_need(s, buf, chunk, "a file's data", err) < 0) {
			ret = -1;
			break;
		}
		for (size_t off = 0; off < chunk;) {
			ssize_t w = write(fd, buf + off, chunk - off);

			if (w < 0) {
				ret = err_set(err, errno, "layer %.19s: entry '%.200s': write",
					      s->digest, entry);
				break;
			}
			off += (size_t)w;
		}
		if (ret < 0)
			break;
		left -= (int64_t)chunk;
	}
	free(buf);
	if (ret < 0)
		return -1;
	return stream_skip(s, padded - size, err);
}

/* Make room for a new entry named base: anything there goes, except a directory
 * that a directory entry simply updates. */
static int clear_for(int parent, const char *base, bool want_dir)
{
	struct stat st;

	if (fstatat(parent, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (S_ISDIR(st.st_mode)) {
		if (want_dir)
			return 0;
		return tree_remove_at(parent, base);
	}
	return unlinkat(parent, base, 0) < 0 && errno != ENOENT ? -errno : 0;
}

static void meta_apply(int parent, const char *base, int fd, const struct entry *e)
{
	struct timespec times[2] = {{.tv_sec = e->mtime}, {.tv_sec = e->mtime}};

	/* Owner first: chown clears set-id bits, which the mode then puts back. */
	fchownat(parent, base, (uid_t)e->uid, (gid_t)e->gid, AT_SYMLINK_NOFOLLOW);
	if (e->type != '2') {
		if (fd >= 0)
			fchmod(fd, e->mode);
		else
			fchmodat(parent, base, e->mode, 0);
		for (size_t i = 0; fd >= 0 && i < e->nxattrs; i++)
			if (layers_xattr_allowed(e->xattrs[i].name))
				fsetxattr(fd, e->xattrs[i].name, e->xattrs[i].value,
					  e->xattrs[i].len, 0);
	}
	utimensat(parent, base, times, AT_SYMLINK_NOFOLLOW);
}

static int entry_extract(struct stream *s, int root, struct entry *e, struct kerr *err)
{
	char rel[PATH_MAX], target[PATH_MAX];
	const char *base, *tbase;
	int64_t padded = (e->size + BLOCK - 1) / BLOCK * BLOCK;
	int parent, fd = -1, ret = 0;

	if (path_clean(e->path, rel, sizeof(rel), s->digest, err) < 0)
		return -1;
	if (rel[0] == '\0') /* the layer's root itself */
		return stream_skip(s, padded, err);
	if (e->type == '\0' || strchr("01234567", e->type) == NULL)
		return err_set(err, 0,
			       "layer %.19s: entry '%.200s' has tar type '%c', which is not "
			       "supported; the layer is refused",
			       s->digest, e->path, e->type);
	parent = parent_open(root, rel, true, &base, s->digest, e->path, err);
	if (parent < 0)
		return -1;

	if (strcmp(base, ".wh..wh..opq") == 0) {
		/* The directory hides everything below it in lower layers. */
		if (fsetxattr(parent, "trusted.overlay.opaque", "y", 1, 0) < 0)
			ret = err_set(err, errno, "layer %.19s: entry '%.200s': opaque xattr",
				      s->digest, e->path);
		else
			ret = stream_skip(s, padded, err);
		goto out;
	}
	if (strncmp(base, ".wh.", 4) == 0) {
		const char *hidden = base + 4;

		if (hidden[0] == '\0' || strcmp(hidden, ".") == 0 || strcmp(hidden, "..") == 0) {
			ret = err_set(err, 0, "layer %.19s: whiteout '%.200s' names nothing",
				      s->digest, e->path);
			goto out;
		}
		/* overlayfs's whiteout: a character device 0:0 (CAP_MKNOD). */
		ret = clear_for(parent, hidden, false);
		if (ret == 0 && mknodat(parent, hidden, S_IFCHR | 0, makedev(0, 0)) < 0)
			ret = -errno;
		if (ret < 0)
			ret = err_set(err, -ret, "layer %.19s: whiteout '%.200s'", s->digest,
				      e->path);
		else
			ret = stream_skip(s, padded, err);
		goto out;
	}
	ret = clear_for(parent, base, e->type == '5');
	if (ret < 0) {
		ret = err_set(err, -ret, "layer %.19s: entry '%.200s': cannot replace", s->digest,
			      e->path);
		goto out;
	}
	switch (e->type) {
	case '0':
	case '7':
		fd = openat(parent, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			    0600);
		if (fd < 0) {
			ret = err_set(err, errno, "layer %.19s: entry '%.200s'", s->digest,
				      e->path);
			goto out;
		}
		if (data_write(s, fd, e->size, e->path, err) < 0) {
			ret = -1;
			goto out;
		}
		break;
	case '5':
		if (mkdirat(parent, base, 0700) < 0 && errno != EEXIST) {
			ret = err_set(err, errno, "layer %.19s: entry '%.200s': mkdir", s->digest,
				      e->path);
			goto out;
		}
		fd = openat(parent, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		break;
	case '2':
		if (symlinkat(e->link, parent, base) < 0) {
			ret = err_set(err, errno, "layer %.19s: entry '%.200s': symlink", s->digest,
				      e->path);
			goto out;
		}
		break;
	case '1': {
		int tparent;

		if (path_clean(e->link, target, sizeof(target), s->digest, err) < 0) {
			ret = -1;
			goto out;
		}
		if (target[0] == '\0') {
			ret = err_set(err, 0, "layer %.19s: hard link '%.200s' points at the root",
				      s->digest, e->path);
			goto out;
		}
		tparent = parent_open(root, target, false, &tbase, s->digest, e->link, err);
		if (tparent < 0) {
			ret = -1;
			goto out;
		}
		ret = linkat(tparent, tbase, parent, base, 0);
		close(tparent);
		if (ret < 0) {
			ret = err_set(err, 0,
				      "layer %.19s: hard link '%.200s' -> '%.200s': the target is "
				      "not in the layer (%s); the layer is refused",
				      s->digest, e->path, e->link, strerror(errno));
			goto out;
		}
		/* A link carries no data and takes its target's attributes. */
		ret = stream_skip(s, padded, err);
		goto out;
	}
	case '3':
	case '4':
	case '6': {
		mode_t kind = e->type == '3' ? S_IFCHR : e->type == '4' ? S_IFBLK : S_IFIFO;

		/* Device nodes need CAP_MKNOD; the devices cgroup still guards their use. */
		if (mknodat(parent, base, kind | 0600, makedev(e->devmajor, e->devminor)) < 0) {
			ret = err_set(err, errno, "layer %.19s: entry '%.200s': mknod", s->digest,
				      e->path);
			goto out;
		}
		break;
	}
	}
	meta_apply(parent, base, fd, e);
	/* Only regular files carry data; anything else's (size 0 as a rule) is skipped. */
	if (e->type != '0' && e->type != '7')
		ret = stream_skip(s, padded, err);
out:
	if (fd >= 0)
		close(fd);
	close(parent);
	return ret < 0 ? -1 : 0;
}

/* Extract the whole tar stream s into the directory root. */
static int tar_extract(struct stream *s, int root, struct kerr *err)
{
	struct entry *e = xmalloc(sizeof(*e));
	unsigned char rest[BLOCK];
	int ret;

	while ((ret = tar_next(s, e, err)) > 0) {
		ret = entry_extract(s, root, e, err);
		layers_xattrs_free(e->xattrs, &e->nxattrs);
		if (ret < 0)
			break;
	}
	free(e);
	if (ret < 0)
		return -1;
	/* The diff_id covers the whole tar, padding included. */
	while ((ret = (int)stream_read(s, rest, sizeof(rest), err)) > 0)
		;
	return ret < 0 ? -1 : 0;
}

/*
 * Unpack the tar (gzip'd or not) at path into the existing, empty directory dest,
 * with the checks above. digest names the layer in messages. The stream's hashes
 * come back in blob_digest (of the file) and diff_id (of the tar), "sha256:<hex>",
 * each 72 bytes. Returns 0 or -1 with err; dest holds a partial tree on failure.
 */
int layers_tar_unpack(const char *path, const char *dest, const char *digest, char *blob_digest,
		      char *diff_id, struct kerr *err)
{
	_cleanup_close_ int root = -1;
	struct stream s;
	int ret;

	if (stream_open(&s, path, digest, err) < 0) {
		stream_close(&s);
		return -1;
	}
	root = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (root < 0) {
		ret = err_set(err, errno, "cannot open %s", dest);
		stream_close(&s);
		return ret;
	}
	ret = tar_extract(&s, root, err);
	if (ret == 0) {
		/* Whatever is left of the file still counts for its digest. */
		while (!s.in_eof && stream_fill(&s, err) == 0)
			;
		layers_hash_end(s.blob_hash, blob_digest);
		layers_hash_end(s.tar_hash, diff_id);
		s.blob_hash = s.tar_hash = NULL;
	}
	stream_close(&s);
	return ret;
}

/*
 * Make sure layer l of an image is unpacked in {local}/oci/layers/<hex>: verified
 * against its digest, then unpacked into a temporary directory that is renamed into
 * place. Another unpack of the same layer finishing first is fine. Returns 0 or -1
 * with err (nothing is left behind then).
 */
int layers_unpack(const char *shared, const char *local, const struct oci_layer *l,
		  struct kerr *err)
{
	char blob[PATH_MAX], dir[PATH_MAX], final[PATH_MAX], tmp[PATH_MAX], got[72], diff[72];
	unsigned char rnd[6];
	char rhex[13];
	struct stat st;
	int64_t size;
	int ret;

	snprintf(dir, sizeof(dir), "%s/oci/layers", local);
	snprintf(final, sizeof(final), "%s/%s", dir, l->digest + 7);
	if (stat(final, &st) == 0)
		return 0;
	ret = mkdir_p(dir, 0700);
	/* Layers may hold device nodes and setuid files: only root may reach them, even
	 * if the directory was made looser before. */
	if (ret < 0 || chmod(dir, 0700) < 0)
		return err_set(err, ret < 0 ? -ret : errno, "cannot create %s", dir);
	layers_blob_path(shared, l->digest, blob, sizeof(blob));
	/* First pass: the tar reader sees only bytes whose digest is right. */
	if (layers_file_hash(blob, got, &size, err) < 0)
		return err_set(err, err->code, "layer %.19s is not in the image store", l->digest);
	if (strcmp(got, l->digest) != 0)
		return err_set(err, 0, "layer %.19s is corrupt: its content hashes to %.19s",
			       l->digest, got);
	random_bytes(rnd, sizeof(rnd));
	hex_encode(rnd, sizeof(rnd), rhex);
	snprintf(tmp, sizeof(tmp), "%s/.tmp-%.16s-%s", dir, l->digest + 7, rhex);
	if (mkdir(tmp, 0755) < 0)
		return err_set(err, errno, "cannot create %s", tmp);
	chmod(tmp, 0755);
	if (layers_tar_unpack(blob, tmp, l->digest, got, diff, err) < 0)
		goto fail;
	if (strcmp(got, l->digest) != 0) {
		err_set(err, 0, "layer %.19s changed while it was unpacked", l->digest);
		goto fail;
	}
	if (l->diff_id[0] && strcmp(diff, l->diff_id) != 0) {
		err_set(err, 0,
			"layer %.19s: its tar hashes to %.19s, but the image config says diff_id "
			"%.19s",
			l->digest, diff, l->diff_id);
		goto fail;
	}
	if (rename(tmp, final) < 0) {
		if (errno == EEXIST || errno == ENOTEMPTY) {
			tree_remove(tmp); /* another unpack won */
			return 0;
		}
		err_set(err, errno, "cannot rename %s", tmp);
		goto fail;
	}
	return 0;
fail:
	tree_remove(tmp);
	return -1;
}
