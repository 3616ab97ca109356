#!/usr/bin/env bash
# Stop the test Slurm that start.sh started (by its pid files only: never another Slurm).
# --purge also removes its state, logs, key and spool.
set -euo pipefail
DIR=${LAUNCHER_SLURM_DIR:-/var/tmp/launcher-slurm}
SPOOL=${LAUNCHER_SLURM_SPOOL:-/var/spool/launcher-slurm}
[ "$(id -u)" = 0 ] || { echo "slurm/test-cluster/stop.sh: must run as root" >&2; exit 1; }

stop_pidfile() {
    local f=$1 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}
# slurmd first, so no step daemon is started while the controller goes away.
stop_pidfile "$DIR/run/slurmd.pid"
stop_pidfile "$DIR/run/slurmctld.pid"
stop_pidfile "$DIR/run/munged.pid"
rm -f "$DIR/munge/munged.pid"
if [ "${1:-}" = --purge ]; then
    rm -rf "$DIR" "$DIR.lock" "$SPOOL"
fi
echo "slurm/test-cluster: stopped"
