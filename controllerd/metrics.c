/*
 * metrics.c - GET /metrics in the Prometheus text format: hosts by state, heartbeat
 * age per host, API requests by route and status and their latency, connections,
 * event streams, operations by kind and status, agent-link messages by type and those
 * rejected by reason, the agent-link command sockets by state, database commit
 * time, loop lag, and the process's descriptors and memory.
 */
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "controllerd.h"
#include "util.h"

/* The API layer's numbers (main.c sets the source: metrics calls no API code). */
static void (*api_stats)(unsigned *open, uint64_t *accepted, uint64_t *timed_out,
			 unsigned *streams);

/* Set where the API connection and event-stream numbers come from. */
void metrics_api_source_set(void (*fn)(unsigned *open, uint64_t *accepted, uint64_t *timed_out,
				       unsigned *streams))
{
	api_stats = fn;
}

struct counter {
	char *labels; /* the {...} part, formatted once */
	uint64_t n;
	struct counter *next;
};

static struct counter *api_requests, *link_rejected, *link_messages, *link_heartbeats;

/* Latency buckets (seconds), shared by every histogram here. */
static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
				 0.1,	0.25,	0.5,   1,    2.5,   5};
#define NBUCKETS ARRAY_SIZE(buckets)
/* Commits per fsync of the commit queue (db.c): as many buckets as the latency ones. */
static const double batch_buckets[NBUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};

struct histogram {
	char *labels;	      /* inside the braces, without them: method="GET",route="..." */
	const double *bounds; /* buckets, or batch_buckets */
	uint64_t counts[NBUCKETS + 1];
	uint64_t n;
	double sum;
	struct histogram *next;
};

static struct histogram *api_latency, *db_commits, *db_syncs, *db_batches;
static double loop_lag_max;	 /* s, the largest since the last scrape */
static uint64_t netsync_builds;	 /* network documents built (netsync.c) */
static int64_t loop_tick_due_us; /* when the cron's next tick is due (now_us() clock) */

static void histogram_observe_in(struct histogram **list, const double *bounds, const char *labels,
				 double v)
{
	struct histogram *h;
	size_t i;

	for (h = *list; h; h = h->next)
		if (strcmp(h->labels, labels) == 0)
			break;
	if (h == NULL) {
		h = xcalloc(1, sizeof(*h));
		h->labels = xstrdup(labels);
		h->bounds = bounds;
		h->next = *list;
		*list = h;
	}
	for (i = 0; i < NBUCKETS && v > bounds[i]; i++)
		;
	h->counts[i]++;
	h->n++;
	h->sum += v;
}

static void histogram_observe(struct histogram **list, const char *labels, double v)
{
	histogram_observe_in(list, buckets, labels, v);
}

static void counter_add(struct counter **list, const char *labels)
{
	struct counter *c;

	for (c = *list; c; c = c->next)
		if (strcmp(c->labels, labels) == 0)
			break;
	if (c == NULL) {
		c = xcalloc(1, sizeof(*c));
		c->labels = xstrdup(labels);
		c->next = *list;
		*list = c;
	}
	c->n++;
}

void metrics_api_request(const char *method, const char *route, unsigned status, double seconds)
{
	char labels[256], hlabels[256];

	static const char *const methods[] = {"GET",	"POST", "PUT",	  "PATCH",
					      "DELETE", "HEAD", "OPTIONS"};
	const char *m = "OTHER";

	/* route is a pattern from the route table; any method outside the known few is
	 * OTHER, so clients cannot grow the exposition without bound. */
	for (size_t i = 0; i < ARRAY_SIZE(methods); i++)
		if (!strcmp(method, methods[i]))
			m = methods[i];
	snprintf(labels, sizeof(labels), "{method=\"%s\",route=\"%s\",code=\"%u\"}", m, route,
		 status);
	counter_add(&api_requests, labels);
	snprintf(hlabels, sizeof(hlabels), "method=\"%s\",route=\"%s\"", m, route);
	histogram_observe(&api_latency, hlabels, seconds);
}

/* A message from an agent, by type (a name from the link's own table). */
void metrics_link_message(const char *type)
{
	char labels[128];

	snprintf(labels, sizeof(labels), "{type=\"%s\"}", type);
	counter_add(&link_messages, labels);
}

/* A heartbeat, by what its facts were: "whole", "unchanged" (the digest only, the
 * one the controller has) or "unknown" (a digest the controller lacks). */
void metrics_heartbeat(const char *facts)
{
	char labels[64];

	snprintf(labels, sizeof(labels), "{facts=\"%s\"}", facts);
	counter_add(&link_heartbeats, labels);
}

void metrics_db_commit(double seconds)
{
	histogram_observe(&db_commits, "", seconds);
}

/* One fsync of the commit queue (db.c): how long it took and how many commits it made
 * durable together. */
void metrics_db_sync(double seconds, double commits)
{
	histogram_observe(&db_syncs, "", seconds);
	histogram_observe_in(&db_batches, batch_buckets, "", commits);
}

/* How late the cron timer ran: the loop was busy that long with something else. */
void metrics_loop_lag(double seconds)
{
	if (seconds > loop_lag_max)
		loop_lag_max = seconds;
}

/* netsync.c built a host's network document (a query, JSON and a SHA-256): at
 * thousands of hosts how often that happens decides the controller's idle cost. */
void metrics_netsync_build(void)
{
	netsync_builds++;
}

/* The cron ran; its next tick is due at due_us. A scrape while the loop is held (and
 * the cron cannot measure anything) reports how overdue that tick is. */
void metrics_loop_tick(int64_t due_us)
{
	loop_tick_due_us = due_us;
}

void metrics_link_rejected(const char *reason)
{
	char labels[128];

	snprintf(labels, sizeof(labels), "{reason=\"%s\"}", reason);
	counter_add(&link_rejected, labels);
}

struct buf {
	char *p;
	size_t len, cap;
};

static void bprintf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bprintf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if ((size_t)n < b->cap - b->len)
			break;
		b->cap = (b->cap + (size_t)n) * 2;
		b->p = xrealloc(b->p, b->cap);
	}
	b->len += (size_t)n;
}

static void histogram_render(struct buf *b, const char *name, struct histogram *list)
{
	for (struct histogram *h = list; h; h = h->next) {
		uint64_t cum = 0;
		const char *sep = h->labels[0] ? "," : "";

		for (size_t i = 0; i < NBUCKETS; i++) {
			cum += h->counts[i];
			bprintf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, h->labels, sep,
				h->bounds[i], (unsigned long long)cum);
		}
		bprintf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, h->labels, sep,
			(unsigned long long)h->n);
		if (h->labels[0]) {
			bprintf(b, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, h->labels, h->sum,
				name, h->labels, (unsigned long long)h->n);
		} else {
			bprintf(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name,
				(unsigned long long)h->n);
		}
	}
}

/* Open descriptors (entries of /proc/self/fd, less the one reading it) and RSS. */
static void process_render(struct buf *b)
{
	long pages = 0, rss = 0;
	int fds = -1;
	DIR *d = opendir("/proc/self/fd");
	FILE *f = fopen("/proc/self/statm", "r");

	if (d) {
		while (readdir(d))
			fds++;
		closedir(d);
		fds -= 2; /* "." and ".." */
	}
	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	bprintf(b,
		"# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\n"
		"process_open_fds %d\n"
		"# HELP process_resident_memory_bytes Resident memory.\n"
		"# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %ld\n",
		fds, rss * sysconf(_SC_PAGESIZE));
}

/* The whole exposition as a malloc'd string. */
char *metrics_render(void)
{
	struct buf b = {.p = xmalloc(4096), .cap = 4096};
	int64_t now = now_ms();
	int online = 0, offline = 0;
	sqlite3_stmt *st;

	for (struct host *h = ctl.hosts; h; h = h->next)
		h->state == HOST_ONLINE ? online++ : offline++;
	bprintf(&b,
		"# HELP kumo_hosts Hosts known to the controller, by state.\n"
		"# TYPE kumo_hosts gauge\n"
		"kumo_hosts{state=\"online\"} %d\nkumo_hosts{state=\"offline\"} %d\n",
		online, offline);
	{
		/* The command socket pool (agentlink.c). A host that holds a socket with
		 * nothing to send counts as busy: one that stays so is lost to the pool. */
		int busy = 0, idle = 0, waiting = 0;

		for (struct host *h = ctl.hosts; h; h = h->next) {
			if (h->req_sock >= 0)
				h->req_idle ? idle++ : busy++;
			if (h->req_waiting)
				waiting++;
		}
		bprintf(&b,
			"# HELP kumo_link_command_sockets Command sockets to agents open, by "
			"state: busy (a command in flight or queued) or idle (kept for reuse).\n"
			"# TYPE kumo_link_command_sockets gauge\n"
			"kumo_link_command_sockets{state=\"busy\"} %d\n"
			"kumo_link_command_sockets{state=\"idle\"} %d\n"
			"# HELP kumo_link_hosts_waiting_for_socket Hosts with commands waiting "
			"for a command socket (the pool is full).\n"
			"# TYPE kumo_link_hosts_waiting_for_socket gauge\n"
			"kumo_link_hosts_waiting_for_socket %d\n",
			busy, idle, waiting);
	}
	bprintf(&b, "# HELP kumo_host_heartbeat_age_seconds Time since the host's last heartbeat.\n"
		    "# TYPE kumo_host_heartbeat_age_seconds gauge\n");
	for (struct host *h = ctl.hosts; h; h = h->next)
		bprintf(&b, "kumo_host_heartbeat_age_seconds{host=\"%s\"} %.3f\n", h->name,
			(double)(now - h->last_seen) / 1000.0);
	bprintf(&b, "# HELP kumo_api_requests_total API requests answered, by route and status.\n"
		    "# TYPE kumo_api_requests_total counter\n");
	for (struct counter *c = api_requests; c; c = c->next)
		bprintf(&b, "kumo_api_requests_total%s %llu\n", c->labels,
			(unsigned long long)c->n);
	bprintf(&b, "# HELP kumo_api_request_duration_seconds Time from a request's headers to "
		    "its answer being queued, by route.\n"
		    "# TYPE kumo_api_request_duration_seconds histogram\n");
	histogram_render(&b, "kumo_api_request_duration_seconds", api_latency);
	{
		unsigned open;
		uint64_t accepted, timed_out;

		unsigned streams = 0;

		open = 0, accepted = timed_out = 0;
		if (api_stats)
			api_stats(&open, &accepted, &timed_out, &streams);
		bprintf(&b,
			"# HELP kumo_api_connections Open API connections.\n"
			"# TYPE kumo_api_connections gauge\nkumo_api_connections %u\n"
			"# HELP kumo_api_connections_accepted_total API connections accepted.\n"
			"# TYPE kumo_api_connections_accepted_total counter\n"
			"kumo_api_connections_accepted_total %llu\n"
			"# HELP kumo_api_connections_timed_out_total API connections closed for "
			"not sending a request in time.\n"
			"# TYPE kumo_api_connections_timed_out_total counter\n"
			"kumo_api_connections_timed_out_total %llu\n"
			"# HELP kumo_event_streams Open event streams (SSE clients).\n"
			"# TYPE kumo_event_streams gauge\nkumo_event_streams %u\n",
			open, (unsigned long long)accepted, (unsigned long long)timed_out, streams);
	}
	bprintf(&b, "# HELP kumo_operations Operations in the database, by kind and status.\n"
		    "# TYPE kumo_operations gauge\n");
	st = db_prepare(ctl.db,
			"SELECT kind, status, count(*) FROM operations GROUP BY kind, status");
	while (sqlite3_step(st) == SQLITE_ROW)
		bprintf(&b, "kumo_operations{kind=\"%s\",status=\"%s\"} %lld\n",
			sqlite3_column_text(st, 0), sqlite3_column_text(st, 1),
			(long long)sqlite3_column_int64(st, 2));
	sqlite3_finalize(st);
	bprintf(&b, "# HELP kumo_link_rejected_total Agent-link messages dropped, by reason.\n"
		    "# TYPE kumo_link_rejected_total counter\n");
	for (struct counter *c = link_rejected; c; c = c->next)
		bprintf(&b, "kumo_link_rejected_total%s %llu\n", c->labels,
			(unsigned long long)c->n);
	bprintf(&b, "# HELP kumo_link_messages_total Messages from agents, by type.\n"
		    "# TYPE kumo_link_messages_total counter\n");
	for (struct counter *c = link_messages; c; c = c->next)
		bprintf(&b, "kumo_link_messages_total%s %llu\n", c->labels,
			(unsigned long long)c->n);
	bprintf(&b, "# HELP kumo_link_heartbeats_total Heartbeats, by their facts: whole, "
		    "unchanged (a known digest only) or unknown (a digest not known here).\n"
		    "# TYPE kumo_link_heartbeats_total counter\n");
	for (struct counter *c = link_heartbeats; c; c = c->next)
		bprintf(&b, "kumo_link_heartbeats_total%s %llu\n", c->labels,
			(unsigned long long)c->n);
	bprintf(&b, "# HELP kumo_db_commit_duration_seconds Time of each database commit.\n"
		    "# TYPE kumo_db_commit_duration_seconds histogram\n");
	histogram_render(&b, "kumo_db_commit_duration_seconds", db_commits);
	bprintf(&b, "# HELP kumo_db_sync_duration_seconds Time of each fsync that makes a "
		    "batch of commits durable (group commit).\n"
		    "# TYPE kumo_db_sync_duration_seconds histogram\n");
	histogram_render(&b, "kumo_db_sync_duration_seconds", db_syncs);
	bprintf(&b, "# HELP kumo_db_sync_batch_commits Commits made durable by each fsync.\n"
		    "# TYPE kumo_db_sync_batch_commits histogram\n");
	histogram_render(&b, "kumo_db_sync_batch_commits", db_batches);
	bprintf(&b,
		"# HELP kumo_netsync_doc_builds_total Network documents built for hosts.\n"
		"# TYPE kumo_netsync_doc_builds_total counter\nkumo_netsync_doc_builds_total "
		"%llu\n",
		(unsigned long long)netsync_builds);
	bprintf(&b,
		"# HELP kumo_loop_lag_seconds The longest delay of the controller's timer "
		"since the last scrape: how long the loop was held by other work.\n"
		"# TYPE kumo_loop_lag_seconds gauge\nkumo_loop_lag_seconds %.6f\n",
		loop_tick_due_us && (double)(now_us() - loop_tick_due_us) / 1e6 > loop_lag_max
			? (double)(now_us() - loop_tick_due_us) / 1e6
			: loop_lag_max);
	loop_lag_max = 0;
	process_render(&b);
	bprintf(&b,
		"# HELP kumo_uptime_seconds Seconds since the controller started.\n"
		"# TYPE kumo_uptime_seconds gauge\nkumo_uptime_seconds %lld\n",
		(long long)((now - ctl.started_at) / 1000));
	return b.p;
}

static void list_free(struct counter *c)
{
	while (c) {
		struct counter *next = c->next;

		free(c->labels);
		free(c);
		c = next;
	}
}

static void histograms_free(struct histogram *h)
{
	while (h) {
		struct histogram *next = h->next;

		free(h->labels);
		free(h);
		h = next;
	}
}

void metrics_free(void)
{
	list_free(api_requests);
	list_free(link_rejected);
	list_free(link_messages);
	list_free(link_heartbeats);
	histograms_free(api_latency);
	histograms_free(db_commits);
	histograms_free(db_syncs);
	histograms_free(db_batches);
	api_requests = link_rejected = link_messages = link_heartbeats = NULL;
	api_latency = db_commits = db_syncs = db_batches = NULL;
}
