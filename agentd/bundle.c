/*
 * bundle.c - the OCI runtime bundle's config.json for a container, built with json-c
 * from the image's config and the instance's SPEC.
 *
 *   process   args: SPEC command, else the image's Entrypoint + Cmd; env: the image's
 *             Env with SPEC env merged over it (PATH, HOSTNAME and HOME filled in when
 *             missing); cwd: SPEC workdir, else the image's WorkingDir, else "/";
 *             user: the image's User, numeric or root only (the rootfs is not read
 *             for /etc/passwd); Docker's default capabilities, CAP_NET_RAW unless
 *             the spec's "capabilities" leaves it out; noNewPrivileges; RLIMIT_NOFILE 1024 like
 * runc's example root      "rootfs" (the overlay the shim mounts), writable: the upper layer mounts
 * /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys (ro), /sys/fs/cgroup (ro), as in runc's `runc
 * spec` linux     new pid, ipc, uts, mount and network namespaces (runc brings the new netns's
 * loopback up; a container on networks joins the namespace its NICs were wired in instead,
 * bundle_netns_set()); cgroupsPath CGROUP (oci_cgroup_path()), absolute, which runc needs on this
 * host's hybrid cgroup layout; memory limit (and the same swap limit where the kernel accounts
 * swap, so no swapping past it), CPU quota over a 100 ms period, pids limit (memory and
 * pids: the agent's defaults where the spec sets none); no device but runc's defaults;
 * Docker's masked and read-only /proc and /sys paths; seccomp.c's allow-list; the
 * ping_group_range sysctl open; a user namespace mapping 0..65535 to the host's range
 * unless the spec says "userns": false (uid.c: joined from the agent's file beside the
 * network namespace when the container is on networks)
 */
#include "agentd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "util.h"

#define CPU_PERIOD_US 100000
#define DEFAULT_PATH  "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/*
 * Docker's default set (moby oci/caps/defaults.go) without CAP_NET_RAW, which a
 * container holds only when its spec says so ("capabilities": ["NET_RAW"]) or says
 * nothing: busybox's ping (this cluster's test images, and many small images) opens
 * raw ICMP sockets only, so dropping it by default would break ping. ICMP datagram
 * sockets work without it (the ping_group_range sysctl below) for pings that use them.
 */
static const char *const base_caps[] = {
	"CAP_CHOWN",	   "CAP_DAC_OVERRIDE",
	"CAP_FSETID",	   "CAP_FOWNER",
	"CAP_MKNOD",	   "CAP_SETGID",
	"CAP_SETUID",	   "CAP_SETFCAP",
	"CAP_SETPCAP",	   "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT",  "CAP_KILL",
	"CAP_AUDIT_WRITE", NULL,
};

/* The capability set of spec: base_caps and what it asks for (the controller checked
 * its names against its allow-list), or NET_RAW when it asks nothing. */
static struct json_object *caps_build(struct json_object *spec)
{
	struct json_object *arr = json_object_new_array(), *extra;

	for (size_t i = 0; base_caps[i]; i++)
		json_object_array_add(arr, json_object_new_string(base_caps[i]));
	extra = json_object_object_get(spec, "capabilities");
	if (extra == NULL || !json_object_is_type(extra, json_type_array)) {
		json_object_array_add(arr, json_object_new_string("CAP_NET_RAW"));
		return arr;
	}
	for (size_t i = 0; i < json_array_len(extra); i++) {
		const char *c = json_object_get_string(json_object_array_get_idx(extra, i));

		if (c && strcmp(c, "NET_RAW") == 0)
			json_object_array_add(arr, json_object_new_string("CAP_NET_RAW"));
	}
	return arr;
}

/* Docker's masked and read-only paths (moby oci/defaults.go), the same list. */
static const char *const masked_paths[] = {
	"/proc/acpi",
	"/proc/asound",
	"/proc/interrupts",
	"/proc/kcore",
	"/proc/keys",
	"/proc/latency_stats",
	"/proc/timer_list",
	"/proc/timer_stats",
	"/proc/sched_debug",
	"/sys/firmware",
	"/sys/devices/virtual/powercap",
	"/proc/scsi",
	NULL,
};

static const char *const readonly_paths[] = {
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", NULL,
};

static const char *const namespaces[] = {"pid", "network", "ipc", "uts", "mount", NULL};

struct mount_row {
	const char *destination, *type, *source;
	const char *const *options;
};

static const struct mount_row mounts[] = {
	{"/proc", "proc", "proc", (const char *const[]){NULL}},
	{"/dev", "tmpfs", "tmpfs",
	 (const char *const[]){"nosuid", "strictatime", "mode=755", "size=65536k", NULL}},
	{"/dev/pts", "devpts", "devpts",
	 (const char *const[]){"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
			       "gid=5", NULL}},
	{"/dev/shm", "tmpfs", "shm",
	 (const char *const[]){"nosuid", "noexec", "nodev", "mode=1777", "size=65536k", NULL}},
	{"/dev/mqueue", "mqueue", "mqueue",
	 (const char *const[]){"nosuid", "noexec", "nodev", NULL}},
	{"/sys", "sysfs", "sysfs", (const char *const[]){"nosuid", "noexec", "nodev", "ro", NULL}},
	{"/sys/fs/cgroup", "cgroup", "cgroup",
	 (const char *const[]){"nosuid", "noexec", "nodev", "relatime", "ro", NULL}},
};

static struct json_object *strings(const char *const *list)
{
	struct json_object *arr = json_object_new_array();

	for (size_t i = 0; list[i]; i++)
		json_object_array_add(arr, json_object_new_string(list[i]));
	return arr;
}

/* A uid or gid: digits, or "root" (0). Returns 0 or -1. */
static int id_parse(const char *s, size_t len, int64_t *out)
{
	char buf[32], *end;
	long long v;

	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (strcmp(buf, "root") == 0) {
		*out = 0;
		return 0;
	}
	if (strspn(buf, "0123456789") != len)
		return -1;
	v = strtoll(buf, &end, 10);
	if (v < 0 || v > 0xfffffffeLL)
		return -1;
	*out = v;
	return 0;
}

/*
 * The image's User ("", "root", "UID", "UID:GID", "root:GID", ...) as uid and gid.
 * A user given alone runs with gid 0, as Docker does for a user without an
 * /etc/passwd entry. Names other than root are refused with err.
 */
static int user_parse(const char *user, int64_t *uid, int64_t *gid, struct kerr *err)
{
	const char *colon = strchr(user, ':');

	*uid = *gid = 0;
	if (user[0] == '\0')
		return 0;
	if (id_parse(user, colon ? (size_t)(colon - user) : strlen(user), uid) < 0 ||
	    (colon && id_parse(colon + 1, strlen(colon + 1), gid) < 0))
		return err_set(err, 0,
			       "the image's user '%.64s' is not numeric; only numeric users "
			       "(UID or UID:GID) and root are supported",
			       user);
	return 0;
}

static bool env_has(struct json_object *env, const char *key)
{
	size_t klen = strlen(key);

	for (size_t i = 0; i < json_array_len(env); i++) {
		const char *kv = json_object_get_string(json_object_array_get_idx(env, i));

		if (strncmp(kv, key, klen) == 0 && kv[klen] == '=')
			return true;
	}
	return false;
}

/* Set key=value in env (an array of "K=V"), replacing an entry with that key. */
static void env_set(struct json_object *env, const char *key, const char *value)
{
	_cleanup_free_ char *kv = xasprintf("%s=%s", key, value);
	size_t klen = strlen(key);

	for (size_t i = 0; i < json_array_len(env); i++) {
		const char *old = json_object_get_string(json_object_array_get_idx(env, i));

		if (strncmp(old, key, klen) == 0 && old[klen] == '=') {
			json_object_array_put_idx(env, i, json_object_new_string(kv));
			return;
		}
	}
	json_object_array_add(env, json_object_new_string(kv));
}

static struct json_object *env_build(struct json_object *spec, struct json_object *image,
				     const char *name, int64_t uid)
{
	struct json_object *env = json_object_new_array(), *ienv, *senv;

	if (json_object_object_get_ex(image, "Env", &ienv) &&
	    json_object_is_type(ienv, json_type_array)) {
		for (size_t i = 0; i < json_array_len(ienv); i++) {
			struct json_object *e = json_object_array_get_idx(ienv, i);
			const char *kv = json_object_get_string(e);
			const char *eq = kv ? strchr(kv, '=') : NULL;

			if (json_object_is_type(e, json_type_string) && eq && eq != kv) {
				_cleanup_free_ char *key = strndup(kv, (size_t)(eq - kv));

				env_set(env, key, eq + 1);
			}
		}
	}
	if (json_object_object_get_ex(spec, "env", &senv)) {
		json_object_object_foreach(senv, key, val)
			env_set(env, key, json_object_get_string(val));
	}
	if (!env_has(env, "PATH"))
		env_set(env, "PATH", DEFAULT_PATH);
	if (!env_has(env, "HOSTNAME"))
		env_set(env, "HOSTNAME", name);
	if (!env_has(env, "HOME"))
		env_set(env, "HOME", uid == 0 ? "/root" : "/");
	return env;
}

static struct json_object *args_build(struct json_object *spec, struct json_object *image,
				      struct kerr *err)
{
	struct json_object *args = json_object_new_array(), *cmd;

	if (json_object_object_get_ex(spec, "command", &cmd)) {
		for (size_t i = 0; i < json_array_len(cmd); i++)
			json_object_array_add(args,
					      json_object_get(json_object_array_get_idx(cmd, i)));
	} else {
		for (const char *const *k = (const char *const[]){"Entrypoint", "Cmd", NULL}; *k;
		     k++) {
			struct json_object *part;

			if (!json_object_object_get_ex(image, *k, &part) ||
			    !json_object_is_type(part, json_type_array))
				continue;
			for (size_t i = 0; i < json_array_len(part); i++) {
				struct json_object *a = json_object_array_get_idx(part, i);

				if (json_object_is_type(a, json_type_string))
					json_object_array_add(args, json_object_get(a));
			}
		}
	}
	if (json_array_len(args) == 0) {
		json_object_put(args);
		err_set(err, 0,
			"the image has no Entrypoint or Cmd and the instance gives no command");
		return NULL;
	}
	return args;
}

/* The kernel limits swap with memory (cgroup v1 memsw, or cgroup v2). */
static bool swap_limit_supported(void)
{
	return access("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", F_OK) == 0 ||
	       access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0;
}

/* A limit of the spec, or NULL (absent or null). */
static struct json_object *limit_get(struct json_object *limits, const char *key)
{
	return limits ? json_object_object_get(limits, key) : NULL;
}

static struct json_object *resources_build(struct json_object *spec,
					   const struct bundle_defaults *defaults)
{
	struct json_object *res = json_object_new_object(), *dev, *devices, *v;
	struct json_object *limits = json_object_object_get(spec, "limits");
	int64_t memory_mib = defaults ? defaults->memory_mib : 0;
	int64_t pids = defaults ? defaults->pids : 0;

	/* Deny every device; runc adds its defaults (null, zero, tty, ptmx, ...). */
	devices = json_object_new_array();
	dev = json_object_new_object();
	json_object_object_add(dev, "allow", json_object_new_boolean(false));
	json_object_object_add(dev, "access", json_object_new_string("rwm"));
	json_object_array_add(devices, dev);
	json_object_object_add(res, "devices", devices);
	/* A container that sets no limit gets the agent's: a fork bomb or a leak in one
	 * container must not take its host down. */
	if ((v = limit_get(limits, "memory_mb")) != NULL)
		memory_mib = json_object_get_int64(v);
	if ((v = limit_get(limits, "pids")) != NULL)
		pids = json_object_get_int64(v);
	if (memory_mib > 0) {
		struct json_object *mem = json_object_new_object();
		int64_t bytes = memory_mib * 1024 * 1024;

		json_object_object_add(mem, "limit", json_object_new_int64(bytes));
		if (swap_limit_supported())
			json_object_object_add(mem, "swap", json_object_new_int64(bytes));
		json_object_object_add(res, "memory", mem);
	}
	if ((v = limit_get(limits, "cpus")) != NULL) {
		struct json_object *cpu = json_object_new_object();
		int64_t quota = (int64_t)(json_object_get_double(v) * CPU_PERIOD_US + 0.5);

		json_object_object_add(cpu, "quota",
				       json_object_new_int64(quota < 1000 ? 1000 : quota));
		json_object_object_add(cpu, "period", json_object_new_int64(CPU_PERIOD_US));
		json_object_object_add(res, "cpu", cpu);
	}
	if (pids > 0) {
		struct json_object *p = json_object_new_object();

		json_object_object_add(p, "limit", json_object_new_int64(pids));
		json_object_object_add(res, "pids", p);
	}
	return res;
}

static struct json_object *linux_build(const char *cgroup, struct json_object *spec,
				       const struct bundle_defaults *defaults)
{
	struct json_object *lx = json_object_new_object(), *ns = json_object_new_array(), *sysctl;

	for (size_t i = 0; namespaces[i]; i++) {
		struct json_object *n = json_object_new_object();

		json_object_object_add(n, "type", json_object_new_string(namespaces[i]));
		json_object_array_add(ns, n);
	}
	/* Root inside is base outside (uid.c): the user namespace and its one mapping. */
	if (defaults && defaults->userns_base) {
		struct json_object *n = json_object_new_object();

		json_object_object_add(n, "type", json_object_new_string("user"));
		json_object_array_add(ns, n);
		for (const char *const *key =
			     (const char *const[]){"uidMappings", "gidMappings", NULL};
		     *key; key++) {
			struct json_object *maps = json_object_new_array();
			struct json_object *m = json_object_new_object();

			json_object_object_add(m, "containerID", json_object_new_int(0));
			json_object_object_add(m, "hostID",
					       json_object_new_int64(defaults->userns_base));
			json_object_object_add(m, "size", json_object_new_int(65536));
			json_object_array_add(maps, m);
			json_object_object_add(lx, *key, maps);
		}
	}
	json_object_object_add(lx, "cgroupsPath", json_object_new_string(cgroup));
	json_object_object_add(lx, "resources", resources_build(spec, defaults));
	json_object_object_add(lx, "namespaces", ns);
	json_object_object_add(lx, "maskedPaths", strings(masked_paths));
	json_object_object_add(lx, "readonlyPaths", strings(readonly_paths));
	json_object_object_add(lx, "seccomp", seccomp_profile_build());
	/* As Docker does: ICMP datagram sockets for every group, so a ping that uses them
	 * needs no CAP_NET_RAW. The container's own network namespace only. */
	sysctl = json_object_new_object();
	/* In a user namespace the range must be of its gids (0..65535). */
	json_object_object_add(sysctl, "net.ipv4.ping_group_range",
			       json_object_new_string(defaults && defaults->userns_base
							      ? "0 65535"
							      : "0 2147483647"));
	json_object_object_add(lx, "sysctl", sysctl);
	return lx;
}

static struct json_object *mounts_build(void)
{
	struct json_object *arr = json_object_new_array();

	for (size_t i = 0; i < ARRAY_SIZE(mounts); i++) {
		struct json_object *m = json_object_new_object();

		json_object_object_add(m, "destination",
				       json_object_new_string(mounts[i].destination));
		json_object_object_add(m, "type", json_object_new_string(mounts[i].type));
		json_object_object_add(m, "source", json_object_new_string(mounts[i].source));
		json_object_object_add(m, "options", strings(mounts[i].options));
		json_object_array_add(arr, m);
	}
	return arr;
}

static struct json_object *process_build(const char *name, struct json_object *spec,
					 struct json_object *image, struct kerr *err)
{
	struct json_object *p, *user, *caps, *args, *rlimits, *rl;
	const char *cwd = json_get_str(spec, "workdir", json_get_str(image, "WorkingDir", ""));
	int64_t uid, gid;

	if (user_parse(json_get_str(image, "User", ""), &uid, &gid, err) < 0)
		return NULL;
	if (cwd[0] == '\0')
		cwd = "/";
	if (cwd[0] != '/') {
		err_set(err, 0, "the working directory '%.64s' is not an absolute path", cwd);
		return NULL;
	}
	/* The image's WorkingDir too: the controller checked only the spec's. */
	if (path_in_kernel_fs(cwd)) {
		err_set(err, 0, "the working directory '%.64s' is in /proc, /sys or /dev", cwd);
		return NULL;
	}
	args = args_build(spec, image, err);
	if (args == NULL)
		return NULL;
	p = json_object_new_object();
	json_object_object_add(p, "terminal", json_object_new_boolean(false));
	user = json_object_new_object();
	json_object_object_add(user, "uid", json_object_new_int64(uid));
	json_object_object_add(user, "gid", json_object_new_int64(gid));
	json_object_object_add(p, "user", user);
	json_object_object_add(p, "args", args);
	json_object_object_add(p, "env", env_build(spec, image, name, uid));
	json_object_object_add(p, "cwd", json_object_new_string(cwd));
	caps = json_object_new_object();
	for (const char *const *set =
		     (const char *const[]){"bounding", "effective", "permitted", NULL};
	     *set; set++)
		json_object_object_add(caps, *set, caps_build(spec));
	json_object_object_add(p, "capabilities", caps);
	rlimits = json_object_new_array();
	rl = json_object_new_object();
	json_object_object_add(rl, "type", json_object_new_string("RLIMIT_NOFILE"));
	json_object_object_add(rl, "hard", json_object_new_int(1024));
	json_object_object_add(rl, "soft", json_object_new_int(1024));
	json_object_array_add(rlimits, rl);
	json_object_object_add(p, "rlimits", rlimits);
	json_object_object_add(p, "noNewPrivileges", json_object_new_boolean(true));
	return p;
}

/*
 * The config.json of container name in cgroup (cgroupsPath): spec is its normalised SPEC,
 * image_config the image's config blob (its "config" member is read). Returns a new object, or NULL
 * with err (a user or working directory this driver cannot use, no command).
 */
struct json_object *bundle_config_build(const char *name, const char *cgroup,
					struct json_object *spec, struct json_object *image_config,
					const struct bundle_defaults *defaults, struct kerr *err)
{
	struct json_object *image = NULL, *cfg, *root, *process, *ann;

	if (!json_object_object_get_ex(image_config, "config", &image) ||
	    !json_object_is_type(image, json_type_object))
		image = NULL; /* an image without defaults: the SPEC must say it all */
	process = process_build(name, spec, image, err);
	if (process == NULL)
		return NULL;
	cfg = json_object_new_object();
	json_object_object_add(cfg, "ociVersion", json_object_new_string("1.0.2"));
	json_object_object_add(cfg, "process", process);
	root = json_object_new_object();
	json_object_object_add(root, "path", json_object_new_string("rootfs"));
	json_object_object_add(root, "readonly", json_object_new_boolean(false));
	json_object_object_add(cfg, "root", root);
	json_object_object_add(cfg, "hostname", json_object_new_string(name));
	json_object_object_add(cfg, "mounts", mounts_build());
	json_object_object_add(cfg, "linux", linux_build(cgroup, spec, defaults));
	ann = json_object_new_object();
	json_object_object_add(ann, "org.kumo.instance", json_object_new_string(name));
	json_object_object_add(cfg, "annotations", ann);
	return cfg;
}

/*
 * Join the network namespace at path (consumed; NULL: keep a new one): a container on
 * networks lives in the namespace netport_ctr_prepare() wired. With a user namespace,
 * also the one that owns it, bound beside it ("userns", uid_ctr_netns_make()).
 */
void bundle_netns_set(struct json_object *cfg, char *path)
{
	struct json_object *ns =
		json_object_object_get(json_object_object_get(cfg, "linux"), "namespaces");

	for (size_t i = 0; path && ns && i < json_array_len(ns); i++) {
		struct json_object *n = json_object_array_get_idx(ns, i);
		const char *type = json_get_str(n, "type", "");

		if (strcmp(type, "network") == 0) {
			json_object_object_add(n, "path", json_object_new_string(path));
		} else if (strcmp(type, "user") == 0) {
			char *slash = strrchr(path, '/');
			_cleanup_free_ char *userns =
				xasprintf("%.*s/userns", (int)(slash ? slash - path : 0), path);

			json_object_object_add(n, "path", json_object_new_string(userns));
		}
	}
	free(path);
}

/* Bind file (consumed; NULL: nothing) read-only on /etc/resolv.conf. */
void bundle_resolv_set(struct json_object *cfg, char *file)
{
	struct json_object *list = json_object_object_get(cfg, "mounts"), *m, *opts;

	if (file == NULL || list == NULL) {
		free(file);
		return;
	}
	m = json_object_new_object();
	opts = json_object_new_array();
	json_object_array_add(opts, json_object_new_string("rbind"));
	json_object_array_add(opts, json_object_new_string("ro"));
	json_object_object_add(m, "destination", json_object_new_string("/etc/resolv.conf"));
	json_object_object_add(m, "type", json_object_new_string("bind"));
	json_object_object_add(m, "source", json_object_new_string(file));
	json_object_object_add(m, "options", opts);
	json_object_array_add(list, m);
	free(file);
}
