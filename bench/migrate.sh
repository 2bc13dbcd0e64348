#!/bin/bash
# Live migration of an idle 256 MiB test guest on shared storage: Kumo's migrate
# (POST .../actions/migrate, h1 <-> h2 of a running lab, TLS, operation to its end)
# against the same migration driven by hand with raw QMP between two bare QEMUs on
# loopback (plain TCP, max-bandwidth raised the same), in the same run. The baseline's
# time counts from the target QEMU's start to QMP's "completed", as Kumo's counts from
# the call (which starts the target QEMU) to the operation's end. Prints medians, the
# ratio kumo/raw (goal 1.10 or less) and both downtimes (goal 100 ms or less for
# Kumo's). Needs root, python3, a lab (deploy/lab up; --lab NAME, else $KUMO_LAB_NAME,
# else kumo) and the lab's test image kumo-test. Only loopback and the lab are used.
# A last line times the same guest with its disk on the local pool (a linked clone,
# mirrored over NBD before the memory moves), one migration, for reference.
#
#   bench/migrate.sh [-n N] [--lab NAME]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
runs=3
lab_name=${KUMO_LAB_NAME:-kumo}
while [ $# -gt 0 ]; do
	case $1 in
	-n) runs=$2; shift 2 ;;
	--lab) lab_name=$2; shift 2 ;;
	*) echo "usage: $0 [-n N] [--lab NAME]" >&2; exit 2 ;;
	esac
done
eval "$("$src/deploy/lab" --name "$lab_name" env)"
tmp=$(mktemp -d /tmp/kumo-bench-migrate.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	kapi -X DELETE "$KUMO_URL/api/v1/instances/bench-mig?force=1" >/dev/null 2>&1 || true
	kapi -X DELETE "$KUMO_URL/api/v1/instances/bench-mig-local?force=1" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
kapi() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $(cat "$KUMO_TOKEN_FILE")" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
op_end() { # op_end ID SECONDS: the operation once final (the API waits at most 60 s a call)
	local res end=$((SECONDS + $2))
	while :; do
		res=$(kapi "$KUMO_URL/api/v1/operations/$1?wait=60")
		case $(jq -r .status <<<"$res") in succeeded | failed | cancelled) break ;; esac
		[ $SECONDS -lt $end ] || break
	done
	printf '%s\n' "$res"
}
wait_file_has() { # FILE TEXT SECONDS
	local end=$((SECONDS + $3))
	until grep -aq "$2" "$1" 2>/dev/null; do
		[ $SECONDS -lt $end ] || { echo "bench: no '$2' in $1 after $3 s" >&2; exit 1; }
		sleep 0.2
	done
}

# qmp SOCKET CMD [ARGS-JSON]: one command, its answer on stdout.
qmp() {
	python3 - "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
cmds = [("qmp_capabilities", {}), (sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})]
for cmd, args in cmds:
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "return" in msg or "error" in msg:
            break
print(json.dumps(msg))
PY
}

image=$(kapi "$KUMO_URL/api/v1/images/kumo-test" | jq -r '.path // empty')
[ -n "$image" ] || image=$(ls "$KUMO_LAB_DIR"/shared/images/*kumo-test* 2>/dev/null | head -n 1)
[ -n "$image" ] && [ -f "$image" ] || { echo "bench: the lab has no kumo-test image file" >&2; exit 1; }

# ---- raw QMP: two bare QEMUs on loopback ---------------------------------------------
qemu_common=(qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 256 -nodefaults
	-display none -no-user-config -drive "file=$tmp/disk.qcow2,if=virtio,cache=none")
qemu-img create -q -f qcow2 -b "$image" -F qcow2 "$tmp/disk.qcow2"
"${qemu_common[@]}" -qmp "unix:$tmp/a.sock,server=on,wait=off" -serial "file:$tmp/a.log" &
pids+=($!)
wait_file_has "$tmp/a.log" KUMO-GUEST-READY 180
# One raw run in one process (no interpreter start-up inside the measured time): start
# the target QEMU, wait for its QMP, raise max-bandwidth, migrate, poll every 10 ms.
raw_run() { # SOURCE-SOCKET TARGET-SOCKET TARGET-LOG PORT -> "total_ms downtime_ms pid"
	python3 - "$@" "${qemu_common[@]}" <<'PY'
import json, os, socket, subprocess, sys, time
src, dst, log, port = sys.argv[1:5]
qemu = sys.argv[5:]
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    f.readline()
    call(f, "qmp_capabilities")
    return f
def call(f, cmd, args=None):
    f.write(json.dumps({"execute": cmd, "arguments": args or {}}) + "\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "return" in msg or "error" in msg:
            return msg
a = connect(src)
t0 = time.monotonic()
p = subprocess.Popen(qemu + ["-qmp", f"unix:{dst},server=on,wait=off", "-serial", f"file:{log}",
                             "-incoming", f"tcp:127.0.0.1:{port}"], start_new_session=True)
while True:
    try:
        b = connect(dst)
        break
    except OSError:
        time.sleep(0.005)
call(a, "migrate-set-parameters", {"max-bandwidth": 1000000000})
call(a, "migrate", {"uri": f"tcp:127.0.0.1:{port}"})
while True:
    r = call(a, "query-migrate")["return"]
    if r.get("status") == "completed":
        break
    if r.get("status") in ("failed", "cancelled"):
        sys.exit("raw migration " + json.dumps(r))
    time.sleep(0.01)
print(int((time.monotonic() - t0) * 1000), r.get("downtime", -1), p.pid)
call(a, "quit")
PY
}
src_sock=$tmp/a.sock
raw_total=() raw_down=()
for i in $(seq "$runs"); do
	read -r total down pid < <(raw_run "$src_sock" "$tmp/b$i.sock" "$tmp/b$i.log" $((47000 + RANDOM % 2000)))
	pids+=("$pid")
	raw_total+=("$total")
	raw_down+=("$down")
	src_sock=$tmp/b$i.sock
	echo "raw run $i: total $total ms, downtime $down ms"
done

# ---- Kumo ---------------------------------------------------------------------------
kapi "$KUMO_URL/api/v1/instances" -d '{"name": "bench-mig", "type": "vm", "vcpus": 1,
	"memory": {"mb": 256}, "host": "h1",
	"disks": [{"name": "root", "image": "kumo-test", "bus": "virtio"}]}' >/dev/null
end=$((SECONDS + 180))
until kapi "$KUMO_URL/api/v1/instances/bench-mig/console" | grep -aq KUMO-GUEST-READY; do
	[ $SECONDS -lt $end ] || { echo "bench: bench-mig did not boot" >&2; exit 1; }
	sleep 0.5
done
kumo_total=() kumo_down=() to=h2
for i in $(seq "$runs"); do
	t0=$(now_ms)
	op=$(kapi "$KUMO_URL/api/v1/instances/bench-mig/actions/migrate" -d "{\"host\": \"$to\"}" | jq -r .id)
	res=$(op_end "$op" 120)
	[ "$(jq -r .status <<<"$res")" = succeeded ] || { echo "bench: $(jq -c '{status, error}' <<<"$res")" >&2; exit 1; }
	kumo_total+=($(($(now_ms) - t0)))
	kumo_down+=("$(jq -r .result.downtime_ms <<<"$res")")
	echo "kumo run $i: to $to, total ${kumo_total[-1]} ms (operation $(jq -r .result.total_ms <<<"$res") ms), downtime ${kumo_down[-1]} ms, $(jq -r .result.strategy <<<"$res") (guest paused $(jq -r '.result.paused_ms // 0' <<<"$res") ms)"
	[ "$to" = h2 ] && to=h1 || to=h2
done

# ---- Kumo, the disk on the local pool (one run) ------------------------------------------
kapi -X DELETE "$KUMO_URL/api/v1/instances/bench-mig?force=1" >/dev/null
kapi "$KUMO_URL/api/v1/instances" -d '{"name": "bench-mig-local", "type": "vm", "vcpus": 1,
	"memory": {"mb": 256}, "host": "h1",
	"disks": [{"name": "root", "image": "kumo-test", "bus": "virtio", "pool": "local"}]}' >/dev/null
end=$((SECONDS + 180))
until kapi "$KUMO_URL/api/v1/instances/bench-mig-local/console" | grep -aq KUMO-GUEST-READY; do
	[ $SECONDS -lt $end ] || { echo "bench: bench-mig-local did not boot" >&2; exit 1; }
	sleep 0.5
done
t0=$(now_ms)
op=$(kapi "$KUMO_URL/api/v1/instances/bench-mig-local/actions/migrate" -d '{"host": "h2"}' | jq -r .id)
res=$(op_end "$op" 240)
[ "$(jq -r .status <<<"$res")" = succeeded ] || { echo "bench: local: $(jq -c '{status, error}' <<<"$res")" >&2; exit 1; }
echo "RESULT local_disk_total_ms=$(($(now_ms) - t0)) local_disk_downtime_ms=$(jq -r .result.downtime_ms <<<"$res") local_disk_mirrored_bytes=$(jq -r .result.migration.disk_total <<<"$res")"

rt=$(printf '%s\n' "${raw_total[@]}" | median)
rd=$(printf '%s\n' "${raw_down[@]}" | median)
kt=$(printf '%s\n' "${kumo_total[@]}" | median)
kd=$(printf '%s\n' "${kumo_down[@]}" | median)
echo "RESULT raw_total_ms=$rt raw_downtime_ms=$rd kumo_total_ms=$kt kumo_downtime_ms=$kd ratio=$(awk -v k="$kt" -v r="$rt" 'BEGIN { printf "%.2f", k / r }')"
