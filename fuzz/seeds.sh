#!/usr/bin/env bash
# Makes the seed corpora of the fuzz targets in fuzz/seeds/TARGET (small files, made at run
# time, never committed): SquashFS images from mksquashfs with every compressor and layout
# option, the SIF files of shared/testdata/sif, docker/OCI archives from umoci + skopeo, and
# layer tars with links and whiteouts. Needs squashfs-tools, attr, umoci, skopeo, zstd (run.sh
# installs them as root when missing).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SEEDS=${1:-$HERE/seeds}
SIF_DIR=${SIF_TESTDATA:-$HERE/../../shared/testdata/sif}
[ -d "$SIF_DIR" ] || SIF_DIR=/work/shared/testdata/sif
rm -rf "$SEEDS"
mkdir -p "$SEEDS"/{squashfs,sif,oci_archive,oci_layer}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A tiny tree with every kind of entry the reader decodes.
t="$work/tree"
mkdir -p "$t"/{bin,etc,dev,data/sub/deep,empty}
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$t/etc/passwd"
printf '#!/bin/sh\necho hi\n' >"$t/bin/sh"
chmod 4755 "$t/bin/sh"
head -c 9000 /dev/urandom >"$t/data/random"           # several 4 KiB blocks, incompressible
for i in $(seq 1 330); do echo 'compressible line'; done >"$t/data/text" # blocks + a fragment tail
echo small >"$t/data/sub/small"
echo deep >"$t/data/sub/deep/file"
ln -s /data/text "$t/data/abs-link"
ln -s sub/deep/file "$t/data/rel-link"
ln -s ../../.. "$t/data/sub/up"
ln "$t/data/sub/small" "$t/data/hard"
truncate -s 20000 "$t/data/sparse"
setfattr -n user.a -v 1 "$t/data/text" 2>/dev/null || true
setfattr -n user.long -v "$(head -c 300 /dev/zero | tr '\0' x)" "$t/data/sub/small" 2>/dev/null || true
for i in $(seq 1 40); do : >"$t/data/sub/n$i"; done   # a directory with an index
pseudo=(-p "dev/null c 666 0 0 1 3" -p "dev/fifo i 644 0 0 f" -p "dev/blk b 600 0 0 8 0")
sq() { mksquashfs "$t" "$1" -b 4096 "${pseudo[@]}" -nopad -noappend -quiet -no-progress "${@:2}" >/dev/null; }
for comp in gzip lzma lzo xz lz4 zstd; do
    sq "$SEEDS/squashfs/$comp.sqfs" -comp "$comp"
done
sq "$SEEDS/squashfs/plain.sqfs" -noI -noD -noF -noX
sq "$SEEDS/squashfs/nofrag.sqfs" -comp zstd -no-fragments -no-xattrs -no-exports
sq "$SEEDS/squashfs/always-frag.sqfs" -comp lz4 -always-use-fragments -no-duplicates

# SIF: the reference images (the 800 KB SingularityCE one is left out: libFuzzer works on
# small inputs), and the SquashFS seeds appended behind a SIF header cannot be made without
# a writer, so the small gzip SquashFS inside one-group.sif carries that path.
for f in "$SIF_DIR"/*.sif; do
    [ "$(stat -c %s "$f")" -le 400000 ] && cp "$f" "$SEEDS/sif/"
done

# Docker and OCI archives of a smaller tree (no random data), in every layout skopeo writes.
small="$work/small"
mkdir -p "$small"/{bin,etc,data}
cp "$t/etc/passwd" "$small/etc/"
cp -P "$t/data/abs-link" "$t/data/rel-link" "$small/data/"
echo hello >"$small/data/hello"
oci="$work/oci"
umoci init --layout "$oci" >/dev/null
umoci new --image "$oci:t" >/dev/null
umoci insert --image "$oci:t" "$small" / >/dev/null
umoci config --image "$oci:t" --config.env A=1 --config.cmd /bin/sh --config.workingdir /data >/dev/null
echo two >"$work/two"
umoci insert --image "$oci:t" "$work/two" /data/two >/dev/null
umoci insert --image "$oci:t" --whiteout /data/hello >/dev/null 2>&1 || true
skopeo copy --quiet "oci:$oci:t" "oci-archive:$SEEDS/oci_archive/oci.tar:t"
skopeo copy --quiet "oci:$oci:t" "docker-archive:$SEEDS/oci_archive/docker.tar:t:latest"
# Layers: the blobs umoci wrote (gzip), and hand-made tars with the cases unpacking handles.
for b in "$oci"/blobs/sha256/*; do
    if head -c 2 "$b" | od -An -tx1 | grep -q '1f 8b'; then cp "$b" "$SEEDS/oci_layer/umoci-$(basename "$b" | cut -c1-12).tar.gz"; fi
done
l="$work/layer"
mkdir -p "$l"/{a/b,c,d}
echo x >"$l/a/b/file"
ln -s /etc "$l/a/abs"
ln -s ../c "$l/a/rel"
ln "$l/a/b/file" "$l/c/hard"
: >"$l/a/.wh.gone"
: >"$l/d/.wh..wh..opq"
mkfifo "$l/c/fifo"
tar -C "$l" --owner=0 --group=0 -cf "$SEEDS/oci_layer/links-whiteouts.tar" .
tar -C "$l" --format=pax --owner=1000 --group=1000 -cf "$SEEDS/oci_layer/pax.tar" a c
gzip -c "$SEEDS/oci_layer/links-whiteouts.tar" >"$SEEDS/oci_layer/links-whiteouts.tar.gz"
zstd -q -c "$SEEDS/oci_layer/pax.tar" >"$SEEDS/oci_layer/pax.tar.zst"
du -sh "$SEEDS"/* | sed 's/^/seeds: /'
