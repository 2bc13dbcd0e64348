/*
 * tokens.c - API and join tokens: the first admin token, bearer authentication and
 * the single use of join tokens. Only SHA-256 digests are stored.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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

/*
 * Check an API token (the token itself, no "Bearer "). Returns its role, or ROLE_NONE
 * for a malformed, unknown or expired token; *token_id gets its id.
 */
enum role tokens_check(const char *token, int64_t *token_id)
{
	char digest[TOKEN_DIGEST_LEN + 1];
	enum role role = ROLE_NONE;
	sqlite3_stmt *st;

	if (!token_well_formed(token))
		return ROLE_NONE;
	token_digest(token, digest);
	st = db_prepare(ctl.db, "SELECT id, role FROM tokens WHERE digest = ? AND kind = 'api' "
				"AND (expires_at IS NULL OR expires_at > ?)");
	sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now_ms());
	if (sqlite3_step(st) == SQLITE_ROW) {
		*token_id = sqlite3_column_int64(st, 0);
		if (role_parse((const char *)sqlite3_column_text(st, 1), &role) < 0)
			role = ROLE_NONE;
	}
	sqlite3_finalize(st);
	return role;
}

/*
 * The role of the API token with id token_id, or ROLE_NONE once it was deleted or
 * expired: what a registry token issued for it may still do.
 */
enum role tokens_role_of(int64_t token_id)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT role FROM tokens WHERE id = ? AND "
					      "kind = 'api' AND (expires_at IS NULL OR "
					      "expires_at > ?)");
	enum role role = ROLE_NONE;

	sqlite3_bind_int64(st, 1, token_id);
	sqlite3_bind_int64(st, 2, now_ms());
	if (sqlite3_step(st) == SQLITE_ROW &&
	    role_parse((const char *)sqlite3_column_text(st, 0), &role) < 0)
		role = ROLE_NONE;
	sqlite3_finalize(st);
	return role;
}

/*
 * Check an Authorization header value ("Bearer <token>"). Returns the token's role,
 * or ROLE_NONE for a missing, malformed, unknown or expired token.
 */
enum role tokens_authenticate(const char *authorization, int64_t *token_id)
{
	if (authorization == NULL || strncmp(authorization, "Bearer ", 7) != 0)
		return ROLE_NONE;
	return tokens_check(authorization + 7, token_id);
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
	 * join port is open to anyone, and each try costs an HMAC per token. */
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT id, digest, coalesce(expires_at, 0), "
				   "coalesce(used_at, 0), name FROM tokens "
				   "WHERE kind = 'join' AND (used_at IS NULL OR used_at > ?1) "
				   "AND (expires_at IS NULL OR expires_at > ?1)");
	int64_t now = now_ms(), id = 0, expires = 0, used = 0;
	char bound[128] = "", want[TOKEN_DIGEST_LEN + 1];
	bool found = false;
	int rc;

	sqlite3_bind_int64(st, 1, now - JOIN_RECENT_MS);
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
