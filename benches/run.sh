#!/usr/bin/env bash
# benches/run.sh - measure the launcher against Charliecloud's ch-run and the kernel's squashfs,
# and write docs/performance.md.
#
# Usage (as root, on Debian 12):  benches/run.sh [--quick] [--no-build] [--rebuild-images] [--build]
#   --quick           fewer runs and smaller images (smoke check, a few minutes)
#   --no-build        do not run `cargo build --release`; use the existing target/release/launcher
#   --rebuild-images  rebuild the test images even if an up-to-date copy is in the scratch dir
#   --output FILE     write the report there instead of docs/performance.md
#   --build           then run benches/build.sh (launcher build vs mksquashfs, its own report)
#   --baseline BIN    an older launcher binary: section 6 then checks, paired, that start-up and
#                     find + cat with none of the newer features used are no slower than BIN's
#
# Environment: LAUNCHER_TEST_USER (name or uid of an existing unprivileged user to measure as;
# default: create/reuse `launcher-bench`), LAUNCHER_BENCH_DIR (scratch dir, default
# /var/tmp/launcher-bench), LAUNCHER_BENCH_ROUNDS (hyperfine invocations per table; default 3,
# 1 with --quick), CARGO_TARGET_DIR (honoured by the build).
#
# What it does: installs its tools with apt-get, creates the unprivileged user, makes /dev/fuse
# 0666, builds the launcher, builds SquashFS test images from a busybox-static root file system,
# then runs every measured command AS THE UNPRIVILEGED USER with hyperfine. Where a ratio is
# reported, all compared commands are in one hyperfine invocation (same conditions); cold runs
# drop the page cache (root) before each timed run. A failing command is recorded in the report
# and left out of its table; the script goes on.

set -uo pipefail
umask 022
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="benches/run.sh${*:+ $*}"
QUICK=0
BUILD=1
REBUILD_IMAGES=0
OUTPUT="$ROOT/docs/performance.md"
RUN_BUILD=0
BASELINE=""
while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --rebuild-images) REBUILD_IMAGES=1 ;;
        --output) OUTPUT=$2; shift ;;
        --build) RUN_BUILD=1 ;;
        --baseline) BASELINE=$2; shift ;;
        -h | --help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if ((EUID != 0)); then
    echo "run.sh: must run as root (it installs packages, drops caches and loop-mounts images)" >&2
    exit 2
fi

SCRATCH=${LAUNCHER_BENCH_DIR:-/var/tmp/launcher-bench}
IMG=$SCRATCH/images
RES=$SCRATCH/results
KMNT=/mnt/launcher-bench
LAUNCHER=$SCRATCH/bin/launcher
T_START=$(date +%s)
LOAD_START=$(uptime | sed 's/^ *//')

if ((QUICK)); then
    MODE=quick
    BIG_MB=200      # image (b)
    MANY_FILES=20000 # image (c)
    START_WARMUP=3; START_RUNS=15
    COLD_WARMUP=1; COLD_RUNS=3
    WARM_WARMUP=2; WARM_RUNS=5
    RSS_RUNS=1
    ROUNDS=1
    PAIRED_ROUNDS=8  # section 6 (paired.py rounds; the Python import's are half of these)
else
    MODE=full
    BIG_MB=1024
    MANY_FILES=100000
    START_WARMUP=5; START_RUNS=60
    COLD_WARMUP=1; COLD_RUNS=12
    WARM_WARMUP=3; WARM_RUNS=20
    RSS_RUNS=3
    ROUNDS=3
    PAIRED_ROUNDS=40
fi
ROUNDS=${LAUNCHER_BENCH_ROUNDS:-$ROUNDS} # hyperfine invocations per table
SMALL_FILES=2000      # image (d): 20 dirs x 100 files of 4 KiB
A_MB=50               # image (a)
HF_TIMEOUT=300        # seconds, per hyperfine invocation (a hang is recorded as a failure)
PROBE_TIMEOUT=180     # seconds, per single probe run

log() { printf '[run.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- report accumulation
REPORT=$(mktemp)
FAILS=$(mktemp)
SUMMARY=$(mktemp)
NFAIL=0
cleanup() {
    local m
    for m in "$KMNT"/a "$KMNT"/d; do
        mountpoint -q "$m" 2>/dev/null && umount "$m"
    done
    rm -f "$REPORT" "$FAILS" "$SUMMARY"
}
trap cleanup EXIT




# ---------------------------------------------------------------- 1. packages
need_pkgs=()
command -v hyperfine >/dev/null || need_pkgs+=(hyperfine)
command -v ch-run >/dev/null || need_pkgs+=(charliecloud)
command -v mksquashfs >/dev/null || need_pkgs+=(squashfs-tools)
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
[[ -x /usr/bin/time ]] || need_pkgs+=(time)
command -v jq >/dev/null || need_pkgs+=(jq)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v setpriv >/dev/null || need_pkgs+=(util-linux)
command -v cc >/dev/null || need_pkgs+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null; then
        if ! { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null; }; then
            echo "run.sh: apt-get install ${need_pkgs[*]} failed" >&2
            exit 1
        fi
    fi
fi
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
    echo "run.sh: /bin/busybox is missing or not static (install busybox-static)" >&2
    exit 1
fi

# ---------------------------------------------------------------- 2. the unprivileged user
if [[ -n ${LAUNCHER_TEST_USER:-} ]]; then
    pw=$(getent passwd "$LAUNCHER_TEST_USER") ||
        { echo "run.sh: LAUNCHER_TEST_USER='$LAUNCHER_TEST_USER' is not a user" >&2; exit 1; }
else
    if ! getent passwd launcher-bench >/dev/null; then
        log "creating user launcher-bench"
        useradd --create-home --shell /bin/sh launcher-bench
    fi
    pw=$(getent passwd launcher-bench)
fi
IFS=: read -r U_NAME _ U_UID U_GID _ U_HOME _ <<<"$pw"
if ((U_UID == 0)); then
    echo "run.sh: the measuring user must not be root" >&2
    exit 1
fi
[[ -d $U_HOME ]] || { mkdir -p "$U_HOME" && chown "$U_UID:$U_GID" "$U_HOME"; }
# Prefix that runs a command as the user with a small, fixed environment (ch-run needs $USER):
# ASU_A as an argv prefix, ASU as text inside hyperfine command lines.
ASU_A=(setpriv --reuid="$U_UID" --regid="$U_GID" --clear-groups
    env -i "HOME=$U_HOME" "USER=$U_NAME" "LOGNAME=$U_NAME" PATH=/usr/local/bin:/usr/bin:/bin)
ASU="${ASU_A[*]}"

# ---------------------------------------------------------------- 3. /dev/fuse
chmod 0666 /dev/fuse

# ---------------------------------------------------------------- 4. build
mkdir -p "$SCRATCH/bin" "$IMG" "$RES"
chmod 0755 "$SCRATCH" "$SCRATCH/bin" "$IMG"
chown "$U_UID:$U_GID" "$RES"
BUILD_NOTE="not built by this run (--no-build)"
if ((BUILD)); then
    build_launcher
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/launcher"
if [[ -x $BIN ]]; then
    install -m 0755 "$BIN" "$LAUNCHER"
else
    fail "find the launcher binary" "test -x $BIN" 1 "no binary at $BIN"
    rm -f "$LAUNCHER"
fi
LAUNCHER_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- . ':!benches' ':!docs' 2>/dev/null || LAUNCHER_REV="$LAUNCHER_REV (with uncommitted changes)"

# ---------------------------------------------------------------- 5. images
mk_rootfs() {
    local r=$1 a
    chmod 0755 "$r" # mktemp -d made it 0700: it becomes the image's root directory
    mkdir -p "$r"/{bin,dev,proc,sys,tmp,home,etc,mnt,root,var/tmp,data,usr/bin}
    cp /bin/busybox "$r/bin/busybox"
    for a in sh true false cat find ls sha256sum xargs wc env echo sleep head id; do
        ln -s busybox "$r/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    : >"$r/etc/hosts"
    : >"$r/etc/resolv.conf"
    chmod 1777 "$r/tmp" "$r/var/tmp"
}

IMAGE_BUILD_S=0
# build_image NAME COMP SPEC FILLER: image $IMG/NAME.sqfs from a rootfs that FILLER (a function,
# given the rootfs dir) populates; kept as long as SPEC is unchanged.
build_image() {
    local name=$1 comp=$2 spec=$3 filler=$4 out="$IMG/$1.sqfs" t0 src
    if ((!REBUILD_IMAGES)) && [[ -f $out && -f $out.spec && $(cat "$out.spec") == "$spec" ]]; then
        log "image $name: up to date"
        return 0
    fi
    log "image $name: building ($spec)"
    t0=$(date +%s)
    src=$(mktemp -d "$SCRATCH/rootfs.XXXXXX")
    mk_rootfs "$src"
    "$filler" "$src"
    rm -f "$out" "$out.spec"
    if mksquashfs "$src" "$out.tmp" -noappend -comp "$comp" -all-root -no-progress -quiet >"$SCRATCH/mksquashfs.log" 2>&1; then
        mv "$out.tmp" "$out"
        chmod 0644 "$out"
        printf '%s' "$spec" >"$out.spec"
    else
        fail "mksquashfs $name" "mksquashfs $src $out -comp $comp -all-root" 1 "$(tail -n 20 "$SCRATCH/mksquashfs.log")"
    fi
    rm -rf "$src"
    IMAGE_BUILD_S=$((IMAGE_BUILD_S + $(date +%s) - t0))
}

fill_a() { rand_bytes $((A_MB * 1048576)) image-a >"$1/data/big50"; }
fill_b() {
    local i
    mkdir -p "$1/data/big"
    for i in 0 1 2 3 4 5 6 7; do
        rand_bytes $((BIG_MB * 1048576 / 8)) "image-b-$i" >"$1/data/big/part-$i"
    done
}
fill_c() { # MANY_FILES files of 100 bytes: groups of 10 dirs x 1000 files
    local n=0 g d dir
    for ((g = 0; n < MANY_FILES; g++)); do
        for ((d = 0; d < 10 && n < MANY_FILES; d++)); do
            dir="$1/data/many/g$g/d$d"
            mkdir -p "$dir"
            rand_bytes 100000 "image-c-$g-$d" | split -b 100 -a 3 -d - "$dir/f"
            n=$((n + 1000))
        done
    done
}
fill_d() { # 2,000 files of 4 KiB in 20 dirs
    local d
    for ((d = 0; d < SMALL_FILES / 100; d++)); do
        mkdir -p "$1/data/small/d$d"
        rand_bytes $((100 * 4096)) "image-d-$d" | split -b 4096 -a 2 -d - "$1/data/small/d$d/f"
    done
}

BB_SUM=$(sha256sum /bin/busybox | cut -c1-16)
IMG_A=a-${A_MB}M
IMG_B=b-${BIG_MB}M
IMG_C=c-${MANY_FILES}files
IMG_D=d-${SMALL_FILES}files
build_image "$IMG_A-gzip" gzip "v2 busybox=$BB_SUM a=$A_MB" fill_a
build_image "$IMG_A-zstd" zstd "v2 busybox=$BB_SUM a=$A_MB" fill_a
build_image "$IMG_B-gzip" gzip "v2 busybox=$BB_SUM b=$BIG_MB" fill_b
build_image "$IMG_C-gzip" gzip "v2 busybox=$BB_SUM c=$MANY_FILES" fill_c
build_image "$IMG_D-gzip" gzip "v2 busybox=$BB_SUM d=$SMALL_FILES" fill_d
A_SHA=$(rand_bytes $((A_MB * 1048576)) image-a | sha256sum | cut -d' ' -f1)

# ---------------------------------------------------------------- 6. kernel mounts, drop_caches
KERNEL_OK=1
mkdir -p "$KMNT/a" "$KMNT/d"
for pair in "a:$IMG_A-gzip" "d:$IMG_D-gzip"; do
    m=$KMNT/${pair%%:*}
    mountpoint -q "$m" && umount "$m"
    rc=0
    out=$(mount -t squashfs -o loop,ro "$IMG/${pair#*:}.sqfs" "$m" 2>&1) || rc=$?
    if ((rc != 0)); then
        fail "kernel squashfs loop mount (kernel rows are left out)" \
            "mount -t squashfs -o loop,ro $IMG/${pair#*:}.sqfs $m" "$rc" "$out"
        KERNEL_OK=0
    fi
done

DROP=$SCRATCH/drop-caches.sh
printf '#!/bin/sh\nsync\necho 3 > /proc/sys/vm/drop_caches\n' >"$DROP"
chmod 0755 "$DROP"
COLD_NOTE="page cache, dentries and inodes dropped (\`$DROP\`: sync; echo 3 > /proc/sys/vm/drop_caches) before every timed run"
if ! out=$("$DROP" 2>&1); then
    fail "drop caches (cold rows are NOT cold)" "$DROP" 1 "$out"
    DROP=true
    COLD_NOTE="WARNING: could not drop caches, these runs are not cold"
fi

# ---------------------------------------------------------------- 7. measuring
cd "$U_HOME" || exit 1 # the launcher binds the cwd; make it the user's home, as in a job


# bench ID AS(user|root) COLD(0|1) WARMUP RUNS BASELINE -- NAME CMD [NAME CMD]...
# Probes each command once (as the user); failing ones are recorded and left out. Then $ROUNDS
# hyperfine invocations over the rest (each exported to $RES/ID.rN.json; every ratio is taken
# within one invocation, so the compared commands share its conditions), and a markdown table.
bench() {
    local id=$1 as=$2 cold=$3 warmup=$4 runs=$5 base=$6
    shift 7
    local names=() cmds=() name cmd out rc hf=() prefix="" r json
    [[ $as == root ]] || prefix="$ASU "
    while (($#)); do
        name=$1 cmd=$2
        shift 2
        rc=0
        out=$(timeout -k 5 "$PROBE_TIMEOUT" bash -c "exec $prefix$cmd" 2>&1 >/dev/null) || rc=$?
        if ((rc != 0)); then
            ((rc == 124 || rc == 137)) && out="(timed out after ${PROBE_TIMEOUT} s) $out"
            fail "$name" "$prefix$cmd" "$rc" "$out"
            md "- **$name** failed and is left out (see Failures): \`$cmd\`"
            continue
        fi
        names+=("$name")
        cmds+=("$cmd")
    done
    rm -f "$RES/$id".r*.json "$RES/$id".failed-r*.json
    if ((${#names[@]} == 0)); then
        md "" "_No command of this table ran._" ""
        return 0
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        json="$RES/$id.r$r.json"
        hf=(hyperfine -N --style basic --warmup "$warmup" --runs "$runs" --export-json "$json")
        ((cold)) && hf+=(--prepare "$DROP")
        local i
        for i in "${!names[@]}"; do hf+=(-n "${names[$i]}" "${cmds[$i]}"); done
        [[ $as == user ]] && hf=("${ASU_A[@]}" "${hf[@]}")
        log "hyperfine: $id round $r/$ROUNDS (${#names[@]} commands, $runs runs each)"
        rc=0
        out=$(timeout -k 10 "$HF_TIMEOUT" "${hf[@]}" 2>&1) || rc=$?
        if ((rc == 124 || rc == 137)); then
            fail "hyperfine $id round $r: timed out after $HF_TIMEOUT s (a run hung?); no more rounds" \
                "$(fmt_cmd "${hf[@]}")" "$rc" "$(tail -n 15 <<<"$out")"
            break
        elif ((rc != 0)); then
            # A round in which a run failed is left out of every median, ratio and verdict
            # (its json is not kept under the name the tables read). It is rerun with
            # --ignore-failure only to record how many runs fail, in a json set aside.
            local a hf2=() aside="$RES/$id.failed-r$r.json" nfail
            for a in "${hf[@]}"; do
                [[ $a == "$json" ]] && a=$aside
                hf2+=("$a")
                [[ $a == -N ]] && hf2+=(-i)
            done
            rm -f "$json" "$aside"
            timeout -k 10 "$HF_TIMEOUT" "${hf2[@]}" >/dev/null 2>&1
            nfail=$(jq '[.results[] | "\(.command): \([.exit_codes[] | select(. != 0)] | length) of \(.exit_codes | length)"] | join(", ")' \
                "$aside" 2>/dev/null || echo '"no result"')
            fail "hyperfine $id round $r: a run failed; the round is left out of the results (failed runs on a rerun with --ignore-failure: $nfail)" \
                "$(fmt_cmd "${hf[@]}")" "$rc" "$(tail -n 15 <<<"$out")"
            md "- round $r of this table is left out: a run failed (see Failures)"
        fi
    done
    if ! compgen -G "$RES/$id.r*.json" >/dev/null; then
        md "" "_hyperfine produced no results (see Failures)._" ""
        return 0
    fi
    md "" "| Case | Median | Per-round medians | Min | Max | Runs | Median / \`$base\` |" \
        "|---|---:|---:|---:|---:|---:|---:|"
    # shellcheck disable=SC2016
    jq -rs --arg base "$base" "$JQ_LIB"'
        [.[] | .results] as $rounds
        | $rounds[0][].command as $n
        | [$rounds[] | map(select(.command == $n)) | first | select(.)] as $rs
        | "| \($n) | \([$rs[].median] | med | ms) | \([$rs[].median | ms] | join(", ")) | \(
            [$rs[].min] | min | ms) | \([$rs[].max] | max | ms) | \([$rs[].times | length] | add)\(
            ([$rs[].exit_codes[] | select(. != 0)] | length) as $bad
            | if $bad > 0 then " (\($bad) failed)" else "" end) | \(
            [$rounds[] | round_ratio($n; $base)] as $q
            | if ($q | length) > 0 then "\($q | med | r2)×" else "n/a" end) |"' "$RES/$id".r*.json >>"$REPORT"
    md "" "<details><summary>exact hyperfine command (run $ROUNDS time(s), json .r1, .r2, ...)</summary>" "" \
        '```' "$(fmt_cmd "${hf[@]}")" '```' "" "</details>" ""
}

# jq helpers: med (median of numbers), ms (seconds as text), r2 (2 decimals),
# round_ratio(N; D): within one round's results, median of N / median of D.
# shellcheck disable=SC2016
JQ_LIB='
    def med: sort | if length == 0 then null
        elif length % 2 == 1 then .[(length - 1) / 2]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def ms: (. * 1000) as $x | if $x >= 100 then ($x | round | tostring)
        elif $x >= 10 then (($x * 10 | round) / 10 | tostring)
        else (($x * 100 | round) / 100 | tostring) end + " ms";
    def r2: (. * 100 | round) as $c
        | "\($c / 100 | floor).\($c % 100 | if . < 10 then "0\(.)" else tostring end)";
    def round_ratio($n; $d): ([.[] | select(.command == $n) | .median] | first) as $a
        | ([.[] | select(.command == $d) | .median] | first) as $b
        | if $a and $b then $a / $b else empty end;
'

# verdict_of R OP TARGET: "met" or "MISSED" for the ratio R against "<= TARGET" or "~ TARGET"
# (within 2 - TARGET .. TARGET); "(no target)" for any other OP. target_shown OP TARGET: the
# target as the report writes it.
verdict_of() {
    case $2 in
        "<=") awk -v r="$1" -v t="$3" 'BEGIN { print (r <= t) ? "met" : "MISSED" }' ;;
        "~") awk -v r="$1" -v t="$3" 'BEGIN { print (r >= 2 - t && r <= t) ? "met" : "MISSED" }' ;;
        *) echo "(no target)" ;;
    esac
}
target_shown() {
    case $1 in
        "~") echo "≈ 1.0 (within $(awk -v t="$2" 'BEGIN { printf "%.2f-%.2f", 2 - t, t }'))" ;;
        "-") echo "-" ;;
        *) echo "$1 $2" ;;
    esac
}

# ratio_line ID NUM DEN TARGET_OP TARGET LABEL: median NUM / median DEN within each round, the
# median of those over the rounds (and their range), a line in the report and in the summary.
ratio_line() {
    local id=$1 num=$2 den=$3 op=$4 tgt=$5 label=$6 r verdict all
    all=""
    if compgen -G "$RES/$id.r*.json" >/dev/null; then
        # shellcheck disable=SC2016
        all=$(jq -rs --arg n "$num" --arg d "$den" "$JQ_LIB"'
            [.[] | .results] as $rounds
            | [$rounds[] | round_ratio($n; $d)] | select(length > 0)
            | "\(med | r2) \(([$rounds[][] | select(.command == $n) | .min] | min) / ([$rounds[][] | select(.command == $d) | .min] | min) | r2) \(map(r2) | join(", "))"
            ' "$RES/$id".r*.json)
    fi
    if [[ -z $all ]]; then
        md "- $label: not available (a command failed)"
        summary "$label" "n/a" "-" "$op $tgt" "NOT MEASURED"
        return 0
    fi
    r=${all%% *}
    all=${all#* }
    local fast=${all%% *} per=${all#* }
    verdict=$(verdict_of "$r" "$op" "$tgt")
    local shown_t line
    shown_t=$(target_shown "$op" "$tgt")
    line="- **$label** = $r (median \`$num\` / median \`$den\`"
    ((ROUNDS > 1)) && line+="; per round: $per"
    line+="; fastest run / fastest run: $fast)"
    [[ $op == "-" ]] || line+="; target $shown_t: **$verdict**"
    md "$line"
    ((ROUNDS > 1)) && r="$r ($per)"
    summary "$label" "$r" "$fast" "$shown_t" "$verdict"
}

section() { # TITLE
    md "" "## $1" "" "Load before this section: \`$(uptime | sed 's/^ *//')\`" ""
    log "section: $1"
}

L=$LAUNCHER
IA="$IMG/$IMG_A-gzip.sqfs"
IZ="$IMG/$IMG_A-zstd.sqfs"
IB="$IMG/$IMG_B-gzip.sqfs"
IC="$IMG/$IMG_C-gzip.sqfs"
ID="$IMG/$IMG_D-gzip.sqfs"
FINDCAT="'find /data -type f | xargs cat > /dev/null'"
KFINDCAT="'find $KMNT/d/data -type f | xargs cat > /dev/null'"
KPATH="env PATH=$KMNT/d/bin"

# --- 1. start-up
section "1. Start-up: \`/bin/true\` in image (a), $A_MB MiB"
md "Image (a): busybox-static root + one $A_MB MiB file of incompressible data; \`mksquashfs -comp gzip\`" \
    "(Apptainer's default) and \`-comp zstd\`. Warm: the image file is in the host page cache." \
    "Charliecloud 0.31 syntax is \`ch-run IMG.sqfs -- CMD\` (it mounts the SquashFS in-process with" \
    "libsquashfuse; 0.31 has no \`-W\`, and \`-w\` does not apply to SquashFS). Hyperfine runs as the user."
bench startup user 0 "$START_WARMUP" "$START_RUNS" "ch-run (gzip)" -- \
    "native /bin/true" "/bin/true" \
    "ch-run (gzip)" "ch-run $IA -- /bin/true" \
    "launcher (gzip)" "$L exec $IA /bin/true" \
    "ch-run (zstd)" "ch-run $IZ -- /bin/true" \
    "launcher (zstd)" "$L exec $IZ /bin/true" \
    "launcher (zstd, no block cache)" "$L exec --fuse-no-block-cache $IZ /bin/true"
md "" "\`launcher\` rows are every launch after a node's first of the program (the warm-up runs fill" \
    "the block cache: docs/design.md \"The block cache\"); \`no block cache\` is a node's first launch."
ratio_line startup "launcher (gzip)" "ch-run (gzip)" "<=" 0.5 "start-up launcher / ch-run, gzip"
ratio_line startup "launcher (zstd)" "ch-run (zstd)" "<=" 0.5 "start-up launcher / ch-run, zstd"
ratio_line startup "launcher (zstd, no block cache)" "ch-run (zstd)" "-" "" "start-up launcher / ch-run, zstd, first launch (no block cache)"

# --- 2. flat in size and file count
section "2. Start-up flat in image size and file count"
md "Images: (a) $A_MB MiB, (b) $BIG_MB MiB in 8 files, (c) $MANY_FILES files of 100 bytes in nested" \
    "dirs; all gzip. \`/bin/true\`, warm. ch-run rows for reference."
bench flat user 0 "$START_WARMUP" "$START_RUNS" "launcher (a) ${A_MB}M" -- \
    "launcher (a) ${A_MB}M" "$L exec $IA /bin/true" \
    "launcher (b) ${BIG_MB}M" "$L exec $IB /bin/true" \
    "launcher (c) ${MANY_FILES} files" "$L exec $IC /bin/true" \
    "ch-run (a) ${A_MB}M" "ch-run $IA -- /bin/true" \
    "ch-run (b) ${BIG_MB}M" "ch-run $IB -- /bin/true" \
    "ch-run (c) ${MANY_FILES} files" "ch-run $IC -- /bin/true"
ratio_line flat "launcher (b) ${BIG_MB}M" "launcher (a) ${A_MB}M" "~" 1.1 "start-up launcher (b)/(a)"
ratio_line flat "launcher (c) ${MANY_FILES} files" "launcher (a) ${A_MB}M" "~" 1.1 "start-up launcher (c)/(a)"

# --- 3. find + cat
section "3. find + cat over $SMALL_FILES small files (image (d))"
md "Image (d): $SMALL_FILES files of 4 KiB in $((SMALL_FILES / 100)) dirs, gzip. Command:" \
    "\`/bin/sh -c 'find /data -type f | xargs cat > /dev/null'\` with the image's busybox; for the" \
    "kernel row the same busybox runs from a root loop mount (\`mount -t squashfs -o loop,ro\`) at" \
    "\`$KMNT/d\`. Measured commands run as the user (\`setpriv ... env -i ...\` prefix on every row)."
md "" "### Cold: $COLD_NOTE"
krow=()
((KERNEL_OK)) && krow=("kernel squashfs" "$ASU $KPATH $KMNT/d/bin/sh -c $KFINDCAT")
bench findcat-cold root 1 "$COLD_WARMUP" "$COLD_RUNS" "kernel squashfs" -- \
    "${krow[@]}" \
    "ch-run" "$ASU ch-run $ID -- /bin/sh -c $FINDCAT" \
    "launcher" "$ASU $L exec $ID /bin/sh -c $FINDCAT"
ratio_line findcat-cold launcher "kernel squashfs" "<=" 1.3 "find+cat cold launcher / kernel"
ratio_line findcat-cold launcher ch-run "-" "" "find+cat cold launcher / ch-run"
md "" "### Warm (image file, and for the kernel its page cache, cached)"
krow=()
((KERNEL_OK)) && krow=("kernel squashfs" "$KPATH $KMNT/d/bin/sh -c $KFINDCAT")
bench findcat-warm user 0 "$WARM_WARMUP" "$WARM_RUNS" "kernel squashfs" -- \
    "${krow[@]}" \
    "ch-run" "ch-run $ID -- /bin/sh -c $FINDCAT" \
    "launcher" "$L exec $ID /bin/sh -c $FINDCAT"
ratio_line findcat-warm launcher "kernel squashfs" "-" "" "find+cat warm launcher / kernel"
ratio_line findcat-warm launcher ch-run "-" "" "find+cat warm launcher / ch-run"

# --- 4. sequential read
section "4. Sequential read of a $A_MB MiB file (image (a), gzip)"
md "\`cat /data/big50\` (hyperfine sends stdout to /dev/null) with the image's busybox; kernel row:" \
    "\`$KMNT/a/bin/cat $KMNT/a/data/big50\`. Each launcher/ch-run run is a fresh FUSE mount, so" \
    "\"warm\" only means the image file is in the host page cache; the kernel mount keeps its" \
    "decompressed pages."
md "" "### Cold: $COLD_NOTE"
krow=()
((KERNEL_OK)) && krow=("kernel squashfs" "$ASU $KMNT/a/bin/cat $KMNT/a/data/big50")
bench read-cold root 1 "$COLD_WARMUP" "$COLD_RUNS" "kernel squashfs" -- \
    "${krow[@]}" \
    "ch-run" "$ASU ch-run $IA -- /bin/cat /data/big50" \
    "launcher" "$ASU $L exec $IA /bin/cat /data/big50"
ratio_line read-cold launcher "kernel squashfs" "-" "" "50 MiB read cold launcher / kernel"
ratio_line read-cold launcher ch-run "-" "" "50 MiB read cold launcher / ch-run"
md "" "### Warm"
krow=()
((KERNEL_OK)) && krow=("kernel squashfs" "$KMNT/a/bin/cat $KMNT/a/data/big50")
bench read-warm user 0 "$WARM_WARMUP" "$WARM_RUNS" "kernel squashfs" -- \
    "${krow[@]}" \
    "ch-run" "ch-run $IA -- /bin/cat /data/big50" \
    "launcher" "$L exec $IA /bin/cat /data/big50"
ratio_line read-warm launcher "kernel squashfs" "-" "" "50 MiB read warm launcher / kernel"
ratio_line read-warm launcher ch-run "-" "" "50 MiB read warm launcher / ch-run"

# --- peak RSS
md "" "### Peak RSS while reading the $A_MB MiB file (warm)" ""
md "\`/usr/bin/time -v\` around the whole command (\"Maximum resident set size\": the largest of the" \
    "process and the children it waited for, i.e. the launcher's FUSE server here; busybox \`cat\`" \
    "itself stays well under 1 MiB). Median of $RSS_RUNS run(s). The (b) row shows whether the" \
    "server's memory is bounded or grows with the amount read." "" \
    "| Case | Max RSS | Command |" "|---|---:|---|"
rss_row() { # NAME CMD...
    local name=$1 vals=() i rc out f="$RES/time.txt"
    shift
    for ((i = 0; i < RSS_RUNS; i++)); do
        rc=0
        out=$(timeout -k 5 "$PROBE_TIMEOUT" /usr/bin/time -v -o "$f" "$@" 2>&1 >/dev/null) || rc=$?
        if ((rc != 0)); then
            fail "peak RSS: $name" "/usr/bin/time -v $*" "$rc" "$out"
            md "| $name | failed | \`$*\` |"
            return 0
        fi
        vals+=("$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$f")")
    done
    local med
    med=$(printf '%s\n' "${vals[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    md "| $name | $((med / 1024)).$(((med % 1024) * 10 / 1024)) MiB | \`$*\` |"
    summary "peak RSS, $name" "$((med / 1024)) MiB" "" "-" "(no target)"
}
rss_row "launcher, /bin/true only (no read)" "${ASU_A[@]}" "$L" exec "$IA" /bin/true
rss_row "launcher, $A_MB MiB read" "${ASU_A[@]}" "$L" exec "$IA" /bin/cat /data/big50
rss_row "launcher, $BIG_MB MiB read (all of image (b))" "${ASU_A[@]}" "$L" exec "$IB" /bin/sh -c 'cat /data/big/*'
rss_row "ch-run, $A_MB MiB read" "${ASU_A[@]}" ch-run "$IA" -- /bin/cat /data/big50
((KERNEL_OK)) && rss_row "native cat on kernel squashfs, $A_MB MiB read" "${ASU_A[@]}" "$KMNT/a/bin/cat" "$KMNT/a/data/big50"

# --- correctness
section "5. Correctness checks (outputs compared with what was written into the images)"
md "| Check | Expected | Got | Result |" "|---|---|---|---|"
check() { # NAME EXPECTED CMD...
    local name=$1 want=$2 got rc=0
    shift 2
    got=$(timeout -k 5 "$PROBE_TIMEOUT" "${ASU_A[@]}" "$@" 2>&1) || rc=$?
    got=$(tr '\n' ' ' <<<"$got" | cut -c1-200)
    got=${got% }
    if ((rc == 0)) && [[ $got == "$want" ]]; then
        md "| $name | \`$want\` | same | ok |"
    else
        md "| $name | \`$want\` | \`$got\` (exit $rc) | **FAILED** |"
        fail "check: $name" "$ASU $*" "$rc" "expected: $want"$'\n'"got: $got"
    fi
}
check "launcher: sha256 of /data/big50, gzip" "$A_SHA" "$L" exec "$IA" /bin/sh -c 'sha256sum /data/big50 | cut -c1-64'
check "launcher: sha256 of /data/big50, zstd" "$A_SHA" "$L" exec "$IZ" /bin/sh -c 'sha256sum /data/big50 | cut -c1-64'
check "ch-run: sha256 of /data/big50, gzip" "$A_SHA" ch-run "$IA" -- /bin/sh -c 'sha256sum /data/big50 | cut -c1-64'
check "launcher: files in image (d)" "$SMALL_FILES" "$L" exec "$ID" /bin/sh -c 'find /data -type f | wc -l'
check "launcher: files in image (c)" "$MANY_FILES" "$L" exec "$IC" /bin/sh -c 'find /data -type f | wc -l'
check "launcher: exit status passes through" "3" /bin/sh -c "$L exec $IA /bin/sh -c 'exit 3'; echo \$?"

# --- 6. issue 21's targets: fresh mounts against fresh kernel mounts, warm launches, paired
section "6. Fresh mounts against the kernel's, and warm launches (paired)"
md "Each row's commands run in alternation, every command once per round, the order reversed" \
    "every other round (\`benches/paired.py\`); a ratio is the median over rounds of the two" \
    "commands' times in the same round. A fresh kernel mount is made and unmounted around every" \
    "run, from a loop device of its own set up once (so its page cache is as warm as the image" \
    "file's is for the launcher); the launcher makes a fresh FUSE mount every run in any case."
PJ=$RES/paired
rm -rf "$PJ"
mkdir -p "$PJ"
chown "$U_UID:$U_GID" "$PJ" # the baseline rows' paired.py runs as the user
BB_ROOT=$SCRATCH/rootfs-busybox
if [[ ! -x $BB_ROOT/bin/busybox ]]; then
    mkdir -p "$BB_ROOT"
    mk_rootfs "$BB_ROOT"
fi
# paired_row JSON I J OP TARGET LABEL: the paired ratio J / I of a paired.py PAIRED_JSON file, a
# line in the report and in the summary (OP "-": no target).
paired_row() {
    local json=$1 i=$2 j=$3 op=$4 tgt=$5 label=$6 r verdict shown_t
    if ! r=$(python3 "$ROOT/benches/paired.py" --ratio "$json" "$i" "$j" 2>&1); then
        md "- $label: not available ($r)"
        summary "$label" "n/a" "-" "$op $tgt" "NOT MEASURED"
        return 0
    fi
    r=$(awk -v r="$r" 'BEGIN { printf "%.2f", r }')
    verdict=$(verdict_of "$r" "$op" "$tgt")
    shown_t=$(target_shown "$op" "$tgt")
    local line
    line="- **$label** = $r (median over $(jq '.times[0] | length' "$json") paired rounds)"
    [[ $op == "-" ]] || line+="; target $shown_t: **$verdict**"
    md "$line"
    summary "$label" "$r" "" "$shown_t" "$verdict"
}
# paired_table JSON NAME...: the median of each command of a PAIRED_JSON file, by name.
paired_table() {
    local json=$1 k=0 n
    shift
    md "" "| Command | Median | Failed runs |" "|---|---:|---:|"
    for n in "$@"; do
        md "| $n | $(python3 "$ROOT/benches/paired.py" --median "$json" "$k" |
            awk '{ printf "%.1f ms", $1 * 1000 }') | $(jq --argjson k "$k" '.failed[$k]' "$json") |"
        k=$((k + 1))
    done
    md ""
}
# paired_script NAME LOG CMD...: run one of the paired benchmark scripts; its whole output goes
# into the report (folded), a failure into Failures.
paired_script() {
    local name=$1 logf=$2 rc=0
    shift 2
    log "$name: $*"
    env BENCH_USER="$U_NAME" BENCH_ROOTFS="$BB_ROOT" BENCH_JSON_DIR="$PJ" LAUNCHER="$L" \
        timeout -k 10 1800 "$@" >"$logf" 2>&1 || rc=$?
    ((rc == 0)) || fail "$name" "$(fmt_cmd "$@")" "$rc" "$(tail -n 20 "$logf")"
    md "" "<details><summary>output of \`$(fmt_cmd "${@/#$ROOT\//}")\`</summary>" "" '```' "$(cat "$logf")" '```' "" "</details>" ""
    return "$rc"
}

md "" "### find + cat over 2,000 files of 4 KiB (zstd), a fresh mount each run"
others=()
[[ -n $BASELINE ]] && others=("$SCRATCH/bin/launcher-baseline")
[[ -n $BASELINE ]] && install -m 0755 "$BASELINE" "$SCRATCH/bin/launcher-baseline"
if paired_script "find + cat, fresh mounts (benches/smallfiles.sh)" "$RES/smallfiles.log" \
    "$ROOT/benches/smallfiles.sh" "$L" "$PAIRED_ROUNDS" "${others[@]}"; then
    names=("kernel squashfs, fresh mount: find + cat" "kernel squashfs, fresh mount: /bin/true"
        "launcher: find + cat" "launcher: /bin/true")
    [[ -n $BASELINE ]] && names+=("baseline launcher: find + cat" "baseline launcher: /bin/true")
    paired_table "$PJ/findcat.json" "${names[@]}"
    paired_row "$PJ/findcat.json" 0 2 "<=" 1.0 "find+cat, fresh launcher mount / fresh kernel mount"
    [[ -n $BASELINE ]] && paired_row "$PJ/findcat.json" 4 2 "<=" 1.05 "find+cat, launcher / baseline launcher"
fi

md "" "### \`python3 -c 'import numpy, mpi4py'\` from a Debian 12 image (zstd; Debian's packages)"
if paired_script "import numpy, mpi4py (benches/python-import.sh)" "$RES/python-import.log" \
    "$ROOT/benches/python-import.sh" "$((PAIRED_ROUNDS / 2))"; then
    paired_table "$PJ/python-fresh.json" "kernel squashfs mounted afresh for the run" "launcher exec IMAGE"
    paired_row "$PJ/python-fresh.json" 0 1 "<=" 1.0 "import numpy, mpi4py: fresh launcher exec / fresh kernel mount"
    paired_table "$PJ/python-warm.json" "kernel squashfs already mounted and used (chroot)" \
        "launcher exec instance://NAME" "launcher exec IMAGE (block cache warm)"
    paired_row "$PJ/python-warm.json" 0 1 "<=" 1.2 "import numpy, mpi4py: exec instance:// / mounted kernel squashfs"
    paired_row "$PJ/python-warm.json" 0 2 "-" "" "import numpy, mpi4py: launcher exec IMAGE again / mounted kernel squashfs"
fi

if [[ -n $BASELINE ]]; then
    md "" "### Start-up with none of the newer features used, against the baseline \`$BASELINE\`" \
        "" "\`/bin/true\` from image (a); this launcher with \`--fuse-no-block-cache\`."
    BL=$SCRATCH/bin/launcher-baseline
    install -m 0755 "$ROOT/benches/paired.py" "$SCRATCH/bin/paired.py" # the user may not read $ROOT
    rc=0
    out=$(cd "$U_HOME" && "${ASU_A[@]}" PAIRED_JSON="$PJ/baseline.json" python3 "$SCRATCH/bin/paired.py" \
        "$((PAIRED_ROUNDS * 4))" "$BL" exec "$IZ" /bin/true :: "$L" exec --fuse-no-block-cache "$IZ" /bin/true \
        :: "$BL" exec "$IA" /bin/true :: "$L" exec --fuse-no-block-cache "$IA" /bin/true 2>&1) || rc=$?
    if ((rc == 0)); then
        paired_table "$PJ/baseline.json" "baseline (zstd)" "launcher --fuse-no-block-cache (zstd)" \
            "baseline (gzip)" "launcher --fuse-no-block-cache (gzip)"
        paired_row "$PJ/baseline.json" 0 1 "<=" 1.05 "start-up, no block cache / baseline launcher, zstd"
        paired_row "$PJ/baseline.json" 2 3 "<=" 1.05 "start-up, no block cache / baseline launcher, gzip"
    else
        fail "start-up against the baseline" "paired.py ... $BL ... $L ..." "$rc" "$out"
    fi
fi

# ---------------------------------------------------------------- 8. write the report
mkdir -p "$(dirname "$OUTPUT")"
T_END=$(date +%s)
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
CHV=$(USER=root ch-run --version 2>&1 | head -n1)
{
    echo "# Performance"
    echo
    echo "Produced by \`$INVOCATION\` ($MODE mode) - do not edit by hand; rerun the script."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| Date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| Kernel | $(uname -r) |"
    echo "| CPU | $CPU, $(nproc) cores online |"
    echo "| Memory | $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |"
    echo "| OS | $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release) |"
    echo "| Load at start / end | \`$LOAD_START\` / \`$(uptime | sed 's/^ *//')\` |"
    echo "| launcher | commit $LAUNCHER_REV, $BUILD_NOTE |"
    echo "| Peers | ch-run $CHV; kernel squashfs; $(hyperfine --version); $(mksquashfs -version 2>&1 | head -n1); $(busybox 2>&1 | head -n1 | cut -d' ' -f1-2) |"
    echo "| Measured as | user $U_NAME (uid $U_UID), \`setpriv --reuid --regid --clear-groups env -i HOME USER LOGNAME PATH\` |"
    echo "| Run time | $((T_END - T_START)) s in all, of which $IMAGE_BUILD_S s building images |"
    echo
    echo "Numbers are hyperfine medians. Each table is $ROUNDS hyperfine invocation(s) (\"rounds\") over"
    echo "all of its commands; a ratio is taken between medians of the same round, so the compared"
    echo "commands share that round's conditions, and the median over the rounds is shown (with the"
    echo "per-round values). The machine is shared: compare ratios, not absolute times, across runs."
    echo
    echo "## Summary"
    echo
    echo "Value: median over rounds of the ratio of medians (per-round values in brackets). Fastest:"
    echo "fastest run of one command over fastest run of the other, all rounds (least disturbed by"
    echo "other load; cold runs on this shared machine are noisy). Verdicts use Value."
    echo
    echo "| Metric | Value | Fastest | Target | Verdict |"
    echo "|---|---:|---:|---|---|"
    cat "$SUMMARY"
    echo
    echo "Failures recorded: $NFAIL (details at the end)."
    cat "$REPORT"
    echo
    echo "## Failures"
    echo
    if ((NFAIL)); then cat "$FAILS"; else echo "None."; fi
    echo
    echo "Build times (\`launcher build\` against mksquashfs): [performance-build.md](performance-build.md), from \`benches/build.sh\`."
    echo
    echo "How section 6's figures were found (FUSE requests per file, profiles, what was tried), zstd start-up paired with ch-run: [performance-smallfiles.md](performance-smallfiles.md)."
} >"$OUTPUT.tmp"
mv "$OUTPUT.tmp" "$OUTPUT"
chmod 0644 "$OUTPUT"
log "wrote $OUTPUT ($((T_END - T_START)) s)"
cat "$OUTPUT"
if ((RUN_BUILD)); then # the launcher is built (or not) already: build.sh reuses the binary
    b_args=(--no-build)
    ((QUICK)) && b_args+=(--quick)
    "$ROOT/benches/build.sh" "${b_args[@]}"
fi
