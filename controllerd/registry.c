/*
 * registry.c - the OCI distribution API under /v2/, so skopeo, podman, buildah and
 * docker push to and pull from the cluster: version check, blob uploads (monolithic
 * and chunked), blob and manifest GET/HEAD/PUT/DELETE, tag lists, the catalogue and
 * the OCI 1.1 referrers of a manifest.
 *
 * http.c routes every /v2/ path here through prefix rows (ending in a star) and
 * authenticates first with registry_auth.c (API tokens, Basic credentials, registry
 * tokens): viewer may pull, operator may push. The rest of the path holds a repository
 * name with slashes, so it is parsed here, from its end; a registry token must then
 * also grant that repository (call_granted()). Every /v2/ row streams its body: blob
 * data goes to an upload session file, {shared}/oci/uploads/<uuid>, never into memory;
 * a manifest (4 MiB at most) is collected in req->body.
 *
 * Hashing a blob is slow, so a request that stores one is suspended while oci_store.c
 * hashes it in the thread pool, and resumed with the result. Reads are not hashed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define BLOB_MAX (64ULL << 30) /* one blob, however many chunks it came in */
#define UUID_LEN 36
#define LIST_MAX 10000 /* ?n= of tag lists and the catalogue */
/* A blob sent over TLS is read this much at a time: libmicrohttpd's own file responses
 * read 4 KiB, which under TLS means a record and a system call per 4 KiB. */
#define BLOB_READ_BLOCK (256 << 10)

enum endpoint {
	EP_BASE,	 /* /v2/ */
	EP_CATALOG,	 /* /v2/_catalog */
	EP_TAGS,	 /* /v2/<name>/tags/list */
	EP_MANIFEST,	 /* /v2/<name>/manifests/<tag or digest> */
	EP_BLOB,	 /* /v2/<name>/blobs/<digest> */
	EP_UPLOAD_START, /* /v2/<name>/blobs/uploads/ */
	EP_UPLOAD,	 /* /v2/<name>/blobs/uploads/<uuid> */
	EP_REFERRERS,	 /* /v2/<name>/referrers/<digest> */
};

/* One /v2/ request, from its headers to its end (req->ctx; call_end() frees it). */
struct registry_call {
	struct request *req; /* NULL once the request ended while a store job was out */
	enum endpoint ep;
	char name[OCI_REPO_MAX + 1];
	char ref[OCI_TAG_MAX + 1]; /* the tag, digest or upload uuid of the path */
	char *session;		   /* uploads: the session file */
	int64_t start;		   /* uploads: the session's size before this request */
	int64_t chunk;		   /* the length Content-Range announced, -1 without one */
	bool writing;		   /* this request appends a chunk not accepted yet */
	bool pending;		   /* a store job will call back with this call */
	struct oci_result result;  /* that job's answer, read when the request resumes */
	struct registry_call *next;
};

static struct registry_call *calls; /* every /v2/ request in progress */

/* ---- errors and headers ---- */

static const char *code_for_status(unsigned status)
{
	switch (status) {
	case 401:
		return "UNAUTHORIZED";
	case 403:
		return "DENIED";
	case 404:
		return "NAME_UNKNOWN";
	case 413:
		return "SIZE_INVALID";
	case 400:
	case 405:
		return "UNSUPPORTED";
	default:
		return "UNKNOWN";
	}
}

/* True for the paths this file serves; http.c answers their errors in our shape. */
bool registry_url(const char *url)
{
	return strcmp(url, "/v2") == 0 || strncmp(url, "/v2/", 4) == 0;
}

/*
 * The distribution spec's error body {"errors":[{"code","message","detail"}]}; code
 * NULL picks one for status; detail (a reference is consumed) may be NULL. The caller
 * frees the text.
 */
char *registry_error_text(unsigned status, const char *code, const char *message,
			  struct json_object *detail)
{
	struct json_object *body = json_object_new_object(), *errors = json_object_new_array();
	struct json_object *e = json_object_new_object();
	char *text;

	json_object_object_add(e, "code",
			       json_object_new_string(code ? code : code_for_status(status)));
	json_object_object_add(e, "message", json_object_new_string(message));
	json_object_object_add(e, "detail", detail);
	json_object_array_add(errors, e);
	json_object_object_add(body, "errors", errors);
	text = xasprintf("%s\n", json_text(body));
	json_object_put(body);
	return text;
}

static struct MHD_Response *error_response(struct request *req, unsigned status, const char *code,
					   struct json_object *detail, const char *msg)
{
	char *text = registry_error_text(status, code, msg, detail);
	struct MHD_Response *resp;

	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	/* Only a token that does not cover the request is refused here. */
	if (status == 401)
		registry_auth_challenge(req, resp, true);
	return resp;
}

static enum MHD_Result reply_error(struct request *req, unsigned status, const char *code,
				   struct json_object *detail, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/* Answer status with the error body; detail (a reference is consumed) may be NULL. */
static enum MHD_Result reply_error(struct request *req, unsigned status, const char *code,
				   struct json_object *detail, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (status >= 500)
		log_warnx("registry: %s %s: %s", req->method, req->url, msg);
	return http_reply_response(req, status, error_response(req, status, code, detail, msg));
}

static struct json_object *detail_str(const char *key, const char *value)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, key, json_object_new_string(value));
	return o;
}

static struct MHD_Response *empty_response(void)
{
	return MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
}

static void header_printf(struct MHD_Response *resp, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void header_printf(struct MHD_Response *resp, const char *name, const char *fmt, ...)
{
	char value[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(value, sizeof(value), fmt, ap);
	va_end(ap);
	MHD_add_response_header(resp, name, value);
}

/* Where an upload session stands: Location, Range (bytes held) and its uuid. */
static void upload_headers(struct MHD_Response *resp, const struct registry_call *call,
			   int64_t size)
{
	header_printf(resp, "Location", "/v2/%s/blobs/uploads/%s", call->name, call->ref);
	header_printf(resp, "Range", "0-%" PRId64, size > 0 ? size - 1 : 0);
	MHD_add_response_header(resp, "Docker-Upload-UUID", call->ref);
}

/* ---- the path ---- */

static bool uuid_valid(const char *s)
{
	if (strlen(s) != UUID_LEN)
		return false;
	for (int i = 0; i < UUID_LEN; i++) {
		bool dash = i == 8 || i == 13 || i == 18 || i == 23;

		if (dash ? s[i] != '-'
			 : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	}
	return true;
}

static void uuid_new(char *out)
{
	unsigned char b[16];
	char hex[33];

	random_bytes(b, sizeof(b));
	b[6] = (b[6] & 0x0f) | 0x40; /* version 4 */
	b[8] = (b[8] & 0x3f) | 0x80; /* RFC 4122 variant */
	hex_encode(b, sizeof(b), hex);
	snprintf(out, UUID_LEN + 1, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16,
		 hex + 20);
}

static bool ends_with(const char *s, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);

	return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/*
 * Split what follows "/v2/" (NULL for "/v2/" itself) into call. The name is what
 * precedes the endpoint's own segments, read from the end: a repository may itself
 * hold a segment called "blobs". Returns 0, -ENOENT for no such endpoint, or -EINVAL
 * for a name that is not valid (call->name holds what was given).
 */
static int path_split(const char *rest, struct registry_call *call)
{
	size_t len, name_len, seg_len;
	const char *last, *seg;

	if (rest == NULL) {
		call->ep = EP_BASE;
		return 0;
	}
	if (strcmp(rest, "_catalog") == 0) {
		call->ep = EP_CATALOG;
		return 0;
	}
	len = strlen(rest);
	if (ends_with(rest, len, "/tags/list")) {
		call->ep = EP_TAGS;
		name_len = len - strlen("/tags/list");
		goto name;
	}
	last = strrchr(rest, '/');
	if (last == NULL)
		return -ENOENT;
	/* seg: the segment before the last one. */
	for (seg = last; seg > rest && seg[-1] != '/'; seg--)
		;
	seg_len = (size_t)(last - seg);
	last++;
	if (strlen(last) > OCI_TAG_MAX)
		return -ENOENT;
	snprintf(call->ref, sizeof(call->ref), "%s", last);
	if (seg_len == 9 && !strncmp(seg, "manifests", 9)) {
		call->ep = EP_MANIFEST;
	} else if (seg_len == 9 && !strncmp(seg, "referrers", 9)) {
		call->ep = EP_REFERRERS;
	} else if (seg_len == 5 && !strncmp(seg, "blobs", 5)) {
		call->ep = strcmp(last, "uploads") ? EP_BLOB : EP_UPLOAD_START;
	} else if (seg_len == 7 && !strncmp(seg, "uploads", 7) && seg - rest >= 7 &&
		   !strncmp(seg - 7, "/blobs/", 7)) {
		call->ep = last[0] ? EP_UPLOAD : EP_UPLOAD_START;
		seg -= 6; /* the name ends before "/blobs/uploads/" */
	} else {
		return -ENOENT;
	}
	if (seg == rest)
		return -ENOENT;
	name_len = (size_t)(seg - 1 - rest);
name:
	snprintf(call->name, sizeof(call->name), "%.*s", (int)name_len, rest);
	if (name_len == 0 || name_len > OCI_REPO_MAX || !oci_repo_valid(call->name))
		return -EINVAL;
	return 0;
}

/* path_split(), answering 404 or 400 NAME_INVALID when it fails. */
static int path_parse(struct request *req, struct registry_call *call, const char *rest)
{
	int rc = path_split(rest, call);

	if (rc == -EINVAL)
		reply_error(
			req, 400, "NAME_INVALID", detail_str("name", call->name),
			"a repository name is 1-3 '/'-separated parts of [a-z0-9] joined by '.', "
			"'_' or '-', 128 characters at most");
	else if (rc < 0)
		reply_error(req, 404, "NAME_UNKNOWN", NULL, "no such registry endpoint: %s",
			    req->url);
	return rc;
}

static bool method_reads(const struct request *req)
{
	return !strcmp(req->method, "GET") || !strcmp(req->method, "HEAD");
}

/*
 * The scope the request needs, as registry tokens name it: "repository:NAME:pull" to
 * read, "repository:NAME:pull,push" to write (delete included), "registry:catalog:*"
 * for the catalogue; "" for the base or a path that is no endpoint.
 */
void registry_scope(const struct request *req, char *out, size_t len)
{
	struct registry_call parsed = {0};
	const struct registry_call *call = req->ctx;

	out[0] = '\0';
	if (call == NULL) {
		if (path_split(req->route ? req->params[0] : NULL, &parsed) < 0)
			return;
		call = &parsed;
	}
	if (call->ep == EP_CATALOG)
		snprintf(out, len, "registry:catalog:*");
	else if (call->ep != EP_BASE && call->name[0] && oci_repo_valid(call->name))
		snprintf(out, len, "repository:%s:%s", call->name,
			 method_reads(req) ? "pull" : "pull,push");
}

/* Does the registry token the request came with (if any) cover it? */
static bool call_granted(const struct request *req, const struct registry_call *call)
{
	if (call->ep == EP_BASE)
		return true;
	if (call->ep == EP_CATALOG)
		return registry_auth_allows(req, "registry", "catalog", "*");
	if (method_reads(req))
		return registry_auth_allows(req, "repository", call->name, "pull");
	/* A client may have asked for "delete" (the distribution spec's own action). */
	if (!strcmp(req->method, "DELETE") &&
	    registry_auth_allows(req, "repository", call->name, "delete"))
		return true;
	return registry_auth_allows(req, "repository", call->name, "push");
}

/* ---- store jobs: the request waits suspended for the thread pool ---- */

static void call_free(struct registry_call *call)
{
	free(call->session);
	free(call);
}

static void job_done_cb(const struct oci_result *res, void *cls)
{
	struct registry_call *call = cls;

	call->pending = false;
	call->result = *res;
	if (call->req == NULL) { /* the request is gone (the controller is stopping) */
		call_free(call);
		return;
	}
	http_resume(call->req);
}

static void job_wait(struct request *req, enum MHD_Result (*answer)(struct request *req))
{
	struct registry_call *call = req->ctx;

	call->pending = true;
	http_suspend(req, answer);
}

/* ---- version check, catalogue, tags ---- */

static enum MHD_Result base_get(struct request *req, struct registry_call *call)
{
	return http_reply_json(req, 200, json_object_new_object());
}

/* ?n= and ?last= of a list; -1 when answered already (bad n). */
static int page_args(struct request *req, int64_t *n, const char **last)
{
	struct kerr err;

	if (http_query_int(req, "n", 0, LIST_MAX, LIST_MAX, n, &err) < 0) {
		reply_error(req, 400, "UNSUPPORTED", detail_str("n", http_query(req, "n")), "%s",
			    err.msg);
		return -1;
	}
	*last = http_query(req, "last");
	return 0;
}

/* Answer list under key; one more than n was fetched to know whether a page follows. */
static enum MHD_Result page_reply(struct request *req, struct json_object *out, const char *key,
				  struct json_object *list, int64_t n, const char *base)
{
	size_t len = json_array_len(list);
	struct json_object *body = json_object_new_object();
	struct MHD_Response *resp;
	char *text;

	if (len > (size_t)n) {
		json_object_array_del_idx(list, (size_t)n, len - (size_t)n);
		len = (size_t)n;
	}
	if (out) {
		json_object_put(body);
		body = out;
	}
	json_object_object_add(body, key, list);
	text = xasprintf("%s\n", json_text(body));
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	if (len > 0 && len == (size_t)n && n > 0) {
		const char *next = json_object_get_string(json_object_array_get_idx(list, len - 1));

		header_printf(resp, "Link", "<%s?n=%" PRId64 "&last=%s>; rel=\"next\"", base, n,
			      next);
	}
	json_object_put(body);
	return http_reply_response(req, 200, resp);
}

static enum MHD_Result catalog_get(struct request *req, struct registry_call *call)
{
	const char *last;
	int64_t n;

	if (page_args(req, &n, &last) < 0)
		return MHD_YES;
	return page_reply(req, NULL, "repositories", oci_repos_list(last, n + 1), n,
			  "/v2/_catalog");
}

static enum MHD_Result tags_get(struct request *req, struct registry_call *call)
{
	struct json_object *out;
	char base[OCI_REPO_MAX + 32];
	const char *last;
	int64_t n;

	if (!oci_repo_exists(call->name))
		return reply_error(req, 404, "NAME_UNKNOWN", detail_str("name", call->name),
				   "repository %s is not in the registry", call->name);
	if (page_args(req, &n, &last) < 0)
		return MHD_YES;
	out = json_object_new_object();
	json_object_object_add(out, "name", json_object_new_string(call->name));
	snprintf(base, sizeof(base), "/v2/%s/tags/list", call->name);
	return page_reply(req, out, "tags", oci_tags_list(call->name, last, n + 1), n, base);
}

/* ---- manifests ---- */

static enum MHD_Result manifest_unknown(struct request *req, struct registry_call *call)
{
	return reply_error(req, 404, "MANIFEST_UNKNOWN", detail_str("reference", call->ref),
			   "manifest %s is not in repository %s", call->ref, call->name);
}

static enum MHD_Result manifest_get(struct request *req, struct registry_call *call)
{
	char digest[OCI_DIGEST_LEN + 1], mt[OCI_MEDIA_TYPE_MAX + 1];
	struct MHD_Response *resp;
	struct kerr err;
	char *data;
	size_t len;
	int rc;

	if ((!oci_tag_valid(call->ref) && !oci_digest_valid(call->ref)) ||
	    oci_manifest_lookup(call->name, call->ref, digest, mt, NULL) < 0)
		return manifest_unknown(req, call);
	rc = oci_manifest_load(digest, &data, &len, &err);
	if (rc == -ENOENT)
		return manifest_unknown(req, call);
	if (rc < 0)
		return reply_error(req, 500, "UNKNOWN", NULL, "%s", err.msg);
	resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", mt);
	MHD_add_response_header(resp, "Docker-Content-Digest", digest);
	header_printf(resp, "ETag", "\"%s\"", digest);
	return http_reply_response(req, 200, resp);
}

static enum MHD_Result manifest_put(struct request *req, struct registry_call *call)
{
	bool by_digest = oci_digest_valid(call->ref);
	char digest[OCI_DIGEST_LEN + 1];
	struct oci_manifest_info info;
	struct MHD_Response *resp;
	struct kerr err;
	int rc;

	if (!by_digest && !oci_tag_valid(call->ref))
		return reply_error(req, 400, "MANIFEST_INVALID", detail_str("reference", call->ref),
				   "the reference must be a tag ([A-Za-z0-9_][A-Za-z0-9._-], 128 "
				   "at most) or a sha256 digest");
	if (req->upload_error[0])
		return reply_error(req, 413, "SIZE_INVALID", NULL, "%s", req->upload_error);
	if (req->body_len == 0)
		return reply_error(req, 400, "MANIFEST_INVALID", NULL, "the manifest is empty");
	oci_digest_of(req->body, req->body_len, digest);
	if (by_digest && strcmp(digest, call->ref) != 0)
		return reply_error(req, 400, "DIGEST_INVALID", detail_str("digest", digest),
				   "the manifest's digest is %s, not %s", digest, call->ref);
	rc = oci_manifest_check(
		req->body, req->body_len,
		MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Content-Type"), &info,
		&err);
	if (rc == -ENOENT)
		return reply_error(req, 400, "MANIFEST_BLOB_UNKNOWN",
				   detail_str("field", err.field), "%s", err.msg);
	if (rc < 0)
		return reply_error(req, 400, "MANIFEST_INVALID",
				   err.field[0] ? detail_str("field", err.field) : NULL, "%s",
				   err.msg);
	if (oci_blob_put_mem(req->body, req->body_len, digest, &err) < 0 ||
	    oci_image_record(call->name, by_digest ? NULL : call->ref, digest,
			     (int64_t)req->body_len, &info, &err) < 0)
		return reply_error(req, 500, "UNKNOWN", NULL, "%s", err.msg);
	log_info("registry: %s:%s pushed (%s, %s)", call->name, call->ref, digest, info.media_type);
	resp = empty_response();
	/* OCI 1.1: the registry says it indexed the subject, so the client need not keep a
	 * referrers tag itself. */
	if (info.subject[0])
		MHD_add_response_header(resp, "OCI-Subject", info.subject);
	header_printf(resp, "Location", "/v2/%s/manifests/%s", call->name, digest);
	MHD_add_response_header(resp, "Docker-Content-Digest", digest);
	return http_reply_response(req, 201, resp);
}

/* By digest: the manifest and its tags go. By tag: that tag goes. */
static enum MHD_Result manifest_delete(struct request *req, struct registry_call *call)
{
	bool by_digest = oci_digest_valid(call->ref);
	_cleanup_free_ char *name =
		xasprintf("%s%c%s", call->name, by_digest ? '@' : ':', call->ref);
	char who[NAME_MAX + 1];
	struct kerr err;
	int rc;

	if (!by_digest && !oci_tag_valid(call->ref))
		return manifest_unknown(req, call);
	if (oci_image_used(by_digest ? NULL : name, by_digest ? call->ref : NULL, who, sizeof(who)))
		return reply_error(req, 409, "DENIED", detail_str("instance", who),
				   "%s is used by instance %s", name, who);
	rc = by_digest ? oci_manifest_remove(call->name, call->ref, &err)
		       : oci_tag_remove(call->name, call->ref, &err);
	if (rc == -ENOENT)
		return manifest_unknown(req, call);
	if (rc < 0)
		return reply_error(req, 500, "UNKNOWN", NULL, "%s", err.msg);
	return http_reply_response(req, 202, empty_response());
}

/*
 * GET /v2/<name>/referrers/<digest> (OCI 1.1): an image index of the manifests whose
 * subject is digest; empty (still 200) when there are none. ?artifactType= keeps
 * those of that type, and OCI-Filters-Applied says so.
 */
static enum MHD_Result referrers_get(struct request *req, struct registry_call *call)
{
	const char *filter = http_query(req, "artifactType");
	struct json_object *index;
	struct MHD_Response *resp;
	char *text;

	if (!oci_digest_valid(call->ref))
		return reply_error(req, 400, "DIGEST_INVALID", detail_str("digest", call->ref),
				   "a digest is sha256: and 64 lower-case hex digits");
	index = json_object_new_object();
	json_object_object_add(index, "schemaVersion", json_object_new_int(2));
	json_object_object_add(index, "mediaType", json_object_new_string(OCI_MT_INDEX));
	json_object_object_add(index, "manifests",
			       oci_referrers_list(call->name, call->ref, filter));
	text = xasprintf("%s\n", json_text(index));
	json_object_put(index);
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", OCI_MT_INDEX);
	if (filter)
		MHD_add_response_header(resp, "OCI-Filters-Applied", "artifactType");
	return http_reply_response(req, 200, resp);
}

/* ---- blobs ---- */

static enum MHD_Result blob_unknown(struct request *req, struct registry_call *call)
{
	return reply_error(req, 404, "BLOB_UNKNOWN", detail_str("digest", call->ref),
			   "blob %s is not in the registry", call->ref);
}

static enum MHD_Result digest_invalid(struct request *req, const char *digest)
{
	return reply_error(req, 400, "DIGEST_INVALID", detail_str("digest", digest ? digest : ""),
			   "a digest is sha256: and 64 lower-case hex digits");
}

static ssize_t blob_read_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
	ssize_t n = pread((int)(intptr_t)cls, buf, max, (off_t)pos);

	return n > 0 ? n : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void blob_close_cb(void *cls)
{
	close((int)(intptr_t)cls);
}

/*
 * GET and HEAD: the blob straight from its file. On plain HTTP libmicrohttpd sends
 * it with sendfile; under TLS it is read in large blocks into the response's buffer
 * and encrypted from there. Blobs are hashed when they are stored and by the store's
 * scheduled check (oci_blobs_verify_cron()), not on every read: a pull costs what
 * sending the file costs.
 */
static enum MHD_Result blob_get(struct request *req, struct registry_call *call)
{
	_cleanup_free_ char *path = NULL;
	struct MHD_Response *resp;
	struct stat sb;
	int fd;

	if (!oci_digest_valid(call->ref))
		return digest_invalid(req, call->ref);
	path = oci_blob_path(call->ref);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return blob_unknown(req, call);
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		return blob_unknown(req, call);
	}
	/* libmicrohttpd owns the descriptor from here and closes it; a HEAD answer
	 * carries the length of the body it omits and never reads it. */
	if (ctl.cfg.tls)
		resp = MHD_create_response_from_callback((uint64_t)sb.st_size, BLOB_READ_BLOCK,
							 blob_read_cb, (void *)(intptr_t)fd,
							 blob_close_cb);
	else
		resp = MHD_create_response_from_fd((uint64_t)sb.st_size, fd);
	if (resp == NULL) {
		close(fd);
		return reply_error(req, 500, "UNKNOWN", NULL, "cannot serve blob %s", call->ref);
	}
	MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
	MHD_add_response_header(resp, "Docker-Content-Digest", call->ref);
	header_printf(resp, "ETag", "\"%s\"", call->ref);
	return http_reply_response(req, 200, resp);
}

static enum MHD_Result blob_delete_answer(struct request *req)
{
	struct registry_call *call = req->ctx;
	struct oci_result *res = &call->result;

	if (res->status == -ENOENT)
		return blob_unknown(req, call);
	if (res->status == -EBUSY)
		return reply_error(req, 409, "DENIED", detail_str("digest", call->ref), "%s",
				   res->error);
	if (res->status < 0)
		return reply_error(req, 500, "UNKNOWN", NULL, "%s", res->error);
	log_info("registry: blob %s deleted", call->ref);
	return http_reply_response(req, 202, empty_response());
}

static enum MHD_Result blob_delete(struct request *req, struct registry_call *call)
{
	if (!oci_digest_valid(call->ref))
		return digest_invalid(req, call->ref);
	job_wait(req, blob_delete_answer);
	oci_blob_delete(call->ref, job_done_cb, call);
	return MHD_YES;
}

/* ---- uploads ---- */

static bool upload_busy(const struct registry_call *self)
{
	for (const struct registry_call *c = calls; c; c = c->next)
		if (c != self && c->ep == EP_UPLOAD && (c->writing || c->pending) &&
		    !strcmp(c->ref, self->ref))
			return true;
	return false;
}

/* A blob is stored (or refused): 201 with where it is, or why not. */
static enum MHD_Result blob_stored_answer(struct request *req)
{
	struct registry_call *call = req->ctx;
	struct oci_result *res = &call->result;
	const char *want = http_query(req, "digest");
	struct MHD_Response *resp;

	if (res->status == -EBADMSG) {
		log_warnx("registry: upload to %s refused: %s", call->name, res->error);
		return reply_error(req, 400, "DIGEST_INVALID", detail_str("digest", want), "%s",
				   res->error);
	}
	if (res->status < 0)
		return reply_error(req, 500, "UNKNOWN", NULL, "%s", res->error);
	log_debug("registry: blob %s stored for %s (%" PRId64 " bytes)", res->digest, call->name,
		  res->size);
	resp = empty_response();
	header_printf(resp, "Location", "/v2/%s/blobs/%s", call->name, res->digest);
	MHD_add_response_header(resp, "Docker-Content-Digest", res->digest);
	return http_reply_response(req, 201, resp);
}

static enum MHD_Result write_error(struct request *req, struct registry_call *call)
{
	bool big = strstr(req->upload_error, "over") != NULL;

	/* The chunk is undone: the session holds what it held before. */
	if (req->upload_fd >= 0 && call->writing && ftruncate(req->upload_fd, call->start) < 0)
		log_warn("registry: upload %s", call->ref);
	return reply_error(req, big ? 413 : 500, big ? "SIZE_INVALID" : "UNKNOWN", NULL, "%s",
			   req->upload_error);
}

static enum MHD_Result upload_start(struct request *req, struct registry_call *call)
{
	const char *digest = http_query(req, "digest");
	_cleanup_free_ char *path = NULL;
	struct MHD_Response *resp;

	if (req->upload_fd < 0)
		return reply_error(req, 500, "UNKNOWN", NULL, "the upload was not opened");
	if (req->upload_error[0])
		return write_error(req, call);
	if (digest == NULL) {
		/* A session: it stays for PATCH and PUT. */
		free(req->upload_path);
		req->upload_path = NULL;
		resp = empty_response();
		upload_headers(resp, call, (int64_t)req->upload_len);
		return http_reply_response(req, 202, resp);
	}
	/* Monolithic: the body is the blob. */
	close(req->upload_fd);
	req->upload_fd = -1;
	path = STEAL_POINTER(&req->upload_path);
	job_wait(req, blob_stored_answer);
	oci_blob_put_file(path, digest, job_done_cb, call);
	return MHD_YES;
}

/* 416 with where the session stands, so the client can resume from there. */
static enum MHD_Result range_error(struct request *req, struct registry_call *call, int64_t size,
				   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static enum MHD_Result range_error(struct request *req, struct registry_call *call, int64_t size,
				   const char *fmt, ...)
{
	struct MHD_Response *resp;
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	resp = error_response(req, 416, "BLOB_UPLOAD_INVALID", NULL, msg);
	upload_headers(resp, call, size);
	return http_reply_response(req, 416, resp);
}

/* The chunk this request appended, checked; -1 when answered (and the chunk undone). */
static int chunk_check(struct request *req, struct registry_call *call)
{
	if (req->upload_error[0]) {
		write_error(req, call);
		return -1;
	}
	if (call->chunk >= 0 && (int64_t)req->upload_len != call->chunk) {
		if (ftruncate(req->upload_fd, call->start) < 0)
			log_warn("registry: upload %s", call->ref);
		range_error(req, call, call->start,
			    "the chunk holds %" PRIu64 " bytes, not the %" PRId64
			    " its Content-Range says",
			    req->upload_len, call->chunk);
		return -1;
	}
	return 0;
}

static enum MHD_Result upload_patch(struct request *req, struct registry_call *call)
{
	struct MHD_Response *resp;

	if (chunk_check(req, call) < 0)
		return MHD_YES;
	call->writing = false; /* the chunk is accepted */
	resp = empty_response();
	upload_headers(resp, call, call->start + (int64_t)req->upload_len);
	return http_reply_response(req, 202, resp);
}

/* PUT ?digest=: the last chunk (if any) is in; the whole session becomes the blob if
 * it hashes to the digest, and is removed if not. */
static enum MHD_Result upload_finish(struct request *req, struct registry_call *call)
{
	if (chunk_check(req, call) < 0)
		return MHD_YES;
	close(req->upload_fd);
	req->upload_fd = -1;
	call->writing = false;
	job_wait(req, blob_stored_answer);
	oci_blob_put_file(call->session, http_query(req, "digest"), job_done_cb, call);
	return MHD_YES;
}

static enum MHD_Result upload_status(struct request *req, struct registry_call *call)
{
	_cleanup_free_ char *path = NULL;
	struct MHD_Response *resp;
	struct stat sb;

	if (!uuid_valid(call->ref))
		goto unknown;
	path = oci_upload_path(call->ref);
	if (stat(path, &sb) < 0)
		goto unknown;
	resp = empty_response();
	upload_headers(resp, call, sb.st_size);
	return http_reply_response(req, 204, resp);
unknown:
	return reply_error(req, 404, "BLOB_UPLOAD_UNKNOWN", detail_str("uuid", call->ref),
			   "no upload session %s", call->ref);
}

static enum MHD_Result upload_cancel(struct request *req, struct registry_call *call)
{
	_cleanup_free_ char *path = NULL;

	if (!uuid_valid(call->ref))
		goto unknown;
	if (upload_busy(call))
		return reply_error(req, 409, "BLOB_UPLOAD_INVALID", NULL,
				   "upload %s is in use by another request", call->ref);
	path = oci_upload_path(call->ref);
	if (unlink(path) < 0)
		goto unknown;
	return http_reply_response(req, 204, empty_response());
unknown:
	return reply_error(req, 404, "BLOB_UPLOAD_UNKNOWN", detail_str("uuid", call->ref),
			   "no upload session %s", call->ref);
}

/* ---- the streamed body: begin, data, end ---- */

static enum MHD_Result upload_start_begin(struct request *req, struct registry_call *call)
{
	const char *mount = http_query(req, "mount"), *digest = http_query(req, "digest");
	struct kerr err;

	/* Blobs are shared by every repository: mounting a stored one costs nothing. */
	if (mount && oci_digest_valid(mount) && oci_blob_stat(mount, NULL)) {
		struct MHD_Response *resp = empty_response();

		header_printf(resp, "Location", "/v2/%s/blobs/%s", call->name, mount);
		MHD_add_response_header(resp, "Docker-Content-Digest", mount);
		return http_reply_response(req, 201, resp);
	}
	if (digest && !oci_digest_valid(digest))
		return digest_invalid(req, digest);
	if (oci_store_init(&err) < 0)
		return reply_error(req, 500, "UNKNOWN", NULL, "%s", err.msg);
	uuid_new(call->ref);
	call->session = oci_upload_path(call->ref);
	req->upload_fd = open(call->session, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (req->upload_fd < 0)
		return reply_error(req, 500, "UNKNOWN", NULL, "cannot create an upload session: %s",
				   strerror(errno));
	/* Removed when the request ends, unless it became a session or a blob. */
	req->upload_path = xstrdup(call->session);
	return MHD_YES;
}

/* PATCH or PUT on a session: it must exist, be idle, and the chunk continue it. */
static enum MHD_Result upload_chunk_begin(struct request *req, struct registry_call *call)
{
	const char *range =
		MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Content-Range");
	const char *digest = http_query(req, "digest");
	unsigned long long first, last;
	struct stat sb;
	int fd, used = 0;

	if (!uuid_valid(call->ref))
		goto unknown;
	if (!strcmp(req->method, "PUT") && !oci_digest_valid(digest))
		return digest_invalid(req, digest);
	if (upload_busy(call))
		return reply_error(req, 409, "BLOB_UPLOAD_INVALID", NULL,
				   "upload %s is in use by another request", call->ref);
	call->session = oci_upload_path(call->ref);
	fd = open(call->session, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		goto unknown;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		goto unknown;
	}
	call->start = sb.st_size;
	if (range) {
		const char *r = range;

		/* "bytes=A-B", "bytes A-B" or a bare "A-B"; never past the string's end. */
		if (!strncmp(r, "bytes", 5)) {
			r += 5;
			if (*r == ' ' || *r == '=')
				r++;
		}

		if (sscanf(r, "%llu-%llu%n", &first, &last, &used) != 2 || r[used] ||
		    last < first || (int64_t)first != call->start) {
			close(fd);
			return range_error(req, call, call->start,
					   "Content-Range %.64s does not continue the upload at "
					   "byte %" PRId64,
					   range, call->start);
		}
		call->chunk = (int64_t)(last - first + 1);
	}
	req->upload_fd = fd;
	call->writing = true;
	return MHD_YES;
unknown:
	return reply_error(req, 404, "BLOB_UPLOAD_UNKNOWN", detail_str("uuid", call->ref),
			   "no upload session %s", call->ref);
}

/* Headers are in and the token is good: parse the path, open what the body fills. */
static enum MHD_Result call_begin(struct request *req)
{
	struct registry_call *call = xcalloc(1, sizeof(*call));
	bool patch = !strcmp(req->method, "PATCH"), put = !strcmp(req->method, "PUT");

	call->req = req;
	call->chunk = -1;
	call->next = calls;
	calls = call;
	req->ctx = call;
	if (path_parse(req, call, req->params[0]) < 0)
		return MHD_YES;
	if (!call_granted(req, call))
		return reply_error(req, 401, "DENIED", NULL,
				   "the registry token does not grant %s on %s; ask /v2/token for "
				   "that scope",
				   method_reads(req) ? "pull" : "push",
				   call->ep == EP_CATALOG ? "the catalogue" : call->name);
	if (call->ep == EP_UPLOAD_START && !strcmp(req->method, "POST"))
		return upload_start_begin(req, call);
	if (call->ep == EP_UPLOAD && (patch || put))
		return upload_chunk_begin(req, call);
	return MHD_YES;
}

/* A piece of the body: a manifest to memory, blob data to the session file. */
static void call_data(struct request *req, const char *data, size_t len)
{
	struct registry_call *call = req->ctx;

	if (call == NULL || req->upload_error[0])
		return;
	if (call->ep == EP_MANIFEST && !strcmp(req->method, "PUT")) {
		if (req->body_len + len > OCI_MANIFEST_MAX) {
			snprintf(req->upload_error, sizeof(req->upload_error),
				 "the manifest is over %d bytes", OCI_MANIFEST_MAX);
			free(req->body);
			req->body = NULL;
			req->body_len = 0;
			return;
		}
		req->body = xrealloc(req->body, req->body_len + len + 1);
		memcpy(req->body + req->body_len, data, len);
		req->body_len += len;
		req->body[req->body_len] = '\0';
		return;
	}
	if (req->upload_fd < 0)
		return; /* no body expected: dropped */
	if ((uint64_t)call->start + req->upload_len + len > BLOB_MAX) {
		snprintf(req->upload_error, sizeof(req->upload_error),
			 "the blob is over %llu bytes", BLOB_MAX);
		return;
	}
	http_upload_write(req, data, len);
}

/* The request is over, however it ended. */
static void call_end(struct request *req)
{
	struct registry_call *call = req->ctx;

	/* A chunk never accepted (refused, or the client went away) is undone, so the
	 * session stays at the offset its Range said; the client may resume from there. */
	if (call && call->writing && req->upload_fd >= 0 &&
	    ftruncate(req->upload_fd, call->start) < 0)
		log_warn("registry: upload %s", call->ref);
	if (req->upload_fd >= 0)
		close(req->upload_fd);
	req->upload_fd = -1;
	if (req->upload_path) {
		unlink(req->upload_path);
		free(req->upload_path);
		req->upload_path = NULL;
	}
	if (call == NULL)
		return;
	req->ctx = NULL;
	for (struct registry_call **pp = &calls; *pp; pp = &(*pp)->next)
		if (*pp == call) {
			*pp = call->next;
			break;
		}
	if (call->pending) {
		call->req = NULL; /* job_done_cb frees it */
		return;
	}
	call_free(call);
}

const struct stream_ops registry_stream = {call_begin, call_data, call_end,
					   registry_auth_authenticate};

/* ---- dispatch ---- */

/* What each endpoint answers to; a method not listed gets 405 with the others. */
static const struct {
	enum endpoint ep;
	const char *method;
	enum MHD_Result (*fn)(struct request *req, struct registry_call *call);
} handlers[] = {
	{EP_BASE, "GET", base_get},	      {EP_BASE, "HEAD", base_get},
	{EP_CATALOG, "GET", catalog_get},     {EP_TAGS, "GET", tags_get},
	{EP_MANIFEST, "GET", manifest_get},   {EP_MANIFEST, "HEAD", manifest_get},
	{EP_MANIFEST, "PUT", manifest_put},   {EP_MANIFEST, "DELETE", manifest_delete},
	{EP_BLOB, "GET", blob_get},	      {EP_BLOB, "HEAD", blob_get},
	{EP_BLOB, "DELETE", blob_delete},     {EP_UPLOAD_START, "POST", upload_start},
	{EP_UPLOAD, "GET", upload_status},    {EP_UPLOAD, "PATCH", upload_patch},
	{EP_UPLOAD, "PUT", upload_finish},    {EP_UPLOAD, "DELETE", upload_cancel},
	{EP_REFERRERS, "GET", referrers_get},
};

/* The handler of every /v2/ route row: the body (if any) is in. */
enum MHD_Result registry_serve(struct request *req)
{
	struct registry_call *call = req->ctx;
	struct MHD_Response *resp;
	char allow[64] = "", msg[160];

	if (call == NULL)
		return reply_error(req, 500, "UNKNOWN", NULL, "the request was not parsed");
	for (size_t i = 0; i < ARRAY_SIZE(handlers); i++) {
		if (handlers[i].ep != call->ep)
			continue;
		if (!strcmp(handlers[i].method, req->method))
			return handlers[i].fn(req, call);
		if (allow[0])
			strcat(allow, ", ");
		strcat(allow, handlers[i].method);
	}
	snprintf(msg, sizeof(msg), "method %s is not allowed on %s; use %s", req->method, req->url,
		 allow);
	resp = error_response(req, 405, "UNSUPPORTED", NULL, msg);
	MHD_add_response_header(resp, "Allow", allow);
	return http_reply_response(req, 405, resp);
}

static enum MHD_Result stopping_answer(struct request *req)
{
	return reply_error(req, 503, "UNAVAILABLE", NULL, "the controller is stopping");
}

/*
 * The controller stops: requests waiting for a store job are answered 503 now, as
 * libmicrohttpd cannot stop with suspended connections. The jobs finish on their own
 * and free their calls.
 */
void registry_shutdown(void)
{
	for (struct registry_call *c = calls; c; c = c->next)
		if (c->pending && c->req) {
			c->req->resume = stopping_answer;
			MHD_resume_connection(c->req->conn);
		}
}

/* How /v2/ answers: the distribution spec's errors and token challenge (http.c). */
const struct http_dialect registry_dialect = {
	.owns = registry_url,
	.error_text = registry_error_text,
	.challenge = registry_auth_challenge,
	.header = "Docker-Distribution-API-Version",
	.header_value = "registry/2.0",
};
