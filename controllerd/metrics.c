/*
 * metrics.c - GET /metrics in the Prometheus text format: hosts by state, heartbeat
 * age per host, API requests by route and status, operations by kind and status,
 * and agent-link messages rejected by reason.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "util.h"

struct counter {
	char *labels; /* the {...} part, formatted once */
	uint64_t n;
	struct counter *next;
};

static struct counter *api_requests, *link_rejected;

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

void metrics_api_request(const char *method, const char *route, unsigned status)
{
	char labels[256];

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

void metrics_free(void)
{
	list_free(api_requests);
	list_free(link_rejected);
	api_requests = link_rejected = NULL;
}
