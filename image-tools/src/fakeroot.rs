//! Fake root for definition-file builds: a command runs as uid 0 in a staged root that the
//! caller owns, with no privilege, no subuid range and no setuid helper.
//!
//! - A new user and mount namespace maps uid and gid 0 to the caller (one line each, which
//!   the kernel lets any user write), so the caller's files are root's inside.
//! - The staged directory becomes the root (pivot_root), with the host's /proc bound (a
//!   private /proc would need a PID namespace too), a minimal /dev on a tmpfs (null, zero,
//!   full, random, urandom, tty bound from the host), a tmpfs on /tmp and the host's
//!   /etc/resolv.conf; the host's network is used.
//! - A seccomp filter makes the calls that need ids the namespace cannot map return 0
//!   without doing anything: chown and its variants, the set*id calls and setgroups, and
//!   mknod of device nodes. This is Charliecloud's `ch-image --force=seccomp`: package
//!   managers chown files to system users and drop privileges to them (apt-get to `_apt`),
//!   which would fail with EINVAL or EPERM here; seen as succeeding, they go on, and the
//!   files stay the caller's on disk, root's in the image (written with `all_root`).
//!
//! The filter is a small BPF program written here (see docs/dependencies.md for why not a
//! crate): per architecture, one comparison per faked call.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Device nodes bound from the host into the build's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// A command to run as fake root in `root`.
pub struct FakerootCommand<'a> {
    pub root: &'a Path,
    /// argv; argv[0] is looked up in the staged root, so it must be absolute.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What failed while entering the fake root (the step), or the spawn itself.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct Error {
    pub step: String,
    #[source]
    pub source: io::Error,
}

/// Steps of the child's set-up, reported by number through a pipe when one fails (the child
/// cannot allocate a message between fork and exec).
const STEPS: &[&str] = &[
    "unshare(CLONE_NEWUSER|CLONE_NEWNS) (are unprivileged user namespaces enabled?)",
    "writing /proc/self/setgroups",
    "writing /proc/self/uid_map",
    "writing /proc/self/gid_map",
    "making / a private mount",
    "binding the staged root onto itself",
    "binding /proc",
    "mounting a tmpfs on /dev",
    "creating /dev entries",
    "binding a device from the host's /dev",
    "mounting a tmpfs on /tmp",
    "binding the host's /etc/resolv.conf",
    "pivot_root into the staged root",
    "setting no_new_privs",
    "installing the seccomp filter",
    "PR_SET_PDEATHSIG",
];

/// Paths the child needs, made before the fork (no allocation after it).
struct Prepared {
    root: CString,
    proc_: CString,
    dev: CString,
    tmp: CString,
    /// (host device, file in the staged /dev)
    devices: Vec<(CString, CString)>,
    /// (link, target) in the staged /dev
    dev_links: Vec<(CString, CString)>,
    dev_dirs: Vec<CString>,
    resolv: Option<CString>,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    filter: Vec<libc::sock_filter>,
}

fn cstr(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

impl Prepared {
    fn new(root: &Path) -> Result<Prepared, Error> {
        let step = |s: &str| {
            let s = s.to_string();
            move |e: io::Error| Error { step: s, source: e }
        };
        // Mount points the staged root may lack (a scratch or minimal image).
        for d in ["proc", "dev", "tmp", "etc"] {
            let p = root.join(d);
            if std::fs::symlink_metadata(&p).is_err() {
                std::fs::create_dir_all(&p).map_err(step(&format!("creating {}", p.display())))?;
            }
        }
        let resolv = root.join("etc/resolv.conf");
        let resolv = match std::fs::symlink_metadata(&resolv) {
            Ok(m) if m.file_type().is_file() => Some(resolv),
            // A dangling or absolute symlink (systemd-resolved's) cannot be bound over safely;
            // name resolution then follows the image's own configuration.
            Ok(_) => None,
            Err(_) => {
                std::fs::write(&resolv, b"")
                    .map_err(step(&format!("creating {}", resolv.display())))?;
                Some(resolv)
            }
        };
        let host_resolv_ok = Path::new("/etc/resolv.conf").exists();
        let c = |p: &Path| cstr(p).map_err(step("preparing paths"));
        // SAFETY: getuid and getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let dev = root.join("dev");
        Ok(Prepared {
            root: c(root)?,
            proc_: c(&root.join("proc"))?,
            dev: c(&dev)?,
            tmp: c(&root.join("tmp"))?,
            devices: DEVICES
                .iter()
                .filter(|d| Path::new("/dev").join(d).exists())
                .map(|d| Ok((c(&Path::new("/dev").join(d))?, c(&dev.join(d))?)))
                .collect::<Result<_, Error>>()?,
            dev_links: [
                ("fd", "/proc/self/fd"),
                ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"),
                ("ptmx", "pts/ptmx"),
            ]
            .iter()
            .map(|(l, t)| Ok((c(&dev.join(l))?, c(Path::new(t))?)))
            .collect::<Result<_, Error>>()?,
            dev_dirs: vec![c(&dev.join("shm"))?, c(&dev.join("pts"))?],
            resolv: match (resolv, host_resolv_ok) {
                (Some(r), true) => Some(c(&r)?),
                _ => None,
            },
            uid_map: format!("0 {uid} 1\n").into_bytes(),
            gid_map: format!("0 {gid} 1\n").into_bytes(),
            filter: filter(),
        })
    }
}

/// Runs `cmd` as fake root and waits for it; stdin is /dev/null, stdout and stderr are the
/// launcher's.
pub fn run(cmd: &FakerootCommand) -> Result<ExitStatus, Error> {
    let prep = Prepared::new(cmd.root)?;
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error {
            step: "creating a pipe".into(),
            source: io::Error::last_os_error(),
        });
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let argv0 = cmd
        .argv
        .first()
        .cloned()
        .unwrap_or_else(|| "/bin/sh".into());
    let mut c = Command::new(&argv0);
    c.args(cmd.argv.iter().skip(1))
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec. It only makes system calls
    // on data prepared before the fork (no allocation, no locks), as a child of a
    // multi-threaded process must.
    unsafe {
        c.pre_exec(move || {
            enter(&prep).map_err(|(step, err)| {
                let b = [step as u8];
                // SAFETY: write_fd is the pipe's open write end; b is one valid byte.
                libc::write(write_fd, b.as_ptr().cast(), 1);
                err
            })
        });
    }
    let spawned = c.spawn();
    // SAFETY: write_fd is ours and open; the child has its own copy.
    unsafe { libc::close(write_fd) };
    let mut b = [0u8; 1];
    // SAFETY: read_fd is the pipe's open read end, b one writable byte. The read returns when
    // the child wrote a step or when its end closed at exec or exit.
    let n = unsafe { libc::read(read_fd, b.as_mut_ptr().cast(), 1) };
    // SAFETY: read_fd is ours and open.
    unsafe { libc::close(read_fd) };
    let step = if n == 1 {
        STEPS.get(b[0] as usize).copied().unwrap_or("setting up")
    } else {
        "starting"
    };
    let mut child = spawned.map_err(|e| Error {
        step: format!("{step} for '{argv0}'"),
        source: e,
    })?;
    child.wait().map_err(|e| Error {
        step: format!("waiting for '{argv0}'"),
        source: e,
    })
}

/// The child's sequence, between fork and exec. Err((step index, error)).
fn enter(p: &Prepared) -> Result<(), (usize, io::Error)> {
    let last = || io::Error::last_os_error();
    let check = |step: usize, rc: libc::c_int| if rc < 0 { Err((step, last())) } else { Ok(()) };
    // SAFETY (for every call below): the arguments are NUL-terminated strings and buffers
    // prepared before the fork that live as long as `p`; null pointers are passed only where
    // the kernel accepts them (mount's source, type and data).
    unsafe {
        check(
            15,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
        )?;
        check(0, libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
        write_proc(c"/proc/self/setgroups", b"deny").map_err(|e| (1, e))?;
        write_proc(c"/proc/self/uid_map", &p.uid_map).map_err(|e| (2, e))?;
        write_proc(c"/proc/self/gid_map", &p.gid_map).map_err(|e| (3, e))?;
        let null = std::ptr::null::<libc::c_char>();
        check(
            4,
            libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
        )?;
        let bind = |step: usize, src: &CStr, dst: &CStr, flags: libc::c_ulong| {
            check(
                step,
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND | flags,
                    std::ptr::null(),
                ),
            )
        };
        bind(5, &p.root, &p.root, libc::MS_REC)?;
        bind(6, c"/proc", &p.proc_, libc::MS_REC)?;
        check(
            7,
            libc::mount(
                c"tmpfs".as_ptr(),
                p.dev.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"mode=755".as_ptr().cast(),
            ),
        )?;
        for (host, file) in &p.devices {
            let fd = libc::open(
                file.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o666,
            );
            check(8, fd)?;
            libc::close(fd);
            bind(9, host, file, 0)?;
        }
        for (link, target) in &p.dev_links {
            check(8, libc::symlink(target.as_ptr(), link.as_ptr()))?;
        }
        for d in &p.dev_dirs {
            check(8, libc::mkdir(d.as_ptr(), 0o755))?;
        }
        check(
            10,
            libc::mount(
                c"tmpfs".as_ptr(),
                p.tmp.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777".as_ptr().cast(),
            ),
        )?;
        if let Some(r) = &p.resolv {
            check(
                11,
                libc::mount(
                    c"/etc/resolv.conf".as_ptr(),
                    r.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ),
            )?;
        }
        check(12, libc::chdir(p.root.as_ptr()))?;
        check(
            12,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
        )?;
        check(12, libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        check(12, libc::chdir(c"/".as_ptr()))?;
        check(13, libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        let prog = libc::sock_fprog {
            len: p.filter.len() as u16,
            filter: p.filter.as_ptr() as *mut libc::sock_filter,
        };
        check(
            14,
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
                0,
                0,
            ),
        )?;
    }
    Ok(())
}

/// Writes `data` to a /proc file with plain system calls (no allocation).
fn write_proc(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: path is NUL-terminated; data is a valid buffer of data.len() bytes; the fd is
    // closed on every path.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

// Classic BPF, as seccomp reads it.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
/// SECCOMP_RET_ERRNO with errno 0: the call returns 0, having done nothing.
const RET_FAKE: u32 = 0x0005_0000;
// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_low(i: u32) -> u32 {
    // The low 32 bits of argument i (little-endian hosts: x86_64, aarch64).
    16 + 8 * i
}
const S_IFMT: u32 = 0o170_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;

/// The calls faked for one architecture: (AUDIT_ARCH_*, always faked, mknod-like (number,
/// index of the mode argument): faked for device nodes only, so fifos and sockets are made).
struct ArchCalls {
    arch: u32,
    fake: &'static [u32],
    mknod: &'static [(u32, u32)],
}

#[cfg(target_arch = "x86_64")]
const ARCHES: &[ArchCalls] = &[
    ArchCalls {
        arch: 0xc000_003e, // AUDIT_ARCH_X86_64
        fake: &[
            libc::SYS_chown as u32,
            libc::SYS_lchown as u32,
            libc::SYS_fchown as u32,
            libc::SYS_fchownat as u32,
            libc::SYS_setuid as u32,
            libc::SYS_setgid as u32,
            libc::SYS_setreuid as u32,
            libc::SYS_setregid as u32,
            libc::SYS_setresuid as u32,
            libc::SYS_setresgid as u32,
            libc::SYS_setgroups as u32,
            libc::SYS_setfsuid as u32,
            libc::SYS_setfsgid as u32,
        ],
        mknod: &[(libc::SYS_mknod as u32, 1), (libc::SYS_mknodat as u32, 2)],
    },
    // 32-bit programs on x86_64 (i386 numbers, asm/unistd_32.h): the 16-bit id calls and
    // their 32-bit-id successors.
    ArchCalls {
        arch: 0x4000_0003, // AUDIT_ARCH_I386
        fake: &[
            182, 16, 95, 298, // chown lchown fchown fchownat
            212, 198, 207, // chown32 lchown32 fchown32
            23, 46, 70, 71, 164, 170, 81, 138, 139, // setuid ... setfsgid
            213, 214, 203, 204, 208, 210, 206, 215, 216, // the *32 variants
        ],
        mknod: &[(14, 1), (297, 2)],
    },
];

#[cfg(target_arch = "aarch64")]
const ARCHES: &[ArchCalls] = &[ArchCalls {
    arch: 0xc000_00b7, // AUDIT_ARCH_AARCH64
    fake: &[
        libc::SYS_fchown as u32,
        libc::SYS_fchownat as u32,
        libc::SYS_setuid as u32,
        libc::SYS_setgid as u32,
        libc::SYS_setreuid as u32,
        libc::SYS_setregid as u32,
        libc::SYS_setresuid as u32,
        libc::SYS_setresgid as u32,
        libc::SYS_setgroups as u32,
        libc::SYS_setfsuid as u32,
        libc::SYS_setfsgid as u32,
    ],
    mknod: &[(libc::SYS_mknodat as u32, 2)],
}];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCHES: &[ArchCalls] = &[];

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(k: u32, jt: usize, jf: usize) -> libc::sock_filter {
    // Blocks are a few dozen instructions: the offsets fit in a byte.
    libc::sock_filter {
        code: BPF_JEQ_K,
        jt: jt as u8,
        jf: jf as u8,
        k,
    }
}

/// The filter: for each architecture a block that checks the arch, then the call number;
/// calls of other architectures are allowed.
pub(crate) fn filter() -> Vec<libc::sock_filter> {
    let mut prog = Vec::new();
    for a in ARCHES {
        // Layout: [ld arch][jeq arch ? next : skip block][ld nr][jeq nr -> FAKE]...
        // [mknod checks]...[ret ALLOW][ret FAKE]
        let body_len = 1 + a.fake.len() + 6 * a.mknod.len() + 2;
        prog.push(stmt(BPF_LD_W_ABS, OFF_ARCH));
        prog.push(jump(a.arch, 0, body_len));
        let start = prog.len();
        let fake_at = start + body_len - 1;
        prog.push(stmt(BPF_LD_W_ABS, OFF_NR));
        for &nr in a.fake {
            let here = prog.len();
            prog.push(jump(nr, fake_at - here - 1, 0));
        }
        for &(nr, arg) in a.mknod {
            // [jeq nr ? 0 : 5][ld arg][and S_IFMT][jeq CHR -> FAKE][jeq BLK -> FAKE : 0][ret ALLOW]
            prog.push(jump(nr, 0, 5));
            prog.push(stmt(BPF_LD_W_ABS, off_arg_low(arg)));
            prog.push(stmt(BPF_AND_K, S_IFMT));
            let here = prog.len();
            prog.push(jump(S_IFCHR, fake_at - here - 1, 0));
            prog.push(jump(S_IFBLK, fake_at - here - 2, 0));
            prog.push(stmt(BPF_RET_K, RET_ALLOW));
        }
        prog.push(stmt(BPF_RET_K, RET_ALLOW));
        prog.push(stmt(BPF_RET_K, RET_FAKE));
        debug_assert_eq!(prog.len(), fake_at + 1);
    }
    prog.push(stmt(BPF_RET_K, RET_ALLOW));
    prog
}

/// `path` (absolute, as written in a definition file) inside `root`, with the symlinks of
/// the staged tree followed inside it, as the container would see them: an absolute link
/// target is taken from `root`, `..` never leaves it. The last component is followed too
/// when `follow_last`. The result names no symlink under `root` (except a last component
/// when not followed), so host-side copies cannot be led outside the tree.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> io::Result<PathBuf> {
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .rev()
        .collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let mut p = root.to_path_buf();
        p.extend(cur.iter());
        p.push(&c);
        let is_last = todo.is_empty();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!("{path}: too many symlinks")));
                }
                let target = std::fs::read_link(&p)?;
                let t = target.to_string_lossy();
                if t.starts_with('/') {
                    cur.clear();
                }
                for part in t.split('/').filter(|c| !c.is_empty() && *c != ".").rev() {
                    todo.push(part.to_string());
                }
            }
            _ => cur.push(c),
        }
    }
    let mut p = root.to_path_buf();
    p.extend(cur.iter());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_jumps_stay_inside_it() {
        let f = filter();
        for (i, ins) in f.iter().enumerate() {
            if ins.code == BPF_JEQ_K {
                assert!(i + 1 + (ins.jt as usize) < f.len());
                assert!(i + 1 + (ins.jf as usize) < f.len());
            }
        }
        assert_eq!(f.last().map(|i| i.k), Some(RET_ALLOW));
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("usr/evil")).unwrap();
        std::os::unix::fs::symlink("../../..", r.join("usr/bin/up")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/bin/x", true).unwrap(),
            r.join("usr/bin/x")
        );
        assert_eq!(
            resolve_in_root(r, "/usr/evil/passwd", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, "/bin/up/../../x", true).unwrap(),
            r.join("x")
        );
        assert_eq!(resolve_in_root(r, "/bin", false).unwrap(), r.join("bin"));
    }

    /// The filter in a real process: root (the test runs as root in CI) would change the
    /// owner and make the node; under the filter both calls succeed and nothing happens.
    #[test]
    fn chown_and_mknod_are_faked() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let node = d.path().join("node");
        let fifo = d.path().join("fifo");
        let prog = filter();
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg("chown 12345:12345 \"$1\" && mknod \"$2\" c 1 3 && mkfifo \"$3\"")
            .arg("sh")
            .arg(&f)
            .arg(&node)
            .arg(&fifo);
        // SAFETY: only prctl calls on a program built before the fork.
        unsafe {
            c.pre_exec(move || {
                let fp = libc::sock_fprog {
                    len: prog.len() as u16,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &fp as *const libc::sock_fprog,
                        0,
                        0,
                    ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let st = c.status().unwrap();
        assert!(st.success());
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata(&f).unwrap().uid();
        assert_ne!(uid, 12345);
        assert!(!node.exists(), "the device node was made");
        assert!(fifo.exists(), "fifos are not faked");
    }
}
