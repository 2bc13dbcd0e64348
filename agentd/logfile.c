/*
 * logfile.c - output logs bounded by size: a container's console.log (the shim writes
 * it) and a VM's serial console.log (QEMU appends to it, the agent trims it).
 *
 * A log is PATH and its older generations PATH.1 .. PATH.(files-1), each at most
 * max_bytes, so it never holds more than files x max_bytes. Readers speak of logical
 * offsets, bytes since the log began, so a follower goes on across a rotation: the
 * side file PATH.offsets says where each generation begins, one "INODE OFFSET" line
 * per generation, newest first. A generation is found by the inode of the file a
 * reader opened, so a rename between the reader's open and its read of PATH.offsets
 * cannot pair the wrong offset with a file.
 *
 * Two writers:
 *   - logfile_open()/logfile_write(): the one writer of the file (the shim, which
 *     reads the container's output from a pipe). It rotates before a write would pass
 *     the cap, so each file stays within it exactly. The new file is made under
 *     PATH.1 and swapped with PATH atomically (RENAME_EXCHANGE): PATH always exists.
 *   - logfile_trim(): for a file another process appends to with O_APPEND (QEMU's
 *     serial chardev): past the cap, it copies PATH to PATH.1 and truncates PATH, and
 *     the appender goes on at offset 0. What the appender writes between the copy and
 *     the truncation is lost: microseconds, as the copy is done in the kernel.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define GENS_MAX     (LOGFILE_FILES_MAX + 2)
#define READ_RETRIES 5

struct gen {
	uint64_t ino;
	int64_t offset;
};

/* One generation a reader opened: its fd, where it begins and its size. */
struct segment {
	int fd;
	int64_t offset, size;
};

static char *gen_path(const char *path, int i)
{
	return i == 0 ? xstrdup(path) : xasprintf("%s.%d", path, i);
}

static size_t gens_read(const char *path, struct gen *gens)
{
	_cleanup_free_ char *p = xasprintf("%s.offsets", path), *text = NULL;
	unsigned long long ino;
	long long off;
	size_t n = 0;
	int used;

	if (file_read_all(p, 4096, &text, NULL) < 0)
		return 0;
	for (const char *s = text;
	     n < GENS_MAX && sscanf(s, "%llu %lld%n", &ino, &off, &used) == 2 && off >= 0;
	     s += used)
		gens[n++] = (struct gen){ino, off};
	return n;
}

/*
 * Replace PATH.offsets, without fsyncs: it describes files nobody fsyncs (QEMU's
 * appends, the trim's copy and truncation, the shim's writes), so after a power cut it
 * could only be durable about bytes that are not; a reader that finds an entry missing
 * or stale starts at the oldest byte kept (segments_open()). The rename still shows a
 * reader the old file or the new one whole. Its two fsyncs, on the agent's loop at
 * every trim (and in the shim, between two reads of the container's output), were the
 * largest wait there: 22 ms median on a loaded host.
 */
static int gens_write(const char *path, const struct gen *gens, size_t n)
{
	_cleanup_free_ char *p = xasprintf("%s.offsets", path);
	char text[GENS_MAX * 48];
	size_t len = 0;

	for (size_t i = 0; i < n && i < GENS_MAX; i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len, "%llu %lld\n",
					(unsigned long long)gens[i].ino, (long long)gens[i].offset);
	return file_write_replace(p, text, len, 0600);
}

static bool gen_find(const struct gen *gens, size_t n, uint64_t ino, int64_t *offset)
{
	for (size_t i = 0; i < n; i++) {
		if (gens[i].ino == ino) {
			*offset = gens[i].offset;
			return true;
		}
	}
	return false;
}

/* gens with (ino, offset) first and any older entry for ino dropped; at most keep. */
static size_t gens_push(struct gen *gens, size_t n, uint64_t ino, int64_t offset, size_t keep)
{
	struct gen out[GENS_MAX];
	size_t m = 0;

	out[m++] = (struct gen){ino, offset};
	for (size_t i = 0; i < n && m < keep && m < GENS_MAX; i++)
		if (gens[i].ino != ino)
			out[m++] = gens[i];
	memcpy(gens, out, m * sizeof(*gens));
	return m;
}

/* PATH.(files-1) goes, PATH.i becomes PATH.(i+1): PATH.1 is free. */
static void chain_shift(const char *path, int files)
{
	for (int i = files - 1; i >= 1; i--) {
		_cleanup_free_ char *from = gen_path(path, i), *to = gen_path(path, i + 1);

		if (i == files - 1)
			unlink(from);
		else
			rename(from, to);
	}
}

/*
 * Open (or create) the log at path for appending, capped at max_bytes per file and
 * files generations (LOGFILE_FILES_MAX at most). Returns 0, or -1 with errno set.
 * lf owns the fd afterwards; logfile_close() releases it.
 */
int logfile_open(struct logfile *lf, const char *path, int64_t max_bytes, int files)
{
	struct gen gens[GENS_MAX];
	struct stat st;
	size_t n;

	snprintf(lf->path, sizeof(lf->path), "%s", path);
	lf->max_bytes = max_bytes < LOGFILE_MIN_BYTES ? LOGFILE_MIN_BYTES : max_bytes;
	lf->files = files < 2 ? 2 : files > LOGFILE_FILES_MAX ? LOGFILE_FILES_MAX : files;
	lf->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (lf->fd < 0)
		return -1;
	if (fstat(lf->fd, &st) < 0) {
		close(lf->fd);
		lf->fd = -1;
		return -1;
	}
	lf->size = st.st_size;
	n = gens_read(path, gens);
	if (!gen_find(gens, n, st.st_ino, &lf->offset)) {
		/* A new log, or one from before offsets were kept: it begins here. */
		lf->offset = 0;
		gens_write(path, &(struct gen){st.st_ino, 0}, 1);
	}
	return 0;
}

/* Start a new generation: the current file becomes PATH.1. Returns 0 or -1 (errno). */
static int logfile_rotate(struct logfile *lf)
{
	_cleanup_free_ char *next = gen_path(lf->path, 1);
	struct gen gens[GENS_MAX];
	struct stat cur, st;
	size_t n;
	int fd;

	if (fstat(lf->fd, &cur) < 0)
		return -1;
	chain_shift(lf->path, lf->files);
	fd = open(next, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || fstat(fd, &st) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	/* Offsets first: whoever opens the new file after the swap finds its own. */
	n = gens_read(lf->path, gens);
	n = gens_push(gens, n, cur.st_ino, lf->offset, GENS_MAX);
	n = gens_push(gens, n, st.st_ino, lf->offset + lf->size, (size_t)lf->files + 1);
	gens_write(lf->path, gens, n);
	if (renameat2(AT_FDCWD, next, AT_FDCWD, lf->path, RENAME_EXCHANGE) < 0) {
		/* A file system without the exchange: PATH is missing for a moment. */
		_cleanup_free_ char *tmp = xasprintf("%s.rotating", lf->path);

		if (rename(lf->path, tmp) < 0 || rename(next, lf->path) < 0 ||
		    rename(tmp, next) < 0) {
			close(fd);
			return -1;
		}
	}
	close(lf->fd);
	lf->fd = fd;
	lf->offset += lf->size;
	lf->size = 0;
	return 0;
}

/*
 * Append len bytes of buf, rotating first wherever they would pass the cap (a write
 * is split so that no file exceeds it). Returns 0, or -1 with errno when the file
 * cannot be written (the bytes are then dropped: output never blocks on its log).
 */
int logfile_write(struct logfile *lf, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		int64_t room = lf->max_bytes - lf->size;
		ssize_t n;

		if (room <= 0) {
			if (logfile_rotate(lf) < 0)
				return -1;
			continue;
		}
		n = write(lf->fd, p, (size_t)room < len ? (size_t)room : len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
		lf->size += n;
	}
	return 0;
}

/* Logical offset of the end of what lf holds: where the next byte will be. */
int64_t logfile_end(const struct logfile *lf)
{
	return lf->offset + lf->size;
}

void logfile_close(struct logfile *lf)
{
	if (lf->fd >= 0)
		close(lf->fd);
	lf->fd = -1;
}

/*
 * Trim the log at path, which another process appends to (O_APPEND), once it holds
 * more than max_bytes: its bytes go to a new PATH.1 (the older generations shift, at
 * most files in all) and PATH is truncated. The copy is in the kernel
 * (copy_file_range) and at most a little over max_bytes, and nothing is fsynced
 * (gens_write()): cheap enough for the loop, where the console reader runs too, so
 * neither sees the other half done. Returns 1
 * when trimmed, 0 when within the cap (or no file), -1 with errno on failure.
 */
int logfile_trim(const char *path, int64_t max_bytes, int files)
{
	_cleanup_free_ char *next = gen_path(path, 1);
	_cleanup_close_ int fd = -1, out = -1;
	struct gen gens[GENS_MAX];
	struct stat st, ost;
	int64_t offset, copied = 0;
	ssize_t n;
	size_t ngens;

	files = files < 2 ? 2 : files > LOGFILE_FILES_MAX ? LOGFILE_FILES_MAX : files;
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1;
	if (fstat(fd, &st) < 0)
		return -1;
	if (st.st_size <= max_bytes)
		return 0;
	ngens = gens_read(path, gens);
	if (!gen_find(gens, ngens, st.st_ino, &offset))
		offset = 0;
	chain_shift(path, files);
	out = open(next, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0 || fstat(out, &ost) < 0)
		return -1;
	/* To the end as it is now, which may be past st_size already. */
	while ((n = copy_file_range(fd, NULL, out, NULL, 1 << 20, 0)) > 0)
		copied += n;
	if (n < 0)
		return -1;
	ngens = gens_push(gens, ngens, ost.st_ino, offset, GENS_MAX);
	ngens = gens_push(gens, ngens, st.st_ino, offset + copied, (size_t)files + 1);
	gens_write(path, gens, ngens);
	if (ftruncate(fd, 0) < 0)
		return -1;
	return 1;
}

static void segments_close(struct segment *segs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (segs[i].fd >= 0)
			close(segs[i].fd);
}

/*
 * Open the generations of the log at path, oldest first, each with its logical
 * offset. The files are opened before PATH.offsets is read, so each one opened is
 * found there unless a rotation came in between: then try again. A log whose
 * current file has no entry (written before offsets were kept) begins at 0.
 */
static size_t segments_open(const char *path, struct segment *segs)
{
	struct gen gens[GENS_MAX];
	size_t n = 0, ngens;

	for (int attempt = 0; attempt < READ_RETRIES; attempt++) {
		struct segment tmp[LOGFILE_FILES_MAX];
		uint64_t ino[LOGFILE_FILES_MAX];
		size_t opened = 0;
		bool missing = false;

		for (int i = 0; i < LOGFILE_FILES_MAX; i++) {
			_cleanup_free_ char *p = gen_path(path, i);
			int fd = open(p, O_RDONLY | O_CLOEXEC);
			struct stat st;

			if (fd < 0)
				continue;
			if (fstat(fd, &st) < 0) {
				close(fd);
				continue;
			}
			tmp[opened] = (struct segment){fd, 0, st.st_size};
			ino[opened++] = st.st_ino;
		}
		ngens = gens_read(path, gens);
		n = 0;
		for (size_t i = 0; i < opened; i++) {
			if (gen_find(gens, ngens, ino[i], &tmp[i].offset)) {
				segs[n++] = tmp[i];
			} else if (i == 0 && ngens == 0) {
				segs[n++] = tmp[i]; /* a log from before offsets: from 0 */
			} else {
				missing = missing || i == 0;
				close(tmp[i].fd);
			}
		}
		if (!missing || attempt == READ_RETRIES - 1)
			break;
		segments_close(segs, n);
		n = 0;
	}
	/* Oldest first; a generation overlapping a newer one (a lost rename) is dropped. */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && segs[j].offset < segs[j - 1].offset; j--) {
			struct segment t = segs[j];

			segs[j] = segs[j - 1];
			segs[j - 1] = t;
		}
	for (size_t i = 0; i + 1 < n; i++) {
		if (segs[i].offset + segs[i].size > segs[i + 1].offset)
			segs[i].size = segs[i + 1].offset - segs[i].offset;
		if (segs[i].size < 0)
			segs[i].size = 0;
	}
	return n;
}

/* Read up to max bytes from logical offset from, across generations, into out. */
static void span_read(const struct segment *segs, size_t n, int64_t from, int64_t max,
		      struct logfile_span *out)
{
	out->data = xmalloc((size_t)max + 1);
	out->len = 0;
	out->offset = from;
	for (size_t i = 0; i < n && (int64_t)out->len < max; i++) {
		int64_t start = segs[i].offset, end = start + segs[i].size, at;

		if (end <= from + (int64_t)out->len)
			continue;
		at = from + (int64_t)out->len;
		if (at < start) {
			if (out->len > 0)
				break; /* a gap: what was lost is not papered over */
			at = out->offset = start;
		}
		while (at < end && (int64_t)out->len < max) {
			size_t want = (size_t)(end - at < max - (int64_t)out->len
						       ? end - at
						       : max - (int64_t)out->len);
			ssize_t r = pread(segs[i].fd, out->data + out->len, want, at - start);

			if (r <= 0)
				return;
			out->len += (size_t)r;
			at += r;
		}
	}
}

/* Where the last lines lines begin, going back at most max bytes from the end. */
static int64_t tail_start(const struct segment *segs, size_t n, int64_t lines, int64_t max)
{
	int64_t end = n ? segs[n - 1].offset + segs[n - 1].size : 0;
	int64_t floor = end > max ? end - max : 0, seen = 0;
	bool first = true;
	char buf[8192];

	if (n && floor < segs[0].offset)
		floor = segs[0].offset;
	if (lines <= 0)
		return floor;
	for (size_t s = n; s > 0; s--) {
		const struct segment *g = &segs[s - 1];
		int64_t pos = g->offset + g->size;

		while (pos > g->offset && pos > floor) {
			int64_t low = pos - (int64_t)sizeof(buf);
			ssize_t r;

			if (low < g->offset)
				low = g->offset;
			if (low < floor)
				low = floor;
			r = pread(g->fd, buf, (size_t)(pos - low), low - g->offset);
			if (r <= 0)
				return pos;
			for (ssize_t i = r - 1; i >= 0; i--) {
				if (buf[i] != '\n')
					continue;
				/* A final newline ends the last line rather than starting one. */
				if (first && low + i == end - 1) {
					first = false;
					continue;
				}
				first = false;
				if (++seen == lines)
					return low + i + 1;
			}
			first = false;
			pos = low;
		}
		/* A gap before this generation (one lost): the tail starts after it. */
		if (pos > floor && (s == 1 || segs[s - 2].offset + segs[s - 2].size < g->offset))
			return pos;
	}
	return floor;
}

/*
 * Read the log at path into out (out->data is the caller's to free):
 *   offset >= 0: from that logical offset (one lost to rotation: from the oldest
 *                byte kept; one past the end, a log made anew: from its start);
 *   lines > 0:   the last lines lines;
 *   otherwise:   the last max bytes when tail_bytes, else from the oldest byte kept;
 * at most max bytes in each case. out->end is the logical end of the log. A log that
 * does not exist reads as empty. Returns 0.
 */
int logfile_read(const char *path, int64_t offset, int64_t lines, bool tail_bytes, int64_t max,
		 struct logfile_span *out)
{
	struct segment segs[LOGFILE_FILES_MAX];
	size_t n = segments_open(path, segs);
	int64_t begin = n ? segs[0].offset : 0;
	int64_t from;

	out->end = n ? segs[n - 1].offset + segs[n - 1].size : 0;
	if (offset >= 0)
		from = offset > out->end ? (n ? segs[n - 1].offset : 0)
					 : (offset < begin ? begin : offset);
	else if (lines > 0 || tail_bytes)
		from = tail_start(segs, n, lines, max);
	else
		from = begin;
	span_read(segs, n, from, max, out);
	segments_close(segs, n);
	return 0;
}
