/*
 * err.h - the one shape of errors: a caller-supplied struct kerr that a failing
 * function fills with why, returning a negative int.
 */
#ifndef KUMO_ERR_H
#define KUMO_ERR_H

struct kerr {
	int code;	/* errno-style cause, or 0 */
	int status;	/* HTTP status the REST layer should answer, or 0 for 500 */
	char field[64]; /* the input field at fault, if any */
	char msg[256];	/* one sentence for the user */
};

/* Fill err (if not NULL) and return -1 (or -code when code is set). */
int err_set(struct kerr *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Same, for input errors: the HTTP status and the field name travel with the message. */
int err_input(struct kerr *err, int status, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/*
 * Add context in front of err's message at a layer boundary, keeping its code, status
 * and field. Returns -1 so it can end a failing path.
 */
int err_prefix(struct kerr *err, const char *prefix);

#endif
