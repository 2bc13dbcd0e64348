#!/bin/bash
# check_cli.sh CONTROLLERD AGENTD VERSION: --help and --version answer on stdout with
# exit 0, an unknown option is refused (non-zero exit, a message naming it), on both daemons.
set -uo pipefail
version=$3
for d in "$1" "$2"; do
	name=$(basename "$d")
	out=$("$d" --version) || { echo "FAIL: $name --version exited $?"; exit 1; }
	[ "$out" = "$name $version" ] || { echo "FAIL: $name --version said '$out'"; exit 1; }
	out=$("$d" --help) || { echo "FAIL: $name --help exited $?"; exit 1; }
	grep -q -- '--version' <<<"$out" || { echo "FAIL: $name --help does not list --version"; exit 1; }
	err=$("$d" --no-such-option 2>&1 >/dev/null)
	rc=$?
	[ $rc != 0 ] || { echo "FAIL: $name --no-such-option exited 0"; exit 1; }
	grep -q 'no-such-option' <<<"$err" || { echo "FAIL: $name did not name the bad option: $err"; exit 1; }
done
out=$("$1" --help)
for key in shared_pool cpu_overcommit mem_overcommit sched_policy; do
	grep -q "^  $key " <<<"$out" || { echo "FAIL: kumo-controllerd --help does not list $key"; exit 1; }
done
echo "ok: --help, --version and unknown options on both daemons"
