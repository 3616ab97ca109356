//! Lazy SquashFS 4.0 reader: opens by reading only the superblock and small
//! tables, then decodes inodes, directories and data on demand.
//!
//! An [`Archive`] is `Send + Sync`; all reads are positional on one shared
//! file, and decompressed blocks go through bounded caches, so many threads
//! (FUSE workers) can use one archive at once.

mod cache;
mod compression;
mod dir;
mod disk;
mod error;
mod file;
mod inode;
mod metadata;
mod superblock;
#[cfg(feature = "build")]
pub mod write;
mod xattr;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub use dir::DirEntry;
pub use error::{Error, Result};
pub use inode::{FileType, Inode};
pub use superblock::{flags, is_squashfs, Compressor, Superblock, SUPERBLOCK_SIZE};

use cache::Cache;
use disk::Disk;
use error::{corrupt, LOOP_MSG};
use inode::Detail;
use metadata::{read_index, table_entry, Cursor, Metadata, METADATA_SIZE};
use xattr::XattrTable;

/// Symlinks followed in one [`Archive::resolve`], as Linux's MAXSYMLINKS.
pub const MAX_SYMLINK_HOPS: u32 = 40;
/// Largest file [`Archive::read_file`] reads into memory.
pub const READ_FILE_MAX: u64 = 1 << 30;

/// Decompressed blocks kept beyond one process (the launcher's per-user block store), for
/// [`Archive::warm_block`]. A block is known by what decompression depends on, its
/// compressor and its stored bytes; the store must give back only what `save` was given for
/// exactly that key (comparing the stored bytes, not a hash an image could aim at), and may
/// forget anything. Errors are misses: the block is then decompressed.
pub trait BlockStore: Send + Sync {
    fn load(&self, key: &BlockKey<'_>) -> Option<BlockBytes>;
    fn save(&self, key: &BlockKey<'_>, data: &[u8]);
}

/// A decompressed data or fragment block: decompressed here, or lent by a [`BlockStore`]
/// (the launcher maps its copy instead of reading it into new memory).
pub enum BlockBytes {
    Owned(Vec<u8>),
    Lent(Box<dyn LentBytes>),
}

/// Bytes a [`BlockStore`] lends for as long as the block is kept. The store vouches for them
/// when it lends them; a store that lends a mapping of a file the user can write (the
/// launcher's) serves what the file holds from then on.
pub trait LentBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl std::ops::Deref for BlockBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlockBytes::Owned(v) => v,
            BlockBytes::Lent(l) => l.bytes(),
        }
    }
}

/// What a stored block's contents depend on.
pub struct BlockKey<'a> {
    /// [`Compressor::id`].
    pub compressor: u16,
    /// The block as the image stores it (compressed).
    pub stored: &'a [u8],
}

/// Cache sizes of an [`Archive`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Decompressed metadata blocks (inodes, directories, tables).
    pub metadata_cache_bytes: usize,
    /// Decompressed data and fragment blocks.
    pub data_cache_bytes: usize,
    /// Positions of the data blocks of recently read big files.
    pub block_list_cache_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            metadata_cache_bytes: 8 << 20,
            data_cache_bytes: 64 << 20,
            block_list_cache_bytes: 8 << 20,
        }
    }
}

/// An open SquashFS image.
pub struct Archive {
    disk: Disk,
    sb: Superblock,
    /// The uid/gid table, small enough to keep decoded.
    ids: Vec<u32>,
    meta: Metadata,
    frag_index: Vec<u64>,
    export_index: Vec<u64>,
    xattr: Option<XattrTable>,
    /// Keyed by (position, stored size) so that a bad image reusing a position
    /// with another size cannot alias a cached block.
    data_cache: Cache<(u64, u32), BlockBytes>,
    list_cache: Cache<u64, file::BlockMarks>,
}

impl Archive {
    /// Opens the image that starts `offset` bytes into `file`.
    pub fn open(file: File, offset: u64) -> Result<Archive> {
        Self::open_with(file, offset, Options::default())
    }

    /// Opens the image at `path`; errors name the path.
    pub fn open_path(path: &Path, offset: u64) -> Result<Archive> {
        let file = crate::image_file::open(path)
            .map_err(|e| Error::io(format_args!("opening {}", path.display()), e))?;
        Self::open(file, offset).map_err(|e| e.context(path.display()))
    }

    /// [`Archive::open`] with explicit cache sizes.
    pub fn open_with(file: File, offset: u64, opts: Options) -> Result<Archive> {
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        file.read_exact_at(&mut raw, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt(format!(
                    "superblock: fewer than {SUPERBLOCK_SIZE} bytes at offset {offset}"
                ))
            } else {
                Error::io(format_args!("reading superblock at offset {offset}"), e)
            }
        })?;
        let sb = Superblock::parse(&raw)?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("reading image file size", e))?
            .len();
        if offset.saturating_add(sb.bytes_used) > file_len {
            return Err(corrupt(format!(
                "truncated: superblock says {} bytes, file has {} after offset {offset}",
                sb.bytes_used,
                file_len.saturating_sub(offset)
            )));
        }
        let disk = Disk::new(file, offset, sb.bytes_used);
        let meta = Metadata::new(sb.compressor.clone(), opts.metadata_cache_bytes);

        let id_index = read_index(
            &disk,
            "id table",
            sb.id_table_start,
            u64::from(sb.id_count),
            4,
        )?;
        let mut ids = Vec::with_capacity(usize::from(sb.id_count));
        for &pos in &id_index {
            let n = (usize::from(sb.id_count) - ids.len()).min(METADATA_SIZE / 4);
            let mut c = Cursor::new(&meta, &disk, "id table", pos, 0, disk.len());
            for _ in 0..n {
                ids.push(c.u32()?);
            }
        }
        let frag_index = if sb.has_fragment_table() {
            read_index(
                &disk,
                "fragment table",
                sb.fragment_table_start,
                u64::from(sb.fragment_count),
                16,
            )?
        } else {
            Vec::new()
        };
        let export_index = if sb.has_export_table() {
            read_index(
                &disk,
                "export table",
                sb.export_table_start,
                u64::from(sb.inode_count),
                8,
            )?
        } else {
            Vec::new()
        };
        let xattr = XattrTable::open(&disk, &sb)?;
        Ok(Archive {
            disk,
            ids,
            meta,
            frag_index,
            export_index,
            xattr,
            data_cache: Cache::new(opts.data_cache_bytes),
            list_cache: Cache::new(opts.block_list_cache_bytes),
            sb,
        })
    }

    /// Bytes read from the image file since it was opened, the superblock aside (`--debug`).
    pub fn bytes_read(&self) -> u64 {
        self.disk.bytes_read()
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The root directory.
    pub fn root(&self) -> Result<Inode> {
        let root = self.inode(self.sb.root_inode)?;
        if root.kind != FileType::Dir {
            return Err(corrupt("root inode is not a directory"));
        }
        Ok(root)
    }

    /// Decodes the inode at `inode_ref` (block in the inode table << 16 | offset).
    pub fn inode(&self, inode_ref: u64) -> Result<Inode> {
        let off = (inode_ref & 0xffff) as usize;
        if inode_ref >> 48 != 0 || off >= METADATA_SIZE {
            return Err(corrupt(format!("bad inode reference {inode_ref:#x}")));
        }
        let start = self.sb.inode_table_start;
        let mut c = Cursor::new(
            &self.meta,
            &self.disk,
            "inode table",
            start.saturating_add(inode_ref >> 16),
            off,
            self.sb.region_end(start),
        );
        inode::parse(&mut c, inode_ref, &self.sb, &self.ids)
            .map_err(|e| e.context(format_args!("inode {inode_ref:#x}")))
    }

    /// The inode reference of inode number `n`, from the export table; `None`
    /// when the image has no export table (built with `-no-exports`).
    pub fn inode_ref_by_number(&self, n: u32) -> Result<Option<u64>> {
        if !self.sb.has_export_table() {
            return Ok(None);
        }
        if n == 0 || n > self.sb.inode_count {
            return Err(corrupt(format!(
                "export table: inode number {n} out of range"
            )));
        }
        let e: [u8; 8] = table_entry(
            &self.meta,
            &self.disk,
            "export table",
            &self.export_index,
            u64::from(n - 1),
        )?;
        Ok(Some(u64::from_le_bytes(e)))
    }

    /// The target of a symlink.
    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>> {
        let Detail::Symlink { target_pos } = inode.detail else {
            return Err(Error::invalid(
                std::io::ErrorKind::InvalidInput,
                format_args!("inode {:#x} is not a symlink", inode.inode_ref),
            ));
        };
        let start = self.sb.inode_table_start;
        let mut c = Cursor::new(
            &self.meta,
            &self.disk,
            "inode table",
            target_pos.0,
            target_pos.1,
            self.sb.region_end(start),
        );
        c.read_vec(inode.size as usize)
            .map_err(|e| e.context(format_args!("symlink inode {:#x}", inode.inode_ref)))
    }

    /// Resolves an absolute path inside the image, following symlinks (also
    /// the last component), with absolute targets taken relative to the image
    /// root and `..` stopping at the root. `None` if a component is missing
    /// or a non-directory is walked through.
    pub fn resolve(&self, path: &[u8]) -> Result<Option<Inode>> {
        self.resolve_with(path, true)
    }

    /// Like [`Archive::resolve`], but a symlink as last component is returned itself.
    pub fn resolve_nofollow(&self, path: &[u8]) -> Result<Option<Inode>> {
        self.resolve_with(path, false)
    }

    fn resolve_with(&self, path: &[u8], follow_last: bool) -> Result<Option<Inode>> {
        let mut stack = vec![self.root()?];
        // Components still to walk, last one first.
        let mut todo: Vec<Vec<u8>> = path
            .split(|&b| b == b'/')
            .rev()
            .map(<[u8]>::to_vec)
            .collect();
        let mut hops = 0;
        while let Some(comp) = todo.pop() {
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let Some(dir) = stack.last() else {
                return Err(corrupt("path walk lost the root"));
            };
            if dir.kind != FileType::Dir {
                return Ok(None);
            }
            let Some(ino) = self.lookup(dir, &comp)? else {
                return Ok(None);
            };
            let is_last = todo.iter().all(|c| c.is_empty() || c == b".");
            if ino.kind == FileType::Symlink && (follow_last || !is_last) {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(Error::invalid(
                        std::io::ErrorKind::Other,
                        format_args!("resolving {}: {LOOP_MSG}", String::from_utf8_lossy(path)),
                    ));
                }
                let target = self.read_link(&ino)?;
                if target.starts_with(b"/") {
                    stack.truncate(1);
                }
                todo.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                continue;
            }
            stack.push(ino);
        }
        Ok(stack.pop())
    }

    /// Reads a whole regular file by path (following symlinks); `None` if absent.
    pub fn read_file(&self, path: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(ino) = self.resolve(path)? else {
            return Ok(None);
        };
        if ino.kind != FileType::File {
            return Err(Error::invalid(
                std::io::ErrorKind::InvalidInput,
                format_args!("{} is not a regular file", String::from_utf8_lossy(path)),
            ));
        }
        if ino.size > READ_FILE_MAX {
            return Err(Error::Unsupported(format!(
                "{}: {} bytes is too large to read whole",
                String::from_utf8_lossy(path),
                ino.size
            )));
        }
        let mut out = vec![0u8; ino.size as usize];
        let n = self.read_at(&ino, 0, &mut out)?;
        out.truncate(n);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Archive>();
    }

    /// Builds a directory big enough for an index with mksquashfs (installed by
    /// tests/setup.sh; missing or failing, the test fails) and checks that lookups go
    /// through the index.
    #[test]
    fn big_directory_lookup_uses_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..2000 {
            std::fs::write(src.join(format!("name_{i:04}")), b"").unwrap();
        }
        let img = dir.join("img");
        let built = std::process::Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args(["-noappend", "-no-progress", "-quiet"])
            .status()
            .expect("running mksquashfs (squashfs-tools, installed by tests/setup.sh)");
        assert!(built.success(), "mksquashfs failed: {built}");
        let a = Archive::open_path(&img, 0).unwrap();
        let root = a.root().unwrap();
        let Detail::Dir { index_count, .. } = root.detail else {
            panic!("root is not a directory");
        };
        assert!(index_count > 2, "index of {index_count} entries");
        let before = a.meta.cache_bytes();
        let last = a.lookup_entry(&root, b"name_1999").unwrap().unwrap();
        let by_lookup = a.meta.cache_bytes() - before;
        assert!(a.lookup_entry(&root, b"name_2000").unwrap().is_none());
        assert!(a.lookup_entry(&root, b"name_0000").unwrap().is_some());
        let all = a.read_dir(&root).unwrap();
        let by_listing = a.meta.cache_bytes() - before;
        assert_eq!(all.last(), Some(&last));
        // The lookup decoded at most two directory blocks, the listing all of them.
        assert!(by_lookup <= 2 * (METADATA_SIZE + 64), "{by_lookup}");
        assert!(by_listing >= 3 * METADATA_SIZE, "{by_listing}");
    }

    #[test]
    fn magic() {
        assert!(is_squashfs(b"hsqs\0\0"));
        assert!(!is_squashfs(b"hsq"));
        assert!(!is_squashfs(b"sqsh"));
    }
}
