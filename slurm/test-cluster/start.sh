#!/usr/bin/env bash
# Start a real Slurm (Debian's slurm-wlm + munge) on this machine, as root, with no systemd and
# no cgroups, so that an unprivileged user can `srun`, `sbatch` and `scancel`.
#
#     start.sh              one node: this host (hostname -s), on 127.0.0.1
#     start.sh --nodes N    N nodes (2 to 8) on this one machine: node1 ... nodeN
#
# It runs beside any other Slurm or munge: its own config dir (SLURM_CONF), its own munged
# socket, its own ports, daemons tracked by pid files. Idempotent: if it is already up with the
# same configuration, it does nothing; a different one (another --nodes) is stopped first.
# Afterwards:
#     export SLURM_CONF=/var/tmp/launcher-slurm/etc/slurm.conf
#     srun -n 2 hostname              (with --nodes 2: srun -N 2 -n 4 hostname)
#
# The multi-node model (--nodes N >= 2). Each node is one `slurmd -N nodeK`, started in
#   - a network namespace of its own, named launcher-nodeK, whose eth0 (a veth pair; the host
#     end is lnch-nodeK) has the address NET.(10+K)/24 on a private bridge (lnchbr0, NET.1 on
#     the host, where slurmctld and munged stay and srun runs). No default route, no NAT: the
#     traffic stays on the machine. Each node has its own loopback, so 127.0.0.1 services
#     (a PMIx server, mpirun's daemons) and abstract Unix sockets are per node, as on real nodes;
#   - a UTS namespace (its `hostname` is nodeK) and an IPC namespace (System V shared memory);
#   - a mount namespace (slave: later host mounts still show) with its own empty tmpfs on /tmp
#     and on /dev/shm: node-local scratch, so the launcher's rendezvous directory
#     (/tmp/launcher-UID), Open MPI's session directory and shared-memory segments are per node.
# Everything else is the one file system the nodes share, as a cluster shares /home and a
# parallel file system: /var/tmp (the test fixtures and scratch), this script's state dir, and
# the spool, where each node has SlurmdSpoolDir=SPOOL/nodeK (the PMIx server directories).
# The PID namespace is the host's, so root on the host sees and signals every node's processes
# (and /proc/PID/root shows a node's /tmp). stop.sh kills what is left in the nodes' namespaces
# and removes the namespaces, the veths and the bridge.
#
# Settings (environment):
#   LAUNCHER_SLURM_DIR   state, config, logs, munge socket   [/var/tmp/launcher-slurm]
#   LAUNCHER_SLURM_SPOOL slurmd's spool (PMIx server dirs)   [/var/spool/launcher-slurm]
#       (deliberately outside /tmp and /var/tmp: the launcher must bind the PMIx dirs itself)
#   LAUNCHER_SLURM_PORT  slurmctld's port; slurmd uses +1   [16817]
#   LAUNCHER_SLURM_KILLWAIT seconds between SIGTERM and SIGKILL on scancel/time limit [5]
#   LAUNCHER_SLURM_NET   the nodes' /24, first three octets (--nodes N >= 2) [10.77.0]
# SPANK plugins: Slurm reads plugstack.conf beside slurm.conf (ETC/plugstack.conf); it is written
# here to include ETC/plugstack.conf.d/*.conf, empty unless a test puts a plugin's line there
# (tests/spank.rs: the launcher's spank_launcher.so). srun and each job step's slurmstepd read it
# afresh, so adding or removing a line there needs no restart, and an empty directory changes
# nothing.
# Stop it with stop.sh (same settings).
set -euo pipefail

DIR=${LAUNCHER_SLURM_DIR:-/var/tmp/launcher-slurm}
SPOOL=${LAUNCHER_SLURM_SPOOL:-/var/spool/launcher-slurm}
PORT=${LAUNCHER_SLURM_PORT:-16817}
KILLWAIT=${LAUNCHER_SLURM_KILLWAIT:-5}
NET=${LAUNCHER_SLURM_NET:-10.77.0}
NODE=$(hostname -s)
CPUS=$(nproc)
BRIDGE=lnchbr0

die() { echo "slurm/test-cluster/start.sh: $*" >&2; exit 1; }
NODES=1
while [ $# -gt 0 ]; do
    case $1 in
    --nodes) [ $# -ge 2 ] || die "--nodes needs a number"; NODES=$2; shift 2 ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument '$1' (usage: start.sh [--nodes N])" ;;
    esac
done
case $NODES in
[1-8]) ;;
*) die "--nodes $NODES: 1 to 8 nodes" ;;
esac
[[ $NET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "LAUNCHER_SLURM_NET=$NET: the first three octets of a /24, like 10.77.0"
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts munged, slurmctld, slurmd)"

# Packages: Slurm and munge; libpmix-dev for Slurm's pmix plugin (it dlopens the unversioned
# libpmix.so); the host's Open MPI and MPICH for the MPI tests (explicit names are used, since
# both provide the mpicc/mpirun alternatives).
need=()
for pair in slurmctld:slurm-wlm slurmd:slurm-wlm srun:slurm-client munged:munge \
    mpicc.openmpi:libopenmpi-dev mpirun.openmpi:openmpi-bin mpicc.mpich:libmpich-dev mpiexec.mpich:mpich \
    ip:iproute2 unshare:util-linux; do
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
# The SPANK include directory (see the header); not part of slurm.conf, so no restart.
mkdir -p "$DIR/etc/plugstack.conf.d"
chmod 0755 "$DIR/etc/plugstack.conf.d"
printf '# Written by slurm/test-cluster/start.sh: the plugins tests put in plugstack.conf.d.\ninclude %s/etc/plugstack.conf.d/*.conf\n' "$DIR" >"$DIR/etc/plugstack.conf.new"
chmod 0644 "$DIR/etc/plugstack.conf.new"
mv "$DIR/etc/plugstack.conf.new" "$DIR/etc/plugstack.conf"
# A line a test left whose plugin file is gone would fail every srun (tests mark their plugin
# `required`): drop it. A test puts its line back each time it runs.
for f in "$DIR"/etc/plugstack.conf.d/*.conf; do
    [ -e "$f" ] || continue
    so=$(awk '!/^#/ && NF >= 2 { print $2; exit }' "$f")
    [ -z "$so" ] || [ -e "$so" ] || rm -f "$f"
done
# The nodes: this host on the loopback, or node1..nodeN on the bridge (see the header).
if [ "$NODES" = 1 ]; then
    ctld_addr=127.0.0.1
    slurmd_spool=$SPOOL/slurmd slurmd_pid=$DIR/run/slurmd.pid slurmd_log=$DIR/log/slurmd.log
    node_lines="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE"
    what="one node"
else
    ctld_addr=$NET.1
    # One spool, pid file and log per node (%n: the node's name).
    slurmd_spool=$SPOOL/%n slurmd_pid=$DIR/run/slurmd-%n.pid slurmd_log=$DIR/log/slurmd-%n.log
    node_lines=""
    for k in $(seq 1 "$NODES"); do
        node_lines+="NodeName=node$k NodeAddr=$NET.$((10 + k)) CPUs=$CPUS State=UNKNOWN
"
    done
    node_lines+="PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE"
    what="$NODES nodes on $BRIDGE ($NET.0/24) in namespaces of their own"
fi
new_conf=$(cat <<CONF
# Written by slurm/test-cluster/start.sh: $what, no cgroups, no accounting.
ClusterName=launcher-test
SlurmctldHost=$NODE($ctld_addr)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$slurmd_spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$slurmd_log
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
$node_lines
CONF
)

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
export SLURM_CONF=$conf

# The slurmd pid files, and the nodes sinfo must show up.
if [ "$NODES" = 1 ]; then
    node_names=$NODE
    slurmd_pids=$DIR/run/slurmd.pid
else
    node_names=$(seq -f 'node%g' 1 "$NODES")
    slurmd_pids=$(for n in $node_names; do echo "$DIR/run/slurmd-$n.pid"; done)
fi
nodes_up() {
    [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated)$')" = "$NODES" ]
}
all_alive() {
    local f
    for f in "$DIR/run/munged.pid" "$DIR/run/slurmctld.pid" $slurmd_pids; do
        alive "$f" || return 1
    done
}

if [ -f "$conf" ] && [ "$(cat "$conf")" = "$new_conf" ] && all_alive && nodes_up; then
    echo "slurm/test-cluster: already running; export SLURM_CONF=$conf"
    exit 0
fi

# Something is missing or the configuration changed: start from a clean slate (stop.sh also
# removes the namespaces and the bridge of an earlier multi-node start).
LAUNCHER_SLURM_DIR=$DIR LAUNCHER_SLURM_SPOOL=$SPOOL bash "$(dirname "$0")/stop.sh" >/dev/null
printf '%s\n' "$new_conf" >"$conf"
chmod 0644 "$conf"

key="$DIR/munge/munge.key"
if [ ! -s "$key" ]; then
    head -c 1024 /dev/urandom >"$key"
fi
chown munge:munge "$key"
chmod 0400 "$key"
# --force: run despite the socket living under a world-writable (sticky) ancestor like /var/tmp.
# The nodes reach it through its path: a Unix socket on the shared file system is not bound
# to a network namespace.
(detached setpriv --reuid=munge --regid=munge --init-groups \
    munged --force --socket="$DIR/munge/munge.socket" --key-file="$key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed") </dev/null >/dev/null 2>"$DIR/log/munged.err" ||
    die "munged did not start: $(cat "$DIR/log/munged.err" "$DIR/munge/munged.log" 2>/dev/null | tail -5)"
cp "$DIR/munge/munged.pid" "$DIR/run/munged.pid"

if [ "$NODES" != 1 ]; then
    # The private network: a bridge with the controller's address, and per node a network
    # namespace joined to it by a veth pair. No route out of the namespaces.
    ip link add "$BRIDGE" type bridge || die "cannot create the bridge $BRIDGE"
    ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for k in $(seq 1 "$NODES"); do
        ns=launcher-node$k
        ip netns add "$ns"
        ip link add "lnch-node$k" type veth peer name eth0 netns "$ns"
        ip link set "lnch-node$k" master "$BRIDGE" up
        ip -n "$ns" addr add "$NET.$((10 + k))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
fi

(detached slurmctld -i -f "$conf") </dev/null >>"$DIR/log/slurmctld.out" 2>&1 || die "slurmctld did not start; see $DIR/log/slurmctld.log"
if [ "$NODES" = 1 ]; then
    (detached slurmd -f "$conf") </dev/null >>"$DIR/log/slurmd.out" 2>&1 || die "slurmd did not start; see $DIR/log/slurmd.log"
else
    for k in $(seq 1 "$NODES"); do
        # In the node's network namespace, new UTS, IPC and mount namespaces: the node's host
        # name, and its own /tmp and /dev/shm (empty tmpfs, gone with the node's last process).
        # slurmd forks into the background; its step daemons and tasks inherit all of these.
        # nsenter, not `ip netns exec`: that remounts /sys, which hides /sys/fs/cgroup, and
        # slurmd will not start without it.
        mkdir -p "$SPOOL/node$k"
        (detached nsenter --net="/run/netns/launcher-node$k" \
            unshare --uts --ipc --mount --propagation slave \
            sh -c 'hostname "$1" &&
                mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp &&
                mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm &&
                exec slurmd -f "$2" -N "$1"' node-start "node$k" "$conf") \
            </dev/null >>"$DIR/log/slurmd-node$k.out" 2>&1 ||
            die "slurmd of node$k did not start; see $DIR/log/slurmd-node$k.log"
    done
fi

for _ in $(seq 1 150); do
    if nodes_up; then
        if [ "$NODES" = 1 ]; then
            echo "slurm/test-cluster: node $NODE up ($CPUS CPUs); export SLURM_CONF=$conf"
        else
            echo "slurm/test-cluster: nodes node[1-$NODES] up ($CPUS CPUs each, $NET.11-$((10 + NODES))); export SLURM_CONF=$conf"
        fi
        exit 0
    fi
    sleep 0.2
done
sinfo -N >&2 || true
tail -5 "$DIR/log/slurmctld.log" "$DIR"/log/slurmd*.log >&2 || true
die "the nodes did not become idle within 30 s (logs in $DIR/log)"
