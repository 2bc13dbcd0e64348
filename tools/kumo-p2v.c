/*
 * kumo-p2v - send a machine's disks to a Kumo p2v ingest session (controllerd/p2v.c).
 *
 *   kumo-p2v --url https://ctl:9443/api/v1/p2v/ID --token T --disk /dev/sda [options]
 *
 * Cold (the default): one pass copies each disk; run it from a rescue system so nothing
 * writes to the disks meanwhile. Warm (--warm): the machine keeps running; pass 1
 * copies everything, each further pass hashes every chunk and sends only those whose
 * hash differs from what the controller holds, until a pass changes few chunks; then
 * --freeze-cmd runs (default: fsfreeze of /), a final pass sends the rest, and the disk
 * the controller holds equals the source's at the freeze, bit for bit. --cutover then
 * makes the VM, --poweroff powers the source off.
 *
 * Every request is retried on a new connection after a failure, and a pass asks the
 * controller for the hashes it holds first, so a dropped connection (or a new run with
 * --resume) resends nothing that was stored. Progress goes to stderr (a bar with rate
 * and ETA, or JSON lines with --json); with --json the summary is JSON on stdout.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/fs.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "token.h"
#include "util.h"

#define DISKS_MAX    8
#define RETRY_S	     300 /* a controller restart (kill -9, lab up) fits well inside */
#define REPLY_MAX    (64 << 20)
#define HEADER_MAX   16384
#define IO_TIMEOUT_S 120
#define PARALLEL_MAX 16

struct options {
	char *url, *token, *cacert;
	bool insecure, warm, cutover, start, convert, poweroff, resume, json;
	int max_passes;
	int parallel; /* chunks in flight */
	long small;   /* a warm pass that changes at most this many chunks is the last before
			 the freeze */
	char *freeze_cmd, *poweroff_cmd;
	int ndisks;
	char *disk_name[DISKS_MAX], *disk_path[DISKS_MAX];
};

static struct options opt = {.max_passes = 8, .small = -1, .parallel = 4};

/* The controller, as parsed from --url. */
static char scheme[8], host[256], port[8], base_path[512];

struct conn {
	int fd;
	SSL *ssl;
};

static SSL_CTX *tls_ctx;
/* One connection per worker thread (pass_worker). */
static __thread struct conn conn = {.fd = -1};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "kumo-p2v: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static void url_parse(const char *url)
{
	const char *p = strstr(url, "://"), *h, *slash, *colon;

	if (p == NULL || (size_t)(p - url) >= sizeof(scheme))
		die("--url must be http(s)://host[:port]/api/v1/p2v/ID");
	snprintf(scheme, sizeof(scheme), "%.*s", (int)(p - url), url);
	if (strcmp(scheme, "https") && strcmp(scheme, "http"))
		die("--url must use https (or http for a controller run without TLS)");
	h = p + 3;
	slash = strchr(h, '/');
	if (slash == NULL)
		die("--url has no path: it is the session's url, /api/v1/p2v/ID");
	colon = memchr(h, ':', (size_t)(slash - h));
	if (colon) {
		snprintf(host, sizeof(host), "%.*s", (int)(colon - h), h);
		snprintf(port, sizeof(port), "%.*s", (int)(slash - colon - 1), colon + 1);
	} else {
		snprintf(host, sizeof(host), "%.*s", (int)(slash - h), h);
		snprintf(port, sizeof(port), "%s", strcmp(scheme, "https") ? "80" : "443");
	}
	snprintf(base_path, sizeof(base_path), "%s", slash);
	while (strlen(base_path) > 1 && base_path[strlen(base_path) - 1] == '/')
		base_path[strlen(base_path) - 1] = '\0';
}

static void conn_close(void)
{
	if (conn.ssl) {
		SSL_shutdown(conn.ssl);
		SSL_free(conn.ssl);
		conn.ssl = NULL;
	}
	if (conn.fd >= 0)
		close(conn.fd);
	conn.fd = -1;
}

/* Connect (and with https, handshake and verify the controller). 0 or -1. */
static int conn_open(void)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res, *ai;
	struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
	int rc;

	if ((rc = getaddrinfo(host, port, &hints, &res)) != 0) {
		fprintf(stderr, "kumo-p2v: %s: %s\n", host, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		conn.fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (conn.fd < 0)
			continue;
		setsockopt(conn.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(conn.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(conn.fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(conn.fd);
		conn.fd = -1;
	}
	freeaddrinfo(res);
	if (conn.fd < 0) {
		fprintf(stderr, "kumo-p2v: cannot connect to %s:%s: %s\n", host, port,
			strerror(errno));
		return -1;
	}
	if (strcmp(scheme, "https"))
		return 0;
	conn.ssl = SSL_new(tls_ctx);
	SSL_set_fd(conn.ssl, conn.fd);
	SSL_set_tlsext_host_name(conn.ssl, host);
	/* The controller's name or address must be in its certificate. */
	if (!opt.insecure) {
		X509_VERIFY_PARAM *param = SSL_get0_param(conn.ssl);

		if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
			SSL_set1_host(conn.ssl, host);
	}
	if (SSL_connect(conn.ssl) != 1) {
		fprintf(stderr, "kumo-p2v: TLS with %s:%s failed: %s\n", host, port,
			ERR_reason_error_string(ERR_get_error()));
		conn_close();
		return -1;
	}
	return 0;
}

static int io_write(const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = conn.ssl ? SSL_write(conn.ssl, p, (int)len) : write(conn.fd, p, len);

		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static ssize_t io_read(void *buf, size_t len)
{
	return conn.ssl ? SSL_read(conn.ssl, buf, (int)len) : read(conn.fd, buf, len);
}

struct reply {
	int status;
	char *body;
	size_t len;
};

/*
 * One request on the open connection. Returns 0 with the reply (its body NUL
 * terminated, the caller's to free), or -1 when the connection failed.
 */
static int http_once(const char *method, const char *path, const char *ctype, const void *body,
		     size_t len, struct reply *r)
{
	char head[HEADER_MAX + 1];
	size_t got = 0, want;
	char *end = NULL, *cl;
	_cleanup_free_ char *req = NULL;

	if (conn.fd < 0 && conn_open() < 0)
		return -1;
	req = xasprintf("%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
			"Content-Type: %s\r\nContent-Length: %zu\r\nConnection: keep-alive\r\n\r\n",
			method, path, host, opt.token, ctype, len);
	/* A refusal (401, 400) may come before the body is read and the connection close
	 * under it: the answer is still read. */
	if (io_write(req, strlen(req)) < 0)
		goto broken;
	if (len)
		io_write(body, len);
	while (end == NULL) {
		ssize_t n;

		if (got == HEADER_MAX)
			goto broken;
		n = io_read(head + got, HEADER_MAX - got);
		if (n <= 0)
			goto broken;
		got += (size_t)n;
		head[got] = '\0';
		end = strstr(head, "\r\n\r\n");
	}
	if (sscanf(head, "HTTP/1.%*d %d", &r->status) != 1)
		goto broken;
	*end = '\0';
	cl = strcasestr(head, "\r\ncontent-length:");
	want = cl ? strtoull(cl + 17, NULL, 10) : 0;
	if (want > REPLY_MAX)
		goto broken;
	r->body = xmalloc(want + 1);
	r->len = got - (size_t)(end + 4 - head);
	if (r->len > want)
		r->len = want;
	memcpy(r->body, end + 4, r->len);
	while (r->len < want) {
		ssize_t n = io_read(r->body + r->len, want - r->len);

		if (n <= 0) {
			free(r->body);
			r->body = NULL;
			goto broken;
		}
		r->len += (size_t)n;
	}
	r->body[r->len] = '\0';
	if (strcasestr(head, "\r\nconnection: close"))
		conn_close();
	return 0;
broken:
	conn_close();
	return -1;
}

/*
 * A request, retried on a new connection until it is answered or RETRY_S pass: the
 * controller keeps its sessions across a restart, so waiting one out loses nothing.
 * Returns how many tries failed before the answer.
 */
static int http_call(const char *method, const char *path, const char *ctype, const void *body,
		     size_t len, struct reply *r)
{
	double give_up = now_s() + RETRY_S;
	int failed = 0;

	for (;;) {
		if (http_once(method, path, ctype, body, len, r) == 0)
			return failed;
		if (now_s() > give_up)
			die("%s %s: no answer for %d s", method, path, RETRY_S);
		failed++;
		fprintf(stderr, "kumo-p2v: connection lost; retrying %s %s\n", method, path);
		sleep(1);
	}
}

/* ---- disks ---- */

struct disk {
	const char *name, *path;
	int fd;
	int64_t size;
	struct json_object *hashes; /* the controller's, from the pass start: {index: hex}
				     * for the chunks holding data */
};

static struct disk disks[DISKS_MAX];
static int ndisks;
static int64_t chunk_size;

static int64_t device_size(int fd, const char *path)
{
	struct stat sb;
	uint64_t n = 0;

	if (fstat(fd, &sb) < 0)
		die("%s: %s", path, strerror(errno));
	if (S_ISBLK(sb.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &n) < 0)
			die("%s: cannot read its size: %s", path, strerror(errno));
		return (int64_t)n;
	}
	return sb.st_size;
}

/* Match the session's disks (from a pass start) with --disk: by name, else in order. */
static void disks_bind(struct json_object *list)
{
	size_t n = json_array_len(list);

	if (n > DISKS_MAX || (int)n != opt.ndisks)
		die("the session has %zu disks; give --disk for each", n);
	for (size_t i = 0; i < n; i++) {
		struct json_object *d = json_object_array_get_idx(list, i);
		const char *name = json_get_str(d, "name", "");
		int k = -1;

		for (int j = 0; j < opt.ndisks; j++)
			if (opt.disk_name[j] && !strcmp(opt.disk_name[j], name))
				k = j;
		if (k < 0 && opt.disk_name[i] == NULL)
			k = (int)i;
		if (k < 0)
			die("no --disk for the session's disk %s", name);
		disks[i].name = name;
		disks[i].path = opt.disk_path[k];
		if (disks[i].fd <= 0) {
			disks[i].fd = open(disks[i].path, O_RDONLY | O_CLOEXEC);
			if (disks[i].fd < 0)
				die("%s: %s", disks[i].path, strerror(errno));
		}
		disks[i].size = device_size(disks[i].fd, disks[i].path);
		if (disks[i].size != json_get_int(d, "size_bytes", -1))
			die("%s is %lld bytes; the session's disk %s is %lld", disks[i].path,
			    (long long)disks[i].size, name,
			    (long long)json_get_int(d, "size_bytes", -1));
		disks[i].hashes = json_object_object_get(d, "stored");
	}
	ndisks = (int)n;
}

struct pass_stats {
	int pass;
	int64_t chunks_sent, bytes_sent, chunks_scanned, bytes_scanned, total_bytes;
	double started, ended;
};

static void progress(const struct pass_stats *p, const char *disk, bool last)
{
	static double shown;
	double t = now_s(), el = t - p->started;
	double rate = el > 0 ? (double)p->bytes_scanned / el : 0;
	double eta = rate > 0 ? (double)(p->total_bytes - p->bytes_scanned) / rate : 0;
	double pct =
		p->total_bytes ? 100.0 * (double)p->bytes_scanned / (double)p->total_bytes : 100;

	if (!last && t - shown < 0.5)
		return;
	shown = t;
	if (opt.json) {
		fprintf(stderr,
			"{\"event\":\"progress\",\"pass\":%d,\"disk\":\"%s\",\"percent\":%.1f,"
			"\"scanned_bytes\":%lld,\"sent_chunks\":%lld,\"sent_bytes\":%lld,"
			"\"rate_bytes_per_s\":%.0f,\"eta_s\":%.0f}\n",
			p->pass, disk, pct, (long long)p->bytes_scanned, (long long)p->chunks_sent,
			(long long)p->bytes_sent, rate, eta);
		return;
	}
	{
		char bar[31];
		int fill = (int)(pct * 30 / 100);

		memset(bar, '#', (size_t)fill);
		memset(bar + fill, '.', (size_t)(30 - fill));
		bar[30] = '\0';
		fprintf(stderr, "\rpass %d %-8.8s [%s] %5.1f%% %7.1f MiB/s ETA %4.0fs sent %lld",
			p->pass, disk, bar, pct, rate / 1048576, eta, (long long)p->chunks_sent);
		if (last)
			fputc('\n', stderr);
	}
}

/* Hash every chunk of every disk; send those the controller holds differently. */
/* What the workers of one pass share: the next chunk to look at, the counters. */
struct pass_work {
	struct pass_stats *p;
	pthread_mutex_t lock;
	int disk;
	int64_t next; /* chunk index in disk */
};

/* Take the next chunk of the pass (under the lock); false when there is none. */
static bool chunk_take(struct pass_work *pw, int *disk, int64_t *c)
{
	while (pw->disk < ndisks) {
		struct disk *d = &disks[pw->disk];

		if (pw->next * chunk_size < d->size) {
			*disk = pw->disk;
			*c = pw->next++;
			return true;
		}
		progress(pw->p, d->name, true);
		pw->disk++;
		pw->next = 0;
	}
	return false;
}

/* A worker: its own connection (conn is per thread), chunks until none is left. */
static void *pass_worker(void *arg)
{
	struct pass_work *pw = arg;
	_cleanup_free_ char *buf = xmalloc((size_t)chunk_size);
	struct reply r = {0};
	int64_t c;
	int i;

	for (;;) {
		struct disk *d;
		int64_t off;
		size_t len, got = 0;
		bool zero;
		const char *have;
		unsigned char md[32];
		char hex[65], key[24];
		bool send = true;

		pthread_mutex_lock(&pw->lock);
		if (!chunk_take(pw, &i, &c)) {
			pthread_mutex_unlock(&pw->lock);
			break;
		}
		pthread_mutex_unlock(&pw->lock);
		d = &disks[i];
		off = c * chunk_size;
		len = (size_t)(d->size - off < chunk_size ? d->size - off : chunk_size);
		snprintf(key, sizeof(key), "%lld", (long long)c);
		have = json_object_get_string(json_object_object_get(d->hashes, key));
		while (got < len) {
			ssize_t n = pread(d->fd, buf + got, len - got, off + (off_t)got);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				die("%s: read at %lld failed: %s", d->path,
				    (long long)(off + (off_t)got), n ? strerror(errno) : "EOF");
			got += (size_t)n;
		}
		zero = mem_is_zero(buf, len);
		/* An all-zero chunk the controller holds as zero: never sent. */
		if (zero && (have == NULL || have[0] == '\0')) {
			send = false;
		} else {
			sha256(buf, len, md);
			hex_encode(md, 32, hex);
			send = !(have && !strcmp(have, hex));
		}
		if (send) {
			_cleanup_free_ char *cpath =
				xasprintf("%s/disks/%s/chunks/%lld?sha256=%s", base_path, d->name,
					  (long long)off, hex);

			http_call("PUT", cpath, "application/octet-stream", buf, len, &r);
			if (r.status != 204)
				die("chunk %lld of %s: HTTP %d: %s", (long long)off, d->name,
				    r.status, r.body);
			free(r.body);
		}
		pthread_mutex_lock(&pw->lock);
		pw->p->chunks_scanned++;
		pw->p->bytes_scanned += (int64_t)len;
		if (send) {
			pw->p->chunks_sent++;
			pw->p->bytes_sent += (int64_t)len;
		}
		progress(pw->p, d->name, false);
		pthread_mutex_unlock(&pw->lock);
	}
	conn_close();
	return NULL;
}

/* Hash every chunk of every disk; send those the controller holds differently. */
static void pass_run(struct pass_stats *p, bool resume)
{
	_cleanup_free_ char *path = xasprintf("%s/passes%s", base_path, resume ? "?resume=1" : "");
	struct pass_work pw = {.p = p};
	pthread_t workers[PARALLEL_MAX];
	struct json_object *o;
	struct reply r = {0};
	struct kerr err;

	http_call("POST", path, "application/json", "", 0, &r);
	if (r.status != 200)
		die("starting a pass: HTTP %d: %s", r.status, r.body);
	if (json_body_parse(r.body, r.len, &o, &err) < 0)
		die("the controller's pass answer is not JSON: %s", err.msg);
	free(r.body);
	chunk_size = json_get_int(o, "chunk_size", 0);
	if (chunk_size <= 0 || chunk_size > (64 << 20))
		die("the controller's chunk size %lld is unusable", (long long)chunk_size);
	disks_bind(json_object_object_get(o, "disks"));
	memset(p, 0, sizeof(*p));
	p->pass = (int)json_get_int(o, "pass", 0);
	p->started = now_s();
	for (int i = 0; i < ndisks; i++)
		p->total_bytes += disks[i].size;
	/* Several chunks in flight: the controller hashes and writes them on its worker
	 * threads while the next ones are read and hashed here. */
	pthread_mutex_init(&pw.lock, NULL);
	for (int i = 0; i < opt.parallel; i++)
		if (pthread_create(&workers[i], NULL, pass_worker, &pw) != 0)
			die("cannot start a worker thread");
	for (int i = 0; i < opt.parallel; i++)
		pthread_join(workers[i], NULL);
	pthread_mutex_destroy(&pw.lock);
	p->ended = now_s();
	json_object_put(o);
}

static struct json_object *pass_json(const struct pass_stats *p)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "pass", json_object_new_int(p->pass));
	json_object_object_add(o, "chunks_sent", json_object_new_int64(p->chunks_sent));
	json_object_object_add(o, "bytes_sent", json_object_new_int64(p->bytes_sent));
	json_object_object_add(o, "chunks_scanned", json_object_new_int64(p->chunks_scanned));
	json_object_object_add(o, "seconds", json_object_new_double(p->ended - p->started));
	return o;
}

static void run_cmd(const char *what, const char *cmd)
{
	int rc = system(cmd);

	if (rc != 0)
		die("%s (%s) failed: status %d", what, cmd, rc);
}

/* The token from a file (its first line), so it is not on the command line, where
 * every user of the source machine can read it in ps. */
static char *token_from_file(const char *path)
{
	static char buf[256];
	FILE *f = fopen(path, "r");

	if (f == NULL)
		die("--token-file %s: %s", path, strerror(errno));
	if (fgets(buf, sizeof(buf), f) == NULL)
		die("--token-file %s: empty", path);
	fclose(f);
	buf[strcspn(buf, "\r\n")] = '\0';
	return buf;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: kumo-p2v --url URL --token TOKEN --disk [NAME=]PATH... [options]\n"
		"  --url URL          the session's url (https://controller:port/api/v1/p2v/ID)\n"
		"  --token-file FILE  the session's ingest token, read from FILE (or\n"
		"                     $KUMO_P2V_TOKEN; --token TOKEN works but shows it in ps)\n"
		"  --disk [NAME=]PATH a source disk; by the session's disk name, else in order\n"
		"  --cacert FILE      the CA that signed the controller's certificate\n"
		"  --insecure         do not verify the controller's certificate (and allow\n"
		"                     an http:// url: token and disks then travel in clear)\n"
		"  --warm             passes while the machine runs, then freeze and a final one\n"
		"  --max-passes N     warm: passes before the freeze at most (default 8)\n"
		"  --small N          warm: freeze once a pass sends at most N chunks\n"
		"                     (default: 1%% of the chunks, at least 1)\n"
		"  --freeze-cmd CMD   warm: how to freeze the source (default: fsfreeze -f /)\n"
		"  --resume           continue the current pass after an interrupted run\n"
		"  --cutover          end the session: the controller creates the VM\n"
		"  --start            ... and starts it\n"
		"  --convert          ... after virt-v2v rewrote its disk for virtio\n"
		"  --poweroff         power the source off after the final pass\n"
		"  --poweroff-cmd CMD how (default: poweroff)\n"
		"  --json             progress as JSON lines on stderr, a JSON summary on "
		"stdout\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"url", required_argument, NULL, 'u'},
		{"token", required_argument, NULL, 't'},
		{"token-file", required_argument, NULL, 'T'},
		{"disk", required_argument, NULL, 'd'},
		{"cacert", required_argument, NULL, 'c'},
		{"insecure", no_argument, NULL, 'k'},
		{"warm", no_argument, NULL, 'w'},
		{"max-passes", required_argument, NULL, 'm'},
		{"small", required_argument, NULL, 's'},
		{"freeze-cmd", required_argument, NULL, 'f'},
		{"resume", no_argument, NULL, 'r'},
		{"cutover", no_argument, NULL, 'C'},
		{"start", no_argument, NULL, 'S'},
		{"convert", no_argument, NULL, 'V'},
		{"poweroff", no_argument, NULL, 'P'},
		{"poweroff-cmd", required_argument, NULL, 'p'},
		{"json", no_argument, NULL, 'j'},
		{"parallel", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct json_object *summary = json_object_new_object(), *passes = json_object_new_array();
	struct pass_stats p;
	double freeze_at = 0;
	int ch;

	/* A controller killed under a request must be a retry, not our death by SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);

	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'u':
			opt.url = optarg;
			break;
		case 't':
			opt.token = optarg;
			break;
		case 'T':
			opt.token = token_from_file(optarg);
			break;
		case 'd': {
			char *eq = strchr(optarg, '=');

			if (opt.ndisks == DISKS_MAX)
				die("at most %d disks", DISKS_MAX);
			opt.disk_name[opt.ndisks] =
				eq ? strndup(optarg, (size_t)(eq - optarg)) : NULL;
			opt.disk_path[opt.ndisks++] = eq ? eq + 1 : optarg;
			break;
		}
		case 'c':
			opt.cacert = optarg;
			break;
		case 'k':
			opt.insecure = true;
			break;
		case 'w':
			opt.warm = true;
			break;
		case 'm':
			opt.max_passes = atoi(optarg);
			break;
		case 's':
			opt.small = atol(optarg);
			break;
		case 'f':
			opt.freeze_cmd = optarg;
			break;
		case 'r':
			opt.resume = true;
			break;
		case 'C':
			opt.cutover = true;
			break;
		case 'S':
			opt.start = true;
			break;
		case 'V':
			opt.convert = true;
			break;
		case 'P':
			opt.poweroff = true;
			break;
		case 'p':
			opt.poweroff_cmd = optarg;
			break;
		case 'j':
			opt.json = true;
			break;
		case 'n':
			opt.parallel = atoi(optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (opt.token == NULL)
		opt.token = getenv("KUMO_P2V_TOKEN");
	if (opt.url == NULL || opt.token == NULL || opt.ndisks == 0) {
		usage(stderr);
		return 2;
	}
	if (!token_well_formed(opt.token))
		die("--token is not a Kumo token");
	if (opt.max_passes < 1 || opt.max_passes > 60)
		die("--max-passes must be 1..60");
	if (opt.parallel < 1 || opt.parallel > PARALLEL_MAX)
		die("--parallel must be 1..%d", PARALLEL_MAX);
	url_parse(opt.url);
	if (strcmp(scheme, "https") && !opt.insecure)
		die("--url uses %s: the ingest token and the disks would travel in clear; use "
		    "https (or --insecure to accept that)",
		    scheme);
	if (!strcmp(scheme, "https")) {
		tls_ctx = SSL_CTX_new(TLS_client_method());
		SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
		if (opt.insecure)
			SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
		else {
			SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
			if (opt.cacert
				    ? SSL_CTX_load_verify_locations(tls_ctx, opt.cacert, NULL) != 1
				    : SSL_CTX_set_default_verify_paths(tls_ctx) != 1)
				die("cannot load the CA certificates %s",
				    opt.cacert ? opt.cacert : "(system)");
		}
	}

	/* Pass 1 (or the interrupted pass, resumed). */
	pass_run(&p, opt.resume);
	json_object_array_add(passes, pass_json(&p));
	if (opt.warm) {
		int64_t chunks = 0;

		for (int i = 0; i < ndisks; i++)
			chunks += (disks[i].size + chunk_size - 1) / chunk_size;
		if (opt.small < 0)
			opt.small = chunks / 100 > 1 ? chunks / 100 : 1;
		/* Passes while the source runs, until one changes little. */
		for (int n = 1; n < opt.max_passes && p.chunks_sent > opt.small; n++) {
			pass_run(&p, false);
			json_object_array_add(passes, pass_json(&p));
		}
		/* The freeze point: what the final pass reads is what the VM gets. */
		freeze_at = now_s();
		run_cmd("freezing the source", opt.freeze_cmd ? opt.freeze_cmd : "fsfreeze -f /");
		if (!opt.json)
			fprintf(stderr, "kumo-p2v: source frozen; final pass\n");
		pass_run(&p, false);
		json_object_array_add(passes, pass_json(&p));
		json_object_object_add(summary, "final_pass_s",
				       json_object_new_double(now_s() - freeze_at));
	}
	json_object_object_add(summary, "passes", passes);
	if (opt.cutover) {
		_cleanup_free_ char *path = xasprintf("%s/actions/cutover", base_path);
		_cleanup_free_ char *body =
			xasprintf("{\"start\": %s, \"convert\": %s}", opt.start ? "true" : "false",
				  opt.convert ? "true" : "false");
		struct reply r = {0};
		struct json_object *o;
		struct kerr err;

		int lost = http_call("POST", path, "application/json", body, strlen(body), &r);

		/* A cutover whose answer the connection lost may have gone through: the
		 * session then says done. */
		if (r.status == 409 && lost) {
			struct reply g = {0};

			http_call("GET", base_path, "application/json", "", 0, &g);
			if (g.status == 200 && json_body_parse(g.body, g.len, &o, &err) == 0) {
				if (!strcmp(json_get_str(o, "state", ""), "done")) {
					free(r.body);
					r.status = 202;
					r.body = xstrdup("{\"state\": \"done\"}");
					r.len = strlen(r.body);
				}
				json_object_put(o);
			}
			free(g.body);
		}
		if (r.status != 202)
			die("cutover: HTTP %d: %s", r.status, r.body);
		if (json_body_parse(r.body, r.len, &o, &err) == 0)
			json_object_object_add(summary, "cutover", o);
		free(r.body);
		if (!opt.json && opt.convert)
			fprintf(stderr,
				"kumo-p2v: cutting over: virt-v2v converts the disk, then "
				"the VM is created; follow operation %s\n",
				json_get_str(json_object_object_get(summary, "cutover"), "id",
					     "?"));
		else if (!opt.json)
			fprintf(stderr, "kumo-p2v: cut over; the VM is being created\n");
	}
	if (freeze_at > 0)
		json_object_object_add(summary, "freeze_to_cutover_s",
				       json_object_new_double(now_s() - freeze_at));
	conn_close();
	if (opt.json)
		printf("%s\n", json_object_to_json_string_ext(summary, JSON_C_TO_STRING_PLAIN));
	json_object_put(summary);
	if (opt.poweroff)
		run_cmd("powering the source off",
			opt.poweroff_cmd ? opt.poweroff_cmd : "poweroff");
	return 0;
}
