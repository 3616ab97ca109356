#!/usr/bin/env bash
# Fake MPI fixtures (called by tests/setup.sh as root): two host MPI stacks and two images, made
# of real parts (gcc-built ELF libraries with MPI sonames, images with the host's glibc).
#   hostA/     an "Open MPI": lib/libmpi.so.40 (needs libucp.so.0), lib/libucp.so.0,
#              lib/openmpi/lib/openmpi3/mca_btl_fake.so (needs lib/libfakefabric.so.1),
#              share/openmpi/ and etc/openmpi-mca-params.conf, as Open MPI installs them
#   hostB/     an "MPICH": lib/libmpi.so.12 (the soname Cray MPICH and Intel MPI use)
#   hostC/     an MPI of the MPI-5 standard ABI: lib/libmpi_abi.so.0 (MPICH 4.3's soname)
#   dev/       interconnect device nodes made with mknod (InfiniBand, Slingshot, XPMEM, ...)
#   ompi.sqfs  an image with its own libmpi.so.40 + libucp.so.0 and /usr/bin/mpi-app linked to it
#   mpich.sqfs an image with Debian's MPICH soname libmpich.so.12 and mpi-app linked to it
#   abi.sqfs   an image with its own libmpi_abi.so.0 and mpi-app linked to it
# The ld.so.cache listing hostA is made by the tests (ldconfig -C) once the fixtures are at
# their final path. Usage: setup-fakempi.sh OUT BUSYBOX
set -euo pipefail
out=$1 busybox=$2
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fixtures/fakempi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
so() { # so OUTFILE SONAME SOURCE CFLAGS...
    local o=$1 n=$2 s=$3
    shift 3
    mkdir -p "$(dirname "$o")"
    gcc -shared -fPIC -O2 -Wl,--no-as-needed -Wl,-soname,"$n" -o "$o" "$s" "$@"
}

a="$out/hostA"
so "$a/lib/libucp.so.0" libucp.so.0 "$src/fake-ucp.c" '-DUCP="host UCX"'
so "$a/lib/libmpi.so.40.30.0" libmpi.so.40 "$src/fake-mpi.c" -DOPEN_MPI -DWITH_UCP \
    '-DIMPL="host Open MPI"' "-L$a/lib" -l:libucp.so.0
ln -s libmpi.so.40.30.0 "$a/lib/libmpi.so.40"
so "$a/lib/libfakefabric.so.1" libfakefabric.so.1 "$src/fake-fabric.c"
so "$a/lib/openmpi/lib/openmpi3/mca_btl_fake.so" mca_btl_fake.so "$src/fake-mca.c" \
    "-L$a/lib" -l:libfakefabric.so.1
mkdir -p "$a/share/openmpi" "$a/etc"
echo "fake Open MPI help" >"$a/share/openmpi/help-fake.txt"
echo "btl = self" >"$a/etc/openmpi-mca-params.conf"
so "$out/hostB/lib/libmpi.so.12" libmpi.so.12 "$src/fake-mpi.c" '-DIMPL="host MPICH"'
so "$out/hostC/lib/libmpi_abi.so.0.0.0" libmpi_abi.so.0 "$src/fake-mpi.c" '-DIMPL="host MPI-5 ABI"'
ln -s libmpi_abi.so.0.0.0 "$out/hostC/lib/libmpi_abi.so.0"

mkdir -p "$out/dev/infiniband"
mknod "$out/dev/infiniband/uverbs0" c 231 192
mknod "$out/dev/infiniband/rdma_cm" c 10 58
mknod "$out/dev/cxi0" c 511 0
mknod "$out/dev/hfi1_0" c 246 0
mknod "$out/dev/xpmem" c 10 59
mknod "$out/dev/knem" c 10 60
chmod 0666 "$out"/dev/infiniband/* "$out"/dev/{cxi0,hfi1_0,xpmem,knem}

multiarch=$(gcc -print-multiarch)
# image NAME SONAME IMPL [CFLAGS...]: busybox, the host's glibc, a libmpi and mpi-app.
image() {
    local name=$1 soname=$2 impl=$3
    shift 3
    local root="$work/$name" lib
    lib="$root/usr/lib/$multiarch"
    mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,home,usr/bin} "$root/lib/$multiarch" "$lib"
    cp "$busybox" "$root/bin/busybox"
    for applet in sh cat ls env stat id echo true; do ln -s busybox "$root/bin/$applet"; done
    cp -L "/lib/$multiarch/libc.so.6" "$root/lib/$multiarch/"
    local interp
    interp=$(readelf -l /bin/true | sed -n 's/.*interpreter: \(.*\)]/\1/p')
    mkdir -p "$root$(dirname "$interp")"
    cp -L "$interp" "$root$interp"
    so "$lib/$soname" "$soname" "$src/fake-mpi.c" "-DIMPL=\"$impl\"" "$@"
    gcc -O2 -o "$root/usr/bin/mpi-app" "$src/mpi-app.c" "-L$lib" "-l:$soname" "-Wl,-rpath-link,$lib"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    chmod 1777 "$root/tmp"
    mksquashfs "$root" "$out/$name.sqfs" -comp gzip -noappend -quiet -no-progress >/dev/null
}
mkdir -p "$work/ompi/usr/lib/$multiarch"
so "$work/ompi/usr/lib/$multiarch/libucp.so.0" libucp.so.0 "$src/fake-ucp.c" '-DUCP="image UCX"'
image ompi libmpi.so.40 "image Open MPI" -DOPEN_MPI -DWITH_UCP "-L$work/ompi/usr/lib/$multiarch" -l:libucp.so.0
image mpich libmpich.so.12 "image MPICH"
image abi libmpi_abi.so.0 "image MPI-5 ABI"
