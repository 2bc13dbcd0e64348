#!/bin/bash
# Root in a container is not root on the host: by default a container runs in a user
# namespace over its host's range (--container-uid-base), on a network too. Its root
# has a non-zero uid seen from the host (/proc/PID/status), reads and writes the image's
# root-owned files (idmapped layers), what it creates is stored under the shifted uid on
# the host, and a commit shifts it back (the new image's files are root's again). With
# "userns": false, root is the host's root again.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

REPO=kt-us/busybox
IMG=$REPO:latest
NEW=$REPO:committed
NET=kt-us-net
CTS="us-a us-b us-root us-c"
cleanup() {
	for n in $CTS; do ct_delete "$n"; done
	net_delete $NET
	oci_untag $NEW
	oci_untag $IMG
	rm -rf "$OCI_CERTS"
}
trap cleanup EXIT
cjson() {
	local extra=${4:-}
	[ -n "$extra" ] || extra='{}'
	jq -cn --arg n "$1" --arg i "$2" --argjson c "$3" --argjson x "$extra" \
		'{name: $n, type: "container", image: $i, command: $c, host: "h1"} + $x'
}
host_uid() { awk '/^Uid:/ { print $2 }' "/proc/$1/status"; }
upper_of() { echo "$KUMO_LAB_DIR/hosts/h1/local/containers/$1/upper"; }

oci_build
oci_push busybox-oci $IMG || fail "skopeo push of $IMG failed: $SKOPEO_OUT"
api POST /api/v1/networks "{\"name\":\"$NET\",\"mode\":\"nat\",\"cidr\":\"10.77.0.0/24\"}"
expect_status 201 "create $NET"

# A container without NICs and one on a network: both in a user namespace.
ct_create "$(cjson us-a $IMG '["sleep","3600"]')"
ct_create "$(cjson us-b $IMG '["sleep","3600"]' "{\"nics\":[{\"network\":\"$NET\"}]}")"
for n in us-a us-b; do
	pid=$(ct_field $n .pid)
	[ "${pid:-0}" -gt 0 ] || fail "$n has no pid"
	uid=$(host_uid "$pid")
	[ "$uid" -gt 0 ] || fail "root in $n (pid $pid) is uid $uid on the host"
	ct_exec $n '["sh","-c","id -u; cat /proc/self/uid_map; echo x >/etc/kumo-userns; mkdir -p /root/d; touch /root/d/f; ls -ln /etc/passwd"]'
	[ "$(jqb .exit_code)" = 0 ] || fail "root in $n cannot write the image's root-owned paths: $(jqb .output)"
	out=$(jqb .output)
	[ "$(head -1 <<<"$out")" = 0 ] || fail "id -u in $n is not 0: $out"
	grep -qE "^ +0 +$uid +65536" <<<"$out" || fail "$n's uid map is not 0 -> $uid: $out"
	grep -qE ' 0 +0 ' <<<"$(tail -1 <<<"$out")" || fail "/etc/passwd is not root's inside $n: $out"
	f=$(upper_of $n)/etc/kumo-userns
	[ "$(stat -c %u "$f")" = "$uid" ] || fail "$f (made by root in $n) is uid $(stat -c %u "$f") on the host, not $uid"
	[ "$(stat -c %u "$(upper_of $n)/root/d/f")" = "$uid" ] || fail "a file root made in $n is not uid $uid on the host"
	[ "$(ct_field $n .userns)" = true ] || fail "$n does not show userns true"
	pass "$n: root inside is uid $uid on the host; it writes the image's /etc and /root, and its files are uid $uid outside"
done
wait_until 30 "us-b (user namespace, on $NET) to ping its gateway" ct_ping us-b 10.77.0.1
pass "us-b pings its gateway from a network namespace its user namespace owns"

# Opting out: root is the host's root.
ct_create "$(cjson us-root $IMG '["sleep","3600"]' '{"userns":false}')"
uid=$(host_uid "$(ct_field us-root .pid)")
[ "$uid" = 0 ] || fail "us-root (userns false) runs as uid $uid, not 0"
[ "$(ct_field us-root .userns)" = false ] || fail "us-root does not show userns false"
pass "\"userns\": false runs root as the host's root"

# Commit shifts ownership back: the new image's files are root's, in or out of a userns.
api POST /api/v1/instances/us-a/actions/commit "{\"image\":\"$NEW\"}"
expect_status 202 "commit us-a"
wait_op "$(jqb .id)" 180
op_ok
ct_create "$(cjson us-c $NEW '["sleep","3600"]' '{"userns":false}')"
ct_exec us-c '["sh","-c","cat /etc/kumo-userns; stat -c %u /etc/kumo-userns /root/d/f"]'
out=$(jqb .output)
[ "$(echo $out)" = "x 0 0" ] || fail "the committed files are not root's in a container without userns: $out"
pass "commit of us-a stored its files as root's: a container of $NEW without userns sees uid 0"
