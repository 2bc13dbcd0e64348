/*
 * scheduler.h - the scheduler: which host an instance runs on. Pure logic over plain
 * structs (no database, no loop), so it is unit-tested on clusters of hundreds of
 * hosts. Filter, then score.
 *
 * A placement scans every host once, with no text made on the way: rejections are
 * counted per reason, and only the first few rejected hosts and the best few
 * candidates are remembered, so the explanation of a placement on 5,000 hosts stays
 * a few lines (the reasons' text is made for those few, by sched_host_fits()).
 */
#ifndef KUMO_SCHEDULER_H
#define KUMO_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum sched_policy {
	SCHED_SPREAD,
	SCHED_PACK
};

/* One host as the scheduler sees it: capacity, capabilities, what is placed there. */
struct sched_host {
	const char *name;
	bool online;
	bool maintenance;
	int cpus;
	int64_t memory_mb;
	bool kvm_usable;
	bool nested;
	bool shared_pool;
	bool local_pool;
	bool vxlan;	 /* can carry overlay networks */
	bool vlan_8021q; /* can tag VLANs onto an uplink */
	int vcpus_used;
	int64_t memory_used_mb;
	int instances;		   /* placed here, of any size: breaks ties between equal scores */
	const char *const *groups; /* anti-affinity groups with an instance here */
	size_t ngroups;
};

/* A network one of the instance's NICs attaches to, and what it asks of a host. */
struct sched_net {
	const char *network;
	int vlan;			 /* 0: untagged */
	bool overlay;			 /* VXLAN (nat, host-only); else bridged onto an uplink */
	const char *const *uplink_hosts; /* bridge mode: the hosts that have an uplink */
	size_t nuplinks;
};

struct sched_request {
	int vcpus;
	int64_t memory_mb; /* the most the instance may use (max_mb for dynamic memory) */
	bool nested;	   /* needs hardware virtualization inside the guest */
	bool needs_shared_pool;
	bool needs_local_pool;
	const char *pin_host;	   /* NULL: any host */
	const char *anti_affinity; /* NULL: no group */
	const struct sched_net *nets;
	size_t nnets;
};

struct sched_params {
	double cpu_ratio; /* vCPUs per host CPU */
	double mem_ratio; /* guest MiB per host MiB */
	enum sched_policy policy;
};

/* Why a host cannot take the instance: the filters, in the order they are checked. */
enum sched_reject {
	SCHED_FITS,
	SCHED_PINNED_ELSEWHERE,
	SCHED_OFFLINE,
	SCHED_MAINTENANCE,
	SCHED_NO_NESTED,
	SCHED_NO_SHARED_POOL,
	SCHED_NO_LOCAL_POOL,
	SCHED_NO_VXLAN,
	SCHED_NO_UPLINK,
	SCHED_NO_8021Q,
	SCHED_ANTI_AFFINITY,
	SCHED_NO_CPU,
	SCHED_NO_MEMORY,
	SCHED_REJECT_COUNT,
};

#define SCHED_NAMED_MAX 5 /* rejected hosts an outcome names */
#define SCHED_TOP_MAX	5 /* candidates an outcome keeps, best first */

/* What a placement found: the choice, counts, and a bounded explanation. */
struct sched_outcome {
	int best;				/* index of the chosen host, -1: none fits */
	size_t nfit, nrejected;			/* of the n hosts */
	size_t rejected_by[SCHED_REJECT_COUNT]; /* hosts per reason ([SCHED_FITS] is 0) */
	size_t named[SCHED_NAMED_MAX];		/* the first rejected hosts, in host order */
	size_t nnamed;
	size_t top[SCHED_TOP_MAX]; /* the best candidates, best first (top[0] == best) */
	double top_score[SCHED_TOP_MAX];
	size_t ntop;
};

/*
 * Judge every host for req and choose one; out says what was found. Returns the
 * chosen host's index (out->best), or -1 when none fits. Equal scores (say,
 * containers without limits, which reserve nothing) go to the host with the fewest
 * instances under spread and the most under pack, then to the host whose name sorts
 * first, so placement is deterministic and spread really spreads.
 */
int sched_place(const struct sched_request *req, const struct sched_params *params,
		const struct sched_host *hosts, size_t n, struct sched_outcome *out);

/* Only the filters, for one host: true when req fits, else reason says why. */
bool sched_host_fits(const struct sched_request *req, const struct sched_params *params,
		     const struct sched_host *host, char *reason, size_t reasonlen);

/* The filters without the text: SCHED_FITS or the first filter the host fails. */
enum sched_reject sched_host_check(const struct sched_request *req,
				   const struct sched_params *params,
				   const struct sched_host *host);

/* The score a host that fits would get (higher is better). */
double sched_host_score(const struct sched_request *req, const struct sched_params *params,
			const struct sched_host *host);

/* A short name for a reason, as the explanation counts them ("offline", "cpu"). */
const char *sched_reject_name(enum sched_reject why);

#endif
