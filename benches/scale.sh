#!/usr/bin/env bash
# benches/scale.sh - start-up of `launcher exec IMG /bin/true` per Slurm job step, from 1 to 64
# ranks on one node and on 2 and 4 nodes of the test cluster, against the same srun of
# /bin/true natively; and the bytes each node's launcher reads of a 1 GB image (lazy reads).
#
# Usage (as root):  benches/scale.sh [--quick] [--no-build] [--rounds N] [--skip-startup] [--skip-lazy]
#   --quick         3 rounds, ranks 1 4 16 64 on one node (a smoke check)
#   --no-build      measure target/release/launcher as it is (no `cargo build --release`)
#   --rounds N      paired rounds per row (default 20)
#   --skip-startup  only the lazy-read part; --skip-lazy: only start-up
# Environment: LAUNCHER_TEST_USER (the unprivileged user to measure as; default: create/reuse
# `launcher-bench`), LAUNCHER_FIXTURES (tests/setup.sh's busybox root), CARGO_TARGET_DIR.
#
# What it does, as the user, on the test cluster (slurm/test-cluster/start.sh; it restarts it
# with the node count each part needs, and stops it at the end):
#  1. in one allocation per row (`salloc --overcommit`, so each run times a job step, not a
#     job allocation), benches/paired.py alternates
#         srun -N NODES -n NODES*R --ntasks-per-node R --overcommit LAUNCHER exec IMG /bin/true
#         srun -N NODES -n NODES*R --ntasks-per-node R --overcommit /bin/true
#     (the order reversed every other round) and reports each one's median and the median over
#     rounds of launcher / native; rows: one node R = 1 2 4 8 16 32 64, then 2 and 4 nodes with
#     R = 1 and 8 per node. IMG: a zstd SquashFS of a busybox root (1.3 MB).
#  2. a 1.0 GiB image (the busybox root plus 4 files of 256 MiB of random data, zstd; made in
#     /var/tmp and removed at the end), its pages dropped from the page cache, then
#         salloc -N 2 -n 2*R --overcommit srun -N 2 -n 2*R --ntasks-per-node R --overcommit -l \
#             LAUNCHER exec --debug BIG /bin/true
#     for R = 1 and 4: each launcher's `image bytes read: N of M` (--debug) by node, and the
#     image's pages in the page cache afterwards (fincore): what all the nodes read together.
# Uses the test cluster, so hold the lock other users of it take:
#     flock -o /tmp/e2e.lock benches/scale.sh
# Prints the machine, its load before and after, and the tables (Markdown) on stdout.
set -uo pipefail
umask 022
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="benches/scale.sh${*:+ $*}"
ROUNDS=20 BUILD=1 STARTUP=1 LAZY=1
ONE_NODE=(1 2 4 8 16 32 64) MULTI=(2:1 2:8 4:1 4:8)
while (($#)); do
    case "$1" in
        --quick) ROUNDS=3 ONE_NODE=(1 4 16 64) MULTI=(2:1 2:8 4:8) ;;
        --no-build) BUILD=0 ;;
        --rounds) ROUNDS=$2; shift ;;
        --skip-startup) STARTUP=0 ;;
        --skip-lazy) LAZY=0 ;;
        -h | --help) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "scale.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
((EUID == 0)) || { echo "scale.sh: must run as root (it starts the test Slurm)" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "scale.sh: --rounds $ROUNDS: a positive number" >&2; exit 2; }

log() { printf '[scale.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPORT=$(mktemp) FAILS=$(mktemp) SUMMARY=/dev/null NFAIL=0
SCRATCH=/var/tmp/launcher-bench/scale
BIG=$SCRATCH/big.sqfs
cleanup() {
    rm -f "$REPORT" "$FAILS" "$BIG" "$BIG.tmp"
    rm -rf "$SCRATCH/bigtree"
    bash "$ROOT/slurm/test-cluster/stop.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [[ -n ${LAUNCHER_TEST_USER:-} ]]; then
    pw=$(getent passwd "$LAUNCHER_TEST_USER") ||
        { echo "scale.sh: LAUNCHER_TEST_USER='$LAUNCHER_TEST_USER' is not a user" >&2; exit 1; }
else
    getent passwd launcher-bench >/dev/null || useradd --create-home --shell /bin/sh launcher-bench
    pw=$(getent passwd launcher-bench)
fi
IFS=: read -r U_NAME _ U_UID U_GID _ U_HOME _ <<<"$pw"
((U_UID != 0)) || { echo "scale.sh: the measuring user must not be root" >&2; exit 1; }
chmod 0666 /dev/fuse
ROOTFS=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}/rootfs
[[ -x $ROOTFS/bin/busybox ]] || { echo "scale.sh: no busybox root at $ROOTFS (run tests/setup.sh)" >&2; exit 1; }

BUILD_NOTE="not built by this run (--no-build)"
((BUILD)) && build_launcher
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/launcher"
[[ -x $BIN ]] || { echo "scale.sh: no launcher binary at $BIN (cargo build --release)" >&2; exit 1; }
mkdir -p "$SCRATCH"
chmod 0755 "$SCRATCH" "$(dirname "$SCRATCH")"
LAUNCHER=$SCRATCH/launcher
install -m 0755 "$BIN" "$LAUNCHER"
install -m 0755 "$ROOT/benches/paired.py" "$SCRATCH/paired.py"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- . ':!benches' ':!docs' 2>/dev/null || REV="$REV (with uncommitted changes)"

# The small image: busybox only (the fixtures' /data left out).
IMG=$SCRATCH/busybox.sqfs
tree=$(mktemp -d "$SCRATCH/tree.XXXXXX")
cp -a "$ROOTFS/." "$tree/" && rm -rf "$tree/data" && chmod 0755 "$tree"
mksquashfs "$tree" "$IMG" -comp zstd -noappend -quiet -no-progress >/dev/null
chmod 0644 "$IMG"
rm -rf "$tree"

SLURM_CONF=${LAUNCHER_SLURM_DIR:-/var/tmp/launcher-slurm}/etc/slurm.conf
ASU=(setpriv --reuid="$U_UID" --regid="$U_GID" --clear-groups
    env -i "HOME=$U_HOME" "USER=$U_NAME" "LOGNAME=$U_NAME" PATH=/usr/local/bin:/usr/bin:/bin
    "SLURM_CONF=$SLURM_CONF")
cluster() {
    log "test cluster with $1 node(s)"
    bash "$ROOT/slurm/test-cluster/start.sh" --nodes "$1" >&2 || { echo "scale.sh: the test Slurm did not start" >&2; exit 1; }
}

md "# Start-up at scale on the test cluster" "" \
    "\`$INVOCATION\` on $(date -u '+%Y-%m-%d %H:%M') UTC: $(nproc) CPUs, $(uname -r), launcher $REV" \
    "($BUILD_NOTE), Slurm $(dpkg-query -W -f '${Version}' slurm-client 2>/dev/null), as \`$U_NAME\`." \
    "Load before: $(cut -d' ' -f1-3 /proc/loadavg)." ""

# ---------------------------------------------------------------- 1. start-up per step
# row NODES R: one paired.py run inside the allocation; prints "launcher native ratio failed"
# (medians in ms, the paired ratio launcher / native, failed runs).
row() {
    local nodes=$1 r=$2 out
    # -n too: inside the allocation srun would take the allocation's SLURM_NTASKS. (salloc
    # refuses --ntasks-per-node above the node's CPUs even with --overcommit; -n is accepted.)
    local step=(srun -N "$nodes" -n $((nodes * r)) --ntasks-per-node "$r" --overcommit)
    out=$(cd "$SCRATCH" && timeout 600 "${ASU[@]}" salloc -Q -N "$nodes" -n $((nodes * r)) --overcommit \
        python3 "$SCRATCH/paired.py" "$ROUNDS" "${step[@]}" /bin/true :: \
        "${step[@]}" "$LAUNCHER" exec "$IMG" /bin/true 2>&1)
    local rc=$?
    if ((rc != 0)) || [[ $(grep -c 'paired ratio' <<<"$out") != 2 ]]; then
        fail "start-up, $nodes node(s), $r rank(s) per node" "salloc ... paired.py $ROUNDS ${step[*]} ..." "$rc" "$out"
        echo "- - - -"
        return
    fi
    # paired.py: "J: median M ms p10 ... fastest ... paired ratio to 0: R failed F CMD"; command 0
    # is native, 1 the launcher (its ratio: launcher / native, per round).
    awk '/^0:/ { n = $3; f += $17 }
         /^1:/ { l = $3; ratio = $15; f += $17 }
         END { printf "%s %s %.2f %d\n", l, n, ratio, f }' <<<"$out"
}
if ((STARTUP)); then
    md "## Start-up per job step" "" \
        "Per row, in one allocation (\`salloc -N NODES -n NODES*R --overcommit\`), $ROUNDS rounds" \
        "(after 5 warm-up runs of each) of one launcher step and one native step, the order reversed" \
        "every other round (benches/paired.py):" "" \
        "    srun -N NODES -n NODES*R --ntasks-per-node R --overcommit $LAUNCHER exec $IMG /bin/true" \
        "    srun -N NODES -n NODES*R --ntasks-per-node R --overcommit /bin/true" "" \
        "Wall time of the whole step as srun sees it (median, ms); ratio: the median over rounds of" \
        "launcher / native within the round; + : the median launcher minus the median native." \
        "Each node has $(nproc) CPUs: with R ranks on it, R launchers share them." ""
    md "| nodes | ranks per node | ranks | native (ms) | launcher (ms) | + (ms) | launcher / native | failed runs |" \
        "|---:|---:|---:|---:|---:|---:|---:|---:|"
    declare -a specs=()
    for r in "${ONE_NODE[@]}"; do specs+=("1:$r"); done
    specs+=("${MULTI[@]}")
    current=0
    for spec in "${specs[@]}"; do
        nodes=${spec%%:*} r=${spec#*:}
        if ((nodes != current)); then cluster "$nodes"; current=$nodes; fi
        log "start-up: $nodes node(s), $r rank(s) per node, $ROUNDS rounds (load $(cut -d' ' -f1 /proc/loadavg))"
        read -r l n ratio f < <(row "$nodes" "$r")
        plus=$([[ $l != - ]] && awk -v a="$l" -v b="$n" 'BEGIN { printf "%.1f", a - b }' || echo -)
        md "| $nodes | $r | $((nodes * r)) | $n | $l | $plus | $ratio | $f |"
    done
    md ""
fi

# ---------------------------------------------------------------- 2. lazy reads of a 1 GB image
if ((LAZY)); then
    log "the 1 GiB image (busybox + 4 x 256 MiB of random data)"
    rm -rf "$SCRATCH/bigtree"
    mkdir -p "$SCRATCH/bigtree/data"
    cp -a "$ROOTFS/." "$SCRATCH/bigtree/" && rm -rf "$SCRATCH/bigtree/data"/* && chmod 0755 "$SCRATCH/bigtree"
    for i in 0 1 2 3; do rand_bytes $((256 << 20)) "scale-$i" >"$SCRATCH/bigtree/data/blob$i"; done
    mksquashfs "$SCRATCH/bigtree" "$BIG.tmp" -comp zstd -Xcompression-level 1 -noappend -quiet -no-progress >/dev/null &&
        chmod 0644 "$BIG.tmp" && mv "$BIG.tmp" "$BIG"
    rm -rf "$SCRATCH/bigtree"
    size=$(stat -c %s "$BIG")
    cluster 2
    md "## Lazy reads: a $((size >> 20)) MiB image on two nodes" "" \
        "\`$BIG\`: the busybox root and /data/blob0..3, 256 MiB of random data each (zstd; stored" \
        "uncompressed, as random data does not compress), $size bytes, on the file system both nodes" \
        "share. Before each run its pages are dropped from the page cache (\`dd iflag=nocache\`)." \
        "Then, as \`$U_NAME\`:" "" \
        "    salloc -Q -N 2 -n 2*R --overcommit srun -N 2 -n 2*R --ntasks-per-node R --overcommit -l \\" \
        "        $LAUNCHER exec --debug $BIG /bin/true" "" \
        "Per node: each launcher's \`image bytes read: N of M\` (--debug: the bytes it read from the" \
        "image file, to plan and, for the node's leader, to serve the command's reads). Page cache:" \
        "the image's pages resident afterwards (\`fincore\`), what both nodes read together, kernel" \
        "readahead included." ""
    md "| ranks per node | node | launchers on the node | image bytes read per launcher | node total (KiB) | image's pages in the page cache before / after the run, both nodes (KiB) | wall (s) |" \
        "|---:|---|---:|---|---:|---:|---:|"
    for r in 1 4; do
        # Which node runs task T (srun -l labels): the same layout, running hostname.
        # (In an allocation: srun refuses --ntasks-per-node above the node's CPUs when it
        # allocates, as salloc does, but takes it for a step.)
        alloc=(salloc -Q -N 2 -n $((2 * r)) --overcommit)
        nodemap=$(cd "$SCRATCH" && "${ASU[@]}" "${alloc[@]}" srun -N 2 -n $((2 * r)) --ntasks-per-node "$r" --overcommit -l hostname 2>/dev/null)
        # Written back first: dirty pages (the image was just written) cannot be dropped.
        sync "$BIG"
        dd if="$BIG" iflag=nocache count=0 status=none 2>/dev/null
        before=$(fincore -b -n -o RES "$BIG" 2>/dev/null | awk '{ printf "%d", $1 / 1024 }')
        t0=$(date +%s.%N)
        out=$(cd "$SCRATCH" && timeout 300 "${ASU[@]}" "${alloc[@]}" srun -N 2 -n $((2 * r)) --ntasks-per-node "$r" --overcommit -l \
            "$LAUNCHER" exec --debug "$BIG" /bin/true 2>&1)
        rc=$?
        wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
        cached=$(fincore -b -n -o RES "$BIG" 2>/dev/null | awk '{ printf "%d", $1 / 1024 }')
        if ((rc != 0)); then
            fail "lazy reads, $r rank(s) per node" "${alloc[*]} srun -N 2 -n $((2 * r)) --ntasks-per-node $r --overcommit -l $LAUNCHER exec --debug $BIG /bin/true" "$rc" "$(grep -v 'launcher: debug' <<<"$out" | tail -n 20)"
            continue
        fi
        for node in node1 node2; do
            reads=$(awk -v node="$node" '
                FNR == NR { sub(":", "", $1); host[$1] = $2; next }
                /image bytes read:/ { t = $1; sub(":", "", t); if (host[t] == node) {
                    for (i = 1; i <= NF; i++) if ($i == "read:") { print $(i + 1); break } } }' \
                <(printf '%s\n' "$nodemap") <(printf '%s\n' "$out"))
            n=$(wc -w <<<"$reads")
            total=$(awk '{ s += $1 } END { printf "%d", s / 1024 }' <<<"$reads")
            md "| $r | $node | $n | $(tr '\n' ' ' <<<"$reads" | sed 's/ $//;s/ /, /g') | $total | $before / $cached | $wall |"
        done
    done
    md "" "Image size: $size bytes ($((size >> 10)) KiB)."
    rm -f "$BIG"
fi

md "" "Load after: $(cut -d' ' -f1-3 /proc/loadavg)."
if ((NFAIL)); then
    md "" "## Failures" ""
    cat "$FAILS" >>"$REPORT"
fi
cat "$REPORT"
((NFAIL == 0))
