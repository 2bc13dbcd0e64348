/*
 * netver.c - versions of the keys hosts' network documents are made of; the design
 * is in netver.h. The table is open addressing over string keys: a heartbeat looks
 * up each key of its host's stamp, a handful, so a check costs a few hashes instead
 * of a query, JSON and a SHA-256.
 */
#include <stdlib.h>
#include <string.h>

#include "netver.h"
#include "util.h"

struct slot {
	char *key; /* NULL: empty */
	uint64_t version;
};

struct netver {
	uint64_t global;
	struct slot *slots;
	size_t cap; /* a power of two */
	size_t used;
};

uint64_t netver_digest(uint64_t h, const void *p, size_t len)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < len; i++) {
		h ^= b[i];
		h *= 1099511628211ULL;
	}
	return h;
}

struct netver *netver_new(void)
{
	struct netver *v = xcalloc(1, sizeof(*v));

	v->global = 1;
	v->cap = 64;
	v->slots = xcalloc(v->cap, sizeof(*v->slots));
	return v;
}

void netver_free(struct netver *v)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < v->cap; i++)
		free(v->slots[i].key);
	free(v->slots);
	free(v);
}

/* The slot of key: its own, or the empty one where it would go. */
static struct slot *slot_find(const struct netver *v, const char *key)
{
	size_t i = netver_digest(NETVER_DIGEST_INIT, key, strlen(key)) & (v->cap - 1);

	while (v->slots[i].key && strcmp(v->slots[i].key, key) != 0)
		i = (i + 1) & (v->cap - 1);
	return &v->slots[i];
}

static void grow(struct netver *v)
{
	struct slot *old = v->slots;
	size_t old_cap = v->cap;

	v->cap *= 2;
	v->slots = xcalloc(v->cap, sizeof(*v->slots));
	for (size_t i = 0; i < old_cap; i++)
		if (old[i].key)
			*slot_find(v, old[i].key) = old[i];
	free(old);
}

void netver_all_bump(struct netver *v)
{
	v->global++;
}

void netver_key_bump(struct netver *v, const char *key)
{
	struct slot *s = slot_find(v, key);

	if (s->key == NULL) {
		/* Half full at most, so a probe always ends at an empty slot. */
		if (2 * (v->used + 1) > v->cap) {
			grow(v);
			s = slot_find(v, key);
		}
		s->key = xstrdup(key);
		v->used++;
	}
	s->version++;
}

uint64_t netver_key_get(const struct netver *v, const char *key)
{
	return slot_find(v, key)->version;
}

bool netver_stamp_current(const struct netver *v, const struct netver_stamp *s)
{
	if (!s->valid || s->global != v->global)
		return false;
	for (size_t i = 0; i < s->ndeps; i++)
		if (netver_key_get(v, s->deps[i].key) != s->deps[i].value)
			return false;
	return true;
}

static const struct netver_entry *entry_find(const struct netver_entry *e, size_t n,
					     const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(e[i].key, key) == 0)
			return &e[i];
	return NULL;
}

static void entries_free(struct netver_entry *e, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(e[i].key);
	free(e);
}

size_t netver_stamp_record(struct netver *v, struct netver_stamp *s, const char *const *deps,
			   size_t n, const struct netver_entry *contribs, size_t m)
{
	struct netver_entry *copy = m ? xcalloc(m, sizeof(*copy)) : NULL;
	size_t bumped = 0;

	/* Lists are a host's segments and groups: a few, so pairwise is cheapest. */
	for (size_t i = 0; i < m; i++) {
		const struct netver_entry *was =
			entry_find(s->contribs, s->ncontribs, contribs[i].key);

		if (s->valid && (was == NULL || was->value != contribs[i].value)) {
			netver_key_bump(v, contribs[i].key);
			bumped++;
		}
		copy[i].key = xstrdup(contribs[i].key);
		copy[i].value = contribs[i].value;
	}
	for (size_t i = 0; s->valid && i < s->ncontribs; i++)
		if (entry_find(contribs, m, s->contribs[i].key) == NULL) {
			netver_key_bump(v, s->contribs[i].key);
			bumped++;
		}
	entries_free(s->contribs, s->ncontribs);
	s->contribs = copy;
	s->ncontribs = m;
	/* After the bumps: the host's own change does not make its document stale. */
	entries_free(s->deps, s->ndeps);
	s->deps = n ? xcalloc(n, sizeof(*s->deps)) : NULL;
	s->ndeps = n;
	for (size_t i = 0; i < n; i++) {
		s->deps[i].key = xstrdup(deps[i]);
		s->deps[i].value = netver_key_get(v, deps[i]);
	}
	s->global = v->global;
	s->valid = true;
	return bumped;
}

void netver_stamp_clear(struct netver_stamp *s)
{
	entries_free(s->deps, s->ndeps);
	entries_free(s->contribs, s->ncontribs);
	memset(s, 0, sizeof(*s));
}
