#!/bin/bash
# Time from POST /api/v1/instances to the test guest's KUMO-GUEST-READY on its
# console, against a bare qemu-system-x86_64 boot of the same image in the same run
# (bench/vm_boot.sh). Prints the ratio kumo/baseline; the goal is under 1.10.
#
#   bench/vm_kumo.sh [-n N] [--lab NAME]
#
# Needs a running lab (deploy/lab up) with the test image registered.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lab_name=kumo
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--lab) lab_name=$2; shift 2 ;;
	*) args+=("$1"); shift ;;
	esac
done
eval "$("$here/../deploy/lab" --name "$lab_name" env)"
export KUMO_URL KUMO_CACERT KUMO_TOKEN_FILE

kapi() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $(cat "$KUMO_TOKEN_FILE")" "$@"; }

kumo_bench_cmd() {
	local name=bench-$KUMO_BENCH_RUN
	kapi -o /dev/null -X POST "$KUMO_URL/api/v1/instances" \
		-d '{"name":"'"$name"'","type":"vm","vcpus":1,"memory":{"mb":256},"disks":[{"name":"root","image":"kumo-test"}]}'
	until kapi "$KUMO_URL/api/v1/instances/$name/console?bytes=65536" 2>/dev/null | grep -q KUMO-GUEST-READY; do
		sleep 0.05
	done
}

kumo_bench_cleanup() {
	local op
	op=$(kapi -X DELETE "$KUMO_URL/api/v1/instances/bench-$KUMO_BENCH_RUN?force=1" | jq -r .id)
	kapi "$KUMO_URL/api/v1/operations/$op?wait=60" >/dev/null
}

KUMO_BENCH_SOURCED=1 KUMO_SRC_DIR="$here/.." . "$here/vm_boot.sh"
vm_boot_main "${args[@]}"
