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

# build_launcher: `cargo build --release` at $ROOT, recording how in BUILD_NOTE (a failure is
# recorded with `fail`, and the binary already there, if any, is measured). Needs cargo: a
# toolchain cannot be downloaded on these machines, so a missing one is an error.
# shellcheck disable=SC2034  # BUILD_NOTE is read by the calling script
build_launcher() {
    local cargo out t0
    cargo=$(command -v cargo || true)
    [[ -z $cargo && -x $HOME/.cargo/bin/cargo ]] && cargo=$HOME/.cargo/bin/cargo
    if [[ -z $cargo ]]; then
        echo "$(basename "$0"): cargo not found: install Rust >= 1.85 (rustup), or pass --no-build" >&2
        exit 1
    fi
    log "building the launcher (cargo build --release)"
    t0=$(date +%s)
    if out=$(cd "$ROOT" && "$cargo" build --release 2>&1); then
        BUILD_NOTE="built by this run: \`cargo build --release\` ($(($(date +%s) - t0)) s)"
    else
        fail "cargo build --release" "cd $ROOT && cargo build --release" 1 "$(tail -n 30 <<<"$out")"
        BUILD_NOTE="BUILD FAILED (see Failures); measured an older binary if one was there"
    fi
}

# smallfiles_image IMAGE ROOTFS: unless IMAGE exists, a zstd SquashFS of ROOTFS (a busybox root)
# plus /data/small/d0..d19 with 100 files of 4 KiB of random data each (2,000 files), readable
# by all. Used by ab.sh and smallfiles.sh.
smallfiles_image() {
    local img=$1 rootfs=$2 tree d
    [ -e "$img" ] && return 0
    tree=$(mktemp -d "$(dirname "$img")/tree.XXXXXX")
    cp -a "$rootfs/." "$tree/"
    chmod --reference="$rootfs" "$tree"
    rm -rf "$tree/data"
    for d in $(seq 0 19); do
        mkdir -p "$tree/data/small/d$d"
        head -c $((100 * 4096)) /dev/urandom | split -b 4096 -a 2 -d - "$tree/data/small/d$d/f"
    done
    mksquashfs "$tree" "$img.tmp" -comp zstd -noappend -quiet -no-progress
    chmod 644 "$img.tmp"
    mv "$img.tmp" "$img"
    rm -rf "$tree"
}
