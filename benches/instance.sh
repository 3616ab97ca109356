#!/usr/bin/env bash
# Issue 21: a short command in a running named instance (`launcher exec instance://NAME CMD`)
# against a fresh `launcher exec IMAGE CMD` and against the image already mounted by the
# kernel (`mount -t squashfs -o loop`, made here as root; the command run there by `chroot`,
# then as the test user): the target is instance <= 1.2x the kernel mount.
# Commands alternate (benches/paired.py): the ratios of paired runs are what count on a
# machine shared with other builds; the load is printed.
#
#   sudo benches/instance.sh [ROUNDS] [IMAGE]
#
# IMAGE: the Debian base of tests/setup-debian.sh by default (perl and coreutils in it).
# The binary: $LAUNCHER, else target/release/launcher (cargo build --release first).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
rounds=${1:-100}
FIX=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
IMG=${2:-$FIX-debian/bookworm.sqfs}
BIN=${LAUNCHER:-$HERE/../target/release/launcher}
USER_NAME=$(cat "$FIX/user")
U=$(id -u "$USER_NAME") G=$(id -g "$USER_NAME")
HOMEDIR=$(getent passwd "$USER_NAME" | cut -d: -f6)
W=/var/tmp/launcher-bench-instance
NAME=bench-$$
mkdir -p "$W/mnt"
chmod 755 "$W"
install -m 755 "$BIN" "$W/launcher"
userenv=(env -i HOME="$HOMEDIR" USER="$USER_NAME" LOGNAME="$USER_NAME" PATH=/usr/local/bin:/usr/bin:/bin)
as_user=(setpriv --reuid="$U" --regid="$G" --clear-groups "${userenv[@]}")
mount -t squashfs -o loop,ro "$IMG" "$W/mnt"
cleanup() {
    "${as_user[@]}" "$W/launcher" instance stop "$NAME" >/dev/null 2>&1 || true
    umount "$W/mnt" 2>/dev/null || true
}
trap cleanup EXIT
cd /
"${as_user[@]}" "$W/launcher" instance start "$IMG" "$NAME"

echo "# benches/instance.sh: $(date -u +%F), $(nproc) CPUs, $(uname -r)"
echo "# image: $IMG ($(stat -c %s "$IMG") bytes); load before: $(uptime | sed 's/.*load/load/')"
run() { # TITLE CMD...
    local title=$1
    shift
    echo
    echo "## $title: $*"
    echo "# A: kernel squashfs mount (chroot, then setpriv to the user); B: exec instance://;"
    echo "# C: fresh launcher exec IMAGE; D: launcher exec of the kernel-mounted directory"
    python3 "$HERE/paired.py" "$rounds" \
        chroot "$W/mnt" setpriv --reuid="$U" --regid="$G" --clear-groups "${userenv[@]}" "$@" :: \
        "${as_user[@]}" "$W/launcher" exec "instance://$NAME" "$@" :: \
        "${as_user[@]}" "$W/launcher" exec "$IMG" "$@" :: \
        "${as_user[@]}" "$W/launcher" exec "$W/mnt" "$@"
}
run "perl loading modules" perl -MPOSIX -MData::Dumper -MFile::Find -MStorable -MGetopt::Long -e1
run "ls -lR /usr (metadata of every file)" sh -c 'ls -lR /usr > /dev/null'
run "/bin/true" /bin/true
echo
echo "# load after: $(uptime | sed 's/.*load/load/')"
