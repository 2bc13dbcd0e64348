/*
 * test_lease.c - common/lease.c: the HA lease record the agents write and the
 * controller reads; a record that does not parse must never count as a renewal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "lease.h"

static void test_round_trip(void **state)
{
	struct lease_record in = {.generation = 7, .counter = 123456789012ULL, .fence_ms = 6000},
			    out;
	char buf[LEASE_RECORD_LEN];

	(void)state;
	strcpy(in.host, "h1");
	lease_record_format(&in, buf);
	assert_int_equal(lease_record_parse(buf, sizeof(buf), &out), 0);
	assert_string_equal(out.host, "h1");
	assert_true(out.generation == 7);
	assert_true(out.counter == 123456789012ULL);
	assert_int_equal(out.fence_ms, 6000);
	/* padded to the whole record: one sector, rewritten in place */
	assert_int_equal(buf[LEASE_RECORD_LEN - 1], ' ');
}

static void test_torn_or_foreign_rejected(void **state)
{
	struct lease_record in = {.generation = 1, .counter = 5, .fence_ms = 6000}, out;
	char buf[LEASE_RECORD_LEN];

	(void)state;
	strcpy(in.host, "h2");
	lease_record_format(&in, buf);
	/* a record cut before its newline (a torn write) is no record */
	assert_int_equal(lease_record_parse(buf, 20, &out), -1);
	assert_int_equal(lease_record_parse("", 0, &out), -1);
	const char *v2 = "kumo-lease 2 host=h2 generation=1 counter=5 fence_ms=6000\n";
	const char *no_fence = "kumo-lease 1 host=h2 generation=1 counter=5 fence_ms=0\n";

	assert_int_equal(lease_record_parse(v2, strlen(v2), &out), -1);
	/* a fence deadline of 0 would let the controller restart at once */
	assert_int_equal(lease_record_parse(no_fence, strlen(no_fence), &out), -1);
}

/* A host in maintenance writes one last record saying it released its lease on purpose. */
static void test_released(void **state)
{
	struct lease_record in = {.generation = 3, .counter = 9, .fence_ms = 6000}, out;
	char buf[LEASE_RECORD_LEN];
	const char *other = "kumo-lease 1 host=h2 generation=1 counter=5 fence_ms=6000 x=1\n";

	(void)state;
	strcpy(in.host, "h3");
	lease_record_format(&in, buf);
	assert_int_equal(lease_record_parse(buf, sizeof(buf), &out), 0);
	assert_false(out.released);
	in.released = true;
	lease_record_format(&in, buf);
	assert_int_equal(lease_record_parse(buf, sizeof(buf), &out), 0);
	assert_true(out.released);
	assert_true(out.counter == 9);
	/* nothing else may follow the deadline */
	assert_int_equal(lease_record_parse(other, strlen(other), &out), -1);
}

static void test_monotonic(void **state)
{
	int64_t a = lease_mono_ms(), b = lease_mono_ms();

	(void)state;
	assert_true(a > 0);
	assert_true(b >= a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_torn_or_foreign_rejected),
		cmocka_unit_test(test_released),
		cmocka_unit_test(test_monotonic),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
