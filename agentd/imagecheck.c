/*
 * imagecheck.c - a VM's disks and images checked where they are used, before QEMU or
 * qemu-img opens them for the guest.
 *
 * Images live on the shared pool, which every host writes as root: root on one host
 * could replace an image with a qcow2 whose backing file is another host's file (its
 * link.json), or keep the data in an external data file, and a VM started elsewhere
 * would read that file as its disk. So before a start (imagecheck_vm()) and before a
 * disk is made from an image (imagecheck_image()):
 *
 *   - each disk is a regular file, qcow2, with no external data file, and a backing
 *     file only if it is a linked clone, and then exactly its image's path (as the
 *     disk was made, qcow2 too);
 *   - each image is a regular file, qcow2, with no backing file and no data file,
 *     whose SHA-256 is the one the controller recorded at import and sent in the
 *     spec. The hash is computed off the loop and cached per file identity (device,
 *     inode, size, mtime), so an unchanged image is hashed once per agent run.
 *
 * Each file's header is read here (common/qcow2.c, on a pool thread), never through a
 * link and never further than its first cluster: a backing file nobody expected is
 * named by the check, never opened. (It was `qemu-img info`, two of them per linked
 * clone: a process start each, 30-150 ms on the critical path of a migration's target
 * on a loaded host, for three fields of the header.)
 *
 * Why the spec's hash can be trusted: it came in a command on the agent link, which
 * is sealed with this host's own key (seal.c), so it is the controller's word; the
 * controller keeps the record in its own database. What stays open: a file swapped
 * between this check and QEMU's open of it (seconds); QEMU opening the files by
 * descriptor (-add-fd) would close that.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "qcow2.h"
#include "util.h"

#define HASH_CACHE_MAX 64

struct image_hash {
	dev_t dev;
	ino_t ino;
	off_t size;
	int64_t mtime_ns;
	char sha256[65];
	struct image_hash *next;
};

/* One image to check: info, then its hash. */
struct image_check {
	struct agent *agent;
	char abs[PATH_MAX];
	char sha256[65]; /* the controller's record; "" when the spec has none */
	disk_done_cb cb;
	void *data;
};

struct hash_job {
	struct work job;
	struct image_check *check;
	struct stat st;
	char sha256[65];
};

/*
 * Check one VM's disks, one after the other; a disk and the image under it at the
 * same time (two header reads on the pool, on the path of every VM start and
 * migration target).
 */
struct vm_check {
	struct vm *vm;
	size_t i;
	char image[PATH_MAX]; /* the expected backing file of disk i, or "" */
	char sha256[65];
	int pending;			    /* checks of disk i running, +1 while issuing */
	char disk_why[PATH_MAX * 3 + 128];  /* why disk i was refused, or "" */
	char image_why[PATH_MAX * 2 + 128]; /* why its image was, or "" */
	disk_done_cb cb;
	void *data;
};

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static const char *hash_cached(struct agent *a, const struct stat *st)
{
	for (struct image_hash *h = a->image_hashes; h; h = h->next)
		if (h->dev == st->st_dev && h->ino == st->st_ino && h->size == st->st_size &&
		    h->mtime_ns == mtime_ns(st))
			return h->sha256;
	return NULL;
}

static void hash_remember(struct agent *a, const struct stat *st, const char *sha256)
{
	struct image_hash *h = xcalloc(1, sizeof(*h)), **pp;
	size_t n = 0;

	h->dev = st->st_dev;
	h->ino = st->st_ino;
	h->size = st->st_size;
	h->mtime_ns = mtime_ns(st);
	snprintf(h->sha256, sizeof(h->sha256), "%s", sha256);
	h->next = a->image_hashes;
	a->image_hashes = h;
	/* Bounded: the oldest entries go. */
	for (pp = &a->image_hashes; *pp && ++n < HASH_CACHE_MAX; pp = &(*pp)->next)
		;
	while (*pp) {
		struct image_hash *old = *pp;

		*pp = old->next;
		free(old);
	}
}

/*
 * Forget every cached hash (agent shutdown).
 */
void imagecheck_cache_free(struct agent *a)
{
	while (a->image_hashes) {
		struct image_hash *h = a->image_hashes;

		a->image_hashes = h->next;
		free(h);
	}
}

/* A file's header, read on a pool thread. */
typedef void (*header_cb)(struct agent *a, const char *error, const struct qcow2_header *h,
			  void *data);

struct header_job {
	struct work job;
	char path[PATH_MAX];
	struct qcow2_header header;
	char why[PATH_MAX + 256];
	header_cb cb;
	void *data;
};

static int header_work(struct work *job)
{
	struct header_job *j = (struct header_job *)job;

	return qcow2_header_read(j->path, &j->header, j->why, sizeof(j->why));
}

static void header_done(struct work *job)
{
	struct header_job *j = (struct header_job *)job;
	/* A job that never ran (the agent stops) has its reason in job->err. */
	const char *error = job->ret < 0 ? (j->why[0] ? j->why : job->err.msg) : NULL;

	j->cb(job->owner, error, error ? NULL : &j->header, j->data);
	free(j);
}

/* Read the qcow2 header of path off the loop; cb(a, error, header, data) follows. */
static void header_read(struct agent *a, const char *path, header_cb cb, void *data)
{
	struct header_job *j = xcalloc(1, sizeof(*j));

	snprintf(j->path, sizeof(j->path), "%s", path);
	j->cb = cb;
	j->data = data;
	j->job.run = header_work;
	j->job.done = header_done;
	oci_job_queue(a, &j->job);
}

/* A regular file, not a link to one somewhere else. */
static int regular_check(const char *file, char *why, size_t len)
{
	struct stat st;

	if (lstat(file, &st) < 0) {
		snprintf(why, len, "%s: %s", file, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(why, len, "%s is not a regular file", file);
		return -1;
	}
	return 0;
}

static void check_finish(struct image_check *c, const char *error)
{
	if (error)
		log_warnx("image %s: refused: %s", c->abs, error);
	c->cb(c->agent, error, c->data);
	free(c);
}

/* The hash of the file, with its identity taken from the same descriptor. */
static int hash_work(struct work *job)
{
	struct hash_job *h = (struct hash_job *)job;
	/* O_NONBLOCK: a FIFO swapped in must not hold a pool thread in open(). */
	_cleanup_close_ int fd =
		open(h->check->abs, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	static __thread unsigned char buf[1 << 16];
	unsigned char md[32];
	unsigned int mdlen = sizeof(md);
	EVP_MD_CTX *ctx;
	struct stat after;
	ssize_t n;

	if (fd < 0 || fstat(fd, &h->st) < 0)
		return err_set(&job->err, errno, "cannot read %s", h->check->abs);
	if (!S_ISREG(h->st.st_mode))
		return err_set(&job->err, EINVAL, "%s is not a regular file", h->check->abs);
	ctx = EVP_MD_CTX_new();
	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(ctx);
		return err_set(&job->err, ENOMEM, "cannot hash %s", h->check->abs);
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		EVP_DigestUpdate(ctx, buf, (size_t)n);
	if (n < 0) {
		EVP_MD_CTX_free(ctx);
		return err_set(&job->err, errno, "cannot read %s", h->check->abs);
	}
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	EVP_MD_CTX_free(ctx);
	hex_encode(md, 32, h->sha256);
	/* Changed while it was read: the hash describes no version of it. */
	if (fstat(fd, &after) < 0 || after.st_size != h->st.st_size ||
	    mtime_ns(&after) != mtime_ns(&h->st))
		return err_set(&job->err, 0, "%s changed while it was hashed", h->check->abs);
	return 0;
}

static void hash_compare(struct image_check *c, const char *sha256)
{
	char why[PATH_MAX + 256];

	if (strcmp(sha256, c->sha256) != 0) {
		snprintf(why, sizeof(why),
			 "%s has SHA-256 %.12s..., not %.12s... as the controller recorded at "
			 "import: it was changed",
			 c->abs, sha256, c->sha256);
		check_finish(c, why);
		return;
	}
	check_finish(c, NULL);
}

static void hash_done(struct work *job)
{
	struct hash_job *h = (struct hash_job *)job;
	struct image_check *c = h->check;

	if (job->ret < 0) {
		check_finish(c, job->err.msg);
	} else {
		/* A stopping agent freed its cache already (imagecheck_cache_free()). */
		if (!((struct agent *)job->owner)->stopping)
			hash_remember(((struct agent *)job->owner), &h->st, h->sha256);
		hash_compare(c, h->sha256);
	}
	free(h);
}

static void image_header_cb(struct agent *a, const char *error, const struct qcow2_header *info,
			    void *data)
{
	struct image_check *c = data;
	char why[PATH_MAX * 2 + 128];
	struct hash_job *h;
	const char *cached;
	struct stat st;

	if (error) {
		snprintf(why, sizeof(why), "%s", error);
		check_finish(c, why);
		return;
	}
	if (qcow2_backing_check(c->abs, info, NULL, why, sizeof(why)) < 0) {
		check_finish(c, why);
		return;
	}
	if (c->sha256[0] == '\0') {
		/* A spec from before hashes were sent: the shape alone is checked. */
		check_finish(c, NULL);
		return;
	}
	if (stat(c->abs, &st) == 0 && (cached = hash_cached(a, &st)) != NULL) {
		hash_compare(c, cached);
		return;
	}
	h = xcalloc(1, sizeof(*h));
	h->check = c;
	h->job.run = hash_work;
	h->job.done = hash_done;
	oci_job_queue(a, &h->job);
}

/*
 * Check the image at abs (on the shared pool): a regular qcow2 file without backing
 * or data file whose SHA-256 is sha256 (hex; "" or NULL: not checked). cb(a, error,
 * data) follows on a later turn, error NULL when it passed.
 */
void imagecheck_image(struct agent *a, const char *abs, const char *sha256, disk_done_cb cb,
		      void *data)
{
	struct image_check *c = xcalloc(1, sizeof(*c));
	char why[PATH_MAX + 128];

	c->agent = a;
	c->cb = cb;
	c->data = data;
	snprintf(c->abs, sizeof(c->abs), "%s", abs);
	snprintf(c->sha256, sizeof(c->sha256), "%s", sha256 ? sha256 : "");
	if (regular_check(abs, why, sizeof(why)) < 0) {
		log_warnx("image %s: refused: %s", abs, why);
		free(c);
		disk_fail_later(a, cb, data, "%s", why);
		return;
	}
	header_read(a, abs, image_header_cb, c);
}

static void vm_check_next(struct vm_check *v);

/*
 * One check of disk i ended; once both did, the disk's refusal first, then its image's.
 * A stopping agent frees its VMs as their handles close (inst_close_all()), and a check
 * can end after that (a first hash runs seconds on the pool): then neither the VM nor
 * the caller's continuation is touched again.
 */
static void vm_disk_checked(struct agent *a, struct vm_check *v)
{
	if (--v->pending > 0)
		return;
	if (a->stopping) {
		free(v);
		return;
	}
	if (v->disk_why[0] || v->image_why[0]) {
		v->cb(a, v->disk_why[0] ? v->disk_why : v->image_why, v->data);
		free(v);
		return;
	}
	v->i++;
	vm_check_next(v);
}

static void vm_image_cb(struct agent *a, const char *error, void *data)
{
	struct vm_check *v = data;

	if (error)
		snprintf(v->image_why, sizeof(v->image_why), "%s", error);
	vm_disk_checked(a, v);
}

static void vm_disk_header_cb(struct agent *a, const char *error, const struct qcow2_header *info,
			      void *data)
{
	struct vm_check *v = data;
	const struct vm_disk *d;
	char *why = v->disk_why;

	if (a->stopping) { /* v->vm may be gone: see vm_disk_checked() */
		vm_disk_checked(a, v);
		return;
	}
	d = &v->vm->disks[v->i];
	if (error || qcow2_backing_check(d->abs, info, v->image[0] ? v->image : NULL, why,
					 sizeof(v->disk_why)) < 0) {
		if (error)
			snprintf(why, sizeof(v->disk_why), "%s", error);
		log_warnx("vm %s: disk %s refused: %s", v->vm->inst.name, d->name, why);
	}
	vm_disk_checked(a, v);
}

/* The spec's disk named name. */
static struct json_object *spec_disk(struct json_object *spec, const char *name)
{
	struct json_object *arr = json_object_object_get(spec, "disks");

	for (size_t i = 0; arr && i < json_array_len(arr); i++) {
		struct json_object *d = json_object_array_get_idx(arr, i);

		if (strcmp(json_get_str(d, "name", ""), name) == 0)
			return d;
	}
	return NULL;
}

static void vm_check_next(struct vm_check *v)
{
	struct vm *vm = v->vm;
	struct json_object *d, *img;
	char why[PATH_MAX + 128];

	if (v->i >= vm->ndisks) {
		v->cb(vm->inst.agent, NULL, v->data);
		free(v);
		return;
	}
	d = spec_disk(vm->inst.spec, vm->disks[v->i].name);
	img = json_object_object_get(d, "image");
	v->image[0] = v->sha256[0] = '\0';
	/* A full clone was copied from its image: it stands alone like a blank disk. */
	if (img && strcmp(json_get_str(d, "clone", "linked"), "linked") == 0) {
		snprintf(v->image, sizeof(v->image), "%s/%s", vm->inst.agent->cfg->shared_pool,
			 json_get_str(img, "path", ""));
		snprintf(v->sha256, sizeof(v->sha256), "%s", json_get_str(img, "sha256", ""));
	}
	if (regular_check(vm->disks[v->i].abs, why, sizeof(why)) < 0) {
		disk_fail_later(vm->inst.agent, v->cb, v->data, "%s", why);
		free(v);
		return;
	}
	v->disk_why[0] = v->image_why[0] = '\0';
	/* One more than the checks while they are issued: should one ever answer
	 * at once, the other still sees v, and v ends only after both were asked. */
	v->pending = v->image[0] ? 3 : 2;
	header_read(vm->inst.agent, vm->disks[v->i].abs, vm_disk_header_cb, v);
	if (v->image[0])
		imagecheck_image(vm->inst.agent, v->image, v->sha256, vm_image_cb, v);
	vm_disk_checked(vm->inst.agent, v);
}

/*
 * Check every disk of vm and the image under each linked clone, as this file's head
 * says. cb(agent, error, data) follows on a later turn: error NULL when QEMU may open
 * them, else why not (naming the file).
 */
void imagecheck_vm(struct vm *vm, disk_done_cb cb, void *data)
{
	struct vm_check *v = xcalloc(1, sizeof(*v));

	v->vm = vm;
	v->cb = cb;
	v->data = data;
	vm_check_next(v);
}
