#!/bin/bash
# Warm P2V of a disk with about half its chunks holding data (default 1 GiB), against
# the same controller in the same run:
#   - pass 1 throughput (data bytes sent / pass time) of kumo-p2v, against
#     `curl --data-binary` of the same data bytes to POST /api/v1/images (a streamed
#     upload), as a ratio (goal >= 0.8);
#   - the cutover downtime of the source: from the freeze to the cutover's answer
#     (final pass, qcow2 conversion, the VM's record; goal <= 10 s in the lab), while a
#     writer keeps changing the disk between passes.
# Needs a running lab (deploy/lab up); --lab NAME, else $KUMO_LAB_NAME, else kumo.
#
#   bench/p2v.sh [--size-mb N] [--lab NAME]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
size_mb=1024
lab_name=${KUMO_LAB_NAME:-kumo}
while [ $# -gt 0 ]; do
	case $1 in
	--size-mb) size_mb=$2; shift 2 ;;
	--lab) lab_name=$2; shift 2 ;;
	*) echo "usage: $0 [--size-mb N] [--lab NAME]" >&2; exit 2 ;;
	esac
done
eval "$("$src/deploy/lab" --name "$lab_name" env)"
build=${KUMO_BUILD_DIR:-$src/build}
p2v_bin=${KUMO_P2V:-$build/tools/kumo-p2v} # a build without sanitizers measures better
token=$(cat "$KUMO_TOKEN_FILE")
w=$KUMO_LAB_DIR/p2v-bench
k() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $token" "$@"; }
cleanup() {
	[ -n "${writer:-}" ] && kill "$writer" 2>/dev/null || true
	[ -n "${sid:-}" ] && k -X DELETE "$KUMO_URL/api/v1/p2v/$sid" >/dev/null 2>&1 || true
	k -X DELETE "$KUMO_URL/api/v1/instances/p2vbench?force=1" >/dev/null 2>&1 || true
	for _ in $(seq 1 60); do
		[ "$(k -o /dev/null -w '%{http_code}' "$KUMO_URL/api/v1/instances/p2vbench")" = 404 ] && break
		sleep 1
	done
	k -X DELETE "$KUMO_URL/api/v1/images/p2v-p2vbench-root" >/dev/null 2>&1 || true
	k -X DELETE "$KUMO_URL/api/v1/images/p2vbench-curl" >/dev/null 2>&1 || true
	rm -rf "$w"
}
trap cleanup EXIT
cleanup
mkdir -p "$w"

# Every other chunk random, the rest zero: ~50% data, spread over the disk.
chunks=$size_mb
truncate -s $((size_mb << 20)) "$w/disk.raw"
for ((i = 0; i < chunks; i += 2)); do
	head -c $((1 << 20)) /dev/urandom | dd of="$w/disk.raw" bs=1M seek=$i conv=notrunc status=none
done
: >"$w/data.bin"
for ((i = 0; i < chunks; i += 2)); do
	dd if="$w/disk.raw" bs=1M skip=$i count=1 status=none >>"$w/data.bin"
done
data=$(stat -c %s "$w/data.bin")

# curl: the same data bytes, streamed to the same controller.
t0=$(date +%s.%N)
k -X POST -H 'Content-Type: application/octet-stream' --data-binary @"$w/data.bin" \
	"$KUMO_URL/api/v1/images?name=p2vbench-curl&format=raw" -o /dev/null
t1=$(date +%s.%N)
curl_rate=$(awk -v b="$data" -v a="$t0" -v c="$t1" 'BEGIN { printf "%.1f", b / (c - a) / 1048576 }')

# kumo-p2v warm: a writer changes a few chunks between passes.
s=$(k -X POST "$KUMO_URL/api/v1/p2v" -d '{"name":"p2vbench","disks":[{"name":"root","size_bytes":'$((size_mb << 20))'}]}')
sid=$(jq -r .id <<<"$s")
(while :; do
	head -c 4096 /dev/urandom | dd of="$w/disk.raw" bs=4096 seek=$((RANDOM % (size_mb * 256))) conv=notrunc status=none
	sleep 0.2
done) &
writer=$!
cat >"$w/freeze.sh" <<EOF
#!/bin/sh
kill -STOP $writer
EOF
chmod +x "$w/freeze.sh"
"$p2v_bin" --url "$KUMO_URL/api/v1/p2v/$sid" --token "$(jq -r .token <<<"$s")" \
	--cacert "$KUMO_CACERT" --disk "$w/disk.raw" --warm --max-passes 3 --small 2 \
	--freeze-cmd "$w/freeze.sh" --cutover --json >"$w/out.json" 2>/dev/null
p2v_rate=$(jq '.passes[0].bytes_sent / .passes[0].seconds / 1048576 * 10 | round / 10' "$w/out.json")
echo "disk: $size_mb MiB, $((data >> 20)) MiB of data"
echo "pass 1: $p2v_rate MiB/s of data; curl --data-binary: $curl_rate MiB/s"
awk -v a="$p2v_rate" -v b="$curl_rate" 'BEGIN { printf "ratio kumo-p2v/curl: %.2f (goal >= 0.8)\n", a / b }'
echo "passes: $(jq -c '[.passes[] | {pass, chunks_sent, seconds: (.seconds * 10 | round / 10)}]' "$w/out.json")"
echo "cutover downtime (freeze to the cutover's answer): $(jq '.freeze_to_cutover_s * 10 | round / 10' "$w/out.json") s (goal <= 10)"
