#!/bin/sh
# Install every package Kumo needs to build, run and test, from Debian's archive.
# Idempotent: packages already present are left alone, and apt is not asked at all
# when nothing is missing.
set -eu

# Networks (agent, lab, tests): iproute2 (ip, bridge), nftables, dnsmasq-base (DHCP per
# segment), iputils-ping. busybox-static is the busybox of the test guest and container
# images (it provides "busybox" and conflicts with Debian's dynamic busybox package, so
# that one is not listed). strace: a test watches every byte an agent sends when it joins.
# podman, buildah (tests only): the registry test logs in, pushes and pulls with the
# clients users have, beside skopeo.
PKGS="
build-essential cmake pkg-config clang-format
libmicrohttpd-dev libjson-c-dev libsqlite3-dev libuv1-dev libnanomsg-dev libssl-dev
libcmocka-dev zlib1g-dev
iproute2 iputils-ping procps psmisc curl jq openssl ca-certificates sqlite3

qemu-system-x86 qemu-utils busybox-static linux-image-amd64 cpio
extlinux syslinux-common e2fsprogs fdisk dosfstools mtools
runc skopeo nftables dnsmasq-base
strace
podman buildah
"

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
if ! command -v npm >/dev/null 2>&1; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
fi

# QEMU drops to this user once it opened a guest's files (kumo-agentd --qemu-user).
if ! getent passwd kumo-qemu >/dev/null 2>&1; then
	useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
		--user-group kumo-qemu
	echo "install-deps: made the system user kumo-qemu"
fi
