/*
 * routes.c - every REST route, once: method, pattern, least role, allowed query keys,
 * handler, and the stream interface of a route whose body is not collected in memory.
 * main.c hands the table to http.c. The pattern's "{}" segments become req->params in
 * order; a last segment "*" matches any non-empty rest of the path, which becomes the
 * last param (the registry's repository names hold slashes). Adding a route is one
 * row here plus its handler.
 */
#include "controllerd.h"
#include "util.h"

const struct route api_routes[] = {
	{"GET", "/healthz", ROLE_NONE, "", api_healthz_get, NULL},
	{"GET", "/metrics", ROLE_VIEWER, "", api_metrics_get, NULL},
	{"GET", "/", ROLE_NONE, "", api_dashboard_get, NULL},
	{"GET", "/api/v1", ROLE_VIEWER, "", api_root_get, NULL},
	{"GET", "/api/v1/hosts", ROLE_VIEWER, "limit,after,fields,state,label", api_hosts_list,
	 NULL},
	{"GET", "/api/v1/hosts/{}", ROLE_VIEWER, "", api_host_get, NULL},
	{"PATCH", "/api/v1/hosts/{}", ROLE_OPERATOR, "", api_host_patch, NULL},
	{"DELETE", "/api/v1/hosts/{}", ROLE_ADMIN, "force", api_host_delete, NULL},
	{"POST", "/api/v1/hosts/{}/actions/probe", ROLE_OPERATOR, "", api_host_probe, NULL},
	{"POST", "/api/v1/hosts/{}/unmanaged/{}/actions/adopt", ROLE_OPERATOR, "",
	 api_host_unmanaged_adopt, NULL},
	{"POST", "/api/v1/hosts/{}/unmanaged/{}/actions/destroy", ROLE_OPERATOR, "",
	 api_host_unmanaged_destroy, NULL},
	{"POST", "/api/v1/tokens", ROLE_ADMIN, "", api_tokens_create, NULL},
	{"GET", "/api/v1/tokens", ROLE_ADMIN, "limit,after,fields", api_tokens_list, NULL},
	{"DELETE", "/api/v1/tokens/{}", ROLE_ADMIN, "", api_token_delete, NULL},
	{"POST", "/api/v1/tokens/{}/actions/rotate", ROLE_ADMIN, "", api_token_rotate, NULL},
	{"GET", "/api/v1/audit", ROLE_ADMIN, "limit,after,token", api_audit_list, NULL},
	{"GET", "/api/v1/operations", ROLE_VIEWER, "status,limit,after,fields", api_ops_list, NULL},
	{"GET", "/api/v1/operations/{}", ROLE_VIEWER, "wait", api_op_get, NULL},
	{"POST", "/api/v1/operations/{}/actions/cancel", ROLE_OPERATOR, "", api_op_cancel, NULL},
	{"GET", "/api/v1/events", ROLE_VIEWER, "type", api_events_stream, NULL},
	{"POST", "/api/v1/instances", ROLE_OPERATOR, "", api_instances_create, NULL},
	{"GET", "/api/v1/instances", ROLE_VIEWER,
	 "limit,after,fields,host,state,type,label,network", api_instances_list, NULL},
	{"GET", "/api/v1/instances/{}", ROLE_VIEWER, "", api_instance_get, NULL},
	{"PATCH", "/api/v1/instances/{}", ROLE_OPERATOR, "", api_instance_patch, NULL},
	{"DELETE", "/api/v1/instances/{}", ROLE_OPERATOR, "force,keep_disks", api_instance_delete,
	 NULL},
	{"POST", "/api/v1/instances/{}/actions/{}", ROLE_OPERATOR, "", api_instance_action, NULL},
	{"GET", "/api/v1/instances/{}/console", ROLE_OPERATOR, "bytes", api_instance_console, NULL},
	{"GET", "/api/v1/instances/{}/logs", ROLE_OPERATOR, "tail,follow", api_instance_logs, NULL},
	{"POST", "/api/v1/instances/{}/exec", ROLE_OPERATOR, "", api_instance_exec, NULL},
	{"POST", "/api/v1/instances/{}/snapshots", ROLE_OPERATOR, "", api_snapshots_create, NULL},
	{"GET", "/api/v1/instances/{}/snapshots", ROLE_VIEWER, "", api_snapshots_list, NULL},
	{"POST", "/api/v1/instances/{}/snapshots/{}/actions/revert", ROLE_OPERATOR, "",
	 api_snapshot_revert, NULL},
	{"DELETE", "/api/v1/instances/{}/snapshots/{}", ROLE_OPERATOR, "", api_snapshot_delete,
	 NULL},
	{"POST", "/api/v1/images", ROLE_OPERATOR, "name,format", api_images_upload,
	 &api_images_stream},
	{"GET", "/api/v1/images", ROLE_VIEWER, "limit,after,fields", api_images_list, NULL},
	{"GET", "/api/v1/images/{}", ROLE_VIEWER, "", api_image_get, NULL},
	{"DELETE", "/api/v1/images/{}", ROLE_OPERATOR, "", api_image_delete, NULL},
	{"POST", "/api/v1/networks", ROLE_OPERATOR, "", api_networks_create, NULL},
	{"GET", "/api/v1/networks", ROLE_VIEWER, "limit,after,fields", api_networks_list, NULL},
	{"GET", "/api/v1/networks/{}", ROLE_VIEWER, "", api_network_get, NULL},
	{"PATCH", "/api/v1/networks/{}", ROLE_OPERATOR, "", api_network_patch, NULL},
	{"DELETE", "/api/v1/networks/{}", ROLE_OPERATOR, "", api_network_delete, NULL},
	{"GET", "/api/v1/networks/{}/addresses", ROLE_VIEWER, "", api_network_addresses, NULL},
	{"POST", "/api/v1/security-groups", ROLE_OPERATOR, "", api_secgroups_create, NULL},
	{"GET", "/api/v1/security-groups", ROLE_VIEWER, "", api_secgroups_list, NULL},
	{"GET", "/api/v1/security-groups/{}", ROLE_VIEWER, "", api_secgroup_get, NULL},
	{"PUT", "/api/v1/security-groups/{}", ROLE_OPERATOR, "", api_secgroup_put, NULL},
	{"DELETE", "/api/v1/security-groups/{}", ROLE_OPERATOR, "", api_secgroup_delete, NULL},
	/* The OCI registry (registry.c) parses the rest of its paths itself; its token
	 * endpoint (registry_auth.c) checks the credentials it is sent on its own. */
	{"GET", "/v2/token", ROLE_NONE, "service,scope,account,client_id,offline_token",
	 registry_token_get, NULL},
	{"GET", "/v2/", ROLE_VIEWER, "", registry_serve, &registry_stream},
	{"HEAD", "/v2/", ROLE_VIEWER, "", registry_serve, &registry_stream},
	{"GET", "/v2/*", ROLE_VIEWER, "n,last,artifactType", registry_serve, &registry_stream},
	{"HEAD", "/v2/*", ROLE_VIEWER, "", registry_serve, &registry_stream},
	{"PUT", "/v2/*", ROLE_OPERATOR, "digest", registry_serve, &registry_stream},
	{"POST", "/v2/*", ROLE_OPERATOR, "digest,mount,from", registry_serve, &registry_stream},
	{"PATCH", "/v2/*", ROLE_OPERATOR, "", registry_serve, &registry_stream},
	{"DELETE", "/v2/*", ROLE_OPERATOR, "", registry_serve, &registry_stream},
};

const size_t api_routes_count = ARRAY_SIZE(api_routes);
