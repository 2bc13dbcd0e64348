#!/bin/bash
# Time from POST /api/v1/instances to a container's first output, against `runc run`
# of the same image's bundle in the same run. Prints the ratio kumo/runc (medians); the
# goal is 1.10 or less. Needs a running lab (deploy/lab up) with busybox:latest in its
# registry; the lab is --lab NAME, else $KUMO_LAB_NAME (set by deploy/lab env), else kumo.
#
#   bench/container_start.sh [-n N] [--lab NAME] [--trace]
#
# --trace: the lab's daemons must run with KUMO_TRACE=1 in their environment
# (KUMO_TRACE=1 deploy/lab up); after the runs, bench/create_hops.py prints the median
# time of each hop of the create path (HTTP, SQLite commit, link, image, bundle, shim,
# overlay, runc, op-done) from their timing marks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
runs=5
trace=0
# The lab: --lab, else the one `eval "$(deploy/lab --name NAME env)"` selected.
lab_name=${KUMO_LAB_NAME:-kumo}
while [ $# -gt 0 ]; do
	case $1 in
	-n) runs=$2; shift 2 ;;
	--lab) lab_name=$2; shift 2 ;;
	--trace) trace=1; shift ;;
	*) echo "usage: $0 [-n N] [--lab NAME] [--trace]" >&2; exit 2 ;;
	esac
done
eval "$("$src/deploy/lab" --name "$lab_name" env)"
build=${KUMO_BUILD_DIR:-$src/build}
"$src/tests/guest/build-oci.sh" "$build/guest" >/dev/null
layout=$build/guest/busybox-oci
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
kapi() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $(cat "$KUMO_TOKEN_FILE")" "$@"; }

# The baseline bundle: the image's layer unpacked, runc's default spec, our command.
manifest=$(jq -r '.manifests[0].digest' "$layout/index.json" | cut -d: -f2)
layer=$(jq -r '.layers[0].digest' "$layout/blobs/sha256/$manifest" | cut -d: -f2)
mkdir -p "$tmp/bundle/rootfs"
tar -xzf "$layout/blobs/sha256/$layer" -C "$tmp/bundle/rootfs"
(cd "$tmp/bundle" && runc spec)
jq '.process.args = ["echo", "KUMO-CT-READY"] | .process.terminal = false' \
	"$tmp/bundle/config.json" >"$tmp/config.json" && mv "$tmp/config.json" "$tmp/bundle/config.json"

runc_once() {
	local id=bench-runc-$1 t0 out
	jq ".linux.cgroupsPath = \"/kumo-bench/$id\"" "$tmp/bundle/config.json" >"$tmp/c.json"
	mv "$tmp/c.json" "$tmp/bundle/config.json"
	t0=$(now_ms)
	out=$(runc run --bundle "$tmp/bundle" "$id")
	[ "$out" = KUMO-CT-READY ] || { echo "runc printed: $out" >&2; exit 1; }
	echo $(($(now_ms) - t0))
}

# One HTTPS connection kept open, as a client that drives a cluster would: the POST,
# then the logs polled every 5 ms until the first output shows.
kumo_once() {
	local name=bench-ct-$1 op
	python3 - "$KUMO_URL" "$KUMO_CACERT" "$(cat "$KUMO_TOKEN_FILE")" "$name" <<'PY'
import http.client, json, ssl, sys, time, urllib.parse
url, ca, token, name = sys.argv[1:5]
u = urllib.parse.urlparse(url)
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
c.connect()
wall0 = time.time()
body = json.dumps({"name": name, "type": "container", "image": "busybox:latest",
                   "command": ["echo", "KUMO-CT-READY"]})
t0 = time.monotonic()
c.request("POST", "/api/v1/instances", body, h)
r = c.getresponse(); r.read()
if r.status != 202:
    sys.exit("create answered %d" % r.status)
while True:
    c.request("GET", "/api/v1/instances/%s/logs" % name, headers=h)
    r = c.getresponse(); out = r.read()
    if b"KUMO-CT-READY" in out:
        break
    time.sleep(0.005)
print(int((time.monotonic() - t0) * 1000), "%.6f" % wall0)
PY
	if [ "$trace" = 1 ]; then
		# The shim's log goes with the container: keep it for bench/create_hops.py.
		cat "$KUMO_LAB_DIR"/hosts/*/local/containers/"$name"/shim.log >"$tmp/$name.shim" 2>/dev/null || true
	fi
	op=$(kapi -X DELETE "$KUMO_URL/api/v1/instances/$name?force=1" | jq -r .id)
	kapi "$KUMO_URL/api/v1/operations/$op?wait=60" >/dev/null
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

: >"$tmp/runc.ms"
: >"$tmp/kumo.ms"
for i in $(seq 1 "$runs"); do
	r=$(runc_once "$i")
	read -r k wall0 < <(kumo_once "$i")
	echo "bench-ct-$i $wall0 $k" >>"$tmp/names"
	echo "run $i: runc $r ms, kumo $k ms"
	echo "$r" >>"$tmp/runc.ms"
	echo "$k" >>"$tmp/kumo.ms"
done
rmdir /sys/fs/cgroup/*/kumo-bench /sys/fs/cgroup/kumo-bench 2>/dev/null || true
r=$(median <"$tmp/runc.ms")
k=$(median <"$tmp/kumo.ms")
ratio=$(awk -v k="$k" -v r="$r" 'BEGIN { printf "%.3f", k / r }')
echo "runc median: $r ms, kumo median: $k ms"
echo "runc min/median/max: $(sort -n "$tmp/runc.ms" | head -1)/$r/$(sort -n "$tmp/runc.ms" | tail -1) ms," \
	"kumo: $(sort -n "$tmp/kumo.ms" | head -1)/$k/$(sort -n "$tmp/kumo.ms" | tail -1) ms"
echo "ratio kumo/runc: $ratio (goal <= 1.10)"
echo "RESULT runc_ms=$r kumo_ms=$k ratio=$ratio"
if [ "$trace" = 1 ]; then
	"$here/create_hops.py" "$tmp/names" "$KUMO_LAB_DIR"/logs/*.log "$tmp"/*.shim
fi
