/*
 * main.c - kumo-agentd: options, start-up in a fixed order, the loop, and a clean stop.
 *
 * Start-up: options and config check (-n stops here) -> state directory -> link.json,
 * or a join that blocks until the controller answers -> the loop: link sockets,
 * signals, re-adoption of the VMs and containers still running, the KVM probe, the
 * heartbeat timer. `kumo-agentd --shim DIR` is another program in the same binary: the
 * process that keeps one container running (shim.c); so are `--kvm-probe` (kvmprobe.c)
 * and `--userns`, which makes a container's user namespace (uid.c).
 *
 * Stopping (SIGTERM, SIGINT) closes the agent's own handles and sockets only: guests
 * and containers outlive the agent, which finds them again when it starts.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util.h"

/*
 * Descriptors inherited from whoever started the agent must not reach QEMU, which
 * outlives the agent (a pipe it held would never see its end of file): mark them
 * close-on-exec before anything else is opened.
 */
static void inherited_fds_cloexec(void)
{
	if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
		return;
	/* Kernels before 5.11: one by one, as far as the usual limit. */
	for (int fd = 3; fd < 1024; fd++) {
		int flags = fcntl(fd, F_GETFD);

		if (flags >= 0)
			fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
	}
}

/*
 * QEMU and the shims are watched through pidfds (common/proc.c): a kernel without
 * pidfd_open(2) (before 5.3) could start none of them, so the agent does not start.
 */
static void pidfd_check(void)
{
	int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);

	if (fd < 0 && errno == ENOSYS)
		fatalx("this kernel has no pidfd_open(2): kumo-agentd needs Linux 5.3 or later");
	if (fd >= 0)
		close(fd);
}

static void agent_stop(struct agent *a)
{
	if (a->stopping)
		return;
	a->stopping = true;
	heartbeat_stop(a);
	lease_stop(a);
	net_stop(a);
	kvmprobe_stop(a);
	migrate_preps_close(a);
	inst_close_all(a);
	imagecheck_cache_free(a);
	disk_cmds_close(a);
	oci_cmds_close(a);
	link_close(a);
	work_lane_close(a->lane); /* once the writes on it are done */
	a->lane = NULL;
	uv_close((uv_handle_t *)&a->sigterm, NULL);
	uv_close((uv_handle_t *)&a->sigint, NULL);
}

static void signal_cb(uv_signal_t *handle, int signum)
{
	struct agent *a = handle->data;

	log_info("stopping on %s", strsignal(signum));
	agent_stop(a);
}

static void startup_probe_cb(struct agent *a, bool usable, void *data)
{
	/* Tell the controller at once rather than at the next beat. */
	heartbeat_kick(a);
}

/* The host part of a tcp://HOST:PORT address, to pick the address we advertise. */
static void url_host(const char *url, char *host, size_t hostlen)
{
	int port;

	if (strncmp(url, "tcp://", 6) == 0)
		url += 6;
	if (config_hostport_split(url, host, hostlen, &port, NULL) < 0)
		host[0] = '\0';
}

static void link_describe(const struct agent_config *cfg, const struct agent *a, FILE *out)
{
	if (cfg->linked)
		fprintf(out, "link = %s (joined as host %s, id %lld, cluster %s; no join)\n",
			cfg->link_path, a->link.host, (long long)a->link.host_id,
			a->link.cluster_id);
	else
		fprintf(out, "link = %s (absent: will join through %s)\n", cfg->link_path,
			cfg->controller);
	fprintf(out, "advertise = %s\n", a->addr);
}

/* Load link.json, or join and write it. Exits on a refusal. */
static int link_establish(const struct agent_config *cfg, struct agent *a, struct kerr *err)
{
	int ret;

	if (cfg->linked) {
		if (strcmp(a->link.host, cfg->name) != 0)
			log_warnx("link: joined as host '%s'; the name '%s' is ignored",
				  a->link.host, cfg->name);
		if (cfg->join_token)
			log_info("link: already joined (%s); the join token is ignored",
				 cfg->link_path);
		return 0;
	}
	ret = join_run(cfg, a->addr, &a->link, err);
	if (ret == -EACCES) {
		fprintf(stderr, "%s: join refused: %s\n", AGENT_PROG, err->msg);
		exit(1);
	}
	if (ret < 0)
		return -1;
	if (join_link_save(cfg->link_path, &a->link, err) < 0)
		return -1;
	log_info("link: joined cluster %s as host %s (id %lld); events to %s", a->link.cluster_id,
		 a->link.host, (long long)a->link.host_id, a->link.events);
	return 0;
}

static int loop_setup(struct agent *a, struct kerr *err)
{
	struct kerr probe_err;
	int ret;

	_cleanup_free_ char *ops_path = xasprintf("%s/ops", a->cfg->state_dir);

	/* Before any command is taken: the ones the previous run took are not run again.
	 * The ids are written on a lane of their own; link.c acks a command once its id
	 * is on disk. */
	a->lane = work_lane_new(a->loop);
	opcache_init(&a->ops, a->loop, link_ops_written, a);
	opcache_load(&a->ops, ops_path);
	if (link_open(a, err) < 0)
		return -1;
	uv_signal_init(a->loop, &a->sigterm);
	uv_signal_init(a->loop, &a->sigint);
	a->sigterm.data = a->sigint.data = a;
	ret = uv_signal_start(&a->sigterm, signal_cb, SIGTERM);
	if (ret == 0)
		ret = uv_signal_start(&a->sigint, signal_cb, SIGINT);
	if (ret < 0)
		return err_set(err, -ret, "cannot catch signals");
	/* HA: an agent away past its fence deadline kills its HA workloads before it
	 * adopts anything (lease.c); they may run elsewhere now. */
	lease_startup_fence(a);
	/* After link_open(): every VM and container found is reported to the controller. */
	inst_adopt_all(a);
	/* The networks as last asked for: what is missing is made again, stale removed. */
	if (net_start(a, err) < 0)
		return -1;
	if (kvmprobe_request(a, startup_probe_cb, NULL, &probe_err) < 0)
		log_warnx("kvm: %s; accel tcg", probe_err.msg);
	if (lease_start(a, err) < 0)
		return -1;
	return heartbeat_start(a, err);
}

int main(int argc, char **argv)
{
	static struct agent_config cfg;
	static struct agent agent;
	struct agent *a = &agent;
	char toward[AGENT_ADDR_MAX];
	size_t exelen = sizeof(a->exe);
	uv_loop_t loop;
	struct kerr err;
	int ret;

	if (argc == 2 && strcmp(argv[1], "--kvm-probe") == 0)
		return kvmprobe_child_main();
	if (argc == 3 && strcmp(argv[1], "--shim") == 0)
		return shim_main(argv[2]);
	if (argc >= 2 && argc <= 3 && strcmp(argv[1], "--userns") == 0)
		return uid_userns_child_main(argc == 3 && strcmp(argv[2], "net") == 0);
	inherited_fds_cloexec();
	pidfd_check();

	ret = config_parse(argc, argv, &cfg, &err);
	if (ret == 0)
		ret = config_check(&cfg, &err);
	if (ret != 0) {
		if (ret < 0)
			fprintf(stderr, "%s: %s\n", AGENT_PROG, err.msg);
		config_free(&cfg);
		return ret < 0 ? 1 : 0;
	}
	log_init(AGENT_PROG, cfg.log_level);
	facts_accel_config(cfg.accel);
	layers_userns_base_set(cfg.ctr_uid_base > 0 ? (unsigned)cfg.ctr_uid_base : 0);

	a->cfg = &cfg;
	a->push_sock = a->rep_sock = -1;
	/* Shims are this program run again: its path now, before anything can move it. */
	if (uv_exepath(a->exe, &exelen) < 0)
		snprintf(a->exe, sizeof(a->exe), "/proc/self/exe");
	a->started_us = now_us();
	if (cfg.linked && join_link_load(cfg.link_path, &a->link, &err) < 0) {
		fprintf(stderr, "%s: %s\n", AGENT_PROG, err.msg);
		return 1;
	}
	if (cfg.linked)
		url_host(a->link.events, toward, sizeof(toward));
	else
		url_host(cfg.controller, toward, sizeof(toward));
	if (config_addr_advertise(&cfg, toward, a->addr, sizeof(a->addr), &err) < 0) {
		fprintf(stderr, "%s: --listen: %s\n", AGENT_PROG, err.msg);
		return 1;
	}
	if (cfg.check_only) {
		config_print(&cfg, stdout);
		link_describe(&cfg, a, stdout);
		config_free(&cfg);
		return 0;
	}

	/* Writes to a controller that went away must fail, not kill the agent. */
	signal(SIGPIPE, SIG_IGN);
	/* The state directory holds the link key: owner only. */
	ret = mkdir_p(cfg.state_dir, 0700);
	if (ret < 0)
		fatalx("cannot create %s: %s", cfg.state_dir, strerror(-ret));
	ret = mkdir_p(cfg.local_pool, 0700);
	if (ret < 0)
		log_warnx("pool local: cannot create %s: %s", cfg.local_pool, strerror(-ret));
	facts_pools_warn(&cfg);
	if (link_establish(&cfg, a, &err) < 0)
		fatalx("%s", err.msg);
	a->heartbeat_s = cfg.heartbeat ? cfg.heartbeat : a->link.heartbeat_interval;
	if (a->heartbeat_s < 1)
		a->heartbeat_s = 1;

	ret = uv_loop_init(&loop);
	if (ret < 0)
		fatalx("cannot create the event loop: %s", uv_strerror(ret));
	a->loop = &loop;
	if (loop_setup(a, &err) < 0)
		fatalx("%s", err.msg);
	log_info("host %s: agent %s running (pid %d)", a->link.host, KUMO_VERSION, (int)getpid());

	uv_run(&loop, UV_RUN_DEFAULT);

	link_sockets_release(a);
	ret = uv_loop_close(&loop);
	if (ret < 0)
		log_debug("event loop closed with handles open: %s", uv_strerror(ret));
	explicit_bzero(a->link.key, sizeof(a->link.key));
	config_free(&cfg);
	log_info("stopped");
	return 0;
}
