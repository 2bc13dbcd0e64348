/*
 * tree.h - removing a directory tree Kumo made, safely: the one `rm -rf` of both
 * daemons.
 *
 * A tree under a pool or a container's directory may hold what a tenant wrote (a
 * symlink to /etc, a path into another host's files) or a file system still mounted
 * (a container's overlay rootfs). Removal therefore never follows a symlink (it
 * removes the link), never crosses into another file system (a mount point is left in
 * place and reported as -EXDEV), and opens every directory relative to its parent's
 * descriptor, so a directory renamed or replaced by a symlink mid-way is not followed.
 * A tree's depth may be a tenant's choice: removal uses neither the C stack nor a
 * descriptor per level (tree.c says how), so any depth is removed in bounded resources.
 */
#ifndef KUMO_TREE_H
#define KUMO_TREE_H

/*
 * rm -rf path. A missing path is success. Returns 0, or the first -errno met, where
 * removal stops (what was removed before stays removed): -EXDEV when a mount point was
 * found below path (nothing on the other file system is touched), -ESTALE when a
 * directory was moved or replaced while it was being removed.
 */
int tree_remove(const char *path);

/* The same for name relative to the directory descriptor parent (or AT_FDCWD). */
int tree_remove_at(int parent, const char *name);

#endif
