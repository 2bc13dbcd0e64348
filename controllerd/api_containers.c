/*
 * api_containers.c - what is particular to container instances: their create
 * fields and spec, image references resolved against the registry's tags, the
 * scheduler's view of their limits, and the logs and exec routes.
 */
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "scheduler.h"
#include "spec.h"
#include "util.h"
#include "valid.h"

#define EXEC_TIMEOUT_S 10
#define EXEC_MAX_S     60
#define EXEC_OUTPUT    (256 * 1024)
#define LOG_DEFAULT    (64 * 1024)
#define LOG_MAX	       (1024 * 1024)

static int strings_check(struct json_object *v, const char *f, size_t min, struct kerr *err)
{
	size_t n = json_array_len(v);

	if (n < min || n > SPEC_ARGS_MAX)
		return err_input(err, 400, f, "'%s' needs %zu to %d strings", f, min,
				 SPEC_ARGS_MAX);
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(v, i);

		if (!json_object_is_type(e, json_type_string) || !json_string_clean(e) ||
		    json_object_get_string_len(e) > SPEC_ARG_LEN_MAX)
			return err_input(err, 400, f,
					 "'%s[%zu]' must be a string of at most %d bytes", f, i,
					 SPEC_ARG_LEN_MAX);
	}
	return 0;
}

static int command_check(struct json_object *v, const char *f, struct kerr *err)
{
	return strings_check(v, f, 1, err);
}

static int env_check(struct json_object *v, const char *f, struct kerr *err)
{
	if (json_object_object_length(v) > SPEC_ENV_MAX)
		return err_input(err, 400, f, "'%s' has more than %d variables", f, SPEC_ENV_MAX);
	json_object_object_foreach(v, key, val)
	{
		size_t klen = strlen(key);

		if (klen == 0 || klen > 255 ||
		    strspn(key,
			   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") !=
			    klen ||
		    (key[0] >= '0' && key[0] <= '9'))
			return err_input(err, 400, f,
					 "environment variable name '%.64s' is not valid", key);
		if (!json_object_is_type(val, json_type_string) || !json_string_clean(val) ||
		    json_object_get_string_len(val) > SPEC_ARG_LEN_MAX)
			return err_input(err, 400, f, "environment variable %s must be a string",
					 key);
	}
	return 0;
}

static int workdir_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (s[0] != '/' || strlen(s) > 1024 || !json_string_clean(v) || strstr(s, "/../") ||
	    (strlen(s) >= 3 && !strcmp(s + strlen(s) - 3, "/..")))
		return err_input(err, 400, f, "'%s' must be an absolute path without '..'", f);
	if (path_in_kernel_fs(s))
		return err_input(err, 400, f, "'%s' must not be in /proc, /sys or /dev", f);
	return 0;
}

static int cpus_check(struct json_object *v, const char *f, struct kerr *err)
{
	double d = json_object_get_double(v);

	if (!(d >= 0.01 && d <= SPEC_CPUS_MAX))
		return err_input(err, 400, f, "'%s' must be 0.01..%d", f, SPEC_CPUS_MAX);
	return 0;
}

static int limit_mb_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < SPEC_LIMIT_MB_MIN || n > SPEC_LIMIT_MB_MAX)
		return err_input(err, 400, f, "'%s' must be %d..%d MiB", f, SPEC_LIMIT_MB_MIN,
				 SPEC_LIMIT_MB_MAX);
	return 0;
}

static int pids_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 1 || n > SPEC_PIDS_MAX)
		return err_input(err, 400, f, "'%s' must be 1..%d", f, SPEC_PIDS_MAX);
	return 0;
}

static const struct json_field limits_fields[] = {
	{"cpus", JK_NUMBER, false, cpus_check},
	{"memory_mb", JK_INT, false, limit_mb_check},
	{"pids", JK_INT, false, pids_check},
	{NULL, 0, false, NULL},
};

static int limits_check(struct json_object *v, const char *f, struct kerr *err)
{
	if (json_fields_check_in(v, limits_fields, f, err) < 0)
		return -1;
	return 0;
}

/*
 * Capabilities a container may hold beyond the base set (Docker's defaults without
 * NET_RAW), without the CAP_ prefix: a short allow-list, nothing that reaches past the
 * container's own namespaces.
 */
static const char *const capabilities_allowed[] = {"NET_RAW", NULL};

static int capabilities_check(struct json_object *v, const char *f, struct kerr *err)
{
	size_t n = json_array_len(v);

	if (n > ARRAY_SIZE(capabilities_allowed))
		return err_input(err, 400, f, "'%s' has too many entries", f);
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(v, i);
		const char *c = json_object_get_string(e);
		bool ok = false;

		for (const char *const *a = capabilities_allowed; *a && c; a++)
			ok = ok || (json_object_is_type(e, json_type_string) && !strcmp(c, *a));
		if (!ok)
			return err_input(err, 400, f,
					 "'%s[%zu]' must be one of: NET_RAW (a capability a "
					 "container may ask for)",
					 f, i);
	}
	return 0;
}

static int restart_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "no") && strcmp(s, "on-failure") && strcmp(s, "always"))
		return err_input(err, 400, f, "'%s' must be no, on-failure or always", f);
	return 0;
}

/* An image reference: repo[:tag] or repo@sha256:<64 hex>. */
static int image_ref_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);
	size_t len = strlen(s);

	if (len == 0 || len > 256 || !json_string_clean(v) ||
	    strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789._-/:@ABCDEFGHIJKLMNOPQRSTUVWXYZ") !=
		    len ||
	    s[0] == '/' || strstr(s, ".."))
		return err_input(err, 400, f, "'%s' must be an image reference like busybox:latest",
				 f);
	return 0;
}

const struct json_field container_create_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"type", JK_STRING, true, NULL},
	{"image", JK_STRING, true, image_ref_check},
	{"command", JK_ARRAY, false, command_check},
	{"env", JK_OBJECT, false, env_check},
	{"workdir", JK_STRING, false, workdir_check},
	{"limits", JK_OBJECT, false, limits_check},
	{"restart", JK_STRING, false, restart_check},
	{"stop_timeout_s", JK_INT, false, stop_grace_check},
	{"capabilities", JK_ARRAY, false, capabilities_check},
	{"userns", JK_BOOL, false, NULL},
	{"nics", JK_ARRAY, false, nics_container_check},
	{"host", JK_STRING, false, name_check},
	{"anti_affinity", JK_STRING, false, name_check},
	{"labels", JK_OBJECT, false, labels_check},
	{"ha", JK_OBJECT, false, ha_field_check},
	{"start", JK_BOOL, false, NULL},
	{"timeout_s", JK_INT, false, create_timeout_check}, /* the create's deadline */
	{NULL, 0, false, NULL},
};

/*
 * Resolve an image reference to its manifest digest ("sha256:<hex>") and canonical
 * name ("repo:tag", or "repo@digest"). Returns 0, or -1 with err (404 naming it).
 */
int oci_ref_resolve(const char *ref, char *digest, size_t dlen, char *canon, size_t clen,
		    struct kerr *err)
{
	char repo[257], tag[129] = "latest";
	const char *at = strchr(ref, '@'), *colon;
	sqlite3_stmt *st;
	int found;

	if (at) {
		snprintf(repo, sizeof(repo), "%.*s", (int)(at - ref), ref);
		st = db_prepare(ctl.db,
				"SELECT digest FROM oci_manifests WHERE repo = ? AND digest = ?");
		sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, at + 1, -1, SQLITE_STATIC);
	} else {
		colon = strrchr(ref, ':');
		if (colon && !strchr(colon, '/')) {
			snprintf(repo, sizeof(repo), "%.*s", (int)(colon - ref), ref);
			snprintf(tag, sizeof(tag), "%s", colon + 1);
		} else {
			snprintf(repo, sizeof(repo), "%s", ref);
		}
		st = db_prepare(ctl.db, "SELECT digest FROM oci_tags WHERE repo = ? AND tag = ?");
		sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
	}
	found = sqlite3_step(st) == SQLITE_ROW;
	if (found)
		snprintf(digest, dlen, "%s", sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (!found)
		return err_input(err, 404, "image", "no container image %s in the cluster registry",
				 ref);
	if (at)
		snprintf(canon, clen, "%s", ref);
	else
		snprintf(canon, clen, "%s:%s", repo, tag);
	return 0;
}

/* The normalized spec of a validated container create body, or NULL with err. */
struct json_object *container_spec_build(struct json_object *body, struct kerr *err)
{
	struct json_object *spec, *img, *v, *limits;
	char digest[80], canon[400];

	if (oci_ref_resolve(json_get_str(body, "image", ""), digest, sizeof(digest), canon,
			    sizeof(canon), err) < 0)
		return NULL;
	spec = json_object_new_object();
	img = json_object_new_object();
	json_object_object_add(spec, "name",
			       json_object_new_string(json_get_str(body, "name", "")));
	json_object_object_add(spec, "type", json_object_new_string("container"));
	json_object_object_add(img, "name", json_object_new_string(canon));
	json_object_object_add(img, "manifest", json_object_new_string(digest));
	json_object_object_add(spec, "image", img);
	for (const char *const *k =
		     (const char *const[]){"command", "env", "workdir", "capabilities", NULL};
	     *k; k++) {
		v = json_object_object_get(body, *k);
		json_object_object_add(spec, *k, v ? json_object_get(v) : NULL);
	}
	/* Recorded either way: a spec without it is a container made before user
	 * namespaces, which its agent keeps running without one (agentd/uid.c). */
	json_object_object_add(spec, "userns",
			       json_object_new_boolean(json_get_bool(body, "userns", true)));
	limits = json_object_new_object();
	v = json_object_object_get(body, "limits");
	json_object_object_add(limits, "cpus", json_object_get(json_object_object_get(v, "cpus")));
	json_object_object_add(limits, "memory_mb",
			       json_object_get(json_object_object_get(v, "memory_mb")));
	json_object_object_add(limits, "pids", json_object_get(json_object_object_get(v, "pids")));
	json_object_object_add(spec, "limits", limits);
	json_object_object_add(spec, "restart",
			       json_object_new_string(json_get_str(body, "restart", "no")));
	v = json_object_object_get(body, "stop_timeout_s");
	json_object_object_add(spec, "stop_timeout_s", v ? json_object_get(v) : NULL);
	v = nics_build(json_object_object_get(body, "nics"), false, err);
	if (v == NULL) {
		json_object_put(spec);
		return NULL;
	}
	json_object_object_add(spec, "nics", v);
	v = json_object_object_get(body, "labels");
	json_object_object_add(spec, "labels", v ? json_object_get(v) : json_object_new_object());
	v = json_object_object_get(body, "anti_affinity");
	json_object_object_add(spec, "anti_affinity", v ? json_object_get(v) : NULL);
	v = json_object_object_get(body, "host");
	json_object_object_add(spec, "host", v ? json_object_get(v) : NULL);
	return spec;
}

/* ---- logs ---- */

/* Look up a container instance named by the path; NULL after answering. */
static struct host *container_host(struct request *req, const char *name, enum MHD_Result *ret)
{
	sqlite3_stmt *st;
	struct host *h = NULL;
	char type[16] = "", hname[64] = "";
	int found;

	if (!name_valid(name)) {
		*ret = http_reply_error(
			req, 400, "name",
			"instance name must be 1-63 characters of a-z, 0-9 and '-'");
		return NULL;
	}
	st = db_prepare(ctl.db, "SELECT i.type, h.name FROM instances i LEFT JOIN hosts h ON "
				"h.id = i.host_id WHERE i.name = ?");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	found = sqlite3_step(st) == SQLITE_ROW;
	if (found) {
		snprintf(type, sizeof(type), "%s", sqlite3_column_text(st, 0));
		if (sqlite3_column_type(st, 1) == SQLITE_TEXT)
			snprintf(hname, sizeof(hname), "%s", sqlite3_column_text(st, 1));
	}
	sqlite3_finalize(st);
	if (!found) {
		*ret = http_reply_error(req, 404, NULL, "no instance named %s", name);
		return NULL;
	}
	if (strcmp(type, "container")) {
		*ret = http_reply_error(req, 400, NULL,
					"instance %s is a %s; this is for containers", name, type);
		return NULL;
	}
	h = host_find(hname);
	if (h == NULL || h->state != HOST_ONLINE) {
		*ret = http_reply_error(req, 503, NULL, "the host of instance %s is offline", name);
		return NULL;
	}
	return h;
}

static enum MHD_Result logs_answer(struct request *req)
{
	return api_query_text_reply(req, "logs");
}

/* A follow stream: the agent is asked for what came after offset, every 500 ms. */
struct log_follow {
	struct MHD_Connection *conn;
	struct host *host_hint;
	char name[NAME_MAX_LEN + 1];
	int64_t offset;
	char *buf;
	size_t len, off;
	bool suspended, asking, ended;
	uv_timer_t *timer;
	struct token_watch watch; /* ends the stream when its token goes */
};

static void follow_ask(struct log_follow *f);

static void follow_answer_cb(struct json_object *body, const char *error, void *cls)
{
	struct log_follow *f = cls;

	f->asking = false;
	if (body) {
		size_t len;
		char *data = base64_decode(json_get_str(body, "data", ""), &len);

		f->offset = json_get_int(body, "offset", f->offset);
		if (data && len) {
			free(f->buf);
			f->buf = data;
			f->len = len;
			f->off = 0;
		} else {
			free(data);
		}
	} else {
		f->ended = true; /* the container or its host is gone: the stream ends */
	}
	if (f->suspended) {
		f->suspended = false;
		MHD_resume_connection(f->conn);
		http_kick();
	}
}

static void follow_timer_cb(uv_timer_t *t)
{
	follow_ask(t->data);
}

static void follow_ask(struct log_follow *f)
{
	struct host *h;
	struct json_object *q;

	if (f->asking || f->ended)
		return;
	h = host_find_instance(f->name);
	if (h == NULL || h->state != HOST_ONLINE) {
		f->ended = true;
		follow_answer_cb(NULL, "gone", f);
		return;
	}
	q = json_object_new_object();
	json_object_object_add(q, "what", json_object_new_string("logs"));
	json_object_object_add(q, "name", json_object_new_string(f->name));
	json_object_object_add(q, "offset", json_object_new_int64(f->offset));
	json_object_object_add(q, "max", json_object_new_int(LOG_DEFAULT));
	f->asking = true;
	agentlink_query(h, q, follow_answer_cb, f);
}

static ssize_t follow_reader(void *cls, uint64_t pos, char *out, size_t max)
{
	struct log_follow *f = cls;
	size_t n;

	if (f->off < f->len) {
		n = f->len - f->off < max ? f->len - f->off : max;
		memcpy(out, f->buf + f->off, n);
		f->off += n;
		return (ssize_t)n;
	}
	if (f->ended)
		return MHD_CONTENT_READER_END_OF_STREAM;
	/* Nothing to send: wait for the next answer, asked for after a pause. */
	f->suspended = true;
	MHD_suspend_connection(f->conn);
	uv_timer_start(f->timer, follow_timer_cb, 500, 0);
	return 0;
}

static void timer_free_cb(uv_handle_t *h)
{
	free(h);
}

/* The stream's token was revoked or expired: it ends once what it holds is sent. */
static void follow_revoke_cb(void *cls)
{
	struct log_follow *f = cls;

	f->ended = true;
	if (f->suspended) {
		f->suspended = false;
		uv_timer_stop(f->timer);
		MHD_resume_connection(f->conn);
		http_kick();
	}
}

static void follow_free(void *cls)
{
	struct log_follow *f = cls;

	tokens_watch_remove(&f->watch);

	agentlink_query_cancel(f);
	uv_timer_stop(f->timer);
	uv_close((uv_handle_t *)f->timer, timer_free_cb);
	free(f->buf);
	free(f);
}

static bool flag(struct request *req, const char *key)
{
	const char *v = http_query(req, key);

	return v && (!strcmp(v, "1") || !strcmp(v, "true"));
}

enum MHD_Result api_instance_logs(struct request *req)
{
	struct json_object *q;
	enum MHD_Result ret;
	struct kerr err;
	int64_t tail;
	struct host *h;
	const char *follow = http_query(req, "follow");

	if (http_query_int(req, "tail", 1, 100000, 0, &tail, &err) < 0)
		return http_reply_kerr(req, &err);
	if (follow && strcmp(follow, "0") && strcmp(follow, "1") && strcmp(follow, "true") &&
	    strcmp(follow, "false"))
		return http_reply_error(req, 400, "follow",
					"query parameter 'follow' must be 1 or 0");
	log_trace("logs %s: asked", req->params[0]);
	h = container_host(req, req->params[0], &ret);
	if (h == NULL)
		return ret;
	q = json_object_new_object();
	json_object_object_add(q, "what", json_object_new_string("logs"));
	json_object_object_add(q, "name", json_object_new_string(req->params[0]));
	json_object_object_add(q, "tail", tail ? json_object_new_int64(tail) : NULL);
	json_object_object_add(q, "max", json_object_new_int(LOG_MAX));
	if (flag(req, "follow")) {
		struct log_follow *f = xcalloc(1, sizeof(*f));
		struct MHD_Response *resp;

		if (tokens_watch_add(&f->watch, req, follow_revoke_cb, f, &err) < 0) {
			free(f);
			json_object_put(q);
			return http_reply_kerr(req, &err);
		}
		f->conn = req->conn;
		snprintf(f->name, sizeof(f->name), "%s", req->params[0]);
		f->timer = xcalloc(1, sizeof(*f->timer));
		uv_timer_init(ctl.loop, f->timer);
		f->timer->data = f;
		/* The first answer carries the tail, then the stream goes on from its end. */
		f->asking = true;
		agentlink_query(h, q, follow_answer_cb, f);
		resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, follow_reader, f,
							 follow_free);
		MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
		return http_reply_response(req, 200, resp);
	}
	api_query_wait(req, h, q, 0, logs_answer, false);
	return MHD_YES;
}

/* ---- exec ---- */

static int exec_timeout_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 1 || n > EXEC_MAX_S)
		return err_input(err, 400, f, "'%s' must be 1..%d seconds", f, EXEC_MAX_S);
	return 0;
}

static const struct json_field exec_fields[] = {
	{"command", JK_ARRAY, true, command_check},
	{"timeout_s", JK_INT, false, exec_timeout_check},
	{NULL, 0, false, NULL},
};

static enum MHD_Result exec_answer(struct request *req)
{
	struct json_object *out, *answer = api_query_answer(req);
	size_t len;
	char *data;

	if (answer == NULL)
		return http_reply_error(req, 502, NULL, "exec: %s", api_query_error(req));
	data = base64_decode(json_get_str(answer, "output", ""), &len);
	if (data == NULL)
		return http_reply_error(req, 502, NULL, "exec: the agent sent malformed output");
	out = json_object_new_object();
	json_object_object_add(out, "exit_code",
			       json_object_get(json_object_object_get(answer, "exit_code")));
	json_object_object_add(out, "output", json_object_new_string_len(data, (int)len));
	json_object_object_add(out, "truncated",
			       json_object_new_boolean(json_get_bool(answer, "truncated", false)));
	json_object_object_add(out, "timed_out",
			       json_object_new_boolean(json_get_bool(answer, "timed_out", false)));
	free(data);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_instance_exec(struct request *req)
{
	struct json_object *body, *q;
	enum MHD_Result ret;
	struct kerr err;
	struct host *h;
	int64_t timeout;

	if (http_body_json(req, exec_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	h = container_host(req, req->params[0], &ret);
	if (h == NULL) {
		json_object_put(body);
		return ret;
	}
	timeout = json_get_int(body, "timeout_s", EXEC_TIMEOUT_S);
	q = json_object_new_object();
	json_object_object_add(q, "what", json_object_new_string("exec"));
	json_object_object_add(q, "name", json_object_new_string(req->params[0]));
	json_object_object_add(q, "command",
			       json_object_get(json_object_object_get(body, "command")));
	json_object_object_add(q, "timeout_s", json_object_new_int64(timeout));
	json_object_object_add(q, "max_output", json_object_new_int(EXEC_OUTPUT));
	json_object_put(body);
	/* A client that leaves gets its exec killed, not run on to its timeout. */
	api_query_wait(req, h, q, (timeout + 5) * 1000, exec_answer, true);
	return MHD_YES;
}
