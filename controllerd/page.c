/*
 * page.c - lists that page: ?limit= (default PAGE_DEFAULT, at most PAGE_MAX), an opaque
 * cursor ?after= taken from the previous page's "next", and ?fields= to keep only some
 * fields of each item. Every list route answers {"<items>": [...], "next": cursor|null}.
 *
 * A cursor is the hex of the sort key of the page's last item ("name" for hosts,
 * instances, images and networks; "id" for tokens; "created_at:rowid" for operations),
 * so the next page starts strictly after it with an indexed range scan: a page costs
 * O(page), not O(cluster), and items added or removed meanwhile never shift a page.
 */
#include <ctype.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"
#include "valid.h"

#define FIELDS_MAX 16

/*
 * Read limit, after and fields of req into p. Returns 0, or -1 with err (400 naming the
 * parameter) for a limit out of range, a cursor that is not one of ours, or a field
 * name that cannot be one.
 */
int page_begin(struct request *req, struct page *p, struct kerr *err)
{
	const char *after = http_query(req, "after"), *fields = http_query(req, "fields");
	size_t n;

	memset(p, 0, sizeof(*p));
	if (http_query_int(req, "limit", 1, PAGE_MAX, PAGE_DEFAULT, &p->limit, err) < 0)
		return -1;
	if (after) {
		n = strlen(after);
		if (n == 0 || n % 2 || n / 2 >= sizeof(p->after) ||
		    hex_decode(after, (unsigned char *)p->after, n / 2) < 0 ||
		    memchr(p->after, '\0', n / 2))
			return err_input(err, 400, "after",
					 "query parameter 'after' must be the 'next' cursor of a "
					 "previous page");
		p->after[n / 2] = '\0';
	}
	if (fields) {
		int count = 1;

		if (fields[0] == '\0')
			return err_input(err, 400, "fields",
					 "query parameter 'fields' must name at least one field");
		for (const char *s = fields; *s; s++) {
			if (*s == ',')
				count++;
			else if (!islower((unsigned char)*s) && *s != '_' &&
				 !isdigit((unsigned char)*s))
				return err_input(err, 400, "fields",
						 "query parameter 'fields' must be field names "
						 "(a-z, 0-9, '_') separated by commas");
		}
		if (count > FIELDS_MAX || strstr(fields, ",,") || fields[0] == ',' ||
		    fields[strlen(fields) - 1] == ',')
			return err_input(err, 400, "fields",
					 "query parameter 'fields' must name 1-%d fields separated "
					 "by commas",
					 FIELDS_MAX);
		p->fields = fields;
	}
	return 0;
}

/* item with only the fields p asks for (a new object; item's reference is consumed). */
static struct json_object *fields_keep(const struct page *p, struct json_object *item)
{
	struct json_object *out;
	char name[64];

	if (p->fields == NULL)
		return item;
	out = json_object_new_object();
	for (const char *s = p->fields; *s;) {
		size_t len = strcspn(s, ",");
		struct json_object *v;

		snprintf(name, sizeof(name), "%.*s", (int)len, s);
		if (json_object_object_get_ex(item, name, &v))
			json_object_object_add(out, name, json_object_get(v));
		s += len + (s[len] == ',');
	}
	json_object_put(item);
	return out;
}

/*
 * Offer item, whose sort key is key, to the page. Returns true when it was added (the
 * page takes the reference), false when the page is full: the caller stops, and
 * page_end() then gives a "next" cursor (the caller still owns item).
 */
bool page_add(struct page *p, struct json_object *list, struct json_object *item, const char *key)
{
	if (p->count >= p->limit) {
		p->more = true;
		return false;
	}
	/* A key the cursor cannot hold whole would make the next page start before this
	 * item, for ever: no such key is made (names are bounded), but never loop on one. */
	if (strlen(key) >= sizeof(p->last))
		fatalx("page: a sort key of %zu bytes is longer than PAGE_KEY_MAX", strlen(key));
	json_object_array_add(list, fields_keep(p, item));
	snprintf(p->last, sizeof(p->last), "%s", key);
	p->count++;
	return true;
}

/* Put list under name in out, and "next": a cursor after the last item if there is more. */
void page_end(struct page *p, struct json_object *out, const char *name, struct json_object *list)
{
	json_object_object_add(out, name, list);
	if (p->more) {
		size_t n = strlen(p->last);
		char *hex = xmalloc(2 * n + 1);

		hex_encode((const unsigned char *)p->last, n, hex);
		json_object_object_add(out, "next", json_object_new_string(hex));
		free(hex);
	} else {
		json_object_object_add(out, "next", NULL);
	}
}

/* A ?label= filter: "key=value", the key a valid label key, the value at most 255 bytes. */
int page_label_check(const char *kv, struct kerr *err)
{
	const char *eq = strchr(kv, '=');
	char key[64];

	if (eq == NULL || eq == kv || (size_t)(eq - kv) >= sizeof(key) || strlen(eq + 1) > 255)
		return err_input(err, 400, "label",
				 "query parameter 'label' must be KEY=VALUE with a label key");
	snprintf(key, sizeof(key), "%.*s", (int)(eq - kv), kv);
	if (!label_key_valid(key))
		return err_input(err, 400, "label",
				 "label key '%s' must be 1-63 characters of A-Z, a-z, 0-9, '.', "
				 "'_', '-' and '/'",
				 key);
	return 0;
}

/*
 * The usual list by name: run st (its ?1 bound to p->after, ?2 to p->limit + 1 by this
 * function), make each row an item with row_json, key it by its "name", and return the
 * page's items. st is finalized.
 */
struct json_object *page_rows_by_name(struct page *p, sqlite3_stmt *st,
				      struct json_object *(*row_json)(sqlite3_stmt *st))
{
	struct json_object *list = json_object_new_array();

	sqlite3_bind_text(st, 1, p->after, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, p->limit + 1); /* one more: is there a next page? */
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *o = row_json(st);
		_cleanup_free_ char *name =
			xstrdup(json_object_get_string(json_object_object_get(o, "name")));

		if (!page_add(p, list, o, name)) {
			json_object_put(o);
			break;
		}
	}
	sqlite3_finalize(st);
	return list;
}
