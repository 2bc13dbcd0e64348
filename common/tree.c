/*
 * tree.c - safe recursive removal (tree.h says what "safe" means here).
 */
#include "tree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Remove name below parent, staying on the file system dev. */
static int remove_on(int parent, const char *name, dev_t dev)
{
	struct stat st;
	struct dirent *d;
	DIR *dir;
	int fd, ret = 0;

	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(parent, name, 0) < 0 && errno != ENOENT ? -errno : 0;
	if (st.st_dev != dev)
		return -EXDEV; /* a mount point: never removed through */
	/* O_NOFOLLOW: if name became a symlink since fstatat, this fails (ELOOP). */
	fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	dir = fdopendir(fd);
	if (dir == NULL) {
		ret = -errno;
		close(fd);
		return ret;
	}
	while ((d = readdir(dir))) {
		int r;

		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		r = remove_on(dirfd(dir), d->d_name, dev);
		if (r < 0 && ret == 0)
			ret = r;
	}
	closedir(dir);
	if (ret == 0 && unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		ret = -errno;
	return ret;
}

int tree_remove_at(int parent, const char *name)
{
	struct stat st;

	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	return remove_on(parent, name, st.st_dev);
}

int tree_remove(const char *path)
{
	return tree_remove_at(AT_FDCWD, path);
}
