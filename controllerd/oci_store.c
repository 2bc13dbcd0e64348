/*
 * oci_store.c - the OCI image store: content-addressed blobs on the shared pool and
 * the repositories, manifests and tags that name them in SQLite.
 *
 *   {shared}/oci/blobs/sha256/<hex>   layers, configs and manifests, by SHA-256
 *   {shared}/oci/uploads/<uuid>       registry upload sessions and imports in progress
 *
 * Every blob is hashed when it is stored, and the stored blobs again one a minute in
 * turn (oci_blobs_verify_cron()), which moves a blob that changed on disk out of the
 * store; reads are not hashed, so a pull costs what sending the file costs (a client
 * checks the digest of what it gets anyway). Hashing a layer takes long, so it runs in
 * libuv's thread pool (uv_queue_work) and the result comes back on the loop through
 * an oci_done_fn; the worker touches files only, never the database. Manifests are
 * at most OCI_MANIFEST_MAX bytes and are read and hashed in memory on the loop.
 *
 * A tag (repo, tag) is also a row of kind 'oci' in `images`, named "REPO:TAG", so
 * /api/v1/images lists container images beside VM images; oci_image_record() and
 * oci_tag_remove() keep the two in step and emit image-created / image-deleted.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "controllerd.h"
#include "log.h"
#include "token.h"
#include "tree.h"
#include "util.h"

#define BLOB_DIR   "oci/blobs/sha256"
#define UPLOAD_DIR "oci/uploads"

/* ---- names ---- */

bool oci_digest_valid(const char *digest)
{
	if (digest == NULL || strncmp(digest, "sha256:", 7) != 0 ||
	    strlen(digest) != OCI_DIGEST_LEN)
		return false;
	for (const char *p = digest + 7; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

static bool alnum_lower(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* 1-3 segments of [a-z0-9]+([._-][a-z0-9]+)*, at most OCI_REPO_MAX characters. */
bool oci_repo_valid(const char *repo)
{
	int segments = 1;
	size_t len = repo ? strlen(repo) : 0;

	if (len == 0 || len > OCI_REPO_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = repo[i];
		bool first = i == 0 || repo[i - 1] == '/';
		bool last = i + 1 == len || repo[i + 1] == '/';

		if (alnum_lower(c))
			continue;
		/* A separator sits between two alphanumerics of the same segment. */
		if ((c == '.' || c == '_' || c == '-') && !first && !last &&
		    alnum_lower(repo[i - 1]) && alnum_lower(repo[i + 1]))
			continue;
		if (c == '/' && !first && !last && ++segments <= 3)
			continue;
		return false;
	}
	return true;
}

/* [A-Za-z0-9_][A-Za-z0-9._-]{0,127} */
bool oci_tag_valid(const char *tag)
{
	size_t len = tag ? strlen(tag) : 0;

	if (len == 0 || len > OCI_TAG_MAX || tag[0] == '.' || tag[0] == '-')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = tag[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

/*
 * Split a container image name "REPO:TAG" into its parts (buffers of OCI_REPO_MAX + 1
 * and OCI_TAG_MAX + 1). Returns 0, or -1 with err (400, field) saying what is wrong.
 */
int oci_name_split(const char *name, char *repo, char *tag, const char *field, struct kerr *err)
{
	const char *colon = name ? strrchr(name, ':') : NULL;
	size_t rlen = colon ? (size_t)(colon - name) : 0;

	if (colon == NULL || rlen == 0 || rlen > OCI_REPO_MAX)
		goto bad;
	memcpy(repo, name, rlen);
	repo[rlen] = '\0';
	if (!oci_repo_valid(repo) || !oci_tag_valid(colon + 1))
		goto bad;
	strcpy(tag, colon + 1);
	return 0;
bad:
	return err_input(err, 400, field,
			 "a container image name is REPO:TAG: REPO is 1-3 '/'-separated parts of "
			 "[a-z0-9] joined by '.', '_' or '-' (128 at most), TAG is 1-128 of "
			 "[A-Za-z0-9_.-] not starting with '.' or '-'");
}

/* ---- paths and hashing ---- */

/* Absolute path of a blob (digest already valid). The caller frees it. */
char *oci_blob_path(const char *digest)
{
	return xasprintf("%s/" BLOB_DIR "/%s", ctl.cfg.shared_pool, digest + 7);
}

/* Absolute path of the uploads directory, or of name inside it. The caller frees it. */
char *oci_upload_path(const char *name)
{
	if (name == NULL)
		return xasprintf("%s/" UPLOAD_DIR, ctl.cfg.shared_pool);
	return xasprintf("%s/" UPLOAD_DIR "/%s", ctl.cfg.shared_pool, name);
}

/*
 * Create the store's directories, 0700: images may hold secrets, and only the
 * controller and the agents (root, which reads them anyway) use them. A store made
 * before, with 0755 directories, is closed the same way (its 0644 blobs become
 * unreachable to anyone else). Returns 0 or -1 with err.
 */
int oci_store_init(struct kerr *err)
{
	const char *dirs[] = {"oci", "oci/blobs", BLOB_DIR, UPLOAD_DIR};
	int rc = mkdir_p(ctl.cfg.shared_pool, 0755);

	if (rc < 0)
		return err_set(err, -rc, "cannot create %s", ctl.cfg.shared_pool);
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		_cleanup_free_ char *p = xasprintf("%s/%s", ctl.cfg.shared_pool, dirs[i]);

		rc = mkdir_p(p, 0700);
		if (rc < 0 || chmod(p, 0700) < 0)
			return err_set(err, rc < 0 ? -rc : errno, "cannot create %s", p);
	}
	return 0;
}

/*
 * At start-up: the store's directories made (oci_store_init()) and blobs that an older
 * version left readable by everyone (0644) closed to root's. Logs what it could not
 * change; the store still works.
 */
void oci_store_modes_fix(void)
{
	_cleanup_free_ char *dir = xasprintf("%s/" BLOB_DIR, ctl.cfg.shared_pool);
	struct kerr err;
	struct dirent *de;
	DIR *d;
	int n = 0;

	if (oci_store_init(&err) < 0) {
		log_warnx("oci: %s", err.msg);
		return;
	}
	d = opendir(dir);
	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		struct stat st;

		if (de->d_name[0] == '.' ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode) || (st.st_mode & 077) == 0)
			continue;
		if (fchmodat(dirfd(d), de->d_name, 0600, 0) == 0)
			n++;
	}
	closedir(d);
	if (n)
		log_info("oci: %d blobs made readable by root only", n);
}

/* "sha256:<hex>" of len bytes into out (OCI_DIGEST_LEN + 1). */
void oci_digest_of(const void *data, size_t len, char *out)
{
	unsigned char md[32];

	sha256(data, len, md);
	memcpy(out, "sha256:", 7);
	hex_encode(md, sizeof(md), out + 7);
}

/* Hash what fd holds from its start. Returns 0 or -errno. Runs in a worker. */
static int hash_fd(int fd, char *digest, int64_t *size)
{
	unsigned char buf[1 << 16], md[32];
	unsigned int mdlen = sizeof(md);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int64_t total = 0;
	ssize_t n;
	int ret = 0;

	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(ctx);
		return -ENOMEM;
	}
	while ((n = pread(fd, buf, sizeof(buf), total)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			break;
		}
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		total += n;
	}
	if (ret == 0) {
		EVP_DigestFinal_ex(ctx, md, &mdlen);
		memcpy(digest, "sha256:", 7);
		hex_encode(md, 32, digest + 7);
		*size = total;
	}
	EVP_MD_CTX_free(ctx);
	return ret;
}

static void result_fail(struct oci_result *res, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void result_fail(struct oci_result *res, int status, const char *fmt, ...)
{
	va_list ap;

	res->status = status;
	va_start(ap, fmt);
	vsnprintf(res->error, sizeof(res->error), fmt, ap);
	va_end(ap);
}

/*
 * Move the file at path into the store as the blob it hashes to. When expect is set
 * and the content hashes otherwise, the file is removed and nothing is stored.
 * Runs in a worker: the file is synced before the rename, so a stored blob is whole.
 */
static void blob_store_file(const char *path, const char *expect, struct oci_result *res)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	_cleanup_free_ char *target = NULL, *dir = NULL;
	struct stat sb;
	int rc;

	if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		result_fail(res, fd < 0 ? -errno : -EINVAL, "cannot read %s: %s", path,
			    fd < 0 ? strerror(errno) : "not a regular file");
		return;
	}
	rc = hash_fd(fd, res->digest, &res->size);
	if (rc < 0) {
		result_fail(res, rc, "cannot read %s: %s", path, strerror(-rc));
		return;
	}
	if (expect && expect[0] && strcmp(expect, res->digest) != 0) {
		unlink(path);
		result_fail(res, -EBADMSG, "the content's digest is %s, not %s", res->digest,
			    expect);
		return;
	}
	/* Readable by the controller's user only (agents read blobs as root); an
	 * imported file may have come with any mode. */
	if (fchmod(fd, 0600) < 0 || fsync(fd) < 0) {
		result_fail(res, -errno, "cannot store %s: %s", res->digest, strerror(errno));
		return;
	}
	target = oci_blob_path(res->digest);
	dir = xasprintf("%s/" BLOB_DIR, ctl.cfg.shared_pool);
	mkdir_p(dir, 0700);
	/* Same content under the same name: replacing an existing blob is harmless. */
	if (rename(path, target) < 0) {
		result_fail(res, -errno, "cannot store %s: %s", res->digest, strerror(errno));
		unlink(path);
		return;
	}
	{
		_cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

		if (dfd >= 0)
			fsync(dfd);
	}
}

/* ---- jobs in the thread pool ---- */

enum job_kind {
	JOB_PUT,
	JOB_VERIFY,
	JOB_DELETE,
	JOB_INGEST
};

struct job {
	uv_work_t work;
	enum job_kind kind;
	char *path; /* put: the file; verify, delete: the blob; ingest: the layout */
	char expect[OCI_DIGEST_LEN + 1]; /* put, verify, delete: the digest wanted */
	char **manifests;		 /* delete: stored manifests that may refer to the blob */
	size_t n_manifests;
	struct oci_result res;
	oci_done_fn done;
	void *cls;
};

/*
 * The next stored blob by name after job->expect (starting over at the end) goes to
 * job->expect, and is hashed; one that does not match its name is moved to the
 * uploads directory (pruned a day later), so it is neither served nor counted as
 * stored. The directory is read here, not on the loop: it may be on NFS.
 */
static void verify_work(struct job *job)
{
	char next[OCI_DIGEST_LEN + 1] = "", first[OCI_DIGEST_LEN + 1] = "";
	_cleanup_free_ char *aside = NULL, *path = NULL;
	struct oci_result *res = &job->res;
	DIR *d = opendir(job->path);
	struct dirent *de;
	struct stat sb;
	int fd, rc;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		char digest[OCI_DIGEST_LEN + 1];

		snprintf(digest, sizeof(digest), "sha256:%.64s", de->d_name);
		if (strlen(de->d_name) != 64 || !oci_digest_valid(digest))
			continue;
		if (!first[0] || strcmp(digest, first) < 0)
			memcpy(first, digest, sizeof(first));
		if (strcmp(digest, job->expect) > 0 && (!next[0] || strcmp(digest, next) < 0))
			memcpy(next, digest, sizeof(next));
	}
	closedir(d);
	memcpy(job->expect, next[0] ? next : first, sizeof(job->expect));
	if (!job->expect[0])
		return; /* an empty store */
	path = xasprintf("%s/%s", job->path, job->expect + 7);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) /* deleted meanwhile */
		return;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		return;
	}
	rc = hash_fd(fd, res->digest, &res->size);
	close(fd);
	if (rc < 0) {
		result_fail(res, rc, "cannot read blob %s: %s", job->expect, strerror(-rc));
		return;
	}
	if (strcmp(res->digest, job->expect) == 0)
		return;
	aside = xasprintf("%s/" UPLOAD_DIR "/corrupt-%s", ctl.cfg.shared_pool, job->expect + 7);
	if (rename(path, aside) < 0)
		unlink(path);
	result_fail(res, -EBADMSG,
		    "blob %s is corrupt: its content hashes to %s; moved out of the store to %s",
		    job->expect, res->digest, aside);
}

static void delete_work(struct job *job)
{
	struct oci_result *res = &job->res;

	if (res->status != 0) /* refused on the loop already */
		return;
	/* Manifests are small; a plain search for the digest finds every descriptor. */
	for (size_t i = 0; i < job->n_manifests; i++) {
		_cleanup_free_ char *path = oci_blob_path(job->manifests[i]), *text = NULL;

		if (file_read_all(path, OCI_MANIFEST_MAX, &text, NULL) < 0)
			continue;
		if (strstr(text, job->expect)) {
			result_fail(res, -EBUSY, "blob %s is used by manifest %s", job->expect,
				    job->manifests[i]);
			return;
		}
	}
	if (unlink(job->path) < 0)
		result_fail(res, errno == ENOENT ? -ENOENT : -errno, "cannot remove blob %s: %s",
			    job->expect, strerror(errno));
}

static void ingest_work(struct job *job)
{
	_cleanup_free_ char *dir = xasprintf("%s/blobs/sha256", job->path);
	DIR *d = opendir(dir);
	struct dirent *de;

	if (d == NULL) {
		result_fail(&job->res, -errno, "the image layout has no blobs: %s",
			    strerror(errno));
		return;
	}
	while ((de = readdir(d)) != NULL && job->res.status == 0) {
		char want[OCI_DIGEST_LEN + 1];
		_cleanup_free_ char *path = NULL;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		snprintf(want, sizeof(want), "sha256:%.64s", de->d_name);
		if (strlen(de->d_name) != 64 || !oci_digest_valid(want)) {
			result_fail(&job->res, -EINVAL, "the image layout holds a stray file %.80s",
				    de->d_name);
			break;
		}
		path = xasprintf("%s/%s", dir, de->d_name);
		blob_store_file(path, want, &job->res);
		if (job->res.status == -EBADMSG)
			snprintf(job->res.error, sizeof(job->res.error),
				 "blob %s of the archive does not match its digest", want);
	}
	closedir(d);
}

static void work_cb(uv_work_t *w)
{
	struct job *job = w->data;

	switch (job->kind) {
	case JOB_PUT:
		blob_store_file(job->path, job->expect, &job->res);
		break;
	case JOB_VERIFY:
		verify_work(job);
		break;
	case JOB_DELETE:
		delete_work(job);
		break;
	case JOB_INGEST:
		ingest_work(job);
		break;
	}
}

static void after_work_cb(uv_work_t *w, int status)
{
	struct job *job = w->data;

	if (status < 0 && job->res.status == 0)
		result_fail(&job->res, status, "the store job was cancelled");
	if (job->res.status == -EBADMSG && job->kind == JOB_VERIFY)
		log_warnx("oci: %s", job->res.error);
	job->done(&job->res, job->cls);
	for (size_t i = 0; i < job->n_manifests; i++)
		free(job->manifests[i]);
	free(job->manifests);
	free(job->path);
	free(job);
}

static struct job *job_new(enum job_kind kind, char *path, const char *expect, oci_done_fn done,
			   void *cls)
{
	struct job *job = xcalloc(1, sizeof(*job));

	job->kind = kind;
	job->path = path;
	if (expect)
		snprintf(job->expect, sizeof(job->expect), "%s", expect);
	job->done = done;
	job->cls = cls;
	job->work.data = job;
	return job;
}

static void job_queue(struct job *job)
{
	int rc = uv_queue_work(ctl.loop, &job->work, work_cb, after_work_cb);

	/* Only a broken loop refuses work; answer from the loop all the same. */
	if (rc < 0)
		fatalx("oci: cannot queue work: %s", uv_strerror(rc));
}

/*
 * Store the file at path (which the store takes over: it ends up as the blob or is
 * removed) as a blob, off the loop. With expect set, a content that hashes otherwise
 * is refused: done gets status -EBADMSG and nothing is stored. done gets the digest
 * and size, or a negative status and why.
 */
void oci_blob_put_file(const char *path, const char *expect, oci_done_fn done, void *cls)
{
	job_queue(job_new(JOB_PUT, xstrdup(path), expect, done, cls));
}

static bool verifying;			  /* a verify job is out */
static char verified[OCI_DIGEST_LEN + 1]; /* the last blob checked: where the turn goes on */

static void verify_done_cb(const struct oci_result *res, void *cls)
{
	const struct job *job = cls;

	memcpy(verified, job->expect, sizeof(verified));
	verifying = false;
}

/*
 * The store's scheduled check, from the cron once a minute: the next stored blob after
 * the last one checked is hashed off the loop, and moved out of the store if it no
 * longer matches its digest. A pass takes a minute per blob; a pull never waits for it.
 */
void oci_blobs_verify_cron(void)
{
	struct job *job;

	if (verifying)
		return;
	job = job_new(JOB_VERIFY, xasprintf("%s/" BLOB_DIR, ctl.cfg.shared_pool), verified,
		      verify_done_cb, NULL);
	job->cls = job; /* verify_done_cb reads which blob it was */
	verifying = true;
	job_queue(job);
}

/*
 * Remove a blob, off the loop, unless a stored manifest is or refers to it (status
 * -EBUSY naming it). -ENOENT when there is no such blob.
 */
void oci_blob_delete(const char *digest, oci_done_fn done, void *cls)
{
	struct job *job = job_new(JOB_DELETE, oci_blob_path(digest), digest, done, cls);
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT DISTINCT digest FROM oci_manifests");
	size_t cap = 0;

	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *d = (const char *)sqlite3_column_text(st, 0);

		if (!strcmp(d, digest) && job->res.status == 0)
			result_fail(&job->res, -EBUSY, "blob %s is a stored manifest", digest);
		if (job->n_manifests == cap) {
			cap = cap ? cap * 2 : 16;
			job->manifests = xrealloc(job->manifests, cap * sizeof(char *));
		}
		job->manifests[job->n_manifests++] = xstrdup(d);
	}
	sqlite3_finalize(st);
	job_queue(job);
}

/*
 * Store every blob of an OCI image layout directory (as skopeo writes it) after
 * checking that each one hashes to its file name, off the loop. The layout's blob
 * files are moved, not copied: dir must be on the shared pool. A blob that does not
 * match refuses the layout (status -EBADMSG naming it); blobs stored before it stay,
 * they are sound content-addressed data.
 */
void oci_layout_ingest(const char *dir, oci_done_fn done, void *cls)
{
	job_queue(job_new(JOB_INGEST, xstrdup(dir), NULL, done, cls));
}

/* ---- small synchronous blob helpers ---- */

/* True when the blob is stored; *size (if set) gets its size. */
bool oci_blob_stat(const char *digest, int64_t *size)
{
	_cleanup_free_ char *path = oci_blob_path(digest);
	struct stat sb;

	if (stat(path, &sb) < 0 || !S_ISREG(sb.st_mode))
		return false;
	if (size)
		*size = sb.st_size;
	return true;
}

/*
 * Store len bytes (a manifest: at most OCI_MANIFEST_MAX, which is why this runs on
 * the loop) as a blob; digest (OCI_DIGEST_LEN + 1) gets its name. Returns 0 or -1.
 */
int oci_blob_put_mem(const void *data, size_t len, char *digest, struct kerr *err)
{
	_cleanup_free_ char *path = NULL;
	int rc;

	/* Written even when present: a damaged copy is replaced by the sound one. */
	oci_digest_of(data, len, digest);
	if (oci_store_init(err) < 0)
		return -1;
	path = oci_blob_path(digest);
	rc = file_write_atomic(path, data, len, 0600);
	if (rc < 0)
		return err_set(err, -rc, "cannot store blob %s", digest);
	return 0;
}

/*
 * Read a stored manifest and check it hashes to its digest. *data (NUL-terminated,
 * the caller frees it) and *len. Returns 0, or -ENOENT / -EBADMSG / -1 with err.
 */
int oci_manifest_load(const char *digest, char **data, size_t *len, struct kerr *err)
{
	_cleanup_free_ char *path = oci_blob_path(digest);
	char got[OCI_DIGEST_LEN + 1];
	int rc = file_read_all(path, OCI_MANIFEST_MAX, data, len);

	if (rc == -ENOENT) {
		err_set(err, 0, "manifest %s is not in the store", digest);
		return -ENOENT;
	}
	if (rc < 0)
		return err_set(err, -rc, "cannot read manifest %s", digest);
	oci_digest_of(*data, *len, got);
	if (strcmp(got, digest) != 0) {
		log_warnx("oci: manifest %s is corrupt: its content hashes to %s", digest, got);
		free(*data);
		*data = NULL;
		err_set(err, 0, "manifest %s is corrupt in the store", digest);
		return -EBADMSG;
	}
	return 0;
}

/* ---- manifests ---- */

static const char *const manifest_types[] = {
	OCI_MT_MANIFEST,
	OCI_MT_INDEX,
	OCI_MT_DOCKER_MANIFEST,
	OCI_MT_DOCKER_LIST,
};

static bool media_type_is_index(const char *mt)
{
	return !strcmp(mt, OCI_MT_INDEX) || !strcmp(mt, OCI_MT_DOCKER_LIST);
}

/* One descriptor {mediaType, digest, size}; with must_exist, the blob is in the store
 * with that size. Returns 0, -EINVAL (malformed) or -ENOENT (blob unknown). */
static int descriptor_check(struct json_object *d, const char *field, bool must_exist,
			    int64_t *total, struct kerr *err)
{
	struct json_object *v;
	const char *digest;
	int64_t size, stored;

	if (!json_object_is_type(d, json_type_object))
		goto bad;
	digest = json_get_str(d, "digest", NULL);
	if (!oci_digest_valid(digest))
		goto bad;
	/* A size above what the registry stores is a lie, and would overflow the sum. */
	if (!json_object_object_get_ex(d, "size", &v) || !json_object_is_type(v, json_type_int) ||
	    (size = json_object_get_int64(v)) < 0 || size > (64LL << 30))
		goto bad;
	if (!json_object_is_type(json_object_object_get(d, "mediaType"), json_type_string))
		goto bad;
	*total += size;
	if (!must_exist)
		return 0;
	if (!oci_blob_stat(digest, &stored)) {
		err_input(err, 400, field, "%s: blob %s is not in the registry", field, digest);
		return -ENOENT;
	}
	if (stored != size) {
		err_input(err, 400, field, "%s: blob %s has %lld bytes, not %lld", field, digest,
			  (long long)stored, (long long)size);
		return -EINVAL;
	}
	return 0;
bad:
	err_input(err, 400, field,
		  "%s must be a descriptor with mediaType, a sha256 digest and a size", field);
	return -EINVAL;
}

/*
 * Check a manifest before it is stored: JSON, schemaVersion 2, a media type this
 * registry keeps (OCI image manifest or index, Docker schema 2 manifest or list;
 * content_type, the request's Content-Type, decides when it names one, and the body's
 * mediaType must agree), and for an image manifest that its config and layers are
 * stored with the sizes it says. An index's children need not be stored.
 * Returns 0 with info, -ENOENT when a blob is missing, -EINVAL when it is malformed;
 * err names the field.
 */
int oci_manifest_check(const char *data, size_t len, const char *content_type,
		       struct oci_manifest_info *info, struct kerr *err)
{
	struct json_object *m = NULL, *v;
	char ct[128] = "";
	const char *body_mt, *mt = NULL;
	int ret = -EINVAL;

	memset(info, 0, sizeof(*info));
	if (content_type)
		snprintf(ct, sizeof(ct), "%.*s", (int)strcspn(content_type, "; "), content_type);
	if (json_body_parse(data, len, &m, err) < 0)
		return -EINVAL;
	if (json_get_int(m, "schemaVersion", 0) != 2) {
		err_input(err, 400, "schemaVersion", "schemaVersion must be 2");
		goto out;
	}
	body_mt = json_get_str(m, "mediaType", NULL);
	for (size_t i = 0; i < ARRAY_SIZE(manifest_types); i++)
		if (!strcmp(ct, manifest_types[i]))
			mt = manifest_types[i];
	if (mt && body_mt && strcmp(mt, body_mt) != 0) {
		err_input(err, 400, "mediaType",
			  "the body's mediaType %.100s differs from the Content-Type %s", body_mt,
			  mt);
		goto out;
	}
	if (mt == NULL && body_mt)
		for (size_t i = 0; i < ARRAY_SIZE(manifest_types); i++)
			if (!strcmp(body_mt, manifest_types[i]))
				mt = manifest_types[i];
	if (mt == NULL && body_mt == NULL)
		mt = json_object_object_get_ex(m, "manifests", NULL) ? OCI_MT_INDEX
								     : OCI_MT_MANIFEST;
	if (mt == NULL) {
		err_input(err, 400, "mediaType",
			  "manifest type %.100s is not supported; push an OCI image manifest or "
			  "index, or a Docker schema 2 manifest or manifest list",
			  body_mt ? body_mt : ct);
		goto out;
	}
	snprintf(info->media_type, sizeof(info->media_type), "%s", mt);
	/* OCI 1.1: a manifest may name the one it refers to (a signature, an SBOM); that
	 * one need not be stored (yet). */
	if (json_object_object_get_ex(m, "subject", &v)) {
		ret = descriptor_check(v, "subject", false, &(int64_t){0}, err);
		if (ret < 0)
			goto out;
		snprintf(info->subject, sizeof(info->subject), "%s", json_get_str(v, "digest", ""));
	}
	ret = -EINVAL;
	if (json_object_object_get_ex(m, "artifactType", &v) &&
	    !json_object_is_type(v, json_type_string)) {
		err_input(err, 400, "artifactType", "artifactType must be a media type string");
		goto out;
	}
	if (media_type_is_index(mt)) {
		if (!json_object_object_get_ex(m, "manifests", &v) ||
		    !json_object_is_type(v, json_type_array)) {
			err_input(err, 400, "manifests", "an index needs a manifests array");
			goto out;
		}
		for (size_t i = 0; i < json_array_len(v); i++) {
			char field[32];

			snprintf(field, sizeof(field), "manifests[%zu]", i);
			ret = descriptor_check(json_object_array_get_idx(v, i), field, false,
					       &info->content_size, err);
			if (ret < 0)
				goto out;
		}
		ret = 0;
		goto out;
	}
	ret = descriptor_check(json_object_object_get(m, "config"), "config", true,
			       &info->content_size, err);
	if (ret < 0)
		goto out;
	snprintf(info->config, sizeof(info->config), "%s",
		 json_get_str(json_object_object_get(m, "config"), "digest", ""));
	ret = -EINVAL;
	if (!json_object_object_get_ex(m, "layers", &v) ||
	    !json_object_is_type(v, json_type_array)) {
		err_input(err, 400, "layers", "an image manifest needs a layers array");
		goto out;
	}
	for (size_t i = 0; i < json_array_len(v); i++) {
		char field[32];

		snprintf(field, sizeof(field), "layers[%zu]", i);
		ret = descriptor_check(json_object_array_get_idx(v, i), field, true,
				       &info->content_size, err);
		if (ret < 0)
			goto out;
	}
	ret = 0;
out:
	json_object_put(m);
	return ret;
}

/* ---- records ---- */

/*
 * Find what ref (a tag or a digest) names in repo: its manifest digest
 * (OCI_DIGEST_LEN + 1), media type (OCI_MEDIA_TYPE_MAX + 1) and size. Returns 0, or
 * -ENOENT when there is none.
 */
int oci_manifest_lookup(const char *repo, const char *ref, char *digest, char *media_type,
			int64_t *size)
{
	bool by_digest = oci_digest_valid(ref);
	sqlite3_stmt *st =
		db_prepare(ctl.db, by_digest ? "SELECT digest, media_type, size FROM oci_manifests "
					       "WHERE repo = ? AND digest = ?"
					     : "SELECT digest, media_type, size FROM oci_tags "
					       "WHERE repo = ? AND tag = ?");
	int ret = -ENOENT;

	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, ref, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		snprintf(digest, OCI_DIGEST_LEN + 1, "%s", sqlite3_column_text(st, 0));
		if (media_type)
			snprintf(media_type, OCI_MEDIA_TYPE_MAX + 1, "%s",
				 sqlite3_column_text(st, 1));
		if (size)
			*size = sqlite3_column_int64(st, 2);
		ret = 0;
	}
	sqlite3_finalize(st);
	return ret;
}

static struct json_object *image_event(const char *repo, const char *tag, const char *digest,
				       const char *media_type, int64_t size)
{
	struct json_object *o = json_object_new_object();
	char *name = xasprintf("%s:%s", repo, tag);

	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "kind", json_object_new_string("oci"));
	json_object_object_add(o, "repo", json_object_new_string(repo));
	json_object_object_add(o, "tag", json_object_new_string(tag));
	json_object_object_add(o, "digest", json_object_new_string(digest));
	if (media_type)
		json_object_object_add(o, "media_type", json_object_new_string(media_type));
	if (size >= 0)
		json_object_object_add(o, "size", json_object_new_int64(size));
	free(name);
	return o;
}

static int step_done(sqlite3_stmt *st, struct kerr *err)
{
	int rc = sqlite3_step(st);

	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	return 0;
}

/*
 * Record a stored manifest (digest, size bytes, checked into info) in repo and, when
 * tag is set, point the tag at it: oci_manifests, oci_tags and the tag's `images`
 * row change in one transaction. image-created is emitted when the tag is new or
 * moved. Returns 0 or -1 with err.
 */
int oci_image_record(const char *repo, const char *tag, const char *digest, int64_t size,
		     const struct oci_manifest_info *info, struct kerr *err)
{
	char old[OCI_DIGEST_LEN + 1] = "";
	int64_t now = now_ms();
	sqlite3_stmt *st;

	if (db_begin(ctl.db) < 0)
		return err_set(err, 0, "database: cannot begin: %s", sqlite3_errmsg(ctl.db));
	st = db_prepare(ctl.db, "INSERT OR IGNORE INTO oci_manifests (repo, digest, media_type, "
				"size, created_at, subject) VALUES (?, ?, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, digest, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, info->media_type, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, size);
	sqlite3_bind_int64(st, 5, now);
	if (info->subject[0])
		sqlite3_bind_text(st, 6, info->subject, -1, SQLITE_STATIC);
	if (step_done(st, err) < 0)
		goto fail;
	if (tag == NULL)
		return db_commit(ctl.db, err);
	oci_manifest_lookup(repo, tag, old, NULL, NULL);
	st = db_prepare(ctl.db,
			"INSERT INTO oci_tags (repo, tag, digest, media_type, size, updated_at) "
			"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (repo, tag) DO UPDATE SET "
			"digest = excluded.digest, media_type = excluded.media_type, "
			"size = excluded.size, updated_at = excluded.updated_at");
	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, digest, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, info->media_type, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, size);
	sqlite3_bind_int64(st, 6, now);
	if (step_done(st, err) < 0)
		goto fail;
	{
		_cleanup_free_ char *name = xasprintf("%s:%s", repo, tag);
		_cleanup_free_ char *path = xasprintf(BLOB_DIR "/%s", digest + 7);

		/* The VM image names never hold ':', so kind 'oci' is the only match. */
		st = db_prepare(ctl.db,
				"INSERT INTO images (name, kind, format, source_format, "
				"virtual_size, file_size, sha256, path, created_at) "
				"VALUES (?, 'oci', 'oci', ?, 0, ?, ?, ?, ?) ON CONFLICT (name) DO "
				"UPDATE SET source_format = excluded.source_format, "
				"file_size = excluded.file_size, sha256 = excluded.sha256, "
				"path = excluded.path, created_at = excluded.created_at "
				"WHERE kind = 'oci'");
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, info->media_type, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, size + info->content_size);
		sqlite3_bind_text(st, 4, digest + 7, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 5, path, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 6, now);
		if (step_done(st, err) < 0)
			goto fail;
	}
	if (db_commit(ctl.db, err) < 0)
		return -1;
	if (strcmp(old, digest) != 0) {
		log_info("oci %s:%s: now %s", repo, tag, digest);
		event_emit("image-created", image_event(repo, tag, digest, info->media_type,
							size + info->content_size));
	}
	return 0;
fail:
	db_rollback(ctl.db);
	return -1;
}

/*
 * Record the manifest digest, already in the store (written by an agent's commit or
 * an import), as repo:tag: it is read back, verified and checked like a pushed one.
 * Returns 0 or -1 with err (400 when the manifest or a blob it names is unusable).
 */
int oci_image_record_stored(const char *repo, const char *tag, const char *digest, struct kerr *err)
{
	_cleanup_free_ char *data = NULL;
	struct oci_manifest_info info;
	size_t len;
	int rc;

	if (!oci_digest_valid(digest))
		return err_input(err, 400, "digest", "%.80s is not a sha256 digest", digest);
	rc = oci_manifest_load(digest, &data, &len, err);
	if (rc < 0)
		return -1;
	rc = oci_manifest_check(data, len, NULL, &info, err);
	if (rc < 0) {
		err->status = 400;
		return -1;
	}
	return oci_image_record(repo, tag, digest, (int64_t)len, &info, err);
}

/*
 * Remove tag from repo with its `images` row; emits image-deleted. Returns 0, or
 * -ENOENT when there is no such tag, or -1 with err.
 */
int oci_tag_remove(const char *repo, const char *tag, struct kerr *err)
{
	char digest[OCI_DIGEST_LEN + 1];
	_cleanup_free_ char *name = xasprintf("%s:%s", repo, tag);
	sqlite3_stmt *st;

	if (oci_manifest_lookup(repo, tag, digest, NULL, NULL) < 0) {
		err_input(err, 404, NULL, "no image %s", name);
		return -ENOENT;
	}
	if (db_begin(ctl.db) < 0)
		return err_set(err, 0, "database: cannot begin: %s", sqlite3_errmsg(ctl.db));
	st = db_prepare(ctl.db, "DELETE FROM oci_tags WHERE repo = ? AND tag = ?");
	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, tag, -1, SQLITE_STATIC);
	if (step_done(st, err) < 0)
		goto fail;
	st = db_prepare(ctl.db, "DELETE FROM images WHERE name = ? AND kind = 'oci'");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (step_done(st, err) < 0)
		goto fail;
	if (db_commit(ctl.db, err) < 0)
		return -1;
	log_info("oci %s: tag removed (was %s)", name, digest);
	event_emit("image-deleted", image_event(repo, tag, digest, NULL, -1));
	return 0;
fail:
	db_rollback(ctl.db);
	return -1;
}

/*
 * Forget the manifest digest in repo and every tag of repo that points at it. The
 * blob stays: other repositories may hold the same manifest. Returns 0, -ENOENT when
 * repo has no such manifest, or -1 with err.
 */
int oci_manifest_remove(const char *repo, const char *digest, struct kerr *err)
{
	sqlite3_stmt *st;
	char **tags = NULL;
	size_t n = 0;
	int ret = 0;

	if (oci_manifest_lookup(repo, digest, (char[OCI_DIGEST_LEN + 1]){0}, NULL, NULL) < 0) {
		err_input(err, 404, NULL, "repository %s has no manifest %s", repo, digest);
		return -ENOENT;
	}
	st = db_prepare(ctl.db, "SELECT tag FROM oci_tags WHERE repo = ? AND digest = ?");
	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, digest, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		tags = xrealloc(tags, (n + 1) * sizeof(char *));
		tags[n++] = xstrdup((const char *)sqlite3_column_text(st, 0));
	}
	sqlite3_finalize(st);
	for (size_t i = 0; i < n; i++) {
		if (ret == 0 && oci_tag_remove(repo, tags[i], err) < 0 && err->status != 404)
			ret = -1;
		free(tags[i]);
	}
	free(tags);
	if (ret < 0)
		return ret;
	st = db_prepare(ctl.db, "DELETE FROM oci_manifests WHERE repo = ? AND digest = ?");
	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, digest, -1, SQLITE_STATIC);
	if (step_done(st, err) < 0)
		return -1;
	log_info("oci %s@%s: manifest removed", repo, digest);
	return 0;
}

/*
 * The container instance that uses image name ("REPO:TAG") or manifest digest (either
 * may be NULL), into who; false when none does.
 */
bool oci_image_used(const char *name, const char *digest, char *who, size_t len)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT name FROM instances WHERE type = 'container' AND "
				   "(json_extract(spec, '$.image.name') = ?1 OR "
				   "json_extract(spec, '$.image.manifest') = ?2) LIMIT 1");
	bool used = false;

	if (name)
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (digest)
		sqlite3_bind_text(st, 2, digest, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		used = true;
		snprintf(who, len, "%s", sqlite3_column_text(st, 0));
	}
	sqlite3_finalize(st);
	return used;
}

/* Tags of repo in order, after last (or from the start), at most n. */
struct json_object *oci_tags_list(const char *repo, const char *last, int64_t n)
{
	struct json_object *tags = json_object_new_array();
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT tag FROM oci_tags WHERE repo = ? AND "
					      "tag > ? ORDER BY tag LIMIT ?");

	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, last ? last : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, n);
	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(
			tags, json_object_new_string((const char *)sqlite3_column_text(st, 0)));
	sqlite3_finalize(st);
	return tags;
}

/* Repositories with a manifest, in order, after last (or from the start), at most n. */
struct json_object *oci_repos_list(const char *last, int64_t n)
{
	struct json_object *repos = json_object_new_array();
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT DISTINCT repo FROM oci_manifests WHERE "
					      "repo > ? ORDER BY repo LIMIT ?");

	sqlite3_bind_text(st, 1, last ? last : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, n);
	while (sqlite3_step(st) == SQLITE_ROW)
		json_object_array_add(
			repos, json_object_new_string((const char *)sqlite3_column_text(st, 0)));
	sqlite3_finalize(st);
	return repos;
}

/* True when repo has a manifest. */
bool oci_repo_exists(const char *repo)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT 1 FROM oci_manifests WHERE repo = ?");
	bool found;

	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	found = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	return found;
}

/*
 * The referrers of subject in repo (OCI 1.1): a descriptor for each manifest stored
 * with that subject, with its artifactType (its own, or its config's media type) and
 * annotations, in the order they were pushed; only those of artifact_type when set.
 * The manifests are read back (small, and few per subject).
 */
struct json_object *oci_referrers_list(const char *repo, const char *subject,
				       const char *artifact_type)
{
	struct json_object *list = json_object_new_array();
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT digest, media_type, size FROM oci_manifests "
					      "WHERE repo = ? AND subject = ? "
					      "ORDER BY created_at, digest");

	sqlite3_bind_text(st, 1, repo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, subject, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *digest = (const char *)sqlite3_column_text(st, 0);
		struct json_object *m = NULL, *d, *annotations;
		_cleanup_free_ char *data = NULL;
		const char *type;
		struct kerr err;
		size_t len;

		if (oci_manifest_load(digest, &data, &len, &err) < 0 ||
		    json_body_parse(data, len, &m, &err) < 0)
			continue; /* gone or damaged: not served either */
		type = json_get_str(m, "artifactType", NULL);
		if (type == NULL)
			type = json_get_str(json_object_object_get(m, "config"), "mediaType", NULL);
		if (artifact_type && (type == NULL || strcmp(type, artifact_type) != 0)) {
			json_object_put(m);
			continue;
		}
		d = json_object_new_object();
		json_object_object_add(
			d, "mediaType",
			json_object_new_string((const char *)sqlite3_column_text(st, 1)));
		json_object_object_add(d, "digest", json_object_new_string(digest));
		json_object_object_add(d, "size",
				       json_object_new_int64(sqlite3_column_int64(st, 2)));
		if (type)
			json_object_object_add(d, "artifactType", json_object_new_string(type));
		if (json_object_object_get_ex(m, "annotations", &annotations) &&
		    json_object_is_type(annotations, json_type_object))
			json_object_object_add(d, "annotations", json_object_get(annotations));
		json_object_array_add(list, d);
		json_object_put(m);
	}
	sqlite3_finalize(st);
	return list;
}

/* rm -rf path (an import's work directory): never follows a symlink nor crosses a mount. */
void oci_tree_remove(const char *path)
{
	int ret = tree_remove(path);

	if (ret < 0)
		log_warnx("oci: cannot remove %s: %s", path, strerror(-ret));
}

/*
 * Remove upload sessions and import leftovers untouched for a day: a client that
 * gave up never says so. Runs from the cron once an hour; the directory is small.
 */
void oci_uploads_prune(void)
{
	_cleanup_free_ char *dir = oci_upload_path(NULL);
	DIR *d = opendir(dir);
	struct dirent *de;
	time_t cutoff = time(NULL) - 24 * 3600;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		_cleanup_free_ char *path = NULL;
		struct stat sb;

		if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
			continue;
		path = xasprintf("%s/%s", dir, de->d_name);
		if (lstat(path, &sb) < 0 || sb.st_mtime > cutoff)
			continue;
		if (S_ISDIR(sb.st_mode))
			oci_tree_remove(path);
		else
			unlink(path);
		log_info("oci: removed the stale upload %s", de->d_name);
	}
	closedir(d);
}
