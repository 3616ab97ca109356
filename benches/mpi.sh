#!/usr/bin/env bash
# benches/mpi.sh - MPI in the container against MPI on the host, under the test Slurm, and
# write docs/performance-mpi.md.
#
# Usage (as root, on Debian 12):  benches/mpi.sh [--quick] [--no-build] [--output FILE]
#   --quick       one round, fewer iterations (a smoke check)
#   --no-build    do not run `cargo build --release`; use the existing release binary
#   --output FILE write the report there instead of docs/performance-mpi.md
#
# Environment: LAUNCHER_TEST_USER (an existing unprivileged user to measure as; default:
# create/reuse `launcher-bench`), LAUNCHER_BENCH_ROUNDS (ping-pong rounds, default 9),
# LAUNCHER_BENCH_REPS (timed repetitions per size in one ping-pong run, the fastest counts;
# default 5),
# LAUNCHER_BENCH_START_RUNS (hyperfine runs per start-up row, default 10),
# LAUNCHER_FIXTURES / LAUNCHER_MPI_FIXTURES (where tests/setup-mpi.sh puts the MPI images),
# CARGO_TARGET_DIR (honoured by the build).
#
# What it does: builds the MPI images and host programs (tests/setup-mpi.sh), starts the test
# Slurm (slurm/test-cluster/start.sh), then, as the unprivileged user:
#  1. ping-pong between 2 ranks of Open MPI under `srun --mpi=pmix`, 1 B to 4 MiB: the host's
#     program natively (twice: the second run is an A/A control that shows the noise floor; and
#     without CMA), the same program in the Open MPI image through the
#     launcher in its default shared mode (one instance per node, CMA on) and with --no-share (CMA
#     off, as it must be then), and through Charliecloud's ch-run (CMA off); rounds interleaved,
#     container/native ratios taken within each round, their median over rounds reported;
#  2. start-up of N = 1, 2, 8, 32 ranks on one node (`srun --overcommit -n N`), of `true` and of
#     an MPI hello (MPI_Init + gather + MPI_Finalize), natively and in the container, shared and
#     --no-share (hyperfine).
# Each ping-pong run has a time limit; a run that fails or hangs is recorded and left out.

set -uo pipefail
umask 022
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="benches/mpi.sh${*:+ $*}"
QUICK=0
BUILD=1
OUTPUT="$ROOT/docs/performance-mpi.md"
while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --output) OUTPUT=$2; shift ;;
        -h | --help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "mpi.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
((EUID == 0)) || { echo "mpi.sh: must run as root (it starts Slurm and builds images)" >&2; exit 2; }

if ((QUICK)); then
    MODE=quick; ROUNDS=1; PP_ITERS=200; PP_REPS=2; START_RUNS=3; NS=(1 2 8)
else
    MODE=full; ROUNDS=9; PP_ITERS=1000; PP_REPS=5; START_RUNS=10; NS=(1 2 8 32)
fi
ROUNDS=${LAUNCHER_BENCH_ROUNDS:-$ROUNDS}
PP_REPS=${LAUNCHER_BENCH_REPS:-$PP_REPS}
START_RUNS=${LAUNCHER_BENCH_START_RUNS:-$START_RUNS}
PP_TIMEOUT=300 # seconds per ping-pong run (large messages hang when single-copy fails)
SCRATCH=${LAUNCHER_BENCH_DIR:-/var/tmp/launcher-bench}/mpi
T_START=$(date +%s)
LOAD_START=$(uptime | sed 's/^ *//')

log() { printf '[mpi.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPORT=$(mktemp)
FAILS=$(mktemp)
SUMMARY=$(mktemp)
NFAIL=0
trap 'rm -f "$REPORT" "$FAILS" "$SUMMARY"' EXIT

# ---------------------------------------------------------------- tools, user, images, cluster
need_pkgs=()
command -v hyperfine >/dev/null || need_pkgs+=(hyperfine)
command -v ch-run >/dev/null || need_pkgs+=(charliecloud)
command -v jq >/dev/null || need_pkgs+=(jq)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null; } ||
        { echo "mpi.sh: apt-get install ${need_pkgs[*]} failed" >&2; exit 1; }
fi
if [[ -n ${LAUNCHER_TEST_USER:-} ]]; then
    pw=$(getent passwd "$LAUNCHER_TEST_USER") ||
        { echo "mpi.sh: LAUNCHER_TEST_USER='$LAUNCHER_TEST_USER' is not a user" >&2; exit 1; }
else
    getent passwd launcher-bench >/dev/null || useradd --create-home --shell /bin/sh launcher-bench
    pw=$(getent passwd launcher-bench)
fi
IFS=: read -r U_NAME _ U_UID U_GID _ U_HOME _ <<<"$pw"
((U_UID != 0)) || { echo "mpi.sh: the measuring user must not be root" >&2; exit 1; }
chmod 0666 /dev/fuse

log "MPI images (tests/setup-mpi.sh)"
bash "$ROOT/tests/setup-mpi.sh" >&2 || { echo "mpi.sh: tests/setup-mpi.sh failed" >&2; exit 1; }
MPI=${LAUNCHER_MPI_FIXTURES:-${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}-mpi}
log "test Slurm (slurm/test-cluster/start.sh)"
bash "$ROOT/slurm/test-cluster/start.sh" >&2 || { echo "mpi.sh: the test Slurm did not start" >&2; exit 1; }
SLURM_CONF=${LAUNCHER_SLURM_DIR:-/var/tmp/launcher-slurm}/etc/slurm.conf

BUILD_NOTE="not built by this run (--no-build)"
((BUILD)) && build_launcher
mkdir -p "$SCRATCH"
chmod 0755 "$SCRATCH"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/launcher"
[[ -x $BIN ]] || { echo "mpi.sh: no launcher binary at $BIN" >&2; exit 1; }
LAUNCHER=$SCRATCH/launcher
install -m 0755 "$BIN" "$LAUNCHER"
RES=$SCRATCH/results
rm -rf "$RES"
mkdir -p "$RES"
chown "$U_UID:$U_GID" "$RES"
LAUNCHER_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- . ':!benches' ':!docs' 2>/dev/null || LAUNCHER_REV="$LAUNCHER_REV (with uncommitted changes)"

# As the user, with a small fixed environment; the run's directory is the results dir.
ASU_A=(setpriv --reuid="$U_UID" --regid="$U_GID" --clear-groups
    env -i "HOME=$U_HOME" "USER=$U_NAME" "LOGNAME=$U_NAME" PATH=/usr/local/bin:/usr/bin:/bin
    "SLURM_CONF=$SLURM_CONF")
ASU="${ASU_A[*]}"
# The launcher's ranks share one instance (one user namespace) per node by default, and Open
# MPI's CMA single copy works between them. With --no-share, and in ch-run, each rank has its
# own user namespace, CMA between them is refused (docs/slurm.md), and those rows turn it off;
# a native row with the same setting shows what that alone costs.
NOCMA=OMPI_MCA_btl_vader_single_copy_mechanism=none

OMPI_IMG=$MPI/openmpi.sqfs
declare -A PP_CMD=(
    [native]="srun --mpi=pmix -n 2 $MPI/host/openmpi/pingpong"
    [native-again]="srun --mpi=pmix -n 2 $MPI/host/openmpi/pingpong"
    [native-nocma]="env $NOCMA srun --mpi=pmix -n 2 $MPI/host/openmpi/pingpong"
    [shared]="srun --mpi=pmix -n 2 $LAUNCHER exec $OMPI_IMG pingpong"
    [no-share]="env $NOCMA srun --mpi=pmix -n 2 $LAUNCHER exec --no-share $OMPI_IMG pingpong"
    [ch-run]="env $NOCMA srun --mpi=pmix -n 2 ch-run $OMPI_IMG -- /usr/local/bin/pingpong"
)
PP_ORDER=(native native-again native-nocma shared no-share ch-run)

# ---------------------------------------------------------------- 1. ping-pong
log "ping-pong: $ROUNDS round(s) of ${PP_ORDER[*]}"
# One discarded run first: the first srun after a quiet spell runs slower (seen: 2x at every size).
# shellcheck disable=SC2086  # split on purpose
(cd "$RES" && timeout -k 10 "$PP_TIMEOUT" "${ASU_A[@]}" ${PP_CMD[native]} --iters "$PP_ITERS" >/dev/null 2>&1)
for round in $(seq 1 "$ROUNDS"); do
    # The order rotates from round to round, and every other round runs backwards, so that no
    # configuration always runs first, nor always after the same one.
    k=$(((round - 1) % ${#PP_ORDER[@]}))
    order=("${PP_ORDER[@]:k}" "${PP_ORDER[@]:0:k}")
    if ((round % 2 == 0)); then
        for ((a = 0, b = ${#order[@]} - 1; a < b; a++, b--)); do
            t=${order[a]} order[a]=${order[b]} order[b]=$t
        done
    fi
    for cfg in "${order[@]}"; do
        out="$RES/pp.$cfg.$round.txt"
        cmd="${PP_CMD[$cfg]} --iters $PP_ITERS --reps $PP_REPS"
        log "  round $round: $cfg"
        # shellcheck disable=SC2086  # the command line is split on purpose
        (cd "$RES" && timeout -k 10 "$PP_TIMEOUT" "${ASU_A[@]}" $cmd >"$out" 2>"$out.err")
        rc=$?
        if ((rc != 0)) || ! grep -q 'bytes=4194304' "$out" ||
            grep -q 'single_copy_mechanism CMA is' "$out.err"; then
            fail "ping-pong $cfg (round $round)" "$cmd" "$rc" "$(tail -n 20 "$out" "$out.err")"
            rm -f "$out"
        fi
    done
done

# median FILES... : per message size, the median latency (us) over the rounds' outputs.
median_lat() {
    awk '/^pingpong bytes=/ {
            split($2, b, "="); split($4, l, "=");
            v[b[2]] = v[b[2]] " " l[2]
         }
         END { for (s in v) print s, v[s] }' "$@" |
        while read -r size vals; do
            printf '%s %s\n' "$size" "$(tr ' ' '\n' <<<"$vals" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
        done | sort -n
}
# speed_ratios BASE ROW: per message size, BASE latency / ROW latency taken within each round
# (the two ran one after the other there, under the same load); then the median over rounds
# and a distribution-free interval for it: order statistics k and n+1-k of the n ratios, with
# k the largest that keeps the interval's coverage at least 95% (binomial, p = 1/2; with fewer
# than 6 rounds, k = 1 and the coverage is lower: 1 - 2^(1-n)). Prints: size median low high.
speed_ratios() {
    local r f g
    for r in $(seq 1 "$ROUNDS"); do
        f="$RES/pp.$1.$r.txt" g="$RES/pp.$2.$r.txt"
        [[ -e $f && -e $g ]] || continue
        awk 'FNR == NR && /^pingpong bytes=/ { split($2, b, "="); split($4, l, "="); a[b[2]] = l[2]; next }
             /^pingpong bytes=/ { split($2, b, "="); split($4, l, "=");
                                  if ((b[2] in a) && l[2] > 0) printf "%s %.6f\n", b[2], a[b[2]] / l[2] }' "$f" "$g"
    done | sort -k1,1n -k2,2g |
        awk '{ v[$1] = v[$1] " " $2 }
             END {
                 for (s in v) {
                     n = split(substr(v[s], 2), x, " ")
                     # k: P(Binomial(n, 1/2) <= k - 1) <= 0.025, at least 1.
                     k = 1; c = 0; p = 1
                     for (i = 0; i < n; i++) p /= 2
                     term = p
                     for (j = 0; j < n; j++) {
                         c += term
                         if (c > 0.025) break
                         k = j + 1
                         term = term * (n - j) / (j + 1)
                     }
                     if (k > int((n + 1) / 2)) k = int((n + 1) / 2)
                     printf "%s %.2f %.2f %.2f\n", s, x[int((n + 1) / 2)], x[k], x[n + 1 - k]
                 }
             }' |
        sort -n
}
declare -A SPEED LOW HIGH
for pair in native:native-again native:shared native:no-share native-nocma:no-share native:ch-run; do
    while read -r size r lo hi; do
        SPEED[$pair,$size]=$r LOW[$pair,$size]=$lo HIGH[$pair,$size]=$hi
    done < <(speed_ratios "${pair%%:*}" "${pair#*:}")
done
declare -A LAT FASTEST
for cfg in "${PP_ORDER[@]}"; do
    files=("$RES"/pp."$cfg".*.txt)
    [[ -e ${files[0]} ]] || continue
    while read -r size lat; do LAT[$cfg,$size]=$lat; done < <(median_lat "${files[@]}")
    # The fastest over rounds: the machine swings between states (seen: 25 us or 80 us for
    # 128 KiB in any configuration), and the best a path reached is what it can do.
    while read -r size lat; do FASTEST[$cfg,$size]=$lat; done < <(
        awk '/^pingpong bytes=/ { split($2, b, "="); split($4, l, "=");
                                  if (!(b[2] in m) || l[2] < m[b[2]]) m[b[2]] = l[2] }
             END { for (s in m) print s, m[s] }' "${files[@]}")
done

# ---------------------------------------------------------------- 2. start-up
HF_JSON=$RES/startup.json
startup_rows=()
for n in "${NS[@]}"; do
    startup_rows+=(
        "N=$n true, native" "$ASU srun --overcommit -n $n true"
        "N=$n true, shared" "$ASU srun --overcommit -n $n $LAUNCHER exec $OMPI_IMG true"
        "N=$n true, no-share" "$ASU srun --overcommit -n $n $LAUNCHER exec --no-share $OMPI_IMG true"
        "N=$n MPI hello, native" "$ASU srun --overcommit --mpi=pmix -n $n $MPI/host/openmpi/hello"
        "N=$n MPI hello, shared" "$ASU srun --overcommit --mpi=pmix -n $n $LAUNCHER exec $OMPI_IMG hello"
        "N=$n MPI hello, no-share" "$ASU env $NOCMA srun --overcommit --mpi=pmix -n $n $LAUNCHER exec --no-share $OMPI_IMG hello"
    )
done
hf_args=()
for ((i = 0; i < ${#startup_rows[@]}; i += 2)); do
    hf_args+=(-n "${startup_rows[i]}" "${startup_rows[i + 1]}")
done
log "start-up: N = ${NS[*]} ranks (hyperfine, $START_RUNS runs each)"
if ! (cd "$RES" && timeout 1800 hyperfine -N --warmup 1 --runs "$START_RUNS" --export-json "$HF_JSON" \
    "${hf_args[@]}" >/dev/null 2>"$RES/startup.err"); then
    fail "start-up (hyperfine)" "hyperfine ... (see the table's commands)" 1 "$(tail -n 20 "$RES/startup.err")"
fi
hf_median() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .median' "$HF_JSON" 2>/dev/null; }

# ---------------------------------------------------------------- report
ratio() { # ratio A B: A/B with 2 decimals, or - when either is missing
    [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }' || echo -
}
fmt_us() { [[ -n ${1:-} ]] && printf '%s' "$1" || printf -- '-'; }

md "# MPI performance: container vs native" "" \
    "Written by \`$INVOCATION\` ($MODE mode) on $(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -r)," \
    "launcher $LAUNCHER_REV ($BUILD_NOTE). Load at start: $LOAD_START." \
    "Open MPI $(dpkg-query -W -f '${Version}' libopenmpi3 2>/dev/null), Slurm $(dpkg-query -W -f '${Version}' slurm-wlm 2>/dev/null)" \
    "(the test cluster of slurm/test-cluster, one node), Charliecloud $(dpkg-query -W -f '${Version}' charliecloud-runtime 2>/dev/null)." \
    "Everything runs as the unprivileged user \`$U_NAME\`." ""
md "## Ping-pong, 2 ranks on one node, \`srun --mpi=pmix\`" "" \
    "\`mpi-tests/pingpong.c\`: half the mean round trip over $PP_ITERS iterations ($((PP_ITERS / 10)) from 256 KiB)," \
    "the fastest of $PP_REPS timed repetitions in one run (a repetition that other work preempted is" \
    "slower, never faster); $ROUNDS round(s), configurations one after the other within a round, in" \
    "an order that rotates from round to round and runs backwards every other round, after one" \
    "discarded warm-up run." \
    "Latencies: the median over rounds. Ratios: taken within each round, then the median over" \
    "rounds (paired, so that a round's load affects both sides), with a distribution-free interval" \
    "for that median in brackets (order statistics, at least 95% coverage from 6 rounds on); a size" \
    "is shown below target only when its whole interval is. \"fastest\" columns: the fastest run" \
    "of one row over the fastest of the other (this machine swings between a fast and a slow state" \
    "in any configuration, and the best a path reached is what it can do). Rows:" "" \
    "- **native**: the host's program, Open MPI defaults (vader with CMA single copy);" \
    "- **native again**: the same command once more, an A/A control: how far native is from itself" \
    "  shows which differences this run can resolve at all;" \
    "- **native, no CMA**: the same with \`$NOCMA\`;" \
    "- **shared**: the same source built into the Open MPI image, \`launcher exec\` with its defaults:" \
    "  the two ranks share one instance (one user namespace, one FUSE server), and Open MPI's" \
    "  defaults, CMA on (a run whose ranks warn that CMA is not available is counted as failed);" \
    "- **--no-share**: \`launcher exec --no-share\`, a user namespace per rank, with \`$NOCMA\` (CMA" \
    "  between user namespaces is refused; see docs/slurm.md);" \
    "- **ch-run**: Charliecloud on the same image, also with \`$NOCMA\` (it too gives each rank its own" \
    "  namespace). It does not bind the PMIx server's directory under slurmd's spool: its ranks print" \
    "  \`PMIX ERROR ... gds_ds12_lock_pthread.c\` and run on." "" \
    "Ratios are speed relative to a native row (its latency / the row's latency): 1.00 is as fast" \
    "as native. The target is shared / native >= 0.98 for every size; --no-share is compared with" \
    "native without CMA too, which is what it runs. Two ranks busy-poll: on a node with few cores" \
    "that other work shares, single runs swing widely (compare the load figures and the A/A column)." ""
md "| bytes | native (us) | native again (us) | native, no CMA (us) | shared (us) | --no-share (us) | ch-run (us) | native again / native (A/A) | shared / native | fastest A/A | fastest shared / native | --no-share / native | --no-share / native no CMA | ch-run / native |" \
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
# worst_of VAR RATIO: keep the smaller ratio in VAR.
worst_of() {
    [[ -z ${2:-} || $2 == - ]] && return
    if [[ -z ${!1} ]] || awk -v a="$2" -v b="${!1}" 'BEGIN { exit !(a < b) }'; then
        printf -v "$1" '%s' "$2"
    fi
}
# far_from_1 R: |1 - R|
far_from_1() { awk -v r="$1" 'BEGIN { d = 1 - r; printf "%.2f", d < 0 ? -d : d }'; }
# sp PAIR / spi PAIR: the paired ratio at size $s, alone / with its interval; lt A B: A < B.
sp() { printf '%s' "${SPEED[$1,$s]:--}"; }
spi() { [[ -n ${SPEED[$1,$s]:-} ]] && printf '%s (%s-%s)' "${SPEED[$1,$s]}" "${LOW[$1,$s]}" "${HIGH[$1,$s]}" || printf -- '-'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
worst="" worst_large="" worst_ns="" worst_aa="" worst_fast="" worst_fast_aa="" below=() beyond_noise=()
surely_below=() aa_off=()
for i in $(seq 0 22); do
    s=$((1 << i))
    r=$(sp native:shared) aa=$(sp native:native-again)
    fr=$(ratio "${FASTEST[native,$s]:-}" "${FASTEST[shared,$s]:-}")
    faa=$(ratio "${FASTEST[native,$s]:-}" "${FASTEST[native-again,$s]:-}")
    md "| $s | $(fmt_us "${LAT[native,$s]:-}") | $(fmt_us "${LAT[native-again,$s]:-}") | $(fmt_us "${LAT[native-nocma,$s]:-}") | $(fmt_us "${LAT[shared,$s]:-}") | $(fmt_us "${LAT[no-share,$s]:-}") | $(fmt_us "${LAT[ch-run,$s]:-}") | $(spi native:native-again) | $(spi native:shared) | $faa | $fr | $(sp native:no-share) | $(sp native-nocma:no-share) | $(sp native:ch-run) |"
    worst_of worst "$r"
    worst_of worst_aa "$aa"
    worst_of worst_fast "$fr"
    worst_of worst_fast_aa "$faa"
    ((s >= 65536)) && worst_of worst_large "$r"
    worst_of worst_ns "$(sp native-nocma:no-share)"
    [[ -n ${HIGH[native:shared,$s]:-} ]] && lt "${HIGH[native:shared,$s]}" 0.98 && surely_below+=("$s")
    [[ -n ${HIGH[native:native-again,$s]:-} ]] &&
        { lt "${HIGH[native:native-again,$s]}" 1 || lt 1 "${LOW[native:native-again,$s]}"; } && aa_off+=("$s")
    if [[ $r != - ]] && lt "$r" 0.98; then
        below+=("$s")
        # Below target by more than native differs from itself at this size.
        [[ $aa != - ]] && awk -v d="$(far_from_1 "$r")" -v e="$(far_from_1 "$aa")" 'BEGIN { exit !(d > e) }' &&
            beyond_noise+=("$s")
    fi
done
md "" "Bandwidth is bytes / latency: its ratios are the latency ratios of the same row." ""
verdict() { [[ -n ${1:-} ]] && awk -v a="$1" 'BEGIN { exit !(a >= 0.98) }' && echo met || echo "not met"; }
summary "ping-pong speed, shared / native, worst size" "${worst:--}" "" ">= 0.98" "$(verdict "$worst")"
summary "ping-pong sizes with shared / native below 0.98" "${#below[@]} of 23" "${below[*]:-none}" "0" "-"
summary "... of which further from 1 than native again / native (A/A) at that size" "${#beyond_noise[@]}" "${beyond_noise[*]:-none}" "0" "$( ((${#beyond_noise[@]} == 0)) && echo "within noise" || echo "beyond noise")"
summary "ping-pong A/A control, native again / native, worst size" "${worst_aa:--}" "" "(noise floor)" "-"
# The intervals hold only if rounds are independent. The A/A control checks that: by chance,
# more than 3 of 23 of its intervals exclude 1 with probability about 3%.
if ((${#aa_off[@]} > 3)); then
    interval_verdict="no verdict: the A/A control fails (rounds not independent here)"
elif ((${#surely_below[@]} == 0)); then
    interval_verdict="no size shown below"
else
    interval_verdict="below at some sizes"
fi
summary "ping-pong A/A control: sizes whose native again / native interval excludes 1" "${#aa_off[@]} of 23" "${aa_off[*]:-none}" "at most 3 (chance)" "$( ((${#aa_off[@]} > 3)) && echo "fails" || echo "passes")"
summary "ping-pong sizes whose shared / native interval lies wholly below 0.98" "${#surely_below[@]} of 23" "${surely_below[*]:-none}" "0" "$interval_verdict"
summary "ping-pong speed, fastest shared / fastest native (over rounds), worst size" "${worst_fast:--}" "" ">= 0.98" "$(verdict "$worst_fast")"
summary "ping-pong A/A control, fastest native again / fastest native, worst size" "${worst_fast_aa:--}" "" "(noise floor)" "-"
summary "ping-pong speed, shared / native, worst size >= 64 KiB (CMA)" "${worst_large:--}" "" ">= 0.98" "$(verdict "$worst_large")"
summary "ping-pong speed, --no-share / native no CMA, worst size" "${worst_ns:--}" "" "(reference)" "-"

md "## Start-up of N ranks on one node" "" \
    "\`srun --overcommit -n N\` of \`true\` and of \`mpi-tests/hello.c\` (MPI_Init, a gather, MPI_Finalize)," \
    "natively and through the launcher (Open MPI image, \`--mpi=pmix\` for hello), shared (the default:" \
    "the first rank of the node mounts the image, the others join its namespaces) and \`--no-share\`" \
    "(a user namespace, mount and FUSE server per rank; hello with \`$NOCMA\`); hyperfine median of" \
    "$START_RUNS runs after a warm-up, in seconds, including srun's own cost. \"+\" columns: the" \
    "launcher's addition over native." "" \
    "| N | true native | true shared | + shared | true --no-share | + --no-share | hello native | hello shared | + shared | hello --no-share | + --no-share |" \
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
f() { [[ -n ${1:-} ]] && printf '%.3f' "$1" || printf -- '-'; }
minus() { [[ -n ${1:-} && -n ${2:-} ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }' || echo -; }
declare -A ADD
for n in "${NS[@]}"; do
    tn=$(hf_median "N=$n true, native"); ts=$(hf_median "N=$n true, shared"); tp=$(hf_median "N=$n true, no-share")
    hn=$(hf_median "N=$n MPI hello, native"); hs=$(hf_median "N=$n MPI hello, shared"); hp=$(hf_median "N=$n MPI hello, no-share")
    ADD[true,shared,$n]=$(minus "$ts" "$tn"); ADD[true,no-share,$n]=$(minus "$tp" "$tn")
    ADD[hello,shared,$n]=$(minus "$hs" "$hn"); ADD[hello,no-share,$n]=$(minus "$hp" "$hn")
    md "| $n | $(f "$tn") | $(f "$ts") | ${ADD[true,shared,$n]} | $(f "$tp") | ${ADD[true,no-share,$n]} | $(f "$hn") | $(f "$hs") | ${ADD[hello,shared,$n]} | $(f "$hp") | ${ADD[hello,no-share,$n]} |"
done
first=${NS[0]}
last=${NS[${#NS[@]} - 1]}
md "" "Target: the launcher's added start-up per node flat from 1 to 32 ranks (the \"+\" columns should" \
    "not grow with N). On a node with fewer cores than ranks, every rank's launch costs CPU time that" \
    "the ranks queue for, so even the shared rows grow somewhat with N there." ""
for what in true hello; do
    for mode in shared no-share; do
        a=${ADD[$what,$mode,$first]:-} b=${ADD[$what,$mode,$last]:-}
        grow=$([[ $a != - && $b != - && -n $a && -n $b ]] && minus "$b" "$a" || echo -)
        summary "start-up of $what, launcher's addition, $mode: N=$last minus N=$first (s)" "$grow" "" "flat (about 0)" "-"
    done
done

{
    printf '\n## Summary\n\n| measure | value | | target | verdict |\n|---|---:|---|---|---|\n'
    cat "$SUMMARY"
    printf '\n## Failures\n\n'
    if ((NFAIL)); then cat "$FAILS"; else printf 'None.\n'; fi
    printf '\nRun time %d s; load at end: %s.\n' "$(($(date +%s) - T_START))" "$(uptime | sed 's/^ *//')"
} >>"$REPORT"
cp "$REPORT" "$OUTPUT"
log "wrote $OUTPUT ($NFAIL failure(s))"
