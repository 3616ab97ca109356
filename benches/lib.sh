# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced; they set REPORT, FAILS, SUMMARY, NFAIL
# and define log() before using these).

# md LINE...: append lines to the report.
md() { printf '%s\n' "$@" >>"$REPORT"; }

# fail WHAT COMMAND RC OUTPUT: record a failure (shown in the report and at the end).
fail() {
    NFAIL=$((NFAIL + 1))
    log "FAILED: $1 (exit $3)"
    {
        printf '%d. **%s** (exit status %s)\n\n' "$NFAIL" "$1" "$3"
        printf '   ```\n   $ %s\n' "$2"
        printf '%s\n' "$4" | head -c 3000 | sed 's/^/   /'
        printf '   ```\n\n'
    } >>"$FAILS"
}

# summary NAME VALUE FASTEST TARGET VERDICT: one line of the summary table.
summary() { printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" >>"$SUMMARY"; }

# rand_bytes N SEED: N reproducible pseudo-random bytes.
rand_bytes() {
    head -c "$1" < <(openssl enc -aes-128-ctr -pbkdf2 -nosalt -pass "pass:$2" </dev/zero 2>/dev/null)
}

# fmt_cmd ARG...: the exact argv, shell-quoted.
fmt_cmd() {
    local s="" a
    for a in "$@"; do s+="$(printf '%q' "$a") "; done
    printf '%s' "${s% }"
}
