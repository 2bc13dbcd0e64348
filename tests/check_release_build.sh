#!/bin/bash
# The README's first command builds the tree as deploy/lab does (RelWithDebInfo,
# warnings as errors) - not the suite's Debug ASan build, whose lighter optimisation
# hides some warnings (gcc's maybe-uninitialized): build it that way too, in
# build-release/, so a tree whose `deploy/lab up` would stop at the build fails here.
set -euo pipefail
src=$1
build=$src/build-release
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
make -C "$build" -j"$(nproc)" 2>&1 | grep -E ': (error|warning):' && exit 1
make -C "$build" -j"$(nproc)" >/dev/null
echo "ok: the RelWithDebInfo build (deploy/lab's) has no warnings"
