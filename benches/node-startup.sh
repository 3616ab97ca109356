#!/usr/bin/env bash
# benches/node-startup.sh - start-up of `/bin/true` on a node without build tools (a GPU or
# many-core node), from carried binaries: one or more launcher builds against Charliecloud's
# ch-run and native, in alternation (benches/paired.py: ratios are per round, to the first command).
#
# Usage (as root):  benches/node-startup.sh USER ROUNDS CHRUN_DIR LAUNCHER[,LAUNCHER...] IMAGE...
#   USER       an existing unprivileged user to measure as (scripts/gpu-node-check.sh makes one)
#   CHRUN_DIR  holds ch-run and lib/ (Debian's charliecloud-runtime, libsquashfuse0, libfuse3-3
#              unpacked with dpkg -x; LD_LIBRARY_PATH points at lib/)
#   IMAGE      SquashFS images with /bin/true (mksquashfs -comp zstd / gzip of a busybox root)
# Needs /dev/fuse usable by USER and python3. Prints the machine, its load, and one table per image.
set -uo pipefail
export LC_ALL=C
(($# >= 5)) || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
((EUID == 0)) || { echo "node-startup.sh: run as root (it copies the binaries where USER can read them)" >&2; exit 2; }
user=$1 rounds=$2 chrun=$3 launchers=$4
shift 4
uid=$(id -u "$user") gid=$(id -g "$user") || exit 2
home=$(getent passwd "$user" | cut -d: -f6)
dir=/tmp/node-startup
rm -rf "$dir" && mkdir -p "$dir/lib" && chmod 0755 "$dir"
install -m 0755 "$(dirname "${BASH_SOURCE[0]}")/paired.py" "$dir/paired.py"
install -m 0755 "$chrun/ch-run" "$dir/ch-run"
cp -a "$chrun"/lib/. "$dir/lib/"
names=()
i=0
IFS=, read -ra ls <<<"$launchers"
for l in "${ls[@]}"; do
    i=$((i + 1))
    install -m 0755 "$l" "$dir/launcher$i"
    names+=("launcher$i=$l")
done
echo "== $(nproc) cpus, $(uname -r), load: $(cut -d' ' -f1-3 /proc/loadavg); ${names[*]}"
for img in "$@"; do
    base=$(basename "$img")
    install -m 0644 "$img" "$dir/$base"
    cmds=()
    for ((k = 1; k <= i; k++)); do
        cmds+=("$dir/launcher$k" exec "$dir/$base" /bin/true ::)
    done
    cmds+=(env "LD_LIBRARY_PATH=$dir/lib" "$dir/ch-run" "$dir/$base" -- /bin/true :: /bin/true)
    echo "== $base: ${cmds[*]}"
    (cd /tmp && setpriv --reuid="$uid" --regid="$gid" --clear-groups env -i HOME="$home" USER="$user" \
        PATH=/usr/local/bin:/usr/bin:/bin python3 "$dir/paired.py" "$rounds" "${cmds[@]}" 2>&1)
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
