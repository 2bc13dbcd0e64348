/*
 * argv.c - argument vectors for child processes (argv.h).
 */
#include "argv.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

void argv_add(struct argv *av, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		fatalx("out of memory");
	va_end(ap);
	if (av->n + 2 > av->cap) {
		av->cap = av->cap ? av->cap * 2 : 16;
		av->v = xrealloc(av->v, av->cap * sizeof(*av->v));
	}
	av->v[av->n++] = s;
	av->v[av->n] = NULL;
}

void argv_free(struct argv *av)
{
	for (size_t i = 0; i < av->n; i++)
		free(av->v[i]);
	free(av->v);
	memset(av, 0, sizeof(*av));
}
