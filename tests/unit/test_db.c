/*
 * test_db.c - opening the state store and migrating its schema (controllerd/db.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "controllerd.h"
#include "util.h"

/* main.c owns the controller's state; db.c does not use it, the library refers to it. */
struct controller ctl;

/* Each test gets a fresh directory holding its database. */
struct fixture {
	char dir[64];
	char path[96];
	sqlite3 *db;
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct kerr err = {0};

	snprintf(f->dir, sizeof(f->dir), "/tmp/kumo-unit-db.XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/kumo.db", f->dir);
	if (db_open(&f->db, f->path, &err) < 0) {
		print_error("db_open: %s\n", err.msg);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];
	int ret;

	db_close(f->db);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	ret = system(cmd);
	free(f);
	return ret == 0 ? 0 : -1;
}

/* One text value from static SQL, copied into buf. */
static const char *query_text(sqlite3 *db, const char *sql, char *buf, size_t len)
{
	sqlite3_stmt *st = db_prepare(db, sql);

	buf[0] = '\0';
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(buf, len, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return buf;
}

static int64_t index_exists(sqlite3 *db, const char *name)
{
	sqlite3_stmt *st = db_prepare(
		db, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?");
	int64_t n;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

/* The whole schema as one string, to compare before and after. */
static char *schema_dump(sqlite3 *db)
{
	sqlite3_stmt *st =
		db_prepare(db, "SELECT group_concat(sql, ';') FROM (SELECT sql FROM sqlite_master "
			       "WHERE sql IS NOT NULL ORDER BY name)");
	char *s;

	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	s = xstrdup((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return s;
}

static void test_open_pragmas(void **state)
{
	struct fixture *f = *state;
	char buf[32];
	struct stat st;

	assert_string_equal(query_text(f->db, "PRAGMA journal_mode", buf, sizeof(buf)), "wal");
	assert_int_equal(db_count(f->db, "PRAGMA foreign_keys"), 1);
	assert_int_equal(db_count(f->db, "PRAGMA synchronous"), 2); /* FULL */
	assert_int_equal(db_version(f->db), 0);
	/* The database holds link keys: owner only. */
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 077, 0);
}

static void test_open_unwritable_path_fails(void **state)
{
	sqlite3 *db = NULL;
	struct kerr err = {0};

	assert_true(db_open(&db, "/nonexistent-dir/kumo.db", &err) < 0);
	assert_null(db);
	assert_non_null(strstr(err.msg, "/nonexistent-dir/kumo.db"));
}

static void test_migrate_from_empty(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};
	static const char *const tables[] = {"meta", "hosts", "tokens", "operations", "events"};

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(db_version(f->db), DB_SCHEMA_VERSION);
	assert_int_equal(db_count(f->db, "PRAGMA user_version"), DB_SCHEMA_VERSION);
	for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
		sqlite3_stmt *st = db_prepare(
			f->db,
			"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?");

		sqlite3_bind_text(st, 1, tables[i], -1, SQLITE_STATIC);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		if (sqlite3_column_int(st, 0) != 1)
			fail_msg("table %s missing", tables[i]);
		sqlite3_finalize(st);
	}
	assert_int_equal(index_exists(f->db, "operations_status"), 1);
	assert_int_equal(index_exists(f->db, "events_type"), 1);
	/* Outside any transaction afterwards. */
	assert_int_equal(sqlite3_get_autocommit(f->db), 1);
}

static void test_migrate_is_persistent(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	db_close(f->db);
	f->db = NULL;
	assert_int_equal(db_open(&f->db, f->path, &err), 0);
	assert_int_equal(db_version(f->db), DB_SCHEMA_VERSION);
}

static void test_migrate_current_is_noop(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};
	char *before, *after;

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(db_meta_set(f->db, "cluster_id", "c0ffee", &err), 0);
	before = schema_dump(f->db);

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(db_version(f->db), DB_SCHEMA_VERSION);
	after = schema_dump(f->db);
	assert_string_equal(before, after);
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM meta"), 1);
	free(before);
	free(after);
}

static void test_migrate_1_to_2_keeps_rows(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};
	char buf[64];

	assert_int_equal(db_migrate(f->db, 1, &err), 0);
	assert_int_equal(db_version(f->db), 1);
	assert_int_equal(index_exists(f->db, "operations_status"), 0);
	assert_int_equal(db_exec(f->db,
				 "INSERT INTO hosts (name, link_key, address, joined_at) "
				 "VALUES ('h1', 'aa', 'tcp://10.0.0.1:7710', 1700000000000)",
				 &err),
			 0);

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(db_version(f->db), DB_SCHEMA_VERSION);
	assert_int_equal(index_exists(f->db, "operations_status"), 1);
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM sqlite_master WHERE name = "
					 "'instances'"),
			 1);
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM hosts"), 1);
	assert_string_equal(query_text(f->db,
				       "SELECT name || ' ' || address || ' ' || state "
				       "FROM hosts",
				       buf, sizeof(buf)),
			    "h1 tcp://10.0.0.1:7710 offline");
}

static void test_migrate_refuses_newer(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};
	char sql[64];

	snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", DB_SCHEMA_VERSION + 1);
	assert_int_equal(db_exec(f->db, sql, &err), 0);
	assert_true(db_migrate(f->db, DB_SCHEMA_VERSION, &err) < 0);
	assert_non_null(strstr(err.msg, "newer"));
	assert_int_equal(db_version(f->db), DB_SCHEMA_VERSION + 1);
	/* Nothing was created in the database it does not understand. */
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM sqlite_master"), 0);
}

static void test_migrate_failure_is_atomic(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};

	assert_int_equal(db_migrate(f->db, 1, &err), 0);
	/* An index that migration 2 is about to create: its CREATE INDEX fails. */
	assert_int_equal(db_exec(f->db, "CREATE INDEX operations_status ON operations(kind)", &err),
			 0);

	err.msg[0] = '\0';
	assert_true(db_migrate(f->db, DB_SCHEMA_VERSION, &err) < 0);
	assert_non_null(strstr(err.msg, "operations_status"));
	assert_int_equal(db_version(f->db), 1);
	/* Neither statement of the failed migration is left behind. */
	assert_int_equal(index_exists(f->db, "events_type"), 0);
	assert_int_equal(sqlite3_get_autocommit(f->db), 1);

	/* And the database still works. */
	assert_int_equal(db_meta_set(f->db, "k", "v", &err), 0);
}

static void test_schema_constraints(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(db_exec(f->db,
				 "INSERT INTO hosts (id, name, link_key, address, joined_at) "
				 "VALUES (1, 'h1', 'aa', 'tcp://10.0.0.1:7710', 1)",
				 &err),
			 0);
	/* CHECK constraints. */
	assert_true(db_exec(f->db,
			    "INSERT INTO hosts (name, link_key, address, joined_at, state) "
			    "VALUES ('h2', 'aa', 'x', 1, 'exploded')",
			    &err) < 0);
	assert_true(db_exec(f->db,
			    "INSERT INTO tokens (kind, digest, created_at) VALUES ('root', 'd', 1)",
			    &err) < 0);
	/* Unique names. */
	assert_true(db_exec(f->db,
			    "INSERT INTO hosts (name, link_key, address, joined_at) "
			    "VALUES ('h1', 'bb', 'y', 2)",
			    &err) < 0);
	/* Foreign keys are enforced: ON DELETE SET NULL runs, unknown hosts are refused. */
	assert_int_equal(db_exec(f->db,
				 "INSERT INTO operations (id, kind, target, host_id, host, status, "
				 "created_at, updated_at) VALUES ('op1', 'probe', 'hosts/h1', 1, "
				 "'h1', 'running', 1, 1)",
				 &err),
			 0);
	assert_true(
		db_exec(f->db,
			"INSERT INTO operations (id, kind, target, host_id, status, created_at, "
			"updated_at) VALUES ('op2', 'probe', 'hosts/h9', 9, 'pending', 1, 1)",
			&err) < 0);
	assert_int_equal(db_exec(f->db, "DELETE FROM hosts WHERE id = 1", &err), 0);
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM operations WHERE host_id IS NULL"),
			 1);
}

/* A deleted token's id is never given again: the audit log names tokens by id. */
static void test_token_ids_not_reused(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};

	/* A token made at schema 6 (before the AUTOINCREMENT step; renumber with it) keeps
	 * its id across the migration. */
	assert_int_equal(db_migrate(f->db, 6, &err), 0);
	assert_int_equal(db_exec(f->db,
				 "INSERT INTO tokens (id, kind, role, digest, created_at) "
				 "VALUES (5, 'api', 'admin', 'd5', 1)",
				 &err),
			 0);
	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(db_count(f->db, "SELECT id FROM tokens WHERE digest = 'd5'"), 5);
	assert_int_equal(db_exec(f->db, "DELETE FROM tokens WHERE id = 5", &err), 0);
	assert_int_equal(db_exec(f->db,
				 "INSERT INTO tokens (kind, role, digest, created_at) "
				 "VALUES ('api', 'viewer', 'd6', 2)",
				 &err),
			 0);
	assert_int_equal(db_count(f->db, "SELECT id FROM tokens WHERE digest = 'd6'"), 6);
}

static void test_meta(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};
	char buf[8];

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_null(db_meta_get(f->db, "cluster_id", buf, sizeof(buf)));
	assert_int_equal(db_meta_set(f->db, "cluster_id", "abc", &err), 0);
	assert_string_equal(db_meta_get(f->db, "cluster_id", buf, sizeof(buf)), "abc");
	assert_int_equal(db_meta_set(f->db, "cluster_id", "def", &err), 0);
	assert_string_equal(db_meta_get(f->db, "cluster_id", buf, sizeof(buf)), "def");
	/* A value longer than the buffer is cut, not overflowed. */
	assert_int_equal(db_meta_set(f->db, "long", "0123456789", &err), 0);
	assert_string_equal(db_meta_get(f->db, "long", buf, sizeof(buf)), "0123456");
}

static void test_transactions(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(db_begin(f->db), 0);
	assert_int_equal(db_meta_set(f->db, "a", "1", &err), 0);
	db_rollback(f->db);
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM meta"), 0);
	db_rollback(f->db); /* harmless outside a transaction */

	assert_int_equal(db_begin(f->db), 0);
	assert_int_equal(db_meta_set(f->db, "a", "1", &err), 0);
	assert_int_equal(db_commit(f->db, &err), 0);
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM meta"), 1);
}

/*
 * A flood of refused requests (any token can make them) never prunes what was done:
 * audit_keep carried-out rows are kept apart from audit_keep / 10 refused ones.
 */
static void test_audit_prune_keeps_what_was_done(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};
	char sql[256];

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	ctl.db = f->db;
	ctl.cfg.audit_keep = 100;
	for (int i = 0; i < 150; i++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO audit (time, token_id, role, method, route, target, status) "
			 "VALUES (%d, 1, 'admin', 'POST', '/api/v1/tokens', '/api/v1/tokens', 201)",
			 i);
		assert_int_equal(db_exec(f->db, sql, &err), 0);
	}
	for (int i = 0; i < 3000; i++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO audit (time, token_id, role, method, route, target, status) "
			 "VALUES (%d, 2, 'viewer', 'POST', 'unmatched', '/x', %d)",
			 1000 + i, i % 2 ? 403 : 404);
		assert_int_equal(db_exec(f->db, sql, &err), 0);
	}
	audit_prune();
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM audit WHERE status = 201"), 100);
	/* The newest 100 of what was done: times 50..149. */
	assert_int_equal(db_count(f->db, "SELECT min(time) FROM audit WHERE status = 201"), 50);
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM audit WHERE status >= 400"), 10);
	ctl.db = NULL;
}

/*
 * Pruning events keeps the newest 10,000 and, besides them, the newest 1,000 of the HA
 * history (host-ha-changed, instance-failover) that the dashboard's HA view reads: a
 * fence stays listed however many operation updates came after it.
 */
static void test_events_prune_keeps_ha_history(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};
	char sql[256];

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	ctl.db = f->db;
	assert_int_equal(db_exec(f->db, "BEGIN", &err), 0);
	for (int i = 0; i < 1200; i++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO events (time, type, data) VALUES (%d, '%s', '{}')", i,
			 i % 2 ? "host-ha-changed" : "instance-failover");
		assert_int_equal(db_exec(f->db, sql, &err), 0);
	}
	for (int i = 0; i < 12000; i++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO events (time, type, data) VALUES (%d, "
			 "'operation-updated', '{}')",
			 2000 + i);
		assert_int_equal(db_exec(f->db, sql, &err), 0);
	}
	assert_int_equal(db_exec(f->db, "COMMIT", &err), 0);
	events_prune();
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM events WHERE type = "
					 "'operation-updated'"),
			 10000);
	/* The newest 1,000 of the HA history: times 200..1199. */
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM events WHERE type != "
					 "'operation-updated'"),
			 1000);
	assert_int_equal(db_count(f->db, "SELECT min(time) FROM events WHERE type != "
					 "'operation-updated'"),
			 200);
	/* Under the cap nothing of it goes. */
	events_prune();
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM events"), 11000);
	ctl.db = NULL;
}

static int durable_calls;

static void durable_cb(struct db_waiter *w)
{
	durable_calls++;
}

/*
 * Group commit: commits made together are made durable together by one fsync off
 * the loop; a waiter is answered only by a sync that started after its commit; an
 * autocommit statement counts as a commit; and at stop what is left is synced inline.
 */
static void test_group_commit(void **state)
{
	struct fixture *f = *state;
	struct db_waiter a = {0}, b = {0}, c = {0};
	uv_loop_t loop;
	struct kerr err = {0};
	uint64_t seq_a, seq_b;
	char buf[32];

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(db_group_commit_start(f->db, f->path, &loop, &err), 0);
	/* NORMAL: a commit no longer waits for its own fsync. */
	assert_string_equal(query_text(f->db, "PRAGMA synchronous", buf, sizeof(buf)), "1");
	durable_calls = 0;

	assert_int_equal(db_begin(f->db), 0);
	assert_int_equal(db_meta_set(f->db, "k1", "v1", &err), 0);
	assert_int_equal(db_commit(f->db, &err), 0);
	seq_a = db_commit_seq();
	assert_true(seq_a > 0);
	assert_true(db_durable_wait(&a, seq_a, durable_cb));
	/* While that fsync runs, two more commits (one autocommit) and their waiters. */
	assert_int_equal(db_meta_set(f->db, "k2", "v2", &err), 0);
	assert_int_equal(db_exec(f->db, "UPDATE meta SET value = 'v3' WHERE key = 'k2'", &err), 0);
	seq_b = db_commit_seq();
	assert_int_equal(seq_b, seq_a + 2);
	assert_true(db_durable_wait(&b, seq_b, durable_cb));
	assert_true(db_durable_wait(&c, seq_b, durable_cb));
	assert_int_equal(durable_calls, 0); /* nothing answered before its fsync */
	/* A cancelled waiter is never called. */
	db_durable_cancel(&c);
	while (durable_calls < 2)
		assert_true(uv_run(&loop, UV_RUN_ONCE) >= 0);
	assert_int_equal(durable_calls, 2);
	assert_false(c.queued);
	/* Durable already: no wait. */
	assert_false(db_durable_wait(&a, seq_b, durable_cb));

	/* Stopping: a commit after the stop is synced inline, at once. */
	db_group_commit_stop();
	assert_int_equal(db_meta_set(f->db, "k4", "v4", &err), 0);
	assert_false(db_durable_wait(&a, db_commit_seq(), durable_cb));
	assert_int_equal(durable_calls, 2);
	db_group_commit_free();
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static int64_t label_rows(sqlite3 *db, const char *where)
{
	_cleanup_free_ char *sql =
		xasprintf("SELECT count(*) FROM instance_labels WHERE %s", where);

	return db_count(db, sql);
}

/*
 * instance_labels, what ?label=k=v looks instances up in (api_instances.c), follows
 * the specs: rows from before the step are taken over, and an insert, a spec update
 * and a delete keep it equal to the labels the specs hold.
 */
static void test_instance_labels_follow_spec(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION - 1, &err), 0);
	assert_int_equal(
		db_exec(f->db,
			"INSERT INTO hosts (id, name, link_key, address, joined_at) "
			"VALUES (1, 'h1', 'aa', 'x', 1);"
			"INSERT INTO instances (name, type, host_id, spec, state, desired, "
			"vcpus, memory_mb, created_at, updated_at) VALUES ('old', 'vm', 1, "
			"'{\"labels\": {\"tier\": \"web\", \"a.b/c\": \"x\"}}', "
			"'running', 'running', 1, 256, 1, 1)",
			&err),
		0);
	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	assert_int_equal(label_rows(f->db, "key = 'tier' AND value = 'web'"), 1);
	assert_int_equal(label_rows(f->db, "key = 'a.b/c' AND value = 'x'"), 1);

	/* New, without labels, with a spec that is not JSON: nothing, and no failure. */
	assert_int_equal(
		db_exec(f->db,
			"INSERT INTO instances (name, type, host_id, spec, state, desired, "
			"vcpus, memory_mb, created_at, updated_at) VALUES ('new', "
			"'container', 1, '{\"labels\": {\"tier\": \"web\"}}', "
			"'creating', 'running', 1, 64, 1, 1);"
			"INSERT INTO instances (name, type, host_id, spec, state, desired, "
			"vcpus, memory_mb, created_at, updated_at) VALUES ('bare', 'vm', 1, "
			"'{}', 'creating', 'running', 1, 64, 1, 1);"
			"INSERT INTO instances (name, type, host_id, spec, state, desired, "
			"vcpus, memory_mb, created_at, updated_at) VALUES ('junk', 'vm', 1, "
			"'not json', 'creating', 'running', 1, 64, 1, 1)",
			&err),
		0);
	assert_int_equal(label_rows(f->db, "key = 'tier' AND value = 'web'"), 2);
	/* A spec update replaces the instance's labels; a state update leaves them. */
	assert_int_equal(db_exec(f->db,
				 "UPDATE instances SET spec = '{\"labels\": {\"tier\": \"db\"}}' "
				 "WHERE name = 'new'; UPDATE instances SET state = 'running'",
				 &err),
			 0);
	assert_int_equal(label_rows(f->db, "key = 'tier' AND value = 'web'"), 1);
	assert_int_equal(label_rows(f->db, "key = 'tier' AND value = 'db'"), 1);
	assert_int_equal(label_rows(f->db, "1"), 3);
	/* Deleted: its labels go with it. */
	assert_int_equal(db_exec(f->db, "DELETE FROM instances WHERE name = 'old'", &err), 0);
	assert_int_equal(label_rows(f->db, "1"), 1);
	assert_int_equal(label_rows(f->db, "instance_id NOT IN (SELECT id FROM instances)"), 0);
}

/*
 * The per-host usage counters (host_usage, host_groups) the scheduler reads instead
 * of a GROUP BY over every instance: after instances existing before the migration,
 * 2,000 random inserts, deletes, moves, resizes and group changes, with rollbacks in
 * between, the counters equal a recount. A trigger missing a case fails the compare.
 */
static void test_host_usage_matches_recount(void **state)
{
	struct fixture *f = *state;
	struct kerr err = {0};
	char sql[512];
	unsigned seed = 12;
	static const char *const groups[] = {"NULL", "'web'", "'db'", "'cache'"};

	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION - 1, &err), 0);
	for (int h = 1; h <= 5; h++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO hosts (id, name, link_key, address, joined_at) "
			 "VALUES (%d, 'h%d', 'aa', 'x', 1)",
			 h, h);
		assert_int_equal(db_exec(f->db, sql, &err), 0);
	}
	/* Rows from before the counters: the migration counts them. */
	for (int i = 0; i < 20; i++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO instances (name, type, host_id, spec, state, desired, "
			 "anti_affinity, vcpus, memory_mb, created_at, updated_at) VALUES "
			 "('old%d', 'vm', %d, '{}', 'running', 'running', %s, %d, %d, 1, 1)",
			 i, i % 5 + 1, groups[i % 4], i % 3 + 1, 256 * (i % 4 + 1));
		assert_int_equal(db_exec(f->db, sql, &err), 0);
	}
	assert_int_equal(db_migrate(f->db, DB_SCHEMA_VERSION, &err), 0);
	for (int step = 0; step < 2000; step++) {
		int r = (int)(rand_r(&seed) % 100), id = (int)(rand_r(&seed) % 300) + 1;
		int host = (int)(rand_r(&seed) % 6); /* 0: no host (NULL) */
		char hostv[8];
		bool rollback = rand_r(&seed) % 10 == 0;

		snprintf(hostv, sizeof(hostv), host ? "%d" : "NULL", host);
		if (rollback)
			assert_int_equal(db_exec(f->db, "BEGIN", &err), 0);
		if (r < 45)
			snprintf(sql, sizeof(sql),
				 "INSERT OR IGNORE INTO instances (id, name, type, host_id, spec, "
				 "state, desired, anti_affinity, vcpus, memory_mb, created_at, "
				 "updated_at) VALUES (%d, 'i%d', 'container', %s, '{}', 'running', "
				 "'running', %s, %d, %d, 1, 1)",
				 id, id, hostv, groups[rand_r(&seed) % 4], (int)(rand_r(&seed) % 8),
				 (int)(rand_r(&seed) % 4096));
		else if (r < 65)
			snprintf(sql, sizeof(sql), "DELETE FROM instances WHERE id = %d", id);
		else if (r < 80)
			snprintf(sql, sizeof(sql),
				 "UPDATE instances SET host_id = %s WHERE id = %d", hostv, id);
		else if (r < 90)
			snprintf(sql, sizeof(sql),
				 "UPDATE instances SET vcpus = %d, memory_mb = memory_mb + 64 "
				 "WHERE id = %d",
				 (int)(rand_r(&seed) % 8), id);
		else
			snprintf(sql, sizeof(sql),
				 "UPDATE instances SET anti_affinity = %s, state = 'x' WHERE id = "
				 "%d",
				 groups[rand_r(&seed) % 4], id);
		assert_int_equal(db_exec(f->db, sql, &err), 0);
		if (rollback)
			assert_int_equal(db_exec(f->db, "ROLLBACK", &err), 0);
	}
	assert_true(db_count(f->db, "SELECT count(*) FROM instances WHERE host_id IS NOT NULL") >
		    50);
	/* Every counter equals its recount, and no host is missing from the counters. */
	assert_int_equal(
		db_count(f->db,
			 "SELECT count(*) FROM (SELECT host_id, sum(vcpus) v, sum(memory_mb) m, "
			 "count(*) n FROM instances WHERE host_id IS NOT NULL GROUP BY host_id) r "
			 "LEFT JOIN host_usage u USING (host_id) WHERE u.host_id IS NULL OR "
			 "u.vcpus != r.v OR u.memory_mb != r.m OR u.instances != r.n"),
		0);
	assert_int_equal(db_count(f->db, "SELECT count(*) FROM host_usage u WHERE instances != "
					 "(SELECT count(*) FROM instances i WHERE i.host_id = "
					 "u.host_id) OR (instances = 0 AND (vcpus != 0 OR "
					 "memory_mb != 0))"),
			 0);
	assert_int_equal(
		db_count(f->db,
			 "SELECT count(*) FROM (SELECT host_id, anti_affinity grp, count(*) n "
			 "FROM instances WHERE host_id IS NOT NULL AND anti_affinity IS NOT NULL "
			 "GROUP BY host_id, anti_affinity) r FULL JOIN host_groups g "
			 "USING (host_id, grp) WHERE r.n IS NULL OR g.instances IS NULL OR "
			 "r.n != g.instances"),
		0);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_open_pragmas),
		T(test_open_unwritable_path_fails),
		T(test_migrate_from_empty),
		T(test_migrate_is_persistent),
		T(test_migrate_current_is_noop),
		T(test_migrate_1_to_2_keeps_rows),
		T(test_migrate_refuses_newer),
		T(test_migrate_failure_is_atomic),
		T(test_schema_constraints),
		T(test_token_ids_not_reused),
		T(test_meta),
		T(test_transactions),
		T(test_audit_prune_keeps_what_was_done),
		T(test_events_prune_keeps_ha_history),
		T(test_group_commit),
		T(test_instance_labels_follow_spec),
		T(test_host_usage_matches_recount),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
