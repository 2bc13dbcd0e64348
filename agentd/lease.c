/*
 * lease.c - this host's HA storage lease (common/lease.h) and what its fencer needs.
 *
 * Every second, off the loop (a pool may be NFS, and a hung server must cost a
 * thread, never the loop):
 *   - rewrite the lease record {shared}/ha/leases/HOST in place with the next
 *     counter, fdatasync it and read it back; only a record that reads back as
 *     written counts as a renewal;
 *   - read the controller's HA list ({shared}/ha/instances.json): which instances
 *     are HA, including those made HA after they were created here;
 *   - write {state}/ha/workloads, the pids of the HA workloads running here, then,
 *     only after a renewal, {state}/ha/alive (fence.h). kumo-fencer kills what the
 *     list names once alive is FENCE_MS old: storage lost, agent frozen or dead.
 * A job still running when the next second comes is not doubled up: a hung pool
 * means no renewals, which is exactly what the fencer watches for.
 *
 * At start-up, before any VM or container is adopted, lease_startup_fence() kills
 * the listed workloads if this agent was away longer than the fence deadline: the
 * controller may have restarted them elsewhere, and they must never run twice.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fence.h"
#include "json.h"
#include "lease.h"
#include "util.h"

#define LEASE_EVERY_MS 1000
#define HA_LIST_MAX    (4 * 1024 * 1024)

struct lease_state {
	struct agent *agent;
	uv_timer_t timer;
	bool busy;
	bool failing; /* the last renewal failed (logged once) */
	uint64_t generation, counter;
	struct json_object *ha; /* {NAME: true} from the controller's list */
};

struct lease_job {
	uv_work_t req;
	struct lease_state *ls;
	char lease_dir[PATH_MAX], lease_path[PATH_MAX], list_path[PATH_MAX];
	char state_dir[PATH_MAX];
	char record[LEASE_RECORD_LEN];
	char *workloads; /* "vm NAME PID" / "ct NAME SHIM_PID INIT_PID" lines */
	char *list_text; /* the HA list as read, or NULL */
	char error[256];
};

static bool is_ha(struct lease_state *ls, const char *name, struct json_object *spec)
{
	struct json_object *ha = json_object_object_get(spec, "ha");

	return json_object_object_get_ex(ls->ha, name, NULL) || json_get_bool(ha, "enabled", false);
}

/* The HA workloads running now, as lines the job completes with start times. */
static char *workloads_collect(struct lease_state *ls)
{
	struct agent *a = ls->agent;
	char *out = xstrdup(""), *next;

	for (struct vm *vm = a->vms; vm; vm = vm->next) {
		if (vm->pid <= 0 || !is_ha(ls, vm->name, vm->spec))
			continue;
		next = xasprintf("%svm %s %d\n", out, vm->name, (int)vm->pid);
		free(out);
		out = next;
	}
	for (struct ctr *c = a->ctrs; c; c = c->next) {
		if ((c->shim_pid <= 0 && c->pid <= 0) || !is_ha(ls, c->name, c->spec))
			continue;
		next = xasprintf("%sct %s %d %d\n", out, c->name, (int)c->shim_pid, (int)c->pid);
		free(out);
		out = next;
	}
	return out;
}

/* Write, sync and read back the record. Returns 0 or -1 with j->error. */
static int renew(struct lease_job *j)
{
	char back[LEASE_RECORD_LEN];
	int fd, ret;

	ret = mkdir_p(j->lease_dir, 0755);
	if (ret < 0) {
		snprintf(j->error, sizeof(j->error), "cannot create %s: %s", j->lease_dir,
			 strerror(-ret));
		return -1;
	}
	fd = open(j->lease_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		goto fail;
	if (pwrite(fd, j->record, sizeof(j->record), 0) != (ssize_t)sizeof(j->record) ||
	    fdatasync(fd) < 0 || pread(fd, back, sizeof(back), 0) != (ssize_t)sizeof(back)) {
		close(fd);
		goto fail;
	}
	close(fd);
	if (memcmp(back, j->record, sizeof(back))) {
		snprintf(j->error, sizeof(j->error), "%s reads back other than written",
			 j->lease_path);
		return -1;
	}
	return 0;
fail:
	snprintf(j->error, sizeof(j->error), "cannot renew %s: %s", j->lease_path, strerror(errno));
	return -1;
}

static void lease_work(uv_work_t *req)
{
	struct lease_job *j = req->data;
	_cleanup_free_ char *text = xstrdup(""), *dir = NULL, *path = NULL;
	char *line, *save = NULL, *next;
	size_t len;
	int renewed = renew(j);

	if (file_read_all(j->list_path, HA_LIST_MAX, &j->list_text, &len) < 0)
		j->list_text = NULL;
	/* The pids with their start times, so the fencer never kills a recycled pid. */
	for (line = strtok_r(j->workloads, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char kind[8], name[NAME_MAX_LEN + 1];
		int p1 = 0, p2 = 0, got = sscanf(line, "%7s %64s %d %d", kind, name, &p1, &p2);

		if (got == 3)
			next = xasprintf("%s%s %s %d %llu\n", text, kind, name, p1,
					 fence_pid_start(p1));
		else if (got == 4)
			next = xasprintf("%s%s %s %d %llu %d %llu\n", text, kind, name, p1,
					 fence_pid_start(p1), p2, fence_pid_start(p2));
		else
			continue;
		free(text);
		text = next;
	}
	dir = xasprintf("%s/" FENCE_DIR, j->state_dir);
	mkdir_p(dir, 0700);
	path = xasprintf("%s/" FENCE_WORKLOADS, j->state_dir);
	if (file_write_replace(path, text, strlen(text), 0600) < 0 && !j->error[0])
		snprintf(j->error, sizeof(j->error), "cannot write %s", path);
	/* Last, and only after a renewal: the fencer's deadline moves on. */
	if (renewed == 0) {
		char alive[32];

		free(path);
		path = xasprintf("%s/" FENCE_ALIVE, j->state_dir);
		snprintf(alive, sizeof(alive), "%lld\n", (long long)lease_mono_ms());
		file_write_replace(path, alive, strlen(alive), 0600);
	}
}

static void lease_done(uv_work_t *req, int status)
{
	struct lease_job *j = req->data;
	struct lease_state *ls = j->ls;
	struct json_object *doc, *arr;

	(void)status;
	ls->busy = false;
	if (ls->agent == NULL) { /* stopped meanwhile: the close left ls to us */
		free(j->workloads);
		free(j->list_text);
		free(j);
		free(ls);
		return;
	}
	if (j->error[0] && !ls->failing)
		log_warnx("lease: %s", j->error);
	else if (!j->error[0] && ls->failing)
		log_info("lease: renewed again");
	ls->failing = j->error[0] != '\0';
	doc = j->list_text ? json_tokener_parse(j->list_text) : NULL;
	if (doc && json_object_object_get_ex(doc, "instances", &arr) &&
	    json_object_is_type(arr, json_type_array)) {
		json_object_put(ls->ha);
		ls->ha = json_object_new_object();
		for (size_t i = 0; i < json_object_array_length(arr); i++)
			json_object_object_add(
				ls->ha, json_get_str(json_object_array_get_idx(arr, i), "name", ""),
				json_object_new_boolean(true));
	}
	json_object_put(doc);
	free(j->workloads);
	free(j->list_text);
	free(j);
}

static void lease_timer_cb(uv_timer_t *t)
{
	struct lease_state *ls = t->data;
	struct agent *a = ls->agent;
	struct lease_record rec = {0};
	struct lease_job *j;

	if (ls->busy || a->stopping)
		return;
	j = xcalloc(1, sizeof(*j));
	j->req.data = j;
	j->ls = ls;
	snprintf(j->lease_dir, sizeof(j->lease_dir), "%s/" LEASE_DIR, a->cfg->shared_pool);
	snprintf(j->lease_path, sizeof(j->lease_path), "%s/%s", j->lease_dir, a->link.host);
	snprintf(j->list_path, sizeof(j->list_path), "%s/" LEASE_HA_LIST, a->cfg->shared_pool);
	snprintf(j->state_dir, sizeof(j->state_dir), "%s", a->cfg->state_dir);
	snprintf(rec.host, sizeof(rec.host), "%s", a->link.host);
	rec.generation = ls->generation;
	rec.counter = ++ls->counter;
	rec.fence_ms = FENCE_MS;
	lease_record_format(&rec, j->record);
	j->workloads = workloads_collect(ls);
	ls->busy = true;
	uv_queue_work(a->loop, &j->req, lease_work, lease_done);
}

/*
 * Before the loop runs and before anything is adopted: if this agent last renewed
 * its lease longer ago than the fence deadline, kill the HA workloads it listed
 * (the fencer has, unless it died with them; the controller may run them elsewhere).
 */
void lease_startup_fence(struct agent *a)
{
	int64_t age = fence_alive_age_ms(a->cfg->state_dir);
	int n;

	if (age < FENCE_MS)
		return;
	n = fence_workloads_kill(a->cfg->state_dir, "agent away past the fence deadline");
	if (n > 0)
		log_warnx("lease: last renewed %lld ms ago: killed %d HA process(es) before "
			  "adopting anything",
			  (long long)age, n);
}

/* Start renewing every second; the first renewal runs at once. Returns 0 or -1. */
int lease_start(struct agent *a, struct kerr *err)
{
	struct lease_state *ls = xcalloc(1, sizeof(*ls));
	int ret;

	ls->agent = a;
	ls->generation = (uint64_t)now_us();
	ls->ha = json_object_new_object();
	a->lease = ls;
	ret = uv_timer_init(a->loop, &ls->timer);
	if (ret < 0)
		return err_set(err, -ret, "cannot create the lease timer");
	ls->timer.data = ls;
	ret = uv_timer_start(&ls->timer, lease_timer_cb, 0, LEASE_EVERY_MS);
	if (ret < 0)
		return err_set(err, -ret, "cannot start the lease timer");
	log_info("lease: renewing %s/" LEASE_DIR "/%s every %d ms (fence after %d ms)",
		 a->cfg->shared_pool, a->link.host, LEASE_EVERY_MS, FENCE_MS);
	return 0;
}

static void lease_closed_cb(uv_handle_t *h)
{
	struct lease_state *ls = h->data;

	json_object_put(ls->ha);
	ls->ha = NULL;
	if (!ls->busy)
		free(ls);
	else
		ls->agent = NULL; /* the job in flight frees it */
}

/* Stop renewing (the agent stops; its fencer fences after FENCE_MS). */
void lease_stop(struct agent *a)
{
	struct lease_state *ls = a->lease;

	if (ls == NULL)
		return;
	a->lease = NULL;
	uv_close((uv_handle_t *)&ls->timer, lease_closed_cb);
}
