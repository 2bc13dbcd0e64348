/*
 * fence.c - kill this host's HA workloads (fence.h says who calls it and which files
 * it trusts).
 */
#include "json.h"
#include "fence.h"

#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "lease.h"

int64_t fence_alive_age_ms(const char *state_dir)
{
	char path[4096], buf[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/" FENCE_ALIVE, state_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	return lease_mono_ms() - strtoll(buf, NULL, 10);
}

/* Read a small file into buf (NUL-terminated, NULs inside kept). Returns its length or -1. */
static ssize_t small_read(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

static pid_t pidfile_read(const char *path)
{
	char buf[32];
	long pid;

	if (small_read(path, buf, sizeof(buf)) <= 0)
		return 0;
	pid = strtol(buf, NULL, 10);
	return pid > 1 ? (pid_t)pid : 0;
}

/* Does pid's argv hold the argument key followed by the argument value? */
static bool argv_has(pid_t pid, const char *key, const char *value)
{
	char path[64], buf[8192];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	n = small_read(path, buf, sizeof(buf));
	for (ssize_t off = 0; n > 0 && off < n; off += (ssize_t)strlen(buf + off) + 1)
		if (!strcmp(buf + off, key) && off + (ssize_t)strlen(key) + 1 < n &&
		    !strcmp(buf + off + strlen(key) + 1, value))
			return true;
	return false;
}

/* Is pid in a cgroup whose last component is name (a container's init)? */
static bool cgroup_is(pid_t pid, const char *name)
{
	char path[64], buf[4096], *line, *save = NULL;

	snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
	if (small_read(path, buf, sizeof(buf)) <= 0)
		return false;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		const char *slash = strrchr(line, '/');

		if (slash && !strcmp(slash + 1, name))
			return true;
	}
	return false;
}

static bool spec_is_ha(const char *dir)
{
	char path[4096];
	struct json_object *spec, *ha, *en;
	bool yes = false;

	snprintf(path, sizeof(path), "%s/spec.json", dir);
	spec = json_object_from_file(path);
	if (spec && json_object_object_get_ex(spec, "ha", &ha) &&
	    json_object_object_get_ex(ha, "enabled", &en))
		yes = json_object_get_boolean(en);
	json_object_put(spec);
	return yes;
}

static bool listed_ha(struct json_object *list, const char *name)
{
	struct json_object *arr, *n;

	if (!json_object_object_get_ex(list, "instances", &arr) ||
	    !json_object_is_type(arr, json_type_array))
		return false;
	for (size_t i = 0; i < json_array_len(arr); i++)
		if (json_object_object_get_ex(json_object_array_get_idx(arr, i), "name", &n) &&
		    !strcmp(json_object_get_string(n), name))
			return true;
	return false;
}

static int kill_logged(pid_t pid, const char *what, const char *name, const char *why)
{
	if (kill(pid, SIGKILL) < 0)
		return 0;
	fprintf(stderr, "fence: %s %s (pid %d): killed (%s)\n", what, name, (int)pid, why);
	return 1;
}

/* The HA instances under {local}/KIND/: kill their processes. */
static int kill_kind(const char *local_pool, const char *kind, struct json_object *list,
		     const char *why)
{
	char dir[4096], path[4200];
	struct dirent *e;
	int killed = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/%s", local_pool, kind);
	d = opendir(dir);
	if (d == NULL)
		return 0;
	while ((e = readdir(d))) {
		char idir[4200];
		pid_t pid;

		if (e->d_name[0] == '.')
			continue;
		snprintf(idir, sizeof(idir), "%s/%s", dir, e->d_name);
		if (!listed_ha(list, e->d_name) && !spec_is_ha(idir))
			continue;
		if (!strcmp(kind, "instances")) {
			snprintf(path, sizeof(path), "%s/qemu.pid", idir);
			pid = pidfile_read(path);
			if (pid && argv_has(pid, "-name", e->d_name))
				killed += kill_logged(pid, "vm", e->d_name, why);
			continue;
		}
		/* The shim first: it restarts a container whose init dies. */
		snprintf(path, sizeof(path), "%s/shim.pid", idir);
		pid = pidfile_read(path);
		if (pid && argv_has(pid, "--shim", idir))
			killed += kill_logged(pid, "container shim", e->d_name, why);
		snprintf(path, sizeof(path), "%s/container.pid", idir);
		pid = pidfile_read(path);
		if (pid && cgroup_is(pid, e->d_name))
			killed += kill_logged(pid, "container", e->d_name, why);
	}
	closedir(d);
	return killed;
}

int fence_workloads_kill(const char *state_dir, const char *local_pool, const char *why)
{
	char path[4096];
	struct json_object *list;
	int killed;

	snprintf(path, sizeof(path), "%s/" FENCE_HA_LIST, state_dir);
	list = json_object_from_file(path); /* NULL: only the specs say */
	killed = kill_kind(local_pool, "instances", list, why);
	killed += kill_kind(local_pool, "containers", list, why);
	json_object_put(list);
	return killed;
}
