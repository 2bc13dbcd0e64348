/*
 * test_backup_prune.c - controllerd/backup_prune.c: a retention policy keeps exactly
 * what Proxmox's prune would over a simulated calendar.
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

/* ms of YYYY-MM-DD HH:00 UTC */
static int64_t at(int y, int mon, int d, int h)
{
	struct tm tm = {.tm_year = y - 1900, .tm_mon = mon - 1, .tm_mday = d, .tm_hour = h};

	return (int64_t)timegm(&tm) * 1000;
}

/* One backup a day at noon from 2026-01-01 to 2026-03-01 (60), newest first. */
static void test_calendar(void **state)
{
	int64_t times[60];
	bool keep[60];
	struct prune_policy p = {
		.keep_last = 2, .keep_daily = 3, .keep_weekly = 2, .keep_monthly = 2};
	char got[512] = "";
	size_t n = 0;

	for (int64_t t = at(2026, 3, 1, 12); t >= at(2026, 1, 1, 12); t -= 86400000LL)
		times[n++] = t;
	assert_int_equal(n, 60);
	backup_prune_select(times, n, &p, keep);
	for (size_t i = 0; i < n; i++) {
		time_t s = (time_t)(times[i] / 1000);
		struct tm tm;
		char day[16];

		if (!keep[i])
			continue;
		gmtime_r(&s, &tm);
		strftime(day, sizeof(day), "%m-%d ", &tm);
		strcat(got, day);
	}
	/* last 2: 03-01, 02-28; daily 3: 02-27..25; weekly 2 (ISO weeks 8 and 7, week 9
	 * is covered): 02-22, 02-15; monthly 2 (March and February are covered): 01-31. */
	assert_string_equal(got, "03-01 02-28 02-27 02-26 02-25 02-22 02-15 01-31 ");
}

static void test_edges(void **state)
{
	int64_t times[3] = {at(2026, 5, 1, 10) + 1800000, at(2026, 5, 1, 10) + 600000,
			    at(2026, 5, 1, 9)};
	bool keep[3];
	struct prune_policy none = {0}, last5 = {.keep_last = 5}, hourly1 = {.keep_hourly = 1};

	backup_prune_select(times, 3, &none, keep);
	assert_true(keep[0] && keep[1] && keep[2]); /* no policy: nothing is pruned */
	backup_prune_select(times, 3, &last5, keep);
	assert_true(keep[0] && keep[1] && keep[2]);
	backup_prune_select(times, 3, &hourly1, keep);
	/* The newest of the newest hour; the 09:00 hour is beyond the one kept. */
	assert_true(keep[0] && !keep[1] && !keep[2]);
	backup_prune_select(times, 0, &hourly1, keep);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_calendar),
		cmocka_unit_test(test_edges),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
