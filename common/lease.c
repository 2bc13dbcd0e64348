/*
 * lease.c - the HA lease record's format (lease.h says what the lease is for).
 */
#include "lease.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

void lease_record_format(const struct lease_record *rec, char buf[LEASE_RECORD_LEN])
{
	int n = snprintf(buf, LEASE_RECORD_LEN,
			 "kumo-lease 1 host=%s generation=%" PRIu64 " counter=%" PRIu64
			 " fence_ms=%" PRId64 "%s\n",
			 rec->host, rec->generation, rec->counter, rec->fence_ms,
			 rec->released ? " released=1" : "");

	if (n < 0 || n >= LEASE_RECORD_LEN)
		n = 0;
	memset(buf + n, ' ', LEASE_RECORD_LEN - (size_t)n);
}

int lease_record_parse(const char *buf, size_t len, struct lease_record *rec)
{
	char line[LEASE_RECORD_LEN + 1];
	char host[64];
	uint64_t gen, counter;
	int64_t fence;
	int used = 0;
	bool released = false;

	if (len > LEASE_RECORD_LEN)
		len = LEASE_RECORD_LEN;
	memcpy(line, buf, len);
	line[len] = '\0';
	if (sscanf(line,
		   "kumo-lease 1 host=%63s generation=%" SCNu64 " counter=%" SCNu64
		   " fence_ms=%" SCNd64 "%n",
		   host, &gen, &counter, &fence, &used) != 4 ||
	    used == 0 || fence <= 0)
		return -1;
	if (!strncmp(line + used, " released=1", 11)) {
		released = true;
		used += 11;
	}
	if (line[used] != '\n')
		return -1;
	memset(rec, 0, sizeof(*rec));
	snprintf(rec->host, sizeof(rec->host), "%s", host);
	rec->generation = gen;
	rec->counter = counter;
	rec->fence_ms = fence;
	rec->released = released;
	return 0;
}

int64_t lease_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
