/*
 * agentd.h - the map of kumo-agentd: its state and the prototypes each file offers.
 *
 * One libuv loop owns everything here. The agent joins the controller once (join.c),
 * keeps what that produced in {state_dir}/link.json, then speaks the sealed link
 * (link.c): commands arrive on an NN_REP socket, heartbeats and operation events leave
 * on an NN_PUSH socket. Facts (facts.c) are collected off the loop; the KVM probe
 * (kvmprobe.c) runs as a child with a deadline. The vm driver runs one QEMU per guest
 * (vm.c; command line in qemuargs.c, re-adoption in vmadopt.c), speaks QMP to it (qmp.c), makes and
 * changes its disks with qemu-img (disk.c), and takes the controller's instance commands
 * (instance.c checks and runs them, vmaction.c holds what each action does). The oci
 * driver runs each container under runc, kept by a shim process that outlives the
 * agent (shim.c, `kumo-agentd --shim DIR`); oci.c knows the containers and reads their
 * state from the shim's files, ociaction.c holds the container actions and exec,
 * layers.c reads (and, for commit, writes) OCI images in the shared store, bundle.c
 * writes the runtime config.
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

#include "argv.h"
#include "err.h"
#include "join.h"
#include "json.h"
#include "link.h"
#include "log.h"
#include "seal.h"
#include "spec.h"
#include "valid.h"
#include "work.h"
#include "verbs.h"

#define AGENT_PROG		   "kumo-agentd"
#define AGENT_OPCACHE_SIZE	   128	/* finished or running ops remembered for resends */
#define AGENT_SENDQ_MAX		   256	/* events held while the controller is away (sendq.c) */
#define AGENT_KVM_PROBE_TIMEOUT_MS 3000 /* a guest that has not run by then never will */
#define AGENT_JOIN_TIMEOUT_MS	   5000
#define AGENT_JOIN_RETRY_S	   2
#define AGENT_HEARTBEAT_MAX_S	   JOIN_HEARTBEAT_MAX_S
#define AGENT_ADDR_MAX		   JOIN_ADDR_MAX
#define AGENT_CLUSTER_ID_MAX	   JOIN_CLUSTER_ID_MAX
#define AGENT_QEMU_BINARY	   "qemu-system-x86_64"
#define AGENT_QMP_FD		   3 /* QEMU's fd of the QMP socket the agent bound (qmp.sock) */
#define AGENT_VM_START_TIMEOUT_MS  30000	  /* a QEMU without QMP by then is stuck */
#define AGENT_VM_KILL_AFTER_MS	   5000		  /* from QMP quit to SIGKILL */
#define AGENT_VM_DISKS_MAX	   SPEC_DISKS_MAX /* the SPEC schema's limits (common/spec.h) */
#define AGENT_VM_NICS_MAX	   SPEC_NICS_MAX
#define AGENT_CONSOLE_MAX	   (2 * 1024 * 1024) /* bytes a console query returns at most */
#define AGENT_OCI_RUNTIME	   "runc" /* crun refuses this cluster's hybrid cgroup layout */
#define AGENT_OCI_LAYERS_MAX	   64	  /* one overlay mount takes about that many */
#define AGENT_CTR_START_TIMEOUT_MS 30000
#define AGENT_EXEC_TIMEOUT_MAX_S   60
#define AGENT_EXEC_OUTPUT_MAX	   (1024 * 1024) /* bytes of exec output kept at most */
/* Execs running at once on a host: each holds a runc and up to its output in memory. */
#define AGENT_EXECS_MAX	   32
#define AGENT_LOGS_DEFAULT (64 * 1024)

/* Options as given on the command line, defaults filled in (config.c). */
struct agent_config {
	char *controller; /* HOST:PORT of the controller's join socket */
	char *join_token; /* from --join-token or read from --join-token-file */
	char *join_token_file;
	char *name;   /* host name; gethostname() when not given */
	char *listen; /* ADDR:PORT the command socket binds */
	char *state_dir;
	char *run_dir; /* runtime files QEMU reaches (fleece.h's NBD socket), 0711 */
	char *shared_pool;
	char *local_pool;
	char *log_level_name;
	char *accel;	   /* auto, kvm or tcg */
	char *qemu_user;   /* QEMU's user after start-up; "root": none */
	int qemu_uid_base; /* each VM's QEMU a uid from here (uid.c); 0: qemu_user */
	int qemu_uid_count;
	int ctr_uid_base;   /* containers' user namespace maps 0.. here (uid.c); 0: none */
	int heartbeat;	    /* seconds; 0: what the controller said at join */
	int log_size_mib;   /* cap of one file of a container's or VM's console log */
	int log_files;	    /* files of one console log at most (the current one too) */
	int ctr_memory_mib; /* memory limit of a container without one; 0: none */
	int ctr_pids;	    /* pids limit of a container without one; 0: none */
	bool check_only;    /* -n */
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
	bool earlier;		       /* taken by a previous run of the agent (the file) */
	bool unkept;		       /* idempotent: never written to the file */
	struct json_object *done_body; /* op-done body once finished */
};

/*
 * The ops remembered, and their ids on disk (written on a work lane of their own, one
 * write at a time, the newest last: see opcache.c). gen counts the changes to the ids;
 * written is the newest change on disk (or whose write failed, logged).
 */
struct opcache;
typedef void (*opcache_written_fn)(struct opcache *c);
struct opcache {
	struct op_entry slots[AGENT_OPCACHE_SIZE];
	unsigned next; /* slot the next op takes, evicting the oldest */
	/* What the newest op evicted, while it is not acked (link.c holds it until its id
	 * is on disk): put back should the op be dropped (opcache_drop()). */
	struct op_entry evicted;
	bool evicted_kept;
	char path[PATH_MAX]; /* the op ids, kept across runs; "" when not kept */
	/* Writes text to path durably, whole (append false) or appended to it; 0 or
	 * -errno (-ENOENT: no file to append to). On the lane's thread. */
	int (*write)(const char *path, const char *text, size_t len, bool append);
	/* The changes since the last write began, as the file's lines ("ID": taken,
	 * "~ID": dropped), for the next write to append; whole: it rewrites the file
	 * instead (at start, after a failed write, a delta too long, a file too long). */
	char delta[AGENT_OPCACHE_SIZE * (LINK_OP_ID_MAX + 2) + 1];
	size_t delta_len;
	unsigned delta_lines;
	unsigned file_lines; /* lines in the file: the last whole write's and those appended */
	bool whole;
	struct work_lane *lane;	       /* NULL before opcache_init() and once closed */
	opcache_written_fn written_cb; /* on the loop, after each write */
	void *owner;
	uint64_t gen;	       /* changes to the ids so far */
	uint64_t written;      /* the change the file is up to */
	bool writing;	       /* a write is on the lane */
	bool again;	       /* the ids changed meanwhile: one more write after it */
	bool closing;	       /* opcache_close(): the lane ends after the write running */
	bool close_retried;    /* the write once more at the close, after a failed one */
	char write_error[256]; /* why the last write failed; "" when it did not */
};

/* An op event waiting for the push socket to accept it; sealed when it leaves. */
struct sendq_item {
	enum link_type type;
	char op[LINK_OP_ID_MAX + 1];
	struct json_object *body;
	struct sendq_item *next;
};

/* The events waiting for the push socket, oldest first (sendq.c). */
struct sendq {
	struct sendq_item *head, *tail;
	unsigned len;
};

struct inst;
struct inst_op;
struct driver;

/* Called when a start settles or an instance's process is gone: error NULL on success. */
typedef void (*inst_done_cb)(struct inst *inst, const char *error, void *data);

/* A child process of an instance ended (libuv's exit status and signal). */
typedef void (*inst_exit_fn)(struct inst *inst, int64_t status, int term_signal);
struct inst_child;

struct inst_waiter {
	inst_done_cb cb;
	void *data;
	struct inst_waiter *next;
};

/*
 * What every instance this agent knows has, whatever its type: embedded first in
 * struct vm and struct ctr (libuv's handle fields), so shared code (inst.c,
 * instance.c) holds a struct inst * and the driver casts it to its own type. The
 * registry, the reference count of open handles, the waiters for a start or an exit
 * and the state live here once. Registered with inst_register(), gone with
 * inst_remove().
 */
struct inst {
	struct agent *agent;
	const struct driver *driver; /* of its type: the verbs and the rest (agentd.h) */
	struct inst *next;	     /* agent.insts */
	char name[NAME_MAX_LEN + 1];
	char dir[PATH_MAX];	  /* {local_pool}/instances/NAME or .../containers/NAME */
	struct json_object *spec; /* normalised SPEC, as in spec.json */
	bool created;		  /* spec.json written: the instance exists */
	struct inst_op *op;	  /* the command working on it (instance.c), or NULL */

	enum inst_state state;
	char error[256];	  /* why it crashed or failed */
	pid_t pid;		  /* the workload's process (QEMU, the container's init), or 0 */
	struct inst_child *child; /* our child (QEMU, the shim); NULL when adopted or none */
	int64_t started_at_ms;	  /* of the current run */
	bool stop_requested;	  /* this agent is stopping it */
	bool stop_forced;	  /* ... and had to force it */
	inst_done_cb start_cb;	  /* a start waiting to settle */
	void *start_data;
	struct inst_waiter *exit_waiters;
	uv_timer_t timer;      /* the driver's: start deadline, stop escalation */
	uv_timer_t poll_timer; /* the driver's: quick refreshes, retries */
	int open_handles;      /* freed when the last closes after inst_remove() */
	bool removing;
};

struct kvmprobe_run;
struct kvmprobe_waiter;
struct net;
struct qmp;
struct vm;
struct disk_cmd;

/* One disk of a VM as its spec names it, with where it lives and its last sizes. */
/*
 * Disk paths are sized to what is allowed, not PATH_MAX: a pool-relative path has at
 * most 1023 characters (spec_path_check()) and a pool directory at most
 * AGENT_POOL_DIR_MAX (config.c), so a VM's sixteen disks no longer make every
 * operation and every heartbeat's size job a quarter of a megabyte.
 */
#define AGENT_POOL_DIR_MAX  255
#define AGENT_DISK_PATH_MAX 1024 /* pool-relative, with NUL */
#define AGENT_DISK_ABS_MAX  (AGENT_POOL_DIR_MAX + 1 + AGENT_DISK_PATH_MAX) /* root/path */

struct vm_disk {
	char name[NAME_MAX_LEN + 1];
	char path[AGENT_DISK_PATH_MAX];	 /* pool-relative, as in the spec */
	const char *root;		 /* the pool's directory (the agent's config) */
	char abs[AGENT_DISK_ABS_MAX];	 /* root/path */
	int64_t virtual_size, allocated; /* bytes; -1 until measured */
};

struct resume;

/*
 * A VM this agent knows: its spec and run directory, and, while QEMU runs, the
 * process and the QMP connection. Registered with vm_register(), gone with vm_remove().
 */
struct vm {
	struct inst inst; /* first: a struct inst * is a struct vm * */
	struct vm_disk disks[AGENT_VM_DISKS_MAX];
	size_t ndisks;
	unsigned generation; /* bumped when disks change, so stale sizes are dropped */

	struct qmp *qmp;	   /* ready or connecting, or NULL */
	int64_t balloon_actual_mb; /* -1 unknown */
	int64_t balloon_target_mb; /* last target set in this QEMU's life, -1 none (file
				    * balloon_target, so an agent restart keeps it) */
	char shutdown_reason[40];  /* from QEMU's SHUTDOWN event, "" if none */
	bool reset_expected;	   /* a reboot command's RESET event is not news */
	/* inst.timer: start deadline, stop timeout, kill delay; inst.poll_timer: QMP
	 * connection retries, exit checks of adopted QEMUs. */
	int qmp_failures;      /* connection attempts that failed in a row */
	bool adopt_reported;   /* the start-up state report went out */
	bool vm_incoming;      /* migrate.c: the next QEMU waits for a migration */
	bool vm_migrating_in;  /* migrate.c: migrated here, its guest not running yet */
	bool vm_incoming_held; /* ... and stays paused after it (-S): local disks */
	/* migrate.c: the incoming QEMU's TLS server credentials, a directory of PEM
	 * files loaded from its command line as object vm_incoming_tls_id; "" none */
	char vm_incoming_tls[PATH_MAX];
	char vm_incoming_tls_id[64];
	/* migrate.c: the incoming VM's spec.json, put in place before its QEMU was
	 * spawned, made durable beside that QEMU's start (in_spec_write()): its fsyncs'
	 * state (1 running, 0 ended well or none, else -errno), when they ended, and the
	 * migrate-in whose QEMU listens already, waiting for them (or NULL). */
	struct {
		int state;
		int64_t ended_ms;
		struct inst_op *waiter;
	} vm_spec_sync;
	bool vm_nbd; /* migrate.c: its QEMU serves its local disks over NBD (or may: an
		      * incoming migration found again after an agent restart) */
	/* The incoming QEMU's MIGRATION event said its load ended (vm.c): a resume
	 * (vmaction.c) may cont at once. */
	bool vm_in_loaded;
	unsigned vm_resumes;	       /* QEMU's RESUME events so far (vmaction.c: a cont's) */
	struct resume *vm_resume_wait; /* vmaction.c: a resume waiting for the load, or NULL */
	/* backup_fleece.c: what this agent knows of backup nodes (kfl-, kbt-) in its QEMU:
	 * none but the vm_bk_nodes it added itself, when vm_bk_known (a query found none
	 * since this QMP connection began, and every change since was counted).
	 * vm_bk_gen changes whenever that knowledge could be out of date. */
	bool vm_bk_known;
	unsigned vm_bk_nodes;
	unsigned vm_bk_gen;
};

struct ctr;
struct oci_cmd;
struct exec_req;

/*
 * A container this agent knows: its spec and bundle directory, and what its shim's
 * files said last (oci_refresh()). Registered with oci_register(), gone with
 * oci_remove(). States are every instance's (enum inst_state, common/verbs.h): stopped,
 * starting (also between restarts), running, paused, stopping, crashed, error.
 */
struct ctr {
	struct inst inst;	/* first: a struct inst * is a struct ctr * */
	pid_t shim_pid;		/* 0 when no shim */
	bool orphan;		/* the init runs but no shim watches it */
	bool orphan_lost;	/* ... and it ended: its exit is unknown */
	int exit_code;		/* last run's, -1 if none */
	int exit_signal;	/* last run's, 0 none, -1 unknown */
	bool oom;		/* the last run was killed for memory */
	int64_t finished_at_ms; /* last run's end, -1 if none */
	int restarts;		/* by the restart policy, since the last start */
	int restarts_carried;	/* the next start's count: a cold migration's (ociaction.c) */
	int64_t rw_size;	/* bytes in the writable layer, -1 until measured */
	bool measuring;
	unsigned measure_tick;
	int kill_attempts;
	int64_t start_ms;
	/* inst.timer: start deadline, stop escalation; inst.poll_timer: quick refreshes
	 * while a start or stop settles. inst.pid is the container's init while it runs. */
	uv_fs_event_t watch; /* ... and its directory watched for the shim's files */
	bool watching;
	uint64_t marker_gen;	/* the stop marker's fsyncs run on the agent's lane; 0: none */
	bool exit_owed;		/* the stop settled meanwhile: answered once they are done */
	char marker_error[512]; /* why the newest stop marker is not durable; "" it is */
	char pushed[64];	/* what the controller heard last (a signature) */
};

/* An image as its manifest in the shared store describes it (layers.c). */
struct oci_layer {
	char digest[80];
	char media_type[128];
	int64_t size;
	char diff_id[80]; /* "" when the config lists none */
};

struct oci_image {
	char manifest_digest[80]; /* of the image manifest (an index resolved) */
	char manifest_media_type[128];
	int64_t manifest_size;
	struct json_object *manifest;
	char config_digest[80];
	int64_t config_size;
	struct json_object *config;
	struct oci_layer *layers; /* bottom first */
	size_t nlayers;
};

/* What a commit stored. */
struct oci_commit {
	char manifest[80], config[80], layer[80], diff_id[80];
	int64_t manifest_size, config_size, layer_size;
	int64_t size; /* manifest + config + every layer */
};

/* How a runc subcommand ended (oci_runc()). */
struct oci_cmd_result {
	int64_t status;
	int term_signal;
	bool timed_out;
	bool cancelled; /* the agent is stopping */
	const char *out;
	size_t outlen;
	bool truncated;
	char error[256]; /* runc's reason, when it failed */
};
typedef void (*oci_cmd_cb)(struct agent *a, const struct oci_cmd_result *r, void *data);

struct inst_op;
typedef void (*op_step_fn)(struct inst_op *op);
typedef void (*op_disk_fn)(struct inst_op *op, size_t i);

/*
 * One workload type: what it does for each verb of the verb table (common/verbs.h)
 * and the lifecycle hooks the shared code calls (inst.c), like systemd's UnitVTable.
 * The shared code (instance.c) checks a command against the verb table, then calls
 * the verb's slot. A NULL slot is a verb the type lacks: the shared code answers 422
 * "<verb> is not supported for <type>s" (dispatch.c). The VM driver fills
 * VERB_MIGRATE_OUT, VERB_MIGRATE_IN (migrate.c), VERB_BACKUP and VERB_RESTORE
 * (backup.c); both drivers' cancel is job.c's undo. Adding a type is one file of
 * actions with its table and one row in instance.c's drivers[].
 */
struct driver {
	enum inst_type type;
	op_step_fn verbs[VERBS];
	/* A verb's args schema where the driver's own checks replace the verb table's
	 * (the stage-2 verbs: migrate.c, backup.c); NULL: the table's. */
	const struct json_field *args[VERBS];
	op_step_fn cancel; /* stop the command at work at a safe point; NULL: none */
	/* The REPORT the controller keeps (a new object). */
	struct json_object *(*report)(const struct inst *inst);
	/* Read the state afresh before a verb checks it; NULL: always current. */
	void (*refresh)(struct inst *inst);
	/* Tell the controller the instance's current state (an instance-state message). */
	void (*state_push)(struct inst *inst);
	/* The controller got a report another way (an op-done); NULL: nothing to note. */
	void (*heard)(struct inst *inst);
	/* inst_remove(): close the type's own handles; inst's close after. */
	void (*forget)(struct inst *inst);
	/* A process of the instance (or its keeper) is there. */
	bool (*alive)(const struct inst *inst);
	/* Stop op's instance at once; cb(inst, error, op) once it is gone. */
	void (*force_stop)(struct inst_op *op, inst_done_cb cb);
	/* delete's last step: remove what the instance holds, then end op. */
	op_step_fn delete_files;
	/* Add the type's fields to the report of an instance this host does not have. */
	void (*absent_report)(struct json_object *report, struct json_object *spec);
	/* The type's share of the cron (heartbeat timer), and of start-up. */
	void (*cron)(struct agent *a);
	const char *subdir;			/* {local_pool}/SUBDIR/NAME per instance */
	void (*adopt_prepare)(struct agent *a); /* NULL: nothing before */
	void (*adopt_one)(struct agent *a, const char *name); /* one SUBDIR/NAME found */
};

/* One instance command at work: instance.c runs it, vmaction.c holds the actions. */
struct inst_op {
	struct agent *agent;
	char op[LINK_OP_ID_MAX + 1];
	enum verb verb;
	const struct driver *driver; /* of the instance's type */
	struct vm *vm;
	struct ctr *ctr;	  /* for a container's command, instead of vm */
	bool restart;		  /* container restart: start again once stopped */
	bool owner;		  /* vm->inst.op (ctr->inst.op) is this op */
	bool registered;	  /* create: this op registered vm, and removes it on failure */
	struct json_object *spec; /* normalised SPEC from the command */
	struct json_object *args;
	struct json_object *result; /* fields the action adds to the result */
	struct json_object *report; /* a report made before the vm went away (delete) */
	op_step_fn then;	    /* what instance_then_cb() runs once a step succeeded */
	int64_t started_ms;	    /* when the command arrived (timings of its steps) */

	struct vm_disk disks[AGENT_VM_DISKS_MAX]; /* the disks the action works on */
	size_t ndisks;
	char *images[AGENT_VM_DISKS_MAX]; /* source image per disk, or NULL (op_free frees) */
	bool make[AGENT_VM_DISKS_MAX];	  /* create/update: disk to make */
	bool made[AGENT_VM_DISKS_MAX];	  /* ... and made: removed on failure */
	int64_t grow[AGENT_VM_DISKS_MAX]; /* update: new size, 0 to keep */
	bool seed;			  /* cloud-init seed to (re)build */

	/* instance_disks_each() */
	size_t idx;
	bool (*each_want)(struct inst_op *op, size_t i);
	op_disk_fn each_fn;
	op_step_fn each_then;

	/* job.c: deadline and cancel */
	struct job *job;
	bool undoing;		    /* cancelled: undoing what it did */
	struct json_object *undone; /* ... and what that was, for the op-done */
	bool result_on_fail;	    /* a failure's op-done carries result (a lost migration) */

	/* snapshots */
	const char *snapshot;
	bool with_memory;
	bool has[AGENT_VM_DISKS_MAX]; /* disk i holds the snapshot */
	bool has_memory;	      /* ... with the VM's memory */
	struct json_object *bitmaps;  /* revert: the disks' dirty bitmaps (snaprevert.h) */
	size_t bitmap_next;	      /* ... the next one to remove */
};

struct agent {
	uv_loop_t *loop;
	const struct agent_config *cfg;
	struct agent_link link;
	char addr[AGENT_ADDR_MAX]; /* advertised command address, tcp://A:P */
	int heartbeat_s;
	int64_t started_us;
	bool stopping;
	/* Small durable writes off the loop, one at a time in order (common/work.h):
	 * link.seq, the containers' stop markers. Ends after agent_stop()'s last one. */
	struct work_lane *lane;

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
	struct sendq sendq;
	bool console_held; /* a console relay stopped reading until the queue drains */
	struct opcache ops;
	struct link_held *held;	   /* a command acked once its op id is on disk */
	struct seq_held *seq_held; /* a request read once its seq is on disk */
	uv_timer_t held_timer;	   /* says so in the log while its write takes long */
	struct job *jobs;	   /* job.c: instance commands at work */

	/* heartbeat.c */
	uv_timer_t heartbeat_timer;
	bool heartbeat_busy;  /* a facts collection for a beat is in flight */
	bool heartbeat_again; /* a fresh beat was asked for meanwhile */
	/* The facts digest of the last whole document sent, and when (link.h). */
	char heartbeat_digest[LINK_FACTS_DIGEST_LEN + 1];
	int64_t heartbeat_full_ms;

	/* kvmprobe.c */
	bool kvm_probed;
	bool kvm_usable;
	struct kvmprobe_run *kvm_current; /* the run new waiters join, or NULL */
	struct kvmprobe_run *kvm_runs;	  /* every run whose handles are still open */

	/* inst.c: every instance, whatever its type */
	struct inst *insts;

	/* vm.c */
	char hw_virt[8]; /* "vmx", "svm" or "" (for nested guests) */

	/* disk.c */
	struct disk_cmd *disk_cmds; /* helper children still running */

	/* imagecheck.c */
	struct image_hash *image_hashes; /* SHA-256 of image files, by file identity */

	/* oci.c */
	struct oci_cmd *oci_cmds;   /* runc children still running */
	int execs;		    /* of them, execs (AGENT_EXECS_MAX at most) */
	struct exec_req *exec_reqs; /* ... and who waits for each (ociaction.c) */
	char exe[PATH_MAX];	    /* this program, run again as the shim */

	/* net.c */
	struct net *net; /* the network driver's state, NULL before net_start() */

	/* lease.c */
	struct lease_state *lease; /* the HA lease renewal, NULL when stopped */

	/* main.c */
	uv_signal_t sigterm, sigint;
};

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
void link_query_reply(struct agent *a, const char *op, struct json_object *answer,
		      const char *error);
int link_console_send(struct agent *a, struct json_object *body);
int link_watch(struct agent *a, struct kerr *err);
void link_ops_written(struct opcache *c);

/* sendq.c */
int sendq_add(struct sendq *q, enum link_type type, const char *op, struct json_object *body);
void sendq_pop(struct sendq *q);
void sendq_clear(struct sendq *q);

/* opcache.c */
struct op_entry *opcache_find(struct opcache *c, const char *op);
void opcache_init(struct opcache *c, uv_loop_t *loop, opcache_written_fn written_cb, void *owner);
const char *opcache_write_error(const struct opcache *c);
struct op_entry *opcache_add(struct opcache *c, const char *op, enum link_type type);
struct op_entry *opcache_add_unkept(struct opcache *c, const char *op, enum link_type type);
void opcache_drop(struct opcache *c, const char *op);
bool opcache_on_disk(const struct opcache *c, uint64_t gen);
int opcache_write_file(const char *path, const char *text, size_t len, bool append);
void opcache_close(struct opcache *c);
void opcache_load(struct opcache *c, const char *path);
void opcache_finish(struct opcache *c, const char *op, struct json_object *done_body);
void opcache_clear(struct opcache *c);

/* job.c */
void job_start(struct inst_op *op, int64_t timeout_ms);
void job_end(struct inst_op *op);
const char *job_cancel_reason(const struct inst_op *op);
bool job_cancelled(const struct inst_op *op);
void job_undo(struct inst_op *op);
void job_cancel_resume(struct inst_op *op, const char *reason);
void job_file_done(struct agent *a, const char *op, const char *cancel, struct json_object *undone);
struct json_object *job_cancel_cmd(struct agent *a, const char *op, struct json_object *body,
				   struct kerr *err);

/* jobfile.c */
/* What {run dir}/job.json says: a job a previous run had a cancel for (job.c). */
struct job_file {
	char op[LINK_OP_ID_MAX + 1];
	char verb[16];
	char cancel[16]; /* "cancelled", "timed out", or "" */
};
bool job_file_parse(const char *text, size_t len, int64_t now, struct job_file *jf);
bool job_file_take(const char *dir, struct job_file *jf);

/* probe.c */
void probe_cmd_start(struct agent *a, const char *op, struct json_object *body);

/* qmp.c */
struct qmp_ops {
	void (*ready)(struct qmp *q, void *data);
	void (*event)(struct qmp *q, const char *name, struct json_object *event_data, void *data);
	void (*closed)(struct qmp *q, int status, const char *why, void *data);
};
typedef void (*qmp_reply_cb)(struct qmp *q, struct json_object *ret, const char *error, void *data);
struct qmp *qmp_open(uv_loop_t *loop, const char *path, const struct qmp_ops *ops, void *data);
int qmp_cmd_send(struct qmp *q, const char *cmd, struct json_object *args, unsigned timeout_ms,
		 qmp_reply_cb cb, void *data, struct kerr *err);
bool qmp_ready(const struct qmp *q);
void qmp_close(struct qmp *q);

/* qga.c */
typedef void (*qga_done_cb)(int status, int64_t count, bool cmd_sent, const char *why, void *data);
void qga_cmd_run(uv_loop_t *loop, const char *path, const char *cmd, unsigned cmd_ms,
		 qga_done_cb cb, void *data);

/* uid.c */
uid_t uid_vm_read(const char *dir);
int64_t uid_vm_claim(struct vm *vm, struct kerr *err);
void uid_vm_release(struct vm *vm);
unsigned uid_ctr_base(const struct agent_config *cfg, struct json_object *spec);
int uid_ctr_netns_make(unsigned base, const char *userns_path, const char *netns_path,
		       struct kerr *err);
int uid_userns_open(unsigned base, struct kerr *err);
int uid_userns_child_main(bool net);
int uid_idmap_mount(const char *src, const char *dst, int userns_fd, struct kerr *err);
int uid_ctr_path_open(const char *dir, struct kerr *err);

/* vmcgroup.c */
int vmcgroup_enter(struct vm *vm, pid_t pid, struct kerr *err);
void vmcgroup_remove(struct vm *vm);

/* qemuargs.c */
int qemu_args_build(const struct vm *vm, const char *loadvm, struct argv *av, struct kerr *err);

/* vm.c */
struct vm *vm_find(struct agent *a, const char *name);
struct vm *vm_register(struct agent *a, struct json_object *spec, struct kerr *err);
int vm_spec_set(struct vm *vm, struct json_object *spec, struct kerr *err);
int vm_disks_resolve(struct agent *a, struct json_object *spec, struct vm_disk *disks,
		     size_t *ndisks, struct kerr *err);
void vm_remove(struct vm *vm);
void vm_forget(struct inst *inst);
bool vm_alive(const struct vm *vm);
int vm_start(struct vm *vm, const char *loadvm, inst_done_cb cb, void *data, struct kerr *err);
int vm_start_checked(struct vm *vm, inst_done_cb cb, void *data, struct kerr *err);
void vm_shutdown(struct vm *vm, unsigned timeout_s, inst_done_cb cb, void *data);
void vm_force_stop(struct vm *vm, inst_done_cb cb, void *data);
void vm_stopped_set(struct vm *vm);
void vm_state_set(struct vm *vm, enum inst_state state);
int vm_qmp(struct vm *vm, const char *cmd, struct json_object *args, unsigned timeout_ms,
	   qmp_reply_cb cb, void *data, struct kerr *err);
struct json_object *vm_report(const struct vm *vm);
void vm_balloon_target_set(struct vm *vm, int64_t target_mb);
void vm_balloon_target_load(struct vm *vm);
void vm_state_push(struct vm *vm);
void vm_measure(struct vm *vm, inst_done_cb cb, void *data);
void vm_cron(struct agent *a);
bool vm_pid_alive(pid_t pid);
void vm_qmp_connect(struct vm *vm);

/* vmadopt.c */
void vm_adopt_prepare(struct agent *a);
void vm_adopt_one(struct agent *a, const char *name);

/* disk.c */
typedef void (*disk_done_cb)(struct agent *a, const char *error, void *data);
typedef void (*disk_info_cb)(struct agent *a, const char *error, struct json_object *info,
			     void *data);
typedef void (*disk_sizes_cb)(struct agent *a, const int64_t *virtual_size,
			      const int64_t *allocated, void *data);
const char *disk_pool_root(const struct agent_config *cfg, const char *pool);
void disk_prepare(struct agent *a, const char *dir, const struct vm_disk *disks, size_t n,
		  const char *const *images, disk_done_cb cb, void *data);
void disk_create(struct agent *a, const struct vm_disk *disk, const char *image, int64_t size,
		 bool full_clone, disk_done_cb cb, void *data);
void disk_resize(struct agent *a, const char *abs, int64_t size, disk_done_cb cb, void *data);
void disk_info(struct agent *a, const char *abs, disk_info_cb cb, void *data);
void disk_fail_later(struct agent *a, disk_done_cb cb, void *data, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* imagecheck.c */
void imagecheck_image(struct agent *a, const char *abs, const char *sha256, disk_done_cb cb,
		      void *data);
void imagecheck_vm(struct vm *vm, disk_done_cb cb, void *data);
void imagecheck_cache_free(struct agent *a);
void disk_snapshot(struct agent *a, const char *abs, char action, const char *snapshot,
		   disk_done_cb cb, void *data);
void disk_bitmap_remove(struct agent *a, const char *abs, const char *name, disk_done_cb cb,
			void *data);
void disk_seed_build(struct agent *a, const char *dir, const char *name, const char *user_data,
		     disk_done_cb cb, void *data);
void disk_file_write(struct agent *a, const char *path, const char *text, disk_done_cb cb,
		     void *data);
void disk_remove(struct agent *a, const char *dir, const struct vm_disk *disks, size_t n,
		 const bool *keep, disk_done_cb cb, void *data);
void disk_sizes(struct agent *a, const struct vm_disk *disks, size_t n, disk_sizes_cb cb,
		void *data);
void disk_cmds_close(struct agent *a);

/* backup.c: the backup and restore actions of the vm driver */
int backup_id_check(struct json_object *val, const char *field, struct kerr *err);
int backup_store_check(struct json_object *val, const char *field, struct kerr *err);
extern const struct json_field backup_args[];
void backup_vm_run(struct inst_op *op);
void backup_vm_restore(struct inst_op *op);
void backup_vm_adopted(struct vm *vm);
void backup_vm_job_event(struct vm *vm, const char *id, const char *status);
/* At a VM's adoption: the backup jobs a killed agent left in its QEMU end. */
void backup_jobs_adopted(struct vm *vm);
void backup_vm_restore_then(struct inst_op *op, void (*then)(struct inst_op *op));
void backup_ctr_run(struct inst_op *op);
void backup_ctr_restore_then(struct inst_op *op, void (*then)(struct inst_op *op));

/* backup_fleece.c */
/* At a VM's adoption: the fleecing objects a killed agent's backup left in its QEMU go. */
void backup_fleece_adopted(struct vm *vm);
void backup_nodes_unknown(struct vm *vm);
void backup_nodes_reset(struct vm *vm);

/* backupmap.c: a stopped VM's disk read from its qcow2 chain (thread only) */
struct backup_map;
struct chunkpipe_source;
int backup_map_open(const char *disk, bool (*cancelled)(void *data), void *cancel_data,
		    struct backup_map **out, struct kerr *err);
void backup_map_source(struct backup_map *m, struct chunkpipe_source *src);
void backup_map_free(struct backup_map *m);
/* What an incremental's target holds, sorted by start, disjoint: [start, start +
 * length) of the disk reads as the target's bytes at offset, or as zeros (offset -1).
 * The rest of the disk is not in the target (the bitmap did not mark it). */
struct backup_extent {
	int64_t start, length, offset;
};
struct backup_extents {
	struct backup_extent *v;
	size_t n;
};
#define BACKUP_MAP_MAX_EXTENTS (1 << 20) /* 24 MiB of them; past it the disk is read whole */
int backup_target_open(const char *path, uid_t owner, struct kerr *err);
/* A new empty qcow2 at path (never over a file, never through a link) of size bytes,
 * 64 KiB clusters, owned by uid:gid (QEMU's, which opens it as an incremental's target).
 * Returns 0, or -1 with err (nothing left behind). Thread only. */
int backup_target_create(const char *path, int64_t size, uid_t uid, gid_t gid, struct kerr *err);
#define BACKUP_TARGET_CLUSTER_BITS 16 /* QEMU's qcow2 default: an incremental's target */
int backup_map_qcow2(int fd, const char *path, int64_t size, unsigned want_cluster_bits,
		     struct backup_extents *out, struct kerr *err);
int backup_map_json(struct json_object *map, int64_t size, const char *path,
		    struct backup_extents *out, struct kerr *err);
void backup_extents_free(struct backup_extents *x);
/* An incremental's disk (thread only): the parent's chunk list pchunks with the
 * dirty clusters of target (fd, extents: backup_map_qcow2's or backup_map_json's)
 * over it; dirty_bytes counts what was read from the target. parent_bad: a touched
 * chunk's parent chunk could not be read (why), so the disk is better read whole. */
struct chunkcrypt_key;
struct backup_incr {
	const char *store; /* absolute */
	const struct chunkcrypt_key *key;
	struct json_object *pchunks;
	const struct backup_extents *extents;
	int64_t size;
	int fd;
	const char *target;
	uint64_t dirty_bytes;
	uint64_t parent_reads; /* parent chunks read back (one the target covers is not) */
	bool parent_bad;
	char parent_why[160];
};
bool backup_incr_dirty(const struct backup_incr *bi, int64_t off, int64_t end);
void backup_incr_source(struct backup_incr *bi, struct chunkpipe_source *src);

/* instance.c */
int instance_cmd_check(struct json_object *body, struct kerr *err);
void instance_cmd_start(struct agent *a, const char *op, struct json_object *body);
void instance_undo_resume(struct agent *a, struct inst *inst, const struct job_file *jf);
int instance_query(struct agent *a, const char *op, struct json_object *body,
		   struct json_object **answer, struct kerr *err);
bool instance_op_gone(struct inst_op *op);
bool instance_op_starts(const struct inst_op *op);
bool instance_op_creates(const struct inst_op *op);
void instance_op_progress(struct inst_op *op, int progress, const char *phase);
void instance_op_succeed(struct inst_op *op);
void instance_op_fail(struct inst_op *op, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void instance_disks_each(struct inst_op *op, bool (*want)(struct inst_op *op, size_t i),
			 op_disk_fn fn, op_step_fn then);
void instance_each_next(struct inst_op *op);
void instance_disk_done_cb(struct agent *a, const char *error, void *data);
bool instance_step_failed(struct inst_op *op, const char *error);
bool instance_stop_noted(struct inst_op *op, const struct inst *inst, const char *error);
void instance_delete(struct inst_op *op);
void instance_done_cb(struct inst *inst, const char *error, void *data);
void instance_then_cb(struct inst *inst, const char *error, void *data);

/* inst.c */
const struct driver *inst_driver(enum inst_type t);
struct inst *inst_find(struct agent *a, const char *name);
void inst_register(struct inst *inst, struct agent *a, const struct driver *drv,
		   struct json_object *spec);
void inst_remove(struct inst *inst);
void inst_handle_close_cb(uv_handle_t *handle);
void inst_unref(struct inst *inst);
int inst_child_spawn(struct inst *inst, uv_process_options_t *opts, inst_exit_fn exit_fn);
void inst_close_all(struct agent *a);
void inst_start_settle(struct inst *inst, const char *error);
void inst_exit_waiter_add(struct inst *inst, inst_done_cb cb, void *data);
void inst_exit_waiters_call(struct inst *inst, const char *error);
bool inst_start_overdue(struct inst *inst, const char *late, uint64_t timeout_ms, char *why,
			size_t len);
char *inst_log_last_line(const char *path, char *buf, size_t len);
struct json_object *inst_spec_adopt(enum inst_type type, const char *name, const char *path,
				    int ret, const char *text, size_t len);
struct json_object *inst_int_or_null(int64_t v);
struct json_object *inst_report_base(const struct inst *inst);
struct json_object *inst_reports(struct agent *a);
int inst_running_count(struct agent *a);
void inst_cron(struct agent *a);
void inst_adopt_all(struct agent *a);

/* dispatch.c (no agent state: the unit tests run it alone) */
int dispatch_verb_supported(const struct driver *drv, int verb, struct kerr *err);
const struct json_field *dispatch_verb_args(const struct driver *drv, enum verb verb);
int dispatch_busy_check(enum verb verb, enum verb busy, const char *busy_op, const char *name,
			struct kerr *err);
int dispatch_state_check(enum verb verb, bool exists, enum inst_state state, const char *name,
			 struct kerr *err);

/* vmaction.c */
extern const struct driver vm_driver;
void vmaction_create(struct inst_op *op);
void vmaction_update(struct inst_op *op);
void vmaction_start(struct inst_op *op);
void vmaction_stop(struct inst_op *op);
void vmaction_force_stop(struct inst_op *op);
void vmaction_reboot(struct inst_op *op);
void vmaction_pause(struct inst_op *op);
void vmaction_resume(struct inst_op *op);
void vmaction_resume_wake(struct vm *vm);
void vmaction_balloon(struct inst_op *op);
void vmaction_snapshot_create(struct inst_op *op);
void vmaction_snapshot_revert(struct inst_op *op);
void vmaction_snapshot_delete(struct inst_op *op);

/* migrate.c */
extern const struct json_field migrate_in_args[];
extern const struct json_field migrate_out_args[];
void migrate_in(struct inst_op *op);
void migrate_out(struct inst_op *op);
bool migrate_adopted(struct vm *vm, const char *status);
size_t migrate_disks_local(const struct vm *vm, bool *keep);
void migrate_in_running(struct vm *vm);
void migrate_adopted_dead(struct vm *vm);
void migrate_out_event(struct vm *vm, const char *status);
int migrate_state_query(struct agent *a, struct json_object *body, struct json_object **answer,
			struct kerr *err);
int migrate_prepare_query(struct agent *a, struct json_object *body, struct json_object **answer,
			  struct kerr *err);
int migrate_unprepare_query(struct agent *a, struct json_object *body, struct json_object **answer,
			    struct kerr *err);
void migrate_preps_close(struct agent *a);
void migrate_creds_adopted(struct vm *vm);
int migrate_cancel_query(struct agent *a, struct json_object *body, struct json_object **answer,
			 struct kerr *err);

/* logfile.c */
#define LOGFILE_FILES_MAX 10	      /* generations of one log at most */
#define LOGFILE_MIN_BYTES (64 * 1024) /* the smallest cap per file */
struct logfile {
	char path[PATH_MAX];
	int fd;
	int64_t offset; /* logical offset where the current file begins */
	int64_t size;	/* of the current file */
	int64_t max_bytes;
	int files;
};
struct logfile_span {
	unsigned char *data; /* len bytes (owned by the caller) */
	size_t len;
	int64_t offset; /* logical offset of data[0] */
	int64_t end;	/* logical end of the log */
};
int logfile_open(struct logfile *lf, const char *path, int64_t max_bytes, int files);
int logfile_write(struct logfile *lf, const void *buf, size_t len);
int64_t logfile_end(const struct logfile *lf);
void logfile_close(struct logfile *lf);
int logfile_trim(const char *path, int64_t max_bytes, int files);
int logfile_read(const char *path, int64_t offset, int64_t lines, bool tail_bytes, int64_t max,
		 struct logfile_span *out);

/* oci.c */
struct ctr *oci_find(struct agent *a, const char *name);
struct ctr *oci_register(struct agent *a, struct json_object *spec, struct kerr *err);
void oci_remove(struct ctr *ctr);
void oci_forget(struct inst *inst);
bool oci_alive(const struct ctr *ctr);
void oci_runc_root(const struct agent *a, char *out, size_t len);
void oci_cgroup_path(const struct agent *a, const char *name, char *out, size_t len);
struct json_object *oci_report(const struct ctr *ctr);
void oci_state_push(struct ctr *ctr);
void oci_state_heard(struct ctr *ctr);
void oci_state_set(struct ctr *ctr, enum inst_state state);
void oci_refresh(struct ctr *ctr);
void oci_mark_stopped(struct ctr *ctr, inst_done_cb cb, void *data);
int oci_start(struct ctr *ctr, inst_done_cb cb, void *data, struct kerr *err);
void oci_stop(struct ctr *ctr, unsigned timeout_s, inst_done_cb cb, void *data);
int oci_runc(struct agent *a, const char *const *args, unsigned timeout_ms, size_t out_max,
	     bool merge, const char *pid_file, oci_cmd_cb cb, void *data, struct kerr *err);
void oci_cmds_close(struct agent *a);
bool oci_cmd_cancel(struct agent *a, const void *data);
void oci_job_queue(struct agent *a, struct work *j);
void oci_dir_remove(struct agent *a, const char *dir, disk_done_cb cb, void *data);
void oci_measure(struct ctr *ctr, inst_done_cb cb, void *data);
void oci_cron(struct agent *a);
int oci_logs_read(struct ctr *ctr, int64_t tail, int64_t offset, int64_t max,
		  struct json_object **answer, struct kerr *err);
void oci_adopt_prepare(struct agent *a);

/* ocimarker.c */
int oci_marker_put(struct ctr *ctr);
void oci_marker_exit(struct ctr *ctr);
void oci_marker_forget(struct ctr *ctr);
const char *oci_marker_stop_error(const struct ctr *ctr);
void oci_adopt_one(struct agent *a, const char *name);

/* ociaction.c */
extern const struct driver oci_driver;
void ociaction_create(struct inst_op *op);
void ociaction_start(struct inst_op *op);
void ociaction_stop(struct inst_op *op);
void ociaction_force_stop(struct inst_op *op);
void ociaction_restart(struct inst_op *op);
void ociaction_pause(struct inst_op *op);
void ociaction_resume(struct inst_op *op);
void ociaction_commit(struct inst_op *op);
int ociaction_exec(struct agent *a, const char *qop, struct json_object *q, struct kerr *err);
bool ociaction_exec_cancel(struct agent *a, const char *qop);

/* layers.c (thread pool only: no agent state) */
bool layers_digest_valid(const char *s);
int layers_blob_read(const char *shared, const char *digest, size_t max, char **out, size_t *outlen,
		     struct kerr *err);
int layers_blob_write(const char *shared, const void *data, size_t len, char *digest,
		      struct kerr *err);
/* Where layers_image_parse() gets a manifest or config: read, digest-checked, parsed. */
typedef int (*layers_meta_fn)(void *cls, const char *digest, const char *what,
			      struct json_object **out, int64_t *size, struct kerr *err);
int layers_image_parse(const char *digest, layers_meta_fn meta_read, void *cls,
		       struct oci_image *img, struct kerr *err);
int layers_image_load(const char *shared, const char *digest, struct oci_image *img,
		      struct kerr *err);
void layers_image_free(struct oci_image *img);
int layers_tar_unpack(const char *path, const char *dest, const char *digest, char *blob_digest,
		      char *diff_id, struct kerr *err);
int layers_unpack(const char *shared, const char *local, const struct oci_layer *l,
		  struct kerr *err);
void layers_userns_base_set(unsigned base);
int layers_tar_write(const char *upper, const char *path, char *digest, char *diff_id,
		     int64_t *size, struct kerr *err);
int layers_commit(const char *shared, const char *upper, const struct oci_image *img,
		  const char *comment, struct oci_commit *out, struct kerr *err);

/* bundle.c */
/* What the agent's configuration gives a container whose spec sets no limits. */
struct bundle_defaults {
	int memory_mib;	      /* 0: no memory limit */
	int pids;	      /* 0: no pids limit */
	unsigned userns_base; /* host uid of the container's root (uid.c); 0: no userns */
};
struct json_object *bundle_config_build(const char *name, const char *cgroup,
					struct json_object *spec, struct json_object *image_config,
					const struct bundle_defaults *defaults, struct kerr *err);
void bundle_netns_set(struct json_object *cfg, char *path);
void bundle_resolv_set(struct json_object *cfg, char *file);

/* seccomp.c */
struct json_object *seccomp_profile_build(void);

/* netport.c */
int netport_vm_prepare(struct json_object *nics, struct kerr *err);
void netport_vm_remove(struct json_object *nics);
bool netport_ctr_networked(struct json_object *nics);
int netport_ctr_prepare(const char *dir, struct json_object *nics, unsigned userns_base,
			struct kerr *err);
char *netport_ctr_netns(const char *dir, struct json_object *nics);
void netport_ctr_remove(const char *dir);
int netport_ctr_resolv(const char *dir, struct json_object *nics, char **path, struct kerr *err);

/* shim.c */
int shim_main(const char *dir);

/* heartbeat.c */
int heartbeat_start(struct agent *a, struct kerr *err);
void heartbeat_stop(struct agent *a);
void heartbeat_kick(struct agent *a);
void heartbeat_send(struct agent *a, struct json_object *facts);

/* console.c */
int console_input_query(struct agent *a, struct json_object *body, struct json_object **answer,
			struct kerr *err);
int console_watch_query(struct agent *a, struct json_object *body, struct json_object **answer,
			struct kerr *err);
void console_watches_expire(struct agent *a);
void console_relays_resume(struct agent *a);

/* vnc.c */
int vnc_query(struct agent *a, struct json_object *body, struct json_object **answer,
	      struct kerr *err);
void vnc_streams_expire(struct agent *a);
void vnc_streams_resume(struct agent *a);

/* usage.c */
void usage_annotate(struct agent *a, struct json_object *reports);
/* lease.c */
int lease_start(struct agent *a, struct kerr *err);
void lease_stop(struct agent *a);
void lease_startup_fence(struct agent *a);
bool lease_heartbeat_allowed(struct agent *a);

/* facts.c */
typedef void (*facts_done_cb)(struct agent *a, struct json_object *facts, void *data);
int facts_collect_start(struct agent *a, facts_done_cb cb, void *data, struct kerr *err);
struct json_object *facts_collect(const struct agent_config *cfg, bool kvm_usable,
				  int64_t started_us);
void facts_kvm_set(struct json_object *facts, bool kvm_usable);
void facts_accel_config(const char *mode);
void facts_pools_warn(const struct agent_config *cfg);

/* netsave.c: desired.json written on a thread of its own, newest last (see the file). */
struct netsave;
typedef void (*netsave_saved_fn)(struct netsave *s, uint64_t gen, struct json_object *doc, int ret,
				 const struct kerr *err);
struct netsave {
	uv_loop_t *loop;
	char path[PATH_MAX];
	netsave_saved_fn saved; /* on the loop, after each write, oldest first */
	void *owner;		/* the caller's */
	/* Writes path whole and durably; 0 or -errno. On the lane's thread. */
	int (*write)(const char *path, const char *text, size_t len);
	uint64_t gen;			 /* of the last document put */
	struct work_lane *lane;		 /* the thread the writes run on */
	bool writing;			 /* a write is on the lane */
	bool stopping;			 /* netsave_stop() was called */
	struct json_object *writing_doc; /* the document it writes */
	struct json_object *next_doc;	 /* the one to write after it, or NULL */
	uint64_t next_gen;		 /* next_doc's generation */
};
void netsave_init(struct netsave *s, uv_loop_t *loop, const char *path, netsave_saved_fn saved,
		  void *owner);
int netsave_write_file(const char *path, const char *text, size_t len);
uint64_t netsave_put(struct netsave *s, struct json_object *doc);
struct json_object *netsave_newest(const struct netsave *s, uint64_t *gen);
bool netsave_busy(const struct netsave *s);
void netsave_stop(struct netsave *s);
void netsave_close(struct netsave *s);

/* kvmprobe.c */
typedef void (*kvmprobe_cb)(struct agent *a, bool usable, void *data);
int kvmprobe_child_main(void);
int kvmprobe_request(struct agent *a, kvmprobe_cb cb, void *data, struct kerr *err);
void kvmprobe_stop(struct agent *a);

/* net.c */
int net_start(struct agent *a, struct kerr *err);
void net_stop(struct agent *a);
int net_desired_set(struct agent *a, const char *op, struct json_object *doc, struct kerr *err);
void net_status_add(struct agent *a, struct json_object *facts);
int net_port_attach(struct agent *a, const char *ifname, const char *bridge, int mtu,
		    struct kerr *err);

#endif
