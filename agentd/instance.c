/*
 * instance.c - the controller's instance commands and queries.
 *
 * LINK_CMD_INSTANCE {action, instance: SPEC, args} is checked against tables before
 * it is acked (a malformed one is nacked and nothing runs), then runs as an operation
 * that reports op-progress and one op-done, like probe.c:
 *   succeeded  {"instance": REPORT, ...fields the action adds}
 *   failed     {"error": "<one sentence>"}; the instance's state is then pushed too.
 * One command works on a VM at a time; another one fails at once, except that a
 * force-stop may cut a graceful stop short (both then finish when QEMU is gone).
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
 * LINK_CMD_QUERY {what: "console", name, bytes} is answered in the ack itself.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "util.h"

#define STOP_TIMEOUT_MAX 3600
#define USER_DATA_MAX	 (1024 * 1024)
#define CONSOLE_DEFAULT	 (64 * 1024)

struct action {
	const char *name;
	const struct json_field *args;
	op_step_fn run;
	bool needs_vm;	/* the instance must exist here */
	bool full_spec; /* the SPEC is read beyond its name */
};

/* ---- validation ----------------------------------------------------------------------- */

static int one_of(struct json_object *val, const char *field, const char *const *allowed,
		  struct kerr *err)
{
	const char *s = json_object_get_string(val);

	for (size_t i = 0; allowed[i]; i++)
		if (strcmp(s, allowed[i]) == 0)
			return 0;
	return err_input(err, 400, field, "field '%s' has an unknown value '%.32s'", field, s);
}

static int type_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const types[] = {"vm", NULL};

	return one_of(val, field, types, err);
}

static int accel_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const accels[] = {"tcg", "kvm", NULL};

	return one_of(val, field, accels, err);
}

static int bus_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const buses[] = {"virtio", "scsi", "sata", "ide", NULL};

	return one_of(val, field, buses, err);
}

static int pool_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const pools[] = {"shared", "local", NULL};

	return one_of(val, field, pools, err);
}

static int clone_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const clones[] = {"linked", "full", NULL};

	return one_of(val, field, clones, err);
}

static int model_check(struct json_object *val, const char *field, struct kerr *err)
{
	static const char *const models[] = {"virtio", "e1000", NULL};

	return one_of(val, field, models, err);
}

static int range_check(struct json_object *val, const char *field, int64_t lo, int64_t hi,
		       struct kerr *err)
{
	int64_t v = json_object_get_int64(val);

	if (v < lo || v > hi)
		return err_input(err, 400, field, "field '%s' must be between %lld and %lld", field,
				 (long long)lo, (long long)hi);
	return 0;
}

static int vcpus_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 1, 1024, err);
}

static int mb_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 16, 16LL * 1024 * 1024, err);
}

static int size_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 1, 64LL * 1024 * 1024, err);
}

static int path_check(struct json_object *val, const char *field, struct kerr *err)
{
	return disk_path_check(json_object_get_string(val), field, err);
}

static int mac_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);
	unsigned b[6];
	char tail;

	if (strlen(s) != 17 ||
	    sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
		   &tail) != 6 ||
	    strspn(s, "0123456789abcdefABCDEF:") != 17)
		return err_input(err, 400, field, "field '%s' must be a MAC like 52:54:00:ab:cd:ef",
				 field);
	if (b[0] & 1)
		return err_input(err, 400, field, "field '%s' is a multicast MAC", field);
	return 0;
}

static int network_check(struct json_object *val, const char *field, struct kerr *err)
{
	return err_input(err, 400, field,
			 "virtual networks are not available on this agent yet; use network "
			 "null (isolated user networking)");
}

static int user_data_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_object_get_string_len(val) > USER_DATA_MAX)
		return err_input(err, 400, field, "field '%s' is larger than %d bytes", field,
				 USER_DATA_MAX);
	return 0;
}

static const struct json_field memory_fields[] = {
	{"mb", JK_INT, false, mb_check},
	{"min_mb", JK_INT, false, mb_check},
	{"max_mb", JK_INT, false, mb_check},
	{NULL, 0, false, NULL},
};

static int memory_check(struct json_object *val, const char *field, struct kerr *err)
{
	bool fixed = json_object_object_get_ex(val, "mb", NULL);
	bool min = json_object_object_get_ex(val, "min_mb", NULL);
	bool max = json_object_object_get_ex(val, "max_mb", NULL);

	if (json_fields_check(val, memory_fields, err) < 0)
		return agent_err_prefix(err, "memory: ");
	if (fixed == (min || max) || min != max)
		return err_input(err, 400, field,
				 "memory is either {\"mb\": N} or {\"min_mb\": A, \"max_mb\": B}");
	if (min && json_get_int(val, "min_mb", 0) > json_get_int(val, "max_mb", 0))
		return err_input(err, 400, field, "memory min_mb is larger than max_mb");
	return 0;
}

static const struct json_field image_fields[] = {
	{"path", JK_STRING, true, path_check},
	{"name", JK_STRING, false, NULL}, /* the controller's, for people */
	{NULL, 0, false, NULL},
};

static int image_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_fields_check(val, image_fields, err) < 0)
		return agent_err_prefix(err, "image: ");
	return 0;
}

static const struct json_field disk_fields[] = {
	{"name", JK_STRING, true, name_check},	  {"bus", JK_STRING, true, bus_check},
	{"pool", JK_STRING, true, pool_check},	  {"path", JK_STRING, true, path_check},
	{"size_mb", JK_INT, false, size_check},	  {"image", JK_OBJECT, false, image_check},
	{"clone", JK_STRING, false, clone_check}, {NULL, 0, false, NULL},
};

static const struct json_field nic_fields[] = {
	{"model", JK_STRING, true, model_check},
	{"mac", JK_STRING, true, mac_check},
	{"network", JK_STRING, false, network_check},
	{NULL, 0, false, NULL},
};

static const struct json_field cloud_init_fields[] = {
	{"user_data", JK_STRING, true, user_data_check},
	{NULL, 0, false, NULL},
};

/* Each element of an array is an object checked against fields, named in errors. */
static int array_check(struct json_object *arr, const char *what, const struct json_field *fields,
		       size_t max, struct kerr *err)
{
	size_t n = json_object_array_length(arr);
	char prefix[64];

	if (n > max)
		return err_input(err, 400, what, "more than %zu %s", max, what);
	for (size_t i = 0; i < n; i++) {
		struct json_object *el = json_object_array_get_idx(arr, i);

		snprintf(prefix, sizeof(prefix), "%s[%zu]: ", what, i);
		if (!json_object_is_type(el, json_type_object)) {
			err_input(err, 400, what, "each of %s must be an object", what);
			return agent_err_prefix(err, prefix);
		}
		if (json_fields_check(el, fields, err) < 0)
			return agent_err_prefix(err, prefix);
	}
	return 0;
}

static int disks_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t n = json_object_array_length(val);

	if (array_check(val, "disks", disk_fields, AGENT_VM_DISKS_MAX, err) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		struct json_object *d = json_object_array_get_idx(val, i);

		if (!json_object_object_get_ex(d, "image", NULL) &&
		    !json_object_object_get_ex(d, "size_mb", NULL))
			return err_input(err, 400, "size_mb",
					 "disk %s: size_mb is required without an image",
					 json_get_str(d, "name", ""));
		for (size_t j = 0; j < i; j++) {
			struct json_object *o = json_object_array_get_idx(val, j);

			if (strcmp(json_get_str(d, "name", ""), json_get_str(o, "name", "")) == 0)
				return err_input(err, 400, "disks", "two disks are named %s",
						 json_get_str(d, "name", ""));
			if (strcmp(json_get_str(d, "pool", ""), json_get_str(o, "pool", "")) == 0 &&
			    strcmp(json_get_str(d, "path", ""), json_get_str(o, "path", "")) == 0)
				return err_input(err, 400, "disks", "two disks use the file %s",
						 json_get_str(d, "path", ""));
		}
	}
	return 0;
}

static int nics_check(struct json_object *val, const char *field, struct kerr *err)
{
	return array_check(val, "nics", nic_fields, AGENT_VM_NICS_MAX, err);
}

static int boot_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t n = json_object_array_length(val);

	for (size_t i = 0; i < n; i++) {
		struct json_object *el = json_object_array_get_idx(val, i);
		const char *s = json_object_get_string(el);

		if (!json_object_is_type(el, json_type_string) ||
		    (strcmp(s, "disk") != 0 && strcmp(s, "network") != 0))
			return err_input(err, 400, field, "boot lists \"disk\" and \"network\"");
		for (size_t j = 0; j < i; j++)
			if (strcmp(s, json_object_get_string(json_object_array_get_idx(val, j))) ==
			    0)
				return err_input(err, 400, field, "boot lists %s twice", s);
	}
	return 0;
}

static int cloud_init_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_fields_check(val, cloud_init_fields, err) < 0)
		return agent_err_prefix(err, "cloud_init: ");
	return 0;
}

static const struct json_field spec_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"type", JK_STRING, true, type_check},
	{"vcpus", JK_INT, true, vcpus_check},
	{"memory", JK_OBJECT, true, memory_check},
	{"accel", JK_STRING, true, accel_check},
	{"nested", JK_BOOL, false, NULL},
	{"disks", JK_ARRAY, true, disks_check},
	{"nics", JK_ARRAY, false, nics_check},
	{"boot", JK_ARRAY, false, boot_check},
	{"cloud_init", JK_OBJECT, false, cloud_init_check},
	/* The controller's own: placement and grouping. Checked, kept, not used here. */
	{"labels", JK_OBJECT, false, labels_check},
	{"anti_affinity", JK_STRING, false, name_check},
	{"host", JK_STRING, false, name_check},
	{NULL, 0, false, NULL},
};

/* Drop members whose value is null, in obj and the objects and arrays inside it. */
static void nulls_strip(struct json_object *obj)
{
	if (json_object_is_type(obj, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(obj); i++)
			nulls_strip(json_object_array_get_idx(obj, i));
		return;
	}
	if (!json_object_is_type(obj, json_type_object))
		return;
	for (bool again = true; again;) {
		again = false;
		json_object_object_foreach(obj, key, val)
		{
			if (val == NULL) {
				json_object_object_del(obj, key);
				again = true; /* the iteration is void after a delete */
				break;
			}
			nulls_strip(val);
		}
	}
}

/*
 * A SPEC in the form the agent keeps: a deep copy with every null member dropped
 * (absent and null mean the same). Returns a new object.
 */
struct json_object *instance_spec_normalise(struct json_object *spec)
{
	struct json_object *copy = NULL;

	if (json_object_deep_copy(spec, &copy, NULL) < 0)
		fatalx("out of memory");
	nulls_strip(copy);
	return copy;
}

/*
 * Check a SPEC (as sent, nulls allowed where absent is) against the tables: every
 * field known and of its kind, names and paths of a safe shape, counts within
 * limits. Returns 0 or -1 with err naming the field.
 */
int instance_spec_check(struct json_object *spec, struct kerr *err)
{
	struct json_object *norm = instance_spec_normalise(spec);
	int ret = json_fields_check(norm, spec_fields, err);

	json_object_put(norm);
	return ret < 0 ? agent_err_prefix(err, "instance: ") : 0;
}

/* Snapshot names go to HMP's savevm: a plain word that cannot be taken for an id. */
static int snapshot_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);
	size_t len = strlen(s);

	if (len == 0 || len > NAME_MAX_LEN ||
	    strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != len ||
	    s[0] == '-' || s[0] == '.')
		return err_input(err, 400, field,
				 "snapshot names are 1-63 characters of A-Z, a-z, 0-9, '.', '_' "
				 "and '-', starting with a letter or digit");
	if (strspn(s, "0123456789") == len)
		return err_input(err, 400, field,
				 "a snapshot name of digits only would be taken for a snapshot id");
	return 0;
}

static int timeout_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 0, STOP_TIMEOUT_MAX, err);
}

static int target_check(struct json_object *val, const char *field, struct kerr *err)
{
	return range_check(val, field, 1, 16LL * 1024 * 1024, err);
}

static const struct json_field no_args[] = {
	{NULL, 0, false, NULL},
};
static const struct json_field create_args[] = {
	{"start", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};
static const struct json_field stop_args[] = {
	{"timeout_s", JK_INT, false, timeout_check},
	{NULL, 0, false, NULL},
};
static const struct json_field delete_args[] = {
	{"keep_disks", JK_BOOL, false, NULL},
	{"force", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};
/* The controller repeats the new SPEC here; "instance" is what counts. */
static const struct json_field update_args[] = {
	{"spec", JK_OBJECT, false, NULL},
	{NULL, 0, false, NULL},
};
static const struct json_field balloon_args[] = {
	{"target_mb", JK_INT, true, target_check},
	{NULL, 0, false, NULL},
};
static const struct json_field snapshot_args[] = {
	{"snapshot", JK_STRING, true, snapshot_check},
	{"with_memory", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};
static const struct json_field snapshot_delete_args[] = {
	{"snapshot", JK_STRING, true, snapshot_check},
	{NULL, 0, false, NULL},
};

static const struct action actions[] = {
	{"create", create_args, vmaction_create, false, true},
	{"start", no_args, vmaction_start, true, false},
	{"stop", stop_args, vmaction_stop, true, false},
	{"force-stop", no_args, vmaction_force_stop, true, false},
	{"reboot", no_args, vmaction_reboot, true, false},
	{"pause", no_args, vmaction_pause, true, false},
	{"resume", no_args, vmaction_resume, true, false},
	{"delete", delete_args, vmaction_delete, false, false},
	{"update", update_args, vmaction_update, true, true},
	{"balloon", balloon_args, vmaction_balloon, true, false},
	{"snapshot-create", snapshot_args, vmaction_snapshot_create, true, false},
	{"snapshot-revert", snapshot_args, vmaction_snapshot_revert, true, false},
	{"snapshot-delete", snapshot_delete_args, vmaction_snapshot_delete, true, false},
};

static const struct action *action_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
		if (strcmp(actions[i].name, name) == 0)
			return &actions[i];
	return NULL;
}

static int action_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (action_find(json_object_get_string(val)) == NULL)
		return err_input(err, 400, field, "unknown action '%.32s'",
				 json_object_get_string(val));
	return 0;
}

static const struct json_field body_fields[] = {
	{"action", JK_STRING, true, action_check},
	{"instance", JK_OBJECT, true, NULL},
	{"args", JK_OBJECT, false, NULL},
	{NULL, 0, false, NULL},
};

static int body_check(struct json_object *body, struct kerr *err)
{
	struct json_object *spec, *args = NULL, *name;
	const struct action *action;

	if (json_fields_check(body, body_fields, err) < 0)
		return -1;
	action = action_find(json_get_str(body, "action", ""));
	json_object_object_get_ex(body, "instance", &spec);
	if (action->full_spec && instance_spec_check(spec, err) < 0)
		return -1;
	if (!json_object_object_get_ex(spec, "name", &name) ||
	    !json_object_is_type(name, json_type_string))
		return err_input(err, 400, "name", "instance: field 'name' is required");
	if (name_check(name, "name", err) < 0)
		return agent_err_prefix(err, "instance: ");
	if (json_object_object_get_ex(body, "args", &args) &&
	    json_fields_check(args, action->args, err) < 0)
		return agent_err_prefix(err, "args: ");
	return 0;
}

/*
 * Check an instance command's body before it is acked: the action is known, its args
 * match the action's table, the SPEC passes instance_spec_check() (create, update) or
 * has a valid name (the others). Null members count as absent. Returns 0 or -1 with
 * err.
 */
int instance_cmd_check(struct json_object *body, struct kerr *err)
{
	struct json_object *norm = instance_spec_normalise(body);
	int ret = body_check(norm, err);

	json_object_put(norm);
	return ret;
}

/* ---- operation plumbing ------------------------------------------------------------- */

static void op_free(struct inst_op *op)
{
	json_object_put(op->spec);
	json_object_put(op->args);
	json_object_put(op->result);
	json_object_put(op->report);
	free(op);
}

/* The agent is stopping: drop the op at its next step, touching nothing else. */
bool instance_op_gone(struct inst_op *op)
{
	if (!op->agent->stopping)
		return false;
	op_free(op);
	return true;
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
	if (op->owner && op->vm && op->vm->op == op)
		op->vm->op = NULL;
	opcache_finish(&op->agent->ops, op->op, body);
	link_event_send(op->agent, LINK_OP_DONE, op->op, body);
	op_free(op);
}

static void succeed_with(struct inst_op *op, struct json_object *report)
{
	struct json_object *body = json_object_new_object(), *result = json_object_new_object();

	json_object_object_add(result, "instance", report);
	if (op->result) {
		json_object_object_foreach(op->result, key, val)
			json_object_object_add(result, key, json_object_get(val));
	}
	json_object_object_add(body, "status", json_object_new_string("succeeded"));
	json_object_object_add(body, "result", result);
	log_info("op %s: %s %s succeeded", op->op, op->action->name,
		 json_get_str(op->spec, "name", ""));
	op_done(op, body);
}

static void measured_cb(struct vm *vm, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	succeed_with(op, vm ? vm_report(vm) : json_object_get(op->report));
}

/* The action worked: report the instance with fresh disk sizes. */
void instance_op_succeed(struct inst_op *op)
{
	if (op->report || op->vm == NULL) {
		succeed_with(op, json_object_get(op->report));
		return;
	}
	vm_measure(op->vm, measured_cb, op);
}

static void fail_send(struct inst_op *op, const char *why)
{
	struct json_object *body = json_object_new_object();
	struct vm *vm = op->vm;

	log_warnx("op %s: %s %s failed: %s", op->op, op->action->name,
		  json_get_str(op->spec, "name", ""), why);
	json_object_object_add(body, "status", json_object_new_string("failed"));
	json_object_object_add(body, "error", json_object_new_string(why));
	if (op->owner && vm && vm->op == op)
		vm->op = NULL;
	/* The failure may have left the VM in another state; the controller hears it. */
	if (vm && vm->created && !vm->removing)
		vm_state_push(vm);
	op->owner = false;
	op_done(op, body);
}

struct rollback {
	struct inst_op *op;
	char why[256];
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
	if (op->registered && op->vm) {
		op->vm->op = NULL;
		vm_remove(op->vm);
		op->vm = NULL;
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
	disk_remove(op->agent, op->registered && op->vm ? op->vm->dir : NULL, planned, n, keep,
		    rolled_back_cb, rb);
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

/*
 * Take an instance command (acked, in the op cache, body checked by
 * instance_cmd_check()) and run it; op-progress and op-done follow on the event
 * socket.
 */
void instance_cmd_start(struct agent *a, const char *opid, struct json_object *body)
{
	struct inst_op *op = xcalloc(1, sizeof(*op));
	struct json_object *norm = instance_spec_normalise(body), *spec, *args;
	struct inst_op *busy;
	struct kerr err;
	const char *name;

	op->agent = a;
	snprintf(op->op, sizeof(op->op), "%s", opid);
	op->action = action_find(json_get_str(norm, "action", ""));
	json_object_object_get_ex(norm, "instance", &spec);
	op->spec = json_object_get(spec);
	if (json_object_object_get_ex(norm, "args", &args))
		op->args = json_object_get(args);
	else
		op->args = json_object_new_object();
	json_object_put(norm);
	name = json_get_str(op->spec, "name", "");
	op->vm = vm_find(a, name);
	if (op->action->needs_vm && (op->vm == NULL || !op->vm->created)) {
		op->vm = NULL;
		instance_op_fail(op, "there is no instance %s on this host", name);
		return;
	}
	busy = op->vm ? op->vm->op : NULL;
	if (busy &&
	    !(op->action->run == vmaction_force_stop && busy->action->run == vmaction_stop)) {
		op->vm = NULL;
		instance_op_fail(op,
				 "instance %s is busy with %s (op %s); try again when it is done",
				 name, busy->action->name, busy->op);
		return;
	}
	if (op->vm && busy == NULL) {
		op->vm->op = op;
		op->owner = true;
	}
	if (op->vm && op->action->run != vmaction_update) {
		memcpy(op->disks, op->vm->disks, op->vm->ndisks * sizeof(*op->disks));
		op->ndisks = op->vm->ndisks;
	} else if (vm_disks_resolve(a, op->spec, op->disks, &op->ndisks, &err) < 0) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	op->action->run(op);
}

/* ---- queries ---------------------------------------------------------------------------- */

static const char *const query_whats[] = {"console", NULL};

static int what_check(struct json_object *val, const char *field, struct kerr *err)
{
	return one_of(val, field, query_whats, err);
}

static const struct json_field query_fields[] = {
	{"what", JK_STRING, true, what_check},
	{"name", JK_STRING, true, name_check},
	{"bytes", JK_INT, false, NULL},
	{NULL, 0, false, NULL},
};

/*
 * Answer a query: {"what": "console", "name": N, "bytes": B} -> {"data": base64 of the
 * last B bytes of the serial console, "size": the log's total size}. Returns 0 with a
 * new object in *answer, or -1 with err. The REP socket must answer before it takes the
 * next request, so the file is read here, on the loop: at most AGENT_CONSOLE_MAX
 * bytes of a file in the local pool.
 */
int instance_query(struct agent *a, struct json_object *body, struct json_object **answer,
		   struct kerr *err)
{
	_cleanup_free_ char *path = NULL, *data = NULL;
	_cleanup_free_ unsigned char *raw = NULL;
	_cleanup_close_ int fd = -1;
	int64_t bytes = json_get_int(body, "bytes", CONSOLE_DEFAULT);
	struct vm *vm;
	struct stat st;
	ssize_t n = 0;

	if (json_fields_check(body, query_fields, err) < 0)
		return -1;
	vm = vm_find(a, json_get_str(body, "name", ""));
	if (vm == NULL || !vm->created)
		return err_set(err, 0, "there is no instance %s on this host",
			       json_get_str(body, "name", ""));
	if (bytes < 1 || bytes > AGENT_CONSOLE_MAX)
		bytes = bytes < 1 ? 1 : AGENT_CONSOLE_MAX;
	path = xasprintf("%s/console.log", vm->dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && fstat(fd, &st) == 0) {
		off_t from = st.st_size > bytes ? st.st_size - bytes : 0;

		raw = xmalloc((size_t)bytes);
		n = pread(fd, raw, (size_t)bytes, from);
		if (n < 0)
			return err_set(err, errno, "vm %s: cannot read %s", vm->name, path);
	} else if (fd >= 0 || errno != ENOENT) {
		return err_set(err, errno, "vm %s: cannot read %s", vm->name, path);
	} else {
		st.st_size = 0; /* never started: an empty console */
	}
	data = xmalloc(4 * ((size_t)n + 2) / 3 + 1);
	EVP_EncodeBlock((unsigned char *)data, raw ? raw : (unsigned char *)"", (int)n);
	*answer = json_object_new_object();
	json_object_object_add(*answer, "data", json_object_new_string(data));
	json_object_object_add(*answer, "size", json_object_new_int64(st.st_size));
	return 0;
}
