//! One container instance per node for the ranks of a job step.
//!
//! When several ranks of one job step start the same image on a node, the first (the leader)
//! creates the user namespace and a base mount namespace with the image mounted by FUSE (the
//! keeper holds them), and the container root of its own mounts in a copy of the base (the
//! root keeper holds it). A rank with the same mounts joins that root with setns, no mount
//! at all; a rank whose mounts differ (other binds, `--writable-tmpfs`: its mounts, its
//! `flavour`, are its own) joins the user namespace and the base, then builds its root in a
//! mount namespace of its own. One FUSE server and one page cache serve the node, and every
//! rank of the step is in one user namespace, which Open MPI and UCX need for single-copy
//! transfers (CMA: process_vm_readv is refused across user namespaces).
//!
//! The rendezvous is a per-user directory on node-local storage, with files named after a key
//! (uid, node, job step, image identity):
//! - `KEY.lock`: held exclusively while deciding to lead or join, and while tearing down;
//! - `KEY.state`: written by the leader once the root is ready (pids and namespace inodes);
//! - `KEY.leader`: held exclusively by the leader for its whole life, so a crashed leader is
//!   seen as gone (the kernel drops a flock with its last holder);
//! - `KEY.users`: held shared by every rank that joined, while its command runs; the leader
//!   takes it exclusively before tearing down, so the last rank out ends the instance.
//!
//! Everything here runs before any namespace is entered: the files are plain host files and
//! the directory fd is kept to remove them at the end (by then /tmp may be covered by the
//! staging tmpfs in the leader's namespace).

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The job step that ranks of one launch share, from the variables their launcher sets.
/// None: not under a parallel launcher, so nothing to share. `parent`: our parent process.
pub fn job_step(env: &[(String, String)], parent: i32) -> Option<String> {
    let get = |key: &str| crate::env_list::get_nonempty(env, key);
    // Slurm's pmix plugin and Open MPI's mpirun both name the job in PMIX_NAMESPACE, unique
    // per step (a batch script's own environment has SLURM_JOB_ID but no step).
    if let Some(ns) = get("PMIX_NAMESPACE") {
        return Some(format!("pmix:{ns}"));
    }
    if let (Some(job), Some(step)) = (get("SLURM_JOB_ID"), get("SLURM_STEP_ID")) {
        return Some(format!("slurm:{job}.{step}"));
    }
    if let Some(job) = get("OMPI_MCA_ess_base_jobid") {
        return Some(format!("ompi:{job}"));
    }
    // MPICH's Hydra names no job; the ranks of a node are children of one proxy process.
    if get("PMI_RANK").is_some() && get("PMI_SIZE").is_some() && get("MPI_LOCALNRANKS").is_some() {
        return Some(format!("hydra:{parent}"));
    }
    None
}

/// The node this rank runs on, as part of the rendezvous key. The job step's name is the same
/// on every node, and so is the image's identity on a shared file system; when the rendezvous
/// directory is shared too (a site's `LAUNCHER_SHARE_DIR` on a parallel file system, or nodes
/// that share /tmp), only this keeps a rank from joining an instance on another node: its
/// flocks are seen across nodes, and where the PIDs are visible (several slurmd on one host)
/// the join would even succeed, into the other node's mounts. Both names go in: the host name
/// tells real nodes apart whatever the starter passed on (Hydra hands node 1's environment,
/// SLURMD_NODENAME included, to the ranks on node 2), and Slurm's node name tells apart the
/// nodes of several slurmd on one host, which share a host name. Ranks of one node agree on
/// both, so they still meet.
pub fn node_name(env: &[(String, String)]) -> Result<String> {
    let host = nix::unistd::gethostname().context("reading the host name")?;
    let slurm = crate::env_list::get_nonempty(env, "SLURMD_NODENAME").unwrap_or("");
    Ok(format!("{}/{slurm}", host.to_string_lossy()))
}

/// The rendezvous key: ranks with equal keys use one instance (user namespace, image server).
/// The node is part of it (see `node_name`), and the identity of each of `images` (the image,
/// then its overlay images: what the instance's base mounts); the mounts are not (see
/// `flavour`).
pub fn key(uid: u32, node: &str, job_step: &str, images: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!("uid={uid}\0node={node}\0step={job_step}\0"));
    for image in images {
        let meta = std::fs::metadata(image)
            .with_context(|| format!("'{}': reading the image's identity", image.display()))?;
        h.update(format!(
            "image={}:{}:{}:{}:{}\0",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
    }
    Ok(hex(&h.finalize()))
}

/// What a rank's mounts are, as a name: ranks of an instance with the same flavour can use one
/// root (one mount namespace); the others build their own.
pub fn flavour(mounts: &impl Serialize) -> Result<String> {
    let table = serde_json::to_vec(mounts).context("serializing the mount table")?;
    Ok(hex(&Sha256::digest(table)))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// What the leader publishes for the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub leader_pid: i32,
    /// A process that stays in the instance's user namespace and base mount namespace (the
    /// image mounted, the host at /oldroot, no root built) while the instance lives.
    pub keeper_pid: i32,
    pub user_ns: u64,
    pub base_mnt_ns: u64,
    /// The leader's mounts (`flavour`).
    pub flavour: String,
    /// The root built for the leader's flavour; None when each rank has a root of its own
    /// (`--writable-tmpfs`).
    pub root: Option<RootState>,
    /// The image server shows the image's files as the caller's (what a writable overlay
    /// needs to copy files up: the server of a writable leader).
    pub image_owned_by_caller: bool,
    /// A named instance's own facts (`launcher instance start`); None for a job step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named: Option<crate::plan::NamedInstance>,
}

/// A mount namespace with a container root built, and the process that stays in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootState {
    pub keeper_pid: i32,
    pub mnt_ns: u64,
}

/// The outcome of the rendezvous.
pub enum Role {
    /// Create the instance; others may join once it is published.
    Lead(Leader),
    /// Enter the namespaces of a live instance.
    Join(Joiner),
    /// Launch alone, for this reason (shown by --debug).
    Private(String),
}

pub struct Leader {
    dir: OwnedFd,
    /// Where `dir` is: removed by the last rank out when empty.
    pub path: PathBuf,
    key: String,
    /// Held until the state is published.
    lock: Option<File>,
    /// Held for the leader's whole life.
    _alive: File,
    /// The leader's mounts, published in the state.
    pub flavour: String,
}

pub struct Joiner {
    pub state: State,
    pub user_ns: OwnedFd,
    /// The root's mount namespace of this rank's flavour; else the base (`own_mounts`).
    pub mnt_ns: OwnedFd,
    /// No root of this rank's flavour is built: it builds its own in a copy of the base.
    pub own_mounts: bool,
    /// Held shared while this rank's command runs.
    user: File,
    /// The leader's lock file: a shared lock on it is granted once the leader is gone.
    leader: File,
    dir: OwnedFd,
    /// Where `dir` is.
    path: PathBuf,
    key: String,
    /// Set when this rank is done: the leader's end from then on is its normal one.
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Joiner {
    /// Call `gone` on a thread of its own if the leader dies while this rank runs, and its
    /// image server with it. The leader otherwise outlives every rank that joined (it waits
    /// for them), so this is always a crash (a `kill -9`, the OOM killer).
    pub fn when_leader_dies(&self, gone: impl FnOnce() + Send + 'static) -> Result<()> {
        let leader = self
            .leader
            .try_clone()
            .with_context(|| format!("watching {}.leader", self.key))?;
        let done = self.done.clone();
        std::thread::Builder::new()
            .name("leader-watch".into())
            .spawn(move || {
                // Blocks while the leader holds its lock; a lock of ours is given back at
                // once, so that a new leader may take the name.
                if retry_eintr(|| flock(&leader, libc::LOCK_SH)).is_ok() {
                    let _ = flock(&leader, libc::LOCK_UN);
                    // A leader that ends after this rank is done (it waits for it) did not die.
                    if !done.load(std::sync::atomic::Ordering::SeqCst) {
                        gone();
                    }
                }
            })
            .context("starting the leader's watch")?;
        Ok(())
    }

    /// This rank is done: let the leader end the instance, and where the leader died, remove
    /// what it left (its files, the directory when empty) if no other rank still uses them.
    pub fn finish(self) {
        // Before the leader can learn that this rank is done.
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.user);
        if !matches!(leader_alive(&self.dir, &self.key), Ok(false)) {
            return;
        }
        let users = open_at(&self.dir, &format!("{}.users", self.key));
        if users.is_ok_and(|u| flock(&u, libc::LOCK_EX | libc::LOCK_NB).is_ok()) {
            remove_if_leader_gone(&self.dir, &self.key);
            remove_dir_if_empty(&self.path);
        }
    }
}

/// Where the rendezvous files may live, in the order the ranks of a step try them (they all
/// take the first one usable, so they meet): `$LAUNCHER_SHARE_DIR` alone when set (a site may
/// create one per job in a prolog); else a directory in `$XDG_RUNTIME_DIR` (created by logind,
/// private to the user, so nobody else can take the name first), then `/tmp/launcher-UID` and
/// `/dev/shm/launcher-UID`, node-local, which another user could create first.
pub fn candidate_dirs(env: &[(String, String)], uid: u32) -> Vec<PathBuf> {
    if let Some(d) = crate::env_list::get_nonempty(env, "LAUNCHER_SHARE_DIR") {
        return vec![PathBuf::from(d)];
    }
    let mut dirs = Vec::new();
    let run = crate::env_list::get_nonempty(env, "XDG_RUNTIME_DIR");
    if let Some(run) = crate::private_dir::users_runtime_dir(run, uid) {
        dirs.push(run.join("launcher"));
    }
    dirs.push(PathBuf::from(format!("/tmp/launcher-{uid}")));
    dirs.push(PathBuf::from(format!("/dev/shm/launcher-{uid}")));
    dirs
}

/// Decide whether to lead, join or launch alone, in the first of `dirs` that is a directory
/// private to the user (or can be made one). Blocks while another rank is setting up.
/// `flavour`: this rank's mounts.
pub fn rendezvous(dirs: &[PathBuf], uid: u32, key: &str, flavour: &str) -> Result<Role> {
    let mut refused = Vec::new();
    for dir in dirs {
        match rendezvous_in(dir, uid, key, flavour) {
            Ok(Some(role)) => return Ok(role),
            Ok(None) => {}
            Err(e) => refused.push(format!("{e:#}")),
        }
    }
    Ok(Role::Private(format!(
        "no usable rendezvous directory: {}",
        refused.join("; ")
    )))
}

/// The rendezvous in one directory; an error when the directory is not usable (someone
/// else's, or open to others), None when it kept vanishing.
fn rendezvous_in(dir: &Path, uid: u32, key: &str, flavour: &str) -> Result<Option<Role>> {
    // The directory may vanish between open and use when the last rank of an earlier
    // instance removes it: start over a few times.
    for _ in 0..5 {
        let dir_fd = open_private_dir(dir, uid)?;
        sweep_stale(dir, &dir_fd, key);
        match try_rendezvous(dir_fd, dir, key, flavour) {
            Ok(role) => return Ok(Some(role)),
            Err(e) if is_enoent(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Remove the files of instances whose leader is gone and that nobody is setting up: a
/// leader killed with SIGKILL (scancel after KillWait) cannot clean up after itself.
fn sweep_stale(path: &Path, dir: &OwnedFd, mine: &str) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    let mut keys: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (key, _) = name.rsplit_once('.')?;
            (key != mine).then(|| key.to_string())
        })
        .collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        remove_if_leader_gone(dir, &key);
    }
}

/// Remove the files of the instance `key` if its leader is gone and nobody is setting it up
/// or tearing it down.
fn remove_if_leader_gone(dir: &OwnedFd, key: &str) {
    let Ok(lock) = open_at(dir, &format!("{key}.lock")) else {
        return;
    };
    if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        return; // being set up or torn down right now
    }
    if !matches!(leader_alive(dir, key), Ok(false)) {
        return;
    }
    remove_files(dir, key, &ALL_FILES);
}

/// The files of an instance in its rendezvous directory, by suffix.
const ALL_FILES: [&str; 4] = ["state", "users", "leader", "lock"];

/// Remove these files of the instance `key` (those already gone are no error).
fn remove_files(dir: &OwnedFd, key: &str, suffixes: &[&str]) {
    for suffix in suffixes {
        let _ = nix::unistd::unlinkat(
            dir,
            format!("{key}.{suffix}").as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// The rendezvous key of a named instance: the name (kept readable for `instance list`'s
/// sweep) and a digest of the user and node, so that two nodes sharing a rendezvous
/// directory (`LAUNCHER_SHARE_DIR` on a parallel file system) keep their instances apart.
/// Names are checked by `options::instance::check_name` (no '.', which ends a key).
pub fn named_key(uid: u32, node: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("uid={uid}\0node={node}\0"));
    let short: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{NAMED_PREFIX}{name}_{short}")
}

/// Keys of named instances start with this; a job step's key is a bare hex digest.
const NAMED_PREFIX: &str = "inst_";

/// Join the live named instance with this key, looked for in each of `dirs` that exists and
/// is private to the user (none is created). None when no such instance lives.
pub fn find_named(dirs: &[PathBuf], uid: u32, key: &str) -> Result<Option<Joiner>> {
    for dir in dirs {
        if !dir.is_dir() {
            continue;
        }
        let Ok(fd) = open_private_dir(dir, uid) else {
            continue;
        };
        // No file is created for a name that has no instance (the lock would be).
        let state_name = format!("{key}.state");
        if fstatat(&fd, state_name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) == Err(Errno::ENOENT) {
            continue;
        }
        let lock = lock_file(&fd, &format!("{key}.lock"))?;
        let state = read_state(&fd, key)?;
        let Some(state) = state.filter(|_| matches!(leader_alive(&fd, key), Ok(true))) else {
            // Ended while we waited for the lock (its files are gone, but the lock we just
            // made), or died: holding the lock, no leader can be starting.
            remove_files(&fd, key, &ALL_FILES);
            continue;
        };
        // The instance's root, whatever this launch's options (instance:// takes none that
        // change mounts).
        let flavour = state.flavour.clone();
        let joined = join(fd, dir, key, &flavour, state)?;
        drop(lock);
        return Ok(Some(joined));
    }
    Ok(None)
}

/// The live named instances of this node in each of `dirs` that exists and is private to
/// the user, with the directory each is in; the files of dead ones are removed on the way.
pub fn list_named(dirs: &[PathBuf], uid: u32, node: &str) -> Vec<(PathBuf, State)> {
    let mut out = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            continue;
        }
        let Ok(fd) = open_private_dir(dir, uid) else {
            continue;
        };
        sweep_stale(dir, &fd, "");
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut keys: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let key = name.strip_suffix(".state")?;
                key.starts_with(NAMED_PREFIX).then(|| key.to_string())
            })
            .collect();
        keys.sort();
        for key in keys {
            let Ok(Some(state)) = read_state(&fd, &key) else {
                continue;
            };
            let ours = state.named.as_ref().is_some_and(|n| n.node == node);
            if ours && matches!(leader_alive(&fd, &key), Ok(true)) {
                out.push((dir.clone(), state));
            }
        }
    }
    out
}

fn is_enoent(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<Errno>() == Some(&Errno::ENOENT))
}

fn try_rendezvous(dir: OwnedFd, path: &Path, key: &str, flavour: &str) -> Result<Role> {
    let lock = lock_file(&dir, &format!("{key}.lock"))?;
    if let Some(state) = read_state(&dir, key)? {
        if leader_alive(&dir, key)? {
            return match join(dir, path, key, flavour, state) {
                Ok(j) => Ok(Role::Join(j)),
                Err(e) => Ok(Role::Private(format!(
                    "could not join the running instance: {e:#}"
                ))),
            };
        }
        // A leader that died: its files are stale, and this rank starts a new instance.
        remove_files(&dir, key, &ALL_FILES[..1]);
    }
    let alive = open_at(&dir, &format!("{key}.leader"))?;
    if let Err(e) = flock(&alive, libc::LOCK_EX | libc::LOCK_NB) {
        return Ok(Role::Private(format!(
            "another leader holds {key}.leader: {e}"
        )));
    }
    Ok(Role::Lead(Leader {
        dir,
        path: path.to_path_buf(),
        key: key.to_string(),
        lock: Some(lock),
        _alive: alive,
        flavour: flavour.to_string(),
    }))
}

impl Leader {
    /// Make the instance joinable and let the waiting ranks in.
    pub fn publish(&mut self, state: &State) -> Result<()> {
        let name = format!("{}.state", self.key);
        let mut f = File::from(
            openat(
                &self.dir,
                name.as_str(),
                OFlag::O_CREAT
                    | OFlag::O_TRUNC
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC
                    | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o600),
            )
            .with_context(|| format!("creating {name}"))?,
        );
        f.write_all(&serde_json::to_vec(state)?)
            .with_context(|| format!("writing {name}"))?;
        self.lock = None;
        Ok(())
    }

    /// Let nobody in any more, wait until every rank that joined is done, remove the files.
    pub fn wait_and_close(mut self) -> Result<()> {
        let (_lock, users) = self.shut()?;
        retry_eintr(|| flock(&users, libc::LOCK_EX))
            .context("waiting for the ranks that joined")?;
        remove_files(&self.dir, &self.key, &ALL_FILES[1..]);
        Ok(())
    }

    /// Let nobody in any more: the lock taken (if not still held), the state removed. The
    /// lock, held until the files are gone, and the users' file.
    fn shut(&mut self) -> Result<(File, File)> {
        let lock = match self.lock.take() {
            Some(held) => held,
            None => lock_file(&self.dir, &format!("{}.lock", self.key))?,
        };
        remove_files(&self.dir, &self.key, &ALL_FILES[..1]);
        let users = open_at(&self.dir, &format!("{}.users", self.key))?;
        Ok((lock, users))
    }

    /// A named instance's end: let nobody in any more, then call `end_members` until every
    /// rank that joined is gone (it kills the instance's processes, which ends their
    /// launchers), at most `tries` times, and remove the files.
    pub fn close_ending(mut self, tries: u32, mut end_members: impl FnMut()) -> Result<()> {
        let (_lock, users) = self.shut()?;
        for _ in 0..tries {
            end_members();
            if flock(&users, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        remove_files(&self.dir, &self.key, &ALL_FILES[1..]);
        Ok(())
    }
}

/// Remove the rendezvous directory once no instance uses it (a rank that opened it just
/// before finds it gone and starts over).
pub fn remove_dir_if_empty(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

fn join(dir: OwnedFd, path: &Path, key: &str, flavour: &str, state: State) -> Result<Joiner> {
    let open_ns = |pid: i32, kind: &str, expect: u64| -> Result<OwnedFd> {
        let path = format!("/proc/{pid}/ns/{kind}");
        let fd = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {path}"))?;
        let ino = fstat(&fd).with_context(|| format!("stat {path}"))?.st_ino;
        if ino != expect {
            bail!("{path} is not the instance's namespace (the keeper is gone)");
        }
        Ok(fd)
    };
    let user_ns = open_ns(state.keeper_pid, "user", state.user_ns)?;
    let (mnt_ns, own_mounts) = match &state.root {
        Some(root) if state.flavour == flavour => {
            (open_ns(root.keeper_pid, "mnt", root.mnt_ns)?, false)
        }
        _ => (open_ns(state.keeper_pid, "mnt", state.base_mnt_ns)?, true),
    };
    let user = open_at(&dir, &format!("{key}.users"))?;
    flock(&user, libc::LOCK_SH | libc::LOCK_NB).map_err(|e| anyhow!("taking {key}.users: {e}"))?;
    let leader = open_at(&dir, &format!("{key}.leader"))?;
    Ok(Joiner {
        state,
        user_ns,
        mnt_ns,
        own_mounts,
        user,
        leader,
        dir,
        path: path.to_path_buf(),
        key: key.to_string(),
        done: Default::default(),
    })
}

/// The directory, created private to the user; refused if someone else could write it.
fn open_private_dir(dir: &Path, uid: u32) -> Result<OwnedFd> {
    crate::private_dir::open(dir, uid, "rendezvous directory", true)
}

fn open_at(dir: &OwnedFd, name: &str) -> Result<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    )
    .with_context(|| format!("opening rendezvous file {name}"))?;
    Ok(File::from(fd))
}

/// An exclusive lock on a file that is still the one at that name (the last rank out unlinks
/// the files while holding this lock; a waiter that then wins it must start over).
fn lock_file(dir: &OwnedFd, name: &str) -> Result<File> {
    loop {
        let f = open_at(dir, name)?;
        retry_eintr(|| flock(&f, libc::LOCK_EX))
            .with_context(|| format!("locking rendezvous file {name}"))?;
        let held = fstat(f.as_fd())?.st_ino;
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_ino == held => return Ok(f),
            Ok(_) | Err(Errno::ENOENT) => continue,
            Err(e) => return Err(anyhow!("stat rendezvous file {name}: {e}")),
        }
    }
}

fn flock(f: &File, op: libc::c_int) -> nix::Result<()> {
    // SAFETY: flock(2) on an open file of ours.
    Errno::result(unsafe { libc::flock(f.as_raw_fd(), op) }).map(drop)
}

fn retry_eintr(mut f: impl FnMut() -> nix::Result<()>) -> nix::Result<()> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

fn read_state(dir: &OwnedFd, key: &str) -> Result<Option<State>> {
    let name = format!("{key}.state");
    let fd = match openat(
        dir,
        name.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(anyhow!("opening {name}: {e}")),
    };
    let mut text = String::new();
    File::from(fd)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {name}"))?;
    // A state left half-written by a crash reads as no state.
    Ok(serde_json::from_str(&text).ok())
}

/// True while some process holds the leader's lock.
fn leader_alive(dir: &OwnedFd, key: &str) -> Result<bool> {
    let f = open_at(dir, &format!("{key}.leader"))?;
    match flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(()) => Ok(false),
        Err(Errno::EWOULDBLOCK) => Ok(true),
        Err(e) => Err(anyhow!("testing {key}.leader: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::env_list::from_pairs as env;

    #[test]
    fn job_step_from_launchers() {
        assert_eq!(job_step(&env(&[("HOME", "/h")]), 1), None);
        assert_eq!(
            job_step(&env(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "0")]), 1),
            Some("slurm:7.0".into())
        );
        // A batch script: a job but no step.
        assert_eq!(job_step(&env(&[("SLURM_JOB_ID", "7")]), 1), None);
        assert_eq!(
            job_step(
                &env(&[
                    ("SLURM_JOB_ID", "7"),
                    ("SLURM_STEP_ID", "0"),
                    ("PMIX_NAMESPACE", "slurm.pmix.7.0")
                ]),
                1
            ),
            Some("pmix:slurm.pmix.7.0".into())
        );
        assert_eq!(
            job_step(&env(&[("OMPI_MCA_ess_base_jobid", "123")]), 1),
            Some("ompi:123".into())
        );
        assert_eq!(
            job_step(
                &env(&[
                    ("PMI_RANK", "1"),
                    ("PMI_SIZE", "2"),
                    ("MPI_LOCALNRANKS", "2")
                ]),
                77
            ),
            Some("hydra:77".into())
        );
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("share-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn my_uid() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    #[test]
    fn key_depends_on_node_and_step_not_mounts() {
        let exe = std::env::current_exe().unwrap();
        let img = [exe.as_path()];
        let a = key(1, "n1/", "s1", &img).unwrap();
        assert_eq!(a, key(1, "n1/", "s1", &img).unwrap());
        assert_ne!(a, key(1, "n1/", "s2", &img).unwrap());
        assert_ne!(a, key(2, "n1/", "s1", &img).unwrap());
        // The same step on another node never meets this one, even in a shared directory.
        assert_ne!(a, key(1, "n2/", "s1", &img).unwrap());
        // Overlay images are mounted in the instance's base: other images, another instance.
        let with_layer = [exe.as_path(), Path::new("/")];
        assert_ne!(a, key(1, "n1/", "s1", &with_layer).unwrap());
        // Mounts tell flavours of one instance apart, not instances.
        let f = flavour(&vec!["/a"]).unwrap();
        assert_eq!(f, flavour(&vec!["/a"]).unwrap());
        assert_ne!(f, flavour(&vec!["/b"]).unwrap());
    }

    #[test]
    fn node_name_has_the_host_and_slurms_node() {
        let host = nix::unistd::gethostname().unwrap();
        let host = host.to_string_lossy();
        assert_eq!(node_name(&env(&[])).unwrap(), format!("{host}/"));
        let a = node_name(&env(&[("SLURMD_NODENAME", "node1")])).unwrap();
        let b = node_name(&env(&[("SLURMD_NODENAME", "node2")])).unwrap();
        assert_eq!(a, format!("{host}/node1"));
        assert_ne!(a, b, "several slurmd on one host are different nodes");
    }

    #[test]
    fn first_leads_then_others_see_a_live_leader_and_the_last_removes_files() {
        let dir = scratch("lead");
        let uid = my_uid();
        let Role::Lead(mut leader) = rendezvous(std::slice::from_ref(&dir), uid, "k", "f").unwrap()
        else {
            panic!("the first rank must lead")
        };
        let me = std::process::id() as i32;
        let st = fstat(
            nix::fcntl::open("/proc/self/ns/user", OFlag::O_RDONLY, Mode::empty())
                .unwrap()
                .as_fd(),
        )
        .unwrap();
        let mnt = std::fs::metadata("/proc/self/ns/mnt").unwrap().ino();
        leader
            .publish(&State {
                leader_pid: me,
                keeper_pid: me,
                user_ns: st.st_ino,
                base_mnt_ns: mnt,
                flavour: "f".into(),
                root: Some(RootState {
                    keeper_pid: me,
                    mnt_ns: mnt,
                }),
                image_owned_by_caller: false,
                named: None,
            })
            .unwrap();
        // Second ranks join (here: the namespaces of this very process): the root of their
        // mounts when it is built, the base when their mounts are their own.
        for (flavour, own_mounts) in [("f", false), ("g", true)] {
            match rendezvous(std::slice::from_ref(&dir), uid, "k", flavour).unwrap() {
                Role::Join(j) => {
                    assert_eq!(j.state.keeper_pid, me);
                    assert_eq!(j.own_mounts, own_mounts, "flavour {flavour}");
                    drop(j);
                }
                Role::Lead(_) => panic!("a second leader while the first lives"),
                Role::Private(why) => panic!("fell back to private: {why}"),
            }
        }
        leader.wait_and_close().unwrap();
        remove_dir_if_empty(&dir);
        assert!(!dir.exists(), "rendezvous files left behind");
    }

    #[test]
    fn a_joiner_learns_of_its_leaders_death_and_cleans_up_after_it() {
        let dir = scratch("watch");
        let uid = my_uid();
        let Role::Lead(mut leader) = rendezvous(std::slice::from_ref(&dir), uid, "k", "f").unwrap()
        else {
            panic!("the first rank must lead")
        };
        let me = std::process::id() as i32;
        let ino = |p: &str| std::fs::metadata(p).unwrap().ino();
        leader
            .publish(&State {
                leader_pid: me,
                keeper_pid: me,
                user_ns: ino("/proc/self/ns/user"),
                base_mnt_ns: ino("/proc/self/ns/mnt"),
                flavour: "f".into(),
                root: None,
                image_owned_by_caller: false,
                named: None,
            })
            .unwrap();
        let Role::Join(joiner) = rendezvous(std::slice::from_ref(&dir), uid, "k", "f").unwrap()
        else {
            panic!("the second rank must join")
        };
        let (tx, rx) = std::sync::mpsc::channel();
        joiner
            .when_leader_dies(move || {
                let _ = tx.send(());
            })
            .unwrap();
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the watch fired while the leader lives"
        );
        // The leader "crashes": its locks go with it, its files stay.
        drop(leader);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the joiner was not told of its leader's death");
        joiner.finish();
        assert!(
            !dir.exists(),
            "the last rank out left the dead leader's files"
        );
    }

    #[test]
    fn a_dead_leader_is_replaced() {
        let dir = scratch("dead");
        let uid = my_uid();
        let Role::Lead(mut leader) = rendezvous(std::slice::from_ref(&dir), uid, "k", "f").unwrap()
        else {
            panic!("the first rank must lead")
        };
        leader
            .publish(&State {
                leader_pid: 1,
                keeper_pid: 1,
                user_ns: 1,
                base_mnt_ns: 1,
                flavour: "f".into(),
                root: None,
                image_owned_by_caller: false,
                named: None,
            })
            .unwrap();
        // The leader "crashes": its locks go away with it, the state file stays.
        drop(leader);
        assert!(dir.join("k.state").exists());
        match rendezvous(std::slice::from_ref(&dir), uid, "k", "f").unwrap() {
            Role::Lead(l) => l.wait_and_close().unwrap(),
            _ => panic!("a stale state must lead to a new leader"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_of_dead_instances_are_swept() {
        let dir = scratch("sweep");
        let uid = my_uid();
        let Role::Lead(mut dead) = rendezvous(std::slice::from_ref(&dir), uid, "old", "f").unwrap()
        else {
            panic!("must lead")
        };
        dead.publish(&State {
            leader_pid: 1,
            keeper_pid: 1,
            user_ns: 1,
            base_mnt_ns: 1,
            flavour: "f".into(),
            root: None,
            image_owned_by_caller: false,
            named: None,
        })
        .unwrap();
        let Role::Lead(live) = rendezvous(std::slice::from_ref(&dir), uid, "live", "f").unwrap()
        else {
            panic!("must lead")
        };
        drop(dead); // killed: its files stay
        assert!(dir.join("old.state").exists());
        let Role::Lead(third) = rendezvous(std::slice::from_ref(&dir), uid, "new", "f").unwrap()
        else {
            panic!("must lead")
        };
        assert!(!dir.join("old.state").exists() && !dir.join("old.lock").exists());
        assert!(
            dir.join("live.leader").exists(),
            "a live instance was swept"
        );
        third.wait_and_close().unwrap();
        live.wait_and_close().unwrap();
        remove_dir_if_empty(&dir);
        assert!(!dir.exists());
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = scratch("open");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        match rendezvous(std::slice::from_ref(&dir), my_uid(), "k", "f").unwrap() {
            Role::Private(why) => assert!(why.contains("not a directory private"), "{why}"),
            _ => panic!("must not share through a directory others can write"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_someone_else_made_first_is_passed_over() {
        let theirs = scratch("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(my_uid() + 1), None).unwrap();
        let ours = scratch("ours");
        let dirs = [theirs.clone(), ours.clone()];
        let Role::Lead(leader) = rendezvous(&dirs, my_uid(), "k", "f").unwrap() else {
            panic!("the second directory was not used");
        };
        assert_eq!(leader.path, ours);
        leader.wait_and_close().unwrap();
        match rendezvous(std::slice::from_ref(&theirs), my_uid(), "k", "f").unwrap() {
            Role::Private(why) => assert!(
                why.contains(&format!("owner {}", my_uid() + 1)),
                "the refusal names the owner: {why}"
            ),
            _ => panic!("shared through someone else's directory"),
        }
        for d in [theirs, ours] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn candidates_start_with_the_users_runtime_dir() {
        let uid = my_uid();
        let run = scratch("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let env = |pairs: &[(&str, &Path)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.display().to_string()))
                .collect()
        };
        let dirs = candidate_dirs(&env(&[("XDG_RUNTIME_DIR", &run)]), uid);
        assert_eq!(
            dirs,
            [
                run.join("launcher"),
                PathBuf::from(format!("/tmp/launcher-{uid}")),
                PathBuf::from(format!("/dev/shm/launcher-{uid}")),
            ]
        );
        // Someone else's runtime directory (srun passes the environment on) is passed over.
        std::os::unix::fs::chown(&run, Some(uid + 1), None).unwrap();
        let dirs = candidate_dirs(&env(&[("XDG_RUNTIME_DIR", &run)]), uid);
        assert_eq!(dirs[0], PathBuf::from(format!("/tmp/launcher-{uid}")));
        // An explicit directory is the only one.
        let dirs = candidate_dirs(&env(&[("LAUNCHER_SHARE_DIR", Path::new("/x"))]), uid);
        assert_eq!(dirs, [PathBuf::from("/x")]);
        let _ = std::fs::remove_dir_all(&run);
    }
}
