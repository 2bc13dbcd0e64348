/*
 * netdrv.h - the network driver's engine: checks the controller's desired-state
 * document and makes this host match it (links, routes, nftables, dnsmasq).
 *
 * No libuv here: everything runs to completion in the calling thread, so the agent
 * calls it from the thread pool (net.c) and tests call it from a plain program
 * (tests/tools/netapply.c). The document's shape, the names and what is realised are
 * the networks contract (issue 5): bridges kb<NID>-<VLAN>, VXLANs kx<NID>-<VLAN>,
 * instance ports kp<IID>-<I>, nftables tables kumo_n<NID>, proto 77 routes.
 */
#ifndef KUMO_NETDRV_H
#define KUMO_NETDRV_H

#include <json-c/json.h>

#include "err.h"
#include "json.h" /* json_get_str() and friends, for the documents' users */

#define NETDRV_NETWORKS_MAX	 256  /* networks in one document */
#define NETDRV_SEGMENTS_MAX	 4095 /* segments in one document, all networks */
#define NETDRV_PORTS_MAX	 1024 /* ports of one segment */
#define NETDRV_DOC_PORTS_MAX	 4096 /* ports in one document */
#define NETDRV_PEERS_MAX	 1024 /* peers of one segment */
#define NETDRV_DNS_MAX		 8
#define NETDRV_CONTROL_PLANE_MAX 1024 /* addresses instances may never reach */
#define NETDRV_GROUPS_MAX	 256  /* security groups in one document */
#define NETDRV_GROUP_RULES_MAX	 64   /* rules of one group */
#define NETDRV_GROUP_MEMBERS_MAX 4096 /* member addresses of one group */
#define NETDRV_PORT_GROUPS_MAX	 8    /* groups one port names */
#define NETDRV_ROUTE_PROTO	 77   /* marks the /32 routes this driver owns */
#define NETDRV_VXLAN_PORT	 4789
#define NETDRV_CMD_TIMEOUT_MS	 10000		    /* a command still running then is killed */
#define NETDRV_CMD_OUTPUT_MAX	 (64 * 1024 * 1024) /* bytes of a command's output kept */
#define NETDRV_DNSMASQ_STOP_MS	 3000		    /* from SIGTERM to SIGKILL */

/*
 * Check a desired-state document strictly: every field's type and shape, names that
 * follow the contract's patterns, addresses inside their networks, no duplicates.
 * Returns 0, or -1 with err (status 400) naming the field at fault. Changes nothing.
 */
int netdrv_doc_check(struct json_object *doc, struct kerr *err);

/*
 * Make this host match doc (checked with netdrv_doc_check()), using dir for dnsmasq's
 * files: create and fix what is missing or different, remove everything kumo-owned
 * the document does not list. A failing step does not stop the others. Returns the
 * number of changes made (0 when the host already matched), or a negative value with
 * err holding the first failure. Needs root (CAP_NET_ADMIN, and signals to dnsmasq).
 */
int netdrv_apply(struct json_object *doc, const char *dir, struct kerr *err);

/*
 * Put the existing port ifname on bridge with mtu, and up. A bridge not made yet is
 * made bare (type bridge, mtu, up); the next apply completes it. Returns 0 or -1 with
 * err.
 */
int netdrv_port_attach(const char *ifname, const char *bridge, int mtu, struct kerr *err);

/*
 * Run argv (argv[0] is looked up in the sbin and bin directories; never a shell) with
 * input (or nothing) on its stdin, killed after NETDRV_CMD_TIMEOUT_MS. On success
 * returns 0 and, when out is not NULL, its stdout in *out (NUL-terminated; the caller
 * frees it). On failure returns a negative value (*out NULL) with err naming the
 * command and quoting its stderr.
 */
int netdrv_run(const char *const argv[], const char *input, char **out, struct kerr *err);

#endif
