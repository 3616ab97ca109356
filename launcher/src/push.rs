//! Push small files into the kernel's page cache when their directory is listed.
//!
//! Listing a directory and then reading its small files (find + cat, Python importing a
//! package) costs one FUSE round trip per file. When readdirplus returns small regular files,
//! their contents are stored into the page cache with FUSE_NOTIFY_STORE, so those reads never
//! reach the server. This runs on its own thread, never a worker: a store waits for page locks
//! that a worker may have to release by answering a READ.

use fuser::{INodeNo, Notifier};
use image_tools::squashfs::{Archive, Inode};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Files up to this size are pushed (most are tail-packed in a fragment already decompressed).
pub const SMALL_FILE: u64 = 64 << 10;
/// At most this much is pushed for one readdirplus reply.
pub const BATCH_BYTES: u64 = 2 << 20;
/// Batches waiting; when full, new hints are dropped (pushing is only ever an optimisation).
const QUEUE: usize = 64;

pub type Batch = Vec<(INodeNo, Inode)>;

pub struct Pusher {
    tx: SyncSender<Batch>,
}

impl Pusher {
    /// The sending half, and the receiving half for `run`.
    pub fn new() -> (Pusher, Receiver<Batch>) {
        let (tx, rx) = sync_channel(QUEUE);
        (Pusher { tx }, rx)
    }

    pub fn offer(&self, batch: Batch) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(batch)
        {
            // Dropped: the reads will simply go to the server.
        }
    }
}

/// The pushing thread's loop; ends when the file system is gone.
pub fn run(rx: Receiver<Batch>, notifier: Notifier, archive: Arc<Archive>) {
    let mut buf = Vec::new();
    for batch in rx {
        for (ino, inode) in batch {
            let len = inode.size as usize;
            buf.resize(len, 0);
            let Ok(n) = archive.read_at(&inode, 0, &mut buf[..len]) else {
                continue;
            };
            // ENOENT when the kernel already forgot the inode: nothing to do.
            let _ = notifier.store(ino, 0, &buf[..n]);
        }
    }
}
