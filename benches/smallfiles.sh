#!/usr/bin/env bash
# benches/smallfiles.sh - find + cat over 2,000 small files (4 KiB, in 20 dirs, zstd image): the
# launcher on a fresh FUSE mount per run, as the test user, against the kernel's squashfs
# mounted afresh per run from one loop device (mounted by root, find + cat as the test user,
# then unmounted: the mount is in the kernel's time as the launcher's own start-up is in its). The image file is in
# the host page cache for both (warm-up runs). Runs alternate (benches/paired.py); ratios are
# paired per round, to the kernel's find + cat. Each is also timed with no reads (/bin/true: the
# kernel's mount and unmount, the launcher's start-up), so that the reads' own cost is the
# difference of medians. Then the launcher's FUSE requests per file, from --debug:
# with pushes and prefetch off (deterministic), and as launched by default.
#
# Usage (as root): benches/smallfiles.sh [LAUNCHER [ROUNDS [OTHER_LAUNCHER...]]]
#   LAUNCHER        default target/release/launcher
#   ROUNDS          default 40
#   OTHER_LAUNCHER  more builds timed in the same rounds (an A/B against an older binary)
# Uses the test fixtures (tests/setup.sh: the busybox root and the test user), or the user named
# by BENCH_USER and the busybox root at BENCH_ROOTFS (benches/run.sh gives its own); writes its
# image to /var/tmp/launcher-ab (shared with ab.sh) and mounts the kernel's at
# /var/tmp/launcher-ab/kmnt. With BENCH_JSON_DIR set, the paired runs' times go to
# BENCH_JSON_DIR/findcat.json (benches/paired.py's PAIRED_JSON: command 0 the kernel's find +
# cat, 1 its /bin/true, then per launcher its find + cat and its /bin/true).
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"
((EUID == 0)) || { echo "smallfiles.sh: run as root (it loop-mounts the image)" >&2; exit 2; }
launcher=${1:-$HERE/../target/release/launcher} rounds=${2:-40}
shift $(($# < 2 ? $# : 2))
FIX=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
USER_NAME=${BENCH_USER:-$(cat "$FIX/user")}
U=$(id -u "$USER_NAME") G=$(id -g "$USER_NAME")
HOMEDIR=$(getent passwd "$USER_NAME" | cut -d: -f6)
W=/var/tmp/launcher-ab
KMNT=$W/kmnt
mkdir -p "$W" "$KMNT"
chmod 755 "$W"
smallfiles_image "$W/smallfiles.sqfs" "${BENCH_ROOTFS:-$FIX/rootfs}"
IMG=$W/smallfiles.sqfs
files=$(unsquashfs -l "$IMG" | grep -c '^squashfs-root/data/small/d[0-9]*/f')
as_user="setpriv --reuid=$U --regid=$G --clear-groups env -i HOME=$HOMEDIR USER=$USER_NAME LOGNAME=$USER_NAME PATH=/usr/local/bin:/usr/bin:/bin"
findcat='find /data -type f | xargs cat > /dev/null'
mountpoint -q "$KMNT" && umount "$KMNT"
# The loop device is set up once: `mount -o loop` per run costs 100-200 ms here (loop set-up
# and udev), which is no part of reading files. Each run still mounts afresh, so the kernel
# starts with no dentries, inodes or file pages; the loop device's own page cache stays warm,
# as the image file's does for the launcher.
LOOP=$(losetup --read-only --find --show "$IMG")
trap 'mountpoint -q "$KMNT" && umount "$KMNT"; losetup -d "$LOOP"' EXIT

# One script per measured command, each started by paired.py as `sh SCRIPT`.
cat >"$W/kernel-findcat.sh" <<K
mount -t squashfs -o ro $LOOP $KMNT || exit 1
$as_user PATH=$KMNT/bin $KMNT/bin/sh -c 'find $KMNT/data -type f | xargs cat > /dev/null'
rc=\$?
umount $KMNT || exit 1
exit \$rc
K
# The same with no reads: what the mount (kernel) or the start-up (launcher) costs alone, so
# that the reads' own share can be told apart (find + cat minus this).
cat >"$W/kernel-empty.sh" <<K
mount -t squashfs -o ro $LOOP $KMNT || exit 1
$as_user PATH=$KMNT/bin $KMNT/bin/true
rc=\$?
umount $KMNT || exit 1
exit \$rc
K
cmds=(sh "$W/kernel-findcat.sh" :: sh "$W/kernel-empty.sh")
names=("kernel squashfs, fresh mount: find + cat" "kernel squashfs, fresh mount: /bin/true (no reads)")
i=0
for l in "$launcher" "$@"; do
    install -m 755 "$l" "$W/launcher.s$i"
    printf 'exec %s %s exec %s /bin/sh -c %q\n' "$as_user" "$W/launcher.s$i" "$IMG" "$findcat" \
        >"$W/launcher-findcat.s$i.sh"
    printf 'exec %s %s exec %s /bin/true\n' "$as_user" "$W/launcher.s$i" "$IMG" >"$W/launcher-empty.s$i.sh"
    cmds+=(:: sh "$W/launcher-findcat.s$i.sh" :: sh "$W/launcher-empty.s$i.sh")
    names+=("launcher $l: find + cat" "launcher $l: /bin/true (no reads)")
    i=$((i + 1))
done

echo "== $(nproc) cpus, $(uname -r), $files files; load before: $(uptime)"
for ((k = 0; k < ${#names[@]}; k++)); do echo "command $k: ${names[$k]}"; done
echo "== find + cat, paired ($rounds rounds, ratios to command 0)"
cd /
PAIRED_JSON=${BENCH_JSON_DIR:+$BENCH_JSON_DIR/findcat.json} python3 "$HERE/paired.py" "$rounds" "${cmds[@]}"
echo "== load after: $(uptime)"

echo "== FUSE requests (launcher --debug), per file = count / $files"
for ((k = 0; k < i; k++)); do
    for mode in "--fuse-no-push --fuse-no-prefetch" ""; do
        # shellcheck disable=SC2086  # $as_user and $mode are word lists
        line=$($as_user "$W/launcher.s$k" --debug exec $mode "$IMG" /bin/sh -c "$findcat" 2>&1 |
            grep -o 'FUSE requests: .*' || echo "FUSE requests: (none reported: a build without counts)")
        echo "launcher.s$k ${mode:-(defaults)}: $line"
        grep -o '[a-z]* [0-9]*,' <<<"$line" | tr -d , |
            awk -v f="$files" '{ printf "    %-12s %6d  %5.2f per file\n", $1, $2, $2 / f }'
    done
done
