//! Regular file contents: data blocks, sparse blocks and fragment tails.

use std::sync::Arc;

use super::cache::{Claim, Ticket};
use super::compression::decompress;
use super::error::{corrupt, Error, Result};
use super::inode::{Detail, FileLayout, Inode, NO_FRAGMENT};
use super::metadata::{table_entry, Cursor};
use super::{Archive, BlockBytes, BlockKey, BlockStore};

/// Bit of a data block size meaning "stored uncompressed".
const UNCOMPRESSED_BIT: u32 = 1 << 24;
const SIZE_MASK: u32 = UNCOMPRESSED_BIT - 1;
/// Block list entries between two marks, at least: a read walks up to this
/// many entries before its first block.
const MIN_STRIDE: u64 = 64;
/// Marks per file, at most, so a file's marks always fit one cache shard.
const MAX_MARKS: u64 = 8192;
/// Most bytes read from disk at once for a run of consecutive blocks.
const RUN_MAX: u64 = 2 << 20;

/// Where every `stride`-th block of a file starts, on disk and in the block
/// size list. Block positions are running sums of the sizes before them, so
/// without marks every read of a big file would sum its whole list.
pub(crate) struct BlockMarks {
    stride: u64,
    marks: Vec<Mark>,
}

struct Mark {
    block_pos: u64,
    list_pos: (u64, usize),
}

/// One data block: where it lies and how it is stored.
#[derive(Clone, Copy)]
struct BlockRef {
    pos: u64,
    raw: u32,
}

impl BlockRef {
    fn disk_size(self) -> u64 {
        u64::from(self.raw & SIZE_MASK)
    }
}

/// Copies the part of `src` (file bytes from `src_at`) that overlaps `dst`
/// (file bytes from `dst_at`).
fn copy_overlap(dst: &mut [u8], dst_at: u64, src: &[u8], src_at: u64, src_len: u64) -> Result<()> {
    let start = dst_at.max(src_at);
    let end = (dst_at + dst.len() as u64).min(src_at + src_len);
    if start >= end {
        return Ok(());
    }
    let (s, e) = ((start - src_at) as usize, (end - src_at) as usize);
    let d = (start - dst_at) as usize;
    let Some(src) = src.get(s..e) else {
        return Err(corrupt(format!(
            "block holds {} bytes, {} needed",
            src.len(),
            e
        )));
    };
    dst[d..d + src.len()].copy_from_slice(src);
    Ok(())
}

impl Archive {
    fn file_layout(file: &Inode) -> Result<FileLayout> {
        match file.detail {
            Detail::File(l) => Ok(l),
            _ => Err(Error::invalid(
                std::io::ErrorKind::InvalidInput,
                format_args!("inode {:#x} is not a regular file", file.inode_ref),
            )),
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    pub fn read_at(&self, file: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at_inner(file, offset, buf)
            .map_err(|e| e.context(format_args!("file inode {:#x}", file.inode_ref)))
    }

    fn read_at_inner(&self, file: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let layout = Self::file_layout(file)?;
        let block_count = layout.block_count;
        if offset >= file.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (file.size - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..len];
        let end = offset + len as u64;
        let bs = u64::from(self.sb.block_size);
        let data_end = block_count.saturating_mul(bs).min(file.size);
        if offset < data_end {
            let first = offset / bs;
            let last = (end.min(data_end) - 1) / bs;
            let blocks = self.block_range(file.inode_ref, &layout, first, last)?;
            self.read_blocks(file, first, &blocks, offset, buf)?;
        }
        if end > data_end {
            let (frag, range) = self.fragment_tail(file, &layout, data_end)?;
            let tail_len = range.len() as u64;
            copy_overlap(buf, offset, &frag[range], data_end, tail_len)?;
        }
        Ok(len)
    }

    /// The file's bytes from `data_end` (where its blocks end) to its end: the fragment block
    /// that holds them, and where in it.
    fn fragment_tail(
        &self,
        file: &Inode,
        layout: &FileLayout,
        data_end: u64,
    ) -> Result<(Arc<BlockBytes>, std::ops::Range<usize>)> {
        let fragment = layout.fragment;
        if fragment == NO_FRAGMENT {
            return Err(corrupt(format!(
                "blocks cover {data_end} of {} bytes and there is no fragment",
                file.size
            )));
        }
        let tail_len = file.size - data_end;
        let frag = self.fragment_block(fragment)?;
        let from = layout.frag_offset as usize;
        match from.checked_add(tail_len as usize) {
            Some(to) if to <= frag.len() => Ok((frag, from..to)),
            _ => Err(corrupt(format!(
                "fragment {fragment} holds {} bytes, tail needs {tail_len} at {from}",
                frag.len()
            ))),
        }
    }

    /// Reads blocks `first..` (given in `blocks`) and copies what overlaps `buf`.
    fn read_blocks(
        &self,
        file: &Inode,
        first: u64,
        blocks: &[BlockRef],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let bs = u64::from(self.sb.block_size);
        let block_len = |i: usize| {
            let at = (first + i as u64) * bs;
            (at, bs.min(file.size - at))
        };
        let mut i = 0;
        while i < blocks.len() {
            let b = blocks[i];
            let (at, want) = block_len(i);
            if b.disk_size() == 0 {
                // Sparse block: all zeros, nothing on disk.
                let s = at.max(offset) - offset;
                let e = (at + want).min(offset + buf.len() as u64) - offset;
                buf[s as usize..e as usize].fill(0);
                i += 1;
                continue;
            }
            let ticket = match self.data_cache.claim((b.pos, b.raw)) {
                Claim::Ready(data) => {
                    copy_overlap(buf, offset, &data, at, want)?;
                    i += 1;
                    continue;
                }
                Claim::Wait(flight) => {
                    // Another reader is decompressing this block: take its result.
                    let data = match flight.wait() {
                        Some(d) => d,
                        None => {
                            self.load_block(b, &format_args!("data block {}", first + i as u64))?
                        }
                    };
                    copy_overlap(buf, offset, &data, at, want)?;
                    i += 1;
                    continue;
                }
                Claim::Mine(t) => t,
            };
            // A run of blocks not yet cached nor being loaded: they lie back to back on
            // disk, so one read fetches them all. Claims are taken as the run grows, and all
            // are completed (or dropped, on error) before this reader waits for anything.
            let mut tickets = vec![ticket];
            let mut j = i + 1;
            let mut total = b.disk_size();
            while let Some(n) = blocks.get(j) {
                if n.disk_size() == 0 || total + n.disk_size() > RUN_MAX || n.pos != b.pos + total {
                    break;
                }
                match self.data_cache.claim((n.pos, n.raw)) {
                    Claim::Mine(t) => tickets.push(t),
                    _ => break,
                }
                total += n.disk_size();
                j += 1;
            }
            self.disk.with_bytes(
                b.pos,
                total as usize,
                &format_args!("data blocks {}..{}", first + i as u64, first + j as u64),
                |raw| {
                    let mut at_raw = 0usize;
                    for (k, (blk, ticket)) in blocks[i..j].iter().zip(tickets).enumerate() {
                        let n = blk.disk_size() as usize;
                        let data = self.decode(*blk, &raw[at_raw..at_raw + n])?;
                        at_raw += n;
                        let weight = data.len() + 64;
                        let data = ticket.complete(BlockBytes::Owned(data), weight);
                        let (at, want) = block_len(i + k);
                        copy_overlap(buf, offset, &data, at, want)?;
                    }
                    Ok(())
                },
            )?;
            i = j;
        }
        Ok(())
    }

    /// Decompresses block `index` of `file` (the fragment tail when `index` is the number of
    /// full blocks) into the cache, unless it is cached or another reader is loading it:
    /// read-ahead threads never wait for work someone else is doing, they move on.
    ///
    /// With a `store`, a block decompressed by an earlier process comes from there, and one
    /// decompressed here is offered to it (see [`BlockStore`]).
    pub fn warm_block(
        &self,
        file: &Inode,
        index: u64,
        store: Option<&dyn BlockStore>,
    ) -> Result<()> {
        let layout = Self::file_layout(file)?;
        if index >= layout.block_count {
            if index == layout.block_count && layout.fragment != NO_FRAGMENT {
                self.fragment_block_via(layout.fragment, store)?;
            }
            return Ok(());
        }
        let [b] = self.block_range(file.inode_ref, &layout, index, index)?[..] else {
            return Err(corrupt(format!(
                "block {index}: no entry in the block list"
            )));
        };
        if b.disk_size() == 0 {
            return Ok(());
        }
        if let Claim::Mine(ticket) = self.data_cache.claim((b.pos, b.raw)) {
            self.load_claimed(ticket, b, &format_args!("data block {index}"), store)?;
        }
        Ok(())
    }

    /// The file's bytes as the decompressed blocks that hold them, in order, each with the
    /// range of it that is the file's: for handing them on without copying them (the
    /// launcher's page-cache pushes). Blocks come from the cache, or are loaded into it.
    /// None when a block is sparse (nothing stored to hand on).
    #[allow(clippy::type_complexity)]
    pub fn file_pieces(
        &self,
        file: &Inode,
    ) -> Result<Option<Vec<(Arc<BlockBytes>, std::ops::Range<usize>)>>> {
        self.file_pieces_inner(file)
            .map_err(|e| e.context(format_args!("file inode {:#x}", file.inode_ref)))
    }

    #[allow(clippy::type_complexity)]
    fn file_pieces_inner(
        &self,
        file: &Inode,
    ) -> Result<Option<Vec<(Arc<BlockBytes>, std::ops::Range<usize>)>>> {
        let layout = Self::file_layout(file)?;
        let bs = u64::from(self.sb.block_size);
        let data_end = layout.block_count.saturating_mul(bs).min(file.size);
        let mut pieces = Vec::new();
        if layout.block_count > 0 && data_end > 0 {
            let blocks = self.block_range(file.inode_ref, &layout, 0, layout.block_count - 1)?;
            for (i, b) in blocks.iter().enumerate() {
                let at = i as u64 * bs;
                if at >= data_end {
                    break;
                }
                if b.disk_size() == 0 {
                    return Ok(None);
                }
                let want = bs.min(data_end - at) as usize;
                let data = self.cached_block(*b, &format_args!("data block {i}"), None)?;
                if data.len() < want {
                    return Err(corrupt(format!(
                        "block {i} holds {} bytes, {want} needed",
                        data.len()
                    )));
                }
                pieces.push((data, 0..want));
            }
        }
        if file.size > data_end {
            pieces.push(self.fragment_tail(file, &layout, data_end)?);
        }
        Ok(Some(pieces))
    }

    /// A data or fragment block (`what`, for errors) from the cache, or loaded into it
    /// (through `store`, if any), waiting for a reader already loading it.
    fn cached_block(
        &self,
        b: BlockRef,
        what: &dyn std::fmt::Display,
        store: Option<&dyn BlockStore>,
    ) -> Result<Arc<BlockBytes>> {
        match self.data_cache.claim((b.pos, b.raw)) {
            Claim::Ready(d) => Ok(d),
            Claim::Wait(flight) => match flight.wait() {
                Some(d) => Ok(d),
                None => self.load_block(b, what),
            },
            Claim::Mine(ticket) => self.load_claimed(ticket, b, what, store),
        }
    }

    /// Loads a block this reader claimed into the cache (through `store`, if any).
    fn load_claimed(
        &self,
        ticket: Ticket<'_, (u64, u32), BlockBytes>,
        b: BlockRef,
        what: &dyn std::fmt::Display,
        store: Option<&dyn BlockStore>,
    ) -> Result<Arc<BlockBytes>> {
        self.disk
            .with_bytes(b.pos, b.disk_size() as usize, what, |stored| {
                let data = self.decode_via(b, stored, store)?;
                let weight = data.len() + 64;
                Ok(ticket.complete(data, weight))
            })
    }

    /// Reads and decompresses one block without sharing (after another reader's load failed).
    fn load_block(&self, b: BlockRef, what: &dyn std::fmt::Display) -> Result<Arc<BlockBytes>> {
        self.disk
            .with_bytes(b.pos, b.disk_size() as usize, what, |stored| {
                self.decode_block(b, stored)
            })
    }

    /// Decompresses a data or fragment block and caches it.
    fn decode_block(&self, b: BlockRef, stored: &[u8]) -> Result<Arc<BlockBytes>> {
        let data = self.decode(b, stored)?;
        let weight = data.len() + 64;
        Ok(self
            .data_cache
            .insert((b.pos, b.raw), BlockBytes::Owned(data), weight))
    }

    /// Decompresses a data or fragment block, or takes it from `store`, which gets the
    /// blocks it did not have. Blocks stored uncompressed are only copied: never stored.
    fn decode_via(
        &self,
        b: BlockRef,
        stored: &[u8],
        store: Option<&dyn BlockStore>,
    ) -> Result<BlockBytes> {
        let Some(store) = store.filter(|_| b.raw & UNCOMPRESSED_BIT == 0) else {
            return self.decode(b, stored).map(BlockBytes::Owned);
        };
        let key = BlockKey {
            compressor: self.sb.compressor.id(),
            stored,
        };
        let max = self.sb.block_size as usize;
        // Longer than a block is what decompression refuses: the store's copy must be too.
        if let Some(data) = store.load(&key).filter(|d| d.len() <= max) {
            return Ok(data);
        }
        let data = self.decode(b, stored)?;
        store.save(&key, &data);
        Ok(BlockBytes::Owned(data))
    }

    /// Decompresses a data or fragment block.
    fn decode(&self, b: BlockRef, stored: &[u8]) -> Result<Vec<u8>> {
        if b.raw & UNCOMPRESSED_BIT != 0 {
            Ok(stored.to_vec())
        } else {
            decompress(&self.sb.compressor, stored, self.sb.block_size as usize)
                .map_err(|e| e.context(format_args!("data block at {}", b.pos)))
        }
    }

    fn fragment_block(&self, index: u32) -> Result<Arc<BlockBytes>> {
        self.fragment_block_via(index, None)
    }

    fn fragment_block_via(
        &self,
        index: u32,
        store: Option<&dyn BlockStore>,
    ) -> Result<Arc<BlockBytes>> {
        let e: [u8; 16] = table_entry(
            &self.meta,
            &self.disk,
            "fragment table",
            &self.frag_index,
            u64::from(index),
        )?;
        let pos = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        let raw = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        let b = BlockRef { pos, raw };
        if b.disk_size() == 0
            || b.disk_size() > u64::from(self.sb.block_size)
            || raw & !(SIZE_MASK | UNCOMPRESSED_BIT) != 0
        {
            return Err(corrupt(format!(
                "fragment {index}: bad stored size {raw:#x}"
            )));
        }
        self.cached_block(b, &format_args!("fragment {index}"), store)
    }

    /// The blocks `first..=last` of a file.
    fn block_range(
        &self,
        inode_ref: u64,
        layout: &FileLayout,
        first: u64,
        last: u64,
    ) -> Result<Vec<BlockRef>> {
        let block_count = layout.block_count;
        if last >= block_count || first > last {
            return Err(corrupt(format!(
                "block {last} beyond the {block_count} blocks"
            )));
        }
        // Start from the nearest mark at or before `first`; small files need
        // no marks, their list is short enough to read from the start.
        let (mark_block, mut pos, list_pos) = if block_count <= MIN_STRIDE {
            (0, layout.blocks_start, layout.list_pos)
        } else {
            let marks = match self.list_cache.get(&inode_ref) {
                Some(m) => m,
                None => {
                    let m = self.build_marks(layout)?;
                    let weight = m.marks.len() * std::mem::size_of::<Mark>() + 64;
                    self.list_cache.insert(inode_ref, m, weight)
                }
            };
            let k = first / marks.stride;
            let Some(m) = usize::try_from(k).ok().and_then(|k| marks.marks.get(k)) else {
                return Err(corrupt(format!("no block list mark for block {first}")));
            };
            (k * marks.stride, m.block_pos, m.list_pos)
        };
        let mut c = self.list_cursor(list_pos);
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        for i in mark_block..=last {
            let raw = self.next_block_size(&mut c, i)?;
            if i >= first {
                out.push(BlockRef { pos, raw });
            }
            pos = self.advance(pos, raw, i)?;
        }
        Ok(out)
    }

    fn list_cursor(&self, list_pos: (u64, usize)) -> Cursor<'_> {
        let start = self.sb.inode_table_start;
        Cursor::new(
            &self.meta,
            &self.disk,
            "block list",
            list_pos.0,
            list_pos.1,
            self.sb.region_end(start),
        )
    }

    fn next_block_size(&self, c: &mut Cursor<'_>, i: u64) -> Result<u32> {
        let raw = c.u32()?;
        if raw & SIZE_MASK > self.sb.block_size || raw & !(SIZE_MASK | UNCOMPRESSED_BIT) != 0 {
            return Err(corrupt(format!("block {i}: bad stored size {raw:#x}")));
        }
        Ok(raw)
    }

    fn advance(&self, pos: u64, raw: u32, i: u64) -> Result<u64> {
        pos.checked_add(u64::from(raw & SIZE_MASK))
            .filter(|&p| p <= self.disk.len())
            .ok_or_else(|| corrupt(format!("block {i} lies past the image end")))
    }

    /// One pass over the block size list, keeping a mark every `stride` blocks.
    fn build_marks(&self, layout: &FileLayout) -> Result<BlockMarks> {
        let n = layout.block_count;
        let stride = MIN_STRIDE.max(n.div_ceil(MAX_MARKS));
        let mut c = self.list_cursor(layout.list_pos);
        // Grows only as entries are really read, so a bad count cannot allocate much.
        let mut marks = Vec::with_capacity(n.div_ceil(stride).min(1024) as usize);
        let mut pos = layout.blocks_start;
        for i in 0..n {
            if i % stride == 0 {
                marks.push(Mark {
                    block_pos: pos,
                    list_pos: c.position(),
                });
            }
            let raw = self.next_block_size(&mut c, i)?;
            pos = self.advance(pos, raw, i)?;
        }
        Ok(BlockMarks { stride, marks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image of one file `/f`: 3 full 4 KiB blocks and a 1000-byte fragment tail, not
    /// compressible to nothing. The image and the file's bytes.
    fn three_blocks_and_a_tail(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(src.join("f"), &data).unwrap();
        let img = dir.join("img");
        let built = std::process::Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args(["-noappend", "-no-progress", "-quiet", "-b", "4096"])
            // Or the tail of a file over one block is a short last block, not a fragment.
            .arg("-always-use-fragments")
            .status();
        assert!(
            built.is_ok_and(|s| s.success()),
            "mksquashfs failed or is missing (tests/setup.sh installs squashfs-tools)"
        );
        (img, data)
    }

    /// warm_block loads each block once into the cache, the fragment tail too, and reads
    /// afterwards return the file's bytes; past the end it does nothing.
    #[test]
    fn warm_block_fills_the_cache_block_by_block() {
        let tmp = tempfile::tempdir().unwrap();
        let (img, data) = three_blocks_and_a_tail(tmp.path());
        let a = Archive::open_path(&img, 0).unwrap();
        let f = a.resolve(b"/f").unwrap().unwrap();
        let mut cached = a.data_cache.bytes();
        for i in 0..4 {
            a.warm_block(&f, i, None).unwrap();
            let now = a.data_cache.bytes();
            assert!(now > cached, "block {i} was not cached");
            a.warm_block(&f, i, None).unwrap();
            assert_eq!(a.data_cache.bytes(), now, "block {i} loaded twice");
            cached = now;
        }
        a.warm_block(&f, 4, None).unwrap();
        a.warm_block(&f, 99, None).unwrap();
        assert_eq!(a.data_cache.bytes(), cached);
        let mut back = vec![0u8; data.len()];
        assert_eq!(a.read_at(&f, 0, &mut back).unwrap(), data.len());
        assert_eq!(back, data);
    }

    /// Decompressed blocks by (compressor, stored bytes).
    type Blocks = std::collections::HashMap<(u16, Vec<u8>), Vec<u8>>;

    /// The pieces of a file are its bytes, blocks and fragment tail, in order.
    #[test]
    fn file_pieces_are_the_files_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (img, data) = three_blocks_and_a_tail(tmp.path());
        let a = Archive::open_path(&img, 0).unwrap();
        let f = a.resolve(b"/f").unwrap().unwrap();
        let pieces = a.file_pieces(&f).unwrap().unwrap();
        assert_eq!(pieces.len(), 4, "3 blocks and the tail");
        let joined: Vec<u8> = pieces
            .iter()
            .flat_map(|(d, r)| d[r.clone()].iter().copied())
            .collect();
        assert_eq!(joined, data);
    }

    /// A store in memory that counts what it is asked.
    #[derive(Default)]
    struct CountingStore {
        blocks: std::sync::Mutex<Blocks>,
        loads: std::sync::atomic::AtomicUsize,
        saves: std::sync::atomic::AtomicUsize,
        /// Give back this instead of what was saved.
        forged: Option<Vec<u8>>,
    }

    /// Lent bytes, as the launcher's mapped entries are.
    struct Lent(Vec<u8>);

    impl crate::squashfs::LentBytes for Lent {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    impl BlockStore for CountingStore {
        fn load(&self, key: &BlockKey<'_>) -> Option<BlockBytes> {
            let found = self
                .blocks
                .lock()
                .unwrap()
                .get(&(key.compressor, key.stored.to_vec()))
                .cloned()?;
            self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let bytes = self.forged.clone().unwrap_or(found);
            Some(BlockBytes::Lent(Box::new(Lent(bytes))))
        }
        fn save(&self, key: &BlockKey<'_>, data: &[u8]) {
            self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.blocks
                .lock()
                .unwrap()
                .insert((key.compressor, key.stored.to_vec()), data.to_vec());
        }
    }

    fn warm_all(img: &std::path::Path, store: &CountingStore) -> Vec<u8> {
        let a = Archive::open_path(img, 0).unwrap();
        let f = a.resolve(b"/f").unwrap().unwrap();
        for i in 0..4 {
            a.warm_block(&f, i, Some(store)).unwrap();
        }
        let mut back = vec![0u8; f.size as usize];
        assert_eq!(a.read_at(&f, 0, &mut back).unwrap(), back.len());
        back
    }

    /// The first process decompresses and saves every block, the fragment too; a later one
    /// (a fresh archive: nothing in memory) loads them all and reads the same bytes.
    #[test]
    fn warm_block_saves_to_the_store_and_later_archives_load_from_it() {
        use std::sync::atomic::Ordering::SeqCst;
        let tmp = tempfile::tempdir().unwrap();
        let (img, data) = three_blocks_and_a_tail(tmp.path());
        let store = CountingStore::default();
        assert_eq!(warm_all(&img, &store), data);
        assert_eq!((store.loads.load(SeqCst), store.saves.load(SeqCst)), (0, 4));
        assert_eq!(warm_all(&img, &store), data);
        assert_eq!((store.loads.load(SeqCst), store.saves.load(SeqCst)), (4, 4));
    }

    /// A stored block longer than the image's blocks is not taken: decompression would have
    /// refused one, so the block is decompressed again (and the right bytes read).
    #[test]
    fn a_stored_block_longer_than_a_block_is_not_used() {
        use std::sync::atomic::Ordering::SeqCst;
        let tmp = tempfile::tempdir().unwrap();
        let (img, data) = three_blocks_and_a_tail(tmp.path());
        let mut store = CountingStore::default();
        warm_all(&img, &store);
        store.forged = Some(vec![0xAA; 4097]);
        assert_eq!(warm_all(&img, &store), data);
        assert_eq!(
            store.saves.load(SeqCst),
            8,
            "every block decompressed again"
        );
    }
}
