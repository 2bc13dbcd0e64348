/*
 * http_conns.c - the API's connections: how many, from whom, and how long each may take
 * to say what it wants.
 *
 * libmicrohttpd's own idle timeout restarts with every byte, so a client sending one byte
 * a second holds a connection for ever, and a thousand of them hold the server. Here
 * every connection is in one phase with a deadline that bytes do not move:
 *
 *   HEADERS  from accept (or from the end of the previous request on a kept-alive
 *            connection) until the request's headers are complete: api_header_timeout;
 *   BODY     until the body is complete: api_body_timeout (bodies are at most max_body;
 *            streamed uploads are exempt once their token was checked);
 *   BUSY     being answered: a handler, a long poll or an event stream, which end by
 *            their own rules.
 *
 * Past its deadline a connection's socket is shut down and libmicrohttpd closes it.
 * When the server is near its connection limit (80 %), connections still waiting for
 * headers get at most HTTP_CONNS_CROWDED_S: that keeps room for clients that say what
 * they want (and prove a token) over clients that only hold sockets. Together with a
 * per-address limit (libmicrohttpd's) one address cannot take the server from the others.
 */
#include <sys/resource.h>
#include <sys/socket.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define HTTP_CONNS_CROWDED_S 5

enum conn_phase {
	CONN_HEADERS,
	CONN_BODY,
	CONN_BUSY,
	CONN_CLOSING
};

struct conn {
	struct conn *prev, *next;
	struct MHD_Connection *mhd;
	int fd;
	enum conn_phase phase;
	int64_t since_ms;
};

static struct conn *conns;
static unsigned conns_open;
static uint64_t conns_timed_out, conns_accepted;

static struct conn *conn_of(struct MHD_Connection *mhd)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(mhd, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return info ? info->socket_context : NULL;
}

static void phase_set(struct MHD_Connection *mhd, enum conn_phase phase)
{
	struct conn *c = conn_of(mhd);

	if (c && c->phase != CONN_CLOSING) {
		c->phase = phase;
		c->since_ms = now_ms();
	}
}

/* MHD_OPTION_NOTIFY_CONNECTION: a connection was accepted or is gone. */
void http_conns_notify_cb(void *cls, struct MHD_Connection *mhd, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	struct conn *c = *socket_context;

	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *info =
			MHD_get_connection_info(mhd, MHD_CONNECTION_INFO_CONNECTION_FD);

		c = xcalloc(1, sizeof(*c));
		c->mhd = mhd;
		c->fd = info ? info->connect_fd : -1;
		c->phase = CONN_HEADERS;
		c->since_ms = now_ms();
		c->next = conns;
		if (conns)
			conns->prev = c;
		conns = c;
		conns_open++;
		conns_accepted++;
		*socket_context = c;
		return;
	}
	if (c == NULL)
		return;
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	conns_open--;
	free(c);
	*socket_context = NULL;
}

/* The request's headers are in: its body (if any) has api_body_timeout from now. */
void http_conns_headers_done(struct MHD_Connection *mhd)
{
	phase_set(mhd, CONN_BODY);
}

/* The request is whole (or is a stream its token allows): no deadline of ours. */
void http_conns_busy(struct MHD_Connection *mhd)
{
	phase_set(mhd, CONN_BUSY);
}

/* The request was answered: a kept-alive connection waits for the next one's headers. */
void http_conns_request_done(struct MHD_Connection *mhd)
{
	phase_set(mhd, CONN_HEADERS);
}

/*
 * Once a second (the controller's cron): shut down connections past their phase's
 * deadline. Returns how many; libmicrohttpd closes them on its next run.
 */
unsigned http_conns_cron(void)
{
	int64_t now = now_ms();
	int64_t header_ms = (int64_t)ctl.cfg.api_header_timeout * 1000;
	int64_t body_ms = (int64_t)ctl.cfg.api_body_timeout * 1000;
	unsigned closed = 0;

	if (conns_open * 5 >= (unsigned)ctl.cfg.api_max_connections * 4 &&
	    header_ms > HTTP_CONNS_CROWDED_S * 1000)
		header_ms = HTTP_CONNS_CROWDED_S * 1000;
	for (struct conn *c = conns; c; c = c->next) {
		int64_t limit = c->phase == CONN_HEADERS ? header_ms
				: c->phase == CONN_BODY	 ? body_ms
							 : -1;

		if (limit < 0 || now - c->since_ms < limit || c->fd < 0)
			continue;
		/* The socket is libmicrohttpd's: shut it down, never close it; its next
		 * read fails and it closes the connection its own way. */
		shutdown(c->fd, SHUT_RDWR);
		c->phase = CONN_CLOSING;
		conns_timed_out++;
		closed++;
	}
	if (closed)
		log_debug("api: closed %u connection(s) that did not send a request in time",
			  closed);
	return closed;
}

/* For metrics: connections open now, accepted in all, and closed for being too slow. */
void http_conns_stats(unsigned *open, uint64_t *accepted, uint64_t *timed_out)
{
	*open = conns_open;
	*accepted = conns_accepted;
	*timed_out = conns_timed_out;
}

/*
 * Make room for api_max_connections descriptors plus the agent link and the database:
 * raise the soft RLIMIT_NOFILE toward the hard limit. Returns 0, or -1 with err when even
 * the hard limit is too small.
 */
int http_conns_rlimit(struct kerr *err)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)ctl.cfg.api_max_connections + 1024;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return err_set(err, errno, "getrlimit");
	if (rl.rlim_cur >= want)
		return 0;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want)
		return err_set(err, 0,
			       "api_max_connections %d needs %llu file descriptors; the hard limit "
			       "is %llu (raise it, e.g. LimitNOFILE=, or lower the option)",
			       ctl.cfg.api_max_connections, (unsigned long long)want,
			       (unsigned long long)rl.rlim_max);
	rl.rlim_cur = want;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return err_set(err, errno, "setrlimit RLIMIT_NOFILE %llu",
			       (unsigned long long)want);
	return 0;
}
