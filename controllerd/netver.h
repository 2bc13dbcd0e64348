/*
 * netver.h - versions of what hosts' network documents are made of (netsync.c).
 *
 * A host's document depends on a few keys: its segments ("seg/NET/VLAN": who else is
 * on them, its peers) and the security groups it carries ("group/NAME": their
 * members' addresses); everything else in it (networks, rules, the control plane)
 * changes rarely and moves one global generation. Each key has a version, bumped
 * only when what other hosts see of it changes: a host joining or leaving a segment,
 * an address joining or leaving a group. A host's stamp keeps the versions of its
 * keys when its document was last built and what it contributed to each key then;
 * its document needs building again only when the global generation or one of its
 * keys moved. Pure logic: no database, no loop, so it is unit tested alone.
 */
#ifndef KUMO_NETVER_H
#define KUMO_NETVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A key and a number: a version (what a stamp depends on) or a digest of what a
 * host contributes to the key (its addresses in a group, its presence on a segment). */
struct netver_entry {
	char *key;
	uint64_t value;
};

/* What a host's last document was built from. Zeroed means never built. */
struct netver_stamp {
	bool valid;
	uint64_t global;
	struct netver_entry *deps; /* the key versions the document depended on */
	size_t ndeps;
	struct netver_entry *contribs; /* the host's share of each key */
	size_t ncontribs;
};

struct netver;

/* A new, empty table (every key at version 0, global generation 1). Free with
 * netver_free(). */
struct netver *netver_new(void);
void netver_free(struct netver *v);

/* Something every document depends on changed: every stamp is stale. */
void netver_all_bump(struct netver *v);

/* Key changed for everyone who depends on it. */
void netver_key_bump(struct netver *v, const char *key);

/* The current version of key (0 for a key never bumped). */
uint64_t netver_key_get(const struct netver *v, const char *key);

/* Is the document stamped by s still what the current versions make? */
bool netver_stamp_current(const struct netver *v, const struct netver_stamp *s);

/*
 * A host's document was just built: it depends on deps (n keys) and the host
 * contributes contribs (m entries) to keys. Every key whose contribution differs
 * from the stamp's last one (added, removed or another digest) is bumped, unless s
 * was never built (the first build after start changes nobody's document). Then s
 * records the current versions. Returns how many keys were bumped. s owns copies.
 */
size_t netver_stamp_record(struct netver *v, struct netver_stamp *s, const char *const *deps,
			   size_t n, const struct netver_entry *contribs, size_t m);

/* Release what s holds and zero it (never built). */
void netver_stamp_clear(struct netver_stamp *s);

/* FNV-1a of len bytes of p, continuing from h (start with NETVER_DIGEST_INIT). */
#define NETVER_DIGEST_INIT 14695981039346656037ULL
uint64_t netver_digest(uint64_t h, const void *p, size_t len);

#endif
