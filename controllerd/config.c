/*
 * config.c - the controller's configuration: one table drives defaults, parsing of
 * the file and of -s key=value flags, validation and the -n printout.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

enum opt_type {
	OPT_STR,
	OPT_BOOL,
	OPT_INT
};

struct option_def {
	const char *name;
	enum opt_type type;
	size_t offset;
	const char *def;
	int min, max; /* OPT_INT only */
	const char *help;
};

#define OFF(f) offsetof(struct config, f)

static const struct option_def options[] = {
	{"state_dir", OPT_STR, OFF(state_dir), "/var/lib/kumo", 0, 0,
	 "database, TLS key and certificate, admin token"},
	{"api_listen", OPT_STR, OFF(api_listen), "127.0.0.1:8443", 0, 0,
	 "address:port of the HTTP API"},
	{"tls", OPT_BOOL, OFF(tls), "on", 0, 0, "serve the API over TLS"},
	{"tls_cert", OPT_STR, OFF(tls_cert), "", 0, 0,
	 "PEM certificate (leaf first, then its chain) to serve; empty: a self-signed one "
	 "in state_dir"},
	{"tls_key", OPT_STR, OFF(tls_key), "", 0, 0, "PEM private key of tls_cert"},
	{"insecure_http", OPT_BOOL, OFF(insecure_http), "no", 0, 0,
	 "allow tls = off on a non-loopback address"},
	{"metrics_public", OPT_BOOL, OFF(metrics_public), "no", 0, 0,
	 "serve GET /metrics without a token (a scraper on a trusted network)"},
	{"audit_keep", OPT_INT, OFF(audit_keep), "100000", 100, 100000000,
	 "audit log rows kept; the oldest are pruned every minute"},
	{"max_streams_per_token", OPT_INT, OFF(max_streams_per_token), "16", 1, 10000,
	 "event streams, log follows and operation long polls one token may hold open"},
	{"link_address", OPT_STR, OFF(link_address), "127.0.0.1", 0, 0,
	 "IPv4 address the agent link binds"},
	{"join_port", OPT_INT, OFF(join_port), "7700", 1, 65535, "port agents join on"},
	{"join_rate", OPT_INT, OFF(join_rate), "5", 1, 100000,
	 "join requests a second, in total, that the link answers (more are dropped)"},
	{"event_port", OPT_INT, OFF(event_port), "7701", 1, 65535,
	 "port agents push heartbeats and events to"},
	{"heartbeat_interval", OPT_INT, OFF(heartbeat_interval), "1", 1, 60,
	 "seconds between agent heartbeats"},
	{"offline_after", OPT_INT, OFF(offline_after), "5", 2, 1000,
	 "missed heartbeats before a host is offline"},
	{"ha_detect_s", OPT_INT, OFF(ha_detect_s), "5", 2, 3600,
	 "HA: seconds without a heartbeat before a host may be failed (if its lease is silent)"},
	{"ha_lease_s", OPT_INT, OFF(ha_lease_s), "3", 2, 3600,
	 "HA: seconds a host's storage lease must stay still before the host is failed"},
	{"ha_lease_expire_s", OPT_INT, OFF(ha_lease_expire_s), "5", 5, 3600,
	 "HA: seconds of a still lease before a failed host's HA instances restart elsewhere; "
	 "never less than the host's fence deadline + 3 s, which decides by default"},
	{"max_body", OPT_INT, OFF(max_body), "1048576", 1024, 1 << 30,
	 "largest request body in bytes"},
	{"api_max_connections", OPT_INT, OFF(api_max_connections), "1024", 16, 1000000,
	 "open API connections at most"},
	{"api_max_connections_per_ip", OPT_INT, OFF(api_max_connections_per_ip), "128", 1, 1000000,
	 "open API connections from one client address at most"},
	{"api_header_timeout", OPT_INT, OFF(api_header_timeout), "30", 1, 3600,
	 "seconds a connection has to send a request's headers, however it trickles them"},
	{"api_body_timeout", OPT_INT, OFF(api_body_timeout), "60", 1, 3600,
	 "seconds a request has to send its body (authorised uploads excepted)"},
	{"p2v_max_sessions", OPT_INT, OFF(p2v_max_sessions), "16", 1, 10000,
	 "P2V ingest sessions receiving or cutting over at once (one more is answered 429)"},
	{"v2v_tcg", OPT_BOOL, OFF(v2v_tcg), "on", 0, 0,
	 "P2V conversion: run virt-v2v's libguestfs appliance under TCG (a /dev/kvm that is "
	 "present but broken, as in nested labs, crashes it); off: KVM where it works"},
	{"group_commit", OPT_BOOL, OFF(group_commit), "on", 0, 0,
	 "commit concurrent writes with one fsync (answers still wait for their data to be on "
	 "disk); off: one fsync per commit, on the loop (for benchmarks)"},
	{"log_level", OPT_STR, OFF(log_level), "info", 0, 0, "error, warn, info or debug"},
	{"pidfile", OPT_STR, OFF(pidfile), "", 0, 0, "write the daemon's pid here"},
	{"shared_pool", OPT_STR, OFF(shared_pool), "/var/lib/kumo/shared", 0, 0,
	 "shared storage every host mounts at the same path; images live here"},
	{"cpu_overcommit", OPT_STR, OFF(cpu_overcommit), "4.0", 0, 0,
	 "vCPUs the scheduler may place per host CPU"},
	{"mem_overcommit", OPT_STR, OFF(mem_overcommit), "1.0", 0, 0,
	 "guest memory the scheduler may place per MiB of host memory"},
	{"sched_policy", OPT_STR, OFF(sched_policy), "spread", 0, 0,
	 "spread (least loaded host first) or pack (fullest host that fits)"},
};

static bool parse_bool(const char *s, bool *out)
{
	if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "1"))
		*out = true;
	else if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "0"))
		*out = false;
	else
		return false;
	return true;
}

static int option_apply(struct config *cfg, const char *name, const char *value, struct kerr *err)
{
	for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
		const struct option_def *o = &options[i];
		void *field = (char *)cfg + o->offset;

		if (strcmp(o->name, name) != 0)
			continue;
		switch (o->type) {
		case OPT_STR:
			free(*(char **)field);
			*(char **)field = xstrdup(value);
			return 0;
		case OPT_BOOL:
			if (!parse_bool(value, (bool *)field))
				return err_set(err, 0, "%s: '%s' is not on/off", name, value);
			return 0;
		case OPT_INT: {
			char *end;
			long v;

			errno = 0;
			v = strtol(value, &end, 10);
			if (errno || end == value || *end || v < o->min || v > o->max)
				return err_set(err, 0, "%s: '%s' is not an integer in %d..%d", name,
					       value, o->min, o->max);
			*(int *)field = (int)v;
			return 0;
		}
		}
	}
	return err_set(err, 0, "unknown option '%s'", name);
}

static void config_defaults(struct config *cfg)
{
	if (cfg->state_dir)
		return;
	for (size_t i = 0; i < ARRAY_SIZE(options); i++)
		if (option_apply(cfg, options[i].name, options[i].def, NULL) < 0)
			fatalx("config: bad default for %s", options[i].name);
}

static char *trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

/*
 * Load defaults, then the file at path (if not NULL). Lines are "key = value";
 * '#' starts a comment. Errors name the file and line.
 */
int config_load(struct config *cfg, const char *path, struct kerr *err)
{
	char line[1024];
	FILE *f;
	int lineno = 0;

	config_defaults(cfg);
	if (path == NULL)
		return 0;
	f = fopen(path, "re");
	if (f == NULL)
		return err_set(err, errno, "cannot open %s", path);
	while (fgets(line, sizeof(line), f)) {
		char *hash, *eq, *s;
		struct kerr e;

		lineno++;
		/* A line longer than the buffer would be read as two: refuse it whole. */
		if (strchr(line, '\n') == NULL && !feof(f)) {
			fclose(f);
			return err_set(err, 0, "%s:%d: line is longer than %zu bytes", path, lineno,
				       sizeof(line) - 2);
		}
		if ((hash = strchr(line, '#')))
			*hash = '\0';
		s = trim(line);
		if (*s == '\0')
			continue;
		eq = strchr(s, '=');
		if (eq == NULL) {
			fclose(f);
			return err_set(err, 0, "%s:%d: expected 'key = value'", path, lineno);
		}
		*eq = '\0';
		if (option_apply(cfg, trim(s), trim(eq + 1), &e) < 0) {
			fclose(f);
			return err_set(err, 0, "%s:%d: %s", path, lineno, e.msg);
		}
	}
	fclose(f);
	return 0;
}

/* Apply one "key=value" from the command line over what the file said. */
int config_set(struct config *cfg, const char *kv, struct kerr *err)
{
	_cleanup_free_ char *copy = xstrdup(kv);
	char *eq = strchr(copy, '=');

	config_defaults(cfg);
	if (eq == NULL)
		return err_set(err, 0, "-s takes key=value, not '%s'", kv);
	*eq = '\0';
	return option_apply(cfg, trim(copy), trim(eq + 1), err);
}

static int split_hostport(const char *hp, char *host, size_t hostlen, int *port)
{
	const char *colon = strrchr(hp, ':');
	char *end;
	long p;

	if (colon == NULL || (size_t)(colon - hp) >= hostlen)
		return -1;
	memcpy(host, hp, (size_t)(colon - hp));
	host[colon - hp] = '\0';
	p = strtol(colon + 1, &end, 10);
	if (*end || p < 1 || p > 65535)
		return -1;
	*port = (int)p;
	return 0;
}

bool addr_is_loopback(const char *hostport)
{
	char host[64];
	struct in_addr a;
	int port;

	if (split_hostport(hostport, host, sizeof(host), &port) < 0 ||
	    inet_pton(AF_INET, host, &a) != 1)
		return false;
	return (ntohl(a.s_addr) >> 24) == 127;
}

static int parse_ratio(const char *s, double *out)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || *end || !(v >= 0.1 && v <= 64))
		return -1;
	*out = v;
	return 0;
}

/* Check the combination of options; the daemon refuses to start on any error. */
int config_check(struct config *cfg, struct kerr *err)
{
	char host[64];
	struct in_addr a;
	int port;
	enum log_level lvl;

	if (cfg->state_dir[0] != '/')
		return err_set(err, 0, "state_dir must be an absolute path");
	if (split_hostport(cfg->api_listen, host, sizeof(host), &port) < 0 ||
	    inet_pton(AF_INET, host, &a) != 1)
		return err_set(err, 0, "api_listen must be IPv4-address:port, not '%s'",
			       cfg->api_listen);
	if (!cfg->tls && !cfg->insecure_http && !addr_is_loopback(cfg->api_listen))
		return err_set(err, 0,
			       "tls = off on non-loopback address %s would send tokens in clear; "
			       "set insecure_http = yes to allow it",
			       cfg->api_listen);
	if (!cfg->tls_cert[0] != !cfg->tls_key[0])
		return err_set(err, 0, "tls_cert and tls_key go together: set both or neither");
	if (cfg->tls && cfg->tls_cert[0] && tls_pair_check(cfg->tls_cert, cfg->tls_key, err) < 0)
		return -1;
	if (inet_pton(AF_INET, cfg->link_address, &a) != 1)
		return err_set(err, 0, "link_address must be an IPv4 address, not '%s'",
			       cfg->link_address);
	if (cfg->join_port == cfg->event_port)
		return err_set(err, 0, "join_port and event_port must differ");
	if (log_level_parse(cfg->log_level, &lvl) < 0)
		return err_set(err, 0, "log_level must be error, warn, info or debug");
	if (cfg->shared_pool[0] != '/')
		return err_set(err, 0, "shared_pool must be an absolute path");
	if (parse_ratio(cfg->cpu_overcommit, &cfg->cpu_ratio) < 0)
		return err_set(err, 0, "cpu_overcommit must be a number in 0.1..64, not '%s'",
			       cfg->cpu_overcommit);
	if (parse_ratio(cfg->mem_overcommit, &cfg->mem_ratio) < 0)
		return err_set(err, 0, "mem_overcommit must be a number in 0.1..64, not '%s'",
			       cfg->mem_overcommit);
	if (strcmp(cfg->sched_policy, "spread") && strcmp(cfg->sched_policy, "pack"))
		return err_set(err, 0, "sched_policy must be spread or pack");
	return 0;
}

/* Print the effective configuration in the file's own syntax. */
void config_print(const struct config *cfg, FILE *out)
{
	for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
		const struct option_def *o = &options[i];
		const void *field = (const char *)cfg + o->offset;

		fprintf(out, "# %s\n", o->help);
		switch (o->type) {
		case OPT_STR:
			fprintf(out, "%s = %s\n", o->name, *(char *const *)field);
			break;
		case OPT_BOOL:
			fprintf(out, "%s = %s\n", o->name, *(const bool *)field ? "on" : "off");
			break;
		case OPT_INT:
			fprintf(out, "%s = %d\n", o->name, *(const int *)field);
			break;
		}
	}
}

/* The options for --help: name, default, what it does. */
void config_usage(FILE *out)
{
	for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
		const struct option_def *o = &options[i];

		fprintf(out, "  %-20s %s (default: %s)\n", o->name, o->help,
			o->def[0] ? o->def : "none");
	}
}

void config_free(struct config *cfg)
{
	for (size_t i = 0; i < ARRAY_SIZE(options); i++)
		if (options[i].type == OPT_STR) {
			char **p = (char **)((char *)cfg + options[i].offset);

			free(*p);
			*p = NULL;
		}
}
