/*
 * argv.h - an argument vector being built for a child process (QEMU, qemu-img,
 * runc): NULL-terminated, its strings owned.
 */
#ifndef KUMO_ARGV_H
#define KUMO_ARGV_H

#include <stddef.h>

struct argv {
	char **v;
	size_t n, cap;
};

/*
 * Append one argument, formatted, to av (which starts zeroed); av->v stays
 * NULL-terminated. Release with argv_free().
 */
void argv_add(struct argv *av, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Release what av holds; it is empty (and reusable) afterwards. */
void argv_free(struct argv *av);

#endif
