/*
 * proc.c - run a helper program (qemu-img) from the loop and collect its output.
 *
 * The callback runs once the process has exited and its stdout is drained, with the
 * exit status and what it printed (stderr is collected too, for error messages).
 */
#include <string.h>

#include "controllerd.h"
#include "log.h"
#include "util.h"

#define PROC_OUTPUT_MAX (1 << 20)

struct proc {
	uv_process_t process;
	uv_pipe_t out, err;
	char *buf[2];
	size_t len[2];
	int open_handles;
	int64_t status;
	proc_done_fn done;
	void *cls;
};

static void proc_finish(struct proc *p)
{
	if (--p->open_handles > 0)
		return;
	p->done(p->status, p->buf[0] ? p->buf[0] : "", p->buf[1] ? p->buf[1] : "", p->cls);
	free(p->buf[0]);
	free(p->buf[1]);
	free(p);
}

static void close_cb(uv_handle_t *h)
{
	proc_finish(h->data);
}

static void unused_close_cb(uv_handle_t *h)
{
	struct proc *p = h->data;

	if (--p->open_handles == 0)
		free(p);
}

static void exit_cb(uv_process_t *process, int64_t status, int signal)
{
	struct proc *p = process->data;

	p->status = signal ? -signal : status;
	uv_close((uv_handle_t *)process, close_cb);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	buf->base = xmalloc(suggested);
	buf->len = suggested;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct proc *p = s->data;
	int i = s == (uv_stream_t *)&p->out ? 0 : 1;

	if (n > 0 && p->len[i] + (size_t)n <= PROC_OUTPUT_MAX) {
		p->buf[i] = xrealloc(p->buf[i], p->len[i] + (size_t)n + 1);
		memcpy(p->buf[i] + p->len[i], buf->base, (size_t)n);
		p->len[i] += (size_t)n;
		p->buf[i][p->len[i]] = '\0';
	}
	free(buf->base);
	if (n < 0)
		uv_close((uv_handle_t *)s, close_cb);
}

/*
 * Spawn argv[0] (looked up in PATH) with argv; done(status, stdout, stderr, cls) runs
 * when it has finished. status is the exit code, or minus the signal that killed it.
 * Returns 0, or -1 with err when it could not be started (done is then not called).
 */
int proc_run(char *const argv[], proc_done_fn done, void *cls, struct kerr *err)
{
	struct proc *p = xcalloc(1, sizeof(*p));
	uv_stdio_container_t stdio[3];
	uv_process_options_t opts = {0};
	int rc;

	p->done = done;
	p->cls = cls;
	uv_pipe_init(ctl.loop, &p->out, 0);
	uv_pipe_init(ctl.loop, &p->err, 0);
	p->out.data = p->err.data = p->process.data = p;
	stdio[0].flags = UV_IGNORE;
	stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[1].data.stream = (uv_stream_t *)&p->out;
	stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[2].data.stream = (uv_stream_t *)&p->err;
	opts.file = argv[0];
	opts.args = (char **)argv;
	opts.exit_cb = exit_cb;
	opts.stdio = stdio;
	opts.stdio_count = 3;
	rc = uv_spawn(ctl.loop, &p->process, &opts);
	if (rc < 0) {
		/* uv_spawn registered the process handle even though it failed: it must be
		 * closed like the unused pipes, and p goes when all three have closed. */
		p->open_handles = 3;
		uv_close((uv_handle_t *)&p->process, unused_close_cb);
		uv_close((uv_handle_t *)&p->out, unused_close_cb);
		uv_close((uv_handle_t *)&p->err, unused_close_cb);
		return err_set(err, 0, "cannot run %s: %s", argv[0], uv_strerror(rc));
	}
	p->open_handles = 3;
	uv_read_start((uv_stream_t *)&p->out, alloc_cb, read_cb);
	uv_read_start((uv_stream_t *)&p->err, alloc_cb, read_cb);
	return 0;
}
