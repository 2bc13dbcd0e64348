/*
 * migrate.c - live migration of a VM between two hosts: the agents' half.
 *
 * The controller drives a migration (controllerd/migrate.c) as instance commands, one
 * per host, each an ordinary operation:
 *   migrate-in   on the target: register the VM from the SPEC the command carries,
 *                make its run directory (and cloud-init seed: the devices must match),
 *                start QEMU with -incoming defer, then listen (QMP migrate-incoming)
 *                on this host's underlay address, on a port picked for this migration
 *                only. Succeeds with {"uri": "tcp:A:P"}; QEMU waits there, paused.
 *                Local disks: made empty first, QEMU held (-S), served over NBD
 *                (migrate_disk.c); the result adds {"nbd_uri"}.
 *   migrate-out  on the source: send the VM's state to args.uri (QMP migrate), report
 *                every second (op-progress with a "migration" object) and, once QEMU
 *                says completed, quit the source QEMU, remove its taps, run
 *                directory and local disks (shared ones are the target's now) and
 *                forget the VM. Local disks are mirrored to args.nbd_uri first
 *                (phase mirror-disks) and the mirrors end before the switchover
 *                report (migrate_disk.c). Succeeds with downtime_ms, total_ms, strategy and the
 *                last statistics.
 * The stream is TLS: each command carries this migration's certificates (args.tls,
 * issued by the controller for this migration alone), loaded into QEMU as a
 * tls-creds-x509 object that verifies the peer (server on the target, client on the
 * source, which checks the target's underlay address against its certificate).
 * Cancel is a query ({"what": "migrate-cancel", "name": N}): the VM is busy with
 * migrate-out, so a command would be refused. It answers at once; QMP migrate_cancel
 * then ends migrate-out as failed ("cancelled") and the VM runs on here. The target
 * is cleaned by the controller with a forced delete that keeps the shared disks (the
 * local ones it made for the migration go: vmaction.c).
 *
 * TCG: pre-copy crashed guest kernels on the target (issue 13: 7 of 15 runs of a busy
 * guest; then an idle guest ticking once a second, copied slowly at 16 Mbit/s, broke
 * with a general protection fault), pausing first was clean every time. So a TCG VM
 * is always paused before it migrates ("pause-then-migrate"; the controller resumes
 * it on the target) - unless the target may post-copy: then post-copy starts at once,
 * which never relies on TCG's dirty tracking. KVM guests are pre-copied with
 * auto-converge, and switch to post-copy where allowed when they do not converge
 * (migrate_ladder.c). Post-copy needs userfaultfd in the target QEMU (the host fact
 * "postcopy"; docs/architecture.md); args.postcopy says whether the controller allows
 * it. If post-copy breaks (the target's QEMU or the stream dies) the VM is lost:
 * this half is removed and migrate-out fails with result.lost.
 *
 * Faults: each end keeps its part in {run dir}/migration.json ({"role": "out"|"in",
 * "op", "paused"}), written before the step it guards, so an agent killed mid-way
 * finds it when it adopts the VM again (migrate_adopted()):
 *   out  the source QEMU goes on migrating without us: poll query-migrate until it
 *        ends; completed -> the guest is the target's, remove it here as migrate-out
 *        would have; failed or none -> it stays, running again if we paused it.
 *   in   a QEMU still "inmigrate" lost its agent mid-copy: nobody can vouch for the
 *        stream any more, so it is stopped and removed (the source's copy fails and
 *        its guest runs on there); one that runs already is the guest, kept.
 * The file goes when the role is over: the source's with its run directory or on
 * failure, the target's once its guest runs (migrate_in_running()). The controller
 * asks both ends with {"what": "migrate-state"} to settle a migration whose agent or
 * controller restarted (controllerd/migrate.c).
 */
#include "agentd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "json.h"
#include "migrate.h"
#include "util.h"

static struct outgoing *outgoing_list;

static int uri_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);

	if (strncmp(s, "tcp:", 4) != 0 || strlen(s) > 64 ||
	    strspn(s + 4, "0123456789.:") != strlen(s) - 4)
		return err_input(err, 400, field, "field '%s' must be tcp:ADDR:PORT", field);
	return 0;
}

static int positive_check(struct json_object *val, const char *field, struct kerr *err)
{
	int64_t v = json_object_get_int64(val);

	if (v < 1 || v > 1000000)
		return err_input(err, 400, field, "field '%s' must be 1..1000000", field);
	return 0;
}

static int pem_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);

	if (strncmp(s, "-----BEGIN ", 11) != 0 || strlen(s) > 16384)
		return err_input(err, 400, field, "field '%s' must be one PEM block", field);
	return 0;
}

static int ip_check(struct json_object *val, const char *field, struct kerr *err)
{
	struct in_addr a;

	if (inet_pton(AF_INET, json_object_get_string(val), &a) != 1)
		return err_input(err, 400, field, "field '%s' must be an IPv4 address", field);
	return 0;
}

static const struct json_field tls_fields[] = {
	{"ca", JK_STRING, true, pem_check},
	{"cert", JK_STRING, true, pem_check},
	{"key", JK_STRING, true, pem_check},
	{"hostname", JK_STRING, false, ip_check},
	{NULL, 0, false, NULL},
};

static int tls_check(struct json_object *val, const char *field, struct kerr *err)
{
	if (json_fields_check(val, tls_fields, err) < 0)
		return err_prefix(err, "tls: ");
	return 0;
}

static int postcopy_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);

	if (strcmp(s, "never") && strcmp(s, "auto") && strcmp(s, "always"))
		return err_input(err, 400, field, "field '%s' must be never, auto or always",
				 field);
	return 0;
}

static int hex_id_check(struct json_object *val, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(val);
	size_t n = strlen(s);

	if (n == 0 || n > LINK_OP_ID_MAX || strspn(s, "0123456789abcdef") != n)
		return err_input(err, 400, field, "field '%s' must be an operation id", field);
	return 0;
}

/* The controller's certificates for this migration: TLS is not optional. postcopy:
 * the source may switch to post-copy, so this QEMU needs userfaultfd. */
const struct json_field migrate_in_args[] = {
	{"tls", JK_OBJECT, true, tls_check},
	{"postcopy", JK_BOOL, false, NULL},
	{NULL, 0, false, NULL},
};

const struct json_field migrate_out_args[] = {
	{"uri", JK_STRING, true, uri_check},
	{"nbd_uri", JK_STRING, false, uri_check},
	{"tls", JK_OBJECT, true, tls_check},
	{"downtime_ms", JK_INT, false, positive_check},
	{"bandwidth_mbps", JK_INT, false, positive_check},
	{"postcopy", JK_STRING, false, postcopy_check},
	/* The parent migration's id: its migrate-prepare, if one came (below). */
	{"migration", JK_STRING, false, hex_id_check},
	{NULL, 0, false, NULL},
};

/* ---- timings ------------------------------------------------------------------------ */

/*
 * Mark step name of a migration command in timings (an object, borrowed): the ms from
 * the command's arrival (since_ms) to now. Both ends send theirs with their results, and
 * the controller shows them in the parent operation's result.timings, so one run says
 * where the time went (bench/migrate.sh prints them).
 */
static void timing_mark(struct json_object *timings, const char *name, int64_t since_ms)
{
	json_object_object_add(timings, name, json_object_new_int64(now_ms() - since_ms));
}

/* The target's marks: op->result.timings, made with the result in migrate_in(). */
static void in_mark(struct inst_op *op, const char *name)
{
	struct json_object *t = json_object_object_get(op->result, "timings");

	if (t)
		timing_mark(t, name, op->started_ms);
}

/* ---- TLS ---------------------------------------------------------------------------- */

/*
 * The target's Diffie-Hellman group: RFC 7919's ffdhe2048 (openssl genpkey -genparam
 * -algorithm DH -pkeyopt group:ffdhe2048), public and standard. Without a dh-params.pem
 * a server tls-creds-x509 makes QEMU generate 2048-bit parameters as it loads them
 * (gnutls_dh_params_generate2()): measured 0.4-1.3 s here, on the target's critical
 * path before every migration. A named group is also what TLS 1.3 would pick anyway.
 */
static const char dh_params_pem[] =
	"-----BEGIN DH PARAMETERS-----\n"
	"MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n"
	"+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a\n"
	"87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7\n"
	"YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi\n"
	"7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD\n"
	"ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==\n"
	"-----END DH PARAMETERS-----\n";

/* A tls-creds-x509 object being loaded into a QEMU: its files go once QEMU read them. */
struct creds_load {
	char dir[64];
	qmp_reply_cb cb;
	void *data;
};

static void creds_files_remove(const char *dir)
{
	static const char *const names[] = {"ca-cert.pem",
					    "server-cert.pem",
					    "server-key.pem",
					    "client-cert.pem",
					    "client-key.pem",
					    "dh-params.pem",
					    NULL};
	char path[PATH_MAX];

	for (size_t k = 0; names[k]; k++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[k]);
		unlink(path);
	}
	rmdir(dir);
}

static void creds_loaded_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct creds_load *c = data;

	/* QEMU holds the credentials in memory now (or refused them). */
	creds_files_remove(c->dir);
	c->cb(q, ret, error, c->data);
	free(c);
}

/*
 * Write this migration's certificates (tls: {ca, cert, key}) for endpoint "server"
 * or "client" to a directory (its path in dir, of len bytes), files named as QEMU's
 * tls-creds-x509 wants them. on_cmdline: for a QEMU about to start, which reads its
 * -object options as root before it drops to its uid (-runas): the fixed directory
 * MIGRATE_CREDS_DIR in the VM's directory, root's alone (0700, files 0600), so no
 * other QEMU uid can read the key, and an agent that dies before QEMU read them
 * leaves them where the next one sweeps them (migrate_creds_sweep()). Else for a
 * running QEMU (object-add), which reads them after it dropped root: a fresh
 * directory under /tmp given to its uid. Returns 0, or -1 with err and nothing left
 * behind; the caller removes them (creds_files_remove()) once QEMU read them.
 */
static int creds_write(struct vm *vm, struct json_object *tls, const char *endpoint,
		       bool on_cmdline, char *dir, size_t len, struct kerr *err)
{
	const char *user = vm->inst.agent->cfg->qemu_user;
	struct passwd *pw = on_cmdline || !strcmp(user, "root") ? NULL : getpwnam(user);
	/* A QEMU with its own uid (uid.c; its gid the same number) reads them as that. */
	uid_t own = on_cmdline ? 0 : uid_vm_read(vm->inst.dir);
	uid_t uid = own ? own : pw ? pw->pw_uid : 0;
	gid_t gid = own ? (gid_t)own : pw ? pw->pw_gid : 0;
	bool give = own || pw;
	const char *what[3][2] = {{"ca-cert", "ca"}, {"cert", "cert"}, {"key", "key"}};
	/* A server also gets its DH group (dh_params_pem): else QEMU makes one. */
	int files = strcmp(endpoint, "server") == 0 ? 4 : 3;
	char path[PATH_MAX];
	int ret;

	if (on_cmdline) {
		if ((size_t)snprintf(dir, len, "%s/" MIGRATE_CREDS_DIR, vm->inst.dir) >= len) {
			dir[0] = '\0';
			return err_set(err, ENAMETOOLONG, "the VM's directory name is too long");
		}
		creds_files_remove(dir); /* a cancelled migration's */
		if (mkdir(dir, 0700) < 0) {
			dir[0] = '\0';
			return err_set(err, errno,
				       "cannot make a directory for the TLS certificates");
		}
	} else {
		snprintf(dir, len, "/tmp/kumo-migtls-XXXXXX");
		if (mkdtemp(dir) == NULL) {
			dir[0] = '\0';
			return err_set(err, errno,
				       "cannot make a directory for the TLS certificates");
		}
	}
	for (int k = 0; k < files; k++) {
		const char *text = k == 3 ? dh_params_pem : json_get_str(tls, what[k][1], "");

		if (k == 0)
			snprintf(path, sizeof(path), "%s/ca-cert.pem", dir);
		else if (k == 3)
			snprintf(path, sizeof(path), "%s/dh-params.pem", dir);
		else
			snprintf(path, sizeof(path), "%s/%s-%s.pem", dir, endpoint, what[k][0]);
		/* Not synced: QEMU reads them at once and they go right after; a sync
		 * would wait for the disk twice per file on the loop, and write the
		 * private key to disk blocks that outlive the unlink. */
		ret = file_write_replace(path, text, strlen(text), 0600);
		if (ret == 0 && give && chown(path, uid, gid) < 0)
			ret = -errno;
		if (ret < 0) {
			creds_files_remove(dir);
			dir[0] = '\0';
			return err_set(err, -ret, "cannot write %s", path);
		}
	}
	if (give && chown(dir, uid, gid) < 0) {
		creds_files_remove(dir);
		dir[0] = '\0';
		return err_set(err, errno, "cannot give the TLS certificates to %s", user);
	}
	return 0;
}

void migrate_creds_sweep(const char *inst_dir)
{
	char dir[PATH_MAX];

	if ((size_t)snprintf(dir, sizeof(dir), "%s/" MIGRATE_CREDS_DIR, inst_dir) < sizeof(dir))
		creds_files_remove(dir);
}

/*
 * Load this migration's certificates (tls: {ca, cert, key}) into vm's running QEMU as
 * tls-creds-x509 object id for endpoint "server" or "client", peers verified
 * (object-add; the files go as soon as QEMU answered). cb as for vm_qmp(). Returns
 * 0, or -1 with err.
 */
static int creds_load(struct vm *vm, struct json_object *tls, const char *endpoint, const char *id,
		      qmp_reply_cb cb, void *data, struct kerr *err)
{
	struct creds_load *c = xcalloc(1, sizeof(*c));
	struct json_object *args;

	if (creds_write(vm, tls, endpoint, false, c->dir, sizeof(c->dir), err) < 0) {
		free(c);
		return -1;
	}
	c->cb = cb;
	c->data = data;
	args = json_object_new_object();
	json_object_object_add(args, "qom-type", json_object_new_string("tls-creds-x509"));
	json_object_object_add(args, "id", json_object_new_string(id));
	json_object_object_add(args, "dir", json_object_new_string(c->dir));
	json_object_object_add(args, "endpoint", json_object_new_string(endpoint));
	json_object_object_add(args, "verify-peer", json_object_new_boolean(true));
	if (vm_qmp(vm, "object-add", args, MIGRATE_QMP_TIMEOUT_MS, creds_loaded_cb, c, err) < 0) {
		creds_files_remove(c->dir);
		free(c);
		return -1;
	}
	return 0;
}

/* The target's credentials on its QEMU's command line (qemuargs.c) were read, or that
 * QEMU never started: their files go. */
static void in_creds_remove(struct vm *vm)
{
	if (vm->vm_incoming_tls[0])
		creds_files_remove(vm->vm_incoming_tls);
	vm->vm_incoming_tls[0] = vm->vm_incoming_tls_id[0] = '\0';
}

/* The QOM id of op's credentials: new for each migration (a cancelled one's stays). */
void migrate_creds_id(const struct inst_op *op, char *out, size_t len)
{
	snprintf(out, len, "kumo-tls-%.32s", op->op);
}

/* ---- the state file ---------------------------------------------------------------------- */

#define MIGRATION_FILE "migration.json"

/* Record vm's part in migration op (role "out" or "in"); paused: we stopped the guest. */
static void state_write(struct vm *vm, const char *role, const char *op, bool paused)
{
	_cleanup_free_ char *path = xasprintf("%s/" MIGRATION_FILE, vm->inst.dir);
	struct json_object *o = json_object_new_object();
	const char *text;
	int ret;

	json_object_object_add(o, "role", json_object_new_string(role));
	json_object_object_add(o, "op", json_object_new_string(op));
	json_object_object_add(o, "paused", json_object_new_boolean(paused));
	text = json_text(o);
	/*
	 * Written (renamed into place) before the step it guards starts, but not synced,
	 * as job.c's job.json: it has to outlive the agent's process (a killed agent's
	 * successor reads it from the page cache), not the machine - after a power cut
	 * there is no QEMU left whose migration it could settle. A sync was two waits on
	 * the disk on the loop, on the critical path, twice on a paused source.
	 */
	ret = file_write_replace(path, text, strlen(text), 0600);
	if (ret < 0)
		log_warnx("vm %s: cannot write %s: %s", vm->inst.name, path, strerror(-ret));
	json_object_put(o);
}

static void state_remove(struct vm *vm)
{
	_cleanup_free_ char *path = xasprintf("%s/" MIGRATION_FILE, vm->inst.dir);

	unlink(path);
}

/* vm's migration.json, or NULL when it has none (a new reference). */
static struct json_object *state_read(struct vm *vm)
{
	_cleanup_free_ char *path = xasprintf("%s/" MIGRATION_FILE, vm->inst.dir);
	_cleanup_free_ char *text = NULL;

	if (file_read_all(path, 4096, &text, NULL) < 0)
		return NULL;
	return json_tokener_parse(text);
}

/* The target's guest runs (vm_state_set()): its migration is over here. */
void migrate_in_running(struct vm *vm)
{
	struct json_object *st;

	if (!vm->vm_migrating_in)
		return;
	vm->vm_migrating_in = false;
	vm->vm_in_loaded = false;
	st = state_read(vm);
	if (st && !strcmp(json_get_str(st, "role", ""), "in"))
		state_remove(vm);
	json_object_put(st);
}

/* ---- migrate-in ------------------------------------------------------------------------ */

/* A free TCP port on addr: bound and closed again, for QEMU to bind at once. */
static int port_pick(const char *addr, int *port, struct kerr *err)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	_cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return err_set(err, errno, "cannot make a socket");
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return err_set(err, 0, "this host's address %s is not IPv4", addr);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		return err_set(err, errno, "cannot find a free port on %s", addr);
	*port = ntohs(sa.sin_port);
	return 0;
}

/* Fail migrate-in: its QEMU goes first, then instance_op_fail() removes the rest. */
static void in_stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct inst_op *op = data;
	const char *why = json_get_str(op->result, "why", "migrate-in failed");

	if (instance_op_gone(op))
		return;
	instance_op_fail(op, "%s", why);
}

void migrate_in_fail(struct inst_op *op, const char *why)
{
	if (op->vm && vm_alive(op->vm)) {
		json_object_object_add(op->result, "why", json_object_new_string(why));
		vm_force_stop(op->vm, in_stopped_cb, op);
		return;
	}
	instance_op_fail(op, "%s", why);
}

static void in_ready(struct inst_op *op);

static void incoming_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (error) {
		char why[300];

		snprintf(why, sizeof(why), "migrate-incoming: %s", error);
		migrate_in_fail(op, why);
		return;
	}
	in_mark(op, "listening_ms");
	/* Not ready before spec.json is durable: in_synced_cb() goes on. */
	if (op->vm->vm_spec_sync.state > 0) {
		op->vm->vm_spec_sync.waiter = op;
		return;
	}
	in_ready(op);
}

/* The target listens and its spec.json's fsyncs ended: migrate-in is done. */
static void in_ready(struct inst_op *op)
{
	struct vm *vm = op->vm;
	char why[300];

	if (vm->vm_spec_sync.state < 0) {
		snprintf(why, sizeof(why), "cannot sync %s/spec.json: %s", vm->inst.dir,
			 strerror(-vm->vm_spec_sync.state));
		migrate_in_fail(op, why);
		return;
	}
	if (vm->vm_spec_sync.ended_ms && json_object_object_get(op->result, "timings"))
		json_object_object_add(
			json_object_object_get(op->result, "timings"), "spec_synced_ms",
			json_object_new_int64(vm->vm_spec_sync.ended_ms - op->started_ms));
	/* Ready: from here a failure is the controller's to clean up (a delete). */
	op->registered = false;
	json_object_object_del(op->result, "why");
	log_info("vm %s: waiting for its migration on %s", vm->inst.name,
		 json_get_str(op->result, "uri", ""));
	instance_op_succeed(op);
}

void migrate_incoming_send(struct inst_op *op)
{
	struct json_object *args = json_object_new_object();
	struct kerr err;

	json_object_object_add(args, "uri",
			       json_object_new_string(json_get_str(op->result, "uri", "")));
	if (vm_qmp(op->vm, "migrate-incoming", args, MIGRATE_QMP_TIMEOUT_MS, incoming_cb, op,
		   &err) < 0)
		migrate_in_fail(op, err.msg);
}

/*
 * The target's QEMU is set up to take the stream: its TLS credentials are the
 * migration's parameter tls-creds from its command line (qemuargs.c: QEMU does not
 * start when that cannot be set), so it listens now, with TLS and nothing else.
 */
static void in_listen(struct inst_op *op)
{
	if (migrate_disks_local(op->vm, NULL)) {
		migrate_nbd_start(op);
		return;
	}
	migrate_incoming_send(op);
}

static void in_caps_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct inst_op *op = data;
	char why[300];

	if (instance_op_gone(op))
		return;
	if (error) {
		/* QEMU tried userfaultfd(2) here: a host without the grant says so. */
		snprintf(why, sizeof(why), "post-copy: %s", error);
		migrate_in_fail(op, why);
		return;
	}
	in_listen(op);
}

/* A list for migrate-set-capabilities: {capability, state} of each name in caps. */
static struct json_object *caps_args(const char *const *caps, const bool *states)
{
	struct json_object *args = json_object_new_object(), *list = json_object_new_array();

	for (size_t k = 0; caps[k]; k++) {
		struct json_object *c = json_object_new_object();

		json_object_object_add(c, "capability", json_object_new_string(caps[k]));
		json_object_object_add(c, "state", json_object_new_boolean(states[k]));
		json_object_array_add(list, c);
	}
	json_object_object_add(args, "capabilities", list);
	return args;
}

/* The target's QEMU holds its credentials (loaded from its command line). */
static void in_creds_ready(struct inst_op *op)
{
	static const char *const caps[] = {"postcopy-ram", NULL};
	static const bool on[] = {true};
	struct kerr err;

	in_mark(op, "creds_loaded_ms");
	if (!json_get_bool(op->args, "postcopy", false)) {
		in_listen(op);
		return;
	}
	/* Both ends enable post-copy before the stream starts; here QEMU checks that it
	 * may use userfaultfd (it needs the host's grant: docs/architecture.md). */
	if (vm_qmp(op->vm, "migrate-set-capabilities", caps_args(caps, on), MIGRATE_QMP_TIMEOUT_MS,
		   in_caps_cb, op, &err) < 0)
		migrate_in_fail(op, err.msg);
}

static void in_started_cb(struct inst *inst, const char *error, void *data)
{
	struct vm *vm = (struct vm *)inst;
	struct inst_op *op = data;
	char host[AGENT_ADDR_MAX], uri[96];
	struct kerr err;
	int port = 0, cport;

	/* QEMU read them as it started (or never will: it failed). */
	in_creds_remove(vm);
	if (instance_op_gone(op))
		return;
	vm->vm_incoming = false;
	if (error) {
		migrate_in_fail(op, error);
		return;
	}
	/* The disks and images were checked before QEMU was spawned (in_spawn()). */
	if (json_object_object_get(op->result, "timings"))
		json_object_object_add(
			json_object_object_get(op->result, "timings"), "qemu_spawned_ms",
			json_object_new_int64(vm->inst.started_at_ms - op->started_ms));
	in_mark(op, "qemu_ready_ms");
	/* The underlay address the controller reaches this agent at (tcp://A:P). */
	if (config_hostport_split(op->agent->addr + strlen("tcp://"), host, sizeof(host), &cport,
				  &err) < 0 ||
	    port_pick(host, &port, &err) < 0) {
		migrate_in_fail(op, err.msg);
		return;
	}
	snprintf(uri, sizeof(uri), "tcp:%s:%d", host, port);
	json_object_object_add(op->result, "uri", json_object_new_string(uri));
	if (migrate_disks_local(vm, NULL)) {
		int nport = port;

		/* A port of its own for the disks, not the memory stream's. */
		for (int k = 0; k < 8 && nport == port; k++)
			if (port_pick(host, &nport, &err) < 0) {
				migrate_in_fail(op, err.msg);
				return;
			}
		snprintf(uri, sizeof(uri), "tcp:%s:%d", host, nport);
		json_object_object_add(op->result, "nbd_uri", json_object_new_string(uri));
	}
	in_creds_ready(op);
}

/*
 * spec.json's fsyncs, on the agent's lane (work_file_put()) while QEMU starts. The
 * job holds a reference on the VM (inst.open_handles): a migrate-in that failed in
 * the meantime removed the VM, and its done() then only lets go of it.
 */
struct in_sync {
	struct work_put put; /* first: its done() is in_synced_cb() */
	struct vm *vm;
};

static void in_synced_cb(struct work *w)
{
	struct in_sync *s = (struct in_sync *)w;
	struct vm *vm = s->vm;
	struct inst_op *op = vm->vm_spec_sync.waiter;

	vm->vm_spec_sync.waiter = NULL;
	if (!vm->inst.removing) {
		if (w->ret < 0)
			log_warnx("vm %s: %s", vm->inst.name, w->err.msg);
		vm->vm_spec_sync.state = w->ret < 0 ? -(w->err.code ? w->err.code : EIO) : 0;
		vm->vm_spec_sync.ended_ms = now_ms();
	}
	free(s);
	/* A waiting migrate-in is parked on this step alone: nothing else frees it. An
	 * agent that stops ends it (instance_op_gone()); a VM removed under it fails it.
	 * Both while this step still holds the VM. */
	if (op && !instance_op_gone(op)) {
		if (vm->inst.removing)
			instance_op_fail(op, "the VM was removed while its spec.json was synced");
		else
			in_ready(op);
	}
	inst_unref(&vm->inst);
}

/*
 * The steps before the target's QEMU starts. spec.json is put in place whole on the
 * loop (file_write_replace(): whole or absent, and from then on an agent restarted
 * after a kill finds this VM and its migration.json, and drops a QEMU that was still
 * waiting for its stream: migrate_adopted()); its fsyncs run beside QEMU's start, and
 * migrate-in answers only once they ended well (in_ready()). A power cut before that
 * ends QEMU too: the source's migration fails, and this host's leftover (a spec.json
 * that may be empty, migration.json "in") is an interrupted incoming VM, not one the
 * controller was ever told it had. For a VM whose disks all exist already (shared pool:
 * none is made here), the check of its disks and images (imagecheck.c: their headers
 * read on the pool) runs beside the loop's own steps (the TLS credentials' files);
 * QEMU is spawned once the check passed (in_spawn()). Local disks are made for the
 * migration, so vm_start() checks them after they exist, as before.
 */
struct in_prep {
	struct inst_op *op;  /* untouched until the check ended */
	bool checked;	     /* the disks are checked here (not by vm_start()) */
	char creds_why[256]; /* the credentials' failure, or "" */
};

static void in_spawn(struct in_prep *p, const char *check_why)
{
	struct inst_op *op = p->op;
	bool checked = p->checked;
	struct kerr err;
	int ret;

	if (instance_op_gone(op)) {
		free(p);
		return;
	}
	if (p->creds_why[0] || check_why) {
		/* As vm_start()'s own check would have failed it (in_started_cb()). */
		in_creds_remove(op->vm);
		migrate_in_fail(op, p->creds_why[0] ? p->creds_why : check_why);
		free(p);
		return;
	}
	free(p);
	/* QEMU's command line gets -incoming defer (qemuargs.c). */
	op->vm->vm_incoming = true;
	op->vm->vm_incoming_held = migrate_disks_local(op->vm, NULL) > 0;
	migrate_creds_id(op, op->vm->vm_incoming_tls_id, sizeof(op->vm->vm_incoming_tls_id));
	ret = checked ? vm_start_checked(op->vm, in_started_cb, op, &err)
		      : vm_start(op->vm, NULL, in_started_cb, op, &err);
	if (ret < 0) {
		in_creds_remove(op->vm);
		op->vm->vm_incoming = false;
		migrate_in_fail(op, err.msg);
		return;
	}
	/* After the spawn: the message's seal and send are not on QEMU's path. */
	instance_op_progress(op, 50, "prepare-target");
}

static void in_checked_cb(struct agent *a, const char *error, void *data)
{
	struct in_prep *p = data;

	(void)a;
	in_mark(p->op, "disks_checked_ms");
	in_spawn(p, error);
}

static void in_spec_write(struct inst_op *op)
{
	struct vm *vm = op->vm;
	_cleanup_free_ char *path = xasprintf("%s/spec.json", vm->inst.dir);
	const char *text = json_text(op->spec);
	struct in_prep *p;
	struct in_sync *s;
	struct kerr err;
	int ret;

	/* Before spec.json: an agent restarted from here on knows what this VM is. */
	state_write(vm, "in", op->op, false);
	vm->vm_migrating_in = true;

	s = xcalloc(1, sizeof(*s));
	s->put.w.done = in_synced_cb;
	s->vm = vm;
	ret = work_file_put(op->agent->lane, &s->put, path, text, strlen(text), 0600);
	if (ret < 0) {
		free(s);
		instance_op_fail(op, "cannot write %s: %s", path, strerror(-ret));
		return;
	}
	vm->inst.open_handles++; /* in_synced_cb() lets go */
	vm->vm_spec_sync.state = 1;
	vm->vm_spec_sync.ended_ms = 0;
	vm->vm_spec_sync.waiter = NULL;
	vm->inst.created = true;
	in_mark(op, "spec_written_ms");

	p = xcalloc(1, sizeof(*p));
	p->op = op;
	p->checked = migrate_disks_local(vm, NULL) == 0;
	/* The server credentials go on QEMU's command line (qemuargs.c), as the QEMU
	 * starts: no object-add after it answers. Written before the check, which may
	 * end (and spawn, and free p) before imagecheck_vm() returns: a VM without
	 * disks has nothing to check. */
	if (creds_write(vm, json_object_object_get(op->args, "tls"), "server", true,
			vm->vm_incoming_tls, sizeof(vm->vm_incoming_tls), &err) < 0)
		snprintf(p->creds_why, sizeof(p->creds_why), "%s", err.msg);
	if (p->checked)
		imagecheck_vm(vm, in_checked_cb, p);
	else
		in_spawn(p, NULL);
}

static void in_seeded_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "%s", error);
		return;
	}
	in_spec_write(op);
}

static void in_disks_made(struct inst_op *op)
{
	struct json_object *ci;

	in_mark(op, "disks_made_ms");
	/* The seed disk is a device of the guest: the target needs the same one. */
	if (json_object_object_get_ex(op->spec, "cloud_init", &ci)) {
		disk_seed_build(op->agent, op->vm->inst.dir, op->vm->inst.name,
				json_get_str(ci, "user_data", ""), in_seeded_cb, op);
		return;
	}
	in_spec_write(op);
}

static void in_prepared_cb(struct agent *a, const char *error, void *data)
{
	struct inst_op *op = data;

	if (instance_op_gone(op))
		return;
	if (error) {
		instance_op_fail(op, "%s", error);
		return;
	}
	in_mark(op, "run_dir_ms");
	migrate_disks_make(op, in_disks_made);
}

/*
 * migrate-in (target): make the VM of op->spec here, its QEMU waiting for the
 * migration on a port of this host's underlay address. Result {"uri"}.
 */
void migrate_in(struct inst_op *op)
{
	const char *name = json_get_str(op->spec, "name", "");
	struct vm_disk fresh[AGENT_VM_DISKS_MAX];
	const char *images[AGENT_VM_DISKS_MAX];
	struct kerr err;
	size_t n = 0;

	if (op->vm || oci_find(op->agent, name)) {
		op->vm = NULL;
		instance_op_fail(op, "instance %s exists already on this host", name);
		return;
	}
	op->vm = vm_register(op->agent, op->spec, &err);
	if (op->vm == NULL) {
		instance_op_fail(op, "%s", err.msg);
		return;
	}
	op->registered = true;
	op->vm->inst.op = op;
	op->owner = true;
	op->result = json_object_new_object();
	json_object_object_add(op->result, "timings", json_object_new_object());
	instance_op_progress(op, 10, "prepare-target");
	n = migrate_disks_plan(op, fresh, images);
	disk_prepare(op->agent, op->vm->inst.dir, fresh, n, images, in_prepared_cb, op);
}

/* ---- migrate-out ----------------------------------------------------------------------- */

static struct outgoing *outgoing_find(const char *name)
{
	for (struct outgoing *o = outgoing_list; o; o = o->next)
		if (strcmp(o->vm->inst.name, name) == 0)
			return o;
	return NULL;
}

static void outgoing_close_cb(uv_handle_t *handle)
{
	struct outgoing *o = handle->data;

	json_object_put(o->stats);
	json_object_put(o->done_ret);
	json_object_put(o->timings);
	free(o);
}

static void prep_waiter_gone(struct outgoing *o);

/* Forget o (the op is answered already or about to be). */
static void outgoing_free(struct outgoing *o)
{
	struct outgoing **pp;

	prep_waiter_gone(o);
	for (pp = &outgoing_list; *pp; pp = &(*pp)->next)
		if (*pp == o) {
			*pp = o->next;
			break;
		}
	uv_timer_stop(&o->timer);
	uv_close((uv_handle_t *)&o->timer, outgoing_close_cb);
}

bool migrate_outgoing_gone(struct outgoing *o)
{
	if (!o->op->agent->stopping)
		return false;
	instance_op_gone(o->op);
	outgoing_free(o);
	return true;
}

void migrate_out_fail(struct outgoing *o, const char *prefix, const char *detail);
static struct json_object *ladder_json(const struct outgoing *o);

static void out_fail_after_mirrors(struct outgoing *o)
{
	char why[sizeof(o->fail_why)];

	snprintf(why, sizeof(why), "%s", o->fail_why);
	migrate_out_fail(o, "", why);
}

/* Fail migrate-out with why = prefix + detail; the VM runs on here. */
void migrate_out_fail(struct outgoing *o, const char *prefix, const char *detail)
{
	struct inst_op *op = o->op;

	/* From here o->timer is the mirrors' or nobody's: no event or late poll
	 * answer may start the migration's poll on it again. */
	o->copying = false;
	/* The mirrors go first (abandoned: the target's copy is dropped), so a later
	 * migration finds no job or NBD node of this one in the QEMU. */
	if (migrate_mirrors_any(o) && vm_alive(o->vm)) {
		if (o->mirrors_stopping)
			return;
		snprintf(o->fail_why, sizeof(o->fail_why), "%s%s", prefix, detail);
		migrate_mirrors_stop(o, true, out_fail_after_mirrors);
		return;
	}

	/* A guest this migration paused runs on here. */
	if (o->paused_at_ms && vm_alive(o->vm))
		vm_qmp(o->vm, "cont", NULL, 0, NULL, NULL, NULL);
	/* ... and its QEMU keeps no credentials of it. */
	if (o->creds_added && vm_alive(o->vm)) {
		struct json_object *args = json_object_new_object();

		json_object_object_add(args, "id", json_object_new_string(o->creds_id));
		vm_qmp(o->vm, "object-del", args, 0, NULL, NULL, NULL);
	}
	state_remove(o->vm);
	o->finished = true;
	outgoing_free(o);
	instance_op_fail(op, "%s%s", prefix, detail);
}

static void out_removed_cb(struct agent *a, const char *error, void *data)
{
	struct outgoing *o = data;
	struct inst_op *op = o->op;

	if (migrate_outgoing_gone(o))
		return;
	if (error)
		log_warnx("vm %s: migrated, but its run directory stays: %s", o->vm->inst.name,
			  error);
	o->vm->inst.op = NULL;
	op->owner = false;
	vm_remove(o->vm);
	op->vm = NULL;
	if (o->lost) {
		char why[sizeof(o->fail_why)];

		/* The controller learns it from the result, not from the sentence. */
		snprintf(why, sizeof(why), "%s", o->fail_why);
		op->result = json_object_new_object();
		json_object_object_add(op->result, "lost", json_object_new_boolean(true));
		json_object_object_add(op->result, "strategy", json_object_new_string(o->strategy));
		json_object_object_add(op->result, "ladder", ladder_json(o));
		json_object_object_add(op->result, "migration", json_object_get(o->stats));
		op->result_on_fail = true;
		outgoing_free(o);
		instance_op_fail(op, "%s", why);
		return;
	}
	outgoing_free(o);
	instance_op_succeed(op);
}

static void out_stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct vm *vm = (struct vm *)inst;
	struct outgoing *o = data;
	bool keep[AGENT_VM_DISKS_MAX];

	if (migrate_outgoing_gone(o))
		return;
	netport_vm_remove(json_object_object_get(vm->inst.spec, "nics"));
	/* Shared disks are the target's now; local ones were copied there. */
	migrate_disks_local(vm, keep);
	disk_remove(o->op->agent, vm->inst.dir, vm->disks, vm->ndisks, keep, out_removed_cb, o);
}

/* What this migration did, in order: the ladder's steps, or the pause. */
static struct json_object *ladder_json(const struct outgoing *o)
{
	struct json_object *a;

	if (strcmp(o->strategy, "pause-then-migrate") == 0) {
		a = json_object_new_array();
		json_object_array_add(a, json_object_new_string(o->strategy));
		return a;
	}
	return migrate_ladder_steps(&o->ladder);
}

/* The "migration" object of the operation's progress, from query-migrate's answer. */
static struct json_object *stats_build(struct outgoing *o, struct json_object *ret)
{
	struct json_object *ram = json_object_object_get(ret, "ram"), *s = json_object_new_object();
	struct json_object *disk = json_object_object_get(ret, "disk");
	int64_t remaining = json_get_int(ram, "remaining", 0);
	double mbps = json_object_get_double(json_object_object_get(ram, "mbps"));
	int64_t eta = mbps > 0 ? (int64_t)(remaining * 8 / (mbps * 1000)) : -1;

	json_object_object_add(s, "status",
			       json_object_new_string(json_get_str(ret, "status", "")));
	json_object_object_add(s, "strategy", json_object_new_string(o->strategy));
	json_object_object_add(s, "ladder", ladder_json(o));
	json_object_object_add(
		s, "cpu_throttle_pct",
		json_object_new_int64(json_get_int(ret, "cpu-throttle-percentage", 0)));
	json_object_object_add(s, "ram_total",
			       json_object_new_int64(json_get_int(ram, "total", 0)));
	json_object_object_add(s, "ram_transferred",
			       json_object_new_int64(json_get_int(ram, "transferred", 0)));
	json_object_object_add(s, "ram_remaining", json_object_new_int64(remaining));
	json_object_object_add(s, "dirty_rate_pps",
			       json_object_new_int64(json_get_int(ram, "dirty-pages-rate", 0)));
	json_object_object_add(s, "bandwidth_mbps", json_object_new_double(mbps));
	json_object_object_add(s, "iterations",
			       json_object_new_int64(json_get_int(ram, "dirty-sync-count", 0)));
	json_object_object_add(s, "expected_downtime_ms",
			       json_object_new_int64(json_get_int(ret, "expected-downtime", 0)));
	json_object_object_add(s, "disk_remaining",
			       json_object_new_int64(migrate_mirrors_any(o)
							     ? o->disk_remaining
							     : json_get_int(disk, "remaining", 0)));
	if (migrate_mirrors_any(o))
		json_object_object_add(s, "disk_total", json_object_new_int64(o->disk_total));
	json_object_object_add(s, "eta_ms", eta >= 0 ? json_object_new_int64(eta) : NULL);
	return s;
}

void migrate_progress_send(struct outgoing *o, const char *phase, int pct)
{
	struct json_object *body = json_object_new_object();

	json_object_object_add(body, "progress", json_object_new_int(pct));
	json_object_object_add(body, "phase", json_object_new_string(phase));
	if (o->stats)
		json_object_object_add(body, "migration", json_object_get(o->stats));
	link_event_send(o->op->agent, LINK_OP_PROGRESS, o->op->op, body);
	o->reported_ms = now_ms();
}

static void poll_again(struct outgoing *o);
static void poll_cb(uv_timer_t *timer);
static int ladder_poll(struct outgoing *o, struct json_object *ret);
static void out_stopped_cb(struct inst *inst, const char *error, void *data);

/*
 * Post-copy broke (why: QEMU's words): the target's QEMU or the stream died after the
 * guest moved there, and the pages it dirtied since exist nowhere else. Neither end
 * holds the guest any more - post-copy's known risk (postcopy "never" avoids it) - so
 * this half is removed as after a completed copy, and migrate-out fails with
 * result.lost for the controller.
 */
static void out_lost(struct outgoing *o, const char *why)
{
	log_warnx("vm %s: lost: post-copy broke (%s)", o->vm->inst.name, why);
	snprintf(o->fail_why, sizeof(o->fail_why),
		 "the VM is lost: post-copy broke after the guest moved to the target (%s); "
		 "neither host holds all of its memory",
		 why);
	o->lost = true;
	o->finished = true;
	migrate_progress_send(o, "cleanup", 95);
	o->vm->inst.stop_requested = true;
	vm_force_stop(o->vm, out_stopped_cb, o);
}

/* The source's marks (o->timings), as timing_mark() says. */
void migrate_out_mark(struct outgoing *o, const char *name)
{
	timing_mark(o->timings, name, o->op->started_ms);
}

/* QEMU says the copy completed (ret: query-migrate's answer): the switchover. */
static void out_completed(struct outgoing *o, struct json_object *ret)
{
	struct inst_op *op = o->op;
	int64_t downtime = json_get_int(ret, "downtime", -1);

	o->copying = false;
	migrate_out_mark(o, "reported_ms");
	op->result = json_object_new_object();
	json_object_object_add(op->result, "strategy", json_object_new_string(o->strategy));
	json_object_object_add(op->result, "ladder", ladder_json(o));
	json_object_object_add(op->result, "downtime_ms", json_object_new_int64(downtime));
	/* Paused first: the guest stood still since the stop, not only QEMU's part. */
	if (o->paused_at_ms)
		json_object_object_add(op->result, "paused_ms",
				       json_object_new_int64(now_ms() - o->paused_at_ms));
	json_object_object_add(op->result, "total_ms",
			       json_object_new_int64(now_ms() - o->started_ms));
	json_object_object_add(op->result, "migration", json_object_get(o->stats));
	json_object_object_add(op->result, "timings", json_object_get(o->timings));
	log_info("vm %s: migrated (%s, downtime %lld ms, %lld ms in all)", o->vm->inst.name,
		 o->strategy, (long long)downtime, (long long)(now_ms() - o->started_ms));
	/* The switchover, at once: the controller moves the instance (and resumes a
	 * guest paused first) while this host cleans up. */
	json_object_object_add(o->stats, "downtime_ms", json_object_new_int64(downtime));
	if (o->paused_at_ms)
		json_object_object_add(o->stats, "paused_ms",
				       json_object_new_int64(now_ms() - o->paused_at_ms));
	json_object_object_add(o->stats, "total_ms",
			       json_object_new_int64(now_ms() - o->started_ms));
	/* The controller takes them out of the statistics into result.timings.source. */
	json_object_object_add(o->stats, "timings", json_object_get(o->timings));
	migrate_progress_send(o, "switchover", 95);
	op->report = vm_report(o->vm);
	o->vm->inst.stop_requested = true;
	vm_force_stop(o->vm, out_stopped_cb, o);
}

static void out_completed_after_mirrors(struct outgoing *o)
{
	struct json_object *ret = o->done_ret;

	o->done_ret = NULL;
	migrate_out_mark(o, "mirrors_ended_ms");
	/* The target waits paused (-S) for the controller's resume. */
	json_object_object_add(o->stats, "target_paused", json_object_new_boolean(true));
	out_completed(o, ret);
	json_object_put(ret);
}

static void query_migrate_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;
	const char *status;
	int64_t total;
	int pct;

	o->polling = false;
	if (migrate_outgoing_gone(o))
		return;
	if (ret == NULL) {
		migrate_out_fail(o, "query-migrate: ", error);
		return;
	}
	status = json_get_str(ret, "status", "");
	if (strcmp(status, "postcopy-active") == 0 && !o->in_postcopy) {
		o->in_postcopy = true;
		log_info("vm %s: post-copy: the guest runs on the target now", o->vm->inst.name);
	}
	json_object_put(o->stats);
	o->stats = stats_build(o, ret);
	/* Post-copy broke: QEMU 7.2 waits for a recovery Kumo does not make. */
	if (!strncmp(status, "postcopy-paused", 15) || !strcmp(status, "postcopy-recover") ||
	    (o->in_postcopy && !strcmp(status, "failed"))) {
		out_lost(o, json_get_str(ret, "error-desc", status));
		return;
	}
	if ((!strcmp(status, "setup") || !strcmp(status, "active")) && ladder_poll(o, ret) < 0)
		return;
	if (strcmp(status, "completed") == 0) {
		o->finished = true;
		/* When the agent first saw the end; the rest of completed_ms -
		 * migrate_started_ms past QEMU's own count is how late that was. */
		if (o->counted_polls == 0)
			migrate_out_mark(o, "completed_ms");
		/* The event can bring this poll in before QEMU counted its times (its
		 * migration thread sets completed first): a downtime of 0 would be
		 * reported. Ask again in a few ms; after that, take what it says. */
		if ((json_get_int(ret, "downtime", 0) <= 0 ||
		     json_get_int(ret, "total-time", 0) <= 0) &&
		    o->counted_polls < MIGRATE_COUNTED_POLLS) {
			o->counted_polls++;
			uv_timer_start(&o->timer, poll_cb, MIGRATE_COUNTED_POLL_MS, 0);
			return;
		}
		/* QEMU's own count from its migrate to completed. */
		json_object_object_add(o->timings, "qemu_total_ms",
				       json_object_new_int64(json_get_int(ret, "total-time", -1)));
		json_object_object_add(o->timings, "qemu_setup_ms",
				       json_object_new_int64(json_get_int(ret, "setup-time", -1)));
		json_object_object_add(o->timings, "polls", json_object_new_int(o->polls));
		if (migrate_mirrors_any(o)) {
			/* The mirrors end before the target stops its NBD server (the other
			 * order is an I/O error), and that before its guest runs: the
			 * controller resumes it only after this switchover report. */
			o->done_ret = json_object_get(ret);
			migrate_mirrors_stop(o, false, out_completed_after_mirrors);
			return;
		}
		out_completed(o, ret);
		return;
	}
	if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0 ||
	    strcmp(status, "cancelling") == 0) {
		if (strcmp(status, "cancelling") == 0) {
			poll_again(o);
			return;
		}
		migrate_out_fail(o, "migration ",
				 o->cancel || strcmp(status, "cancelled") == 0
					 ? "cancelled"
					 : json_get_str(ret, "error-desc", "failed"));
		return;
	}
	if (now_ms() - o->reported_ms >= MIGRATE_REPORT_MS) {
		total = json_get_int(json_object_object_get(ret, "ram"), "total", 0);
		pct = total > 0
			      ? (int)(10 + 80 *
						   json_get_int(json_object_object_get(ret, "ram"),
								"transferred", 0) /
						   (total > 0 ? total : 1))
			      : 10;
		migrate_progress_send(
			o, strcmp(status, "postcopy-active") == 0 ? "postcopy" : "precopy",
			pct > 90 ? 90 : pct);
	}
	poll_again(o);
}

static void postcopy_started_cb(struct qmp *q, struct json_object *ret, const char *error,
				void *data)
{
	struct outgoing *o = data;

	if (migrate_outgoing_gone(o) || error == NULL)
		return;
	/* Pre-copy went on meanwhile: stop it, then the VM runs on here. */
	vm_qmp(o->vm, "migrate_cancel", NULL, 0, NULL, NULL, NULL);
	migrate_out_fail(o, "migrate-start-postcopy: ", error);
}

/*
 * The ladder's turn at a poll of a migration in setup or pre-copy (ret: query-migrate's
 * answer): post-copy starts when it says so. Returns 0, or -1 when o failed.
 */
static int ladder_poll(struct outgoing *o, struct json_object *ret)
{
	struct json_object *ram = json_object_object_get(ret, "ram");
	struct ladder_stats st = {
		.iterations = json_get_int(ram, "dirty-sync-count", 0),
		.remaining = json_get_int(ram, "remaining", 0),
		.dirty_pps = json_get_int(ram, "dirty-pages-rate", 0),
		.page_size = json_get_int(ram, "page-size", 4096),
		.mbps = json_object_get_double(json_object_object_get(ram, "mbps")),
		.throttle_pct = (int)json_get_int(ret, "cpu-throttle-percentage", 0),
	};
	struct kerr err;

	if (migrate_ladder_next(&o->ladder, &st) != LADDER_POSTCOPY)
		return 0;
	log_info("vm %s: switching to post-copy (%s, after %lld iterations)", o->vm->inst.name,
		 o->ladder.kvm ? "pre-copy did not converge or was asked to" : "TCG",
		 (long long)st.iterations);
	snprintf(o->strategy, sizeof(o->strategy), "postcopy");
	if (vm_qmp(o->vm, "migrate-start-postcopy", NULL, MIGRATE_QMP_TIMEOUT_MS,
		   postcopy_started_cb, o, &err) < 0) {
		vm_qmp(o->vm, "migrate_cancel", NULL, 0, NULL, NULL, NULL);
		migrate_out_fail(o, "", err.msg);
		return -1;
	}
	return 0;
}

static void poll_cb(uv_timer_t *timer)
{
	struct outgoing *o = timer->data;
	struct kerr err;

	if (migrate_outgoing_gone(o))
		return;
	o->polling = true;
	o->polls++;
	if (vm_qmp(o->vm, "query-migrate", NULL, MIGRATE_QMP_TIMEOUT_MS, query_migrate_cb, o,
		   &err) < 0) {
		o->polling = false;
		migrate_out_fail(o, "", err.msg);
	}
}

/* The next query-migrate: at once after a MIGRATION event, else in MIGRATE_POLL_MS. */
static void poll_again(struct outgoing *o)
{
	/* Ending mirrors own o->timer (stop_poll_cb): a poll started now would take it
	 * from them, and nothing would end the op. */
	if (o->mirrors_stopping)
		return;
	uv_timer_start(&o->timer, poll_cb, o->poll_soon ? 0 : MIGRATE_POLL_MS, 0);
	o->poll_soon = false;
}

/*
 * QEMU's MIGRATION event for vm (vm.c; the source asks for them with the "events"
 * capability): an end of the copy is seen at once instead of at the next poll, up to
 * MIGRATE_POLL_MS later (125 ms on average, on the critical path of every migration,
 * and the guest of a pause-then-migrate stands still meanwhile). The poll still
 * decides: the event only brings the next query-migrate forward.
 */
void migrate_out_event(struct vm *vm, const char *status)
{
	struct outgoing *o = outgoing_find(vm->inst.name);

	if (o == NULL || o->vm != vm || o->finished || o->mirrors_stopping)
		return;
	if (strcmp(status, "completed") && strcmp(status, "failed") &&
	    strcmp(status, "cancelled") && strncmp(status, "postcopy-paused", 15))
		return;
	o->poll_soon = true;
	/* A poll in flight polls again as it ends; before QEMU's migrate answered, its
	 * callback's first poll goes at once. */
	if (o->copying && !o->polling)
		poll_again(o);
}

static void migrate_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;

	if (migrate_outgoing_gone(o))
		return;
	if (o->stop_why[0]) {
		/* The pause sent before it failed (the guest runs): no copy of a running TCG
		 * guest may finish. Whatever QEMU copied is the target's, which goes. */
		if (!error)
			vm_qmp(o->vm, "migrate_cancel", NULL, 0, NULL, NULL, NULL);
		migrate_out_fail(o, "stop: ", o->stop_why);
		return;
	}
	if (error) {
		migrate_out_fail(o, "migrate: ", error);
		return;
	}
	migrate_out_mark(o, "migrate_started_ms");
	o->copying = true;
	/* TCG with post-copy switches at its first poll (the ladder): at once, not after
	 * MIGRATE_POLL_MS of a pre-copy TCG should not run at all. */
	if (!o->ladder.kvm && o->ladder.postcopy_allowed)
		o->poll_soon = true;
	migrate_progress_send(o, "precopy", 10);
	poll_again(o);
}

static void migrate_send(struct outgoing *o)
{
	struct json_object *args = json_object_new_object();
	struct kerr err;

	json_object_object_add(args, "uri",
			       json_object_new_string(json_get_str(o->op->args, "uri", "")));
	if (vm_qmp(o->vm, "migrate", args, MIGRATE_QMP_TIMEOUT_MS, migrate_cb, o, &err) < 0)
		migrate_out_fail(o, "", err.msg);
}

/* The pause's answer; its migrate is on its way behind it (strategy_start()), whose
 * answer decides (migrate_cb()): nothing is freed here. */
static void stopped_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;

	if (o->migrate_unsent[0]) {
		/* The migrate could not be sent: this is o's last answer. */
		if (!migrate_outgoing_gone(o))
			migrate_out_fail(o, "", o->migrate_unsent);
		return;
	}
	if (error)
		snprintf(o->stop_why, sizeof(o->stop_why), "%s", error);
	else
		migrate_out_mark(o, "stopped_ms");
}

/* Pre-copy or post-copy, or (TCG without post-copy) pause first: see the top. */
static void strategy_start(struct outgoing *o)
{
	struct json_object *args;
	struct kerr err;

	if (o->cancel) {
		migrate_out_fail(o, "migration ", "cancelled");
		return;
	}
	if (strcmp(o->strategy, "pause-then-migrate") != 0) {
		migrate_send(o);
		return;
	}
	o->paused_at_ms = now_ms();
	state_write(o->vm, "out", o->op->op, true);
	/* migrate right behind stop, without waiting for its answer: QEMU runs a
	 * monitor's commands one after the other, so the copy starts paused, a round
	 * trip sooner. A stop that failed fails the migrate's answer (migrate_cb()). */
	if (vm_qmp(o->vm, "stop", NULL, MIGRATE_QMP_TIMEOUT_MS, stopped_cb, o, &err) < 0) {
		migrate_out_fail(o, "", err.msg);
		return;
	}
	args = json_object_new_object();
	json_object_object_add(args, "uri",
			       json_object_new_string(json_get_str(o->op->args, "uri", "")));
	if (vm_qmp(o->vm, "migrate", args, MIGRATE_QMP_TIMEOUT_MS, migrate_cb, o, &err) < 0)
		snprintf(o->migrate_unsent, sizeof(o->migrate_unsent), "%s", err.msg);
}

static void out_caps_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;

	if (migrate_outgoing_gone(o))
		return;
	if (error) {
		migrate_out_fail(o, "migrate-set-capabilities: ", error);
		return;
	}
	strategy_start(o);
}

/*
 * The memory moves. KVM: pre-copy with auto-converge, post-copy where the ladder
 * says (migrate_ladder.c). TCG: post-copy at once where allowed, else pause first
 * (never pre-copy: see the top). Post-copy is allowed when the controller says
 * (args.postcopy auto or always: the target has the grant) and no mirror runs (a
 * target held by -S for its disks cannot run the guest during post-copy).
 */
static const char *const out_caps[] = {"postcopy-ram", "auto-converge", "events", NULL};

/* The source's capabilities (out_caps) for vm under the controller's post-copy policy,
 * mirrors: its local disks are mirrored (no post-copy then). */
static void out_caps_plan(struct vm *vm, const char *policy, bool mirrors, bool on[3])
{
	on[0] = strcmp(policy, "never") != 0 && !mirrors;
	on[1] = strcmp(json_get_str(vm->inst.spec, "accel", "tcg"), "tcg") != 0;
	on[2] = true; /* MIGRATION events: migrate_out_event() */
}

void migrate_memory_start(struct outgoing *o)
{
	const char *policy = json_get_str(o->op->args, "postcopy", "never");
	bool on[3];
	struct kerr err;

	migrate_out_mark(o, "memory_start_ms");
	o->ladder.kvm = strcmp(json_get_str(o->vm->inst.spec, "accel", "tcg"), "tcg") != 0;
	o->ladder.postcopy_allowed = strcmp(policy, "never") != 0 && !migrate_mirrors_any(o);
	o->ladder.postcopy_always = strcmp(policy, "always") == 0;
	if (!o->ladder.kvm && !o->ladder.postcopy_allowed)
		snprintf(o->strategy, sizeof(o->strategy), "pause-then-migrate");
	else
		snprintf(o->strategy, sizeof(o->strategy), "%s",
			 o->ladder.kvm ? "precopy" : "postcopy");
	out_caps_plan(o->vm, policy, migrate_mirrors_any(o), on);
	/* Its migrate-prepare set the same already. */
	if (o->caps_prepared && memcmp(on, o->caps_on, sizeof(on)) == 0) {
		strategy_start(o);
		return;
	}
	if (vm_qmp(o->vm, "migrate-set-capabilities", caps_args(out_caps, on),
		   MIGRATE_QMP_TIMEOUT_MS, out_caps_cb, o, &err) < 0)
		migrate_out_fail(o, "", err.msg);
}

/* The source QEMU holds this migration's credentials and parameters: disks, memory. */
static void params_done(struct outgoing *o)
{
	migrate_out_mark(o, "params_set_ms");
	/* Local disks first: in sync on the target before the memory moves. */
	if (migrate_disks_local(o->vm, NULL)) {
		if (!json_get_str(o->op->args, "nbd_uri", NULL)) {
			migrate_out_fail(o, "",
					 "the VM has local disks and the target offers no NBD "
					 "server for them");
			return;
		}
		migrate_progress_send(o, "mirror-disks", 5);
		migrate_mirror_next(o);
		return;
	}
	migrate_memory_start(o);
}

static void params_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;

	if (migrate_outgoing_gone(o))
		return;
	if (error) {
		migrate_out_fail(o, "migrate-set-parameters: ", error);
		return;
	}
	params_done(o);
}

/*
 * The source QEMU's migration parameters for a migration with args (a migrate-out's or
 * a migrate-prepare's: tls, bandwidth_mbps, downtime_ms) and credentials object id.
 */
static struct json_object *params_args(struct json_object *args, const char *creds_id)
{
	struct json_object *params = json_object_new_object();
	struct json_object *tls = json_object_object_get(args, "tls");
	int64_t mbps = json_get_int(args, "bandwidth_mbps", MIGRATE_BANDWIDTH_MBPS);

	json_object_object_add(params, "tls-creds", json_object_new_string(creds_id));
	/* The target's certificate names its underlay address. */
	json_object_object_add(params, "tls-hostname",
			       json_object_new_string(json_get_str(tls, "hostname", "")));
	json_object_object_add(params, "max-bandwidth", json_object_new_int64(mbps * 1000000 / 8));
	/* Post-copy has a limit of its own (0: none); a limit asked for holds there too. */
	if (json_object_object_get(args, "bandwidth_mbps"))
		json_object_object_add(params, "max-postcopy-bandwidth",
				       json_object_new_int64(mbps * 1000000 / 8));
	json_object_object_add(
		params, "downtime-limit",
		json_object_new_int64(json_get_int(args, "downtime_ms", MIGRATE_DOWNTIME_MS)));
	return params;
}

static void out_creds_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct outgoing *o = data;
	struct kerr err;

	if (migrate_outgoing_gone(o))
		return;
	if (error) {
		migrate_out_fail(o, "the migration's TLS certificates: ", error);
		return;
	}
	migrate_out_mark(o, "creds_loaded_ms");
	if (vm_qmp(o->vm, "migrate-set-parameters", params_args(o->op->args, o->creds_id),
		   MIGRATE_QMP_TIMEOUT_MS, params_cb, o, &err) < 0)
		migrate_out_fail(o, "", err.msg);
}

/* migrate-out's own credentials and parameters (no migrate-prepare came, or it failed). */
static void out_creds_load(struct outgoing *o)
{
	struct kerr err;

	migrate_creds_id(o->op, o->creds_id, sizeof(o->creds_id));
	if (creds_load(o->vm, json_object_object_get(o->op->args, "tls"), "client", o->creds_id,
		       out_creds_cb, o, &err) < 0) {
		migrate_out_fail(o, "", err.msg);
		return;
	}
	/* QEMU may hold it from here (a timed-out answer too): deleted on failure. */
	o->creds_added = true;
}

static bool creds_in_use(const char *name, const char *id);

static void creds_listed_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct vm *vm = data;
	size_t n = ret && json_object_is_type(ret, json_type_array) ? json_object_array_length(ret)
								    : 0;

	if (error || !vm_alive(vm))
		return;
	for (size_t i = 0; i < n; i++) {
		const char *name = json_get_str(json_object_array_get_idx(ret, i), "name", "");
		struct json_object *args;

		if (strncmp(name, "kumo-tls", 8) != 0 || creds_in_use(vm->inst.name, name))
			continue;
		log_info("vm %s: removing migration credentials %s a previous agent left",
			 vm->inst.name, name);
		args = json_object_new_object();
		json_object_object_add(args, "id", json_object_new_string(name));
		vm_qmp(vm, "object-del", args, 0, NULL, NULL, NULL);
	}
}

/*
 * An adopted QEMU with no migration under way: a migration's credentials a previous
 * agent left in it (a prepare or a migrate-out it never finished) go.
 */
void migrate_creds_adopted(struct vm *vm)
{
	struct json_object *args, *state;
	bool out;

	if (vm->vm_migrating_in || outgoing_find(vm->inst.name))
		return;
	/* A source QEMU still copying for the last agent (migrate_adopted()) keeps its. */
	state = state_read(vm);
	out = state && strcmp(json_get_str(state, "role", ""), "out") == 0;
	json_object_put(state);
	if (out)
		return;
	args = json_object_new_object();
	json_object_object_add(args, "path", json_object_new_string("/objects"));
	vm_qmp(vm, "qom-list", args, 10000, creds_listed_cb, vm, NULL);
}

/* ---- migrate-prepare: the source's credentials and parameters ahead of migrate-out ---- */

/*
 * The controller asks the source to get ready ({"what": "migrate-prepare"}, a query:
 * no operation, answered at once) as it sends migrate-in to the target, so the
 * source's TLS credentials (object-add: PEM files written, QEMU loading and checking
 * them) and migration parameters are in its QEMU while the target starts its QEMU,
 * not after (5-35 ms of every migration's critical path here). migrate-out then finds
 * them by its args.migration; one that finds none, or a failed one, loads its own as
 * before, so a prepare lost (an agent restart, a QEMU that refused) costs only time.
 * A prepare nobody used goes after MIGRATE_PREP_TTL_MS, on migrate-unprepare (the
 * controller's migration ended before its migrate-out), or when the next prepare of
 * the same VM comes: its object is deleted from the QEMU.
 */
enum prep_state {
	PREP_LOADING,
	PREP_READY,
	PREP_FAILED
};

struct prep {
	struct agent *agent;
	char name[NAME_MAX_LEN + 1];
	char migration[LINK_OP_ID_MAX + 1];
	char creds_id[64];
	struct json_object *args; /* tls, bandwidth_mbps, downtime_ms */
	enum prep_state state;
	bool busy;		 /* a QMP call of it is in flight */
	bool added;		 /* its QEMU holds creds_id */
	bool dropped;		 /* off the list: gone once its QMP call returned */
	bool caps_set;		 /* its capabilities are set too, to caps_on */
	bool caps_on[3];	 /* out_caps */
	struct outgoing *waiter; /* a migrate-out that came while it loaded */
	uv_timer_t ttl;
	struct prep *next;
};

static struct prep *prep_list;

static void prep_close_cb(uv_handle_t *handle)
{
	struct prep *p = handle->data;

	json_object_put(p->args);
	free(p);
}

/* p's QMP work is over: it goes (with its object, unless handed over). */
static void prep_free(struct prep *p)
{
	struct vm *vm = vm_find(p->agent, p->name);
	struct json_object *args;

	if (p->added && vm && vm->qmp) {
		args = json_object_new_object();
		json_object_object_add(args, "id", json_object_new_string(p->creds_id));
		vm_qmp(vm, "object-del", args, 0, NULL, NULL, NULL);
	}
	uv_timer_stop(&p->ttl);
	uv_close((uv_handle_t *)&p->ttl, prep_close_cb);
}

/* Take p off the list; freed now, or when its QMP call returns. */
static void prep_drop(struct prep *p)
{
	struct prep **pp;

	for (pp = &prep_list; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	p->dropped = true;
	p->waiter = NULL;
	uv_timer_stop(&p->ttl);
	if (!p->busy)
		prep_free(p);
}

static struct prep *prep_find(const char *name)
{
	for (struct prep *p = prep_list; p; p = p->next)
		if (strcmp(p->name, name) == 0)
			return p;
	return NULL;
}

/* Credentials id of VM name belong to a prepare or migrate-out of this agent run. */
static bool creds_in_use(const char *name, const char *id)
{
	struct prep *p = prep_find(name);
	struct outgoing *o = outgoing_find(name);

	return (p && strcmp(p->creds_id, id) == 0) || (o && strcmp(o->creds_id, id) == 0);
}

/* o goes: a prepare it waited for keeps its credentials for nobody (TTL). */
static void prep_waiter_gone(struct outgoing *o)
{
	for (struct prep *p = prep_list; p; p = p->next)
		if (p->waiter == o)
			p->waiter = NULL;
}

/* The agent stops: the prepares are forgotten (their objects stay in the QEMUs,
 * which the next agent removes as it adopts them: migrate_creds_adopted()). */
void migrate_preps_close(struct agent *a)
{
	(void)a;
	while (prep_list) {
		struct prep *p = prep_list;

		/* A migrate-out waiting for it ends with the agent (as it would at its
		 * next step: migrate_outgoing_gone()). */
		if (p->waiter)
			migrate_outgoing_gone(p->waiter);
		p->added = false;
		prep_drop(p);
	}
}

static void prep_ttl_cb(uv_timer_t *timer)
{
	struct prep *p = timer->data;

	log_info("vm %s: migration %s's prepared credentials were not used; removed", p->name,
		 p->migration);
	prep_drop(p);
}

/* migrate-out o takes p's credentials and parameters (ready): p goes, its object is o's. */
static void prep_hand_over(struct prep *p, struct outgoing *o)
{
	snprintf(o->creds_id, sizeof(o->creds_id), "%s", p->creds_id);
	o->creds_added = true;
	o->caps_prepared = p->caps_set;
	memcpy(o->caps_on, p->caps_on, sizeof(o->caps_on));
	p->added = false;
	prep_drop(p);
	json_object_object_add(o->timings, "prepared", json_object_new_boolean(true));
	migrate_out_mark(o, "creds_loaded_ms");
	params_done(o);
}

/* p ended (ready or failed): a migrate-out waiting for it goes on. */
static void prep_ended(struct prep *p)
{
	struct outgoing *o = p->waiter;

	p->waiter = NULL;
	if (p->dropped) {
		prep_free(p);
		return;
	}
	if (o == NULL)
		return;
	if (p->state == PREP_READY && !o->cancel && !o->op->agent->stopping) {
		prep_hand_over(p, o);
		return;
	}
	prep_drop(p); /* with its object: o loads its own, or ends */
	if (migrate_outgoing_gone(o))
		return;
	if (o->cancel) {
		migrate_out_fail(o, "migration ", "cancelled");
		return;
	}
	out_creds_load(o);
}

static void prep_caps_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct prep *p = data;

	p->busy = false;
	/* Not fatal: migrate-out sets them itself then. */
	p->caps_set = error == NULL;
	p->state = PREP_READY;
	prep_ended(p);
}

static void prep_params_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct prep *p = data;
	struct vm *vm = vm_find(p->agent, p->name);

	p->busy = false;
	if (error && !p->dropped)
		log_warnx("vm %s: migration %s's parameters: %s", p->name, p->migration, error);
	p->state = error ? PREP_FAILED : PREP_READY;
	if (error || p->dropped || vm == NULL) {
		prep_ended(p);
		return;
	}
	/* The capabilities migrate-out would set (migrate_memory_start()). */
	out_caps_plan(vm, json_get_str(p->args, "postcopy", "never"),
		      migrate_disks_local(vm, NULL) > 0, p->caps_on);
	if (vm_qmp(vm, "migrate-set-capabilities", caps_args(out_caps, p->caps_on),
		   MIGRATE_QMP_TIMEOUT_MS, prep_caps_cb, p, NULL) < 0) {
		prep_ended(p);
		return;
	}
	p->busy = true;
}

static void prep_creds_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct prep *p = data;
	struct vm *vm = vm_find(p->agent, p->name);

	p->busy = false;
	if (error) {
		if (!p->dropped)
			log_warnx("vm %s: migration %s's TLS credentials: %s", p->name,
				  p->migration, error);
		p->state = PREP_FAILED;
		prep_ended(p);
		return;
	}
	if (p->dropped || vm == NULL ||
	    vm_qmp(vm, "migrate-set-parameters", params_args(p->args, p->creds_id),
		   MIGRATE_QMP_TIMEOUT_MS, prep_params_cb, p, NULL) < 0) {
		p->state = PREP_FAILED;
		prep_ended(p);
		return;
	}
	p->busy = true;
}

static const struct json_field prepare_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{"migration", JK_STRING, true, hex_id_check},
	{"tls", JK_OBJECT, true, tls_check},
	{"downtime_ms", JK_INT, false, positive_check},
	{"bandwidth_mbps", JK_INT, false, positive_check},
	{"postcopy", JK_STRING, false, postcopy_check},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "migrate-prepare", "name": N, "migration": ID, "tls": {...},
 * "downtime_ms"?, "bandwidth_mbps"?, "postcopy"?} -> {"preparing": bool, "why"?}: N's
 * QEMU gets migration ID's client credentials, parameters and capabilities now (see
 * above). Answered at once.
 */
int migrate_prepare_query(struct agent *a, struct json_object *body, struct json_object **answer,
			  struct kerr *err)
{
	const char *name = json_get_str(body, "name", "");
	const char *id = json_get_str(body, "migration", "");
	struct vm *vm;
	struct prep *p;
	const char *why = NULL;

	if (json_fields_check(body, prepare_fields, err) < 0)
		return -1;
	vm = vm_find(a, name);
	p = prep_find(name);
	if (p && strcmp(p->migration, id) == 0) {
		why = "it is prepared already";
	} else if (vm == NULL || vm->inst.state != INST_RUNNING || vm->qmp == NULL) {
		why = "the VM does not run here";
	} else if (outgoing_find(name)) {
		why = "a migration of it runs";
	} else {
		if (p)
			prep_drop(p); /* a migration that never came */
		p = xcalloc(1, sizeof(*p));
		p->agent = a;
		snprintf(p->name, sizeof(p->name), "%s", name);
		snprintf(p->migration, sizeof(p->migration), "%s", id);
		snprintf(p->creds_id, sizeof(p->creds_id), "kumo-tlsp-%.32s", id);
		p->args = json_object_get(body);
		uv_timer_init(a->loop, &p->ttl);
		p->ttl.data = p;
		p->next = prep_list;
		prep_list = p;
		uv_timer_start(&p->ttl, prep_ttl_cb, MIGRATE_PREP_TTL_MS, 0);
		if (creds_load(vm, json_object_object_get(body, "tls"), "client", p->creds_id,
			       prep_creds_cb, p, err) < 0) {
			log_warnx("vm %s: migration %s: %s", name, id, err->msg);
			p->state = PREP_FAILED;
			why = "its credentials could not be loaded";
		} else {
			/* From here QEMU may hold it: even a timed-out answer may come
			 * true later, so it is deleted whatever the answer. */
			p->added = true;
			p->busy = true;
		}
	}
	*answer = json_object_new_object();
	json_object_object_add(*answer, "preparing", json_object_new_boolean(why == NULL));
	if (why)
		json_object_object_add(*answer, "why", json_object_new_string(why));
	return 0;
}

static const struct json_field unprepare_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{"migration", JK_STRING, true, hex_id_check},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "migrate-unprepare", "name": N, "migration": ID} -> {"dropped": bool}: the
 * controller's migration ID ended before its migrate-out; its prepare goes (a
 * migrate-out that took it already is not touched). Answered at once.
 */
int migrate_unprepare_query(struct agent *a, struct json_object *body, struct json_object **answer,
			    struct kerr *err)
{
	struct prep *p;
	bool dropped = false;

	(void)a;
	if (json_fields_check(body, unprepare_fields, err) < 0)
		return -1;
	p = prep_find(json_get_str(body, "name", ""));
	if (p && strcmp(p->migration, json_get_str(body, "migration", "")) == 0 &&
	    p->waiter == NULL) {
		prep_drop(p);
		dropped = true;
	}
	*answer = json_object_new_object();
	json_object_object_add(*answer, "dropped", json_object_new_boolean(dropped));
	return 0;
}

/*
 * migrate-out (source): move the running VM to the QEMU waiting at args.uri (a
 * migrate-in), then forget it here. See the top of this file.
 */
void migrate_out(struct inst_op *op)
{
	struct vm *vm = op->vm;
	struct outgoing *o;
	struct prep *p;

	if (vm->inst.state != INST_RUNNING) {
		instance_op_fail(op, "instance %s is %s; a live migration needs it running",
				 vm->inst.name, inst_state_name(vm->inst.state));
		return;
	}
	o = xcalloc(1, sizeof(*o));
	o->op = op;
	o->vm = vm;
	o->started_ms = now_ms();
	o->timings = json_object_new_object();
	snprintf(o->strategy, sizeof(o->strategy), "precopy");
	uv_timer_init(op->agent->loop, &o->timer);
	o->timer.data = o;
	o->next = outgoing_list;
	outgoing_list = o;
	state_write(vm, "out", op->op, false);
	migrate_progress_send(o, "precopy", 5);
	/* The controller's migrate-prepare loaded them already, or is loading them. */
	p = prep_find(vm->inst.name);
	if (p && strcmp(p->migration, json_get_str(op->args, "migration", "")) == 0) {
		if (p->busy) {
			p->waiter = o;
			return;
		}
		if (p->state == PREP_READY) {
			prep_hand_over(p, o);
			return;
		}
	}
	if (p)
		prep_drop(p);
	out_creds_load(o);
}

static const struct json_field cancel_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "migrate-cancel", "name": N} -> {"cancelled": true} when a migrate-out of
 * N runs here and was asked to stop (its op then fails, "cancelled"), else
 * {"cancelled": false, "why"}. Answered at once.
 */
int migrate_cancel_query(struct agent *a, struct json_object *body, struct json_object **answer,
			 struct kerr *err)
{
	struct outgoing *o;

	(void)a;
	if (json_fields_check(body, cancel_fields, err) < 0)
		return -1;
	o = outgoing_find(json_get_str(body, "name", ""));
	*answer = json_object_new_object();
	if (o == NULL || o->finished || o->ladder.postcopy_started) {
		json_object_object_add(*answer, "cancelled", json_object_new_boolean(false));
		json_object_object_add(
			*answer, "why",
			json_object_new_string(o == NULL     ? "no migration of it runs here"
					       : o->finished ? "the migration has finished"
							     : "the migration is in post-copy: the "
							       "guest runs on the target"));
		return 0;
	}
	o->cancel = true;
	/* Before QEMU's migrate the steps above see o->cancel; after it, QEMU does. */
	vm_qmp(o->vm, "migrate_cancel", NULL, 0, NULL, NULL, NULL);
	json_object_object_add(*answer, "cancelled", json_object_new_boolean(true));
	return 0;
}

/* ---- after an agent restart ------------------------------------------------------------- */

/* A source VM found mid-migration at start-up, its QEMU polled until the copy ends. */
struct adopted_out {
	struct agent *agent;
	char name[NAME_MAX_LEN + 1];
	bool paused; /* the migration had stopped the guest */
	uv_timer_t timer;
};

static void adopted_close_cb(uv_handle_t *handle)
{
	free(handle->data);
}

static void adopted_free(struct adopted_out *ad)
{
	uv_timer_stop(&ad->timer);
	uv_close((uv_handle_t *)&ad->timer, adopted_close_cb);
}

static void adopted_removed_cb(struct agent *a, const char *error, void *data)
{
	struct adopted_out *ad = data;
	struct vm *vm = a->stopping ? NULL : vm_find(a, ad->name);

	if (error)
		log_warnx("vm %s: migrated, but its run directory stays: %s", ad->name, error);
	if (vm) {
		vm_remove(vm);
		log_info("vm %s: its migration completed while the agent was away; removed here",
			 ad->name);
	}
	adopted_free(ad);
}

static void adopted_stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct vm *vm = (struct vm *)inst;
	struct adopted_out *ad = data;

	if (ad->agent->stopping) {
		adopted_free(ad);
		return;
	}
	netport_vm_remove(json_object_object_get(vm->inst.spec, "nics"));
	disk_remove(ad->agent, vm->inst.dir, vm->disks, 0, NULL, adopted_removed_cb, ad);
}

static void adopted_poll_cb(uv_timer_t *timer);

static void adopted_query_cb(struct qmp *q, struct json_object *ret, const char *error, void *data)
{
	struct adopted_out *ad = data;
	struct vm *vm = ad->agent->stopping ? NULL : vm_find(ad->agent, ad->name);
	const char *status = json_get_str(ret, "status", "");

	if (vm == NULL || !vm_alive(vm)) {
		if (vm)
			state_remove(vm);
		adopted_free(ad);
		return;
	}
	if (ret == NULL) {
		uv_timer_start(&ad->timer, adopted_poll_cb, MIGRATE_POLL_MS * 4, 0);
		return;
	}
	if (!strcmp(status, "completed") || !strncmp(status, "postcopy-paused", 15)) {
		/* The target has the guest: this copy is stale, removed as migrate-out would.
		 * Or post-copy broke while we were away: it is no guest any more. */
		vm->inst.stop_requested = true;
		vm_force_stop(vm, adopted_stopped_cb, ad);
		return;
	}
	/* A QEMU that never migrated (killed during mirror-disks) answers {}: no status. */
	if (status[0] && strcmp(status, "failed") && strcmp(status, "cancelled") &&
	    strcmp(status, "none")) {
		uv_timer_start(&ad->timer, adopted_poll_cb, MIGRATE_POLL_MS, 0);
		return;
	}
	/* It did not move: the guest runs on here, as before the migration. */
	log_info("vm %s: its migration %s while the agent was away; it stays here", ad->name,
		 status);
	/* Killed during mirror-disks: its mirrors and NBD nodes go too. */
	if (migrate_disks_local(vm, NULL))
		migrate_mirrors_sweep(vm);
	if (ad->paused)
		vm_qmp(vm, "cont", NULL, 0, NULL, NULL, NULL);
	state_remove(vm);
	adopted_free(ad);
}

static void adopted_poll_cb(uv_timer_t *timer)
{
	struct adopted_out *ad = timer->data;
	struct vm *vm = ad->agent->stopping ? NULL : vm_find(ad->agent, ad->name);

	if (vm == NULL || vm_qmp(vm, "query-migrate", NULL, MIGRATE_QMP_TIMEOUT_MS,
				 adopted_query_cb, ad, NULL) < 0)
		uv_timer_start(&ad->timer, adopted_poll_cb, MIGRATE_POLL_MS * 4, 0);
}

static void adopted_in_removed_cb(struct agent *a, const char *error, void *data)
{
	char *name = data;
	struct vm *vm = a->stopping ? NULL : vm_find(a, name);

	if (error)
		log_warnx("vm %s: removing an interrupted incoming migration: %s", name, error);
	/* A delete from the controller may hold it by now: that one removes it. */
	if (vm && vm->inst.op == NULL)
		vm_remove(vm);
	free(name);
}

static void adopted_in_stopped_cb(struct inst *inst, const char *error, void *data)
{
	struct vm *vm = (struct vm *)inst;
	bool keep[AGENT_VM_DISKS_MAX];

	(void)data;
	if (vm->inst.agent->stopping)
		return;
	netport_vm_remove(json_object_object_get(vm->inst.spec, "nics"));
	/* Its shared disks are the source's: the run directory goes, and the local disks
	 * this migration made. */
	migrate_disks_local(vm, keep);
	disk_remove(vm->inst.agent, vm->inst.dir, vm->disks, vm->ndisks, keep,
		    adopted_in_removed_cb, xstrdup(vm->inst.name));
}

/*
 * vm was adopted at start-up and QMP says status (vm.c): settle a migration the
 * last agent left half done, as the top of this file says. Returns true when vm is
 * being removed here (its state is not news), false when it is an ordinary VM.
 */
bool migrate_adopted(struct vm *vm, const char *status)
{
	struct json_object *st = state_read(vm);
	const char *role = json_get_str(st, "role", "");
	struct adopted_out *ad;

	if (st == NULL)
		return false;
	if (!strcmp(role, "in")) {
		json_object_put(st);
		if (!strcmp(status, "inmigrate")) {
			log_warnx("vm %s: an incoming migration lost its agent mid-copy; stopping "
				  "it (the guest runs on at its source)",
				  vm->inst.name);
			vm->inst.stop_requested = true;
			vm_force_stop(vm, adopted_in_stopped_cb, NULL);
			return true;
		}
		/* The copy is over: the guest is this QEMU's (running, or paused first).
		 * Whether it still exports its disks the last agent knew (vm_nbd, in
		 * memory): the resume stops its NBD server, "not running" is fine. */
		vm->vm_migrating_in = true;
		vm->vm_nbd = true;
		if (!strcmp(status, "running"))
			migrate_in_running(vm);
		return false;
	}
	if (!strcmp(role, "out")) {
		ad = xcalloc(1, sizeof(*ad));
		ad->agent = vm->inst.agent;
		snprintf(ad->name, sizeof(ad->name), "%s", vm->inst.name);
		ad->paused = json_get_bool(st, "paused", false);
		uv_timer_init(ad->agent->loop, &ad->timer);
		ad->timer.data = ad;
		log_info("vm %s: found mid-migration (%s); following it to its end", vm->inst.name,
			 status);
		uv_timer_start(&ad->timer, adopted_poll_cb, 0, 0);
	}
	json_object_put(st);
	return false;
}

/*
 * vm was adopted at start-up without a live QEMU (vmadopt.c): whatever its
 * migration.json says, no migration of it goes on here. The file is not synced (a
 * power cut leaves one behind with no QEMU), and kept it would make migrate-state
 * answer "out" for ever - the controller's settling waits while the source says so.
 */
void migrate_adopted_dead(struct vm *vm)
{
	struct json_object *st = state_read(vm);

	if (st == NULL)
		return;
	log_warnx("vm %s: its QEMU is gone; it plays no part in migration %s any more",
		  vm->inst.name, json_get_str(st, "op", "?"));
	json_object_put(st);
	state_remove(vm);
}

static const struct json_field state_fields[] = {
	{"what", JK_STRING, true, NULL},
	{"name", JK_STRING, true, name_check},
	{NULL, 0, false, NULL},
};

/*
 * {"what": "migrate-state", "name": N} -> {"present": bool, "state": S, "role":
 * "out"|"in"|null, "busy": bool}: whether VM or container N is here, its state, the
 * part a VM still plays in a migration (its migration.json), and whether a command
 * is still at work on it (a container's cold move step goes on without the
 * controller). The controller settles a migration with it after a restart. Answered
 * at once.
 */
int migrate_state_query(struct agent *a, struct json_object *body, struct json_object **answer,
			struct kerr *err)
{
	struct vm *vm;
	struct ctr *ctr;
	struct json_object *st;

	if (json_fields_check(body, state_fields, err) < 0)
		return -1;
	vm = vm_find(a, json_get_str(body, "name", ""));
	ctr = vm ? NULL : oci_find(a, json_get_str(body, "name", ""));
	*answer = json_object_new_object();
	json_object_object_add(*answer, "present", json_object_new_boolean(vm || ctr));
	if (ctr) {
		json_object_object_add(*answer, "state",
				       json_object_new_string(inst_state_name(ctr->inst.state)));
		json_object_object_add(*answer, "role", NULL);
		json_object_object_add(*answer, "busy",
				       json_object_new_boolean(ctr->inst.op != NULL));
		return 0;
	}
	if (vm == NULL)
		return 0;
	json_object_object_add(*answer, "busy", json_object_new_boolean(vm->inst.op != NULL));
	st = state_read(vm);
	json_object_object_add(*answer, "state",
			       json_object_new_string(inst_state_name(vm->inst.state)));
	json_object_object_add(*answer, "role",
			       st ? json_object_get(json_object_object_get(st, "role")) : NULL);
	json_object_put(st);
	return 0;
}
