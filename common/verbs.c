/*
 * verbs.c - the verb table (verbs.h) and the checks both daemons make against it.
 */
#include "verbs.h"

#include <stdio.h>
#include <string.h>

#include "valid.h"

#define SNAPSHOT_NAME_MAX 63

/* ---- argument schemas: what the agent's instance command carries in "args" ---- */

static int grace_check(struct json_object *val, const char *field, struct kerr *err)
{
	int64_t v = json_object_get_int64(val);

	/* 0 is the controller's "force at once". */
	if (v < 0 || v > STOP_GRACE_MAX_S)
		return err_input(err, 400, field, "field '%s' must be between 0 and %d", field,
				 STOP_GRACE_MAX_S);
	return 0;
}

static int target_check(struct json_object *val, const char *field, struct kerr *err)
{
	int64_t v = json_object_get_int64(val);

	if (v < 1 || v > 16LL * 1024 * 1024)
		return err_input(err, 400, field, "field '%s' must be between 1 and %lld", field,
				 16LL * 1024 * 1024);
	return 0;
}

/* Snapshot names go to HMP's savevm: a plain word that cannot be taken for an id. */
static int snapshot_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);
	size_t len = strlen(s);

	if (len == 0 || len > SNAPSHOT_NAME_MAX ||
	    strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != len ||
	    s[0] == '-' || s[0] == '.')
		return err_input(err, 400, field,
				 "snapshot names are 1-63 characters of A-Z, a-z, 0-9, '.', '_' "
				 "and '-', starting with a letter or digit");
	if (strspn(s, "0123456789") == len)
		return err_input(err, 400, field,
				 "a snapshot name of digits only would be taken for a snapshot id");
	return 0;
}

static const struct json_field no_args[] = {
	{NULL, 0, false, NULL},
};
static const struct json_field create_args[] = {
	{"start", JK_BOOL, false, NULL},
	/* An HA failover's timeline (controllerd/ha.c), resent with the operation's args. */
	{"failover", JK_OBJECT, false, NULL},
	/* A restore to a new instance: {backup, store}, checked by the driver that
	 * writes its disks from the backup (agentd/backup.c). */
	{"restore", JK_OBJECT, false, NULL},
	{NULL, 0, false, NULL},
};
static const struct json_field stop_args[] = {
	{"timeout_s", JK_INT, false, grace_check},
	{NULL, 0, false, NULL},
};
/* keep_disks is the controller's; containers have no disks and ignore it. */
static const struct json_field delete_args[] = {
	{"keep_disks", JK_BOOL, false, NULL},
	{"force", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};
/* The controller repeats the new SPEC here; "instance" is what counts. */
static const struct json_field update_args[] = {
	{"spec", JK_OBJECT, false, NULL},
	{NULL, 0, false, NULL},
};
static const struct json_field balloon_args[] = {
	{"target_mb", JK_INT, true, target_check},
	{NULL, 0, false, NULL},
};
static const struct json_field snapshot_args[] = {
	{"snapshot", JK_STRING, true, snapshot_check},
	{"with_memory", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};
static const struct json_field snapshot_delete_args[] = {
	{"snapshot", JK_STRING, true, snapshot_check},
	{NULL, 0, false, NULL},
};
static const struct json_field commit_args[] = {
	{"image", JK_STRING, true, NULL}, /* repo:tag, checked by the controller and the driver */
	{NULL, 0, false, NULL},
};

/* ---- the table ---- */

/* Controller states (its own "missing" among them) a verb may be asked in. */
static const char *const from_stopped[] = {"stopped", "crashed", NULL};
static const char *const from_live[] = {"running", "paused", "starting", NULL};
static const char *const from_any_live[] = {"running",	"paused",  "starting",
					    "stopping", "crashed", NULL};
static const char *const from_running[] = {"running", NULL};
static const char *const from_paused[] = {"paused", NULL};
static const char *const from_settled[] = {"running", "paused", "stopped", "crashed", NULL};
static const char *const from_snapshottable[] = {"running", "paused", "stopped", NULL};
static const char *const from_deletable[] = {"stopped", "crashed", "error", "missing", NULL};

#define VM   TYPE_BIT(INST_VM)
#define CTR  TYPE_BIT(INST_CONTAINER)
#define BOTH TYPES_ALL
#define LIVE (STATE_BIT(INST_RUNNING) | STATE_BIT(INST_PAUSED))

/*
 * Timeouts are {VM, container} seconds. A stop's grace is Docker's 10 s for a container
 * (SIGTERM, then SIGKILL) and 60 s for a VM (ACPI power button, then QEMU quits), as
 * guests take their time to shut down. The others are deadlines for the operation:
 * long enough for a cold image clone on a busy host.
 */
static const struct verb_def verb_table[VERBS] = {
	[VERB_CREATE] = {"create",
			 BOTH,
			 NULL,
			 0,
			 NULL,
			 VF_LONG | VF_CANCELLABLE | VF_FULL_SPEC,
			 0,
			 create_args,
			 {900, 600}},
	[VERB_UPDATE] = {"update",
			 VM,
			 NULL,
			 0,
			 NULL,
			 VF_LONG | VF_NEEDS_INSTANCE | VF_FULL_SPEC,
			 0,
			 update_args,
			 {600, 0}},
	[VERB_START] = {"start",
			BOTH,
			from_stopped,
			0,
			"running",
			VF_ACTION | VF_CANCELLABLE | VF_NEEDS_INSTANCE,
			0,
			no_args,
			{300, 120}},
	[VERB_STOP] = {"stop",
		       BOTH,
		       from_live,
		       0,
		       "stopped",
		       VF_ACTION | VF_STOP_GRACE | VF_NEEDS_INSTANCE,
		       0,
		       stop_args,
		       {60, 10}},
	[VERB_FORCE_STOP] = {"force-stop",
			     BOTH,
			     from_any_live,
			     0,
			     "stopped",
			     VF_ACTION | VF_NEEDS_INSTANCE,
			     VERB_BIT(VERB_STOP) | VERB_BIT(VERB_RESTART),
			     no_args,
			     {60, 60}},
	[VERB_REBOOT] = {"reboot",
			 VM,
			 from_running,
			 LIVE,
			 NULL,
			 VF_ACTION | VF_NEEDS_INSTANCE,
			 0,
			 no_args,
			 {60, 0}},
	[VERB_RESTART] = {"restart",
			  CTR,
			  from_live,
			  0,
			  "running",
			  VF_ACTION | VF_STOP_GRACE | VF_NEEDS_INSTANCE,
			  0,
			  stop_args,
			  {0, 10}},
	[VERB_PAUSE] = {"pause",
			BOTH,
			from_running,
			LIVE,
			NULL,
			VF_ACTION | VF_NEEDS_INSTANCE,
			0,
			no_args,
			{60, 60}},
	/* Idempotent: running already is success for both drivers, and the agent may run
	 * it from LIVE (a resend after the first run); docs/architecture.md says why a
	 * late resend cannot undo a later pause. */
	[VERB_RESUME] = {"resume",
			 BOTH,
			 from_paused,
			 LIVE,
			 "running",
			 VF_ACTION | VF_NEEDS_INSTANCE | VF_IDEMPOTENT,
			 0,
			 no_args,
			 {60, 60}},
	[VERB_DELETE] =
		{"delete", BOTH, from_deletable, 0, NULL, VF_LONG, 0, delete_args, {600, 300}},
	[VERB_BALLOON] =
		{"balloon", VM, NULL, 0, NULL, VF_NEEDS_INSTANCE, 0, balloon_args, {120, 0}},
	[VERB_SNAPSHOT_CREATE] = {"snapshot-create",
				  VM,
				  from_snapshottable,
				  0,
				  NULL,
				  VF_LONG | VF_NEEDS_INSTANCE,
				  0,
				  snapshot_args,
				  {1800, 0}},
	[VERB_SNAPSHOT_REVERT] = {"snapshot-revert",
				  VM,
				  from_settled,
				  0,
				  NULL,
				  VF_LONG | VF_NEEDS_INSTANCE,
				  0,
				  snapshot_args,
				  {1800, 0}},
	[VERB_SNAPSHOT_DELETE] = {"snapshot-delete",
				  VM,
				  from_settled,
				  0,
				  NULL,
				  VF_LONG | VF_NEEDS_INSTANCE,
				  0,
				  snapshot_delete_args,
				  {600, 0}},
	[VERB_COMMIT] = {"commit",
			 CTR,
			 from_settled,
			 0,
			 NULL,
			 VF_ACTION | VF_LONG | VF_NEEDS_INSTANCE,
			 0,
			 commit_args,
			 {0, 1800}},
	/* Stage 2. A container migrates cold (agentd/ociaction.c), a VM live; a
	 * container's backup is its writable layer. Their args are checked by each agent
	 * driver's own table (migrate.c, backup.c, ociaction.c), which replaces no_args
	 * here. migrate-in makes the instance from the whole SPEC; a restore writes over
	 * one that exists (a new instance is a create with args.restore). */
	[VERB_MIGRATE_OUT] = {"migrate-out",
			      BOTH,
			      NULL,
			      0,
			      NULL,
			      VF_LONG | VF_CANCELLABLE | VF_NEEDS_INSTANCE,
			      0,
			      no_args,
			      {3600, 1800}},
	[VERB_MIGRATE_IN] = {"migrate-in",
			     BOTH,
			     NULL,
			     0,
			     NULL,
			     VF_LONG | VF_CANCELLABLE | VF_FULL_SPEC,
			     0,
			     no_args,
			     {3600, 1800}},
	[VERB_BACKUP] = {"backup",
			 VM | CTR,
			 NULL,
			 0,
			 NULL,
			 VF_LONG | VF_CANCELLABLE | VF_NEEDS_INSTANCE,
			 0,
			 no_args,
			 {3600, 1800}},
	[VERB_RESTORE] = {"restore",
			  VM,
			  NULL,
			  0,
			  NULL,
			  VF_LONG | VF_CANCELLABLE | VF_NEEDS_INSTANCE,
			  0,
			  no_args,
			  {3600, 1800}},
};

static const char *const type_names[INST_TYPES] = {"vm", "container"};
static const char *const type_plurals[INST_TYPES] = {"VMs", "containers"};
static const char *const state_names[INST_STATES] = {
	[INST_STOPPED] = "stopped", [INST_STARTING] = "starting", [INST_RUNNING] = "running",
	[INST_PAUSED] = "paused",   [INST_STOPPING] = "stopping", [INST_CRASHED] = "crashed",
	[INST_ERROR] = "error",
};

const struct verb_def *verb_get(enum verb v)
{
	return &verb_table[v];
}

int verb_find(const char *name)
{
	for (int v = 0; v < VERBS; v++)
		if (strcmp(verb_table[v].name, name) == 0)
			return v;
	return -1;
}

bool verb_preempts(enum verb v, enum verb busy)
{
	return (verb_table[v].preempts & VERB_BIT(busy)) != 0;
}

int verb_timeout_default(enum verb v, enum inst_type t)
{
	return verb_table[v].timeout_s[t];
}

bool verb_state_allowed(enum verb v, const char *state)
{
	const char *const *from = verb_table[v].from;

	if (from == NULL)
		return true;
	for (; *from; from++)
		if (strcmp(*from, state) == 0)
			return true;
	return false;
}

int verb_type_check(enum verb v, enum inst_type t, struct kerr *err)
{
	if (verb_table[v].types & TYPE_BIT(t))
		return 0;
	return err_input(err, 422, NULL, "%s is not supported for %s", verb_table[v].name,
			 type_plurals[t]);
}

int verb_agent_state_check(enum verb v, enum inst_state state, const char *name, struct kerr *err)
{
	unsigned from = verb_table[v].agent_from;
	char need[128] = "";
	size_t len = 0;

	if (from == 0 || (from & STATE_BIT(state)))
		return 0;
	for (int s = 0; s < INST_STATES; s++)
		if (from & STATE_BIT(s))
			len += snprintf(need + len, sizeof(need) - len, "%s%s", len ? " or " : "",
					state_names[s]);
	return err_input(err, 409, NULL, "instance %s is %s; %s needs it %s", name,
			 state_names[state], verb_table[v].name, need);
}

const char *inst_type_name(enum inst_type t)
{
	return type_names[t];
}

const char *inst_type_plural(enum inst_type t)
{
	return type_plurals[t];
}

enum inst_type inst_type_parse(const char *s)
{
	return s && strcmp(s, "container") == 0 ? INST_CONTAINER : INST_VM;
}

const char *inst_state_name(enum inst_state s)
{
	return state_names[s];
}
