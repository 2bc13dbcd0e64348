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
 * A cancel (or a passed deadline) is also written to {run dir}/job.json ({op, verb,
 * cancel, deadline_ms}) as soon as it is heard, and removed when the job ends: an
 * agent killed before its safe point came leaves the file, and the next run finishes
 * the undo when it finds it (jobfile.c decides; the adopted instance's create goes
 * through its driver's cancel slot, this file's job_undo(), as in the live case:
 * instance_undo_resume()) and sends the op-done the dead run owed.
 *
 * Both drivers' cancel slot (struct driver) is job_undo(). A process the job started
 * (QEMU, a container's) is stopped through the driver's force_stop slot first.
 */
#include "agentd.h"

#include <string.h>
#include <unistd.h>

#include "json.h"
#include "util.h"

struct job {
	struct agent *agent;
	struct inst_op *op;  /* NULL once the op ended (the timer may still be closing) */
	char cancel[16];     /* "", "cancelled" or "timed out" */
	int64_t deadline_ms; /* wall clock, 0 when none */
	char file[PATH_MAX]; /* the job.json written, "" when none */
	uv_timer_t timer;
	struct job *next;
};

/*
 * Keep what a restarted agent needs to finish the cancel in op's run directory. Not
 * fsynced: it has to outlive the agent's process, not the machine (after a reboot
 * the controller's deadline ends the job anyway), and the loop must not wait on a
 * disk flush. Before the op has a run directory there is nothing to undo there.
 */
static void job_file_save(struct job *j)
{
	struct inst_op *op = j->op;
	const char *dir = op->vm ? op->vm->inst.dir : op->ctr ? op->ctr->inst.dir : "";
	struct json_object *o;
	const char *text;
	int ret;

	if (dir[0] == '\0')
		return;
	o = json_object_new_object();
	json_object_object_add(o, "op", json_object_new_string(op->op));
	json_object_object_add(o, "verb", json_object_new_string(verb_get(op->verb)->name));
	json_object_object_add(o, "cancel", json_object_new_string(j->cancel));
	json_object_object_add(o, "deadline_ms", json_object_new_int64(j->deadline_ms));
	snprintf(j->file, sizeof(j->file), "%s/job.json", dir);
	text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	ret = file_write_replace(j->file, text, strlen(text), 0600);
	if (ret < 0)
		log_warnx("op %s: cannot write %s: %s", op->op, j->file, strerror(-ret));
	json_object_put(o);
}

/* Mark j cancelled for reason (once) and keep that on disk. */
static void job_cancel_set(struct job *j, const char *reason)
{
	if (j->cancel[0])
		return;
	snprintf(j->cancel, sizeof(j->cancel), "%s", reason);
	job_file_save(j);
}

/*
 * At start-up: op is a job a previous run of the agent had a cancel for (reason, from
 * job.json), taken again to finish its undo (instance_undo_resume()). The cancel is
 * written again at once: an agent killed during this undo leaves it for the next.
 */
void job_cancel_resume(struct inst_op *op, const char *reason)
{
	if (op->job)
		job_cancel_set(op->job, reason);
}

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
	job_cancel_set(j, "timed out");
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
	if (timeout_ms > 0) {
		j->deadline_ms = now_ms() + timeout_ms;
		uv_timer_start(&j->timer, deadline_cb, (uint64_t)timeout_ms, 0);
	}
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
	if (j->file[0])
		unlink(j->file);
	j->op = NULL;
	op->job = NULL;
	uv_close((uv_handle_t *)&j->timer, job_close_cb);
}

/* Why op is being cancelled ("cancelled", "timed out"), or NULL. */
const char *job_cancel_reason(const struct inst_op *op)
{
	return op->job && op->job->cancel[0] ? op->job->cancel : NULL;
}

/* At a safe point: should op stop and undo rather than go on? Not while it undoes
 * already. */
bool job_cancelled(const struct inst_op *op)
{
	return !op->undoing && job_cancel_reason(op) != NULL;
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

	for (size_t i = 0; nics && i < json_array_len(nics); i++)
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
	if (op->ctr && op->ctr->inst.created && !op->registered && instance_op_creates(op)) {
		/* A created container goes whole, as a delete removes it (runc's state,
		 * the directory, the cgroup); the delete's end sees op->undoing and fails
		 * the op with the cancel's reason. */
		undone_add(op, "container");
		undone_add(op, "container directory");
		op->driver->delete_files(op);
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

static void stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	(void)inst;
	if (instance_op_gone(op))
		return;
	if (error)
		log_warnx("op %s: stopping the instance for the cancel: %s", op->op, error);
	rollback(op);
}

/*
 * Undo op at a safe point (job_cancelled() said so): a process this job started
 * (create or start: QEMU, a container's) is stopped first, through the driver, then
 * what the op made is removed and its op-done sent.
 */
void job_undo(struct inst_op *op)
{
	bool started_here = op->registered || instance_op_starts(op);
	struct inst *inst = op->vm ? &op->vm->inst : op->ctr ? &op->ctr->inst : NULL;

	op->undoing = true;
	log_info("op %s: %s; undoing it", op->op, job_cancel_reason(op));
	if (inst && started_here && op->driver->alive(inst)) {
		undone_add(op, op->vm ? "qemu" : "container process");
		op->driver->force_stop(op, stopped_cb);
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
			log_info("op %s: %s; stopping at the next safe point", op, reason);
			job_cancel_set(j, reason);
		}
		return answer(op, "cancelling");
	}
	/* An exec query its client abandoned is no job, but is cancelled the same way. */
	if (ociaction_exec_cancel(a, op))
		return answer(op, "cancelling");
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

/*
 * The op-done the previous run owed for op: failed with the cancel's reason and what
 * was undone (undone consumed), remembered for a resend as every op-done is.
 */
void job_file_done(struct agent *a, const char *op, const char *cancel, struct json_object *undone)
{
	struct json_object *body = json_object_new_object(), *result = json_object_new_object();

	log_info("op %s: %s; the undo the previous run began is finished", op, cancel);
	json_object_object_add(body, "status", json_object_new_string("failed"));
	json_object_object_add(body, "error", json_object_new_string(cancel));
	json_object_object_add(result, "undone", undone);
	json_object_object_add(body, "result", result);
	if (opcache_find(&a->ops, op) == NULL)
		opcache_add(&a->ops, op, LINK_CMD_INSTANCE);
	opcache_finish(&a->ops, op, body);
	link_event_send(a, LINK_OP_DONE, op, body);
}
