/*
 * vmcgroup.c - each VM's QEMU in a cgroup of its own with the VM's limits, so a guest
 * (or a QEMU it broke into) cannot take the host's memory, CPU or pids from the others.
 *
 * The cgroup is the instance's (oci_cgroup_path(): /kumo/HOST-CLUSTER/NAME), in the
 * memory, cpu and pids controllers of cgroup v1, or the unified tree of v2:
 *   memory  the guest's largest memory (max_mb, else mb) + VMCGROUP_OVERHEAD_MIB for
 *           QEMU itself (TCG's translation cache, device state, I/O buffers); past it
 *           the kernel reclaims and then kills QEMU, not a neighbour;
 *   cpu     weight in proportion to the vCPUs (v1 shares 1024 each, v2 weight 100
 *           each) and a quota of vCPUs + 1 CPUs (the +1 is QEMU's main loop and I/O
 *           threads);
 *   pids    VMCGROUP_PIDS: QEMU's threads (vCPUs, I/O workers) and no fork bomb.
 * QEMU enters right after it was spawned (posix_spawn runs no code of ours in the child); its
 * memory charged before that stays with the agent's cgroup (v1 moves it where the
 * kernel still can, move_charge_at_immigrate). Needs root: writing cgroupfs.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "util.h"

#define VMCGROUP_OVERHEAD_MIB 512
#define VMCGROUP_PIDS	      1024
#define VMCGROUP_PERIOD_US    100000

/* Where the limits go, per hierarchy: the file gets value, then suffix. */
struct limit {
	const char *controller; /* v1 mount under /sys/fs/cgroup; NULL in v2 */
	const char *file;
	int64_t value;
	const char *suffix;
};

static bool cgroup_v2(void)
{
	return access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0;
}

static int file_put(const char *dir, const char *file, const char *value, struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", dir, file);
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, value, strlen(value)) < 0)
		return err_set(err, errno, "cannot write %s to %s", value, path);
	return 0;
}

/*
 * Make vm's cgroup with its limits and move QEMU (pid) into it. Returns 0, or -1 with
 * err (the caller stops QEMU: a VM runs limited or not at all).
 */
int vmcgroup_enter(struct vm *vm, pid_t pid, struct kerr *err)
{
	struct json_object *mem = json_object_object_get(vm->inst.spec, "memory");
	int64_t mb = json_get_int(mem, "max_mb", json_get_int(mem, "mb", 256));
	int64_t vcpus = json_get_int(vm->inst.spec, "vcpus", 1);
	int64_t mem_bytes = (mb + VMCGROUP_OVERHEAD_MIB) << 20;
	int64_t quota = (vcpus + 1) * VMCGROUP_PERIOD_US;
	bool v2 = cgroup_v2();
	char path[PATH_MAX], pidtext[24];
	const struct limit v1_limits[] = {
		{"memory", "memory.move_charge_at_immigrate", 3, ""},
		{"memory", "memory.limit_in_bytes", mem_bytes, ""},
		{"cpu", "cpu.shares", 1024 * vcpus, ""},
		{"cpu", "cpu.cfs_period_us", VMCGROUP_PERIOD_US, ""},
		{"cpu", "cpu.cfs_quota_us", quota, ""},
		{"pids", "pids.max", VMCGROUP_PIDS, ""},
	};
	const struct limit v2_limits[] = {
		{NULL, "memory.max", mem_bytes, ""},
		{NULL, "cpu.weight", vcpus * 100 > 10000 ? 10000 : vcpus * 100, ""},
		{NULL, "cpu.max", quota,
		 "%lld "
		 "100000"},
		{NULL, "pids.max", VMCGROUP_PIDS, ""},
	};
	const struct limit *limits = v2 ? v2_limits : v1_limits;
	size_t nlimits = v2 ? ARRAY_SIZE(v2_limits) : ARRAY_SIZE(v1_limits);
	static const char *const v1_controllers[] = {"memory", "cpu", "pids"};

	oci_cgroup_path(vm->inst.agent, vm->inst.name, path, sizeof(path));
	snprintf(pidtext, sizeof(pidtext), "%d", (int)pid);
	for (size_t i = 0; i < nlimits; i++) {
		_cleanup_free_ char *dir =
			v2 ? xasprintf("/sys/fs/cgroup%s", path)
			   : xasprintf("/sys/fs/cgroup/%s%s", limits[i].controller, path);
		char value[48];
		int ret = mkdir_p(dir, 0755);

		if (ret < 0)
			return err_set(err, -ret, "cannot make cgroup %s", dir);
		snprintf(value, sizeof(value), "%lld%s", (long long)limits[i].value,
			 limits[i].suffix);
		/* The charge move is gone from newer kernels: best effort. */
		if (file_put(dir, limits[i].file, value, err) < 0 &&
		    strcmp(limits[i].file, "memory.move_charge_at_immigrate") != 0)
			return -1;
	}
	for (size_t i = 0; i < (v2 ? 1 : ARRAY_SIZE(v1_controllers)); i++) {
		_cleanup_free_ char *dir =
			v2 ? xasprintf("/sys/fs/cgroup%s", path)
			   : xasprintf("/sys/fs/cgroup/%s%s", v1_controllers[i], path);

		if (file_put(dir, "cgroup.procs", pidtext, err) < 0)
			return -1;
	}
	log_debug("vm %s: QEMU %d in cgroup %s: memory %lld MiB, %lld CPUs, %d pids", vm->inst.name,
		  (int)pid, path, (long long)(mem_bytes >> 20), (long long)vcpus + 1,
		  VMCGROUP_PIDS);
	return 0;
}

/* vm's QEMU is gone: remove its (empty) cgroup. */
void vmcgroup_remove(struct vm *vm)
{
	static const char *const v1_controllers[] = {"memory", "cpu", "pids"};
	char path[PATH_MAX];
	bool v2 = cgroup_v2();

	oci_cgroup_path(vm->inst.agent, vm->inst.name, path, sizeof(path));
	for (size_t i = 0; i < (v2 ? 1 : ARRAY_SIZE(v1_controllers)); i++) {
		_cleanup_free_ char *dir =
			v2 ? xasprintf("/sys/fs/cgroup%s", path)
			   : xasprintf("/sys/fs/cgroup/%s%s", v1_controllers[i], path);

		if (rmdir(dir) < 0 && errno != ENOENT)
			log_warn("vm %s: cannot remove cgroup %s", vm->inst.name, dir);
	}
}
