//! The 96-byte superblock at the start of every SquashFS 4.0 image.

use super::error::{corrupt, Error, Result};

/// Size of the on-disk superblock.
pub const SUPERBLOCK_SIZE: usize = 96;
/// Table start value meaning "this table is absent".
pub(crate) const ABSENT: u64 = u64::MAX;

/// Superblock flag bits (`Superblock::flags`).
pub mod flags {
    pub const UNCOMPRESSED_INODES: u16 = 0x0001;
    pub const UNCOMPRESSED_DATA: u16 = 0x0002;
    pub const UNCOMPRESSED_FRAGMENTS: u16 = 0x0008;
    pub const NO_FRAGMENTS: u16 = 0x0010;
    pub const ALWAYS_FRAGMENTS: u16 = 0x0020;
    pub const DUPLICATES: u16 = 0x0040;
    pub const EXPORTABLE: u16 = 0x0080;
    pub const UNCOMPRESSED_XATTRS: u16 = 0x0100;
    pub const NO_XATTRS: u16 = 0x0200;
    /// Compressor options follow the superblock as one metadata block. All
    /// decoders here work without them, and every table is located by an
    /// absolute position, so they are never read.
    pub const COMPRESSOR_OPTIONS: u16 = 0x0400;
    pub const UNCOMPRESSED_IDS: u16 = 0x0800;
}

/// Compression algorithm of all metadata and data blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compressor {
    Gzip,
    Lzma,
    Lzo,
    Xz,
    Lz4,
    Zstd,
}

impl Compressor {
    /// The id the superblock stores.
    pub fn id(&self) -> u16 {
        match self {
            Compressor::Gzip => 1,
            Compressor::Lzma => 2,
            Compressor::Lzo => 3,
            Compressor::Xz => 4,
            Compressor::Lz4 => 5,
            Compressor::Zstd => 6,
        }
    }

    fn from_id(id: u16) -> Result<Compressor> {
        Ok(match id {
            1 => Compressor::Gzip,
            2 => Compressor::Lzma,
            3 => Compressor::Lzo,
            4 => Compressor::Xz,
            5 => Compressor::Lz4,
            6 => Compressor::Zstd,
            _ => return Err(Error::Unsupported(format!("unknown compressor id {id}"))),
        })
    }
}

/// Parsed superblock. Table positions are relative to the start of the image.
#[derive(Clone, Debug)]
pub struct Superblock {
    pub inode_count: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub compressor: Compressor,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub block_log: u16,
    pub id_table_start: u64,
    /// `u64::MAX` when absent.
    pub xattr_id_table_start: u64,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    /// `u64::MAX` when absent.
    pub fragment_table_start: u64,
    /// `u64::MAX` when absent (image built with `-no-exports`).
    pub export_table_start: u64,
}

/// True when `first_bytes` start with the SquashFS magic "hsqs".
pub fn is_squashfs(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"hsqs")
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Superblock {
    /// Parses and sanity-checks a superblock; `b` must hold at least 96 bytes.
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        if b.len() < SUPERBLOCK_SIZE {
            return Err(corrupt("superblock: image shorter than 96 bytes"));
        }
        if !is_squashfs(b) {
            return Err(corrupt("superblock: bad magic (not a squashfs image)"));
        }
        let (major, minor) = (u16_at(b, 28), u16_at(b, 30));
        if (major, minor) != (4, 0) {
            return Err(Error::Unsupported(format!(
                "version {major}.{minor} (only 4.0 is supported)"
            )));
        }
        let sb = Superblock {
            inode_count: u32_at(b, 4),
            mkfs_time: u32_at(b, 8),
            block_size: u32_at(b, 12),
            fragment_count: u32_at(b, 16),
            compressor: Compressor::from_id(u16_at(b, 20))?,
            block_log: u16_at(b, 22),
            flags: u16_at(b, 24),
            id_count: u16_at(b, 26),
            root_inode: u64_at(b, 32),
            bytes_used: u64_at(b, 40),
            id_table_start: u64_at(b, 48),
            xattr_id_table_start: u64_at(b, 56),
            inode_table_start: u64_at(b, 64),
            directory_table_start: u64_at(b, 72),
            fragment_table_start: u64_at(b, 80),
            export_table_start: u64_at(b, 88),
        };
        sb.validate()?;
        Ok(sb)
    }

    fn validate(&self) -> Result<()> {
        let bs = self.block_size;
        if !(4096..=1 << 20).contains(&bs) || !bs.is_power_of_two() {
            return Err(corrupt(format!("superblock: bad block size {bs}")));
        }
        if u32::from(self.block_log) != bs.trailing_zeros() {
            return Err(corrupt(format!(
                "superblock: block_log {} does not match block size {bs}",
                self.block_log
            )));
        }
        let used = self.bytes_used;
        if used < SUPERBLOCK_SIZE as u64 {
            return Err(corrupt(format!("superblock: bytes_used {used} too small")));
        }
        let must = [
            ("inode table", self.inode_table_start),
            ("directory table", self.directory_table_start),
            ("id table", self.id_table_start),
        ];
        let optional = [
            ("xattr id table", self.xattr_id_table_start),
            ("fragment table", self.fragment_table_start),
            ("export table", self.export_table_start),
        ];
        for (name, start) in must
            .iter()
            .chain(optional.iter().filter(|(_, s)| *s != ABSENT))
        {
            if *start < SUPERBLOCK_SIZE as u64 || *start >= used {
                return Err(corrupt(format!(
                    "superblock: {name} start {start} outside image of {used} bytes"
                )));
            }
        }
        if self.inode_table_start >= self.directory_table_start {
            return Err(corrupt(
                "superblock: inode table does not precede directory table",
            ));
        }
        if self.id_count == 0 {
            return Err(corrupt("superblock: id table is empty"));
        }
        Ok(())
    }

    pub fn has_fragment_table(&self) -> bool {
        self.fragment_table_start != ABSENT && self.fragment_count > 0
    }
    pub fn has_export_table(&self) -> bool {
        self.export_table_start != ABSENT
    }
    pub fn has_xattrs(&self) -> bool {
        self.xattr_id_table_start != ABSENT
    }

    /// The smallest table start after `start` (or the image end): an upper
    /// bound for metadata blocks of the table beginning at `start`, since
    /// tables never overlap.
    pub(crate) fn region_end(&self, start: u64) -> u64 {
        [
            self.id_table_start,
            self.xattr_id_table_start,
            self.inode_table_start,
            self.directory_table_start,
            self.fragment_table_start,
            self.export_table_start,
            self.bytes_used,
        ]
        .into_iter()
        .filter(|&s| s > start && s != ABSENT)
        .min()
        .unwrap_or(self.bytes_used)
        .min(self.bytes_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 96];
        b[0..4].copy_from_slice(b"hsqs");
        b[4..8].copy_from_slice(&10u32.to_le_bytes());
        b[12..16].copy_from_slice(&131072u32.to_le_bytes());
        b[20..22].copy_from_slice(&1u16.to_le_bytes());
        b[22..24].copy_from_slice(&17u16.to_le_bytes());
        b[26..28].copy_from_slice(&1u16.to_le_bytes());
        b[28..30].copy_from_slice(&4u16.to_le_bytes());
        b[40..48].copy_from_slice(&1000u64.to_le_bytes());
        b[48..56].copy_from_slice(&900u64.to_le_bytes());
        b[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        b[64..72].copy_from_slice(&200u64.to_le_bytes());
        b[72..80].copy_from_slice(&300u64.to_le_bytes());
        b[80..88].copy_from_slice(&u64::MAX.to_le_bytes());
        b[88..96].copy_from_slice(&u64::MAX.to_le_bytes());
        b
    }

    #[test]
    fn parses_valid() {
        let sb = Superblock::parse(&sample()).unwrap();
        assert_eq!(sb.block_size, 131072);
        assert_eq!(sb.compressor, Compressor::Gzip);
        assert!(!sb.has_xattrs() && !sb.has_export_table() && !sb.has_fragment_table());
        assert_eq!(sb.region_end(200), 300);
        assert_eq!(sb.region_end(300), 900);
    }

    #[test]
    fn rejects_version_and_compressor() {
        let mut b = sample();
        b[28] = 3;
        assert!(matches!(Superblock::parse(&b), Err(Error::Unsupported(_))));
        let mut b = sample();
        b[20] = 9;
        assert!(matches!(Superblock::parse(&b), Err(Error::Unsupported(_))));
        let mut b = sample();
        b[0] = b'x';
        assert!(matches!(Superblock::parse(&b), Err(Error::Corrupt(_))));
        let mut b = sample();
        b[22] = 16;
        assert!(matches!(Superblock::parse(&b), Err(Error::Corrupt(_))));
        assert!(Superblock::parse(&b[..50]).is_err());
    }
}
