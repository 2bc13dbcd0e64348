/*
 * chunkstore.h - the backup store's content-addressed chunks and its manifests.
 *
 * A store is a directory (on the shared pool, so every host and the controller see
 * it):
 *   ROOT/chunks/AB/ABCDEF...   one chunk, named by the SHA-256 of its plain content,
 *                              a zstd frame of that content
 *   ROOT/backups/ID.json       one manifest per finished backup
 *   ROOT/tmp/                  work files of backups and restores in progress
 *   ROOT/encryption.json       an encrypted store only: its cipher and key check value
 * An encrypted store (chunkcrypt.h) names its chunks by HMAC-SHA256 of their content
 * instead, seals each zstd frame with AES-256-GCM, and authenticates its manifests;
 * every function taking a key takes NULL for a plain store.
 * A chunk is written whole under a temporary name and renamed, so a reader (or a
 * crash) never sees half of one. Its bytes bypass the page cache (O_DIRECT, where the
 * file system takes it): a backup writes each chunk once and rarely reads it soon, and
 * copying it into fresh cache pages was up to 60% of a full backup's CPU in the
 * profile (and the flush then wrote it all back). chunkstore_sync() makes every chunk written so
 * far durable with one syncfs() (metadata, the tail of each chunk, the device's cache), which a
 * backup calls before its manifest is written, so a manifest never names a chunk a
 * power cut could lose.
 *
 * Every function here does blocking file I/O: call it from a worker thread
 * (uv_queue_work), never from a libuv loop callback. Nothing here holds state, so
 * two threads may write the same chunk at once: both renames leave one whole copy.
 */
#ifndef KUMO_CHUNKSTORE_H
#define KUMO_CHUNKSTORE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct chunkcrypt_key;

/*
 * Disks are cut into fixed-size chunks of 4 MiB, as PBS's. 1 MiB was measured
 * against 4 (bench/chunkpipe_bench.c, 512 MiB of random data, this 2-CPU machine
 * under load): 4 MiB took 10-20% less CPU and less time in all of 4 paired runs, the
 * difference being a file created, named and renamed per chunk (ext4's inode
 * allocation alone was up to a quarter of the profile at 1 MiB). The price: an
 * incremental backup stores whole chunks, so a small guest write costs up to 4 MiB
 * (8 across a boundary) in the store. A manifest records its chunk size; one made
 * with another size still restores and verifies, and the next backup of its
 * instance is full (chunkstore_parent_check).
 */
#define CHUNKSTORE_CHUNK_SIZE (4 * 1024 * 1024)
#define CHUNKSTORE_HEX_LEN    64
/*
 * zstd level 1, not the default 3: measured here on 1 MiB chunks, level 1 compresses
 * incompressible data at 1,700 MB/s against 1,100 and text-like data at 3,900 against
 * 2,700, for the same ratio on both; a backup is bound by its slowest stage.
 */
#define CHUNKSTORE_ZSTD_LEVEL 1
/*
 * A chunk the probe finds incompressible is stored as a zstd frame of raw blocks
 * (chunkstore_raw_frame): the same format, so every reader, verify, restore and the
 * `zstd` tool read it as before, but no compression is attempted. zstd -1 spends about
 * as long on 4 MiB of random data (1.7 GB/s here) as SHA-256 does (1.8 GB/s) and
 * saves nothing; the probe compresses 8 slices of 8 KiB spread over the chunk (1.6%
 * of it) and calls the chunk incompressible when they shrink by less than 3% (Borg's
 * "auto" compression decides with the same bound). A wrong guess costs only space: a
 * compressible chunk stored raw is still whole and correct.
 */
#define CHUNKSTORE_PROBE_PERCENT 97
/*
 * The well-known name of a whole chunk of zeros (SHA-256 of CHUNKSTORE_CHUNK_SIZE zero
 * bytes): a writer that sees zeros (or a hole) names it without hashing, and a reader
 * answers it with zeros without reading (chunkstore_zero_len, which also knows the
 * 1 MiB zero chunk of older manifests). It is still stored once per store, so an
 * older reader finds it.
 */
#define CHUNKSTORE_ZERO_HEX "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"
/*
 * Manifest versions: 1 had each disk's "sha256" over the whole disk's bytes; 2 has it
 * over the chunk list (chunkstore_list_sum), so an incremental backup reads only the
 * chunks that changed and a restore or verify still checks the disk as a whole.
 */
#define CHUNKSTORE_MANIFEST_V	  2
#define CHUNKSTORE_SUM_WHOLE_DISK 1 /* the version whose checksum is over the bytes */

/* Make ROOT/chunks, ROOT/backups and ROOT/tmp if missing (the fan-out directories
 * ROOT/chunks/AB come with their first chunk). Returns 0 or -1 with err. */
int chunkstore_init(const char *root, struct kerr *err);

/* The length of the whole chunk of zeros hex names (of this chunk size or an older
 * one), or 0 when hex is not a known zero chunk. */
size_t chunkstore_zero_len(const char *hex);

/*
 * Whether a new backup may build on parent (a manifest) chunk by chunk: 0 yes; -1 with
 * why (a sentence for the backup's full_reason) when its chunks are of another size,
 * so the new backup must be full.
 */
int chunkstore_parent_check(struct json_object *parent, char *why, size_t len);

/* ROOT/chunks/AB/HEX into out (PATH_MAX). */
void chunkstore_chunk_path(const char *root, const char *hex, char *out, size_t len);

/*
 * Store len bytes of plain data as one chunk: hex gets its SHA-256 (65 bytes with the
 * NUL); *written gets the compressed bytes this call added to the store, 0 when the
 * chunk was there already (dedup). Returns 0 or -1 with err (ENOSPC among them: the
 * temporary file is removed, nothing half-written stays).
 */
int chunkstore_put(const char *root, const void *data, size_t len, char *hex, uint64_t *written,
		   struct kerr *err);

/*
 * What a thread that stores many chunks keeps between them: a zstd context and a
 * buffer for the encoded chunk (aligned for O_DIRECT), so neither is allocated (nor
 * its pages faulted in afresh) per chunk. Init before use, free after; one per thread.
 */
struct chunkstore_writer {
	void *cctx; /* ZSTD_CCtx */
	void *zbuf;
	size_t zcap;
	const struct chunkcrypt_key *key; /* the store's, set after init; NULL: plain */
	void *ebuf;			  /* the sealed chunk, when key is set */
	bool buffered;	     /* the store refused O_DIRECT once: write through the page cache */
	uint64_t raw_chunks; /* chunks the probe stored uncompressed (for tests, profiles) */
};
void chunkstore_writer_init(struct chunkstore_writer *w);
/* A buffer of len bytes for a chunk (aligned for O_DIRECT, backed by huge pages where
 * the kernel gives them on request); free() it. Aborts when out of memory. */
#define CHUNKSTORE_HUGE_ALIGN (2 * 1024 * 1024)
void *chunkstore_buf_alloc(size_t len);
void chunkstore_writer_free(struct chunkstore_writer *w);
/* chunkstore_put with w's context and buffer. */
int chunkstore_put_with(const char *root, struct chunkstore_writer *w, const void *data, size_t len,
			char *hex, uint64_t *written, struct kerr *err);

/*
 * Whether len bytes of data look incompressible: zstd (cctx, a ZSTD_CCtx) at the
 * store's level on samples of them shrinks them by less than 100 -
 * CHUNKSTORE_PROBE_PERCENT percent. Chunks under 256 KiB are never called so.
 */
bool chunkstore_probe_incompressible(void *cctx, const void *data, size_t len);

/*
 * A zstd frame holding len bytes of data in raw (stored) blocks, as RFC 8878 lays
 * it out: 9 bytes of header, then 3 bytes before each 128 KiB. Written into dst (cap
 * bytes); returns its length, or 0 when cap is too small. Any zstd decoder gives data
 * back. Pure.
 */
size_t chunkstore_raw_frame(void *dst, size_t cap, const void *data, size_t len);

/* The name of a whole chunk of zeros in a store with key (NULL: CHUNKSTORE_ZERO_HEX). */
const char *chunkstore_zero_name(const struct chunkcrypt_key *key);

/*
 * Read chunk hex into buf (cap bytes), decompress it and check its SHA-256: *len gets
 * the plain length. Returns 0, or -1 with err: a missing chunk has err->code ENOENT,
 * one whose content does not match its name (or does not decompress) EBADMSG.
 */
int chunkstore_get(const char *root, const char *hex, void *buf, size_t cap, size_t *len,
		   struct kerr *err);
/* chunkstore_get in a store with key: the GCM tag and the keyed name are checked (a
 * failure of either is EBADMSG and says which). */
int chunkstore_get_with(const char *root, const struct chunkcrypt_key *key, const char *hex,
			void *buf, size_t cap, size_t *len, struct kerr *err);

/*
 * Check key against the store's encryption.json before anything is read or written:
 * a plain store (no file) takes key NULL, an encrypted one the key whose check value
 * it holds. With create, an encrypted store's first use writes the file. Returns 0,
 * or -1 with err (EACCES naming the key when it is missing or wrong).
 */
int chunkstore_key_check(const char *root, const struct chunkcrypt_key *key, bool create,
			 struct kerr *err);

/*
 * The disk checksum of manifest version 2: SHA-256 over, in disk order, each chunk's
 * 32-byte digest followed by its plain length as 8 bytes big-endian. Chunk c of a
 * disk of size bytes holds min(chunk_size, size - c * chunk_size) bytes. hex gets 65
 * bytes. Returns 0, or -1 with err when a name is not a chunk name or the list's
 * length does not fit the size.
 */
int chunkstore_list_sum(struct json_object *chunks, int64_t size, int64_t chunk_size, char *hex,
			struct kerr *err);

/*
 * The checksum a manifest's disk entry should carry, computed from what the store
 * holds without reading any chunk (version 2 and later); 0 with *hex filled, 1 when
 * the manifest is version 1 (only reading the whole disk tells), -1 with err.
 */
int chunkstore_disk_sum(struct json_object *manifest, struct json_object *disk, char *hex,
			struct kerr *err);

/* Flush every chunk written to the store's file system (syncfs). Returns 0 or -1. */
int chunkstore_sync(const char *root, struct kerr *err);

/* The store root's fd (O_RDONLY, close-on-exec) for chunkstore_backup_commit: a backup
 * opens it before it writes its first chunk. Returns it, or -1 with err. */
int chunkstore_open(const char *root, struct kerr *err);

/*
 * A finished backup made durable, in the one order that keeps a manifest from naming a
 * chunk a power cut could lose: the manifest's text (sealed with key, as
 * chunkstore_manifest_write_with) goes under a temporary name and is fsynced, a
 * syncfs on store_fd makes every chunk written so far durable, then the rename makes
 * the manifest appear whole and an fsync of backups/ makes its name durable.
 * store_fd is chunkstore_open()'s, opened BEFORE the backup wrote its first chunk:
 * syncfs reports a write-back error only if it came after that fd's open and no
 * earlier syncfs on that fd saw it, so an fd opened at the commit would miss an error
 * on this backup's chunks that another backup's syncfs reported first. A failure
 * leaves no manifest. *flush_ms (may be NULL) gets the two flushes' time. Returns 0
 * or -1 with err.
 */
int chunkstore_backup_commit(const char *root, int store_fd, const struct chunkcrypt_key *key,
			     const char *id, struct json_object *manifest, int64_t *flush_ms,
			     struct kerr *err);

/* Write manifest (a JSON object) as ROOT/backups/ID.json, atomically and durably. */
int chunkstore_manifest_write(const char *root, const char *id, struct json_object *manifest,
			      struct kerr *err);

/* Read ROOT/backups/ID.json: *out is a new reference. Returns 0 or -1 with err. No
 * key: an encrypted store's manifest comes as it is (its chunk lists, for the garbage
 * collection; its spec sealed, its MAC unchecked). */
int chunkstore_manifest_read(const char *root, const char *id, struct json_object **out,
			     struct kerr *err);

/*
 * The manifest with a store's key. Writing, an encrypted store's manifest has its
 * "spec" (which may hold secrets: environment, user data) sealed as "spec_sealed",
 * "encrypted": true and "key_check", and an HMAC of the rest of its text as its first
 * member "mac". Reading checks the MAC (a wrong key or a changed manifest is refused,
 * saying which) and gives the spec back as "spec". key NULL: as the plain functions,
 * but an encrypted manifest is refused (EACCES: the key is needed).
 */
int chunkstore_manifest_write_with(const char *root, const struct chunkcrypt_key *key,
				   const char *id, struct json_object *manifest, struct kerr *err);
int chunkstore_manifest_read_with(const char *root, const struct chunkcrypt_key *key,
				  const char *id, struct json_object **out, struct kerr *err);

/*
 * Re-read every chunk a manifest names and check it, and (version 2) each disk's
 * checksum against its chunk list. Returns the number of bad chunks found (0: all
 * good) and, when there are some, *bad gets a new array of {"disk", "offset",
 * "chunk", "error"} (a bad disk checksum has offset -1 and chunk ""); -1 with err
 * when the manifest is malformed.
 */
int chunkstore_verify(const char *root, struct json_object *manifest, struct json_object **bad,
		      struct kerr *err);
/* chunkstore_verify in a store with key (chunkstore_get_with each chunk). */
int chunkstore_verify_with(const char *root, const struct chunkcrypt_key *key,
			   struct json_object *manifest, struct json_object **bad,
			   struct kerr *err);

#endif
