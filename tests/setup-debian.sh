#!/usr/bin/env bash
# A small Debian 12 base image for the definition-file build tests (tests/deffile.rs), run as
# root (tests/setup.sh calls it; idempotent, rebuilt when this script changes):
#   bookworm.sqfs: `mmdebstrap --variant=minbase bookworm` (apt, dpkg, bash, coreutils,
#                  passwd; about 80 MiB unpacked), squashed with mksquashfs as root, so its
#                  files keep their real owners (root, and a few root:shadow files).
# The tests hand it to the unprivileged user as `Bootstrap: localimage`; their %post then runs
# apt-get against Debian's archive, which these machines reach.
# Output: $LAUNCHER_DEBIAN_FIXTURES (default $LAUNCHER_FIXTURES-debian, i.e.
# /var/tmp/launcher-fixtures-debian), readable by everyone.
set -euo pipefail

FIXTURES=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
OUT=${LAUNCHER_DEBIAN_FIXTURES:-$FIXTURES-debian}

die() { echo "tests/setup-debian.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and runs mmdebstrap)"

need=()
for pair in mmdebstrap:mmdebstrap mksquashfs:squashfs-tools; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$(dirname "$OUT")"
exec 6>"$OUT.lock"
flock 6
stamp=".setup-$(sha256sum <"$0" | cut -c1-16)"
if [ -e "$OUT/$stamp" ]; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# minbase: Essential and apt only (no recommends), the smallest root apt-get can work in.
mmdebstrap --quiet --variant=minbase bookworm "$work/rootfs" >/dev/null \
    || die "mmdebstrap failed (it needs Debian's archive, deb.debian.org)"
# Package lists are downloaded again by the tests' `apt-get update`; keep the image small.
rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin
mkdir -p "$work/out"
mksquashfs "$work/rootfs" "$work/out/bookworm.sqfs" -comp zstd -noappend -quiet -no-progress >/dev/null
chmod -R a+rX "$work/out"
touch "$work/out/$stamp"
rm -rf "$OUT"
mv "$work/out" "$OUT"
echo "tests/setup-debian.sh: Debian base ready in $OUT"
