/*
 * dispatch.c - the checks between an instance command and its driver, made from the
 * verb table (common/verbs.h) alone, so every workload type gets the same answers:
 *   a verb the type or its driver lacks       422 "<verb> is not supported for <type>s"
 *   the instance is not on this host          404
 *   the instance is busy with another command 409, unless the table says this verb
 *                                             preempts that one (force-stop a stop)
 *   the instance is in a state the verb cannot start from   409
 * Pure functions: no agent state, so tests/unit/test_dispatch.c runs them alone.
 */
#include "agentd.h"

/*
 * Whether drv implements verb (a verb_find() result, -1 for none): 0, or -1 with err
 * (400 for an unknown verb, 422 for one the type or its driver lacks).
 */
int dispatch_verb_supported(const struct driver *drv, int verb, struct kerr *err)
{
	if (verb < 0 || verb >= VERBS)
		return err_input(err, 400, "action", "unknown action");
	if (verb_type_check(verb, drv->type, err) < 0)
		return -1;
	if (drv->verbs[verb] == NULL)
		return err_input(err, 422, NULL, "%s is not supported for %s", verb_get(verb)->name,
				 inst_type_plural(drv->type));
	return 0;
}

/* The schema of verb's args for drv's type: the driver's own, else the verb table's. */
const struct json_field *dispatch_verb_args(const struct driver *drv, enum verb verb)
{
	return drv->args[verb] ? drv->args[verb] : verb_get(verb)->args;
}

/*
 * Whether a command of verb may start while busy_op (of verb busy) works on the
 * instance name: 0 when the table lets verb preempt busy, else -1 with err 409.
 */
int dispatch_busy_check(enum verb verb, enum verb busy, const char *busy_op, const char *name,
			struct kerr *err)
{
	if (verb_preempts(verb, busy))
		return 0;
	return err_input(err, 409, NULL,
			 "instance %s is busy with %s (op %s); try again when it is done", name,
			 verb_get(busy)->name, busy_op);
}

/*
 * Whether verb may start on the instance name: it exists here when the verb needs
 * it (404), and its state is one the verb starts from (409). Returns 0 or -1 with err.
 */
int dispatch_state_check(enum verb verb, bool exists, enum inst_state state, const char *name,
			 struct kerr *err)
{
	if (!exists) {
		if (verb_get(verb)->flags & VF_NEEDS_INSTANCE)
			return err_input(err, 404, NULL, "there is no instance %s on this host",
					 name);
		return 0;
	}
	return verb_agent_state_check(verb, state, name, err);
}
