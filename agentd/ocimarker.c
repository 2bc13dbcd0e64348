/*
 * ocimarker.c - a container's stop marker (oci.c): the file "stop" in its directory
 * that tells the shim not to restart it, and every later refresh (this agent's or the
 * next one's) that it was stopped, not crashed.
 *
 * It is put at once, so the shim sees it before the container's init gets its signal,
 * and made durable before the stop is answered, as a power cut must not turn a stopped
 * container into a crashed one. Its two fsyncs run on the agent's lane
 * (work_file_put()), not on the loop, where they held every command, heartbeat and QMP
 * event behind them; the exit waits for them (oci_marker_exit()).
 *
 * A marker that could not be made durable (the local pool's disk failed a write or an
 * fsync) fails the stop verb with that reason (oci_marker_stop_error()): the container
 * is stopped, but the user learns that this host's disk lost what it was told to keep.
 * A restart, a delete or a cold migration go on: they drop the marker anyway.
 */
#include "agentd.h"

#include <errno.h>
#include <string.h>

#include "util.h"

struct marker_sync {
	struct work_put put; /* first: common/work.h's job */
	struct agent *a;
	char name[NAME_MAX_LEN + 1];
	uint64_t gen;
};

/* ctr's newest marker is not durable: why, for the stop's answer. */
static void marker_failed(struct ctr *ctr, const char *why)
{
	log_warnx("container %s: the stop marker is not durable: %s", ctr->inst.name, why);
	snprintf(ctr->marker_error, sizeof(ctr->marker_error),
		 "container %s stopped, but its stop marker is not on disk (%s): after a "
		 "power cut this host would report it crashed, not stopped",
		 ctr->inst.name, why);
}

static void marker_synced(struct work *w)
{
	struct marker_sync *m = (struct marker_sync *)w;
	struct ctr *ctr = m->a->stopping ? NULL : oci_find(m->a, m->name);

	/* Not this container's newest marker (or it is gone): nothing waits for it. */
	if (ctr && ctr->marker_gen == m->gen) {
		if (w->ret < 0)
			marker_failed(ctr, w->err.msg); /* err_set() named errno's error */
		ctr->marker_gen = 0;
		if (ctr->exit_owed) {
			ctr->exit_owed = false;
			inst_exit_waiters_call(&ctr->inst, NULL);
		}
	}
	free(m);
}

/*
 * Put ctr's stop marker now (on the loop: a small file on the local pool) and queue its
 * fsyncs on the agent's lane. A marker that cannot be written at all is a failed one
 * (oci_marker_stop_error()): -1, and the shim cannot see it.
 */
int oci_marker_put(struct ctr *ctr)
{
	static uint64_t gens; /* unique: a container made anew has another's name */
	struct agent *a = ctr->inst.agent;
	struct marker_sync *m = xcalloc(1, sizeof(*m));
	_cleanup_free_ char *path = xasprintf("%s/stop", ctr->inst.dir);
	char why[PATH_MAX + 64];
	int ret;

	ctr->marker_error[0] = '\0';
	m->put.w.done = marker_synced;
	m->a = a;
	snprintf(m->name, sizeof(m->name), "%s", ctr->inst.name);
	m->gen = ++gens;
	ret = work_file_put(a->lane, &m->put, path, "stop\n", 5, 0600);
	if (ret < 0) {
		snprintf(why, sizeof(why), "cannot write %s: %s", path, strerror(-ret));
		marker_failed(ctr, why);
		free(m);
		ctr->marker_gen = 0;
		return -1;
	}
	ctr->marker_gen = m->gen;
	return 0;
}

/*
 * ctr's process is gone: its exit waiters are told now, or once its marker's fsyncs
 * are done (the stop is never answered before its marker is durable or known not to
 * be).
 */
void oci_marker_exit(struct ctr *ctr)
{
	if (ctr->marker_gen) {
		ctr->exit_owed = true;
		return;
	}
	inst_exit_waiters_call(&ctr->inst, NULL);
}

/* A fresh start: no marker, nothing owed; a sync still on the lane concerns nobody. */
void oci_marker_forget(struct ctr *ctr)
{
	ctr->marker_gen = 0;
	ctr->exit_owed = false;
	ctr->marker_error[0] = '\0';
}

/*
 * Why a stop that ended with ctr stopped must fail: its newest marker could not be
 * made durable (the disk's error, naming the file). NULL when it is durable.
 */
const char *oci_marker_stop_error(const struct ctr *ctr)
{
	return ctr->marker_error[0] ? ctr->marker_error : NULL;
}
