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
 * map would say it, without starting qemu-img: a small incremental's whole agent side
 * is tens of milliseconds, and a qemu-img process a good part of them. That file is
 * written by the VM's QEMU, so by whoever took it over: backup_target_open() opens it
 * once and safely, and the reader trusts nothing in it (its size must be the disk's,
 * no part of the file used twice, at most BACKUP_MAP_MAX_EXTENTS extents in a compact
 * sorted array). backup_incr_source() is that incremental's disk as the chunk
 * pipeline reads it.
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
#include "qcow2.h"
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
	bool (*cancelled)(void *data); /* the backup's cancel: kills a qemu-img under way */
	void *cancel_data;
};

static int qemu_img_json(const struct backup_map *m, char **argv, struct json_object **out,
			 struct kerr *err)
{
	struct child_opts opts = {.argv = argv,
				  .out_max = 64 << 20,
				  .err_mode = CHILD_ERR_INHERIT,
				  .cancelled = m->cancelled,
				  .cancel_data = m->cancel_data};
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

	if (qemu_img_json(m, argv, &chain, err) < 0)
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
 * cancelled(cancel_data) (may be NULL) is asked while qemu-img runs: true kills it (the
 * disk was written by the VM's QEMU, whose header could name a backing file that
 * never answers).
 */
int backup_map_open(const char *disk, bool (*cancelled)(void *data), void *cancel_data,
		    struct backup_map **out, struct kerr *err)
{
	char *argv[] = {"qemu-img", "map", "--output=json", "-U", (char *)disk, NULL};
	struct backup_map *m = xcalloc(1, sizeof(*m));
	struct json_object *map = NULL;
	int64_t at = 0;
	int ret;

	m->cancelled = cancelled;
	m->cancel_data = cancel_data;
	for (int i = 0; i < BACKUP_MAP_MAX_CHAIN; i++)
		m->fds[i] = -1;
	ret = chain_open(m, disk, err);
	if (ret == 0)
		ret = qemu_img_json(m, argv, &map, err);
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

#define QCOW2_OFFSET_MASK   0x00fffffffffffe00ULL
#define QCOW2_COMPRESSED    (1ULL << 62)
#define QCOW2_ZERO	    1ULL /* version 3: the cluster reads as zeros */
#define QCOW2_COMPRESS_TYPE 8ULL /* incompatible bit 3: matters to compressed clusters only */
/* L1 entries read at most (4 MiB of them: 256 TiB at 64 KiB clusters, 16 GiB at 512
 * bytes); a larger table is refused (the disk is then read whole). */
#define QCOW2_L1_READ_MAX (512 << 10)

void backup_extents_free(struct backup_extents *x)
{
	free(x->v);
	x->v = NULL;
	x->n = 0;
}

/* length bytes of the guest at start read as zeros (offset -1) or as the file's at
 * offset: they continue the last extent when they can, else start one. E2BIG past
 * BACKUP_MAP_MAX_EXTENTS, so no target makes the agent hold more than that. */
static int extent_add(struct backup_extents *x, size_t *cap, int64_t start, int64_t length,
		      int64_t offset, const char *path, struct kerr *err)
{
	struct backup_extent *last = x->n > 0 ? &x->v[x->n - 1] : NULL;

	if (last && last->start + last->length == start && (last->offset < 0) == (offset < 0) &&
	    (offset < 0 || last->offset + last->length == offset)) {
		last->length += length;
		return 0;
	}
	if (x->n >= BACKUP_MAP_MAX_EXTENTS)
		return err_set(err, E2BIG, "%s: more than %d extents", path,
			       BACKUP_MAP_MAX_EXTENTS);
	if (x->n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		x->v = xrealloc(x->v, *cap * sizeof(*x->v));
	}
	x->v[x->n++] = (struct backup_extent){start, length, offset};
	return 0;
}

static void put_be32(unsigned char *h, uint32_t v)
{
	v = htobe32(v);
	memcpy(h, &v, sizeof(v));
}

static void put_be64(unsigned char *h, uint64_t v)
{
	v = htobe64(v);
	memcpy(h, &v, sizeof(v));
}

static int pread_all(int fd, void *buf, size_t len, int64_t off, const char *path, struct kerr *err)
{
	struct chunkpipe_file f = {.fd = fd, .path = path};

	return chunkpipe_file_read(&f, off, buf, len, err);
}

/* A byte range of the file the tables use. */
struct used {
	uint64_t offset, length;
};

static int used_cmp(const void *a, const void *b)
{
	const struct used *x = a, *y = b;

	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Sort used and refuse any byte of the file used twice: QEMU never shares a cluster
 * between two L2 tables, two guest clusters or a table and data (no snapshots, no
 * internal sharing in a target it made). This is what bounds the work: every L2
 * table read and every data cluster is a different part of the file. */
static int used_disjoint(struct used *used, size_t n, const char *path, struct kerr *err)
{
	qsort(used, n, sizeof(*used), used_cmp);
	for (size_t i = 1; i < n; i++)
		if (used[i - 1].offset + used[i - 1].length > used[i].offset)
			return err_set(err, EBADMSG, "%s: file offset %llu used twice", path,
				       (unsigned long long)used[i].offset);
	return 0;
}

/* One pwrite of len bytes at off: 0, or -1 with errno (EIO for a short write, which
 * sets none). */
static int pwrite_whole(int fd, const void *buf, size_t len, off_t off)
{
	ssize_t n = pwrite(fd, buf, len, off);

	if (n == (ssize_t)len)
		return 0;
	if (n >= 0)
		errno = EIO;
	return -1;
}

/*
 * Open an incremental's target, path, for reading: it lies in a directory the VM's
 * QEMU owns, and a guest that took QEMU over may have put anything there. Opened
 * once, never through a symlink nor blocking on a FIFO, it must be a regular file
 * owner (QEMU's uid) owns; the map and every read then go through this fd, so the
 * file cannot be swapped between them. Returns the fd (the caller closes it), or < 0
 * with err.
 */

/*
 * An empty qcow2 (version 3, 64 KiB clusters, no backing file) of size bytes, as
 * `qemu-img create -f qcow2` lays it out: the header in cluster 0, the refcount table in
 * cluster 1, its one refcount block in cluster 2, the L1 table from cluster 3 (only its
 * entries' bytes written, as qemu-img does), refcount 1 for each of those clusters.
 * Unlike qemu-img's, its L2 tables are there from the start, empty, right after the
 * L1 table: each L1 entry points at one (flagged copied: its refcount is 1), and the
 * file is only extended over them (holes read as an empty table: nothing written). QEMU
 * then allocates no L2 table during the job, and an L2 table's allocation flushes the
 * file three times in a row (its refcount, the table, the L1 entry: qcow2's ordering),
 * each an fdatasync on the shared pool inside the incremental's job. At most
 * TARGET_L2_MAX tables (disks up to 256 GiB); a larger disk gets qemu-img's layout.
 */
#define TARGET_CLUSTER	   ((int64_t)1 << BACKUP_TARGET_CLUSTER_BITS)
#define TARGET_L1_MAX	   (TARGET_CLUSTER / 8) /* one cluster of L1: 4 TiB of disk */
#define TARGET_RT_OFFSET   (1 * TARGET_CLUSTER)
#define TARGET_RB_OFFSET   (2 * TARGET_CLUSTER)
#define TARGET_L1_OFFSET   (3 * TARGET_CLUSTER)
#define TARGET_HEADER_LEN  104
#define TARGET_L2_MAX	   512 /* 512 MiB of disk each; their refcounts fit one block */
#define QCOW2_OFLAG_COPIED (1ULL << 63)

int backup_target_create(const char *path, int64_t size, uid_t uid, gid_t gid, struct kerr *err)
{
	/* An L1 entry covers one L2 table's worth: cluster / 8 clusters. */
	int64_t per_l1 = TARGET_CLUSTER * (TARGET_CLUSTER / 8);
	int64_t l1 = (size + per_l1 - 1) / per_l1;
	unsigned char header[TARGET_HEADER_LEN] = {0};
	uint64_t rt = htobe64((uint64_t)TARGET_RB_OFFSET);
	_cleanup_free_ uint16_t *rb = NULL;
	_cleanup_free_ uint64_t *l1e = NULL;
	int64_t l1_clusters = (l1 * 8 + TARGET_CLUSTER - 1) / TARGET_CLUSTER;
	int64_t l2_first = 3 + l1_clusters;
	bool l2_made = l1 <= TARGET_L2_MAX;
	size_t nrb = 3 + (size_t)l1_clusters + (l2_made ? (size_t)l1 : 0);
	_cleanup_close_ int fd = -1;
	int ret = 0;

	if (size <= 0 || l1 > TARGET_L1_MAX)
		return err_set(err, EFBIG, "%s: no target made for a disk of %lld bytes", path,
			       (long long)size);
	memcpy(header, QCOW2_MAGIC, 4);
	put_be32(header + 4, 3);			   /* version */
	put_be32(header + 20, BACKUP_TARGET_CLUSTER_BITS); /* cluster_bits */
	put_be64(header + 24, (uint64_t)size);
	put_be32(header + 36, (uint32_t)l1); /* l1_size */
	put_be64(header + 40, TARGET_L1_OFFSET);
	put_be64(header + 48, TARGET_RT_OFFSET);
	put_be32(header + 56, 1);		   /* refcount_table_clusters */
	put_be32(header + 96, 4);		   /* refcount_order: 16-bit refcounts */
	put_be32(header + 100, TARGET_HEADER_LEN); /* header_length; no extensions follow */
	/* header, refcount table and block, L1, and the L2 tables if made */
	rb = xcalloc(nrb, sizeof(*rb));
	for (size_t i = 0; i < nrb; i++)
		rb[i] = htobe16(1);
	l1e = xcalloc((size_t)l1, sizeof(*l1e));
	for (int64_t i = 0; l2_made && i < l1; i++)
		l1e[i] = htobe64((uint64_t)((l2_first + i) * TARGET_CLUSTER) | QCOW2_OFLAG_COPIED);
	/* In QEMU's work directory, which QEMU's uid owns: never through a link, never
	 * over a file there. */
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(err, errno, "cannot make %s: %s", path, strerror(errno));
	if (pwrite_whole(fd, header, sizeof(header), 0) < 0 ||
	    pwrite_whole(fd, &rt, sizeof(rt), TARGET_RT_OFFSET) < 0 ||
	    pwrite_whole(fd, rb, nrb * sizeof(*rb), TARGET_RB_OFFSET) < 0 ||
	    pwrite_whole(fd, l1e, (size_t)l1 * 8, TARGET_L1_OFFSET) < 0 ||
	    (l2_made && ftruncate(fd, (off_t)((l2_first + l1) * TARGET_CLUSTER)) < 0))
		ret = err_set(err, errno, "cannot write %s: %s", path, strerror(errno));
	/* QEMU, as its own user, opens it for writing. */
	else if (fchown(fd, uid, gid) < 0)
		ret = err_set(err, errno, "cannot hand %s to the qemu user: %s", path,
			      strerror(errno));
	if (ret < 0)
		unlink(path);
	return ret;
}

int backup_target_open(const char *path, uid_t owner, struct kerr *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	struct stat sb;

	if (fd < 0)
		return err_set(err, errno, "cannot read %s: %s", path, strerror(errno));
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_uid != owner) {
		close(fd);
		return err_set(err, EPERM, "%s is not a file the VM's QEMU made", path);
	}
	return fd;
}

/*
 * Map fd (path, for messages), a standalone qcow2 that should be a size-byte disk,
 * from its tables into *out (free it with backup_extents_free): what of the disk it
 * holds, as qemu-img map would say. Returns 0, or < 0 with err and *out empty:
 * ERANGE when its virtual size is not size (the disk was resized, or the file lies);
 * ENOTSUP for what this does not read (a backing file, encryption, snapshots,
 * compressed clusters, an external data file, extended L2 entries, an image marked
 * dirty or corrupt: QEMU's view of those needs QEMU); E2BIG past
 * BACKUP_MAP_MAX_EXTENTS extents or QCOW2_L1_READ_MAX L1 entries; EBADMSG for a
 * header common/qcow2.c refuses (not qcow2 2 or 3 among others) and for tables that
 * make no sense; ENOTSUP too when want_cluster_bits (0: any) is not the
 * file's (QEMU makes an incremental's target with 64 KiB clusters, 16 bits: a smaller
 * one only multiplies the work, 12.5 s for a 1 TiB disk of 4 KiB ones, which a
 * cancel does not stop). The agent never asks qemu-img map of a target this refuses
 * (root's qemu-img would open what the file names): the disk is read whole instead.
 *
 * The file is written by the VM's QEMU, which a guest may have taken over: nothing in
 * it is trusted. The work is bounded by size (one L1 entry per L2 table's span, each
 * L2 table read once, refused when two uses share a byte of the file) and memory by
 * the two caps.
 */
int backup_map_qcow2(int fd, const char *path, int64_t size, unsigned want_cluster_bits,
		     struct backup_extents *out, struct kerr *err)
{
	_cleanup_free_ uint64_t *l1 = NULL, *l2 = NULL;
	_cleanup_free_ struct used *used = NULL;
	struct backup_extents x = {0};
	size_t cap = 0, nused = 0, used_cap;
	struct qcow2_header h;
	uint64_t l2_entries, cluster, fsize;
	struct stat sb;
	int64_t per_l1, need_l1;
	int ret = 0;
	off_t data;
	char why[256];

	*out = (struct backup_extents){0};
	/* 105 bytes: a version 3 header and its compression type byte. */
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size < 105)
		return err_set(err, EBADMSG, "%s: no qcow2 header", path);
	fsize = (uint64_t)sb.st_size;
	/* common/qcow2.c: magic, version 2 or 3, clusters of 512 B..2 MiB, no feature
	 * QEMU does not know, the header, its extensions and a backing file name within
	 * the first cluster. */
	if (qcow2_header_fd_read(fd, &h, why, sizeof(why)) < 0)
		return err_set(err, EBADMSG, "%s: %s", path, why);
	/* The compression type bit with no compression type field: QEMU refuses it. */
	if (h.backing[0] || h.crypt_method != 0 || (h.incompatible & ~QCOW2_COMPRESS_TYPE) != 0 ||
	    ((h.incompatible & QCOW2_COMPRESS_TYPE) && h.header_length < 105))
		return err_set(err, ENOTSUP,
			       "%s: a backing file, encryption or incompatible features (%#llx)",
			       path, (unsigned long long)h.incompatible);
	if (h.snapshots != 0)
		return err_set(err, ENOTSUP, "%s: internal snapshots", path);
	/* The cluster size sets the work per byte of disk: never a writer's choice. */
	if (want_cluster_bits && h.cluster_bits != want_cluster_bits)
		return err_set(err, ENOTSUP, "%s: clusters of %llu bytes, not %llu", path,
			       1ULL << h.cluster_bits, 1ULL << want_cluster_bits);
	/* The size first: all the work below is bounded by it. */
	if (size < 0 || h.virtual_size != (uint64_t)size)
		return err_set(err, ERANGE, "%s: a disk of %llu bytes, not %lld", path,
			       (unsigned long long)h.virtual_size, (long long)size);
	cluster = 1ULL << h.cluster_bits;
	l2_entries = cluster / 8;
	per_l1 = (int64_t)(cluster * l2_entries);
	need_l1 = (size + per_l1 - 1) / per_l1;
	if (need_l1 > QCOW2_L1_READ_MAX)
		return err_set(err, E2BIG, "%s: %lld L1 entries", path, (long long)need_l1);
	if (need_l1 > (int64_t)h.l1_size || (h.l1_offset & (cluster - 1)) != 0 ||
	    h.l1_offset > fsize || (uint64_t)need_l1 * 8 > fsize - h.l1_offset)
		return err_set(err, EBADMSG, "%s: its L1 table does not cover the disk", path);
	l1 = xcalloc((size_t)need_l1 + 1, sizeof(*l1));
	l2 = xmalloc(cluster);
	if (need_l1 > 0 &&
	    pread_all(fd, l1, (size_t)need_l1 * 8, (int64_t)h.l1_offset, path, err) < 0)
		return -1;

	/* The L2 tables: each in the file, none used twice, before any is read. */
	used_cap = (size_t)need_l1 + 2;
	used = xcalloc(used_cap, sizeof(*used));
	used[nused++] = (struct used){0, cluster}; /* the header */
	if (need_l1 > 0)
		used[nused++] = (struct used){h.l1_offset, (uint64_t)need_l1 * 8};
	for (int64_t i = 0; i < need_l1; i++) {
		uint64_t l2_offset = be64toh(l1[i]) & QCOW2_OFFSET_MASK;

		if (l2_offset == 0)
			continue;
		if ((l2_offset & (cluster - 1)) != 0 || cluster > fsize ||
		    l2_offset > fsize - cluster)
			return err_set(err, EBADMSG, "%s: L2 table %lld out of the file", path,
				       (long long)i);
		used[nused++] = (struct used){l2_offset, cluster};
	}
	if (used_disjoint(used, nused, path, err) < 0)
		return -1;

	for (int64_t i = 0; i < need_l1; i++) {
		uint64_t l2_offset = be64toh(l1[i]) & QCOW2_OFFSET_MASK;
		int64_t base = i * per_l1;
		int64_t span = size - base < per_l1 ? size - base : per_l1;

		if (l2_offset == 0)
			continue; /* not in the target */
		/* A table still wholly a hole (the agent made it; QEMU wrote none of it) is
		 * empty: not read, so a large disk's many untouched tables cost one lseek
		 * each, not 64 KiB of zeros. A file system without holes says data. */
		data = lseek(fd, (off_t)l2_offset, SEEK_DATA);
		if ((data < 0 && errno == ENXIO) ||
		    (data >= 0 && (uint64_t)data >= l2_offset + cluster))
			continue;
		if (pread_all(fd, l2, cluster, (int64_t)l2_offset, path, err) < 0) {
			ret = -1;
			goto out;
		}
		for (int64_t j = 0; j * (int64_t)cluster < span; j++) {
			uint64_t e = be64toh(l2[j]);
			uint64_t offset = e & QCOW2_OFFSET_MASK;
			int64_t at = base + j * (int64_t)cluster;
			int64_t len = span - j * (int64_t)cluster < (int64_t)cluster
					      ? span - j * (int64_t)cluster
					      : (int64_t)cluster;

			if (e & QCOW2_COMPRESSED)
				ret = err_set(err, ENOTSUP, "%s: a compressed cluster at %lld",
					      path, (long long)at);
			else if ((e & QCOW2_ZERO) && h.version != 3)
				ret = err_set(err, ENOTSUP,
					      "%s: a reserved bit in a version 2 L2 entry", path);
			else if ((offset & (cluster - 1)) != 0)
				/* QEMU calls the image corrupt, zero flag or not. */
				ret = err_set(err, EBADMSG, "%s: a misaligned cluster at %lld",
					      path, (long long)at);
			else if (e & QCOW2_ZERO)
				ret = extent_add(&x, &cap, at, len, -1, path, err);
			else if (offset == 0)
				continue; /* not in the target */
			else if (offset > fsize || (uint64_t)len > fsize - offset)
				ret = err_set(err, EBADMSG, "%s: a cluster out of the file at %lld",
					      path, (long long)at);
			else
				ret = extent_add(&x, &cap, at, len, (int64_t)offset, path, err);
			if (ret < 0)
				goto out;
		}
	}

	/* No two data extents (or one and a table) share a byte of the file. */
	for (size_t k = 0; k < x.n; k++) {
		if (x.v[k].offset < 0)
			continue;
		if (nused == used_cap) {
			used_cap *= 2;
			used = xrealloc(used, used_cap * sizeof(*used));
		}
		used[nused++] = (struct used){(uint64_t)x.v[k].offset, (uint64_t)x.v[k].length};
	}
	if (used_disjoint(used, nused, path, err) < 0) {
		ret = -1;
		goto out;
	}
	*out = x;
	x = (struct backup_extents){0};
out:
	backup_extents_free(&x);
	return ret;
}

/*
 * The same from `qemu-img map --output=json` of the target (map, a list of extents
 * tiling the disk in order, each {start, length, present, zero, data[, offset]}): 0
 * with *out, or < 0 with err (ERANGE: not a size-byte disk). Only for qemu-img map's
 * view of a file the agent made or trusts (unit_backupmap checks backup_map_qcow2
 * against it): never of an incremental's target.
 */
int backup_map_json(struct json_object *map, int64_t size, const char *path,
		    struct backup_extents *out, struct kerr *err)
{
	struct backup_extents x = {0};
	size_t cap = 0;
	int64_t at = 0;
	int ret = 0;

	*out = (struct backup_extents){0};
	if (!json_object_is_type(map, json_type_array))
		return err_set(err, EBADMSG, "%s: qemu-img map printed no list", path);
	for (size_t i = 0; i < json_array_len(map) && ret == 0; i++) {
		struct json_object *e = json_object_array_get_idx(map, i), *offset, *present;
		int64_t start = json_get_int(e, "start", -1),
			length = json_get_int(e, "length", -1);
		bool data = json_get_bool(e, "data", false);

		if (start != at || length < 0 || length > INT64_MAX - at) {
			ret = err_set(err, EBADMSG, "%s: qemu-img map has a gap at %lld", path,
				      (long long)at);
			break;
		}
		at += length;
		if (length == 0) /* an empty disk's one extent */
			continue;
		if (json_object_object_get_ex(e, "present", &present)
			    ? !json_object_get_boolean(present)
			    : !data && !json_get_bool(e, "zero", false))
			continue; /* not in the target */
		if (!data)
			ret = extent_add(&x, &cap, start, length, -1, path, err);
		else if (!json_object_object_get_ex(e, "offset", &offset) ||
			 json_object_get_int64(offset) < 0)
			ret = err_set(err, EBADMSG, "%s: data at %lld without a file offset", path,
				      (long long)start);
		else
			ret = extent_add(&x, &cap, start, length, json_object_get_int64(offset),
					 path, err);
	}
	if (ret == 0 && at != size)
		ret = err_set(err, ERANGE, "%s: a disk of %lld bytes, not %lld", path,
			      (long long)at, (long long)size);
	if (ret < 0) {
		backup_extents_free(&x);
		return ret;
	}
	*out = x;
	return 0;
}

/* ---- an incremental's disk: the parent's chunks with the target's clusters over them -- */

/* The first extent ending after off (n when none): a binary search, so each chunk's
 * lookups cost log n and the extents it overlaps, not a scan of them all. */
static size_t extent_after(const struct backup_extents *x, int64_t off)
{
	size_t lo = 0, hi = x->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (x->v[mid].start + x->v[mid].length <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Does the target hold anything of [off, end)? (also for the caller: how many chunks
 * are touched) */
bool backup_incr_dirty(const struct backup_incr *bi, int64_t off, int64_t end)
{
	size_t e = extent_after(bi->extents, off);

	return e < bi->extents->n && bi->extents->v[e].start < end;
}

/* Does the target hold every byte of [off, end) (data or zeros)? Then nothing of the
 * parent's chunk there is needed. The extents are sorted and never overlap. */
static bool incr_covered(const struct backup_extents *x, int64_t off, int64_t end)
{
	int64_t at = off;

	for (size_t e = extent_after(x, off); e < x->n && at < end && x->v[e].start <= at; e++)
		at = x->v[e].start + x->v[e].length;
	return at >= end;
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

/* chunkpipe: a touched chunk, the parent's bytes with the dirty clusters over them.
 * A chunk the target covers whole is read from the target alone: the parent's is
 * neither read nor checked (reading it back, decompressing and hashing it was most of
 * a small incremental's chunking: a 10 MiB write covers two of the three chunks it
 * touches). A parent chunk that cannot be read sets bi->parent_bad: the caller reads
 * the disk whole instead. */
static int incr_read(void *data, int64_t off, void *buf, size_t len, struct kerr *err)
{
	struct backup_incr *bi = data;
	const struct backup_extents *x = bi->extents;
	const char *phex = json_object_get_string(
		json_object_array_get_idx(bi->pchunks, (size_t)(off / CHUNKSTORE_CHUNK_SIZE)));
	int64_t end = off + (int64_t)len;
	size_t plen = 0;

	if (!incr_covered(x, off, end)) {
		bi->parent_reads++;
		if (chunkstore_get_with(bi->store, bi->key, phex ? phex : "", buf,
					CHUNKSTORE_CHUNK_SIZE, &plen, err) < 0 ||
		    (plen != len && err_set(err, EBADMSG, "a chunk of the wrong size") < 0)) {
			bi->parent_bad = true;
			snprintf(bi->parent_why, sizeof(bi->parent_why), "%s", err->msg);
			return err_prefix(err, "the parent backup: ");
		}
	}
	for (size_t e = extent_after(x, off); e < x->n && x->v[e].start < end; e++) {
		int64_t xs = x->v[e].start, xe = xs + x->v[e].length;
		int64_t a = xs > off ? xs : off;
		int64_t b = xe < end ? xe : end;

		/* Data the backup job wrote lies at offset in the target (never
		 * compressed: the job writes plain clusters); a cluster it marked zero
		 * reads as zeros. */
		if (x->v[e].offset < 0) {
			memset((char *)buf + (a - off), 0, (size_t)(b - a));
		} else {
			struct chunkpipe_file f = {.fd = bi->fd, .path = bi->target};

			if (chunkpipe_file_read(&f, x->v[e].offset + (a - xs),
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
