/*
 * p2v.c - /api/v1/p2v: ingest sessions that bring a physical (or foreign virtual)
 * machine's disks into the cluster, and the cutover that makes them a VM.
 *
 * A session declares its disks and hardware and gets a one-time ingest token, scoped to
 * that session and expiring, that kumo-p2v on the source presents. The source sends each
 * disk in fixed chunks (P2V_CHUNK bytes, the last one shorter) with each chunk's SHA-256:
 *
 *   POST /api/v1/p2v/{id}/passes           start a pass (?resume=1: continue the current
 *                                          one); answers the hash the controller holds
 *                                          for each chunk holding data (others: zero)
 *   PUT  /api/v1/p2v/{id}/disks/{disk}/chunks/{offset}?sha256=HEX
 *   POST /api/v1/p2v/{id}/actions/cutover  the VM is created from what was received
 *
 * The source sends only chunks whose hash differs from the controller's, so all-zero
 * chunks of a new disk are never sent (the received file starts sparse, all zero), a
 * warm pass sends only what changed since, and a source that lost its connection asks
 * for the hashes again and resends nothing that was stored. Chunks land in a sparse raw
 * file per disk on the shared pool, hashed and written off the loop (uv_queue_work);
 * an all-zero chunk punches a hole instead. The cutover converts each file to a sparse
 * qcow2 image (qemu-img, a child process), records it as an image and creates the VM
 * through the instance create path, with the session's hardware.
 *
 * A session is an operation (kind p2v-ingest, target p2v/{id}) with progress, a
 * deadline (deadline_s) and a cancel (p2v_session_cancel: DELETE, or the operation's
 * cancel action).
 *
 * A session survives a controller restart: it is a persisted state machine, one row
 * of p2v_sessions (state, passes, counters, deadline, the digest of its token, never
 * the token) and one row of p2v_chunks per chunk held (its SHA-256, NULL for a hole),
 * written in the same transaction as the chunk is answered 204, after its bytes are in
 * the file. A process killed after the pwrite() loses nothing (the page cache keeps
 * the bytes, the WAL keeps the row), so a restarted controller answers the source's
 * next pass start with exactly what it holds and the source resends only the chunk it
 * had in flight. At start-up p2v_sessions_load() reopens each session's files before
 * the job engine resumes its operation; one past its deadline ends (files and row go);
 * one caught cutting over is rolled back to receiving (the images its cut recorded
 * and any half-written qcow2 are removed; the raw files stay until the VM exists) or,
 * if its VM was created already, finished as done. The source's retried cutover then
 * runs again. A power loss of the controller's machine can keep a chunk's row and
 * lose its bytes: the files are fsynced behind the rows (sync_maybe_start) and a
 * start-up re-hashes the rows the last fsync did not cover (chunks_verify).
 *
 * "convert": true at the cutover runs virt-v2v-in-place on the qcow2 files before they
 * are recorded (v2v_start, p2v_convert.c): the guest is rewritten for virtio before its
 * first boot. A controller restart during it kills what the old run left (its processes
 * carry a mark p2v_convert.c finds again) and converts again from the received raw
 * files, which stay until the VM exists: the cutover was answered 202 when it began, so
 * nobody else would retry it (cut_roll_back, at most P2V_CONVERT_TRIES runs).
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <linux/falloc.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controllerd.h"
#include "log.h"
#include "token.h"
#include "tree.h"
#include "util.h"
#include "valid.h"

#define P2V_CHUNK	   (1 << 20)
#define P2V_DISKS_MAX	   8
#define P2V_NICS_MAX	   8
#define P2V_DISK_MAX_BYTES (16LL << 40)
#define P2V_DIR		   "p2v"
#define P2V_TTL_DEFAULT	   86400
#define P2V_TTL_MAX	   (7 * 86400)
#define P2V_PASSES_MAX	   64
/* Conversions a cutover starts, counting those a controller restart cut short: a
 * conversion that itself brings the controller down ends failed, not in a loop. */
#define P2V_CONVERT_TRIES 3
/* The raw files are fsynced (off the loop) once this many chunks were written since the
 * last fsync, or when writes paused this long: what a power loss can take, and what a
 * start-up re-hashes (chunks_verify), stays small. */
#define P2V_SYNC_CHUNKS	 64
#define P2V_SYNC_IDLE_MS 3000

enum p2v_state {
	P2V_RECEIVING,
	P2V_CUTTING_OVER,
	P2V_DONE,
	P2V_FAILED,
};

static const char *const state_names[] = {
	[P2V_RECEIVING] = "receiving",
	[P2V_CUTTING_OVER] = "cutting-over",
	[P2V_DONE] = "done",
	[P2V_FAILED] = "failed",
};

struct p2v_disk {
	char name[NAME_MAX_LEN + 1];
	char bus[8];
	int64_t size;
	char *path; /* the sparse raw file on the shared pool */
	int fd;
	uint32_t nchunks;
	unsigned char (*hash)[32];    /* what is stored per chunk */
	uint8_t *has_data;	      /* 0: all zero (a hole), 1: hash holds */
	char image[NAME_MAX_LEN + 1]; /* the image the cutover recorded, "" before */
};

struct p2v_pass {
	int64_t chunks, bytes, zero_chunks;
	int64_t started_at, ended_at; /* ms */
};

struct p2v_session {
	char id[17];
	char name[NAME_MAX_LEN + 1]; /* the VM it becomes */
	char token_digest[TOKEN_DIGEST_LEN + 1];
	char op[LINK_OP_ID_MAX + 1];
	enum p2v_state state;
	char error[512];
	int64_t created_at, token_expires_at, deadline; /* ms */
	struct json_object *hardware;
	char dir[512];
	int ndisks;
	struct p2v_disk disks[P2V_DISKS_MAX];
	int npasses;
	struct p2v_pass passes[P2V_PASSES_MAX];
	int64_t bytes_received, chunks_stored, chunks_rejected;
	int64_t first_chunk_at, last_chunk_at;
	int64_t write_seq;   /* the last chunk row written (p2v_chunks.unsynced) */
	int64_t synced_seq;  /* rows up to this one have their bytes on disk */
	bool syncing;	     /* an fsync of the raw files is in flight */
	int busy;	     /* chunk writes and cutover steps in flight */
	bool removing;	     /* freed once busy drops to 0 */
	int cut_disk;	     /* the disk the cutover converts */
	bool cut_start;	     /* start the VM after the cutover */
	bool cut_convert;    /* virt-v2v rewrites the guest before its first boot */
	bool converted;	     /* ... and did */
	bool cut_cancelling; /* cancelled while virt-v2v ran: the cut ends cancelled */
	int convert_tries;   /* virt-v2v runs this cutover started (persisted) */
	/* virt-v2v-in-place while it runs */
	struct p2v_convert *v2v;
	char inst_op[LINK_OP_ID_MAX + 1]; /* the VM's instance-create operation */
	struct json_object *notes;
	struct request *cut_req;
	struct p2v_session *next;
};

static struct p2v_session *sessions;
static uv_timer_t p2v_timer;
static bool p2v_timer_on;

/* ---- sessions ---- */

static struct p2v_session *session_find(const char *id)
{
	for (struct p2v_session *s = sessions; s; s = s->next)
		if (!strcmp(s->id, id))
			return s;
	return NULL;
}

static void session_free(struct p2v_session *s)
{
	for (int i = 0; i < s->ndisks; i++) {
		struct p2v_disk *d = &s->disks[i];

		if (d->fd >= 0)
			close(d->fd);
		if (d->path)
			unlink(d->path);
		free(d->path);
		free(d->hash);
		free(d->has_data);
	}
	if (s->dir[0])
		rmdir(s->dir);
	json_object_put(s->hardware);
	json_object_put(s->notes);
	free(s);
}

static void store_session_delete(const char *id);

/* Unlink s from the list (and its row from the database) and free it now, or when its
 * last write has come back. */
static void session_remove(struct p2v_session *s)
{
	for (struct p2v_session **pp = &sessions; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	s->next = NULL;
	s->removing = true;
	store_session_delete(s->id);
	if (s->busy == 0)
		session_free(s);
}

static void session_unbusy(struct p2v_session *s)
{
	if (--s->busy == 0 && s->removing)
		session_free(s);
}

static int64_t session_rate(const struct p2v_session *s)
{
	int64_t ms = s->last_chunk_at - s->first_chunk_at;

	return ms > 0 ? s->bytes_received * 1000 / ms : 0;
}

static struct json_object *pass_json(const struct p2v_pass *p, int n)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "pass", json_object_new_int(n));
	json_object_object_add(o, "chunks_changed", json_object_new_int64(p->chunks));
	json_object_object_add(o, "bytes", json_object_new_int64(p->bytes));
	json_object_object_add(o, "zero_chunks", json_object_new_int64(p->zero_chunks));
	json_object_object_add(o, "started_at", json_object_new_int64(p->started_at));
	json_object_object_add(o, "ended_at",
			       p->ended_at ? json_object_new_int64(p->ended_at) : NULL);
	return o;
}

/* The session as the API shows it (new reference); never its token. */
static struct json_object *session_json(const struct p2v_session *s)
{
	struct json_object *o = json_object_new_object(), *disks = json_object_new_array();
	struct json_object *passes = json_object_new_array();
	char url[64];

	snprintf(url, sizeof(url), "/api/v1/p2v/%s", s->id);
	json_object_object_add(o, "id", json_object_new_string(s->id));
	json_object_object_add(o, "name", json_object_new_string(s->name));
	json_object_object_add(o, "state", json_object_new_string(state_names[s->state]));
	if (s->error[0])
		json_object_object_add(o, "error", json_object_new_string(s->error));
	json_object_object_add(o, "operation", json_object_new_string(s->op));
	json_object_object_add(o, "url", json_object_new_string(url));
	json_object_object_add(o, "chunk_size", json_object_new_int(P2V_CHUNK));
	json_object_object_add(o, "created_at", json_object_new_int64(s->created_at));
	json_object_object_add(o, "token_expires_at", json_object_new_int64(s->token_expires_at));
	json_object_object_add(o, "deadline", json_object_new_int64(s->deadline));
	json_object_object_add(o, "bytes_received", json_object_new_int64(s->bytes_received));
	json_object_object_add(o, "chunks_stored", json_object_new_int64(s->chunks_stored));
	json_object_object_add(o, "chunks_rejected", json_object_new_int64(s->chunks_rejected));
	json_object_object_add(o, "rate_bytes_per_s", json_object_new_int64(session_rate(s)));
	json_object_object_add(o, "passes", json_object_new_int(s->npasses));
	json_object_object_add(
		o, "chunks_changed_last_pass",
		json_object_new_int64(s->npasses ? s->passes[s->npasses - 1].chunks : 0));
	for (int i = 0; i < s->npasses; i++)
		json_object_array_add(passes, pass_json(&s->passes[i], i + 1));
	json_object_object_add(o, "pass_history", passes);
	for (int i = 0; i < s->ndisks; i++) {
		const struct p2v_disk *d = &s->disks[i];
		struct json_object *dj = json_object_new_object();
		int64_t held = 0;

		for (uint32_t c = 0; c < d->nchunks; c++)
			held += d->has_data[c];
		json_object_object_add(dj, "name", json_object_new_string(d->name));
		json_object_object_add(dj, "size_bytes", json_object_new_int64(d->size));
		json_object_object_add(dj, "bus", json_object_new_string(d->bus));
		json_object_object_add(dj, "chunks", json_object_new_int64(d->nchunks));
		json_object_object_add(dj, "chunks_with_data", json_object_new_int64(held));
		if (d->image[0])
			json_object_object_add(dj, "image", json_object_new_string(d->image));
		json_object_array_add(disks, dj);
	}
	json_object_object_add(o, "disks", disks);
	json_object_object_add(o, "hardware", json_object_get(s->hardware));
	if (s->cut_convert) {
		json_object_object_add(o, "converted", json_object_new_boolean(s->converted));
		json_object_object_add(o, "convert_tries", json_object_new_int(s->convert_tries));
	}
	if (s->inst_op[0])
		json_object_object_add(o, "instance_operation", json_object_new_string(s->inst_op));
	if (s->notes)
		json_object_object_add(o, "notes", json_object_get(s->notes));
	return o;
}

/* ---- the store: p2v_sessions and p2v_chunks ---- */

static struct json_object *disks_row_json(const struct p2v_session *s)
{
	struct json_object *a = json_object_new_array();

	for (int i = 0; i < s->ndisks; i++) {
		const struct p2v_disk *d = &s->disks[i];
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "name", json_object_new_string(d->name));
		json_object_object_add(o, "bus", json_object_new_string(d->bus));
		json_object_object_add(o, "size_bytes", json_object_new_int64(d->size));
		if (d->image[0])
			json_object_object_add(o, "image", json_object_new_string(d->image));
		json_object_array_add(a, o);
	}
	return a;
}

static struct json_object *passes_row_json(const struct p2v_session *s)
{
	struct json_object *a = json_object_new_array();

	for (int i = 0; i < s->npasses; i++)
		json_object_array_add(a, pass_json(&s->passes[i], i + 1));
	return a;
}

/* Write session s's row (all but its chunks). Returns 0, or -1 with err. */
static int store_session_save(const struct p2v_session *s, struct kerr *err)
{
	struct json_object *disks = disks_row_json(s), *passes = passes_row_json(s);
	sqlite3_stmt *st = db_prepare(
		ctl.db,
		"INSERT INTO p2v_sessions (id, name, token_digest, operation, state, error, "
		"created_at, token_expires_at, deadline, hardware, disks, passes, bytes_received, "
		"chunks_stored, chunks_rejected, first_chunk_at, last_chunk_at, cut_start, notes, "
		"cut_convert, convert_tries) "
		"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
		"ON CONFLICT (id) DO UPDATE SET state = excluded.state, error = excluded.error, "
		"disks = excluded.disks, passes = excluded.passes, "
		"bytes_received = excluded.bytes_received, chunks_stored = excluded.chunks_stored, "
		"chunks_rejected = excluded.chunks_rejected, "
		"first_chunk_at = excluded.first_chunk_at, last_chunk_at = excluded.last_chunk_at, "
		"cut_start = excluded.cut_start, notes = excluded.notes, "
		"cut_convert = excluded.cut_convert, convert_tries = excluded.convert_tries");
	int rc;

	sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, s->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, s->token_digest, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, s->op, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, state_names[s->state], -1, SQLITE_STATIC);
	if (s->error[0])
		sqlite3_bind_text(st, 6, s->error, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, s->created_at);
	sqlite3_bind_int64(st, 8, s->token_expires_at);
	sqlite3_bind_int64(st, 9, s->deadline);
	sqlite3_bind_text(st, 10, json_text(s->hardware), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 11, json_text(disks), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 12, json_text(passes), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 13, s->bytes_received);
	sqlite3_bind_int64(st, 14, s->chunks_stored);
	sqlite3_bind_int64(st, 15, s->chunks_rejected);
	sqlite3_bind_int64(st, 16, s->first_chunk_at);
	sqlite3_bind_int64(st, 17, s->last_chunk_at);
	sqlite3_bind_int(st, 18, s->cut_start);
	if (s->notes)
		sqlite3_bind_text(st, 19, json_text(s->notes), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 20, s->cut_convert);
	sqlite3_bind_int(st, 21, s->convert_tries);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(disks);
	json_object_put(passes);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "database: cannot save p2v session %s: %s", s->id,
			       sqlite3_errmsg(ctl.db));
	return 0;
}

/* The same, where a failure cannot be answered: logged; a restart would miss it. */
static void session_save(const struct p2v_session *s)
{
	struct kerr err;

	if (store_session_save(s, &err) < 0)
		log_warnx("p2v %s: %s", s->id, err.msg);
}

/* Chunk index of disk is held (hash NULL: as a hole), with the session's counters, in
 * one transaction; its row is unsynced (s->write_seq) until the file is fsynced.
 * Returns 0, or -1 with err (nothing recorded). */
static int store_chunk_save(const struct p2v_session *s, int disk, uint32_t index,
			    const unsigned char *hash, struct kerr *err)
{
	sqlite3_stmt *st;
	int rc;

	if (db_begin(ctl.db) < 0)
		return err_set(err, 0, "database: cannot begin: %s", sqlite3_errmsg(ctl.db));
	st = db_prepare(ctl.db,
			"INSERT INTO p2v_chunks (session, disk, chunk, sha256, unsynced) "
			"VALUES (?, ?, ?, ?, ?) ON CONFLICT (session, disk, chunk) "
			"DO UPDATE SET sha256 = excluded.sha256, unsynced = excluded.unsynced");
	sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, disk);
	sqlite3_bind_int64(st, 3, index);
	if (hash)
		sqlite3_bind_blob(st, 4, hash, 32, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, s->write_seq);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		err_set(err, 0, "database: cannot record the chunk: %s", sqlite3_errmsg(ctl.db));
		db_rollback(ctl.db);
		return -1;
	}
	if (store_session_save(s, err) < 0) {
		db_rollback(ctl.db);
		return -1;
	}
	return db_commit(ctl.db, err);
}

static void store_session_delete(const char *id)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "DELETE FROM p2v_sessions WHERE id = ?");

	/* Its p2v_chunks go with it (ON DELETE CASCADE). */
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("p2v %s: database: cannot delete the session: %s", id,
			  sqlite3_errmsg(ctl.db));
	sqlite3_finalize(st);
}

/* Record where the operation is: progress by passes, bytes in the phase text. */
static void session_op_progress(struct p2v_session *s, const char *phase)
{
	op_update(s->op, "running", s->npasses > 0 ? 10 : 0, phase, NULL, NULL);
}

/*
 * End session s: its operation ends with status ("succeeded", "failed" or "cancelled")
 * and why, its received files go, and it leaves the list (freed when idle).
 */
static void session_end(struct p2v_session *s, const char *status, const char *why)
{
	struct json_object *res = json_object_new_object();

	json_object_object_add(res, "session", session_json(s));
	op_update(s->op, status, !strcmp(status, "succeeded") ? 100 : -1, status, res, why);
	log_info("p2v %s (%s): %s%s%s", s->id, s->name, status, why ? ": " : "", why ? why : "");
	/* A cut-over session stays visible (its passes, its images) until deleted or its
	 * deadline; its token opens nothing any more. */
	if (s->state == P2V_DONE) {
		session_save(s);
		return;
	}
	session_remove(s);
}

/*
 * Cancel the ingest session id: its operation becomes cancelled and everything it
 * received is removed. Returns 0 when that is done, 1 when it follows shortly (the
 * session was converting: virt-v2v and its appliance are killed first, then the cut
 * ends cancelled and removes what it made), or -1 with err (404 when there is no such
 * session, 409 while it is cutting over otherwise). The job engine's generic cancel
 * route calls this too.
 */
/*
 * 0 when session id can be abandoned now; -1 with err (404, or 409 while qemu-img
 * turns its disks into images: that step ends as it will). Asked before a cancel is
 * recorded, so an operation is never said "cancelled" while its VM gets made.
 */
int p2v_session_cancel_refused(const char *id, struct kerr *err)
{
	struct p2v_session *s = session_find(id);

	if (s == NULL)
		return err_input(err, 404, NULL, "no p2v session %s", id);
	if (s->state == P2V_CUTTING_OVER && s->v2v == NULL)
		return err_input(err, 409, NULL, "p2v session %s is cutting over", id);
	return 0;
}

int p2v_session_cancel(const char *id, struct kerr *err)
{
	struct p2v_session *s = session_find(id);

	if (p2v_session_cancel_refused(id, err) < 0)
		return -1;
	if (s->state == P2V_CUTTING_OVER && s->v2v) {
		s->cut_cancelling = true;
		/* Durable before the kill: a restart before it comes back must not
		 * convert again (cut_convert_again). */
		op_update(s->op, "running", -1, "cancelling", NULL, NULL);
		p2v_convert_cancel(s->v2v);
		return 1;
	}
	if (s->state == P2V_RECEIVING)
		session_end(s, "cancelled", "the session was abandoned");
	else
		session_remove(s);
	return 0;
}

/* ---- durability: the raw files fsynced behind the chunk rows ---- */

/*
 * A chunk's row is committed (synchronous SQLite) before its bytes are on disk: the
 * pwrite() leaves them in the page cache. A power loss can keep the row and lose the
 * bytes; the source would then never resend that chunk. So each row carries its write
 * sequence number (unsynced) until an fsync of the files that began after it ended;
 * at start-up the rows still unsynced are re-hashed against the file (chunks_verify).
 */
struct p2v_sync {
	uv_work_t work;
	char id[17];
	int64_t through; /* rows up to this write are durable once the fsyncs succeed */
	int nfds;
	int fds[P2V_DISKS_MAX]; /* dup()s: the cutover may close the session's own */
	int error;
};

static void sync_work_cb(uv_work_t *w)
{
	struct p2v_sync *y = w->data;

	for (int i = 0; i < y->nfds; i++)
		if (fdatasync(y->fds[i]) < 0 && y->error == 0)
			y->error = errno;
}

static void sync_done_cb(uv_work_t *w, int status)
{
	struct p2v_sync *y = w->data;
	struct p2v_session *s = session_find(y->id);

	for (int i = 0; i < y->nfds; i++)
		close(y->fds[i]);
	if (s == NULL) {
		free(y);
		return;
	}
	s->syncing = false;
	if (status < 0 || y->error) {
		log_warnx("p2v %s: cannot fsync its received disks: %s", s->id,
			  strerror(y->error ? y->error : EIO));
	} else {
		sqlite3_stmt *st =
			db_prepare(ctl.db, "UPDATE p2v_chunks SET unsynced = 0 "
					   "WHERE session = ? AND unsynced BETWEEN 1 AND ?");

		sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, y->through);
		if (sqlite3_step(st) != SQLITE_DONE)
			log_warnx("p2v %s: database: cannot mark chunks synced: %s", s->id,
				  sqlite3_errmsg(ctl.db));
		else
			s->synced_seq = y->through;
		sqlite3_finalize(st);
	}
	free(y);
}

/* fsync session s's raw files off the loop if enough was written since the last time. */
static void sync_maybe_start(struct p2v_session *s, int64_t now)
{
	struct p2v_sync *y;

	if (s->syncing || s->state != P2V_RECEIVING || s->write_seq == s->synced_seq ||
	    (s->write_seq - s->synced_seq < P2V_SYNC_CHUNKS &&
	     now - s->last_chunk_at < P2V_SYNC_IDLE_MS))
		return;
	y = xcalloc(1, sizeof(*y));
	memcpy(y->id, s->id, sizeof(y->id));
	/* Rows up to here were committed after their pwrite() returned: the fsync that
	 * starts now covers their bytes. */
	y->through = s->write_seq;
	for (int i = 0; i < s->ndisks; i++) {
		if (s->disks[i].fd < 0)
			continue;
		y->fds[y->nfds] = fcntl(s->disks[i].fd, F_DUPFD_CLOEXEC, 0);
		if (y->fds[y->nfds] < 0) {
			log_warn("p2v %s: cannot fsync its received disks", s->id);
			while (y->nfds > 0)
				close(y->fds[--y->nfds]);
			free(y);
			return; /* the next tick tries again */
		}
		y->nfds++;
	}
	s->syncing = true;
	y->work.data = y;
	uv_queue_work(ctl.loop, &y->work, sync_work_cb, sync_done_cb);
}

/* Once a second while sessions exist: deadlines pass, expired done sessions go, the
 * received files are fsynced behind their rows. */
static void p2v_timer_cb(uv_timer_t *t)
{
	int64_t now = now_ms();

	for (struct p2v_session *s = sessions, *next; s; s = next) {
		next = s->next;
		sync_maybe_start(s, now);
		if (s->state == P2V_RECEIVING && now > s->deadline)
			session_end(s, "failed", "timed out: the session passed its deadline");
		else if (s->state != P2V_RECEIVING && s->state != P2V_CUTTING_OVER &&
			 now > s->deadline)
			session_remove(s);
	}
}

static void timer_ensure(void)
{
	if (p2v_timer_on)
		return;
	uv_timer_init(ctl.loop, &p2v_timer);
	uv_unref((uv_handle_t *)&p2v_timer); /* never what keeps the loop up */
	uv_timer_start(&p2v_timer, p2v_timer_cb, 1000, 1000);
	p2v_timer_on = true;
}

/* ---- create ---- */

static int disk_size_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 512 || n > P2V_DISK_MAX_BYTES || n % 512)
		return err_input(err, 400, f,
				 "'%s' must be a multiple of 512 from 512 bytes to 16 TiB", f);
	return 0;
}

static int bus_check(struct json_object *v, const char *f, struct kerr *err)
{
	static const char *const buses[] = {"virtio", "scsi", "sata", "ide"};
	const char *s = json_object_get_string(v);

	for (size_t i = 0; i < ARRAY_SIZE(buses); i++)
		if (!strcmp(s, buses[i]))
			return 0;
	return err_input(err, 400, f, "'%s' must be virtio, scsi, sata or ide", f);
}

static const struct json_field disk_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"size_bytes", JK_INT, true, disk_size_check},
	{"bus", JK_STRING, false, bus_check},
	{NULL, 0, false, NULL},
};

static int disks_check(struct json_object *v, const char *f, struct kerr *err)
{
	size_t n = json_array_len(v);

	if (n == 0)
		return err_input(err, 400, f, "'%s' needs at least one disk", f);
	if (json_array_check(v, f, disk_fields, P2V_DISKS_MAX, err) < 0)
		return -1;
	return json_array_unique_check(v, f, "name", "disks", err);
}

static int model_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "virtio") && strcmp(s, "e1000"))
		return err_input(err, 400, f, "'%s' must be virtio or e1000", f);
	return 0;
}

static int mac_check(struct json_object *v, const char *f, struct kerr *err)
{
	unsigned b[6];
	char end;

	if (sscanf(json_object_get_string(v), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2],
		   &b[3], &b[4], &b[5], &end) != 6 ||
	    json_object_get_string_len(v) != 17 || (b[0] & 1))
		return err_input(err, 400, f, "'%s' must be a unicast MAC like 52:54:00:12:34:56",
				 f);
	return 0;
}

static const struct json_field nic_fields[] = {
	{"mac", JK_STRING, false, mac_check},
	{"model", JK_STRING, false, model_check},
	{"network", JK_STRING, false, name_check},
	{NULL, 0, false, NULL},
};

static int nics_check(struct json_object *v, const char *f, struct kerr *err)
{
	return json_array_check(v, f, nic_fields, P2V_NICS_MAX, err);
}

static int vcpus_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	return n < 1 || n > 256 ? err_input(err, 400, f, "'%s' must be 1..256", f) : 0;
}

static int memory_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	return n < 16 || n > 1024 * 1024 ? err_input(err, 400, f, "'%s' must be 16..1048576", f)
					 : 0;
}

static int firmware_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "bios") && strcmp(s, "efi"))
		return err_input(err, 400, f, "'%s' must be bios or efi", f);
	return 0;
}

static const struct json_field hardware_fields[] = {
	{"vcpus", JK_INT, false, vcpus_check},
	{"memory_mb", JK_INT, false, memory_check},
	{"nics", JK_ARRAY, false, nics_check},
	{"firmware", JK_STRING, false, firmware_check},
	{NULL, 0, false, NULL},
};

static int hardware_check(struct json_object *v, const char *f, struct kerr *err)
{
	return json_fields_check_in(v, hardware_fields, f, err);
}

static int ttl_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	return n < 1 || n > P2V_TTL_MAX
		       ? err_input(err, 400, f, "'%s' must be 1..%d seconds", f, P2V_TTL_MAX)
		       : 0;
}

static const struct json_field create_fields[] = {
	{"name", JK_STRING, true, name_check},		{"disks", JK_ARRAY, true, disks_check},
	{"hardware", JK_OBJECT, false, hardware_check}, {"token_ttl_s", JK_INT, false, ttl_check},
	{"deadline_s", JK_INT, false, ttl_check},	{NULL, 0, false, NULL},
};

/* Disk d's chunk table, all holes; its file's path. */
static void disk_init(struct p2v_session *s, struct p2v_disk *d)
{
	d->path = xasprintf("%s/%s.raw", s->dir, d->name);
	d->nchunks = (uint32_t)((d->size + P2V_CHUNK - 1) / P2V_CHUNK);
	d->hash = xcalloc(d->nchunks, sizeof(*d->hash));
	d->has_data = xcalloc(d->nchunks, 1);
}

/* Make disk d's sparse file (all zero: every chunk's hash is the zero chunk's). */
static int disk_open(struct p2v_session *s, struct p2v_disk *d, struct kerr *err)
{
	disk_init(s, d);
	d->fd = open(d->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (d->fd < 0)
		return err_set(err, errno, "cannot create %s: %s", d->path, strerror(errno));
	if (ftruncate(d->fd, d->size) < 0)
		return err_set(err, errno, "cannot size %s: %s", d->path, strerror(errno));
	return 0;
}

enum MHD_Result api_p2v_create(struct request *req)
{
	struct json_object *body, *disks, *o, *res;
	struct p2v_session *s;
	char token[TOKEN_LEN + 1];
	unsigned char rnd[8];
	struct kerr err;
	int64_t now = now_ms(), declared = 0;
	char why[256];
	int rc, live = 0;

	if (http_body_json(req, create_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	timer_ensure();
	{
		struct json_object *inst = instance_get_json(json_get_str(body, "name", ""), false);

		if (inst) {
			enum MHD_Result ret =
				http_reply_error(req, 409, "name", "an instance named %s exists",
						 json_get_str(body, "name", ""));

			json_object_put(inst);
			json_object_put(body);
			return ret;
		}
	}
	for (s = sessions; s; s = s->next) {
		if (s->state <= P2V_CUTTING_OVER)
			live++;
		if (!strcmp(s->name, json_get_str(body, "name", "")) &&
		    s->state <= P2V_CUTTING_OVER) {
			enum MHD_Result ret = http_reply_error(
				req, 409, "name", "p2v session %s already brings in %s", s->id,
				s->name);

			json_object_put(body);
			return ret;
		}
	}
	/* Each session holds raw files on the shared pool and a token that writes there. */
	if (live >= ctl.cfg.p2v_max_sessions) {
		json_object_put(body);
		return http_reply_error(req, 429, NULL,
					"%d p2v sessions are receiving or cutting over, the most "
					"p2v_max_sessions allows; finish or delete one first",
					live);
	}
	/* The raw files start sparse but fill as the source sends; and its cutover
	 * converts them. Refuse at once what could only fill the pool. */
	disks = json_object_object_get(body, "disks");
	for (size_t i = 0; i < json_array_len(disks); i++)
		declared += json_get_int(json_object_array_get_idx(disks, i), "size_bytes", 0);
	if (image_room_check(declared, why, sizeof(why)) < 0) {
		json_object_put(body);
		return http_reply_error(req, 507, "disks", "the session's disks are refused: %s",
					why);
	}
	s = xcalloc(1, sizeof(*s));
	random_bytes(rnd, sizeof(rnd));
	hex_encode(rnd, sizeof(rnd), s->id);
	snprintf(s->name, sizeof(s->name), "%s", json_get_str(body, "name", ""));
	s->created_at = now;
	s->token_expires_at = now + 1000 * json_get_int(body, "token_ttl_s", P2V_TTL_DEFAULT);
	s->deadline = now + 1000 * json_get_int(body, "deadline_s", P2V_TTL_DEFAULT);
	s->hardware = json_object_get(json_object_object_get(body, "hardware"));
	if (s->hardware == NULL)
		s->hardware = json_object_new_object();
	for (int i = 0; i < P2V_DISKS_MAX; i++)
		s->disks[i].fd = -1;
	snprintf(s->dir, sizeof(s->dir), "%s/" P2V_DIR "/%s", ctl.cfg.shared_pool, s->id);
	rc = mkdir_p(s->dir, 0700);
	if (rc < 0) {
		err_set(&err, -rc, "cannot create %s: %s", s->dir, strerror(-rc));
		s->dir[0] = '\0';
		goto fail;
	}
	for (size_t i = 0; i < json_array_len(disks); i++) {
		struct p2v_disk *d = &s->disks[i];

		o = json_object_array_get_idx(disks, i);
		snprintf(d->name, sizeof(d->name), "%s", json_get_str(o, "name", ""));
		snprintf(d->bus, sizeof(d->bus), "%s", json_get_str(o, "bus", "sata"));
		d->size = json_get_int(o, "size_bytes", 0);
		s->ndisks++;
		if (disk_open(s, d, &err) < 0)
			goto fail;
	}
	res = json_object_new_object();
	json_object_object_add(res, "name", json_object_new_string(s->name));
	{
		_cleanup_free_ char *target = xasprintf("p2v/%s", s->id);

		o = op_create("p2v-ingest", target, NULL, res, &err);
	}
	if (o == NULL)
		goto fail;
	snprintf(s->op, sizeof(s->op), "%s", json_get_str(o, "id", ""));
	json_object_put(o);
	token_generate(token);
	token_digest(token, s->token_digest);
	if (store_session_save(s, &err) < 0) {
		op_update(s->op, "failed", -1, "failed", NULL, err.msg);
		OPENSSL_cleanse(token, sizeof(token));
		goto fail;
	}
	session_op_progress(s, "waiting for the source");
	s->next = sessions;
	sessions = s;
	log_info("p2v %s (%s): session created, %d disks", s->id, s->name, s->ndisks);
	json_object_put(body);
	o = session_json(s);
	/* The token is shown once, here; only its digest is kept. */
	json_object_object_add(o, "token", json_object_new_string(token));
	OPENSSL_cleanse(token, sizeof(token));
	return http_reply_json(req, 201, o);
fail:
	json_object_put(body);
	session_free(s);
	return http_reply_kerr(req, &err);
}

enum MHD_Result api_p2v_list(struct request *req)
{
	struct json_object *o = json_object_new_object(), *list = json_object_new_array();

	for (struct p2v_session *s = sessions; s; s = s->next)
		json_object_array_add(list, session_json(s));
	json_object_object_add(o, "sessions", list);
	return http_reply_json(req, 200, o);
}

static struct p2v_session *session_of(struct request *req)
{
	return session_find(req->params[0] ? req->params[0] : "");
}

enum MHD_Result api_p2v_get(struct request *req)
{
	struct p2v_session *s = session_of(req);

	if (s == NULL)
		return http_reply_error(req, 404, NULL, "no p2v session %s", req->params[0]);
	return http_reply_json(req, 200, session_json(s));
}

enum MHD_Result api_p2v_delete(struct request *req)
{
	struct kerr err;
	int rc = p2v_session_cancel(req->params[0], &err);

	if (rc < 0)
		return http_reply_kerr(req, &err);
	/* 202: a conversion is being stopped; the session goes once it has. */
	return http_reply_empty(req, rc ? 202 : 204);
}

/* ---- the ingest token ---- */

/*
 * The routes the source uses take the session's ingest token as their bearer, or an API
 * token (an operator may drive a session by hand). The ingest token opens only its own
 * session's routes (this family), only while the session receives, only until it
 * expires.
 */
static enum role ingest_authenticate(struct request *req, const char *authorization)
{
	struct p2v_session *s = session_of(req);
	struct token_auth ta = {0};
	const char *why;
	enum role r;
	char digest[TOKEN_DIGEST_LEN + 1];

	if (authorization && !strncmp(authorization, "Bearer ", 7) && s &&
	    token_well_formed(authorization + 7)) {
		token_digest(authorization + 7, digest);
		if (CRYPTO_memcmp(digest, s->token_digest, TOKEN_DIGEST_LEN) == 0)
			return s->state == P2V_RECEIVING && now_ms() < s->token_expires_at
				       ? ROLE_OPERATOR
				       : ROLE_NONE;
	}
	r = tokens_check(authorization, &ta, &why);

	req->token_id = ta.id;
	return r;
}

/* ---- chunks ---- */

/* One chunk on its way: collected from the body, then hashed and written off the loop. */
struct p2v_chunk {
	uv_work_t work;
	struct request *req;
	struct p2v_session *s;
	int disk;
	uint32_t index;
	size_t want, len;
	unsigned char expect[32], got[32];
	bool zero, hash_ok;
	int error; /* errno of a failed write */
	unsigned status;
	char msg[256];
	char data[];
};

/*
 * Chunk buffers are kept for the next chunk rather than freed: a fresh 1 MiB
 * allocation costs a page fault per 4 KiB on first touch, which profiling showed as a
 * tenth of the controller's time in a pass. A few suffice: one per chunk in flight.
 */
#define CHUNK_POOL_MAX 8
static struct p2v_chunk *chunk_pool[CHUNK_POOL_MAX];
static int chunk_pool_len;

static struct p2v_chunk *chunk_get(void)
{
	struct p2v_chunk *c =
		chunk_pool_len ? chunk_pool[--chunk_pool_len] : xmalloc(sizeof(*c) + P2V_CHUNK);

	memset(c, 0, sizeof(*c));
	return c;
}

static void chunk_put(struct p2v_chunk *c)
{
	if (chunk_pool_len < CHUNK_POOL_MAX)
		chunk_pool[chunk_pool_len++] = c;
	else
		free(c);
}

/* Parse "{disk}/chunks/{offset}" into disk and chunk index, checked against the disk. */
static int chunk_path_parse(struct p2v_session *s, const char *rest, int *disk, uint32_t *index,
			    size_t *len, struct kerr *err)
{
	const char *slash = strchr(rest, '/');
	char name[NAME_MAX_LEN + 1], *end;
	unsigned long long off;
	int i;

	if (slash == NULL || (size_t)(slash - rest) > NAME_MAX_LEN ||
	    strncmp(slash, "/chunks/", 8) != 0)
		return err_input(err, 404, NULL, "the path must be disks/{disk}/chunks/{offset}");
	snprintf(name, sizeof(name), "%.*s", (int)(slash - rest), rest);
	for (i = 0; i < s->ndisks && strcmp(s->disks[i].name, name); i++)
		;
	if (i == s->ndisks)
		return err_input(err, 404, NULL, "p2v session %s has no disk '%s'", s->id, name);
	errno = 0;
	off = strtoull(slash + 8, &end, 10);
	if (slash[8] < '0' || slash[8] > '9' || *end || errno)
		return err_input(err, 400, "offset", "the offset must be a decimal byte offset");
	if (off % P2V_CHUNK || off >= (unsigned long long)s->disks[i].size)
		return err_input(err, 400, "offset",
				 "offset %llu is not a multiple of %d inside the %lld-byte disk",
				 off, P2V_CHUNK, (long long)s->disks[i].size);
	*disk = i;
	*index = (uint32_t)(off / P2V_CHUNK);
	*len = s->disks[i].size - (long long)off < P2V_CHUNK
		       ? (size_t)(s->disks[i].size - (long long)off)
		       : P2V_CHUNK;
	return 0;
}

/* Headers in: check everything about the chunk before a byte of its body is kept. */
static enum MHD_Result chunk_begin(struct request *req)
{
	struct p2v_session *s = session_of(req);
	const char *hex = http_query(req, "sha256");
	const char *cl = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Content-Length");
	struct p2v_chunk *c;
	unsigned char expect[32];
	uint32_t index = 0;
	size_t len = 0;
	struct kerr err;
	int disk = 0;

	if (s == NULL)
		return http_reply_error(req, 404, NULL, "no p2v session %s", req->params[0]);
	if (s->state != P2V_RECEIVING)
		return http_reply_error(req, 409, NULL, "p2v session %s is %s, not receiving",
					s->id, state_names[s->state]);
	if (chunk_path_parse(s, req->params[1], &disk, &index, &len, &err) < 0)
		return http_reply_kerr(req, &err);
	if (hex == NULL || strlen(hex) != 64 || hex_decode(hex, expect, sizeof(expect)) < 0)
		return http_reply_error(req, 400, "sha256",
					"query parameter 'sha256' must be the chunk's SHA-256 "
					"in hex");
	if (cl == NULL || strtoull(cl, NULL, 10) != len)
		return http_reply_error(
			req, 400, NULL,
			"this chunk is %zu bytes; send exactly that (Content-Length)", len);
	c = chunk_get(); /* room for P2V_CHUNK >= len */
	c->req = req;
	c->disk = disk;
	c->index = index;
	c->want = len;
	memcpy(c->expect, expect, 32);
	req->ctx = c;
	return MHD_YES;
}

static void chunk_data(struct request *req, const char *data, size_t len)
{
	struct p2v_chunk *c = req->ctx;

	if (c == NULL)
		return;
	if (c->len + len > c->want) {
		c->len = c->want + 1; /* over: answered 400 at the end */
		return;
	}
	memcpy(c->data + c->len, data, len);
	c->len += len;
}

static void chunk_end(struct request *req)
{
	struct p2v_chunk *c = req->ctx;

	/* A chunk whose write is in flight is freed by its done callback. */
	if (c && c->s == NULL)
		chunk_put(c);
	req->ctx = NULL;
}

/* Off the loop: hash, then write the chunk or punch its hole. */
static void chunk_work_cb(uv_work_t *w)
{
	struct p2v_chunk *c = w->data;
	struct p2v_disk *d = &c->s->disks[c->disk];
	off_t off = (off_t)c->index * P2V_CHUNK;
	size_t done = 0;

	sha256(c->data, c->len, c->got);
	c->hash_ok = CRYPTO_memcmp(c->got, c->expect, 32) == 0;
	if (!c->hash_ok)
		return;
	c->zero = mem_is_zero(c->data, c->len);
	if (c->zero) {
		/* Sparse stays sparse: a hole reads as zeros. */
		if (fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
			      (off_t)c->len) < 0)
			c->zero = false; /* no hole punching here: write the zeros */
		else
			return;
	}
	while (done < c->len) {
		ssize_t n = pwrite(d->fd, c->data + done, c->len - done, off + (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			c->error = n < 0 ? errno : EIO;
			return;
		}
		done += (size_t)n;
	}
}

static enum MHD_Result chunk_reply(struct request *req)
{
	struct p2v_chunk *c = req->ctx;
	enum MHD_Result ret;

	req->ctx = NULL;
	if (c->status == 204)
		ret = http_reply_empty(req, 204);
	else
		ret = http_reply_error(req, c->status, c->status == 400 ? "sha256" : NULL, "%s",
				       c->msg);
	chunk_put(c);
	return ret;
}

static void chunk_done_cb(uv_work_t *w, int status)
{
	struct p2v_chunk *c = w->data;
	struct p2v_session *s = c->s;
	struct p2v_disk *d = &s->disks[c->disk];
	struct p2v_pass *p = s->npasses ? &s->passes[s->npasses - 1] : NULL;
	int64_t now = now_ms();

	if (status < 0 || c->error) {
		c->status = 500;
		snprintf(c->msg, sizeof(c->msg), "cannot store the chunk: %s",
			 strerror(c->error ? c->error : EIO));
	} else if (!c->hash_ok) {
		c->status = 400;
		snprintf(c->msg, sizeof(c->msg),
			 "the chunk's SHA-256 does not match the one sent; it was not stored");
		s->chunks_rejected++;
	} else if (!s->removing) {
		struct kerr err;

		c->status = 204;
		memcpy(d->hash[c->index], c->got, 32);
		d->has_data[c->index] = !c->zero;
		s->bytes_received += (int64_t)c->len;
		s->chunks_stored++;
		if (s->first_chunk_at == 0)
			s->first_chunk_at = now - 1;
		s->last_chunk_at = now;
		if (p) {
			p->chunks++;
			p->bytes += (int64_t)c->len;
			p->zero_chunks += c->zero;
		}
		/* Answered stored only once the row says so: a restart then asks for
		 * nothing the source was told is held. */
		s->write_seq++;
		if (store_chunk_save(s, c->disk, c->index, c->zero ? NULL : c->got, &err) < 0) {
			c->status = 500;
			snprintf(c->msg, sizeof(c->msg), "%s", err.msg);
		}
	} else {
		c->status = 410;
		snprintf(c->msg, sizeof(c->msg), "the p2v session was removed");
	}
	c->s = NULL;
	session_unbusy(s);
	http_resume(c->req);
}

/* The whole chunk is in: hash and store it off the loop, answer when done. */
enum MHD_Result api_p2v_chunk_put(struct request *req)
{
	struct p2v_chunk *c = req->ctx;
	struct p2v_session *s = session_of(req);

	if (c == NULL || s == NULL || s->state != P2V_RECEIVING)
		return http_reply_error(req, 409, NULL, "the p2v session is not receiving");
	if (c->len != c->want)
		return http_reply_error(req, 400, NULL, "this chunk is %zu bytes, not %zu", c->want,
					c->len);
	c->s = s;
	s->busy++;
	c->work.data = c;
	http_suspend(req, chunk_reply);
	uv_queue_work(ctl.loop, &c->work, chunk_work_cb, chunk_done_cb);
	return MHD_YES;
}

/* ---- passes ---- */

/*
 * Start a pass (or, with ?resume=1, continue the current one after a dropped
 * connection) and answer every chunk's hash as stored: the source sends the others.
 */
enum MHD_Result api_p2v_pass_start(struct request *req)
{
	struct p2v_session *s = session_of(req);
	const char *resume = http_query(req, "resume");
	struct json_object *o, *disks = json_object_new_array();
	char hex[65], phase[64];
	int64_t now = now_ms();

	if (s == NULL || s->state != P2V_RECEIVING) {
		json_object_put(disks);
		return http_reply_error(req, s ? 409 : 404, NULL,
					s ? "the p2v session is not receiving"
					  : "no such p2v session");
	}
	if (!(resume && !strcmp(resume, "1") && s->npasses > 0)) {
		if (s->npasses == P2V_PASSES_MAX) {
			json_object_put(disks);
			return http_reply_error(req, 409, NULL, "a session has at most %d passes",
						P2V_PASSES_MAX);
		}
		if (s->npasses)
			s->passes[s->npasses - 1].ended_at = now;
		s->passes[s->npasses++] = (struct p2v_pass){.started_at = now};
		snprintf(phase, sizeof(phase), "pass %d", s->npasses);
		session_op_progress(s, phase);
		session_save(s);
	}
	/* Only the chunks that hold data, keyed by index: the answer grows with what was
	 * received, never with the disks' declared size (16 TiB is 16 M chunks). */
	for (int i = 0; i < s->ndisks; i++) {
		struct p2v_disk *d = &s->disks[i];
		struct json_object *dj = json_object_new_object(), *stored;
		char key[16];

		stored = json_object_new_object();
		for (uint32_t c = 0; c < d->nchunks; c++) {
			if (!d->has_data[c])
				continue;
			hex_encode(d->hash[c], 32, hex);
			snprintf(key, sizeof(key), "%u", c);
			json_object_object_add(stored, key, json_object_new_string(hex));
		}
		json_object_object_add(dj, "name", json_object_new_string(d->name));
		json_object_object_add(dj, "size_bytes", json_object_new_int64(d->size));
		json_object_object_add(dj, "stored", stored);
		json_object_array_add(disks, dj);
	}
	o = json_object_new_object();
	json_object_object_add(o, "pass", json_object_new_int(s->npasses));
	json_object_object_add(o, "chunk_size", json_object_new_int(P2V_CHUNK));
	json_object_object_add(o, "disks", disks);
	return http_reply_json(req, 200, o);
}

/* ---- cutover ---- */

static const struct json_field cutover_fields[] = {
	{"start", JK_BOOL, false, NULL},
	{"convert", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};

static void cut_next(struct p2v_session *s);
static void cut_steps_done(struct p2v_session *s);

static void cut_fail(struct p2v_session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void cut_fail(struct p2v_session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->error, sizeof(s->error), fmt, ap);
	va_end(ap);
	log_warnx("p2v %s: cutover failed: %s", s->id, s->error);
	s->state = P2V_FAILED;
	cut_steps_done(s);
}

/* The image disk d becomes: p2v-{vm}-{disk}. */
static void cut_image_name(const struct p2v_session *s, const struct p2v_disk *d,
			   char out[NAME_MAX_LEN + 1])
{
	snprintf(out, NAME_MAX_LEN + 1, "p2v-%.40s-%.16s", s->name, d->name);
}

/* The cut is through (its VM exists): the raw files go, the session is done. */
static void session_done(struct p2v_session *s)
{
	for (int i = 0; i < s->ndisks; i++) {
		struct p2v_disk *d = &s->disks[i];

		if (d->fd >= 0)
			close(d->fd);
		d->fd = -1;
		if (d->path && unlink(d->path) < 0 && errno != ENOENT)
			log_warn("p2v %s: cannot remove %s", s->id, d->path);
	}
	s->state = P2V_DONE;
	/* Its files are images now; the empty directory goes with them. */
	if (s->dir[0] && rmdir(s->dir) == 0)
		s->dir[0] = '\0';
	session_end(s, "succeeded", NULL);
}

/* The VM the session becomes: its disks as images, its hardware as the source's. */
static struct json_object *cut_instance_body(struct p2v_session *s)
{
	struct json_object *b = json_object_new_object(), *disks = json_object_new_array();
	struct json_object *nics = json_object_new_array(), *mem = json_object_new_object();
	struct json_object *hw = s->hardware, *in_nics = json_object_object_get(hw, "nics");

	json_object_object_add(b, "name", json_object_new_string(s->name));
	json_object_object_add(b, "type", json_object_new_string("vm"));
	json_object_object_add(b, "vcpus", json_object_new_int64(json_get_int(hw, "vcpus", 1)));
	json_object_object_add(mem, "mb",
			       json_object_new_int64(json_get_int(hw, "memory_mb", 512)));
	json_object_object_add(b, "memory", mem);
	for (int i = 0; i < s->ndisks; i++) {
		struct json_object *d = json_object_new_object();

		json_object_object_add(d, "name", json_object_new_string(s->disks[i].name));
		json_object_object_add(d, "image", json_object_new_string(s->disks[i].image));
		/* A converted guest boots from virtio-blk (virt-v2v installed its driver and
		 * fixed fstab and the boot loader); otherwise it keeps the source's bus. */
		json_object_object_add(
			d, "bus",
			json_object_new_string(s->converted ? "virtio" : s->disks[i].bus));
		json_object_object_add(d, "pool", json_object_new_string("shared"));
		json_object_array_add(disks, d);
	}
	json_object_object_add(b, "disks", disks);
	for (size_t i = 0; in_nics && i < json_array_len(in_nics); i++) {
		struct json_object *n = json_object_array_get_idx(in_nics, i);
		struct json_object *o = json_object_new_object();

		json_object_object_add(
			o, "model",
			json_object_new_string(s->converted ? "virtio"
							    : json_get_str(n, "model", "virtio")));
		if (json_get_str(n, "mac", NULL))
			json_object_object_add(o, "mac",
					       json_object_new_string(json_get_str(n, "mac", "")));
		if (json_get_str(n, "network", NULL))
			json_object_object_add(
				o, "network",
				json_object_new_string(json_get_str(n, "network", "")));
		json_object_array_add(nics, o);
	}
	json_object_object_add(b, "nics", nics);
	json_object_object_add(b, "start", json_object_new_boolean(s->cut_start));
	if (s->converted) {
		if (s->notes == NULL)
			s->notes = json_object_new_array();
		json_object_array_add(
			s->notes, json_object_new_string("converted by virt-v2v: the disk is on "
							 "virtio-blk and the NICs are virtio"));
	}
	/* Foreign hardware Kumo does not model is kept as a note, never dropped silently. */
	if (!strcmp(json_get_str(hw, "firmware", "bios"), "efi")) {
		if (s->notes == NULL)
			s->notes = json_object_new_array();
		json_object_array_add(s->notes,
				      json_object_new_string("firmware efi: Kumo VMs boot with "
							     "SeaBIOS; the guest needs a BIOS "
							     "boot loader"));
	}
	return b;
}

/*
 * Remove what a cut that did not make its VM made: the images it recorded and the
 * qcow2 files it wrote (recorded or not: a conversion writes them all before any is
 * recorded). The session's raw files stay.
 */
static void cut_undo(struct p2v_session *s)
{
	for (int i = 0; i < s->ndisks; i++) {
		struct p2v_disk *d = &s->disks[i];
		char image[NAME_MAX_LEN + 1];
		_cleanup_free_ char *path = NULL;

		cut_image_name(s, d, image);
		path = xasprintf("%s/images/%s.qcow2", ctl.cfg.shared_pool, image);
		if (d->image[0]) {
			sqlite3_stmt *st = db_prepare(
				ctl.db, "DELETE FROM images WHERE name = ? AND kind = 'vm'");

			sqlite3_bind_text(st, 1, d->image, -1, SQLITE_STATIC);
			if (sqlite3_step(st) != SQLITE_DONE)
				log_warnx("p2v %s: cannot remove image %s: %s", s->id, d->image,
					  sqlite3_errmsg(ctl.db));
			sqlite3_finalize(st);
			d->image[0] = '\0';
		} else if (image_find(image, NULL, 0, NULL, NULL) != 0) {
			continue; /* someone else's image of that name: the cut refuses it */
		}
		if (unlink(path) < 0 && errno != ENOENT)
			log_warn("p2v %s: cannot remove %s", s->id, path);
	}
}

/* Every disk is an image: create the VM through the instance create path. */
/*
 * The cut's steps are over: every disk is recorded (the VM is created through the
 * instance create path, the session is done) or the cut failed (what it made is
 * removed, the session ends failed or cancelled). Returns the instance-create
 * operation (new reference), or NULL with err (the session is gone then).
 */
static struct json_object *cut_finish(struct p2v_session *s, struct kerr *err)
{
	struct json_object *body, *op;

	if (s->state == P2V_FAILED) {
		/* Nothing of the cut stays behind: its images and qcow2 files, then (the
		 * session ending) its raw files. session_end() frees s. */
		cut_undo(s);
		if (s->cut_cancelling) {
			err_input(err, 409, NULL,
				  "the p2v session was cancelled during its cutover");
			session_end(s, "cancelled",
				    "the session was abandoned during its conversion");
			return NULL;
		}
		err_input(err, 500, NULL, "cutover failed: %s", s->error);
		session_end(s, "failed", s->error);
		return NULL;
	}
	body = cut_instance_body(s);
	op = instance_create(body, NULL, NULL, err);
	json_object_put(body);
	if (op) {
		snprintf(s->inst_op, sizeof(s->inst_op), "%s", json_get_str(op, "id", ""));
		session_done(s);
		return op;
	}
	snprintf(s->error, sizeof(s->error), "the VM could not be created: %s", err->msg);
	session_end(s, "failed", s->error);
	return NULL;
}

/* The cutover's request, resumed once the cut's steps are over: what cut_finish made. */
static enum MHD_Result cut_create(struct request *req)
{
	struct p2v_session *s = NULL;
	struct json_object *op;
	struct kerr err;

	for (struct p2v_session *x = sessions; x; x = x->next)
		if (x->cut_req == req)
			s = x;
	if (s == NULL)
		return http_reply_error(req, 410, NULL, "the p2v session was removed");
	s->cut_req = NULL;
	op = cut_finish(s, &err);
	return op ? http_reply_json(req, 202, op) : http_reply_kerr(req, &err);
}

/*
 * The cut's steps are over (done or failed): resume the cutover's request, or, for a
 * conversion (whose request was answered at its start: it outlasts any HTTP timeout),
 * finish here; its operation tells the end.
 */
static void cut_steps_done(struct p2v_session *s)
{
	struct json_object *op;
	struct kerr err;

	if (s->removing) {
		session_unbusy(s); /* frees it */
		return;
	}
	session_unbusy(s);
	if (s->cut_req) {
		http_resume(s->cut_req);
		return;
	}
	op = cut_finish(s, &err);
	if (op == NULL)
		log_warnx("p2v: %s", err.msg);
	json_object_put(op);
}

struct cut_hash {
	uv_work_t work;
	struct p2v_session *s;
	char *path;
	char sha256[65];
	int64_t file_size;
	int error;
};

static void cut_hash_work_cb(uv_work_t *w)
{
	struct cut_hash *h = w->data;
	unsigned char buf[1 << 16], md[32];
	unsigned int mdlen = 32;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int fd = open(h->path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	ssize_t n = 0;

	if (fd < 0 || ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		h->error = errno ? errno : EIO;
		goto out;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		EVP_DigestUpdate(ctx, buf, (size_t)n);
	if (n < 0 || fsync(fd) < 0 || fstat(fd, &sb) < 0) {
		h->error = errno;
		goto out;
	}
	h->file_size = sb.st_size;
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	hex_encode(md, 32, h->sha256);
out:
	if (fd >= 0)
		close(fd);
	EVP_MD_CTX_free(ctx);
}

static void cut_hash_done_cb(uv_work_t *w, int status)
{
	struct cut_hash *h = w->data;
	struct p2v_session *s = h->s;
	struct p2v_disk *d = &s->disks[s->cut_disk];
	char image[NAME_MAX_LEN + 1];
	_cleanup_free_ char *rel = NULL;
	struct kerr err;

	cut_image_name(s, d, image);
	rel = xasprintf("images/%s.qcow2", image);
	if (status < 0 || h->error) {
		unlink(h->path);
		cut_fail(s, "cannot hash %s: %s", h->path, strerror(h->error ? h->error : EIO));
	} else if (images_record(image, rel, "raw", d->size, h->file_size, h->sha256, &err) < 0) {
		unlink(h->path);
		cut_fail(s, "%s", err.msg);
	} else {
		/* The raw file stays until the VM exists: a restart before then rolls the
		 * cut back (cut_roll_back) and the retried cutover needs it. */
		memcpy(d->image, image, sizeof(image));
		session_save(s);
		s->cut_disk++;
		cut_next(s);
	}
	free(h->path);
	free(h);
}

/* Hash disk cut_disk's qcow2 off the loop, then record it as an image. */
static void cut_hash_start(struct p2v_session *s)
{
	struct p2v_disk *d = &s->disks[s->cut_disk];
	struct cut_hash *h = xcalloc(1, sizeof(*h));
	char image[NAME_MAX_LEN + 1];

	h->s = s;
	cut_image_name(s, d, image);
	h->path = xasprintf("%s/images/%s.qcow2", ctl.cfg.shared_pool, image);
	h->work.data = h;
	uv_queue_work(ctl.loop, &h->work, cut_hash_work_cb, cut_hash_done_cb);
}

static void cut_convert_cb(int64_t status, const char *out, const char *errout, void *cls)
{
	struct p2v_session *s = cls;
	struct p2v_disk *d = &s->disks[s->cut_disk];

	if (status != 0) {
		cut_fail(s, "qemu-img convert of disk %s failed: %.200s", d->name, errout);
		return;
	}
	if (s->cut_convert) {
		/* Hashed and recorded once virt-v2v has rewritten it. */
		s->cut_disk++;
		cut_next(s);
		return;
	}
	cut_hash_start(s);
}

/* ---- conversion: virt-v2v-in-place on the qcow2 files the cut wrote ---- */

static void v2v_step_cb(const char *step, void *data)
{
	struct p2v_session *s = data;
	char phase[200];

	if (s->cut_cancelling)
		return; /* its phase says "cancelling" until it ends */
	snprintf(phase, sizeof(phase), "cutover: virt-v2v: %s", step);
	op_update(s->op, "running", 92, phase, NULL, NULL);
}

static void v2v_done_cb(enum p2v_convert_end end, const char *why, void *data)
{
	struct p2v_session *s = data;

	s->v2v = NULL;
	if (s->cut_cancelling) {
		cut_fail(s, "cancelled during the conversion");
		return;
	}
	switch (end) {
	case P2V_CONVERT_OK:
		break;
	case P2V_CONVERT_TIMED_OUT:
		cut_fail(s, "timed out: virt-v2v did not finish before the session's deadline");
		return;
	case P2V_CONVERT_CANCELLED:
		cut_fail(s, "virt-v2v was stopped");
		return;
	case P2V_CONVERT_FAILED:
		/* It refused the guest (not an OS it recognises, no boot loader it knows)
		 * or failed: its own reason is the operation's error. */
		cut_fail(s, "virt-v2v could not convert disk%s %s%s: %s", s->ndisks > 1 ? "s" : "",
			 s->disks[0].name, s->ndisks > 1 ? " ..." : "", why);
		return;
	}
	log_info("p2v %s (%s): converted by virt-v2v", s->id, s->name);
	s->converted = true;
	s->cut_disk = 0;
	cut_next(s);
}

/*
 * Run virt-v2v-in-place on the session's disks (the qcow2 files the cut wrote): virtio
 * drivers into the guest's initramfs, fstab and the boot loader fixed, before its
 * first boot (p2v_convert.c). Its libguestfs appliance is a QEMU of its own (run as
 * root, like the controller: it opens the images and /dev/kvm). The session's deadline
 * bounds it; a cancel kills it and its appliance. The run is counted in the row before
 * it starts, so a restart knows how many a cutover started.
 */
static void v2v_start(struct p2v_session *s)
{
	struct p2v_convert_disk disks[P2V_DISKS_MAX];
	char *paths[P2V_DISKS_MAX] = {0};
	char phase[96];
	struct kerr err;

	for (int i = 0; i < s->ndisks; i++) {
		char image[NAME_MAX_LEN + 1];

		cut_image_name(s, &s->disks[i], image);
		paths[i] = xasprintf("%s/images/%s.qcow2", ctl.cfg.shared_pool, image);
		disks[i].path = paths[i];
		disks[i].bus = s->disks[i].bus;
	}
	s->convert_tries++;
	session_save(s);
	snprintf(phase, sizeof(phase), "cutover: virt-v2v: starting (run %d of at most %d)",
		 s->convert_tries, P2V_CONVERT_TRIES);
	op_update(s->op, "running", 91, phase, NULL, NULL);
	log_info("p2v %s (%s): converting %d disks with virt-v2v-in-place (run %d)", s->id, s->name,
		 s->ndisks, s->convert_tries);
	s->v2v = p2v_convert_start(s->id, disks, s->ndisks, s->deadline, v2v_step_cb, v2v_done_cb,
				   s, &err);
	for (int i = 0; i < s->ndisks; i++)
		free(paths[i]);
	if (s->v2v == NULL)
		cut_fail(s, "cannot run virt-v2v-in-place: %s", err.msg);
}

/* Convert the next disk to a sparse qcow2 image, virt-v2v them if asked, record them
 * as images; then create the VM. */
static void cut_next(struct p2v_session *s)
{
	struct p2v_disk *d;
	_cleanup_free_ char *out = NULL, *dir = NULL;
	struct kerr err;
	char phase[96], image[NAME_MAX_LEN + 1];

	if (s->cut_disk == s->ndisks && s->cut_convert && !s->converted) {
		v2v_start(s);
		return;
	}
	if (s->cut_disk == s->ndisks) {
		cut_steps_done(s);
		return;
	}
	d = &s->disks[s->cut_disk];
	cut_image_name(s, d, image);
	if (image_find(image, NULL, 0, NULL, NULL) != 0) {
		cut_fail(s, "an image named %s exists already", image);
		return;
	}
	if (s->converted) {
		cut_hash_start(s);
		return;
	}
	dir = xasprintf("%s/images", ctl.cfg.shared_pool);
	mkdir_p(dir, 0755);
	out = xasprintf("%s/%s.qcow2", dir, image);
	snprintf(phase, sizeof(phase), "cutover: converting disk %s", d->name);
	op_update(s->op, "running", 90, phase, NULL, NULL);
	{
		/* No fsync of the raw file: qemu-img reads it through the same page cache
		 * (the kernel flushes dirty pages before any direct read), and an fsync of
		 * a large disk here blocked the loop for seconds of the cutover. The qcow2
		 * it writes is fsynced off the loop (cut_hash_work_cb). */
		char *argv[] = {"qemu-img", "convert", "-f",	"raw", "-O", "qcow2",
				"-S",	    "4k",      d->path, out,   NULL};

		if (proc_run(argv, cut_convert_cb, s, &err) < 0)
			cut_fail(s, "%s", err.msg);
	}
}

/*
 * End the session and make the VM: every disk becomes image p2v-{name}-{disk} ("convert":
 * true: rewritten by virt-v2v first, v2v_start), then the instance create path places
 * and creates {name} with them (stopped unless "start": true). Answers what instance
 * create answers (202 and its operation); a failed cut leaves nothing of itself.
 */
enum MHD_Result api_p2v_action(struct request *req)
{
	struct p2v_session *s = session_of(req);
	struct json_object *body = NULL, *inst;
	struct kerr err;

	if (s == NULL)
		return http_reply_error(req, 404, NULL, "no p2v session %s", req->params[0]);
	if (strcmp(req->params[1], "cutover"))
		return http_reply_error(req, 404, NULL, "p2v sessions have one action: cutover");
	if (s->state != P2V_RECEIVING)
		return http_reply_error(req, 409, NULL, "p2v session %s is %s", s->id,
					state_names[s->state]);
	if (s->busy)
		return http_reply_error(req, 409, NULL, "chunks are still being written; retry");
	if (req->body_len && http_body_json(req, cutover_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	s->cut_start = body ? json_get_bool(body, "start", false) : false;
	s->cut_convert = body ? json_get_bool(body, "convert", false) : false;
	json_object_put(body);
	inst = instance_get_json(s->name, false);
	if (inst) {
		json_object_put(inst);
		return http_reply_error(req, 409, NULL, "an instance named %s exists", s->name);
	}
	if (s->npasses)
		s->passes[s->npasses - 1].ended_at = now_ms();
	s->state = P2V_CUTTING_OVER;
	s->cut_disk = 0;
	s->converted = s->cut_cancelling = false;
	s->convert_tries = 0;
	s->cut_req = req;
	s->busy++;
	session_save(s);
	log_info("p2v %s (%s): cutover after %d passes", s->id, s->name, s->npasses);
	if (s->cut_convert) {
		/* Minutes under TCG: answered now with the session's operation, which
		 * shows virt-v2v's steps and ends with the VM's instance-create operation
		 * in its result (or why the cut failed). */
		char op_id[sizeof(s->op)];

		memcpy(op_id, s->op, sizeof(op_id));
		s->cut_req = NULL;
		cut_next(s); /* may end the session at once */
		inst = op_get(op_id);
		return inst ? http_reply_json(req, 202, inst)
			    : http_reply_error(req, 500, NULL, "the session's operation is gone");
	}
	http_suspend(req, cut_create);
	cut_next(s);
	return MHD_YES;
}

/* The family of routes the source's ingest token opens (see ingest_authenticate). */
static enum MHD_Result no_begin(struct request *req)
{
	return MHD_YES;
}

static void no_data(struct request *req, const char *data, size_t len)
{
	/* Bodies of these routes are small JSON: keep them like any other body. */
	if (req->body_len + len > 4096) {
		req->body_too_large = true;
		return;
	}
	req->body = xrealloc(req->body, req->body_len + len + 1);
	memcpy(req->body + req->body_len, data, len);
	req->body_len += len;
	req->body[req->body_len] = '\0';
}

static void no_end(struct request *req)
{
}

const struct stream_ops api_p2v_ingest = {no_begin, no_data, no_end, ingest_authenticate};
const struct stream_ops api_p2v_chunks = {chunk_begin, chunk_data, chunk_end, ingest_authenticate};

/* ---- after a restart ---- */

bool p2v_session_exists(const char *id)
{
	return session_find(id) != NULL;
}

/*
 * A converting cut the restart interrupted, what it made removed: convert again from
 * the received raw files, or, once P2V_CONVERT_TRIES runs were started, end failed
 * saying so (its raw files go too). Retried rather than failed at once because the
 * cutover was answered 202 when it began: the source (kumo-p2v) has gone, and the
 * conversion of the same raw files is as good the second time. The session's deadline
 * bounds the new run as it did the first.
 */
static void cut_convert_again(struct p2v_session *s)
{
	struct json_object *op = op_get(s->op);
	bool cancelled = op && (json_get_str(op, "cancel", NULL) ||
				!strcmp(json_get_str(op, "phase", ""), "cancelling"));
	char phase[160];

	json_object_put(op);
	if (cancelled) {
		/* Abandoned (DELETE, or the operation's cancel) while virt-v2v ran, and the
		 * controller died before the kill came back: the cancel stands. */
		s->state = P2V_FAILED;
		session_end(s, "cancelled", "the session was abandoned during its conversion");
		return;
	}
	if (s->convert_tries >= P2V_CONVERT_TRIES) {
		snprintf(s->error, sizeof(s->error),
			 "the controller restarted during the conversion %d times; the cutover "
			 "was given up",
			 s->convert_tries);
		s->state = P2V_FAILED;
		session_end(s, "failed", s->error);
		return;
	}
	snprintf(phase, sizeof(phase),
		 "cutover: converting again: the controller restarted during the conversion");
	op_update(s->op, "running", 90, phase, NULL, NULL);
	log_info("p2v %s (%s): the interrupted conversion starts again", s->id, s->name);
	s->cut_disk = 0;
	s->converted = s->cut_cancelling = false;
	s->cut_req = NULL;
	s->busy++;
	cut_next(s);
}

/*
 * A cut the restart interrupted: if its VM exists, the cut went through (done);
 * otherwise what it made goes (cut_undo) and the session receives again, for the
 * source's retried cutover; a converting one converts again (cut_convert_again).
 */
static void cut_roll_back(struct p2v_session *s)
{
	struct json_object *inst = instance_get_json(s->name, false);

	if (inst) {
		json_object_put(inst);
		log_info("p2v %s (%s): its VM exists; the interrupted cutover is done", s->id,
			 s->name);
		session_done(s);
		return;
	}
	cut_undo(s);
	if (s->cut_convert) {
		cut_convert_again(s);
		return;
	}
	s->state = P2V_RECEIVING;
	s->cut_disk = 0;
	session_save(s);
	session_op_progress(s, "receiving again: the controller restarted during the cutover");
	log_info("p2v %s (%s): the interrupted cutover was rolled back", s->id, s->name);
}

/* A cut the restart interrupted that cannot go on: what it made goes, unless its VM
 * exists (then those images are the VM's). */
static void cut_abandon(struct p2v_session *s)
{
	struct json_object *inst;

	if (s->state != P2V_CUTTING_OVER)
		return;
	inst = instance_get_json(s->name, false);
	if (inst == NULL)
		cut_undo(s);
	json_object_put(inst);
}

static enum p2v_state state_parse(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(state_names); i++)
		if (!strcmp(name, state_names[i]))
			return (enum p2v_state)i;
	return P2V_FAILED;
}

static void passes_parse(struct p2v_session *s, struct json_object *a)
{
	for (size_t i = 0; i < json_array_len(a) && s->npasses < P2V_PASSES_MAX; i++) {
		struct json_object *o = json_object_array_get_idx(a, i);

		s->passes[s->npasses++] = (struct p2v_pass){
			.chunks = json_get_int(o, "chunks_changed", 0),
			.bytes = json_get_int(o, "bytes", 0),
			.zero_chunks = json_get_int(o, "zero_chunks", 0),
			.started_at = json_get_int(o, "started_at", 0),
			.ended_at = json_get_int(o, "ended_at", 0),
		};
	}
}

static const char *column_text(sqlite3_stmt *st, int i)
{
	const char *t = (const char *)sqlite3_column_text(st, i);

	return t ? t : "";
}

/* Session s's chunks as stored. */
static void chunks_load(struct p2v_session *s)
{
	sqlite3_stmt *st = db_prepare(
		ctl.db, "SELECT disk, chunk, sha256, unsynced FROM p2v_chunks WHERE session = ?");

	sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		int disk = sqlite3_column_int(st, 0);
		int64_t c = sqlite3_column_int64(st, 1);
		struct p2v_disk *d;

		if (disk < 0 || disk >= s->ndisks || c < 0 || c >= s->disks[disk].nchunks)
			continue;
		d = &s->disks[disk];
		if (sqlite3_column_int64(st, 3) > s->write_seq)
			s->write_seq = sqlite3_column_int64(st, 3);
		d->has_data[c] = sqlite3_column_bytes(st, 2) == 32;
		if (d->has_data[c])
			memcpy(d->hash[c], sqlite3_column_blob(st, 2), 32);
	}
	sqlite3_finalize(st);
}

/*
 * After a power loss: the chunk rows written since the last fsync of session s's
 * files (unsynced) are checked against the bytes the files hold now. A chunk whose
 * bytes do not hash to its row is dropped (row gone, its range punched to zeros, which
 * is what "not held" means to the source), so the source's next pass resends it; a
 * hole that reads non-zero is punched again. At most about P2V_SYNC_CHUNKS chunks plus
 * those of the last P2V_SYNC_IDLE_MS are read: start-up stays short. Returns how many
 * chunks were dropped.
 */
static int chunks_verify(struct p2v_session *s)
{
	sqlite3_stmt *st = db_prepare(
		ctl.db, "SELECT disk, chunk FROM p2v_chunks WHERE session = ? AND unsynced > 0");
	_cleanup_free_ char *buf = xmalloc(P2V_CHUNK);
	int dropped = 0, checked = 0;

	sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		int disk = sqlite3_column_int(st, 0);
		int64_t c = sqlite3_column_int64(st, 1);
		struct p2v_disk *d;
		off_t off;
		size_t len;
		ssize_t n;
		unsigned char md[32];
		bool ok;

		if (disk < 0 || disk >= s->ndisks || c < 0 || c >= s->disks[disk].nchunks)
			continue;
		d = &s->disks[disk];
		off = (off_t)c * P2V_CHUNK;
		len = d->size - off < P2V_CHUNK ? (size_t)(d->size - off) : P2V_CHUNK;
		n = pread(d->fd, buf, len, off);
		checked++;
		if (n == (ssize_t)len && d->has_data[c]) {
			sha256(buf, len, md);
			ok = CRYPTO_memcmp(md, d->hash[c], 32) == 0;
		} else {
			ok = n == (ssize_t)len && mem_is_zero(buf, len);
		}
		if (ok)
			continue;
		if (fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)len) <
		    0) {
			memset(buf, 0, len);
			if (pwrite(d->fd, buf, len, off) != (ssize_t)len)
				log_warn("p2v %s: cannot clear chunk %lld of %s", s->id,
					 (long long)c, d->name);
		}
		if (!d->has_data[c])
			continue; /* a hole again, as its row says */
		{
			sqlite3_stmt *del =
				db_prepare(ctl.db, "DELETE FROM p2v_chunks WHERE session = ? AND "
						   "disk = ? AND chunk = ?");

			sqlite3_bind_text(del, 1, s->id, -1, SQLITE_STATIC);
			sqlite3_bind_int(del, 2, disk);
			sqlite3_bind_int64(del, 3, c);
			if (sqlite3_step(del) != SQLITE_DONE)
				log_warnx("p2v %s: database: cannot drop chunk %lld: %s", s->id,
					  (long long)c, sqlite3_errmsg(ctl.db));
			sqlite3_finalize(del);
		}
		d->has_data[c] = 0;
		memset(d->hash[c], 0, 32);
		dropped++;
	}
	sqlite3_finalize(st);
	if (checked)
		log_info("p2v %s: re-hashed %d chunks written after the last fsync; %d did not "
			 "match their bytes (lost in a power loss) and will be resent",
			 s->id, checked, dropped);
	return dropped;
}

/* One row of p2v_sessions as a session (its files not opened yet); NULL if broken. */
static struct p2v_session *session_from_row(sqlite3_stmt *st)
{
	struct p2v_session *s = xcalloc(1, sizeof(*s));
	struct json_object *disks = NULL, *passes = NULL;
	struct kerr err;
	const char *t;

	for (int i = 0; i < P2V_DISKS_MAX; i++)
		s->disks[i].fd = -1;
	snprintf(s->id, sizeof(s->id), "%s", column_text(st, 0));
	snprintf(s->name, sizeof(s->name), "%s", column_text(st, 1));
	snprintf(s->token_digest, sizeof(s->token_digest), "%s", column_text(st, 2));
	snprintf(s->op, sizeof(s->op), "%s", column_text(st, 3));
	s->state = state_parse(column_text(st, 4));
	snprintf(s->error, sizeof(s->error), "%s", column_text(st, 5));
	s->created_at = sqlite3_column_int64(st, 6);
	s->token_expires_at = sqlite3_column_int64(st, 7);
	s->deadline = sqlite3_column_int64(st, 8);
	t = column_text(st, 9);
	if (json_body_parse(t, strlen(t), &s->hardware, &err) < 0)
		s->hardware = json_object_new_object();
	/* Arrays: json_body_parse() takes objects only. */
	disks = json_tokener_parse(column_text(st, 10));
	if (!json_object_is_type(disks, json_type_array) || json_array_len(disks) > P2V_DISKS_MAX) {
		json_object_put(disks);
		session_free(s);
		return NULL;
	}
	passes = json_tokener_parse(column_text(st, 11));
	if (json_object_is_type(passes, json_type_array))
		passes_parse(s, passes);
	json_object_put(passes);
	s->bytes_received = sqlite3_column_int64(st, 12);
	s->chunks_stored = sqlite3_column_int64(st, 13);
	s->chunks_rejected = sqlite3_column_int64(st, 14);
	s->first_chunk_at = sqlite3_column_int64(st, 15);
	s->last_chunk_at = sqlite3_column_int64(st, 16);
	s->cut_start = sqlite3_column_int(st, 17);
	s->cut_convert = sqlite3_column_int(st, 19);
	s->convert_tries = sqlite3_column_int(st, 20);
	s->notes = json_tokener_parse(column_text(st, 18));
	if (!json_object_is_type(s->notes, json_type_array)) {
		json_object_put(s->notes);
		s->notes = NULL;
	}
	snprintf(s->dir, sizeof(s->dir), "%s/" P2V_DIR "/%s", ctl.cfg.shared_pool, s->id);
	for (size_t i = 0; i < json_array_len(disks); i++) {
		struct json_object *o = json_object_array_get_idx(disks, i);
		struct p2v_disk *d = &s->disks[s->ndisks++];

		snprintf(d->name, sizeof(d->name), "%s", json_get_str(o, "name", ""));
		snprintf(d->bus, sizeof(d->bus), "%s", json_get_str(o, "bus", "sata"));
		snprintf(d->image, sizeof(d->image), "%s", json_get_str(o, "image", ""));
		d->size = json_get_int(o, "size_bytes", 0);
		if (d->size <= 0 || d->size > P2V_DISK_MAX_BYTES || !name_valid(d->name)) {
			json_object_put(disks);
			session_free(s);
			return NULL;
		}
		disk_init(s, d);
	}
	json_object_put(disks);
	return s;
}

/* Reopen the raw files a receiving (or cutting over) session writes. Returns 0, or
 * -1 with why when one is gone. */
static int session_files_open(struct p2v_session *s, char *why, size_t len)
{
	for (int i = 0; i < s->ndisks; i++) {
		struct p2v_disk *d = &s->disks[i];
		struct stat sb;

		d->fd = open(d->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
		if (d->fd < 0 || fstat(d->fd, &sb) < 0 || !S_ISREG(sb.st_mode) ||
		    sb.st_size != d->size) {
			snprintf(why, len, "its received disk %s is gone or changed", d->name);
			return -1;
		}
	}
	return 0;
}

/* Directories under p2v/ no session owns (a crash between their mkdir and their row). */
static void orphans_remove(void)
{
	_cleanup_free_ char *top = xasprintf("%s/" P2V_DIR, ctl.cfg.shared_pool);
	DIR *dir = opendir(top);
	struct dirent *e;

	if (dir == NULL)
		return;
	while ((e = readdir(dir)) != NULL) {
		_cleanup_free_ char *path = NULL;

		if (e->d_name[0] == '.' || session_find(e->d_name))
			continue;
		path = xasprintf("%s/%s", top, e->d_name);
		log_info("p2v: removing %s, which no session owns", path);
		if (tree_remove(path) < 0)
			log_warnx("p2v: cannot remove %s", path);
	}
	closedir(dir);
}

void p2v_sessions_load(void)
{
	sqlite3_stmt *st = db_prepare(
		ctl.db, "SELECT id, name, token_digest, operation, state, error, created_at, "
			"token_expires_at, deadline, hardware, disks, passes, bytes_received, "
			"chunks_stored, chunks_rejected, first_chunk_at, last_chunk_at, cut_start, "
			"notes, cut_convert, convert_tries FROM p2v_sessions");
	struct p2v_session *loaded = NULL;
	struct json_object *dropped = json_object_new_array();
	int64_t now = now_ms();
	int n = 0;

	while (sqlite3_step(st) == SQLITE_ROW) {
		struct p2v_session *s = session_from_row(st);

		if (s == NULL) {
			/* Its files go with the orphans below; its row after the scan. */
			log_warnx("p2v %s: its row is unreadable; the session is dropped",
				  column_text(st, 0));
			json_object_array_add(dropped, json_object_new_string(column_text(st, 0)));
			continue;
		}
		s->next = loaded;
		loaded = s;
	}
	sqlite3_finalize(st);
	for (size_t i = 0; i < json_array_len(dropped); i++)
		store_session_delete(json_object_get_string(json_object_array_get_idx(dropped, i)));
	json_object_put(dropped);
	/* Into the list first: ending a session below takes it out of the list. */
	while (loaded) {
		struct p2v_session *s = loaded;

		loaded = s->next;
		s->next = sessions;
		sessions = s;
		n++;
	}
	for (struct p2v_session *s = sessions, *next; s; s = next) {
		char why[160];

		next = s->next;
		if (s->state == P2V_FAILED) {
			session_remove(s);
			continue;
		}
		chunks_load(s);
		if (s->state == P2V_DONE) {
			s->dir[0] = '\0'; /* its files are images; its directory went */
			continue;
		}
		/* The virt-v2v tree the dead controller left runs on, reparented: killed
		 * before anything of the cut is removed or run again. */
		if (s->state == P2V_CUTTING_OVER && s->cut_convert)
			p2v_convert_leftovers_remove(s->id);
		if (now > s->deadline) {
			cut_abandon(s);
			session_end(s, "failed", "timed out: the session passed its deadline");
			continue;
		}
		if (session_files_open(s, why, sizeof(why)) < 0) {
			cut_abandon(s);
			session_end(s, "failed", why);
			continue;
		}
		chunks_verify(s);
		if (s->state == P2V_CUTTING_OVER)
			cut_roll_back(s);
		else
			session_op_progress(s, "receiving; resumed after a controller restart");
	}
	orphans_remove();
	if (n) {
		log_info("p2v: %d sessions brought back from the database", n);
		timer_ensure();
	}
}
