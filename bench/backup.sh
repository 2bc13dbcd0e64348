#!/bin/bash
# Kumo's full backup of a 1 GiB disk holding 512 MiB of random data against
# `qemu-img convert -O qcow2` of the same disk file to the same shared pool, in the same
# run (median of N each, ratio kumo/convert, goal 1.25 or less); then, the VM running,
# a live full backup and N incremental ones, each after 1% of the disk (10 MiB) was
# written through QEMU (the median's time as a fraction of the live full's, goal 5% or
# less; each with result.backup.timings: where its time went). Prints the
# chunk dedup ratio (logical bytes / new chunk bytes of the first full) and MB/s.
# Each full goes into a store of its own, so every run stores every chunk, as convert
# writes every byte. Needs root, a lab (deploy/lab up; --lab NAME, else
# $KUMO_LAB_NAME, else kumo); only the lab is used. --encrypted makes every store
# encrypted (AES-256-GCM, a random key), to compare with a plain run. --scatter adds N
# incrementals after the same 10 MiB written as 2,560 writes of 4 KiB spread over the
# disk (each touches a 4 MiB chunk: the price of 4 MiB bitmap bits). This script
# makes the VM and its disk; bench/backup_clock.py times everything, both sides of the
# comparison in one process, with one clock, in alternating order.
#
#   bench/backup.sh [-n N] [--lab NAME] [--encrypted] [--scatter]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
runs=3
lab_name=${KUMO_LAB_NAME:-kumo}
bench_key=
bench_scatter=
while [ $# -gt 0 ]; do
	case $1 in
	-n) runs=$2; shift 2 ;;
	--lab) lab_name=$2; shift 2 ;;
	--encrypted) bench_key=$(openssl rand -hex 32); shift ;;
	--scatter) bench_scatter=1; shift ;;
	*) echo "usage: $0 [-n N] [--lab NAME] [--encrypted] [--scatter]" >&2; exit 2 ;;
	esac
done
eval "$("$src/deploy/lab" --name "$lab_name" env)"
vm=bench-bk
tmp=$(mktemp -d /tmp/kumo-bench-backup.XXXXXX)
kapi() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $(cat "$KUMO_TOKEN_FILE")" "$@"; }
cleanup() {
	kapi -X DELETE "$KUMO_URL/api/v1/instances/$vm?force=1" >/dev/null 2>&1 || true
	for id in $(kapi "$KUMO_URL/api/v1/backups?instance=$vm" 2>/dev/null | jq -r '.backups[].id' 2>/dev/null); do
		kapi -X DELETE "$KUMO_URL/api/v1/backups/$id" >/dev/null 2>&1 || true
	done
	for i in $(seq 0 "$runs"); do
		kapi -X DELETE "$KUMO_URL/api/v1/backup-stores/bench-bk-$$-$i" >/dev/null 2>&1 || true
		rm -rf "$KUMO_LAB_DIR/shared/backups/bench-bk-$$-$i"
	done
	rm -rf "$tmp" "$KUMO_LAB_DIR/shared/bench-bk-copy.qcow2"
}
trap cleanup EXIT
op_wait() { # op_wait ID -> the final operation JSON
	local o
	while :; do
		o=$(kapi "$KUMO_URL/api/v1/operations/$1?wait=30")
		case "$(jq -r .status <<<"$o")" in
		succeeded) echo "$o"; return 0 ;;
		failed | cancelled) echo "bench: operation $1: $(jq -r .error <<<"$o")" >&2; exit 1 ;;
		esac
	done
}
kapi "$KUMO_URL/api/v1/instances" -d '{"name": "'$vm'", "type": "vm", "memory": {"mb": 128},
	"host": "h1", "start": false, "disks": [{"name": "root", "size_mb": 1024, "pool": "shared"}]}' |
	jq -r .id | { read -r op; op_wait "$op" >/dev/null; }
disk=$KUMO_LAB_DIR/shared/disks/$vm/root.qcow2
# 512 MiB of random data in the first half; the rest unwritten.
head -c $((512 << 20)) /dev/urandom >"$tmp/half.raw"
truncate -s 1G "$tmp/half.raw"
qemu-img convert -n -f raw -O qcow2 "$tmp/half.raw" "$disk"
rm -f "$tmp/half.raw"
sync

# The timed part in one process with one clock for both sides (backup_clock.py says how).
BENCH_KEY=$bench_key BENCH_SCATTER=$bench_scatter python3 "$here/backup_clock.py" "$runs" "$vm" "$disk" "$KUMO_LAB_DIR/shared/bench-bk-copy.qcow2" \
	"bench-bk-$$" "$KUMO_LAB_DIR/hosts/h1/local/instances/$vm/monitor.sock"
