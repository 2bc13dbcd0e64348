/*
 * test_verbs.c - the verb table both daemons read (common/verbs.c): its rows agree
 * with each other, and the checks made from it answer as documented.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "verbs.h"

/* Every row is filled in and named once; names find their verb. */
static void test_table_consistent(void **state)
{
	(void)state;
	for (int v = 0; v < VERBS; v++) {
		const struct verb_def *d = verb_get(v);

		assert_non_null(d->name);
		assert_non_null(d->args);
		assert_int_equal(verb_find(d->name), v);
		/* A type without the verb has no timeout for it, and a stop grace is set
		 * for each type that stops. */
		for (int t = 0; t < INST_TYPES; t++) {
			if (d->types & TYPE_BIT(t))
				assert_true(d->timeout_s[t] > 0);
			if (d->flags & VF_STOP_GRACE && d->types & TYPE_BIT(t))
				assert_true(d->timeout_s[t] <= STOP_GRACE_MAX_S);
		}
		/* A verb preempts only verbs of a type it shares. */
		for (int b = 0; b < VERBS; b++)
			if (verb_preempts(v, b))
				assert_true(d->types & verb_get(b)->types);
		/* An idempotent verb (the agent starts it before its op id is on disk)
		 * may start again from the state it leaves, as a resend does once it
		 * ran, and nothing cuts it short to run between it and a late resend. */
		if (d->flags & VF_IDEMPOTENT) {
			bool leaves_allowed = d->agent_from == 0;

			assert_non_null(d->desired);
			for (int s = 0; s < INST_STATES; s++)
				if (!strcmp(inst_state_name(s), d->desired) &&
				    (d->agent_from & STATE_BIT(s)))
					leaves_allowed = true;
			assert_true(leaves_allowed);
			for (int b = 0; b < VERBS; b++)
				assert_false(verb_preempts(b, v));
		}
		/* The REST actions are the ones with a from list and a type. */
		if (d->flags & VF_ACTION) {
			assert_non_null(d->from);
			assert_true(d->types != 0);
		}
	}
	assert_int_equal(verb_find("no-such-verb"), -1);
	/* Backup and restore are VMs' only; both types migrate (a container cold);
	 * migrate-in makes the instance from the whole SPEC. */
	assert_int_equal(verb_get(VERB_MIGRATE_OUT)->types, TYPES_ALL);
	assert_int_equal(verb_get(VERB_RESTORE)->types, TYPE_BIT(INST_VM));
	assert_true(verb_get(VERB_BACKUP)->flags & VF_CANCELLABLE);
	assert_true(verb_get(VERB_MIGRATE_IN)->flags & VF_FULL_SPEC);
	assert_false(verb_get(VERB_MIGRATE_IN)->flags & VF_NEEDS_INSTANCE);
	/* Only resume runs before its op id is durable; verbs whose second run does
	 * harm wait for it. */
	for (int v = 0; v < VERBS; v++)
		assert_int_equal(!!(verb_get(v)->flags & VF_IDEMPOTENT), v == VERB_RESUME);
}

/* The stop grace has one home: 10 s for a container, 60 s for a VM. */
static void test_stop_defaults(void **state)
{
	(void)state;
	assert_int_equal(verb_timeout_default(VERB_STOP, INST_CONTAINER), 10);
	assert_int_equal(verb_timeout_default(VERB_STOP, INST_VM), 60);
	assert_int_equal(verb_timeout_default(VERB_RESTART, INST_CONTAINER), 10);
}

/* Preemption is data: force-stop cuts a stop or a restart short, nothing else. */
static void test_preempts(void **state)
{
	(void)state;
	assert_true(verb_preempts(VERB_FORCE_STOP, VERB_STOP));
	assert_true(verb_preempts(VERB_FORCE_STOP, VERB_RESTART));
	assert_false(verb_preempts(VERB_FORCE_STOP, VERB_CREATE));
	assert_false(verb_preempts(VERB_STOP, VERB_FORCE_STOP));
	assert_false(verb_preempts(VERB_START, VERB_STOP));
}

static void test_type_check(void **state)
{
	struct kerr err;

	(void)state;
	assert_int_equal(verb_type_check(VERB_STOP, INST_CONTAINER, &err), 0);
	assert_int_equal(verb_type_check(VERB_REBOOT, INST_VM, &err), 0);
	memset(&err, 0, sizeof(err));
	assert_int_equal(verb_type_check(VERB_REBOOT, INST_CONTAINER, &err), -1);
	assert_int_equal(err.status, 422);
	assert_string_equal(err.msg, "reboot is not supported for containers");
	assert_int_equal(verb_type_check(VERB_COMMIT, INST_VM, &err), -1);
	assert_string_equal(err.msg, "commit is not supported for VMs");
	assert_int_equal(verb_type_check(VERB_MIGRATE_IN, INST_VM, &err), 0);
	assert_int_equal(verb_type_check(VERB_MIGRATE_IN, INST_CONTAINER, &err), 0);
	/* A container is backed up; restored only as a new one (a create). */
	assert_int_equal(verb_type_check(VERB_BACKUP, INST_CONTAINER, &err), 0);
	assert_int_equal(verb_type_check(VERB_RESTORE, INST_CONTAINER, &err), -1);
	assert_int_equal(err.status, 422);
	assert_string_equal(err.msg, "restore is not supported for containers");
}

/* The controller's from-states (its own names) and the agent's (the enum). */
static void test_states(void **state)
{
	struct kerr err;

	(void)state;
	assert_true(verb_state_allowed(VERB_START, "stopped"));
	assert_true(verb_state_allowed(VERB_START, "crashed"));
	assert_false(verb_state_allowed(VERB_START, "running"));
	assert_true(verb_state_allowed(VERB_DELETE, "missing"));
	assert_false(verb_state_allowed(VERB_DELETE, "running"));
	assert_true(verb_state_allowed(VERB_CREATE, "anything")); /* no from list */

	assert_int_equal(verb_agent_state_check(VERB_PAUSE, INST_RUNNING, "a", &err), 0);
	assert_int_equal(verb_agent_state_check(VERB_PAUSE, INST_PAUSED, "a", &err), 0);
	memset(&err, 0, sizeof(err));
	assert_int_equal(verb_agent_state_check(VERB_PAUSE, INST_STOPPED, "web1", &err), -1);
	assert_int_equal(err.status, 409);
	assert_string_equal(err.msg, "instance web1 is stopped; pause needs it running or paused");
	/* No agent from list: any state; the driver decides. */
	assert_int_equal(verb_agent_state_check(VERB_START, INST_RUNNING, "a", &err), 0);
}

static void test_names(void **state)
{
	(void)state;
	assert_int_equal(inst_type_parse("container"), INST_CONTAINER);
	assert_int_equal(inst_type_parse("vm"), INST_VM);
	assert_int_equal(inst_type_parse(NULL), INST_VM);
	assert_string_equal(inst_type_name(INST_CONTAINER), "container");
	for (int s = 0; s < INST_STATES; s++)
		assert_non_null(inst_state_name(s));
	assert_string_equal(inst_state_name(INST_CRASHED), "crashed");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table_consistent), cmocka_unit_test(test_stop_defaults),
		cmocka_unit_test(test_preempts),	 cmocka_unit_test(test_type_check),
		cmocka_unit_test(test_states),		 cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
