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
# tests/slurm.rs starts the test Slurm (slurm/test-cluster/start.sh: munged, slurmctld and
# slurmd, as root) and tests/slurm_multinode.rs replaces it with two nodes (start.sh --nodes 2:
# network namespaces on a bridge). If this run is the one that started it, stop it at the end,
# pass or fail, whichever is up then (stop.sh stops either and removes the namespaces and the
# bridge), unless LAUNCHER_KEEP_SLURM=1 asks to keep it (to look at its logs, or to rerun
# tests fast).
slurm_pid=${LAUNCHER_SLURM_DIR:-/var/tmp/launcher-slurm}/run/slurmctld.pid
slurm_was_up=0
if [ -s "$slurm_pid" ] && kill -0 "$(cat "$slurm_pid")" 2>/dev/null; then
    slurm_was_up=1
fi
stop_slurm() {
    if [ "$slurm_was_up" = 0 ] && [ "${LAUNCHER_KEEP_SLURM:-0}" != 1 ] && [ -s "$slurm_pid" ]; then
        bash slurm/test-cluster/stop.sh || echo "scripts/test.sh: stopping the test Slurm failed" >&2
    fi
}
trap stop_slurm EXIT
cargo test --workspace --no-fail-fast 2>&1
