/*
 * test_netver.c - the versions that decide when a host's network document is built
 * again (controllerd/netver.c, used by netsync.c). Hosts are stamped as netsync.c
 * stamps them: each depends on its segments and groups and contributes its presence
 * to its segments and a digest of its addresses to its groups. Each test changes one
 * host and checks exactly which hosts' documents became stale: the ones sharing what
 * changed, and not the others. Were versions one global generation (as before), the
 * "others stay current" checks would fail; were a change not bumped, the "sharing
 * hosts are stale" checks would.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "netver.h"

/* A host as netsync.c sees it: segment keys, and (group, address) pairs of its ports. */
struct fake_host {
	const char *segs[4];
	const char *groups[4]; /* groups[i] holds addrs[i] */
	const char *addrs[4];
	struct netver_stamp stamp;
};

/* Build h's "document": stamp it as doc_stamp() in netsync.c does. Returns bumps. */
static size_t build(struct netver *v, struct fake_host *h)
{
	const char *deps[8];
	struct netver_entry contribs[8];
	size_t n = 0, m = 0;

	for (size_t i = 0; i < 4 && h->segs[i]; i++) {
		deps[n++] = h->segs[i];
		contribs[m].key = (char *)h->segs[i];
		contribs[m++].value = 1;
	}
	for (size_t i = 0; i < 4 && h->groups[i]; i++) {
		size_t j;

		for (j = 0; j < m && strcmp(contribs[j].key, h->groups[i]) != 0; j++)
			;
		if (j == m) {
			deps[n++] = h->groups[i];
			contribs[m].key = (char *)h->groups[i];
			contribs[m++].value = NETVER_DIGEST_INIT;
		}
		contribs[j].value =
			netver_digest(contribs[j].value, h->addrs[i], strlen(h->addrs[i]) + 1);
	}
	return netver_stamp_record(v, &h->stamp, deps, n, contribs, m);
}

struct world {
	struct netver *v;
	/* a and b share segment seg/1/0 and group default; c has no NICs; d is alone
	 * on another network with its own group. */
	struct fake_host a, b, c, d;
};

static int setup(void **state)
{
	static struct world w;

	memset(&w, 0, sizeof(w));
	w.v = netver_new();
	w.a.segs[0] = "seg/1/0";
	w.a.groups[0] = "group/default";
	w.a.addrs[0] = "10.0.0.2";
	w.b.segs[0] = "seg/1/0";
	w.b.groups[0] = "group/default";
	w.b.addrs[0] = "10.0.0.3";
	w.d.segs[0] = "seg/2/0";
	w.d.groups[0] = "group/other";
	w.d.addrs[0] = "10.9.0.2";
	/* The first build after start changes nobody's document. */
	assert_int_equal(build(w.v, &w.a), 0);
	assert_int_equal(build(w.v, &w.b), 0);
	assert_int_equal(build(w.v, &w.c), 0);
	assert_int_equal(build(w.v, &w.d), 0);
	assert_true(netver_stamp_current(w.v, &w.a.stamp));
	assert_true(netver_stamp_current(w.v, &w.b.stamp));
	assert_true(netver_stamp_current(w.v, &w.c.stamp));
	assert_true(netver_stamp_current(w.v, &w.d.stamp));
	*state = &w;
	return 0;
}

static int teardown(void **state)
{
	struct world *w = *state;

	netver_stamp_clear(&w->a.stamp);
	netver_stamp_clear(&w->b.stamp);
	netver_stamp_clear(&w->c.stamp);
	netver_stamp_clear(&w->d.stamp);
	netver_free(w->v);
	return 0;
}

/* A never-built stamp is stale; a rebuild with nothing changed bumps nothing. */
static void test_unchanged(void **state)
{
	struct world *w = *state;
	struct netver_stamp never = {0};

	assert_false(netver_stamp_current(w->v, &never));
	assert_int_equal(build(w->v, &w->a), 0);
	assert_true(netver_stamp_current(w->v, &w->b.stamp));
	assert_true(netver_stamp_current(w->v, &w->c.stamp));
	assert_true(netver_stamp_current(w->v, &w->d.stamp));
}

/* A second instance on a, same segment, same group: default's members grew, so b
 * (which carries default) rebuilds; c (no NICs) and d (elsewhere) do not. */
static void test_address_joins_group(void **state)
{
	struct world *w = *state;

	w->a.groups[1] = "group/default";
	w->a.addrs[1] = "10.0.0.4";
	assert_int_equal(build(w->v, &w->a), 1); /* group/default only: a stays on seg/1/0 */
	assert_true(netver_stamp_current(w->v, &w->a.stamp));
	assert_false(netver_stamp_current(w->v, &w->b.stamp));
	assert_true(netver_stamp_current(w->v, &w->c.stamp));
	assert_true(netver_stamp_current(w->v, &w->d.stamp));
	build(w->v, &w->b);
	assert_true(netver_stamp_current(w->v, &w->b.stamp));
}

/* c gets its first NIC on d's network: d's peers and group change, a and b's not. */
static void test_host_joins_segment(void **state)
{
	struct world *w = *state;

	w->c.segs[0] = "seg/2/0";
	w->c.groups[0] = "group/other";
	w->c.addrs[0] = "10.9.0.3";
	assert_int_equal(build(w->v, &w->c), 2);
	assert_false(netver_stamp_current(w->v, &w->d.stamp));
	assert_true(netver_stamp_current(w->v, &w->a.stamp));
	assert_true(netver_stamp_current(w->v, &w->b.stamp));
	/* And leaving again (the instance deleted) is a change too. */
	build(w->v, &w->d);
	memset(w->c.segs, 0, sizeof(w->c.segs));
	memset(w->c.groups, 0, sizeof(w->c.groups));
	assert_int_equal(build(w->v, &w->c), 2);
	assert_false(netver_stamp_current(w->v, &w->d.stamp));
	assert_true(netver_stamp_current(w->v, &w->a.stamp));
}

/* An address that moves within a group (delete one, create another on the same host)
 * changes the digest: the group's other members rebuild. */
static void test_address_changes(void **state)
{
	struct world *w = *state;

	w->b.addrs[0] = "10.0.0.9";
	assert_int_equal(build(w->v, &w->b), 1);
	assert_false(netver_stamp_current(w->v, &w->a.stamp));
	assert_true(netver_stamp_current(w->v, &w->d.stamp));
}

/* netsync_all(): networks or rules changed, every document is stale. */
static void test_all(void **state)
{
	struct world *w = *state;

	netver_all_bump(w->v);
	assert_false(netver_stamp_current(w->v, &w->a.stamp));
	assert_false(netver_stamp_current(w->v, &w->c.stamp));
	assert_false(netver_stamp_current(w->v, &w->d.stamp));
	build(w->v, &w->c);
	assert_true(netver_stamp_current(w->v, &w->c.stamp));
}

/*
 * The measure netsync.c is for, in miniature: 1,000 hosts, 100 of them on one
 * network (10 per segment), the rest without NICs; one create joins a new host to
 * segment 3. Before, one generation for the cluster: 1,000 documents rebuilt at the
 * next heartbeats. Now: the 10 on that segment (they all carry group default too,
 * whose members changed, so the 90 other NIC hosts as well) - never the 900 without.
 */
static void test_rebuilds_per_create(void **state)
{
	static struct fake_host hosts[1000];
	static char addrs[1000][16];
	static const char *const segs[10] = {"seg/1/0", "seg/1/1", "seg/1/2", "seg/1/3", "seg/1/4",
					     "seg/1/5", "seg/1/6", "seg/1/7", "seg/1/8", "seg/1/9"};
	struct netver *v = netver_new();
	size_t stale = 0, stale_other = 0;

	(void)state;
	memset(hosts, 0, sizeof(hosts));
	for (size_t i = 0; i < 100; i++) {
		snprintf(addrs[i], sizeof(addrs[i]), "10.1.%zu.%zu", i / 200, i % 200 + 2);
		hosts[i].segs[0] = segs[i % 10];
		hosts[i].groups[0] = i < 50 ? "group/default" : "group/web";
		hosts[i].addrs[0] = addrs[i];
	}
	for (size_t i = 0; i < 1000; i++)
		build(v, &hosts[i]);
	/* Host 500 (no NICs until now) gets an instance on segment 3, group web. */
	hosts[500].segs[0] = "seg/1/3";
	hosts[500].groups[0] = "group/web";
	hosts[500].addrs[0] = "10.1.9.9";
	assert_int_equal(build(v, &hosts[500]), 2);
	for (size_t i = 0; i < 1000; i++)
		if (!netver_stamp_current(v, &hosts[i].stamp)) {
			stale++;
			stale_other += i >= 100;
		}
	/* Segment 3's ten, and the web group's fifty (five of them on segment 3). */
	assert_int_equal(stale, 10 + 50 - 5);
	assert_int_equal(stale_other, 0);
	for (size_t i = 0; i < 1000; i++)
		netver_stamp_clear(&hosts[i].stamp);
	netver_free(v);
}

/* Many keys: the table grows and every version survives it. */
static void test_grow(void **state)
{
	struct netver *v = netver_new();
	char key[32];

	(void)state;
	for (int i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "seg/%d/0", i);
		for (int k = 0; k <= i % 3; k++)
			netver_key_bump(v, key);
	}
	for (int i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "seg/%d/0", i);
		assert_int_equal(netver_key_get(v, key), (uint64_t)(i % 3 + 1));
	}
	assert_int_equal(netver_key_get(v, "seg/99999/0"), 0);
	netver_free(v);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_unchanged, setup, teardown),
		cmocka_unit_test_setup_teardown(test_address_joins_group, setup, teardown),
		cmocka_unit_test_setup_teardown(test_host_joins_segment, setup, teardown),
		cmocka_unit_test_setup_teardown(test_address_changes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_all, setup, teardown),
		cmocka_unit_test(test_rebuilds_per_create),
		cmocka_unit_test(test_grow),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
