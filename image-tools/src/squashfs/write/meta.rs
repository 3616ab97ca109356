//! Metadata streams: records packed into 8 KiB blocks, each compressed when
//! that shrinks it and preceded by its 2-byte stored size.

use std::io;

use super::compress::Encoder;

pub(crate) const METADATA_SIZE: usize = 8192;
const UNCOMPRESSED_BIT: u16 = 0x8000;

/// One metadata table being built in memory.
pub(crate) struct MetaWriter {
    /// Finished blocks, headers included, as they go on disk.
    out: Vec<u8>,
    /// The block being filled (less than 8 KiB).
    cur: Vec<u8>,
    /// Disk offset (in `out`) of every finished block.
    starts: Vec<u64>,
}

impl MetaWriter {
    pub(crate) fn new() -> MetaWriter {
        MetaWriter {
            out: Vec::new(),
            cur: Vec::with_capacity(METADATA_SIZE),
            starts: Vec::new(),
        }
    }

    /// Position in the uncompressed stream where the next byte goes.
    pub(crate) fn pos(&self) -> u64 {
        (self.starts.len() * METADATA_SIZE + self.cur.len()) as u64
    }

    /// (disk offset of the block holding `pos` relative to the table start,
    /// offset in that block) for a position already written or the next one.
    /// Blocks are compressed as they fill, so every block up to the current
    /// one has a known start.
    pub(crate) fn locate(&self, pos: u64) -> (u64, u16) {
        let block = (pos / METADATA_SIZE as u64) as usize;
        let start = self
            .starts
            .get(block)
            .copied()
            .unwrap_or(self.out.len() as u64);
        (start, (pos % METADATA_SIZE as u64) as u16)
    }

    /// The 64-bit reference (block start << 16 | offset) of `pos`.
    pub(crate) fn reference(&self, pos: u64) -> u64 {
        let (start, off) = self.locate(pos);
        (start << 16) | u64::from(off)
    }

    pub(crate) fn write(&mut self, enc: &mut Encoder, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = (METADATA_SIZE - self.cur.len()).min(bytes.len());
            self.cur.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.cur.len() == METADATA_SIZE {
                self.flush(enc)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, enc: &mut Encoder) -> io::Result<()> {
        self.starts.push(self.out.len() as u64);
        push_block(&mut self.out, enc, &self.cur)?;
        self.cur.clear();
        Ok(())
    }

    /// The table as stored, with the last partial block; also the disk
    /// offsets of all blocks (for lookup-table indexes).
    pub(crate) fn finish(mut self, enc: &mut Encoder) -> io::Result<(Vec<u8>, Vec<u64>)> {
        if !self.cur.is_empty() {
            self.flush(enc)?;
        }
        Ok((self.out, self.starts))
    }
}

/// Appends one metadata block (header + body) holding `data` to `out`.
pub(crate) fn push_block(out: &mut Vec<u8>, enc: &mut Encoder, data: &[u8]) -> io::Result<()> {
    match enc.compress(data)? {
        Some(z) => {
            out.extend((z.len() as u16).to_le_bytes());
            out.extend(z);
        }
        None => {
            out.extend((data.len() as u16 | UNCOMPRESSED_BIT).to_le_bytes());
            out.extend(data);
        }
    }
    Ok(())
}

/// The metadata blocks of a lookup table (fixed-size entries) to be placed
/// at image position `at`, and the image position of each block (the index).
pub(crate) fn table_blocks(
    enc: &mut Encoder,
    entries: &[u8],
    at: u64,
) -> io::Result<(Vec<u8>, Vec<u64>)> {
    let mut out = Vec::new();
    let mut index = Vec::new();
    for chunk in entries.chunks(METADATA_SIZE) {
        index.push(at + out.len() as u64);
        push_block(&mut out, enc, chunk)?;
    }
    Ok((out, index))
}

/// A lookup table placed at `at`: its blocks followed by its index. Returns
/// the bytes and the image position of the index (what the superblock names).
pub(crate) fn lookup_table(
    enc: &mut Encoder,
    entries: &[u8],
    at: u64,
) -> io::Result<(Vec<u8>, u64)> {
    let (mut out, index) = table_blocks(enc, entries, at)?;
    let index_pos = at + out.len() as u64;
    for p in index {
        out.extend(p.to_le_bytes());
    }
    Ok((out, index_pos))
}
