//! Read the command's program (and its ELF interpreter) ahead, while the child builds the root.
//!
//! Start-up is dominated by decompressing the program the kernel is about to exec (1.4 MB of
//! a gzip busybox for `/bin/true`). Between the fork and the exec the FUSE workers are idle;
//! this thread decompresses those blocks into the reader's cache then, so the exec's page
//! faults find them ready. Best effort: any error just ends the prefetch.

use crate::fuse_fs::node_id;
use crate::push::Pusher;
use fuser::INodeNo;
use goblin::elf::program_header::PT_INTERP;
use goblin::elf::{Elf, Header, ProgramHeader};
use image_tools::squashfs::{Archive, FileType, Inode};
use std::sync::Arc;

/// Larger programs are left to the kernel's readahead: reading all of a big program would
/// cost more than the part its start-up touches, and take CPU from ranks on a full node.
const MAX_PREFETCH: u64 = 8 << 20;
/// Threads decompressing one program.
const MAX_THREADS: usize = 4;
/// ELF headers and PT_INTERP sit at the start of the file.
const HEAD: usize = 64 << 10;

/// Warm the program and its interpreter; hand each to `pusher` (if any) once decompressed.
pub fn spawn(archive: Arc<Archive>, program: String, pusher: Option<Pusher>) {
    let _ = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || {
            let mut next = Some(program);
            for _ in 0..2 {
                let Some(path) = next.take() else { break };
                let Some((inode, interp)) = warm(&archive, &path) else {
                    break;
                };
                if let Some(p) = &pusher {
                    let ino = INodeNo(node_id(inode.inode_ref, archive.superblock().root_inode));
                    p.offer(vec![(ino, inode)]);
                }
                next = interp;
            }
        });
}

/// Read one file through the cache; return it and its interpreter, if any.
fn warm(archive: &Archive, path: &str) -> Option<(Inode, Option<String>)> {
    let inode = archive.resolve(path.as_bytes()).ok()??;
    if inode.kind != FileType::File || inode.size > MAX_PREFETCH {
        return None;
    }
    // Several threads take interleaved block-sized pieces (the exec's page faults wait for a
    // block being read here rather than decompress it again); the first piece gives the head.
    let piece = u64::from(archive.superblock().block_size).max(4096);
    let pieces = inode.size.div_ceil(piece);
    // One CPU is left to the child building the root: its lookups and mounts are the
    // critical path, and on 2 cores two prefetch threads made them 3-4 times slower.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .clamp(1, MAX_THREADS) as u64;
    let head = std::thread::scope(|scope| {
        for t in 1..threads {
            let inode = &inode;
            scope.spawn(move || read_pieces(archive, inode, piece, pieces, t, threads));
        }
        read_pieces(archive, &inode, piece, pieces, 0, threads)
    })?;
    let interp = interpreter(&head);
    Some((inode, interp))
}

/// Read pieces `first, first+step, ...` through the cache; return the first piece's bytes
/// (the file's head when `first` is 0).
fn read_pieces(
    archive: &Archive,
    inode: &Inode,
    piece: u64,
    pieces: u64,
    first: u64,
    step: u64,
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; piece as usize];
    let mut head = None;
    let mut i = first;
    while i < pieces {
        let n = archive.read_at(inode, i * piece, &mut buf).ok()?;
        if head.is_none() {
            head = Some(buf[..n.min(HEAD)].to_vec());
        }
        i += step;
    }
    head.or_else(|| Some(Vec::new()))
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
