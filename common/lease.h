/*
 * lease.h - the HA storage lease: one small record per host on the shared pool, in
 * the manner of sanlock's delta leases.
 *
 * Each agent rewrites its record ({shared}/ha/leases/HOST) every second with a counter
 * that only grows; the controller reads every record and notes, on its own monotonic
 * clock, when each counter last moved. A host whose counter has not moved for the
 * lease expiry may be restarted elsewhere, because its fencer (kumo-fencer) has
 * killed the host's HA workloads by then: the fencer fires fence_ms after the last
 * renewal the agent saw succeed, and the controller waits at least fence_ms plus
 * LEASE_MARGIN_MS after the last change it saw, which was later still.
 *
 * The record is text, one line, padded to LEASE_RECORD_LEN bytes so that a write
 * never spans two sectors:
 *   kumo-lease 1 host=NAME generation=G counter=N fence_ms=F[ released=1]\n
 * "released=1" is the last record of a host in maintenance whose HA workloads have all
 * been handed off: it stops renewing, and nobody waits for it to expire.
 */
#ifndef KUMO_LEASE_H
#define KUMO_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LEASE_RECORD_LEN 512
#define LEASE_DIR	 "ha/leases"
/* The list of HA instances the controller keeps on the pool for the agents. */
#define LEASE_HA_LIST "ha/instances.json"
/* The controller's view for the agents: a counter and how long ago it heard each host. */
#define LEASE_VIEW "ha/view.json"
/* An agent that a live controller has not heard for this long stops renewing its
 * lease (it is cut off from the controller but not from the pool): its fencer fences
 * it, and the controller may restart its HA workloads once the lease has expired. */
#define LEASE_UNHEARD_MS 8000
/* What a controller adds to the fence deadline before it trusts a silent lease:
 * scheduling delays of a loaded host, a slow read of the record. */
#define LEASE_MARGIN_MS 3000

struct lease_record {
	char host[64];
	uint64_t generation; /* new at every agent start */
	uint64_t counter;    /* grows by one at every renewal */
	int64_t fence_ms;    /* the host's fencer fires this long after its last renewal */
	bool released;	     /* maintenance: the host stopped renewing on purpose */
};

/* Format rec into buf (LEASE_RECORD_LEN bytes, padded with spaces after the line). */
void lease_record_format(const struct lease_record *rec, char buf[LEASE_RECORD_LEN]);

/* Parse a record read from the pool. Returns 0, or -1 when it is not one. */
int lease_record_parse(const char *buf, size_t len, struct lease_record *rec);

/* CLOCK_MONOTONIC in milliseconds: the same clock in every process of a host, and
 * deaf to wall-clock steps. */
int64_t lease_mono_ms(void);

#endif
