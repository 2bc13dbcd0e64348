/*
 * qcow2.c - a qcow2 image's header and header extensions, read without QEMU
 * (qcow2.h). The layout is QEMU's docs/interop/qcow2.txt: big-endian fields, a 72-byte
 * version 2 header or a version 3 one of header_length bytes, then extensions
 * {type, length, data padded to 8} up to an end marker, all before the backing file's
 * name and within the first cluster. The bounds are those QEMU's qcow2_open() applies.
 */
#include "qcow2.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define V2_HEADER_LEN	 72
#define V3_HEADER_LEN	 104
#define CLUSTER_BITS_MIN 9
#define CLUSTER_BITS_MAX 21

/* Header extension types. */
#define EXT_END		   0x00000000u
#define EXT_BACKING_FORMAT 0xe2792acau
#define EXT_DATA_FILE	   0x44415441u

/*
 * A name from the header is printable ASCII: it goes into logs and error messages, and
 * no image Kumo makes or accepts names its backing file otherwise.
 */
static bool name_ok(const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return false;
	return true;
}

/* Incompatible features: dirty, corrupt, external data file, compression type,
 * extended L2 entries. Any other bit makes QEMU refuse the image. */
#define INCOMPAT_DATA_FILE (1ull << 2)
#define INCOMPAT_KNOWN	   0x1full

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const unsigned char *p)
{
	return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/* Walk the extensions from offset to end, within the n bytes of buf: the backing
 * format and whether a data file is named. */
static int extensions_parse(const unsigned char *buf, size_t n, uint64_t offset, uint64_t end,
			    struct qcow2_header *h, char *why, size_t len)
{
	while (offset < end) {
		uint32_t type, ext_len;

		if (end - offset < 8) {
			snprintf(why, len, "a header extension runs past the first cluster");
			return -1;
		}
		if (offset + 8 > n) {
			snprintf(why, len, "its header extensions run past the first %zu bytes", n);
			return -1;
		}
		type = be32(buf + offset);
		ext_len = be32(buf + offset + 4);
		offset += 8;
		if (ext_len > end - offset) {
			snprintf(why, len, "a header extension runs past the first cluster");
			return -1;
		}
		if (ext_len > n - offset) {
			snprintf(why, len, "its header extensions run past the first %zu bytes", n);
			return -1;
		}
		switch (type) {
		case EXT_END:
			return 0;
		case EXT_BACKING_FORMAT:
			if (ext_len >= sizeof(h->backing_format) ||
			    !name_ok(buf + offset, ext_len)) {
				snprintf(why, len, "its backing format name is malformed");
				return -1;
			}
			memcpy(h->backing_format, buf + offset, ext_len);
			h->backing_format[ext_len] = '\0';
			break;
		case EXT_DATA_FILE:
			h->data_file = true;
			break;
		default:
			break; /* bitmaps, encryption, feature names: nothing checked needs them */
		}
		/* Data padded to 8 bytes; the padding may reach end exactly. */
		offset += ((uint64_t)ext_len + 7) & ~7ull;
	}
	return 0;
}

int qcow2_header_parse(const unsigned char *buf, size_t n, struct qcow2_header *h, char *why,
		       size_t len)
{
	uint64_t backing_offset, cluster_size, header_len, end;
	uint32_t backing_len;

	memset(h, 0, sizeof(*h));
	if (n < V2_HEADER_LEN || memcmp(buf, QCOW2_MAGIC, 4) != 0) {
		snprintf(why, len, "it is not a qcow2 image");
		return -1;
	}
	h->version = be32(buf + 4);
	backing_offset = be64(buf + 8);
	backing_len = be32(buf + 16);
	h->cluster_bits = be32(buf + 20);
	h->virtual_size = be64(buf + 24);
	h->crypt_method = be32(buf + 32);
	h->l1_size = be32(buf + 36);
	h->l1_offset = be64(buf + 40);
	h->snapshots = be32(buf + 60);
	if (h->version != 2 && h->version != 3) {
		snprintf(why, len, "it is qcow2 version %u, not 2 or 3", h->version);
		return -1;
	}
	if (h->cluster_bits < CLUSTER_BITS_MIN || h->cluster_bits > CLUSTER_BITS_MAX) {
		snprintf(why, len, "its cluster size (2^%u) is out of range", h->cluster_bits);
		return -1;
	}
	cluster_size = 1ull << h->cluster_bits;
	header_len = V2_HEADER_LEN;
	if (h->version == 3) {
		if (n < V3_HEADER_LEN) {
			snprintf(why, len, "its version 3 header is cut short");
			return -1;
		}
		h->incompatible = be64(buf + 72);
		header_len = be32(buf + 100);
		if (header_len < V3_HEADER_LEN || header_len > cluster_size) {
			snprintf(why, len, "its header length (%llu) is out of range",
				 (unsigned long long)header_len);
			return -1;
		}
	}
	h->header_length = (uint32_t)header_len;
	if (h->incompatible & ~INCOMPAT_KNOWN) {
		snprintf(why, len, "it has incompatible features QEMU does not know (0x%llx)",
			 (unsigned long long)(h->incompatible & ~INCOMPAT_KNOWN));
		return -1;
	}
	if (h->incompatible & INCOMPAT_DATA_FILE)
		h->data_file = true;
	if (backing_offset) {
		if (backing_offset > cluster_size || backing_offset < header_len) {
			snprintf(why, len, "its backing file name is outside its header");
			return -1;
		}
		if (backing_len > QCOW2_BACKING_MAX ||
		    backing_len > cluster_size - backing_offset) {
			snprintf(why, len, "its backing file name is too long");
			return -1;
		}
	}
	/* The extensions end where the backing file's name starts, else with the
	 * cluster; what lies past the bytes read cannot be checked, so is refused. */
	if (header_len > n) {
		snprintf(why, len, "its header runs past the first %zu bytes", n);
		return -1;
	}
	end = backing_offset ? backing_offset : cluster_size;
	if (extensions_parse(buf, n, header_len, end, h, why, len) < 0)
		return -1;
	if (backing_offset) {
		if (backing_offset + backing_len > n) {
			snprintf(why, len, "its backing file name runs past the first %zu bytes",
				 n);
			return -1;
		}
		if (backing_len == 0 || !name_ok(buf + backing_offset, backing_len)) {
			snprintf(why, len, "its backing file name is malformed");
			return -1;
		}
		memcpy(h->backing, buf + backing_offset, backing_len);
		h->backing[backing_len] = '\0';
	}
	return 0;
}

int qcow2_header_fd_read(int fd, struct qcow2_header *h, char *why, size_t len)
{
	_cleanup_free_ unsigned char *buf = xmalloc(QCOW2_HEADER_READ_MAX);
	size_t n = 0;

	while (n < QCOW2_HEADER_READ_MAX) {
		ssize_t r = pread(fd, buf + n, QCOW2_HEADER_READ_MAX - n, (off_t)n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(why, len, "cannot read it: %s", strerror(errno));
			memset(h, 0, sizeof(*h));
			return -1;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	return qcow2_header_parse(buf, n, h, why, len);
}

int qcow2_header_read(const char *path, struct qcow2_header *h, char *why, size_t len)
{
	/* O_NONBLOCK: a FIFO swapped in for the image must not hold the thread in open(). */
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	struct stat st;
	char sub[256];

	if (fd < 0) {
		snprintf(why, len, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(why, len, "%s: not a regular file", path);
		return -1;
	}
	if (qcow2_header_fd_read(fd, h, sub, sizeof(sub)) < 0) {
		snprintf(why, len, "%s: %s", path, sub);
		return -1;
	}
	return 0;
}

/*
 * Check the header h of file against what it must be: no data file, and the backing
 * file backing (absolute) or none (NULL), itself qcow2. A relative backing file name
 * is taken from file's directory, as QEMU opens it. Returns 0, or -1 with why.
 */
int qcow2_backing_check(const char *file, const struct qcow2_header *h, const char *backing,
			char *why, size_t len)
{
	char full_buf[PATH_MAX + QCOW2_BACKING_MAX + 2];
	const char *full = NULL;

	if (h->backing[0] == '/') {
		full = h->backing;
	} else if (h->backing[0]) {
		const char *slash = strrchr(file, '/');

		snprintf(full_buf, sizeof(full_buf), "%.*s%s", slash ? (int)(slash - file + 1) : 0,
			 file, h->backing);
		full = full_buf;
	}
	if (h->data_file) {
		snprintf(why, len, "%s keeps its data in an external file", file);
		return -1;
	}
	if (backing == NULL && full) {
		snprintf(why, len, "%s has a backing file it should not have: %s", file, full);
		return -1;
	}
	if (backing && (full == NULL || strcmp(full, backing) != 0)) {
		snprintf(why, len, "%s has the backing file %s, not its image %s", file,
			 full ? full : "(none)", backing);
		return -1;
	}
	if (backing && h->backing_format[0] && strcmp(h->backing_format, "qcow2")) {
		snprintf(why, len, "%s names its backing file as %s, not qcow2", file,
			 h->backing_format);
		return -1;
	}
	return 0;
}
