/*
 * join.c - joining the cluster once, and link.json, the state that joining produced.
 *
 * The join is the one clear-text exchange of the link: the agent presents an X25519
 * public key and a proof that it holds its single-use join token (HMAC keyed by the
 * token's SHA-256 over its name, key and address; the token itself is never sent)
 * over NN_REQ; the controller answers with its own public key, where to send events
 * and the same kind of proof over its answer. Both sides then derive the link key
 * with HKDF, salted with the token's SHA-256, so only the holders of the token and the
 * private keys can seal messages for this host, and someone in between who swapped
 * either key learns nothing.
 *
 * The exchange blocks: it runs at start-up, before the loop exists.
 */
#include "agentd.h"

#include <errno.h>
#include <nanomsg/nn.h>
#include <openssl/crypto.h>
#include <nanomsg/reqrep.h>
#include <string.h>

#include "json.h"
#include "token.h"
#include "util.h"
#include "valid.h"

static int hex_key_check(struct json_object *val, const char *field, struct kerr *err)
{
	unsigned char raw[SEAL_KEY_LEN];

	if (hex_decode(json_object_get_string(val), raw, sizeof(raw)) < 0)
		return err_input(err, 400, field, "field '%s' must be %d hex characters", field,
				 2 * SEAL_KEY_LEN);
	return 0;
}

static int cluster_id_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);
	size_t len = strlen(s);

	if (len == 0 || len > AGENT_CLUSTER_ID_MAX || strspn(s, "0123456789abcdef") != len)
		return err_input(err, 400, field,
				 "field '%s' must be 1-%d lower-case hex characters", field,
				 AGENT_CLUSTER_ID_MAX);
	return 0;
}

static int tcp_addr_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);

	if (strncmp(s, "tcp://", 6) != 0 || strlen(s) >= AGENT_ADDR_MAX || !strchr(s + 6, ':'))
		return err_input(err, 400, field, "field '%s' must be a tcp://HOST:PORT address",
				 field);
	return 0;
}

static int interval_check(struct json_object *val, const char *field, struct kerr *err)
{
	int64_t v = json_object_get_int64(val);

	if (v < 1 || v > AGENT_HEARTBEAT_MAX_S)
		return err_input(err, 400, field, "field '%s' must be 1-%d seconds", field,
				 AGENT_HEARTBEAT_MAX_S);
	return 0;
}

static int host_id_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_object_get_int64(val) < 1)
		return err_input(err, 400, field, "field '%s' must be a positive integer", field);
	return 0;
}

static const struct json_field link_file_fields[] = {
	{"host", JK_STRING, true, name_check},
	{"host_id", JK_INT, true, host_id_check},
	{"cluster_id", JK_STRING, true, cluster_id_check},
	{"key", JK_STRING, true, hex_key_check},
	{"events", JK_STRING, true, tcp_addr_check},
	{"controller", JK_STRING, false, NULL},
	{"heartbeat_interval", JK_INT, false, interval_check},
	{NULL, 0, false, NULL},
};

static const struct json_field join_refused_fields[] = {
	{"ok", JK_BOOL, true, NULL},
	{"error", JK_STRING, true, NULL},
	{NULL, 0, false, NULL},
};

static const struct json_field join_accepted_fields[] = {
	{"ok", JK_BOOL, true, NULL},
	{"host_id", JK_INT, true, host_id_check},
	{"cluster_id", JK_STRING, true, cluster_id_check},
	{"pubkey", JK_STRING, true, hex_key_check},
	{"events", JK_STRING, true, tcp_addr_check},
	{"heartbeat_interval", JK_INT, true, interval_check},
	{"confirm", JK_STRING, true, NULL},
	{NULL, 0, false, NULL},
};

/*
 * Read {state_dir}/link.json into link. Returns 0, or a negative errno with err
 * (-ENOENT when there is no file; -EINVAL when it is damaged).
 */
int join_link_load(const char *path, struct agent_link *link, struct kerr *err)
{
	_cleanup_free_ char *text = NULL;
	struct json_object *obj = NULL;
	size_t len;
	int ret;

	memset(link, 0, sizeof(*link));
	ret = file_read_all(path, 64 * 1024, &text, &len);
	if (ret < 0)
		return err_set(err, -ret, "cannot read %s", path);
	if (json_body_parse(text, len, &obj, err) < 0 ||
	    json_fields_check(obj, link_file_fields, err) < 0) {
		_cleanup_free_ char *prefix = xasprintf("%s is damaged: ", path);

		json_object_put(obj);
		agent_err_prefix(err, prefix);
		return -EINVAL;
	}
	snprintf(link->host, sizeof(link->host), "%s", json_get_str(obj, "host", ""));
	link->host_id = json_get_int(obj, "host_id", 0);
	snprintf(link->cluster_id, sizeof(link->cluster_id), "%s",
		 json_get_str(obj, "cluster_id", ""));
	hex_decode(json_get_str(obj, "key", ""), link->key, sizeof(link->key));
	snprintf(link->events, sizeof(link->events), "%s", json_get_str(obj, "events", ""));
	snprintf(link->controller, sizeof(link->controller), "%s",
		 json_get_str(obj, "controller", ""));
	link->heartbeat_interval = (int)json_get_int(obj, "heartbeat_interval", 1);
	json_object_put(obj);
	return 0;
}

/*
 * Write link to path atomically with mode 0600: it holds the link key.
 * Returns 0 or a negative errno with err.
 */
int join_link_save(const char *path, const struct agent_link *link, struct kerr *err)
{
	struct json_object *obj = json_object_new_object();
	char keyhex[2 * SEAL_KEY_LEN + 1];
	_cleanup_free_ char *text = NULL;
	int ret;

	hex_encode(link->key, sizeof(link->key), keyhex);
	json_object_object_add(obj, "host", json_object_new_string(link->host));
	json_object_object_add(obj, "host_id", json_object_new_int64(link->host_id));
	json_object_object_add(obj, "cluster_id", json_object_new_string(link->cluster_id));
	json_object_object_add(obj, "key", json_object_new_string(keyhex));
	json_object_object_add(obj, "events", json_object_new_string(link->events));
	json_object_object_add(obj, "controller", json_object_new_string(link->controller));
	json_object_object_add(obj, "heartbeat_interval",
			       json_object_new_int(link->heartbeat_interval));
	text = xasprintf("%s\n",
			 json_object_to_json_string_ext(
				 obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(obj);
	explicit_bzero(keyhex, sizeof(keyhex));
	ret = file_write_atomic(path, text, strlen(text), 0600);
	explicit_bzero(text, strlen(text));
	if (ret < 0)
		return err_set(err, -ret, "cannot write %s", path);
	return 0;
}

/*
 * The controller may bind its event socket to a wildcard address; the agent then
 * reaches it at the host it joined through.
 */
static void events_addr_fix(struct agent_link *link, const char *events, const char *joinhost)
{
	const char *rest = events + strlen("tcp://");
	const char *colon = strrchr(rest, ':');
	size_t hostlen = (size_t)(colon - rest);

	bool wildcard = (hostlen == 7 && strncmp(rest, "0.0.0.0", 7) == 0) ||
			(hostlen == 1 && rest[0] == '*');

	if (wildcard && (size_t)snprintf(link->events, sizeof(link->events), "tcp://%s%s", joinhost,
					 colon) < sizeof(link->events)) {
		log_info("join: controller events at %s reached as %s", events, link->events);
		return;
	}
	snprintf(link->events, sizeof(link->events), "%s", events);
}

static char *join_request_text(const struct agent_config *cfg, const char *addr,
			       const unsigned char pub[SEAL_PUB_LEN])
{
	struct json_object *req = json_object_new_object();
	char pubhex[2 * SEAL_PUB_LEN + 1], proof[TOKEN_DIGEST_LEN + 1];
	unsigned char key[32];
	char *text;

	hex_encode(pub, SEAL_PUB_LEN, pubhex);
	/* The token stays here: the request carries a proof of it, bound to this key. */
	sha256(cfg->join_token, strlen(cfg->join_token), key);
	join_proof(key, cfg->name, pubhex, addr, proof);
	OPENSSL_cleanse(key, sizeof(key));
	json_object_object_add(req, "type", json_object_new_string("join"));
	json_object_object_add(req, "version", json_object_new_int(LINK_PROTO_VERSION));
	json_object_object_add(req, "proof", json_object_new_string(proof));
	json_object_object_add(req, "name", json_object_new_string(cfg->name));
	json_object_object_add(req, "pubkey", json_object_new_string(pubhex));
	json_object_object_add(req, "addr", json_object_new_string(addr));
	text = xstrdup(json_text(req));
	json_object_put(req);
	return text;
}

/* Send the request and wait for the answer, retrying until the controller answers. */
static int join_exchange(int sock, const char *url, const char *text, char **reply,
			 size_t *replylen, struct kerr *err)
{
	for (;;) {
		void *buf = NULL;
		int n;

		/* On NN_REQ a new send abandons the unanswered request before it. */
		if (nn_send(sock, text, strlen(text), 0) < 0 && nn_errno() != ETIMEDOUT &&
		    nn_errno() != EINTR)
			return err_set(err, nn_errno(), "join: cannot send to %s", url);
		n = nn_recv(sock, &buf, NN_MSG, 0);
		if (n >= 0) {
			*reply = xmalloc((size_t)n + 1);
			memcpy(*reply, buf, (size_t)n);
			(*reply)[n] = '\0';
			*replylen = (size_t)n;
			nn_freemsg(buf);
			return 0;
		}
		if (nn_errno() != ETIMEDOUT && nn_errno() != EAGAIN && nn_errno() != EINTR &&
		    nn_errno() != EFSM)
			return err_set(err, nn_errno(), "join: cannot receive from %s", url);
		log_warnx("join: no answer from %s within %d s; retrying in %d s", url,
			  AGENT_JOIN_TIMEOUT_MS / 1000, AGENT_JOIN_RETRY_S);
		sleep(AGENT_JOIN_RETRY_S);
	}
}

static int join_reply_read(const struct agent_config *cfg, const char *reply, size_t len,
			   const unsigned char priv[SEAL_KEY_LEN], const char *pubhex,
			   struct agent_link *link, struct kerr *err)
{
	char confirm[TOKEN_DIGEST_LEN + 1];
	struct json_object *obj = NULL, *ok;
	unsigned char peer[SEAL_PUB_LEN], salt[32];
	char joinhost[AGENT_ADDR_MAX];
	_cleanup_free_ char *info = NULL;
	int port, ret = -1;

	if (json_body_parse(reply, len, &obj, err) < 0)
		return agent_err_prefix(err, "join: malformed reply: ");
	if (!json_object_object_get_ex(obj, "ok", &ok) ||
	    !json_object_is_type(ok, json_type_boolean)) {
		err_set(err, 0, "join: malformed reply: field 'ok' must be a boolean");
		goto out;
	}
	if (!json_object_get_boolean(ok)) {
		if (json_fields_check(obj, join_refused_fields, err) < 0)
			agent_err_prefix(err, "the controller said no; malformed refusal: ");
		else
			err_set(err, 0, "%s", json_get_str(obj, "error", ""));
		ret = -EACCES;
		goto out;
	}
	if (json_fields_check(obj, join_accepted_fields, err) < 0) {
		agent_err_prefix(err, "join: malformed reply: ");
		goto out;
	}

	memset(link, 0, sizeof(*link));
	snprintf(link->host, sizeof(link->host), "%s", cfg->name);
	link->host_id = json_get_int(obj, "host_id", 0);
	snprintf(link->cluster_id, sizeof(link->cluster_id), "%s",
		 json_get_str(obj, "cluster_id", ""));
	snprintf(link->controller, sizeof(link->controller), "%s", cfg->controller);
	link->heartbeat_interval = (int)json_get_int(obj, "heartbeat_interval", 1);
	config_hostport_split(cfg->controller, joinhost, sizeof(joinhost), &port, NULL);
	events_addr_fix(link, json_get_str(obj, "events", ""), joinhost);

	hex_decode(json_get_str(obj, "pubkey", ""), peer, sizeof(peer));
	sha256(cfg->join_token, strlen(cfg->join_token), salt);
	/* Only the controller holding the token's digest can have made this answer. */
	join_confirm(salt, cfg->name, link->cluster_id, (long long)link->host_id,
		     json_get_str(obj, "pubkey", ""), pubhex, json_get_str(obj, "events", ""),
		     (long long)json_get_int(obj, "heartbeat_interval", 0), confirm);
	if (!join_proof_equal(confirm, json_get_str(obj, "confirm", ""))) {
		err_set(err, 0,
			"join: the answer does not prove knowledge of the join token (not our "
			"controller, or someone in between); refusing it");
		goto out;
	}
	info = xasprintf("kumo-link-v1 %s %s", link->cluster_id, link->host);
	if (seal_derive(priv, peer, salt, sizeof(salt), info, link->key, err) < 0) {
		agent_err_prefix(err, "join: ");
		goto out;
	}
	ret = 0;
out:
	OPENSSL_cleanse(salt, sizeof(salt));
	json_object_put(obj);
	return ret;
}

/*
 * Join the cluster through cfg->controller with cfg->join_token, advertising addr as
 * this host's command address. Blocks, retrying every few seconds until the controller
 * answers. Returns 0 with link filled (not yet saved), -EACCES with err holding the
 * controller's reason when it refused, or another negative value with err.
 */
int join_run(const struct agent_config *cfg, const char *addr, struct agent_link *link,
	     struct kerr *err)
{
	unsigned char priv[SEAL_KEY_LEN], pub[SEAL_PUB_LEN];
	_cleanup_free_ char *url = xasprintf("tcp://%s", cfg->controller);
	_cleanup_free_ char *text = NULL, *reply = NULL;
	int timeout = AGENT_JOIN_TIMEOUT_MS, maxsize = 64 * 1024, sock, ret;
	size_t replylen = 0;

	if (seal_keypair(priv, pub, err) < 0)
		return -1;
	sock = nn_socket(AF_SP, NN_REQ);
	if (sock < 0)
		return err_set(err, nn_errno(), "join: cannot create a socket");
	nn_setsockopt(sock, NN_SOL_SOCKET, NN_RCVTIMEO, &timeout, sizeof(timeout));
	nn_setsockopt(sock, NN_SOL_SOCKET, NN_SNDTIMEO, &timeout, sizeof(timeout));
	nn_setsockopt(sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &maxsize, sizeof(maxsize));
	if (nn_connect(sock, url) < 0) {
		ret = err_set(err, nn_errno(), "join: cannot connect to %s", url);
		goto out;
	}
	log_info("join: joining through %s as host %s (commands at %s)", url, cfg->name, addr);
	text = join_request_text(cfg, addr, pub);
	ret = join_exchange(sock, url, text, &reply, &replylen, err);
	explicit_bzero(text, strlen(text));
	if (ret == 0) {
		char pubhex[2 * SEAL_PUB_LEN + 1];

		hex_encode(pub, SEAL_PUB_LEN, pubhex);
		ret = join_reply_read(cfg, reply, replylen, priv, pubhex, link, err);
	}
out:
	explicit_bzero(priv, sizeof(priv));
	nn_close(sock);
	return ret;
}
