/*
 * fleece.c - the QMP commands of image fleecing, and of the copy job that is not
 * fleecing (fleece.h says the design).
 */
#include "fleece.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chunkstore.h"
#include "json.h"
#include "util.h"

void fleece_names_make(size_t disk, const char *bus, struct fleece_names *n)
{
	snprintf(n->device, sizeof(n->device), "d%zu", disk);
	snprintf(n->node, sizeof(n->node), "kfl-d%zu", disk);
	snprintf(n->cbw, sizeof(n->cbw), "kfl-cbw-d%zu", disk);
	snprintf(n->access, sizeof(n->access), "kfl-sa-d%zu", disk);
	/* virtio-blk-pci is a proxy: the drive is its inner device's property. */
	if (bus == NULL || strcmp(bus, "virtio") == 0)
		snprintf(n->qdev, sizeof(n->qdev), "/machine/peripheral/disk%zu/virtio-backend",
			 disk);
	else
		snprintf(n->qdev, sizeof(n->qdev), "/machine/peripheral/disk%zu", disk);
}

struct json_object *fleece_overlay_args(const struct fleece_names *n, const char *path)
{
	struct json_object *args = json_object_new_object(), *file = json_object_new_object();

	json_object_object_add(file, "driver", json_object_new_string("file"));
	json_object_object_add(file, "filename", json_object_new_string(path));
	json_object_object_add(args, "driver", json_object_new_string("qcow2"));
	json_object_object_add(args, "node-name", json_object_new_string(n->node));
	json_object_object_add(args, "file", file);
	return args;
}

struct json_object *fleece_cbw_args(const struct fleece_names *n, unsigned timeout_s)
{
	struct json_object *args = json_object_new_object();

	json_object_object_add(args, "driver", json_object_new_string("copy-before-write"));
	json_object_object_add(args, "node-name", json_object_new_string(n->cbw));
	json_object_object_add(args, "file", json_object_new_string(n->device));
	json_object_object_add(args, "target", json_object_new_string(n->node));
	/* A copy that fails breaks the backup's view, never the guest's write. */
	json_object_object_add(args, "on-cbw-error", json_object_new_string("break-snapshot"));
	json_object_object_add(args, "cbw-timeout", json_object_new_int64(timeout_s));
	return args;
}

/* A node's cache options: QEMU's flushes write its caches out to the file, never
 * fdatasync it (cache=unsafe). */
static struct json_object *cache_no_flush(void)
{
	struct json_object *c = json_object_new_object();

	json_object_object_add(c, "no-flush", json_object_new_boolean(true));
	return c;
}

/* One action of a transaction. */
static struct json_object *action(const char *type, struct json_object *data)
{
	struct json_object *a = json_object_new_object();

	json_object_object_add(a, "type", json_object_new_string(type));
	json_object_object_add(a, "data", data);
	return a;
}

struct json_object *fleece_transaction_args(const struct fleece_names *n, const char *bitmap)
{
	struct json_object *bm = json_object_new_object();
	struct json_object *actions = json_object_new_array(), *args = json_object_new_object();

	json_object_object_add(bm, "node", json_object_new_string(n->device));
	json_object_object_add(bm, "name", json_object_new_string(bitmap));
	json_object_object_add(bm, "persistent", json_object_new_boolean(true));
	/* One bit per chunk, aligned as the chunks are: the next incremental's job then
	 * copies every chunk it touches whole, and no parent chunk is read back (fleece.h). */
	json_object_object_add(bm, "granularity", json_object_new_int64(CHUNKSTORE_CHUNK_SIZE));
	json_object_array_add(actions, action("block-dirty-bitmap-add", bm));
	json_object_object_add(args, "actions", actions);
	return args;
}

struct json_object *fleece_copy_tx_args(const struct fleece_names *n, const char *job_id,
					const char *bitmap, const char *parent_bitmap,
					const char *target, uint64_t rate_bytes_s,
					const char *target_node)
{
	struct json_object *tx = fleece_transaction_args(n, bitmap);
	struct json_object *args = json_object_new_object();
	bool incr = parent_bitmap != NULL;

	json_object_object_add(args, "job-id", json_object_new_string(job_id));
	json_object_object_add(args, "device", json_object_new_string(n->device));
	json_object_object_add(args, "target",
			       json_object_new_string(target_node ? target_node : target));
	/* Incremental: a qcow2 target, so the clusters the job did not copy stay
	 * unallocated and its own tables tell them from the copied ones. */
	if (target_node == NULL)
		json_object_object_add(args, "format",
				       json_object_new_string(incr ? "qcow2" : "raw"));
	json_object_object_add(args, "sync", json_object_new_string(incr ? "bitmap" : "full"));
	if (incr) {
		json_object_object_add(args, "bitmap", json_object_new_string(parent_bitmap));
		/* Never "on-success" (what sync "incremental" means): fleece.h says why. */
		json_object_object_add(args, "bitmap-mode", json_object_new_string("never"));
	}
	if (target_node == NULL)
		json_object_object_add(args, "mode", json_object_new_string("absolute-paths"));
	json_object_object_add(args, "auto-dismiss", json_object_new_boolean(false));
	/* A live disk is read by QEMU's job: its own rate limit paces it. */
	if (rate_bytes_s > 0)
		json_object_object_add(args, "speed", json_object_new_int64((int64_t)rate_bytes_s));
	json_object_array_add(json_object_object_get(tx, "actions"),
			      action(target_node ? "blockdev-backup" : "drive-backup", args));
	return tx;
}

struct json_object *fleece_target_add_args(const char *node, const char *path)
{
	struct json_object *args = json_object_new_object(), *file = json_object_new_object();

	json_object_object_add(file, "driver", json_object_new_string("file"));
	json_object_object_add(file, "filename", json_object_new_string(path));
	json_object_object_add(file, "cache", cache_no_flush());
	json_object_object_add(args, "driver", json_object_new_string("qcow2"));
	json_object_object_add(args, "node-name", json_object_new_string(node));
	json_object_object_add(args, "file", file);
	json_object_object_add(args, "cache", cache_no_flush());
	return args;
}

struct json_object *fleece_insert_args(const struct fleece_names *n, int onto_filter)
{
	struct json_object *args = json_object_new_object();

	json_object_object_add(args, "path", json_object_new_string(n->qdev));
	json_object_object_add(args, "property", json_object_new_string("drive"));
	json_object_object_add(args, "value",
			       json_object_new_string(onto_filter ? n->cbw : n->device));
	return args;
}

struct json_object *fleece_access_args(const struct fleece_names *n)
{
	struct json_object *args = json_object_new_object();

	json_object_object_add(args, "driver", json_object_new_string("snapshot-access"));
	json_object_object_add(args, "node-name", json_object_new_string(n->access));
	json_object_object_add(args, "file", json_object_new_string(n->cbw));
	return args;
}

struct json_object *fleece_server_args(const char *path)
{
	struct json_object *args = json_object_new_object(), *addr = json_object_new_object();
	struct json_object *data = json_object_new_object();

	/* SocketAddressLegacy, as nbd-server-start takes it. */
	json_object_object_add(data, "path", json_object_new_string(path));
	json_object_object_add(addr, "type", json_object_new_string("unix"));
	json_object_object_add(addr, "data", data);
	json_object_object_add(args, "addr", addr);
	return args;
}

struct json_object *fleece_export_args(const struct fleece_names *n)
{
	struct json_object *args = json_object_new_object();

	json_object_object_add(args, "type", json_object_new_string("nbd"));
	json_object_object_add(args, "id", json_object_new_string(n->node));
	json_object_object_add(args, "node-name", json_object_new_string(n->access));
	json_object_object_add(args, "name", json_object_new_string(n->node));
	json_object_object_add(args, "writable", json_object_new_boolean(false));
	return args;
}

struct json_object *fleece_setup_step(const struct fleece_names *n, int step, const char *overlay,
				      const char *sock, unsigned cbw_timeout_s, const char **cmd)
{
	switch (step) {
	case FLEECE_SETUP_OVERLAY:
		*cmd = "blockdev-add";
		return fleece_overlay_args(n, overlay);
	case FLEECE_SETUP_FILTER:
		*cmd = "blockdev-add";
		return fleece_cbw_args(n, cbw_timeout_s);
	case FLEECE_SETUP_INSERT:
		*cmd = "qom-set";
		return fleece_insert_args(n, 1);
	case FLEECE_SETUP_ACCESS:
		*cmd = "blockdev-add";
		return fleece_access_args(n);
	case FLEECE_SETUP_SERVER:
		*cmd = "nbd-server-start";
		return fleece_server_args(sock);
	case FLEECE_SETUP_EXPORT:
		*cmd = "block-export-add";
		return fleece_export_args(n);
	default:
		*cmd = NULL;
		return NULL;
	}
}

static struct json_object *node_del(const char *node)
{
	struct json_object *args = json_object_new_object();

	json_object_object_add(args, "node-name", json_object_new_string(node));
	return args;
}

struct json_object *fleece_teardown_step(const struct fleece_names *n, int step, const char **cmd)
{
	struct json_object *args;

	switch (step) {
	case 0:
		*cmd = "block-export-del";
		args = json_object_new_object();
		json_object_object_add(args, "id", json_object_new_string(n->node));
		json_object_object_add(args, "mode", json_object_new_string("hard"));
		return args;
	case 1:
		*cmd = "nbd-server-stop";
		return json_object_new_object();
	case 2:
		/* Before the qom-set: while it reads the filter, the filter keeps the
		 * disk's node from writers other than itself. */
		*cmd = "blockdev-del";
		return node_del(n->access);
	case FLEECE_STEP_QOM_GET:
		*cmd = "qom-get";
		args = json_object_new_object();
		json_object_object_add(args, "path", json_object_new_string(n->qdev));
		json_object_object_add(args, "property", json_object_new_string("drive"));
		return args;
	case FLEECE_STEP_QOM_SET:
		*cmd = "qom-set";
		return fleece_insert_args(n, 0);
	case 5:
		*cmd = "blockdev-del";
		return node_del(n->cbw);
	case 6:
		*cmd = "blockdev-del";
		return node_del(n->node);
	default:
		*cmd = NULL;
		return NULL;
	}
}

int fleece_filter_in_front(const struct fleece_names *n, struct json_object *drive)
{
	return json_object_is_type(drive, json_type_string) &&
	       strcmp(json_object_get_string(drive), n->cbw) == 0;
}

int fleece_sock_path(const char *run_dir, uid_t uid, const char *vm_dir, char *dir, size_t dirlen,
		     char *sock, size_t socklen, struct kerr *err)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	char path[PATH_MAX + 64];
	size_t base = strlen("/0123456789abcdef.sock");
	int len;

	for (const char *c = vm_dir; *c; c++)
		h = (h ^ (unsigned char)*c) * 1099511628211ULL;
	len = snprintf(path, sizeof(path), "%s/fleece/%u/%016llx.sock", run_dir, (unsigned)uid,
		       (unsigned long long)h);
	if (len < 0 || (size_t)len >= socklen || (size_t)len >= FLEECE_SOCK_MAX ||
	    (size_t)len - base >= dirlen)
		return err_set(err, ENAMETOOLONG,
			       "the NBD socket path %.80s%s is %d bytes, more than a unix socket "
			       "takes (%d): give the agent a shorter --run-dir",
			       path, len > 80 ? "..." : "", len, FLEECE_SOCK_MAX - 1);
	snprintf(sock, socklen, "%s", path);
	path[(size_t)len - base] = '\0';
	snprintf(dir, dirlen, "%s", path);
	return 0;
}

/* Open directory name in at (never through a link), made with mode if missing. */
static int dir_open_at(int at, const char *name, mode_t mode, const char *path, struct kerr *err)
{
	int fd;

	if (mkdirat(at, name, mode) < 0 && errno != EEXIST)
		return err_set(err, errno, "cannot make %s: %s", path, strerror(errno));
	fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return err_set(err, errno, "%s is not a directory: %s", path, strerror(errno));
	return fd;
}

/*
 * Is the directory run_dir (as opened: *want) reached from / through directories only
 * root may change? Each one above it must be root's (the agent's) and writable by no
 * one else, or sticky (/tmp: others may add names there but not move root's): else its
 * owner or writers could rename --run-dir away and put their own in its place, where
 * QEMU then binds the export they can connect to. The path is resolved first (a
 * /var/run -> /run link is fine when root's directories hold it), then walked one
 * directory at a time, never through a link, and must end at *want. Returns 0, or < 0
 * with err naming the first directory that is not so.
 */
static int run_dir_above_check(const char *run_dir, const struct stat *want, struct kerr *err)
{
	char real[PATH_MAX];
	char *name, *next;
	_cleanup_close_ int fd = -1;
	struct stat sb;

	if (realpath(run_dir, real) == NULL)
		return err_set(err, errno, "cannot resolve --run-dir %s: %s", run_dir,
			       strerror(errno));
	fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return err_set(err, errno, "cannot open /: %s", strerror(errno));
	for (name = real + 1; *name; name = next) {
		int nfd;

		if (fstat(fd, &sb) < 0)
			return err_set(err, errno, "cannot look at a directory above --run-dir");
		if ((sb.st_uid != 0 && sb.st_uid != geteuid()) ||
		    ((sb.st_mode & 022) != 0 && (sb.st_mode & S_ISVTX) == 0)) {
			name[-1] = '\0';
			return err_set(err, EPERM,
				       "--run-dir %s: %s above it must be root's and writable by "
				       "root alone, or sticky (owner %u, mode %04o)",
				       run_dir, real[0] ? real : "/", (unsigned)sb.st_uid,
				       (unsigned)(sb.st_mode & 07777));
		}
		next = strchr(name, '/');
		if (next)
			*next++ = '\0';
		else
			next = name + strlen(name);
		nfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0)
			return err_set(err, errno, "cannot open %s above --run-dir: %s", name,
				       strerror(errno));
		close(fd);
		fd = nfd;
		if (*next)
			next[-1] = '/';
	}
	if (fstat(fd, &sb) < 0 || sb.st_dev != want->st_dev || sb.st_ino != want->st_ino)
		return err_set(err, EPERM, "--run-dir %s moved while it was looked at", run_dir);
	return 0;
}

int fleece_sock_dir_make(const char *run_dir, uid_t uid, gid_t gid, struct kerr *err)
{
	_cleanup_close_ int rfd = -1, ffd = -1, ufd = -1;
	_cleanup_free_ char *fleece = xasprintf("%s/fleece", run_dir);
	_cleanup_free_ char *dir = xasprintf("%s/fleece/%u", run_dir, (unsigned)uid);
	char name[16];
	struct stat sb;

	/* The run directory as it is now, once: a path looked up again could be another
	 * directory by then. No one but the agent may write into it, or another user
	 * could put what they like where fleece/ is looked for. */
	rfd = open(run_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (rfd < 0)
		return err_set(err, errno, "cannot open --run-dir %s: %s", run_dir,
			       strerror(errno));
	if (fstat(rfd, &sb) < 0 || sb.st_uid != geteuid() || (sb.st_mode & 022) != 0)
		return err_set(err, EPERM,
			       "--run-dir %s must be the agent's and writable by it alone (owner "
			       "%u, mode %03o)",
			       run_dir, (unsigned)sb.st_uid, (unsigned)(sb.st_mode & 0777));
	if (run_dir_above_check(run_dir, &sb, err) < 0)
		return -1;
	ffd = dir_open_at(rfd, "fleece", 0711, fleece, err);
	if (ffd < 0)
		return -1;
	if (fstat(ffd, &sb) < 0 || sb.st_uid != geteuid())
		return err_set(err, EPERM, "%s is not the agent's directory", fleece);
	if (fchmod(ffd, 0711) < 0)
		return err_set(err, errno, "cannot make %s searchable", fleece);
	/* fleece/ is the agent's alone: its UID entry cannot change under us. */
	snprintf(name, sizeof(name), "%u", (unsigned)uid);
	ufd = dir_open_at(ffd, name, 0700, dir, err);
	if (ufd < 0)
		return -1;
	if (fchown(ufd, uid, gid) < 0 || fchmod(ufd, 0700) < 0)
		return err_set(err, errno, "cannot hand %s to the VM's QEMU uid %u", dir,
			       (unsigned)uid);
	return 0;
}

/* May uid (group gid, supplementary groups groups) search directory sb by its mode
 * bits? (ACLs are not looked at.) */
static int searchable(const struct stat *sb, uid_t uid, gid_t gid, const gid_t *groups, int ngroups)
{
	if (uid == 0)
		return 1;
	if (sb->st_uid == uid)
		return (sb->st_mode & S_IXUSR) != 0;
	for (int i = 0; i < ngroups; i++)
		if (groups[i] == sb->st_gid)
			return (sb->st_mode & S_IXGRP) != 0;
	if (sb->st_gid == gid)
		return (sb->st_mode & S_IXGRP) != 0;
	return (sb->st_mode & S_IXOTH) != 0;
}

int fleece_dir_reachable(const char *dir, uid_t uid, gid_t gid, struct kerr *err)
{
	char path[PATH_MAX], pwbuf[4096];
	gid_t groups[64];
	int ngroups = 0;
	struct passwd pw, *found = NULL;
	struct stat sb;
	size_t len;

	/* A uid with a passwd entry (--qemu-user) may pass by a supplementary group; a
	 * VM's own uid (uid.c) has none. */
	if (uid != 0 && getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &found) == 0 && found) {
		ngroups = (int)ARRAY_SIZE(groups);
		if (getgrouplist(pw.pw_name, gid, groups, &ngroups) < 0)
			ngroups = 0;
	}
	if ((len = strlen(dir)) >= sizeof(path) || dir[0] != '/')
		return err_set(err, EINVAL, "%.80s is not an absolute path", dir);
	memcpy(path, dir, len + 1);
	/* Each directory above dir, from / down: cut at each slash in turn. */
	for (size_t i = 0; i < len; i++) {
		char keep;

		if (path[i] != '/')
			continue;
		keep = path[i + 1];
		path[i + 1] = '\0';
		if (stat(path, &sb) < 0) {
			path[i + 1] = keep;
			return err_set(err, errno, "cannot look at a directory above %s", dir);
		}
		if (!S_ISDIR(sb.st_mode) || !searchable(&sb, uid, gid, groups, ngroups))
			return err_set(err, EACCES,
				       "the VM's QEMU (uid %u) cannot reach %s: %s is not "
				       "searchable for it (mode %03o, owner %u); make every "
				       "directory above it searchable (o+x)",
				       (unsigned)uid, dir, path, (unsigned)(sb.st_mode & 0777),
				       (unsigned)sb.st_uid);
		path[i + 1] = keep;
	}
	return 0;
}
