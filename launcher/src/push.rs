//! Push the command's program into the kernel's page cache before the exec reads it.
//!
//! Each FUSE READ is a round trip through the kernel and a server thread. The command's
//! program and its ELF interpreter, decompressed ahead by `prefetch`, are stored into the page
//! cache with FUSE_NOTIFY_STORE, so the exec's page faults mostly never reach the server.
//!
//! The kernel accepts a store only for an inode it knows. A program pushed before the child
//! has looked it up is marked hot, and pushed again by the lookup that introduces it.
//!
//! Stores run on their own thread, never a worker: a store waits for page locks that a worker
//! may have to release by answering a READ. That wait is also why stores end before any
//! command runs (`Pusher::close`, called when the child is about to exec or the keeper has
//! built a shared root). A store waiting on a page whose READ a worker had taken when the
//! launcher was killed (SIGKILL: the worker dies without answering) would wait forever, and
//! hold the connection's superblock lock, so neither the unmount nor the closing of
//! /dev/fuse could abort the connection: the command and the launcher would stay in D state
//! until a reboot (seen in tests/soak.rs, which kills the launcher during start-up). Before
//! the exec nothing reads the program, so no store can wait on a READ. For the same reason
//! the small files of a listed directory are no longer pushed while the command runs (find +
//! cat of 2,000 cold files: 74 ms with that push, 124 ms without; the kernel's squashfs 155 ms).

use fuser::{INodeNo, Notifier};
use image_tools::squashfs::{Archive, Inode};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Batches waiting; when full, new hints are dropped (pushing is only ever an optimisation).
const QUEUE: usize = 64;
/// Stores are sent in pieces of this size (the buffer is fresh memory in every launch: a
/// small one is page-faulted in once and reused).
const CHUNK: usize = 256 << 10;

pub type Batch = Vec<(INodeNo, Inode)>;

#[derive(Clone)]
pub struct Pusher {
    tx: SyncSender<Batch>,
    hot: Arc<Hot>,
    gate: Arc<Gate>,
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

    /// Counts `n` more batches (negative: done), unless closed.
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
    pub fn new() -> (Pusher, Receiver<Batch>) {
        let (tx, rx) = sync_channel(QUEUE);
        (
            Pusher {
                tx,
                hot: Arc::new(Hot::default()),
                gate: Arc::new(Gate::default()),
            },
            rx,
        )
    }

    /// Queue a batch; dropped when the queue is full (the reads then go to the server).
    pub fn offer(&self, batch: Batch) {
        if self.gate.lock().closed {
            return;
        }
        self.gate.pending(1);
        if self.tx.try_send(batch).is_err() {
            self.gate.pending(-1);
        }
    }

    /// No more stores: returns once the one in progress, if any, is done. Called before any
    /// command can read a file (see the module comment).
    pub fn close(&self) {
        // The program's pages stored now cost the exec no READ round trip, and nothing can
        // read them yet: give what is offered a little time to land.
        self.gate.close(Instant::now() + FINISH_WAIT);
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
            self.offer(vec![(ino, inode.clone())]);
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

/// A batch being pushed, counted as pending until dropped.
struct Done<'g>(&'g Gate);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.pending(-1);
    }
}

/// The pushing thread's loop; ends when the file system is gone.
pub fn run(rx: Receiver<Batch>, pusher: Pusher, notifier: Notifier, archive: Arc<Archive>) {
    let mut buf = vec![0u8; CHUNK];
    for batch in rx {
        let _done = Done(&pusher.gate);
        for (ino, inode) in batch {
            let mut offset = 0u64;
            while offset < inode.size {
                let Ok(n) = archive.read_at(&inode, offset, &mut buf) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                let Some(_pass) = pusher.gate.pass() else {
                    return; // closed: nothing more is stored
                };
                if let Err(e) = notifier.store(ino, offset, &buf[..n]) {
                    if e.raw_os_error() == Some(libc::ENOENT) {
                        pusher.mark_hot(ino);
                    }
                    break;
                }
                offset += n as u64;
            }
        }
    }
}
