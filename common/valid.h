/*
 * valid.h - checks for names and labels that come from outside.
 *
 * Names become parts of paths and device names later, so they are held to the
 * DNS-label shape: 1-63 characters of [a-z0-9-], starting with a letter or digit,
 * not ending in '-'.
 */
#ifndef KUMO_VALID_H
#define KUMO_VALID_H

#include <json-c/json.h>
#include <stdbool.h>

#include "err.h"

#define NAME_MAX_LEN 63

bool name_valid(const char *s);
/* For json_field.check: a string that is a valid name. */
int name_check(struct json_object *val, const char *field, struct kerr *err);
/* A label key: 1-63 characters of A-Z, a-z, 0-9, '.', '_', '-' and '/'. */
bool label_key_valid(const char *s);
/* For json_field.check: an object of label key -> string value. */
int labels_check(struct json_object *val, const char *field, struct kerr *err);
/*
 * A container path that names a kernel file system (/proc, /sys, /dev, or anything
 * under them once "." , ".." and repeated slashes are resolved): never a working
 * directory, as /proc/self/fd/N would hand the process a host directory
 * (CVE-2024-21626). Symbolic links inside the image are the runtime's to refuse.
 */
bool path_in_kernel_fs(const char *path);

/* For json_field.check: a stop grace in seconds, 1..STOP_GRACE_MAX_S. */
int stop_grace_check(struct json_object *val, const char *field, struct kerr *err);

#endif
