/*
 * chunkpipe.h - store a whole disk (or any long file) into the chunk store fast.
 *
 * One thread (the caller's, a worker of the daemon's pool) reads the disk in order,
 * chunk by chunk, into a ring of buffers; a few threads of its own hash, compress and
 * write each chunk (chunkstore_put), in parallel, each into its own file, so the
 * order they finish in does not matter: the chunk list is kept by index and comes
 * out in disk order. A whole chunk of zeros (or a hole, when the source can tell)
 * is named CHUNKSTORE_ZERO_HEX without hashing or compressing it.
 *
 * A chunk the source names itself (named: an incremental's unchanged one) is neither
 * read nor hashed. The disk's checksum is the chunk list's (chunkstore_list_sum): no
 * second pass over the bytes. Blocking: call it off the loop.
 */
#ifndef KUMO_CHUNKPIPE_H
#define KUMO_CHUNKPIPE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"

struct chunkcrypt_key;

/* What the pipeline reads; called on the reading thread only. */
struct chunkpipe_source {
	int64_t size; /* the disk's length in bytes */
	/* Fill len bytes of the disk at off into buf. Returns 0 or -1 with err. */
	int (*read)(void *data, int64_t off, void *buf, size_t len, struct kerr *err);
	/* May be NULL: whether [off, off + len) reads as zeros without reading it (a
	 * hole of a sparse file). */
	bool (*hole)(void *data, int64_t off, size_t len);
	/* May be NULL: whether chunk index's name is known without reading it (an
	 * incremental backup's unchanged chunk is its parent's): true with its name in
	 * hex (CHUNKSTORE_HEX_LEN + 1 bytes); nothing is then read, hashed or written for
	 * it, and it counts in no byte total. Asked first. */
	bool (*named)(void *data, int64_t index, char *hex);
	void *data;
	/* May be NULL: asked before each chunk; true stops the pipeline (ECANCELED). */
	bool (*cancelled)(void *cancel_data);
	void *cancel_data;
	/* May be NULL (a plain store): the key of the encrypted store written to. */
	const struct chunkcrypt_key *key;
	/* 0: read as fast as the disk goes; else the reads' limit in bytes per second
	 * (chunks named from a hole are free). The reading thread sleeps, in slices
	 * that ask cancelled between them. */
	uint64_t rate_bytes_s;
	/* May be NULL: how far into the disk the reader got (bytes, read or skipped),
	 * stored atomically after each chunk for another thread to show. */
	uint64_t *progress_bytes;
};

/* What the pipeline did. */
struct chunkpipe_result {
	uint64_t read_bytes;  /* read from the source (holes are not read) */
	uint64_t new_bytes;   /* compressed bytes added to the store */
	uint64_t chunk_count; /* chunks in the list */
	char sum[65];	      /* chunkstore_list_sum of the list */
};

/*
 * The pacing of reads at rate bytes per second (> 0): how many milliseconds to wait,
 * elapsed_ms after the first read, before a read that brings the bytes read to
 * bytes. 0 when it may go now. A token bucket whose burst is one chunk: the reads
 * may run ahead of the rate by at most the read they are about to do. Pure.
 */
int64_t chunkpipe_pace_wait_ms(uint64_t bytes, uint64_t rate, int64_t elapsed_ms);

/* The hashing threads a pipeline starts: two per core, 2 to 8 (chunkpipe.c says why).
 * Memory: each thread holds two 4 MiB read slots and its writer's frame buffers
 * (about one chunk each), some 16 MiB, so a backup at 8 threads holds about 128 MiB
 * while it reads; one backup per VM runs at a time, so a host's agent needs that much
 * per VM it backs up at once. */
int chunkpipe_threads(void);

/*
 * Store the whole of src into the store at root with threads hashing threads (at
 * least 1); add the chunk names to chunks (an empty JSON array) in disk order and
 * fill res. Returns 0, or -1 with err (the first failure of a read or a write; the chunks
 * written so far stay, unnamed by any manifest, for the garbage collection).
 */
int chunkpipe_store(const char *root, const struct chunkpipe_source *src, int threads,
		    struct json_object *chunks, struct chunkpipe_result *res, struct kerr *err);

/* A source reading a file by its fd, holes found with SEEK_DATA: data is a pointer to
 * a struct chunkpipe_file. */
struct chunkpipe_file {
	int fd;
	const char *path; /* for messages */
};
int chunkpipe_file_read(void *data, int64_t off, void *buf, size_t len, struct kerr *err);
bool chunkpipe_file_hole(void *data, int64_t off, size_t len);

#endif
