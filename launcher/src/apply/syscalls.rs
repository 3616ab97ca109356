//! The system calls of the child that becomes the container, behind a trait: namespaces, the
//! image's FUSE mount, the root's mounts, the privilege drop and the exec.
//!
//! `Real` performs them; `Recorder` writes each down as a typed `Call`, so the child's whole
//! sequence and the mounts a plan produces can be unit-tested in order without privileges
//! (youki's `Syscall` trait is the model).

use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use std::cell::RefCell;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub use crate::plan::mount_points::NodeKind;

/// A mount target: a path to hand to mount(2), and the fd that keeps it pinned.
pub struct Target {
    pub path: PathBuf,
    /// The same place as a plain path, symlinks resolved: once something is mounted there,
    /// this reaches the new mount (the fd still names the covered directory).
    pub real: PathBuf,
    _fd: Option<OwnedFd>,
}

pub trait Syscalls {
    /// Die with the launcher (PR_SET_PDEATHSIG); an error if it is already gone.
    fn die_with_parent(&self, parent: Pid) -> Result<()>;
    /// New user and mount namespaces, with the caller's uid and gid mapped to themselves.
    fn enter_user_namespace(&self, uid: u32, gid: u32) -> Result<()>;
    /// Enter a shared instance's user, then mount namespace.
    fn join_namespaces(&self, user_ns: &OwnedFd, mnt_ns: &OwnedFd) -> Result<()>;
    /// A mount namespace of our own: a copy of the current one (unshare(CLONE_NEWNS)).
    fn unshare_mount_namespace(&self) -> Result<()>;
    fn open_dev_fuse(&self) -> Result<OwnedFd>;
    /// Where /proc is visible from now on (the host's /proc under the old root, once pivoted).
    fn use_proc(&self, proc_dir: &Path);
    /// Adopt the orphans of everything started from here (PR_SET_CHILD_SUBREAPER), and learn
    /// of the launcher's death by a TERM instead of dying at once; an error if it is gone.
    fn become_reaper(&self, launcher: Pid) -> Result<()>;
    /// Start `program` as a new process with this signal mask: its pid.
    fn spawn_command(
        &self,
        program: &Path,
        argv: &[String],
        env: &[(String, String)],
        mask: &SigSet,
    ) -> Result<Pid>;
    /// Run `argv` (its program an absolute path) to its end with `env`, stdin /dev/null, its
    /// stdout and stderr ours: what it wrote to descriptor 3, at most `max` bytes (an error
    /// past that, when it fails, or when the launcher dies first). Signals are forwarded to it
    /// as to the command; what it leaves running is the reaper's.
    fn run_for_output(
        &self,
        argv: &[String],
        env: &[(String, String)],
        max: usize,
        launcher: Pid,
    ) -> Result<Vec<u8>>;
    /// Empty the bounding and ambient capability sets.
    fn drop_capabilities(&self) -> Result<()>;
    fn set_no_new_privs(&self) -> Result<()>;
    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    /// Make a mount read-only, with its submounts when `recursive`.
    fn make_readonly(&self, target: &Path, recursive: bool) -> Result<()>;
    fn umount_detach(&self, target: &Path) -> Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()>;
    fn chdir(&self, path: &Path) -> Result<()>;
    fn mkdir(&self, path: &Path, mode: u32) -> Result<()>;
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> Result<()>;
    /// Find `dst` inside `root` as if `root` were `/` (symlinks cannot lead out), creating
    /// missing components (directories, and a `kind` leaf), and return a mount target for it.
    fn mount_point(&self, root: &Path, dst: &Path, kind: NodeKind) -> Result<Target>;
    /// Find an existing `src` under `root` as if `root` were `/` (host paths under the old
    /// root, whose absolute symlinks name host places).
    fn source(&self, root: &Path, src: &Path) -> Result<Target>;
}

pub struct Real {
    /// Where /proc is visible while the root is built (the host's /proc under the old root).
    proc_dir: RefCell<PathBuf>,
}

impl Real {
    pub fn new() -> Real {
        Real {
            proc_dir: RefCell::new("/proc".into()),
        }
    }
}

impl Syscalls for Real {
    fn run_for_output(
        &self,
        argv: &[String],
        env: &[(String, String)],
        max: usize,
        launcher: Pid,
    ) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        use std::os::unix::process::CommandExt;
        let (program, args) = argv.split_first().context("an empty command line")?;
        // The report goes to a memory file at descriptor 3, read once the helper is gone: a
        // pipe would wait for every process the scripts left running that inherited it.
        // SAFETY: a NUL-terminated name and flags; the descriptor is owned at once.
        let report_fd =
            unsafe { libc::memfd_create(c"launcher-env-report".as_ptr(), libc::MFD_CLOEXEC) };
        if report_fd < 0 {
            bail!("memfd_create: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened here and owned by nothing else.
        let report = unsafe { OwnedFd::from_raw_fd(report_fd) };
        let stderr = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("dup of stderr")?;
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(stderr));
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl, prctl,
        // sigprocmask) on plain integers and a stack-allocated signal set.
        unsafe {
            command.pre_exec(move || {
                if report_fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(report_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // It dies with this process, and starts with no signal blocked (ours are,
                // for forwarding), so Ctrl-C and the forwarded signals reach it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                Ok(())
            });
        }
        let helper = command
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let pid = Pid::from_raw(helper.id() as i32);
        let status = crate::apply::supervise::wait_for_helper(pid, launcher);
        let status = match status {
            Ok(Some(code)) => code,
            Ok(None) => {
                crate::apply::supervise::kill_leftovers(None);
                bail!("the launcher exited while {program} ran");
            }
            Err(e) => {
                crate::apply::supervise::kill_leftovers(None);
                return Err(e);
            }
        };
        if status != 0 {
            crate::apply::supervise::kill_leftovers(None);
            bail!("{program} failed (exit status {status})");
        }
        let file = std::fs::File::from(report);
        let len = file.metadata().context("fstat of the report")?.len();
        if len > max as u64 {
            bail!("{program} reported more than {} MiB", max >> 20);
        }
        let mut out = vec![0; len as usize];
        file.read_exact_at(&mut out, 0)
            .context("reading the report")?;
        Ok(out)
    }

    fn die_with_parent(&self, parent: Pid) -> Result<()> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
        if nix::unistd::getppid() != parent {
            bail!("the launcher exited during start-up");
        }
        Ok(())
    }

    fn enter_user_namespace(&self, uid: u32, gid: u32) -> Result<()> {
        if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
            let hint = match e {
                nix::errno::Errno::EINVAL => "the launcher was multi-threaded (a bug)",
                _ => "user namespaces may be disabled on this host: `sysctl user.max_user_namespaces` must be > 0 (and on Ubuntu, `kernel.apparmor_restrict_unprivileged_userns` = 0)",
            };
            bail!("cannot create a user namespace: {e} (hint: {hint})");
        }
        // setgroups must be denied before an unprivileged process may write gid_map.
        std::fs::write("/proc/self/setgroups", "deny").context("writing /proc/self/setgroups")?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))
            .context("writing /proc/self/uid_map")?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))
            .context("writing /proc/self/gid_map")?;
        Ok(())
    }

    fn join_namespaces(&self, user_ns: &OwnedFd, mnt_ns: &OwnedFd) -> Result<()> {
        nix::sched::setns(user_ns, CloneFlags::CLONE_NEWUSER)
            .context("entering the shared user namespace")?;
        nix::sched::setns(mnt_ns, CloneFlags::CLONE_NEWNS)
            .context("entering the shared mount namespace")
    }

    fn unshare_mount_namespace(&self) -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNS).context("creating a mount namespace of this rank's own")
    }

    fn open_dev_fuse(&self) -> Result<OwnedFd> {
        nix::fcntl::open("/dev/fuse", nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| match e {
                nix::errno::Errno::ENOENT => anyhow!("cannot open /dev/fuse: {e} (hint: load the fuse kernel module: `modprobe fuse`)"),
                _ => anyhow!("cannot open /dev/fuse: {e} (hint: it should be mode 0666, as on most distributions: `chmod 0666 /dev/fuse` as root)"),
            })
    }

    fn use_proc(&self, proc_dir: &Path) {
        *self.proc_dir.borrow_mut() = proc_dir.to_path_buf();
    }

    fn become_reaper(&self, launcher: Pid) -> Result<()> {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            bail!(
                "PR_SET_CHILD_SUBREAPER: {}",
                std::io::Error::last_os_error()
            );
        }
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).context("PR_SET_PDEATHSIG")?;
        if nix::unistd::getppid() != launcher {
            bail!("the launcher exited during start-up");
        }
        Ok(())
    }

    fn spawn_command(
        &self,
        program: &Path,
        argv: &[String],
        env: &[(String, String)],
        mask: &SigSet,
    ) -> Result<Pid> {
        let to_c = |s: &[u8]| {
            CString::new(s).map_err(|_| anyhow!("argument or variable contains a NUL byte"))
        };
        let prog = to_c(program.as_os_str().as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| to_c(a.as_bytes()))
            .collect::<Result<Vec<CString>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| to_c(format!("{k}={v}").as_bytes()))
            .collect::<Result<Vec<CString>>>()?;
        let ptrs = |v: &[CString]| -> Vec<*mut libc::c_char> {
            v.iter()
                .map(|c| c.as_ptr().cast_mut())
                .chain(std::iter::once(std::ptr::null_mut()))
                .collect()
        };
        let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
        // posix_spawn: glibc's clone(CLONE_VM | CLONE_VFORK) shares this process's memory until
        // the exec, so no page table of the launcher-sized address space is copied, and a
        // failed exec is reported here. The mask is the one from before the launcher blocked
        // the signals it forwards.
        // SAFETY: attr is initialised before use and destroyed after; every pointer handed to
        // posix_spawn points into CStrings and vectors that outlive the call, and both arrays
        // end with a null pointer.
        let (rc, pid) = unsafe {
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            libc::posix_spawnattr_init(&mut attr);
            libc::posix_spawnattr_setflags(
                &mut attr,
                libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
            );
            libc::posix_spawnattr_setsigmask(&mut attr, mask.as_ref());
            let mut pid: libc::pid_t = 0;
            let rc = libc::posix_spawn(
                &mut pid,
                prog.as_ptr(),
                std::ptr::null(),
                &attr,
                argv_p.as_ptr(),
                envp_p.as_ptr(),
            );
            libc::posix_spawnattr_destroy(&mut attr);
            (rc, pid)
        };
        if rc != 0 {
            let err = nix::errno::Errno::from_raw(rc);
            let hint = match err {
                nix::errno::Errno::ENOENT => {
                    " (the file or its interpreter is missing in the image)"
                }
                // execve says EACCES for a directory too; say what it is.
                nix::errno::Errno::EACCES if program.is_dir() => " (it is a directory)",
                nix::errno::Errno::EACCES => " (not executable, or on a noexec mount)",
                nix::errno::Errno::ENOEXEC => " (not a program for this machine)",
                _ => "",
            };
            bail!("cannot execute '{}': {err}{hint}", program.display());
        }
        Ok(Pid::from_raw(pid))
    }

    fn drop_capabilities(&self) -> Result<()> {
        // SAFETY: prctl with integer arguments only.
        unsafe {
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
            {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    bail!("clearing ambient capabilities: {e}");
                }
            }
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    let e = std::io::Error::last_os_error();
                    // EINVAL: past the last capability this kernel knows.
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        break;
                    }
                    bail!("dropping capability {cap} from the bounding set: {e}");
                }
            }
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> Result<()> {
        nix::sys::prctl::set_no_new_privs().context("PR_SET_NO_NEW_PRIVS")
    }

    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        mount(src, target, fstype, flags, data).map_err(|e| {
            anyhow!(
                "mount {} on {} ({}): {e}",
                src.map(|s| s.display().to_string())
                    .unwrap_or_else(|| "-".into()),
                target.display(),
                fstype.unwrap_or("bind/remount")
            )
        })
    }

    fn make_readonly(&self, target: &Path, recursive: bool) -> Result<()> {
        // mount_setattr changes only the attribute asked for, so the flags the kernel locked on
        // host mounts (nosuid, nodev, noexec) need not be restated.
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let c_path = std::ffi::CString::new(target.as_os_str().as_bytes())?;
        let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: valid C string and a properly sized mount_attr that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c_path.as_ptr(),
                flags as libc::c_uint,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            bail!("making {} read-only: {err}", target.display());
        }
        // Kernels before 5.12: remount the top mount, restating its locked flags.
        let st = nix::sys::statvfs::statvfs(target)
            .with_context(|| format!("statvfs {}", target.display()))?;
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        for (f, m) in [
            (nix::sys::statvfs::FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (nix::sys::statvfs::FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (nix::sys::statvfs::FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if st.flags().contains(f) {
                flags |= m;
            }
        }
        self.mount(None, target, None, flags, None)
    }

    fn umount_detach(&self, target: &Path) -> Result<()> {
        umount2(target, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", target.display()))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        nix::unistd::pivot_root(new_root, put_old).with_context(|| {
            format!(
                "pivot_root to {} (old root at {})",
                new_root.display(),
                put_old.display()
            )
        })
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        nix::unistd::chdir(path).with_context(|| format!("chdir {}", path.display()))
    }

    fn mkdir(&self, path: &Path, mode: u32) -> Result<()> {
        match nix::unistd::mkdir(path, Mode::from_bits_truncate(mode)) {
            // The exact mode, umask aside: upper-layer directories stand in for the image's.
            Ok(()) => nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                path,
                Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| anyhow!("chmod {}: {e}", path.display())),
            Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(anyhow!("mkdir {}: {e}", path.display())),
        }
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()> {
        std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        std::os::unix::fs::symlink(target, link)
            .with_context(|| format!("symlink {} -> {}", link.display(), target.display()))
    }

    fn mount_point(&self, root: &Path, dst: &Path, kind: NodeKind) -> Result<Target> {
        let fd = resolve_in_root(root, dst, kind)
            .with_context(|| format!("preparing mount point {} in the container", dst.display()))?;
        self.target(fd)
    }

    fn source(&self, root: &Path, src: &Path) -> Result<Target> {
        let root_fd = open_dir(root)?;
        let fd = openat2_in_root(&root_fd, src)
            .with_context(|| format!("host path {}", src.display()))?;
        self.target(fd)
    }
}

impl Real {
    fn target(&self, fd: OwnedFd) -> Result<Target> {
        let path = self
            .proc_dir
            .borrow()
            .join(format!("self/fd/{}", fd.as_raw_fd()));
        let real =
            std::fs::read_link(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Target {
            path,
            real,
            _fd: Some(fd),
        })
    }
}

fn open_dir(p: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        p,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", p.display()))
}

const MAX_LINK_HOPS: usize = 40;

/// Look `path` up under `root` as if `root` were `/` (symlinks cannot lead out), for the side
/// effect alone: the kernel then holds the file's inode. Best effort.
pub fn look_up_in_root(root: &Path, path: &Path) {
    if let Ok(root_fd) = open_dir(root) {
        let _ = openat2_in_root(&root_fd, path);
    }
}

fn openat2_in_root(root: &OwnedFd, path: &Path) -> nix::Result<OwnedFd> {
    crate::image::dir::openat2_in_root(root, path, libc::O_PATH)
}

/// Walk `dst` component by component under `root`, creating what is missing. Symlinks met on
/// the way are resolved by the kernel as if `root` were `/` (RESOLVE_IN_ROOT); a dangling one
/// is followed by hand, inside the root, so its target gets created instead.
fn resolve_in_root(root: &Path, dst: &Path, kind: NodeKind) -> Result<OwnedFd> {
    let root_fd = open_dir(root)?;
    // Usually the whole path exists: one call, no walk.
    match openat2_in_root(&root_fd, dst) {
        Ok(fd) => return Ok(fd),
        Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => bail!("{}: {e}", dst.display()),
    }
    let mut want: Vec<PathBuf> = dst
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    'restart: loop {
        let mut prefix = PathBuf::from("/");
        for (i, comp) in want.clone().iter().enumerate() {
            let next = prefix.join(comp);
            match openat2_in_root(&root_fd, &next) {
                Ok(_) => {
                    prefix = next;
                    continue;
                }
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => bail!("{}: {e}", next.display()),
            }
            let parent = openat2_in_root(&root_fd, &prefix)
                .with_context(|| format!("{}", prefix.display()))?;
            let name = comp.as_os_str();
            // Dangling symlink? Follow it inside the root.
            if let Ok(target) = nix::fcntl::readlinkat(&parent, name) {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    bail!("{}: too many levels of symbolic links", dst.display());
                }
                let target = PathBuf::from(target);
                let base = if target.is_absolute() {
                    PathBuf::from("/")
                } else {
                    prefix.clone()
                };
                let mut rebuilt: Vec<PathBuf> = Vec::new();
                for c in base
                    .join(&target)
                    .components()
                    .chain(want[i + 1..].iter().flat_map(|p| p.components()))
                {
                    match c {
                        Component::Normal(n) => rebuilt.push(PathBuf::from(n)),
                        Component::ParentDir => {
                            rebuilt.pop();
                        }
                        _ => {}
                    }
                }
                want = rebuilt;
                continue 'restart;
            }
            let last = i + 1 == want.len();
            create_at(&parent, name, if last { kind } else { NodeKind::Dir })
                .with_context(|| format!("creating {}", next.display()))?;
            prefix = next;
        }
        return openat2_in_root(&root_fd, &prefix).with_context(|| format!("{}", prefix.display()));
    }
}

fn create_at(parent: &OwnedFd, name: &OsStr, kind: NodeKind) -> nix::Result<()> {
    let r = match kind {
        NodeKind::Dir => nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o755)),
        NodeKind::File => nix::fcntl::openat(
            parent,
            name,
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    };
    match r {
        Err(nix::errno::Errno::EEXIST) => Ok(()),
        other => other,
    }
}

/// One call as the `Recorder` writes it down.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    DieWithParent,
    EnterUserNamespace {
        uid: u32,
        gid: u32,
    },
    JoinNamespaces,
    UnshareMountNamespace,
    OpenDevFuse,
    UseProc(PathBuf),
    BecomeReaper,
    DropCapabilities,
    SetNoNewPrivs,
    SpawnCommand {
        program: PathBuf,
        argv: Vec<String>,
    },
    RunForOutput(Vec<String>),
    Mount {
        src: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    MakeReadonly {
        target: PathBuf,
        recursive: bool,
    },
    UmountDetach(PathBuf),
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
    Chdir(PathBuf),
    Mkdir {
        path: PathBuf,
        mode: u32,
    },
    WriteFile {
        path: PathBuf,
        len: usize,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    MountPoint {
        path: PathBuf,
        kind: NodeKind,
    },
}

/// Asserts that `want` appear in `calls` in that order (other calls may come between).
#[cfg(test)]
pub fn assert_in_order(calls: &[Call], want: &[Call]) {
    let mut from = 0;
    for w in want {
        let Some(at) = calls[from..].iter().position(|c| c == w) else {
            panic!("expected {w:?} after call {from} in:\n{calls:#?}");
        };
        from += at + 1;
    }
}

/// A recorded mount, for tests.
#[cfg(test)]
pub fn mount_call(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Call {
    Call::Mount {
        src: src.map(PathBuf::from),
        target: target.into(),
        fstype: fstype.map(str::to_string),
        flags,
        data: data.map(str::to_string),
    }
}

/// Writes each call down instead of making it.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub calls: RefCell<Vec<Call>>,
}

#[cfg(test)]
impl Recorder {
    fn log(&self, c: Call) {
        self.calls.borrow_mut().push(c);
    }
}

#[cfg(test)]
impl Syscalls for Recorder {
    fn die_with_parent(&self, _parent: Pid) -> Result<()> {
        self.log(Call::DieWithParent);
        Ok(())
    }
    fn enter_user_namespace(&self, uid: u32, gid: u32) -> Result<()> {
        self.log(Call::EnterUserNamespace { uid, gid });
        Ok(())
    }
    fn join_namespaces(&self, _user_ns: &OwnedFd, _mnt_ns: &OwnedFd) -> Result<()> {
        self.log(Call::JoinNamespaces);
        Ok(())
    }
    fn unshare_mount_namespace(&self) -> Result<()> {
        self.log(Call::UnshareMountNamespace);
        Ok(())
    }
    fn open_dev_fuse(&self) -> Result<OwnedFd> {
        self.log(Call::OpenDevFuse);
        Ok(std::fs::File::open("/dev/null")?.into())
    }
    fn use_proc(&self, proc_dir: &Path) {
        self.log(Call::UseProc(proc_dir.to_path_buf()));
    }
    fn become_reaper(&self, _launcher: Pid) -> Result<()> {
        self.log(Call::BecomeReaper);
        Ok(())
    }
    /// Records the command and fails: the caller would otherwise become its reaper for good.
    fn spawn_command(
        &self,
        program: &Path,
        argv: &[String],
        _env: &[(String, String)],
        _mask: &SigSet,
    ) -> Result<Pid> {
        self.log(Call::SpawnCommand {
            program: program.to_path_buf(),
            argv: argv.to_vec(),
        });
        bail!("recorded spawn")
    }
    /// Records the command line and reports an empty environment.
    fn run_for_output(
        &self,
        argv: &[String],
        _env: &[(String, String)],
        _max: usize,
        _launcher: Pid,
    ) -> Result<Vec<u8>> {
        self.log(Call::RunForOutput(argv.to_vec()));
        Ok(Vec::new())
    }
    fn drop_capabilities(&self) -> Result<()> {
        self.log(Call::DropCapabilities);
        Ok(())
    }
    fn set_no_new_privs(&self) -> Result<()> {
        self.log(Call::SetNoNewPrivs);
        Ok(())
    }
    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        self.log(Call::Mount {
            src: src.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }
    fn make_readonly(&self, target: &Path, recursive: bool) -> Result<()> {
        self.log(Call::MakeReadonly {
            target: target.to_path_buf(),
            recursive,
        });
        Ok(())
    }
    fn umount_detach(&self, target: &Path) -> Result<()> {
        self.log(Call::UmountDetach(target.to_path_buf()));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        self.log(Call::PivotRoot {
            new_root: new_root.to_path_buf(),
            put_old: put_old.to_path_buf(),
        });
        Ok(())
    }
    fn chdir(&self, path: &Path) -> Result<()> {
        self.log(Call::Chdir(path.to_path_buf()));
        Ok(())
    }
    fn mkdir(&self, path: &Path, mode: u32) -> Result<()> {
        self.log(Call::Mkdir {
            path: path.to_path_buf(),
            mode,
        });
        Ok(())
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()> {
        self.log(Call::WriteFile {
            path: path.to_path_buf(),
            len: data.len(),
        });
        Ok(())
    }
    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        self.log(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        });
        Ok(())
    }
    fn mount_point(&self, root: &Path, dst: &Path, kind: NodeKind) -> Result<Target> {
        let path = root.join(dst.strip_prefix("/").unwrap_or(dst));
        self.log(Call::MountPoint {
            path: path.clone(),
            kind,
        });
        Ok(Target {
            real: path.clone(),
            path,
            _fd: None,
        })
    }
    fn source(&self, root: &Path, src: &Path) -> Result<Target> {
        let path = root.join(src.strip_prefix("/").unwrap_or(src));
        Ok(Target {
            real: path.clone(),
            path,
            _fd: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_creates_missing_and_stays_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // An absolute symlink to the host's /etc must resolve to the root's own etc.
        std::os::unix::fs::symlink("/etc", root.join("hostetc")).unwrap();
        resolve_in_root(root, Path::new("/hostetc/new-dir/leaf"), NodeKind::File).unwrap();
        assert!(root.join("etc/new-dir/leaf").is_file());
        // A dangling symlink is followed and its target created inside the root.
        std::os::unix::fs::symlink("/../../nowhere/x", root.join("dangling")).unwrap();
        resolve_in_root(root, Path::new("/dangling/y"), NodeKind::Dir).unwrap();
        assert!(root.join("nowhere/x/y").is_dir());
        // Loops end with an error.
        std::os::unix::fs::symlink("/loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, Path::new("/loop/z"), NodeKind::Dir).is_err());
    }
}
