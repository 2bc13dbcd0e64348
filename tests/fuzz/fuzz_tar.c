/*
 * fuzz_tar.c - the agent's tar reader (agentd/layers.c): a layer file, gzip'd or not,
 * unpacked into an empty directory as layers_unpack does, then removed.
 *
 * Input: the layer file's bytes. Beside the directory lies a sentinel file; an input
 * that changes it or adds anything beside the directory escaped the layer. A layer
 * that unpacks has the file's SHA-256 as its blob digest, and when it is a plain tar
 * as its diff_id too: every byte the image's digests vouch for was read.
 *
 * As root the fuzzer works in its own mount namespace on a small tmpfs, so a gzip
 * bomb fills that and not the disk; device nodes, owners and xattrs are made as the
 * agent makes them (CAP_MKNOD, CAP_CHOWN, CAP_SYS_ADMIN).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agentd.h"
#include "fuzz.h"
#include "token.h"
#include "tree.h"
#include "util.h"

#define SENTINEL "kumo-fuzz-sentinel"

static const char *scratch;
static char layer_path[64], dest[PATH_MAX], sentinel[PATH_MAX];
static int layer_fd = -1;

static void scratch_unmount(void)
{
	umount2(scratch, MNT_DETACH);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int fd;

	scratch = fuzz_scratch_dir("tar");
	if (geteuid() == 0 && unshare(CLONE_NEWNS) == 0 &&
	    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0 &&
	    mount("kumo-fuzz", scratch, "tmpfs", MS_NOSUID, "size=256m,mode=0700") == 0)
		atexit(scratch_unmount);
	else
		fprintf(stderr, "fuzz_tar: no private tmpfs (%s); unpacking in %s\n",
			strerror(errno), scratch);
	snprintf(dest, sizeof(dest), "%s/layer", scratch);
	snprintf(sentinel, sizeof(sentinel), "%s/" SENTINEL, scratch);
	fd = open(sentinel, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, "sentinel", 8) != 8) {
		perror(sentinel);
		abort();
	}
	close(fd);
	layer_fd = memfd_create("layer", MFD_CLOEXEC);
	if (layer_fd < 0) {
		perror("memfd_create");
		abort();
	}
	snprintf(layer_path, sizeof(layer_path), "/proc/self/fd/%d", layer_fd);
	return 0;
}

/* Nothing but the sentinel and the layer's directory beside each other, unchanged. */
static void escape_check(const uint8_t *data, size_t size)
{
	struct stat st;
	struct dirent *d;
	DIR *dir = opendir(scratch);
	int others = 0;

	if (lstat(sentinel, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != 8 ||
	    (st.st_mode & 07777) != 0600) {
		fprintf(stderr, "fuzz_tar: the layer changed the sentinel beside it\n");
		abort();
	}
	while (dir && (d = readdir(dir)))
		if (strcmp(d->d_name, ".") && strcmp(d->d_name, "..") &&
		    strcmp(d->d_name, SENTINEL) && strcmp(d->d_name, "layer"))
			others++;
	if (dir)
		closedir(dir);
	if (others) {
		fprintf(stderr, "fuzz_tar: the layer wrote beside its directory\n");
		abort();
	}
}

static void digests_check(const uint8_t *data, size_t size, const char *blob_digest,
			  const char *diff_id)
{
	unsigned char md[32];
	char want[72] = "sha256:";

	sha256(data, size, md);
	hex_encode(md, sizeof(md), want + 7);
	if (strcmp(blob_digest, want) ||
	    (!(size >= 2 && data[0] == 0x1f && data[1] == 0x8b) && strcmp(diff_id, want))) {
		fprintf(stderr, "fuzz_tar: the layer hashed to %s / %s, its bytes to %s\n",
			blob_digest, diff_id, want);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char blob_digest[72], diff_id[72];
	struct kerr err;
	int ret;

	if (ftruncate(layer_fd, 0) < 0 || pwrite(layer_fd, data, size, 0) != (ssize_t)size ||
	    mkdir(dest, 0755) < 0) {
		perror("fuzz_tar: setting up");
		abort();
	}
	memset(&err, 0, sizeof(err));
	ret = layers_tar_unpack(layer_path, dest, "sha256:fuzz", blob_digest, diff_id, &err);
	FUZZ_REFUSAL_EXPLAINED(ret, err);
	escape_check(data, size);
	if (ret == 0)
		digests_check(data, size, blob_digest, diff_id);
	if (tree_remove(dest) < 0) {
		perror("fuzz_tar: cannot remove the unpacked layer");
		abort();
	}
	return 0;
}
