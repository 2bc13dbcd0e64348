/*
 * sendq.c - the events waiting for the controller's event socket, and which one gives
 * way when there are too many.
 *
 * link.c queues an event when the push socket does not take it at once and sends the
 * queue in order when it does. The queue is bounded by AGENT_SENDQ_MAX, and what it
 * drops when full is chosen by kind, never by age alone: a busy console must not cost
 * the controller an op-done (an operation would hang until its deadline) or make the
 * host look offline. Pure: no loop, no socket, so tests/unit/test_sendq.c checks it.
 */
#include "agentd.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

/*
 * Which kinds give way first when the queue is full, lowest first. Console data is a
 * relay of bytes the VM's log keeps anyway; a heartbeat is replaced by the next one;
 * progress by later progress or the op's end. Op-done and query-done end operations
 * the controller waits for: never dropped (-1), so the queue may pass its bound by as
 * many of them as operations are in flight, which the job engine bounds.
 */
static int drop_rank(enum link_type type)
{
	switch (type) {
	case LINK_CONSOLE_DATA:
		return 0;
	case LINK_HEARTBEAT:
		return 1;
	case LINK_OP_PROGRESS:
		return 2;
	case LINK_INSTANCE_STATE:
		return 3;
	default:
		return -1;
	}
}

static void item_free(struct sendq_item *it)
{
	json_object_put(it->body);
	free(it);
}

/* Unlink the item after prev (or the head when prev is NULL) and return it. */
static struct sendq_item *unlink_after(struct sendq *q, struct sendq_item *prev)
{
	struct sendq_item *it = prev ? prev->next : q->head;

	if (prev)
		prev->next = it->next;
	else
		q->head = it->next;
	if (q->tail == it)
		q->tail = prev;
	q->len--;
	return it;
}

/* Drop the oldest item of the lowest rank; its type, or -1 when nothing may go. */
static int evict(struct sendq *q)
{
	struct sendq_item *prev = NULL, *victim_prev = NULL, *victim = NULL;
	int best = -1;

	for (struct sendq_item *it = q->head; it; prev = it, it = it->next) {
		int rank = drop_rank(it->type);

		if (rank >= 0 && (victim == NULL || rank < best)) {
			victim = it;
			victim_prev = prev;
			best = rank;
		}
	}
	if (victim == NULL)
		return -1;
	int type = (int)victim->type;

	item_free(unlink_after(q, victim_prev));
	return type;
}

/*
 * Queue an event of type (about op, or NULL); body is consumed. A heartbeat replaces
 * the body of one already waiting (only the newest facts matter). When the queue is
 * full, the lowest kind gives way (drop_rank()). Returns the type of the event dropped
 * to make room, or -1 when nothing was dropped; the caller logs it.
 */
int sendq_add(struct sendq *q, enum link_type type, const char *op, struct json_object *body)
{
	struct sendq_item *it;
	int dropped = -1;

	if (type == LINK_HEARTBEAT) {
		for (it = q->head; it; it = it->next) {
			if (it->type == LINK_HEARTBEAT) {
				/* A digest-only beat replacing one with the whole facts keeps
				 * them: its digest is theirs, and a controller that never got
				 * them would know the host by an unknown digest until the next
				 * periodic whole facts. */
				struct json_object *facts =
					json_object_object_get(it->body, "facts");

				if (facts && !json_object_object_get(body, "facts"))
					json_object_object_add(body, "facts",
							       json_object_get(facts));
				json_object_put(it->body);
				it->body = body;
				return -1;
			}
		}
	}
	if (q->len >= AGENT_SENDQ_MAX) {
		dropped = evict(q);
		/* Nothing below the newcomer's kind to drop: it is the one that gives way. */
		if (dropped < 0 && drop_rank(type) >= 0) {
			json_object_put(body);
			return (int)type;
		}
	}
	it = xcalloc(1, sizeof(*it));
	it->type = type;
	snprintf(it->op, sizeof(it->op), "%s", op ? op : "");
	it->body = body;
	if (q->tail)
		q->tail->next = it;
	else
		q->head = it;
	q->tail = it;
	q->len++;
	return dropped;
}

/* Remove the oldest event (the queue must not be empty). */
void sendq_pop(struct sendq *q)
{
	item_free(unlink_after(q, NULL));
}

/* Drop everything queued. */
void sendq_clear(struct sendq *q)
{
	while (q->head)
		sendq_pop(q);
}
