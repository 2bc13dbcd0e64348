/*
 * events.c - the event bus: every state change becomes a row in the events table
 * (so a stream can resume from Last-Event-ID) and wakes the event streams.
 */
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define EVENTS_KEEP    10000
#define EVENTS_HA_KEEP 1000

/* Every event type the controller emits; streams may filter on these. */
static const char *const event_types[] = {
	"host-joined",
	"host-online",
	"host-offline",
	"host-ha-changed",
	"host-updated",
	"host-deleted",
	"operation-created",
	"operation-updated",
	"token-created",
	"token-deleted",
	"instance-created",
	"instance-updated",
	"instance-deleted",
	"instance-failover",
	"image-created",
	"image-deleted",
	"network-created",
	"network-updated",
	"network-deleted",
	"token-rotated",
	"security-group-created",
	"security-group-updated",
	"security-group-deleted",
};

bool event_type_known(const char *type)
{
	for (size_t i = 0; i < ARRAY_SIZE(event_types); i++)
		if (strcmp(event_types[i], type) == 0)
			return true;
	return false;
}

/* Who hears of a new event (main.c sets it: the API's event streams). */
static void (*notify_hook)(void);

/* Set the one listener told of every new event; the API layer subscribes here. */
void events_hook_set(void (*hook)(void))
{
	notify_hook = hook;
}

/*
 * Record an event of type with data (a reference is consumed; NULL for none) and
 * wake every stream. A failure to record is logged; the change it describes has
 * already happened, so it is not undone.
 */
void event_emit(const char *type, struct json_object *data)
{
	sqlite3_stmt *st =
		db_prepare_cached(ctl.db, "INSERT INTO events (time, type, data) VALUES (?, ?, ?)");

	if (!event_type_known(type))
		fatalx("events: type %s is not in event_types[]", type);
	if (data == NULL)
		data = json_object_new_object();
	sqlite3_bind_int64(st, 1, now_ms());
	sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, json_text(data), -1, SQLITE_TRANSIENT);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("events: cannot record %s: %s", type, sqlite3_errmsg(ctl.db));
	db_release(st);
	json_object_put(data);
	log_debug("event %s", type);
	if (notify_hook)
		notify_hook();
}

/*
 * Keep the newest EVENTS_KEEP events, and besides them the newest EVENTS_HA_KEEP of the
 * HA history (host-ha-changed, instance-failover): the dashboard's HA view reads those
 * (GET /api/v1/events/history), and a busy cluster's operation updates would otherwise
 * push a fence of last week out within hours.
 */
void events_prune(void)
{
	static const char *const sql[] = {
		"DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1 AND type "
		"NOT IN ('host-ha-changed', 'instance-failover')",
		"DELETE FROM events WHERE type IN ('host-ha-changed', 'instance-failover') AND "
		"id < (SELECT id FROM events WHERE type IN ('host-ha-changed', "
		"'instance-failover') ORDER BY id DESC LIMIT 1 OFFSET ?2 - 1)",
	};

	for (size_t i = 0; i < ARRAY_SIZE(sql); i++) {
		sqlite3_stmt *st = db_prepare(ctl.db, sql[i]);

		sqlite3_bind_int(st, 1, EVENTS_KEEP);
		sqlite3_bind_int(st, 2, EVENTS_HA_KEEP);
		if (sqlite3_step(st) != SQLITE_DONE)
			log_warnx("events: cannot prune: %s", sqlite3_errmsg(ctl.db));
		sqlite3_finalize(st);
	}
}
