/*
 * api_security_groups.c - /api/v1/security-groups: create, list, read, replace the
 * rules of and delete security groups (the rules and what they mean: secgroups.c).
 * Operators write, viewers read. A change reaches the hosts at once (netsync_all()).
 */
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"
#include "valid.h"

static const struct json_field create_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"description", JK_STRING, false, NULL},
	{"rules", JK_ARRAY, false, NULL},
	{NULL, 0, false, NULL},
};

static const struct json_field put_fields[] = {
	{"description", JK_STRING, false, NULL},
	{"rules", JK_ARRAY, true, NULL},
	{NULL, 0, false, NULL},
};

/* A group's JSON from a row (name, description, rules, created_at, updated_at). */
static struct json_object *row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object();
	const char *name = (const char *)sqlite3_column_text(st, 0);

	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "description",
			       json_object_new_string((const char *)sqlite3_column_text(st, 1)));
	json_object_object_add(o, "rules",
			       json_tokener_parse((const char *)sqlite3_column_text(st, 2)));
	json_object_object_add(o, "members", secgroup_members(name));
	json_object_object_add(o, "created_at", json_object_new_int64(sqlite3_column_int64(st, 3)));
	json_object_object_add(o, "updated_at", json_object_new_int64(sqlite3_column_int64(st, 4)));
	return o;
}

#define GROUP_COLUMNS "name, description, rules, created_at, updated_at"

static struct json_object *group_get_json(const char *name)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT " GROUP_COLUMNS " FROM security_groups WHERE name = ?");
	struct json_object *o = NULL;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	if (sqlite3_step(st) == SQLITE_ROW)
		o = row_json(st);
	sqlite3_finalize(st);
	return o;
}

/* The group named by the path: its JSON, or NULL after answering 400/404. */
static struct json_object *path_group(struct request *req, enum MHD_Result *ret)
{
	struct json_object *o;

	if (!name_valid(req->params[0])) {
		*ret = http_reply_error(req, 400, "name",
					"group name must be 1-63 characters of a-z, 0-9 and '-'");
		return NULL;
	}
	o = group_get_json(req->params[0]);
	if (o == NULL)
		*ret = http_reply_error(req, 404, NULL, "no security group named %s",
					req->params[0]);
	return o;
}

enum MHD_Result api_secgroups_create(struct request *req)
{
	struct json_object *body, *rules, *out;
	const char *name;
	struct kerr err;
	sqlite3_stmt *st;
	int64_t now = now_ms();
	int rc;

	if (http_body_json(req, create_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	name = json_get_str(body, "name", "");
	if (secgroup_exists(name)) {
		json_object_put(body);
		return http_reply_error(req, 409, "name",
					"a security group named %s exists already", name);
	}
	rules = json_object_object_get(body, "rules");
	rules = secgroup_rules_build(name, rules ? rules : json_object_new_array(), &err);
	if (rules == NULL) {
		json_object_put(body);
		return http_reply_kerr(req, &err);
	}
	st = db_prepare(ctl.db, "INSERT INTO security_groups (name, description, rules, "
				"created_at, updated_at) VALUES (?, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, json_get_str(body, "description", ""), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, json_text(rules), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 4, now);
	sqlite3_bind_int64(st, 5, now);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(rules);
	if (rc != SQLITE_DONE) {
		json_object_put(body);
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	}
	out = group_get_json(name);
	log_info("security group %s: created", name);
	json_object_put(body);
	if (out == NULL)
		return http_reply_error(req, 500, NULL, "security group vanished after insert");
	event_emit("security-group-created", json_object_get(out));
	return http_reply_json(req, 201, out);
}

enum MHD_Result api_secgroups_list(struct request *req)
{
	struct json_object *list = json_object_new_array(), *out = json_object_new_object();
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT " GROUP_COLUMNS " FROM security_groups ORDER BY name");

	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(list, row_json(st));
	sqlite3_finalize(st);
	json_object_object_add(out, "security_groups", list);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_secgroup_get(struct request *req)
{
	enum MHD_Result ret;
	struct json_object *o = path_group(req, &ret);

	return o ? http_reply_json(req, 200, o) : ret;
}

/* PUT replaces the rules (and description) whole: rules are ordered, so a list is
 * the unit a change is made in. */
enum MHD_Result api_secgroup_put(struct request *req)
{
	enum MHD_Result ret;
	struct json_object *cur = path_group(req, &ret), *body, *rules, *out;
	struct kerr err;
	sqlite3_stmt *st;
	int rc;

	if (cur == NULL)
		return ret;
	if (http_body_json(req, put_fields, &body, &err) < 0) {
		json_object_put(cur);
		return http_reply_kerr(req, &err);
	}
	rules = secgroup_rules_build(req->params[0], json_object_object_get(body, "rules"), &err);
	if (rules == NULL) {
		json_object_put(cur);
		json_object_put(body);
		return http_reply_kerr(req, &err);
	}
	st = db_prepare(ctl.db, "UPDATE security_groups SET description = ?, rules = ?, "
				"updated_at = ? WHERE name = ?");
	sqlite3_bind_text(st, 1,
			  json_get_str(body, "description", json_get_str(cur, "description", "")),
			  -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, json_text(rules), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 3, now_ms());
	sqlite3_bind_text(st, 4, req->params[0], -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(rules);
	json_object_put(body);
	json_object_put(cur);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	out = group_get_json(req->params[0]);
	if (out == NULL)
		return http_reply_error(req, 500, NULL, "security group vanished after update");
	log_info("security group %s: rules replaced", req->params[0]);
	event_emit("security-group-updated", json_object_get(out));
	netsync_all();
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_secgroup_delete(struct request *req)
{
	enum MHD_Result ret;
	struct json_object *cur = path_group(req, &ret), *ev;
	char by[96];
	sqlite3_stmt *st;
	int rc;

	if (cur == NULL)
		return ret;
	json_object_put(cur);
	if (strcmp(req->params[0], SECGROUP_DEFAULT) == 0)
		return http_reply_error(req, 409, NULL,
					"group %s holds every NIC that names no group; it "
					"cannot be deleted",
					SECGROUP_DEFAULT);
	if (secgroup_in_use(req->params[0], by, sizeof(by)))
		return http_reply_error(req, 409, NULL,
					"security group %s is in use by %s; remove it there first",
					req->params[0], by);
	st = db_prepare(ctl.db, "DELETE FROM security_groups WHERE name = ?");
	sqlite3_bind_text(st, 1, req->params[0], -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	log_info("security group %s: deleted", req->params[0]);
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(req->params[0]));
	event_emit("security-group-deleted", ev);
	netsync_all();
	return http_reply_empty(req, 204);
}
