#!/bin/bash
# Operations are jobs that can be cancelled or time out with nothing left behind:
# a VM create cancelled while its image is cloned, and while its QEMU boots, ends
# "cancelled" with what was undone, and leaves no QEMU, no disk or run files, no tap,
# and its name free for a new create; a create with timeout_s=1 fails as "timed out"
# and is cleaned the same way; a cancel survives a kill -9 of the controller right
# after it, and a kill -9 of the agent that heard it before it could undo (the next
# agent finishes the undo, for a VM and, through its driver, for a container); a
# finished operation answers 409, a viewer 403.
. "$(dirname "$0")/lib.sh"

NET=opc-net
CIDR=10.67.0.0/24
NAMES="opc1 opc2 opc3 opc4 opc5 opc6"

cleanup() {
	for n in $NAMES; do api DELETE "/api/v1/instances/$n?force=1" >/dev/null 2>&1 || true; done
	local end=$((SECONDS + 120))
	for n in $NAMES; do
		while [ $SECONDS -lt $end ] && ! instance_absent "$n"; do sleep 1; done
	done
	net_delete $NET
}
trap cleanup EXIT

instance_absent() {
	api GET "/api/v1/instances/$1"
	[ "$STATUS" = 404 ]
}

# vm_json NAME [EXTRA-FIELDS]: a VM from the test image with a NIC on $NET (a tap).
vm_json() {
	printf '{"name":"%s","type":"vm","vcpus":1,"memory":{"mb":256},
	"disks":[{"name":"root","image":"%s","bus":"virtio"}],
	"nics":[{"network":"%s","vlan":10,"model":"virtio"}]%s}' "$1" "$TEST_IMAGE" "$NET" "${2:-}"
}

# qemu_pids NAME: QEMU processes started for instance NAME (its -name argument).
qemu_pids() {
	local p
	for p in /proc/[0-9]*; do
		{ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "^[^ ]*qemu-system[^ ]* -name $1 " &&
			echo "${p#/proc/}"
	done
	return 0
}

op_status_final() { case "$1" in succeeded | failed | cancelled) return 0 ;; esac; return 1; }

# leftovers NAME HOST IFNAME: what of instance NAME is still anywhere; empty when none.
leftovers() {
	local name=$1 host=$2 ifname=$3
	[ -n "$(qemu_pids "$name")" ] && echo "qemu $(qemu_pids "$name")"
	find "$KUMO_LAB_DIR/hosts" "$KUMO_LAB_DIR/shared" -name "*$name*" 2>/dev/null | sed 's/^/file /'
	if [ -n "$ifname" ] && [ "$ifname" != null ] &&
		ip -n "$(host_ns "$host")" link show "$ifname" >/dev/null 2>&1; then
		echo "tap $ifname on $host"
	fi
	api GET "/api/v1/instances/$name"
	[ "$STATUS" = 404 ] || echo "instance record ($STATUS $(jqb .state))"
	return 0
}
nothing_left() { [ -z "$(leftovers "$@")" ]; }
# wait_nothing_left NAME HOST IFNAME: waits, and names what is left when it fails.
wait_nothing_left() {
	local end=$((SECONDS + 60))
	while ! nothing_left "$@"; do
		[ $SECONDS -ge $end ] && fail "left of $1 after 60 s: $(leftovers "$@" | tr '\n' ';')"
		sleep 0.5
	done
}

# Host and tap name of an instance being created (empty while unknown).
where() {
	api GET "/api/v1/instances/$1"
	[ "$STATUS" = 200 ] || return 0
	echo "$(jqb .host) $(jqb '.nics[0].ifname')"
}

wait_until 60 "3 hosts online" all_online 3
for n in $NAMES; do api DELETE "/api/v1/instances/$n?force=1" >/dev/null 2>&1 || true; done
net_delete $NET
api POST /api/v1/networks "{\"name\":\"$NET\",\"mode\":\"nat\",\"cidr\":\"$CIDR\",\"vlans\":[10]}"
expect_status 201 "create $NET"

# ---- refusals: a viewer 403, a finished operation 409, no such operation 404 ------------
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"opc-viewer"}'
expect_status 201
viewer=$(jqb .token)
api POST /api/v1/hosts/h1/actions/probe
expect_status 202
probe=$(jqb .id)
wait_op "$probe"
op_ok
api POST "/api/v1/operations/$probe/actions/cancel" "" "$viewer"
expect_status 403 "a viewer cancels"
api POST "/api/v1/operations/$probe/actions/cancel"
expect_status 409 "cancel of a finished operation"
jqb .error | grep -q "succeeded already" || fail "the 409 does not say why: $(jqb .error)"
api GET "/api/v1/operations/$probe"
[ "$(jqb .status)" = succeeded ] || fail "a refused cancel changed the operation: $(jqb .status)"
api POST /api/v1/operations/op-does-not-exist/actions/cancel
[ "$STATUS" = 404 ] || [ "$STATUS" = 400 ] || fail "cancel of no operation answered $STATUS"
pass "cancel: a viewer gets 403, a finished operation 409 with the reason, nothing changed"

# hold_agent HOST / release_agent: SIGSTOP HOST's agent so that a create pinned to it is
# still in its first steps when the cancel comes, however fast the machine (a create can
# finish in 0.3 s on a quiet one: cancelling after the POST raced it).
hold_agent() {
	held_pid=$(agent_pid "$1")
	kill -STOP "$held_pid"
	trap 'kill -CONT $held_pid 2>/dev/null; cleanup' EXIT
}
release_agent() {
	kill -CONT "$held_pid"
	trap cleanup EXIT
}

# ---- cancel while the image is cloned ------------------------------------------------------
hold_agent h3
api POST /api/v1/instances "$(vm_json opc1 ',"host":"h3"')"
expect_status 202 "create opc1"
op=$(jqb .id)
read -r host ifname <<<"$(where opc1)"
api POST "/api/v1/operations/$op/actions/cancel"
expect_status 202 "cancel of the create"
[ "$(jqb .cancel)" = cancelled ] || fail "the cancel is not recorded on the operation: $BODY"
release_agent
wait_op "$op"
[ "$(jqb .status)" = cancelled ] || fail "the create ended $(jqb .status) ($(jqb .error)), not cancelled"
[ "$(jqb '.result.undone | type')" = array ] || fail "the result does not say what was undone: $(jqb .result)"
wait_nothing_left opc1 "$host" "$ifname"
pass "a create cancelled during its first steps ended cancelled (undone: $(jqb -c .result.undone)); nothing left"

# The name is free: the same create again works.
vm_create "$(vm_json opc1 ',"start":false')"
api DELETE /api/v1/instances/opc1
expect_status 202
wait_op "$(jqb .id)"
op_ok
pass "the name of the cancelled create is free for a new one"

# ---- cancel while QEMU boots ---------------------------------------------------------------
# QEMU is caught as soon as it exists and held (SIGSTOP), so it cannot answer the agent's
# QMP before the cancel comes, however fast the machine; a try the create still won
# (QEMU answered before the hold) is repeated.
booted_cancel=""
for attempt in 1 2 3 4 5 6 7 8 9 10; do
	hold_start 180 "qemu-system[^ ]* -name opc2 .*$KUMO_LAB_DIR/"
	api POST /api/v1/instances "$(vm_json opc2)"
	expect_status 202 "create opc2"
	op=$(jqb .id)
	hold_wait || fail "opc2's QEMU never started"
	qpid=$HELD
	read -r host ifname <<<"$(where opc2)"
	api POST "/api/v1/operations/$op/actions/cancel"
	wait_op "$op"
	kill -CONT "$qpid" 2>/dev/null || true
	if [ "$(jqb .status)" = cancelled ] && jqb '.result.undone[]' | grep -q qemu; then
		booted_cancel=$attempt
		break
	fi
	# The create won the race: nothing may be left after its delete either.
	[ "$(jqb .status)" = succeeded ] && api DELETE "/api/v1/instances/opc2?force=1"
	wait_until 120 "opc2 gone" instance_absent opc2
done
[ -n "$booted_cancel" ] || fail "no cancel reached the create while QEMU started in 10 attempts"
wait_nothing_left opc2 "$host" "$ifname"
pass "a create cancelled while QEMU booted stopped it and removed its disks, files and tap (attempt $booted_cancel)"

# ---- a 1 s deadline ------------------------------------------------------------------------
# The create is pinned to a host whose agent is held (SIGSTOP) before the create is sent,
# so the deadline passes mid-create whatever the machine's speed (a create can take
# 0.3 s here: holding the agent after the POST raced it).
host=h3
hold_agent "$host"
api POST /api/v1/instances "$(vm_json opc3 ',"timeout_s":1,"host":"'$host'"')"
expect_status 202 "create opc3 with timeout_s 1"
op=$(jqb .id)
[ "$(jqb .deadline)" != null ] || fail "the operation shows no deadline"
read -r host ifname <<<"$(where opc3)"
timed_out() { api GET "/api/v1/operations/$op" && [ "$(jqb .cancel)" = "timed out" ]; }
wait_until 30 "the controller times the create out" timed_out
release_agent
wait_op "$op"
[ "$(jqb .status)" = failed ] && [ "$(jqb .error)" = "timed out" ] ||
	fail "a create past its deadline ended $(jqb .status): $(jqb .error)"
wait_nothing_left opc3 "$host" "$ifname"
pass "a create with timeout_s=1 failed as timed out and left nothing"

# ---- the controller killed right after a cancel --------------------------------------------
# Held the same way: on a quiet machine the create could finish before the cancel.
host=h3
hold_agent "$host"
api POST /api/v1/instances "$(vm_json opc4 ',"host":"'$host'"')"
expect_status 202 "create opc4"
op=$(jqb .id)
read -r host ifname <<<"$(where opc4)"
api POST "/api/v1/operations/$op/actions/cancel"
expect_status 202 "cancel of opc4's create"
cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 10 "the controller gone" proc_gone "$cpid"
release_agent
lab up --hosts 3 >/dev/null
wait_until 60 "3 hosts online after restart" all_online 3
wait_op "$op"
[ "$(jqb .status)" = cancelled ] || fail "after kill -9 the create ended $(jqb .status) ($(jqb .error)), not cancelled"
wait_nothing_left opc4 "$host" "$ifname"
pass "a cancel survives a kill -9 of the controller: still cancelled, nothing left"

# agent_killed_after_cancel HOST HELD: kill -9 HOST's agent, which heard a cancel it has
# not undone yet, let the held process HELD go on, and start the agent again.
agent_killed_after_cancel() {
	local apid killed_at
	apid=$(agent_pid "$1")
	killed_at=$(date +%s%3N)
	kill -9 "$apid"
	wait_until 10 "the agent of $1 gone" proc_gone "$apid"
	kill -CONT "$2" 2>/dev/null || true
	lab up --hosts 3 >/dev/null
	wait_until 60 "$1's agent back" agent_restarted "$1" "$killed_at"
}

# ---- the agent killed after it heard a cancel, before it undid ------------------------------
# QEMU is held (SIGSTOP) as it starts, so the create waits for it: the cancel reaches
# the agent, which keeps it in the run directory (job.json) until its safe point comes,
# and it is killed before that. Its next run finishes the undo: the op ends cancelled,
# nothing is left. (If QEMU answered before it was held, the create may get past the
# cancel's safe point first: try again.)
agent_cancel=""
for attempt in 1 2 3 4 5 6 7 8; do
	# Held as soon as it shows (QEMU answers its monitor soon after), only this lab's:
	# other labs may run the same test.
	hold_start 180 "qemu-system[^ ]* -name opc5 .*$KUMO_LAB_DIR/"
	api POST /api/v1/instances "$(vm_json opc5)"
	expect_status 202 "create opc5"
	op=$(jqb .id)
	hold_wait || fail "opc5's create never started QEMU"
	held=$HELD
	read -r host ifname <<<"$(where opc5)"
	api POST "/api/v1/operations/$op/actions/cancel"
	jobfile="$KUMO_LAB_DIR/hosts/$host/local/instances/opc5/job.json"
	heard() { grep -q '"cancel":"cancelled"' "$jobfile" 2>/dev/null || { api GET "/api/v1/operations/$op" && op_status_final "$(jqb .status)"; }; }
	[ "$STATUS" = 202 ] && wait_until 30 "the agent to hear the cancel" heard
	if [ -n "$held" ] && grep -q '"cancel":"cancelled"' "$jobfile" 2>/dev/null; then
		agent_killed_after_cancel "$host" "$held"
		wait_op "$op"
		[ "$(jqb .status)" = cancelled ] || fail "after the agent's kill -9 the create ended $(jqb .status) ($(jqb .error)), not cancelled"
		wait_nothing_left opc5 "$host" "$ifname"
		agent_cancel=$attempt
		break
	fi
	[ -n "$held" ] && kill -CONT $held 2>/dev/null
	wait_op "$op"
	echo "opc5 attempt $attempt: the cancel was not held ($(jqb -c '{status, error, result}'))" >&2
	[ "$(jqb .status)" = succeeded ] && api DELETE "/api/v1/instances/opc5?force=1"
	wait_until 120 "opc5 gone" instance_absent opc5
done
[ -n "$agent_cancel" ] || fail "the agent never held a cancel of a create in 8 attempts"
pass "a cancel survives a kill -9 of the agent before its undo: cancelled, nothing left (attempt $agent_cancel)"

# ---- the same for a container: the agent killed after it heard a cancel of its create -------
# Its shim (or its runc) is held (SIGSTOP) as it starts, before the container runs, so the create waits for
# the start; the cancel reaches the agent (job.json), which is killed. The shim goes on
# and starts the container; the next agent adopts it and undoes the create through the
# driver's cancel slot: the op ends cancelled, no shim, container or file is left, and
# the name is free. (A shim caught after it ran runc lets the create finish: try again.)
ctr_cancel=""
ctr_left() { pgrep -f -- "containers/opc6\$" >/dev/null && echo "opc6's shim or container"; leftovers opc6 h3 ""; }
for attempt in 1 2 3 4 5 6; do
	# The shim, or the runc it runs (its setup lasts far longer than the shim's own
	# start, so a busy machine still catches one of them before the container runs).
	ctr_dir=$KUMO_LAB_DIR/hosts/h3/local/containers/opc6
	hold_start 120 "--shim $ctr_dir\$| run --bundle $ctr_dir "
	api POST /api/v1/instances '{"name":"opc6","type":"container","image":"busybox:latest","command":["sleep","3600"],"host":"h3"}'
	expect_status 202 "create opc6"
	op=$(jqb .id)
	hold_wait || fail "opc6's create never started its shim"
	held=$HELD
	api POST "/api/v1/operations/$op/actions/cancel"
	jobfile="$KUMO_LAB_DIR/hosts/h3/local/containers/opc6/job.json"
	heard() { grep -q '"cancel":"cancelled"' "$jobfile" 2>/dev/null || { api GET "/api/v1/operations/$op" && op_status_final "$(jqb .status)"; }; }
	[ "$STATUS" = 202 ] && wait_until 30 "the agent to hear the cancel" heard
	if grep -q '"cancel":"cancelled"' "$jobfile" 2>/dev/null; then
		agent_killed_after_cancel h3 "$held"
		wait_op "$op"
		[ "$(jqb .status)" = cancelled ] || fail "after the agent's kill -9 the container's create ended $(jqb .status) ($(jqb .error)), not cancelled"
		end=$((SECONDS + 60))
		while [ -n "$(ctr_left)" ]; do
			[ $SECONDS -ge $end ] && fail "left of opc6 after 60 s: $(ctr_left | tr '\n' ';')"
			sleep 0.5
		done
		ctr_cancel=$attempt
		break
	fi
	kill -CONT $held 2>/dev/null
	wait_op "$op"
	[ "$(jqb .status)" = succeeded ] && api DELETE "/api/v1/instances/opc6?force=1"
	wait_until 120 "opc6 gone" instance_absent opc6
done
[ -n "$ctr_cancel" ] || fail "the agent never held a cancel of a container's create in 6 attempts"
api POST /api/v1/instances '{"name":"opc6","type":"container","image":"busybox:latest","command":["sleep","3600"],"host":"h3"}'
expect_status 202 "create opc6 again"
wait_op "$(jqb .id)"
op_ok
pass "a container's create cancel survives a kill -9 of the agent: cancelled, nothing left, name free (attempt $ctr_cancel)"
