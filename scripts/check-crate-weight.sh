#!/usr/bin/env bash
# The runtime reads images only: launcher-runtime must not compile the image-making stack
# (HTTP client, TLS, tar, tree walker, progress bars) that image-tools' `build` feature brings,
# and image-tools must build without that feature. Nor the signature stack of the `verify`
# feature (OpenPGP, RSA, elliptic curves): only `launcher verify` checks signatures.
set -euo pipefail
cd "$(dirname "$0")/.."
heavy=$(cargo tree -p launcher-runtime -e normal --prefix none | awk '{print $1}' | sort -u |
    grep -xE 'ureq|rustls|ring|indicatif|tar|walkdir|base64|pgp|rsa|ed25519-dalek|p256|p384' || true)
if [ -n "$heavy" ]; then
    echo "scripts/check-crate-weight.sh: launcher-runtime depends on $(echo $heavy): keep image-tools' build and verify features off in the runtime" >&2
    exit 1
fi
cargo clippy -q -p image-tools --no-default-features --lib -- -D warnings
echo "scripts/check-crate-weight.sh: launcher-runtime reads images without the build stack"
