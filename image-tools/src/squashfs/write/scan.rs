//! Reading the staging tree into memory: names, kinds, attributes, hard
//! links and xattrs, with the overrides applied.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use super::WriteOptions;
use crate::squashfs::error::{Error, Result};
use crate::tree::{Overrides, Special};

/// Longest file name squashfs stores.
const MAX_NAME: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink(Vec<u8>),
    /// Device number in squashfs (Linux "new") encoding.
    CharDev(u32),
    BlockDev(u32),
    Fifo,
    Socket,
}

/// One name in the tree.
pub(crate) struct Entry {
    pub(crate) name: Vec<u8>,
    /// Entries of a directory, sorted bytewise by name.
    pub(crate) children: Vec<usize>,
    pub(crate) inode: usize,
}

/// One inode; hard links share it.
pub(crate) struct InodeInfo {
    pub(crate) kind: Kind,
    /// Permission bits with setuid/setgid/sticky.
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: u32,
    /// Names in the tree that lead here (non-directories).
    pub(crate) links: u32,
    /// Sorted by name.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Regular file size.
    pub(crate) size: u64,
    /// Where the data and any error message come from.
    pub(crate) path: PathBuf,
}

pub(crate) struct Tree {
    /// `entries[0]` is the root; entries are in walk (pre-)order.
    pub(crate) entries: Vec<Entry>,
    pub(crate) inodes: Vec<InodeInfo>,
}

/// Linux's device number encoding, which squashfs stores.
pub(crate) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & 0xfff00) << 12)
}

fn clamp_time(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

pub(crate) fn scan(src: &Path, overrides: &Overrides, opts: &WriteOptions) -> Result<Tree> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut inodes: Vec<InodeInfo> = Vec::new();
    let mut by_dev_ino: HashMap<(u64, u64), usize> = HashMap::new();
    // Directory entry index at each depth of the current walk position.
    let mut stack: Vec<usize> = Vec::new();
    let walk = WalkDir::new(src).follow_links(false).sort_by_file_name();
    for item in walk {
        let e = item.map_err(|err| {
            let path = err.path().unwrap_or(src).display().to_string();
            Error::io(format_args!("reading {path}"), io::Error::from(err))
        })?;
        let path = e.path();
        let md = e.metadata().map_err(|err| {
            Error::io(
                format_args!("stat {}", path.display()),
                io::Error::from(err),
            )
        })?;
        let depth = e.depth();
        if depth == 0 && !md.is_dir() {
            return Err(Error::invalid(
                io::ErrorKind::NotADirectory,
                format_args!("{} is not a directory", path.display()),
            ));
        }
        let name = if depth == 0 {
            Vec::new()
        } else {
            e.file_name().as_bytes().to_vec()
        };
        if name.len() > MAX_NAME {
            return Err(Error::invalid(
                io::ErrorKind::InvalidInput,
                format_args!("{}: name longer than {MAX_NAME} bytes", path.display()),
            ));
        }
        let rel = path.strip_prefix(src).unwrap_or(path);
        let ov = overrides.get(rel);
        let hard_key = (!md.is_dir() && md.nlink() > 1).then(|| (md.dev(), md.ino()));
        let inode = match hard_key.and_then(|k| by_dev_ino.get(&k).copied()) {
            Some(i) => {
                inodes[i].links += 1;
                i
            }
            None => {
                inodes.push(read_inode(path, &md, opts)?);
                if let Some(k) = hard_key {
                    by_dev_ino.insert(k, inodes.len() - 1);
                }
                inodes.len() - 1
            }
        };
        if let Some(ov) = ov {
            let ino = &mut inodes[inode];
            if let Some(v) = ov.uid {
                ino.uid = v;
            }
            if let Some(v) = ov.gid {
                ino.gid = v;
            }
            if let Some(v) = ov.mode {
                ino.perm = (v & 0o7777) as u16;
            }
            if let Some(v) = ov.mtime {
                ino.mtime = clamp_time(v);
            }
            if let Some(sp) = ov.special {
                if ino.kind == Kind::Dir {
                    return Err(Error::invalid(
                        io::ErrorKind::InvalidInput,
                        format_args!(
                            "{}: override makes a directory a special file",
                            path.display()
                        ),
                    ));
                }
                ino.kind = match sp {
                    Special::CharDevice { major, minor } => Kind::CharDev(encode_dev(major, minor)),
                    Special::BlockDevice { major, minor } => {
                        Kind::BlockDev(encode_dev(major, minor))
                    }
                    Special::Fifo => Kind::Fifo,
                };
                ino.size = 0;
            }
            if let Some(x) = &ov.xattrs {
                ino.xattrs = x.iter().filter(|(n, _)| storable(n)).cloned().collect();
                ino.xattrs.sort();
            }
        }
        let idx = entries.len();
        entries.push(Entry {
            name,
            children: Vec::new(),
            inode,
        });
        stack.truncate(depth);
        if let Some(&parent) = stack.last() {
            entries[parent].children.push(idx);
        }
        if md.is_dir() {
            stack.push(idx);
        }
    }
    if let Some(latest) = opts.clamp_mtime {
        for ino in &mut inodes {
            ino.mtime = ino.mtime.min(latest);
        }
    }
    Ok(Tree { entries, inodes })
}

fn read_inode(path: &Path, md: &Metadata, opts: &WriteOptions) -> Result<InodeInfo> {
    let ft = md.file_type();
    let (kind, size) = if ft.is_dir() {
        (Kind::Dir, 0)
    } else if ft.is_file() {
        (Kind::File, md.len())
    } else if ft.is_symlink() {
        let t = std::fs::read_link(path)
            .map_err(|e| Error::io(format_args!("readlink {}", path.display()), e))?;
        (Kind::Symlink(t.as_os_str().as_bytes().to_vec()), 0)
    } else if ft.is_char_device() || ft.is_block_device() {
        let rdev = md.rdev();
        let dev = encode_dev(libc::major(rdev), libc::minor(rdev));
        if ft.is_char_device() {
            (Kind::CharDev(dev), 0)
        } else {
            (Kind::BlockDev(dev), 0)
        }
    } else if ft.is_fifo() {
        (Kind::Fifo, 0)
    } else if ft.is_socket() {
        (Kind::Socket, 0)
    } else {
        return Err(Error::invalid(
            io::ErrorKind::Unsupported,
            format_args!("{}: unknown file type", path.display()),
        ));
    };
    let (uid, gid) = if opts.all_root {
        (0, 0)
    } else {
        (md.uid(), md.gid())
    };
    let xattrs = if opts.xattrs {
        read_xattrs(path)
            .map_err(|e| Error::io(format_args!("reading xattrs of {}", path.display()), e))?
    } else {
        Vec::new()
    };
    Ok(InodeInfo {
        kind,
        perm: (md.mode() & 0o7777) as u16,
        uid,
        gid,
        mtime: clamp_time(md.mtime()),
        links: 1,
        xattrs,
        size,
        path: path.to_path_buf(),
    })
}

/// Whether squashfs can store an xattr of this name (it has prefix codes for
/// these three namespaces only; others, e.g. system.posix_acl_*, are left out).
pub(crate) fn storable(name: &[u8]) -> bool {
    [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len())
}

/// The storable xattrs of `path` (not following symlinks), sorted by name.
fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let names = loop {
        // SAFETY: a null buffer with size 0 asks only for the length.
        let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            return match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
                e => Err(e),
            };
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let m = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m >= 0 {
            buf.truncate(m as usize);
            break buf;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
        // The list grew between the two calls: ask again.
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !storable(name) {
            continue;
        }
        let cn = CString::new(name)?;
        match get_xattr(&c, &cn)? {
            Some(v) => out.push((name.to_vec(), v)),
            None => continue,
        }
    }
    out.sort();
    Ok(out)
}

/// One xattr value; `None` when it vanished or may not be read (trusted.*
/// unprivileged).
fn get_xattr(path: &CString, name: &CString) -> io::Result<Option<Vec<u8>>> {
    loop {
        // SAFETY: a null buffer with size 0 asks only for the length.
        let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA | libc::EPERM | libc::EACCES | libc::ENOTSUP) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let m = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if m >= 0 {
            buf.truncate(m as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}
