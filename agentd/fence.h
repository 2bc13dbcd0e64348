/*
 * fence.h - killing this host's HA workloads, shared by kumo-fencer (fencer.c) and
 * the agent's start-up (lease.c). Blocking calls: the fencer has no loop, and the
 * agent calls it before its loop starts.
 *
 * Nothing here depends on the agent having kept a list up to date: which workloads
 * are HA and which processes they are comes from files that exist before the
 * workload runs, or that the workload's own processes write:
 *   {local}/instances/NAME/spec.json, {local}/containers/NAME/spec.json
 *                  the instance's spec: HA when "ha": {"enabled": true};
 *   {state}/ha/instances.json
 *                  the controller's HA list, copied from the shared pool by the agent
 *                  (instances made HA after they were created here);
 *   {local}/instances/NAME/qemu.pid   written by QEMU itself;
 *   {local}/containers/NAME/shim.pid, container.pid   written by the shim.
 * Every pid is checked against its process before it is killed (QEMU's "-name NAME",
 * the shim's "--shim DIR", the container's cgroup), so a recycled pid is never hit.
 *
 * {state}/ha/alive is "MONO_MS\n", CLOCK_MONOTONIC of the agent's last lease renewal
 * that was written, synced and read back (lease.c).
 */
#ifndef KUMO_FENCE_H
#define KUMO_FENCE_H

#include <stdint.h>

#define FENCE_DIR     "ha"
#define FENCE_ALIVE   "ha/alive"
#define FENCE_HA_LIST "ha/instances.json"
/* The fencer fires this long after the last renewal (lease.h: the controller waits
 * this plus LEASE_MARGIN_MS); an agent renews every second, so 6 s is five missed
 * renewals on a loaded host. */
#define FENCE_MS 6000

/* How long ago the agent last renewed (ms), or -1 when it never did here. */
int64_t fence_alive_age_ms(const char *state_dir);

/*
 * SIGKILL every process of every HA instance of this host (a container's shim
 * first, so it restarts nothing). why goes to stderr with each name. Returns how
 * many processes were killed.
 */
int fence_workloads_kill(const char *state_dir, const char *local_pool, const char *why);

#endif
