//! Inodes: parsing one inode from the inode table on demand.

use super::error::{corrupt, Result};
use super::metadata::Cursor;
use super::superblock::Superblock;

/// Kind of file an inode or directory entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    Dir,
    File,
    Symlink,
    BlockDev,
    CharDev,
    Fifo,
    Socket,
}

impl FileType {
    /// Maps an on-disk type (basic 1..=7 or extended 8..=14) to a kind.
    pub(crate) fn from_disk(t: u16) -> Option<FileType> {
        Some(match t {
            1 | 8 => FileType::Dir,
            2 | 9 => FileType::File,
            3 | 10 => FileType::Symlink,
            4 | 11 => FileType::BlockDev,
            5 | 12 => FileType::CharDev,
            6 | 13 => FileType::Fifo,
            7 | 14 => FileType::Socket,
            _ => return None,
        })
    }

    /// The on-disk inode type: basic (1..=7), or extended (8..=14: with an xattr index, and
    /// for files and directories wider fields). `from_disk` reads it back.
    #[cfg(any(feature = "build", test))]
    pub(crate) fn to_disk(self, extended: bool) -> u16 {
        let basic = match self {
            FileType::Dir => 1,
            FileType::File => 2,
            FileType::Symlink => 3,
            FileType::BlockDev => 4,
            FileType::CharDev => 5,
            FileType::Fifo => 6,
            FileType::Socket => 7,
        };
        if extended {
            basic + 7
        } else {
            basic
        }
    }

    /// The `S_IF*` bits for this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Dir => libc::S_IFDIR,
            FileType::File => libc::S_IFREG,
            FileType::Symlink => libc::S_IFLNK,
            FileType::BlockDev => libc::S_IFBLK,
            FileType::CharDev => libc::S_IFCHR,
            FileType::Fifo => libc::S_IFIFO,
            FileType::Socket => libc::S_IFSOCK,
        }
    }
}

pub(crate) const NO_XATTR: u32 = u32::MAX;
pub(crate) const NO_FRAGMENT: u32 = u32::MAX;
/// Longest symlink target accepted; Linux allows 4095 bytes, this leaves room.
pub(crate) const MAX_SYMLINK: u32 = 65535;

/// Where the parts of an inode that are read later live.
#[derive(Clone, Debug)]
pub(crate) enum Detail {
    Dir {
        /// Listing position: block relative to the directory table, offset in it.
        start_block: u32,
        offset: u16,
        parent: u32,
        index_count: u16,
        /// Metadata position of the directory index (extended dirs).
        index_pos: (u64, usize),
    },
    File(FileLayout),
    Symlink {
        target_pos: (u64, usize),
    },
    Special,
}

/// Where a regular file's data lives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileLayout {
    pub(crate) blocks_start: u64,
    pub(crate) fragment: u32,
    pub(crate) frag_offset: u32,
    /// Number of entries in the block size list.
    pub(crate) block_count: u64,
    /// Metadata position of the block size list.
    pub(crate) list_pos: (u64, usize),
}

/// One inode, parsed from the inode table.
#[derive(Clone, Debug)]
pub struct Inode {
    pub inode_ref: u64,
    pub inode_number: u32,
    pub kind: FileType,
    /// Permission bits including suid/sgid/sticky, without the type bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub nlink: u32,
    /// File size, symlink target length, or directory size as the kernel reports it.
    pub size: u64,
    /// Device number in squashfs encoding (see [`Inode::device`]).
    pub rdev: u32,
    pub(crate) xattr: u32,
    pub(crate) detail: Detail,
}

impl Inode {
    /// (major, minor) of a device inode.
    pub fn device(&self) -> (u32, u32) {
        let r = self.rdev;
        ((r >> 8) & 0xfff, (r & 0xff) | ((r >> 12) & 0xfff00))
    }

    /// Full `st_mode`: type bits and permission bits.
    pub fn st_mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.mode)
    }

    /// Whether the inode has extended attributes.
    pub fn has_xattrs(&self) -> bool {
        self.xattr != NO_XATTR
    }

    /// Inode number of the parent directory, for directories (the root's
    /// parent is a number one past the last inode, as mksquashfs writes it).
    pub fn parent_inode_number(&self) -> Option<u32> {
        match self.detail {
            Detail::Dir { parent, .. } => Some(parent),
            _ => None,
        }
    }
}

/// Parses the inode the cursor points at; `ids` resolves uid/gid indices.
pub(crate) fn parse(
    c: &mut Cursor<'_>,
    inode_ref: u64,
    sb: &Superblock,
    ids: &[u32],
) -> Result<Inode> {
    let bad = |m: String| corrupt(m);
    let ty = c.u16()?;
    let mode = c.u16()? & 0o7777;
    let (uid_idx, gid_idx) = (c.u16()?, c.u16()?);
    let mtime = c.u32()?;
    let inode_number = c.u32()?;
    let kind = FileType::from_disk(ty).ok_or_else(|| bad(format!("unknown type {ty}")))?;
    let id = |i: u16| {
        ids.get(usize::from(i))
            .copied()
            .ok_or_else(|| bad(format!("id index {i} beyond the id table")))
    };
    let (uid, gid) = (id(uid_idx)?, id(gid_idx)?);
    if inode_number == 0 || inode_number > sb.inode_count {
        return Err(bad(format!("inode number {inode_number} out of range")));
    }
    let extended = ty >= 8;
    let mut ino = Inode {
        inode_ref,
        inode_number,
        kind,
        mode,
        uid,
        gid,
        mtime,
        nlink: 1,
        size: 0,
        rdev: 0,
        xattr: NO_XATTR,
        detail: Detail::Special,
    };
    match (kind, extended) {
        (FileType::Dir, false) => {
            let start_block = c.u32()?;
            ino.nlink = c.u32()?;
            ino.size = u64::from(c.u16()?);
            let offset = c.u16()?;
            let parent = c.u32()?;
            ino.detail = Detail::Dir {
                start_block,
                offset,
                parent,
                index_count: 0,
                index_pos: c.position(),
            };
        }
        (FileType::Dir, true) => {
            ino.nlink = c.u32()?;
            ino.size = u64::from(c.u32()?);
            let start_block = c.u32()?;
            let parent = c.u32()?;
            let index_count = c.u16()?;
            let offset = c.u16()?;
            ino.xattr = c.u32()?;
            ino.detail = Detail::Dir {
                start_block,
                offset,
                parent,
                index_count,
                index_pos: c.position(),
            };
        }
        (FileType::File, _) => {
            let (blocks_start, fragment, frag_offset);
            if extended {
                blocks_start = c.u64()?;
                ino.size = c.u64()?;
                let _sparse_bytes = c.u64()?;
                ino.nlink = c.u32()?;
                fragment = c.u32()?;
                frag_offset = c.u32()?;
                ino.xattr = c.u32()?;
            } else {
                blocks_start = u64::from(c.u32()?);
                fragment = c.u32()?;
                frag_offset = c.u32()?;
                ino.size = u64::from(c.u32()?);
            }
            let bs = u64::from(sb.block_size);
            let block_count = if fragment == NO_FRAGMENT {
                ino.size.div_ceil(bs)
            } else {
                if fragment >= sb.fragment_count {
                    return Err(bad(format!(
                        "fragment {fragment} beyond the {} fragments",
                        sb.fragment_count
                    )));
                }
                if frag_offset >= sb.block_size {
                    return Err(bad(format!(
                        "fragment offset {frag_offset} beyond block size"
                    )));
                }
                ino.size / bs
            };
            ino.detail = Detail::File(FileLayout {
                blocks_start,
                fragment,
                frag_offset,
                block_count,
                list_pos: c.position(),
            });
        }
        (FileType::Symlink, _) => {
            ino.nlink = c.u32()?;
            let len = c.u32()?;
            if len > MAX_SYMLINK {
                return Err(bad(format!("symlink target length {len} too long")));
            }
            ino.size = u64::from(len);
            ino.detail = Detail::Symlink {
                target_pos: c.position(),
            };
            if extended {
                c.skip(u64::from(len))?;
                ino.xattr = c.u32()?;
            }
        }
        (FileType::BlockDev | FileType::CharDev, _) => {
            ino.nlink = c.u32()?;
            ino.rdev = c.u32()?;
            if extended {
                ino.xattr = c.u32()?;
            }
        }
        (FileType::Fifo | FileType::Socket, _) => {
            ino.nlink = c.u32()?;
            if extended {
                ino.xattr = c.u32()?;
            }
        }
    }
    Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_types_round_trip() {
        for t in 1..=14u16 {
            let k = FileType::from_disk(t).unwrap();
            assert_eq!(k.to_disk(t >= 8), t);
        }
        assert!(FileType::from_disk(0).is_none() && FileType::from_disk(15).is_none());
    }

    #[test]
    fn device_numbers_decode() {
        let mut i = Inode {
            inode_ref: 0,
            inode_number: 1,
            kind: FileType::CharDev,
            mode: 0o666,
            uid: 0,
            gid: 0,
            mtime: 0,
            nlink: 1,
            size: 0,
            rdev: (1 << 8) | 3,
            xattr: NO_XATTR,
            detail: Detail::Special,
        };
        assert_eq!(i.device(), (1, 3));
        // major 259, minor 0x12345 in the kernel's "new" encoding.
        i.rdev = (0x45) | (259 << 8) | (0x123 << 12 << 8);
        assert_eq!(i.device(), (259, 0x12345));
        assert_eq!(i.st_mode(), libc::S_IFCHR | 0o666);
    }
}
