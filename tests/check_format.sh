#!/bin/bash
# Fails when any C file differs from what .clang-format makes of it. One clang-format
# per core: the check is a noticeable share of the suite when run file by file.
set -euo pipefail
cd "$(dirname "$0")/.."
check_one='clang-format --style=file "$1" | cmp -s - "$1" ||
	{ echo "not formatted: $1 (run: clang-format -i $1)"; exit 1; }'
if git rev-parse --git-dir >/dev/null 2>&1; then
	git ls-files -z '*.c' '*.h'
else
	find . -name '*.[ch]' -not -path './build*' -print0
fi | xargs -0 -n 1 -P "$(nproc)" sh -c "$check_one" check_one
