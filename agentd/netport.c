/*
 * netport.c - an instance's NICs on networks, on this host: the VM's taps and the
 * container's network namespace with its veths. The net driver (net.c, netdrv.c)
 * makes the segments - bridges, VXLANs, gateways, DHCP - and keeps the ports on them;
 * this file makes the ports, named by the controller (kp<IID>-<I>), and plugs each
 * into its segment's bridge at once, so an instance never waits for the driver.
 *
 *   VM         a persistent tap per NIC, made before QEMU starts (QEMU opens it by
 *              name: -netdev tap,ifname=...,script=no), deleted with the VM.
 *   container  a network namespace bound on {dir}/netns, which the bundle names (so
 *              it outlives runc runs and restarts); per NIC a veth: eth<I> inside with
 *              the NIC's MAC, address, MTU and (first router) default route, the
 *              kp end outside on the bridge. Unbound when the container goes, which
 *              ends the namespace and its veths.
 *
 * Commands are iproute2's, run to completion (netdrv_run()): the VM's from the loop
 * (a few milliseconds before a QEMU start), the container's from the bundle job, off
 * the loop.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "netdrv.h"
#include "util.h"

static bool link_exists(const char *ifname)
{
	return if_nametoindex(ifname) != 0;
}

/* Run argv; -1 with err naming what failed. */
static int run(const char *const argv[], struct kerr *err)
{
	char *out = NULL;
	int ret = netdrv_run(argv, NULL, &out, err);

	free(out);
	return ret;
}

static int nic_attach(struct json_object *nic, struct kerr *err)
{
	return netdrv_port_attach(json_get_str(nic, "ifname", ""), json_get_str(nic, "bridge", ""),
				  (int)json_get_int(nic, "mtu", 1500), err);
}

int netport_vm_prepare(struct json_object *nics, struct kerr *err)
{
	for (size_t i = 0; nics && i < json_array_len(nics); i++) {
		struct json_object *nic = json_object_array_get_idx(nics, i);
		const char *ifname = json_get_str(nic, "ifname", NULL);

		if (json_get_str(nic, "network", NULL) == NULL || ifname == NULL)
			continue;
		/* QEMU is not running (vm_start()): a tap of this name is this VM's from
		 * an earlier run or a leftover of a forgotten instance; start afresh. */
		if (link_exists(ifname) &&
		    run((const char *const[]){"ip", "link", "del", "dev", ifname, NULL}, err) < 0)
			return -1;
		if (run((const char *const[]){"ip", "tuntap", "add", "dev", ifname, "mode", "tap",
					      NULL},
			err) < 0)
			return -1;
		if (nic_attach(nic, err) < 0)
			return -1;
	}
	return 0;
}

void netport_vm_remove(struct json_object *nics)
{
	for (size_t i = 0; nics && i < json_array_len(nics); i++) {
		const char *ifname =
			json_get_str(json_object_array_get_idx(nics, i), "ifname", NULL);
		struct kerr err;

		if (ifname && link_exists(ifname) &&
		    run((const char *const[]){"ip", "link", "del", "dev", ifname, NULL}, &err) < 0)
			log_warnx("cannot remove tap %s: %s", ifname, err.msg);
	}
}

bool netport_ctr_networked(struct json_object *nics)
{
	return nics && json_array_len(nics) > 0;
}

/* {dir}/netns: a network namespace of its own, bound there; made once. With
 * userns_base, inside a user namespace over it bound on {dir}/userns (uid.c). Returns 1
 * when made now, 0 when it was there, -1 with err. */
static int netns_make(const char *path, unsigned userns_base, struct kerr *err)
{
	_cleanup_free_ char *arg = xasprintf("--net=%s", path);
	_cleanup_free_ char *userns =
		xasprintf("%.*s/userns", (int)(strrchr(path, '/') - path), path);
	_cleanup_free_ char *userarg = xasprintf("--user=%s", userns);
	_cleanup_close_ int fd = -1;

	if (access(path, F_OK) == 0) {
		/* Bound already, or an empty file a failed attempt left. With a user
		 * namespace wanted, both must be there (a namespace made before has none). */
		char *out = NULL;
		struct kerr why;
		int ret = netdrv_run(
			userns_base ? (const char *const[]){"nsenter", userarg, arg, "true", NULL}
				    : (const char *const[]){"nsenter", arg, "true", NULL},
			NULL, &out, &why);

		free(out);
		if (ret == 0)
			return 0;
		umount2(path, MNT_DETACH);
		umount2(userns, MNT_DETACH);
		unlink(path);
		unlink(userns);
	}
	if (userns_base)
		return uid_ctr_netns_make(userns_base, userns, path, err) < 0 ? -1 : 1;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return err_set(err, errno, "cannot create %s", path);
	if (run((const char *const[]){"unshare", arg, "true", NULL}, err) < 0)
		return -1;
	return 1;
}

/*
 * Wire the container's NICs in {dir}/netns, making what is missing: the namespace,
 * each veth, its address and routes. Idempotent: a start after a stop finds it all.
 */
int netport_ctr_prepare(const char *dir, struct json_object *nics, unsigned userns_base,
			struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/netns", dir);
	_cleanup_free_ char *nsarg = xasprintf("--net=%s", path);
	char agent_pid[16];
	bool routed = false;
	int made;

	if (!netport_ctr_networked(nics))
		return 0;
	made = netns_make(path, userns_base, err);
	if (made < 0)
		return -1;
	snprintf(agent_pid, sizeof(agent_pid), "%d", (int)getpid());
	if (run((const char *const[]){"nsenter", nsarg, "ip", "link", "set", "lo", "up", NULL},
		err) < 0)
		return -1;
	for (size_t i = 0; i < json_array_len(nics); i++) {
		struct json_object *nic = json_object_array_get_idx(nics, i);
		const char *ifname = json_get_str(nic, "ifname", "");
		const char *router = json_get_str(nic, "router", NULL);
		char inner[16], mtu[16], cidr[32];

		snprintf(inner, sizeof(inner), "eth%zu", i);
		snprintf(mtu, sizeof(mtu), "%lld", (long long)json_get_int(nic, "mtu", 1500));
		snprintf(cidr, sizeof(cidr), "%s/%lld", json_get_str(nic, "address", ""),
			 (long long)json_get_int(nic, "prefix", 24));
		/* A new namespace has no veth yet: a port of this name outside belongs to
		 * an instance that went without its namespace (a forgotten one). */
		if (made && link_exists(ifname) &&
		    run((const char *const[]){"ip", "link", "del", "dev", ifname, NULL}, err) < 0)
			return -1;
		/* Made inside, its peer sent out to this agent's namespace. */
		if (!link_exists(ifname) &&
		    run((const char *const[]){"nsenter", nsarg, "ip", "link", "add", inner, "type",
					      "veth", "peer", "name", ifname, "netns", agent_pid,
					      NULL},
			err) < 0)
			return -1;
		if (run((const char *const[]){"nsenter", nsarg, "ip", "link", "set", "dev", inner,
					      "address", json_get_str(nic, "mac", ""), "mtu", mtu,
					      "up", NULL},
			err) < 0 ||
		    run((const char *const[]){"nsenter", nsarg, "ip", "addr", "replace", cidr,
					      "dev", inner, NULL},
			err) < 0)
			return -1;
		if (router && !routed) {
			if (run((const char *const[]){"nsenter", nsarg, "ip", "route", "replace",
						      "default", "via", router, "dev", inner, NULL},
				err) < 0)
				return -1;
			routed = true;
		}
		if (nic_attach(nic, err) < 0)
			return -1;
	}
	return 0;
}

/* The namespace path for the bundle, or NULL for a container without NICs (new one). */
char *netport_ctr_netns(const char *dir, struct json_object *nics)
{
	return netport_ctr_networked(nics) ? xasprintf("%s/netns", dir) : NULL;
}

/* Unbind {dir}/netns: with no process left in it, the namespace and its veths end. */
void netport_ctr_remove(const char *dir)
{
	_cleanup_free_ char *path = xasprintf("%s/netns", dir);

	_cleanup_free_ char *userns = xasprintf("%s/userns", dir);

	if (umount2(path, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
		log_warnx("cannot unmount %s: %s", path, strerror(errno));
	if (unlink(path) < 0 && errno != ENOENT)
		log_warnx("cannot remove %s: %s", path, strerror(errno));
	/* The user namespace that owned it (uid.c), if the container had one. */
	umount2(userns, MNT_DETACH);
	unlink(userns);
}

/*
 * {dir}/resolv.conf from the DNS servers of the container's NICs, for the bundle to
 * bind on /etc/resolv.conf: *path gets its path, or NULL when no NIC names a server
 * (the image's own file stays). Returns 0, or -1 with err.
 */
int netport_ctr_resolv(const char *dir, struct json_object *nics, char **path, struct kerr *err)
{
	char text[1024];
	size_t len = 0;
	int ret;

	*path = NULL;
	text[0] = '\0';
	for (size_t i = 0; nics && i < json_array_len(nics); i++) {
		struct json_object *dns =
			json_object_object_get(json_object_array_get_idx(nics, i), "dns");

		for (size_t j = 0; dns && j < json_array_len(dns); j++)
			if (len < sizeof(text) - 40)
				len += (size_t)snprintf(
					text + len, sizeof(text) - len, "nameserver %s\n",
					json_object_get_string(json_object_array_get_idx(dns, j)));
	}
	if (len == 0)
		return 0;
	*path = xasprintf("%s/resolv.conf", dir);
	ret = file_write_atomic(*path, text, len, 0644);
	if (ret < 0) {
		err_set(err, -ret, "cannot write %s", *path);
		free(*path);
		*path = NULL;
		return -1;
	}
	return 0;
}
