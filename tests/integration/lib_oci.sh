# shellcheck shell=bash
# lib_oci.sh - helpers for the container and registry tests; source it after lib.sh.
#   oci_build                       -> builds the test OCI layouts (tests/guest/build-oci.sh)
#   oci_layout_digest NAME          -> "sha256:..." of OCI_DIR/NAME's manifest
#   oci_push NAME REPO:TAG [TOKEN]  -> skopeo copy of OCI_DIR/NAME to the registry
#   oci_pull REPO:TAG DIR [TOKEN]   -> skopeo copy from the registry to the layout DIR
#   reg METHOD PATH [TOKEN] [CURL ARGS...] -> a raw registry request; STATUS, BODY, HEADERS
#   hdr NAME                        -> a header of the last reply (case-insensitive)
#   reg_code                        -> the first registry error code in BODY
#   oci_untag REPO:TAG              -> removes a tag (and its manifest) from the registry
#   ct_create JSON                  -> creates a container, waits for the operation to succeed
#   ct_delete NAME                  -> force-deletes an instance, quietly (for traps)
#   ct_logs NAME [QUERY]            -> the container's log text; ct_logs_have NAME TEXT
#   ct_field NAME FILTER            -> jq FILTER over GET /api/v1/instances/NAME
#   ct_exec NAME CMD-JSON [TIMEOUT] -> POST .../exec, expects 200; BODY {exit_code, output, ...}
# The registry is served by the controller at KUMO_URL/v2/; skopeo trusts its CA from a
# directory holding ca.crt (the controller's tls.crt): OCI_CERTS, which the test removes.

REGISTRY=${KUMO_URL#https://}
OCI_DIR=$KUMO_BUILD_DIR/guest
OCI_CERTS=$(mktemp -d /tmp/kt-oci-certs.XXXXXX)
cp "$KUMO_CACERT" "$OCI_CERTS/ca.crt"
MT_OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json

oci_build() {
	"$KUMO_SRC/tests/guest/build-oci.sh" "$OCI_DIR" >/tmp/kt-oci-build.$$ 2>&1 ||
		fail "tests/guest/build-oci.sh failed: $(tail -n 5 /tmp/kt-oci-build.$$)"
	rm -f /tmp/kt-oci-build.$$
}

oci_layout_digest() { jq -r '.manifests[0].digest' "$OCI_DIR/$1/index.json"; }

# skopeo without proxies (the registry is on loopback) and without a signature policy
# file (the tests do not sign).
skopeo_() { NO_PROXY='*' no_proxy='*' skopeo --insecure-policy "$@"; }

# oci_push NAME REPO:TAG [TOKEN]: 0 when skopeo pushed it; its output in SKOPEO_OUT.
oci_push() {
	local token=${3:-$ADMIN}
	SKOPEO_OUT=$(skopeo_ copy --dest-registry-token "$token" --dest-cert-dir "$OCI_CERTS" \
		"oci:$OCI_DIR/$1:latest" "docker://$REGISTRY/$2" 2>&1)
}

# oci_pull REPO:TAG DIR [TOKEN]: 0 when skopeo pulled it into the OCI layout DIR (tag as
# in REPO:TAG); its output in SKOPEO_OUT.
oci_pull() {
	local token=${3:-$ADMIN}
	SKOPEO_OUT=$(skopeo_ copy --src-registry-token "$token" --src-cert-dir "$OCI_CERTS" \
		"docker://$REGISTRY/$1" "oci:$2:${1##*:}" 2>&1)
}

# reg METHOD PATH [TOKEN] [CURL ARGS...]: TOKEN "-" sends no Authorization header.
reg() {
	local method=$1 path=$2 token=${3:-$ADMIN}
	shift $(($# < 3 ? $# : 3))
	local args=(-sS --cacert "$KUMO_CACERT" -o /tmp/kt-rbody.$$ -D /tmp/kt-rhead.$$
		-w '%{http_code}' --max-time 90)
	if [ "$method" = HEAD ]; then args+=(--head); else args+=(-X "$method"); fi
	[ "$token" != "-" ] && args+=(-H "Authorization: Bearer $token")
	STATUS=$(curl "${args[@]}" "$@" "$KUMO_URL$path") || STATUS=000
	BODY=$(cat /tmp/kt-rbody.$$ 2>/dev/null || true)
	HEADERS=$(tr -d '\r' </tmp/kt-rhead.$$ 2>/dev/null || true)
	rm -f /tmp/kt-rbody.$$ /tmp/kt-rhead.$$
}

hdr() {
	printf '%s\n' "$HEADERS" | awk -v k="$1" 'BEGIN { k = tolower(k) }
		{ i = index($0, ":"); if (i && tolower(substr($0, 1, i - 1)) == k) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); last = v } }
		END { print last }'
}

reg_code() { jq -r '.errors[0].code // empty' <<<"$BODY" 2>/dev/null || true; }

# The path of an upload Location (absolute URL or path) with ?digest= (or &digest=).
upload_path() {
	local loc=$1
	case "$loc" in http://* | https://*) loc=/${loc#*://*/} ;; esac
	case "$loc" in *\?*) printf '%s&digest=%s' "$loc" "$2" ;; *) printf '%s?digest=%s' "$loc" "$2" ;; esac
}
# The path of an upload Location, as is.
loc_path() {
	local loc=$1
	case "$loc" in http://* | https://*) loc=/${loc#*://*/} ;; esac
	printf '%s' "$loc"
}

# oci_untag REPO:TAG: quietly removes the tag's manifest from the repository (DELETE by
# digest: the manifest and every tag on it go), else the tag alone.
oci_untag() {
	local repo=${1%:*} tag=${1##*:} digest
	reg HEAD "/v2/$repo/manifests/$tag" "$ADMIN" -H "Accept: $MT_OCI_MANIFEST" >/dev/null 2>&1 || true
	[ "$STATUS" = 200 ] || return 0
	digest=$(hdr Docker-Content-Digest)
	if [ -n "$digest" ]; then
		reg DELETE "/v2/$repo/manifests/$digest" >/dev/null 2>&1 || true
		case "$STATUS" in 200 | 202 | 204) return 0 ;; esac
	fi
	reg DELETE "/v2/$repo/manifests/$tag" >/dev/null 2>&1 || true
}

ct_create() {
	api POST /api/v1/instances "$1"
	expect_status 202 "create $1"
	wait_op "$(jqb .id)" 180
	op_ok
}

# ct_delete NAME: force delete and wait a while for it; never fails (for traps).
ct_delete() {
	local id
	api DELETE "/api/v1/instances/$1?force=1" >/dev/null 2>&1 || return 0
	[ "$STATUS" = 202 ] || return 0
	id=$(jqb .id 2>/dev/null) || return 0
	for _ in 1 2 3 4; do
		api GET "/api/v1/operations/$id?wait=30" >/dev/null 2>&1 || return 0
		case "$(jqb .status 2>/dev/null)" in succeeded | failed | cancelled) return 0 ;; esac
	done
	return 0
}

ct_logs() {
	curl -sS --max-time 30 --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" \
		"$KUMO_URL/api/v1/instances/$1/logs${2:+?$2}"
}
# (through a variable: with pipefail, grep -q closing the pipe early would fail curl)
ct_logs_have() {
	local t
	t=$(ct_logs "$1") && grep -q -- "$2" <<<"$t"
}

ct_field() {
	api GET "/api/v1/instances/$1"
	jqb "$2"
}

# ct_exec NAME JSON-COMMAND-ARRAY [TIMEOUT_S]: BODY is {exit_code, output, ...}.
ct_exec() {
	api POST "/api/v1/instances/$1/exec" "{\"command\":$2${3:+,\"timeout_s\":$3}}"
	expect_status 200 "exec $2 in $1"
}
