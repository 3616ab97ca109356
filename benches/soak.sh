#!/usr/bin/env bash
# benches/soak.sh - leak and soak checks of the launcher, as the unprivileged test user:
#   1. SEQ sequential launches (default 1000): all succeed; the launcher's descriptor count
#      is the same every time;
#   2. PAR concurrent launches (default 64), each reading files: all succeed;
#   3. SIGKILL of the launcher at about 30 moments from start-up to a running command;
#   then: no process left, no FUSE connection left (/sys/fs/fuse/connections), no file left in
#   the user's rendezvous directories, no new file in /tmp, /var/tmp or /dev/shm (what an
#   unprivileged launcher could leak: the host's mount table is not among them, as its mounts
#   live in namespaces of its own);
#   4. peak RSS (VmHWM) of the FUSE server (the launcher's parent process) reading a 1 GiB
#      file end to end, and for /bin/true, for comparison.
#
# Usage (as root, on Debian 12): benches/soak.sh [--seq N] [--par N] [--gib N] [--bin PATH]
#   --bin PATH   launcher binary to test (default: cargo build --release, target/release)
#   --gib N      size of the big file in GiB (default 1; 0 skips step 4)
# Fixtures and the test user come from tests/setup.sh ($LAUNCHER_FIXTURES). Prints a
# Markdown summary; exits 1 if a check failed.
set -uo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SEQ=1000 PAR=64 GIB=1 BIN=""
while (($#)); do
    case "$1" in
        --seq) SEQ=$2; shift ;;
        --par) PAR=$2; shift ;;
        --gib) GIB=$2; shift ;;
        --bin) BIN=$2; shift ;;
        *) echo "usage: benches/soak.sh [--seq N] [--par N] [--gib N] [--bin PATH]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "benches/soak.sh: run as root (it switches to the test user)" >&2; exit 1; }
bash "$ROOT/tests/setup.sh" >/dev/null || exit 1
FIX=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
USER_NAME=$(cat "$FIX/user")
U=$(id -u "$USER_NAME") G=$(id -g "$USER_NAME")
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release -q) || exit 1
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/launcher
fi
W=$(mktemp -d /var/tmp/soak.XXXXXX)
chmod 755 "$W"
trap 'rm -rf "$W"' EXIT
cp "$BIN" "$W/launcher" && chmod 755 "$W/launcher"
MARK="soakmark$$"
IMG="$W/$MARK.sqfs"
ln -s "$FIX/busybox-gzip.sqfs" "$IMG"
# exec: in `as_user ... &`, $! is then the launcher itself, not a subshell around it.
as_user() { exec setpriv --reuid="$U" --regid="$G" --clear-groups "$W/launcher" "$@"; }
FAILED=0
check() { if eval "$2"; then echo "| $1 | ok |"; else echo "| $1 | **FAILED** |"; FAILED=1; fi; }
snap() { ls -A /tmp /var/tmp /dev/shm 2>/dev/null | grep -v -e '^launcher-e2e-' -e "^$(basename "$W")\$" | sort; }

# fusectl lists every FUSE connection; these machines do not mount it, so a process of ours
# mounts it in a mount namespace of its own (nothing changes on the host) and we read it there.
unshare --mount --propagation private sh -c \
    'mount -t fusectl fusectl /sys/fs/fuse/connections && exec sleep infinity' &
FUSECTL_PID=$!
trap 'kill $FUSECTL_PID 2>/dev/null; rm -rf "$W"' EXIT
FUSECTL=/proc/$FUSECTL_PID/root/sys/fs/fuse/connections
fusectl_mounted() { grep -q ' /sys/fs/fuse/connections .* - fusectl ' "/proc/$FUSECTL_PID/mountinfo" 2>/dev/null; }
for _ in $(seq 50); do fusectl_mounted && break; sleep 0.1; done
fusectl_mounted || { echo "benches/soak.sh: mounting fusectl failed" >&2; exit 1; }
# A connection's directory is owned by the uid that mounted it (the kernel's fusectl sets it
# from the connection's user): count only the test user's, so another user's FUSE mounts on the
# machine are not taken for a leak. The test user's own other launches still count: run the
# soak alone.
fuse_conns() { find "$FUSECTL" -mindepth 1 -maxdepth 1 -uid "$U" -printf '%f\n' | sort; }
# The rendezvous directories of apply/share.rs for this user (no XDG_RUNTIME_DIR here).
share_files() { find "/tmp/launcher-$U" "/dev/shm/launcher-$U" -mindepth 1 2>/dev/null; }
conns_before=$(fuse_conns)
# The leak check below must be able to see a connection: a running launch shows one.
as_user exec "$IMG" /bin/sleep 3 >/dev/null 2>&1 &
probe=$!
seen=0
for _ in $(seq 50); do
    [ "$(fuse_conns)" != "$conns_before" ] && { seen=1; break; }
    sleep 0.1
done
wait "$probe"
share_before=$(share_files)
tmp_before=$(snap)
echo "## Soak: $SEQ sequential, $PAR concurrent launches as $USER_NAME ($(uname -r), $(nproc) CPUs)"
echo
echo "| check | result |"
echo "|---|---|"
check "fusectl shows a running launch's FUSE connection (so the leak check can see one)" '[ $seen = 1 ]'

t0=$(date +%s.%N)
seq_fail=0
: >"$W/fds"
for _ in $(seq "$SEQ"); do
    (as_user exec "$IMG" /bin/sh -c 'ls /proc/$PPID/fd | wc -l') >>"$W/fds" 2>>"$W/seq.err" || seq_fail=$((seq_fail + 1))
done
t1=$(date +%s.%N)
fd_counts=$(sort -u "$W/fds" | tr '\n' ' ')
check "$SEQ sequential launches succeed ($(echo "($t1 - $t0) * 1000 / $SEQ" | bc) ms each)" '[ $seq_fail = 0 ]'
check "launcher descriptors identical across launches (count: $fd_counts)" '[ "$(sort -u "$W/fds" | wc -l)" = 1 ]'

pids=()
for i in $(seq "$PAR"); do
    as_user exec "$IMG" /bin/sh -c 'cat /data/tree/f* /data/big >/dev/null && echo ok' >"$W/par.$i" 2>&1 &
    pids+=($!)
done
par_fail=0
i=0
for p in "${pids[@]}"; do
    i=$((i + 1))
    wait "$p" || { par_fail=$((par_fail + 1)); cat "$W/par.$i" >>"$W/par.err"; }
done
check "$PAR concurrent launches succeed" '[ $par_fail = 0 ]'

# Densely over the first 40 ms (the child assembles the root through FUSE), then later.
KILLS="$(seq 0 0.002 0.04) 0.06 0.08 0.1 0.15 0.2 0.3 0.5 0.8 1 2 4"
for d in $KILLS; do
    as_user exec "$IMG" /bin/sh -c "sleep 1000 # $MARK" >/dev/null 2>&1 &
    p=$!
    sleep "$d"
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
done
gone=0
for _ in $(seq 100); do
    # A process stuck in the kernel may hide its command line: also look by executable.
    pgrep -f "$MARK" >/dev/null || [ -n "$(find /proc -maxdepth 2 -name exe -lname "$W/launcher*" 2>/dev/null)" ] || { gone=1; break; }
    sleep 0.1
done
check "SIGKILL of the launcher at $(wc -w <<<"$KILLS") moments: no process left" '[ $gone = 1 ]'
# A connection ends when the last descriptor of its /dev/fuse closes: give the kernel a moment.
for _ in $(seq 50); do
    new_conns=$(comm -13 <(echo "$conns_before") <(fuse_conns) | tr '\n' ' ')
    [ -z "$new_conns" ] && break
    sleep 0.1
done
check "no FUSE connection left ${new_conns:+(connections $new_conns)}" '[ -z "$new_conns" ]'
new_share=$(comm -13 <(echo "$share_before") <(share_files) | tr '\n' ' ')
check "no file left in the rendezvous directories ${new_share:+($new_share)}" '[ -z "$new_share" ]'
new_tmp=$(comm -13 <(echo "$tmp_before") <(snap) | grep -e launcher -e "$MARK" | tr '\n' ' ')
check "no new file in /tmp, /var/tmp, /dev/shm ${new_tmp:+($new_tmp)}" '[ -z "$new_tmp" ]'

if [ "$GIB" != 0 ]; then
    tree="$W/bigtree"
    mkdir -p "$tree/bin"
    cp "$FIX/rootfs/bin/busybox" "$tree/bin/"
    for a in sh cat grep; do ln -s busybox "$tree/bin/$a"; done
    # Incompressible (stored) and compressible (decompressed) halves.
    half=$((GIB * 512))
    head -c "${half}M" /dev/urandom >"$tree/big"
    yes "soak line with some text to compress $RANDOM" 2>/dev/null | head -c "${half}M" >>"$tree/big"
    mksquashfs "$tree" "$W/big.sqfs" -comp zstd -Xcompression-level 1 -noappend -quiet -no-progress >/dev/null
    rm -rf "$tree"
    chmod 644 "$W/big.sqfs"
    idle=$( (as_user exec "$W/big.sqfs" /bin/sh -c 'grep VmHWM /proc/$PPID/status') | awk '{print $2}')
    t0=$(date +%s.%N)
    read_hwm=$( (as_user exec "$W/big.sqfs" /bin/sh -c 'cat /big >/dev/null && grep VmHWM /proc/$PPID/status') | awk '{print $2}')
    t1=$(date +%s.%N)
    secs=$(printf "%.1f" "$(echo "$t1 - $t0" | bc)")
    check "FUSE server peak RSS: /bin/true $((idle / 1024)) MiB; reading ${GIB} GiB end to end $((read_hwm / 1024)) MiB (${secs} s, start-up included)" '[ -n "$read_hwm" ] && [ "$read_hwm" -lt 524288 ]'
fi
for f in seq.err par.err; do
    [ -s "$W/$f" ] && { echo; echo "First errors ($f):"; head -5 "$W/$f"; }
done
exit $FAILED
