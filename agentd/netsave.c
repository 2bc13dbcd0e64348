/*
 * netsave.c - the network desired document written to disk (desired.json) on a thread
 * of its own (a work lane, common/work.h): a write and its two fsyncs took seconds on a
 * loaded host, and on the loop they held back the heartbeats until the controller
 * judged the host offline. Not the shared pool: a backup's disk read holds a pool
 * thread for minutes, and the document is applied only once it is on disk.
 *
 * One write at a time, so an older document can never land after a newer one. A
 * document put while a write runs waits for it; a newer one put meanwhile replaces the
 * waiting one, which is never written (its generation is reported with the newer
 * one's). Every document put gets a generation, increasing; saved() hears, on the
 * loop, each generation written (or failed), in order, so a caller waiting for
 * generation g is answered by the first saved() with a generation >= g.
 */
#include "agentd.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#include "util.h"

/* One write on the lane; run() touches only the text and the path. */
struct netsave_job {
	struct work w; /* first: common/work.h's job */
	struct netsave *save;
	uint64_t gen;
	struct json_object *doc; /* for saved(): the loop's, never read by run() */
	char *text;
	char path[PATH_MAX];
};

static int write_run(struct work *w)
{
	struct netsave_job *j = (struct netsave_job *)w;
	int ret = j->save->write(j->path, j->text, strlen(j->text));

	if (ret < 0)
		return err_set(&w->err, -ret, "cannot write %s", j->path);
	return 0;
}

static void write_start(struct netsave *s, struct json_object *doc, uint64_t gen);

static void write_done(struct work *w)
{
	struct netsave_job *j = (struct netsave_job *)w;
	struct netsave *s = j->save;
	struct json_object *next = s->next_doc;

	s->writing = false;
	json_object_put(s->writing_doc);
	s->writing_doc = NULL;
	/* The waiting document goes before saved() runs: saved() may stop the owner. */
	if (next && !s->stopping) {
		s->next_doc = NULL;
		write_start(s, next, s->next_gen);
		json_object_put(next);
	}
	s->saved(s, j->gen, j->doc, w->ret, &w->err);
	json_object_put(j->doc);
	free(j->text);
	free(j);
}

static void write_start(struct netsave *s, struct json_object *doc, uint64_t gen)
{
	struct netsave_job *j = xcalloc(1, sizeof(*j));

	j->w.run = write_run;
	j->w.done = write_done;
	j->save = s;
	j->gen = gen;
	j->doc = json_object_get(doc);
	j->text = xstrdup(json_text(doc)); /* json-c is not thread-safe: text made here */
	snprintf(j->path, sizeof(j->path), "%s", s->path);
	s->writing = true;
	s->writing_doc = json_object_get(doc);
	work_lane_queue(s->lane, &j->w);
}

/*
 * Keep documents at path (mode 0600, written with write: file_write_atomic, or a
 * test's) from loop; saved(s, gen, doc, ret, err) hears each write's outcome.
 */
void netsave_init(struct netsave *s, uv_loop_t *loop, const char *path, netsave_saved_fn saved,
		  void *owner)
{
	memset(s, 0, sizeof(*s));
	s->loop = loop;
	snprintf(s->path, sizeof(s->path), "%s", path);
	s->saved = saved;
	s->owner = owner;
	s->write = netsave_write_file;
	s->lane = work_lane_new(loop);
}

/* Free what s holds; no write runs (netsave_busy() is false). */
void netsave_close(struct netsave *s)
{
	assert(!s->writing);
	work_lane_close(s->lane);
	s->lane = NULL;
}

/* file_write_atomic() with the document's mode: it names every instance's addresses. */
int netsave_write_file(const char *path, const char *text, size_t len)
{
	return file_write_atomic(path, text, len, 0600);
}

/*
 * Write doc (checked; a reference is taken) after the write running now, instead of
 * any document still waiting. Returns its generation.
 */
uint64_t netsave_put(struct netsave *s, struct json_object *doc)
{
	uint64_t gen = ++s->gen;

	if (!s->writing) {
		write_start(s, doc, gen);
		return gen;
	}
	json_object_put(s->next_doc);
	s->next_doc = json_object_get(doc);
	s->next_gen = gen;
	return gen;
}

/*
 * The newest document put and not written yet (waiting, or being written), and its
 * generation in *gen; NULL when every document put was written (or failed).
 */
struct json_object *netsave_newest(const struct netsave *s, uint64_t *gen)
{
	if (s->next_doc) {
		*gen = s->next_gen;
		return s->next_doc;
	}
	*gen = s->gen;
	return s->writing_doc;
}

/* Is a write on the lane? Its saved() is still to come. */
bool netsave_busy(const struct netsave *s)
{
	return s->writing;
}

/*
 * Stop: the waiting document is dropped, unwritten and unreported; a write running
 * finishes and is reported (netsave_busy() until then).
 */
void netsave_stop(struct netsave *s)
{
	s->stopping = true;
	json_object_put(s->next_doc);
	s->next_doc = NULL;
}
