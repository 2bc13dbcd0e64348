/*
 * verbs.h - the verb table both daemons read: what can be done to an instance.
 *
 * One row per verb (create, start, stop, ...) says which instance types have it, the
 * states it may start from (the controller's, which include its own "missing" and
 * the like, and the agent's), the desired state it leaves, the arguments the agent
 * receives with it on the link, flags (long-running, cancellable, needs the whole
 * SPEC), which busy verbs it may cut short (a force-stop preempts a graceful stop),
 * and its default timeout per type: for a stop or restart the grace before the
 * instance is forced, for the others how long the operation may run.
 *
 * The controller checks a request against the row before it starts an operation
 * (api_instances.c); the agent checks the command against the same row before it
 * calls the driver (agentd/dispatch.c). A new verb is one row here plus one function
 * in each driver that has it (agentd/vmaction.c, agentd/ociaction.c); stage 2's verbs
 * (migrate-out, migrate-in, backup, restore) are VMs' only.
 */
#ifndef KUMO_VERBS_H
#define KUMO_VERBS_H

#include <stdbool.h>

#include "err.h"
#include "json.h"

enum inst_type {
	INST_VM,
	INST_CONTAINER,
	INST_TYPES,
};

/* What the agent reports an instance to be doing; the controller shows these too. */
enum inst_state {
	INST_STOPPED,
	INST_STARTING, /* also a container between restarts of its policy */
	INST_RUNNING,
	INST_PAUSED,
	INST_STOPPING,
	INST_CRASHED,
	INST_ERROR,
	INST_STATES,
};

enum verb {
	VERB_CREATE,
	VERB_UPDATE,
	VERB_START,
	VERB_STOP,
	VERB_FORCE_STOP,
	VERB_REBOOT,
	VERB_RESTART,
	VERB_PAUSE,
	VERB_RESUME,
	VERB_DELETE,
	VERB_BALLOON,
	VERB_SNAPSHOT_CREATE,
	VERB_SNAPSHOT_REVERT,
	VERB_SNAPSHOT_DELETE,
	VERB_COMMIT,
	/* Stage 2, VMs only: agentd/migrate.c, agentd/backup.c. */
	VERB_MIGRATE_OUT,
	VERB_MIGRATE_IN,
	VERB_BACKUP,
	VERB_RESTORE,
	VERBS,
};

#define TYPE_BIT(t)  (1u << (t))
#define STATE_BIT(s) (1u << (s))
#define VERB_BIT(v)  (1u << (v))
#define TYPES_ALL    (TYPE_BIT(INST_VM) | TYPE_BIT(INST_CONTAINER))

enum verb_flag {
	VF_LONG = 1 << 0,	    /* runs for a while: progress is reported */
	VF_CANCELLABLE = 1 << 1,    /* may be cancelled at a safe point */
	VF_NEEDS_INSTANCE = 1 << 2, /* the instance must exist on the host */
	VF_FULL_SPEC = 1 << 3,	    /* the command's SPEC is read beyond its name */
	VF_STOP_GRACE = 1 << 4,	    /* timeout_s is the grace before a stop is forced */
	VF_ACTION = 1 << 5,	    /* asked for by POST /instances/{name}/actions/{verb} */
	/* A second run, after the first and whatever ran between, leaves the same state:
	 * the agent starts it without waiting for its op id to be on disk (agentd/link.c). */
	VF_IDEMPOTENT = 1 << 6,
};

struct verb_def {
	const char *name;
	unsigned types;		       /* TYPE_BIT()s of the types that have it */
	const char *const *from;       /* controller states it may be asked in; NULL: any */
	unsigned agent_from;	       /* STATE_BIT()s it may start from on the agent; 0: any */
	const char *desired;	       /* desired state afterwards; NULL: unchanged */
	unsigned flags;		       /* enum verb_flag */
	unsigned preempts;	       /* VERB_BIT()s of busy verbs it may cut short */
	const struct json_field *args; /* its args in the agent's instance command */
	int timeout_s[INST_TYPES];     /* default grace (VF_STOP_GRACE) or deadline */
};

/* The longest stop grace a call or an instance may ask for. */
#define STOP_GRACE_MAX_S 3600

/* The row of verb v (0 <= v < VERBS). */
const struct verb_def *verb_get(enum verb v);
/* The verb named name ("force-stop"), or -1. */
int verb_find(const char *name);
/* Whether a command of verb v may cut short a running one of verb busy. */
bool verb_preempts(enum verb v, enum verb busy);
/* v's default timeout in seconds for type t: the stop grace for stop and restart. */
int verb_timeout_default(enum verb v, enum inst_type t);
/* Whether the controller may ask for v while the instance is in state (its name). */
bool verb_state_allowed(enum verb v, const char *state);
/*
 * Check that type t has verb v: 0, or -1 with err 422 "<verb> is not supported for
 * <type>s". The shared answer for a verb a type (or a driver) lacks.
 */
int verb_type_check(enum verb v, enum inst_type t, struct kerr *err);
/*
 * Check that v may start while the agent sees the instance (named name) in state:
 * 0, or -1 with err 409 naming the state and the states v needs.
 */
int verb_agent_state_check(enum verb v, enum inst_state state, const char *name, struct kerr *err);

/* "vm" or "container". */
const char *inst_type_name(enum inst_type t);
/* "VMs" or "containers", for messages. */
const char *inst_type_plural(enum inst_type t);
/* A SPEC's type: "container" is INST_CONTAINER, anything else (or NULL) INST_VM. */
enum inst_type inst_type_parse(const char *s);
/* "stopped", "running", ... */
const char *inst_state_name(enum inst_state s);

#endif
