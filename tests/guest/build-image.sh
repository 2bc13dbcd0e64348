#!/bin/sh
# Build the Kumo test guest disk image from Debian packages (deploy/install-deps.sh):
#
#   tests/guest/build-image.sh OUTDIR      -> OUTDIR/kumo-test.qcow2
#
# The image: an MBR (syslinux mbr.bin) with one bootable ext4 partition (label
# kumo-root) holding extlinux, /boot/vmlinuz (the newest Debian kernel in /boot),
# /boot/initrd.img (busybox + the kernel modules a guest needs; /init is
# tests/guest/init, and Debian's qemu-ga with the libraries it links) and /var/kumo/,
# where the guest keeps its boot counter.
# SeaBIOS -> mbr.bin -> extlinux -> kernel (console=ttyS0) -> /init.
# Boots on virtio-blk, virtio-scsi, SATA (AHCI) and IDE (PIIX); NICs virtio, e1000(e).
#
# Cached: when OUTDIR/kumo-test.qcow2 exists and OUTDIR/kumo-test.stamp matches the
# inputs (this directory's files, kernel version, busybox), nothing is done. Booting
# the image itself changes it (boot counter): run guests on overlays
#   qemu-img create -f qcow2 -b OUTDIR/kumo-test.qcow2 -F qcow2 guest.qcow2
#
# Needs root (loop device + mount for extlinux). Partition nodes never appear here,
# so the partition is reached with `losetup --offset`.
set -eu

usage() {
	echo "usage: $0 OUTDIR" >&2
	exit 2
}
[ $# -eq 1 ] || usage
OUTDIR=$1
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE_MB=64      # virtual disk size
PART_START=2048  # sectors: the partition starts at 1 MiB
OUT_QCOW=kumo-test.qcow2
STAMP=kumo-test.stamp
# console=ttyS0 only (no VGA console), quiet; SCSI scanning synchronous so disks exist
# when insmod returns. The rest trims work a TCG guest pays for at every boot and a
# throw-away test guest does not need: no CPU-bug mitigations or their patching
# (mitigations=off), no KASLR relocation pass in the decompressor (nokaslr), no zeroing
# of every allocation (init_on_alloc=0), no crypto self-tests (cryptomgr.notests), no
# clocksource watchdog or timer check (TCG's TSC is QEMU's clock: tsc=reliable,
# no_timer_check), no PS/2 mouse probe (i8042.noaux; the keyboard stays for the VNC
# screen), no lockup watchdog, no audit.
CMDLINE="console=ttyS0 quiet scsi_mod.scan=sync panic=-1 mitigations=off nokaslr init_on_alloc=0"
CMDLINE="$CMDLINE cryptomgr.notests tsc=reliable no_timer_check i8042.noaux nowatchdog audit=0"

# Modules for /init, in load order; each one's dependencies (modules.dep) are put
# before it; the virtio transport before the devices on it.
MODULES="
virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
failover net_failover virtio_net virtio_blk
virtio_scsi crct10dif_generic crc64_rocksoft_generic sd_mod
libata libahci ahci ata_piix sr_mod
e1000 e1000e
virtio_balloon
virtio_console
crc32c_generic ext4
nls_cp437 nls_ascii nls_iso8859-1 nls_utf8 vfat isofs
evdev button
"

die() {
	echo "build-image: $*" >&2
	exit 1
}

need() {
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 ||
			die "missing $c (run deploy/install-deps.sh)"
	done
}
need sfdisk mkfs.ext4 extlinux cpio gzip qemu-img losetup mount umount flock sha256sum ldd strip

# qemu-guest-agent, so a backup of a running guest can freeze its file systems.
QEMU_GA=""
for f in /usr/sbin/qemu-ga /usr/bin/qemu-ga; do
	[ -x "$f" ] && QEMU_GA=$f && break
done
[ -n "$QEMU_GA" ] || die "qemu-ga not found (package qemu-guest-agent)"

MBR_BIN=""
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
	[ -f "$f" ] && MBR_BIN=$f && break
done
[ -n "$MBR_BIN" ] || die "syslinux mbr.bin not found (package syslinux-common)"

BUSYBOX=""
for f in /bin/busybox /usr/bin/busybox; do
	[ -x "$f" ] && BUSYBOX=$f && break
done
[ -n "$BUSYBOX" ] || die "busybox not found (package busybox-static)"
# A dynamically linked busybox would need its libraries in the initramfs.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
	die "$BUSYBOX is dynamically linked; install busybox-static"
fi

# The newest kernel in /boot.
KVER=$(for f in /boot/vmlinuz-*; do [ -f "$f" ] && echo "${f#/boot/vmlinuz-}"; done |
	sort -V | tail -n 1)
[ -n "$KVER" ] || die "no /boot/vmlinuz-* (package linux-image-amd64)"
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[ -f "$MODDIR/modules.dep" ] || die "no $MODDIR/modules.dep"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# Inputs: the files of this directory, the kernel, busybox.
HASH=$(
	{
		for f in "$HERE"/*; do
			[ -f "$f" ] && sha256sum "$f" | cut -d' ' -f1
		done
		echo "kernel $KVER $(stat -c '%s %Y' "$KERNEL")"
		sha256sum "$BUSYBOX" | cut -d' ' -f1
		sha256sum "$QEMU_GA" | cut -d' ' -f1
		sha256sum "$MBR_BIN" | cut -d' ' -f1
		extlinux --version 2>&1 | head -n 1
	} | sha256sum | cut -d' ' -f1
)

# One builder at a time per OUTDIR; a second one waits, then finds the cache valid.
exec 9>"$OUTDIR/.kumo-test.lock"
flock 9

if [ -f "$OUTDIR/$OUT_QCOW" ] && [ "$(cat "$OUTDIR/$STAMP" 2>/dev/null)" = "$HASH" ]; then
	echo "build-image: $OUTDIR/$OUT_QCOW is up to date"
	exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (loop device and mount)"

WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
LOOP=""
MNT=""
cleanup() {
	rc=$?
	trap - EXIT INT TERM HUP
	if [ -n "$MNT" ] && mountpoint -q "$MNT" 2>/dev/null; then
		umount "$MNT" || umount -l "$MNT" || true
	fi
	if [ -n "$LOOP" ]; then
		losetup -d "$LOOP" 2>/dev/null || true
	fi
	rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

echo "build-image: building $OUTDIR/$OUT_QCOW (kernel $KVER)"

# ---- initramfs ----------------------------------------------------------------------
IRD=$WORK/initramfs
mkdir -p "$IRD"
for d in bin sbin usr/bin usr/sbin etc/kumo etc/acpi/PWRF proc sys dev run tmp mnt \
	var/log root "lib/modules/$KVER"; do
	mkdir -p "$IRD/$d"
done
chmod 1777 "$IRD/tmp"
cp "$BUSYBOX" "$IRD/bin/busybox"
"$BUSYBOX" --list-full | while read -r app; do
	[ "$app" = bin/busybox ] && continue
	[ -e "$IRD/$app" ] && continue
	mkdir -p "$IRD/$(dirname "$app")"
	ln -s /bin/busybox "$IRD/$app"
done
mknod -m 600 "$IRD/dev/console" c 5 1
mknod -m 666 "$IRD/dev/null" c 1 3

# Resolve the module list against modules.dep (dependencies first, each once) and copy
# the modules; skip built-in ones.
: >"$WORK/modlist"
add_module() ( # add_module NAME-or-relpath; a subshell, so recursion keeps its variables
	case "$1" in
	*.ko*) rel=$1 ;;
	*)
		# module names treat - and _ alike
		pat=$(echo "$1" | sed 's/[-_]/[-_]/g')
		if grep -Eq "/$pat\.ko(\.[a-z]+)?\$" "$MODDIR/modules.builtin"; then
			return 0
		fi
		rel=$(grep -E "^([^:]*/)?$pat\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" |
			head -n 1 | cut -d: -f1)
		[ -n "$rel" ] || die "module $1 not found for kernel $KVER"
		;;
	esac
	grep -qxF "$rel" "$WORK/modlist" && return 0
	deps=$(grep -E "^$rel:" "$MODDIR/modules.dep" | cut -d: -f2)
	# modules.dep lists dependencies nearest-first: load them in reverse.
	for dep in $(echo "$deps" | tr ' ' '\n' | sed '1!G;h;$!d'); do
		add_module "$dep"
	done
	grep -qxF "$rel" "$WORK/modlist" || echo "$rel" >>"$WORK/modlist"
)
for m in $MODULES; do
	add_module "$m"
done
while read -r rel; do
	mkdir -p "$IRD/lib/modules/$KVER/$(dirname "$rel")"
	case "$rel" in
	*.ko.xz) xz -dc "$MODDIR/$rel" >"$IRD/lib/modules/$KVER/${rel%.xz}" ;;
	*.ko.zst) zstd -qdc "$MODDIR/$rel" >"$IRD/lib/modules/$KVER/${rel%.zst}" ;;
	*.ko.gz) gzip -dc "$MODDIR/$rel" >"$IRD/lib/modules/$KVER/${rel%.gz}" ;;
	*) cp "$MODDIR/$rel" "$IRD/lib/modules/$KVER/$rel" ;;
	esac
	# Without its appended signature: the guest kernel then loads it unchecked (it only
	# taints; nothing enforces signatures) instead of hashing every module in TCG.
	strip --strip-debug "$IRD/lib/modules/$KVER/${rel%.ko*}.ko"
	echo "/lib/modules/$KVER/${rel%.ko*}.ko"
done <"$WORK/modlist" >"$IRD/etc/kumo/modules"

# qemu-ga and what ldd says it loads, at the same paths (the loader included).
install -D -m 0755 "$QEMU_GA" "$IRD/usr/sbin/qemu-ga"
ldd "$QEMU_GA" | grep -o '/[^ ]*' | while read -r lib; do
	install -D -m 0755 "$lib" "$IRD$lib"
done

install -m 0755 "$HERE/init" "$IRD/init"
install -m 0755 "$HERE/udhcpc.script" "$IRD/etc/kumo/udhcpc.script"
install -m 0755 "$HERE/acpi-power.sh" "$IRD/etc/acpi/PWRF/00000080"
install -m 0644 "$HERE/inittab" "$IRD/etc/inittab"
echo "root:x:0:0:root:/root:/bin/sh" >"$IRD/etc/passwd"
echo "root:x:0:" >"$IRD/etc/group"
printf '%s\n' 'PS1="\h:\w# "' >"$IRD/etc/profile"
: >"$IRD/etc/resolv.conf"

(cd "$IRD" && find . -mindepth 1 | LC_ALL=C sort |
	cpio --quiet -o -H newc -R 0:0) | gzip -6n >"$WORK/initrd.img"

# ---- disk image ---------------------------------------------------------------------
RAW=$WORK/kumo-test.raw
truncate -s "${IMAGE_MB}M" "$RAW"
printf 'label: dos\nstart=%s, type=83, bootable\n' "$PART_START" |
	sfdisk --quiet --no-reread --no-tell-kernel "$RAW" >/dev/null
dd if="$MBR_BIN" of="$RAW" bs=440 count=1 conv=notrunc status=none
OFFSET=$((PART_START * 512))
PART_BYTES=$((IMAGE_MB * 1024 * 1024 - OFFSET))

# ext4 without 64bit (extlinux is happiest that way); small and quick to check.
mkfs.ext4 -q -F -L kumo-root -O ^64bit -E "offset=$OFFSET" -m 0 -N 2048 \
	"$RAW" "$((PART_BYTES / 1024))k"

LOOP=$(losetup --find --show --offset "$OFFSET" --sizelimit "$PART_BYTES" "$RAW")
MNT=$WORK/mnt
mkdir -p "$MNT"
mount -t ext4 "$LOOP" "$MNT"
mkdir -p "$MNT/boot/extlinux" "$MNT/var/kumo"
cp "$KERNEL" "$MNT/boot/vmlinuz"
cp "$WORK/initrd.img" "$MNT/boot/initrd.img"
cat >"$MNT/boot/extlinux/extlinux.conf" <<EOF
DEFAULT kumo
PROMPT 0
TIMEOUT 0
LABEL kumo
	LINUX /boot/vmlinuz
	INITRD /boot/initrd.img
	APPEND $CMDLINE
EOF
echo "Kumo test guest: kernel $KVER, built by tests/guest/build-image.sh" >"$MNT/README"
extlinux --install "$MNT/boot/extlinux" >/dev/null 2>&1 ||
	die "extlinux --install failed"
sync
umount "$MNT"
losetup -d "$LOOP"
LOOP=""
qemu-img convert -f raw -O qcow2 "$RAW" "$WORK/$OUT_QCOW"
rm -f "$RAW"
mv -f "$WORK/$OUT_QCOW" "$OUTDIR/$OUT_QCOW"
echo "$HASH" >"$OUTDIR/$STAMP"
echo "build-image: wrote $OUTDIR/$OUT_QCOW"
