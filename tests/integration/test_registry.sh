#!/bin/bash
# The registry at /v2/ (OCI distribution): skopeo pushes an image built at test time and
# pulls it back with the same digest; manifests, blobs, tags and the catalogue are
# served with their digests; blobs land on the shared pool and the image is listed in
# /api/v1/images; monolithic and chunked blob uploads; an upload whose digest does not
# match is refused and nothing is stored; viewer tokens pull but cannot push; no token
# is 401.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

REPO=kt-reg/busybox
VREPO=kt-reg/viewer
tmp=$(mktemp -d)
VIEWER_ID=""
BLOBS=() # digests of the blobs this test uploads itself (random data, not shared)
cleanup() {
	oci_untag $REPO:v1
	oci_untag $REPO:v2
	oci_untag $VREPO:v1
	for b in "${BLOBS[@]}"; do reg DELETE "/v2/$REPO/blobs/$b" >/dev/null 2>&1 || true; done
	[ -z "$VIEWER_ID" ] || api DELETE "/api/v1/tokens/$VIEWER_ID" >/dev/null 2>&1 || true
	rm -rf "$tmp" "$OCI_CERTS"
}
trap cleanup EXIT

blob_file() { printf '%s' "$KUMO_LAB_DIR/shared/oci/blobs/sha256/${1#sha256:}"; }
image_row() { # image_row REPO:TAG -> its /api/v1/images entry, or nothing
	api GET /api/v1/images
	expect_status 200
	jqb --arg n "$1" '.images[] | select(.name == $n)'
}

# ---- the API version check and its authentication ----------------------------------
reg GET /v2/
expect_status 200 "GET /v2/ with a token"
reg GET /v2/ -
expect_status 401 "GET /v2/ without a token"
[ "$(hdr WWW-Authenticate)" = "Bearer realm=\"https://$REGISTRY/v2/token\",service=\"kumo\"" ] ||
	fail "401 without the challenge Bearer realm=\"https://$REGISTRY/v2/token\",service=\"kumo\": $HEADERS"
[ "$(reg_code)" = UNAUTHORIZED ] || fail "401 body is not a registry error UNAUTHORIZED"
reg GET /v2/ "kumo_not-a-real-token"
expect_status 401 "GET /v2/ with a bad token"
pass "/v2/ answers 200 with a token, 401 (UNAUTHORIZED, a challenge naming /v2/token) without or with a bad one"

# ---- push with skopeo ----------------------------------------------------------------
oci_build
want=$(oci_layout_digest busybox-oci)
mfile=$OCI_DIR/busybox-oci/blobs/sha256/${want#sha256:}
reg GET "/v2/$REPO/tags/list"
[ "$STATUS" = 404 ] || [ "$(jqb '.tags // [] | length')" = 0 ] || fail "$REPO has tags before the test pushed any"
oci_push busybox-oci $REPO:v1 || fail "skopeo push failed: $SKOPEO_OUT"

reg GET "/v2/$REPO/tags/list"
expect_status 200
[ "$(jqb .name)" = "$REPO" ] && [ "$(jqb -c .tags)" = '["v1"]' ] || fail "tags/list of $REPO is not [v1]"
reg GET /v2/_catalog
expect_status 200
jqb -e --arg r "$REPO" 'any(.repositories[]; . == $r)' >/dev/null || fail "_catalog does not list $REPO"

reg GET "/v2/$REPO/manifests/v1" "$ADMIN" -H "Accept: $MT_OCI_MANIFEST"
expect_status 200 "manifest GET"
[ "$(hdr Docker-Content-Digest)" = "$want" ] ||
	fail "Docker-Content-Digest $(hdr Docker-Content-Digest) differs from the pushed manifest $want"
[ "sha256:$(printf '%s' "$BODY" | sha256sum | cut -d' ' -f1)" = "$want" ] ||
	fail "the manifest served is not the bytes pushed"
cmp -s <(printf '%s' "$BODY") "$mfile" || fail "the manifest served differs from the layout's"
hdr Content-Type | grep -q "^$MT_OCI_MANIFEST" || fail "manifest Content-Type is $(hdr Content-Type)"
manifest=$BODY
reg HEAD "/v2/$REPO/manifests/v1" "$ADMIN" -H "Accept: $MT_OCI_MANIFEST"
expect_status 200 "manifest HEAD"
[ "$(hdr Docker-Content-Digest)" = "$want" ] && [ "$(hdr Content-Length)" = "$(stat -c %s "$mfile")" ] ||
	fail "manifest HEAD digest/length wrong: $HEADERS"
reg GET "/v2/$REPO/manifests/$want" "$ADMIN" -H "Accept: $MT_OCI_MANIFEST"
expect_status 200 "manifest GET by digest"
[ "$BODY" = "$manifest" ] || fail "manifest by digest differs from by tag"

config=$(jq -r .config.digest <<<"$manifest")
layer=$(jq -r '.layers[0].digest' <<<"$manifest")
lsize=$(jq -r '.layers[0].size' <<<"$manifest")
curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o "$tmp/layer" \
	"$KUMO_URL/v2/$REPO/blobs/$layer" || fail "layer GET failed"
[ "sha256:$(sha256sum "$tmp/layer" | cut -d' ' -f1)" = "$layer" ] || fail "the layer served does not match its digest"
reg HEAD "/v2/$REPO/blobs/$layer"
expect_status 200 "blob HEAD"
[ "$(hdr Content-Length)" = "$lsize" ] && [ "$(hdr Docker-Content-Digest)" = "$layer" ] ||
	fail "blob HEAD length/digest wrong: $HEADERS"
reg GET "/v2/$REPO/blobs/$config"
expect_status 200 "config GET"
[ "$(jqb -c .config.Cmd)" = '["sh"]' ] || fail "config blob has Cmd $(jqb -c .config.Cmd)"
for d in "$want" "$config" "$layer"; do
	f=$(blob_file "$d")
	[ -f "$f" ] || fail "blob $d is not in the shared pool ($f)"
	[ "sha256:$(sha256sum "$f" | cut -d' ' -f1)" = "$d" ] || fail "stored blob $f does not match its name"
done
pass "skopeo pushed $REPO:v1; tags, catalogue, manifest (GET/HEAD, by tag and digest) and blobs served with their digests, stored on the shared pool"

row=$(image_row $REPO:v1)
[ -n "$row" ] || fail "/api/v1/images does not list $REPO:v1"
[ "$(jq -r .kind <<<"$row")" = oci ] && [ "$(jq -r .format <<<"$row")" = oci ] ||
	fail "image $REPO:v1 is not listed as kind/format oci: $row"
[ "sha256:$(jq -r .sha256 <<<"$row")" = "$want" ] || fail "/api/v1/images sha256 differs from the manifest digest: $row"
total=$(($(stat -c %s "$mfile") + $(jq '[.config.size, .layers[].size] | add' <<<"$manifest")))
[ "$(jq -r .file_size <<<"$row")" = "$total" ] || fail "file_size $(jq -r .file_size <<<"$row") is not manifest+config+layers $total"
api GET "/api/v1/images/$TEST_IMAGE"
if [ "$STATUS" = 200 ]; then
	api GET /api/v1/images
	jqb -e --arg n "$TEST_IMAGE" 'any(.images[]; .name == $n and .kind == "vm")' >/dev/null ||
		fail "the VM image $TEST_IMAGE is not listed beside the container images"
fi
pass "/api/v1/images lists $REPO:v1 (kind oci, digest, size) beside the VM images"

# ---- pull back with skopeo -----------------------------------------------------------
oci_pull $REPO:v1 "$tmp/pulled" || fail "skopeo pull failed: $SKOPEO_OUT"
[ "$(jq -r '.manifests[0].digest' "$tmp/pulled/index.json")" = "$want" ] ||
	fail "the pulled image has manifest $(jq -r '.manifests[0].digest' "$tmp/pulled/index.json"), not $want"
cmp -s "$tmp/pulled/blobs/sha256/${layer#sha256:}" "$OCI_DIR/busybox-oci/blobs/sha256/${layer#sha256:}" ||
	fail "the pulled layer differs from the pushed one"
pass "skopeo pulls $REPO:v1 back with the same manifest digest and layer"

# ---- a manifest PUT by hand: a second tag --------------------------------------------
reg PUT "/v2/$REPO/manifests/v2" "$ADMIN" -H "Content-Type: $MT_OCI_MANIFEST" --data-binary "@$mfile"
expect_status 201 "manifest PUT"
[ "$(hdr Docker-Content-Digest)" = "$want" ] || fail "manifest PUT answered digest $(hdr Docker-Content-Digest)"
reg GET "/v2/$REPO/tags/list"
[ "$(jqb -c '.tags | sort')" = '["v1","v2"]' ] || fail "tags after a manifest PUT: $(jqb -c .tags)"
[ -n "$(image_row $REPO:v2)" ] || fail "/api/v1/images does not list the new tag $REPO:v2"
pass "a manifest PUT by tag adds the tag, in the registry and in /api/v1/images"

# ---- blob uploads by hand ------------------------------------------------------------
# Monolithic: POST opens a session, one PUT with the whole blob and its digest.
head -c 70000 /dev/urandom >"$tmp/mono"
mono="sha256:$(sha256sum "$tmp/mono" | cut -d' ' -f1)"
reg POST "/v2/$REPO/blobs/uploads/"
expect_status 202 "upload POST"
loc=$(hdr Location)
[ -n "$loc" ] || fail "upload POST without a Location"
BLOBS+=("$mono")
reg PUT "$(upload_path "$loc" "$mono")" "$ADMIN" -H 'Content-Type: application/octet-stream' \
	--data-binary "@$tmp/mono"
expect_status 201 "monolithic upload PUT"
[ "$(hdr Docker-Content-Digest)" = "$mono" ] || fail "upload PUT answered digest $(hdr Docker-Content-Digest)"
curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o "$tmp/mono.back" \
	"$KUMO_URL/v2/$REPO/blobs/$mono"
cmp -s "$tmp/mono" "$tmp/mono.back" || fail "the blob read back differs from the monolithic upload"

# Chunked: POST, two PATCHes with Content-Range, a closing PUT with the digest.
head -c 50000 /dev/urandom >"$tmp/c1"
head -c 30001 /dev/urandom >"$tmp/c2"
cat "$tmp/c1" "$tmp/c2" >"$tmp/chunked"
chunked="sha256:$(sha256sum "$tmp/chunked" | cut -d' ' -f1)"
reg POST "/v2/$REPO/blobs/uploads/"
expect_status 202 "upload POST (chunked)"
loc=$(hdr Location)
BLOBS+=("$chunked")
reg PATCH "$(loc_path "$loc")" "$ADMIN" -H 'Content-Type: application/octet-stream' \
	-H 'Content-Range: 0-49999' --data-binary "@$tmp/c1"
expect_status 202 "first PATCH"
[ "$(hdr Range)" = "0-49999" ] || fail "after the first chunk Range is '$(hdr Range)', not 0-49999"
loc=$(hdr Location)
reg PATCH "$(loc_path "$loc")" "$ADMIN" -H 'Content-Type: application/octet-stream' \
	-H 'Content-Range: 50000-80000' --data-binary "@$tmp/c2"
expect_status 202 "second PATCH"
[ "$(hdr Range)" = "0-80000" ] || fail "after the second chunk Range is '$(hdr Range)', not 0-80000"
loc=$(hdr Location)
reg PUT "$(upload_path "$loc" "$chunked")" "$ADMIN" -H 'Content-Type: application/octet-stream' --data-binary ''
expect_status 201 "closing PUT of a chunked upload"
curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o "$tmp/chunked.back" \
	"$KUMO_URL/v2/$REPO/blobs/$chunked"
cmp -s "$tmp/chunked" "$tmp/chunked.back" || fail "the blob read back differs from the chunked upload"
[ -f "$(blob_file "$chunked")" ] || fail "the chunked blob is not in the shared pool"
pass "monolithic (POST+PUT) and chunked (POST, PATCH, PATCH, PUT) uploads store the blob by its digest"

# ---- bad input -----------------------------------------------------------------------
# A digest that does not match the data: 400 DIGEST_INVALID, nothing stored.
head -c 40000 /dev/urandom >"$tmp/liar"
real="sha256:$(sha256sum "$tmp/liar" | cut -d' ' -f1)"
wrong="sha256:$(printf 'not the data' | sha256sum | cut -d' ' -f1)"
reg POST "/v2/$REPO/blobs/uploads/"
expect_status 202
loc=$(hdr Location)
BLOBS+=("$real" "$wrong")
reg PUT "$(upload_path "$loc" "$wrong")" "$ADMIN" -H 'Content-Type: application/octet-stream' \
	--data-binary "@$tmp/liar"
expect_status 400 "upload with a wrong digest"
[ "$(reg_code)" = DIGEST_INVALID ] || fail "wrong digest answered with code '$(reg_code)', not DIGEST_INVALID"
reg GET "/v2/$REPO/blobs/$wrong"
expect_status 404 "blob under the wrong digest"
[ "$(reg_code)" = BLOB_UNKNOWN ] || fail "missing blob answered with code '$(reg_code)', not BLOB_UNKNOWN"
reg HEAD "/v2/$REPO/blobs/$real"
expect_status 404 "blob under the data's real digest"
[ ! -e "$(blob_file "$wrong")" ] && [ ! -e "$(blob_file "$real")" ] || fail "a refused upload left a blob in the shared pool"
pass "an upload whose digest does not match is refused (400 DIGEST_INVALID) and nothing is stored"

reg GET "/v2/$REPO/manifests/no-such-tag" "$ADMIN" -H "Accept: $MT_OCI_MANIFEST"
expect_status 404 "unknown tag"
[ "$(reg_code)" = MANIFEST_UNKNOWN ] || fail "unknown tag answered with code '$(reg_code)', not MANIFEST_UNKNOWN"
reg GET "/v2/kt-reg/Upper/tags/list"
case "$STATUS" in 400 | 404) ;; *) fail "an invalid repository name got HTTP $STATUS" ;; esac
case "$(reg_code)" in NAME_INVALID | NAME_UNKNOWN) ;; *) fail "an invalid repository name answered with code '$(reg_code)'" ;; esac
reg PUT "/v2/$REPO/manifests/bad" "$ADMIN" -H "Content-Type: $MT_OCI_MANIFEST" --data-binary '{"schemaVersion":2,'
[ "$STATUS" = 400 ] || fail "a malformed manifest got HTTP $STATUS, not 400"
reg GET "/v2/$REPO/tags/list"
[ "$(jqb -c '.tags | sort')" = '["v1","v2"]' ] || fail "a refused manifest PUT changed the tags: $(jqb -c .tags)"
pass "unknown tags (MANIFEST_UNKNOWN), invalid names and malformed manifests are refused; tags unchanged"

# ---- a viewer pulls, never pushes ----------------------------------------------------
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"kt-reg-viewer"}'
expect_status 201
VIEWER=$(jqb .token)
VIEWER_ID=$(jqb .id)
reg GET "/v2/$REPO/manifests/v1" "$VIEWER" -H "Accept: $MT_OCI_MANIFEST"
expect_status 200 "viewer pull of a manifest"
oci_pull $REPO:v1 "$tmp/viewer-pulled" "$VIEWER" || fail "skopeo pull with a viewer token failed: $SKOPEO_OUT"
oci_push busybox-oci $VREPO:v1 "$VIEWER" && fail "skopeo pushed with a viewer token"
reg POST "/v2/$VREPO/blobs/uploads/" "$VIEWER"
case "$STATUS" in 401 | 403) ;; *) fail "upload POST with a viewer token got HTTP $STATUS, not 401/403" ;; esac
reg PUT "/v2/$VREPO/manifests/v1" "$VIEWER" -H "Content-Type: $MT_OCI_MANIFEST" --data-binary "@$mfile"
case "$STATUS" in 401 | 403) ;; *) fail "manifest PUT with a viewer token got HTTP $STATUS, not 401/403" ;; esac
reg DELETE "/v2/$REPO/manifests/$want" "$VIEWER"
case "$STATUS" in 401 | 403) ;; *) fail "manifest DELETE with a viewer token got HTTP $STATUS, not 401/403" ;; esac
reg PUT "/v2/$VREPO/manifests/v1" - -H "Content-Type: $MT_OCI_MANIFEST" --data-binary "@$mfile"
expect_status 401 "manifest PUT without a token"
reg GET "/v2/$VREPO/tags/list"
[ "$STATUS" = 404 ] || [ "$(jqb '.tags // [] | length')" = 0 ] || fail "refused pushes created tags in $VREPO"
reg GET /v2/_catalog
jqb -e --arg r "$VREPO" 'any(.repositories[]; . == $r)' >/dev/null && fail "refused pushes created $VREPO"
[ -z "$(image_row $VREPO:v1)" ] || fail "refused pushes created image $VREPO:v1"
reg GET "/v2/$REPO/tags/list"
[ "$(jqb -c '.tags | sort')" = '["v1","v2"]' ] || fail "a viewer's DELETE changed the tags"
pass "a viewer token pulls (curl and skopeo) but its pushes and deletes are refused (401/403); nothing created"

# ---- delete --------------------------------------------------------------------------
reg DELETE "/v2/$REPO/manifests/$want"
expect_status 202 "manifest DELETE by digest"
reg GET "/v2/$REPO/manifests/v1" "$ADMIN" -H "Accept: $MT_OCI_MANIFEST"
expect_status 404 "manifest after its DELETE"
reg GET "/v2/$REPO/tags/list"
[ "$STATUS" = 404 ] || [ "$(jqb '.tags // [] | length')" = 0 ] || fail "tags are left after the manifest was deleted: $BODY"
[ -z "$(image_row $REPO:v1)" ] && [ -z "$(image_row $REPO:v2)" ] || fail "/api/v1/images still lists a deleted tag"
for b in "$mono" "$chunked"; do
	reg DELETE "/v2/$REPO/blobs/$b"
	expect_status 202 "blob DELETE"
	reg HEAD "/v2/$REPO/blobs/$b"
	expect_status 404 "blob after its DELETE"
done
BLOBS=()
pass "a manifest DELETE removes its tags (registry and /api/v1/images); blob DELETE removes blobs"
