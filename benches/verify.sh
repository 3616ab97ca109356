#!/usr/bin/env bash
# Issue 20: what `exec --verify` costs at start-up. The signed digest covers the whole
# partition, so a verified launch reads and hashes the image; this measures it against a plain
# launch, paired (benches/paired.py), on two signed SIFs: the Debian base of
# tests/setup-debian.sh (53 MB) and a 1 GiB one (the fixtures' busybox root and 1 GiB of random
# data, made in /var/tmp and removed at the end), the image file in the page cache; 1 and 8
# launches at once (as `srun -n 8` starts them); a check remembered from an earlier launch
# (src/verify_memo.rs) and a first check (one launch hashes, the others wait for it).
#
#   sudo benches/verify.sh [ROUNDS]
#
# The binary: $LAUNCHER, else target/release/launcher (cargo build --release first).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
rounds=${1:-20}
FIX=${LAUNCHER_FIXTURES:-/var/tmp/launcher-fixtures}
BIN=${LAUNCHER:-$HERE/../target/release/launcher}
USER_NAME=$(cat "$FIX/user")
U=$(id -u "$USER_NAME") G=$(id -g "$USER_NAME")
HOMEDIR=$(getent passwd "$USER_NAME" | cut -d: -f6)
W=/var/tmp/launcher-bench-verify
rm -rf "$W"
mkdir -p "$W/big/data"
trap 'rm -rf "$W"' EXIT
chmod 755 "$W"
install -m 755 "$BIN" "$W/launcher"
openssl genpkey -algorithm ed25519 -out "$W/key.pem" 2>/dev/null
openssl pkey -in "$W/key.pem" -pubout -out "$W/pub.pem"
chmod 644 "$W/pub.pem"
"$W/launcher" build "$W/debian.sif" "$FIX-debian/bookworm.sqfs" >/dev/null
cp -a "$FIX/rootfs" "$W/big/root"
head -c $((1 << 30)) /dev/urandom >"$W/big/root/random"
"$W/launcher" build "$W/big.sif" "$W/big/root" >/dev/null
rm -rf "$W/big"
for i in debian big; do
    "$W/launcher" sign -k "$W/key.pem" "$W/$i.sif" >/dev/null
    chmod 644 "$W/$i.sif"
    cat "$W/$i.sif" >/dev/null
done
mkdir -p "$W/u"
chown "$U:$G" "$W/u" # the user's cache directories (memos) go here
userenv=(env -i HOME="$HOMEDIR" USER="$USER_NAME" LOGNAME="$USER_NAME" PATH=/usr/local/bin:/usr/bin:/bin)
as_user=(setpriv --reuid="$U" --regid="$G" --clear-groups "${userenv[@]}")
cd /
echo "# benches/verify.sh: $(date -u +%F), $(nproc) CPUs, $(uname -r)"
echo "# load before: $(uptime | sed 's/.*load/load/')"
for i in debian big; do
    img=$W/$i.sif
    for n in 1 8; do
        echo
        echo "## $i.sif ($(stat -c %s "$img") bytes), $n launches at once: A exec; B exec --verify,"
        echo "## remembered (verify_memo.rs); C exec --verify, first time (its memo removed before)"
        # n launches at once, as the ranks of one node would start; $1: the memo directory,
        # removed first when $2 is "cold".
        par="export LAUNCHER_CACHEDIR=\$1; [ \$2 = cold ] && rm -rf \$1; shift 2;
             for r in \$(seq $n); do \"\$@\" & done; wait"
        python3 "$HERE/paired.py" "$rounds" \
            "${as_user[@]}" sh -c "$par" sh "$W/u/memo-warm" warm "$W/launcher" exec "$img" /bin/true :: \
            "${as_user[@]}" sh -c "$par" sh "$W/u/memo-warm" warm "$W/launcher" exec --verify --key "$W/pub.pem" "$img" /bin/true :: \
            "${as_user[@]}" sh -c "$par" sh "$W/u/memo-cold" cold "$W/launcher" exec --verify --key "$W/pub.pem" "$img" /bin/true
    done
done
echo
echo "# load after: $(uptime | sed 's/.*load/load/')"
