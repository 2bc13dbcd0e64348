/*
 * test_jobfile.c - the decision an agent makes at start-up from a job.json its dead
 * predecessor left (agentd/jobfile.c): a create with a cancel, or with a deadline that
 * passed meanwhile, is to be undone, whatever the instance's type; anything else is not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agentd.h"

#define NOW 1700000000000LL

static bool decide(const char *text, struct job_file *jf)
{
	return job_file_parse(text, strlen(text), NOW, jf);
}

static void test_cancelled_create(void **state)
{
	struct job_file jf;

	(void)state;
	assert_true(decide("{\"op\":\"op-1a2b\",\"verb\":\"create\",\"cancel\":\"cancelled\","
			   "\"deadline_ms\":0}",
			   &jf));
	assert_string_equal(jf.op, "op-1a2b");
	assert_string_equal(jf.cancel, "cancelled");
	assert_true(
		decide("{\"op\":\"op-1a2b\",\"verb\":\"create\",\"cancel\":\"timed out\"}", &jf));
	assert_string_equal(jf.cancel, "timed out");
}

static void test_deadline_passed_meanwhile(void **state)
{
	struct job_file jf;
	char text[200];

	(void)state;
	snprintf(text, sizeof(text),
		 "{\"op\":\"op-9\",\"verb\":\"create\",\"cancel\":\"\",\"deadline_ms\":%lld}",
		 NOW - 1);
	assert_true(decide(text, &jf));
	assert_string_equal(jf.cancel, "timed out");
	/* Still to come: the job was alive and well; nothing to undo. */
	snprintf(text, sizeof(text),
		 "{\"op\":\"op-9\",\"verb\":\"create\",\"cancel\":\"\",\"deadline_ms\":%lld}",
		 NOW + 60000);
	assert_false(decide(text, &jf));
	assert_string_equal(jf.cancel, "");
}

static void test_nothing_to_undo(void **state)
{
	struct job_file jf;

	(void)state;
	/* Another verb: the instance is adopted as it is. */
	assert_false(decide("{\"op\":\"op-1\",\"verb\":\"start\",\"cancel\":\"cancelled\"}", &jf));
	/* No cancel, or one the agent never writes. */
	assert_false(decide("{\"op\":\"op-1\",\"verb\":\"create\"}", &jf));
	assert_false(decide("{\"op\":\"op-1\",\"verb\":\"create\",\"cancel\":\"maybe\"}", &jf));
	assert_string_equal(jf.cancel, "");
	/* An op id that cannot be one: no op-done can be sent for it. */
	assert_false(decide("{\"op\":\"\",\"verb\":\"create\",\"cancel\":\"cancelled\"}", &jf));
	assert_false(
		decide("{\"op\":\"../x y\",\"verb\":\"create\",\"cancel\":\"cancelled\"}", &jf));
	/* A torn or foreign file. */
	assert_false(decide("{\"op\":\"op-1\",\"verb\":\"cre", &jf));
	assert_false(decide("[1,2]", &jf));
	assert_false(decide("", &jf));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cancelled_create),
		cmocka_unit_test(test_deadline_passed_meanwhile),
		cmocka_unit_test(test_nothing_to_undo),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
