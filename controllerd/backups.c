/*
 * backups.c - backup stores and backups: their SQL, and the backup and restore
 * operations.
 *
 * A store is a directory on the shared pool (relative to it) that every host and this
 * controller see; the agents write its chunks and manifests (agentd/backup.c,
 * common/chunkstore.h) and this file keeps the index: one row per backup with what
 * the agent reported. The controller never reads or writes the store's files on its
 * loop.
 *
 * A backup is the operation "instance-backup" on its instance (so nothing else runs
 * on the instance meanwhile); its row is made "running" with the operation and
 * settles with the operation's result: "succeeded" (restorable) or "failed" (never
 * listed as restorable). A restore is "instance-restore" on the instance it writes.
 */
#include "controllerd.h"

#include <string.h>

#include "chunkstore.h"
#include "json.h"
#include "log.h"
#include "util.h"
#include "valid.h"

#define BACKUP_STORE_DEFAULT_DIR "backups"

/* A store path: relative to the shared pool, plain components, no "." or "..". */
int backup_store_path_check(const char *path, struct kerr *err)
{
	size_t len = strlen(path), start = 0;

	if (len == 0 || len > 255 || path[0] == '/')
		return err_input(err, 400, "path",
				 "path must be 1-255 characters, relative to the shared pool");
	if (strspn(path, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/") !=
	    len)
		return err_input(err, 400, "path",
				 "path may hold only a-z, A-Z, 0-9, '.', '_', "
				 "'-' and '/'");
	for (size_t i = 0; i <= len; i++) {
		if (path[i] != '/' && path[i] != '\0')
			continue;
		if (i == start || (i - start == 1 && path[start] == '.') ||
		    (i - start == 2 && path[start] == '.' && path[start + 1] == '.') ||
		    path[start] == '-')
			return err_input(err, 400, "path",
					 "path has an empty, '.', '..' or '-'-led component");
		start = i + 1;
	}
	return 0;
}

static struct json_object *store_row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "name",
			       json_object_new_string((const char *)sqlite3_column_text(st, 0)));
	json_object_object_add(o, "path",
			       json_object_new_string((const char *)sqlite3_column_text(st, 1)));
	json_object_object_add(o, "created_at", json_object_new_int64(sqlite3_column_int64(st, 2)));
	json_object_object_add(o, "backups", json_object_new_int64(sqlite3_column_int64(st, 3)));
	return o;
}

#define STORE_SELECT                                                                               \
	"SELECT s.name, s.path, s.created_at, "                                                    \
	"(SELECT count(*) FROM backups b WHERE b.store_id = s.id) FROM backup_stores s "

/* Every store as JSON, by name. */
struct json_object *backup_stores_list(void)
{
	sqlite3_stmt *st = db_prepare(ctl.db, STORE_SELECT "ORDER BY s.name");
	struct json_object *list = json_object_new_array();

	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(list, store_row_json(st));
	sqlite3_finalize(st);
	return list;
}

/* The store named name as JSON, or NULL. */
struct json_object *backup_store_get(const char *name)
{
	sqlite3_stmt *st = db_prepare(ctl.db, STORE_SELECT "WHERE s.name = ?");
	struct json_object *o = NULL;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		o = store_row_json(st);
	sqlite3_finalize(st);
	return o;
}

/*
 * Record a store named name at path (NULL: backups/NAME under the shared pool).
 * Returns 0, or -1 with err (409 when the name or the path is taken).
 */
int backup_store_create(const char *name, const char *path, struct kerr *err)
{
	_cleanup_free_ char *dflt = xasprintf(BACKUP_STORE_DEFAULT_DIR "/%s", name);
	sqlite3_stmt *st;
	int rc;

	if (path == NULL)
		path = dflt;
	if (backup_store_path_check(path, err) < 0)
		return -1;
	if (ctl.cfg.shared_pool == NULL || ctl.cfg.shared_pool[0] == '\0')
		return err_input(err, 422, NULL,
				 "the controller has no shared pool (shared_pool) to hold a store");
	st = db_prepare(ctl.db, "SELECT name FROM backup_stores WHERE name = ? OR path = ?");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc == SQLITE_ROW)
		return err_input(err, 409, "name", "a store named %s or at %s exists already", name,
				 path);
	st = db_prepare(ctl.db,
			"INSERT INTO backup_stores (name, path, created_at) VALUES (?, ?, ?)");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now_ms());
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "cannot record the store: %s", sqlite3_errmsg(ctl.db));
	return 0;
}

/*
 * Forget the store named name. Its files stay on the shared pool. Returns 0, or -1
 * with err: 404 unknown, 409 while it holds backups.
 */
int backup_store_delete(const char *name, struct kerr *err)
{
	struct json_object *s = backup_store_get(name);
	int64_t n;
	sqlite3_stmt *st;

	if (s == NULL)
		return err_input(err, 404, NULL, "no backup store named %s", name);
	n = json_get_int(s, "backups", 0);
	json_object_put(s);
	if (n > 0)
		return err_input(err, 409, NULL, "store %s holds %lld backups; delete them first",
				 name, (long long)n);
	st = db_prepare(ctl.db, "DELETE FROM backup_stores WHERE name = ?");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_step(st);
	sqlite3_finalize(st);
	return 0;
}

#define BACKUP_SELECT                                                                              \
	"SELECT b.id, s.name, b.instance, b.instance_type, b.kind, b.consistency, b.status, "      \
	"b.parent, b.read_bytes, b.new_bytes, b.total_bytes, b.chunk_count, b.disks, b.op_id, "    \
	"b.error, b.created_at, b.finished_at, b.host FROM backups b "                             \
	"JOIN backup_stores s ON s.id = b.store_id "

static void add_text(struct json_object *o, const char *key, sqlite3_stmt *st, int col)
{
	if (sqlite3_column_type(st, col) == SQLITE_NULL)
		json_object_object_add(o, key, NULL);
	else
		json_object_object_add(
			o, key, json_object_new_string((const char *)sqlite3_column_text(st, col)));
}

static struct json_object *backup_row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object(), *disks;
	static const char *const texts[] = {"id",   "store",	   "instance", "instance_type",
					    "kind", "consistency", "status",   "parent"};
	static const char *const ints[] = {"read_bytes", "new_bytes", "total_bytes", "chunk_count"};

	for (int i = 0; i < 8; i++)
		add_text(o, texts[i], st, i);
	for (int i = 0; i < 4; i++)
		json_object_object_add(o, ints[i],
				       json_object_new_int64(sqlite3_column_int64(st, 8 + i)));
	disks = json_tokener_parse((const char *)sqlite3_column_text(st, 12));
	json_object_object_add(o, "disks", disks ? disks : json_object_new_array());
	add_text(o, "operation", st, 13);
	add_text(o, "error", st, 14);
	json_object_object_add(o, "created_at",
			       json_object_new_int64(sqlite3_column_int64(st, 15)));
	if (sqlite3_column_type(st, 16) == SQLITE_NULL)
		json_object_object_add(o, "finished_at", NULL);
	else
		json_object_object_add(o, "finished_at",
				       json_object_new_int64(sqlite3_column_int64(st, 16)));
	add_text(o, "host", st, 17);
	json_object_object_add(
		o, "restorable",
		json_object_new_boolean(!strcmp(json_get_str(o, "status", ""), "succeeded")));
	return o;
}

/*
 * A backup whose operation ended without its op-done reaching backups_op_done() (the
 * host went offline, the controller failed the operation on restart) is failed too:
 * settled here, before any read, so such a backup is never listed as restorable.
 */
static void orphans_settle(void)
{
	db_exec(ctl.db,
		"UPDATE backups SET status = 'failed', finished_at = "
		"  (SELECT o.updated_at FROM operations o WHERE o.id = backups.op_id), "
		"  error = coalesce((SELECT o.error FROM operations o WHERE o.id = backups.op_id), "
		"  'its operation ended') "
		"WHERE status = 'running' AND op_id IN (SELECT id FROM operations "
		"  WHERE status IN ('failed', 'cancelled', 'succeeded'))",
		NULL);
}

/* Backups, newest first; of one instance when instance is not NULL. */
struct json_object *backups_list(const char *instance)
{
	sqlite3_stmt *st = db_prepare(ctl.db, BACKUP_SELECT "WHERE ?1 IS NULL OR b.instance = ?1 "
							    "ORDER BY b.created_at DESC, b.id");
	struct json_object *list = json_object_new_array();

	orphans_settle();
	if (instance)
		sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(list, backup_row_json(st));
	sqlite3_finalize(st);
	return list;
}

/* The backup id as JSON, or NULL. */
struct json_object *backup_get(const char *id)
{
	sqlite3_stmt *st;
	struct json_object *o = NULL;

	orphans_settle();
	st = db_prepare(ctl.db, BACKUP_SELECT "WHERE b.id = ?");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		o = backup_row_json(st);
	sqlite3_finalize(st);
	return o;
}

/* Store id and path by name; 0 when there is none. */
static int64_t store_find(const char *name, char *path, size_t len)
{
	sqlite3_stmt *st;
	int64_t id = 0;

	if (name)
		st = db_prepare(ctl.db, "SELECT id, path FROM backup_stores WHERE name = ?");
	else /* the only store, when there is exactly one */
		st = db_prepare(ctl.db, "SELECT id, path FROM backup_stores "
					"WHERE (SELECT count(*) FROM backup_stores) = 1");
	if (name)
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		id = sqlite3_column_int64(st, 0);
		snprintf(path, len, "%s", sqlite3_column_text(st, 1));
	}
	sqlite3_finalize(st);
	return id;
}

/*
 * Start the backup of instance name (spec, on host h) into store (NULL: the only
 * one). The operation and the backup's "running" row are one transaction; the agent
 * gets the command after. Returns the operation as JSON (its result names the
 * backup id), or NULL with err.
 */
struct json_object *backup_start(const char *name, const char *type, struct json_object *spec,
				 struct host *h, const char *store, const char *mode,
				 struct kerr *err)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", name);
	struct json_object *op, *res, *args;
	char path[256], busy[LINK_OP_ID_MAX + 1], id[LINK_OP_ID_MAX + 1];
	int64_t store_id = store_find(store, path, sizeof(path));
	sqlite3_stmt *st;
	int rc;

	if (store_id == 0)
		return store ? (err_input(err, 404, "store", "no backup store named %s", store),
				NULL)
			     : (err_input(err, 422, "store",
					  "name a store: there is none or more than one"),
				NULL);
	if (strcmp(type, "vm") != 0)
		return err_input(err, 422, NULL,
				 "instance %s is a container; only VMs are backed up yet", name),
		       NULL;
	if (mode && strcmp(mode, "full") && strcmp(mode, "auto"))
		return err_input(err, 422, "mode", "mode %s is not available yet: backups are full",
				 mode),
		       NULL;
	if (op_busy(target, busy, sizeof(busy)))
		return err_input(err, 409, NULL, "instance %s is busy with operation %s", name,
				 busy),
		       NULL;
	if (h == NULL || h->state != HOST_ONLINE)
		return err_input(err, 503, NULL, "host %s of instance %s is offline",
				 h ? h->name : "(none)", name),
		       NULL;
	/* The backup's id is a fresh operation-style id: a file name in the store. */
	link_op_id_new(id);
	args = json_object_new_object();
	json_object_object_add(args, "backup", json_object_new_string(id));
	json_object_object_add(args, "store", json_object_new_string(path));
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_get(args));
	json_object_object_add(res, "id", json_object_new_string(id));
	if (db_begin(ctl.db) < 0) {
		json_object_put(args);
		json_object_put(res);
		return err_input(err, 503, NULL, "the database is busy; try again"), NULL;
	}
	op = op_create("instance-backup", target, h, res, err);
	if (op == NULL) {
		db_rollback(ctl.db);
		json_object_put(args);
		return NULL;
	}
	st = db_prepare(ctl.db,
			"INSERT INTO backups (id, store_id, instance, instance_type, host, kind, "
			"consistency, status, op_id, created_at) "
			"VALUES (?, ?, ?, ?, ?, 'full', NULL, 'running', ?, ?)");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, store_id);
	sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, h->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, json_get_str(op, "id", ""), -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, now_ms());
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE || db_commit(ctl.db, err) < 0) {
		db_rollback(ctl.db);
		json_object_put(args);
		json_object_put(op);
		return err_set(err, 0, "cannot record the backup: %s", sqlite3_errmsg(ctl.db)),
		       NULL;
	}
	log_info("instance %s: backup %s into %s started", name, id, path);
	instances_cmd_send(h, json_get_str(op, "id", ""), "backup", spec, args);
	json_object_put(args);
	return op;
}

/*
 * Start restoring backup id over instance name (spec, on h), which must be stopped
 * and be the backup's own instance. Returns the operation, or NULL with err.
 */
struct json_object *backup_restore_start(const char *id, const char *name, const char *state,
					 struct json_object *spec, struct host *h, struct kerr *err)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", name);
	struct json_object *b = backup_get(id), *op, *res, *args;
	char busy[LINK_OP_ID_MAX + 1], path[256];

	if (b == NULL)
		return err_input(err, 404, NULL, "no backup %s", id), NULL;
	if (strcmp(json_get_str(b, "status", ""), "succeeded") != 0) {
		err_input(err, 409, NULL, "backup %s is %s, not restorable", id,
			  json_get_str(b, "status", ""));
		json_object_put(b);
		return NULL;
	}
	store_find(json_get_str(b, "store", ""), path, sizeof(path));
	json_object_put(b);
	if (strcmp(state, "stopped") != 0)
		return err_input(err, 409, NULL,
				 "instance %s is %s; a restore over it needs it stopped", name,
				 state),
		       NULL;
	if (op_busy(target, busy, sizeof(busy)))
		return err_input(err, 409, NULL, "instance %s is busy with operation %s", name,
				 busy),
		       NULL;
	if (h == NULL || h->state != HOST_ONLINE)
		return err_input(err, 503, NULL, "host %s of instance %s is offline",
				 h ? h->name : "(none)", name),
		       NULL;
	args = json_object_new_object();
	json_object_object_add(args, "backup", json_object_new_string(id));
	json_object_object_add(args, "store", json_object_new_string(path));
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_get(args));
	op = op_create("instance-restore", target, h, res, err);
	if (op == NULL) {
		json_object_put(args);
		return NULL;
	}
	log_info("instance %s: restore from backup %s started", name, id);
	instances_cmd_send(h, json_get_str(op, "id", ""), "restore", spec, args);
	json_object_put(args);
	return op;
}

/*
 * Hook from instances_op_done(): a backup operation ended. Its row takes the agent's
 * numbers when it succeeded, or the failure. A row settles once.
 */
void backups_op_done(const char *op_id, bool ok, struct json_object *result, const char *error)
{
	struct json_object *b = json_object_object_get(result, "backup");
	sqlite3_stmt *st;

	if (ok && b) {
		st = db_prepare(
			ctl.db,
			"UPDATE backups SET status = 'succeeded', kind = ?, consistency = ?, "
			"read_bytes = ?, new_bytes = ?, total_bytes = ?, chunk_count = ?, "
			"disks = ?, finished_at = ? WHERE op_id = ? AND status = 'running'");
		sqlite3_bind_text(st, 1, json_get_str(b, "kind", "full"), -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 2, json_get_str(b, "consistency", "crash"), -1,
				  SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 3, json_get_int(b, "read_bytes", 0));
		sqlite3_bind_int64(st, 4, json_get_int(b, "new_bytes", 0));
		sqlite3_bind_int64(st, 5, json_get_int(b, "total_bytes", 0));
		sqlite3_bind_int64(st, 6, json_get_int(b, "chunk_count", 0));
		sqlite3_bind_text(st, 7, json_text(json_object_object_get(b, "disks")), -1,
				  SQLITE_TRANSIENT);
	} else {
		st = db_prepare(ctl.db, "UPDATE backups SET status = 'failed', error = ?, "
					"finished_at = ? WHERE op_id = ? AND status = 'running'");
		sqlite3_bind_text(st, 1,
				  error ? error : (ok ? "the agent reported no backup" : "failed"),
				  -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 2, now_ms());
		sqlite3_bind_text(st, 3, op_id, -1, SQLITE_STATIC);
		sqlite3_step(st);
		sqlite3_finalize(st);
		return;
	}
	sqlite3_bind_int64(st, 8, now_ms());
	sqlite3_bind_text(st, 9, op_id, -1, SQLITE_STATIC);
	sqlite3_step(st);
	sqlite3_finalize(st);
}

/* ---- verify: every chunk re-read and checked, on libuv's thread pool ---- */

struct verify_job {
	uv_work_t req;
	char op[LINK_OP_ID_MAX + 1];
	char backup[65];
	char *store; /* absolute */
	/* thread results */
	int bad_count;
	struct json_object *bad; /* [{disk, offset, chunk, error}] or NULL */
	int64_t chunks;
	char error[256]; /* the manifest could not be read */
};

static void verify_work_cb(uv_work_t *req)
{
	struct verify_job *v = req->data;
	struct json_object *m = NULL, *disks;
	struct kerr err;

	/* Blocking reads of the whole backup from the shared pool: a worker thread's. */
	if (chunkstore_manifest_read(v->store, v->backup, &m, &err) < 0) {
		snprintf(v->error, sizeof(v->error), "%s", err.msg);
		return;
	}
	disks = json_object_object_get(m, "disks");
	for (size_t i = 0; i < json_object_array_length(disks); i++)
		v->chunks += (int64_t)json_object_array_length(
			json_object_object_get(json_object_array_get_idx(disks, i), "chunks"));
	v->bad_count = chunkstore_verify(v->store, m, &v->bad, &err);
	if (v->bad_count < 0)
		snprintf(v->error, sizeof(v->error), "%s", err.msg);
	json_object_put(m);
}

static void verify_after_cb(uv_work_t *req, int status)
{
	struct verify_job *v = req->data;
	struct json_object *res = json_object_new_object();
	char why[512];
	sqlite3_stmt *st;

	if (status < 0)
		snprintf(v->error, sizeof(v->error), "cancelled: %s", uv_strerror(status));
	if (v->error[0] || v->bad_count > 0) {
		struct json_object *first = v->bad ? json_object_array_get_idx(v->bad, 0) : NULL;

		if (first)
			snprintf(why, sizeof(why),
				 "%d bad chunks; the first, %s, at offset %lld of disk %s: %s",
				 v->bad_count, json_get_str(first, "chunk", ""),
				 (long long)json_get_int(first, "offset", 0),
				 json_get_str(first, "disk", ""), json_get_str(first, "error", ""));
		else
			snprintf(why, sizeof(why), "%s", v->error);
		st = db_prepare(ctl.db, "UPDATE backups SET status = 'corrupt', error = ? "
					"WHERE id = ? AND status = 'succeeded'");
		sqlite3_bind_text(st, 1, why, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, v->backup, -1, SQLITE_STATIC);
		sqlite3_step(st);
		sqlite3_finalize(st);
		log_warnx("backup %s: verify: %s", v->backup, why);
	}
	json_object_object_add(res, "backup", json_object_new_string(v->backup));
	json_object_object_add(res, "chunks", json_object_new_int64(v->chunks));
	json_object_object_add(res, "ok",
			       json_object_new_boolean(!v->error[0] && v->bad_count == 0));
	json_object_object_add(res, "bad", v->bad ? v->bad : json_object_new_array());
	op_update(v->op, "succeeded", 100, "done", res, NULL);
	free(v->store);
	free(v);
}

/*
 * Start verifying backup id: the operation "backup-verify" reads every chunk the
 * manifest names on the thread pool and checks its SHA-256. A bad or missing chunk
 * makes the backup "corrupt" (not restorable), its error naming the first such chunk
 * with its disk and offset; the operation's result lists them all. Returns the
 * operation, or NULL with err.
 */
struct json_object *backup_verify_start(const char *id, struct kerr *err)
{
	_cleanup_free_ char *target = xasprintf("backups/%s", id);
	struct json_object *b = backup_get(id), *op, *res;
	struct verify_job *v;
	char path[256], busy[LINK_OP_ID_MAX + 1];
	int ret;

	if (b == NULL)
		return err_input(err, 404, NULL, "no backup %s", id), NULL;
	if (strcmp(json_get_str(b, "status", ""), "succeeded") &&
	    strcmp(json_get_str(b, "status", ""), "corrupt")) {
		err_input(err, 409, NULL, "backup %s is %s; only a finished backup is verified", id,
			  json_get_str(b, "status", ""));
		json_object_put(b);
		return NULL;
	}
	store_find(json_get_str(b, "store", ""), path, sizeof(path));
	json_object_put(b);
	if (op_busy(target, busy, sizeof(busy)))
		return err_input(err, 409, NULL, "backup %s is busy with operation %s", id, busy),
		       NULL;
	res = json_object_new_object();
	json_object_object_add(res, "backup", json_object_new_string(id));
	op = op_create("backup-verify", target, NULL, res, err);
	if (op == NULL)
		return NULL;
	v = xcalloc(1, sizeof(*v));
	snprintf(v->op, sizeof(v->op), "%s", json_get_str(op, "id", ""));
	snprintf(v->backup, sizeof(v->backup), "%s", id);
	v->store = xasprintf("%s/%s", ctl.cfg.shared_pool, path);
	v->req.data = v;
	op_update(v->op, "running", 0, "reading chunks", NULL, NULL);
	ret = uv_queue_work(ctl.loop, &v->req, verify_work_cb, verify_after_cb);
	if (ret < 0) {
		op_update(v->op, "failed", -1, "failed", NULL, uv_strerror(ret));
		free(v->store);
		free(v);
	}
	return op;
}
