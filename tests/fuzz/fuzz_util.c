/*
 * fuzz_util.c - the scratch directory of fuzz.h.
 */
#include "fuzz.h"

#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

static char *scratch;

static void scratch_remove(void)
{
	char *argv[] = {"rm", "-rf", "--one-file-system", scratch, NULL};
	pid_t pid;

	if (scratch == NULL)
		return;
	/* rm, not our own tree walk: the tree under test may be what is broken. */
	pid = fork();
	if (pid == 0) {
		execvp(argv[0], argv);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

const char *fuzz_scratch_dir(const char *what)
{
	const char *tmp = getenv("TMPDIR");

	scratch = xasprintf("%s/kumo-fuzz-%s-XXXXXX", tmp && tmp[0] ? tmp : "/tmp", what);
	if (mkdtemp(scratch) == NULL) {
		perror(scratch);
		abort();
	}
	atexit(scratch_remove);
	return scratch;
}
