/*
 * test_snaprevert.c - agentd/snaprevert.c: which dirty bitmaps are Kumo's (exactly
 * "kumo-" and a backup id as the controller makes them, never a look-alike of an
 * operator's), the bitmaps of the VM's disk nodes in QEMU 7.2's query-named-block-nodes
 * reply and in qemu-img info's, a reply of the wrong shape refused, the first bitmap
 * that is not Kumo's found (an unnamed one of a block job included), and the revert's
 * record written and read back, a broken one refused. The revert itself is checked
 * against QEMU by it_vm_snapshots.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "snaprevert.h"

#define ID "0123456789abcdef0123456789abcdef"

static struct json_object *parse(const char *text)
{
	struct json_object *o = json_tokener_parse(text);

	assert_non_null(o);
	return o;
}

static void test_is_kumo(void **state)
{
	(void)state;
	assert_true(snaprevert_bitmap_is_kumo("kumo-" ID));
	assert_false(snaprevert_bitmap_is_kumo("kumo-" ID "0"));	  /* longer */
	assert_false(snaprevert_bitmap_is_kumo("kumo-0123456789abcdef")); /* shorter */
	assert_false(snaprevert_bitmap_is_kumo("kumo-0123456789ABCDEF0123456789abcdef"));
	assert_false(snaprevert_bitmap_is_kumo("kumo-0123456789abcdef0123456789abcdeg"));
	assert_false(snaprevert_bitmap_is_kumo("kumo-mine"));
	assert_false(snaprevert_bitmap_is_kumo("Kumo-" ID));
	assert_false(snaprevert_bitmap_is_kumo("xkumo-" ID));
	assert_false(snaprevert_bitmap_is_kumo(""));
	assert_false(snaprevert_bitmap_is_kumo("kumo-"));
}

/* A bitmap's name comes from QEMU or a qcow2 file the guest's QEMU may have written: it
 * goes into an error message only when it cannot carry a line break or an escape. */
static void test_name_printable(void **state)
{
	(void)state;
	assert_true(snaprevert_name_printable("ops-watch"));
	assert_true(snaprevert_name_printable("backup.v2:daily_1"));
	assert_false(snaprevert_name_printable(""));
	assert_false(snaprevert_name_printable("evil\nFAIL: forged line"));
	assert_false(snaprevert_name_printable("\x1b[31mred"));
	assert_false(snaprevert_name_printable("with space"));
	assert_false(snaprevert_name_printable("caf\xc3\xa9"));
	assert_false(snaprevert_name_printable(
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")); /* 65 */
}

static void test_from_nodes(void **state)
{
	struct json_object *out = json_object_new_array();
	/* QEMU 7.2's reply: the disks' format nodes d0, d1, their file nodes, a fleecing
	 * leftover; bitmaps on d0 (Kumo's and an unnamed one) and on a node not a disk's. */
	struct json_object *nodes = parse(
		"[{\"node-name\":\"d0\",\"dirty-bitmaps\":[{\"name\":\"kumo-" ID
		"\",\"recording\":true,\"persistent\":true,\"count\":0,\"granularity\":65536},"
		"{\"recording\":true,\"count\":0,\"granularity\":65536}]},"
		"{\"node-name\":\"#block123\",\"dirty-bitmaps\":[{\"name\":\"elsewhere\"}]},"
		"{\"node-name\":\"d1\"},"
		"{\"node-name\":\"d10\",\"dirty-bitmaps\":[{\"name\":\"not-a-disk-here\"}]},"
		"{\"node-name\":\"d1\",\"dirty-bitmaps\":[{\"name\":\"ops\"}]}]");
	struct kerr err;

	(void)state;
	assert_int_equal(snaprevert_bitmaps_from_nodes(nodes, 2, out, &err), 0);
	assert_string_equal(json_object_to_json_string_ext(out, JSON_C_TO_STRING_PLAIN),
			    "[{\"disk\":0,\"name\":\"kumo-" ID "\"},{\"disk\":0,\"name\":\"\"},"
			    "{\"disk\":1,\"name\":\"ops\"}]");
	assert_string_equal(json_get_str(snaprevert_foreign(out), "name", "?"), "");
	json_object_put(out);
	json_object_put(nodes);

	/* Not QEMU's shape: refused, not read as "no bitmaps". */
	out = json_object_new_array();
	nodes = parse("{\"node-name\":\"d0\"}");
	assert_int_equal(snaprevert_bitmaps_from_nodes(nodes, 1, out, &err), -1);
	json_object_put(nodes);
	nodes = parse("[{\"node-name\":\"d0\",\"dirty-bitmaps\":{\"name\":\"x\"}}]");
	assert_int_equal(snaprevert_bitmaps_from_nodes(nodes, 1, out, &err), -1);
	json_object_put(nodes);
	nodes = parse("[{\"node-name\":\"d0\",\"dirty-bitmaps\":[{\"name\":7}]}]");
	assert_int_equal(snaprevert_bitmaps_from_nodes(nodes, 1, out, &err), -1);
	json_object_put(nodes);
	nodes = parse("[{\"node-name\":\"d0\",\"dirty-bitmaps\":[\"kumo-x\"]}]");
	assert_int_equal(snaprevert_bitmaps_from_nodes(nodes, 1, out, &err), -1);
	json_object_put(nodes);
	json_object_put(out);
}

static void test_from_info(void **state)
{
	struct json_object *out = json_object_new_array();
	/* qemu-img 7.2's info of a qcow2 with two bitmaps, one left in use by a killed QEMU. */
	struct json_object *info = parse(
		"{\"virtual-size\":16777216,\"format\":\"qcow2\",\"format-specific\":{\"type\":"
		"\"qcow2\",\"data\":{\"compat\":\"1.1\",\"bitmaps\":[{\"flags\":[\"auto\"],"
		"\"name\":\"kumo-" ID "\",\"granularity\":65536},{\"flags\":[\"in-use\",\"auto\"],"
		"\"name\":\"kumo-" ID "\",\"granularity\":65536}]}}}");
	struct json_object *none = parse("{\"virtual-size\":1,\"format\":\"qcow2\"}");
	struct kerr err;

	(void)state;
	assert_int_equal(snaprevert_bitmaps_from_info(info, 3, out, &err), 0);
	assert_int_equal(snaprevert_bitmaps_from_info(none, 4, out, &err), 0);
	assert_int_equal(json_array_len(out), 2);
	assert_int_equal(json_get_int(json_object_array_get_idx(out, 1), "disk", -1), 3);
	assert_null(snaprevert_foreign(out));
	json_object_put(info);
	json_object_put(none);
	info = parse("{\"format-specific\":{\"data\":{\"bitmaps\":[{\"name\":\"mine\"}]}}}");
	assert_int_equal(snaprevert_bitmaps_from_info(info, 0, out, &err), 0);
	assert_string_equal(json_get_str(snaprevert_foreign(out), "name", ""), "mine");
	json_object_put(info);
	info = parse("{\"format-specific\":{\"data\":{\"bitmaps\":\"kumo-x\"}}}");
	assert_int_equal(snaprevert_bitmaps_from_info(info, 0, out, &err), -1);
	json_object_put(info);
	json_object_put(out);
}

static void test_record(void **state)
{
	char *text = snaprevert_record_text("m2.a_b-c", 1796601690123LL);
	char snap[64];
	int64_t at = 0;
	struct kerr err;
	const char *bad[] = {
		"",
		"[]",
		"{\"snapshot\":\"m2\"}",
		"{\"snapshot\":\"m2\",\"reverted_at\":0}",
		"{\"snapshot\":\"\",\"reverted_at\":5}",
		"{\"snapshot\":\"a b\",\"reverted_at\":5}",
		"{\"snapshot\":\"m2\",\"reverted_at\":\"5\"}",
		"{\"snapshot\":\"m2\",\"reverted_at\":5,\"more\":1}",
		"{\"snapshot\":"
		"\"0123456789012345678901234567890123456789012345678901234567890123\","
		"\"reverted_at\":5}",
	};

	(void)state;
	assert_int_equal(snaprevert_record_parse(text, strlen(text), &at, snap, sizeof(snap), &err),
			 0);
	assert_string_equal(snap, "m2.a_b-c");
	assert_int_equal(at, 1796601690123LL);
	free(text);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(snaprevert_record_parse(bad[i], strlen(bad[i]), &at, snap,
							 sizeof(snap), &err),
				 -1);
	/* A name longer than the caller's buffer is refused, never cut. */
	text = snaprevert_record_text("abcdefgh", 5);
	assert_int_equal(snaprevert_record_parse(text, strlen(text), &at, snap, 8, &err), -1);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_is_kumo),	   cmocka_unit_test(test_name_printable),
		cmocka_unit_test(test_from_nodes), cmocka_unit_test(test_from_info),
		cmocka_unit_test(test_record),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
