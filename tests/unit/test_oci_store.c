/*
 * test_oci_store.c - the OCI store's pure parts (controllerd/oci_store.c): name,
 * tag and digest rules, REPO:TAG splitting, manifest checks against the blobs that
 * are stored (and the OCI 1.1 subject they may name), manifests read back only when
 * they hash to their digest, and a store nobody else can read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <unistd.h>

#include "controllerd.h"
#include "util.h"

/* main.c owns the controller's state; the store reads cfg.shared_pool from it. */
struct controller ctl;

static char pool[64];

static int setup(void **state)
{
	snprintf(pool, sizeof(pool), "/tmp/kumo-unit-oci.XXXXXX");
	if (mkdtemp(pool) == NULL)
		return -1;
	ctl.cfg.shared_pool = pool;
	return 0;
}

static int teardown(void **state)
{
	oci_tree_remove(pool);
	ctl.cfg.shared_pool = NULL;
	return 0;
}

static void test_digest_valid(void **state)
{
	char d[OCI_DIGEST_LEN + 1];

	oci_digest_of("", 0, d);
	assert_string_equal(
		d, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	assert_true(oci_digest_valid(d));
	d[10] = 'A'; /* upper-case hex is not a digest */
	assert_false(oci_digest_valid(d));
	assert_false(oci_digest_valid("sha256:abc"));
	assert_false(oci_digest_valid(
		"sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
	assert_false(oci_digest_valid(NULL));
}

static void test_repo_valid(void **state)
{
	const char *good[] = {"busybox", "a/b", "a/b/c", "my-app", "my.app_2", "0", NULL};
	const char *bad[] = {"",    "Busybox", "a/b/c/d", "a//b", "/a",	  "a/",
			     "-a",  "a-",      "a..b",	  "a._b", "a/-b", "a b",
			     "a:b", "../etc",  "a/./b",	  "é",	  NULL};
	char longname[OCI_REPO_MAX + 2];

	for (int i = 0; good[i]; i++)
		assert_true(oci_repo_valid(good[i]));
	for (int i = 0; bad[i]; i++)
		assert_false(oci_repo_valid(bad[i]));
	memset(longname, 'a', sizeof(longname) - 1);
	longname[OCI_REPO_MAX] = '\0';
	assert_true(oci_repo_valid(longname));
	longname[OCI_REPO_MAX] = 'a';
	longname[OCI_REPO_MAX + 1] = '\0';
	assert_false(oci_repo_valid(longname));
}

static void test_tag_valid(void **state)
{
	char tag[OCI_TAG_MAX + 2];

	assert_true(oci_tag_valid("latest"));
	assert_true(oci_tag_valid("v1.2.3-rc_1"));
	assert_true(oci_tag_valid("_x"));
	assert_false(oci_tag_valid(""));
	assert_false(oci_tag_valid(".x"));
	assert_false(oci_tag_valid("-x"));
	assert_false(oci_tag_valid("a/b"));
	assert_false(oci_tag_valid("a:b"));
	memset(tag, 'a', sizeof(tag) - 1);
	tag[OCI_TAG_MAX] = '\0';
	assert_true(oci_tag_valid(tag));
	tag[OCI_TAG_MAX] = 'a';
	tag[OCI_TAG_MAX + 1] = '\0';
	assert_false(oci_tag_valid(tag));
}

static void test_name_split(void **state)
{
	char repo[OCI_REPO_MAX + 1], tag[OCI_TAG_MAX + 1];
	struct kerr err = {0};

	assert_int_equal(oci_name_split("lib/busybox:1.36", repo, tag, "name", &err), 0);
	assert_string_equal(repo, "lib/busybox");
	assert_string_equal(tag, "1.36");
	assert_int_equal(oci_name_split("busybox", repo, tag, "name", &err), -1);
	assert_int_equal(err.status, 400);
	assert_string_equal(err.field, "name");
	assert_int_equal(oci_name_split(":latest", repo, tag, "name", &err), -1);
	assert_int_equal(oci_name_split("busybox:", repo, tag, "name", &err), -1);
	assert_int_equal(oci_name_split("Busybox:latest", repo, tag, "name", &err), -1);
	assert_int_equal(oci_name_split("host:5000/busybox:latest", repo, tag, "name", &err), -1);
}

/* Store data as a blob and return its digest in d. */
static void put(const char *data, char *d)
{
	struct kerr err = {0};

	assert_int_equal(oci_blob_put_mem(data, strlen(data), d, &err), 0);
}

static char *manifest_text(const char *config, long csize, const char *layer, long lsize)
{
	return xasprintf("{\"schemaVersion\":2,\"mediaType\":\"" OCI_MT_MANIFEST "\","
			 "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\","
			 "\"digest\":\"%s\",\"size\":%ld},\"layers\":[{\"mediaType\":"
			 "\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"%s\","
			 "\"size\":%ld}]}",
			 config, csize, layer, lsize);
}

static void test_manifest_check(void **state)
{
	char config[OCI_DIGEST_LEN + 1], layer[OCI_DIGEST_LEN + 1], missing[OCI_DIGEST_LEN + 1];
	struct oci_manifest_info info;
	struct kerr err = {0};
	char *m;

	put("{\"config\":{}}", config);
	put("layer bytes", layer);
	oci_digest_of("not stored", 10, missing);

	m = manifest_text(config, 13, layer, 11);
	assert_int_equal(oci_manifest_check(m, strlen(m), OCI_MT_MANIFEST, &info, &err), 0);
	assert_string_equal(info.media_type, OCI_MT_MANIFEST);
	assert_string_equal(info.config, config);
	assert_int_equal(info.content_size, 24);
	/* Without a Content-Type the body's mediaType decides. */
	assert_int_equal(oci_manifest_check(m, strlen(m), NULL, &info, &err), 0);
	/* A Content-Type that contradicts the body is refused. */
	assert_int_equal(oci_manifest_check(m, strlen(m), OCI_MT_DOCKER_MANIFEST, &info, &err),
			 -EINVAL);
	free(m);

	m = manifest_text(config, 13, missing, 10);
	assert_int_equal(oci_manifest_check(m, strlen(m), OCI_MT_MANIFEST, &info, &err), -ENOENT);
	assert_string_equal(err.field, "layers[0]");
	free(m);

	m = manifest_text(config, 13, layer, 12); /* the size is not the stored one */
	assert_int_equal(oci_manifest_check(m, strlen(m), OCI_MT_MANIFEST, &info, &err), -EINVAL);
	free(m);

	m = xasprintf("{\"schemaVersion\":1}");
	assert_int_equal(oci_manifest_check(m, strlen(m), NULL, &info, &err), -EINVAL);
	free(m);
	m = xasprintf("{\"schemaVersion\":2,");
	assert_int_equal(oci_manifest_check(m, strlen(m), OCI_MT_MANIFEST, &info, &err), -EINVAL);
	free(m);

	/* An index need not have its children stored. */
	m = xasprintf("{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" OCI_MT_MANIFEST
		      "\",\"digest\":\"%s\",\"size\":100}]}",
		      missing);
	assert_int_equal(oci_manifest_check(m, strlen(m), "application/json", &info, &err), 0);
	assert_string_equal(info.media_type, OCI_MT_INDEX);
	assert_int_equal(info.content_size, 100);
	free(m);
}

/* OCI 1.1: a subject is a descriptor like any other, and need not be stored. */
static void test_manifest_subject(void **state)
{
	char config[OCI_DIGEST_LEN + 1], missing[OCI_DIGEST_LEN + 1];
	struct oci_manifest_info info;
	struct kerr err = {0};
	char *m;

	put("{}", config);
	oci_digest_of("the subject", 11, missing);
	m = xasprintf("{\"schemaVersion\":2,\"mediaType\":\"" OCI_MT_MANIFEST "\","
		      "\"artifactType\":\"application/vnd.example.sig\","
		      "\"config\":{\"mediaType\":\"application/vnd.oci.empty.v1+json\","
		      "\"digest\":\"%s\",\"size\":2},\"layers\":[],"
		      "\"subject\":{\"mediaType\":\"" OCI_MT_MANIFEST "\",\"digest\":\"%s\","
		      "\"size\":500}}",
		      config, missing);
	assert_int_equal(oci_manifest_check(m, strlen(m), OCI_MT_MANIFEST, &info, &err), 0);
	assert_string_equal(info.subject, missing);
	free(m);

	/* Without one, none. */
	m = xasprintf("{\"schemaVersion\":2,\"config\":{\"mediaType\":\"a/b\",\"digest\":"
		      "\"%s\",\"size\":2},\"layers\":[]}",
		      config);
	assert_int_equal(oci_manifest_check(m, strlen(m), NULL, &info, &err), 0);
	assert_string_equal(info.subject, "");
	free(m);

	/* A malformed subject or artifactType is refused, naming it. */
	m = xasprintf("{\"schemaVersion\":2,\"config\":{\"mediaType\":\"a/b\",\"digest\":"
		      "\"%s\",\"size\":2},\"layers\":[],\"subject\":{\"digest\":\"sha256:1\"}}",
		      config);
	assert_int_equal(oci_manifest_check(m, strlen(m), NULL, &info, &err), -EINVAL);
	assert_string_equal(err.field, "subject");
	free(m);
	m = xasprintf("{\"schemaVersion\":2,\"artifactType\":7,\"config\":{\"mediaType\":"
		      "\"a/b\",\"digest\":\"%s\",\"size\":2},\"layers\":[]}",
		      config);
	assert_int_equal(oci_manifest_check(m, strlen(m), NULL, &info, &err), -EINVAL);
	assert_string_equal(err.field, "artifactType");
	free(m);
}

/* Blobs are 0600 in 0700 directories, even in a store made earlier with 0755 ones. */
static void test_store_modes(void **state)
{
	const char *dirs[] = {"oci", "oci/blobs", "oci/blobs/sha256", "oci/uploads"};
	char d[OCI_DIGEST_LEN + 1];
	struct kerr err = {0};
	struct stat sb;
	char *path;

	path = xasprintf("%s/oci/blobs/sha256", pool);
	assert_int_equal(mkdir_p(path, 0755), 0);
	free(path);
	assert_int_equal(oci_store_init(&err), 0);
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		path = xasprintf("%s/%s", pool, dirs[i]);
		assert_int_equal(stat(path, &sb), 0);
		assert_int_equal(sb.st_mode & 0777, 0700);
		free(path);
	}
	put("a secret layer", d);
	path = oci_blob_path(d);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600);
	free(path);
}

/* The scheduled check moves a blob that changed on disk out of the store, and only
 * that one: each call checks the next blob by name, off the loop. */
static void test_blobs_verify(void **state)
{
	char sound[OCI_DIGEST_LEN + 1], bad[OCI_DIGEST_LEN + 1];
	char *path, *aside;
	FILE *f;

	ctl.loop = uv_default_loop();
	put("sound content", sound);
	put("content that will rot", bad);
	path = oci_blob_path(bad);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("rotten", f);
	fclose(f);
	for (int i = 0; i < 2; i++) {
		oci_blobs_verify_cron();
		uv_run(ctl.loop, UV_RUN_DEFAULT);
	}
	assert_true(oci_blob_stat(sound, NULL));
	assert_false(oci_blob_stat(bad, NULL));
	aside = xasprintf("%s/oci/uploads/corrupt-%s", pool, bad + 7);
	assert_int_equal(access(aside, F_OK), 0);
	free(aside);
	free(path);
}

static void test_manifest_load_verifies(void **state)
{
	char d[OCI_DIGEST_LEN + 1], missing[OCI_DIGEST_LEN + 1];
	struct kerr err = {0};
	char *data = NULL, *path;
	size_t len;
	FILE *f;

	put("{\"schemaVersion\":2}", d);
	assert_int_equal(oci_manifest_load(d, &data, &len, &err), 0);
	assert_string_equal(data, "{\"schemaVersion\":2}");
	free(data);
	oci_digest_of("x", 1, missing);
	assert_int_equal(oci_manifest_load(missing, &data, &len, &err), -ENOENT);

	/* Changed on disk: never handed out. */
	path = oci_blob_path(d);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("{\"schemaVersion\":3}", f);
	fclose(f);
	data = NULL;
	assert_int_equal(oci_manifest_load(d, &data, &len, &err), -EBADMSG);
	assert_null(data);
	/* Storing the sound content again repairs it. */
	put("{\"schemaVersion\":2}", d);
	assert_int_equal(oci_manifest_load(d, &data, &len, &err), 0);
	free(data);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_digest_valid),
		cmocka_unit_test(test_repo_valid),
		cmocka_unit_test(test_tag_valid),
		cmocka_unit_test(test_name_split),
		cmocka_unit_test_setup_teardown(test_manifest_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_manifest_subject, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_modes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_blobs_verify, setup, teardown),
		cmocka_unit_test_setup_teardown(test_manifest_load_verifies, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
