/*
 * test_ocimarker.c - agentd/ocimarker.c, a container's stop marker: put at once, its
 * fsyncs on a real lane (common/work.c), the exit answered only once they are done,
 * and a marker the disk would not keep (an fsync failing with EIO, or a directory
 * where it cannot be written) makes the stop verb fail naming the disk's error; a
 * later put that succeeds, or a fresh start, clears it. oci_find() and the exit
 * waiters are stubs here (oci.c and inst.c need the whole agent).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agentd.h"
#include "tree.h"
#include "util.h"

/* Every fsync the code makes lands here (the program's definition comes before
 * libc's): it fails with fsync_errno when that is set. */
static atomic_int fsync_errno;

int fsync(int fd)
{
	int e = atomic_load(&fsync_errno);

	if (e) {
		errno = e;
		return -1;
	}
	return (int)syscall(SYS_fsync, fd);
}

static struct agent agent;
static struct ctr ctr;
static int exits;	    /* inst_exit_waiters_call() calls */
static char exit_error[64]; /* the last one's error, "" for none */

struct ctr *oci_find(struct agent *a, const char *name)
{
	return a == &agent && !strcmp(name, ctr.inst.name) ? &ctr : NULL;
}

void inst_exit_waiters_call(struct inst *inst, const char *error)
{
	assert_ptr_equal(inst, &ctr.inst);
	exits++;
	snprintf(exit_error, sizeof(exit_error), "%s", error ? error : "");
}

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kumo-unit-ocimarker.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	agent.loop = uv_default_loop();
	agent.lane = work_lane_new(agent.loop);
	memset(&ctr, 0, sizeof(ctr));
	ctr.inst.agent = &agent;
	snprintf(ctr.inst.name, sizeof(ctr.inst.name), "c1");
	snprintf(ctr.inst.dir, sizeof(ctr.inst.dir), "%s", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	work_lane_close(agent.lane);
	uv_run(agent.loop, UV_RUN_DEFAULT);
	tree_remove(dir);
	return 0;
}

/* Run the loop until the lane's jobs and their done() are all through. */
static void lane_drain(void)
{
	uv_run(agent.loop, UV_RUN_DEFAULT);
}

/* A durable marker: the exit that came first is answered once its fsyncs are done,
 * and the stop has nothing to fail for. */
static void test_durable(void **state)
{
	char path[PATH_MAX];

	(void)state;
	exits = 0;
	oci_marker_put(&ctr);
	snprintf(path, sizeof(path), "%s/stop", dir);
	assert_int_equal(access(path, F_OK), 0); /* there at once, for the shim */
	oci_marker_exit(&ctr);
	assert_int_equal(exits, 0); /* not before the marker is durable */
	lane_drain();
	assert_int_equal(exits, 1);
	assert_string_equal(exit_error, "");
	assert_null(oci_marker_stop_error(&ctr));
}

/* An fsync failing (EIO): the exit is still answered (the container is gone), and the
 * stop fails naming the container, the disk's error and what a power cut would do.
 * The same when the exit comes after the failed fsyncs. A put that succeeds then
 * clears it. */
static void test_fsync_fails(void **state)
{
	const char *why;

	(void)state;
	exits = 0;
	atomic_store(&fsync_errno, EIO);
	oci_marker_put(&ctr);
	oci_marker_exit(&ctr);
	lane_drain();
	atomic_store(&fsync_errno, 0);
	assert_int_equal(exits, 1);
	why = oci_marker_stop_error(&ctr);
	assert_non_null(why);
	if (!strstr(why, "container c1 stopped, but its stop marker is not on disk") ||
	    !strstr(why, "Input/output error") || !strstr(why, "/stop") ||
	    !strstr(why, "crashed, not stopped"))
		fail_msg("the stop's error: %s", why);

	atomic_store(&fsync_errno, EIO);
	oci_marker_put(&ctr);
	lane_drain();
	atomic_store(&fsync_errno, 0);
	assert_non_null(oci_marker_stop_error(&ctr));
	oci_marker_exit(&ctr); /* the sync is done: answered at once */
	assert_int_equal(exits, 2);

	oci_marker_put(&ctr);
	assert_null(oci_marker_stop_error(&ctr)); /* a new marker: nothing known yet */
	oci_marker_exit(&ctr);
	lane_drain();
	assert_int_equal(exits, 3);
	assert_null(oci_marker_stop_error(&ctr));
}

/* A marker that cannot be written at all (its directory is gone): the exit is
 * answered at once, and the stop fails naming the write. A fresh start forgets it. */
static void test_write_fails(void **state)
{
	const char *why;

	(void)state;
	exits = 0;
	snprintf(ctr.inst.dir, sizeof(ctr.inst.dir), "%s/gone", dir);
	oci_marker_put(&ctr);
	snprintf(ctr.inst.dir, sizeof(ctr.inst.dir), "%s", dir);
	oci_marker_exit(&ctr);
	assert_int_equal(exits, 1);
	why = oci_marker_stop_error(&ctr);
	assert_non_null(why);
	if (!strstr(why, "cannot write") || !strstr(why, "gone/stop"))
		fail_msg("the stop's error: %s", why);
	oci_marker_forget(&ctr);
	assert_null(oci_marker_stop_error(&ctr));
}

/* A failed sync of a marker a fresh start has since forgotten concerns nobody: no
 * exit answered for it, no error left for the next stop. */
static void test_stale_sync(void **state)
{
	(void)state;
	exits = 0;
	atomic_store(&fsync_errno, EIO);
	oci_marker_put(&ctr);
	oci_marker_forget(&ctr);
	lane_drain();
	atomic_store(&fsync_errno, 0);
	assert_int_equal(exits, 0);
	assert_null(oci_marker_stop_error(&ctr));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_durable),
		cmocka_unit_test(test_fsync_fails),
		cmocka_unit_test(test_write_fails),
		cmocka_unit_test(test_stale_sync),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
