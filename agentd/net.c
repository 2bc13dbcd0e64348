/*
 * net.c - the agent's side of networks: it keeps the desired-state document the
 * controller sent last (persisted as {state_dir}/net/desired.json) and has the engine
 * (netdrv.c) make the host match it, on the thread pool since an apply runs many
 * commands. An apply runs
 *   - when a new document arrives (net_desired_set()),
 *   - at start-up, from desired.json: what a reboot or crash lost is made again, what
 *     went stale meanwhile is removed,
 *   - every NET_REPAIR_MS, to repair drift (a link deleted by hand, a dead dnsmasq).
 * One apply runs at a time; documents arriving meanwhile make one more run after it,
 * with the newest. The outcome is in the heartbeat's facts (net_status_add()).
 *
 * A document is applied, reported as wanted and answered to the controller's net
 * query only once desired.json holds it durably. That write is on a thread of its own
 * (netsave.c), so the query is deferred: its answer, {"hash"} of the document on
 * disk (a newer one than asked, when a newer one replaced it while waiting), or the
 * write's failure, follows as a query-done (link_query_reply()).
 */
#include "agentd.h"

#include <errno.h>

#include "json.h"
#include "netdrv.h"
#include "util.h"

#define NET_REPAIR_MS (30 * 1000)
#define NET_DOC_MAX   (64 * 1024 * 1024) /* bytes of desired.json read at most */
#define NET_HASH_LEN  64

struct net {
	struct agent *agent;
	char dir[PATH_MAX];		/* {state_dir}/net: desired.json, dnsmasq's files */
	char desired_path[PATH_MAX];	/* {dir}/desired.json */
	struct json_object *desired;	/* the newest document (checked), or NULL */
	char wanted[NET_HASH_LEN + 1];	/* its hash, "" when none */
	char applied[NET_HASH_LEN + 1]; /* last document applied without error, "" */
	char error[sizeof(((struct kerr *)0)->msg)]; /* the last apply's failure, "" */
	bool applying;				     /* an apply is on the thread pool */
	bool again;				     /* ... and another is due after it */
	bool stopping;
	bool timer_closed;
	uv_timer_t timer;	    /* drift repair */
	struct netsave save;	    /* desired.json, written off the loop */
	struct net_waiter *waiters; /* net queries waiting for their document's write */
};

/* A net query (its id op) answered once generation gen of desired.json is written. */
struct net_waiter {
	char op[LINK_OP_ID_MAX + 1];
	uint64_t gen;
	struct net_waiter *next;
};

/* One apply on the thread pool: it owns a copy of the document (json-c is not
 * thread-safe, and the loop may replace the desired one meanwhile). */
struct net_apply {
	uv_work_t req;
	struct net *net;
	struct json_object *doc;
	char hash[NET_HASH_LEN + 1];
	struct kerr err;
	int ret;
};

static void net_free_maybe(struct net *n)
{
	if (!n->timer_closed || n->applying || netsave_busy(&n->save))
		return;
	if (n->agent->net == n)
		n->agent->net = NULL;
	netsave_close(&n->save);
	json_object_put(n->desired);
	free(n);
}

static void apply_work_cb(uv_work_t *req)
{
	struct net_apply *w = req->data;

	w->ret = netdrv_apply(w->doc, w->net->dir, &w->err);
}

static void apply_schedule(struct net *n);

/* Remember how the apply went, and tell the controller at once when that changed. */
static void apply_outcome(struct net *n, struct net_apply *w)
{
	bool news;

	if (w->ret < 0) {
		news = strcmp(n->error, w->err.msg) != 0;
		/* A failure that repeats at every repair is logged once. */
		if (news)
			log_warnx("net: applying document %.12s failed: %s", w->hash, w->err.msg);
		else
			log_debug("net: applying document %.12s failed again: %s", w->hash,
				  w->err.msg);
		snprintf(n->error, sizeof(n->error), "%s", w->err.msg);
	} else {
		news = n->error[0] || strcmp(n->applied, w->hash) != 0;
		if (w->ret > 0 || news)
			log_info("net: document %.12s applied (%d change%s)", w->hash, w->ret,
				 w->ret == 1 ? "" : "s");
		else
			log_debug("net: document %.12s: nothing to change", w->hash);
		n->error[0] = '\0';
		snprintf(n->applied, sizeof(n->applied), "%s", w->hash);
	}
	if (news && !n->agent->stopping)
		heartbeat_kick(n->agent);
}

static void apply_after_cb(uv_work_t *req, int status)
{
	struct net_apply *w = req->data;
	struct net *n = w->net;

	n->applying = false;
	/* Cancelled (the loop is going away): it never ran. */
	if (status == 0)
		apply_outcome(n, w);
	json_object_put(w->doc);
	free(w);
	if (n->stopping || n->agent->stopping) {
		net_free_maybe(n);
		return;
	}
	if (n->again)
		apply_schedule(n);
}

/* Apply the desired document off the loop, now or right after the running apply. */
static void apply_schedule(struct net *n)
{
	struct net_apply *w;
	int ret;

	if (n->stopping || n->agent->stopping || n->desired == NULL)
		return;
	if (n->applying) {
		n->again = true;
		return;
	}
	w = xcalloc(1, sizeof(*w));
	w->req.data = w;
	w->net = n;
	if (json_object_deep_copy(n->desired, &w->doc, NULL) < 0)
		fatalx("net: cannot copy the desired document");
	snprintf(w->hash, sizeof(w->hash), "%s", n->wanted);
	ret = uv_queue_work(n->agent->loop, &w->req, apply_work_cb, apply_after_cb);
	if (ret < 0) {
		log_warnx("net: cannot queue an apply: %s", uv_strerror(ret));
		json_object_put(w->doc);
		free(w);
		return;
	}
	n->applying = true;
	n->again = false;
}

static void repair_cb(uv_timer_t *timer)
{
	apply_schedule(timer->data);
}

static void timer_close_cb(uv_handle_t *handle)
{
	struct net *n = handle->data;

	n->timer_closed = true;
	net_free_maybe(n);
}

/* Take doc (checked; borrowed) as the desired document. */
static void desired_take(struct net *n, struct json_object *doc)
{
	json_object_put(n->desired);
	n->desired = NULL;
	if (json_object_deep_copy(doc, &n->desired, NULL) < 0)
		fatalx("net: cannot copy the desired document");
	snprintf(n->wanted, sizeof(n->wanted), "%s", json_get_str(doc, "hash", ""));
}

/* A net query's answer: {"hash"} of the document on disk. */
static struct json_object *hash_answer(const char *hash)
{
	struct json_object *answer = json_object_new_object();

	json_object_object_add(answer, "hash", json_object_new_string(hash));
	return answer;
}

/* Answer the net queries waiting for generations up to gen: the hash on disk, or why. */
static void waiters_answer(struct net *n, uint64_t gen, const char *hash, const char *error)
{
	struct net_waiter **pp = &n->waiters;

	while (*pp) {
		struct net_waiter *w = *pp;

		if (w->gen > gen) {
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		link_query_reply(n->agent, w->op, hash ? hash_answer(hash) : NULL, error);
		free(w);
	}
}

/* Generation gen of desired.json, doc, was written (ret 0) or not (err): act on it. */
static void saved_cb(struct netsave *s, uint64_t gen, struct json_object *doc, int ret,
		     const struct kerr *err)
{
	struct net *n = s->owner;

	if (n->stopping || n->agent->stopping) {
		net_free_maybe(n);
		return;
	}
	if (ret < 0) {
		log_warnx("net: document %.12s not taken: %s", json_get_str(doc, "hash", ""),
			  err->msg);
		waiters_answer(n, gen, NULL, err->msg);
		return;
	}
	desired_take(n, doc);
	log_debug("net: document %.12s received", n->wanted);
	waiters_answer(n, gen, n->wanted, NULL);
	apply_schedule(n);
}

/* desired.json as the last run left it; a missing or unusable one is no document. */
static void desired_load(struct net *n)
{
	_cleanup_free_ char *text = NULL;
	struct json_object *doc = NULL;
	struct kerr err;
	size_t len;
	int ret;

	ret = file_read_all(n->desired_path, NET_DOC_MAX, &text, &len);
	if (ret == -ENOENT)
		return;
	if (ret < 0) {
		log_warnx("net: cannot read %s: %s; waiting for the controller's document",
			  n->desired_path, strerror(-ret));
		return;
	}
	if (json_body_parse(text, len, &doc, &err) < 0 || netdrv_doc_check(doc, &err) < 0) {
		log_warnx("net: %s is unusable (%s); waiting for the controller's document",
			  n->desired_path, err.msg);
		json_object_put(doc);
		return;
	}
	desired_take(n, doc);
	json_object_put(doc);
	log_info("net: document %.12s from %s; applying it", n->wanted, n->desired_path);
}

/*
 * Start the network driver: make {state_dir}/net (0700), load desired.json if there
 * is one and apply it, and repair drift every NET_REPAIR_MS. Returns 0, or -1 with err
 * when the directory cannot be made. net_stop() ends it.
 */
int net_start(struct agent *a, struct kerr *err)
{
	struct net *n = xcalloc(1, sizeof(*n));
	int ret;

	n->agent = a;
	if ((size_t)snprintf(n->dir, sizeof(n->dir), "%s/net", a->cfg->state_dir) >=
		    sizeof(n->dir) ||
	    (size_t)snprintf(n->desired_path, sizeof(n->desired_path), "%s/desired.json", n->dir) >=
		    sizeof(n->desired_path)) {
		free(n);
		return err_set(err, ENAMETOOLONG, "state directory %s", a->cfg->state_dir);
	}
	/* Root only: the documents name every instance's addresses. */
	ret = mkdir_p(n->dir, 0700);
	if (ret < 0) {
		err_set(err, -ret, "cannot create %s", n->dir);
		free(n);
		return -1;
	}
	netsave_init(&n->save, a->loop, n->desired_path, saved_cb, n);
	uv_timer_init(a->loop, &n->timer);
	n->timer.data = n;
	uv_timer_start(&n->timer, repair_cb, NET_REPAIR_MS, NET_REPAIR_MS);
	a->net = n;
	desired_load(n);
	apply_schedule(n);
	return 0;
}

/*
 * Stop: no new applies, the timer closed. An apply on the thread pool finishes on its
 * own; the state is freed after it (and a->net cleared then).
 */
void net_stop(struct agent *a)
{
	struct net *n = a->net;

	if (n == NULL || n->stopping)
		return;
	n->stopping = true;
	n->again = false;
	netsave_stop(&n->save);
	/* The agent is going away: its answers would not be sent any more. */
	waiters_answer(n, UINT64_MAX, NULL, "the agent is stopping");
	uv_close((uv_handle_t *)&n->timer, timer_close_cb);
}

/*
 * Take doc (borrowed) as the networks this host must realise, for the net query op:
 * check it, persist it as desired.json off the loop, then apply it off the loop too.
 * Returns 1: op is answered later (link_query_reply()) with {"hash"} of the document
 * on disk once it is, or with the write's failure. Returns -1 with err (status 400
 * for a bad document), having changed nothing.
 */
int net_desired_set(struct agent *a, const char *op, struct json_object *doc, struct kerr *err)
{
	struct net *n = a->net;
	struct json_object *newest;
	struct net_waiter *w;
	uint64_t gen;

	if (n == NULL || n->stopping)
		return err_set(err, 0, "the network driver is not running");
	if (netdrv_doc_check(doc, err) < 0)
		return -1;
	newest = netsave_newest(&n->save, &gen);
	if (newest == NULL && n->desired && json_object_equal(n->desired, doc)) {
		/* A resend of the document on disk costs no write, but still an apply
		 * (repair). */
		link_query_reply(a, op, hash_answer(n->wanted), NULL);
		apply_schedule(n);
		return 1;
	}
	/* A resend of the document being written waits for it; any other is written
	 * after it. The waiter goes first: a write that cannot be queued is reported
	 * within the put. */
	w = xcalloc(1, sizeof(*w));
	snprintf(w->op, sizeof(w->op), "%s", op);
	w->gen = newest && json_object_equal(newest, doc) ? gen : n->save.gen + 1;
	w->next = n->waiters;
	n->waiters = w;
	if (w->gen > n->save.gen)
		netsave_put(&n->save, doc);
	return 1;
}

/*
 * Add facts.network: {"wanted": hash of the desired document or null, "applied": hash
 * of the last one applied without error or null, "error": the last apply's failure or
 * null, "applying": bool}.
 */
void net_status_add(struct agent *a, struct json_object *facts)
{
	struct net *n = a->net;
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "wanted",
			       n && n->wanted[0] ? json_object_new_string(n->wanted) : NULL);
	json_object_object_add(o, "applied",
			       n && n->applied[0] ? json_object_new_string(n->applied) : NULL);
	json_object_object_add(o, "error",
			       n && n->error[0] ? json_object_new_string(n->error) : NULL);
	json_object_object_add(o, "applying", json_object_new_boolean(n && n->applying));
	json_object_object_add(facts, "network", o);
}

/*
 * Put the existing port ifname on bridge (made bare if missing) with mtu, up. Runs on
 * the loop: two quick ip commands. Returns 0 or -1 with err.
 */
int net_port_attach(struct agent *a, const char *ifname, const char *bridge, int mtu,
		    struct kerr *err)
{
	return netdrv_port_attach(ifname, bridge, mtu, err);
}
