/*
 * test_hosts.c - the host registry's liveness check (controllerd/hosts.c): hosts that
 * stopped beating go offline in bounded batches, each batch one transaction.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controllerd.h"
#include "util.h"

/* main.c owns the controller's state; the tests set the store and the timing. */
struct controller ctl;

static char dir[64];
static unsigned commits;

static int commit_count_cb(void *cls)
{
	(void)cls;
	commits++;
	return 0;
}

static int setup(void **state)
{
	char path[96];
	struct kerr err = {0};

	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kumo-unit-hosts.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/kumo.db", dir);
	if (db_open(&ctl.db, path, &err) < 0 || db_migrate(ctl.db, DB_SCHEMA_VERSION, &err) < 0 ||
	    migrate_db_init(ctl.db, &err) < 0) {
		print_error("db: %s\n", err.msg);
		return -1;
	}
	ctl.cfg.heartbeat_interval = 1;
	ctl.cfg.offline_after = 5;
	/* An event names the host's network document, which names the control plane. */
	ctl.cfg.link_address = "127.0.0.1";
	ctl.cfg.api_listen = "127.0.0.1:9443";
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	hosts_free();
	db_close(ctl.db);
	ctl.db = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* n hosts online in the database, loaded as a controller start loads them. */
static void hosts_make(int n)
{
	struct kerr err = {0};
	_cleanup_free_ char *sql = xasprintf(
		"WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < %d) "
		"INSERT INTO hosts (name, link_key, address, state, joined_at) SELECT "
		"printf('h%%05d', i), hex(zeroblob(32)), 'tcp://127.0.0.1:1', 'online', 0 FROM k",
		n);

	assert_int_equal(db_exec(ctl.db, sql, &err), 0);
	assert_int_equal(hosts_load(&err), 0);
}

static int64_t offline_rows(void)
{
	return db_count(ctl.db, "SELECT count(*) FROM hosts WHERE state = 'offline'");
}

/*
 * 450 hosts silent past offline_after: each check marks at most 200 of them, in one
 * commit, with an event each; a host that beat in time stays online throughout.
 */
static void test_offline_in_batches(void **state)
{
	int64_t stale = now_ms() - 60 * 1000;
	struct host *fresh = NULL;
	size_t n;

	(void)state;
	hosts_make(451);
	for (struct host *h = ctl.hosts; h; h = h->next)
		if (strcmp(h->name, "h00451") == 0)
			fresh = h;
		else
			h->last_seen = stale;
	assert_non_null(fresh);
	sqlite3_commit_hook(ctl.db, commit_count_cb, NULL);

	commits = 0;
	n = hosts_check_liveness();
	assert_int_equal(n, 200);
	assert_int_equal(commits, 1);
	assert_int_equal(offline_rows(), 200);
	assert_int_equal(
		db_count(ctl.db, "SELECT count(*) FROM events WHERE type = 'host-offline'"), 200);

	assert_int_equal(hosts_check_liveness(), 200);
	assert_int_equal(hosts_check_liveness(), 50);
	assert_int_equal(hosts_check_liveness(), 0);
	assert_int_equal(commits, 3);
	assert_int_equal(offline_rows(), 450);
	assert_int_equal(fresh->state, HOST_ONLINE);
	sqlite3_commit_hook(ctl.db, NULL, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_offline_in_batches, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
