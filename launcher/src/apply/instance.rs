//! Named instances (`launcher instance start IMAGE NAME`): a shared instance (`share`) whose
//! leader detaches from the terminal and holds the mounts until `instance stop`, the end of
//! the Slurm job it was started in, or its own death; `exec instance://NAME` joins it as a
//! rank joins a job step's instance.
//!
//! The leader is the FUSE server, so the image's pages stay in the kernel's page cache between
//! the commands run in the instance: that, not a cache of the launcher's own, is what makes a
//! short command in a warm instance as fast as on a kernel mount (docs/design.md).
//!
//! The processes of an instance are those in its root's mount namespace: the root keeper, the
//! startscript and what it starts, and the commands `exec instance://` runs (each under its
//! reaper). A stop signals them all but the root keeper, then kills what is left, then the
//! keeper (the root keeper dies with it).

use crate::apply::share::{self, State};
use crate::apply::supervise::kill_leftovers;
use crate::debug;
use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the processes of a stopping instance have after the stop signal before they are
/// killed (Apptainer's `instance stop --timeout` default is 10 s; within a Slurm job the
/// whole of KillWait, 30 s by default, must also cover the leader's own clean-up).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The outcome of `detach`.
pub enum Detached {
    /// In the process the user started: the instance is ready (0) or failed (its status).
    Caller(i32),
    /// In the new leader, detached from the terminal.
    Leader(Daemon),
}

/// What the detached leader still has to do once the instance is ready.
pub struct Daemon {
    ready: File,
    log_out: File,
    log_err: File,
    /// A pidfd of the Slurm step daemon of the job the instance was started in.
    job: Option<OwnedFd>,
}

/// The per-instance log files, created (truncated) private to the user: what the instance
/// and its startscript print once started.
pub fn open_logs(out: &Path, err: &Path) -> Result<(File, File)> {
    let open = |p: &Path| -> Result<File> {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("'{}': creating the log directory", dir.display()))?;
        }
        let fd = nix::fcntl::open(
            p,
            OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_WRONLY
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("'{}': opening the instance's log", p.display()))?;
        Ok(File::from(fd))
    };
    Ok((open(out)?, open(err)?))
}

/// Fork the leader off into its own session. The caller waits until the leader says the
/// instance is ready (or dies: its error went to the caller's stderr, which the leader keeps
/// until then). Must be called while the process has a single thread.
pub fn detach(logs: (File, File), job: Option<OwnedFd>) -> Result<Detached> {
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: single-threaded here (before any server or read-ahead thread starts).
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut byte = [0u8; 1];
            let n = File::from(read_end).read(&mut byte).unwrap_or(0);
            if n == 1 {
                return Ok(Detached::Caller(0));
            }
            Ok(Detached::Caller(
                crate::apply::supervise::finish_failed_start(child)?,
            ))
        }
        ForkResult::Child => {
            drop(read_end);
            // Out of the terminal's session: a Ctrl-C or hang-up there is not for the instance.
            nix::unistd::setsid().context("setsid")?;
            let null = nix::fcntl::open("/dev/null", OFlag::O_RDONLY, Mode::empty())
                .context("opening /dev/null")?;
            onto(&null, 0).context("dup2 onto stdin")?;
            Ok(Detached::Leader(Daemon {
                ready: File::from(write_end),
                log_out: logs.0,
                log_err: logs.1,
                job,
            }))
        }
    }
}

impl Daemon {
    /// Output to the logs from now on, and let the caller return.
    fn ready(mut self) -> Result<Option<OwnedFd>> {
        onto(&self.log_out, 1).context("dup2 onto stdout")?;
        onto(&self.log_err, 2).context("dup2 onto stderr")?;
        self.ready
            .write_all(b"r")
            .context("telling the caller the instance is ready")?;
        Ok(self.job.take())
    }
}

/// `fd` as the standard descriptor `target` (0, 1 or 2).
fn onto(fd: &impl AsRawFd, target: i32) -> nix::Result<()> {
    // SAFETY: dup2 on a descriptor we hold, onto a standard one nothing else owns.
    Errno::result(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// The leader of a named instance, once its keeper built the root and the state is published:
/// release the caller, run the startscript (if `plan` has a command) and wait for the end.
/// `root`: the root keeper and the root's mount namespace (the instance's processes are those
/// in it). `start_command`: forks the startscript into the instance, its pid.
pub fn hold(
    keeper: Pid,
    root: (Pid, u64),
    leader: share::Leader,
    daemon: Daemon,
    forwarded: &SigSet,
    start_command: Option<&dyn Fn() -> Result<Pid>>,
) -> Result<i32> {
    let job = daemon.ready()?;
    if let Some(job) = job {
        watch_job(job);
    }
    if let Some(start) = start_command {
        // The caller has returned: a failure is for the log, and the instance still holds.
        match start() {
            Ok(pid) => debug::step(format_args!("startscript started (pid {pid})")),
            Err(e) => debug::line(format_args!("launcher: error: the startscript: {e:#}")),
        }
    }
    let stop = wait_for_stop(keeper, forwarded);
    debug::step(format_args!("stopping the instance ({stop})"));
    end(keeper, root, leader, stop)
}

/// Until a stop signal comes (or the keeper dies, which ends the instance): that signal.
fn wait_for_stop(keeper: Pid, waited: &SigSet) -> Signal {
    loop {
        // SAFETY: siginfo_t is plain data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid signal set and siginfo buffer.
        let sig = unsafe { libc::sigwaitinfo(waited.as_ref(), &mut info) };
        match sig {
            // Reaped here whatever it was (the startscript, orphans); the keeper's end is the
            // instance's.
            libc::SIGCHLD if reap_children(keeper) => return Signal::SIGTERM,
            libc::SIGCHLD => {}
            libc::SIGCONT | libc::SIGTSTP | libc::SIGWINCH => {}
            s if s > 0 => return Signal::try_from(s).unwrap_or(Signal::SIGTERM),
            _ => {} // EINTR
        }
    }
}

/// Reap what exited (the startscript, orphans re-parented to us): true once `keeper` is gone.
fn reap_children(keeper: Pid) -> bool {
    let mut keeper_gone = false;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return keeper_gone,
            Ok(s) => keeper_gone |= s.pid() == Some(keeper),
            Err(Errno::EINTR) => continue,
            Err(_) => return keeper_gone,
        }
    }
}

/// A thread that stops the instance when the Slurm step it was started in ends: the job's
/// end (or scancel) ends its step daemon, but need not reach the leader, which left the
/// step's process tree (proctrack/linuxproc tracks by parentage; with proctrack/cgroup the
/// leader is signalled as well).
fn watch_job(pidfd: OwnedFd) {
    let _ = std::thread::Builder::new()
        .name("watch-job".into())
        .spawn(move || {
            let mut fds = [libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            loop {
                // SAFETY: one valid pollfd.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
                if n > 0 {
                    break;
                }
                if n < 0 && Errno::last() != Errno::EINTR {
                    return;
                }
            }
            debug::line("launcher: the Slurm job of this instance ended: stopping it");
            let _ = kill(getpid(), Signal::SIGTERM);
        });
}

/// Stop the instance: `stop` to every process in it but the root keeper, a grace period,
/// then SIGKILL to what is left, the files removed, the keeper last (the mounts go with it
/// and with the root keeper, which dies with it).
fn end(keeper: Pid, root: (Pid, u64), leader: share::Leader, stop: Signal) -> Result<i32> {
    let (root_keeper, mnt_ns) = root;
    signal_members(mnt_ns, root_keeper, stop);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && !members(mnt_ns, root_keeper).is_empty() {
        reap_children(keeper);
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = leader.path.clone();
    let closed = leader.close_ending(200, || {
        signal_members(mnt_ns, root_keeper, Signal::SIGKILL);
        reap_children(keeper);
    });
    let _ = kill(keeper, Signal::SIGKILL);
    let _ = waitpid(keeper, None);
    kill_leftovers(None);
    share::remove_dir_if_empty(&dir);
    closed?;
    Ok(0)
}

fn signal_members(mnt_ns: u64, spare: Pid, sig: Signal) {
    for pid in members(mnt_ns, spare) {
        let _ = kill(pid, sig);
    }
}

/// The processes in the mount namespace `mnt_ns` (inode), but `spare`. Only the user's own
/// processes can be seen this way, which are the only ones an instance can have.
pub fn members(mnt_ns: u64, spare: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != spare.as_raw())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == mnt_ns)
        })
        .map(Pid::from_raw)
        .collect()
}

/// `instance stop`: `sig` to each instance's leader, which ends the instance; after
/// `timeout` (or at once for SIGKILL) the leader and every process in the instance are
/// killed. Prints Apptainer's line for each.
pub fn stop(
    dirs: &[PathBuf],
    uid: u32,
    node: &str,
    which: &[(PathBuf, State)],
    sig: Signal,
    timeout: Duration,
) -> Result<()> {
    // The instance's mount namespaces, held open from before the first signal: a namespace
    // is freed with its last process, and its inode number may then name another namespace
    // of this user's; held, it cannot be (a forced stop kills by these numbers).
    let held: Vec<Vec<(u64, OwnedFd)>> = which
        .iter()
        .map(|(_, st)| {
            let mut ns: Vec<(i32, u64)> =
                st.root.iter().map(|r| (r.keeper_pid, r.mnt_ns)).collect();
            ns.push((st.keeper_pid, st.base_mnt_ns));
            ns.into_iter()
                .filter_map(|(pid, ino)| Some((ino, hold_namespace(pid, ino)?)))
                .collect()
        })
        .collect();
    for (_, state) in which {
        let named = state
            .named
            .as_ref()
            .ok_or_else(|| anyhow!("not a named instance"))?;
        eprintln!(
            "Stopping {} instance of {} (PID={})",
            named.name,
            named.image.display(),
            state.leader_pid
        );
        let leader = Pid::from_raw(state.leader_pid);
        kill(leader, sig)
            .with_context(|| format!("sending {sig} to instance {} (pid {leader})", named.name))?;
    }
    // The leader is gone once its instance is (it ends the processes in it first); it was
    // re-parented when `instance start` returned, and its new parent reaps it at once.
    let live = |st: &State| Path::new(&format!("/proc/{}", st.leader_pid)).exists();
    let deadline = Instant::now()
        + if sig == Signal::SIGKILL {
            Duration::ZERO
        } else {
            timeout
        };
    for ((_, state), namespaces) in which.iter().zip(&held) {
        while live(state) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if live(state) || sig == Signal::SIGKILL {
            // Forced: the leader cannot clean up, so what it leaves is killed here, and its
            // files are swept by the listing below. The root's processes, then the keepers
            // (the base holds the image's mount); only namespaces held since before the kill.
            let _ = kill(Pid::from_raw(state.leader_pid), Signal::SIGKILL);
            for (ns, _fd) in namespaces {
                for pid in members(*ns, Pid::from_raw(0)) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(2);
    while which.iter().any(|(_, s)| live(s)) {
        if Instant::now() > deadline {
            bail!("an instance is still running after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Sweeps the files of leaders that were killed (their locks went with them).
    share::list_named(dirs, uid, node);
    Ok(())
}

/// `/proc/PID/ns/mnt` opened, if it is still the namespace `ino` (its process may be gone).
fn hold_namespace(pid: i32, ino: u64) -> Option<OwnedFd> {
    let fd = nix::fcntl::open(
        format!("/proc/{pid}/ns/mnt").as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    (st.st_ino == ino).then_some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_our_own_namespace_include_us() {
        let ino = std::fs::metadata("/proc/self/ns/mnt").unwrap().ino();
        let me = getpid();
        assert!(members(ino, Pid::from_raw(0)).contains(&me));
        assert!(!members(ino, me).contains(&me));
    }

    #[test]
    fn logs_are_private_and_truncated() {
        let dir = std::env::temp_dir().join(format!("inst-logs-{}", std::process::id()));
        let out = dir.join("a/x.out");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&out, "old").unwrap();
        let (o, _e) = open_logs(&out, &dir.join("a/x.err")).unwrap();
        drop(o);
        assert_eq!(std::fs::read(&out).unwrap(), b"");
        assert_eq!(
            std::fs::metadata(dir.join("a/x.err")).unwrap().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
