/*
 * test_layers.c - the agent's own tar reader and writer (agentd/layers.c): what an
 * image layer may not do (leave the layer, go through a symlink, link outside it), what
 * it may (long names, hard links, whiteouts), and a commit's round trip.
 *
 * Whiteouts and owners need root (mknod, trusted.* xattrs); those checks are skipped
 * for other users.
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
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "agentd.h"
#include "tree.h"
#include "util.h"

#define DIGEST "sha256:0000000000000000000000000000000000000000000000000000000000000000"

/* A tar archive being built in memory. */
struct tarbuf {
	unsigned char *data;
	size_t len;
};

static void tb_put(struct tarbuf *t, const void *data, size_t len)
{
	t->data = xrealloc(t->data, t->len + len);
	memcpy(t->data + t->len, data, len);
	t->len += len;
}

static void tb_pad(struct tarbuf *t)
{
	static const unsigned char zero[512];

	if (t->len % 512)
		tb_put(t, zero, 512 - t->len % 512);
}

/* One ustar header (name <= 100) and its data. */
static void tb_entry(struct tarbuf *t, const char *name, char type, const char *link,
		     const void *data, size_t size)
{
	unsigned char h[512] = {0};
	unsigned sum = 0;

	memcpy(h, name, strlen(name) < 100 ? strlen(name) : 100);
	snprintf((char *)h + 100, 8, "%07o", 0644);
	snprintf((char *)h + 108, 8, "%07o", 0);
	snprintf((char *)h + 116, 8, "%07o", 0);
	snprintf((char *)h + 124, 12, "%011zo", size);
	snprintf((char *)h + 136, 12, "%011o", 0);
	h[156] = (unsigned char)type;
	if (link)
		memcpy(h + 157, link, strlen(link));
	memcpy(h + 257,
	       "ustar\0"
	       "00",
	       8);
	memset(h + 148, ' ', 8);
	for (int i = 0; i < 512; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum);
	tb_put(t, h, 512);
	if (size) {
		tb_put(t, data, size);
		tb_pad(t);
	}
}

static void tb_file(struct tarbuf *t, const char *name, const char *text)
{
	tb_entry(t, name, '0', NULL, text, strlen(text));
}

static void tb_end(struct tarbuf *t)
{
	static const unsigned char zero[1024];

	tb_put(t, zero, sizeof(zero));
}

struct fixture {
	char root[64];	   /* a scratch directory */
	char tar[128];	   /* the archive under test */
	char dest[128];	   /* where it is unpacked */
	char outside[128]; /* must stay empty */
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));

	snprintf(f->root, sizeof(f->root), "/tmp/kumo-test-layers-XXXXXX");
	assert_non_null(mkdtemp(f->root));
	snprintf(f->tar, sizeof(f->tar), "%s/layer.tar", f->root);
	snprintf(f->dest, sizeof(f->dest), "%s/layer", f->root);
	snprintf(f->outside, sizeof(f->outside), "%s/outside", f->root);
	assert_int_equal(mkdir(f->dest, 0755), 0);
	assert_int_equal(mkdir(f->outside, 0755), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	tree_remove(f->root);
	free(f);
	return 0;
}

/* Unpack t as the fixture's layer; 0 or -1 with err. */
static int unpack(struct fixture *f, struct tarbuf *t, struct kerr *err)
{
	char blob[80], diff[80];

	assert_int_equal(file_write_atomic(f->tar, t->data, t->len, 0600), 0);
	free(t->data);
	t->data = NULL;
	t->len = 0;
	return layers_tar_unpack(f->tar, f->dest, DIGEST, blob, diff, err);
}

static bool outside_empty(struct fixture *f)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/x", f->outside);
	return access(path, F_OK) < 0;
}

static void test_dotdot_refused(void **state)
{
	struct fixture *f = *state;
	struct tarbuf t = {0};
	struct kerr err;

	tb_file(&t, "harmless", "ok\n");
	tb_file(&t, "../outside/x", "evil\n");
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), -1);
	assert_non_null(strstr(err.msg, "'../outside/x'"));
	assert_non_null(strstr(err.msg, "'..'"));
	assert_true(outside_empty(f));
}

/* Malformed pax records and absurd sizes are refused, never read past. */
static void test_hostile_headers_refused(void **state)
{
	struct fixture *f = *state;
	static const char *const recs[] = {
		"\n\n\n\n\n\n\n\n\n\n2 abc", /* strtol would skip the newlines */
		"99999999999999999999 path=x\n",  "7 =x\n", "0 path=x\n", "5 pathx",
		"30 size=99999999999999999999\n",
	};

	for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
		struct tarbuf t = {0};
		struct kerr err;

		tb_entry(&t, "PaxHeaders/x", 'x', NULL, recs[i], strlen(recs[i]));
		tb_file(&t, "after", "x\n");
		tb_end(&t);
		assert_int_equal(unpack(f, &t, &err), -1);
	}
	assert_true(outside_empty(f));
}

static void test_dotdot_inside_refused(void **state)
{
	struct fixture *f = *state;
	struct tarbuf t = {0};
	struct kerr err;

	tb_file(&t, "a/b/../../../outside/x", "evil\n");
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), -1);
	assert_non_null(strstr(err.msg, "a/b/../../../outside/x"));
	assert_true(outside_empty(f));
}

static void test_absolute_refused(void **state)
{
	struct fixture *f = *state;
	struct tarbuf t = {0};
	struct kerr err;
	char name[160];

	snprintf(name, sizeof(name), "%s/x", f->outside);
	tb_file(&t, name, "evil\n");
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), -1);
	assert_non_null(strstr(err.msg, "absolute"));
	assert_non_null(strstr(err.msg, name));
	assert_true(outside_empty(f));
}

static void test_symlink_walk_refused(void **state)
{
	struct fixture *f = *state;
	struct tarbuf t = {0};
	struct kerr err;

	tb_entry(&t, "escape", '2', f->outside, NULL, 0);
	tb_file(&t, "escape/x", "evil\n");
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), -1);
	assert_non_null(strstr(err.msg, "'escape/x'"));
	assert_non_null(strstr(err.msg, "symlink"));
	assert_true(outside_empty(f));
}

static void test_symlink_replaced_file_not_followed(void **state)
{
	struct fixture *f = *state;
	struct tarbuf t = {0};
	struct kerr err;
	char target[160];

	/* A symlink, then a file of the same name: the link is replaced, not followed. */
	snprintf(target, sizeof(target), "%s/x", f->outside);
	tb_entry(&t, "name", '2', target, NULL, 0);
	tb_file(&t, "name", "inside\n");
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), 0);
	assert_true(outside_empty(f));
}

static void test_hardlink_outside_refused(void **state)
{
	struct fixture *f = *state;
	struct tarbuf t = {0};
	struct kerr err;

	tb_entry(&t, "link", '1', "../outside/x", NULL, 0);
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), -1);
	assert_non_null(strstr(err.msg, "'..'"));

	tb_entry(&t, "link", '1', "missing", NULL, 0);
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), -1);
	assert_non_null(strstr(err.msg, "not in the layer"));
}

static void test_good_layer(void **state)
{
	struct fixture *f = *state;
	struct tarbuf t = {0};
	struct kerr err;
	char path[512], longname[300], buf[64];
	struct stat a, b;
	ssize_t n;

	/* A GNU long name (type L) and a pax path record. */
	snprintf(longname, sizeof(longname), "dir/%0150d/file", 7);
	tb_entry(&t, "././@LongLink", 'L', NULL, longname, strlen(longname) + 1);
	tb_file(&t, "ignored-short-name", "long gnu\n");
	{
		char rec[400], pax[300];
		int len;

		snprintf(pax, sizeof(pax), "%s/%0120d", "pax", 9);
		len = (int)strlen(pax) + 7 + 3;
		snprintf(rec, sizeof(rec), "%d path=%s\n", len, pax);
		assert_int_equal((int)strlen(rec), len);
		tb_entry(&t, "PaxHeaders/x", 'x', NULL, rec, strlen(rec));
		tb_file(&t, "short", "long pax\n");
	}
	tb_entry(&t, "etc/", '5', NULL, NULL, 0);
	tb_file(&t, "./etc/passwd", "root:x:0:0::/root:/bin/sh\n");
	tb_entry(&t, "etc/passwd-", '1', "etc/passwd", NULL, 0);
	tb_entry(&t, "bin/sh", '2', "/bin/busybox", NULL, 0);
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), 0);

	snprintf(path, sizeof(path), "%s/%s", f->dest, longname);
	assert_int_equal(stat(path, &a), 0);
	snprintf(path, sizeof(path), "%s/pax/%0120d", f->dest, 9);
	assert_int_equal(stat(path, &a), 0);
	snprintf(path, sizeof(path), "%s/etc/passwd", f->dest);
	assert_int_equal(stat(path, &a), 0);
	snprintf(path, sizeof(path), "%s/etc/passwd-", f->dest);
	assert_int_equal(stat(path, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	snprintf(path, sizeof(path), "%s/bin/sh", f->dest);
	n = readlink(path, buf, sizeof(buf) - 1);
	assert_int_equal(n, strlen("/bin/busybox"));
}

static void test_whiteouts(void **state)
{
	struct fixture *f = *state;
	struct tarbuf t = {0};
	struct kerr err;
	char path[256], val[4] = "";
	struct stat st;

	if (geteuid() != 0)
		skip();
	tb_entry(&t, "etc/", '5', NULL, NULL, 0);
	tb_file(&t, "etc/.wh.gone", "");
	tb_entry(&t, "opaque/", '5', NULL, NULL, 0);
	tb_file(&t, "opaque/.wh..wh..opq", "");
	tb_end(&t);
	assert_int_equal(unpack(f, &t, &err), 0);
	snprintf(path, sizeof(path), "%s/etc/gone", f->dest);
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISCHR(st.st_mode));
	assert_int_equal(st.st_rdev, makedev(0, 0));
	snprintf(path, sizeof(path), "%s/etc/.wh.gone", f->dest);
	assert_int_not_equal(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/opaque", f->dest);
	assert_int_equal(getxattr(path, "trusted.overlay.opaque", val, sizeof(val)), 1);
	assert_int_equal(val[0], 'y');
}

/* Commit's writer, read back by the reader: the same tree, whiteouts as .wh. entries. */
static void test_write_read_round_trip(void **state)
{
	struct fixture *f = *state;
	char upper[160], layer[160], back[160], path[512], digest[80], diff[80], blob[80],
		diff2[80], longdir[300];
	int64_t size;
	struct kerr err;
	struct stat a, b;
	_cleanup_free_ char *text = NULL;

	snprintf(upper, sizeof(upper), "%s/upper", f->root);
	snprintf(layer, sizeof(layer), "%s/layer.tgz", f->root);
	snprintf(back, sizeof(back), "%s/back", f->root);
	snprintf(longdir, sizeof(longdir), "%s/%0130d", upper, 3);
	assert_int_equal(mkdir(upper, 0755), 0);
	assert_int_equal(mkdir(back, 0755), 0);
	assert_int_equal(mkdir(longdir, 0755), 0);
	snprintf(path, sizeof(path), "%s/%0110d", longdir, 4);
	assert_int_equal(file_write_atomic(path, "deep\n", 5, 0644), 0);
	snprintf(path, sizeof(path), "%s/file", upper);
	assert_int_equal(file_write_atomic(path, "hello\n", 6, 0640), 0);
	snprintf(longdir, sizeof(longdir), "%s/file-link", upper);
	assert_int_equal(link(path, longdir), 0);
	snprintf(path, sizeof(path), "%s/sym", upper);
	assert_int_equal(symlink("file", path), 0);
	if (geteuid() == 0) {
		snprintf(path, sizeof(path), "%s/deleted", upper);
		assert_int_equal(mknod(path, S_IFCHR | 0, makedev(0, 0)), 0);
		snprintf(path, sizeof(path), "%s/opq", upper);
		assert_int_equal(mkdir(path, 0755), 0);
		assert_int_equal(setxattr(path, "trusted.overlay.opaque", "y", 1, 0), 0);
	}
	assert_int_equal(layers_tar_write(upper, layer, digest, diff, &size, &err), 0);
	assert_true(size > 0);

	assert_int_equal(layers_tar_unpack(layer, back, digest, blob, diff2, &err), 0);
	assert_string_equal(blob, digest);
	assert_string_equal(diff2, diff);
	snprintf(path, sizeof(path), "%s/file", back);
	assert_int_equal(file_read_all(path, 64, &text, NULL), 0);
	assert_string_equal(text, "hello\n");
	assert_int_equal(stat(path, &a), 0);
	assert_int_equal(a.st_mode & 07777, 0640);
	snprintf(path, sizeof(path), "%s/file-link", back);
	assert_int_equal(stat(path, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	snprintf(path, sizeof(path), "%s/%0130d/%0110d", back, 3, 4);
	assert_int_equal(access(path, F_OK), 0);
	if (geteuid() == 0) {
		char val[4] = "";

		snprintf(path, sizeof(path), "%s/deleted", back);
		assert_int_equal(lstat(path, &a), 0);
		assert_true(S_ISCHR(a.st_mode) && a.st_rdev == makedev(0, 0));
		snprintf(path, sizeof(path), "%s/opq", back);
		assert_int_equal(getxattr(path, "trusted.overlay.opaque", val, sizeof(val)), 1);
	}
}

/* A commit of a container in a user namespace stores base+N as N, and other ids as
 * they are (uid.c, layers_userns_base_set()). */
static void test_write_unshifts_userns_ids(void **state)
{
	struct fixture *f = *state;
	char upper[PATH_MAX], layer[PATH_MAX], back[PATH_MAX], path[PATH_MAX];
	char digest[72], diff[72], blob[72], diff2[72];
	int64_t size;
	struct kerr err;
	struct stat st;

	if (geteuid() != 0)
		skip(); /* chown to other uids */
	snprintf(upper, sizeof(upper), "%s/upper", f->root);
	snprintf(layer, sizeof(layer), "%s/layer.tgz", f->root);
	snprintf(back, sizeof(back), "%s/back", f->root);
	assert_int_equal(mkdir(upper, 0755), 0);
	assert_int_equal(mkdir(back, 0755), 0);
	snprintf(path, sizeof(path), "%s/shifted", upper);
	assert_int_equal(file_write_atomic(path, "x", 1, 0644), 0);
	assert_int_equal(chown(path, 1400007, 1400009), 0);
	snprintf(path, sizeof(path), "%s/outside", upper);
	assert_int_equal(file_write_atomic(path, "y", 1, 0644), 0);
	assert_int_equal(chown(path, 1500000, 42), 0);
	layers_userns_base_set(1400000);
	assert_int_equal(layers_tar_write(upper, layer, digest, diff, &size, &err), 0);
	layers_userns_base_set(0);
	assert_int_equal(layers_tar_unpack(layer, back, digest, blob, diff2, &err), 0);
	snprintf(path, sizeof(path), "%s/shifted", back);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_uid, 7);
	assert_int_equal(st.st_gid, 9);
	snprintf(path, sizeof(path), "%s/outside", back);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_uid, 1500000);
	assert_int_equal(st.st_gid, 42);
}

/* Make depth nested directories "d" below dir (with mkdirat, as paths grow long). */
static void nest(const char *dir, int depth)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	for (int i = 0; i < depth; i++) {
		int next;

		assert_int_equal(mkdirat(fd, "d", 0755), 0);
		next = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		assert_true(next >= 0);
		close(fd);
		fd = next;
	}
	close(fd);
}

/* A container's tree nested past LAYERS_DEPTH_MAX is refused, not walked to a crash. */
static void test_write_too_deep_refused(void **state)
{
	struct fixture *f = *state;
	char upper[160], layer[160], digest[80], diff[80];
	int64_t size;
	struct kerr err;

	snprintf(upper, sizeof(upper), "%s/ok", f->root);
	snprintf(layer, sizeof(layer), "%s/ok.tgz", f->root);
	assert_int_equal(mkdir(upper, 0755), 0);
	nest(upper, 200);
	assert_int_equal(layers_tar_write(upper, layer, digest, diff, &size, &err), 0);

	snprintf(upper, sizeof(upper), "%s/deep", f->root);
	snprintf(layer, sizeof(layer), "%s/deep.tgz", f->root);
	assert_int_equal(mkdir(upper, 0755), 0);
	nest(upper, 3000);
	assert_int_equal(layers_tar_write(upper, layer, digest, diff, &size, &err), -1);
	assert_non_null(strstr(err.msg, "directories nest more than 256 deep"));
	assert_int_equal(access(layer, F_OK), -1);
	/* And deleting the container removes such a tree all the same. */
	assert_int_equal(tree_remove(upper), 0);
	assert_int_equal(access(upper, F_OK), -1);
}

static void test_digest_valid(void **state)
{
	assert_true(layers_digest_valid(DIGEST));
	assert_false(layers_digest_valid("sha256:abc"));
	assert_false(layers_digest_valid(
		"sha512:0000000000000000000000000000000000000000000000000000000000000000"));
	assert_false(layers_digest_valid(
		"sha256:../../../../../../../../../../../../../../etc/passwd0000000"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_dotdot_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_headers_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dotdot_inside_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_absolute_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_walk_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_replaced_file_not_followed, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_hardlink_outside_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_good_layer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_whiteouts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_read_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_too_deep_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_unshifts_userns_ids, setup, teardown),
		cmocka_unit_test(test_digest_valid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
