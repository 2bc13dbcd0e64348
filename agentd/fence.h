/*
 * fence.h - killing this host's HA workloads, shared by kumo-fencer (fencer.c) and
 * the agent's start-up (lease.c). Blocking calls: the fencer has no loop, and the
 * agent calls it before its loop starts.
 *
 * Files in {state_dir}/ha/, written by the agent (lease.c):
 *   alive      "MONO_MS\n": CLOCK_MONOTONIC of the agent's last lease renewal that
 *              was written, synced and read back;
 *   workloads  one line per HA workload running here:
 *                vm NAME PID PID_START
 *                ct NAME SHIM_PID SHIM_START INIT_PID INIT_START
 *              (a pid's start time, /proc/PID/stat field 22, so a recycled pid is
 *              never killed);
 *   fenced     appended by whoever fenced: "MONO_MS NAME\n".
 */
#ifndef KUMO_FENCE_H
#define KUMO_FENCE_H

#include <stdint.h>
#include <sys/types.h>

#define FENCE_DIR	"ha"
#define FENCE_ALIVE	"ha/alive"
#define FENCE_WORKLOADS "ha/workloads"
#define FENCE_FENCED	"ha/fenced"
/* The fencer fires this long after the last renewal (lease.h: the controller waits
 * this plus LEASE_MARGIN_MS); an agent renews every second, so 6 s is five missed
 * renewals on a loaded host. */
#define FENCE_MS 6000

/* The start time of pid (clock ticks since boot), or 0 when it is gone or a zombie. */
unsigned long long fence_pid_start(pid_t pid);

/* How long ago the agent last renewed (ms), or -1 when it never did here. */
int64_t fence_alive_age_ms(const char *state_dir);

/*
 * SIGKILL every workload the list names that still runs (shim first, so it restarts
 * nothing), and append each to the fenced file. why goes to stderr with each name.
 * Returns how many processes were killed.
 */
int fence_workloads_kill(const char *state_dir, const char *why);

#endif
