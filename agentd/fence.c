/*
 * fence.c - kill this host's HA workloads (fence.h says who calls it and which files
 * it reads).
 */
#include "fence.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lease.h"

unsigned long long fence_pid_start(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long start = 0;
	FILE *f;
	size_t n;

	if (pid <= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (f == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: fields start after the last ')'. */
	p = strrchr(buf, ')');
	if (p == NULL || p[1] == '\0' || p[2] == 'Z' || p[2] == 'X')
		return 0;
	/* state is field 3; starttime is field 22, 19 fields on */
	p += 2;
	for (int field = 3; field < 22 && p; field++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	if (p)
		start = strtoull(p, NULL, 10);
	return start;
}

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

/* Kill pid if it is still the process that started at start. Returns 1 if killed. */
static int kill_same(pid_t pid, unsigned long long start)
{
	if (pid <= 0 || start == 0 || fence_pid_start(pid) != start)
		return 0;
	return kill(pid, SIGKILL) == 0 ? 1 : 0;
}

int fence_workloads_kill(const char *state_dir, const char *why)
{
	char path[4096], line[512], name[256], kind[8];
	int killed = 0;
	FILE *f, *log;

	snprintf(path, sizeof(path), "%s/" FENCE_WORKLOADS, state_dir);
	f = fopen(path, "re");
	if (f == NULL)
		return 0;
	snprintf(path, sizeof(path), "%s/" FENCE_FENCED, state_dir);
	log = fopen(path, "ae");
	while (fgets(line, sizeof(line), f)) {
		long pid1 = 0, pid2 = 0;
		unsigned long long st1 = 0, st2 = 0;
		int n = 0, got = sscanf(line, "%7s %255s %ld %llu %ld %llu", kind, name, &pid1,
					&st1, &pid2, &st2);

		if (got < 4)
			continue;
		/* A container's shim first: it would restart the container it sees die. */
		n += kill_same((pid_t)pid1, st1);
		if (got == 6)
			n += kill_same((pid_t)pid2, st2);
		if (n == 0)
			continue;
		killed += n;
		fprintf(stderr, "fence: %s %s: killed (%s)\n", kind, name, why);
		if (log)
			fprintf(log, "%" PRId64 " %s\n", lease_mono_ms(), name);
	}
	fclose(f);
	if (log)
		fclose(log);
	return killed;
}
