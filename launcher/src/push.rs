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
    /// (closed, stores in progress)
    state: Mutex<(bool, u32)>,
    idle: Condvar,
}

/// A store in progress, counted until dropped.
struct Pass<'g>(&'g Gate);

impl Gate {
    fn pass(&self) -> Option<Pass<'_>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 {
            return None;
        }
        st.1 += 1;
        Some(Pass(self))
    }

    fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = true;
        while st.1 > 0 {
            st = self.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 -= 1;
        if st.1 == 0 {
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
        let _ = self.tx.try_send(batch);
    }

    /// No more stores: returns once the one in progress, if any, is done. Called before any
    /// command can read a file (see the module comment).
    pub fn close(&self) {
        self.gate.close();
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

/// The pushing thread's loop; ends when the file system is gone.
pub fn run(rx: Receiver<Batch>, pusher: Pusher, notifier: Notifier, archive: Arc<Archive>) {
    let mut buf = vec![0u8; CHUNK];
    for batch in rx {
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
