//! Unpacked bases of definition-file builds, kept in the cache for the next build of the same
//! base (`CACHE/bases/KEY/`: `root/`, the tree; `overrides.json`, what the image must show
//! where the tree cannot; `source`, a line naming the base for `launcher cache list`).
//!
//! A build never writes into a cached tree: it is the read-only lower layer of an overlay
//! (`fakeroot::OverlayRoot`) whose upper layer is in the build's staging directory, so what
//! `%post` changes or deletes stays in that build. The key is the base's content: the
//! SHA-256 of a `localimage` file (read in full at every build: a changed file is never
//! taken for the old one, whatever its name, size or time) or the platform manifest's digest
//! of a `docker` image (which names every layer by digest).
//!
//! Concurrency: a tree is filled in a private temporary directory and renamed into place, so
//! a KEY directory is always complete; of two builds filling the same key at once, one rename
//! wins and the other build uses the winner's tree. Every user of a tree holds a shared
//! `flock` on `KEY.lock` for as long as its overlay is mounted; `clean` takes it exclusively
//! (without waiting) and leaves a tree in use alone.

use crate::build::{remove_tree, Error, Result};
use crate::tree::Overrides;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The cache's directory of unpacked bases, under the launcher's cache directory.
pub fn dir(cache_root: &Path) -> PathBuf {
    cache_root.join("bases")
}

fn io_err(p: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: p.display().to_string(),
        msg: e.to_string(),
    }
}

/// The key of a `localimage` file: `local-` and the SHA-256 of its bytes.
pub fn local_key(file: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(file).map_err(|e| io_err(file, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(file, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("local-{}", hex(&h.finalize())))
}

/// The key of a `docker` image: `docker-` and the hex of its platform manifest's digest.
pub fn docker_key(manifest_digest: &str) -> Option<String> {
    let hexpart = manifest_digest.strip_prefix("sha256:")?;
    (hexpart.len() == 64 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("docker-{}", hexpart.to_ascii_lowercase()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A cached tree in use: the shared lock is held until this is dropped.
pub struct Entry {
    dir: PathBuf,
    _lock: File,
    /// Taken from the cache (true) or filled by this build (false).
    pub reused: bool,
}

impl Entry {
    /// The unpacked tree (the overlay's lower layer: never to be written).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn overrides(&self) -> Result<Overrides> {
        let p = self.dir.join("overrides.json");
        let b = std::fs::read(&p).map_err(|e| io_err(&p, e))?;
        serde_json::from_slice(&b).map_err(|e| Error::Io {
            path: p.display().to_string(),
            msg: format!("unreadable ({e}); `launcher cache clean --force` removes it"),
        })
    }
}

/// Opens `KEY.lock` and takes a lock on it (`how`: LOCK_SH or LOCK_EX, maybe | LOCK_NB),
/// making sure the file locked is still the one at that path (a `clean` may have removed it
/// in between). None when LOCK_NB found it held.
fn lock(path: &Path, how: libc::c_int) -> Result<Option<File>> {
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        // SAFETY: f is an open file.
        if unsafe { libc::flock(f.as_raw_fd(), how) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(io_err(path, e));
        }
        let held = f.metadata().map_err(|e| io_err(path, e))?;
        match std::fs::metadata(path) {
            Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => return Ok(Some(f)),
            _ => continue,
        }
    }
}

/// The tree of `key`: the cached one, or one that `fill` makes (given an empty directory
/// for the tree, it unpacks the base there and returns its overrides), then kept.
/// `source` is one line naming the base.
pub fn get_or_fill(
    cache_root: &Path,
    key: &str,
    source: &str,
    fill: impl FnOnce(&Path) -> Result<Overrides>,
) -> Result<Entry> {
    let bases = dir(cache_root);
    std::fs::create_dir_all(&bases).map_err(|e| io_err(&bases, e))?;
    let entry = bases.join(key);
    let lock_file = lock(&bases.join(format!("{key}.lock")), libc::LOCK_SH)?
        .ok_or_else(|| Error::Usage(format!("{}: cannot lock", entry.display())))?;
    if entry.join("root").is_dir() {
        // The tree's time is its last use, which `clean --days` goes by.
        let _ = filetime_now(&entry);
        return Ok(Entry {
            dir: entry,
            _lock: lock_file,
            reused: true,
        });
    }
    let tmp = bases.join(format!(
        ".tmp-{key}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let filled = (|| {
        let root = tmp.join("root");
        std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
        let overrides = fill(&root)?;
        let json = serde_json::to_vec(&overrides).map_err(|e| Error::Io {
            path: tmp.display().to_string(),
            msg: format!("recording the base's overrides: {e}"),
        })?;
        let p = tmp.join("overrides.json");
        std::fs::write(&p, json).map_err(|e| io_err(&p, e))?;
        let p = tmp.join("source");
        std::fs::write(&p, format!("{source}\n")).map_err(|e| io_err(&p, e))?;
        Ok(())
    })();
    if let Err(e) = filled {
        remove_tree(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, &entry).is_err() {
        // Another build of the same base renamed its tree first (the directory exists and is
        // not empty): that one is as good.
        remove_tree(&tmp);
        if !entry.join("root").is_dir() {
            return Err(Error::Usage(format!(
                "{}: cannot put the unpacked base in place",
                entry.display()
            )));
        }
    }
    Ok(Entry {
        dir: entry,
        _lock: lock_file,
        reused: false,
    })
}

fn filetime_now(p: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: c is NUL-terminated; a null times pointer means "now" for both times.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One cached tree, for `launcher cache list`.
pub struct Listed {
    pub key: String,
    pub source: String,
    pub bytes: u64,
}

/// The cached trees (their sizes: the blocks their files take).
pub fn list(cache_root: &Path) -> Result<Vec<Listed>> {
    let bases = dir(cache_root);
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&bases) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&bases, e)),
    };
    for e in entries.flatten() {
        let key = e.file_name().to_string_lossy().into_owned();
        if key.starts_with('.') || key.ends_with(".lock") || !e.path().is_dir() {
            continue;
        }
        let source = std::fs::read_to_string(e.path().join("source"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.push(Listed {
            bytes: tree_bytes(&e.path()),
            key,
            source,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn tree_bytes(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// What `clean` removed, and the trees it left because a build was using them.
#[derive(Default)]
pub struct Cleaned {
    pub trees: usize,
    pub bytes: u64,
    pub in_use: usize,
}

/// Removes the cached trees (those unused for `older`, when given) that no build is using,
/// and the temporary trees of builds that are gone.
pub fn clean(cache_root: &Path, older: Option<std::time::Duration>) -> Result<Cleaned> {
    let bases = dir(cache_root);
    let mut r = Cleaned::default();
    let entries = match std::fs::read_dir(&bases) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(r),
        Err(e) => return Err(io_err(&bases, e)),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if let Some(rest) = name.strip_prefix(".tmp-") {
            // .tmp-KEY-PID-NANOS: a tree being filled, or left by a killed build (or a killed
            // clean: .tmp-del-...). The PID may be another node's (a shared cache directory):
            // a filler holds KEY.lock shared for the whole fill, so the tree goes only when
            // that lock is free too.
            let mut parts = rest.rsplitn(3, '-');
            let (_nanos, pid, key) = (parts.next(), parts.next(), parts.next());
            let pid = pid.and_then(|p| p.parse::<i32>().ok()).unwrap_or(0);
            if pid <= 0 || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let filling = match key.filter(|k| !k.starts_with("del-")) {
                Some(k) => lock(
                    &bases.join(format!("{k}.lock")),
                    libc::LOCK_EX | libc::LOCK_NB,
                )?
                .is_none(),
                None => false,
            };
            if !filling {
                r.bytes += tree_bytes(&path);
                remove_tree(&path);
            }
            continue;
        }
        if name.ends_with(".lock") || !path.is_dir() {
            continue;
        }
        let age = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok());
        if older.is_some_and(|o| age.is_none_or(|a| a < o)) {
            continue;
        }
        let lock_path = bases.join(format!("{name}.lock"));
        let Some(_held) = lock(&lock_path, libc::LOCK_EX | libc::LOCK_NB)? else {
            r.in_use += 1;
            continue;
        };
        r.bytes += tree_bytes(&path);
        // Out of the way in one step first: a clean killed half-way (or a removal that fails)
        // must not leave a gutted tree under its key, which the next build would reuse.
        let doomed = bases.join(format!(".tmp-del-{name}-{}-0", std::process::id()));
        std::fs::rename(&path, &doomed).map_err(|e| io_err(&path, e))?;
        remove_tree(&doomed);
        if doomed.exists() {
            return Err(Error::Usage(format!(
                "{}: cannot remove it",
                doomed.display()
            )));
        }
        r.trees += 1;
        let _ = std::fs::remove_file(&lock_path);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_filled_once_then_reused_and_cleaned_when_unused() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        std::fs::write(&img, b"base").unwrap();
        let key = local_key(&img).unwrap();
        assert!(key.starts_with("local-") && key.len() == 6 + 64);
        let fill = |root: &Path| {
            std::fs::write(root.join("f"), b"x").unwrap();
            Ok(Overrides::new())
        };
        let a = get_or_fill(d.path(), &key, "localimage img", fill).unwrap();
        assert!(!a.reused);
        assert!(a.root().join("f").is_file());
        let b = get_or_fill(d.path(), &key, "localimage img", |_| panic!("filled twice")).unwrap();
        assert!(b.reused);
        assert_eq!(b.overrides().unwrap(), Overrides::new());
        let l = list(d.path()).unwrap();
        assert_eq!((l.len(), l[0].source.as_str()), (1, "localimage img"));
        // In use: left alone.
        let c = clean(d.path(), None).unwrap();
        assert_eq!((c.trees, c.in_use), (0, 1));
        drop((a, b));
        let c = clean(d.path(), None).unwrap();
        assert_eq!((c.trees, c.in_use), (1, 0));
        assert!(list(d.path()).unwrap().is_empty());
        std::fs::write(&img, b"changed").unwrap();
        assert_ne!(local_key(&img).unwrap(), key);
    }

    #[test]
    fn docker_keys_need_a_sha256_digest() {
        let d = format!("sha256:{}", "Ab".repeat(32));
        assert_eq!(docker_key(&d), Some(format!("docker-{}", "ab".repeat(32))));
        assert_eq!(docker_key("sha512:00"), None);
        assert_eq!(docker_key("sha256:../x"), None);
    }
}
