//! The launcher's side of supervision: block and forward signals, reap the command and the
//! orphans it leaves (the launcher is their subreaper), and turn the command's end into the
//! launcher's exit status, as a shell would.

use crate::debug;
use crate::fuse::push::Pusher;
use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, Pid};

/// Signals passed on to the command.
pub const FORWARDED: &[Signal] = &[
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

/// The child failed before the image was served and printed why: reap it and leave with its
/// status (255 for the launcher's own errors).
pub fn finish_failed_start(child: Pid) -> Result<i32> {
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
pub fn failed_child_status(child: Pid) -> Option<i32> {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) if code != 0 => Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Block the signals we forward (and SIGCHLD) and become the subreaper of the command's
/// orphans, so none outlives the launcher. Returns the set waited for and the old mask.
pub fn prepare_supervision() -> Result<(SigSet, SigSet)> {
    let forwarded = waited_set();
    let old_mask = forwarded
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .context("blocking signals")?;
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    Ok((forwarded, old_mask))
}

/// Wait for the child, forwarding signals, and return its exit status as a shell would. A
/// terminating signal first ends the pushes of listed files (`pusher`): a SIGKILL that may
/// follow must find no store in progress (push.rs).
pub fn supervise(child: Pid, waited: &SigSet, pusher: Option<&Pusher>) -> Result<i32> {
    match wait_forwarding(child, waited, pusher, None)? {
        Ended::Status(code) | Ended::LauncherGone(code) => Ok(code),
    }
}

/// How a wait for the command ended.
enum Ended {
    /// The command's exit status, as a shell shows it.
    Status(i32),
    /// The launcher died first (the reaper's parent-death signal): this status goes nowhere.
    LauncherGone(i32),
}

/// The reaper: the child that built the container stays as the command's parent and as the
/// subreaper of everything the command starts (`setsid` daemons, double forks), so that a
/// `kill -9` of the launcher, which no code of the launcher's can answer, still ends them all:
/// the kernel sends the reaper its parent-death signal (TERM), and the reaper kills what it has
/// adopted. Otherwise it forwards the launcher's signals to the command, and leaves with the
/// command's status once the command and its leftovers are gone. Never returns.
pub fn reaper(command: Pid, launcher: Pid) -> ! {
    let code = match wait_forwarding(command, &waited_set(), None, Some(launcher)) {
        Ok(Ended::Status(code)) => code,
        Ok(Ended::LauncherGone(_)) => 128 + libc::SIGKILL,
        Err(e) => {
            debug::line(format_args!("launcher: error: {e:#}"));
            255
        }
    };
    kill_leftovers(None);
    // SAFETY: _exit has no preconditions; nothing of the launcher's may run in this process.
    unsafe { libc::_exit(code) }
}

/// Wait for a helper the child runs before the command (the image's shell reading its
/// environment scripts), as the reaper waits for the command: signals sent to us are
/// forwarded to it, and the launcher's death ends the wait. Its exit status, or None when the
/// launcher died (the caller then kills what is left and gives up).
pub fn wait_for_helper(helper: Pid, launcher: Pid) -> Result<Option<i32>> {
    match wait_forwarding(helper, &waited_set(), None, Some(launcher))? {
        Ended::Status(code) => Ok(Some(code)),
        Ended::LauncherGone(_) => Ok(None),
    }
}

/// The signals the launcher and the reaper wait for: those they forward, and SIGCHLD.
fn waited_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// `launcher`: we are the reaper, whose parent is the launcher; a signal that comes when our
/// parent is someone else means the launcher died.
fn wait_forwarding(
    child: Pid,
    waited: &SigSet,
    pusher: Option<&Pusher>,
    launcher: Option<Pid>,
) -> Result<Ended> {
    loop {
        // SAFETY: siginfo_t is plain data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid signal set and siginfo buffer.
        let sig = unsafe { libc::sigwaitinfo(waited.as_ref(), &mut info) };
        if sig < 0 {
            continue; // EINTR
        }
        if sig == libc::SIGCHLD {
            if let Some(code) = reap(child)? {
                debug::step(format_args!("command exited with status {code}"));
                return Ok(Ended::Status(code));
            }
            continue;
        }
        if launcher.is_some_and(|l| nix::unistd::getppid() != l) {
            return Ok(Ended::LauncherGone(128 + sig));
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
pub fn kill_leftovers(spare: Option<Pid>) {
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

/// The processes whose parent is `ppid` (from /proc).
pub fn children_of(ppid: i32) -> Vec<i32> {
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
