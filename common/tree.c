/*
 * tree.c - safe recursive removal (tree.h says what "safe" means here).
 *
 * The tree may come from a tenant (a container's upper directory), so its depth is
 * the tenant's choice: removal must not recurse on the C stack nor hold a descriptor
 * per level. It walks down holding one directory open, keeps only each level's name
 * and identity (dev, inode) on a heap stack, and climbs back through ".." checking
 * that it lands on the directory it came from. Anything moved meanwhile stops it.
 */
#include "tree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

struct level {
	char *name; /* in its parent */
	dev_t dev;
	ino_t ino;
};

static int open_dir_at(int parent, const char *name, const struct stat *want)
{
	struct stat st;
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	/* The directory opened is the one looked at, not something swapped in since. */
	if (fstat(fd, &st) < 0 || st.st_dev != want->st_dev || st.st_ino != want->st_ino) {
		close(fd);
		return -ESTALE;
	}
	return fd;
}

/*
 * Empty the directory dir of everything but subdirectories; *sub gets the name of one
 * subdirectory (malloc'd) and *sub_st its stat, or NULL when none is left. Returns 0,
 * -EXDEV at a mount point, or -errno.
 */
static int level_clear(int dir, dev_t dev, char **sub, struct stat *sub_st)
{
	int fd = fcntl(dir, F_DUPFD_CLOEXEC, 0), ret = 0;
	struct dirent *e;
	DIR *d;

	*sub = NULL;
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (d == NULL) {
		ret = -errno;
		close(fd);
		return ret;
	}
	rewinddir(d);
	while ((e = readdir(d))) {
		struct stat st;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (fstatat(dir, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT)
				continue;
			ret = -errno;
			break;
		}
		if (S_ISDIR(st.st_mode)) {
			if (st.st_dev != dev) {
				ret = -EXDEV; /* a mount point: never removed through */
				break;
			}
			*sub = xstrdup(e->d_name);
			*sub_st = st;
			break;
		}
		if (unlinkat(dir, e->d_name, 0) < 0 && errno != ENOENT) {
			ret = -errno;
			break;
		}
	}
	closedir(d);
	return ret;
}

int tree_remove_at(int parent, const char *name)
{
	struct level *stack = NULL;
	size_t depth = 0, cap = 0;
	struct stat st, sub_st;
	char *sub;
	int cur, ret = 0;

	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(parent, name, 0) < 0 && errno != ENOENT ? -errno : 0;
	cur = open_dir_at(parent, name, &st);
	if (cur < 0)
		return cur;
	for (;;) {
		ret = level_clear(cur, st.st_dev, &sub, &sub_st);
		if (ret < 0)
			break;
		if (sub) { /* down */
			int child = open_dir_at(cur, sub, &sub_st);

			if (child < 0) {
				free(sub);
				ret = child;
				break;
			}
			if (depth == cap) {
				cap = cap ? cap * 2 : 64;
				stack = xrealloc(stack, cap * sizeof(*stack));
			}
			stack[depth++] = (struct level){sub, sub_st.st_dev, sub_st.st_ino};
			close(cur);
			cur = child;
			continue;
		}
		if (depth == 0) /* the top is empty */
			break;
		/* up: the parent through "..", and it must be the one we came down from */
		{
			struct level *l = &stack[--depth];
			struct stat want = {.st_dev = depth ? stack[depth - 1].dev : st.st_dev,
					    .st_ino = depth ? stack[depth - 1].ino : st.st_ino};
			int up = open_dir_at(cur, "..", &want);

			if (up < 0) {
				ret = up;
				free(l->name);
				break;
			}
			close(cur);
			cur = up;
			if (unlinkat(cur, l->name, AT_REMOVEDIR) < 0 && errno != ENOENT)
				ret = -errno;
			free(l->name);
			if (ret < 0)
				break;
		}
	}
	close(cur);
	while (depth)
		free(stack[--depth].name);
	free(stack);
	if (ret == 0 && unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		ret = -errno;
	return ret;
}

int tree_remove(const char *path)
{
	return tree_remove_at(AT_FDCWD, path);
}
