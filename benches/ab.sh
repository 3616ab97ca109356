#!/usr/bin/env bash
# A/B of two launcher binaries with benches/paired.py (alternating runs, ratios paired within
# each round): start-up of /bin/true on a zstd and a gzip busybox image, and find + cat over
# 2,000 small files, warm and cold (page cache, dentries and inodes dropped before each run,
# by a root wrapper that then runs the launcher as the user; the drop is in both timings).
# Run as root: sudo benches/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]. Uses the test fixtures
# (tests/setup.sh) and the test user; writes its small-file image to /var/tmp/launcher-ab.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/lib.sh
source "$HERE/lib.sh"
old=$1 new=$2 rounds=${3:-200}
FIX=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
USER_NAME=$(cat "$FIX/user")
U=$(id -u "$USER_NAME") G=$(id -g "$USER_NAME")
HOMEDIR=$(getent passwd "$USER_NAME" | cut -d: -f6)
W=/var/tmp/launcher-ab
mkdir -p "$W"
chmod 755 "$W"
install -m 755 "$old" "$W/launcher.A"
install -m 755 "$new" "$W/launcher.B"
smallfiles_image "$W/smallfiles.sqfs" "$FIX/rootfs"
as_user=(setpriv --reuid="$U" --regid="$G" --clear-groups env -i HOME="$HOMEDIR" USER="$USER_NAME"
    LOGNAME="$USER_NAME" PATH=/usr/local/bin:/usr/bin:/bin)
cd /
findcat='find /data -type f | xargs cat > /dev/null'
for img in busybox-zstd busybox-gzip; do
    echo "## start-up, /bin/true on $img"
    "${as_user[@]}" python3 "$HERE/paired.py" "$rounds" \
        "$W/launcher.A" exec "$FIX/$img.sqfs" /bin/true :: "$W/launcher.B" exec "$FIX/$img.sqfs" /bin/true
done
echo "## find + cat, warm"
"${as_user[@]}" python3 "$HERE/paired.py" "$((rounds / 4))" \
    "$W/launcher.A" exec "$W/smallfiles.sqfs" /bin/sh -c "$findcat" :: \
    "$W/launcher.B" exec "$W/smallfiles.sqfs" /bin/sh -c "$findcat"
echo "## find + cat, cold (the drop_caches is in both timings)"
cold() {
    printf 'sync; echo 3 > /proc/sys/vm/drop_caches; exec %s %s exec %s /bin/sh -c %q' \
        "${as_user[*]}" "$W/launcher.$1" "$W/smallfiles.sqfs" "$findcat"
}
python3 "$HERE/paired.py" "$((rounds / 8))" sh -c "$(cold A)" :: sh -c "$(cold B)"
