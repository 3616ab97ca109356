//! Fake root for definition-file builds: a command runs as uid 0 in a staged root that the
//! caller owns, with no privilege, no subuid range and no setuid helper.
//!
//! - A new user and mount namespace maps uid and gid 0 to the caller (one line each, which
//!   the kernel lets any user write), so the caller's files are root's inside.
//! - The staged directory becomes the root (pivot_root), with the host's /proc bound (a
//!   private /proc would need a PID namespace too), a minimal /dev on a tmpfs (null, zero,
//!   full, random, urandom, tty bound from the host, a devpts of its own), a tmpfs on /tmp and the host's
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
    /// The caller's stdin (an interactive shell); else /dev/null, as a build wants.
    pub inherit_stdin: bool,
    /// `root` is this overlay's merged view (`OverlayRoot::path`): the command runs in a
    /// user namespace nested in the overlay keeper's, which holds the mount.
    pub overlay: Option<&'a OverlayRoot>,
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
    "passing the seccomp listener to the launcher",
    "joining the overlay keeper's namespaces",
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
    dev_pts: CString,
    resolv: Option<CString>,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    filter: Vec<libc::sock_filter>,
    /// The child's end of the socket the seccomp listener is sent over.
    sock: i32,
    /// The overlay keeper's user and mount namespaces (descriptors), joined first.
    join: Option<(i32, i32)>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some((u, m)) = self.join {
            // SAFETY: both descriptors were opened by Prepared::new and are closed only here.
            unsafe {
                libc::close(u);
                libc::close(m);
            }
        }
    }
}

fn cstr(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

impl Prepared {
    /// `root` is the staged root as the launcher sees it; with `overlay`, the mounts are
    /// made at the merged directory's path in the keeper's mount namespace instead.
    fn new(root: &Path, sock: i32, overlay: Option<&OverlayRoot>) -> Result<Prepared, Error> {
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
        let (mut uid, mut gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut join = None;
        let mut root = root;
        let resolv = match overlay {
            None => resolv,
            Some(o) => {
                // In the keeper's namespace the caller is already 0: the nested one maps 0 to 0.
                (uid, gid) = (0, 0);
                join = Some(o.namespaces().map_err(step(STEPS[17]))?);
                root = o.inner.as_path();
                resolv.map(|_| root.join("etc/resolv.conf"))
            }
        };
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
            dev_pts: c(&dev.join("pts"))?,
            resolv: match (resolv, host_resolv_ok) {
                (Some(r), true) => Some(c(&r)?),
                _ => None,
            },
            uid_map: format!("0 {uid} 1\n").into_bytes(),
            gid_map: format!("0 {gid} 1\n").into_bytes(),
            filter: filter(true),
            sock,
            join,
        })
    }
}

/// Runs `cmd` as fake root and waits for it; stdin is /dev/null unless `inherit_stdin`,
/// stdout and stderr are the launcher's.
pub fn run(cmd: &FakerootCommand) -> Result<ExitStatus, Error> {
    let mut sv = [0i32; 2];
    // SAFETY: sv is a valid array of two ints for socketpair to fill.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(Error {
            step: "creating a socket pair".into(),
            source: io::Error::last_os_error(),
        });
    }
    let (ours, theirs) = (sv[0], sv[1]);
    let result = run_with(cmd, ours, theirs);
    // SAFETY: both ends are ours and open (the child's copies are its own).
    unsafe {
        libc::close(ours);
        libc::close(theirs);
    }
    result
}

fn run_with(cmd: &FakerootCommand, ours: i32, theirs: i32) -> Result<ExitStatus, Error> {
    let prep = Prepared::new(cmd.root, theirs, cmd.overlay)?;
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
        .stdin(if cmd.inherit_stdin {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
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
    // The child sent the listener before its exec succeeded.
    let listener = match recv_fd(ours) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error {
                step: "receiving the seccomp listener".into(),
                source: e,
            });
        }
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::Builder::new()
        .name("fakeroot-ids".into())
        .spawn(move || supervise(listener, &stop2))
        .map_err(|e| Error {
            step: "starting the id supervisor".into(),
            source: e,
        });
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    // The namespace's identity, to find what the command leaves running.
    let userns = std::fs::metadata(format!("/proc/{}/ns/user", child.id()))
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let status = child.wait().map_err(|e| Error {
        step: format!("waiting for '{argv0}'"),
        source: e,
    });
    if let Some(ns) = userns {
        kill_namespace(ns);
    }
    // Processes the command left running were killed above; the listener closes.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    status
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
        if let Some((user, mnt)) = p.join {
            check(17, libc::setns(user, libc::CLONE_NEWUSER))?;
            check(17, libc::setns(mnt, libc::CLONE_NEWNS))?;
        }
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
        // A devpts of the namespace's own (apt and dpkg open a pseudo-terminal for logs).
        check(
            8,
            libc::mount(
                c"devpts".as_ptr(),
                p.dev_pts.as_ptr(),
                c"devpts".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
            ),
        )?;
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
        let listener = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        ) as libc::c_int;
        check(14, listener)?;
        check(16, send_fd(p.sock, listener))?;
        libc::close(listener);
        libc::close(p.sock);
    }
    Ok(())
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS), with stack buffers only.
///
/// # Safety
/// `sock` and `fd` must be open descriptors.
unsafe fn send_fd(sock: i32, fd: i32) -> libc::c_int {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one descriptor's control message, 8-byte aligned as cmsghdr needs.
    let mut ctrl = [0u64; 4];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    // `as _`: the field is a usize in glibc and a u32 in musl.
    msg.msg_controllen = libc::CMSG_SPACE(4) as _;
    let cmsg = libc::CMSG_FIRSTHDR(&msg);
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
    if libc::sendmsg(sock, &msg, 0) < 0 {
        -1
    } else {
        0
    }
}

/// Receives one descriptor sent by `send_fd`.
fn recv_fd(sock: i32) -> io::Result<i32> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut ctrl = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; its pointers are set to live buffers below, and
    // the control message is read only when the kernel filled one in.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&ctrl) as _;
        if libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("no descriptor received"));
        }
        Ok(std::ptr::read_unaligned(
            libc::CMSG_DATA(cmsg).cast::<i32>(),
        ))
    }
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
/// SECCOMP_RET_USER_NOTIF: the supervisor answers.
const RET_NOTIFY: u32 = 0x7fc0_0000;
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

/// The calls handled for one architecture.
struct ArchCalls {
    arch: u32,
    /// chown and its variants: always faked in the kernel (errno 0).
    fake: &'static [u32],
    /// set*id and setgroups: emulated by the supervisor, or faked where there is none.
    set_ids: &'static [u32],
    /// getuid, geteuid, getgid, getegid: answered by the supervisor (the emulated ids).
    get_ids: &'static [u32],
    /// mknod-like (number, index of the mode argument): faked for device nodes only, so
    /// fifos and sockets are made.
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
        ],
        set_ids: &[
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
        get_ids: &[
            libc::SYS_getuid as u32,
            libc::SYS_geteuid as u32,
            libc::SYS_getgid as u32,
            libc::SYS_getegid as u32,
            libc::SYS_getresuid as u32,
            libc::SYS_getresgid as u32,
        ],
        mknod: &[(libc::SYS_mknod as u32, 1), (libc::SYS_mknodat as u32, 2)],
    },
    // 32-bit programs on x86_64 (i386 numbers, asm/unistd_32.h): the 16-bit id calls and
    // their 32-bit-id successors, all faked in the kernel (not emulated).
    ArchCalls {
        arch: 0x4000_0003, // AUDIT_ARCH_I386
        fake: &[
            182, 16, 95, 298, // chown lchown fchown fchownat
            212, 198, 207, // chown32 lchown32 fchown32
            23, 46, 70, 71, 164, 170, 81, 138, 139, // setuid ... setfsgid
            213, 214, 203, 204, 208, 210, 206, 215, 216, // the *32 variants
        ],
        set_ids: &[],
        get_ids: &[],
        mknod: &[(14, 1), (297, 2)],
    },
];

#[cfg(target_arch = "aarch64")]
const ARCHES: &[ArchCalls] = &[ArchCalls {
    arch: 0xc000_00b7, // AUDIT_ARCH_AARCH64
    fake: &[libc::SYS_fchown as u32, libc::SYS_fchownat as u32],
    set_ids: &[
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
    get_ids: &[
        libc::SYS_getuid as u32,
        libc::SYS_geteuid as u32,
        libc::SYS_getgid as u32,
        libc::SYS_getegid as u32,
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
/// calls of other architectures are allowed. With `notify`, the id calls go to the
/// supervisor (SECCOMP_RET_USER_NOTIF); without, set*id is faked and get*id left alone.
pub(crate) fn filter(notify: bool) -> Vec<libc::sock_filter> {
    let mut prog = Vec::new();
    for a in ARCHES {
        let gets: &[u32] = if notify { a.get_ids } else { &[] };
        // Layout: [ld arch][jeq arch ? next : skip block][ld nr][jeq nr -> FAKE]...
        // [jeq nr -> IDS]...[jeq nr -> NOTIFY]...[mknod checks]...[ret ALLOW][ret IDS]
        // [ret FAKE][ret NOTIFY]
        let body_len = 1 + a.fake.len() + a.set_ids.len() + gets.len() + 6 * a.mknod.len() + 4;
        prog.push(stmt(BPF_LD_W_ABS, OFF_ARCH));
        prog.push(jump(a.arch, 0, body_len));
        let start = prog.len();
        let ids_at = start + body_len - 3;
        let fake_at = start + body_len - 2;
        let notify_at = start + body_len - 1;
        prog.push(stmt(BPF_LD_W_ABS, OFF_NR));
        for (list, to) in [(a.fake, fake_at), (a.set_ids, ids_at), (gets, notify_at)] {
            for &nr in list {
                let here = prog.len();
                prog.push(jump(nr, to - here - 1, 0));
            }
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
        prog.push(stmt(BPF_RET_K, if notify { RET_NOTIFY } else { RET_FAKE }));
        prog.push(stmt(BPF_RET_K, RET_FAKE));
        prog.push(stmt(BPF_RET_K, RET_NOTIFY));
        debug_assert_eq!(prog.len(), notify_at + 1);
    }
    prog.push(stmt(BPF_RET_K, RET_ALLOW));
    prog
}

/// The ids a process believes it has (those it set through the supervisor).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Ids {
    uid: [u32; 4], // real, effective, saved, fs
    gid: [u32; 4],
}

/// What the supervisor answers to one call.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Value(i64),
    Errno(i32),
    /// getresuid/getresgid: these three ids written to these three addresses, then 0.
    Write([u32; 3], [u64; 3]),
}

/// One emulated call, with the kernel's rules for a process with and without root's
/// privileges (euid 0): a process that "dropped" to another user cannot get root back, which
/// apt checks after dropping to `_apt`.
fn emulate(ids: &mut Ids, nr: i64, args: &[u64; 6]) -> Answer {
    const KEEP: u32 = u32::MAX; // -1: leave this id
    let a = |i: usize| args[i] as u32;
    let privileged = ids.uid[1] == 0;
    // May an unprivileged process take `v`? Only one of its current real/effective/saved ids.
    let allowed = |t: &[u32; 4], v: u32| v == KEEP || privileged || t[..3].contains(&v);
    // set*res*id: each id given, or kept.
    let setres = |t: &mut [u32; 4], r: u32, e: u32, s: u32| -> Answer {
        if ![r, e, s].iter().all(|&v| allowed(t, v)) {
            return Answer::Errno(libc::EPERM);
        }
        for (slot, v) in [(0, r), (1, e), (2, s)] {
            if v != KEEP {
                t[slot] = v;
            }
        }
        t[3] = t[1];
        Answer::Value(0)
    };
    // set*re*id: the saved id follows the effective one when the real one is set or the
    // effective one becomes other than the old real one.
    let setre = |t: &mut [u32; 4], r: u32, e: u32| -> Answer {
        if !allowed(t, r) || !allowed(t, e) || (!privileged && r != KEEP && r != t[0] && r != t[1])
        {
            return Answer::Errno(libc::EPERM);
        }
        let old_real = t[0];
        if r != KEEP {
            t[0] = r;
        }
        if e != KEEP {
            t[1] = e;
        }
        if r != KEEP || (e != KEEP && e != old_real) {
            t[2] = t[1];
        }
        t[3] = t[1];
        Answer::Value(0)
    };
    // set*id: all three for a privileged process, else only the effective one.
    let set = |t: &mut [u32; 4], v: u32| -> Answer {
        if privileged {
            *t = [v; 4];
            Answer::Value(0)
        } else if t[0] == v || t[2] == v {
            t[1] = v;
            t[3] = v;
            Answer::Value(0)
        } else {
            Answer::Errno(libc::EPERM)
        }
    };
    let setfs = |t: &mut [u32; 4], v: u32| -> Answer {
        let old = t[3];
        if privileged || t.contains(&v) {
            t[3] = v;
        }
        Answer::Value(i64::from(old))
    };
    match nr {
        n if n == libc::SYS_getuid => Answer::Value(i64::from(ids.uid[0])),
        n if n == libc::SYS_geteuid => Answer::Value(i64::from(ids.uid[1])),
        n if n == libc::SYS_getgid => Answer::Value(i64::from(ids.gid[0])),
        n if n == libc::SYS_getegid => Answer::Value(i64::from(ids.gid[1])),
        n if n == libc::SYS_getresuid => Answer::Write(
            [ids.uid[0], ids.uid[1], ids.uid[2]],
            [args[0], args[1], args[2]],
        ),
        n if n == libc::SYS_getresgid => Answer::Write(
            [ids.gid[0], ids.gid[1], ids.gid[2]],
            [args[0], args[1], args[2]],
        ),
        n if n == libc::SYS_setuid => set(&mut ids.uid, a(0)),
        n if n == libc::SYS_setgid => {
            // Changing gids takes root's privilege (the effective uid), not a gid.
            if privileged {
                ids.gid = [a(0); 4];
                Answer::Value(0)
            } else {
                set(&mut ids.gid, a(0))
            }
        }
        n if n == libc::SYS_setreuid => setre(&mut ids.uid, a(0), a(1)),
        n if n == libc::SYS_setregid => setre(&mut ids.gid, a(0), a(1)),
        n if n == libc::SYS_setresuid => setres(&mut ids.uid, a(0), a(1), a(2)),
        n if n == libc::SYS_setresgid => setres(&mut ids.gid, a(0), a(1), a(2)),
        n if n == libc::SYS_setfsuid => setfs(&mut ids.uid, a(0)),
        n if n == libc::SYS_setfsgid => setfs(&mut ids.gid, a(0)),
        n if n == libc::SYS_setgroups => {
            if privileged {
                Answer::Value(0)
            } else {
                Answer::Errno(libc::EPERM)
            }
        }
        _ => Answer::Value(0),
    }
}

/// Writes the three ids of getresuid/getresgid into the caller's memory.
fn write_ids(pid: u32, ids: [u32; 3], addrs: [u64; 3]) -> bool {
    addrs.iter().zip(ids).all(|(&addr, id)| {
        let bytes = id.to_ne_bytes();
        let local = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: 4,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: 4,
        };
        // SAFETY: the local iovec points at 4 readable bytes; the remote one is checked by
        // the kernel (EFAULT for a bad address), in a process of ours.
        unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) == 4 }
    })
}

/// Serves the filter's notifications until `stop` is set: keeps each process's emulated ids
/// (a new process starts with its parent's, as fork keeps credentials).
fn supervise(listener: i32, stop: &std::sync::atomic::AtomicBool) {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    // Keyed by (thread-group id, its start time), so that a reused pid starts afresh.
    let mut procs: HashMap<(u32, u64), Ids> = HashMap::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if r <= 0 {
            continue;
        }
        if pfd.revents & libc::POLLHUP != 0 && pfd.revents & libc::POLLIN == 0 {
            // Every process under the filter is gone.
            break;
        }
        // SAFETY: an all-zero seccomp_notif is valid (plain integers), as RECV requires.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: listener is the seccomp listener; req is a writable seccomp_notif.
        if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            // ENOENT: the caller died before we read it; EINTR: retry.
            continue;
        }
        let key = process_key(req.pid);
        let ids = match key {
            Some(k) => {
                if !procs.contains_key(&k) {
                    let inherited = parent_key(k.0)
                        .and_then(|p| procs.get(&p).copied())
                        .unwrap_or_default();
                    procs.insert(k, inherited);
                }
                procs.get_mut(&k)
            }
            None => None,
        };
        let mut scratch = Ids::default();
        let answer = emulate(
            ids.unwrap_or(&mut scratch),
            i64::from(req.data.nr),
            &req.data.args,
        );
        let (val, error) = match answer {
            Answer::Value(v) => (v, 0),
            Answer::Errno(e) => (-1, -e),
            Answer::Write(ids, addrs) => {
                // The request must still be pending, or the pid may be another process now.
                // SAFETY: listener is the seccomp listener; the id is a plain u64.
                let valid =
                    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) }
                        == 0;
                if valid && write_ids(req.pid, ids, addrs) {
                    (0, 0)
                } else {
                    (-1, -libc::EFAULT)
                }
            }
        };
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val,
            error,
            flags: 0,
        };
        // SAFETY: resp is a valid seccomp_notif_resp for the request just read. A failure
        // (the caller died meanwhile) needs no handling.
        unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
    // SAFETY: the listener is ours; closing it fails any later intercepted call (ENOSYS).
    unsafe { libc::close(listener) };
}

/// Kills the processes left in the user namespace `ns` (daemons a package started in
/// %post): they would keep writing into a tree about to be squashed or removed.
fn kill_namespace(ns: u64) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // Twice: a process may fork while the first pass runs.
    for _ in 0..2 {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let in_ns = std::fs::metadata(format!("/proc/{pid}/ns/user"))
                .map(|m| m.ino() == ns)
                .unwrap_or(false);
            if in_ns {
                // SAFETY: kill has no memory preconditions; the pid was just seen in our
                // own namespace (a reuse in between would need a new process of ours there).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// (thread-group id, start time) of the thread `tid`.
fn process_key(tid: u32) -> Option<(u32, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let tgid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()?;
    Some((tgid, start_time(tgid)?))
}

/// The key of the parent of process `pid`.
fn parent_key(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold blanks): state ppid ...
    let ppid: u32 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    process_key(ppid)
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // starttime is field 22; after ')' the fields start at 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
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

/// What failed while the overlay keeper set up its mount (by step number, as `STEPS`).
const KEEPER_STEPS: &[&str] = &[
    "PR_SET_PDEATHSIG",
    "unshare(CLONE_NEWUSER|CLONE_NEWNS) (are unprivileged user namespaces enabled?)",
    "writing /proc/self/setgroups",
    "writing /proc/self/uid_map",
    "writing /proc/self/gid_map",
    "making / a private mount",
    "mounting the overlay (unprivileged overlayfs needs Linux 5.11 or later)",
    "closing inherited descriptors",
];

/// A writable root made of a read-only tree (`lower`, never written) and the changes made
/// on top of it (`upper`), as an overlayfs mount that a keeper process holds in a user and
/// mount namespace of its own (uid and gid 0 mapped to the caller, `userxattr`, as the
/// kernel allows without privilege since Linux 5.11). The launcher reaches the merged view
/// through `/proc/KEEPER/root` (`path`); fake-root commands join the keeper's namespaces
/// (`FakerootCommand::overlay`). Dropping it kills the keeper, which unmounts the overlay.
pub struct OverlayRoot {
    pid: libc::pid_t,
    /// The merged directory's path in the keeper's mount namespace.
    inner: PathBuf,
    /// The merged directory as this process reaches it.
    path: PathBuf,
}

impl OverlayRoot {
    /// Mounts `lower` + `upper` (with `work`, an empty directory on `upper`'s file system)
    /// on the directory `merged`.
    pub fn mount(
        lower: &Path,
        upper: &Path,
        work: &Path,
        merged: &Path,
    ) -> Result<OverlayRoot, Error> {
        let prep_err = |e: io::Error| Error {
            step: "preparing the overlay".into(),
            source: e,
        };
        for p in [lower, upper, work, merged] {
            if p.as_os_str().as_bytes().iter().any(|b| b",:\\".contains(b)) {
                return Err(prep_err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: overlayfs options cannot hold a path with ',', ':' or '\\'",
                        p.display()
                    ),
                )));
            }
        }
        let opts = cstr(format!(
            "lowerdir={},upperdir={},workdir={},userxattr",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .map_err(prep_err)?;
        let target = cstr(merged).map_err(prep_err)?;
        // SAFETY: getuid and getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let uid_map = format!("0 {uid} 1\n").into_bytes();
        let gid_map = format!("0 {gid} 1\n").into_bytes();
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(prep_err(io::Error::last_os_error()));
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        // SAFETY: fork has no preconditions. The child of this multi-threaded process makes
        // only system calls on data prepared above (no allocation, no locks) and never
        // returns: it reports and waits for SIGKILL, or exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; every pointer is to a NUL-terminated string or buffer
            // prepared before the fork.
            unsafe { keeper(write_fd, read_fd, &opts, &target, &uid_map, &gid_map) }
        }
        let fork_err = io::Error::last_os_error();
        // SAFETY: write_fd is ours and open; the child has its own copy.
        unsafe { libc::close(write_fd) };
        if pid < 0 {
            // SAFETY: read_fd is ours and open.
            unsafe { libc::close(read_fd) };
            return Err(Error {
                step: "starting the overlay keeper".into(),
                source: fork_err,
            });
        }
        let mut b = [0u8; 5];
        let mut got = 0usize;
        while got < b.len() {
            // SAFETY: read_fd is open; the buffer has b.len() - got bytes from got.
            let n = unsafe { libc::read(read_fd, b[got..].as_mut_ptr().cast(), b.len() - got) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        // SAFETY: read_fd is ours and open.
        unsafe { libc::close(read_fd) };
        let me = OverlayRoot {
            pid,
            inner: merged.to_path_buf(),
            path: Path::new(&format!("/proc/{pid}/root"))
                .join(merged.strip_prefix("/").unwrap_or(merged)),
        };
        match (got, b[0]) {
            (5, 255) => Ok(me),
            (5, step) => Err(Error {
                step: KEEPER_STEPS
                    .get(step as usize)
                    .copied()
                    .unwrap_or("setting up")
                    .to_string(),
                source: io::Error::from_raw_os_error(i32::from_ne_bytes([b[1], b[2], b[3], b[4]])),
            }),
            _ => Err(Error {
                step: "starting the overlay keeper".into(),
                source: io::Error::other("it exited before reporting"),
            }),
        }
    }

    /// The merged root as this process reaches it (`/proc/KEEPER/root/...`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keeper's user and mount namespaces, opened (close-on-exec).
    fn namespaces(&self) -> io::Result<(i32, i32)> {
        let open = |ns: &str| -> io::Result<i32> {
            let p = cstr(format!("/proc/{}/ns/{ns}", self.pid))?;
            // SAFETY: p is NUL-terminated.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        };
        let user = open("user")?;
        match open("mnt") {
            Ok(mnt) => Ok((user, mnt)),
            Err(e) => {
                // SAFETY: user was opened above.
                unsafe { libc::close(user) };
                Err(e)
            }
        }
    }
}

impl Drop for OverlayRoot {
    fn drop(&mut self) {
        // SAFETY: pid is our child, not yet waited for, so it cannot have been reused.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The overlay keeper, in the forked child: namespaces, maps, the mount, then a report on
/// `report` (255, or the failed step and errno) and a wait for SIGKILL (or the parent's death).
///
/// # Safety
/// Called only in a freshly forked child, with open descriptors and NUL-terminated strings.
unsafe fn keeper(
    report: i32,
    parent_end: i32,
    opts: &CStr,
    target: &CStr,
    uid_map: &[u8],
    gid_map: &[u8],
) -> ! {
    let fail = |step: u8| -> ! {
        let e = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(0)
            .to_ne_bytes();
        let b = [step, e[0], e[1], e[2], e[3]];
        libc::write(report, b.as_ptr().cast(), b.len());
        libc::_exit(1)
    };
    libc::close(parent_end);
    // Descriptors of the launcher (other keepers' pipes, output files) are not the keeper's
    // to hold open: it never execs, so close-on-exec would not close them.
    if report > 3 && libc::syscall(libc::SYS_close_range, 3u32, (report - 1) as u32, 0u32) != 0 {
        fail(7);
    }
    if libc::syscall(libc::SYS_close_range, (report + 1) as u32, u32::MAX, 0u32) != 0 {
        fail(7);
    }
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
        fail(0);
    }
    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
        fail(1);
    }
    if write_proc(c"/proc/self/setgroups", b"deny").is_err() {
        fail(2);
    }
    if write_proc(c"/proc/self/uid_map", uid_map).is_err() {
        fail(3);
    }
    if write_proc(c"/proc/self/gid_map", gid_map).is_err() {
        fail(4);
    }
    let null = std::ptr::null::<libc::c_char>();
    if libc::mount(
        null,
        c"/".as_ptr(),
        null,
        libc::MS_REC | libc::MS_PRIVATE,
        std::ptr::null(),
    ) != 0
    {
        fail(5);
    }
    if libc::mount(
        c"overlay".as_ptr(),
        target.as_ptr(),
        c"overlay".as_ptr(),
        0,
        opts.as_ptr().cast(),
    ) != 0
    {
        fail(6);
    }
    let ok = [255u8, 0, 0, 0, 0];
    libc::write(report, ok.as_ptr().cast(), ok.len());
    libc::close(report);
    loop {
        libc::pause();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_jumps_stay_inside_it() {
        let f = filter(true);
        assert!(filter(false).len() < f.len());
        for (i, ins) in f.iter().enumerate() {
            if ins.code == BPF_JEQ_K {
                assert!(i + 1 + (ins.jt as usize) < f.len());
                assert!(i + 1 + (ins.jf as usize) < f.len());
            }
        }
        assert_eq!(f.last().map(|i| i.k), Some(RET_ALLOW));
    }

    #[test]
    fn dropped_ids_stay_dropped() {
        let mut ids = Ids::default();
        let n = |c: libc::c_long| i64::from(c as i32);
        let args = |a: u64, b: u64, c: u64| [a, b, c, 0, 0, 0];
        let keep = u64::from(u32::MAX);
        // apt: setgroups, setresgid(65534 x3), setresuid(42 x3), then checks.
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setgroups), &args(1, 0, 0)),
            Answer::Value(0)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setresgid), &args(65534, 65534, 65534)),
            Answer::Value(0)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setresuid), &args(42, 42, 42)),
            Answer::Value(0)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_getuid), &args(0, 0, 0)),
            Answer::Value(42)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_getegid), &args(0, 0, 0)),
            Answer::Value(65534)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_getresuid), &args(1, 2, 3)),
            Answer::Write([42, 42, 42], [1, 2, 3])
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setuid), &args(0, 0, 0)),
            Answer::Errno(libc::EPERM)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setreuid), &args(0, 0, 0)),
            Answer::Errno(libc::EPERM)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setgid), &args(0, 0, 0)),
            Answer::Errno(libc::EPERM)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setresuid), &args(keep, 42, keep)),
            Answer::Value(0)
        );
        // A root process may take any id and come back through the saved one.
        let mut ids = Ids::default();
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setresuid), &args(keep, 1000, 0)),
            Answer::Value(0)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_geteuid), &args(0, 0, 0)),
            Answer::Value(1000)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_setresuid), &args(keep, 0, keep)),
            Answer::Value(0)
        );
        assert_eq!(
            emulate(&mut ids, n(libc::SYS_geteuid), &args(0, 0, 0)),
            Answer::Value(0)
        );
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
        let prog = filter(false);
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
