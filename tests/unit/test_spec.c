/*
 * test_spec.c - the one SPEC validator both daemons run (common/spec.c): its limits
 * are the shared ones (SPEC_DISKS_MAX for the controller and the agent alike).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "spec.h"

static struct json_object *vm_spec(int ndisks)
{
	struct json_object *spec = json_tokener_parse(
		"{\"name\":\"v1\",\"type\":\"vm\",\"vcpus\":2,\"memory\":{\"mb\":256},"
		"\"accel\":\"tcg\",\"nics\":null}");
	struct json_object *disks = json_object_new_array();

	for (int i = 0; i < ndisks; i++) {
		char text[256];

		snprintf(text, sizeof(text),
			 "{\"name\":\"d%d\",\"bus\":\"virtio\",\"pool\":\"local\","
			 "\"path\":\"v1/d%d.qcow2\",\"size_mb\":64}",
			 i, i);
		json_object_array_add(disks, json_tokener_parse(text));
	}
	json_object_object_add(spec, "disks", disks);
	return spec;
}

static void test_vm_disks_limit(void **state)
{
	struct json_object *spec = vm_spec(SPEC_DISKS_MAX);
	struct kerr err = {0};

	(void)state;
	assert_int_equal(spec_check(spec, &err), 0);
	json_object_put(spec);
	spec = vm_spec(SPEC_DISKS_MAX + 1);
	assert_int_equal(spec_check(spec, &err), -1);
	assert_int_equal(err.status, 400);
	assert_non_null(strstr(err.msg, "more than 8 disks"));
	assert_int_equal(strncmp(err.msg, "instance: ", 10), 0);
	json_object_put(spec);
}

static void test_vm_bad_fields(void **state)
{
	struct json_object *spec = vm_spec(1);
	struct kerr err = {0};

	(void)state;
	/* A path that climbs out of its pool. */
	json_object_object_add(json_object_array_get_idx(json_object_object_get(spec, "disks"), 0),
			       "path", json_object_new_string("../etc/passwd"));
	assert_int_equal(spec_check(spec, &err), -1);
	json_object_put(spec);
	spec = vm_spec(1);
	json_object_object_add(spec, "accel", json_object_new_string("xen"));
	assert_int_equal(spec_check(spec, &err), -1);
	assert_string_equal(err.field, "accel");
	json_object_put(spec);
	spec = vm_spec(1);
	json_object_object_add(spec, "unknown", json_object_new_int(1));
	assert_int_equal(spec_check(spec, &err), -1);
	json_object_put(spec);
}

static void test_container(void **state)
{
	struct json_object *spec = json_tokener_parse(
		"{\"name\":\"c1\",\"type\":\"container\",\"image\":{\"manifest\":"
		"\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"},"
		"\"command\":[\"sh\",\"-c\",\"true\"],\"restart\":\"no\",\"stop_timeout_s\":10}");
	struct kerr err = {0};

	(void)state;
	assert_int_equal(spec_check(spec, &err), 0);
	json_object_object_add(spec, "restart", json_object_new_string("sometimes"));
	assert_int_equal(spec_check(spec, &err), -1);
	assert_string_equal(err.field, "restart");
	json_object_put(spec);
}

static void test_helpers(void **state)
{
	struct kerr err = {0};
	struct json_object *spec = vm_spec(0), *norm;

	(void)state;
	assert_int_equal(spec_path_check("a/b.qcow2", "path", &err), 0);
	assert_int_equal(spec_path_check("/abs", "path", &err), -1);
	assert_int_equal(spec_path_check("a/-x", "path", &err), -1);
	assert_int_equal(spec_path_check("a//b", "path", &err), -1);
	assert_true(spec_digest_valid(
		"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
	assert_false(spec_digest_valid("sha256:0123"));
	/* Null members are dropped, as if absent. */
	norm = spec_normalise(spec);
	assert_false(json_object_object_get_ex(norm, "nics", NULL));
	json_object_put(norm);
	json_object_put(spec);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vm_disks_limit),
		cmocka_unit_test(test_vm_bad_fields),
		cmocka_unit_test(test_container),
		cmocka_unit_test(test_helpers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
