/*
 * instance.c - the controller's instance commands and queries.
 *
 * LINK_CMD_INSTANCE {action, instance: SPEC, args} is checked against the verb table
 * (common/verbs.h: the action is a verb the type's driver has, its args match the
 * verb's schema) and the SPEC tables before it is acked (a malformed one is nacked and
 * nothing runs), then runs as an operation that reports op-progress and one op-done,
 * like probe.c:
 *   succeeded  {"instance": REPORT, ...fields the action adds}
 *   failed     {"error": "<one sentence>"}; the instance's state is then pushed too.
 * One command works on an instance at a time; another one fails at once, except where
 * the verb table says it preempts the busy one (a force-stop cuts a graceful stop
 * short; both then finish when the process is gone).
 *
 * create and update use the whole SPEC the command carries; the other actions work
 * from the spec the agent keeps and read only the SPEC's name.
 *
 * The actions themselves live in vmaction.c, as chains of steps, each started as the
 * last thing its predecessor does; a step waits on QMP (vm.c), a helper program or
 * the thread pool (disk.c). This file has the plumbing they share: progress, the
 * op-done with a fresh report, failure with clean-up, one step per disk.
 * When the agent stops, an operation in flight is dropped at its next step: the
 * controller resends it to the next agent, whose result decides.
 *
 * Every type takes the same path: instance_cmd_start() finds the instance (inst.c),
 * checks the command (dispatch.c) and calls its driver's slot for the verb
 * (vm_driver in vmaction.c, oci_driver in ociaction.c). The operation bookkeeping
 * (struct inst_op, progress, done, failure and rollback) is this file's alone.
 *
 * LINK_CMD_QUERY is answered in the ack itself: {what: "console", name, bytes} for a
 * VM's serial console, {what: "logs", ...} for a container's output, {what: "spec",
 * name} for an instance's spec (the controller adopting it), and
 * {what: "exec", ...}, which runs a command in a container and answers when it ends.
 */
#include "agentd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "util.h"

#define CONSOLE_DEFAULT (64 * 1024)

/* ---- commands ---------------------------------------------------------------------- */

static int action_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *name = json_object_get_string(val);

	if (verb_find(name) < 0)
		return err_input(err, 400, field, "unknown action '%.32s'", name);
	return 0;
}

static int timeout_ms_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, 1, INT64_MAX, err);
}

static const struct json_field body_fields[] = {
	{"action", JK_STRING, true, action_check},
	{"instance", JK_OBJECT, true, NULL},
	{"args", JK_OBJECT, false, NULL},
	{"timeout_ms", JK_INT, false, timeout_ms_check}, /* the job's deadline (job.c) */
	{NULL, 0, false, NULL},
};

static int body_check(struct json_object *body, struct kerr *err)
{
	struct json_object *spec, *args = NULL, *name;
	enum inst_type type;
	int verb;

	if (json_fields_check(body, body_fields, err) < 0)
		return -1;
	json_object_object_get_ex(body, "instance", &spec);
	type = inst_type_parse(json_get_str(spec, "type", "vm"));
	verb = verb_find(json_get_str(body, "action", ""));
	if (dispatch_verb_supported(inst_driver(type), verb, err) < 0)
		return -1;
	if ((verb_get(verb)->flags & VF_FULL_SPEC) && spec_check(spec, err) < 0)
		return -1;
	if (!json_object_object_get_ex(spec, "name", &name) ||
	    !json_object_is_type(name, json_type_string))
		return err_input(err, 400, "name", "instance: field 'name' is required");
	if (name_check(name, "name", err) < 0)
		return err_prefix(err, "instance: ");
	if (json_object_object_get_ex(body, "args", &args) &&
	    json_fields_check(args, dispatch_verb_args(inst_driver(type), verb), err) < 0)
		return err_prefix(err, "args: ");
	return 0;
}

/*
 * Check an instance command's body before it is acked: the action is known, its args
 * match the action's table, the SPEC passes spec_check() (create, update) or
 * has a valid name (the others). Null members count as absent. Returns 0 or -1 with
 * err.
 */
int instance_cmd_check(struct json_object *body, struct kerr *err)
{
	struct json_object *norm = spec_normalise(body);
	int ret = body_check(norm, err);

	json_object_put(norm);
	return ret;
}

/* ---- operation plumbing ------------------------------------------------------------- */

/* The instance op works on (a VM or a container), or NULL. */
static struct inst *op_inst(const struct inst_op *op)
{
	return op->vm ? &op->vm->inst : op->ctr ? &op->ctr->inst : NULL;
}

static void op_inst_set(struct inst_op *op, struct inst *inst);

static void op_free(struct inst_op *op)
{
	job_end(op);
	for (size_t i = 0; i < AGENT_VM_DISKS_MAX; i++)
		free(op->images[i]);
	json_object_put(op->undone);
	json_object_put(op->spec);
	json_object_put(op->args);
	json_object_put(op->result);
	json_object_put(op->report);
	json_object_put(op->bitmaps);
	free(op);
}

/*
 * Asked at every safe point between two steps: is op no longer the caller's to go on
 * with? The agent stopping drops it, touching nothing else; a cancel or a deadline
 * (job.c, the drivers' cancel slot) turns it to undoing what it did. Either way the
 * caller just returns.
 */
bool instance_op_gone(struct inst_op *op)
{
	if (op->agent->stopping) {
		op_free(op);
		return true;
	}
	if (job_cancelled(op) && op->driver->cancel) {
		op->driver->cancel(op);
		return true;
	}
	return false;
}

/* Does op start the instance (create, start)? A cancel stops what it started (job.c). */
bool instance_op_starts(const struct inst_op *op)
{
	return op->verb == VERB_START || op->verb == VERB_CREATE;
}

/* Does op create the instance? A cancel removes what it made, even once it exists. */
bool instance_op_creates(const struct inst_op *op)
{
	return op->verb == VERB_CREATE;
}

/* Tell the controller how far op got: progress 0-100 and a phase it shows. */
void instance_op_progress(struct inst_op *op, int progress, const char *phase)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "progress", json_object_new_int(progress));
	json_object_object_add(body, "phase", json_object_new_string(phase));
	link_event_send(op->agent, LINK_OP_PROGRESS, op->op, body);
}

/* Remember the op-done for resends, send it, and release the op. */
static void op_done(struct inst_op *op, struct json_object *body)
{
	struct inst *inst = op_inst(op);

	if (op->owner && inst && inst->op == op)
		inst->op = NULL;
	opcache_finish(&op->agent->ops, op->op, body);
	link_event_send(op->agent, LINK_OP_DONE, op->op, body);
	op_free(op);
}

static void succeed_with(struct inst_op *op, struct json_object *report)
{
	struct json_object *body = json_object_new_object(), *result = json_object_new_object();

	log_trace("op %s: succeeded", op->op);
	json_object_object_add(result, "instance", report);
	if (op->result) {
		json_object_object_foreach(op->result, key, val)
			json_object_object_add(result, key, json_object_get(val));
	}
	json_object_object_add(body, "status", json_object_new_string("succeeded"));
	json_object_object_add(body, "result", result);
	log_info("op %s: %s %s succeeded", op->op, verb_get(op->verb)->name,
		 json_get_str(op->spec, "name", ""));
	op_done(op, body);
}

static void measured_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (inst && inst->driver->heard)
		inst->driver->heard(inst); /* the op-done carries this report */
	succeed_with(op, inst ? inst->driver->report(inst) : json_object_get(op->report));
}

/* The action worked: report the instance with fresh disk (or writable layer) sizes. */
void instance_op_succeed(struct inst_op *op)
{
	if (op->ctr && !op->report) {
		oci_measure(op->ctr, measured_cb, op);
		return;
	}
	if (op->report || op->vm == NULL) {
		succeed_with(op, json_object_get(op->report));
		return;
	}
	vm_measure(op->vm, measured_cb, op);
}

static void fail_send(struct inst_op *op, const char *why)
{
	struct json_object *body = json_object_new_object();
	struct inst *inst = op_inst(op);

	log_warnx("op %s: %s %s failed: %s", op->op, verb_get(op->verb)->name,
		  json_get_str(op->spec, "name", ""), why);
	json_object_object_add(body, "status", json_object_new_string("failed"));
	json_object_object_add(body, "error", json_object_new_string(why));
	if (op->undone) {
		/* A cancel's undo (job.c): the controller shows what went. */
		struct json_object *result = json_object_new_object();

		json_object_object_add(result, "undone", json_object_get(op->undone));
		json_object_object_add(body, "result", result);
	} else if (op->result_on_fail && op->result) {
		json_object_object_add(body, "result", json_object_get(op->result));
	}
	if (op->owner && inst && inst->op == op)
		inst->op = NULL;
	/* The failure may have left the instance in another state; the controller hears it. */
	if (inst && inst->created && !inst->removing)
		inst->driver->state_push(inst);
	op->owner = false;
	op_done(op, body);
}

struct rollback {
	struct inst_op *op;
	char why[640]; /* room for a 512-byte reason (a stop marker's) and its prefix */
};

static void rolled_back_cb(struct agent *a, const char *error, void *data)
{
	struct rollback *rb = data;
	struct inst_op *op = rb->op;

	if (error)
		log_warnx("op %s: cleaning up after the failure: %s", op->op, error);
	if (instance_op_gone(op)) {
		free(rb);
		return;
	}
	if (op->registered && op_inst(op)) {
		op_inst(op)->op = NULL;
		inst_remove(op_inst(op));
		op_inst_set(op, NULL);
	}
	fail_send(op, rb->why);
	free(rb);
}

/*
 * The action failed: why is one sentence for the user. Disks this op made are
 * removed first, with the directories it made for the disks it planned (a file it
 * did not make may be another instance's, and stays), and the run directory when
 * the op was creating the instance.
 */
void instance_op_fail(struct inst_op *op, const char *fmt, ...)
{
	struct vm_disk planned[AGENT_VM_DISKS_MAX];
	bool keep[AGENT_VM_DISKS_MAX];
	struct rollback *rb = xcalloc(1, sizeof(*rb));
	size_t n = 0;
	va_list ap;

	rb->op = op;
	va_start(ap, fmt);
	vsnprintf(rb->why, sizeof(rb->why), fmt, ap);
	va_end(ap);
	if (op->ctr) {
		/* A container this op was creating goes, with what the op made of it. */
		if (op->registered) {
			oci_dir_remove(op->agent, op->ctr->inst.dir, rolled_back_cb, rb);
			return;
		}
		fail_send(op, rb->why);
		free(rb);
		return;
	}
	for (size_t i = 0; i < op->ndisks; i++) {
		if (!op->make[i])
			continue;
		keep[n] = !op->made[i];
		planned[n++] = op->disks[i];
	}
	if (n == 0 && !op->registered) {
		fail_send(op, rb->why);
		free(rb);
		return;
	}
	disk_remove(op->agent, op->registered && op->vm ? op->vm->inst.dir : NULL, planned, n, keep,
		    rolled_back_cb, rb);
}

/*
 * The head of every step's callback: true when op is gone (the agent is stopping) or
 * has just failed with error (one sentence); the callback then returns at once.
 */
bool instance_step_failed(struct inst_op *op, const char *error)
{
	if (instance_op_gone(op))
		return true;
	if (error) {
		instance_op_fail(op, "%s", error);
		return true;
	}
	return false;
}

/*
 * The head of every stop step's callback: false when op is gone or failed with error;
 * else op's result says whether the stop had to be forced, and the caller goes on.
 */
bool instance_stop_noted(struct inst_op *op, const struct inst *inst, const char *error)
{
	if (instance_step_failed(op, error))
		return false;
	if (op->result == NULL)
		op->result = json_object_new_object();
	json_object_object_add(op->result, "forced", json_object_new_boolean(inst->stop_forced));
	return true;
}

/*
 * An inst_done_cb for a step whose success ends op (a start): op fails with the
 * error, or succeeds. data is the op.
 */
void instance_done_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_step_failed(op, error))
		return;
	instance_op_succeed(op);
}

/*
 * An inst_done_cb for a step op->then follows (a delete's stop, then its files): op
 * fails with the error, or goes on. data is the op.
 */
void instance_then_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_step_failed(op, error))
		return;
	op->then(op);
}

/*
 * delete, for every type: unknown here is success with "deleted": false (deleted
 * before and resent, or never here); a live instance only with args.force, stopped at
 * once first; then the driver's delete_files removes what it holds.
 */
void instance_delete(struct inst_op *op)
{
	struct inst *inst = op_inst(op);
	struct json_object *r;

	if (inst == NULL || !inst->created) {
		op_inst_set(op, NULL);
		r = json_object_new_object();
		json_object_object_add(r, "name",
				       json_object_new_string(json_get_str(op->spec, "name", "")));
		json_object_object_add(r, "type",
				       json_object_new_string(inst_type_name(op->driver->type)));
		json_object_object_add(r, "state", json_object_new_string("stopped"));
		json_object_object_add(r, "pid", NULL);
		op->driver->absent_report(r, op->spec);
		op->report = r;
		op->result = json_object_new_object();
		json_object_object_add(op->result, "deleted", json_object_new_boolean(false));
		instance_op_succeed(op);
		return;
	}
	if (inst->driver->refresh)
		inst->driver->refresh(inst);
	if (!inst->driver->alive(inst)) {
		inst->driver->delete_files(op);
		return;
	}
	if (!json_get_bool(op->args, "force", false)) {
		instance_op_fail(op, "%s %s is %s; stop it first, or delete with force",
				 inst->driver->type == INST_VM ? "instance" : "container",
				 inst->name, inst_state_name(inst->state));
		return;
	}
	op->then = inst->driver->delete_files;
	inst->driver->force_stop(op, instance_then_cb);
}

/*
 * Go on with the loop instance_disks_each() started: the next disk it wants, or its
 * final step. A disk step's callback calls this (instance_disk_done_cb() does).
 */
void instance_each_next(struct inst_op *op)
{
	while (op->idx < op->ndisks && op->each_want && !op->each_want(op, op->idx))
		op->idx++;
	if (op->idx >= op->ndisks) {
		op->each_then(op);
		return;
	}
	op->idx++;
	op->each_fn(op, op->idx - 1);
}

/*
 * Run fn(op, i) on each of op's disks that want(op, i) picks (want NULL: all), one
 * after the other, then then(op). fn starts async work whose callback ends in
 * instance_each_next() (or fails the op); op->idx - 1 is the disk at work.
 */
void instance_disks_each(struct inst_op *op, bool (*want)(struct inst_op *, size_t), op_disk_fn fn,
			 op_step_fn then)
{
	op->idx = 0;
	op->each_want = want;
	op->each_fn = fn;
	op->each_then = then;
	instance_each_next(op);
}

/* A disk step finished: on to the next disk, or fail naming the disk. */
void instance_disk_done_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "disk %s: %s", op->disks[op->idx - 1].name, error);
		return;
	}
	instance_each_next(op);
}

/* Point op at inst (or at nothing): op->vm or op->ctr, as the driver reads it. */
static void op_inst_set(struct inst_op *op, struct inst *inst)
{
	op->vm = inst && inst->driver->type == INST_VM ? (struct vm *)inst : NULL;
	op->ctr = inst && inst->driver->type == INST_CONTAINER ? (struct ctr *)inst : NULL;
}

/* The disks a VM command works on: the VM's, or the SPEC's for a create or update. */
static int vm_op_disks(struct inst_op *op, struct kerr *err)
{
	if (op->vm && op->verb != VERB_UPDATE) {
		memcpy(op->disks, op->vm->disks, op->vm->ndisks * sizeof(*op->disks));
		op->ndisks = op->vm->ndisks;
		return 0;
	}
	return vm_disks_resolve(op->agent, op->spec, op->disks, &op->ndisks, err);
}

/*
 * Take an instance command (acked, in the op cache, body checked by
 * instance_cmd_check()) and run it; op-progress and op-done follow on the event
 * socket. The one place that decides whether a command may start, for every type,
 * from the verb table (dispatch.c): the instance is here if the verb needs it, not
 * busy with a command this one does not preempt, in a state the verb starts from.
 * A command that may not start fails as an operation, with the reason.
 */
void instance_cmd_start(struct agent *a, const char *opid, struct json_object *body)
{
	struct inst_op *op = xcalloc(1, sizeof(*op));
	struct json_object *norm = spec_normalise(body), *spec, *args;
	struct inst_op *busy;
	struct inst *inst;
	struct kerr err;
	const char *name;

	op->agent = a;
	op->started_ms = now_ms();
	snprintf(op->op, sizeof(op->op), "%s", opid);
	json_object_object_get_ex(norm, "instance", &spec);
	op->spec = json_object_get(spec);
	op->driver = inst_driver(inst_type_parse(json_get_str(op->spec, "type", "vm")));
	/* instance_cmd_check() made sure the verb is known and the driver has it. */
	op->verb = (enum verb)verb_find(json_get_str(norm, "action", ""));
	if (json_object_object_get_ex(norm, "args", &args))
		op->args = json_object_get(args);
	else
		op->args = json_object_new_object();
	job_start(op, json_get_int(norm, "timeout_ms", 0));
	json_object_put(norm);
	name = json_get_str(op->spec, "name", "");
	log_trace("op %s: %s %s started", op->op, verb_get(op->verb)->name, name);

	inst = inst_find(a, name);
	if (inst && inst->driver != op->driver) {
		/* Names are unique on a host, whatever the type. */
		if (op->verb == VERB_CREATE) {
			instance_op_fail(op, "instance %s exists already on this host (a %s)", name,
					 inst->driver->type == INST_VM ? "VM" : "container");
			return;
		}
		inst = NULL;
	}
	/* Not here: fine for a create or a delete, 404 for the rest. */
	if ((inst == NULL || !inst->created) &&
	    dispatch_state_check(op->verb, false, INST_STOPPED, name, &err) < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	busy = inst ? inst->op : NULL;
	if (busy && dispatch_busy_check(op->verb, busy->verb, busy->op, name, &err) < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	if (inst && inst->created && busy == NULL) {
		if (inst->driver->refresh)
			inst->driver->refresh(inst);
		if (dispatch_state_check(op->verb, true, inst->state, name, &err) < 0) {
			instance_op_fail(op, "%s", err.msg);
			return;
		}
	}
	op_inst_set(op, inst);
	if (inst && busy == NULL) {
		inst->op = op;
		op->owner = true;
	}
	op->restart = op->verb == VERB_RESTART;
	if (op->driver->type == INST_VM && vm_op_disks(op, &err) < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	op->driver->verbs[op->verb](op);
}

/*
 * At start-up (a driver's adopt_one): inst, just adopted, is what a create made that a
 * previous run of the agent had a cancel for (jf, from job.json: job_file_take()) but
 * ended before it undid. The create is taken again under its op id and undone the way
 * the live job would have been, through the driver's cancel slot (job.c's job_undo():
 * a process it started stopped, what it made removed); its op-done ends it as the
 * cancel said, with what was undone. The op cache holds the id, so a create the
 * controller sends again is not run a second time.
 */
void instance_undo_resume(struct agent *a, struct inst *inst, const struct job_file *jf)
{
	struct inst_op *op = xcalloc(1, sizeof(*op));
	struct kerr err;

	op->agent = a;
	snprintf(op->op, sizeof(op->op), "%s", jf->op);
	op->spec = json_object_get(inst->spec);
	op->driver = inst->driver;
	op->verb = VERB_CREATE;
	op->args = json_object_new_object();
	if (opcache_find(&a->ops, op->op) == NULL)
		opcache_add(&a->ops, op->op, LINK_CMD_INSTANCE);
	job_start(op, 0);
	op_inst_set(op, inst);
	inst->op = op;
	op->owner = true;
	job_cancel_resume(op, jf->cancel);
	log_info("op %s: the create of %s was %s before the last agent ended; undoing it", op->op,
		 inst->name, jf->cancel);
	if (op->driver->type == INST_VM && vm_op_disks(op, &err) < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	op->driver->cancel(op);
}

/* ---- queries ---------------------------------------------------------------------------- */

static int exec_timeout_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, 1, AGENT_EXEC_TIMEOUT_MAX_S, err);
}

static int nonneg_check(struct json_object *val, const char *field, struct kerr *err)
{
	return spec_range_check(val, field, 0, INT64_MAX, err);
}

static const struct json_field console_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{"bytes", JK_INT, false, NULL},
	{NULL, 0, false, NULL},
};

static const struct json_field logs_fields[] = {
	{"what", JK_STRING, true, NULL},       {"name", JK_STRING, true, name_check},
	{"tail", JK_INT, false, nonneg_check}, {"offset", JK_INT, false, nonneg_check},
	{"max", JK_INT, false, nonneg_check},  {NULL, 0, false, NULL},
};

static const struct json_field exec_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{"command", JK_ARRAY, true, spec_strings_check},
	{"timeout_s", JK_INT, false, exec_timeout_check},
	{"max_output", JK_INT, false, nonneg_check},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "console", "name": N, "bytes": B} -> {"data": base64 of the last B bytes
 * of a VM's serial console, "size": the log's total size}. The REP socket must answer
 * before it takes the next request, so the file is read here, on the loop: at most
 * AGENT_CONSOLE_MAX bytes of a file in the local pool.
 */
static int console_query(struct agent *a, struct json_object *body, struct json_object **answer,
			 struct kerr *err)
{
	_cleanup_free_ char *path = NULL, *data = NULL;
	int64_t bytes = json_get_int(body, "bytes", CONSOLE_DEFAULT);
	struct logfile_span span = {0};
	struct vm *vm;

	vm = vm_find(a, json_get_str(body, "name", ""));
	if (vm == NULL || !vm->inst.created)
		return err_set(err, 0, "there is no VM %s on this host",
			       json_get_str(body, "name", ""));
	if (bytes < 1 || bytes > AGENT_CONSOLE_MAX)
		bytes = bytes < 1 ? 1 : AGENT_CONSOLE_MAX;
	/* The last bytes, across a trim (vm_cron()); a VM never started has none. */
	path = xasprintf("%s/console.log", vm->inst.dir);
	logfile_read(path, -1, 0, true, bytes, &span);
	data = xmalloc(4 * (span.len + 2) / 3 + 1);
	EVP_EncodeBlock((unsigned char *)data, span.data, (int)span.len);
	free(span.data);
	*answer = json_object_new_object();
	json_object_object_add(*answer, "data", json_object_new_string(data));
	json_object_object_add(*answer, "size", json_object_new_int64(span.end));
	return 0;
}

static const struct json_field spec_query_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "spec", "name": N} -> {"spec": the instance's normalised SPEC as in its
 * spec.json}: what the controller records when it adopts an instance it did not
 * place here (a VM or a container).
 */
static int spec_query(struct agent *a, struct json_object *body, struct json_object **answer,
		      struct kerr *err)
{
	const char *name = json_get_str(body, "name", "");
	struct json_object *spec = NULL;
	struct ctr *ctr;
	struct vm *vm;

	vm = vm_find(a, name);
	ctr = oci_find(a, name);
	if (vm && vm->inst.created)
		spec = vm->inst.spec;
	else if (ctr && ctr->inst.created)
		spec = ctr->inst.spec;
	else
		return err_set(err, 0, "there is no instance %s on this host", name);
	*answer = json_object_new_object();
	json_object_object_add(*answer, "spec", json_object_get(spec));
	return 0;
}

/*
 * {"what": "logs", "name": N, "tail": lines|null, "offset": bytes|null, "max": bytes}
 * -> {"data": base64, "offset": where to go on, "size": the log's size}: a
 * container's stdout and stderr (oci_logs_read()).
 */
static int logs_query(struct agent *a, struct json_object *body, struct json_object **answer,
		      struct kerr *err)
{
	int64_t max = json_get_int(body, "max", AGENT_LOGS_DEFAULT);
	struct ctr *ctr;

	ctr = oci_find(a, json_get_str(body, "name", ""));
	if (ctr == NULL || !ctr->inst.created)
		return err_set(err, 0, "there is no container %s on this host",
			       json_get_str(body, "name", ""));
	if (max < 1 || max > AGENT_CONSOLE_MAX)
		max = max < 1 ? 1 : AGENT_CONSOLE_MAX;
	return oci_logs_read(ctr, json_get_int(body, "tail", 0), json_get_int(body, "offset", -1),
			     max, answer, err);
}

/*
 * {"what": "net", "doc": {...}} -> {"hash"}: the networks this host must realise, a
 * desired state taken whole (its nulls mean something). Deferred: answered once the
 * document is on disk, which is written off the loop, as the apply runs (net.c).
 */
static int net_query(struct agent *a, const char *op, struct json_object *body, struct kerr *err)
{
	struct json_object *doc = json_object_object_get(body, "doc");

	if (json_object_object_length(body) != 2 || !json_object_is_type(doc, json_type_object))
		return err_input(err, 400, "doc",
				 "a net query is {\"what\": \"net\", \"doc\": {...}}");
	return net_desired_set(a, op, doc, err);
}

/* A query answered at once, in *answer (a new object). */
typedef int (*query_answer_fn)(struct agent *a, struct json_object *body,
			       struct json_object **answer, struct kerr *err);
/* A query answered later (link_query_reply()), under its id op. */
typedef int (*query_defer_fn)(struct agent *a, const char *op, struct json_object *body,
			      struct kerr *err);

/*
 * The queries, one row each: the body's "what", the fields checked before the handler
 * (NULL: the handler checks its own), and the handler, which answers now or later. A
 * body is normalised (null members dropped) unless it is taken whole.
 */
static const struct query {
	const char *what;
	const struct json_field *fields;
	query_answer_fn answer;
	query_defer_fn defer;
	bool whole;
} queries[] = {
	{"console", console_fields, console_query, NULL, false},
	{"logs", logs_fields, logs_query, NULL, false},
	{"spec", spec_query_fields, spec_query, NULL, false},
	{"exec", exec_fields, NULL, ociaction_exec, false}, /* ociaction.c */
	{"net", NULL, NULL, net_query, true},
	{"console-input", NULL, console_input_query, NULL, false},	   /* console.c */
	{"console-watch", NULL, console_watch_query, NULL, false},	   /* console.c */
	{"migrate-cancel", NULL, migrate_cancel_query, NULL, false},	   /* migrate.c */
	{"migrate-state", NULL, migrate_state_query, NULL, false},	   /* migrate.c */
	{"migrate-prepare", NULL, migrate_prepare_query, NULL, false},	   /* migrate.c */
	{"migrate-unprepare", NULL, migrate_unprepare_query, NULL, false}, /* migrate.c */
	{"vnc-open", NULL, vnc_query, NULL, false},			   /* vnc.c */
	{"vnc-input", NULL, vnc_query, NULL, false},			   /* vnc.c */
	{"vnc-close", NULL, vnc_query, NULL, false},			   /* vnc.c */
};

/*
 * Answer a query (body; op is its id) in *answer (a new object): returns 0. A query
 * answered later (exec: when its command ends; net: once its document is on disk)
 * returns 1, and link_query_reply() sends the answer then. Returns -1 with err for a query that
 * cannot be answered (the link nacks it). Null members count as absent, except in a body taken
 * whole.
 */
int instance_query(struct agent *a, const char *op, struct json_object *body,
		   struct json_object **answer, struct kerr *err)
{
	const char *what = json_get_str(body, "what", "");
	const struct query *q = NULL;
	struct json_object *norm;
	int ret;

	for (size_t i = 0; i < ARRAY_SIZE(queries) && q == NULL; i++)
		if (strcmp(queries[i].what, what) == 0)
			q = &queries[i];
	if (q == NULL)
		return err_input(err, 400, "what", "field 'what' has an unknown value '%.32s'",
				 what);
	norm = q->whole ? json_object_get(body) : spec_normalise(body);
	if (q->fields && json_fields_check(norm, q->fields, err) < 0)
		ret = -1;
	else if (q->defer)
		ret = q->defer(a, op, norm, err);
	else
		ret = q->answer(a, norm, answer, err);
	json_object_put(norm);
	return ret;
}
