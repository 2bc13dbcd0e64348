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
 */
#ifndef KUMO_TREE_H
#define KUMO_TREE_H

/*
 * rm -rf path. A missing path is success. Returns 0 or the first -errno met (the
 * rest of the tree is still removed where possible); -EXDEV when a mount point was
 * found below path (nothing on the other file system is touched).
 */
int tree_remove(const char *path);

/* The same for name relative to the directory descriptor parent (or AT_FDCWD). */
int tree_remove_at(int parent, const char *name);

#endif
