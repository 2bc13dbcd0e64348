/*
 * probe.c - the probe command: refresh this host's facts, including a new KVM probe,
 * and report them as the operation's result.
 *
 *   10 "collecting facts"  facts.c on the thread pool
 *   50 "probing kvm"       kvmprobe.c child, at most AGENT_KVM_PROBE_TIMEOUT_MS
 *   done                   a heartbeat with the new facts, then op-done {facts}
 *
 * The heartbeat goes first so that the host's facts are current on the controller by
 * the time the operation shows as succeeded.
 */
#include "agentd.h"

#include "util.h"

struct probe_op {
	char op[LINK_OP_ID_MAX + 1];
	struct json_object *facts; /* owned once collected */
};

static void progress_send(struct agent *a, const char *op, int progress, const char *phase)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "progress", json_object_new_int(progress));
	json_object_object_add(body, "phase", json_object_new_string(phase));
	link_event_send(a, LINK_OP_PROGRESS, op, body);
}

/* Remember the result for resends, then send it; body is consumed. */
static void done_send(struct agent *a, const char *op, struct json_object *body)
{
	opcache_finish(&a->ops, op, body);
	link_event_send(a, LINK_OP_DONE, op, body);
}

static void fail_send(struct agent *a, const char *op, const char *why)
{
	struct json_object *body = json_object_new_object();

	log_warnx("op %s: probe failed: %s", op, why);
	json_object_object_add(body, "status", json_object_new_string("failed"));
	json_object_object_add(body, "error", json_object_new_string(why));
	done_send(a, op, body);
}

static void probe_free(struct probe_op *p)
{
	json_object_put(p->facts);
	free(p);
}

static void probe_kvm_cb(struct agent *a, bool usable, void *data)
{
	struct probe_op *p = data;
	struct json_object *body, *result;

	if (a->stopping) {
		probe_free(p);
		return;
	}
	facts_kvm_set(p->facts, usable);
	heartbeat_send(a, p->facts);

	result = json_object_new_object();
	json_object_object_add(result, "facts", json_object_get(p->facts));
	body = json_object_new_object();
	json_object_object_add(body, "status", json_object_new_string("succeeded"));
	json_object_object_add(body, "result", result);
	log_info("op %s: probe succeeded (accel %s)", p->op, usable ? "kvm" : "tcg");
	done_send(a, p->op, body);
	probe_free(p);
}

static void probe_facts_cb(struct agent *a, struct json_object *facts, void *data)
{
	struct probe_op *p = data;
	struct kerr err;

	if (a->stopping) {
		probe_free(p);
		return;
	}
	if (facts == NULL) {
		fail_send(a, p->op, "collecting facts was cancelled");
		probe_free(p);
		return;
	}
	p->facts = json_object_get(facts);
	progress_send(a, p->op, 50, "probing kvm");
	if (kvmprobe_request(a, probe_kvm_cb, p, &err) < 0) {
		log_warnx("op %s: %s; reporting kvm as unusable", p->op, err.msg);
		probe_kvm_cb(a, false, p);
	}
}

/*
 * Run the probe command for op (already acked and entered in the op cache; its body
 * is empty). Reports progress and the result on the event socket.
 */
void probe_cmd_start(struct agent *a, const char *op, struct json_object *body)
{
	struct probe_op *p = xcalloc(1, sizeof(*p));
	struct kerr err;

	snprintf(p->op, sizeof(p->op), "%s", op);
	progress_send(a, op, 10, "collecting facts");
	if (facts_collect_start(a, probe_facts_cb, p, &err) < 0) {
		fail_send(a, op, err.msg);
		probe_free(p);
	}
}
