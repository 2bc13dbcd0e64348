/*
 * test_dispatch.c - the agent's checks between an instance command and its driver
 * (agentd/dispatch.c): a verb the driver lacks is 422, a state the verb cannot start
 * from is 409, a busy instance is 409 unless the verb table lets the verb preempt.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agentd.h"

static void step(struct inst_op *op)
{
	(void)op;
}

/* A type that has start and stop only: what a new driver looks like half written. */
static const struct driver partial_vm = {
	.type = INST_VM,
	.verbs = {[VERB_START] = step, [VERB_STOP] = step},
};

static const struct driver partial_ctr = {
	.type = INST_CONTAINER,
	.verbs = {[VERB_START] = step, [VERB_PAUSE] = step, [VERB_REBOOT] = step},
};

static void test_unsupported_verb(void **state)
{
	struct kerr err = {0};

	(void)state;
	assert_int_equal(dispatch_verb_supported(&partial_vm, VERB_START, &err), 0);
	/* The type has the verb, the driver leaves its slot empty. */
	assert_int_equal(dispatch_verb_supported(&partial_vm, VERB_PAUSE, &err), -1);
	assert_int_equal(err.status, 422);
	assert_string_equal(err.msg, "pause is not supported for VMs");
	/* A slot filled for a verb the type does not have still counts as unsupported. */
	assert_int_equal(dispatch_verb_supported(&partial_ctr, VERB_REBOOT, &err), -1);
	assert_int_equal(err.status, 422);
	assert_string_equal(err.msg, "reboot is not supported for containers");
	/* A stage-2 verb the type has, in a driver that leaves its slot empty. */
	assert_int_equal(dispatch_verb_supported(&partial_vm, VERB_MIGRATE_OUT, &err), -1);
	assert_int_equal(err.status, 422);
	assert_int_equal(dispatch_verb_supported(&partial_vm, -1, &err), -1);
	assert_int_equal(err.status, 400);
}

static const struct json_field own_args[] = {
	{"uri", JK_STRING, true, NULL},
	{NULL, 0, false, NULL},
};

static const struct driver args_vm = {
	.type = INST_VM,
	.verbs = {[VERB_MIGRATE_OUT] = step},
	.args = {[VERB_MIGRATE_OUT] = own_args},
};

/* A driver's own args schema (stage 2's migrate.c, backup.c) replaces the table's. */
static void test_args(void **state)
{
	(void)state;
	assert_ptr_equal(dispatch_verb_args(&args_vm, VERB_MIGRATE_OUT), own_args);
	assert_ptr_equal(dispatch_verb_args(&args_vm, VERB_STOP), verb_get(VERB_STOP)->args);
}

static void test_state(void **state)
{
	struct kerr err = {0};

	(void)state;
	assert_int_equal(dispatch_state_check(VERB_PAUSE, true, INST_RUNNING, "c1", &err), 0);
	assert_int_equal(dispatch_state_check(VERB_PAUSE, true, INST_STOPPED, "c1", &err), -1);
	assert_int_equal(err.status, 409);
	assert_int_equal(dispatch_state_check(VERB_RESUME, true, INST_CRASHED, "c1", &err), -1);
	assert_int_equal(err.status, 409);
	/* Stop of a stopped instance is success (the driver says so), not a refusal. */
	assert_int_equal(dispatch_state_check(VERB_STOP, true, INST_STOPPED, "c1", &err), 0);
	/* Not here: create and delete go on, the rest are 404. */
	assert_int_equal(dispatch_state_check(VERB_CREATE, false, INST_STOPPED, "c1", &err), 0);
	assert_int_equal(dispatch_state_check(VERB_DELETE, false, INST_STOPPED, "c1", &err), 0);
	assert_int_equal(dispatch_state_check(VERB_START, false, INST_STOPPED, "c1", &err), -1);
	assert_int_equal(err.status, 404);
	assert_string_equal(err.msg, "there is no instance c1 on this host");
}

static void test_busy(void **state)
{
	struct kerr err = {0};

	(void)state;
	assert_int_equal(dispatch_busy_check(VERB_FORCE_STOP, VERB_STOP, "op1", "v", &err), 0);
	assert_int_equal(dispatch_busy_check(VERB_FORCE_STOP, VERB_RESTART, "op1", "v", &err), 0);
	assert_int_equal(dispatch_busy_check(VERB_START, VERB_STOP, "op1", "v", &err), -1);
	assert_int_equal(err.status, 409);
	assert_string_equal(err.msg,
			    "instance v is busy with stop (op op1); try again when it is done");
	assert_int_equal(dispatch_busy_check(VERB_FORCE_STOP, VERB_CREATE, "op2", "v", &err), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unsupported_verb),
		cmocka_unit_test(test_state),
		cmocka_unit_test(test_args),
		cmocka_unit_test(test_busy),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
