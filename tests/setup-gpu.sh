#!/usr/bin/env bash
# GPU fixtures (called by tests/setup.sh as root): a fake GPU stack made of real parts.
#   lib/      real ELF shared libraries with NVIDIA's sonames (libcuda.so.1, libnvidia-ml.so.1)
#             and GLIBC version needs, plus libnvidia-future.so.1, which needs GLIBC_2.99
#   bin/      a fake nvidia-smi (dynamic, loads libnvidia-ml.so.1)
#   dev/      character devices made with mknod (major 195 as NVIDIA's, and a CDI vendor's)
#   cdi/      a CDI spec (JSON) for vendor.example/gpu with env, deviceNodes, mounts and a hook
#   glibc.sqfs  an image with the host's glibc and an app that dlopen()s libcuda.so.1
# The ld.so.cache is made by the tests themselves (ldconfig -C FILE -f CONF) once the fixtures
# are at their final path: the cache records absolute paths.
# Usage: setup-gpu.sh OUT FINAL BUSYBOX  (OUT is where to build, FINAL where OUT will be moved)
set -euo pipefail
out=$1 final=$2 busybox=$3
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fixtures/gpu
mkdir -p "$out"/{lib,bin,dev/dri,cdi,stub,vendor-share}
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

# Device nodes: NVIDIA's major is 195 (nvidiactl is minor 255); nvidia-uvm's major is dynamic.
mknod "$out/dev/nvidia0" c 195 0
mknod "$out/dev/nvidia1" c 195 1
mknod "$out/dev/nvidiactl" c 195 255
mknod "$out/dev/nvidia-uvm" c 235 0
mknod "$out/dev/vgpu0" c 240 0
chmod 0666 "$out"/dev/nvidia* "$out/dev/vgpu0"
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

# An image with a glibc (the host's, Debian 12's 2.36) and the app.
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,home,usr/bin,lib64}
cp "$busybox" "$root/bin/busybox"
for applet in sh cat ls env stat id echo true touch; do ln -s busybox "$root/bin/$applet"; done
multiarch=$(gcc -print-multiarch)
mkdir -p "$root/lib/$multiarch"
cp -L "/lib/$multiarch/libc.so.6" "$root/lib/$multiarch/"
interp=$(readelf -l "$out/bin/nvidia-smi" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
mkdir -p "$root$(dirname "$interp")"
cp -L "$interp" "$root$interp"
gcc -O2 -o "$root/usr/bin/gpu-app" "$src/gpu-app.c"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
mksquashfs "$root" "$out/glibc.sqfs" -comp gzip -noappend -quiet -no-progress >/dev/null
