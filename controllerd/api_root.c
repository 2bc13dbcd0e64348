/*
 * api_root.c - GET /api/v1 (version, cluster, counts), /healthz, /metrics and the
 * dashboard page at /.
 */
#include <string.h>

#include "controllerd.h"
#include "util.h"
#include "webassets.h"

enum MHD_Result api_root_get(struct request *req)
{
	struct json_object *out = json_object_new_object(), *counts = json_object_new_object();
	int hosts = 0, online = 0;

	for (struct host *h = ctl.hosts; h; h = h->next) {
		hosts++;
		online += h->state == HOST_ONLINE;
	}
	json_object_object_add(out, "name", json_object_new_string("kumo"));
	json_object_object_add(out, "version", json_object_new_string(KUMO_VERSION));
	json_object_object_add(out, "api", json_object_new_string("v1"));
	json_object_object_add(out, "cluster_id", json_object_new_string(ctl.cluster_id));
	json_object_object_add(out, "role", json_object_new_string(role_name(req->role)));
	json_object_object_add(counts, "hosts", json_object_new_int(hosts));
	json_object_object_add(counts, "hosts_online", json_object_new_int(online));
	json_object_object_add(
		counts, "operations",
		json_object_new_int64(db_count(ctl.db, "SELECT count(*) FROM operations")));
	json_object_object_add(
		counts, "operations_active",
		json_object_new_int64(db_count(ctl.db, "SELECT count(*) FROM operations WHERE "
						       "status IN ('pending', 'running')")));
	json_object_object_add(
		counts, "tokens",
		json_object_new_int64(db_count(ctl.db, "SELECT count(*) FROM tokens")));
	json_object_object_add(out, "counts", counts);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_healthz_get(struct request *req)
{
	struct json_object *out = json_object_new_object();

	json_object_object_add(out, "status", json_object_new_string("ok"));
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_metrics_get(struct request *req)
{
	return http_reply_text(req, 200, "text/plain; version=0.0.4", metrics_render());
}

/* Content types of the dashboard's files, by extension. */
static const struct {
	const char *ext;
	const char *type;
} web_types[] = {
	{".html", "text/html; charset=utf-8"},
	{".js", "text/javascript; charset=utf-8"},
	{".css", "text/css; charset=utf-8"},
	{".svg", "image/svg+xml"},
};

/*
 * The dashboard talks only to this API and loads only its own files: no inline script
 * or style, no other origin, no frames.
 */
#define WEB_CSP                                                                                    \
	"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "            \
	"img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

static enum MHD_Result web_serve(struct request *req, const char *name)
{
	const struct web_asset *a;
	const char *type = NULL, *dot = strrchr(name, '.');
	struct MHD_Response *resp;

	for (a = kumo_web_assets; a->name; a++)
		if (strcmp(a->name, name) == 0)
			break;
	if (a->name == NULL || dot == NULL)
		return http_reply_error(req, 404, "path", "no such dashboard file");
	for (size_t i = 0; i < ARRAY_SIZE(web_types); i++)
		if (strcmp(web_types[i].ext, dot) == 0)
			type = web_types[i].type;
	if (type == NULL)
		return http_reply_error(req, 404, "path", "no such dashboard file");
	resp = MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(resp, "Content-Type", type);
	MHD_add_response_header(resp, "Content-Security-Policy", WEB_CSP);
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	return http_reply_response(req, 200, resp);
}

/* GET / : the dashboard's page. */
enum MHD_Result api_dashboard_get(struct request *req)
{
	return web_serve(req, "index.html");
}

/* GET /ui/novnc/{path} : noVNC's modules, which import each other by relative path. */
enum MHD_Result api_dashboard_novnc(struct request *req)
{
	char name[256];

	if (snprintf(name, sizeof(name), "novnc/%s", req->params[0]) >= (int)sizeof(name))
		return http_reply_error(req, 404, "path", "no such dashboard file");
	return web_serve(req, name);
}

/* GET /ui/{file} : its script, style and images (names from the compiled-in table only). */
enum MHD_Result api_dashboard_asset(struct request *req)
{
	return web_serve(req, req->params[0]);
}
