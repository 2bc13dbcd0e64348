/*
 * netnft.h - the nftables tables of a network (netnft.c): isolation, NAT, port
 * security, security groups and the control plane instances may not reach. Private to
 * the network driver, like netdoc.h.
 */
#ifndef KUMO_NETNFT_H
#define KUMO_NETNFT_H

#include <json-c/json.h>
#include <stdint.h>

#include "netdoc.h"

/* What the tables need of the document and the host beyond the network itself. */
struct netnft_host {
	struct json_object *groups;	   /* the document's security_groups, or NULL */
	struct json_object *control_plane; /* addresses instances never reach, or NULL */
	uint32_t underlay_net;		   /* this host's underlay subnet (host order) */
	int underlay_prefix;		   /* 0: unknown, no subnet rule */
};

/*
 * The nft script that replaces network n's tables (inet and bridge kumo_n<NID>) whole,
 * for a checked document. A string the caller frees.
 */
char *netnft_network(const struct netdoc_net *n, const struct netnft_host *h);

#endif
