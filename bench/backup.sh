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
# encrypted (AES-256-GCM, a random key), to compare with a plain run.
#
#   bench/backup.sh [-n N] [--lab NAME] [--encrypted]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
runs=3
lab_name=${KUMO_LAB_NAME:-kumo}
key_field=
while [ $# -gt 0 ]; do
	case $1 in
	-n) runs=$2; shift 2 ;;
	--lab) lab_name=$2; shift 2 ;;
	--encrypted) key_field=",\"encryption_key\":\"$(openssl rand -hex 32)\""; shift ;;
	*) echo "usage: $0 [-n N] [--lab NAME] [--encrypted]" >&2; exit 2 ;;
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
now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
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
backup() { # backup STORE MODE -> "ms read_bytes new_bytes total_bytes kind live_read timings"
	local t0 op b
	t0=$(now_ms)
	op=$(kapi "$KUMO_URL/api/v1/instances/$vm/backups" -d "{\"store\":\"$1\",\"mode\":\"$2\"}" | jq -r .id)
	b=$(op_wait "$op" | jq -c .result.backup)
	echo "$(($(now_ms) - t0)) $(jq -r '"\(.read_bytes) \(.new_bytes) \(.total_bytes) \(.kind) \(.live_read // "-") \(.timings // {} | tojson)"' <<<"$b")"
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

conv=() kumo=()
for i in $(seq "$runs"); do
	rm -f "$KUMO_LAB_DIR/shared/bench-bk-copy.qcow2"
	t0=$(now_ms)
	qemu-img convert -O qcow2 "$disk" "$KUMO_LAB_DIR/shared/bench-bk-copy.qcow2"
	sync -f "$KUMO_LAB_DIR/shared/bench-bk-copy.qcow2"
	conv+=($(($(now_ms) - t0)))
	kapi "$KUMO_URL/api/v1/backup-stores" -d "{\"name\":\"bench-bk-$$-$i\"$key_field}" >/dev/null
	read -r ms rd nw tot kind _ < <(backup "bench-bk-$$-$i" full)
	kumo+=("$ms")
	[ "$i" = 1 ] && first_new=$nw first_total=$tot
	echo "run $i: qemu-img convert ${conv[-1]} ms; kumo full $ms ms ($rd read, $nw new, $tot total)"
done
cm=$(printf '%s\n' "${conv[@]}" | median)
km=$(printf '%s\n' "${kumo[@]}" | median)
# A second full into the first store: the chunks are there already.
read -r ms2 _ nw2 _ _ _ < <(backup "bench-bk-$$-1" full)

# Live: running, a full, then N times 10 MiB written through QEMU's own block layer and an incremental.
kapi -X POST "$KUMO_URL/api/v1/instances/$vm/actions/start" | jq -r .id | { read -r op; op_wait "$op" >/dev/null; }
kapi "$KUMO_URL/api/v1/backup-stores" -d "{\"name\":\"bench-bk-$$-0\"$key_field}" >/dev/null
read -r lf_ms lf_rd _ _ _ lf_via lf_t < <(backup "bench-bk-$$-0" full)
echo "live full: $lf_ms ms, via $lf_via, timings $lf_t"
# write_10m MIB: 10 MiB at MIB MiB into the running disk, through QEMU's block layer.
write_10m() {
	python3 - "$KUMO_LAB_DIR/hosts/h1/local/instances/$vm/monitor.sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd, args in (("qmp_capabilities", {}),
                  ("human-monitor-command", {"command-line": "qemu-io -d /machine/peripheral/disk0/virtio-backend \"write -P 0x5a %sM 10M\"" % sys.argv[2]})):
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
    f.flush()
    while True:
        m = json.loads(f.readline())
        if "return" in m or "error" in m:
            # HMP answers its errors as text; qemu-io's "wrote ..." line is success.
            if "error" in m or (isinstance(m["return"], str) and m["return"] and "wrote" not in m["return"]):
                sys.exit("bench: " + json.dumps(m))
            break
PY
}
# N incrementals, each after 1% more was written (10 MiB at 100, 110, ... MiB): the
# median is the figure, each run's timings say where its time went.
incr=()
for i in $(seq "$runs"); do
	write_10m $((90 + 10 * i))
	read -r in_ms in_rd in_nw _ in_kind _ in_t < <(backup "bench-bk-$$-0" auto)
	incr+=("$in_ms")
	echo "incremental $i: $in_kind $in_ms ms ($in_rd read, $in_nw new), timings $in_t"
done
in_ms=$(printf '%s\n' "${incr[@]}" | median)

if [ -n "$key_field" ]; then echo "stores: encrypted (AES-256-GCM)"; else echo "stores: plain"; fi
awk -v cm="$cm" -v km="$km" -v tot="$first_total" -v nw="$first_new" -v ms2="$ms2" -v nw2="$nw2" \
	-v lf="$lf_ms" -v lfr="$lf_rd" -v lfv="$lf_via" -v im="$in_ms" -v ir="$in_rd" -v inw="$in_nw" -v ik="$in_kind" 'BEGIN {
	printf "full backup (median of runs): kumo %d ms, qemu-img convert %d ms, ratio %.2f (goal <= 1.25)\n", km, cm, km / cm
	printf "throughput: kumo %.0f MB/s, convert %.0f MB/s (of the 1 GiB disk)\n", tot / km / 1000, tot / cm / 1000
	printf "dedup: %d logical bytes stored as %d new chunk bytes (%.1fx); a second full stored %d new bytes in %d ms\n", tot, nw, tot / (nw ? nw : 1), nw2, ms2
	printf "live: full %d ms (%d read, via %s); %s after 1%% written (median of runs): %d ms (last: %d read, %d new), %.1f%% of the full (goal <= 5%%)\n", lf, lfr, lfv, ik, im, ir, inw, 100 * im / lf
}'
