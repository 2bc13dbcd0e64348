/*
 * vmadopt.c - finding the VMs again when the agent starts.
 *
 * Guests outlive the agent, so at start-up every {local_pool}/instances/NAME/ with a
 * spec.json is registered again, and its state decided from what is left:
 *   no qemu.pid                        stopped (QEMU removes it on a clean exit)
 *   qemu.pid, the process runs with    adopted: QMP reconnected, query-status gives
 *   "-name NAME" on its command line   running or paused, reported when known
 *   qemu.pid, no such process          crashed while the agent was away
 * Each one is reported to the controller as an instance-state message; a create the
 * last agent did not finish is removed (unfinished_remove()), one it had a cancel for
 * is undone as the job would have been (instance_undo_resume()). An adopted
 * QEMU is not our child: vm.c watches it through QMP and /proc instead.
 */
#include "agentd.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "migrate.h"
#include "util.h"

#define SPEC_FILE_MAX (4 * 1024 * 1024)

static void unfinished_removed_cb(struct agent *a, const char *error, void *data)
{
	char *name = data;

	if (error)
		log_warnx("vm %s: removing an unfinished create: %s", name, error);
	else
		log_info("vm %s: removed what an unfinished create had made", name);
	free(name);
}

/*
 * A run directory without spec.json is a create the last agent did not finish. With
 * creating.json (written once the disk paths were checked and found free), its disks
 * and the directory are removed, so that the controller's resent create can start
 * afresh; without it nothing was made yet but the directory.
 */
static void unfinished_remove(struct agent *a, const char *name, const char *dir)
{
	_cleanup_free_ char *path = xasprintf("%s/creating.json", dir);
	_cleanup_free_ char *text = NULL;
	struct vm_disk disks[AGENT_VM_DISKS_MAX];
	struct json_object *spec = NULL;
	struct kerr err;
	size_t len, n = 0;

	if (file_read_all(path, SPEC_FILE_MAX, &text, &len) == 0 &&
	    (json_body_parse(text, len, &spec, &err) < 0 || spec_check(spec, &err) < 0 ||
	     vm_disks_resolve(a, spec, disks, &n, &err) < 0)) {
		log_warnx("vm %s: %s: %s; left alone", name, path, err.msg);
		json_object_put(spec);
		return;
	}
	json_object_put(spec);
	log_warnx("vm %s: %s is an unfinished create; removing it and its %zu disks", name, dir, n);
	disk_remove(a, dir, disks, n, NULL, unfinished_removed_cb, xstrdup(name));
}

/* Does /proc/PID/cmdline hold "-name NAME"? Guards against a reused pid. */
static bool pid_is_vm(pid_t pid, const char *name)
{
	_cleanup_free_ char *path = xasprintf("/proc/%d/cmdline", (int)pid);
	_cleanup_free_ char *text = NULL;
	size_t len;

	if (file_read_all(path, 1024 * 1024, &text, &len) < 0)
		return false;
	for (size_t off = 0; off < len; off += strlen(text + off) + 1) {
		const char *arg = text + off;

		if (strcmp(arg, "-name") == 0 && off + strlen(arg) + 1 < len)
			return strcmp(arg + strlen(arg) + 1, name) == 0;
	}
	return false;
}

/* When pid started, in ms since the epoch, from /proc (boot time + start ticks). */
static int64_t pid_started_ms(pid_t pid)
{
	_cleanup_free_ char *path = xasprintf("/proc/%d/stat", (int)pid);
	_cleanup_free_ char *stat_text = NULL, *proc_stat = NULL;
	unsigned long long start_ticks = 0, btime = 0;
	const char *p;
	long hz = sysconf(_SC_CLK_TCK);

	if (file_read_all(path, 4096, &stat_text, NULL) < 0 ||
	    file_read_all("/proc/stat", 1024 * 1024, &proc_stat, NULL) < 0 || hz <= 0)
		return now_ms();
	p = strrchr(stat_text, ')');
	/* Field 22 (starttime); the text after ')' starts at field 3. */
	for (int field = 2; p && field < 22; field++)
		p = strchr(p + 1, ' ');
	if (p)
		start_ticks = strtoull(p + 1, NULL, 10);
	p = strstr(proc_stat, "\nbtime ");
	if (p)
		btime = strtoull(p + 7, NULL, 10);
	if (btime == 0)
		return now_ms();
	return (int64_t)btime * 1000 + (int64_t)(start_ticks * 1000 / (unsigned long long)hz);
}

/*
 * Register the VM in {local_pool}/instances/NAME again (inst_adopt_all()): its
 * state decided from qemu.pid and the process, as this file's header says.
 */
void vm_adopt_one(struct agent *a, const char *name)
{
	_cleanup_free_ char *dir = xasprintf("%s/instances/%s", a->cfg->local_pool, name);
	_cleanup_free_ char *spec_path = xasprintf("%s/spec.json", dir);
	_cleanup_free_ char *pid_path = xasprintf("%s/qemu.pid", dir);
	_cleanup_free_ char *creating_path = xasprintf("%s/creating.json", dir);
	_cleanup_free_ char *text = NULL, *pidtext = NULL;
	struct json_object *spec;
	struct job_file jf;
	struct kerr err;
	size_t len;
	struct vm *vm;
	bool undo;
	pid_t pid;
	int ret;

	ret = file_read_all(spec_path, SPEC_FILE_MAX, &text, &len);
	if (ret == -ENOENT) {
		unfinished_remove(a, name, dir);
		return;
	}
	unlink(creating_path);
	/* A migration target's credentials, left if the last agent died before its
	 * QEMU read them. */
	migrate_creds_sweep(dir);
	spec = inst_spec_adopt(INST_VM, name, spec_path, ret, text, len);
	if (spec == NULL)
		return;
	/* A create the last agent had a cancel for but did not undo (job.c). */
	undo = job_file_take(dir, &jf);
	vm = vm_register(a, spec, &err);
	json_object_put(spec);
	if (vm == NULL) {
		log_warnx("vm %s: %s; ignored", name, err.msg);
		return;
	}
	vm->inst.created = true;
	if (undo) {
		/* Its QEMU (not our child, no QMP yet) is killed, then everything the create
		 * made removed, as the live job would: through the driver's cancel slot. */
		if (file_read_all(pid_path, 64, &pidtext, NULL) == 0 &&
		    (pid = (pid_t)strtol(pidtext, NULL, 10)) > 0 && vm_pid_alive(pid) &&
		    pid_is_vm(pid, name)) {
			vm->inst.pid = pid;
			vm->inst.state = INST_RUNNING;
		}
		instance_undo_resume(a, &vm->inst, &jf);
		return;
	}
	if (file_read_all(pid_path, 64, &pidtext, NULL) < 0) {
		migrate_adopted_dead(vm);
		vm->adopt_reported = true;
		log_info("vm %s: found, stopped", name);
		vm_state_push(vm);
		return;
	}
	pid = (pid_t)strtol(pidtext, NULL, 10);
	if (pid > 0 && vm_pid_alive(pid) && pid_is_vm(pid, name)) {
		/* Running is the likely truth until query-status answers. */
		vm->inst.pid = pid;
		vm->inst.started_at_ms = pid_started_ms(pid);
		vm->inst.state = INST_RUNNING;
		vm_balloon_target_load(vm);
		vm_qmp_connect(vm);
		return;
	}
	migrate_adopted_dead(vm);
	vm->inst.state = INST_CRASHED;
	snprintf(vm->inst.error, sizeof(vm->inst.error),
		 "QEMU (pid %d) ended while the agent was away, without a clean shutdown",
		 (int)pid);
	vm->adopt_reported = true;
	log_warnx("vm %s: %s", name, vm->inst.error);
	vm_state_push(vm);
}

/* "vmx", "svm" or "" from the first flags line of /proc/cpuinfo. */
static void hw_virt_read(struct agent *a)
{
	_cleanup_free_ char *text = NULL;
	char *flags, *end;

	a->hw_virt[0] = '\0';
	if (file_read_all("/proc/cpuinfo", 16 * 1024 * 1024, &text, NULL) < 0)
		return;
	flags = strstr(text, "\nflags");
	if (flags == NULL)
		return;
	end = strchr(flags + 1, '\n');
	if (end)
		*end = '\0';
	if (strstr(flags, " vmx"))
		snprintf(a->hw_virt, sizeof(a->hw_virt), "vmx");
	else if (strstr(flags, " svm"))
		snprintf(a->hw_virt, sizeof(a->hw_virt), "svm");
}

/*
 * At start-up, before inst_adopt_all() scans {local_pool}/instances/ and calls
 * vm_adopt_one() for each VM there: learn the CPU's virtualisation flag.
 */
void vm_adopt_prepare(struct agent *a)
{
	hw_virt_read(a);
}
