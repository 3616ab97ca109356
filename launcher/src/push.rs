//! Push file contents into the kernel's page cache before they are read.
//!
//! Each FUSE READ is a round trip through the kernel and a server thread. Two cases are
//! predictable, and their contents are stored into the page cache with FUSE_NOTIFY_STORE:
//! - small regular files of a directory just listed with readdirplus (find + cat, Python
//!   importing a package): one round trip per file saved;
//! - the command's program and its ELF interpreter, already decompressed by `prefetch`: the
//!   exec's page faults then never reach the server.
//!
//! The kernel accepts a store only for an inode it knows. A program pushed before the exec
//! has looked it up is marked hot, and pushed again by the lookup that introduces it.
//!
//! Stores run on their own thread, never a worker: a store waits for page locks that a worker
//! may have to release by answering a READ.

use fuser::{INodeNo, Notifier};
use image_tools::squashfs::{Archive, Inode};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Files up to this size are pushed (most are tail-packed in a fragment already decompressed).
pub const SMALL_FILE: u64 = 64 << 10;
/// At most this much is pushed for one readdirplus reply.
pub const BATCH_BYTES: u64 = 2 << 20;
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
            },
            rx,
        )
    }

    /// Queue a batch; dropped when the queue is full (the reads then go to the server).
    pub fn offer(&self, batch: Batch) {
        let _ = self.tx.try_send(batch);
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
