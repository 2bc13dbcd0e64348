/*
 * link.c - the agent's end of the sealed link, driven from the loop.
 *
 *   NN_REP at --listen:  commands from the controller, each answered with a sealed
 *                        ack (or nack); the work then runs asynchronously. A new
 *                        command's ack waits until its op id is on disk (opcache.c
 *                        writes it off the loop); meanwhile no request is read, as
 *                        a REP socket answers one request at a time (a receive
 *                        would drop the reply owed), so replies keep their order.
 *                        (An exec query is acked as deferred; its answer follows
 *                        as a query-done event when the command ended. So is a
 *                        net query, answered once its document is on disk.)
 *                        A request whose seq is ahead of our clock waits, the
 *                        same way, for link.seq to keep it (written on the
 *                        agent's lane).
 *   NN_PUSH to events:   heartbeats, op-progress, op-done and query-done toward the
 *                        controller.
 *
 * nanomsg sockets are not file descriptors; each offers one (NN_RCVFD, NN_SNDFD)
 * that is readable while the socket can receive or send, which uv_poll watches.
 * Every message is drained with NN_DONTWAIT so the loop never waits on the network.
 */
#include "agentd.h"

#include <errno.h>
#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>
#include <nanomsg/reqrep.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "util.h"

#define PUSH_WARN_AFTER_US (3 * 1000000LL) /* connecting takes a moment at start-up */

/*
 * Replies and events travel on different sockets, but the controller checks both
 * against one replay window per host: an op-progress sealed just after an ack but
 * read first would make the ack look replayed. So after each reply, events wait in
 * the send queue this long (and are sealed, with fresh seqs, when they leave).
 */

typedef void (*command_start_fn)(struct agent *a, const char *op, struct json_object *body);
/* A deeper check of a command's body than its table, before it is acked. */
typedef int (*command_check_fn)(struct json_object *body, struct kerr *err);

/* Bodies of the commands the controller sends; every field must be declared. */
static const struct json_field probe_fields[] = {
	{NULL, 0, false, NULL},
};
/* instance_cmd_check() looks into "instance" and "args" with its own tables. */
static const struct json_field instance_fields[] = {
	{"action", JK_STRING, true, NULL},
	{"instance", JK_OBJECT, true, NULL},
	{"args", JK_OBJECT, false, NULL},
	{"timeout_ms", JK_INT, false, NULL}, /* what is left of the job's deadline */
	{NULL, 0, false, NULL},
};

/* The new command whose op id is being written: acked and started once it is on disk. */
struct link_held {
	char op[LINK_OP_ID_MAX + 1];
	enum link_type type;
	struct json_object
		*body; /* a copy of our own (link_msg_clear() wipes the message's secrets) */
	command_start_fn start;
	uint64_t gen; /* the op cache's change that took op */
	uint64_t since_ms;
};

#define LINK_HELD_WARN_MS 10000 /* a held command says so in the log this often */

static void rep_poll_cb(uv_poll_t *handle, int status, int events);

static int msg_seal(struct agent *a, enum link_type type, const char *op, struct json_object *body,
		    unsigned char **out, size_t *outlen, struct kerr *err)
{
	struct link_msg m = {.type = type, .seq = seal_seq_next(&a->seq_last), .body = body};

	snprintf(m.host, sizeof(m.host), "%s", a->link.host);
	snprintf(m.op, sizeof(m.op), "%s", op ? op : "");
	return link_msg_seal(a->link.key, SEAL_DIR_TO_CONTROLLER, &m, out, outlen, err);
}

static void push_state(struct agent *a, bool ok)
{
	int64_t now = now_us();

	if (ok) {
		if (a->push_warned)
			log_info("link: controller at %s takes messages again", a->link.events);
		a->push_failing = a->push_warned = false;
		return;
	}
	if (!a->push_failing) {
		a->push_failing = true;
		a->push_failing_since = now;
	}
	if (!a->push_warned && now - a->push_failing_since >= PUSH_WARN_AFTER_US) {
		log_warnx("link: controller at %s is not taking messages; the newest heartbeat "
			  "and op events are held until it does",
			  a->link.events);
		a->push_warned = true;
	}
}

/* Seal and send one message on the push socket: 0, -EAGAIN (try later) or -1 (dropped). */
static int push_try(struct agent *a, enum link_type type, const char *op, struct json_object *body)
{
	_cleanup_free_ unsigned char *buf = NULL;
	struct kerr err;
	size_t len;

	if (msg_seal(a, type, op, body, &buf, &len, &err) < 0) {
		log_warnx("link: cannot seal %s: %s", link_type_name(type), err.msg);
		return -1;
	}
	if (nn_send(a->push_sock, buf, len, NN_DONTWAIT) >= 0) {
		push_state(a, true);
		return 0;
	}
	if (nn_errno() == EAGAIN) {
		push_state(a, false);
		return -EAGAIN;
	}
	log_warnx("link: cannot send %s to %s: %s", link_type_name(type), a->link.events,
		  nn_strerror(nn_errno()));
	return -1;
}

static void push_poll_cb(uv_poll_t *handle, int status, int events);

/* Wait for the push socket to take messages again (push_poll_cb). */
static void push_wait(struct agent *a)
{
	if (!a->push_polling && uv_poll_start(&a->push_poll, UV_READABLE, push_poll_cb) == 0)
		a->push_polling = true;
}

/*
 * Send what the queue holds, in order, until the controller stops taking it. Once it
 * is empty, the console relays that stopped reading (link_console_send()) read again:
 * QEMU's sockets fill meanwhile, so a flood slows to what the link carries.
 */
static void sendq_flush(struct agent *a)
{
	while (a->sendq.head) {
		struct sendq_item *it = a->sendq.head;

		/* A heartbeat held while the controller was away, but fenced since. */
		if (it->type == LINK_HEARTBEAT && !lease_heartbeat_allowed(a)) {
			sendq_pop(&a->sendq);
			continue;
		}
		if (push_try(a, it->type, it->op, it->body) == -EAGAIN) {
			push_wait(a);
			return;
		}
		sendq_pop(&a->sendq);
	}
	if (a->push_polling) {
		uv_poll_stop(&a->push_poll);
		a->push_polling = false;
	}
	if (a->console_held) {
		a->console_held = false;
		console_relays_resume(a);
		vnc_streams_resume(a);
	}
}

static void push_poll_cb(uv_poll_t *handle, int status, int events)
{
	struct agent *a = handle->data;

	if (status < 0)
		log_warnx("link: event socket poll: %s", uv_strerror(status));
	sendq_flush(a);
}

/*
 * Send a message of type (about op, or NULL) to the controller's event socket; body is
 * consumed. While the controller does not take messages, events wait in order in a
 * bounded queue and are sealed (with a fresh seq) when they leave; one heartbeat waits
 * at most, carrying the newest facts. When the queue is full, console data, then the
 * heartbeat, then progress give way, never an op's end (sendq.c).
 */
void link_event_send(struct agent *a, enum link_type type, const char *op, struct json_object *body)
{
	int dropped;

	if (a->stopping) {
		json_object_put(body);
		return;
	}
	if (a->sendq.head == NULL && push_try(a, type, op, body) != -EAGAIN) {
		json_object_put(body);
		return;
	}
	dropped = sendq_add(&a->sendq, type, op, body);
	if (dropped >= 0)
		log_warnx("link: %u events waiting for the controller; dropped a %s", a->sendq.len,
			  link_type_name((enum link_type)dropped));
	/* The dropped beat may have carried the whole facts: the next one carries them. */
	if (dropped == LINK_HEARTBEAT)
		a->heartbeat_digest[0] = '\0';
	push_wait(a);
}

/*
 * Send console data (body, consumed) only if it delays nothing: the queue is empty and
 * the push socket takes it now. Returns 0 when sent, -EAGAIN when not: the relay keeps
 * its bytes, stops reading its QEMU socket and is resumed (console_relays_resume(),
 * vnc_streams_resume()) once the queue has drained, so a guest flooding its serial port
 * or a VNC client asking for full-screen updates never delays heartbeats or op events.
 * -1: the message could not be sealed or sent at all (dropped).
 */
int link_console_send(struct agent *a, struct json_object *body)
{
	int ret = -EAGAIN;

	if (!a->stopping && a->sendq.head == NULL && !a->console_held)
		ret = push_try(a, LINK_CONSOLE_DATA, NULL, body);
	json_object_put(body);
	if (ret == -EAGAIN && !a->stopping) {
		a->console_held = true;
		push_wait(a);
	}
	return ret;
}

/* Answer the request at hand on the command socket; body is consumed. */
static void reply_send(struct agent *a, enum link_type type, const char *op,
		       struct json_object *body)
{
	_cleanup_free_ unsigned char *buf = NULL;
	struct kerr err;
	size_t len;
	int ret;

	ret = msg_seal(a, type, op, body, &buf, &len, &err);
	json_object_put(body);
	if (ret < 0) {
		log_warnx("link: cannot seal %s: %s", link_type_name(type), err.msg);
		return;
	}
	if (nn_send(a->rep_sock, buf, len, NN_DONTWAIT) < 0) {
		log_warnx("link: cannot reply %s: %s", link_type_name(type),
			  nn_strerror(nn_errno()));
		return;
	}
}

static void nack_send(struct agent *a, const struct link_msg *m, const char *type, const char *fmt,
		      ...) __attribute__((format(printf, 4, 5)));

/* Refuse the command m (of type, by name) at hand with a reason the controller shows. */
static void nack_send(struct agent *a, const struct link_msg *m, const char *type, const char *fmt,
		      ...)
{
	struct json_object *body = json_object_new_object();
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	log_warnx("link: refused %s command%s%s: %s", type, m->op[0] ? " for op " : "", m->op, why);
	json_object_object_add(body, "error", json_object_new_string(why));
	reply_send(a, LINK_NACK, m->op, body);
}

/* A request held until link.seq keeps its seq (seq_hold()). */
struct seq_held {
	struct work w; /* first: common/work.h's job, the write of link.seq */
	struct agent *a;
	struct link_msg m; /* the request, its body its own */
	bool unknown;	   /* a type this agent does not know: nacked */
	char type[64];	   /* ... named so */
	char path[PATH_MAX];
	char text[32];
	uint64_t since_ms; /* when it was held (uv_now) */
};

static void held_free(struct agent *a)
{
	struct link_msg m = {.body = a->held->body};

	uv_timer_stop(&a->held_timer);
	link_msg_clear(&m); /* its copy of a store's key wiped, as the message's */
	free(a->held);
	a->held = NULL;
}

/* Ack the held command, whose op id is on disk, and start it. */
static void held_run(struct agent *a)
{
	struct link_held *held = a->held;

	reply_send(a, LINK_ACK, held->op, json_object_new_object());
	log_info("op %s: %s started", held->op, link_type_name(held->type));
	held->start(a, held->op, held->body);
	held_free(a);
}

/*
 * Refuse the held command: its op id could not be written (why). Acked and run, a
 * restart could run its resend again; refused, nothing ran and the controller fails
 * the operation with the reason. Its id goes from the cache, so a resend is taken anew.
 */
static void held_refuse(struct agent *a, const char *why)
{
	struct json_object *body = json_object_new_object();
	char text[400];

	snprintf(text, sizeof(text), "the host cannot record the operation on disk: %s", why);
	log_warnx("link: refused %s command for op %s: %s", link_type_name(a->held->type),
		  a->held->op, text);
	json_object_object_add(body, "error", json_object_new_string(text));
	reply_send(a, LINK_NACK, a->held->op, body);
	opcache_drop(&a->ops, a->held->op);
	held_free(a);
}

/* A write that takes long (a stuck disk) leaves the host's commands waiting: say so. */
static void held_timer_cb(uv_timer_t *t)
{
	struct agent *a = t->data;

	if (a->held)
		log_warnx("op %s: %s still waits for its op id to reach the disk after %llu s; "
			  "no command to this host is read meanwhile",
			  a->held->op, link_type_name(a->held->type),
			  (unsigned long long)((uv_now(a->loop) - a->held->since_ms) / 1000));
	else if (a->seq_held)
		log_warnx(
			"link: a request still waits for link.seq to reach the disk after %llu s; "
			"no command to this host is read meanwhile",
			(unsigned long long)((uv_now(a->loop) - a->seq_held->since_ms) / 1000));
}

/*
 * Whether m is an instance command whose verb's row says VF_IDEMPOTENT. Its body
 * passed its checks; an unknown action is not (dispatch.c refuses it when it starts).
 */
static bool command_idempotent(const struct link_msg *m)
{
	int v;

	if (m->type != LINK_CMD_INSTANCE)
		return false;
	v = verb_find(json_get_str(m->body, "action", ""));
	return v >= 0 && (verb_get((enum verb)v)->flags & VF_IDEMPOTENT);
}

/*
 * Ack a command and start it once its op id is on disk (an idempotent one at once),
 * unless its op was seen already: then ack again and re-send its result if it has
 * one, but never run it twice. A body that fails fields or check (NULL: none) is
 * nacked and nothing runs.
 */
static void command_accept(struct agent *a, const struct link_msg *m,
			   const struct json_field *fields, command_check_fn check,
			   command_start_fn start)
{
	struct link_held *held;
	struct op_entry *e;
	struct kerr err;

	if (json_fields_check(m->body, fields, &err) < 0 || (check && check(m->body, &err) < 0)) {
		nack_send(a, m, link_type_name(m->type), "%s", err.msg);
		return;
	}
	if (m->op[0] == '\0') {
		nack_send(a, m, link_type_name(m->type), "the command carries no operation id");
		return;
	}
	e = opcache_find(&a->ops, m->op);
	if (e && e->earlier && !e->done) {
		/* At most once: the previous run took it and may have done part of it. */
		struct json_object *body = json_object_new_object();

		log_warnx("op %s: %s command taken by the agent's previous run; not run again",
			  m->op, link_type_name(m->type));
		json_object_object_add(body, "status", json_object_new_string("failed"));
		json_object_object_add(
			body, "error",
			json_object_new_string("the host's agent restarted while it had this "
					       "operation; it is not run twice: check the "
					       "instance and try again"));
		opcache_finish(&a->ops, m->op, body);
		reply_send(a, LINK_ACK, m->op, json_object_new_object());
		link_event_send(a, LINK_OP_DONE, m->op, body);
		return;
	}
	if (e) {
		log_info("op %s: %s command resent; acked again%s", m->op, link_type_name(m->type),
			 e->done ? ", result re-sent" : "");
		reply_send(a, LINK_ACK, m->op, json_object_new_object());
		if (e->done)
			link_event_send(a, LINK_OP_DONE, m->op, json_object_get(e->done_body));
		return;
	}
	if (command_idempotent(m)) {
		/* Run twice, it leaves the same state: no wait for the disk (a guest
		 * paused for a migration's switchover waits on it). */
		opcache_add_unkept(&a->ops, m->op, m->type);
		reply_send(a, LINK_ACK, m->op, json_object_new_object());
		log_info("op %s: %s started (idempotent: its id is kept in memory only)", m->op,
			 link_type_name(m->type));
		start(a, m->op, m->body);
		return;
	}
	held = xcalloc(1, sizeof(*held));
	snprintf(held->op, sizeof(held->op), "%s", m->op);
	held->type = m->type;
	/* A copy: the message's secrets (a store's key) are wiped when it is cleared,
	 * before the command starts (common/link.c link_msg_clear()). */
	if (json_object_deep_copy(m->body, &held->body, NULL) < 0)
		fatalx("link: cannot copy a command's body");
	held->start = start;
	opcache_add(&a->ops, m->op, m->type);
	held->gen = a->ops.gen;
	held->since_ms = uv_now(a->loop);
	a->held = held;
	if (opcache_on_disk(&a->ops, held->gen)) {
		held_run(a);
		return;
	}
	/* No request is read until this one is answered (link_ops_written()). */
	uv_poll_stop(&a->rep_poll);
	uv_timer_start(&a->held_timer, held_timer_cb, LINK_HELD_WARN_MS, LINK_HELD_WARN_MS);
}

/*
 * The op cache wrote its ids (c->owner is the agent): once the held command's id is
 * among them, ack and start it and read the next request.
 */
void link_ops_written(struct opcache *c)
{
	struct agent *a = c->owner;
	int ret;

	if (a->held == NULL || !opcache_on_disk(c, a->held->gen))
		return;
	if (opcache_write_error(c))
		held_refuse(a, opcache_write_error(c));
	else
		held_run(a);
	if (a->stopping)
		return;
	/* Not watched, the host would look alive (heartbeats) and take no command ever. */
	ret = uv_poll_start(&a->rep_poll, UV_READABLE, rep_poll_cb);
	if (ret < 0)
		fatalx("link: cannot watch the command socket again: %s", uv_strerror(ret));
}

/*
 * A query is answered in the ack itself and changes nothing, so it bypasses the op
 * cache: asking twice simply answers twice. An exec answers when its command ends
 * (a net query when its document is on disk): its ack says {"deferred": true} at
 * once, and the answer follows as a query-done event, so a long exec holds up no
 * other command to this host.
 */
static void query_answer(struct agent *a, const struct link_msg *m)
{
	struct json_object *answer = NULL;
	struct kerr err;
	int64_t now = now_us();
	int ret;

	/*
	 * At most once: the controller never resends a query, but nanomsg hands a
	 * request that was on its way to a dead agent on to the next one at the same
	 * address. A query sealed before this agent started may have reached (and run
	 * on) the previous one, and one past its expiry was failed by the controller
	 * already: neither runs. Both compare the controller's clock with ours, as the
	 * replay window does.
	 */
	if (m->seq < a->started_us) {
		nack_send(a, m, link_type_name(m->type),
			  "sent %lld ms before this agent started; not run, as the previous "
			  "run may have taken it",
			  (long long)((a->started_us - m->seq) / 1000));
		return;
	}
	if (m->expires && now > m->expires) {
		nack_send(a, m, link_type_name(m->type),
			  "arrived %lld ms after the controller stopped waiting for it; not run",
			  (long long)((now - m->expires) / 1000));
		return;
	}
	ret = instance_query(a, m->op, m->body, &answer, &err);
	if (ret < 0) {
		nack_send(a, m, link_type_name(m->type), "%s", err.msg);
		return;
	}
	if (ret > 0) {
		/* Answered later, on the event socket (link_query_reply()): the command
		 * socket goes on serving meanwhile. */
		answer = json_object_new_object();
		json_object_object_add(answer, "deferred", json_object_new_boolean(true));
	}
	reply_send(a, LINK_ACK, m->op, answer);
}

/*
 * Answer the query op that instance_query() deferred (acked {"deferred": true}): a
 * query-done event with answer (consumed), or with error when answer is NULL.
 */
void link_query_reply(struct agent *a, const char *op, struct json_object *answer,
		      const char *error)
{
	struct json_object *body = json_object_new_object();

	if (answer) {
		json_object_object_add(body, "answer", answer);
	} else {
		json_object_object_add(body, "error",
				       json_object_new_string(error ? error : "query failed"));
		log_warnx("link: query %s failed: %s", op, error ? error : "");
	}
	if (a->stopping) {
		json_object_put(body);
		return;
	}
	link_event_send(a, LINK_QUERY_DONE, op, body);
}

/* A cancel is answered in its ack (job.c says what the job's state is). */
static void cancel_answer(struct agent *a, const struct link_msg *m)
{
	struct json_object *ack;
	struct kerr err;

	ack = job_cancel_cmd(a, m->op, m->body, &err);
	if (ack == NULL) {
		nack_send(a, m, link_type_name(m->type), "%s", err.msg);
		return;
	}
	reply_send(a, LINK_ACK, m->op, ack);
}

/*
 * One case per message type, without a default, so a type added to link.h does not
 * compile here until someone decides whether agents take it.
 */
static void request_dispatch(struct agent *a, const struct link_msg *m)
{
	log_trace("link: %s %s", link_type_name(m->type), m->op);
	switch (m->type) {
	case LINK_CMD_PROBE:
		command_accept(a, m, probe_fields, NULL, probe_cmd_start);
		return;
	case LINK_CMD_INSTANCE:
		command_accept(a, m, instance_fields, instance_cmd_check, instance_cmd_start);
		return;
	case LINK_CMD_QUERY:
		query_answer(a, m);
		return;
	case LINK_CMD_CANCEL:
		cancel_answer(a, m);
		return;
	case LINK_INSTANCE_STATE: /* agent -> controller only */
	case LINK_CONSOLE_DATA:
	case LINK_QUERY_DONE:
	case LINK_HEARTBEAT:
	case LINK_OP_PROGRESS:
	case LINK_OP_DONE:
	case LINK_ACK:
	case LINK_NACK:
	case LINK_TYPE_COUNT:
		break;
	}
	nack_send(a, m, link_type_name(m->type), "'%s' is not a command agents take",
		  link_type_name(m->type));
}

static const struct json_field envelope_fields[] = {
	{"type", JK_STRING, true, NULL},  {"host", JK_STRING, true, NULL},
	{"seq", JK_INT, true, NULL},	  {"op", JK_STRING, false, NULL},
	{"expires", JK_INT, false, NULL}, {"body", JK_OBJECT, true, NULL},
	{NULL, 0, false, NULL},
};

/*
 * link_msg_open() refuses a type it does not know. A newer controller's command is
 * still authentic, though, and deserves a nack rather than silence (it would be resent
 * for ever), so open it far enough to answer: m gets type LINK_TYPE_COUNT, the seq
 * and op, no body; type holds the name. Returns 0, or -1 for anything else.
 */
static int unknown_command_open(struct agent *a, const unsigned char *buf, size_t len,
				struct link_msg *m, char *type, size_t typelen)
{
	_cleanup_free_ char *plain = NULL;
	struct json_object *env = NULL;
	enum link_type known;
	size_t plainlen;
	const char *op;
	int ret = -1;

	memset(m, 0, sizeof(*m));
	if (seal_open(a->link.key, buf, len, &plain, &plainlen, NULL) < 0 ||
	    json_body_parse(plain, plainlen, &env, NULL) < 0)
		return -1;
	op = json_get_str(env, "op", "");
	if (json_fields_check(env, envelope_fields, NULL) < 0 ||
	    link_type_parse(json_get_str(env, "type", ""), &known) == 0 ||
	    strcmp(json_get_str(env, "host", ""), a->link.host) != 0 ||
	    (op[0] && !link_op_id_valid(op)))
		goto out;
	m->type = LINK_TYPE_COUNT;
	snprintf(m->host, sizeof(m->host), "%s", a->link.host);
	snprintf(m->op, sizeof(m->op), "%s", op);
	m->seq = json_get_int(env, "seq", 0);
	snprintf(type, typelen, "%s", json_get_str(env, "type", ""));
	ret = 0;
out:
	json_object_put(env);
	return ret;
}

/* {state_dir}/link.seq: the last command seq accepted that was ahead of our clock. */
static char *replay_path(struct agent *a)
{
	return xasprintf("%s/link.seq", a->cfg->state_dir);
}

/* The seq link.seq holds, or 0 (also for one further ahead than any seq we take). */
static int64_t replay_saved(struct agent *a)
{
	_cleanup_free_ char *path = replay_path(a), *text = NULL;
	int64_t seq;

	if (file_read_all(path, 64, &text, NULL) < 0)
		return 0;
	seq = strtoll(text, NULL, 10);
	return seq > now_us() + LINK_REPLAY_WINDOW_US ? 0 : seq;
}

/*
 * A request whose seq is ahead of our clock, read only once link.seq keeps that seq:
 * acted on first, a power cut before the write would let a replay of it in after the
 * restart. The write (and its two fsyncs) runs on the agent's lane, as the op ids'
 * do on theirs: on the loop it held every command, heartbeat and QMP event behind it.
 * Meanwhile no request is read (the REP socket answers one at a time).
 */

static void request_run(struct agent *a, struct link_msg *m, bool unknown, const char *type);

static int seq_save_run(struct work *w)
{
	struct seq_held *h = (struct seq_held *)w;
	int ret = file_write_atomic(h->path, h->text, strlen(h->text), 0600);

	if (ret < 0)
		return err_set(&w->err, -ret, "cannot write %s", h->path);
	return 0;
}

static void seq_save_done(struct work *w)
{
	struct seq_held *h = (struct seq_held *)w;
	struct agent *a = h->a;
	bool held = a->seq_held == h; /* else dropped by link_close() */
	int ret;

	/* As before the lane: the request is still answered (the window in memory
	 * refuses its replays while this run lasts). */
	if (w->ret < 0)
		log_warnx("link: %s", w->err.msg);
	if (held) {
		a->seq_held = NULL;
		uv_timer_stop(&a->held_timer);
		request_run(a, &h->m, h->unknown, h->type);
	}
	link_msg_clear(&h->m);
	free(h);
	if (!held || a->stopping || a->held)
		return;
	ret = uv_poll_start(&a->rep_poll, UV_READABLE, rep_poll_cb);
	if (ret < 0)
		fatalx("link: cannot watch the command socket again: %s", uv_strerror(ret));
}

/* Hold m (its body taken) until link.seq keeps its seq, then run it. */
static void seq_hold(struct agent *a, struct link_msg *m, bool unknown, const char *type)
{
	struct seq_held *h = xcalloc(1, sizeof(*h));
	_cleanup_free_ char *path = replay_path(a);

	h->w.run = seq_save_run;
	h->w.done = seq_save_done;
	h->a = a;
	h->m = *m;
	m->body = NULL;
	h->unknown = unknown;
	snprintf(h->type, sizeof(h->type), "%s", type);
	snprintf(h->path, sizeof(h->path), "%s", path);
	snprintf(h->text, sizeof(h->text), "%lld\n", (long long)a->replay.last_seq);
	h->since_ms = uv_now(a->loop);
	a->seq_held = h;
	uv_poll_stop(&a->rep_poll);
	/* As a held command's: a stuck disk is said, every 10 s. */
	uv_timer_start(&a->held_timer, held_timer_cb, LINK_HELD_WARN_MS, LINK_HELD_WARN_MS);
	work_lane_queue(a->lane, &h->w);
}

/* Answer a request that passed every check (unknown: its type, named type, is not). */
static void request_run(struct agent *a, struct link_msg *m, bool unknown, const char *type)
{
	log_debug("link: %s command, op %s, seq %lld", unknown ? type : link_type_name(m->type),
		  m->op, (long long)m->seq);
	if (unknown)
		nack_send(a, m, type,
			  "unknown command '%s'; is this agent older than the "
			  "controller?",
			  type);
	else
		request_dispatch(a, m);
}

/*
 * Check a request before anything reads it. A message that fails is logged and left
 * unanswered: the REP socket drops it when the next request arrives.
 */
static void request_handle(struct agent *a, const unsigned char *buf, size_t len)
{
	char dir, host[SEAL_HOST_MAX + 1], type[64] = "";
	struct link_msg m;
	struct kerr err;
	bool unknown = false;

	if (seal_peek(buf, len, &dir, host) < 0) {
		log_warnx("link: rejected message: not a sealed message (%zu bytes)", len);
		return;
	}
	if (dir != SEAL_DIR_TO_AGENT) {
		log_warnx("link: rejected message: sealed toward the controller, not an agent");
		return;
	}
	if (strcmp(host, a->link.host) != 0) {
		log_warnx("link: rejected message: addressed to host '%s', this is '%s'", host,
			  a->link.host);
		return;
	}
	if (link_msg_open(a->link.key, SEAL_DIR_TO_AGENT, buf, len, &m, &err) < 0) {
		if (unknown_command_open(a, buf, len, &m, type, sizeof(type)) < 0) {
			log_warnx("link: rejected message: %s", err.msg);
			return;
		}
		unknown = true;
	}
	if (seal_replay_check(&a->replay, m.seq, now_us(), LINK_REPLAY_WINDOW_US, &err) < 0) {
		log_warnx("link: rejected message: %s %s: %s",
			  unknown ? type : link_type_name(m.type), m.op, err.msg);
		link_msg_clear(&m);
		return;
	}
	/* A restart resumes the window at its start time, which covers every seq up to
	 * our clock; only one ahead of it (the controller's clock runs ahead) needs
	 * keeping, before the request is acted on. */
	if (m.seq > now_us()) {
		seq_hold(a, &m, unknown, type);
		return;
	}
	request_run(a, &m, unknown, type);
	link_msg_clear(&m);
}

static void rep_poll_cb(uv_poll_t *handle, int status, int events)
{
	struct agent *a = handle->data;

	if (status < 0) {
		log_warnx("link: command socket poll: %s", uv_strerror(status));
		return;
	}
	/* A held request stopped the watch, but its poll may have fired already. */
	while (!a->stopping && a->held == NULL && a->seq_held == NULL) {
		void *buf = NULL;
		int n = nn_recv(a->rep_sock, &buf, NN_MSG, NN_DONTWAIT);

		if (n < 0) {
			if (nn_errno() != EAGAIN && nn_errno() != EINTR)
				log_warnx("link: cannot receive a command: %s",
					  nn_strerror(nn_errno()));
			return;
		}
		request_handle(a, buf, (size_t)n);
		nn_freemsg(buf);
	}
}

static int sock_fd(int sock, int option, int *fd, struct kerr *err)
{
	size_t len = sizeof(*fd);

	if (nn_getsockopt(sock, NN_SOL_SOCKET, option, fd, &len) < 0)
		return err_set(err, nn_errno(), "cannot get the socket's poll descriptor");
	return 0;
}

/*
 * Open the link: connect the push socket to a->link.events, bind the command socket
 * at the --listen address, and watch it from a->loop. Returns 0 or -1 with err; on
 * failure the caller still calls link_sockets_release().
 */
int link_open(struct agent *a, struct kerr *err)
{
	_cleanup_free_ char *url = xasprintf("tcp://%s", a->cfg->listen);
	int maxsize = LINK_MSG_MAX;

	a->push_sock = nn_socket(AF_SP, NN_PUSH);
	if (a->push_sock < 0)
		return err_set(err, nn_errno(), "cannot create the event socket");
	if (nn_connect(a->push_sock, a->link.events) < 0)
		return err_set(err, nn_errno(), "cannot connect to %s", a->link.events);
	/* The key outlives this process (link.json): whatever was sealed for it before
	 * now, or before the last seq kept, must stay refused (seal_replay_restore()). */
	seal_replay_restore(&a->replay, replay_saved(a), now_us());
	a->rep_sock = nn_socket(AF_SP, NN_REP);
	if (a->rep_sock < 0)
		return err_set(err, nn_errno(), "cannot create the command socket");
	nn_setsockopt(a->rep_sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &maxsize, sizeof(maxsize));
	if (nn_bind(a->rep_sock, url) < 0)
		return err_set(err, nn_errno(), "cannot listen for commands at %s", url);
	if (link_watch(a, err) < 0)
		return -1;
	log_info("link: commands at %s (advertised %s), events to %s", url, a->addr,
		 a->link.events);
	return 0;
}

/*
 * Watch a->rep_sock and a->push_sock (made by link_open(), or a test) from a->loop.
 * Returns 0 or -1 with err.
 */
int link_watch(struct agent *a, struct kerr *err)
{
	int rcvfd, sndfd, ret;

	if (sock_fd(a->rep_sock, NN_RCVFD, &rcvfd, err) < 0 ||
	    sock_fd(a->push_sock, NN_SNDFD, &sndfd, err) < 0)
		return -1;

	ret = uv_poll_init(a->loop, &a->rep_poll, rcvfd);
	if (ret < 0)
		return err_set(err, -ret, "cannot watch the command socket");
	a->rep_poll.data = a;
	ret = uv_poll_init(a->loop, &a->push_poll, sndfd);
	if (ret < 0)
		return err_set(err, -ret, "cannot watch the event socket");
	a->push_poll.data = a;
	ret = uv_timer_init(a->loop, &a->held_timer);
	if (ret < 0)
		return err_set(err, -ret, "cannot make a timer");
	a->held_timer.data = a;
	ret = uv_poll_start(&a->rep_poll, UV_READABLE, rep_poll_cb);
	if (ret < 0)
		return err_set(err, -ret, "cannot watch the command socket");
	return 0;
}

/*
 * Stop watching the sockets; the handles close on the loop's next turn. Messages not
 * yet sent are dropped. A command held for its op id's write is dropped too, unacked:
 * its id is written out of the file again (the loop runs until that is on disk), so
 * the controller's resend (every few seconds until acked) is run by the next run of
 * the agent as new, not failed as taken by this one.
 */
void link_close(struct agent *a)
{
	if (a->seq_held) {
		/* Unanswered, as a command held for its op id: the controller resends. */
		log_info("link: %s for op %s not answered: the agent stops while its seq "
			 "is written",
			 a->seq_held->unknown ? a->seq_held->type
					      : link_type_name(a->seq_held->m.type),
			 a->seq_held->m.op);
		a->seq_held = NULL; /* the lane's done() frees it */
	}
	if (a->held) {
		log_info("op %s: %s not acked: the agent stops before its op id was on disk; "
			 "the next run takes the controller's resend",
			 a->held->op, link_type_name(a->held->type));
		opcache_drop(&a->ops, a->held->op);
		held_free(a);
	}
	opcache_close(&a->ops);
	if (a->held_timer.data && !uv_is_closing((uv_handle_t *)&a->held_timer))
		uv_close((uv_handle_t *)&a->held_timer, NULL);
	if (a->rep_poll.data && !uv_is_closing((uv_handle_t *)&a->rep_poll))
		uv_close((uv_handle_t *)&a->rep_poll, NULL);
	if (a->push_poll.data && !uv_is_closing((uv_handle_t *)&a->push_poll))
		uv_close((uv_handle_t *)&a->push_poll, NULL);
	a->push_polling = false;
}

/*
 * Close the nanomsg sockets and free what the link holds. Call after the loop closed
 * the poll handles (their descriptors belong to the sockets).
 */
void link_sockets_release(struct agent *a)
{
	sendq_clear(&a->sendq);
	opcache_clear(&a->ops);
	if (a->rep_sock >= 0)
		nn_close(a->rep_sock);
	if (a->push_sock >= 0)
		nn_close(a->push_sock);
	a->rep_sock = a->push_sock = -1;
}
