#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each and prints, per target, the
# executions done and the crashes found (inputs in fuzz/artifacts/TARGET/), appends one line per
# target to fuzz/ledger.tsv and rewrites docs/reliability.md's table from it (fuzz/table.sh).
#
#   fuzz/run.sh 300              # all targets, 5 minutes each
#   fuzz/run.sh 60 squashfs sif  # some targets
#
# cargo-fuzz (`cargo install cargo-fuzz`) asks rustc for nightly-only flags; the only
# toolchain here is stable, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them.
# FUZZ_SANITIZER (default none): cargo fuzz's -s. Without AddressSanitizer the targets run
# 4-6x more inputs a second (squashfs 1.7k -> 7.4k/s, oci_layer 1.0k -> 6.0k/s, 25 s each,
# 2026-12-05), and ASan finds little here: the parsers under fuzz are safe Rust (no `unsafe`
# in image-tools' squashfs, sif, sif_sig and oci modules), and the C decompressors (zstd,
# liblzma) are built without its instrumentation anyway. `FUZZ_SANITIZER=address` for a
# run with it; the ledger's command column says which. The corpus grows in fuzz/corpus/TARGET (not committed); seeds
# are made fresh by fuzz/seeds.sh. The build goes to $CARGO_TARGET_DIR (default
# fuzz/target). Reproduce a crash: fuzz/run.sh repro TARGET FILE.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE"
export RUSTC_BOOTSTRAP=1
SANITIZER=${FUZZ_SANITIZER:-none}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/target-$SANITIZER}
ALL=(squashfs sif oci_archive oci_layer site_config cdi env_script deffile signature)
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=$CARGO_TARGET_DIR/$TRIPLE/release

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
if [ "$(id -u)" = 0 ]; then
    need=()
    for pair in mksquashfs:squashfs-tools setfattr:attr umoci:umoci skopeo:skopeo zstd:zstd; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
    done
    [ ${#need[@]} -eq 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
cargo fuzz build -O -s "$SANITIZER" >/dev/null 2>&1 || cargo fuzz build -O -s "$SANITIZER"

if [ "${1:-}" = repro ]; then
    exec "$BIN/$2" "$3"
fi
SECONDS_EACH=${1:-60}
shift || true
targets=("${@:-${ALL[@]}}")
[ $# -gt 0 ] || targets=("${ALL[@]}")
bash "$HERE/seeds.sh" "$HERE/seeds" >/dev/null
mkdir -p logs
printf '| target | seconds | executions | exec/s | corpus | crashes |\n|---|---|---|---|---|---|\n' >logs/summary.md
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    # -rss_limit_mb: an allocation sized by an untrusted field shows as an OOM crash.
    # -timeout: one input taking 10 s is a hang. -close_fd_mask=3: targets print nothing useful.
    # The text formats' keywords (fuzz/dicts/TARGET.dict) help libFuzzer past the parsers.
    dict=()
    [ ! -f "dicts/$t.dict" ] || dict=(-dict="dicts/$t.dict")
    "$BIN/$t" "corpus/$t" "seeds/$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 \
        -malloc_limit_mb=1024 -timeout=10 -close_fd_mask=3 -print_final_stats=1 "${dict[@]}" \
        -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1 || true
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "logs/$t.log" | tail -1)
    crashes=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
    corpus=$(find "corpus/$t" -type f | wc -l)
    rate=$(( ${runs:-0} / (${secs:-$SECONDS_EACH} > 0 ? ${secs:-$SECONDS_EACH} : 1) ))
    printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "${secs:-?}" "${runs:-?}" "$rate" "$corpus" "$crashes" >>logs/summary.md
    # A run that did not finish (no final stats) is not counted.
    if [ -n "${runs:-}" ] && [ -n "${secs:-}" ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%F)" "$(git rev-parse --short HEAD)" \
            "$t" "$secs" "$runs" "$corpus" "$crashes" "FUZZ_SANITIZER=$SANITIZER fuzz/run.sh $SECONDS_EACH ${*:-}" >>ledger.tsv
    fi
    if [ "$crashes" -gt 0 ]; then
        grep -m3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "logs/$t.log" | sed "s/^/$t: /" || true
    fi
done
cat logs/summary.md
bash "$HERE/table.sh"
