/*
 * controllerd.h - the map of kumo-controllerd: its shared state and every
 * cross-file function, grouped by the file that defines it.
 *
 * One thread owns all of this; callbacks run on the one libuv loop, so nothing here
 * is locked.
 */
#ifndef KUMO_CONTROLLERD_H
#define KUMO_CONTROLLERD_H

#include <json-c/json.h>
#include <microhttpd.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "err.h"
#include "json.h"
#include "link.h"
#include "seal.h"

struct config {
	char *state_dir;
	char *api_listen;
	bool tls;
	bool group_commit; /* db.c's commit queue; off: an fsync per commit */
	bool v2v_tcg;	   /* p2v.c: virt-v2v's appliance under TCG */
	char *tls_cert;	   /* the operator's PEM certificate (chain) and key; "" = self-signed */
	char *tls_key;
	bool insecure_http;
	bool metrics_public;	   /* GET /metrics without a token */
	int audit_keep;		   /* audit rows kept, oldest pruned first */
	int max_streams_per_token; /* open event streams, log follows and long polls */
	int p2v_max_sessions;	   /* p2v.c: sessions receiving or cutting over at once */
	char *link_address;
	int join_port;
	int join_rate; /* join requests a second the link takes, in total */
	int event_port;
	int heartbeat_interval;
	int offline_after;
	int ha_detect_s;       /* ha.c: heartbeats missed this long, and ... */
	int ha_lease_s;	       /* ... the lease silent this long: failed */
	int ha_lease_expire_s; /* the lease silent this long: fenced, restart elsewhere */
	int max_body;
	int api_max_connections;	/* open API connections at most */
	int api_max_connections_per_ip; /* ... from one client address */
	int api_header_timeout;		/* s from accept (or the last answer) to whole headers */
	int api_body_timeout;		/* s from the headers to the whole body */
	char *log_level;
	char *pidfile;
	char *shared_pool;    /* the shared storage every host mounts; images live here */
	char *cpu_overcommit; /* ratios as text, parsed by config_check */
	char *mem_overcommit;
	char *sched_policy; /* spread or pack */
	double cpu_ratio, mem_ratio;
};

enum role {
	ROLE_NONE = 0,
	ROLE_VIEWER = 1,
	ROLE_OPERATOR = 2,
	ROLE_ADMIN = 3
};

enum host_state {
	HOST_OFFLINE,
	HOST_ONLINE
};

/* A command queued for an agent; the REQ socket carries one at a time. */
/*
 * A command queued for an agent; the REQ socket carries one at a time. A query has a
 * reply callback: it gets the ack body, or NULL with the reason when the agent refused
 * or did not answer.
 */
typedef void (*cmd_reply_fn)(struct json_object *body, const char *error, void *cls);

struct cmd {
	enum link_type type;
	char op[LINK_OP_ID_MAX + 1];
	struct json_object *body;
	cmd_reply_fn reply_cb;
	void *cls;
	int64_t deadline;	   /* queries only: answered as failed after this */
	struct json_object *early; /* a deferred query's query-done, come before its ack */
	struct cmd *next;
};

struct host {
	int64_t id;
	char name[SEAL_HOST_MAX + 1];
	unsigned char key[SEAL_KEY_LEN];
	char *address; /* the agent's command socket, "tcp://a.b.c.d:port" */
	enum host_state state;
	bool maintenance;
	int64_t joined_at;
	int64_t last_seen; /* ms; 0 when never seen since start */
	int64_t facts_saved;
	struct json_object *labels;
	struct json_object *facts; /* replaced only through host_facts_set() */
	uint64_t facts_version;	   /* new with every facts */
	/* The agent's digest of facts (link.h); "" until a whole document came with one. */
	char facts_digest[LINK_FACTS_DIGEST_LEN + 1];
	/* db_instances_generation() when its reports were last reconciled (hosts.c). */
	uint64_t reconciled_generation;
	struct json_object *unmanaged; /* [{name, type, state}] it runs that we do not place */

	/* Agent -> controller replay windows, one per socket: each socket delivers in
	 * order, but an event pushed after a reply may overtake it. */
	struct seal_replay rx;	     /* event socket */
	struct seal_replay rx_reply; /* command replies */
	int64_t tx_seq;		     /* controller -> agent */

	int req_sock;	      /* NN_REQ to the agent from the pool, -1 when none */
	uv_poll_t *req_poll;  /* heap: its close completes after the host may be gone */
	uv_poll_t *req_spoll; /* heap: waits for a new socket to take its first send */
	/* The command socket pool's queues (agentlink.c): idle with a socket, or
	 * waiting for one. */
	struct host *idle_prev, *idle_next, *wait_prev, *wait_next;
	bool req_idle, req_waiting;
	struct cmd *queue;    /* waiting commands, oldest first */
	struct cmd *inflight; /* sent, no reply yet */
	struct cmd *deferred; /* queries acked as deferred, their answer still to come */
	int64_t inflight_deadline;

	struct host *next;
};

struct controller {
	struct config cfg;
	uv_loop_t *loop;
	sqlite3 *db;
	char cluster_id[33];
	struct host *hosts;
	int64_t started_at;
	uv_timer_t cron;
	uv_signal_t sigterm, sigint;
};

extern struct controller ctl;

/* config.c */
int config_load(struct config *cfg, const char *path, struct kerr *err);
int config_set(struct config *cfg, const char *kv, struct kerr *err);
int config_check(struct config *cfg, struct kerr *err);
void config_print(const struct config *cfg, FILE *out);
void config_usage(FILE *out);
void config_free(struct config *cfg);
bool addr_is_loopback(const char *hostport);

/* db.c */
#define DB_SCHEMA_VERSION 23
int db_open(sqlite3 **db, const char *path, struct kerr *err);
int db_migrate(sqlite3 *db, int target, struct kerr *err);
int db_version(sqlite3 *db);
int db_exec(sqlite3 *db, const char *sql, struct kerr *err);
int db_begin(sqlite3 *db);
int db_commit(sqlite3 *db, struct kerr *err);
void db_rollback(sqlite3 *db);
sqlite3_stmt *db_prepare(sqlite3 *db, const char *sql);
sqlite3_stmt *db_prepare_cached(sqlite3 *db, const char *sql);
void db_release(sqlite3_stmt *st);
uint64_t db_instances_generation(void);
const char *db_meta_get(sqlite3 *db, const char *key, char *buf, size_t len);
int db_meta_set(sqlite3 *db, const char *key, const char *value, struct kerr *err);
int64_t db_count(sqlite3 *db, const char *sql);
void db_close(sqlite3 *db);
/* Where the store reports how long commits and group syncs take (metrics.c). */
struct db_timing {
	void (*commit)(double seconds);
	void (*sync)(double seconds, double commits);
};
void db_timing_set(const struct db_timing *t);

/* Someone waiting until the commits up to seq are durable (embed it; db.c links it). */
struct db_waiter {
	uint64_t seq;
	void (*cb)(struct db_waiter *w);
	struct db_waiter *next;
	bool queued;
};

/*
 * Group commit on db, whose file is path: commits stop waiting for their own fsync;
 * one fsync off loop covers every commit made before it. Call once, after
 * db_migrate(). Returns 0, or -1 with err.
 */
int db_group_commit_start(sqlite3 *db, const char *path, uv_loop_t *loop, struct kerr *err);
/* Transactions committed so far; take it after a commit to wait for that commit. */
uint64_t db_commit_seq(void);
/*
 * Call cb(w) once every commit up to seq is durable. Returns false when that is so
 * already (cb is not called), true when w is queued (cb runs later, on the loop). w
 * must stay valid until cb runs or db_durable_cancel(w).
 */
bool db_durable_wait(struct db_waiter *w, uint64_t seq, void (*cb)(struct db_waiter *w));
void db_durable_cancel(struct db_waiter *w);
/* From the cron: sync commits no one waits for yet, so none stays in the page cache long. */
void db_group_commit_cron(void);
/* At shutdown: sync what is left now, inline, and answer every waiter. */
void db_group_commit_stop(void);
void db_group_commit_free(void);
/*
 * Around a commit that only records progress (ops.c): synchronous=NORMAL for it, then
 * the connection's own level again (FULL; NORMAL under group commit, where both are
 * no-ops).
 */
void db_sync_relax(sqlite3 *db);
void db_sync_restore(sqlite3 *db);

/* tokens.c */
int tokens_bootstrap(const char *state_dir, struct kerr *err);
/* Who a request acts as, from its bearer token. */
struct token_auth {
	int64_t id;
	enum role role;
	int64_t expires_at; /* ms; 0: never */
	char name[65];
};
struct request;

/*
 * A stream or long poll held open under a token: counted against the token's
 * max_streams_per_token, and ended through revoke_cb(cls) when the token is deleted,
 * rotated or expires, or its client has hung up (within a second).
 */
struct token_watch {
	struct MHD_Connection *conn;
	int64_t token_id;
	int64_t expires_at; /* ms; 0: never */
	void (*revoke_cb)(void *cls);
	void *cls;
	bool active;
	struct token_watch *next;
};
enum role tokens_check(const char *authorization, struct token_auth *out, const char **why);
int tokens_watch_add(struct token_watch *w, const struct request *req, void (*revoke_cb)(void *cls),
		     void *cls, struct kerr *err);
int tokens_watch_token(struct token_watch *w, struct MHD_Connection *conn, int64_t token_id,
		       int64_t expires_at, void (*revoke_cb)(void *cls), void *cls,
		       struct kerr *err);
void tokens_watch_remove(struct token_watch *w);
void tokens_revoke(int64_t token_id);
void tokens_cron(void);
enum role tokens_authenticate(const char *authorization, int64_t *token_id);
enum role tokens_check_secret(const char *token, struct token_auth *out, const char **why);
enum role tokens_role_of(int64_t token_id, char *name, size_t len);
const char *role_name(enum role role);
int role_parse(const char *name, enum role *out);
/* Find and consume the join token a join proof was made with (caller's transaction). */
int tokens_join_prove(const char *proof, const char *host, const char *pubhex, const char *addr,
		      unsigned char key[32], struct kerr *err);

/* hosts.c */
int hosts_load(struct kerr *err);
struct host *host_find(const char *name);
struct host *host_find_id(int64_t id);
void host_facts_set(struct host *h, struct json_object *facts);
struct host *host_find_instance(const char *instance);
struct json_object *host_to_json(const struct host *h);
void host_heartbeat(struct host *h, struct json_object *body);
size_t hosts_check_liveness(void);
void hosts_persist(bool all);
int host_join(const char *name, const unsigned char key[SEAL_KEY_LEN], const char *address,
	      int64_t *id, struct kerr *err);
void host_remove(struct host *h);
void hosts_free(void);
const char *host_state_name(enum host_state s);

/* agentlink.c */
/*
 * What the agent link hands up, once a message passed its checks; main.c sets them
 * (hosts.c, instances.c, jobs.c, migrate.c, console_relay.c).
 */
struct agentlink_hooks {
	void (*heartbeat)(struct host *h, struct json_object *body);
	void (*report)(struct host *h, struct json_object *report, const char *why);
	/* An op-progress, after the operation's row took it. */
	void (*progress)(const char *op, struct json_object *body);
	int (*done)(struct host *h, const char *op, const char *status, struct json_object *result,
		    const char *error);
	int (*nack)(const char *op, const char *why); /* the agent refused the command */
	void (*console)(struct host *h, struct json_object *body);
};
void agentlink_hooks_set(const struct agentlink_hooks *hooks);
int agentlink_start(struct kerr *err);
void agentlink_stop(void);
void agentlink_host_connect(struct host *h);
void agentlink_host_disconnect(struct host *h);
void agentlink_cmd_send(struct host *h, enum link_type type, const char *op,
			struct json_object *body);
void agentlink_cmd_send_first(struct host *h, enum link_type type, const char *op,
			      struct json_object *body);
bool agentlink_cmd_pending(struct host *h, const char *op);
void agentlink_cron(void);
void agentlink_query(struct host *h, struct json_object *body, cmd_reply_fn cb, void *cls);
void agentlink_query_timeout(struct host *h, struct json_object *body, int64_t timeout_ms,
			     cmd_reply_fn cb, void *cls);
void agentlink_query_cancel(void *cls);
void agentlink_cmd_send_cb(struct host *h, enum link_type type, const char *op,
			   struct json_object *body, cmd_reply_fn cb, void *cls);
bool agentlink_cmd_unqueue(struct host *h, const char *op);
void agentlink_queries_fail(struct host *h, const char *why);
void agentlink_deferred_fail(struct host *h, const char *why);
/* The tables join requests and op-progress/op-done bodies are checked against. */
extern const struct json_field *const agentlink_join_fields;
extern const struct json_field *const agentlink_progress_fields;
extern const struct json_field *const agentlink_done_fields;

/* instances.c */
struct sched_request;
struct request;
struct host *instances_place(const struct sched_request *req, struct json_object **placement,
			     struct kerr *err);
int instances_op_done(struct host *h, struct json_object *op, const char *status,
		      struct json_object *result, const char *error);
int instances_op_resend(struct host *h, const char *id, const char *kind,
			struct json_object *result);
void instances_report(struct host *h, struct json_object *report, const char *why);
void instances_lost(const char *name, const char *why);
void instances_reconcile(struct host *h, struct json_object *reports);
struct json_object *instance_get_json(const char *name, bool with_history);
bool instance_tombstoned(const char *name);
int instance_desired_set(int64_t id, const char *desired, struct kerr *err);
int instance_state_deleting(int64_t id, struct kerr *err);
int instance_snapshot_insert(int64_t id, const char *name, bool with_memory, struct kerr *err);
int instances_create_undo(struct host *h, const char *name, char *del_id, size_t len,
			  struct kerr *err);
void instance_spec_apply(struct json_object *spec, struct json_object *changes);
void instances_cmd_send(struct host *h, const char *op_id, const char *action,
			struct json_object *spec, struct json_object *args);
int instances_op_send_first(struct host *h, const char *op_id, struct json_object *args);
void instances_net_waits_check(void);
void instances_net_waits_free(void);
int instances_on_host(int64_t host_id);
bool image_in_use(int64_t image_id);

/* drift.c */
bool drift_tombstone_result(struct json_object *result);
void drift_tombstones_send(struct host *h);
void drift_unmanaged_update(struct host *h, struct json_object *reports);
struct json_object *drift_unmanaged_get(struct host *h, const char *name);
int drift_adopt(struct host *h, struct json_object *spec, struct json_object *report,
		struct kerr *err);

/* nics.c */
struct sched_request;
int nics_vm_check(struct json_object *v, const char *f, struct kerr *err);
int nics_container_check(struct json_object *v, const char *f, struct kerr *err);
struct json_object *nics_build(struct json_object *in, bool vm, struct kerr *err);
int nics_patch_check(struct json_object *v, const char *f, struct kerr *err);
int nics_patch_apply(struct json_object *spec, struct json_object *patch, struct kerr *err);
struct json_object *nics_sched_request(struct json_object *spec, struct sched_request *sr);
void nics_sched_free(struct sched_request *sr);
int nics_allocate(int64_t iid, const char *instance, struct json_object *spec, struct kerr *err);

/* secgroups.c */
#define SECGROUP_DEFAULT   "default" /* the group of every NIC that names none */
#define SECGROUP_RULES_MAX 64
#define SECGROUP_NIC_MAX   8 /* groups one NIC names */
bool secgroup_exists(const char *name);
struct json_object *secgroup_rules_build(const char *self, struct json_object *rules,
					 struct kerr *err);
struct json_object *secgroup_nic_groups(struct json_object *nic);
struct json_object *secgroup_members(const char *name);
bool secgroup_in_use(const char *name, char *by, size_t len);
void secgroup_members_forget(void);
struct json_object *secgroup_doc_json(struct json_object *names);

/* netsync.c */
void netsync_all(void);
void netsync_changed(struct host *h);
void netsync_heartbeat(struct host *h);
struct json_object *netsync_status_json(struct host *h);
bool netsync_instance_ready(const char *instance, char *why, size_t len);
int64_t netsync_instance_lagging(const char *instance, char *why, size_t len);
void netsync_free(void);

/* api_containers.c */
extern const struct json_field container_create_fields[];
struct json_object *container_spec_build(struct json_object *body, struct kerr *err);
void container_sched_request(struct json_object *spec, struct sched_request *sr);
int oci_ref_resolve(const char *ref, char *digest, size_t dlen, char *canon, size_t clen,
		    struct kerr *err);
enum MHD_Result api_instance_logs(struct request *req);
int create_timeout_check(struct json_object *v, const char *f, struct kerr *err);
enum MHD_Result api_instance_exec(struct request *req);

/* images.c */
int images_key_load(const char *state_dir, struct kerr *err);
void image_sig(const char *name, const char *path, const char *sha256, int64_t size, char out[65]);
int64_t image_find(const char *name, char *path, size_t pathlen, int64_t *virtual_size,
		   char *sha256);

/* api_images.c */
int image_qcow2_header_check(const unsigned char *h, size_t n, char *why, size_t len);
int image_room_check(int64_t virtual_size, char *why, size_t len);
int image_info_check(const char *out, const char *file, const char *format, int64_t *virtual_size,
		     char *why, size_t len);

extern const struct stream_ops api_images_stream;
void images_sweep_uploads(void);

/* backup_prune.c */
struct prune_policy {
	int keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly;
};
void backup_prune_select(const int64_t *times, size_t n, const struct prune_policy *policy,
			 bool *keep);

/* backup_sched.c */
struct backup_calendar {
	unsigned wdays;	  /* bit 0: Sunday */
	uint32_t hours;	  /* bit per hour, UTC */
	uint64_t minutes; /* bit per minute */
};
int backup_calendar_parse(const char *text, struct backup_calendar *cal, struct kerr *err);
int64_t backup_calendar_next(const struct backup_calendar *cal, int64_t after_ms);
struct json_object *backup_schedules_list(void);
struct json_object *backup_schedule_get(const char *instance);
int backup_schedule_set(const char *instance, struct json_object *body, struct kerr *err);
bool backup_schedule_delete(const char *instance);
void backup_schedules_cron(int64_t now);
void backup_schedule_op_done(const char *op_id, const char *instance, const char *store);

/* backups.c */
int backup_store_path_check(const char *path, struct kerr *err);
struct json_object *backup_stores_list(void);
struct json_object *backup_store_get(const char *name);
int backup_store_create(const char *name, const char *path, const char *key_hex, struct kerr *err);
int backup_store_key_supply(const char *id, const char *key_hex, struct kerr *err);
struct json_object *backup_cmd_args(struct json_object *args, struct kerr *err);
int backup_store_delete(const char *name, struct kerr *err);
struct json_object *backups_list(const char *instance);
struct json_object *backup_get(const char *id);
struct json_object *backup_spec_get(const char *id);
struct json_object *backup_start(const char *name, const char *type, struct json_object *spec,
				 struct host *h, const char *store, const char *mode,
				 int64_t bandwidth_mbps, struct kerr *err);
struct json_object *backup_restore_start(const char *id, const char *name, const char *state,
					 struct json_object *spec, struct host *h,
					 struct kerr *err);
struct json_object *backup_restore_body(struct json_object *b, const char *name, const char *host,
					struct json_object *networks, bool start,
					struct json_object **restore, struct kerr *err);
struct json_object *backup_verify_start(const char *id, struct kerr *err);
int backup_delete(const char *id, struct kerr *err);
struct json_object *backup_prune(const char *name, const char *instance,
				 const struct prune_policy *policy, bool dry_run, struct kerr *err);
struct json_object *backup_store_gc(const char *name, struct kerr *err);
void backups_op_done(const char *op_id, bool ok, struct json_object *result, const char *error);
void backups_agent_restarted(struct host *h);
/* ha.c */
int ha_field_check(struct json_object *v, const char *f, struct kerr *err);
int ha_spec_set(struct json_object *spec, struct json_object *ha, struct kerr *err);
void ha_list_changed(void);
void ha_cron(void);
void ha_host_json(const struct host *h, struct json_object *o);
void ha_free(void);
int ha_op_resend(struct host *h, const char *id, struct json_object *op);

/* ops.c */
struct json_object *op_create(const char *kind, const char *target, struct host *h,
			      struct json_object *result, struct kerr *err);
struct json_object *op_create_timeout(const char *kind, const char *target, struct host *h,
				      struct json_object *result, int64_t timeout_s,
				      struct kerr *err);
void op_event_emit(const char *id);
int op_step_set(const char *id, const char *step);
void ops_final_hook_set(void (*hook)(const char *id));
void ops_rules_set(int64_t (*deadline)(const char *kind),
		   const char *(*final)(const char *cancel, const char *status,
					const char **error));
bool op_busy(const char *target, char *busy_id, size_t len);
int op_update(const char *id, const char *status, int progress, const char *phase,
	      struct json_object *result, const char *error);
struct json_object *op_get(const char *id);
bool op_status_final(const char *status);

/* jobs.c */
/* One row per operation kind: how its jobs resume, end, are cancelled, time out. */
struct op_kind {
	const char *name;
	int64_t timeout_s; /* default deadline; 0: none */
	/* Send the job's work to h again after a controller restart (h NULL: a job the
	 * controller runs itself, with no host); 0 or -1. */
	int (*resume)(struct host *h, const char *id, struct json_object *op);
	/* A host (NULL: the controller itself) reports the job's end. */
	int (*done)(struct host *h, struct json_object *op, const char *status,
		    struct json_object *result, const char *error);
	/* Stop the job at a safe point and undo it (reason "cancelled" or "timed out");
	 * NULL: this kind cannot be cancelled, and no_cancel says why. */
	int (*cancel)(struct host *h, struct json_object *op, const char *reason);
	const char *no_cancel;
};
enum op_tick {
	OP_WAIT,
	OP_TIME_OUT,
	OP_GIVE_UP
};
const struct op_kind *jobs_kind_find(const char *name);
int64_t jobs_timeout_default(const char *kind);
const char *jobs_final_status(const char *cancel, const char *status, const char **error);
enum op_tick jobs_tick(int64_t now, int64_t deadline, const char *cancel);
int jobs_cancel_check(const struct op_kind *k, const char *kind, const char *status,
		      const char *cancel, struct kerr *err);
int jobs_cancel(const char *id, struct json_object **out, struct kerr *err);
void jobs_cron(int64_t now);
int jobs_done(struct host *h, const char *id, const char *status, struct json_object *result,
	      const char *error);
int jobs_nack(const char *id, const char *why);
void jobs_resume(void);

/* migrate.c */
enum MHD_Result api_instance_placement(struct request *req);
/*
 * The instances whose NICs a host wires, as an SQL table expression (id, name, spec,
 * host_id): each on its host and, while it migrates, also on its target (migrate.c
 * keeps temp.migrating), so the target's segments, taps and FDB exist before the
 * switchover and every peer floods to it.
 */
#define MIGRATE_WIRED_INSTANCES                                                                    \
	"(SELECT id, name, spec, host_id FROM instances UNION ALL SELECT m.instance_id, "          \
	"x.name, x.spec, m.host_id FROM temp.migrating m JOIN instances x ON x.id = "              \
	"m.instance_id)"
int migrate_db_init(sqlite3 *db, struct kerr *err);
void migrate_net_waits_check(struct host *applied);
enum MHD_Result api_instance_migrate(struct request *req);
enum MHD_Result api_host_evacuate(struct request *req);
int migrate_cancel(const char *id, struct kerr *err);
int migrate_cancel_refused(const char *id, struct kerr *err);
int migrate_agent_done(struct host *h, struct json_object *op, const char *status,
		       struct json_object *result, const char *error);
int migrate_op_nack(const char *op_id, const char *why);
bool migrate_instance_on(const struct host *h, const char *name);
void migrate_agent_progress(const char *op_id, struct json_object *body);
void migrate_host_restarted(struct host *h);
int migrate_job_resume(struct host *h, const char *id, struct json_object *op);
int migrate_instance_start(const char *name, char id[LINK_OP_ID_MAX + 1], struct kerr *err);
/* audit.c */
void audit_record(const struct request *req);
void audit_prune(void);

/* api_audit.c */
enum MHD_Result api_audit_list(struct request *req);

/* events.c */
void event_emit(const char *type, struct json_object *data);

/* usage.c */
void usage_record(const char *name, struct json_object *usage);
void usage_forget(const char *name);
void usage_cron(void);
struct json_object *usage_json(const char *name);
void events_hook_set(void (*hook)(void));
void events_prune(void);
bool event_type_known(const char *type);

/* page.c */
#define PAGE_DEFAULT 100
#define PAGE_MAX     1000
/* Longest sort key + 1: a container image's REPO:TAG is 128 + 1 + 128 bytes. */
#define PAGE_KEY_MAX 512

/* One page of a list being built (page.c says how lists page). */
struct page {
	int64_t limit;
	char after[PAGE_KEY_MAX]; /* the decoded cursor: items sort strictly after it; "" = first */
	const char *fields;	  /* ?fields=, or NULL for whole items */
	int64_t count;
	bool more;		 /* an item was left out: there is a next page */
	char last[PAGE_KEY_MAX]; /* sort key of the last item on the page */
};

int page_begin(struct request *req, struct page *p, struct kerr *err);
bool page_add(struct page *p, struct json_object *list, struct json_object *item, const char *key);
void page_end(struct page *p, struct json_object *out, const char *name, struct json_object *list);
int page_label_check(const char *kv, struct kerr *err);
struct json_object *page_rows_by_name(struct page *p, sqlite3_stmt *st,
				      struct json_object *(*row_json)(sqlite3_stmt *st));

/* http_conns.c */
void http_conns_notify_cb(void *cls, struct MHD_Connection *mhd, void **socket_context,
			  enum MHD_ConnectionNotificationCode code);
void http_conns_headers_done(struct MHD_Connection *mhd);
void http_conns_busy(struct MHD_Connection *mhd);
void http_conns_request_done(struct MHD_Connection *mhd);
unsigned http_conns_cron(void);
void http_conns_stats(unsigned *open, uint64_t *accepted, uint64_t *timed_out);
int http_conns_rlimit(struct kerr *err);

/* http.c */
struct route;

/* One HTTP request from its first byte to its completion. */
struct request {
	struct MHD_Connection *conn;
	const char *method;
	const char *url;
	const struct route *route;
	char *params[2]; /* {name} segments of the path, in order */
	char *body;
	size_t body_len;
	bool body_too_large;
	enum role role;
	int64_t token_id;
	struct token_auth token;	   /* the acting token (id 0: none), for the audit log */
	char audit_op[LINK_OP_ID_MAX + 1]; /* the operation a 202 answer started */
	unsigned status;		   /* what was answered, for metrics */
	int64_t started_us;		   /* headers complete, for the latency histogram */
	bool authenticated;		   /* its token was checked when the headers came in */
	/* Group commit (db.c): commits made before the request began, and an answer held
	 * until the request's own commits are durable. */
	uint64_t db_seq;
	struct db_waiter durable;
	struct MHD_Response *held;
	unsigned held_status;
	/* Called instead of the route handler when a suspended request is resumed. */
	enum MHD_Result (*resume)(struct request *req);
	/* The handler's own state (a long poll, an agent query, a registry call, a P2V
	 * chunk), NULL when none; the transport never looks inside. A handler that
	 * suspends the request sets ctx_free with it, which http.c calls once, when the
	 * request ends or its watched client goes away, and then clears both; a stream
	 * route's end() releases a ctx left without one. */
	void *ctx;
	void (*ctx_free)(struct request *req);
	/* Suspended with http_suspend_watched(): its client is checked (http.c). */
	struct request *watch_next;
	bool watched;
	bool client_gone; /* a watched request's client hung up: ctx was let go */
	/* A streamed upload (api_images.c). */
	bool routed;
	int upload_fd;
	char *upload_path;
	uint64_t upload_len;
	char upload_error[256];
	/* What the registry token it came with grants, set by its route's authenticate
	 * like token above; NULL for an API token (registry_auth.c). */
	struct json_object *registry_access;
};

typedef enum MHD_Result (*route_fn)(struct request *req);

/*
 * A route whose body streams instead of collecting in memory. begin runs when the
 * headers are in (authorised already) and may answer at once; data gets each chunk
 * (errors are kept in the request and answered by the route's handler); end runs
 * when the request is over, however it ended, to release what begin took.
 * authenticate, when set, replaces the API token check for the routes of this
 * family (the registry also takes Basic credentials and its own tokens).
 */
struct stream_ops {
	enum MHD_Result (*begin)(struct request *req);
	void (*data)(struct request *req, const char *data, size_t len);
	void (*end)(struct request *req);
	enum role (*authenticate)(struct request *req, const char *authorization);
};

struct route {
	const char *method;
	const char *pattern; /* "{}" matches one path segment, a last "*" the rest */
	enum role role;	     /* least role allowed; ROLE_NONE: no token needed */
	const char *query;   /* allowed query keys, comma separated */
	route_fn fn;
	const struct stream_ops *stream; /* NULL: the body is collected in memory */
};

/* The Content-Security-Policy of every answer but the dashboard: it loads nothing. */
#define HTTP_CSP_NONE                                                                              \
	"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

int http_start(struct kerr *err);
void http_stop(void (*drain)(void));
void http_routes_set(const struct route *table, size_t n);
/* A part of the URL space that answers in a dialect of its own (the registry's /v2/). */
struct http_dialect {
	bool (*owns)(const char *url);
	char *(*error_text)(unsigned status, const char *code, const char *message,
			    struct json_object *detail);
	void (*challenge)(struct request *req, struct MHD_Response *resp, bool insufficient);
	const char *header, *header_value; /* added to each of its answers */
};
void http_dialect_set(const struct http_dialect *d);

/* routes.c */
extern const struct route api_routes[];
extern const size_t api_routes_count;
/*
 * What the transport asks of the layers above it; main.c sets them (tokens.c, audit.c,
 * metrics.c), so http.c calls no authentication, audit or metrics code by name.
 */
struct http_hooks {
	/* Who an Authorization value (NULL: none) acts as; ROLE_NONE with *why for a 401. */
	enum role (*authenticate)(const char *authorization, struct token_auth *token,
				  const char **why);
	/* The name of API token token_id (behind a stream route's own credentials). */
	enum role (*token_name)(int64_t token_id, char *name, size_t len);
	const char *(*role_label)(enum role role); /* a role's name, for a 403's message */
	/* An answer was queued: the route's pattern, its status and seconds since headers. */
	void (*answered)(const char *method, const char *route, unsigned status, double seconds);
	/* The request is over, however it ended (its ctx let go already): the audit log. */
	void (*ended)(const struct request *req);
};
void http_hooks_set(const struct http_hooks *hooks);
void http_kick(void);
enum MHD_Result http_reply_json(struct request *req, unsigned status, struct json_object *obj);
enum MHD_Result http_reply_error(struct request *req, unsigned status, const char *field,
				 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
enum MHD_Result http_reply_kerr(struct request *req, const struct kerr *err);
enum MHD_Result http_reply_empty(struct request *req, unsigned status);
enum MHD_Result http_reply_text(struct request *req, unsigned status, const char *ctype,
				char *text);
enum MHD_Result http_reply_response(struct request *req, unsigned status,
				    struct MHD_Response *resp);
int http_body_json(struct request *req, const struct json_field *fields, struct json_object **out,
		   struct kerr *err);
const char *http_query(struct request *req, const char *key);
int http_query_int(struct request *req, const char *key, int64_t min, int64_t max, int64_t def,
		   int64_t *out, struct kerr *err);
void http_suspend(struct request *req, enum MHD_Result (*resume)(struct request *req));
void http_upload_write(struct request *req, const char *data, size_t len);
void http_resume(struct request *req);
void http_suspend_watched(struct request *req, enum MHD_Result (*resume)(struct request *req));

/* ws.c */
struct ws;
struct ws_ops {
	void (*on_open)(struct ws *ws, void *cls);
	/* One whole message from the browser (binary: a binary frame, else text). */
	void (*on_message)(struct ws *ws, void *cls, const char *data, size_t len, bool binary);
	/* The socket ended by the browser or an error (not after ws_close()). */
	void (*on_close)(struct ws *ws, void *cls);
};
bool ws_handshake_valid(struct request *req);
enum MHD_Result ws_accept(struct request *req, const struct ws_ops *ops, void *cls);
void ws_send(struct ws *ws, const void *data, size_t len, bool binary);
void ws_close(struct ws *ws, uint16_t code, const char *reason);
void ws_close_all(void);

/* console_relay.c */
enum MHD_Result console_relay_open(struct request *req, const char *host, const char *name,
				   bool vnc);
void console_relay_data(struct host *h, struct json_object *body);
void console_relay_instance_stopped(const char *name, const char *state);
void console_relay_host_offline(const char *host);
void console_relay_cron(void);

/* api_root.c */
enum MHD_Result api_root_get(struct request *req);
enum MHD_Result api_healthz_get(struct request *req);
enum MHD_Result api_metrics_get(struct request *req);
enum MHD_Result api_dashboard_get(struct request *req);
enum MHD_Result api_dashboard_novnc(struct request *req);
enum MHD_Result api_dashboard_asset(struct request *req);

/* api_hosts.c */
extern const struct json_field *const host_patch_fields;
enum MHD_Result api_hosts_list(struct request *req);
enum MHD_Result api_host_get(struct request *req);
enum MHD_Result api_host_patch(struct request *req);
enum MHD_Result api_host_delete(struct request *req);
enum MHD_Result api_host_probe(struct request *req);
enum MHD_Result api_host_unmanaged_adopt(struct request *req);
enum MHD_Result api_host_unmanaged_destroy(struct request *req);

/* api_tokens.c */
extern const struct json_field *const token_create_fields;
enum MHD_Result api_tokens_create(struct request *req);
enum MHD_Result api_tokens_list(struct request *req);
enum MHD_Result api_token_delete(struct request *req);
enum MHD_Result api_token_rotate(struct request *req);

/* api_security_groups.c */
enum MHD_Result api_secgroups_create(struct request *req);
enum MHD_Result api_secgroups_list(struct request *req);
enum MHD_Result api_secgroup_get(struct request *req);
enum MHD_Result api_secgroup_put(struct request *req);
enum MHD_Result api_secgroup_delete(struct request *req);

/* api_networks.c */
struct ipam_net;
extern const struct json_field *const network_create_fields;
extern const struct json_field *const network_patch_fields;
int network_body_check(struct json_object *body, struct ipam_net *net, char *gw, struct kerr *err);
enum MHD_Result api_networks_create(struct request *req);
enum MHD_Result api_networks_list(struct request *req);
enum MHD_Result api_network_get(struct request *req);
enum MHD_Result api_network_patch(struct request *req);
enum MHD_Result api_network_delete(struct request *req);
enum MHD_Result api_network_addresses(struct request *req);

/* api_instances.c: the request tables (create: VM bodies; containers' is above) */
extern const struct json_field *const instance_vm_fields;
extern const struct json_field *const instance_patch_fields;
enum MHD_Result api_instances_create(struct request *req);
struct json_object *instance_create(struct json_object *body, struct json_object *restore,
				    struct json_object **placement, struct kerr *err);
enum MHD_Result instance_create_reply(struct request *req, struct json_object *op,
				      struct json_object *placement, struct kerr *err);
enum MHD_Result api_instances_list(struct request *req);
enum MHD_Result api_instance_get(struct request *req);
enum MHD_Result api_instance_patch(struct request *req);
enum MHD_Result api_instance_delete(struct request *req);
enum MHD_Result api_instance_action(struct request *req);
enum MHD_Result api_instance_console(struct request *req);
enum MHD_Result api_instance_metrics(struct request *req);
enum MHD_Result api_instance_console_input(struct request *req);
enum MHD_Result api_instance_console_ws(struct request *req);
enum MHD_Result api_instance_vnc_ws(struct request *req);
enum MHD_Result api_snapshots_create(struct request *req);
enum MHD_Result api_snapshots_list(struct request *req);
enum MHD_Result api_snapshot_revert(struct request *req);
enum MHD_Result api_snapshot_delete(struct request *req);

/* api_backups.c */
enum MHD_Result api_backup_stores_list(struct request *req);
enum MHD_Result api_backup_stores_create(struct request *req);
enum MHD_Result api_backup_store_get(struct request *req);
enum MHD_Result api_backup_store_delete(struct request *req);
enum MHD_Result api_backups_list(struct request *req);
enum MHD_Result api_backup_get(struct request *req);
enum MHD_Result api_instance_backup(struct request *req);
enum MHD_Result api_backup_restore(struct request *req);
enum MHD_Result api_backup_verify(struct request *req);
enum MHD_Result api_backup_delete(struct request *req);
enum MHD_Result api_backup_store_prune(struct request *req);
enum MHD_Result api_backup_store_gc(struct request *req);
enum MHD_Result api_backup_schedules_list(struct request *req);
enum MHD_Result api_backup_schedule_get(struct request *req);
enum MHD_Result api_backup_schedule_put(struct request *req);
enum MHD_Result api_backup_schedule_delete(struct request *req);
void api_query_wait(struct request *req, struct host *h, struct json_object *q, int64_t timeout_ms,
		    enum MHD_Result (*resume)(struct request *req), bool watched);
struct json_object *api_query_answer(const struct request *req);
const char *api_query_error(const struct request *req);
enum MHD_Result api_query_text_reply(struct request *req, const char *what);

int images_record(const char *name, const char *rel, const char *source_format,
		  int64_t virtual_size, int64_t file_size, const char *sha256, struct kerr *err);
enum MHD_Result api_images_upload(struct request *req);
enum MHD_Result api_images_list(struct request *req);
enum MHD_Result api_image_get(struct request *req);
enum MHD_Result api_image_delete(struct request *req);

/* p2v.c: ingest sessions (P2V and V2V) and their cutover */
extern const struct stream_ops api_p2v_ingest;
extern const struct stream_ops api_p2v_chunks;
enum MHD_Result api_p2v_create(struct request *req);
enum MHD_Result api_p2v_list(struct request *req);
enum MHD_Result api_p2v_get(struct request *req);
enum MHD_Result api_p2v_delete(struct request *req);
enum MHD_Result api_p2v_pass_start(struct request *req);
enum MHD_Result api_p2v_chunk_put(struct request *req);
enum MHD_Result api_p2v_action(struct request *req);
int p2v_session_cancel(const char *id, struct kerr *err);
int p2v_session_cancel_refused(const char *id, struct kerr *err);
/*
 * Start-up, before jobs_resume(): bring back the sessions the database holds, their
 * files reopened; one past its deadline ends (files and row go), one caught cutting
 * over goes back to receiving (or to done when its VM exists); one caught converting
 * has the old virt-v2v tree killed and converts again (at most P2V_CONVERT_TRIES).
 */
void p2v_sessions_load(void);
bool p2v_session_exists(const char *id);

/* p2v_convert.c: virt-v2v-in-place on the disks of a converting cutover */
struct p2v_convert;
struct p2v_convert_disk {
	const char *path; /* a qcow2 image */
	const char *bus;  /* its bus on the source: virtio, scsi, sata or ide */
};
enum p2v_convert_end {
	P2V_CONVERT_OK,
	P2V_CONVERT_FAILED,    /* virt-v2v refused or failed: why says so */
	P2V_CONVERT_TIMED_OUT, /* the deadline passed: its tree was killed */
	P2V_CONVERT_CANCELLED, /* p2v_convert_cancel(): its tree was killed */
};
typedef void (*p2v_convert_step_cb)(const char *step, void *data);
typedef void (*p2v_convert_done_cb)(enum p2v_convert_end end, const char *why, void *data);
/*
 * Run virt-v2v-in-place on disks (1 to 26, one guest) of session id, until deadline
 * (epoch ms); what a dead controller left of a run for id must have been removed
 * (p2v_convert_leftovers_remove) at start-up. step()
 * hears each step it prints; done() comes once, on a later turn of the loop, after
 * which the handle is gone. Returns the handle, or NULL with err (nothing runs).
 */
struct p2v_convert *p2v_convert_start(const char *id, const struct p2v_convert_disk *disks,
				      int ndisks, int64_t deadline, p2v_convert_step_cb step,
				      p2v_convert_done_cb done, void *data, struct kerr *err);
/* Kill the run's whole tree now; done() follows with P2V_CONVERT_CANCELLED. */
void p2v_convert_cancel(struct p2v_convert *c);
/*
 * Kill every process of a run for session id that a controller killed under it left
 * (found by the mark in their environment), and remove its scratch files. Blocks for
 * a scan of /proc (kernel memory, no disk): for start-up. Returns how many it killed.
 */
int p2v_convert_leftovers_remove(const char *id);

/* ova.c: V2V import of an OVA upload */
enum MHD_Result ova_import_start(struct request *req, const char *name, bool convert);
/*
 * jobs.c's resume of an image import after a restart: never resumed (-1); a converting
 * OVA import's leftover virt-v2v is killed and its unrecorded qcow2 files removed.
 */
int ova_import_resume(struct host *h, const char *id, struct json_object *op);
int ova_check(const char *path, const char *dir, struct json_object **out, char *why, size_t len);
enum MHD_Result api_instance_export(struct request *req);

/* api_ops.c */
enum MHD_Result api_ops_list(struct request *req);
enum MHD_Result api_op_get(struct request *req);
enum MHD_Result api_op_cancel(struct request *req);
void api_ops_wake(const char *id);
void api_ops_cron(void);
void api_ops_shutdown(void);

/* api_events.c */
enum MHD_Result api_events_stream(struct request *req);
enum MHD_Result api_events_history(struct request *req);
void api_events_notify(void);
void api_events_cron(void);
unsigned api_events_streams(void);
void api_events_shutdown(void);

/* metrics.c */
void metrics_api_source_set(void (*fn)(unsigned *open, uint64_t *accepted, uint64_t *timed_out,
				       unsigned *streams));
void metrics_api_request(const char *method, const char *route, unsigned status, double seconds);
void metrics_link_message(const char *type);
void metrics_heartbeat(const char *facts);
void metrics_db_commit(double seconds);
void metrics_db_sync(double seconds, double commits);
void metrics_loop_lag(double seconds);
void metrics_loop_tick(int64_t due_us);
void metrics_netsync_build(void);
void metrics_link_rejected(const char *reason);
char *metrics_render(void);
void metrics_free(void);

/* proc.c */
typedef void (*proc_done_fn)(int64_t status, const char *out, const char *errout, void *cls);
int proc_run(char *const argv[], proc_done_fn done, void *cls, struct kerr *err);

/* tls.c */
int tls_ensure(const char *state_dir, const char *api_listen, struct kerr *err);
int tls_pair_check(const char *cert_path, const char *key_path, struct kerr *err);

/* oci_store.c */
#define OCI_DIGEST_LEN	       (7 + 64) /* "sha256:" and the hex */
#define OCI_REPO_MAX	       128
#define OCI_TAG_MAX	       128
#define OCI_MEDIA_TYPE_MAX     127
#define OCI_MANIFEST_MAX       (4 << 20)
#define OCI_MT_MANIFEST	       "application/vnd.oci.image.manifest.v1+json"
#define OCI_MT_INDEX	       "application/vnd.oci.image.index.v1+json"
#define OCI_MT_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define OCI_MT_DOCKER_LIST     "application/vnd.docker.distribution.manifest.list.v2+json"

/* What an asynchronous store call found; status 0 or -errno, error says why. */
struct oci_result {
	int status;
	char error[256];
	char digest[OCI_DIGEST_LEN + 1];
	int64_t size;
};
typedef void (*oci_done_fn)(const struct oci_result *res, void *cls);

/* What oci_manifest_check learnt of a manifest. */
struct oci_manifest_info {
	char media_type[OCI_MEDIA_TYPE_MAX + 1];
	char config[OCI_DIGEST_LEN + 1];  /* image manifests */
	int64_t content_size;		  /* config and layers, or the index's children */
	char subject[OCI_DIGEST_LEN + 1]; /* the manifest this one refers to, or "" */
};

bool oci_digest_valid(const char *digest);
bool oci_repo_valid(const char *repo);
bool oci_tag_valid(const char *tag);
int oci_name_split(const char *name, char *repo, char *tag, const char *field, struct kerr *err);
char *oci_blob_path(const char *digest);
char *oci_upload_path(const char *name);
int oci_store_init(struct kerr *err);
void oci_store_modes_fix(void);
void oci_digest_of(const void *data, size_t len, char *out);
void oci_blob_put_file(const char *path, const char *expect, oci_done_fn done, void *cls);
void oci_blobs_verify_cron(void);
void oci_blob_delete(const char *digest, oci_done_fn done, void *cls);
void oci_layout_ingest(const char *dir, oci_done_fn done, void *cls);
bool oci_blob_stat(const char *digest, int64_t *size);
int oci_blob_put_mem(const void *data, size_t len, char *digest, struct kerr *err);
int oci_manifest_load(const char *digest, char **data, size_t *len, struct kerr *err);
int oci_manifest_check(const char *data, size_t len, const char *content_type,
		       struct oci_manifest_info *info, struct kerr *err);
int oci_manifest_lookup(const char *repo, const char *ref, char *digest, char *media_type,
			int64_t *size);
int oci_image_record(const char *repo, const char *tag, const char *digest, int64_t size,
		     const struct oci_manifest_info *info, struct kerr *err);
int oci_image_record_stored(const char *repo, const char *tag, const char *digest,
			    struct kerr *err);
int oci_tag_remove(const char *repo, const char *tag, struct kerr *err);
int oci_manifest_remove(const char *repo, const char *digest, struct kerr *err);
bool oci_image_used(const char *name, const char *digest, char *who, size_t len);
struct json_object *oci_tags_list(const char *repo, const char *last, int64_t n);
struct json_object *oci_repos_list(const char *last, int64_t n);
bool oci_repo_exists(const char *repo);
struct json_object *oci_referrers_list(const char *repo, const char *subject,
				       const char *artifact_type);
void oci_tree_remove(const char *path);
void oci_uploads_prune(void);

/* registry.c */
extern const struct stream_ops registry_stream;
enum MHD_Result registry_serve(struct request *req);
bool registry_url(const char *url);
char *registry_error_text(unsigned status, const char *code, const char *message,
			  struct json_object *detail);
void registry_shutdown(void);
extern const struct http_dialect registry_dialect;
void registry_scope(const struct request *req, char *out, size_t len);

/* registry_auth.c */
int registry_auth_init(const char *state_dir, struct kerr *err);
enum role registry_auth_authenticate(struct request *req, const char *authorization);
bool registry_auth_allows(const struct request *req, const char *type, const char *name,
			  const char *action);
void registry_auth_challenge(struct request *req, struct MHD_Response *resp, bool insufficient);
enum MHD_Result registry_token_get(struct request *req);

#endif
