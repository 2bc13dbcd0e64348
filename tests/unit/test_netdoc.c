/*
 * test_netdoc.c - the agent's check of the controller's network desired-state document
 * (netdrv_doc_check(), agentd/netdoc.c): a nat, a bridge and an empty document pass;
 * then each refusal starts from a document that passes, changes one thing, and expects
 * the document refused (status 400) with the field at fault named in err.field and the
 * reason in the message. Were a check removed, its test would see the document pass.
 * Then the nftables tables a guarded document makes (agentd/netnft.c): port security,
 * the control plane and security groups, rule by rule.
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

#include "json.h"
#include "netdrv.h"
#include "netnft.h"

#define HASH "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* Network 3, nat, two segments (untagged and VLAN 100) with ports, as the contract shows. */
static const char nat_doc[] =
	"{\"hash\": \"" HASH "\", \"underlay\": \"10.232.0.11\", \"networks\": ["
	" {\"id\": 3, \"name\": \"lan\", \"mode\": \"nat\", \"cidr\": \"10.50.0.0/24\","
	"  \"prefix\": 24, \"gateway\": \"10.50.0.1\", \"mtu\": 1450, \"dhcp\": true,"
	"  \"dns\": [\"10.50.0.1\"], \"uplink\": null, \"segments\": ["
	"   {\"vlan\": 0, \"vni\": 4096, \"bridge\": \"kb3-0\", \"vxlan\": \"kx3-0\","
	"    \"gateway_mac\": \"02:6b:00:03:00:00\", \"peers\": [\"10.232.0.12\"],"
	"    \"ports\": [{\"ifname\": \"kp7-0\", \"mac\": \"52:54:00:12:34:56\","
	"                 \"address\": \"10.50.0.5\", \"instance\": \"vm1\"}]},"
	"   {\"vlan\": 100, \"vni\": 4196, \"bridge\": \"kb3-100\", \"vxlan\": \"kx3-100\","
	"    \"gateway_mac\": \"02:6b:00:03:00:64\","
	"    \"peers\": [\"10.232.0.12\", \"10.232.0.13\"],"
	"    \"ports\": [{\"ifname\": \"kp8-0\", \"mac\": \"52:54:00:12:34:57\","
	"                 \"address\": \"10.50.0.6\", \"instance\": \"vm2\"},"
	"                {\"ifname\": \"kp9-1\", \"mac\": \"52:54:00:12:34:58\","
	"                 \"address\": \"10.50.0.7\", \"instance\": \"ct1\"}]}"
	"  ]}"
	"]}";

/* Network 4, bridge mode on uplink eth1: no VXLAN, no VNI, a port without an address. */
static const char bridge_doc[] =
	"{\"hash\": \"" HASH "\", \"networks\": ["
	" {\"id\": 4, \"name\": \"wan\", \"mode\": \"bridge\", \"cidr\": \"192.168.10.0/24\","
	"  \"prefix\": 24, \"gateway\": \"192.168.10.1\", \"mtu\": 1500, \"dhcp\": false,"
	"  \"dns\": [], \"uplink\": \"eth1\", \"segments\": ["
	"   {\"vlan\": 0, \"bridge\": \"kb4-0\", \"vxlan\": null, \"peers\": [],"
	"    \"ports\": [{\"ifname\": \"kp7-0\", \"mac\": \"52:54:00:aa:00:01\","
	"                 \"instance\": \"vm1\"}]},"
	"   {\"vlan\": 20, \"bridge\": \"kb4-20\","
	"    \"ports\": [{\"ifname\": \"kp8-0\", \"mac\": \"52:54:00:aa:00:02\","
	"                 \"address\": \"192.168.10.50\", \"instance\": \"vm2\"}]}"
	"  ]}"
	"]}";

/* Network 5, nat, with the protection fields: control plane, groups, port settings. */
static const char guarded_doc[] =
	"{\"hash\": \"" HASH "\", \"underlay\": \"10.232.0.11\","
	" \"control_plane\": [\"10.232.0.1\", \"10.232.0.12\"],"
	" \"security_groups\": ["
	"  {\"name\": \"default\", \"members\": [\"10.60.0.6\"], \"rules\": []},"
	"  {\"name\": \"web\", \"members\": [\"10.60.0.5\"], \"rules\": ["
	"   {\"direction\": \"ingress\", \"action\": \"deny\", \"protocol\": \"tcp\","
	"    \"ports\": \"81\", \"cidr\": \"0.0.0.0/0\"},"
	"   {\"direction\": \"ingress\", \"action\": \"allow\", \"protocol\": \"tcp\","
	"    \"ports\": \"80-90\", \"group\": \"default\"},"
	"   {\"direction\": \"egress\", \"action\": \"deny\", \"protocol\": \"icmp\","
	"    \"cidr\": \"10.0.0.0/8\"}]}],"
	" \"networks\": ["
	" {\"id\": 5, \"name\": \"lan\", \"mode\": \"nat\", \"cidr\": \"10.60.0.0/24\","
	"  \"prefix\": 24, \"gateway\": \"10.60.0.1\", \"mtu\": 1450, \"dhcp\": true,"
	"  \"segments\": ["
	"   {\"vlan\": 0, \"vni\": 4096, \"bridge\": \"kb5-0\", \"vxlan\": \"kx5-0\","
	"    \"gateway_mac\": \"02:6b:00:05:00:00\", \"peers\": [],"
	"    \"ports\": [{\"ifname\": \"kp7-0\", \"mac\": \"52:54:00:12:34:56\","
	"                 \"address\": \"10.60.0.5\", \"instance\": \"vm1\","
	"                 \"security_groups\": [\"web\"]},"
	"                {\"ifname\": \"kp8-0\", \"mac\": \"52:54:00:12:34:57\","
	"                 \"address\": \"10.60.0.6\", \"instance\": \"router\","
	"                 \"port_security\": false, \"security_groups\": [\"default\"]}]}"
	"  ]}"
	"]}";

static const char empty_doc[] = "{\"hash\": \"" HASH "\", \"networks\": []}";

static struct json_object *parse(const char *text)
{
	struct json_object *doc = json_tokener_parse(text);

	if (doc == NULL)
		fail_msg("the test's JSON does not parse: %s", text);
	return doc;
}

/* A document the check accepts: the starting point every refusal changes one thing of. */
static struct json_object *valid(const char *text)
{
	struct json_object *doc = parse(text);
	struct kerr err = {0};

	if (netdrv_doc_check(doc, &err) != 0)
		fail_msg("the valid document is refused: %s (field %s)", err.msg, err.field);
	return doc;
}

static struct json_object *network(struct json_object *doc, size_t ni)
{
	struct json_object *networks = json_object_object_get(doc, "networks");

	assert_non_null(networks);
	assert_true(ni < json_array_len(networks));
	return json_object_array_get_idx(networks, ni);
}

static struct json_object *segment(struct json_object *doc, size_t ni, size_t si)
{
	struct json_object *segments = json_object_object_get(network(doc, ni), "segments");

	assert_non_null(segments);
	assert_true(si < json_array_len(segments));
	return json_object_array_get_idx(segments, si);
}

static struct json_object *port(struct json_object *doc, size_t ni, size_t si, size_t pi)
{
	struct json_object *ports = json_object_object_get(segment(doc, ni, si), "ports");

	assert_non_null(ports);
	assert_true(pi < json_array_len(ports));
	return json_object_array_get_idx(ports, pi);
}

/* Set (or replace) obj.key; val may be NULL for JSON null. */
static void set(struct json_object *obj, const char *key, struct json_object *val)
{
	json_object_object_add(obj, key, val);
}

static void set_str(struct json_object *obj, const char *key, const char *s)
{
	set(obj, key, json_object_new_string(s));
}

static void set_int(struct json_object *obj, const char *key, int64_t v)
{
	set(obj, key, json_object_new_int64(v));
}

/* Replace obj.key with an array of the strings given. */
static void set_strs(struct json_object *obj, const char *key, size_t n, const char *const *s)
{
	struct json_object *arr = json_object_new_array();

	for (size_t i = 0; i < n; i++)
		json_object_array_add(arr, json_object_new_string(s[i]));
	set(obj, key, arr);
}

/*
 * doc is refused with status 400, err.field equal to field (not checked when NULL) and
 * the message holding text. Drops doc.
 */
static void assert_refused(struct json_object *doc, const char *field, const char *text)
{
	struct kerr err = {0};
	int ret = netdrv_doc_check(doc, &err);

	json_object_put(doc);
	if (ret == 0)
		fail_msg("accepted; wanted refused at %s (\"%s\")", field ? field : "?", text);
	assert_int_equal(ret, -1);
	assert_int_equal(err.status, 400);
	if (field && strcmp(err.field, field) != 0)
		fail_msg("refused at field \"%s\", wanted \"%s\" (%s)", err.field, field, err.msg);
	if (strstr(err.msg, text) == NULL)
		fail_msg("message \"%s\" lacks \"%s\"", err.msg, text);
}

/* ---- documents that pass ---------------------------------------------------------- */

static void test_valid_nat(void **state)
{
	struct json_object *doc = valid(nat_doc);

	/* host-only shares nat's rules; boundaries of the MTU and DNS lists pass too. */
	set_str(network(doc, 0), "mode", "host-only");
	set_int(network(doc, 0), "mtu", 576);
	assert_int_equal(netdrv_doc_check(doc, &(struct kerr){0}), 0);
	set_int(network(doc, 0), "mtu", 9000);
	set_strs(network(doc, 0), "dns", 8,
		 (const char *const[]){"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5",
				       "10.0.0.6", "10.0.0.7", "10.0.0.8"});
	set_int(segment(doc, 0, 1), "vlan", 4094);
	set_str(segment(doc, 0, 1), "bridge", "kb3-4094");
	set_str(segment(doc, 0, 1), "vxlan", "kx3-4094");
	set_int(segment(doc, 0, 1), "vni", 16777215);
	assert_int_equal(netdrv_doc_check(doc, &(struct kerr){0}), 0);
	json_object_put(doc);
}

static void test_valid_bridge(void **state)
{
	json_object_put(valid(bridge_doc));
}

static void test_valid_empty(void **state)
{
	json_object_put(valid(empty_doc));
}

/* ---- the top level ---------------------------------------------------------------- */

static void test_non_object(void **state)
{
	struct json_object *arr;

	assert_refused(parse("[]"), "", "must be a JSON object");
	assert_refused(parse("\"" HASH "\""), "", "must be a JSON object");
	assert_refused(parse("42"), "", "must be a JSON object");
	assert_refused(NULL, "", "must be a JSON object");
	/* A valid document wrapped in an array: the shape, not the content, is refused. */
	arr = json_object_new_array();
	json_object_array_add(arr, valid(nat_doc));
	assert_refused(arr, "", "must be a JSON object");
}

static void test_hash_missing(void **state)
{
	struct json_object *doc = valid(nat_doc);

	json_object_object_del(doc, "hash");
	assert_refused(doc, "hash", "'hash' is required");
	doc = valid(nat_doc);
	set(doc, "hash", NULL);
	assert_refused(doc, "hash", "not null");
}

static void test_hash_bad(void **state)
{
	static const char *const bad[] = {
		"",
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",   /* 63 */
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8550", /* 65 */
		"E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",  /* upper */
		"g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  /* not hex */
		"sha256:98fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	};
	struct json_object *doc;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		doc = valid(nat_doc);
		set_str(doc, "hash", bad[i]);
		assert_refused(doc, "hash", "64 lower-case hex digits");
	}
	doc = valid(nat_doc);
	set_int(doc, "hash", 12345);
	assert_refused(doc, "hash", "must be a string");
}

static void test_unknown_top_level_field(void **state)
{
	struct json_object *doc = valid(nat_doc);

	set_str(doc, "overlay", "10.232.0.11");
	assert_refused(doc, "overlay", "unknown field 'overlay'");
	doc = valid(empty_doc);
	set(doc, "version", json_object_new_int(2));
	assert_refused(doc, "version", "unknown field 'version'");
}

static void test_underlay_bad(void **state)
{
	static const char *const bad[] = {
		"not-an-address", "10.232.0", "10.232.0.256", "10.232.0.11/24", "", "::1",
	};
	struct json_object *doc;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		doc = valid(nat_doc);
		set_str(doc, "underlay", bad[i]);
		assert_refused(doc, "underlay", "must be an IPv4 address");
	}
	doc = valid(nat_doc);
	set_int(doc, "underlay", 10);
	assert_refused(doc, "underlay", "must be a string");
	/* A nat network needs a VTEP source: absent (or null) underlay is refused. */
	doc = valid(nat_doc);
	json_object_object_del(doc, "underlay");
	assert_refused(doc, "underlay", "is required with a nat network");
	doc = valid(nat_doc);
	set(doc, "underlay", NULL);
	assert_refused(doc, "underlay", "is required with a nat network");
}

/* ---- a network's fields ----------------------------------------------------------- */

static void test_mode_bad(void **state)
{
	static const char *const bad[] = {"routed", "NAT", "hostonly", "", "bridge "};
	struct json_object *doc;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		doc = valid(nat_doc);
		set_str(network(doc, 0), "mode", bad[i]);
		assert_refused(doc, "networks[0].mode", "must be \"nat\", \"host-only\" or");
	}
	doc = valid(nat_doc);
	json_object_object_del(network(doc, 0), "mode");
	assert_refused(doc, "networks[0].mode", "'mode' is required");
}

static void test_cidr_host_bits(void **state)
{
	struct json_object *doc = valid(nat_doc);

	set_str(network(doc, 0), "cidr", "10.50.0.1/24");
	assert_refused(doc, "networks[0].cidr", "10.50.0.1/24 has host bits set");
	doc = valid(nat_doc);
	set_str(network(doc, 0), "cidr", "10.50.0.128/23");
	assert_refused(doc, "networks[0].cidr", "has host bits set");
	/* Not a CIDR at all, or a prefix outside /1../30. */
	doc = valid(nat_doc);
	set_str(network(doc, 0), "cidr", "10.50.0.0");
	assert_refused(doc, "networks[0].cidr", "must be an IPv4 network");
	doc = valid(nat_doc);
	set_str(network(doc, 0), "cidr", "10.50.0.0/31");
	assert_refused(doc, "networks[0].cidr", "must be an IPv4 network");
}

static void test_prefix_mismatch(void **state)
{
	struct json_object *doc = valid(nat_doc);

	set_int(network(doc, 0), "prefix", 16);
	assert_refused(doc, "networks[0].prefix", "must be 24, the prefix of 10.50.0.0/24");
	doc = valid(nat_doc);
	set_int(network(doc, 0), "prefix", 25);
	assert_refused(doc, "networks[0].prefix", "must be 24");
}

static void test_gateway_outside(void **state)
{
	/* Other subnets, then the network and broadcast addresses of this one. */
	static const char *const bad[] = {"10.51.0.1", "10.50.1.1", "192.168.0.1", "10.50.0.0",
					  "10.50.0.255"};
	struct json_object *doc;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		doc = valid(nat_doc);
		set_str(network(doc, 0), "gateway", bad[i]);
		assert_refused(doc, "networks[0].gateway", "is not a host address of 10.50.0.0/24");
	}
	doc = valid(nat_doc);
	set_str(network(doc, 0), "gateway", "10.50.0.x");
	assert_refused(doc, "networks[0].gateway", "must be an IPv4 address");
	doc = valid(nat_doc);
	json_object_object_del(network(doc, 0), "gateway");
	assert_refused(doc, "networks[0].gateway", "is required on a nat network");
}

static void test_mtu_bad(void **state)
{
	static const int64_t bad[] = {100, 10000, 575, 9001, 0, -1};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct json_object *doc = valid(nat_doc);

		set_int(network(doc, 0), "mtu", bad[i]);
		assert_refused(doc, "networks[0].mtu", "must be between 576 and 9000");
	}
}

static void test_uplink_on_nat(void **state)
{
	struct json_object *doc = valid(nat_doc);

	set_str(network(doc, 0), "uplink", "eth1");
	assert_refused(doc, "networks[0].uplink", "must be null on a nat network");
	doc = valid(nat_doc);
	set_str(network(doc, 0), "mode", "host-only");
	set_str(network(doc, 0), "uplink", "eth1");
	assert_refused(doc, "networks[0].uplink", "must be null on a host-only network");
}

static void test_dns_too_many(void **state)
{
	struct json_object *doc = valid(nat_doc);

	set_strs(network(doc, 0), "dns", 9,
		 (const char *const[]){"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5",
				       "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9"});
	assert_refused(doc, "networks[0].dns", "lists more than 8 servers");
	doc = valid(nat_doc);
	set_strs(network(doc, 0), "dns", 1, (const char *const[]){"dns.example"});
	assert_refused(doc, "networks[0].dns[0]", "must be an IPv4 address");
}

/* ---- a segment's fields ----------------------------------------------------------- */

static void test_vlan_4095(void **state)
{
	struct json_object *doc = valid(nat_doc);

	/* Names made to match, so only the VLAN number is wrong. */
	set_int(segment(doc, 0, 1), "vlan", 4095);
	set_str(segment(doc, 0, 1), "bridge", "kb3-4095");
	set_str(segment(doc, 0, 1), "vxlan", "kx3-4095");
	assert_refused(doc, "networks[0].segments[1].vlan",
		       "must be between 0 (untagged) and 4094");
	doc = valid(nat_doc);
	set_int(segment(doc, 0, 1), "vlan", -1);
	assert_refused(doc, "networks[0].segments[1].vlan",
		       "must be between 0 (untagged) and 4094");
}

static void test_vni_0(void **state)
{
	struct json_object *doc = valid(nat_doc);

	set_int(segment(doc, 0, 0), "vni", 0);
	assert_refused(doc, "networks[0].segments[0].vni", "must be between 1 and 16777215");
	doc = valid(nat_doc);
	set_int(segment(doc, 0, 1), "vni", 16777216);
	assert_refused(doc, "networks[0].segments[1].vni", "must be between 1 and 16777215");
	doc = valid(nat_doc);
	json_object_object_del(segment(doc, 0, 0), "vni");
	assert_refused(doc, "networks[0].segments[0].vni", "is required on a nat network");
}

static void test_bridge_name(void **state)
{
	static const char *const bad[] = {
		"kb3-1",	    /* another VLAN's */
		"kb4-0",	    /* another network's */
		"kb03-0",	    /* not canonical */
		"kb3-00",	    /* not canonical */
		"kx3-0",	    /* the VXLAN's */
		"kb3-0; rm -rf /",  /* a command in the name */
		"kb3-000000000000", /* 16 characters: too long for an interface */
		"br0",
		"",
	};
	struct json_object *doc;

	assert_int_equal(strlen("kb3-000000000000"), 16);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		doc = valid(nat_doc);
		set_str(segment(doc, 0, 0), "bridge", bad[i]);
		assert_refused(doc, "networks[0].segments[0].bridge",
			       "must be \"kb3-0\" (kb<network id>-<vlan>)");
	}
	doc = valid(nat_doc);
	set_str(segment(doc, 0, 1), "bridge", "kb3-0");
	assert_refused(doc, "networks[0].segments[1].bridge", "must be \"kb3-100\"");
	/* Bridge mode names its bridges the same way. */
	doc = valid(bridge_doc);
	set_str(segment(doc, 0, 1), "bridge", "kb4-0");
	assert_refused(doc, "networks[0].segments[1].bridge", "must be \"kb4-20\"");
}

static void test_vxlan_name(void **state)
{
	static const char *const bad[] = {
		"kx3-100", "kx4-0", "kx03-0", "kb3-0", "kx3-0; reboot", "vxlan0", "",
	};
	struct json_object *doc;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		doc = valid(nat_doc);
		set_str(segment(doc, 0, 0), "vxlan", bad[i]);
		assert_refused(doc, "networks[0].segments[0].vxlan",
			       "must be \"kx3-0\" (kx<network id>-<vlan>)");
	}
	doc = valid(nat_doc);
	set(segment(doc, 0, 1), "vxlan", NULL);
	assert_refused(doc, "networks[0].segments[1].vxlan", "must be \"kx3-100\"");
	/* Bridge mode has no VXLAN. */
	doc = valid(bridge_doc);
	set_str(segment(doc, 0, 0), "vxlan", "kx4-0");
	assert_refused(doc, "networks[0].segments[0].vxlan", "must be null on a bridge network");
}

static void test_multicast_mac(void **state)
{
	static const char *const bad[] = {
		"01:00:5e:00:00:01", /* IPv4 multicast */
		"33:33:00:00:00:01", /* IPv6 multicast */
		"ff:ff:ff:ff:ff:ff", /* broadcast */
		"53:54:00:12:34:56", /* group bit set */
		"00:00:00:00:00:00", "52:54:00:12:34", "52-54-00-12-34-56",
	};
	struct json_object *doc;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		doc = valid(nat_doc);
		set_str(port(doc, 0, 1, 1), "mac", bad[i]);
		assert_refused(doc, "networks[0].segments[1].ports[1].mac",
			       "must be a unicast MAC address");
	}
	/* The anycast gateway MAC too. */
	doc = valid(nat_doc);
	set_str(segment(doc, 0, 0), "gateway_mac", "03:6b:00:03:00:00");
	assert_refused(doc, "networks[0].segments[0].gateway_mac", "must be a unicast MAC address");
}

static void test_peer_is_underlay(void **state)
{
	struct json_object *doc = valid(nat_doc);

	set_strs(segment(doc, 0, 1), "peers", 2,
		 (const char *const[]){"10.232.0.12", "10.232.0.11"});
	assert_refused(doc, "networks[0].segments[1].peers[1]",
		       "is this host's own underlay address");
	doc = valid(nat_doc);
	set_strs(segment(doc, 0, 1), "peers", 2,
		 (const char *const[]){"10.232.0.13", "10.232.0.13"});
	assert_refused(doc, "networks[0].segments[1].peers", "lists 10.232.0.13 twice");
}

/* ---- ports -------------------------------------------------------------------------- */

static void test_port_ifname(void **state)
{
	static const char *const bad[] = {
		"eth0",
		"kb3-0",
		"kx3-0",
		"kp7",
		"kp7-0; rm -rf /",
		"kp1234567890-1",   /* a number of 10 digits */
		"kp1234567-123456", /* 16 characters */
		"",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct json_object *doc = valid(nat_doc);

		set_str(port(doc, 0, 0, 0), "ifname", bad[i]);
		assert_refused(doc, "networks[0].segments[0].ports[0].ifname",
			       "must be kp<instance>-<nic>");
	}
}

static void test_port_ifname_duplicate(void **state)
{
	static const char *const want[] = {"networks[0].segments[0].ports[0].ifname",
					   "networks[0].segments[1].ports[1].ifname"};
	struct json_object *doc = valid(nat_doc), *net2 = NULL;
	struct kerr err = {0};

	/* Across the two segments: which of the pair is named depends on the sort. */
	set_str(port(doc, 0, 1, 1), "ifname", "kp7-0");
	assert_int_equal(netdrv_doc_check(doc, &err), -1);
	json_object_put(doc);
	assert_int_equal(err.status, 400);
	if (strcmp(err.field, want[0]) != 0 && strcmp(err.field, want[1]) != 0)
		fail_msg("refused at \"%s\" (%s)", err.field, err.msg);
	assert_non_null(strstr(err.msg, "kp7-0 is listed twice"));

	/* Within one segment. */
	doc = valid(nat_doc);
	set_str(port(doc, 0, 1, 0), "ifname", "kp9-1");
	assert_refused(doc, NULL, "kp9-1 is listed twice");

	/* Across two networks: a second network, its port named like the first's. */
	doc = valid(nat_doc);
	json_object_deep_copy(network(doc, 0), &net2, NULL);
	set_int(net2, "id", 5);
	set_str(net2, "name", "lan2");
	set_str(net2, "cidr", "10.60.0.0/24");
	set_str(net2, "gateway", "10.60.0.1");
	set_strs(net2, "dns", 0, NULL);
	json_object_array_del_idx(json_object_object_get(net2, "segments"), 1, 1);
	json_object_array_add(json_object_object_get(doc, "networks"), net2);
	set_str(segment(doc, 1, 0), "bridge", "kb5-0");
	set_str(segment(doc, 1, 0), "vxlan", "kx5-0");
	set_str(port(doc, 1, 0, 0), "address", "10.60.0.5");
	set_str(port(doc, 1, 0, 0), "ifname", "kp70-0");
	assert_int_equal(netdrv_doc_check(doc, &(struct kerr){0}), 0); /* distinct: passes */
	set_str(port(doc, 1, 0, 0), "ifname", "kp7-0");
	assert_refused(doc, NULL, "kp7-0 is listed twice");
}

static void test_address_duplicate(void **state)
{
	struct json_object *doc = valid(nat_doc);

	/* Across the segments of one network (they share the subnet). */
	set_str(port(doc, 0, 1, 0), "address", "10.50.0.5");
	assert_refused(doc, "networks[0].segments", "give address 10.50.0.5 to two ports");
	/* Within one segment. */
	doc = valid(nat_doc);
	set_str(port(doc, 0, 1, 1), "address", "10.50.0.6");
	assert_refused(doc, "networks[0].segments", "give address 10.50.0.6 to two ports");
	/* The gateway's, and one outside the subnet. */
	doc = valid(nat_doc);
	set_str(port(doc, 0, 0, 0), "address", "10.50.0.1");
	assert_refused(doc, "networks[0].segments[0].ports[0].address",
		       "the network, broadcast or gateway address");
	doc = valid(nat_doc);
	set_str(port(doc, 0, 0, 0), "address", "10.50.1.5");
	assert_refused(doc, "networks[0].segments[0].ports[0].address",
		       "10.50.1.5 is outside 10.50.0.0/24");
}

static void test_segment_vlan_duplicate(void **state)
{
	struct json_object *doc = valid(nat_doc);

	/* The second segment made a second VLAN 0, its names and VNI to match. */
	set_int(segment(doc, 0, 1), "vlan", 0);
	set_str(segment(doc, 0, 1), "bridge", "kb3-0");
	set_str(segment(doc, 0, 1), "vxlan", "kx3-0");
	set_int(segment(doc, 0, 1), "vni", 4096);
	assert_refused(doc, "networks[0].segments", "lists VLAN 0 twice");
}

static struct json_object *group_rule(struct json_object *doc, size_t gi, size_t ri)
{
	struct json_object *g =
		json_object_array_get_idx(json_object_object_get(doc, "security_groups"), gi);

	return json_object_array_get_idx(json_object_object_get(g, "rules"), ri);
}

static void test_guarded_refusals(void **state)
{
	struct json_object *doc;

	json_object_put(valid(guarded_doc));
	doc = valid(guarded_doc);
	set_str(group_rule(doc, 1, 0), "protocol", "sctp");
	assert_refused(doc, "security_groups[1].rules[0].protocol", "must be");
	doc = valid(guarded_doc);
	set_str(group_rule(doc, 1, 2), "ports", "22");
	assert_refused(doc, "security_groups[1].rules[2].ports", "needs protocol tcp or udp");
	doc = valid(guarded_doc);
	set_str(group_rule(doc, 1, 0), "ports", "90-80");
	assert_refused(doc, "security_groups[1].rules[0].ports", "a port or a range");
	doc = valid(guarded_doc);
	set_str(group_rule(doc, 1, 1), "group", "nosuch");
	assert_refused(doc, "security_groups[1].rules[1].group", "not a group of the document");
	doc = valid(guarded_doc);
	set_str(group_rule(doc, 1, 2), "cidr", "10.0.0.1/8");
	assert_refused(doc, "security_groups[1].rules[2].cidr", "IPv4 network");
	doc = valid(guarded_doc);
	set_str(group_rule(doc, 1, 2), "group", "default");
	assert_refused(doc, "security_groups[1].rules[2].cidr", "exactly one");
	doc = valid(guarded_doc);
	set_strs(port(doc, 0, 0, 0), "security_groups", 1, (const char *const[]){"nosuch"});
	assert_refused(doc, "networks[0].segments[0].ports[0].security_groups[0]",
		       "not a group of the document");
	doc = valid(guarded_doc);
	set_strs(doc, "control_plane", 2, (const char *const[]){"10.232.0.1", "10.232.0.1"});
	assert_refused(doc, "control_plane", "lists 10.232.0.1 twice");
	doc = valid(guarded_doc);
	set_strs(doc, "control_plane", 1, (const char *const[]){"10.232.0"});
	assert_refused(doc, "control_plane[0]", "IPv4 address");
}

/* Does text hold line (a whole rule line, tabs and all)? */
static bool has_line(const char *text, const char *line)
{
	const char *p = strstr(text, line);

	return p && (p == text || p[-1] == '\n' || p[-1] == '\t') &&
	       (p[strlen(line)] == '\n' || p[strlen(line)] == '\0');
}

static void test_tables(void **state)
{
	struct json_object *doc = valid(guarded_doc);
	struct netnft_host h = {.groups = json_object_object_get(doc, "security_groups"),
				.control_plane = json_object_object_get(doc, "control_plane"),
				.underlay_net = 0x0ae80000,
				.underlay_prefix = 24};
	struct netdoc_net n;
	char *text;

	netdoc_net_read(network(doc, 0), &n);
	text = netnft_network(&n, &h);
	/* Port security on kp7-0, none on kp8-0 (port_security false). */
	assert_true(has_line(text, "iifname \"kp7-0\" ether saddr != 52:54:00:12:34:56 drop"));
	assert_true(has_line(text, "iifname \"kp7-0\" ether type arp arp saddr ip != { 10.60.0.5, "
				   "0.0.0.0 } drop"));
	assert_true(has_line(text, "iifname \"kp7-0\" ether type ip ip saddr != 10.60.0.5 drop"));
	assert_true(has_line(text, "iifname \"kp7-0\" ether type ip udp sport 67 drop"));
	assert_null(strstr(text, "iifname \"kp8-0\""));
	/* The control plane and the underlay subnet, from the bridge. */
	assert_true(has_line(text, "iifname \"kb5-0\" ip daddr { 10.232.0.1, 10.232.0.12 } drop"));
	assert_true(has_line(text, "iifname \"kb5-0\" ip daddr 10.232.0.0/24 drop"));
	assert_true(has_line(text, "iifname \"kb5-0\" drop"));
	/* Groups: ordered rules, then members, then drop; egress only where rules are. */
	assert_non_null(strstr(text,
			       "\tchain in_kp7_0 {\n"
			       "\t\tmeta nfproto ipv4 ip saddr 0.0.0.0/0 meta l4proto tcp tcp "
			       "dport 81 drop\n"
			       "\t\tmeta nfproto ipv4 ip saddr @sg0 meta l4proto tcp tcp dport "
			       "80-90 return\n"
			       "\t\tip saddr @sg1 return\n"
			       "\t\tdrop\n"));
	assert_true(has_line(text, "iifname \"kb5-0\" ct state new,invalid,untracked ip saddr "
				   "10.60.0.5 jump eg_kp7_0"));
	assert_null(strstr(text, "eg_kp8_0"));
	assert_true(has_line(text, "oifname \"kb5-0\" ct state new,invalid,untracked ip daddr "
				   "10.60.0.6 jump in_kp8_0"));
	free(text);
	json_object_put(doc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_nat),
		cmocka_unit_test(test_valid_bridge),
		cmocka_unit_test(test_valid_empty),
		cmocka_unit_test(test_non_object),
		cmocka_unit_test(test_hash_missing),
		cmocka_unit_test(test_hash_bad),
		cmocka_unit_test(test_unknown_top_level_field),
		cmocka_unit_test(test_underlay_bad),
		cmocka_unit_test(test_mode_bad),
		cmocka_unit_test(test_cidr_host_bits),
		cmocka_unit_test(test_prefix_mismatch),
		cmocka_unit_test(test_gateway_outside),
		cmocka_unit_test(test_mtu_bad),
		cmocka_unit_test(test_uplink_on_nat),
		cmocka_unit_test(test_dns_too_many),
		cmocka_unit_test(test_vlan_4095),
		cmocka_unit_test(test_vni_0),
		cmocka_unit_test(test_bridge_name),
		cmocka_unit_test(test_vxlan_name),
		cmocka_unit_test(test_multicast_mac),
		cmocka_unit_test(test_peer_is_underlay),
		cmocka_unit_test(test_port_ifname),
		cmocka_unit_test(test_port_ifname_duplicate),
		cmocka_unit_test(test_address_duplicate),
		cmocka_unit_test(test_segment_vlan_duplicate),
		cmocka_unit_test(test_guarded_refusals),
		cmocka_unit_test(test_tables),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
