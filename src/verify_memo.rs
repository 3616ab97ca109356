//! Signature checks remembered per image file, so that launches of a verified image (every
//! rank of a job step, every task of a workflow) do not hash it again. The signed digest
//! covers the whole partition: `exec --verify` costs 45 ms for a 53 MB image and 855 ms per
//! GiB on these machines, and eight ranks starting at once on 2 CPUs wait 3.6 s for a 1 GiB
//! one (benches/verify.sh, docs/performance.md).
//!
//! An entry is a file named by the SHA-256 of the image's identity (device, inode, size,
//! mtime and ctime to the nanosecond), the keys that verified it (their fingerprints) and
//! what asked (`--verify`, or the site's rule). A rename or a write changes the identity:
//! ctime cannot be set back by an unprivileged user, so an image changed in any way is
//! checked again. Only successes are kept; the directory must be the caller's own and closed
//! to others (another user who could write it could vouch for an image), else nothing is
//! remembered. The first launches on a node take turns on a lock per entry: one rank hashes,
//! the others then find its entry.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Result;
use image_tools::sif_sig::Keyring;
use sha2::{Digest, Sha256};

/// The memo directory: `verified/` in the launcher's cache directory.
fn dir() -> Option<PathBuf> {
    let root = image_tools::registry::Cache::default_dir().ok()?;
    let dir = root.join("verified");
    std::fs::create_dir_all(&root).ok()?;
    let _ = DirBuilder::new().mode(0o700).create(&dir);
    // Not followed if a link: the directory itself must be ours and private.
    let m = std::fs::symlink_metadata(&dir).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    (m.is_dir() && m.uid() == me && m.mode() & 0o077 == 0).then_some(dir)
}

/// What changes when the file is replaced or written.
fn identity(image: &Path) -> Result<String> {
    let m = std::fs::metadata(image)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", image.display()))?;
    Ok(format!(
        "{} {} {} {}.{} {}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Runs `check` (the full signature check of `image` with `keys`) unless an earlier run on
/// this node remembered the same image, unchanged, as verified with the same keys for the
/// same `purpose`; remembers a success.
pub fn checked(
    image: &Path,
    keys: &Keyring,
    purpose: &str,
    check: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let Some(dir) = dir() else {
        return check();
    };
    let before = identity(image)?;
    let mut fingerprints: Vec<String> = keys.keys.iter().map(|k| k.fingerprint()).collect();
    fingerprints.sort();
    let mut h = Sha256::new();
    for part in [before.as_str(), &fingerprints.join(","), purpose] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let name: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let entry = dir.join(&name);
    if entry.is_file() {
        return Ok(());
    }
    // Ranks starting together: one checks, the others wait here and then find its entry.
    let lock = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(format!("{name}.lock")));
    let _held = lock.ok().filter(lock_exclusive);
    if entry.is_file() {
        return Ok(());
    }
    check()?;
    if identity(image)? == before {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let text = format!("{}\n{before}\n", image.display());
        if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &entry).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(())
}

fn lock_exclusive(f: &File) -> bool {
    // SAFETY: flock on a descriptor we own; blocking is what is wanted (another rank's check
    // takes at most as long as ours would).
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) == 0 }
}
