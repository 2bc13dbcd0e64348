/*
 * api_instances.c - /api/v1/instances: create (validated, placed by the scheduler),
 * list, show, change, delete, lifecycle actions, serial console and snapshots.
 * Everything that touches a host is an operation sent to that host's agent.
 */
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "scheduler.h"
#include "spec.h"
#include "util.h"
#include "valid.h"
#include "verbs.h"

#define CONSOLE_DEFAULT	  16384
#define CONSOLE_MAX	  (1024 * 1024)
#define CONSOLE_INPUT_MAX 4096

/* ---- validation of what users send ---- */

static int one_of(struct json_object *v, const char *field, const char *const *allowed,
		  struct kerr *err)
{
	const char *s = json_object_get_string(v);
	char list[128] = "";

	for (size_t i = 0; allowed[i]; i++) {
		if (!strcmp(s, allowed[i]))
			return 0;
		snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
			 allowed[i]);
	}
	return err_input(err, 400, field, "'%s' must be one of %s, not '%.32s'", field, list, s);
}

static const char *const types[] = {"vm", "container", NULL};
static const char *const buses[] = {"virtio", "scsi", "sata", "ide", NULL};
static const char *const pools[] = {"shared", "local", NULL};
static const char *const clones[] = {"linked", "full", NULL};

static int type_check(struct json_object *v, const char *f, struct kerr *err)
{
	return one_of(v, f, types, err);
}

static int int_range(struct json_object *v, const char *f, int64_t min, int64_t max,
		     struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < min || n > max)
		return err_input(err, 400, f, "'%s' must be %lld..%lld", f, (long long)min,
				 (long long)max);
	return 0;
}

static int vcpus_check(struct json_object *v, const char *f, struct kerr *err)
{
	return int_range(v, f, 1, SPEC_VCPUS_MAX, err);
}

static int mb_check(struct json_object *v, const char *f, struct kerr *err)
{
	return int_range(v, f, SPEC_MEMORY_MB_MIN, SPEC_MEMORY_MB_MAX, err);
}

static const struct json_field memory_fields[] = {
	{"mb", JK_INT, false, mb_check},
	{"min_mb", JK_INT, false, mb_check},
	{"max_mb", JK_INT, false, mb_check},
	{"target_mb", JK_INT, false, mb_check},
	{NULL, 0, false, NULL},
};

static int memory_check(struct json_object *v, const char *f, struct kerr *err)
{
	bool mb = json_object_object_get_ex(v, "mb", NULL);
	bool mn = json_object_object_get_ex(v, "min_mb", NULL);
	bool mx = json_object_object_get_ex(v, "max_mb", NULL);

	if (json_fields_check_in(v, memory_fields, f, err) < 0)
		return -1;
	if (json_object_object_get_ex(v, "target_mb", NULL))
		return err_input(err, 400, "memory.target_mb",
				 "'memory.target_mb' is only for changing a running instance");
	if (mb && (mn || mx))
		return err_input(err, 400, f,
				 "'memory' is either {\"mb\": N} or {\"min_mb\": A, "
				 "\"max_mb\": B}, not both");
	if (!mb && !(mn && mx))
		return err_input(err, 400, f,
				 "'memory' needs \"mb\", or both \"min_mb\" and "
				 "\"max_mb\"");
	if (mn && mx && json_get_int(v, "min_mb", 0) > json_get_int(v, "max_mb", 0))
		return err_input(err, 400, f, "memory min_mb (%lld) is larger than max_mb (%lld)",
				 (long long)json_get_int(v, "min_mb", 0),
				 (long long)json_get_int(v, "max_mb", 0));
	return 0;
}

static int bus_check(struct json_object *v, const char *f, struct kerr *err)
{
	return one_of(v, f, buses, err);
}

static int pool_check(struct json_object *v, const char *f, struct kerr *err)
{
	return one_of(v, f, pools, err);
}

static int clone_check(struct json_object *v, const char *f, struct kerr *err)
{
	return one_of(v, f, clones, err);
}

static int disk_mb_check(struct json_object *v, const char *f, struct kerr *err)
{
	return int_range(v, f, 1, SPEC_DISK_MB_MAX, err);
}

static const struct json_field disk_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"size_mb", JK_INT, false, disk_mb_check},
	{"bus", JK_STRING, false, bus_check},
	{"pool", JK_STRING, false, pool_check},
	{"image", JK_STRING, false, name_check},
	{"clone", JK_STRING, false, clone_check},
	{NULL, 0, false, NULL},
};

static int disks_check(struct json_object *v, const char *f, struct kerr *err)
{
	if (json_array_check(v, f, disk_fields, SPEC_DISKS_MAX, err) < 0)
		return -1;
	return json_array_unique_check(v, f, "name", "disks", err);
}

static int boot_check(struct json_object *v, const char *f, struct kerr *err)
{
	static const char *const devs[] = {"disk", "network", NULL};
	size_t n = json_array_len(v);

	if (n > 2)
		return err_input(err, 400, f, "'%s' lists at most disk and network", f);
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(v, i);

		if (!json_object_is_type(e, json_type_string) || one_of(e, f, devs, err) < 0)
			return err_input(err, 400, f,
					 "'%s' entries must be \"disk\" or \"network\"", f);
	}
	return 0;
}

static int user_data_check(struct json_object *v, const char *f, struct kerr *err)
{
	if (json_object_get_string_len(v) > SPEC_USER_DATA_MAX)
		return err_input(err, 400, f, "'%s' is over %d bytes", f, SPEC_USER_DATA_MAX);
	return 0;
}

static const struct json_field cloud_init_fields[] = {
	{"user_data", JK_STRING, true, user_data_check},
	{NULL, 0, false, NULL},
};

static int cloud_init_check(struct json_object *v, const char *f, struct kerr *err)
{
	if (json_fields_check_in(v, cloud_init_fields, f, err) < 0)
		return -1;
	return 0;
}

/* A create's deadline (jobs.c): 1 s to a day. */
int create_timeout_check(struct json_object *v, const char *f, struct kerr *err)
{
	return int_range(v, f, 1, 86400, err);
}

static const struct json_field create_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"type", JK_STRING, true, type_check},
	{"vcpus", JK_INT, false, vcpus_check},
	{"memory", JK_OBJECT, false, memory_check},
	{"disks", JK_ARRAY, false, disks_check},
	{"nics", JK_ARRAY, false, nics_vm_check},
	{"nested", JK_BOOL, false, NULL},
	{"host", JK_STRING, false, name_check},
	{"anti_affinity", JK_STRING, false, name_check},
	{"labels", JK_OBJECT, false, labels_check},
	{"ha", JK_OBJECT, false, ha_field_check},
	{"boot", JK_ARRAY, false, boot_check},
	{"cloud_init", JK_OBJECT, false, cloud_init_check},
	{"stop_timeout_s", JK_INT, false, stop_grace_check},
	{"start", JK_BOOL, false, NULL},
	{"timeout_s", JK_INT, false, create_timeout_check}, /* the create's deadline */
	{NULL, 0, false, NULL},
};
const struct json_field *const instance_vm_fields = create_fields;

/* ---- helpers ---- */

static bool instance_exists(const char *name)
{
	sqlite3_stmt *st = db_prepare_cached(ctl.db, "SELECT 1 FROM instances WHERE name = ?");
	bool found;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	found = sqlite3_step(st) == SQLITE_ROW;
	db_release(st);
	return found;
}

/* The instance row the path names: spec, state, host. NULL after answering 400/404. */
struct inst {
	int64_t id;
	char name[NAME_MAX_LEN + 1];
	char state[32];
	char desired[16];
	struct json_object *spec;
	struct host *host;
	int vcpus;
	int64_t memory_mb;
};

static void inst_free(struct inst *i)
{
	if (i) {
		json_object_put(i->spec);
		free(i);
	}
}

static struct inst *inst_load(const char *name)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT i.id, i.name, i.state, i.desired, i.spec, "
				   "h.name, i.vcpus, i.memory_mb FROM instances i "
				   "LEFT JOIN hosts h ON h.id = i.host_id WHERE i.name = ?");
	struct inst *i = NULL;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		i = xcalloc(1, sizeof(*i));
		i->id = sqlite3_column_int64(st, 0);
		snprintf(i->name, sizeof(i->name), "%s", sqlite3_column_text(st, 1));
		snprintf(i->state, sizeof(i->state), "%s", sqlite3_column_text(st, 2));
		snprintf(i->desired, sizeof(i->desired), "%s", sqlite3_column_text(st, 3));
		i->spec = json_tokener_parse((const char *)sqlite3_column_text(st, 4));
		if (sqlite3_column_type(st, 5) == SQLITE_TEXT)
			i->host = host_find((const char *)sqlite3_column_text(st, 5));
		i->vcpus = sqlite3_column_int(st, 6);
		i->memory_mb = sqlite3_column_int64(st, 7);
	}
	sqlite3_finalize(st);
	return i;
}

static struct inst *path_inst(struct request *req, enum MHD_Result *ret)
{
	struct inst *i;

	if (!name_valid(req->params[0])) {
		*ret = http_reply_error(
			req, 400, "name",
			"instance name must be 1-63 characters of a-z, 0-9 and '-'");
		return NULL;
	}
	i = inst_load(req->params[0]);
	if (i == NULL)
		*ret = http_reply_error(req, 404, NULL, "no instance named %s", req->params[0]);
	return i;
}

/* Build the LINK_CMD_INSTANCE body and queue it for h under operation op_id. */
static void cmd_instance(struct host *h, const char *op_id, const char *action,
			 struct json_object *spec, struct json_object *args)
{
	instances_cmd_send(h, op_id, action, spec, args);
}

/*
 * Start operation "instance-ACTION" on inst's host: refuses (409) while another
 * operation holds the instance and (503) when the host is offline. args (consumed)
 * travel with the command and stay in the operation's result. The operation, its
 * new desired state and its event are one transaction, committed before the
 * command is queued and the 202 goes out. timeout_s: the job's deadline (0: its
 * kind's default).
 */
/* A write that goes in an action's transaction (a delete's state, a snapshot's row). */
typedef int (*op_tx_fn)(struct inst *i, void *arg, struct kerr *err);

static enum MHD_Result start_op_tx(struct request *req, struct inst *i, const char *action,
				   struct json_object *args, const char *new_desired,
				   int64_t timeout_s, op_tx_fn tx, void *arg);

static enum MHD_Result start_op(struct request *req, struct inst *i, const char *action,
				struct json_object *args, const char *new_desired,
				int64_t timeout_s)
{
	return start_op_tx(req, i, action, args, new_desired, timeout_s, NULL, NULL);
}

/* The same, with tx(i, arg, err) in the operation's transaction, checked. */
static enum MHD_Result start_op_tx(struct request *req, struct inst *i, const char *action,
				   struct json_object *args, const char *new_desired,
				   int64_t timeout_s, op_tx_fn tx, void *arg)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", i->name);
	_cleanup_free_ char *kind = xasprintf("instance-%s", action);
	struct json_object *op, *res;
	struct kerr err;
	char busy[LINK_OP_ID_MAX + 1];

	if (args == NULL)
		args = json_object_new_object();
	if (op_busy(target, busy, sizeof(busy))) {
		json_object_put(args);
		return http_reply_error(req, 409, NULL, "instance %s is busy with operation %s",
					i->name, busy);
	}
	if (i->host == NULL || i->host->state != HOST_ONLINE) {
		json_object_put(args);
		return http_reply_error(req, 503, NULL, "host %s of instance %s is offline",
					i->host ? i->host->name : "(none)", i->name);
	}
	if (db_begin(ctl.db) < 0) {
		json_object_put(args);
		return http_reply_error(req, 503, NULL, "the database is busy; try again");
	}
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_get(args));
	op = op_create_timeout(kind, target, i->host, res, timeout_s, &err);
	if (op == NULL || (new_desired && instance_desired_set(i->id, new_desired, &err) < 0) ||
	    (tx && tx(i, arg, &err) < 0) || db_commit(ctl.db, &err) < 0) {
		db_rollback(ctl.db);
		json_object_put(op);
		json_object_put(args);
		return http_reply_kerr(req, &err);
	}
	cmd_instance(i->host, json_object_get_string(json_object_object_get(op, "id")), action,
		     i->spec, args);
	json_object_put(args);
	return http_reply_json(req, 202, op);
}

/* A delete's operation and the instance's "deleting" commit together. */
static int deleting_set(struct inst *i, void *arg, struct kerr *err)
{
	(void)arg;
	return instance_state_deleting(i->id, err);
}

struct snapshot_new {
	const char *name;
	bool with_memory;
};

/* A snapshot's row and its operation commit together. */
static int snapshot_insert(struct inst *i, void *arg, struct kerr *err)
{
	const struct snapshot_new *sn = arg;

	return instance_snapshot_insert(i->id, sn->name, sn->with_memory, err);
}

/* ---- create ---- */

/*
 * Turn a validated create body into the normalized spec the agent gets: defaults
 * filled in, images resolved to paths on the shared pool, disk paths derived from
 * names only. image_ids receives each disk's image id (or 0).
 */
static struct json_object *spec_build(struct json_object *body, int64_t *image_ids,
				      struct kerr *err)
{
	const char *name = json_get_str(body, "name", "");
	struct json_object *spec = json_object_new_object(), *v;
	struct json_object *disks = json_object_new_array(), *nics = json_object_new_array();
	struct json_object *in;
	size_t n;

	json_object_object_add(spec, "name", json_object_new_string(name));
	json_object_object_add(spec, "type", json_object_new_string("vm"));
	json_object_object_add(spec, "vcpus",
			       json_object_new_int((int)json_get_int(body, "vcpus", 1)));
	if (json_object_object_get_ex(body, "memory", &v))
		json_object_object_add(spec, "memory", json_object_get(v));
	else {
		v = json_object_new_object();
		json_object_object_add(v, "mb", json_object_new_int(256));
		json_object_object_add(spec, "memory", v);
	}
	json_object_object_add(spec, "nested",
			       json_object_new_boolean(json_get_bool(body, "nested", false)));

	in = json_object_object_get(body, "disks");
	n = in ? json_array_len(in) : 0;
	for (size_t i = 0; i < n; i++) {
		struct json_object *d = json_object_array_get_idx(in, i),
				   *o = json_object_new_object();
		const char *dname = json_get_str(d, "name", ""),
			   *image = json_get_str(d, "image", NULL);
		const char *pool = json_get_str(d, "pool", "shared");
		int64_t size = json_get_int(d, "size_mb", 0);
		_cleanup_free_ char *path = xasprintf("disks/%s/%s.qcow2", name, dname);
		char where[32];

		snprintf(where, sizeof(where), "disks[%zu]", i);
		image_ids[i] = 0;
		json_object_object_add(o, "name", json_object_new_string(dname));
		json_object_object_add(o, "bus",
				       json_object_new_string(json_get_str(d, "bus", "virtio")));
		json_object_object_add(o, "pool", json_object_new_string(pool));
		json_object_object_add(o, "path", json_object_new_string(path));
		if (image) {
			char ipath[512], sha256[65] = "";
			int64_t vsize = 0, vmb;
			struct json_object *img = json_object_new_object();

			image_ids[i] = image_find(image, ipath, sizeof(ipath), &vsize, sha256);
			if (image_ids[i] < 0) {
				json_object_put(img);
				json_object_put(o);
				err_input(err, 409, where,
					  "the record of image %s does not match its signature: it "
					  "was changed outside the controller",
					  image);
				goto fail;
			}
			if (image_ids[i] == 0) {
				json_object_put(img);
				json_object_put(o);
				err_input(err, 404, where, "no image named %s", image);
				goto fail;
			}
			vmb = (vsize + (1 << 20) - 1) >> 20;
			if (size == 0)
				size = vmb;
			if (size < vmb) {
				json_object_put(img);
				json_object_put(o);
				err_input(err, 400, where,
					  "%s.size_mb (%lld) is smaller than image %s (%lld MiB)",
					  where, (long long)size, image, (long long)vmb);
				goto fail;
			}
			json_object_object_add(img, "name", json_object_new_string(image));
			json_object_object_add(img, "path", json_object_new_string(ipath));
			/* The controller's word on the image's bytes, checked where it is used. */
			if (sha256[0])
				json_object_object_add(img, "sha256",
						       json_object_new_string(sha256));
			json_object_object_add(o, "image", img);
			json_object_object_add(
				o, "clone",
				json_object_new_string(json_get_str(d, "clone", "linked")));
		} else {
			if (size == 0) {
				json_object_put(o);
				err_input(err, 400, where, "%s needs size_mb or an image", where);
				goto fail;
			}
			json_object_object_add(o, "image", NULL);
			json_object_object_add(o, "clone", NULL);
		}
		json_object_object_add(o, "size_mb", json_object_new_int64(size));
		json_object_array_add(disks, o);
	}
	json_object_object_add(spec, "disks", disks);
	disks = NULL;

	json_object_put(nics);
	nics = nics_build(json_object_object_get(body, "nics"), true, err);
	if (nics == NULL)
		goto fail;
	json_object_object_add(spec, "nics", nics);
	nics = NULL;
	if (json_object_object_get_ex(body, "boot", &v))
		json_object_object_add(spec, "boot", json_object_get(v));
	else {
		v = json_object_new_array();
		json_object_array_add(v, json_object_new_string("disk"));
		json_object_array_add(v, json_object_new_string("network"));
		json_object_object_add(spec, "boot", v);
	}
	v = json_object_object_get(body, "cloud_init");
	json_object_object_add(spec, "cloud_init", v ? json_object_get(v) : NULL);
	v = json_object_object_get(body, "stop_timeout_s");
	json_object_object_add(spec, "stop_timeout_s", v ? json_object_get(v) : NULL);
	v = json_object_object_get(body, "labels");
	json_object_object_add(spec, "labels", v ? json_object_get(v) : json_object_new_object());
	v = json_object_object_get(body, "anti_affinity");
	json_object_object_add(spec, "anti_affinity", v ? json_object_get(v) : NULL);
	v = json_object_object_get(body, "host");
	json_object_object_add(spec, "host", v ? json_object_get(v) : NULL);
	return spec;
fail:
	json_object_put(disks);
	json_object_put(nics);
	json_object_put(spec);
	return NULL;
}

static bool spec_needs_pool(struct json_object *spec, const char *pool)
{
	struct json_object *disks = json_object_object_get(spec, "disks");
	size_t n = disks ? json_array_len(disks) : 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *d = json_object_array_get_idx(disks, i);

		if (!strcmp(json_get_str(d, "pool", ""), pool))
			return true;
		/* An image lives on the shared pool whatever pool its clone goes to. */
		if (!strcmp(pool, "shared") && json_object_object_get(d, "image"))
			return true;
	}
	return false;
}

static int64_t spec_memory_mb(struct json_object *spec)
{
	struct json_object *m = json_object_object_get(spec, "memory");

	return json_get_int(m, "mb", json_get_int(m, "max_mb", 0));
}

/* A create on its way: what each step of instance_create() hands the next. */
struct create_plan {
	struct json_object *spec; /* the normalized spec, ours */
	bool vm, start;
	int64_t timeout_s;
	int64_t image_ids[SPEC_DISKS_MAX];
	struct sched_request sr;
	struct host *host;
	struct json_object *placement; /* the scheduler's reasons, ours */
	struct json_object *args;      /* the agent command's arguments, ours */
	struct json_object *op;	       /* the operation, once recorded, ours */
	struct json_object *restore;   /* a backup the disks are written from, or NULL */
};

static void create_plan_free(struct create_plan *p)
{
	json_object_put(p->spec);
	json_object_put(p->placement);
	json_object_put(p->args);
	json_object_put(p->op);
}

/* Parse and validate: body (a create request) becomes p's normalized spec. */
static int create_validate(struct json_object *body, struct create_plan *p, struct kerr *err)
{
	const char *type = json_get_str(body, "type", NULL), *name, *host;

	/* The type decides which fields exist; check it first, then the rest. */
	if (type == NULL || (strcmp(type, "vm") && strcmp(type, "container")))
		return err_input(err, 400, "type",
				 "field 'type' is required: \"vm\" or \"container\"");
	p->vm = !strcmp(type, "vm");
	if (json_fields_check(body, p->vm ? create_fields : container_create_fields, err) < 0)
		return -1;
	name = json_get_str(body, "name", "");
	if (instance_exists(name))
		return err_input(err, 409, "name", "an instance named %s exists already", name);
	host = json_get_str(body, "host", NULL);
	if (host && !host_find(host))
		return err_input(err, 404, "host", "no host named %s", host);
	p->spec = p->vm ? spec_build(body, p->image_ids, err) : container_spec_build(body, err);
	if (p->spec == NULL)
		return -1;
	/* HA (ha.c): only with every disk on the shared pool. */
	if (json_object_object_get(body, "ha") &&
	    ha_spec_set(p->spec, json_object_object_get(body, "ha"), err) < 0)
		return -1;
	p->start = json_get_bool(body, "start", true);
	p->timeout_s = json_get_int(body, "timeout_s", 0);
	return 0;
}

/* Place: choose p's host (422 with p->placement's reasons when none fits). */
static int create_place(struct create_plan *p, struct kerr *err)
{
	struct sched_request *sr = &p->sr;
	struct json_object *netkeep;

	if (p->vm) {
		sr->vcpus = (int)json_get_int(p->spec, "vcpus", 1);
		sr->memory_mb = spec_memory_mb(p->spec);
		sr->nested = json_get_bool(p->spec, "nested", false);
		sr->needs_shared_pool = spec_needs_pool(p->spec, "shared");
		sr->needs_local_pool = spec_needs_pool(p->spec, "local");
	} else {
		container_sched_request(p->spec, sr);
	}
	sr->pin_host = json_get_str(p->spec, "host", NULL);
	sr->anti_affinity = json_get_str(p->spec, "anti_affinity", NULL);
	netkeep = nics_sched_request(p->spec, sr);
	p->host = instances_place(sr, &p->placement, err);
	nics_sched_free(sr);
	json_object_put(netkeep);
	if (p->host == NULL) {
		err->status = 422;
		return -1;
	}
	/* The host decides the accelerator: KVM only where a guest really ran. */
	if (p->vm)
		json_object_object_add(
			p->spec, "accel",
			json_object_new_string(
				!strcmp(json_get_str(p->host->facts, "accel", "tcg"), "kvm")
					? "kvm"
					: "tcg"));
	return 0;
}

/* The rows: the instance, its disks, its addresses and the spec carrying them. */
static int create_rows_insert(struct create_plan *p, int64_t now, struct kerr *err)
{
	const char *name = json_get_str(p->spec, "name", "");
	struct json_object *disks = json_object_object_get(p->spec, "disks");
	sqlite3_stmt *st;
	int64_t iid;
	int rc;

	st = db_prepare_cached(
		ctl.db, "INSERT INTO instances (name, type, host_id, spec, state, desired, "
			"anti_affinity, vcpus, memory_mb, placement, created_at, updated_at) "
			"VALUES (?1, ?11, ?2, ?3, 'creating', ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, p->host->id);
	sqlite3_bind_text(st, 3, json_text(p->spec), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, p->start ? "running" : "stopped", -1, SQLITE_STATIC);
	if (p->sr.anti_affinity)
		sqlite3_bind_text(st, 5, p->sr.anti_affinity, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 6, p->sr.vcpus);
	sqlite3_bind_int64(st, 7, p->sr.memory_mb);
	sqlite3_bind_text(st, 8, json_text(p->placement), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 9, now);
	sqlite3_bind_int64(st, 10, now);
	sqlite3_bind_text(st, 11, p->vm ? "vm" : "container", -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	db_release(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "cannot record the instance: %s", sqlite3_errmsg(ctl.db));
	iid = sqlite3_last_insert_rowid(ctl.db);
	for (size_t i = 0; p->vm && i < json_array_len(disks); i++) {
		struct json_object *d = json_object_array_get_idx(disks, i);

		st = db_prepare_cached(
			ctl.db, "INSERT INTO disks (instance_id, name, image_id) VALUES (?, ?, ?)");
		sqlite3_bind_int64(st, 1, iid);
		sqlite3_bind_text(st, 2, json_get_str(d, "name", ""), -1, SQLITE_STATIC);
		if (p->image_ids[i] > 0)
			sqlite3_bind_int64(st, 3, p->image_ids[i]);
		rc = sqlite3_step(st);
		db_release(st);
		if (rc != SQLITE_DONE)
			return err_set(err, 0, "cannot record the instance's disks: %s",
				       sqlite3_errmsg(ctl.db));
	}
	/* Addresses in the same transaction: the spec the agent gets carries them. The
	 * spec complete (addresses too), checked by the schema the agents use
	 * (common/spec.c): one the agent would refuse is never stored or sent. */
	if (nics_allocate(iid, name, p->spec, err) < 0 || spec_check(p->spec, err) < 0)
		return -1;
	st = db_prepare_cached(ctl.db, "UPDATE instances SET spec = ? WHERE id = ?");
	sqlite3_bind_text(st, 1, json_text(p->spec), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, iid);
	rc = sqlite3_step(st);
	db_release(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "cannot record the instance: %s", sqlite3_errmsg(ctl.db));
	return 0;
}

/* Insert: the rows, the operation and the event, in one transaction. */
static int create_insert(struct create_plan *p, struct kerr *err)
{
	const char *name = json_get_str(p->spec, "name", "");
	_cleanup_free_ char *target = xasprintf("instances/%s", name);
	struct json_object *res, *ev;

	if (db_begin(ctl.db) < 0)
		return err_input(err, 503, NULL, "the database is busy; try again");
	if (create_rows_insert(p, now_ms(), err) < 0) {
		db_rollback(ctl.db);
		return -1;
	}
	p->args = json_object_new_object();
	json_object_object_add(p->args, "start", json_object_new_boolean(p->start));
	/* A restore to a new instance (api_backups.c): the agent writes its disks from
	 * the backup's chunks before it starts. */
	if (p->restore)
		json_object_object_add(p->args, "restore", json_object_get(p->restore));
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_get(p->args));
	json_object_object_add(res, "placement", json_object_get(p->placement));
	p->op = op_create_timeout("instance-create", target, p->host, res, p->timeout_s, err);
	if (p->op == NULL) {
		db_rollback(ctl.db);
		return -1;
	}
	/* The event goes in the same transaction: one commit, one fsync. */
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(name));
	json_object_object_add(ev, "host", json_object_new_string(p->host->name));
	json_object_object_add(ev, "placement", json_object_get(p->placement));
	event_emit("instance-created", ev);
	if (db_commit(ctl.db, err) < 0)
		return err_prefix(err, "cannot record the instance: ");
	return 0;
}

/* Enqueue: the host learns the networks first (the same queue carries both, in
 * order), then the create command. Without NICs no host's network document changes. */
static void create_enqueue(struct create_plan *p)
{
	struct json_object *nics = json_object_object_get(p->spec, "nics"), *args;
	struct kerr err;

	if (json_object_is_type(nics, json_type_array) && json_array_len(nics) > 0)
		netsync_changed(p->host);
	/* A restore from an encrypted store: its key goes in the command only, never in
	 * the operation's args (backups.c; checked before the create was recorded). */
	args = p->restore ? backup_cmd_args(p->args, &err) : json_object_get(p->args);
	if (args == NULL) {
		log_warnx("instance %s: %s", json_get_str(p->spec, "name", ""), err.msg);
		args = json_object_get(p->args);
	}
	cmd_instance(p->host, json_object_get_string(json_object_object_get(p->op, "id")), "create",
		     p->spec, args);
	json_object_put(args);
}

/*
 * Create an instance from body, a create request (the shape of POST
 * /api/v1/instances; the caller keeps it): validate it into a spec, place it, record
 * the instance and its operation in one transaction, and queue the command to the
 * host. Returns the operation (the caller's), or NULL with err: its status says what
 * the REST layer answers, and for 422 (no host fits) *placement (if not NULL) gets
 * the scheduler's reasons, the caller's.
 */
struct json_object *instance_create(struct json_object *body, struct json_object *restore,
				    struct json_object **placement, struct kerr *err)
{
	struct create_plan p = {.restore = restore};
	struct json_object *op = NULL;

	memset(err, 0, sizeof(*err));
	if (placement)
		*placement = NULL;
	if (create_validate(body, &p, err) < 0)
		goto out;
	log_trace("create %s: request checked", json_get_str(p.spec, "name", ""));
	if (create_place(&p, err) < 0) {
		if (placement)
			*placement = STEAL_POINTER(&p.placement);
		goto out;
	}
	log_trace("create %s: placed on %s", json_get_str(p.spec, "name", ""), p.host->name);
	if (create_insert(&p, err) < 0)
		goto out;
	log_info("instance %s: placed on %s", json_get_str(p.spec, "name", ""), p.host->name);
	create_enqueue(&p);
	log_trace("create %s: command queued", json_get_str(p.spec, "name", ""));
	op = STEAL_POINTER(&p.op);
out:
	create_plan_free(&p);
	return op;
}

/* The answer to instance_create(): 202 and the operation, 422 with the scheduler's
 * reasons when no host fits, else the error. */
enum MHD_Result instance_create_reply(struct request *req, struct json_object *op,
				      struct json_object *placement, struct kerr *err)
{
	struct json_object *e;

	if (op)
		return http_reply_json(req, 202, op);
	if (placement == NULL)
		return http_reply_kerr(req, err);
	e = json_object_new_object();
	json_object_object_add(e, "error", json_object_new_string(err->msg));
	json_object_object_add(e, "placement", placement);
	return http_reply_json(req, 422, e);
}

enum MHD_Result api_instances_create(struct request *req)
{
	struct json_object *body, *op, *placement;
	struct kerr err;

	if (json_body_parse(req->body ? req->body : "", req->body_len, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	op = instance_create(body, NULL, &placement, &err);
	json_object_put(body);
	return instance_create_reply(req, op, placement, &err);
}

/* ---- read ---- */

/*
 * What a viewer may not read of an instance: a container's environment values and
 * its command line carry passwords. Environment names stay (values become "***"),
 * the command becomes null, and "redacted" lists what was hidden. Events and
 * operations never carry either, for anyone.
 */
static struct json_object *instance_redact(struct json_object *o, const struct request *req)
{
	struct json_object *env = json_object_object_get(o, "env"), *hidden;

	if (o == NULL || req->role >= ROLE_OPERATOR)
		return o;
	hidden = json_object_new_array();
	if (json_object_is_type(env, json_type_object)) {
		json_object_object_foreach(env, key, value)
		{
			(void)value;
			json_object_object_add(env, key, json_object_new_string("***"));
		}
		json_object_array_add(hidden, json_object_new_string("env"));
	}
	if (json_object_object_get(o, "command")) {
		json_object_object_add(o, "command", NULL);
		json_object_array_add(hidden, json_object_new_string("command"));
	}
	json_object_object_add(o, "redacted", hidden);
	return o;
}

/* Characters JSON never escapes: a label value of only these is in the spec verbatim. */
#define LABEL_PLAIN "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"

/*
 * The list's query with only the filters given, each a condition on fixed parameters
 * (?1 after, ?2 host, ?3 state, ?4 type, ?5/?6 label path and value, ?7 network, ?8
 * limit, ?9 and ?10 the label's key and value as quoted text, ?11 the label's key).
 * Conditions that are left out let SQLite plan with the index a given one can use:
 * with every filter written as "(?N IS NULL OR ...)" it walked every instance by name
 * until the page filled, all 150,000 for a host with few. A rare label is looked up
 * in instance_labels (db.c) and its instances sorted; a common one is checked on the
 * specs walked in name order, which fill a page soon (the quoted key and value are
 * looked for in the spec's text before it is parsed).
 */
static sqlite3_stmt *list_query(const char *host, const char *state, const char *type,
				const char *label, bool label_rare, const char *network)
{
	_cleanup_free_ char *sql = xasprintf(
		"SELECT i.name FROM instances i WHERE i.name > ?1%s%s%s%s%s ORDER BY i.name "
		"LIMIT ?8",
		host ? " AND i.host_id = (SELECT id FROM hosts WHERE name = ?2)" : "",
		state ? " AND i.state = ?3" : "", type ? " AND i.type = ?4" : "",
		!label ? ""
		: label_rare
			? " AND i.id IN (SELECT instance_id FROM instance_labels WHERE "
			  "key = ?11 AND value = ?6)"
			: " AND instr(i.spec, ?9) > 0 AND (?10 IS NULL OR instr(i.spec, ?10) > "
			  "0) AND json_extract(i.spec, ?5) = ?6",
		network ? " AND EXISTS (SELECT 1 FROM addresses a JOIN networks n ON n.id = "
			  "a.network_id WHERE a.instance_id = i.id AND n.name = ?7)"
			: "");

	return db_prepare(ctl.db, sql);
}

/* Instances with a label at most this many: looked up and sorted (a few ms); more, and
 * walking the specs in name order finds a page's worth sooner. */
#define LABEL_RARE_MAX 4096

/* Is label key=value on at most LABEL_RARE_MAX instances? Counts at most that many. */
static bool label_is_rare(const char *key, int key_len, const char *value)
{
	sqlite3_stmt *st = db_prepare_cached(
		ctl.db, "SELECT count(*) FROM (SELECT 1 FROM instance_labels WHERE key = ? AND "
			"value = ? LIMIT ?)");
	bool rare = false;

	sqlite3_bind_text(st, 1, key, key_len, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, LABEL_RARE_MAX + 1);
	if (sqlite3_step(st) == SQLITE_ROW)
		rare = sqlite3_column_int(st, 0) <= LABEL_RARE_MAX;
	db_release(st);
	return rare;
}

/*
 * GET /api/v1/instances: by name, paged (page.c), filtered by ?host=, ?state=, ?type=,
 * ?label=k=v and ?network= (a NIC on it). The filters and the range are one indexed
 * query; only the page's instances are rendered.
 */
enum MHD_Result api_instances_list(struct request *req)
{
	const char *host = http_query(req, "host"), *state = http_query(req, "state");
	const char *type = http_query(req, "type"), *label = http_query(req, "label");
	const char *network = http_query(req, "network");
	_cleanup_free_ char *label_key = NULL, *label_quoted = NULL, *value_quoted = NULL;
	bool label_rare = false;
	struct json_object *list, *out;
	struct page page;
	struct kerr err;
	sqlite3_stmt *st;

	if (page_begin(req, &page, &err) < 0)
		return http_reply_kerr(req, &err);
	if (type && strcmp(type, "vm") && strcmp(type, "container"))
		return http_reply_error(req, 400, "type", "type must be vm or container");
	if ((host && !name_valid(host)) || (network && !name_valid(network)))
		return http_reply_error(req, 400, host && !name_valid(host) ? "host" : "network",
					"%s must be a name: 1-63 characters of a-z, 0-9 and '-'",
					host && !name_valid(host) ? "host" : "network");
	if (state &&
	    (strlen(state) > 32 || strspn(state, "abcdefghijklmnopqrstuvwxyz-") != strlen(state)))
		return http_reply_error(req, 400, "state", "state must be an instance state");
	if (label) {
		if (page_label_check(label, &err) < 0)
			return http_reply_kerr(req, &err);
		/* The key is quoted in the JSON path: label keys may hold '.' and '/'. */
		label_key =
			xasprintf("$.labels.\"%.*s\"", (int)(strchr(label, '=') - label), label);
	}
	if (label)
		label_rare = label_is_rare(label, (int)(strchr(label, '=') - label),
					   strchr(label, '=') + 1);
	st = list_query(host, state, type, label, label_rare, network);
	sqlite3_bind_text(st, 1, page.after, -1, SQLITE_STATIC);
	if (host)
		sqlite3_bind_text(st, 2, host, -1, SQLITE_STATIC);
	if (state)
		sqlite3_bind_text(st, 3, state, -1, SQLITE_STATIC);
	if (type)
		sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
	if (label) {
		const char *value = strchr(label, '=') + 1;

		sqlite3_bind_text(st, 5, label_key, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 6, value, -1, SQLITE_STATIC);
		label_quoted = xasprintf("\"%.*s\"", (int)(strchr(label, '=') - label), label);
		sqlite3_bind_text(st, 9, label_quoted, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 11, label, (int)(strchr(label, '=') - label), SQLITE_STATIC);
		/* A value with nothing JSON escapes appears in the spec's text as is. */
		if (strspn(value, LABEL_PLAIN) == strlen(value)) {
			value_quoted = xasprintf("\"%s\"", value);
			sqlite3_bind_text(st, 10, value_quoted, -1, SQLITE_STATIC);
		}
	}
	if (network)
		sqlite3_bind_text(st, 7, network, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 8, page.limit + 1); /* one more: is there a next page? */
	list = json_object_new_array();
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);
		struct json_object *o = instance_redact(instance_get_json(name, false), req);

		if (o && !page_add(&page, list, o, name)) {
			json_object_put(o);
			break;
		}
	}
	sqlite3_finalize(st);
	out = json_object_new_object();
	page_end(&page, out, "instances", list);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_instance_get(struct request *req)
{
	struct json_object *o;

	if (!name_valid(req->params[0]))
		return http_reply_error(
			req, 400, "name",
			"instance name must be 1-63 characters of a-z, 0-9 and '-'");
	o = instance_redact(instance_get_json(req->params[0], true), req);
	if (o == NULL)
		return http_reply_error(req, 404, NULL, "no instance named %s", req->params[0]);
	return http_reply_json(req, 200, o);
}

/* ---- actions ---- */

static const struct json_field stop_fields[] = {
	{"timeout_s", JK_INT, false, stop_grace_check},
	{NULL, 0, false, NULL},
};

static const struct json_field no_fields[] = {{NULL, 0, false, NULL}};

static int op_timeout_check(struct json_object *v, const char *f, struct kerr *err)
{
	return int_range(v, f, 1, 86400, err);
}

/* The actions without a grace: timeout_s is the operation's deadline (jobs.c). */
static const struct json_field deadline_fields[] = {
	{"timeout_s", JK_INT, false, op_timeout_check},
	{NULL, 0, false, NULL},
};

/* A stop's deadline: its grace, then time for QMP quit and SIGKILL to finish it. */
#define STOP_DEADLINE_SLACK_S 120

/* repo:tag for a committed image: lower-case repo path segments, a tag. */
static int commit_image_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v), *colon = strrchr(s, ':');
	size_t rlen = colon ? (size_t)(colon - s) : 0;

	if (!json_string_clean(v) || colon == NULL || rlen == 0 || rlen > 128 ||
	    strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789._-/") != rlen || s[0] == '/' ||
	    s[rlen - 1] == '/' || strstr(s, "//") || strstr(s, "..") || strlen(colon + 1) == 0 ||
	    strlen(colon + 1) > 128 ||
	    strspn(colon + 1,
		   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") !=
		    strlen(colon + 1))
		return err_input(err, 400, f, "'%s' must be repo:tag, like mytools:v2", f);
	return 0;
}

static const struct json_field commit_fields[] = {
	{"image", JK_STRING, true, commit_image_check},
	{NULL, 0, false, NULL},
};

/*
 * POST /instances/{name}/actions/{verb}: a verb of the verb table (verbs.h) marked
 * VF_ACTION. The table decides everything before the operation starts: whether the
 * instance's type has the verb (422), the states it may start from (409), the desired
 * state, and the stop grace the agent is always told.
 */
enum MHD_Result api_instance_action(struct request *req)
{
	struct json_object *body = NULL, *args;
	const struct verb_def *def;
	enum MHD_Result ret;
	struct kerr err;
	struct inst *i;
	int verb = verb_find(req->params[1]);
	int64_t timeout_s;

	if (verb < 0 || !(verb_get(verb)->flags & VF_ACTION))
		return http_reply_error(
			req, 404, NULL,
			"no action %.32s; actions are start, stop, force-stop, "
			"reboot (VMs), restart and commit (containers), pause, resume",
			req->params[1]);
	def = verb_get(verb);
	if (verb == VERB_COMMIT) {
		if (http_body_json(req, commit_fields, &body, &err) < 0)
			return http_reply_kerr(req, &err);
	} else if (req->body_len > 0 &&
		   http_body_json(req, def->flags & VF_STOP_GRACE ? stop_fields : deadline_fields,
				  &body, &err) < 0) {
		return http_reply_kerr(req, &err);
	}
	i = path_inst(req, &ret);
	if (i == NULL) {
		json_object_put(body);
		return ret;
	}
	if (verb_type_check(verb, inst_type_parse(json_get_str(i->spec, "type", "vm")), &err) < 0) {
		json_object_put(body);
		ret = http_reply_kerr(req, &err);
		inst_free(i);
		return ret;
	}
	if (!verb_state_allowed(verb, i->state)) {
		json_object_put(body);
		ret = http_reply_error(req, 409, NULL, "instance %s is %s; %s needs it %s%s",
				       i->name, i->state, def->name, def->from[0],
				       def->from[1] ? " (or similar)" : "");
		inst_free(i);
		return ret;
	}
	args = json_object_new_object();
	/* The one place that decides a stop's grace: the call's, the instance's, or the
	 * verb table's default for its type. The agent is always told. */
	if (def->flags & VF_STOP_GRACE)
		json_object_object_add(
			args, "timeout_s",
			json_object_new_int64(json_get_int(
				body, "timeout_s",
				json_get_int(i->spec, "stop_timeout_s",
					     verb_timeout_default(
						     verb, inst_type_parse(json_get_str(
								   i->spec, "type", "vm")))))));
	if (verb == VERB_COMMIT)
		json_object_object_add(args, "image",
				       json_object_new_string(json_get_str(body, "image", "")));
	/* For a stop timeout_s is the grace (above); the job's deadline follows from it. */
	timeout_s = def->flags & VF_STOP_GRACE
			    ? json_get_int(args, "timeout_s", 0) + STOP_DEADLINE_SLACK_S
			    : json_get_int(body, "timeout_s", 0);
	json_object_put(body);
	ret = start_op(req, i, def->name, args, def->desired, timeout_s);
	inst_free(i);
	return ret;
}

/* ---- change ---- */

static const struct json_field disk_resize_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"size_mb", JK_INT, true, disk_mb_check},
	{NULL, 0, false, NULL},
};

static int disks_resize_check(struct json_object *v, const char *f, struct kerr *err)
{
	return json_array_check(v, f, disk_resize_fields, SPEC_DISKS_MAX, err);
}

static int patch_memory_check(struct json_object *v, const char *f, struct kerr *err)
{
	if (json_object_object_length(v) == 1 && json_object_object_get_ex(v, "target_mb", NULL))
		return json_fields_check(v, memory_fields, err);
	return memory_check(v, f, err);
}

static const struct json_field patch_fields[] = {
	{"vcpus", JK_INT, false, vcpus_check},
	{"memory", JK_OBJECT, false, patch_memory_check},
	{"disks", JK_ARRAY, false, disks_resize_check},
	{"labels", JK_OBJECT, false, labels_check},
	{"nics", JK_ARRAY, false, nics_patch_check},
	{"ha", JK_OBJECT, false, ha_field_check},
	{NULL, 0, false, NULL},
};
const struct json_field *const instance_patch_fields = patch_fields;

/* A change to a spec: arg applied to spec, or -1 with err (spec then unchanged). */
typedef int (*spec_change_fn)(struct json_object *spec, struct json_object *arg, struct kerr *err);

/*
 * The one path of a PATCH that only rewrites the stored spec: refused (409) while an
 * operation on the instance is in flight (an update writes the whole spec when it
 * ends), then change(spec, arg), the UPDATE, and the instance as the reply. With
 * netsync, the hosts' network documents are recomputed after the write.
 */
static enum MHD_Result spec_update(struct request *req, struct inst *i, spec_change_fn change,
				   struct json_object *arg, bool netsync)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", i->name);
	char busy[LINK_OP_ID_MAX + 1];
	struct kerr err;
	sqlite3_stmt *st;
	int rc;

	if (op_busy(target, busy, sizeof(busy)))
		return http_reply_error(req, 409, NULL, "instance %s is busy with operation %s",
					i->name, busy);
	if (change(i->spec, arg, &err) < 0)
		return http_reply_kerr(req, &err);
	st = db_prepare(ctl.db, "UPDATE instances SET spec = ?, updated_at = ? WHERE id = ?");
	sqlite3_bind_text(st, 1, json_text(i->spec), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, now_ms());
	sqlite3_bind_int64(st, 3, i->id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	if (netsync)
		netsync_all();
	return http_reply_json(req, 200, instance_get_json(i->name, false));
}

static int labels_set(struct json_object *spec, struct json_object *labels, struct kerr *err)
{
	json_object_object_add(spec, "labels", json_object_get(labels));
	return 0;
}

static enum MHD_Result patch_labels(struct request *req, struct inst *i, struct json_object *labels)
{
	return spec_update(req, i, labels_set, labels, false);
}

/* HA on or off, or its priority (ha.c checks the disks); the agents learn it from
 * the HA list on the shared pool, so nothing is sent to the host. */
static enum MHD_Result patch_ha(struct request *req, struct inst *i, struct json_object *ha)
{
	return spec_update(req, i, ha_spec_set, ha, false);
}

/* A NIC's security groups and port security: the spec, then the hosts' documents. */
static enum MHD_Result patch_nics(struct request *req, struct inst *i, struct json_object *nics)
{
	return spec_update(req, i, nics_patch_apply, nics, true);
}

static enum MHD_Result patch_balloon(struct request *req, struct inst *i, int64_t target)
{
	struct json_object *mem = json_object_object_get(i->spec, "memory"), *args;
	int64_t mn = json_get_int(mem, "min_mb", 0), mx = json_get_int(mem, "max_mb", 0);

	if (mx == 0)
		return http_reply_error(req, 409, "memory.target_mb",
					"instance %s has static memory; a balloon target needs "
					"min_mb..max_mb",
					i->name);
	if (target < mn || target > mx)
		return http_reply_error(req, 400, "memory.target_mb",
					"memory.target_mb must be within %lld..%lld", (long long)mn,
					(long long)mx);
	if (strcmp(i->state, "running"))
		return http_reply_error(req, 409, NULL,
					"instance %s is %s; a balloon target needs it running",
					i->name, i->state);
	args = json_object_new_object();
	json_object_object_add(args, "target_mb", json_object_new_int64(target));
	return start_op(req, i, "balloon", args, NULL, 0);
}

/* vCPUs, memory and disk growth: only while stopped, and only if the host has room. */
static enum MHD_Result patch_resources(struct request *req, struct inst *i,
				       struct json_object *body)
{
	struct json_object *spec = json_tokener_parse(json_text(i->spec)), *v, *args;
	struct sched_request sr = {0};
	struct sched_params params = {ctl.cfg.cpu_ratio, ctl.cfg.mem_ratio, SCHED_SPREAD};
	struct json_object *placement = NULL;
	struct kerr err;
	char reason[160];
	int64_t new_mem;
	int new_vcpus;

	if (strcmp(i->state, "stopped") && strcmp(i->state, "crashed")) {
		json_object_put(spec);
		return http_reply_error(
			req, 409, NULL,
			"instance %s is %s; vCPUs, memory and disks change while it "
			"is stopped",
			i->name, i->state);
	}
	if (json_object_object_get_ex(body, "vcpus", &v))
		json_object_object_add(spec, "vcpus", json_object_get(v));
	if (json_object_object_get_ex(body, "memory", &v))
		json_object_object_add(spec, "memory", json_object_get(v));
	if (json_object_object_get_ex(body, "disks", &v)) {
		struct json_object *disks = json_object_object_get(spec, "disks");

		for (size_t k = 0; k < json_array_len(v); k++) {
			struct json_object *want = json_object_array_get_idx(v, k), *d = NULL;
			const char *dn = json_get_str(want, "name", "");
			int64_t mb = json_get_int(want, "size_mb", 0);

			for (size_t j = 0; disks && j < json_array_len(disks); j++)
				if (!strcmp(json_get_str(json_object_array_get_idx(disks, j),
							 "name", ""),
					    dn))
					d = json_object_array_get_idx(disks, j);
			if (d == NULL) {
				json_object_put(spec);
				return http_reply_error(req, 404, "disks",
							"instance %s has no disk %s", i->name, dn);
			}
			if (mb < json_get_int(d, "size_mb", 0)) {
				json_object_put(spec);
				return http_reply_error(
					req, 400, "disks",
					"disk %s can only grow: %lld MiB is smaller "
					"than its %lld MiB",
					dn, (long long)mb,
					(long long)json_get_int(d, "size_mb", 0));
			}
			json_object_object_add(d, "size_mb", json_object_new_int64(mb));
		}
	}
	new_vcpus = (int)json_get_int(spec, "vcpus", 1);
	new_mem = spec_memory_mb(spec);
	/* Room on its own host, not counting what the instance holds already. */
	if (i->host) {
		struct sched_host sh = {0};
		int64_t id = i->host->id;

		sr.vcpus = new_vcpus - i->vcpus;
		sr.memory_mb = new_mem - i->memory_mb;
		(void)placement;
		(void)err;
		sh.name = i->host->name;
		sh.online = true;
		sh.cpus = (int)json_get_int(i->host->facts, "cpus", 0);
		sh.memory_mb = json_get_int(i->host->facts, "memory_mb", 0);
		{
			sqlite3_stmt *st = db_prepare(ctl.db, "SELECT coalesce(sum(vcpus), 0), "
							      "coalesce(sum(memory_mb), 0) FROM "
							      "instances WHERE host_id = ?");

			sqlite3_bind_int64(st, 1, id);
			sqlite3_step(st);
			sh.vcpus_used = sqlite3_column_int(st, 0);
			sh.memory_used_mb = sqlite3_column_int64(st, 1);
			sqlite3_finalize(st);
		}
		if (!sched_host_fits(&sr, &params, &sh, reason, sizeof(reason))) {
			json_object_put(spec);
			return http_reply_error(req, 422, NULL,
						"host %s cannot take the change: %s", sh.name,
						reason);
		}
	}
	args = json_object_new_object();
	for (const char *const *k = (const char *const[]){"vcpus", "memory", "disks", NULL}; *k;
	     k++)
		if (json_object_object_get_ex(body, *k, &v))
			json_object_object_add(args, *k, json_object_get(v));
	{
		struct json_object *wrapped = json_object_new_object();

		json_object_object_add(wrapped, "changes", args);
		args = wrapped;
	}
	json_object_put(i->spec);
	i->spec = spec; /* the agent gets the new spec; the database takes it on success */
	return start_op(req, i, "update", args, NULL, 0);
}

enum MHD_Result api_instance_patch(struct request *req)
{
	struct json_object *body, *mem, *labels, *nics, *ha;
	enum MHD_Result ret;
	struct kerr err;
	struct inst *i;

	if (http_body_json(req, patch_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	i = path_inst(req, &ret);
	if (i == NULL) {
		json_object_put(body);
		return ret;
	}
	mem = json_object_object_get(body, "memory");
	labels = json_object_object_get(body, "labels");
	nics = json_object_object_get(body, "nics");
	ha = json_object_object_get(body, "ha");
	if (ha && json_object_object_length(body) == 1) {
		ret = patch_ha(req, i, ha);
	} else if (ha) {
		ret = http_reply_error(req, 400, "ha", "ha is changed on its own");
	} else if (mem && json_object_object_get_ex(mem, "target_mb", NULL)) {
		if (json_object_object_length(body) != 1)
			ret = http_reply_error(req, 400, "memory.target_mb",
					       "a balloon target is changed on its own");
		else
			ret = patch_balloon(req, i, json_get_int(mem, "target_mb", 0));
	} else if (nics && json_object_object_length(body) == 1) {
		ret = patch_nics(req, i, nics);
	} else if (nics) {
		ret = http_reply_error(req, 400, "nics", "nics are changed on their own");
	} else if (labels && json_object_object_length(body) == 1) {
		ret = patch_labels(req, i, labels);
	} else if (labels) {
		ret = http_reply_error(req, 400, "labels",
				       "labels are changed on their own, not with resources");
	} else if (json_object_object_length(body) == 0) {
		ret = http_reply_json(req, 200, instance_get_json(i->name, false));
	} else if (strcmp(json_get_str(i->spec, "type", "vm"), "vm")) {
		ret = http_reply_error(req, 400, NULL,
				       "%s is a container: only its labels and nics change; its "
				       "limits are set when it is created",
				       i->name);
	} else {
		ret = patch_resources(req, i, body);
	}
	json_object_put(body);
	inst_free(i);
	return ret;
}

/* ---- delete ---- */

static bool flag_query(struct request *req, const char *key, bool *out, enum MHD_Result *ret)
{
	const char *v = http_query(req, key);

	*out = false;
	if (v == NULL || !strcmp(v, "0") || !strcmp(v, "false"))
		return true;
	if (!strcmp(v, "1") || !strcmp(v, "true")) {
		*out = true;
		return true;
	}
	*ret = http_reply_error(req, 400, key, "query parameter '%s' must be 1 or 0", key);
	return false;
}

/* Cancel the operations still pending or running on target (caller's transaction). */
static void ops_cancel(const char *target, const char *why)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT id FROM operations WHERE target = ? AND "
					      "status IN ('pending', 'running')");

	sqlite3_bind_text(st, 1, target, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		_cleanup_free_ char *id = xstrdup((const char *)sqlite3_column_text(st, 0));

		op_update(id, "cancelled", -1, "cancelled", NULL, why);
	}
	sqlite3_finalize(st);
}

/*
 * ?force=1 on an instance whose host is offline: it becomes a tombstone (drift.c). Its
 * other operations are cancelled; an instance-delete operation waits, pending, for
 * the host to return, and is the first command its agent gets then. Meanwhile the
 * instance shows state "deleting" and "tombstone": true, its name and addresses stay
 * taken. Answers 202 with that operation, as any delete.
 */
static enum MHD_Result tombstone_instance(struct request *req, struct inst *i, bool keep)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", i->name);
	_cleanup_free_ char *phase = xasprintf("waiting for host %s to return", i->host->name);
	struct json_object *args, *res, *op, *ev;
	const char *id;
	struct kerr err;
	sqlite3_stmt *st;
	int rc;

	if (db_begin(ctl.db) < 0)
		return http_reply_error(req, 503, NULL, "the database is busy; try again");
	ops_cancel(target, "the instance was deleted while its host was offline");
	args = json_object_new_object();
	json_object_object_add(args, "keep_disks", json_object_new_boolean(keep));
	json_object_object_add(args, "force", json_object_new_boolean(1));
	res = json_object_new_object();
	json_object_object_add(res, "args", args);
	json_object_object_add(res, "tombstone", json_object_new_boolean(1));
	op = op_create("instance-delete", target, i->host, res, &err);
	if (op == NULL) {
		db_rollback(ctl.db);
		return http_reply_kerr(req, &err);
	}
	id = json_get_str(op, "id", "");
	op_update(id, NULL, -1, phase, NULL, NULL);
	st = db_prepare(ctl.db, "UPDATE instances SET state = 'deleting', desired = 'stopped', "
				"updated_at = ? WHERE id = ?");
	sqlite3_bind_int64(st, 1, now_ms());
	sqlite3_bind_int64(st, 2, i->id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(i->name));
	json_object_object_add(ev, "state", json_object_new_string("deleting"));
	json_object_object_add(ev, "previous", json_object_new_string(i->state));
	json_object_object_add(ev, "reason",
			       json_object_new_string("deleted while its host is offline"));
	json_object_object_add(ev, "tombstone", json_object_new_boolean(1));
	event_emit("instance-updated", ev);
	if (rc != SQLITE_DONE || db_commit(ctl.db, &err) < 0) {
		db_rollback(ctl.db);
		json_object_put(op);
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	}
	log_warnx("instance %s: tombstoned; host %s removes it when it returns", i->name,
		  i->host->name);
	ev = op_get(id);
	json_object_put(op);
	return http_reply_json(req, 202, ev);
}

/*
 * ?force=1 on a tombstone (its host is still away, maybe for good) or on an instance
 * whose host is gone: the controller forgets it at once (its operations are
 * cancelled), so a dead host cannot pin it forever. What a returning host still holds
 * shows up in its unmanaged list.
 */
static enum MHD_Result forget_instance(struct request *req, struct inst *i)
{
	_cleanup_free_ char *target = xasprintf("instances/%s", i->name);
	struct json_object *ev;
	sqlite3_stmt *st;
	int rc;

	if (db_begin(ctl.db) < 0)
		return http_reply_error(req, 503, NULL, "the database is busy; try again");
	ops_cancel(target, "the instance was forgotten while its host was offline");
	usage_forget(i->name);
	st = db_prepare(ctl.db, "DELETE FROM instances WHERE id = ?");
	sqlite3_bind_int64(st, 1, i->id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		db_rollback(ctl.db);
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	}
	if (db_commit(ctl.db, NULL) < 0)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	log_warnx("instance %s: forgotten while host %s is offline", i->name,
		  i->host ? i->host->name : "(gone)");
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(i->name));
	json_object_object_add(ev, "forgotten", json_object_new_boolean(1));
	event_emit("instance-deleted", ev);
	netsync_changed(NULL);
	return http_reply_empty(req, 204);
}

enum MHD_Result api_instance_delete(struct request *req)
{
	struct json_object *args;
	enum MHD_Result ret;
	bool force, keep;
	struct inst *i;

	if (!flag_query(req, "force", &force, &ret) || !flag_query(req, "keep_disks", &keep, &ret))
		return ret;
	i = path_inst(req, &ret);
	if (i == NULL)
		return ret;
	if (!force && !verb_state_allowed(VERB_DELETE, i->state)) {
		ret = http_reply_error(req, 409, NULL,
				       "instance %s is %s; stop it first or delete with ?force=1",
				       i->name, i->state);
		inst_free(i);
		return ret;
	}
	if (force && (i->host == NULL || i->host->state != HOST_ONLINE)) {
		if (i->host == NULL || instance_tombstoned(i->name))
			ret = forget_instance(req, i);
		else
			ret = tombstone_instance(req, i, keep);
		inst_free(i);
		return ret;
	}
	args = json_object_new_object();
	json_object_object_add(args, "keep_disks", json_object_new_boolean(keep));
	json_object_object_add(args, "force", json_object_new_boolean(force));
	ret = start_op_tx(req, i, "delete", args, "stopped", 0, deleting_set, NULL);
	inst_free(i);
	return ret;
}

/* ---- console ---- */

/* A request waiting on one agent query (its req->ctx): the answer, or why none came. */
struct query_wait {
	struct json_object *answer;
	char error[256];
};

/* A query's answer (or why there is none) into the waiting request, which resumes. */
static void query_answer_cb(struct json_object *body, const char *error, void *cls)
{
	struct request *req = cls;
	struct query_wait *w = req->ctx;

	if (body)
		w->answer = json_object_get(body);
	else
		snprintf(w->error, sizeof(w->error), "%s", error);
	http_resume(req);
}

/* The request is over, or its client left: the query is cancelled on its host. */
static void query_wait_free(struct request *req)
{
	struct query_wait *w = req->ctx;

	agentlink_query_cancel(req);
	json_object_put(w->answer);
	free(w);
}

/*
 * Send query q (consumed) to h and suspend req until its answer comes; resume then
 * answers from api_query_answer() / api_query_error(). timeout_ms 0: the link's
 * default. A watched request whose client leaves cancels the query (an exec is killed).
 */
void api_query_wait(struct request *req, struct host *h, struct json_object *q, int64_t timeout_ms,
		    enum MHD_Result (*resume)(struct request *req), bool watched)
{
	req->ctx = xcalloc(1, sizeof(struct query_wait));
	req->ctx_free = query_wait_free;
	if (timeout_ms)
		agentlink_query_timeout(h, q, timeout_ms, query_answer_cb, req);
	else
		agentlink_query(h, q, query_answer_cb, req);
	if (watched)
		http_suspend_watched(req, resume);
	else
		http_suspend(req, resume);
}

/* The agent's answer to req's query (borrowed), NULL when none came. */
struct json_object *api_query_answer(const struct request *req)
{
	const struct query_wait *w = req->ctx;

	return w ? w->answer : NULL;
}

/* Why req's query has no answer. */
const char *api_query_error(const struct request *req)
{
	const struct query_wait *w = req->ctx;

	if (w == NULL || req->client_gone)
		return "the client went away";
	return w->error;
}

/* Answer with the text an agent sent base64-encoded in the answer's "data" (what:
 * "console", "logs"), or 502 saying why there is none. */
enum MHD_Result api_query_text_reply(struct request *req, const char *what)
{
	struct MHD_Response *resp;
	size_t len;
	char *data;

	if (api_query_answer(req) == NULL)
		return http_reply_error(req, 502, NULL, "%s: %s", what, api_query_error(req));
	data = base64_decode(json_get_str(api_query_answer(req), "data", ""), &len);
	if (data == NULL)
		return http_reply_error(req, 502, NULL, "%s: the agent sent malformed data", what);
	resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
	return http_reply_response(req, 200, resp);
}

static enum MHD_Result console_answer(struct request *req)
{
	return api_query_text_reply(req, "console");
}

enum MHD_Result api_instance_console(struct request *req)
{
	struct json_object *q;
	enum MHD_Result ret;
	struct kerr err;
	int64_t bytes;
	struct inst *i;

	if (http_query_int(req, "bytes", 1, CONSOLE_MAX, CONSOLE_DEFAULT, &bytes, &err) < 0)
		return http_reply_kerr(req, &err);
	i = path_inst(req, &ret);
	if (i == NULL)
		return ret;
	if (i->host == NULL || i->host->state != HOST_ONLINE) {
		ret = http_reply_error(req, 503, NULL, "host of instance %s is offline", i->name);
		inst_free(i);
		return ret;
	}
	q = json_object_new_object();
	json_object_object_add(q, "what", json_object_new_string("console"));
	json_object_object_add(q, "name", json_object_new_string(i->name));
	json_object_object_add(q, "bytes", json_object_new_int64(bytes));
	api_query_wait(req, i->host, q, 0, console_answer, false);
	inst_free(i);
	return MHD_YES;
}

static enum MHD_Result console_input_answer(struct request *req)
{
	if (api_query_answer(req) == NULL)
		return http_reply_error(req, 502, NULL, "console: %s", api_query_error(req));
	return http_reply_empty(req, 204);
}

static int console_data_check(struct json_object *val, const char *field, struct kerr *err)
{
	size_t len = (size_t)json_object_get_string_len(val);

	if (len == 0 || len > CONSOLE_INPUT_MAX || strlen(json_object_get_string(val)) != len)
		return err_input(err, 400, field, "field '%s' must be 1-%d bytes without NUL",
				 field, CONSOLE_INPUT_MAX);
	return 0;
}

static const struct json_field console_input_fields[] = {
	{"data", JK_STRING, true, console_data_check},
	{NULL, 0, false, NULL},
};

/*
 * POST /api/v1/instances/{name}/console {"data": text}: type text into a running VM's
 * serial port (asked of its agent at once; not an operation). 204 once QEMU took it.
 */
enum MHD_Result api_instance_console_input(struct request *req)
{
	struct json_object *body = NULL, *q;
	enum MHD_Result ret;
	struct kerr err;
	struct inst *i;

	if (http_body_json(req, console_input_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	i = path_inst(req, &ret);
	if (i == NULL) {
		json_object_put(body);
		return ret;
	}
	if (strcmp(json_get_str(i->spec, "type", ""), "vm") != 0 ||
	    strcmp(i->state, "running") != 0 || i->host == NULL || i->host->state != HOST_ONLINE) {
		if (strcmp(json_get_str(i->spec, "type", ""), "vm") != 0)
			ret = http_reply_error(
				req, 400, "name",
				"%s is a container: it has no serial port (use exec)", i->name);
		else if (strcmp(i->state, "running") != 0)
			ret = http_reply_error(req, 409, NULL, "VM %s is %s, not running", i->name,
					       i->state);
		else
			ret = http_reply_error(req, 503, NULL, "host of instance %s is offline",
					       i->name);
		inst_free(i);
		json_object_put(body);
		return ret;
	}
	q = json_object_new_object();
	json_object_object_add(q, "what", json_object_new_string("console-input"));
	json_object_object_add(q, "name", json_object_new_string(i->name));
	json_object_object_add(q, "data", json_object_get(json_object_object_get(body, "data")));
	api_query_wait(req, i->host, q, 0, console_input_answer, false);
	inst_free(i);
	json_object_put(body);
	return MHD_YES;
}

/*
 * GET /api/v1/instances/{name}/console/ws and .../vnc/ws: a running VM's serial console
 * or screen as a WebSocket (console_relay.c). 400 for a container, 409 unless running,
 * 503 if its host is offline.
 */
static enum MHD_Result console_ws(struct request *req, bool vnc)
{
	enum MHD_Result ret;
	struct inst *i = path_inst(req, &ret);

	if (i == NULL)
		return ret;
	if (strcmp(json_get_str(i->spec, "type", ""), "vm") != 0)
		ret = http_reply_error(
			req, 400, "name",
			"%s is a container: it has no serial port or screen (use logs and exec)",
			i->name);
	else if (strcmp(i->state, "running") != 0)
		ret = http_reply_error(req, 409, NULL, "VM %s is %s, not running", i->name,
				       i->state);
	else if (i->host == NULL || i->host->state != HOST_ONLINE)
		ret = http_reply_error(req, 503, NULL, "host of instance %s is offline", i->name);
	else
		ret = console_relay_open(req, i->host->name, i->name, vnc);
	inst_free(i);
	return ret;
}

enum MHD_Result api_instance_console_ws(struct request *req)
{
	return console_ws(req, false);
}

enum MHD_Result api_instance_vnc_ws(struct request *req)
{
	return console_ws(req, true);
}

/* GET /api/v1/instances/{name}/metrics: the last hour of its use (usage.c). */
enum MHD_Result api_instance_metrics(struct request *req)
{
	struct json_object *out;
	enum MHD_Result ret;
	struct inst *i = path_inst(req, &ret);

	if (i == NULL)
		return ret;
	out = usage_json(i->name);
	inst_free(i);
	return http_reply_json(req, 200, out);
}

/* ---- snapshots ---- */

static const struct json_field snapshot_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"with_memory", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};

static int snapshot_lookup(int64_t iid, const char *name, bool *with_memory, char *state,
			   size_t len)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT with_memory, state FROM snapshots WHERE "
					      "instance_id = ? AND name = ?");
	int found;

	sqlite3_bind_int64(st, 1, iid);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	found = sqlite3_step(st) == SQLITE_ROW;
	if (found) {
		*with_memory = sqlite3_column_int(st, 0) != 0;
		snprintf(state, len, "%s", sqlite3_column_text(st, 1));
	}
	sqlite3_finalize(st);
	return found ? 0 : -1;
}

enum MHD_Result api_snapshots_create(struct request *req)
{
	struct json_object *body, *args;
	enum MHD_Result ret;
	struct kerr err;
	struct inst *i;
	const char *sname;
	bool mem, dummy;
	char state[16];

	if (http_body_json(req, snapshot_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	i = path_inst(req, &ret);
	if (i == NULL) {
		json_object_put(body);
		return ret;
	}
	sname = json_get_str(body, "name", "");
	mem = json_get_bool(body, "with_memory", false);
	if (strspn(sname, "0123456789") == strlen(sname)) {
		/* QEMU's savevm/loadvm would take an all-digit name for a snapshot id. */
		json_object_put(body);
		inst_free(i);
		return http_reply_error(req, 400, "name", "a snapshot name cannot be all digits");
	}
	if (snapshot_lookup(i->id, sname, &dummy, state, sizeof(state)) == 0)
		ret = http_reply_error(req, 409, "name", "instance %s has a snapshot %s already",
				       i->name, sname);
	else if (!verb_state_allowed(VERB_SNAPSHOT_CREATE, i->state))
		ret = http_reply_error(req, 409, NULL,
				       "instance %s is %s; snapshots need it running, "
				       "paused or stopped",
				       i->name, i->state);
	else if (mem && strcmp(i->state, "running") && strcmp(i->state, "paused"))
		ret = http_reply_error(req, 409, "with_memory",
				       "instance %s is %s; with_memory needs it running", i->name,
				       i->state);
	else {
		args = json_object_new_object();
		json_object_object_add(args, "snapshot", json_object_new_string(sname));
		json_object_object_add(args, "with_memory", json_object_new_boolean(mem));
		struct snapshot_new sn = {sname, mem};

		ret = start_op_tx(req, i, "snapshot-create", args, NULL, 0, snapshot_insert, &sn);
	}
	json_object_put(body);
	inst_free(i);
	return ret;
}

enum MHD_Result api_snapshots_list(struct request *req)
{
	struct json_object *list, *out;
	enum MHD_Result ret;
	struct inst *i = path_inst(req, &ret);
	sqlite3_stmt *st;

	if (i == NULL)
		return ret;
	list = json_object_new_array();
	st = db_prepare(ctl.db, "SELECT name, with_memory, state, created_at FROM snapshots WHERE "
				"instance_id = ? ORDER BY created_at, id");
	sqlite3_bind_int64(st, 1, i->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(
			o, "name",
			json_object_new_string((const char *)sqlite3_column_text(st, 0)));
		json_object_object_add(o, "with_memory",
				       json_object_new_boolean(sqlite3_column_int(st, 1)));
		json_object_object_add(
			o, "state",
			json_object_new_string((const char *)sqlite3_column_text(st, 2)));
		json_object_object_add(o, "created_at",
				       json_object_new_int64(sqlite3_column_int64(st, 3)));
		json_object_array_add(list, o);
	}
	sqlite3_finalize(st);
	out = json_object_new_object();
	json_object_object_add(out, "snapshots", list);
	inst_free(i);
	return http_reply_json(req, 200, out);
}

static enum MHD_Result snapshot_op(struct request *req, const char *action)
{
	struct json_object *args;
	enum MHD_Result ret;
	struct inst *i;
	bool mem;
	char state[16];

	if (!name_valid(req->params[1]))
		return http_reply_error(
			req, 400, "snapshot",
			"snapshot name must be 1-63 characters of a-z, 0-9 and '-'");
	if (req->body_len > 0) {
		struct json_object *body;
		struct kerr err;

		if (http_body_json(req, no_fields, &body, &err) < 0)
			return http_reply_kerr(req, &err);
		json_object_put(body);
	}
	i = path_inst(req, &ret);
	if (i == NULL)
		return ret;
	if (snapshot_lookup(i->id, req->params[1], &mem, state, sizeof(state)) < 0)
		ret = http_reply_error(req, 404, NULL, "instance %s has no snapshot %s", i->name,
				       req->params[1]);
	else if (strcmp(state, "ready"))
		ret = http_reply_error(req, 409, NULL, "snapshot %s is %s", req->params[1], state);
	else if (!verb_state_allowed(verb_find(action), i->state))
		ret = http_reply_error(req, 409, NULL, "instance %s is %s", i->name, i->state);
	else {
		args = json_object_new_object();
		json_object_object_add(args, "snapshot", json_object_new_string(req->params[1]));
		json_object_object_add(args, "with_memory", json_object_new_boolean(mem));
		ret = start_op(req, i, action, args, NULL, 0);
	}
	inst_free(i);
	return ret;
}

enum MHD_Result api_snapshot_revert(struct request *req)
{
	return snapshot_op(req, "snapshot-revert");
}

enum MHD_Result api_snapshot_delete(struct request *req)
{
	return snapshot_op(req, "snapshot-delete");
}
