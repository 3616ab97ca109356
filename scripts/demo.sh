#!/usr/bin/env bash
# Demo: build the launcher, make a small busybox SquashFS image with mksquashfs, and run it
# as an ordinary user. Run as root on a Debian 12 machine (it installs what it needs and
# creates the unprivileged user `launcher-test`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "scripts/demo.sh: run as root (sudo): it installs packages and creates the demo user" >&2
    exit 1
fi
command -v cargo >/dev/null || { echo "scripts/demo.sh: cargo not found: install Rust >= 1.85 (rustup)" >&2; exit 1; }
bash tests/setup.sh >/dev/null
cargo build --release --quiet
user=$(cat "${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}/user")
demo=/var/tmp/launcher-demo
rm -rf "$demo" && mkdir -p "$demo/rootfs/bin"
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download busybox-static >/dev/null 2>&1 && dpkg -x busybox-static_*.deb x)
cp "$tmp/x/bin/busybox" "$demo/rootfs/bin/"
for a in sh ls cat id echo uname; do ln -s busybox "$demo/rootfs/bin/$a"; done
echo "Hello from inside the image" >"$demo/rootfs/hello.txt"
mksquashfs "$demo/rootfs" "$demo/demo.sqfs" -comp zstd -noappend -quiet -no-progress >/dev/null
cp target/release/launcher "$demo/launcher"
chmod -R a+rX "$demo"
as_user() { setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups env -i HOME="$(getent passwd "$user" | cut -d: -f6)" USER="$user" PATH=/usr/bin:/bin "$@"; }
echo "\$ launcher inspect demo.sqfs"
as_user "$demo/launcher" inspect "$demo/demo.sqfs"
echo
echo "\$ launcher exec demo.sqfs sh -c 'id; cat /hello.txt; ls /'    (as $user, uid $(id -u "$user"))"
cd /
as_user "$demo/launcher" exec "$demo/demo.sqfs" sh -c 'id; cat /hello.txt; ls /'
