/*
 * proc.c - run a helper program (qemu-img, skopeo) from the loop and collect its
 * output, over common/child.c's runner.
 *
 * The callback runs once the process has exited and its stdout is drained, with the
 * exit status and what it printed (stderr's tail is collected too, for messages).
 */
#include "child.h"
#include "controllerd.h"
#include "util.h"

#define PROC_OUTPUT_MAX (1 << 20)
#define PROC_ERR_MAX	4096

struct proc {
	proc_done_fn done;
	void *cls;
};

static void proc_done_cb(const struct child_result *r, void *data)
{
	struct proc *p = data;

	p->done(r->signal ? -r->signal : r->status, r->out, r->err, p->cls);
	free(p);
}

/*
 * Spawn argv[0] (looked up in PATH) with argv; done(status, stdout, stderr, cls) runs
 * when it has finished. status is the exit code, or minus the signal that killed it.
 * Returns 0, or -1 with err when it could not be started (done is then not called).
 */
int proc_run(char *const argv[], proc_done_fn done, void *cls, struct kerr *err)
{
	struct proc *p = xcalloc(1, sizeof(*p));
	struct child_opts opts = {
		.argv = argv,
		.out_max = PROC_OUTPUT_MAX,
		.err_max = PROC_ERR_MAX,
		.err_mode = CHILD_ERR_CAPTURE,
	};

	p->done = done;
	p->cls = cls;
	if (child_run(ctl.loop, &opts, proc_done_cb, p, err) == NULL) {
		free(p);
		return -1;
	}
	return 0;
}
