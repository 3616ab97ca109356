//! Push file contents into the kernel's page cache before they are read.
//!
//! Each FUSE READ is a round trip through the kernel and a server thread. Two cases are
//! predictable, and their contents are stored into the page cache with FUSE_NOTIFY_STORE:
//! - the command's program and its ELF interpreter, decompressed ahead by `prefetch`: the
//!   exec's page faults then mostly never reach the server;
//! - small regular files of a directory just listed with readdirplus (find + cat, Python
//!   importing a package): one round trip per file saved.
//!
//! The kernel accepts a store only for an inode it knows. A program pushed before the child
//! has looked it up is marked hot, and pushed again by the lookup that introduces it.
//!
//! Stores run on their own thread, never a worker: a store waits for page locks that a worker
//! may have to release by answering a READ. That wait is dangerous if the launcher is killed
//! with SIGKILL: a READ a worker had taken is never answered, the store waiting on its page
//! holds the connection's superblock lock, and neither the unmount nor the closing of
//! /dev/fuse can then abort the connection: the command and the launcher stay in D state
//! until a reboot (seen in tests/soak.rs, which kills the launcher during start-up). So:
//! - program stores end before any command runs (`Pusher::close`: when the child is about to
//!   exec, or the keeper has built a shared root). Nothing reads the program before, so no
//!   program store can wait on a READ;
//! - listed files are pushed while the command runs (that is when it lists directories), but
//!   those stores end at the first terminating signal (`Pusher::close_listed`: TERM, INT, HUP,
//!   QUIT, as Slurm, mpirun and a terminal send before any SIGKILL) and before the launcher
//!   exits. What is left is a SIGKILL with no signal before it, during one small store that
//!   waits on a READ (docs/reliability.md).

use crate::fuse::counts::RequestCounts;
use fuser::INodeNo;
use image_tools::squashfs::{Archive, Inode};
use std::collections::HashSet;
use std::io::IoSlice;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Batches waiting; when full, new hints are dropped (pushing is only ever an optimisation).
const QUEUE: usize = 64;

/// Files up to this size are pushed (most are tail-packed in a fragment already decompressed).
pub const SMALL_FILE: u64 = 64 << 10;
/// At most this much is pushed for one readdirplus reply.
pub const BATCH_BYTES: u64 = 2 << 20;

pub type Batch = Vec<(INodeNo, Inode)>;

/// What a batch holds, and so which gate its stores pass.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Program,
    Listed,
}

#[derive(Clone)]
pub struct Pusher {
    tx: SyncSender<(Kind, Batch)>,
    hot: Arc<Hot>,
    program: Arc<Gate>,
    listed: Arc<Gate>,
}

/// Lets stores through until it is closed; closing waits for the store in progress.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    idle: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Stores in progress.
    storing: u32,
    /// Batches offered and not yet done.
    pending: u32,
}

/// A store in progress, counted until dropped.
struct Pass<'g>(&'g Gate);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pass(&self) -> Option<Pass<'_>> {
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        st.storing += 1;
        Some(Pass(self))
    }

    /// Counts `n` more batches offered (negative: done).
    fn pending(&self, n: i32) {
        let mut st = self.lock();
        st.pending = st.pending.saturating_add_signed(n);
        if st.pending == 0 {
            self.idle.notify_all();
        }
    }

    /// Waits (until `deadline`) for the batches offered so far, then closes and waits for
    /// the store in progress.
    fn close(&self, deadline: Instant) {
        let mut st = self.lock();
        while st.pending > 0 && !st.closed {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            st = self
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.closed = true;
        while st.storing > 0 {
            st = self.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.storing -= 1;
        if st.storing == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// Inodes to push as soon as the kernel looks them up.
#[derive(Default)]
struct Hot {
    any: AtomicBool,
    set: Mutex<HashSet<u64>>,
}

impl Pusher {
    /// The sending half, and the receiving half for `run`.
    pub fn new() -> (Pusher, Receiver<(Kind, Batch)>) {
        let (tx, rx) = sync_channel(QUEUE);
        (
            Pusher {
                tx,
                hot: Arc::new(Hot::default()),
                program: Arc::new(Gate::default()),
                listed: Arc::new(Gate::default()),
            },
            rx,
        )
    }

    fn gate(&self, kind: Kind) -> &Gate {
        match kind {
            Kind::Program => &self.program,
            Kind::Listed => &self.listed,
        }
    }

    /// Queue a batch; dropped when the queue is full (the reads then go to the server) or
    /// its kind's stores have ended.
    pub fn offer(&self, kind: Kind, batch: Batch) {
        let gate = self.gate(kind);
        if gate.lock().closed {
            return;
        }
        gate.pending(1);
        if self.tx.try_send((kind, batch)).is_err() {
            gate.pending(-1);
        }
    }

    /// Programs will be offered: until the returned promise is dropped, closing the program
    /// gate waits for them as for a batch offered (the read-ahead offers a program once all
    /// its blocks are in memory, so that the push thread only copies).
    pub fn promise_programs(&self) -> Promise {
        self.program.pending(1);
        Promise(self.program.clone())
    }

    /// No more program stores: returns once the one in progress, if any, is done. Called
    /// before any command can read a file (see the module comment).
    pub fn close(&self) {
        // The program's pages stored now cost the exec no READ round trip, and nothing can
        // read them yet: give what is offered a little time to land.
        self.program.close(Instant::now() + FINISH_WAIT);
    }

    /// No more stores of listed files: returns once the one in progress, if any, is done.
    /// Called at the first terminating signal and before the launcher exits, while the
    /// workers can still answer what a store waits for.
    pub fn close_listed(&self) {
        self.listed.close(Instant::now());
    }

    /// Called by every lookup: push an inode the kernel did not know when it was offered.
    pub fn on_lookup(&self, ino: INodeNo, inode: &Inode) {
        if !self.hot.any.load(Ordering::Relaxed) {
            return;
        }
        let was_hot = self
            .hot
            .set
            .lock()
            .map(|mut s| s.remove(&ino.0))
            .unwrap_or(false);
        if was_hot {
            self.offer(Kind::Program, vec![(ino, inode.clone())]);
        }
    }

    fn mark_hot(&self, ino: INodeNo) {
        if let Ok(mut s) = self.hot.set.lock() {
            s.insert(ino.0);
            self.hot.any.store(true, Ordering::Relaxed);
        }
    }
}

/// At most this long, the exec waits for the pushes offered before it (a 2 MB busybox is
/// decompressed in about 1.5 ms by 4 read-ahead threads).
const FINISH_WAIT: Duration = Duration::from_millis(5);

/// Batches still to be offered, counted as pending until dropped (`Pusher::promise_programs`).
pub struct Promise(Arc<Gate>);

impl Drop for Promise {
    fn drop(&mut self) {
        self.0.pending(-1);
    }
}

/// A batch being pushed, counted as pending until dropped.
struct Done<'g>(&'g Gate);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.pending(-1);
    }
}

/// Largest file pushed: the read-ahead's programs are at most 8 MiB (`prefetch`), listed
/// files `SMALL_FILE`.
const MAX_PUSH: u64 = 8 << 20;

/// FUSE_NOTIFY_STORE, written to the connection directly (a duplicate of the session's
/// `/dev/fuse` descriptor), with the file's decompressed blocks as the message's pieces.
///
/// A file goes in one store: the kernel marks a page-cache folio up to date only when one
/// store fills it whole, and Linux 6.18 gives FUSE files large folios. Stored in 256 KiB
/// pieces, a 2 MB program sat in the page cache not up to date in 12 launches of 16, and the
/// exec read it all again through READ requests (2026-12-05). From the blocks themselves:
/// no copy into a buffer first. And written here rather than through fuser's `Notifier`,
/// which answers a store for an inode the kernel does not know (ENOENT) with success, so the
/// program was never pushed again when its lookup came.
pub struct StoreFd(pub OwnedFd);

/// Pieces one writev takes, at most (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// `fuse_notify_code::FUSE_NOTIFY_STORE`.
const FUSE_NOTIFY_STORE: i32 = 4;
/// `fuse_out_header` (len, error: the notify code, unique: 0), then `fuse_notify_store_out`
/// (nodeid, offset, size, padding).
const STORE_HEAD: usize = 16 + 24;

impl StoreFd {
    /// Store `pieces`, one after the other, at byte 0 of the file `ino`.
    pub fn store(&self, ino: INodeNo, pieces: &[&[u8]]) -> std::io::Result<()> {
        let size: usize = pieces.iter().map(|p| p.len()).sum();
        let (Ok(len), Ok(size32)) = (u32::try_from(STORE_HEAD + size), u32::try_from(size)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
        };
        let mut head = [0u8; STORE_HEAD];
        head[0..4].copy_from_slice(&len.to_le_bytes());
        head[4..8].copy_from_slice(&FUSE_NOTIFY_STORE.to_le_bytes());
        // unique (8..16) stays 0: a notification, not a reply.
        head[16..24].copy_from_slice(&ino.0.to_le_bytes());
        // offset (24..32) stays 0: the whole file.
        head[32..36].copy_from_slice(&size32.to_le_bytes());
        // One writev takes at most IOV_MAX (1024) pieces: a file of more blocks (over 4 MiB of
        // an image made with 4 KiB blocks) goes from one buffer.
        let joined: Vec<u8>;
        let pieces = if pieces.len() < IOV_MAX {
            pieces
        } else {
            joined = pieces.concat();
            &[&joined[..]][..]
        };
        let mut iov = Vec::with_capacity(pieces.len() + 1);
        iov.push(IoSlice::new(&head));
        iov.extend(pieces.iter().map(|p| IoSlice::new(p)));
        let written = nix::sys::uio::writev(&self.0, &iov)?;
        if written != STORE_HEAD + size {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// The pushing thread's loop; ends when the file system is gone.
pub fn run(
    rx: Receiver<(Kind, Batch)>,
    pusher: Pusher,
    store: StoreFd,
    archive: Arc<Archive>,
    counts: Arc<RequestCounts>,
) {
    for (kind, batch) in rx {
        let gate = pusher.gate(kind);
        let _done = Done(gate);
        for (ino, inode) in batch {
            if inode.size == 0 || inode.size > MAX_PUSH {
                continue;
            }
            // A program's blocks are all in memory when it is offered; a listed file's are
            // loaded here (or waited for, while another reader loads them).
            let Ok(Some(pieces)) = archive.file_pieces(&inode) else {
                continue;
            };
            let slices: Vec<&[u8]> = pieces.iter().map(|(d, r)| &d[r.clone()]).collect();
            let Some(_pass) = gate.pass() else {
                break; // this kind's stores have ended
            };
            match store.store(ino, &slices) {
                Ok(()) => counts.pushed_file(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && kind == Kind::Program => {
                    pusher.mark_hot(ino)
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a store are fuser's (and the kernel's) FUSE_NOTIFY_STORE layout: the
    /// header, the store's head, then the pieces back to back.
    #[test]
    fn a_store_is_one_notify_store_message() {
        let (read, write) = nix::unistd::pipe().unwrap();
        StoreFd(write)
            .store(INodeNo(0x42), &[&[0xde, 0xad], &[], &[0xbe, 0xef]])
            .unwrap();
        let mut got = vec![0u8; 64];
        let n = nix::unistd::read(&read, &mut got).unwrap();
        let want = [
            0x2c, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // len 44, code 4, unique 0
            0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // nodeid, offset 0
            4, 0, 0, 0, 0, 0, 0, 0, // size 4, padding
            0xde, 0xad, 0xbe, 0xef,
        ];
        assert_eq!(&got[..n], &want[..]);
    }

    /// A file of more pieces than one writev takes is stored whole all the same.
    #[test]
    fn a_store_of_more_pieces_than_writev_takes_is_one_message() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let pieces: Vec<[u8; 1]> = (0..IOV_MAX + 5).map(|i| [i as u8]).collect();
        let slices: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
        StoreFd(write).store(INodeNo(7), &slices).unwrap();
        let mut got = vec![0u8; STORE_HEAD + slices.len() + 1];
        let n = nix::unistd::read(&read, &mut got).unwrap();
        assert_eq!(n, STORE_HEAD + slices.len());
        assert_eq!(&got[32..36], &(slices.len() as u32).to_le_bytes());
        assert_eq!(&got[STORE_HEAD..n], &pieces.concat()[..]);
    }

    #[test]
    fn gate_lets_stores_through_until_closed() {
        let gate = Gate::default();
        assert!(gate.pass().is_some());
        gate.close(Instant::now());
        assert!(gate.pass().is_none(), "closed: no store starts");
    }

    #[test]
    fn closing_waits_for_the_store_in_progress() {
        let gate = Arc::new(Gate::default());
        let done = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = std::sync::mpsc::channel();
        let worker = {
            let (gate, done) = (gate.clone(), done.clone());
            std::thread::spawn(move || {
                let pass = gate.pass().expect("open");
                started_tx.send(()).unwrap();
                // Hold the store until close has begun (it marks the gate closed first),
                // so close is known to be called while a store is in progress.
                while !gate.lock().closed {
                    std::thread::yield_now();
                }
                done.store(true, Ordering::SeqCst);
                drop(pass);
            })
        };
        started.recv().unwrap();
        gate.close(Instant::now() + Duration::from_secs(600));
        assert!(done.load(Ordering::SeqCst), "close returned during a store");
        worker.join().unwrap();
    }

    /// Whether thread `tid` of this process is asleep (in the kernel: a futex wait here).
    fn asleep(tid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .expect("the closing thread ended: close returned with a batch pending");
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("S")
    }

    #[test]
    fn closing_waits_for_pending_batches_then_closes() {
        let gate = Arc::new(Gate::default());
        gate.pending(1);
        let (tid_tx, tid) = std::sync::mpsc::channel();
        let closer = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                gate.close(Instant::now() + Duration::from_secs(600));
            })
        };
        // The closer's only wait after sending its id is close's wait for the batch.
        let tid = tid.recv().unwrap();
        while !asleep(tid) {
            std::thread::yield_now();
        }
        assert!(
            gate.pass().is_some(),
            "closed while a batch offered before was pending"
        );
        gate.pending(-1);
        closer.join().unwrap();
        assert!(gate.pass().is_none(), "not closed once the batch was done");
    }

    /// The read-ahead's promise holds the program gate open for the exec's short wait, as a
    /// batch offered does; once it is dropped nothing more is waited for.
    #[test]
    fn a_promise_of_programs_is_waited_for_until_dropped() {
        let (held, _rx) = Pusher::new();
        let promise = held.promise_programs();
        let t = Instant::now();
        held.program.close(t + Duration::from_millis(30));
        assert!(
            t.elapsed() >= Duration::from_millis(30),
            "close did not wait"
        );
        drop(promise);

        let (kept, _rx) = Pusher::new();
        drop(kept.promise_programs());
        let t = Instant::now();
        kept.program.close(t + Duration::from_secs(600));
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "close waited for a dropped promise"
        );
        assert!(kept.program.pass().is_none());
    }

    #[test]
    fn pending_batches_are_waited_for_only_until_the_deadline() {
        let gate = Gate::default();
        gate.pending(1); // never done
        let t = Instant::now();
        gate.close(t + Duration::from_millis(30));
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert!(gate.pass().is_none());
    }
}
