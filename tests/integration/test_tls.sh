#!/bin/bash
# The API is served over TLS with the certificate made at first start; a client
# that does not trust it is refused, plain HTTP gets nowhere.
. "$(dirname "$0")/lib.sh"

case "$KUMO_URL" in https://*) ;; *) fail "lab API is not https: $KUMO_URL" ;; esac
curl -sS --max-time 5 -o /dev/null "$KUMO_URL/healthz" 2>/dev/null && fail "curl accepted the certificate without --cacert"
curl -sS --cacert "$KUMO_CACERT" --max-time 5 -o /dev/null "$KUMO_URL/healthz" || fail "curl with --cacert failed"
plain=${KUMO_URL/https:/http:}
code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$plain/healthz" 2>/dev/null || true)
[ "$code" != 200 ] || fail "plain HTTP answered on the TLS port"
openssl x509 -in "$KUMO_CACERT" -noout -text | grep -q "IP Address:127.0.0.1" || fail "certificate lacks IP SAN 127.0.0.1"
[ "$(stat -c %a "$KUMO_LAB_DIR/controller/tls.key")" = 600 ] || fail "TLS key is not 0600"
pass "API is TLS-only with a verifiable self-signed certificate; key is 0600"

# Config check mode: tls off on a public address is refused, on loopback allowed.
ctl="$KUMO_BUILD_DIR/controllerd/kumo-controllerd"
if "$ctl" -n -s state_dir=/tmp/x -s tls=off -s api_listen=0.0.0.0:8443 2>/dev/null; then
	fail "-n accepted tls=off on 0.0.0.0"
fi
"$ctl" -n -s state_dir=/tmp/x -s tls=off -s api_listen=127.0.0.1:8443 >/dev/null 2>&1 || fail "-n refused tls=off on loopback"
"$ctl" -n -s state_dir=/tmp/x -s tls=off -s insecure_http=yes -s api_listen=0.0.0.0:8443 >/dev/null 2>&1 ||
	fail "-n refused insecure_http=yes"
if "$ctl" -n -s nonsense=1 2>/dev/null; then fail "-n accepted an unknown option"; fi
pass "config check mode enforces the TLS rule"

# Protocols and ciphers: TLS 1.2+ with AEAD only (openssl s_client, no HTTP needed).
tls_try() { echo | timeout 10 openssl s_client -connect "127.0.0.1:$KUMO_TEST_LAB_API_PORT" "$@" 2>&1 || true; }
negotiated() { grep -qE '^New, [A-Za-z0-9.]+, Cipher is [A-Z0-9]' <<<"$1"; }
# SECLEVEL=0: Debian's OpenSSL would not even offer TLS 1.0/1.1 or CBC-SHA1 otherwise.
old='DEFAULT:@SECLEVEL=0'
out=$(tls_try -tls1 -cipher "$old")
negotiated "$out" && fail "TLS 1.0 was accepted: $(grep '^New' <<<"$out")"
out=$(tls_try -tls1_1 -cipher "$old")
negotiated "$out" && fail "TLS 1.1 was accepted: $(grep '^New' <<<"$out")"
for c in AES128-SHA ECDHE-ECDSA-AES128-SHA ECDHE-ECDSA-AES256-SHA384 ECDHE-RSA-AES128-SHA; do
	out=$(tls_try -tls1_2 -cipher "$c:@SECLEVEL=0")
	negotiated "$out" && fail "TLS 1.2 with CBC cipher $c was accepted"
done
out=$(tls_try -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256)
negotiated "$out" || fail "TLS 1.2 with AES-128-GCM was refused: $(grep -m1 -i error <<<"$out")"
out=$(tls_try -tls1_3)
negotiated "$out" || fail "TLS 1.3 was refused"
pass "TLS 1.0, 1.1 and CBC ciphers refused; TLS 1.2 GCM and TLS 1.3 accepted"

# Security headers on the dashboard and on every answer.
api GET / "" -
expect_status 200
hdr() { grep -i "^$1:" <<<"$HEADERS" | head -n1 | tr -d '\r'; }
csp=$(hdr Content-Security-Policy)
[[ $csp == *"default-src 'none'"* && $csp == *"script-src 'self'"* && $csp == *"frame-ancestors 'none'"* ]] ||
	fail "dashboard CSP is not strict: $csp"
[[ $csp != *unsafe-inline* && $csp != *unsafe-eval* ]] || fail "dashboard CSP allows unsafe code: $csp"
# The page runs only its own files: no inline script or style it would need to allow.
python3 -c 'import re,sys; h=sys.stdin.read(); sys.exit(1 if re.search(r"<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle=|\son[a-z]+=", h, re.I) else 0)' <<<"$BODY" ||
	fail "the dashboard page holds inline script or style"
api GET /ui/app.js "" -
expect_status 200
[[ $(hdr Content-Type) == *javascript* ]] || fail "app.js is served as $(hdr Content-Type)"
api GET /ui/..%2Fkumo.db "" -
expect_status 404
for path in / /healthz /api/v1; do
	api GET "$path"
	[[ $(hdr Strict-Transport-Security) == *max-age=* ]] || fail "$path: no HSTS header"
	[[ $(hdr X-Content-Type-Options) == *nosniff* ]] || fail "$path: no X-Content-Type-Options: nosniff"
	[[ $(hdr X-Frame-Options) == *DENY* ]] || fail "$path: no X-Frame-Options: DENY"
	[[ $(hdr Content-Security-Policy) == *"frame-ancestors 'none'"* ]] || fail "$path: no CSP"
done
pass "HSTS, nosniff, X-Frame-Options and a strict CSP (its own files only) on the dashboard and the API"

# The operator's own certificate and key (an RSA pair: ECDHE-RSA works too), served by a
# second controller on loopback; a mismatched pair is refused at start with a clear error.
tmp=$(mktemp -d /tmp/kumo-tls-test.XXXXXX)
ctl_pid=""
cleanup_tls() {
	[ -z "$ctl_pid" ] || { kill "$ctl_pid" 2>/dev/null; wait "$ctl_pid" 2>/dev/null; } || true
	rm -rf "$tmp"
}
trap cleanup_tls EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kumo-operator-test" \
	-addext "subjectAltName=IP:127.0.0.1" -keyout "$tmp/op.key" -out "$tmp/op.crt" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=other" -keyout "$tmp/other.key" \
	-out "$tmp/other.crt" 2>/dev/null
chmod 600 "$tmp"/*.key
if err=$("$ctl" -n -s state_dir="$tmp/s" -s tls_cert="$tmp/op.crt" -s tls_key="$tmp/other.key" 2>&1); then
	fail "-n accepted a certificate with another certificate's key"
fi
grep -q "is not the private key of tls_cert" <<<"$err" || fail "mismatch error is unclear: $err"
if err=$("$ctl" -n -s state_dir="$tmp/s" -s tls_cert="$tmp/op.crt" 2>&1); then
	fail "-n accepted tls_cert without tls_key"
fi
# Free loopback ports near the lab's own.
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
p=$((KUMO_TEST_LAB_API_PORT + 37))
while ! port_free "$p" || ! port_free $((p + 1)) || ! port_free $((p + 2)); do p=$((p + 3)); done
"$ctl" -s state_dir="$tmp/s" -s api_listen="127.0.0.1:$p" -s link_address=127.0.0.1 \
	-s join_port=$((p + 1)) -s event_port=$((p + 2)) -s shared_pool="$tmp/pool" \
	-s tls_cert="$tmp/op.crt" -s tls_key="$tmp/op.key" -s metrics_public=yes >"$tmp/ctl.log" 2>&1 &
ctl_pid=$!
second_up() { curl -sS --cacert "$tmp/op.crt" --max-time 2 -o /dev/null "https://127.0.0.1:$p/healthz" 2>/dev/null; }
wait_until 30 "second controller answers /healthz" second_up
subject=$(echo | timeout 10 openssl s_client -connect "127.0.0.1:$p" 2>/dev/null | openssl x509 -noout -subject)
[[ $subject == *kumo-operator-test* ]] || fail "the operator's certificate is not served: $subject"
[ ! -e "$tmp/s/tls.crt" ] || fail "a self-signed certificate was made although the operator gave one"
out=$(echo | timeout 10 openssl s_client -connect "127.0.0.1:$p" -tls1_2 -cipher "AES128-SHA:@SECLEVEL=0" 2>&1 || true)
negotiated "$out" && fail "the operator-certificate controller accepted CBC"
pass "the operator's certificate is served (no self-signed one made); a mismatched key is refused"

# metrics_public = yes opens /metrics (only it) to anyone; the lab's controller keeps
# the default and needs a token.
code() { curl -sS --cacert "$1" -o /dev/null -w '%{http_code}' "$2" 2>/dev/null || true; }
[ "$(code "$tmp/op.crt" "https://127.0.0.1:$p/metrics")" = 200 ] || fail "metrics_public = yes: /metrics needs a token"
[ "$(code "$tmp/op.crt" "https://127.0.0.1:$p/api/v1")" = 401 ] || fail "metrics_public = yes opened /api/v1"
[ "$(code "$KUMO_CACERT" "$KUMO_URL/metrics")" = 401 ] || fail "/metrics answers without a token by default"
pass "/metrics needs a token unless metrics_public = yes"
