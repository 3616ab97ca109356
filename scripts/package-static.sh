#!/usr/bin/env bash
# Writes a static build of the launcher (musl libc, no shared library needed at all) into
# target/packages/launcher-VERSION-ARCH-static.tar.gz and prints its path, and the bare binary
# as target/packages/launcher-ARCH-linux-musl (stripped of debug data). The archive holds
# bin/launcher, its man page and completions under share/, for nodes whose glibc is older than
# what the .deb (scripts/package.sh) depends on, or that are not Debian: unpack it anywhere, for
# example into /opt/launcher, and put bin/ on PATH.
#
#   scripts/package-static.sh                    # cargo build --release for the musl target
#   LAUNCHER_BIN=path scripts/package-static.sh  # archive that static binary instead
#                                                # (tests/package.rs builds a debug one)
#
# Building needs the Rust target (`rustup target add x86_64-unknown-linux-musl`; tests/setup.sh
# adds it) and musl-gcc (`apt-get install musl-tools`) for zstd's C code. docs/admin.md says
# what the static build changes (musl's allocator; start-up measured there).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${LAUNCHER_PACKAGE_DIR:-$ROOT/target/packages}
TARGET=$(uname -m)-unknown-linux-musl
BIN=${LAUNCHER_BIN:-}
if [ -z "$BIN" ]; then
    command -v musl-gcc >/dev/null || { echo "scripts/package-static.sh: musl-gcc is needed (apt-get install musl-tools)" >&2; exit 1; }
    (cd "$ROOT" && cargo build --release --locked -q --target "$TARGET" --bin launcher)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/launcher
fi
[ -x "$BIN" ] || { echo "scripts/package-static.sh: $BIN: not an executable" >&2; exit 1; }
command -v readelf >/dev/null || { echo "scripts/package-static.sh: readelf is needed (apt-get install binutils)" >&2; exit 1; }
# Static means no program interpreter and no shared library: the binary runs on any Linux of
# its architecture, whatever libc the node has.
if readelf -lW "$BIN" | grep -q 'INTERP' || readelf -dW "$BIN" | grep -q '(NEEDED)'; then
    echo "scripts/package-static.sh: $BIN is dynamically linked; build it for $TARGET" >&2
    exit 1
fi

VERSION=$("$BIN" --version | awk '{print $2}')
NAME=launcher-$VERSION-$(uname -m)-static
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
umask 022
D=$STAGE/$NAME
install -D -m 755 "$BIN" "$D/bin/launcher"
objcopy --strip-debug "$D/bin/launcher" 2>/dev/null || true
mkdir -p "$D/share/man/man1" "$D/share/bash-completion/completions" "$D/share/zsh/site-functions" \
    "$D/share/fish/vendor_completions.d"
"$BIN" man | gzip -9n >"$D/share/man/man1/launcher.1.gz"
"$BIN" completion bash >"$D/share/bash-completion/completions/launcher"
"$BIN" completion zsh >"$D/share/zsh/site-functions/_launcher"
"$BIN" completion fish >"$D/share/fish/vendor_completions.d/launcher.fish"
cp "$ROOT/README.md" "$D/README.md"
mkdir -p "$OUT"
TGZ=$OUT/$NAME.tar.gz
tar -C "$STAGE" --owner=0 --group=0 --numeric-owner --sort=name -czf "$TGZ" "$NAME"
install -m 755 "$D/bin/launcher" "$OUT/launcher-$(uname -m)-linux-musl"
echo "$TGZ"
