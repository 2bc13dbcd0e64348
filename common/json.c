/*
 * json.c - parsing and table-driven validation of JSON input.
 */
#include "json.h"

#include <stdio.h>
#include <string.h>

int json_body_parse(const char *text, size_t len, struct json_object **out, struct kerr *err)
{
	struct json_tokener *tok;
	struct json_object *obj;
	enum json_tokener_error jerr;
	size_t used;

	if (len == 0)
		return err_input(err, 400, "", "request body is empty; a JSON object is required");
	if (len > INT32_MAX)
		return err_input(err, 413, "", "request body is too large");
	tok = json_tokener_new();
	/* Strict: no trailing commas, no single quotes, nothing JSON does not allow. */
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	obj = json_tokener_parse_ex(tok, text, (int)len);
	jerr = json_tokener_get_error(tok);
	used = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (obj == NULL || jerr != json_tokener_success) {
		json_object_put(obj);
		if (jerr == json_tokener_continue)
			return err_input(err, 400, "",
					 "malformed JSON: the body ends early (it must be a JSON "
					 "object)");
		return err_input(err, 400, "", "malformed JSON at byte %zu: %s", used,
				 json_tokener_error_desc(jerr));
	}
	/* Trailing garbage after the object is malformed input too. */
	for (; used < len; used++) {
		if (text[used] == '\0' || !strchr(" \t\r\n", text[used])) {
			json_object_put(obj);
			return err_input(err, 400, "",
					 "malformed JSON: unexpected data at byte %zu", used);
		}
	}
	if (!json_object_is_type(obj, json_type_object)) {
		json_object_put(obj);
		return err_input(err, 400, "", "the body must be a JSON object");
	}
	*out = obj;
	return 0;
}

const char *json_kind_name(enum json_kind kind)
{
	switch (kind) {
	case JK_STRING:
		return "a string";
	case JK_INT:
		return "an integer";
	case JK_BOOL:
		return "a boolean";
	case JK_OBJECT:
		return "an object";
	case JK_ARRAY:
		return "an array";
	case JK_NUMBER:
		return "a number";
	}
	return "?";
}

static bool kind_matches(struct json_object *val, enum json_kind kind)
{
	switch (kind) {
	case JK_STRING:
		return json_object_is_type(val, json_type_string) && json_string_clean(val);
	case JK_INT:
		return json_object_is_type(val, json_type_int);
	case JK_BOOL:
		return json_object_is_type(val, json_type_boolean);
	case JK_OBJECT:
		return json_object_is_type(val, json_type_object);
	case JK_ARRAY:
		return json_object_is_type(val, json_type_array);
	case JK_NUMBER:
		return json_object_is_type(val, json_type_int) ||
		       json_object_is_type(val, json_type_double);
	}
	return false;
}

int json_fields_check(struct json_object *obj, const struct json_field *fields, struct kerr *err)
{
	const struct json_field *f;

	json_object_object_foreach(obj, key, val)
	{
		for (f = fields; f->name; f++)
			if (strcmp(f->name, key) == 0)
				break;
		if (f->name == NULL)
			return err_input(err, 400, key, "unknown field '%s'", key);
		if (!kind_matches(val, f->kind))
			return err_input(err, 400, key, "field '%s' must be %s", key,
					 json_kind_name(f->kind));
		if (f->check && f->check(val, key, err) < 0)
			return -1;
	}
	for (f = fields; f->name; f++) {
		if (f->required && !json_object_object_get_ex(obj, f->name, NULL))
			return err_input(err, 400, f->name, "field '%s' is required", f->name);
	}
	return 0;
}

bool json_string_clean(struct json_object *val)
{
	/* json-c strings may hold NUL bytes; C code would see only the part before. */
	return (size_t)json_object_get_string_len(val) == strlen(json_object_get_string(val));
}

int json_fields_check_in(struct json_object *obj, const struct json_field *fields,
			 const char *prefix, struct kerr *err)
{
	char inner[sizeof(err->field)];

	if (json_fields_check(obj, fields, err) == 0)
		return 0;
	snprintf(inner, sizeof(inner), "%s", err->field);
	snprintf(err->field, sizeof(err->field), "%s.%s", prefix, inner);
	return -1;
}

int json_array_check(struct json_object *arr, const char *f, const struct json_field *fields,
		     size_t max, struct kerr *err)
{
	size_t n = json_array_len(arr);

	if (n > max)
		return err_input(err, 400, f, "'%s' has %zu entries; at most %zu", f, n, max);
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(arr, i);
		char where[64];

		snprintf(where, sizeof(where), "%s[%zu]", f, i);
		if (!json_object_is_type(e, json_type_object))
			return err_input(err, 400, where, "'%s' must be an object", where);
		if (json_fields_check_in(e, fields, where, err) < 0)
			return -1;
	}
	return 0;
}

int json_array_unique_check(struct json_object *arr, const char *f, const char *key,
			    const char *kind, struct kerr *err)
{
	size_t n = json_array_len(arr);

	/* Quadratic, over arrays json_array_check() capped at a few dozen entries. */
	for (size_t i = 0; i < n; i++) {
		const char *name = json_get_str(json_object_array_get_idx(arr, i), key, "");

		for (size_t k = 0; k < i; k++)
			if (strcmp(name,
				   json_get_str(json_object_array_get_idx(arr, k), key, "")) == 0)
				return err_input(err, 400, f, "two %s are named '%s'", kind, name);
	}
	return 0;
}

const char *json_get_str(struct json_object *obj, const char *key, const char *def)
{
	struct json_object *v;

	if (obj && json_object_object_get_ex(obj, key, &v) &&
	    json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return def;
}

int64_t json_get_int(struct json_object *obj, const char *key, int64_t def)
{
	struct json_object *v;

	if (obj && json_object_object_get_ex(obj, key, &v) && json_object_is_type(v, json_type_int))
		return json_object_get_int64(v);
	return def;
}

bool json_get_bool(struct json_object *obj, const char *key, bool def)
{
	struct json_object *v;

	if (obj && json_object_object_get_ex(obj, key, &v) &&
	    json_object_is_type(v, json_type_boolean))
		return json_object_get_boolean(v);
	return def;
}

const char *json_text(struct json_object *obj)
{
	return json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
							   JSON_C_TO_STRING_NOSLASHESCAPE);
}

size_t json_array_len(struct json_object *arr)
{
	return json_object_is_type(arr, json_type_array) ? json_object_array_length(arr) : 0;
}
