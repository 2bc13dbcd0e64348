#!/bin/sh
# Time from start to the test guest's KUMO-GUEST-READY on its serial console.
#
#   bench/vm_boot.sh [-n N] [-i IMAGE] [KUMO_CMD]
#
# Baseline: a bare qemu-system-x86_64 (TCG, q35, virtio-blk) on an overlay of the test
# image, N times (default 3); the median is printed. With KUMO_CMD (the argument or the
# environment variable KUMO_BENCH_CMD) the same is timed for Kumo's path, in the same
# run, and the ratio kumo/baseline is printed. KUMO_CMD runs under `sh -c` with
#   KUMO_BENCH_IMAGE   the test image (qcow2)
#   KUMO_BENCH_RUN     1..N
#   KUMO_BENCH_TMP     a scratch directory, fresh for each run
# and must exit 0 once the guest's console shows KUMO-GUEST-READY (the time until it
# exits is what is measured). KUMO_BENCH_CLEANUP, if set, runs after each run
# (untimed) with the same environment, e.g. to delete the VM.
# A script may also define the shell functions kumo_bench_cmd / kumo_bench_cleanup
# and source this file with KUMO_BENCH_SOURCED=1 (and KUMO_SRC_DIR=the source tree)
# then call vm_boot_main "$@".
#
# The image is built (cached) with tests/guest/build-image.sh into
# ${KUMO_BUILD_DIR:-build}/guest unless -i is given. Needs root to build the image.
# Output ends with one line:  RESULT baseline_ms=B [kumo_ms=K ratio=R]
# Absolute times are informative only; never gate on them.
set -eu

# The source tree; a script that sources this file sets KUMO_SRC_DIR (or passes -i).
VM_BOOT_SRC=${KUMO_SRC_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
VM_BOOT_TIMEOUT=${KUMO_BENCH_TIMEOUT:-120}

vm_boot_die() {
	echo "vm_boot: $*" >&2
	exit 1
}

vm_boot_now_ms() {
	echo $(($(date +%s%N) / 1000000))
}

# vm_boot_wait_marker LOG PID: wait for the marker in LOG while PID lives.
vm_boot_wait_marker() {
	_deadline=$(($(vm_boot_now_ms) + VM_BOOT_TIMEOUT * 1000))
	while :; do
		grep -q KUMO-GUEST-READY "$1" 2>/dev/null && return 0
		kill -0 "$2" 2>/dev/null || return 1
		[ "$(vm_boot_now_ms)" -lt "$_deadline" ] || return 1
		sleep 0.02
	done
}

vm_boot_stop_pid() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# One bare-QEMU boot; prints milliseconds to the marker.
vm_boot_baseline_once() {
	_dir=$1
	qemu-img create -q -f qcow2 -b "$VM_BOOT_IMAGE" -F qcow2 "$_dir/disk.qcow2"
	: >"$_dir/console.log"
	_t0=$(vm_boot_now_ms)
	timeout "$VM_BOOT_TIMEOUT" qemu-system-x86_64 \
		-machine q35,accel=tcg -cpu max -m 256 -nodefaults -display none \
		-serial "file:$_dir/console.log" \
		-drive "file=$_dir/disk.qcow2,if=none,id=d0" -device virtio-blk-pci,drive=d0 \
		-qmp "unix:$_dir/qmp.sock,server=on,wait=off" </dev/null >/dev/null 2>&1 &
	_pid=$!
	echo "$_pid" >"$_dir/pid"
	if ! vm_boot_wait_marker "$_dir/console.log" "$_pid"; then
		vm_boot_stop_pid "$_pid"
		echo "vm_boot: no KUMO-GUEST-READY; console:" >&2
		tail -n 20 "$_dir/console.log" >&2
		return 1
	fi
	_t1=$(vm_boot_now_ms)
	vm_boot_stop_pid "$_pid"
	rm -f "$_dir/pid"
	echo $((_t1 - _t0))
}

# One Kumo-path run; prints milliseconds until the hook exits.
vm_boot_kumo_once() {
	_dir=$1
	_run=$2
	export KUMO_BENCH_IMAGE="$VM_BOOT_IMAGE" KUMO_BENCH_RUN="$_run" KUMO_BENCH_TMP="$_dir"
	_t0=$(vm_boot_now_ms)
	_ok=0
	if command -v kumo_bench_cmd >/dev/null 2>&1 && [ -z "$VM_BOOT_CMD" ]; then
		kumo_bench_cmd || _ok=$?
	else
		timeout "$VM_BOOT_TIMEOUT" sh -c "$VM_BOOT_CMD" >&2 || _ok=$?
	fi
	_t1=$(vm_boot_now_ms)
	if command -v kumo_bench_cleanup >/dev/null 2>&1; then
		kumo_bench_cleanup >&2 || true
	elif [ -n "${KUMO_BENCH_CLEANUP:-}" ]; then
		sh -c "$KUMO_BENCH_CLEANUP" >&2 || true
	fi
	[ "$_ok" = 0 ] || {
		echo "vm_boot: Kumo command failed (exit $_ok)" >&2
		return 1
	}
	echo $((_t1 - _t0))
}

# On exit: stop a QEMU an interrupted run left (timeout runs in its own process group,
# so a terminal's ^C does not reach it), then remove the scratch files.
vm_boot_cleanup() {
	for _p in "$VM_BOOT_TMP"/*/pid; do
		[ -f "$_p" ] && kill "$(cat "$_p")" 2>/dev/null
	done
	rm -rf "$VM_BOOT_TMP"
}

vm_boot_median() { # numbers on stdin
	sort -n | awk '{ a[NR] = $1 } END {
		if (NR == 0) exit 1
		if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'
}

vm_boot_main() {
	_n=3
	VM_BOOT_IMAGE=""
	while getopts n:i:h _o; do
		case "$_o" in
		n) _n=$OPTARG ;;
		i) VM_BOOT_IMAGE=$OPTARG ;;
		*)
			sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'
			exit 2
			;;
		esac
	done
	shift $((OPTIND - 1))
	VM_BOOT_CMD=${1:-${KUMO_BENCH_CMD:-}}
	case "$_n" in '' | *[!0-9]* | 0) vm_boot_die "-n wants a positive number" ;; esac
	command -v qemu-system-x86_64 >/dev/null || vm_boot_die "qemu-system-x86_64 missing"

	if [ -z "$VM_BOOT_IMAGE" ]; then
		_out=${KUMO_BUILD_DIR:-$VM_BOOT_SRC/build}/guest
		"$VM_BOOT_SRC/tests/guest/build-image.sh" "$_out" >&2
		VM_BOOT_IMAGE=$_out/kumo-test.qcow2
	fi
	[ -f "$VM_BOOT_IMAGE" ] || vm_boot_die "no image $VM_BOOT_IMAGE"
	VM_BOOT_IMAGE=$(cd "$(dirname "$VM_BOOT_IMAGE")" && pwd)/$(basename "$VM_BOOT_IMAGE")

	VM_BOOT_TMP=$(mktemp -d "${TMPDIR:-/tmp}/kumo-vm-boot.XXXXXX")
	trap 'vm_boot_cleanup' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	_kumo=""
	if [ -n "$VM_BOOT_CMD" ] || command -v kumo_bench_cmd >/dev/null 2>&1; then
		_kumo=1
	fi
	echo "vm_boot: image $VM_BOOT_IMAGE, $_n runs, TCG"
	_i=1
	while [ "$_i" -le "$_n" ]; do
		# Interleave baseline and Kumo runs so both see the same machine load.
		mkdir -p "$VM_BOOT_TMP/b$_i"
		_ms=$(vm_boot_baseline_once "$VM_BOOT_TMP/b$_i") || vm_boot_die "baseline run $_i failed"
		echo "$_ms" >>"$VM_BOOT_TMP/baseline"
		echo "baseline run $_i: $_ms ms"
		if [ -n "$_kumo" ]; then
			mkdir -p "$VM_BOOT_TMP/k$_i"
			_ms=$(vm_boot_kumo_once "$VM_BOOT_TMP/k$_i" "$_i") || vm_boot_die "kumo run $_i failed"
			echo "$_ms" >>"$VM_BOOT_TMP/kumo"
			echo "kumo run $_i: $_ms ms"
		fi
		_i=$((_i + 1))
	done
	_b=$(vm_boot_median <"$VM_BOOT_TMP/baseline")
	echo "baseline median: $_b ms"
	if [ -n "$_kumo" ]; then
		_k=$(vm_boot_median <"$VM_BOOT_TMP/kumo")
		_r=$(awk -v k="$_k" -v b="$_b" 'BEGIN { printf "%.3f", k / b }')
		echo "kumo median: $_k ms"
		echo "ratio kumo/baseline: $_r (goal < 1.10)"
		echo "RESULT baseline_ms=$_b kumo_ms=$_k ratio=$_r"
	else
		echo "RESULT baseline_ms=$_b"
	fi
}

[ "${KUMO_BENCH_SOURCED:-0}" = 1 ] || vm_boot_main "$@"
