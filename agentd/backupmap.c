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
 * Thread only: qemu-img runs and is waited for.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "child.h"
#include "chunkpipe.h"
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
