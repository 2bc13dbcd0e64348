/*
 * tokens.c - API and join tokens: the first admin token, bearer authentication and
 * the single use of join tokens. Only SHA-256 digests are stored.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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
 * Check an Authorization header value. Returns the token's role, or ROLE_NONE for a
 * missing, malformed, unknown or expired token.
 */
enum role tokens_authenticate(const char *authorization, int64_t *token_id)
{
	char digest[TOKEN_DIGEST_LEN + 1];
	enum role role = ROLE_NONE;
	sqlite3_stmt *st;

	if (authorization == NULL || strncmp(authorization, "Bearer ", 7) != 0)
		return ROLE_NONE;
	authorization += 7;
	if (!token_well_formed(authorization))
		return ROLE_NONE;
	token_digest(authorization, digest);
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
 * Mark a join token used by host, inside the caller's transaction. Refuses (with the
 * reason in err) a malformed, unknown, expired or already used token.
 */
int tokens_join_consume(const char *token, const char *host, struct kerr *err)
{
	char digest[TOKEN_DIGEST_LEN + 1];
	sqlite3_stmt *st;
	int64_t now = now_ms(), id, expires, used;
	int rc;

	if (!token_well_formed(token))
		return err_set(err, 0, "join token is malformed");
	token_digest(token, digest);
	char bound[128] = "";

	st = db_prepare(ctl.db, "SELECT id, coalesce(expires_at, 0), coalesce(used_at, 0), name "
				"FROM tokens WHERE digest = ? AND kind = 'join'");
	sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	id = sqlite3_column_int64(st, 0);
	expires = sqlite3_column_int64(st, 1);
	used = sqlite3_column_int64(st, 2);
	if (rc == SQLITE_ROW)
		snprintf(bound, sizeof(bound), "%s", sqlite3_column_text(st, 3));
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW)
		return err_set(err, 0, "join token is not known to this cluster");
	if (used)
		return err_set(err, 0, "join token was already used");
	if (expires && expires <= now)
		return err_set(err, 0, "join token has expired");
	/* A join token named for a host joins only that host; taking over the name of a
	 * host that joined before needs a token issued for that name. */
	if (bound[0] && strcmp(bound, host) != 0)
		return err_set(err, 0, "join token is for host %s, not %s", bound, host);
	if (!bound[0] && host_find(host))
		return err_set(err, 0,
			       "host %s has joined already; re-joining it needs a join token "
			       "issued for it (\"name\": \"%s\")",
			       host, host);
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
