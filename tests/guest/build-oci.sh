#!/bin/sh
# Build the Kumo test container images as OCI image layouts, from busybox-static:
#
#   tests/guest/build-oci.sh OUTDIR   -> OUTDIR/busybox-oci   (tag "latest")
#                                        OUTDIR/evil-oci      (tag "latest")
#
# busybox-oci: one gzip layer holding /bin/busybox and a symlink "busybox" in /bin for
# every applet (sh, echo, cat, ls, sleep, head, tr, dd, wc, ping, touch, id, env, ...),
# /etc/passwd and /etc/group with root, /etc/hosts, /etc/kumo-release, /tmp (1777), /root,
# /var and the mount points /proc, /sys, /dev. Config: Env PATH, Cmd ["sh"], WorkingDir "/".
# evil-oci: the same image with a second layer whose tar holds an entry "../evil" (and a
# harmless file before it): an unpacker must refuse it (path traversal).
#
# Everything is reproducible (fixed mtimes, owners, order, gzip -n), so the digests only
# change when the inputs do. Each layout is an OCI image layout (oci-layout, index.json,
# blobs/sha256/...) that skopeo reads as oci:OUTDIR/busybox-oci:latest.
#
# Cached: when both layouts exist and OUTDIR/busybox-oci.stamp matches the inputs (this
# script, busybox, tar, gzip), nothing is done. Needs no root and no skopeo: GNU tar,
# gzip and sha256sum.
set -eu

usage() {
	echo "usage: $0 OUTDIR" >&2
	exit 2
}
[ $# -eq 1 ] || usage
OUTDIR=$1
STAMP=busybox-oci.stamp
# 2024-01-01T00:00:00Z: every file's mtime and the config's "created".
EPOCH=1704067200
CREATED=2024-01-01T00:00:00Z
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
MT_CONFIG=application/vnd.oci.image.config.v1+json
MT_LAYER=application/vnd.oci.image.layer.v1.tar+gzip

die() {
	echo "build-oci: $*" >&2
	exit 1
}

for c in tar gzip sha256sum stat flock; do
	command -v "$c" >/dev/null 2>&1 || die "missing $c (run deploy/install-deps.sh)"
done
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is needed (--sort, --mtime)"

BUSYBOX=""
for f in /bin/busybox /usr/bin/busybox; do
	[ -x "$f" ] && BUSYBOX=$f && break
done
[ -n "$BUSYBOX" ] || die "busybox not found (package busybox-static)"
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
	die "$BUSYBOX is dynamically linked; install busybox-static"
fi

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

HASH=$(
	{
		sha256sum "$0" | cut -d' ' -f1
		sha256sum "$BUSYBOX" | cut -d' ' -f1
		tar --version | head -n 1
		gzip --version | head -n 1
	} | sha256sum | cut -d' ' -f1
)

# One builder at a time per OUTDIR; a second one waits, then finds the cache valid.
exec 9>"$OUTDIR/.busybox-oci.lock"
flock 9

if [ -f "$OUTDIR/busybox-oci/index.json" ] && [ -f "$OUTDIR/evil-oci/index.json" ] &&
	[ "$(cat "$OUTDIR/$STAMP" 2>/dev/null)" = "$HASH" ]; then
	echo "build-oci: $OUTDIR/busybox-oci and $OUTDIR/evil-oci are up to date"
	exit 0
fi

WORK=$(mktemp -d "$OUTDIR/.build-oci.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# put_blob LAYOUT FILE -> stores FILE as a blob of LAYOUT, prints its hex digest.
put_blob() {
	h=$(sha "$2")
	mkdir -p "$1/blobs/sha256"
	cp "$2" "$1/blobs/sha256/$h"
	chmod 0644 "$1/blobs/sha256/$h"
	echo "$h"
}

# ---- the base layer -----------------------------------------------------------------
ROOT=$WORK/rootfs
mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/tmp" "$ROOT/root" "$ROOT/proc" "$ROOT/sys" \
	"$ROOT/dev" "$ROOT/var"
chmod 0755 "$ROOT/bin" "$ROOT/etc" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/var"
chmod 0700 "$ROOT/root"
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
# Every applet as /bin/NAME -> busybox: relative, in the same directory, so the layer
# holds no absolute or ".." link targets.
"$BUSYBOX" --list | while read -r app; do
	case "$app" in busybox | */* | '') continue ;; esac
	[ -e "$ROOT/bin/$app" ] || ln -s busybox "$ROOT/bin/$app"
done
for app in sh echo cat ls sleep head tr dd wc ping touch id env; do
	[ -L "$ROOT/bin/$app" ] || die "busybox has no applet $app"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$WORK/passwd"
echo "root:x:0:" >"$WORK/group"
install -m 0644 "$WORK/passwd" "$ROOT/etc/passwd"
install -m 0644 "$WORK/group" "$ROOT/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$WORK/hosts"
install -m 0644 "$WORK/hosts" "$ROOT/etc/hosts"
# A file of the image the tests delete in a container (a whiteout when committed).
echo "Kumo test container image, built by tests/guest/build-oci.sh" >"$WORK/release"
install -m 0644 "$WORK/release" "$ROOT/etc/kumo-release"

# ustar (the names are short), entries without a "./" prefix, sorted, owned by 0:0.
(cd "$ROOT" && tar --format=ustar --sort=name --owner=0 --group=0 --numeric-owner \
	--mtime=@$EPOCH -cf "$WORK/base.tar" bin dev etc proc root sys tmp var)

# ---- the "../evil" layer ----------------------------------------------------------------
# A harmless file, then "../evil": -P keeps the leading "../" GNU tar strips otherwise.
mkdir -p "$WORK/evil"
printf 'harmless\n' >"$WORK/evil/harmless"
printf 'kumo-evil-layer\n' >"$WORK/evil/evil"
chmod 0644 "$WORK/evil/harmless" "$WORK/evil/evil"
(cd "$WORK/evil" && tar --format=ustar -P --transform 's,^evil$,../evil,' --owner=0 \
	--group=0 --numeric-owner --mtime=@$EPOCH -cf "$WORK/evil.tar" harmless evil)
tar -tf "$WORK/evil.tar" 2>/dev/null | grep -qx '\.\./evil' || die "tar did not keep the entry ../evil"

# ---- the layouts --------------------------------------------------------------------
# make_layout NAME TAR... -> OUTDIR/NAME, an OCI image layout of the layers TAR...
make_layout() {
	name=$1
	shift
	L=$WORK/$name
	mkdir -p "$L/blobs/sha256"
	layers=""
	diff_ids=""
	history=""
	for t in "$@"; do
		gzip -n -6 -c "$t" >"$t.gz"
		lh=$(put_blob "$L" "$t.gz")
		layers="$layers${layers:+,}{\"mediaType\":\"$MT_LAYER\",\"digest\":\"sha256:$lh\",\"size\":$(size "$t.gz")}"
		diff_ids="$diff_ids${diff_ids:+,}\"sha256:$(sha "$t")\""
		history="$history${history:+,}{\"created\":\"$CREATED\",\"created_by\":\"tests/guest/build-oci.sh $(basename "$t")\"}"
	done
	printf '{"created":"%s","architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' \
		"$CREATED" "$diff_ids" "$history" >"$WORK/$name.config.json"
	ch=$(put_blob "$L" "$WORK/$name.config.json")
	printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"sha256:%s","size":%s},"layers":[%s]}' \
		"$MT_MANIFEST" "$MT_CONFIG" "$ch" "$(size "$WORK/$name.config.json")" "$layers" \
		>"$WORK/$name.manifest.json"
	mh=$(put_blob "$L" "$WORK/$name.manifest.json")
	printf '{"schemaVersion":2,"manifests":[{"mediaType":"%s","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
		"$MT_MANIFEST" "$mh" "$(size "$WORK/$name.manifest.json")" >"$L/index.json"
	printf '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
	# Check what was written: every blob's name is its digest.
	for b in "$L"/blobs/sha256/*; do
		[ "$(sha "$b")" = "$(basename "$b")" ] || die "blob $b does not match its digest"
	done
	rm -rf "${OUTDIR:?}/${name:?}"
	mv "$L" "$OUTDIR/$name"
	echo "build-oci: wrote $OUTDIR/$name (manifest sha256:$mh)"
}

make_layout busybox-oci "$WORK/base.tar"
make_layout evil-oci "$WORK/base.tar" "$WORK/evil.tar"
echo "$HASH" >"$OUTDIR/$STAMP"
