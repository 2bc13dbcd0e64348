/*
 * job.c - the agent's side of operations as jobs: a deadline timer and a cancel for
 * each instance command at work (controllerd/jobs.c is the controller's side).
 *
 * A job is cancelled at a safe point only: between two steps of its action, where no
 * callback of it is in flight. instance_op_gone() is asked at every such point (it
 * already was, for the agent stopping), and asks job_cancelled() here; a job with a
 * cancel then undoes what it did instead of going on (job_undo()): a QEMU it started
 * is stopped, the disks, seed and run directory a create made are removed (the
 * failure clean-up of instance.c), and its op-done is "failed" with error "cancelled"
 * or "timed out" and result {"undone": [...]}. The controller, which persisted the
 * cancel, ends the job as it says.
 *
 * LINK_CMD_CANCEL {reason} for operation OP is answered in its ack: {op, state}, state
 * "cancelling" (the job runs here and will stop at its next safe point), "done" (it
 * ended already; its op-done is sent again) or "unknown" (this agent never took it).
 * The deadline comes with the command ("timeout_ms", what is left of it); when it
 * passes the job is cancelled as "timed out" the same way.
 *
 * Both drivers' cancel slot (struct driver) is job_undo(). A container whose process
 * was started by the job is not stopped by it yet: its job runs to its end.
 */
#include "agentd.h"

#include <string.h>

#include "json.h"
#include "util.h"

struct job {
	struct agent *agent;
	struct inst_op *op; /* NULL once the op ended (the timer may still be closing) */
	char cancel[16];    /* "", "cancelled" or "timed out" */
	uv_timer_t timer;
	struct job *next;
};

static void job_close_cb(uv_handle_t *handle)
{
	free(handle->data);
}

static void deadline_cb(uv_timer_t *timer)
{
	struct job *j = timer->data;

	if (j->op == NULL || j->cancel[0])
		return;
	log_warnx("op %s: past its deadline; stopping at the next safe point", j->op->op);
	snprintf(j->cancel, sizeof(j->cancel), "timed out");
}

/*
 * op starts: it becomes a job here, with a deadline timeout_ms from now (0: none).
 * job_end() must follow (op_free() calls it).
 */
void job_start(struct inst_op *op, int64_t timeout_ms)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->agent = op->agent;
	j->op = op;
	op->job = j;
	uv_timer_init(op->agent->loop, &j->timer);
	j->timer.data = j;
	if (timeout_ms > 0)
		uv_timer_start(&j->timer, deadline_cb, (uint64_t)timeout_ms, 0);
	j->next = op->agent->jobs;
	op->agent->jobs = j;
}

/* op ends (or is dropped): its job goes; the timer is freed once closed. */
void job_end(struct inst_op *op)
{
	struct job *j = op->job;

	if (j == NULL)
		return;
	for (struct job **pp = &op->agent->jobs; *pp; pp = &(*pp)->next)
		if (*pp == j) {
			*pp = j->next;
			break;
		}
	j->op = NULL;
	op->job = NULL;
	uv_close((uv_handle_t *)&j->timer, job_close_cb);
}

/* Why op is being cancelled ("cancelled", "timed out"), or NULL. */
const char *job_cancel_reason(const struct inst_op *op)
{
	return op->job && op->job->cancel[0] ? op->job->cancel : NULL;
}

/*
 * At a safe point: should op stop and undo rather than go on? Not while it undoes
 * already, nor for a container its job started (see the header).
 */
bool job_cancelled(const struct inst_op *op)
{
	if (op->undoing || job_cancel_reason(op) == NULL)
		return false;
	if (op->ctr && oci_alive(op->ctr))
		return false;
	return true;
}

static void undone_add(struct inst_op *op, const char *what)
{
	if (op->undone == NULL)
		op->undone = json_object_new_array();
	json_object_array_add(op->undone, json_object_new_string(what));
}

/* Does vm have a NIC on a network (a tap of its own)? */
static bool vm_nics_networked(const struct vm *vm)
{
	struct json_object *nics = json_object_object_get(vm->inst.spec, "nics");

	for (size_t i = 0; nics && i < json_object_array_length(nics); i++)
		if (json_get_str(json_object_array_get_idx(nics, i), "ifname", NULL))
			return true;
	return false;
}

static void created_removed_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	(void)a;
	if (instance_op_gone(op))
		return;
	if (error)
		log_warnx("op %s: removing what the create made: %s", op->op, error);
	op->vm->inst.op = NULL;
	op->owner = false;
	vm_remove(op->vm);
	op->vm = NULL;
	instance_op_fail(op, "%s", job_cancel_reason(op));
}

/*
 * A create past the point where the VM exists (spec written, so a failure to start
 * would keep it): the cancel removes it whole, as a delete does.
 */
static void created_remove(struct inst_op *op)
{
	struct vm *vm = op->vm;

	if (vm_nics_networked(vm)) {
		netport_vm_remove(json_object_object_get(vm->inst.spec, "nics"));
		undone_add(op, "taps");
	}
	if (vm->ndisks)
		undone_add(op, "disk files");
	undone_add(op, "run directory");
	disk_remove(op->agent, vm->inst.dir, vm->disks, vm->ndisks, NULL, created_removed_cb, op);
}

static void rollback(struct inst_op *op)
{
	size_t made = 0;

	if (op->vm && op->vm->inst.created && !op->registered && instance_op_creates(op)) {
		created_remove(op);
		return;
	}

	for (size_t i = 0; i < op->ndisks; i++)
		made += op->make[i] && op->made[i];
	if (made)
		undone_add(op, "disk files");
	if (op->registered && op->vm && vm_nics_networked(op->vm)) {
		/* The taps vm_start() made for a create's QEMU go with it. */
		netport_vm_remove(json_object_object_get(op->vm->inst.spec, "nics"));
		undone_add(op, "taps");
	}
	if (op->registered)
		undone_add(op, op->ctr ? "container directory" : "run directory");
	if (op->undone == NULL)
		op->undone = json_object_new_array();
	/* The failure clean-up removes what the op made; the op-done says why. */
	instance_op_fail(op, "%s", job_cancel_reason(op));
}

static void qemu_stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	(void)inst;
	if (instance_op_gone(op))
		return;
	if (error)
		log_warnx("op %s: stopping QEMU for the cancel: %s", op->op, error);
	rollback(op);
}

/*
 * Undo op at a safe point (job_cancelled() said so): a QEMU this job started (create
 * or start) is stopped first, then what the op made is removed and its op-done sent.
 */
void job_undo(struct inst_op *op)
{
	bool started_here = op->registered || instance_op_starts(op);

	op->undoing = true;
	log_info("op %s: %s; undoing it", op->op, job_cancel_reason(op));
	if (op->vm && started_here && vm_alive(op->vm)) {
		undone_add(op, "qemu");
		vm_force_stop(op->vm, qemu_stopped_cb, op);
		return;
	}
	rollback(op);
}

static const struct json_field cancel_fields[] = {
	{"reason", JK_STRING, false, NULL},
	{NULL, 0, false, NULL},
};

/* The ack body of a cancel: {op, state}. */
static struct json_object *answer(const char *op, const char *state)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "op", json_object_new_string(op));
	json_object_object_add(o, "state", json_object_new_string(state));
	return o;
}

/*
 * LINK_CMD_CANCEL for operation op: mark its job (see the header). Returns the ack
 * body (new reference), or NULL with err for a malformed command.
 */
struct json_object *job_cancel_cmd(struct agent *a, const char *op, struct json_object *body,
				   struct kerr *err)
{
	const char *reason;
	struct op_entry *e;

	if (json_fields_check(body, cancel_fields, err) < 0)
		return NULL;
	if (op[0] == '\0') {
		err_set(err, 0, "the cancel names no operation");
		return NULL;
	}
	reason = strcmp(json_get_str(body, "reason", "cancelled"), "timed out") == 0 ? "timed out"
										     : "cancelled";
	for (struct job *j = a->jobs; j; j = j->next) {
		if (j->op == NULL || strcmp(j->op->op, op) != 0)
			continue;
		if (j->cancel[0] == '\0') {
			snprintf(j->cancel, sizeof(j->cancel), "%s", reason);
			log_info("op %s: %s; stopping at the next safe point", op, reason);
		}
		return answer(op, "cancelling");
	}
	e = opcache_find(&a->ops, op);
	if (e && e->done) {
		link_event_send(a, LINK_OP_DONE, op, json_object_get(e->done_body));
		return answer(op, "done");
	}
	return answer(op, e ? "done" : "unknown");
}

/* An op is allocated per command and a size job per VM per heartbeat: keep them small
 * (they were 264 KB with PATH_MAX paths for sixteen disks). */
_Static_assert(sizeof(struct inst_op) < 48 * 1024, "struct inst_op grew past 48 KB");
