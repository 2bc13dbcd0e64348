/*
 * tokens.c - API and join tokens: the first admin token, bearer authentication, the
 * single use of join tokens, and the streams and long polls each token holds open
 * (limited per token, ended when the token is revoked or expires). Only SHA-256
 * digests are stored.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>

#include "controllerd.h"
#include "log.h"
#include "token.h"
#include "util.h"

static const char *const role_names[] = {"none", "viewer", "operator", "admin"};

const char *role_name(enum role role)
{
	return (unsigned)role < ARRAY_SIZE(role_names) ? role_names[role] : "none";
}

int role_parse(const char *name, enum role *out)
{
	for (size_t i = ROLE_VIEWER; i < ARRAY_SIZE(role_names); i++) {
		if (strcmp(role_names[i], name) == 0) {
			*out = (enum role)i;
			return 0;
		}
	}
	return -1;
}

/*
 * At first start (no API token at all), create an admin token and write it to
 * state_dir/admin.token with mode 0600. The token itself is never stored.
 */
int tokens_bootstrap(const char *state_dir, struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/admin.token", state_dir);
	char token[TOKEN_LEN + 1], digest[TOKEN_DIGEST_LEN + 1], line[TOKEN_LEN + 2];
	sqlite3_stmt *st;
	int rc;

	if (db_count(ctl.db, "SELECT count(*) FROM tokens WHERE kind = 'api'") > 0)
		return 0;
	token_generate(token);
	token_digest(token, digest);
	snprintf(line, sizeof(line), "%s\n", token);
	/* The file first: a crash in between leaves a token nobody can use, not a lost one. */
	rc = file_write_atomic(path, line, strlen(line), 0600);
	if (rc < 0)
		return err_set(err, -rc, "cannot write %s", path);
	st = db_prepare(ctl.db, "INSERT INTO tokens (kind, role, name, digest, created_at) "
				"VALUES ('api', 'admin', 'bootstrap', ?, ?)");
	sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now_ms());
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	log_info("tokens: created the first admin token in %s", path);
	return 0;
}

/* used_at is written at most this often per token: not a disk write per request. */
#define USED_AT_RESOLUTION_MS 60000

/*
 * Check an API token (the secret itself). Returns its role and fills *out, or
 * ROLE_NONE for a malformed, unknown or expired token with *why saying which (static
 * text, valid until the next call). Records the use (used_at, at most once a minute).
 */
enum role tokens_check_secret(const char *token, struct token_auth *out, const char **why)
{
	static char expired[96];
	char digest[TOKEN_DIGEST_LEN + 1];
	enum role role = ROLE_NONE;
	int64_t now = now_ms(), used = 0;
	sqlite3_stmt *st;

	memset(out, 0, sizeof(*out));
	*why = "the bearer token is not valid";
	if (!token_well_formed(token))
		return ROLE_NONE;
	token_digest(token, digest);
	st = db_prepare_cached(
		ctl.db, "SELECT id, role, name, coalesce(expires_at, 0), "
			"coalesce(used_at, 0) FROM tokens WHERE digest = ? AND kind = 'api'");
	sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		out->id = sqlite3_column_int64(st, 0);
		if (role_parse((const char *)sqlite3_column_text(st, 1), &role) < 0)
			role = ROLE_NONE;
		snprintf(out->name, sizeof(out->name), "%s",
			 (const char *)sqlite3_column_text(st, 2));
		out->expires_at = sqlite3_column_int64(st, 3);
		used = sqlite3_column_int64(st, 4);
	}
	db_release(st);
	if (role != ROLE_NONE && out->expires_at && out->expires_at <= now) {
		time_t t = (time_t)(out->expires_at / 1000);
		struct tm tm;

		gmtime_r(&t, &tm);
		strftime(expired, sizeof(expired), "the bearer token expired at %Y-%m-%dT%H:%M:%SZ",
			 &tm);
		*why = expired;
		role = ROLE_NONE;
	}
	if (role == ROLE_NONE) {
		out->id = 0;
		return ROLE_NONE;
	}
	out->role = role;
	if (now - used >= USED_AT_RESOLUTION_MS) {
		st = db_prepare_cached(ctl.db, "UPDATE tokens SET used_at = ? WHERE id = ?");
		sqlite3_bind_int64(st, 1, now);
		sqlite3_bind_int64(st, 2, out->id);
		if (sqlite3_step(st) != SQLITE_DONE)
			log_warnx("tokens: cannot record the use of token %lld: %s",
				  (long long)out->id, sqlite3_errmsg(ctl.db));
		db_release(st);
	}
	return role;
}

/*
 * Check an Authorization header value ("Bearer <token>"): tokens_check_secret(), with
 * *why also saying when the header is missing or not a bearer.
 */
enum role tokens_check(const char *authorization, struct token_auth *out, const char **why)
{
	memset(out, 0, sizeof(*out));
	*why = "a bearer token is required (Authorization: Bearer <token>)";
	if (authorization == NULL)
		return ROLE_NONE;
	*why = "the bearer token is not valid";
	if (strncmp(authorization, "Bearer ", 7) != 0)
		return ROLE_NONE;
	return tokens_check_secret(authorization + 7, out, why);
}

/*
 * The role of the API token with id token_id, or ROLE_NONE once it was deleted or
 * expired: what a registry token issued for it may still do. name (if not NULL) gets
 * the token's name, for the audit log.
 */
enum role tokens_role_of(int64_t token_id, char *name, size_t len)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT role, name FROM tokens WHERE id = ? AND "
					      "kind = 'api' AND (expires_at IS NULL OR "
					      "expires_at > ?)");
	enum role role = ROLE_NONE;

	sqlite3_bind_int64(st, 1, token_id);
	sqlite3_bind_int64(st, 2, now_ms());
	if (sqlite3_step(st) == SQLITE_ROW) {
		if (role_parse((const char *)sqlite3_column_text(st, 0), &role) < 0)
			role = ROLE_NONE;
		if (name)
			snprintf(name, len, "%s", (const char *)sqlite3_column_text(st, 1));
	}
	sqlite3_finalize(st);
	return role;
}

/* tokens_check() for callers that need only the role and the token's id. */
enum role tokens_authenticate(const char *authorization, int64_t *token_id)
{
	struct token_auth ta;
	const char *why;
	enum role role = tokens_check(authorization, &ta, &why);

	*token_id = ta.id;
	return role;
}

/* A join token used or expired this long ago is unknown to a join (not tried). */
#define JOIN_RECENT_MS (24LL * 3600 * 1000)

/*
 * Find the join token whose proof (join_proof()) over what the agent asks for - host,
 * pubhex, addr - is proof, and mark it used by host, inside the caller's transaction.
 * The token itself never travels: each join token's stored digest is tried as the
 * key. key gets the token's raw SHA-256 (the link key's salt, and the key of the
 * answer's proof). Refuses (the reason in err) an unknown, expired or used token.
 */
int tokens_join_prove(const char *proof, const char *host, const char *pubhex, const char *addr,
		      unsigned char key[32], struct kerr *err)
{
	/* Only tokens still live, or used or expired lately (so a retry hears why): the
	 * join port is open to anyone, and each try costs an HMAC per token. A token
	 * issued for this host's name is tried first: with 5,000 named tokens, trying
	 * them in id order cost 2,500 HMACs a join on average, and the joins of 5,000
	 * hosts held the loop for minutes. */
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT id, digest, coalesce(expires_at, 0), "
				   "coalesce(used_at, 0), name FROM tokens "
				   "WHERE kind = 'join' AND (used_at IS NULL OR used_at > ?1) "
				   "AND (expires_at IS NULL OR expires_at > ?1) "
				   "ORDER BY name = ?2 DESC, id");
	int64_t now = now_ms(), id = 0, expires = 0, used = 0;
	char bound[128] = "", want[TOKEN_DIGEST_LEN + 1];
	bool found = false;
	int rc;

	sqlite3_bind_int64(st, 1, now - JOIN_RECENT_MS);
	sqlite3_bind_text(st, 2, host, -1, SQLITE_STATIC);
	while (!found && sqlite3_step(st) == SQLITE_ROW) {
		const char *digest = (const char *)sqlite3_column_text(st, 1);

		if (digest == NULL || hex_decode(digest, key, 32) < 0)
			continue;
		join_proof(key, host, pubhex, addr, want);
		if (!join_proof_equal(want, proof))
			continue;
		found = true;
		id = sqlite3_column_int64(st, 0);
		expires = sqlite3_column_int64(st, 2);
		used = sqlite3_column_int64(st, 3);
		snprintf(bound, sizeof(bound), "%s",
			 sqlite3_column_text(st, 4) ? (const char *)sqlite3_column_text(st, 4)
						    : "");
	}
	sqlite3_finalize(st);
	if (!found)
		rc = err_set(err, 0, "join token is not known to this cluster");
	else if (used)
		rc = err_set(err, 0, "join token was already used");
	else if (expires && expires <= now)
		rc = err_set(err, 0, "join token has expired");
	/* A join token named for a host joins only that host; taking over the name of a
	 * host that joined before needs a token issued for that name. */
	else if (bound[0] && strcmp(bound, host) != 0)
		rc = err_set(err, 0, "join token is for host %s, not %s", bound, host);
	else if (!bound[0] && host_find(host))
		rc = err_set(err, 0,
			     "host %s has joined already; re-joining it needs a join token "
			     "issued for it (\"name\": \"%s\")",
			     host, host);
	else
		rc = 0;
	if (rc < 0) {
		OPENSSL_cleanse(key, 32);
		return rc;
	}
	st = db_prepare(ctl.db, "UPDATE tokens SET used_at = ?, used_by = ? WHERE id = ?");
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_text(st, 2, host, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	return 0;
}

static struct token_watch *watches;

/*
 * End the watches whose client has hung up (of token_id only, unless 0): a suspended
 * connection is not polled by libmicrohttpd, so a client that left would hold its
 * slot until the next keepalive. poll() with no timeout only looks.
 */
static void watches_reap(int64_t token_id)
{
	_cleanup_free_ struct pollfd *fds = NULL;
	_cleanup_free_ struct token_watch **ws = NULL;
	size_t n = 0, cap = 0;

	for (struct token_watch *w = watches; w; w = w->next) {
		const union MHD_ConnectionInfo *info;

		if ((token_id && w->token_id != token_id) || w->conn == NULL)
			continue;
		info = MHD_get_connection_info(w->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		if (info == NULL)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 32;
			fds = xrealloc(fds, cap * sizeof(*fds));
			ws = xrealloc(ws, cap * sizeof(*ws));
		}
		fds[n] = (struct pollfd){.fd = info->connect_fd, .events = POLLRDHUP};
		ws[n++] = w;
	}
	if (n == 0 || poll(fds, (nfds_t)n, 0) <= 0)
		return;
	/* The callbacks only mark and wake what they end; nothing in ws is freed here. */
	for (size_t i = 0; i < n; i++)
		if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
			tokens_watch_remove(ws[i]);
			ws[i]->revoke_cb(ws[i]->cls);
		}
}

/*
 * Count w as one more stream or long poll of req's token and remember to call
 * revoke_cb(cls) when the token goes or the client leaves. Refuses (429 in err)
 * beyond the token's max_streams_per_token. The caller calls tokens_watch_remove()
 * when it ends.
 */
int tokens_watch_add(struct token_watch *w, const struct request *req, void (*revoke_cb)(void *cls),
		     void *cls, struct kerr *err)
{
	return tokens_watch_token(w, req->conn, req->token.id, req->token.expires_at, revoke_cb,
				  cls, err);
}

/*
 * The same for a token already checked (token_id, expiring at expires_at ms, 0: never)
 * whose connection is conn, or NULL for one that is no longer libmicrohttpd's to watch
 * (a WebSocket after its upgrade watches its own socket).
 */
int tokens_watch_token(struct token_watch *w, struct MHD_Connection *conn, int64_t token_id,
		       int64_t expires_at, void (*revoke_cb)(void *cls), void *cls,
		       struct kerr *err)
{
	int n = 0;

	watches_reap(token_id);
	for (struct token_watch *o = watches; o; o = o->next)
		n += o->token_id == token_id;
	if (n >= ctl.cfg.max_streams_per_token)
		return err_input(err, 429, NULL,
				 "this token holds %d event streams, log follows, long polls and "
				 "consoles open already (max_streams_per_token); close one first",
				 n);
	w->conn = conn;
	w->token_id = token_id;
	w->expires_at = expires_at;
	w->revoke_cb = revoke_cb;
	w->cls = cls;
	w->active = true;
	w->next = watches;
	watches = w;
	return 0;
}

/* w ends; harmless when it was never added or was ended already. */
void tokens_watch_remove(struct token_watch *w)
{
	if (!w->active)
		return;
	for (struct token_watch **pp = &watches; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	w->active = false;
	w->next = NULL;
}

/* End the watches that match (token_id, or expired before now when token_id is 0). */
static void watches_end(int64_t token_id, int64_t now)
{
	struct token_watch **pp = &watches;

	while (*pp) {
		struct token_watch *w = *pp;

		if (token_id ? w->token_id == token_id : (w->expires_at && w->expires_at <= now)) {
			*pp = w->next;
			w->active = false;
			w->next = NULL;
			w->revoke_cb(w->cls); /* may free w */
			pp = &watches;	      /* the callback may have changed the list */
		} else {
			pp = &w->next;
		}
	}
}

/* The token token_id is deleted or its secret rotated: end its streams and long polls. */
void tokens_revoke(int64_t token_id)
{
	if (token_id > 0)
		watches_end(token_id, 0);
}

/* Every second: the streams and long polls of expired tokens and of clients that left end. */
void tokens_cron(void)
{
	watches_end(0, now_ms());
	watches_reap(0);
}
