/*
 * test_fleece.c - agentd/fleece.c: the QMP of a live full backup's image fleecing, as
 * QEMU 7.2's QAPI takes it (qapi/block-core.json, block-export.json): names QEMU
 * accepts (node names under 32 characters, fixed per disk so a leftover is found), the
 * overlay backed by the running disk's node, the point in time as one transaction of
 * the persistent bitmap and a sync=none blockdev-backup into the overlay, the unix
 * socket server, the read-only export, and the teardown in an order QEMU allows
 * (export, server, job, wait for the job, node).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "fleece.h"
#include "json.h"

/* args as compact JSON equals want, and args is freed. */
static void json_is(struct json_object *args, const char *want)
{
	assert_non_null(args);
	assert_string_equal(json_object_to_json_string_ext(args, JSON_C_TO_STRING_PLAIN), want);
	json_object_put(args);
}

static void test_names(void **state)
{
	struct fleece_names n;

	(void)state;
	fleece_names_make(0, &n);
	assert_string_equal(n.device, "d0");
	assert_string_equal(n.node, "kfl-d0");
	assert_string_equal(n.job, "kumo-fleece-d0");
	fleece_names_make(15, &n);
	assert_string_equal(n.device, "d15");
	assert_string_equal(n.node, "kfl-d15");
	/* QEMU's node names hold at most 31 characters. */
	fleece_names_make((size_t)-1, &n);
	assert_true(strlen(n.node) < 32);
}

static void test_setup_commands(void **state)
{
	struct fleece_names n;

	(void)state;
	fleece_names_make(1, &n);
	json_is(fleece_overlay_args(&n, "/s/tmp/b1/root.fleece.qcow2"),
		"{\"driver\":\"qcow2\",\"node-name\":\"kfl-d1\",\"file\":{\"driver\":\"file\","
		"\"filename\":\"\\/s\\/tmp\\/b1\\/root.fleece.qcow2\"},\"backing\":\"d1\"}");
	json_is(fleece_transaction_args(&n, "kumo-abc"),
		"{\"actions\":[{\"type\":\"block-dirty-bitmap-add\",\"data\":{\"node\":\"d1\","
		"\"name\":\"kumo-abc\",\"persistent\":true}},{\"type\":\"blockdev-backup\","
		"\"data\":{\"job-id\":\"kumo-fleece-d1\",\"device\":\"d1\",\"target\":\"kfl-d1\","
		"\"sync\":\"none\"}}]}");
	json_is(fleece_server_args("/s/tmp/b1/nbd.sock"),
		"{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"\\/s\\/tmp\\/b1\\/"
		"nbd.sock\"}}}");
	json_is(fleece_export_args(&n), "{\"type\":\"nbd\",\"id\":\"kfl-d1\",\"node-name\":"
					"\"kfl-d1\",\"name\":\"kfl-d1\",\"writable\":false}");
}

static void test_teardown(void **state)
{
	static const char *const want[][2] = {
		{"block-export-del", "{\"id\":\"kfl-d2\",\"mode\":\"hard\"}"},
		{"nbd-server-stop", "{}"},
		{"block-job-cancel", "{\"device\":\"kumo-fleece-d2\",\"force\":true}"},
		{"query-jobs", "{}"},
		{"blockdev-del", "{\"node-name\":\"kfl-d2\"}"},
	};
	struct fleece_names n;
	struct json_object *args, *jobs;
	const char *cmd = NULL;
	int step;

	(void)state;
	fleece_names_make(2, &n);
	for (step = 0; (args = fleece_teardown_step(&n, step, &cmd)) != NULL; step++) {
		assert_true(step < 5);
		assert_string_equal(cmd, want[step][0]);
		json_is(args, want[step][1]);
	}
	assert_int_equal(step, 5);
	assert_null(cmd);
	assert_string_equal(want[FLEECE_STEP_WAIT][0], "query-jobs");

	/* The wait goes on while query-jobs lists the job, whatever its state. */
	jobs = json_tokener_parse("[{\"id\":\"kumo-abc-d2\",\"status\":\"running\"},"
				  "{\"id\":\"kumo-fleece-d2\",\"status\":\"aborting\"}]");
	assert_true(fleece_job_listed(&n, jobs));
	assert_false(fleece_job_running(&n, jobs)); /* aborting: the view is not held */
	json_object_put(jobs);
	jobs = json_tokener_parse("[{\"id\":\"kumo-fleece-d2\",\"type\":\"backup\","
				  "\"status\":\"running\",\"current-progress\":0}]");
	assert_true(fleece_job_running(&n, jobs));
	json_object_put(jobs);
	jobs = json_tokener_parse("[]"); /* failed and dismissed itself */
	assert_false(fleece_job_running(&n, jobs));
	json_object_put(jobs);
	jobs = json_tokener_parse("[{\"id\":\"kumo-fleece-d20\",\"status\":\"running\"}]");
	assert_false(fleece_job_listed(&n, jobs));
	json_object_put(jobs);
	assert_false(fleece_job_listed(&n, NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_setup_commands),
		cmocka_unit_test(test_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
