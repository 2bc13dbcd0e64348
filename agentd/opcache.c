/*
 * opcache.c - the operations this agent was sent lately, so a command the controller
 * resends (its ack was lost, or it restarted) is acked again and its result re-sent,
 * but the work is never done twice. A ring of the last AGENT_OPCACHE_SIZE ops.
 *
 * The op ids are also kept in {state_dir}/ops, written before a command is acked, so
 * that a command the previous run of the agent took (and may have half done when it
 * died) is not run again by the next one: that one answers it as failed instead.
 */
#include "agentd.h"

#include <errno.h>
#include <string.h>

#include "util.h"

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
static struct op_entry *slot_take(struct opcache *c, const char *op, enum link_type type)
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
 * Write the op ids, oldest first, to c->path. It is a few KiB, written (and synced)
 * on the loop before the ack: a command must be on disk before anyone can rely on
 * it being taken, and commands are rare next to the loop's other work.
 */
static void ids_save(struct opcache *c)
{
	char text[AGENT_OPCACHE_SIZE * (LINK_OP_ID_MAX + 1) + 1];
	size_t len = 0;
	int ret;

	if (!c->path[0])
		return;
	for (size_t i = 0; i < AGENT_OPCACHE_SIZE; i++) {
		const struct op_entry *e = &c->slots[(c->next + i) % AGENT_OPCACHE_SIZE];

		if (e->op[0])
			len += (size_t)snprintf(text + len, sizeof(text) - len, "%s\n", e->op);
	}
	ret = file_write_atomic(c->path, text, len, 0600);
	if (ret < 0)
		log_warnx("ops: cannot write %s: %s", c->path, strerror(-ret));
}

/*
 * Remember op as started, evicting the oldest entry, and save the ids. Returns the
 * entry, which stays valid until AGENT_OPCACHE_SIZE more ops arrive; look it up again
 * rather than keep it.
 */
struct op_entry *opcache_add(struct opcache *c, const char *op, enum link_type type)
{
	struct op_entry *e = slot_take(c, op, type);

	ids_save(c);
	return e;
}

/*
 * At start-up: keep the op ids in path from now on, and take the ones a previous run
 * left there as "earlier" entries (neither running nor done here).
 */
void opcache_load(struct opcache *c, const char *path)
{
	_cleanup_free_ char *text = NULL;
	int ret;

	snprintf(c->path, sizeof(c->path), "%s", path);
	ret = file_read_all(path, sizeof(((struct opcache *)0)->slots) * 2, &text, NULL);
	if (ret < 0) {
		if (ret != -ENOENT)
			log_warnx("ops: cannot read %s: %s", path, strerror(-ret));
		return;
	}
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
		if (link_op_id_valid(line))
			slot_take(c, line, LINK_CMD_INSTANCE)->earlier = true;
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
