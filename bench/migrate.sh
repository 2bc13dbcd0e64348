#!/bin/bash
# Live migration of an idle 256 MiB test guest on shared storage: Kumo's migrate
# (POST .../actions/migrate, h1 <-> h2 of a running lab, TLS, operation to its end)
# against the same migration driven by hand with raw QMP between two bare QEMUs on
# loopback (max-bandwidth raised the same), in the same run. The baseline's time
# counts from the target QEMU's start to QMP's "completed", as Kumo's counts from the
# call (which starts the target QEMU) to the operation's end.
#
# The raw migration runs twice per round, interleaved: plain TCP, and with TLS as
# Kumo's (issue 13 mandates TLS): tls-creds-x509 objects on both QEMUs (the target's
# on its command line, -incoming defer, then tls-creds and migrate-incoming; the
# source's by object-add, then tls-creds and tls-hostname), both verifying the peer,
# with a CA, server and client certificates made by openssl before any timed window
# (EC P-256 and the extensions Kumo's own certificates carry; the server's DH group
# RFC 7919's ffdhe2048, as Kumo's). The goal (kumo/raw
# 1.10 or less) is judged on ratio_tls, the same migration as Kumo's; ratio_plain
# is printed too, for honesty: it is how much Kumo's TLS costs on top.
#
# Prints medians, both ratios and the downtimes (goal 100 ms or less for Kumo's),
# and for each Kumo run the operation's result.timings (where the time went: the
# controller's phases and each agent's own steps; api/openapi.yaml
# MigrationTimings). Needs root, python3, openssl, a lab (deploy/lab up; --lab
# NAME, else $KUMO_LAB_NAME, else kumo) and the lab's test image kumo-test. Only
# loopback and the lab are used. A last line times the same guest with its disk on
# the local pool (a linked clone, mirrored over NBD before the memory moves), one
# migration, for reference.
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

# ---- TLS certificates for the raw runs, made before anything is timed ----------------
tls=$tmp/tls
mkdir -p "$tls"
cat >"$tls/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
O = kumo-bench
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:127.0.0.1
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
EOF
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 -config "$tls/openssl.cnf" -extensions ca "${ec[@]}" -days 1 \
	-subj "/O=kumo-bench/CN=bench migration CA" -keyout "$tls/ca-key.pem" -out "$tls/ca-cert.pem" 2>/dev/null
for end in server client; do
	openssl req -new -config "$tls/openssl.cnf" "${ec[@]}" -subj "/O=kumo-bench/CN=127.0.0.1" \
		-keyout "$tls/$end-key.pem" -out "$tls/$end.csr" 2>/dev/null
	openssl x509 -req -in "$tls/$end.csr" -CA "$tls/ca-cert.pem" -CAkey "$tls/ca-key.pem" \
		-set_serial $((RANDOM + 1)) -days 1 -extfile "$tls/openssl.cnf" -extensions "$end" \
		-out "$tls/$end-cert.pem" 2>/dev/null
done
openssl verify -CAfile "$tls/ca-cert.pem" "$tls/server-cert.pem" "$tls/client-cert.pem" >/dev/null ||
	{ echo "bench: the raw runs' TLS certificates do not verify" >&2; exit 1; }
# The server's DH group, as Kumo's target gets it (agentd/migrate.c): without one QEMU
# generates 2048-bit parameters as it loads the credentials, 0.4-1.3 s here.
openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 -out "$tls/dh-params.pem" 2>/dev/null

# ---- raw QMP: two bare QEMUs on loopback ---------------------------------------------
qemu_common=(qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 256 -nodefaults
	-display none -no-user-config -drive "file=$tmp/disk.qcow2,if=virtio,cache=none")
qemu-img create -q -f qcow2 -b "$image" -F qcow2 "$tmp/disk.qcow2"
"${qemu_common[@]}" -qmp "unix:$tmp/a.sock,server=on,wait=off" -serial "file:$tmp/a.log" &
pids+=($!)
wait_file_has "$tmp/a.log" KUMO-GUEST-READY 180
# One raw run in one process (no interpreter start-up inside the measured time): start
# the target QEMU, wait for its QMP, raise max-bandwidth, migrate, poll every 10 ms.
# MODE tls: the target starts with its server credentials and -incoming defer, is
# given tls-creds and then migrate-incoming; the source loads its client credentials
# (object-add) and gets tls-creds and tls-hostname with max-bandwidth, all inside the
# timed window as Kumo's agents do. MODE plain clears a source's tls-creds (a QEMU
# that was a TLS target keeps its server's) in the same call as max-bandwidth.
raw_run() { # MODE SOURCE-SOCKET TARGET-SOCKET TARGET-LOG PORT -> "total_ms downtime_ms pid"
	python3 - "$@" "$tls" "${qemu_common[@]}" <<'PY'
import json, os, socket, subprocess, sys, time
mode, src, dst, log, port, tlsdir = sys.argv[1:7]
qemu = sys.argv[7:]
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    f.readline()
    call(f, "qmp_capabilities")
    return f
p = None  # the target QEMU, killed if a call fails (nobody else knows its pid then)
def call(f, cmd, args=None):
    f.write(json.dumps({"execute": cmd, "arguments": args or {}}) + "\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "error" in msg:
            if p is not None:
                p.kill()
            sys.exit(f"raw {mode} run: {cmd}: {msg['error'].get('desc', msg)}")
        if "return" in msg:
            return msg
uri = f"tcp:127.0.0.1:{port}"
if mode == "tls":
    incoming = ["-object", f"tls-creds-x509,id=kumo-bench-srv,dir={tlsdir},endpoint=server,verify-peer=on",
                "-incoming", "defer"]
else:
    incoming = ["-incoming", uri]
a = connect(src)
t0 = time.monotonic()
p = subprocess.Popen(qemu + ["-qmp", f"unix:{dst},server=on,wait=off", "-serial", f"file:{log}"] + incoming,
                     start_new_session=True)
while True:
    try:
        b = connect(dst)
        break
    except OSError:
        time.sleep(0.005)
params = {"max-bandwidth": 1000000000, "tls-creds": "", "tls-hostname": ""}
if mode == "tls":
    call(b, "migrate-set-parameters", {"tls-creds": "kumo-bench-srv"})
    call(b, "migrate-incoming", {"uri": uri})
    call(a, "object-add", {"qom-type": "tls-creds-x509", "id": "kumo-bench-cli", "dir": tlsdir,
                           "endpoint": "client", "verify-peer": True})
    params.update({"tls-creds": "kumo-bench-cli", "tls-hostname": "127.0.0.1"})
call(a, "migrate-set-parameters", params)
call(a, "migrate", {"uri": uri})
while True:
    r = call(a, "query-migrate")["return"]
    if r.get("status") == "completed":
        break
    if r.get("status") in ("failed", "cancelled"):
        p.kill()
        sys.exit(f"raw {mode} migration: " + json.dumps(r))
    time.sleep(0.01)
print(int((time.monotonic() - t0) * 1000), r.get("downtime", -1), p.pid)
call(a, "quit")
PY
}
# Each round migrates the guest on twice, plain then TLS, so load drifts hit both alike.
src_sock=$tmp/a.sock
raw_total=() raw_down=() tls_total=() tls_down=()
for i in $(seq "$runs"); do
	for mode in plain tls; do
		# read, not $(...): the target QEMU holds the pipe open for as long as it runs.
		total='' down='' pid=''
		read -r total down pid < <(raw_run "$mode" "$src_sock" "$tmp/b$i$mode.sock" \
			"$tmp/b$i$mode.log" $((47000 + RANDOM % 2000))) || true
		[ -n "$pid" ] || { echo "bench: raw $mode run $i failed" >&2; exit 1; }
		pids+=("$pid")
		if [ "$mode" = plain ]; then
			raw_total+=("$total") raw_down+=("$down")
		else
			tls_total+=("$total") tls_down+=("$down")
		fi
		src_sock=$tmp/b$i$mode.sock
		echo "raw $mode run $i: total $total ms, downtime $down ms"
	done
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
kumo_total=() kumo_down=() kumo_op=() to=h2
for i in $(seq "$runs"); do
	t0=$(now_ms)
	op=$(kapi "$KUMO_URL/api/v1/instances/bench-mig/actions/migrate" -d "{\"host\": \"$to\"}" | jq -r .id)
	res=$(op_end "$op" 120)
	[ "$(jq -r .status <<<"$res")" = succeeded ] || { echo "bench: $(jq -c '{status, error}' <<<"$res")" >&2; exit 1; }
	kumo_total+=($(($(now_ms) - t0)))
	kumo_down+=("$(jq -r .result.downtime_ms <<<"$res")")
	kumo_op+=("$(jq -r .result.total_ms <<<"$res")")
	echo "kumo run $i: to $to, total ${kumo_total[-1]} ms (operation ${kumo_op[-1]} ms), downtime ${kumo_down[-1]} ms, $(jq -r .result.strategy <<<"$res") (guest paused $(jq -r '.result.paused_ms // 0' <<<"$res") ms)"
	# Where the time went: the controller's phases, then each agent's own steps.
	echo "kumo run $i timings: $(jq -c '.result.timings // {} | del(.target, .source)' <<<"$res")"
	echo "kumo run $i target: $(jq -c '.result.timings.target // {}' <<<"$res")"
	echo "kumo run $i source: $(jq -c '.result.timings.source // {}' <<<"$res")"
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
echo "local disk timings: $(jq -c '.result.timings // {}' <<<"$res")"

rt=$(printf '%s\n' "${raw_total[@]}" | median)
rd=$(printf '%s\n' "${raw_down[@]}" | median)
tt=$(printf '%s\n' "${tls_total[@]}" | median)
td=$(printf '%s\n' "${tls_down[@]}" | median)
kt=$(printf '%s\n' "${kumo_total[@]}" | median)
kd=$(printf '%s\n' "${kumo_down[@]}" | median)
ko=$(printf '%s\n' "${kumo_op[@]}" | median)
ratio() { awk -v k="$1" -v r="$2" 'BEGIN { printf "%.2f", k / r }'; }
# kumo_total_ms is the client's (curl, jq and their start-ups included, as the
# earlier sessions measured); kumo_op_ms the operation's own result.total_ms.
echo "RESULT raw_total_ms=$rt raw_downtime_ms=$rd raw_tls_total_ms=$tt raw_tls_downtime_ms=$td kumo_total_ms=$kt kumo_op_ms=$ko kumo_downtime_ms=$kd ratio_tls=$(ratio "$kt" "$tt") ratio_plain=$(ratio "$kt" "$rt") (the goal, 1.10 or less, is judged on ratio_tls)"
