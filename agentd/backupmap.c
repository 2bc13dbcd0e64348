/*
 * backupmap.c - a stopped VM's disk read straight from its qcow2 chain for a backup.
 *
 * `qemu-img convert -O raw` into a work file and reading that back costs a second
 * write and read of every byte: as much as the backup's own work. A stopped VM's
 * disk holds still, so `qemu-img map` tells, per extent, whether it reads as zeros
 * or where in which file of the backing chain its bytes lie, and the backup reads
 * them from there (page cache permitting, once). A chain this cannot read exactly
 * (compressed or encrypted clusters, a format other than qcow2 or raw, a backing
 * file named by JSON) is refused, and the caller converts as before.
 *
 * backup_map_qcow2() maps an incremental backup's target (the qcow2 QEMU's job just
 * wrote: no backing file, plain clusters) from its own L1 and L2 tables, as qemu-img
 * map would print it, without starting qemu-img: a small incremental's whole agent
 * side is tens of milliseconds, and a qemu-img process a good part of them.
 * backup_incr_source() is that incremental's disk as the chunk pipeline reads it.
 *
 * Thread only: qemu-img runs and is waited for, files are read.
 */
#include "agentd.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "child.h"
#include "chunkpipe.h"
#include "chunkstore.h"
#include "json.h"
#include "util.h"

#define BACKUP_MAP_MAX_CHAIN 16

struct extent {
	int64_t start, length;
	int file;	/* index into fds; -1: reads as zeros */
	int64_t offset; /* in that file */
};

struct backup_map {
	int fds[BACKUP_MAP_MAX_CHAIN];
	char paths[BACKUP_MAP_MAX_CHAIN][PATH_MAX];
	int nfiles;
	struct extent *extents;
	size_t nextents;
	size_t cursor; /* reads go in order: where the last one ended */
	int64_t size;
};

static int qemu_img_json(char **argv, struct json_object **out, struct kerr *err)
{
	struct child_opts opts = {.argv = argv, .out_max = 64 << 20, .err_mode = CHILD_ERR_INHERIT};
	_cleanup_free_ char *text = NULL;
	int ret = child_run_wait(&opts, &text, err);

	if (ret < 0)
		return -1;
	if (ret != 0)
		return err_set(err, EIO, "qemu-img %s exited with %d", argv[1], ret);
	*out = json_tokener_parse(text);
	if (*out == NULL)
		return err_set(err, EBADMSG, "qemu-img %s printed no JSON", argv[1]);
	return 0;
}

void backup_map_free(struct backup_map *m)
{
	if (m == NULL)
		return;
	for (int i = 0; i < m->nfiles; i++)
		if (m->fds[i] >= 0)
			close(m->fds[i]);
	free(m->extents);
	free(m);
}

/* The chain's files, top first: each backing file as its parent names it, relative
 * names taken from the parent's directory as QEMU does. */
static int chain_open(struct backup_map *m, const char *disk, struct kerr *err)
{
	char *argv[] = {"qemu-img",   "info", "--backing-chain", "--output=json", "-U",
			(char *)disk, NULL};
	struct json_object *chain = NULL;
	int ret = 0;

	if (qemu_img_json(argv, &chain, err) < 0)
		return -1;
	if (!json_object_is_type(chain, json_type_array) || json_array_len(chain) == 0 ||
	    json_array_len(chain) > BACKUP_MAP_MAX_CHAIN) {
		ret = err_set(err, EBADMSG, "%s: an unexpected backing chain", disk);
		goto out;
	}
	for (size_t i = 0; i < json_array_len(chain); i++) {
		struct json_object *layer = json_object_array_get_idx(chain, i);
		const char *format = json_get_str(layer, "format", "");

		if ((strcmp(format, "qcow2") != 0 && strcmp(format, "raw") != 0) ||
		    json_get_bool(layer, "encrypted", false)) {
			ret = err_set(err, ENOTSUP, "%s: layer %zu is %s%s", disk, i, format,
				      json_get_bool(layer, "encrypted", false) ? " (encrypted)"
									       : "");
			goto out;
		}
		if (i == 0) {
			snprintf(m->paths[0], PATH_MAX, "%s", disk);
		} else {
			struct json_object *above = json_object_array_get_idx(chain, i - 1);
			/* QEMU's own resolution of the name when it gives one. */
			const char *name =
				json_get_str(above, "full-backing-filename",
					     json_get_str(above, "backing-filename", ""));
			char parent[PATH_MAX];

			if (name[0] == '\0' || !strncmp(name, "json:", 5)) {
				ret = err_set(err, ENOTSUP, "%s: backing file '%.64s'", disk, name);
				goto out;
			}
			snprintf(parent, sizeof(parent), "%s", m->paths[i - 1]);
			if (name[0] == '/')
				snprintf(m->paths[i], PATH_MAX, "%s", name);
			else
				snprintf(m->paths[i], PATH_MAX, "%s/%s", dirname(parent), name);
		}
		m->fds[i] = open(m->paths[i], O_RDONLY | O_CLOEXEC);
		m->nfiles = (int)i + 1;
		if (m->fds[i] < 0) {
			ret = err_set(err, errno, "cannot open %s: %s", m->paths[i],
				      strerror(errno));
			goto out;
		}
	}
	m->size = json_get_int(json_object_array_get_idx(chain, 0), "virtual-size", -1);
out:
	json_object_put(chain);
	return ret;
}

/*
 * Map disk (a stopped VM's qcow2 or raw file, with its backing chain) for reading.
 * Returns 0 with *out (free it with backup_map_free), or < 0 with err when the chain
 * cannot be read exactly this way: the caller then converts the disk instead.
 */
int backup_map_open(const char *disk, struct backup_map **out, struct kerr *err)
{
	char *argv[] = {"qemu-img", "map", "--output=json", "-U", (char *)disk, NULL};
	struct backup_map *m = xcalloc(1, sizeof(*m));
	struct json_object *map = NULL;
	int64_t at = 0;
	int ret;

	for (int i = 0; i < BACKUP_MAP_MAX_CHAIN; i++)
		m->fds[i] = -1;
	ret = chain_open(m, disk, err);
	if (ret == 0)
		ret = qemu_img_json(argv, &map, err);
	if (ret == 0 && !json_object_is_type(map, json_type_array))
		ret = err_set(err, EBADMSG, "%s: qemu-img map printed no list", disk);
	if (ret < 0)
		goto out;
	m->nextents = json_array_len(map);
	m->extents = xcalloc(m->nextents + 1, sizeof(*m->extents));
	for (size_t i = 0; i < m->nextents; i++) {
		struct json_object *x = json_object_array_get_idx(map, i);
		struct extent *e = &m->extents[i];
		int64_t depth = json_get_int(x, "depth", -1);

		e->start = json_get_int(x, "start", -1);
		e->length = json_get_int(x, "length", -1);
		e->file = -1;
		/* The extents must tile the disk in order, or this reader is wrong. */
		if (e->start != at || e->length <= 0) {
			ret = err_set(err, EBADMSG, "%s: qemu-img map has a gap at %lld", disk,
				      (long long)at);
			goto out;
		}
		at += e->length;
		if (json_get_bool(x, "data", false)) {
			struct json_object *offset;

			/* Data without a file offset is compressed: only QEMU reads it. */
			if (!json_object_object_get_ex(x, "offset", &offset) || depth < 0 ||
			    depth >= m->nfiles) {
				ret = err_set(err, ENOTSUP, "%s: compressed clusters at %lld", disk,
					      (long long)e->start);
				goto out;
			}
			e->file = (int)depth;
			e->offset = json_object_get_int64(offset);
		} else if (!json_get_bool(x, "zero", false)) {
			ret = err_set(err, ENOTSUP, "%s: an extent at %lld neither data nor zero",
				      disk, (long long)e->start);
			goto out;
		}
	}
	if (at != m->size) {
		ret = err_set(err, EBADMSG, "%s: qemu-img map covers %lld of %lld bytes", disk,
			      (long long)at, (long long)m->size);
		goto out;
	}
	*out = STEAL_POINTER(&m);
out:
	json_object_put(map);
	backup_map_free(m);
	return ret;
}

/* The extent holding off: from the cursor on, as reads go in order. */
static struct extent *extent_find(struct backup_map *m, int64_t off)
{
	if (m->cursor >= m->nextents || m->extents[m->cursor].start > off)
		m->cursor = 0;
	while (m->cursor < m->nextents &&
	       m->extents[m->cursor].start + m->extents[m->cursor].length <= off)
		m->cursor++;
	return m->cursor < m->nextents ? &m->extents[m->cursor] : NULL;
}

static int map_read(void *data, int64_t off, void *buf, size_t len, struct kerr *err)
{
	struct backup_map *m = data;
	char *p = buf;

	while (len > 0) {
		struct extent *e = extent_find(m, off);
		size_t n;

		if (e == NULL)
			return err_set(err, EIO, "read past the disk's end at %lld",
				       (long long)off);
		n = (size_t)(e->start + e->length - off) < len
			    ? (size_t)(e->start + e->length - off)
			    : len;
		if (e->file < 0) {
			memset(p, 0, n);
		} else {
			struct chunkpipe_file f = {.fd = m->fds[e->file],
						   .path = m->paths[e->file]};

			if (chunkpipe_file_read(&f, e->offset + (off - e->start), p, n, err) < 0)
				return -1;
		}
		p += n;
		off += (int64_t)n;
		len -= n;
	}
	return 0;
}

static bool map_hole(void *data, int64_t off, size_t len)
{
	struct backup_map *m = data;
	int64_t end = off + (int64_t)len;

	while (off < end) {
		struct extent *e = extent_find(m, off);

		if (e == NULL || e->file >= 0)
			return false;
		off = e->start + e->length;
	}
	return true;
}

/* Fill src to read m (its size, read and hole; the cancel fields are the caller's). */
void backup_map_source(struct backup_map *m, struct chunkpipe_source *src)
{
	src->size = m->size;
	src->read = map_read;
	src->hole = map_hole;
	src->data = m;
}

/* ---- an incremental's target, mapped from its qcow2 tables ------------------------- */

#define QCOW2_MAGIC	    0x514649fbu /* "QFI\xfb" */
#define QCOW2_OFFSET_MASK   0x00fffffffffffe00ULL
#define QCOW2_COMPRESSED    (1ULL << 62)
#define QCOW2_ZERO	    1ULL       /* version 3: the cluster reads as zeros */
#define QCOW2_COMPRESS_TYPE 8ULL       /* incompatible bit 3: matters to compressed clusters only */
#define QCOW2_L1_MAX	    (32 << 20) /* entries: QEMU's own limit (QCOW_MAX_L1_SIZE / 8) */

enum run_kind {
	RUN_ABSENT, /* unallocated: not in the target (the bitmap did not mark it) */
	RUN_ZERO,   /* allocated as zeros */
	RUN_DATA    /* plain data at offset in the file */
};

struct run {
	enum run_kind kind;
	int64_t start, length, offset;
};

/* The run as qemu-img map --output=json prints an extent (depth 0: no backing). */
static void run_flush(struct json_object *map, const struct run *r)
{
	struct json_object *x;

	if (r->length == 0)
		return;
	x = json_object_new_object();
	json_object_object_add(x, "start", json_object_new_int64(r->start));
	json_object_object_add(x, "length", json_object_new_int64(r->length));
	json_object_object_add(x, "depth", json_object_new_int(0));
	json_object_object_add(x, "present", json_object_new_boolean(r->kind != RUN_ABSENT));
	json_object_object_add(x, "zero", json_object_new_boolean(r->kind == RUN_ZERO));
	json_object_object_add(x, "data", json_object_new_boolean(r->kind == RUN_DATA));
	if (r->kind == RUN_DATA)
		json_object_object_add(x, "offset", json_object_new_int64(r->offset));
	json_object_array_add(map, x);
}

/* length bytes of the guest from r's end are of kind (at offset, for data): the run
 * grows when they continue it, else it is printed and a new one starts. */
static void run_add(struct json_object *map, struct run *r, enum run_kind kind, int64_t length,
		    int64_t offset)
{
	if (r->length > 0 && r->kind == kind &&
	    (kind != RUN_DATA || r->offset + r->length == offset)) {
		r->length += length;
		return;
	}
	run_flush(map, r);
	*r = (struct run){kind, r->start + r->length, length, offset};
}

/* Big-endian fields of the header at h + off (no alignment assumed). */
static uint32_t be32_at(const unsigned char *h, size_t off)
{
	uint32_t v;

	memcpy(&v, h + off, sizeof(v));
	return be32toh(v);
}

static uint64_t be64_at(const unsigned char *h, size_t off)
{
	uint64_t v;

	memcpy(&v, h + off, sizeof(v));
	return be64toh(v);
}

static int pread_all(int fd, void *buf, size_t len, int64_t off, const char *path, struct kerr *err)
{
	struct chunkpipe_file f = {.fd = fd, .path = path};

	return chunkpipe_file_read(&f, off, buf, len, err);
}

/*
 * Map path, a standalone qcow2, from its tables: 0 with *out (a JSON array of extents
 * tiling its virtual size, each {start, length, depth, present, zero, data[, offset]}
 * as qemu-img map --output=json gives them; free it with json_object_put) and *size
 * its virtual size; or < 0 with err: ENOTSUP for what this does not read (a backing
 * file, encryption, compressed clusters, an external data file, extended L2 entries,
 * an image marked dirty or corrupt: QEMU's view of those needs QEMU), EBADMSG for
 * tables that make no sense. Either way the caller may ask qemu-img map instead.
 */
int backup_map_qcow2(const char *path, struct json_object **out, int64_t *size, struct kerr *err)
{
	unsigned char h[104];
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ uint64_t *l1 = NULL, *l2 = NULL;
	struct json_object *map = NULL;
	struct run r = {RUN_ABSENT, 0, 0, 0};
	uint32_t version, cluster_bits, l1_size;
	uint64_t incompat = 0, virtual_size, l1_offset, l2_entries, cluster;
	struct stat sb;
	int64_t per_l1, need_l1;
	int ret = 0;

	if (fd < 0)
		return err_set(err, errno, "cannot read %s", path);
	if (fstat(fd, &sb) < 0 || pread_all(fd, h, sizeof(h), 0, path, err) < 0)
		return err_set(err, EBADMSG, "%s: no qcow2 header", path);
	version = be32_at(h, 4);
	cluster_bits = be32_at(h, 20);
	virtual_size = be64_at(h, 24);
	l1_size = be32_at(h, 36);
	l1_offset = be64_at(h, 40);
	if (version == 3)
		incompat = be64_at(h, 72);
	if (be32_at(h, 0) != QCOW2_MAGIC || (version != 2 && version != 3))
		return err_set(err, ENOTSUP, "%s: not a qcow2 of version 2 or 3", path);
	if (be64_at(h, 8) != 0 || be32_at(h, 32) != 0 || (incompat & ~QCOW2_COMPRESS_TYPE) != 0)
		return err_set(err, ENOTSUP,
			       "%s: a backing file, encryption or incompatible features (%#llx)",
			       path, (unsigned long long)incompat);
	if (cluster_bits < 9 || cluster_bits > 21 || virtual_size > INT64_MAX / 2 ||
	    l1_size > QCOW2_L1_MAX)
		return err_set(err, EBADMSG, "%s: a header out of bounds", path);
	cluster = 1ULL << cluster_bits;
	l2_entries = cluster / 8;
	per_l1 = (int64_t)(cluster * l2_entries);
	need_l1 = ((int64_t)virtual_size + per_l1 - 1) / per_l1;
	if (need_l1 > (int64_t)l1_size || (l1_offset & (cluster - 1)) != 0 ||
	    (need_l1 > 0 && l1_offset + (uint64_t)need_l1 * 8 > (uint64_t)sb.st_size))
		return err_set(err, EBADMSG, "%s: its L1 table does not cover the disk", path);
	l1 = xcalloc((size_t)need_l1 + 1, sizeof(*l1));
	l2 = xmalloc(cluster);
	if (need_l1 > 0 &&
	    pread_all(fd, l1, (size_t)need_l1 * 8, (int64_t)l1_offset, path, err) < 0)
		return -1;
	map = json_object_new_array();
	for (int64_t i = 0; i < need_l1; i++) {
		uint64_t l2_offset = be64toh(l1[i]) & QCOW2_OFFSET_MASK;
		int64_t base = i * per_l1;
		int64_t span = (int64_t)virtual_size - base < per_l1 ? (int64_t)virtual_size - base
								     : per_l1;

		if (l2_offset == 0) {
			run_add(map, &r, RUN_ABSENT, span, 0);
			continue;
		}
		if ((l2_offset & (cluster - 1)) != 0 ||
		    l2_offset + cluster > (uint64_t)sb.st_size) {
			ret = err_set(err, EBADMSG, "%s: L2 table %lld out of the file", path,
				      (long long)i);
			goto out;
		}
		if (pread_all(fd, l2, cluster, (int64_t)l2_offset, path, err) < 0) {
			ret = -1;
			goto out;
		}
		for (int64_t j = 0; j * (int64_t)cluster < span; j++) {
			uint64_t e = be64toh(l2[j]);
			uint64_t offset = e & QCOW2_OFFSET_MASK;
			int64_t len = span - j * (int64_t)cluster < (int64_t)cluster
					      ? span - j * (int64_t)cluster
					      : (int64_t)cluster;

			if (e & QCOW2_COMPRESSED) {
				ret = err_set(err, ENOTSUP, "%s: a compressed cluster at %lld",
					      path, (long long)(base + j * (int64_t)cluster));
				goto out;
			}
			if (version == 3 && (e & QCOW2_ZERO))
				run_add(map, &r, RUN_ZERO, len, 0);
			else if (e & QCOW2_ZERO)
				ret = err_set(err, ENOTSUP,
					      "%s: a reserved bit in a version 2 L2 entry", path);
			else if (offset == 0)
				run_add(map, &r, RUN_ABSENT, len, 0);
			else if ((offset & (cluster - 1)) != 0 ||
				 offset + (uint64_t)len > (uint64_t)sb.st_size)
				ret = err_set(err, EBADMSG, "%s: a cluster out of the file at %lld",
					      path, (long long)(base + j * (int64_t)cluster));
			else
				run_add(map, &r, RUN_DATA, len, (int64_t)offset);
			if (ret < 0)
				goto out;
		}
	}
	run_flush(map, &r);
	*out = STEAL_POINTER(&map);
	*size = (int64_t)virtual_size;
out:
	json_object_put(map);
	return ret;
}

/* ---- an incremental's disk: the parent's chunks with the target's clusters over them -- */

/* The extent at e: [*start, *end), and whether it holds data (else zeros); false when
 * the target has nothing there (the bitmap did not mark it). */
static bool extent_present(struct json_object *map, size_t e, int64_t *start, int64_t *end,
			   bool *data)
{
	struct json_object *x = json_object_array_get_idx(map, e), *present;

	*start = json_get_int(x, "start", 0);
	*end = *start + json_get_int(x, "length", 0);
	*data = json_get_bool(x, "data", false);
	return json_object_object_get_ex(x, "present", &present)
		       ? json_object_get_boolean(present)
		       : (*data || json_get_bool(x, "zero", false));
}

/* Does the target hold anything of [off, end)? (also for the caller: how many chunks
 * are touched) */
bool backup_incr_dirty(const struct backup_incr *bi, int64_t off, int64_t end)
{
	for (size_t e = 0; e < json_array_len(bi->map); e++) {
		int64_t xs, xe;
		bool data;

		if (extent_present(bi->map, e, &xs, &xe, &data) && xs < end && xe > off)
			return true;
	}
	return false;
}

/* chunkpipe: an untouched chunk is the parent's, named without reading it. */
static bool incr_named(void *data, int64_t index, char *hex)
{
	struct backup_incr *bi = data;
	int64_t off = index * CHUNKSTORE_CHUNK_SIZE;
	int64_t end =
		off + CHUNKSTORE_CHUNK_SIZE < bi->size ? off + CHUNKSTORE_CHUNK_SIZE : bi->size;
	const char *phex =
		json_object_get_string(json_object_array_get_idx(bi->pchunks, (size_t)index));

	/* A parent name that is no chunk name goes to incr_read, which says so. */
	if (backup_incr_dirty(bi, off, end) || phex == NULL || strlen(phex) != CHUNKSTORE_HEX_LEN)
		return false;
	snprintf(hex, CHUNKSTORE_HEX_LEN + 1, "%s", phex);
	return true;
}

/* chunkpipe: a touched chunk, the parent's bytes with the dirty clusters over them. */
static int incr_read(void *data, int64_t off, void *buf, size_t len, struct kerr *err)
{
	struct backup_incr *bi = data;
	const char *phex = json_object_get_string(
		json_object_array_get_idx(bi->pchunks, (size_t)(off / CHUNKSTORE_CHUNK_SIZE)));
	int64_t end = off + (int64_t)len;
	size_t plen = 0;

	if (chunkstore_get_with(bi->store, bi->key, phex ? phex : "", buf, CHUNKSTORE_CHUNK_SIZE,
				&plen, err) < 0)
		return err_prefix(err, "the parent backup: ");
	if (plen != len)
		return err_set(err, EBADMSG, "the parent backup: a chunk of the wrong size");
	for (size_t e = 0; e < json_array_len(bi->map); e++) {
		struct json_object *offset;
		int64_t xs, xe, a, b;
		bool isdata;

		if (!extent_present(bi->map, e, &xs, &xe, &isdata))
			continue;
		a = xs > off ? xs : off;
		b = xe < end ? xe : end;
		if (a >= b)
			continue;
		/* Data the backup job wrote lies at offset in the target (never
		 * compressed: the job writes plain clusters); a cluster it marked zero
		 * reads as zeros. */
		if (!isdata) {
			memset((char *)buf + (a - off), 0, (size_t)(b - a));
		} else {
			struct chunkpipe_file f = {.fd = bi->fd, .path = bi->target};

			if (!json_object_object_get_ex(json_object_array_get_idx(bi->map, e),
						       "offset", &offset))
				return err_set(err, EBADMSG,
					       "%s: data at %lld without a file offset", bi->target,
					       (long long)xs);
			if (chunkpipe_file_read(&f, json_object_get_int64(offset) + (a - xs),
						(char *)buf + (a - off), (size_t)(b - a), err) < 0)
				return -1;
		}
		bi->dirty_bytes += (uint64_t)(b - a);
	}
	return 0;
}

/* Fill src (its size, read and named; the cancel fields and key are the caller's) to
 * read bi's disk: untouched chunks named as the parent's, touched ones rebuilt. */
void backup_incr_source(struct backup_incr *bi, struct chunkpipe_source *src)
{
	src->size = bi->size;
	src->read = incr_read;
	src->named = incr_named;
	src->hole = NULL;
	src->data = bi;
}
