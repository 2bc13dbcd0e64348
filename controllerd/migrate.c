/*
 * migrate.c - live migration of a VM to another host: the controller's half.
 *
 * POST /api/v1/instances/{name}/actions/migrate checks everything before anything
 * starts (each refusal changes nothing), picks the target (the scheduler's filters,
 * without the source host; KVM/TCG parity) and starts a parent operation of kind
 * "migrate" on target "instances/NAME", so the instance is busy for every other verb.
 * The parent runs as child operations, one per agent command (agentd/migrate.c), each
 * an ordinary operation row the agent reports on:
 *
 *   prepare-target  migrate-in on the target: QEMU -incoming, listening; -> uri
 *                   (and nbd_uri when the VM has disks on the local pool: the
 *                   target made them empty and serves them over NBD, -S held)
 *   mirror-disks    migrate-out on the source, local disks only: blockdev-mirror of
 *                   each to nbd_uri until all are in sync (disk_remaining)
 *   precopy         migrate-out on the source: QMP migrate to uri, progress every
 *                   second (the parent's result.migration and phase follow it);
 *                   with local disks the mirrors end (block-job-cancel) before the
 *                   switchover report, and migrate-resume stops the target's NBD
 *                   server before its guest runs
 *   switchover      migrate-out succeeded: the target runs the guest. In one
 *                   transaction the instance's host becomes the target and the parent
 *                   succeeds; then every host's network document is rebuilt.
 *                   A guest paused first (TCG, busy) is resumed on the target
 *                   (migrate-resume) before the parent succeeds.
 *   postcopy        where the target may (its fact "postcopy") and every disk is
 *                   shared, the source may switch to post-copy (at once under TCG,
 *                   when pre-copy does not converge under KVM: agentd/migrate_ladder.c);
 *                   the guest then runs on the target and a cancel is refused. If it
 *                   breaks, the source removes its half and reports result.lost: the
 *                   target's half goes too and the instance becomes "missing".
 *   cleanup         on failure or cancel: the target's half is removed with a forced
 *                   delete that keeps the shared disks (migrate-cleanup; the local ones
 *                   the target made go); the VM ran on the source all along, and
 *                   the database never moved it.
 *
 * A container moves cold through the same operation (phases stop-source,
 * start-target, cleanup): its steps' ends go to migrate_cold.c.
 *
 * result.timings says where the time went: each phase above as the controller sees it
 * (timing_phase(): request, target_prepare, net_ready, source, switchover, resume, or
 * before_cleanup and cleanup), and each agent's own steps (timings.target and
 * timings.source, from their results). docs/architecture.md has the critical path.
 *
 * migrate_cancel() stops a migration before switchover. Until the generic cancel of
 * operations (the jobs work) exists, POST /api/v1/operations/{id}/actions/cancel
 * reaches it through the job engine's cancel (jobs.c, kind "migrate").
 *
 * Faults (issue 13 item 7). Each agent keeps its part of a migration on disk
 * (agentd/migrate.c: migration.json) and settles it itself when it restarts: a source
 * follows its QEMU's copy to the end, a target drops an incoming QEMU it lost mid-copy.
 * The controller then *settles* the migration: it asks both ends ({"what":
 * "migrate-state"}) until the source has no migration left, and
 *   the source has the VM         -> it stays there; the target's half is removed
 *   the target alone has it       -> switchover in the database (resumed if paused)
 *   neither                       -> failed, the VM is lost (says so)
 * It settles when the agent running the migration's current step restarted
 * (migrate_host_restarted(), from the heartbeat that shows it), and after a controller
 * restart (migrate_job_resume(), the job engine's resume slot: the parent's row holds
 * source, target and arguments; the steps' rows were failed by jobs_resume()).
 */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "migrate.h"
#include "scheduler.h"
#include "util.h"
#include "valid.h"

#define MIGRATE_NET_WAIT_MS 30000 /* the target's networks, at most */

static const char *const phase_names[] = {
	[PHASE_PREPARE_TARGET] = "prepare-target", [PHASE_PRECOPY] = "precopy",
	[PHASE_SWITCHOVER] = "switchover",	   [PHASE_CLEANUP] = "cleanup",
	[PHASE_STOP_SOURCE] = "stop-source",	   [PHASE_START_TARGET] = "start-target",
};

static struct migration *migrations;

struct evacuation;
static void evac_note(struct migration *m);
static void settles_check(void);

/* Whether m's instance is in any host's network document: it has a NIC on a network
 * (each has an address row, which the documents are built from; a NIC on no network,
 * user-mode, is in none). */
static bool instance_wired(const struct migration *m)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT 1 FROM addresses WHERE instance_id = ?");
	bool wired;

	sqlite3_bind_int64(st, 1, m->iid);
	wired = sqlite3_step(st) != SQLITE_DONE; /* an error counts as wired: rebuild */
	sqlite3_finalize(st);
	return wired;
}

/*
 * While m runs, its target wires the instance's NICs too (MIGRATE_WIRED_INSTANCES):
 * temp.migrating is per connection and never in the schema, as migrations live in
 * memory. Every host's network document is rebuilt - unless no document names the
 * instance (no NIC on a network): then no host gets its own again for nothing (an agent
 * that has not taken it for a while applies it, running ip, bridge and nft to compare,
 * beside the target's QEMU starting). Unwiring twice (at the switchover, then as m
 * ends) rebuilds once.
 */
void migrate_wired_set(struct migration *m, bool on)
{
	sqlite3_stmt *st;

	if (!on && !m->wired)
		return;
	m->wired = on;
	st = db_prepare(ctl.db, on ? "INSERT OR REPLACE INTO temp.migrating "
				     "(instance_id, host_id) VALUES (?, ?)"
				   : "DELETE FROM temp.migrating WHERE instance_id = ?");

	sqlite3_bind_int64(st, 1, m->iid);
	if (on)
		sqlite3_bind_int64(st, 2, m->dst->id);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warnx("migration %s: temp.migrating: %s", m->id, sqlite3_errmsg(ctl.db));
	sqlite3_finalize(st);
	if (instance_wired(m))
		netsync_all();
}

/* Start-up: the table migrate_wired_set() keeps. Returns 0, or -1 with err. */
int migrate_db_init(sqlite3 *db, struct kerr *err)
{
	return db_exec(db,
		       "CREATE TEMP TABLE IF NOT EXISTS migrating (instance_id INTEGER PRIMARY "
		       "KEY, host_id INTEGER NOT NULL)",
		       err);
}

static void prep_answer_cb(struct json_object *body, const char *error, void *cls)
{
	(void)cls;
	if (error || !json_get_bool(body, "preparing", true))
		log_info("migration: the source did not prepare (its migrate-out will): %s",
			 error ? error : json_get_str(body, "why", "?"));
}

static void unprep_answer_cb(struct json_object *body, const char *error, void *cls)
{
	(void)body;
	(void)cls;
	if (error)
		log_info("migration: the source's prepare stays until it expires: %s", error);
}

/*
 * The source's half of a migration gets ready while the target prepares: its QEMU
 * loads this migration's client credentials and parameters (agentd/migrate.c,
 * migrate-prepare), so migrate-out starts with the copy. A query, not a step: its
 * answer is not waited for, and a prepare lost or refused only costs migrate-out the
 * time to do it itself.
 */
static void prep_send(struct migration *m)
{
	struct json_object *q = json_object_new_object(), *v;

	json_object_object_add(q, "what", json_object_new_string("migrate-prepare"));
	json_object_object_add(q, "name", json_object_new_string(m->name));
	json_object_object_add(q, "migration", json_object_new_string(m->id));
	json_object_object_add(q, "tls", json_object_get(m->tls_out));
	if (json_object_object_get_ex(m->args, "downtime_ms", &v))
		json_object_object_add(q, "downtime_ms", json_object_get(v));
	if (json_object_object_get_ex(m->args, "bandwidth_mbps", &v))
		json_object_object_add(q, "bandwidth_mbps", json_object_get(v));
	json_object_object_add(q, "postcopy", json_object_new_string(m->postcopy));
	m->prep_sent = true;
	agentlink_query(m->src, q, prep_answer_cb, NULL);
}

static void migration_free(struct migration *m)
{
	struct migration **pp;

	if (m->prep_sent && !m->out_sent && m->src) {
		/* Ended before its copy: the source's prepared credentials go now. */
		struct json_object *q = json_object_new_object();

		json_object_object_add(q, "what", json_object_new_string("migrate-unprepare"));
		json_object_object_add(q, "name", json_object_new_string(m->name));
		json_object_object_add(q, "migration", json_object_new_string(m->id));
		agentlink_query(m->src, q, unprep_answer_cb, NULL);
	}
	migrate_wired_set(m, false);
	if (m->evac)
		evac_note(m);
	for (pp = &migrations; *pp; pp = &(*pp)->next)
		if (*pp == m) {
			*pp = m->next;
			break;
		}
	json_object_put(m->spec);
	json_object_put(m->args);
	json_object_put(m->result);
	json_object_put(m->tls_in);
	json_object_put(m->tls_out);
	json_object_put(m->ans_src);
	json_object_put(m->ans_dst);
	free(m);
}

static struct migration *migration_by_child(const char *child)
{
	for (struct migration *m = migrations; m; m = m->next)
		if (!strcmp(m->child, child))
			return m;
	return NULL;
}

static struct migration *migration_by_id(const char *id)
{
	for (struct migration *m = migrations; m; m = m->next)
		if (!strcmp(m->id, id))
			return m;
	return NULL;
}

/*
 * Does a migration of instance name run with h as one of its ends? Its target reports
 * the incoming instance in every heartbeat before the database places it there (and
 * its source still reports it after the switchover, until its copy goes): that is no
 * unmanaged instance (drift.c).
 */
bool migrate_instance_on(const struct host *h, const char *name)
{
	for (struct migration *m = migrations; m; m = m->next)
		if ((m->src == h || m->dst == h) && !strcmp(m->name, name))
			return true;
	return false;
}

/* ---- request ---------------------------------------------------------------------------- */

static int mode_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "live") && strcmp(s, "offline") && strcmp(s, "cold"))
		return err_input(err, 400, f, "'%s' is live, cold or offline", f);
	return 0;
}

static int postcopy_check(struct json_object *v, const char *f, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "auto") && strcmp(s, "never") && strcmp(s, "always"))
		return err_input(err, 400, f, "'%s' is auto, never or always", f);
	return 0;
}

static int downtime_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 1 || n > 600000)
		return err_input(err, 400, f, "'%s' must be 1..600000 (milliseconds)", f);
	return 0;
}

static int bandwidth_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 1 || n > 1000000)
		return err_input(err, 400, f, "'%s' must be 1..1000000 (Mbit/s)", f);
	return 0;
}

static const struct json_field migrate_fields[] = {
	{"host", JK_STRING, false, name_check},
	{"mode", JK_STRING, false, mode_check},
	{"downtime_ms", JK_INT, false, downtime_check},
	{"bandwidth_mbps", JK_INT, false, bandwidth_check},
	{"postcopy", JK_STRING, false, postcopy_check},
	{NULL, 0, false, NULL},
};

/* What the instance row holds that a migration needs. */
struct mig_inst {
	int64_t id;
	char state[32];
	struct host *host;
	struct json_object *spec;
};

static bool inst_load(const char *name, struct mig_inst *i)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT i.id, i.state, h.name, i.spec FROM instances "
					      "i LEFT JOIN hosts h ON h.id = i.host_id WHERE "
					      "i.name = ?");
	bool found = false;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		found = true;
		i->id = sqlite3_column_int64(st, 0);
		snprintf(i->state, sizeof(i->state), "%s", sqlite3_column_text(st, 1));
		i->host = sqlite3_column_type(st, 2) == SQLITE_TEXT
				  ? host_find((const char *)sqlite3_column_text(st, 2))
				  : NULL;
		i->spec = json_tokener_parse((const char *)sqlite3_column_text(st, 3));
	}
	sqlite3_finalize(st);
	return found && i->spec;
}

/* Every disk of spec on the shared pool: memory is all that moves. */
static bool disks_shared(struct json_object *spec, char *which, size_t len)
{
	struct json_object *disks = json_object_object_get(spec, "disks");

	for (size_t k = 0; disks && k < json_array_len(disks); k++) {
		struct json_object *d = json_object_array_get_idx(disks, k);

		if (strcmp(json_get_str(d, "pool", ""), "shared")) {
			snprintf(which, len, "%s", json_get_str(d, "name", "?"));
			return false;
		}
	}
	return true;
}

static const char *host_accel(const struct host *h)
{
	return !strcmp(json_get_str(h->facts, "accel", "tcg"), "kvm") ? "kvm" : "tcg";
}

/*
 * Choose the target for the VM of spec, now on src: want (a host the caller named,
 * or NULL: the scheduler's best other host). The placement record (with every
 * rejected host and why, src and accelerator mismatches included) goes to
 * *placement. Returns the host, or NULL with err (422: nothing fits).
 */
static struct host *target_choose(struct json_object *spec, struct host *src, struct host *want,
				  struct json_object **placement, struct kerr *err)
{
	struct sched_request sr = {0};
	struct json_object *netkeep, *mem = json_object_object_get(spec, "memory");
	struct json_object *cands, *rejected, *o;
	const char *accel = json_get_str(spec, "accel", "tcg");
	struct host *chosen = NULL, *h;
	struct kerr perr;

	sr.vcpus = (int)json_get_int(spec, "vcpus", 1);
	sr.memory_mb = json_get_int(mem, "mb", json_get_int(mem, "max_mb", 256));
	sr.nested = json_get_bool(spec, "nested", false);
	sr.needs_shared_pool = true;
	sr.pin_host = want ? want->name : NULL;
	sr.anti_affinity = json_get_str(spec, "anti_affinity", NULL);
	netkeep = nics_sched_request(spec, &sr);
	instances_place(&sr, placement, &perr);
	nics_sched_free(&sr);
	json_object_put(netkeep);
	cands = json_object_object_get(*placement, "candidates");
	rejected = json_object_object_get(*placement, "rejected");
	/* The scheduler's order, less the source and hosts of the other accelerator. */
	for (size_t k = 0; cands && k < json_array_len(cands); k++) {
		const char *name = json_get_str(json_object_array_get_idx(cands, k), "host", "");
		const char *why = NULL;

		h = host_find(name);
		if (h == NULL)
			continue;
		if (h == src)
			why = "the instance runs there";
		else if (strcmp(json_get_str(spec, "type", "vm"), "container") &&
			 strcmp(host_accel(h), accel))
			why = !strcmp(accel, "kvm") ? "a KVM guest cannot move live to a TCG host"
						    : "a TCG guest cannot move live to a KVM host";
		if (why == NULL) {
			/* The others are recorded too: the source is always named. */
			if (chosen == NULL)
				chosen = h;
			continue;
		}
		o = json_object_new_object();
		json_object_object_add(o, "host", json_object_new_string(name));
		json_object_object_add(o, "reason", json_object_new_string(why));
		json_object_array_add(rejected, o);
	}
	json_object_object_add(*placement, "host",
			       chosen ? json_object_new_string(chosen->name) : NULL);
	if (chosen)
		return chosen;
	/* The named host's own reason is the clearest answer. */
	for (size_t k = 0; want && rejected && k < json_array_len(rejected); k++) {
		o = json_object_array_get_idx(rejected, k);
		if (!strcmp(json_get_str(o, "host", ""), want->name)) {
			err_input(err, 422, "host", "host %s cannot take %s: %s", want->name,
				  json_get_str(spec, "name", ""), json_get_str(o, "reason", ""));
			return NULL;
		}
	}
	err_input(err, 422, "host", "no other host can take %s (see placement.rejected)",
		  json_get_str(spec, "name", ""));
	return NULL;
}

/* ---- certificates --------------------------------------------------------------------- */

#define MIGRATE_CERT_S 3600 /* a migration's certificates expire after this */

static char *pem_text(BIO *b)
{
	char *data;
	long n = BIO_get_mem_data(b, &data);
	char *out = xmalloc((size_t)n + 1);

	memcpy(out, data, (size_t)n);
	out[n] = '\0';
	return out;
}

static int ext_add(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;

	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	if (ext == NULL)
		return -1;
	X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return 0;
}

/* A certificate for key with subject cn, signed by (ca, ca_key), or self-signed. */
static X509 *cert_make(EVP_PKEY *key, const char *cn, X509 *ca, EVP_PKEY *ca_key,
		       const char *const *exts)
{
	X509 *cert = X509_new();
	X509_NAME *name;
	unsigned char serial[16];
	BIGNUM *bn;
	bool ok = true;

	X509_set_version(cert, 2);
	random_bytes(serial, sizeof(serial));
	serial[0] &= 0x7f;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
	BN_free(bn);
	/* Clocks of hosts differ a little; the validity is short anyway. */
	X509_gmtime_adj(X509_getm_notBefore(cert), -300);
	X509_gmtime_adj(X509_getm_notAfter(cert), MIGRATE_CERT_S);
	X509_set_pubkey(cert, key);
	name = X509_get_subject_name(cert);
	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"Kumo", -1, -1,
				   0);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(cert, ca ? X509_get_subject_name(ca) : name);
	for (size_t k = 0; exts[k]; k += 2)
		ok = ok && ext_add(cert, ca ? ca : cert, OBJ_txt2nid(exts[k]), exts[k + 1]) == 0;
	if (!ok || X509_sign(cert, ca_key ? ca_key : key, EVP_sha256()) == 0) {
		X509_free(cert);
		return NULL;
	}
	return cert;
}

/* {"ca": PEM, "cert": PEM, "key": PEM} for one end. */
static struct json_object *creds_json(X509 *ca, X509 *cert, EVP_PKEY *key)
{
	struct json_object *o = json_object_new_object();
	BIO *b[3] = {BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem())};
	static const char *const names[] = {"ca", "cert", "key"};

	PEM_write_bio_X509(b[0], ca);
	PEM_write_bio_X509(b[1], cert);
	PEM_write_bio_PrivateKey(b[2], key, NULL, NULL, 0, NULL, NULL);
	for (int k = 0; k < 3; k++) {
		_cleanup_free_ char *text = pem_text(b[k]);

		json_object_object_add(o, names[k], json_object_new_string(text));
		BIO_free(b[k]);
	}
	return o;
}

/*
 * Issue m's TLS credentials: a CA made for this migration alone (its key never leaves
 * this function, so nothing else can ever be signed by it), a server certificate for
 * the target's underlay address and a client certificate for the source, each valid
 * for an hour. Both ends verify their peer. They travel on the sealed link and are
 * never stored. Returns 0, or -1 with err.
 */
static int creds_issue(struct migration *m, const char *target_ip, struct kerr *err)
{
	EVP_PKEY *ca_key = EVP_EC_gen("P-256"), *srv_key = EVP_EC_gen("P-256"),
		 *cli_key = EVP_EC_gen("P-256");
	X509 *ca = NULL, *srv = NULL, *cli = NULL;
	_cleanup_free_ char *ca_cn = xasprintf("kumo migration %.32s", m->id);
	_cleanup_free_ char *san = xasprintf("IP:%s,DNS:%s", target_ip, target_ip);
	const char *const ca_exts[] = {"basicConstraints", "critical,CA:TRUE", "keyUsage",
				       "critical,keyCertSign", NULL};
	const char *const srv_exts[] = {"basicConstraints",
					"critical,CA:FALSE",
					"keyUsage",
					"critical,digitalSignature,keyEncipherment",
					"extendedKeyUsage",
					"serverAuth",
					"subjectAltName",
					san,
					NULL};
	const char *const cli_exts[] = {"basicConstraints",
					"critical,CA:FALSE",
					"keyUsage",
					"critical,digitalSignature,keyEncipherment",
					"extendedKeyUsage",
					"clientAuth",
					NULL};
	int ret = -1;

	if (ca_key && srv_key && cli_key)
		ca = cert_make(ca_key, ca_cn, NULL, NULL, ca_exts);
	if (ca) {
		srv = cert_make(srv_key, target_ip, ca, ca_key, srv_exts);
		cli = cert_make(cli_key, m->src->name, ca, ca_key, cli_exts);
	}
	if (srv && cli) {
		m->tls_in = creds_json(ca, srv, srv_key);
		m->tls_out = creds_json(ca, cli, cli_key);
		json_object_object_add(m->tls_out, "hostname", json_object_new_string(target_ip));
		ret = 0;
	} else {
		err_set(err, 0, "cannot issue the migration's TLS certificates");
	}
	X509_free(ca);
	X509_free(srv);
	X509_free(cli);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(srv_key);
	EVP_PKEY_free(cli_key);
	return ret;
}

/* ---- the steps ----------------------------------------------------------------------- */

static void fail(struct migration *m, const char *why);

/* m's result.timings, made on first use. */
static struct json_object *timings_of(struct migration *m)
{
	struct json_object *t = json_object_object_get(m->result, "timings");

	if (t == NULL) {
		t = json_object_new_object();
		json_object_object_add(m->result, "timings", t);
	}
	return t;
}

/*
 * The controller's timing of m: the phase that ends now took now - m->mark_ms, kept as
 * result.timings.NAME (ms), and the next one starts. These are the critical path as
 * the controller sees it (its own work, a round trip to an agent and that agent's
 * step); the agents' marks of their own steps go under timings.target and
 * timings.source (agentd/migrate.c), so one run in the lab shows where time went.
 */
static void timing_phase(struct migration *m, const char *name)
{
	int64_t now = now_ms();

	json_object_object_add(timings_of(m), name, json_object_new_int64(now - m->mark_ms));
	m->mark_ms = now;
}

/* An agent's own marks (its result's "timings", if any) as timings.WHO. */
static void timing_agent(struct migration *m, const char *who, struct json_object *marks)
{
	if (marks)
		json_object_object_add(timings_of(m), who, json_object_get(marks));
}

/* The whole: from the call to now, in result.total_ms and result.timings.total_ms. */
static void timing_total(struct migration *m)
{
	int64_t total = now_ms() - m->started_ms;

	json_object_object_add(m->result, "total_ms", json_object_new_int64(total));
	json_object_object_add(timings_of(m), "total_ms", json_object_new_int64(total));
}

void migrate_parent_update(struct migration *m, int progress)
{
	op_update(m->id, "running", progress, phase_names[m->phase], json_object_get(m->result),
		  NULL);
}

/* The parent's end (final status), then it is forgotten. */
void migrate_finish(struct migration *m, const char *status, const char *error)
{
	snprintf(m->outcome, sizeof(m->outcome), "%s", status);
	if (error && !m->failure[0])
		snprintf(m->failure, sizeof(m->failure), "%s", error);
	timing_total(m);
	op_update(m->id, status, !strcmp(status, "succeeded") ? 100 : -1,
		  !strcmp(status, "succeeded") ? "done" : phase_names[m->phase],
		  json_object_get(m->result), error);
	log_info("migration %s of %s %s -> %s: %s%s%s", m->id, m->name, m->src->name, m->dst->name,
		 status, error ? ": " : "", error ? error : "");
	migration_free(m);
}

/* Remove the target's half; the parent fails (or is cancelled) once it is gone. */
static void cleanup_start(struct migration *m, const char *why)
{
	struct json_object *args = json_object_new_object();

	snprintf(m->failure, sizeof(m->failure), "%s", why);
	timing_phase(m, "before_cleanup_ms");
	m->phase = PHASE_CLEANUP;
	migrate_parent_update(m, -1);
	json_object_object_add(args, "force", json_object_new_boolean(true));
	json_object_object_add(args, "keep_disks", json_object_new_boolean(true));
	migrate_child_start(m, m->dst, "migrate-cleanup", "delete", args);
}

static void fail(struct migration *m, const char *why)
{
	if (m->phase == PHASE_CLEANUP) {
		/* The clean-up itself failed: say both. */
		char both[512];

		snprintf(both, sizeof(both), "%s; cleaning the target %s failed too: %s",
			 m->failure, m->dst->name, why);
		migrate_finish(m, m->cancel ? "cancelled" : "failed", both);
		return;
	}
	cleanup_start(m, why);
}

/* The guest runs on the target: move the instance there in the database, at once. */
static void switchover(struct migration *m, struct json_object *out_result)
{
	/* Paused first (TCG), or held paused after a copy with local disks (-S). */
	bool paused = json_object_object_get(out_result, "paused_ms") ||
		      json_get_bool(out_result, "target_paused", false);
	sqlite3_stmt *st;
	struct kerr err;
	int rc;

	/* The source's step ended with its report of the completed copy. */
	if (m->phase == PHASE_PRECOPY)
		timing_phase(m, "source_ms");
	timing_agent(m, "source", json_object_object_get(out_result, "timings"));
	m->phase = PHASE_SWITCHOVER;
	if (json_object_object_get(m->spec, "host"))
		json_object_object_add(m->spec, "host", json_object_new_string(m->dst->name));
	json_object_object_foreach(out_result, key, val)
	{
		/* The source's total is the copy's; the operation's counts from the call. */
		if (!strcmp(key, "total_ms"))
			json_object_object_add(m->result, "copy_ms", json_object_get(val));
		else if (strcmp(key, "instance") && strcmp(key, "timings"))
			json_object_object_add(m->result, key, json_object_get(val));
	}
	/* A source's op-done carries its marks in its statistics too: timings.source has them. */
	if (json_object_object_get(m->result, "migration"))
		json_object_object_del(json_object_object_get(m->result, "migration"), "timings");
	json_object_object_add(m->result, "host", json_object_new_string(m->dst->name));
	if (db_begin(ctl.db) < 0) {
		log_warnx("migration %s: the database is busy at switchover", m->id);
		return;
	}
	/* The source's report (its QEMU's pid) is void now; updated_at 0 makes the
	 * target's first report count at once: instance_state_set() keeps an unchanged
	 * state's report only every REPORT_PERSIST_MS. */
	st = db_prepare(ctl.db, "UPDATE instances SET host_id = ?, spec = ?, state = ?, "
				"report = '{}', updated_at = 0 WHERE id = ?");
	sqlite3_bind_int64(st, 1, m->dst->id);
	sqlite3_bind_text(st, 2, json_text(m->spec), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, paused ? "paused" : "running", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, m->iid);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		log_warnx("migration %s: cannot move %s: %s", m->id, m->name,
			  sqlite3_errmsg(ctl.db));
		db_rollback(ctl.db);
		return;
	}
	timing_phase(m, "switchover_ms");
	timing_total(m);
	if (paused) {
		/* Paused first (TCG) or held (local disks): it runs again on the target. */
		migrate_parent_update(m, 95);
		if (db_commit(ctl.db, &err) < 0)
			log_warnx("migration %s: %s", m->id, err.msg);
		/* Its row is the target's now: the extra wiring would list its port twice,
		 * and the target would refuse that document. */
		migrate_wired_set(m, false);
		migrate_child_start(m, m->dst, "migrate-resume", "resume", NULL);
		return;
	}
	op_update(m->id, "succeeded", 100, "done", json_object_get(m->result), NULL);
	if (db_commit(ctl.db, &err) < 0)
		log_warnx("migration %s: %s", m->id, err.msg);
	migrate_wired_set(m, false); /* as above; it rebuilds every host's document */
	log_info("migration %s: %s now runs on %s", m->id, m->name, m->dst->name);
	snprintf(m->outcome, sizeof(m->outcome), "succeeded");
	migration_free(m);
}

/*
 * Start child operation kind (an agent command action with args, consumed) on h for
 * m. A child whose operation cannot be made fails the migration.
 */
void migrate_child_start(struct migration *m, struct host *h, const char *kind, const char *action,
			 struct json_object *args)
{
	_cleanup_free_ char *target = xasprintf("migrations/%s", m->id);
	struct json_object *res = json_object_new_object(), *op;
	struct kerr err;

	json_object_object_add(res, "parent", json_object_new_string(m->id));
	op = op_create(kind, target, h, res, &err);
	if (op == NULL) {
		json_object_put(args);
		m->child[0] = '\0';
		migrate_finish(m, "failed", err.msg);
		return;
	}
	snprintf(m->child, sizeof(m->child), "%s", json_get_str(op, "id", ""));
	m->child_host = h;
	/* From here the source's prepare is migrate-out's (migration_free()). */
	if (!strcmp(kind, "migrate-out"))
		m->out_sent = true;
	json_object_put(op);
	instances_cmd_send(h, m->child, action, m->spec, args);
	json_object_put(args);
}

static void out_start(struct migration *m, const char *uri)
{
	struct json_object *args = json_object_new_object(), *v;

	timing_phase(m, "net_ready_ms");
	m->phase = PHASE_PRECOPY;
	migrate_parent_update(m, 10);
	json_object_object_add(args, "uri", json_object_new_string(uri));
	if (m->nbd_uri[0])
		json_object_object_add(args, "nbd_uri", json_object_new_string(m->nbd_uri));
	json_object_object_add(args, "tls", json_object_get(m->tls_out));
	if (json_object_object_get_ex(m->args, "downtime_ms", &v))
		json_object_object_add(args, "downtime_ms", json_object_get(v));
	if (json_object_object_get_ex(m->args, "bandwidth_mbps", &v))
		json_object_object_add(args, "bandwidth_mbps", json_object_get(v));
	json_object_object_add(args, "postcopy", json_object_new_string(m->postcopy));
	json_object_object_add(args, "migration", json_object_new_string(m->id));
	migrate_child_start(m, m->src, "migrate-out", "migrate-out", args);
}

/*
 * A child's op-done (agentlink.c): the migration goes on, or cleans up. op is the
 * child operation (JSON); result and error as the agent sent them. The child row
 * itself is finished here too. Returns 0, or -1 when op is no migration's child.
 */
int migrate_agent_done(struct host *h, struct json_object *op, const char *status,
		       struct json_object *result, const char *error)
{
	const char *id = json_get_str(op, "id", "");
	const char *kind = json_get_str(op, "kind", "");
	struct migration *m = migration_by_child(id);
	bool ok = !strcmp(status, "succeeded");
	char why[300];

	op_update(id, ok ? "succeeded" : "failed", ok ? 100 : -1, ok ? "done" : "failed",
		  result ? json_object_get(result) : NULL,
		  ok ? NULL : (error ? error : "the agent reported a failure"));
	if (m == NULL)
		return strncmp(kind, "migrate-", 8) ? -1 : 0;
	m->child[0] = '\0';
	if (m->cold)
		return migrate_cold_done(m, h, kind, ok, result, error);
	if (!strcmp(kind, "migrate-in")) {
		timing_phase(m, "target_prepare_ms");
		timing_agent(m, "target", json_object_object_get(result, "timings"));
		if (!ok) {
			snprintf(why, sizeof(why), "the target %s could not prepare: %s",
				 m->dst->name, error ? error : "failed");
			/* It removed what it made itself. */
			migrate_finish(m, m->cancel ? "cancelled" : "failed",
				       m->cancel ? "cancelled" : why);
		} else if (m->cancel) {
			cleanup_start(m, "cancelled");
		} else {
			/* The copy starts once every host wired the target (or after a while). */
			snprintf(m->uri, sizeof(m->uri), "%s", json_get_str(result, "uri", ""));
			snprintf(m->nbd_uri, sizeof(m->nbd_uri), "%s",
				 json_get_str(result, "nbd_uri", ""));
			m->net_wait = true;
			m->net_lagging = 0;
			m->net_deadline = now_ms() + MIGRATE_NET_WAIT_MS;
			migrate_net_waits_check(NULL);
		}
	} else if (!strcmp(kind, "migrate-out")) {
		if (ok) {
			switchover(m, result);
			return 0;
		}
		snprintf(why, sizeof(why), "%s",
			 m->cancel ? "cancelled"
			 : error   ? error
				   : "failed");
		if (json_get_bool(result, "lost", false)) {
			/* Post-copy broke: the source removed its half already; the target's
			 * goes, then the database says the VM is lost. */
			m->lost = true;
			m->cancel = false;
			json_object_object_add(m->result, "lost", json_object_new_boolean(true));
			json_object_object_add(
				m->result, "strategy",
				json_object_get(json_object_object_get(result, "strategy")));
			json_object_object_add(m->result, "host", NULL);
			cleanup_start(m, why);
			return 0;
		}
		json_object_object_add(m->result, "host", json_object_new_string(m->src->name));
		cleanup_start(m, why);
	} else if (!strcmp(kind, "migrate-resume")) {
		if (!ok) {
			snprintf(why, sizeof(why),
				 "migrated to %s, but the guest did not resume: %s", m->dst->name,
				 error ? error : "failed");
			migrate_finish(m, "failed", why);
			return 0;
		}
		timing_phase(m, "resume_ms");
		/* The target's own marks (agentd/vmaction.c): its load, cont, running. */
		timing_agent(m, "resume", json_object_object_get(result, "timings"));
		/* The target's report (its QEMU, running) is the instance's now. */
		if (h && json_object_object_get(result, "instance"))
			instances_report(h, json_object_object_get(result, "instance"), "migrated");
		migrate_finish(m, "succeeded", NULL);
	} else if (!strcmp(kind, "migrate-cleanup")) {
		timing_phase(m, "cleanup_ms");
		/* Its restarted agent may have removed an incoming QEMU it lost itself. */
		if (!ok && error && strstr(error, "there is no instance"))
			ok = true;
		if (m->lost)
			instances_lost(m->name, m->failure);
		if (!ok) {
			fail(m, error ? error : "failed");
			return 0;
		}
		migrate_finish(m, m->cancel ? "cancelled" : "failed", m->failure);
	}
	return 0;
}

/* The agent refused a child outright: as a failed op-done. Returns -1 if not ours. */
int migrate_op_nack(const char *op_id, const char *why)
{
	struct json_object *op = op_get(op_id);
	int ret = -1;

	if (op && !strncmp(json_get_str(op, "kind", ""), "migrate-", 8))
		ret = migrate_agent_done(NULL, op, "failed", NULL, why);
	json_object_put(op);
	return ret;
}

/*
 * A child's op-progress: the migrate-out's "migration" statistics become the parent's
 * result.migration and its phase (precopy, postcopy, cleanup). Each is one
 * operation-updated event.
 */
void migrate_agent_progress(const char *op_id, struct json_object *body)
{
	struct migration *m = migration_by_child(op_id);
	struct json_object *stats = json_object_object_get(body, "migration");
	int progress = (int)json_get_int(body, "progress", 0);

	if (m == NULL || m->phase != PHASE_PRECOPY || stats == NULL)
		return;
	/* The source's QEMU finished: the guest is the target's from now on, whether or
	 * not the source's clean-up (and its op-done) ever comes. */
	if (!strcmp(json_get_str(stats, "status", ""), "completed")) {
		struct json_object *r = json_object_new_object();
		static const char *const keys[] = {"strategy",	"ladder",   "downtime_ms",
						   "paused_ms", "total_ms", "target_paused",
						   "timings",	NULL};

		for (size_t k = 0; keys[k]; k++)
			if (json_object_object_get(stats, keys[k]))
				json_object_object_add(
					r, keys[k],
					json_object_get(json_object_object_get(stats, keys[k])));
		/* The source's marks go to result.timings.source, not result.migration. */
		json_object_object_del(stats, "timings");
		json_object_object_add(r, "migration", json_object_get(stats));
		switchover(m, r);
		json_object_put(r);
		return;
	}
	json_object_object_add(m->result, "migration", json_object_get(stats));
	if (!strcmp(json_get_str(body, "phase", ""), "postcopy"))
		m->postcopy_active = true;
	op_update(m->id, "running", progress, json_get_str(body, "phase", "precopy"),
		  json_object_get(m->result), NULL);
}

/*
 * Cron and heartbeats: a migration whose target is ready starts its copy once the
 * hosts applied the network documents that wire the target (netsync.c), so the
 * guest's first packets there already reach its peers. applied: the host whose
 * heartbeat says it applied another document - only the migrations waiting for it
 * (or not yet knowing for whom) look again, so at thousands of hosts a beat costs a
 * query only where it can end a wait; NULL (cron, a target just ready): all of them.
 */
void migrate_net_waits_check(struct host *applied)
{
	char why[256];
	int64_t lagging;

	settles_check();
	for (struct migration *m = migrations, *next; m; m = next) {
		next = m->next;
		if (!m->net_wait)
			continue;
		if (m->cancel) {
			m->net_wait = false;
			cleanup_start(m, "cancelled");
			continue;
		}
		if (applied && m->net_lagging && m->net_lagging != applied->id)
			continue;
		lagging = netsync_instance_lagging(m->name, why, sizeof(why));
		m->net_lagging = lagging;
		if (lagging) {
			if (now_ms() < m->net_deadline)
				continue;
			log_warnx(
				"migration %s: networks not ready after %d s (%s); copying anyway",
				m->id, MIGRATE_NET_WAIT_MS / 1000, why);
		}
		m->net_wait = false;
		out_start(m, m->uri);
	}
}

/* ---- settling after a restart ------------------------------------------------------- */

#define MIGRATE_SETTLE_RETRY_MS 1000 /* between rounds of migrate-state questions */

static void settle_start(struct migration *m, const char *why)
{
	if (m->settling)
		return;
	log_warnx("migration %s of %s: %s; asking %s and %s where it runs", m->id, m->name, why,
		  m->src->name, m->dst->name);
	m->settling = true;
	m->net_wait = false;
	m->settle_next = now_ms();
	snprintf(m->settle_why, sizeof(m->settle_why), "%s", why);
	json_object_object_add(m->result, "recovery", json_object_new_string(why));
	if (m->child[0]) {
		/* Its agent forgot it: it ends here, and a late answer is ignored. */
		op_update(m->child, "failed", -1, "interrupted", NULL, why);
		m->child[0] = '\0';
	}
	migrate_parent_update(m, -1);
}

/* Both ends answered: where the VM is decides how the migration ends. */
static void settle_decide(struct migration *m)
{
	bool src_has = json_get_bool(m->ans_src, "present", false);
	bool dst_has = json_get_bool(m->ans_dst, "present", false);
	const char *dst_state = json_get_str(m->ans_dst, "state", "");
	struct json_object *r;
	char why[400];

	if (!strcmp(json_get_str(m->ans_src, "role", ""), "out") ||
	    (m->cold && (json_get_bool(m->ans_src, "busy", false) ||
			 json_get_bool(m->ans_dst, "busy", false)))) {
		/* The source still follows its copy, or a container's step still runs
		 * (stop and pack, unpack and start): ask again until it ended. */
		m->settle_next = now_ms() + MIGRATE_SETTLE_RETRY_MS;
		return;
	}
	if (m->cold) {
		migrate_cold_settle(m);
		return;
	}
	m->settling = false;
	if (src_has) {
		snprintf(why, sizeof(why), "%s; %s stays on %s", m->settle_why, m->name,
			 m->src->name);
		json_object_object_add(m->result, "host", json_object_new_string(m->src->name));
		if (dst_has) {
			cleanup_start(m, m->cancel ? "cancelled" : why);
			return;
		}
		migrate_finish(m, m->cancel ? "cancelled" : "failed",
			       m->cancel ? "cancelled" : why);
		return;
	}
	if (dst_has) {
		log_info("migration %s: %s runs on %s (%s): switching over", m->id, m->name,
			 m->dst->name, dst_state);
		r = json_object_new_object();
		json_object_object_add(r, "strategy",
				       json_object_new_string(json_get_str(
					       json_object_object_get(m->result, "migration"),
					       "strategy", "precopy")));
		/* A guest paused first waits on the target for its resume. */
		if (strcmp(dst_state, "running"))
			json_object_object_add(r, "paused_ms", json_object_new_int64(0));
		switchover(m, r);
		json_object_put(r);
		return;
	}
	snprintf(why, sizeof(why), "%s; %s runs on neither %s nor %s: the VM is lost",
		 m->settle_why, m->name, m->src->name, m->dst->name);
	/* A post-copy that broke while an agent was away ends here: the database says so. */
	json_object_object_add(m->result, "lost", json_object_new_boolean(true));
	instances_lost(m->name, why);
	migrate_finish(m, "failed", why);
}

struct settle_ask {
	char id[LINK_OP_ID_MAX + 1];
	bool source;
};

static void settle_answer_cb(struct json_object *body, const char *error, void *cls)
{
	struct settle_ask *ask = cls;
	struct migration *m = migration_by_id(ask->id);

	if (m && m->settling && m->settle_asked > 0) {
		m->settle_asked--;
		if (error) {
			log_warnx("migration %s: migrate-state from the %s: %s", m->id,
				  ask->source ? "source" : "target", error);
			json_object_put(ask->source ? m->ans_src : m->ans_dst);
			if (ask->source)
				m->ans_src = NULL;
			else
				m->ans_dst = NULL;
		} else if (ask->source) {
			json_object_put(m->ans_src);
			m->ans_src = json_object_get(body);
		} else {
			json_object_put(m->ans_dst);
			m->ans_dst = json_object_get(body);
		}
		if (m->settle_asked == 0) {
			if (m->ans_src && m->ans_dst)
				settle_decide(m);
			else
				m->settle_next = now_ms() + MIGRATE_SETTLE_RETRY_MS;
		}
	}
	free(ask);
}

static void settle_ask(struct migration *m, struct host *h, bool source)
{
	struct settle_ask *ask = xcalloc(1, sizeof(*ask));
	struct json_object *q = json_object_new_object();

	snprintf(ask->id, sizeof(ask->id), "%s", m->id);
	ask->source = source;
	json_object_object_add(q, "what", json_object_new_string("migrate-state"));
	json_object_object_add(q, "name", json_object_new_string(m->name));
	agentlink_query(h, q, settle_answer_cb, ask);
}

/* Cron: a settling migration asks both ends, once both are online. */
static void settles_check(void)
{
	for (struct migration *m = migrations; m; m = m->next) {
		if (!m->settling || m->settle_asked || now_ms() < m->settle_next ||
		    m->src->state != HOST_ONLINE || m->dst->state != HOST_ONLINE)
			continue;
		m->settle_asked = 2;
		json_object_put(m->ans_src);
		json_object_put(m->ans_dst);
		m->ans_src = m->ans_dst = NULL;
		settle_ask(m, m->src, true);
		settle_ask(m, m->dst, false);
		break; /* an answer may end a migration: the list changed */
	}
}

/*
 * h's agent restarted (host_heartbeat()): a migration whose current step ran there
 * lost it, and settles (see the top of this file).
 */
void migrate_host_restarted(struct host *h)
{
	char why[128];

	for (struct migration *m = migrations; m; m = m->next) {
		if (m->src != h && m->dst != h)
			continue;
		snprintf(why, sizeof(why), "the agent of %s restarted during %s", h->name,
			 phase_names[m->phase]);
		if (m->cold && m->child[0] && m->child_host == h && !m->switched) {
			/* A container's step is short and holds no guest memory: it is not
			 * settled but undone; the container starts again on the source. */
			op_update(m->child, "failed", -1, "interrupted", NULL, why);
			m->child[0] = '\0';
			migrate_cold_rollback(m, why);
			continue;
		}
		if (!m->child[0] || m->child_host != h) {
			/* The step at work is the other host's and ends by itself (a target
			 * drops an incoming QEMU it lost: the copy fails); the result says. */
			json_object_object_add(m->result, "recovery", json_object_new_string(why));
			continue;
		}
		settle_start(m, why);
	}
}

/*
 * The job engine's resume slot for kind "migrate" after a controller restart: the
 * migration is made again from its row (op: result.source, result.target,
 * result.args) and settles. Returns 0, or -1 when it cannot be (the engine fails it).
 */
int migrate_job_resume(struct host *h, const char *id, struct json_object *op)
{
	struct json_object *res = json_object_object_get(op, "result");
	const char *target = json_get_str(op, "target", "");
	struct host *src = host_find(json_get_str(res, "source", ""));
	struct host *dst = host_find(json_get_str(res, "target", ""));
	struct mig_inst i = {0};
	struct migration *m;

	(void)h;
	if (src == NULL || dst == NULL || strncmp(target, "instances/", 10) ||
	    !inst_load(target + 10, &i)) {
		json_object_put(i.spec);
		return -1;
	}
	m = xcalloc(1, sizeof(*m));
	snprintf(m->id, sizeof(m->id), "%s", id);
	snprintf(m->name, sizeof(m->name), "%s", target + 10);
	m->iid = i.id;
	m->src = src;
	m->dst = dst;
	m->spec = i.spec;
	m->args = json_object_get(json_object_object_get(res, "args"));
	if (m->args == NULL)
		m->args = json_object_new_object();
	m->result = json_tokener_parse(json_text(res));
	m->cancel = json_get_str(op, "cancel", NULL) != NULL;
	m->started_ms = now_ms();
	m->mark_ms = m->started_ms;
	m->phase = PHASE_PRECOPY;
	if (!strcmp(json_get_str(i.spec, "type", "vm"), "container")) {
		/* A cold move: settled the same way (both ends asked), decided by
		 * migrate_cold_settle(). */
		m->cold = true;
		m->was_running = json_get_bool(res, "was_running", true);
		m->phase = PHASE_STOP_SOURCE;
	}
	m->next = migrations;
	migrations = m;
	/* The target stays wired while it may hold the guest. */
	migrate_wired_set(m, true);
	settle_start(m, "the controller restarted during the migration");
	return 0;
}

/* ---- cancel ------------------------------------------------------------------------ */

static void cancel_answer_cb(struct json_object *body, const char *error, void *cls)
{
	(void)cls;
	if (error || !json_get_bool(body, "cancelled", false))
		log_warnx("migration: the source could not cancel: %s",
			  error ? error : json_get_str(body, "why", "?"));
}

/*
 * Cancel migration id before its switchover: the VM keeps running on the source and
 * the target's half is removed; the operation ends "cancelled". Returns 0, or -1 with
 * err (404 no such migration running, 409 too late).
 */
/*
 * 0 when migration id can still be stopped; -1 with err (409) once it is past its
 * switchover (it ends as it will) or is not running here (a restarted controller
 * settles it first). Asked before a cancel is recorded.
 */
int migrate_cancel_refused(const char *id, struct kerr *err)
{
	struct migration *m = migration_by_id(id);

	if (m == NULL)
		return err_input(err, 409, NULL, "operation %s is no migration that runs", id);
	if (m->phase == PHASE_SWITCHOVER || m->phase == PHASE_START_TARGET || m->switched)
		return err_input(err, 409, NULL,
				 "migration %s is past its switchover; migrate back instead", id);
	if (m->postcopy_active)
		return err_input(err, 409, NULL,
				 "migration %s is in post-copy: the guest runs on the target and "
				 "its memory is split between both hosts",
				 id);
	return 0;
}

int migrate_cancel(const char *id, struct kerr *err)
{
	struct migration *m = migration_by_id(id);
	struct json_object *q;

	if (migrate_cancel_refused(id, err) < 0)
		return -1;
	if (m->cancel || m->phase == PHASE_CLEANUP)
		return 0;
	m->cancel = true;
	log_info("migration %s of %s: cancel asked in %s", m->id, m->name, phase_names[m->phase]);
	if (m->phase == PHASE_PRECOPY) {
		q = json_object_new_object();
		json_object_object_add(q, "what", json_object_new_string("migrate-cancel"));
		json_object_object_add(q, "name", json_object_new_string(m->name));
		agentlink_query(m->src, q, cancel_answer_cb, NULL);
	}
	/* prepare-target: migrate-in's end sees m->cancel. */
	return 0;
}

/* ---- the route ---------------------------------------------------------------------- */

/*
 * What the source of a migration to dst may do ("never", "auto" or "always"), from
 * the call's postcopy (default auto). *why says why post-copy cannot be used (then
 * "never"), or stays NULL. shared: every disk is on the shared pool.
 */
static const char *postcopy_policy(struct json_object *body, const struct host *dst, bool shared,
				   const char **why)
{
	const char *asked = json_get_str(body, "postcopy", "auto");

	*why = NULL;
	if (!strcmp(asked, "never"))
		return "never";
	if (!json_get_bool(dst->facts, "postcopy", false))
		*why = "the target cannot post-copy: its QEMU may not use userfaultfd (QEMU "
		       "drops root and vm.unprivileged_userfaultfd is 0; see the agent's "
		       "--qemu-user)";
	else if (!shared)
		*why = "post-copy needs every disk on the shared pool: a local disk's mirror "
		       "must end before the guest runs on the target";
	return *why ? "never" : asked;
}

/*
 * Check and start the migration of instance name (body: the call's, may be NULL), for
 * the route and for evacuations (evac, or NULL). Returns 0 with the operation's id in
 * id, or -1 with err (its status the HTTP answer; a 422 for want of a host also sets
 * *placement, a new reference, saying why for each host).
 */
static int migrate_begin(const char *name, struct json_object *body, struct evacuation *evac,
			 char id[LINK_OP_ID_MAX + 1], struct json_object **placement,
			 struct kerr *err)
{
	struct json_object *op, *res, *args_in, *where = NULL;
	_cleanup_free_ char *target = NULL;
	struct mig_inst i = {0};
	struct host *want = NULL, *dst;
	char busy[LINK_OP_ID_MAX + 1], disk[NAME_MAX_LEN + 1], ip[64];
	const char *type, *mode, *addr, *colon;
	const char *postcopy, *why = NULL;
	struct migration *m;
	int64_t called_ms = now_ms(); /* the operation's time counts from the call */
	bool cold;
	int ret = -1;

	*placement = NULL;
	if (!name_valid(name) || !inst_load(name, &i))
		return err_input(err, 404, NULL, "no instance named %s", name);
	type = json_get_str(i.spec, "type", "vm");
	mode = json_get_str(body, "mode", NULL);
	/* A container moves cold (mode cold or offline, or none given). */
	cold = !strcmp(type, "container");
	target = xasprintf("instances/%s", name);
	if (json_get_str(body, "host", NULL) &&
	    (want = host_find(json_get_str(body, "host", ""))) == NULL)
		err_input(err, 404, "host", "no host named %s", json_get_str(body, "host", ""));
	else if (cold && mode && !strcmp(mode, "live"))
		err_input(
			err, 422, "mode",
			"a container cannot migrate live: runc checkpoint needs CRIU, and CRIU "
			"3.17 fails on these kernels (>= 6.13, fixed in CRIU 4.1); use mode cold, "
			"the default for containers");
	else if (!cold && mode && !strcmp(mode, "cold"))
		err_input(err, 422, "mode", "mode cold is for containers; a VM migrates live");
	else if (cold && strcmp(i.state, "running") && strcmp(i.state, "stopped") &&
		 strcmp(i.state, "crashed"))
		err_input(err, 409, NULL,
			  "container %s is %s; a cold migration starts from running, stopped or "
			  "crashed",
			  name, i.state);
	else if (!cold && mode && !strcmp(mode, "offline"))
		err_input(err, 422, "mode",
			  "offline migration of VMs is not implemented yet; migrate it while it "
			  "runs");
	else if (!cold && strcmp(i.state, "running"))
		err_input(err, 409, NULL, "instance %s is %s; a live migration needs it running",
			  name, i.state);
	else if (op_busy(target, busy, sizeof(busy)))
		err_input(err, 409, NULL, "instance %s is busy with operation %s", name, busy);
	else if (i.host == NULL || i.host->state != HOST_ONLINE)
		err_input(err, 503, NULL, "the host of %s is offline", name);
	else if (want == i.host)
		err_input(err, 422, "host", "instance %s runs on %s already", name, want->name);
	else
		ret = 0;
	if (ret < 0) {
		json_object_put(i.spec);
		return -1;
	}
	dst = target_choose(i.spec, i.host, want, &where, err);
	if (dst == NULL) {
		*placement = where;
		json_object_put(i.spec);
		return -1;
	}
	/* Post-copy where the target has the grant (its fact) and every disk is shared:
	 * "always" is refused where it cannot be kept, "auto" quietly becomes "never". */
	postcopy = postcopy_policy(body, dst, disks_shared(i.spec, disk, sizeof(disk)), &why);
	if (!cold && why && !strcmp(json_get_str(body, "postcopy", "auto"), "always")) {
		err_input(err, 422, "postcopy", "%s; use postcopy auto or never", why);
		json_object_put(where);
		json_object_put(i.spec);
		return -1;
	}
	res = json_object_new_object();
	json_object_object_add(res, "args",
			       body ? json_object_get(body) : json_object_new_object());
	json_object_object_add(res, "source", json_object_new_string(i.host->name));
	json_object_object_add(res, "target", json_object_new_string(dst->name));
	json_object_object_add(res, "placement", where);
	if (!cold) {
		/* What the source may do, and why not post-copy where it may not. */
		json_object_object_add(res, "postcopy", json_object_new_string(postcopy));
		if (why)
			json_object_object_add(res, "postcopy_why", json_object_new_string(why));
	}
	/* Local disks are mirrored to the target over NBD before the memory moves. */
	if (!cold)
		json_object_object_add(
			res, "storage",
			json_object_new_string(disks_shared(i.spec, disk, sizeof(disk)) ? "shared"
											: "local"));
	op = op_create("migrate", target, i.host, json_object_get(res), err);
	if (op == NULL) {
		json_object_put(res);
		json_object_put(i.spec);
		return -1;
	}
	m = xcalloc(1, sizeof(*m));
	snprintf(m->id, sizeof(m->id), "%s", json_get_str(op, "id", ""));
	json_object_put(op);
	snprintf(m->name, sizeof(m->name), "%s", name);
	m->iid = i.id;
	m->src = i.host;
	m->dst = dst;
	m->spec = i.spec;
	m->args = body ? json_object_get(body) : json_object_new_object();
	m->result = res;
	m->evac = evac;
	m->started_ms = called_ms;
	m->mark_ms = called_ms;
	m->phase = PHASE_PREPARE_TARGET;
	snprintf(m->postcopy, sizeof(m->postcopy), "%s", cold ? "never" : postcopy);
	m->next = migrations;
	migrations = m;
	log_info("migration %s: %s from %s to %s", m->id, m->name, m->src->name, m->dst->name);
	snprintf(id, LINK_OP_ID_MAX + 1, "%s", m->id);
	if (cold) {
		m->cold = true;
		m->phase = PHASE_STOP_SOURCE;
		/* Until the source says: a controller restarted during stop-source starts
		 * it again on the source only if it ran. */
		m->was_running = !strcmp(i.state, "running");
		json_object_object_add(m->result, "was_running",
				       json_object_new_boolean(m->was_running));
		json_object_object_add(m->result, "strategy", json_object_new_string("cold"));
		migrate_parent_update(m, 1);
		/* The target's segments and the container's port there, before it starts. */
		migrate_wired_set(m, true);
		timing_phase(m, "request_ms");
		migrate_child_start(m, m->src, "migrate-out", "migrate-out", NULL); /* may end m */
		return 0;
	}
	migrate_parent_update(m, 1);
	/* The target listens on its underlay address, the one its agent joined with. */
	addr = dst->address && !strncmp(dst->address, "tcp://", 6) ? dst->address + 6 : "";
	colon = strrchr(addr, ':');
	snprintf(ip, sizeof(ip), "%.*s", colon ? (int)(colon - addr) : 0, addr);
	if (!ip[0] || creds_issue(m, ip, err) < 0) {
		migrate_finish(m, "failed",
			       ip[0] ? err->msg : "the target has no underlay address");
		return 0;
	}
	migrate_wired_set(m, true);
	args_in = json_object_new_object();
	json_object_object_add(args_in, "tls", json_object_get(m->tls_in));
	/* The target's QEMU enables post-copy before it listens. */
	if (strcmp(m->postcopy, "never"))
		json_object_object_add(args_in, "postcopy", json_object_new_boolean(true));
	timing_phase(m, "request_ms");
	prep_send(m);
	migrate_child_start(m, m->dst, "migrate-in", "migrate-in", args_in); /* may end m */
	return 0;
}

/*
 * Start a live migration of instance name to where the scheduler chooses, as the
 * route does with an empty body (HA's maintenance hand-off, ha.c). Returns 0 with the
 * "migrate" operation's id in id, or -1 with err (err->status 409: busy).
 */
int migrate_instance_start(const char *name, char id[LINK_OP_ID_MAX + 1], struct kerr *err)
{
	struct json_object *placement = NULL;
	int ret = migrate_begin(name, NULL, NULL, id, &placement, err);

	json_object_put(placement);
	return ret;
}

/*
 * POST /api/v1/instances/{name}/actions/migrate {host?, mode?, downtime_ms?,
 * bandwidth_mbps?, postcopy?} -> 202 with the "migrate" operation. See the top.
 */
enum MHD_Result api_instance_migrate(struct request *req)
{
	struct json_object *body = NULL, *placement = NULL, *e;
	char id[LINK_OP_ID_MAX + 1];
	enum MHD_Result ret;
	struct kerr err;

	if (req->body_len > 0 && http_body_json(req, migrate_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	if (migrate_begin(req->params[0], body, NULL, id, &placement, &err) < 0) {
		json_object_put(body);
		if (placement == NULL)
			return http_reply_kerr(req, &err);
		e = json_object_new_object();
		json_object_object_add(e, "error", json_object_new_string(err.msg));
		json_object_object_add(e, "field", json_object_new_string("host"));
		json_object_object_add(e, "placement", placement);
		return http_reply_json(req, 422, e);
	}
	json_object_put(body);
	snprintf(req->audit_op, sizeof(req->audit_op), "%s", id);
	ret = http_reply_json(req, 202, op_get(id));
	return ret;
}

/* ---- evacuate -------------------------------------------------------------------------- */

#define EVACUATE_PARALLEL_DEFAULT 2
#define EVACUATE_PARALLEL_MAX	  16

/*
 * A host being emptied: one "evacuate" operation whose result.instances lists each
 * instance's fate (waiting, migrating, moved, not moved) with where it went, how and
 * why not; at most parallel migrations run at once.
 */
struct evacuation {
	char id[LINK_OP_ID_MAX + 1];
	struct host *host;
	int parallel;
	int running;
	bool pumping;		    /* evac_pump() is at work: a migration ending inside it waits */
	struct json_object *result; /* {"instances": [...]} */
	struct evacuation *next;
};

static struct evacuation *evacuations;

static struct json_object *fates(struct evacuation *e)
{
	return json_object_object_get(e->result, "instances");
}

static void fate_set(struct json_object *f, const char *fate, const char *key, const char *val)
{
	json_object_object_add(f, "fate", json_object_new_string(fate));
	if (key)
		json_object_object_add(f, key, val ? json_object_new_string(val) : NULL);
}

static void evac_finish(struct evacuation *e)
{
	struct evacuation **pp;
	size_t n = json_array_len(fates(e)), left = 0;
	char why[128];

	for (size_t k = 0; k < n; k++)
		if (strcmp(json_get_str(json_object_array_get_idx(fates(e), k), "fate", ""),
			   "moved"))
			left++;
	snprintf(why, sizeof(why), "%zu of %zu instances could not move (see result.instances)",
		 left, n);
	op_update(e->id, left ? "failed" : "succeeded", left ? -1 : 100, "done",
		  json_object_get(e->result), left ? why : NULL);
	log_info("evacuation %s of %s: %zu of %zu moved", e->id, e->host->name, n - left, n);
	for (pp = &evacuations; *pp; pp = &(*pp)->next)
		if (*pp == e) {
			*pp = e->next;
			break;
		}
	json_object_put(e->result);
	free(e);
}

/* Start migrations up to the parallel limit; the end when nothing is left. */
static void evac_pump(struct evacuation *e)
{
	size_t n = json_array_len(fates(e)), done = 0;
	struct json_object *placement = NULL;
	char id[LINK_OP_ID_MAX + 1];
	struct kerr err;

	if (e->pumping)
		return;
	e->pumping = true;
	for (size_t k = 0; k < n && e->running < e->parallel; k++) {
		struct json_object *f = json_object_array_get_idx(fates(e), k);

		if (strcmp(json_get_str(f, "fate", ""), "waiting"))
			continue;
		e->running++;
		fate_set(f, "migrating", NULL, NULL);
		if (migrate_begin(json_get_str(f, "name", ""), NULL, e, id, &placement, &err) < 0) {
			e->running--;
			json_object_put(placement);
			placement = NULL;
			fate_set(f, "not moved", "why", err.msg);
			continue;
		}
		/* The migration may have ended already (it could not start). */
		if (!strcmp(json_get_str(f, "fate", ""), "migrating"))
			json_object_object_add(f, "operation", json_object_new_string(id));
	}
	for (size_t k = 0; k < n; k++) {
		const char *fate = json_get_str(json_object_array_get_idx(fates(e), k), "fate", "");

		done += !strcmp(fate, "moved") || !strcmp(fate, "not moved");
	}
	e->pumping = false;
	if (done == n && e->running == 0) {
		evac_finish(e);
		return;
	}
	op_update(e->id, "running", n ? (int)(100 * done / n) : 0, "migrating",
		  json_object_get(e->result), NULL);
}

/* A migration of evacuation m->evac ended (migration_free()). */
static void evac_note(struct migration *m)
{
	struct evacuation *e = m->evac;
	size_t n = json_array_len(fates(e));

	for (size_t k = 0; k < n; k++) {
		struct json_object *f = json_object_array_get_idx(fates(e), k);

		if (strcmp(json_get_str(f, "name", ""), m->name) ||
		    strcmp(json_get_str(f, "fate", ""), "migrating"))
			continue;
		if (!strcmp(m->outcome, "succeeded")) {
			fate_set(f, "moved", "host", m->dst->name);
			json_object_object_add(f, "how",
					       json_object_new_string(json_get_str(
						       m->result, "strategy", "live")));
		} else {
			fate_set(f, "not moved", "why",
				 m->failure[0] ? m->failure : "the migration failed");
		}
		json_object_object_add(f, "operation", json_object_new_string(m->id));
	}
	e->running--;
	evac_pump(e);
}

static int parallel_check(struct json_object *v, const char *f, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 1 || n > EVACUATE_PARALLEL_MAX)
		return err_input(err, 400, f, "'%s' must be 1..%d", f, EVACUATE_PARALLEL_MAX);
	return 0;
}

static const struct json_field evacuate_fields[] = {
	{"parallel", JK_INT, false, parallel_check},
	{NULL, 0, false, NULL},
};

/*
 * POST /api/v1/hosts/{name}/actions/evacuate {parallel?} -> 202 with an "evacuate"
 * operation: the host goes into maintenance (nothing new is placed there) and every
 * instance on it is migrated (VMs live, containers cold), at most parallel at once,
 * each to where the scheduler chooses (a VM with local disks takes them along).
 * Instances that cannot move (a stopped VM, no host fits) are listed with the reason; the operation
 * fails unless all moved.
 */
enum MHD_Result api_host_evacuate(struct request *req)
{
	_cleanup_free_ char *target = NULL;
	struct json_object *body = NULL, *op, *list;
	struct host *h = host_find(req->params[0]);
	struct evacuation *e;
	char busy[LINK_OP_ID_MAX + 1];
	sqlite3_stmt *st;
	struct kerr err;

	if (h == NULL)
		return http_reply_error(req, 404, NULL, "no host named %s", req->params[0]);
	if (req->body_len > 0 && http_body_json(req, evacuate_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	target = xasprintf("hosts/%s", h->name);
	if (op_busy(target, busy, sizeof(busy))) {
		json_object_put(body);
		return http_reply_error(req, 409, NULL, "host %s is busy with operation %s",
					h->name, busy);
	}
	st = db_prepare(ctl.db, "UPDATE hosts SET maintenance = 1 WHERE id = ?");
	sqlite3_bind_int64(st, 1, h->id);
	sqlite3_step(st);
	sqlite3_finalize(st);
	h->maintenance = true;
	e = xcalloc(1, sizeof(*e));
	e->host = h;
	e->parallel = (int)json_get_int(body, "parallel", EVACUATE_PARALLEL_DEFAULT);
	json_object_put(body);
	e->result = json_object_new_object();
	list = json_object_new_array();
	json_object_object_add(e->result, "instances", list);
	json_object_object_add(e->result, "parallel", json_object_new_int(e->parallel));
	st = db_prepare(ctl.db, "SELECT name, type FROM instances WHERE host_id = ? ORDER BY name");
	sqlite3_bind_int64(st, 1, h->id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *f = json_object_new_object();

		json_object_object_add(
			f, "name",
			json_object_new_string((const char *)sqlite3_column_text(st, 0)));
		json_object_object_add(
			f, "type",
			json_object_new_string((const char *)sqlite3_column_text(st, 1)));
		fate_set(f, "waiting", NULL, NULL);
		json_object_array_add(list, f);
	}
	sqlite3_finalize(st);
	op = op_create("evacuate", target, h, json_object_get(e->result), &err);
	if (op == NULL) {
		json_object_put(e->result);
		free(e);
		return http_reply_kerr(req, &err);
	}
	snprintf(e->id, sizeof(e->id), "%s", json_get_str(op, "id", ""));
	json_object_put(op);
	e->next = evacuations;
	evacuations = e;
	log_info("evacuation %s of %s: %zu instances, %d at once", e->id, h->name,
		 json_array_len(list), e->parallel);
	snprintf(req->audit_op, sizeof(req->audit_op), "%s", e->id);
	snprintf(busy, sizeof(busy), "%s", e->id);
	evac_pump(e); /* may end e */
	return http_reply_json(req, 202, op_get(busy));
}

/* ---- dry run ------------------------------------------------------------------------ */

/* Is host in the placement's rejected list? */
static bool placement_rejects(struct json_object *rejected, const char *host)
{
	for (size_t k = 0; rejected && k < json_array_len(rejected); k++)
		if (!strcmp(json_get_str(json_object_array_get_idx(rejected, k), "host", ""), host))
			return true;
	return false;
}

/*
 * GET /api/v1/instances/{name}/placement?for=migrate: where a live migration of the VM
 * would go, asked of the same filters and scores as POST .../actions/migrate, without
 * starting anything. {instance, source, host (the scheduler's choice, or null), policy,
 * blocked (why the VM cannot migrate at all, or null), hosts: [{host, fits, score} or
 * {host, fits: false, reason}], candidates_total, rejected_total, rejected_by}. The lists
 * are bounded as a placement's are (the best candidates, the first rejected hosts).
 */
enum MHD_Result api_instance_placement(struct request *req)
{
	const char *purpose = http_query(req, "for");
	struct json_object *where = NULL, *out, *hosts, *cands, *rejected;
	struct mig_inst i = {0};
	struct kerr err = {0};
	const char *blocked = NULL;
	char why[160];
	struct host *dst;

	if (purpose && strcmp(purpose, "migrate"))
		return http_reply_error(req, 400, "for",
					"'for' must be migrate (the only dry run)");
	if (!name_valid(req->params[0]) || !inst_load(req->params[0], &i))
		return http_reply_error(req, 404, NULL, "no instance named %s", req->params[0]);
	if (i.host == NULL) {
		json_object_put(i.spec);
		return http_reply_error(req, 409, NULL, "instance %s is on no host",
					req->params[0]);
	}
	/* The reasons migrate_begin() refuses for, as a user would meet them. */
	if (strcmp(json_get_str(i.spec, "type", "vm"), "vm")) {
		blocked = "a container cannot migrate live";
	} else if (strcmp(i.state, "running")) {
		snprintf(why, sizeof(why), "it is %s; a live migration needs it running", i.state);
		blocked = why;
	}
	dst = target_choose(i.spec, i.host, NULL, &where, &err);
	cands = json_object_object_get(where, "candidates");
	rejected = json_object_object_get(where, "rejected");
	hosts = json_object_new_array();
	for (size_t k = 0; cands && k < json_array_len(cands); k++) {
		struct json_object *c = json_object_array_get_idx(cands, k), *o;

		if (placement_rejects(rejected, json_get_str(c, "host", "")))
			continue;
		o = json_object_new_object();
		json_object_object_add(o, "host",
				       json_object_get(json_object_object_get(c, "host")));
		json_object_object_add(o, "fits", json_object_new_boolean(true));
		json_object_object_add(o, "score",
				       json_object_get(json_object_object_get(c, "score")));
		json_object_array_add(hosts, o);
	}
	for (size_t k = 0; rejected && k < json_array_len(rejected); k++) {
		struct json_object *r = json_object_array_get_idx(rejected, k), *o;

		o = json_object_new_object();
		json_object_object_add(o, "host",
				       json_object_get(json_object_object_get(r, "host")));
		json_object_object_add(o, "fits", json_object_new_boolean(false));
		json_object_object_add(o, "reason",
				       json_object_get(json_object_object_get(r, "reason")));
		json_object_array_add(hosts, o);
	}
	out = json_object_new_object();
	json_object_object_add(out, "instance", json_object_new_string(req->params[0]));
	json_object_object_add(out, "source", json_object_new_string(i.host->name));
	json_object_object_add(out, "host", dst ? json_object_new_string(dst->name) : NULL);
	json_object_object_add(out, "policy",
			       json_object_get(json_object_object_get(where, "policy")));
	json_object_object_add(out, "blocked", blocked ? json_object_new_string(blocked) : NULL);
	json_object_object_add(out, "hosts", hosts);
	json_object_object_add(out, "candidates_total",
			       json_object_get(json_object_object_get(where, "candidates_total")));
	json_object_object_add(out, "rejected_total",
			       json_object_get(json_object_object_get(where, "rejected_total")));
	json_object_object_add(out, "rejected_by",
			       json_object_get(json_object_object_get(where, "rejected_by")));
	json_object_put(where);
	json_object_put(i.spec);
	return http_reply_json(req, 200, out);
}
