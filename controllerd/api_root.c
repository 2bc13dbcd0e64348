/*
 * api_root.c - GET /api/v1 (version, cluster, counts), /healthz, /metrics and the
 * dashboard page at /.
 */
#include <openssl/evp.h>
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

/*
 * Append "'sha256-...' " for the body of every <tag>...</tag> in html to csp: the page's
 * own inline code is named by its hash, so nothing injected into it would run.
 */
static void csp_hashes(const char *html, const char *tag, char *csp, size_t len)
{
	_cleanup_free_ char *start_tag = xasprintf("<%s>", tag);
	_cleanup_free_ char *end_tag = xasprintf("</%s>", tag);
	const char *p = html, *end;

	while ((p = strstr(p, start_tag)) && (end = strstr(p, end_tag))) {
		unsigned char md[32], b64[48];
		unsigned int mdlen = 0;

		p += strlen(start_tag);
		EVP_Digest(p, (size_t)(end - p), md, &mdlen, EVP_sha256(), NULL);
		EVP_EncodeBlock(b64, md, (int)mdlen);
		snprintf(csp + strlen(csp), len - strlen(csp), " 'sha256-%s'", b64);
		p = end;
	}
}

/*
 * The dashboard is one page that talks only to this API: its policy allows its own
 * inline script and style (by hash) and fetches to the same origin, nothing else.
 */
enum MHD_Result api_dashboard_get(struct request *req)
{
	static char csp[1024];
	struct MHD_Response *resp;

	if (csp[0] == '\0') {
		snprintf(csp, sizeof(csp), "default-src 'none'; script-src");
		csp_hashes(kumo_dashboard_html, "script", csp, sizeof(csp));
		snprintf(csp + strlen(csp), sizeof(csp) - strlen(csp), "; style-src");
		csp_hashes(kumo_dashboard_html, "style", csp, sizeof(csp));
		snprintf(csp + strlen(csp), sizeof(csp) - strlen(csp),
			 "; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; "
			 "base-uri 'none'; form-action 'none'");
	}
	resp = MHD_create_response_from_buffer(strlen(kumo_dashboard_html),
					       (void *)kumo_dashboard_html, MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
	MHD_add_response_header(resp, "Content-Security-Policy", csp);
	return http_reply_response(req, 200, resp);
}
