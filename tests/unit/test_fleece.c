/*
 * test_fleece.c - agentd/fleece.c: the QMP of a live full backup's image fleecing, as
 * QEMU 7.2's QAPI takes it (qapi/block-core.json, block-export.json, qom.json): names
 * QEMU accepts (node names under 32 characters, fixed per disk so a leftover is found),
 * the device's QOM path per bus, the copy-before-write filter that breaks the snapshot
 * rather than the guest's write, the bitmap's transaction, the copy job's (an
 * incremental never lets QEMU rewrite the parent's bitmap), the qom-set that puts the
 * filter in front, the snapshot-access node, the unix socket server, the read-only
 * export, and the teardown in an order QEMU allows (export, server, access node, the
 * device back only from the filter, filter, overlay); the NBD socket's path under the
 * agent's --run-dir (its length bound by a unix socket's) and the check that the VM's
 * QEMU uid can walk down to it. The graph itself is checked against QEMU by it_backup.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fleece.h"
#include "json.h"
#include "tree.h"

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
		"\"name\":\"kumo-abc\",\"persistent\":true,\"granularity\":4194304}}]}");
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

/*
 * The copy job's transaction. An incremental never lets QEMU rewrite the parent's
 * bitmap (sync "bitmap", bitmap-mode "never"; never sync "incremental", which is
 * "on-success"): a backup that fails after its job must leave the next incremental
 * every write since the parent. A whole read names no bitmap to copy by.
 */
static void test_copy_tx(void **state)
{
	struct fleece_names n;
	struct json_object *tx, *db;

	(void)state;
	fleece_names_make(2, NULL, &n);
	json_is(fleece_copy_tx_args(&n, "kumo-b2-d2", "kumo-b2", "kumo-b1", "/s/tmp/b2/root.qcow2",
				    0, NULL),
		"{\"actions\":[{\"type\":\"block-dirty-bitmap-add\",\"data\":{\"node\":\"d2\","
		"\"name\":\"kumo-b2\",\"persistent\":true,\"granularity\":4194304}},{\"type\":"
		"\"drive-backup\",\"data\":{"
		"\"job-id\":\"kumo-b2-d2\",\"device\":\"d2\",\"target\":\"\\/s\\/tmp\\/b2\\/"
		"root.qcow2\",\"format\":\"qcow2\",\"sync\":\"bitmap\",\"bitmap\":\"kumo-b1\","
		"\"bitmap-mode\":\"never\",\"mode\":\"absolute-paths\",\"auto-dismiss\":false}}]}");
	json_is(fleece_copy_tx_args(&n, "kumo-b2-d2", "kumo-b2", NULL, "/s/tmp/b2/root.raw",
				    1 << 20, NULL),
		"{\"actions\":[{\"type\":\"block-dirty-bitmap-add\",\"data\":{\"node\":\"d2\","
		"\"name\":\"kumo-b2\",\"persistent\":true,\"granularity\":4194304}},{\"type\":"
		"\"drive-backup\",\"data\":{"
		"\"job-id\":\"kumo-b2-d2\",\"device\":\"d2\",\"target\":\"\\/s\\/tmp\\/b2\\/"
		"root.raw\",\"format\":\"raw\",\"sync\":\"full\",\"mode\":\"absolute-paths\","
		"\"auto-dismiss\":false,\"speed\":1048576}}]}");
	/* The rule itself, whatever else the arguments grow. */
	tx = fleece_copy_tx_args(&n, "j", "kumo-new", "kumo-parent", "/t", 0, NULL);
	db = json_object_object_get(
		json_object_array_get_idx(json_object_object_get(tx, "actions"), 1), "data");
	assert_string_equal(json_get_str(db, "sync", ""), "bitmap");
	assert_string_equal(json_get_str(db, "bitmap-mode", ""), "never");
	assert_string_equal(json_get_str(db, "bitmap", ""), "kumo-parent");
	json_object_put(tx);
	/* A target the agent made, added as a node: QEMU opens it, creates nothing. */
	json_is(fleece_copy_tx_args(&n, "kumo-b2-d2", "kumo-b2", "kumo-b1", "/t", 0, "kbt-b2-2"),
		"{\"actions\":[{\"type\":\"block-dirty-bitmap-add\",\"data\":{\"node\":\"d2\","
		"\"name\":\"kumo-b2\",\"persistent\":true,\"granularity\":4194304}},{\"type\":"
		"\"blockdev-backup\",\"data\":{\"job-id\":\"kumo-b2-d2\",\"device\":\"d2\","
		"\"target\":\"kbt-b2-2\",\"sync\":\"bitmap\",\"bitmap\":\"kumo-b1\","
		"\"bitmap-mode\":\"never\",\"auto-dismiss\":false}}]}");
	/* ... a node QEMU never fdatasyncs: its close only writes its tables out. */
	json_is(fleece_target_add_args("kbt-b2-2", "/s/tmp/b2/root.qcow2"),
		"{\"driver\":\"qcow2\",\"node-name\":\"kbt-b2-2\",\"file\":{\"driver\":"
		"\"file\",\"filename\":\"\\/s\\/tmp\\/b2\\/root.qcow2\",\"cache\":{\"no-flush\":"
		"true}},\"cache\":{\"no-flush\":true}}");
}

/* The setup's steps in the order QEMU 7.2 takes them, each the command above. */
static void test_setup_steps(void **state)
{
	static const char *const want[][2] = {
		{"blockdev-add", "{\"driver\":\"qcow2\",\"node-name\":\"kfl-d0\",\"file\":{"
				 "\"driver\":\"file\",\"filename\":\"\\/s\\/o.qcow2\"}}"},
		{"blockdev-add", "{\"driver\":\"copy-before-write\",\"node-name\":\"kfl-cbw-d0\","
				 "\"file\":\"d0\",\"target\":\"kfl-d0\",\"on-cbw-error\":"
				 "\"break-snapshot\",\"cbw-timeout\":20}"},
		{"qom-set", "{\"path\":\"\\/machine\\/peripheral\\/disk0\\/virtio-backend\","
			    "\"property\":\"drive\",\"value\":\"kfl-cbw-d0\"}"},
		{"blockdev-add", "{\"driver\":\"snapshot-access\",\"node-name\":\"kfl-sa-d0\","
				 "\"file\":\"kfl-cbw-d0\"}"},
		{"nbd-server-start",
		 "{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"\\/r\\/x.sock\"}}}"},
		{"block-export-add", "{\"type\":\"nbd\",\"id\":\"kfl-d0\",\"node-name\":"
				     "\"kfl-sa-d0\",\"name\":\"kfl-d0\",\"writable\":false}"},
	};
	struct fleece_names n;
	struct json_object *args;
	const char *cmd = NULL;
	int step;

	(void)state;
	fleece_names_make(0, "virtio", &n);
	for (step = 0;
	     (args = fleece_setup_step(&n, step, "/s/o.qcow2", "/r/x.sock", 20, &cmd)) != NULL;
	     step++) {
		assert_true(step < 6);
		assert_string_equal(cmd, want[step][0]);
		json_is(args, want[step][1]);
	}
	assert_int_equal(step, 6);
	assert_null(cmd);
	assert_string_equal(want[FLEECE_SETUP_INSERT][0], "qom-set");
	assert_int_equal(FLEECE_SETUP_EXPORT, 5);
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

static void test_sock_path(void **state)
{
	char dir[PATH_MAX], sock[FLEECE_SOCK_MAX], run[160], other[FLEECE_SOCK_MAX];
	const char *vm = "/var/lib/kumo-agent/local/instances/web1";
	struct kerr err;

	(void)state;
	assert_int_equal(fleece_sock_path("/run/kumo-agent", 1300007, vm, dir, sizeof(dir), sock,
					  sizeof(sock), &err),
			 0);
	assert_string_equal(dir, "/run/kumo-agent/fleece/1300007");
	assert_int_equal(strncmp(sock, "/run/kumo-agent/fleece/1300007/", strlen(dir) + 1), 0);
	assert_int_equal(strlen(sock), strlen(dir) + strlen("/0123456789abcdef.sock"));
	assert_string_equal(sock + strlen(sock) - 5, ".sock");
	/* The same VM, the same path (the teardown and a restarted agent find it) ... */
	assert_int_equal(fleece_sock_path("/run/kumo-agent", 1300007, vm, dir, sizeof(dir), other,
					  sizeof(other), &err),
			 0);
	assert_string_equal(sock, other);
	/* ... and two VMs sharing a uid (root, or --qemu-uid-base 0) two sockets. */
	assert_int_equal(fleece_sock_path("/run/kumo-agent", 1300007,
					  "/var/lib/kumo-agent/local/instances/web2", dir,
					  sizeof(dir), other, sizeof(other), &err),
			 0);
	assert_string_not_equal(sock, other);
	/* The lab's: each agent its own directory, the same uid apart. */
	assert_int_equal(fleece_sock_path("/var/lib/kumo-lab/k2/run/h3", 0, vm, dir, sizeof(dir),
					  sock, sizeof(sock), &err),
			 0);
	assert_string_equal(dir, "/var/lib/kumo-lab/k2/run/h3/fleece/0");

	/* 107 bytes fit a unix socket's path, 108 do not: "/fleece/4294967295/" and
	 * "0123456789abcdef.sock" are 40 bytes, so a run directory of 67 is the longest
	 * for every uid. */
	memset(run, 'r', sizeof(run));
	run[0] = '/';
	run[67] = '\0';
	assert_int_equal(
		fleece_sock_path(run, 4294967295u, vm, dir, sizeof(dir), sock, sizeof(sock), &err),
		0);
	assert_int_equal(strlen(sock), FLEECE_SOCK_MAX - 1);
	run[67] = 'r';
	run[68] = '\0';
	memset(sock, 'x', sizeof(sock));
	assert_true(fleece_sock_path(run, 4294967295u, vm, dir, sizeof(dir), sock, sizeof(sock),
				     &err) < 0);
	assert_non_null(strstr(err.msg, "is 108 bytes, more than a unix socket takes (107)"));
	assert_non_null(strstr(err.msg, "--run-dir"));
	/* A short uid leaves room for a longer directory, and a small buffer is refused. */
	assert_int_equal(fleece_sock_path(run, 7, vm, dir, sizeof(dir), sock, sizeof(sock), &err),
			 0);
	assert_true(fleece_sock_path("/run/kumo-agent", 7, vm, dir, sizeof(dir), sock, 20, &err) <
		    0);
}

static void test_dir_reachable(void **state)
{
	char top[] = "/tmp/kumo-fleece-test-XXXXXX";
	char mid[PATH_MAX], leaf[PATH_MAX];
	struct kerr err;
	struct stat sb;
	uid_t other = 1300042;

	(void)state;
	assert_non_null(mkdtemp(top));
	snprintf(mid, sizeof(mid), "%s/run", top);
	snprintf(leaf, sizeof(leaf), "%s/run/fleece", top);
	assert_int_equal(mkdir(mid, 0700), 0);
	assert_int_equal(mkdir(leaf, 0700), 0);
	assert_int_equal(chmod(top, 0711), 0);
	assert_int_equal(stat(mid, &sb), 0);

	/* run/ is 0700: its owner passes, another uid does not, and is told where. */
	assert_int_equal(fleece_dir_reachable(leaf, sb.st_uid, sb.st_gid, &err), 0);
	assert_true(fleece_dir_reachable(leaf, other, other, &err) < 0);
	assert_non_null(strstr(err.msg, mid));
	assert_non_null(strstr(err.msg, "uid 1300042"));
	assert_non_null(strstr(err.msg, "mode 700"));
	/* Root passes anything. */
	assert_int_equal(fleece_dir_reachable(leaf, 0, 0, &err), 0);
	/* 0711 lets others search it (not list it): reachable. The leaf itself is not
	 * looked at: the caller hands it to the uid. */
	assert_int_equal(chmod(mid, 0711), 0);
	assert_int_equal(fleece_dir_reachable(leaf, other, other, &err), 0);
	/* A group-searchable directory passes for its group only. */
	assert_int_equal(chmod(mid, 0710), 0);
	assert_int_equal(fleece_dir_reachable(leaf, other, sb.st_gid, &err), 0);
	assert_true(fleece_dir_reachable(leaf, other, other, &err) < 0);
	/* A relative path: refused. */
	assert_true(fleece_dir_reachable("run/fleece", other, other, &err) < 0);

	rmdir(leaf);
	rmdir(mid);
	rmdir(top);
}

/*
 * The socket's directories: made with their owners and modes whatever the umask; a
 * --run-dir others may write, or a link where a directory belongs, refused. Needs
 * root (the chown): skipped otherwise.
 */
static void test_sock_dir_make(void **state)
{
	char top[] = "/tmp/kumo-fleece-dir-XXXXXX";
	char run[PATH_MAX], path[PATH_MAX], cmd[PATH_MAX + 64];
	const uid_t uid = 1300042;
	struct kerr err;
	struct stat sb;
	mode_t old;

	(void)state;
	if (geteuid() != 0)
		skip();
	assert_non_null(mkdtemp(top));
	snprintf(run, sizeof(run), "%s/run", top);
	assert_int_equal(mkdir(run, 0711), 0);
	old = umask(0077);
	assert_int_equal(fleece_sock_dir_make(run, uid, uid, &err), 0);
	umask(old);
	snprintf(path, sizeof(path), "%s/fleece", run);
	assert_int_equal(lstat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0711);
	assert_int_equal(sb.st_uid, 0);
	snprintf(path, sizeof(path), "%s/fleece/%u", run, (unsigned)uid);
	assert_int_equal(lstat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0700);
	assert_int_equal(sb.st_uid, uid);
	/* Again: all there already, nothing changes. */
	assert_int_equal(fleece_sock_dir_make(run, uid, uid, &err), 0);

	/* A directory above --run-dir that others may write (not sticky), or another
	 * uid's: they could move --run-dir away and put theirs there. Sticky (/tmp, and
	 * top set so): no one else can move it. */
	assert_int_equal(chmod(top, 0777), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_non_null(strstr(err.msg, "above it must be root's"));
	assert_non_null(strstr(err.msg, top));
	assert_int_equal(chmod(top, 0775), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_int_equal(chmod(top, 01777), 0);
	assert_int_equal(fleece_sock_dir_make(run, uid, uid, &err), 0);
	assert_int_equal(chmod(top, 0755), 0);
	assert_int_equal(chown(top, uid, uid), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_non_null(strstr(err.msg, "owner 1300042"));
	assert_int_equal(chown(top, 0, 0), 0);
	assert_int_equal(chmod(top, 0700), 0);
	assert_int_equal(fleece_sock_dir_make(run, uid, uid, &err), 0);

	/* fleece/UID a link (its uid put it there: to have root chown the target). */
	assert_int_equal(rmdir(path), 0);
	assert_int_equal(symlink(top, path), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_non_null(strstr(err.msg, "is not a directory"));
	assert_int_equal(lstat(top, &sb), 0);
	assert_int_equal(sb.st_uid, 0); /* not handed over */
	assert_int_equal(unlink(path), 0);

	/* fleece/ another uid's, or a link. */
	snprintf(path, sizeof(path), "%s/fleece", run);
	assert_int_equal(chown(path, uid, uid), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_non_null(strstr(err.msg, "not the agent's"));
	snprintf(cmd, sizeof(cmd), "rm -rf %s && ln -s %s %s", path, top, path);
	assert_int_equal(system(cmd), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_non_null(strstr(err.msg, "is not a directory"));
	assert_int_equal(unlink(path), 0);

	/* A --run-dir others may write (/tmp/x made by anyone), another uid's, or a link. */
	assert_int_equal(chmod(run, 0777), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_non_null(strstr(err.msg, "writable by it alone"));
	assert_int_equal(chmod(run, 0731), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_int_equal(chmod(run, 0711), 0);
	assert_int_equal(chown(run, uid, uid), 0);
	assert_true(fleece_sock_dir_make(run, uid, uid, &err) < 0);
	assert_int_equal(chown(run, 0, 0), 0);
	snprintf(path, sizeof(path), "%s/runlink", top);
	assert_int_equal(symlink(run, path), 0);
	assert_true(fleece_sock_dir_make(path, uid, uid, &err) < 0);
	assert_non_null(strstr(err.msg, "cannot open --run-dir"));
	tree_remove(top);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),	      cmocka_unit_test(test_setup_commands),
		cmocka_unit_test(test_copy_tx),	      cmocka_unit_test(test_setup_steps),
		cmocka_unit_test(test_teardown),      cmocka_unit_test(test_sock_path),
		cmocka_unit_test(test_dir_reachable), cmocka_unit_test(test_sock_dir_make),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
