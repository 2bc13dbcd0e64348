/*
 * api_backups.c - the REST side of backups (backups.c holds the rules and the SQL):
 *
 *   GET/POST /api/v1/backup-stores, GET/DELETE /api/v1/backup-stores/{name}
 *        POST {"name", "path"?, "encryption_key"?}: 64 hex digits make it encrypted
 *   POST /api/v1/instances/{name}/backups            {"store"?, "mode"?} -> operation
 *   GET  /api/v1/backups[?instance=NAME], GET /api/v1/backups/{id}
 *   GET  /api/v1/backup-schedules
 *   GET/PUT/DELETE /api/v1/instances/{name}/backup-schedule   {calendar, store?, mode?,
 *                                                     keep_*?} (backup_sched.c)
 *   POST /api/v1/backups/{id}/actions/restore        {"name"?, "host"?, "networks"?,
 *                                                     "start"?, "encryption_key"?}
 *                                                     -> operation: over the
 *        backup's own stopped instance, or a new instance made from its saved spec
 */
#include "controllerd.h"

#include <openssl/crypto.h>
#include <string.h>

#include "chunkcrypt.h"
#include "json.h"
#include "log.h"
#include "spec.h"
#include "util.h"
#include "valid.h"

/* An optional body: absent or empty is {}. */
static int body_or_empty(struct request *req, const struct json_field *fields,
			 struct json_object **out, struct kerr *err)
{
	if (req->body_len == 0) {
		*out = json_object_new_object();
		return 0;
	}
	return http_body_json(req, fields, out, err);
}

/* ---- stores ---- */

static int store_path_check(struct json_object *v, const char *f, struct kerr *err)
{
	return backup_store_path_check(json_object_get_string(v), err);
}

static int key_check(struct json_object *v, const char *f, struct kerr *err)
{
	unsigned char key[CHUNKCRYPT_KEY_LEN];
	int ret = chunkcrypt_key_parse(json_object_get_string(v), key, err);

	(void)f;
	OPENSSL_cleanse(key, sizeof(key));
	return ret;
}

/*
 * A request that carried an encryption key: wipe its text, in the parsed body and in
 * the request's buffer, before either is freed.
 */
static void body_key_wipe(struct request *req, struct json_object *body)
{
	struct json_object *v;

	if (!json_object_object_get_ex(body, "encryption_key", &v))
		return;
	OPENSSL_cleanse((char *)json_object_get_string(v), (size_t)json_object_get_string_len(v));
	if (req->body)
		OPENSSL_cleanse(req->body, req->body_len);
}

static const struct json_field store_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"path", JK_STRING, false, store_path_check},
	{"encryption_key", JK_STRING, false, key_check}, /* 64 hex digits: an encrypted store */
	{NULL, 0, false, NULL},
};

enum MHD_Result api_backup_stores_list(struct request *req)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "backup_stores", backup_stores_list());
	return http_reply_json(req, 200, o);
}

enum MHD_Result api_backup_stores_create(struct request *req)
{
	struct json_object *body, *s;
	struct kerr err;
	int ret;

	if (http_body_json(req, store_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	ret = backup_store_create(json_get_str(body, "name", ""), json_get_str(body, "path", NULL),
				  json_get_str(body, "encryption_key", NULL), &err);
	s = ret == 0 ? backup_store_get(json_get_str(body, "name", "")) : NULL;
	body_key_wipe(req, body);
	json_object_put(body);
	if (ret < 0)
		return http_reply_kerr(req, &err);
	return http_reply_json(req, 201, s);
}

enum MHD_Result api_backup_store_get(struct request *req)
{
	struct json_object *s = backup_store_get(req->params[0]);

	if (s == NULL)
		return http_reply_error(req, 404, NULL, "no backup store named %.64s",
					req->params[0]);
	return http_reply_json(req, 200, s);
}

enum MHD_Result api_backup_store_delete(struct request *req)
{
	struct kerr err;

	if (backup_store_delete(req->params[0], &err) < 0)
		return http_reply_kerr(req, &err);
	return http_reply_empty(req, 204);
}

/* ---- backups ---- */

enum MHD_Result api_backups_list(struct request *req)
{
	const char *instance = http_query(req, "instance");
	struct json_object *o;

	if (instance && !name_valid(instance))
		return http_reply_error(req, 400, "instance",
					"instance must be 1-63 characters of a-z, 0-9 and '-'");
	o = json_object_new_object();
	json_object_object_add(o, "backups", backups_list(instance));
	return http_reply_json(req, 200, o);
}

enum MHD_Result api_backup_get(struct request *req)
{
	struct json_object *b = backup_get(req->params[0]);

	if (b == NULL)
		return http_reply_error(req, 404, NULL, "no backup %.64s", req->params[0]);
	return http_reply_json(req, 200, b);
}

/* The instance row name names: type, state, spec and host. */
struct binst {
	char type[16];
	char state[32];
	struct json_object *spec;
	struct host *host;
};

static bool binst_load(const char *name, struct binst *i)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT i.type, i.state, i.spec, h.name "
					      "FROM instances i LEFT JOIN hosts h "
					      "ON h.id = i.host_id WHERE i.name = ?");
	bool found = false;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		found = true;
		snprintf(i->type, sizeof(i->type), "%s", sqlite3_column_text(st, 0));
		snprintf(i->state, sizeof(i->state), "%s", sqlite3_column_text(st, 1));
		i->spec = json_tokener_parse((const char *)sqlite3_column_text(st, 2));
		i->host = sqlite3_column_type(st, 3) == SQLITE_TEXT
				  ? host_find((const char *)sqlite3_column_text(st, 3))
				  : NULL;
	}
	sqlite3_finalize(st);
	return found;
}

static int mode_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *m = json_object_get_string(v);

	if (strcmp(m, "auto") && strcmp(m, "full") && strcmp(m, "incremental"))
		return err_input(err, 400, f, "mode must be auto, full or incremental");
	return 0;
}

/* The same bounds and words as a migration's limit (migrate.c). */
static int bandwidth_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 1 || n > 1000000)
		return err_input(err, 400, f, "'%s' must be 1..1000000 (Mbit/s)", f);
	return 0;
}

static const struct json_field backup_fields[] = {
	{"store", JK_STRING, false, name_check},
	{"mode", JK_STRING, false, mode_check},
	{"bandwidth_mbps", JK_INT, false, bandwidth_check}, /* the disk reads' pace */
	{NULL, 0, false, NULL},
};

enum MHD_Result api_instance_backup(struct request *req)
{
	struct json_object *body = NULL, *op;
	struct binst i = {0};
	struct kerr err;
	enum MHD_Result ret;

	if (name_valid(req->params[0])) /* a path's name goes to the log only once valid */
		log_trace("backup of %s: asked", req->params[0]);
	if (body_or_empty(req, backup_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	if (!name_valid(req->params[0]) || !binst_load(req->params[0], &i)) {
		json_object_put(body);
		return http_reply_error(req, 404, NULL, "no instance named %.64s", req->params[0]);
	}
	op = backup_start(req->params[0], i.type, i.spec, i.host, json_get_str(body, "store", NULL),
			  json_get_str(body, "mode", NULL), json_get_int(body, "bandwidth_mbps", 0),
			  &err);
	ret = op ? http_reply_json(req, 202, op) : http_reply_kerr(req, &err);
	log_trace("backup of %s: answered", req->params[0]);
	if (op)
		snprintf(req->audit_op, sizeof(req->audit_op), "%s", json_get_str(op, "id", ""));
	json_object_put(i.spec);
	json_object_put(body);
	return ret;
}

static int networks_check(struct json_object *v, const char *f, struct kerr *err)
{
	if (json_array_len(v) > SPEC_NICS_MAX)
		return err_input(err, 400, f, "%s holds at most %d networks", f, SPEC_NICS_MAX);
	for (size_t i = 0; i < json_array_len(v); i++) {
		struct json_object *n = json_object_array_get_idx(v, i);

		if (!json_object_is_type(n, json_type_string) ||
		    !name_valid(json_object_get_string(n)))
			return err_input(err, 400, f, "%s[%zu] is not a network name", f, i);
	}
	return 0;
}

static const struct json_field restore_fields[] = {
	{"name", JK_STRING, false, name_check},
	{"host", JK_STRING, false, name_check},
	{"networks", JK_ARRAY, false, networks_check},	 /* a new instance's NICs */
	{"start", JK_BOOL, false, NULL},		 /* a new instance boots (default) */
	{"encryption_key", JK_STRING, false, key_check}, /* an encrypted store's, again */
	{NULL, 0, false, NULL},
};

/*
 * A restore to a new instance: instance_create() (api_instances.c) with a body made
 * from the backup's saved spec, whose create writes the disks from the chunks.
 * Its answer (202 and the create operation, 409 name taken, 422 no room) is the
 * create's.
 */
static enum MHD_Result restore_create(struct request *req, struct json_object *b,
				      struct json_object *body, const char *name)
{
	struct json_object *create, *restore = NULL, *op, *placement;
	struct kerr err;

	if (!json_get_bool(b, "restorable", false))
		return http_reply_error(req, 409, NULL, "backup %s is %s, not restorable",
					json_get_str(b, "id", ""), json_get_str(b, "status", ""));
	create = backup_restore_body(b, name, json_get_str(body, "host", NULL),
				     json_object_object_get(body, "networks"),
				     json_get_bool(body, "start", true), &restore, &err);
	if (create == NULL)
		return http_reply_kerr(req, &err);
	op = instance_create(create, restore, &placement, &err);
	json_object_put(create);
	json_object_put(restore);
	return instance_create_reply(req, op, placement, &err);
}

enum MHD_Result api_backup_restore(struct request *req)
{
	struct json_object *body = NULL, *b, *op = NULL;
	struct binst i = {0};
	const char *name;
	struct kerr err;
	enum MHD_Result ret;

	if (body_or_empty(req, restore_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	b = backup_get(req->params[0]);
	if (b == NULL) {
		json_object_put(body);
		return http_reply_error(req, 404, NULL, "no backup %.64s", req->params[0]);
	}
	name = json_get_str(body, "name", json_get_str(b, "instance", ""));
	/* An encrypted store: a wrong key given is refused here, before anything is read;
	 * without one, the key the controller holds must unwrap. */
	if (backup_store_key_supply(req->params[0], json_get_str(body, "encryption_key", NULL),
				    &err) < 0) {
		ret = http_reply_kerr(req, &err);
	} else if (!binst_load(name, &i)) {
		/* No such instance: the restore creates it, placed like any create. */
		ret = restore_create(req, b, body, name);
	} else if (strcmp(name, json_get_str(b, "instance", "")) != 0) {
		/* Over the original only: another instance of that name is not this one. */
		ret = http_reply_error(req, 409, "name",
				       "an instance named %s exists already; a restore creates a "
				       "new instance or writes over the backup's own (%s)",
				       name, json_get_str(b, "instance", ""));
	} else if (!strcmp(i.type, "container")) {
		ret = http_reply_error(req, 409, "name",
				       "container %s exists; a container's backup restores into a "
				       "new container: give another name, or delete %s first",
				       name, name);
	} else if (strcmp(i.type, json_get_str(b, "instance_type", "vm")) != 0) {
		ret = http_reply_error(req, 409, "name",
				       "instance %s is a %s; the backup is of a %s", name, i.type,
				       json_get_str(b, "instance_type", "vm"));
	} else if (json_get_str(body, "host", NULL) && i.host &&
		   strcmp(json_get_str(body, "host", ""), i.host->name) != 0) {
		ret = http_reply_error(req, 422, "host", "a restore into %s runs on its host %s",
				       name, i.host->name);
	} else {
		op = backup_restore_start(req->params[0], name, i.state, i.spec, i.host, &err);
		ret = op ? http_reply_json(req, 202, op) : http_reply_kerr(req, &err);
		if (op)
			snprintf(req->audit_op, sizeof(req->audit_op), "%s",
				 json_get_str(op, "id", ""));
	}
	json_object_put(i.spec);
	json_object_put(b);
	body_key_wipe(req, body);
	json_object_put(body);
	return ret;
}

enum MHD_Result api_backup_verify(struct request *req)
{
	struct json_object *op;
	struct kerr err;

	if (req->body_len > 0) {
		struct json_object *body;
		static const struct json_field none[] = {{NULL, 0, false, NULL}};

		if (http_body_json(req, none, &body, &err) < 0)
			return http_reply_kerr(req, &err);
		json_object_put(body);
	}
	op = backup_verify_start(req->params[0], &err);
	if (op == NULL)
		return http_reply_kerr(req, &err);
	snprintf(req->audit_op, sizeof(req->audit_op), "%s", json_get_str(op, "id", ""));
	return http_reply_json(req, 202, op);
}

enum MHD_Result api_backup_delete(struct request *req)
{
	struct kerr err;

	if (backup_delete(req->params[0], &err) < 0)
		return http_reply_kerr(req, &err);
	return http_reply_empty(req, 204);
}

static int keep_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 0 || n > 100000)
		return err_input(err, 400, f, "%s must be 0-100000", f);
	return 0;
}

static const struct json_field prune_fields[] = {
	{"instance", JK_STRING, false, name_check},
	{"keep_last", JK_INT, false, keep_check},
	{"keep_hourly", JK_INT, false, keep_check},
	{"keep_daily", JK_INT, false, keep_check},
	{"keep_weekly", JK_INT, false, keep_check},
	{"keep_monthly", JK_INT, false, keep_check},
	{"keep_yearly", JK_INT, false, keep_check},
	{"dry_run", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};

enum MHD_Result api_backup_store_prune(struct request *req)
{
	struct json_object *body, *out;
	struct prune_policy p;
	struct kerr err;

	if (http_body_json(req, prune_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	p.keep_last = (int)json_get_int(body, "keep_last", 0);
	p.keep_hourly = (int)json_get_int(body, "keep_hourly", 0);
	p.keep_daily = (int)json_get_int(body, "keep_daily", 0);
	p.keep_weekly = (int)json_get_int(body, "keep_weekly", 0);
	p.keep_monthly = (int)json_get_int(body, "keep_monthly", 0);
	p.keep_yearly = (int)json_get_int(body, "keep_yearly", 0);
	if (!p.keep_last && !p.keep_hourly && !p.keep_daily && !p.keep_weekly && !p.keep_monthly &&
	    !p.keep_yearly) {
		json_object_put(body);
		return http_reply_error(req, 400, NULL,
					"a policy keeps something: give at least one keep_* > 0");
	}
	out = backup_prune(req->params[0], json_get_str(body, "instance", NULL), &p,
			   json_get_bool(body, "dry_run", false), &err);
	json_object_put(body);
	if (out == NULL)
		return http_reply_kerr(req, &err);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_backup_store_gc(struct request *req)
{
	struct json_object *op;
	struct kerr err;

	op = backup_store_gc(req->params[0], &err);
	if (op == NULL)
		return http_reply_kerr(req, &err);
	snprintf(req->audit_op, sizeof(req->audit_op), "%s", json_get_str(op, "id", ""));
	return http_reply_json(req, 202, op);
}

/* ---- schedules (backup_sched.c) ---- */

static int calendar_check(struct json_object *v, const char *f, struct kerr *err)
{
	struct backup_calendar cal;

	return backup_calendar_parse(json_object_get_string(v), &cal, err);
}

static const struct json_field schedule_fields[] = {
	{"calendar", JK_STRING, true, calendar_check}, {"store", JK_STRING, false, name_check},
	{"mode", JK_STRING, false, mode_check},	       {"keep_last", JK_INT, false, keep_check},
	{"keep_hourly", JK_INT, false, keep_check},    {"keep_daily", JK_INT, false, keep_check},
	{"keep_weekly", JK_INT, false, keep_check},    {"keep_monthly", JK_INT, false, keep_check},
	{"keep_yearly", JK_INT, false, keep_check},    {NULL, 0, false, NULL},
};

enum MHD_Result api_backup_schedules_list(struct request *req)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "backup_schedules", backup_schedules_list());
	return http_reply_json(req, 200, o);
}

enum MHD_Result api_backup_schedule_get(struct request *req)
{
	struct json_object *s = backup_schedule_get(req->params[0]);

	if (s == NULL)
		return http_reply_error(req, 404, NULL, "instance %.64s has no backup schedule",
					req->params[0]);
	return http_reply_json(req, 200, s);
}

enum MHD_Result api_backup_schedule_put(struct request *req)
{
	struct json_object *body;
	struct binst i = {0};
	struct kerr err;
	int ret;

	if (http_body_json(req, schedule_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	if (!name_valid(req->params[0]) || !binst_load(req->params[0], &i)) {
		json_object_put(body);
		return http_reply_error(req, 404, NULL, "no instance named %.64s", req->params[0]);
	}
	if (!strcmp(i.type, "container") && !strcmp(json_get_str(body, "mode", ""), "incremental"))
		ret = err_input(&err, 422, "mode", "a container's backups are full");
	else
		ret = backup_schedule_set(req->params[0], body, &err);
	json_object_put(i.spec);
	json_object_put(body);
	if (ret < 0)
		return http_reply_kerr(req, &err);
	return http_reply_json(req, 200, backup_schedule_get(req->params[0]));
}

enum MHD_Result api_backup_schedule_delete(struct request *req)
{
	if (!backup_schedule_delete(req->params[0]))
		return http_reply_error(req, 404, NULL, "instance %.64s has no backup schedule",
					req->params[0]);
	return http_reply_empty(req, 204);
}
