#!/usr/bin/env bash
# benches/build.sh - time `launcher build` against mksquashfs and write docs/performance-build.md.
#
# Usage (as root, on Debian 12):  benches/build.sh [--quick] [--no-build] [--rebuild-tree]
#   --quick          ~60 MB tree and fewer runs (smoke check); the full tree is ~300 MB
#   --no-build       do not run `cargo build --release`; use the existing release binary
#   --rebuild-tree   regenerate the source tree even if a cached copy matches the spec
#   --output FILE    write the report there instead of docs/performance-build.md
#
# Environment: LAUNCHER_BENCH_BUILD_DIR (scratch dir, default /var/tmp/launcher-bench-build),
# LAUNCHER_BENCH_BUILD_RUNS (hyperfine runs per command for zstd and gzip; default 3, 2 with
# --quick), CARGO_TARGET_DIR (honoured by the build).
#
# What it does: installs squashfs-tools, hyperfine and jq with apt-get if missing, builds the
# launcher, generates a deterministic (seeded) tree of mixed files - text-like and base64 data,
# incompressible data, zero-filled and sparse files, ~20,000 small files in nested dirs,
# symlinks, hard links and duplicate files - cached under the scratch dir keyed by its spec, then
# times `launcher build OUT.sqfs DIR` and mksquashfs with the same compressor, level, block size
# (128 KiB) and thread count (all cores) in ONE hyperfine invocation per compressor (same
# conditions; outputs removed and `sync`ed before every run), compares output sizes, checks
# that both images list the same entries (`unsquashfs -lln`) and that the launcher's image
# extracts to the source tree, and times the SIF wrapping (`launcher build OUT.sif`).
# Runs as root (both tools read the same root-owned tree). A failure is recorded in the report.

set -uo pipefail
umask 022
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="benches/build.sh${*:+ $*}"
QUICK=0
BUILD=1
REBUILD_TREE=0
OUTPUT="$ROOT/docs/performance-build.md"
while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --rebuild-tree) REBUILD_TREE=1 ;;
        --output) OUTPUT=$2; shift ;;
        -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if ((EUID != 0)); then
    echo "build.sh: must run as root (it installs packages and reads a root-owned tree)" >&2
    exit 2
fi

SCRATCH=${LAUNCHER_BENCH_BUILD_DIR:-/var/tmp/launcher-bench-build}
OUTD=$SCRATCH/out
LAUNCHER=$SCRATCH/bin/launcher
NPROC=$(nproc)
BLOCK=131072
T_START=$(date +%s)
LOAD_START=$(uptime | sed 's/^ *//')

# Tree composition (MiB unless said otherwise). Full: ~300 MB; quick: one fifth, 4,000 small files.
if ((QUICK)); then
    MODE=quick
    DIV=5; SMALL_FILES=3400; FLAT_FILES=600
    RUNS=2
else
    MODE=full
    DIV=1; SMALL_FILES=17000; FLAT_FILES=3000
    RUNS=3
fi
RUNS=${LAUNCHER_BENCH_BUILD_RUNS:-$RUNS}
TEXT_MB=$((90 / DIV))    # word text, files of 1 KiB .. 4 MiB (log-uniform sizes)
B64_MB=$((30 / DIV))     # base64 of random data, 2 MiB files
RAND_MB=$((75 / DIV))    # incompressible, files of 1 .. 8 MiB
ZERO_MB=$((15 / DIV))    # zero-filled (allocated, not sparse)
SPARSE_MB=$((30 / DIV))  # sparse files (apparent size), 1/8 of it data
MIXED_MB=$((20 / DIV))   # one "disk image": 1 MiB chunks of random / zeros / text
SEED=20261125
HF_TIMEOUT=1800 # seconds, per hyperfine invocation

log() { printf '[build.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPORT=$(mktemp)
FAILS=$(mktemp)
SUMMARY=$(mktemp)
NFAIL=0
cleanup() { rm -f "$REPORT" "$FAILS" "$SUMMARY"; }
trap cleanup EXIT

# ---------------------------------------------------------------- 1. packages
need_pkgs=()
command -v hyperfine >/dev/null || need_pkgs+=(hyperfine)
command -v mksquashfs >/dev/null || need_pkgs+=(squashfs-tools)
command -v jq >/dev/null || need_pkgs+=(jq)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
command -v cc >/dev/null || need_pkgs+=(gcc libc6-dev)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null; then
        if ! { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null; }; then
            echo "build.sh: apt-get install ${need_pkgs[*]} failed" >&2
            exit 1
        fi
    fi
fi

# ---------------------------------------------------------------- 2. build
mkdir -p "$SCRATCH/bin" "$OUTD"
BUILD_NOTE="not built by this run (--no-build)"
if ((BUILD)); then
    build_launcher
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/launcher"
if [[ -x $BIN ]]; then
    install -m 0755 "$BIN" "$LAUNCHER" # a private copy: a rebuild cannot swap it mid-run
else
    echo "build.sh: no launcher binary at $BIN" >&2
    exit 1
fi
LAUNCHER_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- . ':!benches' ':!docs' 2>/dev/null || LAUNCHER_REV="$LAUNCHER_REV (with uncommitted changes)"

# ---------------------------------------------------------------- 3. the source tree
# rand_bytes N SEED: N pseudo-random (incompressible, reproducible) bytes on stdout.

# Word text from a small vocabulary with some numbers: compresses about as source code does
# (zstd -15 ~0.29, gzip -9 ~0.33 as one stream). awk's srand(SEED) makes it reproducible.
# shellcheck disable=SC2016
AWK_WORDS='BEGIN { nw = split("the of and to in is for that with on as by this be are from at or an it not which have use data value config error result return struct impl self buffer index path file name len size int char void static const include define if else while switch case break default true false null new class public private def import print assert 0 1 2 42 100 {} () [] ; = == != <= >= += ->", W) }
function put_words(f, n,   line, k, j, w) { # n bytes of text to file f, a line at a time
    while (n > 0) {
        line = ""; k = 3 + int(rand() * 12)
        for (j = 0; j < k; j++) {
            w = W[1 + int(rand() * nw)]
            if (rand() < 0.05) w = w int(rand() * 100000)
            line = line w " "
        }
        line = line "\n"
        if (length(line) > n) line = substr(line, 1, n)
        printf "%s", line > f
        n -= length(line)
    }
}
function put_chars(f, n,   line, i, k) { # hex/base64-like noise (~6 bits a byte), 64-byte lines
    while (n > 0) {
        k = (n < 64) ? n : 64
        line = ""
        for (i = 0; i < k; i++) line = line substr(ALNUM, 1 + int(rand() * 64), 1)
        printf "%s", line > f
        n -= k
    }
}
BEGIN { ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" }'

gen_text() { # DIR MB: files text/mNN/fNNNN.txt, sizes log-uniform 1 KiB .. 4 MiB
    local d
    for ((d = 0; d < 16; d++)); do mkdir -p "$1/text/m$(printf %02d "$d")"; done
    awk -v seed="$SEED" -v total=$(($2 * 1048576)) -v dir="$1/text" "$AWK_WORDS"'
        BEGIN { srand(seed); n = 0; i = 0
            while (n < total) {
                len = int(exp(log(1024) + rand() * (log(4194304) - log(1024))))
                if (len > total - n) len = total - n
                f = sprintf("%s/m%02d/f%04d.txt", dir, i % 16, i)
                put_words(f, len); close(f)
                n += len; i++
            } }'
}

gen_small() { # DIR NESTED FLAT: NESTED files in small/dNN/eN/ (3/4 text, 1/4 noise, 1 B .. 16 KiB,
    # log-uniform) and FLAT files of 0 .. 200 bytes in one flat directory (a long directory).
    local a b
    for ((a = 0; a < 40; a++)); do
        for ((b = 0; b < 10; b++)); do mkdir -p "$1/small/d$(printf %02d "$a")/e$b"; done
    done
    mkdir -p "$1/flat"
    awk -v seed=$((SEED + 1)) -v nested="$2" -v flat="$3" -v dir="$1" "$AWK_WORDS"'
        BEGIN { srand(seed)
            for (i = 0; i < nested; i++) {
                len = int(exp(rand() * log(16384)))
                f = sprintf("%s/small/d%02d/e%d/f%05d.%s", dir, i % 40, int(i / 40) % 10, i, (i % 4 == 3) ? "dat" : "txt")
                printf "" > f # creates the file even when len is 0
                if (i % 4 == 3) put_chars(f, len); else put_words(f, len)
                close(f)
            }
            for (i = 0; i < flat; i++) {
                f = sprintf("%s/flat/entry-with-a-longer-name-%05d", dir, i)
                printf "" > f
                put_words(f, int(rand() * 201)); close(f)
            } }'
}

gen_tree() { # DIR
    local t=$1 i n sz off
    mkdir -p "$t"
    chmod 0755 "$t"
    log "tree: text ($TEXT_MB MiB)"
    gen_text "$t" "$TEXT_MB"
    log "tree: $SMALL_FILES + $FLAT_FILES small files"
    gen_small "$t" "$SMALL_FILES" "$FLAT_FILES"
    log "tree: base64, random, zeros, sparse, mixed"
    mkdir -p "$t/logs" "$t/blobs" "$t/zeros" "$t/sparse" "$t/mixed" "$t/edge" "$t/dup" \
        "$t/links/hard" "$t/links/sym" "$t/modes"
    rand_bytes $((B64_MB * 786432)) b64 | base64 -w 76 | split -b 2M -a 3 -d - "$t/logs/log-"
    n=0
    for ((i = 0; n < RAND_MB; i++)); do
        sz=$((i % 8 + 1))
        ((sz > RAND_MB - n)) && sz=$((RAND_MB - n))
        rand_bytes $((sz * 1048576)) "blob-$i" >"$t/blobs/blob$(printf %03d "$i").bin"
        n=$((n + sz))
    done
    head -c $((ZERO_MB * 1048576 * 3 / 4)) /dev/zero >"$t/zeros/disk.img"
    head -c $((ZERO_MB * 1048576 / 4 + 12345)) /dev/zero >"$t/zeros/odd-size.img"
    : >"$t/zeros/empty"
    for ((i = 0; i < 3; i++)); do # sparse: holes with data islands (block-aligned and not)
        sz=$((SPARSE_MB * 1048576 / 3))
        truncate -s "$sz" "$t/sparse/sparse$i.img"
        for off in $((sz / 8)) $((sz / 3 + 4097)) $((sz / 2)) $((sz - 65536)); do
            rand_bytes $((sz / 32)) "sparse-$i-$off" |
                dd of="$t/sparse/sparse$i.img" bs=1M seek="$off" oflag=seek_bytes conv=notrunc,sparse status=none
        done
    done
    truncate -s 0 "$t/mixed/vm.img"
    for ((i = 0; i < MIXED_MB; i++)); do
        case $((i % 3)) in
            0) rand_bytes 1048576 "mixed-$i" ;;
            1) head -c 1048576 /dev/zero ;;
            2) head -c 1048576 "$(find "$t/text" -type f -size +1M | sort | head -n 1)" ;;
        esac >>"$t/mixed/vm.img"
    done
    for sz in 0 1 4095 4096 $((BLOCK - 1)) $BLOCK $((BLOCK + 1)) $((2 * BLOCK)) $((2 * BLOCK + 5)) $((8 * BLOCK + 17)); do
        rand_bytes "$sz" "edge-$sz" >"$t/edge/size-$sz"
    done
    log "tree: duplicates, hard links, symlinks, modes"
    cp -a "$t/blobs/blob000.bin" "$t/dup/blob000.copy1"
    cp -a "$t/blobs/blob000.bin" "$t/dup/blob000.copy2"
    cp -a "$(find "$t/text" -type f -size +1M | sort | tail -n 1)" "$t/dup/text.copy"
    cp -a "$t/small/d00" "$t/dup/small-d00" # small duplicates: fragment-only files
    cp -a "$t/edge" "$t/dup/edge"
    for f in "$t"/small/d01/e*/*; do ln "$f" "$t/links/hard/${f##*/}"; done
    ln "$t/blobs/blob001.bin" "$t/links/hard/blob001.bin"
    ln "$t/zeros/empty" "$t/links/hard/empty"
    i=0
    for f in "$t"/small/d02/e*/*; do
        case $((i % 4)) in
            0) ln -s "../../${f#"$t"/}" "$t/links/sym/rel$i" ;;
            1) ln -s "/${f#"$t"/}" "$t/links/sym/abs$i" ;;
            2) ln -s "missing/target-$i" "$t/links/sym/dangling$i" ;;
            3) ln -s "../../small/d02" "$t/links/sym/dir$i" ;;
        esac
        i=$((i + 1))
    done
    ln -s "$(printf 'x%.0s' {1..200})/$(printf 'y%.0s' {1..50})" "$t/links/sym/long-target"
    for m in 0400 0444 0600 0640 0700 0755 0775 2755 4755 1777; do
        printf 'mode %s\n' "$m" >"$t/modes/file-$m"
        chmod "$m" "$t/modes/file-$m"
        mkdir -p "$t/modes/dir-$m"
        chmod "$m" "$t/modes/dir-$m"
    done
    find "$t" -exec touch -h -d @1700000000 {} +
}

AWK_V=$(awk -W version 2>&1 | head -n 1)
SPEC="v1 seed=$SEED text=$TEXT_MB b64=$B64_MB rand=$RAND_MB zero=$ZERO_MB sparse=$SPARSE_MB mixed=$MIXED_MB small=$SMALL_FILES flat=$FLAT_FILES awk=$AWK_V"
KEY=$(printf '%s' "$SPEC" | sha256sum | cut -c1-12)
TREE=$SCRATCH/tree-$KEY
TREE_BUILD_S=0
if ((!REBUILD_TREE)) && [[ -f $TREE.spec && $(cat "$TREE.spec") == "$SPEC" && -d $TREE ]]; then
    log "tree $TREE: up to date"
else
    log "tree $TREE: generating ($SPEC)"
    t0=$(date +%s)
    rm -rf "$TREE" "$TREE.tmp" "$TREE.spec"
    gen_tree "$TREE.tmp"
    mv "$TREE.tmp" "$TREE"
    touch -h -d @1700000000 "$TREE"
    printf '%s' "$SPEC" >"$TREE.spec"
    TREE_BUILD_S=$(($(date +%s) - t0))
fi
T_BYTES=$(du -sb --apparent-size "$TREE" | cut -f1)
T_DISK=$(du -sB1 "$TREE" | cut -f1)
T_FILES=$(find "$TREE" -type f | wc -l)
T_LINKS=$(find "$TREE" -type l | wc -l)
T_DIRS=$(find "$TREE" -type d | wc -l)
T_HARD=$(find "$TREE" -type f -links +1 | wc -l)

# ---------------------------------------------------------------- 4. measuring
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
secs() { awk -v s="$1" 'BEGIN { printf "%.2f s", s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }

# One table row per command of one hyperfine json: name, median, min, max, mean user+sys, runs.
# shellcheck disable=SC2016
JQ_ROW='.results[] | [.command, .median, .min, .max, (.user + .system), (.times | length)] | @tsv'

# measure COMP LEVEL_ARGS_LAUNCHER LEVEL_ARGS_MKSQ WARMUP RUNS WITH_SIF
# One hyperfine invocation: launcher .sqfs, mksquashfs (and launcher .sif); table + summary.
measure() {
    local comp=$1 warmup=$4 runs=$5 with_sif=$6
    local -a llev mlev
    read -r -a llev <<<"$2"
    read -r -a mlev <<<"$3"
    local lo="$OUTD/launcher-$comp.sqfs" mo="$OUTD/mksquashfs-$comp.sqfs" so="$OUTD/launcher-$comp.sif"
    local lcmd mcmd scmd json="$OUTD/$comp.json" rc out
    lcmd=$(fmt_cmd "$LAUNCHER" build "$lo" "$TREE" --compress "$comp" "${llev[@]}" --block-size "$BLOCK")
    mcmd=$(fmt_cmd mksquashfs "$TREE" "$mo" -comp "$comp" "${mlev[@]}" -b "$BLOCK" -processors "$NPROC" -noappend -quiet -no-progress)
    scmd=$(fmt_cmd "$LAUNCHER" build "$so" "$TREE" --compress "$comp" "${llev[@]}" --block-size "$BLOCK")
    local -a hf=(hyperfine --style basic --warmup "$warmup" --runs "$runs" --export-json "$json"
        --prepare "rm -f $lo && sync" -n "launcher .sqfs" "$lcmd"
        --prepare "rm -f $mo && sync" -n "mksquashfs" "$mcmd")
    ((with_sif)) && hf+=(--prepare "rm -f $so && sync" -n "launcher .sif" "$scmd")
    md "" "## $comp" "" "Load before: \`$(uptime | sed 's/^ *//')\`" ""
    log "hyperfine: $comp (warmup $warmup, $runs runs)"
    rm -f "$json"
    rc=0
    out=$(timeout -k 10 "$HF_TIMEOUT" "${hf[@]}" 2>&1) || rc=$?
    if ((rc != 0)) || [[ ! -s $json ]]; then
        fail "hyperfine $comp" "$(fmt_cmd "${hf[@]}")" "$rc" "$(tail -n 25 <<<"$out")"
        md "_hyperfine failed (see Failures)._"
        summary "$comp build time launcher / mksquashfs" "n/a" "-" "<= 1.00" "NOT MEASURED"
        summary "$comp size launcher / mksquashfs" "n/a" "-" "<= 1.02" "NOT MEASURED"
        return 0
    fi
    local name med min max cpu n lmed lmin lcpu mmed mmin mcpu smed ls ms ss
    md "| Command | Median | Min | Max | CPU (user+sys, mean) | Runs | Output size |" \
        "|---|---:|---:|---:|---:|---:|---:|"
    while IFS=$'\t' read -r name med min max cpu n; do
        local f=$lo
        [[ $name == mksquashfs ]] && { f=$mo; mmed=$med; mmin=$min; mcpu=$cpu; }
        [[ $name == "launcher .sqfs" ]] && { lmed=$med; lmin=$min; lcpu=$cpu; }
        [[ $name == "launcher .sif" ]] && { f=$so; smed=$med; }
        md "| $name | $(secs "$med") | $(secs "$min") | $(secs "$max") | $(secs "$cpu") | $n | $(stat -c %s "$f" 2>/dev/null || echo missing) B |"
    done < <(jq -r "$JQ_ROW" "$json")
    ls=$(stat -c %s "$lo" 2>/dev/null || echo 0)
    ms=$(stat -c %s "$mo" 2>/dev/null || echo 0)
    local tr sr tv sv
    tr=$(ratio "$lmed" "$mmed")
    sr=$(ratio "$ls" "$ms")
    tv=$(awk -v r="$tr" 'BEGIN { print (r <= 1.0) ? "met" : "MISSED" }')
    sv=$(awk -v r="$sr" 'BEGIN { print (r > 1.02) ? "MISSED" : (r < 0.98) ? "met (smaller)" : "met" }')
    md "" "- time launcher / mksquashfs: **$tr** (medians; fastest / fastest: $(ratio "$lmin" "$mmin"); CPU time: $(ratio "$lcpu" "$mcpu")); target <= 1.0: **$tv**" \
        "- size launcher / mksquashfs: **$sr** ($ls B / $ms B, $(mib "$ls") / $(mib "$ms")); target within 2 % (<= 1.02): **$sv**"
    summary "$comp build time launcher / mksquashfs" "$tr ($(secs "$lmed") / $(secs "$mmed"); CPU $(ratio "$lcpu" "$mcpu"))" "$(ratio "$lmin" "$mmin")" "<= 1.00" "$tv"
    summary "$comp size launcher / mksquashfs" "$sr ($(mib "$ls") / $(mib "$ms"))" "-" "<= 1.02" "$sv"
    if ((with_sif)); then
        ss=$(stat -c %s "$so" 2>/dev/null || echo 0)
        md "- SIF wrapping: launcher .sif / launcher .sqfs time **$(ratio "$smed" "$lmed")** ($(secs "$smed") / $(secs "$lmed")), size +$((ss - ls)) B"
        summary "$comp SIF overhead: .sif / .sqfs time" "$(ratio "$smed" "$lmed") (+$((ss - ls)) B)" "-" "-" "(no target)"
    fi
    md "" "<details><summary>exact hyperfine command</summary>" "" '```' "$(fmt_cmd "${hf[@]}")" '```' "" "</details>"
    check_listing "$comp" "$lo" "$mo"
}

# unsquashfs -lln, one line per entry: "MODE OWNER SIZE NAME" (directory sizes are left out: they
# depend on the inode table layout), and the same with the mtime for a separate count.
listing() { # IMG WITH_MTIME
    unsquashfs -lln "$1" | sed -n 's|^\([^ ]*\) \([^ ]*\) *\([^ ]*\) \([^ ]*\) \([^ ]*\) squashfs-root|\1 \2 \3 \4 \5 |p' |
        awk -v t="$2" '{ size = (substr($1, 1, 1) == "d") ? "-" : $3
            name = $0; sub(/^[^ ]* [^ ]* [^ ]* [^ ]* [^ ]* /, "", name)
            print $1, $2, size, (t ? $4 " " $5 " " : "") name }' | sort
}

check_listing() { # COMP LAUNCHER_IMG MKSQUASHFS_IMG
    local comp=$1 a b n na nm d
    a=$(mktemp) b=$(mktemp)
    if [[ ! -f $2 || ! -f $3 ]]; then
        md "- listing check: an output is missing; **FAILED**"
        fail "listing check $comp" "test -f $2 -a -f $3" 1 "output missing"
        summary "$comp listing launcher = mksquashfs" "output missing" "-" "same entries" "FAILED"
        rm -f "$a" "$b"
        return 0
    fi
    listing "$2" 0 >"$a"
    listing "$3" 0 >"$b"
    na=$(wc -l <"$a")
    if cmp -s "$a" "$b"; then
        md "- \`unsquashfs -lln\` listings (mode, uid/gid, size except directories, name, symlink target): **same** ($na entries)"
        summary "$comp listing launcher = mksquashfs" "same ($na entries)" "-" "same entries" "met"
    else
        d=$(diff "$b" "$a" | head -n 40)
        n=$(diff "$b" "$a" | grep -c '^[<>]')
        md "- \`unsquashfs -lln\` listings: **DIFFER** ($n lines; < mksquashfs, > launcher):" "" '```' "$d" '```'
        fail "listing check $comp: launcher and mksquashfs images list different entries" \
            "diff <(unsquashfs -lln $3) <(unsquashfs -lln $2)  # normalised" 1 "$d"
        summary "$comp listing launcher = mksquashfs" "DIFFER ($n lines)" "-" "same entries" "FAILED"
    fi
    listing "$2" 1 >"$a"
    listing "$3" 1 >"$b"
    nm=$(diff "$b" "$a" | grep -c '^>')
    md "- mtimes: $nm entries differ (information; both tools keep the source's mtimes)"
    rm -f "$a" "$b"
}

# content_check COMP IMG: the launcher's image extracted by unsquashfs equals the source tree.
content_check() {
    local comp=$1 img=$2 x="$OUTD/extract" rc=0 out
    [[ -f $img ]] || return 0
    rm -rf "$x"
    out=$(unsquashfs -q -n -d "$x" "$img" 2>&1 >/dev/null && diff -r --no-dereference "$TREE" "$x" 2>&1 | head -n 20) || rc=$?
    if ((rc == 0)) && [[ -z $out ]]; then
        md "- content: \`unsquashfs -d X\` of the launcher's image, \`diff -r --no-dereference\` against the tree: **identical**"
        summary "$comp launcher image extracts to the tree" "identical" "-" "identical" "met"
    else
        md "- content: the launcher's image does **NOT** extract to the tree (see Failures)"
        fail "content check $comp" "unsquashfs -d $x $img && diff -r --no-dereference $TREE $x" "$rc" "$out"
        summary "$comp launcher image extracts to the tree" "DIFFERS" "-" "identical" "FAILED"
    fi
    rm -rf "$x"
}

# zstd: level 15 (both tools' default), with the SIF row; gzip: level 9 (both defaults);
# xz: no level flag (default preset 6, dictionary = block size); lz4: no options (not HC).
measure zstd "--level 15" "-Xcompression-level 15" 1 "$RUNS" 1
content_check zstd "$OUTD/launcher-zstd.sqfs"
measure gzip "--level 9" "-Xcompression-level 9" 1 "$RUNS" 0
content_check gzip "$OUTD/launcher-gzip.sqfs"
measure xz "" "" 0 1 0
content_check xz "$OUTD/launcher-xz.sqfs"
measure lz4 "" "" 1 "$RUNS" 0 # about 1 s a run: as cheap to measure as often as zstd
content_check lz4 "$OUTD/launcher-lz4.sqfs"
LOAD_END=$(uptime | sed 's/^ *//')

# ---------------------------------------------------------------- 5. the report
mkdir -p "$(dirname "$OUTPUT")"
T_END=$(date +%s)
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
    echo "# Performance: \`launcher build\` against mksquashfs"
    echo
    echo "Produced by \`$INVOCATION\` ($MODE mode) - do not edit by hand; rerun the script."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| Date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| Kernel | $(uname -r) |"
    echo "| CPU | $CPU, $NPROC cores online |"
    echo "| Memory | $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |"
    echo "| OS | $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release) |"
    echo "| Load at start / end | \`$LOAD_START\` / \`$LOAD_END\` |"
    echo "| launcher | commit $LAUNCHER_REV, $BUILD_NOTE |"
    echo "| Peers | $(mksquashfs -version 2>&1 | head -n1); $(hyperfine --version) |"
    echo "| Source tree | \`$TREE\`: $(mib "$T_BYTES") apparent ($(mib "$T_DISK") on disk), $T_FILES files ($T_HARD with hard links), $T_LINKS symlinks, $T_DIRS directories; $( ((TREE_BUILD_S)) && echo "generated by this run in $TREE_BUILD_S s" || echo "cached") |"
    echo "| Run time | $((T_END - T_START)) s |"
    echo
    echo "Tree spec (seeded, regenerated when it changes): \`$SPEC\`. Content: word text in files"
    echo "of 1 KiB..4 MiB, base64 of random data, incompressible random files, zero-filled files,"
    echo "sparse files with data islands, a 1 MiB-chunked random/zero/text image, files at block-size"
    echo "edges, $SMALL_FILES small files (1 B..16 KiB) in 400 nested dirs plus $FLAT_FILES in one"
    echo "flat dir, duplicates (big files, a copied dir of small files), hard links, symlinks"
    echo "(relative, absolute, dangling, to a dir, 251-byte target) and assorted modes; all mtimes"
    echo "set to 1700000000."
    echo
    echo "Both tools: same compressor and level, block size $BLOCK, $NPROC threads (the launcher uses"
    echo "all cores; mksquashfs gets \`-processors $NPROC\`), run as root on the same tree, which is in"
    echo "the page cache (warm). Every run starts with the previous output removed and \`sync\`ed;"
    echo "neither .sqfs writer fsyncs, the SIF writer does (\`sync_all\`), so the .sif row includes"
    echo "writing the image back to disk. zstd, gzip and lz4 are one hyperfine invocation each (warmup"
    echo "1, $RUNS runs per command; hyperfine runs all runs of one command, then the next); xz is one"
    echo "run each, no warmup. Times are hyperfine medians; CPU is hyperfine's mean user+system time. The"
    echo "machine is shared with other work: compare ratios within one run, not absolute times."
    echo
    echo "## Summary"
    echo
    echo "Value: ratio of hyperfine medians (verdicts use it); CPU: ratio of mean user+system time"
    echo "(less sensitive to other load, but blind to idle cores). Fastest: fastest run over fastest"
    echo "run (least disturbed by other load). Size target read as \"the launcher's image is at most"
    echo "2 % larger\"."
    echo
    echo "| Metric | Value | Fastest | Target | Verdict |"
    echo "|---|---|---:|---|---|"
    cat "$SUMMARY"
    echo
    echo "Failures recorded: $NFAIL (details at the end)."
    cat "$REPORT"
    echo
    echo "## Failures"
    echo
    if ((NFAIL)); then cat "$FAILS"; else echo "None."; fi
} >"$OUTPUT.tmp"
mv "$OUTPUT.tmp" "$OUTPUT"
chmod 0644 "$OUTPUT"
log "wrote $OUTPUT ($((T_END - T_START)) s)"
cat "$OUTPUT"
((NFAIL == 0))
