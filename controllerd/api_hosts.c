/*
 * api_hosts.c - /api/v1/hosts: list, show, label and maintenance, delete, probe, and
 * adopting or destroying the instances a host runs that the controller does not place.
 */
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"
#include "valid.h"

/* Find the host named by the path, or answer 400/404 and return NULL. */
static struct host *path_host(struct request *req, enum MHD_Result *ret)
{
	struct host *h;

	if (!name_valid(req->params[0])) {
		*ret = http_reply_error(req, 400, "name",
					"host name must be 1-63 characters of a-z, 0-9 and '-'");
		return NULL;
	}
	h = host_find(req->params[0]);
	if (h == NULL)
		*ret = http_reply_error(req, 404, NULL, "no host named %s", req->params[0]);
	return h;
}

static int host_cmp(const void *a, const void *b)
{
	return strcmp((*(struct host *const *)a)->name, (*(struct host *const *)b)->name);
}

/* Does h carry the label "k=v" (a ?label= filter, checked by the caller)? */
static bool host_has_label(const struct host *h, const char *kv)
{
	const char *eq = strchr(kv, '=');
	char key[64];
	struct json_object *v;

	snprintf(key, sizeof(key), "%.*s", (int)(eq - kv), kv);
	return json_object_object_get_ex(h->labels, key, &v) &&
	       strcmp(json_object_get_string(v), eq + 1) == 0;
}

/*
 * GET /api/v1/hosts: by name, paged (page.c), filtered by ?state= and ?label=k=v. The
 * hosts live in memory; only the page's items are rendered.
 */
enum MHD_Result api_hosts_list(struct request *req)
{
	const char *state = http_query(req, "state"), *label = http_query(req, "label");
	struct json_object *list, *out;
	struct host **v;
	struct page page;
	struct kerr err;
	size_t n = 0, i = 0;

	if (page_begin(req, &page, &err) < 0)
		return http_reply_kerr(req, &err);
	if (state && strcmp(state, "online") && strcmp(state, "offline"))
		return http_reply_error(req, 400, "state", "state must be online or offline");
	if (label && page_label_check(label, &err) < 0)
		return http_reply_kerr(req, &err);
	for (struct host *h = ctl.hosts; h; h = h->next)
		n++;
	v = xcalloc(n ? n : 1, sizeof(*v));
	for (struct host *h = ctl.hosts; h; h = h->next)
		v[i++] = h;
	qsort(v, n, sizeof(*v), host_cmp);
	list = json_object_new_array();
	for (i = 0; i < n; i++) {
		struct json_object *o;

		if (strcmp(v[i]->name, page.after) <= 0 ||
		    (state && strcmp(host_state_name(v[i]->state), state)) ||
		    (label && !host_has_label(v[i], label)))
			continue;
		o = host_to_json(v[i]);
		if (!page_add(&page, list, o, v[i]->name)) {
			json_object_put(o);
			break;
		}
	}
	free(v);
	out = json_object_new_object();
	page_end(&page, out, "hosts", list);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_host_get(struct request *req)
{
	enum MHD_Result ret;
	struct host *h = path_host(req, &ret);

	if (h == NULL)
		return ret;
	return http_reply_json(req, 200, host_to_json(h));
}

static const struct json_field patch_fields[] = {
	{"maintenance", JK_BOOL, false, NULL},
	{"labels", JK_OBJECT, false, labels_check},
	{NULL, 0, false, NULL},
};
const struct json_field *const host_patch_fields = patch_fields;

enum MHD_Result api_host_patch(struct request *req)
{
	enum MHD_Result ret;
	struct host *h = path_host(req, &ret);
	struct json_object *body, *labels;
	struct kerr err;
	sqlite3_stmt *st;
	bool maint;
	int rc;

	if (h == NULL)
		return ret;
	if (http_body_json(req, patch_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	maint = json_get_bool(body, "maintenance", h->maintenance);
	labels = json_object_object_get(body, "labels");
	if (labels == NULL)
		labels = h->labels;
	st = db_prepare(ctl.db, "UPDATE hosts SET maintenance = ?, labels = ? WHERE id = ?");
	sqlite3_bind_int(st, 1, maint);
	sqlite3_bind_text(st, 2, json_text(labels), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 3, h->id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		json_object_put(body);
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	}
	h->maintenance = maint;
	if (labels != h->labels) {
		json_object_put(h->labels);
		h->labels = json_object_get(labels);
	}
	json_object_put(body);
	event_emit("host-updated", host_to_json(h));
	return http_reply_json(req, 200, host_to_json(h));
}

enum MHD_Result api_host_delete(struct request *req)
{
	enum MHD_Result ret;
	struct host *h = path_host(req, &ret);
	const char *force = http_query(req, "force");
	struct json_object *ev;
	sqlite3_stmt *st;
	int rc;

	if (h == NULL)
		return ret;
	if (force && strcmp(force, "1") && strcmp(force, "0") && strcmp(force, "true") &&
	    strcmp(force, "false"))
		return http_reply_error(req, 400, "force",
					"query parameter 'force' must be 1 or 0");
	if (instances_on_host(h->id) > 0)
		return http_reply_error(req, 409, NULL,
					"host %s still has %d instances; move or delete them first",
					h->name, instances_on_host(h->id));
	if (h->state == HOST_ONLINE && !(force && (!strcmp(force, "1") || !strcmp(force, "true"))))
		return http_reply_error(req, 409, NULL,
					"host %s is online; stop its agent first or use ?force=1",
					h->name);
	st = db_prepare(ctl.db, "DELETE FROM hosts WHERE id = ?");
	sqlite3_bind_int64(st, 1, h->id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(h->name));
	log_info("host %s: deleted", h->name);
	host_remove(h);
	event_emit("host-deleted", ev);
	return http_reply_empty(req, 204);
}

enum MHD_Result api_host_probe(struct request *req)
{
	enum MHD_Result ret;
	struct host *h = path_host(req, &ret);
	_cleanup_free_ char *target = NULL;
	struct json_object *op;
	struct kerr err;

	if (h == NULL)
		return ret;
	if (req->body_len > 0) {
		static const struct json_field none[] = {{NULL, 0, false, NULL}};
		struct json_object *body;

		if (http_body_json(req, none, &body, &err) < 0)
			return http_reply_kerr(req, &err);
		json_object_put(body);
	}
	if (h->state != HOST_ONLINE)
		return http_reply_error(req, 503, NULL, "host %s is offline", h->name);
	target = xasprintf("hosts/%s", h->name);
	op = op_create("probe", target, h, NULL, &err);
	if (op == NULL)
		return http_reply_kerr(req, &err);
	agentlink_cmd_send(h, LINK_CMD_PROBE,
			   json_object_get_string(json_object_object_get(op, "id")), NULL);
	return http_reply_json(req, 202, op);
}

/* ---- unmanaged instances (drift.c) ---- */

/*
 * The host and unmanaged instance the path names, for an action that needs the host
 * online. NULL after answering 400, 404 or 503.
 */
static struct host *path_unmanaged(struct request *req, struct json_object **u,
				   enum MHD_Result *ret)
{
	struct host *h = path_host(req, ret);

	if (h == NULL)
		return NULL;
	if (req->body_len > 0) {
		static const struct json_field none[] = {{NULL, 0, false, NULL}};
		struct json_object *body;
		struct kerr err;

		if (http_body_json(req, none, &body, &err) < 0) {
			*ret = http_reply_kerr(req, &err);
			return NULL;
		}
		json_object_put(body);
	}
	if (!name_valid(req->params[1])) {
		*ret = http_reply_error(
			req, 400, "instance",
			"instance name must be 1-63 characters of a-z, 0-9 and '-'");
		return NULL;
	}
	*u = drift_unmanaged_get(h, req->params[1]);
	if (*u == NULL) {
		*ret = http_reply_error(req, 404, NULL, "host %s runs no unmanaged instance %s",
					h->name, req->params[1]);
		return NULL;
	}
	if (h->state != HOST_ONLINE) {
		*ret = http_reply_error(req, 503, NULL, "host %s is offline", h->name);
		return NULL;
	}
	return h;
}

/* The host of the instance the controller knows by name, or "" when it knows none. */
static bool instance_known(const char *name, char *host, size_t len)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT coalesce(h.name, '') FROM instances i "
				   "LEFT JOIN hosts h ON h.id = i.host_id WHERE i.name = ?");
	bool found;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	found = sqlite3_step(st) == SQLITE_ROW;
	if (found)
		snprintf(host, len, "%s", sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return found;
}

/* The agent's spec of the instance came (or why not): record it. */
static enum MHD_Result adopt_answer(struct request *req)
{
	struct json_object *spec, *u, *ev, *copy, *answer = api_query_answer(req);
	struct host *h = host_find(req->params[0]);
	char other[SEAL_HOST_MAX + 1];
	struct kerr err;

	if (answer == NULL)
		return http_reply_error(req, 502, NULL, "adopt: %s", api_query_error(req));
	u = h ? drift_unmanaged_get(h, req->params[1]) : NULL;
	if (u == NULL)
		return http_reply_error(req, 409, NULL,
					"instance %s is no longer unmanaged on host %s",
					req->params[1], req->params[0]);
	if (instance_known(req->params[1], other, sizeof(other)))
		return http_reply_error(req, 409, "name", "an instance named %s exists already",
					req->params[1]);
	spec = json_object_object_get(answer, "spec");
	if (!json_object_is_type(spec, json_type_object) ||
	    strcmp(json_get_str(spec, "name", ""), req->params[1]))
		return http_reply_error(req, 502, NULL, "adopt: the agent sent no spec of %s",
					req->params[1]);
	copy = json_tokener_parse(json_text(spec));
	if (drift_adopt(h, copy, u, &err) < 0) {
		json_object_put(copy);
		return http_reply_kerr(req, &err);
	}
	json_object_put(copy);
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(req->params[1]));
	json_object_object_add(ev, "host", json_object_new_string(h->name));
	json_object_object_add(ev, "adopted", json_object_new_boolean(1));
	event_emit("instance-created", ev);
	return http_reply_json(req, 201, instance_get_json(req->params[1], false));
}

/*
 * POST /hosts/{name}/unmanaged/{instance}/actions/adopt: ask the agent for the
 * instance's spec, then record it as placed there (201 with the instance). 409 when
 * the name is taken or its addresses clash.
 */
enum MHD_Result api_host_unmanaged_adopt(struct request *req)
{
	char other[SEAL_HOST_MAX + 1];
	struct json_object *u, *q;
	enum MHD_Result ret;
	struct host *h = path_unmanaged(req, &u, &ret);

	if (h == NULL)
		return ret;
	if (instance_known(req->params[1], other, sizeof(other)))
		return http_reply_error(req, 409, "name",
					"an instance named %s exists already (on host %s); destroy "
					"this copy instead",
					req->params[1], other[0] ? other : "(none)");
	q = json_object_new_object();
	json_object_object_add(q, "what", json_object_new_string("spec"));
	json_object_object_add(q, "name", json_object_new_string(req->params[1]));
	api_query_wait(req, h, q, 0, adopt_answer, false);
	return MHD_YES;
}

/*
 * POST /hosts/{name}/unmanaged/{instance}/actions/destroy: the agent stops the
 * instance and removes it with its files; an "unmanaged-destroy" operation (202).
 * When the controller manages an instance of that name elsewhere, disks are kept:
 * disk paths derive from the name, and the shared pool is shared.
 */
enum MHD_Result api_host_unmanaged_destroy(struct request *req)
{
	struct json_object *u, *op, *args, *res, *body, *spec;
	char busy[LINK_OP_ID_MAX + 1], other[SEAL_HOST_MAX + 1];
	_cleanup_free_ char *target = NULL;
	enum MHD_Result ret;
	struct kerr err;
	struct host *h = path_unmanaged(req, &u, &ret);
	bool keep;

	if (h == NULL)
		return ret;
	target = xasprintf("hosts/%s/unmanaged/%s", h->name, req->params[1]);
	if (op_busy(target, busy, sizeof(busy)))
		return http_reply_error(req, 409, NULL, "instance %s is busy with operation %s",
					req->params[1], busy);
	keep = instance_known(req->params[1], other, sizeof(other));
	args = json_object_new_object();
	json_object_object_add(args, "force", json_object_new_boolean(1));
	json_object_object_add(args, "keep_disks", json_object_new_boolean(keep));
	res = json_object_new_object();
	json_object_object_add(res, "args", json_object_get(args));
	op = op_create("unmanaged-destroy", target, h, res, &err);
	if (op == NULL) {
		json_object_put(args);
		return http_reply_kerr(req, &err);
	}
	spec = json_object_new_object();
	json_object_object_add(spec, "name", json_object_new_string(req->params[1]));
	json_object_object_add(spec, "type", json_object_new_string(json_get_str(u, "type", "vm")));
	body = json_object_new_object();
	json_object_object_add(body, "action", json_object_new_string("delete"));
	json_object_object_add(body, "instance", spec);
	json_object_object_add(body, "args", args);
	log_info("host %s: destroying unmanaged instance %s", h->name, req->params[1]);
	agentlink_cmd_send(h, LINK_CMD_INSTANCE,
			   json_object_get_string(json_object_object_get(op, "id")), body);
	return http_reply_json(req, 202, op);
}
