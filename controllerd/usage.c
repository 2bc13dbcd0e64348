/*
 * usage.c - the last hour of each instance's CPU, memory and network use, for the
 * dashboard's charts (GET /api/v1/instances/{name}/metrics).
 *
 * Agents report cumulative counters with every heartbeat (agentd/usage.c); this turns
 * them into one sample per USAGE_STEP_MS (rates over the step) in a ring of
 * USAGE_SAMPLES per instance, in memory only: charts are a view of the recent past, not
 * state worth a write per heartbeat, and a controller restart starts them afresh. A
 * ring costs ~6 KB; rings are made only for instances whose host reports usage (real
 * agents), at most USAGE_RINGS_MAX of them, and a ring not fed for an hour is dropped.
 */
#include <stdlib.h>
#include <string.h>

#include "controllerd.h"
#include "util.h"
#include "valid.h"

#define USAGE_STEP_MS	15000
#define USAGE_SAMPLES	240 /* an hour of 15 s steps */
#define USAGE_BUCKETS	4096
#define USAGE_RINGS_MAX 50000
#define USAGE_STALE_MS	(3600 * 1000)

struct usage_sample {
	int64_t t;
	float cpu_pct; /* 100 = one CPU busy */
	uint64_t mem_bytes;
	float rx_bps, tx_bps;
};

struct usage_ring {
	struct usage_ring *next;
	char name[NAME_MAX_LEN + 1];
	int64_t base_t; /* the counters at the start of the current step */
	uint64_t base_cpu, base_rx, base_tx;
	int64_t fed_at;
	unsigned head, count;
	struct usage_sample s[USAGE_SAMPLES];
};

static struct usage_ring *buckets[USAGE_BUCKETS];
static unsigned rings;

static unsigned bucket_of(const char *name)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 16777619u;
	return h % USAGE_BUCKETS;
}

static struct usage_ring *ring_find(const char *name, bool make)
{
	struct usage_ring **slot = &buckets[bucket_of(name)], *r;

	for (r = *slot; r; r = r->next)
		if (strcmp(r->name, name) == 0)
			return r;
	if (!make || rings >= USAGE_RINGS_MAX)
		return NULL;
	r = xcalloc(1, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->next = *slot;
	*slot = r;
	rings++;
	return r;
}

/* A counter that went backwards (a restarted process) starts the step again. */
static bool counters_sane(const struct usage_ring *r, uint64_t cpu, uint64_t rx, uint64_t tx)
{
	return cpu >= r->base_cpu && rx >= r->base_rx && tx >= r->base_tx;
}

/*
 * Record an instance's reported usage ({"cpu_ns", "mem_bytes", "rx_bytes", "tx_bytes"},
 * from an authenticated agent that runs it). Bad or missing fields are ignored.
 */
void usage_record(const char *name, struct json_object *usage)
{
	int64_t now = now_ms(), cpu, mem, rx, tx;
	struct usage_ring *r;

	if (usage == NULL || !json_object_is_type(usage, json_type_object))
		return;
	cpu = json_get_int(usage, "cpu_ns", -1);
	mem = json_get_int(usage, "mem_bytes", -1);
	rx = json_get_int(usage, "rx_bytes", -1);
	tx = json_get_int(usage, "tx_bytes", -1);
	if (cpu < 0 || mem < 0 || rx < 0 || tx < 0 || (r = ring_find(name, true)) == NULL)
		return;
	r->fed_at = now;
	if (r->base_t == 0 || !counters_sane(r, (uint64_t)cpu, (uint64_t)rx, (uint64_t)tx)) {
		r->base_t = now;
		r->base_cpu = (uint64_t)cpu;
		r->base_rx = (uint64_t)rx;
		r->base_tx = (uint64_t)tx;
		return;
	}
	if (now - r->base_t < USAGE_STEP_MS)
		return;
	{
		double secs = (double)(now - r->base_t) / 1000.0;
		struct usage_sample *s = &r->s[r->head];

		s->t = now;
		s->cpu_pct = (float)((double)((uint64_t)cpu - r->base_cpu) / 1e7 / secs);
		s->mem_bytes = (uint64_t)mem;
		s->rx_bps = (float)((double)((uint64_t)rx - r->base_rx) / secs);
		s->tx_bps = (float)((double)((uint64_t)tx - r->base_tx) / secs);
		r->head = (r->head + 1) % USAGE_SAMPLES;
		if (r->count < USAGE_SAMPLES)
			r->count++;
	}
	r->base_t = now;
	r->base_cpu = (uint64_t)cpu;
	r->base_rx = (uint64_t)rx;
	r->base_tx = (uint64_t)tx;
}

/* Forget an instance's samples (it was deleted; a new one of the name starts afresh). */
void usage_forget(const char *name)
{
	struct usage_ring **slot = &buckets[bucket_of(name)];

	for (; *slot; slot = &(*slot)->next) {
		if (strcmp((*slot)->name, name) == 0) {
			struct usage_ring *r = *slot;

			*slot = r->next;
			free(r);
			rings--;
			return;
		}
	}
}

/* Drop rings no agent fed for an hour (their instance is gone or stopped long ago). */
void usage_cron(void)
{
	int64_t now = now_ms();

	for (size_t b = 0; b < USAGE_BUCKETS; b++) {
		for (struct usage_ring **slot = &buckets[b]; *slot;) {
			struct usage_ring *r = *slot;

			if (now - r->fed_at > USAGE_STALE_MS) {
				*slot = r->next;
				free(r);
				rings--;
			} else {
				slot = &r->next;
			}
		}
	}
}

/* The samples of name, oldest first, as {"step_s", "samples": [...]} (new reference). */
struct json_object *usage_json(const char *name)
{
	struct json_object *out = json_object_new_object(), *arr = json_object_new_array();
	struct usage_ring *r = ring_find(name, false);

	json_object_object_add(out, "name", json_object_new_string(name));
	json_object_object_add(out, "step_s", json_object_new_int(USAGE_STEP_MS / 1000));
	for (unsigned i = 0; r && i < r->count; i++) {
		const struct usage_sample *s =
			&r->s[(r->head + USAGE_SAMPLES - r->count + i) % USAGE_SAMPLES];
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "t", json_object_new_int64(s->t));
		json_object_object_add(o, "cpu_pct", json_object_new_double(s->cpu_pct));
		json_object_object_add(o, "mem_bytes",
				       json_object_new_int64((int64_t)s->mem_bytes));
		json_object_object_add(o, "rx_bps", json_object_new_double(s->rx_bps));
		json_object_object_add(o, "tx_bps", json_object_new_double(s->tx_bps));
		json_object_array_add(arr, o);
	}
	json_object_object_add(out, "samples", arr);
	return out;
}
