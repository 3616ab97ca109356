#!/usr/bin/env bash
# Test setup, run as root on a Debian 12 machine (the tests and .ci/run call it; it is idempotent):
#  - installs the packages the tests use (squashfs-tools, util-linux's setpriv, libslurm-dev, ...),
#  - creates the unprivileged user the end-to-end tests run the launcher as,
#  - makes /dev/fuse mode 0666, as on most distributions (these machines ship it 0600),
#  - builds the fixture images with mksquashfs, one per compressor, from a busybox rootfs.
# Fixtures go to $LAUNCHER_FIXTURES (default /var/tmp/launcher-fixtures), readable by the user.
set -euo pipefail

FIXTURES=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
TEST_USER=${LAUNCHER_TEST_USER:-launcher-test}
TEST_UID=${LAUNCHER_TEST_UID:-4242}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ "$(id -u)" != 0 ]; then
    echo "tests/setup.sh: must run as root (it installs packages and creates the test user)" >&2
    exit 1
fi

need_pkgs=()
for pair in mksquashfs:squashfs-tools unsquashfs:squashfs-tools setpriv:util-linux gcc:gcc setfattr:attr umoci:umoci skopeo:skopeo setcap:libcap2-bin docker-registry:docker-registry htpasswd:apache2-utils; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
# make and <slurm/spank.h> build the SPANK plugin (slurm/spank: tests/spank.rs, scripts/package.sh).
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
[ -e /usr/include/slurm/spank.h ] || need_pkgs+=(libslurm-dev)
# OpenPGP keys for `launcher sign` and `gpg --verify` of what it writes (tests/signatures.rs,
# image-tools' sif_sig tests): gpg with its agent.
for tool in gpg gpg-agent gpgconf; do
    command -v "$tool" >/dev/null 2>&1 || { need_pkgs+=(gnupg); break; }
done
# The static build (scripts/package-static.sh, tests/package.rs): musl-gcc compiles zstd's C code.
command -v musl-gcc >/dev/null 2>&1 || need_pkgs+=(musl-tools)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
# The Rust standard library for the static build's target (rustup's, where Rust came from rustup).
musl_target=$(uname -m)-unknown-linux-musl
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$musl_target"; then
    rustup target add "$musl_target" >/dev/null
fi

# The unprivileged user: its own uid, home and group, no sudo.
if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    if getent passwd "$TEST_UID" >/dev/null; then
        useradd -m -s /bin/sh "$TEST_USER"
    else
        useradd -m -s /bin/sh -u "$TEST_UID" "$TEST_USER"
    fi
fi

# Unprivileged FUSE mounts need a world-usable /dev/fuse.
[ -c /dev/fuse ] || { echo "tests/setup.sh: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }
chmod 0666 /dev/fuse

# MPI images and programs (Open MPI, MPICH) for tests/slurm.rs, in $FIXTURES-mpi.
LAUNCHER_FIXTURES=$FIXTURES bash "$HERE/setup-mpi.sh"
# A Debian 12 base image (mmdebstrap) for tests/deffile.rs, in $FIXTURES-debian.
LAUNCHER_FIXTURES=$FIXTURES bash "$HERE/setup-debian.sh"

# The fixtures are rebuilt when this script changes. One setup at a time (test processes may
# start together); a rebuild goes to a new directory that replaces the old one at the end.
exec 9>"$FIXTURES.lock"
flock 9
stamp_name=".setup-$(cat "$0" "$HERE"/setup-*.sh "$HERE"/fixtures/*/* "$HERE"/data/sif/singularityce-busybox-amd64.sif 2>/dev/null | sha256sum | cut -c1-16)"
if [ -e "$FIXTURES/$stamp_name" ]; then
    echo "tests/setup.sh: fixtures up to date in $FIXTURES"
    exit 0
fi
final=$FIXTURES
FIXTURES="$final.new.$$"
rm -rf "$FIXTURES"
mkdir -p "$FIXTURES"
work=$(mktemp -d)
trap 'rm -rf "$work" "$FIXTURES"' EXIT

# busybox-static, unpacked rather than installed (it would replace the system's busybox).
(cd "$work" && apt-get download busybox-static >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$work" && apt-get download busybox-static >/dev/null)
}
dpkg -x "$work"/busybox-static_*.deb "$work/bb"
BUSYBOX="$work/bb/bin/busybox"

root="$work/rootfs"
mkdir -p "$root"/{bin,etc,tmp,var/tmp,proc,sys,dev,home,root,usr/bin,data/tree/a/b,.singularity.d/env}
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

# Data the tests check: a large incompressible file (sha256 compared), small files,
# symlinks (absolute ones must resolve inside the container), hard links, modes, a sparse file.
head -c $((8 * 1024 * 1024 + 12345)) /dev/urandom >"$root/data/big"
: >"$root/data/empty"
for i in $(seq 1 300); do echo "file $i" >"$root/data/tree/f$i"; done
echo deep >"$root/data/tree/a/b/deep.txt"
ln -s /data/big "$root/data/abs-link"
ln -s tree/a/b/deep.txt "$root/data/rel-link"
ln -s /nonexistent/target "$root/data/dangling"
ln "$root/data/tree/f1" "$root/data/hardlink-f1"
echo secret >"$root/data/private"
chmod 0600 "$root/data/private"
echo mine >"$root/data/mine"
chown "$TEST_USER:" "$root/data/mine"
# Extended attributes, read back inside by a small static probe (busybox has no getfattr).
echo xattrs >"$root/data/xattr-file"
setfattr -n user.test -v hello "$root/data/xattr-file"
setfattr -n user.long -v "$(head -c 3000 /dev/zero | tr '\0' x)" "$root/data/xattr-file"
gcc -static -O2 -o "$root/bin/xattr-get" "$HERE/fixtures/xattr-get.c"
truncate -s 3M "$root/data/sparse"
echo tail >>"$root/data/sparse"

# What Apptainer images carry: an env script and a runscript.
cat >"$root/.singularity.d/env/90-environment.sh" <<'EOF'
#!/bin/sh
export IMAGE_VAR="from-image"
export OVERRIDE_ME="image"
EOF
cat >"$root/.singularity.d/runscript" <<'EOF'
#!/bin/sh
echo "runscript args: $*"
EOF
chmod 0755 "$root/.singularity.d/runscript" "$root/.singularity.d/env/90-environment.sh"

# One image per compressor mksquashfs writes; gzip is also the base for SIF tests.
# Device nodes and a fifo cannot be made unprivileged on disk: pseudo definitions add them.
pseudo=(-p "data/chardev c 644 0 0 1 3" -p "data/fifo i 644 0 0 f")
for comp in gzip lzma lzo xz lz4 zstd; do
    mksquashfs "$root" "$FIXTURES/busybox-$comp.sqfs" -comp "$comp" "${pseudo[@]}" -noappend -quiet -no-progress >/dev/null
done
# Uncompressed and fragment-free (and xattr-free) variants exercise the other read paths.
mksquashfs "$root" "$FIXTURES/busybox-plain.sqfs" -noI -noD -noF -noX -noappend -quiet -no-progress >/dev/null
mksquashfs "$root" "$FIXTURES/busybox-nofrag.sqfs" -comp zstd -no-fragments -no-xattrs -noappend -quiet -no-progress >/dev/null
# An image without /home, /tmp or /etc: every default mount point must be created.
bare="$work/bare"
mkdir -p "$bare/bin"
cp "$BUSYBOX" "$bare/bin/busybox"
ln -s busybox "$bare/bin/sh"
ln -s busybox "$bare/bin/ls"
ln -s busybox "$bare/bin/cat"
mksquashfs "$bare" "$FIXTURES/bare.sqfs" -comp gzip -noappend -quiet -no-progress >/dev/null

# The same tree as a Docker/OCI image, made by umoci and exported by skopeo: the inputs of
# `launcher build` from oci:, oci-archive: and docker-archive:.
oci="$work/oci"
umoci init --layout "$oci" >/dev/null
umoci new --image "$oci:test" >/dev/null
umoci insert --image "$oci:test" "$root" / >/dev/null
umoci config --image "$oci:test" --config.env OCI_VAR=from-oci --config.entrypoint /bin/echo \
    --config.cmd default-cmd --config.workingdir /data --config.label org.launcher.test=yes >/dev/null
cp -a "$oci" "$FIXTURES/oci-layout"
skopeo copy --quiet "oci:$oci:test" "oci-archive:$FIXTURES/busybox-oci.tar:test"
skopeo copy --quiet "oci:$oci:test" "docker-archive:$FIXTURES/busybox-docker.tar:test:latest"
# The source tree itself, for builds from a directory (readable by the test user).
cp -a "$root" "$FIXTURES/rootfs"
chown -R "$TEST_USER:" "$FIXTURES/rootfs"

sha256sum "$root/data/big" | cut -d' ' -f1 >"$FIXTURES/big.sha256"
unsquashfs -l -d '' "$FIXTURES/busybox-gzip.sqfs" | grep '^/' | sort >"$FIXTURES/busybox.list"
# A real SingularityCE image (tests/data/sif), copied where the test user can read it.
cp "$HERE/data/sif/singularityce-busybox-amd64.sif" "$FIXTURES/"

bash "$HERE/setup-gpu.sh" "$FIXTURES/gpu" "$final/gpu" "$BUSYBOX"
bash "$HERE/setup-fakempi.sh" "$FIXTURES/fakempi" "$BUSYBOX"

echo "$TEST_USER" >"$FIXTURES/user"
chmod -R a+rX "$FIXTURES"
touch "$FIXTURES/$stamp_name"
rm -rf "$final"
mv "$FIXTURES" "$final"
echo "tests/setup.sh: fixtures ready in $final (user $TEST_USER)"
