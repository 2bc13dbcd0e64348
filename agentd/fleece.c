/*
 * fleece.c - the QMP commands of image fleecing (fleece.h says the design).
 */
#include "fleece.h"

#include <stdio.h>
#include <string.h>

#include "json.h"

void fleece_names_make(size_t disk, struct fleece_names *n)
{
	snprintf(n->device, sizeof(n->device), "d%zu", disk);
	snprintf(n->node, sizeof(n->node), "kfl-d%zu", disk);
	snprintf(n->job, sizeof(n->job), "kumo-fleece-d%zu", disk);
}

struct json_object *fleece_overlay_args(const struct fleece_names *n, const char *path)
{
	struct json_object *args = json_object_new_object(), *file = json_object_new_object();

	json_object_object_add(file, "driver", json_object_new_string("file"));
	json_object_object_add(file, "filename", json_object_new_string(path));
	json_object_object_add(args, "driver", json_object_new_string("qcow2"));
	json_object_object_add(args, "node-name", json_object_new_string(n->node));
	json_object_object_add(args, "file", file);
	/* The running disk's node by reference: its unwritten blocks read through. */
	json_object_object_add(args, "backing", json_object_new_string(n->device));
	return args;
}

/* One action of a transaction. */
static struct json_object *action(const char *type, struct json_object *data)
{
	struct json_object *a = json_object_new_object();

	json_object_object_add(a, "type", json_object_new_string(type));
	json_object_object_add(a, "data", data);
	return a;
}

struct json_object *fleece_transaction_args(const struct fleece_names *n, const char *bitmap)
{
	struct json_object *bm = json_object_new_object(), *backup = json_object_new_object();
	struct json_object *actions = json_object_new_array(), *args = json_object_new_object();

	json_object_object_add(bm, "node", json_object_new_string(n->device));
	json_object_object_add(bm, "name", json_object_new_string(bitmap));
	json_object_object_add(bm, "persistent", json_object_new_boolean(true));
	json_object_object_add(backup, "job-id", json_object_new_string(n->job));
	json_object_object_add(backup, "device", json_object_new_string(n->device));
	json_object_object_add(backup, "target", json_object_new_string(n->node));
	/* none: copy nothing on its own, only the old blocks a guest write replaces. */
	json_object_object_add(backup, "sync", json_object_new_string("none"));
	json_object_array_add(actions, action("block-dirty-bitmap-add", bm));
	json_object_array_add(actions, action("blockdev-backup", backup));
	json_object_object_add(args, "actions", actions);
	return args;
}

struct json_object *fleece_server_args(const char *path)
{
	struct json_object *args = json_object_new_object(), *addr = json_object_new_object();
	struct json_object *data = json_object_new_object();

	/* SocketAddressLegacy, as nbd-server-start takes it. */
	json_object_object_add(data, "path", json_object_new_string(path));
	json_object_object_add(addr, "type", json_object_new_string("unix"));
	json_object_object_add(addr, "data", data);
	json_object_object_add(args, "addr", addr);
	return args;
}

struct json_object *fleece_export_args(const struct fleece_names *n)
{
	struct json_object *args = json_object_new_object();

	json_object_object_add(args, "type", json_object_new_string("nbd"));
	json_object_object_add(args, "id", json_object_new_string(n->node));
	json_object_object_add(args, "node-name", json_object_new_string(n->node));
	json_object_object_add(args, "name", json_object_new_string(n->node));
	json_object_object_add(args, "writable", json_object_new_boolean(false));
	return args;
}

struct json_object *fleece_teardown_step(const struct fleece_names *n, int step, const char **cmd)
{
	struct json_object *args = json_object_new_object();

	switch (step) {
	case 0:
		*cmd = "block-export-del";
		json_object_object_add(args, "id", json_object_new_string(n->node));
		json_object_object_add(args, "mode", json_object_new_string("hard"));
		return args;
	case 1:
		*cmd = "nbd-server-stop";
		return args;
	case 2:
		*cmd = "block-job-cancel";
		json_object_object_add(args, "device", json_object_new_string(n->job));
		json_object_object_add(args, "force", json_object_new_boolean(true));
		return args;
	case FLEECE_STEP_WAIT:
		*cmd = "query-jobs";
		return args;
	case 4:
		*cmd = "blockdev-del";
		json_object_object_add(args, "node-name", json_object_new_string(n->node));
		return args;
	default:
		json_object_put(args);
		*cmd = NULL;
		return NULL;
	}
}

/* n->job's entry in query-jobs' answer, or NULL. */
static struct json_object *job_find(const struct fleece_names *n, struct json_object *jobs)
{
	if (!json_object_is_type(jobs, json_type_array))
		return NULL;
	for (size_t i = 0; i < json_array_len(jobs); i++) {
		struct json_object *j = json_object_array_get_idx(jobs, i);

		if (!strcmp(json_get_str(j, "id", ""), n->job))
			return j;
	}
	return NULL;
}

int fleece_job_listed(const struct fleece_names *n, struct json_object *jobs)
{
	return job_find(n, jobs) != NULL;
}

int fleece_job_running(const struct fleece_names *n, struct json_object *jobs)
{
	struct json_object *j = job_find(n, jobs);

	return j && !strcmp(json_get_str(j, "status", ""), "running");
}
