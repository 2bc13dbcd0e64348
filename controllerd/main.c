/*
 * main.c - kumo-controllerd: options, start-up in a fixed order, the loop.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define CRON_MS 250

/* Usage on out; exits with status (0 for --help, 2 for a mistake). */
static void usage(FILE *out, int status)
{
	fprintf(out, "usage: kumo-controllerd [-n] [-c FILE] [-s key=value]...\n"
		     "  -c, --config FILE  configuration file (key = value lines)\n"
		     "  -s, --set K=V      set one option over the file\n"
		     "  -n, --check        check the configuration, print it and exit\n"
		     "  -h, --help         this help\n"
		     "  -V, --version      print the version\n"
		     "\noptions (file keys and -s keys):\n");
	config_usage(out);
	exit(status);
}

/*
 * The one periodic timer. Every tick: long polls whose time is up; a sync of commits
 * no one has waited for yet (heartbeats, facts: group commit, db.c); HA (ha.c: the HA
 * list and view each second, lease reads and failovers each second or, while a host is
 * failing, each tick). Every second: host liveness, overdue agent commands,
 * event-stream keepalives, fact snapshots, streams of expired tokens, API connections
 * past their deadlines, operations whose network wait is over, jobs past their deadline
 * (jobs.c), backup schedules that are due (backup_sched.c), renewing the dashboard's
 * console relays on their agents (console_relay.c). Every tick also measures
 * how late it ran (the loop's lag, for metrics).
 * Every minute: pruning old events and audit rows, checking one stored registry blob.
 * Every hour: abandoned registry uploads.
 */
static void cron_cb(uv_timer_t *t)
{
	static unsigned ticks;
	static int64_t last_us;
	int64_t now = now_us();

	if (last_us)
		metrics_loop_lag((double)(now - last_us - CRON_MS * 1000) / 1e6);
	last_us = now;
	metrics_loop_tick(now + CRON_MS * 1000);
	ticks++;
	api_ops_cron();
	db_group_commit_cron();
	ha_cron(); /* its own cadence: each second, each tick while a host is failing */
	if (ticks % (1000 / CRON_MS) == 0) {
		hosts_check_liveness();
		agentlink_cron();
		api_events_cron();
		hosts_persist(false);
		tokens_cron();
		/* Sockets it shut down are noticed once libmicrohttpd runs. */
		if (http_conns_cron())
			http_kick();
		instances_net_waits_check();
		jobs_cron(now / 1000);
		migrate_net_waits_check(NULL);
		backup_schedules_cron(now / 1000);
		console_relay_cron();
	}
	if (ticks % (60000 / CRON_MS) == 0) {
		events_prune();
		audit_prune();
		oci_blobs_verify_cron();
		usage_cron();
	}
	if (ticks % (3600000 / CRON_MS) == 0)
		oci_uploads_prune();
}

/*
 * Every agent keeps one connection to the event socket, and every pooled command
 * socket (agentlink.c) one more: 5,000 hosts need over 5,000 descriptors, past the
 * usual soft limit of 1,024. Raise the soft limit to the hard one (the systemd unit
 * sets 65,536) and say what it is.
 */
static void fd_limit_raise(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warn("cannot raise the open files limit");
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	log_info("open files limit: %llu (each agent holds one event connection)",
		 (unsigned long long)rl.rlim_cur);
}

/* The API's numbers for /metrics: its connections and event streams. */
static void api_stats(unsigned *open, uint64_t *accepted, uint64_t *timed_out, unsigned *streams)
{
	http_conns_stats(open, accepted, timed_out);
	*streams = api_events_streams();
}

/*
 * The API server stops: every event stream ends, every long poll and console query is
 * answered, so no connection stays suspended, and every WebSocket closes (http_stop()).
 */
static void api_drain(void)
{
	api_events_shutdown();
	api_ops_shutdown();
	registry_shutdown();
	for (struct host *h = ctl.hosts; h; h = h->next)
		agentlink_queries_fail(h, "the controller is stopping");
	ws_close_all();
}

/* How long the store's commits and syncs take, for /metrics. */
static const struct db_timing db_timing = {
	.commit = metrics_db_commit,
	.sync = metrics_db_sync,
};

/* What the agent link hands up: heartbeats, reports, job progress and ends, consoles. */
static const struct agentlink_hooks link_hooks = {
	.heartbeat = host_heartbeat,
	.report = instances_report,
	.progress = migrate_agent_progress,
	.done = jobs_done,
	.nack = jobs_nack,
	.console = console_relay_data,
};

/* What the HTTP transport calls above itself: tokens, the audit log, metrics. */
static const struct http_hooks api_hooks = {
	.authenticate = tokens_check,
	.token_name = tokens_role_of,
	.role_label = role_name,
	.answered = metrics_api_request,
	.ended = audit_record,
};

static void signal_cb(uv_signal_t *s, int signum)
{
	log_info("signal %d: shutting down", signum);
	uv_stop(ctl.loop);
}

static void cluster_id_ensure(void)
{
	unsigned char raw[16];
	struct kerr err;

	if (db_meta_get(ctl.db, "cluster_id", ctl.cluster_id, sizeof(ctl.cluster_id)))
		return;
	random_bytes(raw, sizeof(raw));
	hex_encode(raw, sizeof(raw), ctl.cluster_id);
	if (db_meta_set(ctl.db, "cluster_id", ctl.cluster_id, &err) < 0)
		fatalx("%s", err.msg);
	log_info("cluster %s created", ctl.cluster_id);
}

static void pidfile_write(const char *path)
{
	char buf[32];
	int rc;

	if (path == NULL || path[0] == '\0')
		return;
	snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	rc = file_write_atomic(path, buf, strlen(buf), 0644);
	if (rc < 0)
		fatalx("cannot write pidfile %s: %s", path, strerror(-rc));
}

int main(int argc, char **argv)
{
	const char *conffile = NULL;
	bool check_only = false;
	struct kerr err;
	enum log_level level;
	_cleanup_free_ char *dbpath = NULL;
	char **sets = xcalloc((size_t)argc, sizeof(char *));
	int nsets = 0, c, rc;

	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'}, {"set", required_argument, NULL, 's'},
		{"check", no_argument, NULL, 'n'},	  {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},	  {NULL, 0, NULL, 0},
	};

	while ((c = getopt_long(argc, argv, "c:s:nhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			conffile = optarg;
			break;
		case 's':
			sets[nsets++] = optarg;
			break;
		case 'n':
			check_only = true;
			break;
		case 'h':
			free(sets);
			usage(stdout, 0);
			break;
		case 'V':
			printf("kumo-controllerd %s\n", KUMO_VERSION);
			free(sets);
			return 0;
		default:
			free(sets);
			usage(stderr, 2);
		}
	}
	if (optind != argc) {
		free(sets);
		usage(stderr, 2);
	}
	if (config_load(&ctl.cfg, conffile, &err) < 0)
		fatalx("%s", err.msg);
	for (int i = 0; i < nsets; i++)
		if (config_set(&ctl.cfg, sets[i], &err) < 0)
			fatalx("%s", err.msg);
	free(sets);
	if (config_check(&ctl.cfg, &err) < 0)
		fatalx("configuration: %s", err.msg);
	if (check_only) {
		config_print(&ctl.cfg, stdout);
		fprintf(stderr, "configuration OK\n");
		config_free(&ctl.cfg);
		return 0;
	}
	log_level_parse(ctl.cfg.log_level, &level);
	log_init("kumo-controllerd", level);
	signal(SIGPIPE, SIG_IGN);
	fd_limit_raise();
	ctl.started_at = now_ms();

	/* State first: nothing is served before the database is at the current schema. */
	db_timing_set(&db_timing);
	rc = mkdir_p(ctl.cfg.state_dir, 0700);
	if (rc < 0)
		fatalx("cannot create %s: %s", ctl.cfg.state_dir, strerror(-rc));
	dbpath = xasprintf("%s/kumo.db", ctl.cfg.state_dir);
	if (db_open(&ctl.db, dbpath, &err) < 0 || db_migrate(ctl.db, DB_SCHEMA_VERSION, &err) < 0 ||
	    migrate_db_init(ctl.db, &err) < 0)
		fatalx("%s", err.msg);
	cluster_id_ensure();
	if (tokens_bootstrap(ctl.cfg.state_dir, &err) < 0 ||
	    registry_auth_init(ctl.cfg.state_dir, &err) < 0 ||
	    images_key_load(ctl.cfg.state_dir, &err) < 0)
		fatalx("%s", err.msg);
	/* The self-signed certificate only when the operator gave none. */
	if (ctl.cfg.tls && !ctl.cfg.tls_cert[0] &&
	    tls_ensure(ctl.cfg.state_dir, ctl.cfg.api_listen, &err) < 0)
		fatalx("%s", err.msg);

	/* News travels up by subscription: the API layer hears of finished operations
	 * and events without the layers below calling it; the transport reaches tokens,
	 * audit and metrics through the hooks given here (tests/check_layers.sh). */
	ops_final_hook_set(api_ops_wake);
	ops_rules_set(jobs_timeout_default, jobs_final_status);
	metrics_api_source_set(api_stats);
	events_hook_set(api_events_notify);
	http_hooks_set(&api_hooks);
	agentlink_hooks_set(&link_hooks);
	http_routes_set(api_routes, api_routes_count);
	http_dialect_set(&registry_dialect);

	ctl.loop = uv_default_loop();
	if (ctl.cfg.group_commit && db_group_commit_start(ctl.db, dbpath, ctl.loop, &err) < 0)
		fatalx("%s", err.msg);
	if (hosts_load(&err) < 0)
		fatalx("%s", err.msg);
	if (agentlink_start(&err) < 0 || http_start(&err) < 0)
		fatalx("%s", err.msg);
	p2v_sessions_load(); /* before jobs_resume(): it resumes their operations */
	jobs_resume();
	images_sweep_uploads();
	oci_store_modes_fix(); /* the store's directories, and blobs an older version left 0644 */

	uv_timer_init(ctl.loop, &ctl.cron);
	uv_timer_start(&ctl.cron, cron_cb, CRON_MS, CRON_MS);
	uv_signal_init(ctl.loop, &ctl.sigterm);
	uv_signal_start(&ctl.sigterm, signal_cb, SIGTERM);
	uv_signal_init(ctl.loop, &ctl.sigint);
	uv_signal_start(&ctl.sigint, signal_cb, SIGINT);
	pidfile_write(ctl.cfg.pidfile);
	log_info("kumo-controllerd %s ready: cluster %s, %s", KUMO_VERSION, ctl.cluster_id,
		 ctl.cfg.api_listen);

	uv_run(ctl.loop, UV_RUN_DEFAULT);

	/* Orderly stop: facts to disk, sockets closed, handles closed. */
	hosts_persist(true);
	db_group_commit_stop(); /* answers held for durability go out before the API stops */
	http_stop(api_drain);
	agentlink_stop();
	uv_close((uv_handle_t *)&ctl.cron, NULL);
	uv_close((uv_handle_t *)&ctl.sigterm, NULL);
	uv_close((uv_handle_t *)&ctl.sigint, NULL);
	uv_run(ctl.loop, UV_RUN_DEFAULT);
	instances_net_waits_free();
	netsync_free();
	ha_free();
	hosts_free();
	metrics_free();
	db_close(ctl.db);
	db_group_commit_free();
	if (ctl.cfg.pidfile[0])
		unlink(ctl.cfg.pidfile);
	config_free(&ctl.cfg);
	uv_loop_close(ctl.loop);
	return 0;
}
