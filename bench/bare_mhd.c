/*
 * bare_mhd.c - the yardstick of bench/api.sh: a libmicrohttpd server doing nothing but
 * answer, with the controller's TLS (same key, certificate and priorities) and the
 * same bytes: each GET path answers the contents of a file captured from the
 * controller, with the controller's response headers; a POST answers 201 with the
 * body of its file once the request body is read. One thread polls with epoll, as
 * the controller's one loop does.
 *
 *   bare_mhd PORT KEY CERT PRIORITIES PATH=FILE...   (tls off when KEY is "-")
 *
 * Runs until killed. Loopback only.
 */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_PATHS 8

static struct {
	const char *path;
	char *body;
	size_t len;
} paths[MAX_PATHS];
static int npaths;

static char *slurp(const char *file, size_t *len)
{
	FILE *f = fopen(file, "rb");
	char *buf;
	long n;

	if (f == NULL || fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0) {
		perror(file);
		exit(2);
	}
	rewind(f);
	buf = malloc((size_t)n + 1);
	if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n)
		exit(2);
	fclose(f);
	buf[n] = '\0';
	*len = (size_t)n;
	return buf;
}

static enum MHD_Result answer_cb(void *cls, struct MHD_Connection *conn, const char *url,
				 const char *method, const char *version, const char *upload,
				 size_t *upload_size, void **state)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	int i;

	if (*state == NULL) { /* headers in; the body (if any) comes next */
		*state = conn;
		return MHD_YES;
	}
	if (*upload_size) {
		*upload_size = 0;
		return MHD_YES;
	}
	for (i = 0; i < npaths && strcmp(paths[i].path, url) != 0; i++)
		;
	if (i == npaths)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(paths[i].len, paths[i].body, MHD_RESPMEM_PERSISTENT);
	/* The headers the controller sends with every answer. */
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(resp, "X-Frame-Options", "DENY");
	MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
	MHD_add_response_header(resp, "Content-Security-Policy",
				"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
				"form-action 'none'");
	ret = MHD_queue_response(conn, strcmp(method, "POST") ? 200 : 201, resp);
	MHD_destroy_response(resp);
	return ret;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL;
	struct MHD_Daemon *d;
	size_t klen, clen;
	char *key = NULL, *cert = NULL;
	bool tls;

	if (argc < 6) {
		fprintf(stderr, "usage: bare_mhd PORT KEY CERT PRIORITIES PATH=FILE...\n");
		return 2;
	}
	sin.sin_port = htons((unsigned short)atoi(argv[1]));
	tls = strcmp(argv[2], "-") != 0;
	if (tls) {
		key = slurp(argv[2], &klen);
		cert = slurp(argv[3], &clen);
		flags |= MHD_USE_TLS;
	}
	for (int i = 5; i < argc && npaths < MAX_PATHS; i++) {
		char *eq = strchr(argv[i], '=');

		if (eq == NULL)
			return 2;
		*eq = '\0';
		paths[npaths].path = argv[i];
		paths[npaths].body = slurp(eq + 1, &paths[npaths].len);
		npaths++;
	}
	d = MHD_start_daemon(flags, 0, NULL, NULL, answer_cb, NULL, MHD_OPTION_SOCK_ADDR, &sin,
			     MHD_OPTION_CONNECTION_LIMIT, 1024u,
			     tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, key,
			     MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_HTTPS_PRIORITIES, argv[4],
			     MHD_OPTION_END);
	if (d == NULL) {
		fprintf(stderr, "bare_mhd: cannot start on port %s\n", argv[1]);
		return 1;
	}
	for (;;)
		pause();
}
