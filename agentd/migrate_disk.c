/*
 * migrate_disk.c - local disks in a live migration (issue 13 items 2, 3): made on the
 * target, served by its QEMU's NBD server, mirrored there by the source.
 *
 * Target (migrate-in): each disk of the local pool is made empty with the spec's
 * size_mb (its virtual size; a linked clone over the same image of the shared pool),
 * QEMU starts -incoming defer -S, and after the TLS credentials nbd-server-start
 * listens on this host's underlay address on a port of its own (the same tls-creds:
 * the source's client certificate is verified) and block-export-add exports each
 * local disk writable (node dI as export dI). vmaction_resume() stops the server
 * before the guest's first cont.
 *
 * Source (migrate-out): an NBD client node per local disk (kumo-nbd-dI, TLS, checking
 * the target's address), blockdev-mirror to it (job kumo-mirror-dI; sync top for a
 * linked clone, full otherwise; speed from bandwidth_mbps), query-block-jobs until all
 * are ready (phase mirror-disks), then the memory moves (migrate.c). At the end the
 * mirrors stop with block-job-cancel: after the copy a ready mirror completes without
 * switching the source over (every write is on the target), and that happens before
 * the switchover report, so the target's nbd-server-stop comes after it (the other
 * order is an I/O error). On failure or cancel they are abandoned (force). Either way
 * the NBD nodes go (blockdev-del), so a later migration finds none.
 *
 * Chosen over QEMU's block migration (migrate with "blk"): deprecated, no progress per
 * disk, and the NBD path is the one measured here (issue 13 item 3).
 */
#include "agentd.h"

#include <string.h>

#include "json.h"
#include "migrate.h"
#include "util.h"

#define MIB (1024LL * 1024)

/* A disk of this host's local pool (not the shared one). */
bool migrate_disk_is_local(const struct agent *a, const struct vm_disk *d)
{
	return strcmp(d->root, a->cfg->shared_pool) != 0;
}

/*
 * How many of vm's disks are on this host's local pool: those a migration copies
 * over NBD (the shared ones are already where the target reads them). keep (or NULL)
 * gets, per disk, true for a shared one: the shape disk_remove() takes.
 */
size_t migrate_disks_local(const struct vm *vm, bool *keep)
{
	size_t n = 0;

	for (size_t i = 0; i < vm->ndisks; i++) {
		bool local = migrate_disk_is_local(vm->inst.agent, &vm->disks[i]);

		if (keep)
			keep[i] = !local;
		n += local;
	}
	return n;
}

/* A linked clone (its image is its backing file, on the shared pool), or NULL. */
struct json_object *migrate_disk_backing(struct json_object *spec, size_t i)
{
	struct json_object *d = json_object_array_get_idx(json_object_object_get(spec, "disks"), i);
	struct json_object *image = json_object_object_get(d, "image");

	if (image == NULL || !strcmp(json_get_str(d, "clone", "linked"), "full"))
		return NULL;
	return image;
}

/*
 * migrate-in: mark op's local disks to be made here (op->make, their images in
 * op->images: a linked clone over the same image of the shared pool, so only its own
 * layer is copied) and list them in fresh/images for disk_prepare(). Returns how many.
 */
size_t migrate_disks_plan(struct inst_op *op, struct vm_disk *fresh, const char **images)
{
	size_t n = 0;

	for (size_t i = 0; i < op->ndisks; i++) {
		struct json_object *image = migrate_disk_backing(op->spec, i);

		if (!migrate_disk_is_local(op->agent, &op->disks[i]))
			continue;
		op->make[i] = true;
		if (image)
			op->images[i] = xasprintf("%s/%s", op->agent->cfg->shared_pool,
						  json_get_str(image, "path", ""));
		images[n] = op->images[i];
		fresh[n++] = op->disks[i];
	}
	return n;
}

static bool want_make(struct inst_op *op, size_t i)
{
	return op->make[i];
}

static void in_made_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	/* A half-made file is removed on failure too. */
	if (!a->stopping)
		op->made[op->idx - 1] = true;
	instance_disk_done_cb(a, error, data);
}

static void in_make_one(struct inst_op *op, size_t i)
{
	struct json_object *d =
		json_object_array_get_idx(json_object_object_get(op->spec, "disks"), i);

	/* size_mb is the disk's virtual size: never below its image's (api_instances.c),
	 * and kept by every resize (instances.c). The mirror needs the sizes equal. */
	instance_op_progress(op, 20, "prepare-target");
	disk_create(op->agent, &op->disks[i], op->images[i], json_get_int(d, "size_mb", 0) * MIB,
		    false, in_made_cb, op);
}

/* migrate-in: make the disks migrate_disks_plan() marked, empty, then then(op). */
void migrate_disks_make(struct inst_op *op, op_step_fn then)
{
	instance_disks_each(op, want_make, in_make_one, then);
}

static void export_next(struct inst_op *op);

static void exported_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;
	char why[300];

	if (instance_op_gone(op))
		return;
	if (error) {
		snprintf(why, sizeof(why), "NBD export of disk %s: %s",
			 op->vm->disks[op->idx - 1].name, error);
		migrate_in_fail(op, why);
		return;
	}
	export_next(op);
}

/* Export the next local disk (its QEMU node dI, writable, under the same name). */
static void export_next(struct inst_op *op)
{
	struct json_object *args;
	char node[16], id[32];
	struct kerr err;

	while (op->idx < op->vm->ndisks &&
	       !migrate_disk_is_local(op->agent, &op->vm->disks[op->idx]))
		op->idx++;
	if (op->idx >= op->vm->ndisks) {
		migrate_incoming_send(op);
		return;
	}
	snprintf(node, sizeof(node), "d%zu", op->idx);
	snprintf(id, sizeof(id), "kumo-nbd-d%zu", op->idx);
	op->idx++;
	args = json_object_new_object();
	json_object_object_add(args, "type", json_object_new_string("nbd"));
	json_object_object_add(args, "id", json_object_new_string(id));
	json_object_object_add(args, "node-name", json_object_new_string(node));
	json_object_object_add(args, "name", json_object_new_string(node));
	json_object_object_add(args, "writable", json_object_new_boolean(true));
	if (vm_qmp(op->vm, "block-export-add", args, MIGRATE_QMP_TIMEOUT_MS, exported_cb, op,
		   &err) < 0)
		migrate_in_fail(op, err.msg);
}

static void nbd_started_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;
	char why[300];

	if (instance_op_gone(op))
		return;
	if (error) {
		snprintf(why, sizeof(why), "nbd-server-start: %s", error);
		migrate_in_fail(op, why);
		return;
	}
	/* Stopped before the guest runs here (vmaction_resume()), or with its QEMU. */
	op->vm->vm_nbd = true;
	op->idx = 0;
	export_next(op);
}

/*
 * Local disks: QEMU's NBD server on this host's underlay address, on a port of its
 * own for this migration, TLS with the same credentials as the memory stream (the
 * source's client certificate is verified), then each local disk exported writable.
 */
void migrate_nbd_start(struct inst_op *op)
{
	struct json_object *args = json_object_new_object(), *addr = json_object_new_object();
	struct json_object *inet = json_object_new_object();
	char id[64], host[64], port[8];
	const char *nbd = json_get_str(op->result, "nbd_uri", "") + strlen("tcp:");
	const char *colon = strrchr(nbd, ':');
	struct kerr err;

	snprintf(host, sizeof(host), "%.*s", colon ? (int)(colon - nbd) : 0, nbd);
	snprintf(port, sizeof(port), "%s", colon ? colon + 1 : "");
	json_object_object_add(inet, "host", json_object_new_string(host));
	json_object_object_add(inet, "port", json_object_new_string(port));
	json_object_object_add(addr, "type", json_object_new_string("inet"));
	json_object_object_add(addr, "data", inet);
	json_object_object_add(args, "addr", addr);
	migrate_creds_id(op, id, sizeof(id));
	json_object_object_add(args, "tls-creds", json_object_new_string(id));
	if (vm_qmp(op->vm, "nbd-server-start", args, MIGRATE_QMP_TIMEOUT_MS, nbd_started_cb, op,
		   &err) < 0)
		migrate_in_fail(op, err.msg);
}

bool migrate_mirrors_any(const struct outgoing *o)
{
	for (size_t i = 0; i < AGENT_VM_DISKS_MAX; i++)
		if (o->mirrored[i] || o->node_added[i])
			return true;
	return false;
}

/* ---- local disks: mirrored over NBD ------------------------------------------------------ */

static void job_name(char *out, size_t len, size_t i)
{
	snprintf(out, len, "kumo-mirror-d%zu", i);
}

static void node_name(char *out, size_t len, size_t i)
{
	snprintf(out, len, "kumo-nbd-d%zu", i);
}

/* Our mirror jobs in query-block-jobs' answer: counted, their bytes summed. */
static size_t jobs_scan(struct json_object *jobs, size_t *ready, int64_t *len, int64_t *left)
{
	size_t n = 0;

	*ready = 0;
	*len = *left = 0;
	for (size_t k = 0; jobs && k < json_array_len(jobs); k++) {
		struct json_object *j = json_object_array_get_idx(jobs, k);
		int64_t l = json_get_int(j, "len", 0), off = json_get_int(j, "offset", 0);

		if (strncmp(json_get_str(j, "device", ""), "kumo-mirror-", 12) != 0)
			continue;
		n++;
		*ready += json_get_bool(j, "ready", false);
		*len += l;
		*left += l > off ? l - off : 0;
	}
	return n;
}

static void stop_poll_cb(uv_timer_t *timer);

static void stop_jobs_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;
	size_t ready;
	int64_t len, left;
	char node[32];

	if (migrate_outgoing_gone(o))
		return;
	/* Gone, or a QEMU that will not say after a minute: go on without them. */
	if (ret && jobs_scan(ret, &ready, &len, &left) > 0 && ++o->mirror_polls < 240) {
		uv_timer_start(&o->timer, stop_poll_cb, MIGRATE_POLL_MS, 0);
		return;
	}
	if (ret == NULL || o->mirror_polls >= 240)
		log_warnx("vm %s: its mirrors did not end (%s); going on", o->vm->inst.name,
			  error ? error : "still there after a minute");
	for (size_t i = 0; i < AGENT_VM_DISKS_MAX; i++) {
		if (o->node_added[i]) {
			struct json_object *args = json_object_new_object();

			node_name(node, sizeof(node), i);
			json_object_object_add(args, "node-name", json_object_new_string(node));
			vm_qmp(o->vm, "blockdev-del", args, 0, NULL, NULL, NULL);
		}
		o->mirrored[i] = o->node_added[i] = false;
	}
	o->mirrors_stopping = false;
	o->after_mirrors(o);
}

static void stop_poll_cb(uv_timer_t *timer)
{
	struct outgoing *o = timer->data;

	if (migrate_outgoing_gone(o))
		return;
	if (vm_qmp(o->vm, "query-block-jobs", NULL, MIGRATE_QMP_TIMEOUT_MS, stop_jobs_cb, o, NULL) <
	    0)
		stop_jobs_cb(NULL, NULL, "QMP is not ready", o);
}

/*
 * End o's mirrors: after the copy (force false: a ready mirror completes without
 * switching the source over, so the target holds every write), or abandoned on a
 * failure (force true). Then their NBD nodes go and then(o) runs.
 */
void migrate_mirrors_stop(struct outgoing *o, bool force, void (*then)(struct outgoing *o))
{
	char job[32];

	o->mirrors_stopping = true;
	o->after_mirrors = then;
	o->mirror_polls = 0;
	uv_timer_stop(&o->timer);
	for (size_t i = 0; i < AGENT_VM_DISKS_MAX; i++) {
		struct json_object *args;

		if (!o->mirrored[i])
			continue;
		args = json_object_new_object();
		job_name(job, sizeof(job), i);
		json_object_object_add(args, "device", json_object_new_string(job));
		json_object_object_add(args, "force", json_object_new_boolean(force));
		vm_qmp(o->vm, "block-job-cancel", args, 0, NULL, NULL, NULL);
	}
	uv_timer_start(&o->timer, stop_poll_cb, 0, 0);
}

static void mirror_poll_cb(uv_timer_t *timer);

static void mirror_jobs_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;
	size_t n = 0, want = 0, ready;
	struct json_object *s;
	int64_t len, left;

	if (migrate_outgoing_gone(o))
		return;
	if (ret == NULL) {
		migrate_out_fail(o, "query-block-jobs: ", error);
		return;
	}
	if (o->cancel) {
		migrate_out_fail(o, "migration ", "cancelled");
		return;
	}
	for (size_t i = 0; i < AGENT_VM_DISKS_MAX; i++)
		want += o->mirrored[i];
	n = jobs_scan(ret, &ready, &len, &left);
	if (n < want) {
		migrate_out_fail(o, "",
				 "a mirror of a local disk ended before it was in sync (the target "
				 "or the network failed)");
		return;
	}
	o->disk_total = len;
	o->disk_remaining = left;
	if (ready == want) {
		o->mirrors_ready = true;
		log_info("vm %s: %zu local disk(s) in sync with the target (%lld bytes)",
			 o->vm->inst.name, want, (long long)len);
		migrate_memory_start(o);
		return;
	}
	if (now_ms() - o->reported_ms >= MIGRATE_REPORT_MS) {
		s = json_object_new_object();
		json_object_object_add(s, "status", json_object_new_string("mirror-disks"));
		json_object_object_add(s, "strategy", json_object_new_string(o->strategy));
		json_object_object_add(s, "disk_total", json_object_new_int64(len));
		json_object_object_add(s, "disk_remaining", json_object_new_int64(left));
		json_object_object_add(s, "ram_total", json_object_new_int64(0));
		json_object_object_add(s, "ram_transferred", json_object_new_int64(0));
		json_object_object_add(s, "ram_remaining", json_object_new_int64(0));
		json_object_put(o->stats);
		o->stats = s;
		migrate_progress_send(o, "mirror-disks",
				      len > 0 ? (int)(5 + 5 * (len - left) / len) : 5);
	}
	uv_timer_start(&o->timer, mirror_poll_cb, MIGRATE_POLL_MS, 0);
}

static void mirror_poll_cb(uv_timer_t *timer)
{
	struct outgoing *o = timer->data;
	struct kerr err;

	if (migrate_outgoing_gone(o))
		return;
	if (vm_qmp(o->vm, "query-block-jobs", NULL, MIGRATE_QMP_TIMEOUT_MS, mirror_jobs_cb, o,
		   &err) < 0)
		migrate_out_fail(o, "", err.msg);
}

void migrate_mirror_next(struct outgoing *o);

static void mirror_started_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;

	if (migrate_outgoing_gone(o))
		return;
	if (error) {
		migrate_out_fail(o, "blockdev-mirror: ", error);
		return;
	}
	o->mirrored[o->mirror_next - 1] = true;
	migrate_mirror_next(o);
}

static void nbd_added_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;
	size_t i = o->mirror_next - 1;
	int64_t mbps = json_get_int(o->op->args, "bandwidth_mbps", 0);
	struct json_object *args;
	char job[32], node[32], dev[16];
	struct kerr err;

	if (migrate_outgoing_gone(o))
		return;
	if (error) {
		migrate_out_fail(o, "the target's NBD server: ", error);
		return;
	}
	o->node_added[i] = true;
	job_name(job, sizeof(job), i);
	node_name(node, sizeof(node), i);
	snprintf(dev, sizeof(dev), "d%zu", i);
	args = json_object_new_object();
	json_object_object_add(args, "job-id", json_object_new_string(job));
	json_object_object_add(args, "device", json_object_new_string(dev));
	json_object_object_add(args, "target", json_object_new_string(node));
	/* A linked clone's image is on the shared pool, the target's backing file too:
	 * only the clone's own layer moves. */
	json_object_object_add(
		args, "sync",
		json_object_new_string(migrate_disk_backing(o->vm->inst.spec, i) ? "top" : "full"));
	/* A bandwidth limit holds for the disks too (bytes per second). */
	if (mbps > 0)
		json_object_object_add(args, "speed", json_object_new_int64(mbps * 1000000 / 8));
	if (vm_qmp(o->vm, "blockdev-mirror", args, MIGRATE_QMP_TIMEOUT_MS, mirror_started_cb, o,
		   &err) < 0)
		migrate_out_fail(o, "", err.msg);
}

/* Connect to the target's export of the next local disk, then mirror it there. */
void migrate_mirror_next(struct outgoing *o)
{
	const char *nbd = json_get_str(o->op->args, "nbd_uri", "") + strlen("tcp:");
	const char *colon = strrchr(nbd, ':');
	struct json_object *tls = json_object_object_get(o->op->args, "tls");
	struct json_object *args, *server;
	char node[32], host[64], dev[16], id[64];
	struct kerr err;
	size_t i;

	if (o->cancel) {
		migrate_out_fail(o, "migration ", "cancelled");
		return;
	}
	i = o->mirror_next;
	while (i < o->vm->ndisks && !migrate_disk_is_local(o->op->agent, &o->vm->disks[i]))
		i++;
	if (i >= o->vm->ndisks) {
		uv_timer_start(&o->timer, mirror_poll_cb, 0, 0);
		return;
	}
	o->mirror_next = i + 1;
	node_name(node, sizeof(node), i);
	snprintf(dev, sizeof(dev), "d%zu", i);
	snprintf(host, sizeof(host), "%.*s", colon ? (int)(colon - nbd) : 0, nbd);
	snprintf(id, sizeof(id), "%s", o->creds_id);
	server = json_object_new_object();
	json_object_object_add(server, "type", json_object_new_string("inet"));
	json_object_object_add(server, "host", json_object_new_string(host));
	json_object_object_add(server, "port", json_object_new_string(colon ? colon + 1 : ""));
	args = json_object_new_object();
	json_object_object_add(args, "driver", json_object_new_string("nbd"));
	json_object_object_add(args, "node-name", json_object_new_string(node));
	json_object_object_add(args, "server", server);
	json_object_object_add(args, "export", json_object_new_string(dev));
	json_object_object_add(args, "tls-creds", json_object_new_string(id));
	/* The target's certificate names its underlay address. */
	json_object_object_add(args, "tls-hostname",
			       json_object_new_string(json_get_str(tls, "hostname", host)));
	if (vm_qmp(o->vm, "blockdev-add", args, MIGRATE_QMP_TIMEOUT_MS, nbd_added_cb, o, &err) < 0)
		migrate_out_fail(o, "", err.msg);
}

/* ---- after a source agent restart ------------------------------------------------------- */

/* The mirrors an agent killed during mirror-disks left in its QEMU, being swept. */
struct mirror_sweep {
	struct agent *agent;
	char name[NAME_MAX_LEN + 1];
	size_t ndisks;
	int polls;
	uv_timer_t timer;
};

static void sweep_close_cb(uv_handle_t *handle)
{
	free(handle->data);
}

static void sweep_poll_cb(uv_timer_t *timer);

static void sweep_jobs_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct mirror_sweep *sw = data;
	struct vm *vm = sw->agent->stopping ? NULL : vm_find(sw->agent, sw->name);
	size_t ready;
	int64_t len, left;
	char node[32];

	if (vm == NULL || !vm_alive(vm)) {
		uv_close((uv_handle_t *)&sw->timer, sweep_close_cb);
		return;
	}
	/* A cancelled mirror ends within moments; a QEMU that will not say: go on. */
	if (ret && jobs_scan(ret, &ready, &len, &left) > 0 && ++sw->polls < 240) {
		uv_timer_start(&sw->timer, sweep_poll_cb, MIGRATE_POLL_MS, 0);
		return;
	}
	if (error)
		log_warnx("vm %s: query-block-jobs: %s", sw->name, error);
	/* The NBD client nodes: a node that is not there is an error nobody needs. */
	for (size_t i = 0; i < sw->ndisks; i++) {
		struct json_object *args = json_object_new_object();

		node_name(node, sizeof(node), i);
		json_object_object_add(args, "node-name", json_object_new_string(node));
		vm_qmp(vm, "blockdev-del", args, 0, NULL, NULL, NULL);
	}
	log_info("vm %s: the mirrors of its interrupted migration are gone", sw->name);
	uv_close((uv_handle_t *)&sw->timer, sweep_close_cb);
}

static void sweep_poll_cb(uv_timer_t *timer)
{
	struct mirror_sweep *sw = timer->data;
	struct vm *vm = sw->agent->stopping ? NULL : vm_find(sw->agent, sw->name);

	if (vm == NULL || vm_qmp(vm, "query-block-jobs", NULL, MIGRATE_QMP_TIMEOUT_MS,
				 sweep_jobs_cb, sw, NULL) < 0)
		uv_close((uv_handle_t *)&sw->timer, sweep_close_cb);
}

/*
 * vm was adopted mid-migration and its memory never moved (migrate.c): the last agent
 * may have left mirror jobs (kumo-mirror-dI) and NBD client nodes (kumo-nbd-dI) of its
 * mirror-disks phase in the QEMU. Each job is cancelled (force: the target's copy is
 * dropped), and once none is left the nodes are deleted, so a later migration of vm
 * can make them again. Runs on by itself; nothing waits for it.
 */
void migrate_mirrors_sweep(struct vm *vm)
{
	struct mirror_sweep *sw = xcalloc(1, sizeof(*sw));
	char job[32];

	sw->agent = vm->inst.agent;
	snprintf(sw->name, sizeof(sw->name), "%s", vm->inst.name);
	sw->ndisks = vm->ndisks;
	uv_timer_init(sw->agent->loop, &sw->timer);
	sw->timer.data = sw;
	for (size_t i = 0; i < vm->ndisks; i++) {
		struct json_object *args;

		if (!migrate_disk_is_local(vm->inst.agent, &vm->disks[i]))
			continue;
		args = json_object_new_object();
		job_name(job, sizeof(job), i);
		json_object_object_add(args, "device", json_object_new_string(job));
		json_object_object_add(args, "force", json_object_new_boolean(true));
		vm_qmp(vm, "block-job-cancel", args, 0, NULL, NULL, NULL);
	}
	uv_timer_start(&sw->timer, sweep_poll_cb, MIGRATE_POLL_MS, 0);
}
