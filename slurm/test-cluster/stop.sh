#!/usr/bin/env bash
# Stop the test Slurm that start.sh started (by its pid files only: never another Slurm), with
# one node or several. Of a multi-node start it also kills what is left in the nodes'
# namespaces (step daemons, tasks: processes of those nodes only) and removes the namespaces
# (launcher-nodeK), their veths and the bridge (lnchbr0), the names start.sh gives them.
# --purge also removes its state, logs, key and spool.
set -euo pipefail
DIR=${LAUNCHER_SLURM_DIR:-/var/tmp/launcher-slurm}
SPOOL=${LAUNCHER_SLURM_SPOOL:-/var/spool/launcher-slurm}
BRIDGE=lnchbr0
[ "$(id -u)" = 0 ] || { echo "slurm/test-cluster/stop.sh: must run as root" >&2; exit 1; }

# wait_gone PID...: up to 5 s for them to exit.
wait_gone() {
    local pid
    for _ in $(seq 1 50); do
        for pid in "$@"; do
            kill -0 "$pid" 2>/dev/null && break
            pid=
        done
        [ -z "$pid" ] && return 0
        sleep 0.1
    done
    return 1
}
stop_pid() {
    local pid=$1
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
}
stop_pidfile() {
    local f=$1
    [ -s "$f" ] || return 0
    stop_pid "$(cat "$f")"
    rm -f "$f"
}
# slurmd first, so no step daemon is started while the controller goes away; all of them at
# once (each may take seconds to exit).
slurmd_pids=()
for f in "$DIR/run/slurmd.pid" "$DIR"/run/slurmd-*.pid; do
    if [ -s "$f" ]; then
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null && slurmd_pids+=("$pid")
        rm -f "$f"
    fi
done
if [ ${#slurmd_pids[@]} -gt 0 ]; then
    wait_gone "${slurmd_pids[@]}" || kill -KILL "${slurmd_pids[@]}" 2>/dev/null || true
fi
# What the nodes' slurmd left (step daemons, tasks being killed): every process still in a
# node's network namespace is that node's. TERM, then KILL; then the namespace can go, and its
# veth with it.
if command -v ip >/dev/null; then
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^launcher-node[0-9]+$/ {print $1}'); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [ -n "$pids" ]; then
            # shellcheck disable=SC2086 # one pid per word
            kill -TERM $pids 2>/dev/null || true
            # shellcheck disable=SC2086
            wait_gone $pids || kill -KILL $pids 2>/dev/null || true
        fi
        ip netns del "$ns" 2>/dev/null || echo "slurm/test-cluster/stop.sh: could not remove the namespace $ns" >&2
    done
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^lnch-node[0-9]+@/ {sub(/@.*/, "", $2); print $2}'); do
        ip link del "$link" 2>/dev/null || true
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" || echo "slurm/test-cluster/stop.sh: could not remove the bridge $BRIDGE" >&2
    fi
fi
stop_pidfile "$DIR/run/slurmctld.pid"
stop_pidfile "$DIR/run/munged.pid"
rm -f "$DIR/munge/munged.pid"
if [ "${1:-}" = --purge ]; then
    rm -rf "$DIR" "$DIR.lock" "$SPOOL"
fi
echo "slurm/test-cluster: stopped"
