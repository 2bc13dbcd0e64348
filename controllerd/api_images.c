/*
 * api_images.c - /api/v1/images: VM images on the shared pool.
 *
 * An upload streams to a temporary file (never held in memory); then an
 * image-import operation checks it with qemu-img (format as declared, no backing
 * file, no extent outside the upload), converts anything but qcow2 to qcow2, hashes
 * the stored file with SHA-256 off the loop, and records it. An image a disk uses
 * cannot be deleted.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "controllerd.h"
#include "log.h"
#include "qcow2.h"
#include "util.h"
#include "valid.h"

#define IMAGE_MAX_BYTES	  (64ULL << 30)
#define IMAGE_MAX_VIRTUAL (16LL << 40)
#define IMAGE_DIR	  "images"

static const char *const formats[] = {"qcow2", "raw", "vmdk", "vhdx", "vdi", "vpc", "ova", NULL};

struct import {
	char op[LINK_OP_ID_MAX + 1];
	char name[NAME_MAX_LEN + 1];
	char format[8];
	char *upload; /* absolute path of the upload */
	char *work;   /* absolute path of the converted file, when converting */
	char *final;  /* absolute path the image ends at */
	char *rel;    /* final, relative to the shared pool */
	int64_t virtual_size;
	int64_t file_size;
	char sha256[65];
	bool own_final; /* final is ours to remove if the import fails */
	uv_work_t hash_work;
	int hash_err;
};

static void import_free(struct import *im)
{
	if (im->own_final && im->final)
		unlink(im->final);
	if (im->upload)
		unlink(im->upload);
	if (im->work)
		unlink(im->work);
	free(im->upload);
	free(im->work);
	free(im->final);
	free(im->rel);
	free(im);
}

static void import_fail(struct import *im, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void import_fail(struct import *im, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warnx("image %s: import failed: %s", im->name, msg);
	op_update(im->op, "failed", -1, "failed", NULL, msg);
	import_free(im);
}

static struct json_object *image_row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "name",
			       json_object_new_string((const char *)sqlite3_column_text(st, 0)));
	json_object_object_add(o, "kind",
			       json_object_new_string((const char *)sqlite3_column_text(st, 1)));
	json_object_object_add(o, "format",
			       json_object_new_string((const char *)sqlite3_column_text(st, 2)));
	json_object_object_add(o, "source_format",
			       json_object_new_string((const char *)sqlite3_column_text(st, 3)));
	json_object_object_add(o, "virtual_size",
			       json_object_new_int64(sqlite3_column_int64(st, 4)));
	json_object_object_add(o, "file_size", json_object_new_int64(sqlite3_column_int64(st, 5)));
	json_object_object_add(o, "sha256",
			       json_object_new_string((const char *)sqlite3_column_text(st, 6)));
	json_object_object_add(o, "created_at", json_object_new_int64(sqlite3_column_int64(st, 7)));
	if (!strcmp((const char *)sqlite3_column_text(st, 1), "oci")) {
		const char *name = (const char *)sqlite3_column_text(st, 0);
		const char *colon = strrchr(name, ':');
		char *digest = xasprintf("sha256:%s", sqlite3_column_text(st, 6)),
		     who[NAME_MAX + 1];

		json_object_object_add(
			o, "repo",
			json_object_new_string_len(name, (int)(colon ? colon - name : 0)));
		json_object_object_add(o, "tag", json_object_new_string(colon ? colon + 1 : ""));
		json_object_object_add(o, "digest", json_object_new_string(digest));
		json_object_object_add(
			o, "in_use",
			json_object_new_boolean(oci_image_used(name, NULL, who, sizeof(who))));
		free(digest);
		return o;
	}
	json_object_object_add(o, "in_use",
			       json_object_new_boolean(image_in_use(sqlite3_column_int64(st, 8))));
	return o;
}

#define IMAGE_COLUMNS                                                                              \
	"name, kind, format, source_format, virtual_size, file_size, sha256, created_at, id"

/* ---- the import pipeline: info -> [convert -> info] -> hash -> record ---- */

static void hash_work_cb(uv_work_t *w)
{
	struct import *im = w->data;
	unsigned char buf[1 << 16], md[32];
	unsigned int mdlen = 32;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int fd = open(im->final, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	im->hash_err = 0;
	if (fd < 0 || ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		im->hash_err = errno ? errno : EIO;
		goto out;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		EVP_DigestUpdate(ctx, buf, (size_t)n);
	if (n < 0 || fsync(fd) < 0)
		im->hash_err = errno;
	else
		EVP_DigestFinal_ex(ctx, md, &mdlen), hex_encode(md, 32, im->sha256);
out:
	if (fd >= 0)
		close(fd);
	EVP_MD_CTX_free(ctx);
}

static void hash_done_cb(uv_work_t *w, int status)
{
	struct import *im = w->data;
	struct json_object *img = NULL, *ev;
	sqlite3_stmt *st;
	struct stat sb;
	char sig[65];
	int rc;

	if (status < 0 || im->hash_err) {
		import_fail(im, "cannot hash the image: %s",
			    strerror(im->hash_err ? im->hash_err : EIO));
		return;
	}
	if (stat(im->final, &sb) == 0)
		im->file_size = sb.st_size;
	st = db_prepare(ctl.db,
			"INSERT INTO images (name, kind, format, source_format, virtual_size, "
			"file_size, sha256, path, created_at, sig) "
			"VALUES (?, 'vm', 'qcow2', ?, ?, ?, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, im->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, im->format, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, im->virtual_size);
	sqlite3_bind_int64(st, 4, im->file_size);
	sqlite3_bind_text(st, 5, im->sha256, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, im->rel, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, now_ms());
	image_sig(im->name, im->rel, im->sha256, im->file_size, sig);
	sqlite3_bind_text(st, 8, sig, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		import_fail(im, "cannot record the image: %s", sqlite3_errmsg(ctl.db));
		return;
	}
	im->own_final = false; /* recorded: the file is the image now */
	st = db_prepare(ctl.db, "SELECT " IMAGE_COLUMNS " FROM images WHERE name = ?");
	sqlite3_bind_text(st, 1, im->name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		img = image_row_json(st);
	sqlite3_finalize(st);
	log_info("image %s: imported (%s, %lld bytes virtual)", im->name, im->format,
		 (long long)im->virtual_size);
	ev = json_object_get(img);
	event_emit("image-created", ev);
	{
		struct json_object *res = json_object_new_object();

		json_object_object_add(res, "image", img);
		op_update(im->op, "succeeded", 100, "done", res, NULL);
	}
	/* The image is linked in place; the upload's own names go. */
	import_free(im);
}

/*
 * Record a self-contained qcow2 file already at rel (relative to the shared pool) as VM
 * image name, signed like an upload's; p2v.c's cutover stores received disks this way.
 * Returns 0, or -1 with err; the file stays the caller's on failure.
 */
int images_record(const char *name, const char *rel, const char *source_format,
		  int64_t virtual_size, int64_t file_size, const char *sha256, struct kerr *err)
{
	sqlite3_stmt *st;
	char sig[65];
	int rc;

	st = db_prepare(ctl.db,
			"INSERT INTO images (name, kind, format, source_format, virtual_size, "
			"file_size, sha256, path, created_at, sig) "
			"VALUES (?, 'vm', 'qcow2', ?, ?, ?, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, source_format, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, virtual_size);
	sqlite3_bind_int64(st, 4, file_size);
	sqlite3_bind_text(st, 5, sha256, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, rel, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, now_ms());
	image_sig(name, rel, sha256, file_size, sig);
	sqlite3_bind_text(st, 8, sig, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "cannot record the image %s: %s", name,
			       sqlite3_errmsg(ctl.db));
	log_info("image %s: recorded (%lld bytes virtual)", name, (long long)virtual_size);
	return 0;
}

static void import_hash(struct import *im)
{
	int rc;

	op_update(im->op, "running", 80, "hashing", NULL, NULL);
	im->hash_work.data = im;
	rc = uv_queue_work(ctl.loop, &im->hash_work, hash_work_cb, hash_done_cb);
	/* Not queued, hash_done_cb never comes: the operation would stay running. */
	if (rc < 0)
		import_fail(im, "cannot queue the hashing: %s", uv_strerror(rc));
}

/*
 * A conversion to qcow2 may write up to the image's virtual size whatever the upload
 * weighed (a VMDK whose grain tables all point at one grain of data is 64 MiB that
 * writes 16 TiB): refuse one the shared pool has no room for, keeping 1 GiB spare.
 * Returns 0, or -1 with why.
 */
int image_room_check(int64_t virtual_size, char *why, size_t len)
{
	struct statvfs vfs;
	int64_t room;

	if (statvfs(ctl.cfg.shared_pool, &vfs) < 0) {
		snprintf(why, len, "cannot see the shared pool's free space: %s", strerror(errno));
		return -1;
	}
	room = (int64_t)vfs.f_bavail * (int64_t)vfs.f_frsize - (1LL << 30);
	if (virtual_size > room) {
		snprintf(why, len,
			 "its virtual size %lld bytes is more than the shared pool's free space "
			 "(%lld bytes, 1 GiB kept spare): converting it could fill the pool",
			 (long long)virtual_size, (long long)(room > 0 ? room : 0));
		return -1;
	}
	return 0;
}

/*
 * Check qemu-img's JSON about file: the declared format, no backing file, extents
 * only inside the file itself (a vmdk descriptor may name other files), a sane size,
 * which goes to *virtual_size once format and backing are right. Returns 0, or -1
 * with why (len bytes) saying what is wrong.
 */
int image_info_check(const char *out, const char *file, const char *format, int64_t *virtual_size,
		     char *why, size_t len)
{
	struct json_object *info = json_tokener_parse(out), *v;
	int ret = -1;

	if (info == NULL) {
		snprintf(why, len, "qemu-img could not read it as %s", format);
		return -1;
	}
	if (strcmp(json_get_str(info, "format", ""), format)) {
		snprintf(why, len, "it is %s, not %s", json_get_str(info, "format", "?"), format);
	} else if (json_object_object_get_ex(info, "backing-filename", NULL) ||
		   json_object_object_get_ex(info, "full-backing-filename", NULL)) {
		snprintf(why, len, "it has a backing file; upload a self-contained image");
	} else if (json_object_object_get_ex(
			   json_object_object_get(json_object_object_get(info, "format-specific"),
						  "data"),
			   "data-file", NULL)) {
		snprintf(why, len,
			 "it keeps its data in an external file; upload a self-contained image");
	} else if (json_get_int(info, "virtual-size", 0) <= 0 ||
		   json_get_int(info, "virtual-size", 0) > IMAGE_MAX_VIRTUAL) {
		snprintf(why, len, "its virtual size %lld is out of range",
			 (long long)json_get_int(info, "virtual-size", 0));
	} else {
		ret = 0;
		v = json_object_object_get(
			json_object_object_get(json_object_object_get(info, "format-specific"),
					       "data"),
			"extents");
		/* json-c asserts (aborts the controller) on the length of a non-array. */
		if (v && !json_object_is_type(v, json_type_array)) {
			snprintf(why, len, "qemu-img lists its extents in a form Kumo cannot read");
			ret = -1;
			v = NULL;
		}
		for (size_t i = 0; v && i < json_array_len(v); i++) {
			const char *fn =
				json_get_str(json_object_array_get_idx(v, i), "filename", file);

			if (strcmp(fn, file)) {
				snprintf(why, len, "it refers to another file (%.100s)", fn);
				ret = -1;
			}
		}
		*virtual_size = json_get_int(info, "virtual-size", 0);
	}
	json_object_put(info);
	return ret;
}

static void final_info_cb(int64_t status, const char *out, const char *errout, void *cls)
{
	struct import *im = cls;
	char why[256];

	if (status != 0 || image_info_check(out, im->work ? im->work : im->upload, "qcow2",
					    &im->virtual_size, why, sizeof(why)) < 0) {
		import_fail(im, "converted image is not usable: %s", status ? errout : why);
		return;
	}
	/* link(), not rename(): an image of the same name stored meanwhile is never
	 * replaced (rename would), the import fails instead. */
	if (link(im->work ? im->work : im->upload, im->final) < 0) {
		import_fail(im,
			    errno == EEXIST ? "an image named %s was stored meanwhile"
					    : "cannot store the image %s",
			    im->name);
		return;
	}
	im->own_final = true;
	import_hash(im);
}

static void run_info(struct import *im, const char *file, const char *format, proc_done_fn cb)
{
	char *argv[] = {"qemu-img",   "info", "--output=json", "-f", (char *)format,
			(char *)file, NULL};
	struct kerr err;

	if (proc_run(argv, cb, im, &err) < 0)
		import_fail(im, "%s", err.msg);
}

static void convert_cb(int64_t status, const char *out, const char *errout, void *cls)
{
	struct import *im = cls;

	if (status != 0) {
		import_fail(im, "conversion to qcow2 failed: %.200s", errout);
		return;
	}
	unlink(im->upload);
	run_info(im, im->work, "qcow2", final_info_cb);
}

static void upload_info_cb(int64_t status, const char *out, const char *errout, void *cls)
{
	struct import *im = cls;
	char why[256];
	struct kerr err;

	if (status != 0) {
		import_fail(im, "not a valid %s image: %.200s", im->format, errout);
		return;
	}
	if (image_info_check(out, im->upload, im->format, &im->virtual_size, why, sizeof(why)) <
	    0) {
		import_fail(im, "refused: %s", why);
		return;
	}
	if (!strcmp(im->format, "qcow2")) {
		run_info(im, im->upload, "qcow2", final_info_cb);
		return;
	}
	if (image_room_check(im->virtual_size, why, sizeof(why)) < 0) {
		import_fail(im, "refused: %s", why);
		return;
	}
	op_update(im->op, "running", 30, "converting to qcow2", NULL, NULL);
	im->work = xasprintf("%s.qcow2", im->upload);
	{
		char *argv[] = {"qemu-img", "convert",	"-f",	  im->format, "-O",
				"qcow2",    im->upload, im->work, NULL};

		if (proc_run(argv, convert_cb, im, &err) < 0)
			import_fail(im, "%s", err.msg);
	}
}

/*
 * An uploaded qcow2's header h (common/qcow2.c parsed it) must be self-contained: no
 * backing file and no external data file (qcow2_backing_check() with no backing),
 * which qemu-img info would already open and which could be any file on this host.
 */
static int header_allowed(const struct qcow2_header *h, char *why, size_t len)
{
	char sub[QCOW2_BACKING_MAX + 128];

	if (qcow2_backing_check("the image", h, NULL, sub, sizeof(sub)) < 0) {
		snprintf(why, len, "%s; upload a self-contained image", sub);
		return -1;
	}
	return 0;
}

/*
 * Check the first n bytes of a qcow2 image: a header common/qcow2.c accepts (as QEMU
 * would open it, all of it within the bytes given), with no backing file and no
 * external data file. Returns 0, or -1 with why (len bytes).
 */
int image_qcow2_header_check(const unsigned char *buf, size_t n, char *why, size_t len)
{
	struct qcow2_header h;

	if (qcow2_header_parse(buf, n, &h, why, len) < 0)
		return -1;
	return header_allowed(&h, why, len);
}

/*
 * Read a qcow2 header ourselves before qemu-img sees the file (the upload's, which the
 * controller wrote; its first QCOW2_HEADER_READ_MAX bytes, on the loop as the upload's
 * other small file work). Formats other than qcow2 are checked through qemu-img's
 * answer.
 */
static int qcow2_header_check(const char *path, char *why, size_t len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct qcow2_header h;

	if (fd < 0) {
		snprintf(why, len, "the upload cannot be read: %s", strerror(errno));
		return -1;
	}
	if (qcow2_header_fd_read(fd, &h, why, len) < 0)
		return -1;
	return header_allowed(&h, why, len);
}

/* ---- the upload ---- */

static bool image_name_taken(const char *name)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT 1 FROM images WHERE name = ?");
	bool taken;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	taken = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	return taken;
}

static bool format_is_oci(const char *format)
{
	return format && (!strcmp(format, "oci-archive") || !strcmp(format, "docker-archive"));
}

static enum MHD_Result oci_upload_begin(struct request *req, const char *name);
static enum MHD_Result oci_import_start(struct request *req, const char *name, const char *format);

/* First call of an upload: check the query, refuse early, open the temporary file. */
static enum MHD_Result upload_begin(struct request *req)
{
	const char *name = http_query(req, "name"), *format = http_query(req, "format");
	_cleanup_free_ char *dir = xasprintf("%s/" IMAGE_DIR, ctl.cfg.shared_pool);
	unsigned char rnd[8];
	char hex[17];
	size_t i;
	int rc;

	if (name == NULL)
		return http_reply_error(req, 400, "name", "query parameter 'name' is required");
	if (format_is_oci(format))
		return oci_upload_begin(req, name);
	if (!name_valid(name))
		return http_reply_error(req, 400, "name",
					"image name must be 1-63 characters of a-z, 0-9 and '-'");
	if (format == NULL)
		format = "qcow2";
	for (i = 0; formats[i] && strcmp(formats[i], format); i++)
		;
	if (formats[i] == NULL)
		return http_reply_error(
			req, 400, "format",
			"format must be qcow2, raw, vmdk, vhdx, vdi, vpc, ova, oci-archive or "
			"docker-archive, not '%.32s'",
			format);
	if (image_name_taken(name))
		return http_reply_error(req, 409, "name", "an image named %s exists already", name);
	{
		_cleanup_free_ char *target = xasprintf("images/%s", name);
		char busy[LINK_OP_ID_MAX + 1];

		if (op_busy(target, busy, sizeof(busy)))
			return http_reply_error(req, 409, "name",
						"image %s is being imported (operation %s)", name,
						busy);
	}
	rc = mkdir_p(dir, 0755);
	if (rc < 0)
		return http_reply_error(req, 500, NULL, "cannot create %s: %s", dir, strerror(-rc));
	random_bytes(rnd, sizeof(rnd));
	hex_encode(rnd, sizeof(rnd), hex);
	req->upload_path = xasprintf("%s/.upload-%s", dir, hex);
	req->upload_fd = open(req->upload_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (req->upload_fd < 0) {
		free(req->upload_path);
		req->upload_path = NULL;
		return http_reply_error(req, 500, NULL, "cannot store the upload: %s",
					strerror(errno));
	}
	return MHD_YES;
}

/* A chunk of the body: to the file. Errors are remembered and answered at the end. */
static void upload_data(struct request *req, const char *data, size_t len)
{
	if (req->upload_fd < 0 || req->upload_error[0])
		return;
	if (req->upload_len + len > IMAGE_MAX_BYTES) {
		snprintf(req->upload_error, sizeof(req->upload_error),
			 "the upload is over %llu bytes", IMAGE_MAX_BYTES);
		return;
	}
	http_upload_write(req, data, len);
}

/* The request is over: an upload nobody took over is removed. */
static void upload_end(struct request *req)
{
	if (req->upload_fd >= 0)
		close(req->upload_fd);
	req->upload_fd = -1;
	if (req->upload_path) {
		unlink(req->upload_path);
		free(req->upload_path);
		req->upload_path = NULL;
	}
}

const struct stream_ops api_images_stream = {upload_begin, upload_data, upload_end, NULL};

/* ---- container image import: archive -> skopeo -> OCI layout -> store ---- */

struct oci_import {
	char op[LINK_OP_ID_MAX + 1];
	char name[OCI_REPO_MAX + OCI_TAG_MAX + 2];
	char repo[OCI_REPO_MAX + 1];
	char tag[OCI_TAG_MAX + 1];
	char *archive; /* the upload */
	char *layout;  /* the OCI layout skopeo writes, next to it on the shared pool */
	char *scratch; /* skopeo's temporary files */
};

static void oci_import_free(struct oci_import *im)
{
	unlink(im->archive);
	oci_tree_remove(im->layout);
	oci_tree_remove(im->scratch);
	free(im->archive);
	free(im->layout);
	free(im->scratch);
	free(im);
}

static void oci_import_fail(struct oci_import *im, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void oci_import_fail(struct oci_import *im, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warnx("image %s: import failed: %s", im->name, msg);
	op_update(im->op, "failed", -1, "failed", NULL, msg);
	oci_import_free(im);
}

/* The last line of a program's error output, for a message: skopeo's msg="..." part. */
static void last_line(const char *text, char *out, size_t len)
{
	size_t n = strlen(text);
	const char *msg;

	while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
		n--;
	for (size_t i = n; i > 0; i--)
		if (text[i - 1] == '\n') {
			text += i;
			n -= i;
			break;
		}
	msg = memmem(text, n, "msg=\"", 5);
	if (msg) {
		n -= (size_t)(msg + 5 - text);
		text = msg + 5;
		if (n > 0 && text[n - 1] == '"')
			n--;
	}
	snprintf(out, len, "%.*s", (int)n, text);
}

/* Every blob is in the store and checked: the layout's one manifest becomes the tag. */
static void oci_ingest_cb(const struct oci_result *res, void *cls)
{
	struct oci_import *im = cls;
	_cleanup_free_ char *index_path = xasprintf("%s/index.json", im->layout), *text = NULL;
	struct json_object *index, *list, *img = NULL, *result;
	char digest[OCI_DIGEST_LEN + 1];
	struct kerr err;
	sqlite3_stmt *st;

	if (res->status < 0) {
		oci_import_fail(im, "refused: %s", res->error);
		return;
	}
	if (file_read_all(index_path, 1 << 20, &text, NULL) < 0 ||
	    (index = json_tokener_parse(text)) == NULL) {
		oci_import_fail(im, "skopeo wrote no readable index.json");
		return;
	}
	list = json_object_object_get(index, "manifests");
	if (!json_object_is_type(list, json_type_array) || json_array_len(list) != 1) {
		json_object_put(index);
		oci_import_fail(im, "the archive must hold exactly one image");
		return;
	}
	snprintf(digest, sizeof(digest), "%s",
		 json_get_str(json_object_array_get_idx(list, 0), "digest", ""));
	json_object_put(index);
	if (oci_image_record_stored(im->repo, im->tag, digest, &err) < 0) {
		oci_import_fail(im, "refused: %s", err.msg);
		return;
	}
	st = db_prepare(ctl.db, "SELECT " IMAGE_COLUMNS " FROM images WHERE name = ?");
	sqlite3_bind_text(st, 1, im->name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		img = image_row_json(st);
	sqlite3_finalize(st);
	log_info("image %s: imported (%s)", im->name, digest);
	result = json_object_new_object();
	json_object_object_add(result, "image", img);
	op_update(im->op, "succeeded", 100, "done", result, NULL);
	oci_import_free(im);
}

static void oci_skopeo_cb(int64_t status, const char *out, const char *errout, void *cls)
{
	struct oci_import *im = cls;
	char why[300];

	if (status != 0) {
		last_line(errout, why, sizeof(why));
		oci_import_fail(im, "skopeo could not read the archive: %s", why);
		return;
	}
	unlink(im->archive);
	op_update(im->op, "running", 60, "verifying blobs", NULL, NULL);
	oci_layout_ingest(im->layout, oci_ingest_cb, im);
}

/* First call of a container image upload: REPO:TAG free, the file in oci/uploads. */
static enum MHD_Result oci_upload_begin(struct request *req, const char *name)
{
	char repo[OCI_REPO_MAX + 1], tag[OCI_TAG_MAX + 1], busy[LINK_OP_ID_MAX + 1], hex[17];
	_cleanup_free_ char *target = xasprintf("images/%s", name), *file = NULL;
	unsigned char rnd[8];
	struct kerr err;

	if (oci_name_split(name, repo, tag, "name", &err) < 0)
		return http_reply_kerr(req, &err);
	if (image_name_taken(name))
		return http_reply_error(req, 409, "name", "an image named %s exists already", name);
	if (op_busy(target, busy, sizeof(busy)))
		return http_reply_error(req, 409, "name",
					"image %s is being imported (operation %s)", name, busy);
	if (oci_store_init(&err) < 0)
		return http_reply_kerr(req, &err);
	random_bytes(rnd, sizeof(rnd));
	hex_encode(rnd, sizeof(rnd), hex);
	file = xasprintf(".import-%s", hex);
	req->upload_path = oci_upload_path(file);
	req->upload_fd = open(req->upload_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (req->upload_fd < 0) {
		free(req->upload_path);
		req->upload_path = NULL;
		return http_reply_error(req, 500, NULL, "cannot store the upload: %s",
					strerror(errno));
	}
	return MHD_YES;
}

/* The archive is in: an image-import operation runs skopeo, then the ingest. */
static enum MHD_Result oci_import_start(struct request *req, const char *name, const char *format)
{
	struct json_object *op, *res, *args;
	struct oci_import *im;
	_cleanup_free_ char *src = NULL, *dst = NULL;
	struct kerr err;

	args = json_object_new_object();
	json_object_object_add(args, "name", json_object_new_string(name));
	json_object_object_add(args, "format", json_object_new_string(format));
	json_object_object_add(args, "bytes", json_object_new_int64((int64_t)req->upload_len));
	res = json_object_new_object();
	json_object_object_add(res, "args", args);
	{
		_cleanup_free_ char *target = xasprintf("images/%s", name);

		op = op_create("image-import", target, NULL, res, &err);
	}
	if (op == NULL)
		return http_reply_kerr(req, &err);
	im = xcalloc(1, sizeof(*im));
	snprintf(im->op, sizeof(im->op), "%s",
		 json_object_get_string(json_object_object_get(op, "id")));
	snprintf(im->name, sizeof(im->name), "%s", name);
	oci_name_split(name, im->repo, im->tag, "name", &err);
	im->archive = STEAL_POINTER(&req->upload_path);
	im->layout = xasprintf("%s.oci", im->archive);
	im->scratch = xasprintf("%s.tmp", im->archive);
	op_update(im->op, "running", 10, "unpacking with skopeo", NULL, NULL);
	if (mkdir(im->scratch, 0700) < 0) {
		oci_import_fail(im, "cannot create %s: %s", im->scratch, strerror(errno));
		return http_reply_json(req, 202, op);
	}
	/* skopeo checks the archive's digests as it copies; the ingest checks them again. */
	src = xasprintf("%s:%s", format, im->archive);
	dst = xasprintf("oci:%s:%s", im->layout, im->tag);
	{
		char *argv[] = {"skopeo", "--insecure-policy", "--tmpdir", im->scratch,
				"copy",	  "--quiet",	       src,	   dst,
				NULL};

		if (proc_run(argv, oci_skopeo_cb, im, &err) < 0)
			oci_import_fail(im, "%s", err.msg);
	}
	return http_reply_json(req, 202, op);
}

enum MHD_Result api_images_upload(struct request *req)
{
	const char *name = http_query(req, "name"), *format = http_query(req, "format");
	const char *convert = http_query(req, "convert");
	struct json_object *op, *res, *args;
	struct import *im;
	struct kerr err;
	bool big = req->upload_error[0] && strstr(req->upload_error, "over");
	bool ova = format && !strcmp(format, "ova");

	/* A refused upload is removed before the answer, not when the connection's request
	 * ends: a client that reads the refusal finds nothing left behind. */
	if (convert && (!ova || (strcmp(convert, "0") && strcmp(convert, "1") &&
				 strcmp(convert, "false") && strcmp(convert, "true")))) {
		upload_end(req);
		return http_reply_error(req, 400, "convert",
					"'convert' is 1, 0, true or false, for format=ova only");
	}
	if (req->upload_error[0] || req->upload_len == 0)
		upload_end(req);
	if (req->upload_error[0])
		return http_reply_error(req, big ? 413 : 500, NULL, "%s", req->upload_error);
	if (req->upload_len == 0)
		return http_reply_error(req, 400, NULL,
					"the upload is empty; send the image as the body");
	if (fsync(req->upload_fd) < 0)
		return http_reply_error(req, 500, NULL, "cannot store the upload: %s",
					strerror(errno));
	close(req->upload_fd);
	req->upload_fd = -1;
	if (format_is_oci(format))
		return oci_import_start(req, name, format);
	if (ova) /* V2V import: ova.c */
		return ova_import_start(
			req, name, convert && (!strcmp(convert, "1") || !strcmp(convert, "true")));
	if (format == NULL)
		format = "qcow2";
	args = json_object_new_object();
	json_object_object_add(args, "name", json_object_new_string(name));
	json_object_object_add(args, "format", json_object_new_string(format));
	json_object_object_add(args, "bytes", json_object_new_int64((int64_t)req->upload_len));
	res = json_object_new_object();
	json_object_object_add(res, "args", args);
	{
		_cleanup_free_ char *target = xasprintf("images/%s", name);

		op = op_create("image-import", target, NULL, res, &err);
	}
	if (op == NULL)
		return http_reply_kerr(req, &err);
	im = xcalloc(1, sizeof(*im));
	snprintf(im->op, sizeof(im->op), "%s",
		 json_object_get_string(json_object_object_get(op, "id")));
	snprintf(im->name, sizeof(im->name), "%s", name);
	snprintf(im->format, sizeof(im->format), "%s", format);
	im->upload = STEAL_POINTER(&req->upload_path);
	im->rel = xasprintf(IMAGE_DIR "/%s.qcow2", name);
	im->final = xasprintf("%s/%s", ctl.cfg.shared_pool, im->rel);
	op_update(im->op, "running", 10, "checking", NULL, NULL);
	{
		char why[256];

		if (!strcmp(im->format, "qcow2") &&
		    qcow2_header_check(im->upload, why, sizeof(why)) < 0) {
			import_fail(im, "refused: %s", why);
			return http_reply_json(req, 202, op);
		}
	}
	run_info(im, im->upload, im->format, upload_info_cb);
	return http_reply_json(req, 202, op);
}

/* Start-up: uploads and conversions an earlier run left half done are removed. */
void images_sweep_uploads(void)
{
	_cleanup_free_ char *dir = xasprintf("%s/" IMAGE_DIR, ctl.cfg.shared_pool);
	DIR *d = opendir(dir);
	struct dirent *e;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, ".upload-", 8) == 0) {
			_cleanup_free_ char *p = xasprintf("%s/%s", dir, e->d_name);

			log_info("images: removing the interrupted upload %s", p);
			unlink(p);
		}
	}
	closedir(d);
}

/* ---- list, show, delete ---- */

/* GET /api/v1/images: by name, paged (page.c). */
enum MHD_Result api_images_list(struct request *req)
{
	struct json_object *list, *out;
	struct page page;
	struct kerr err;

	if (page_begin(req, &page, &err) < 0)
		return http_reply_kerr(req, &err);
	list = page_rows_by_name(&page,
				 db_prepare(ctl.db,
					    "SELECT " IMAGE_COLUMNS " FROM images WHERE name > ?1 "
					    "ORDER BY name LIMIT ?2"),
				 image_row_json);
	out = json_object_new_object();
	page_end(&page, out, "images", list);
	return http_reply_json(req, 200, out);
}

/* A VM image name, or a container image's REPO:TAG (a repository without '/' here). */
static bool image_name_ok(const char *name)
{
	char repo[OCI_REPO_MAX + 1], tag[OCI_TAG_MAX + 1];
	struct kerr err;

	return name_valid(name) || oci_name_split(name, repo, tag, "name", &err) == 0;
}

enum MHD_Result api_image_get(struct request *req)
{
	struct json_object *o = NULL;
	sqlite3_stmt *st;

	if (!image_name_ok(req->params[0]))
		return http_reply_error(req, 400, "name",
					"image name must be 1-63 characters of a-z, 0-9 and '-', "
					"or REPO:TAG for a container image");
	st = db_prepare(ctl.db, "SELECT " IMAGE_COLUMNS " FROM images WHERE name = ?");
	sqlite3_bind_text(st, 1, req->params[0], -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		o = image_row_json(st);
	sqlite3_finalize(st);
	if (o == NULL)
		return http_reply_error(req, 404, NULL, "no image named %s", req->params[0]);
	return http_reply_json(req, 200, o);
}

/* A container image: its tag goes (the manifest stays reachable by digest). */
static enum MHD_Result oci_image_delete(struct request *req)
{
	char repo[OCI_REPO_MAX + 1], tag[OCI_TAG_MAX + 1], who[NAME_MAX + 1];
	struct kerr err;
	int rc;

	if (oci_name_split(req->params[0], repo, tag, "name", &err) < 0)
		return http_reply_error(req, 400, "name",
					"image name must be 1-63 characters of a-z, 0-9 and '-', "
					"or REPO:TAG for a container image");
	if (oci_image_used(req->params[0], NULL, who, sizeof(who)))
		return http_reply_error(req, 409, NULL, "image %s is used by instance %s",
					req->params[0], who);
	rc = oci_tag_remove(repo, tag, &err);
	if (rc == -ENOENT)
		return http_reply_error(req, 404, NULL, "no image named %s", req->params[0]);
	if (rc < 0)
		return http_reply_kerr(req, &err);
	return http_reply_empty(req, 204);
}

enum MHD_Result api_image_delete(struct request *req)
{
	char path[512];
	_cleanup_free_ char *abs = NULL;
	struct json_object *ev;
	sqlite3_stmt *st;
	int64_t id;

	if (!name_valid(req->params[0]))
		return oci_image_delete(req);
	id = image_find(req->params[0], path, sizeof(path), NULL, NULL);
	if (id < 0) {
		/* A record that does not verify can still be removed, but its path is not
		 * to be believed: the file stays. */
		st = db_prepare(ctl.db, "SELECT id FROM images WHERE name = ? AND kind = 'vm'");
		sqlite3_bind_text(st, 1, req->params[0], -1, SQLITE_STATIC);
		id = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
		sqlite3_finalize(st);
		path[0] = '\0';
	}
	if (id <= 0)
		return http_reply_error(req, 404, NULL, "no image named %s", req->params[0]);
	if (image_in_use(id))
		return http_reply_error(req, 409, NULL, "image %s is used by instance disks",
					req->params[0]);
	st = db_prepare(ctl.db, "DELETE FROM images WHERE id = ?");
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_step(st) != SQLITE_DONE) {
		sqlite3_finalize(st);
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	}
	sqlite3_finalize(st);
	/* The row is gone first: a crash now leaves a stray file, never a row without one. */
	abs = xasprintf("%s/%s", ctl.cfg.shared_pool, path);
	if (path[0] && unlink(abs) < 0 && errno != ENOENT)
		log_warn("image %s: cannot remove %s", req->params[0], abs);
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(req->params[0]));
	event_emit("image-deleted", ev);
	return http_reply_empty(req, 204);
}
