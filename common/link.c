/*
 * link.c - the sealed JSON envelope of the agent link.
 */
#include "link.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "json.h"
#include "token.h"
#include "util.h"

static const char *type_names[LINK_TYPE_COUNT] = {
	[LINK_HEARTBEAT] = "heartbeat",
	[LINK_OP_PROGRESS] = "op-progress",
	[LINK_OP_DONE] = "op-done",
	[LINK_CMD_PROBE] = "probe",
	[LINK_ACK] = "ack",
	[LINK_NACK] = "nack",
	[LINK_CMD_INSTANCE] = "instance",
	[LINK_CMD_QUERY] = "query",
	[LINK_INSTANCE_STATE] = "instance-state",
	[LINK_QUERY_DONE] = "query-done",
	[LINK_CMD_CANCEL] = "cancel",
	[LINK_CONSOLE_DATA] = "console-data",
};

const char *link_type_name(enum link_type type)
{
	return (unsigned)type < LINK_TYPE_COUNT ? type_names[type] : "?";
}

int link_type_parse(const char *name, enum link_type *out)
{
	for (int i = 0; i < LINK_TYPE_COUNT; i++) {
		if (strcmp(type_names[i], name) == 0) {
			*out = (enum link_type)i;
			return 0;
		}
	}
	return -1;
}

int link_msg_seal(const unsigned char key[SEAL_KEY_LEN], char dir, const struct link_msg *m,
		  unsigned char **out, size_t *outlen, struct kerr *err)
{
	struct json_object *env = json_object_new_object();
	const char *text;
	int ret;

	json_object_object_add(env, "type", json_object_new_string(link_type_name(m->type)));
	json_object_object_add(env, "host", json_object_new_string(m->host));
	json_object_object_add(env, "seq", json_object_new_int64(m->seq));
	if (m->op[0])
		json_object_object_add(env, "op", json_object_new_string(m->op));
	if (m->expires)
		json_object_object_add(env, "expires", json_object_new_int64(m->expires));
	json_object_object_add(env, "body",
			       m->body ? json_object_get(m->body) : json_object_new_object());
	text = json_text(env);
	ret = seal_pack(key, dir, m->host, text, strlen(text), out, outlen, err);
	/* The clear text may carry a secret (a backup store's key): gone before it is freed. */
	OPENSSL_cleanse((char *)text, strlen(text));
	json_object_put(env);
	return ret;
}

static const struct json_field envelope_fields[] = {
	{"type", JK_STRING, true, NULL},  {"host", JK_STRING, true, NULL},
	{"seq", JK_INT, true, NULL},	  {"op", JK_STRING, false, NULL},
	{"expires", JK_INT, false, NULL}, {"body", JK_OBJECT, true, NULL},
	{NULL, 0, false, NULL},
};

int link_msg_open(const unsigned char key[SEAL_KEY_LEN], char expect_dir, const unsigned char *buf,
		  size_t len, struct link_msg *m, struct kerr *err)
{
	_cleanup_free_ char *plain = NULL;
	struct json_object *env = NULL, *body;
	char dir, host[SEAL_HOST_MAX + 1];
	size_t plainlen;
	const char *op;
	int ret;

	memset(m, 0, sizeof(*m));
	if (len > LINK_MSG_MAX)
		return err_set(err, 0, "message of %zu bytes is over the limit", len);
	if (seal_peek(buf, len, &dir, host) < 0)
		return err_set(err, 0, "not a sealed message");
	if (dir != expect_dir)
		return err_set(err, 0, "message sealed for the other direction");
	if (seal_open(key, buf, len, &plain, &plainlen, err) < 0)
		return -1;
	ret = json_body_parse(plain, plainlen, &env, err);
	OPENSSL_cleanse(plain, plainlen); /* as in link_msg_seal() */
	if (ret < 0 || json_fields_check(env, envelope_fields, err) < 0) {
		json_object_put(env);
		return -1;
	}
	if (link_type_parse(json_get_str(env, "type", ""), &m->type) < 0) {
		err_set(err, 0, "unknown message type '%.32s'", json_get_str(env, "type", ""));
		goto bad;
	}
	if (strcmp(json_get_str(env, "host", ""), host) != 0) {
		err_set(err, 0, "envelope host does not match the sealed header");
		goto bad;
	}
	op = json_get_str(env, "op", "");
	if (op[0] && !link_op_id_valid(op)) {
		err_set(err, 0, "malformed operation id");
		goto bad;
	}
	snprintf(m->host, sizeof(m->host), "%s", host);
	snprintf(m->op, sizeof(m->op), "%s", op);
	m->seq = json_get_int(env, "seq", 0);
	m->expires = json_get_int(env, "expires", 0);
	json_object_object_get_ex(env, "body", &body);
	m->body = json_object_get(body);
	json_object_put(env);
	return 0;
bad:
	json_object_put(env);
	return -1;
}

/* Wipe the text of a string member "key" of o, and of o's "restore" (a command's
 * args: an encrypted backup store's key, common/chunkcrypt.h). */
static void args_key_wipe(struct json_object *o)
{
	struct json_object *v;

	if (json_object_object_get_ex(o, "key", &v) && json_object_is_type(v, json_type_string))
		OPENSSL_cleanse((char *)json_object_get_string(v),
				(size_t)json_object_get_string_len(v));
	if (json_object_object_get_ex(o, "restore", &v) && json_object_is_type(v, json_type_object))
		args_key_wipe(v);
}

void link_msg_clear(struct link_msg *m)
{
	/* Whoever needed a command's secret took a copy while handling it. */
	args_key_wipe(json_object_object_get(m->body, "args"));
	json_object_put(m->body);
	m->body = NULL;
}

void link_op_id_new(char out[LINK_OP_ID_MAX + 1])
{
	unsigned char raw[16];

	random_bytes(raw, sizeof(raw));
	hex_encode(raw, sizeof(raw), out);
}

int link_op_id_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > LINK_OP_ID_MAX)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
			return 0;
	return 1;
}

void link_facts_digest(struct json_object *facts, char out[LINK_FACTS_DIGEST_LEN + 1])
{
	struct json_object *uptime = NULL;
	unsigned char md[32];
	const char *text;

	/* Taken out and put back, not copied: a copy of the document costs what the
	 * digest saves. */
	if (json_object_object_get_ex(facts, "uptime_s", &uptime)) {
		json_object_get(uptime);
		json_object_object_del(facts, "uptime_s");
	}
	text = json_object_to_json_string_ext(facts, JSON_C_TO_STRING_PLAIN);
	sha256(text, strlen(text), md);
	if (uptime)
		json_object_object_add(facts, "uptime_s", uptime);
	hex_encode(md, sizeof(md), out);
}
