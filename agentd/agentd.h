/*
 * agentd.h - the map of kumo-agentd: its state and the prototypes each file offers.
 *
 * One libuv loop owns everything here. The agent joins the controller once (join.c),
 * keeps what that produced in {state_dir}/link.json, then speaks the sealed link
 * (link.c): commands arrive on an NN_REP socket, heartbeats and operation events leave
 * on an NN_PUSH socket. Facts (facts.c) are collected off the loop; the KVM probe
 * (kvmprobe.c) runs as a child with a deadline.
 */
#ifndef KUMO_AGENTD_H
#define KUMO_AGENTD_H

#include <json-c/json.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "err.h"
#include "link.h"
#include "log.h"
#include "seal.h"

#define AGENT_PROG		   "kumo-agentd"
#define AGENT_OPCACHE_SIZE	   128	/* finished or running ops remembered for resends */
#define AGENT_SENDQ_MAX		   256	/* op events held while the controller is away */
#define AGENT_KVM_PROBE_TIMEOUT_MS 3000 /* a guest that has not run by then never will */
#define AGENT_JOIN_TIMEOUT_MS	   5000
#define AGENT_JOIN_RETRY_S	   2
#define AGENT_HEARTBEAT_MAX_S	   3600
#define AGENT_ADDR_MAX		   256
#define AGENT_CLUSTER_ID_MAX	   128

/* Options as given on the command line, defaults filled in (config.c). */
struct agent_config {
	char *controller; /* HOST:PORT of the controller's join socket */
	char *join_token; /* from --join-token or read from --join-token-file */
	char *join_token_file;
	char *name;   /* host name; gethostname() when not given */
	char *listen; /* ADDR:PORT the command socket binds */
	char *state_dir;
	char *shared_pool;
	char *local_pool;
	char *log_level_name;
	int heartbeat;	 /* seconds; 0: what the controller said at join */
	bool check_only; /* -n */
	enum log_level log_level;
	char link_path[PATH_MAX]; /* {state_dir}/link.json */
	bool linked;		  /* link.json exists: no join */
};

/* What joining produced; persisted as {state_dir}/link.json (0600). */
struct agent_link {
	char host[SEAL_HOST_MAX + 1];
	int64_t host_id;
	char cluster_id[AGENT_CLUSTER_ID_MAX + 1];
	unsigned char key[SEAL_KEY_LEN];
	char events[AGENT_ADDR_MAX];	 /* controller's NN_PULL address, tcp://A:P */
	char controller[AGENT_ADDR_MAX]; /* join address we used, HOST:PORT */
	int heartbeat_interval;		 /* seconds, told at join */
};

/* One operation the controller sent, kept so a resend is acked and never re-run. */
struct op_entry {
	char op[LINK_OP_ID_MAX + 1]; /* "" for a free slot */
	enum link_type type;
	bool done;
	struct json_object *done_body; /* op-done body once finished */
};

struct opcache {
	struct op_entry slots[AGENT_OPCACHE_SIZE];
	unsigned next; /* slot the next op takes, evicting the oldest */
};

/* An op event waiting for the push socket to accept it; sealed when it leaves. */
struct sendq_item {
	enum link_type type;
	char op[LINK_OP_ID_MAX + 1];
	struct json_object *body;
	struct sendq_item *next;
};

struct kvmprobe_run;
struct kvmprobe_waiter;

struct agent {
	uv_loop_t *loop;
	const struct agent_config *cfg;
	struct agent_link link;
	char addr[AGENT_ADDR_MAX]; /* advertised command address, tcp://A:P */
	int heartbeat_s;
	int64_t started_us;
	bool stopping;

	/* link.c */
	int push_sock; /* NN_PUSH to link.events */
	int rep_sock;  /* NN_REP bound at cfg->listen */
	uv_poll_t rep_poll;
	uv_poll_t push_poll; /* writable-wait while sendq is not empty */
	bool push_polling;
	bool push_failing;	    /* the last send found the controller away */
	bool push_warned;	    /* ... and that was logged */
	int64_t push_failing_since; /* µs */
	int64_t seq_last;
	struct seal_replay replay;
	struct sendq_item *sendq_head, *sendq_tail;
	unsigned sendq_len;
	struct opcache ops;

	/* heartbeat.c */
	uv_timer_t heartbeat_timer;
	bool heartbeat_busy;  /* a facts collection for a beat is in flight */
	bool heartbeat_again; /* a fresh beat was asked for meanwhile */

	/* kvmprobe.c */
	bool kvm_probed;
	bool kvm_usable;
	struct kvmprobe_run *kvm_current; /* the run new waiters join, or NULL */
	struct kvmprobe_run *kvm_runs;	  /* every run whose handles are still open */

	/* main.c */
	uv_signal_t sigterm, sigint;
};

/*
 * Add context in front of err's message at a layer boundary, keeping its code, status
 * and field. Returns -1 so it can end a failing path.
 */
static inline int agent_err_prefix(struct kerr *err, const char *prefix)
{
	size_t cap = sizeof(err->msg) - 1, plen;

	if (err == NULL)
		return -1;
	plen = strlen(prefix) < cap ? strlen(prefix) : cap;
	/* Shift the message right (its tail may fall off) and put prefix in front. */
	memmove(err->msg + plen, err->msg, cap - plen);
	memcpy(err->msg, prefix, plen);
	err->msg[cap] = '\0';
	return -1;
}

/* config.c */
int config_parse(int argc, char **argv, struct agent_config *cfg, struct kerr *err);
int config_check(struct agent_config *cfg, struct kerr *err);
void config_print(const struct agent_config *cfg, FILE *out);
void config_usage(FILE *out);
void config_free(struct agent_config *cfg);
int config_hostport_split(const char *s, char *host, size_t hostlen, int *port, struct kerr *err);
int config_addr_advertise(const struct agent_config *cfg, const char *toward, char *out,
			  size_t outlen, struct kerr *err);

/* join.c */
int join_link_load(const char *path, struct agent_link *link, struct kerr *err);
int join_link_save(const char *path, const struct agent_link *link, struct kerr *err);
int join_run(const struct agent_config *cfg, const char *addr, struct agent_link *link,
	     struct kerr *err);

/* link.c */
int link_open(struct agent *a, struct kerr *err);
void link_close(struct agent *a);
void link_sockets_release(struct agent *a);
void link_event_send(struct agent *a, enum link_type type, const char *op,
		     struct json_object *body);

/* opcache.c */
struct op_entry *opcache_find(struct opcache *c, const char *op);
struct op_entry *opcache_add(struct opcache *c, const char *op, enum link_type type);
void opcache_finish(struct opcache *c, const char *op, struct json_object *done_body);
void opcache_clear(struct opcache *c);

/* probe.c */
void probe_cmd_start(struct agent *a, const char *op);

/* heartbeat.c */
int heartbeat_start(struct agent *a, struct kerr *err);
void heartbeat_stop(struct agent *a);
void heartbeat_kick(struct agent *a);
void heartbeat_send(struct agent *a, struct json_object *facts);

/* facts.c */
typedef void (*facts_done_cb)(struct agent *a, struct json_object *facts, void *data);
int facts_collect_start(struct agent *a, facts_done_cb cb, void *data, struct kerr *err);
struct json_object *facts_collect(const struct agent_config *cfg, bool kvm_usable,
				  int64_t started_us);
void facts_kvm_set(struct json_object *facts, bool kvm_usable);
void facts_pools_warn(const struct agent_config *cfg);

/* kvmprobe.c */
typedef void (*kvmprobe_cb)(struct agent *a, bool usable, void *data);
int kvmprobe_child_main(void);
int kvmprobe_request(struct agent *a, kvmprobe_cb cb, void *data, struct kerr *err);
void kvmprobe_stop(struct agent *a);

#endif
