/*
 * linktool.c - a test peer for the agent link. It plays an attacker (or a broken
 * peer) against the real daemons, so integration tests can check that forged,
 * replayed and tampered messages are refused.
 *
 *   kumo-linktool MODE LINK_JSON [--agent tcp://addr:port] [--file PATH]
 *
 * LINK_JSON is an agent's link.json (host, key, events). Modes sending a heartbeat
 * whose facts are {"linktool": MODE} to the controller's event socket (each prints
 * "seq N", the seq it sealed):
 *   valid         correctly sealed, fresh seq             (accepted)
 *   replay        the same sealed bytes twice             (second refused: replay)
 *   tamper        one ciphertext byte flipped             (refused: tampered)
 *   unknown-host  sealed for a host name nobody joined    (refused: unknown-host)
 *   stale         a seq ten minutes old                   (refused: replay)
 *   wrong-dir     sealed for the controller->agent side   (refused: malformed)
 *   save          valid, sent once, its bytes kept in --file (accepted)
 *   resend        the bytes of --file sent as they are      (a replay after a restart)
 * And against the agent's command socket (address from --agent tcp://...):
 *   agent-replay  a sealed probe twice; exit 0 only if the first is acked and the
 *                 second gets no answer within 2 s.
 *   agent-save    a sealed probe, acked, its bytes kept in --file; exit 0 if acked.
 *                 --ahead S seals it S seconds ahead (a controller whose clock is).
 *   agent-resend  the bytes of --file; exit 0 only if no answer comes within 2 s.
 * And against the join socket (--join tcp://addr:port; LINK_JSON is read but unused):
 *   join-flood    40 well-formed join requests with a wrong proof, all claiming the
 *                 name "linktool-flood", 100 ms apart; prints how many were answered.
 */
#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>
#include <nanomsg/reqrep.h>
#include <stdio.h>
#include <string.h>

#include "json.h"
#include "link.h"
#include "util.h"

static int die(const char *msg)
{
	fprintf(stderr, "kumo-linktool: %s\n", msg);
	return 2;
}

static int send_bytes(const char *url, int type, const unsigned char *buf, size_t len, int times)
{
	int s = nn_socket(AF_SP, type), linger = 2000;

	nn_setsockopt(s, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof(linger));
	if (s < 0 || nn_connect(s, url) < 0)
		return die("cannot connect");
	for (int i = 0; i < times; i++)
		if (nn_send(s, buf, len, 0) < 0)
			return die("send failed");
	usleep(500000); /* let nanomsg flush before close */
	nn_close(s);
	return 0;
}

static int agent_replay(const char *url, const unsigned char *buf, size_t len)
{
	int s = nn_socket(AF_SP, NN_REQ), tmo = 2000, n;
	char *reply = NULL;

	nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &tmo, sizeof(tmo));
	if (s < 0 || nn_connect(s, url) < 0)
		return die("cannot connect to the agent");
	if (nn_send(s, buf, len, 0) < 0)
		return die("send failed");
	n = nn_recv(s, &reply, NN_MSG, 0);
	if (n < 0) {
		fprintf(stderr, "kumo-linktool: the first (valid) command got no answer\n");
		return 1;
	}
	nn_freemsg(reply);
	if (nn_send(s, buf, len, 0) < 0)
		return die("send failed");
	n = nn_recv(s, &reply, NN_MSG, 0);
	nn_close(s);
	if (n >= 0) {
		fprintf(stderr, "kumo-linktool: the agent answered a replayed command\n");
		return 1;
	}
	printf("agent acked the command once and ignored its replay\n");
	return 0;
}

/* Send buf to the agent: 0 when it answers within 2 s, 1 when it does not. */
static int agent_ask(const char *url, const unsigned char *buf, size_t len)
{
	int s = nn_socket(AF_SP, NN_REQ), tmo = 2000, n;
	char *reply = NULL;

	nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &tmo, sizeof(tmo));
	if (s < 0 || nn_connect(s, url) < 0)
		return die("cannot connect to the agent");
	if (nn_send(s, buf, len, 0) < 0)
		return die("send failed");
	n = nn_recv(s, &reply, NN_MSG, 0);
	if (n >= 0)
		nn_freemsg(reply);
	nn_close(s);
	return n >= 0 ? 0 : 1;
}

static int file_save(const char *path, const unsigned char *buf, size_t len)
{
	if (path == NULL || file_write_atomic(path, buf, len, 0600) < 0)
		return die("cannot write --file");
	return 0;
}

static int join_flood(const char *url)
{
	int s = nn_socket(AF_SP, NN_REQ), tmo = 100, answered = 0;
	char text[512];

	nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &tmo, sizeof(tmo));
	if (s < 0 || nn_connect(s, url) < 0)
		return die("cannot connect to the join socket");
	snprintf(text, sizeof(text),
		 "{\"type\": \"join\", \"version\": %d, \"proof\": \"%064d\", "
		 "\"name\": \"linktool-flood\", \"pubkey\": \"%064d\", "
		 "\"addr\": \"tcp://127.0.0.1:1\"}",
		 LINK_PROTO_VERSION, 0, 0);
	for (int i = 0; i < 40; i++) {
		char *reply = NULL;

		/* On NN_REQ a new send abandons the unanswered request before it. */
		if (nn_send(s, text, strlen(text), 0) < 0)
			return die("send failed");
		if (nn_recv(s, &reply, NN_MSG, 0) >= 0) {
			answered++;
			nn_freemsg(reply);
		}
	}
	nn_close(s);
	printf("%d of 40 join requests answered\n", answered);
	return 0;
}

int main(int argc, char **argv)
{
	_cleanup_free_ char *text = NULL;
	struct json_object *link, *facts, *body;
	unsigned char key[SEAL_KEY_LEN], *buf;
	size_t len;
	struct link_msg m = {0};
	const char *mode, *events, *agent = NULL, *path = NULL, *join = NULL;
	int64_t ahead_s = 0;
	struct kerr err;
	int64_t last = 0;
	char dir = SEAL_DIR_TO_CONTROLLER;
	int ret;

	if (argc < 3)
		return die("usage: kumo-linktool MODE LINK_JSON [--agent tcp://addr:port]");
	mode = argv[1];
	for (int i = 3; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--agent") == 0)
			agent = argv[i + 1];
		else if (strcmp(argv[i], "--file") == 0)
			path = argv[i + 1];
		else if (strcmp(argv[i], "--join") == 0)
			join = argv[i + 1];
		else if (strcmp(argv[i], "--ahead") == 0)
			ahead_s = strtoll(argv[i + 1], NULL, 10);
		else
			return die("unknown option");
	}
	if (file_read_all(argv[2], 1 << 16, &text, NULL) < 0)
		return die("cannot read link.json");
	link = json_tokener_parse(text);
	if (link == NULL || hex_decode(json_get_str(link, "key", ""), key, sizeof(key)) < 0)
		return die("link.json has no key");
	events = json_get_str(link, "events", "");
	snprintf(m.host, sizeof(m.host), "%s", json_get_str(link, "host", ""));

	if (strcmp(mode, "join-flood") == 0) {
		json_object_put(link);
		return join ? join_flood(join) : die("join-flood needs --join tcp://addr:port");
	}
	if (strcmp(mode, "resend") == 0 || strcmp(mode, "agent-resend") == 0) {
		_cleanup_free_ char *bytes = NULL;

		if (path == NULL || file_read_all(path, 1 << 20, &bytes, &len) < 0)
			return die("cannot read --file");
		if (mode[0] == 'r')
			ret = send_bytes(events, NN_PUSH, (unsigned char *)bytes, len, 1);
		else if (agent == NULL)
			return die("agent-resend needs --agent tcp://addr:port");
		else if ((ret = agent_ask(agent, (unsigned char *)bytes, len)) == 0)
			fprintf(stderr, "kumo-linktool: the agent answered a replayed command\n");
		else
			ret = 0;
		json_object_put(link);
		return ret;
	}
	if (strcmp(mode, "agent-replay") == 0 || strcmp(mode, "agent-save") == 0) {
		if (agent == NULL)
			return die("agent-replay needs --agent tcp://addr:port");
		m.type = LINK_CMD_PROBE;
		link_op_id_new(m.op);
		m.seq = seal_seq_next(&last) + ahead_s * 1000000;
		m.body = json_object_new_object();
		if (link_msg_seal(key, SEAL_DIR_TO_AGENT, &m, &buf, &len, &err) < 0)
			return die(err.msg);
		if (strcmp(mode, "agent-save") == 0) {
			ret = file_save(path, buf, len);
			if (ret == 0 && (ret = agent_ask(agent, buf, len)) != 0)
				fprintf(stderr, "kumo-linktool: the command got no answer\n");
		} else {
			ret = agent_replay(agent, buf, len);
		}
		goto out;
	}

	facts = json_object_new_object();
	json_object_object_add(facts, "linktool", json_object_new_string(mode));
	body = json_object_new_object();
	/* The agent's real command address, so an accepted forgery does not move it. */
	json_object_object_add(body, "addr",
			       json_object_new_string(agent ? agent : "tcp://127.0.0.1:1"));
	json_object_object_add(body, "facts", facts);
	m.type = LINK_HEARTBEAT;
	m.body = body;
	m.seq = seal_seq_next(&last);
	if (strcmp(mode, "stale") == 0)
		m.seq -= 600LL * 1000000;
	if (strcmp(mode, "unknown-host") == 0) {
		snprintf(m.host, sizeof(m.host), "nosuchhost");
		random_bytes(key, sizeof(key));
	}
	if (strcmp(mode, "wrong-dir") == 0)
		dir = SEAL_DIR_TO_AGENT;
	if (link_msg_seal(key, dir, &m, &buf, &len, &err) < 0)
		return die(err.msg);
	if (strcmp(mode, "tamper") == 0)
		buf[len - SEAL_TAG_LEN - 3] ^= 0x01;
	if (strcmp(mode, "save") == 0 && file_save(path, buf, len) != 0) {
		ret = 2;
		goto out;
	}
	ret = send_bytes(events, NN_PUSH, buf, len, strcmp(mode, "replay") == 0 ? 2 : 1);
	if (ret == 0)
		printf("seq %lld\n", (long long)m.seq); /* the controller's log names it */
out:
	free(buf);
	json_object_put(m.body);
	json_object_put(link);
	return ret;
}
