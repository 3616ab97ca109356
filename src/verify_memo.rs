//! Signature checks remembered per image file, so that launches of a verified image (every
//! rank of a job step, every task of a workflow) do not hash it again. The signed digest
//! covers the whole partition: `exec --verify` costs 45 ms for a 53 MB image and 0.9 s per GiB
//! on these machines, and eight ranks starting at once on 2 CPUs waited 3.6 s for a 1 GiB one
//! (benches/verify.sh, docs/admin.md "What it costs").
//!
//! The image is opened once: its identity (device, inode, size, mtime and ctime to the
//! nanosecond) is taken from that open file, and the check reads that same file, so an entry
//! always describes the bytes that were checked, whatever the path leads to meanwhile. An
//! entry is named by the SHA-256 of that identity, every byte of the keys that may verify
//! (an OpenPGP key's subkeys included) and what asked (`--verify`, or the site's rule). A
//! rename or a write changes the identity: on the file systems the memo is used on, ctime is
//! the kernel's or the server's, and an unprivileged user cannot set it back; a write in the
//! same timestamp tick as the change recorded would not, so only an image whose last change
//! is [`SETTLED`] old is remembered. Elsewhere (FUSE
//! file systems such as sshfs or CVMFS, whose ctime the server or image chooses), nothing is
//! remembered. Only successes are kept, in `verified/` of the cache directory, opened once
//! without following links and used only when it is the caller's own and closed to others
//! (another user who could write it could vouch for an image). The first launches on a node
//! take turns on a lock per entry, for a bounded time: one rank hashes, the others then find
//! its entry.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use image_tools::sif_sig::Keyring;
use sha2::{Digest, Sha256};

/// Changes when what an entry means changes (the identity, the key material, the checks).
const FORMAT: &str = "launcher verify memo 2";
/// How long a launch waits for another one checking the same image before checking itself.
const LOCK_WAIT: Duration = Duration::from_secs(20);
/// How long before the check the image's last change (ctime) must be for a success to be
/// remembered. A change made after the check gets a ctime different from the recorded one
/// only if the clock has moved on by a timestamp tick since the recorded change: on ext4
/// with 128-byte inodes (and ext3, and NFS servers that keep seconds) a tick is 1 s, and a
/// file rewritten in the second it was checked in kept its identity, so the memo vouched
/// for bytes never checked (reproduced; `tests/signatures.rs`). The same as Git's "racily
/// clean" index entries. Assumes the file server's clock is not behind this node's by more.
const SETTLED: Duration = Duration::from_secs(2);

/// File systems whose inode numbers and ctime the kernel or a coherent server keeps
/// (statfs f_type): ext2/3/4, XFS, Btrfs, tmpfs, NFS, Lustre, GPFS, BeeGFS, CephFS, ZFS.
const TRUSTED_FS: [i64; 10] = [
    0xEF53,
    0x5846_5342,
    0x9123_683E,
    0x0102_1994,
    0x6969,
    0x0BD0_0BD0,
    0x4750_4653,
    0x1983_0326,
    0x00C3_6400,
    0x2FC1_2FC1,
];

/// The memo directory, open: `verified/` in the launcher's cache directory, if it is a
/// directory of the caller's (not a link) that no one else may enter.
fn open_dir() -> Option<File> {
    let root = image_tools::registry::Cache::default_dir().ok()?;
    let dir = root.join("verified");
    std::fs::create_dir_all(&root).ok()?;
    let _ = DirBuilder::new().mode(0o700).create(&dir);
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dir)
        .ok()?;
    let m = f.metadata().ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    (m.is_dir() && m.uid() == me && m.mode() & 0o077 == 0).then_some(f)
}

/// A name in the open memo directory, reached through its descriptor (a swap of the path
/// after it was opened changes nothing).
fn at(dir: &File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// The open image's identity, if its file system keeps one an owner cannot forge.
fn identity(file: &File) -> Option<String> {
    // SAFETY: statfs is plain data, for which all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes into `st`, which we own; the descriptor is open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let fs = st.f_type as i64;
    if !TRUSTED_FS.contains(&fs) {
        return None;
    }
    let m = file.metadata().ok()?;
    Some(image_tools::file_identity::FileIdentity::of(&m).to_string())
}

/// Runs `check` on `file` (the image at `image`, opened once by the caller, which then
/// launches that very file), unless an earlier run on this node remembered the same file,
/// unchanged, as verified with the same keys for the same `purpose`; remembers a success.
pub fn checked(
    image: &Path,
    file: &File,
    keys: &Keyring,
    purpose: &str,
    check: impl FnOnce(&File) -> Result<()>,
) -> Result<()> {
    // Before the identity is taken: a change after it gets a ctime at least this late.
    let opened = SystemTime::now();
    let (Some(dir), Some(before)) = (open_dir(), identity(file)) else {
        return check(file);
    };
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(before.as_bytes());
    h.update(purpose.as_bytes());
    let mut materials = Vec::new();
    for k in &keys.keys {
        let Some(m) = k.material() else {
            return check(file);
        };
        materials.push(Sha256::digest(&m).to_vec());
    }
    materials.sort();
    for m in &materials {
        h.update(m);
    }
    let name: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let entry = at(&dir, &name);
    if entry.is_file() {
        return Ok(());
    }
    // Ranks starting together: one checks, the others wait here (a while) and then find its
    // entry.
    let lock_path = at(&dir, &format!("{name}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        // Not blocking: a FIFO put at that name would hold the open for ever.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&lock_path)
        .ok();
    let held = lock.as_ref().is_some_and(wait_for_lock);
    if entry.is_file() {
        return Ok(());
    }
    let checked = check(file);
    if checked.is_ok()
        && identity(file).as_deref() == Some(before.as_str())
        && settled(file, opened)
    {
        let tmp = at(&dir, &format!(".{name}.{}", std::process::id()));
        let text = format!("{}\n{before}\n{purpose}\n", image.display());
        if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, &entry).is_err() {
            // A full disk: nothing half-written stays behind.
            let _ = std::fs::remove_file(&tmp);
        }
    }
    if held {
        // Whoever waits on this lock finds the entry, or checks on its own after a failure;
        // a later one needs no lock. (Removed after a failure too: a lock file per refused
        // image would pile up.)
        let _ = std::fs::remove_file(&lock_path);
    }
    checked
}

/// Whether the open file's last change was at least [`SETTLED`] before `opened` (when its
/// identity was about to be taken), so that any later change gets another ctime.
fn settled(file: &File, opened: SystemTime) -> bool {
    let Ok(m) = file.metadata() else {
        return false;
    };
    let nanos = u32::try_from(m.ctime_nsec()).map_or(0, |n| n.min(999_999_999));
    let Ok(secs) = u64::try_from(m.ctime()) else {
        return true; // before 1970: long settled
    };
    // Checked: a file server may send any time, and SystemTime's `+` panics past its range.
    UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos))
        .and_then(|c| c.checked_add(SETTLED))
        .is_some_and(|c| c <= opened)
}

/// Takes the lock, waiting at most [`LOCK_WAIT`] (a launch stopped while holding it must not
/// hold up the others for ever: they then check on their own).
fn wait_for_lock(f: &File) -> bool {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own, without blocking.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cache clean`: removes the remembered checks (those made more than `older` ago, or all;
/// a later launch checks again). Returns how many.
pub fn clean(cache_root: &Path, older: Option<Duration>) -> usize {
    let dir = cache_root.join("verified");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let old_enough = match older {
            None => true,
            Some(age) => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a >= age),
        };
        let is_entry = !e.file_name().to_string_lossy().ends_with(".lock");
        if old_enough && std::fs::remove_file(e.path()).is_ok() && is_entry {
            n += 1;
        }
    }
    n
}
