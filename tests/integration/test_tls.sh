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
