/*
 * api_root.c - GET /api/v1 (version, cluster, counts), /healthz, /metrics and the
 * dashboard page at /.
 */
#include <string.h>

#include "controllerd.h"
#include "util.h"

/* web/index.html, embedded at build time (see controllerd/CMakeLists.txt). */
extern const char kumo_dashboard_html[];

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

enum MHD_Result api_dashboard_get(struct request *req)
{
	return http_reply_text(req, 200, "text/html; charset=utf-8", xstrdup(kumo_dashboard_html));
}
