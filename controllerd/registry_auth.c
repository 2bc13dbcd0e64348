/*
 * registry_auth.c - how registry clients prove who they are: the Docker Registry v2
 * token flow, and Basic credentials whose password is an API token.
 *
 * podman, buildah, docker and the OCI conformance suite do not send an API token as a
 * bearer on their own. They GET /v2/, read the 401's challenge
 *
 *   WWW-Authenticate: Bearer realm="https://HOST/v2/token",service="kumo",
 *                     scope="repository:NAME:pull,push"
 *
 * and ask the realm for a token with Basic credentials (any user name, an API token as
 * the password). GET /v2/token answers a short-lived registry token: a JWT (HS256)
 * keyed with state_dir/registry.key, naming the API token it was issued for (sub) and
 * the repositories and actions it grants (access), never more than that API token's
 * role allows: viewer pull; operator and admin pull, push and delete. Every use checks
 * the signature, the expiry, and that the API token still exists with its role, so
 * deleting an API token ends its registry tokens at once.
 *
 * The registry routes also take an API token directly: "Bearer kumo_..." (skopeo's
 * --registry-token) and Basic with the token as the password (--creds, auth files).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "controllerd.h"
#include "log.h"
#include "token.h"
#include "util.h"

#define SERVICE	    "kumo"
#define TOKEN_TTL_S 300 /* a registry token's life; clients ask again when it ends */
#define KEY_LEN	    32
#define SCOPES_MAX  16	 /* scopes one token request may name */
#define TOKEN_MAX   8192 /* a registry token longer than this was not made here */
/* base64url of {"alg":"HS256","typ":"JWT"}: the only header this file signs. */
#define JWT_HEADER "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"

static unsigned char signing_key[KEY_LEN];

/*
 * Load the key registry tokens are signed with from state_dir/registry.key, or make
 * one (32 random bytes, hex, mode 0600) at first start. Tokens outlive a restart.
 * Returns 0 or -1 with err.
 */
int registry_auth_init(const char *state_dir, struct kerr *err)
{
	_cleanup_free_ char *path = xasprintf("%s/registry.key", state_dir);
	int rc = key_file_load(path, signing_key, KEY_LEN, true);

	if (rc == -EINVAL)
		return err_set(err, 0, "%s does not hold %d hex digits", path, 2 * KEY_LEN);
	if (rc < 0)
		return err_set(err, -rc, "cannot read or make %s: %s", path, strerror(-rc));
	if (rc == 1)
		log_info("registry: made the registry token key %s", path);
	return 0;
}

/* ---- base64url and the signature ---- */

static char *b64url_encode(const void *data, size_t len)
{
	char *s = base64_encode(data, len);

	for (char *p = s; *p; p++) {
		if (*p == '+') {
			*p = '-';
		} else if (*p == '/') {
			*p = '_';
		} else if (*p == '=') {
			*p = '\0';
			break;
		}
	}
	return s;
}

/* len characters of base64url (no padding) decoded, or NULL when malformed. */
static char *b64url_decode(const char *in, size_t len, size_t *outlen)
{
	_cleanup_free_ char *std = xmalloc(len + 1);

	for (size_t i = 0; i < len; i++) {
		if (in[i] == '+' || in[i] == '/' || in[i] == '=')
			return NULL;
		std[i] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
	}
	std[len] = '\0';
	return base64_decode(std, outlen);
}

static void sign(const char *msg, size_t len, unsigned char mac[32])
{
	unsigned int n = 32;

	HMAC(EVP_sha256(), signing_key, KEY_LEN, (const unsigned char *)msg, len, mac, &n);
}

/* A registry token for API token token_id granting access (a reference is consumed). */
static char *token_issue(int64_t token_id, struct json_object *access, int64_t now_s)
{
	struct json_object *claims = json_object_new_object();
	_cleanup_free_ char *payload = NULL, *input = NULL, *sig = NULL;
	unsigned char jti[12], mac[32];
	char jti_hex[2 * sizeof(jti) + 1], sub[24];
	const char *text;

	random_bytes(jti, sizeof(jti));
	hex_encode(jti, sizeof(jti), jti_hex);
	snprintf(sub, sizeof(sub), "%" PRId64, token_id);
	json_object_object_add(claims, "iss", json_object_new_string(SERVICE));
	json_object_object_add(claims, "aud", json_object_new_string(SERVICE));
	json_object_object_add(claims, "sub", json_object_new_string(sub));
	json_object_object_add(claims, "iat", json_object_new_int64(now_s));
	json_object_object_add(claims, "nbf", json_object_new_int64(now_s));
	json_object_object_add(claims, "exp", json_object_new_int64(now_s + TOKEN_TTL_S));
	json_object_object_add(claims, "jti", json_object_new_string(jti_hex));
	json_object_object_add(claims, "access", access);
	text = json_object_to_json_string_ext(claims, JSON_C_TO_STRING_PLAIN |
							      JSON_C_TO_STRING_NOSLASHESCAPE);
	payload = b64url_encode(text, strlen(text));
	json_object_put(claims);
	input = xasprintf("%s.%s", JWT_HEADER, payload);
	sign(input, strlen(input), mac);
	sig = b64url_encode(mac, sizeof(mac));
	return xasprintf("%s.%s", input, sig);
}

/*
 * Check a registry token: made here, not expired, its API token still valid. Returns
 * that API token's role (*token_id its id, *access a new reference to what the
 * registry token grants), or ROLE_NONE.
 */
static enum role token_verify(const char *token, int64_t *token_id, struct json_object **access)
{
	const char *dot1 = strchr(token, '.'), *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	_cleanup_free_ char *sig = NULL, *payload = NULL;
	struct json_object *claims, *granted;
	unsigned char mac[32];
	size_t sig_len, payload_len;
	enum role role = ROLE_NONE;
	int64_t id, now_s = now_ms() / 1000;
	const char *sub;
	char *end;

	if (dot2 == NULL || strchr(dot2 + 1, '.') || strlen(token) > TOKEN_MAX ||
	    (size_t)(dot1 - token) != strlen(JWT_HEADER) ||
	    strncmp(token, JWT_HEADER, strlen(JWT_HEADER)) != 0)
		return ROLE_NONE;
	sign(token, (size_t)(dot2 - token), mac);
	sig = b64url_decode(dot2 + 1, strlen(dot2 + 1), &sig_len);
	if (sig == NULL || sig_len != sizeof(mac) || CRYPTO_memcmp(sig, mac, sizeof(mac)) != 0)
		return ROLE_NONE;
	/* Signed here: what follows reads our own claims. */
	payload = b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &payload_len);
	claims = payload ? json_tokener_parse(payload) : NULL;
	if (claims == NULL)
		return ROLE_NONE;
	sub = json_get_str(claims, "sub", "");
	id = strtoll(sub, &end, 10);
	if (json_get_int(claims, "exp", 0) > now_s &&
	    json_get_int(claims, "nbf", 0) <= now_s + 60 && *sub && *end == '\0' &&
	    json_object_object_get_ex(claims, "access", &granted) &&
	    json_object_is_type(granted, json_type_array)) {
		role = tokens_role_of(id, NULL, 0);
		if (role != ROLE_NONE) {
			*token_id = id;
			*access = json_object_get(granted);
		}
	}
	json_object_put(claims);
	return role;
}

/* An API token's role and id (tokens_check_secret()). */
static enum role secret_check(const char *token, int64_t *token_id)
{
	struct token_auth ta;
	const char *why;
	enum role role = tokens_check_secret(token, &ta, &why);

	*token_id = ta.id;
	return role;
}

/* Basic credentials "user:API token" (base64); the user name is not looked at. */
static enum role basic_check(const char *b64, int64_t *token_id)
{
	_cleanup_free_ char *cred = NULL;
	enum role role = ROLE_NONE;
	const char *colon;
	size_t len;

	if (strlen(b64) > 1024)
		return ROLE_NONE;
	cred = base64_decode(b64, &len);
	if (cred == NULL)
		return ROLE_NONE;
	colon = memchr(cred, ':', len);
	if (colon && memchr(cred, '\0', len) == NULL)
		role = secret_check(colon + 1, token_id);
	OPENSSL_cleanse(cred, len);
	return role;
}

/* An API token as a bearer or as a Basic password; never a registry token. */
static enum role api_credentials(const char *authorization, int64_t *token_id)
{
	if (authorization == NULL)
		return ROLE_NONE;
	if (!strncasecmp(authorization, "Basic ", 6))
		return basic_check(authorization + 6, token_id);
	if (!strncasecmp(authorization, "Bearer ", 7))
		return secret_check(authorization + 7, token_id);
	return ROLE_NONE;
}

/*
 * The registry routes' authentication (their stream_ops.authenticate): an API token
 * as a bearer or a Basic password, or a registry token from /v2/token, whose grants
 * go to req->registry_access for registry_auth_allows(). Returns the role of the API
 * token behind it, or ROLE_NONE.
 */
enum role registry_auth_authenticate(struct request *req, const char *authorization)
{
	struct json_object *access = NULL;
	enum role role;

	json_object_put(req->registry_access);
	req->registry_access = NULL;
	if (authorization == NULL)
		return ROLE_NONE;
	if (strncasecmp(authorization, "Bearer ", 7) != 0 ||
	    !strncmp(authorization + 7, TOKEN_PREFIX, strlen(TOKEN_PREFIX)))
		return api_credentials(authorization, &req->token_id);
	role = token_verify(authorization + 7, &req->token_id, &access);
	req->registry_access = access;
	return role;
}

static bool actions_have(struct json_object *actions, const char *action)
{
	for (size_t i = 0; i < json_array_len(actions); i++) {
		const char *a = json_object_get_string(json_object_array_get_idx(actions, i));

		if (a && (!strcmp(a, action) || !strcmp(a, "*")))
			return true;
	}
	return false;
}

/*
 * May the request do action ("pull", "push", "delete", or "*" for the catalogue) on
 * the resource of type ("repository", "registry") and name? Always with an API token,
 * whose role http.c checked; with a registry token only when it grants that.
 */
bool registry_auth_allows(const struct request *req, const char *type, const char *name,
			  const char *action)
{
	struct json_object *access = req->registry_access;

	if (access == NULL)
		return true;
	for (size_t i = 0; i < json_array_len(access); i++) {
		struct json_object *e = json_object_array_get_idx(access, i), *actions;

		if (!strcmp(json_get_str(e, "type", ""), type) &&
		    !strcmp(json_get_str(e, "name", ""), name) &&
		    json_object_object_get_ex(e, "actions", &actions) &&
		    json_object_is_type(actions, json_type_array) && actions_have(actions, action))
			return true;
	}
	return false;
}

/* ---- the challenge ---- */

/* A Host header fit to quote back: a name or address and a port, nothing else. */
static bool host_ok(const char *host)
{
	size_t len = host ? strlen(host) : 0;

	return len > 0 && len < 256 &&
	       strspn(host,
		      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") == len;
}

/*
 * Add the 401 challenge that sends a client to /v2/token: the realm on the host the
 * client used, the service, and the scope this request needs (registry_scope());
 * insufficient says the token sent does not cover that scope.
 */
void registry_auth_challenge(struct request *req, struct MHD_Response *resp, bool insufficient)
{
	const char *host = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Host");
	char scope[OCI_REPO_MAX + 64], value[OCI_REPO_MAX + 512];

	if (!host_ok(host))
		host = ctl.cfg.api_listen;
	registry_scope(req, scope, sizeof(scope));
	snprintf(value, sizeof(value), "Bearer realm=\"%s://%s/v2/token\",service=\"%s\"%s%s%s%s",
		 ctl.cfg.tls ? "https" : "http", host, SERVICE, scope[0] ? ",scope=\"" : "", scope,
		 scope[0] ? "\"" : "", insufficient ? ",error=\"insufficient_scope\"" : "");
	MHD_add_response_header(resp, "WWW-Authenticate", value);
}

/* ---- GET /v2/token ---- */

struct scope_walk {
	enum role role;
	struct json_object *access;
	int seen;
};

/*
 * One scope "TYPE:NAME:ACTIONS" as far as role allows it: repository pull for any
 * role, push and delete for operators; registry:catalog:* for any role. What is
 * not allowed is left out (the token spec grants a subset; the registry refuses the
 * rest when it is tried).
 */
static void scope_grant(struct scope_walk *w, const char *scope, size_t len)
{
	static const struct {
		const char *action;
		enum role least;
	} actions[] = {{"pull", ROLE_VIEWER}, {"push", ROLE_OPERATOR}, {"delete", ROLE_OPERATOR}};
	char buf[OCI_REPO_MAX + 64], *type = buf, *name, *list, *tok, *save = NULL;
	struct json_object *granted, *entry;

	if (len >= sizeof(buf) || ++w->seen > SCOPES_MAX)
		return;
	memcpy(buf, scope, len);
	buf[len] = '\0';
	name = strchr(buf, ':');
	list = strrchr(buf, ':');
	if (name == NULL || list == name)
		return;
	*name++ = '\0';
	*list++ = '\0';
	granted = json_object_new_array();
	if (!strcmp(type, "registry") && !strcmp(name, "catalog")) {
		if (w->role >= ROLE_VIEWER)
			json_object_array_add(granted, json_object_new_string("*"));
	} else if (!strcmp(type, "repository") && oci_repo_valid(name)) {
		for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
			for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
				if ((!strcmp(tok, actions[i].action) || !strcmp(tok, "*")) &&
				    w->role >= actions[i].least &&
				    !actions_have(granted, actions[i].action))
					json_object_array_add(
						granted, json_object_new_string(actions[i].action));
	}
	if (json_array_len(granted) == 0) {
		json_object_put(granted);
		return;
	}
	entry = json_object_new_object();
	json_object_object_add(entry, "type", json_object_new_string(type));
	json_object_object_add(entry, "name", json_object_new_string(name));
	json_object_object_add(entry, "actions", granted);
	json_object_array_add(w->access, entry);
}

/* Every ?scope= (a client may send several, each may hold several separated by spaces). */
static enum MHD_Result scope_iter(void *cls, enum MHD_ValueKind kind, const char *key,
				  const char *value)
{
	struct scope_walk *w = cls;

	if (strcmp(key, "scope") != 0 || value == NULL)
		return MHD_YES;
	for (const char *p = value; *p;) {
		size_t len = strcspn(p, " ");

		if (len)
			scope_grant(w, p, len);
		p += len;
		p += strspn(p, " ");
	}
	return MHD_YES;
}

/*
 * GET /v2/token?service=..&scope=..: a registry token for the Basic credentials (an
 * API token as the password) or API bearer token sent, granting of the scopes asked
 * what that token's role allows. Without valid credentials 401 with a Basic challenge,
 * which is how `podman login` learns a password is wrong.
 */
enum MHD_Result registry_token_get(struct request *req)
{
	const char *auth = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Authorization");
	struct scope_walk walk = {.access = json_object_new_array()};
	struct json_object *body;
	int64_t now_s = now_ms() / 1000, token_id = 0;
	char issued[32], *token;
	struct tm tm;
	time_t t = (time_t)now_s;

	walk.role = api_credentials(auth, &token_id);
	if (walk.role == ROLE_NONE) {
		char *text = registry_error_text(401, "UNAUTHORIZED",
						 auth ? "the credentials are not valid: the "
							"password must be a Kumo API token"
						      : "credentials are required: any user name "
							"and a Kumo API token as the "
							"password",
						 NULL);
		struct MHD_Response *resp =
			MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);

		json_object_put(walk.access);
		MHD_add_response_header(resp, "Content-Type", "application/json");
		MHD_add_response_header(resp, "WWW-Authenticate", "Basic realm=\"kumo registry\"");
		return http_reply_response(req, 401, resp);
	}
	req->token_id = token_id;
	MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, scope_iter, &walk);
	log_debug("registry: token for API token %" PRId64 " (%s): %s", token_id,
		  role_name(walk.role), json_text(walk.access));
	token = token_issue(token_id, walk.access, now_s);
	gmtime_r(&t, &tm);
	strftime(issued, sizeof(issued), "%Y-%m-%dT%H:%M:%SZ", &tm);
	body = json_object_new_object();
	json_object_object_add(body, "token", json_object_new_string(token));
	json_object_object_add(body, "access_token", json_object_new_string(token));
	json_object_object_add(body, "expires_in", json_object_new_int(TOKEN_TTL_S));
	json_object_object_add(body, "issued_at", json_object_new_string(issued));
	OPENSSL_cleanse(token, strlen(token));
	free(token);
	return http_reply_json(req, 200, body);
}
