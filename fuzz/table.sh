#!/usr/bin/env bash
# Writes docs/reliability.md's fuzz table from fuzz/ledger.tsv (every run of fuzz/run.sh), between
# the lines `<!-- fuzz-table:begin -->` and `<!-- fuzz-table:end -->`: per target, the runs, the
# total executions (their sum, computed here, never typed), the rate and corpus of the last run,
# and the crashes. `fuzz/table.sh --check` fails when the committed table is not what the
# ledger gives (run by .ci/run).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DOC=$HERE/../docs/reliability.md
LEDGER=$HERE/ledger.tsv
GOAL=10000000

table() {
    echo "| target | runs (date, seconds, executions) | total executions | of the $((GOAL / 1000000))M goal | exec/s (last run) | corpus (last recorded) | crashes, hangs, OOM |"
    echo "|---|---|---|---|---|---|---|"
    grep -v '^#' "$LEDGER" | awk -F'\t' -v goal="$GOAL" '
        function commas(n,   s, out) {
            s = sprintf("%d", n); out = ""
            while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
            return s out
        }
        NF >= 7 {
            if (!($3 in total)) order[++n] = $3
            total[$3] += $5; crashes[$3] += $7
            runs[$3] = runs[$3] (runs[$3] == "" ? "" : "; ") $1 " " $4 " s " commas($5)
            rate[$3] = ($4 > 0 ? int($5 / $4) : 0)
            if ($6 != "-") corpus[$3] = $6
        }
        END {
            for (i = 1; i <= n; i++) {
                t = order[i]
                printf "| %s | %s | **%s** | %d%% | %s | %s | %d |\n", t, runs[t], commas(total[t]),
                    int(100 * total[t] / goal), commas(rate[t]), (t in corpus ? commas(corpus[t]) : "-"), crashes[t]
            }
        }'
}

# Exactly one begin marker and one end marker after it, or nothing is rewritten: a doc with
# the end marker lost would otherwise be cut off after the table.
begin=$(grep -c '^<!-- fuzz-table:begin -->$' "$DOC" || true)
end=$(grep -c '^<!-- fuzz-table:end -->$' "$DOC" || true)
first_begin=$(grep -n '^<!-- fuzz-table:begin -->$' "$DOC" | cut -d: -f1 | head -1 || true)
first_end=$(grep -n '^<!-- fuzz-table:end -->$' "$DOC" | cut -d: -f1 | head -1 || true)
if [ "$begin" != 1 ] || [ "$end" != 1 ] || [ "$first_begin" -ge "$first_end" ]; then
    echo "fuzz/table.sh: $DOC needs one '<!-- fuzz-table:begin -->' line and one '<!-- fuzz-table:end -->' line after it" >&2
    exit 1
fi
new=$(mktemp)
trap 'rm -f "$new"' EXIT
awk -v table="$(table)" '
    /<!-- fuzz-table:end -->/ { print table; skip = 0 }
    !skip { print }
    /<!-- fuzz-table:begin -->/ { skip = 1 }
' "$DOC" >"$new"
if [ "${1:-}" = --check ]; then
    if ! cmp -s "$new" "$DOC"; then
        echo "fuzz/table.sh: docs/reliability.md's fuzz table is not what fuzz/ledger.tsv gives; run fuzz/table.sh" >&2
        diff "$DOC" "$new" >&2 || true
        exit 1
    fi
    exit 0
fi
cp "$new" "$DOC"
