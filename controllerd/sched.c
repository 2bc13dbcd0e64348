/*
 * sched.c - filter and score hosts for an instance.
 *
 * Filters, in the order an operator would check them: pinned host, online, not in
 * maintenance, hardware needs (nested virtualization needs a host where KVM really
 * runs guests and nesting is on), storage pool present, anti-affinity group not
 * already there, then capacity under the overcommit ratios. Scores: spread prefers
 * the host left with the most free capacity, pack the one left with the least.
 */
#include "scheduler.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

bool sched_host_fits(const struct sched_request *req, const struct sched_params *params,
		     const struct sched_host *h, char *reason, size_t len)
{
	/* Capacity in whole vCPUs and MiB: a fraction of either cannot be placed. */
	double cpu_cap = floor(h->cpus * params->cpu_ratio);
	double mem_cap = floor((double)h->memory_mb * params->mem_ratio);

	if (req->pin_host && strcmp(req->pin_host, h->name) != 0) {
		snprintf(reason, len, "the instance is pinned to host %s", req->pin_host);
		return false;
	}
	if (!h->online) {
		snprintf(reason, len, "host is offline");
		return false;
	}
	if (h->maintenance) {
		snprintf(reason, len, "host is in maintenance");
		return false;
	}
	if (req->nested && !(h->kvm_usable && h->nested)) {
		snprintf(reason, len, "nested virtualization needs KVM with nesting; host has %s",
			 h->kvm_usable ? "KVM without nesting" : "no usable KVM");
		return false;
	}
	if (req->needs_shared_pool && !h->shared_pool) {
		snprintf(reason, len, "host has no shared storage pool");
		return false;
	}
	if (req->needs_local_pool && !h->local_pool) {
		snprintf(reason, len, "host has no local storage pool");
		return false;
	}
	for (size_t i = 0; i < req->nnets; i++) {
		const struct sched_net *net = &req->nets[i];
		bool uplink = false;

		if (net->overlay && !h->vxlan) {
			snprintf(reason, len, "network %s is a VXLAN overlay; host has no VXLAN",
				 net->network);
			return false;
		}
		if (net->overlay)
			continue;
		for (size_t j = 0; j < net->nuplinks && !uplink; j++)
			uplink = strcmp(net->uplink_hosts[j], h->name) == 0;
		if (!uplink) {
			snprintf(reason, len, "bridge network %s has no uplink on this host",
				 net->network);
			return false;
		}
		if (net->vlan && !h->vlan_8021q) {
			snprintf(reason, len,
				 "network %s tags VLAN %d onto its uplink; host has no 802.1Q",
				 net->network, net->vlan);
			return false;
		}
	}
	if (req->anti_affinity) {
		for (size_t i = 0; i < h->ngroups; i++) {
			if (strcmp(h->groups[i], req->anti_affinity) == 0) {
				snprintf(reason, len,
					 "anti-affinity group %s already has an instance here",
					 req->anti_affinity);
				return false;
			}
		}
	}
	if (h->vcpus_used + req->vcpus > cpu_cap) {
		snprintf(reason, len, "not enough CPU: %d vCPUs wanted, %d of %.0f placed already",
			 req->vcpus, h->vcpus_used, cpu_cap);
		return false;
	}
	if ((double)(h->memory_used_mb + req->memory_mb) > mem_cap) {
		snprintf(reason, len,
			 "not enough memory: %lld MiB wanted, %lld of %.0f MiB placed already",
			 (long long)req->memory_mb, (long long)h->memory_used_mb, mem_cap);
		return false;
	}
	reason[0] = '\0';
	return true;
}

/* The share of capacity left free after placing req, 0..1, CPU and memory alike. */
static double free_after(const struct sched_request *req, const struct sched_params *params,
			 const struct sched_host *h)
{
	double cpu_cap = h->cpus * params->cpu_ratio;
	double mem_cap = (double)h->memory_mb * params->mem_ratio;
	double cpu_free = cpu_cap > 0 ? (cpu_cap - h->vcpus_used - req->vcpus) / cpu_cap : 0;
	double mem_free =
		mem_cap > 0 ? (mem_cap - (double)(h->memory_used_mb + req->memory_mb)) / mem_cap
			    : 0;

	return (cpu_free + mem_free) / 2;
}

/* Does host a (score sa) beat host b (score sb)? Score, then instance count, then name. */
static bool better(const struct sched_params *params, const struct sched_host *a, double sa,
		   const struct sched_host *b, double sb)
{
	if (sa > sb + 1e-9)
		return true;
	if (sa < sb - 1e-9)
		return false;
	if (a->instances != b->instances)
		return params->policy == SCHED_SPREAD ? a->instances < b->instances
						      : a->instances > b->instances;
	return strcmp(a->name, b->name) < 0;
}

int sched_place(const struct sched_request *req, const struct sched_params *params,
		const struct sched_host *hosts, size_t n, struct sched_verdict *verdicts)
{
	int best = -1;

	for (size_t i = 0; i < n; i++) {
		struct sched_verdict *v = &verdicts[i];
		double f;

		v->fits = sched_host_fits(req, params, &hosts[i], v->reason, sizeof(v->reason));
		if (!v->fits) {
			v->score = 0;
			continue;
		}
		f = free_after(req, params, &hosts[i]);
		v->score = params->policy == SCHED_SPREAD ? f : 1 - f;
		if (best < 0 ||
		    better(params, &hosts[i], v->score, &hosts[best], verdicts[best].score))
			best = (int)i;
	}
	return best;
}
