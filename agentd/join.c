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

#include "join.h"
#include "json.h"
#include "util.h"
#include "valid.h"

static const struct json_field link_file_fields[] = {
	{"host", JK_STRING, true, name_check},
	{"host_id", JK_INT, true, join_host_id_check},
	{"cluster_id", JK_STRING, true, join_cluster_id_check},
	{"key", JK_STRING, true, join_key_check},
	{"events", JK_STRING, true, join_tcp_addr_check},
	{"controller", JK_STRING, false, NULL},
	{"heartbeat_interval", JK_INT, false, join_interval_check},
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
		err_prefix(err, prefix);
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

/* Check the answer (join.h) and make the link of it. */
static int join_reply_read(const struct agent_config *cfg, const char *reply, size_t len,
			   const unsigned char priv[SEAL_KEY_LEN],
			   const unsigned char pub[SEAL_PUB_LEN], struct agent_link *link,
			   struct kerr *err)
{
	struct join_answer ans;
	char joinhost[AGENT_ADDR_MAX];
	int port, ret;

	ret = join_answer_read(cfg->name, cfg->join_token, reply, len, priv, pub, &ans, err);
	if (ret < 0)
		return ret;
	memset(link, 0, sizeof(*link));
	snprintf(link->host, sizeof(link->host), "%s", cfg->name);
	link->host_id = ans.host_id;
	snprintf(link->cluster_id, sizeof(link->cluster_id), "%s", ans.cluster_id);
	snprintf(link->controller, sizeof(link->controller), "%s", cfg->controller);
	link->heartbeat_interval = ans.heartbeat_interval;
	config_hostport_split(cfg->controller, joinhost, sizeof(joinhost), &port, NULL);
	events_addr_fix(link, ans.events, joinhost);
	memcpy(link->key, ans.key, sizeof(link->key));
	OPENSSL_cleanse(&ans, sizeof(ans));
	return 0;
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
	text = join_request_build(cfg->name, cfg->join_token, addr, pub);
	ret = join_exchange(sock, url, text, &reply, &replylen, err);
	explicit_bzero(text, strlen(text));
	if (ret == 0)
		ret = join_reply_read(cfg, reply, replylen, priv, pub, link, err);
out:
	explicit_bzero(priv, sizeof(priv));
	nn_close(sock);
	return ret;
}
