//! Apply a plan: the child that creates the namespaces, mounts the image and becomes the
//! command (`child`), and the launcher that serves the image and supervises the child until it
//! exits (`supervise`); or, for a rank of a shared instance, leading or joining it.
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
//!
//! A sandbox directory has no archive and no server: the child binds the directory as the
//! root, and the launcher only supervises (and, for a shared instance, leads).

use crate::apply::channel::{Channel, Message};
use crate::apply::child::{self, Entry, Then};
use crate::apply::instance;
use crate::apply::share::{self, Role};
use crate::apply::supervise::{
    children_of, failed_child_status, finish_failed_start, kill_leftovers, prepare_supervision,
    supervise,
};
use crate::apply::syscalls::Real;
use crate::debug;
use crate::fuse::counts::RequestCounts;
use crate::fuse::push::{Batch, Kind, Pusher};
use crate::fuse::server::ImageFs;
use crate::plan::Plan;
use anyhow::{anyhow, Context, Result};
use image_tools::squashfs::Archive;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, getpid, ForkResult, Pid};
use std::os::fd::OwnedFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

pub struct LaunchSettings {
    pub fuse_threads: usize,
    /// Kernel readahead for the image, in bytes.
    pub fuse_readahead: u32,
    pub fuse_push: bool,
    pub prefetch: bool,
    /// Where the read-ahead keeps decompressed blocks across launches (None: nowhere).
    pub block_cache: Option<crate::fuse::block_cache::Settings>,
}

/// The SquashFS archives a launch serves: the image's (None for a sandbox directory), and
/// those of the plan's image layers (`Plan::lower`), in their order.
pub struct Archives {
    pub image: Option<Arc<Archive>>,
    pub overlays: Vec<Arc<Archive>>,
}

/// Launch the plan and return the exit status to leave with.
pub fn launch(
    plan: &Plan,
    archives: Archives,
    settings: &LaunchSettings,
    role: Role,
    daemon: Option<instance::Daemon>,
) -> Result<i32> {
    match role {
        Role::Join(joiner) => {
            let image = archives.image.clone();
            let code = join(plan, joiner);
            // A joining rank reads the image only to plan (its leader serves the files).
            if let Some(archive) = &image {
                report_image_reads(archive);
            }
            code
        }
        Role::Lead(leader) => serve(plan, archives, settings, Some((leader, daemon))),
        Role::Private(_) => serve(plan, archives, settings, None),
    }
}

/// A private instance, or the leader of a shared one.
fn serve(
    plan: &Plan,
    archives: Archives,
    settings: &LaunchSettings,
    leader: Option<(share::Leader, Option<instance::Daemon>)>,
) -> Result<i32> {
    // Before any thread starts, so that every thread inherits the blocked mask.
    let (forwarded, old_mask) = prepare_supervision()?;
    let (pusher, push_rx) = Pusher::new();
    let Archives {
        image: archive,
        overlays,
    } = archives;
    let prefetch = match (
        plan.program.as_ref().filter(|_| settings.prefetch),
        archive.as_ref(),
    ) {
        (Some(program), Some(archive)) => crate::fuse::prefetch::spawn(
            archive.clone(),
            program.clone(),
            settings.fuse_push.then(|| pusher.clone()),
            settings.block_cache.clone().map(|c| (c, plan.uid)),
        ),
        _ => None,
    };
    let (ours, theirs) = Channel::pair()?;
    let parent = getpid();
    let then = match leader {
        None => Then::Exec(&old_mask),
        Some(_) => Then::Keep {
            root: root_is_shared(plan),
        },
    };
    // SAFETY: the child is single-threaded; the only other threads here (the read-ahead) hold
    // no lock the child takes but malloc's, which glibc makes safe across fork.
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(ours);
            child::exit(child::create_instance(
                &Real::new(),
                plan,
                parent,
                theirs,
                then,
            ))
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    // No server for a directory: a child that fails says why itself and exits with 255,
    // which supervision passes on. The child sends the image's descriptor, then one per
    // overlay image.
    let server = match archive {
        None => None,
        Some(archive) => {
            let Some(fuse_fd) = ours.recv_fd()? else {
                // The child said why on stderr.
                return finish_failed_start(child);
            };
            let started = start_server(plan, archive, settings, fuse_fd, pusher.clone(), push_rx);
            match started_or_status(started, child)? {
                Ok(s) => Some(s),
                Err(code) => return Ok(code),
            }
        }
    };
    let mut layer_servers = Vec::with_capacity(overlays.len());
    for archive in overlays {
        let Some(fuse_fd) = ours.recv_fd()? else {
            return finish_failed_start(child);
        };
        match started_or_status(start_layer_server(plan, archive, settings, fuse_fd), child)? {
            Ok(s) => layer_servers.push(s),
            Err(code) => return Ok(code),
        }
    }
    let Some(leader) = leader else {
        end_stores_on_request(ours, pusher.clone());
        let code = supervise(child, &forwarded, Some(&pusher));
        // No store may be left in progress when the threads die with the process (push.rs).
        pusher.close_listed();
        Server::report_counts(&server);
        let code = code?;
        kill_leftovers(None);
        drop(server);
        drop(layer_servers);
        join_prefetch(prefetch);
        return Ok(code);
    };
    let (leader, daemon) = leader;
    let code = lead(
        plan, child, &ours, &pusher, leader, daemon, &forwarded, &old_mask,
    );
    pusher.close_listed();
    Server::report_counts(&server);
    drop(server);
    drop(layer_servers);
    join_prefetch(prefetch);
    code
}

/// Ends the read-ahead (`Prefetch::finish`: waited for only with a block cache, to leave it
/// within its bound).
fn join_prefetch(prefetch: Option<crate::fuse::prefetch::Prefetch>) {
    if let Some(p) = prefetch {
        p.finish();
    }
}

/// A server that failed to start, when the child failed after the mount (taking the mount
/// with it) and said why itself: Err(its exit status). Otherwise the child is killed and the
/// error returned.
fn started_or_status<S>(started: Result<S>, child: Pid) -> Result<Result<S, i32>> {
    match started {
        Ok(s) => Ok(Ok(s)),
        Err(e) => {
            if let Some(code) = failed_child_status(child) {
                return Ok(Err(code));
            }
            let _ = kill(child, Signal::SIGKILL);
            Err(e)
        }
    }
}

/// In the parent: the server of an overlay image (`--overlay IMG.sqfs`): the image's server
/// without its extras (no mount points, files, pushes or read-ahead: those are the image's).
fn start_layer_server(
    plan: &Plan,
    archive: Arc<Archive>,
    settings: &LaunchSettings,
    fuse_fd: OwnedFd,
) -> Result<fuser::BackgroundSession> {
    let config = session_config(settings);
    let fs = ImageFs::new(
        archive,
        plan.writable_root.then_some((plan.uid, plan.gid)),
        settings.fuse_readahead,
    );
    let session = fuser::Session::from_fd(fs, fuse_fd, fuser::SessionACL::Owner, config)
        .context("FUSE handshake with the kernel for an overlay image")?;
    let server = session
        .spawn()
        .context("starting the FUSE server threads of an overlay image")?;
    debug::step("parent: FUSE server of an overlay image started");
    Ok(server)
}

/// In the parent of a private instance: ends the pushes when the child says it is about to
/// exec (or is gone), and says so.
fn end_stores_on_request(chan: Channel, pusher: Pusher) {
    let _ = std::thread::Builder::new()
        .name("end-stores".into())
        .spawn(move || {
            let asked = chan.recv_is(Message::AboutToExec);
            pusher.close();
            if asked {
                let _ = chan.send(Message::StoresEnded);
            }
        });
}

/// The running image server.
struct Server {
    /// Dropped last: unmounts and ends the worker threads.
    _session: fuser::BackgroundSession,
    counts: Arc<RequestCounts>,
    archive: Arc<Archive>,
}

impl Server {
    /// `--debug`: the requests the command's file accesses cost (benches/smallfiles.sh), and
    /// the bytes of the image file read.
    fn report_counts(server: &Option<Server>) {
        if let Some(s) = server {
            debug::step(format_args!("FUSE requests: {}", s.counts));
            report_image_reads(&s.archive);
        }
    }
}

/// `--debug`: the bytes of the image file this launcher read, to plan and to serve
/// (benches/scale.sh: a node reads a few MB of a 1 GB image for `/bin/true`, not the image).
fn report_image_reads(archive: &Archive) {
    debug::step(format_args!(
        "image bytes read: {} of {}",
        archive.bytes_read(),
        archive.superblock().bytes_used
    ));
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
) -> Result<Server> {
    let config = session_config(settings);
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
    let counts = Arc::new(RequestCounts::default());
    fs = fs.with_counts(counts.clone());
    let image = archive.clone();
    // The push thread writes its stores on a descriptor of its own (fuse/push.rs StoreFd).
    let store_fd = fuse_fd.try_clone().ok();
    let session = fuser::Session::from_fd(fs, fuse_fd, fuser::SessionACL::Owner, config)
        .context("FUSE handshake with the kernel")?;
    let server = session
        .spawn()
        .context("starting the FUSE server threads")?;
    debug::step("parent: FUSE server threads started");
    // The push thread lives as long as the launcher (it holds a sender itself). Without it
    // (no descriptor), offers find the queue closed and are dropped.
    if let Some(fd) = store_fd {
        let _ = std::thread::Builder::new().name("push".into()).spawn({
            let counts = counts.clone();
            let store = crate::fuse::push::StoreFd(fd);
            move || crate::fuse::push::run(push_rx, pusher, store, archive, counts)
        });
    }
    Ok(Server {
        _session: server,
        counts,
        archive: image,
    })
}

/// The FUSE session settings of every server of a launch.
fn session_config(settings: &LaunchSettings) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.n_threads = Some(settings.fuse_threads.max(1));
    config.clone_fd = true;
    config
}

/// Whether the ranks with this plan's mounts use one root: not with `--writable-tmpfs`, where
/// each rank writes a root of its own (`--overlay DIR` is shared like a read-only root: one
/// overlay mount per node, as two mounts over one upper directory would corrupt it). A named
/// instance always has one root, writable or not: every `exec instance://` sees its changes.
fn root_is_shared(plan: &Plan) -> bool {
    plan.instance.is_some() || !(plan.writable_root && plan.overlay_dir.is_none())
}

/// The leader of a shared instance: its child (the keeper) holds the user namespace and the
/// base mount namespace, its grandchild (the root keeper) this plan's root, so the namespaces
/// outlive any one rank; this rank's command enters them like any other rank's.
/// A named instance's leader (`daemon`) runs the startscript instead, and holds the instance
/// until it is stopped (`instance::hold`).
#[allow(clippy::too_many_arguments)]
fn lead(
    plan: &Plan,
    keeper: Pid,
    chan: &Channel,
    pusher: &Pusher,
    mut leader: share::Leader,
    daemon: Option<instance::Daemon>,
    forwarded: &SigSet,
    old_mask: &SigSet,
) -> Result<i32> {
    let ready = chan.recv_is(Message::RootReady);
    // Before any rank's command can read a file (push.rs).
    pusher.close();
    if !ready {
        // The keeper said why.
        return finish_failed_start(keeper);
    }
    let user_ns = open_ns(&format!("/proc/{keeper}/ns/user"))?;
    let base_ns = open_ns(&format!("/proc/{keeper}/ns/mnt"))?;
    let ino = |fd: &OwnedFd| -> Result<u64> {
        Ok(nix::sys::stat::fstat(fd)
            .context("stat of the keeper's namespace")?
            .st_ino)
    };
    let root = match root_is_shared(plan) {
        false => None,
        true => {
            // The keeper's only child.
            let Some(&pid) = children_of(keeper.as_raw()).first() else {
                return Err(anyhow!("the root keeper of the shared instance is gone"));
            };
            let fd = open_ns(&format!("/proc/{pid}/ns/mnt"))?;
            Some((pid, fd))
        }
    };
    leader.publish(&share::State {
        leader_pid: getpid().as_raw(),
        keeper_pid: keeper.as_raw(),
        user_ns: ino(&user_ns)?,
        base_mnt_ns: ino(&base_ns)?,
        flavour: leader.flavour.clone(),
        root: match &root {
            Some((pid, fd)) => Some(share::RootState {
                keeper_pid: *pid,
                mnt_ns: ino(fd)?,
            }),
            None => None,
        },
        image_owned_by_caller: plan.writable_root,
        named: plan.instance.clone(),
    })?;
    debug::step("shared instance published");
    let entry = || match &root {
        Some((_, mnt_ns)) => Entry::Root {
            user_ns: &user_ns,
            mnt_ns,
        },
        None => Entry::OwnMounts {
            user_ns: &user_ns,
            base_ns: &base_ns,
        },
    };
    if let Some(daemon) = daemon {
        let Some((root_keeper, root_ns)) = &root else {
            return Err(anyhow!("a named instance without a root of its own"));
        };
        let root = (Pid::from_raw(*root_keeper), ino(root_ns)?);
        let me = getpid();
        let start = || -> Result<Pid> {
            // SAFETY: the child execs or exits; it takes no lock another thread may hold but
            // malloc's, which glibc makes safe across fork.
            match unsafe { fork() }.context("fork")? {
                ForkResult::Child => child::exit(child::enter_instance(
                    &Real::new(),
                    plan,
                    me,
                    entry(),
                    old_mask,
                )),
                ForkResult::Parent { child } => Ok(child),
            }
        };
        let start: Option<&dyn Fn() -> Result<Pid>> = if plan.argv.is_empty() {
            None
        } else {
            Some(&start)
        };
        return instance::hold(keeper, root, leader, daemon, forwarded, start);
    }
    let code = run_in_instance(plan, entry(), forwarded, old_mask, Some(pusher));
    // The leader no longer watches for signals while it waits for the other ranks: their
    // listed files are not pushed from here on (push.rs).
    pusher.close_listed();
    let code = code?;
    kill_leftovers(Some(keeper));
    debug::step("waiting for the ranks that joined");
    let dir = leader.path.clone();
    let closed = leader.wait_and_close();
    let _ = kill(keeper, Signal::SIGKILL);
    let _ = waitpid(keeper, None);
    kill_leftovers(None);
    share::remove_dir_if_empty(&dir);
    closed?;
    Ok(code)
}

/// A rank that joins a running shared instance: no mount at all when the root of its mounts
/// is built; else its own root in a mount namespace of its own, over the instance's image.
fn join(plan: &Plan, joiner: share::Joiner) -> Result<i32> {
    let (forwarded, old_mask) = prepare_supervision()?;
    // Without its leader, this rank's image server is gone: its command is ended (TERM,
    // forwarded like the launcher's own), not left running on a dead mount.
    let me = getpid();
    let leader = joiner.state.leader_pid;
    joiner.when_leader_dies(move || {
        debug::line(format_args!(
            "launcher: error: launcher {leader}, which serves the image to this node's ranks of \
             the job step, died; ending this rank"
        ));
        let _ = kill(me, Signal::SIGTERM);
    })?;
    let code = if joiner.own_mounts {
        // The image server was started for the leader's mounts, not these (for a writable
        // root, the same as the leader's: it shows no mount point or file of any plan).
        let own = plan.for_foreign_server();
        let entry = Entry::OwnMounts {
            user_ns: &joiner.user_ns,
            base_ns: &joiner.mnt_ns,
        };
        run_in_instance(&own, entry, &forwarded, &old_mask, None)?
    } else {
        let entry = Entry::Root {
            user_ns: &joiner.user_ns,
            mnt_ns: &joiner.mnt_ns,
        };
        run_in_instance(plan, entry, &forwarded, &old_mask, None)?
    };
    kill_leftovers(None);
    joiner.finish();
    Ok(code)
}

/// Fork the command into a shared instance's namespaces and supervise it.
fn run_in_instance(
    plan: &Plan,
    entry: Entry,
    forwarded: &SigSet,
    old_mask: &SigSet,
    pusher: Option<&Pusher>,
) -> Result<i32> {
    let parent = getpid();
    // SAFETY: the child execs or exits; it takes no lock another thread may hold but
    // malloc's, which glibc makes safe across fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => child::exit(child::enter_instance(
            &Real::new(),
            plan,
            parent,
            entry,
            old_mask,
        )),
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
