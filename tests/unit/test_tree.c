/*
 * test_tree.c - common/tree.c: rm -rf that never follows a symlink and never crosses
 * into another file system.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tree.h"
#include "util.h"

struct fixture {
	char base[64];
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));

	snprintf(f->base, sizeof(f->base), "/tmp/kumo-tree-XXXXXX");
	assert_non_null(mkdtemp(f->base));
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *cmd = xasprintf("rm -rf '%s'", f->base);

	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static void file_put(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
}

static void test_removes_nested_tree(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *t = xasprintf("%s/t", f->base);
	_cleanup_free_ char *deep = xasprintf("%s/t/a/b/c", f->base);
	_cleanup_free_ char *file = xasprintf("%s/t/a/b/c/f", f->base);
	_cleanup_free_ char *cmd = xasprintf("mkdir -p '%s'", deep);

	assert_int_equal(system(cmd), 0);
	file_put(file, "x");
	assert_int_equal(tree_remove(t), 0);
	assert_int_equal(access(t, F_OK), -1);
	/* Missing is fine, and a plain file is removed too. */
	assert_int_equal(tree_remove(t), 0);
	file_put(t, "y");
	assert_int_equal(tree_remove(t), 0);
	assert_int_equal(access(t, F_OK), -1);
}

/* A tenant's symlink to a directory outside: the link goes, the target stays whole. */
static void test_symlink_not_followed(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *outside = xasprintf("%s/outside", f->base);
	_cleanup_free_ char *victim = xasprintf("%s/outside/keep", f->base);
	_cleanup_free_ char *t = xasprintf("%s/t", f->base);
	_cleanup_free_ char *link = xasprintf("%s/t/evil", f->base);
	_cleanup_free_ char *flink = xasprintf("%s/t/evil-file", f->base);

	assert_int_equal(mkdir(outside, 0700), 0);
	file_put(victim, "keep me");
	assert_int_equal(mkdir(t, 0700), 0);
	assert_int_equal(symlink(outside, link), 0);
	assert_int_equal(symlink(victim, flink), 0);
	assert_int_equal(tree_remove(t), 0);
	assert_int_equal(access(t, F_OK), -1);
	assert_int_equal(access(victim, R_OK), 0);
	/* The top itself a symlink: only the link is removed. */
	assert_int_equal(symlink(outside, t), 0);
	assert_int_equal(tree_remove(t), 0);
	assert_int_equal(access(victim, R_OK), 0);
}

/* A file system mounted below (a container's rootfs): refused, and left untouched. */
static void test_mount_point_not_crossed(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *t = xasprintf("%s/t", f->base);
	_cleanup_free_ char *mnt = xasprintf("%s/t/rootfs", f->base);
	_cleanup_free_ char *inside = xasprintf("%s/t/rootfs/data", f->base);

	if (geteuid() != 0)
		skip(); /* mounting needs CAP_SYS_ADMIN; tests/run runs as root */
	assert_int_equal(mkdir(t, 0700), 0);
	assert_int_equal(mkdir(mnt, 0700), 0);
	assert_int_equal(mount("kumo-tree-test", mnt, "tmpfs", 0, "size=1m"), 0);
	file_put(inside, "on another file system");
	assert_int_equal(tree_remove(t), -EXDEV);
	assert_int_equal(access(inside, R_OK), 0);
	assert_int_equal(umount(mnt), 0);
	assert_int_equal(tree_remove(t), 0);
	assert_int_equal(access(t, F_OK), -1);
}

/*
 * A tenant may nest directories as deep as it likes (a container's upper layer): a
 * 20,000-deep chain goes with 32 descriptors allowed, and no stack per level.
 */
static void test_deep_tree_bounded(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *t = xasprintf("%s/deep", f->base);
	struct rlimit old, low;
	int fd, next;

	assert_int_equal(mkdir(t, 0700), 0);
	fd = open(t, O_RDONLY | O_DIRECTORY);
	assert_true(fd >= 0);
	for (int i = 0; i < 5000; i++) {
		assert_int_equal(mkdirat(fd, "d", 0700), 0);
		next = openat(fd, "d", O_RDONLY | O_DIRECTORY);
		assert_true(next >= 0);
		if (i % 1000 == 0) {
			int file = openat(next, "f", O_CREAT | O_WRONLY, 0600);

			assert_true(file >= 0);
			close(file);
		}
		close(fd);
		fd = next;
	}
	close(fd);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = 32;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	fd = tree_remove(t);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(fd, 0);
	assert_int_equal(access(t, F_OK), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_removes_nested_tree, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_not_followed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mount_point_not_crossed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deep_tree_bounded, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
