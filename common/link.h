/*
 * link.h - messages between controller and agents.
 *
 * Every message after joining is a JSON envelope {type, host, seq, op?, body}
 * sealed with the host's link key (seal.h). The join exchange itself is the only
 * clear-text message: it carries a single-use join token and public keys.
 *
 *   controller (NN_REQ, one per agent)  --cmd-->  agent (NN_REP)   acked at once
 *   agent (NN_PUSH)  --heartbeat/op-progress/op-done-->  controller (NN_PULL)
 *   agent (NN_REQ)   --join-->  controller (NN_REP, join port)
 */
#ifndef KUMO_LINK_H
#define KUMO_LINK_H

#include <json-c/json.h>
#include <stdint.h>

#include "err.h"
#include "seal.h"

#define LINK_PROTO_VERSION    2 /* 2: the join proves the token, never sends it */
#define LINK_OP_ID_MAX	      40
#define LINK_MSG_MAX	      (4 * 1024 * 1024)
#define LINK_REPLAY_WINDOW_US (120LL * 1000000)
/* A dashboard relay on the agent (a watched serial console, a VNC stream) lives this
 * long unless the controller renews it (it does every LINK_RELAY_RENEW_MS while its
 * browser is there): a controller that restarted or lost the host leaves none open. */
#define LINK_RELAY_LEASE_MS 20000
#define LINK_RELAY_RENEW_MS 5000

enum link_type {
	LINK_HEARTBEAT,	     /* agent -> controller: facts */
	LINK_OP_PROGRESS,    /* agent -> controller: op, {progress, phase} */
	LINK_OP_DONE,	     /* agent -> controller: op, {status, result|error} */
	LINK_CMD_PROBE,	     /* controller -> agent: op; refresh facts */
	LINK_ACK,	     /* agent -> controller reply: command accepted (queries: the answer) */
	LINK_NACK,	     /* agent -> controller reply: command refused, {error} */
	LINK_CMD_INSTANCE,   /* controller -> agent: op; {action, instance, args} */
	LINK_CMD_QUERY,	     /* controller -> agent: {what, ...}; the ack body answers */
	LINK_INSTANCE_STATE, /* agent -> controller: an instance changed, {name, state, ...} */
	LINK_QUERY_DONE,     /* agent -> controller: op (the query's), {answer} or {error}: a
			      * query acked {"deferred": true} (exec) ends here */
	LINK_CMD_CANCEL,     /* controller -> agent: op (the job's); {reason}; the ack says
				{op, state: cancelling|done|unknown} */
	LINK_CONSOLE_DATA,   /* agent -> controller: what a watched VM's serial port wrote,
			      * {name, data: base64} or {name, closed: true} (console.c) */
	LINK_TYPE_COUNT,
};

struct link_msg {
	enum link_type type;
	char host[SEAL_HOST_MAX + 1];
	int64_t seq;
	char op[LINK_OP_ID_MAX + 1]; /* "" when the message concerns no operation */
	/* When the sender stops waiting for an answer (µs, wall clock, as seq), or 0:
	 * a receiver must not act on the message after that. Queries carry it. */
	int64_t expires;
	struct json_object *body; /* owned; always an object */
};

const char *link_type_name(enum link_type type);
int link_type_parse(const char *name, enum link_type *out);

/* Seal m for its host in direction dir. *out is malloc'd. */
int link_msg_seal(const unsigned char key[SEAL_KEY_LEN], char dir, const struct link_msg *m,
		  unsigned char **out, size_t *outlen, struct kerr *err);

/*
 * Open a sealed message with key and check the envelope's shape: known type, inner
 * host equal to the clear one, integer seq, op a short string, body an object.
 * Replay is the caller's to check (it owns the per-peer window). On success m owns
 * its body; release with link_msg_clear().
 */
int link_msg_open(const unsigned char key[SEAL_KEY_LEN], char expect_dir, const unsigned char *buf,
		  size_t len, struct link_msg *m, struct kerr *err);

/* Release m's body; a command's args.key (args.restore.key), a secret, is wiped first. */
void link_msg_clear(struct link_msg *m);

/*
 * Heartbeats carry a digest of the facts document, and the whole document only when
 * it changed since the last one sent or LINK_FACTS_FULL_S passed: a heartbeat with
 * facts unchanged is then {addr, facts_digest, uptime_s}, and the controller keeps
 * the facts it has. Parsing every host's whole facts every second was 30% of the
 * controller at 5,000 hosts. The periodic full document is what brings a restarted
 * controller (which keeps no digests) up to date.
 */
#define LINK_FACTS_DIGEST_LEN 64 /* hex SHA-256 */
#define LINK_FACTS_FULL_S     30

/*
 * The digest of facts, everything but "uptime_s" (which moves every beat and rides
 * beside the digest), as hex into out.
 */
void link_facts_digest(struct json_object *facts, char out[LINK_FACTS_DIGEST_LEN + 1]);

/* A random operation id: 32 hex characters. */
void link_op_id_new(char out[LINK_OP_ID_MAX + 1]);
/* True for a string that could be an operation id (1-40 of [a-z0-9-]). */
int link_op_id_valid(const char *s);

#endif
