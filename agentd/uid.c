/*
 * uid.c - who workloads are on the host: a uid of its own for each VM's QEMU (like
 * libvirt's dynamic ownership), and a user namespace for containers (below).
 *
 * QEMU opens its files, devices and sockets as root, then drops to -runas. With one
 * user for every VM (kumo-qemu), a guest that escaped into its QEMU could ptrace the
 * other QEMUs of the host, or open their disks through /proc/PID/fd: same uid, same
 * credentials. Here each running VM holds one uid from --qemu-uid-base for
 * --qemu-uid-count (its gid the same number; neither needs a passwd entry):
 *
 *   claim    before QEMU starts: the lowest free uid. Free is machine-wide, through a
 *            claim file UID_RUN/<uid> made with O_EXCL that names the VM's directory:
 *            several agents may share a machine (the test lab), and one uid given to
 *            two VMs would undo the point. The VM's directory keeps it too (qemu.uid),
 *            so an agent restarted under a running QEMU gives back the right one.
 *   give     the VM's disks and serial log become uid:uid, 0600. QEMU opens them as root
 *            at start; the ownership is for what it opens later (snapshots, blocks
 *            jobs) and so that no other VM's uid can open them.
 *   release  when QEMU is gone: the files back to root, the claim removed.
 * A claim whose VM directory no longer names its uid is stale (an agent killed with its
 * VMs, a VM directory removed) and is taken over. Everything here needs root: chown of
 * another user's files (CAP_CHOWN) and /run.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "child.h"
#include "json.h"
#include "log.h"
#include "util.h"

#define UID_RUN			"/run/kumo-uids"
#define UID_CTR_RANGE		65536u
#define USERNS_CHILD_TIMEOUT_MS 10000 /* a --userns child that has not answered is killed */

/* The uid in dir/qemu.uid, or 0 when there is none. */
uid_t uid_vm_read(const char *dir)
{
	_cleanup_free_ char *path = xasprintf("%s/qemu.uid", dir);
	_cleanup_free_ char *text = NULL;
	char *end;
	unsigned long uid;

	if (file_read_all(path, 64, &text, NULL) < 0)
		return 0;
	uid = strtoul(text, &end, 10);
	return end == text ? 0 : (uid_t)uid;
}

/* Does claim file UID_RUN/uid name dir? */
static bool claim_names(uid_t uid, const char *dir)
{
	_cleanup_free_ char *path = xasprintf("%s/%u", UID_RUN, (unsigned)uid);
	_cleanup_free_ char *text = NULL;

	return file_read_all(path, PATH_MAX + 1, &text, NULL) == 0 && strcmp(text, dir) == 0;
}

/* Is the claim of uid stale: its VM directory gone or holding another uid? */
static bool claim_stale(uid_t uid)
{
	_cleanup_free_ char *path = xasprintf("%s/%u", UID_RUN, (unsigned)uid);
	_cleanup_free_ char *text = NULL;

	if (file_read_all(path, PATH_MAX + 1, &text, NULL) < 0)
		return false; /* gone meanwhile: the next O_EXCL round decides */
	return uid_vm_read(text) != uid;
}

/* Claim uid for dir; 0 done, -EEXIST held by another VM, other negative errno. */
static int claim_take(uid_t uid, const char *dir)
{
	_cleanup_free_ char *path = xasprintf("%s/%u", UID_RUN, (unsigned)uid);
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

	if (fd < 0 && errno == EEXIST && claim_stale(uid)) {
		log_info("uid: taking over the stale claim of uid %u", (unsigned)uid);
		unlink(path);
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	}
	if (fd < 0)
		return -errno;
	if (write(fd, dir, strlen(dir)) != (ssize_t)strlen(dir)) {
		int ret = -errno;

		unlink(path);
		return ret ? ret : -EIO;
	}
	return 0;
}

/*
 * The files of vm that its QEMU uses: disks and serial log, to uid:uid. Giving back
 * (uid 0, from was) takes only a disk still owned by was: a shared disk another host's
 * QEMU took over (a migration, a failover) stays with it.
 */
static void files_own(const struct vm *vm, uid_t uid, uid_t was)
{
	_cleanup_free_ char *console = xasprintf("%s/console.log", vm->inst.dir);
	struct stat st;

	for (size_t i = 0; i < vm->ndisks; i++) {
		if (uid == 0 && (stat(vm->disks[i].abs, &st) < 0 || st.st_uid != was))
			continue;
		if (chown(vm->disks[i].abs, uid, uid) < 0 || chmod(vm->disks[i].abs, 0600) < 0)
			log_warn("vm %s: cannot give %s to uid %u", vm->inst.name, vm->disks[i].abs,
				 (unsigned)uid);
	}
	if (chown(console, uid, uid) < 0 && errno != ENOENT)
		log_warn("vm %s: cannot give %s to uid %u", vm->inst.name, console, (unsigned)uid);
}

/*
 * Claim a uid for vm's next QEMU and give it the VM's files. Returns the uid, 0 when
 * VMs share --qemu-user (--qemu-uid-base 0, or --qemu-user root), or -1 with err when
 * every uid of the range is taken.
 */
int64_t uid_vm_claim(struct vm *vm, struct kerr *err)
{
	const struct agent_config *cfg = vm->inst.agent->cfg;
	_cleanup_free_ char *keep = xasprintf("%s/qemu.uid", vm->inst.dir);
	uid_t uid = uid_vm_read(vm->inst.dir);
	char text[32];
	int ret;

	if (cfg->qemu_uid_base == 0 || strcmp(cfg->qemu_user, "root") == 0)
		return 0;
	ret = mkdir_p(UID_RUN, 0700);
	if (ret < 0)
		return err_set(err, -ret, "cannot make %s", UID_RUN);
	/* Still ours from the last run (a crash, an agent restart): keep it. */
	if (uid == 0 || !claim_names(uid, vm->inst.dir)) {
		uid = 0;
		for (int i = 0; i < cfg->qemu_uid_count && uid == 0; i++) {
			uid_t try = (uid_t)(cfg->qemu_uid_base + i);

			ret = claim_take(try, vm->inst.dir);
			if (ret == 0)
				uid = try;
			else if (ret != -EEXIST)
				return err_set(err, -ret, "cannot claim uid %u in %s",
					       (unsigned)try, UID_RUN);
		}
		if (uid == 0)
			return err_set(err, 0,
				       "every QEMU uid (%d from %d, --qemu-uid-count) is in use",
				       cfg->qemu_uid_count, cfg->qemu_uid_base);
	}
	snprintf(text, sizeof(text), "%u\n", (unsigned)uid);
	/* Not synced (two disk waits on the loop, on every start): its readers are this
	 * machine's agents while the claim in UID_RUN exists, and that is on /run, gone
	 * after a power cut with every QEMU; the page cache serves them. */
	ret = file_write_replace(keep, text, strlen(text), 0600);
	if (ret < 0)
		return err_set(err, -ret, "cannot write %s", keep);
	files_own(vm, uid, 0);
	return uid;
}

/* vm's QEMU is gone: its files back to root and its uid free. Safe when it had none. */
void uid_vm_release(struct vm *vm)
{
	_cleanup_free_ char *keep = xasprintf("%s/qemu.uid", vm->inst.dir);
	uid_t uid = uid_vm_read(vm->inst.dir);

	if (uid == 0)
		return;
	files_own(vm, 0, uid);
	if (claim_names(uid, vm->inst.dir)) {
		_cleanup_free_ char *path = xasprintf("%s/%u", UID_RUN, (unsigned)uid);

		unlink(path);
	}
	unlink(keep);
	log_debug("vm %s: uid %u given back", vm->inst.name, (unsigned)uid);
}

/* ---- containers: a user namespace over the host's subordinate range ------------------ */

/*
 * Root in a container is not root outside: its uids and gids 0..UID_CTR_RANGE-1 are
 * the host's --container-uid-base onwards, one range per host (like Docker's
 * userns-remap). The image's layers stay as unpacked (owned by 0, 1, ...) and shared by
 * every container: the shim mounts each through an idmapped mount (the kernel shows
 * owner N as base+N) under the overlay; the writable layer is plain and belongs to the
 * range (what the container writes is stored as base+N; commit shifts it back). A
 * container on networks gets a user namespace the agent makes first and a network
 * namespace inside it (uid_ctr_netns_make()), so its root holds CAP_NET_RAW and the
 * sysctls over its own network only; one without NICs gets both from runc.
 */

/* The first host uid of container spec's user namespace, or 0 when it has none
 * (--container-uid-base 0, or the spec's "userns": false). The create records the
 * choice in the spec; a spec without it is a container made before user namespaces,
 * whose writable layer is root's: it keeps running without one. */
unsigned uid_ctr_base(const struct agent_config *cfg, struct json_object *spec)
{
	if (cfg->ctr_uid_base <= 0 || !json_get_bool(spec, "userns", false))
		return 0;
	return (unsigned)cfg->ctr_uid_base;
}

static int proc_write(pid_t pid, const char *file, const char *text)
{
	char path[64];
	_cleanup_close_ int fd = -1;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, text, strlen(text)) < 0)
		return -errno;
	return 0;
}

/*
 * `kumo-agentd --userns [net]`, the child side of userns_make(): a process of its own
 * because CLONE_NEWUSER needs a single-threaded caller, which a fresh process is and the
 * agent (or a pool thread of it) is not. It makes a user namespace and says "u" on
 * stdout, waits for SIGUSR1 (the agent wrote its uid and gid maps meanwhile), with net
 * makes a network namespace inside the mapped one, says "n", and waits to be killed:
 * the agent has bound or opened the namespaces by then. Returns the exit code.
 */
int uid_userns_child_main(bool net)
{
	sigset_t usr1;
	int sig;

	/* Blocked before "u" is said, so the agent's SIGUSR1 is never lost. */
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	if (unshare(CLONE_NEWUSER) < 0) {
		fprintf(stderr, "%s --userns: cannot make a user namespace: %s\n", AGENT_PROG,
			strerror(errno));
		return 1;
	}
	if (write(STDOUT_FILENO, "u", 1) != 1 || sigwait(&usr1, &sig) != 0)
		return 1;
	if (net && unshare(CLONE_NEWNET) < 0) {
		fprintf(stderr, "%s --userns: cannot make a network namespace: %s\n", AGENT_PROG,
			strerror(errno));
		return 1;
	}
	if (write(STDOUT_FILENO, "n", 1) != 1)
		return 1;
	for (;;)
		pause();
}

/* One userns_make(): what to make and, once made, what became of it. */
struct userns_make {
	unsigned base;
	const char *userns_path, *netns_path; /* bind them there; NULL: open the user one */
	struct child *child;
	bool busy; /* until the namespaces are bound or opened, or that failed */
	int ret;   /* 0, or -1 with err */
	int fd;	   /* the opened user namespace */
	struct kerr *err;
};

/* The child made its user namespace: map 0.. to base.. and let it go on. */
static int userns_map(struct userns_make *m, pid_t pid)
{
	char map[64];
	int ret;

	snprintf(map, sizeof(map), "0 %u %u\n", m->base, UID_CTR_RANGE);
	/* Written by root of the parent namespace: no setgroups "deny" needed. */
	ret = proc_write(pid, "uid_map", map);
	if (ret == 0)
		ret = proc_write(pid, "gid_map", map);
	if (ret == 0 && kill(pid, SIGUSR1) < 0)
		ret = -errno;
	if (ret < 0)
		return err_set(m->err, -ret, "cannot map the user namespace over uid %u", m->base);
	return 0;
}

/* The namespaces are complete: bind them on their files, or open the user one. */
static int userns_keep(struct userns_make *m, pid_t pid)
{
	char src[64];

	snprintf(src, sizeof(src), "/proc/%d/ns/user", (int)pid);
	if (m->userns_path == NULL) {
		m->fd = open(src, O_RDONLY | O_CLOEXEC);
		return m->fd < 0 ? err_set(m->err, errno, "cannot open %s", src) : 0;
	}
	if (mount(src, m->userns_path, NULL, MS_BIND, NULL) < 0)
		return err_set(m->err, errno, "cannot bind %s on %s", src, m->userns_path);
	snprintf(src, sizeof(src), "/proc/%d/ns/net", (int)pid);
	if (mount(src, m->netns_path, NULL, MS_BIND, NULL) < 0) {
		err_set(m->err, errno, "cannot bind %s on %s", src, m->netns_path);
		umount2(m->userns_path, MNT_DETACH);
		return -1;
	}
	return 0;
}

static void userns_output_cb(const char *buf, size_t len, void *data)
{
	struct userns_make *m = data;
	pid_t pid = child_pid(m->child);

	for (size_t i = 0; i < len && m->busy && pid > 0; i++) {
		if (buf[i] == 'u' && userns_map(m, pid) < 0) {
			m->busy = false;
		} else if (buf[i] == 'n') {
			m->ret = userns_keep(m, pid);
			m->busy = false;
		}
		/* Kept, or failed: the namespaces need the child no longer. */
		if (!m->busy)
			child_cancel(m->child);
	}
}

static void userns_done_cb(const struct child_result *r, void *data)
{
	struct userns_make *m = data;
	char why[200];

	if (!m->busy)
		return;
	child_result_why(r, why, sizeof(why));
	m->ret = err_set(m->err, 0, "cannot make a user namespace over uid %u: %s", m->base, why);
}

/*
 * A user namespace mapping 0.. to base.. (and, with netns_path, a network namespace
 * made inside it), made by `kumo-agentd --userns` (run through the one child runner,
 * on a loop of this thread's own: it blocks) and bound on userns_path and
 * netns_path; without them, *fd gets a descriptor of the user namespace. Returns 0,
 * or -1 with err.
 */
static int userns_make(unsigned base, const char *userns_path, const char *netns_path, int *fd,
		       struct kerr *err)
{
	char *argv[] = {AGENT_PROG, "--userns", netns_path ? "net" : NULL, NULL};
	struct userns_make m = {.base = base,
				.userns_path = userns_path,
				.netns_path = netns_path,
				.busy = true,
				.ret = -1,
				.fd = -1,
				.err = err};
	struct child_opts opts = {
		.file = "/proc/self/exe",
		.argv = argv,
		.out_max = 16,
		.err_mode = CHILD_ERR_CAPTURE,
		.timeout_ms = USERNS_CHILD_TIMEOUT_MS,
		.on_output = userns_output_cb,
	};

	if (child_run_sync(&opts, userns_done_cb, &m, &m.child, err) < 0)
		return -1;
	if (m.ret < 0 && m.fd >= 0)
		close(m.fd);
	if (fd)
		*fd = m.ret < 0 ? -1 : m.fd;
	return m.ret;
}

/*
 * Make a user namespace over base (bound on userns_path) and a network namespace it
 * owns (bound on netns_path); both files are made. Returns 0, or -1 with err.
 */
int uid_ctr_netns_make(unsigned base, const char *userns_path, const char *netns_path,
		       struct kerr *err)
{
	for (const char *const *p = (const char *const[]){userns_path, netns_path, NULL}; *p; p++) {
		int fd = open(*p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);

		if (fd < 0)
			return err_set(err, errno, "cannot create %s", *p);
		close(fd);
	}
	return userns_make(base, userns_path, netns_path, NULL, err);
}

/* A descriptor of a new user namespace over base (for idmapped mounts), or -1 with err. */
int uid_userns_open(unsigned base, struct kerr *err)
{
	int fd = -1;

	if (userns_make(base, NULL, NULL, &fd, err) < 0)
		return -1;
	return fd;
}

/*
 * Mount src on dst (a directory) through the user namespace userns_fd's mapping: owner N
 * of src shows as the mapped uid. Needs CAP_SYS_ADMIN and a filesystem with idmapped
 * mounts (ext4, xfs, btrfs, tmpfs; Linux 5.12+). Returns 0, or -1 with err.
 */
int uid_idmap_mount(const char *src, const char *dst, int userns_fd, struct kerr *err)
{
	struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)userns_fd};
	_cleanup_close_ int tree =
		(int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);

	if (tree < 0)
		return err_set(err, errno, "cannot clone the mount of %s", src);
	if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
		return err_set(err, errno, "cannot idmap %s (does its filesystem support it?)",
			       src);
	if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
		return err_set(err, errno, "cannot mount %s on %s", src, dst);
	return 0;
}

/*
 * The container's init runs as the range's root, which owns no host directory: every
 * directory above a container's bundle must let others pass (x), or runc cannot reach
 * the rootfs from inside the user namespace. Adds o+x to dir and its parents where it
 * is missing (only x: nothing becomes listable or readable). Returns 0 or -1 with err.
 */
int uid_ctr_path_open(const char *dir, struct kerr *err)
{
	_cleanup_free_ char *path = xstrdup(dir);
	char *slash;

	for (;;) {
		struct stat st;

		if (stat(path, &st) < 0)
			return err_set(err, errno, "cannot stat %s", path);
		if (!(st.st_mode & S_IXOTH)) {
			if (chmod(path, (st.st_mode & 07777) | S_IXOTH) < 0)
				return err_set(err, errno, "cannot let others pass %s", path);
			log_info("containers: %s is now passable (o+x) for user namespaces", path);
		}
		slash = strrchr(path, '/');
		if (slash == NULL || slash == path)
			return 0;
		*slash = '\0';
	}
}
