#!/usr/bin/env bash
# scripts/gpu-node-check.sh - check GPU binding on a real NVIDIA node, the way a user would use it.
#
#   scripts/gpu-node-check.sh image OUT.sqfs             # on a build machine: gcc, mksquashfs, busybox
#   sudo scripts/gpu-node-check.sh run LAUNCHER IMAGE [CUDA_CHECK]   # on the GPU node, as root
#
# `image` makes a small image with a glibc (this machine's), busybox and /usr/bin/cuda-check
# (tests/fixtures/gpu/cuda-check.c: dlopen()s libcuda.so.1, JIT-compiles a PTX kernel, runs it on
# every GPU and checks the result). No CUDA toolkit is needed to build it.
#
# `run` needs only the launcher binary and that image on the node. As root it prints the node's
# facts, creates an unprivileged user (LAUNCHER_TEST_USER, default launcher-gpu, uid 4343), makes
# /dev/fuse usable, and runs every check as that user: plain exec, the --nv plan, nvidia-smi and
# cuda-check inside the container, --contain with CUDA_VISIBLE_DEVICES, GPU_NODE_RANKS (8) ranks
# of one job step sharing one instance, and --no-gpu as a negative control. If the driver is outside /etc/ld.so.cache or nvidia-smi outside the default program
# paths, it writes the user's site config (library_paths, binary_paths) as an admin would, and
# says so. Then the cost of --nv: one launch from a cold page cache (root drops the caches)
# and paired warm launches, beside an older build when GPU_NODE_BASELINE names one.
# Ends with "N passed, M failed"; exit 0 only when none failed.
set -uo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

make_image() {
    local out=$1 work bb multiarch lib
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    bb=$(command -v busybox || true)
    if [[ -z $bb ]] || ! file -L "$bb" 2>/dev/null | grep -q static; then
        (cd "$work" && apt-get download busybox-static >/dev/null) || return 1
        dpkg -x "$work"/busybox-static_*.deb "$work/bb" && bb=$work/bb/bin/busybox
    fi
    local root=$work/root
    mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,home,usr/bin,lib64,var/tmp}
    cp "$bb" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
    done
    multiarch=$(gcc -print-multiarch)
    mkdir -p "$root/lib/$multiarch"
    # What nvidia-smi and the driver libraries link against (all glibc, plus the GCC runtimes).
    for lib in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libgcc_s.so.1 libstdc++.so.6; do
        cp -L "/lib/$multiarch/$lib" "$root/lib/$multiarch/" 2>/dev/null ||
            cp -L "/usr/lib/$multiarch/$lib" "$root/lib/$multiarch/"
    done
    cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
    gcc -O2 -o "$root/usr/bin/cuda-check" "$HERE/tests/fixtures/gpu/cuda-check.c" -ldl
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    mksquashfs "$root" "$out" -comp zstd -all-root -noappend -quiet -no-progress
    cp "$root/usr/bin/cuda-check" "$(dirname "$out")/cuda-check"
    echo "gpu-node-check: wrote $out and $(dirname "$out")/cuda-check"
}

PASS=0 FAIL=0
# check NAME EXPECT CMD...: run CMD as the user; pass when it exits 0 and its output matches the
# extended regex EXPECT (or, when EXPECT starts with '!', when it fails).
check() {
    local name=$1 expect=$2 out rc
    shift 2
    out=$(as_user "$@" 2>&1)
    rc=$?
    local ok=0
    if [[ $expect == '!'* ]]; then
        ((rc != 0)) && grep -Eq -- "${expect#!}" <<<"$out" && ok=1
    else
        ((rc == 0)) && grep -Eq -- "$expect" <<<"$out" && ok=1
    fi
    if ((ok)); then PASS=$((PASS + 1)); echo "PASS: $name"; else FAIL=$((FAIL + 1)); echo "FAIL: $name (exit $rc)"; fi
    printf '    $ %s\n' "$*"
    sed 's/^/    | /' <<<"$out" | head -n 60
}

run_checks() {
    local launcher=$1 image=$2 cuda_check=${3:-}
    local user=${LAUNCHER_TEST_USER:-launcher-gpu} uid=${LAUNCHER_TEST_UID:-4343}
    ((EUID == 0)) || { echo "gpu-node-check: run as root (it creates the test user)" >&2; exit 2; }

    echo "== node"
    uname -srm
    grep -E '^(PRETTY_NAME)=' /etc/os-release 2>/dev/null
    echo "cpus: $(nproc)"
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 8
    ls -l /dev/nvidia* /dev/fuse 2>&1 | head -n 20
    echo "user namespaces: max_user_namespaces=$(cat /proc/sys/user/max_user_namespaces 2>/dev/null)" \
        "unprivileged_userns_clone=$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null || echo n/a)" \
        "apparmor_restrict=$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns 2>/dev/null || echo n/a)"
    grep -w fuse /proc/filesystems || echo "no fuse in /proc/filesystems"
    echo "ld.so.cache driver entries:"
    ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvidia-ml\.so|libnvidia-ptxjitcompiler\.so' | sed 's/^/  /'
    local smi libcuda
    smi=$(command -v nvidia-smi || true)
    libcuda=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}') )
    [[ -n $libcuda ]] || libcuda=$(find /usr/local/nvidia /usr/lib /usr/lib64 /usr/local/cuda* -name 'libcuda.so.1' 2>/dev/null | head -n 1)
    echo "nvidia-smi: ${smi:-none}; libcuda.so.1: ${libcuda:-none}"

    echo "== set-up"
    if ! id -u "$user" >/dev/null 2>&1; then
        useradd -m -u "$uid" -s /bin/sh "$user" 2>/dev/null || {
            echo "$user:x:$uid:$uid::/home/$user:/bin/sh" >>/etc/passwd
            echo "$user:x:$uid:" >>/etc/group
            mkdir -p "/home/$user" && chown "$uid:$uid" "/home/$user"
        }
    fi
    uid=$(id -u "$user")
    local gid home
    gid=$(id -g "$user")
    home=$(getent passwd "$user" | cut -d: -f6)
    [[ -c /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229
    chmod 0666 /dev/fuse
    local dir=/tmp/gpu-node-check
    rm -rf "$dir" && mkdir -p "$dir" && chmod 0755 "$dir"
    install -m 0755 "$launcher" "$dir/launcher"
    install -m 0644 "$image" "$dir/image.sqfs"
    [[ -n $cuda_check ]] && install -m 0755 "$cuda_check" "$dir/cuda-check"
    install -m 0755 "$HERE/benches/paired.py" "$dir/paired.py"
    # GPU_NODE_BASELINE: another launcher build, measured beside this one.
    local B=""
    if [[ -n ${GPU_NODE_BASELINE:-} ]]; then
        B=$dir/launcher-baseline
        install -m 0755 "$GPU_NODE_BASELINE" "$B"
    fi
    # The site config an admin would write for a driver outside the defaults.
    local cfg=$home/.config/launcher/launcher.yaml extra_lib="" extra_bin=""
    if [[ -n $libcuda ]] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
        extra_lib=$(dirname "$(readlink -f "$libcuda")")
    fi
    case $(dirname "${smi:-/usr/bin/x}") in
        /usr/bin | /usr/sbin | /bin | /sbin | /usr/local/bin | /usr/local/nvidia/bin) ;;
        *) extra_bin=$(dirname "$smi") ;;
    esac
    if [[ -n $extra_lib$extra_bin ]]; then
        mkdir -p "$(dirname "$cfg")"
        {
            echo "gpu:"
            echo "  nvidia:"
            [[ -n $extra_lib ]] && echo "    library_paths: [$extra_lib]"
            [[ -n $extra_bin ]] && echo "    binary_paths: [$extra_bin, /usr/bin, /bin]"
        } >"$cfg"
        chown -R "$uid:$gid" "$home/.config"
        echo "driver outside the defaults: wrote $cfg:"
        sed 's/^/  /' "$cfg"
    fi
    if command -v setpriv >/dev/null; then
        as_user() { setpriv --reuid="$uid" --regid="$gid" --clear-groups env -i HOME="$home" USER="$user" \
            PATH=/usr/local/bin:/usr/bin:/bin ${CUDA_VISIBLE_DEVICES:+CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES} "$@"; }
    else
        as_user() { su -s /bin/sh "$user" -c "cd / && $(printf '%q ' env -i HOME="$home" USER="$user" PATH=/usr/local/bin:/usr/bin:/bin "$@")"; }
    fi
    cd /tmp || exit 2

    echo "== checks (as $user, uid $uid)"
    local L=$dir/launcher I=$dir/image.sqfs
    check "plain exec keeps the uid" "^$uid\$" "$L" exec "$I" id -u
    check "--nv plan finds the driver" "libcuda" "$L" --debug exec --nv "$I" true
    check "nvidia-smi -L in the container" "GPU 0" "$L" exec --nv "$I" nvidia-smi -L
    check "nvidia-smi query in the container" "[0-9]+ MiB" "$L" exec --nv "$I" \
        nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id --format=csv,noheader
    check "cuda-check (PTX kernel) in the container" "GPU 0: .*: ok" "$L" exec --nv "$I" cuda-check
    check "libcuda comes from /.launcher.d/libs" "libcuda from /\.launcher\.d/libs/" "$L" exec --nv "$I" cuda-check
    check "uid inside --nv" "uid $uid" "$L" exec --nv "$I" cuda-check
    CUDA_VISIBLE_DEVICES=0 check "--contain with CUDA_VISIBLE_DEVICES=0: device nodes" "nvidia0" \
        "$L" exec --nv --contain "$I" sh -c 'ls /dev; ls /dev/nvidia-caps 2>/dev/null; true'
    CUDA_VISIBLE_DEVICES=0 check "--contain cuda-check" "GPU 0: .*: ok" "$L" exec --nv --contain "$I" cuda-check
    # Ranks of one job step (as srun starts them) share one instance: one mount, one FUSE
    # server; each rank runs its own CUDA context on the GPU.
    local ranks=${GPU_NODE_RANKS:-8}
    check "$ranks ranks of one job step share one instance, each runs the kernel" \
        "^$ranks ranks ok, 1 mount namespace" sh -c '
        L=$1 I=$2 n=$3
        out=$(mktemp -d)
        for r in $(seq 0 $((n - 1))); do
            SLURM_JOB_ID=4343 SLURM_STEP_ID=0 SLURM_PROCID=$r "$L" exec --nv "$I" \
                sh -c "readlink /proc/self/ns/mnt; cuda-check" >"$out/$r" 2>&1 &
        done
        wait
        cat "$out"/*
        ok=$(cat "$out"/* | grep -c "kernel over .*: ok")
        ns=$(cat "$out"/* | grep "^mnt:" | sort -u | wc -l)
        rm -rf "$out"
        echo "$ok ranks ok, $ns mount namespace(s)"
        [ "$ok" = "$n" ] && [ "$ns" = 1 ]' sh "$L" "$I" "$ranks"
    check "--no-gpu: no driver inside (negative control)" "!libcuda\.so\.1" "$L" exec --no-gpu "$I" cuda-check
    if [[ -n $cuda_check ]]; then
        check "cuda-check natively (baseline)" "GPU 0: .*: ok" "$dir/cuda-check"
    fi
    if [[ -w /proc/sys/vm/drop_caches ]]; then
        echo "== --nv from a cold page cache (caches dropped before each; 'host facts' reads the driver)"
        local bin
        for bin in "$L" ${B:+"$B"}; do
            sync
            echo 3 >/proc/sys/vm/drop_caches
            as_user "$bin" --debug exec --nv "$I" true 2>&1 | grep -E 'debug: .*(host facts|plan built|command exited)' |
                sed "s|^launcher: debug: |    $(basename "$bin"): |"
        done
    fi
    if [[ -x $dir/paired.py ]] && command -v python3 >/dev/null; then
        echo "== cost of --nv (paired, ${GPU_NODE_ROUNDS:-20} rounds; ratios are to the first command)"
        as_user python3 "$dir/paired.py" "${GPU_NODE_ROUNDS:-20}" \
            "$L" exec "$I" true :: "$L" exec --nv "$I" true ${B:+:: "$B" exec --nv "$I" true} \
            :: "$L" exec --nv "$I" cuda-check ${cuda_check:+:: "$dir/cuda-check"} 2>&1 | grep -v '^cuda-check: '
    fi
    echo "$PASS passed, $FAIL failed"
    ((FAIL == 0))
}

case ${1:-} in
    image) [[ $# == 2 ]] || { sed -n '2,6p' "$0"; exit 2; }; make_image "$2" ;;
    run) [[ $# == 3 || $# == 4 ]] || { sed -n '2,6p' "$0"; exit 2; }; run_checks "$2" "$3" "${4:-}" ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
