/*
 * disk.c - disk work for the vm driver.
 *
 * Two kinds of work, neither on the loop:
 *   - helper programs as children (common/child.c): qemu-img create, convert, resize, info,
 *     snapshot and bitmap, and mkfs.vfat + mcopy for the cloud-init seed. Their stderr's last
 *     line becomes the error a user reads ("qemu-img: ...: Could not open ...").
 *   - file work on libuv's thread pool: path checks, directories, spec.json, removal,
 *     sizes. A pool may be an NFS mount, and a hung server must cost a thread, never
 *     the loop.
 * Every entry point reports through its callback on a later turn of the loop, never
 * from inside the call, so a caller may start a step as the last thing it does.
 *
 * Paths: the controller names disks by pool and a relative path; spec_path_check() (common/spec.c)
 * holds that path to a plain shape, and disk_prepare() makes sure that what it
 * resolves to (after symlinks) is still inside the pool before anything is created.
 */
#include "agentd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "child.h"
#include "json.h"
#include "tree.h"
#include "util.h"

#define DISK_OUT_MAX   (1024 * 1024) /* stdout kept from a helper (qemu-img info JSON) */
#define DISK_ERR_TAIL  1024	     /* stderr kept: the end holds the reason */
#define DISK_ERROR_MAX 256
#define SEED_MIN_KB    1024
#define MIB	       (1024LL * 1024)

/* A helper child (common/child.h) and who waits for it. */
struct disk_cmd {
	struct agent *agent;
	struct child *child;
	const char *outbuf; /* its stdout, valid during done() */
	size_t outlen;
	void (*done)(struct disk_cmd *c, const char *error);
	void *data;
	struct disk_cmd *next;
};

/* A job for the thread pool: work() fills error on failure, cb gets it on the loop. */
struct fs_job {
	struct work w; /* first: common/work.h's thread-pool job */
	struct agent *agent;
	void (*work)(struct fs_job *j);
	disk_done_cb cb;
	disk_sizes_cb sizes_cb;
	disk_info_cb info_cb;
	void *data;
	char error[DISK_ERROR_MAX];
	char dir[PATH_MAX];
	char path[PATH_MAX];
	char shared_root[PATH_MAX];
	struct vm_disk *disks; /* n of them, or NULL (job_disks_set()) */
	char **images;	       /* n, each absolute or "", or NULL */
	int64_t vsize[AGENT_VM_DISKS_MAX], alloc[AGENT_VM_DISKS_MAX];
	bool keep[AGENT_VM_DISKS_MAX];
	size_t n;
	char *text, *text2;
};

/* The directory of pool "shared" or "local", or NULL for another name. */
const char *disk_pool_root(const struct agent_config *cfg, const char *pool)
{
	if (strcmp(pool, "shared") == 0)
		return cfg->shared_pool;
	if (strcmp(pool, "local") == 0)
		return cfg->local_pool;
	return NULL;
}

/* ---- helper children ---------------------------------------------------------------- */

static void cmd_done_cb(const struct child_result *r, void *data)
{
	struct disk_cmd *c = data;
	char why[DISK_ERROR_MAX];

	for (struct disk_cmd **pp = &c->agent->disk_cmds; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	c->outbuf = r->out;
	c->outlen = r->out_len;
	if (r->abandoned) {
		c->done(c, "the agent is stopping");
	} else if (child_result_ok(r)) {
		c->done(c, NULL);
	} else {
		/* Its stderr's last line: "qemu-img: ...: Could not open ..." */
		child_result_why(r, why, sizeof(why));
		c->done(c, why);
	}
	free(c);
}

/*
 * Run argv (argv[0] looked up in PATH) as a child; done(c, error) is called on the
 * loop once it exited and its output is read, error NULL for exit status 0.
 * Returns 0, or -1 with err when it could not be started (done is then not called).
 */
static int cmd_run(struct agent *a, char **argv, void (*done)(struct disk_cmd *, const char *),
		   void *data, struct kerr *err)
{
	struct disk_cmd *c = xcalloc(1, sizeof(*c));
	struct child_opts opts = {
		.argv = argv,
		.out_max = DISK_OUT_MAX,
		.err_max = DISK_ERR_TAIL,
		.err_mode = CHILD_ERR_CAPTURE,
	};

	c->agent = a;
	c->done = done;
	c->data = data;
	log_debug("disk: running %s %s", argv[0], argv[1] ? argv[1] : "");
	c->child = child_run(a->loop, &opts, cmd_done_cb, c, err);
	if (c->child == NULL) {
		free(c);
		return -1;
	}
	c->next = a->disk_cmds;
	a->disk_cmds = c;
	return 0;
}

/*
 * At agent shutdown: stop watching helpers; whoever waits hears "the agent is
 * stopping". They are not killed: a qemu-img convert cut short leaves a broken disk,
 * while one left alone finishes its file.
 */
void disk_cmds_close(struct agent *a)
{
	for (struct disk_cmd *c = a->disk_cmds; c; c = c->next)
		child_abandon(c->child, false);
}

/* ---- thread-pool jobs ---------------------------------------------------------------- */

static int job_run(struct work *w)
{
	struct fs_job *j = (struct fs_job *)w;

	if (j->work)
		j->work(j);
	return 0;
}

static void job_done(struct work *w)
{
	struct fs_job *j = (struct fs_job *)w;

	if (w->ret < 0 && !j->error[0])
		snprintf(j->error, sizeof(j->error), "the agent is stopping");
	if (j->sizes_cb)
		j->sizes_cb(j->agent, j->vsize, j->alloc, j->data);
	else if (j->info_cb)
		j->info_cb(j->agent, j->error, NULL, j->data);
	else if (j->cb)
		j->cb(j->agent, j->error[0] ? j->error : NULL, j->data);
	free(j->text);
	free(j->text2);
	for (size_t i = 0; j->images && i < j->n; i++)
		free(j->images[i]);
	free(j->images);
	free(j->disks);
	free(j);
}

/* j works on n disks (at most AGENT_VM_DISKS_MAX): a copy sized to them. */
static void job_disks_set(struct fs_job *j, const struct vm_disk *disks, size_t n)
{
	j->n = n < AGENT_VM_DISKS_MAX ? n : AGENT_VM_DISKS_MAX;
	j->disks = j->n ? xcalloc(j->n, sizeof(*j->disks)) : NULL;
	if (j->n)
		memcpy(j->disks, disks, j->n * sizeof(*disks));
}

static struct fs_job *job_new(struct agent *a, void (*work)(struct fs_job *), disk_done_cb cb,
			      void *data)
{
	struct fs_job *j = xcalloc(1, sizeof(*j));

	j->w.run = job_run;
	j->w.done = job_done;
	j->w.owner = a;
	j->agent = a;
	j->work = work;
	j->cb = cb;
	j->data = data;
	return j;
}

static void job_queue(struct fs_job *j)
{
	work_queue(j->agent->loop, &j->w);
}

/*
 * Report error (formatted) to cb on a later turn, through an empty job, as every
 * answer of this file comes.
 */
void disk_fail_later(struct agent *a, disk_done_cb cb, void *data, const char *fmt, ...)
{
	struct fs_job *j = job_new(a, NULL, cb, data);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(j->error, sizeof(j->error), fmt, ap);
	va_end(ap);
	job_queue(j);
}

/* True when path (resolved) is root (resolved) or inside it. */
static bool inside(const char *root_real, const char *path_real)
{
	size_t len = strlen(root_real);

	if (strcmp(root_real, "/") == 0)
		return true;
	return strncmp(root_real, path_real, len) == 0 &&
	       (path_real[len] == '/' || path_real[len] == '\0');
}

/* Make the directory of file abs inside root (resolving symlinks on the way). */
static int parent_make(const char *root, const char *abs, char *why, size_t whylen)
{
	_cleanup_free_ char *parent = xstrdup(abs), *root_real = NULL, *parent_real = NULL;
	char *slash = strrchr(parent, '/');
	int ret;

	if (slash)
		*slash = '\0';
	root_real = realpath(root, NULL);
	if (root_real == NULL) {
		snprintf(why, whylen, "pool directory %s: %s", root, strerror(errno));
		return -1;
	}
	ret = mkdir_p(parent, 0750);
	if (ret < 0) {
		snprintf(why, whylen, "cannot create %s: %s", parent, strerror(-ret));
		return -1;
	}
	parent_real = realpath(parent, NULL);
	if (parent_real == NULL || !inside(root_real, parent_real)) {
		snprintf(why, whylen, "%s leads outside its pool %s", parent, root);
		return -1;
	}
	return 0;
}

static void prepare_work(struct fs_job *j)
{
	_cleanup_free_ char *shared_real = realpath(j->shared_root, NULL);
	struct stat st;
	int ret;

	ret = mkdir_p(j->dir, 0700);
	if (ret < 0) {
		snprintf(j->error, sizeof(j->error), "cannot create %s: %s", j->dir,
			 strerror(-ret));
		return;
	}
	for (size_t i = 0; i < j->n; i++) {
		const struct vm_disk *d = &j->disks[i];

		if (parent_make(d->root, d->abs, j->error, sizeof(j->error)) < 0)
			return;
		if (lstat(d->abs, &st) == 0) {
			snprintf(j->error, sizeof(j->error),
				 "disk %s: %s exists already; refusing to overwrite it", d->name,
				 d->path);
			return;
		}
		if (j->images[i][0] == '\0')
			continue;
		_cleanup_free_ char *image_real = realpath(j->images[i], NULL);

		if (image_real == NULL || stat(image_real, &st) < 0 || !S_ISREG(st.st_mode)) {
			snprintf(j->error, sizeof(j->error), "disk %s: image %s is missing",
				 d->name, j->images[i]);
			return;
		}
		if (shared_real == NULL || !inside(shared_real, image_real)) {
			snprintf(j->error, sizeof(j->error),
				 "disk %s: image %s is not inside the shared pool", d->name,
				 j->images[i]);
			return;
		}
	}
}

/*
 * Make the run directory dir (0700) and check, for the n new disks, that each lies
 * inside its pool (its directory is created), does not exist yet, and that its
 * image (images[i], absolute, or "") is a file inside the shared pool.
 */
void disk_prepare(struct agent *a, const char *dir, const struct vm_disk *disks, size_t n,
		  const char *const *images, disk_done_cb cb, void *data)
{
	struct fs_job *j = job_new(a, prepare_work, cb, data);

	snprintf(j->dir, sizeof(j->dir), "%s", dir);
	snprintf(j->shared_root, sizeof(j->shared_root), "%s", a->cfg->shared_pool);
	job_disks_set(j, disks, n);
	j->images = xcalloc(j->n ? j->n : 1, sizeof(*j->images));
	for (size_t i = 0; i < j->n; i++)
		j->images[i] = xstrdup(images[i] ? images[i] : "");
	job_queue(j);
}

static void write_work(struct fs_job *j)
{
	int ret = file_write_atomic(j->path, j->text, strlen(j->text), 0600);

	if (ret < 0)
		snprintf(j->error, sizeof(j->error), "cannot write %s: %s", j->path,
			 strerror(-ret));
}

/* Write text to path atomically (0600), off the loop. */
void disk_file_write(struct agent *a, const char *path, const char *text, disk_done_cb cb,
		     void *data)
{
	struct fs_job *j = job_new(a, write_work, cb, data);

	snprintf(j->path, sizeof(j->path), "%s", path);
	j->text = xstrdup(text);
	job_queue(j);
}

static void remove_work(struct fs_job *j)
{
	int ret;

	for (size_t i = 0; i < j->n; i++) {
		const struct vm_disk *d = &j->disks[i];
		_cleanup_free_ char *parent = xstrdup(d->abs);
		char *slash;

		if (!j->keep[i] && unlink(d->abs) < 0 && errno != ENOENT) {
			snprintf(j->error, sizeof(j->error), "cannot remove disk %s: %s", d->path,
				 strerror(errno));
			return;
		}
		/* Directories the disk leaves empty go too, up to the pool's root. */
		while ((slash = strrchr(parent, '/')) && slash > parent) {
			*slash = '\0';
			if (strlen(parent) <= strlen(d->root) || rmdir(parent) < 0)
				break;
		}
	}
	if (j->dir[0]) {
		ret = tree_remove(j->dir);
		if (ret < 0)
			snprintf(j->error, sizeof(j->error), "cannot remove %s: %s", j->dir,
				 strerror(-ret));
	}
}

/*
 * Remove the n disk files, except those keep[i] (keep NULL: none) names, and the
 * directories inside their pool that are left empty; then the directory dir with
 * everything in it (dir NULL: none). Missing files are fine.
 */
void disk_remove(struct agent *a, const char *dir, const struct vm_disk *disks, size_t n,
		 const bool *keep, disk_done_cb cb, void *data)
{
	struct fs_job *j = job_new(a, remove_work, cb, data);

	snprintf(j->dir, sizeof(j->dir), "%s", dir ? dir : "");
	job_disks_set(j, disks, n);
	for (size_t i = 0; keep && i < j->n; i++)
		j->keep[i] = keep[i];
	job_queue(j);
}

/* Virtual size from a qcow2 header (big-endian at byte 24), else the file's size. */
static void size_work(struct fs_job *j)
{
	for (size_t i = 0; i < j->n; i++) {
		_cleanup_close_ int fd = open(j->disks[i].abs, O_RDONLY | O_CLOEXEC);
		unsigned char h[32];
		struct stat st;

		j->vsize[i] = j->alloc[i] = -1;
		if (fd < 0 || fstat(fd, &st) < 0)
			continue;
		j->alloc[i] = (int64_t)st.st_blocks * 512;
		j->vsize[i] = st.st_size;
		if (pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) && h[0] == 'Q' &&
		    h[1] == 'F' && h[2] == 'I' && h[3] == 0xfb) {
			uint64_t v = 0;

			for (int b = 24; b < 32; b++)
				v = v << 8 | h[b];
			j->vsize[i] = (int64_t)v;
		}
	}
}

/*
 * Measure the n disks off the loop: cb gets arrays of virtual sizes and allocated
 * bytes (-1 where a disk could not be read), borrowed for the call.
 */
void disk_sizes(struct agent *a, const struct vm_disk *disks, size_t n, disk_sizes_cb cb,
		void *data)
{
	struct fs_job *j = job_new(a, size_work, NULL, data);

	j->sizes_cb = cb;
	job_disks_set(j, disks, n);
	job_queue(j);
}

/* ---- qemu-img ------------------------------------------------------------------------- */

struct img_step {
	struct agent *agent;
	disk_done_cb cb;
	disk_info_cb info_cb;
	void *data;
	struct vm_disk disk;
	char image[PATH_MAX];
	int64_t size;
	bool full_clone;
	int64_t image_size;
};

static void img_run(struct img_step *s, struct argv *av,
		    void (*done)(struct disk_cmd *, const char *));

static void step_finish(struct img_step *s, const char *error)
{
	if (s->cb)
		s->cb(s->agent, error, s->data);
	free(s);
}

static void simple_done(struct disk_cmd *c, const char *error)
{
	step_finish(c->data, error);
}

/* Start argv for step s; if it cannot even start, the step fails on a later turn. */
static void img_run(struct img_step *s, struct argv *av,
		    void (*done)(struct disk_cmd *, const char *))
{
	struct kerr err;

	if (cmd_run(s->agent, av->v, done, s, &err) < 0) {
		disk_fail_later(s->agent, s->cb, s->data, "%s", err.msg);
		free(s);
	}
	argv_free(av);
}

static void info_done(struct disk_cmd *c, const char *error)
{
	struct img_step *s = c->data;
	struct json_object *info = NULL;

	if (error == NULL &&
	    json_body_parse(c->outbuf ? c->outbuf : "", c->outlen, &info, NULL) < 0)
		error = "qemu-img info printed something that is not JSON";
	s->info_cb(s->agent, error, info, s->data);
	json_object_put(info);
	free(s);
}

/*
 * qemu-img info --output=json of abs: cb gets the parsed object (borrowed), or an
 * error. -U reads an image a running QEMU holds, for sizes and snapshot lists.
 */
void disk_info(struct agent *a, const char *abs, disk_info_cb cb, void *data)
{
	struct img_step *s = xcalloc(1, sizeof(*s));
	struct argv av = {0};
	struct kerr err;

	s->agent = a;
	s->info_cb = cb;
	s->data = data;
	argv_add(&av, "qemu-img");
	argv_add(&av, "info");
	argv_add(&av, "--output=json");
	argv_add(&av, "-U");
	/* Disks and images are always qcow2: never let qemu-img guess from the bytes. */
	argv_add(&av, "-f");
	argv_add(&av, "qcow2");
	argv_add(&av, "%s", abs);
	if (cmd_run(a, av.v, info_done, s, &err) < 0) {
		struct fs_job *j = job_new(a, NULL, NULL, data);

		/* Deliver the failure on a later turn like every other answer. */
		j->info_cb = cb;
		snprintf(j->error, sizeof(j->error), "%s", err.msg);
		job_queue(j);
		free(s);
	}
	argv_free(&av);
}

static void resize_after_convert(struct disk_cmd *c, const char *error)
{
	struct img_step *s = c->data;
	struct argv av = {0};

	if (error || s->size <= s->image_size) {
		step_finish(s, error);
		return;
	}
	argv_add(&av, "qemu-img");
	argv_add(&av, "resize");
	argv_add(&av, "-f");
	argv_add(&av, "qcow2");
	argv_add(&av, "%s", s->disk.abs);
	argv_add(&av, "%lld", (long long)s->size);
	img_run(s, &av, simple_done);
}

static void image_info_cb(struct agent *a, const char *error, struct json_object *info, void *data)
{
	struct img_step *s = data;
	const char *format;
	struct argv av = {0};

	if (error) {
		disk_fail_later(a, s->cb, s->data, "image: %s", error);
		free(s);
		return;
	}
	format = json_get_str(info, "format", "");
	s->image_size = json_get_int(info, "virtual-size", 0);
	if (!format[0] || strchr(format, ',')) {
		disk_fail_later(a, s->cb, s->data, "qemu-img does not know the format of %s",
				s->image);
		free(s);
		return;
	}
	argv_add(&av, "qemu-img");
	if (s->full_clone) {
		argv_add(&av, "convert");
		argv_add(&av, "-f");
		argv_add(&av, "%s", format);
		argv_add(&av, "-O");
		argv_add(&av, "qcow2");
		argv_add(&av, "%s", s->image);
		argv_add(&av, "%s", s->disk.abs);
		img_run(s, &av, resize_after_convert);
		return;
	}
	/* Linked clone: a thin qcow2 over the image, never smaller than the image. */
	argv_add(&av, "create");
	argv_add(&av, "-q");
	argv_add(&av, "-f");
	argv_add(&av, "qcow2");
	argv_add(&av, "-F");
	argv_add(&av, "%s", format);
	argv_add(&av, "-b");
	argv_add(&av, "%s", s->image);
	argv_add(&av, "%s", s->disk.abs);
	if (s->size > s->image_size)
		argv_add(&av, "%lld", (long long)s->size);
	img_run(s, &av, simple_done);
}

/*
 * Make disk->abs as a thin qcow2 of size bytes: blank, or from image (absolute path,
 * or NULL) as a linked clone (backing file) or a full copy. A disk from an image is
 * at least as large as the image. disk_prepare() has checked the paths.
 */
void disk_create(struct agent *a, const struct vm_disk *disk, const char *image, int64_t size,
		 bool full_clone, disk_done_cb cb, void *data)
{
	struct img_step *s = xcalloc(1, sizeof(*s));
	struct argv av = {0};

	s->agent = a;
	s->cb = cb;
	s->data = data;
	s->disk = *disk;
	s->size = size;
	s->full_clone = full_clone;
	if (image && image[0]) {
		snprintf(s->image, sizeof(s->image), "%s", image);
		disk_info(a, s->image, image_info_cb, s);
		return;
	}
	argv_add(&av, "qemu-img");
	argv_add(&av, "create");
	argv_add(&av, "-q");
	argv_add(&av, "-f");
	argv_add(&av, "qcow2");
	argv_add(&av, "%s", disk->abs);
	argv_add(&av, "%lld", (long long)size);
	img_run(s, &av, simple_done);
}

/* Grow the qcow2 at abs to size bytes; qemu-img itself refuses to shrink. */
void disk_resize(struct agent *a, const char *abs, int64_t size, disk_done_cb cb, void *data)
{
	struct img_step *s = xcalloc(1, sizeof(*s));
	struct argv av = {0};

	s->agent = a;
	s->cb = cb;
	s->data = data;
	argv_add(&av, "qemu-img");
	argv_add(&av, "resize");
	argv_add(&av, "-q");
	argv_add(&av, "-f");
	argv_add(&av, "qcow2");
	argv_add(&av, "%s", abs);
	argv_add(&av, "%lld", (long long)size);
	img_run(s, &av, simple_done);
}

/*
 * qemu-img snapshot on a disk no QEMU holds: action 'c' create, 'a' apply (revert),
 * 'd' delete the internal snapshot named snapshot.
 */
void disk_snapshot(struct agent *a, const char *abs, char action, const char *snapshot,
		   disk_done_cb cb, void *data)
{
	struct img_step *s = xcalloc(1, sizeof(*s));
	struct argv av = {0};

	s->agent = a;
	s->cb = cb;
	s->data = data;
	argv_add(&av, "qemu-img");
	argv_add(&av, "snapshot");
	argv_add(&av, "-q");
	argv_add(&av, "-%c", action);
	argv_add(&av, "%s", snapshot);
	argv_add(&av, "%s", abs);
	img_run(s, &av, simple_done);
}

/*
 * qemu-img bitmap --remove of the persistent dirty bitmap name from the qcow2 at abs,
 * a disk no QEMU holds (a snapshot revert clears Kumo's backup bitmaps so).
 */
void disk_bitmap_remove(struct agent *a, const char *abs, const char *name, disk_done_cb cb,
			void *data)
{
	struct img_step *s = xcalloc(1, sizeof(*s));
	struct argv av = {0};

	s->agent = a;
	s->cb = cb;
	s->data = data;
	argv_add(&av, "qemu-img");
	argv_add(&av, "bitmap");
	argv_add(&av, "--remove");
	argv_add(&av, "-f");
	argv_add(&av, "qcow2");
	argv_add(&av, "%s", abs);
	argv_add(&av, "%s", name);
	img_run(s, &av, simple_done);
}

/* ---- cloud-init seed ------------------------------------------------------------------ */

/*
 * The NoCloud seed: a small FAT file system labelled CIDATA holding user-data and
 * meta-data, built without root or loop devices by mkfs.vfat -C and mcopy (packages
 * dosfstools and mtools). Steps: write the two files (thread pool) -> mkfs.vfat ->
 * mcopy -> remove the two files (they may hold secrets; the seed is what stays).
 */
struct seed_step {
	struct agent *agent;
	disk_done_cb cb;
	void *data;
	char dir[PATH_MAX];
	char error[DISK_ERROR_MAX];
	size_t user_data_len;
};

static void seed_finish(struct agent *a, const char *error, void *data)
{
	struct seed_step *s = data;

	s->cb(a, s->error[0] ? s->error : error, s->data);
	free(s);
}

static void seed_files_remove_work(struct fs_job *j)
{
	_cleanup_free_ char *ud = xasprintf("%s/user-data", j->dir);
	_cleanup_free_ char *md = xasprintf("%s/meta-data", j->dir);

	unlink(ud);
	unlink(md);
}

static void seed_cleanup(struct seed_step *s, const char *error)
{
	struct fs_job *j = job_new(s->agent, seed_files_remove_work, seed_finish, s);

	if (error)
		snprintf(s->error, sizeof(s->error), "cloud-init seed: %s", error);
	snprintf(j->dir, sizeof(j->dir), "%s", s->dir);
	job_queue(j);
}

static void seed_copy_done(struct disk_cmd *c, const char *error)
{
	seed_cleanup(c->data, error);
}

static void seed_mkfs_done(struct disk_cmd *c, const char *error)
{
	struct seed_step *s = c->data;
	struct argv av = {0};
	struct kerr err;

	if (error) {
		seed_cleanup(s, error);
		return;
	}
	argv_add(&av, "mcopy");
	argv_add(&av, "-o");
	argv_add(&av, "-i");
	argv_add(&av, "%s/seed.img", s->dir);
	argv_add(&av, "%s/user-data", s->dir);
	argv_add(&av, "%s/meta-data", s->dir);
	argv_add(&av, "::");
	if (cmd_run(s->agent, av.v, seed_copy_done, s, &err) < 0)
		seed_cleanup(s, err.msg);
	argv_free(&av);
}

static void seed_files_work(struct fs_job *j)
{
	_cleanup_free_ char *ud = xasprintf("%s/user-data", j->dir);
	_cleanup_free_ char *md = xasprintf("%s/meta-data", j->dir);
	_cleanup_free_ char *img = xasprintf("%s/seed.img", j->dir);
	int ret;

	/* mkfs.vfat -C refuses to overwrite; an old seed goes first. */
	if (unlink(img) < 0 && errno != ENOENT) {
		snprintf(j->error, sizeof(j->error), "cannot replace %s: %s", img, strerror(errno));
		return;
	}
	ret = file_write_atomic(ud, j->text, strlen(j->text), 0600);
	if (ret == 0)
		ret = file_write_atomic(md, j->text2, strlen(j->text2), 0600);
	if (ret < 0)
		snprintf(j->error, sizeof(j->error), "cannot write the cloud-init files in %s: %s",
			 j->dir, strerror(-ret));
}

static void seed_files_cb(struct agent *a, const char *error, void *data)
{
	struct seed_step *s = data;
	struct argv av = {0};
	struct kerr err;
	/* Room for the files and FAT's overhead; mkfs.vfat counts 1 KiB blocks. */
	long long kb = SEED_MIN_KB + (long long)(s->user_data_len / 1024) * 2;

	if (error) {
		seed_cleanup(s, error);
		return;
	}
	argv_add(&av, "mkfs.vfat");
	argv_add(&av, "-C");
	argv_add(&av, "-n");
	argv_add(&av, "CIDATA");
	argv_add(&av, "%s/seed.img", s->dir);
	argv_add(&av, "%lld", kb);
	if (cmd_run(a, av.v, seed_mkfs_done, s, &err) < 0)
		seed_cleanup(s, err.msg);
	argv_free(&av);
}

/*
 * Build dir/seed.img for the instance name with user_data; meta-data gives the
 * instance id and host name (both the instance's name).
 */
void disk_seed_build(struct agent *a, const char *dir, const char *name, const char *user_data,
		     disk_done_cb cb, void *data)
{
	struct seed_step *s = xcalloc(1, sizeof(*s));
	struct fs_job *j;

	s->agent = a;
	s->cb = cb;
	s->data = data;
	s->user_data_len = strlen(user_data);
	snprintf(s->dir, sizeof(s->dir), "%s", dir);
	j = job_new(a, seed_files_work, seed_files_cb, s);
	snprintf(j->dir, sizeof(j->dir), "%s", dir);
	j->text = xstrdup(user_data);
	j->text2 = xasprintf("instance-id: %s\nlocal-hostname: %s\n", name, name);
	job_queue(j);
}
