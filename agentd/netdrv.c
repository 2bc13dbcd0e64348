/*
 * netdrv.c - the network driver's engine: make this host's links, routes, nftables
 * tables and dnsmasq processes match the controller's desired-state document.
 *
 * An apply reads the host's state once (ip -j, bridge -j, nft -j), compares it with
 * the document and runs only the commands that close the gap, so a second apply of the
 * same document changes nothing (nftables tables are the exception: they are replaced
 * whole, atomically, every time, which also repairs edits made behind our back). Its
 * order matters:
 *   1. stale dnsmasq processes stopped and their files removed (before their bridges go)
 *   2. stale links removed: kb* / kx* links the document does not list, 802.1Q
 *      subinterfaces on our bridges that are no longer wanted
 *   3. per segment: bridge (MAC, gateway address), VXLAN and its flood list, or the
 *      uplink (bridge mode), then the instance ports that exist
 *   4. the /32 routes of the ports (proto 77), stale ones removed
 *   5. nftables: one `nft -f -` transaction replaces every wanted kumo_n<NID> table and
 *      deletes the stale ones (their rules: netnft.c - isolation, NAT, port security,
 *      security groups, the control plane)
 *   6. dnsmasq per DHCP segment: restarted when its config changed, SIGHUP when only its
 *      hosts did. It runs as DNSMASQ_USER (see dnsmasq_user())
 *   7. net.ipv4.ip_forward = 1 while a nat network is wanted
 * A failing step is logged and the apply goes on, so one broken segment does not keep
 * the others down; the first failure is what the caller hears. The document was
 * checked (and is read) by netdoc.c.
 *
 * Commands run through the one child runner (common/child.c) from argument vectors,
 * never through a shell, with a timeout. The whole file needs root: CAP_NET_ADMIN for links, routes
 * and nftables, writing /proc/sys/net/ipv4/ip_forward, and signalling dnsmasq.
 */
#include "netdrv.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "child.h"
#include "json.h"
#include "log.h"
#include "netdoc.h"
#include "netnft.h"
#include "util.h"

#define STDERR_KEPT 4096

/* ---- small helpers --------------------------------------------------------------- */

/* A growing NUL-terminated string. */
struct buf {
	char *p;
	size_t len, cap;
};

static void buf_freep(struct buf *b)
{
	free(b->p);
}

static void buf_reserve(struct buf *b, size_t more)
{
	if (b->len + more + 1 <= b->cap)
		return;
	b->cap = (b->len + more + 1) * 2;
	b->p = xrealloc(b->p, b->cap);
}

static void buf_append(struct buf *b, const char *data, size_t len)
{
	buf_reserve(b, len);
	memcpy(b->p + b->len, data, len);
	b->len += len;
	b->p[b->len] = '\0';
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

static const char *buf_str(const struct buf *b)
{
	return b->p ? b->p : "";
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- running commands ------------------------------------------------------------ */

static const char *const cmd_dirs[] = {"/usr/sbin", "/usr/bin", "/sbin", "/bin"};
/* A known environment: a PATH with sbin, and messages in English for the errors. */
static char *const cmd_env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};

static char *cmd_path(const char *name)
{
	if (strchr(name, '/'))
		return xstrdup(name);
	for (size_t i = 0; i < ARRAY_SIZE(cmd_dirs); i++) {
		char *path = xasprintf("%s/%s", cmd_dirs[i], name);

		if (access(path, X_OK) == 0)
			return path;
		free(path);
	}
	return NULL;
}

/* argv as one line for messages, cut short with "..." when long. */
static void cmd_describe(const char *const argv[], char *out, size_t len)
{
	size_t used = 0;

	out[0] = '\0';
	for (size_t i = 0; argv[i] && used < len; i++)
		used += (size_t)snprintf(out + used, len - used, "%s%s", i ? " " : "", argv[i]);
	if (used >= len && len > 4)
		strcpy(out + len - 4, "...");
}

/* A command's stderr as one line: line breaks become "; ", the ends trimmed. */
static void text_one_line(const char *in, char *out, size_t len)
{
	size_t used = 0;
	bool pending = false;

	while (*in && isspace((unsigned char)*in))
		in++;
	for (; *in && used + 3 < len; in++) {
		if (*in == '\n' || *in == '\r') {
			pending = used > 0;
			continue;
		}
		if (pending) {
			out[used++] = ';';
			out[used++] = ' ';
			pending = false;
		}
		out[used++] = isprint((unsigned char)*in) ? *in : '?';
	}
	while (used > 0 && isspace((unsigned char)out[used - 1]))
		used--;
	out[used] = '\0';
}

struct run {
	const char *desc;
	char *out; /* stdout on success */
	int ret;
	struct kerr *err;
};

static void run_done_cb(const struct child_result *r, void *data)
{
	struct run *run = data;
	char why[200];

	text_one_line(r->err, why, sizeof(why));
	if (r->timed_out)
		run->ret = err_set(run->err, 0, "%s: killed after %d s without finishing",
				   run->desc, NETDRV_CMD_TIMEOUT_MS / 1000);
	else if (child_result_ok(r) && !r->truncated)
		run->out = xstrdup(r->out);
	else if (r->truncated)
		run->ret = err_set(run->err, 0, "%s: more than %d bytes of output", run->desc,
				   NETDRV_CMD_OUTPUT_MAX);
	else if (why[0])
		run->ret = err_set(run->err, 0, "%s: %s", run->desc, why);
	else if (r->signal)
		run->ret = err_set(run->err, 0, "%s: killed by signal %d", run->desc, r->signal);
	else
		run->ret = err_set(run->err, 0, "%s: exited with status %lld", run->desc,
				   (long long)r->status);
}

int netdrv_run(const char *const argv[], const char *input, char **out, struct kerr *err)
{
	_cleanup_free_ char *path = NULL;
	char desc[160];
	struct run run = {.desc = desc, .err = err};
	/* dnsmasq lives on: the runner's descriptors are close-on-exec, and dnsmasq closes
	 * any other it inherits before it daemonises. */
	struct child_opts opts = {
		.argv = (char *const *)argv,
		.env = cmd_env,
		.in = input,
		.in_len = input ? strlen(input) : 0,
		.out_max = NETDRV_CMD_OUTPUT_MAX,
		.err_max = STDERR_KEPT,
		.err_mode = CHILD_ERR_CAPTURE,
		.timeout_ms = NETDRV_CMD_TIMEOUT_MS,
	};

	if (out)
		*out = NULL;
	cmd_describe(argv, desc, sizeof(desc));
	path = cmd_path(argv[0]);
	if (path == NULL)
		return err_set(err, ENOENT, "cannot run %s", argv[0]);
	opts.file = path;
	/* Run to completion on a loop of this thread's own: the caller is a pool thread
	 * (an apply, a container's bundle) or, for a VM's taps, the loop for a few ms. */
	if (child_run_sync(&opts, run_done_cb, &run, NULL, err) < 0)
		return -1;
	if (run.ret < 0)
		return run.ret;
	if (out)
		*out = STEAL_POINTER(&run.out);
	free(run.out);
	return 0;
}

/* ---- applying: the host's state -------------------------------------------------- */

struct apply {
	struct json_object *networks; /* the document's */
	const char *underlay;
	const char *dir;
	struct kerr first; /* the first failure */
	int ret;	   /* 0, or the first failure's value */
	int changes;
	struct json_object *links;  /* ip -j -d addr show */
	struct json_object *fdb;    /* bridge -j fdb show, NULL if unread */
	struct json_object *routes; /* our routes, read once the links are done */
	struct json_object *tables; /* nft -j list tables: the "nftables" array, or NULL */
	struct json_object *fresh;  /* bridges this apply made: their dnsmasq binds anew */
	struct netnft_host nft;	    /* groups, control plane, underlay subnet */
};

/* A step failed: the first failure is kept for the caller, later ones are logged. */
static void failed(struct apply *ap, const struct kerr *e)
{
	if (ap->ret == 0) {
		ap->first = *e;
		ap->ret = -1;
		return;
	}
	log_warnx("net: %s", e->msg);
}

static void failedx(struct apply *ap, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failedx(struct apply *ap, const char *fmt, ...)
{
	struct kerr e = {0};
	va_list va;

	va_start(va, fmt);
	vsnprintf(e.msg, sizeof(e.msg), fmt, va);
	va_end(va);
	failed(ap, &e);
}

/* Run a command that changes the host. Returns 0 or -1 (the failure noted). */
static int change(struct apply *ap, const char *const argv[])
{
	struct kerr e;
	char desc[160];

	cmd_describe(argv, desc, sizeof(desc));
	log_debug("net: %s", desc);
	ap->changes++;
	if (netdrv_run(argv, NULL, NULL, &e) < 0) {
		failed(ap, &e);
		return -1;
	}
	return 0;
}

#define CHANGE(ap, ...) change((ap), (const char *const[]){__VA_ARGS__, NULL})

/* Run a command that prints JSON; empty output is an empty array. */
static struct json_object *json_cmd(const char *const argv[], struct kerr *err)
{
	_cleanup_free_ char *out = NULL;
	struct json_object *obj;
	char desc[160];

	if (netdrv_run(argv, NULL, &out, err) < 0)
		return NULL;
	if (out[strspn(out, " \t\r\n")] == '\0')
		return json_object_new_array();
	obj = json_tokener_parse(out);
	if (obj == NULL) {
		cmd_describe(argv, desc, sizeof(desc));
		err_set(err, 0, "%s: its output is not JSON", desc);
	}
	return obj;
}

static void state_free(struct apply *ap)
{
	json_object_put(ap->links);
	json_object_put(ap->fdb);
	json_object_put(ap->routes);
	json_object_put(ap->tables);
}

/* Read the links; FDB and tables as well as they can be (NULL when they could not). */
static int state_read(struct apply *ap)
{
	struct json_object *nft;
	struct kerr e;

	ap->links = json_cmd((const char *const[]){"ip", "-j", "-d", "addr", "show", NULL}, &e);
	if (ap->links == NULL || !json_object_is_type(ap->links, json_type_array)) {
		if (ap->links)
			err_set(&e, 0, "ip -j -d addr show: not a JSON array");
		failed(ap, &e);
		return -1;
	}
	ap->fdb = json_cmd((const char *const[]){"bridge", "-j", "fdb", "show", NULL}, &e);
	if (ap->fdb == NULL)
		failed(ap, &e);
	nft = json_cmd((const char *const[]){"nft", "-j", "list", "tables", NULL}, &e);
	if (nft == NULL) {
		failed(ap, &e);
	} else {
		ap->tables = json_object_get(json_object_object_get(nft, "nftables"));
		json_object_put(nft);
		if (!json_object_is_type(ap->tables, json_type_array)) {
			json_object_put(ap->tables);
			ap->tables = NULL;
			failedx(ap, "nft -j list tables: no \"nftables\" array in its output");
		}
	}
	return 0;
}

static struct json_object *link_find(struct apply *ap, const char *name)
{
	for (size_t i = 0; i < netdoc_len(ap->links); i++) {
		struct json_object *l = json_object_array_get_idx(ap->links, i);

		if (strcmp(json_get_str(l, "ifname", ""), name) == 0)
			return l;
	}
	return NULL;
}

static const char *link_kind(struct json_object *l)
{
	return json_get_str(json_object_object_get(l, "linkinfo"), "info_kind", "");
}

static struct json_object *link_data(struct json_object *l)
{
	return json_object_object_get(json_object_object_get(l, "linkinfo"), "info_data");
}

static bool link_up(struct json_object *l)
{
	struct json_object *flags = json_object_object_get(l, "flags");

	for (size_t i = 0; i < netdoc_len(flags); i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(flags, i)), "UP") == 0)
			return true;
	return false;
}

/* On master (NULL: any) with mtu (0: any) and up? */
static bool link_placed(struct json_object *l, const char *master, int mtu)
{
	return (master == NULL || strcmp(json_get_str(l, "master", ""), master) == 0) &&
	       (mtu == 0 || json_get_int(l, "mtu", 0) == mtu) && link_up(l);
}

/*
 * The wanted segment whose bridge or VXLAN (by kind "kb" or "kx") is name, with its
 * network. Returns false when the document has none.
 */
static bool seg_lookup(struct apply *ap, const char *name, const char *kind, struct netdoc_net *n,
		       struct netdoc_seg *s)
{
	long long id, vlan;

	if (!netdoc_kumo_name(name, kind, &id, &vlan))
		return false;
	for (size_t i = 0; i < netdoc_len(ap->networks); i++) {
		netdoc_net_read(json_object_array_get_idx(ap->networks, i), n);
		if (n->id != id)
			continue;
		for (size_t j = 0; j < netdoc_len(n->segments); j++) {
			netdoc_seg_read(json_object_array_get_idx(n->segments, j), s);
			if (s->vlan == vlan)
				return strcmp(kind[1] == 'b' ? s->bridge
							     : (s->vxlan ? s->vxlan : ""),
					      name) == 0;
		}
		return false;
	}
	return false;
}

/* ---- applying: links ------------------------------------------------------------- */

/* The 802.1Q subinterface a bridge-mode segment enslaves, into out ("" for VLAN 0). */
static void uplink_sub(const struct netdoc_net *n, const struct netdoc_seg *s, char out[IFNAMSIZ])
{
	out[0] = '\0';
	if (n->mode == NETDOC_BRIDGE && s->vlan > 0)
		snprintf(out, IFNAMSIZ, "%s.%d", n->uplink, s->vlan);
}

/* Remove kb* / kx* links the document does not list, and unwanted subinterfaces. */
static void links_prune(struct apply *ap)
{
	for (size_t i = 0; i < netdoc_len(ap->links); i++) {
		struct json_object *l = json_object_array_get_idx(ap->links, i);
		const char *name = json_get_str(l, "ifname", "");
		const char *master = json_get_str(l, "master", "");
		struct netdoc_net n;
		struct netdoc_seg s;
		char sub[IFNAMSIZ];

		if (netdoc_kumo_name(name, "kb", NULL, NULL) ||
		    netdoc_kumo_name(name, "kx", NULL, NULL)) {
			if (!seg_lookup(ap, name, name[1] == 'b' ? "kb" : "kx", &n, &s))
				CHANGE(ap, "ip", "link", "del", "dev", name);
			continue;
		}
		/* A VLAN subinterface on one of our bridges is ours (bridge networks). */
		if (strcmp(link_kind(l), "vlan") != 0 ||
		    !netdoc_kumo_name(master, "kb", NULL, NULL))
			continue;
		if (seg_lookup(ap, master, "kb", &n, &s))
			uplink_sub(&n, &s, sub);
		else
			sub[0] = '\0';
		if (strcmp(sub, name) != 0)
			CHANGE(ap, "ip", "link", "del", "dev", name);
	}
}

/* The segment's gateway address alone on its bridge, without a subnet route. */
static void bridge_addr_sync(struct apply *ap, const struct netdoc_net *n,
			     const struct netdoc_seg *s, struct json_object *l)
{
	struct json_object *addrs = l ? json_object_object_get(l, "addr_info") : NULL;
	char want[NETDOC_ADDR_LEN + 4];
	bool have = false;

	for (size_t i = 0; i < netdoc_len(addrs); i++) {
		struct json_object *a = json_object_array_get_idx(addrs, i);
		const char *local = json_get_str(a, "local", "");
		int prefix = (int)json_get_int(a, "prefixlen", -1);
		char cur[NETDOC_ADDR_LEN + 4];

		if (strcmp(json_get_str(a, "family", ""), "inet") != 0)
			continue;
		if (!have && strcmp(local, n->gateway) == 0 && prefix == n->prefix &&
		    json_get_bool(a, "noprefixroute", false)) {
			have = true;
			continue;
		}
		snprintf(cur, sizeof(cur), "%s/%d", local, prefix);
		CHANGE(ap, "ip", "addr", "del", cur, "dev", s->bridge);
	}
	snprintf(want, sizeof(want), "%s/%d", n->gateway, n->prefix);
	if (!have)
		CHANGE(ap, "ip", "addr", "add", want, "dev", s->bridge, "noprefixroute");
}

/* The segment's bridge: type, MAC (routed modes), MTU, up, address. -1: none there. */
static int bridge_sync(struct apply *ap, const struct netdoc_net *n, const struct netdoc_seg *s)
{
	struct json_object *l = link_find(ap, s->bridge);
	bool routed = n->mode != NETDOC_BRIDGE;
	char mtu[16];
	int ret = 0;

	snprintf(mtu, sizeof(mtu), "%d", n->mtu);
	if (l && strcmp(link_kind(l), "bridge") != 0) {
		if (CHANGE(ap, "ip", "link", "del", "dev", s->bridge) < 0)
			return -1;
		l = NULL;
	}
	if (l == NULL) {
		struct kerr e;

		ap->changes++;
		if (routed)
			ret = netdrv_run((const char *const[]){"ip", "link", "add", "name",
							       s->bridge, "address", s->gateway_mac,
							       "mtu", mtu, "up", "type", "bridge",
							       NULL},
					 NULL, NULL, &e);
		else
			ret = netdrv_run((const char *const[]){"ip", "link", "add", "name",
							       s->bridge, "mtu", mtu, "up", "type",
							       "bridge", NULL},
					 NULL, NULL, &e);
		if (!ap->fresh)
			ap->fresh = json_object_new_array();
		json_object_array_add(ap->fresh, json_object_new_string(s->bridge));
		/* A port attach (netdrv_port_attach()) may have made it bare since the state
		 * was read: then it only needs setting up. */
		if (ret < 0 && if_nametoindex(s->bridge) == 0) {
			failed(ap, &e);
			return -1;
		}
		if (ret < 0)
			CHANGE(ap, "ip", "link", "set", "dev", s->bridge, "mtu", mtu, "up");
		if (ret < 0 && routed)
			CHANGE(ap, "ip", "link", "set", "dev", s->bridge, "address",
			       s->gateway_mac);
	} else if (routed && (strcasecmp(json_get_str(l, "address", ""), s->gateway_mac) != 0 ||
			      !link_placed(l, NULL, n->mtu))) {
		CHANGE(ap, "ip", "link", "set", "dev", s->bridge, "address", s->gateway_mac, "mtu",
		       mtu, "up");
	} else if (!routed && !link_placed(l, NULL, n->mtu)) {
		CHANGE(ap, "ip", "link", "set", "dev", s->bridge, "mtu", mtu, "up");
	}
	if (routed)
		bridge_addr_sync(ap, n, s, l);
	return 0;
}

static bool fdb_has(struct apply *ap, const char *vxlan, const char *dst)
{
	for (size_t i = 0; i < netdoc_len(ap->fdb); i++) {
		struct json_object *e = json_object_array_get_idx(ap->fdb, i);

		if (strcmp(json_get_str(e, "ifname", ""), vxlan) == 0 &&
		    strcmp(json_get_str(e, "mac", ""), "00:00:00:00:00:00") == 0 &&
		    strcmp(json_get_str(e, "dst", ""), dst) == 0)
			return true;
	}
	return false;
}

static bool peers_has(const struct netdoc_seg *s, const char *dst)
{
	for (size_t i = 0; i < netdoc_len(s->peers); i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(s->peers, i)), dst) ==
		    0)
			return true;
	return false;
}

/* Head-end replication: one all-zeros FDB entry per peer, no others. */
static void fdb_sync(struct apply *ap, const struct netdoc_seg *s, bool fresh)
{
	const char *zero = "00:00:00:00:00:00";

	if (ap->fdb == NULL && !fresh)
		return; /* unread: noted already */
	for (size_t i = 0; !fresh && i < netdoc_len(ap->fdb); i++) {
		struct json_object *e = json_object_array_get_idx(ap->fdb, i);
		const char *dst = json_get_str(e, "dst", NULL);

		if (dst && strcmp(json_get_str(e, "ifname", ""), s->vxlan) == 0 &&
		    strcmp(json_get_str(e, "mac", ""), zero) == 0 && !peers_has(s, dst))
			CHANGE(ap, "bridge", "fdb", "del", zero, "dev", s->vxlan, "dst", dst);
	}
	for (size_t i = 0; i < netdoc_len(s->peers); i++) {
		const char *peer = json_object_get_string(json_object_array_get_idx(s->peers, i));

		if (fresh || !fdb_has(ap, s->vxlan, peer))
			CHANGE(ap, "bridge", "fdb", "append", zero, "dev", s->vxlan, "dst", peer);
	}
}

static void vxlan_sync(struct apply *ap, const struct netdoc_net *n, const struct netdoc_seg *s)
{
	struct json_object *l = link_find(ap, s->vxlan), *data;
	char mtu[16], vni[16], port[8];
	bool fresh = false;

	snprintf(mtu, sizeof(mtu), "%d", n->mtu);
	snprintf(vni, sizeof(vni), "%lld", (long long)s->vni);
	snprintf(port, sizeof(port), "%d", NETDRV_VXLAN_PORT);
	data = l ? link_data(l) : NULL;
	/* Identity (VNI, source, port) cannot be changed in place: make it again. */
	if (l && (strcmp(link_kind(l), "vxlan") != 0 || json_get_int(data, "id", -1) != s->vni ||
		  strcmp(json_get_str(data, "local", ""), ap->underlay) != 0 ||
		  json_get_int(data, "port", -1) != NETDRV_VXLAN_PORT)) {
		if (CHANGE(ap, "ip", "link", "del", "dev", s->vxlan) < 0)
			return;
		l = NULL;
	}
	if (l == NULL) {
		if (CHANGE(ap, "ip", "link", "add", "name", s->vxlan, "mtu", mtu, "master",
			   s->bridge, "up", "type", "vxlan", "id", vni, "local", ap->underlay,
			   "dstport", port) < 0)
			return;
		fresh = true;
	} else if (!link_placed(l, s->bridge, n->mtu)) {
		CHANGE(ap, "ip", "link", "set", "dev", s->vxlan, "master", s->bridge, "mtu", mtu,
		       "up");
	}
	fdb_sync(ap, s, fresh);
}

/* Bridge mode: the uplink (VLAN 0) or its 802.1Q subinterface on the bridge, alone. */
static void uplink_sync(struct apply *ap, const struct netdoc_net *n, const struct netdoc_seg *s)
{
	struct json_object *l;
	char sub[IFNAMSIZ], mtu[16], vlan[8];
	const char *port = n->uplink;

	snprintf(mtu, sizeof(mtu), "%d", n->mtu);
	snprintf(vlan, sizeof(vlan), "%d", s->vlan);
	uplink_sub(n, s, sub);
	if (sub[0]) {
		port = sub;
		l = link_find(ap, sub);
		if (l && (strcmp(link_kind(l), "vlan") != 0 ||
			  json_get_int(link_data(l), "id", -1) != s->vlan ||
			  strcmp(json_get_str(l, "link", ""), n->uplink) != 0)) {
			if (CHANGE(ap, "ip", "link", "del", "dev", sub) == 0)
				l = NULL;
		}
		if (l == NULL)
			CHANGE(ap, "ip", "link", "add", "link", n->uplink, "name", sub, "mtu", mtu,
			       "master", s->bridge, "up", "type", "vlan", "id", vlan);
		else if (!link_placed(l, s->bridge, n->mtu))
			CHANGE(ap, "ip", "link", "set", "dev", sub, "master", s->bridge, "mtu", mtu,
			       "up");
	} else if ((l = link_find(ap, n->uplink)) == NULL) {
		failedx(ap, "network %s: uplink %s does not exist on this host", n->name,
			n->uplink);
	} else if (!link_placed(l, s->bridge, 0)) {
		/* Its MTU is the host's business: the physical network decides it. */
		CHANGE(ap, "ip", "link", "set", "dev", n->uplink, "master", s->bridge, "up");
	}
	/* A former uplink stays on the bridge no longer (subinterfaces went in prune). */
	for (size_t i = 0; i < netdoc_len(ap->links); i++) {
		struct json_object *o = json_object_array_get_idx(ap->links, i);
		const char *name = json_get_str(o, "ifname", "");

		if (strcmp(json_get_str(o, "master", ""), s->bridge) == 0 &&
		    strcmp(name, port) != 0 && !netdoc_kumo_name(name, "kp", NULL, NULL) &&
		    !netdoc_kumo_name(name, "kx", NULL, NULL) && strcmp(link_kind(o), "vlan") != 0)
			CHANGE(ap, "ip", "link", "set", "dev", name, "nomaster");
	}
}

/* The instance ports that exist (their makers create them): on the bridge, MTU, up. */
static void ports_sync(struct apply *ap, const struct netdoc_net *n, const struct netdoc_seg *s)
{
	char mtu[16];

	snprintf(mtu, sizeof(mtu), "%d", n->mtu);
	for (size_t i = 0; i < netdoc_len(s->ports); i++) {
		const char *ifname =
			json_get_str(json_object_array_get_idx(s->ports, i), "ifname", "");
		struct json_object *l = link_find(ap, ifname);

		if (l && !link_placed(l, s->bridge, n->mtu))
			CHANGE(ap, "ip", "link", "set", "dev", ifname, "master", s->bridge, "mtu",
			       mtu, "up");
	}
}

static void segment_apply(struct apply *ap, const struct netdoc_net *n, const struct netdoc_seg *s)
{
	if (bridge_sync(ap, n, s) < 0)
		return;
	if (n->mode == NETDOC_BRIDGE)
		uplink_sync(ap, n, s);
	else
		vxlan_sync(ap, n, s);
	ports_sync(ap, n, s);
}

/* ---- applying: routes ------------------------------------------------------------ */

struct route_want {
	uint32_t addr;
	const char *bridge;
	bool present;
};

static int route_want_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct route_want *)a)->addr, y = ((const struct route_want *)b)->addr;

	return x < y ? -1 : x > y;
}

/* A /32 route (proto 77) to every port address of a routed network; no other. */
static void routes_sync(struct apply *ap)
{
	_cleanup_free_ struct route_want *wants = NULL;
	struct kerr e;
	size_t n = 0;

	/* Read now: removing a link has removed its routes. */
	ap->routes = json_cmd((const char *const[]){"ip", "-j", "-4", "route", "show", "table",
						    "main", "proto", "77", NULL},
			      &e);
	if (ap->routes == NULL) {
		failed(ap, &e);
		return;
	}
	wants = xcalloc(NETDRV_DOC_PORTS_MAX + 1, sizeof(*wants));
	for (size_t i = 0; i < netdoc_len(ap->networks); i++) {
		struct netdoc_net v;

		netdoc_net_read(json_object_array_get_idx(ap->networks, i), &v);
		if (v.mode == NETDOC_BRIDGE)
			continue;
		for (size_t j = 0; j < netdoc_len(v.segments); j++) {
			struct netdoc_seg s;

			netdoc_seg_read(json_object_array_get_idx(v.segments, j), &s);
			for (size_t k = 0; k < netdoc_len(s.ports) && n < NETDRV_DOC_PORTS_MAX;
			     k++) {
				const char *addr = json_get_str(
					json_object_array_get_idx(s.ports, k), "address", NULL);

				if (addr && netdoc_ipv4_parse(addr, &wants[n].addr))
					wants[n++].bridge = s.bridge;
			}
		}
	}
	qsort(wants, n, sizeof(*wants), route_want_cmp);

	for (size_t i = 0; i < netdoc_len(ap->routes); i++) {
		struct json_object *r = json_object_array_get_idx(ap->routes, i);
		const char *dst = json_get_str(r, "dst", ""), *dev = json_get_str(r, "dev", "");
		struct route_want key = {0}, *w = NULL;
		char host[NETDOC_ADDR_LEN + 4];

		snprintf(host, sizeof(host), "%s", dst);
		if (strlen(host) > 3 && strcmp(host + strlen(host) - 3, "/32") == 0)
			host[strlen(host) - 3] = '\0';
		if (netdoc_ipv4_parse(host, &key.addr))
			w = bsearch(&key, wants, n, sizeof(*wants), route_want_cmp);
		if (w && !w->present && strcmp(w->bridge, dev) == 0) {
			w->present = true;
			continue;
		}
		if (*dev)
			CHANGE(ap, "ip", "route", "del", dst, "dev", dev, "table", "main", "proto",
			       "77");
		else
			CHANGE(ap, "ip", "route", "del", dst, "table", "main", "proto", "77");
	}
	for (size_t i = 0; i < n; i++) {
		char dst[NETDOC_ADDR_LEN + 4];

		if (wants[i].present)
			continue;
		netdoc_ipv4_format(wants[i].addr, dst);
		strcat(dst, "/32");
		CHANGE(ap, "ip", "route", "replace", dst, "dev", wants[i].bridge, "table", "main",
		       "proto", "77");
	}
}

/* ---- applying: nftables ---------------------------------------------------------- */

/* Does the document want table kumo_n<id> (a network with segments)? */
static bool nft_wanted(struct apply *ap, const char *name)
{
	char canonical[32];
	long long id;

	/* Only the name we would give it: kumo_n007 is stale, not network 7's. */
	if (sscanf(name, "kumo_n%lld", &id) != 1)
		return false;
	snprintf(canonical, sizeof(canonical), "kumo_n%lld", id);
	if (strcmp(canonical, name) != 0)
		return false;
	for (size_t i = 0; i < netdoc_len(ap->networks); i++) {
		struct netdoc_net v;

		netdoc_net_read(json_object_array_get_idx(ap->networks, i), &v);
		if (v.id == id)
			return netdoc_len(v.segments) > 0;
	}
	return false;
}

static bool nft_has(struct apply *ap, const char *family, const char *name)
{
	for (size_t i = 0; i < netdoc_len(ap->tables); i++) {
		struct json_object *t =
			json_object_object_get(json_object_array_get_idx(ap->tables, i), "table");

		if (t && strcmp(json_get_str(t, "family", ""), family) == 0 &&
		    strcmp(json_get_str(t, "name", ""), name) == 0)
			return true;
	}
	return false;
}

/* This host's underlay subnet, from the address the underlay interface holds. */
static void underlay_subnet(struct apply *ap)
{
	uint32_t addr;

	if (!netdoc_ipv4_parse(ap->underlay, &addr))
		return;
	for (size_t i = 0; i < netdoc_len(ap->links); i++) {
		struct json_object *addrs = json_object_object_get(
			json_object_array_get_idx(ap->links, i), "addr_info");

		for (size_t k = 0; k < netdoc_len(addrs); k++) {
			struct json_object *a = json_object_array_get_idx(addrs, k);
			int prefix = (int)json_get_int(a, "prefixlen", 0);

			if (strcmp(json_get_str(a, "family", ""), "inet") != 0 ||
			    strcmp(json_get_str(a, "local", ""), ap->underlay) != 0 || prefix < 1 ||
			    prefix > 32)
				continue;
			ap->nft.underlay_prefix = prefix;
			ap->nft.underlay_net = addr & (0xffffffffu << (32 - prefix));
			return;
		}
	}
}

/* One transaction: every wanted table replaced whole, every stale kumo_n* deleted. */
static void nft_sync(struct apply *ap)
{
	_attr_cleanup_(buf_freep) struct buf script = {0};
	struct kerr e;

	underlay_subnet(ap);
	for (size_t i = 0; i < netdoc_len(ap->networks); i++) {
		struct netdoc_net v;
		char name[32], *text;

		netdoc_net_read(json_object_array_get_idx(ap->networks, i), &v);
		if (netdoc_len(v.segments) == 0)
			continue;
		text = netnft_network(&v, &ap->nft);
		buf_append(&script, text, strlen(text));
		free(text);
		snprintf(name, sizeof(name), "kumo_n%lld", (long long)v.id);
		if (ap->tables && (!nft_has(ap, "inet", name) || !nft_has(ap, "bridge", name)))
			ap->changes++;
	}
	for (size_t i = 0; i < netdoc_len(ap->tables); i++) {
		struct json_object *t =
			json_object_object_get(json_object_array_get_idx(ap->tables, i), "table");
		const char *name = json_get_str(t, "name", ""),
			   *family = json_get_str(t, "family", "");

		if (t == NULL || strncmp(name, "kumo_n", 6) != 0)
			continue;
		if (nft_wanted(ap, name) && (!strcmp(family, "inet") || !strcmp(family, "bridge")))
			continue;
		/* Names from nft's own listing; a name nft would not parse is not ours. */
		if (!netdoc_ifname_safe(name) || !netdoc_ifname_safe(family))
			continue;
		buf_printf(&script, "delete table %s %s\n", family, name);
		ap->changes++;
	}
	if (script.len == 0)
		return;
	log_debug("net: nft -f - (%zu bytes)", script.len);
	if (netdrv_run((const char *const[]){"nft", "-f", "-", NULL}, buf_str(&script), NULL, &e) <
	    0)
		failed(ap, &e);
}

/* ---- applying: dnsmasq ----------------------------------------------------------- */

/* Is pid a dnsmasq running with conf? (A pid file may outlive its process.) */
static bool dnsmasq_ours(pid_t pid, const char *conf)
{
	_cleanup_free_ char *text = NULL, *want = xasprintf("--conf-file=%s", conf);
	bool prog = false, conf_seen = false;
	char path[64];
	size_t len;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	if (file_read_all(path, 64 * 1024, &text, &len) < 0)
		return false;
	for (char *p = text; p < text + len; p += strlen(p) + 1) {
		const char *base = strrchr(p, '/') ? strrchr(p, '/') + 1 : p;

		if (p == text && strcmp(base, "dnsmasq") == 0)
			prog = true;
		if (strcmp(p, want) == 0)
			conf_seen = true;
	}
	return prog && conf_seen;
}

/* The dnsmasq of bridge (from its pid file, checked), or 0. */
static pid_t dnsmasq_pid(const char *dir, const char *bridge)
{
	_cleanup_free_ char *pidfile = xasprintf("%s/%s.pid", dir, bridge);
	_cleanup_free_ char *conf = xasprintf("%s/%s.conf", dir, bridge);
	_cleanup_free_ char *text = NULL;
	char *end;
	long pid;

	if (file_read_all(pidfile, 64, &text, NULL) < 0)
		return 0;
	pid = strtol(text, &end, 10);
	if (end == text || pid <= 1 || pid > INT_MAX || !dnsmasq_ours((pid_t)pid, conf))
		return 0;
	return (pid_t)pid;
}

/* SIGTERM, then SIGKILL; returns once it is gone (it is init's child, not ours). */
static void dnsmasq_stop(pid_t pid, const char *conf)
{
	kill(pid, SIGTERM);
	for (int waited = 0; waited < NETDRV_DNSMASQ_STOP_MS; waited += 20) {
		if (!dnsmasq_ours(pid, conf))
			return;
		sleep_ms(20);
	}
	log_warnx("net: dnsmasq %d did not stop on SIGTERM; killing it", (int)pid);
	kill(pid, SIGKILL);
	for (int waited = 0; waited < 1000 && dnsmasq_ours(pid, conf); waited += 20)
		sleep_ms(20);
}

static bool dnsmasq_wanted(struct apply *ap, const char *bridge)
{
	struct netdoc_net n;
	struct netdoc_seg s;

	return seg_lookup(ap, bridge, "kb", &n, &s) && n.mode != NETDOC_BRIDGE && n.dhcp;
}

static const char *const dnsmasq_exts[] = {"conf", "hosts", "pid", "leases"};

/*
 * dnsmasq serves DHCP to tenants, so it is the host process they talk to most: it runs
 * as DNSMASQ_USER (deploy/install-deps.sh makes it; "nobody" where it is missing), not
 * root. It opens its lease file, pid file and sockets as root, then drops to the user
 * keeping only the network capabilities DHCP needs (CAP_NET_ADMIN, CAP_NET_RAW,
 * CAP_NET_BIND_SERVICE). The one file it reads afterwards is its hosts file (on SIGHUP),
 * and the agent's state directory is root's alone (0700): so the hosts files live in
 * DNSMASQ_RUN/<hash of the state directory>/, a directory of root's that only the
 * user's group may read (0750), each file 0640.
 */
#define DNSMASQ_USER "kumo-dnsmasq"
#define DNSMASQ_RUN  "/run/kumo-dnsmasq"

struct dnsmasq_user {
	char user[64], group[64];
	gid_t gid;
};

static void dnsmasq_user(struct dnsmasq_user *u)
{
	struct passwd *pw = getpwnam(DNSMASQ_USER);
	struct group *gr;

	if (pw == NULL)
		pw = getpwnam("nobody");
	snprintf(u->user, sizeof(u->user), "%s", pw ? pw->pw_name : "nobody");
	u->gid = pw ? pw->pw_gid : 65534;
	gr = getgrgid(u->gid);
	snprintf(u->group, sizeof(u->group), "%s", gr ? gr->gr_name : "nogroup");
}

/* The directory of the hosts files of the dnsmasq processes of state directory dir:
 * several agents may share a machine (the test lab), each with its own directory. */
static char *dnsmasq_run_dir(const char *dir)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (const char *c = dir; *c; c++)
		h = (h ^ (unsigned char)*c) * 1099511628211ULL;
	return xasprintf("%s/%016llx", DNSMASQ_RUN, (unsigned long long)h);
}

static char *dnsmasq_hosts_path(const char *dir, const char *bridge)
{
	_cleanup_free_ char *run = dnsmasq_run_dir(dir);

	return xasprintf("%s/%s.hosts", run, bridge);
}

/* Stop the dnsmasq of every segment that wants none and remove its files. */
static void dnsmasq_prune(struct apply *ap)
{
	char **stems = NULL;
	size_t n = 0;
	struct dirent *de;
	DIR *d = opendir(ap->dir);

	if (d == NULL) {
		struct kerr e;

		err_set(&e, errno, "cannot read %s", ap->dir);
		failed(ap, &e);
		return;
	}
	/* Collected first: the loop below removes entries. */
	while ((de = readdir(d)) != NULL) {
		char *dot = strrchr(de->d_name, '.');

		if (dot == NULL || (strcmp(dot, ".pid") != 0 && strcmp(dot, ".conf") != 0))
			continue;
		stems = xrealloc(stems, (n + 1) * sizeof(*stems));
		stems[n++] = xasprintf("%.*s", (int)(dot - de->d_name), de->d_name);
	}
	closedir(d);
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *conf = xasprintf("%s/%s.conf", ap->dir, stems[i]);
		pid_t pid;

		if (!netdoc_kumo_name(stems[i], "kb", NULL, NULL) || dnsmasq_wanted(ap, stems[i]))
			continue;
		if ((pid = dnsmasq_pid(ap->dir, stems[i])) > 0) {
			log_debug("net: stopping dnsmasq %d of %s", (int)pid, stems[i]);
			dnsmasq_stop(pid, conf);
		}
		for (size_t k = 0; k < ARRAY_SIZE(dnsmasq_exts); k++) {
			_cleanup_free_ char *path =
				xasprintf("%s/%s.%s", ap->dir, stems[i], dnsmasq_exts[k]);

			if (unlink(path) == 0)
				ap->changes++;
		}
		{
			_cleanup_free_ char *hosts = dnsmasq_hosts_path(ap->dir, stems[i]);
			_cleanup_free_ char *run_dir = dnsmasq_run_dir(ap->dir);

			if (unlink(hosts) == 0)
				ap->changes++;
			rmdir(run_dir); /* when it was the last one */
		}
	}
	for (size_t i = 0; i < n; i++)
		free(stems[i]);
	free(stems);
}

static void dnsmasq_conf(struct buf *b, const char *dir, const struct netdoc_net *n,
			 const struct netdoc_seg *s, const struct dnsmasq_user *u)
{
	char net[NETDOC_ADDR_LEN], mask[NETDOC_ADDR_LEN];
	_cleanup_free_ char *hosts = dnsmasq_hosts_path(dir, s->bridge);

	netdoc_ipv4_format(n->net, net);
	netdoc_ipv4_format(n->mask, mask);
	buf_printf(b, "# Written by kumo-agentd for network %s (id %lld) VLAN %d; do not edit.\n",
		   n->name, (long long)n->id, s->vlan);
	buf_printf(b, "port=0\ninterface=%s\nbind-interfaces\n", s->bridge);
	buf_printf(b, "user=%s\ngroup=%s\n", u->user, u->group);
	buf_printf(b, "dhcp-range=%s,static,%s,1h\n", net, mask);
	buf_printf(b, "dhcp-authoritative\n");
	buf_printf(b, "dhcp-hostsfile=%s\n", hosts);
	buf_printf(b, "dhcp-leasefile=%s/%s.leases\n", dir, s->bridge);
	buf_printf(b, "pid-file=%s/%s.pid\n", dir, s->bridge);
	/* An empty option sends none: dnsmasq would offer itself as router otherwise. */
	if (n->mode == NETDOC_NAT)
		buf_printf(b, "dhcp-option=option:router,%s\n", n->gateway);
	else
		buf_printf(b, "dhcp-option=option:router\n");
	buf_printf(b, "dhcp-option=option:dns-server");
	for (size_t i = 0; i < netdoc_len(n->dns); i++)
		buf_printf(b, ",%s", json_object_get_string(json_object_array_get_idx(n->dns, i)));
	buf_printf(b, "\ndhcp-option=option:mtu,%d\n", n->mtu);
}

static void dnsmasq_hosts(struct buf *b, const struct netdoc_seg *s)
{
	for (size_t i = 0; i < netdoc_len(s->ports); i++) {
		struct json_object *p = json_object_array_get_idx(s->ports, i);

		buf_printf(b, "%s,%s,%s\n", json_get_str(p, "mac", ""),
			   json_get_str(p, "address", ""), json_get_str(p, "instance", ""));
	}
}

/* Write path if its text differs. Returns 1 written, 0 same, -1 failed (noted). */
static int file_update(struct apply *ap, const char *path, const struct buf *want)
{
	_cleanup_free_ char *cur = NULL;
	int ret;

	if (file_read_all(path, 16 * 1024 * 1024, &cur, NULL) == 0 &&
	    strcmp(cur, buf_str(want)) == 0)
		return 0;
	ret = file_write_atomic(path, buf_str(want), want->len, 0600);
	ap->changes++;
	if (ret < 0) {
		struct kerr e;

		err_set(&e, -ret, "cannot write %s", path);
		failed(ap, &e);
		return -1;
	}
	return 1;
}

/* DNSMASQ_RUN/<hash>: root's, 0750, group gid (the dnsmasq user's) may read it. */
static int dnsmasq_run_dir_make(struct apply *ap, const char *run_dir, gid_t gid)
{
	int ret = mkdir_p(run_dir, 0750);

	if (ret == 0 && (chmod(DNSMASQ_RUN, 0755) < 0 || chown(run_dir, 0, gid) < 0 ||
			 chmod(run_dir, 0750) < 0))
		ret = -errno;
	if (ret < 0) {
		failedx(ap, "cannot make %s: %s", run_dir, strerror(-ret));
		return -1;
	}
	return 0;
}

static void dnsmasq_sync(struct apply *ap, const struct netdoc_net *n, const struct netdoc_seg *s)
{
	_attr_cleanup_(buf_freep) struct buf conf = {0}, hosts = {0};
	_cleanup_free_ char *conf_path = xasprintf("%s/%s.conf", ap->dir, s->bridge);
	_cleanup_free_ char *hosts_path = dnsmasq_hosts_path(ap->dir, s->bridge);
	_cleanup_free_ char *run_dir = dnsmasq_run_dir(ap->dir);
	_cleanup_free_ char *pid_path = xasprintf("%s/%s.pid", ap->dir, s->bridge);
	_cleanup_free_ char *conf_arg = xasprintf("--conf-file=%s", conf_path);
	pid_t pid = dnsmasq_pid(ap->dir, s->bridge);
	struct dnsmasq_user u;
	int conf_new, hosts_new;

	dnsmasq_user(&u);
	if (dnsmasq_run_dir_make(ap, run_dir, u.gid) < 0)
		return;
	dnsmasq_conf(&conf, ap->dir, n, s, &u);
	dnsmasq_hosts(&hosts, s);
	hosts_new = file_update(ap, hosts_path, &hosts);
	/* Written 0600 root: its user reads it through the group. */
	if (hosts_new >= 0 && (chown(hosts_path, 0, u.gid) < 0 || chmod(hosts_path, 0640) < 0)) {
		failedx(ap, "cannot give %s to group %s: %s", hosts_path, u.group, strerror(errno));
		return;
	}
	conf_new = file_update(ap, conf_path, &conf);
	if (hosts_new < 0 || conf_new < 0)
		return;
	for (size_t i = 0; pid > 0 && i < netdoc_len(ap->fresh); i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(ap->fresh, i)),
			   s->bridge) == 0)
			conf_new = 1; /* its socket was bound to the bridge that went */
	if (pid > 0 && conf_new == 0) {
		if (hosts_new == 1)
			log_debug("net: dnsmasq %d of %s: SIGHUP, its hosts changed", (int)pid,
				  s->bridge);
		if (hosts_new == 1 && kill(pid, SIGHUP) < 0)
			failedx(ap, "cannot signal dnsmasq %d of %s: %s", (int)pid, s->bridge,
				strerror(errno));
		return;
	}
	if (pid > 0) {
		log_debug("net: restarting dnsmasq %d of %s: its config changed", (int)pid,
			  s->bridge);
		dnsmasq_stop(pid, conf_path);
	}
	unlink(pid_path);
	/* It daemonises once it has bound its socket; a failure to start is its status. */
	CHANGE(ap, "dnsmasq", conf_arg);
}

/* ---- applying: the whole ---------------------------------------------------------- */

static void ip_forward_sync(struct apply *ap)
{
	static const char *path = "/proc/sys/net/ipv4/ip_forward";
	_cleanup_free_ char *text = NULL;
	_cleanup_close_ int fd = -1;
	bool nat = false;

	for (size_t i = 0; i < netdoc_len(ap->networks); i++)
		if (strcmp(json_get_str(json_object_array_get_idx(ap->networks, i), "mode", ""),
			   "nat") == 0)
			nat = true;
	/* Left alone otherwise: something else on the host may route. */
	if (!nat || (file_read_all(path, 64, &text, NULL) == 0 && text[0] == '1'))
		return;
	ap->changes++;
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1\n", 2) != 2) {
		struct kerr e;

		err_set(&e, errno, "cannot write %s", path);
		failed(ap, &e);
	}
}

int netdrv_apply(struct json_object *doc, const char *dir, struct kerr *err)
{
	struct apply ap = {.dir = dir};

	if (dir[0] != '/' || strchr(dir, '\n'))
		return err_set(err, 0, "network state directory %s is not an absolute path", dir);
	ap.networks = json_object_object_get(doc, "networks");
	ap.underlay = json_get_str(doc, "underlay", "");
	ap.nft.groups = json_object_object_get(doc, "security_groups");
	ap.nft.control_plane = json_object_object_get(doc, "control_plane");
	if (state_read(&ap) == 0) {
		dnsmasq_prune(&ap);
		links_prune(&ap);
		for (size_t i = 0; i < netdoc_len(ap.networks); i++) {
			struct netdoc_net n;

			netdoc_net_read(json_object_array_get_idx(ap.networks, i), &n);
			for (size_t j = 0; j < netdoc_len(n.segments); j++) {
				struct netdoc_seg s;

				netdoc_seg_read(json_object_array_get_idx(n.segments, j), &s);
				segment_apply(&ap, &n, &s);
			}
		}
		routes_sync(&ap);
		nft_sync(&ap);
		for (size_t i = 0; i < netdoc_len(ap.networks); i++) {
			struct netdoc_net n;

			netdoc_net_read(json_object_array_get_idx(ap.networks, i), &n);
			for (size_t j = 0;
			     n.mode != NETDOC_BRIDGE && n.dhcp && j < netdoc_len(n.segments); j++) {
				struct netdoc_seg s;

				netdoc_seg_read(json_object_array_get_idx(n.segments, j), &s);
				dnsmasq_sync(&ap, &n, &s);
			}
		}
		ip_forward_sync(&ap);
	}
	state_free(&ap);
	json_object_put(ap.fresh);
	if (ap.ret < 0) {
		if (err)
			*err = ap.first;
		return ap.ret;
	}
	return ap.changes;
}

int netdrv_port_attach(const char *ifname, const char *bridge, int mtu, struct kerr *err)
{
	struct kerr e;
	char m[16];

	if (!netdoc_ifname_safe(ifname))
		return err_input(err, 400, "ifname", "port name \"%.20s\" is not an interface name",
				 ifname);
	if (!netdoc_ifname_safe(bridge))
		return err_input(err, 400, "bridge", "bridge \"%.20s\" is not an interface name",
				 bridge);
	if (mtu < NETDOC_MTU_MIN || mtu > NETDOC_MTU_MAX)
		return err_input(err, 400, "mtu", "mtu %d is not between %d and %d", mtu,
				 NETDOC_MTU_MIN, NETDOC_MTU_MAX);
	snprintf(m, sizeof(m), "%d", mtu);
	/* Bare: the next apply gives it its MAC, address and VXLAN. */
	if (if_nametoindex(bridge) == 0 &&
	    netdrv_run((const char *const[]){"ip", "link", "add", "name", bridge, "mtu", m, "up",
					     "type", "bridge", NULL},
		       NULL, NULL, &e) < 0 &&
	    strstr(e.msg, "File exists") == NULL) {
		if (err)
			*err = e;
		return -1;
	}
	return netdrv_run((const char *const[]){"ip", "link", "set", "dev", ifname, "master",
						bridge, "mtu", m, "up", NULL},
			  NULL, NULL, err);
}
