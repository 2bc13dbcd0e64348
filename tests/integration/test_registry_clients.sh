#!/bin/bash
# The registry with the clients users have, through the Docker Registry v2 token flow:
# `podman login` (and a wrong password refused), podman push and pull, `buildah push
# --creds`, `skopeo --creds`. /v2/token grants what the role allows and its tokens
# are scoped (another repository is 401 DENIED with insufficient_scope, a viewer's
# push 403) and die with their API token. The OCI 1.1 referrers API (OCI-Subject,
# artifactType filter). Blobs and the store's directories are not world-readable.
# podman and buildah keep their images in a private store under /tmp, never the
# machine's.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

REPO=kt-regc/podman
BREPO=kt-regc/buildah
SREPO=kt-regc/skopeo
AREPO=kt-regc/artifact
tmp=$(mktemp -d /tmp/kt-regc.XXXXXX)
VIEWER_ID=""
DOOMED_ID=""
mkdir -p "$tmp/tmp"
# podman and buildah as root: a private store, no events journal, no cgroups touched.
podman_() {
	TMPDIR=$tmp/tmp NO_PROXY='*' no_proxy='*' podman --root "$tmp/root" --runroot "$tmp/run" \
		--storage-driver vfs --events-backend none --cgroup-manager cgroupfs "$@"
}
buildah_() {
	TMPDIR=$tmp/tmp NO_PROXY='*' no_proxy='*' buildah --root "$tmp/root" --runroot "$tmp/run" \
		--storage-driver vfs "$@"
}
cleanup() {
	oci_untag $REPO:v1
	oci_untag $BREPO:v1
	oci_untag $SREPO:v1
	oci_untag $AREPO:sig
	oci_untag $AREPO:v1
	[ -z "$VIEWER_ID" ] || api DELETE "/api/v1/tokens/$VIEWER_ID" >/dev/null 2>&1 || true
	[ -z "$DOOMED_ID" ] || api DELETE "/api/v1/tokens/$DOOMED_ID" >/dev/null 2>&1 || true
	podman_ rmi -a -f >/dev/null 2>&1 || true
	rm -rf "$tmp" "$OCI_CERTS" "/tmp/kt-regc-$$"
}
trap cleanup EXIT

# token_get USER:PASSWORD SCOPE... -> STATUS, BODY of GET /v2/token
token_get() {
	local cred=$1 q="service=kumo" s
	shift
	for s in "$@"; do q="$q&scope=$s"; done
	STATUS=$(curl -sS --cacert "$KUMO_CACERT" -u "$cred" -o "$tmp/tok" -D "$tmp/tokh" \
		-w '%{http_code}' "$KUMO_URL/v2/token?$q") || STATUS=000
	BODY=$(cat "$tmp/tok")
	HEADERS=$(tr -d '\r' <"$tmp/tokh")
}
# jwt_access TOKEN -> the access claim of a registry token, compact JSON
jwt_access() {
	local p
	p=$(cut -d. -f2 <<<"$1" | tr '_-' '/+')
	while [ $((${#p} % 4)) != 0 ]; do p="$p="; done
	base64 -d <<<"$p" | jq -c .access
}

# How many registry tokens the controller has issued so far (its metrics).
tokens_issued() {
	local m
	m=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/metrics")
	awk '/route="\/v2\/token",code="200"/ { n = $NF } END { print n + 0 }' <<<"$m"
}

oci_build
issued_before=$(tokens_issued)

# ---- podman login: the challenge, the token endpoint, a wrong password -----------------
podman_ login --cert-dir "$OCI_CERTS" --authfile "$tmp/bad.json" -u kumo -p "kumo_wrongwrongwrongwrongwrongwrongwrongwrongwro" \
	"$REGISTRY" >"$tmp/out" 2>&1 && fail "podman login succeeded with a wrong password: $(cat "$tmp/out")"
grep -qi "invalid username/password\|unauthorized" "$tmp/out" || fail "podman login with a wrong password failed otherwise: $(cat "$tmp/out")"
[ ! -s "$tmp/bad.json" ] || ! grep -q "$REGISTRY" "$tmp/bad.json" || fail "a refused login was stored in the auth file"
podman_ login --cert-dir "$OCI_CERTS" --authfile "$tmp/auth.json" -u anyone -p "$ADMIN" "$REGISTRY" >"$tmp/out" 2>&1 ||
	fail "podman login with an API token as password failed: $(cat "$tmp/out")"
pass "podman login succeeds with an API token as password (any user name) and fails with a wrong one"

# ---- podman push and pull ------------------------------------------------------------
# podman names an oci: image after its path, which must be lowercase: the checkout's
# path may not be (a clone in /work/ciA), nor mktemp's. A copy at a lowercase path.
lc=/tmp/kt-regc-$$
rm -rf "$lc" && mkdir -p "$lc" && cp -a "$OCI_DIR/busybox-oci" "$lc/"
podman_ pull -q "oci:$lc/busybox-oci:latest" >"$tmp/out" 2>&1 || fail "podman cannot read the test layout: $(cat "$tmp/out")"
rm -rf "$lc"
img=$(tail -n 1 "$tmp/out")
podman_ tag "$img" "$REGISTRY/$REPO:v1"
podman_ push --cert-dir "$OCI_CERTS" --authfile "$tmp/auth.json" "$REGISTRY/$REPO:v1" >"$tmp/out" 2>&1 ||
	fail "podman push failed: $(cat "$tmp/out")"
reg GET "/v2/$REPO/tags/list"
expect_status 200
[ "$(jqb -c .tags)" = '["v1"]' ] || fail "after podman push the tags of $REPO are $(jqb -c .tags)"
podman_ rmi -f "$REGISTRY/$REPO:v1" >/dev/null 2>&1
podman_ rmi -a -f >/dev/null 2>&1 || true
podman_ pull --cert-dir "$OCI_CERTS" --authfile "$tmp/auth.json" "$REGISTRY/$REPO:v1" >"$tmp/out" 2>&1 ||
	fail "podman pull failed: $(cat "$tmp/out")"
[ "$(podman_ image inspect --format '{{.ID}}' "$REGISTRY/$REPO:v1")" = "$img" ] ||
	fail "the image podman pulled back is not the one it pushed ($img)"
[ "$(tokens_issued)" -gt "$issued_before" ] || fail "podman never fetched a token from /v2/token"
pass "podman pushes $REPO:v1 and pulls it back (same image id), through /v2/token"

# ---- buildah push, skopeo --creds -----------------------------------------------------
buildah_ push --cert-dir "$OCI_CERTS" --creds "kumo:$ADMIN" "$REGISTRY/$REPO:v1" "docker://$REGISTRY/$BREPO:v1" \
	>"$tmp/out" 2>&1 || fail "buildah push failed: $(cat "$tmp/out")"
reg GET "/v2/$BREPO/tags/list"
[ "$STATUS" = 200 ] && [ "$(jqb -c .tags)" = '["v1"]' ] || fail "after buildah push the tags of $BREPO are $BODY"
skopeo_ copy --dest-cert-dir "$OCI_CERTS" --dest-creds "kumo:$ADMIN" "oci:$OCI_DIR/busybox-oci:latest" \
	"docker://$REGISTRY/$SREPO:v1" >"$tmp/out" 2>&1 || fail "skopeo --dest-creds push failed: $(cat "$tmp/out")"
skopeo_ copy --src-cert-dir "$OCI_CERTS" --src-creds "kumo:$ADMIN" "docker://$REGISTRY/$SREPO:v1" \
	"oci:$tmp/sk:v1" >"$tmp/out" 2>&1 || fail "skopeo --src-creds pull failed: $(cat "$tmp/out")"
[ "$(jq -r '.manifests[0].digest' "$tmp/sk/index.json")" = "$(oci_layout_digest busybox-oci)" ] ||
	fail "skopeo pulled another manifest than it pushed"
skopeo_ copy --src-cert-dir "$OCI_CERTS" --src-creds "kumo:kumo_wrongwrongwrongwrongwrongwrongwrongwrongwro" \
	"docker://$REGISTRY/$SREPO:v1" "oci:$tmp/sk2:v1" >/dev/null 2>&1 && fail "skopeo pulled with a wrong password"
pass "buildah push --creds and skopeo --creds (push and pull) work; skopeo with a wrong password does not"

# ---- Basic credentials straight on the registry ---------------------------------------
code=$(curl -sS --cacert "$KUMO_CACERT" -u "x:$ADMIN" -o /dev/null -w '%{http_code}' "$KUMO_URL/v2/$REPO/tags/list")
[ "$code" = 200 ] || fail "Basic credentials with an API token on /v2/ got HTTP $code"
code=$(curl -sS --cacert "$KUMO_CACERT" -u "x:nope" -o /dev/null -w '%{http_code}' "$KUMO_URL/v2/$REPO/tags/list")
[ "$code" = 401 ] || fail "Basic credentials with a wrong password on /v2/ got HTTP $code"
reg PUT "/v2/$REPO/manifests/v9" -
expect_status 401 "a push without credentials"
[ "$(hdr WWW-Authenticate)" = "Bearer realm=\"https://$REGISTRY/v2/token\",service=\"kumo\",scope=\"repository:$REPO:pull,push\"" ] ||
	fail "the push's challenge does not name the realm and the repository's pull,push scope: $(hdr WWW-Authenticate)"
pass "Basic credentials with an API token work on the registry itself; a 401 names the realm and scope"

# ---- the tokens: scoped to what the role allows, dying with their API token -----------
token_get "x:$ADMIN" "repository:$REPO:pull,push" "registry:catalog:*"
expect_status 200 "token for the admin"
tok=$(jqb .token)
[ "$(jqb .access_token)" = "$tok" ] && [ "$(jqb .expires_in)" -gt 0 ] && [ "$(jqb .expires_in)" -le 300 ] &&
	[ -n "$(jqb .issued_at)" ] || fail "the token answer lacks token/access_token/expires_in/issued_at: $BODY"
[ "$(jwt_access "$tok")" = "[{\"type\":\"repository\",\"name\":\"$REPO\",\"actions\":[\"pull\",\"push\"]},{\"type\":\"registry\",\"name\":\"catalog\",\"actions\":[\"*\"]}]" ] ||
	fail "an admin's token grants $(jwt_access "$tok")"
reg GET "/v2/$REPO/tags/list" "$tok"
expect_status 200 "a registry token on its repository"
reg GET /v2/_catalog "$tok"
expect_status 200 "a registry token with the catalogue scope"
reg GET "/v2/$BREPO/tags/list" "$tok"
expect_status 401 "a registry token on another repository"
[ "$(reg_code)" = DENIED ] || fail "another repository answered code $(reg_code), not DENIED"
hdr WWW-Authenticate | grep -q "scope=\"repository:$BREPO:pull\",error=\"insufficient_scope\"" ||
	fail "the refusal does not ask for the scope it needs: $(hdr WWW-Authenticate)"
# The signature's first character changed (its leading bits: never the same bytes).
sig=${tok##*.}
case "${sig:0:1}" in A) forged=${tok%.*}.B${sig:1} ;; *) forged=${tok%.*}.A${sig:1} ;; esac
reg GET "/v2/$REPO/tags/list" "$forged"
expect_status 401 "a registry token with a forged signature"
# The claims changed (another repository), the signature kept.
claims=$(jq -nc --arg r "$BREPO" '{iss:"kumo",aud:"kumo",sub:"1",iat:(now|floor),nbf:(now|floor),exp:((now|floor)+300),access:[{type:"repository",name:$r,actions:["pull","push"]}]}' |
	base64 -w0 | tr '+/' '-_' | tr -d =)
reg GET "/v2/$BREPO/tags/list" "${tok%%.*}.$claims.$sig"
expect_status 401 "a registry token with forged claims"

api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"kt-regc-viewer"}'
expect_status 201
VIEWER=$(jqb .token)
VIEWER_ID=$(jqb .id)
token_get "x:$VIEWER" "repository:$REPO:pull,push"
expect_status 200 "token for a viewer"
vtok=$(jqb .token)
[ "$(jwt_access "$vtok")" = "[{\"type\":\"repository\",\"name\":\"$REPO\",\"actions\":[\"pull\"]}]" ] ||
	fail "a viewer asking pull,push was granted $(jwt_access "$vtok")"
reg GET "/v2/$REPO/tags/list" "$vtok"
expect_status 200 "a viewer's registry token pulls"
reg POST "/v2/$REPO/blobs/uploads/" "$vtok"
expect_status 403 "a viewer's registry token pushes"
[ "$(reg_code)" = DENIED ] || fail "a viewer's push answered code $(reg_code), not DENIED"
podman_ login --cert-dir "$OCI_CERTS" --authfile "$tmp/viewer.json" -u v -p "$VIEWER" "$REGISTRY" >/dev/null 2>&1 ||
	fail "podman login with a viewer token failed"
podman_ push --cert-dir "$OCI_CERTS" --authfile "$tmp/viewer.json" "$REGISTRY/$REPO:v1" "docker://$REGISTRY/kt-regc/viewer:v1" \
	>/dev/null 2>&1 && fail "podman pushed with a viewer token"

api POST /api/v1/tokens '{"kind":"api","role":"operator","name":"kt-regc-doomed"}'
expect_status 201
DOOMED=$(jqb .token)
DOOMED_ID=$(jqb .id)
token_get "x:$DOOMED" "repository:$REPO:pull"
dtok=$(jqb .token)
reg GET "/v2/$REPO/tags/list" "$dtok"
expect_status 200 "a registry token before its API token is deleted"
api DELETE "/api/v1/tokens/$DOOMED_ID"
DOOMED_ID=""
reg GET "/v2/$REPO/tags/list" "$dtok"
expect_status 401 "a registry token after its API token was deleted"
STATUS=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $VIEWER" -o "$tmp/tok" -w '%{http_code}' \
	"$KUMO_URL/v2/token?service=kumo&scope=repository:$REPO:pull,push")
BODY=$(cat "$tmp/tok")
expect_status 200 "/v2/token with an API bearer token"
[ "$(jwt_access "$(jqb .token)")" = "[{\"type\":\"repository\",\"name\":\"$REPO\",\"actions\":[\"pull\"]}]" ] ||
	fail "/v2/token with a viewer's bearer token granted $(jwt_access "$(jqb .token)")"
token_get "x:nope" "repository:$REPO:pull"
expect_status 401 "/v2/token with a wrong password"
hdr WWW-Authenticate | grep -q '^Basic ' || fail "/v2/token's 401 is not a Basic challenge: $HEADERS"
pass "/v2/token grants what the role allows (viewer: pull), tokens are scoped (DENIED, insufficient_scope), signed, and die with their API token"

# ---- OCI 1.1 referrers ---------------------------------------------------------------
subject=$(oci_layout_digest busybox-oci)
subject_size=$(stat -c %s "$OCI_DIR/busybox-oci/blobs/sha256/${subject#sha256:}")
reg PUT "/v2/$AREPO/manifests/v1" "$ADMIN" -H "Content-Type: $MT_OCI_MANIFEST" \
	--data-binary "@$OCI_DIR/busybox-oci/blobs/sha256/${subject#sha256:}"
expect_status 201 "the subject manifest"
printf '{}' >"$tmp/empty"
empty="sha256:$(sha256sum "$tmp/empty" | cut -d' ' -f1)"
reg POST "/v2/$AREPO/blobs/uploads/?digest=$empty" "$ADMIN" -H 'Content-Type: application/octet-stream' --data-binary "@$tmp/empty"
expect_status 201 "the empty config blob"
jq -cn --arg s "$subject" --argjson n "$subject_size" --arg e "$empty" '{schemaVersion: 2,
	mediaType: "application/vnd.oci.image.manifest.v1+json", artifactType: "application/vnd.kumo.test.sig",
	config: {mediaType: "application/vnd.oci.empty.v1+json", digest: $e, size: 2},
	layers: [{mediaType: "application/vnd.oci.empty.v1+json", digest: $e, size: 2}],
	subject: {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $s, size: $n},
	annotations: {"org.example.kind": "test"}}' >"$tmp/sig.json"
sig="sha256:$(sha256sum "$tmp/sig.json" | cut -d' ' -f1)"
reg GET "/v2/$AREPO/referrers/$subject"
expect_status 200 "referrers before any"
[ "$(jqb -c .manifests)" = '[]' ] && [ "$(jqb .mediaType)" = application/vnd.oci.image.index.v1+json ] ||
	fail "referrers before any is not an empty index: $BODY"
reg PUT "/v2/$AREPO/manifests/sig" "$ADMIN" -H "Content-Type: $MT_OCI_MANIFEST" --data-binary "@$tmp/sig.json"
expect_status 201 "a manifest with a subject"
[ "$(hdr OCI-Subject)" = "$subject" ] || fail "the PUT of a manifest with a subject answered OCI-Subject '$(hdr OCI-Subject)'"
reg GET "/v2/$AREPO/referrers/$subject"
expect_status 200 "referrers"
hdr Content-Type | grep -q '^application/vnd.oci.image.index.v1+json' || fail "referrers Content-Type is $(hdr Content-Type)"
[ "$(jqb -c '.manifests')" = "[{\"mediaType\":\"$MT_OCI_MANIFEST\",\"digest\":\"$sig\",\"size\":$(stat -c %s "$tmp/sig.json"),\"artifactType\":\"application/vnd.kumo.test.sig\",\"annotations\":{\"org.example.kind\":\"test\"}}]" ] ||
	fail "referrers do not list the signature with its artifactType and annotations: $BODY"
reg GET "/v2/$AREPO/referrers/$subject?artifactType=application/vnd.kumo.other"
expect_status 200 "referrers filtered"
[ "$(jqb -c .manifests)" = '[]' ] && [ "$(hdr OCI-Filters-Applied)" = artifactType ] ||
	fail "an artifactType filter that matches nothing answered $BODY ($(hdr OCI-Filters-Applied))"
reg GET "/v2/$AREPO/referrers/$subject?artifactType=application/vnd.kumo.test.sig"
[ "$(jqb '.manifests | length')" = 1 ] || fail "the matching artifactType filter answered $BODY"
reg DELETE "/v2/$AREPO/manifests/$sig"
expect_status 202 "the signature's DELETE"
reg GET "/v2/$AREPO/referrers/$subject"
[ "$(jqb -c .manifests)" = '[]' ] || fail "a deleted referrer is still listed: $BODY"
pass "OCI 1.1 referrers: OCI-Subject on PUT, an index with artifactType and annotations, the artifactType filter, empty when none"

# ---- the store is not world-readable --------------------------------------------------
layer=$(jq -r '.layers[0].digest' "$OCI_DIR/busybox-oci/blobs/sha256/${subject#sha256:}")
for d in "$subject" "$layer" "$empty"; do
	f=$KUMO_LAB_DIR/shared/oci/blobs/sha256/${d#sha256:}
	[ "$(stat -c %a "$f")" = 600 ] || fail "blob $d has mode $(stat -c %a "$f"), not 600"
done
for d in oci oci/blobs oci/blobs/sha256 oci/uploads; do
	[ "$(stat -c %a "$KUMO_LAB_DIR/shared/$d")" = 700 ] || fail "$d has mode $(stat -c %a "$KUMO_LAB_DIR/shared/$d"), not 700"
done
[ "$(stat -c %a "$KUMO_LAB_DIR/controller/registry.key")" = 600 ] || fail "registry.key is not 0600"
pass "blobs are 0600 and the store's directories 0700; the registry token key is 0600"
