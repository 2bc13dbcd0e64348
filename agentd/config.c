/*
 * config.c - kumo-agentd's options: one table drives parsing, defaults, --help and the
 * effective configuration that -n prints.
 */
#include "agentd.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "token.h"
#include "util.h"
#include "valid.h"

enum opt_kind {
	OPT_STRING,
	OPT_INT
};

struct config_opt {
	const char *name; /* long option, also the key -n prints */
	enum opt_kind kind;
	size_t offset;	 /* of the char * or int in struct agent_config */
	const char *def; /* NULL: no default, or one computed in defaults_fill() */
	const char *metavar;
	const char *help;
	bool secret;  /* -n prints whether it is set, never the value */
	int min, max; /* OPT_INT only */
};

#define AT(field) offsetof(struct agent_config, field)

static const struct config_opt options[] = {
	{"controller", OPT_STRING, AT(controller), NULL, "HOST:PORT",
	 "the controller's join address (needed until joined)", false, 0, 0},
	{"join-token", OPT_STRING, AT(join_token), NULL, "TOKEN",
	 "single-use join token (visible to ps; prefer --join-token-file)", true, 0, 0},
	{"join-token-file", OPT_STRING, AT(join_token_file), NULL, "FILE",
	 "read the join token from FILE", false, 0, 0},
	{"name", OPT_STRING, AT(name), NULL, "NAME", "host name (default: the short host name)",
	 false, 0, 0},
	{"listen", OPT_STRING, AT(listen), "0.0.0.0:7710", "ADDR:PORT",
	 "command socket address; ADDR is advertised (0.0.0.0: the address toward the controller)",
	 false, 0, 0},
	{"state-dir", OPT_STRING, AT(state_dir), "/var/lib/kumo-agent", "DIR",
	 "link.json and local state", false, 0, 0},
	{"run-dir", OPT_STRING, AT(run_dir), "/run/kumo-agent", "DIR",
	 "runtime files a VM's QEMU must reach (a live backup's NBD socket); each agent on a "
	 "machine its own, every directory above it searchable (o+x)",
	 false, 0, 0},
	{"shared-pool", OPT_STRING, AT(shared_pool), "/var/lib/kumo/shared", "DIR",
	 "storage every host sees", false, 0, 0},
	{"local-pool", OPT_STRING, AT(local_pool), NULL, "DIR",
	 "this host's storage (default: STATE_DIR/local)", false, 0, 0},
	{"heartbeat", OPT_INT, AT(heartbeat), NULL, "S",
	 "heartbeat interval in seconds (default: as the controller says)", false, 1,
	 AGENT_HEARTBEAT_MAX_S},
	{"log-size", OPT_INT, AT(log_size_mib), "10", "MIB",
	 "cap of one file of a container's or VM's console log, in MiB", false, 1, 4096},
	{"log-files", OPT_INT, AT(log_files), "3", "N",
	 "files a console log keeps (the current one and N-1 older ones)", false, 2,
	 LOGFILE_FILES_MAX},
	{"container-memory", OPT_INT, AT(ctr_memory_mib), "512", "MIB",
	 "memory limit of a container that sets none (0: none)", false, 0, 1024 * 1024},
	{"container-pids", OPT_INT, AT(ctr_pids), "1024", "N",
	 "pids limit of a container that sets none (0: none)", false, 0, 1000000},
	{"log-level", OPT_STRING, AT(log_level_name), "info", "LEVEL", "error, warn, info or debug",
	 false, 0, 0},
	{"accel", OPT_STRING, AT(accel), "auto", "MODE",
	 "VM acceleration: auto (KVM only where a probe guest really ran), kvm or tcg", false, 0,
	 0},
	{"qemu-user", OPT_STRING, AT(qemu_user), "kumo-qemu", "USER",
	 "the user QEMU drops to once it opened its files, when VMs share one (root: no drop - "
	 "weaker isolation, a guest escaping into QEMU is root; it lets post-copy use "
	 "userfaultfd where vm.unprivileged_userfaultfd is 0)",
	 false, 0, 0},
	{"qemu-uid-base", OPT_INT, AT(qemu_uid_base), "1300000", "UID",
	 "first of the uids each VM's QEMU gets one of (uid.c; 0: all use --qemu-user)", false, 0,
	 2000000000},
	{"container-uid-base", OPT_INT, AT(ctr_uid_base), "1400000", "UID",
	 "host uid of root in containers: each runs in a user namespace over 65536 uids from "
	 "here (0: none, root in a container is root)",
	 false, 0, 2000000000},
	{"qemu-uid-count", OPT_INT, AT(qemu_uid_count), "4096", "N",
	 "uids from --qemu-uid-base: VMs running at once at most", false, 1, 1000000},
};

#define OPT_KEY_BASE 256 /* getopt_long values of table rows: OPT_KEY_BASE + index */

static char **str_at(struct agent_config *cfg, const struct config_opt *o)
{
	return (char **)((char *)cfg + o->offset);
}

static const char *str_of(const struct agent_config *cfg, const struct config_opt *o)
{
	return *(char *const *)((const char *)cfg + o->offset);
}

static int *int_at(struct agent_config *cfg, const struct config_opt *o)
{
	return (int *)((char *)cfg + o->offset);
}

/*
 * Print the options and what they do to out.
 */
void config_usage(FILE *out)
{
	fprintf(out,
		"usage: %s [-n] --controller HOST:PORT [--join-token T | --join-token-file F]\n"
		"       [--name NAME] [--listen ADDR:PORT] [--state-dir DIR] [--shared-pool DIR]\n"
		"       [--local-pool DIR] [--heartbeat S] [--log-level L]\n"
		"       %s --kvm-probe\n\n",
		AGENT_PROG, AGENT_PROG);
	fprintf(out, "  -n                      check the configuration, print it and exit\n");
	for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
		const struct config_opt *o = &options[i];
		char left[64];

		snprintf(left, sizeof(left), "--%s %s", o->name, o->metavar);
		fprintf(out, "  %-23s %s", left, o->help);
		if (o->def)
			fprintf(out, " [%s]", o->def);
		fputc('\n', out);
	}
	fprintf(out, "  --kvm-probe             exit 0 only if a KVM guest really runs here\n"
		     "  --version               print the version\n");
}

static int int_parse(const char *s, const char *name, int lo, int hi, int *out, struct kerr *err)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return err_input(err, 400, name, "--%s must be an integer from %d to %d, not '%s'",
				 name, lo, hi, s);
	*out = (int)v;
	return 0;
}

/*
 * Parse argv into cfg (which the caller zeroed). Returns 0 to go on, 1 when --help or
 * --version was answered (exit 0), or -1 with err. Strings in cfg are owned by cfg;
 * release them with config_free().
 */
int config_parse(int argc, char **argv, struct agent_config *cfg, struct kerr *err)
{
	struct option longopts[ARRAY_SIZE(options) + 3];
	size_t n = 0;
	int c;

	for (size_t i = 0; i < ARRAY_SIZE(options); i++)
		longopts[n++] = (struct option){options[i].name, required_argument, NULL,
						OPT_KEY_BASE + (int)i};
	longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
	longopts[n++] = (struct option){"version", no_argument, NULL, 'V'};
	longopts[n] = (struct option){NULL, 0, NULL, 0};

	/* Integers take their defaults first: 0 may be a value given (no limit). */
	for (size_t i = 0; i < ARRAY_SIZE(options); i++)
		if (options[i].kind == OPT_INT && options[i].def)
			*int_at(cfg, &options[i]) = atoi(options[i].def);
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":nh", longopts, NULL)) != -1) {
		const struct config_opt *o;

		switch (c) {
		case 'n':
			cfg->check_only = true;
			continue;
		case 'h':
			config_usage(stdout);
			return 1;
		case 'V':
			printf("%s %s\n", AGENT_PROG, KUMO_VERSION);
			return 1;
		case ':':
			return err_input(err, 400, "", "option '%s' needs a value",
					 argv[optind - 1]);
		case '?':
			if (optopt && optopt < OPT_KEY_BASE)
				return err_input(err, 400, "", "unknown option '-%c'; see --help",
						 optopt);
			return err_input(err, 400, "", "unknown option '%s'; see --help",
					 argv[optind - 1]);
		}
		if (c < OPT_KEY_BASE || c >= OPT_KEY_BASE + (int)ARRAY_SIZE(options))
			return err_input(err, 400, "", "unexpected option; see --help");
		o = &options[c - OPT_KEY_BASE];
		if (o->kind == OPT_INT) {
			if (int_parse(optarg, o->name, o->min, o->max, int_at(cfg, o), err) < 0)
				return -1;
			continue;
		}
		free(*str_at(cfg, o));
		*str_at(cfg, o) = xstrdup(optarg);
	}
	if (optind < argc)
		return err_input(err, 400, "", "unexpected argument '%s'; see --help",
				 argv[optind]);
	return 0;
}

/* The short host name, lower-cased, as a default --name. */
static char *hostname_default(void)
{
	char buf[256];

	if (gethostname(buf, sizeof(buf) - 1) < 0)
		return xstrdup("");
	buf[sizeof(buf) - 1] = '\0';
	buf[strcspn(buf, ".")] = '\0';
	for (char *p = buf; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return xstrdup(buf);
}

static void defaults_fill(struct agent_config *cfg)
{
	for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
		const struct config_opt *o = &options[i];

		if (o->kind == OPT_STRING && o->def && *str_at(cfg, o) == NULL)
			*str_at(cfg, o) = xstrdup(o->def);
	}
	if (cfg->name == NULL)
		cfg->name = hostname_default();
	if (cfg->local_pool == NULL)
		cfg->local_pool = xasprintf("%s/local", cfg->state_dir);
}

/*
 * Split "HOST:PORT" at its last colon into host (hostlen bytes) and port 1-65535.
 * Returns 0 or -1 with err.
 */
int config_hostport_split(const char *s, char *host, size_t hostlen, int *port, struct kerr *err)
{
	const char *colon = strrchr(s, ':');
	size_t len;

	if (colon == NULL || colon == s)
		return err_set(err, 0, "'%s' is not HOST:PORT", s);
	len = (size_t)(colon - s);
	if (len >= hostlen)
		return err_set(err, 0, "the host in '%s' is too long", s);
	if (int_parse(colon + 1, "port", 1, 65535, port, NULL) < 0)
		return err_set(err, 0, "the port in '%s' must be 1-65535", s);
	memcpy(host, s, len);
	host[len] = '\0';
	return 0;
}

static int token_file_read(struct agent_config *cfg, struct kerr *err)
{
	_cleanup_free_ char *text = NULL;
	char *start, *end;
	int ret;

	ret = file_read_all(cfg->join_token_file, 4096, &text, NULL);
	if (ret < 0)
		return err_set(err, -ret, "--join-token-file: cannot read %s",
			       cfg->join_token_file);
	start = text + strspn(text, " \t\r\n");
	end = start + strcspn(start, " \t\r\n");
	*end = '\0';
	cfg->join_token = xstrdup(start);
	return 0;
}

/*
 * Fill defaults and check cfg as a whole: the values' shapes, the join token (read from
 * its file), and whether {state_dir}/link.json exists (then no join is needed, and the
 * token and controller are not required). Returns 0 or -1 with err.
 */
int config_check(struct agent_config *cfg, struct kerr *err)
{
	char host[AGENT_ADDR_MAX];
	struct in_addr in;
	int port;

	defaults_fill(cfg);
	if (strcmp(cfg->accel, "auto") && strcmp(cfg->accel, "kvm") && strcmp(cfg->accel, "tcg"))
		return err_set(err, 0, "--accel must be auto, kvm or tcg, not '%s'", cfg->accel);
	if (log_level_parse(cfg->log_level_name, &cfg->log_level) < 0)
		return err_input(err, 400, "log-level",
				 "--log-level must be error, warn, info or debug, not '%s'",
				 cfg->log_level_name);
	if (!name_valid(cfg->name))
		return err_input(
			err, 400, "name",
			"host name '%s' is not valid (1-63 of a-z, 0-9 and '-'); use --name",
			cfg->name);
	if (config_hostport_split(cfg->listen, host, sizeof(host), &port, err) < 0)
		return err_prefix(err, "--listen: ");
	/* nanomsg binds to an address literal, never a name it would have to resolve. */
	if (inet_pton(AF_INET, host, &in) != 1)
		return err_input(err, 400, "listen", "--listen: '%s' is not an IPv4 address", host);
	if (cfg->controller &&
	    config_hostport_split(cfg->controller, host, sizeof(host), &port, err) < 0)
		return err_prefix(err, "--controller: ");
	/* Fail closed: a guest escaping into QEMU should find an unprivileged user. */
	if (strcmp(cfg->qemu_user, "root") != 0 && getpwnam(cfg->qemu_user) == NULL)
		return err_input(err, 400, "qemu-user",
				 "--qemu-user: there is no user '%s' (deploy/install-deps.sh makes "
				 "kumo-qemu; --qemu-user root runs QEMU as root)",
				 cfg->qemu_user);
	if (cfg->state_dir[0] == '\0' || cfg->shared_pool[0] == '\0' || cfg->local_pool[0] == '\0')
		return err_input(err, 400, "state-dir", "directories must not be empty");
	/* QEMU is given paths under it. (Its length is checked where a socket's path is
	 * made: one too long there only makes a live backup copy the disk, saying why.) */
	if (cfg->run_dir[0] != '/')
		return err_input(err, 400, "run-dir", "--run-dir must be an absolute path");
	/* A disk's absolute path is sized from this bound (struct vm_disk). */
	if (strlen(cfg->shared_pool) > AGENT_POOL_DIR_MAX ||
	    strlen(cfg->local_pool) > AGENT_POOL_DIR_MAX)
		return err_input(err, 400, "shared-pool",
				 "pool directories must be at most %d characters",
				 AGENT_POOL_DIR_MAX);
	if (cfg->join_token && cfg->join_token_file)
		return err_input(err, 400, "join-token",
				 "give --join-token or --join-token-file, not both");
	if (cfg->join_token_file && token_file_read(cfg, err) < 0)
		return -1;

	if ((size_t)snprintf(cfg->link_path, sizeof(cfg->link_path), "%s/link.json",
			     cfg->state_dir) >= sizeof(cfg->link_path))
		return err_input(err, 400, "state-dir", "--state-dir is too long");
	cfg->linked = access(cfg->link_path, F_OK) == 0;
	if (cfg->linked)
		return 0;
	if (cfg->controller == NULL)
		return err_input(err, 400, "controller",
				 "not joined yet (no %s): --controller is required",
				 cfg->link_path);
	if (cfg->join_token == NULL)
		return err_input(err, 400, "join-token",
				 "not joined yet (no %s): --join-token or --join-token-file is "
				 "required",
				 cfg->link_path);
	if (!token_well_formed(cfg->join_token))
		return err_input(err, 400, "join-token",
				 "the join token is malformed (expected kumo_ and 43 characters)");
	return 0;
}

/*
 * The command address to advertise: tcp://ADDR:PORT from --listen, where an ADDR of
 * 0.0.0.0 becomes the local address the kernel would use toward the host named
 * toward (a name or address; resolved here, so call it at start-up only).
 * Returns 0 or -1 with err.
 */
int config_addr_advertise(const struct agent_config *cfg, const char *toward, char *out,
			  size_t outlen, struct kerr *err)
{
	char host[AGENT_ADDR_MAX], ip[INET_ADDRSTRLEN];
	struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *res = NULL;
	struct sockaddr_in local;
	socklen_t locallen = sizeof(local);
	_cleanup_close_ int fd = -1;
	int port, ret;

	if (config_hostport_split(cfg->listen, host, sizeof(host), &port, err) < 0)
		return -1;
	if (strcmp(host, "0.0.0.0") != 0) {
		snprintf(out, outlen, "tcp://%s:%d", host, port);
		return 0;
	}
	if (toward == NULL)
		return err_set(err, 0, "--listen 0.0.0.0 needs a controller address to pick one");
	ret = getaddrinfo(toward, "9", &hints, &res);
	if (ret != 0)
		return err_set(err, 0, "cannot resolve '%s': %s", toward, gai_strerror(ret));
	/* Connecting a UDP socket sends nothing; it only asks the kernel for a route. */
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) < 0 ||
	    getsockname(fd, (struct sockaddr *)&local, &locallen) < 0) {
		ret = errno;
		freeaddrinfo(res);
		return err_set(err, ret, "no route toward '%s' to advertise", toward);
	}
	freeaddrinfo(res);
	inet_ntop(AF_INET, &local.sin_addr, ip, sizeof(ip));
	snprintf(out, outlen, "tcp://%s:%d", ip, port);
	return 0;
}

/*
 * Print the effective configuration as "key = value" lines, secrets as (set)/(none).
 */
void config_print(const struct agent_config *cfg, FILE *out)
{
	for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
		const struct config_opt *o = &options[i];
		const char *s;

		if (o->kind == OPT_INT) {
			int v = *(const int *)((const char *)cfg + o->offset);

			if (v || o->def)
				fprintf(out, "%s = %d\n", o->name, v);
			else
				fprintf(out, "%s = (as the controller says)\n", o->name);
			continue;
		}
		s = str_of(cfg, o);
		if (o->secret)
			fprintf(out, "%s = %s\n", o->name, s ? "(set)" : "(none)");
		else
			fprintf(out, "%s = %s\n", o->name, s ? s : "");
	}
}

/*
 * Release the strings cfg owns.
 */
void config_free(struct agent_config *cfg)
{
	for (size_t i = 0; i < ARRAY_SIZE(options); i++) {
		if (options[i].kind == OPT_STRING) {
			free(*str_at(cfg, &options[i]));
			*str_at(cfg, &options[i]) = NULL;
		}
	}
}
