#!/usr/bin/env bash
# GPU fixtures (called by tests/setup.sh as root): a fake GPU stack made of real parts.
#   lib/      real ELF shared libraries with NVIDIA's sonames (libcuda.so.1, libnvidia-ml.so.1)
#             and GLIBC version needs, plus libnvidia-future.so.1, which needs GLIBC_2.99
#   bin/      a fake nvidia-smi (dynamic, loads libnvidia-ml.so.1)
#   dev/      character devices made with mknod (major 195 as NVIDIA's, and a CDI vendor's)
#   cdi/      a CDI spec (JSON) for vendor.example/gpu with env, deviceNodes, mounts and a hook
#   cdi-nvidia/  a CDI spec (YAML, in nvidia-ctk's shape) for nvidia.com/gpu: devices 0, 1 and
#             all, libcuda mounted at the image's library path, a hook
#   rocm/     the AMD side: rocm/lib (libamdhip64.so.6, libhsa-runtime64.so.1, librocm_smi64.so.7),
#             rocm/bin/rocm-smi (dynamic, loads librocm_smi64.so.7); its nodes are dev/kfd and
#             dev/dri/{card0,renderD128,renderD129}
#   glibc.sqfs  an image with the host's glibc, an app that dlopen()s libcuda.so.1 and one
#             that dlopen()s libamdhip64.so.6
# The ld.so.cache is made by the tests themselves (ldconfig -C FILE -f CONF) once the fixtures
# are at their final path: the cache records absolute paths.
# Usage: setup-gpu.sh OUT FINAL BUSYBOX  (OUT is where to build, FINAL where OUT will be moved)
set -euo pipefail
out=$1 final=$2 busybox=$3
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fixtures/gpu
mkdir -p "$out"/{lib,bin,dev/dri,cdi,cdi-nvidia,stub,vendor-share,rocm/lib,rocm/bin}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gcc -shared -fPIC -O2 -Wl,-soname,libcuda.so.1 -o "$out/lib/libcuda.so.550.00" "$src/fake-cuda.c"
ln -s libcuda.so.550.00 "$out/lib/libcuda.so.1"
gcc -shared -fPIC -O2 -Wl,-soname,libnvidia-ml.so.1 -o "$out/lib/libnvidia-ml.so.550.00" "$src/fake-nvml.c"
ln -s libnvidia-ml.so.550.00 "$out/lib/libnvidia-ml.so.1"
# The stub stays out of lib/: ldconfig must not list it as a libc.
gcc -shared -fPIC -nostdlib -Wl,-soname,libc.so.6 -Wl,--version-script="$src/future-glibc.map" \
    -o "$out/stub/libc.so.6" "$src/future-glibc-stub.c"
gcc -shared -fPIC -O2 -Wl,-soname,libnvidia-future.so.1 -o "$out/lib/libnvidia-future.so.1" \
    "$src/future-glibc.c" "$out/stub/libc.so.6"
gcc -O2 -o "$out/bin/nvidia-smi" "$src/nvidia-smi.c"

# ROCm: the libraries the built-in list names (gather/gpu.rs ROCM_LIBRARIES), kept apart from
# lib/ so that the NVIDIA tests' ld.so.cache does not list them.
gcc -shared -fPIC -O2 -Wl,-soname,libamdhip64.so.6 -o "$out/rocm/lib/libamdhip64.so.6.2.60200" "$src/fake-hip.c"
ln -s libamdhip64.so.6.2.60200 "$out/rocm/lib/libamdhip64.so.6"
gcc -shared -fPIC -O2 -Wl,-soname,libhsa-runtime64.so.1 -o "$out/rocm/lib/libhsa-runtime64.so.1.14.0" "$src/fake-rsmi.c"
ln -s libhsa-runtime64.so.1.14.0 "$out/rocm/lib/libhsa-runtime64.so.1"
gcc -shared -fPIC -O2 -Wl,-soname,librocm_smi64.so.7 -o "$out/rocm/lib/librocm_smi64.so.7.3.0" "$src/fake-rsmi.c"
ln -s librocm_smi64.so.7.3.0 "$out/rocm/lib/librocm_smi64.so.7"
gcc -O2 -o "$out/rocm/bin/rocm-smi" "$src/rocm-smi.c"

# Device nodes: NVIDIA's major is 195 (nvidiactl is minor 255); nvidia-uvm's major is dynamic.
mknod "$out/dev/nvidia0" c 195 0
mknod "$out/dev/nvidia1" c 195 1
mknod "$out/dev/nvidiactl" c 195 255
mknod "$out/dev/nvidia-uvm" c 235 0
mknod "$out/dev/vgpu0" c 240 0
# AMD: /dev/kfd (its major is dynamic) and DRM nodes (major 226; render nodes from minor 128).
mknod "$out/dev/kfd" c 238 0
mknod "$out/dev/dri/card0" c 226 0
mknod "$out/dev/dri/renderD128" c 226 128
mknod "$out/dev/dri/renderD129" c 226 129
chmod 0666 "$out"/dev/nvidia* "$out/dev/vgpu0" "$out/dev/kfd" "$out"/dev/dri/*
echo "vendor data" >"$out/vendor-share/README"

cat >"$out/cdi/vendor-example.json" <<JSON
{
  "cdiVersion": "0.6.0",
  "kind": "vendor.example/gpu",
  "containerEdits": {"env": ["VENDOR_DRIVER=fake-1.0"]},
  "devices": [
    {
      "name": "0",
      "containerEdits": {
        "env": ["VENDOR_VISIBLE_DEVICES=0"],
        "deviceNodes": [{"path": "/dev/vgpu0", "hostPath": "$final/dev/vgpu0", "type": "c", "major": 240, "minor": 0}],
        "mounts": [{"hostPath": "$final/vendor-share", "containerPath": "/opt/vendor", "options": ["ro", "nosuid", "nodev", "bind"]}],
        "hooks": [{"hookName": "createContainer", "path": "/usr/bin/vendor-ctk", "args": ["vendor-ctk", "hook", "update-ldcache"]}]
      }
    }
  ]
}
JSON

# NVIDIA's CDI spec as `nvidia-ctk cdi generate` writes it (YAML): per-GPU devices and `all`,
# common edits with the control node, the driver library mounted where the image's loader
# looks, and a hook. With it, --gpu must use these edits instead of the built-in lists.
multiarch=$(gcc -print-multiarch)
cat >"$out/cdi-nvidia/nvidia.yaml" <<YAML
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    env:
    - CDI_NVIDIA_DEVICE=0
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: $final/dev/nvidia0
- name: "1"
  containerEdits:
    env:
    - CDI_NVIDIA_DEVICE=1
    deviceNodes:
    - path: /dev/nvidia1
      hostPath: $final/dev/nvidia1
- name: all
  containerEdits:
    env:
    - CDI_NVIDIA_DEVICE=all
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: $final/dev/nvidia0
    - path: /dev/nvidia1
      hostPath: $final/dev/nvidia1
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
    hostPath: $final/dev/nvidiactl
  mounts:
  - hostPath: $final/lib/libcuda.so.550.00
    containerPath: /lib/$multiarch/libcuda.so.1
    options: [ro, nosuid, nodev, bind]
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-ctk
    args: [nvidia-ctk, hook, update-ldcache, --folder, /lib/$multiarch]
YAML

# An image with a glibc (the host's, Debian 12's 2.36) and the app.
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,home,usr/bin,lib64}
cp "$busybox" "$root/bin/busybox"
for applet in sh cat ls env stat id echo true touch; do ln -s busybox "$root/bin/$applet"; done
mkdir -p "$root/lib/$multiarch"
cp -L "/lib/$multiarch/libc.so.6" "$root/lib/$multiarch/"
interp=$(readelf -l "$out/bin/nvidia-smi" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
mkdir -p "$root$(dirname "$interp")"
cp -L "$interp" "$root$interp"
gcc -O2 -o "$root/usr/bin/gpu-app" "$src/gpu-app.c"
gcc -O2 -o "$root/usr/bin/rocm-app" "$src/rocm-app.c"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
mksquashfs "$root" "$out/glibc.sqfs" -comp gzip -noappend -quiet -no-progress >/dev/null
