/*
 * migrate.h - what agentd/migrate.c (a VM's live migration) and agentd/migrate_disk.c
 * (its local disks: NBD server and mirrors) share. Nothing else includes it; the rest
 * of the agent sees migrations through agentd.h.
 */
#ifndef KUMO_AGENTD_MIGRATE_H
#define KUMO_AGENTD_MIGRATE_H

#include "agentd.h"

#define MIGRATE_POLL_MS	       250   /* query-migrate while a migration runs (progress) */
#define MIGRATE_REPORT_MS      1000  /* op-progress at most this often */
#define MIGRATE_BANDWIDTH_MBPS 8000  /* QEMU 7.2's 128 MiB/s default never converges */
#define MIGRATE_DOWNTIME_MS    100   /* QEMU's default is 300; the goal here is 100 */
#define MIGRATE_QMP_TIMEOUT_MS 30000 /* a just-started QEMU on a loaded host is slow */
#define MIGRATE_LADDER_K       4     /* non-converging pre-copy iterations before post-copy */
/* QEMU 7.2 says completed (and sends its event) before it has counted downtime and
 * total-time: a completed answer without them is asked again this soon, this often. */
#define MIGRATE_COUNTED_POLL_MS 5
#define MIGRATE_COUNTED_POLLS	10

/*
 * The escalation ladder of one outgoing migration (migrate_ladder.c, pure): what the
 * source does next, decided from query-migrate's statistics each poll.
 */
enum ladder_move {
	LADDER_STAY,	 /* go on as now */
	LADDER_POSTCOPY, /* send migrate-start-postcopy now */
};

struct ladder {
	bool kvm;		/* KVM guest (pre-copy first); TCG: post-copy at once */
	bool postcopy_allowed;	/* the target has the grant and the call did not say never */
	bool postcopy_always;	/* the call said always: after the first pass */
	bool postcopy_started;	/* migrate-start-postcopy was sent */
	bool throttled;		/* QEMU's auto-converge slowed the vCPUs down */
	int64_t last_iteration; /* dirty-sync-count at the last poll */
	int64_t last_remaining; /* ram remaining then */
	int stalled;		/* iterations in a row that did not converge */
};

/* What query-migrate said at one poll, as migrate_ladder_next() reads it. */
struct ladder_stats {
	int64_t iterations; /* ram.dirty-sync-count */
	int64_t remaining;  /* ram.remaining, bytes */
	int64_t dirty_pps;  /* ram.dirty-pages-rate */
	int64_t page_size;  /* ram.page-size */
	double mbps;	    /* ram.mbps: the copy's measured rate */
	int throttle_pct;   /* cpu-throttle-percentage */
};

/* One migrate-out at work (a VM leaves this host). */
struct outgoing {
	struct inst_op *op;
	struct vm *vm;
	uv_timer_t timer;
	int64_t started_ms;
	int64_t reported_ms;
	int64_t paused_at_ms; /* pause-then-migrate: when the guest stopped, else 0 */
	char strategy[24];    /* "precopy", "postcopy" or "pause-then-migrate" */
	struct ladder ladder; /* when pre-copy escalates (migrate_ladder.c) */
	bool in_postcopy;     /* QEMU said postcopy-active: the guest runs on the target */
	bool lost;	      /* post-copy broke: neither end holds the whole guest */
	bool cancel;	      /* the controller asked to cancel */
	bool polling;	      /* a query-migrate is in flight */
	bool copying;	      /* QEMU's migrate answered: the poll loop owns o->timer */
	bool poll_soon;	      /* a MIGRATION event came: the next poll goes at once */
	bool finished;
	struct json_object *stats;   /* the last "migration" object */
	struct json_object *timings; /* step -> ms since the command came (migrate_out_mark()) */
	int polls;		     /* query-migrate calls so far */
	int counted_polls;	     /* after completed, until QEMU counted its times */
	/* Local disks: mirrored to the target's NBD server before the memory moves. */
	bool mirrored[AGENT_VM_DISKS_MAX]; /* job kumo-mirror-dI and node kumo-nbd-dI */
	bool node_added[AGENT_VM_DISKS_MAX];
	size_t mirror_next;    /* the disk whose mirror starts next */
	bool mirrors_ready;    /* every mirror in sync: the memory may move */
	bool mirrors_stopping; /* being cancelled: then after_mirrors() */
	int mirror_polls;      /* query-block-jobs since the stop */
	void (*after_mirrors)(struct outgoing *o);
	int64_t disk_total, disk_remaining;
	struct json_object *done_ret; /* query-migrate's "completed", kept meanwhile */
	char fail_why[300];	      /* a failure waiting for the mirrors to stop */
	char stop_why[200];	      /* pause-then-migrate: why QEMU refused the stop */
	char migrate_unsent[200];     /* ... or why its migrate could not be sent after it */
	/* The source QEMU's tls-creds-x509 object for this migration: loaded by
	 * migrate-out itself, or beforehand by the controller's migrate-prepare. */
	char creds_id[64];
	bool creds_added;   /* QEMU holds it: object-del if the migration fails */
	bool caps_prepared; /* migrate-prepare set the capabilities, to caps_on */
	bool caps_on[3];
	struct outgoing *next;
};

/* How long a migrate-prepare's credentials wait in the source QEMU for their
 * migrate-out: longer than any target's preparation (the controller's deadline). */
#define MIGRATE_PREP_TTL_MS (5 * 60 * 1000)

/* migrate.c */
void migrate_creds_id(const struct inst_op *op, char *out, size_t len);
/* The directory in a VM's directory where an incoming QEMU's TLS credentials wait for
 * it to start (migrate.c's creds_write()); root's alone. */
#define MIGRATE_CREDS_DIR "migrate-tls"
/* Remove what an agent that died while a migration target started left there. */
void migrate_creds_sweep(const char *inst_dir);
void migrate_in_fail(struct inst_op *op, const char *why);
void migrate_incoming_send(struct inst_op *op);
bool migrate_outgoing_gone(struct outgoing *o);
void migrate_out_fail(struct outgoing *o, const char *prefix, const char *detail);
void migrate_progress_send(struct outgoing *o, const char *phase, int pct);
void migrate_memory_start(struct outgoing *o);
void migrate_out_mark(struct outgoing *o, const char *name);

/* migrate_ladder.c */
enum ladder_move migrate_ladder_next(struct ladder *l, const struct ladder_stats *s);
struct json_object *migrate_ladder_steps(const struct ladder *l);

/* migrate_disk.c */
bool migrate_disk_is_local(const struct agent *a, const struct vm_disk *d);
struct json_object *migrate_disk_backing(struct json_object *spec, size_t i);
size_t migrate_disks_plan(struct inst_op *op, struct vm_disk *fresh, const char **images);
void migrate_disks_make(struct inst_op *op, op_step_fn then);
void migrate_nbd_start(struct inst_op *op);
bool migrate_mirrors_any(const struct outgoing *o);
void migrate_mirror_next(struct outgoing *o);
void migrate_mirrors_stop(struct outgoing *o, bool force, void (*then)(struct outgoing *o));
void migrate_mirrors_sweep(struct vm *vm);

#endif
