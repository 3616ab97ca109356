//! In-process SquashFS 4.0 writer (for `launcher build`): packs a staged
//! directory tree, with [`crate::tree::Overrides`] applied, into an image that
//! this crate's reader, the Linux kernel, `unsquashfs` and squashfuse read.
//!
//! Layout, as mksquashfs writes it: superblock, compressor options (lz4, or
//! a non-default level), data and fragment blocks, inode table, directory
//! table, fragment table, export table, id table, xattr table; padded to a
//! multiple of 4 KiB. Data blocks are compressed on `threads` workers and
//! written in input order, so the bytes do not depend on the thread count.

mod compress;
mod data;
mod meta;
mod scan;
mod tables;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::superblock::{flags, SUPERBLOCK_SIZE};
use compress::{Codec, Encoder};
use meta::lookup_table;

/// Compression of data and metadata blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteCompressor {
    #[default]
    Zstd,
    /// zlib streams, which squashfs calls gzip.
    Gzip,
    Xz,
    Lz4,
}

/// How to build an image.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub compressor: WriteCompressor,
    /// None = mksquashfs's default: zstd 15, gzip 9, xz preset 6. lz4 is
    /// always the fast mode (the encoder has no HC mode); a level is ignored.
    pub level: Option<i32>,
    /// Data block size: a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
    /// Compression threads; 0 = every available core.
    pub threads: usize,
    /// Image creation time; None = now. Pass SOURCE_DATE_EPOCH for reproducible images.
    pub mkfs_time: Option<u32>,
    /// No stored time later than this: SOURCE_DATE_EPOCH's rule, so that files made during the
    /// build (the metadata files of an OCI build) do not carry the time of the build.
    pub clamp_mtime: Option<u32>,
    /// Store uid/gid 0 for everything an override does not give an owner
    /// (like mksquashfs -all-root).
    pub all_root: bool,
    /// Store the source tree's xattrs (user.*, trusted.*, security.*);
    /// overrides' xattrs are stored either way.
    pub xattrs: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            compressor: WriteCompressor::Zstd,
            level: None,
            block_size: 131072,
            threads: 0,
            mkfs_time: None,
            clamp_mtime: None,
            all_root: false,
            xattrs: true,
        }
    }
}

/// What went into an image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub inodes: u64,
    /// Regular file inodes.
    pub files: u64,
    /// Bytes of file data read (duplicates not counted).
    pub bytes_in: u64,
    /// Size of the image file, padding included.
    pub bytes_out: u64,
    /// Files stored as references to an identical earlier file's data.
    pub duplicates: u64,
}

/// Image files are padded to a multiple of this, as mksquashfs does (the
/// kernel reads the device in blocks of up to 4 KiB).
const PAD: u64 = 4096;

/// Packs the directory tree `src` into a new image at `out` (replaced if it
/// exists). The image is written beside `out` and renamed into place, so no
/// partial file is left on error.
///
/// `overrides` replace what the tree shows for their paths; an override for
/// a path not in the tree is ignored. Xattrs outside the user., trusted. and
/// security. namespaces (which squashfs cannot store) are left out, as
/// mksquashfs does. Files with identical contents share their data blocks.
/// Symlinks in the tree are stored, never followed (`src` itself may be one).
pub fn write_dir(
    src: &Path,
    overrides: &crate::tree::Overrides,
    out: &Path,
    opts: &WriteOptions,
) -> Result<WriteStats> {
    let bs = opts.block_size;
    if !(4096..=1 << 20).contains(&bs) || !bs.is_power_of_two() {
        return Err(Error::invalid(
            io::ErrorKind::InvalidInput,
            format_args!("block size {bs}: must be a power of two from 4096 to 1048576"),
        ));
    }
    let codec = Codec::new(opts.compressor, opts.level, bs)
        .map_err(|m| Error::invalid(io::ErrorKind::InvalidInput, m))?;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mkfs_time = opts.mkfs_time.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
    });
    let tree = scan::scan(src, overrides, opts)?;
    let tmp = TempFile::create(out)?;
    let stats = build(&tree, &tmp.file, codec, bs, threads, mkfs_time)
        .map_err(|e| e.context(format_args!("building {}", out.display())))?;
    tmp.commit(out)?;
    Ok(stats)
}

/// A file beside the output, removed on drop unless renamed into place.
struct TempFile {
    path: PathBuf,
    file: File,
    keep: bool,
}

impl TempFile {
    fn create(out: &Path) -> Result<TempFile> {
        let name = out.file_name().ok_or_else(|| {
            Error::invalid(
                io::ErrorKind::InvalidInput,
                format_args!("{}: not a file name", out.display()),
            )
        })?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut n = 0u32;
        loop {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
            let path = dir.join(tmp_name);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        keep: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(Error::io(format_args!("creating {}", path.display()), e)),
            }
        }
    }

    fn commit(mut self, out: &Path) -> Result<()> {
        fs::rename(&self.path, out).map_err(|e| {
            Error::io(
                format_args!("renaming {} to {}", self.path.display(), out.display()),
                e,
            )
        })?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> Error {
    move |e| Error::io(what, e)
}

fn build(
    tree: &scan::Tree,
    file: &File,
    codec: Codec,
    bs: u32,
    threads: usize,
    mkfs_time: u32,
) -> Result<WriteStats> {
    let mut enc = Encoder::new(codec).map_err(io_err("setting up the compressor"))?;
    // The superblock is written last, once every table position is known.
    let mut head = vec![0u8; SUPERBLOCK_SIZE];
    let comp_opts = codec.options();
    if let Some(o) = &comp_opts {
        // Always stored uncompressed.
        head.extend((o.len() as u16 | 0x8000).to_le_bytes());
        head.extend(o);
    }
    let mut w = file;
    w.write_all(&head).map_err(io_err("writing the image"))?;
    let data = data::write_data(tree, file, head.len() as u64, codec, bs, threads)?;
    let t = tables::build(tree, &data, bs, &mut enc)?;

    let mut pos = data.end;
    let mut tail = Vec::new();
    let place = |bytes: Vec<u8>, tail: &mut Vec<u8>, pos: &mut u64| {
        *pos += bytes.len() as u64;
        tail.extend(bytes);
    };
    let inode_table_start = pos;
    place(t.inode_table, &mut tail, &mut pos);
    let directory_table_start = pos;
    place(t.dir_table, &mut tail, &mut pos);
    let frag_entries: Vec<u8> = data
        .fragments
        .iter()
        .flat_map(|&(p, raw)| {
            let mut e = p.to_le_bytes().to_vec();
            e.extend(raw.to_le_bytes());
            e.extend(0u32.to_le_bytes());
            e
        })
        .collect();
    let (bytes, fragment_table_start) =
        lookup_table(&mut enc, &frag_entries, pos).map_err(io_err("compressing metadata"))?;
    place(bytes, &mut tail, &mut pos);
    let export: Vec<u8> = t
        .refs_by_number
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    let (bytes, export_table_start) =
        lookup_table(&mut enc, &export, pos).map_err(io_err("compressing metadata"))?;
    place(bytes, &mut tail, &mut pos);
    let id_entries: Vec<u8> = t.ids.list.iter().flat_map(|i| i.to_le_bytes()).collect();
    let (bytes, id_table_start) =
        lookup_table(&mut enc, &id_entries, pos).map_err(io_err("compressing metadata"))?;
    place(bytes, &mut tail, &mut pos);
    // The kernel wants the xattr id index to end exactly at bytes_used, so
    // the xattr table comes last.
    let xattr_id_table_start = if t.xattrs.is_empty() {
        u64::MAX
    } else {
        let (bytes, start) = t.xattrs.build(&mut enc, pos)?;
        place(bytes, &mut tail, &mut pos);
        start
    };
    let bytes_used = pos;
    let padded = bytes_used.div_ceil(PAD) * PAD;
    tail.resize(tail.len() + (padded - bytes_used) as usize, 0);
    file.write_all_at(&tail, data.end)
        .map_err(io_err("writing the image"))?;

    let mut fl = flags::DUPLICATES | flags::EXPORTABLE;
    if comp_opts.is_some() {
        fl |= flags::COMPRESSOR_OPTIONS;
    }
    if t.xattrs.is_empty() {
        fl |= flags::NO_XATTRS;
    }
    let inode_count = t.refs_by_number.len() as u32;
    let mut sb = Vec::with_capacity(SUPERBLOCK_SIZE);
    sb.extend(b"hsqs");
    sb.extend(inode_count.to_le_bytes());
    sb.extend(mkfs_time.to_le_bytes());
    sb.extend(bs.to_le_bytes());
    sb.extend((data.fragments.len() as u32).to_le_bytes());
    sb.extend(codec.id().to_le_bytes());
    sb.extend((bs.trailing_zeros() as u16).to_le_bytes());
    sb.extend(fl.to_le_bytes());
    sb.extend((t.ids.list.len() as u16).to_le_bytes());
    sb.extend(4u16.to_le_bytes());
    sb.extend(0u16.to_le_bytes());
    for v in [
        t.root_ref,
        bytes_used,
        id_table_start,
        xattr_id_table_start,
        inode_table_start,
        directory_table_start,
        fragment_table_start,
        export_table_start,
    ] {
        sb.extend(v.to_le_bytes());
    }
    debug_assert_eq!(sb.len(), SUPERBLOCK_SIZE);
    file.write_all_at(&sb, 0)
        .map_err(io_err("writing the image"))?;
    let files = tree
        .inodes
        .iter()
        .filter(|i| i.kind == scan::Kind::File)
        .count() as u64;
    Ok(WriteStats {
        inodes: u64::from(inode_count),
        files,
        bytes_in: data.bytes_in,
        bytes_out: padded,
        duplicates: data.duplicates,
    })
}
