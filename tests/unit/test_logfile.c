/*
 * test_logfile.c - size-capped logs (agentd/logfile.c): the files stay within the cap,
 * a reader gets the tail and follows by logical offset across rotations and trims,
 * and neither the trim (on the agent's loop) nor the writer waits for the disk.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agentd.h"
#include "util.h"

#define CAP   (64 * 1024)
#define LINE  12 /* "line 000000\n" */
#define LINES 20000

static char dir[64];

/*
 * Every fsync and fdatasync the code under test makes lands here (the program's own
 * definitions come before libc's) and is counted: a log trim runs on the agent's loop,
 * and one fsync there took 22 ms median on a loaded host, hundreds at worst.
 */
static atomic_int syncs;

int fsync(int fd)
{
	atomic_fetch_add(&syncs, 1);
	return (int)syscall(SYS_fsync, fd);
}

int fdatasync(int fd)
{
	atomic_fetch_add(&syncs, 1);
	return (int)syscall(SYS_fdatasync, fd);
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kumo-logfile-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static off_t size_of(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? st.st_size : -1;
}

/* The text line n of the stream the tests write. */
static void line_make(char *buf, int n)
{
	snprintf(buf, LINE + 1, "line %06d\n", n);
}

/* Follow the log from offset 0 in small reads; the bytes must be the stream's from
 * where the oldest kept file begins, without a gap, to the end. */
static void follow_check(const char *path, int total_lines)
{
	int64_t offset = 0, first = -1, expect_end = (int64_t)total_lines * LINE;

	for (;;) {
		struct logfile_span span = {0};

		logfile_read(path, offset, 0, false, 5000, &span);
		if (first < 0)
			first = span.offset;
		else
			assert_int_equal(span.offset, offset); /* no gap */
		for (size_t i = 0; i < span.len; i++) {
			int64_t at = span.offset + (int64_t)i;
			char want[LINE + 1];

			line_make(want, (int)(at / LINE));
			assert_int_equal(span.data[i], want[at % LINE]);
		}
		offset = span.offset + (int64_t)span.len;
		assert_int_equal(span.end, expect_end);
		free(span.data);
		if (span.len == 0)
			break;
	}
	assert_int_equal(offset, expect_end);
	assert_true(first > 0); /* the start was rotated away */
}

static void test_writer_caps_and_follows(void **state)
{
	char path[128], line[LINE + 1], name[160];
	struct logfile lf;
	struct logfile_span span = {0};

	(void)state;
	snprintf(path, sizeof(path), "%s/console.log", dir);
	atomic_store(&syncs, 0);
	assert_int_equal(logfile_open(&lf, path, CAP, 3), 0);
	for (int i = 0; i < LINES; i++) {
		line_make(line, i);
		assert_int_equal(logfile_write(&lf, line, LINE), 0);
	}
	/* Three files, each within the cap, nothing older. */
	assert_true(size_of(path) <= CAP);
	for (int i = 1; i <= 2; i++) {
		snprintf(name, sizeof(name), "%s.%d", path, i);
		assert_int_equal(size_of(name), CAP);
	}
	snprintf(name, sizeof(name), "%s.3", path);
	assert_int_equal(size_of(name), -1);
	assert_int_equal(logfile_end(&lf), (int64_t)LINES * LINE);
	/* The shim reads the container's output between its writes: no disk waits. */
	assert_int_equal(atomic_load(&syncs), 0);

	/* The tail, across the rotation: more lines than the current file has. */
	logfile_read(path, -1, 5, false, 1 << 20, &span);
	assert_int_equal(span.len, 5 * LINE);
	line_make(line, LINES - 5);
	assert_memory_equal(span.data, line, LINE);
	free(span.data);
	logfile_read(path, -1, (CAP / LINE) + 100, false, 1 << 20, &span);
	assert_int_equal(span.len, ((CAP / LINE) + 100) * LINE);
	free(span.data);
	/* The last bytes (a VM console). */
	logfile_read(path, -1, 0, true, 100, &span);
	assert_int_equal(span.len, 100);
	assert_int_equal(span.offset + 100, (int64_t)LINES * LINE);
	free(span.data);

	follow_check(path, LINES);
	logfile_close(&lf);

	/* Reopened (a new shim), it goes on from the same logical offset. */
	assert_int_equal(logfile_open(&lf, path, CAP, 3), 0);
	assert_int_equal(logfile_end(&lf), (int64_t)LINES * LINE);
	logfile_close(&lf);
}

static void test_trim_of_appended_file(void **state)
{
	char path[128], line[LINE + 1], name[160];
	int fd, total = 0;

	(void)state;
	snprintf(path, sizeof(path), "%s/serial.log", dir);
	/* Another process's O_APPEND descriptor, as QEMU's chardev holds. */
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
	assert_true(fd >= 0);
	atomic_store(&syncs, 0);
	assert_int_equal(logfile_trim(path, CAP, 3), 0);
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < 8000; i++, total++) {
			line_make(line, total);
			assert_int_equal(write(fd, line, LINE), LINE);
		}
		assert_int_equal(logfile_trim(path, CAP, 3), 1);
		assert_int_equal(size_of(path), 0);
	}
	for (int i = 0; i < 10; i++, total++) {
		line_make(line, total);
		assert_int_equal(write(fd, line, LINE), LINE);
	}
	assert_int_equal(size_of(path), 10 * LINE); /* the appender went on at 0 */
	/* Five trims on the loop, and not one wait for the disk. */
	if (atomic_load(&syncs) != 0)
		fail_msg("the trims made %d fsyncs, on the agent's loop", atomic_load(&syncs));
	snprintf(name, sizeof(name), "%s.3", path);
	assert_int_equal(size_of(name), -1);
	follow_check(path, total);
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_writer_caps_and_follows),
		cmocka_unit_test(test_trim_of_appended_file),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
