//! Extended attributes: the xattr id table and the key/value table.

use super::disk::Disk;
use super::error::{corrupt, Result};
use super::inode::{Inode, NO_XATTR};
use super::metadata::{read_index, table_entry, Cursor, METADATA_SIZE};
use super::superblock::Superblock;
use super::Archive;

/// Type bit: the value is stored elsewhere, this entry holds a reference to it.
const OUT_OF_LINE: u16 = 0x100;
/// Linux limits one value to 64 KiB; larger is corrupt, not large.
const MAX_VALUE: u32 = 65536;
/// More attributes on one inode than any Linux file system allows.
const MAX_COUNT: u32 = 65536;

/// The xattr id table's header and index, read at open.
pub(crate) struct XattrTable {
    /// Start of the key/value metadata.
    kv_start: u64,
    /// End bound for key/value metadata (the id table follows it).
    kv_end: u64,
    count: u32,
    index: Vec<u64>,
}

impl XattrTable {
    pub(crate) fn open(disk: &Disk, sb: &Superblock) -> Result<Option<XattrTable>> {
        if !sb.has_xattrs() {
            return Ok(None);
        }
        let start = sb.xattr_id_table_start;
        let mut hdr = [0u8; 16];
        disk.read_exact(start, &mut hdr, &"xattr id table header")?;
        let kv_start = u64::from_le_bytes([
            hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7],
        ]);
        let count = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        if kv_start >= start {
            return Err(corrupt(format!(
                "xattr id table: key/value table start {kv_start} not before the id table at {start}"
            )));
        }
        let index = read_index(disk, "xattr id table", start + 16, u64::from(count), 16)?;
        Ok(Some(XattrTable {
            kv_start,
            kv_end: start,
            count,
            index,
        }))
    }

    fn cursor<'a>(&self, a: &'a Archive, r: u64) -> Result<Cursor<'a>> {
        let off = (r & 0xffff) as usize;
        if off >= METADATA_SIZE || r >> 48 != 0 {
            return Err(corrupt(format!("bad xattr reference {r:#x}")));
        }
        Ok(Cursor::new(
            &a.meta,
            &a.disk,
            "xattr table",
            self.kv_start.saturating_add(r >> 16),
            off,
            self.kv_end,
        ))
    }
}

fn prefix(ty: u16) -> Option<&'static [u8]> {
    Some(match ty & 0xff {
        0 => b"user.",
        1 => b"trusted.",
        2 => b"security.",
        _ => return None,
    })
}

impl Archive {
    /// All extended attributes of `inode` as (full name, value) pairs.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.xattrs_inner(inode)
            .map_err(|e| e.context(format_args!("xattrs of inode {:#x}", inode.inode_ref)))
    }

    fn xattrs_inner(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if inode.xattr == NO_XATTR {
            return Ok(Vec::new());
        }
        let Some(t) = &self.xattr else {
            return Err(corrupt(format!(
                "xattr index {} but the image has no xattr table",
                inode.xattr
            )));
        };
        if inode.xattr >= t.count {
            return Err(corrupt(format!(
                "xattr index {} beyond the {} entries",
                inode.xattr, t.count
            )));
        }
        let e: [u8; 16] = table_entry(
            &self.meta,
            &self.disk,
            "xattr id table",
            &t.index,
            u64::from(inode.xattr),
        )?;
        let kv_ref = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        let count = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        if count > MAX_COUNT {
            return Err(corrupt(format!("{count} xattrs on one inode")));
        }
        let mut c = t.cursor(self, kv_ref)?;
        let mut out = Vec::new();
        for _ in 0..count {
            let ty = c.u16()?;
            let name_len = c.u16()?;
            let pfx = prefix(ty).ok_or_else(|| corrupt(format!("unknown xattr type {ty:#x}")))?;
            let mut name = pfx.to_vec();
            name.extend(c.read_vec(usize::from(name_len))?);
            let vlen = c.u32()?;
            let value = if ty & OUT_OF_LINE != 0 {
                if vlen != 8 {
                    return Err(corrupt(format!(
                        "out-of-line xattr reference of {vlen} bytes"
                    )));
                }
                let mut vc = t.cursor(self, c.u64()?)?;
                let vlen = vc.u32()?;
                if vlen > MAX_VALUE {
                    return Err(corrupt(format!("xattr value of {vlen} bytes")));
                }
                vc.read_vec(vlen as usize)?
            } else {
                if vlen > MAX_VALUE {
                    return Err(corrupt(format!("xattr value of {vlen} bytes")));
                }
                c.read_vec(vlen as usize)?
            };
            out.push((name, value));
        }
        Ok(out)
    }
}
