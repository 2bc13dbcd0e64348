/*
 * migrate.h - what the two halves of the controller's migration code share:
 * migrate.c (live migration of VMs, the route, settling, cancel, evacuate) and
 * migrate_cold.c (a container's cold move). Nothing else includes it; the rest of
 * the controller sees migrations through controllerd.h.
 */
#ifndef KUMO_CONTROLLERD_MIGRATE_H
#define KUMO_CONTROLLERD_MIGRATE_H

#include "controllerd.h"
#include "valid.h"

enum migrate_phase {
	PHASE_PREPARE_TARGET,
	PHASE_PRECOPY,
	PHASE_SWITCHOVER,
	PHASE_CLEANUP,
	PHASE_STOP_SOURCE,  /* a container (cold): stopped and packed on the source */
	PHASE_START_TARGET, /* ... made, unpacked and started on the target */
};

/* One migration in flight: the parent operation and the child at work. */
struct migration {
	char id[LINK_OP_ID_MAX + 1];	/* the parent operation */
	char child[LINK_OP_ID_MAX + 1]; /* the agent command at work, "" none */
	char name[NAME_MAX_LEN + 1];
	int64_t iid;
	struct host *src, *dst;
	struct json_object *spec; /* the instance's, as the target gets it */
	struct json_object *args; /* the call's: downtime_ms, bandwidth_mbps, postcopy */
	struct json_object *result;
	enum migrate_phase phase;
	bool cancel;			       /* asked to cancel */
	bool wired;			       /* in temp.migrating (migrate_wired_set()) */
	bool net_wait;			       /* the target is ready; its networks are not yet */
	int64_t net_deadline;		       /* ms: then the copy starts anyway */
	int64_t net_lagging;		       /* host id the copy waits for, 0 unknown */
	char uri[96];			       /* where the target listens */
	char nbd_uri[96];		       /* ... and serves local disks, or "" */
	struct json_object *tls_in, *tls_out;  /* each end's certificates (PEM) */
	struct evacuation *evac;	       /* the evacuation it is part of, or NULL */
	char outcome[16];		       /* how it ended: succeeded, failed, cancelled */
	char failure[256];		       /* why it failed, for after the clean-up */
	struct host *child_host;	       /* where m->child runs */
	char postcopy[8];		       /* what the source may do: never, auto, always */
	bool postcopy_active;		       /* in post-copy: the guest runs on the target */
	bool lost;			       /* post-copy broke: the VM is lost */
	bool cold;			       /* a container: stop, move the layer, start */
	bool was_running;		       /* cold: it ran before the move */
	bool switched;			       /* cold: the target has it; the source's copy goes */
	bool rollback;			       /* cold: being started again on the source */
	bool settling;			       /* asking both ends where the VM is */
	bool prep_sent;			       /* migrate-prepare asked of the source */
	bool out_sent;			       /* migrate-out sent: the prepare is its */
	int settle_asked;		       /* migrate-state answers still due */
	int64_t settle_next;		       /* ms: the next round of questions */
	char settle_why[160];		       /* what made it settle */
	struct json_object *ans_src, *ans_dst; /* their answers this round */
	int64_t started_ms;
	int64_t mark_ms; /* when the phase being timed began (result.timings) */
	struct migration *next;
};

/* migrate.c */
void migrate_wired_set(struct migration *m, bool on);
void migrate_parent_update(struct migration *m, int progress);
void migrate_finish(struct migration *m, const char *status, const char *error);
void migrate_child_start(struct migration *m, struct host *h, const char *kind, const char *action,
			 struct json_object *args);

/* migrate_cold.c */
int migrate_cold_done(struct migration *m, struct host *h, const char *kind, bool ok,
		      struct json_object *result, const char *error);
void migrate_cold_rollback(struct migration *m, const char *why);
void migrate_cold_settle(struct migration *m);

#endif
