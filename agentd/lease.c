/*
 * lease.c - this host's HA storage lease (common/lease.h) and what its fencer needs.
 *
 * A thread of its own renews the lease every second: the libuv pool is shared with
 * image checks, layer unpacking and fact collection, and a renewal queued behind them
 * on a loaded host would look like a dead host to the controller. Each renewal:
 *   - rewrites the record {shared}/ha/leases/HOST in place with the next counter,
 *     fdatasyncs it and reads it back; only a record that reads back as written
 *     counts;
 *   - then writes {state}/ha/alive (fence.h), which moves kumo-fencer's deadline on;
 *   - copies the controller's HA list ({shared}/ha/instances.json) to
 *     {state}/ha/instances.json, so the fencer knows instances made HA after they
 *     were created here even when the pool is gone.
 * It does not renew while the live controller says it has not heard this host for
 * LEASE_UNHEARD_MS ({shared}/ha/view.json): a host cut off from the controller but
 * not from the pool fences itself, and only then may it be restarted elsewhere.
 * When the view lists this host as released (in maintenance, every HA workload
 * handed off), it writes one last record with released=1 and stops renewing until
 * the view no longer lists it (maintenance ended: re-armed).
 * The thread renews only while the loop is alive: the loop's timer stamps
 * loop_tick every second, and a stamp older than LOOP_STALE_MS stops the renewals,
 * so a wedged agent is fenced like a dead one. A renewal that hangs (a dead NFS
 * server) stops the renewals too, which is what the fencer watches for.
 *
 * At start-up, before any VM or container is adopted, lease_startup_fence() kills
 * this host's HA workloads if the agent was away longer than the fence deadline: the
 * controller may have restarted them elsewhere, and they must never run twice.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fence.h"
#include "json.h"
#include "lease.h"
#include "util.h"

#define LEASE_EVERY_MS 1000
#define LOOP_STALE_MS  3000
#define HA_LIST_MAX    (4 * 1024 * 1024)

struct lease_state {
	uv_timer_t timer; /* stamps loop_tick */
	pthread_t thread;
	atomic_bool stop;
	atomic_int refs;	  /* the thread and the timer handle: the last one frees */
	atomic_llong loop_tick;	  /* lease_mono_ms() of the loop's last timer run */
	atomic_llong reachable;	  /* lease_mono_ms() of the last good renewal, or of the last
				   * one skipped only because the controller does not hear us
				   * (the pool itself was not the problem), or the start */
	bool silent;		  /* heartbeats held back: fenced (logged once) */
	atomic_bool ever_renewed; /* a host without a working pool never fences */
	char host[64];
	char lease_dir[PATH_MAX], lease_path[PATH_MAX], list_path[PATH_MAX];
	char state_dir[PATH_MAX];
	char view_path[PATH_MAX];
	uint64_t generation, counter;
	bool failing;	    /* the last renewal failed (logged once) */
	bool unheard;	    /* the controller does not hear us: not renewing (logged once) */
	bool want_released; /* the controller's view says: in maintenance, handed off */
	bool released;	    /* the record on the pool says released=1: not renewing */
	int64_t view_counter, view_moved; /* the controller's view: its counter, and when
					   * (lease_mono_ms) it last moved */
};

/* Write, sync and read back the record. Returns 0 or -1 with why. */
static int renew(struct lease_state *ls, const char *record, char *why, size_t len)
{
	char back[LEASE_RECORD_LEN];
	int fd, ret;

	ret = mkdir_p(ls->lease_dir, 0755);
	if (ret < 0) {
		snprintf(why, len, "cannot create %s: %s", ls->lease_dir, strerror(-ret));
		return -1;
	}
	fd = open(ls->lease_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		goto fail;
	if (pwrite(fd, record, LEASE_RECORD_LEN, 0) != LEASE_RECORD_LEN || fdatasync(fd) < 0 ||
	    pread(fd, back, sizeof(back), 0) != (ssize_t)sizeof(back)) {
		int saved = errno;

		close(fd);
		errno = saved;
		goto fail;
	}
	close(fd);
	if (memcmp(back, record, sizeof(back))) {
		snprintf(why, len, "%s reads back other than written", ls->lease_path);
		return -1;
	}
	return 0;
fail:
	snprintf(why, len, "cannot renew %s: %s", ls->lease_path, strerror(errno));
	return -1;
}

/* What the live controller's view ({shared}/ha/view.json) says of this host. */
struct view_word {
	bool unheard; /* not heard for LEASE_UNHEARD_MS: stop renewing */
	int64_t unheard_ms;
	bool released; /* in maintenance with its HA workloads handed off */
};

/*
 * Read the view. A view that stopped moving (the controller is down) says nothing:
 * a controller outage must not fence every host, nor release or re-arm a lease.
 */
static bool view_read(struct lease_state *ls, struct view_word *w)
{
	struct json_object *view = json_object_from_file(ls->view_path), *v, *hosts;
	int64_t now = lease_mono_ms();
	bool live;

	memset(w, 0, sizeof(*w));
	if (view && json_object_object_get_ex(view, "counter", &v) &&
	    json_object_get_int64(v) != ls->view_counter) {
		ls->view_counter = json_object_get_int64(v);
		ls->view_moved = now;
	}
	live = view && now - ls->view_moved < 3000;
	if (live && json_object_object_get_ex(view, "unheard_ms", &hosts) &&
	    json_object_object_get_ex(hosts, ls->host, &v)) {
		w->unheard_ms = json_object_get_int64(v);
		w->unheard = w->unheard_ms >= LEASE_UNHEARD_MS;
	}
	if (live && json_object_object_get_ex(view, "released", &hosts) &&
	    json_object_object_get_ex(hosts, ls->host, &v))
		w->released = json_object_get_boolean(v);
	json_object_put(view);
	return live;
}

/* The file the fencer watches, and the HA list it fences by. */
static void fencer_files_write(struct lease_state *ls)
{
	_cleanup_free_ char *path = NULL, *list = NULL;
	char alive[32];
	size_t len;

	path = xasprintf("%s/" FENCE_ALIVE, ls->state_dir);
	snprintf(alive, sizeof(alive), "%lld\n", (long long)lease_mono_ms());
	if (file_write_replace(path, alive, strlen(alive), 0600) < 0)
		log_warn("lease: cannot write %s", path);
	free(path);
	path = xasprintf("%s/" FENCE_HA_LIST, ls->state_dir);
	if (file_read_all(ls->list_path, HA_LIST_MAX, &list, &len) == 0)
		file_write_replace(path, list, len, 0600);
}

/* One renewal and the files the fencer reads; on the lease thread. */
static void lease_once(struct lease_state *ls)
{
	struct lease_record rec = {0};
	char record[LEASE_RECORD_LEN], why[300] = "";
	struct view_word w;
	bool live = view_read(ls, &w);

	if (w.unheard) {
		if (!ls->unheard)
			log_warnx("lease: the controller has not heard this host for %lld ms: not "
				  "renewing, so its HA workloads are fenced here",
				  (long long)w.unheard_ms);
		ls->unheard = true;
		/* Heartbeats must go on: they are how the controller hears us again. */
		atomic_store(&ls->reachable, lease_mono_ms());
		return;
	}
	if (ls->unheard)
		log_info("lease: the controller hears this host again; renewing");
	ls->unheard = false;
	/* Released stays released while the view is stale: only the controller re-arms. */
	if (live)
		ls->want_released = w.released;
	if (ls->released && ls->want_released) {
		/* Maintenance: nothing HA runs here and nobody waits for this lease. The
		 * fencer is still fed, so an agent that dies now fences like before. */
		atomic_store(&ls->reachable, lease_mono_ms());
		fencer_files_write(ls);
		return;
	}
	snprintf(rec.host, sizeof(rec.host), "%s", ls->host);
	rec.generation = ls->generation;
	rec.counter = ++ls->counter;
	rec.fence_ms = FENCE_MS;
	rec.released = ls->want_released;
	lease_record_format(&rec, record);
	if (renew(ls, record, why, sizeof(why)) < 0) {
		if (!ls->failing)
			log_warnx("lease: %s", why);
		ls->failing = true;
		return;
	}
	if (ls->failing)
		log_info("lease: renewed again");
	ls->failing = false;
	if (rec.released != ls->released)
		log_info(rec.released ? "lease: released (maintenance: this host's HA workloads "
					"were handed off)"
				      : "lease: re-armed (maintenance ended)");
	ls->released = rec.released;
	atomic_store(&ls->reachable, lease_mono_ms());
	atomic_store(&ls->ever_renewed, true);
	fencer_files_write(ls);
}

static void *lease_thread(void *arg)
{
	struct lease_state *ls = arg;
	int64_t next = lease_mono_ms();

	while (!atomic_load(&ls->stop)) {
		int64_t now = lease_mono_ms();
		struct timespec pause;

		if (now >= next) {
			if (now - atomic_load(&ls->loop_tick) < LOOP_STALE_MS)
				lease_once(ls);
			next += LEASE_EVERY_MS;
			if (next <= now) /* a slow renewal: no burst to catch up */
				next = now + LEASE_EVERY_MS;
		}
		pause.tv_sec = 0;
		pause.tv_nsec = 100 * 1000000L;
		nanosleep(&pause, NULL);
	}
	if (atomic_fetch_sub(&ls->refs, 1) == 1)
		free(ls);
	return NULL;
}

static void loop_tick_cb(uv_timer_t *t)
{
	struct lease_state *ls = t->data;

	atomic_store(&ls->loop_tick, lease_mono_ms());
}

/*
 * Before the loop runs and before anything is adopted: if this agent last renewed
 * its lease longer ago than the fence deadline, kill this host's HA workloads (the
 * fencer has, unless it died with them; the controller may run them elsewhere).
 */
void lease_startup_fence(struct agent *a)
{
	int64_t age = fence_alive_age_ms(a->cfg->state_dir);
	int n;

	if (age < FENCE_MS)
		return;
	n = fence_workloads_kill(a->cfg->state_dir, a->cfg->local_pool,
				 "agent away past the fence deadline");
	if (n > 0)
		log_warnx("lease: last renewed %lld ms ago: killed %d HA process(es) before "
			  "adopting anything",
			  (long long)age, n);
}

/* Start renewing every second on the lease thread. Returns 0 or -1 with err. */
int lease_start(struct agent *a, struct kerr *err)
{
	struct lease_state *ls = xcalloc(1, sizeof(*ls));
	_cleanup_free_ char *dir = xasprintf("%s/" FENCE_DIR, a->cfg->state_dir);
	int ret;

	mkdir_p(dir, 0700);
	snprintf(ls->host, sizeof(ls->host), "%s", a->link.host);
	snprintf(ls->lease_dir, sizeof(ls->lease_dir), "%s/" LEASE_DIR, a->cfg->shared_pool);
	snprintf(ls->lease_path, sizeof(ls->lease_path), "%s/%s", ls->lease_dir, a->link.host);
	snprintf(ls->list_path, sizeof(ls->list_path), "%s/" LEASE_HA_LIST, a->cfg->shared_pool);
	snprintf(ls->view_path, sizeof(ls->view_path), "%s/" LEASE_VIEW, a->cfg->shared_pool);
	snprintf(ls->state_dir, sizeof(ls->state_dir), "%s", a->cfg->state_dir);
	ls->generation = (uint64_t)now_us();
	atomic_store(&ls->loop_tick, lease_mono_ms());
	atomic_store(&ls->reachable, lease_mono_ms());
	atomic_store(&ls->refs, 1);
	a->lease = ls;
	ret = uv_timer_init(a->loop, &ls->timer);
	if (ret < 0)
		return err_set(err, -ret, "cannot create the lease timer");
	ls->timer.data = ls;
	ret = uv_timer_start(&ls->timer, loop_tick_cb, 0, LEASE_EVERY_MS);
	if (ret < 0)
		return err_set(err, -ret, "cannot start the lease timer");
	atomic_store(&ls->refs, 2);
	ret = pthread_create(&ls->thread, NULL, lease_thread, ls);
	if (ret != 0) {
		atomic_store(&ls->refs, 1);
		return err_set(err, ret, "cannot start the lease thread");
	}
	pthread_detach(ls->thread);
	log_info("lease: renewing %s every %d ms (fence after %d ms)", ls->lease_path,
		 LEASE_EVERY_MS, FENCE_MS);
	return 0;
}

/*
 * May the agent send heartbeats? Not once the pool has refused its lease for the
 * fence deadline (storage lost, or the loop too wedged to let it renew): its fencer
 * has killed its HA workloads, and a host that loses only its storage must look
 * failed to the controller, or what was fenced here would be restarted nowhere.
 */
bool lease_heartbeat_allowed(struct agent *a)
{
	struct lease_state *ls = a->lease;
	int64_t age;

	/* A host whose pool never took a lease in this run has no lease the controller
	 * could trust either ("unprotected"): heartbeats are all it has. */
	if (ls == NULL || !atomic_load(&ls->ever_renewed))
		return true;
	age = lease_mono_ms() - atomic_load(&ls->reachable);
	if (age >= FENCE_MS) {
		if (!ls->silent)
			log_warnx("lease: not renewed for %lld ms: fenced; holding heartbeats "
				  "back",
				  (long long)age);
		ls->silent = true;
		return false;
	}
	if (ls->silent)
		log_info("lease: renewed again; heartbeats resume");
	ls->silent = false;
	return true;
}

static void lease_closed_cb(uv_handle_t *h)
{
	struct lease_state *ls = h->data;

	if (atomic_fetch_sub(&ls->refs, 1) == 1)
		free(ls);
}

/*
 * Stop renewing (the agent stops; its fencer fences after FENCE_MS). Never waits for
 * the thread, which may hang in a renewal on a dead pool: it ends by itself.
 */
void lease_stop(struct agent *a)
{
	struct lease_state *ls = a->lease;

	if (ls == NULL)
		return;
	a->lease = NULL;
	atomic_store(&ls->stop, true);
	uv_close((uv_handle_t *)&ls->timer, lease_closed_cb);
}
