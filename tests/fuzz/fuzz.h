/*
 * fuzz.h - what the libFuzzer targets share: the invariant that a refusal says why,
 * and a scratch directory that goes away when the fuzzer exits.
 */
#ifndef KUMO_FUZZ_H
#define KUMO_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A failed check must tell the user what was wrong: an empty message is a bug. */
#define FUZZ_REFUSAL_EXPLAINED(ret, err)                                                           \
	do {                                                                                       \
		if ((ret) < 0 && (err).msg[0] == '\0') {                                           \
			fprintf(stderr, "%s:%d: refused without a message\n", __FILE__, __LINE__); \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* A new empty directory under $TMPDIR (or /tmp), removed at exit. Aborts on failure. */
const char *fuzz_scratch_dir(const char *what);

#endif
