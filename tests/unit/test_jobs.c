/*
 * test_jobs.c - the operation job engine (controllerd/jobs.c): its rules (final
 * status of a cancelled job, what the cron does past a deadline, which jobs can be
 * cancelled) and the engine over a real store without hosts: cancel, deadline, and
 * resume after a restart.
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

/* main.c owns the controller's state; the tests set the store only. */
struct controller ctl;

static char dir[64];

static int setup(void **state)
{
	char path[96];
	struct kerr err = {0};

	(void)state;
	/* As main.c wires them: the store takes the engine's rules by hook. */
	ops_rules_set(jobs_timeout_default, jobs_final_status);
	snprintf(dir, sizeof(dir), "/tmp/kumo-unit-jobs.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/kumo.db", dir);
	if (db_open(&ctl.db, path, &err) < 0 || db_migrate(ctl.db, DB_SCHEMA_VERSION, &err) < 0) {
		print_error("db: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	db_close(ctl.db);
	ctl.db = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- rules ---------------------------------------------------------------------------- */

static void test_final_status(void **state)
{
	const char *error = "the agent's words";

	(void)state;
	/* No cancel: as reported. */
	assert_string_equal(jobs_final_status(NULL, "failed", &error), "failed");
	assert_string_equal(error, "the agent's words");
	assert_string_equal(jobs_final_status("", "succeeded", &error), "succeeded");
	/* An operator's cancel: a failure is the cancel, with no error. */
	assert_string_equal(jobs_final_status("cancelled", "failed", &error), "cancelled");
	assert_null(error);
	/* A deadline: failed, "timed out". */
	error = "QEMU said no";
	assert_string_equal(jobs_final_status("timed out", "failed", &error), "failed");
	assert_string_equal(error, "timed out");
	/* Finished before a safe point: success stays. */
	error = NULL;
	assert_string_equal(jobs_final_status("cancelled", "succeeded", &error), "succeeded");
}

static void test_tick(void **state)
{
	(void)state;
	assert_int_equal(jobs_tick(1000, 0, NULL), OP_WAIT);	    /* no deadline */
	assert_int_equal(jobs_tick(1000, 2000, NULL), OP_WAIT);	    /* not yet */
	assert_int_equal(jobs_tick(2000, 2000, NULL), OP_TIME_OUT); /* at it */
	assert_int_equal(jobs_tick(3000, 2000, ""), OP_TIME_OUT);
	/* Cancelling already and past the grace: the host never answered. */
	assert_int_equal(jobs_tick(3000, 2000, "cancelled"), OP_GIVE_UP);
	assert_int_equal(jobs_tick(3000, 2000, "timed out"), OP_GIVE_UP);
	assert_int_equal(jobs_tick(1000, 2000, "timed out"), OP_WAIT);
}

static void test_cancel_check(void **state)
{
	struct kerr err = {0};

	(void)state;
	assert_int_equal(jobs_cancel_check(jobs_kind_find("instance-create"), "instance-create",
					   "running", NULL, &err),
			 0);
	assert_int_equal(jobs_cancel_check(jobs_kind_find("instance-create"), "instance-create",
					   "pending", NULL, &err),
			 0);
	/* A cancel on its way already: nothing more, no error. */
	assert_int_equal(jobs_cancel_check(jobs_kind_find("instance-create"), "instance-create",
					   "running", "cancelled", &err),
			 1);
	/* Finished: 409 saying how. */
	assert_true(jobs_cancel_check(jobs_kind_find("instance-create"), "instance-create",
				      "succeeded", NULL, &err) < 0);
	assert_int_equal(err.status, 409);
	assert_non_null(strstr(err.msg, "succeeded already"));
	/* A kind without an undo: 409 with its reason. */
	assert_true(jobs_cancel_check(jobs_kind_find("instance-delete"), "instance-delete",
				      "running", NULL, &err) < 0);
	assert_int_equal(err.status, 409);
	assert_non_null(strstr(err.msg, "cannot be undone"));
	/* A kind the table does not know: no cancel either. */
	assert_null(jobs_kind_find("instance-"));
	assert_true(jobs_cancel_check(NULL, "mystery", "running", NULL, &err) < 0);
	assert_int_equal(err.status, 409);
}

static void test_kind_table(void **state)
{
	static const char *const kinds[] = {
		"probe",	   "instance-create", "instance-start",	  "instance-stop",
		"instance-delete", "image-import",    "unmanaged-destroy"};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(kinds); i++) {
		const struct op_kind *k = jobs_kind_find(kinds[i]);

		assert_non_null(k);
		/* Every kind that cannot be cancelled says why. */
		assert_true(k->cancel != NULL || (k->no_cancel && k->no_cancel[0]));
	}
	assert_int_equal(jobs_timeout_default("instance-create"), 900);
	assert_int_equal(jobs_timeout_default("no-such-kind"), 0);
}

/* ---- the engine over the store, no hosts ------------------------------------------------ */

static char *op_new(const char *kind, int64_t timeout_s)
{
	struct kerr err = {0};
	struct json_object *op =
		op_create_timeout(kind, "hosts/nowhere", NULL, NULL, timeout_s, &err);
	char *id;

	assert_non_null(op);
	id = xstrdup(json_get_str(op, "id", ""));
	json_object_put(op);
	return id;
}

static const char *field(const char *id, const char *key, char *buf, size_t len)
{
	struct json_object *op = op_get(id);

	assert_non_null(op);
	snprintf(buf, len, "%s", json_get_str(op, key, "(null)"));
	json_object_put(op);
	return buf;
}

static void test_deadline_default_and_given(void **state)
{
	_cleanup_free_ char *a = op_new("instance-start", 0), *b = op_new("instance-start", 7);
	struct json_object *oa = op_get(a), *ob = op_get(b);
	int64_t now = now_ms();

	(void)state;
	assert_true(llabs(json_get_int(oa, "deadline", 0) - (now + 600 * 1000)) < 5000);
	assert_true(llabs(json_get_int(ob, "deadline", 0) - (now + 7 * 1000)) < 5000);
	json_object_put(oa);
	json_object_put(ob);
}

static void test_cancel_without_host(void **state)
{
	_cleanup_free_ char *id = op_new("instance-start", 0);
	struct json_object *out = NULL, *op;
	struct kerr err = {0};
	char buf[64];

	(void)state;
	/* Nothing was ever sent: the job ends at once, cancelled, nothing to undo. */
	assert_int_equal(jobs_cancel(id, &out, &err), 0);
	assert_non_null(out);
	json_object_put(out);
	op = op_get(id);
	assert_string_equal(json_get_str(op, "status", ""), "cancelled");
	assert_string_equal(json_get_str(op, "cancel", ""), "cancelled");
	assert_true(json_object_is_type(
		json_object_object_get(json_object_object_get(op, "result"), "undone"),
		json_type_array));
	assert_null(json_get_str(op, "error", NULL));
	json_object_put(op);
	/* Again: it has ended, 409. */
	assert_true(jobs_cancel(id, &out, &err) < 0);
	assert_int_equal(err.status, 409);
	assert_null(out);
	assert_string_equal(field(id, "status", buf, sizeof(buf)), "cancelled");
	/* No such operation: 404. */
	assert_true(jobs_cancel("op-nothing", &out, &err) < 0);
	assert_int_equal(err.status, 404);
}

static void test_cancel_refused_kind(void **state)
{
	_cleanup_free_ char *id = op_new("instance-delete", 0);
	struct json_object *out = NULL;
	struct kerr err = {0};
	char buf[64];

	(void)state;
	assert_true(jobs_cancel(id, &out, &err) < 0);
	assert_int_equal(err.status, 409);
	assert_string_equal(field(id, "status", buf, sizeof(buf)), "pending");
	assert_string_equal(field(id, "cancel", buf, sizeof(buf)), "(null)");
}

static void test_deadline_times_out(void **state)
{
	_cleanup_free_ char *undo = op_new("instance-start", 1), *plain = op_new("probe", 1),
			    *later = op_new("probe", 3600);
	char buf[64];

	(void)state;
	jobs_cron(now_ms() + 2000);
	/* With an undo and no host to ask: ended here, failed as timed out. */
	assert_string_equal(field(undo, "status", buf, sizeof(buf)), "failed");
	assert_string_equal(field(undo, "error", buf, sizeof(buf)), "timed out");
	/* Without an undo: failed as timed out at once. */
	assert_string_equal(field(plain, "status", buf, sizeof(buf)), "failed");
	assert_string_equal(field(plain, "error", buf, sizeof(buf)), "timed out");
	assert_string_equal(field(plain, "cancel", buf, sizeof(buf)), "timed out");
	/* Not due: untouched. */
	assert_string_equal(field(later, "status", buf, sizeof(buf)), "pending");
}

static void test_resume_keeps_cancel(void **state)
{
	_cleanup_free_ char *cancelled = op_new("instance-start", 0),
			    *plain = op_new("instance-start", 0);
	_cleanup_free_ char *sql = xasprintf("UPDATE operations SET cancel = 'cancelled', step = "
					     "'cancelling' WHERE id = '%s'",
					     cancelled);
	struct kerr err = {0};
	char buf[128];

	(void)state;
	/* As a controller killed right after the cancel left it: then a restart. */
	assert_int_equal(db_exec(ctl.db, sql, &err), 0);
	jobs_resume();
	assert_string_equal(field(cancelled, "status", buf, sizeof(buf)), "cancelled");
	assert_string_equal(field(plain, "status", buf, sizeof(buf)), "failed");
	assert_non_null(strstr(field(plain, "error", buf, sizeof(buf)), "restarted"));
}

/*
 * Progress on the way does not switch group commit off: op_update() once restored
 * synchronous=FULL after every progress update, so each later commit waited for an
 * fsync of its own on the loop (creates through REST fell to tens a second).
 */
static void test_progress_keeps_group_commit(void **state)
{
	_cleanup_free_ char *id = op_new("instance-start", 0);
	_cleanup_free_ char *path = xasprintf("%s/kumo.db", dir);
	uv_loop_t loop;
	struct kerr err = {0};
	char buf[64];

	(void)state;
	/* Without group commit: FULL before and after a progress update. */
	assert_int_equal(db_count(ctl.db, "PRAGMA synchronous"), 2);
	assert_int_equal(op_update(id, "running", 10, "copy", NULL, NULL), 0);
	assert_int_equal(db_count(ctl.db, "PRAGMA synchronous"), 2);
	/* With it: NORMAL stays, through progress and the final status. */
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(db_group_commit_start(ctl.db, path, &loop, &err), 0);
	assert_int_equal(op_update(id, NULL, 50, "copy", NULL, NULL), 0);
	assert_int_equal(db_count(ctl.db, "PRAGMA synchronous"), 1);
	assert_int_equal(op_update(id, "succeeded", 100, NULL, NULL, NULL), 0);
	assert_int_equal(db_count(ctl.db, "PRAGMA synchronous"), 1);
	assert_string_equal(field(id, "status", buf, sizeof(buf)), "succeeded");
	db_group_commit_stop();
	db_group_commit_free();
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_final_status),
		cmocka_unit_test(test_tick),
		cmocka_unit_test(test_cancel_check),
		cmocka_unit_test(test_kind_table),
		cmocka_unit_test_setup_teardown(test_deadline_default_and_given, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_without_host, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_refused_kind, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deadline_times_out, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resume_keeps_cancel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_progress_keeps_group_commit, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
