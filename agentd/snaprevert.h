/*
 * snaprevert.h - what a snapshot revert (vmaction.c) must do about backups.
 *
 * Kumo's backups leave a persistent dirty bitmap "kumo-BACKUP" on each qcow2 disk of
 * the VM (backup.c): the next incremental backup reads what it marks. QEMU 7.2 applies
 * no internal snapshot to a disk that has any dirty bitmap ("Device has active dirty
 * bitmaps": qemu-img snapshot -a, -loadvm, HMP loadvm). So before a revert the
 * bitmaps Kumo made go, and the revert is recorded in the VM's run directory
 * (SNAPREVERT_RECORD): the next backup of a parent taken before it is full and says it
 * is because of the revert (the disks' content jumped; the parent's bitmap is gone). A
 * bitmap Kumo did not make (an operator's, a block job's) is never removed: the revert
 * is refused before anything changed, naming it.
 *
 * Pure: JSON in and out, no I/O (tests/unit/test_snaprevert.c).
 */
#ifndef KUMO_SNAPREVERT_H
#define KUMO_SNAPREVERT_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* The revert's record, in the VM's run directory: {"snapshot", "reverted_at"}. */
#define SNAPREVERT_RECORD     "revert.json"
#define SNAPREVERT_RECORD_MAX 4096 /* read no more of it than this */

/* Is name a bitmap backup.c made: "kumo-" and a backup id exactly as the controller
 * makes them (32 lowercase hex digits, link_op_id_new)? Anything else is not Kumo's. */
bool snaprevert_bitmap_is_kumo(const char *name);

/* May name go into an error and a log as it is? 1-64 of [A-Za-z0-9._:-]: a bitmap's name
 * comes from QEMU or the qcow2 file, which the guest's QEMU may have written. */
bool snaprevert_name_printable(const char *name);

/*
 * The bitmaps of disks 0..ndisks-1 from QMP's query-named-block-nodes (flat) reply
 * nodes: each of the node dI's (qemuargs.c's names) "dirty-bitmaps" is appended to out
 * (a JSON array) as {"disk": I, "name": NAME}; a bitmap without a name (a block job's)
 * has name "". Returns 0, or -1 with err when the reply is not shaped as QEMU's.
 */
int snaprevert_bitmaps_from_nodes(struct json_object *nodes, size_t ndisks, struct json_object *out,
				  struct kerr *err);

/* The same from `qemu-img info --output=json` of a stopped disk (its
 * format-specific.data.bitmaps), as disk index disk. */
int snaprevert_bitmaps_from_info(struct json_object *info, size_t disk, struct json_object *out,
				 struct kerr *err);

/* The first entry of list (snaprevert_bitmaps_from_*) that is not Kumo's, borrowed,
 * or NULL when Kumo made every one. */
struct json_object *snaprevert_foreign(struct json_object *list);

/* The record's text for a revert to snapshot at at_ms (wall clock); the caller frees. */
char *snaprevert_record_text(const char *snapshot, int64_t at_ms);

/*
 * Parse a record's text (len bytes): its time into *at_ms and its snapshot's name into
 * snapshot (len snaplen). Returns 0, or -1 with err when the text is not a record.
 */
int snaprevert_record_parse(const char *text, size_t len, int64_t *at_ms, char *snapshot,
			    size_t snaplen, struct kerr *err);

#endif
