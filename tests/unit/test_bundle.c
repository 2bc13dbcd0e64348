/*
 * test_bundle.c - runc's config.json for a container (agentd/bundle.c) on a few SPECs
 * and image configs: the command, the environment, the working directory, the
 * cgroup and the limits, with the agent's defaults where the SPEC sets none.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agentd.h"

static struct json_object *at(struct json_object *o, const char *path)
{
	char buf[256], *save = NULL;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok_r(buf, ".", &save); k && o; k = strtok_r(NULL, ".", &save))
		o = json_object_object_get(o, k);
	return o;
}

static const char *str(struct json_object *cfg, const char *path)
{
	return json_object_get_string(at(cfg, path));
}

static bool env_has(struct json_object *cfg, const char *kv)
{
	struct json_object *env = at(cfg, "process.env");

	for (size_t i = 0; i < json_array_len(env); i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(env, i)), kv) == 0)
			return true;
	return false;
}

/* The image's Entrypoint + Cmd, Env and WorkingDir; the agent's default limits. */
static void test_image_defaults(void **state)
{
	struct json_object *spec = json_tokener_parse("{\"name\":\"c1\",\"type\":\"container\"}");
	struct json_object *image = json_tokener_parse(
		"{\"config\":{\"Entrypoint\":[\"/bin/app\"],\"Cmd\":[\"--serve\"],"
		"\"Env\":[\"A=1\"],\"WorkingDir\":\"/srv\"}}");
	struct bundle_defaults defaults = {.memory_mib = 512, .pids = 1024};
	struct kerr err = {0};
	struct json_object *cfg;

	(void)state;
	cfg = bundle_config_build("c1", "/kumo/h1-abc/c1", spec, image, &defaults, &err);
	assert_non_null(cfg);
	assert_int_equal(json_array_len(at(cfg, "process.args")), 2);
	assert_string_equal(
		json_object_get_string(json_object_array_get_idx(at(cfg, "process.args"), 0)),
		"/bin/app");
	assert_string_equal(str(cfg, "process.cwd"), "/srv");
	assert_true(env_has(cfg, "A=1"));
	assert_true(env_has(cfg, "HOSTNAME=c1"));
	assert_string_equal(str(cfg, "linux.cgroupsPath"), "/kumo/h1-abc/c1");
	assert_int_equal(json_object_get_int64(at(cfg, "linux.resources.memory.limit")),
			 512LL * 1024 * 1024);
	assert_int_equal(json_object_get_int64(at(cfg, "linux.resources.pids.limit")), 1024);
	assert_true(json_object_get_boolean(at(cfg, "process.noNewPrivileges")));
	assert_string_equal(str(cfg, "root.path"), "rootfs");
	json_object_put(cfg);
	json_object_put(spec);
	json_object_put(image);
}

/* The SPEC's command, env, workdir and limits win over the image and the defaults. */
static void test_spec_overrides(void **state)
{
	struct json_object *spec = json_tokener_parse(
		"{\"name\":\"c2\",\"type\":\"container\",\"command\":[\"sh\",\"-c\",\"true\"],"
		"\"env\":{\"A\":\"2\"},\"workdir\":\"/tmp\",\"limits\":{\"memory_mb\":64,"
		"\"cpus\":0.5,\"pids\":10}}");
	struct json_object *image =
		json_tokener_parse("{\"config\":{\"Cmd\":[\"/bin/other\"],\"Env\":[\"A=1\"]}}");
	struct bundle_defaults defaults = {.memory_mib = 512, .pids = 1024};
	struct kerr err = {0};
	struct json_object *cfg;

	(void)state;
	cfg = bundle_config_build("c2", "/kumo/h1-abc/c2", spec, image, &defaults, &err);
	assert_non_null(cfg);
	assert_int_equal(json_array_len(at(cfg, "process.args")), 3);
	assert_string_equal(str(cfg, "process.cwd"), "/tmp");
	assert_true(env_has(cfg, "A=2"));
	assert_false(env_has(cfg, "A=1"));
	assert_int_equal(json_object_get_int64(at(cfg, "linux.resources.memory.limit")),
			 64LL * 1024 * 1024);
	assert_int_equal(json_object_get_int64(at(cfg, "linux.resources.cpu.quota")), 50000);
	assert_int_equal(json_object_get_int64(at(cfg, "linux.resources.pids.limit")), 10);
	json_object_put(cfg);
	json_object_put(spec);
	json_object_put(image);
}

/* Refused: no command anywhere; an image WorkingDir in /proc (CVE-2024-21626). */
static void test_refusals(void **state)
{
	struct json_object *spec = json_tokener_parse("{\"name\":\"c3\",\"type\":\"container\"}");
	struct json_object *empty = json_tokener_parse("{\"config\":{}}");
	struct json_object *proc = json_tokener_parse(
		"{\"config\":{\"Cmd\":[\"x\"],\"WorkingDir\":\"/proc/self/fd/7\"}}");
	struct kerr err = {0};

	(void)state;
	assert_null(bundle_config_build("c3", "/kumo/x/c3", spec, empty, NULL, &err));
	assert_non_null(strstr(err.msg, "no Entrypoint or Cmd"));
	assert_null(bundle_config_build("c3", "/kumo/x/c3", spec, proc, NULL, &err));
	assert_non_null(strstr(err.msg, "/proc, /sys or /dev"));
	json_object_put(spec);
	json_object_put(empty);
	json_object_put(proc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_image_defaults),
		cmocka_unit_test(test_spec_overrides),
		cmocka_unit_test(test_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
