/*
 * api_hosts.c - /api/v1/hosts: list, show, label and maintenance, delete, probe.
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

enum MHD_Result api_hosts_list(struct request *req)
{
	struct json_object *list = json_object_new_array(), *out = json_object_new_object();
	size_t n = 0;

	for (struct host *h = ctl.hosts; h; h = h->next)
		n++;
	/* Sorted by name, so the listing is stable. */
	struct host **v = xcalloc(n, sizeof(*v));
	size_t i = 0;

	for (struct host *h = ctl.hosts; h; h = h->next)
		v[i++] = h;
	for (size_t a = 1; a < n; a++)
		for (size_t b = a; b > 0 && strcmp(v[b - 1]->name, v[b]->name) > 0; b--) {
			struct host *t = v[b];

			v[b] = v[b - 1];
			v[b - 1] = t;
		}
	for (i = 0; i < n; i++)
		json_object_array_add(list, host_to_json(v[i]));
	free(v);
	json_object_object_add(out, "hosts", list);
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
