/*
 * sched_bench.c - placements per second of the scheduler (controllerd/sched.c) on a
 * cluster of N hosts, in process: no database, no HTTP. Each placement's usage is
 * added to the host it chose, as the controller's next placement would see it, and
 * one host in ten is offline or full so that the explanation has rejections to count.
 *
 *   sched_bench HOSTS [SECONDS] [--no-instances]
 *                                 prints "HOSTS hosts: R placements/s ..."
 *
 * The chosen host's instance count goes up too, as the controller's view counts them
 * (instances.c); --no-instances leaves every count at 0, as this harness did before:
 * then hundreds of hosts tie with the best few on score and instances, and only
 * their names settle it (the slowest case for the scan).
 *
 * R is per second of this process's CPU time (CLOCK_PROCESS_CPUTIME_ID), so a machine
 * shared with other work does not halve it; the wall-clock rate is printed too.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scheduler.h"

static double now_s(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? (size_t)atol(argv[1]) : 1000;
	double seconds = argc > 2 ? atof(argv[2]) : 2.0, t0, w0, elapsed, wall;
	struct sched_params params = {.cpu_ratio = 4.0, .mem_ratio = 1.0, .policy = SCHED_SPREAD};
	struct sched_request req = {.vcpus = 1, .memory_mb = 256};
	struct sched_host *hosts = calloc(n, sizeof(*hosts));
	char(*names)[24] = calloc(n, sizeof(*names));
	struct sched_outcome out;
	long placed = 0, failed = 0;
	bool count_instances = !(argc > 3 && strcmp(argv[3], "--no-instances") == 0);

	if (n < 1 || hosts == NULL || names == NULL)
		return 2;
	for (size_t i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "sim%05zu", i + 1);
		hosts[i] = (struct sched_host){
			.name = names[i],
			.online = i % 10 != 3,
			.cpus = 64,
			.memory_mb = 262144,
			.shared_pool = true,
			.local_pool = true,
			.vxlan = true,
			/* One host in ten (another one) is full. */
			.vcpus_used = i % 10 == 7 ? 256 : (int)(i % 7),
			.memory_used_mb = (int64_t)(i % 5) * 1024,
		};
	}
	t0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
	w0 = now_s(CLOCK_MONOTONIC);
	do {
		for (int k = 0; k < 1000; k++) {
			int best = sched_place(&req, &params, hosts, n, &out);

			if (best < 0) {
				failed++;
				continue;
			}
			placed++;
			hosts[best].vcpus_used += req.vcpus;
			hosts[best].memory_used_mb += req.memory_mb;
			if (count_instances)
				hosts[best].instances++;
			/* Keep the cluster from filling up: capacity comes back. */
			if (hosts[best].vcpus_used > 200) {
				hosts[best].vcpus_used = (int)(best % 7);
				hosts[best].memory_used_mb = (int64_t)(best % 5) * 1024;
				hosts[best].instances = 0;
			}
		}
		elapsed = now_s(CLOCK_PROCESS_CPUTIME_ID) - t0;
	} while (elapsed < seconds);
	wall = now_s(CLOCK_MONOTONIC) - w0;
	printf("%zu hosts: %.0f placements/s of CPU time, %.0f/s of wall time (%ld placed, %ld "
	       "found no host; last: %zu fit, %zu rejected)\n",
	       n, (double)(placed + failed) / elapsed, (double)(placed + failed) / wall, placed,
	       failed, out.nfit, out.nrejected);
	free(hosts);
	free(names);
	return 0;
}
