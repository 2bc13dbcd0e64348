/*
 * join.h - the agent's half of the join exchange as messages: the request it sends
 * and the check of the controller's answer, down to the derived link key. The agent
 * (agentd/join.c) and the simulated hosts of the scale bench (tests/tools/simhosts.c)
 * both join through here, so a simulation joins exactly as a real agent does.
 *
 * The request carries a proof of the join token (token.h), never the token itself;
 * the answer must prove the same, and the link key is derived with HKDF salted with
 * the token's SHA-256 (seal.h).
 */
#ifndef KUMO_JOIN_H
#define KUMO_JOIN_H

#include <json-c/json.h>
#include <stdint.h>

#include "err.h"
#include "seal.h"

#define JOIN_ADDR_MAX	     256
#define JOIN_CLUSTER_ID_MAX  128
#define JOIN_HEARTBEAT_MAX_S 3600

/* What an accepted join gave the agent. */
struct join_answer {
	int64_t host_id;
	char cluster_id[JOIN_CLUSTER_ID_MAX + 1];
	char events[JOIN_ADDR_MAX]; /* the controller's event socket, as it said it */
	int heartbeat_interval;	    /* seconds */
	unsigned char key[SEAL_KEY_LEN];
};

/*
 * The join request of host name, holding token, for the key pair's public half pub,
 * advertising addr (tcp://A:P) as its command address. Returns malloc'd JSON text;
 * it holds no secret but a proof bound to name, pub and addr.
 */
char *join_request_build(const char *name, const char *token, const char *addr,
			 const unsigned char pub[SEAL_PUB_LEN]);

/*
 * Check the controller's answer (len bytes of reply) to the request built from name,
 * token and the key pair priv/pub, and derive the link key. Returns 0 with *ans
 * filled, -EACCES with err holding the controller's reason when it refused, or -1
 * with err when the answer is malformed or does not prove knowledge of the token.
 */
int join_answer_read(const char *name, const char *token, const char *reply, size_t len,
		     const unsigned char priv[SEAL_KEY_LEN], const unsigned char pub[SEAL_PUB_LEN],
		     struct join_answer *ans, struct kerr *err);

/* Field checks of join answers and of the agent's link.json (json_field callbacks). */
int join_key_check(struct json_object *val, const char *field, struct kerr *err);
int join_cluster_id_check(struct json_object *val, const char *field, struct kerr *err);
int join_tcp_addr_check(struct json_object *val, const char *field, struct kerr *err);
int join_interval_check(struct json_object *val, const char *field, struct kerr *err);
int join_host_id_check(struct json_object *val, const char *field, struct kerr *err);

#endif
