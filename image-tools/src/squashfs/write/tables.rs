//! The inode and directory tables and the small tables after them (ids,
//! xattrs), built in memory once the data positions are known.

use std::collections::HashMap;
use std::io;

use super::compress::Encoder;
use super::data::{Data, FileLayout};
use super::meta::{table_blocks, MetaWriter, METADATA_SIZE};
use super::scan::{Kind, Tree};
use crate::squashfs::error::{Error, Result};
use crate::squashfs::FileType;

const NO_XATTR: u32 = u32::MAX;
const NO_FRAGMENT: u32 = u32::MAX;
/// Entries one directory header may cover.
const MAX_HEADER_ENTRIES: u32 = 256;
/// Xattr values this long or longer are stored once and referenced after.
const XATTR_SHARE_MIN: usize = 64;

fn meta_err(e: io::Error) -> Error {
    Error::io("compressing metadata", e)
}

fn too_many(what: &str) -> Error {
    Error::invalid(io::ErrorKind::InvalidInput, format_args!("too many {what}"))
}

/// The uid/gid table, in order of first use.
#[derive(Default)]
pub(crate) struct Ids {
    pub(crate) list: Vec<u32>,
    map: HashMap<u32, u16>,
}

impl Ids {
    fn index(&mut self, id: u32) -> Result<u16> {
        if let Some(&i) = self.map.get(&id) {
            return Ok(i);
        }
        // The superblock counts ids in 16 bits.
        let i = u16::try_from(self.list.len())
            .ok()
            .filter(|&i| i < u16::MAX)
            .ok_or_else(|| too_many("distinct uids and gids (squashfs stores 65535)"))?;
        self.list.push(id);
        self.map.insert(id, i);
        Ok(i)
    }
}

/// One inode's xattrs: (full name, value), sorted.
type XattrSet<'a> = &'a [(Vec<u8>, Vec<u8>)];

/// Distinct xattr sets, in order of first use.
#[derive(Default)]
pub(crate) struct Xattrs<'a> {
    sets: Vec<XattrSet<'a>>,
    map: HashMap<XattrSet<'a>, u32>,
}

impl<'a> Xattrs<'a> {
    fn id(&mut self, set: XattrSet<'a>) -> u32 {
        if set.is_empty() {
            return NO_XATTR;
        }
        *self.map.entry(set).or_insert_with(|| {
            self.sets.push(set);
            self.sets.len() as u32 - 1
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The key/value table, the id table's blocks, its header and index, to
    /// be written at `at`; returns the bytes and the header's position.
    pub(crate) fn build(&self, enc: &mut Encoder, at: u64) -> Result<(Vec<u8>, u64)> {
        let mut kv = MetaWriter::new();
        let mut ids = Vec::with_capacity(self.sets.len() * 16);
        let mut shared: HashMap<&[u8], u64> = HashMap::new();
        for set in &self.sets {
            let start = kv.pos();
            let set_ref = kv.reference(start);
            for (name, value) in set.iter() {
                let (ty, suffix) = split_prefix(name);
                let value_len = u32::try_from(value.len()).map_err(|_| too_many("xattr bytes"))?;
                let reused = (value.len() >= XATTR_SHARE_MIN)
                    .then(|| shared.get(value.as_slice()).copied())
                    .flatten();
                let mut key = Vec::with_capacity(4 + suffix.len());
                key.extend((ty | if reused.is_some() { 0x100 } else { 0 }).to_le_bytes());
                key.extend((suffix.len() as u16).to_le_bytes());
                key.extend(suffix);
                kv.write(enc, &key).map_err(meta_err)?;
                match reused {
                    Some(r) => {
                        let mut v = 8u32.to_le_bytes().to_vec();
                        v.extend(r.to_le_bytes());
                        kv.write(enc, &v).map_err(meta_err)?;
                    }
                    None => {
                        if value.len() >= XATTR_SHARE_MIN {
                            shared.insert(value, kv.reference(kv.pos()));
                        }
                        kv.write(enc, &value_len.to_le_bytes()).map_err(meta_err)?;
                        kv.write(enc, value).map_err(meta_err)?;
                    }
                }
            }
            let size = u32::try_from(kv.pos() - start).map_err(|_| too_many("xattr bytes"))?;
            ids.extend(set_ref.to_le_bytes());
            ids.extend((set.len() as u32).to_le_bytes());
            ids.extend(size.to_le_bytes());
        }
        let (mut out, _) = kv.finish(enc).map_err(meta_err)?;
        let (blocks, index) = table_blocks(enc, &ids, at + out.len() as u64).map_err(meta_err)?;
        out.extend(blocks);
        let header_pos = at + out.len() as u64;
        out.extend(at.to_le_bytes());
        out.extend((self.sets.len() as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        for p in index {
            out.extend(p.to_le_bytes());
        }
        Ok((out, header_pos))
    }
}

/// Prefix code and the rest of an xattr name (scan keeps only storable names).
fn split_prefix(name: &[u8]) -> (u16, &[u8]) {
    for (ty, p) in [(0u16, &b"user."[..]), (1, b"trusted."), (2, b"security.")] {
        if let Some(rest) = name.strip_prefix(p) {
            return (ty, rest);
        }
    }
    (0, name)
}

/// The on-disk inode type of a kind, basic or extended.
fn disk_type(k: &Kind, extended: bool) -> u16 {
    let t = match k {
        Kind::Dir => FileType::Dir,
        Kind::File => FileType::File,
        Kind::Symlink(_) => FileType::Symlink,
        Kind::BlockDev(_) => FileType::BlockDev,
        Kind::CharDev(_) => FileType::CharDev,
        Kind::Fifo => FileType::Fifo,
        Kind::Socket => FileType::Socket,
    };
    t.to_disk(extended)
}

/// The finished inode and directory tables.
pub(crate) struct Tables<'a> {
    pub(crate) inode_table: Vec<u8>,
    pub(crate) dir_table: Vec<u8>,
    pub(crate) root_ref: u64,
    /// Inode reference by inode number - 1 (the export table).
    pub(crate) refs_by_number: Vec<u64>,
    pub(crate) ids: Ids,
    pub(crate) xattrs: Xattrs<'a>,
}

/// Entries in post-order: every directory after everything below it, so
/// that its listing can name the inodes of its entries.
fn post_order(tree: &Tree) -> Vec<usize> {
    let mut out = Vec::with_capacity(tree.entries.len());
    let mut stack = vec![(0usize, 0usize)];
    while let Some(top) = stack.last_mut() {
        let (e, i) = *top;
        if let Some(&c) = tree.entries[e].children.get(i) {
            top.1 += 1;
            stack.push((c, 0));
        } else {
            out.push(e);
            stack.pop();
        }
    }
    out
}

pub(crate) fn build<'a>(
    tree: &'a Tree,
    data: &Data,
    block_size: u32,
    enc: &mut Encoder,
) -> Result<Tables<'a>> {
    let order = post_order(tree);
    // Inode numbers in the order inodes are written; the root comes last.
    let mut numbers = vec![0u32; tree.inodes.len()];
    let mut next = 1u32;
    for &e in &order {
        let i = tree.entries[e].inode;
        if numbers[i] == 0 {
            numbers[i] = next;
            next = next.checked_add(1).ok_or_else(|| too_many("inodes"))?;
        }
    }
    let inode_count = next - 1;
    let mut refs = vec![u64::MAX; tree.inodes.len()];
    let mut refs_by_number = vec![0u64; inode_count as usize];
    let mut inodes = MetaWriter::new();
    let mut dirs = MetaWriter::new();
    let mut ids = Ids::default();
    let mut xattrs = Xattrs::default();
    let mut buf = Vec::with_capacity(256);
    // Parent inode number of each directory entry; the root's is one past
    // the last inode, as mksquashfs writes it.
    let mut parent_number = vec![inode_count + 1; tree.entries.len()];
    for (e, entry) in tree.entries.iter().enumerate() {
        for &c in &entry.children {
            parent_number[c] = numbers[tree.entries[e].inode];
        }
    }
    for &e in &order {
        let entry = &tree.entries[e];
        let i = entry.inode;
        if refs[i] != u64::MAX {
            continue; // another hard link already wrote it
        }
        let info = &tree.inodes[i];
        let xattr = xattrs.id(&info.xattrs);
        let uid = ids.index(info.uid)?;
        let gid = ids.index(info.gid)?;
        let header = |buf: &mut Vec<u8>, ty: u16| {
            buf.extend(ty.to_le_bytes());
            buf.extend(info.perm.to_le_bytes());
            buf.extend(uid.to_le_bytes());
            buf.extend(gid.to_le_bytes());
            buf.extend(info.mtime.to_le_bytes());
            buf.extend(numbers[i].to_le_bytes());
        };
        buf.clear();
        let ext = xattr != NO_XATTR;
        match &info.kind {
            Kind::Dir => {
                let children: Vec<Child> = entry
                    .children
                    .iter()
                    .map(|&c| {
                        let ci = tree.entries[c].inode;
                        Child {
                            name: &tree.entries[c].name,
                            inode_ref: refs[ci],
                            number: numbers[ci],
                            ty: disk_type(&tree.inodes[ci].kind, false),
                        }
                    })
                    .collect();
                let subdirs = children
                    .iter()
                    .filter(|c| c.ty == FileType::Dir.to_disk(false))
                    .count() as u32;
                let (listing, index) = listing(&children);
                let at = dirs.pos();
                dirs.write(enc, &listing).map_err(meta_err)?;
                let (block, offset) = dirs.locate(at);
                let block = u32::try_from(block).map_err(|_| too_many("directories"))?;
                let size = listing.len() as u64 + 3;
                let nlink = 2 + subdirs;
                let parent = parent_number[e];
                if !ext && index.is_empty() && size <= 0xffff {
                    header(&mut buf, disk_type(&info.kind, false));
                    buf.extend(block.to_le_bytes());
                    buf.extend(nlink.to_le_bytes());
                    buf.extend((size as u16).to_le_bytes());
                    buf.extend(offset.to_le_bytes());
                    buf.extend(parent.to_le_bytes());
                } else {
                    let size = u32::try_from(size).map_err(|_| too_many("directory entries"))?;
                    let count =
                        u16::try_from(index.len()).map_err(|_| too_many("directory entries"))?;
                    header(&mut buf, disk_type(&info.kind, true));
                    buf.extend(nlink.to_le_bytes());
                    buf.extend(size.to_le_bytes());
                    buf.extend(block.to_le_bytes());
                    buf.extend(parent.to_le_bytes());
                    buf.extend(count.to_le_bytes());
                    buf.extend(offset.to_le_bytes());
                    buf.extend(xattr.to_le_bytes());
                    for (pos, name) in index {
                        let (hb, _) = dirs.locate(at + u64::from(pos));
                        buf.extend(pos.to_le_bytes());
                        buf.extend((hb as u32).to_le_bytes());
                        buf.extend((name.len() as u32 - 1).to_le_bytes());
                        buf.extend(name);
                    }
                }
            }
            Kind::File => {
                let l: &FileLayout = &data.layouts[i];
                let (frag, frag_off) = l.fragment.unwrap_or((NO_FRAGMENT, 0));
                if !ext
                    && info.links == 1
                    && info.size <= u64::from(u32::MAX)
                    && l.blocks_start <= u64::from(u32::MAX)
                    && l.sparse == 0
                {
                    header(&mut buf, disk_type(&info.kind, false));
                    buf.extend((l.blocks_start as u32).to_le_bytes());
                    buf.extend(frag.to_le_bytes());
                    buf.extend(frag_off.to_le_bytes());
                    buf.extend((info.size as u32).to_le_bytes());
                } else {
                    header(&mut buf, disk_type(&info.kind, true));
                    buf.extend(l.blocks_start.to_le_bytes());
                    buf.extend(info.size.to_le_bytes());
                    buf.extend(l.sparse.to_le_bytes());
                    buf.extend(info.links.to_le_bytes());
                    buf.extend(frag.to_le_bytes());
                    buf.extend(frag_off.to_le_bytes());
                    buf.extend(xattr.to_le_bytes());
                }
                debug_assert_eq!(
                    l.sizes.len() as u64,
                    if l.fragment.is_some() {
                        info.size / u64::from(block_size)
                    } else {
                        info.size.div_ceil(u64::from(block_size))
                    }
                );
                for s in &l.sizes {
                    buf.extend(s.to_le_bytes());
                }
            }
            Kind::Symlink(target) => {
                header(&mut buf, disk_type(&info.kind, ext));
                buf.extend(info.links.to_le_bytes());
                buf.extend((target.len() as u32).to_le_bytes());
                buf.extend(target);
                if ext {
                    buf.extend(xattr.to_le_bytes());
                }
            }
            Kind::BlockDev(dev) | Kind::CharDev(dev) => {
                header(&mut buf, disk_type(&info.kind, ext));
                buf.extend(info.links.to_le_bytes());
                buf.extend(dev.to_le_bytes());
                if ext {
                    buf.extend(xattr.to_le_bytes());
                }
            }
            Kind::Fifo | Kind::Socket => {
                header(&mut buf, disk_type(&info.kind, ext));
                buf.extend(info.links.to_le_bytes());
                if ext {
                    buf.extend(xattr.to_le_bytes());
                }
            }
        }
        let r = inodes.reference(inodes.pos());
        inodes.write(enc, &buf).map_err(meta_err)?;
        refs[i] = r;
        refs_by_number[numbers[i] as usize - 1] = r;
    }
    let root_ref = refs[tree.entries[0].inode];
    let (inode_table, _) = inodes.finish(enc).map_err(meta_err)?;
    let (dir_table, _) = dirs.finish(enc).map_err(meta_err)?;
    Ok(Tables {
        inode_table,
        dir_table,
        root_ref,
        refs_by_number,
        ids,
        xattrs,
    })
}

struct Child<'a> {
    name: &'a [u8],
    inode_ref: u64,
    number: u32,
    ty: u16,
}

/// A directory listing and its index: (position of a header in the
/// listing, name of its first entry) wherever the listing would otherwise run
/// more than one metadata block past the previous index point, so that a
/// lookup reads at most two blocks.
fn listing<'a>(children: &[Child<'a>]) -> (Vec<u8>, Vec<(u32, &'a [u8])>) {
    let mut buf = Vec::new();
    let mut index = Vec::new();
    let mut header_at: Option<usize> = None;
    let (mut count, mut block, mut base) = (0u32, 0u32, 0u32);
    let mut index_point = 0usize;
    for c in children {
        let cblock = (c.inode_ref >> 16) as u32;
        let entry_len = 8 + c.name.len();
        let delta = i64::from(c.number) - i64::from(base);
        let crosses = buf.len() + entry_len - index_point > METADATA_SIZE;
        if header_at.is_none()
            || count == MAX_HEADER_ENTRIES
            || cblock != block
            || !(-32768..=32767).contains(&delta)
            || crosses
        {
            if let Some(h) = header_at {
                buf[h..h + 4].copy_from_slice(&(count - 1).to_le_bytes());
                if crosses {
                    index.push((buf.len() as u32, c.name));
                    index_point = buf.len();
                }
            }
            header_at = Some(buf.len());
            buf.extend(0u32.to_le_bytes());
            buf.extend(cblock.to_le_bytes());
            buf.extend(c.number.to_le_bytes());
            (count, block, base) = (0, cblock, c.number);
        }
        buf.extend(((c.inode_ref & 0xffff) as u16).to_le_bytes());
        buf.extend(((i64::from(c.number) - i64::from(base)) as i16).to_le_bytes());
        buf.extend(c.ty.to_le_bytes());
        buf.extend((c.name.len() as u16 - 1).to_le_bytes());
        buf.extend(c.name);
        count += 1;
    }
    if let Some(h) = header_at {
        buf[h..h + 4].copy_from_slice(&(count - 1).to_le_bytes());
    }
    (buf, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(buf: &[u8]) -> Vec<(u32, u32, u32)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let word = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
            let (count, block, base) = (word(at) + 1, word(at + 4), word(at + 8));
            out.push((count, block, base));
            at += 12;
            for _ in 0..count {
                let name_len = u16::from_le_bytes([buf[at + 6], buf[at + 7]]) as usize + 1;
                at += 8 + name_len;
            }
        }
        out
    }

    #[test]
    fn listing_starts_headers_where_the_format_needs_them() {
        let names: Vec<String> = (0..600).map(|i| format!("n{i:04}")).collect();
        let child = |i: usize, block: u64, number: u32| Child {
            name: names[i].as_bytes(),
            inode_ref: (block << 16) | (i as u64 * 20 % 8192),
            number,
            ty: 2,
        };
        // 600 entries in one inode block: at most 256 per header.
        let kids: Vec<Child> = (0..600).map(|i| child(i, 0, 10 + i as u32)).collect();
        let (buf, index) = listing(&kids);
        assert_eq!(
            headers(&buf),
            vec![(256, 0, 10), (256, 0, 266), (88, 0, 522)]
        );
        assert!(index.is_empty());
        // A new inode block, and an inode number too far from the base.
        let kids = vec![
            child(0, 0, 5),
            child(1, 0, 6),
            child(2, 300, 7),
            child(3, 300, 40_000),
        ];
        let (buf, _) = listing(&kids);
        assert_eq!(
            headers(&buf),
            vec![(2, 0, 5), (1, 300, 7), (1, 300, 40_000)]
        );
    }

    #[test]
    fn long_listings_get_an_index_entry_per_metadata_block() {
        let names: Vec<String> = (0..3000).map(|i| format!("{i:0100}")).collect();
        let kids: Vec<Child> = (0..3000)
            .map(|i| Child {
                name: names[i].as_bytes(),
                inode_ref: 0,
                number: 1 + i as u32,
                ty: 2,
            })
            .collect();
        let (buf, index) = listing(&kids);
        // 108 bytes per entry: about 75 entries per 8 KiB.
        assert!((buf.len() / METADATA_SIZE..=buf.len() / METADATA_SIZE + 1).contains(&index.len()));
        let mut prev = 0;
        for (pos, name) in &index {
            let pos = *pos as usize;
            assert!(pos - prev <= METADATA_SIZE);
            // Each index entry points at a header whose first entry is `name`.
            assert_eq!(&buf[pos + 12 + 8..pos + 12 + 8 + name.len()], *name);
            prev = pos;
        }
    }
}
