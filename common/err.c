/*
 * err.c - building struct kerr.
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int err_set(struct kerr *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		err->code = code;
		err->status = 0;
		err->field[0] = '\0';
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
		if (code) {
			size_t n = strlen(err->msg);

			snprintf(err->msg + n, sizeof(err->msg) - n, ": %s", strerror(code));
		}
	}
	return code ? -code : -1;
}

int err_input(struct kerr *err, int status, const char *field, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		err->code = 0;
		err->status = status;
		snprintf(err->field, sizeof(err->field), "%s", field ? field : "");
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return -1;
}

int err_prefix(struct kerr *err, const char *prefix)
{
	size_t cap = sizeof(err->msg) - 1, plen;

	if (err == NULL)
		return -1;
	plen = strlen(prefix) < cap ? strlen(prefix) : cap;
	/* Shift the message right (its tail may fall off) and put prefix in front. */
	memmove(err->msg + plen, err->msg, cap - plen);
	memcpy(err->msg, prefix, plen);
	err->msg[cap] = '\0';
	return -1;
}
