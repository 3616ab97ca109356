//! Read the command's program (and its ELF interpreter) ahead, from the moment the plan is
//! known, while the child sets up the namespaces and builds the root.
//!
//! Start-up is dominated by decompressing the program the kernel is about to exec (2 MB of a
//! zstd busybox for `/bin/true`: about 5 ms of CPU here). Threads decompress its blocks into
//! the reader's cache, in the order the exec needs them (the program's head, its interpreter,
//! then the rest), each taking the next block nobody has taken yet: a block that a page fault
//! or another thread is already loading is skipped, never waited for. Once all of them are in
//! memory, the push thread is given the files and stores each in the page cache; the exec
//! waits a little for that (`Pusher::promise_programs`). Blocks an earlier launch
//! decompressed come from the block cache (`block_cache`). Best effort: any error just ends
//! the prefetch.

use crate::debug;
use crate::fuse::block_cache::{self, DiskBlockCache};
use crate::fuse::push::Pusher;
use crate::fuse::server::node_id;
use fuser::INodeNo;
use goblin::elf::program_header::PT_INTERP;
use goblin::elf::{Elf, Header, ProgramHeader};
use image_tools::squashfs::{Archive, BlockStore, FileType, Inode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Larger programs are left to the kernel's readahead: reading all of a big program would
/// cost more than the part its start-up touches, and take CPU from ranks on a full node.
const MAX_PREFETCH: u64 = 8 << 20;
/// Threads decompressing, at most.
const MAX_THREADS: usize = 4;
/// ELF headers and PT_INTERP sit at the start of the file.
const HEAD: usize = 64 << 10;

/// The running read-ahead.
pub struct Prefetch {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    caching: bool,
}

impl Prefetch {
    /// When the launch is over. With a block cache, the read-ahead stops after the blocks in
    /// hand, brings the cache within its bound, and is waited for, so that a finished launch
    /// leaves the cache within it; without one, it is left to end with the process.
    pub fn finish(self) {
        if self.caching {
            self.stop.store(true, Ordering::Relaxed);
            let _ = self.thread.join();
        }
    }
}

/// Warm the interpreter and the program, offering each to `pusher` (if any) once its blocks
/// are in memory; blocks come from, and go to, the block cache when there is one (`cache`:
/// where, and for whom).
pub fn spawn(
    archive: Arc<Archive>,
    program: String,
    pusher: Option<Pusher>,
    cache: Option<(block_cache::Settings, u32)>,
) -> Option<Prefetch> {
    let stop = Arc::new(AtomicBool::new(false));
    let caching = cache.is_some();
    let stopped = stop.clone();
    // Made before the thread starts: the exec waits (a little: `Pusher::close`) for the
    // program's store, however late the thread runs.
    let promise = pusher.as_ref().map(Pusher::promise_programs);
    let thread = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || {
            let cache = cache.and_then(|(settings, uid)| {
                DiskBlockCache::open(&settings, uid)
                    .map_err(|e| debug::step(format_args!("block cache not used: {e:#}")))
                    .ok()
                    .map(|c| (c, settings.dir))
            });
            let offer = |inode: &Inode| {
                if let Some(p) = &pusher {
                    let ino = INodeNo(node_id(inode.inode_ref, archive.superblock().root_inode));
                    p.offer(crate::fuse::push::Kind::Program, vec![(ino, inode.clone())]);
                }
            };
            let Some(prog) = regular_file(&archive, &program) else {
                return;
            };
            let store = cache.as_ref().map(|(c, _)| c as &dyn BlockStore);
            // The head first: it names the interpreter, which the exec loads before the rest.
            // (Its block through the cache too; the read below then finds it in memory.)
            let _ = archive.warm_block(&prog, 0, store);
            let mut head = vec![0u8; HEAD];
            let Ok(n) = archive.read_at(&prog, 0, &mut head) else {
                return;
            };
            let interp = interpreter(&head[..n]).and_then(|p| regular_file(&archive, &p));
            // Each file is offered once its blocks are all in memory: the push thread then
            // only copies. (Offered before, it took the blocks the read-ahead had not reached
            // yet and decompressed them itself, past the block cache.) The interpreter first:
            // it is small and the exec maps it first, and a program too big to warm within
            // the exec's wait does not hold it back.
            let rest = blocks(&archive, &prog, (n as u64).div_ceil(block_size(&archive)));
            for (file, work) in [
                interp
                    .as_ref()
                    .map(|i| (i, blocks(&archive, i, 0).collect::<Vec<_>>())),
                Some((&prog, rest.collect())),
            ]
            .into_iter()
            .flatten()
            {
                warm(&archive, &work, store, &stopped);
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                offer(file);
            }
            drop(promise);
            if let Some((cache, dir)) = &cache {
                let (loaded, saved) = cache.counts();
                debug::step(format_args!(
                    "block cache {}: {loaded} blocks loaded, {saved} saved",
                    dir.display()
                ));
                cache.finish();
            }
        })
        .ok()?;
    Some(Prefetch {
        thread,
        stop,
        caching,
    })
}

fn regular_file(archive: &Archive, path: &str) -> Option<Inode> {
    let inode = archive.resolve(path.as_bytes()).ok()??;
    (inode.kind == FileType::File && inode.size <= MAX_PREFETCH).then_some(inode)
}

fn block_size(archive: &Archive) -> u64 {
    u64::from(archive.superblock().block_size).max(4096)
}

/// Blocks `from..` of `file`, the fragment tail included.
fn blocks<'a>(
    archive: &Archive,
    file: &'a Inode,
    from: u64,
) -> impl Iterator<Item = (&'a Inode, u64)> + 'a {
    (from..file.size.div_ceil(block_size(archive))).map(move |i| (file, i))
}

/// Decompress the listed blocks on a few threads, each taking the next one in the list,
/// until the list ends or `stop` is set.
fn warm(
    archive: &Archive,
    work: &[(&Inode, u64)],
    store: Option<&dyn BlockStore>,
    stop: &AtomicBool,
) {
    let next = AtomicUsize::new(0);
    let take = || {
        while let Some((file, index)) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if archive.warm_block(file, *index, store).is_err() {
                return;
            }
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(work.len());
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(take);
        }
        take();
    });
}

/// The program that runs this file: its ELF PT_INTERP, or the `#!` interpreter of a script.
fn interpreter(head: &[u8]) -> Option<String> {
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|b| *b == b'\n').next()?;
        let path = std::str::from_utf8(line).ok()?.split_whitespace().next()?;
        return path.starts_with('/').then(|| path.to_string());
    }
    let header = Elf::parse_header(head).ok()?;
    let ctx = header_ctx(&header)?;
    let phdrs =
        ProgramHeader::parse(head, header.e_phoff as usize, header.e_phnum as usize, ctx).ok()?;
    let p = phdrs.iter().find(|p| p.p_type == PT_INTERP)?;
    let start = p.p_offset as usize;
    let bytes = head.get(start..start.checked_add(p.p_filesz as usize)?)?;
    let path = bytes.split(|b| *b == 0).next()?;
    std::str::from_utf8(path)
        .ok()
        .filter(|s| s.starts_with('/'))
        .map(str::to_string)
}

fn header_ctx(h: &Header) -> Option<goblin::container::Ctx> {
    let container = h.container().ok()?;
    let le = h.endianness().ok()?;
    Some(goblin::container::Ctx::new(container, le))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_a_dynamic_program() {
        let me = std::fs::read("/bin/sh").unwrap();
        let interp = interpreter(&me[..me.len().min(HEAD)]).unwrap();
        assert!(interp.contains("ld-linux"), "{interp}");
        assert_eq!(interpreter(b"#! /bin/sh -e\necho"), Some("/bin/sh".into()));
        assert_eq!(interpreter(b"#!sh\n"), None);
        assert_eq!(interpreter(b"\x7fELF garbage"), None);
        assert_eq!(interpreter(&[]), None);
    }
}
