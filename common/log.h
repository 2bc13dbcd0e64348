/*
 * log.h - daemon logging to stderr (journald picks it up under systemd).
 *
 * log_warn() appends strerror(errno); log_warnx() does not. Prefix messages with the
 * object they concern: "host h1: heartbeat from unknown address".
 */
#ifndef KUMO_LOG_H
#define KUMO_LOG_H

#include <stdbool.h>

enum log_level {
	LOG_LEVEL_ERROR,
	LOG_LEVEL_WARN,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG
};

void log_init(const char *progname, enum log_level level);
int log_level_parse(const char *s, enum log_level *out);
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Timing marks (µs) when KUMO_TRACE is set in the environment; nothing otherwise. */
void log_trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Start-up failures and broken invariants only; never because of input. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
