# lib.sh - helpers for integration tests. Source it; it finds the test lab and gives:
#   api METHOD PATH [BODY] [TOKEN]   -> sets STATUS, BODY (and HEADERS)
#   expect_status N                  -> fails unless STATUS is N
#   expect "desc" CMD...             -> fails unless CMD succeeds
#   jqb FILTER                       -> jq -r FILTER over BODY
#   wait_until SECONDS "desc" CMD... -> polls CMD every 0.2 s
#   lab ARGS...                      -> the test lab's deploy/lab
# Every test runs against the shared lab "kt" that the lab_up fixture brought up.
set -euo pipefail

KUMO_SRC=${KUMO_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export KUMO_BUILD_DIR=${KUMO_BUILD_DIR:-$KUMO_SRC/build}
export KUMO_LAB_NO_BUILD=1
LAB_ARGS=(--name kt --subnet 10.232.0 --api-port 9443 --link-port 9700)

lab() { "$KUMO_SRC/deploy/lab" "${LAB_ARGS[@]}" "$@"; }

eval "$(lab env)"
KUMO_LINK_ADDRESS=${KUMO_LINK_ADDRESS:-10.232.0.1}
KUMO_JOIN_PORT=${KUMO_JOIN_PORT:-9700}
ADMIN=$(cat "$KUMO_TOKEN_FILE")
TESTNAME=$(basename "$0" .sh)
STATUS=0
BODY=""
HEADERS=""

fail() {
	echo "FAIL [$TESTNAME]: $*" >&2
	echo "  last status: $STATUS" >&2
	echo "  last body: ${BODY:0:2000}" >&2
	exit 1
}

pass() { echo "ok [$TESTNAME]: $*"; }

# api METHOD PATH [BODY] [TOKEN]; TOKEN "-" sends no Authorization header.
api() {
	local method=$1 path=$2 body=${3:-} token=${4:-$ADMIN}
	local args=(-sS --cacert "$KUMO_CACERT" -X "$method" -o /tmp/kt-body.$$ -D /tmp/kt-head.$$
		-w '%{http_code}' --max-time 90)
	[ "$token" != "-" ] && args+=(-H "Authorization: Bearer $token")
	if [ -n "$body" ]; then
		printf '%s' "$body" >/tmp/kt-req.$$
		args+=(-H 'Content-Type: application/json' --data-binary @/tmp/kt-req.$$)
	fi
	STATUS=$(curl "${args[@]}" "$KUMO_URL$path") || STATUS=000
	BODY=$(cat /tmp/kt-body.$$ 2>/dev/null || true)
	HEADERS=$(cat /tmp/kt-head.$$ 2>/dev/null || true)
	rm -f /tmp/kt-body.$$ /tmp/kt-head.$$ /tmp/kt-req.$$
}

expect_status() {
	[ "$STATUS" = "$1" ] || fail "expected HTTP $1, got $STATUS${2:+ ($2)}"
}

expect() {
	local desc=$1
	shift
	"$@" || fail "$desc"
}

jqb() { jq -r "$@" <<<"$BODY"; }

wait_until() {
	local secs=$1 desc=$2
	shift 2
	local end=$((SECONDS + secs))
	while ! "$@"; do
		[ $SECONDS -ge $end ] && fail "timed out after ${secs}s waiting for: $desc"
		sleep 0.2
	done
}

host_state() {
	api GET "/api/v1/hosts/$1"
	jqb .state
}

all_online() {
	api GET /api/v1/hosts
	[ "$(jqb '[.hosts[] | select(.state == "online")] | length')" = "${1:-3}" ]
}

# Count of something in the controller's metrics, 0 when absent.
metric() {
	curl -sS --cacert "$KUMO_CACERT" "$KUMO_URL/metrics" | awk -v k="$1" '$1 == k { print $2; f=1 } END { if (!f) print 0 }'
}

agent_pid() { cat "$KUMO_LAB_DIR/hosts/$1/agent.pid"; }
controller_pid() { cat "$KUMO_LAB_DIR/controller/controller.pid"; }

host_is() { [ "$(host_state "$1")" = "$2" ]; }

# wait_op ID [SECONDS] -> long-polls an operation until final; sets BODY to it.
wait_op() {
	local id=$1 secs=${2:-120} end=$((SECONDS + ${2:-120}))
	while :; do
		api GET "/api/v1/operations/$id?wait=30"
		case "$(jqb .status)" in succeeded | failed | cancelled) return 0 ;; esac
		[ $SECONDS -ge $end ] && fail "operation $id not finished after ${secs}s"
	done
}

# op_ok -> fails unless the last operation in BODY succeeded.
op_ok() { [ "$(jqb .status)" = succeeded ] || fail "operation $(jqb .kind) failed: $(jqb .error)"; }

# console NAME -> the instance's serial console text.
console() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/instances/$1/console?bytes=65536"; }
console_has() { console "$1" | grep -q -- "$2"; }
instance_is() { api GET "/api/v1/instances/$1" && [ "$(jqb .state)" = "$2" ]; }

# vm_create JSON -> creates and waits for the create operation to succeed.
vm_create() {
	api POST /api/v1/instances "$1"
	expect_status 202 "create $1"
	wait_op "$(jqb .id)" 180
	op_ok
}

# The lab registers the test guest image as "kumo-test".
TEST_IMAGE=kumo-test
