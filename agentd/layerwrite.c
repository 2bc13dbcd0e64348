/*
 * layerwrite.c - the writing side of images (layers.c reads them): commit walks a
 * container's overlay upper directory and writes a gzip'd tar with the overlay's
 * whiteouts turned back into .wh. entries and opaque directories into .wh..wh..opq,
 * hashing the compressed stream (the layer digest) and the tar itself (its diff_id)
 * as it goes; then the config and manifest blobs of the new image.
 *
 * Like layers.c it runs on libuv's thread pool and touches only the paths it is given.
 * What a container wrote is the user's: hard links are kept within the layer, sockets
 * dropped, and a tree nested past LAYERS_DEPTH_MAX directories refused.
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
#include "util.h"

/* ---- tar writer (commit) ------------------------------------------------------------ */

struct tar_out {
	int fd;
	z_stream zs;
	EVP_MD_CTX *blob_hash, *tar_hash;
	unsigned char *out;
	int64_t compressed;
	struct kerr *err;
	bool failed;
	/* hard links: the first path of each (dev, ino) with more than one link */
	struct inode_seen {
		dev_t dev;
		ino_t ino;
		char *path;
	} * seen;
	size_t nseen, capseen;
	int depth; /* directories open above the entry being written */
};

static void out_flush(struct tar_out *t, int flush)
{
	do {
		t->zs.next_out = t->out;
		t->zs.avail_out = IO_CHUNK;
		deflate(&t->zs, flush);
		size_t have = IO_CHUNK - t->zs.avail_out;

		EVP_DigestUpdate(t->blob_hash, t->out, have);
		for (size_t off = 0; off < have && !t->failed;) {
			ssize_t w = write(t->fd, t->out + off, have - off);

			if (w < 0) {
				err_set(t->err, errno, "cannot write the layer");
				t->failed = true;
				break;
			}
			off += (size_t)w;
		}
		t->compressed += (int64_t)have;
	} while (t->zs.avail_out == 0);
}

static void out_write(struct tar_out *t, const void *data, size_t len)
{
	if (t->failed)
		return;
	EVP_DigestUpdate(t->tar_hash, data, len);
	t->zs.next_in = (unsigned char *)data;
	t->zs.avail_in = (uInt)len;
	out_flush(t, Z_NO_FLUSH);
}

static void octal(unsigned char *f, size_t len, int64_t v)
{
	snprintf((char *)f, len, "%0*llo", (int)len - 1, (unsigned long long)v);
}

static void pax_record(char **buf, size_t *len, const char *key, const char *val, size_t vlen)
{
	/* "LEN key=value\n", where LEN counts its own digits too. */
	size_t klen = strlen(key), body = 1 + klen + 1 + vlen + 1, total = body + 1, digits;
	char num[24], *p;

	for (;;) {
		digits = (size_t)snprintf(num, sizeof(num), "%zu", total);
		if (body + digits == total)
			break;
		total = body + digits;
	}
	*buf = xrealloc(*buf, *len + total);
	p = *buf + *len;
	memcpy(p, num, digits);
	p += digits;
	*p++ = ' ';
	memcpy(p, key, klen);
	p += klen;
	*p++ = '=';
	memcpy(p, val, vlen);
	p += vlen;
	*p = '\n';
	*len += total;
}

static void header_put(struct tar_out *t, const char *name, char type, unsigned mode, int64_t uid,
		       int64_t gid, int64_t size, int64_t mtime, const char *link,
		       unsigned devmajor, unsigned devminor)
{
	unsigned char h[BLOCK];
	unsigned sum = 0;
	size_t nlen = strlen(name);

	memset(h, 0, sizeof(h));
	if (nlen <= 100) {
		memcpy(h, name, nlen);
	} else {
		/* Split at a '/' so prefix <= 155 and name <= 100; the pax path says it all
		 * anyway, this is for readers without pax. */
		const char *cut = name + nlen - 100;

		while (*cut && *cut != '/')
			cut++;
		if (*cut == '/' && (size_t)(cut - name) <= 155) {
			memcpy(h + 345, name, (size_t)(cut - name));
			memcpy(h, cut + 1, strlen(cut + 1));
		} else {
			memcpy(h, name, 100);
		}
	}
	octal(h + 100, 8, mode & 07777);
	octal(h + 108, 8, uid >= 0 && uid < 07777777 ? uid : 0);
	octal(h + 116, 8, gid >= 0 && gid < 07777777 ? gid : 0);
	octal(h + 124, 12, size < 077777777777LL ? size : 0);
	octal(h + 136, 12, mtime > 0 && mtime < 077777777777LL ? mtime : 0);
	h[156] = (unsigned char)type;
	if (link)
		memcpy(h + 157, link, strlen(link) < 100 ? strlen(link) : 100);
	memcpy(h + 257,
	       "ustar\0"
	       "00",
	       8);
	memcpy(h + 265, "root", 4);
	memcpy(h + 297, "root", 4);
	octal(h + 329, 8, devmajor);
	octal(h + 337, 8, devminor);
	memset(h + 148, ' ', 8);
	for (int i = 0; i < BLOCK; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum);
	h[155] = ' ';
	out_write(t, h, BLOCK);
}

/* The host uid of root in containers' user namespaces (uid.c), 0 for none. */
static unsigned userns_base;

/*
 * Containers in a user namespace write their upper directory as base+N: commit stores
 * N, so an image means the same inside and outside one. Set once at start-up.
 */
void layers_userns_base_set(unsigned base)
{
	userns_base = base;
}

static unsigned id_unshift(unsigned id)
{
	return userns_base && id >= userns_base && id - userns_base < 65536 ? id - userns_base : id;
}

/* One entry's headers: a pax header first when a field does not fit ustar. */
static void entry_put(struct tar_out *t, const char *name, char type, const struct stat *host_st,
		      int64_t size, const char *link, const struct xattr *xattrs, size_t nx)
{
	_cleanup_free_ char *pax = NULL;
	size_t paxlen = 0;
	char num[32];
	struct stat shifted = *host_st;
	const struct stat *st = &shifted;

	shifted.st_uid = id_unshift(host_st->st_uid);
	shifted.st_gid = id_unshift(host_st->st_gid);

	if (strlen(name) > 100) {
		const char *cut = name + strlen(name) - 100;

		while (*cut && *cut != '/')
			cut++;
		if (!(*cut == '/' && (size_t)(cut - name) <= 155))
			pax_record(&pax, &paxlen, "path", name, strlen(name));
	}
	if (link && strlen(link) > 100)
		pax_record(&pax, &paxlen, "linkpath", link, strlen(link));
	if (size >= 077777777777LL) {
		snprintf(num, sizeof(num), "%lld", (long long)size);
		pax_record(&pax, &paxlen, "size", num, strlen(num));
	}
	if (st->st_uid >= 07777777) {
		snprintf(num, sizeof(num), "%u", (unsigned)st->st_uid);
		pax_record(&pax, &paxlen, "uid", num, strlen(num));
	}
	if (st->st_gid >= 07777777) {
		snprintf(num, sizeof(num), "%u", (unsigned)st->st_gid);
		pax_record(&pax, &paxlen, "gid", num, strlen(num));
	}
	for (size_t i = 0; i < nx; i++) {
		char key[160];

		snprintf(key, sizeof(key), "SCHILY.xattr.%s", xattrs[i].name);
		pax_record(&pax, &paxlen, key, xattrs[i].value, xattrs[i].len);
	}
	if (paxlen) {
		unsigned char zero[BLOCK] = {0};

		header_put(t, "././@PaxHeader", 'x', 0644, 0, 0, (int64_t)paxlen, st->st_mtime,
			   NULL, 0, 0);
		out_write(t, pax, paxlen);
		if (paxlen % BLOCK)
			out_write(t, zero, BLOCK - paxlen % BLOCK);
	}
	header_put(t, name, type, st->st_mode, st->st_uid, st->st_gid, size, st->st_mtime, link,
		   major(st->st_rdev), minor(st->st_rdev));
}

static int names_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int file_put(struct tar_out *t, int dirfd, const char *base, const char *path,
		    const struct stat *st, const struct xattr *xattrs, size_t nx)
{
	_cleanup_close_ int fd = openat(dirfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	unsigned char *buf;
	int64_t left = st->st_size;

	if (fd < 0)
		return err_set(t->err, errno, "cannot read %s", path);
	entry_put(t, path, '0', st, st->st_size, NULL, xattrs, nx);
	buf = xmalloc(IO_CHUNK);
	while (left > 0 && !t->failed) {
		ssize_t n = read(fd, buf, left > IO_CHUNK ? IO_CHUNK : (size_t)left);

		if (n <= 0) {
			/* Shrunk while read (a running container): pad with zeros. */
			memset(buf, 0, IO_CHUNK);
			n = left > IO_CHUNK ? IO_CHUNK : (ssize_t)left;
		}
		out_write(t, buf, (size_t)n);
		left -= n;
	}
	if (st->st_size % BLOCK) {
		memset(buf, 0, BLOCK);
		out_write(t, buf, BLOCK - (size_t)(st->st_size % BLOCK));
	}
	free(buf);
	return t->failed ? -1 : 0;
}

/* The xattrs a layer carries from the upper dir: file capabilities and user.*. */
static size_t xattrs_read(int dirfd, const char *base, bool is_link, struct xattr *x)
{
	char list[4096], proc[64];
	ssize_t len;
	size_t n = 0;
	_cleanup_close_ int fd = -1;

	if (is_link)
		return 0;
	fd = openat(dirfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_PATH);
	if (fd < 0)
		return 0;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	len = listxattr(proc, list, sizeof(list));
	for (ssize_t off = 0; len > 0 && off < len && n < XATTRS_MAX;
	     off += (ssize_t)strlen(list + off) + 1) {
		const char *name = list + off;
		char val[XATTR_VALUE_MAX];
		ssize_t vlen;

		if (!layers_xattr_allowed(name) || strlen(name) >= sizeof(x[n].name))
			continue;
		vlen = getxattr(proc, name, val, sizeof(val));
		if (vlen < 0)
			continue;
		snprintf(x[n].name, sizeof(x[n].name), "%s", name);
		x[n].value = xmalloc((size_t)vlen + 1);
		memcpy(x[n].value, val, (size_t)vlen);
		x[n].len = (size_t)vlen;
		n++;
	}
	return n;
}

static int dir_put(struct tar_out *t, int dirfd, const char *prefix);

static int one_put(struct tar_out *t, int dirfd, const char *base, const char *prefix)
{
	_cleanup_free_ char *path = xasprintf("%s%s", prefix, base);
	struct xattr xattrs[XATTRS_MAX];
	size_t nx = 0;
	struct stat st;
	char link[PATH_MAX];
	ssize_t llen;
	int ret = 0;

	if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : err_set(t->err, errno, "cannot stat %s", path);
	if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) {
		/* overlayfs's whiteout: the file is deleted in this layer. */
		_cleanup_free_ char *wh = xasprintf("%s.wh.%s", prefix, base);
		struct stat empty = st;

		empty.st_mode = S_IFREG | 0644;
		empty.st_rdev = 0;
		entry_put(t, wh, '0', &empty, 0, NULL, NULL, 0);
		return t->failed ? -1 : 0;
	}
	nx = xattrs_read(dirfd, base, S_ISLNK(st.st_mode), xattrs);
	if (S_ISDIR(st.st_mode)) {
		_cleanup_free_ char *dirpath = xasprintf("%s/", path);
		char opaque[2] = "";
		_cleanup_close_ int fd =
			openat(dirfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

		entry_put(t, dirpath, '5', &st, 0, NULL, xattrs, nx);
		if (fd < 0) {
			ret = err_set(t->err, errno, "cannot open %s", path);
			goto out;
		}
		/* What a container wrote is the user's: a tree nested deep enough would
		 * overflow this thread's stack, one frame per level. */
		if (t->depth >= LAYERS_DEPTH_MAX) {
			ret = err_input(t->err, 422, "upper",
					"directories nest more than %d deep, which a layer cannot "
					"hold (at %.64s...)",
					LAYERS_DEPTH_MAX, path);
			goto out;
		}
		if (fgetxattr(fd, "trusted.overlay.opaque", opaque, 1) == 1 && opaque[0] == 'y') {
			_cleanup_free_ char *opq = xasprintf("%s.wh..wh..opq", dirpath);
			struct stat empty = st;

			empty.st_mode = S_IFREG | 0644;
			entry_put(t, opq, '0', &empty, 0, NULL, NULL, 0);
		}
		t->depth++;
		ret = dir_put(t, fd, dirpath);
		t->depth--;
		goto out;
	}
	if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
		for (size_t i = 0; i < t->nseen; i++) {
			if (t->seen[i].dev == st.st_dev && t->seen[i].ino == st.st_ino) {
				entry_put(t, path, '1', &st, 0, t->seen[i].path, NULL, 0);
				goto out;
			}
		}
		if (t->nseen == t->capseen) {
			t->capseen = t->capseen ? t->capseen * 2 : 64;
			t->seen = xrealloc(t->seen, t->capseen * sizeof(*t->seen));
		}
		t->seen[t->nseen++] = (struct inode_seen){st.st_dev, st.st_ino, xstrdup(path)};
	}
	if (S_ISREG(st.st_mode)) {
		ret = file_put(t, dirfd, base, path, &st, xattrs, nx);
	} else if (S_ISLNK(st.st_mode)) {
		llen = readlinkat(dirfd, base, link, sizeof(link) - 1);
		if (llen < 0) {
			ret = err_set(t->err, errno, "cannot read link %s", path);
			goto out;
		}
		link[llen] = '\0';
		entry_put(t, path, '2', &st, 0, link, NULL, 0);
	} else if (S_ISFIFO(st.st_mode)) {
		entry_put(t, path, '6', &st, 0, NULL, xattrs, nx);
	} else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
		entry_put(t, path, S_ISCHR(st.st_mode) ? '3' : '4', &st, 0, NULL, xattrs, nx);
	}
	/* Sockets are not kept: they mean nothing without their process. */
out:
	layers_xattrs_free(xattrs, &nx);
	return ret < 0 || t->failed ? -1 : 0;
}

/* Every entry of the directory dirfd, in name order, with paths under prefix. */
static int dir_put(struct tar_out *t, int dirfd, const char *prefix)
{
	int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	int ret = 0;

	if (d == NULL) {
		if (fd >= 0)
			close(fd);
		return err_set(t->err, errno, "cannot read %s", prefix);
	}
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 32;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xstrdup(e->d_name);
	}
	closedir(d);
	if (n > 1)
		qsort(names, n, sizeof(*names), names_cmp);
	for (size_t i = 0; i < n; i++) {
		if (ret == 0 && one_put(t, dirfd, names[i], prefix) < 0)
			ret = -1;
		free(names[i]);
	}
	free(names);
	return ret;
}

/*
 * Write the overlay upper directory upper as a gzip'd tar layer into the new file
 * path: overlay whiteouts become ".wh.X" entries, opaque directories get a
 * ".wh..wh..opq" entry, hard links within the layer stay links. On success the
 * layer's digest (of the gzip file), diff_id (of the tar) and size are filled in.
 * Returns 0 or -1 with err.
 */
int layers_tar_write(const char *upper, const char *path, char *digest, char *diff_id,
		     int64_t *size, struct kerr *err)
{
	struct tar_out t = {.err = err};
	_cleanup_close_ int root = open(upper, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	unsigned char zero[BLOCK * 2] = {0};
	int ret;

	if (root < 0)
		return err_set(err, errno, "cannot open %s", upper);
	t.fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (t.fd < 0)
		return err_set(err, errno, "cannot create %s", path);
	/* Blobs are for the agents and the controller (root) only: an image's files may
	 * hold secrets, and no other user of a host has a reason to read them. */
	fchmod(t.fd, 0600);
	/* 15 + 16: a gzip wrapper; level 6 is gzip's own default. */
	if (deflateInit2(&t.zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
		close(t.fd);
		return err_set(err, 0, "cannot start gzip");
	}
	t.out = xmalloc(IO_CHUNK);
	t.blob_hash = layers_hash_new();
	t.tar_hash = layers_hash_new();
	ret = dir_put(&t, root, "");
	if (ret == 0) {
		out_write(&t, zero, sizeof(zero));
		t.zs.next_in = NULL;
		t.zs.avail_in = 0;
		out_flush(&t, Z_FINISH);
	}
	deflateEnd(&t.zs);
	if (ret == 0 && !t.failed && fsync(t.fd) < 0)
		ret = err_set(err, errno, "cannot write the layer");
	close(t.fd);
	layers_hash_end(t.blob_hash, digest);
	layers_hash_end(t.tar_hash, diff_id);
	*size = t.compressed;
	for (size_t i = 0; i < t.nseen; i++)
		free(t.seen[i].path);
	free(t.seen);
	free(t.out);
	if (ret < 0 || t.failed) {
		unlink(path); /* no half-written layer is left behind */
		return -1;
	}
	return 0;
}

/* ---- writing blobs ------------------------------------------------------------------ */

static int tmp_blob_path(const char *shared, char *out, size_t len, struct kerr *err)
{
	char dir[PATH_MAX], rhex[17];
	unsigned char rnd[8];

	snprintf(dir, sizeof(dir), "%s/oci/blobs/sha256", shared);
	int ret = mkdir_p(dir, 0700);

	if (ret < 0)
		return err_set(err, -ret, "cannot create %s", dir);
	random_bytes(rnd, sizeof(rnd));
	hex_encode(rnd, sizeof(rnd), rhex);
	snprintf(out, len, "%s/.agent-tmp-%s", dir, rhex);
	return 0;
}

/*
 * Put the file tmp (written by this agent in the blob directory) into the store as
 * the blob digest: it is hashed again from disk first, and a blob already there with
 * that digest is kept. tmp is gone afterwards either way. Returns 0 or -1 with err.
 */
static int blob_commit(const char *shared, const char *tmp, const char *digest, struct kerr *err)
{
	char path[PATH_MAX], got[72];

	if (layers_file_hash(tmp, got, NULL, err) < 0) {
		unlink(tmp);
		return -1;
	}
	if (strcmp(got, digest) != 0) {
		unlink(tmp);
		return err_set(err, 0, "the blob written for %.19s reads back as %.19s", digest,
			       got);
	}
	layers_blob_path(shared, digest, path, sizeof(path));
	if (layers_file_hash(path, got, NULL, NULL) == 0 && strcmp(got, digest) == 0) {
		unlink(tmp);
		return 0;
	}
	if (rename(tmp, path) < 0) {
		int e = errno;

		unlink(tmp);
		return err_set(err, e, "cannot store blob %.19s", digest);
	}
	return 0;
}

/* Store len bytes as a blob; its digest into digest (72 bytes). */
int layers_blob_write(const char *shared, const void *data, size_t len, char *digest,
		      struct kerr *err)
{
	char tmp[PATH_MAX];
	unsigned char md[32];
	int ret;

	sha256(data, len, md);
	memcpy(digest, "sha256:", 7);
	hex_encode(md, 32, digest + 7);
	if (tmp_blob_path(shared, tmp, sizeof(tmp), err) < 0)
		return -1;
	ret = file_write_atomic(tmp, data, len, 0600);
	if (ret < 0)
		return err_set(err, -ret, "cannot write %s", tmp);
	chmod(tmp, 0600);
	return blob_commit(shared, tmp, digest, err);
}

/* A layer media type for an OCI manifest: Docker's names mapped to OCI's. */
static const char *layer_media_type(const char *mt)
{
	if (strcmp(mt, MT_DOCKER_LAYER) == 0)
		return MT_OCI_LAYER_GZIP;
	if (strcmp(mt, MT_DOCKER_TAR) == 0)
		return MT_OCI_LAYER_TAR;
	return mt;
}

static struct json_object *descriptor(const char *mt, const char *digest, int64_t size)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "mediaType", json_object_new_string(mt));
	json_object_object_add(d, "digest", json_object_new_string(digest));
	json_object_object_add(d, "size", json_object_new_int64(size));
	return d;
}

/*
 * Commit: pack the overlay upper directory upper as a new top layer of img and store
 * the layer, a new config (img's, with the layer's diff_id and a history entry that
 * says comment) and a new OCI manifest in the shared store. The digests and sizes
 * land in *out. Returns 0 or -1 with err.
 */
int layers_commit(const char *shared, const char *upper, const struct oci_image *img,
		  const char *comment, struct oci_commit *out, struct kerr *err)
{
	struct json_object *config = NULL, *rootfs, *diff_ids, *history, *h, *manifest, *layers;
	char tmp[PATH_MAX], created[32];
	const char *text;
	time_t now = time(NULL);
	struct tm tm;
	int ret = -1;

	memset(out, 0, sizeof(*out));
	if (tmp_blob_path(shared, tmp, sizeof(tmp), err) < 0)
		return -1;
	if (layers_tar_write(upper, tmp, out->layer, out->diff_id, &out->layer_size, err) < 0) {
		unlink(tmp);
		return err_prefix(err, "packing the writable layer: ");
	}
	if (blob_commit(shared, tmp, out->layer, err) < 0)
		return -1;

	strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
	if (json_object_deep_copy(img->config, &config, NULL) < 0)
		fatalx("out of memory");
	json_object_object_add(config, "created", json_object_new_string(created));
	if (!json_object_object_get_ex(config, "rootfs", &rootfs) ||
	    !json_object_is_type(rootfs, json_type_object)) {
		rootfs = json_object_new_object();
		json_object_object_add(rootfs, "type", json_object_new_string("layers"));
		json_object_object_add(config, "rootfs", rootfs);
	}
	if (!json_object_object_get_ex(rootfs, "diff_ids", &diff_ids) ||
	    !json_object_is_type(diff_ids, json_type_array)) {
		diff_ids = json_object_new_array();
		json_object_object_add(rootfs, "diff_ids", diff_ids);
	}
	json_object_array_add(diff_ids, json_object_new_string(out->diff_id));
	if (!json_object_object_get_ex(config, "history", &history) ||
	    !json_object_is_type(history, json_type_array)) {
		history = json_object_new_array();
		json_object_object_add(config, "history", history);
	}
	h = json_object_new_object();
	json_object_object_add(h, "created", json_object_new_string(created));
	json_object_object_add(h, "created_by", json_object_new_string("kumo commit"));
	json_object_object_add(h, "comment", json_object_new_string(comment));
	json_object_array_add(history, h);
	text = json_object_to_json_string_ext(config, JSON_C_TO_STRING_PLAIN |
							      JSON_C_TO_STRING_NOSLASHESCAPE);
	out->config_size = (int64_t)strlen(text);
	if (layers_blob_write(shared, text, strlen(text), out->config, err) < 0)
		goto done;

	manifest = json_object_new_object();
	json_object_object_add(manifest, "schemaVersion", json_object_new_int(2));
	json_object_object_add(manifest, "mediaType", json_object_new_string(MT_OCI_MANIFEST));
	json_object_object_add(manifest, "config",
			       descriptor(MT_OCI_CONFIG, out->config, out->config_size));
	layers = json_object_new_array();
	out->size = out->config_size + out->layer_size;
	for (size_t i = 0; i < img->nlayers; i++) {
		json_object_array_add(layers,
				      descriptor(layer_media_type(img->layers[i].media_type),
						 img->layers[i].digest, img->layers[i].size));
		out->size += img->layers[i].size > 0 ? img->layers[i].size : 0;
	}
	json_object_array_add(layers, descriptor(MT_OCI_LAYER_GZIP, out->layer, out->layer_size));
	json_object_object_add(manifest, "layers", layers);
	text = json_object_to_json_string_ext(manifest, JSON_C_TO_STRING_PLAIN |
								JSON_C_TO_STRING_NOSLASHESCAPE);
	out->manifest_size = (int64_t)strlen(text);
	out->size += out->manifest_size;
	ret = layers_blob_write(shared, text, strlen(text), out->manifest, err);
	json_object_put(manifest);
done:
	json_object_put(config);
	return ret;
}
