/*
 * test_backup_sched.c - controllerd/backup_sched.c: calendar events in Proxmox's
 * syntax are parsed, refused when malformed, and give the right next minute (UTC); a
 * due run on an instance busy with another operation waits for it instead of being
 * skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controllerd.h"
#include "json.h"

struct controller ctl;

/* ms of YYYY-MM-DD HH:MM:SS UTC */
static int64_t at(int y, int mon, int d, int h, int min, int s)
{
	struct tm tm = {.tm_year = y - 1900,
			.tm_mon = mon - 1,
			.tm_mday = d,
			.tm_hour = h,
			.tm_min = min,
			.tm_sec = s};

	return (int64_t)timegm(&tm) * 1000;
}

static int64_t next(const char *event, int64_t after)
{
	struct backup_calendar cal;
	struct kerr err;

	if (backup_calendar_parse(event, &cal, &err) < 0)
		fail_msg("%s: %s", event, err.msg);
	return backup_calendar_next(&cal, after);
}

/* 2026-12-05 is a Saturday. */
static void test_next(void **state)
{
	int64_t sat = at(2026, 12, 5, 12, 3, 10);

	assert_true(next("*:0/5", sat) == at(2026, 12, 5, 12, 5, 0));
	assert_true(next("*/5", sat) == at(2026, 12, 5, 12, 5, 0));
	assert_true(next("*:*", sat) == at(2026, 12, 5, 12, 4, 0));
	assert_true(next("minutely", sat) == at(2026, 12, 5, 12, 4, 0));
	assert_true(next("02:30", sat) == at(2026, 12, 6, 2, 30, 0));
	assert_true(next("daily", sat) == at(2026, 12, 6, 0, 0, 0));
	assert_true(next("hourly", sat) == at(2026, 12, 5, 13, 0, 0));
	assert_true(next("mon..fri 21:00", sat) == at(2026, 12, 7, 21, 0, 0));
	assert_true(next("sat,sun 12,13:15", sat) == at(2026, 12, 5, 12, 15, 0));
	assert_true(next("fri..sun 0/6:00", sat) == at(2026, 12, 5, 18, 0, 0));
	assert_true(next("weekly", sat) == at(2026, 12, 7, 0, 0, 0));
	assert_true(next("tue", sat) == at(2026, 12, 8, 0, 0, 0));
	assert_true(next("8..10:15", sat) == at(2026, 12, 6, 8, 15, 0));
	/* Exactly on a minute it names: the next one, never the same. */
	assert_true(next("*:0/5", at(2026, 12, 5, 12, 5, 0)) == at(2026, 12, 5, 12, 10, 0));
}

static void test_bad(void **state)
{
	static const char *const bad[] = {
		"",	  "25:00", "*:60", "foo", "mon..xyz 1:00", "*:0/0", "1:2:3",
		"*:5..2", ",",	   "12:",  ":5",  "mon  1:00",	   "123:00"};
	struct backup_calendar cal;
	struct kerr err;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (backup_calendar_parse(bad[i], &cal, &err) == 0)
			fail_msg("'%s' was accepted", bad[i]);
		assert_int_equal(err.status, 400);
	}
}

/* A schedule due at T on instance v1, which has operation op-busy running. */
static void busy_fixture(char *dir, size_t len, int64_t t)
{
	char path[128], sql[1024];
	struct kerr err = {0};

	snprintf(dir, len, "/tmp/kumo-unit-bsched.XXXXXX");
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/kumo.db", dir);
	assert_int_equal(db_open(&ctl.db, path, &err), 0);
	assert_int_equal(db_migrate(ctl.db, DB_SCHEMA_VERSION, &err), 0);
	snprintf(
		sql, sizeof(sql),
		"INSERT INTO backup_stores (name, path, created_at) VALUES ('s1', 'backups/s1', 0);"
		"INSERT INTO instances (name, type, spec, state, desired, vcpus, memory_mb, "
		"  created_at, updated_at) VALUES ('v1', 'vm', '{}', 'running', 'running', 1, 64, "
		"  0, 0);"
		"INSERT INTO operations (id, kind, target, status, created_at, updated_at) "
		"  VALUES ('op-busy', 'instance-migrate', 'instances/v1', 'running', 0, 0);"
		"INSERT INTO backup_schedules (instance, calendar, store, next_at, created_at) "
		"  VALUES ('v1', '*:*', 's1', %lld, 0);",
		(long long)t);
	assert_int_equal(db_exec(ctl.db, sql, &err), 0);
}

static void test_busy_queues(void **state)
{
	int64_t t = at(2026, 12, 6, 9, 0, 0);
	char dir[64], cmd[128];
	struct kerr err = {0};
	struct json_object *sch;

	(void)state;
	busy_fixture(dir, sizeof(dir), t);
	/* Due while op-busy runs: not started, not skipped: it stays due and says why. */
	backup_schedules_cron(t + 1000);
	sch = backup_schedule_get("v1");
	assert_int_equal(json_get_int(sch, "next_at", 0), t);
	assert_non_null(strstr(json_get_str(sch, "last_error", ""), "waiting"));
	assert_non_null(strstr(json_get_str(sch, "last_error", ""), "op-busy"));
	json_object_put(sch);
	/* Minutes pass with the instance still busy: the calendar slots missed make no
	 * extra run; the one run still waits. */
	backup_schedules_cron(t + 150000);
	sch = backup_schedule_get("v1");
	assert_int_equal(json_get_int(sch, "next_at", 0), t);
	json_object_put(sch);
	/* The other operation ends: the next tick starts the run (here it gets as far as
	 * the instance's host, which this test has none of) and the calendar moves on. */
	assert_int_equal(db_exec(ctl.db,
				 "UPDATE operations SET status = 'succeeded' WHERE id = 'op-busy'",
				 &err),
			 0);
	backup_schedules_cron(t + 151000);
	sch = backup_schedule_get("v1");
	assert_int_equal(json_get_int(sch, "next_at", 0), at(2026, 12, 6, 9, 3, 0));
	assert_int_equal(json_get_int(sch, "last_at", 0), t + 151000);
	assert_null(strstr(json_get_str(sch, "last_error", ""), "waiting"));
	assert_non_null(strstr(json_get_str(sch, "last_error", ""), "offline"));
	json_object_put(sch);
	db_close(ctl.db);
	ctl.db = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_next),
		cmocka_unit_test(test_bad),
		cmocka_unit_test(test_busy_queues),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
