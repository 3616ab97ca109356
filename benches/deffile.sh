#!/usr/bin/env bash
# Definition-file build against the same steps done natively as root, on the Debian 12 base of
# tests/setup-debian.sh: `launcher build` (as the test user, %post as fake root) vs unsquashfs +
# chroot apt-get + mksquashfs. Both install `hello` from Debian's archive (so both include an
# `apt-get update` over the network) and write lz4. Run as root after tests/setup.sh:
#   benches/deffile.sh target/release/launcher [ROUNDS]
#
# With --reuse: a rebuild on the cached unpacked base (an overlay on it, the default) against
# one that unpacks the base afresh (--disable-cache), in alternation (benches/paired.py; %post
# appends to a file and runs useradd, no network); then our fresh unpack (build --sandbox of
# the base) against a plain `cp -a` of the unpacked tree, the alternative to an overlay:
#   benches/deffile.sh --reuse target/release/launcher [ROUNDS]
set -euo pipefail
REUSE=
if [ "${1:-}" = --reuse ]; then
    REUSE=1
    shift
fi
BIN=$(realpath "$1")
ROUNDS=${2:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FIXTURES=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
BASE=$FIXTURES-debian/bookworm.sqfs
USER_NAME=$(cat "$FIXTURES/user")
work=$(mktemp -d /var/tmp/launcher-bench-def.XXXXXX)
trap 'umount "$work/tree/proc" "$work/tree/dev" 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$BIN" "$work/launcher"
cat >"$work/b.def" <<DEF
Bootstrap: localimage
From: $BASE

%post
    apt-get update
    apt-get install -y --no-install-recommends hello
    useradd builder
DEF
chmod 0755 "$work"
chown -R "$USER_NAME:" "$work"
if [ -n "$REUSE" ]; then
    cat >"$work/r.def" <<DEF
Bootstrap: localimage
From: $BASE

%post
    echo rebuilt >> /etc/motd
    useradd builder
DEF
    install -m 0755 "$HERE/paired.py" "$work/paired.py"
    chown -R "$USER_NAME:" "$work"
    as_user=(setpriv --reuid "$USER_NAME" --regid "$USER_NAME" --clear-groups
        env -i HOME=/tmp PATH=/usr/bin:/bin LAUNCHER_CACHEDIR="$work/cache")
    cd "$work"
    echo "== rebuild: 0 = fresh unpack (--disable-cache), 1 = cached base under an overlay"
    "${as_user[@]}" python3 paired.py "$ROUNDS" \
        sh -c "./launcher build -F --disable-cache --compress lz4 fresh.sqfs r.def 2>/dev/null" :: \
        sh -c "./launcher build -F --compress lz4 reused.sqfs r.def 2>/dev/null"
    tree=$(echo "$work"/cache/bases/local-*/root)
    echo "== staging the base alone: 0 = our unpack (build --sandbox), 1 = cp -a of the unpacked tree"
    "${as_user[@]}" python3 paired.py "$ROUNDS" \
        sh -c "rm -rf sb && ./launcher build --sandbox sb $BASE 2>/dev/null" :: \
        sh -c "rm -rf cp && cp -a $tree cp"
    exit 0
fi
now() { date +%s.%N; }
for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$work/ours.sqfs" "$work/native.sqfs" "$work/tree"
    s=$(now)
    (cd "$work" && setpriv --reuid "$USER_NAME" --regid "$USER_NAME" --clear-groups \
        env -i HOME=/tmp PATH=/usr/bin:/bin ./launcher build --compress lz4 ours.sqfs b.def >/dev/null 2>&1)
    ours=$(echo "$(now) - $s" | bc)
    s=$(now)
    unsquashfs -q -d "$work/tree" "$BASE" >/dev/null
    cp /etc/resolv.conf "$work/tree/etc/resolv.conf"
    mount --bind /proc "$work/tree/proc"
    mount --bind /dev "$work/tree/dev"
    chroot "$work/tree" /bin/sh -ec 'apt-get update; apt-get install -y --no-install-recommends hello; useradd builder' >/dev/null 2>&1
    umount "$work/tree/proc" "$work/tree/dev"
    mksquashfs "$work/tree" "$work/native.sqfs" -comp lz4 -noappend -quiet -no-progress >/dev/null
    native=$(echo "$(now) - $s" | bc)
    echo "round $round: launcher build ${ours} s, native ${native} s, ratio $(echo "scale=2; $ours / $native" | bc)"
done
