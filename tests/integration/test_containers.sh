#!/bin/bash
# Containers from an image built at test time and pushed with skopeo: placed by the
# scheduler and run by runc on that host in a netns of their own, logs (tail, follow),
# exec (output, exit codes, timeout, bounded output), limits in the cgroup, a memory
# limit that kills, restart policies, pause/resume, stop (SIGTERM, then SIGKILL),
# re-adoption after the agent is killed, commit -> a new image whose containers (on
# another host) see the change, pulled back by skopeo with the same digest. Bad input:
# unknown image, bad limits, duplicate names, a layer with a "../" entry. A delete whose
# state write fails (a trigger refuses it) answers 500 and starts nothing.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

REPO=kt-ct/busybox
IMG=$REPO:latest
NEW=$REPO:committed
EVIL=kt-ct/traversal:latest
CTS="ct-run ct-cmt ct-child ct-mem ct-fail ct-no ct-always ct-stop ct-grace ct-grace3 ct-grace-bad ct-evil ct-x"
tmp=$(mktemp -d)
FOLLOW_PID=""
DB="$KUMO_LAB_DIR/controller/kumo.db"
sql() { sqlite3 -cmd '.timeout 5000' "$DB" "$@"; }
cleanup() {
	[ -z "$FOLLOW_PID" ] || kill "$FOLLOW_PID" 2>/dev/null || true
	sql "DROP TRIGGER IF EXISTS kt_refuse_deleting" 2>/dev/null || true
	for n in $CTS; do ct_delete "$n"; done
	oci_untag $NEW
	oci_untag $EVIL
	oci_untag $IMG
	rm -rf "$tmp" "$OCI_CERTS"
}
trap cleanup EXIT

# cjson NAME IMAGE COMMAND-JSON [EXTRA-JSON]: a container create body.
cjson() {
	local extra=${4:-}
	[ -n "$extra" ] || extra='{}'
	jq -cn --arg n "$1" --arg i "$2" --argjson c "$3" --argjson x "$extra" \
		'{name: $n, type: "container", image: $i, command: $c} + $x'
}
# runc_state HOST NAME -> the container's status as runc on HOST sees it, or nothing.
runc_state() { runc --root "$KUMO_LAB_DIR/hosts/$1/local/runc" state "$2" 2>/dev/null | jq -r .status || true; }
runc_pid() { runc --root "$KUMO_LAB_DIR/hosts/$1/local/runc" state "$2" 2>/dev/null | jq -r .pid || true; }
# cg_value NAME V1-CONTROLLER V1-FILE V2-FILE -> a file of the container's cgroup, as
# its bundle names it (/kumo/HOST-CLUSTER/NAME)
cg_value() {
	local f cg host
	api GET "/api/v1/instances/$1"
	host=$(jqb .host)
	cg=$(jq -r .linux.cgroupsPath "$KUMO_LAB_DIR/hosts/$host/local/containers/$1/config.json" 2>/dev/null)
	for f in "/sys/fs/cgroup/$2$cg/$3" "/sys/fs/cgroup$cg/$4" "/sys/fs/cgroup/unified$cg/$4"; do
		[ -r "$f" ] && cat "$f" && return 0
	done
	echo "no cgroup file for $1 in '$cg' ($2/$3 or $4)"
}
exited() { api GET "/api/v1/instances/$1" && case "$(jqb .state)" in stopped | crashed) true ;; *) false ;; esac }
is_true() { [ "$(ct_field "$1" "$2")" = true ]; }
online_hosts() {
	api GET /api/v1/hosts
	jqb '.hosts[] | select(.state == "online") | .name'
}
# layer_dir HOST HEX... -> the unpacked layer directory on HOST (by any of the digests)
layer_dir() {
	local h=$1 x
	shift
	for x in "$@"; do
		[ -d "$KUMO_LAB_DIR/hosts/$h/local/oci/layers/$x" ] && echo "$KUMO_LAB_DIR/hosts/$h/local/oci/layers/$x" && return 0
	done
	return 1
}

# ---- the image -----------------------------------------------------------------------
oci_build
DIG=$(oci_layout_digest busybox-oci)
mf=$OCI_DIR/busybox-oci/blobs/sha256/${DIG#sha256:}
LAYER=$(jq -r '.layers[0].digest' "$mf")
LAYER_DIFF=$(jq -r '.rootfs.diff_ids[0]' "$OCI_DIR/busybox-oci/blobs/sha256/$(jq -r .config.digest "$mf" | cut -d: -f2)")
oci_push busybox-oci $IMG || fail "skopeo push of $IMG failed: $SKOPEO_OUT"
api GET /api/v1/instances
n_before=$(jqb '.instances | length')

# ---- bad input: each a clear 4xx, nothing created ------------------------------------
body=$(cjson ct-x kt-ct/nope:missing '["true"]')
api POST /api/v1/instances "$body"
expect_status 404 "unknown image"
grep -qF "kt-ct/nope:missing" <<<"$(jqb .error)" || fail "the 404 does not name the image"
api POST /api/v1/instances "$(cjson ct-x $IMG '["true"]' '{"limits":{"memory_mb":1}}')"
expect_status 400 "memory_mb 1"
[ "$(jqb .field)" = limits.memory_mb ] || fail "memory_mb 1 refused naming '$(jqb .field)', not limits.memory_mb"
api POST /api/v1/instances "$(cjson ct-x $IMG '["true"]' '{"limits":{"cpus":0}}')"
expect_status 400 "cpus 0"
[ "$(jqb .field)" = limits.cpus ] || fail "cpus 0 refused naming '$(jqb .field)', not limits.cpus"
api POST /api/v1/instances "$(cjson ct-x $IMG '["true"]' '{"limits":{"pids":0}}')"
expect_status 400 "pids 0"
api POST /api/v1/instances "$(cjson ct-x $IMG '["true"]' '{"restart":"sometimes"}')"
expect_status 400 "restart sometimes"
[ "$(jqb .field)" = restart ] || fail "a bad restart policy refused naming '$(jqb .field)'"
api POST /api/v1/instances "$(cjson ct-x $IMG '[]')"
expect_status 400 "empty command"
api POST /api/v1/instances "$(cjson ct-x $IMG '["true"]' '{"workdir":"tmp/x"}')"
expect_status 400 "relative workdir"
api POST /api/v1/instances "$(cjson ct-x $IMG '["true"]' '{"env":{"1BAD":"x"}}')"
expect_status 400 "bad env name"
api GET /api/v1/instances/ct-x
expect_status 404 "a refused container exists"
api GET /api/v1/instances
[ "$(jqb '.instances | length')" = "$n_before" ] || fail "refused creates changed the instance list"
pass "unknown image (404 naming it), bad limits (400 naming limits.*), bad restart, command, workdir, env: refused, nothing created"

# ---- a container placed by the scheduler; its logs -----------------------------------
ct_create "$(cjson ct-run $IMG \
	'["/bin/sh","-c","echo hello-from-ct; echo KV=$K; pwd; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo after-trigger; exec sleep 3600"]' \
	'{"env":{"K":"V1"},"workdir":"/tmp","limits":{"cpus":0.5,"memory_mb":64,"pids":64},"labels":{"t":"kt-ct"}}')"
host=$(jqb .result.placement.host)
[ -n "$host" ] && [ "$host" != null ] || fail "create result has no placement host"
wait_until 60 "ct-run running" instance_is ct-run running
api GET /api/v1/instances/ct-run
[ "$(jqb .type)" = container ] || fail "ct-run has type $(jqb .type)"
[ "$(jqb .host)" = "$host" ] || fail "ct-run is on $(jqb .host), placed on $host"
[ "$(jqb '.image.name // .image')" = "$IMG" ] || fail "ct-run shows image $(jqb -c .image)"
[ "$(jqb .image_digest)" = "$DIG" ] || fail "ct-run has image digest $(jqb .image_digest), pushed $DIG"
[ "$(jqb .limits.memory_mb)" = 64 ] && [ "$(jqb .limits.pids)" = 64 ] && [ "$(jqb .limits.cpus)" = 0.5 ] ||
	fail "limits shown wrong: $(jqb -c .limits)"
[ "$(jqb .restart)" = no ] || fail "default restart policy is $(jqb .restart), not no"
[ "$(jqb -c .nics)" = "[]" ] || fail "nics shown as $(jqb -c .nics)"
[ "$(runc_state "$host" ct-run)" = running ] || fail "runc on $host does not run ct-run"
for h in $(online_hosts); do
	[ "$h" = "$host" ] || [ -z "$(runc_state "$h" ct-run)" ] || fail "ct-run also runs on $h"
done
wait_until 30 "ct-run logs show its output" ct_logs_have ct-run "^/tmp$"
logs=$(ct_logs ct-run)
grep -qx KV=V1 <<<"$logs" || fail "env K=V1 did not reach the container: $logs"
grep -qx /tmp <<<"$logs" || fail "workdir /tmp not applied: $logs"
[ "$(ct_logs ct-run tail=1)" = /tmp ] || fail "logs?tail=1 is '$(ct_logs ct-run tail=1)', not the last line /tmp"
pass "ct-run placed on $host by the scheduler, run by runc there; logs (and tail) show its output, env and workdir"

# The cgroup holds the limits; the container has its own netns (lo only, up), no new
# privileges and no CAP_SYS_ADMIN.
[ "$(cg_value ct-run memory memory.limit_in_bytes memory.max)" = $((64 << 20)) ] ||
	fail "memory limit in the cgroup: $(cg_value ct-run memory memory.limit_in_bytes memory.max)"
[ "$(cg_value ct-run pids pids.max pids.max)" = 64 ] || fail "pids limit in the cgroup: $(cg_value ct-run pids pids.max pids.max)"
cpu=$(cg_value ct-run cpu cpu.cfs_quota_us cpu.max)
[ "$cpu" = 50000 ] || [ "$cpu" = "50000 100000" ] || fail "cpu limit in the cgroup: $cpu"
cpid=$(runc_pid "$host" ct-run)
[ "$(readlink "/proc/$cpid/ns/net")" != "$(readlink "/proc/$(agent_pid "$host")/ns/net")" ] ||
	fail "the container shares its host's network namespace"
ct_exec ct-run '["/bin/sh","-c","tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d \" \"; ifconfig lo | grep -o UP"]'
[ "$(jqb .output)" = "$(printf 'lo\nUP')" ] || fail "the container's network is not lo alone and up: $(jqb .output)"
ct_exec ct-run '["ping","-c","1","-W","5","127.0.0.1"]'
[ "$(jqb .exit_code)" = 0 ] || fail "ping on the container's loopback failed (CAP_NET_RAW kept for ping): $(jqb .output)"
ct_exec ct-run '["/bin/sh","-c","grep -E \"^(NoNewPrivs|CapEff)\" /proc/1/status"]'
grep -qE '^NoNewPrivs:[[:space:]]+1$' <<<"$(jqb .output)" || fail "no_new_privs is not set: $(jqb .output)"
capeff=$(jqb .output | awk '/^CapEff/ { print $2 }')
[ -n "$capeff" ] && [ $(((0x$capeff >> 21) & 1)) = 0 ] || fail "the container has CAP_SYS_ADMIN (CapEff $capeff)"
pass "limits are in the cgroup of ct-run; own netns with lo up (ping works); no new privileges; no CAP_SYS_ADMIN"
# seccomp: a user namespace (which needs no capability) and a keyring are refused.
ct_exec ct-run '["/bin/sh","-c","grep ^Seccomp: /proc/self/status; unshare -U true 2>&1; echo unshare=$?"]'
grep -qE '^Seccomp:[[:space:]]+2$' <<<"$(jqb .output)" || fail "no seccomp filter on the container: $(jqb .output)"
grep -q 'unshare=0' <<<"$(jqb .output)" && fail "the container made a user namespace: $(jqb .output)"
grep -qi 'not permitted' <<<"$(jqb .output)" || fail "unshare -U was not refused with EPERM: $(jqb .output)"
pass "a seccomp filter refuses what no application needs (unshare -U: EPERM)"

# ---- exec ----------------------------------------------------------------------------
ct_exec ct-run '["/bin/sh","-c","echo out-$((6*7)); head -n 1 /etc/passwd; exit 3"]'
[ "$(jqb .exit_code)" = 3 ] || fail "exec exit code $(jqb .exit_code), not 3"
[ "$(jqb .output)" = "$(printf 'out-42\nroot:x:0:0:root:/root:/bin/sh')" ] || fail "exec output: $(jqb .output)"
[ "$(jqb .timed_out)" = false ] && [ "$(jqb .truncated)" = false ] || fail "a quick exec is marked timed out or truncated"
ct_exec ct-run '["cat","/no/such/file"]'
[ "$(jqb .exit_code)" = 1 ] || fail "cat of a missing file: exit code $(jqb .exit_code), not 1"
grep -q "No such file" <<<"$(jqb .output)" || fail "stderr of exec is not in its output: $(jqb .output)"
ct_exec ct-run '["id","-u"]'
[ "$(jqb .exit_code)" = 0 ] && [ "$(jqb .output)" = 0 ] || fail "id -u: exit $(jqb .exit_code), output $(jqb .output)"
ct_exec ct-run '["env"]'
grep -qx K=V1 <<<"$(jqb .output)" || fail "exec does not get the container's env: $(jqb .output)"
grep -qx 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' <<<"$(jqb .output)" ||
	fail "exec does not get the image's PATH: $(jqb .output)"
ct_exec ct-run '["sleep","30"]' 1
[ "$(jqb .timed_out)" = true ] || fail "exec of sleep 30 with timeout_s 1 is not timed_out"
# A command that outlasts the link's resend interval (5 s) answers once, at its end:
# a resent query used to drop the pending request and abort the controller.
ct_exec ct-run '["/bin/sh","-c","sleep 7; echo slow-done"]' 20
[ "$(jqb .exit_code)" = 0 ] && jqb .output | grep -q slow-done ||
	fail "a 7 s exec did not answer its output: $BODY"
kill -0 "$(controller_pid)" || fail "the controller died during a long exec"
# A long exec holds up nothing else on its host: another exec answers while it runs.
curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o "$tmp/long.json" \
	"$KUMO_URL/api/v1/instances/ct-run/exec" \
	-d '{"command":["/bin/sh","-c","while [ ! -e /tmp/long-go ]; do sleep 0.2; done; echo long-done"],"timeout_s":60}' &
long=$!
ct_exec ct-run '["echo","meanwhile"]'
[ "$(jqb .output)" = meanwhile ] || fail "the second exec did not answer: $BODY"
kill -0 $long 2>/dev/null || fail "the long exec ended before the second one answered: $(cat "$tmp/long.json")"
ct_exec ct-run '["touch","/tmp/long-go"]'
wait $long || fail "the long exec's request failed"
grep -q long-done <<<"$(jq -r .output "$tmp/long.json")" || fail "the long exec did not answer its output: $(cat "$tmp/long.json")"
pass "a long exec and other commands to its host run side by side"
# An exec whose client goes away is killed on its host at once, not left to run to
# its timeout (60 s here, twice the wait below): the controller cancels the query on
# the agent.
rc=0
curl -sS --max-time 4 --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o /dev/null \
	"$KUMO_URL/api/v1/instances/ct-run/exec" \
	-d '{"command":["/bin/sh","-c","touch /tmp/abandon-started; exec sleep 4247"],"timeout_s":60}' 2>/dev/null || rc=$?
[ "$rc" = 28 ] || fail "the exec to abandon did not hold its client until curl gave up (curl exit $rc)"
ct_exec ct-run '["ls","/tmp/abandon-started"]'
[ "$(jqb .exit_code)" = 0 ] || fail "the exec to abandon never started: $BODY"
abandoned_gone() { ! pgrep -f '^sleep 4247$' >/dev/null; }
wait_until 30 "the abandoned exec's sleep to be killed" abandoned_gone
pass "an exec whose client went away is killed"
ct_exec ct-run '["/bin/sh","-c","yes | head -c 400000"]'
[ "$(jqb .truncated)" = true ] || fail "400000 bytes of output are not truncated"
[ "$(jqb '.output | length')" -le $((256 * 1024)) ] || fail "truncated output is $(jqb '.output | length') bytes"
api POST /api/v1/instances/ct-run/exec '{"command":[]}'
expect_status 400 "exec of an empty command"
api POST /api/v1/instances/ct-run/exec '{"command":["true"],"timeout_s":0}'
expect_status 400 "exec with timeout_s 0"
api POST /api/v1/instances/ct-nope/exec '{"command":["true"]}'
expect_status 404 "exec in a missing container"
api GET "/api/v1/instances/ct-run/logs?tail=0"
expect_status 400 "logs?tail=0"
pass "exec returns output and exit code (0, 1, 3), env and PATH, times out, bounds its output; bad exec input refused"

# ---- the writable layer: its own, measured; image layers untouched ------------------
ldir=$(layer_dir "$host" "${LAYER#sha256:}" "${LAYER_DIFF#sha256:}") || fail "the image layer is not unpacked in $host's local pool"
linode=$(stat -c %i "$ldir")
ct_exec ct-run '["/bin/sh","-c","dd if=/dev/zero of=/bin/kt-written bs=1024 count=1024 2>/dev/null && echo written"]'
[ "$(jqb .output)" = written ] || fail "writing in the container failed: $(jqb .output)"
[ -e "$ldir/bin/kt-written" ] && fail "a write in the container went into the shared image layer"
rw_grown() { [ "$(ct_field ct-run '(.rw_size // 0) >= 1048576')" = true ]; }
wait_until 60 "ct-run rw_size counts the 1 MiB written" rw_grown
pass "writes go to the container's own layer (rw_size $(ct_field ct-run .rw_size)), never to the image layer"

# ---- logs follow: new output streams --------------------------------------------------
curl -sS -N --max-time 90 --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" \
	"$KUMO_URL/api/v1/instances/ct-run/logs?follow=1" >"$tmp/follow" 2>/dev/null &
FOLLOW_PID=$!
wait_until 30 "the follow stream starts with the log so far" grep -q hello-from-ct "$tmp/follow"
grep -q after-trigger "$tmp/follow" && fail "after-trigger in the log before the trigger"
ct_exec ct-run '["touch","/tmp/go"]'
wait_until 30 "the follow stream shows output written after it began" grep -q after-trigger "$tmp/follow"
kill "$FOLLOW_PID" 2>/dev/null || true
wait "$FOLLOW_PID" 2>/dev/null || true
FOLLOW_PID=""
pass "logs?follow=1 streams output the container writes while it is open"

# ---- pause and resume ----------------------------------------------------------------
api POST /api/v1/instances/ct-run/actions/pause
expect_status 202
wait_op "$(jqb .id)"
op_ok
wait_until 20 "ct-run paused" instance_is ct-run paused
[ "$(runc_state "$host" ct-run)" = paused ] || fail "runc does not show ct-run paused"
api POST /api/v1/instances/ct-run/actions/pause
expect_status 409 "pause of a paused container"
# A verb the container type lacks: the verb table's shared answer, not a per-route one.
api POST /api/v1/instances/ct-run/actions/reboot
expect_status 422 "reboot of a container"
[ "$(jqb -r .error)" = "reboot is not supported for containers" ] || fail "reboot of a container answered: $(jqb -r .error)"
api POST /api/v1/instances/ct-run/actions/resume
expect_status 202
wait_op "$(jqb .id)"
op_ok
wait_until 20 "ct-run running" instance_is ct-run running
[ "$(runc_state "$host" ct-run)" = running ] || fail "runc does not show ct-run running after resume"
ct_exec ct-run '["echo","awake"]'
[ "$(jqb .output)" = awake ] || fail "exec after resume: $(jqb .output)"
pass "pause freezes the container (runc: paused), resume thaws it; pausing twice is 409"

# ---- commit: a new image with the change, on another host, pulled back ---------------
others=$(online_hosts | grep -vx "$host" || true)
other=$(head -n 1 <<<"$others")
[ -n "$other" ] || fail "no second online host"
# "sleep" is found through the image's PATH.
ct_create "$(cjson ct-cmt $IMG '["sleep","3600"]' "{\"host\":\"$host\"}")"
wait_until 60 "ct-cmt running" instance_is ct-cmt running
[ "$(stat -c %i "$ldir")" = "$linode" ] || fail "a second container on $host unpacked the image layer again"
nonce=kt-$RANDOM$RANDOM
ct_exec ct-cmt "[\"/bin/sh\",\"-c\",\"echo $nonce >/root/marker && rm /etc/kumo-release && echo ok\"]"
[ "$(jqb .output)" = ok ] || fail "preparing ct-cmt failed: $(jqb .output)"
api POST /api/v1/instances/ct-cmt/actions/commit "{\"image\":\"$NEW\"}"
expect_status 202 "commit"
wait_op "$(jqb .id)" 180
op_ok
opdig=$(jqb '.result.image.manifest // empty')
reg HEAD "/v2/$REPO/manifests/committed" "$ADMIN" -H "Accept: $MT_OCI_MANIFEST"
expect_status 200 "the committed image in the registry"
newdig=$(hdr Docker-Content-Digest)
[ -n "$newdig" ] && [ "$newdig" != "$DIG" ] || fail "the committed image has digest '$newdig'"
[ -z "$opdig" ] || [ "$opdig" = "$newdig" ] || fail "commit result names $opdig, the registry serves $newdig"
api GET /api/v1/images
[ "sha256:$(jqb --arg n "$NEW" '.images[] | select(.name == $n) | .sha256')" = "$newdig" ] ||
	fail "/api/v1/images does not list $NEW with digest $newdig"
wait_until 20 "ct-cmt still running after commit" instance_is ct-cmt running

ct_create "$(cjson ct-child $NEW \
	'["/bin/sh","-c","cat /root/marker; [ -e /etc/kumo-release ] && echo release-present || echo release-gone; exec sleep 3600"]' \
	"{\"host\":\"$other\"}")"
wait_until 60 "ct-child running" instance_is ct-child running
[ "$(ct_field ct-child .image_digest)" = "$newdig" ] || fail "ct-child runs digest $(ct_field ct-child .image_digest), not $newdig"
wait_until 30 "ct-child logs" ct_logs_have ct-child release-
[ "$(ct_logs ct-child)" = "$(printf '%s\nrelease-gone' "$nonce")" ] ||
	fail "a container from the committed image does not see the change: $(ct_logs ct-child)"
ct_exec ct-run '["cat","/root/marker"]'
[ "$(jqb .exit_code)" != 0 ] || fail "the commit changed the original image: ct-run sees /root/marker"

oci_pull $NEW "$tmp/pulled" || fail "skopeo pull of $NEW failed: $SKOPEO_OUT"
[ "$(jq -r '.manifests[0].digest' "$tmp/pulled/index.json")" = "$newdig" ] ||
	fail "skopeo pulled manifest $(jq -r '.manifests[0].digest' "$tmp/pulled/index.json"), the registry serves $newdig"
reg GET "/v2/$REPO/manifests/committed" "$ADMIN" -H "Accept: $MT_OCI_MANIFEST"
[ "$(hdr Docker-Content-Digest)" = "$newdig" ] || fail "manifest GET digest $(hdr Docker-Content-Digest) differs from HEAD $newdig"
pm=$tmp/pulled/blobs/sha256/${newdig#sha256:}
[ "$(jq '.layers | length' "$pm")" = 2 ] && [ "$(jq -r '.layers[0].digest' "$pm")" = "$LAYER" ] ||
	fail "the committed image is not the base layer plus one: $(jq -c .layers "$pm")"
top=$tmp/pulled/blobs/sha256/$(jq -r '.layers[1].digest' "$pm" | cut -d: -f2)
tar -tzf "$top" >"$tmp/top.list" || fail "the committed layer is not a gzip tar"
grep -qE '^(\./)?root/marker$' "$tmp/top.list" || fail "the committed layer lacks root/marker: $(head -n 20 "$tmp/top.list")"
grep -qE '^(\./)?etc/\.wh\.kumo-release$' "$tmp/top.list" || fail "the committed layer lacks the whiteout etc/.wh.kumo-release"
pass "commit -> $NEW ($newdig): a container on $other sees the new file and the deletion; skopeo pulls it back with the digest the registry and /api/v1/images give"

# ---- a memory limit kills --------------------------------------------------------------
ct_create "$(cjson ct-mem $IMG \
	'["/bin/sh","-c","echo waiting; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo allocating; exec dd if=/dev/zero of=/dev/null bs=128M count=1"]' \
	'{"limits":{"memory_mb":32}}')"
wait_until 60 "ct-mem running" instance_is ct-mem running
[ "$(cg_value ct-mem memory memory.limit_in_bytes memory.max)" = $((32 << 20)) ] ||
	fail "ct-mem's cgroup has memory limit $(cg_value ct-mem memory memory.limit_in_bytes memory.max)"
ct_exec ct-mem '["touch","/tmp/go"]'
wait_until 60 "ct-mem killed" exited ct-mem
api GET /api/v1/instances/ct-mem
[ "$(jqb .exit_code)" = 137 ] || [ "$(jqb .oom)" = true ] ||
	fail "ct-mem ended with exit code $(jqb .exit_code), oom $(jqb .oom): not killed by its memory limit"
ct_logs_have ct-mem allocating || fail "ct-mem never got to allocate"
pass "allocating 128 MiB under a 32 MiB limit is killed: state $(jqb .state), exit code $(jqb .exit_code), oom $(jqb .oom)"

# ---- restart policies --------------------------------------------------------------------
crash='["/bin/sh","-c","while [ ! -e /tmp/go ]; do sleep 0.2; done; echo attempt; exit 1"]'
ct_create "$(cjson ct-fail $IMG "$crash" '{"restart":"on-failure"}')"
ct_create "$(cjson ct-no $IMG "$crash" '{"restart":"no"}')"
ct_create "$(cjson ct-always $IMG \
	'["/bin/sh","-c","while [ ! -e /tmp/go ]; do sleep 0.2; done; echo attempt; exit 0"]' '{"restart":"always"}')"
for n in ct-fail ct-no ct-always; do
	wait_until 60 "$n running" instance_is $n running
done
for n in ct-no ct-fail ct-always; do
	ct_exec $n '["touch","/tmp/go"]'
done
wait_until 90 "ct-fail restarted twice" is_true ct-fail '(.restarts // 0) >= 2'
wait_until 90 "ct-always restarted twice" is_true ct-always '(.restarts // 0) >= 2'
[ "$(grep -c '^attempt$' <<<"$(ct_logs ct-fail)")" -ge 2 ] || fail "ct-fail's log does not show two runs"
# ct-no exited as often as ct-fail did the first time; by now it would have restarted.
n=$(ct_field ct-no '.restarts // 0')
[ "$n" = 0 ] || fail "restart policy no restarted ct-no $n times"
wait_until 30 "ct-no exited" exited ct-no
api GET /api/v1/instances/ct-no
[ "$(jqb .exit_code)" = 1 ] || fail "ct-no exit code $(jqb .exit_code), not 1"
[ "$(grep -c '^attempt$' <<<"$(ct_logs ct-no)")" = 1 ] || fail "ct-no ran more than once"
[ "$(ct_field ct-fail .exit_code)" = 1 ] || fail "ct-fail's last exit code is $(ct_field ct-fail .exit_code)"
pass "on-failure and always restart a container that exits (restarts $(ct_field ct-fail .restarts)); no does not"

# ---- stop: SIGTERM first ------------------------------------------------------------------
ct_create "$(cjson ct-stop $IMG '["/bin/sh","-c","trap \"echo got-term; exit 0\" TERM; echo ready; while :; do sleep 0.2; done"]')"
wait_until 30 "ct-stop ready" ct_logs_have ct-stop ready
api POST /api/v1/instances/ct-stop/actions/stop '{"timeout_s":60}'
expect_status 202
wait_op "$(jqb .id)"
op_ok
wait_until 20 "ct-stop stopped" instance_is ct-stop stopped
ct_logs_have ct-stop got-term || fail "ct-stop never saw SIGTERM"
[ "$(ct_field ct-stop .exit_code)" = 0 ] || fail "ct-stop exited $(ct_field ct-stop .exit_code) after its TERM handler, not 0"
pass "stop sends SIGTERM first: the handler ran and the container exited 0"

# ---- a stop the host's disk would not keep fails, naming the disk's error ----------------
# ct-stop again, its stop marker's place taken by a directory: the agent cannot put the
# marker (the shim still sees one, so nothing restarts the container). The container
# stops, but the stop fails saying so: after a power cut the host would call it crashed.
api POST /api/v1/instances/ct-stop/actions/start
expect_status 202
wait_op "$(jqb .id)"
op_ok
h=$(ct_field ct-stop .host)
mkdir "$KUMO_LAB_DIR/hosts/$h/local/containers/ct-stop/stop"
api POST /api/v1/instances/ct-stop/actions/stop '{"timeout_s":5}'
expect_status 202
wait_op "$(jqb .id)"
rmdir "$KUMO_LAB_DIR/hosts/$h/local/containers/ct-stop/stop"
[ "$(jqb .status)" = failed ] || fail "a stop whose marker could not be written $(jqb .status)"
jqb .error | grep -q "container ct-stop stopped, but its stop marker is not on disk (cannot write .*/stop: Is a directory)" ||
	fail "the failed stop does not say the container stopped and why the marker is not on disk: $(jqb .error)"
wait_until 20 "ct-stop stopped" instance_is ct-stop stopped
pass "a stop whose marker the disk would not keep fails naming the disk's error; the container is stopped"

# ---- the stop grace: 10 s for a container, or the instance's stop_timeout_s ----------------
# The README's container: sh as PID 1 ignores SIGTERM, so only the grace ends it.
# Both stops run at once: the 3 s grace passes inside the 10 s one.
ct_create "$(cjson ct-grace $IMG '["sh","-c","echo hello; sleep 3600"]')"
ct_create "$(cjson ct-grace3 $IMG '["sh","-c","echo hello; sleep 3600"]' '{"stop_timeout_s":3}')"
wait_until 30 "ct-grace says hello" ct_logs_have ct-grace hello
[ "$(ct_field ct-grace .stop_timeout_s)" = 10 ] || fail "a container shows stop_timeout_s $(ct_field ct-grace .stop_timeout_s), not 10"
[ "$(ct_field ct-grace3 .stop_timeout_s)" = 3 ] || fail "ct-grace3 shows stop_timeout_s $(ct_field ct-grace3 .stop_timeout_s), not 3"
api POST /api/v1/instances/ct-grace/actions/stop
expect_status 202
grace_op=$(jqb .id)
api POST /api/v1/instances/ct-grace3/actions/stop
expect_status 202
wait_op "$(jqb .id)"
op_ok
[ "$(jqb .result.grace_s)" = 3 ] || fail "a stop of a container with stop_timeout_s 3 had a grace of $(jqb .result.grace_s) s"
wait_op "$grace_op"
op_ok
[ "$(jqb .result.grace_s)" = 10 ] || fail "a container's stop without timeout_s had a grace of $(jqb .result.grace_s) s, not 10"
[ "$(jqb .result.forced)" = true ] || fail "sh as PID 1 ignores SIGTERM, but the stop was not forced: $(jqb -c .result)"
for bad in 0 3601 '"10"'; do
	api POST /api/v1/instances "$(cjson ct-grace-bad $IMG '["true"]' "{\"stop_timeout_s\":$bad}")"
	expect_status 400 "stop_timeout_s $bad"
	[ "$(jqb .field)" = stop_timeout_s ] || fail "the 400 for stop_timeout_s $bad names field $(jqb .field)"
done
pass "a stop without timeout_s gives a container 10 s (the README's container is killed after it), or its stop_timeout_s; bad stop_timeout_s 400"

# ---- a write that fails with its operation: no 202, nothing started -----------------------
# A delete's "deleting" state commits with its operation: when that write fails the
# answer says so and no operation runs (it once went after the 202, unchecked).
sql "CREATE TRIGGER kt_refuse_deleting BEFORE UPDATE OF state ON instances
     WHEN NEW.state = 'deleting' AND OLD.name = 'ct-grace3'
     BEGIN SELECT RAISE(ABORT, 'kt: refused by the test'); END"
# Only operations from now on count: a run just before this one deleted its ct-grace3.
refused_at=$(date +%s%3N)
api DELETE /api/v1/instances/ct-grace3
expect_status 500 "a delete whose state write fails"
jqb .error | grep -q "cannot record the delete" || fail "the 500 does not say the delete was not recorded"
sql "DROP TRIGGER kt_refuse_deleting"
api GET "/api/v1/operations?limit=20"
[ "$(jqb --argjson t "$refused_at" '[.operations[] | select(.target == "instances/ct-grace3" and .kind == "instance-delete" and .created_at >= $t)] | length')" = 0 ] ||
	fail "a delete refused with 500 left an operation: $(jqb -c '.operations[0]')"
instance_is ct-grace3 stopped || fail "ct-grace3 is $(ct_field ct-grace3 .state) after a refused delete, not stopped"
pass "a delete whose write fails in its operation's transaction answers 500, starts no operation, leaves the container as it was"

# ---- the agent dies, the container does not; re-adopted ----------------------------------
api GET /api/v1/instances/ct-run
pid=$(jqb .pid)
cpid=$(runc_pid "$host" ct-run)
apid=$(agent_pid "$host")
# An exec running when the agent dies is answered as lost once the agent is back,
# not left to its 60 s deadline, and the agent's next run kills it: its answer has
# nowhere to go. The agent is killed only once the exec runs in the container (its
# marker file) - an exec still on its way must not run on the next agent instead.
lostgo=/tmp/lost-go-$$
lostpat="-c touch /tmp/lost-started; while \\[ ! -e $lostgo" # the exec, not the curl asking for it
curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o "$tmp/lost.json" \
	"$KUMO_URL/api/v1/instances/ct-run/exec" \
	-d '{"command":["/bin/sh","-c","touch /tmp/lost-started; while [ ! -e '"$lostgo"' ]; do sleep 0.2; done"],"timeout_s":60}' &
lost=$!
exec_running() {
	api POST /api/v1/instances/ct-run/exec '{"command":["test","-e","/tmp/lost-started"]}'
	[ "$STATUS" = 200 ] && [ "$(jqb .exit_code)" = 0 ]
}
wait_until 60 "the exec runs in ct-run" exec_running
killed_at=$(date +%s%3N)
kill -9 "$apid"
wait_until 10 "the agent of $host gone" proc_gone "$apid"
kill -0 "$cpid" 2>/dev/null || fail "the container died with its agent"
kill -0 $lost 2>/dev/null || fail "the exec answered before its agent died: $(cat "$tmp/lost.json")"
pgrep -f -- "$lostpat" >/dev/null || fail "the exec died with its agent"
lab up --hosts 3 >/dev/null
wait_until 60 "$host's agent back" agent_restarted "$host" "$killed_at"
wait $lost || true
grep -Eq "restarted|went offline" "$tmp/lost.json" || fail "an exec lost with its agent was not answered as such: $(cat "$tmp/lost.json")"
orphan_gone() { ! pgrep -f -- "$lostpat" >/dev/null; }
wait_until 30 "the orphaned exec killed by the agent's next run" orphan_gone
wait_until 30 "ct-run running after re-adoption" instance_is ct-run running
# An exec that reached the agent's socket but not the agent, which then died, must not
# run on the next agent (nanomsg hands a pending request on when the agent is back):
# at most once. The agent is stopped until the exec waits in its socket.
apid=$(agent_pid "$host")
api GET "/api/v1/hosts/$host"
aport=$(jqb .address)
aport=${aport##*:}
kill -STOP "$apid"
curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o "$tmp/late.json" \
	"$KUMO_URL/api/v1/instances/ct-run/exec" -d '{"command":["touch","/tmp/late-ran"]}' &
late=$!
queued() { [ "$(in_host "$host" ss -Htn state established "( sport = :$aport )" | awk '{s += $1} END {print s + 0}')" -gt 0 ]; }
wait_until 30 "the exec in the stopped agent's socket" queued
killed_at=$(date +%s%3N)
kill -9 "$apid"
wait_until 10 "the agent of $host gone" proc_gone "$apid"
lab up --hosts 3 >/dev/null
wait_until 60 "$host's agent back" agent_restarted "$host" "$killed_at"
wait $late || true
jq -e .error "$tmp/late.json" >/dev/null || fail "an exec sent to an agent that died was answered as run: $(cat "$tmp/late.json")"
wait_until 30 "ct-run running after the second restart" instance_is ct-run running
ct_exec ct-run '["ls","/tmp"]'
if grep -qx late-ran <<<"$(jqb .output)"; then fail "an exec sent before its agent died ran on the next agent"; fi
pass "an exec that never reached its agent is answered with an error and not run by the next one: $(jq -r .error "$tmp/late.json")"
[ "$(ct_field ct-run .pid)" = "$pid" ] || fail "after the agent restart ct-run has pid $(ct_field ct-run .pid), not $pid"
[ "$(runc_pid "$host" ct-run)" = "$cpid" ] || fail "the container process changed across the agent restart"
ct_exec ct-run '["cat","/bin/kt-written"]'
[ "$(jqb .exit_code)" = 0 ] || fail "exec in the re-adopted container failed"
ct_logs_have ct-run after-trigger || fail "logs of the re-adopted container are gone"
pass "ct-run kept running through an agent kill -9 (same pid) and was re-adopted: exec and logs work; the exec it was running is answered as lost and killed"

# restart: a new process, the log goes on.
api POST /api/v1/instances/ct-run/actions/restart
expect_status 202
wait_op "$(jqb .id)"
op_ok
wait_until 30 "ct-run running after restart" instance_is ct-run running
[ "$(runc_pid "$host" ct-run)" != "$cpid" ] || fail "restart left the same container process"
two() { [ "$(grep -c '^hello-from-ct$' <<<"$(ct_logs ct-run)")" -ge 2 ]; }
wait_until 30 "ct-run's second run in its log" two
ct_exec ct-run '["cat","/bin/kt-written"]'
[ "$(jqb .exit_code)" = 0 ] || fail "the writable layer did not survive a restart"
# stop: pid 1 ignores SIGTERM (sleep has no handler), so SIGKILL after the timeout.
api POST /api/v1/instances/ct-run/actions/stop '{"timeout_s":2}'
expect_status 202
wait_op "$(jqb .id)"
op_ok
wait_until 30 "ct-run stopped" instance_is ct-run stopped
[ "$(ct_field ct-run .exit_code)" = 137 ] || fail "a container that ignores SIGTERM exited $(ct_field ct-run .exit_code), not 137 (SIGKILL)"
[ "$(ct_field ct-run .signal)" = 9 ] || fail "a container killed by SIGKILL shows signal $(ct_field ct-run .signal), not 9"
[ -z "$(runc_state "$host" ct-run)" ] || [ "$(runc_state "$host" ct-run)" = stopped ] || fail "runc still runs ct-run"
pass "restart runs it anew (log appended, writable layer kept); stop ends one ignoring SIGTERM with SIGKILL (exit code 137, signal 9)"

# ---- more bad input: duplicate names, a layer with a "../" entry ------------------------
api POST /api/v1/instances "$(cjson ct-cmt $IMG '["true"]')"
expect_status 409 "duplicate name"
api GET /api/v1/instances/ct-cmt
[ "$(jqb .state)" = running ] && [ "$(jqb -c .command)" = '["sleep","3600"]' ] || fail "a refused duplicate changed ct-cmt"
api POST /api/v1/instances "$(cjson ct-x $IMG '["true"]' '{"nics":[{"network":"n1"}]}')"
[ "${STATUS:0:1}" = 4 ] || fail "a container with a NIC on a missing network got HTTP $STATUS"
api GET /api/v1/instances/ct-x
expect_status 404

oci_push evil-oci $EVIL || fail "skopeo push of $EVIL failed: $SKOPEO_OUT"
EDIG=$(oci_layout_digest evil-oci)
emf=$OCI_DIR/evil-oci/blobs/sha256/${EDIG#sha256:}
ELAYER=$(jq -r '.layers[1].digest' "$emf")
EDIFF=$(jq -r '.rootfs.diff_ids[1]' "$OCI_DIR/evil-oci/blobs/sha256/$(jq -r .config.digest "$emf" | cut -d: -f2)")
api POST /api/v1/instances "$(cjson ct-evil $EVIL '["true"]')"
expect_status 202 "create from the evil image"
wait_op "$(jqb .id)" 120
opstatus=$(jqb .status)
operr=$(jqb '.error // ""')
api GET /api/v1/instances/ct-evil
[ "$opstatus" = failed ] || [ "$(jqb .state)" = error ] || fail "a container from a layer with ../evil did not fail (operation $opstatus, state $(jqb .state))"
[ "$(jqb .state)" != running ] || fail "a container from a layer with ../evil runs"
grep -qF '../evil' <<<"$operr $(jqb '.error // ""')" || fail "the error does not name the entry ../evil: '$operr' / '$(jqb .error)'"
found=$(find "$KUMO_LAB_DIR" -name evil 2>/dev/null | head -n 5)
[ -z "$found" ] || fail "the ../evil entry was extracted: $found"
for h in $(online_hosts); do
	layer_dir "$h" "${ELAYER#sha256:}" "${EDIFF#sha256:}" >/dev/null && fail "the refused layer is unpacked on $h"
	found=$(find "$KUMO_LAB_DIR/hosts/$h/local/oci" -name harmless 2>/dev/null | head -n 1)
	[ -z "$found" ] || fail "a refused layer left files behind: $found"
done
pass "duplicate names are 409; a layer with ../evil is refused naming the entry, nothing extracted"

# ---- runc ran every container in a cgroup of its own --------------------------------------
api GET /api/v1/instances
for n in $(jqb '.instances[] | select(.type == "container") | .name'); do
	logs=$(ct_logs "$n" "tail=1000") || continue
	if grep -Eq "cgroup is not empty|non-empty cgroup" <<<"$logs"; then
		fail "runc started $n in a non-empty cgroup: $(grep -E 'cgroup' <<<"$logs" | head -n 3)"
	fi
done
pass "no container's log has runc's non-empty cgroup warning"

# ---- delete ---------------------------------------------------------------------------------
chost=$(ct_field ct-cmt .host)
api DELETE /api/v1/instances/ct-cmt
expect_status 409 "delete of a running container without force"
api DELETE "/api/v1/instances/ct-cmt?force=1"
expect_status 202
wait_op "$(jqb .id)"
op_ok
api GET /api/v1/instances/ct-cmt
expect_status 404
[ -z "$(runc_state "$chost" ct-cmt)" ] || fail "runc still knows ct-cmt after delete"
[ ! -e "$KUMO_LAB_DIR/hosts/$chost/local/containers/ct-cmt" ] || fail "ct-cmt's files are left on $chost"
pass "delete needs force while running; then the container and its files are gone"
