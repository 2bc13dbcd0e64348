/*
 * opcache.c - the operations this agent was sent lately, so a command the controller
 * resends (its ack was lost, or it restarted) is acked again and its result re-sent,
 * but the work is never done twice. A ring of the last AGENT_OPCACHE_SIZE ops.
 *
 * The op ids are also kept in {state_dir}/ops, on disk before a command is acked
 * (link.c holds the ack until opcache_on_disk()), so that a command the previous run
 * of the agent took (and may have half done when it died) is not run again by the
 * next one: that one answers it as failed instead. An idempotent command's id
 * (VF_IDEMPOTENT, common/verbs.h) is kept in memory only (opcache_add_unkept()): on
 * disk it would make the next run fail a resend that it may safely run again.
 *
 * The file is a log: each write appends the lines of the changes since the last one
 * ("ID" taken, "~ID" dropped) with one fdatasync, where a rewrite (a temporary file,
 * its fsync, a rename, the directory's fsync) cost two journal commits before every
 * ack (2-4 ms of an incremental backup's ~40). It is rewritten whole, compacted, by the
 * first write of a run, after a failed write, and once it holds OPCACHE_LOG_MAX lines.
 * The loader applies the lines in order and keeps the newest AGENT_OPCACHE_SIZE ids; a
 * last line without its newline (a write a crash cut) is ignored: its command was
 * never acked. A failed write is followed by a whole one: the next change's, or one
 * more as the agent stops; two failures in a row with a crash after them can still
 * leave a dropped id's "~" line out (the next run then refuses that id's resend, and
 * may forget the oldest acked id). An agent from before the log reads the "~" lines
 * as junk (skipped): it takes a dropped id as taken (refuses its resend) and keeps
 * the last AGENT_OPCACHE_SIZE lines, repeated ones too, so after a downgrade it may
 * forget the oldest acked ids.
 *
 * The file is written on a work lane (a thread of its own, common/work.h), never on
 * the loop: its write and two fsyncs took hundreds of ms on a loaded host, and every
 * command, heartbeat and QMP event waited behind them. Not on libuv's shared pool
 * either: a backup's disk reads hold its threads for minutes, and every command to
 * the host would wait for them. One write at a time, so an older list never lands
 * after a newer one; changes made while a write runs go in one more write after it.
 */
#include "agentd.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

/* Lines the file may hold before the next write rewrites it with the ids alone. */
#define OPCACHE_LOG_MAX (3 * AGENT_OPCACHE_SIZE)
/* The largest file read at start: a log compacted at OPCACHE_LOG_MAX lines. */
#define OPCACHE_FILE_MAX ((OPCACHE_LOG_MAX + AGENT_OPCACHE_SIZE + 8) * (LINK_OP_ID_MAX + 2))

/*
 * The entry for op, or NULL when op is not among the remembered ones.
 */
struct op_entry *opcache_find(struct opcache *c, const char *op)
{
	for (size_t i = 0; i < AGENT_OPCACHE_SIZE; i++)
		if (c->slots[i].op[0] && strcmp(c->slots[i].op, op) == 0)
			return &c->slots[i];
	return NULL;
}

/*
 * Remember op as started, evicting the oldest entry. Returns the entry, which stays
 * valid until AGENT_OPCACHE_SIZE more ops arrive; look it up again rather than keep it.
 */
static struct op_entry *slot_take(struct opcache *c, const char *op, enum link_type type)
{
	struct op_entry *e = &c->slots[c->next];

	c->next = (c->next + 1) % AGENT_OPCACHE_SIZE;
	json_object_put(e->done_body);
	memset(e, 0, sizeof(*e));
	snprintf(e->op, sizeof(e->op), "%s", op);
	e->type = type;
	return e;
}

/* One write of the ids on the lane; run() touches only the job. */
struct ids_job {
	struct work w; /* first: common/work.h's job */
	struct opcache *cache;
	uint64_t gen; /* the change the text is up to */
	int (*write)(const char *path, const char *text, size_t len, bool append);
	bool append; /* delta appended; else (or no file to append to) text written whole */
	size_t len, delta_len;
	char text[(AGENT_OPCACHE_SIZE + 1) * (LINK_OP_ID_MAX + 1) + 1];
	char delta[AGENT_OPCACHE_SIZE * (LINK_OP_ID_MAX + 2) + 1];
	char path[PATH_MAX];
};

static int ids_write_run(struct work *w)
{
	struct ids_job *j = (struct ids_job *)w;
	int ret = -ENOENT;

	if (j->append)
		ret = j->write(j->path, j->delta, j->delta_len, true);
	if (ret == -ENOENT) /* gone (or not asked to append): the ids, whole */
		ret = j->write(j->path, j->text, j->len, false);
	if (ret < 0)
		return err_set(&w->err, -ret, "cannot write %s", j->path);
	return 0;
}

static void ids_write_start(struct opcache *c);

static void ids_write_done(struct work *w)
{
	struct ids_job *j = (struct ids_job *)w;
	struct opcache *c = j->cache;
	bool failed = w->ret < 0;

	/* A failed write is kept for link.c, which refuses the command it held for it
	 * (opcache_write_error()): acked without its id on disk, it could run twice. */
	if (failed) {
		log_warnx("ops: %s", w->err.msg);
		c->whole = true; /* what the file holds now is not known */
	}
	snprintf(c->write_error, sizeof(c->write_error), "%s", w->ret < 0 ? w->err.msg : "");
	c->writing = false;
	c->written = j->gen;
	free(j);
	if (c->again) {
		c->again = false;
		ids_write_start(c);
	} else if (c->closing && failed && !c->close_retried) {
		/* The file may lack a change (a dropped id's "~" line: the next run would take
		 * that id as its own, and keep it over an older acked one): once more, whole,
		 * before the lane ends. */
		c->close_retried = true;
		ids_write_start(c);
	} else if (c->closing) {
		work_lane_close(c->lane);
		c->lane = NULL;
	}
	if (c->written_cb)
		c->written_cb(c);
}

/* Write the changes since the last write to c->path on the lane: appended, or the ids
 * as they are now, oldest first, whole. */
static void ids_write_start(struct opcache *c)
{
	struct ids_job *j = xcalloc(1, sizeof(*j));
	unsigned ids = 0;

	j->w.run = ids_write_run;
	j->w.done = ids_write_done;
	j->cache = c;
	j->gen = c->gen;
	j->write = c->write;
	snprintf(j->path, sizeof(j->path), "%s", c->path);
	/* What the newest op evicted stays in the file while it may come back (a drop of
	 * that op), as it does in the appended lines: the loader keeps the newest ids. */
	if (c->evicted_kept && c->evicted.op[0] && !c->evicted.unkept) {
		j->len += (size_t)snprintf(j->text, sizeof(j->text), "%s\n", c->evicted.op);
		ids++;
	}
	for (size_t i = 0; i < AGENT_OPCACHE_SIZE; i++) {
		const struct op_entry *e = &c->slots[(c->next + i) % AGENT_OPCACHE_SIZE];

		if (e->op[0] && !e->unkept) {
			j->len += (size_t)snprintf(j->text + j->len, sizeof(j->text) - j->len,
						   "%s\n", e->op);
			ids++;
		}
	}
	j->append = !c->whole && c->file_lines + c->delta_lines <= OPCACHE_LOG_MAX;
	if (j->append) {
		memcpy(j->delta, c->delta, c->delta_len);
		j->delta_len = c->delta_len;
		c->file_lines += c->delta_lines;
	} else {
		c->file_lines = ids;
	}
	c->whole = false;
	c->delta_len = 0;
	c->delta_lines = 0;
	c->writing = true;
	work_lane_queue(c->lane, &j->w);
}

/* Note the file's line for a change: mark ("" taken, "~" dropped) and op. */
static void delta_add(struct opcache *c, const char *mark, const char *op)
{
	size_t room = sizeof(c->delta) - c->delta_len;
	int n = snprintf(c->delta + c->delta_len, room, "%s%s\n", mark, op);

	if (n < 0 || (size_t)n >= room) {
		c->whole = true; /* more changes than a delta holds: the next write is whole */
		c->delta_len = 0;
		c->delta_lines = 0;
		return;
	}
	c->delta_len += (size_t)n;
	c->delta_lines++;
}

/* The ids changed: write them after the write running now, if any. */
static void ids_changed(struct opcache *c)
{
	c->gen++;
	/* Not kept (a test), or closed (the agent stops): nothing to wait for. */
	if (!c->path[0] || c->lane == NULL) {
		assert(c->lane || c->closing || !c->path[0]); /* opcache_init() first */
		c->written = c->gen;
		return;
	}
	if (c->writing)
		c->again = true;
	else
		ids_write_start(c);
}

/*
 * Write the ids from now on on a lane of loop's; written_cb(c) runs on the loop after
 * each write. owner is the caller's.
 */
void opcache_init(struct opcache *c, uv_loop_t *loop, opcache_written_fn written_cb, void *owner)
{
	c->write = opcache_write_file;
	c->written_cb = written_cb;
	c->owner = owner;
	c->lane = work_lane_new(loop);
}

/*
 * Write text to path durably: whole (file_write_atomic(), the file's mode), or appended
 * to the file with one fdatasync (the file's size is what it needs of the inode).
 * Returns 0 or -errno; -ENOENT when there is no file to append to (a new file needs
 * its directory synced: the caller writes it whole instead).
 */
int opcache_write_file(const char *path, const char *text, size_t len, bool append)
{
	_cleanup_close_ int fd = -1;
	size_t done = 0;

	if (!append)
		return file_write_atomic(path, text, len, 0600);
	fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	while (done < len) {
		ssize_t n = write(fd, text + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	if (fdatasync(fd) < 0)
		return -errno;
	return 0;
}

/*
 * Remember op as started, evicting the oldest entry, and write the ids (off the loop):
 * the change is c->gen, on disk once opcache_on_disk(c, gen). Returns the entry, which
 * stays valid until AGENT_OPCACHE_SIZE more ops arrive; look it up again rather than
 * keep it.
 */
struct op_entry *opcache_add(struct opcache *c, const char *op, enum link_type type)
{
	struct op_entry *e;

	/* The oldest entry is kept aside, its result too, until the next add. */
	json_object_put(c->evicted.done_body);
	c->evicted = c->slots[c->next];
	c->evicted_kept = true;
	c->slots[c->next].done_body = NULL;
	e = slot_take(c, op, type);

	delta_add(c, "", op);
	ids_changed(c);
	return e;
}

/*
 * Remember op, an idempotent command, as started, evicting the oldest entry, but keep
 * it out of the file: no write is owed for it. A resend to this run is acked and not
 * run twice; the next run, which does not know it, runs it again, which the verb
 * allows. Returns the entry, as opcache_add().
 */
struct op_entry *opcache_add_unkept(struct opcache *c, const char *op, enum link_type type)
{
	struct op_entry *e;

	/* What an earlier add evicted is no longer the newest's: never put back. */
	json_object_put(c->evicted.done_body);
	memset(&c->evicted, 0, sizeof(c->evicted));
	c->evicted_kept = false;
	e = slot_take(c, op, type);
	e->unkept = true;
	return e;
}

/*
 * Forget op, taken but never acked nor run (the agent stops while its id is being
 * written, or the write failed): the ids are written again without it, so the next
 * run takes the controller's resend as new instead of failing it as half done by this
 * one. When op is the newest, the entry it evicted comes back, the oldest again: else
 * a very late resend of that op would be taken as new and run a second time.
 */
void opcache_drop(struct opcache *c, const char *op)
{
	struct op_entry *e = opcache_find(c, op);
	unsigned newest = (c->next + AGENT_OPCACHE_SIZE - 1) % AGENT_OPCACHE_SIZE;

	if (e == NULL)
		return;
	json_object_put(e->done_body);
	memset(e, 0, sizeof(*e));
	if (c->evicted_kept && e == &c->slots[newest]) {
		*e = c->evicted;
		memset(&c->evicted, 0, sizeof(c->evicted));
		c->evicted_kept = false;
		c->next = newest;
	}
	/* In the file, the entry put back comes back by itself: the loader keeps the
	 * newest ids once the dropped one is gone. */
	delta_add(c, "~", op);
	ids_changed(c);
}

/*
 * Was the write of the ids as of change gen done? It failed if opcache_write_error()
 * says why (asked at once: the next write clears it).
 */
bool opcache_on_disk(const struct opcache *c, uint64_t gen)
{
	return c->written >= gen;
}

/* Why the last write of the ids failed, or NULL when it did not. */
const char *opcache_write_error(const struct opcache *c)
{
	return c->write_error[0] ? c->write_error : NULL;
}

/*
 * End the lane once the write running (and the one more it owes, if any) is done;
 * at once when none runs. The loop keeps running until then.
 */
void opcache_close(struct opcache *c)
{
	c->closing = true;
	if (c->lane == NULL || c->writing)
		return;
	if (c->write_error[0] && !c->close_retried) {
		/* The last write failed: once more, whole (ids_write_done() above). */
		c->close_retried = true;
		ids_write_start(c);
		return;
	}
	work_lane_close(c->lane);
	c->lane = NULL;
}

/*
 * At start-up: keep the op ids in path from now on, and take the ones a previous run
 * left there as "earlier" entries (neither running nor done here): its lines applied in
 * order, the newest AGENT_OPCACHE_SIZE ids kept. A last line without its newline is
 * left out (its write was cut: its command never acked). The first write rewrites the
 * file whole, so nothing is ever appended to a cut line.
 */
void opcache_load(struct opcache *c, const char *path)
{
	_cleanup_free_ char *text = NULL;
	_cleanup_free_ char **ids = NULL;
	size_t len = 0, n = 0, kept = 0, first;
	char *line, *end;
	int ret;

	snprintf(c->path, sizeof(c->path), "%s", path);
	c->whole = true;
	ret = file_read_all(path, OPCACHE_FILE_MAX, &text, &len);
	if (ret < 0) {
		if (ret != -ENOENT)
			log_warnx("ops: cannot read %s: %s", path, strerror(-ret));
		return;
	}
	ids = xcalloc(len / 2 + 1, sizeof(*ids));
	for (line = text; (end = memchr(line, '\n', len - (size_t)(line - text))) != NULL;
	     line = end + 1) {
		bool drop = *line == '~';
		char *id = drop ? line + 1 : line;

		*end = '\0';
		/* (a NUL inside is junk too: only whole lines of the id's alphabet count) */
		if (strlen(id) != (size_t)(end - id) || !link_op_id_valid(id))
			continue;
		/* Taken again, or dropped: its older line no longer counts. */
		for (size_t i = n; i-- > 0;)
			if (ids[i] && strcmp(ids[i], id) == 0) {
				ids[i] = NULL;
				break;
			}
		if (!drop)
			ids[n++] = id;
	}
	if (line < text + len)
		log_warnx("ops: %s ends in a cut line; left out", path);
	for (first = n; first > 0 && kept < AGENT_OPCACHE_SIZE; first--)
		kept += ids[first - 1] != NULL;
	for (size_t i = first; i < n; i++)
		if (ids[i])
			slot_take(c, ids[i], LINK_CMD_INSTANCE)->earlier = true;
}

/*
 * Record that op finished with done_body (the op-done body; the cache takes its own
 * reference). An op evicted meanwhile is not brought back.
 */
void opcache_finish(struct opcache *c, const char *op, struct json_object *done_body)
{
	struct op_entry *e = opcache_find(c, op);

	if (e == NULL)
		return;
	json_object_put(e->done_body);
	e->done_body = json_object_get(done_body);
	e->done = true;
}

/*
 * Forget every op and release the stored results.
 */
void opcache_clear(struct opcache *c)
{
	for (size_t i = 0; i < AGENT_OPCACHE_SIZE; i++) {
		json_object_put(c->slots[i].done_body);
		memset(&c->slots[i], 0, sizeof(c->slots[i]));
	}
	json_object_put(c->evicted.done_body);
	memset(&c->evicted, 0, sizeof(c->evicted));
	c->evicted_kept = false;
	c->next = 0;
}
