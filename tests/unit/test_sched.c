/*
 * test_sched.c - the scheduler: each filter and its reason, spread and pack on
 * clusters of hundreds of hosts against a brute-force answer, ties, anti-affinity,
 * pinning, and the bounded explanation a placement gives: counts per reason, the first
 * few rejected hosts named, the best few candidates (controllerd/sched.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

#define MAX_GROUPS 8

/* A host that passes every filter for base_req(): online, KVM with nesting, both pools. */
static struct sched_host base_host(const char *name)
{
	struct sched_host h = {
		.name = name,
		.online = true,
		.maintenance = false,
		.cpus = 16,
		.memory_mb = 65536,
		.kvm_usable = true,
		.nested = true,
		.shared_pool = true,
		.local_pool = true,
		.vxlan = true,
		.vlan_8021q = true,
		.vcpus_used = 0,
		.memory_used_mb = 0,
		.groups = NULL,
		.ngroups = 0,
	};

	return h;
}

static struct sched_request base_req(void)
{
	struct sched_request r = {
		.vcpus = 2,
		.memory_mb = 2048,
		.nested = false,
		.needs_shared_pool = false,
		.needs_local_pool = false,
		.pin_host = NULL,
		.anti_affinity = NULL,
	};

	return r;
}

static struct sched_params params(double cpu_ratio, double mem_ratio, enum sched_policy policy)
{
	struct sched_params p = {.cpu_ratio = cpu_ratio, .mem_ratio = mem_ratio, .policy = policy};

	return p;
}

/* The verdict on one host, as the tests judge it: sched_place() itself keeps only
 * counts and a few names; place() fills these from the per-host functions. */
struct sched_verdict {
	bool fits;
	double score; /* higher is better; 0 when it does not fit */
	char reason[160];
};

/*
 * sched_place() with every host's verdict made one by one (sched_host_fits(),
 * sched_host_score()), after checking that the bounded outcome agrees with them: each
 * reason's count, the first rejected hosts in order, the best candidates in rank
 * order with the choice first.
 */
static int place(const struct sched_request *req, const struct sched_params *p,
		 const struct sched_host *hosts, size_t n, struct sched_verdict *verdicts)
{
	size_t by[SCHED_REJECT_COUNT] = {0}, nfit = 0, nrej = 0, named = 0;
	struct sched_outcome out;
	int best;

	memset(&out, 0xa5, sizeof(out));
	best = sched_place(req, p, hosts, n, &out);
	assert_int_equal(best, out.best);
	for (size_t i = 0; i < n; i++) {
		struct sched_verdict *v = &verdicts[i];
		enum sched_reject why = sched_host_check(req, p, &hosts[i]);

		v->fits = sched_host_fits(req, p, &hosts[i], v->reason, sizeof(v->reason));
		assert_int_equal(v->fits, why == SCHED_FITS);
		v->score = v->fits ? sched_host_score(req, p, &hosts[i]) : 0;
		if (v->fits) {
			nfit++;
			continue;
		}
		by[why]++;
		if (nrej++ < SCHED_NAMED_MAX) {
			assert_int_equal(out.named[named], i);
			named++;
		}
	}
	assert_int_equal(out.nfit, nfit);
	assert_int_equal(out.nrejected, nrej);
	assert_int_equal(out.nnamed, named);
	for (int why = 0; why < SCHED_REJECT_COUNT; why++)
		assert_int_equal(out.rejected_by[why], by[why]);
	assert_int_equal(out.ntop, nfit < SCHED_TOP_MAX ? nfit : SCHED_TOP_MAX);
	if (best >= 0)
		assert_int_equal(out.top[0], best);
	for (size_t k = 0; k < out.ntop; k++) {
		assert_true(verdicts[out.top[k]].fits);
		assert_true(out.top_score[k] == verdicts[out.top[k]].score);
		if (k > 0)
			assert_true(out.top_score[k] <= out.top_score[k - 1] + 1e-9);
	}
	/* No host left out of the few kept ranks above the last of them. */
	for (size_t i = 0; out.ntop == SCHED_TOP_MAX && i < n; i++) {
		bool kept = false;

		for (size_t k = 0; k < out.ntop; k++)
			kept |= out.top[k] == i;
		if (verdicts[i].fits && !kept)
			assert_true(verdicts[i].score <= out.top_score[SCHED_TOP_MAX - 1] + 1e-9);
	}
	return best;
}

/* Fill verdicts with garbage, so a verdict sched_place leaves alone shows up. */
static void scribble(struct sched_verdict *v, size_t n)
{
	memset(v, 0xa5, n * sizeof(*v));
	for (size_t i = 0; i < n; i++) {
		v[i].fits = true;
		v[i].score = -42;
		v[i].reason[sizeof(v[i].reason) - 1] = '\0';
	}
}

/* Judge one host alone, both through sched_host_fits and through sched_place. */
static bool judge(const struct sched_request *req, const struct sched_params *p,
		  const struct sched_host *h, char *reason, size_t len)
{
	struct sched_verdict v;
	bool fits;
	int idx;

	memset(reason, 'x', len - 1);
	reason[len - 1] = '\0';
	fits = sched_host_fits(req, p, h, reason, len);
	scribble(&v, 1);
	idx = place(req, p, h, 1, &v);
	assert_int_equal(v.fits, fits);
	assert_string_equal(v.reason, reason);
	assert_int_equal(idx, fits ? 0 : -1);
	if (fits)
		assert_string_equal(reason, "");
	else
		assert_true(v.score == 0);
	return fits;
}

/* The host rejects req with exactly this reason. */
static void expect_reject(const struct sched_request *req, const struct sched_params *p,
			  const struct sched_host *h, const char *want)
{
	char reason[160];

	if (judge(req, p, h, reason, sizeof(reason)))
		fail_msg("host %s fits, expected \"%s\"", h->name, want);
	assert_string_equal(reason, want);
}

static void expect_fit(const struct sched_request *req, const struct sched_params *p,
		       const struct sched_host *h)
{
	char reason[160];

	if (!judge(req, p, h, reason, sizeof(reason)))
		fail_msg("host %s refused: %s", h->name, reason);
}

static void test_base_host_fits(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);

	/* Everything asked for, all at once, on the full-featured host. */
	r.nested = true;
	r.needs_shared_pool = true;
	r.needs_local_pool = true;
	r.pin_host = "h1";
	r.anti_affinity = "web";
	expect_fit(&r, &p, &h);
}

static void test_filter_pinned_elsewhere(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);

	r.pin_host = "h2";
	expect_reject(&r, &p, &h, "the instance is pinned to host h2");
	/* A prefix of the name is another host. */
	r.pin_host = "h";
	expect_reject(&r, &p, &h, "the instance is pinned to host h");
	r.pin_host = "h1";
	expect_fit(&r, &p, &h);
}

static void test_filter_offline(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);

	h.online = false;
	expect_reject(&r, &p, &h, "host is offline");
}

static void test_filter_maintenance(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_PACK);

	h.maintenance = true;
	expect_reject(&r, &p, &h, "host is in maintenance");
}

static void test_filter_nested(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);

	r.nested = true;
	/* KVM works but nesting is off. */
	h.kvm_usable = true;
	h.nested = false;
	expect_reject(&r, &p, &h,
		      "nested virtualization needs KVM with nesting; host has KVM without nesting");
	/* Nesting is on but KVM cannot run guests: still no. */
	h.kvm_usable = false;
	h.nested = true;
	expect_reject(&r, &p, &h,
		      "nested virtualization needs KVM with nesting; host has no usable KVM");
	h.kvm_usable = false;
	h.nested = false;
	expect_reject(&r, &p, &h,
		      "nested virtualization needs KVM with nesting; host has no usable KVM");
	h.kvm_usable = true;
	h.nested = true;
	expect_fit(&r, &p, &h);

	/* An instance that does not need nesting does not care. */
	r.nested = false;
	h.kvm_usable = false;
	h.nested = false;
	expect_fit(&r, &p, &h);
}

static void test_filter_shared_pool(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);

	h.shared_pool = false;
	expect_fit(&r, &p, &h);
	r.needs_shared_pool = true;
	expect_reject(&r, &p, &h, "host has no shared storage pool");
	/* A local pool is no substitute. */
	h.local_pool = true;
	expect_reject(&r, &p, &h, "host has no shared storage pool");
}

static void test_filter_local_pool(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);

	h.local_pool = false;
	expect_fit(&r, &p, &h);
	r.needs_local_pool = true;
	expect_reject(&r, &p, &h, "host has no local storage pool");
	/* A shared pool is no substitute. */
	h.shared_pool = true;
	expect_reject(&r, &p, &h, "host has no local storage pool");
}

static void test_filter_networks(void **state)
{
	static const char *const uplinked[] = {"h2", "h1"};
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);
	struct sched_net nets[2] = {
		{.network = "lan", .vlan = 100, .overlay = true},
		{.network = "phys",
		 .vlan = 0,
		 .overlay = false,
		 .uplink_hosts = uplinked,
		 .nuplinks = 2},
	};

	r.nets = nets;
	r.nnets = 2;
	expect_fit(&r, &p, &h);
	/* An overlay needs VXLAN; a VLAN inside an overlay needs no 802.1Q. */
	h.vlan_8021q = false;
	expect_fit(&r, &p, &h);
	h.vxlan = false;
	expect_reject(&r, &p, &h, "network lan is a VXLAN overlay; host has no VXLAN");
	h.vxlan = true;
	/* Bridge mode: only hosts with an uplink, and a VLAN on it needs 802.1Q. */
	nets[1].nuplinks = 1;
	expect_reject(&r, &p, &h, "bridge network phys has no uplink on this host");
	nets[1].nuplinks = 2;
	nets[1].vlan = 7;
	expect_reject(&r, &p, &h, "network phys tags VLAN 7 onto its uplink; host has no 802.1Q");
	h.vlan_8021q = true;
	expect_fit(&r, &p, &h);
}

static void test_filter_anti_affinity(void **state)
{
	static const char *const groups[] = {"db", "web"};
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);

	h.groups = groups;
	h.ngroups = 2;
	/* No group asked for: the groups there do not matter. */
	expect_fit(&r, &p, &h);
	r.anti_affinity = "web";
	expect_reject(&r, &p, &h, "anti-affinity group web already has an instance here");
	r.anti_affinity = "db";
	expect_reject(&r, &p, &h, "anti-affinity group db already has an instance here");
	/* Other groups, and names that only share a prefix, are no conflict. */
	r.anti_affinity = "cache";
	expect_fit(&r, &p, &h);
	r.anti_affinity = "we";
	expect_fit(&r, &p, &h);
	r.anti_affinity = "webs";
	expect_fit(&r, &p, &h);
}

static void test_filter_cpu_capacity(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(4.0, 1.0, SCHED_SPREAD);

	/* 2 CPUs * 4.0 = 8 vCPUs. */
	h.cpus = 2;
	r.vcpus = 8;
	expect_fit(&r, &p, &h);
	r.vcpus = 9;
	expect_reject(&r, &p, &h, "not enough CPU: 9 vCPUs wanted, 0 of 8 placed already");

	/* With some placed already, the boundary moves by exactly that much. */
	h.vcpus_used = 3;
	r.vcpus = 5;
	expect_fit(&r, &p, &h);
	r.vcpus = 6;
	expect_reject(&r, &p, &h, "not enough CPU: 6 vCPUs wanted, 3 of 8 placed already");

	/* Without overcommit: 2 CPUs are 2 vCPUs. */
	p.cpu_ratio = 1.0;
	h.vcpus_used = 0;
	r.vcpus = 2;
	expect_fit(&r, &p, &h);
	r.vcpus = 3;
	expect_reject(&r, &p, &h, "not enough CPU: 3 vCPUs wanted, 0 of 2 placed already");

	/*
	 * A fractional ratio: 3 CPUs * 1.5 = 4.5, so 4 vCPUs fit and 5 do not. Only the
	 * start of the reason is checked: it prints the capacity rounded, not floored.
	 */
	p.cpu_ratio = 1.5;
	h.cpus = 3;
	r.vcpus = 4;
	expect_fit(&r, &p, &h);
	r.vcpus = 5;
	{
		char reason[160];

		assert_false(judge(&r, &p, &h, reason, sizeof(reason)));
		assert_true(strncmp(reason, "not enough CPU: 5 vCPUs wanted, 0 of ", 37) == 0);
	}
}

static void test_filter_memory_capacity(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.5, SCHED_SPREAD);

	/* 1000 MiB * 1.5 = 1500 MiB. */
	h.memory_mb = 1000;
	r.memory_mb = 1500;
	expect_fit(&r, &p, &h);
	r.memory_mb = 1501;
	expect_reject(&r, &p, &h,
		      "not enough memory: 1501 MiB wanted, 0 of 1500 MiB placed already");

	h.memory_used_mb = 500;
	r.memory_mb = 1000;
	expect_fit(&r, &p, &h);
	r.memory_mb = 1001;
	expect_reject(&r, &p, &h,
		      "not enough memory: 1001 MiB wanted, 500 of 1500 MiB placed already");

	/* Without overcommit. */
	p.mem_ratio = 1.0;
	h.memory_used_mb = 0;
	r.memory_mb = 1000;
	expect_fit(&r, &p, &h);
	r.memory_mb = 1001;
	expect_reject(&r, &p, &h,
		      "not enough memory: 1001 MiB wanted, 0 of 1000 MiB placed already");

	/* Large hosts: 1 TiB * 2.0, to the MiB. */
	p.mem_ratio = 2.0;
	h.memory_mb = INT64_C(1) << 20;
	h.memory_used_mb = (INT64_C(1) << 21) - 4096;
	r.memory_mb = 4096;
	expect_fit(&r, &p, &h);
	r.memory_mb = 4097;
	expect_reject(&r, &p, &h,
		      "not enough memory: 4097 MiB wanted, 2093056 of 2097152 MiB placed already");
}

/* Both at their exact boundary at once fits; one unit over on either does not. */
static void test_filter_cpu_and_memory_boundary(void **state)
{
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(4.0, 1.5, SCHED_PACK);

	h.cpus = 2;
	h.memory_mb = 1000;
	h.vcpus_used = 6;
	h.memory_used_mb = 700;
	r.vcpus = 2;
	r.memory_mb = 800;
	expect_fit(&r, &p, &h);
	r.vcpus = 3;
	expect_reject(&r, &p, &h, "not enough CPU: 3 vCPUs wanted, 6 of 8 placed already");
	r.vcpus = 2;
	r.memory_mb = 801;
	expect_reject(&r, &p, &h,
		      "not enough memory: 801 MiB wanted, 700 of 1500 MiB placed already");
}

/* A long pinned host or group name is cut, not overflowed. */
static void test_reason_truncated(void **state)
{
	char longname[400];
	char reason[160];
	struct sched_host h = base_host("h1");
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);
	char small[16];

	memset(longname, 'z', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	r.pin_host = longname;
	assert_false(sched_host_fits(&r, &p, &h, reason, sizeof(reason)));
	assert_int_equal(strlen(reason), sizeof(reason) - 1);
	assert_true(strncmp(reason, "the instance is pinned to host zzz", 34) == 0);

	r.pin_host = NULL;
	h.online = false;
	assert_false(sched_host_fits(&r, &p, &h, small, sizeof(small)));
	assert_string_equal(small, "host is offline");
}

/* ---- Placement on generated clusters. ---- */

static uint64_t rng_state;

static uint32_t rnd(void)
{
	/* xorshift64*: deterministic, so a failure reproduces. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * UINT64_C(2685821657736338717)) >> 32);
}

struct cluster {
	size_t n;
	struct sched_host *hosts;
	char (*names)[32];
	const char *(*groups)[MAX_GROUPS];
	struct sched_verdict *verdicts;
};

/*
 * n hosts with names that do not follow index order (a permutation of
 * node-000..), so a tie broken by index and one broken by name differ.
 */
static void cluster_init(struct cluster *c, size_t n)
{
	c->n = n;
	c->hosts = calloc(n, sizeof(*c->hosts));
	c->names = calloc(n, sizeof(*c->names));
	c->groups = calloc(n, sizeof(*c->groups));
	c->verdicts = calloc(n, sizeof(*c->verdicts));
	assert_non_null(c->hosts);
	assert_non_null(c->names);
	assert_non_null(c->groups);
	assert_non_null(c->verdicts);
	for (size_t i = 0; i < n; i++) {
		snprintf(c->names[i], sizeof(c->names[i]), "node-%03zu", (i * 37 + 11) % n);
		c->hosts[i] = base_host(c->names[i]);
		c->hosts[i].groups = c->groups[i];
	}
}

static void cluster_free(struct cluster *c)
{
	free(c->hosts);
	free(c->names);
	free(c->groups);
	free(c->verdicts);
}

/*
 * What the controller does after placing: the host now runs the instance, so its
 * usage and, for an anti-affinity group, its groups grow.
 */
static void cluster_commit(struct cluster *c, int idx, const struct sched_request *r)
{
	struct sched_host *h = &c->hosts[idx];

	h->vcpus_used += r->vcpus;
	h->memory_used_mb += r->memory_mb;
	if (r->anti_affinity) {
		assert_true(h->ngroups < MAX_GROUPS);
		c->groups[idx][h->ngroups++] = r->anti_affinity;
	}
}

/* Every verdict was written, and agrees with sched_host_fits on its host alone. */
static void check_verdicts(const struct cluster *c, const struct sched_request *r,
			   const struct sched_params *p, int chosen)
{
	char reason[160];

	for (size_t i = 0; i < c->n; i++) {
		const struct sched_verdict *v = &c->verdicts[i];
		bool fits = sched_host_fits(r, p, &c->hosts[i], reason, sizeof(reason));

		if (v->fits != fits)
			fail_msg("verdict %zu (%s): fits %d, alone %d", i, c->hosts[i].name,
				 v->fits, fits);
		assert_string_equal(v->reason, reason);
		if (fits) {
			assert_true(v->score >= 0 && v->score <= 1);
			assert_true(chosen >= 0);
			assert_true(v->score <= c->verdicts[chosen].score);
		} else {
			assert_true(v->score == 0);
			assert_true(v->reason[0] != '\0');
		}
	}
	if (chosen >= 0)
		assert_true(c->verdicts[chosen].fits);
}

/* Exact free share of a host after placing r, as a fraction num/den of 2 (no rounding). */
struct frac {
	__int128 num, den;
};

static int frac_cmp(struct frac a, struct frac b)
{
	__int128 l = a.num * b.den, rr = b.num * a.den;

	return l < rr ? -1 : l > rr ? 1 : 0;
}

/*
 * The brute-force answer, from integers only: caps are cpus * cpu_ratio and
 * memory * mem_ratio for integral ratios; a host fits when online, not in
 * maintenance and both fit; its free share is the mean of the CPU and memory
 * shares left. Spread takes the largest share, pack the smallest, ties by name.
 * *nties counts hosts tied with the answer; *first_tied is the lowest index among them.
 */
static int brute_force(const struct cluster *c, const struct sched_request *r, int cpu_ratio,
		       int mem_ratio, enum sched_policy policy, int *nties, int *first_tied)
{
	int best = -1;
	struct frac bestf = {0, 1};

	*nties = 0;
	*first_tied = -1;
	for (size_t i = 0; i < c->n; i++) {
		const struct sched_host *h = &c->hosts[i];
		int64_t cc = (int64_t)h->cpus * cpu_ratio, mc = h->memory_mb * mem_ratio;
		int64_t cl = cc - h->vcpus_used - r->vcpus,
			ml = mc - h->memory_used_mb - r->memory_mb;
		struct frac f;
		int cmp;

		if (!h->online || h->maintenance || cl < 0 || ml < 0)
			continue;
		f.num = (__int128)cl * mc + (__int128)ml * cc;
		f.den = (__int128)cc * mc;
		if (best < 0) {
			best = (int)i;
			bestf = f;
			continue;
		}
		cmp = frac_cmp(f, bestf);
		if (policy == SCHED_PACK)
			cmp = -cmp;
		if (cmp > 0 || (cmp == 0 && strcmp(h->name, c->hosts[best].name) < 0)) {
			best = (int)i;
			bestf = f;
		}
	}
	if (best < 0)
		return -1;
	for (size_t i = 0; i < c->n; i++) {
		const struct sched_host *h = &c->hosts[i];
		int64_t cc = (int64_t)h->cpus * cpu_ratio, mc = h->memory_mb * mem_ratio;
		int64_t cl = cc - h->vcpus_used - r->vcpus,
			ml = mc - h->memory_used_mb - r->memory_mb;
		struct frac f;

		if (!h->online || h->maintenance || cl < 0 || ml < 0)
			continue;
		f.num = (__int128)cl * mc + (__int128)ml * cc;
		f.den = (__int128)cc * mc;
		if (frac_cmp(f, bestf) == 0) {
			(*nties)++;
			if (*first_tied < 0)
				*first_tied = (int)i;
		}
	}
	return best;
}

/*
 * 500 hosts of mixed sizes and load, all capacities powers of two times a unit so
 * every share is exact in a double. Some are offline, in maintenance, or too full
 * for the request; a few are empty (the best for spread) and a few are left exactly
 * full by the request (the best for pack), so the answer is a tie settled by name.
 */
static void build_mixed(struct cluster *c, const struct sched_request *r, int cpu_ratio,
			int mem_ratio)
{
	static const int cpus[] = {8, 16, 32, 64};
	static const int64_t gib[] = {32, 64, 128, 256};

	cluster_init(c, 500);
	rng_state = UINT64_C(0x9e3779b97f4a7c15);
	for (size_t i = 0; i < c->n; i++) {
		struct sched_host *h = &c->hosts[i];
		int cc;
		int64_t mc;

		h->cpus = cpus[rnd() % 4];
		h->memory_mb = gib[rnd() % 4] * 1024;
		cc = h->cpus * cpu_ratio;
		mc = h->memory_mb * mem_ratio;
		/* Usage in steps of 4 vCPUs and 4 GiB, anywhere from empty to full. */
		h->vcpus_used = (int)(rnd() % (uint32_t)(cc / 4 + 1)) * 4;
		h->memory_used_mb = (int64_t)(rnd() % (uint32_t)(mc / 4096 + 1)) * 4096;
		h->online = rnd() % 10 != 0;
		h->maintenance = rnd() % 20 == 0;
	}
	/* The largest shape, empty: the spread winners, tied. */
	for (size_t i = 7; i < c->n; i += 97) {
		c->hosts[i].cpus = 64;
		c->hosts[i].memory_mb = 256 * 1024;
		c->hosts[i].vcpus_used = 0;
		c->hosts[i].memory_used_mb = 0;
		c->hosts[i].online = true;
		c->hosts[i].maintenance = false;
	}
	/* Left exactly full by r, various sizes: the pack winners, tied. */
	for (size_t i = 13; i < c->n; i += 89) {
		struct sched_host *h = &c->hosts[i];

		h->vcpus_used = h->cpus * cpu_ratio - r->vcpus;
		h->memory_used_mb = h->memory_mb * mem_ratio - r->memory_mb;
		h->online = true;
		h->maintenance = false;
	}
	/* Empty but unusable: would win spread if the filters let them. */
	for (size_t i = 3; i < c->n; i += 101) {
		c->hosts[i].cpus = 64;
		c->hosts[i].memory_mb = 512 * 1024;
		c->hosts[i].vcpus_used = 0;
		c->hosts[i].memory_used_mb = 0;
		if (i % 2)
			c->hosts[i].online = false;
		else
			c->hosts[i].maintenance = true;
	}
	/* Full but one unit short of fitting: would win pack if capacity were not checked. */
	for (size_t i = 29; i < c->n; i += 83) {
		struct sched_host *h = &c->hosts[i];

		h->vcpus_used = h->cpus * cpu_ratio - r->vcpus + (i % 2 ? 1 : 0);
		h->memory_used_mb = h->memory_mb * mem_ratio - r->memory_mb + (i % 2 ? 0 : 1);
		h->online = true;
		h->maintenance = false;
	}
}

static void place_mixed(enum sched_policy policy)
{
	struct cluster c;
	struct sched_request r = base_req();
	struct sched_params p = params(4.0, 2.0, policy);
	int want, got, nties, first_tied, nfit = 0, ncap = 0;

	r.vcpus = 4;
	r.memory_mb = 8192;
	build_mixed(&c, &r, 4, 2);
	scribble(c.verdicts, c.n);
	got = place(&r, &p, c.hosts, c.n, c.verdicts);
	want = brute_force(&c, &r, 4, 2, policy, &nties, &first_tied);
	assert_true(want >= 0);
	/* The cluster is what the test means it to be: a real tie, not in index order. */
	assert_true(nties >= 2);
	assert_int_not_equal(first_tied, want);
	if (got != want)
		fail_msg("%s chose %d (%s), brute force %d (%s)",
			 policy == SCHED_SPREAD ? "spread" : "pack", got,
			 got >= 0 ? c.hosts[got].name : "none", want, c.hosts[want].name);
	check_verdicts(&c, &r, &p, got);
	for (size_t i = 0; i < c.n; i++) {
		nfit += c.verdicts[i].fits;
		ncap += !c.verdicts[i].fits &&
			strncmp(c.verdicts[i].reason, "not enough ", 11) == 0;
	}
	/* Some of each kind, so every branch was in play. */
	assert_true(nfit > 100);
	assert_true(ncap > 10);
	cluster_free(&c);
}

static void test_spread_picks_least_loaded(void **state)
{
	place_mixed(SCHED_SPREAD);
}

static void test_pack_picks_most_loaded_that_fits(void **state)
{
	place_mixed(SCHED_PACK);
}

/* Random loads, no forced ties: the brute force and the scheduler agree on many draws. */
static void test_random_clusters_match_brute_force(void **state)
{
	static const int cpus[] = {4, 8, 16, 32, 64, 128};
	static const int64_t gib[] = {8, 16, 32, 64, 128, 256, 512};
	struct cluster c;
	struct sched_request r = base_req();

	cluster_init(&c, 500);
	rng_state = UINT64_C(12345);
	for (int round = 0; round < 40; round++) {
		enum sched_policy policy = round % 2 ? SCHED_PACK : SCHED_SPREAD;
		struct sched_params p = params(2.0, 1.0, policy);
		int want, got, nties, first_tied;

		r.vcpus = 1 << (rnd() % 4);
		r.memory_mb = (int64_t)1024 << (rnd() % 4);
		for (size_t i = 0; i < c.n; i++) {
			struct sched_host *h = &c.hosts[i];

			h->cpus = cpus[rnd() % 6];
			h->memory_mb = gib[rnd() % 7] * 1024;
			h->vcpus_used = (int)(rnd() % (uint32_t)(h->cpus * 2 + 1));
			h->memory_used_mb =
				(int64_t)(rnd() % (uint32_t)(h->memory_mb / 1024 + 1)) * 1024;
			h->online = rnd() % 8 != 0;
			h->maintenance = rnd() % 16 == 0;
		}
		scribble(c.verdicts, c.n);
		got = place(&r, &p, c.hosts, c.n, c.verdicts);
		want = brute_force(&c, &r, 2, 1, policy, &nties, &first_tied);
		if (got != want)
			fail_msg("round %d: chose %d, brute force %d", round, got, want);
		check_verdicts(&c, &r, &p, got);
	}
	cluster_free(&c);
}

/* The rank order of sched_place(), written out plainly for qsort. */
static const struct sched_params *rank_params;
static const struct sched_host *rank_hosts;
static const double *rank_scores;

static int rank_cmp(const void *a, const void *b)
{
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	const struct sched_host *x = &rank_hosts[i], *y = &rank_hosts[j];

	if (rank_scores[i] != rank_scores[j])
		return rank_scores[i] > rank_scores[j] ? -1 : 1;
	if (x->instances != y->instances)
		return (rank_params->policy == SCHED_SPREAD) == (x->instances < y->instances) ? -1
											      : 1;
	return strcmp(x->name, y->name);
}

/*
 * A cluster of like hosts, where most candidates tie with the last of the few kept
 * (the case sched_place() settles before computing a score): a handful of load shapes,
 * instance counts 0..3, names out of index order. The few kept are exactly the first
 * of all candidates sorted by score, instances and name, under both policies and in
 * many draws.
 */
static void test_top_ties_match_sorted(void **state)
{
	struct cluster c;
	struct sched_request r = base_req();
	size_t *order = calloc(600, sizeof(*order));
	double *scores = calloc(600, sizeof(*scores));

	assert_non_null(order);
	assert_non_null(scores);
	cluster_init(&c, 600);
	rng_state = UINT64_C(777);
	for (int round = 0; round < 40; round++) {
		struct sched_params p = params(4.0, 1.0, round % 2 ? SCHED_PACK : SCHED_SPREAD);
		struct sched_outcome out;
		size_t nfit = 0;

		r.vcpus = 1;
		r.memory_mb = 256;
		for (size_t i = 0; i < c.n; i++) {
			struct sched_host *h = &c.hosts[i];

			h->cpus = 64;
			h->memory_mb = 262144;
			h->vcpus_used = (int)(rnd() % 3) * 8;
			h->memory_used_mb = (int64_t)(rnd() % 2) * 4096;
			h->instances = (int)(rnd() % 4);
			h->online = rnd() % 10 != 0;
		}
		sched_place(&r, &p, c.hosts, c.n, &out);
		for (size_t i = 0; i < c.n; i++) {
			if (sched_host_check(&r, &p, &c.hosts[i]) != SCHED_FITS)
				continue;
			scores[i] = sched_host_score(&r, &p, &c.hosts[i]);
			order[nfit++] = i;
		}
		rank_params = &p;
		rank_hosts = c.hosts;
		rank_scores = scores;
		qsort(order, nfit, sizeof(*order), rank_cmp);
		assert_int_equal(out.ntop, SCHED_TOP_MAX);
		for (size_t k = 0; k < out.ntop; k++)
			if (out.top[k] != order[k])
				fail_msg("round %d: candidate %zu is %s, sorted %s", round, k,
					 c.hosts[out.top[k]].name, c.hosts[order[k]].name);
	}
	cluster_free(&c);
	free(order);
	free(scores);
}

static void test_ties_by_name(void **state)
{
	static const char *const names[] = {"c", "a", "b", "a1"};
	struct sched_host hosts[4];
	struct sched_verdict v[4];
	struct sched_request r = base_req();

	for (size_t i = 0; i < 4; i++)
		hosts[i] = base_host(names[i]);
	for (int pol = SCHED_SPREAD; pol <= SCHED_PACK; pol++) {
		struct sched_params p = params(1.0, 1.0, (enum sched_policy)pol);

		/* Identical hosts: "a" sorts first, wherever it is. */
		assert_int_equal(place(&r, &p, hosts, 4, v), 1);
		assert_true(v[0].score == v[1].score && v[1].score == v[2].score);
		/* Without it, "a1" (a prefix sorts before its extensions). */
		hosts[1].online = false;
		assert_int_equal(place(&r, &p, hosts, 4, v), 3);
		/* "b" before "c", though "c" comes first in the array. */
		hosts[3].online = false;
		assert_int_equal(place(&r, &p, hosts, 4, v), 2);
		/* The one left. */
		hosts[2].online = false;
		assert_int_equal(place(&r, &p, hosts, 4, v), 0);
		for (size_t i = 0; i < 4; i++)
			hosts[i].online = true;
	}
	/* A better score beats a better name. */
	hosts[0].vcpus_used = 4;
	{
		struct sched_params p = params(1.0, 1.0, SCHED_PACK);

		assert_int_equal(place(&r, &p, hosts, 4, v), 0);
		p.policy = SCHED_SPREAD;
		assert_int_equal(place(&r, &p, hosts, 4, v), 1);
		hosts[1].vcpus_used = 1;
		hosts[3].vcpus_used = 1;
		assert_int_equal(place(&r, &p, hosts, 4, v), 2);
	}
}

/* Place count instances of group in turn, as the controller would; returns the hosts. */
static void place_group(struct cluster *c, struct sched_request *r, const struct sched_params *p,
			int count, int *placed)
{
	for (int k = 0; k < count; k++) {
		scribble(c->verdicts, c->n);
		placed[k] = place(r, p, c->hosts, c->n, c->verdicts);
		if (placed[k] < 0)
			fail_msg("instance %d of %s not placed", k, r->anti_affinity);
		check_verdicts(c, r, p, placed[k]);
		for (int j = 0; j < k; j++)
			if (placed[j] == placed[k])
				fail_msg("instances %d and %d of %s both on %s", j, k,
					 r->anti_affinity, c->hosts[placed[k]].name);
		cluster_commit(c, placed[k], r);
	}
}

/*
 * Equal scores (instances that reserve nothing, like containers without limits): spread
 * goes to the host with the fewest instances, pack to the one with the most; names
 * decide only among equal counts. h3 listed first and empty wins spread over h1.
 */
static void test_ties_by_instance_count(void **state)
{
	struct sched_host hosts[3] = {base_host("h3"), base_host("h2"), base_host("h1")};
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);
	struct sched_request r = base_req();
	struct sched_outcome out;

	r.vcpus = 0;
	r.memory_mb = 0;
	hosts[1].instances = 2;
	hosts[2].instances = 1;
	assert_int_equal(sched_place(&r, &p, hosts, 3, &out), 0);
	assert_true(sched_host_score(&r, &p, &hosts[0]) == sched_host_score(&r, &p, &hosts[2]));
	p.policy = SCHED_PACK;
	assert_int_equal(sched_place(&r, &p, hosts, 3, &out), 1);
	/* Equal counts: the name decides again. */
	hosts[0].instances = 1;
	p.policy = SCHED_SPREAD;
	assert_int_equal(sched_place(&r, &p, hosts, 3, &out), 2);
	/* A better score still beats a smaller count. */
	hosts[2].vcpus_used = 1;
	hosts[0].instances = 5;
	assert_int_equal(sched_place(&r, &p, hosts, 3, &out), 1);
}

static void test_anti_affinity_three_hosts(void **state)
{
	for (int pol = SCHED_SPREAD; pol <= SCHED_PACK; pol++) {
		struct cluster c;
		struct sched_request r = base_req();
		struct sched_params p = params(4.0, 1.0, (enum sched_policy)pol);
		int placed[3];

		cluster_init(&c, 3);
		r.anti_affinity = "db";
		/* Pack would put them all on one host without the group. */
		place_group(&c, &r, &p, 3, placed);

		/* A fourth has nowhere to go, and every host says why. */
		scribble(c.verdicts, c.n);
		assert_int_equal(place(&r, &p, c.hosts, c.n, c.verdicts), -1);
		for (size_t i = 0; i < c.n; i++) {
			assert_false(c.verdicts[i].fits);
			assert_string_equal(c.verdicts[i].reason,
					    "anti-affinity group db already has an instance here");
		}
		check_verdicts(&c, &r, &p, -1);

		/* Another group, or none, still goes anywhere. */
		r.anti_affinity = "web";
		assert_true(place(&r, &p, c.hosts, c.n, c.verdicts) >= 0);
		r.anti_affinity = NULL;
		assert_true(place(&r, &p, c.hosts, c.n, c.verdicts) >= 0);
		cluster_free(&c);
	}
}

/* On a big cluster pack would stack the group on the fullest host; it may not. */
static void test_anti_affinity_pack_large(void **state)
{
	struct cluster c;
	struct sched_request r = base_req();
	struct sched_params p = params(4.0, 1.0, SCHED_PACK);
	int placed[3], again;

	cluster_init(&c, 50);
	/* One host far fuller than the rest. */
	c.hosts[20].vcpus_used = 40;
	c.hosts[20].memory_used_mb = 40000;
	r.anti_affinity = "db";
	place_group(&c, &r, &p, 3, placed);
	assert_int_equal(placed[0], 20);

	/* An instance of another group goes back to the fullest host. */
	r.anti_affinity = "web";
	again = place(&r, &p, c.hosts, c.n, c.verdicts);
	assert_int_equal(again, 20);
	cluster_free(&c);
}

static void test_too_big_for_all(void **state)
{
	struct cluster c;
	struct sched_request r = base_req();
	struct sched_params p = params(4.0, 1.5, SCHED_SPREAD);

	cluster_init(&c, 300);
	rng_state = UINT64_C(777);
	for (size_t i = 0; i < c.n; i++) {
		c.hosts[i].cpus = 8 + (int)(rnd() % 57);
		c.hosts[i].memory_mb = 4096 + (int64_t)(rnd() % 500000);
		c.hosts[i].vcpus_used = (int)(rnd() % 16);
		c.hosts[i].memory_used_mb = (int64_t)(rnd() % 4096);
	}

	/* More vCPUs than any host has (64 * 4 = 256). */
	r.vcpus = 257;
	for (int pol = SCHED_SPREAD; pol <= SCHED_PACK; pol++) {
		p.policy = (enum sched_policy)pol;
		scribble(c.verdicts, c.n);
		assert_int_equal(place(&r, &p, c.hosts, c.n, c.verdicts), -1);
		for (size_t i = 0; i < c.n; i++) {
			assert_false(c.verdicts[i].fits);
			assert_true(c.verdicts[i].score == 0);
			if (strncmp(c.verdicts[i].reason, "not enough CPU: 257 vCPUs wanted", 32))
				fail_msg("host %zu: %s", i, c.verdicts[i].reason);
		}
		check_verdicts(&c, &r, &p, -1);
	}

	/* Enough CPU, more memory than any host (504_095 MiB * 1.5 < 800_000). */
	r.vcpus = 1;
	r.memory_mb = 800000;
	scribble(c.verdicts, c.n);
	assert_int_equal(place(&r, &p, c.hosts, c.n, c.verdicts), -1);
	for (size_t i = 0; i < c.n; i++) {
		assert_false(c.verdicts[i].fits);
		if (strncmp(c.verdicts[i].reason, "not enough memory: 800000 MiB wanted", 36))
			fail_msg("host %zu: %s", i, c.verdicts[i].reason);
	}
	check_verdicts(&c, &r, &p, -1);

	/* Exactly what the roomiest host can take: it, and only it. */
	{
		size_t big = 0, nbig = 0;
		int64_t room = -1;

		for (size_t i = 0; i < c.n; i++) {
			int64_t left =
				(int64_t)(c.hosts[i].memory_mb * 1.5) - c.hosts[i].memory_used_mb;

			if (left > room) {
				room = left;
				big = i;
			}
		}
		for (size_t i = 0; i < c.n; i++)
			nbig += (int64_t)(c.hosts[i].memory_mb * 1.5) - c.hosts[i].memory_used_mb ==
				room;
		assert_int_equal(nbig, 1);
		r.memory_mb = room;
		scribble(c.verdicts, c.n);
		if (place(&r, &p, c.hosts, c.n, c.verdicts) != (int)big)
			fail_msg("a request for %lld MiB did not go to %s", (long long)room,
				 c.hosts[big].name);
		check_verdicts(&c, &r, &p, (int)big);
	}
	cluster_free(&c);
}

static void test_pinning(void **state)
{
	struct cluster c;
	struct sched_request r = base_req();
	int pin = 123, got;

	cluster_init(&c, 300);
	/* The pinned host is the worst choice for spread: nearly full. */
	c.hosts[pin].vcpus_used = 60;
	c.hosts[pin].memory_used_mb = 60000;
	for (int pol = SCHED_SPREAD; pol <= SCHED_PACK; pol++) {
		struct sched_params p = params(4.0, 1.0, (enum sched_policy)pol);
		char want[160];

		r.pin_host = c.hosts[pin].name;
		snprintf(want, sizeof(want), "the instance is pinned to host %s", r.pin_host);
		scribble(c.verdicts, c.n);
		got = place(&r, &p, c.hosts, c.n, c.verdicts);
		assert_int_equal(got, pin);
		for (size_t i = 0; i < c.n; i++) {
			if (i == (size_t)pin) {
				assert_true(c.verdicts[i].fits);
				continue;
			}
			assert_false(c.verdicts[i].fits);
			assert_string_equal(c.verdicts[i].reason, want);
		}
		check_verdicts(&c, &r, &p, got);

		/* It does not fit there: no other host will do. */
		r.vcpus = 5;
		scribble(c.verdicts, c.n);
		assert_int_equal(place(&r, &p, c.hosts, c.n, c.verdicts), -1);
		assert_string_equal(c.verdicts[pin].reason,
				    "not enough CPU: 5 vCPUs wanted, 60 of 64 placed already");
		check_verdicts(&c, &r, &p, -1);
		r.vcpus = 2;

		/* Offline, or a host that does not exist. */
		c.hosts[pin].online = false;
		assert_int_equal(place(&r, &p, c.hosts, c.n, c.verdicts), -1);
		assert_string_equal(c.verdicts[pin].reason, "host is offline");
		c.hosts[pin].online = true;
		r.pin_host = "no-such-host";
		assert_int_equal(place(&r, &p, c.hosts, c.n, c.verdicts), -1);
		for (size_t i = 0; i < c.n; i++)
			assert_string_equal(c.verdicts[i].reason,
					    "the instance is pinned to host no-such-host");
	}
	cluster_free(&c);
}

/* 5,000 hosts, most rejected: the outcome names five and counts the rest per reason. */
static void test_explanation_bounded(void **state)
{
	struct cluster c;
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);
	struct sched_outcome out;
	int got;

	cluster_init(&c, 5000);
	for (size_t i = 0; i < c.n; i++) {
		c.hosts[i].online = i % 3 != 0;
		c.hosts[i].maintenance = i % 3 == 1;
		c.hosts[i].vcpus_used = (int)(i % 17);
	}
	got = sched_place(&r, &p, c.hosts, c.n, &out);
	assert_true(got >= 0 && got % 3 == 2);
	assert_int_equal(out.nrejected, c.n - out.nfit);
	assert_int_equal(out.rejected_by[SCHED_OFFLINE], 1667);
	assert_int_equal(out.rejected_by[SCHED_MAINTENANCE], 1667);
	assert_int_equal(out.nnamed, SCHED_NAMED_MAX);
	assert_int_equal(out.named[0], 0);
	assert_int_equal(out.named[1], 1);
	assert_int_equal(out.named[2], 3);
	assert_int_equal(out.ntop, SCHED_TOP_MAX);
	assert_string_equal(sched_reject_name(SCHED_NO_CPU), "not enough CPU");
	cluster_free(&c);
}

static void test_empty_cluster(void **state)
{
	struct sched_request r = base_req();
	struct sched_params p = params(1.0, 1.0, SCHED_SPREAD);
	struct sched_verdict v[1];

	assert_int_equal(place(&r, &p, NULL, 0, v), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_base_host_fits),
		cmocka_unit_test(test_filter_pinned_elsewhere),
		cmocka_unit_test(test_filter_offline),
		cmocka_unit_test(test_filter_maintenance),
		cmocka_unit_test(test_filter_nested),
		cmocka_unit_test(test_filter_shared_pool),
		cmocka_unit_test(test_filter_local_pool),
		cmocka_unit_test(test_filter_networks),
		cmocka_unit_test(test_filter_anti_affinity),
		cmocka_unit_test(test_filter_cpu_capacity),
		cmocka_unit_test(test_filter_memory_capacity),
		cmocka_unit_test(test_filter_cpu_and_memory_boundary),
		cmocka_unit_test(test_reason_truncated),
		cmocka_unit_test(test_spread_picks_least_loaded),
		cmocka_unit_test(test_pack_picks_most_loaded_that_fits),
		cmocka_unit_test(test_random_clusters_match_brute_force),
		cmocka_unit_test(test_top_ties_match_sorted),
		cmocka_unit_test(test_ties_by_name),
		cmocka_unit_test(test_ties_by_instance_count),
		cmocka_unit_test(test_anti_affinity_three_hosts),
		cmocka_unit_test(test_anti_affinity_pack_large),
		cmocka_unit_test(test_too_big_for_all),
		cmocka_unit_test(test_pinning),
		cmocka_unit_test(test_explanation_bounded),
		cmocka_unit_test(test_empty_cluster),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
