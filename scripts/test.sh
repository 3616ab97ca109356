#!/usr/bin/env bash
# Run the whole test suite on a Debian 12 machine, as root (the end-to-end tests switch to an
# unprivileged user that tests/setup.sh creates; nothing runs the launcher as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (sudo): it installs packages and creates the test user" >&2
    exit 1
fi
command -v cargo >/dev/null || { echo "scripts/test.sh: cargo not found: install Rust >= 1.85 (rustup)" >&2; exit 1; }
bash tests/setup.sh
cargo test --workspace --no-fail-fast 2>&1
