/*
 * facts.c - what this host offers, as the controller's scheduler sees it.
 *
 * Everything here is read from /proc, /sys, /lib/modules and statvfs() of the pools.
 * Those are cheap, except that statvfs() of a shared pool on a hung NFS server never
 * returns, so collection runs on libuv's thread pool and the loop gets the result.
 * The KVM probe is the one expensive fact; kvmprobe.c keeps its cached result and
 * the collection is handed a copy.
 */
#include "agentd.h"

#include <ifaddrs.h>
#include <net/if.h>
#include <sys/socket.h>

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>

#include "util.h"

#define PROC_FILE_MAX	 (16 * 1024 * 1024)
#define MODULES_FILE_MAX (32 * 1024 * 1024)

struct facts_work {
	uv_work_t req;
	struct agent *agent;
	const struct agent_config *cfg; /* read-only while the loop runs */
	bool kvm_usable;
	int64_t started_us;
	struct json_object *facts;
	facts_done_cb cb;
	void *data;
};

static bool line_starts(const char *line, const char *key)
{
	size_t len = strlen(key);

	return strncmp(line, key, len) == 0 && strchr(" \t:", line[len]);
}

/* CPU count and hardware virtualisation ("vmx", "svm" or NULL) from /proc/cpuinfo. */
static void cpuinfo_read(int *cpus, const char **hw_virt)
{
	_cleanup_free_ char *text = NULL;
	bool flags_seen = false;

	*cpus = 0;
	*hw_virt = NULL;
	if (file_read_all("/proc/cpuinfo", PROC_FILE_MAX, &text, NULL) < 0)
		return;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (line_starts(line, "processor"))
			(*cpus)++;
		if (!flags_seen && line_starts(line, "flags")) {
			char *save = NULL, *colon = strchr(line, ':');

			flags_seen = true;
			for (char *w = strtok_r(colon ? colon + 1 : line, " \t", &save); w;
			     w = strtok_r(NULL, " \t", &save)) {
				if (strcmp(w, "vmx") == 0)
					*hw_virt = "vmx";
				else if (strcmp(w, "svm") == 0)
					*hw_virt = "svm";
			}
		}
	}
}

/* MemTotal and MemAvailable (MemFree on kernels without it) in kB. */
static void meminfo_read(int64_t *total_kb, int64_t *avail_kb)
{
	_cleanup_free_ char *text = NULL;
	int64_t free_kb = 0;
	const char *p;

	*total_kb = *avail_kb = -1;
	if (file_read_all("/proc/meminfo", PROC_FILE_MAX, &text, NULL) < 0)
		return;
	if ((p = strstr(text, "MemTotal:")))
		*total_kb = strtoll(p + 9, NULL, 10);
	if ((p = strstr(text, "MemFree:")))
		free_kb = strtoll(p + 8, NULL, 10);
	if ((p = strstr(text, "MemAvailable:")))
		*avail_kb = strtoll(p + 13, NULL, 10);
	else
		*avail_kb = free_kb;
}

static struct json_object *load_read(void)
{
	struct json_object *arr = json_object_new_array();
	_cleanup_free_ char *text = NULL;
	double load[3] = {0, 0, 0};

	if (file_read_all("/proc/loadavg", 4096, &text, NULL) == 0)
		sscanf(text, "%lf %lf %lf", &load[0], &load[1], &load[2]);
	for (int i = 0; i < 3; i++) {
		char repr[32];

		/* Two decimals as the kernel gives them, not 0.28999999999999998. */
		snprintf(repr, sizeof(repr), "%.2f", load[i]);
		json_object_array_add(arr, json_object_new_double_s(load[i], repr));
	}
	return arr;
}

static bool sysfs_flag_read(const char *path)
{
	_cleanup_free_ char *text = NULL;

	if (file_read_all(path, 4096, &text, NULL) < 0)
		return false;
	return text[0] == 'Y' || text[0] == 'y' || text[0] == '1';
}

/* True when text has a line naming module's .ko file (any directory, any compression). */
static bool modules_list_has(const char *text, const char *module)
{
	_cleanup_free_ char *ko = xasprintf("%s.ko", module);
	size_t len = strlen(ko);

	for (const char *p = strstr(text, ko); p; p = strstr(p + 1, ko)) {
		bool starts = p == text || p[-1] == '/' || p[-1] == '\n';
		char after = p[len];

		if (starts && (after == '\0' || after == '\n' || after == ':' || after == '.'))
			return true;
	}
	return false;
}

/*
 * A kernel feature is there if its module is loaded (or built in with parameters), or
 * the running kernel could load it: it is listed in modules.builtin or modules.dep.
 */
/*
 * The host's own interfaces, for bridge uplinks: every one but lo and those the net
 * driver made (kb*, kx*, kp*). if_nameindex() asks netlink, so it sees this network
 * namespace (/sys/class/net shows the namespace sysfs was mounted in).
 */
static struct json_object *interfaces_list(void)
{
	struct json_object *list = json_object_new_array();
	struct if_nameindex *ifs = if_nameindex();

	for (struct if_nameindex *i = ifs; i && i->if_index; i++) {
		const char *n = i->if_name;

		if (strcmp(n, "lo") == 0 ||
		    (n[0] == 'k' && (n[1] == 'b' || n[1] == 'x' || n[1] == 'p')))
			continue;
		json_object_array_add(list, json_object_new_string(n));
	}
	if (ifs)
		if_freenameindex(ifs);
	return list;
}

/* The interfaces holding an IPv4 address: the host's own networks, never an uplink. */
static struct json_object *interfaces_addressed(void)
{
	struct json_object *list = json_object_new_array();
	struct ifaddrs *ifa = NULL;

	if (getifaddrs(&ifa) < 0)
		return list;
	for (struct ifaddrs *i = ifa; i; i = i->ifa_next) {
		bool seen = false;

		if (i->ifa_addr == NULL || i->ifa_addr->sa_family != AF_INET ||
		    strcmp(i->ifa_name, "lo") == 0)
			continue;
		for (size_t j = 0; j < json_array_len(list) && !seen; j++)
			seen = !strcmp(json_object_get_string(json_object_array_get_idx(list, j)),
				       i->ifa_name);
		if (!seen)
			json_object_array_add(list, json_object_new_string(i->ifa_name));
	}
	freeifaddrs(ifa);
	return list;
}

static bool kernel_feature(const char *module, const char *release)
{
	static const char *lists[] = {"modules.builtin", "modules.dep"};
	_cleanup_free_ char *sys = xasprintf("/sys/module/%s", module);
	struct stat st;

	if (stat(sys, &st) == 0)
		return true;
	for (size_t i = 0; i < ARRAY_SIZE(lists); i++) {
		_cleanup_free_ char *path = xasprintf("/lib/modules/%s/%s", release, lists[i]);
		_cleanup_free_ char *text = NULL;

		if (file_read_all(path, MODULES_FILE_MAX, &text, NULL) == 0 &&
		    modules_list_has(text, module))
			return true;
	}
	return false;
}

static void pool_add(struct json_object *pools, const char *name, const char *path)
{
	struct json_object *pool;
	struct statvfs vfs;
	const int64_t mb = 1024 * 1024;

	/* A pool that is not there is not offered; start-up warned about it. */
	if (statvfs(path, &vfs) < 0)
		return;
	pool = json_object_new_object();
	json_object_object_add(pool, "name", json_object_new_string(name));
	json_object_object_add(pool, "path", json_object_new_string(path));
	json_object_object_add(
		pool, "free_mb",
		json_object_new_int64((int64_t)vfs.f_bavail * (int64_t)vfs.f_frsize / mb));
	json_object_object_add(
		pool, "total_mb",
		json_object_new_int64((int64_t)vfs.f_blocks * (int64_t)vfs.f_frsize / mb));
	json_object_array_add(pools, pool);
}

/*
 * Set the KVM facts in facts: kvm_usable, and accel ("kvm" only when a guest really
 * ran, else "tcg").
 */
static const char *accel_mode = "auto";

/* The operator's --accel: auto follows the probe; kvm or tcg overrides it. */
void facts_accel_config(const char *mode)
{
	accel_mode = mode;
}

void facts_kvm_set(struct json_object *facts, bool kvm_usable)
{
	const char *accel = !strcmp(accel_mode, "auto") ? (kvm_usable ? "kvm" : "tcg") : accel_mode;

	json_object_object_add(facts, "kvm_usable", json_object_new_boolean(kvm_usable));
	json_object_object_add(facts, "accel", json_object_new_string(accel));
	json_object_object_add(facts, "accel_mode", json_object_new_string(accel_mode));
}

/*
 * Collect the host's facts as a new JSON object (the caller owns it). May block on
 * the file systems of the pools, so call it off the loop; it touches no shared state.
 * kvm_usable is the cached probe result; started_us the agent's start time.
 */
struct json_object *facts_collect(const struct agent_config *cfg, bool kvm_usable,
				  int64_t started_us)
{
	struct json_object *facts = json_object_new_object(), *net, *pools;
	int64_t total_kb, avail_kb;
	const char *hw_virt;
	struct utsname uts;
	struct stat st;
	int cpus;

	if (uname(&uts) < 0)
		memset(&uts, 0, sizeof(uts));
	cpuinfo_read(&cpus, &hw_virt);
	meminfo_read(&total_kb, &avail_kb);

	json_object_object_add(facts, "cpus", json_object_new_int(cpus));
	json_object_object_add(facts, "memory_mb", json_object_new_int64(total_kb / 1024));
	json_object_object_add(facts, "memory_free_mb", json_object_new_int64(avail_kb / 1024));
	json_object_object_add(facts, "load", load_read());
	json_object_object_add(facts, "kernel", json_object_new_string(uts.release));
	json_object_object_add(facts, "arch", json_object_new_string(uts.machine));
	json_object_object_add(facts, "hw_virt", hw_virt ? json_object_new_string(hw_virt) : NULL);
	json_object_object_add(
		facts, "kvm_device",
		json_object_new_boolean(stat("/dev/kvm", &st) == 0 && S_ISCHR(st.st_mode)));
	facts_kvm_set(facts, kvm_usable);
	json_object_object_add(facts, "nested",
			       json_object_new_boolean(
				       sysfs_flag_read("/sys/module/kvm_intel/parameters/nested") ||
				       sysfs_flag_read("/sys/module/kvm_amd/parameters/nested")));

	net = json_object_new_object();
	json_object_object_add(net, "vxlan",
			       json_object_new_boolean(kernel_feature("vxlan", uts.release)));
	json_object_object_add(net, "vlan_8021q",
			       json_object_new_boolean(kernel_feature("8021q", uts.release)));
	json_object_object_add(net, "bridge",
			       json_object_new_boolean(kernel_feature("bridge", uts.release)));
	json_object_object_add(net, "interfaces", interfaces_list());
	json_object_object_add(net, "addressed", interfaces_addressed());
	json_object_object_add(facts, "net", net);

	json_object_object_add(facts, "qemu_user", json_object_new_string(cfg->qemu_user));
	json_object_object_add(facts, "qemu_uid_base", json_object_new_int(cfg->qemu_uid_base));
	/* Post-copy needs userfaultfd(2) in the target QEMU (QEMU 7.2 has no
	 * /dev/userfaultfd path): a QEMU that keeps root (--qemu-user root: it never
	 * runs -runas, whatever --qemu-uid-base says), or any user once the host's
	 * installer set vm.unprivileged_userfaultfd=1 (docs/architecture.md). */
	json_object_object_add(
		facts, "postcopy",
		json_object_new_boolean(!strcmp(cfg->qemu_user, "root") ||
					sysfs_flag_read("/proc/sys/vm/unprivileged_userfaultfd")));
	pools = json_object_new_array();
	pool_add(pools, "shared", cfg->shared_pool);
	pool_add(pools, "local", cfg->local_pool);
	json_object_object_add(facts, "pools", pools);

	/* "instances" and "instances_running" are the loop's to add (heartbeat_send()). */
	json_object_object_add(facts, "agent_version", json_object_new_string(KUMO_VERSION));
	json_object_object_add(facts, "uptime_s",
			       json_object_new_int64((now_us() - started_us) / 1000000));
	return facts;
}

static void collect_work_cb(uv_work_t *req)
{
	struct facts_work *w = req->data;

	w->facts = facts_collect(w->cfg, w->kvm_usable, w->started_us);
}

static void collect_after_cb(uv_work_t *req, int status)
{
	struct facts_work *w = req->data;

	/* Cancelled work (status UV_ECANCELED) still reports, with facts NULL. */
	w->cb(w->agent, w->facts, w->data);
	json_object_put(w->facts);
	free(w);
}

/*
 * Collect facts on the thread pool, then call cb on the loop with them (borrowed: cb
 * takes a reference to keep them; NULL if the work was cancelled). Returns 0, or -1
 * with err when the work could not be queued (cb is then not called).
 */
int facts_collect_start(struct agent *a, facts_done_cb cb, void *data, struct kerr *err)
{
	struct facts_work *w = xcalloc(1, sizeof(*w));
	int ret;

	w->req.data = w;
	w->agent = a;
	w->cfg = a->cfg;
	w->kvm_usable = a->kvm_usable;
	w->started_us = a->started_us;
	w->cb = cb;
	w->data = data;
	ret = uv_queue_work(a->loop, &w->req, collect_work_cb, collect_after_cb);
	if (ret < 0) {
		free(w);
		return err_set(err, -ret, "cannot queue the facts collection");
	}
	return 0;
}

/*
 * Warn at start-up about pools whose directory is missing: they are left out of the
 * facts (a shared pool is a mount; creating a directory in its place would be wrong).
 */
void facts_pools_warn(const struct agent_config *cfg)
{
	struct stat st;

	if (stat(cfg->shared_pool, &st) < 0 || !S_ISDIR(st.st_mode))
		log_warnx("pool shared: %s is not a directory; not offered until it is",
			  cfg->shared_pool);
	if (stat(cfg->local_pool, &st) < 0 || !S_ISDIR(st.st_mode))
		log_warnx("pool local: %s is not a directory; not offered until it is",
			  cfg->local_pool);
}
