/*
 * valid.c - name and label validation.
 */
#include "valid.h"
#include "verbs.h"

#include "json.h"

#include <stdio.h>
#include <string.h>

bool name_valid(const char *s)
{
	size_t len = s ? strlen(s) : 0;

	if (len == 0 || len > NAME_MAX_LEN || s[len - 1] == '-' || s[0] == '-')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
			return false;
	}
	return true;
}

int name_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (!json_string_clean(val) || !name_valid(json_object_get_string(val)))
		return err_input(err, 400, field,
				 "field '%s' must be 1-63 characters of a-z, 0-9 and '-', not "
				 "starting or ending with '-'",
				 field);
	return 0;
}

bool label_key_valid(const char *k)
{
	size_t len = strlen(k);

	if (len == 0 || len > 63)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = k[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("._-/", c)))
			return false;
	}
	return true;
}

int labels_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_object_object_length(val) > 64)
		return err_input(err, 400, field, "field '%s' holds more than 64 labels", field);
	json_object_object_foreach(val, key, v)
	{
		const char *s;

		if (!label_key_valid(key))
			return err_input(err, 400, field,
					 "label key '%.64s' must be 1-63 characters of "
					 "A-Z, a-z, 0-9, '.', '_', '-' and '/'",
					 key);
		if (!json_object_is_type(v, json_type_string))
			return err_input(err, 400, field, "label '%s' must have a string value",
					 key);
		s = json_object_get_string(v);
		if (!json_string_clean(v))
			return err_input(err, 400, field, "label '%s' has a NUL byte in its value",
					 key);
		if (strlen(s) > 255)
			return err_input(err, 400, field,
					 "label '%s' has a value longer than 255 characters", key);
		for (; *s; s++)
			if ((unsigned char)*s < 0x20 || *s == 0x7f)
				return err_input(err, 400, field,
						 "label '%s' has a control character in its value",
						 key);
	}
	return 0;
}

int stop_grace_check(struct json_object *val, const char *field, struct kerr *err)
{
	int64_t v = json_object_get_int64(val);

	if (v < 1 || v > STOP_GRACE_MAX_S)
		return err_input(err, 400, field, "'%s' must be 1..%d seconds", field,
				 STOP_GRACE_MAX_S);
	return 0;
}

bool path_in_kernel_fs(const char *path)
{
	static const char *const roots[] = {"proc", "sys", "dev"};
	char first[8] = "";
	size_t depth = 0;

	/* Walk the components; only the first one left after ".." matters. */
	for (const char *p = path; *p;) {
		size_t len;

		while (*p == '/')
			p++;
		len = strcspn(p, "/");
		if (len == 0 || (len == 1 && p[0] == '.')) {
			p += len;
			continue;
		}
		if (len == 2 && p[0] == '.' && p[1] == '.') {
			if (depth > 0)
				depth--;
		} else {
			if (depth == 0)
				snprintf(first, sizeof(first), "%.*s", len < 7 ? (int)len : 7, p);
			depth++;
		}
		p += len;
	}
	if (depth == 0)
		return false;
	for (size_t i = 0; i < sizeof(roots) / sizeof(roots[0]); i++)
		if (strcmp(first, roots[i]) == 0)
			return true;
	return false;
}
