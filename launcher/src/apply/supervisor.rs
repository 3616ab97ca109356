//! Apply a plan: the child that creates the namespaces, mounts the image and becomes the
//! command, and the parent that serves the image and supervises the child until it exits.
//!
//! Order matters and is dictated by the kernel:
//! 1. the parent blocks the signals it forwards and starts reading the command's program
//!    ahead (decompression is most of a start-up, so it begins as early as it can);
//! 2. fork: the child, single-threaded as unshare(CLONE_NEWUSER) requires, creates the user
//!    and mount namespaces with identity maps, mounts a staging tmpfs, opens /dev/fuse and
//!    mounts the image with mount(2) (capabilities in a user namespace are lost at execve, so
//!    no external helper can do it; the kernel takes only a /dev/fuse opened in the mounting
//!    namespace), and hands the descriptor to the parent over a socket (SCM_RIGHTS);
//! 3. the parent answers FUSE INIT and serves on worker threads, while the child builds the
//!    root, pivots into it and execs; the parent forwards signals until the child exits, then
//!    exits with its status. The server stays in the host's namespaces: pivot_root cannot
//!    move it, and the child's mount namespace is the only one.

use crate::apply::rootfs::{self, Layout};
use crate::apply::share::{self, Role};
use crate::apply::syscalls::{Real, Syscalls};
use crate::debug;
use crate::fuse::push::{Batch, Kind, Pusher};
use crate::fuse::server::ImageFs;
use crate::plan::Plan;
use anyhow::{anyhow, bail, Context, Result};
use image_tools::squashfs::Archive;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};
use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// Signals passed on to the command.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGWINCH,
    Signal::SIGALRM,
];

/// Where the staging tmpfs may be mounted in the child's mount namespace. The child pivots
/// into it, which uncovers the host's directory again under /oldroot.
const STAGING_CANDIDATES: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/run", "/mnt"];

pub struct LaunchSettings {
    pub fuse_threads: usize,
    /// Kernel readahead for the image, in bytes.
    pub fuse_readahead: u32,
    pub fuse_push: bool,
    pub prefetch: bool,
}

/// Launch the plan and return the exit status to leave with.
pub fn launch(
    plan: &Plan,
    archive: Arc<Archive>,
    settings: &LaunchSettings,
    role: Role,
) -> Result<i32> {
    match role {
        Role::Join(joiner) => join(plan, joiner),
        Role::Lead(leader) => serve(plan, archive, settings, Some(leader)),
        Role::Private(_) => serve(plan, archive, settings, None),
    }
}

/// What the child that creates the instance does once the root is built.
enum Then<'a> {
    /// Become the command (a private instance).
    Exec(&'a SigSet),
    /// Stay in the root, holding the namespaces for the ranks of a shared instance.
    Keep,
}

/// A private instance, or the leader of a shared one.
fn serve(
    plan: &Plan,
    archive: Arc<Archive>,
    settings: &LaunchSettings,
    leader: Option<share::Leader>,
) -> Result<i32> {
    // Before any thread starts, so that every thread inherits the blocked mask.
    let (forwarded, old_mask) = prepare_supervision()?;
    let (pusher, push_rx) = Pusher::new();
    if let Some(program) = plan.program.as_ref().filter(|_| settings.prefetch) {
        crate::fuse::prefetch::spawn(
            archive.clone(),
            program.clone(),
            settings.fuse_push.then(|| pusher.clone()),
        );
    }
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")?;
    let parent = getpid();
    let then = match leader {
        None => Then::Exec(&old_mask),
        Some(_) => Then::Keep,
    };
    // SAFETY: the child is single-threaded; the only other threads here (the read-ahead) hold
    // no lock the child takes but malloc's, which glibc makes safe across fork.
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(ours);
            child_exit(create_instance(plan, parent, theirs, then))
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    let Some(fuse_fd) = receive_fd(&ours)? else {
        // The child said why on stderr.
        return finish_failed_start(child);
    };
    let server = match start_server(plan, archive, settings, fuse_fd, pusher.clone(), push_rx) {
        Ok(s) => s,
        Err(e) => {
            // A child that failed after the mount (and took the mount with it) says why itself.
            if let Some(code) = failed_child_status(child) {
                return Ok(code);
            }
            let _ = kill(child, Signal::SIGKILL);
            return Err(e);
        }
    };
    let Some(leader) = leader else {
        end_stores_on_request(ours, pusher.clone());
        let code = supervise(child, &forwarded, Some(&pusher));
        // No store may be left in progress when the threads die with the process (push.rs).
        pusher.close_listed();
        let code = code?;
        kill_leftovers(None);
        drop(server);
        return Ok(code);
    };
    let code = lead(plan, child, &ours, &pusher, leader, &forwarded, &old_mask);
    pusher.close_listed();
    drop(server);
    code
}

/// The child's half of the start: namespaces, the image mounted, the descriptor handed over,
/// then the root. Returns only on error.
fn create_instance(plan: &Plan, parent: Pid, sock: OwnedFd, then: Then) -> anyhow::Error {
    let staging = match mount_image(plan, parent, &sock) {
        Ok(s) => s,
        Err(e) => return e,
    };
    if let Err(e) = build_root(plan, &staging) {
        return e;
    }
    match then {
        Then::Exec(old_mask) => match prepare_exec(plan) {
            Ok(program) => {
                end_stores(&sock);
                let _ = old_mask.thread_set_mask();
                exec(&program, plan)
            }
            Err(e) => e,
        },
        Then::Keep => keep(sock),
    }
}

/// In the child, right before the exec: tells the launcher, and waits until it has stopped
/// storing pages into the page cache (no store may wait on a READ of the command's: push.rs).
fn end_stores(sock: &OwnedFd) {
    if nix::unistd::write(sock, b"x").is_ok() {
        let mut ack = [0u8; 1];
        let _ = nix::unistd::read(sock, &mut ack);
    }
    debug::step("child: page pushes ended");
}

/// In the parent of a private instance: ends the pushes when the child says it is about to
/// exec (or is gone), and says so.
fn end_stores_on_request(sock: OwnedFd, pusher: Pusher) {
    let _ = std::thread::Builder::new()
        .name("end-stores".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            let asked = matches!(nix::unistd::read(&sock, &mut byte), Ok(1));
            pusher.close();
            if asked {
                let _ = nix::unistd::write(&sock, b"k");
            }
        });
}

/// In the child: new user and mount namespaces, the staging tmpfs, the image mounted with
/// FUSE, and the /dev/fuse descriptor sent to the parent. Returns the staging directory.
fn mount_image(plan: &Plan, parent: Pid, sock: &OwnedFd) -> Result<PathBuf> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    if nix::unistd::getppid() != parent {
        bail!("the launcher exited during start-up");
    }
    enter_user_namespace(plan.uid, plan.gid)?;
    debug::step("child: user and mount namespaces entered");
    let sys = Real {
        proc_dir: "/proc".into(),
    };
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .context("making the mount namespace private")?;
    let staging = mount_staging(&sys)?;
    for d in ["image", "oldroot"] {
        sys.mkdir(&staging.join(d), 0o755)?;
    }
    let fuse_fd = open_dev_fuse()?;
    let data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        fuse_fd.as_raw_fd(),
        plan.uid,
        plan.gid
    );
    sys.mount(
        Some(&plan.image.path),
        &staging.join("image"),
        Some("fuse.launcher"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&data),
    )
    .context("mounting the image with FUSE")?;
    send_fd(sock, fuse_fd.as_raw_fd()).context("handing the FUSE connection to the launcher")?;
    // Our copy goes at once: a child that kept one and waited on a FUSE request when the
    // launcher was killed would stay in D state forever, holding the connection it waits on.
    drop(fuse_fd);
    debug::step(format_args!(
        "child: image mounted with FUSE (staging at {})",
        staging.display()
    ));
    Ok(staging)
}

/// In the parent: the FUSE handshake on the child's descriptor, then worker threads, the
/// push thread, and the mount points the image lacks.
fn start_server(
    plan: &Plan,
    archive: Arc<Archive>,
    settings: &LaunchSettings,
    fuse_fd: OwnedFd,
    pusher: Pusher,
    push_rx: Receiver<(Kind, Batch)>,
) -> Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.n_threads = Some(settings.fuse_threads.max(1));
    config.clone_fd = true;
    let mut fs = ImageFs::new(
        archive.clone(),
        plan.writable_root.then_some((plan.uid, plan.gid)),
        settings.fuse_readahead,
    );
    if settings.fuse_push {
        fs = fs.with_pusher(pusher.clone());
    }
    if !plan.needs_overlay() {
        let virt = crate::fuse::virtual_nodes::VirtualNodes::build(
            &archive,
            &plan.upper,
            &plan.served_files(),
        )
        .map_err(|e| anyhow!("'{}': placing mount points: {e}", plan.image.path.display()))?;
        fs = fs.with_virtual_nodes(virt, (plan.uid, plan.gid));
    }
    let session = fuser::Session::from_fd(fs, fuse_fd, fuser::SessionACL::Owner, config)
        .context("FUSE handshake with the kernel")?;
    let notifier = session.notifier();
    let server = session
        .spawn()
        .context("starting the FUSE server threads")?;
    debug::step("parent: FUSE server threads started");
    // The push thread lives as long as the launcher (it holds a sender itself).
    let _ = std::thread::Builder::new()
        .name("push".into())
        .spawn(move || crate::fuse::push::run(push_rx, pusher, notifier, archive));
    Ok(server)
}

fn send_fd(sock: &OwnedFd, fd: RawFd) -> Result<()> {
    let fds = [fd];
    let iov = [IoSlice::new(b"f")];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// The descriptor the child sent, or None when it closed the socket without one (it failed).
fn receive_fd(sock: &OwnedFd) -> Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.context("receiving the FUSE connection from the child")?,
        }
    };
    for cmsg in msg.cmsgs().context("reading the child's message")? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us; nobody else owns it.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Ok(None)
}

/// The child failed before the image was served and printed why: reap it and leave with its
/// status (255 for the launcher's own errors).
fn finish_failed_start(child: Pid) -> Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(e) => return Err(anyhow!("waitpid: {e}")),
        }
    }
}

/// The status of a child that has already failed, if it has.
fn failed_child_status(child: Pid) -> Option<i32> {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) if code != 0 => Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Block the signals we forward (and SIGCHLD) and become the subreaper of the command's
/// orphans, so none outlives the launcher. Returns the set waited for and the old mask.
fn prepare_supervision() -> Result<(SigSet, SigSet)> {
    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(*s);
    }
    forwarded.add(Signal::SIGCHLD);
    let old_mask = forwarded
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .context("blocking signals")?;
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    Ok((forwarded, old_mask))
}

/// The leader of a shared instance: its child (the keeper) built the root and stays in it, so
/// the namespaces outlive any one rank; this rank's command enters them like any other rank's.
fn lead(
    plan: &Plan,
    keeper: Pid,
    sock: &OwnedFd,
    pusher: &Pusher,
    mut leader: share::Leader,
    forwarded: &SigSet,
    old_mask: &SigSet,
) -> Result<i32> {
    let mut byte = [0u8; 1];
    let ready = matches!(nix::unistd::read(sock, &mut byte), Ok(1));
    // Before any rank's command can read a file (push.rs).
    pusher.close();
    if !ready {
        // The keeper said why.
        return finish_failed_start(keeper);
    }
    let user_ns = open_ns(&format!("/proc/{keeper}/ns/user"))?;
    let mnt_ns = open_ns(&format!("/proc/{keeper}/ns/mnt"))?;
    let ino = |fd: &OwnedFd| -> Result<u64> {
        Ok(nix::sys::stat::fstat(fd)
            .context("stat of the keeper's namespace")?
            .st_ino)
    };
    leader.publish(&share::State {
        leader_pid: getpid().as_raw(),
        keeper_pid: keeper.as_raw(),
        user_ns: ino(&user_ns)?,
        mnt_ns: ino(&mnt_ns)?,
    })?;
    debug::step("shared instance published");
    let code = run_in_instance(plan, &user_ns, &mnt_ns, forwarded, old_mask, Some(pusher));
    // The leader no longer watches for signals while it waits for the other ranks: their
    // listed files are not pushed from here on (push.rs).
    pusher.close_listed();
    let code = code?;
    kill_leftovers(Some(keeper));
    debug::step("waiting for the ranks that joined");
    let closed = leader.wait_and_close();
    let _ = kill(keeper, Signal::SIGKILL);
    let _ = waitpid(keeper, None);
    kill_leftovers(None);
    share::remove_dir_if_empty(&share::default_dir(plan.uid));
    closed?;
    Ok(code)
}

/// The keeper: says the root is ready, then waits to be killed.
fn keep(sock: OwnedFd) -> anyhow::Error {
    let _ = nix::sys::prctl::set_name(c"launcher-keep");
    if let Err(e) = nix::unistd::write(&sock, b"r") {
        return anyhow!("telling the launcher the root is ready: {e}");
    }
    // Keep nothing of the launcher's open files.
    // SAFETY: no fd is used after this point.
    unsafe { libc::close_range(3, u32::MAX, 0) };
    loop {
        // SAFETY: pause has no preconditions; SIGKILL ends it.
        unsafe { libc::pause() };
    }
}

/// A rank that joins a running shared instance: no mount at all.
fn join(plan: &Plan, joiner: share::Joiner) -> Result<i32> {
    let (forwarded, old_mask) = prepare_supervision()?;
    let code = run_in_instance(
        plan,
        &joiner.user_ns,
        &joiner.mnt_ns,
        &forwarded,
        &old_mask,
        None,
    )?;
    kill_leftovers(None);
    drop(joiner);
    Ok(code)
}

/// Fork the command into a shared instance's namespaces (two setns calls) and supervise it.
fn run_in_instance(
    plan: &Plan,
    user_ns: &OwnedFd,
    mnt_ns: &OwnedFd,
    forwarded: &SigSet,
    old_mask: &SigSet,
    pusher: Option<&Pusher>,
) -> Result<i32> {
    let parent = getpid();
    // SAFETY: the child execs or exits; it takes no lock another thread may hold but
    // malloc's, which glibc makes safe across fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let setup = || -> Result<PathBuf> {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
                if nix::unistd::getppid() != parent {
                    bail!("the launcher exited during start-up");
                }
                nix::sched::setns(user_ns, CloneFlags::CLONE_NEWUSER)
                    .context("entering the shared user namespace")?;
                nix::sched::setns(mnt_ns, CloneFlags::CLONE_NEWNS)
                    .context("entering the shared mount namespace")?;
                debug::step("child: entered the shared instance");
                prepare_exec(plan)
            };
            let err = match setup() {
                Ok(program) => {
                    let _ = old_mask.thread_set_mask();
                    exec(&program, plan)
                }
                Err(e) => e,
            };
            child_exit(err)
        }
        ForkResult::Parent { child } => supervise(child, forwarded, pusher),
    }
}

fn open_ns(path: &str) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {path}"))
}

/// Print the child's error and leave without running the parent's destructors.
fn child_exit(err: anyhow::Error) -> ! {
    debug::line(format_args!("launcher: error: {err:#}"));
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(255) }
}

fn enter_user_namespace(uid: u32, gid: u32) -> Result<()> {
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

fn mount_staging(sys: &Real) -> Result<PathBuf> {
    let mut last_err = anyhow!("none of {STAGING_CANDIDATES:?} exists");
    for c in STAGING_CANDIDATES {
        let p = Path::new(c);
        if !p.is_dir() {
            continue;
        }
        match sys.mount(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ) {
            Ok(()) => return Ok(p.to_path_buf()),
            Err(e) => last_err = e,
        }
    }
    Err(last_err.context("mounting the staging tmpfs"))
}

fn open_dev_fuse() -> Result<OwnedFd> {
    nix::fcntl::open("/dev/fuse", nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| match e {
            nix::errno::Errno::ENOENT => anyhow!("cannot open /dev/fuse: {e} (hint: load the fuse kernel module: `modprobe fuse`)"),
            _ => anyhow!("cannot open /dev/fuse: {e} (hint: it should be mode 0666, as on most distributions: `chmod 0666 /dev/fuse` as root)"),
        })
}

/// In the child, whose mount namespace is its own: build the container root in the staging
/// tmpfs and pivot into it.
fn build_root(plan: &Plan, staging: &Path) -> Result<()> {
    let host_sys = Real {
        proc_dir: "/proc".into(),
    };
    host_sys.pivot_root(staging, &staging.join("oldroot"))?;
    host_sys.chdir(Path::new("/"))?;
    let layout = Layout::in_staging();
    let sys = Real {
        proc_dir: layout.oldroot.join("proc"),
    };
    debug::step("child: staging is /");
    if let Some(program) = &plan.program {
        // The kernel learns the program's inode now, so the server can push its pages into
        // the page cache as the read-ahead decompresses them, before the exec faults them in.
        crate::apply::syscalls::look_up_in_root(&layout.image, Path::new(program));
    }
    rootfs::assemble(&sys, plan, &layout)?;
    debug::step("child: container root assembled");
    rootfs::enter(&sys, &layout)
}

/// Inside the container root: working directory, no capabilities, no new privileges, and
/// the program to execute.
fn prepare_exec(plan: &Plan) -> Result<PathBuf> {
    let cwd = std::iter::once(&plan.cwd)
        .chain(plan.cwd_fallbacks.iter())
        .find(|d| nix::unistd::chdir(d.as_path()).is_ok())
        .ok_or_else(|| {
            anyhow!(
                "working directory '{}' does not exist in the container",
                plan.cwd.display()
            )
        })?;
    if cwd != &plan.cwd {
        debug::line(format_args!(
            "launcher: warning: '{}' does not exist in the container; starting in '{}'",
            plan.cwd.display(),
            cwd.display()
        ));
    }
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().context("PR_SET_NO_NEW_PRIVS")?;
    let program = find_program(&plan.argv[0], plan)?;
    debug::step(format_args!(
        "exec {} in {}",
        program.display(),
        cwd.display()
    ));
    Ok(program)
}

/// Empty the bounding and ambient sets, so that execve grants no capability even to a caller
/// whose uid is 0 (other uids lose them at execve anyway).
fn drop_capabilities() -> Result<()> {
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

/// Search the container's PATH the way execvp would, but with an error that says where we looked.
fn find_program(name: &str, plan: &Plan) -> Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    for candidate in crate::plan::path_search::candidates(name, &plan.env) {
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && !candidate.is_dir()
        {
            return Ok(candidate);
        }
    }
    let path = crate::env_list::get(&plan.env, "PATH").unwrap_or("");
    bail!("command '{name}' not found in the container (PATH={path})")
}

fn exec(program: &Path, plan: &Plan) -> anyhow::Error {
    let to_c =
        |s: &[u8]| CString::new(s).map_err(|_| anyhow!("argument or variable contains a NUL byte"));
    let prog = match to_c(program.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let argv: Result<Vec<CString>> = plan.argv.iter().map(|a| to_c(a.as_bytes())).collect();
    let envp: Result<Vec<CString>> = plan
        .env
        .iter()
        .map(|(k, v)| to_c(format!("{k}={v}").as_bytes()))
        .collect();
    let (argv, envp) = match (argv, envp) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let err = nix::unistd::execve(&prog, &argv, &envp).unwrap_err();
    let hint = match err {
        nix::errno::Errno::ENOENT => " (the file or its interpreter is missing in the image)",
        nix::errno::Errno::EACCES => " (not executable, or on a noexec mount)",
        nix::errno::Errno::ENOEXEC => " (not a program for this machine)",
        _ => "",
    };
    anyhow!("cannot execute '{}': {err}{hint}", program.display())
}

/// Wait for the child, forwarding signals, and return its exit status as a shell would. A
/// terminating signal first ends the pushes of listed files (`pusher`): a SIGKILL that may
/// follow must find no store in progress (push.rs).
fn supervise(child: Pid, waited: &SigSet, pusher: Option<&Pusher>) -> Result<i32> {
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid signal set and siginfo buffer.
        let sig = unsafe { libc::sigwaitinfo(waited.as_ref(), &mut info) };
        if sig < 0 {
            continue; // EINTR
        }
        if sig == libc::SIGCHLD {
            if let Some(code) = reap(child)? {
                debug::step(format_args!("command exited with status {code}"));
                return Ok(code);
            }
            continue;
        }
        if let (Some(p), libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT) =
            (pusher, sig)
        {
            p.close_listed();
        }
        // Signals the terminal sent (SI_KERNEL) already reached the command, which shares our
        // process group; forward only those sent to us by a process (kill, srun, scancel).
        if info.si_code <= 0 {
            if let Ok(s) = Signal::try_from(sig) {
                let _ = kill(child, s);
            }
        }
    }
}

/// Reap whatever exited; Some(status) once the command itself is gone.
fn reap(child: Pid) -> Result<Option<i32>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                return Ok(Some(128 + sig as i32))
            }
            Ok(WaitStatus::Stopped(pid, _)) if pid == child => {
                // Job control: stop with the command, and wake it when we are continued.
                let _ = kill(getpid(), Signal::SIGSTOP);
                let _ = kill(child, Signal::SIGCONT);
            }
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(anyhow!("waitpid: {e}")),
        }
    }
}

/// Kill and reap processes the command left behind (they were re-parented to us).
fn kill_leftovers(spare: Option<Pid>) {
    // The common case: no descendants at all, known without scanning /proc.
    if spare.is_none() {
        if let Err(nix::errno::Errno::ECHILD) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            return;
        }
    }
    let me = getpid().as_raw();
    for _ in 0..100 {
        let mut orphans = children_of(me);
        orphans.retain(|p| Some(Pid::from_raw(*p)) != spare);
        if orphans.is_empty() {
            return;
        }
        for pid in &orphans {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        for pid in orphans {
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

fn children_of(ppid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string))
                })
                .flatten()
                .and_then(|p| p.parse::<i32>().ok())
                == Some(ppid)
        })
        .collect()
}
