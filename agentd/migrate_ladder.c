/*
 * migrate_ladder.c - the escalation ladder of a live migration (issue 13 item 4): what
 * the source does when pre-copy does not converge. Pure: it reads query-migrate's
 * statistics and says what to do next; migrate.c does it.
 *
 *   KVM  pre-copy with QEMU's auto-converge capability on (QEMU itself slows the vCPUs
 *        down once dirtying outpaces the copy: the capability cannot change while a
 *        migration runs, so it is on from the start and the ladder only notes when it
 *        bit, cpu-throttle-percentage > 0); after MIGRATE_LADDER_K iterations in a row
 *        that did not converge (the guest dirties faster than the copy sends, or what
 *        remains did not shrink), post-copy where allowed. "always": post-copy once
 *        the first pass is over (dirty-sync-count 2).
 *   TCG  post-copy at once where allowed: pre-copy crashed TCG guest kernels here
 *        (docs/architecture.md), and a post-copy started before any pass never relies
 *        on TCG's dirty tracking - every page is sent after the source stopped. A TCG
 *        guest without post-copy is paused first (migrate.c), never pre-copied.
 */
#include "agentd.h"

#include "migrate.h"

/* Did the iteration that just ended fail to converge? */
static bool not_converging(const struct ladder *l, const struct ladder_stats *s)
{
	double dirty_mbps =
		(double)s->dirty_pps * (double)(s->page_size ? s->page_size : 4096) * 8 / 1e6;

	return (s->mbps > 0 && dirty_mbps >= s->mbps) ||
	       (l->last_remaining > 0 && s->remaining >= l->last_remaining);
}

/*
 * One poll of an outgoing migration still in pre-copy (or just started): update l
 * from s and say whether post-copy starts now. Returns LADDER_POSTCOPY at most once.
 */
enum ladder_move migrate_ladder_next(struct ladder *l, const struct ladder_stats *s)
{
	if (l->postcopy_started || !l->postcopy_allowed) {
		if (s->throttle_pct > 0)
			l->throttled = true;
		return LADDER_STAY;
	}
	if (!l->kvm) {
		l->postcopy_started = true;
		return LADDER_POSTCOPY;
	}
	if (s->throttle_pct > 0)
		l->throttled = true;
	if (s->iterations > l->last_iteration) {
		/* The first sync (iteration 1) only starts the first pass. */
		if (l->last_iteration >= 1)
			l->stalled = not_converging(l, s) ? l->stalled + 1 : 0;
		l->last_iteration = s->iterations;
		l->last_remaining = s->remaining;
	}
	if ((l->postcopy_always && s->iterations >= 2) || l->stalled >= MIGRATE_LADDER_K) {
		l->postcopy_started = true;
		return LADDER_POSTCOPY;
	}
	return LADDER_STAY;
}

/* The steps l took, in order, for the result ("precopy", "auto-converge", "postcopy"). */
struct json_object *migrate_ladder_steps(const struct ladder *l)
{
	struct json_object *a = json_object_new_array();

	if (l->kvm || !l->postcopy_started)
		json_object_array_add(a, json_object_new_string("precopy"));
	if (l->throttled)
		json_object_array_add(a, json_object_new_string("auto-converge"));
	if (l->postcopy_started)
		json_object_array_add(a, json_object_new_string("postcopy"));
	return a;
}
