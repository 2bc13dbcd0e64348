#!/bin/bash
# bench/dqlite-spike.sh - a spike, not part of Kumo's main path: can the controller's state
# live on dqlite (SQLite replicated with Raft) when users outgrow one controller machine?
#
# It takes the schema of the current controller (a kumo-controllerd started once on a
# scratch state dir), loads it into a 3-node dqlite cluster on loopback (Debian's
# libdqlite 1.11 through go-dqlite's dqlite-demo nodes and `dqlite` shell), and measures:
#   - writes/s of single-row transactions into `events`, against the same statements on a
#     local SQLite file with the controller's pragmas (WAL, synchronous=FULL), same run;
#   - writes/s with 100 rows per transaction (what group commit would send), one
#     statement each;
#   - failover: the leader is killed with SIGKILL during a steady write loop; the time
#     from the kill to the next acknowledged write, and whether every write acknowledged
#     before and after the kill is still there.
# Usage: bench/dqlite-spike.sh [ROWS]   (as root or not; needs go-dqlite, sqlite3 and a
# build of kumo-controllerd in $KUMO_BUILD_DIR, default build/). Only loopback is used.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-500}
BUILD=${KUMO_BUILD_DIR:-build}
CTLD=$BUILD/controllerd/kumo-controllerd
TMP=$(mktemp -d /tmp/kumo-dqlite.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT

command -v dqlite >/dev/null || { echo "needs go-dqlite (apt-get install go-dqlite)" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "needs sqlite3" >&2; exit 2; }
[ -x "$CTLD" ] || { echo "needs $CTLD (build first, or set KUMO_BUILD_DIR)" >&2; exit 2; }

ms() { date +%s%3N; }

# 1. The controller's schema, as its migrations make it.
mkdir -p "$TMP/ctl"
"$CTLD" -s state_dir="$TMP/ctl" -s tls=off -s api_listen=127.0.0.1:18199 \
	-s link_address=127.0.0.1 -s join_port=18197 -s event_port=18198 -s log_level=warn \
	>"$TMP/ctl.log" 2>&1 &
ctl=$!
PIDS+=("$ctl")
for _ in $(seq 100); do curl -sf http://127.0.0.1:18199/healthz >/dev/null 2>&1 && break; sleep 0.1; done
kill "$ctl"
wait "$ctl" 2>/dev/null || true
sqlite3 "$TMP/ctl/kumo.db" .schema | grep -v '^CREATE TABLE sqlite_sequence' >"$TMP/schema.sql"
echo "schema: $(grep -c '^CREATE TABLE' "$TMP/schema.sql") tables, $(grep -c '^CREATE INDEX' "$TMP/schema.sql") indexes (schema version $(sqlite3 "$TMP/ctl/kumo.db" 'PRAGMA user_version'))"

# 2. Three dqlite nodes; node 1 bootstraps, 2 and 3 join it.
node() { # node I [JOIN]
	local i=$1
	mkdir -p "$TMP/n$i"
	dqlite-demo -a 127.0.0.1:$((18100 + i)) -d 127.0.0.1:$((19100 + i)) -D "$TMP/n$i" \
		${2:+-j "$2"} >"$TMP/n$i.log" 2>&1 &
	PIDS+=($!)
	eval "NODE_PID_$i=$!"
	disown $! # its SIGKILL below is the point, not news
}
SERVERS=127.0.0.1:19101,127.0.0.1:19102,127.0.0.1:19103
sh_() { timeout 60 dqlite -s "$SERVERS" kumo; }
node 1
for _ in $(seq 100); do curl -s http://127.0.0.1:18101/x >/dev/null 2>&1 && break; sleep 0.1; done
node 2 127.0.0.1:19101
node 3 127.0.0.1:19101
for _ in $(seq 200); do
	[ "$(echo .cluster | sh_ 2>/dev/null | grep -c voter)" = 3 ] && break
	sleep 0.2
done
echo "cluster: $(echo .cluster | sh_ | grep -c voter) voters, leader $(echo .leader | sh_ | tr -d '\r' | grep -o '127[0-9.:]*' | head -1)"
sh_ <"$TMP/schema.sql" >"$TMP/schema.out" 2>&1
grep -qi error "$TMP/schema.out" && { echo "schema load failed:"; cat "$TMP/schema.out"; exit 1; }

# 3. Write bursts: one row per transaction, then 100 rows per transaction.
single() { for i in $(seq "$1"); do echo "INSERT INTO events(time, type, data) VALUES ($i, 'bench', '{\"i\":$i}');"; done; }
# 100 rows in one statement: one transaction and one round trip (the dqlite shell sends
# each line on its own, so BEGIN ... COMMIT over many lines would measure round trips).
batched() {
	for b in $(seq $(($1 / 100))); do
		printf "INSERT INTO events(time, type, data) VALUES (%d, 'batch', '{}')" "$b"
		for _ in $(seq 99); do printf ", (%d, 'batch', '{}')" "$b"; done
		echo ";"
	done
}
single "$ROWS" >"$TMP/single.sql"
batched "$ROWS" >"$TMP/batched.sql"
t0=$(ms); sh_ <"$TMP/single.sql" >/dev/null; t1=$(ms)
dq_single=$((ROWS * 1000 / (t1 - t0 + 1)))
t0=$(ms); sh_ <"$TMP/batched.sql" >/dev/null; t1=$(ms)
dq_batched=$((ROWS / 100 * 100 * 1000 / (t1 - t0 + 1)))
got=$(echo "SELECT count(*) FROM events;" | sh_ | grep -o '[0-9]\+' | tail -1)

# The baseline: the same statements on one local SQLite file, the controller's pragmas.
cp "$TMP/schema.sql" "$TMP/local.sql"
sqlite3 "$TMP/local.db" 'PRAGMA journal_mode=WAL;' >/dev/null
sqlite3 "$TMP/local.db" <"$TMP/schema.sql"
t0=$(ms); { echo "PRAGMA synchronous=FULL;"; cat "$TMP/single.sql"; } | sqlite3 "$TMP/local.db"; t1=$(ms)
lo_single=$((ROWS * 1000 / (t1 - t0 + 1)))
t0=$(ms); { echo "PRAGMA synchronous=FULL;"; cat "$TMP/batched.sql"; } | sqlite3 "$TMP/local.db"; t1=$(ms)
lo_batched=$((ROWS / 100 * 100 * 1000 / (t1 - t0 + 1)))

# 4. Failover: a steady loop of single writes, each acknowledged or not; kill the leader.
leader=$(echo .leader | sh_ | tr -d '\r' | grep -o '127.0.0.1:191[0-9][0-9]' | head -1)
li=$((${leader##*:} - 19100))
lpid=$(eval echo "\$NODE_PID_$li")
: >"$TMP/acks"
writer() {
	local i=0
	while [ ! -e "$TMP/stop" ]; do
		i=$((i + 1))
		if echo "INSERT INTO events(time, type, data) VALUES ($i, 'failover', '{}');" |
			timeout 10 dqlite -s "$SERVERS" kumo 2>&1 | grep -qi error; then
			echo "$(ms) fail $i" >>"$TMP/acks"
		else
			echo "$(ms) ok $i" >>"$TMP/acks"
		fi
	done
}
writer &
wpid=$!
PIDS+=("$wpid")
while [ "$(grep -c ' ok ' "$TMP/acks")" -lt 20 ]; do sleep 0.05; done
kill_at=$(ms)
kill -9 "$lpid"
# Wait for 20 acknowledged writes after the kill.
while [ "$(awk -v k="$kill_at" '$1 > k && $2 == "ok"' "$TMP/acks" | wc -l)" -lt 20 ]; do
	[ $(($(ms) - kill_at)) -gt 60000 ] && { echo "no write acknowledged within 60 s of the kill"; break; }
	sleep 0.05
done
touch "$TMP/stop"
wait "$wpid" 2>/dev/null || true
first_ok=$(awk -v k="$kill_at" '$1 > k && $2 == "ok" { print $1; exit }' "$TMP/acks")
failover=$((first_ok - kill_at))
acked=$(awk '$2 == "ok"' "$TMP/acks" | wc -l)
# A write that started before the kill may be acknowledged after it: count by id.
present=$(echo "SELECT count(DISTINCT time) FROM events WHERE type = 'failover';" | sh_ | grep -o '[0-9]\+' | tail -1)
lost=0
for id in $(awk '$2 == "ok" { print $3 }' "$TMP/acks"); do
	n=$(echo "SELECT count(*) FROM events WHERE type = 'failover' AND time = $id;" | sh_ | grep -o '[0-9]\+' | tail -1)
	[ "${n:-0}" -ge 1 ] || lost=$((lost + 1))
done

echo
printf '%-46s %10s %10s %8s\n' "" dqlite sqlite ratio
printf '%-46s %10s %10s %8s\n' "writes/s, 1 row per transaction ($ROWS)" "$dq_single" "$lo_single" \
	"$(awk -v a="$dq_single" -v b="$lo_single" 'BEGIN { printf "%.2f", a / b }')"
printf '%-46s %10s %10s %8s\n' "writes/s, 100 rows per transaction" "$dq_batched" "$lo_batched" \
	"$(awk -v a="$dq_batched" -v b="$lo_batched" 'BEGIN { printf "%.2f", a / b }')"
echo "rows after the bursts: $got of $((ROWS + ROWS / 100 * 100))"
echo "failover: leader $leader killed (SIGKILL); next acknowledged write after ${failover} ms"
echo "writes acknowledged in the failover loop: $acked; rows present: $present; acknowledged but lost: $lost"
