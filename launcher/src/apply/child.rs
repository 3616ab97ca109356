//! The child's half of a launch, in order: die with the launcher, new user and mount
//! namespaces, the staging tmpfs, the image mounted with FUSE and its descriptor handed to the
//! launcher, the root assembled and entered, the working directory, privileges dropped, then a
//! spawn of the command, whose reaper this process stays. A rank that joins a shared instance
//! enters its namespaces instead of making them: the root of its mounts when one is built,
//! else the instance's base (the image mounted), where it builds its root in a mount
//! namespace of its own (`Entry`). The keeper of a shared instance and its root keeper hold
//! those namespaces (`keep`).
//!
//! Every step goes through `Syscalls`, so the sequence is unit-tested in order (`Recorder`).

use crate::apply::channel::{Channel, Message};
use crate::apply::rootfs::{self, Layout};
use crate::apply::syscalls::Syscalls;
use crate::debug;
use crate::plan::environment::CAPTURED_MAX_BYTES;
use crate::plan::Plan;
use anyhow::{anyhow, bail, Context, Result};
use nix::mount::MsFlags;
use nix::sys::signal::SigSet;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where the staging tmpfs may be mounted in the child's mount namespace. The child pivots
/// into it, which uncovers the host's directory again under /oldroot.
const STAGING_CANDIDATES: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/run", "/mnt"];

/// What the child that creates the instance does once the image is mounted.
pub enum Then<'a> {
    /// Build the root and become the command (a private instance), with this signal mask.
    Exec(&'a SigSet),
    /// Keep the namespaces of a shared instance for the ranks of the job step (`keep`).
    Keep {
        /// Also build the root of this plan in a mount namespace for the ranks that ask for
        /// the same mounts (not for `--writable-tmpfs`: each rank has a root of its own).
        root: bool,
    },
}

/// The child that creates an instance. Returns only on error.
pub fn create_instance(
    sys: &dyn Syscalls,
    plan: &Plan,
    parent: Pid,
    chan: Channel,
    then: Then,
) -> anyhow::Error {
    let staging = match mount_image(sys, plan, parent, &chan) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let layout = Layout::in_staging();
    if let Err(e) = enter_staging(sys, plan, &staging, &layout) {
        return e;
    }
    match then {
        Then::Exec(old_mask) => {
            if let Err(e) = build_root(sys, plan, &layout) {
                return e;
            }
            // The image's shell reads image files like the command: no store may be in
            // progress when it runs (push.rs), so the pushes end before it.
            let early = plan.env_shell.is_some();
            if early {
                end_stores(&chan);
            }
            match prepare_exec(sys, plan, parent) {
                Ok(ready) => {
                    if !early {
                        end_stores(&chan);
                    }
                    drop(chan);
                    run_command(sys, plan, &ready, old_mask, parent)
                }
                Err(e) => e,
            }
        }
        Then::Keep { root } => keep(sys, plan, chan, root),
    }
}

/// How the command of a rank of a shared instance enters it.
pub enum Entry<'a> {
    /// The root of its mounts is built: the instance's user namespace, then that root's
    /// mount namespace (two setns calls, no mount).
    Root {
        user_ns: &'a OwnedFd,
        mnt_ns: &'a OwnedFd,
    },
    /// Its mounts differ from those of every built root (other binds, `--writable-tmpfs`):
    /// the instance's user namespace and its base mount namespace (the image mounted, the
    /// host at /oldroot), then a mount namespace of its own, a copy of the base, where it
    /// builds its root. It shares the user namespace (single-copy transfers) and the image
    /// server with the other ranks, and no mount.
    OwnMounts {
        user_ns: &'a OwnedFd,
        base_ns: &'a OwnedFd,
    },
}

/// The child of a rank of a shared instance: setns calls, its own root when its mounts are
/// its own, then the command. Returns only on error.
pub fn enter_instance(
    sys: &dyn Syscalls,
    plan: &Plan,
    parent: Pid,
    entry: Entry,
    old_mask: &SigSet,
) -> anyhow::Error {
    let setup = || -> Result<Ready> {
        sys.die_with_parent(parent)?;
        match entry {
            Entry::Root { user_ns, mnt_ns } => {
                sys.join_namespaces(user_ns, mnt_ns)?;
                debug::step("child: entered the shared instance");
            }
            Entry::OwnMounts { user_ns, base_ns } => {
                sys.join_namespaces(user_ns, base_ns)?;
                build_own_root(sys, plan)?;
                debug::step("child: own root built in the shared user namespace");
            }
        }
        prepare_exec(sys, plan, parent)
    };
    match setup() {
        Ok(ready) => run_command(sys, plan, &ready, old_mask, parent),
        Err(e) => e,
    }
}

/// In a copy of the instance's base mount namespace (the staging tmpfs as `/`): a tmpfs of
/// this process's own for the root's pieces, the root assembled there and entered. The
/// copy's mounts are this process's alone; the staging tmpfs, the image and the host are
/// the same objects as the base's (nothing is mounted again).
fn build_own_root(sys: &dyn Syscalls, plan: &Plan) -> Result<()> {
    sys.unshare_mount_namespace()?;
    let layout = Layout::in_own_tmpfs();
    sys.use_proc(&layout.oldroot.join("proc"));
    sys.mount(
        Some(Path::new("tmpfs")),
        Path::new(rootfs::OWN),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .context("mounting this rank's own tmpfs")?;
    build_root(sys, plan, &layout)
}

/// Start the command and stay as its reaper (`supervise::reaper`: it ends whatever the command
/// leaves, even after a `kill -9` of the launcher). Returns only on error.
fn run_command(
    sys: &dyn Syscalls,
    plan: &Plan,
    ready: &Ready,
    old_mask: &SigSet,
    launcher: Pid,
) -> anyhow::Error {
    if let Err(e) = sys.become_reaper(launcher) {
        return e;
    }
    match sys.spawn_command(&ready.program, &plan.argv, &ready.env, old_mask) {
        Err(e) => e,
        Ok(command) => {
            // The reaper needs none of the descriptors it inherited; the command keeps its own.
            // No descriptor above 2 is used by this process from here on.
            close_from(3);
            crate::apply::supervise::reaper(command, launcher)
        }
    }
}

/// Print the child's error and leave without running the parent's destructors.
pub fn exit(err: anyhow::Error) -> ! {
    debug::line(format_args!("launcher: error: {err:#}"));
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(255) }
}

/// Right before the exec: tells the launcher, and waits until it has stopped storing pages
/// into the page cache (no store may wait on a READ of the command's: fuse/push.rs).
fn end_stores(chan: &Channel) {
    if chan.send(Message::AboutToExec).is_ok() {
        let _ = chan.recv();
    }
    debug::step("child: page pushes ended");
}

/// New user and mount namespaces, the staging tmpfs, the image mounted with FUSE, and the
/// /dev/fuse descriptor sent to the launcher (not for a sandbox directory, which needs no
/// server). Returns the staging directory.
fn mount_image(sys: &dyn Syscalls, plan: &Plan, parent: Pid, chan: &Channel) -> Result<PathBuf> {
    sys.die_with_parent(parent)?;
    sys.enter_user_namespace(plan.uid, plan.gid)?;
    debug::step("child: user and mount namespaces entered");
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .context("making the mount namespace private")?;
    let staging = mount_staging(sys)?;
    for d in ["image", "oldroot"] {
        sys.mkdir(&staging.join(d), 0o755)?;
    }
    // A sandbox directory is bound once the host is under /oldroot (rootfs::assemble): the
    // staging tmpfs may now cover the directory's own path (/tmp/sandbox).
    if !plan.image.is_directory() {
        mount_fuse(sys, plan, &plan.image.path, &staging.join("image"), chan)
            .context("mounting the image with FUSE")?;
        debug::step(format_args!(
            "child: image mounted with FUSE (staging at {})",
            staging.display()
        ));
    }
    mount_overlay_images(sys, plan, &staging, chan)?;
    Ok(staging)
}

/// `--overlay IMG.sqfs`: each image layer mounted with FUSE at `overlays/N` in the staging
/// tmpfs, its descriptor sent to the launcher after the image's, in the layers' order.
fn mount_overlay_images(
    sys: &dyn Syscalls,
    plan: &Plan,
    staging: &Path,
    chan: &Channel,
) -> Result<()> {
    let overlays = staging.join(rootfs::OVERLAYS);
    let mut made = false;
    for (n, layer) in plan.lower.iter().enumerate() {
        let crate::plan::LowerLayer::Image(image) = layer else {
            continue;
        };
        if !made {
            sys.mkdir(&overlays, 0o755)?;
            made = true;
        }
        let target = overlays.join(n.to_string());
        sys.mkdir(&target, 0o755)?;
        mount_fuse(sys, plan, &image.path, &target, chan).with_context(|| {
            format!(
                "mounting the overlay image {} with FUSE",
                image.path.display()
            )
        })?;
        debug::step(format_args!(
            "child: overlay image {} mounted with FUSE",
            image.path.display()
        ));
    }
    Ok(())
}

/// Mount `source` with FUSE at `target` and hand the /dev/fuse descriptor to the launcher,
/// which serves it.
fn mount_fuse(
    sys: &dyn Syscalls,
    plan: &Plan,
    source: &Path,
    target: &Path,
    chan: &Channel,
) -> Result<()> {
    let fuse_fd = sys.open_dev_fuse()?;
    let data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        fuse_fd.as_raw_fd(),
        plan.uid,
        plan.gid
    );
    sys.mount(
        Some(source),
        target,
        Some("fuse.launcher"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&data),
    )?;
    chan.send_fd(fuse_fd.as_raw_fd())
        .context("handing the FUSE connection to the launcher")?;
    // Our copy goes at once: a child that kept one and waited on a FUSE request when the
    // launcher was killed would stay in D state forever, holding the connection it waits on.
    drop(fuse_fd);
    Ok(())
}

fn mount_staging(sys: &dyn Syscalls) -> Result<PathBuf> {
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

/// In the child's own mount namespace: pivot into the staging tmpfs (the host then under
/// /oldroot), and bind a sandbox directory at /image.
fn enter_staging(sys: &dyn Syscalls, plan: &Plan, staging: &Path, layout: &Layout) -> Result<()> {
    sys.pivot_root(staging, &staging.join("oldroot"))?;
    sys.chdir(Path::new("/"))?;
    sys.use_proc(&layout.oldroot.join("proc"));
    debug::step("child: staging is /");
    if let Some(program) = &plan.program {
        // The kernel learns the program's inode now, so the server can push its pages into
        // the page cache as the read-ahead decompresses them, before the exec faults them in.
        crate::apply::syscalls::look_up_in_root(&layout.image, Path::new(program));
    }
    rootfs::bind_image_dir(sys, plan, layout)
}

/// Build the container root in `layout` and enter it.
fn build_root(sys: &dyn Syscalls, plan: &Plan, layout: &Layout) -> Result<()> {
    rootfs::assemble(sys, plan, layout)?;
    debug::step("child: container root assembled");
    rootfs::enter(sys, layout)
}

/// What the command is started with: its program and its environment.
struct Ready<'a> {
    program: PathBuf,
    /// The plan's own, unless the image's shell reported another (no copy on the common path).
    env: std::borrow::Cow<'a, [(String, String)]>,
}

/// Inside the container root: working directory, no capabilities, no new privileges, the
/// environment (from the image's shell when its scripts need one) and the program to execute.
fn prepare_exec<'a>(sys: &dyn Syscalls, plan: &'a Plan, launcher: Pid) -> Result<Ready<'a>> {
    let cwd = std::iter::once(&plan.cwd)
        .chain(plan.cwd_fallbacks.iter())
        .find(|d| sys.chdir(d).is_ok())
        .ok_or_else(|| {
            anyhow!(
                "working directory '{}' does not exist in the container",
                plan.cwd.display()
            )
        })?;
    if cwd != &plan.cwd {
        debug::warn(format_args!(
            "'{}' does not exist in the container; starting in '{}'",
            plan.cwd.display(),
            cwd.display()
        ));
    }
    sys.drop_capabilities()?;
    sys.set_no_new_privs()?;
    let env = match &plan.env_shell {
        None => std::borrow::Cow::Borrowed(plan.env.as_slice()),
        Some(shell) => {
            // What the shell leaves running is ours to end, even after a kill -9 of the
            // launcher (the reaper's duties start here, not at the command).
            sys.become_reaper(launcher)?;
            let report = sys
                .run_for_output(&shell.argv(), &shell.base, CAPTURED_MAX_BYTES, launcher)
                .context("running the image's environment scripts")?;
            debug::step("child: the image's environment scripts sourced by its shell");
            std::borrow::Cow::Owned(shell.finish(&report)?)
        }
    };
    let program = find_program(&plan.argv[0], &env)?;
    debug::step(format_args!(
        "exec {} in {}",
        program.display(),
        cwd.display()
    ));
    Ok(Ready { program, env })
}

/// Search the container's PATH the way execvp would, but with an error that says where we looked.
fn find_program(name: &str, env: &[(String, String)]) -> Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    for candidate in crate::plan::path_search::candidates(name, env) {
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && !candidate.is_dir()
        {
            return Ok(candidate);
        }
    }
    let path = crate::env_list::get(env, "PATH").unwrap_or("");
    bail!("command '{name}' not found in the container (PATH={path})")
}

/// The keeper of a shared instance (in the staging tmpfs, the instance's base mount
/// namespace): holds the user namespace and the base for the ranks whose mounts are their
/// own. With `root`, a child of its own (the root keeper) builds this plan's root in a copy
/// of the base and holds it for the ranks with the same mounts. Says the instance is ready,
/// then waits to be killed; the root keeper dies with it (PR_SET_PDEATHSIG).
fn keep(sys: &dyn Syscalls, plan: &Plan, chan: Channel, root: bool) -> anyhow::Error {
    let _ = nix::sys::prctl::set_name(c"launcher-keep");
    if let Err(e) = sys.mkdir(Path::new(rootfs::OWN), 0o755) {
        return e;
    }
    if root {
        let keeper = nix::unistd::getpid();
        // SAFETY: this process is single-threaded (the launcher's child).
        match unsafe { nix::unistd::fork() } {
            Err(e) => return anyhow!("fork of the root keeper: {e}"),
            Ok(nix::unistd::ForkResult::Child) => exit(hold_root(sys, plan, keeper, chan)),
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                // The root keeper says when the instance is ready; a keeper whose root
                // keeper failed leaves with its status, so the launcher learns of it.
                drop(chan);
                // No fd is used after this point; the standard ones go too, as in
                // `ready_then_pause`.
                close_from(0);
                let code = loop {
                    match nix::sys::wait::waitpid(child, None) {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => break code,
                        Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                            break 128 + sig as i32
                        }
                        Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                        Err(e) => return anyhow!("waiting for the root keeper: {e}"),
                    }
                };
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(code) }
            }
        }
    }
    ready_then_pause(chan)
}

/// The root keeper: this plan's root in a mount namespace of its own, for the ranks with the
/// same mounts to join. Returns only on error.
fn hold_root(sys: &dyn Syscalls, plan: &Plan, keeper: Pid, chan: Channel) -> anyhow::Error {
    let _ = nix::sys::prctl::set_name(c"launcher-root");
    if let Err(e) = sys
        .die_with_parent(keeper)
        .and_then(|()| build_own_root(sys, plan))
    {
        return e;
    }
    ready_then_pause(chan)
}

/// Tell the launcher the instance is ready, then wait to be killed.
fn ready_then_pause(chan: Channel) -> anyhow::Error {
    if let Err(e) = chan.send(Message::RootReady) {
        return anyhow!("telling the launcher the instance is ready: {e:#}");
    }
    // Keep nothing of the launcher's open files, the standard ones included: a pipe the
    // keeper held would keep a reader waiting for its end (`instance start`'s caller, srun)
    // for as long as the instance lives. No fd is used after this point.
    close_from(0);
    loop {
        // SAFETY: pause has no preconditions; SIGKILL ends it.
        unsafe { libc::pause() };
    }
}

/// Closes every descriptor from `first` up: close_range(2) called through syscall(2), since the
/// libc crate has no wrapper for it on musl (the static build). Kernels before 5.9 answer ENOSYS
/// and the descriptors stay open, as they would with the wrapper.
fn close_from(first: u32) {
    // SAFETY: close_range takes plain integers; the callers use no descriptor from `first` up
    // afterwards.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::syscalls::{assert_in_order, mount_call, Call, Recorder};
    use crate::image::view::ImageDesc;
    use crate::plan::MountStep;

    fn plan() -> Plan {
        Plan {
            image: ImageDesc {
                path: "/i.sqfs".into(),
                format: "SquashFS",
                squashfs_offset: 0,
                file_size: 1,
            },
            uid: 4242,
            gid: 4243,
            writable_root: false,
            writable_sandbox: false,
            overlay_dir: None,
            lower: vec![],
            mounts: vec![MountStep::Bind {
                src: "/proc".into(),
                dst: "/proc".into(),
                readonly: false,
                recursive: true,
            }],
            upper: vec![],
            foreign_server: false,
            env: vec![("PATH".into(), "/bin".into())],
            env_shell: None,
            cwd: "/work".into(),
            cwd_fallbacks: vec!["/".into()],
            argv: vec!["/bin/true".into(), "x".into()],
            program: None,
            injected: vec![],
            warnings: vec![],
            instance: None,
        }
    }

    #[test]
    fn a_private_instance_builds_the_root_drops_privileges_then_execs() {
        let rec = Recorder::default();
        let (launcher, child) = Channel::pair().unwrap();
        // The launcher's side: it takes the descriptor, then answers the exec notice.
        let answer = std::thread::spawn(move || {
            assert!(launcher.recv_fd().unwrap().is_some());
            assert_eq!(launcher.recv().unwrap(), Some(Message::AboutToExec));
            launcher.send(Message::StoresEnded).unwrap();
        });
        let mask = SigSet::thread_get_mask().unwrap();
        let p = plan();
        let err = create_instance(&rec, &p, Pid::this(), child, Then::Exec(&mask));
        assert_eq!(err.to_string(), "recorded spawn");
        answer.join().unwrap();
        let calls = rec.calls.into_inner();
        let staging = PathBuf::from(STAGING_CANDIDATES[0]);
        let fuse_mount = calls
            .iter()
            .find(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "fuse.launcher"))
            .unwrap();
        let Call::Mount {
            src, target, data, ..
        } = fuse_mount
        else {
            unreachable!()
        };
        assert_eq!(src.as_deref(), Some(Path::new("/i.sqfs")));
        assert_eq!(target, &staging.join("image"));
        assert!(
            data.as_deref()
                .is_some_and(|d| d.contains("user_id=4242,group_id=4243")),
            "{data:?}"
        );
        assert_in_order(
            &calls,
            &[
                Call::DieWithParent,
                Call::EnterUserNamespace {
                    uid: 4242,
                    gid: 4243,
                },
                mount_call(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
                Call::Mkdir {
                    path: staging.join("oldroot"),
                    mode: 0o755,
                },
                Call::OpenDevFuse,
                fuse_mount.clone(),
                Call::PivotRoot {
                    new_root: staging.clone(),
                    put_old: staging.join("oldroot"),
                },
                Call::UseProc("/oldroot/proc".into()),
                mount_call(Some("/image"), "/newroot", None, MsFlags::MS_BIND, None),
                mount_call(
                    Some("/oldroot/proc"),
                    "/newroot/proc",
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                ),
                Call::MakeReadonly {
                    target: "/newroot".into(),
                    recursive: false,
                },
                Call::PivotRoot {
                    new_root: ".".into(),
                    put_old: ".".into(),
                },
                Call::UmountDetach(".".into()),
                Call::Chdir("/work".into()),
                Call::DropCapabilities,
                Call::SetNoNewPrivs,
                Call::BecomeReaper,
                Call::SpawnCommand {
                    program: "/bin/true".into(),
                    argv: vec!["/bin/true".into(), "x".into()],
                },
            ],
        );
        let caps = calls.iter().position(|c| *c == Call::DropCapabilities);
        let last_mount = calls.iter().rposition(|c| matches!(c, Call::Mount { .. }));
        assert!(last_mount < caps, "every mount before the privilege drop");
    }

    #[test]
    fn each_overlay_image_is_mounted_with_fuse_after_the_image_and_its_descriptor_sent() {
        let rec = Recorder::default();
        let (launcher, child) = Channel::pair().unwrap();
        let mut p = plan();
        let image = |path: &str| {
            crate::plan::LowerLayer::Image(ImageDesc {
                path: path.into(),
                format: "SquashFS",
                squashfs_offset: 0,
                file_size: 1,
            })
        };
        p.lower = vec![
            image("/a.sqfs"),
            crate::plan::LowerLayer::Dir("/srv/ro".into()),
            image("/b.sqfs"),
        ];
        // The launcher's side: one descriptor for the image, one per overlay image.
        let answer = std::thread::spawn(move || {
            for _ in 0..3 {
                assert!(launcher.recv_fd().unwrap().is_some());
            }
        });
        let staging = mount_image(&rec, &p, Pid::this(), &child).unwrap();
        answer.join().unwrap();
        let calls = rec.calls.into_inner();
        let mounts: Vec<(PathBuf, PathBuf)> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    src: Some(src),
                    target,
                    fstype: Some(t),
                    ..
                } if t == "fuse.launcher" => Some((src.clone(), target.clone())),
                _ => None,
            })
            .collect();
        // The directory layer needs no mount here: overlayfs takes it as it is.
        assert_eq!(
            mounts,
            vec![
                ("/i.sqfs".into(), staging.join("image")),
                ("/a.sqfs".into(), staging.join("overlays/0")),
                ("/b.sqfs".into(), staging.join("overlays/2")),
            ]
        );
        assert_in_order(
            &calls,
            &[
                Call::OpenDevFuse,
                Call::Mkdir {
                    path: staging.join("overlays"),
                    mode: 0o755,
                },
                Call::Mkdir {
                    path: staging.join("overlays/0"),
                    mode: 0o755,
                },
                Call::OpenDevFuse,
                Call::Mkdir {
                    path: staging.join("overlays/2"),
                    mode: 0o755,
                },
                Call::OpenDevFuse,
            ],
        );
    }

    #[test]
    fn a_joining_rank_makes_no_mount() {
        let rec = Recorder::default();
        let ns = |_| -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        let mask = SigSet::thread_get_mask().unwrap();
        let p = plan();
        let (user_ns, mnt_ns) = (ns(()), ns(()));
        let entry = Entry::Root {
            user_ns: &user_ns,
            mnt_ns: &mnt_ns,
        };
        let err = enter_instance(&rec, &p, Pid::this(), entry, &mask);
        assert_eq!(err.to_string(), "recorded spawn");
        let calls = rec.calls.into_inner();
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Mount { .. })),
            "{calls:#?}"
        );
        assert_in_order(
            &calls,
            &[
                Call::DieWithParent,
                Call::JoinNamespaces,
                Call::Chdir("/work".into()),
                Call::DropCapabilities,
                Call::SetNoNewPrivs,
                Call::BecomeReaper,
                Call::SpawnCommand {
                    program: "/bin/true".into(),
                    argv: vec!["/bin/true".into(), "x".into()],
                },
            ],
        );
    }

    #[test]
    fn a_rank_with_mounts_of_its_own_builds_its_root_in_a_copy_of_the_base() {
        let rec = Recorder::default();
        let ns = |_| -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        let mask = SigSet::thread_get_mask().unwrap();
        let p = plan().for_foreign_server();
        let (user_ns, base_ns) = (ns(()), ns(()));
        let entry = Entry::OwnMounts {
            user_ns: &user_ns,
            base_ns: &base_ns,
        };
        let err = enter_instance(&rec, &p, Pid::this(), entry, &mask);
        assert_eq!(err.to_string(), "recorded spawn");
        let calls = rec.calls.into_inner();
        // The image is the instance's: no user namespace or FUSE mount of its own.
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::OpenDevFuse | Call::EnterUserNamespace { .. })));
        assert_in_order(
            &calls,
            &[
                Call::DieWithParent,
                Call::JoinNamespaces,
                Call::UnshareMountNamespace,
                Call::UseProc("/oldroot/proc".into()),
                mount_call(
                    Some("tmpfs"),
                    "/own",
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=0755"),
                ),
                // Over a server started for another rank: an overlay, its pieces in the
                // rank's own tmpfs.
                mount_call(
                    Some("overlay"),
                    "/own/newroot",
                    Some("overlay"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("lowerdir=/image,upperdir=/own/rw/upper,workdir=/own/rw/work,userxattr"),
                ),
                mount_call(
                    Some("/oldroot/proc"),
                    "/own/newroot/proc",
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                ),
                Call::MakeReadonly {
                    target: "/own/newroot".into(),
                    recursive: false,
                },
                Call::Chdir("/own/newroot".into()),
                Call::PivotRoot {
                    new_root: ".".into(),
                    put_old: ".".into(),
                },
                Call::UmountDetach(".".into()),
                Call::Chdir("/work".into()),
                Call::DropCapabilities,
                Call::SpawnCommand {
                    program: "/bin/true".into(),
                    argv: vec!["/bin/true".into(), "x".into()],
                },
            ],
        );
    }
}
