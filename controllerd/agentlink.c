/*
 * agentlink.c - the controller's end of the agent link (nanomsg over TCP).
 *
 *   join socket   NN_REP  link_address:join_port   clear JSON join requests
 *   event socket  NN_PULL link_address:event_port  sealed heartbeats and op events
 *   per host      NN_REQ  -> the agent's NN_REP    sealed commands, acked at once
 *
 * The command sockets are a pool. nanomsg allows 512 sockets in a process
 * (NN_MAX_SOCKETS, fixed when libnanomsg is built), so one NN_REQ per host stops at a
 * few hundred hosts. A host gets its socket when it has a command to send and keeps
 * it while it is idle, until a host that needs one finds the pool full: then the
 * least recently used idle socket is closed for it. A host whose commands find no
 * socket at all (REQ_SOCKS_MAX hosts busy at once) waits for the next one that idles.
 *
 * Every socket's readiness comes from its NN_RCVFD through a uv_poll, so the loop
 * never blocks on the link. A message that fails any check is dropped, logged and
 * counted in kumo_link_rejected_total. One that passes goes up through the hooks
 * main.c set (agentlink_hooks_set()): the link calls no job, instance or console code
 * by name.
 */
#include <errno.h>
#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>
#include <nanomsg/reqrep.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "token.h"
#include "util.h"
#include "valid.h"

#define CMD_TIMEOUT_MS 5000
/* Command sockets open at most: below NN_MAX_SOCKETS (512) with room for the join and
 * event sockets and for the few a process's libraries may open. */
#define REQ_SOCKS_MAX	448
#define EVENTS_PER_TURN 64

static int join_sock = -1, event_sock = -1;
static const struct agentlink_hooks *hooks; /* who hears what the agents say (main.c) */

/* Hand what the agents say to h (the caller's, for good); before agentlink_start(). */
void agentlink_hooks_set(const struct agentlink_hooks *h)
{
	hooks = h;
}
static int req_open; /* command sockets open now */
static uv_poll_t join_poll, event_poll;

static int sock_rcvfd(int sock)
{
	int fd;
	size_t sz = sizeof(fd);

	if (nn_getsockopt(sock, NN_SOL_SOCKET, NN_RCVFD, &fd, &sz) < 0)
		return -1;
	return fd;
}

/* A token bucket: at most burst at once, refilled at per_s a second. */
struct bucket {
	double tokens;
	int64_t at; /* ms; 0: never used (full) */
};

static bool bucket_take(struct bucket *b, double per_s, double burst, int64_t now)
{
	if (b->at == 0)
		b->tokens = burst;
	else
		b->tokens += (double)(now - b->at) * per_s / 1000.0;
	if (b->tokens > burst)
		b->tokens = burst;
	b->at = now;
	if (b->tokens < 1.0)
		return false;
	b->tokens -= 1.0;
	return true;
}

/*
 * Rejections are logged at most REJECT_LOG_PER_S a second (bursts of REJECT_LOG_BURST),
 * so a peer sending garbage cannot fill the log; every one is counted.
 */
#define REJECT_LOG_PER_S 10.0
#define REJECT_LOG_BURST 50.0

static struct bucket reject_log;
static uint64_t reject_unlogged;

static void reject(const char *reason, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reject(const char *reason, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	metrics_link_rejected(reason);
	if (!bucket_take(&reject_log, REJECT_LOG_PER_S, REJECT_LOG_BURST, now_ms())) {
		reject_unlogged++;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (reject_unlogged > 0)
		log_warnx("link: %llu more rejected messages were not logged (too many)",
			  (unsigned long long)reject_unlogged);
	reject_unlogged = 0;
	log_warnx("link: rejected message: %s", msg);
}

/* ---- joining ---- */

/*
 * Join requests are the one unauthenticated work the link does (JSON, a token lookup,
 * an HMAC, a transaction), so token buckets bound them: in total, and per host name a
 * request claims (nanomsg does not tell a socket's peer address, so the name stands
 * for the source; the total bounds an attacker who varies it). A request over either
 * limit gets no answer at all (a REP socket may drop a request): a real agent's join
 * times out and tries again (AGENT_JOIN_RETRY_S), where a refusal would make it give
 * up. Counted as rejected "rate-limited", logged at most once a second. The total is
 * the config's join_rate (a cluster joining hundreds of hosts at once raises it); the
 * burst is four seconds of it.
 */
#define JOIN_NAME_RATE_PER_S 0.5
#define JOIN_NAME_BURST	     3.0
#define JOIN_NAMES_TRACKED   64

static struct bucket join_all;
static struct {
	char name[SEAL_HOST_MAX + 1];
	struct bucket b;
} join_names[JOIN_NAMES_TRACKED];
static int64_t join_limited_logged;

/* The bucket of name: its own, or the least recently used one taken over. */
static struct bucket *join_name_bucket(const char *name)
{
	size_t oldest = 0;

	for (size_t i = 0; i < JOIN_NAMES_TRACKED; i++) {
		if (strcmp(join_names[i].name, name) == 0 && join_names[i].b.at != 0)
			return &join_names[i].b;
		if (join_names[i].b.at < join_names[oldest].b.at)
			oldest = i;
	}
	snprintf(join_names[oldest].name, sizeof(join_names[oldest].name), "%s", name);
	join_names[oldest].b = (struct bucket){0};
	return &join_names[oldest].b;
}

/* May a join request (claiming name, or NULL before it is read) go on? */
static bool join_allowed(const char *name)
{
	int64_t now = now_ms();
	bool ok = name ? bucket_take(join_name_bucket(name), JOIN_NAME_RATE_PER_S, JOIN_NAME_BURST,
				     now)
		       : bucket_take(&join_all, ctl.cfg.join_rate, ctl.cfg.join_rate * 4.0, now);

	if (ok)
		return true;
	metrics_link_rejected("rate-limited");
	if (now - join_limited_logged >= 1000) {
		log_warnx("link: rejected message: join requests over the limit%s%s%s (%g/s in "
			  "total, %g/s per name); dropped unanswered",
			  name ? " for name '" : "", name ? name : "", name ? "'" : "",
			  (double)ctl.cfg.join_rate, JOIN_NAME_RATE_PER_S);
		join_limited_logged = now;
	}
	return false;
}

static int pubkey_check(struct json_object *v, const char *field, struct kerr *err)
{
	unsigned char k[SEAL_PUB_LEN];

	if (hex_decode(json_object_get_string(v), k, sizeof(k)) < 0)
		return err_input(err, 400, field, "'%s' must be 64 hex characters", field);
	return 0;
}

static int join_addr_check(struct json_object *v, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strncmp(s, "tcp://", 6) != 0 || strlen(s) > 64)
		return err_input(err, 400, field, "'%s' must be tcp://address:port", field);
	return 0;
}

static int type_join_check(struct json_object *v, const char *field, struct kerr *err)
{
	if (strcmp(json_object_get_string(v), "join") != 0)
		return err_input(err, 400, field, "'%s' must be \"join\"", field);
	return 0;
}

static int proof_check(struct json_object *v, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strlen(s) != TOKEN_DIGEST_LEN || strspn(s, "0123456789abcdef") != TOKEN_DIGEST_LEN)
		return err_input(err, 400, field, "'%s' must be %d lower-case hex characters",
				 field, TOKEN_DIGEST_LEN);
	return 0;
}

static const struct json_field join_fields[] = {
	{"type", JK_STRING, true, type_join_check},
	{"version", JK_INT, true, NULL},
	{"proof", JK_STRING, true, proof_check},
	{"name", JK_STRING, true, name_check},
	{"pubkey", JK_STRING, true, pubkey_check},
	{"addr", JK_STRING, true, join_addr_check},
	{NULL, 0, false, NULL},
};
const struct json_field *const agentlink_join_fields = join_fields;

static void join_reply(struct json_object *reply)
{
	const char *text = json_text(reply);

	if (nn_send(join_sock, text, strlen(text), NN_DONTWAIT) < 0)
		log_warnx("link: cannot answer a join: %s", nn_strerror(nn_errno()));
	json_object_put(reply);
}

static void join_refuse(const char *why)
{
	struct json_object *r = json_object_new_object();

	json_object_object_add(r, "ok", json_object_new_boolean(0));
	json_object_object_add(r, "error", json_object_new_string(why));
	join_reply(r);
}

/*
 * One join request: check it, consume the token and record the host in one
 * transaction (durable before the answer), derive the link key, answer.
 */
static void join_handle(const char *text, size_t len)
{
	unsigned char priv[SEAL_KEY_LEN], pub[SEAL_PUB_LEN], peer[SEAL_PUB_LEN], key[SEAL_KEY_LEN];
	unsigned char salt[32];
	char pubhex[2 * SEAL_PUB_LEN + 1], info[160];
	struct json_object *req, *r, *ev;
	const char *proof, *name, *addr, *agent_pubhex;
	char confirm[TOKEN_DIGEST_LEN + 1];
	struct kerr err;
	int64_t id;
	struct host *h;

	req = NULL;
	if (json_body_parse(text, len, &req, &err) < 0 ||
	    json_fields_check(req, join_fields, &err) < 0) {
		json_object_put(req);
		reject("malformed", "join request: %s", err.msg);
		join_refuse(err.msg);
		return;
	}
	if (json_get_int(req, "version", 0) != LINK_PROTO_VERSION) {
		reject("malformed", "join request: protocol version %lld",
		       (long long)json_get_int(req, "version", 0));
		join_refuse("unsupported link protocol version");
		json_object_put(req);
		return;
	}
	proof = json_get_str(req, "proof", "");
	name = json_get_str(req, "name", "");
	if (!join_allowed(name)) {
		json_object_put(req);
		return;
	}
	addr = json_get_str(req, "addr", "");
	agent_pubhex = json_get_str(req, "pubkey", "");
	hex_decode(agent_pubhex, peer, sizeof(peer));

	if (db_begin(ctl.db) < 0) {
		join_refuse("controller database is busy; try again");
		json_object_put(req);
		return;
	}
	/* The token's digest is the proof's key and the link key's salt: only an agent
	 * that holds the token can use what this answer brings. */
	if (tokens_join_prove(proof, name, agent_pubhex, addr, salt, &err) < 0) {
		db_rollback(ctl.db);
		OPENSSL_cleanse(salt, sizeof(salt));
		reject("join-refused", "join from %s: %s", name, err.msg);
		join_refuse(err.msg);
		json_object_put(req);
		return;
	}
	snprintf(info, sizeof(info), "kumo-link-v1 %s %s", ctl.cluster_id, name);
	if (seal_keypair(priv, pub, &err) < 0 ||
	    seal_derive(priv, peer, salt, sizeof(salt), info, key, &err) < 0) {
		db_rollback(ctl.db);
		reject("malformed", "join from %s: %s", name, err.msg);
		join_refuse(err.msg);
		json_object_put(req);
		return;
	}
	h = host_find(name);
	if (host_join(name, key, addr, &id, &err) < 0 || db_commit(ctl.db, &err) < 0) {
		db_rollback(ctl.db);
		log_warnx("link: join from %s failed: %s", name, err.msg);
		join_refuse("controller could not record the host");
		json_object_put(req);
		return;
	}
	log_info("host %s: %s at %s", name, h ? "re-joined" : "joined", addr);
	hex_encode(pub, sizeof(pub), pubhex);
	r = json_object_new_object();
	json_object_object_add(r, "ok", json_object_new_boolean(1));
	json_object_object_add(r, "host_id", json_object_new_int64(id));
	json_object_object_add(r, "cluster_id", json_object_new_string(ctl.cluster_id));
	json_object_object_add(r, "pubkey", json_object_new_string(pubhex));
	snprintf(info, sizeof(info), "tcp://%s:%d", ctl.cfg.link_address, ctl.cfg.event_port);
	json_object_object_add(r, "events", json_object_new_string(info));
	json_object_object_add(r, "heartbeat_interval",
			       json_object_new_int(ctl.cfg.heartbeat_interval));
	join_confirm(salt, name, ctl.cluster_id, (long long)id, pubhex, agent_pubhex, info,
		     ctl.cfg.heartbeat_interval, confirm);
	json_object_object_add(r, "confirm", json_object_new_string(confirm));
	join_reply(r);
	OPENSSL_cleanse(priv, sizeof(priv));
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(salt, sizeof(salt));
	ev = host_to_json(host_find(name));
	event_emit("host-joined", ev);
	json_object_put(req);
}

static void join_poll_cb(uv_poll_t *p, int status, int events)
{
	for (;;) {
		char *buf = NULL;
		int n = nn_recv(join_sock, &buf, NN_MSG, NN_DONTWAIT);

		if (n < 0)
			break;
		if (!join_allowed(NULL))
			; /* dropped unanswered */
		else if (n > 64 * 1024)
			reject("malformed", "join request of %d bytes", n),
				join_refuse("too large");
		else
			join_handle(buf, (size_t)n);
		nn_freemsg(buf);
	}
}

/* ---- events from agents ---- */

static int progress_check(struct json_object *v, const char *field, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 0 || n > 100)
		return err_input(err, 400, field, "'%s' must be 0..100", field);
	return 0;
}

static int short_text_check(struct json_object *v, const char *field, struct kerr *err)
{
	if (strlen(json_object_get_string(v)) > 1024)
		return err_input(err, 400, field, "'%s' is too long", field);
	return 0;
}

static int done_status_check(struct json_object *v, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "succeeded") && strcmp(s, "failed"))
		return err_input(err, 400, field, "'%s' must be succeeded or failed", field);
	return 0;
}

static const struct json_field progress_fields[] = {
	{"progress", JK_INT, true, progress_check},
	{"phase", JK_STRING, true, short_text_check},
	{"migration", JK_OBJECT, false, NULL}, /* a migrate-out's statistics (migrate.c) */
	{NULL, 0, false, NULL},
};

static const struct json_field done_fields[] = {
	{"status", JK_STRING, true, done_status_check},
	{"result", JK_OBJECT, false, NULL},
	{"error", JK_STRING, false, short_text_check},
	{NULL, 0, false, NULL},
};
const struct json_field *const agentlink_progress_fields = progress_fields;
const struct json_field *const agentlink_done_fields = done_fields;

/* Does operation op belong to host h? Agents may only report on their own work. */
static bool op_owned(struct host *h, const char *op)
{
	sqlite3_stmt *st =
		db_prepare_cached(ctl.db, "SELECT 1 FROM operations WHERE id = ? AND host_id = ?");
	bool ok;

	sqlite3_bind_text(st, 1, op, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, h->id);
	ok = sqlite3_step(st) == SQLITE_ROW;
	db_release(st);
	return ok;
}

/* A host reports a job's end: the job engine takes it by kind (jobs.c). */
static void op_done(struct host *h, struct link_msg *m)
{
	const char *status = json_get_str(m->body, "status", "failed");

	log_trace("host %s: op-done %s %s", h->name, m->op, status);
	hooks->done(h, m->op, status, json_object_object_get(m->body, "result"),
		    json_get_str(m->body, "error", NULL));
	log_trace("host %s: op-done %s handled", h->name, m->op);
}

static void cmd_free(struct cmd *c);

/* Answer c with a query-done body ({answer: {...}} or {error: "..."}) and free it. */
static void query_finish(struct cmd *c, struct json_object *done)
{
	struct json_object *answer = json_object_object_get(done, "answer");

	if (c->reply_cb)
		c->reply_cb(answer, answer ? NULL : json_get_str(done, "error", "query failed"),
			    c->cls);
	cmd_free(c);
}

/*
 * The answer to a deferred query. The ack came on the command socket and this on the
 * event socket, so it may come first: then it waits on the query in flight.
 */
static void query_done(struct host *h, const struct link_msg *m)
{
	struct json_object *answer = json_object_object_get(m->body, "answer");
	const char *error = json_get_str(m->body, "error", NULL);
	struct cmd **pp, *c = NULL;

	if ((answer == NULL) == (error == NULL) ||
	    (answer && !json_object_is_type(answer, json_type_object))) {
		reject("malformed", "host %s: bad query-done for '%s'", h->name, m->op);
		return;
	}
	if (h->inflight && h->inflight->type == LINK_CMD_QUERY && !h->inflight->early &&
	    strcmp(h->inflight->op, m->op) == 0) {
		h->inflight->early = json_object_get(m->body);
		return;
	}
	for (pp = &h->deferred; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->op, m->op) == 0) {
			c = *pp;
			*pp = c->next;
			break;
		}
	if (c == NULL) {
		/* Given up on already (its deadline passed), or never ours to wait for. */
		log_debug("host %s: query-done for '%s', which nobody waits for", h->name, m->op);
		return;
	}
	query_finish(c, m->body);
}

/* One sealed message from an agent: authenticate, check replay, dispatch. */
static void event_handle(const unsigned char *buf, size_t len)
{
	char dir, hostname[SEAL_HOST_MAX + 1];
	struct link_msg m;
	struct kerr err;
	struct host *h;

	if (seal_peek(buf, len, &dir, hostname) < 0)
		return reject("malformed", "not a sealed message (%zu bytes)", len);
	if (dir != SEAL_DIR_TO_CONTROLLER)
		return reject("malformed", "message from %s sealed for the wrong direction",
			      hostname);
	h = host_find(hostname);
	if (h == NULL)
		return reject("unknown-host", "message from unknown host '%s'", hostname);
	if (link_msg_open(h->key, SEAL_DIR_TO_CONTROLLER, buf, len, &m, &err) < 0)
		return reject("tampered", "host %s: %s", hostname, err.msg);
	if (seal_replay_check(&h->rx, m.seq, now_us(), LINK_REPLAY_WINDOW_US, &err) < 0) {
		reject("replay", "host %s: %s", hostname, err.msg);
		link_msg_clear(&m);
		return;
	}
	metrics_link_message(link_type_name(m.type));
	switch (m.type) {
	case LINK_HEARTBEAT:
		hooks->heartbeat(h, m.body);
		break;
	case LINK_OP_PROGRESS:
		if (!m.op[0] || !op_owned(h, m.op) ||
		    json_fields_check(m.body, progress_fields, &err) < 0) {
			reject("malformed", "host %s: bad op-progress for '%s'", h->name, m.op);
			break;
		}
		op_update(m.op, "running", (int)json_get_int(m.body, "progress", 0),
			  json_get_str(m.body, "phase", ""), NULL, NULL);
		hooks->progress(m.op, m.body);
		break;
	case LINK_INSTANCE_STATE:
		hooks->report(h, m.body, "agent report");
		break;
	case LINK_QUERY_DONE:
		query_done(h, &m);
		break;
	case LINK_CONSOLE_DATA:
		hooks->console(h, m.body);
		break;
	case LINK_OP_DONE:
		if (!m.op[0] || !op_owned(h, m.op) ||
		    json_fields_check(m.body, done_fields, &err) < 0) {
			reject("malformed", "host %s: bad op-done for '%s'", h->name, m.op);
			break;
		}
		op_done(h, &m);
		break;
	default:
		reject("malformed", "host %s: unexpected %s on the event socket", h->name,
		       link_type_name(m.type));
		break;
	}
	link_msg_clear(&m);
}

/*
 * Read at most EVENTS_PER_TURN messages, then let the loop serve the API: thousands
 * of agents keep the event socket readable all the time, and draining it to empty
 * kept /healthz waiting for a minute at 5,000 hosts. The poll is level-triggered, so
 * the rest is read on the loop's next turn.
 */
static void event_poll_cb(uv_poll_t *p, int status, int events)
{
	for (int i = 0; i < EVENTS_PER_TURN; i++) {
		unsigned char *buf = NULL;
		int n = nn_recv(event_sock, &buf, NN_MSG, NN_DONTWAIT);

		if (n < 0)
			break;
		event_handle(buf, (size_t)n);
		nn_freemsg(buf);
	}
}

/* ---- commands to agents ---- */

static void cmd_free(struct cmd *c)
{
	if (c) {
		json_object_put(c->body);
		json_object_put(c->early);
		free(c);
	}
}

static void cmd_transmit(struct host *h);

static void send_poll_cb(uv_poll_t *p, int status, int events)
{
	struct host *h = p->data;

	uv_poll_stop(p);
	if (h->inflight && h->req_sock >= 0)
		cmd_transmit(h);
}

/* Watch h's command socket until it can send, then transmit the in-flight command. */
static void send_wait(struct host *h)
{
	int fd;
	size_t sz = sizeof(fd);

	if (h->req_spoll == NULL) {
		if (nn_getsockopt(h->req_sock, NN_SOL_SOCKET, NN_SNDFD, &fd, &sz) < 0)
			return;
		h->req_spoll = xcalloc(1, sizeof(*h->req_spoll));
		uv_poll_init(ctl.loop, h->req_spoll, fd);
		h->req_spoll->data = h;
	}
	uv_poll_start(h->req_spoll, UV_READABLE, send_poll_cb);
}

/* Seal and send the in-flight command (again, after a timeout: a new seq each time). */
static void cmd_transmit(struct host *h)
{
	struct link_msg m = {.type = h->inflight->type, .body = h->inflight->body};
	unsigned char *buf;
	size_t len;
	struct kerr err;

	snprintf(m.host, sizeof(m.host), "%s", h->name);
	snprintf(m.op, sizeof(m.op), "%s", h->inflight->op);
	m.seq = seal_seq_next(&h->tx_seq);
	h->inflight_deadline = now_ms() + CMD_TIMEOUT_MS;
	/*
	 * A query is never resent: past its ack deadline (or its own) the controller
	 * fails it, so a copy that reaches the agent later (nanomsg hands a request on
	 * to an agent that came back) must not run. Commands carry no expiry: the
	 * controller resends them under the same op id until acked, and the agent
	 * dedupes by op id.
	 */
	if (h->inflight->type == LINK_CMD_QUERY)
		m.expires = 1000 * (h->inflight->deadline < h->inflight_deadline
					    ? h->inflight->deadline
					    : h->inflight_deadline);
	if (link_msg_seal(h->key, SEAL_DIR_TO_AGENT, &m, &buf, &len, &err) < 0) {
		log_warnx("host %s: cannot seal %s: %s", h->name, link_type_name(m.type), err.msg);
		return;
	}
	if (nn_send(h->req_sock, buf, len, NN_DONTWAIT) < 0) {
		log_debug("host %s: %s not sent yet: %s", h->name, link_type_name(m.type),
			  nn_strerror(nn_errno()));
		/* A socket just opened has no connection yet: send once it can. */
		if (nn_errno() == EAGAIN)
			send_wait(h);
	}
	free(buf);
}

static void idle_remove(struct host *h);

static void cmd_next(struct host *h)
{
	if (h->inflight || h->queue == NULL)
		return;
	if (h->req_sock < 0) {
		agentlink_host_connect(h); /* which sends, once it has a socket */
		return;
	}
	idle_remove(h);
	h->inflight = h->queue;
	h->queue = h->queue->next;
	h->inflight->next = NULL;
	cmd_transmit(h);
}

/*
 * The pool's two queues, intrusive in struct host so every step is O(1) at any
 * number of hosts: idle hosts that hold a socket, least recently used first, and
 * hosts with commands waiting for a socket, first come first served.
 */
static struct host *idle_head, *idle_tail, *wait_head, *wait_tail;

static void idle_remove(struct host *h)
{
	if (!h->req_idle)
		return;
	*(h->idle_prev ? &h->idle_prev->idle_next : &idle_head) = h->idle_next;
	*(h->idle_next ? &h->idle_next->idle_prev : &idle_tail) = h->idle_prev;
	h->idle_prev = h->idle_next = NULL;
	h->req_idle = false;
}

/* h holds a socket and has nothing to send: the last to be reclaimed, for now. */
static void idle_push(struct host *h)
{
	idle_remove(h);
	h->idle_prev = idle_tail;
	*(idle_tail ? &idle_tail->idle_next : &idle_head) = h;
	idle_tail = h;
	h->req_idle = true;
}

static void wait_remove(struct host *h)
{
	if (!h->req_waiting)
		return;
	*(h->wait_prev ? &h->wait_prev->wait_next : &wait_head) = h->wait_next;
	*(h->wait_next ? &h->wait_next->wait_prev : &wait_tail) = h->wait_prev;
	h->wait_prev = h->wait_next = NULL;
	h->req_waiting = false;
}

static void wait_push(struct host *h)
{
	if (h->req_waiting)
		return;
	h->wait_prev = wait_tail;
	*(wait_tail ? &wait_tail->wait_next : &wait_head) = h;
	wait_tail = h;
	h->req_waiting = true;
}

static bool has_work(const struct host *h)
{
	return h->inflight || h->queue;
}

/* Close the least recently used idle command socket; false when every one is busy. */
static bool req_reclaim(void)
{
	while (idle_head) {
		struct host *h = idle_head;

		idle_remove(h);
		/* Work queued since it went idle: it keeps its socket. */
		if (h->req_sock >= 0 && !has_work(h)) {
			agentlink_host_disconnect(h);
			return true;
		}
	}
	return false;
}

/* Give free sockets to the hosts waiting for one. */
static void wait_serve(void)
{
	/* Bounded: a host whose connect fails goes back on the list for the next cron. */
	for (int i = 0; i < REQ_SOCKS_MAX && wait_head && (req_open < REQ_SOCKS_MAX || idle_head);
	     i++) {
		struct host *w = wait_head;

		wait_remove(w);
		agentlink_host_connect(w);
	}
}

/* h has nothing more to send: its socket goes to a waiting host, or stays for later. */
static void req_went_idle(struct host *h)
{
	if (wait_head) {
		agentlink_host_disconnect(h);
		wait_serve();
	} else {
		idle_push(h);
	}
}

/*
 * The in-flight command was answered (or deferred): send the next one, or give the
 * socket back to the pool. Every reply ends here, so none keeps a socket it no
 * longer uses (a socket held idle by nobody is lost to the bounded pool).
 */
static void reply_next(struct host *h)
{
	cmd_next(h);
	if (h->req_sock >= 0 && !has_work(h))
		req_went_idle(h);
}

/* A reply to the in-flight command arrived. */
static void reply_handle(struct host *h, const unsigned char *buf, size_t len)
{
	struct link_msg m;
	struct kerr err;
	struct cmd *c = h->inflight;

	if (link_msg_open(h->key, SEAL_DIR_TO_CONTROLLER, buf, len, &m, &err) < 0)
		return reject("tampered", "host %s: reply: %s", h->name, err.msg);
	if (strcmp(m.host, h->name) != 0) {
		reject("tampered", "host %s: reply claims to be from %s", h->name, m.host);
		link_msg_clear(&m);
		return;
	}
	if (seal_replay_check(&h->rx_reply, m.seq, now_us(), LINK_REPLAY_WINDOW_US, &err) < 0) {
		reject("replay", "host %s: reply: %s", h->name, err.msg);
		link_msg_clear(&m);
		return;
	}
	if (c == NULL || strcmp(m.op, c->op) != 0) {
		log_debug("host %s: stale reply for op '%s'", h->name, m.op);
		link_msg_clear(&m);
		return;
	}
	if (c->type == LINK_CMD_QUERY && m.type == LINK_ACK &&
	    json_get_bool(m.body, "deferred", false)) {
		/* Its answer comes as a query-done event (or came already); the socket
		 * serves the next command meanwhile. */
		h->inflight = NULL;
		if (c->early) {
			query_finish(c, c->early);
		} else {
			c->next = h->deferred;
			h->deferred = c;
		}
		link_msg_clear(&m);
		reply_next(h);
		return;
	}
	if (c->reply_cb && (m.type == LINK_ACK || m.type == LINK_NACK)) {
		if (m.type == LINK_ACK)
			c->reply_cb(m.body, NULL, c->cls);
		else
			c->reply_cb(NULL, json_get_str(m.body, "error", "refused by the agent"),
				    c->cls);
	} else if (m.type == LINK_ACK) {
		op_update(c->op, "running", -1, "accepted by agent", NULL, NULL);
	} else if (m.type == LINK_NACK) {
		const char *why = json_get_str(m.body, "error", "refused by the agent");

		hooks->nack(c->op, why);
	} else {
		reject("malformed", "host %s: unexpected %s as a reply", h->name,
		       link_type_name(m.type));
	}
	h->inflight = NULL;
	cmd_free(c);
	link_msg_clear(&m);
	reply_next(h);
}

static void req_poll_cb(uv_poll_t *p, int status, int events)
{
	struct host *h = p->data;

	for (;;) {
		unsigned char *buf = NULL;
		int n;

		if (h->req_sock < 0)
			return;
		n = nn_recv(h->req_sock, &buf, NN_MSG, NN_DONTWAIT);
		if (n < 0)
			break;
		reply_handle(h, buf, (size_t)n);
		nn_freemsg(buf);
	}
}

/*
 * Open h's command socket to its advertised address when it has a command to send
 * and the pool has room (or an idle socket to close); else it waits (see the top).
 */
void agentlink_host_connect(struct host *h)
{
	int fd, resend = 3600 * 1000, linger = 0, max = LINK_MSG_MAX;

	if (h->req_sock >= 0 || h->address == NULL || h->address[0] == '\0')
		return;
	if (!has_work(h))
		return;
	if (req_open >= REQ_SOCKS_MAX && !req_reclaim()) {
		wait_push(h);
		return;
	}
	wait_remove(h);
	h->req_sock = nn_socket(AF_SP, NN_REQ);
	if (h->req_sock < 0) {
		log_warnx("host %s: nn_socket: %s", h->name, nn_strerror(nn_errno()));
		wait_push(h); /* tried again by the cron */
		return;
	}
	/* We resend ourselves, re-sealed with a fresh seq; nanomsg's resend would replay. */
	nn_setsockopt(h->req_sock, NN_REQ, NN_REQ_RESEND_IVL, &resend, sizeof(resend));
	nn_setsockopt(h->req_sock, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof(linger));
	/* nanomsg drops replies over 1 MiB by default: a 1 MiB log or console read, base64
	 * in its sealed reply, is larger. */
	nn_setsockopt(h->req_sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &max, sizeof(max));
	if (nn_connect(h->req_sock, h->address) < 0) {
		log_warnx("host %s: cannot connect to %s: %s", h->name, h->address,
			  nn_strerror(nn_errno()));
		nn_close(h->req_sock);
		h->req_sock = -1;
		return;
	}
	req_open++;
	fd = sock_rcvfd(h->req_sock);
	h->req_poll = xcalloc(1, sizeof(*h->req_poll));
	uv_poll_init(ctl.loop, h->req_poll, fd);
	h->req_poll->data = h;
	uv_poll_start(h->req_poll, UV_READABLE, req_poll_cb);
	/* Anything in flight on the old socket goes again on the new one. */
	if (h->inflight)
		cmd_transmit(h);
	else
		cmd_next(h);
}

static void free_handle_cb(uv_handle_t *handle)
{
	free(handle);
}

/*
 * Close h's command socket (the polls are stopped before nanomsg closes their fds)
 * and take it off the pool's queues.
 */
void agentlink_host_disconnect(struct host *h)
{
	idle_remove(h);
	wait_remove(h);
	if (h->req_poll) {
		uv_poll_stop(h->req_poll);
		uv_close((uv_handle_t *)h->req_poll, free_handle_cb);
		h->req_poll = NULL;
	}
	if (h->req_spoll) {
		uv_poll_stop(h->req_spoll);
		uv_close((uv_handle_t *)h->req_spoll, free_handle_cb);
		h->req_spoll = NULL;
	}
	if (h->req_sock >= 0) {
		nn_close(h->req_sock);
		h->req_sock = -1;
		req_open--;
	}
}

/*
 * Queue a command for h carrying operation op (body: a reference is consumed, may
 * be NULL). Commands go one at a time, in order; a command not acked in
 * CMD_TIMEOUT_MS is sent again, so agents dedupe by op id.
 */
void agentlink_cmd_send(struct host *h, enum link_type type, const char *op,
			struct json_object *body)
{
	struct cmd *c = xcalloc(1, sizeof(*c)), **pp;

	c->type = type;
	snprintf(c->op, sizeof(c->op), "%s", op);
	c->body = body ? body : json_object_new_object();
	for (pp = &h->queue; *pp; pp = &(*pp)->next)
		;
	*pp = c;
	agentlink_host_connect(h);
	cmd_next(h);
}

/*
 * The same, but ahead of every command still queued for h (one in flight goes on):
 * what must happen before anything else, like removing an instance deleted while
 * the host was away.
 */
void agentlink_cmd_send_first(struct host *h, enum link_type type, const char *op,
			      struct json_object *body)
{
	struct cmd *c = xcalloc(1, sizeof(*c));

	c->type = type;
	snprintf(c->op, sizeof(c->op), "%s", op);
	c->body = body ? body : json_object_new_object();
	c->next = h->queue;
	h->queue = c;
	agentlink_host_connect(h);
	cmd_next(h);
}

/*
 * The same with cb(ack body, NULL, cls) or cb(NULL, why, cls) on the agent's answer,
 * for a command whose ack says something (a cancel: the job's state there).
 */
void agentlink_cmd_send_cb(struct host *h, enum link_type type, const char *op,
			   struct json_object *body, cmd_reply_fn cb, void *cls)
{
	struct cmd *c = xcalloc(1, sizeof(*c)), **pp;

	c->type = type;
	snprintf(c->op, sizeof(c->op), "%s", op);
	c->body = body ? body : json_object_new_object();
	c->reply_cb = cb;
	c->cls = cls;
	for (pp = &h->queue; *pp; pp = &(*pp)->next)
		;
	*pp = c;
	agentlink_host_connect(h);
	cmd_next(h);
}

/*
 * Take the commands of operation op that wait in h's queue (not one in flight) out
 * of it, unsent. Returns whether there was one: then the agent never heard of op.
 */
bool agentlink_cmd_unqueue(struct host *h, const char *op)
{
	bool found = false;

	if (h->inflight && !strcmp(h->inflight->op, op))
		return false;
	for (struct cmd **pp = &h->queue; *pp;) {
		struct cmd *c = *pp;

		if (c->type != LINK_CMD_QUERY && !strcmp(c->op, op)) {
			*pp = c->next;
			cmd_free(c);
			found = true;
		} else {
			pp = &c->next;
		}
	}
	return found;
}

/* Is a command for operation op queued or in flight to h? */
bool agentlink_cmd_pending(struct host *h, const char *op)
{
	if (h->inflight && !strcmp(h->inflight->op, op))
		return true;
	for (struct cmd *c = h->queue; c; c = c->next)
		if (!strcmp(c->op, op))
			return true;
	return false;
}

/*
 * Ask h something that needs an answer now (a query): cb gets the ack body, or NULL
 * and a reason. body (a reference is consumed) is sent as LINK_CMD_QUERY. A query
 * not answered within CMD_TIMEOUT_MS fails; it is never resent.
 */
void agentlink_query(struct host *h, struct json_object *body, cmd_reply_fn cb, void *cls)
{
	agentlink_query_timeout(h, body, CMD_TIMEOUT_MS, cb, cls);
}

/* The same, for a query that takes its time on the host (exec): timeout_ms. */
void agentlink_query_timeout(struct host *h, struct json_object *body, int64_t timeout_ms,
			     cmd_reply_fn cb, void *cls)
{
	struct cmd *c = xcalloc(1, sizeof(*c)), **pp;

	c->type = LINK_CMD_QUERY;
	link_op_id_new(c->op);
	c->body = body;
	c->reply_cb = cb;
	c->cls = cls;
	c->deadline = now_ms() + timeout_ms;
	for (pp = &h->queue; *pp; pp = &(*pp)->next)
		;
	*pp = c;
	agentlink_host_connect(h);
	cmd_next(h);
}

/* Tell h to stop the work of query c (an exec), whose asker went away. */
static void query_abandon(struct host *h, struct cmd *c)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "reason", json_object_new_string("cancelled"));
	agentlink_cmd_send_cb(h, LINK_CMD_CANCEL, c->op, body, NULL, NULL);
}

/*
 * The caller behind cls is gone: its queries complete without a callback. One the
 * agent runs already (in flight, or deferred: an exec) is cancelled there too, so a
 * command nobody waits for does not run on to its timeout.
 */
void agentlink_query_cancel(void *cls)
{
	for (struct host *h = ctl.hosts; h; h = h->next) {
		if (h->inflight && h->inflight->cls == cls) {
			h->inflight->reply_cb = NULL, h->inflight->cls = NULL;
			if (h->inflight->type == LINK_CMD_QUERY)
				query_abandon(h, h->inflight);
		}
		for (struct cmd **pp = &h->queue; *pp;) {
			struct cmd *c = *pp;

			if (c->cls != cls) {
				pp = &c->next;
			} else if (c->type == LINK_CMD_QUERY) {
				/* Not sent yet: it never runs. */
				*pp = c->next;
				cmd_free(c);
			} else {
				c->reply_cb = NULL, c->cls = NULL;
				pp = &c->next;
			}
		}
		for (struct cmd *c = h->deferred; c; c = c->next) {
			if (c->cls == cls) {
				c->reply_cb = NULL, c->cls = NULL;
				query_abandon(h, c);
			}
		}
	}
}

static void query_fail(struct cmd *c, const char *why)
{
	if (c->reply_cb)
		c->reply_cb(NULL, why, c->cls);
	cmd_free(c);
}

/*
 * Answer every query queued or in flight to h with why (the host goes away, or the
 * controller stops), so no request waits for an answer that cannot come.
 */
void agentlink_queries_fail(struct host *h, const char *why)
{
	struct cmd **pp = &h->queue;

	while (*pp) {
		struct cmd *c = *pp;

		if (c->type == LINK_CMD_QUERY) {
			*pp = c->next;
			query_fail(c, why);
		} else {
			pp = &c->next;
		}
	}
	if (h->inflight && h->inflight->type == LINK_CMD_QUERY) {
		struct cmd *c = h->inflight;

		h->inflight = NULL;
		query_fail(c, why);
	}
	agentlink_deferred_fail(h, why);
}

/* Answer every query h acked as deferred with why: its answer cannot come any more. */
void agentlink_deferred_fail(struct host *h, const char *why)
{
	while (h->deferred) {
		struct cmd *c = h->deferred;

		h->deferred = c->next;
		query_fail(c, why);
	}
}

/*
 * Cron: resend commands whose ack is overdue; fail queries that are (in flight or
 * still waiting behind a slow command), and queries to hosts that went offline.
 */
void agentlink_cron(void)
{
	int64_t now = now_ms();

	wait_serve(); /* sockets that came free without a reply (a failed query) */

	for (struct host *h = ctl.hosts; h; h = h->next) {
		struct cmd **pp = &h->queue;

		while (*pp) {
			struct cmd *c = *pp;

			if (c->type == LINK_CMD_QUERY &&
			    (now >= c->deadline || h->state != HOST_ONLINE)) {
				*pp = c->next;
				query_fail(c, "the host's agent did not answer");
			} else {
				pp = &c->next;
			}
		}
		for (pp = &h->deferred; *pp;) {
			struct cmd *c = *pp;

			if (now >= c->deadline || h->state != HOST_ONLINE) {
				*pp = c->next;
				query_fail(
					c,
					h->state != HOST_ONLINE
						? "the host went offline before its agent answered"
						: "the host's agent did not answer");
			} else {
				pp = &c->next;
			}
		}
		/* A query's ack comes at once (an exec's says deferred): waiting the whole
		 * deadline for a lost one would hold the host's commands that long. */
		if (h->inflight && h->inflight->type == LINK_CMD_QUERY &&
		    (now >= h->inflight->deadline || now >= h->inflight_deadline ||
		     h->state != HOST_ONLINE)) {
			struct cmd *c = h->inflight;

			h->inflight = NULL;
			query_fail(c, "the host's agent did not answer");
			/* The REQ socket still waits for that reply: start it afresh. */
			agentlink_host_disconnect(h);
			agentlink_host_connect(h);
			continue;
		}
		/* Commands only: a query is never resent (it fails at its own deadline), and
		 * a second send on the REQ socket would drop the request the agent is
		 * still answering (a long exec). */
		if (h->inflight && h->inflight->type != LINK_CMD_QUERY && h->req_sock >= 0 &&
		    now >= h->inflight_deadline && h->state == HOST_ONLINE)
			cmd_transmit(h);
	}
}

static int bind_poll(int type, int port, uv_poll_t *poll, uv_poll_cb cb, struct kerr *err)
{
	char url[96];
	int sock = nn_socket(AF_SP, type), fd, max = LINK_MSG_MAX;

	if (sock < 0)
		return err_set(err, 0, "nn_socket: %s", nn_strerror(nn_errno()));
	nn_setsockopt(sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &max, sizeof(max));
	snprintf(url, sizeof(url), "tcp://%s:%d", ctl.cfg.link_address, port);
	if (nn_bind(sock, url) < 0) {
		err_set(err, 0, "cannot bind the agent link on %s: %s", url,
			nn_strerror(nn_errno()));
		nn_close(sock);
		return -1;
	}
	fd = sock_rcvfd(sock);
	uv_poll_init(ctl.loop, poll, fd);
	uv_poll_start(poll, UV_READABLE, cb);
	log_info("link: listening on %s", url);
	return sock;
}

/* Bind the join and event sockets; hosts connect when they have commands. */
int agentlink_start(struct kerr *err)
{
	if (hooks == NULL)
		fatalx("agentlink: started before main.c set its hooks");
	join_sock = bind_poll(NN_REP, ctl.cfg.join_port, &join_poll, join_poll_cb, err);
	if (join_sock < 0)
		return -1;
	event_sock = bind_poll(NN_PULL, ctl.cfg.event_port, &event_poll, event_poll_cb, err);
	if (event_sock < 0)
		return -1;
	return 0;
}

void agentlink_stop(void)
{
	for (struct host *h = ctl.hosts; h; h = h->next)
		agentlink_host_disconnect(h);
	if (join_sock >= 0) {
		uv_poll_stop(&join_poll);
		uv_close((uv_handle_t *)&join_poll, NULL);
		nn_close(join_sock);
		join_sock = -1;
	}
	if (event_sock >= 0) {
		uv_poll_stop(&event_poll);
		uv_close((uv_handle_t *)&event_poll, NULL);
		nn_close(event_sock);
		event_sock = -1;
	}
}
