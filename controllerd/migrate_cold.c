/*
 * migrate_cold.c - a container's cold move, the controller's half (issue 13 item 8).
 *
 * A container moves cold (its type's default, mode cold/offline; live is a 422:
 * CRIU does not work on these hosts), as a "migrate" operation run by migrate.c with
 * the same shape as a VM's: stop-source (migrate-out on the source: stop, pack
 * upper/ into the shared pool), start-target (migrate-in on the target: made from
 * the same SPEC, so the same address and MAC, the layer unpacked, started if it ran,
 * its restart count kept), then the database moves it and the source's stopped copy
 * is deleted (migrate-cleanup there). A target that cannot take it: the container
 * starts again on the source (migrate-resume, action start).
 *
 * After a controller restart the move is settled as a VM's is (migrate.c asks both
 * agents migrate-state, waiting while a step still works on the container), then
 * migrate_cold_settle() finishes it or starts it again on the source.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "migrate.h"
#include "util.h"
#include "work.h"

/*
 * The target has the container: move it in the database (its state from result's
 * "instance" report). Returns 0, or -1 when the row could not move (m is finished).
 */
static int cold_switchover_db(struct migration *m, struct json_object *result)
{
	struct json_object *report = json_object_object_get(result, "instance");
	sqlite3_stmt *st;
	int rc;

	m->phase = PHASE_SWITCHOVER;
	if (json_object_object_get(m->spec, "host"))
		json_object_object_add(m->spec, "host", json_object_new_string(m->dst->name));
	st = db_prepare(ctl.db, "UPDATE instances SET host_id = ?, spec = ?, state = ?, "
				"report = '{}', updated_at = 0 WHERE id = ?");
	sqlite3_bind_int64(st, 1, m->dst->id);
	sqlite3_bind_text(st, 2, json_text(m->spec), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3,
			  json_get_str(report, "state", m->was_running ? "running" : "stopped"), -1,
			  SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 4, m->iid);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		char why[300];

		snprintf(why, sizeof(why), "cannot move %s in the database: %s", m->name,
			 sqlite3_errmsg(ctl.db));
		migrate_finish(m, "failed", why);
		return -1;
	}
	json_object_object_add(m->result, "host", json_object_new_string(m->dst->name));
	m->switched = true;
	migrate_wired_set(m, false); /* the row names the target now; see switchover() */
	return 0;
}

/* The target runs the container: move it in the database, then delete the source's. */
static void cold_switchover(struct migration *m, struct host *h, struct json_object *result)
{
	struct json_object *report = json_object_object_get(result, "instance");
	struct json_object *args;

	m->phase = PHASE_SWITCHOVER;
	if (cold_switchover_db(m, result) < 0)
		return;
	if (h && report)
		instances_report(h, report, "migrated");
	log_info("migration %s: container %s now on %s; removing it from %s", m->id, m->name,
		 m->dst->name, m->src->name);
	m->phase = PHASE_CLEANUP;
	migrate_parent_update(m, 90);
	args = json_object_new_object();
	json_object_object_add(args, "force", json_object_new_boolean(true));
	migrate_child_start(m, m->src, "migrate-cleanup", "delete", args);
}

/* The archive of a move that did not happen, removed off the loop (a pool may be NFS). */
struct archive_rm {
	struct work w; /* first: common/work.h's job */
	char path[PATH_MAX];
};

static int archive_rm_run(struct work *w)
{
	struct archive_rm *a = (struct archive_rm *)w;

	if (unlink(a->path) < 0 && errno != ENOENT)
		return err_set(&w->err, errno, "cannot remove %s", a->path);
	return 0;
}

static void archive_rm_done(struct work *w)
{
	if (w->ret < 0)
		log_warnx("migration: %s", w->err.msg);
	free(w);
}

/*
 * The source packed the container's layer into {shared_pool}/migrations/CHILD.tar
 * (CHILD: its migrate-out's id); only a successful unpack on the target removes it.
 * A move rolled back (the target failed, or a restarted controller found the
 * container on the source) removes it here, so nothing is left on the shared pool.
 */
static void archives_remove(struct migration *m)
{
	_cleanup_free_ char *target = xasprintf("migrations/%s", m->id);
	sqlite3_stmt *st = db_prepare(
		ctl.db, "SELECT id FROM operations WHERE kind = 'migrate-out' AND target = ?");

	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	while (ctl.cfg.shared_pool && sqlite3_step(st) == SQLITE_ROW) {
		struct archive_rm *a = xcalloc(1, sizeof(*a));

		/* Operation ids are hex: the name stays inside migrations/. */
		snprintf(a->path, sizeof(a->path), "%s/migrations/%s.tar", ctl.cfg.shared_pool,
			 (const char *)sqlite3_column_text(st, 0));
		a->w.run = archive_rm_run;
		a->w.done = archive_rm_done;
		work_queue(ctl.loop, &a->w);
	}
	sqlite3_finalize(st);
}

/* It stays on the source: started again there if it ran, then the parent ends. */
void migrate_cold_rollback(struct migration *m, const char *why)
{
	archives_remove(m);
	snprintf(m->failure, sizeof(m->failure), "%s", why);
	json_object_object_add(m->result, "host", json_object_new_string(m->src->name));
	if (!m->was_running) {
		migrate_finish(m, m->cancel ? "cancelled" : "failed", why);
		return;
	}
	m->rollback = true;
	m->phase = PHASE_CLEANUP;
	migrate_parent_update(m, -1);
	migrate_child_start(m, m->src, "migrate-resume", "start", NULL);
}

/* A cold migration's step ended (migrate_agent_done()). Returns 0. */
int migrate_cold_done(struct migration *m, struct host *h, const char *kind, bool ok,
		      struct json_object *result, const char *error)
{
	struct json_object *args;
	char why[300];

	if (!strcmp(kind, "migrate-out")) {
		if (!ok) {
			snprintf(why, sizeof(why), "the source %s could not stop and pack it: %s",
				 m->src->name, error ? error : "failed");
			/* It may have stopped: it runs again where it was. */
			m->was_running = true;
			migrate_cold_rollback(m, why);
			return 0;
		}
		m->was_running = json_get_bool(result, "was_running", false);
		/* In the parent's row: a controller restarted from here knows it. */
		json_object_object_add(m->result, "was_running",
				       json_object_new_boolean(m->was_running));
		if (m->cancel) {
			migrate_cold_rollback(m, "cancelled");
			return 0;
		}
		m->phase = PHASE_START_TARGET;
		migrate_parent_update(m, 50);
		args = json_object_new_object();
		json_object_object_add(args, "archive",
				       json_object_new_string(json_get_str(result, "archive", "")));
		json_object_object_add(args, "restarts",
				       json_object_new_int64(json_get_int(result, "restarts", 0)));
		json_object_object_add(args, "start", json_object_new_boolean(m->was_running));
		migrate_child_start(m, m->dst, "migrate-in", "migrate-in", args);
	} else if (!strcmp(kind, "migrate-in")) {
		if (ok) {
			cold_switchover(m, h, result);
			return 0;
		}
		/* The target removed what it made itself. */
		snprintf(why, sizeof(why), "the target %s could not take it: %s", m->dst->name,
			 error ? error : "failed");
		migrate_cold_rollback(m, why);
	} else if (!strcmp(kind, "migrate-resume") && m->rollback) {
		if (ok && h && json_object_object_get(result, "instance"))
			instances_report(h, json_object_object_get(result, "instance"), "migrated");
		snprintf(why, sizeof(why), "%s%s%s", m->failure,
			 ok ? "" : "; starting it again failed: ",
			 ok ? "" : (error ? error : "failed"));
		migrate_finish(m, m->cancel && ok ? "cancelled" : "failed", why);
	} else if (!strcmp(kind, "migrate-cleanup") && m->switched) {
		if (!ok)
			log_warnx("migration %s: the source %s keeps a stopped copy of %s: %s",
				  m->id, m->src->name, m->name, error ? error : "failed");
		migrate_finish(m, "succeeded", NULL);
	}
	return 0;
}

/*
 * A container's move after a controller restart, both ends answered (not busy):
 *   the target has it         -> the move happened: the database moves it there and
 *                                the source's stopped copy is deleted
 *   the source alone has it   -> it did not: started again there if it ran
 *   neither                   -> lost (says so)
 */
void migrate_cold_settle(struct migration *m)
{
	bool src_has = json_get_bool(m->ans_src, "present", false);
	bool dst_has = json_get_bool(m->ans_dst, "present", false);
	struct json_object *r, *report;
	char why[400];

	m->settling = false;
	if (dst_has) {
		log_info("migration %s: container %s is on %s (%s): switching over", m->id, m->name,
			 m->dst->name, json_get_str(m->ans_dst, "state", "?"));
		r = json_object_new_object();
		report = json_object_new_object();
		json_object_object_add(
			report, "state",
			json_object_new_string(json_get_str(m->ans_dst, "state", "stopped")));
		json_object_object_add(r, "instance", report);
		if (src_has)
			cold_switchover(m, NULL, r);
		else if (cold_switchover_db(m, r) == 0)
			migrate_finish(m, "succeeded", NULL); /* nothing left on the source */
		json_object_put(r);
		return;
	}
	if (src_has) {
		snprintf(why, sizeof(why), "%s; %s stays on %s", m->settle_why, m->name,
			 m->src->name);
		/* Never stopped there: nothing to start again. */
		if (!strcmp(json_get_str(m->ans_src, "state", ""), "running"))
			m->was_running = false;
		migrate_cold_rollback(m, m->cancel ? "cancelled" : why);
		return;
	}
	snprintf(why, sizeof(why), "%s; container %s is on neither %s nor %s", m->settle_why,
		 m->name, m->src->name, m->dst->name);
	migrate_finish(m, "failed", why);
}
