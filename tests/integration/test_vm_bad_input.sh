#!/bin/bash
# Bad VM requests: each a clear 4xx naming the problem, and nothing created.
. "$(dirname "$0")/lib.sh"

trap 'api DELETE "/api/v1/instances/dup1?force=1" >/dev/null 2>&1 || true' EXIT
snapshot() { sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "SELECT count(*) FROM instances; SELECT count(*) FROM disks; SELECT count(*) FROM operations WHERE kind LIKE 'instance-%'"; }
check() { # check STATUS FIELD BODY
	api POST /api/v1/instances "$3"
	expect_status "$1" "$3"
	[ -n "$(jqb .error)" ] && [ "$(jqb .error)" != null ] || fail "no error message for $3"
	[ -z "$2" ] || [ "$(jqb .field)" = "$2" ] || fail "error names field '$(jqb .field)', want '$2' for $3"
}
vm='"type":"vm","start":false'
before=$(snapshot)
check 400 vcpus '{"name":"b1",'"$vm"',"vcpus":0}'
check 400 vcpus '{"name":"b1",'"$vm"',"vcpus":"two"}'
check 400 'disks[0].bus' '{"name":"b1",'"$vm"',"disks":[{"name":"d","size_mb":8,"bus":"floppy"}]}'
check 400 'nics[0].model' '{"name":"b1",'"$vm"',"nics":[{"model":"rtl8139"}]}'
check 400 'nics[0].mac' '{"name":"b1",'"$vm"',"nics":[{"mac":"01:00:5e:00:00:01"}]}'
check 400 memory '{"name":"b1",'"$vm"',"memory":{"min_mb":512,"max_mb":256}}'
check 400 memory '{"name":"b1",'"$vm"',"memory":{"mb":256,"max_mb":512}}'
check 400 name '{"name":"../etc",'"$vm"'}'
check 400 name '{"name":"a/b",'"$vm"'}'
check 400 name '{"name":"UPPER",'"$vm"'}'
check 400 type '{"name":"b1","type":"lxc"}'
check 400 colour '{"name":"b1",'"$vm"',"colour":"red"}'
check 400 disks '{"name":"b1",'"$vm"',"disks":[{"name":"d","size_mb":8},{"name":"d","size_mb":8}]}'
check 400 'disks[0]' '{"name":"b1",'"$vm"',"disks":[{"name":"d"}]}'
check 404 'disks[0]' '{"name":"b1",'"$vm"',"disks":[{"name":"d","image":"no-such-image"}]}'
check 404 host '{"name":"b1",'"$vm"',"host":"h99"}'
check 404 'nics[0].network' '{"name":"b1",'"$vm"',"nics":[{"network":"nonet"}]}'
check 400 "" '{"name":"b1",'"$vm"',"vcpus":1'
[ "$(snapshot)" = "$before" ] || fail "a refused create changed the database"
pass "bad VM requests get 4xx naming the field; nothing created"

vm_create '{"name":"dup1",'"$vm"',"memory":{"mb":64},"disks":[{"name":"d","size_mb":8}]}'
check 409 name '{"name":"dup1",'"$vm"',"memory":{"mb":64}}'
api POST /api/v1/instances/dup1/actions/explode
expect_status 404
api POST /api/v1/instances/dup1/actions/stop
expect_status 409
api PATCH /api/v1/instances/dup1 '{"disks":[{"name":"d","size_mb":4}]}'
expect_status 400
api PATCH /api/v1/instances/dup1 '{"memory":{"target_mb":128}}'
expect_status 409
api GET "/api/v1/instances/dup1/console?bytes=0"
expect_status 400
pass "duplicate name 409; unknown action 404; wrong-state actions 409; shrinking a disk 400"
