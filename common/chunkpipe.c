/*
 * chunkpipe.c - a disk into the chunk store: one reader, a few hashing threads
 * (chunkpipe.h says the design).
 */
#include "chunkpipe.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chunkstore.h"
#include "log.h"
#include "util.h"

#define CHUNKPIPE_MAX_THREADS 8
#define CHUNKPIPE_SLOTS_PER   2	  /* buffers per thread: one hashed while the next is read */
#define CHUNKPIPE_PACE_SLICE  100 /* ms: a paced reader asks for a cancel this often */

enum slot_state {
	SLOT_FREE,
	SLOT_FULL,
	SLOT_BUSY
};

struct slot {
	enum slot_state state;
	int64_t index;
	size_t len;
	unsigned char *buf;
};

struct pipe {
	const char *root;
	const struct chunkcrypt_key *key; /* NULL: a plain store */
	pthread_mutex_t lock;
	pthread_cond_t cond; /* any slot changed state, or quit */
	struct slot *slots;
	size_t nslots;
	bool quit;
	char (*names)[CHUNKSTORE_HEX_LEN + 1]; /* by chunk index */
	uint64_t new_bytes;
	int failed; /* the first failure's err is in fail_err */
	struct kerr fail_err;
};

/*
 * Two per core: a hasher spends a good part of each chunk blocked in its O_DIRECT
 * write (the device's time, no CPU), and with one per core that core idled meanwhile.
 * Per 4 MiB chunk of random data a hasher now needs ~2.8 ms of CPU (SHA-256 2.3, the
 * raw frame's copy 0.4, the probe 0.1) and then waits for a 4 MiB write, a few ms on
 * the shared pool's disk: the second hasher of a core computes while the first waits.
 */
int chunkpipe_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 2;
	return 2 * n > CHUNKPIPE_MAX_THREADS ? CHUNKPIPE_MAX_THREADS : (int)(2 * n);
}

static void *hasher_main(void *arg)
{
	struct pipe *p = arg;
	struct chunkstore_writer w;

	chunkstore_writer_init(&w);
	w.key = p->key;
	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct slot *s = NULL;
		char hex[CHUNKSTORE_HEX_LEN + 1];
		uint64_t written = 0;
		struct kerr err;
		int ret;

		for (size_t i = 0; i < p->nslots && s == NULL; i++)
			if (p->slots[i].state == SLOT_FULL)
				s = &p->slots[i];
		if (s == NULL) {
			if (p->quit)
				break;
			pthread_cond_wait(&p->cond, &p->lock);
			continue;
		}
		s->state = SLOT_BUSY;
		pthread_mutex_unlock(&p->lock);
		ret = chunkstore_put_with(p->root, &w, s->buf, s->len, hex, &written, &err);
		pthread_mutex_lock(&p->lock);
		if (ret < 0 && !p->failed) {
			p->failed = 1;
			p->fail_err = err;
		}
		if (ret == 0) {
			memcpy(p->names[s->index], hex, sizeof(hex));
			p->new_bytes += written;
		}
		s->state = SLOT_FREE;
		pthread_cond_broadcast(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
	chunkstore_writer_free(&w);
	return NULL;
}

/* Store the zero chunk once, so a reader that does not know its name finds it. */
static int zero_chunk_put(const char *root, const struct chunkcrypt_key *key, uint64_t *written,
			  struct kerr *err)
{
	_cleanup_free_ void *zeros = NULL;
	char hex[CHUNKSTORE_HEX_LEN + 1], path[PATH_MAX];
	struct chunkstore_writer w;
	struct stat sb;
	int ret;

	/* Its name is known: a store that has it costs a stat, not 4 MiB hashed. */
	*written = 0;
	chunkstore_chunk_path(root, chunkstore_zero_name(key), path, sizeof(path));
	if (stat(path, &sb) == 0 && sb.st_size > 0)
		return 0;
	zeros = xcalloc(1, CHUNKSTORE_CHUNK_SIZE);
	chunkstore_writer_init(&w);
	w.key = key;
	ret = chunkstore_put_with(root, &w, zeros, CHUNKSTORE_CHUNK_SIZE, hex, written, err);
	chunkstore_writer_free(&w);
	if (ret < 0)
		return -1;
	if (strcmp(hex, chunkstore_zero_name(key)) != 0)
		fatalx("chunkpipe: the zero chunk hashes to %s", hex); /* a broken build */
	return 0;
}

/* Reader: wait for a free slot; NULL once a hasher failed. Called locked. */
static struct slot *slot_free_wait(struct pipe *p)
{
	for (;;) {
		if (p->failed)
			return NULL;
		for (size_t i = 0; i < p->nslots; i++)
			if (p->slots[i].state == SLOT_FREE)
				return &p->slots[i];
		pthread_cond_wait(&p->cond, &p->lock);
	}
}

int64_t chunkpipe_pace_wait_ms(uint64_t bytes, uint64_t rate, int64_t elapsed_ms)
{
	/* The first chunk's worth is the bucket's burst: bytes beyond it are due
	 * (bytes - CHUNKSTORE_CHUNK_SIZE) / rate seconds after the start. */
	uint64_t over = bytes > CHUNKSTORE_CHUNK_SIZE ? bytes - CHUNKSTORE_CHUNK_SIZE : 0;
	/* In two steps, so a large byte count does not overflow the product. */
	int64_t due_ms = (int64_t)(over / rate * 1000 + over % rate * 1000 / rate);

	return due_ms > elapsed_ms ? due_ms - elapsed_ms : 0;
}

/* A clock that a set date does not move. */
static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until the reads may bring the bytes read to bytes (src's rate), asking for a
 * cancel between slices of sleep. Returns false when cancelled. */
static bool pace(const struct chunkpipe_source *src, uint64_t bytes, int64_t start_ms)
{
	int64_t wait;

	while ((wait = chunkpipe_pace_wait_ms(bytes, src->rate_bytes_s, mono_ms() - start_ms)) >
	       0) {
		if (src->cancelled && src->cancelled(src->cancel_data))
			return false;
		usleep((useconds_t)(wait < CHUNKPIPE_PACE_SLICE ? wait : CHUNKPIPE_PACE_SLICE) *
		       1000);
	}
	return true;
}

int chunkpipe_store(const char *root, const struct chunkpipe_source *src, int threads,
		    struct json_object *chunks, struct chunkpipe_result *res, struct kerr *err)
{
	int64_t nchunks = (src->size + CHUNKSTORE_CHUNK_SIZE - 1) / CHUNKSTORE_CHUNK_SIZE;
	struct pipe p = {.root = root, .key = src->key};
	const char *zero_name = chunkstore_zero_name(src->key);
	pthread_t tids[CHUNKPIPE_MAX_THREADS];
	int nthreads = 0, ret = 0;
	bool zero_stored = false;
	int64_t start_ms = mono_ms();
	struct kerr rerr;

	memset(res, 0, sizeof(*res));
	if (threads < 1)
		threads = 1;
	if (threads > CHUNKPIPE_MAX_THREADS)
		threads = CHUNKPIPE_MAX_THREADS;
	p.nslots = (size_t)threads * CHUNKPIPE_SLOTS_PER;
	p.slots = xcalloc(p.nslots, sizeof(*p.slots));
	for (size_t i = 0; i < p.nslots; i++)
		p.slots[i].buf = chunkstore_buf_alloc(CHUNKSTORE_CHUNK_SIZE);
	p.names = xcalloc((size_t)nchunks + 1, sizeof(*p.names));
	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.cond, NULL);
	for (; nthreads < threads; nthreads++)
		if (pthread_create(&tids[nthreads], NULL, hasher_main, &p) != 0)
			break;
	if (nthreads == 0) {
		ret = err_set(err, EAGAIN, "cannot start a hashing thread");
		goto out;
	}

	for (int64_t c = 0; c < nchunks; c++) {
		int64_t off = c * CHUNKSTORE_CHUNK_SIZE;
		size_t len = src->size - off < CHUNKSTORE_CHUNK_SIZE ? (size_t)(src->size - off)
								     : CHUNKSTORE_CHUNK_SIZE;
		bool whole = len == CHUNKSTORE_CHUNK_SIZE;
		struct slot *s;

		if (src->cancelled && src->cancelled(src->cancel_data)) {
			ret = err_set(&rerr, ECANCELED, "cancelled");
			break;
		}
		/* Known without reading: no slot needed, none waited for. Only this thread
		 * writes names[c]; the hashers write other indexes. A name the hook began
		 * and then disowned is cleared: a set name below means the zero chunk. */
		if (src->named) {
			if (src->named(src->data, c, p.names[c])) {
				if (src->progress_bytes)
					__atomic_store_n(src->progress_bytes, (uint64_t)off + len,
							 __ATOMIC_RELAXED);
				continue;
			}
			p.names[c][0] = '\0';
		}
		pthread_mutex_lock(&p.lock);
		s = slot_free_wait(&p);
		pthread_mutex_unlock(&p.lock);
		if (s == NULL)
			break;
		/* The slot is FREE: no hasher touches it until it is marked FULL. */
		if (whole && src->hole && src->hole(src->data, off, len)) {
			memcpy(p.names[c], zero_name, sizeof(p.names[c]));
		} else {
			if (src->rate_bytes_s > 0 && !pace(src, res->read_bytes + len, start_ms)) {
				ret = err_set(&rerr, ECANCELED, "cancelled");
				break;
			}
			if (src->read(src->data, off, s->buf, len, &rerr) < 0) {
				ret = -1;
				break;
			}
			res->read_bytes += len;
			if (whole && mem_is_zero(s->buf, len))
				memcpy(p.names[c], zero_name, sizeof(p.names[c]));
		}
		if (src->progress_bytes)
			__atomic_store_n(src->progress_bytes, (uint64_t)off + len,
					 __ATOMIC_RELAXED);
		if (p.names[c][0]) {
			uint64_t written = 0;

			if (!zero_stored && zero_chunk_put(root, src->key, &written, &rerr) < 0) {
				ret = -1;
				break;
			}
			zero_stored = true;
			res->new_bytes += written;
			continue;
		}
		pthread_mutex_lock(&p.lock);
		s->index = c;
		s->len = len;
		s->state = SLOT_FULL;
		pthread_cond_signal(&p.cond);
		pthread_mutex_unlock(&p.lock);
	}

	/* Let the hashers finish what is queued, then stop them. */
	pthread_mutex_lock(&p.lock);
	p.quit = true;
	pthread_cond_broadcast(&p.cond);
	pthread_mutex_unlock(&p.lock);
	for (int i = 0; i < nthreads; i++)
		pthread_join(tids[i], NULL);
	if (ret < 0) {
		*err = rerr;
		goto out;
	}
	if (p.failed) {
		*err = p.fail_err;
		ret = -1;
		goto out;
	}
	for (int64_t c = 0; c < nchunks; c++)
		json_object_array_add(chunks, json_object_new_string(p.names[c]));
	res->new_bytes += p.new_bytes;
	res->chunk_count = (uint64_t)nchunks;
	ret = chunkstore_list_sum(chunks, src->size, CHUNKSTORE_CHUNK_SIZE, res->sum, err);
out:
	pthread_mutex_destroy(&p.lock);
	pthread_cond_destroy(&p.cond);
	for (size_t i = 0; i < p.nslots; i++)
		free(p.slots[i].buf);
	free(p.slots);
	free(p.names);
	return ret;
}

int chunkpipe_file_read(void *data, int64_t off, void *buf, size_t len, struct kerr *err)
{
	struct chunkpipe_file *f = data;
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(f->fd, (char *)buf + got, len - got, off + (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return err_set(err, n < 0 ? errno : EIO, "cannot read %s: %s", f->path,
				       n < 0 ? strerror(errno) : "file shrank");
		got += (size_t)n;
	}
	return 0;
}

bool chunkpipe_file_hole(void *data, int64_t off, size_t len)
{
	struct chunkpipe_file *f = data;
	off_t next = lseek(f->fd, off, SEEK_DATA);

	/* ENXIO: no data at or after off. Any other failure: read it to be sure. */
	if (next < 0)
		return errno == ENXIO;
	return next >= off + (off_t)len;
}
