/*
 * join.c - the join request and the check of its answer (join.h), moved here from
 * the agent so that the scale bench's simulated hosts join through the same code.
 */
#include "join.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "json.h"
#include "link.h"
#include "token.h"
#include "util.h"

int join_key_check(struct json_object *val, const char *field, struct kerr *err)
{
	unsigned char raw[SEAL_KEY_LEN];

	if (hex_decode(json_object_get_string(val), raw, sizeof(raw)) < 0)
		return err_input(err, 400, field, "field '%s' must be %d hex characters", field,
				 2 * SEAL_KEY_LEN);
	return 0;
}

int join_cluster_id_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);
	size_t len = strlen(s);

	if (len == 0 || len > JOIN_CLUSTER_ID_MAX || strspn(s, "0123456789abcdef") != len)
		return err_input(err, 400, field,
				 "field '%s' must be 1-%d lower-case hex characters", field,
				 JOIN_CLUSTER_ID_MAX);
	return 0;
}

int join_tcp_addr_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);

	if (strncmp(s, "tcp://", 6) != 0 || strlen(s) >= JOIN_ADDR_MAX || !strchr(s + 6, ':'))
		return err_input(err, 400, field, "field '%s' must be a tcp://HOST:PORT address",
				 field);
	return 0;
}

int join_interval_check(struct json_object *val, const char *field, struct kerr *err)
{
	int64_t v = json_object_get_int64(val);

	if (v < 1 || v > JOIN_HEARTBEAT_MAX_S)
		return err_input(err, 400, field, "field '%s' must be 1-%d seconds", field,
				 JOIN_HEARTBEAT_MAX_S);
	return 0;
}

int join_host_id_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_object_get_int64(val) < 1)
		return err_input(err, 400, field, "field '%s' must be a positive integer", field);
	return 0;
}

static const struct json_field join_refused_fields[] = {
	{"ok", JK_BOOL, true, NULL},
	{"error", JK_STRING, true, NULL},
	{NULL, 0, false, NULL},
};

static const struct json_field join_accepted_fields[] = {
	{"ok", JK_BOOL, true, NULL},
	{"host_id", JK_INT, true, join_host_id_check},
	{"cluster_id", JK_STRING, true, join_cluster_id_check},
	{"pubkey", JK_STRING, true, join_key_check},
	{"events", JK_STRING, true, join_tcp_addr_check},
	{"heartbeat_interval", JK_INT, true, join_interval_check},
	{"confirm", JK_STRING, true, NULL},
	{NULL, 0, false, NULL},
};

char *join_request_build(const char *name, const char *token, const char *addr,
			 const unsigned char pub[SEAL_PUB_LEN])
{
	struct json_object *req = json_object_new_object();
	char pubhex[2 * SEAL_PUB_LEN + 1], proof[TOKEN_DIGEST_LEN + 1];
	unsigned char key[32];
	char *text;

	hex_encode(pub, SEAL_PUB_LEN, pubhex);
	/* The token stays here: the request carries a proof of it, bound to this key. */
	sha256(token, strlen(token), key);
	join_proof(key, name, pubhex, addr, proof);
	OPENSSL_cleanse(key, sizeof(key));
	json_object_object_add(req, "type", json_object_new_string("join"));
	json_object_object_add(req, "version", json_object_new_int(LINK_PROTO_VERSION));
	json_object_object_add(req, "proof", json_object_new_string(proof));
	json_object_object_add(req, "name", json_object_new_string(name));
	json_object_object_add(req, "pubkey", json_object_new_string(pubhex));
	json_object_object_add(req, "addr", json_object_new_string(addr));
	text = xstrdup(json_text(req));
	json_object_put(req);
	return text;
}

int join_answer_read(const char *name, const char *token, const char *reply, size_t len,
		     const unsigned char priv[SEAL_KEY_LEN], const unsigned char pub[SEAL_PUB_LEN],
		     struct join_answer *ans, struct kerr *err)
{
	char confirm[TOKEN_DIGEST_LEN + 1], pubhex[2 * SEAL_PUB_LEN + 1];
	struct json_object *obj = NULL, *ok;
	unsigned char peer[SEAL_PUB_LEN], salt[32];
	_cleanup_free_ char *info = NULL;
	struct kerr why;
	int ret = -1;

	if (json_body_parse(reply, len, &obj, &why) < 0)
		return err_set(err, 0, "join: malformed reply: %s", why.msg);
	if (!json_object_object_get_ex(obj, "ok", &ok) ||
	    !json_object_is_type(ok, json_type_boolean)) {
		err_set(err, 0, "join: malformed reply: field 'ok' must be a boolean");
		goto out;
	}
	if (!json_object_get_boolean(ok)) {
		if (json_fields_check(obj, join_refused_fields, &why) < 0)
			err_set(err, 0, "the controller said no; malformed refusal: %s", why.msg);
		else
			err_set(err, 0, "%s", json_get_str(obj, "error", ""));
		ret = -EACCES;
		goto out;
	}
	if (json_fields_check(obj, join_accepted_fields, &why) < 0) {
		err_set(err, 0, "join: malformed reply: %s", why.msg);
		goto out;
	}

	memset(ans, 0, sizeof(*ans));
	ans->host_id = json_get_int(obj, "host_id", 0);
	snprintf(ans->cluster_id, sizeof(ans->cluster_id), "%s",
		 json_get_str(obj, "cluster_id", ""));
	snprintf(ans->events, sizeof(ans->events), "%s", json_get_str(obj, "events", ""));
	ans->heartbeat_interval = (int)json_get_int(obj, "heartbeat_interval", 1);

	hex_encode(pub, SEAL_PUB_LEN, pubhex);
	hex_decode(json_get_str(obj, "pubkey", ""), peer, sizeof(peer));
	sha256(token, strlen(token), salt);
	/* Only the controller holding the token's digest can have made this answer. */
	join_confirm(salt, name, ans->cluster_id, (long long)ans->host_id,
		     json_get_str(obj, "pubkey", ""), pubhex, ans->events,
		     (long long)ans->heartbeat_interval, confirm);
	if (!join_proof_equal(confirm, json_get_str(obj, "confirm", ""))) {
		err_set(err, 0,
			"join: the answer does not prove knowledge of the join token (not our "
			"controller, or someone in between); refusing it");
		goto out;
	}
	info = xasprintf("kumo-link-v1 %s %s", ans->cluster_id, name);
	if (seal_derive(priv, peer, salt, sizeof(salt), info, ans->key, &why) < 0) {
		err_set(err, 0, "join: %s", why.msg);
		goto out;
	}
	ret = 0;
out:
	OPENSSL_cleanse(salt, sizeof(salt));
	json_object_put(obj);
	return ret;
}
