#!/usr/bin/env bash
# Start a real single-node Slurm (Debian's slurm-wlm + munge) on this machine, as root, with no
# systemd and no cgroups, so that an unprivileged user can `srun`, `sbatch` and `scancel`.
#
# It runs beside any other Slurm or munge: its own config dir (SLURM_CONF), its own munged
# socket, its own ports, daemons tracked by pid files. Idempotent: if it is already up with the
# same configuration, it does nothing. Afterwards:
#     export SLURM_CONF=/var/tmp/launcher-slurm/etc/slurm.conf
#     srun -n 2 hostname
# Settings (environment):
#   LAUNCHER_SLURM_DIR   state, config, logs, munge socket   [/var/tmp/launcher-slurm]
#   LAUNCHER_SLURM_SPOOL slurmd's spool (PMIx server dirs)   [/var/spool/launcher-slurm]
#       (deliberately outside /tmp and /var/tmp: the launcher must bind the PMIx dirs itself)
#   LAUNCHER_SLURM_PORT  slurmctld's port; slurmd uses +1   [16817]
#   LAUNCHER_SLURM_KILLWAIT seconds between SIGTERM and SIGKILL on scancel/time limit [5]
# Stop it with stop.sh (same settings).
set -euo pipefail

DIR=${LAUNCHER_SLURM_DIR:-/var/tmp/launcher-slurm}
SPOOL=${LAUNCHER_SLURM_SPOOL:-/var/spool/launcher-slurm}
PORT=${LAUNCHER_SLURM_PORT:-16817}
KILLWAIT=${LAUNCHER_SLURM_KILLWAIT:-5}
NODE=$(hostname -s)
CPUS=$(nproc)

die() { echo "slurm/test-cluster/start.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts munged, slurmctld, slurmd)"

# Packages: Slurm and munge; libpmix-dev for Slurm's pmix plugin (it dlopens the unversioned
# libpmix.so); the host's Open MPI and MPICH for the MPI tests (explicit names are used, since
# both provide the mpicc/mpirun alternatives).
need=()
for pair in slurmctld:slurm-wlm slurmd:slurm-wlm srun:slurm-client munged:munge \
    mpicc.openmpi:libopenmpi-dev mpirun.openmpi:openmpi-bin mpicc.mpich:libmpich-dev mpiexec.mpich:mpich; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -e /usr/lib/x86_64-linux-gnu/libpmix.so ] || [ -n "$(ls /usr/lib/*/libpmix.so 2>/dev/null)" ] || need+=(libpmix-dev)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's packages try to start the daemons through init scripts; with no init system that
    # fails harmlessly, and we start our own instances below anyway.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$DIR"
# One start at a time (test processes may start together). The daemons must not inherit the
# lock's descriptor, or it would stay locked as long as they run; nor the caller's
# stdout/stderr, which may be pipes a test reads to the end; nor any other descriptor of the
# caller (a lock that `flock LOCK cargo test` passes down would be held by the daemons for
# good): they start through `detached`, with only the three standard ones.
exec 8>"$DIR.lock"
flock 8

# detached CMD ARGS...: exec CMD with every descriptor above 2 closed.
detached() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then
            eval "exec $fd>&-" 2>/dev/null || true
        fi
    done
    exec "$@"
}

mkdir -p "$DIR"/{etc,run,log,state} "$DIR/munge" "$SPOOL"
chmod 0755 "$DIR" "$DIR/etc" "$DIR/run" "$SPOOL"
chmod 0700 "$DIR/state" "$DIR/log"
chown munge:munge "$DIR/munge"
chmod 0755 "$DIR/munge"   # clients (srun as any user) connect to the socket here

conf="$DIR/etc/slurm.conf"
new_conf=$(cat <<CONF
# Written by slurm/test-cluster/start.sh: one node, no cgroups, no accounting.
ClusterName=launcher-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=$KILLWAIT
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
CONF
)

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
export SLURM_CONF=$conf

if [ -f "$conf" ] && [ "$(cat "$conf")" = "$new_conf" ] &&
    alive "$DIR/run/munged.pid" && alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid" &&
    sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm/test-cluster: already running; export SLURM_CONF=$conf"
    exit 0
fi

# Something is missing or the configuration changed: start from a clean slate.
LAUNCHER_SLURM_DIR=$DIR bash "$(dirname "$0")/stop.sh" >/dev/null
printf '%s\n' "$new_conf" >"$conf"
chmod 0644 "$conf"

key="$DIR/munge/munge.key"
if [ ! -s "$key" ]; then
    head -c 1024 /dev/urandom >"$key"
fi
chown munge:munge "$key"
chmod 0400 "$key"
# --force: run despite the socket living under a world-writable (sticky) ancestor like /var/tmp.
(detached setpriv --reuid=munge --regid=munge --init-groups \
    munged --force --socket="$DIR/munge/munge.socket" --key-file="$key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed") </dev/null >/dev/null 2>"$DIR/log/munged.err" ||
    die "munged did not start: $(cat "$DIR/log/munged.err" "$DIR/munge/munged.log" 2>/dev/null | tail -5)"
cp "$DIR/munge/munged.pid" "$DIR/run/munged.pid"

(detached slurmctld -i -f "$conf") </dev/null >>"$DIR/log/slurmctld.out" 2>&1 || die "slurmctld did not start; see $DIR/log/slurmctld.log"
(detached slurmd -f "$conf") </dev/null >>"$DIR/log/slurmd.out" 2>&1 || die "slurmd did not start; see $DIR/log/slurmd.log"

for _ in $(seq 1 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)$'; then
        echo "slurm/test-cluster: node $NODE up ($CPUS CPUs); export SLURM_CONF=$conf"
        exit 0
    fi
    sleep 0.2
done
tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
die "the node did not become idle within 20 s (logs in $DIR/log)"
