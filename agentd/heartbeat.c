/*
 * heartbeat.c - the agent's periodic duties, on one timer every heartbeat_s seconds:
 *
 *   - collect the host's facts (off the loop, facts.c) and send them to the controller
 *     as a heartbeat, which is also how the controller knows this host is online;
 *     the instances and their states (vm.c, oci.c) ride along; facts unchanged since
 *     the last beat go as their digest only (link.h);
 *   - inst_cron(), each driver's share: vm_cron() refreshes the VMs' disk sizes and
 *     notices adopted QEMUs that went away; oci_cron() reads the containers' states
 *     from their shims' files (exits, restarts) and measures their writable layers
 *     now and then.
 *
 * A beat whose facts are still being collected when the next one is due is not
 * doubled up: one more collection follows when it completes.
 */
#include "agentd.h"
#include "util.h"

static void beat_facts_cb(struct agent *a, struct json_object *facts, void *data)
{
	a->heartbeat_busy = false;
	if (a->stopping || facts == NULL)
		return;
	heartbeat_send(a, facts);
	if (a->heartbeat_again) {
		a->heartbeat_again = false;
		heartbeat_kick(a);
	}
}

/*
 * Send a heartbeat with freshly collected facts as soon as they are in, whatever the
 * timer says: used when something the facts show has changed (the KVM probe ran).
 */
void heartbeat_kick(struct agent *a)
{
	struct kerr err;

	if (a->stopping)
		return;
	if (a->heartbeat_busy) {
		a->heartbeat_again = true;
		return;
	}
	if (facts_collect_start(a, beat_facts_cb, NULL, &err) < 0) {
		log_warnx("heartbeat: %s", err.msg);
		return;
	}
	a->heartbeat_busy = true;
}

/*
 * Send a heartbeat carrying facts (borrowed; the instances are added to it) and the
 * advertised command address.
 */
void heartbeat_send(struct agent *a, struct json_object *facts)
{
	char digest[LINK_FACTS_DIGEST_LEN + 1];
	struct json_object *body, *instances;

	/* HA: a host fenced by its lease (lease.c) falls silent, so it is seen failed. */
	if (!lease_heartbeat_allowed(a))
		return;
	body = json_object_new_object();
	instances = inst_reports(a);
	usage_annotate(a, instances);
	json_object_object_add(facts, "instances", instances);
	json_object_object_add(facts, "instances_running",
			       json_object_new_int(inst_running_count(a)));

	net_status_add(a, facts);

	link_facts_digest(facts, digest);
	json_object_object_add(body, "addr", json_object_new_string(a->addr));
	json_object_object_add(body, "facts_digest", json_object_new_string(digest));
	/* Unchanged facts stay home (link.h): the controller keeps the ones it has. */
	if (strcmp(digest, a->heartbeat_digest) != 0 ||
	    now_ms() - a->heartbeat_full_ms >= LINK_FACTS_FULL_S * 1000) {
		json_object_object_add(body, "facts", json_object_get(facts));
		snprintf(a->heartbeat_digest, sizeof(a->heartbeat_digest), "%s", digest);
		a->heartbeat_full_ms = now_ms();
	} else {
		json_object_object_add(body, "uptime_s",
				       json_object_new_int64(json_get_int(facts, "uptime_s", 0)));
	}
	link_event_send(a, LINK_HEARTBEAT, NULL, body);
}

static void heartbeat_timer_cb(uv_timer_t *timer)
{
	inst_cron(timer->data);
	heartbeat_kick(timer->data);
}

/*
 * Start the periodic timer; the first beat goes out at once. Returns 0 or -1 with err.
 */
int heartbeat_start(struct agent *a, struct kerr *err)
{
	uint64_t every = (uint64_t)a->heartbeat_s * 1000;
	int ret;

	ret = uv_timer_init(a->loop, &a->heartbeat_timer);
	if (ret < 0)
		return err_set(err, -ret, "cannot create the heartbeat timer");
	a->heartbeat_timer.data = a;
	ret = uv_timer_start(&a->heartbeat_timer, heartbeat_timer_cb, 0, every);
	if (ret < 0)
		return err_set(err, -ret, "cannot start the heartbeat timer");
	log_info("heartbeat: every %d s", a->heartbeat_s);
	return 0;
}

/*
 * Stop beating; the timer handle closes on the loop's next turn.
 */
void heartbeat_stop(struct agent *a)
{
	if (a->heartbeat_timer.data && !uv_is_closing((uv_handle_t *)&a->heartbeat_timer))
		uv_close((uv_handle_t *)&a->heartbeat_timer, NULL);
}
