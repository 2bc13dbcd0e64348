# shellcheck shell=bash
# lib_ha.sh - helpers for the HA test, soak and benchmark; source it after lib.sh.
#   qemu_count NAME          -> QEMU processes of instance NAME on every host (the lab's
#                               hosts share the machine's pid namespace)
#   ct_count NAME            -> running inits of container NAME on every host (runc state)
#   ha_sampler V C FILE &    -> appends "MS QEMUS(V) INITS(C)" to FILE every 100 ms
#   ha_worst FILE            -> the most processes one workload ever had in FILE
#   host_of NAME             -> the host the controller places NAME on
#   running_elsewhere NAME H -> NAME is running, on a host other than H
#   ha_state_is HOST STATE   -> the host's HA state (ok, isolated, failed, fenced, ...)
#   ha_failed HOST           -> failed, or fenced already (a host whose lease has been
#                               still longer than its heartbeats skips failed in one step)

qemu_count() {
	local n=0 f pid
	for f in $(grep -lsFxz -- "$1" /proc/[0-9]*/cmdline 2>/dev/null); do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		[[ $(cat "/proc/$pid/comm" 2>/dev/null) == qemu* ]] || continue
		grep -q '^State:.*[ZX]' "/proc/$pid/status" 2>/dev/null || n=$((n + 1))
	done
	echo $n
}

ct_count() {
	local n=0 s pid st
	for s in "$KUMO_LAB_DIR"/hosts/h*/local/runc/"$1"/state.json; do
		[ -r "$s" ] || continue
		st=$(<"$s") || continue
		[[ $st =~ \"init_process_pid\":([0-9]+) ]] || continue
		pid=${BASH_REMATCH[1]}
		[ -e "/proc/$pid" ] || continue
		grep -q '^State:.*[ZX]' "/proc/$pid/status" 2>/dev/null || n=$((n + 1))
	done
	echo $n
}

ha_sampler() {
	while :; do
		echo "$(date +%s%3N) $(qemu_count "$1") $(ct_count "$2")"
		sleep 0.1
	done >>"$3"
}

ha_worst() { awk 'BEGIN { m = 0 } { if ($2 > m) m = $2; if ($3 > m) m = $3 } END { print m }' "$1"; }

host_of() {
	api GET "/api/v1/instances/$1"
	jqb .host
}

running_elsewhere() {
	api GET "/api/v1/instances/$1"
	[ "$(jqb .state)" = running ] && [ "$(jqb .host)" != "$2" ] && [ "$(jqb .host)" != null ]
}

ha_state_is() {
	api GET "/api/v1/hosts/$1"
	[ "$(jqb .ha.state)" = "$2" ]
}

ha_failed() {
	api GET "/api/v1/hosts/$1"
	case "$(jqb .ha.state)" in failed | fenced) return 0 ;; esac
	return 1
}
