/*
 * json.h - strict validation of JSON input against a table of fields.
 *
 * Every body that comes from outside (HTTP requests, agent messages) is checked
 * against a declared table before anything reads it: unknown fields, wrong types
 * and missing required fields are errors that name the field.
 */
#ifndef KUMO_JSON_H
#define KUMO_JSON_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"

enum json_kind {
	JK_STRING,
	JK_INT,
	JK_BOOL,
	JK_OBJECT,
	JK_ARRAY,
	JK_NUMBER
};

struct json_field {
	const char *name;
	enum json_kind kind;
	bool required;
	/* Optional further check of the value; reports through err with the field name. */
	int (*check)(struct json_object *val, const char *field, struct kerr *err);
};

/*
 * Parse len bytes as one JSON object. Returns 0 and a new reference in *out, or -1
 * with err (status 400) saying where the text is broken or that it is not an object.
 */
int json_body_parse(const char *text, size_t len, struct json_object **out, struct kerr *err);

/*
 * Check obj against fields (terminated by a {NULL} row): rejects unknown members,
 * wrong kinds and missing required members. Returns 0 or -1 with err (status 400).
 */
int json_fields_check(struct json_object *obj, const struct json_field *fields, struct kerr *err);

/*
 * The same for an object nested in a field: an error names "prefix.member", so the
 * user sees where in the body the problem is.
 */
int json_fields_check_in(struct json_object *obj, const struct json_field *fields,
			 const char *prefix, struct kerr *err);

/*
 * Check an array field f of at most max objects, each against fields; an error names
 * "f[i]" or "f[i].member". Returns 0 or -1 with err (status 400).
 */
/* The length of arr, 0 when it is not an array: json-c's own asserts (ends the daemon)
 * on anything else, and a missing member is NULL. Use this, never
 * json_object_array_length(). */
size_t json_array_len(struct json_object *arr);
int json_array_check(struct json_object *arr, const char *f, const struct json_field *fields,
		     size_t max, struct kerr *err);
/*
 * Check that no two objects of the array field f (checked with json_array_check())
 * have the same string member key: what names a disk must be unique. Returns 0, or
 * -1 with err (status 400): "two KIND are named 'X'".
 */
int json_array_unique_check(struct json_object *arr, const char *f, const char *key,
			    const char *kind, struct kerr *err);

const char *json_kind_name(enum json_kind kind);

/* False for a string value with an embedded NUL byte. */
bool json_string_clean(struct json_object *val);

/* Lookups that return a default when the member is absent or of another type. */
const char *json_get_str(struct json_object *obj, const char *key, const char *def);
int64_t json_get_int(struct json_object *obj, const char *key, int64_t def);
bool json_get_bool(struct json_object *obj, const char *key, bool def);

/* Serialise without pretty-printing and without escaping '/'. Owned by obj. */
const char *json_text(struct json_object *obj);

#endif
