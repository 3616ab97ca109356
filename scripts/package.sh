#!/usr/bin/env bash
# Writes the Debian packages into target/packages/, and prints their paths one a line:
#  - launcher_VERSION_ARCH.deb: the binary, its man page, shell completions for bash, zsh and
#    fish, and an example site configuration;
#  - launcher-spank_VERSION_ARCH.deb: the SPANK plugin for `srun --container-image`
#    (slurm/spank, built here against <slurm/spank.h> from libslurm-dev) in Debian's Slurm
#    plugin directory, with its plugstack.conf line in /usr/share/doc/launcher-spank/examples/.
#
#   scripts/package.sh                   # cargo build --release, then the package
#   LAUNCHER_BIN=path scripts/package.sh # package that binary instead (the tests do, with
#                                        # the binary they test)
#
# Made with dpkg-deb alone (no cargo-deb to install): the package is small enough that its
# control file is clearer written out here. The man page and completions come from the binary
# itself (`launcher man`, `launcher completion SHELL`), so they always match it. Nothing goes
# into /etc: a file at /etc/launcher/launcher.yaml always applies (docs/admin.md), so the
# example is in /usr/share/doc/launcher/examples/ for the admin to copy.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${LAUNCHER_PACKAGE_DIR:-$ROOT/target/packages}
BIN=${LAUNCHER_BIN:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --locked -q)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/launcher
fi
[ -x "$BIN" ] || { echo "scripts/package.sh: $BIN: not an executable" >&2; exit 1; }
for tool in dpkg-deb objdump gzip make cc; do
    command -v "$tool" >/dev/null || { echo "scripts/package.sh: $tool is needed (apt-get install dpkg binutils gzip make gcc)" >&2; exit 1; }
done
[ -e /usr/include/slurm/spank.h ] || { echo "scripts/package.sh: <slurm/spank.h> is needed for launcher-spank (apt-get install libslurm-dev)" >&2; exit 1; }

VERSION=$("$BIN" --version | awk '{print $2}')
ARCH=$(dpkg --print-architecture)
# The newest glibc symbol version the binary needs is the package's libc6 dependency.
GLIBC=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
[ -n "$GLIBC" ] || { echo "scripts/package.sh: no glibc version found in $BIN (a static binary is not packaged here)" >&2; exit 1; }

STAGE=$(mktemp -d)
SPANK_STAGE=$(mktemp -d)
SPANK_BUILD=$(mktemp -d)
trap 'rm -rf "$STAGE" "$SPANK_STAGE" "$SPANK_BUILD"' EXIT
chmod 755 "$STAGE" "$SPANK_STAGE"
umask 022
install -D -m 755 "$BIN" "$STAGE/usr/bin/launcher"
# Strip the debug line tables from the copy (the release profile keeps them for backtraces in
# development; installed, they only take space).
objcopy --strip-debug "$STAGE/usr/bin/launcher" 2>/dev/null || true
mkdir -p "$STAGE/usr/share/man/man1"
"$BIN" man | gzip -9n >"$STAGE/usr/share/man/man1/launcher.1.gz"
install -d "$STAGE/usr/share/bash-completion/completions" "$STAGE/usr/share/zsh/vendor-completions" \
    "$STAGE/usr/share/fish/vendor_completions.d"
"$BIN" completion bash >"$STAGE/usr/share/bash-completion/completions/launcher"
"$BIN" completion zsh >"$STAGE/usr/share/zsh/vendor-completions/_launcher"
"$BIN" completion fish >"$STAGE/usr/share/fish/vendor_completions.d/launcher.fish"
DOC=$STAGE/usr/share/doc/launcher
install -d "$DOC/examples"
cat >"$DOC/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: launcher
License: MIT OR Apache-2.0

Files: *
License: MIT OR Apache-2.0
EOF
cat >"$DOC/examples/launcher.yaml" <<'EOF'
# An example site configuration. Copy it to /etc/launcher/launcher.yaml and edit it:
# that file applies to every launch on the node (docs/admin.md lists every key).
#
# binds: [/scratch, "/opt/site:/opt/site:ro"]
# devices: [/dev/infiniband]
# env:
#   set: {OMPI_MCA_btl: "^openib"}
#   unset: [LD_PRELOAD]
# gpu:
#   default: false
# mpi:
#   default: false
# locked: [binds, env.unset]
EOF
gzip -9n -c "$ROOT/README.md" >"$DOC/README.md.gz"
for f in admin slurm usage; do
    [ ! -f "$ROOT/docs/$f.md" ] || gzip -9n -c "$ROOT/docs/$f.md" >"$DOC/$f.md.gz"
done

mkdir -p "$STAGE/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: launcher
Version: $VERSION
Architecture: $ARCH
Maintainer: launcher developers <launcher@localhost>
Installed-Size: $SIZE
Depends: libc6 (>= $GLIBC)
Suggests: slurm-client
Section: admin
Priority: optional
Description: unprivileged HPC container launcher
 Runs commands in SquashFS and SIF images as the calling user, with no setuid
 helper and no daemon: a user namespace, the image served by the launcher's
 own FUSE server, binds, GPU and MPI libraries from the host. Apptainer's
 variables, flags and images work. Made for srun, sbatch and mpirun.
EOF
mkdir -p "$OUT"
DEB=$OUT/launcher_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"

# launcher-spank. Slurm loads a plugin only into the major.minor release whose headers it was
# built with, so the package depends on that release of slurm-client (srun) exactly.
make -s -C "$ROOT/slurm/spank" OUT="$SPANK_BUILD" >&2
SLURM_NUM=$(sed -n 's/^#define SLURM_VERSION_NUMBER 0x\([0-9a-fA-F]*\).*/\1/p' /usr/include/slurm/slurm_version.h)
[ -n "$SLURM_NUM" ] || { echo "scripts/package.sh: no SLURM_VERSION_NUMBER in /usr/include/slurm/slurm_version.h" >&2; exit 1; }
SLURM_MAJOR=$((0x$SLURM_NUM >> 16))
SLURM_MINOR=$(((0x$SLURM_NUM >> 8) & 0xff))
SLURM_REL=$(printf '%d.%02d' "$SLURM_MAJOR" "$SLURM_MINOR")
SLURM_NEXT=$(printf '%d.%02d' "$SLURM_MAJOR" $((SLURM_MINOR + 1)))
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
PLUGIN=/usr/lib/$MULTIARCH/slurm-wlm/spank_launcher.so
install -D -m 644 "$SPANK_BUILD/spank_launcher.so" "$SPANK_STAGE$PLUGIN"
objcopy --strip-debug "$SPANK_STAGE$PLUGIN" 2>/dev/null || true
SPANK_GLIBC=$(objdump -T "$SPANK_STAGE$PLUGIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
SDOC=$SPANK_STAGE/usr/share/doc/launcher-spank
install -d "$SDOC/examples"
cp "$DOC/copyright" "$SDOC/copyright"
{
    echo '# srun --container-image=IMAGE (docs/slurm.md, "pyxis-style srun options"). Put this line in'
    echo '# the plugstack.conf beside slurm.conf (or a file its "include" reads) on the login nodes'
    echo '# (srun) and the compute nodes (slurmstepd). "required": a task whose launcher cannot start'
    echo '# fails instead of running on the host. Arguments: launcher=PATH, mount_home=yes|no.'
    echo "required $PLUGIN launcher=/usr/bin/launcher"
} >"$SDOC/examples/plugstack.conf"
mkdir -p "$SPANK_STAGE/DEBIAN"
SPANK_SIZE=$(du -sk --exclude=DEBIAN "$SPANK_STAGE" | cut -f1)
{
    echo "Package: launcher-spank"
    echo "Version: $VERSION"
    echo "Architecture: $ARCH"
    echo "Maintainer: launcher developers <launcher@localhost>"
    echo "Installed-Size: $SPANK_SIZE"
    echo "Depends: launcher (= $VERSION), libc6 (>= $SPANK_GLIBC), slurm-client (>= $SLURM_REL~), slurm-client (<< $SLURM_NEXT~)"
    echo "Enhances: slurmd, slurm-client"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Description: pyxis-style srun options for the launcher (SPANK plugin)"
    echo " Adds --container-image, --container-mounts, --container-workdir,"
    echo " --container-env, --container-writable and --[no-]container-mount-home to"
    echo " srun: each task of the step runs in the image through the launcher, as the"
    echo " user, with no daemon. Enable it with the line in"
    echo " /usr/share/doc/launcher-spank/examples/plugstack.conf."
} >"$SPANK_STAGE/DEBIAN/control"
SPANK_DEB=$OUT/launcher-spank_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$SPANK_STAGE" "$SPANK_DEB" >/dev/null
echo "$SPANK_DEB"
