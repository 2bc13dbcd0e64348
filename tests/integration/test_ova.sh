#!/bin/bash
# V2V import: an OVA built here from the test image (OVF 1.0 envelope, a
# stream-optimized VMDK, a SHA-256 manifest) with OVF hardware of 2 vCPUs, 256 MiB, a
# SATA disk and an e1000 NIC with a MAC becomes an image and the create body of a VM
# with exactly that hardware, which boots. Foreign hardware (a sound card, a floppy) is
# noted, not dropped. Bad OVAs (broken XML, a DOCTYPE with entities, a missing disk,
# a file reference with "..", a manifest digest that does not match, a member whose
# size lies) are refused with 400 and leave nothing. With ?convert=1 the import runs
# virt-v2v-in-place on the converted disks before recording them: the busybox guest
# is refused by its inspection, the reason is the operation's error, nothing is left.
. "$(dirname "$0")/lib.sh"

W=$KUMO_LAB_DIR/ova-test
MAC=52:54:00:0a:0b:0c
gone() { api GET "/api/v1/instances/$1" && [ "$STATUS" = 404 ]; }
cleanup() {
	for vm in ovavm ovavm2; do
		api DELETE "/api/v1/instances/$vm?force=1" >/dev/null 2>&1 || true
		wait_until 120 "$vm deleted" gone $vm || true
	done
	api DELETE /api/v1/images/ovaimg >/dev/null 2>&1 || true
	api DELETE /api/v1/images/ovaimg2 >/dev/null 2>&1 || true
	api DELETE /api/v1/images/ovaimgc >/dev/null 2>&1 || true
	rm -rf "$W"
}
trap cleanup EXIT
cleanup
mkdir -p "$W"

qemu-img convert -O vmdk -o subformat=streamOptimized "$KUMO_BUILD_DIR/guest/kumo-test.qcow2" "$W/disk1.vmdk"
disk_size=$(stat -c %s "$W/disk1.vmdk")
capacity=$(qemu-img info --output=json "$KUMO_BUILD_DIR/guest/kumo-test.qcow2" | jq '."virtual-size"')

# export NAME FORMAT FILE -> STATUS, the export in FILE
export_vm() {
	STATUS=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o "$3" -w '%{http_code}' \
		"$KUMO_URL/api/v1/instances/$1/export?format=$2") || STATUS=000
}
# ovf HREF SIZE EXTRA-ITEMS -> an OVF 1.0 descriptor on stdout
ovf() {
	cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References><File ovf:id="file1" ovf:href="$1" ovf:size="$2"/></References>
  <DiskSection><Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="$capacity" ovf:capacityAllocationUnits="byte"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection><Info>Networks</Info><Network ovf:name="lan"><Description>lan</Description></Network></NetworkSection>
  <VirtualSystem ovf:id="kumo-test">
    <Info>A Kumo test guest</Info>
    <VirtualHardwareSection><Info>Hardware</Info>
      <Item><rasd:ElementName>2 virtual CPUs</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>256 MB</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:ElementName>sataController0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>$MAC</rasd:Address><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>lan</rasd:Connection><rasd:ElementName>ethernet0</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:ElementName>sound</rasd:ElementName><rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceSubType>ensoniq1371</rasd:ResourceSubType><rasd:ResourceType>35</rasd:ResourceType></Item>
      ${3:-}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
EOF
}
# ova NAME [MEMBERS...] -> $W/NAME.ova, a ustar of the members of $W/NAME/ in order,
# with a manifest of their SHA-256 unless NOMF is set
ova() {
	local name=$1
	shift
	(
		cd "$W/$name"
		if [ -z "${NOMF:-}" ]; then
			for m in "$@"; do printf 'SHA256(%s)= %s\n' "$m" "$(sha256sum "$m" | cut -c1-64)"; done >"$name.mf"
			set -- "$@" "$name.mf"
		fi
		tar --format=ustar -cf "$W/$name.ova" "$@"
	)
}
upload() { # OVA [IMAGE-NAME [MORE-QUERY]]
	STATUS=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" \
		-H 'Content-Type: application/octet-stream' --data-binary @"$W/$1.ova" \
		-o "$W/up.out" -w '%{http_code}' "$KUMO_URL/api/v1/images?name=${2:-ovaimg}&format=ova${3:-}") || STATUS=000
	BODY=$(cat "$W/up.out" 2>/dev/null || true)
}
nothing_left() {
	api GET /api/v1/images/ovaimg
	[ "$STATUS" = 404 ] || fail "a refused OVA ($1) left an image"
	! ls -A "$KUMO_LAB_DIR/shared/images" | grep -q '^\.upload' || fail "a refused OVA ($1) left files: $(ls -A "$KUMO_LAB_DIR/shared/images")"
}
refused() { # NAME TEXT: the OVA NAME is refused with 400 saying TEXT
	upload "$1"
	[ "$STATUS" = 400 ] || fail "OVA $1: HTTP $STATUS, not 400"
	grep -qi -- "$2" <<<"$(jqb .error)" || fail "OVA $1: the error does not say '$2': $(jqb .error)"
	nothing_left "$1"
}

# ---- bad OVAs ----
mkdir -p "$W/badxml" && cp "$W/disk1.vmdk" "$W/badxml/" && ovf disk1.vmdk "$disk_size" | head -20 >"$W/badxml/vm.ovf"
ova badxml vm.ovf disk1.vmdk
refused badxml "not well-formed"

mkdir -p "$W/entities" && cp "$W/disk1.vmdk" "$W/entities/"
{
	echo '<?xml version="1.0"?><!DOCTYPE Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
	ovf disk1.vmdk "$disk_size" | tail -n +2
} >"$W/entities/vm.ovf"
ova entities vm.ovf disk1.vmdk
refused entities "DOCTYPE"

mkdir -p "$W/missing" && ovf disk1.vmdk "$disk_size" >"$W/missing/vm.ovf"
ova missing vm.ovf
refused missing "missing"

mkdir -p "$W/dotdot" && cp "$W/disk1.vmdk" "$W/dotdot/" && ovf ../disk1.vmdk "$disk_size" >"$W/dotdot/vm.ovf"
ova dotdot vm.ovf disk1.vmdk
refused dotdot "refused"

mkdir -p "$W/badmf" && cp "$W/disk1.vmdk" "$W/badmf/" && ovf disk1.vmdk "$disk_size" >"$W/badmf/vm.ovf"
ova badmf vm.ovf disk1.vmdk
sed -i "s/^\(SHA256(disk1.vmdk)= \).*/\1$(printf '%064d' 0)/" "$W/badmf/badmf.mf"
(cd "$W/badmf" && tar --format=ustar -cf "$W/badmf.ova" vm.ovf disk1.vmdk badmf.mf)
refused badmf "does not match"

mkdir -p "$W/liar" && cp "$W/disk1.vmdk" "$W/liar/" && ovf disk1.vmdk $((disk_size + 4096)) >"$W/liar/vm.ovf"
ova liar vm.ovf disk1.vmdk
refused liar "not the"

head -c $((disk_size / 2)) "$W/badmf.ova" >"$W/truncated.ova"
refused truncated "past the end\|ends"
pass "broken XML, a DOCTYPE, a missing disk, '..', a bad digest, lying and truncated sizes: 400, nothing left"

# ---- a good OVA ----
mkdir -p "$W/good" && cp "$W/disk1.vmdk" "$W/good/" &&
	ovf disk1.vmdk "$disk_size" '<Item><rasd:ElementName>floppy0</rasd:ElementName><rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceType>14</rasd:ResourceType></Item>' >"$W/good/vm.ovf"
ova good vm.ovf disk1.vmdk
upload good
[ "$STATUS" = 202 ] || fail "a good OVA: HTTP $STATUS"
wait_op "$(jqb .id)" 180
op_ok
[ "$(jqb .result.image)" = ovaimg ] || fail "the import names image $(jqb .result.image)"
jqb .result.notes[] | grep -q sound || fail "the sound card was dropped without a note"
jqb .result.notes[] | grep -q floppy0 || fail "the floppy was dropped without a note"
create=$(jqb '.result.instance + {"name": "ovavm"}')
[ "$(jq -c '{vcpus, memory, bus: .disks[0].bus, model: .nics[0].model, mac: .nics[0].mac}' <<<"$create")" = \
	'{"vcpus":2,"memory":{"mb":256},"bus":"sata","model":"e1000","mac":"'$MAC'"}' ] ||
	fail "the OVF hardware is not what the import gives: $create"
pass "the OVA is an image and a create body with 2 vCPUs, 256 MiB, SATA, e1000 $MAC; sound and floppy noted"

# ---- the same OVA with ?convert=1: virt-v2v runs on its disk and refuses busybox ----
upload good ovaimgc '&convert=maybe'
[ "$STATUS" = 400 ] || fail "convert=maybe: HTTP $STATUS"
upload good ovaimgc '&convert=1'
[ "$STATUS" = 202 ] || fail "a converting OVA import: HTTP $STATUS $BODY"
COP=$(jqb .id)
v2v_step() { api GET "/api/v1/operations/$COP" && { jqb .phase | grep -q "^virt-v2v: " || [ "$(jqb .status)" != running ]; }; }
wait_until 180 "a virt-v2v step as the import's phase" v2v_step
jqb .phase | grep -q "^virt-v2v: " || fail "no virt-v2v step was shown; the import is $(jqb .status): $(jqb .error)"
wait_op "$COP" 300
[ "$(jqb .status)" = failed ] || fail "the converting import of busybox is $(jqb .status)"
jqb .error | grep -q "virt-v2v could not convert the OVA's disks: .*No root device found" ||
	fail "the import's error does not say why: $(jqb .error)"
api GET /api/v1/images/ovaimgc
[ "$STATUS" = 404 ] || fail "the refused conversion left image ovaimgc"
[ ! -e "$KUMO_LAB_DIR/shared/images/ovaimgc.qcow2" ] || fail "the refused conversion left ovaimgc.qcow2"
[ ! -e "$KUMO_LAB_DIR/controller/v2v/ova-$COP" ] || fail "the refused conversion left virt-v2v's scratch files"
! grep -l -a -s "KUMO_P2V_CONVERT=ova-$COP" /proc/[0-9]*/environ >/dev/null || fail "the conversion left processes"
pass "?convert=1: virt-v2v ran on the OVA's disk, its refusal is the import's error, nothing left"

vm_create "$create"
wait_until 240 "the imported VM boots" console_has ovavm KUMO-GUEST-READY
api GET /api/v1/instances/ovavm
[ "$(jqb '[.vcpus, .memory.mb, .disks[0].bus, .nics[0].model, .nics[0].mac] | join(" ")')" = "2 256 sata e1000 $MAC" ] ||
	fail "the VM's hardware is not the OVF's: $(jqb -c '[.vcpus, .memory, .disks[0].bus, .nics[0].model, .nics[0].mac]')"
pass "a VM with exactly the OVF's hardware boots from the imported disk"

# ---- export: a stopped VM out as an OVA, and back in ----
export_vm ovavm ova "$W/out.ova"
[ "$STATUS" = 409 ] || fail "a running VM was exported: HTTP $STATUS"
api POST /api/v1/instances/ovavm/actions/stop '{"timeout_s":60}'
wait_op "$(jqb .id)"
op_ok
export_vm ovavm ova "$W/out.ova"
[ "$STATUS" = 200 ] || fail "export: HTTP $STATUS $(head -c 300 "$W/out.ova")"
mkdir -p "$W/out" && tar -xf "$W/out.ova" -C "$W/out"
[ "$(tar -tf "$W/out.ova" | tr '\n' ' ')" = "ovavm.ovf ovavm-disk0.vmdk ovavm.mf " ] ||
	fail "the OVA holds $(tar -tf "$W/out.ova" | tr '\n' ' '), not ovf, vmdk, mf in order"
(cd "$W/out" && sed -E 's/^SHA256\((.*)\)= (.*)$/\2  \1/' ovavm.mf | sha256sum -c --quiet) || fail "the exported manifest does not match"
qemu-img info --output=json "$W/out/ovavm-disk0.vmdk" | jq -e '."format-specific".data["create-type"] == "streamOptimized"' >/dev/null ||
	fail "the exported disk is not a stream-optimized VMDK"
grep -q '<rasd:ResourceType>20</rasd:ResourceType>' "$W/out/ovavm.ovf" && grep -q "$MAC" "$W/out/ovavm.ovf" ||
	fail "the exported OVF lost the SATA controller or the MAC"
qemu-img compare -f vmdk -F qcow2 "$W/out/ovavm-disk0.vmdk" "$KUMO_LAB_DIR/shared/disks/ovavm/disk0.qcow2" >/dev/null ||
	fail "the exported disk differs from the VM's"
export_vm ovavm qcow2 "$W/out.qcow2"
[ "$STATUS" = 200 ] && qemu-img compare -f qcow2 -F qcow2 "$W/out.qcow2" "$KUMO_LAB_DIR/shared/disks/ovavm/disk0.qcow2" >/dev/null ||
	fail "the qcow2 export differs from the VM's disk (HTTP $STATUS)"
pass "export: an OVA (OVF, stream-optimized VMDK, SHA-256 manifest) and a qcow2 equal to the VM's disk"

cp "$W/out.ova" "$W/roundtrip.ova"
upload roundtrip ovaimg2
[ "$STATUS" = 202 ] || fail "re-import of the export: HTTP $STATUS"
wait_op "$(jqb .id)" 180
op_ok
create=$(jqb '.result.instance + {"name": "ovavm2"}')
[ "$(jq -c '{vcpus, memory, bus: .disks[0].bus, model: .nics[0].model, mac: .nics[0].mac}' <<<"$create")" = \
	'{"vcpus":2,"memory":{"mb":256},"bus":"sata","model":"e1000","mac":"'$MAC'"}' ] ||
	fail "the round trip changed the hardware: $create"
api DELETE "/api/v1/instances/ovavm?force=1"
wait_until 120 "ovavm deleted" gone ovavm
vm_create "$create"
wait_until 240 "the round-trip VM boots" console_has ovavm2 KUMO-GUEST-READY
console ovavm2 | grep -q "KUMO-BOOT count=2" || fail "the round-trip VM is not the disk's second boot: $(console ovavm2 | grep KUMO-BOOT)"
pass "export then import: the same hardware, and the VM boots the same disk (its second boot)"
