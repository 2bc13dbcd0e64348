/*
 * db.c - the SQLite state store: opening with the pragmas durability needs, the
 * versioned schema and its forward migrations, small statement helpers, and the
 * commit queue (group commit).
 *
 * No SQL here or anywhere else is built from input: every value is bound.
 *
 * Group commit. With synchronous=FULL every COMMIT waits for its own fsync on the
 * loop: about 60 writes a second here, and the loop stalls for each. Once
 * db_group_commit_start() runs, the connection commits with synchronous=NORMAL, which
 * in WAL mode writes the transaction's frames to the -wal file and returns without an
 * fsync (a crash of the process loses nothing: the frames are in the page cache; a
 * power loss could). Durability comes from one fsync of the -wal file, off the loop
 * (uv_fs_fsync), that covers every commit written before it started; commits made
 * while it runs go in the next one. So a burst of N writes costs about two fsyncs, not
 * N, and nothing waits on the disk with the loop.
 *
 * Whoever must not answer before its write is durable (http.c holds a request's reply)
 * takes db_commit_seq() after its commit and waits with db_durable_wait(); callers of
 * db_begin()/db_commit() change nothing, and autocommit statements count too (the
 * commit hook sees every transaction). Checkpoints stay SQLite's: with NORMAL it
 * still syncs the -wal before copying it into the database and the database after, so
 * a frame is never overwritten before what it holds is on disk.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

/*
 * Migrations in order; migrations[i] takes the schema from version i to i + 1.
 * Never edit a released entry: add a new one.
 */
static const char *const migrations[] = {
	/* 0 -> 1: the foundation */
	"CREATE TABLE meta ("
	"  key TEXT PRIMARY KEY,"
	"  value TEXT NOT NULL);"
	"CREATE TABLE hosts ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  link_key TEXT NOT NULL,"
	"  address TEXT NOT NULL,"
	"  state TEXT NOT NULL DEFAULT 'offline' CHECK (state IN ('online', 'offline')),"
	"  maintenance INTEGER NOT NULL DEFAULT 0,"
	"  labels TEXT NOT NULL DEFAULT '{}',"
	"  facts TEXT NOT NULL DEFAULT '{}',"
	"  joined_at INTEGER NOT NULL,"
	"  last_seen INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE tokens ("
	"  id INTEGER PRIMARY KEY,"
	"  kind TEXT NOT NULL CHECK (kind IN ('api', 'join')),"
	"  role TEXT CHECK (role IN ('admin', 'operator', 'viewer')),"
	"  name TEXT NOT NULL DEFAULT '',"
	"  digest TEXT NOT NULL UNIQUE,"
	"  created_at INTEGER NOT NULL,"
	"  expires_at INTEGER,"
	"  used_at INTEGER,"
	"  used_by TEXT);"
	"CREATE TABLE operations ("
	"  id TEXT PRIMARY KEY,"
	"  kind TEXT NOT NULL,"
	"  target TEXT NOT NULL,"
	"  host_id INTEGER REFERENCES hosts(id) ON DELETE SET NULL,"
	"  host TEXT,"
	"  status TEXT NOT NULL CHECK (status IN"
	"    ('pending', 'running', 'succeeded', 'failed', 'cancelled')),"
	"  progress INTEGER NOT NULL DEFAULT 0,"
	"  phase TEXT NOT NULL DEFAULT '',"
	"  result TEXT,"
	"  error TEXT,"
	"  created_at INTEGER NOT NULL,"
	"  updated_at INTEGER NOT NULL);"
	"CREATE TABLE events ("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  time INTEGER NOT NULL,"
	"  type TEXT NOT NULL,"
	"  data TEXT NOT NULL);",
	/* 1 -> 2: indexes for the lists the API filters */
	"CREATE INDEX operations_status ON operations(status, created_at);"
	"CREATE INDEX events_type ON events(type);",
	/* 2 -> 3: images, instances (VMs and containers alike), their disks and snapshots */
	"CREATE TABLE images ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  kind TEXT NOT NULL CHECK (kind IN ('vm', 'oci')),"
	"  format TEXT NOT NULL,"
	"  source_format TEXT NOT NULL,"
	"  virtual_size INTEGER NOT NULL DEFAULT 0,"
	"  file_size INTEGER NOT NULL DEFAULT 0,"
	"  sha256 TEXT NOT NULL DEFAULT '',"
	"  path TEXT NOT NULL,"
	"  created_at INTEGER NOT NULL);"
	"CREATE TABLE instances ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  type TEXT NOT NULL CHECK (type IN ('vm', 'container')),"
	"  host_id INTEGER REFERENCES hosts(id) ON DELETE RESTRICT,"
	"  spec TEXT NOT NULL,"
	"  state TEXT NOT NULL,"
	"  desired TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),"
	"  anti_affinity TEXT,"
	"  vcpus INTEGER NOT NULL,"
	"  memory_mb INTEGER NOT NULL,"
	"  report TEXT NOT NULL DEFAULT '{}',"
	"  placement TEXT NOT NULL DEFAULT '{}',"
	"  created_at INTEGER NOT NULL,"
	"  updated_at INTEGER NOT NULL);"
	"CREATE INDEX instances_host ON instances(host_id);"
	"CREATE TABLE disks ("
	"  id INTEGER PRIMARY KEY,"
	"  instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,"
	"  name TEXT NOT NULL,"
	"  image_id INTEGER REFERENCES images(id) ON DELETE RESTRICT,"
	"  UNIQUE (instance_id, name));"
	"CREATE TABLE snapshots ("
	"  id INTEGER PRIMARY KEY,"
	"  instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,"
	"  name TEXT NOT NULL,"
	"  with_memory INTEGER NOT NULL,"
	"  state TEXT NOT NULL DEFAULT 'creating',"
	"  created_at INTEGER NOT NULL,"
	"  UNIQUE (instance_id, name));",
	/* 3 -> 4: the OCI registry's tags and manifests (blobs live on the shared pool) */
	"CREATE TABLE oci_manifests ("
	"  repo TEXT NOT NULL,"
	"  digest TEXT NOT NULL,"
	"  media_type TEXT NOT NULL,"
	"  size INTEGER NOT NULL,"
	"  created_at INTEGER NOT NULL,"
	"  PRIMARY KEY (repo, digest));"
	"CREATE TABLE oci_tags ("
	"  repo TEXT NOT NULL,"
	"  tag TEXT NOT NULL,"
	"  digest TEXT NOT NULL,"
	"  media_type TEXT NOT NULL,"
	"  size INTEGER NOT NULL,"
	"  updated_at INTEGER NOT NULL,"
	"  PRIMARY KEY (repo, tag));",
	/* 4 -> 5: networks (JSON lists and maps as text) and the addresses allocated in them */
	"CREATE TABLE networks ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  mode TEXT NOT NULL CHECK (mode IN ('bridge', 'nat', 'host-only')),"
	"  cidr TEXT NOT NULL,"
	"  gateway TEXT NOT NULL,"
	"  dhcp INTEGER NOT NULL DEFAULT 1,"
	"  dns TEXT NOT NULL DEFAULT '[]',"
	"  vlans TEXT NOT NULL DEFAULT '[]',"
	"  vni_base INTEGER NOT NULL UNIQUE,"
	"  mtu INTEGER NOT NULL,"
	"  uplinks TEXT NOT NULL DEFAULT '{}',"
	"  created_at INTEGER NOT NULL,"
	"  updated_at INTEGER NOT NULL);"
	"CREATE TABLE addresses ("
	"  network_id INTEGER NOT NULL REFERENCES networks(id) ON DELETE CASCADE,"
	"  address TEXT NOT NULL,"
	"  kind TEXT NOT NULL CHECK (kind IN ('static', 'dynamic')),"
	"  owner TEXT NOT NULL,"
	"  created_at INTEGER NOT NULL,"
	"  PRIMARY KEY (network_id, address));",
	/* 5 -> 6: an address belongs to one NIC of an instance, and goes with it */
	"ALTER TABLE addresses ADD COLUMN instance_id INTEGER "
	"  REFERENCES instances(id) ON DELETE CASCADE;"
	"ALTER TABLE addresses ADD COLUMN nic INTEGER;"
	"ALTER TABLE addresses ADD COLUMN vlan INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE addresses ADD COLUMN mac TEXT;"
	"CREATE INDEX addresses_instance ON addresses(instance_id);",
	/* 6 -> 7 (self-contained): token ids are never reused, so the audit log is never
	 * ambiguous (the table is rebuilt with AUTOINCREMENT; nothing references it); a
	 * rotated token keeps its id; the audit log of mutating requests. */
	"CREATE TABLE tokens_v7 ("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  kind TEXT NOT NULL CHECK (kind IN ('api', 'join')),"
	"  role TEXT CHECK (role IN ('admin', 'operator', 'viewer')),"
	"  name TEXT NOT NULL DEFAULT '',"
	"  digest TEXT NOT NULL UNIQUE,"
	"  created_at INTEGER NOT NULL,"
	"  expires_at INTEGER,"
	"  used_at INTEGER,"
	"  used_by TEXT,"
	"  rotated_at INTEGER);"
	"INSERT INTO tokens_v7 (id, kind, role, name, digest, created_at, expires_at, used_at,"
	"  used_by) SELECT id, kind, role, name, digest, created_at, expires_at, used_at, used_by"
	"  FROM tokens;"
	"DROP TABLE tokens;"
	"ALTER TABLE tokens_v7 RENAME TO tokens;"
	"CREATE TABLE audit ("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  time INTEGER NOT NULL,"
	"  token_id INTEGER,"
	"  token_name TEXT NOT NULL DEFAULT '',"
	"  role TEXT NOT NULL,"
	"  method TEXT NOT NULL,"
	"  route TEXT NOT NULL,"
	"  target TEXT NOT NULL,"
	"  status INTEGER NOT NULL,"
	"  operation TEXT);"
	"CREATE INDEX audit_token ON audit(token_id, id);",
	/* 7 -> 8 (self-contained): a manifest's subject (OCI 1.1), so the referrers API finds what
	 * refers to a manifest without reading every manifest. Manifests stored before have none.
	 */
	"ALTER TABLE oci_manifests ADD COLUMN subject TEXT;"
	"CREATE INDEX oci_manifests_subject ON oci_manifests(repo, subject);",
	/* 8 -> 9: a VM image's record signed with the controller's image key (api_images.c);
	 * records from before are signed at their next use. */
	"ALTER TABLE images ADD COLUMN sig TEXT NOT NULL DEFAULT '';",
	/* 9 -> 10 (self-contained): security groups (rules as JSON text); "default" holds every NIC
	 * that names no group, and always exists */
	"CREATE TABLE security_groups ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  description TEXT NOT NULL DEFAULT '',"
	"  rules TEXT NOT NULL DEFAULT '[]',"
	"  created_at INTEGER NOT NULL,"
	"  updated_at INTEGER NOT NULL);"
	"INSERT INTO security_groups (name, description, created_at, updated_at) "
	"  VALUES ('default', 'every NIC that names no group', 0, 0);"
	/* and the last seqs accepted from each agent, so a restart keeps its replay
	 * windows */
	"ALTER TABLE hosts ADD COLUMN rx_seq INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE hosts ADD COLUMN rx_reply_seq INTEGER NOT NULL DEFAULT 0;",
	/* 10 -> 11: operations are jobs (jobs.c): a deadline (ms), a cancel asked for
	 * ("cancelled" or "timed out": why the job is being undone) and the job's step,
	 * all persisted so a restarted controller goes on cancelling. Self-contained. */
	"ALTER TABLE operations ADD COLUMN deadline INTEGER;"
	"ALTER TABLE operations ADD COLUMN cancel TEXT;"
	"ALTER TABLE operations ADD COLUMN step TEXT NOT NULL DEFAULT 'queued';",
	/* 11 -> 12 (self-contained; backups.c): backup stores on the shared pool and the
	 * index of the backups in them (chunk lists stay in the store's manifests) */
	"CREATE TABLE backup_stores ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  path TEXT NOT NULL UNIQUE,"
	"  created_at INTEGER NOT NULL);"
	"CREATE TABLE backups ("
	"  id TEXT PRIMARY KEY,"
	"  store_id INTEGER NOT NULL REFERENCES backup_stores(id),"
	"  instance TEXT NOT NULL,"
	"  instance_type TEXT NOT NULL,"
	"  host TEXT,"
	"  kind TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),"
	"  consistency TEXT CHECK (consistency IN ('crash', 'filesystem')),"
	"  status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'corrupt')),"
	"  parent TEXT,"
	"  full_reason TEXT,"
	"  read_bytes INTEGER NOT NULL DEFAULT 0,"
	"  new_bytes INTEGER NOT NULL DEFAULT 0,"
	"  total_bytes INTEGER NOT NULL DEFAULT 0,"
	"  chunk_count INTEGER NOT NULL DEFAULT 0,"
	"  disks TEXT NOT NULL DEFAULT '[]',"
	"  op_id TEXT,"
	"  error TEXT,"
	"  created_at INTEGER NOT NULL,"
	"  finished_at INTEGER);"
	"CREATE INDEX backups_instance ON backups (instance, created_at);"
	"CREATE INDEX backups_op ON backups (op_id);",
	/* 12 -> 13 (self-contained, ha.c): where an HA instance was fenced and restarted
	 * from, so that host never runs it again; the row goes once that host has
	 * forgotten it. An instance's HA settings live in its spec ("ha"), like its
	 * labels. */
	"CREATE TABLE ha_fences ("
	"  instance_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,"
	"  host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,"
	"  fenced_at INTEGER NOT NULL,"
	"  operation TEXT," /* the ha-forget that clears the host's record of it */
	"  PRIMARY KEY (instance_id, host_id));",
	/* 13 -> 14 (self-contained; instances.c view_build): what each host's instances
	 * use, and their anti-affinity groups, kept by triggers in the transaction that
	 * changes an instance, whoever changes it. A placement read them with one GROUP
	 * BY over every instance: O(instances) per create, 702 ms at p99 with 2,282. */
	"CREATE TABLE host_usage ("
	"  host_id INTEGER PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,"
	"  vcpus INTEGER NOT NULL DEFAULT 0,"
	"  memory_mb INTEGER NOT NULL DEFAULT 0,"
	"  instances INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE host_groups ("
	"  host_id INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,"
	"  grp TEXT NOT NULL,"
	"  instances INTEGER NOT NULL,"
	"  PRIMARY KEY (host_id, grp)) WITHOUT ROWID;"
	"INSERT INTO host_usage SELECT host_id, sum(vcpus), sum(memory_mb), count(*) "
	"  FROM instances WHERE host_id IS NOT NULL GROUP BY host_id;"
	"INSERT INTO host_groups SELECT host_id, anti_affinity, count(*) FROM instances "
	"  WHERE host_id IS NOT NULL AND anti_affinity IS NOT NULL "
	"  GROUP BY host_id, anti_affinity;"
	"CREATE TRIGGER host_usage_insert AFTER INSERT ON instances "
	"  WHEN NEW.host_id IS NOT NULL BEGIN"
	"  INSERT INTO host_usage VALUES (NEW.host_id, NEW.vcpus, NEW.memory_mb, 1)"
	"    ON CONFLICT (host_id) DO UPDATE SET vcpus = vcpus + excluded.vcpus,"
	"    memory_mb = memory_mb + excluded.memory_mb, instances = instances + 1;"
	"  INSERT INTO host_groups SELECT NEW.host_id, NEW.anti_affinity, 1"
	"    WHERE NEW.anti_affinity IS NOT NULL"
	"    ON CONFLICT (host_id, grp) DO UPDATE SET instances = instances + 1;"
	"  END;"
	"CREATE TRIGGER host_usage_delete AFTER DELETE ON instances "
	"  WHEN OLD.host_id IS NOT NULL BEGIN"
	"  UPDATE host_usage SET vcpus = vcpus - OLD.vcpus, memory_mb = memory_mb - "
	"    OLD.memory_mb, instances = instances - 1 WHERE host_id = OLD.host_id;"
	"  UPDATE host_groups SET instances = instances - 1"
	"    WHERE host_id = OLD.host_id AND grp = OLD.anti_affinity;"
	"  DELETE FROM host_groups WHERE host_id = OLD.host_id AND grp = OLD.anti_affinity"
	"    AND instances <= 0;"
	"  END;"
	/* A move, a resize or a new group: the old side out, the new side in. */
	"CREATE TRIGGER host_usage_update AFTER UPDATE OF host_id, vcpus, memory_mb, "
	"  anti_affinity ON instances BEGIN"
	"  UPDATE host_usage SET vcpus = vcpus - OLD.vcpus, memory_mb = memory_mb - "
	"    OLD.memory_mb, instances = instances - 1 WHERE host_id = OLD.host_id;"
	"  UPDATE host_groups SET instances = instances - 1"
	"    WHERE host_id = OLD.host_id AND grp = OLD.anti_affinity;"
	"  DELETE FROM host_groups WHERE host_id = OLD.host_id AND grp = OLD.anti_affinity"
	"    AND instances <= 0;"
	"  INSERT INTO host_usage SELECT NEW.host_id, NEW.vcpus, NEW.memory_mb, 1"
	"    WHERE NEW.host_id IS NOT NULL"
	"    ON CONFLICT (host_id) DO UPDATE SET vcpus = vcpus + excluded.vcpus,"
	"    memory_mb = memory_mb + excluded.memory_mb, instances = instances + 1;"
	"  INSERT INTO host_groups SELECT NEW.host_id, NEW.anti_affinity, 1"
	"    WHERE NEW.host_id IS NOT NULL AND NEW.anti_affinity IS NOT NULL"
	"    ON CONFLICT (host_id, grp) DO UPDATE SET instances = instances + 1;"
	"  END;",
	/* 14 -> 15 (self-contained; backups.c, backup_sched.c): the spec a backup was
	 * taken of, so a restore can create its instance after the original is gone; and
	 * per-instance backup schedules with their retention, run by the controller. */
	"ALTER TABLE backups ADD COLUMN spec TEXT;"
	"CREATE TABLE backup_schedules ("
	"  instance TEXT PRIMARY KEY,"
	"  calendar TEXT NOT NULL,"
	"  store TEXT,"
	"  mode TEXT NOT NULL DEFAULT 'auto',"
	"  keep TEXT NOT NULL DEFAULT '{}',"
	"  next_at INTEGER NOT NULL,"
	"  last_at INTEGER,"
	"  last_operation TEXT,"
	"  last_error TEXT,"
	"  created_at INTEGER NOT NULL);",
	/* 15 -> 16 (self-contained; p2v.c): P2V ingest sessions, so one survives a controller
	 * restart: its phase (state, passes), counters, deadline and the digest of its
	 * ingest token (never the token), and the SHA-256 of every chunk it holds (NULL:
	 * all zero, a hole) so a resumed source resends nothing stored. */
	"CREATE TABLE p2v_sessions ("
	"  id TEXT PRIMARY KEY,"
	"  name TEXT NOT NULL,"
	"  token_digest TEXT NOT NULL,"
	"  operation TEXT NOT NULL,"
	"  state TEXT NOT NULL CHECK (state IN ('receiving', 'cutting-over', 'done', 'failed')),"
	"  error TEXT,"
	"  created_at INTEGER NOT NULL,"
	"  token_expires_at INTEGER NOT NULL,"
	"  deadline INTEGER NOT NULL,"
	"  hardware TEXT NOT NULL DEFAULT '{}',"
	"  disks TEXT NOT NULL," /* [{name, bus, size_bytes, image?}] */
	"  passes TEXT NOT NULL DEFAULT '[]',"
	"  bytes_received INTEGER NOT NULL DEFAULT 0,"
	"  chunks_stored INTEGER NOT NULL DEFAULT 0,"
	"  chunks_rejected INTEGER NOT NULL DEFAULT 0,"
	"  first_chunk_at INTEGER NOT NULL DEFAULT 0,"
	"  last_chunk_at INTEGER NOT NULL DEFAULT 0,"
	"  cut_start INTEGER NOT NULL DEFAULT 0,"
	"  notes TEXT);"
	"CREATE TABLE p2v_chunks ("
	"  session TEXT NOT NULL REFERENCES p2v_sessions(id) ON DELETE CASCADE,"
	"  disk INTEGER NOT NULL,"
	"  chunk INTEGER NOT NULL,"
	"  sha256 BLOB,"
	"  PRIMARY KEY (session, disk, chunk)) WITHOUT ROWID;",
	/* 16 -> 17 (ha.c): the maintenance hand-off survives a controller
	 * restart: each HA instance being handed off, its step and that step's operation;
	 * and the hosts whose lease is released (in maintenance, everything handed off). */
	"CREATE TABLE ha_handoffs ("
	"  instance_id INTEGER PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,"
	"  host TEXT NOT NULL,"
	"  step TEXT NOT NULL CHECK (step IN ('migrate', 'stop', 'drop', 'place', 'wait')),"
	"  operation TEXT,"
	"  cold INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE ha_released (host TEXT PRIMARY KEY);",
	/* 17 -> 18 (issue 12). api_instances.c's list: a page of one host's or one
	 * state's instances is a range of an index in name order, not a walk of every
	 * instance by name until the page fills (at 150,000 instances, a host with few
	 * of them cost a scan of all). (host_id, name) serves what (host_id) did. */
	"CREATE INDEX instances_host_name ON instances(host_id, name);"
	"DROP INDEX instances_host;"
	"CREATE INDEX instances_state_name ON instances(state, name);"
	/* ... and the agent's digest of the facts saved with them (hosts.c), so digest-only
	 * heartbeats after a controller restart are understood at once. */
	"ALTER TABLE hosts ADD COLUMN facts_digest TEXT NOT NULL DEFAULT '';",
	/* 18 -> 19 (p2v.c): which chunk rows may be ahead of their bytes on
	 * disk. unsynced is the session's write sequence number of the chunk, 0 once its
	 * raw file was fsynced after it; a start-up after a power loss re-hashes the
	 * others (rows from before this step count as unsynced: re-hashed once). */
	"ALTER TABLE p2v_chunks ADD COLUMN unsynced INTEGER NOT NULL DEFAULT 1;",
	/* 19 -> 20 (backups.c): why a running VM's backup is only crash-consistent (its
	 * guest agent did not freeze the file systems), as the agent reported it. */
	"ALTER TABLE backups ADD COLUMN consistency_reason TEXT;",
	/* 20 -> 21 (backups.c): an encrypted backup store's key,
	 * only ever wrapped under the controller's master key (state_dir/backup-master.key,
	 * outside this database), and its key check value (HMAC of a constant, reveals
	 * nothing of the key); both NULL for a plain store. */
	"ALTER TABLE backup_stores ADD COLUMN key_wrapped TEXT;"
	"ALTER TABLE backup_stores ADD COLUMN key_check TEXT;",
	/* 21 -> 22 (p2v.c): a cutover's "convert" and how many virt-v2v
	 * runs it started, so a controller restarted during a conversion converts again
	 * (at most a few times) instead of forgetting it was asked. */
	"ALTER TABLE p2v_sessions ADD COLUMN cut_convert INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE p2v_sessions ADD COLUMN convert_tries INTEGER NOT NULL DEFAULT 0;",
	/* 22 -> 23 (issue 12, api_instances.c's list): an instance's labels
	 * as rows, kept by triggers from its spec, so ?label=k=v looks its few
	 * instances up instead of reading every spec (a label no instance has cost a
	 * scan of all 150,000). No foreign key: the delete trigger removes them. */
	"CREATE TABLE instance_labels (instance_id INTEGER NOT NULL, key TEXT NOT NULL, value);"
	"CREATE INDEX instance_labels_kv ON instance_labels(key, value);"
	"CREATE INDEX instance_labels_instance ON instance_labels(instance_id);"
	"INSERT INTO instance_labels SELECT i.id, l.key, l.value FROM instances i, "
	"  json_each(i.spec, '$.labels') l "
	"  WHERE json_valid(i.spec) AND json_type(i.spec, '$.labels') = 'object';"
	"CREATE TRIGGER instance_labels_insert AFTER INSERT ON instances "
	"  WHEN json_valid(NEW.spec) AND json_type(NEW.spec, '$.labels') = 'object' BEGIN"
	"  INSERT INTO instance_labels SELECT NEW.id, key, value FROM json_each(NEW.spec, "
	"  '$.labels');"
	"END;"
	"CREATE TRIGGER instance_labels_update AFTER UPDATE OF spec ON instances BEGIN"
	"  DELETE FROM instance_labels WHERE instance_id = OLD.id;"
	"  INSERT INTO instance_labels SELECT NEW.id, key, value FROM json_each(NEW.spec, "
	"  '$.labels') WHERE json_valid(NEW.spec) AND json_type(NEW.spec, '$.labels') = "
	"  'object';"
	"END;"
	"CREATE TRIGGER instance_labels_delete AFTER DELETE ON instances BEGIN"
	"  DELETE FROM instance_labels WHERE instance_id = OLD.id;"
	"END;",
};

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == DB_SCHEMA_VERSION,
	       "one migration per schema version");

int db_exec(sqlite3 *db, const char *sql, struct kerr *err)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		err_set(err, 0, "database: %s", msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

int db_version(sqlite3 *db)
{
	sqlite3_stmt *st = db_prepare(db, "PRAGMA user_version");
	int v = -1;

	if (st && sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return v;
}

/*
 * Bring the schema forward to target, one migration per transaction so a crash
 * leaves the database at a whole version. A database newer than this binary is
 * refused rather than guessed at.
 */
int db_migrate(sqlite3 *db, int target, struct kerr *err)
{
	int v = db_version(db);

	if (v < 0)
		return err_set(err, 0, "database: cannot read the schema version");
	if (target > DB_SCHEMA_VERSION)
		return err_set(err, 0, "no migration to schema version %d", target);
	if (v > DB_SCHEMA_VERSION)
		return err_set(err, 0,
			       "database schema version %d is newer than this controller's %d", v,
			       DB_SCHEMA_VERSION);
	for (; v < target; v++) {
		char setver[64];

		snprintf(setver, sizeof(setver), "PRAGMA user_version = %d", v + 1);
		if (db_begin(db) < 0)
			return err_set(err, 0, "database: %s", sqlite3_errmsg(db));
		if (db_exec(db, migrations[v], err) < 0 || db_exec(db, setver, err) < 0) {
			db_rollback(db);
			return -1;
		}
		if (db_commit(db, err) < 0)
			return -1;
		log_info("database: migrated schema to version %d", v + 1);
	}
	return 0;
}

/*
 * Open (creating if needed, mode 0600) the database at path with WAL, foreign keys
 * and synchronous=FULL: a transaction that returned is on disk.
 */
/* Rows of instances changed (inserted, updated, deleted; rolled back too) on any
 * connection of this process: see db_instances_generation(). */
static uint64_t instances_generation;

static void update_hook_cb(void *cls, int op, const char *dbname, const char *table,
			   sqlite3_int64 rowid)
{
	(void)cls;
	(void)op;
	(void)dbname;
	(void)rowid;
	if (strcmp(table, "instances") == 0)
		instances_generation++;
}

/*
 * A number that moves whenever a row of instances may have changed, whichever file
 * wrote it: a heartbeat whose facts are unchanged skips its reconcile when this has
 * not moved either (hosts.c). A change later rolled back moves it too (harmless: one
 * reconcile more). SQLite's truncate of a whole table calls no hook; nothing deletes
 * every instance in one statement.
 */
uint64_t db_instances_generation(void)
{
	return instances_generation;
}

int db_open(sqlite3 **out, const char *path, struct kerr *err)
{
	sqlite3 *db = NULL;
	mode_t old = umask(077); /* the database holds link keys: owner only */
	int rc;

	rc = sqlite3_open_v2(
		path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	umask(old);
	if (rc != SQLITE_OK) {
		err_set(err, 0, "cannot open database %s: %s", path,
			db ? sqlite3_errmsg(db) : "out of memory");
		sqlite3_close(db);
		return -1;
	}
	sqlite3_busy_timeout(db, 5000);
	sqlite3_update_hook(db, update_hook_cb, NULL);
	if (db_exec(db, "PRAGMA journal_mode = WAL", err) < 0 ||
	    db_exec(db, "PRAGMA synchronous = FULL", err) < 0 ||
	    db_exec(db, "PRAGMA foreign_keys = ON", err) < 0) {
		sqlite3_close(db);
		return -1;
	}
	*out = db;
	return 0;
}

/*
 * Statements prepared once and kept, for the SQL run on every heartbeat: at 1,000
 * hosts beating every second, preparing (parsing and planning) one statement per
 * beat was a quarter of the controller's loop, several times the cost of running it.
 * Keyed by the SQL's address: only string literals.
 */
#define DB_CACHED_MAX 64
static struct {
	sqlite3 *db;
	const char *sql;
	sqlite3_stmt *st;
} cached[DB_CACHED_MAX];
static size_t cached_n;

void db_close(sqlite3 *db)
{
	size_t kept = 0;

	for (size_t i = 0; i < cached_n; i++) {
		if (cached[i].db == db)
			sqlite3_finalize(cached[i].st);
		else
			cached[kept++] = cached[i];
	}
	cached_n = kept;
	sqlite3_close(db);
}

/* Who times commits and syncs (main.c sets metrics.c's), so the store calls nothing above it. */
static const struct db_timing *timing;

/* Report every commit's and group sync's duration to t (the caller's, for good). */
void db_timing_set(const struct db_timing *t)
{
	timing = t;
}

int db_begin(sqlite3 *db)
{
	return db_exec(db, "BEGIN IMMEDIATE", NULL);
}

int db_commit(sqlite3 *db, struct kerr *err)
{
	int64_t start = now_us();

	if (db_exec(db, "COMMIT", err) < 0) {
		db_rollback(db);
		return -1;
	}
	if (timing)
		timing->commit((double)(now_us() - start) / 1e6);
	return 0;
}

void db_rollback(sqlite3 *db)
{
	if (!sqlite3_get_autocommit(db))
		db_exec(db, "ROLLBACK", NULL);
}

/* Prepare static SQL; a failure is a programming error and is fatal. */
sqlite3_stmt *db_prepare(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fatalx("database: cannot prepare '%s': %s", sql, sqlite3_errmsg(db));
	return st;
}

/*
 * db_prepare() for a string literal run often: the statement is prepared on the first
 * call and kept until db_close(). The caller must not finalize it: db_release() makes
 * it ready for the next caller. Not for SQL that may run again while the statement is
 * still being stepped (a nested caller would reset it).
 */
sqlite3_stmt *db_prepare_cached(sqlite3 *db, const char *sql)
{
	for (size_t i = 0; i < cached_n; i++)
		if (cached[i].sql == sql && cached[i].db == db)
			return cached[i].st;
	if (cached_n == DB_CACHED_MAX)
		fatalx("database: more than %d cached statements", DB_CACHED_MAX);
	cached[cached_n].db = db;
	cached[cached_n].sql = sql;
	cached[cached_n].st = db_prepare(db, sql);
	return cached[cached_n++].st;
}

/* Done with a statement from db_prepare_cached(): reset it and drop its bindings. */
void db_release(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

const char *db_meta_get(sqlite3 *db, const char *key, char *buf, size_t len)
{
	sqlite3_stmt *st = db_prepare(db, "SELECT value FROM meta WHERE key = ?");
	const char *ret = NULL;

	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		snprintf(buf, len, "%s", (const char *)sqlite3_column_text(st, 0));
		ret = buf;
	}
	sqlite3_finalize(st);
	return ret;
}

int db_meta_set(sqlite3 *db, const char *key, const char *value, struct kerr *err)
{
	sqlite3_stmt *st = db_prepare(db, "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)");
	int rc;

	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "database: %s", sqlite3_errmsg(db));
	return 0;
}

/* Run a static single-value query such as "SELECT count(*) FROM hosts". */
int64_t db_count(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = db_prepare(db, sql);
	int64_t n = 0;

	if (sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

/* The commit queue: one per process, for the controller's one connection. */
static struct {
	bool started;
	bool stopped;	/* after db_group_commit_stop(): syncs run inline */
	char *wal_path; /* <database>-wal */
	int wal_fd;	/* -1 until the first sync */
	uv_loop_t *loop;
	uint64_t committed; /* transactions committed so far (the commit hook) */
	uint64_t durable;   /* of those, how many an fsync has covered */
	uint64_t syncing;   /* what the fsync in flight covers; 0: none in flight */
	uint64_t synced_to; /* committed when the last sync started: its batch's end */
	int64_t sync_started_us;
	uv_fs_t fs;
	struct db_waiter *head, **tail;
} gc = {.wal_fd = -1};

/* Every transaction that commits, explicit or autocommit, counts; it is on disk once a
 * sync started after it returns. The hook runs inside sqlite3_step(), before the frames
 * are written, so syncs start only from outside SQLite (db_durable_wait, the cron). */
static int commit_hook_cb(void *cls)
{
	gc.committed++;
	return 0; /* 0: let the commit go on */
}

/*
 * The -wal file, opened once and reopened if SQLite ever replaced it (it does not
 * while the connection is open, but an fsync of a stale inode would prove nothing).
 */
static int wal_fd_get(void)
{
	struct stat a, b;

	if (gc.wal_fd >= 0 && stat(gc.wal_path, &a) == 0 && fstat(gc.wal_fd, &b) == 0 &&
	    a.st_ino == b.st_ino && a.st_dev == b.st_dev)
		return gc.wal_fd;
	if (gc.wal_fd >= 0)
		close(gc.wal_fd);
	gc.wal_fd = open(gc.wal_path, O_RDWR | O_CLOEXEC);
	return gc.wal_fd;
}

static void sync_start(void);

/* Everything committed up to target is durable: answer those waiting for it. */
static void durable_reach(uint64_t target)
{
	if (target > gc.durable) {
		if (timing)
			timing->sync((double)(now_us() - gc.sync_started_us) / 1e6,
				     (double)(target - gc.synced_to));
		gc.synced_to = target;
		gc.durable = target;
	}
	while (gc.head && gc.head->seq <= gc.durable) {
		struct db_waiter *w = gc.head;

		gc.head = w->next;
		if (gc.head == NULL)
			gc.tail = &gc.head;
		w->queued = false;
		w->next = NULL;
		w->cb(w);
	}
}

static void sync_done_cb(uv_fs_t *fs)
{
	uint64_t target = gc.syncing;
	ssize_t rc = fs->result;

	uv_fs_req_cleanup(fs);
	gc.syncing = 0;
	if (gc.stopped)
		return; /* db_group_commit_stop() synced and answered everyone already */
	/* Answering a write as durable when the disk said no would be a lie; the
	 * database's own state is unknown now, so stop, as PostgreSQL does. */
	if (rc < 0)
		fatalx("database: fsync of %s failed: %s; acknowledged writes may not be on disk",
		       gc.wal_path, uv_strerror((int)rc));
	durable_reach(target);
	/* Commits made while this one ran, and someone waits for them: the next batch. */
	if (gc.head)
		sync_start();
}

/* Sync the -wal file for every commit made so far: off the loop, or inline once
 * stopping. A no-op while a sync is in flight (its completion starts the next). */
static void sync_start(void)
{
	uint64_t target = gc.committed;
	int fd;

	if (gc.syncing || target <= gc.durable)
		return;
	gc.sync_started_us = now_us();
	fd = wal_fd_get();
	if (fd < 0) {
		/* Nothing written since the -wal was checkpointed and removed: nothing
		 * to sync (SQLite synced the database file when it checkpointed). */
		if (errno == ENOENT) {
			durable_reach(target);
			return;
		}
		fatal("database: cannot open %s to sync it", gc.wal_path);
	}
	if (gc.stopped || gc.loop == NULL) {
		if (fsync(fd) < 0)
			fatal("database: fsync of %s failed; acknowledged writes may not be on "
			      "disk",
			      gc.wal_path);
		durable_reach(target);
		return;
	}
	gc.syncing = target;
	if (uv_fs_fsync(gc.loop, &gc.fs, fd, sync_done_cb) < 0)
		fatal("database: cannot queue the sync of %s", gc.wal_path);
}

int db_group_commit_start(sqlite3 *db, const char *path, uv_loop_t *loop, struct kerr *err)
{
	if (db_exec(db, "PRAGMA synchronous = NORMAL", err) < 0)
		return -1;
	sqlite3_commit_hook(db, commit_hook_cb, NULL);
	gc.wal_path = xasprintf("%s-wal", path);
	gc.loop = loop;
	gc.tail = &gc.head;
	gc.started = true;
	gc.stopped = false;
	return 0;
}

uint64_t db_commit_seq(void)
{
	return gc.committed;
}

bool db_durable_wait(struct db_waiter *w, uint64_t seq, void (*cb)(struct db_waiter *w))
{
	if (!gc.started || seq <= gc.durable)
		return false;
	/* Before w is queued: a sync that completes inline (stopping, or nothing to
	 * sync) must not call cb, whose caller has not suspended anything yet. */
	sync_start();
	if (seq <= gc.durable)
		return false;
	w->seq = seq;
	w->cb = cb;
	w->next = NULL;
	w->queued = true;
	*gc.tail = w;
	gc.tail = &w->next;
	return true;
}

void db_durable_cancel(struct db_waiter *w)
{
	struct db_waiter **pp;

	if (!w->queued)
		return;
	for (pp = &gc.head; *pp && *pp != w; pp = &(*pp)->next)
		;
	if (*pp == NULL)
		return;
	*pp = w->next;
	if (gc.tail == &w->next)
		gc.tail = pp;
	w->queued = false;
	w->next = NULL;
}

void db_group_commit_cron(void)
{
	if (gc.started)
		sync_start();
}

void db_group_commit_stop(void)
{
	if (!gc.started)
		return;
	gc.stopped = true;
	gc.syncing = 0; /* an fsync still in flight is superseded by this one */
	sync_start();
	durable_reach(gc.durable);
}

/* Restoring FULL unconditionally here once put every commit after the first progress
 * update back to an fsync of its own, on the loop: group commit silently off. */
void db_sync_relax(sqlite3 *db)
{
	if (!gc.started)
		db_exec(db, "PRAGMA synchronous = NORMAL", NULL);
}

void db_sync_restore(sqlite3 *db)
{
	if (!gc.started)
		db_exec(db, "PRAGMA synchronous = FULL", NULL);
}

void db_group_commit_free(void)
{
	if (gc.wal_fd >= 0)
		close(gc.wal_fd);
	free(gc.wal_path);
	gc.wal_path = NULL;
	gc.wal_fd = -1;
	gc.started = false;
}
