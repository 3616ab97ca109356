//! Metadata blocks (8 KiB units with a 2-byte header) and a cursor that reads
//! a byte stream across them, through a bounded cache.

use std::sync::Arc;

use super::cache::Cache;
use super::compression::decompress;
use super::disk::Disk;
use super::error::{corrupt, Result};
use super::superblock::Compressor;

/// Decompressed size of every metadata block but the last of a table.
pub(crate) const METADATA_SIZE: usize = 8192;
const UNCOMPRESSED_BIT: u16 = 0x8000;

pub(crate) struct MetaBlock {
    pub(crate) data: Vec<u8>,
    /// Image position of the block that follows this one.
    pub(crate) next: u64,
}

pub(crate) struct Metadata {
    cache: Cache<u64, MetaBlock>,
    compressor: Compressor,
}

impl Metadata {
    pub(crate) fn new(compressor: Compressor, cache_bytes: usize) -> Metadata {
        Metadata {
            cache: Cache::new(cache_bytes),
            compressor,
        }
    }

    #[cfg(test)]
    pub(crate) fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// The decompressed block at image position `pos`, which must lie before `end`.
    pub(crate) fn block(
        &self,
        disk: &Disk,
        table: &str,
        pos: u64,
        end: u64,
    ) -> Result<Arc<MetaBlock>> {
        if pos >= end {
            return Err(corrupt(format!(
                "{table}: metadata block at {pos} lies past the table end {end}"
            )));
        }
        if let Some(b) = self.cache.get(&pos) {
            return Ok(b);
        }
        let what = format_args!("{table} metadata block at {pos}");
        // Header and the largest possible body in one read.
        let max = usize::try_from(end - pos)
            .unwrap_or(usize::MAX)
            .min(2 + METADATA_SIZE);
        let raw = disk.read_upto(pos, max, &what)?;
        let Some(hdr) = raw.get(..2).map(|h| u16::from_le_bytes([h[0], h[1]])) else {
            return Err(corrupt(format!("{what}: truncated header")));
        };
        let size = usize::from(hdr & !UNCOMPRESSED_BIT);
        let Some(body) = raw
            .get(2..2 + size)
            .filter(|_| size > 0 && size <= METADATA_SIZE)
        else {
            return Err(corrupt(format!("{what}: bad stored size {size}")));
        };
        let data = if hdr & UNCOMPRESSED_BIT != 0 {
            body.to_vec()
        } else {
            decompress(&self.compressor, body, METADATA_SIZE).map_err(|e| e.context(what))?
        };
        if data.is_empty() {
            return Err(corrupt(format!("{what}: empty block")));
        }
        let weight = data.len() + 64;
        Ok(self.cache.insert(
            pos,
            MetaBlock {
                data,
                next: pos + 2 + size as u64,
            },
            weight,
        ))
    }
}

/// Reads a byte stream that starts at `offset` inside the block at `pos` and
/// runs on through the following blocks of the same table.
pub(crate) struct Cursor<'a> {
    meta: &'a Metadata,
    disk: &'a Disk,
    table: &'static str,
    pos: u64,
    off: usize,
    end: u64,
    cur: Option<Arc<MetaBlock>>,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(
        meta: &'a Metadata,
        disk: &'a Disk,
        table: &'static str,
        pos: u64,
        off: usize,
        end: u64,
    ) -> Self {
        Cursor {
            meta,
            disk,
            table,
            pos,
            off,
            end,
            cur: None,
        }
    }

    /// Where the next byte comes from: (block position, offset in it).
    pub(crate) fn position(&self) -> (u64, usize) {
        (self.pos, self.off)
    }

    /// Makes the next `n` bytes available (or the rest of the current block if fewer) and
    /// passes them to `f`, which returns how many it used.
    fn with_chunk(&mut self, want: usize, f: &mut dyn FnMut(&[u8])) -> Result<usize> {
        loop {
            let blk = match &self.cur {
                Some(b) => Arc::clone(b),
                None => {
                    let b = self.meta.block(self.disk, self.table, self.pos, self.end)?;
                    self.cur = Some(Arc::clone(&b));
                    b
                }
            };
            let Some(avail) = blk.data.get(self.off..) else {
                return Err(corrupt(format!(
                    "{}: offset {} beyond the {}-byte metadata block at {}",
                    self.table,
                    self.off,
                    blk.data.len(),
                    self.pos
                )));
            };
            if avail.is_empty() {
                // Blocks are never empty and `next` always moves forward, so
                // this ends at `end` at the latest.
                self.pos = blk.next;
                self.off = 0;
                self.cur = None;
                continue;
            }
            let n = avail.len().min(want);
            f(&avail[..n]);
            self.off += n;
            return Ok(n);
        }
    }

    pub(crate) fn read(&mut self, out: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < out.len() {
            let dst = &mut out[done..];
            let want = dst.len();
            done += self.with_chunk(want, &mut |src| dst[..src.len()].copy_from_slice(src))?;
        }
        Ok(())
    }

    /// Reads `n` bytes; memory grows only as data is really found, so a bad
    /// length from the image cannot trigger a huge allocation.
    pub(crate) fn read_vec(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(n.min(METADATA_SIZE));
        while v.len() < n {
            let want = n - v.len();
            self.with_chunk(want, &mut |src| v.extend_from_slice(src))?;
        }
        Ok(v)
    }

    pub(crate) fn skip(&mut self, n: u64) -> Result<()> {
        let mut left = n;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX);
            left -= self.with_chunk(want, &mut |_| {})? as u64;
        }
        Ok(())
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Reads the array of metadata block positions that indexes a table of
/// `count` entries of `entry_size` bytes.
pub(crate) fn read_index(
    disk: &Disk,
    table: &str,
    start: u64,
    count: u64,
    entry_size: u64,
) -> Result<Vec<u64>> {
    let blocks = (count * entry_size).div_ceil(METADATA_SIZE as u64);
    let bytes = blocks * 8;
    // Bounded by the image size, which `read_exact` checks before allocating the rest.
    if start.saturating_add(bytes) > disk.len() {
        return Err(corrupt(format!(
            "{table}: index of {blocks} blocks at {start} lies past the image end"
        )));
    }
    let mut raw = vec![0u8; bytes as usize];
    disk.read_exact(start, &mut raw, &format_args!("{table} index"))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// Reads entry `index` (of `N` bytes) from a table indexed by `ptrs`.
pub(crate) fn table_entry<const N: usize>(
    meta: &Metadata,
    disk: &Disk,
    table: &'static str,
    ptrs: &[u64],
    index: u64,
) -> Result<[u8; N]> {
    let byte = index * N as u64;
    let block = byte / METADATA_SIZE as u64;
    let off = (byte % METADATA_SIZE as u64) as usize;
    let Some(&pos) = usize::try_from(block).ok().and_then(|b| ptrs.get(b)) else {
        return Err(corrupt(format!("{table}: entry {index} beyond the index")));
    };
    let mut out = [0u8; N];
    Cursor::new(meta, disk, table, pos, off, disk.len()).read(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn disk_with(bytes: &[u8]) -> Disk {
        let mut f = tempfile_in_tmp();
        f.write_all(bytes).unwrap();
        Disk::new(f, 0, bytes.len() as u64)
    }

    fn tempfile_in_tmp() -> std::fs::File {
        tempfile::tempfile().unwrap()
    }

    fn uncompressed_block(data: &[u8]) -> Vec<u8> {
        let mut v = ((data.len() as u16) | UNCOMPRESSED_BIT)
            .to_le_bytes()
            .to_vec();
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn cursor_crosses_blocks() {
        let a: Vec<u8> = (0..METADATA_SIZE).map(|i| i as u8).collect();
        let mut img = uncompressed_block(&a);
        img.extend(uncompressed_block(b"tail"));
        let disk = disk_with(&img);
        let meta = Metadata::new(Compressor::Gzip, 1 << 20);
        let mut c = Cursor::new(&meta, &disk, "test", 0, METADATA_SIZE - 2, img.len() as u64);
        assert_eq!(c.read_vec(6).unwrap(), [254, 255, b't', b'a', b'i', b'l']);
        assert!(c.u16().is_err());
        let mut c = Cursor::new(&meta, &disk, "test", 0, METADATA_SIZE + 1, img.len() as u64);
        assert!(c.u16().is_err());
        let mut c = Cursor::new(&meta, &disk, "test", 0, 0, img.len() as u64);
        c.skip(METADATA_SIZE as u64 + 1).unwrap();
        assert_eq!(c.read_vec(3).unwrap(), b"ail");
        // A huge claimed length fails without allocating it.
        let mut c = Cursor::new(&meta, &disk, "test", 0, 0, img.len() as u64);
        assert!(c.read_vec(usize::MAX).is_err());
    }

    #[test]
    fn bad_headers() {
        let meta = Metadata::new(Compressor::Gzip, 1 << 20);
        for img in [
            vec![0u8, 0],
            vec![5, 0x80, 1],
            vec![0xff, 0xff, 0],
            vec![3, 0, 1, 2, 3],
        ] {
            let disk = disk_with(&img);
            assert!(meta.block(&disk, "t", 0, img.len() as u64).is_err());
        }
    }
}
