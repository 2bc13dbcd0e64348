/*
 * snaprevert.c - a snapshot revert and the backups' dirty bitmaps (snaprevert.h).
 */
#include "snaprevert.h"

#include <stdio.h>
#include <string.h>

#include "json.h"
#include "util.h"

#define KUMO_PREFIX	  "kumo-"
#define BACKUP_ID_HEX	  32   /* link_op_id_new: 16 random bytes in hex */
#define BITMAP_NAME_MAX	  1023 /* QEMU's BDRV_BITMAP_MAX_NAME_SIZE */
#define SNAPSHOT_NAME_MAX 63   /* common/verbs.c */

bool snaprevert_bitmap_is_kumo(const char *name)
{
	size_t plen = strlen(KUMO_PREFIX);

	return strncmp(name, KUMO_PREFIX, plen) == 0 && strlen(name) == plen + BACKUP_ID_HEX &&
	       strspn(name + plen, "0123456789abcdef") == BACKUP_ID_HEX;
}

bool snaprevert_name_printable(const char *name)
{
	size_t n = strlen(name);

	return n > 0 && n <= 64 &&
	       strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") ==
		       n;
}

/* Append disk's bitmaps (an array of QEMU's BlockDirtyInfo or qemu-img's
 * Qcow2BitmapInfo: objects with an optional string "name") to out. */
static int bitmaps_add(struct json_object *bitmaps, size_t disk, struct json_object *out,
		       struct kerr *err)
{
	if (bitmaps == NULL)
		return 0;
	if (!json_object_is_type(bitmaps, json_type_array))
		return err_set(err, 0, "disk %zu's dirty bitmaps are not a list", disk);
	for (size_t k = 0; k < json_array_len(bitmaps); k++) {
		struct json_object *b = json_object_array_get_idx(bitmaps, k), *name = NULL, *e;

		if (!json_object_is_type(b, json_type_object))
			return err_set(err, 0, "disk %zu's dirty bitmap %zu is not an object", disk,
				       k);
		if (json_object_object_get_ex(b, "name", &name) &&
		    (!json_object_is_type(name, json_type_string) || !json_string_clean(name) ||
		     strlen(json_object_get_string(name)) > BITMAP_NAME_MAX))
			return err_set(err, 0, "disk %zu's dirty bitmap %zu has a malformed name",
				       disk, k);
		e = json_object_new_object();
		json_object_object_add(e, "disk", json_object_new_int64((int64_t)disk));
		json_object_object_add(
			e, "name",
			json_object_new_string(name ? json_object_get_string(name) : ""));
		json_object_array_add(out, e);
	}
	return 0;
}

int snaprevert_bitmaps_from_nodes(struct json_object *nodes, size_t ndisks, struct json_object *out,
				  struct kerr *err)
{
	if (!json_object_is_type(nodes, json_type_array))
		return err_set(err, 0, "QEMU's list of block nodes is not a list");
	for (size_t k = 0; k < json_array_len(nodes); k++) {
		struct json_object *n = json_object_array_get_idx(nodes, k);
		const char *node = json_get_str(n, "node-name", "");
		char want[16];

		for (size_t i = 0; i < ndisks; i++) {
			snprintf(want, sizeof(want), "d%zu", i);
			if (strcmp(node, want) == 0 &&
			    bitmaps_add(json_object_object_get(n, "dirty-bitmaps"), i, out, err) <
				    0)
				return -1;
		}
	}
	return 0;
}

int snaprevert_bitmaps_from_info(struct json_object *info, size_t disk, struct json_object *out,
				 struct kerr *err)
{
	struct json_object *fs = json_object_object_get(info, "format-specific");
	struct json_object *data = json_object_object_get(fs, "data");

	/* qcow2 only; a disk of another format has no persistent bitmaps to lose. */
	if (!json_object_is_type(data, json_type_object))
		return 0;
	return bitmaps_add(json_object_object_get(data, "bitmaps"), disk, out, err);
}

struct json_object *snaprevert_foreign(struct json_object *list)
{
	for (size_t k = 0; k < json_array_len(list); k++) {
		struct json_object *e = json_object_array_get_idx(list, k);

		if (!snaprevert_bitmap_is_kumo(json_get_str(e, "name", "")))
			return e;
	}
	return NULL;
}

char *snaprevert_record_text(const char *snapshot, int64_t at_ms)
{
	struct json_object *o = json_object_new_object();
	char *text;

	json_object_object_add(o, "snapshot", json_object_new_string(snapshot));
	json_object_object_add(o, "reverted_at", json_object_new_int64(at_ms));
	text = xstrdup(json_text(o));
	json_object_put(o);
	return text;
}

static const struct json_field record_fields[] = {
	{"snapshot", JK_STRING, true, NULL},
	{"reverted_at", JK_INT, true, NULL},
	{NULL, 0, false, NULL},
};

int snaprevert_record_parse(const char *text, size_t len, int64_t *at_ms, char *snapshot,
			    size_t snaplen, struct kerr *err)
{
	struct json_object *o = NULL;
	const char *name;
	int ret = -1;

	if (json_body_parse(text, len, &o, err) < 0 || json_fields_check(o, record_fields, err) < 0)
		goto out;
	name = json_get_str(o, "snapshot", "");
	if (name[0] == '\0' || strlen(name) > SNAPSHOT_NAME_MAX || strlen(name) >= snaplen ||
	    !json_string_clean(json_object_object_get(o, "snapshot")) ||
	    strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
		    strlen(name)) {
		err_set(err, 0, "the revert's record names no snapshot");
		goto out;
	}
	*at_ms = json_get_int(o, "reverted_at", -1);
	if (*at_ms <= 0) {
		err_set(err, 0, "the revert's record has no time");
		goto out;
	}
	snprintf(snapshot, snaplen, "%s", name);
	ret = 0;
out:
	json_object_put(o);
	return ret;
}
