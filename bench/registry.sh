#!/bin/bash
# Registry push and pull throughput of one ~200 MB layer, against plain file transfers
# of the same size through the same controller and against cp on the same disk.
# Prints MB/s (medians of N runs) and the ratios; the goal is pull >= 0.7x the static
# download.
#
#   bench/registry.sh [-n N] [--mb MB] [--lab NAME]
#
# What is measured (all over the lab's HTTPS API, one file of random bytes):
#   cp               cp of the file to another file on the shared pool's disk, then fsync
#   static upload    curl POST /api/v1/images?format=qcow2: the controller streams the
#                    body to a file on the shared pool and fsyncs it, then answers (the
#                    import that follows fails at once: it is no qcow2); no hashing
#   static download  curl GET of the blob: the controller sends the stored file as it
#                    is (MHD_create_response_from_fd) - the one route that serves a file
#                    from disk, so it is the static-file baseline
#   registry push    skopeo copy of an OCI layout holding the layer to the registry:
#                    token flow, upload session, the controller hashes and fsyncs
#   registry push/curl  the same layer by curl, POST ?digest= (monolithic upload)
#   registry pull    skopeo copy of the image from the registry to a dir: (skopeo
#                    checks the digest of what it gets)
#   registry pull/curl  what a pull asks of the controller, by curl: /v2/token with
#                    Basic credentials, then the manifest, the config and the layer with
#                    that token (the client's own costs - Go TLS, hashing - left out)
# Needs a running lab (deploy/lab up) and skopeo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
runs=3
mb=200
lab_args=()
while [ $# -gt 0 ]; do
	case $1 in
	-n) runs=$2; shift 2 ;;
	--mb) mb=$2; shift 2 ;;
	--lab) lab_args=(--name "$2"); shift 2 ;;
	*) lab_args+=("$1"); shift ;;
	esac
done
eval "$("$src/deploy/lab" "${lab_args[@]}" env)"
token=$(cat "$KUMO_TOKEN_FILE")
registry=${KUMO_URL#https://}
repo=kumo-bench/blob
# On the shared pool's disk, so cp and the controller write to the same device.
work=$(mktemp -d "$KUMO_LAB_DIR/bench-registry.XXXXXX")
certs=$work/certs
cleanup() {
	curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $token" -X DELETE \
		"$KUMO_URL/v2/$repo/manifests/${manifest:-none}" >/dev/null 2>&1 || true
	curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $token" -X DELETE \
		"$KUMO_URL/v2/$repo/blobs/${layer:-none}" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$certs"
cp "$KUMO_CACERT" "$certs/ca.crt"
skopeo_() { NO_PROXY='*' no_proxy='*' skopeo --insecure-policy "$@"; }
kcurl() { curl -sS --fail --cacert "$KUMO_CACERT" -H "Authorization: Bearer $token" "$@"; }
now_ns() { date +%s%N; }
bytes=$((mb * 1024 * 1024))

# The layer, and an OCI layout of an image made of it.
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
# gzip of random bytes: skopeo sends a compressed layer as it is (it would compress an
# uncompressed one, and push another blob), and it stays the same size.
head -c "$bytes" /dev/urandom >"$work/raw"
diff_id=sha256:$(sha256sum "$work/raw" | cut -d' ' -f1)
gzip -1 <"$work/raw" >"$work/layer"
rm -f "$work/raw"
bytes=$(stat -c %s "$work/layer")
layer=sha256:$(sha256sum "$work/layer" | cut -d' ' -f1)
cp "$work/layer" "$layout/blobs/sha256/${layer#sha256:}"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]},"config":{}}' "$diff_id" >"$work/config"
config=sha256:$(sha256sum "$work/config" | cut -d' ' -f1)
cp "$work/config" "$layout/blobs/sha256/${config#sha256:}"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
	"$config" "$(stat -c %s "$work/config")" "$layer" "$bytes" >"$work/manifest"
manifest=sha256:$(sha256sum "$work/manifest" | cut -d' ' -f1)
cp "$work/manifest" "$layout/blobs/sha256/${manifest#sha256:}"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
	"$manifest" "$(stat -c %s "$work/manifest")" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

blob_delete() { kcurl -X DELETE "$KUMO_URL/v2/$repo/manifests/$manifest" >/dev/null 2>&1 || true
	kcurl -X DELETE "$KUMO_URL/v2/$repo/blobs/$layer" >/dev/null 2>&1 || true; }

# Each prints the milliseconds one transfer took.
t_cp() {
	local t0
	rm -f "$work/copy"
	sync
	t0=$(now_ns)
	cp "$work/layer" "$work/copy"
	sync "$work/copy"
	echo $((($(now_ns) - t0) / 1000000))
}
t_static_up() {
	local t0 op
	t0=$(now_ns)
	op=$(kcurl -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$work/layer" \
		"$KUMO_URL/api/v1/images?name=kumo-bench-upload&format=qcow2" | jq -r .id)
	echo $((($(now_ns) - t0) / 1000000))
	kcurl "$KUMO_URL/api/v1/operations/$op?wait=60" >/dev/null
}
t_static_down() {
	local t0
	rm -f "$work/down"
	t0=$(now_ns)
	kcurl -o "$work/down" "$KUMO_URL/v2/$repo/blobs/$layer"
	[ "$(stat -c %s "$work/down")" = "$bytes" ] || { echo "the download is short" >&2; exit 1; }
	echo $((($(now_ns) - t0) / 1000000))
}
t_push() {
	local t0
	blob_delete
	t0=$(now_ns)
	skopeo_ copy --quiet --dest-cert-dir "$certs" --dest-creds "bench:$token" "oci:$layout:v1" \
		"docker://$registry/$repo:v1" >/dev/null
	echo $((($(now_ns) - t0) / 1000000))
}
t_push_curl() {
	local t0
	blob_delete
	t0=$(now_ns)
	kcurl -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$work/layer" \
		"$KUMO_URL/v2/$repo/blobs/uploads/?digest=$layer" >/dev/null
	echo $((($(now_ns) - t0) / 1000000))
}
t_pull() {
	local t0
	rm -rf "$work/pulled"
	t0=$(now_ns)
	skopeo_ copy --quiet --src-cert-dir "$certs" --src-creds "bench:$token" "docker://$registry/$repo:v1" \
		"dir:$work/pulled" >/dev/null
	echo $((($(now_ns) - t0) / 1000000))
}

t_pull_curl() {
	local t0 tok
	rm -f "$work/down"
	t0=$(now_ns)
	tok=$(curl -sS --fail --cacert "$KUMO_CACERT" -u "bench:$token" \
		"$KUMO_URL/v2/token?service=kumo&scope=repository:$repo:pull" | jq -r .token)
	curl -sS --fail --cacert "$KUMO_CACERT" -H "Authorization: Bearer $tok" \
		-H 'Accept: application/vnd.oci.image.manifest.v1+json' -o "$work/m" "$KUMO_URL/v2/$repo/manifests/v1" \
		-o "$work/c" "$KUMO_URL/v2/$repo/blobs/$config" -o "$work/down" "$KUMO_URL/v2/$repo/blobs/$layer"
	echo $((($(now_ns) - t0) / 1000000))
	[ "$(stat -c %s "$work/down")" = "$bytes" ] || { echo "the pull is short" >&2; exit 1; }
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
# mbps MS -> MB/s of the file over MS milliseconds
mbps() { awk -v b="$bytes" -v ms="$1" 'BEGIN { printf "%.1f", (b / 1048576) / (ms / 1000) }'; }

declare -A ms
for t in cp static_up push_curl push static_down pull_curl pull; do
	for ((i = 0; i < runs; i++)); do "t_$t"; done | median >"$work/median"
	ms[$t]=$(cat "$work/median")
done

printf '%d MiB, median of %d runs, %s\n' "$mb" "$runs" "$KUMO_URL"
printf '  %-36s %8s MB/s\n' \
	"cp (same disk, fsync)" "$(mbps "${ms[cp]}")" \
	"static upload (curl, /api/v1/images)" "$(mbps "${ms[static_up]}")" \
	"registry push (curl, POST ?digest=)" "$(mbps "${ms[push_curl]}")" \
	"registry push (skopeo)" "$(mbps "${ms[push]}")" \
	"static download (curl, blob file)" "$(mbps "${ms[static_down]}")" \
	"registry pull (curl, token flow)" "$(mbps "${ms[pull_curl]}")" \
	"registry pull (skopeo)" "$(mbps "${ms[pull]}")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }
printf '  push (skopeo) / static upload   %s\n' "$(ratio "${ms[push]}" "${ms[static_up]}")"
printf '  push (curl) / static upload     %s\n' "$(ratio "${ms[push_curl]}" "${ms[static_up]}")"
printf '  pull (curl) / static download   %s   (goal >= 0.70)\n' "$(ratio "${ms[pull_curl]}" "${ms[static_down]}")"
printf '  pull (skopeo) / static download %s\n' "$(ratio "${ms[pull]}" "${ms[static_down]}")"
printf '  push (skopeo) / cp              %s\n' "$(ratio "${ms[push]}" "${ms[cp]}")"
printf '  pull (skopeo) / cp              %s\n' "$(ratio "${ms[pull]}" "${ms[cp]}")"
