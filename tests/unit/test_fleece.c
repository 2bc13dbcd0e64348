/*
 * test_fleece.c - agentd/fleece.c: the QMP of a live full backup's image fleecing, as
 * QEMU 7.2's QAPI takes it (qapi/block-core.json, block-export.json, qom.json): names
 * QEMU accepts (node names under 32 characters, fixed per disk so a leftover is found),
 * the device's QOM path per bus, the copy-before-write filter that breaks the snapshot
 * rather than the guest's write, the bitmap's transaction, the qom-set that puts the
 * filter in front, the snapshot-access node, the unix socket server, the read-only
 * export, and the teardown in an order QEMU allows (export, server, access node, the
 * device back only from the filter, filter, overlay). The graph itself is checked
 * against QEMU by it_backup.
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
	fleece_names_make(0, NULL, &n);
	assert_string_equal(n.device, "d0");
	assert_string_equal(n.node, "kfl-d0");
	assert_string_equal(n.cbw, "kfl-cbw-d0");
	assert_string_equal(n.access, "kfl-sa-d0");
	assert_string_equal(n.qdev, "/machine/peripheral/disk0/virtio-backend");
	fleece_names_make(15, "scsi", &n);
	assert_string_equal(n.device, "d15");
	assert_string_equal(n.node, "kfl-d15");
	assert_string_equal(n.qdev, "/machine/peripheral/disk15");
	/* QEMU's node names hold at most 31 characters. */
	fleece_names_make((size_t)-1, "virtio", &n);
	assert_true(strlen(n.node) < 32);
	assert_true(strlen(n.cbw) < 32);
	assert_true(strlen(n.access) < 32);
}

static void test_setup_commands(void **state)
{
	struct fleece_names n;

	(void)state;
	fleece_names_make(1, "virtio", &n);
	json_is(fleece_overlay_args(&n, "/s/tmp/b1/root.fleece.qcow2"),
		"{\"driver\":\"qcow2\",\"node-name\":\"kfl-d1\",\"file\":{\"driver\":\"file\","
		"\"filename\":\"\\/s\\/tmp\\/b1\\/root.fleece.qcow2\"}}");
	json_is(fleece_cbw_args(&n, 20),
		"{\"driver\":\"copy-before-write\",\"node-name\":\"kfl-cbw-d1\",\"file\":\"d1\","
		"\"target\":\"kfl-d1\",\"on-cbw-error\":\"break-snapshot\",\"cbw-timeout\":20}");
	json_is(fleece_transaction_args(&n, "kumo-abc"),
		"{\"actions\":[{\"type\":\"block-dirty-bitmap-add\",\"data\":{\"node\":\"d1\","
		"\"name\":\"kumo-abc\",\"persistent\":true}}]}");
	json_is(fleece_insert_args(&n, 1),
		"{\"path\":\"\\/machine\\/peripheral\\/disk1\\/virtio-backend\",\"property\":"
		"\"drive\",\"value\":\"kfl-cbw-d1\"}");
	json_is(fleece_access_args(&n), "{\"driver\":\"snapshot-access\",\"node-name\":"
					"\"kfl-sa-d1\",\"file\":\"kfl-cbw-d1\"}");
	json_is(fleece_server_args("/s/tmp/b1/nbd.sock"),
		"{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"\\/s\\/tmp\\/b1\\/"
		"nbd.sock\"}}}");
	json_is(fleece_export_args(&n), "{\"type\":\"nbd\",\"id\":\"kfl-d1\",\"node-name\":"
					"\"kfl-sa-d1\",\"name\":\"kfl-d1\",\"writable\":false}");
}

static void test_teardown(void **state)
{
	static const char *const want[][2] = {
		{"block-export-del", "{\"id\":\"kfl-d2\",\"mode\":\"hard\"}"},
		{"nbd-server-stop", "{}"},
		{"blockdev-del", "{\"node-name\":\"kfl-sa-d2\"}"},
		{"qom-get", "{\"path\":\"\\/machine\\/peripheral\\/disk2\\/virtio-backend\","
			    "\"property\":\"drive\"}"},
		{"qom-set", "{\"path\":\"\\/machine\\/peripheral\\/disk2\\/virtio-backend\","
			    "\"property\":\"drive\",\"value\":\"d2\"}"},
		{"blockdev-del", "{\"node-name\":\"kfl-cbw-d2\"}"},
		{"blockdev-del", "{\"node-name\":\"kfl-d2\"}"},
	};
	struct fleece_names n;
	struct json_object *args, *drive;
	const char *cmd = NULL;
	int step;

	(void)state;
	fleece_names_make(2, NULL, &n);
	for (step = 0; (args = fleece_teardown_step(&n, step, &cmd)) != NULL; step++) {
		assert_true(step < 7);
		assert_string_equal(cmd, want[step][0]);
		json_is(args, want[step][1]);
	}
	assert_int_equal(step, 7);
	assert_null(cmd);
	assert_string_equal(want[FLEECE_STEP_QOM_GET][0], "qom-get");
	assert_string_equal(want[FLEECE_STEP_QOM_SET][0], "qom-set");

	/* Back onto the disk only from the filter: qom-set onto the node the device
	 * already has aborts QEMU 7.2. */
	drive = json_object_new_string("kfl-cbw-d2");
	assert_true(fleece_filter_in_front(&n, drive));
	json_object_put(drive);
	drive = json_object_new_string("d2");
	assert_false(fleece_filter_in_front(&n, drive));
	json_object_put(drive);
	drive = json_object_new_string("kfl-cbw-d20");
	assert_false(fleece_filter_in_front(&n, drive));
	json_object_put(drive);
	assert_false(fleece_filter_in_front(&n, NULL));
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
