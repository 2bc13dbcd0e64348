/*
 * spec.h - the instance SPEC both daemons read: its limits and its one validator.
 *
 * A SPEC is what the controller builds from a create (VM or container: type, sizes,
 * disks with pool-relative paths, NICs completed with addresses, image references)
 * and sends to the agent, which keeps it as spec.json. spec_check() is the one schema:
 * the controller runs it on every SPEC before storing and sending it, the agent on
 * every SPEC it receives or finds on disk, so the two can no longer drift apart (the
 * controller allowed 8 disks and the agent 16).
 */
#ifndef KUMO_SPEC_H
#define KUMO_SPEC_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "json.h"

/*
 * The limits of a SPEC, one set for both daemons: the controller refuses a request
 * past them (400) and the agent a SPEC past them.
 */
#define SPEC_DISKS_MAX	   8			/* disks of a VM */
#define SPEC_NICS_MAX	   8			/* NICs of a VM or a container */
#define SPEC_VCPUS_MAX	   256			/* a VM's vcpus */
#define SPEC_MEMORY_MB_MIN 16			/* a VM's memory, MiB */
#define SPEC_MEMORY_MB_MAX (1024 * 1024)	/* ... 1 TiB */
#define SPEC_DISK_MB_MAX   (16LL * 1024 * 1024) /* a disk's size, MiB: 16 TiB */
#define SPEC_USER_DATA_MAX (64 * 1024)		/* bytes of cloud-init user data */
#define SPEC_ARGS_MAX	   256			/* strings of a container's command */
#define SPEC_ARG_LEN_MAX   4096			/* bytes of one of them, or of an env value */
#define SPEC_ENV_MAX	   256			/* environment variables of a container */
#define SPEC_CPUS_MAX	   256			/* a container's CPU limit */
#define SPEC_LIMIT_MB_MIN  4			/* a container's memory limit, MiB */
#define SPEC_LIMIT_MB_MAX  (1024 * 1024)	/* ... 1 TiB */
#define SPEC_PIDS_MAX	   1000000		/* a container's pids limit */

/*
 * Check a SPEC (as sent, nulls allowed where absent is) against the schema of its
 * type (VM or container): every field known and of its kind, names and paths of a
 * safe shape, counts within the limits above. Returns 0 or -1 with err naming the
 * field (status 400), its message starting "instance: ".
 */
int spec_check(struct json_object *spec, struct kerr *err);
/* A SPEC as kept: a deep copy with every null member dropped. Returns a new object. */
struct json_object *spec_normalise(struct json_object *spec);

/* Pieces of the schema other checks reuse (the agent's queries, its disk paths). */
int spec_path_check(const char *rel, const char *field, struct kerr *err);
bool spec_digest_valid(const char *s);
int spec_one_of(struct json_object *val, const char *field, const char *const *allowed,
		struct kerr *err);
int spec_range_check(struct json_object *val, const char *field, int64_t lo, int64_t hi,
		     struct kerr *err);
int spec_strings_check(struct json_object *val, const char *field, struct kerr *err);

#endif
