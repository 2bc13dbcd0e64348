/*
 * qcow2.h - what a qcow2 image's first cluster says about it, read in-process.
 *
 * The agent checks every disk and image before QEMU opens it (agentd/imagecheck.c):
 * its backing file, the backing file's format and whether its data lives in an
 * external file. Those are all in the header and its extensions, within the image's
 * first cluster, so they are read here instead of by a `qemu-img info` child (a
 * process start, tens of ms, on the path of every VM start and migration target).
 * The same parser serves the controller's check of an uploaded image
 * (controllerd/api_images.c) and the agent's map of an incremental backup's target
 * from its L1 and L2 tables (agentd/backupmap.c), each adding its own policy.
 * An image file is outside input (any host's root writes the shared pool): every
 * offset and length is checked against the bytes read before it is used.
 */
#ifndef KUMO_QCOW2_H
#define KUMO_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The first four bytes of every qcow2 image. */
#define QCOW2_MAGIC "QFI\xfb"
/* How much of an image qcow2_header_read() reads: the header, its extensions and the
 * backing file's name must lie within it (qemu-img puts them in the first KiB). */
#define QCOW2_HEADER_READ_MAX 65536
/* The longest backing file name QEMU accepts. */
#define QCOW2_BACKING_MAX 1023

struct qcow2_header {
	uint32_t version;		     /* 2 or 3 */
	uint32_t cluster_bits;		     /* 9..21 */
	uint32_t header_length;		     /* 72 (v2), 104 or more (v3), <= a cluster */
	uint64_t virtual_size;		     /* the guest's disk size, bytes */
	uint64_t incompatible;		     /* incompatible feature bits (v3) */
	uint32_t crypt_method;		     /* 0: not encrypted (not checked here) */
	uint32_t l1_size;		     /* L1 entries, as written (not checked here) */
	uint64_t l1_offset;		     /* as written (not checked here) */
	uint32_t snapshots;		     /* internal snapshots (not checked here) */
	char backing[QCOW2_BACKING_MAX + 1]; /* backing file as written, "" none */
	char backing_format[16];	     /* from its extension, "" when not named */
	bool data_file;			     /* data in an external file */
};

/*
 * Parse the first n bytes of a qcow2 image (buf) into *h. Refused, as QEMU would
 * refuse to open it or as no image Kumo makes looks: no qcow2 magic, a version
 * other than 2 or 3, a cluster size outside 512 B..2 MiB, incompatible feature bits
 * QEMU does not know, a header, extension or backing file name that runs past the
 * first cluster or past n, a backing file name with a NUL byte or longer than
 * QCOW2_BACKING_MAX, a backing format name of 16 bytes or more. Returns 0, or -1 with
 * why (len bytes, naming no path: the caller adds it).
 */
int qcow2_header_parse(const unsigned char *buf, size_t n, struct qcow2_header *h, char *why,
		       size_t len);

/*
 * Read the first QCOW2_HEADER_READ_MAX bytes of the open file fd (fewer if it is
 * shorter) and parse them as qcow2_header_parse() does. Blocking file I/O. Returns 0,
 * or -1 with why (naming no path: the caller adds it).
 */
int qcow2_header_fd_read(int fd, struct qcow2_header *h, char *why, size_t len);

/*
 * Read the image at path (a regular file, never through a symbolic link) and parse
 * its header as qcow2_header_parse() does. Blocking file I/O: call it off the loop.
 * Returns 0, or -1 with why (naming the file).
 */
int qcow2_header_read(const char *path, struct qcow2_header *h, char *why, size_t len);

/*
 * Check the header h of file against what the agent allows (agentd/imagecheck.c): no
 * external data file, and the backing file backing (an absolute path) or none (NULL),
 * itself qcow2 when a format is named. A relative backing file name is taken from
 * file's directory, as QEMU opens it; anything else that is not exactly backing (a
 * "json:{...}" or "nbd:..." name, "../") is refused. Returns 0, or -1 with why.
 */
int qcow2_backing_check(const char *file, const struct qcow2_header *h, const char *backing,
			char *why, size_t len);

#endif
