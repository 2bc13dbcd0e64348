/*
 * vmaction.c - what each instance action does to a VM, as chains of steps.
 *
 * instance.c has checked the command and made the op: op->vm is the VM (NULL only
 * for create and delete of an unknown instance), op->disks the disks the action works
 * on, op->spec and op->args what the command says. Each step starts the next as the
 * last thing it does and ends in instance_op_succeed() or instance_op_fail(). A step
 * resumed by a callback first asks instance_op_gone(): the agent may be stopping.
 *
 *   create    check paths, make disks (blank, linked clone, full copy), cloud-init
 *             seed, spec.json, then start if asked
 *   update    the same for new disks, qemu-img resize for grown ones (stopped only)
 *   start, stop, force-stop, reboot, pause, resume, balloon    QEMU and QMP
 *   delete    force-stop if asked, then remove the run directory and the disks
 *   snapshot-create/-revert/-delete
 *             running: HMP savevm/loadvm/delvm with memory, a QMP transaction of
 *             internal disk snapshots without; stopped: qemu-img snapshot
 */
#include "agentd.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "snaprevert.h"
#include "util.h"

#define MIB		  (1024LL * 1024)
#define QMP_TIMEOUT_MS	  30000
#define SAVEVM_TIMEOUT_MS (30 * 60 * 1000) /* RAM and disks written while QEMU waits */

/* ---- create and update ------------------------------------------------------------------ */

static void created_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "created, but could not start: %s", error);
		return;
	}
	instance_op_succeed(op);
}

static void create_start(struct inst_op *op)
{
	struct kerr err;

	if (!json_get_bool(op->args, "start", false) || vm_alive(op->vm)) {
		instance_op_succeed(op);
		return;
	}
	instance_op_progress(op, 90, "starting qemu");
	if (vm_start(op->vm, NULL, created_cb, op, &err) < 0)
		instance_op_fail(op, "created, but could not start: %s", err.msg);
}

static void spec_written_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;
	struct kerr err;

	if (instance_step_failed(op, error))
		return;
	if (op->registered) {
		op->vm->inst.created = true;
		op->registered = false; /* it exists now; a failure to start keeps it */
		memset(op->made, 0, sizeof(op->made));
		memset(op->make, 0, sizeof(op->make));
		log_info("vm %s: created", op->vm->inst.name);
		create_start(op);
		return;
	}
	/* update */
	if (vm_spec_set(op->vm, op->spec, &err) < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	memset(op->made, 0, sizeof(op->made));
	memset(op->make, 0, sizeof(op->make));
	instance_op_succeed(op);
}

static void spec_write(struct inst_op *op)
{
	_cleanup_free_ char *path = xasprintf("%s/spec.json", op->vm->inst.dir);

	instance_op_progress(op, 85, "saving the instance");
	disk_file_write(op->agent, path, json_text(op->spec), spec_written_cb, op);
}

static void restore_then_spec(struct inst_op *op);

static void seeded_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_step_failed(op, error))
		return;
	restore_then_spec(op);
}

/* A restore to a new instance (backup.c): its disks take the backup's content while
 * it is still being created, so a failure removes them like any failed create. */
static void restore_then_spec(struct inst_op *op)
{
	if (op->registered && json_object_object_get(op->args, "restore")) {
		backup_vm_restore_then(op, spec_write);
		return;
	}
	spec_write(op);
}

static void seed_then_spec(struct inst_op *op)
{
	struct json_object *ci;

	if (!op->seed || !json_object_object_get_ex(op->spec, "cloud_init", &ci)) {
		restore_then_spec(op);
		return;
	}
	instance_op_progress(op, 75, "writing the cloud-init seed");
	disk_seed_build(op->agent, op->vm->inst.dir, op->vm->inst.name,
			json_get_str(ci, "user_data", ""), seeded_cb, op);
}

static bool want_grow(struct inst_op *op, size_t i)
{
	return op->grow[i] > 0;
}

static void grow_one(struct inst_op *op, size_t i)
{
	instance_op_progress(op, 60, "growing disks");
	disk_resize(op->agent, op->disks[i].abs, op->grow[i], instance_disk_done_cb, op);
}

static void grow_then_seed(struct inst_op *op)
{
	instance_disks_each(op, want_grow, grow_one, seed_then_spec);
}

static bool want_make(struct inst_op *op, size_t i)
{
	return op->make[i];
}

static void made_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	/* Remembered before anything else: a half-made file is removed on failure too. */
	if (!a->stopping)
		op->made[op->idx - 1] = true;
	instance_disk_done_cb(a, error, data);
}

static void make_one(struct inst_op *op, size_t i)
{
	struct json_object *arr, *d;
	char phase[96];

	json_object_object_get_ex(op->spec, "disks", &arr);
	d = json_object_array_get_idx(arr, i);
	snprintf(phase, sizeof(phase), "creating disk %s", op->disks[i].name);
	instance_op_progress(op, 10 + (int)(50 * i / (op->ndisks ? op->ndisks : 1)), phase);
	disk_create(op->agent, &op->disks[i], op->images[i], json_get_int(d, "size_mb", 0) * MIB,
		    strcmp(json_get_str(d, "clone", "linked"), "full") == 0, made_cb, op);
}

static void make_disks(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_step_failed(op, error))
		return;
	instance_disks_each(op, want_make, make_one, grow_then_seed);
}

static void prepared_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;
	_cleanup_free_ char *path = NULL;

	if (instance_step_failed(op, error))
		return;
	if (!op->registered) {
		make_disks(a, NULL, op);
		return;
	}
	/*
	 * The paths are checked: none of the disks exists. Should the agent die before
	 * spec.json is written, creating.json tells the next one what to remove.
	 */
	path = xasprintf("%s/creating.json", op->vm->inst.dir);
	disk_file_write(a, path, json_text(op->spec), make_disks, op);
}

/* The images of the disks to make, checked one after the other (imagecheck.c). */
struct images_wait {
	struct inst_op *op;
	size_t i;
};

static void images_check_next(struct images_wait *w);

static void image_checked_cb(struct agent *a, const char *error, void *data)
{
	struct images_wait *w = data;

	(void)a;
	if (instance_op_gone(w->op)) {
		free(w);
		return;
	}
	if (error) {
		instance_op_fail(w->op, "image: %s", error);
		free(w);
		return;
	}
	w->i++;
	images_check_next(w);
}

/* Check paths and make the run directory, then make, grow and seed as planned. */
static void images_check_next(struct images_wait *w)
{
	struct inst_op *op = w->op;
	struct vm_disk fresh[AGENT_VM_DISKS_MAX];
	const char *images[AGENT_VM_DISKS_MAX];
	struct json_object *arr;
	size_t n = 0;

	json_object_object_get_ex(op->spec, "disks", &arr);
	/* An image is read (cloned or copied) only once it is the one the controller
	 * recorded: qcow2, self-contained, the same SHA-256. */
	for (; w->i < op->ndisks; w->i++) {
		struct json_object *image;

		if (!op->make[w->i] ||
		    !json_object_object_get_ex(json_object_array_get_idx(arr, w->i), "image",
					       &image))
			continue;
		free(op->images[w->i]);
		op->images[w->i] = xasprintf("%s/%s", op->agent->cfg->shared_pool,
					     json_get_str(image, "path", ""));
		instance_op_progress(op, 3, "checking images");
		imagecheck_image(op->agent, op->images[w->i], json_get_str(image, "sha256", ""),
				 image_checked_cb, w);
		return;
	}
	free(w);
	for (size_t i = 0; i < op->ndisks; i++) {
		if (!op->make[i])
			continue;
		fresh[n] = op->disks[i];
		images[n++] = op->images[i];
	}
	instance_op_progress(op, 5, "checking disk paths");
	disk_prepare(op->agent, op->vm->inst.dir, fresh, n, images, prepared_cb, op);
}

static void disks_prepare(struct inst_op *op)
{
	struct images_wait *w = xcalloc(1, sizeof(*w));

	w->op = op;
	images_check_next(w);
}

/*
 * create: make the disks, seed and spec.json of a new instance; start it if args.start.
 * The same spec again (a resend after an agent restart) only starts it if asked.
 */
void vmaction_create(struct inst_op *op)
{
	struct vm *vm = op->vm;
	struct kerr err;

	if (vm) {
		/* The same spec again: a resend after an agent restart, not a new instance. */
		if (vm->inst.created && json_object_equal(vm->inst.spec, op->spec)) {
			create_start(op);
			return;
		}
		instance_op_fail(op, "instance %s exists already on this host", vm->inst.name);
		return;
	}
	vm = vm_register(op->agent, op->spec, &err);
	if (vm == NULL) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	op->vm = vm;
	op->owner = op->registered = true;
	vm->inst.op = op;
	for (size_t i = 0; i < op->ndisks; i++)
		op->make[i] = true;
	/* HA failover (controllerd/ha.c): the disks on the shared pool are the ones the
	 * fenced host ran; this host runs them as they are. */
	if (json_get_bool(op->spec, "adopt_disks", false))
		for (size_t i = 0; i < op->ndisks; i++)
			op->make[i] = strcmp(op->disks[i].root, op->agent->cfg->shared_pool) != 0;
	op->seed = json_object_object_get_ex(op->spec, "cloud_init", NULL);
	disks_prepare(op);
}

static struct json_object *spec_disk(struct json_object *spec, const char *name)
{
	struct json_object *arr;

	if (!json_object_object_get_ex(spec, "disks", &arr))
		return NULL;
	for (size_t i = 0; i < json_array_len(arr); i++) {
		struct json_object *d = json_object_array_get_idx(arr, i);

		if (strcmp(json_get_str(d, "name", ""), name) == 0)
			return d;
	}
	return NULL;
}

/*
 * update: a stopped instance takes the new spec: new disks made, grown disks resized
 * (never shrunk, never removed), the seed rebuilt if cloud_init changed.
 */
void vmaction_update(struct inst_op *op)
{
	struct vm *vm = op->vm;
	struct json_object *old_ci = NULL, *new_ci = NULL, *arr;
	struct kerr err;

	if (json_object_equal(vm->inst.spec, op->spec)) {
		instance_op_succeed(op);
		return;
	}
	if (vm_alive(vm)) {
		instance_op_fail(
			op,
			"instance %s is %s; vcpus, memory and disks change only while it is "
			"stopped",
			vm->inst.name, inst_state_name(vm->inst.state));
		return;
	}
	if (vm_disks_resolve(op->agent, op->spec, op->disks, &op->ndisks, &err) < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	json_object_object_get_ex(op->spec, "disks", &arr);
	for (size_t i = 0; i < op->ndisks; i++) {
		struct json_object *nd = json_object_array_get_idx(arr, i);
		struct json_object *od = spec_disk(vm->inst.spec, op->disks[i].name);
		int64_t old_mb, new_mb = json_get_int(nd, "size_mb", 0);

		if (od == NULL) {
			op->make[i] = true;
			continue;
		}
		if (strcmp(json_get_str(od, "pool", ""), json_get_str(nd, "pool", "")) != 0 ||
		    strcmp(json_get_str(od, "path", ""), json_get_str(nd, "path", "")) != 0) {
			instance_op_fail(op, "disk %s: its pool and path cannot change",
					 op->disks[i].name);
			return;
		}
		old_mb = json_get_int(od, "size_mb", 0);
		if (new_mb < old_mb) {
			instance_op_fail(
				op, "disk %s: disks grow but never shrink (%lld MiB to %lld MiB)",
				op->disks[i].name, (long long)old_mb, (long long)new_mb);
			return;
		}
		if (new_mb > old_mb)
			op->grow[i] = new_mb * MIB;
	}
	for (size_t i = 0; i < vm->ndisks; i++) {
		if (spec_disk(op->spec, vm->disks[i].name) == NULL) {
			instance_op_fail(op, "disk %s cannot be removed by an update",
					 vm->disks[i].name);
			return;
		}
	}
	json_object_object_get_ex(vm->inst.spec, "cloud_init", &old_ci);
	json_object_object_get_ex(op->spec, "cloud_init", &new_ci);
	op->seed = new_ci && !json_object_equal(old_ci, new_ci);
	disks_prepare(op);
}

/* ---- power ------------------------------------------------------------------------------ */

/*
 * start: run QEMU; running or paused already is success.
 */
void vmaction_start(struct inst_op *op)
{
	struct vm *vm = op->vm;
	struct kerr err;

	if (vm->inst.state == INST_RUNNING || vm->inst.state == INST_PAUSED) {
		instance_op_succeed(op);
		return;
	}
	if (vm_alive(vm)) {
		instance_op_fail(op, "instance %s is %s", vm->inst.name,
				 inst_state_name(vm->inst.state));
		return;
	}
	instance_op_progress(op, 10, "starting qemu");
	if (vm_start(vm, NULL, instance_done_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

static void stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_stop_noted(op, inst, error))
		instance_op_succeed(op);
}

/*
 * stop: ACPI power button, forced after args.timeout_s (which the controller always
 * sends; else the VM default); not running is success. The result says "forced" and
 * "grace_s".
 */
void vmaction_stop(struct inst_op *op)
{
	int64_t timeout =
		json_get_int(op->args, "timeout_s", verb_timeout_default(VERB_STOP, INST_VM));

	if (op->result == NULL)
		op->result = json_object_new_object();
	json_object_object_add(op->result, "grace_s", json_object_new_int64(timeout));

	if (!vm_alive(op->vm)) {
		vm_stopped_set(op->vm);
		instance_op_succeed(op);
		return;
	}
	instance_op_progress(op, 10, "powering off");
	vm_shutdown(op->vm, (unsigned)timeout, stopped_cb, op);
}

/*
 * force-stop: QMP quit, SIGKILL if QEMU lingers; may cut a running stop short.
 */
void vmaction_force_stop(struct inst_op *op)
{
	if (!vm_alive(op->vm)) {
		vm_stopped_set(op->vm);
		instance_op_succeed(op);
		return;
	}
	instance_op_progress(op, 10, "stopping qemu");
	vm_force_stop(op->vm, stopped_cb, op);
}

static bool running_or_fail(struct inst_op *op)
{
	if (op->vm->inst.state == INST_RUNNING || op->vm->inst.state == INST_PAUSED)
		return true;
	instance_op_fail(op, "instance %s is %s, not running", op->vm->inst.name,
			 inst_state_name(op->vm->inst.state));
	return false;
}

static void qmp_done_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_step_failed(op, error))
		return;
	instance_op_succeed(op);
}

static void simple_qmp(struct inst_op *op, const char *cmd, struct json_object *args,
		       qmp_reply_cb cb)
{
	struct kerr err;

	instance_op_progress(op, 10, cmd);
	if (vm_qmp(op->vm, cmd, args, QMP_TIMEOUT_MS, cb ? cb : qmp_done_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

static void reset_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;

	if (!op->agent->stopping && error)
		op->vm->reset_expected = false;
	qmp_done_cb(q, ret, error, data);
}

/*
 * reboot: QMP system_reset of a running or paused guest.
 */
void vmaction_reboot(struct inst_op *op)
{
	/* Running or paused: the verb table's from-states, checked before (dispatch.c). */
	/* QEMU answers first and resets on its next turn: the event follows the op-done. */
	op->vm->reset_expected = true;
	simple_qmp(op, "system_reset", NULL, reset_cb);
}

static void paused_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;

	if (!op->agent->stopping && !error)
		vm_state_set(op->vm, INST_PAUSED);
	qmp_done_cb(q, ret, error, data);
}

/*
 * pause: QMP stop; paused already is success.
 */
void vmaction_pause(struct inst_op *op)
{
	if (op->vm->inst.state == INST_PAUSED) {
		instance_op_succeed(op);
		return;
	}
	simple_qmp(op, "stop", NULL, paused_cb);
}

/*
 * A resume: QMP cont, then the op succeeds once QEMU runs the guest. QEMU answers
 * cont before its guest runs, but sends its RESUME event (vm.c counts them) before
 * that answer: a RESUME that came after the cont went out says it runs; without one
 * (an S3-suspended guest, which QEMU runs but reports "suspended"; a cont QEMU only
 * noted, below) query-status decides.
 *
 * A guest that migrated here is resumed only once its QEMU loaded the whole stream.
 * The source says "completed" when it sent the last byte; the target may still be
 * reading and loading it (its runstate "inmigrate"), the longer the busier the host.
 * QEMU 7.2 answers a cont then with success but only notes to start afterwards, and a
 * guest the source had paused (pause-then-migrate) keeps the source's run state:
 * paused. So the cont would be lost and the guest never run again. The target's QEMU
 * says when its load ended: its MIGRATION event "completed" (capability "events",
 * from its command line: qemuargs.c) comes after its run state was set, and sets
 * vm_in_loaded and wakes a waiting resume (vm.c, vmaction_resume_wake()). Hence: loaded -> cont at
 * once; else one query-status; still "inmigrate" -> wait for the event, asking again every
 * RESUME_LOAD_POLL_MS in case it was missed (a QMP reconnect in between), within
 * RESUME_LOAD_WAIT_MS (a stream that broke ends QEMU, which fails the op). A guest
 * whose QEMU started it itself at the load's end (its source ran it, no -S) runs
 * already: no cont. The op's result.timings says where the time went (ms since the
 * command came): nbd_stopped_ms, load_wait_ms and how the load's end was known
 * (loaded_by), polls, cont_ms, running_ms and how running was known (running_by);
 * the controller keeps a migration's as its timings.resume.
 */
#define RESUME_LOAD_POLL_MS 100
#define RESUME_LOAD_WAIT_MS 45000

struct resume {
	uv_timer_t timer;
	struct inst_op *op;
	int polls;		   /* query-status calls while waiting for the load */
	bool waited;		   /* ... and one said "inmigrate" */
	unsigned resumes;	   /* vm_resumes when the cont went */
	struct json_object *marks; /* the op's result.timings */
};

static void resume_close_cb(uv_handle_t *handle)
{
	struct resume *w = handle->data;

	json_object_put(w->marks);
	free(w);
}

static void resume_mark(struct resume *w, const char *name)
{
	json_object_object_add(w->marks, name, json_object_new_int64(now_ms() - w->op->started_ms));
}

/* Is w's op no longer ours (instance_op_gone())? Then w goes. */
static bool resume_gone(struct resume *w)
{
	/* The agent stops: its VMs may be freed already (inst_close_all()), so only
	 * the op is looked at, which instance_op_gone() then frees. */
	if (w->op->agent->stopping) {
		instance_op_gone(w->op);
		uv_close((uv_handle_t *)&w->timer, resume_close_cb);
		return true;
	}
	/* Before the op may be freed: no event may find w any more. */
	if (w->op->vm->vm_resume_wait == w)
		w->op->vm->vm_resume_wait = NULL;
	if (!instance_op_gone(w->op))
		return false;
	uv_close((uv_handle_t *)&w->timer, resume_close_cb);
	return true;
}

static void resume_fail(struct resume *w, const char *why)
{
	struct inst_op *op = w->op;

	if (op->vm->vm_resume_wait == w)
		op->vm->vm_resume_wait = NULL;
	uv_close((uv_handle_t *)&w->timer, resume_close_cb);
	instance_op_fail(op, "%s", why);
}

/* QEMU runs the guest (how: "by", into the timings): the op succeeds. */
static void resume_succeed(struct resume *w, const char *by)
{
	struct inst_op *op = w->op;

	vm_state_set(op->vm, INST_RUNNING);
	resume_mark(w, "running_ms");
	json_object_object_add(w->marks, "polls", json_object_new_int(w->polls));
	json_object_object_add(w->marks, "running_by", json_object_new_string(by));
	if (op->result == NULL)
		op->result = json_object_new_object();
	json_object_object_add(op->result, "timings", json_object_get(w->marks));
	uv_close((uv_handle_t *)&w->timer, resume_close_cb);
	instance_op_succeed(op);
}

static void confirmed_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct resume *w = data;
	const char *status;
	char why[96];

	if (resume_gone(w))
		return;
	if (error) {
		resume_fail(w, error);
		return;
	}
	status = json_get_str(ret, "status", "");
	/* A guest suspended to RAM (S3) stays so after cont, until it wakes: QEMU runs it.
	 * A cont QEMU only noted (still "inmigrate") is no resume: the op fails. */
	if (strcmp(status, "running") != 0 && strcmp(status, "suspended") != 0) {
		snprintf(why, sizeof(why), "QEMU answered cont but is %.40s, not running", status);
		resume_fail(w, why);
		return;
	}
	resume_succeed(w, "query-status");
}

static void resumed_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct resume *w = data;
	struct kerr err;

	if (resume_gone(w))
		return;
	if (error) {
		resume_fail(w, error);
		return;
	}
	resume_mark(w, "cont_ms");
	/* Its RESUME event came between the cont and this answer (above). */
	if (w->op->vm->vm_resumes != w->resumes && w->op->vm->inst.state == INST_RUNNING) {
		resume_succeed(w, "resume-event");
		return;
	}
	if (vm_qmp(w->op->vm, "query-status", NULL, QMP_TIMEOUT_MS, confirmed_cb, w, &err) < 0)
		resume_fail(w, err.msg);
}

static void cont_send(struct resume *w)
{
	struct kerr err;

	w->resumes = w->op->vm->vm_resumes;
	if (vm_qmp(w->op->vm, "cont", NULL, QMP_TIMEOUT_MS, resumed_cb, w, &err) < 0)
		resume_fail(w, err.msg);
}

/* A migrated guest's load ended (known how: "by"): cont, unless its QEMU started it. */
static void loaded_cont(struct resume *w, const char *by)
{
	resume_mark(w, "load_wait_ms");
	json_object_object_add(w->marks, "loaded_by", json_object_new_string(by));
	/* A wait says how far the target lagged. */
	if (w->waited)
		log_info("vm %s: QEMU loaded the migration stream %lld ms after the resume came",
			 w->op->vm->inst.name, (long long)(now_ms() - w->op->started_ms));
	if (w->op->vm->inst.state == INST_RUNNING) {
		resume_succeed(w, "autostart");
		return;
	}
	cont_send(w);
}

static void loaded_status_cb(struct qmp *q, struct json_object *ret, const char *error, void *data);

static void loaded_poll(struct resume *w)
{
	struct kerr err;

	if (vm_qmp(w->op->vm, "query-status", NULL, QMP_TIMEOUT_MS, loaded_status_cb, w, &err) < 0)
		resume_fail(w, err.msg);
}

/* The load's event came, or the fallback poll is due. */
static void loaded_wake(struct resume *w)
{
	if (resume_gone(w))
		return;
	if (w->op->vm->vm_in_loaded || w->op->vm->inst.state == INST_RUNNING) {
		loaded_cont(w, "event");
		return;
	}
	loaded_poll(w);
}

static void loaded_tick_cb(uv_timer_t *timer)
{
	loaded_wake(timer->data);
}

static void loaded_status_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct resume *w = data;
	struct inst_op *op = w->op;
	int64_t waited = now_ms() - op->started_ms;

	if (resume_gone(w))
		return;
	if (error) {
		resume_fail(w, error);
		return;
	}
	w->polls++;
	/* Its event may have come since QEMU answered: then it loaded. */
	if (strcmp(json_get_str(ret, "status", ""), "inmigrate") == 0 && !op->vm->vm_in_loaded &&
	    op->vm->inst.state != INST_RUNNING) {
		if (w->polls == 1)
			instance_op_progress(op, 20,
					     "waiting for QEMU to load the migration stream");
		if (waited >= RESUME_LOAD_WAIT_MS) {
			char why[96];

			snprintf(why, sizeof(why),
				 "QEMU is still loading the migration stream after %lld s",
				 (long long)waited / 1000);
			resume_fail(w, why);
			return;
		}
		/* The event wakes it (vmaction_resume_wake()); the timer if it was lost. */
		w->waited = true;
		op->vm->vm_resume_wait = w;
		uv_timer_start(&w->timer, loaded_tick_cb, RESUME_LOAD_POLL_MS, 0);
		return;
	}
	loaded_cont(w, op->vm->vm_in_loaded ? "event" : "query-status");
}

/*
 * QEMU's news for vm (vm.c): its MIGRATION event ended (vm_in_loaded says whether it
 * loaded the stream; "failed" ends QEMU) or its RESUME event came (QEMU started the
 * guest itself). A resume waiting for the load (above) looks again at once.
 */
void vmaction_resume_wake(struct vm *vm)
{
	struct resume *w = vm->vm_resume_wait;

	if (w == NULL)
		return;
	vm->vm_resume_wait = NULL;
	uv_timer_stop(&w->timer);
	loaded_wake(w);
}

/* A guest that migrated here: once its QEMU loaded the stream (above). */
static void migrated_resume(struct resume *w)
{
	if (w->op->vm->vm_in_loaded) {
		loaded_cont(w, "known");
		return;
	}
	loaded_poll(w);
}

static void nbd_stopped_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct resume *w = data;

	if (resume_gone(w))
		return;
	/* Stopped already (a resume run again, or an agent restarted since) is success:
	 * the resume is idempotent (common/verbs.h VF_IDEMPOTENT). QEMU's words for it. */
	if (error && strstr(error, "NBD server not running"))
		error = NULL;
	if (error) {
		resume_fail(w, error);
		return;
	}
	resume_mark(w, "nbd_stopped_ms");
	w->op->vm->vm_nbd = false;
	migrated_resume(w);
}

/*
 * resume: QMP cont; running already is success. A guest that migrated here first
 * stops the NBD server its local disks came through, if any (migrate.c): the source
 * ended its mirror before the controller asked for this resume; and waits until its
 * QEMU loaded the migration stream (above). The op succeeds once QEMU says it runs.
 */
void vmaction_resume(struct inst_op *op)
{
	struct resume *w = xcalloc(1, sizeof(*w));
	struct kerr err;

	w->op = op;
	w->marks = json_object_new_object();
	uv_timer_init(op->agent->loop, &w->timer);
	w->timer.data = w;
	/* Running already (a resume run again, or QEMU started a migrated guest itself at
	 * its load's end before this came) is success. */
	if (op->vm->inst.state == INST_RUNNING) {
		resume_succeed(w, "already");
		return;
	}
	instance_op_progress(op, 10, "cont");
	if (!op->vm->vm_migrating_in) {
		cont_send(w);
		return;
	}
	/* vm_nbd: its local disks came through QEMU's NBD server, or an agent restarted
	 * since its migration (migrate_adopted()) and cannot know. */
	if (!op->vm->vm_nbd) {
		migrated_resume(w);
		return;
	}
	if (vm_qmp(op->vm, "nbd-server-stop", NULL, QMP_TIMEOUT_MS, nbd_stopped_cb, w, &err) < 0)
		resume_fail(w, err.msg);
}

/*
 * The balloon: QMP "balloon" only asks the guest's driver to give memory back (or take
 * it); the guest gets there in its own time. So the operation ends once query-balloon
 * shows the guest within the tolerance (BALLOON_TOL_*) of the target, or after BALLOON_WAIT_MS
 * (the VM takes no other command meanwhile) with "reached": false and a warning: the
 * target stays set in QEMU and the guest may still get there, which is why that is
 * not a failure.
 */
#define BALLOON_WAIT_MS	    60000
#define BALLOON_POLL_MS	    500
#define BALLOON_TOL_MIN_MB  4
#define BALLOON_TOL_PERCENT 2

struct balloon_wait {
	uv_timer_t timer;
	struct inst_op *op;
	int64_t target_mb, tolerance_mb, since_ms;
};

static void balloon_wait_close_cb(uv_handle_t *handle)
{
	free(handle->data);
}

/* The wait is over: the op succeeds (reached or not) or fails with error. */
static void balloon_finish(struct balloon_wait *w, int64_t actual_mb, const char *error)
{
	struct inst_op *op = w->op;
	bool reached = actual_mb >= 0 && llabs(actual_mb - w->target_mb) <= w->tolerance_mb;

	uv_close((uv_handle_t *)&w->timer, balloon_wait_close_cb);
	if (error) {
		instance_op_fail(op, "%s", error);
		return;
	}
	json_object_object_add(op->result, "actual_mb", json_object_new_int64(actual_mb));
	json_object_object_add(op->result, "tolerance_mb", json_object_new_int64(w->tolerance_mb));
	json_object_object_add(op->result, "reached", json_object_new_boolean(reached));
	if (!reached) {
		char warning[256];

		snprintf(warning, sizeof(warning),
			 "the guest's balloon is at %lld MiB after %lld s, not within %lld MiB of "
			 "the %lld MiB target; the target stays set and the guest may still get "
			 "there",
			 (long long)actual_mb, (long long)(now_ms() - w->since_ms) / 1000,
			 (long long)w->tolerance_mb, (long long)w->target_mb);
		json_object_object_add(op->result, "warning", json_object_new_string(warning));
		log_warnx("vm %s: %s", op->vm->inst.name, warning);
	}
	instance_op_succeed(op);
}

static void balloon_poll(struct balloon_wait *w);

static void balloon_tick_cb(uv_timer_t *timer)
{
	struct balloon_wait *w = timer->data;

	if (instance_op_gone(w->op)) {
		uv_close((uv_handle_t *)&w->timer, balloon_wait_close_cb);
		return;
	}
	balloon_poll(w);
}

static void balloon_polled_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct balloon_wait *w = data;
	struct inst_op *op = w->op;
	int64_t actual;

	if (instance_op_gone(op)) {
		uv_close((uv_handle_t *)&w->timer, balloon_wait_close_cb);
		return;
	}
	if (ret == NULL) {
		balloon_finish(w, -1, error ? error : "query-balloon failed");
		return;
	}
	actual = json_get_int(ret, "actual", -MIB) / MIB;
	op->vm->balloon_actual_mb = actual;
	if (llabs(actual - w->target_mb) <= w->tolerance_mb ||
	    now_ms() - w->since_ms >= BALLOON_WAIT_MS) {
		balloon_finish(w, actual, NULL);
		return;
	}
	uv_timer_start(&w->timer, balloon_tick_cb, BALLOON_POLL_MS, 0);
}

static void balloon_poll(struct balloon_wait *w)
{
	struct kerr err;

	if (vm_qmp(w->op->vm, "query-balloon", NULL, QMP_TIMEOUT_MS, balloon_polled_cb, w, &err) <
	    0)
		balloon_finish(w, -1, err.msg);
}

static void balloon_set_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;
	struct balloon_wait *w;
	char phase[96];

	if (instance_step_failed(op, error))
		return;
	w = xcalloc(1, sizeof(*w));
	w->op = op;
	w->target_mb = json_get_int(op->args, "target_mb", 0);
	w->tolerance_mb = w->target_mb * BALLOON_TOL_PERCENT / 100;
	if (w->tolerance_mb < BALLOON_TOL_MIN_MB)
		w->tolerance_mb = BALLOON_TOL_MIN_MB;
	w->since_ms = now_ms();
	uv_timer_init(op->agent->loop, &w->timer);
	w->timer.data = w;
	vm_balloon_target_set(op->vm, w->target_mb);
	snprintf(phase, sizeof(phase), "waiting for the guest to reach %lld MiB",
		 (long long)w->target_mb);
	instance_op_progress(op, 30, phase);
	balloon_poll(w);
}

/*
 * balloon: set the balloon of a running VM with dynamic memory to args.target_mb
 * (within min_mb..max_mb) and wait for the guest to get there (see above). The result
 * has "target_mb", "actual_mb", "tolerance_mb", "reached" and, when not, "warning".
 */
void vmaction_balloon(struct inst_op *op)
{
	struct json_object *mem, *args = json_object_new_object();
	int64_t target = json_get_int(op->args, "target_mb", 0), min, max;

	json_object_object_get_ex(op->vm->inst.spec, "memory", &mem);
	min = json_get_int(mem, "min_mb", 0);
	max = json_get_int(mem, "max_mb", 0);
	if (max == 0) {
		json_object_put(args);
		instance_op_fail(
			op, "instance %s has static memory; the balloon needs min_mb and max_mb",
			op->vm->inst.name);
		return;
	}
	if (target < min || target > max) {
		json_object_put(args);
		instance_op_fail(op, "target_mb %lld is outside the instance's %lld..%lld MiB",
				 (long long)target, (long long)min, (long long)max);
		return;
	}
	if (!running_or_fail(op)) {
		json_object_put(args);
		return;
	}
	op->result = json_object_new_object();
	json_object_object_add(op->result, "target_mb", json_object_new_int64(target));
	json_object_object_add(args, "value", json_object_new_int64(target * MIB));
	simple_qmp(op, "balloon", args, balloon_set_cb);
}

/* ---- delete ----------------------------------------------------------------------------- */

static void removed_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;
	struct vm *vm = op->vm;

	if (instance_step_failed(op, error))
		return;
	vm->inst.state = INST_STOPPED;
	op->report = vm_report(vm);
	vm->inst.op = NULL;
	op->owner = false;
	vm_remove(vm);
	op->vm = NULL;
	log_info("vm %s: deleted", json_get_str(op->spec, "name", ""));
	instance_op_succeed(op);
}

static void delete_files(struct inst_op *op)
{
	bool keep = json_get_bool(op->args, "keep_disks", false);
	bool keep_each[AGENT_VM_DISKS_MAX];
	size_t nlocal = 0;

	op->result = json_object_new_object();
	json_object_object_add(op->result, "deleted", json_object_new_boolean(true));
	json_object_object_add(op->result, "disks_kept", json_object_new_boolean(keep));
	instance_op_progress(op, 50,
			     keep ? "removing the instance, keeping its disks"
				  : "removing the instance and its disks");
	netport_vm_remove(json_object_object_get(op->vm->inst.spec, "nics"));
	/* The target's half of a migration (its guest never ran here): the disks it made
	 * on its local pool are its own, the shared ones its source's (migrate.c). */
	if (keep && op->vm->vm_migrating_in)
		nlocal = migrate_disks_local(op->vm, keep_each);
	if (nlocal) {
		disk_remove(op->agent, op->vm->inst.dir, op->vm->disks, op->vm->ndisks, keep_each,
			    removed_cb, op);
		return;
	}
	disk_remove(op->agent, op->vm->inst.dir, op->vm->disks, keep ? 0 : op->vm->ndisks, NULL,
		    removed_cb, op);
}

/* The VM part of the report of a VM this host does not have (instance_delete()). */
static void absent_report(struct json_object *r, struct json_object *spec)
{
	json_object_object_add(r, "started_at", NULL);
	json_object_object_add(r, "uptime_s", json_object_new_int(0));
	json_object_object_add(r, "accel",
			       json_object_new_string(json_get_str(spec, "accel", "tcg")));
	json_object_object_add(r, "balloon_actual_mb", NULL);
	json_object_object_add(r, "disks", json_object_new_array());
}

static void force_stop(struct inst_op *op, inst_done_cb cb)
{
	instance_op_progress(op, 10, "stopping qemu");
	vm_force_stop(op->vm, cb, op);
}

static bool alive(const struct inst *inst)
{
	return vm_alive((const struct vm *)inst);
}

/* ---- snapshots -------------------------------------------------------------------------- */

static void snapshot_result(struct inst_op *op)
{
	struct json_object *s = json_object_new_object();

	json_object_object_add(s, "name", json_object_new_string(op->snapshot));
	json_object_object_add(s, "with_memory", json_object_new_boolean(op->with_memory));
	op->result = json_object_new_object();
	json_object_object_add(op->result, "snapshot", s);
}

/* Is the snapshot on disk i? From qemu-img info; -U reads a disk QEMU holds. */
static void scan_info_cb(struct agent *a, const char *error, struct json_object *info, void *data)
{
	struct inst_op *op = data;
	struct json_object *snaps;
	size_t i = op->idx - 1;
	struct kerr err;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "disk %s: %s", op->disks[i].name, error);
		return;
	}
	/* A revert of a stopped VM clears the bitmaps the file holds (snaprevert.h). */
	if (op->verb == VERB_SNAPSHOT_REVERT) {
		if (op->bitmaps == NULL)
			op->bitmaps = json_object_new_array();
		if (snaprevert_bitmaps_from_info(info, i, op->bitmaps, &err) < 0) {
			instance_op_fail(op, "disk %s: qemu-img info: %s", op->disks[i].name,
					 err.msg);
			return;
		}
	}
	if (json_object_object_get_ex(info, "snapshots", &snaps)) {
		for (size_t k = 0; k < json_array_len(snaps); k++) {
			struct json_object *s = json_object_array_get_idx(snaps, k);

			if (strcmp(json_get_str(s, "name", ""), op->snapshot) != 0)
				continue;
			op->has[i] = true;
			if (json_get_int(s, "vm-state-size", 0) > 0)
				op->has_memory = true;
		}
	}
	instance_each_next(op);
}

static void scan_one(struct inst_op *op, size_t i)
{
	disk_info(op->agent, op->disks[i].abs, scan_info_cb, op);
}

static bool want_has(struct inst_op *op, size_t i)
{
	return op->has[i];
}

static void hmp_done_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;
	char out[256];
	size_t len;

	if (instance_step_failed(op, error))
		return;
	/* HMP says nothing on success; anything it prints is the reason it failed. */
	snprintf(out, sizeof(out), "%s",
		 json_object_get_string(ret) ? json_object_get_string(ret) : "");
	len = strlen(out);
	while (len && (out[len - 1] == '\n' || out[len - 1] == '\r'))
		out[--len] = '\0';
	if (len) {
		instance_op_fail(op, "QEMU: %s", out);
		return;
	}
	instance_op_succeed(op);
}

/* An HMP command line through QMP's human-monitor-command. */
static void hmp(struct inst_op *op, const char *verb, qmp_reply_cb cb)
{
	struct json_object *args = json_object_new_object();
	_cleanup_free_ char *line = xasprintf("%s %s", verb, op->snapshot);
	struct kerr err;

	json_object_object_add(args, "command-line", json_object_new_string(line));
	instance_op_progress(op, 30, line);
	if (vm_qmp(op->vm, "human-monitor-command", args, SAVEVM_TIMEOUT_MS, cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

static void snapshot_each(struct inst_op *op, size_t i, char action)
{
	disk_snapshot(op->agent, op->disks[i].abs, action, op->snapshot, instance_disk_done_cb, op);
}

static void take_one(struct inst_op *op, size_t i)
{
	snapshot_each(op, i, 'c');
}

static void apply_one(struct inst_op *op, size_t i)
{
	snapshot_each(op, i, 'a');
}

static void delete_one(struct inst_op *op, size_t i)
{
	snapshot_each(op, i, 'd');
}

static void snapshot_take(struct inst_op *op)
{
	struct json_object *list, *args;
	struct kerr err;

	for (size_t i = 0; i < op->ndisks; i++) {
		if (op->has[i]) {
			instance_op_fail(op, "snapshot %s exists already", op->snapshot);
			return;
		}
	}
	if (!vm_alive(op->vm)) {
		instance_op_progress(op, 30, "qemu-img snapshot -c");
		instance_disks_each(op, NULL, take_one, instance_op_succeed);
		return;
	}
	if (op->with_memory) {
		hmp(op, "savevm", hmp_done_cb);
		return;
	}
	/* One transaction: every disk's snapshot is of the same instant. */
	list = json_object_new_array();
	for (size_t i = 0; i < op->ndisks; i++) {
		struct json_object *a = json_object_new_object(), *d = json_object_new_object();
		char node[16];

		snprintf(node, sizeof(node), "d%zu", i);
		json_object_object_add(d, "device", json_object_new_string(node));
		json_object_object_add(d, "name", json_object_new_string(op->snapshot));
		json_object_object_add(a, "type",
				       json_object_new_string("blockdev-snapshot-internal-sync"));
		json_object_object_add(a, "data", d);
		json_object_array_add(list, a);
	}
	args = json_object_new_object();
	json_object_object_add(args, "actions", list);
	instance_op_progress(op, 30, "snapshotting disks");
	if (vm_qmp(op->vm, "transaction", args, SAVEVM_TIMEOUT_MS, qmp_done_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

/* Look for the snapshot on every disk, then go on with next. */
static void snapshot_begin(struct inst_op *op, op_step_fn next)
{
	op->snapshot = json_get_str(op->args, "snapshot", "");
	op->with_memory = json_get_bool(op->args, "with_memory", false);
	snapshot_result(op);
	if (op->ndisks == 0) {
		instance_op_fail(op, "instance %s has no disks to hold a snapshot",
				 op->vm->inst.name);
		return;
	}
	instance_op_progress(op, 10, "listing snapshots");
	instance_disks_each(op, NULL, scan_one, next);
}

/*
 * snapshot-create: args.snapshot on every disk, with the VM's memory if
 * args.with_memory (running only).
 */
void vmaction_snapshot_create(struct inst_op *op)
{
	if (json_get_bool(op->args, "with_memory", false) && !vm_alive(op->vm)) {
		instance_op_fail(
			op,
			"instance %s is %s, so it has no memory to save; take the snapshot "
			"without memory",
			op->vm->inst.name, inst_state_name(op->vm->inst.state));
		return;
	}
	snapshot_begin(op, snapshot_take);
}

static void revert_restart(struct inst_op *op)
{
	struct kerr err;

	instance_op_progress(op, 80, "starting qemu");
	if (vm_start(op->vm, NULL, instance_done_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

static void revert_stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_step_failed(op, error))
		return;
	instance_op_progress(op, 50, "qemu-img snapshot -a");
	instance_disks_each(op, NULL, apply_one, revert_restart);
}

static void loadvm_status_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;

	if (!op->agent->stopping && ret)
		vm_state_set(op->vm, strcmp(json_get_str(ret, "status", ""), "running") == 0
					     ? INST_RUNNING
					     : INST_PAUSED);
	qmp_done_cb(q, ret, NULL, data);
}

static void loadvm_cont_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;
	struct kerr err;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "the snapshot was loaded but the guest did not resume: %s",
				 error);
		return;
	}
	if (vm_qmp(op->vm, "query-status", NULL, QMP_TIMEOUT_MS, loadvm_status_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

static void loadvm_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;
	const char *out = ret ? json_object_get_string(ret) : NULL;
	struct kerr err;

	if (error || (out && out[0] && strspn(out, "\r\n") != strlen(out))) {
		hmp_done_cb(q, ret, error, data);
		return;
	}
	if (instance_op_gone(op))
		return;
	/* A memory snapshot is taken of a running guest: reverting to it brings the guest
	 * back running, even if it was paused before the revert. */
	if (vm_qmp(op->vm, "cont", NULL, QMP_TIMEOUT_MS, loadvm_cont_cb, op, &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

/* The snapshot goes onto the disks, their dirty bitmaps gone: loadvm on the running VM
 * (with memory), else the VM stopped and qemu-img snapshot -a (a running one starts
 * again), or a start with -loadvm. */
static void revert_apply(struct inst_op *op)
{
	struct kerr err;

	if (vm_alive(op->vm) && op->with_memory) {
		hmp(op, "loadvm", loadvm_cb);
	} else if (vm_alive(op->vm)) {
		instance_op_progress(op, 20, "stopping qemu");
		vm_force_stop(op->vm, revert_stopped_cb, op);
	} else if (op->with_memory) {
		instance_op_progress(op, 50, "starting qemu from the snapshot");
		if (vm_start(op->vm, op->snapshot, instance_done_cb, op, &err) < 0)
			instance_op_fail(op, "%s", err.msg);
	} else {
		instance_op_progress(op, 50, "qemu-img snapshot -a");
		instance_disks_each(op, NULL, apply_one, instance_op_succeed);
	}
}

static void bitmap_remove_next(struct inst_op *op);

static void bitmap_qmp_removed_cb(struct qmp *q, struct json_object *ret, const char *error,
				  void *data)
{
	struct inst_op *op = data;
	struct json_object *e;

	if (instance_op_gone(op))
		return;
	if (error) {
		e = json_object_array_get_idx(op->bitmaps, op->bitmap_next - 1);
		instance_op_fail(op, "cannot remove backup bitmap %s from disk %s: %s",
				 json_get_str(e, "name", ""),
				 op->disks[json_get_int(e, "disk", 0)].name, error);
		return;
	}
	bitmap_remove_next(op);
}

static void bitmap_file_removed_cb(struct agent *a, const char *error, void *data)
{
	bitmap_qmp_removed_cb(NULL, NULL, error, data);
}

/* Remove the next of Kumo's bitmaps: through QMP from a running VM (QEMU drops a
 * persistent one from the file too), with qemu-img from a stopped one's file. */
static void bitmap_remove_next(struct inst_op *op)
{
	struct json_object *e = json_object_array_get_idx(op->bitmaps, op->bitmap_next);
	size_t disk;
	struct kerr err;

	if (e == NULL) {
		revert_apply(op);
		return;
	}
	op->bitmap_next++;
	disk = (size_t)json_get_int(e, "disk", 0);
	if (vm_alive(op->vm)) {
		struct json_object *args = json_object_new_object();
		char node[16];

		snprintf(node, sizeof(node), "d%zu", disk);
		json_object_object_add(args, "node", json_object_new_string(node));
		json_object_object_add(args, "name",
				       json_object_new_string(json_get_str(e, "name", "")));
		if (vm_qmp(op->vm, "block-dirty-bitmap-remove", args, QMP_TIMEOUT_MS,
			   bitmap_qmp_removed_cb, op, &err) < 0)
			instance_op_fail(op, "%s", err.msg);
		return;
	}
	disk_bitmap_remove(op->agent, op->disks[disk].abs, json_get_str(e, "name", ""),
			   bitmap_file_removed_cb, op);
}

static void revert_recorded_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "cannot record the revert for the next backup: %s", error);
		return;
	}
	instance_op_progress(op, 20, "removing backup bitmaps");
	op->bitmap_next = 0;
	bitmap_remove_next(op);
}

/*
 * QEMU reverts no disk that has a dirty bitmap. A bitmap Kumo did not make refuses the
 * revert here, before anything changed; Kumo's own go once the revert is recorded for
 * the next backup (recorded first: a revert cut short after a removal still makes the
 * next backup say why it is full).
 */
static void revert_bitmaps_clear(struct inst_op *op)
{
	struct json_object *foreign = snaprevert_foreign(op->bitmaps);
	_cleanup_free_ char *path = NULL, *text = NULL;

	if (foreign) {
		const char *name = json_get_str(foreign, "name", "");
		const char *disk = op->disks[json_get_int(foreign, "disk", 0)].name;

		if (name[0] == '\0')
			instance_op_fail(op,
					 "disk %s has an unnamed dirty bitmap (a block job of "
					 "QEMU's holds it): QEMU cannot revert a disk with a dirty "
					 "bitmap; nothing was changed",
					 disk);
		else if (snaprevert_name_printable(name))
			instance_op_fail(op,
					 "disk %s has dirty bitmap '%s', which Kumo did not "
					 "make: QEMU cannot revert a disk with a dirty bitmap; "
					 "remove it and revert again (nothing was changed)",
					 disk, name);
		else
			instance_op_fail(
				op,
				"disk %s has a dirty bitmap Kumo did not make (its name "
				"is not printable): QEMU cannot revert a disk with a dirty "
				"bitmap; remove it and revert again (nothing was changed)",
				disk);
		return;
	}
	path = xasprintf("%s/%s", op->vm->inst.dir, SNAPREVERT_RECORD);
	text = snaprevert_record_text(op->snapshot, now_ms());
	instance_op_progress(op, 15, "recording the revert for the next backup");
	disk_file_write(op->agent, path, text, revert_recorded_cb, op);
}

static void revert_nodes_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;
	struct kerr err;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "cannot list the disks' dirty bitmaps: %s", error);
		return;
	}
	json_object_put(op->bitmaps);
	op->bitmaps = json_object_new_array();
	if (snaprevert_bitmaps_from_nodes(ret, op->ndisks, op->bitmaps, &err) < 0) {
		instance_op_fail(op, "QEMU's query-named-block-nodes: %s", err.msg);
		return;
	}
	revert_bitmaps_clear(op);
}

static void snapshot_revert(struct inst_op *op)
{
	struct json_object *args;
	struct kerr err;

	for (size_t i = 0; i < op->ndisks; i++) {
		if (!op->has[i]) {
			instance_op_fail(op, "snapshot %s is not on disk %s", op->snapshot,
					 op->disks[i].name);
			return;
		}
	}
	if (op->with_memory && !op->has_memory) {
		instance_op_fail(op, "snapshot %s holds no memory state; revert without memory",
				 op->snapshot);
		return;
	}
	if (!vm_alive(op->vm)) {
		revert_bitmaps_clear(op); /* qemu-img info listed them (scan_info_cb) */
		return;
	}
	/* A running QEMU's bitmaps are in its memory (some only there): ask it. */
	args = json_object_new_object();
	json_object_object_add(args, "flat", json_object_new_boolean(true));
	instance_op_progress(op, 12, "listing dirty bitmaps");
	if (vm_qmp(op->vm, "query-named-block-nodes", args, QMP_TIMEOUT_MS, revert_nodes_cb, op,
		   &err) < 0)
		instance_op_fail(op, "%s", err.msg);
}

/*
 * snapshot-revert: back to args.snapshot; with_memory resumes the saved running state
 * (loadvm, or a start with -loadvm), without it the disks go back and a running VM
 * restarts on them.
 */
void vmaction_snapshot_revert(struct inst_op *op)
{
	snapshot_begin(op, snapshot_revert);
}

static void snapshot_drop(struct inst_op *op)
{
	bool any = false;

	for (size_t i = 0; i < op->ndisks; i++)
		any |= op->has[i];
	if (!any) {
		instance_op_fail(op, "there is no snapshot %s", op->snapshot);
		return;
	}
	if (vm_alive(op->vm)) {
		hmp(op, "delvm", hmp_done_cb);
		return;
	}
	instance_op_progress(op, 50, "qemu-img snapshot -d");
	instance_disks_each(op, want_has, delete_one, instance_op_succeed);
}

/*
 * snapshot-delete: drop args.snapshot from every disk holding it.
 */
void vmaction_snapshot_delete(struct inst_op *op)
{
	snapshot_begin(op, snapshot_drop);
}

static struct json_object *report(const struct inst *inst)
{
	return vm_report((const struct vm *)inst);
}

static void state_push(struct inst *inst)
{
	vm_state_push((struct vm *)inst);
}

/* The VM driver: a verb without a slot here is refused by the shared code. */
const struct driver vm_driver = {
	.type = INST_VM,
	.report = report,
	.refresh = NULL, /* QMP events keep the state current */
	.state_push = state_push,
	.forget = vm_forget,
	.alive = alive,
	.force_stop = force_stop,
	.delete_files = delete_files,
	.absent_report = absent_report,
	.cron = vm_cron,
	.subdir = "instances",
	.adopt_prepare = vm_adopt_prepare,
	.adopt_one = vm_adopt_one,
	.verbs =
		{
			[VERB_CREATE] = vmaction_create,
			[VERB_UPDATE] = vmaction_update,
			[VERB_START] = vmaction_start,
			[VERB_STOP] = vmaction_stop,
			[VERB_FORCE_STOP] = vmaction_force_stop,
			[VERB_REBOOT] = vmaction_reboot,
			[VERB_PAUSE] = vmaction_pause,
			[VERB_RESUME] = vmaction_resume,
			[VERB_DELETE] = instance_delete,
			[VERB_BALLOON] = vmaction_balloon,
			[VERB_SNAPSHOT_CREATE] = vmaction_snapshot_create,
			[VERB_SNAPSHOT_REVERT] = vmaction_snapshot_revert,
			[VERB_SNAPSHOT_DELETE] = vmaction_snapshot_delete,
			/* Stage 2: live migration (migrate.c), backups (backup.c). */
			[VERB_MIGRATE_OUT] = migrate_out,
			[VERB_MIGRATE_IN] = migrate_in,
			[VERB_BACKUP] = backup_vm_run,
			[VERB_RESTORE] = backup_vm_restore,
		},
	/* Their args are checked by the files that run them. */
	.args =
		{
			[VERB_MIGRATE_OUT] = migrate_out_args,
			[VERB_MIGRATE_IN] = migrate_in_args,
			[VERB_BACKUP] = backup_args,
			[VERB_RESTORE] = backup_args,
		},
	.cancel = job_undo, /* job.c: a cancel or deadline undoes what the op did */
};
