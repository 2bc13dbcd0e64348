/*
 * scheduler.h - the scheduler: which host an instance runs on. Pure logic over plain
 * structs (no database, no loop), so it is unit-tested on clusters of hundreds of
 * hosts. Filter, then score; every rejected host keeps its reason.
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

/* The verdict on one host: it fits with a score, or it does not, and why. */
struct sched_verdict {
	bool fits;
	double score; /* higher is better */
	char reason[160];
};

/*
 * Judge every host for req and choose one. verdicts has n entries, filled in host
 * order. Returns the chosen host's index, or -1 when none fits. Equal scores (say,
 * containers without limits, which reserve nothing) go to the host with the fewest
 * instances under spread and the most under pack, then to the host whose name sorts
 * first, so placement is deterministic and spread really spreads.
 */
int sched_place(const struct sched_request *req, const struct sched_params *params,
		const struct sched_host *hosts, size_t n, struct sched_verdict *verdicts);

/* Only the filters, for one host: true when req fits, else reason says why. */
bool sched_host_fits(const struct sched_request *req, const struct sched_params *params,
		     const struct sched_host *host, char *reason, size_t reasonlen);

#endif
