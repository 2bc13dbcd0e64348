/*
 * log.c - timestamped logging to stderr.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *log_prog = "kumo";
static enum log_level log_max = LOG_LEVEL_INFO;

void log_init(const char *progname, enum log_level level)
{
	log_prog = progname;
	log_max = level;
}

int log_level_parse(const char *s, enum log_level *out)
{
	static const char *names[] = {"error", "warn", "info", "debug"};

	for (int i = 0; i < 4; i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

/* The format attribute lets clang check callers (it warns about vfprintf without it). */
static void vlog(enum log_level level, const char *tag, int errnum, const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));
static void vlog(enum log_level level, const char *tag, int errnum, const char *fmt, va_list ap)
{
	char when[32];
	struct timespec ts;
	struct tm tm;

	if (level > log_max)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%H:%M:%S", &tm);
	fprintf(stderr, "%s.%03ld %s %s: ", when, ts.tv_nsec / 1000000, log_prog, tag);
	vfprintf(stderr, fmt, ap);
	if (errnum)
		fprintf(stderr, ": %s", strerror(errnum));
	fputc('\n', stderr);
}

void log_warn(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_WARN, "warning", saved, fmt, ap);
	va_end(ap);
	errno = saved;
}

void log_warnx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_WARN, "warning", 0, fmt, ap);
	va_end(ap);
}

void log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_INFO, "info", 0, fmt, ap);
	va_end(ap);
}

void log_debug(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_DEBUG, "debug", 0, fmt, ap);
	va_end(ap);
}

/*
 * KUMO_TRACE=1 in the environment: timing marks with microseconds on the wall clock,
 * whatever the log level, so the hops of one request can be lined up across the
 * controller, the agent and the shim (bench/container_start.sh --trace).
 */
void log_trace(const char *fmt, ...)
{
	static int enabled = -1;
	char when[32];
	struct timespec ts;
	struct tm tm;
	va_list ap;

	if (enabled < 0)
		enabled = getenv("KUMO_TRACE") != NULL && *getenv("KUMO_TRACE") != '\0';
	if (!enabled)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%H:%M:%S", &tm);
	fprintf(stderr, "%s.%06ld %s trace: ", when, ts.tv_nsec / 1000, log_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void fatal(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_ERROR, "fatal", saved, fmt, ap);
	va_end(ap);
	exit(1);
}

void fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(LOG_LEVEL_ERROR, "fatal", 0, fmt, ap);
	va_end(ap);
	exit(1);
}
