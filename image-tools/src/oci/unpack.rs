//! Applies layer tars to the staging directory as an unprivileged user, never
//! writing outside it.
//!
//! Containment works on real paths: every member name is cleaned lexically (`..`
//! cannot climb above the root, a leading `/` is dropped), then its parent is
//! resolved one component at a time with `lstat`. A symlinked parent is followed
//! as if the staging root were `/` (what the container will see), so `a -> /etc`
//! then `a/passwd` writes `<root>/etc/passwd`. The final component is never
//! followed: it is removed and created anew (`O_EXCL`), so it cannot be a
//! symlink pointing out. Nothing else writes to the staging tree while we work.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use super::error::{Error, Result};
use crate::tree::{EntryOverride, Overrides, Special};

/// Like the kernel's limit: a symlink loop is an error, not a hang.
const MAX_SYMLINK_HOPS: usize = 40;
const COPY_BUF: usize = 256 << 10;

pub(crate) struct Unpacker {
    root: PathBuf,
    pub(crate) overrides: Overrides,
    /// Real paths the current layer wrote: whiteouts and opaque markers hide
    /// lower layers only, never entries of their own layer.
    layer_paths: BTreeSet<PathBuf>,
    /// Cleaned parent name (as in the tar) -> resolved real directory. Dropped
    /// whenever a directory or symlink is removed, the only changes that can
    /// make a resolution stale.
    dir_cache: HashMap<Vec<u8>, PathBuf>,
    buf: Vec<u8>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// Owner-accessible modes on disk, so that later layers and the writer can read,
/// write and traverse; the real mode goes into the overrides.
fn disk_file_mode(mode: u32) -> u32 {
    (mode & 0o777) | 0o600
}
fn disk_dir_mode(mode: u32) -> u32 {
    (mode & 0o777) | 0o700
}

/// Directories the tar implies but does not list get what Docker gives them.
fn implied_dir() -> EntryOverride {
    EntryOverride {
        uid: Some(0),
        gid: Some(0),
        mode: Some(0o755),
        ..Default::default()
    }
}

/// Splits a member name into components, resolving `.` and `..` lexically
/// (Docker's rule: `..` at the root stays at the root).
fn clean(name: &[u8]) -> Result<Vec<OsString>> {
    if name.contains(&0) {
        return Err(invalid("name contains a NUL byte"));
    }
    let mut out: Vec<OsString> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn cache_key(comps: &[OsString]) -> Vec<u8> {
    let mut k = Vec::new();
    for c in comps {
        k.extend_from_slice(c.as_bytes());
        k.push(b'/');
    }
    k
}

/// Prefixes a message with the layer and member it concerns.
fn within(e: Error, prefix: &str) -> Error {
    match e {
        Error::Io { context, error } => Error::Io {
            context: format!("{prefix}: {context}"),
            error,
        },
        Error::Invalid(m) => Error::Invalid(format!("{prefix}: {m}")),
        Error::NotFound(m) => Error::NotFound(format!("{prefix}: {m}")),
        Error::Unsupported(m) => Error::Unsupported(format!("{prefix}: {m}")),
        e @ Error::DigestMismatch { .. } => e,
    }
}

impl Unpacker {
    /// Stages into `root`, an existing empty directory.
    pub(crate) fn new(root: &Path) -> Unpacker {
        let mut overrides = Overrides::new();
        overrides.insert(PathBuf::new(), implied_dir());
        Unpacker {
            root: root.to_path_buf(),
            overrides,
            layer_paths: BTreeSet::new(),
            dir_cache: HashMap::new(),
            buf: vec![0; COPY_BUF],
        }
    }

    /// Applies one uncompressed layer tar on top of what is staged; `what` names
    /// the layer in errors.
    pub(crate) fn apply_layer<R: Read>(&mut self, layer: R, what: &str) -> Result<()> {
        self.layer_paths.clear();
        let bad = |e: io::Error| invalid(format!("{what}: bad tar: {e}"));
        let consumed = Rc::new(Cell::new(0));
        let mut ar = tar::Archive::new(Counting {
            inner: layer,
            count: consumed.clone(),
        });
        let mut entries = ar.entries().map_err(bad)?;
        let mut data_end = 0;
        loop {
            let mut entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                // umoci 0.4's `insert` ends a layer right after the last file's data,
                // without padding or end-of-archive blocks; GNU tar and Go accept that.
                // The stream is digest-checked, so this is how the layer was written.
                Some(Err(_)) if data_end > 0 && consumed.get() == data_end => break,
                Some(Err(e)) => return Err(bad(e)),
            };
            data_end = entry.raw_file_position().saturating_add(entry.size());
            let name = entry.path_bytes().into_owned();
            self.apply_entry(&mut entry, &name)
                .map_err(|e| within(e, &format!("{what}: {:?}", String::from_utf8_lossy(&name))))?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, name: &[u8]) -> Result<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind == T::XGlobalHeader {
            return Ok(());
        }
        let comps = clean(name)?;
        let Some((last, parent)) = comps.split_last() else {
            // "./": the root can only take new metadata.
            if kind != T::Directory {
                return Err(invalid("a non-directory entry names the root"));
            }
            let ov = header_override(entry)?;
            self.overrides.insert(PathBuf::new(), ov);
            return Ok(());
        };
        if let Some(target) = last.as_bytes().strip_prefix(b".wh.") {
            return self.whiteout(parent, target);
        }
        let dir = self
            .resolve_dir(parent, true)?
            .ok_or_else(|| invalid("parent directory missing"))?;
        let rel = dir.join(last);
        let abs = self.root.join(&rel);
        let mut ov = header_override(entry)?;
        let mode = ov.mode.unwrap_or(0o644);
        let ctx = |what: &str| format!("{what} {}", rel.display());
        match kind {
            T::Directory => {
                match fs::symlink_metadata(&abs) {
                    // An existing directory keeps its contents; only metadata changes.
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        self.clear(&rel)?;
                        mkdir(&abs).map_err(Error::io(ctx("creating directory")))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        mkdir(&abs).map_err(Error::io(ctx("creating directory")))?;
                    }
                    Err(e) => return Err(Error::io(ctx("inspecting"))(e)),
                }
                fs::set_permissions(&abs, Permissions::from_mode(disk_dir_mode(mode)))
                    .map_err(Error::io(ctx("chmod")))?;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear(&rel)?;
                let mut f = create_file(&abs).map_err(Error::io(ctx("creating")))?;
                loop {
                    let n = entry
                        .read(&mut self.buf)
                        .map_err(|e| invalid(format!("reading file data: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&self.buf[..n])
                        .map_err(Error::io(ctx("writing")))?;
                }
                f.set_permissions(Permissions::from_mode(disk_file_mode(mode)))
                    .map_err(Error::io(ctx("chmod")))?;
                if let Some(t) = ov.mtime.and_then(|s| u64::try_from(s).ok()) {
                    f.set_modified(UNIX_EPOCH + Duration::from_secs(t))
                        .map_err(Error::io(ctx("setting mtime of")))?;
                }
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid("symlink without a target"))?
                    .into_owned();
                self.clear(&rel)?;
                // Stored as is: it is resolved inside the container, and nothing here follows it.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &abs)
                    .map_err(Error::io(ctx("creating symlink")))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("hard link without a target"))?
                    .into_owned();
                return self.hard_link(&rel, &target, ov);
            }
            T::Char | T::Block | T::Fifo => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                ov.special = Some(match kind {
                    T::Char => Special::CharDevice { major, minor },
                    T::Block => Special::BlockDevice { major, minor },
                    _ => Special::Fifo,
                });
                // An unprivileged user cannot mknod: an empty placeholder stands in.
                self.clear(&rel)?;
                let f = create_file(&abs).map_err(Error::io(ctx("creating placeholder")))?;
                f.set_permissions(Permissions::from_mode(disk_file_mode(mode)))
                    .map_err(Error::io(ctx("chmod")))?;
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "unsupported tar entry type {:?}",
                    other.as_byte() as char
                )))
            }
        }
        self.overrides.insert(rel.clone(), ov);
        self.layer_paths.insert(rel);
        Ok(())
    }

    fn hard_link(&mut self, rel: &Path, target: &[u8], ov: EntryOverride) -> Result<()> {
        let tcomps = clean(target)?;
        let shown = String::from_utf8_lossy(target);
        let Some((tlast, tparent)) = tcomps.split_last() else {
            return Err(invalid("hard link to the root directory"));
        };
        let tdir = self
            .resolve_dir(tparent, false)?
            .ok_or_else(|| invalid(format!("hard link target {shown:?} not found")))?;
        let trel = tdir.join(tlast);
        if trel == rel {
            return Ok(());
        }
        let tabs = self.root.join(&trel);
        match fs::symlink_metadata(&tabs) {
            Ok(m) if m.is_dir() => {
                return Err(invalid(format!("hard link to directory {shown:?}")));
            }
            Ok(_) => {}
            Err(_) => return Err(invalid(format!("hard link target {shown:?} not found"))),
        }
        self.clear(rel)?;
        fs::hard_link(&tabs, self.root.join(rel)).map_err(Error::io(format!(
            "linking {} to {}",
            rel.display(),
            trel.display()
        )))?;
        // Both names are one inode: they must show the same metadata.
        let ov = self.overrides.get(&trel).cloned().unwrap_or(ov);
        self.overrides.insert(rel.to_path_buf(), ov);
        self.layer_paths.insert(rel.to_path_buf());
        Ok(())
    }

    /// `.wh.NAME` deletes NAME from lower layers; `.wh..wh..opq` empties the directory of them.
    fn whiteout(&mut self, parent: &[OsString], target: &[u8]) -> Result<()> {
        let opaque = target == b".wh..opq";
        if !opaque && target.starts_with(b".wh.") {
            return Ok(()); // other AUFS metadata (.wh..wh.plnk, ...): nothing to apply
        }
        if matches!(target, b"" | b"." | b"..") {
            return Err(invalid("whiteout of an invalid name"));
        }
        // Nothing below a missing parent to delete.
        let Some(dir) = self.resolve_dir(parent, false)? else {
            return Ok(());
        };
        if opaque {
            return self.clear_lower(&dir);
        }
        let rel = dir.join(OsStr::from_bytes(target));
        if !self.layer_paths.contains(&rel) {
            self.clear(&rel)?;
            self.forget(&rel);
        }
        Ok(())
    }

    /// Removes everything below `dir` that the current layer did not write.
    fn clear_lower(&mut self, dir: &Path) -> Result<()> {
        let abs = self.root.join(dir);
        let mut names = Vec::new();
        for e in fs::read_dir(&abs).map_err(Error::io(format!("listing {}", dir.display())))? {
            names.push(
                e.map_err(Error::io(format!("listing {}", dir.display())))?
                    .file_name(),
            );
        }
        for name in names {
            let rel = dir.join(&name);
            let keep = self.layer_paths.contains(&rel)
                || self
                    .layer_paths
                    .range::<PathBuf, _>((Bound::Excluded(rel.clone()), Bound::Unbounded))
                    .next()
                    .is_some_and(|p| p.starts_with(&rel));
            if !keep {
                self.clear(&rel)?;
                self.forget(&rel);
            } else if fs::symlink_metadata(self.root.join(&rel)).is_ok_and(|m| m.is_dir()) {
                self.clear_lower(&rel)?;
            }
        }
        Ok(())
    }

    /// Removes whatever is at `rel` (not following a symlink there).
    fn clear(&mut self, rel: &Path) -> Result<()> {
        let abs = self.root.join(rel);
        let m = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("inspecting {}", rel.display()))(e)),
        };
        let res = if m.is_dir() {
            self.forget_below(rel);
            // std's remove_dir_all does not follow symlinks inside the tree.
            fs::remove_dir_all(&abs)
        } else {
            fs::remove_file(&abs)
        };
        res.map_err(Error::io(format!("removing {}", rel.display())))?;
        if m.is_dir() || m.file_type().is_symlink() {
            self.dir_cache.clear();
        }
        Ok(())
    }

    /// Drops the overrides of `rel` and everything below it.
    fn forget(&mut self, rel: &Path) {
        self.overrides.remove(rel);
        self.forget_below(rel);
    }

    fn forget_below(&mut self, rel: &Path) {
        // Component-wise ordering keeps a directory's descendants right after it.
        let doomed: Vec<PathBuf> = self
            .overrides
            .range::<Path, _>((Bound::Excluded(rel), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.overrides.remove(&k);
        }
    }

    /// The real directory (relative to the root, no symlinks in it) that the
    /// cleaned components name, following symlinks as if the root were `/`.
    /// Missing directories are created when `create`, else `None`.
    fn resolve_dir(&mut self, comps: &[OsString], create: bool) -> Result<Option<PathBuf>> {
        let key = cache_key(comps);
        if let Some(p) = self.dir_cache.get(&key) {
            return Ok(Some(p.clone()));
        }
        let mut real = PathBuf::new();
        let mut todo: Vec<OsString> = comps.iter().rev().cloned().collect();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    real.pop();
                    continue;
                }
                _ => {}
            }
            let rel = real.join(&c);
            let abs = self.root.join(&rel);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => real = rel,
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(invalid(format!(
                            "too many levels of symbolic links at {}",
                            rel.display()
                        )));
                    }
                    let target = fs::read_link(&abs)
                        .map_err(Error::io(format!("reading symlink {}", rel.display())))?;
                    let t = target.as_os_str().as_bytes();
                    if t.starts_with(b"/") {
                        real = PathBuf::new();
                    }
                    for part in t.split(|&b| b == b'/').rev() {
                        todo.push(OsStr::from_bytes(part).to_os_string());
                    }
                }
                Ok(_) if create => {
                    return Err(invalid(format!("{} is not a directory", rel.display())));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    mkdir(&abs).map_err(Error::io(format!("creating {}", rel.display())))?;
                    fs::set_permissions(&abs, Permissions::from_mode(0o755))
                        .map_err(Error::io(format!("chmod {}", rel.display())))?;
                    self.overrides.insert(rel.clone(), implied_dir());
                    real = rel;
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(format!("inspecting {}", rel.display()))(e)),
            }
        }
        self.dir_cache.insert(key, real.clone());
        Ok(Some(real))
    }
}

/// Counts the bytes the tar reader takes.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

fn mkdir(abs: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(abs)
}

/// A new file; `O_EXCL` and `O_NOFOLLOW` make sure it is ours, not a symlink's target.
fn create_file(abs: &Path) -> io::Result<fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(abs)
}

/// What the tar header says about an entry (PAX records included).
fn header_override<R: Read>(entry: &mut tar::Entry<R>) -> Result<EntryOverride> {
    let h = entry.header();
    let field = |what: &str, e: io::Error| invalid(format!("bad {what} in tar header: {e}"));
    let uid = h.uid().map_err(|e| field("uid", e))?;
    let gid = h.gid().map_err(|e| field("gid", e))?;
    let uid = u32::try_from(uid).map_err(|_| invalid(format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| invalid(format!("gid {gid} out of range")))?;
    let mode = h.mode().map_err(|e| field("mode", e))? & 0o7777;
    let mut mtime = h.mtime().map_err(|e| field("mtime", e))? as i64;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| invalid(format!("bad PAX header: {e}")))?
    {
        for ext in pax {
            // The tar crate splits records at newlines, so a binary xattr value holding
            // one comes out malformed: an error beats silently dropping it.
            let ext = ext.map_err(|e| invalid(format!("bad PAX header: {e}")))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                // "seconds[.fraction]"; the writer stores whole seconds.
                let v = String::from_utf8_lossy(ext.value_bytes());
                let secs = v.split('.').next().unwrap_or("");
                mtime = secs
                    .parse()
                    .map_err(|_| invalid(format!("bad PAX mtime {v:?}")))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(EntryOverride {
        uid: Some(uid),
        gid: Some(gid),
        mode: Some(mode),
        mtime: Some(mtime),
        special: None,
        xattrs: (!xattrs.is_empty()).then_some(xattrs),
    })
}
