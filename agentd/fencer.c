/*
 * fencer.c - kumo-fencer STATE_DIR LOCAL_POOL: the host's self-fencing, a process of its own so
 * that it works when kumo-agentd is frozen (SIGSTOP), wedged or dead.
 *
 * Every 100 ms it reads when the agent last renewed its storage lease (fence.h:
 * {state}/ha/alive, CLOCK_MONOTONIC). Once that is FENCE_MS old, it kills the HA
 * workloads of this host (fence.h: found from their specs and pid files, nothing the
 * agent must keep current), and keeps killing them while the lease stays unrenewed:
 * the controller restarts them elsewhere only after FENCE_MS + LEASE_MARGIN_MS of a
 * still lease, measured from a later moment than this one. A host that never renewed has nothing to
 * fence.
 *
 * No libuv, nothing that could block but local reads, work only while fencing:
 * the point of this process is to stay simple enough to keep running when the
 * agent does not. It runs as root (it kills QEMU and runc processes of any user).
 * Started next to the agent (deploy/lab, the kumo-fencer systemd unit).
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fence.h"

#define POLL_MS 100

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

int main(int argc, char **argv)
{
	struct timespec poll = {0, POLL_MS * 1000000L};
	bool fenced = false;

	if (argc != 3 || argv[1][0] != '/' || argv[2][0] != '/') {
		fprintf(stderr,
			"usage: kumo-fencer STATE_DIR LOCAL_POOL (the agent's, absolute)\n");
		return 2;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	fprintf(stderr, "fencer: watching %s, fencing %d ms after the last lease renewal\n",
		argv[1], FENCE_MS);
	while (!stopping) {
		int64_t age = fence_alive_age_ms(argv[1]);

		if (age >= FENCE_MS) {
			if (!fenced)
				fprintf(stderr,
					"fencer: the lease was last renewed %lld ms ago: fencing\n",
					(long long)age);
			fenced = true;
			fence_workloads_kill(argv[1], argv[2], "lease not renewed");
		} else if (age >= 0 && fenced) {
			fprintf(stderr, "fencer: the lease is renewed again\n");
			fenced = false;
		}
		nanosleep(&poll, NULL);
	}
	return 0;
}
