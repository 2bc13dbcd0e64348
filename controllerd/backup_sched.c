/*
 * backup_sched.c - backup schedules: one per instance, a calendar event in Proxmox's
 * syntax, a store, a mode and a retention policy, kept in SQLite (backup_schedules)
 * and run by the controller's cron (main.c) as ordinary backup operations
 * (backup_start()); after each succeeded scheduled backup the instance's backups in
 * that store are pruned by the policy (backup_prune()).
 *
 * Calendar events, evaluated in UTC (as the prune periods are), to the minute:
 *   [WEEKDAYS] [HOUR:]MINUTE      each of HOUR and MINUTE: "*", N, N..M, N/STEP or
 *                                 "*" /STEP, or a comma list of those; MINUTE alone
 *                                 means every hour
 *   WEEKDAYS                      mon..sun, ranges (mon..fri) and lists; alone: 00:00
 *   minutely, hourly, daily, weekly (monday 00:00)
 * so "*:0/5" is every five minutes, "mon..fri 21:00" weekday evenings, "02:30" nightly.
 *
 * next_at is persisted: a controller that was down when a schedule was due runs it
 * once on its first tick after it comes back (as Proxmox's and systemd's persistent
 * timers do), then goes on from the calendar. A run that finds its instance busy with
 * another operation is queued, not skipped: it stays due and starts when that
 * operation ends (last_error says "waiting: ..." meanwhile).
 */
#include "controllerd.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "log.h"
#include "util.h"
#include "valid.h"

static const char *const wday_names[7] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

static const struct {
	const char *alias;
	const char *event;
} calendar_aliases[] = {
	{"minutely", "*:*"},
	{"hourly", "*:00"},
	{"daily", "00:00"},
	{"weekly", "mon 00:00"},
};

/* One number of at most max, at *p; moves *p past it. */
static bool number_take(const char **p, unsigned max, unsigned *out)
{
	char *end;
	unsigned long v;

	if (!isdigit((unsigned char)**p))
		return false;
	v = strtoul(*p, &end, 10);
	if (v > max || end - *p > 2)
		return false;
	*out = (unsigned)v;
	*p = end;
	return true;
}

/* A time field (hour: max 23, minute: max 59) from text[0..len) into bits. */
static bool field_parse(const char *text, size_t len, unsigned max, uint64_t *bits)
{
	_cleanup_free_ char *copy = xasprintf("%.*s", (int)len, text);
	char *save = NULL;

	*bits = 0;
	if (len == 0)
		return false;
	for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		const char *p = item;
		unsigned from = 0, to = max, step = 1;

		if (*p == '*') {
			p++;
		} else {
			if (!number_take(&p, max, &from))
				return false;
			to = from;
			if (p[0] == '.' && p[1] == '.') {
				p += 2;
				if (!number_take(&p, max, &to) || to < from)
					return false;
			}
		}
		if (*p == '/') {
			p++;
			if (!number_take(&p, max, &step) || step == 0)
				return false;
			if (item[0] != '*' && to == from)
				to = max; /* "0/5": from 0, every 5 */
		}
		if (*p != '\0')
			return false;
		for (unsigned v = from; v <= to; v += step)
			*bits |= 1ULL << v;
	}
	return *bits != 0;
}

static int wday_find(const char *text, size_t len)
{
	for (int i = 0; i < 7; i++)
		if (len == 3 && strncmp(text, wday_names[i], 3) == 0)
			return i;
	return -1;
}

/* Weekdays (mon,wed..fri) from text[0..len) into bits (bit 0: Sunday). */
static bool wdays_parse(const char *text, size_t len, unsigned *bits)
{
	_cleanup_free_ char *copy = xasprintf("%.*s", (int)len, text);
	char *save = NULL;

	*bits = 0;
	for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		char *dots = strstr(item, "..");
		int from = wday_find(item, dots ? (size_t)(dots - item) : strlen(item));
		int to = dots ? wday_find(dots + 2, strlen(dots + 2)) : from;

		if (from < 0 || to < 0)
			return false;
		/* fri..mon wraps over the weekend. */
		for (int d = from;; d = (d + 1) % 7) {
			*bits |= 1u << d;
			if (d == to)
				break;
		}
	}
	return *bits != 0;
}

/*
 * Parse a calendar event (see the top of this file) into cal. Returns 0, or -1 with
 * err (400, field "calendar", saying what is accepted).
 */
int backup_calendar_parse(const char *text, struct backup_calendar *cal, struct kerr *err)
{
	const char *t = text, *sp, *colon;
	uint64_t bits;

	memset(cal, 0, sizeof(*cal));
	for (size_t i = 0; i < sizeof(calendar_aliases) / sizeof(calendar_aliases[0]); i++)
		if (strcmp(text, calendar_aliases[i].alias) == 0)
			t = calendar_aliases[i].event;
	if (strlen(t) == 0 || strlen(t) > 120)
		goto bad;
	cal->wdays = 0x7f;
	if (isalpha((unsigned char)t[0])) {
		sp = strchr(t, ' ');
		if (!wdays_parse(t, sp ? (size_t)(sp - t) : strlen(t), &cal->wdays))
			goto bad;
		if (sp == NULL) { /* weekdays alone: at midnight */
			cal->hours = 1;
			cal->minutes = 1;
			return 0;
		}
		t = sp + 1;
	}
	colon = strchr(t, ':');
	if (colon) {
		if (!field_parse(t, (size_t)(colon - t), 23, &bits))
			goto bad;
		cal->hours = (uint32_t)bits;
		t = colon + 1;
	} else {
		cal->hours = 0xffffff; /* a minute alone: every hour */
	}
	if (!field_parse(t, strlen(t), 59, &cal->minutes))
		goto bad;
	return 0;
bad:
	return err_input(err, 400, "calendar",
			 "calendar '%.64s' is not an event like '*:0/5', '02:30', "
			 "'mon..fri 21:00' or 'daily' (UTC)",
			 text);
}

/* The first minute after after_ms (ms since the epoch) that cal names, in ms. */
int64_t backup_calendar_next(const struct backup_calendar *cal, int64_t after_ms)
{
	int64_t t = (after_ms / 60000 + 1) * 60000;

	/* At most a week and a minute ahead: every calendar names a minute of each week. */
	for (int i = 0; i < 8 * 24 * 60; i++, t += 60000) {
		time_t s = (time_t)(t / 1000);
		struct tm tm;

		gmtime_r(&s, &tm);
		if ((cal->wdays >> tm.tm_wday & 1) && (cal->hours >> tm.tm_hour & 1) &&
		    (cal->minutes >> tm.tm_min & 1))
			return t;
	}
	return t; /* unreachable for a parsed calendar */
}

/* ---- the table ---- */

static const char *const keep_names[] = {"keep_last",	"keep_hourly",	"keep_daily",
					 "keep_weekly", "keep_monthly", "keep_yearly"};

static void policy_from(struct json_object *keep, struct prune_policy *p)
{
	int *slots[] = {&p->keep_last,	 &p->keep_hourly,  &p->keep_daily,
			&p->keep_weekly, &p->keep_monthly, &p->keep_yearly};

	for (size_t i = 0; i < 6; i++)
		*slots[i] = (int)json_get_int(keep, keep_names[i], 0);
}

#define SCHED_SELECT                                                                               \
	"SELECT instance, calendar, store, mode, keep, next_at, last_at, last_operation, "         \
	"last_error, created_at FROM backup_schedules "

static struct json_object *sched_row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object(), *keep;
	static const char *const texts[] = {"instance", "calendar", "store", "mode"};

	for (int i = 0; i < 4; i++)
		json_object_object_add(
			o, texts[i],
			sqlite3_column_type(st, i) == SQLITE_NULL
				? NULL
				: json_object_new_string((const char *)sqlite3_column_text(st, i)));
	keep = json_tokener_parse((const char *)sqlite3_column_text(st, 4));
	for (size_t i = 0; i < 6; i++)
		if (json_get_int(keep, keep_names[i], 0) > 0)
			json_object_object_add(
				o, keep_names[i],
				json_object_new_int64(json_get_int(keep, keep_names[i], 0)));
	json_object_put(keep);
	json_object_object_add(o, "next_at", json_object_new_int64(sqlite3_column_int64(st, 5)));
	json_object_object_add(o, "last_at",
			       sqlite3_column_type(st, 6) == SQLITE_NULL
				       ? NULL
				       : json_object_new_int64(sqlite3_column_int64(st, 6)));
	for (int i = 7; i <= 8; i++)
		json_object_object_add(
			o, i == 7 ? "last_operation" : "last_error",
			sqlite3_column_type(st, i) == SQLITE_NULL
				? NULL
				: json_object_new_string((const char *)sqlite3_column_text(st, i)));
	json_object_object_add(o, "created_at", json_object_new_int64(sqlite3_column_int64(st, 9)));
	return o;
}

/* Every schedule as JSON, by instance. */
struct json_object *backup_schedules_list(void)
{
	sqlite3_stmt *st = db_prepare(ctl.db, SCHED_SELECT "ORDER BY instance");
	struct json_object *list = json_object_new_array();

	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(list, sched_row_json(st));
	sqlite3_finalize(st);
	return list;
}

/* The schedule of instance as JSON, or NULL. */
struct json_object *backup_schedule_get(const char *instance)
{
	sqlite3_stmt *st = db_prepare(ctl.db, SCHED_SELECT "WHERE instance = ?");
	struct json_object *o = NULL;

	sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		o = sched_row_json(st);
	sqlite3_finalize(st);
	return o;
}

/*
 * Set (create or replace) the schedule of instance from a checked body {calendar,
 * store?, mode?, keep_*?}: its next run is the calendar's next minute from now.
 * Returns 0, or -1 with err (400 calendar, 404 store).
 */
int backup_schedule_set(const char *instance, struct json_object *body, struct kerr *err)
{
	struct backup_calendar cal;
	struct json_object *keep = json_object_new_object(), *s;
	const char *store = json_get_str(body, "store", NULL);
	sqlite3_stmt *st;
	int rc;

	if (backup_calendar_parse(json_get_str(body, "calendar", ""), &cal, err) < 0) {
		json_object_put(keep);
		return -1;
	}
	if (store && (s = backup_store_get(store)) == NULL) {
		json_object_put(keep);
		return err_input(err, 404, "store", "no backup store named %s", store);
	} else if (store) {
		json_object_put(s);
	}
	for (size_t i = 0; i < 6; i++)
		if (json_get_int(body, keep_names[i], 0) > 0)
			json_object_object_add(
				keep, keep_names[i],
				json_object_new_int64(json_get_int(body, keep_names[i], 0)));
	st = db_prepare(ctl.db,
			"INSERT OR REPLACE INTO backup_schedules (instance, calendar, "
			"store, mode, keep, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, json_get_str(body, "calendar", ""), -1, SQLITE_STATIC);
	if (store)
		sqlite3_bind_text(st, 3, store, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, json_get_str(body, "mode", "auto"), -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, json_text(keep), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 6, backup_calendar_next(&cal, now_ms()));
	sqlite3_bind_int64(st, 7, now_ms());
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(keep);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "cannot record the schedule: %s", sqlite3_errmsg(ctl.db));
	log_info("instance %s: backups scheduled at '%s'", instance,
		 json_get_str(body, "calendar", ""));
	return 0;
}

/* Remove the schedule of instance; false if it had none. Its backups stay. */
bool backup_schedule_delete(const char *instance)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "DELETE FROM backup_schedules WHERE instance = ?");

	sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	sqlite3_step(st);
	sqlite3_finalize(st);
	return sqlite3_changes(ctl.db) > 0;
}

/* One due schedule: start its backup, then move it to its next minute; a busy
 * instance's run waits instead (it stays due). */
static void sched_run(const char *instance, const char *calendar, const char *store,
		      const char *mode, int64_t now)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT i.type, i.spec, h.name FROM instances i "
					      "LEFT JOIN hosts h ON h.id = i.host_id "
					      "WHERE i.name = ?");
	struct json_object *spec = NULL, *op = NULL;
	struct backup_calendar cal;
	struct kerr err = {0};
	char type[16] = "";
	struct host *h = NULL;

	sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		snprintf(type, sizeof(type), "%s", sqlite3_column_text(st, 0));
		spec = json_tokener_parse((const char *)sqlite3_column_text(st, 1));
		h = sqlite3_column_type(st, 2) == SQLITE_TEXT
			    ? host_find((const char *)sqlite3_column_text(st, 2))
			    : NULL;
	}
	sqlite3_finalize(st);
	if (type[0] == '\0') {
		/* The instance was deleted: its schedule goes with it (its backups stay). */
		log_info("instance %s: gone; its backup schedule is removed", instance);
		backup_schedule_delete(instance);
		return;
	}
	op = backup_start(instance, type, spec, h, store, mode, 0, &err);
	json_object_put(spec);
	if (op == NULL && err.status == 409) {
		/* Busy (another operation on the instance, or the store being collected):
		 * the run waits. next_at stays due, so the cron tries again each second and
		 * the backup starts as soon as the other operation ends, also after a
		 * controller restart; calendar slots missed meanwhile make one run. */
		_cleanup_free_ char *why = xasprintf("waiting: %s", err.msg);

		st = db_prepare(ctl.db, "UPDATE backup_schedules SET last_error = ? "
					"WHERE instance = ? AND last_error IS NOT ?");
		sqlite3_bind_text(st, 1, why, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, instance, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, why, -1, SQLITE_STATIC);
		sqlite3_step(st);
		sqlite3_finalize(st);
		if (sqlite3_changes(ctl.db) > 0)
			log_info("instance %s: scheduled backup queued (%s)", instance, err.msg);
		return;
	}
	if (op == NULL)
		log_warnx("instance %s: scheduled backup not started: %s", instance, err.msg);
	/* A calendar that no longer parses (cannot be: it was checked) waits a day. */
	st = db_prepare(ctl.db, "UPDATE backup_schedules SET next_at = ?, last_at = ?, "
				"last_operation = ?, last_error = ? WHERE instance = ?");
	sqlite3_bind_int64(st, 1,
			   backup_calendar_parse(calendar, &cal, &err) == 0
				   ? backup_calendar_next(&cal, now)
				   : now + 86400000);
	sqlite3_bind_int64(st, 2, now);
	if (op)
		sqlite3_bind_text(st, 3, json_get_str(op, "id", ""), -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_text(st, 4, err.msg, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 5, instance, -1, SQLITE_STATIC);
	sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(op);
}

/* From the cron, every second: start the backups whose schedules are due. */
void backup_schedules_cron(int64_t now)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT instance, calendar, store, mode "
					      "FROM backup_schedules WHERE next_at <= ?");
	struct json_object *due = json_object_new_array();

	sqlite3_bind_int64(st, 1, now);
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *r = json_object_new_array();

		for (int i = 0; i < 4; i++)
			json_object_array_add(
				r, sqlite3_column_type(st, i) == SQLITE_NULL
					   ? NULL
					   : json_object_new_string(
						     (const char *)sqlite3_column_text(st, i)));
		json_object_array_add(due, r);
	}
	sqlite3_finalize(st);
	for (size_t i = 0; i < json_array_len(due); i++) {
		struct json_object *r = json_object_array_get_idx(due, i);
		const char *f[4];

		for (int k = 0; k < 4; k++)
			f[k] = json_object_get_string(json_object_array_get_idx(r, k));
		sched_run(f[0], f[1], f[2], f[3], now);
	}
	json_object_put(due);
}

/*
 * Hook from backups_op_done(): backup operation op_id of instance succeeded into
 * store (its name). When it is the instance's schedule's, the schedule's policy prunes
 * the instance's backups in that store (a schedule without keep_* keeps all).
 */
void backup_schedule_op_done(const char *op_id, const char *instance, const char *store)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT keep FROM backup_schedules "
					      "WHERE instance = ? AND last_operation = ?");
	struct json_object *keep = NULL, *out;
	struct prune_policy p;
	struct kerr err;

	sqlite3_bind_text(st, 1, instance, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, op_id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		keep = json_tokener_parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (keep == NULL)
		return;
	policy_from(keep, &p);
	json_object_put(keep);
	if (!p.keep_last && !p.keep_hourly && !p.keep_daily && !p.keep_weekly && !p.keep_monthly &&
	    !p.keep_yearly)
		return;
	out = backup_prune(store, instance, &p, false, &err);
	if (out == NULL) {
		log_warnx("instance %s: scheduled prune: %s", instance, err.msg);
		return;
	}
	log_info("instance %s: scheduled prune removed %zu backups", instance,
		 json_array_len(json_object_object_get(out, "removed")));
	json_object_put(out);
}
