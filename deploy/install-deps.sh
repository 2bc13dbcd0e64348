#!/bin/sh
# Install the Debian packages Kumo needs to run, build or test (default: all of them).
# Idempotent: packages already present are left alone, and apt is not asked at all
# when nothing is missing.
set -eu

usage() {
	echo "usage: deploy/install-deps.sh [runtime|build|test|all]..." >&2
	echo "  runtime  what the daemons run (a controller or an agent host)" >&2
	echo "  build    compilers and -dev libraries" >&2
	echo "  test     the test suite, the lab's guest images and the linters (default: all three)" >&2
	exit 2
}

# runtime: the libraries the daemons link; qemu-utils (qemu-img: the controller checks
# and converts uploaded images, the agent makes disks); on agent hosts QEMU, runc, and
# for networks iproute2 (ip, bridge), nftables and dnsmasq-base (DHCP per segment);
# dosfstools and mtools make the cloud-init seed disk; libxml2 parses OVF descriptors
# (V2V import, controllerd/ova.c); libzstd1 compresses backup chunks; libnbd0 is the
# NBD client a running VM's full backup reads QEMU's point-in-time export with
# (agentd/nbd.c).
# virt-v2v rewrites a P2V guest for virtio at the cutover ("convert": true, controllerd/
# p2v.c); it fails without nbdkit, which Debian only recommends, and libguestfs-tools
# brings the appliance's kernel tooling (supermin) it boots the disk in.
RUNTIME="
libmicrohttpd12 libjson-c5 libsqlite3-0 libuv1 libnanomsg5 libssl3 zlib1g libzstd1
libxml2 libnbd0
virt-v2v libguestfs-tools nbdkit
qemu-system-x86 qemu-utils runc iproute2 nftables dnsmasq-base dosfstools mtools
procps ca-certificates
"
BUILD="
build-essential cmake pkg-config
libmicrohttpd-dev libjson-c-dev libsqlite3-dev libuv1-dev libnanomsg-dev libssl-dev zlib1g-dev
libxml2-dev libzstd-dev libnbd-dev
"
# test: cmocka and clang-format; the lab and the integration tests (curl, jq, sqlite3,
# openssl, ping, psmisc, strace: a test watches every byte an agent sends when it joins);
# the test guest and container images (busybox-static is their busybox: it conflicts with
# Debian's dynamic busybox, which is not listed; the Debian kernel, cpio, extlinux, an
# MBR, e2fsprogs and fdisk), skopeo to push them; prometheus for promtool, which checks
# the controller's /metrics (its server is not started here); clang and its libFuzzer
# runtime for tests/fuzz/run; podman and buildah: the registry test logs in, pushes and
# pulls with the clients users have, beside skopeo; wrk drives bench/api.sh (keep-alive
# HTTP and TLS load from C: a Python client would be the bottleneck); debootstrap builds
# the minimal Debian guest virt-v2v recognises (tests/soak/p2v_convert.sh).
# qemu-guest-agent: its qemu-ga binary and libraries are copied into the test guest
# image (tests/guest/build-image.sh), so backups of a running VM freeze its file systems;
# nothing runs it on the host.
TEST="
debootstrap
qemu-guest-agent
libcmocka-dev clang-format
iputils-ping psmisc curl jq openssl sqlite3 strace
busybox-static linux-image-amd64 cpio extlinux syslinux-common e2fsprogs fdisk
skopeo
prometheus
clang libclang-rt-14-dev
podman buildah
wrk
chromium
"

PKGS=""
node=0
vendor=0
[ $# -gt 0 ] || set -- all
for set in "$@"; do
	case $set in
	runtime) PKGS="$PKGS $RUNTIME" ;;
	build) PKGS="$PKGS $BUILD" node=1 vendor=1 ;;
	test) PKGS="$PKGS $TEST" node=1 ;;
	all) PKGS="$PKGS $RUNTIME $BUILD $TEST" node=1 vendor=1 ;;
	*) usage ;;
	esac
done

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done

if [ -n "$missing" ]; then
	echo "install-deps: installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=900 update -q
	# shellcheck disable=SC2086
	apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends $missing
else
	echo "install-deps: all packages present"
fi

# The OpenAPI linter runs on Node.js. Debian's nodejs conflicts with a Node.js that the
# machine may already have, so only install it when no node is on PATH.
if [ "$node" = 1 ] && ! command -v npm >/dev/null 2>&1; then
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends nodejs npm
fi

# The dashboard's browser libraries (xterm.js), compiled into the controller from
# web/vendor/node_modules: the versions and integrity hashes in web/vendor's lockfile,
# from npm's cache when it has them (a rebuild needs no network), else the registry.
# Nothing is fetched when the installed tree already matches the lockfile.
vendor_dir=$(cd "$(dirname "$0")/../web/vendor" && pwd)
if [ "$vendor" = 1 ] && ! cmp -s "$vendor_dir/package-lock.json" \
	"$vendor_dir/node_modules/.kumo-installed-lock" 2>/dev/null; then
	(cd "$vendor_dir" && { npm ci --offline --no-audit --no-fund --no-update-notifier ||
		npm ci --prefer-offline --no-audit --no-fund --no-update-notifier; } &&
		cp package-lock.json node_modules/.kumo-installed-lock)
fi

# QEMU drops to this user once it opened a guest's files (kumo-agentd --qemu-user).
if ! getent passwd kumo-qemu >/dev/null 2>&1; then
	useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
		--user-group kumo-qemu
	echo "install-deps: made the system user kumo-qemu"
fi

# dnsmasq drops to this user once it opened its sockets, lease and pid files (agentd/
# netdrv.c): the process tenants' DHCP talks to holds no root.
if ! getent passwd kumo-dnsmasq >/dev/null 2>&1; then
	useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
		--user-group kumo-dnsmasq
	echo "install-deps: made the system user kumo-dnsmasq"
fi
