#!/usr/bin/env bash
# Makes the seed corpora of the fuzz targets in fuzz/seeds/TARGET (small files, made at run
# time, never committed): SquashFS images from mksquashfs with every compressor and layout
# option, the SIF files of tests/data/sif, docker/OCI archives from umoci + skopeo, and
# layer tars with links and whiteouts, the site configs of docs/admin.md and the config and
# CDI specs of the modules' tests. Needs squashfs-tools, attr, umoci, skopeo, zstd (run.sh
# installs them as root when missing).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SEEDS=${1:-$HERE/seeds}
SIF_DIR=$HERE/../tests/data/sif
# Two runs started together (fuzz/run.sh for different targets) take turns.
exec 9>"$SEEDS.lock"
flock 9
rm -rf "$SEEDS"
mkdir -p "$SEEDS"/{squashfs,sif,oci_archive,oci_layer,site_config,cdi,env_script,deffile,signature}
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

# Site configs: every yaml block of docs/admin.md, and the cases of site_config.rs's tests.
REPO=$HERE/..
awk -v out="$SEEDS/site_config/admin" '/^```yaml/{n++; f=out "-" n ".yaml"; next} /^```/{f=""; next} f{print > f}' \
    "$REPO/docs/admin.md"
sc() { printf '%s' "$2" >"$SEEDS/site_config/$1.yaml"; }
sc full 'binds: [/scratch, "/opt/site:/opt/site:ro"]
devices: [/dev/infiniband]
env:
  set: {OMPI_MCA_btl: "^openib"}
  prepend: {PATH: /opt/site/bin}
  append: {MANPATH: /opt/site/man}
  unset: [LD_PRELOAD]
gpu:
  default: true
  nvidia:
    libraries: [libcuda.so, libnvidia-ml.so]
    binaries: [nvidia-smi]
    library_paths: [/opt/nvidia/lib64]
  rocm:
    binary_paths: [/opt/rocm/bin]
mpi:
  default: false
  libraries: [libmpi.so, libfabric.so]
  library_paths: [/opt/cray/lib64]
  binds: ["/etc/libfabric:/etc/libfabric:ro"]
cdi:
  spec_dirs: [/etc/cdi]
host:
  ld_so_cache: /etc/ld.so.cache
  dev_dir: /dev
'
sc empty ''
sc comment '# nothing yet
'
sc unknown-key 'binds: []
gpu:
  nvidia:
    libaries: [x]
'
sc type-error 'gpu:
  default: maybe
'
sc relative 'binds: ["/a:relative", "/tmp:/x/../../..", "/dev/null:/etc/passwd:ro,/proc:/p"]
env:
  set: {BAD-NAME: x}
host:
  dev_dir: dev
'
sc anchors 'binds: &b [/tmp, /var/tmp]
mpi: {binds: *b, libraries: [libmpi.so]}
devices: [/dev/null, /dev/zero, /dev/fuse]
env: {prepend: {LD_LIBRARY_PATH: /site/lib, PATH: /site/bin}, append: {PATH: /x}}
'

# CDI specs: the modules' test specs, the GPU fixture's (tests/setup-gpu.sh), and one in the
# shape `nvidia-ctk cdi generate` writes (YAML, an "all" device, hooks, spec-wide edits).
sed -n '/^cat >"\$out\/cdi\/vendor-example.json" <<JSON$/,/^JSON$/p' "$REPO/tests/setup-gpu.sh" \
    | sed '1d;$d' | sed 's/\$final/\/opt\/fixture/g' >"$SEEDS/cdi/vendor-example.json"
cat >"$SEEDS/cdi/test.json" <<'JSON'
{
  "cdiVersion": "0.6.0",
  "kind": "vendor.example/gpu",
  "containerEdits": {"env": ["VENDOR_DRIVER=1"]},
  "devices": [
    {"name": "0", "containerEdits": {
      "env": ["VENDOR_VISIBLE=0", "NOEQUALS", "=empty"],
      "deviceNodes": [{"path": "/dev/vgpu0", "hostPath": "/tmp/dev/vgpu0", "type": "c", "major": 195, "minor": 0}],
      "mounts": [{"hostPath": "/opt/vendor/lib", "containerPath": "/usr/lib/vendor", "options": ["ro", "nosuid", "bind"]}],
      "hooks": [{"hookName": "createContainer", "path": "/usr/bin/vendor-ctk", "args": ["vendor-ctk", "hook", "update-ldcache"]}]
    }},
    {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/vgpu1"}]}}
  ],
  "annotations": {"unknown": "fields are ignored"}
}
JSON
printf 'cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n  - name: all\n    containerEdits:\n      deviceNodes:\n        - path: /dev/nvidia0\n' \
    >"$SEEDS/cdi/test.yaml"
cat >"$SEEDS/cdi/nvidia.yaml" <<'YAML'
---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidia-modeset
  - path: /dev/nvidia-uvm
  - path: /dev/nvidia-uvm-tools
  - path: /dev/nvidiactl
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-ctk
    args: [nvidia-ctk, hook, create-symlinks, --link, libnvidia-allocator.so.535.104.05::/usr/lib/x86_64-linux-gnu/gbm/nvidia-drm_gbm.so]
  - hookName: createContainer
    path: /usr/bin/nvidia-ctk
    args: [nvidia-ctk, hook, update-ldcache, --folder, /usr/lib/x86_64-linux-gnu]
  mounts:
  - hostPath: /usr/bin/nvidia-smi
    containerPath: /usr/bin/nvidia-smi
    options: [ro, nosuid, nodev, bind]
  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05
    options: [ro, nosuid, nodev, bind]
  - hostPath: /run/nvidia-persistenced/socket
    containerPath: /run/nvidia-persistenced/socket
    options: [ro, nosuid, nodev, bind, noexec]
YAML
printf '{"cdiVersion":"0.6.0","kind":"amd.com/gpu","devices":[{"name":"","containerEdits":{"mounts":[{"hostPath":"/tmp","containerPath":"relative"}]}},{"name":"x","containerEdits":{"deviceNodes":[{"path":"/dev/../.."}]}}]}' \
    >"$SEEDS/cdi/odd.json"
# Definition files: the fenced examples of docs/building.md (one per ```singularity block).
awk -v out="$SEEDS/deffile/doc" '/^```singularity/{n++; f=out "-" n ".def"; next} /^```/{f=""; next} f{print > f}' \
    "$REPO/docs/building.md"
printf 'Bootstrap: docker\nFrom: x:{{ A }}\nStage: one\n%%post -c /bin/bash\n  echo {{A}}\n\nBootstrap: scratch\n%%files from one\n  "/a b" /c\n' \
    >"$SEEDS/deffile/two-stages.def"
du -sh "$SEEDS"/* | sed 's/^/seeds: /'

# Environment scripts: what Apptainer writes, what conda and spack images carry, and the
# shapes the parser's tests pin (launcher/src/plan/environment.rs).
es() { printf '%b' "$2" >"$SEEDS/env_script/$1.sh"; }
es docker2singularity '#!/bin/sh\nexport PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n'
es base '#!/bin/sh\nif [ -z "$LD_LIBRARY_PATH" ]; then\n    LD_LIBRARY_PATH="/.singularity.d/libs"\nelse\n    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\nfi\nPS1="Singularity> "\nexport LD_LIBRARY_PATH PS1\n'
es conda '. /opt/conda/etc/profile.d/conda.sh\nconda activate base\nexport CONDA_DEFAULT_ENV=base\n'
es expand 'export A=1\nB="${A}:$A:${UNSET:-dflt}"\nC=\x27quoted $A\x27\nD=${B\nE=$(date)\n'
es report 'PATH=/opt/bin:/usr/bin\0HOME=/root\0SHLVL=1\0_=/bin/cat\0X=1\0'


# Signatures: the first byte picks the part (fuzz/fuzz_targets/signature.rs: 0 whole SIF,
# 1 DSSE, 2 clear-signed, 3 metadata, 4 legacy, 5 key file). The signed reference SIFs; their
# Signature objects cut out by their armor or JSON shape; the metadata a DSSE payload signs;
# the legacy signed text; the test keys.
sg() { { printf "\\x$(printf %02x "$2")"; cat; } >"$SEEDS/signature/$1"; }
for f in "$SIF_DIR"/*signed*.sif; do
    [ "$(stat -c %s "$f")" -le 400000 ] || continue
    b=$(basename "$f" .sif)
    sg "$b.sif" 0 <"$f"
    perl -0777 -ne 'print $1 if /(\{"payloadType".*?\]\})/s' "$f" | sg "$b.dsse" 1
    perl -0777 -ne 'print $1 if /(-----BEGIN PGP SIGNED MESSAGE-----.*?-----END PGP SIGNATURE-----\n?)/s' "$f" \
        | sg "$b.asc" 2
    perl -0777 -ne 'print $1 if /"payload":"([^"]*)"/' "$f" | base64 -d 2>/dev/null | sg "$b.json" 3 || true
done
printf 'SIFHASH:\n%064d\n' 0 | sg legacy.txt 4
for k in "$SIF_DIR"/keys/*; do sg "key-$(basename "$k")" 5 <"$k"; done
find "$SEEDS/signature" -size -2c -delete
