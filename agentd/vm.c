/*
 * vm.c - the VMs this agent runs: one qemu-system-x86_64 per guest and its state
 * (found again after an agent restart by vmadopt.c).
 *
 * Each VM has a run directory {local_pool}/instances/NAME/ holding
 *   spec.json    the normalised SPEC the controller sent (the instance exists once
 *                this is written)
 *   qemu.pid     written by QEMU (-pidfile) and removed by it on a clean exit, so a
 *                pid file whose process is gone means the VM crashed or was killed
 *   qmp.sock     the agent's QMP connection (QEMU serves one client at a time)
 *   qga.sock     the guest agent's virtio-serial port (qga.c), for fsfreeze in backups
 *   monitor.sock a second QMP monitor, never used by the agent: for operators and
 *                tests that want to look at a guest without disturbing the agent
 *   console.log  the guest's serial port (QEMU appends; past the agent's --log-size the
 *                cron trims it into console.log.1 .. (logfile.c), at start too)
 *   qemu.log     QEMU's own stdout and stderr: why a start failed
 *   seed.img     the cloud-init seed, when the spec has user data
 *
 * QEMU is spawned detached (its own session), so it outlives the agent: stopping or
 * restarting the agent never stops a guest. State comes from QMP: query-status once
 * connected, then events (STOP, RESUME, SHUTDOWN, RESET). A change that no command
 * caused is pushed to the controller as an instance-state message; changes during a
 * command travel in its op-done instead.
 *
 * Exit detection: for a QEMU this agent started, its pidfd reports the exit with its
 * status (common/proc.c). For one adopted at start-up (vmadopt.c; not our child), QMP's end of file
 * is the hint and kill(pid, 0) plus /proc/PID/stat (not a zombie) the proof.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "json.h"
#include "util.h"

/* A start's connect is made at the spawn and waits in the bound socket's backlog; this
 * retry is for one that failed meanwhile (QEMU held past the handshake deadline). */
#define QMP_RETRY_START_MS 10
#define QMP_RETRY_MS	   1000 /* an adopted QEMU whose QMP is busy or gone */
#define EXIT_POLL_MS	   100	/* after QMP's EOF, until the adopted process is gone */
#define ADOPT_REPORT_AFTER 3	/* QMP failures before the start-up report goes anyway */
#define MIB		   (1024LL * 1024)

struct measure {
	struct agent *agent;
	char name[NAME_MAX_LEN + 1];
	unsigned generation;
	inst_done_cb cb;
	void *data;
};

static void vm_exited(struct vm *vm, bool known, int64_t status, int term_signal);

/* The VM named name, created or being created, or NULL (also for a container). */
struct vm *vm_find(struct agent *a, const char *name)
{
	struct inst *inst = inst_find(a, name);

	return inst && inst->driver == &vm_driver ? (struct vm *)inst : NULL;
}

/* A process exists (starting, running, paused or stopping). */
bool vm_alive(const struct vm *vm)
{
	return vm->inst.pid != 0;
}

/* pid is there and not a zombie waiting for a parent that is not us. */
bool vm_pid_alive(pid_t pid)
{
	_cleanup_free_ char *path = xasprintf("/proc/%d/stat", (int)pid);
	_cleanup_free_ char *text = NULL;
	const char *paren;

	if (kill(pid, 0) < 0 && errno == ESRCH)
		return false;
	if (file_read_all(path, 4096, &text, NULL) < 0)
		return false;
	paren = strrchr(text, ')');
	return paren == NULL || paren[1] == '\0' || paren[2] != 'Z';
}

/*
 * Resolve the disks of spec (already checked) into disks[] with their pool roots and
 * absolute paths; *ndisks is their count. Returns 0 or -1 with err.
 */
int vm_disks_resolve(struct agent *a, struct json_object *spec, struct vm_disk *disks,
		     size_t *ndisks, struct kerr *err)
{
	struct json_object *arr;
	size_t n;

	*ndisks = 0;
	if (!json_object_object_get_ex(spec, "disks", &arr))
		return 0;
	n = json_array_len(arr);
	if (n > AGENT_VM_DISKS_MAX)
		return err_set(err, 0, "more than %d disks", AGENT_VM_DISKS_MAX);
	for (size_t i = 0; i < n; i++) {
		struct json_object *d = json_object_array_get_idx(arr, i);
		struct vm_disk *vd = &disks[i];
		const char *root = disk_pool_root(a->cfg, json_get_str(d, "pool", ""));
		int len;

		memset(vd, 0, sizeof(*vd));
		if (root == NULL)
			return err_set(err, 0, "disk %s: unknown pool",
				       json_get_str(d, "name", ""));
		snprintf(vd->name, sizeof(vd->name), "%s", json_get_str(d, "name", ""));
		snprintf(vd->path, sizeof(vd->path), "%s", json_get_str(d, "path", ""));
		vd->root = root;
		len = snprintf(vd->abs, sizeof(vd->abs), "%s/%s", root, vd->path);
		if (len < 0 || (size_t)len >= sizeof(vd->abs))
			return err_set(err, 0, "disk %s: path too long", vd->name);
		vd->virtual_size = vd->allocated = -1;
	}
	*ndisks = n;
	return 0;
}

/*
 * Replace vm's spec (a checked, normalised SPEC; the vm takes a reference) and the
 * disks derived from it. Returns 0 or -1 with err (nothing changed then).
 */
int vm_spec_set(struct vm *vm, struct json_object *spec, struct kerr *err)
{
	struct vm_disk disks[AGENT_VM_DISKS_MAX];
	size_t n;

	if (vm_disks_resolve(vm->inst.agent, spec, disks, &n, err) < 0)
		return -1;
	/* Sizes already measured stay for disks that are still there. */
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < vm->ndisks; j++) {
			if (strcmp(disks[i].abs, vm->disks[j].abs) == 0) {
				disks[i].virtual_size = vm->disks[j].virtual_size;
				disks[i].allocated = vm->disks[j].allocated;
			}
		}
	}
	memcpy(vm->disks, disks, n * sizeof(*disks));
	vm->ndisks = n;
	vm->generation++;
	json_object_put(vm->inst.spec);
	vm->inst.spec = json_object_get(spec);
	return 0;
}

/*
 * Register a VM for spec (checked and normalised; the vm takes a reference): stopped,
 * not yet created. Returns it, or NULL with err when its run directory cannot hold
 * unix sockets (too long a path).
 */
struct vm *vm_register(struct agent *a, struct json_object *spec, struct kerr *err)
{
	struct sockaddr_un sun;
	struct vm *vm = xcalloc(1, sizeof(*vm));
	int len;

	vm->inst.agent = a;
	len = snprintf(vm->inst.dir, sizeof(vm->inst.dir), "%s/instances/%s", a->cfg->local_pool,
		       json_get_str(spec, "name", ""));
	if (len < 0 || (size_t)len + sizeof("/monitor.sock") > sizeof(sun.sun_path)) {
		free(vm);
		err_set(err, 0,
			"the run directory %s/instances/%s is too long for QEMU's sockets; use a "
			"shorter --local-pool",
			a->cfg->local_pool, json_get_str(spec, "name", ""));
		return NULL;
	}
	if (vm_spec_set(vm, spec, err) < 0) {
		free(vm);
		return NULL;
	}
	vm->balloon_actual_mb = vm->balloon_target_mb = -1;
	inst_register(&vm->inst, a, &vm_driver, spec);
	return vm;
}

/*
 * The driver's part of inst_remove(): close QMP. A running QEMU is left running.
 */
void vm_forget(struct inst *inst)
{
	struct vm *vm = (struct vm *)inst;

	if (vm->qmp) {
		qmp_close(vm->qmp);
		vm->qmp = NULL;
	}
}

/* Forget vm (inst_remove()): its handles close and it is freed once they did. */
void vm_remove(struct vm *vm)
{
	inst_remove(&vm->inst);
}

/* ---- reports -------------------------------------------------------------------------- */

/*
 * The REPORT of vm the controller keeps: name, type, state, pid, started_at (ms),
 * uptime_s, accel, balloon_actual_mb, disks with sizes, and error when it crashed or
 * failed. Returns a new object.
 */
struct json_object *vm_report(const struct vm *vm)
{
	struct json_object *r = inst_report_base(&vm->inst), *disks = json_object_new_array();
	bool alive = vm_alive(vm);

	json_object_object_add(r, "accel",
			       json_object_new_string(json_get_str(vm->inst.spec, "accel", "tcg")));
	json_object_object_add(r, "balloon_actual_mb",
			       alive ? inst_int_or_null(vm->balloon_actual_mb) : NULL);
	json_object_object_add(r, "balloon_target_mb",
			       alive ? inst_int_or_null(vm->balloon_target_mb) : NULL);
	for (size_t i = 0; i < vm->ndisks; i++) {
		struct json_object *d = json_object_new_object();

		json_object_object_add(d, "name", json_object_new_string(vm->disks[i].name));
		json_object_object_add(d, "path", json_object_new_string(vm->disks[i].path));
		json_object_object_add(d, "virtual_size",
				       inst_int_or_null(vm->disks[i].virtual_size));
		json_object_object_add(d, "allocated", inst_int_or_null(vm->disks[i].allocated));
		json_object_array_add(disks, d);
	}
	json_object_object_add(r, "disks", disks);
	if (vm->inst.state == INST_CRASHED || vm->inst.state == INST_ERROR)
		json_object_object_add(r, "error", json_object_new_string(vm->inst.error));
	return r;
}

/* Send vm's report to the controller as an instance-state message. */
void vm_state_push(struct vm *vm)
{
	if (!vm->inst.created || vm->inst.agent->stopping)
		return;
	log_info("vm %s: %s", vm->inst.name, inst_state_name(vm->inst.state));
	link_event_send(vm->inst.agent, LINK_INSTANCE_STATE, NULL, vm_report(vm));
}

/*
 * Set vm's state. A change no command is working on is pushed to the controller at
 * once; during a command its op-done carries the state.
 */
void vm_state_set(struct vm *vm, enum inst_state state)
{
	if (vm->inst.state == state)
		return;
	vm->inst.state = state;
	if (state != INST_CRASHED && state != INST_ERROR)
		vm->inst.error[0] = '\0';
	if (state == INST_RUNNING)
		migrate_in_running(vm); /* a migrated guest runs: the target's part is over */
	if (vm->inst.op == NULL)
		vm_state_push(vm);
	else
		log_debug("vm %s: %s", vm->inst.name, inst_state_name(state));
}

/* A stopped VM forgets that it crashed: a stop or start after a crash clears it. */
void vm_stopped_set(struct vm *vm)
{
	_cleanup_free_ char *pidfile = xasprintf("%s/qemu.pid", vm->inst.dir);

	/* A crash leaves QEMU's pid file behind; it is what marks the crash. */
	unlink(pidfile);
	vm_state_set(vm, INST_STOPPED);
}

static void measured_cb(struct agent *a, const int64_t *vsize, const int64_t *alloc, void *data)
{
	struct measure *m = data;
	struct vm *vm = a->stopping ? NULL : vm_find(a, m->name);

	if (vm && vm->generation == m->generation) {
		for (size_t i = 0; i < vm->ndisks; i++) {
			vm->disks[i].virtual_size = vsize[i];
			vm->disks[i].allocated = alloc[i];
		}
	}
	if (m->cb)
		m->cb((struct inst *)vm, NULL, m->data);
	free(m);
}

/*
 * Refresh the disk sizes of vm off the loop, then call cb (may be NULL) with vm, or
 * with NULL if the vm went away meanwhile.
 */
void vm_measure(struct vm *vm, inst_done_cb cb, void *data)
{
	struct measure *m = xcalloc(1, sizeof(*m));

	m->agent = vm->inst.agent;
	snprintf(m->name, sizeof(m->name), "%s", vm->inst.name);
	m->generation = vm->generation;
	m->cb = cb;
	m->data = data;
	disk_sizes(vm->inst.agent, vm->disks, vm->ndisks, measured_cb, m);
}

/* ---- QMP ------------------------------------------------------------------------------ */

/* Send a QMP command to vm's QEMU; see qmp_cmd_send(). */
int vm_qmp(struct vm *vm, const char *cmd, struct json_object *args, unsigned timeout_ms,
	   qmp_reply_cb cb, void *data, struct kerr *err)
{
	if (!qmp_ready(vm->qmp)) {
		json_object_put(args);
		return err_set(err, 0, "vm %s: QEMU's QMP connection is not ready", vm->inst.name);
	}
	return qmp_cmd_send(vm->qmp, cmd, args, timeout_ms, cb, data, err);
}

static enum inst_state status_state(const char *status)
{
	if (strcmp(status, "running") == 0)
		return INST_RUNNING;
	if (strcmp(status, "shutdown") == 0)
		return INST_STOPPING;
	/* paused, prelaunch, suspended, io-error, internal-error, ...: vCPUs not running. */
	return INST_PAUSED;
}

static void balloon_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct vm *vm = data;

	if (vm->inst.removing || ret == NULL)
		return;
	vm->balloon_actual_mb = json_get_int(ret, "actual", -MIB) / MIB;
}

/*
 * QEMU runs with -no-shutdown: a guest that powers off (or panics) leaves QEMU paused
 * in "shutdown" rather than gone, so an agent that was away finds out how it ended
 * (QEMU, no longer root, cannot remove its pid file, which marked a clean exit).
 * Here, or when found so at adoption, the agent ends it with quit.
 */
static void shutdown_finish(struct vm *vm, const char *reason)
{
	if (strcmp(reason, "host-qmp-quit") == 0 || strcmp(reason, "host-signal") == 0)
		return; /* QEMU exits by itself */
	if (vm_qmp(vm, "quit", NULL, 0, NULL, NULL, NULL) < 0)
		log_warnx("vm %s: cannot ask QEMU to quit after the guest's shutdown",
			  vm->inst.name);
}

static void status_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct vm *vm = data;

	if (vm->inst.removing || !vm_alive(vm))
		return;
	if (ret == NULL) {
		log_warnx("vm %s: query-status: %s", vm->inst.name, error);
		return;
	}
	if (vm->inst.start_cb) {
		/* The start settled: the op-done reports the state, nothing is pushed. */
		uv_timer_stop(&vm->inst.timer);
		vm->inst.state = status_state(json_get_str(ret, "status", ""));
		log_info("vm %s: QEMU pid %d is %s", vm->inst.name, (int)vm->inst.pid,
			 inst_state_name(vm->inst.state));
		inst_start_settle(&vm->inst, NULL);
		return;
	}
	if (!vm->adopt_reported) {
		const char *status = json_get_str(ret, "status", "");

		/* Found at start-up: one report, whatever the state. */
		vm->adopt_reported = true;
		vm->inst.state = status_state(status);
		log_info("vm %s: adopted QEMU pid %d (%s)", vm->inst.name, (int)vm->inst.pid,
			 status);
		/* A migration the last agent left half done (migrate.c). */
		if (migrate_adopted(vm, status))
			return;
		migrate_creds_adopted(vm);
		/* A backup's freeze the last agent may have left (backup.c). */
		if (strcmp(status, "running") == 0)
			backup_vm_adopted(vm);
		/* ... its fleecing filter and export (backup_fleece.c), and its QEMU jobs. */
		backup_fleece_adopted(vm);
		backup_jobs_adopted(vm);
		/* The guest powered off (or panicked) while the agent was away. */
		if (strcmp(status, "shutdown") == 0 || strcmp(status, "guest-panicked") == 0) {
			snprintf(vm->shutdown_reason, sizeof(vm->shutdown_reason), "%s",
				 status[0] == 's' ? "guest-shutdown" : "guest-panic");
			vm->inst.state = INST_STOPPING;
			shutdown_finish(vm, vm->shutdown_reason);
		}
		if (vm->inst.op == NULL)
			vm_state_push(vm);
		return;
	}
	if (vm->inst.state != INST_STOPPING)
		vm_state_set(vm, status_state(json_get_str(ret, "status", "")));
}

static void qmp_ready_cb(struct qmp *q, void *data)
{
	struct vm *vm = data;

	vm->qmp_failures = 0;
	backup_nodes_reset(vm); /* a QEMU (or a connection) this agent knows nothing of */
	/* QEMU answers in order: the balloon is known by the time the status settles. */
	vm_qmp(vm, "query-balloon", NULL, 10000, balloon_cb, vm, NULL);
	vm_qmp(vm, "query-status", NULL, 10000, status_cb, vm, NULL);
}

static void qmp_event_cb(struct qmp *q, const char *name, struct json_object *event_data,
			 void *data)
{
	struct vm *vm = data;

	if (strcmp(name, "STOP") == 0) {
		if (vm->inst.state == INST_RUNNING)
			vm_state_set(vm, INST_PAUSED);
	} else if (strcmp(name, "RESUME") == 0) {
		vm->vm_resumes++; /* a cont's answer that came after it needs no query */
		if (vm->inst.state == INST_PAUSED)
			vm_state_set(vm, INST_RUNNING);
		vmaction_resume_wake(vm); /* QEMU started a migrated guest at its load's end */
	} else if (strcmp(name, "SHUTDOWN") == 0) {
		const char *reason = json_get_str(event_data, "reason", "unknown");

		/* Our own quit after a guest's power-off keeps the first reason. */
		if (!vm->shutdown_reason[0] || strcmp(reason, "host-qmp-quit") != 0)
			snprintf(vm->shutdown_reason, sizeof(vm->shutdown_reason), "%s", reason);
		log_info("vm %s: QEMU shutting down (%s)", vm->inst.name, reason);
		vm_state_set(vm, INST_STOPPING);
		shutdown_finish(vm, reason);
	} else if (strcmp(name, "RESET") == 0) {
		log_info("vm %s: reset (%s)", vm->inst.name,
			 json_get_bool(event_data, "guest", false) ? "by the guest"
								   : "by the host");
		/* The state stays; the controller still hears of a reboot it did not ask for. */
		if (vm->inst.op == NULL && !vm->reset_expected)
			vm_state_push(vm);
		vm->reset_expected = false;
	} else if (strcmp(name, "MIGRATION") == 0) {
		/* A migrate-out asks QEMU for these (capability "events"); a target's QEMU
		 * has them from its command line (qemuargs.c): its load ended. */
		const char *status = json_get_str(event_data, "status", "");

		if (vm->vm_migrating_in && strcmp(status, "completed") == 0)
			vm->vm_in_loaded = true;
		/* A resume waiting for the load goes on ("failed": QEMU ends, it fails). */
		if (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0)
			vmaction_resume_wake(vm);
		migrate_out_event(vm, status);
	} else if (strcmp(name, "JOB_STATUS_CHANGE") == 0) {
		/* A backup's copy job that ended is read at once (backup.c). */
		backup_vm_job_event(vm, json_get_str(event_data, "id", ""),
				    json_get_str(event_data, "status", ""));
	} else if (strcmp(name, "BALLOON_CHANGE") == 0) {
		vm->balloon_actual_mb = json_get_int(event_data, "actual", -MIB) / MIB;
	} else if (strcmp(name, "GUEST_PANICKED") == 0) {
		log_warnx("vm %s: the guest panicked", vm->inst.name);
		snprintf(vm->shutdown_reason, sizeof(vm->shutdown_reason), "guest-panic");
	} else {
		log_debug("vm %s: QMP event %s", vm->inst.name, name);
	}
}

static void poll_cb(uv_timer_t *timer);

static void qmp_closed_cb(struct qmp *q, int status, const char *why, void *data)
{
	struct vm *vm = data;

	if (vm->qmp == q)
		vm->qmp = NULL;
	if (vm->inst.removing || status == UV_ECANCELED || !vm_alive(vm)) {
		inst_unref(&vm->inst);
		return;
	}
	inst_unref(&vm->inst);
	vm->qmp_failures++;
	if (vm->qmp_failures == 1 || vm->qmp_failures % 60 == 0)
		log_debug("vm %s: QMP: %s", vm->inst.name, why);
	if (!vm->adopt_reported && vm->qmp_failures == ADOPT_REPORT_AFTER) {
		/* QMP is busy or broken; say what is known rather than nothing. */
		log_warnx("vm %s: QEMU pid %d runs but its QMP does not answer (%s)", vm->inst.name,
			  (int)vm->inst.pid, why);
		vm->adopt_reported = true;
		vm_state_push(vm);
	}
	/*
	 * Our child's exit comes from libuv; an adopted QEMU's is found by polling right
	 * after QMP went away. Either way QMP is reconnected while the process lives.
	 */
	uv_timer_start(&vm->inst.poll_timer, poll_cb,
		       vm->inst.start_cb       ? QMP_RETRY_START_MS
		       : vm->qmp_failures <= 1 ? EXIT_POLL_MS
					       : QMP_RETRY_MS,
		       0);
}

static const struct qmp_ops vm_qmp_ops = {
	.ready = qmp_ready_cb,
	.event = qmp_event_cb,
	.closed = qmp_closed_cb,
};

/* Connect vm's QMP socket (retried by vm.c while the process lives). */
void vm_qmp_connect(struct vm *vm)
{
	_cleanup_free_ char *path = xasprintf("%s/qmp.sock", vm->inst.dir);

	if (vm->qmp || vm->inst.removing)
		return;
	vm->inst.open_handles++;
	vm->qmp = qmp_open(vm->inst.agent->loop, path, &vm_qmp_ops, vm);
}

static void poll_cb(uv_timer_t *timer)
{
	struct vm *vm = timer->data;

	if (!vm_alive(vm))
		return;
	if (vm->inst.child == NULL && !vm_pid_alive(vm->inst.pid)) {
		vm_exited(vm, false, 0, 0);
		return;
	}
	vm_qmp_connect(vm);
}

/* ---- process ------------------------------------------------------------------------- */

/* The last line QEMU wrote to qemu.log since the start marker: its reason to exit. */
static void log_reason(const struct vm *vm, char *out, size_t outlen)
{
	_cleanup_free_ char *path = xasprintf("%s/qemu.log", vm->inst.dir);
	char buf[2048], *line, *p;

	out[0] = '\0';
	if ((line = inst_log_last_line(path, buf, sizeof(buf))) == NULL)
		return;
	if (strncmp(line, "-- ", 3) == 0)
		return;
	/* "<timestamp> qemu-system-x86_64: -blockdev {...}: Could not open ...": the end. */
	if ((p = strstr(line, AGENT_QEMU_BINARY ": ")))
		line = p + strlen(AGENT_QEMU_BINARY ": ");
	if (strncmp(line, "-blockdev {", 11) == 0 && (p = strstr(line, "}: ")))
		line = p + 3;
	snprintf(out, outlen, "%s", line);
}

static void vm_exited(struct vm *vm, bool known, int64_t status, int term_signal)
{
	_cleanup_free_ char *pidfile = xasprintf("%s/qemu.pid", vm->inst.dir);
	enum inst_state was = vm->inst.state, state = INST_STOPPED;
	pid_t pid = vm->inst.pid;
	char reason[200], why[256] = "";
	struct stat st;

	if (pid == 0)
		return;
	vm->inst.pid = 0;
	vm->balloon_actual_mb = -1;
	vm_balloon_target_set(vm, -1); /* the next QEMU starts at max_mb */
	uv_timer_stop(&vm->inst.timer);
	uv_timer_stop(&vm->inst.poll_timer);
	if (vm->qmp) {
		qmp_close(vm->qmp);
		vm->qmp = NULL;
	}
	log_reason(vm, reason, sizeof(reason));
	if (vm->inst.start_cb || was == INST_STARTING) {
		state = INST_ERROR;
		if (vm->inst.error[0])
			snprintf(why, sizeof(why), "%s", vm->inst.error);
		else if (term_signal)
			snprintf(why, sizeof(why), "QEMU was killed by signal %d while starting",
				 term_signal);
		else
			snprintf(why, sizeof(why), "QEMU exited while starting: %s",
				 reason[0] ? reason : "no reason in qemu.log");
	} else if (vm->inst.stop_requested) {
		state = INST_STOPPED;
	} else if (strcmp(vm->shutdown_reason, "host-signal") == 0) {
		state = INST_CRASHED;
		snprintf(why, sizeof(why), "QEMU was stopped by a signal from outside Kumo");
	} else if (strcmp(vm->shutdown_reason, "guest-panic") == 0) {
		state = INST_CRASHED;
		snprintf(why, sizeof(why), "the guest panicked");
	} else if (vm->shutdown_reason[0]) {
		state = INST_STOPPED; /* the guest powered off, or a monitor client quit */
	} else if (known && term_signal) {
		state = INST_CRASHED;
		snprintf(why, sizeof(why), "QEMU (pid %d) was killed by signal %d (%s)", (int)pid,
			 term_signal, strsignal(term_signal));
	} else if (known && status != 0) {
		state = INST_CRASHED;
		snprintf(why, sizeof(why), "QEMU exited with status %lld: %s", (long long)status,
			 reason[0] ? reason : "no reason in qemu.log");
	} else if (!known && stat(pidfile, &st) == 0) {
		/* QEMU removes its pid file on every clean exit. */
		state = INST_CRASHED;
		snprintf(why, sizeof(why), "QEMU (pid %d) ended without a clean shutdown",
			 (int)pid);
	}
	if (state == INST_STOPPED)
		unlink(pidfile);
	/* isolation: QEMU's uid and cgroup are given back (uid.c, vmcgroup.c). */
	uid_vm_release(vm);
	vmcgroup_remove(vm);
	if (why[0])
		log_warnx("vm %s: %s", vm->inst.name, why);
	else
		log_info("vm %s: QEMU pid %d is gone", vm->inst.name, (int)pid);
	vm->inst.state = state;
	snprintf(vm->inst.error, sizeof(vm->inst.error), "%s", why);
	if (vm->inst.op == NULL)
		vm_state_push(vm);

	inst_start_settle(&vm->inst, why);
	inst_exit_waiters_call(&vm->inst, NULL);
}

static void qemu_exit_fn(struct inst *inst, int64_t exit_status, int term_signal)
{
	vm_exited((struct vm *)inst, true, exit_status, term_signal);
}

static void start_deadline_cb(uv_timer_t *timer)
{
	struct vm *vm = timer->data;
	char why[128];

	if (!inst_start_overdue(&vm->inst, "QEMU did not answer on QMP", AGENT_VM_START_TIMEOUT_MS,
				why, sizeof(why)))
		return;
	vm->inst.stop_requested = true;
	kill(vm->inst.pid, SIGKILL);
	snprintf(vm->inst.error, sizeof(vm->inst.error), "%s", why);
	inst_start_settle(&vm->inst, why);
}

/* Open qemu.log for QEMU's output, with a marker line before this start's output. */
static int qemu_log_open(struct vm *vm, struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/qemu.log", vm->inst.dir);
	_cleanup_free_ char *line = NULL;
	char when[64];
	time_t now = time(NULL);
	struct tm tm;
	int fd;

	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(err, errno, "vm %s: cannot open %s", vm->inst.name, path);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S%z", localtime_r(&now, &tm));
	line = xasprintf("-- %s: kumo-agentd starts QEMU at %s\n", vm->inst.name, when);
	if (write(fd, line, strlen(line)) < 0)
		log_warn("vm %s: cannot write %s", vm->inst.name, path);
	return fd;
}

/*
 * Remember the balloon target set in the running QEMU (target_mb, or -1: none, QEMU
 * at its start size), in vm and in {dir}/balloon_target for the agent's next run.
 * Without fsyncs (this runs on the loop): the file is read only when a later run of
 * the agent adopts this QEMU, which a power cut ends too, and the next QEMU starts
 * without a target (vm_spawn() removes the file).
 */
void vm_balloon_target_set(struct vm *vm, int64_t target_mb)
{
	_cleanup_free_ char *path = xasprintf("%s/balloon_target", vm->inst.dir);
	char text[32];
	int ret;

	vm->balloon_target_mb = target_mb < 0 ? -1 : target_mb;
	if (target_mb < 0) {
		unlink(path);
		return;
	}
	snprintf(text, sizeof(text), "%lld\n", (long long)target_mb);
	ret = file_write_replace(path, text, strlen(text), 0600);
	if (ret < 0)
		log_warnx("vm %s: cannot write %s: %s", vm->inst.name, path, strerror(-ret));
}

/* At adoption of a running QEMU: the balloon target a previous run of the agent set. */
void vm_balloon_target_load(struct vm *vm)
{
	_cleanup_free_ char *path = xasprintf("%s/balloon_target", vm->inst.dir), *text = NULL;

	if (file_read_all(path, 64, &text, NULL) == 0 && strtoll(text, NULL, 10) > 0)
		vm->balloon_target_mb = strtoll(text, NULL, 10);
}

/* Keep the serial log within the agent's cap (logfile_trim()). */
static void console_trim(struct vm *vm, const char *path)
{
	const struct agent_config *cfg = vm->inst.agent->cfg;

	if (logfile_trim(path, (int64_t)cfg->log_size_mib << 20, cfg->log_files) < 0)
		log_warn("vm %s: cannot trim %s", vm->inst.name, path);
}

/*
 * vm's QMP socket, bound and listening at {run dir}/qmp.sock, for QEMU to serve as fd
 * AGENT_QMP_FD. The agent's connection, started right after the spawn, waits in the
 * backlog until QEMU greets: no polling for the socket while QEMU starts. Returns the
 * fd, or -1 with err.
 */
static int qmp_listen(struct vm *vm, struct kerr *err)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd, len;

	len = snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/qmp.sock", vm->inst.dir);
	if (len < 0 || (size_t)len >= sizeof(sun.sun_path))
		return err_set(err, 0, "vm %s: the path of its QMP socket is too long",
			       vm->inst.name);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return err_set(err, errno, "vm %s: socket", vm->inst.name);
	if ((unlink(sun.sun_path) < 0 && errno != ENOENT) ||
	    bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 4) < 0) {
		err_set(err, errno, "vm %s: cannot listen at %s", vm->inst.name, sun.sun_path);
		close(fd);
		return -1;
	}
	return fd;
}

/* Spawn QEMU for vm, its disks checked (vm_start()). */
static int vm_spawn(struct vm *vm, const char *loadvm, inst_done_cb cb, void *data,
		    struct kerr *err)
{
	_cleanup_free_ char *console = xasprintf("%s/console.log", vm->inst.dir);
	_cleanup_free_ char *pidfile = xasprintf("%s/qemu.pid", vm->inst.dir);
	uv_stdio_container_t stdio[AGENT_QMP_FD + 1];
	uv_process_options_t opts = {0};
	struct argv av = {0};
	int fd, qmp_fd, ret;

	if (vm_alive(vm))
		return err_set(err, 0, "vm %s: QEMU runs already (pid %d)", vm->inst.name,
			       (int)vm->inst.pid);
	if (netport_vm_prepare(json_object_object_get(vm->inst.spec, "nics"), err) < 0)
		return err_prefix(err, "network: ");
	/* isolation: QEMU's own uid (uid.c), claimed before its -runas is written. */
	if (uid_vm_claim(vm, err) < 0)
		return -1;
	if (qemu_args_build(vm, loadvm, &av, err) < 0) {
		argv_free(&av);
		return -1;
	}
	fd = qemu_log_open(vm, err);
	if (fd < 0) {
		argv_free(&av);
		return -1;
	}
	qmp_fd = qmp_listen(vm, err);
	if (qmp_fd < 0) {
		close(fd);
		argv_free(&av);
		return -1;
	}
	console_trim(vm, console);
	unlink(pidfile);
	vm_balloon_target_set(vm, -1); /* left by a QEMU that ended while the agent was away */

	stdio[0].flags = UV_IGNORE;
	stdio[1].flags = stdio[2].flags = stdio[AGENT_QMP_FD].flags = UV_INHERIT_FD;
	stdio[1].data.fd = stdio[2].data.fd = fd;
	stdio[AGENT_QMP_FD].data.fd = qmp_fd;
	opts.file = AGENT_QEMU_BINARY;
	opts.args = av.v;
	opts.cwd = vm->inst.dir;
	opts.stdio = stdio;
	opts.stdio_count = AGENT_QMP_FD + 1;
	/*
	 * Detached: its own session, so the guest outlives the agent and a signal to the
	 * agent's process group never reaches it. QEMU runs as the agent's user, root in
	 * the lab: it opens /dev/kvm (kvm accel) and disk files in pools owned by root.
	 */
	opts.flags = UV_PROCESS_DETACHED;
	ret = inst_child_spawn(&vm->inst, &opts, qemu_exit_fn);
	close(fd);
	close(qmp_fd); /* QEMU's now: a QEMU that ends closes the agent's connection */
	argv_free(&av);
	if (ret < 0)
		return err_set(err, -ret, "vm %s: cannot run %s", vm->inst.name, AGENT_QEMU_BINARY);
	vm->inst.pid = ret;
	vm->inst.started_at_ms = now_ms();
	vm->inst.stop_requested = vm->inst.stop_forced = false;
	vm->shutdown_reason[0] = '\0';
	vm->inst.error[0] = '\0';
	vm->vm_in_loaded = false; /* a new QEMU: an incoming one loads from now */
	vm->qmp_failures = 0;
	vm->adopt_reported = true;
	vm->inst.start_cb = cb;
	vm->inst.start_data = data;
	/* isolation: QEMU runs in its own cgroup with the VM's limits, or not at all. */
	if (vmcgroup_enter(vm, vm->inst.pid, err) < 0) {
		snprintf(vm->inst.error, sizeof(vm->inst.error), "%s", err->msg);
		kill(vm->inst.pid, SIGKILL);
	}
	log_info("vm %s: QEMU started, pid %d%s%s", vm->inst.name, (int)vm->inst.pid,
		 loadvm ? ", resuming snapshot " : "", loadvm ? loadvm : "");
	vm_state_set(vm, INST_STARTING);
	uv_timer_start(&vm->inst.timer, start_deadline_cb, AGENT_VM_START_TIMEOUT_MS, 0);
	vm_qmp_connect(vm); /* waits in the socket's backlog until QEMU greets */
	return 0;
}

/* A start waiting for its disks' check (imagecheck_vm()). */
struct start_wait {
	struct vm *vm;
	char *loadvm;
	inst_done_cb cb;
	void *data;
};

static void start_checked_cb(struct agent *a, const char *error, void *data)
{
	struct start_wait *w = data;
	struct kerr err;

	(void)a;
	if (error) {
		w->cb(&w->vm->inst, error, w->data);
	} else if (vm_alive(w->vm)) {
		w->cb(&w->vm->inst, "QEMU runs already", w->data);
	} else if (vm_spawn(w->vm, w->loadvm, w->cb, w->data, &err) < 0) {
		w->cb(&w->vm->inst, err.msg, w->data);
	}
	free(w->loadvm);
	free(w);
}

/*
 * Start QEMU for vm (stopped, crashed or failed), resuming snapshot loadvm if not
 * NULL, once its disks and images passed imagecheck_vm() (a disk or image changed on
 * the shared pool behind the controller's back is refused: cb gets why). cb(vm, error, data)
 * follows once QMP answered query-status (error NULL; the state is then running or paused) or the
 * start failed. The small files in the run directory (local pool) are touched on the loop: a few
 * metadata operations on a local disk. Returns 0, or -1 with err when QEMU could not be spawned (cb
 * is then not called).
 */
int vm_start(struct vm *vm, const char *loadvm, inst_done_cb cb, void *data, struct kerr *err)
{
	struct start_wait *w;

	if (vm_alive(vm))
		return err_set(err, 0, "vm %s: QEMU runs already (pid %d)", vm->inst.name,
			       (int)vm->inst.pid);
	w = xcalloc(1, sizeof(*w));
	w->vm = vm;
	w->loadvm = loadvm ? xstrdup(loadvm) : NULL;
	w->cb = cb;
	w->data = data;
	imagecheck_vm(vm, start_checked_cb, w);
	return 0;
}

/*
 * Start QEMU for vm as vm_start() does, for a caller that ran imagecheck_vm() itself
 * and got no error (migrate-in runs it beside its other preparation). No loadvm.
 * Returns 0 (cb follows as for vm_start()), or -1 with err (cb is then not called).
 */
int vm_start_checked(struct vm *vm, inst_done_cb cb, void *data, struct kerr *err)
{
	return vm_spawn(vm, NULL, cb, data, err);
}

static void kill_cb(uv_timer_t *timer)
{
	struct vm *vm = timer->data;

	if (!vm_alive(vm))
		return;
	log_warnx("vm %s: QEMU pid %d still there %d ms after quit; SIGKILL", vm->inst.name,
		  (int)vm->inst.pid, AGENT_VM_KILL_AFTER_MS);
	kill(vm->inst.pid, SIGKILL);
	if (vm->inst.child == NULL)
		uv_timer_start(&vm->inst.poll_timer, poll_cb, EXIT_POLL_MS, 0);
}

/* QMP quit, then SIGKILL if QEMU lingers; at once SIGKILL without QMP. */
static void quit_or_kill(struct vm *vm)
{
	vm->inst.stop_forced = true;
	if (vm_qmp(vm, "quit", NULL, 0, NULL, NULL, NULL) == 0) {
		uv_timer_start(&vm->inst.timer, kill_cb, AGENT_VM_KILL_AFTER_MS, 0);
		return;
	}
	log_info("vm %s: no QMP; SIGKILL to QEMU pid %d", vm->inst.name, (int)vm->inst.pid);
	kill(vm->inst.pid, SIGKILL);
	if (vm->inst.child == NULL)
		uv_timer_start(&vm->inst.poll_timer, poll_cb, EXIT_POLL_MS, 0);
}

static void stop_timeout_cb(uv_timer_t *timer)
{
	struct vm *vm = timer->data;

	if (!vm_alive(vm))
		return;
	log_info("vm %s: the guest did not power off in time; forcing", vm->inst.name);
	quit_or_kill(vm);
}

/*
 * Stop vm's QEMU (which runs): an ACPI power button press (system_powerdown; a paused
 * guest is resumed first, as it could not react), then after timeout_s seconds QMP
 * quit, then SIGKILL. cb(vm, NULL, data) once the process is gone; vm->inst.stop_forced
 * says whether the guest had to be forced.
 */
void vm_shutdown(struct vm *vm, unsigned timeout_s, inst_done_cb cb, void *data)
{
	bool paused = vm->inst.state == INST_PAUSED;

	inst_exit_waiter_add(&vm->inst, cb, data);
	vm->inst.stop_requested = true;
	vm_state_set(vm, INST_STOPPING);
	if (timeout_s == 0 || !qmp_ready(vm->qmp)) {
		quit_or_kill(vm);
		return;
	}
	if (paused)
		vm_qmp(vm, "cont", NULL, 0, NULL, NULL, NULL);
	vm_qmp(vm, "system_powerdown", NULL, 0, NULL, NULL, NULL);
	uv_timer_start(&vm->inst.timer, stop_timeout_cb, (uint64_t)timeout_s * 1000, 0);
}

/*
 * Stop vm's QEMU (which runs) at once: QMP quit, SIGKILL if it lingers. Joins a
 * graceful stop in progress. cb(vm, NULL, data) once the process is gone.
 */
void vm_force_stop(struct vm *vm, inst_done_cb cb, void *data)
{
	inst_exit_waiter_add(&vm->inst, cb, data);
	vm->inst.stop_requested = true;
	vm_state_set(vm, INST_STOPPING);
	uv_timer_stop(&vm->inst.timer);
	quit_or_kill(vm);
}

/* ---- cron ------------------------------------------------------------------------------ */

/*
 * The vm driver's share of the agent's periodic duties (heartbeat timer): refresh disk
 * sizes for the next reports, notice an adopted QEMU that went away without QMP
 * saying so, trim serial logs past their cap (a guest printing without end fills
 * at most a heartbeat's worth past it), and end the dashboard relays (console watches,
 * VNC streams) whose controller stopped renewing them.
 */
void vm_cron(struct agent *a)
{
	console_watches_expire(a);
	vnc_streams_expire(a);
	for (struct inst *inst = a->insts, *next; inst; inst = next) {
		struct vm *vm = (struct vm *)inst;

		next = inst->next;
		if (inst->driver != &vm_driver || !inst->created)
			continue;
		if (vm->inst.op == NULL)
			vm_measure(vm, NULL, NULL);
		if (vm_alive(vm) && vm->inst.child == NULL && !vm_pid_alive(vm->inst.pid))
			vm_exited(vm, false, 0, 0);
		if (vm_alive(vm)) {
			_cleanup_free_ char *console = xasprintf("%s/console.log", vm->inst.dir);

			console_trim(vm, console);
		}
	}
}
