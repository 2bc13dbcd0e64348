/*
 * usage.c - what each running instance uses, added to its heartbeat report: CPU time,
 * memory, and bytes through its NICs. The controller turns successive reports into
 * rates and keeps the last hour (controllerd/usage.c) for the dashboard's charts.
 *
 * Everything is read from /proc and the cgroup v1 files, by the instance's pid only, so
 * it is the same for every workload type:
 *   cpu     the cpuacct cgroup's usage when the pid has its own cgroup (a container, a VM
 *           in its own cgroup), else the process's utime + stime (QEMU's threads);
 *   memory  the memory cgroup's usage when it has its own, else the process's RSS;
 *   network a container's own network namespace (/proc/PID/net/dev, all but lo); a VM's
 *           taps, named by its spec's NICs (the agent made them), in the agent's own
 *           namespace's /proc/self/net/dev.
 * These are small procfs reads on the loop, a handful per instance per heartbeat.
 */
#include "agentd.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "util.h"

#define USAGE_FILE_MAX	  (64 * 1024)
#define USAGE_NET_DEV_MAX (4 * 1024 * 1024) /* ~130 bytes a line: every tap of a big host */

/* The first line of path as an unsigned number; false when there is none. */
static bool read_u64(const char *path, uint64_t *out)
{
	_cleanup_free_ char *text = NULL;
	unsigned long long v;

	if (file_read_all(path, USAGE_FILE_MAX, &text, NULL) < 0 || sscanf(text, "%llu", &v) != 1)
		return false;
	*out = v;
	return true;
}

/*
 * The pid's cgroup path in the v1 hierarchy named controller ("memory", "cpuacct"):
 * false when the pid sits in the root cgroup (its numbers would be the host's).
 */
static bool cgroup_path(pid_t pid, const char *controller, char *out, size_t len)
{
	_cleanup_free_ char *text = NULL;
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
	if (file_read_all(path, USAGE_FILE_MAX, &text, NULL) < 0)
		return false;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		char *ctl = strchr(line, ':'), *rel;

		if (ctl == NULL || (rel = strchr(++ctl, ':')) == NULL)
			continue;
		*rel++ = '\0';
		/* "cpu,cpuacct": the controller is one of the comma-separated names. */
		for (char *save = NULL, *c = strtok_r(ctl, ",", &save); c;
		     c = strtok_r(NULL, ",", &save)) {
			if (strcmp(c, controller) || strcmp(rel, "/") == 0)
				continue;
			snprintf(out, len, "%s", rel);
			return true;
		}
	}
	return false;
}

/* A cgroup v1 file of the pid's cgroup: the mount may join controllers ("cpu,cpuacct"). */
static bool cgroup_u64(pid_t pid, const char *controller, const char *file, uint64_t *out)
{
	static const char *const mounts[][2] = {
		{"cpuacct", "cpu,cpuacct"}, {"cpuacct", "cpuacct"}, {"memory", "memory"}};
	char rel[1024], path[1200];

	if (!cgroup_path(pid, controller, rel, sizeof(rel)))
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(mounts); i++) {
		if (strcmp(mounts[i][0], controller))
			continue;
		snprintf(path, sizeof(path), "/sys/fs/cgroup/%s%s/%s", mounts[i][1], rel, file);
		if (read_u64(path, out))
			return true;
	}
	return false;
}

static uint64_t cpu_ns(pid_t pid)
{
	_cleanup_free_ char *text = NULL;
	unsigned long long utime, stime;
	uint64_t ns;
	char path[64], *p;

	if (cgroup_u64(pid, "cpuacct", "cpuacct.usage", &ns))
		return ns;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (file_read_all(path, USAGE_FILE_MAX, &text, NULL) < 0 ||
	    (p = strrchr(text, ')')) == NULL)
		return 0;
	/* After "(comm)": state is field 3; utime and stime are fields 14 and 15. */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
		   &stime) != 2)
		return 0;
	return (uint64_t)(utime + stime) * (1000000000ULL / (uint64_t)sysconf(_SC_CLK_TCK));
}

static uint64_t mem_bytes(pid_t pid)
{
	_cleanup_free_ char *text = NULL;
	unsigned long long kb = 0;
	uint64_t b;
	char path[64], *p;

	if (cgroup_u64(pid, "memory", "memory.usage_in_bytes", &b))
		return b;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if (file_read_all(path, USAGE_FILE_MAX, &text, NULL) < 0 ||
	    (p = strstr(text, "\nVmRSS:")) == NULL || sscanf(p + 7, "%llu", &kb) != 1)
		return 0;
	return (uint64_t)kb * 1024;
}

/* Sum of every interface but lo in the pid's network namespace. */
static void net_ns_bytes(pid_t pid, uint64_t *rx, uint64_t *tx)
{
	_cleanup_free_ char *text = NULL;
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/net/dev", (int)pid);
	if (file_read_all(path, USAGE_FILE_MAX, &text, NULL) < 0)
		return;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		char *colon = strchr(line, ':');
		unsigned long long r, t;

		if (colon == NULL)
			continue;
		*colon = '\0';
		while (*line == ' ')
			line++;
		if (strcmp(line, "lo") == 0)
			continue;
		if (sscanf(colon + 1, "%llu %*u %*u %*u %*u %*u %*u %*u %llu", &r, &t) == 2) {
			*rx += r;
			*tx += t;
		}
	}
}

/* An interface name safe to put in a /sys path: 1-15 of [A-Za-z0-9._-], not "." or "..". */
static bool iface_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 15 || !strcmp(s, ".") || !strcmp(s, ".."))
		return false;
	return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* name's byte counters in text, a net/dev table of /proc: false when it lists no name. */
static bool net_dev_bytes(const char *text, const char *name, uint64_t *rx, uint64_t *tx)
{
	size_t n = strlen(name);

	for (const char *line = text; line != NULL && *line; line = strchr(line, '\n')) {
		unsigned long long r, t;

		line += strspn(line, "\n ");
		if (strncmp(line, name, n) != 0 || line[n] != ':')
			continue;
		if (sscanf(line + n + 1, "%llu %*u %*u %*u %*u %*u %*u %*u %llu", &r, &t) != 2)
			return false;
		*rx = r;
		*tx = t;
		return true;
	}
	return false;
}

/*
 * A VM's taps: the NICs of its spec that are on a network name the tap the agent made
 * for each (ifname, netport.c) and QEMU opened (qemuargs.c); dev is the agent's own
 * network namespace's net/dev table, where the taps are. (Not /sys/class/net: an agent
 * started in a namespace by `ip netns exec` of a sysfs mounted elsewhere, as the lab's
 * are, sees another namespace's interfaces there, and its VMs' traffic read as 0.)
 * The tap's counters are seen from the host, so its rx is what the guest sent: swapped
 * to be the guest's view. No scan of QEMU's descriptors (85 fdinfo files per QEMU here,
 * on every heartbeat, on the loop).
 */
static void net_tap_bytes(struct json_object *spec, const char *dev, uint64_t *rx, uint64_t *tx)
{
	struct json_object *nics;

	if (spec == NULL || dev == NULL || !json_object_object_get_ex(spec, "nics", &nics) ||
	    !json_object_is_type(nics, json_type_array))
		return;
	for (size_t i = 0; i < json_array_len(nics); i++) {
		struct json_object *nic = json_object_array_get_idx(nics, i);
		const char *name = json_get_str(nic, "ifname", NULL);
		uint64_t r = 0, t = 0;

		/* A NIC without a network is QEMU's user networking: no tap. */
		if (json_get_str(nic, "network", NULL) == NULL || name == NULL ||
		    !iface_name_ok(name) || !net_dev_bytes(dev, name, &r, &t))
			continue;
		*rx += t;
		*tx += r;
	}
}

/* Add "usage" to every running instance of a's report in reports (an array, of
 * inst_reports()). */
void usage_annotate(struct agent *a, struct json_object *reports)
{
	_cleanup_free_ char *dev = NULL;
	bool dev_read = false;
	size_t n = json_array_len(reports);

	for (size_t i = 0; i < n; i++) {
		struct json_object *r = json_object_array_get_idx(reports, i), *u;
		int64_t pid = json_get_int(r, "pid", 0);
		struct inst *inst = inst_find(a, json_get_str(r, "name", ""));
		uint64_t rx = 0, tx = 0;

		if (inst == NULL || pid <= 1 || strcmp(json_get_str(r, "state", ""), "running"))
			continue;
		if (!strcmp(json_get_str(r, "type", ""), "container")) {
			net_ns_bytes((pid_t)pid, &rx, &tx);
		} else {
			/* Read once per beat, for every VM: the agent's namespace's table. */
			if (!dev_read &&
			    file_read_all("/proc/self/net/dev", USAGE_NET_DEV_MAX, &dev, NULL) < 0)
				dev = NULL;
			dev_read = true;
			net_tap_bytes(inst->spec, dev, &rx, &tx);
		}
		u = json_object_new_object();
		json_object_object_add(u, "cpu_ns",
				       json_object_new_int64((int64_t)cpu_ns((pid_t)pid)));
		json_object_object_add(u, "mem_bytes",
				       json_object_new_int64((int64_t)mem_bytes((pid_t)pid)));
		json_object_object_add(u, "rx_bytes", json_object_new_int64((int64_t)rx));
		json_object_object_add(u, "tx_bytes", json_object_new_int64((int64_t)tx));
		json_object_object_add(r, "usage", u);
	}
}
