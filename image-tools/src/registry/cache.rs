//! The content-addressed blob cache (`$XDG_CACHE_HOME/launcher/blobs/sha256/<hex>`) and
//! blob downloads into it: resumable (`<hex>.partial` + `Range:`), locked against a
//! concurrent build fetching the same blob, verified before they become visible.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::client::{self, Client};
use super::error::{Error, Result};

pub struct Cache {
    root: PathBuf,
}

/// What fetching one blob did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes received from the registry (0 when cached).
    pub downloaded: u64,
    /// Where a resumed download started (0 when it did not resume).
    pub resumed_from: u64,
    pub cached: bool,
}

impl Cache {
    /// `$LAUNCHER_CACHEDIR`, else Apptainer's `$APPTAINER_CACHEDIR/launcher` (or
    /// `$SINGULARITY_CACHEDIR/launcher`: site modules point these at scratch, away from small
    /// home quotas), else `$XDG_CACHE_HOME/launcher`, else `~/.cache/launcher`.
    pub fn default_dir() -> Result<PathBuf> {
        let abs = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
        if let Some(x) = std::env::var_os("LAUNCHER_CACHEDIR").and_then(abs) {
            return Ok(x);
        }
        for var in ["APPTAINER_CACHEDIR", "SINGULARITY_CACHEDIR"] {
            if let Some(x) = std::env::var_os(var).and_then(abs) {
                return Ok(x.join("launcher"));
            }
        }
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").and_then(abs) {
            return Ok(x.join("launcher"));
        }
        match std::env::var_os("HOME").and_then(abs) {
            Some(h) => Ok(h.join(".cache/launcher")),
            None => Err(Error::Invalid(
                "no cache directory for pulled images: set XDG_CACHE_HOME or HOME".into(),
            )),
        }
    }

    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<Cache> {
        let dir = root.join("blobs/sha256");
        fs::create_dir_all(&dir).map_err(Error::io(format!(
            "creating the blob cache {}",
            dir.display()
        )))?;
        // Absolute, since the image layout links to it from elsewhere.
        let root = fs::canonicalize(root).map_err(Error::io(format!("{}", root.display())))?;
        Ok(Cache { root })
    }

    /// `<root>/blobs`, laid out as an OCI layout's `blobs/`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Where a blob (`sha256:<hex>`, already validated) lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs_dir().join("sha256").join(hex(digest))
    }

    /// Whether the cache holds `digest` with the right content. A corrupt copy is removed.
    pub fn has_valid(&self, digest: &str, size: Option<u64>) -> Result<bool> {
        let p = self.blob_path(digest);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(format!("reading {}", p.display()))(e)),
        };
        let (actual, len) =
            hash_reader(f).map_err(Error::io(format!("reading {}", p.display())))?;
        if actual == hex(digest) && size.is_none_or(|s| s == len) {
            return Ok(true);
        }
        let _ = fs::remove_file(&p);
        Ok(false)
    }

    /// Stores a small blob (a manifest) whose digest the caller has checked.
    pub fn put(&self, digest: &str, data: &[u8]) -> Result<()> {
        let p = self.blob_path(digest);
        if p.is_file() {
            return Ok(());
        }
        let tmp = p.with_extension(format!("tmp-{}", std::process::id()));
        fs::write(&tmp, data)
            .and_then(|()| fs::rename(&tmp, &p))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io(format!("writing {}", p.display()))(e)
            })
    }
}

/// The bare hex of a `sha256:<hex>` digest.
fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn hash_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((format!("{:x}", h.finalize()), len))
}

/// What the cache holds, or what a clean removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Complete blobs (layers, configs, manifests).
    pub blobs: u64,
    /// Downloads not finished (each resumes at the next build).
    pub partial: u64,
    pub bytes: u64,
}

/// The cache's files, for `cache list` and `cache clean`: regular files named like blobs or
/// partial downloads; anything else there (a symlink, a directory, a stray name) is left alone.
fn entries(root: &Path) -> Result<Vec<(PathBuf, fs::Metadata, bool)>> {
    let dir = root.join("blobs/sha256");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (hex, partial) = match name.strip_suffix(".partial") {
            Some(h) => (h, true),
            None => (name.as_str(), false),
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_file() {
            out.push((e.path(), meta, partial));
        }
    }
    Ok(out)
}

/// What the cache at `root` holds (nothing when it does not exist).
pub fn usage(root: &Path) -> Result<Usage> {
    let mut u = Usage::default();
    for (_, meta, partial) in entries(root)? {
        if partial {
            u.partial += 1;
        } else {
            u.blobs += 1;
        }
        u.bytes += meta.len();
    }
    Ok(u)
}

/// Removes the cache's blobs and partial downloads not modified for `older_than` (all when
/// None), but never a partial download another build holds locked. Returns what went.
pub fn clean(root: &Path, older_than: Option<std::time::Duration>) -> Result<Usage> {
    let now = std::time::SystemTime::now();
    let mut removed = Usage::default();
    for (path, meta, partial) in entries(root)? {
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if older_than.is_some_and(|min| age < min) {
            continue;
        }
        if partial {
            let Ok(f) = File::open(&path) else { continue };
            // SAFETY: flock on a valid open descriptor has no memory-safety preconditions.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue; // a build is downloading it right now
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                if partial {
                    removed.partial += 1;
                } else {
                    removed.blobs += 1;
                }
                removed.bytes += meta.len();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", path.display()))(e)),
        }
    }
    Ok(removed)
}

/// Exclusive lock on an open file, released when it is closed.
fn lock(f: &File, what: &str) -> Result<()> {
    // SAFETY: flock on a valid open descriptor has no memory-safety preconditions.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    eprintln!("launcher: {what}: waiting for another download of it to finish");
    // SAFETY: as above.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
        return Ok(());
    }
    Err(Error::io(format!("{what}: locking the download"))(
        io::Error::last_os_error(),
    ))
}

/// Makes sure the cache holds blob `digest` (`sha256:<hex>`, validated) of `size` bytes.
pub(crate) fn fetch_blob(
    client: &mut Client,
    cache: &Cache,
    digest: &str,
    size: Option<u64>,
    what: &str,
    bar: &indicatif::ProgressBar,
) -> Result<Fetched> {
    if cache.has_valid(digest, size)? {
        return Ok(Fetched {
            cached: true,
            ..Fetched::default()
        });
    }
    let final_path = cache.blob_path(digest);
    let partial = final_path.with_extension("partial");
    let perr = |op: &str| Error::io(format!("{what}: {op} {}", partial.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .map_err(perr("opening"))?;
    lock(&file, what)?;
    // Another build may have finished it while we waited for the lock.
    if cache.has_valid(digest, size)? {
        let _ = fs::remove_file(&partial);
        return Ok(Fetched {
            cached: true,
            ..Fetched::default()
        });
    }
    // Hash what an earlier, interrupted download left, to continue from there.
    let mut have = file.metadata().map_err(perr("reading"))?.len();
    if size.is_some_and(|s| have > s) {
        file.set_len(0).map_err(perr("truncating"))?;
        have = 0;
    }
    file.seek(SeekFrom::Start(0)).map_err(perr("reading"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    {
        let mut r = (&mut file).take(have);
        loop {
            let n = r.read(&mut buf).map_err(perr("reading"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    // A complete partial whose rename was interrupted: nothing to fetch.
    if size == Some(have) && format!("{:x}", hasher.clone().finalize()) == hex(digest) {
        fs::rename(&partial, &final_path).map_err(perr("renaming"))?;
        return Ok(Fetched {
            cached: true,
            ..Fetched::default()
        });
    }
    let resumed_from = have;
    let mut fetched = Fetched {
        resumed_from,
        ..Fetched::default()
    };
    if let Some(s) = size {
        bar.set_length(s);
    }
    bar.set_position(have);
    let mut attempt = 0;
    let mut use_range = true;
    loop {
        // `have == size` (a complete but unrenamed partial) still asks for the tail: a
        // 416 then says the partial is whole, and the digest check decides.
        let mut headers = Vec::new();
        if have > 0 && use_range {
            headers.push(("Range", format!("bytes={have}-")));
        }
        let resp = client.get(&format!("blobs/{digest}"), &headers, what)?;
        let status = resp.status().as_u16();
        let restart = |file: &mut File, hasher: &mut Sha256, have: &mut u64| -> Result<()> {
            file.set_len(0).map_err(perr("truncating"))?;
            *hasher = Sha256::new();
            *have = 0;
            bar.set_position(0);
            Ok(())
        };
        match status {
            416 if have > 0 && size == Some(have) => break,
            416 => {
                // The partial does not fit the blob: start over without a range.
                restart(&mut file, &mut hasher, &mut have)?;
                fetched.resumed_from = 0;
                use_range = false;
                continue;
            }
            206 => {
                let from = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if from != Some(have) {
                    restart(&mut file, &mut hasher, &mut have)?;
                    fetched.resumed_from = 0;
                    use_range = false;
                    continue;
                }
            }
            _ if have > 0 => {
                // The server ignored Range and sends the whole blob.
                restart(&mut file, &mut hasher, &mut have)?;
                fetched.resumed_from = 0;
            }
            _ => {}
        }
        file.seek(SeekFrom::Start(have)).map_err(perr("writing"))?;
        let mut body = resp.into_body().into_reader();
        let mut failed = None;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if size.is_some_and(|s| have + n as u64 > s) {
                drop(file);
                let _ = fs::remove_file(&partial);
                return Err(Error::Invalid(format!(
                    "{what}: the registry sent more than the {} bytes the manifest gives; the download was removed",
                    size.unwrap_or(0)
                )));
            }
            file.write_all(&buf[..n]).map_err(perr("writing"))?;
            hasher.update(&buf[..n]);
            have += n as u64;
            fetched.downloaded += n as u64;
            bar.set_position(have);
        }
        match failed {
            None => break,
            // The connection broke mid-blob: go on from what arrived.
            Some(_) if attempt < 3 => {
                attempt += 1;
                client::backoff(attempt);
            }
            Some(e) => {
                return Err(Error::Network(format!(
                    "{what}: the download broke off after {have} bytes: {e} (run the build again to resume)"
                )))
            }
        }
    }
    let actual = format!("{:x}", hasher.finalize());
    if actual != hex(digest) || size.is_some_and(|s| s != have) {
        drop(file);
        let _ = fs::remove_file(&partial);
        if actual != hex(digest) {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: digest.to_string(),
                actual: format!("sha256:{actual}"),
            });
        }
        return Err(Error::Invalid(format!(
            "{what}: size mismatch: the manifest says {} bytes, the registry sent {have}; the download was removed",
            size.unwrap_or(0)
        )));
    }
    fs::rename(&partial, &final_path).map_err(perr("renaming"))?;
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_blobs_but_not_locked_downloads_or_strangers() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("blobs/sha256");
        fs::create_dir_all(&dir).unwrap();
        let hex = |c: char| std::iter::repeat_n(c, 64).collect::<String>();
        fs::write(dir.join(hex('a')), b"old blob").unwrap();
        fs::write(dir.join(hex('b')), b"new blob").unwrap();
        fs::write(dir.join(format!("{}.partial", hex('c'))), b"free").unwrap();
        let busy_path = dir.join(format!("{}.partial", hex('d')));
        fs::write(&busy_path, b"downloading").unwrap();
        let busy = File::open(&busy_path).unwrap();
        lock(&busy, "test").unwrap();
        fs::write(dir.join("not-a-blob"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join(hex('e'))).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
        File::options()
            .write(true)
            .open(dir.join(hex('a')))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let u = usage(root.path()).unwrap();
        assert_eq!((u.blobs, u.partial), (2, 2));
        let day = std::time::Duration::from_secs(86_400);
        let r = clean(root.path(), Some(day)).unwrap();
        assert_eq!(
            (r.blobs, r.partial),
            (1, 0),
            "only the old blob is past a day"
        );
        assert!(!dir.join(hex('a')).exists() && dir.join(hex('b')).exists());
        // Files just written are younger than a day; with no age limit all free ones go.
        let r = clean(root.path(), None).unwrap();
        assert_eq!((r.blobs, r.partial), (1, 1));
        assert!(busy_path.exists(), "a download in progress is kept");
        assert!(dir.join("not-a-blob").exists() && dir.join(hex('e')).is_symlink());
        assert!(std::path::Path::new("/etc/passwd").exists());
        drop(busy);
        assert_eq!(clean(root.path(), None).unwrap().partial, 1);
        assert_eq!(
            usage(&root.path().join("absent")).unwrap(),
            Usage::default()
        );
    }
}
