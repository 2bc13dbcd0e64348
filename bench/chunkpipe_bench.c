/*
 * chunkpipe_bench.c - the chunk pipeline alone (common/chunkpipe.c), no daemons: store a
 * file into a fresh chunk store and print the time and bytes, so a profiler (perf record
 * -g) sees only what a full backup does with its disk.
 *
 *   chunkpipe_bench FILE STORE [THREADS]
 *                     prints "N bytes in T ms (R MB/s; the flush F ms): read X, new Y,
 *                     C chunks"
 *
 * STORE must not exist (every chunk is then new, as in bench/backup.sh's fulls). The
 * store is flushed (chunkstore_sync) inside the timing, as a backup does before its
 * manifest.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chunkpipe.h"
#include "chunkstore.h"
#include "util.h"

int main(int argc, char **argv)
{
	struct chunkpipe_file file;
	struct chunkpipe_source src = {
		.read = chunkpipe_file_read, .hole = chunkpipe_file_hole, .data = &file};
	struct chunkpipe_result res;
	struct json_object *chunks = json_object_new_array();
	struct kerr err;
	struct stat sb;
	int64_t t0, t_sync;
	int threads;

	if (argc < 3) {
		fprintf(stderr, "usage: chunkpipe_bench FILE STORE [THREADS]\n");
		return 2;
	}
	threads = argc > 3 ? atoi(argv[3]) : chunkpipe_threads();
	file.path = argv[1];
	file.fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (file.fd < 0 || fstat(file.fd, &sb) < 0) {
		perror(argv[1]);
		return 1;
	}
	src.size = sb.st_size;
	t0 = now_ms();
	if (chunkstore_init(argv[2], &err) < 0 ||
	    chunkpipe_store(argv[2], &src, threads, chunks, &res, &err) < 0 ||
	    (t_sync = now_ms()) < 0 || chunkstore_sync(argv[2], &err) < 0) {
		fprintf(stderr, "chunkpipe_bench: %s\n", err.msg);
		return 1;
	}
	t_sync = now_ms() - t_sync;
	t0 = now_ms() - t0;
	printf("%lld bytes in %lld ms (%.0f MB/s; the flush %lld ms): read %llu, new %llu, "
	       "%llu chunks\n",
	       (long long)src.size, (long long)t0, src.size / 1000.0 / (t0 ? t0 : 1),
	       (long long)t_sync, (unsigned long long)res.read_bytes,
	       (unsigned long long)res.new_bytes, (unsigned long long)res.chunk_count);
	json_object_put(chunks);
	close(file.fd);
	return 0;
}
