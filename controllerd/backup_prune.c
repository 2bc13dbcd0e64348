/*
 * backup_prune.c - which backups a retention policy keeps: Proxmox's prune semantics
 * (keep-last, then keep-hourly, -daily, -weekly, -monthly, -yearly), as pure logic.
 *
 * The backups are looked at newest first. keep_last keeps the newest N. Then each
 * period option in turn keeps the newest backup of each of the newest N periods
 * (hours, days, ISO weeks, months, years, in UTC) that no backup kept so far stands
 * for; a backup in a period already kept by this option is marked for removal, and
 * later options pass it by. What no option keeps is removed.
 */
#include "controllerd.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "util.h"

enum mark {
	MARK_NONE,
	MARK_KEEP,
	MARK_REMOVE
};

/* The period key of a time for one option: "" for keep_last (every backup its own). */
static void period_key(int option, int64_t ms, char *out, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	gmtime_r(&t, &tm);
	/* Literal formats, one per option: hour, day, ISO week, month, year. */
	switch (option) {
	case 1:
		strftime(out, len, "%Y-%m-%d %H", &tm);
		break;
	case 2:
		strftime(out, len, "%Y-%m-%d", &tm);
		break;
	case 3:
		strftime(out, len, "%G-W%V", &tm);
		break;
	case 4:
		strftime(out, len, "%Y-%m", &tm);
		break;
	default:
		strftime(out, len, "%Y", &tm);
		break;
	}
}

/*
 * Mark keep or remove for times[0..n) (ms, newest first) under policy: keep[i] is
 * true for each backup kept. A policy that keeps nothing at all (every count 0)
 * keeps everything: pruning needs an explicit policy.
 */
void backup_prune_select(const int64_t *times, size_t n, const struct prune_policy *policy,
			 bool *keep)
{
	const int counts[] = {policy->keep_last,   policy->keep_hourly,	 policy->keep_daily,
			      policy->keep_weekly, policy->keep_monthly, policy->keep_yearly};
	_cleanup_free_ enum mark *mark = xcalloc(n ? n : 1, sizeof(*mark));
	_cleanup_free_ char(*keys)[32] = xcalloc(n ? n : 1, sizeof(*keys));
	bool any = false;

	for (size_t o = 0; o < ARRAY_SIZE(counts); o++)
		any = any || counts[o] > 0;
	for (size_t i = 0; i < n; i++)
		keep[i] = !any;
	if (!any)
		return;
	/* keep_last: the newest N, each its own period. */
	for (size_t i = 0, kept = 0; i < n && kept < (size_t)counts[0]; i++, kept++)
		mark[i] = MARK_KEEP;
	for (size_t o = 1; o < ARRAY_SIZE(counts); o++) {
		_cleanup_free_ bool *covered = xcalloc(n ? n : 1, sizeof(*covered));
		size_t taken = 0;

		if (counts[o] <= 0)
			continue;
		for (size_t i = 0; i < n; i++)
			period_key((int)o, times[i], keys[i], sizeof(keys[i]));
		/* Periods a backup kept by an earlier option stands for already. */
		for (size_t i = 0; i < n; i++)
			for (size_t j = 0; j < n && !covered[i]; j++)
				covered[i] = mark[j] == MARK_KEEP && !strcmp(keys[j], keys[i]);
		for (size_t i = 0; i < n; i++) {
			bool taken_here = false;

			if (mark[i] != MARK_NONE || covered[i])
				continue;
			for (size_t j = 0; j < i && !taken_here; j++)
				taken_here = mark[j] == MARK_KEEP && !covered[j] &&
					     !strcmp(keys[j], keys[i]);
			if (taken_here) {
				mark[i] = MARK_REMOVE; /* an older one of a period kept now */
				continue;
			}
			if (taken >= (size_t)counts[o])
				break;
			taken++;
			mark[i] = MARK_KEEP;
		}
	}
	for (size_t i = 0; i < n; i++)
		keep[i] = mark[i] == MARK_KEEP;
}
