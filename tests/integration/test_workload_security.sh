#!/bin/bash
# What a container cannot do to its host: fill its disk with output (console.log is
# rotated by size and the API still serves the tail), run without limits (a fork bomb
# stops at the default pids limit, memory has the default cap), start in /proc (a
# workdir under /proc, /sys or /dev is refused), read the paths Docker masks.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

IMG=kt-ws/busybox:latest
CTS="ws-log ws-bomb ws-x"
cleanup() {
	for n in $CTS; do ct_delete "$n"; done
	oci_untag $IMG
	rm -rf "$OCI_CERTS"
}
trap cleanup EXIT

cjson() {
	local extra=${4:-}
	[ -n "$extra" ] || extra='{}'
	jq -cn --arg n "$1" --arg i "$2" --argjson c "$3" --argjson x "$extra" \
		'{name: $n, type: "container", image: $i, command: $c} + $x'
}
ct_dir() {
	api GET "/api/v1/instances/$1"
	echo "$KUMO_LAB_DIR/hosts/$(jqb .host)/local/containers/$1"
}
cg_file() {
	local cg dir f
	dir=$(ct_dir "$1")
	cg=$(jq -r .linux.cgroupsPath "$dir/config.json")
	for f in "/sys/fs/cgroup/$2$cg/$3" "/sys/fs/cgroup$cg/$4" "/sys/fs/cgroup/unified$cg/$4"; do
		[ -r "$f" ] && cat "$f" && return 0
	done
	echo "none"
}

oci_build
oci_push busybox-oci $IMG || fail "skopeo push of $IMG failed: $SKOPEO_OUT"
# Blobs on the shared pool and layers on hosts: root's alone.
open_to_all=$(find "$KUMO_LAB_DIR/shared/oci" "$KUMO_LAB_DIR"/hosts/*/local/oci -maxdepth 0 -perm /o=rwx)
for b in $(jq -r '.layers[].digest, .config.digest' "$OCI_DIR/busybox-oci/blobs/sha256/$(oci_layout_digest busybox-oci | cut -d: -f2)"); do
	f=$KUMO_LAB_DIR/shared/oci/blobs/sha256/${b#sha256:}
	[ -e "$f" ] || fail "blob $b is not in the shared store"
	open_to_all="$open_to_all$(find "$f" -perm /o=rwx)"
done
[ -z "$open_to_all" ] || fail "readable by every user: $open_to_all"
pass "blobs and the store's directories, and the hosts' layer directories, are not world-readable"

# ---- workdir: nothing in /proc, /sys or /dev ---------------------------------------------
for wd in /proc/self/fd/3 /proc //sys/fs /tmp/../dev/shm; do
	api POST /api/v1/instances "$(cjson ws-x $IMG '["true"]' "{\"workdir\":\"$wd\"}")"
	expect_status 400 "workdir $wd"
	[ "$(jqb .field)" = workdir ] || fail "workdir $wd refused naming '$(jqb .field)', not workdir"
done
api GET /api/v1/instances/ws-x
expect_status 404 "a container with a refused workdir exists"
pass "workdir /proc/self/fd/3, /proc, //sys/fs, /tmp/../dev/shm: 400 naming workdir"

# ---- output without end: the log stays bounded, the tail is served -----------------------
# 300 MB of output (about 30 rotations of the 10 MiB file), then a last line.
MB=300
ct_create "$(cjson ws-log $IMG \
	"[\"/bin/sh\",\"-c\",\"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c ${MB}000000; echo; echo last-line-of-ws-log; exec sleep 3600\"]")"
dir=$(ct_dir ws-log)
biggest=0
log_done() {
	local f s
	for f in "$dir"/console.log*; do
		case $f in *.offsets) continue ;; esac
		s=$(stat -c %s "$f" 2>/dev/null || echo 0)
		[ "$s" -le $biggest ] || biggest=$s
	done
	[ "$(ct_logs ws-log tail=1)" = last-line-of-ws-log ]
}
wait_until 600 "ws-log wrote ${MB} MB and its last line" log_done
total=$(cat "$dir"/console.log "$dir"/console.log.[0-9] 2>/dev/null | wc -c)
files=$(find "$dir" -maxdepth 1 -name 'console.log*' ! -name '*.offsets' | wc -l)
[ "$biggest" -le $((10 << 20)) ] || fail "a console log file grew to $biggest bytes (cap 10 MiB)"
[ "$files" -le 3 ] || fail "$files console log files kept (at most 3): $(ls -l "$dir")"
[ "$total" -le $((30 << 20)) ] || fail "the console logs hold $total bytes (at most 30 MiB)"
[ "$total" -ge $((20 << 20)) ] || fail "the console logs hold only $total bytes: not rotated, dropped?"
tail3=$(ct_logs ws-log tail=3)
[ "$(sed -n 3p <<<"$tail3")" = last-line-of-ws-log ] &&
	[ "$(sed -n 1p <<<"$tail3" | cut -c1-10)" = 0123456789 ] ||
	fail "logs?tail=3 after ${MB} MB: '$tail3'"
# Without tail: the oldest 1 MiB still kept (a reply over nanomsg's default 1 MiB
# receive limit, which the controller's link sockets raise).
[ "$(ct_logs ws-log | wc -c)" -eq $((1 << 20)) ] || fail "logs without tail are not the oldest 1 MiB kept"
pass "${MB} MB of output: console.log files at most 10 MiB (largest $biggest), $files files, $total bytes in all; logs?tail serves the last lines"

# ---- default limits: a fork bomb stops at 1024 pids --------------------------------------
ct_create "$(cjson ws-bomb $IMG '["/bin/sh","-c","exec sleep 3600"]')"
[ "$(cg_file ws-bomb pids pids.max pids.max)" = 1024 ] ||
	fail "a container without limits has pids.max $(cg_file ws-bomb pids pids.max pids.max), not 1024"
[ "$(cg_file ws-bomb memory memory.limit_in_bytes memory.max)" = $((512 << 20)) ] ||
	fail "a container without limits has memory limit $(cg_file ws-bomb memory memory.limit_in_bytes memory.max)"
api GET /api/v1/instances/ws-bomb
[ "$(jqb .limits.pids)" = null ] || fail "the container's own limits show $(jqb -c .limits)"
# Forks until the kernel refuses (each child sleeps, so all of them count at once).
# The children let go of the exec's output pipe: holding it, they kept the exec
# waiting out its whole 60 s timeout after the shell had ended.
ct_exec ws-bomb '["/bin/sh","-c","n=0; while [ $n -lt 3000 ]; do sleep 600 </dev/null >/dev/null 2>&1 & n=$((n+1)); done 2>/dev/null; exit 0"]' 60
cur=$(cg_file ws-bomb pids pids.current pids.current)
refused=$(cg_file ws-bomb pids pids.events pids.events | awk '$1 == "max" { print $2 }')
[ "$cur" -le 1024 ] && [ "$cur" -ge 1000 ] || fail "the fork bomb left $cur processes (limit 1024)"
[ -n "$refused" ] && [ "$refused" -gt 0 ] || fail "no fork was refused by the pids limit (pids.events: $refused)"
kill -0 "$(agent_pid "$(ct_field ws-bomb .host)")" || fail "the agent died during the fork bomb"
pass "a container without limits: pids.max 1024 and memory 512 MiB in its cgroup; a fork bomb stopped at $cur processes ($refused forks refused)"
ct_delete ws-bomb

# ---- masked and read-only paths ---------------------------------------------------------
# Docker's list; only those this kernel has can be checked.
masked=""
for p in /proc/keys /proc/timer_list /proc/sched_debug /proc/interrupts /proc/kcore /proc/latency_stats; do
	[ -e "$p" ] && masked="$masked $p"
done
[ -n "$masked" ] || fail "none of the masked /proc files exists on this host"
script="for p in $masked; do echo \$p=\$(cat \$p | wc -c); done; ls /sys/firmware | wc -l
echo ws > /proc/sys/kernel/hostname && echo proc-sys-writable; true"
ct_exec ws-log "$(jq -cn --arg s "$script" '["/bin/sh", "-c", $s]')"
out=$(jqb .output)
for p in $masked; do
	grep -qx "$p=0" <<<"$out" || fail "$p is readable in a container: $out"
done
grep -qx 0 <<<"$out" || fail "/sys/firmware is not masked: $out"
grep -q proc-sys-writable <<<"$out" && fail "/proc/sys is writable in a container: $out"
grep -qi "read-only" <<<"$out" || fail "writing /proc/sys was not refused as read-only: $out"
pass "masked in a container:$masked /sys/firmware; /proc/sys read-only"

# ---- capabilities: NET_RAW only when asked for (or nothing is said) ----------------------
api POST /api/v1/instances "$(cjson ws-x $IMG '["true"]' '{"capabilities":["SYS_ADMIN"]}')"
expect_status 400 "capabilities SYS_ADMIN"
[ "$(jqb .field)" = capabilities ] || fail "SYS_ADMIN refused naming '$(jqb .field)', not capabilities"
ct_create "$(cjson ws-x $IMG '["/bin/sh","-c","exec sleep 3600"]' '{"capabilities":[]}')"
[ "$(ct_field ws-x ".capabilities | tojson")" = "[]" ] || fail "capabilities shown as $(jqb -c .capabilities)"
ct_exec ws-x '["/bin/sh","-c","grep ^CapEff: /proc/self/status; cat /proc/sys/net/ipv4/ping_group_range; ping -c 1 -W 2 127.0.0.1 >/dev/null 2>&1 && echo ping-ok; true"]'
out=$(jqb .output)
capeff=$(awk '/^CapEff/ { print $2 }' <<<"$out")
[ -n "$capeff" ] && [ $(((0x$capeff >> 13) & 1)) = 0 ] || fail "capabilities [] still holds CAP_NET_RAW: $out"
# Every group of the container: 0-65535 in a user namespace (its gids), else all.
grep -qE '^0[[:space:]]+(2147483647|65535)$' <<<"$out" || fail "ping_group_range is not open in the container: $out"
grep -q ping-ok <<<"$out" && fail "busybox ping (raw sockets) worked without CAP_NET_RAW: $out"
ct_exec ws-log '["/bin/sh","-c","grep ^CapEff: /proc/self/status; ping -c 1 -W 2 127.0.0.1 >/dev/null 2>&1 && echo ping-ok; true"]'
capeff=$(jqb .output | awk '/^CapEff/ { print $2 }')
[ $(((0x$capeff >> 13) & 1)) = 1 ] && jqb .output | grep -q ping-ok ||
	fail "a container that asks nothing lost CAP_NET_RAW or ping: $(jqb .output)"
pass "capabilities: SYS_ADMIN refused (400); [] drops CAP_NET_RAW (ping_group_range open); default keeps it, ping works"

# ---- seccomp: an allow-list, as Docker's default profile ---------------------------------
cfg=$(ct_dir ws-x)/config.json
[ "$(jq -r .linux.seccomp.defaultAction "$cfg")" = SCMP_ACT_ERRNO ] ||
	fail "the seccomp profile does not refuse by default: $(jq -c '.linux.seccomp | del(.syscalls)' "$cfg")"
jq -e '.linux.seccomp.syscalls[0].names | index("read") and (index("mount") | not) and (index("unshare") | not)' "$cfg" >/dev/null ||
	fail "the allow-list is not as expected"
# Not on the list, and needing no capability: refused (EPERM) all the same.
ct_exec ws-x '["/bin/sh","-c","grep ^Seccomp: /proc/self/status; unshare -U true 2>&1; echo rc=$?; echo works"]'
grep -qE '^Seccomp:[[:space:]]+2$' <<<"$(jqb .output)" && grep -q works <<<"$(jqb .output)" ||
	fail "no seccomp filter, or the shell did not run under it: $(jqb .output)"
grep -q 'rc=0' <<<"$(jqb .output)" && fail "unshare -U worked under the allow-list: $(jqb .output)"
pass "seccomp: default ERRNO with Docker's allow-list; a shell runs, unshare -U is refused"
