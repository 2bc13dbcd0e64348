/*
 * jobs.c - operations as jobs: one row per operation kind says how a job of that kind
 * is resumed after a restart, how its result is taken (from whichever host reports
 * it), how it is cancelled and what its default deadline is. Nothing here decides by
 * a kind's name prefix: a kind not in the table has no resume, no cancel and the
 * generic result.
 *
 * A job's life, all of it in its operations row (ops.c) so a restarted controller
 * goes on where it was:
 *
 *   step "queued" -> "agent" (the host acked) -> "cancelling" -> "done"
 *   deadline      ms; past it a job with no cancel yet gets cancel "timed out", its
 *                 host is told to abandon the work and clean up (LINK_CMD_CANCEL), and
 *                 the deadline moves CANCEL_GRACE_MS on; past that as well the job is
 *                 ended here, as the agent never answered.
 *   cancel        NULL, "cancelled" (an operator asked) or "timed out". A job with a
 *                 cancel that ends "failed" ends as the cancel says
 *                 (jobs_final_status()): "cancelled", or "failed" with error
 *                 "timed out"; its result lists what the agent undid.
 *
 * A cancel reaches the job at a safe point on the agent (agentd/job.c); a command
 * still waiting in the host's queue is simply taken out of it, and the job ends at
 * once. A kind whose cancel slot is empty answers 409 with the reason in its row.
 * Stage 2 kinds (migrate, backup, fence, ingest) each add one row and, when complex,
 * one file holding their slots.
 */
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

/* How long a host gets to undo a cancelled job before the controller ends it. */
#define CANCEL_GRACE_MS 30000

/* ---- the slots --------------------------------------------------------------------- */

static struct host *job_host(struct json_object *op)
{
	const char *hname = json_get_str(op, "host", NULL);

	return hname ? host_find(hname) : NULL;
}

/* An instance command is sent again; the agent runs an operation id once. */
static int instance_resume(struct host *h, const char *id, struct json_object *op)
{
	if (h == NULL)
		return -1;
	return instances_op_resend(h, id, json_get_str(op, "kind", ""),
				   json_object_object_get(op, "result"));
}

/*
 * A create with a cancel that its host finished anyway (it was done before a safe
 * point came): undone whole by a forced delete, and the job ends cancelled naming it.
 */
static int create_undo(struct host *h, struct json_object *op)
{
	const char *id = json_get_str(op, "id", "");
	const char *target = json_get_str(op, "target", "");
	const char *name = strchr(target, '/') ? strchr(target, '/') + 1 : target;
	char del_id[LINK_OP_ID_MAX + 1];
	struct json_object *result, *undone;
	struct kerr err;

	if (h == NULL)
		h = job_host(op);
	if (h == NULL || instances_create_undo(h, name, del_id, sizeof(del_id), &err) < 0) {
		log_warnx("operation %s: cannot undo the finished create: %s", id,
			  h ? err.msg : "its host is gone");
		return op_update(id, "failed", -1, "failed", NULL,
				 "cancelled too late: the create finished and could not be undone");
	}
	log_info("operation %s: the create finished before the cancel; deleting %s (%s)", id, name,
		 del_id);
	result = json_object_new_object();
	undone = json_object_new_array();
	json_object_array_add(undone, json_object_new_string("instance"));
	json_object_object_add(result, "undone", undone);
	json_object_object_add(result, "delete_operation", json_object_new_string(del_id));
	return op_update(id, "failed", -1, "cancelled", result, NULL); /* as its cancel says */
}

static int instance_done(struct host *h, struct json_object *op, const char *status,
			 struct json_object *result, const char *error)
{
	if (json_get_str(op, "cancel", NULL) && !strcmp(status, "succeeded") &&
	    !strcmp(json_get_str(op, "kind", ""), "instance-create"))
		return create_undo(h, op);
	return instances_op_done(h, op, status, result, error);
}

static int probe_resume(struct host *h, const char *id, struct json_object *op)
{
	(void)op;
	if (h == NULL)
		return -1;
	agentlink_cmd_send(h, LINK_CMD_PROBE, id, NULL);
	return 0;
}

/* A probe's result is the host's fresh facts. */
static int probe_done(struct host *h, struct json_object *op, const char *status,
		      struct json_object *result, const char *error)
{
	struct json_object *facts = json_object_object_get(result, "facts");
	bool ok = !strcmp(status, "succeeded");

	if (h && ok && facts && json_object_is_type(facts, json_type_object)) {
		host_facts_set(h, json_object_get(facts));
		h->facts_saved = 0; /* written by the next persist pass */
		hosts_persist(false);
	}
	return op_update(json_get_str(op, "id", ""), status, ok ? 100 : -1, ok ? "done" : "failed",
			 result ? json_object_get(result) : NULL, error);
}

/* The job ends here, without its host: as failed, which its cancel turns round. */
static void finish_here(struct json_object *op, const char *why)
{
	const struct op_kind *k = jobs_kind_find(json_get_str(op, "kind", ""));
	struct json_object *result = json_object_new_object();

	json_object_object_add(result, "undone", json_object_new_array());
	json_object_object_add(result, "note", json_object_new_string(why));
	if (k && k->done)
		k->done(NULL, op, "failed", result, json_get_str(op, "cancel", "cancelled"));
	else
		op_update(json_get_str(op, "id", ""), "failed", -1, "failed",
			  json_object_get(result), json_get_str(op, "cancel", "cancelled"));
	json_object_put(result);
}

/* The agent answered a cancel: {op, state}. "unknown": it never had the job. */
static void cancel_ack_cb(struct json_object *body, const char *error, void *cls)
{
	const char *id = json_get_str(body, "op", "");
	struct json_object *op;

	(void)cls;
	if (body == NULL) {
		log_warnx("operation cancel: the agent refused it: %s", error ? error : "");
		return;
	}
	op = link_op_id_valid(id) ? op_get(id) : NULL;
	if (op == NULL || op_status_final(json_get_str(op, "status", "failed"))) {
		json_object_put(op);
		return;
	}
	if (!strcmp(json_get_str(body, "state", ""), "unknown"))
		finish_here(op, "the host never started it");
	else if (!strcmp(json_get_str(body, "state", ""), "done") &&
		 !strcmp(json_get_str(op, "kind", ""), "instance-create") &&
		 !strcmp(json_get_str(op, "step", ""), "agent-done"))
		/* Done on the host, still waiting here (its network): undo it whole. */
		create_undo(NULL, op);
	json_object_put(op);
}

/* Send h the cancel of job id; its ack comes to cancel_ack_cb(). */
static void cancel_send(struct host *h, const char *id, const char *reason)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "reason", json_object_new_string(reason));
	agentlink_cmd_send_cb(h, LINK_CMD_CANCEL, id, body, cancel_ack_cb, NULL);
}

/*
 * Tell the job's host to stop at a safe point and undo what the job did. A command
 * still in the host's queue is taken out instead and the job ends here.
 */
static int agent_cancel(struct host *h, struct json_object *op, const char *reason)
{
	const char *id = json_get_str(op, "id", "");

	if (!strcmp(json_get_str(op, "step", ""), "agent-done") &&
	    !strcmp(json_get_str(op, "kind", ""), "instance-create"))
		return create_undo(h, op);
	if (h == NULL || agentlink_cmd_unqueue(h, id)) {
		finish_here(op, "nothing had been sent to the host");
		return 0;
	}
	cancel_send(h, id, reason);
	return 0;
}

/* A migration stops before its switchover (migrate.c); past it, the cancel is refused
 * there and the migration ends as it will. */
static int migrate_kind_cancel(struct host *h, struct json_object *op, const char *reason)
{
	struct kerr err;

	(void)h;
	(void)reason;
	if (migrate_cancel(json_get_str(op, "id", ""), &err) < 0) {
		log_warnx("operation %s: %s", json_get_str(op, "id", ""), err.msg);
		return -1;
	}
	return 0;
}

static int migrate_kind_refuse(struct json_object *op, struct kerr *err)
{
	return migrate_cancel_refused(json_get_str(op, "id", ""), err);
}

static int p2v_kind_refuse(struct json_object *op, struct kerr *err)
{
	const char *target = json_get_str(op, "target", "");

	if (strncmp(target, "p2v/", 4) != 0)
		return err_input(err, 409, NULL, "operation %s has no ingest session",
				 json_get_str(op, "id", ""));
	return p2v_session_cancel_refused(target + 4, err);
}

/* An ingest session is abandoned: its files go, its operation ends cancelled (p2v.c). */
static int p2v_kind_cancel(struct host *h, struct json_object *op, const char *reason)
{
	const char *target = json_get_str(op, "target", "");
	struct kerr err;

	(void)h;
	(void)reason;
	if (strncmp(target, "p2v/", 4) != 0 || p2v_session_cancel(target + 4, &err) < 0) {
		log_warnx("operation %s: cannot cancel its session", json_get_str(op, "id", ""));
		return -1;
	}
	return 0;
}

/* An ingest session runs in the controller: it goes on if p2v_sessions_load() brought
 * it back. */
static int p2v_kind_resume(struct host *h, const char *id, struct json_object *op)
{
	const char *target = json_get_str(op, "target", "");

	(void)h;
	(void)id;
	return strncmp(target, "p2v/", 4) == 0 && p2v_session_exists(target + 4) ? 0 : -1;
}

/* An HA hand-off step or a prepared copy's removal: its command is sent again (ha.c). */
static int ha_resume(struct host *h, const char *id, struct json_object *op)
{
	return ha_op_resend(h, id, op);
}

/*
 * The kinds the controller runs itself can refuse a cancel at some steps (past a
 * migration's switchover, while a cutover's qemu-img runs): asked before the cancel
 * is recorded, so an operation is never said "cancelled" while its work goes on.
 */
static const struct {
	const char *kind;
	int (*refuse)(struct json_object *op, struct kerr *err);
} refusers[] = {
	{"migrate", migrate_kind_refuse},
	{"p2v-ingest", p2v_kind_refuse},
};

static bool kind_refuses(const char *kind, struct json_object *op, struct kerr *err)
{
	for (size_t i = 0; i < sizeof(refusers) / sizeof(refusers[0]); i++)
		if (strcmp(refusers[i].kind, kind) == 0)
			return refusers[i].refuse(op, err) < 0;
	return false;
}

/* ---- the table ---------------------------------------------------------------------- */

#define NO_UNDO "cannot be cancelled: "

/*
 * One row per kind. timeout_s is the deadline when the request gives none (0: none);
 * a stop's covers the longest grace an instance may ask for (valid.h).
 */
static const struct op_kind kinds[] = {
	{"probe", 60, probe_resume, probe_done, NULL, NO_UNDO "a probe only reads facts"},
	{"instance-create", 900, instance_resume, instance_done, agent_cancel, NULL},
	{"instance-start", 600, instance_resume, instance_done, agent_cancel, NULL},
	{"instance-stop", 3900, instance_resume, instance_done, NULL,
	 NO_UNDO "a stop cannot be undone; use force-stop to hurry it"},
	{"instance-force-stop", 600, instance_resume, instance_done, NULL,
	 NO_UNDO "a force-stop cannot be undone"},
	{"instance-restart", 3900, instance_resume, instance_done, NULL,
	 NO_UNDO "a restart cannot be undone half-way"},
	{"instance-reboot", 600, instance_resume, instance_done, NULL,
	 NO_UNDO "a reboot is one QMP command"},
	{"instance-pause", 600, instance_resume, instance_done, NULL,
	 NO_UNDO "a pause is one QMP command"},
	{"instance-resume", 600, instance_resume, instance_done, NULL,
	 NO_UNDO "a resume is one QMP command"},
	{"instance-balloon", 900, instance_resume, instance_done, NULL,
	 NO_UNDO "a balloon change cannot be undone half-way"},
	{"instance-update", 3600, instance_resume, instance_done, NULL,
	 NO_UNDO "an update changes disks in place"},
	{"instance-delete", 3600, instance_resume, instance_done, NULL,
	 NO_UNDO "a delete cannot be undone"},
	{"instance-snapshot-create", 3600, instance_resume, instance_done, NULL,
	 NO_UNDO "a snapshot is written into the disks in place"},
	{"instance-snapshot-revert", 3600, instance_resume, instance_done, NULL,
	 NO_UNDO "a revert overwrites the disks in place"},
	{"instance-snapshot-delete", 3600, instance_resume, instance_done, NULL,
	 NO_UNDO "a snapshot delete cannot be undone"},
	{"instance-commit", 3600, instance_resume, instance_done, NULL,
	 NO_UNDO "a commit's blobs are written in place"},
	{"image-import", 0, ova_import_resume, NULL, NULL,
	 NO_UNDO "an image import runs to its end"},
	/* Backups (backups.c): their agent steps report like an instance's. */
	/* A backup's cancel reaches its agent, which stops QEMU's block job and removes
	 * its work files; the row fails with the op (backups_op_done()). */
	{"instance-backup", 0, NULL, instance_done, agent_cancel, NULL},
	{"instance-restore", 0, NULL, instance_done, NULL,
	 NO_UNDO "a restore overwrites the disks in place"},
	{"backup-verify", 0, NULL, NULL, NULL, NO_UNDO "a verify only reads"},
	{"store-gc", 0, NULL, NULL, NULL, NO_UNDO "a garbage collection runs to its end"},
	/* Live migration (migrate.c): the parent is driven by the controller, its steps by
	 * the two hosts; the steps' ends go to migrate_agent_done(). */
	{"migrate", 0, migrate_job_resume, NULL, migrate_kind_cancel, NULL},
	{"migrate-in", 0, NULL, migrate_agent_done, NULL, NO_UNDO "cancel the migration"},
	{"migrate-out", 0, NULL, migrate_agent_done, NULL, NO_UNDO "cancel the migration"},
	{"migrate-resume", 0, NULL, migrate_agent_done, NULL, NO_UNDO "cancel the migration"},
	{"migrate-cleanup", 0, NULL, migrate_agent_done, NULL, NO_UNDO "cancel the migration"},
	{"evacuate", 0, NULL, NULL, NULL, NO_UNDO "cancel its migrations one by one"},
	/* P2V ingest (p2v.c): its own deadline; a cancel abandons the session. */
	{"p2v-ingest", 0, p2v_kind_resume, NULL, p2v_kind_cancel, NULL},
	/* HA (ha.c): a returning host drops its dead copy of an instance restarted elsewhere. */
	{"ha-forget", 600, NULL, NULL, NULL, NO_UNDO "a forget only removes a dead copy"},
	/* HA maintenance hand-off (ha.c): a clean stop, then a drop keeping the disks. */
	{"ha-handoff", 600, ha_resume, NULL, NULL, NO_UNDO "leave maintenance to keep it there"},
	/* HA failover (ha.c): the replacement created, not started, during the fence wait;
	 * and its removal when the failed host came back first. */
	{"ha-prepare", 600, NULL, NULL, NULL, NO_UNDO "the failover starts or removes it"},
	{"ha-unprepare", 600, ha_resume, NULL, NULL, NO_UNDO "it only removes a stopped copy"},
	{"unmanaged-destroy", 600, NULL, NULL, NULL, NO_UNDO "a destroy cannot be undone"},
};

/* The row of kind name, or NULL for a kind the table does not know. */
const struct op_kind *jobs_kind_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(kinds); i++)
		if (!strcmp(kinds[i].name, name))
			return &kinds[i];
	return NULL;
}

/* The default deadline of kind in seconds (0: none). */
int64_t jobs_timeout_default(const char *kind)
{
	const struct op_kind *k = jobs_kind_find(kind);

	return k ? k->timeout_s : 0;
}

/* ---- pure rules (tests/unit/test_jobs.c) -------------------------------------------- */

/*
 * The final status a job ends with when status (final) is reported and cancel ("" or
 * NULL for none) was asked for: a failure caused by the cancel is "cancelled", or
 * "failed" with *error "timed out". Success stays success (the job finished before a
 * safe point came). *error may be replaced by a static string.
 */
const char *jobs_final_status(const char *cancel, const char *status, const char **error)
{
	if (cancel == NULL || cancel[0] == '\0' || strcmp(status, "failed") != 0)
		return status;
	if (!strcmp(cancel, "timed out")) {
		*error = "timed out";
		return "failed";
	}
	*error = NULL;
	return "cancelled";
}

/* What the cron does with a job at now: see the header for the rule. */
enum op_tick jobs_tick(int64_t now, int64_t deadline, const char *cancel)
{
	if (deadline <= 0 || now < deadline)
		return OP_WAIT;
	if (cancel == NULL || cancel[0] == '\0')
		return OP_TIME_OUT;
	return OP_GIVE_UP;
}

/*
 * Can a job of kind k in status (with cancel asked or NULL) be cancelled? Returns 0,
 * 1 when a cancel is on its way already (nothing more to do), or -1 with err (409 and
 * the reason).
 */
int jobs_cancel_check(const struct op_kind *k, const char *kind, const char *status,
		      const char *cancel, struct kerr *err)
{
	if (op_status_final(status))
		return err_input(err, 409, NULL, "the operation has %s already; nothing to cancel",
				 status);
	if (cancel && cancel[0])
		return 1;
	if (k == NULL)
		return err_input(err, 409, NULL, "a %s operation cannot be cancelled", kind);
	if (k->cancel == NULL)
		return err_input(err, 409, NULL, "a %s operation %s", kind, k->no_cancel);
	return 0;
}

/* ---- the engine ------------------------------------------------------------------------ */

/* Record the cancel (why: "cancelled" or "timed out") on a live job, durable. */
static int cancel_record(const char *id, const char *why, int64_t now, struct kerr *err)
{
	bool own = sqlite3_get_autocommit(ctl.db);
	sqlite3_stmt *st;
	int rc, changed;

	if (own && db_begin(ctl.db) < 0)
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	st = db_prepare(ctl.db,
			"UPDATE operations SET cancel = ?, step = CASE WHEN step = "
			"'agent-done' THEN step ELSE 'cancelling' END, phase = "
			"'cancelling', updated_at = ?, deadline = ? WHERE id = ? AND cancel "
			"IS NULL AND status IN ('pending', 'running')");
	sqlite3_bind_text(st, 1, why, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_int64(st, 3, now + CANCEL_GRACE_MS);
	sqlite3_bind_text(st, 4, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	changed = sqlite3_changes(ctl.db);
	if (rc != SQLITE_DONE || changed != 1) {
		if (rc != SQLITE_DONE)
			err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
		else
			err_input(err, 409, NULL, "the operation ended meanwhile");
		if (own)
			db_rollback(ctl.db);
		return -1;
	}
	if (own && db_commit(ctl.db, err) < 0)
		return -1;
	return 0;
}

/*
 * Cancel operation id (an operator asked): recorded durably, then the host is told.
 * Returns 0 with *out the operation as it now stands (new reference), or -1 with err
 * (404 no such operation, 409 with the reason it cannot be cancelled).
 */
int jobs_cancel(const char *id, struct json_object **out, struct kerr *err)
{
	struct json_object *op = op_get(id);
	const char *kind;
	const struct op_kind *k;
	int ret;

	*out = NULL;
	if (op == NULL)
		return err_input(err, 404, NULL, "no operation %s", id);
	kind = json_get_str(op, "kind", "");
	k = jobs_kind_find(kind);
	ret = jobs_cancel_check(k, kind, json_get_str(op, "status", ""),
				json_get_str(op, "cancel", NULL), err);
	if (ret == 0 && kind_refuses(kind, op, err))
		ret = -1;
	if (ret == 0) {
		ret = cancel_record(id, "cancelled", now_ms(), err);
		if (ret == 0) {
			/* kind points into op: said before op is read again. */
			log_info("operation %s: cancel asked (%s)", id, kind);
			json_object_put(op);
			op = op_get(id);
			op_event_emit(id);
			k->cancel(job_host(op), op, "cancelled");
		}
	}
	if (ret < 0) {
		json_object_put(op);
		return -1;
	}
	json_object_put(op);
	*out = op_get(id);
	return 0;
}

/* A job past its deadline: tell its host to give up, or end it here. */
static void job_expired(struct json_object *op, enum op_tick tick, int64_t now)
{
	const char *id = json_get_str(op, "id", "");
	const struct op_kind *k = jobs_kind_find(json_get_str(op, "kind", ""));
	struct host *h = job_host(op);
	struct kerr err;

	if (tick == OP_GIVE_UP) {
		log_warnx("operation %s: its host did not finish the %s in time; ended here", id,
			  json_get_str(op, "cancel", "cancel"));
		finish_here(op, "the host did not confirm the clean-up in time");
		return;
	}
	if (cancel_record(id, "timed out", now, &err) < 0) {
		log_warnx("operation %s: cannot time out: %s", id, err.msg);
		return;
	}
	log_warnx("operation %s: timed out", id);
	json_object_object_add(op, "cancel", json_object_new_string("timed out"));
	if (k && k->cancel) {
		k->cancel(h, op, "timed out");
		return;
	}
	/* No undo for this kind: it fails now, and its host abandons what is left. */
	if (h && !agentlink_cmd_unqueue(h, id))
		cancel_send(h, id, "timed out");
	finish_here(op, "the kind has no undo; the host abandons the rest");
}

/*
 * The cron's share (every second): jobs past their deadline time out, and cancelled
 * jobs whose host never confirmed end here (see the header). now is in ms.
 */
void jobs_cron(int64_t now)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id FROM operations WHERE status IN "
					      "('pending', 'running') AND deadline <= ?");
	struct json_object *due = json_object_new_array();

	sqlite3_bind_int64(st, 1, now);
	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(
			due, json_object_new_string((const char *)sqlite3_column_text(st, 0)));
	sqlite3_finalize(st);
	for (size_t i = 0; i < json_array_len(due); i++) {
		struct json_object *op =
			op_get(json_object_get_string(json_object_array_get_idx(due, i)));
		enum op_tick tick;

		if (op == NULL)
			continue;
		/* A forced delete's tombstone waits for its host as long as it takes. */
		tick = drift_tombstone_result(json_object_object_get(op, "result"))
			       ? OP_WAIT
			       : jobs_tick(now, json_get_int(op, "deadline", 0),
					   json_get_str(op, "cancel", NULL));
		if (tick != OP_WAIT)
			job_expired(op, tick, now);
		json_object_put(op);
	}
	json_object_put(due);
}

/*
 * A host reported a job's end (op-done): the kind's done slot takes it, or the
 * generic update. Returns what that returns.
 */
int jobs_done(struct host *h, const char *id, const char *status, struct json_object *result,
	      const char *error)
{
	struct json_object *op = op_get(id);
	const struct op_kind *k = op ? jobs_kind_find(json_get_str(op, "kind", "")) : NULL;
	bool ok = !strcmp(status, "succeeded");
	int ret;

	if (k && k->done)
		ret = k->done(h, op, status, result, error);
	else
		ret = op_update(id, status, ok ? 100 : -1, ok ? "done" : "failed",
				result ? json_object_get(result) : NULL, error);
	json_object_put(op);
	return ret;
}

/* The host refused a job's command outright: it fails like a failed result. */
int jobs_nack(const char *id, const char *why)
{
	return jobs_done(NULL, id, "failed", NULL, why);
}

/*
 * Start-up: every job that was pending or running when the controller stopped is
 * resumed (its command resent; agents run an operation id once) and, when it was
 * being cancelled, its cancel sent again after it; one that cannot be resumed fails
 * with the reason, or ends as its cancel says.
 */
void jobs_resume(void)
{
	sqlite3_stmt *st = db_prepare(
		ctl.db, "SELECT id FROM operations WHERE status IN ('pending', 'running')");
	struct json_object *live = json_object_new_array();

	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(
			live, json_object_new_string((const char *)sqlite3_column_text(st, 0)));
	sqlite3_finalize(st);
	for (size_t i = 0; i < json_array_len(live); i++) {
		const char *id = json_object_get_string(json_object_array_get_idx(live, i));
		struct json_object *op = op_get(id);
		const struct op_kind *k;
		const char *hname, *cancel;
		struct host *h;
		int sent = -1;

		if (op == NULL)
			continue;
		k = jobs_kind_find(json_get_str(op, "kind", ""));
		hname = json_get_str(op, "host", NULL);
		cancel = json_get_str(op, "cancel", NULL);
		h = hname ? host_find(hname) : NULL;
		/* A tombstone's delete waits for its host to come back (drift.c). */
		if (h && h->state != HOST_ONLINE &&
		    drift_tombstone_result(json_object_object_get(op, "result"))) {
			json_object_put(op);
			continue;
		}
		if (h && cancel) {
			/* The host had the command (or never will): only the cancel goes
			 * again; its ack says whether the job is there to cancel. */
			log_info("operation %s: cancel sent again after restart (%s on %s)", id,
				 json_get_str(op, "kind", ""), h->name);
			cancel_send(h, id, cancel);
			json_object_put(op);
			continue;
		}
		/* A job with no host is the controller's own (resume gets h NULL). */
		if ((h || hname == NULL) && k && k->resume)
			sent = k->resume(h, id, op);
		if (sent == 0) {
			log_info("operation %s: resumed after restart (%s on %s)", id,
				 json_get_str(op, "kind", ""), h ? h->name : "the controller");
		} else if (cancel) {
			finish_here(op, "the controller restarted while cancelling it");
		} else {
			op_update(id, "failed", -1, "interrupted", NULL,
				  h || hname == NULL
					  ? "the controller restarted during this operation and "
					    "cannot resume it"
					  : "the controller restarted and the operation's host is "
					    "gone");
		}
		json_object_put(op);
	}
	json_object_put(live);
}
