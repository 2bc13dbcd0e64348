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

static const char *const reject_names[SCHED_REJECT_COUNT] = {
	[SCHED_FITS] = "fits",
	[SCHED_PINNED_ELSEWHERE] = "pinned elsewhere",
	[SCHED_OFFLINE] = "offline",
	[SCHED_MAINTENANCE] = "maintenance",
	[SCHED_NO_NESTED] = "no nested virtualization",
	[SCHED_NO_SHARED_POOL] = "no shared pool",
	[SCHED_NO_LOCAL_POOL] = "no local pool",
	[SCHED_NO_VXLAN] = "no VXLAN",
	[SCHED_NO_UPLINK] = "no uplink",
	[SCHED_NO_8021Q] = "no 802.1Q",
	[SCHED_ANTI_AFFINITY] = "anti-affinity",
	[SCHED_NO_CPU] = "not enough CPU",
	[SCHED_NO_MEMORY] = "not enough memory",
};

const char *sched_reject_name(enum sched_reject why)
{
	return (unsigned)why < SCHED_REJECT_COUNT ? reject_names[why] : "?";
}

/* The first of req's networks h cannot carry, and why; SCHED_FITS when none. */
static enum sched_reject nets_check(const struct sched_request *req, const struct sched_host *h,
				    size_t *which)
{
	for (size_t i = 0; i < req->nnets; i++) {
		const struct sched_net *net = &req->nets[i];
		bool uplink = false;

		*which = i;
		if (net->overlay && !h->vxlan)
			return SCHED_NO_VXLAN;
		if (net->overlay)
			continue;
		for (size_t j = 0; j < net->nuplinks && !uplink; j++)
			uplink = strcmp(net->uplink_hosts[j], h->name) == 0;
		if (!uplink)
			return SCHED_NO_UPLINK;
		if (net->vlan && !h->vlan_8021q)
			return SCHED_NO_8021Q;
	}
	return SCHED_FITS;
}

/* The filters; inlined into the scan of sched_place(), which runs it for every host. */
static inline enum sched_reject check(const struct sched_request *req,
				      const struct sched_params *params, const struct sched_host *h)
{
	enum sched_reject why;
	size_t which;

	if (req->pin_host && strcmp(req->pin_host, h->name) != 0)
		return SCHED_PINNED_ELSEWHERE;
	if (!h->online)
		return SCHED_OFFLINE;
	if (h->maintenance)
		return SCHED_MAINTENANCE;
	if (req->nested && !(h->kvm_usable && h->nested))
		return SCHED_NO_NESTED;
	if (req->needs_shared_pool && !h->shared_pool)
		return SCHED_NO_SHARED_POOL;
	if (req->needs_local_pool && !h->local_pool)
		return SCHED_NO_LOCAL_POOL;
	if (req->nnets && (why = nets_check(req, h, &which)) != SCHED_FITS)
		return why;
	if (req->anti_affinity)
		for (size_t i = 0; i < h->ngroups; i++)
			if (strcmp(h->groups[i], req->anti_affinity) == 0)
				return SCHED_ANTI_AFFINITY;
	/* Capacity in whole vCPUs and MiB: a fraction of either cannot be placed. For a
	 * whole number k, k > floor(x) exactly when k > x, so no floor() per host here. */
	if (h->vcpus_used + req->vcpus > h->cpus * params->cpu_ratio)
		return SCHED_NO_CPU;
	if ((double)(h->memory_used_mb + req->memory_mb) > (double)h->memory_mb * params->mem_ratio)
		return SCHED_NO_MEMORY;
	return SCHED_FITS;
}

enum sched_reject sched_host_check(const struct sched_request *req,
				   const struct sched_params *params, const struct sched_host *h)
{
	return check(req, params, h);
}

bool sched_host_fits(const struct sched_request *req, const struct sched_params *params,
		     const struct sched_host *h, char *reason, size_t len)
{
	enum sched_reject why = sched_host_check(req, params, h);
	const struct sched_net *net = NULL;
	size_t which = 0;

	if (why == SCHED_NO_VXLAN || why == SCHED_NO_UPLINK || why == SCHED_NO_8021Q) {
		nets_check(req, h, &which);
		net = &req->nets[which];
	}
	switch (why) {
	case SCHED_FITS:
		reason[0] = '\0';
		return true;
	case SCHED_PINNED_ELSEWHERE:
		snprintf(reason, len, "the instance is pinned to host %s", req->pin_host);
		break;
	case SCHED_OFFLINE:
		snprintf(reason, len, "host is offline");
		break;
	case SCHED_MAINTENANCE:
		snprintf(reason, len, "host is in maintenance");
		break;
	case SCHED_NO_NESTED:
		snprintf(reason, len, "nested virtualization needs KVM with nesting; host has %s",
			 h->kvm_usable ? "KVM without nesting" : "no usable KVM");
		break;
	case SCHED_NO_SHARED_POOL:
		snprintf(reason, len, "host has no shared storage pool");
		break;
	case SCHED_NO_LOCAL_POOL:
		snprintf(reason, len, "host has no local storage pool");
		break;
	case SCHED_NO_VXLAN:
		snprintf(reason, len, "network %s is a VXLAN overlay; host has no VXLAN",
			 net->network);
		break;
	case SCHED_NO_UPLINK:
		snprintf(reason, len, "bridge network %s has no uplink on this host", net->network);
		break;
	case SCHED_NO_8021Q:
		snprintf(reason, len, "network %s tags VLAN %d onto its uplink; host has no 802.1Q",
			 net->network, net->vlan);
		break;
	case SCHED_ANTI_AFFINITY:
		snprintf(reason, len, "anti-affinity group %s already has an instance here",
			 req->anti_affinity);
		break;
	case SCHED_NO_CPU:
		snprintf(reason, len, "not enough CPU: %d vCPUs wanted, %d of %.0f placed already",
			 req->vcpus, h->vcpus_used, floor(h->cpus * params->cpu_ratio));
		break;
	case SCHED_NO_MEMORY:
		snprintf(reason, len,
			 "not enough memory: %lld MiB wanted, %lld of %.0f MiB placed already",
			 (long long)req->memory_mb, (long long)h->memory_used_mb,
			 floor((double)h->memory_mb * params->mem_ratio));
		break;
	case SCHED_REJECT_COUNT:
		break;
	}
	return false;
}

/* The share of capacity left free after placing req, 0..1, CPU and memory alike. */
static inline double free_after(const struct sched_request *req, const struct sched_params *params,
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

double sched_host_score(const struct sched_request *req, const struct sched_params *params,
			const struct sched_host *h)
{
	double f = free_after(req, params, h);

	return params->policy == SCHED_SPREAD ? f : 1 - f;
}

/* Would a rank before b if their scores were equal? ranks_before()'s tie-break. */
static inline bool tie_wins(const struct sched_params *params, const struct sched_host *a,
			    const struct sched_host *b)
{
	if (a->instances != b->instances)
		return params->policy == SCHED_SPREAD ? a->instances < b->instances
						      : a->instances > b->instances;
	return strcmp(a->name, b->name) < 0;
}

/*
 * Does host a (score sa) rank before host b (score sb)? Score; on equal scores (say,
 * containers without limits, which reserve nothing) fewer instances under spread and
 * more under pack; then the name. The one order for the choice and the few kept.
 */
static bool ranks_before(const struct sched_params *params, const struct sched_host *a, double sa,
			 const struct sched_host *b, double sb)
{
	if (sa > sb + 1e-9)
		return true;
	if (sa < sb - 1e-9)
		return false;
	return tie_wins(params, a, b);
}

/* Keep host i among the outcome's best few candidates, best first. */
static void top_keep(struct sched_outcome *out, const struct sched_params *params,
		     const struct sched_host *hosts, size_t i, double score)
{
	size_t k = out->ntop;

	if (k == SCHED_TOP_MAX) {
		if (!ranks_before(params, &hosts[i], score, &hosts[out->top[k - 1]],
				  out->top_score[k - 1]))
			return;
		k--;
	} else {
		out->ntop++;
	}
	for (; k > 0 && ranks_before(params, &hosts[i], score, &hosts[out->top[k - 1]],
				     out->top_score[k - 1]);
	     k--) {
		out->top[k] = out->top[k - 1];
		out->top_score[k] = out->top_score[k - 1];
	}
	out->top[k] = i;
	out->top_score[k] = score;
}

/* The filters of the simple scan, by bit. */
static const enum sched_reject simple_reasons[] = {
	SCHED_OFFLINE,	     SCHED_MAINTENANCE, SCHED_NO_SHARED_POOL,
	SCHED_NO_LOCAL_POOL, SCHED_NO_CPU,	SCHED_NO_MEMORY,
};

/*
 * The scan of sched_place(), inlined twice: once for any request, once (simple) for
 * the common one that names no host, group, network or nesting, where the filters
 * are the host's state, its pools and its capacity. The simple loop keeps the
 * capacity it computed for the cheap test below instead of computing it again; both give the same
 * verdicts, counts and scores as check() and free_after().
 */
static inline __attribute__((always_inline)) void scan(const struct sched_request *req,
						       const struct sched_params *params,
						       const struct sched_host *hosts, size_t n,
						       struct sched_outcome *out, bool simple)
{
	/* Copied out of req and params: the stores into out could alias them, so the
	 * compiler would read them again for every host. */
	const double cpu_ratio = params->cpu_ratio, mem_ratio = params->mem_ratio;
	const bool spread = params->policy == SCHED_SPREAD;
	const int vcpus = req->vcpus;
	const int64_t memory_mb = req->memory_mb;
	const bool shared_pool = req->needs_shared_pool, local_pool = req->needs_local_pool;
	/* Once SCHED_TOP_MAX candidates are kept (full), the last one's score less a
	 * margin (floor), and plus ranks_before()'s tie margin less the rounding that
	 * separates num / den below from free_after() (ceil). */
	double floor_score = 0, ceil_score = 0;
	size_t rejected_by[SCHED_REJECT_COUNT] = {0}, nfit = 0, nrejected = 0;
	bool full = false;

	for (size_t i = 0; i < n; i++) {
		const struct sched_host *h = &hosts[i];
		enum sched_reject why = SCHED_FITS;
		double cpu_cap, mem_cap, cpu_want, mem_want, num, den;
		double score;

		cpu_cap = h->cpus * cpu_ratio;
		mem_cap = (double)h->memory_mb * mem_ratio;
		cpu_want = h->vcpus_used + vcpus;
		mem_want = (double)(h->memory_used_mb + memory_mb);
		if (simple) {
			/* check() for a request that names nothing: every filter at once, one
			 * bit each in check()'s order, so a host costs one branch, and the
			 * lowest bit set is the reason check() would give. */
			unsigned bits = (unsigned)!h->online | (unsigned)h->maintenance << 1 |
					(unsigned)(shared_pool && !h->shared_pool) << 2 |
					(unsigned)(local_pool && !h->local_pool) << 3 |
					(unsigned)(cpu_want > cpu_cap) << 4 |
					(unsigned)(mem_want > mem_cap) << 5;

			if (bits)
				why = simple_reasons[__builtin_ctz(bits)];
		} else {
			why = check(req, params, h);
		}
		if (__builtin_expect(why != SCHED_FITS, 0)) {
			rejected_by[why]++;
			if (nrejected++ < SCHED_NAMED_MAX)
				out->named[out->nnamed++] = i;
			continue;
		}
		nfit++;
		if (full && cpu_cap > 0 && mem_cap > 0) {
			/* Most hosts cannot come near the last kept. The score, free_after()
			 * (or 1 minus it), is a sum of two quotients, num / den below: compared
			 * multiplied out it needs no division, and floor carries a margin well
			 * above the rounding between the two forms, so no host that could rank
			 * is passed over. */
			num = (cpu_cap - cpu_want) * mem_cap + (mem_cap - mem_want) * cpu_cap;
			den = 2 * cpu_cap * mem_cap;
			if (__builtin_expect(spread ? num < den * floor_score
						    : num > den * (1 - floor_score),
					     1))
				continue;
			/* Near the last kept: on a cluster of like hosts, hundreds tie with it.
			 * One that would lose the tie gets in only with a score clearly above
			 * it (ranks_before()), so the tie is settled before the divisions. */
			if (!tie_wins(params, h, &hosts[out->top[SCHED_TOP_MAX - 1]]) &&
			    (spread ? num < den * ceil_score : num > den * (1 - ceil_score)))
				continue;
		}
		score = free_after(req, params, h);
		if (!spread)
			score = 1 - score;
		/* The best host is the first kept (top_keep() ranks with ranks_before()). */
		if (!full || score > out->top_score[SCHED_TOP_MAX - 1] - 1e-9) {
			top_keep(out, params, hosts, i, score);
			full = out->ntop == SCHED_TOP_MAX;
			if (full) {
				floor_score = out->top_score[SCHED_TOP_MAX - 1] - 1e-8;
				ceil_score = out->top_score[SCHED_TOP_MAX - 1] + 1e-9 - 1e-12;
			}
		}
	}
	memcpy(out->rejected_by, rejected_by, sizeof(rejected_by));
	out->nfit = nfit;
	out->nrejected = nrejected;
}

int sched_place(const struct sched_request *req, const struct sched_params *params,
		const struct sched_host *hosts, size_t n, struct sched_outcome *out)
{
	memset(out, 0, sizeof(*out));
	if (req->pin_host == NULL && !req->nested && req->nnets == 0 && req->anti_affinity == NULL)
		scan(req, params, hosts, n, out, true);
	else
		scan(req, params, hosts, n, out, false);
	out->best = out->ntop ? (int)out->top[0] : -1;
	return out->best;
}
