#!/bin/sh
# Build a minimal Debian guest that virt-v2v recognises (a more honest "physical
# machine" than the busybox test image, whose inspection finds no root device):
#
#   tests/soak/build-debian-guest.sh OUTDIR      -> OUTDIR/debian-v2v.qcow2
#
# debootstrap (minbase, the machine's own Debian suite and mirror from /etc/apt) plus
# the Debian kernel and GRUB 2 (virt-v2v converts only GRUB-booted Linux guests), on an
# MBR disk with one ext4 partition (label root). The disk is made, filled and made
# bootable in the libguestfs appliance (guestfish): no loop device or partition node of
# this machine is touched, and grub-install sees a plain /dev/sda. The guest's console
# is ttyS0 (GRUB and the kernel) and it uses IDE/SATA drivers only as any distro kernel
# does, so it boots unchanged on SATA before the conversion, on virtio after.
#
# Cached: OUTDIR/debian-v2v.stamp holds the inputs (this script, the suite, the
# mirror); when it matches, nothing is done. Built only by the tests that need it
# (tests/soak/p2v_convert.sh): it downloads ~150 MB and takes minutes. Needs root
# (debootstrap's chroot).
set -eu

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUTDIR=$1
OUT=debian-v2v.qcow2
STAMP=debian-v2v.stamp
DISK_MB=1536

die() {
	echo "build-debian: $*" >&2
	exit 1
}
for c in debootstrap guestfish qemu-img flock tar; do
	command -v "$c" >/dev/null 2>&1 || die "missing $c (run deploy/install-deps.sh)"
done

# The suite and mirror this machine installs from (deb822 or one-line sources).
SUITE=$(. /etc/os-release && echo "$VERSION_CODENAME")
MIRROR=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/* *$/\1/p' /etc/apt/sources.list.d/*.sources \
	2>/dev/null | head -n 1)
[ -n "$MIRROR" ] || MIRROR=$(sed -n 's/^deb  *\(http[^ ]*\/debian\)\/*  *.*/\1/p' \
	/etc/apt/sources.list 2>/dev/null | head -n 1)
[ -n "$SUITE" ] && [ -n "$MIRROR" ] || die "cannot tell the Debian suite and mirror from /etc"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
HASH=$({ sha256sum "$0" | cut -d' ' -f1; echo "$SUITE $MIRROR $DISK_MB"; } | sha256sum | cut -d' ' -f1)

exec 9>"$OUTDIR/.debian-v2v.lock"
flock 9
if [ -f "$OUTDIR/$OUT" ] && [ "$(cat "$OUTDIR/$STAMP" 2>/dev/null)" = "$HASH" ]; then
	echo "build-debian: $OUTDIR/$OUT is up to date"
	exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap)"

WORK=$(mktemp -d "$OUTDIR/.debian.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
echo "build-debian: debootstrap $SUITE from $MIRROR"
# grub-pc's postinst must not try to install to this machine's disks.
DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase \
	--include=linux-image-amd64,grub-pc,systemd-sysv,udev,kmod,ifupdown,isc-dhcp-client \
	"$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
	{ tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }

echo "kumo-v2v" >"$ROOT/etc/hostname"
printf 'LABEL=root / ext4 errors=remount-ro 0 1\n' >"$ROOT/etc/fstab"
printf 'auto lo\niface lo inet loopback\n' >"$ROOT/etc/network/interfaces"
# The root password is empty: a console login for whoever debugs the guest.
sed -i 's/^root:[^:]*:/root::/' "$ROOT/etc/shadow"
cat >"$ROOT/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
echo "Kumo P2V conversion guest, built by tests/soak/build-debian-guest.sh" >"$ROOT/README.kumo"
rm -rf "$ROOT/var/cache/apt/archives"/*.deb "$ROOT/var/lib/apt/lists"/*_Packages
tar -C "$ROOT" -cf "$WORK/root.tar" .
rm -rf "$ROOT"

echo "build-debian: making the disk in the libguestfs appliance"
# KVM here may be present but broken: the appliance runs under TCG.
LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg guestfish <<GF
sparse $WORK/disk.raw ${DISK_MB}M
run
part-disk /dev/sda mbr
part-set-bootable /dev/sda 1 true
mkfs ext4 /dev/sda1 label:root
mount /dev/sda1 /
tar-in $WORK/root.tar /
command "grub-install --target=i386-pc /dev/sda"
command "update-grub"
sync
umount-all
GF
qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$WORK/$OUT"
mv -f "$WORK/$OUT" "$OUTDIR/$OUT"
echo "$HASH" >"$OUTDIR/$STAMP"
echo "build-debian: wrote $OUTDIR/$OUT"
