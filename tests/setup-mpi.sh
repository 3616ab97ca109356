#!/usr/bin/env bash
# MPI fixtures, run as root (tests/setup.sh calls it; idempotent, rebuilt when this script or
# mpi-tests/*.c change):
#  - two images, each a rootfs of Debian packages unpacked with `dpkg -x` (nothing installed,
#    no maintainer scripts), plus busybox, plus the mpi-tests programs in /usr/local/bin:
#      openmpi.sqfs: libopenmpi3 (Open MPI 4.1) and its dependency closure, openmpi-bin
#      mpich.sqfs:   libmpich12 (MPICH 4.0) and its dependency closure
#  - the same programs built against the host's MPI, for native runs: host/openmpi/, host/mpich/
#    (compiled with the explicit mpicc.openmpi / mpicc.mpich: both packages provide `mpicc`).
# Output: $LAUNCHER_MPI_FIXTURES (default: $LAUNCHER_FIXTURES-mpi, i.e.
# /var/tmp/launcher-fixtures-mpi), readable by everyone. Downloaded .debs are cached in
# $LAUNCHER_DEB_CACHE (default /var/cache/launcher-debs).
set -euo pipefail

FIXTURES=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
OUT=${LAUNCHER_MPI_FIXTURES:-$FIXTURES-mpi}
CACHE=${LAUNCHER_DEB_CACHE:-/var/cache/launcher-debs}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC="$HERE/../mpi-tests"
PROGRAMS=(hello pingpong allreduce)

die() { echo "tests/setup-mpi.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages)"

need=()
for pair in mpicc.openmpi:libopenmpi-dev mpicc.mpich:libmpich-dev mksquashfs:squashfs-tools; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$(dirname "$OUT")"
exec 7>"$OUT.lock"
flock 7
stamp=".setup-$(cat "$0" "$SRC"/*.c | sha256sum | cut -c1-16)"
if [ -e "$OUT/$stamp" ]; then
    exit 0
fi
echo "tests/setup-mpi.sh: building MPI images into $OUT (a minute; .debs cached in $CACHE)"
new="$OUT.new.$$"
work=$(mktemp -d)
trap 'rm -rf "$work" "$new"' EXIT
mkdir -p "$new" "$CACHE"

# Packages that only serve installation (maintainer scripts, user management), not a
# program's run time: left out of the closure.
INSTALL_ONLY=" adduser cdebconf debconf dpkg install-info passwd tar libdebian-installer4 \
libnewt0.52 libslang2 libtextwrap1 libpam-modules libpam-modules-bin libpam0g libsemanage2 \
libsemanage-common libsepol2 libaudit1 libaudit-common libcap-ng0 libdb5.3 readline-common \
libreadline8 "

closure() {
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$@" | grep -v '^[ <]' | sort -u |
        while read -r p; do [[ $INSTALL_ONLY == *" $p "* ]] || echo "$p"; done
}

# The .deb of each package's candidate version, from the cache, downloading what it lacks.
# (One apt-cache call for all: each call costs seconds on a busy machine.)
declare -A DEB
fetch() {
    local missing=() p v
    while read -r p v; do
        DEB[$p]=$(compgen -G "$CACHE/${p}_${v//:/%3a}_*.deb" | head -1 || true)
        [ -n "${DEB[$p]}" ] || missing+=("$p")
    done < <(apt-cache policy "$@" | awk '/^[^ ]/ {sub(/:$/, ""); name = $0} /Candidate:/ {print name, $2}')
    [ ${#missing[@]} -eq 0 ] && return 0
    (cd "$CACHE" && apt-get download -qq "${missing[@]}" >/dev/null 2>&1) || {
        apt-get update -qq
        (cd "$CACHE" && apt-get download -qq "${missing[@]}" >/dev/null)
    }
    fetch "${missing[@]}"
}

# The dependency closure needs the package lists (a fresh machine or image may have none).
apt-cache show libopenmpi3 libmpich12 busybox-static >/dev/null 2>&1 || apt-get update -qq
fetch busybox-static
dpkg -x "${DEB[busybox-static]}" "$work/bb"
BUSYBOX="$work/bb/bin/busybox"

# build_image FLAVOR MPICC "EXTRA..." PKG...: the closure of PKG..., plus EXTRA packages
# without their dependencies.
build_image() {
    local flavor=$1 mpicc=$2 extra=$3
    shift 3
    local root="$work/$flavor" pkgs
    # shellcheck disable=SC2086  # extra is a list
    mapfile -t pkgs < <(closure "$@"; [ -z "$extra" ] || printf '%s\n' $extra)
    fetch "${pkgs[@]}"
    mkdir -p "$root"
    for p in "${pkgs[@]}"; do
        [ -n "${DEB[$p]:-}" ] || die "no .deb for $p"
        dpkg -x "${DEB[$p]}" "$root"
    done
    mkdir -p "$root"/{bin,etc,tmp,var/tmp,proc,sys,dev,home,root,usr/local/bin}
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ -e "$root/bin/$applet" ] || [ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    chmod 1777 "$root/tmp" "$root/var/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    # The one alternative in these closures (no maintainer script ran to make it): Open MPI's
    # psm and ofi components need it to load.
    if [ -e "$root/usr/lib/libpsm1/libpsm_infinipath.so.1.16" ]; then
        ln -sf /usr/lib/libpsm1/libpsm_infinipath.so.1.16 "$root/usr/lib/x86_64-linux-gnu/libpsm_infinipath.so.1"
    fi
    # The dynamic linker's cache, as the packages' triggers would have made it.
    [ -e "$root/etc/ld.so.conf" ] || echo 'include /etc/ld.so.conf.d/*.conf' >"$root/etc/ld.so.conf"
    ldconfig -r "$root"
    mkdir -p "$new/host/$flavor"
    for prog in "${PROGRAMS[@]}"; do
        "$mpicc" -O2 -Wall -o "$new/host/$flavor/$prog" "$SRC/$prog.c"
        cp "$new/host/$flavor/$prog" "$root/usr/local/bin/$prog"
        # Every library the program needs must resolve inside the rootfs.
        if chroot "$root" /lib64/ld-linux-x86-64.so.2 --list "/usr/local/bin/$prog" | grep -q 'not found'; then
            chroot "$root" /lib64/ld-linux-x86-64.so.2 --list "/usr/local/bin/$prog" >&2
            die "$flavor image: $prog has unresolved libraries"
        fi
    done
    printf '%s\n' "${pkgs[@]}" >"$new/$flavor.packages"
    mksquashfs "$root" "$new/$flavor.sqfs" -comp zstd -noappend -quiet -no-progress >/dev/null
}

# openmpi-bin for Debian's MCA defaults (/etc/openmpi/openmpi-mca-params.conf: without them
# Open MPI picks libfabric's TCP provider over shared memory on a node) and mpirun/orted/ompi_info;
# not its dependency on an ssh client, used only to start daemons on other nodes.
build_image openmpi mpicc.openmpi "openmpi-bin" libopenmpi3 openmpi-common
build_image mpich mpicc.mpich "" libmpich12

chmod -R a+rX "$new"
touch "$new/$stamp"
rm -rf "$OUT"
mv "$new" "$OUT"
echo "tests/setup-mpi.sh: MPI images ready in $OUT"
