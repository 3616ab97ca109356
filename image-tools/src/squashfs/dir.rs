//! Directory listings and name lookup (with the index of extended directories).

use super::error::{corrupt, Error, Result};
use super::inode::{Detail, FileType, Inode};
use super::metadata::{Cursor, METADATA_SIZE};
use super::Archive;

/// One directory entry (never "." or "..").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub inode_ref: u64,
    pub inode_number: u32,
    pub kind: FileType,
}

/// Entries a single directory header may cover.
const MAX_HEADER_ENTRIES: u32 = 256;
/// Longest file name squashfs stores.
const MAX_NAME: u32 = 256;
/// The kernel counts "." and ".." as 3 bytes of every directory's size.
const DOT_ENTRIES_SIZE: u64 = 3;

/// Walks a directory listing entry by entry.
struct Walk<'a> {
    c: Cursor<'a>,
    /// Bytes of listing left; every header and entry consumes some, so the walk ends.
    left: u64,
    in_header: u32,
    inode_block: u32,
    base_number: u32,
}

impl Walk<'_> {
    fn next(&mut self) -> Result<Option<DirEntry>> {
        let bad = |m: String| corrupt(m);
        if self.in_header == 0 {
            if self.left == 0 {
                return Ok(None);
            }
            let count = self.c.u32()?;
            self.inode_block = self.c.u32()?;
            self.base_number = self.c.u32()?;
            if count >= MAX_HEADER_ENTRIES {
                return Err(bad(format!(
                    "header claims {} entries",
                    u64::from(count) + 1
                )));
            }
            self.in_header = count + 1;
            self.left = self.left.saturating_sub(12);
        }
        let offset = self.c.u16()?;
        let delta = self.c.u16()? as i16;
        let ty = self.c.u16()?;
        let name_len = u32::from(self.c.u16()?) + 1;
        if name_len > MAX_NAME {
            return Err(bad(format!("name of {name_len} bytes")));
        }
        let name = self.c.read_vec(name_len as usize)?;
        self.in_header -= 1;
        self.left = self.left.saturating_sub(8 + u64::from(name_len));
        if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
            return Err(bad(format!(
                "invalid name {:?}",
                String::from_utf8_lossy(&name)
            )));
        }
        let kind = FileType::from_disk(ty).ok_or_else(|| bad(format!("entry type {ty}")))?;
        if usize::from(offset) >= METADATA_SIZE {
            return Err(bad(format!("entry inode offset {offset}")));
        }
        let inode_number = u32::try_from(i64::from(self.base_number) + i64::from(delta))
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| bad("entry inode number out of range".into()))?;
        Ok(Some(DirEntry {
            name,
            inode_ref: (u64::from(self.inode_block) << 16) | u64::from(offset),
            inode_number,
            kind,
        }))
    }
}

impl Archive {
    fn dir_detail<'i>(&self, dir: &'i Inode) -> Result<(&'i Detail, u64)> {
        match &dir.detail {
            d @ Detail::Dir { .. } => Ok((d, dir.size.saturating_sub(DOT_ENTRIES_SIZE))),
            _ => Err(Error::invalid(
                std::io::ErrorKind::NotADirectory,
                format_args!("inode {:#x} is not a directory", dir.inode_ref),
            )),
        }
    }

    /// A walk over `left` listing bytes from block `block` (relative to the
    /// directory table), offset `off`.
    fn walk(&self, block: u32, off: usize, left: u64) -> Walk<'_> {
        let start = self.sb.directory_table_start;
        Walk {
            c: Cursor::new(
                &self.meta,
                &self.disk,
                "directory table",
                start.saturating_add(u64::from(block)),
                off,
                self.sb.region_end(start),
            ),
            left,
            in_header: 0,
            inode_block: 0,
            base_number: 0,
        }
    }

    /// All entries of `dir`, in on-disk (sorted) order, without "." and "..".
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        self.read_dir_inner(dir)
            .map_err(|e| e.context(format_args!("directory {:#x}", dir.inode_ref)))
    }

    fn read_dir_inner(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        let (detail, len) = self.dir_detail(dir)?;
        let Detail::Dir {
            start_block,
            offset,
            ..
        } = *detail
        else {
            return Ok(Vec::new());
        };
        let mut w = self.walk(start_block, usize::from(offset), len);
        let mut out = Vec::new();
        while let Some(e) = w.next()? {
            out.push(e);
        }
        Ok(out)
    }

    /// Finds `name` in `dir` without decoding the inode.
    pub fn lookup_entry(&self, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
        self.lookup_inner(dir, name)
            .map_err(|e| e.context(format_args!("directory {:#x}", dir.inode_ref)))
    }

    fn lookup_inner(&self, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
        let (detail, len) = self.dir_detail(dir)?;
        let Detail::Dir {
            start_block,
            offset,
            index_count,
            index_pos,
            ..
        } = *detail
        else {
            return Ok(None);
        };
        if name.is_empty() || name.len() > MAX_NAME as usize {
            return Ok(None);
        }
        let (mut block, mut skipped) = (start_block, 0u64);
        if index_count > 0 {
            // Each index entry names the first entry of a header; take the last
            // one not after `name`.
            let start = self.sb.inode_table_start;
            let mut c = Cursor::new(
                &self.meta,
                &self.disk,
                "directory index",
                index_pos.0,
                index_pos.1,
                self.sb.region_end(start),
            );
            for _ in 0..index_count {
                let index = c.u32()?;
                let idx_block = c.u32()?;
                let size = c.u32()?.saturating_add(1);
                if size > MAX_NAME {
                    return Err(corrupt(format!("index name of {size} bytes")));
                }
                let idx_name = c.read_vec(size as usize)?;
                if idx_name.as_slice() > name {
                    break;
                }
                if u64::from(index) >= len {
                    return Err(corrupt(format!(
                        "index position {index} beyond listing of {len} bytes"
                    )));
                }
                block = idx_block;
                skipped = u64::from(index);
            }
        }
        let off = ((u64::from(offset) + skipped) % METADATA_SIZE as u64) as usize;
        let mut w = self.walk(block, off, len - skipped);
        while let Some(e) = w.next()? {
            match e.name.as_slice().cmp(name) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Ok(Some(e)),
                // Entries are sorted, so `name` is not here.
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Finds `name` in `dir` and returns its inode.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<Inode>> {
        match self.lookup_entry(dir, name)? {
            Some(e) => self.inode(e.inode_ref).map(Some),
            None => Ok(None),
        }
    }
}
