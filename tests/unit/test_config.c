/*
 * test_config.c - the controller's configuration: defaults, the file, -s overrides
 * and the checks that refuse to start (controllerd/config.c).
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

#include "controllerd.h"
#include "util.h"

/* main.c owns the controller's state; config.c does not use it, the library refers to it. */
struct controller ctl;

static char tmpdir[64];

static int group_setup(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/kumo-unit-config.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* Write text to a file in tmpdir; returns its path (caller frees). */
static char *conf_file(const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", tmpdir, name);

	assert_int_equal(file_write_atomic(path, text, strlen(text), 0600), 0);
	return path;
}

/* Load text as a config file into cfg; returns config_load()'s result. */
static int load(struct config *cfg, const char *text, struct kerr *err)
{
	_cleanup_free_ char *path = conf_file("kumo.conf", text);

	memset(cfg, 0, sizeof(*cfg));
	memset(err, 0, sizeof(*err));
	return config_load(cfg, path, err);
}

static void test_defaults(void **state)
{
	struct config cfg = {0};
	struct kerr err = {0};

	assert_int_equal(config_load(&cfg, NULL, &err), 0);
	assert_string_equal(cfg.state_dir, "/var/lib/kumo");
	assert_string_equal(cfg.api_listen, "127.0.0.1:8443");
	assert_true(cfg.tls);
	assert_false(cfg.insecure_http);
	assert_string_equal(cfg.link_address, "127.0.0.1");
	assert_int_equal(cfg.join_port, 7700);
	assert_int_equal(cfg.event_port, 7701);
	assert_int_equal(cfg.heartbeat_interval, 1);
	assert_int_equal(cfg.offline_after, 5);
	assert_int_equal(cfg.max_body, 1048576);
	assert_string_equal(cfg.log_level, "info");
	assert_string_equal(cfg.pidfile, "");
	/* The defaults pass the checks. */
	assert_int_equal(config_check(&cfg, &err), 0);
	config_free(&cfg);
	assert_null(cfg.state_dir);
}

static void test_file_values(void **state)
{
	struct config cfg;
	struct kerr err;

	assert_int_equal(load(&cfg,
			      "# Kumo controller\n"
			      "\n"
			      "state_dir = /srv/kumo   # trailing comment\n"
			      "  api_listen=10.0.0.1:443\n"
			      "tls = on\n"
			      "\tlink_address =\t10.231.0.1 \n"
			      "join_port = 17700\n"
			      "event_port = 17701\n"
			      "heartbeat_interval = 60\n"
			      "offline_after = 2\n"
			      "max_body = 1024\n"
			      "log_level = debug\n"
			      "pidfile = /run/kumo=ctl.pid\n",
			      &err),
			 0);
	assert_string_equal(cfg.state_dir, "/srv/kumo");
	assert_string_equal(cfg.api_listen, "10.0.0.1:443");
	assert_string_equal(cfg.link_address, "10.231.0.1");
	assert_int_equal(cfg.join_port, 17700);
	assert_int_equal(cfg.event_port, 17701);
	assert_int_equal(cfg.heartbeat_interval, 60);
	assert_int_equal(cfg.offline_after, 2);
	assert_int_equal(cfg.max_body, 1024);
	assert_string_equal(cfg.log_level, "debug");
	/* Only the first '=' separates key and value. */
	assert_string_equal(cfg.pidfile, "/run/kumo=ctl.pid");
	assert_int_equal(config_check(&cfg, &err), 0);
	config_free(&cfg);
}

static void test_unknown_key_names_file_and_line(void **state)
{
	_cleanup_free_ char *where = xasprintf("%s/kumo.conf:3:", tmpdir);
	struct config cfg;
	struct kerr err;

	assert_true(load(&cfg, "# comment\njoin_port = 7700\nlisten_port = 80\n", &err) < 0);
	assert_non_null(strstr(err.msg, where));
	assert_non_null(strstr(err.msg, "listen_port"));
	config_free(&cfg);

	/* A line that is not key = value. */
	assert_true(load(&cfg, "tls = on\nthis is not an option\n", &err) < 0);
	free(where);
	where = xasprintf("%s/kumo.conf:2:", tmpdir);
	assert_non_null(strstr(err.msg, where));
	config_free(&cfg);
}

static void test_bad_values_fail(void **state)
{
	static const struct {
		const char *text, *key;
	} cases[] = {
		{"join_port = 0\n", "join_port"},
		{"join_port = 65536\n", "join_port"},
		{"join_port = -1\n", "join_port"},
		{"join_port = 77x\n", "join_port"},
		{"join_port = \n", "join_port"},
		{"join_port = 99999999999999999999\n", "join_port"},
		{"heartbeat_interval = 0\n", "heartbeat_interval"},
		{"heartbeat_interval = 61\n", "heartbeat_interval"},
		{"offline_after = 1\n", "offline_after"},
		{"max_body = 1023\n", "max_body"},
		{"tls = maybe\n", "tls"},
		{"insecure_http = 2\n", "insecure_http"},
	};
	struct config cfg;
	struct kerr err;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (load(&cfg, cases[i].text, &err) == 0)
			fail_msg("accepted %s", cases[i].text);
		assert_non_null(strstr(err.msg, ":1:"));
		assert_non_null(strstr(err.msg, cases[i].key));
		config_free(&cfg);
	}
	/* The ends of the range are fine. */
	assert_int_equal(load(&cfg, "join_port = 1\nevent_port = 65535\n", &err), 0);
	config_free(&cfg);
}

static void test_missing_file_fails(void **state)
{
	struct config cfg = {0};
	struct kerr err = {0};

	assert_true(config_load(&cfg, "/nonexistent/kumo.conf", &err) < 0);
	assert_int_equal(err.code, ENOENT);
	assert_non_null(strstr(err.msg, "/nonexistent/kumo.conf"));
	config_free(&cfg);
}

static void test_tls_off_needs_loopback_or_insecure(void **state)
{
	struct config cfg;
	struct kerr err;

	/* Off on loopback is fine. */
	assert_int_equal(load(&cfg, "tls = off\napi_listen = 127.0.0.1:8080\n", &err), 0);
	assert_int_equal(config_check(&cfg, &err), 0);
	config_free(&cfg);
	assert_int_equal(load(&cfg, "tls = off\napi_listen = 127.9.8.7:8080\n", &err), 0);
	assert_int_equal(config_check(&cfg, &err), 0);
	config_free(&cfg);

	/* Off on any other address is refused... */
	assert_int_equal(load(&cfg, "tls = off\napi_listen = 0.0.0.0:8080\n", &err), 0);
	assert_true(config_check(&cfg, &err) < 0);
	assert_non_null(strstr(err.msg, "insecure_http"));
	config_free(&cfg);
	assert_int_equal(load(&cfg, "tls = no\napi_listen = 10.0.0.1:8080\n", &err), 0);
	assert_true(config_check(&cfg, &err) < 0);
	config_free(&cfg);

	/* ...unless asked for explicitly. */
	assert_int_equal(
		load(&cfg, "tls = off\ninsecure_http = yes\napi_listen = 0.0.0.0:8080\n", &err), 0);
	assert_int_equal(config_check(&cfg, &err), 0);
	config_free(&cfg);

	/* TLS on needs no permission anywhere. */
	assert_int_equal(load(&cfg, "api_listen = 0.0.0.0:8443\n", &err), 0);
	assert_int_equal(config_check(&cfg, &err), 0);
	config_free(&cfg);
}

static void test_check_refuses_bad_combinations(void **state)
{
	static const char *const bad[] = {
		"state_dir = var/lib/kumo\n",
		"api_listen = 127.0.0.1\n",
		"api_listen = localhost:8443\n",
		"api_listen = 127.0.0.1:0\n",
		"api_listen = 127.0.0.1:http\n",
		"api_listen = [::1]:8443\n",
		"link_address = 10.0.0.256\n",
		"link_address = 10.0.0.1:7700\n",
		"join_port = 7701\n",
		"log_level = verbose\n",
	};
	struct config cfg;
	struct kerr err;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(load(&cfg, bad[i], &err), 0);
		if (config_check(&cfg, &err) == 0)
			fail_msg("config_check accepted %s", bad[i]);
		assert_true(err.msg[0] != '\0');
		config_free(&cfg);
	}
}

/* An operator's certificate and key must belong together; a mismatch is refused at once. */
static void test_tls_pair_check(void **state)
{
	_cleanup_free_ char *a = xasprintf("%s/a", tmpdir), *b = xasprintf("%s/b", tmpdir);
	_cleanup_free_ char *acrt = xasprintf("%s/tls.crt", a), *akey = xasprintf("%s/tls.key", a);
	_cleanup_free_ char *bkey = xasprintf("%s/tls.key", b);
	_cleanup_free_ char *set_cert = xasprintf("tls_cert=%s", acrt);
	_cleanup_free_ char *set_key = xasprintf("tls_key=%s", bkey);
	struct config cfg;
	struct kerr err = {0};

	assert_int_equal(mkdir_p(a, 0700), 0);
	assert_int_equal(mkdir_p(b, 0700), 0);
	assert_int_equal(tls_ensure(a, "127.0.0.1:8443", &err), 0);
	assert_int_equal(tls_ensure(b, "127.0.0.1:8443", &err), 0);
	assert_int_equal(tls_pair_check(acrt, akey, &err), 0);
	assert_true(tls_pair_check(acrt, bkey, &err) < 0);
	assert_non_null(strstr(err.msg, "is not the private key of"));
	assert_true(tls_pair_check(akey, akey, &err) < 0);
	assert_non_null(strstr(err.msg, "no PEM certificate"));

	/* config_check refuses the mismatched pair, and a cert without its key. */
	assert_int_equal(load(&cfg, "", &err), 0);
	assert_int_equal(config_set(&cfg, set_cert, &err), 0);
	assert_true(config_check(&cfg, &err) < 0);
	assert_non_null(strstr(err.msg, "go together"));
	assert_int_equal(config_set(&cfg, set_key, &err), 0);
	assert_true(config_check(&cfg, &err) < 0);
	assert_non_null(strstr(err.msg, "is not the private key"));
	config_free(&cfg);
}

static void test_set_overrides(void **state)
{
	struct config cfg;
	struct kerr err;

	assert_int_equal(load(&cfg, "join_port = 7800\nlog_level = warn\n", &err), 0);
	assert_int_equal(config_set(&cfg, "join_port=7900", &err), 0);
	assert_int_equal(config_set(&cfg, " log_level = debug ", &err), 0);
	assert_int_equal(config_set(&cfg, "tls=off", &err), 0);
	assert_int_equal(config_set(&cfg, "state_dir=/tmp/k", &err), 0);
	assert_int_equal(cfg.join_port, 7900);
	assert_string_equal(cfg.log_level, "debug");
	assert_false(cfg.tls);
	assert_string_equal(cfg.state_dir, "/tmp/k");
	/* Untouched keys keep the file's or the default value. */
	assert_int_equal(cfg.event_port, 7701);

	assert_true(config_set(&cfg, "join_port", &err) < 0);
	assert_non_null(strstr(err.msg, "key=value"));
	assert_true(config_set(&cfg, "no_such_key=1", &err) < 0);
	assert_non_null(strstr(err.msg, "no_such_key"));
	assert_true(config_set(&cfg, "join_port=70000", &err) < 0);
	assert_int_equal(cfg.join_port, 7900); /* a refused value changes nothing */
	config_free(&cfg);

	/* -s with no file at all starts from the defaults. */
	memset(&cfg, 0, sizeof(cfg));
	assert_int_equal(config_set(&cfg, "event_port=9000", &err), 0);
	assert_int_equal(cfg.event_port, 9000);
	assert_int_equal(cfg.join_port, 7700);
	assert_string_equal(cfg.state_dir, "/var/lib/kumo");
	/* ...and a later config_load(NULL) does not reset what -s set. */
	assert_int_equal(config_load(&cfg, NULL, &err), 0);
	assert_int_equal(cfg.event_port, 9000);
	config_free(&cfg);
}

static void test_loopback(void **state)
{
	assert_true(addr_is_loopback("127.0.0.1:8443"));
	assert_true(addr_is_loopback("127.255.255.254:1"));
	assert_false(addr_is_loopback("128.0.0.1:8443"));
	assert_false(addr_is_loopback("0.0.0.0:8443"));
	assert_false(addr_is_loopback("10.127.0.1:8443"));
	assert_false(addr_is_loopback("127.0.0.1"));
	assert_false(addr_is_loopback("localhost:8443"));
	assert_false(addr_is_loopback("127.0.0.1:99999"));
	assert_false(addr_is_loopback(""));
}

static void test_print_round_trips(void **state)
{
	struct config cfg, again;
	struct kerr err;
	char *text = NULL;
	size_t len = 0;
	FILE *out;

	assert_int_equal(load(&cfg, "join_port = 7123\ntls = off\npidfile = /run/k.pid\n", &err),
			 0);
	out = open_memstream(&text, &len);
	assert_non_null(out);
	config_print(&cfg, out);
	fclose(out);
	assert_non_null(strstr(text, "join_port = 7123\n"));
	assert_non_null(strstr(text, "tls = off\n"));
	/* What -n prints is a valid config file meaning the same. */
	assert_int_equal(load(&again, text, &err), 0);
	assert_int_equal(again.join_port, 7123);
	assert_false(again.tls);
	assert_string_equal(again.pidfile, "/run/k.pid");
	config_free(&again);
	config_free(&cfg);
	free(text);
}

/*
 * Known bug: config_load reads with fgets into a 1024-byte buffer, so the rest of a
 * longer line is parsed as a line of its own - also the rest of a comment line.
 */
static void test_long_comment_line_is_one_line(void **state)
{
	char text[1200];
	struct config cfg;
	struct kerr err;
	bool tls;
	int ret;

	memset(text, 0, sizeof(text));
	text[0] = '#';
	memset(text + 1, 'x', 1022); /* fgets takes 1023 */
	strcat(text, "tls = off\n");
	ret = load(&cfg, text, &err);
	tls = cfg.tls;
	config_free(&cfg);
	/* Either refuse the over-long line, or ignore the whole comment. */
	if (ret == 0)
		assert_true(tls);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_file_values),
		cmocka_unit_test(test_unknown_key_names_file_and_line),
		cmocka_unit_test(test_bad_values_fail),
		cmocka_unit_test(test_missing_file_fails),
		cmocka_unit_test(test_tls_off_needs_loopback_or_insecure),
		cmocka_unit_test(test_check_refuses_bad_combinations),
		cmocka_unit_test(test_set_overrides),
		cmocka_unit_test(test_tls_pair_check),
		cmocka_unit_test(test_loopback),
		cmocka_unit_test(test_print_round_trips),
		cmocka_unit_test(test_long_comment_line_is_one_line),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
