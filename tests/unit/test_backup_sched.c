/*
 * test_backup_sched.c - controllerd/backup_sched.c: calendar events in Proxmox's
 * syntax are parsed, refused when malformed, and give the right next minute (UTC).
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_next),
		cmocka_unit_test(test_bad),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
