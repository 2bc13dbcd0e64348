/*
 * webassets.h - the dashboard's files, compiled into the controller (see embed.cmake), so
 * it serves them with nothing to find on disk and nothing to fetch from elsewhere.
 */
#ifndef KUMO_WEBASSETS_H
#define KUMO_WEBASSETS_H

#include <stddef.h>

struct web_asset {
	const char *name; /* file name in web/, e.g. "app.js" */
	const unsigned char *data;
	size_t len;
};

extern const struct web_asset kumo_web_assets[]; /* ends with a NULL name */

#endif
