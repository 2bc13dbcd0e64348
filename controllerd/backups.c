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
 *
 * An encrypted store (common/chunkcrypt.h) has the operator's key in its row only
 * wrapped (AES-256-GCM) under the controller's master key, state_dir/backup-master.key
 * (32 random bytes, hex, mode 0600, made when the first encrypted store is), with its
 * key check value beside it. The key is unwrapped for a command to an agent and put
 * in the command's args only, never in the operation's (backup_cmd_args); the JSON
 * string holding it is wiped when the command is freed. Verify, which runs here,
 * unwraps it for its thread and wipes it after. A controller that lost its master key
 * (a database restored elsewhere) gets a store's key again with a restore's
 * "encryption_key" (backup_store_key_supply), checked against the key check value.
 */
#include "controllerd.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chunkcrypt.h"
#include "chunkstore.h"
#include "json.h"
#include "log.h"
#include "tree.h"
#include "util.h"
#include "valid.h"

#define BACKUP_STORE_DEFAULT_DIR "backups"
#define MASTER_KEY_FILE		 "backup-master.key"

/* ---- encryption: the master key and each store's wrapped key ---- */

static unsigned char master_key[CHUNKCRYPT_KEY_LEN];
static bool master_key_loaded;

/*
 * The master key, read from state_dir at first need, or made there (create) when no
 * encrypted store was made before. A local file of 65 bytes: read on the loop, once.
 * Returns 0, or -1 with err.
 */
static int master_key_get(bool create, struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/" MASTER_KEY_FILE, ctl.cfg.state_dir);
	int rc;

	if (master_key_loaded)
		return 0;
	rc = key_file_load(path, master_key, CHUNKCRYPT_KEY_LEN, create);
	if (rc == -EINVAL)
		return err_set(err, 0, "%s does not hold %d hex digits", path,
			       2 * CHUNKCRYPT_KEY_LEN);
	if (rc < 0 && create)
		return err_set(err, -rc, "cannot read or make %s: %s", path, strerror(-rc));
	if (rc < 0)
		return err_input(err, 409, "encryption_key",
				 "the controller has no backup master key (%s: %s): give the "
				 "store's encryption_key again",
				 path, strerror(-rc));
	master_key_loaded = true;
	if (rc == 1)
		log_info("backup: made the backup master key %s; back it up apart from the "
			 "database",
			 path);
	return 0;
}

/*
 * The operator key of the store with id store_id into opkey. Returns 1 for an
 * encrypted store, 0 for a plain one (opkey untouched), -1 with err (409 naming
 * encryption_key: the controller cannot unwrap it).
 */
static int store_key_get(int64_t store_id, unsigned char opkey[CHUNKCRYPT_KEY_LEN],
			 struct kerr *err)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT name, key_wrapped FROM backup_stores "
					      "WHERE id = ?");
	_cleanup_free_ char *name = NULL, *wrapped = NULL;
	struct kerr uerr;

	sqlite3_bind_int64(st, 1, store_id);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 1) == SQLITE_TEXT) {
		name = xstrdup((const char *)sqlite3_column_text(st, 0));
		wrapped = xstrdup((const char *)sqlite3_column_text(st, 1));
	}
	sqlite3_finalize(st);
	if (wrapped == NULL)
		return 0;
	if (master_key_get(false, err) < 0)
		return -1;
	if (chunkcrypt_unwrap(master_key, wrapped, opkey, &uerr) < 0)
		return err_input(err, 409, "encryption_key",
				 "store %s: its encryption key cannot be unwrapped (%s); give it "
				 "again as a restore's encryption_key",
				 name, uerr.msg);
	return 1;
}

/* The JSON string's user_delete: its text (a store's key) is wiped before it is freed. */
static void key_string_wipe_cb(struct json_object *jso, void *userdata)
{
	(void)userdata;
	OPENSSL_cleanse((char *)json_object_get_string(jso),
			(size_t)json_object_get_string_len(jso));
}

/*
 * The args an agent's command carries for args (a backup's or a restore's {backup,
 * store}, or a create's {restore: {...}}): a new copy, with the store's key as "key"
 * beside "store" when it is encrypted; args, as the operation keeps them, never hold
 * it. Returns the copy (the caller's; its key text is wiped when the last reference
 * goes, whoever drops it), args itself with a reference added when they name no
 * store, or NULL with err.
 */
struct json_object *backup_cmd_args(struct json_object *args, struct kerr *err)
{
	struct json_object *copy = NULL, *where, *key;
	unsigned char opkey[CHUNKCRYPT_KEY_LEN];
	char hex[2 * CHUNKCRYPT_KEY_LEN + 1], path[256];
	sqlite3_stmt *st;
	int64_t store_id = 0;
	int ret;

	/* Not a backup's nor a restore's: the args as they are. */
	if (!json_object_object_get(args, "store") && !json_object_object_get(args, "restore"))
		return json_object_get(args);
	json_object_deep_copy(args, &copy, NULL);
	where = json_object_object_get(copy, "restore") ? json_object_object_get(copy, "restore")
							: copy;
	snprintf(path, sizeof(path), "%s", json_get_str(where, "store", ""));
	st = db_prepare(ctl.db, "SELECT id FROM backup_stores WHERE path = ?");
	sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		store_id = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	ret = store_id ? store_key_get(store_id, opkey, err) : 0;
	if (ret < 0) {
		json_object_put(copy);
		return NULL;
	}
	if (ret == 1) {
		hex_encode(opkey, sizeof(opkey), hex);
		key = json_object_new_string(hex);
		json_object_set_userdata(key, NULL, key_string_wipe_cb);
		json_object_object_add(where, "key", key);
		OPENSSL_cleanse(hex, sizeof(hex));
		OPENSSL_cleanse(opkey, sizeof(opkey));
	}
	return copy;
}

/*
 * Give the key of the store backup id is in again (key_hex, the API's
 * "encryption_key"): 422 when it is not the store's (its key check value differs) or
 * the store is plain. A key the controller could not unwrap (its master key lost) is
 * wrapped afresh. key_hex NULL: only check that the controller can unwrap the key of
 * an encrypted store (409 naming encryption_key). Returns 0 or -1 with err (404: no
 * such backup).
 */
int backup_store_key_supply(const char *id, const char *key_hex, struct kerr *err)
{
	unsigned char opkey[CHUNKCRYPT_KEY_LEN], held[CHUNKCRYPT_KEY_LEN];
	char check[CHUNKCRYPT_HEX_LEN + 1];
	_cleanup_free_ char *want = NULL, *name = NULL;
	sqlite3_stmt *st;
	int64_t store_id = 0;
	struct kerr kerr;
	int ret = 0;

	st = db_prepare(ctl.db, "SELECT s.id, s.name, s.key_check FROM backups b JOIN "
				"backup_stores s ON s.id = b.store_id WHERE b.id = ?");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		store_id = sqlite3_column_int64(st, 0);
		name = xstrdup((const char *)sqlite3_column_text(st, 1));
		if (sqlite3_column_type(st, 2) == SQLITE_TEXT)
			want = xstrdup((const char *)sqlite3_column_text(st, 2));
	}
	sqlite3_finalize(st);
	if (store_id == 0)
		return err_input(err, 404, NULL, "no backup %s", id);
	if (key_hex == NULL) {
		/* Nothing given: the key this controller holds must do. */
		ret = want ? store_key_get(store_id, held, err) : 0;
		OPENSSL_cleanse(held, sizeof(held));
		return ret < 0 ? -1 : 0;
	}
	if (want == NULL)
		return err_input(err, 422, "encryption_key",
				 "store %s is not encrypted: it takes no encryption_key", name);
	if (chunkcrypt_key_parse(key_hex, opkey, err) < 0)
		return -1;
	chunkcrypt_check_value(opkey, check);
	if (CRYPTO_memcmp(check, want, CHUNKCRYPT_HEX_LEN) != 0) {
		OPENSSL_cleanse(opkey, sizeof(opkey));
		return err_input(err, 422, "encryption_key",
				 "the encryption_key is not store %s's (its key check value "
				 "differs): nothing was read",
				 name);
	}
	if (store_key_get(store_id, held, &kerr) < 0) {
		/* The right key, but the row's wrap is lost to this controller: wrap it anew. */
		_cleanup_free_ char *wrapped = NULL;

		if (master_key_get(true, err) < 0) {
			OPENSSL_cleanse(opkey, sizeof(opkey));
			return -1;
		}
		wrapped = chunkcrypt_wrap(master_key, opkey);
		st = db_prepare(ctl.db, "UPDATE backup_stores SET key_wrapped = ? WHERE id = ?");
		sqlite3_bind_text(st, 1, wrapped, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, store_id);
		if (sqlite3_step(st) != SQLITE_DONE)
			ret = err_set(err, 0, "cannot record the store's key: %s",
				      sqlite3_errmsg(ctl.db));
		sqlite3_finalize(st);
		if (ret == 0)
			log_info("backup store %s: its encryption key was given again", name);
	}
	OPENSSL_cleanse(held, sizeof(held));
	OPENSSL_cleanse(opkey, sizeof(opkey));
	return ret;
}

/*
 * A store at path (relative to the shared pool) that exists already and is encrypted
 * must be re-attached with its own key: check key_check (NULL: no key given) against
 * its encryption.json. The one read of a store file on the loop: a file under 200
 * bytes, at an administrator's store creation, so a wrong key is a 422 at once rather
 * than a failed backup later. Returns 0 or -1 with err.
 */
static int store_reattach_check(const char *path, const char *key_check, struct kerr *err)
{
	_cleanup_free_ char *file = xasprintf("%s/%s/encryption.json", ctl.cfg.shared_pool, path);
	_cleanup_free_ char *text = NULL;
	struct json_object *doc;
	const char *have;
	int ok;

	if (file_read_all(file, 4096, &text, NULL) < 0)
		return 0; /* a new or a plain store */
	doc = json_tokener_parse(text);
	have = json_object_get_string(json_object_object_get(doc, "key_check"));
	ok = key_check && have && !strcmp(have, key_check);
	json_object_put(doc);
	if (ok)
		return 0;
	return err_input(err, 422, "encryption_key",
			 key_check ? "the encryption_key is not the key of the store at %s (its "
				     "key check value differs)"
				   : "the store at %s is encrypted: give its encryption_key",
			 path);
}

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
	/* Whether it is encrypted, never its key nor the wrap of it. */
	json_object_object_add(o, "encrypted",
			       json_object_new_boolean(sqlite3_column_type(st, 4) == SQLITE_TEXT));
	return o;
}

#define STORE_SELECT                                                                               \
	"SELECT s.name, s.path, s.created_at, "                                                    \
	"(SELECT count(*) FROM backups b WHERE b.store_id = s.id), s.key_check "                   \
	"FROM backup_stores s "

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
 * Record a store named name at path (NULL: backups/NAME under the shared pool),
 * encrypted with key_hex (64 hex digits; NULL: plain). Returns 0, or -1 with err (409
 * when the name or the path is taken, 422 when an encrypted store there has another
 * key).
 */
int backup_store_create(const char *name, const char *path, const char *key_hex, struct kerr *err)
{
	_cleanup_free_ char *dflt = xasprintf(BACKUP_STORE_DEFAULT_DIR "/%s", name);
	_cleanup_free_ char *wrapped = NULL;
	unsigned char opkey[CHUNKCRYPT_KEY_LEN];
	char check[CHUNKCRYPT_HEX_LEN + 1];
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
	if (key_hex) {
		if (chunkcrypt_key_parse(key_hex, opkey, err) < 0)
			return -1;
		chunkcrypt_check_value(opkey, check);
		if (master_key_get(true, err) < 0) {
			OPENSSL_cleanse(opkey, sizeof(opkey));
			return -1;
		}
		wrapped = chunkcrypt_wrap(master_key, opkey);
		OPENSSL_cleanse(opkey, sizeof(opkey));
	}
	if (store_reattach_check(path, key_hex ? check : NULL, err) < 0)
		return -1;
	st = db_prepare(ctl.db, "INSERT INTO backup_stores (name, path, created_at, key_wrapped, "
				"key_check) VALUES (?, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now_ms());
	sqlite3_bind_text(st, 4, wrapped, -1, SQLITE_STATIC); /* NULL: plain */
	sqlite3_bind_text(st, 5, key_hex ? check : NULL, -1, SQLITE_TRANSIENT);
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
	"b.error, b.created_at, b.finished_at, b.host, b.full_reason, b.consistency_reason "       \
	"FROM backups b "                                                                          \
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
	add_text(o, "full_reason", st, 18);
	add_text(o, "consistency_reason", st, 19);
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

/* The spec backup id was taken of, or NULL (a backup made before specs were kept). */
struct json_object *backup_spec_get(const char *id)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT spec FROM backups WHERE id = ?");
	struct json_object *spec = NULL;

	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_TEXT)
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return spec;
}

static bool gc_busy(int64_t store_id);

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
				 int64_t bandwidth_mbps, struct kerr *err)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", name);
	struct json_object *op, *res, *args, *wire;
	char path[256], busy[LINK_OP_ID_MAX + 1], id[LINK_OP_ID_MAX + 1], parent[65];
	int64_t store_id = store_find(store, path, sizeof(path));
	sqlite3_stmt *st;
	int rc;

	if (store_id == 0)
		return store ? (err_input(err, 404, "store", "no backup store named %s", store),
				NULL)
			     : (err_input(err, 422, "store",
					  "name a store: there is none or more than one"),
				NULL);
	if (strcmp(type, "vm") != 0 && mode && !strcmp(mode, "incremental"))
		return err_input(err, 422, "mode",
				 "instance %s is a container: its backups are full (its writable "
				 "layer is a directory, with no changed-block tracking)",
				 name),
		       NULL;
	/* The parent: the newest restorable backup of the instance in this store. The
	 * agent builds on it when its disks' bitmaps still hold (else full, saying why). */
	parent[0] = '\0';
	{ /* mode full names the parent too: its bitmaps are superseded and go */
		st = db_prepare(ctl.db,
				"SELECT id FROM backups WHERE instance = ? AND store_id = ? "
				"AND status = 'succeeded' ORDER BY created_at DESC LIMIT 1");
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, store_id);
		if (sqlite3_step(st) == SQLITE_ROW)
			snprintf(parent, sizeof(parent), "%s", sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
	}
	if (mode && !strcmp(mode, "incremental") && parent[0] == '\0')
		return err_input(err, 422, "mode",
				 "instance %s has no restorable backup in this store to build on",
				 name),
		       NULL;
	if (op_busy(target, busy, sizeof(busy)))
		return err_input(err, 409, NULL, "instance %s is busy with operation %s", name,
				 busy),
		       NULL;
	if (gc_busy(store_id))
		return err_input(err, 409, "store", "store %s is being collected; try again",
				 store ? store : path),
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
	if (parent[0])
		json_object_object_add(args, "parent", json_object_new_string(parent));
	if (mode && !strcmp(mode, "full"))
		json_object_object_add(args, "full", json_object_new_boolean(true));
	/* The chain ends of the instance's other stores: their bitmaps stay on its disks
	 * when this backup succeeds, every other Kumo bitmap goes (agentd/backup.c). Sent
	 * only when there are some: an agent older than the field refuses it, and an
	 * upgrade begins with the controller. The newest 64 stores' ends at most (the
	 * agent's bound); an older store's next incremental then reads whole. */
	{
		struct json_object *keep = json_object_new_array();

		st = db_prepare(
			ctl.db,
			"SELECT b.id FROM backups b WHERE b.instance = ? AND b.store_id != ? "
			"AND b.status = 'succeeded' AND b.created_at = (SELECT "
			"max(created_at) FROM backups WHERE instance = b.instance AND "
			"store_id = b.store_id AND status = 'succeeded') "
			"ORDER BY b.created_at DESC LIMIT 64");
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, store_id);
		while (sqlite3_step(st) == SQLITE_ROW)
			json_object_array_add(
				keep,
				json_object_new_string((const char *)sqlite3_column_text(st, 0)));
		sqlite3_finalize(st);
		if (json_array_len(keep) > 0)
			json_object_object_add(args, "keep_bitmaps", keep);
		else
			json_object_put(keep);
	}
	/* In the op's args, so a resend after a restart paces the reads alike. */
	if (bandwidth_mbps > 0)
		json_object_object_add(args, "bandwidth_mbps",
				       json_object_new_int64(bandwidth_mbps));
	/* An encrypted store's key goes in the command only; a key the controller cannot
	 * unwrap fails the request here, before any row is made. */
	wire = backup_cmd_args(args, err);
	if (wire == NULL) {
		json_object_put(args);
		return NULL;
	}
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_get(args));
	json_object_object_add(res, "id", json_object_new_string(id));
	if (db_begin(ctl.db) < 0) {
		json_object_put(args);
		json_object_put(wire);
		json_object_put(res);
		return err_input(err, 503, NULL, "the database is busy; try again"), NULL;
	}
	op = op_create("instance-backup", target, h, res, err);
	if (op == NULL) {
		db_rollback(ctl.db);
		json_object_put(args);
		json_object_put(wire);
		return NULL;
	}
	st = db_prepare(ctl.db,
			"INSERT INTO backups (id, store_id, instance, instance_type, host, kind, "
			"consistency, status, op_id, created_at, spec) "
			"VALUES (?, ?, ?, ?, ?, 'full', NULL, 'running', ?, ?, ?)");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, store_id);
	sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, h->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, json_get_str(op, "id", ""), -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, now_ms());
	/* The spec too: a restore creates the instance from it once the original is gone. */
	sqlite3_bind_text(st, 8, json_text(spec), -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	log_trace("backup %s: row inserted", id);
	if (rc != SQLITE_DONE || db_commit(ctl.db, err) < 0) {
		db_rollback(ctl.db);
		json_object_put(args);
		json_object_put(wire);
		json_object_put(op);
		return err_set(err, 0, "cannot record the backup: %s", sqlite3_errmsg(ctl.db)),
		       NULL;
	}
	log_trace("backup %s: committed", id);
	log_info("instance %s: backup %s into %s started", name, id, path);
	instances_cmd_send(h, json_get_str(op, "id", ""), "backup", spec, wire);
	log_trace("backup %s: command queued", id);
	json_object_put(wire);
	json_object_put(args);
	return op;
}

/* The saved spec's fields a restored instance takes as they were. */
static const char *const restore_keep[] = {"vcpus",	     "memory",	     "nested",
					   "boot",	     "labels",	     "cloud_init",
					   "stop_timeout_s", "anti_affinity"};

/* A container's saved spec's fields a restored one takes as they were. */
static const char *const ctr_restore_keep[] = {"command",	 "env",	   "workdir",
					       "capabilities",	 "userns", "restart",
					       "stop_timeout_s", "labels", "anti_affinity"};

/* The create body of container name from its saved spec: the image by its digest (the
 * tag may have moved since), its limits, NICs on the same networks or on networks. */
static struct json_object *ctr_restore_body(struct json_object *spec, const char *name,
					    struct json_object *networks)
{
	struct json_object *body = json_object_new_object(), *v, *limits, *nics;
	struct json_object *img = json_object_object_get(spec, "image");
	const char *iname = json_get_str(img, "name", ""), *at = strchr(iname, '@');
	const char *colon = strrchr(iname, ':');
	size_t repo_len = at	  ? (size_t)(at - iname)
			  : colon ? (size_t)(colon - iname)
				  : strlen(iname);
	_cleanup_free_ char *ref =
		xasprintf("%.*s@%s", (int)repo_len, iname, json_get_str(img, "manifest", ""));

	json_object_object_add(body, "name", json_object_new_string(name));
	json_object_object_add(body, "type", json_object_new_string("container"));
	json_object_object_add(body, "image", json_object_new_string(ref));
	for (size_t i = 0; i < sizeof(ctr_restore_keep) / sizeof(ctr_restore_keep[0]); i++)
		if (json_object_object_get_ex(spec, ctr_restore_keep[i], &v) && v)
			json_object_object_add(body, ctr_restore_keep[i], json_object_get(v));
	limits = json_object_new_object();
	json_object_object_foreach(json_object_object_get(spec, "limits"), k, lv)
	{
		if (lv)
			json_object_object_add(limits, k, json_object_get(lv));
	}
	json_object_object_add(body, "limits", limits);
	nics = json_object_new_array();
	v = networks ? networks : json_object_object_get(spec, "nics");
	for (size_t i = 0; i < json_array_len(v); i++) {
		struct json_object *n = json_object_array_get_idx(v, i), *o;
		const char *net =
			networks ? json_object_get_string(n) : json_get_str(n, "network", NULL);

		if (net == NULL)
			continue;
		o = json_object_new_object();
		json_object_object_add(o, "network", json_object_new_string(net));
		json_object_array_add(nics, o);
	}
	json_object_object_add(body, "nics", nics);
	return body;
}

/*
 * The create body for a new instance name restored from backup b (its JSON): the
 * saved spec's shape (restore_keep[], each disk by name, bus and pool, sized to hold
 * the backup's disk), not its identity: no MAC or address (the original may still
 * run) and no image (the disk is written whole from the chunks: a plain thin qcow2).
 * networks (NULL: the spec's NICs' networks) gives the NICs; host (or NULL) pins it;
 * start boots it once its disks are written. *restore gets the agent's create args'
 * "restore" ({backup, store}). Returns the body, or NULL with err (422: a backup made
 * before specs were kept, or not a VM's).
 */
struct json_object *backup_restore_body(struct json_object *b, const char *name, const char *host,
					struct json_object *networks, bool start,
					struct json_object **restore, struct kerr *err)
{
	const char *id = json_get_str(b, "id", "");
	struct json_object *spec = backup_spec_get(id), *body, *disks, *nics, *v;
	struct json_object *bdisks = json_object_object_get(b, "disks");
	char path[256];

	if (spec == NULL)
		return err_input(err, 422, NULL,
				 "backup %s was made before backups kept their instance's spec; "
				 "restore it over an instance",
				 id),
		       NULL;
	if (!strcmp(json_get_str(spec, "type", "vm"), "container")) {
		body = ctr_restore_body(spec, name, networks);
		goto common;
	}
	body = json_object_new_object();
	json_object_object_add(body, "name", json_object_new_string(name));
	json_object_object_add(body, "type",
			       json_object_new_string(json_get_str(spec, "type", "vm")));
	for (size_t i = 0; i < sizeof(restore_keep) / sizeof(restore_keep[0]); i++)
		if (json_object_object_get_ex(spec, restore_keep[i], &v) && v)
			json_object_object_add(body, restore_keep[i], json_object_get(v));
	disks = json_object_new_array();
	v = json_object_object_get(spec, "disks");
	for (size_t i = 0; i < json_array_len(v); i++) {
		struct json_object *sd = json_object_array_get_idx(v, i), *d;
		int64_t mb = json_get_int(sd, "size_mb", 0), vsize = -1;

		for (size_t j = 0; j < json_array_len(bdisks); j++) {
			struct json_object *bd = json_object_array_get_idx(bdisks, j);

			if (!strcmp(json_get_str(bd, "name", ""), json_get_str(sd, "name", "")))
				vsize = json_get_int(bd, "virtual_size", 0);
		}
		if (vsize < 0) { /* not backed up (cannot be: every disk is) */
			json_object_put(disks);
			json_object_put(body);
			json_object_put(spec);
			return err_input(err, 422, NULL, "backup %s has no disk %s", id,
					 json_get_str(sd, "name", "")),
			       NULL;
		}
		if (mb < (vsize + (1 << 20) - 1) >> 20)
			mb = (vsize + (1 << 20) - 1) >> 20;
		d = json_object_new_object();
		json_object_object_add(d, "name",
				       json_object_new_string(json_get_str(sd, "name", "")));
		json_object_object_add(d, "bus",
				       json_object_new_string(json_get_str(sd, "bus", "virtio")));
		json_object_object_add(d, "pool",
				       json_object_new_string(json_get_str(sd, "pool", "shared")));
		json_object_object_add(d, "size_mb", json_object_new_int64(mb));
		json_object_array_add(disks, d);
	}
	json_object_object_add(body, "disks", disks);
	nics = json_object_new_array();
	v = networks ? networks : json_object_object_get(spec, "nics");
	for (size_t i = 0; i < json_array_len(v); i++) {
		struct json_object *n = json_object_array_get_idx(v, i), *o;
		const char *net =
			networks ? json_object_get_string(n) : json_get_str(n, "network", NULL);

		o = json_object_new_object();
		if (net)
			json_object_object_add(o, "network", json_object_new_string(net));
		if (!networks && json_get_str(n, "model", NULL))
			json_object_object_add(
				o, "model", json_object_new_string(json_get_str(n, "model", "")));
		json_object_array_add(nics, o);
	}
	json_object_object_add(body, "nics", nics);
common:
	if (host)
		json_object_object_add(body, "host", json_object_new_string(host));
	json_object_object_add(body, "start", json_object_new_boolean(start));
	/* The create's deadline covers reading every chunk back. */
	json_object_object_add(body, "timeout_s", json_object_new_int(3600));
	json_object_put(spec);
	store_find(json_get_str(b, "store", ""), path, sizeof(path));
	*restore = json_object_new_object();
	json_object_object_add(*restore, "backup", json_object_new_string(id));
	json_object_object_add(*restore, "store", json_object_new_string(path));
	return body;
}

/*
 * Start restoring backup id into instance name (spec, on h): the backup's own or any
 * other stopped VM whose disks have the backup's disks' names (the agent checks them,
 * and every chunk, before it writes). Returns the operation, or NULL with err.
 */
struct json_object *backup_restore_start(const char *id, const char *name, const char *state,
					 struct json_object *spec, struct host *h, struct kerr *err)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", name);
	struct json_object *b = backup_get(id), *op, *res, *args, *wire;
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
	wire = backup_cmd_args(args, err); /* with an encrypted store's key */
	if (wire == NULL) {
		json_object_put(args);
		return NULL;
	}
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_get(args));
	op = op_create("instance-restore", target, h, res, err);
	if (op == NULL) {
		json_object_put(args);
		json_object_put(wire);
		return NULL;
	}
	log_info("instance %s: restore from backup %s started", name, id);
	instances_cmd_send(h, json_get_str(op, "id", ""), "restore", spec, wire);
	json_object_put(wire);
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
			"disks = ?, finished_at = ?, parent = ?, full_reason = ?, "
			"consistency_reason = ? WHERE op_id = ? AND status = 'running'");
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
	if (json_get_str(b, "parent", NULL))
		sqlite3_bind_text(st, 9, json_get_str(b, "parent", ""), -1, SQLITE_TRANSIENT);
	if (json_get_str(b, "full_reason", NULL))
		sqlite3_bind_text(st, 10, json_get_str(b, "full_reason", ""), -1, SQLITE_TRANSIENT);
	if (json_get_str(b, "consistency_reason", NULL))
		sqlite3_bind_text(st, 11, json_get_str(b, "consistency_reason", ""), -1,
				  SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 12, op_id, -1, SQLITE_STATIC);
	sqlite3_step(st);
	sqlite3_finalize(st);
	/* A scheduled backup: its schedule's retention prunes the instance's backups. */
	st = db_prepare(ctl.db,
			"SELECT b.instance, s.name FROM backups b JOIN backup_stores s "
			"ON s.id = b.store_id WHERE b.op_id = ? AND b.status = 'succeeded'");
	sqlite3_bind_text(st, 1, op_id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		_cleanup_free_ char *inst = xstrdup((const char *)sqlite3_column_text(st, 0));
		_cleanup_free_ char *store = xstrdup((const char *)sqlite3_column_text(st, 1));

		sqlite3_finalize(st);
		backup_schedule_op_done(op_id, inst, store);
		return;
	}
	sqlite3_finalize(st);
}

/*
 * Hook from host_heartbeat(): h's agent restarted. A backup it was running is lost
 * with it (its block job and thread work died with the agent), and nothing would
 * tell this controller: each running backup's command is sent again, which the new
 * agent, remembering the op id its predecessor took, answers as failed ("the host's
 * agent restarted while it had this operation") instead of running it twice. The
 * row fails with that reason and is never restorable; the VM, which QEMU keeps
 * running, is adopted by the new agent.
 */
void backups_agent_restarted(struct host *h)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT b.op_id FROM backups b JOIN operations o "
				   "ON o.id = b.op_id WHERE b.status = 'running' "
				   "AND b.host = ? AND o.status IN ('pending', 'running')");
	struct json_object *ids = json_object_new_array();

	sqlite3_bind_text(st, 1, h->name, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(
			ids, json_object_new_string((const char *)sqlite3_column_text(st, 0)));
	sqlite3_finalize(st);
	for (size_t i = 0; i < json_array_len(ids); i++) {
		const char *id = json_object_get_string(json_object_array_get_idx(ids, i));
		struct json_object *op = op_get(id);

		log_info("backup operation %s: host %s's agent restarted; asking it again", id,
			 h->name);
		if (op)
			instances_op_resend(h, id, "instance-backup",
					    json_object_object_get(op, "result"));
		json_object_put(op);
	}
	json_object_put(ids);
}

/* ---- verify: every chunk re-read and checked, on libuv's thread pool ---- */

struct verify_job {
	uv_work_t req;
	char op[LINK_OP_ID_MAX + 1];
	char backup[65];
	char *store;		    /* absolute */
	struct chunkcrypt_key *key; /* an encrypted store's, wiped after; NULL: plain */
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
	if (chunkstore_key_check(v->store, v->key, false, &err) < 0 ||
	    chunkstore_manifest_read_with(v->store, v->key, v->backup, &m, &err) < 0) {
		snprintf(v->error, sizeof(v->error), "%s", err.msg);
		return;
	}
	disks = json_object_object_get(m, "disks");
	for (size_t i = 0; i < json_array_len(disks); i++)
		v->chunks += (int64_t)json_array_len(
			json_object_object_get(json_object_array_get_idx(disks, i), "chunks"));
	v->bad_count = chunkstore_verify_with(v->store, v->key, m, &v->bad, &err);
	if (v->bad_count < 0)
		snprintf(v->error, sizeof(v->error), "%s", err.msg);
	json_object_put(m);
}

static void verify_job_free(struct verify_job *v)
{
	if (v->key) {
		chunkcrypt_key_wipe(v->key);
		free(v->key);
	}
	free(v->store);
	free(v);
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
	verify_job_free(v);
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
	unsigned char opkey[CHUNKCRYPT_KEY_LEN];
	int64_t store_id;
	int ret, encrypted;

	if (b == NULL)
		return err_input(err, 404, NULL, "no backup %s", id), NULL;
	if (strcmp(json_get_str(b, "status", ""), "succeeded") &&
	    strcmp(json_get_str(b, "status", ""), "corrupt")) {
		err_input(err, 409, NULL, "backup %s is %s; only a finished backup is verified", id,
			  json_get_str(b, "status", ""));
		json_object_put(b);
		return NULL;
	}
	store_id = store_find(json_get_str(b, "store", ""), path, sizeof(path));
	json_object_put(b);
	if (op_busy(target, busy, sizeof(busy)))
		return err_input(err, 409, NULL, "backup %s is busy with operation %s", id, busy),
		       NULL;
	encrypted = store_key_get(store_id, opkey, err);
	if (encrypted < 0)
		return NULL;
	res = json_object_new_object();
	json_object_object_add(res, "backup", json_object_new_string(id));
	op = op_create("backup-verify", target, NULL, res, err);
	if (op == NULL) {
		OPENSSL_cleanse(opkey, sizeof(opkey));
		return NULL;
	}
	v = xcalloc(1, sizeof(*v));
	snprintf(v->op, sizeof(v->op), "%s", json_get_str(op, "id", ""));
	snprintf(v->backup, sizeof(v->backup), "%s", id);
	v->store = xasprintf("%s/%s", ctl.cfg.shared_pool, path);
	if (encrypted) {
		v->key = xmalloc(sizeof(*v->key));
		chunkcrypt_key_derive(opkey, CHUNKSTORE_CHUNK_SIZE, v->key);
		OPENSSL_cleanse(opkey, sizeof(opkey));
	}
	v->req.data = v;
	op_update(v->op, "running", 0, "reading chunks", NULL, NULL);
	ret = uv_queue_work(ctl.loop, &v->req, verify_work_cb, verify_after_cb);
	if (ret < 0) {
		op_update(v->op, "failed", -1, "failed", NULL, uv_strerror(ret));
		verify_job_free(v);
	}
	return op;
}

/* ---- delete, prune, garbage collection ---- */

/* Stores a collection is sweeping now: no backup may start into them meanwhile, or it
 * could name a chunk the sweep is about to remove (it finds it stored and skips it). */
#define GC_MAX 16
static int64_t gc_running[GC_MAX];

static bool gc_busy(int64_t store_id)
{
	for (size_t i = 0; i < GC_MAX; i++)
		if (gc_running[i] == store_id)
			return true;
	return false;
}

/* A file removal for the thread pool (the store may be on NFS). */
struct unlink_job {
	uv_work_t req;
	char *path;
};

static void unlink_work_cb(uv_work_t *req)
{
	struct unlink_job *u = req->data;

	if (unlink(u->path) < 0 && errno != ENOENT)
		log_warn("backup store: cannot remove %s", u->path);
}

static void unlink_after_cb(uv_work_t *req, int status)
{
	struct unlink_job *u = req->data;

	free(u->path);
	free(u);
}

/* Forget backup row id (its manifest goes too, off the loop); 0 or -1 with err. */
static int backup_forget(const char *id, const char *store_path, struct kerr *err)
{
	struct unlink_job *u;
	sqlite3_stmt *st = db_prepare(ctl.db, "DELETE FROM backups WHERE id = ?");

	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_DONE) {
		sqlite3_finalize(st);
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	}
	sqlite3_finalize(st);
	u = xcalloc(1, sizeof(*u));
	u->path = xasprintf("%s/%s/backups/%s.json", ctl.cfg.shared_pool, store_path, id);
	u->req.data = u;
	if (uv_queue_work(ctl.loop, &u->req, unlink_work_cb, unlink_after_cb) < 0) {
		free(u->path);
		free(u);
	}
	return 0;
}

/*
 * Delete backup id: its row, then its manifest. Its chunks stay until the store's
 * garbage collection finds no manifest naming them. Returns 0, or -1 with err (404,
 * 409 while it runs).
 */
int backup_delete(const char *id, struct kerr *err)
{
	struct json_object *b = backup_get(id);
	char path[256];
	int ret;

	if (b == NULL)
		return err_input(err, 404, NULL, "no backup %s", id);
	if (!strcmp(json_get_str(b, "status", ""), "running")) {
		json_object_put(b);
		return err_input(err, 409, NULL, "backup %s is running", id);
	}
	store_find(json_get_str(b, "store", ""), path, sizeof(path));
	json_object_put(b);
	ret = backup_forget(id, path, err);
	if (ret == 0)
		log_info("backup %s: deleted", id);
	return ret;
}

/*
 * Apply policy to the restorable backups of each instance in store name (of one
 * instance when instance is not NULL): the ones it does not keep are deleted, unless
 * dry_run. Returns {"kept": [ids], "removed": [ids]}, or NULL with err.
 */
struct json_object *backup_prune(const char *name, const char *instance,
				 const struct prune_policy *policy, bool dry_run, struct kerr *err)
{
	char path[256];
	int64_t store_id = store_find(name, path, sizeof(path));
	struct json_object *out, *kept, *removed, *instances = json_object_new_array();
	sqlite3_stmt *st;

	if (store_id == 0)
		return err_input(err, 404, NULL, "no backup store named %s", name), NULL;
	st = db_prepare(ctl.db, "SELECT DISTINCT instance FROM backups WHERE store_id = ?1 AND "
				"(?2 IS NULL OR instance = ?2) ORDER BY instance");
	sqlite3_bind_int64(st, 1, store_id);
	if (instance)
		sqlite3_bind_text(st, 2, instance, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(instances, json_object_new_string(
							 (const char *)sqlite3_column_text(st, 0)));
	sqlite3_finalize(st);
	out = json_object_new_object();
	kept = json_object_new_array();
	removed = json_object_new_array();
	for (size_t k = 0; k < json_array_len(instances); k++) {
		const char *inst = json_object_get_string(json_object_array_get_idx(instances, k));
		int64_t *times = NULL;
		char(*ids)[65] = NULL;
		bool *keep;
		size_t n = 0, cap = 0;

		st = db_prepare(ctl.db, "SELECT id, created_at FROM backups WHERE store_id = ? "
					"AND instance = ? AND status = 'succeeded' "
					"ORDER BY created_at DESC, id");
		sqlite3_bind_int64(st, 1, store_id);
		sqlite3_bind_text(st, 2, inst, -1, SQLITE_STATIC);
		while (sqlite3_step(st) == SQLITE_ROW) {
			if (n == cap) {
				cap = cap ? cap * 2 : 16;
				times = xrealloc(times, cap * sizeof(*times));
				ids = xrealloc(ids, cap * sizeof(*ids));
			}
			snprintf(ids[n], sizeof(ids[n]), "%s", sqlite3_column_text(st, 0));
			times[n++] = sqlite3_column_int64(st, 1);
		}
		sqlite3_finalize(st);
		keep = xcalloc(n ? n : 1, sizeof(*keep));
		backup_prune_select(times, n, policy, keep);
		for (size_t i = 0; i < n; i++) {
			json_object_array_add(keep[i] ? kept : removed,
					      json_object_new_string(ids[i]));
			if (!keep[i] && !dry_run && backup_forget(ids[i], path, err) < 0)
				log_warnx("backup %s: prune: %s", ids[i], err->msg);
		}
		free(keep);
		free(times);
		free(ids);
	}
	json_object_put(instances);
	json_object_object_add(out, "kept", kept);
	json_object_object_add(out, "removed", removed);
	return out;
}

struct gc_job {
	uv_work_t req;
	char op[LINK_OP_ID_MAX + 1];
	int64_t store_id;
	char *root;
	int64_t started_ms;
	/* thread results */
	int64_t removed, freed, kept, manifests;
	char error[256];
};

/*
 * Thread: whether name in backups/ (dir) is a manifest's temporary file
 * (chunkstore_backup_commit writes ID.json.tmp.PID, then renames it) that a commit
 * left when its agent died or its host crashed; it goes when it is older than a
 * minute before the collection began, as an unnamed chunk does. No backup runs into
 * the store during a collection, and a commit writes its file, flushes the store and
 * renames it within that minute; a file of a commit that is still under way is newer
 * and stays. True when name is such a file, gone or kept.
 */
static bool manifest_tmp_collect(const char *dir, const char *name, int64_t started_ms)
{
	const char *tmp = strstr(name, ".json.tmp.");
	_cleanup_free_ char *path = NULL;
	struct stat sb;

	if (tmp == NULL || tmp == name || tmp[10] == '\0' ||
	    strspn(tmp + 10, "0123456789") != strlen(tmp + 10))
		return false;
	path = xasprintf("%s/%s", dir, name);
	if (lstat(path, &sb) == 0 && S_ISREG(sb.st_mode) &&
	    (int64_t)sb.st_mtim.tv_sec * 1000 < started_ms - 60000 && unlink(path) == 0)
		log_info("backup store: removed %s, a manifest a crash left half-written", path);
	return true;
}

/* Thread: mark every chunk a manifest names, then sweep the others. */
static void gc_work_cb(uv_work_t *req)
{
	struct gc_job *g = req->data;
	struct json_object *marked = json_object_new_object();
	_cleanup_free_ char *bdir = xasprintf("%s/backups", g->root);
	_cleanup_free_ char *cdir = xasprintf("%s/chunks", g->root);
	_cleanup_free_ char *tdir = xasprintf("%s/tmp", g->root);
	DIR *d = opendir(bdir);
	struct dirent *e;

	if (d == NULL) {
		if (errno != ENOENT)
			snprintf(g->error, sizeof(g->error), "cannot read %s: %s", bdir,
				 strerror(errno));
		json_object_put(marked);
		return;
	}
	while ((e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);
		struct json_object *m = NULL, *disks;
		char id[80];
		struct kerr err;

		if (manifest_tmp_collect(bdir, e->d_name, g->started_ms))
			continue;
		if (len < 6 || strcmp(e->d_name + len - 5, ".json") || len - 5 >= sizeof(id))
			continue;
		snprintf(id, sizeof(id), "%.*s", (int)(len - 5), e->d_name);
		if (chunkstore_manifest_read(g->root, id, &m, &err) < 0) {
			/* A manifest we cannot read might name anything: sweep nothing. */
			snprintf(g->error, sizeof(g->error), "%s", err.msg);
			break;
		}
		g->manifests++;
		disks = json_object_object_get(m, "disks");
		for (size_t i = 0; i < json_array_len(disks); i++) {
			struct json_object *c = json_object_object_get(
				json_object_array_get_idx(disks, i), "chunks");

			for (size_t j = 0; j < json_array_len(c); j++) {
				const char *h =
					json_object_get_string(json_object_array_get_idx(c, j));

				if (h)
					json_object_object_add(marked, h, NULL);
			}
		}
		json_object_put(m);
	}
	closedir(d);
	if (g->error[0]) {
		json_object_put(marked);
		return;
	}
	d = opendir(cdir);
	while (d && (e = readdir(d)) != NULL) {
		_cleanup_free_ char *sub = NULL;
		DIR *sd;
		struct dirent *f;

		if (e->d_name[0] == '.')
			continue;
		sub = xasprintf("%s/%s", cdir, e->d_name);
		sd = opendir(sub);
		while (sd && (f = readdir(sd)) != NULL) {
			_cleanup_free_ char *file = NULL;
			struct stat sb;

			if (f->d_name[0] == '.')
				continue;
			file = xasprintf("%s/%s", sub, f->d_name);
			if (json_object_object_get_ex(marked, f->d_name, NULL)) {
				g->kept++;
				continue;
			}
			/* Only what is older than the collection: a chunk written since
			 * belongs to work this sweep cannot see (none may start, but be safe). */
			if (stat(file, &sb) < 0 ||
			    (int64_t)sb.st_mtim.tv_sec * 1000 >= g->started_ms - 60000)
				continue;
			if (unlink(file) == 0) {
				g->removed++;
				g->freed += sb.st_size;
			}
		}
		if (sd)
			closedir(sd);
	}
	if (d)
		closedir(d);
	/* Work files of backups that ended (none runs into this store now). */
	d = opendir(tdir);
	while (d && (e = readdir(d)) != NULL) {
		_cleanup_free_ char *p = NULL;

		if (e->d_name[0] == '.')
			continue;
		p = xasprintf("%s/%s", tdir, e->d_name);
		tree_remove(p);
	}
	if (d)
		closedir(d);
	json_object_put(marked);
}

static void gc_after_cb(uv_work_t *req, int status)
{
	struct gc_job *g = req->data;
	struct json_object *res = json_object_new_object();

	for (size_t i = 0; i < GC_MAX; i++)
		if (gc_running[i] == g->store_id)
			gc_running[i] = 0;
	json_object_object_add(res, "manifests", json_object_new_int64(g->manifests));
	json_object_object_add(res, "chunks_kept", json_object_new_int64(g->kept));
	json_object_object_add(res, "chunks_removed", json_object_new_int64(g->removed));
	json_object_object_add(res, "bytes_freed", json_object_new_int64(g->freed));
	if (status < 0)
		snprintf(g->error, sizeof(g->error), "%s", uv_strerror(status));
	op_update(g->op, g->error[0] ? "failed" : "succeeded", g->error[0] ? -1 : 100,
		  g->error[0] ? "failed" : "done", res, g->error[0] ? g->error : NULL);
	log_info("backup store %s: collected: %lld chunks removed (%lld bytes), %lld kept", g->root,
		 (long long)g->removed, (long long)g->freed, (long long)g->kept);
	free(g->root);
	free(g);
}

/*
 * Start collecting store name's garbage: the operation "store-gc" marks every chunk
 * a manifest in the store names and removes the others (older than a minute), on the
 * thread pool. No backup may run into the store meanwhile (409 either way). Returns
 * the operation, or NULL with err.
 */
struct json_object *backup_store_gc(const char *name, struct kerr *err)
{
	_cleanup_free_ char *target = xasprintf("backup-stores/%s", name);
	char path[256];
	int64_t store_id = store_find(name, path, sizeof(path));
	struct json_object *op;
	struct gc_job *g;
	size_t slot;

	if (store_id == 0)
		return err_input(err, 404, NULL, "no backup store named %s", name), NULL;
	if (gc_busy(store_id))
		return err_input(err, 409, NULL, "store %s is being collected already", name), NULL;
	if (db_count(ctl.db, "SELECT count(*) FROM backups WHERE status = 'running'") > 0) {
		orphans_settle();
		sqlite3_stmt *st = db_prepare(
			ctl.db,
			"SELECT count(*) FROM backups WHERE store_id = ? AND status = 'running'");
		int64_t n = 0;

		sqlite3_bind_int64(st, 1, store_id);
		if (sqlite3_step(st) == SQLITE_ROW)
			n = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
		if (n > 0)
			return err_input(err, 409, NULL,
					 "%lld backups are running into store %s; collect later",
					 (long long)n, name),
			       NULL;
	}
	for (slot = 0; slot < GC_MAX && gc_running[slot]; slot++)
		;
	if (slot == GC_MAX)
		return err_input(err, 503, NULL, "too many collections at once"), NULL;
	op = op_create("store-gc", target, NULL, NULL, err);
	if (op == NULL)
		return NULL;
	g = xcalloc(1, sizeof(*g));
	snprintf(g->op, sizeof(g->op), "%s", json_get_str(op, "id", ""));
	g->store_id = store_id;
	g->root = xasprintf("%s/%s", ctl.cfg.shared_pool, path);
	g->started_ms = now_ms();
	g->req.data = g;
	op_update(g->op, "running", 0, "marking and sweeping chunks", NULL, NULL);
	if (uv_queue_work(ctl.loop, &g->req, gc_work_cb, gc_after_cb) < 0) {
		op_update(g->op, "failed", -1, "failed", NULL, "cannot queue the collection");
		free(g->root);
		free(g);
		return op;
	}
	gc_running[slot] = store_id;
	return op;
}
