/*
 * opcache.c - the operations this agent was sent lately, so a command the controller
 * resends (its ack was lost, or it restarted) is acked again and its result re-sent,
 * but the work is never done twice. A ring of the last AGENT_OPCACHE_SIZE ops.
 */
#include "agentd.h"

#include <string.h>

/*
 * The entry for op, or NULL when op is not among the remembered ones.
 */
struct op_entry *opcache_find(struct opcache *c, const char *op)
{
	for (size_t i = 0; i < AGENT_OPCACHE_SIZE; i++)
		if (c->slots[i].op[0] && strcmp(c->slots[i].op, op) == 0)
			return &c->slots[i];
	return NULL;
}

/*
 * Remember op as started, evicting the oldest entry. Returns the entry, which stays
 * valid until AGENT_OPCACHE_SIZE more ops arrive; look it up again rather than keep it.
 */
struct op_entry *opcache_add(struct opcache *c, const char *op, enum link_type type)
{
	struct op_entry *e = &c->slots[c->next];

	c->next = (c->next + 1) % AGENT_OPCACHE_SIZE;
	json_object_put(e->done_body);
	memset(e, 0, sizeof(*e));
	snprintf(e->op, sizeof(e->op), "%s", op);
	e->type = type;
	return e;
}

/*
 * Record that op finished with done_body (the op-done body; the cache takes its own
 * reference). An op evicted meanwhile is not brought back.
 */
void opcache_finish(struct opcache *c, const char *op, struct json_object *done_body)
{
	struct op_entry *e = opcache_find(c, op);

	if (e == NULL)
		return;
	json_object_put(e->done_body);
	e->done_body = json_object_get(done_body);
	e->done = true;
}

/*
 * Forget every op and release the stored results.
 */
void opcache_clear(struct opcache *c)
{
	for (size_t i = 0; i < AGENT_OPCACHE_SIZE; i++) {
		json_object_put(c->slots[i].done_body);
		memset(&c->slots[i], 0, sizeof(c->slots[i]));
	}
	c->next = 0;
}
