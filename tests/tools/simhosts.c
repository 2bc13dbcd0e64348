/*
 * simhosts.c - A SIMULATION: N hosts in one process that speak the real agent link
 * to a real controller, for the scale bench (bench/scale.sh). Nothing runs on them:
 * an instance "runs" the moment it is created. Never use it as proof that a workload
 * works; the feature tests drive real agents.
 *
 * Each simulated host joins with its own single-use join token (one per line of
 * --tokens) and its own X25519 key pair, through the same join code as kumo-agentd
 * (common/join.c), and then seals every message with its own link key (common/link.c):
 *
 *   join      one NN_REQ per join in progress (--join-parallel at a time)
 *   events    NN_PUSH sockets to the controller's event socket, each shared by a
 *             group of hosts (--push-sockets, host i uses socket i mod K), so the
 *             controller reads from many connections as it does from real agents:
 *             heartbeats (facts, the instances it "runs", the network version it
 *             holds), op-done and query-done; each sealed for its own host
 *   commands  one raw NN_REP socket bound at one port per host (--listen-base
 *             A:P binds A:P+i for host i); the sealed header names the host, and the
 *             raw socket lets an answer wait (--latency-ms) without holding up others
 *
 * A real agent has one NN_REP and one NN_PUSH; sharing them here is what lets 5,000
 * hosts fit one process: nanomsg allows 512 sockets per process (NN_MAX_SOCKETS).
 * Each host still costs two descriptors (its listening socket and the controller's
 * connection to it), so RLIMIT_NOFILE is raised to its hard limit at start.
 *
 * Commands are answered as an agent would: the ack at once (after --latency-ms), then
 * an op-done; create, start, stop, restart, pause, resume and delete change the state
 * that reports and heartbeats show; a net query is taken and its hash reported back;
 * logs, console and exec get canned output. --fail-rate makes that share of instance
 * commands fail with "simulated failure".
 */
#include <errno.h>
#include <getopt.h>
#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>
#include <nanomsg/reqrep.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "join.h"
#include "json.h"
#include "link.h"
#include "log.h"
#include "token.h"
#include "util.h"
#include "valid.h"

#define SIM_OPS_KEPT	 16 /* ops remembered per host, so a resend is acked, never re-run */
#define SIM_TICK_MS	 10 /* heartbeat pacing, delayed answers, join timeouts */
#define SIM_JOIN_WAIT_MS 15000
#define SIM_CANNED	 "SIMULATED HOST: no real workload runs here\n"

struct sim_inst {
	char name[NAME_MAX_LEN + 1];
	char type[16];
	char state[16];
	int64_t started_at;
	struct sim_inst *next;
};

struct sim_op {
	char op[LINK_OP_ID_MAX + 1];
	struct json_object *done; /* op-done body once sent, for resends */
};

struct sim_host {
	int idx;
	char name[SEAL_HOST_MAX + 1];
	char token[TOKEN_LEN + 1];
	char addr[64]; /* advertised command address, tcp://A:P */
	unsigned char priv[SEAL_KEY_LEN], pub[SEAL_PUB_LEN];
	unsigned char key[SEAL_KEY_LEN];
	bool joined;
	int64_t seq_last;
	struct seal_replay replay;
	struct sim_inst *insts;
	int ninsts;
	struct sim_op ops[SIM_OPS_KEPT];
	unsigned op_next;
	char net_hash[65];
	int64_t started_ms;
	char facts_digest[LINK_FACTS_DIGEST_LEN + 1]; /* of the last whole facts sent */
	int64_t facts_full_ms;
};

/* An answer or event held back by --latency-ms; due times only grow: a FIFO. */
struct delayed {
	int64_t due_ms;
	struct sim_host *h;
	bool reply;    /* on the command socket (control is its routing header) */
	void *control; /* nanomsg-allocated; freed by the send */
	enum link_type type;
	char op[LINK_OP_ID_MAX + 1];
	struct json_object *body;
	struct delayed *next;
};

/* One join in flight. */
struct join_slot {
	int sock;
	uv_poll_t poll;
	struct sim_host *h; /* NULL: idle */
	int64_t sent_ms;
};

static struct {
	const char *controller;
	const char *tokens_path;
	const char *listen_base;
	const char *prefix;
	int nhosts;
	int latency_ms;
	double fail_rate;
	int cpus;
	int64_t memory_mb;
	int join_parallel;
	int heartbeat_s; /* 0: what the controller said */
	bool full_facts; /* every beat carries the whole facts, as agents before digests */
} opt = {.prefix = "sim", .cpus = 64, .memory_mb = 262144, .join_parallel = 32};

static struct sim_host *hosts;
static uv_loop_t *loop;
static uv_timer_t tick;
static uv_poll_t rep_poll;
static uv_signal_t sigint, sigterm;
static int rep_sock = -1, *push_socks, npush = 128;
static struct join_slot *slots;
static int join_next, joined, join_failed;
static int64_t t_start_ms, t_all_joined_ms, beats_sent, beats_dropped, beat_origin_ms;
static int64_t beat_cursor; /* heartbeats due so far, over all hosts */
static int interval_ms = 1000;
static struct delayed *dq_head, *dq_tail; /* --latency-ms */
static struct delayed *rq_head, *rq_tail; /* op events the controller did not take yet */
static char listen_ip[64];
static int listen_port;

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: simhosts --controller HOST:PORT --tokens FILE --hosts N "
		"--listen-base A:P [options]\n"
		"\n"
		"A SIMULATION of N Kumo hosts in one process, for benchmarks: each joins the\n"
		"controller with its own join token and keys and speaks the real, sealed agent\n"
		"link, but runs nothing - instances \"run\" the moment they are created. Never\n"
		"use it as proof that a workload works.\n"
		"\n"
		"  --controller HOST:PORT  the controller's join socket\n"
		"  --tokens FILE           join tokens, one per line, one per host (the first N)\n"
		"  --hosts N               hosts to simulate (1-100000)\n"
		"  --listen-base A:P       host i (from 0) takes commands at A:P+i\n"
		"  --prefix NAME           host names are NAME00001, NAME00002, ... (sim)\n"
		"  --latency-ms MS         hold every answer and event this long (0)\n"
		"  --fail-rate F           share of instance commands that fail, 0-1 (0)\n"
		"  --cpus N, --memory-mb M the capacity each host reports (64, 262144)\n"
		"  --join-parallel N       joins in flight at once (32)\n"
		"  --push-sockets K        connections to the event socket, shared by the\n"
		"                          hosts (128; nanomsg allows 512 sockets a process)\n"
		"  --heartbeat S           seconds between a host's heartbeats (the controller's)\n"
		"  --full-facts            every heartbeat carries the whole facts (as agents\n"
		"                          before facts digests), not their digest when unchanged\n"
		"  -h, --help\n"
		"\n"
		"Prints a line when every host has joined, and a status line every 10 s.\n");
}

/* ---- sealing and sending ---- */

static int seal(struct sim_host *h, enum link_type type, const char *op, struct json_object *body,
		unsigned char **out, size_t *outlen)
{
	struct link_msg m = {.type = type, .seq = seal_seq_next(&h->seq_last), .body = body};
	struct kerr err;

	snprintf(m.host, sizeof(m.host), "%s", h->name);
	snprintf(m.op, sizeof(m.op), "%s", op ? op : "");
	if (link_msg_seal(h->key, SEAL_DIR_TO_CONTROLLER, &m, out, outlen, &err) < 0) {
		log_warnx("%s: cannot seal %s: %s", h->name, link_type_name(type), err.msg);
		return -1;
	}
	return 0;
}

static void retry_later(struct sim_host *h, enum link_type type, const char *op,
			struct json_object *body);

/*
 * An event on the host's push socket; body consumed. When the controller is not
 * taking messages a heartbeat is dropped (the next carries newer facts) and an op
 * event tried again on the next tick, sealed afresh, as an agent does.
 */
static void event_send_now(struct sim_host *h, enum link_type type, const char *op,
			   struct json_object *body)
{
	_cleanup_free_ unsigned char *buf = NULL;
	int sock = push_socks ? push_socks[h->idx % npush] : -1;
	size_t len;

	if (sock >= 0 && seal(h, type, op, body, &buf, &len) == 0 &&
	    nn_send(sock, buf, len, NN_DONTWAIT) < 0) {
		if (type == LINK_HEARTBEAT) {
			/* As an agent: the next beat carries the whole facts, which this
			 * one may have (else the controller knows an unknown digest). */
			beats_dropped++;
			h->facts_digest[0] = '\0';
		} else if (nn_errno() == EAGAIN) {
			retry_later(h, type, op, body);
			return;
		} else {
			log_warnx("%s: %s dropped: %s", h->name, link_type_name(type),
				  nn_strerror(nn_errno()));
		}
	}
	json_object_put(body);
}

/* A reply on the raw command socket, routed by control (consumed either way). */
static void reply_send_now(struct sim_host *h, void *control, enum link_type type, const char *op,
			   struct json_object *body)
{
	_cleanup_free_ unsigned char *buf = NULL;
	size_t len;

	if (seal(h, type, op, body, &buf, &len) == 0) {
		void *msg = nn_allocmsg(len, 0);
		struct nn_iovec iov = {.iov_base = &msg, .iov_len = NN_MSG};
		struct nn_msghdr hdr = {.msg_iov = &iov,
					.msg_iovlen = 1,
					.msg_control = &control,
					.msg_controllen = NN_MSG};

		memcpy(msg, buf, len);
		if (nn_sendmsg(rep_sock, &hdr, NN_DONTWAIT) < 0) {
			log_warnx("%s: cannot reply: %s", h->name, nn_strerror(nn_errno()));
			nn_freemsg(msg);
			nn_freemsg(control);
		}
	} else {
		nn_freemsg(control);
	}
	json_object_put(body);
}

/* Send now, or after --latency-ms. control NULL: an event; body consumed. */
static void send_later(struct sim_host *h, void *control, enum link_type type, const char *op,
		       struct json_object *body)
{
	struct delayed *d;

	if (opt.latency_ms <= 0) {
		if (control)
			reply_send_now(h, control, type, op, body);
		else
			event_send_now(h, type, op, body);
		return;
	}
	d = xcalloc(1, sizeof(*d));
	d->due_ms = now_ms() + opt.latency_ms;
	d->h = h;
	d->reply = control != NULL;
	d->control = control;
	d->type = type;
	snprintf(d->op, sizeof(d->op), "%s", op ? op : "");
	d->body = body;
	if (dq_tail)
		dq_tail->next = d;
	else
		dq_head = d;
	dq_tail = d;
}

static void retry_later(struct sim_host *h, enum link_type type, const char *op,
			struct json_object *body)
{
	struct delayed *d = xcalloc(1, sizeof(*d));

	d->h = h;
	d->type = type;
	snprintf(d->op, sizeof(d->op), "%s", op ? op : "");
	d->body = body;
	if (rq_tail)
		rq_tail->next = d;
	else
		rq_head = d;
	rq_tail = d;
}

/* Once per tick: the op events that found the controller busy, in order. */
static void retry_flush(void)
{
	struct delayed *d = rq_head;

	rq_head = rq_tail = NULL;
	while (d) {
		struct delayed *next = d->next;

		event_send_now(d->h, d->type, d->op, d->body);
		free(d);
		d = next;
	}
}

static void delayed_flush(int64_t now)
{
	while (dq_head && dq_head->due_ms <= now) {
		struct delayed *d = dq_head;

		dq_head = d->next;
		if (dq_head == NULL)
			dq_tail = NULL;
		if (d->reply)
			reply_send_now(d->h, d->control, d->type, d->op, d->body);
		else
			event_send_now(d->h, d->type, d->op, d->body);
		free(d);
	}
}

/* ---- what a host reports ---- */

static struct json_object *inst_report(const struct sim_inst *i)
{
	struct json_object *r = json_object_new_object();
	bool running = strcmp(i->state, "running") == 0;

	json_object_object_add(r, "name", json_object_new_string(i->name));
	json_object_object_add(r, "type", json_object_new_string(i->type));
	json_object_object_add(r, "state", json_object_new_string(i->state));
	json_object_object_add(r, "started_at",
			       running ? json_object_new_int64(i->started_at) : NULL);
	json_object_object_add(r, "restarts", json_object_new_int(0));
	json_object_object_add(r, "accel", json_object_new_string("tcg"));
	return r;
}

static struct json_object *pool_json(const char *name)
{
	struct json_object *p = json_object_new_object();

	json_object_object_add(p, "name", json_object_new_string(name));
	json_object_object_add(p, "path", json_object_new_string("/simulated"));
	json_object_object_add(p, "total_bytes", json_object_new_int64(1LL << 40));
	json_object_object_add(p, "free_bytes", json_object_new_int64(1LL << 39));
	return p;
}

static struct json_object *facts_json(struct sim_host *h)
{
	struct json_object *f = json_object_new_object(), *net = json_object_new_object();
	struct json_object *pools = json_object_new_array(), *insts = json_object_new_array();
	struct json_object *netst = json_object_new_object();
	int running = 0;

	json_object_object_add(f, "simulated", json_object_new_boolean(true));
	json_object_object_add(f, "kvm_usable", json_object_new_boolean(false));
	json_object_object_add(f, "accel", json_object_new_string("tcg"));
	json_object_object_add(f, "accel_mode", json_object_new_string("tcg"));
	json_object_object_add(f, "cpus", json_object_new_int(opt.cpus));
	json_object_object_add(f, "memory_mb", json_object_new_int64(opt.memory_mb));
	json_object_object_add(f, "memory_free_mb", json_object_new_int64(opt.memory_mb / 2));
	json_object_object_add(f, "kernel", json_object_new_string("simulated"));
	json_object_object_add(f, "arch", json_object_new_string("x86_64"));
	json_object_object_add(f, "nested", json_object_new_boolean(false));
	json_object_object_add(net, "vxlan", json_object_new_boolean(true));
	json_object_object_add(net, "vlan_8021q", json_object_new_boolean(true));
	json_object_object_add(net, "bridge", json_object_new_boolean(true));
	json_object_object_add(f, "net", net);
	json_object_array_add(pools, pool_json("shared"));
	json_object_array_add(pools, pool_json("local"));
	json_object_object_add(f, "pools", pools);
	json_object_object_add(f, "agent_version",
			       json_object_new_string(KUMO_VERSION "-simulated"));
	json_object_object_add(f, "uptime_s",
			       json_object_new_int64((now_ms() - h->started_ms) / 1000));
	for (struct sim_inst *i = h->insts; i; i = i->next) {
		json_object_array_add(insts, inst_report(i));
		running += strcmp(i->state, "running") == 0;
	}
	json_object_object_add(f, "instances", insts);
	json_object_object_add(f, "instances_running", json_object_new_int(running));
	json_object_object_add(netst, "wanted",
			       h->net_hash[0] ? json_object_new_string(h->net_hash) : NULL);
	json_object_object_add(netst, "applied",
			       h->net_hash[0] ? json_object_new_string(h->net_hash) : NULL);
	json_object_object_add(netst, "error", NULL);
	json_object_object_add(netst, "applying", json_object_new_boolean(false));
	json_object_object_add(f, "network", netst);
	return f;
}

static void heartbeat_send(struct sim_host *h)
{
	struct json_object *body = json_object_new_object();

	struct json_object *facts = facts_json(h);
	char digest[LINK_FACTS_DIGEST_LEN + 1];

	json_object_object_add(body, "addr", json_object_new_string(h->addr));
	if (opt.full_facts) {
		json_object_object_add(body, "facts", facts);
		event_send_now(h, LINK_HEARTBEAT, NULL, body);
		beats_sent++;
		return;
	}
	/* As agentd/heartbeat.c: the whole facts only when changed or due (link.h). */
	link_facts_digest(facts, digest);
	json_object_object_add(body, "facts_digest", json_object_new_string(digest));
	if (strcmp(digest, h->facts_digest) != 0 ||
	    now_ms() - h->facts_full_ms >= LINK_FACTS_FULL_S * 1000) {
		snprintf(h->facts_digest, sizeof(h->facts_digest), "%s", digest);
		h->facts_full_ms = now_ms();
		json_object_object_add(body, "facts", facts);
	} else {
		json_object_object_add(body, "uptime_s",
				       json_object_new_int64(json_get_int(facts, "uptime_s", 0)));
		json_object_put(facts);
	}
	event_send_now(h, LINK_HEARTBEAT, NULL, body);
	beats_sent++;
}

/* ---- commands ---- */

static struct sim_inst *inst_find(struct sim_host *h, const char *name)
{
	for (struct sim_inst *i = h->insts; i; i = i->next)
		if (strcmp(i->name, name) == 0)
			return i;
	return NULL;
}

static void inst_remove(struct sim_host *h, const char *name)
{
	for (struct sim_inst **pp = &h->insts; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->name, name) == 0) {
			struct sim_inst *i = *pp;

			*pp = i->next;
			free(i);
			h->ninsts--;
			return;
		}
}

static struct sim_op *op_find(struct sim_host *h, const char *op)
{
	for (int i = 0; i < SIM_OPS_KEPT; i++)
		if (h->ops[i].op[0] && strcmp(h->ops[i].op, op) == 0)
			return &h->ops[i];
	return NULL;
}

static struct sim_op *op_add(struct sim_host *h, const char *op)
{
	struct sim_op *o = &h->ops[h->op_next++ % SIM_OPS_KEPT];

	json_object_put(o->done);
	o->done = NULL;
	snprintf(o->op, sizeof(o->op), "%s", op);
	return o;
}

static struct json_object *done_body(const char *status, struct json_object *result,
				     const char *error)
{
	struct json_object *b = json_object_new_object();

	json_object_object_add(b, "status", json_object_new_string(status));
	if (result)
		json_object_object_add(b, "result", result);
	if (error)
		json_object_object_add(b, "error", json_object_new_string(error));
	return b;
}

/* What an action does to the instance's state; NULL: nothing (it just succeeds). */
static const struct {
	const char *action;
	const char *state;
} action_states[] = {
	{"start", "running"},  {"restart", "running"}, {"resume", "running"},
	{"reboot", "running"}, {"stop", "stopped"},    {"force-stop", "stopped"},
	{"pause", "paused"},   {NULL, NULL},
};

/* Run an instance command at once; returns its op-done body. */
static struct json_object *instance_run(struct sim_host *h, struct json_object *cmd)
{
	const char *action = json_get_str(cmd, "action", "");
	struct json_object *spec = json_object_object_get(cmd, "instance");
	struct json_object *args = json_object_object_get(cmd, "args");
	const char *name = json_get_str(spec, "name", "");
	struct json_object *result, *report;
	struct sim_inst *i = inst_find(h, name);

	if (opt.fail_rate > 0 && (double)random() / RAND_MAX < opt.fail_rate)
		return done_body("failed", NULL, "simulated failure (--fail-rate)");
	if (strcmp(action, "create") == 0) {
		if (i == NULL) {
			i = xcalloc(1, sizeof(*i));
			snprintf(i->name, sizeof(i->name), "%s", name);
			snprintf(i->type, sizeof(i->type), "%s",
				 json_get_str(spec, "type", "container"));
			i->next = h->insts;
			h->insts = i;
			h->ninsts++;
		}
		snprintf(i->state, sizeof(i->state), "%s",
			 json_get_bool(args, "start", true) ? "running" : "stopped");
		i->started_at = now_ms();
	} else if (i == NULL) {
		if (strcmp(action, "delete") != 0)
			return done_body("failed", NULL, "there is no such instance on this host");
	} else {
		for (size_t k = 0; action_states[k].action; k++)
			if (strcmp(action_states[k].action, action) == 0) {
				snprintf(i->state, sizeof(i->state), "%s", action_states[k].state);
				i->started_at = now_ms();
			}
	}
	result = json_object_new_object();
	if (i) {
		report = inst_report(i);
	} else {
		report = json_object_new_object();
		json_object_object_add(report, "name", json_object_new_string(name));
		json_object_object_add(report, "type", json_object_new_string("container"));
	}
	if (strcmp(action, "delete") == 0) {
		json_object_object_add(report, "state", json_object_new_string("stopped"));
		inst_remove(h, name);
	}
	json_object_object_add(result, "instance", report);
	return done_body("succeeded", result, NULL);
}

static void command_accept(struct sim_host *h, void *control, const struct link_msg *m)
{
	struct sim_op *o = op_find(h, m->op);
	struct json_object *done;

	if (o) {
		send_later(h, control, LINK_ACK, m->op, json_object_new_object());
		if (o->done)
			send_later(h, NULL, LINK_OP_DONE, m->op, json_object_get(o->done));
		return;
	}
	o = op_add(h, m->op);
	send_later(h, control, LINK_ACK, m->op, json_object_new_object());
	if (m->type == LINK_CMD_PROBE) {
		struct json_object *result = json_object_new_object();

		json_object_object_add(result, "facts", facts_json(h));
		done = done_body("succeeded", result, NULL);
	} else {
		done = instance_run(h, m->body);
	}
	o->done = json_object_get(done);
	send_later(h, NULL, LINK_OP_DONE, m->op, done);
}

static struct json_object *canned_data(void)
{
	struct json_object *a = json_object_new_object();
	_cleanup_free_ char *b64 = base64_encode(SIM_CANNED, strlen(SIM_CANNED));

	json_object_object_add(a, "data", json_object_new_string(b64));
	json_object_object_add(a, "offset", json_object_new_int64((int64_t)strlen(SIM_CANNED)));
	json_object_object_add(a, "size", json_object_new_int64((int64_t)strlen(SIM_CANNED)));
	return a;
}

static void query_answer(struct sim_host *h, void *control, const struct link_msg *m)
{
	const char *what = json_get_str(m->body, "what", "");
	struct json_object *answer = json_object_new_object();

	if (strcmp(what, "net") == 0) {
		const char *hash = json_get_str(json_object_object_get(m->body, "doc"), "hash", "");

		snprintf(h->net_hash, sizeof(h->net_hash), "%s", hash);
		json_object_object_add(answer, "hash", json_object_new_string(hash));
	} else if (strcmp(what, "exec") == 0) {
		/* As an agent does: acked as deferred, answered by a query-done. */
		struct json_object *done = json_object_new_object(), *a = json_object_new_object();
		_cleanup_free_ char *b64 = base64_encode(SIM_CANNED, strlen(SIM_CANNED));

		json_object_object_add(a, "exit_code", json_object_new_int(0));
		json_object_object_add(a, "output", json_object_new_string(b64));
		json_object_object_add(a, "truncated", json_object_new_boolean(false));
		json_object_object_add(a, "timed_out", json_object_new_boolean(false));
		json_object_object_add(done, "answer", a);
		json_object_object_add(answer, "deferred", json_object_new_boolean(true));
		send_later(h, control, LINK_ACK, m->op, answer);
		send_later(h, NULL, LINK_QUERY_DONE, m->op, done);
		return;
	} else {
		json_object_put(answer);
		answer = canned_data(); /* logs, console */
	}
	send_later(h, control, LINK_ACK, m->op, answer);
}

/* The host a sealed header names: NAME%05d, found without a search. */
static struct sim_host *host_by_name(const char *name)
{
	size_t plen = strlen(opt.prefix);
	char *end;
	long i;

	if (strncmp(name, opt.prefix, plen) != 0)
		return NULL;
	i = strtol(name + plen, &end, 10) - 1;
	if (*end || i < 0 || i >= opt.nhosts || strcmp(hosts[i].name, name) != 0 ||
	    !hosts[i].joined)
		return NULL;
	return &hosts[i];
}

static void request_handle(const unsigned char *buf, size_t len, void *control)
{
	char dir, name[SEAL_HOST_MAX + 1];
	struct sim_host *h;
	struct link_msg m;
	struct kerr err;

	if (seal_peek(buf, len, &dir, name) < 0 || dir != SEAL_DIR_TO_AGENT ||
	    (h = host_by_name(name)) == NULL) {
		log_warnx("rejected a command: not sealed for a host of ours");
		nn_freemsg(control);
		return;
	}
	if (link_msg_open(h->key, SEAL_DIR_TO_AGENT, buf, len, &m, &err) < 0 ||
	    seal_replay_check(&h->replay, m.seq, now_us(), LINK_REPLAY_WINDOW_US, &err) < 0) {
		log_warnx("%s: rejected a command: %s", name, err.msg);
		link_msg_clear(&m);
		nn_freemsg(control);
		return;
	}
	switch (m.type) {
	case LINK_CMD_PROBE:
	case LINK_CMD_INSTANCE:
		command_accept(h, control, &m);
		break;
	case LINK_CMD_QUERY:
		query_answer(h, control, &m);
		break;
	default: {
		struct json_object *b = json_object_new_object();

		json_object_object_add(b, "error", json_object_new_string("not a command"));
		send_later(h, control, LINK_NACK, m.op, b);
		break;
	}
	}
	link_msg_clear(&m);
}

static void rep_poll_cb(uv_poll_t *p, int status, int events)
{
	for (;;) {
		void *body = NULL, *control = NULL;
		struct nn_iovec iov = {.iov_base = &body, .iov_len = NN_MSG};
		struct nn_msghdr hdr = {.msg_iov = &iov,
					.msg_iovlen = 1,
					.msg_control = &control,
					.msg_controllen = NN_MSG};
		int n = nn_recvmsg(rep_sock, &hdr, NN_DONTWAIT);

		if (n < 0)
			return;
		request_handle(body, (size_t)n, control);
		nn_freemsg(body);
	}
}

/* ---- joining ---- */

static int events_open(const char *events)
{
	char url[JOIN_ADDR_MAX + 32], host[64];
	const char *rest = events + strlen("tcp://"), *colon = strrchr(rest, ':');
	int sndbuf = 4 * 1024 * 1024;

	if (push_socks)
		return 0;
	/* A wildcard event address is reached where we joined, as the agent does. */
	snprintf(host, sizeof(host), "%.*s", (int)(colon - rest), rest);
	if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "*") == 0) {
		const char *c = strrchr(opt.controller, ':');

		snprintf(url, sizeof(url), "tcp://%.*s%s", (int)(c - opt.controller),
			 opt.controller, colon);
	} else {
		snprintf(url, sizeof(url), "%s", events);
	}
	push_socks = xcalloc((size_t)npush, sizeof(*push_socks));
	for (int i = 0; i < npush; i++) {
		push_socks[i] = nn_socket(AF_SP, NN_PUSH);
		if (push_socks[i] < 0 ||
		    nn_setsockopt(push_socks[i], NN_SOL_SOCKET, NN_SNDBUF, &sndbuf,
				  sizeof(sndbuf)) < 0 ||
		    nn_connect(push_socks[i], url) < 0) {
			log_warnx("cannot open event socket %d to %s: %s", i, url,
				  nn_strerror(nn_errno()));
			return -1;
		}
	}
	log_info("events go to %s over %d connections", url, npush);
	return 0;
}

static void join_start(struct join_slot *s);

static void join_done(struct join_slot *s, const char *reply, size_t len)
{
	struct sim_host *h = s->h;
	struct join_answer ans;
	struct kerr err;

	s->h = NULL;
	if (join_answer_read(h->name, h->token, reply, len, h->priv, h->pub, &ans, &err) < 0) {
		log_warnx("%s: join failed: %s", h->name, err.msg);
		join_failed++;
	} else if (events_open(ans.events) == 0) {
		memcpy(h->key, ans.key, sizeof(h->key));
		h->joined = true;
		h->started_ms = now_ms();
		if (opt.heartbeat_s == 0 && ans.heartbeat_interval > 0)
			interval_ms = ans.heartbeat_interval * 1000;
		if (++joined + join_failed == opt.nhosts) {
			t_all_joined_ms = now_ms();
			printf("simhosts: %d of %d simulated hosts joined in %.2f s\n", joined,
			       opt.nhosts, (double)(t_all_joined_ms - t_start_ms) / 1000);
			fflush(stdout);
		}
		heartbeat_send(h); /* what brings it online, as an agent's first beat */
	}
	explicit_bzero(h->priv, sizeof(h->priv));
	explicit_bzero(h->token, sizeof(h->token));
	join_start(s);
}

static void join_poll_cb(uv_poll_t *p, int status, int events)
{
	struct join_slot *s = p->data;
	char *buf = NULL;
	int n;

	while (s->h && (n = nn_recv(s->sock, &buf, NN_MSG, NN_DONTWAIT)) >= 0) {
		join_done(s, buf, (size_t)n);
		nn_freemsg(buf);
	}
}

/* Send the next host's join request on slot s, if a host is left. */
static void join_start(struct join_slot *s)
{
	_cleanup_free_ char *text = NULL;
	struct sim_host *h;
	struct kerr err;

	if (join_next >= opt.nhosts)
		return;
	h = &hosts[join_next++];
	if (seal_keypair(h->priv, h->pub, &err) < 0) {
		log_warnx("%s: %s", h->name, err.msg);
		join_failed++;
		return;
	}
	text = join_request_build(h->name, h->token, h->addr, h->pub);
	if (nn_send(s->sock, text, strlen(text), NN_DONTWAIT) < 0) {
		log_warnx("%s: cannot send the join: %s", h->name, nn_strerror(nn_errno()));
		join_failed++;
		return;
	}
	s->h = h;
	s->sent_ms = now_ms();
}

/* ---- the tick: heartbeats paced evenly over the interval, delayed answers ---- */

static void status_print(int64_t now)
{
	int ninsts = 0;

	for (int i = 0; i < opt.nhosts; i++)
		ninsts += hosts[i].ninsts;
	printf("simhosts: %.0f s: %d joined, %d failed, %lld heartbeats sent (%lld dropped), "
	       "%d instances \"running\"\n",
	       (double)(now - t_start_ms) / 1000, joined, join_failed, (long long)beats_sent,
	       (long long)beats_dropped, ninsts);
	fflush(stdout);
}

static void tick_cb(uv_timer_t *t)
{
	static int64_t last_status;
	int64_t now = now_ms(), due;

	retry_flush();
	delayed_flush(now);
	for (int i = 0; i < opt.join_parallel; i++) {
		struct join_slot *s = &slots[i];

		/* A lost join answer: the token may be spent, so the host is given up. */
		if (s->h && now - s->sent_ms > SIM_JOIN_WAIT_MS) {
			log_warnx("%s: no join answer in %d s", s->h->name,
				  SIM_JOIN_WAIT_MS / 1000);
			join_failed++;
			s->h = NULL;
			join_start(s);
		}
	}
	/* Host k beats at origin + k * interval / N + m * interval: evenly spread. */
	if (beat_origin_ms == 0)
		beat_origin_ms = now;
	due = (now - beat_origin_ms) * opt.nhosts / interval_ms;
	for (; beat_cursor < due; beat_cursor++) {
		struct sim_host *h = &hosts[beat_cursor % opt.nhosts];

		if (h->joined)
			heartbeat_send(h);
	}
	if (now - last_status >= 10000) {
		last_status = now;
		status_print(now);
	}
}

static void stop_cb(uv_signal_t *s, int signum)
{
	status_print(now_ms());
	uv_stop(loop);
}

/* ---- start-up ---- */

static void fd_limit_raise(void)
{
	struct rlimit rl;

	/* Two descriptors per host (its listener, the controller's connection to it). */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.nhosts * 2 + 256)
		log_warnx("open files limited to %llu; %d hosts need about %d",
			  (unsigned long long)rl.rlim_cur, opt.nhosts, opt.nhosts * 2 + 256);
}

static int tokens_read(void)
{
	FILE *f = fopen(opt.tokens_path, "r");
	char line[256];
	int i = 0;

	if (f == NULL) {
		log_warn("cannot open %s", opt.tokens_path);
		return -1;
	}
	while (i < opt.nhosts && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (!token_well_formed(line))
			continue;
		snprintf(hosts[i].token, sizeof(hosts[i].token), "%s", line);
		i++;
	}
	fclose(f);
	if (i < opt.nhosts) {
		log_warnx("%s holds %d join tokens; %d hosts need one each", opt.tokens_path, i,
			  opt.nhosts);
		return -1;
	}
	return 0;
}

static int sockets_open(void)
{
	int fd, maxsize = LINK_MSG_MAX;
	size_t sz = sizeof(fd);
	char url[128];

	rep_sock = nn_socket(AF_SP_RAW, NN_REP);
	if (rep_sock < 0)
		return -1;
	nn_setsockopt(rep_sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &maxsize, sizeof(maxsize));
	for (int i = 0; i < opt.nhosts; i++) {
		snprintf(url, sizeof(url), "tcp://%s:%d", listen_ip, listen_port + i);
		if (nn_bind(rep_sock, url) < 0) {
			log_warnx("cannot listen at %s: %s", url, nn_strerror(nn_errno()));
			return -1;
		}
	}
	nn_getsockopt(rep_sock, NN_SOL_SOCKET, NN_RCVFD, &fd, &sz);
	uv_poll_init(loop, &rep_poll, fd);
	uv_poll_start(&rep_poll, UV_READABLE, rep_poll_cb);

	slots = xcalloc((size_t)opt.join_parallel, sizeof(*slots));
	snprintf(url, sizeof(url), "tcp://%s", opt.controller);
	for (int i = 0; i < opt.join_parallel; i++) {
		struct join_slot *s = &slots[i];
		int resend = 3600 * 1000; /* never: a resent join would find its token spent */

		s->sock = nn_socket(AF_SP, NN_REQ);
		if (s->sock < 0 || nn_connect(s->sock, url) < 0) {
			log_warnx("cannot connect to %s: %s", url, nn_strerror(nn_errno()));
			return -1;
		}
		nn_setsockopt(s->sock, NN_REQ, NN_REQ_RESEND_IVL, &resend, sizeof(resend));
		sz = sizeof(fd);
		nn_getsockopt(s->sock, NN_SOL_SOCKET, NN_RCVFD, &fd, &sz);
		uv_poll_init(loop, &s->poll, fd);
		s->poll.data = s;
		uv_poll_start(&s->poll, UV_READABLE, join_poll_cb);
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"controller", required_argument, NULL, 'c'},
		{"tokens", required_argument, NULL, 't'},
		{"hosts", required_argument, NULL, 'n'},
		{"listen-base", required_argument, NULL, 'l'},
		{"prefix", required_argument, NULL, 'p'},
		{"latency-ms", required_argument, NULL, 'L'},
		{"fail-rate", required_argument, NULL, 'f'},
		{"cpus", required_argument, NULL, 'C'},
		{"memory-mb", required_argument, NULL, 'M'},
		{"join-parallel", required_argument, NULL, 'j'},
		{"heartbeat", required_argument, NULL, 'b'},
		{"push-sockets", required_argument, NULL, 'P'},
		{"full-facts", no_argument, NULL, 'F'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *colon;
	int c;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			opt.controller = optarg;
			break;
		case 't':
			opt.tokens_path = optarg;
			break;
		case 'n':
			opt.nhosts = atoi(optarg);
			break;
		case 'l':
			opt.listen_base = optarg;
			break;
		case 'p':
			opt.prefix = optarg;
			break;
		case 'L':
			opt.latency_ms = atoi(optarg);
			break;
		case 'f':
			opt.fail_rate = atof(optarg);
			break;
		case 'C':
			opt.cpus = atoi(optarg);
			break;
		case 'M':
			opt.memory_mb = atoll(optarg);
			break;
		case 'j':
			opt.join_parallel = atoi(optarg);
			break;
		case 'b':
			opt.heartbeat_s = atoi(optarg);
			break;
		case 'P':
			npush = atoi(optarg);
			break;
		case 'F':
			opt.full_facts = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!opt.controller || !opt.tokens_path || !opt.listen_base || opt.nhosts < 1 ||
	    opt.nhosts > 100000 || opt.fail_rate < 0 || opt.fail_rate > 1 ||
	    opt.join_parallel < 1 || opt.join_parallel > 128 || npush < 1 || npush > 256 ||
	    strlen(opt.prefix) > 40 || !(colon = strrchr(opt.listen_base, ':')) ||
	    !strchr(opt.controller, ':')) {
		usage(stderr);
		return 2;
	}
	snprintf(listen_ip, sizeof(listen_ip), "%.*s", (int)(colon - opt.listen_base),
		 opt.listen_base);
	listen_port = atoi(colon + 1);
	if (listen_port < 1 || listen_port + opt.nhosts > 65535) {
		fprintf(stderr, "simhosts: --listen-base ports %d..%d do not fit\n", listen_port,
			listen_port + opt.nhosts - 1);
		return 2;
	}
	log_init("simhosts", LOG_LEVEL_INFO);
	if (npush > opt.nhosts)
		npush = opt.nhosts;
	if (opt.heartbeat_s > 0)
		interval_ms = opt.heartbeat_s * 1000;
	fd_limit_raise();
	hosts = xcalloc((size_t)opt.nhosts, sizeof(*hosts));
	for (int i = 0; i < opt.nhosts; i++) {
		struct sim_host *h = &hosts[i];

		h->idx = i;
		snprintf(h->name, sizeof(h->name), "%s%05d", opt.prefix, i + 1);
		snprintf(h->addr, sizeof(h->addr), "tcp://%s:%d", listen_ip, listen_port + i);
	}
	if (tokens_read() < 0)
		return 1;
	signal(SIGPIPE, SIG_IGN);
	loop = uv_default_loop();
	if (sockets_open() < 0)
		return 1;
	printf("simhosts: SIMULATION of %d hosts (%s00001..), commands at %s:%d..%d\n", opt.nhosts,
	       opt.prefix, listen_ip, listen_port, listen_port + opt.nhosts - 1);
	fflush(stdout);
	t_start_ms = now_ms();
	for (int i = 0; i < opt.join_parallel; i++)
		join_start(&slots[i]);
	uv_timer_init(loop, &tick);
	uv_timer_start(&tick, tick_cb, SIM_TICK_MS, SIM_TICK_MS);
	uv_signal_init(loop, &sigint);
	uv_signal_start(&sigint, stop_cb, SIGINT);
	uv_signal_init(loop, &sigterm);
	uv_signal_start(&sigterm, stop_cb, SIGTERM);
	uv_run(loop, UV_RUN_DEFAULT);
	/* A bench tool ends with its process: nanomsg and the OS release the rest. */
	nn_term();
	return 0;
}
