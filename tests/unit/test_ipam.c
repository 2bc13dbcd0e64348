/*
 * test_ipam.c - IPv4 address management (controllerd/ipam.c): CIDR parsing and the
 * facts of every prefix from /8 to /30, class and private-range boundaries, the
 * messages for bad input, overlap, gateways, and the allocator from a /30 to a /8,
 * checked against a brute-force model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ipam.h"

/* A dotted quad the test knows to be good. */
static uint32_t addr_of(const char *text)
{
	struct kerr err = {0};
	uint32_t a;

	if (ipam_addr_parse(text, &a, &err) < 0)
		fail_msg("%s: %s", text, err.msg);
	return a;
}

/* A CIDR the test knows to be good. */
static struct ipam_net net_of(const char *text)
{
	struct kerr err = {0};
	struct ipam_net net;

	if (ipam_cidr_parse(text, &net, &err) < 0)
		fail_msg("%s: %s", text, err.msg);
	return net;
}

static void assert_addr(uint32_t got, const char *want)
{
	char buf[IPAM_ADDR_STRLEN];

	assert_string_equal(ipam_addr_format(got, buf), want);
}

/* Every fact of one network, as strings, the way an operator reads them. */
struct facts {
	const char *cidr;
	const char *network;
	const char *broadcast;
	const char *netmask;
	uint32_t usable;
	const char *first;
	const char *last;
	char addr_class;
	bool private_range;
};

static void check_facts(const struct facts *f)
{
	struct ipam_net net = net_of(f->cidr);
	char cidr[IPAM_CIDR_STRLEN];

	assert_string_equal(ipam_cidr_format(&net, cidr), f->cidr);
	assert_addr(net.network, f->network);
	assert_addr(net.broadcast, f->broadcast);
	assert_addr(net.netmask, f->netmask);
	assert_int_equal(net.usable, f->usable);
	assert_addr(net.first_usable, f->first);
	assert_addr(net.last_usable, f->last);
	assert_int_equal(net.addr_class, f->addr_class);
	assert_int_equal(net.private_range, f->private_range);
}

static void test_addr_parse_and_format(void **state)
{
	static const char *const good[] = {"0.0.0.0",	   "255.255.255.255", "10.0.0.1",
					   "192.168.1.10", "1.2.3.4",	      "100.64.0.0"};
	static const struct {
		const char *text;
		const char *why;
	} bad[] = {
		{"", "it is empty"},
		{"10.0.0", "fourth octet is missing"},
		{"10.0.0.", "fourth octet is missing"},
		{"10.0.0.0.", "unexpected \".\" after the fourth octet"},
		{"10.0.0.256", "fourth octet 256 is over 255"},
		{"10.0.0.01", "fourth octet 01 has a leading zero"},
		{"10.0.0.1 ", "unexpected \" \" after the fourth octet"},
		{" 10.0.0.1", "first octet expected, found \" \""},
		{"10.0.0.1/24", "unexpected \"/24\" after the fourth octet"},
		{"0x0a.0.0.1", "unexpected \"x\" after the first octet"},
		{"10.-1.0.1", "second octet expected, found \"-\""},
	};
	struct kerr err = {0};
	char buf[IPAM_ADDR_STRLEN];
	uint32_t a;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_string_equal(ipam_addr_format(addr_of(good[i]), buf), good[i]);
	assert_int_equal(addr_of("10.1.2.3"), 0x0a010203);
	assert_int_equal(addr_of("255.255.255.255"), UINT32_MAX);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char want[160];

		a = 0x12345678;
		memset(&err, 0, sizeof(err));
		assert_int_equal(ipam_addr_parse(bad[i].text, &a, &err), -1);
		snprintf(want, sizeof(want), "\"%s\" is not an IPv4 address (%s)", bad[i].text,
			 bad[i].why);
		assert_string_equal(err.msg, want);
		assert_int_equal(err.status, 400);
		assert_string_equal(err.field, "address");
		assert_int_equal(a, 0x12345678);
	}
	assert_int_equal(ipam_addr_parse(NULL, &a, &err), -1);
}

static void test_cidr_slash24(void **state)
{
	static const struct facts f = {
		.cidr = "192.168.1.0/24",
		.network = "192.168.1.0",
		.broadcast = "192.168.1.255",
		.netmask = "255.255.255.0",
		.usable = 254,
		.first = "192.168.1.1",
		.last = "192.168.1.254",
		.addr_class = 'C',
		.private_range = true,
	};

	check_facts(&f);
}

/* The smallest network: two usable addresses. */
static void test_cidr_slash30(void **state)
{
	static const struct facts f = {
		.cidr = "10.0.0.4/30",
		.network = "10.0.0.4",
		.broadcast = "10.0.0.7",
		.netmask = "255.255.255.252",
		.usable = 2,
		.first = "10.0.0.5",
		.last = "10.0.0.6",
		.addr_class = 'A',
		.private_range = true,
	};

	check_facts(&f);
}

static void test_cidr_slash29(void **state)
{
	static const struct facts f = {
		.cidr = "203.0.113.8/29",
		.network = "203.0.113.8",
		.broadcast = "203.0.113.15",
		.netmask = "255.255.255.248",
		.usable = 6,
		.first = "203.0.113.9",
		.last = "203.0.113.14",
		.addr_class = 'C',
		.private_range = false,
	};

	check_facts(&f);
}

/* The largest network, at the bottom and at the very top of the address space. */
static void test_cidr_slash8(void **state)
{
	static const struct facts ten = {
		.cidr = "10.0.0.0/8",
		.network = "10.0.0.0",
		.broadcast = "10.255.255.255",
		.netmask = "255.0.0.0",
		.usable = 16777214,
		.first = "10.0.0.1",
		.last = "10.255.255.254",
		.addr_class = 'A',
		.private_range = true,
	};
	static const struct facts top = {
		.cidr = "255.0.0.0/8",
		.network = "255.0.0.0",
		.broadcast = "255.255.255.255",
		.netmask = "255.0.0.0",
		.usable = 16777214,
		.first = "255.0.0.1",
		.last = "255.255.255.254",
		.addr_class = 'E',
		.private_range = false,
	};

	check_facts(&ten);
	/* The broadcast is 255.255.255.255: nothing may overflow. */
	check_facts(&top);
}

/* Every prefix 8..30, at the bottom and the top of the address space. */
static void test_cidr_every_prefix(void **state)
{
	static const char *const masks[] = {
		[8] = "255.0.0.0",	  [9] = "255.128.0.0",	    [12] = "255.240.0.0",
		[16] = "255.255.0.0",	  [20] = "255.255.240.0",   [23] = "255.255.254.0",
		[24] = "255.255.255.0",	  [25] = "255.255.255.128", [26] = "255.255.255.192",
		[27] = "255.255.255.224", [28] = "255.255.255.240", [29] = "255.255.255.248",
		[30] = "255.255.255.252",
	};

	for (int prefix = 8; prefix <= 30; prefix++) {
		uint64_t size = UINT64_C(1) << (32 - prefix);
		uint32_t bases[] = {0, (uint32_t)(UINT64_C(0x100000000) - size)};

		for (size_t b = 0; b < 2; b++) {
			char text[32], base[IPAM_ADDR_STRLEN];
			struct ipam_net net;
			int ones = 0;

			snprintf(text, sizeof(text), "%s/%d", ipam_addr_format(bases[b], base),
				 prefix);
			net = net_of(text);
			assert_int_equal(net.prefix, prefix);
			assert_int_equal(net.network, bases[b]);
			assert_int_equal(net.usable, size - 2);
			assert_int_equal(net.broadcast, bases[b] + (size - 1));
			assert_int_equal(net.first_usable, bases[b] + 1);
			assert_int_equal(net.last_usable, bases[b] + (size - 2));
			/* The netmask is prefix ones, then zeros. */
			for (int bit = 31; bit >= 0 && (net.netmask >> bit & 1); bit--)
				ones++;
			assert_int_equal(ones, prefix);
			assert_int_equal(__builtin_popcount(net.netmask), prefix);
			if (masks[prefix])
				assert_addr(net.netmask, masks[prefix]);
		}
	}
}

static void test_class_boundaries(void **state)
{
	static const struct {
		const char *addr;
		char addr_class;
	} addrs[] = {
		{"0.0.0.0", 'A'},	  {"127.255.255.255", 'A'}, {"128.0.0.0", 'B'},
		{"191.255.255.255", 'B'}, {"192.0.0.0", 'C'},	    {"223.255.255.255", 'C'},
		{"224.0.0.0", 'D'},	  {"239.255.255.255", 'D'}, {"240.0.0.0", 'E'},
		{"255.255.255.255", 'E'},
	};
	static const struct {
		const char *cidr;
		char addr_class;
	} nets[] = {
		{"0.0.0.0/8", 'A'},    {"127.255.255.252/30", 'A'},
		{"128.0.0.0/30", 'B'}, {"191.255.255.252/30", 'B'},
		{"192.0.0.0/30", 'C'}, {"223.255.255.252/30", 'C'},
		{"224.0.0.0/30", 'D'}, {"239.255.255.252/30", 'D'},
		{"240.0.0.0/30", 'E'}, {"255.255.255.252/30", 'E'},
		{"127.0.0.0/8", 'A'},  {"128.0.0.0/8", 'B'},
	};

	for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++)
		if (ipam_addr_class(addr_of(addrs[i].addr)) != addrs[i].addr_class)
			fail_msg("%s: class %c, want %c", addrs[i].addr,
				 ipam_addr_class(addr_of(addrs[i].addr)), addrs[i].addr_class);
	for (size_t i = 0; i < sizeof(nets) / sizeof(nets[0]); i++)
		if (net_of(nets[i].cidr).addr_class != nets[i].addr_class)
			fail_msg("%s: class %c, want %c", nets[i].cidr,
				 net_of(nets[i].cidr).addr_class, nets[i].addr_class);
}

static void test_private_boundaries(void **state)
{
	static const struct {
		const char *addr;
		bool private_range;
	} addrs[] = {
		{"9.255.255.255", false}, {"10.0.0.0", true},	     {"10.255.255.255", true},
		{"11.0.0.0", false},	  {"172.15.255.255", false}, {"172.16.0.0", true},
		{"172.31.255.255", true}, {"172.32.0.0", false},     {"192.167.255.255", false},
		{"192.168.0.0", true},	  {"192.168.255.255", true}, {"192.169.0.0", false},
		{"100.64.0.1", false},	  {"8.8.8.8", false},
	};
	static const struct {
		const char *cidr;
		bool private_range;
	} nets[] = {
		{"10.0.0.0/8", true},
		{"10.255.255.252/30", true},
		{"9.255.255.252/30", false},
		{"11.0.0.0/30", false},
		{"172.15.255.252/30", false},
		{"172.16.0.0/30", true},
		{"172.31.255.252/30", true},
		{"172.32.0.0/30", false},
		{"172.16.0.0/12", true},
		{"192.168.0.0/16", true},
		{"192.168.255.252/30", true},
		{"192.169.0.0/30", false},
		/* Larger than a private range, so only partly private: not private. */
		{"172.0.0.0/8", false},
		{"172.0.0.0/11", false},
		{"192.168.0.0/15", false},
		{"192.0.0.0/8", false},
		{"172.24.0.0/13", true},
	};

	for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++)
		if (ipam_addr_private(addr_of(addrs[i].addr)) != addrs[i].private_range)
			fail_msg("%s: private is %d", addrs[i].addr, !addrs[i].private_range);
	for (size_t i = 0; i < sizeof(nets) / sizeof(nets[0]); i++)
		if (net_of(nets[i].cidr).private_range != nets[i].private_range)
			fail_msg("%s: private is %d", nets[i].cidr, !nets[i].private_range);
}

static void expect_cidr_error(const char *text, const char *want)
{
	struct kerr err;
	struct ipam_net net, before;

	memset(&err, 0, sizeof(err));
	memset(&net, 0xa5, sizeof(net));
	before = net;
	if (ipam_cidr_parse(text, &net, &err) != -1)
		fail_msg("\"%s\" parsed", text ? text : "(null)");
	if (strcmp(err.msg, want) != 0)
		fail_msg("\"%s\": got \"%s\", want \"%s\"", text ? text : "(null)", err.msg, want);
	assert_int_equal(err.status, 400);
	assert_string_equal(err.field, "cidr");
	assert_memory_equal(&net, &before, sizeof(net));
}

static void test_host_bits(void **state)
{
	expect_cidr_error("10.0.0.5/24",
			  "10.0.0.5/24 has host bits set; did you mean 10.0.0.0/24?");
	expect_cidr_error("192.168.1.130/25",
			  "192.168.1.130/25 has host bits set; did you mean 192.168.1.128/25?");
	expect_cidr_error("172.31.255.255/12",
			  "172.31.255.255/12 has host bits set; did you mean 172.16.0.0/12?");
	expect_cidr_error("10.1.2.3/8", "10.1.2.3/8 has host bits set; did you mean 10.0.0.0/8?");
	expect_cidr_error("10.0.0.3/30",
			  "10.0.0.3/30 has host bits set; did you mean 10.0.0.0/30?");
	expect_cidr_error("10.0.0.9/29",
			  "10.0.0.9/29 has host bits set; did you mean 10.0.0.8/29?");
	expect_cidr_error("255.255.255.255/8",
			  "255.255.255.255/8 has host bits set; did you mean 255.0.0.0/8?");

	/* The lowest host bit of every prefix, and the network it belongs to parses. */
	for (int prefix = 8; prefix <= 30; prefix++) {
		uint32_t low = UINT32_C(1) << (32 - prefix - 1);
		char text[32], want[128], a[IPAM_ADDR_STRLEN];

		snprintf(text, sizeof(text), "%s/%d", ipam_addr_format(0x0a000000 | low, a),
			 prefix);
		snprintf(want, sizeof(want), "%s has host bits set; did you mean 10.0.0.0/%d?",
			 text, prefix);
		expect_cidr_error(text, want);
		/* The lowest network bit is no host bit. */
		snprintf(text, sizeof(text), "%s/%d", ipam_addr_format(0x0a000000 | low << 1, a),
			 prefix);
		net_of(text);
	}
}

static void test_bad_input(void **state)
{
	static const struct {
		const char *text;
		const char *want;
	} cases[] = {
		/* Prefix out of range, either side. */
		{"10.0.0.0/7",
		 "prefix length /7 of 10.0.0.0/7 is out of range; networks are /8 to /30"},
		{"10.0.0.0/31",
		 "prefix length /31 of 10.0.0.0/31 is out of range; networks are /8 to /30"},
		{"10.0.0.0/32",
		 "prefix length /32 of 10.0.0.0/32 is out of range; networks are /8 to /30"},
		{"0.0.0.0/0",
		 "prefix length /0 of 0.0.0.0/0 is out of range; networks are /8 to /30"},
		{"10.0.0.0/100",
		 "prefix length /100 of 10.0.0.0/100 is out of range; networks are /8 to /30"},
		/* Octets over 255. */
		{"10.0.0.256/24",
		 "\"10.0.0.256/24\" is not an IPv4 CIDR (fourth octet 256 is over 255)"},
		{"256.0.0.0/8",
		 "\"256.0.0.0/8\" is not an IPv4 CIDR (first octet 256 is over 255)"},
		{"10.0.1000.0/24",
		 "\"10.0.1000.0/24\" is not an IPv4 CIDR (third octet 1000 is over 255)"},
		/* Leading zeros, which inet_aton would read as octal. */
		{"010.0.0.0/8",
		 "\"010.0.0.0/8\" is not an IPv4 CIDR (first octet 010 has a leading "
		 "zero)"},
		{"10.0.0.00/24",
		 "\"10.0.0.00/24\" is not an IPv4 CIDR (fourth octet 00 has a leading zero)"},
		{"10.0.0.0/024",
		 "\"10.0.0.0/024\" is not an IPv4 CIDR (prefix length 024 has a leading zero)"},
		{"10.0.0.0/08",
		 "\"10.0.0.0/08\" is not an IPv4 CIDR (prefix length 08 has a leading "
		 "zero)"},
		/* Missing parts. */
		{"10.0.0.0",
		 "\"10.0.0.0\" has no prefix length; expected a.b.c.d/N, e.g. 10.0.0.0/24"},
		{"10.0.0.0/", "\"10.0.0.0/\" is not an IPv4 CIDR (prefix length is missing)"},
		{"10.0.0/24", "\"10.0.0/24\" is not an IPv4 CIDR (fourth octet is missing)"},
		{"10..0.0/24",
		 "\"10..0.0/24\" is not an IPv4 CIDR (second octet expected, found \".\")"},
		{"/24", "\"/24\" is not an IPv4 CIDR (first octet expected, found \"/\")"},
		/* Trailing and leading garbage. */
		{"10.0.0.0/24x",
		 "\"10.0.0.0/24x\" is not an IPv4 CIDR (unexpected \"x\" after the prefix length)"},
		{"10.0.0.0/24 ",
		 "\"10.0.0.0/24 \" is not an IPv4 CIDR (unexpected \" \" after the prefix length)"},
		{"10.0.0.0/24\n", "\"10.0.0.0/24\n\" is not an IPv4 CIDR (unexpected \"\n\" after "
				  "the prefix length)"},
		{"10.0.0.0/24/24",
		 "\"10.0.0.0/24/24\" is not an IPv4 CIDR (unexpected \"/24\" after the prefix "
		 "length)"},
		{"10.0.0.0.0/24",
		 "\"10.0.0.0.0/24\" is not an IPv4 CIDR (unexpected \".0/24\" after "
		 "the fourth octet)"},
		{"10.0.0.0 /24", "\"10.0.0.0 /24\" is not an IPv4 CIDR (unexpected \" /24\" after "
				 "the fourth octet)"},
		{" 10.0.0.0/24",
		 "\" 10.0.0.0/24\" is not an IPv4 CIDR (first octet expected, found \" \")"},
		{"0x0a.0.0.0/8",
		 "\"0x0a.0.0.0/8\" is not an IPv4 CIDR (unexpected \"x\" after the first octet)"},
		{"a.b.c.d/24",
		 "\"a.b.c.d/24\" is not an IPv4 CIDR (first octet expected, found \"a\")"},
		/* Signs. */
		{"10.0.0.-0/24",
		 "\"10.0.0.-0/24\" is not an IPv4 CIDR (fourth octet expected, found \"-\")"},
		{"10.0.0.0/-8",
		 "\"10.0.0.0/-8\" is not an IPv4 CIDR (prefix length expected, found \"-\")"},
		{"10.0.0.0/+8",
		 "\"10.0.0.0/+8\" is not an IPv4 CIDR (prefix length expected, found \"+\")"},
		/* Nothing at all. */
		{"", "cidr is empty; expected a.b.c.d/N, e.g. 10.0.0.0/24"},
		{NULL, "cidr is empty; expected a.b.c.d/N, e.g. 10.0.0.0/24"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect_cidr_error(cases[i].text, cases[i].want);

	/* Both ends of the range are fine. */
	net_of("10.0.0.0/8");
	net_of("10.0.0.0/30");
}

/* A very long input is cut short in the message, not overflowing it. */
static void test_long_input(void **state)
{
	char text[2048];
	struct kerr err = {0};
	struct ipam_net net;

	memset(text, '1', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	assert_int_equal(ipam_cidr_parse(text, &net, &err), -1);
	assert_true(strlen(err.msg) < sizeof(err.msg));
	assert_non_null(strstr(err.msg, "first octet 111111111111 is over 255"));
}

static void expect_overlap(const char *a, const char *b, bool want)
{
	struct ipam_net na = net_of(a), nb = net_of(b);

	if (ipam_overlap(&na, &nb) != want || ipam_overlap(&nb, &na) != want)
		fail_msg("%s and %s: overlap should be %s", a, b, want ? "true" : "false");
}

static void test_overlap(void **state)
{
	/* Identical. */
	expect_overlap("10.0.0.0/24", "10.0.0.0/24", true);
	expect_overlap("10.0.0.0/8", "10.0.0.0/8", true);
	/* Nested, at the start, in the middle and at the end of the outer network. */
	expect_overlap("10.0.0.0/8", "10.0.0.0/30", true);
	expect_overlap("10.0.0.0/8", "10.1.2.0/24", true);
	expect_overlap("10.0.0.0/8", "10.255.255.252/30", true);
	expect_overlap("10.0.0.0/23", "10.0.1.0/24", true);
	expect_overlap("10.0.0.0/29", "10.0.0.4/30", true);
	expect_overlap("172.16.0.0/12", "172.31.255.0/24", true);
	/* Adjacent: sharing a boundary is not sharing an address. */
	expect_overlap("10.0.0.0/24", "10.0.1.0/24", false);
	expect_overlap("10.0.0.0/25", "10.0.0.128/25", false);
	expect_overlap("10.0.0.0/30", "10.0.0.4/30", false);
	expect_overlap("10.0.0.0/8", "9.255.255.252/30", false);
	expect_overlap("10.0.0.0/8", "11.0.0.0/30", false);
	expect_overlap("172.16.0.0/12", "172.32.0.0/24", false);
	/* Far apart. */
	expect_overlap("10.0.0.0/24", "192.168.0.0/16", false);
	/* The ends of the address space. */
	expect_overlap("0.0.0.0/8", "0.0.0.0/30", true);
	expect_overlap("255.0.0.0/8", "255.255.255.252/30", true);
	expect_overlap("255.0.0.0/8", "254.255.255.252/30", false);
	expect_overlap("0.0.0.0/8", "255.0.0.0/8", false);
}

static void expect_gateway_error(const struct ipam_net *net, const char *text, const char *want)
{
	struct kerr err;

	memset(&err, 0, sizeof(err));
	if (ipam_gateway_check(net, text, &err) != -1)
		fail_msg("gateway %s accepted", text ? text : "(null)");
	assert_string_equal(err.msg, want);
	assert_int_equal(err.status, 400);
	assert_string_equal(err.field, "gateway");
}

static void expect_gateway_ok(const struct ipam_net *net, const char *text)
{
	struct kerr err = {0};

	if (ipam_gateway_check(net, text, &err) != 0)
		fail_msg("gateway %s refused: %s", text, err.msg);
}

static void test_gateway(void **state)
{
	struct ipam_net net = net_of("10.0.0.0/24");
	struct ipam_net small = net_of("10.0.0.4/30");
	struct ipam_net big = net_of("10.0.0.0/8");

	assert_addr(ipam_gateway_default(&net), "10.0.0.1");
	assert_addr(ipam_gateway_default(&small), "10.0.0.5");
	assert_addr(ipam_gateway_default(&big), "10.0.0.1");

	expect_gateway_ok(&net, "10.0.0.1");
	expect_gateway_ok(&net, "10.0.0.100");
	expect_gateway_ok(&net, "10.0.0.254");
	expect_gateway_ok(&small, "10.0.0.5");
	expect_gateway_ok(&small, "10.0.0.6");
	expect_gateway_ok(&big, "10.255.255.254");

	expect_gateway_error(&net, "10.0.0.0",
			     "gateway 10.0.0.0 is the network address of 10.0.0.0/24, not a host "
			     "address");
	expect_gateway_error(&net, "10.0.0.255",
			     "gateway 10.0.0.255 is the broadcast address of 10.0.0.0/24, not a "
			     "host address");
	expect_gateway_error(&net, "10.0.1.1",
			     "gateway 10.0.1.1 is outside network 10.0.0.0/24 (usable 10.0.0.1 to "
			     "10.0.0.254)");
	expect_gateway_error(
		&net, "9.255.255.255",
		"gateway 9.255.255.255 is outside network 10.0.0.0/24 (usable 10.0.0.1 "
		"to 10.0.0.254)");
	expect_gateway_error(&small, "10.0.0.4",
			     "gateway 10.0.0.4 is the network address of 10.0.0.4/30, not a host "
			     "address");
	expect_gateway_error(&small, "10.0.0.7",
			     "gateway 10.0.0.7 is the broadcast address of 10.0.0.4/30, not a host "
			     "address");
	expect_gateway_error(&small, "10.0.0.8",
			     "gateway 10.0.0.8 is outside network 10.0.0.4/30 (usable 10.0.0.5 to "
			     "10.0.0.6)");
	expect_gateway_error(&net, "10.0.0.01",
			     "gateway \"10.0.0.01\" is not an IPv4 address (fourth octet 01 has a "
			     "leading zero)");
	expect_gateway_error(&net, "10.0.0.1/24",
			     "gateway \"10.0.0.1/24\" is not an IPv4 address (unexpected \"/24\" "
			     "after the fourth octet)");
	expect_gateway_error(&net, "", "gateway \"\" is not an IPv4 address (it is empty)");
	expect_gateway_error(&net, NULL, "gateway \"\" is not an IPv4 address (it is empty)");
}

static void test_net_json(void **state)
{
	struct ipam_net net = net_of("172.16.4.0/22");
	struct json_object *o = ipam_net_json(&net), *v;
	static const struct {
		const char *key;
		const char *want;
	} strings[] = {
		{"cidr", "172.16.4.0/22"},
		{"network", "172.16.4.0"},
		{"netmask", "255.255.252.0"},
		{"broadcast", "172.16.7.255"},
		{"first_usable", "172.16.4.1"},
		{"last_usable", "172.16.7.254"},
		{"class", "B"},
	};

	for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
		assert_true(json_object_object_get_ex(o, strings[i].key, &v));
		assert_true(json_object_is_type(v, json_type_string));
		assert_string_equal(json_object_get_string(v), strings[i].want);
	}
	assert_true(json_object_object_get_ex(o, "prefix", &v));
	assert_true(json_object_is_type(v, json_type_int));
	assert_int_equal(json_object_get_int(v), 22);
	assert_true(json_object_object_get_ex(o, "usable_hosts", &v));
	assert_true(json_object_is_type(v, json_type_int));
	assert_int_equal(json_object_get_int64(v), 1022);
	assert_true(json_object_object_get_ex(o, "private", &v));
	assert_true(json_object_is_type(v, json_type_boolean));
	assert_true(json_object_get_boolean(v));
	assert_int_equal(json_object_object_length(o), 10);
	json_object_put(o);

	net = net_of("10.0.0.0/8");
	o = ipam_net_json(&net);
	assert_true(json_object_object_get_ex(o, "usable_hosts", &v));
	assert_int_equal(json_object_get_int64(v), 16777214);
	json_object_put(o);

	net = net_of("8.8.8.0/24");
	o = ipam_net_json(&net);
	assert_true(json_object_object_get_ex(o, "private", &v));
	assert_false(json_object_get_boolean(v));
	assert_true(json_object_object_get_ex(o, "class", &v));
	assert_string_equal(json_object_get_string(v), "A");
	json_object_put(o);
}

static void pool_of(struct ipam_pool *pool, const char *cidr, const char *gateway)
{
	struct ipam_net net = net_of(cidr);
	struct kerr err = {0};

	if (ipam_pool_init(pool, &net, gateway ? addr_of(gateway) : ipam_gateway_default(&net),
			   &err) < 0)
		fail_msg("pool %s gateway %s: %s", cidr, gateway ? gateway : "default", err.msg);
}

static void expect_alloc(struct ipam_pool *pool, const char *want)
{
	struct kerr err = {0};
	uint32_t a;

	if (ipam_alloc(pool, &a, &err) < 0)
		fail_msg("no address, want %s: %s", want, err.msg);
	assert_addr(a, want);
}

static void expect_full(struct ipam_pool *pool, const char *want)
{
	struct kerr err = {0};
	uint32_t a = 0xdeadbeef, assigned = pool->assigned;

	assert_int_equal(ipam_alloc(pool, &a, &err), -1);
	assert_string_equal(err.msg, want);
	assert_int_equal(err.status, 409);
	assert_string_equal(err.field, "address");
	assert_int_equal(a, 0xdeadbeef);
	assert_int_equal(pool->assigned, assigned);
}

static void test_pool_fills_slash29(void **state)
{
	struct ipam_pool pool;
	static const char *const full =
		"network 10.0.0.8/29 has no free address: all 5 assignable addresses are in use";

	/* Gateway first usable (the default): .9 is never handed out. */
	pool_of(&pool, "10.0.0.8/29", NULL);
	assert_int_equal(pool.capacity, 5);
	expect_alloc(&pool, "10.0.0.10");
	expect_alloc(&pool, "10.0.0.11");
	expect_alloc(&pool, "10.0.0.12");
	expect_alloc(&pool, "10.0.0.13");
	expect_alloc(&pool, "10.0.0.14");
	assert_int_equal(pool.assigned, 5);
	expect_full(&pool, full);
	/* Full stays full. */
	expect_full(&pool, full);
	ipam_pool_free(&pool);

	/* Gateway last usable. */
	pool_of(&pool, "10.0.0.8/29", "10.0.0.14");
	for (int i = 9; i <= 13; i++) {
		char want[IPAM_ADDR_STRLEN];

		snprintf(want, sizeof(want), "10.0.0.%d", i);
		expect_alloc(&pool, want);
	}
	expect_full(&pool, full);
	ipam_pool_free(&pool);

	/* Gateway in the middle: allocation steps over it. */
	pool_of(&pool, "10.0.0.8/29", "10.0.0.11");
	expect_alloc(&pool, "10.0.0.9");
	expect_alloc(&pool, "10.0.0.10");
	expect_alloc(&pool, "10.0.0.12");
	expect_alloc(&pool, "10.0.0.13");
	expect_alloc(&pool, "10.0.0.14");
	expect_full(&pool, full);
	ipam_pool_free(&pool);
}

static void test_pool_slash30(void **state)
{
	struct ipam_pool pool;

	/* Two usable addresses, one of them the gateway: exactly one to hand out. */
	pool_of(&pool, "10.0.0.4/30", NULL);
	assert_int_equal(pool.capacity, 1);
	expect_alloc(&pool, "10.0.0.6");
	expect_full(
		&pool,
		"network 10.0.0.4/30 has no free address: all 1 assignable addresses are in use");
	ipam_pool_free(&pool);

	pool_of(&pool, "10.0.0.4/30", "10.0.0.6");
	expect_alloc(&pool, "10.0.0.5");
	expect_full(
		&pool,
		"network 10.0.0.4/30 has no free address: all 1 assignable addresses are in use");
	ipam_pool_free(&pool);
}

/*
 * Fill pools of every size from /20 to /30 with the gateway at each end and in the
 * middle: exactly the usable addresses but the gateway come out, in order, once each.
 */
static void test_pool_never_hands_out_fixed(void **state)
{
	for (int prefix = 20; prefix <= 30; prefix++) {
		for (int where = 0; where < 3; where++) {
			char cidr[32];
			struct ipam_net net;
			struct ipam_pool pool;
			struct kerr err = {0};
			uint32_t gateway, a, prev = 0, count = 0;

			snprintf(cidr, sizeof(cidr), "192.168.0.0/%d", prefix);
			net = net_of(cidr);
			gateway = where == 0   ? net.first_usable
				  : where == 1 ? net.last_usable
					       : net.network + net.usable / 2;
			assert_int_equal(ipam_pool_init(&pool, &net, gateway, &err), 0);
			while (ipam_alloc(&pool, &a, &err) == 0) {
				if (a == net.network || a == net.broadcast || a == gateway ||
				    a < net.first_usable || a > net.last_usable)
					fail_msg("%s gateway %u: handed out %u", cidr, gateway, a);
				if (count > 0 && a <= prev)
					fail_msg("%s: %u after %u", cidr, a, prev);
				prev = a;
				count++;
			}
			assert_int_equal(count, net.usable - 1);
			assert_int_equal(pool.assigned, pool.capacity);
			assert_true(ipam_pool_in_use(&pool, net.network));
			assert_true(ipam_pool_in_use(&pool, net.broadcast));
			assert_true(ipam_pool_in_use(&pool, gateway));
			ipam_pool_free(&pool);
		}
	}
}

static void test_pool_release_and_reuse(void **state)
{
	struct ipam_pool pool;

	pool_of(&pool, "10.0.0.8/29", NULL);
	for (int i = 0; i < 5; i++)
		ipam_alloc(&pool, &(uint32_t){0}, NULL);
	assert_int_equal(pool.assigned, 5);

	/* The lowest released address comes back first. */
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.13")), 0);
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.11")), 0);
	assert_false(ipam_pool_in_use(&pool, addr_of("10.0.0.11")));
	assert_int_equal(pool.assigned, 3);
	expect_alloc(&pool, "10.0.0.11");
	expect_alloc(&pool, "10.0.0.13");
	expect_full(
		&pool,
		"network 10.0.0.8/29 has no free address: all 5 assignable addresses are in use");

	/* A double release, and releasing what was never handed out, change nothing. */
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.12")), 0);
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.12")), -1);
	assert_int_equal(pool.assigned, 4);
	/* The fixed three cannot be released. */
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.8")), -1);
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.9")), -1);
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.15")), -1);
	assert_true(ipam_pool_in_use(&pool, addr_of("10.0.0.8")));
	assert_true(ipam_pool_in_use(&pool, addr_of("10.0.0.9")));
	assert_true(ipam_pool_in_use(&pool, addr_of("10.0.0.15")));
	/* Nor an address of another network (the next /29 shares the bitmap's word). */
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.17")), -1);
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.7")), -1);
	assert_false(ipam_pool_in_use(&pool, addr_of("10.0.0.17")));
	assert_int_equal(pool.assigned, 4);
	expect_alloc(&pool, "10.0.0.12");
	expect_full(
		&pool,
		"network 10.0.0.8/29 has no free address: all 5 assignable addresses are in use");

	/* Empty it, and it fills again in the same order. */
	for (int i = 10; i <= 14; i++) {
		char a[IPAM_ADDR_STRLEN];

		snprintf(a, sizeof(a), "10.0.0.%d", i);
		assert_int_equal(ipam_release(&pool, addr_of(a)), 0);
	}
	assert_int_equal(pool.assigned, 0);
	expect_alloc(&pool, "10.0.0.10");
	ipam_pool_free(&pool);
}

static void expect_reserve_error(struct ipam_pool *pool, const char *addr, int status,
				 const char *want)
{
	struct kerr err;
	uint32_t assigned = pool->assigned;

	memset(&err, 0, sizeof(err));
	if (ipam_reserve(pool, addr_of(addr), &err) != -1)
		fail_msg("%s reserved", addr);
	assert_string_equal(err.msg, want);
	assert_int_equal(err.status, status);
	assert_string_equal(err.field, "address");
	assert_int_equal(pool->assigned, assigned);
}

static void test_pool_reserve(void **state)
{
	struct ipam_pool pool;
	struct kerr err = {0};

	pool_of(&pool, "10.0.0.0/24", NULL);
	expect_alloc(&pool, "10.0.0.2");
	assert_int_equal(ipam_reserve(&pool, addr_of("10.0.0.3"), &err), 0);
	assert_int_equal(ipam_reserve(&pool, addr_of("10.0.0.254"), &err), 0);
	assert_int_equal(pool.assigned, 3);
	assert_true(ipam_pool_in_use(&pool, addr_of("10.0.0.3")));

	/* Each conflict says which it is. */
	expect_reserve_error(&pool, "10.0.0.3", 409,
			     "address 10.0.0.3 of network 10.0.0.0/24 is already in use");
	expect_reserve_error(&pool, "10.0.0.2", 409,
			     "address 10.0.0.2 of network 10.0.0.0/24 is already in use");
	expect_reserve_error(&pool, "10.0.0.1", 409,
			     "address 10.0.0.1 is the gateway of network 10.0.0.0/24");
	expect_reserve_error(&pool, "10.0.0.0", 400,
			     "address 10.0.0.0 is the network address of 10.0.0.0/24 and is never "
			     "assigned");
	expect_reserve_error(&pool, "10.0.0.255", 400,
			     "address 10.0.0.255 is the broadcast address of 10.0.0.0/24 and is "
			     "never assigned");
	expect_reserve_error(&pool, "10.0.1.5", 400,
			     "address 10.0.1.5 is outside network 10.0.0.0/24");
	expect_reserve_error(&pool, "9.255.255.255", 400,
			     "address 9.255.255.255 is outside network 10.0.0.0/24");

	/* Allocation steps over reserved addresses. */
	expect_alloc(&pool, "10.0.0.4");
	/* A released reservation is free again, for either kind. */
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.3")), 0);
	expect_alloc(&pool, "10.0.0.3");
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.3")), 0);
	assert_int_equal(ipam_reserve(&pool, addr_of("10.0.0.3"), &err), 0);
	ipam_pool_free(&pool);

	/* Reserving the last free address fills the pool. */
	pool_of(&pool, "10.0.0.4/30", NULL);
	assert_int_equal(ipam_reserve(&pool, addr_of("10.0.0.6"), &err), 0);
	expect_full(
		&pool,
		"network 10.0.0.4/30 has no free address: all 1 assignable addresses are in use");
	ipam_pool_free(&pool);
}

static void test_pool_bad_gateway(void **state)
{
	static const struct {
		const char *gateway;
		const char *want;
	} cases[] = {
		{"10.0.0.0", "gateway 10.0.0.0 is the network address of 10.0.0.0/24, not a host "
			     "address"},
		{"10.0.0.255", "gateway 10.0.0.255 is the broadcast address of 10.0.0.0/24, not a "
			       "host address"},
		{"10.0.1.1", "gateway 10.0.1.1 is outside network 10.0.0.0/24 (usable 10.0.0.1 to "
			     "10.0.0.254)"},
	};
	struct ipam_net net = net_of("10.0.0.0/24");

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct ipam_pool pool;
		struct kerr err = {0};

		memset(&pool, 0xa5, sizeof(pool));
		assert_int_equal(ipam_pool_init(&pool, &net, addr_of(cases[i].gateway), &err), -1);
		assert_string_equal(err.msg, cases[i].want);
		assert_int_equal(err.status, 400);
		assert_string_equal(err.field, "gateway");
		/* It owns nothing, and freeing it anyway is harmless. */
		assert_null(pool.bits);
		ipam_pool_free(&pool);
	}
}

/* A freed pool refuses everything rather than touching a bitmap it no longer has. */
static void test_pool_freed(void **state)
{
	struct ipam_pool pool;
	struct kerr err = {0};
	uint32_t a;

	pool_of(&pool, "10.0.0.0/24", NULL);
	expect_alloc(&pool, "10.0.0.2");
	ipam_pool_free(&pool);
	assert_null(pool.bits);
	assert_int_equal(pool.nwords, 0);
	ipam_pool_free(&pool);
	assert_int_equal(ipam_alloc(&pool, &a, &err), -1);
	assert_int_equal(ipam_reserve(&pool, addr_of("10.0.0.3"), &err), -1);
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.2")), -1);
	assert_false(ipam_pool_in_use(&pool, addr_of("10.0.0.2")));
}

static double elapsed_ms(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) * 1e3 +
	       (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

static void test_pool_slash8(void **state)
{
	struct ipam_pool pool;
	struct ipam_net net = net_of("10.0.0.0/8");
	struct kerr err = {0};
	struct timespec start;
	uint32_t a;
	double ms;

	clock_gettime(CLOCK_MONOTONIC, &start);
	assert_int_equal(ipam_pool_init(&pool, &net, ipam_gateway_default(&net), &err), 0);
	expect_alloc(&pool, "10.0.0.2");
	ms = elapsed_ms(&start);
	/* One bit per address: 2^24 bits in 64-bit words, 2 MiB. */
	assert_int_equal(pool.nwords, (1u << 24) / 64);
	assert_int_equal(pool.capacity, 16777213);
	if (ms > 200)
		fail_msg("a /8 took %.1f ms to set up and hand out one address", ms);

	/* The far end of the bitmap. */
	assert_int_equal(ipam_reserve(&pool, addr_of("10.255.255.254"), &err), 0);
	expect_reserve_error(&pool, "10.255.255.255", 400,
			     "address 10.255.255.255 is the broadcast address of 10.0.0.0/8 and is "
			     "never assigned");
	expect_reserve_error(&pool, "11.0.0.0", 400,
			     "address 11.0.0.0 is outside network 10.0.0.0/8");

	/* Many allocations in a row stay cheap: each picks up where the last one left off. */
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (uint32_t i = 0; i < 100000; i++) {
		assert_int_equal(ipam_alloc(&pool, &a, &err), 0);
		assert_int_equal(a, addr_of("10.0.0.3") + i);
	}
	ms = elapsed_ms(&start);
	if (ms > 1000)
		fail_msg("100000 allocations in a /8 took %.1f ms", ms);
	assert_int_equal(pool.assigned, 100002);

	/* A low release is found again at once. */
	assert_int_equal(ipam_release(&pool, addr_of("10.0.0.77")), 0);
	expect_alloc(&pool, "10.0.0.77");
	assert_int_equal(ipam_release(&pool, addr_of("10.255.255.254")), 0);

	ipam_pool_free(&pool);
	/* The bitmap is gone (and LeakSanitizer would say so at exit if it were not). */
	assert_null(pool.bits);
	assert_int_equal(pool.nwords, 0);
}

/* A whole /8, to the last address: 16,777,213 of them, then full. */
static void test_pool_slash8_fills(void **state)
{
	struct ipam_pool pool;
	struct ipam_net net = net_of("10.0.0.0/8");
	struct kerr err = {0};
	uint32_t a = 0, count = 0;

	assert_int_equal(ipam_pool_init(&pool, &net, addr_of("10.128.0.0"), &err), 0);
	while (ipam_alloc(&pool, &a, &err) == 0) {
		if (a != net.first_usable + count + (count >= 0x7fffff))
			fail_msg("allocation %u: %u", count, a);
		count++;
	}
	assert_int_equal(count, 16777213);
	assert_addr(a, "10.255.255.254");
	assert_string_equal(err.msg, "network 10.0.0.0/8 has no free address: all 16777213 "
				     "assignable addresses are in use");
	ipam_pool_free(&pool);
}

/* A small deterministic generator, so a failure can be replayed. */
static uint64_t rng_state;

static uint32_t rnd(void)
{
	rng_state = rng_state * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
	return (uint32_t)(rng_state >> 33);
}

/*
 * Random allocations, reservations and releases on a /22 against the obvious model (an
 * array of flags, the lowest free one found by a linear search).
 */
static void test_pool_against_model(void **state)
{
	enum {
		SIZE = 1024
	};
	struct ipam_net net = net_of("172.20.0.0/22");
	uint32_t gateway = net.network + 300;
	struct ipam_pool pool;
	struct kerr err = {0};
	bool used[SIZE] = {false};
	uint32_t assigned = 0;

	assert_int_equal(ipam_pool_init(&pool, &net, gateway, &err), 0);
	used[0] = used[SIZE - 1] = used[300] = true;
	rng_state = UINT64_C(2024);
	for (int step = 0; step < 200000; step++) {
		uint32_t op = rnd() % 10, index = rnd() % SIZE, a;
		int got;

		if (op < 4) {
			size_t want = 0;

			while (want < SIZE && used[want])
				want++;
			got = ipam_alloc(&pool, &a, &err);
			if (want == SIZE) {
				assert_int_equal(got, -1);
			} else {
				if (got != 0 || a != net.network + want)
					fail_msg("step %d: alloc gave %d/%u, want offset %zu", step,
						 got, a - net.network, want);
				used[want] = true;
				assigned++;
			}
		} else if (op < 6) {
			bool fixed = index == 0 || index == SIZE - 1 || index == 300;

			got = ipam_reserve(&pool, net.network + index, &err);
			if (got != (used[index] ? -1 : 0))
				fail_msg("step %d: reserve offset %u gave %d", step, index, got);
			if (fixed)
				assert_int_equal(got, -1);
			if (got == 0) {
				used[index] = true;
				assigned++;
			}
		} else {
			bool fixed = index == 0 || index == SIZE - 1 || index == 300;

			got = ipam_release(&pool, net.network + index);
			if (got != (used[index] && !fixed ? 0 : -1))
				fail_msg("step %d: release offset %u gave %d", step, index, got);
			if (got == 0) {
				used[index] = false;
				assigned--;
			}
		}
		assert_int_equal(pool.assigned, assigned);
		if (step % 10000 == 0)
			for (uint32_t i = 0; i < SIZE; i++)
				assert_int_equal(ipam_pool_in_use(&pool, net.network + i), used[i]);
	}
	ipam_pool_free(&pool);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_addr_parse_and_format),
		cmocka_unit_test(test_cidr_slash24),
		cmocka_unit_test(test_cidr_slash30),
		cmocka_unit_test(test_cidr_slash29),
		cmocka_unit_test(test_cidr_slash8),
		cmocka_unit_test(test_cidr_every_prefix),
		cmocka_unit_test(test_class_boundaries),
		cmocka_unit_test(test_private_boundaries),
		cmocka_unit_test(test_host_bits),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_long_input),
		cmocka_unit_test(test_overlap),
		cmocka_unit_test(test_gateway),
		cmocka_unit_test(test_net_json),
		cmocka_unit_test(test_pool_fills_slash29),
		cmocka_unit_test(test_pool_slash30),
		cmocka_unit_test(test_pool_never_hands_out_fixed),
		cmocka_unit_test(test_pool_release_and_reuse),
		cmocka_unit_test(test_pool_reserve),
		cmocka_unit_test(test_pool_bad_gateway),
		cmocka_unit_test(test_pool_freed),
		cmocka_unit_test(test_pool_slash8),
		cmocka_unit_test(test_pool_slash8_fills),
		cmocka_unit_test(test_pool_against_model),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
