/*
 * test_migrate_ladder.c - the escalation ladder of a live migration's source
 * (agentd/migrate_ladder.c): TCG goes to post-copy at once where allowed; KVM stays in
 * pre-copy while it converges, notes QEMU's auto-converge, and switches to post-copy
 * after MIGRATE_LADDER_K iterations that did not converge (or after the first pass
 * when asked "always"), never where post-copy is not allowed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "migrate.h"

#define MIB (1024 * 1024)

/* A poll at iteration it with remaining bytes, the guest dirtying dirty_mbps of a
 * copy running at 800 Mbit/s, QEMU throttling by throttle percent. */
static enum ladder_move poll(struct ladder *l, int64_t it, int64_t remaining, double dirty_mbps,
			     int throttle)
{
	struct ladder_stats s = {
		.iterations = it,
		.remaining = remaining,
		.dirty_pps = (int64_t)(dirty_mbps * 1e6 / 8 / 4096),
		.page_size = 4096,
		.mbps = 800,
		.throttle_pct = throttle,
	};

	return migrate_ladder_next(l, &s);
}

static const char *steps(const struct ladder *l)
{
	static char out[128];
	struct json_object *a = migrate_ladder_steps(l);

	snprintf(out, sizeof(out), "%s", json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN));
	json_object_put(a);
	return out;
}

static void test_tcg_postcopy_at_once(void **state)
{
	struct ladder l = {.kvm = false, .postcopy_allowed = true};

	(void)state;
	assert_int_equal(poll(&l, 0, 0, 0, 0), LADDER_POSTCOPY);
	/* Once only. */
	assert_int_equal(poll(&l, 1, 100 * MIB, 0, 0), LADDER_STAY);
	assert_string_equal(steps(&l), "[\"postcopy\"]");
}

static void test_tcg_without_grant_never(void **state)
{
	struct ladder l = {.kvm = false, .postcopy_allowed = false};

	(void)state;
	for (int it = 0; it < 20; it++)
		assert_int_equal(poll(&l, it, 100 * MIB, 2000, 0), LADDER_STAY);
}

static void test_kvm_converging_stays(void **state)
{
	struct ladder l = {.kvm = true, .postcopy_allowed = true};
	int64_t remaining = 200 * MIB;

	(void)state;
	for (int it = 1; it < 20; it++, remaining /= 2)
		assert_int_equal(poll(&l, it, remaining, 100, 0), LADDER_STAY);
	assert_string_equal(steps(&l), "[\"precopy\"]");
}

static void test_kvm_ladder_to_postcopy(void **state)
{
	struct ladder l = {.kvm = true, .postcopy_allowed = true};
	int it = 1;

	(void)state;
	assert_int_equal(poll(&l, it++, 200 * MIB, 2000, 0), LADDER_STAY);
	/* The guest dirties faster than the copy: K iterations, QEMU throttling by then. */
	for (int k = 1; k < MIGRATE_LADDER_K; k++)
		assert_int_equal(poll(&l, it++, 150 * MIB, 2000, k > 1 ? 20 : 0), LADDER_STAY);
	/* Polls within one iteration count once. */
	assert_int_equal(poll(&l, it - 1, 150 * MIB, 2000, 30), LADDER_STAY);
	assert_int_equal(poll(&l, it++, 150 * MIB, 2000, 30), LADDER_POSTCOPY);
	assert_true(l.postcopy_started);
	assert_string_equal(steps(&l), "[\"precopy\",\"auto-converge\",\"postcopy\"]");
}

static void test_kvm_stall_resets_when_converging(void **state)
{
	struct ladder l = {.kvm = true, .postcopy_allowed = true};
	int it = 1;

	(void)state;
	poll(&l, it++, 200 * MIB, 2000, 0);
	for (int k = 1; k < MIGRATE_LADDER_K; k++)
		assert_int_equal(poll(&l, it++, 200 * MIB, 2000, 0), LADDER_STAY);
	/* One iteration that shrank what remains, slower dirtying: the count starts again. */
	assert_int_equal(poll(&l, it++, 50 * MIB, 100, 0), LADDER_STAY);
	assert_int_equal(l.stalled, 0);
	assert_int_equal(poll(&l, it++, 60 * MIB, 2000, 0), LADDER_STAY);
}

static void test_kvm_without_grant_only_auto_converge(void **state)
{
	struct ladder l = {.kvm = true, .postcopy_allowed = false};

	(void)state;
	for (int it = 1; it < 30; it++)
		assert_int_equal(poll(&l, it, 200 * MIB, 2000, it > 3 ? 40 : 0), LADDER_STAY);
	assert_string_equal(steps(&l), "[\"precopy\",\"auto-converge\"]");
}

static void test_kvm_always_after_first_pass(void **state)
{
	struct ladder l = {.kvm = true, .postcopy_allowed = true, .postcopy_always = true};

	(void)state;
	assert_int_equal(poll(&l, 0, 0, 0, 0), LADDER_STAY);
	assert_int_equal(poll(&l, 1, 200 * MIB, 10, 0), LADDER_STAY);
	assert_int_equal(poll(&l, 2, 10 * MIB, 10, 0), LADDER_POSTCOPY);
	assert_string_equal(steps(&l), "[\"precopy\",\"postcopy\"]");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tcg_postcopy_at_once),
		cmocka_unit_test(test_tcg_without_grant_never),
		cmocka_unit_test(test_kvm_converging_stays),
		cmocka_unit_test(test_kvm_ladder_to_postcopy),
		cmocka_unit_test(test_kvm_stall_resets_when_converging),
		cmocka_unit_test(test_kvm_without_grant_only_auto_converge),
		cmocka_unit_test(test_kvm_always_after_first_pass),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
