#!/usr/bin/env bash
# benches/zstd-startup.sh - `/bin/true` from a zstd (and a gzip) busybox image: the launcher
# with its block cache warm (every launch after the first of a program on a node), the launcher
# with the block cache off (`--fuse-no-block-cache`: a node's first launch), Charliecloud's
# ch-run on the same image, and native /bin/true. Runs alternate (benches/paired.py): every
# command once per round, the order reversed every other round; ratios are paired per round,
# to the first command. Issue 21's target: launcher / ch-run <= 0.5 on 2 vCPUs.
#
# Usage (as root): benches/zstd-startup.sh [LAUNCHER [ROUNDS [CHRUN_DIR]]]
#   LAUNCHER   default target/release/launcher
#   ROUNDS     default 200
#   CHRUN_DIR  holds ch-run and lib/ (Debian's charliecloud-runtime and libsquashfuse0 unpacked
#              with dpkg -x); default /var/tmp/launcher-bench-chrun, made with `apt-get
#              download` when missing
# Uses the test fixtures (tests/setup.sh: the busybox images and the test user). Prints the
# machine, its load, and one table per image.
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")" && pwd)
((EUID == 0)) || { echo "zstd-startup.sh: run as root (it runs the launcher as the test user)" >&2; exit 2; }
launcher=${1:-$HERE/../target/release/launcher} rounds=${2:-200} chrun=${3:-/var/tmp/launcher-bench-chrun}
FIX=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
USER_NAME=$(cat "$FIX/user")
U=$(id -u "$USER_NAME") G=$(id -g "$USER_NAME")
HOMEDIR=$(getent passwd "$USER_NAME" | cut -d: -f6)
if [[ ! -x $chrun/ch-run ]]; then
    mkdir -p "$chrun/debs" "$chrun/lib"
    (cd "$chrun/debs" && apt-get download charliecloud-runtime libsquashfuse0 >/dev/null 2>&1) || {
        echo "zstd-startup.sh: cannot download charliecloud-runtime (give CHRUN_DIR)" >&2
        exit 2
    }
    for d in "$chrun"/debs/*.deb; do dpkg -x "$d" "$chrun/x"; done
    cp "$chrun/x/usr/bin/ch-run" "$chrun/ch-run"
    cp -a "$chrun"/x/usr/lib/x86_64-linux-gnu/. "$chrun/lib/"
fi
W=/var/tmp/launcher-bench-zstd
rm -rf "$W" && mkdir -p "$W/lib" && chmod 755 "$W"
install -m 0755 "$launcher" "$W/launcher"
install -m 0755 "$chrun/ch-run" "$W/ch-run"
cp -a "$chrun"/lib/. "$W/lib/"
as_user=(setpriv --reuid="$U" --regid="$G" --clear-groups env -i HOME="$HOMEDIR" USER="$USER_NAME"
    LOGNAME="$USER_NAME" PATH=/usr/local/bin:/usr/bin:/bin)
echo "== $(nproc) cpus, $(uname -r), load: $(cut -d' ' -f1-3 /proc/loadavg); launcher $launcher ($("$launcher" --version))"
for comp in zstd gzip; do
    img=$W/busybox-$comp.sqfs
    install -m 0644 "$FIX/busybox-$comp.sqfs" "$img"
    # The first launch fills the block cache (the rounds' "warm" launches find it there).
    (cd /tmp && "${as_user[@]}" "$W/launcher" exec "$img" /bin/true)
    cmds=("$W/launcher" exec "$img" /bin/true ::
        "$W/launcher" exec --fuse-no-block-cache "$img" /bin/true ::
        env "LD_LIBRARY_PATH=$W/lib" "$W/ch-run" "$img" -- /bin/true :: /bin/true)
    echo "== $comp: 0 launcher (block cache warm), 1 launcher --fuse-no-block-cache, 2 ch-run, 3 native"
    (cd /tmp && "${as_user[@]}" python3 "$HERE/paired.py" "$rounds" "${cmds[@]}" 2>&1)
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
