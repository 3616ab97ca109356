//! The block cache: decompressed blocks of the command's program and its ELF interpreter,
//! kept in a per-user directory on the node so that the next launch of the same program
//! (a job array, a workflow's thousandth task) maps them instead of decompressing them.
//!
//! Decompressing a zstd busybox is most of what `/bin/true` costs on two CPUs (about 4 ms of
//! CPU for 2 MB; docs/performance-smallfiles.md). Only the read-ahead uses the cache
//! (`prefetch`): at most two files of 8 MiB per launch, so a launch that reads a data set
//! through the image writes nothing here.
//!
//! An entry holds the block as the image stores it and as it decompresses. It is used only
//! when its stored bytes equal, byte for byte, those the image holds now: a changed image
//! file at the same path, a block of another image whose name hash collides, a truncated or
//! foreign file are all misses, never wrong data. Names are a hash of the stored bytes, so
//! images sharing blocks (layers of one base) share entries; the hash only places entries,
//! and a hostile image that aims at another's name only evicts it.
//!
//! Entries are written to a temporary name and renamed, so concurrent launches read whole
//! entries or none; the directory is private to the user (`private_dir`); its size is
//! bounded by evicting the least recently used entries after a launch that wrote some. Every error is a
//! miss or a skipped write: the cache can only make a launch faster.
//!
//! Trust: the cache is as trustworthy as the user's own files. Any process of the user can
//! write it, a container the user ran included (with `--contain` too, through another of the
//! user's processes' `/proc/PID/root`), as it can write their home. Entries carry a CRC of
//! their decompressed bytes against damage, not against the user. Launches whose image
//! signatures were checked do not use it (launch.rs).

use image_tools::squashfs::{BlockBytes, BlockKey, BlockStore, LentBytes};
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// What an entry starts with (the format's version is in it).
const MAGIC: &[u8; 4] = b"LBC2";
/// MAGIC, compressor (u16), unused (u16), stored length (u32), decompressed length (u32),
/// CRC-32 of the decompressed bytes (u32), unused (u32).
const HEADER: usize = 24;
/// Longest block SquashFS allows (1 MiB), stored or decompressed.
const MAX_BLOCK: usize = 1 << 20;
/// Bytes of each end of a block that its name is hashed from: enough to tell blocks apart,
/// cheap next to the comparison of the whole block that decides a hit.
const NAME_SAMPLE: usize = 4096;
/// Temporary files older than this were left by a launcher killed while writing.
const STALE_TEMP: Duration = Duration::from_secs(60);

/// A file in the cache directory, as eviction and `cache clean` see it.
struct Entry {
    name: std::ffi::OsString,
    written: SystemTime,
    used: SystemTime,
    size: u64,
}

/// Where the cache lives and how big it may grow (launch.rs decides; `None`: no cache).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The user's cache directory, inside a per-user directory (created if missing).
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// An open block cache directory.
pub struct DiskBlockCache {
    dir: OwnedFd,
    max_bytes: u64,
    /// Entries are mapped, not read (`MappedFile`): on a local file system only.
    map: bool,
    loaded: AtomicU64,
    saved: AtomicU64,
}

impl DiskBlockCache {
    /// Opens (creating) the directory: its parent and itself must be private to `uid`.
    pub fn open(settings: &Settings, uid: u32) -> anyhow::Result<DiskBlockCache> {
        let (Some(parent), Some(name)) = (
            settings.dir.parent(),
            settings.dir.file_name().and_then(|n| n.to_str()),
        ) else {
            anyhow::bail!("'{}': not a cache directory", settings.dir.display());
        };
        let parent = crate::private_dir::open(parent, uid, "per-user directory", false)?;
        let dir = crate::private_dir::open_in(
            &parent,
            name,
            &settings.dir,
            uid,
            "block cache directory",
        )?;
        Ok(DiskBlockCache {
            map: local_file_system(&dir),
            dir,
            max_bytes: settings.max_bytes,
            loaded: AtomicU64::new(0),
            saved: AtomicU64::new(0),
        })
    }

    /// Blocks taken from the cache and blocks written to it so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.loaded.load(Ordering::Relaxed),
            self.saved.load(Ordering::Relaxed),
        )
    }

    /// After the read-ahead: if this launch wrote entries, evict the least recently used
    /// entries until the directory is within its bound again (and remove temporary files left
    /// by killed launchers).
    pub fn finish(&self) {
        if self.saved.load(Ordering::Relaxed) > 0 {
            let _ = self.evict();
        }
    }

    fn evict(&self) -> std::io::Result<()> {
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut total = 0u64;
        for e in self.entries()? {
            total += e.size;
            let stale_temp = e.name.as_encoded_bytes().starts_with(b".tmp.")
                && now
                    .duration_since(e.written)
                    .is_ok_and(|age| age > STALE_TEMP);
            if stale_temp {
                if self.remove(&e) {
                    total -= e.size;
                }
                continue;
            }
            entries.push(e);
        }
        // Least recently used first.
        entries.sort_by_key(|e| e.used);
        for e in entries {
            if total <= self.max_bytes {
                break;
            }
            if self.remove(&e) {
                total -= e.size;
            }
        }
        Ok(())
    }

    /// Entries (their count and allocated bytes) last used before `older` ago (all without
    /// `older`), removed when `remove`: for `launcher cache list|clean`.
    pub fn sweep(&self, older: Option<Duration>, remove: bool) -> (u64, u64) {
        let now = SystemTime::now();
        let (mut n, mut bytes) = (0, 0);
        for e in self.entries().unwrap_or_default() {
            let age = now.duration_since(e.used).unwrap_or_default();
            if older.is_some_and(|o| age < o) {
                continue;
            }
            if !remove || self.remove(&e) {
                n += 1;
                bytes += e.size;
            }
        }
        (n, bytes)
    }

    /// What the directory holds, listed through its descriptor (its /proc link) and looked
    /// at through it.
    fn entries(&self) -> std::io::Result<Vec<Entry>> {
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))?;
        let time = |secs: i64, nsecs: i64| {
            SystemTime::UNIX_EPOCH
                + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
        };
        Ok(listing
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let st = nix::sys::stat::fstatat(
                    &self.dir,
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ok()?;
                let written = time(st.st_mtime, st.st_mtime_nsec);
                Some(Entry {
                    name,
                    written,
                    // Reading an entry moves its access time (on a `relatime` mount, the
                    // default, once a day at most), which costs a hit nothing; on a
                    // `noatime` mount this is when it was written.
                    used: written.max(time(st.st_atime, st.st_atime_nsec)),
                    // What it takes (a small entry takes whole pages of a tmpfs).
                    size: (st.st_blocks.max(0) as u64).saturating_mul(512),
                })
            })
            .collect())
    }

    fn remove(&self, e: &Entry) -> bool {
        unlinkat(&self.dir, e.name.as_os_str(), UnlinkatFlags::NoRemoveDir).is_ok()
    }

    /// The entry's name: a hash of the compressor, the length and both ends of the block.
    fn name(key: &BlockKey<'_>) -> String {
        let s = key.stored;
        // SipHash with fixed keys: the same name in every process of every launcher build
        // made with one Rust release (another release may name entries anew: only misses).
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        key.compressor.hash(&mut h);
        s.len().hash(&mut h);
        s[..s.len().min(NAME_SAMPLE)].hash(&mut h);
        s[s.len().saturating_sub(NAME_SAMPLE)..].hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// The entry's decompressed bytes, once it is whole and its stored bytes are the image's:
    /// mapped from its file, or read where entries are not mapped.
    fn read_entry(&self, name: &str, key: &BlockKey<'_>) -> Option<LoadedEntry> {
        let fd = openat(
            &self.dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        let st = nix::sys::stat::fstat(&fd).ok()?;
        let size = usize::try_from(st.st_size).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || !(HEADER..=HEADER + 2 * MAX_BLOCK).contains(&size)
        {
            return None;
        }
        let bytes = if self.map {
            EntryBytes::Mapped(MappedFile::map(&fd, size)?)
        } else {
            let mut all = Vec::with_capacity(size);
            File::from(fd)
                .take(size as u64 + 1)
                .read_to_end(&mut all)
                .ok()?;
            EntryBytes::Read(all)
        };
        let from = data_offset(bytes.whole(), key)?;
        Some(LoadedEntry { bytes, from })
    }

    fn write_entry(&self, name: &str, key: &BlockKey<'_>, data: &[u8]) -> Option<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = format!(
            ".tmp.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let fd = openat(
            &self.dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .ok()?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(MAGIC);
        header[4..6].copy_from_slice(&key.compressor.to_le_bytes());
        header[8..12].copy_from_slice(&(key.stored.len() as u32).to_le_bytes());
        header[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
        header[16..20].copy_from_slice(&crc32(data).to_le_bytes());
        let mut file = File::from(fd);
        let written = file
            .write_all(&header)
            .and_then(|()| file.write_all(key.stored))
            .and_then(|()| file.write_all(data));
        let renamed = written.is_ok() && renameat(&self.dir, tmp.as_str(), &self.dir, name).is_ok();
        if !renamed {
            let _ = unlinkat(&self.dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return None;
        }
        Some(())
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// Where the decompressed block of an entry starts, if `whole` is an entry for `key`: of
/// the size its header says, nothing after it, the same stored bytes and compressor, and
/// decompressed bytes that match its CRC.
fn data_offset(whole: &[u8], key: &BlockKey<'_>) -> Option<usize> {
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(whole.get(at..at + 4)?.try_into().ok()?))
    };
    let (stored_len, data_len, data_crc) = (field(8)? as usize, field(12)? as usize, field(16)?);
    if whole.get(..4)? != MAGIC
        || u16::from_le_bytes([whole[4], whole[5]]) != key.compressor
        || stored_len != key.stored.len()
        || data_len > MAX_BLOCK
        // All of it, and nothing after it: a file longer than its header says is not an entry.
        || whole.len() != HEADER + stored_len + data_len
    {
        return None;
    }
    // The comparison that makes a hit: these are the bytes the image holds now.
    if whole[HEADER..HEADER + stored_len] != *key.stored {
        return None;
    }
    // Entries are renamed into place without fsync: after a crash one may hold zeros or a
    // torn write. The CRC makes that a miss (about 10 us for 128 KiB).
    (crc32(&whole[HEADER + stored_len..]) == data_crc).then_some(HEADER + stored_len)
}

/// Whether the directory is on a local file system, where entries are mapped. Mapped, not
/// read: reading a warm launch's 16 blocks (2 MB of busybox) into new memory was mostly page
/// faults, 80-160 us a block in the read-ahead threads against 30 us unit-timed; mapped, the
/// pages are the page cache's, there already, and a warm launch went from 10.8 ms of CPU to
/// 7.0 (`perf stat`, 80 launches) and from 0.54 to 0.45 of ch-run's time (paired, 200
/// rounds, 2026-12-05). Elsewhere (NFS, a parallel file system) a page of a mapping can fail
/// later (another node removed the entry, the server went away) and that read would end the
/// launcher with SIGBUS, where a failed read is only a miss.
fn local_file_system(dir: &OwnedFd) -> bool {
    use nix::sys::statfs::{fstatfs, FsType};
    // The magic numbers themselves: nix names some of them for glibc targets only (the static
    // musl build has no XFS_SUPER_MAGIC).
    let local = [
        FsType(0x0102_1994), // tmpfs
        FsType(0xef53),      // ext2, ext3, ext4
        FsType(0x5846_5342), // xfs
        FsType(0x9123_683e), // btrfs
    ];
    fstatfs(dir).is_ok_and(|fs| local.contains(&fs.filesystem_type()))
}

/// A loaded entry: its file's bytes, lent from byte `from` on (the decompressed block).
struct LoadedEntry {
    bytes: EntryBytes,
    from: usize,
}

enum EntryBytes {
    Mapped(MappedFile),
    Read(Vec<u8>),
}

impl EntryBytes {
    fn whole(&self) -> &[u8] {
        match self {
            EntryBytes::Mapped(m) => m.bytes(),
            EntryBytes::Read(v) => v,
        }
    }
}

impl LentBytes for LoadedEntry {
    fn bytes(&self) -> &[u8] {
        &self.bytes.whole()[self.from..]
    }
}

/// An entry file mapped read-only, for as long as its block is kept. Removing or replacing
/// the entry file (eviction, another launch) leaves the mapping whole. What the user's own
/// processes can still do, as they can to all of the user's files (docs/security.md): write
/// the entry in place, which changes what launches holding it serve from then on (the checks
/// were made when it was loaded), or truncate it, which ends such a launch with SIGBUS at its
/// next read of a page past the new end. The stores into the kernel's page cache read the
/// mapping in the kernel, where such a page is an EFAULT, not a signal.
struct MappedFile {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this struct (unmapped once, by Drop); this
// process never writes it, so any thread may read it.
unsafe impl Send for MappedFile {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    fn map(fd: &OwnedFd, len: usize) -> Option<MappedFile> {
        // SAFETY: a new read-only private mapping of `len` bytes (at least HEADER) of a
        // regular file the caller checked, at an address the kernel picks; no existing memory
        // is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        Some(MappedFile {
            base: std::ptr::NonNull::new(base)?,
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable at `base` until Drop, and this process never
        // writes them. Only the user's own processes can change them, through the file (see
        // the type's note); the readers (the checks, copies into replies and stores) take the
        // bytes as they find them and rely on no two reads agreeing.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made; no reference into it outlives `self`
        // (they borrow it).
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}

impl BlockStore for DiskBlockCache {
    fn load(&self, key: &BlockKey<'_>) -> Option<BlockBytes> {
        if key.stored.len() > MAX_BLOCK {
            return None;
        }
        let data = self.read_entry(&Self::name(key), key)?;
        self.loaded.fetch_add(1, Ordering::Relaxed);
        Some(BlockBytes::Lent(Box::new(data)))
    }

    fn save(&self, key: &BlockKey<'_>, data: &[u8]) {
        if key.stored.len() > MAX_BLOCK || data.len() > MAX_BLOCK {
            return;
        }
        if self.write_entry(&Self::name(key), key, data).is_some() {
            self.saved.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The cache directory for `uid`: in the user's own runtime directory when it has one (a
/// tmpfs, in memory), else in `/tmp/launcher-UID` beside the rendezvous files.
pub fn default_dir(env: &[(String, String)], uid: u32) -> PathBuf {
    let run = crate::env_list::get_nonempty(env, "XDG_RUNTIME_DIR");
    match crate::private_dir::users_runtime_dir(run, uid) {
        Some(run) => run.join("launcher").join("blocks"),
        None => PathBuf::from(format!("/tmp/launcher-{uid}/blocks")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cache(dir: &Path, max_bytes: u64) -> DiskBlockCache {
        let settings = Settings {
            dir: dir.join("user").join("blocks"),
            max_bytes,
        };
        DiskBlockCache::open(&settings, nix::unistd::getuid().as_raw()).unwrap()
    }

    fn key(stored: &[u8]) -> BlockKey<'_> {
        BlockKey {
            compressor: 6,
            stored,
        }
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("user").join("blocks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[test]
    fn a_saved_block_is_loaded_by_a_later_opening() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 20);
        assert!(c.load(&key(b"stored")).is_none());
        c.save(&key(b"stored"), b"decompressed");
        let later = cache(tmp.path(), 1 << 20);
        assert_eq!(
            later.load(&key(b"stored")).as_deref(),
            Some(&b"decompressed"[..])
        );
        assert_eq!(later.counts(), (1, 0));
        assert_eq!(c.counts(), (0, 1));
    }

    /// The name only places an entry: one whose stored bytes differ (a hash collision, or
    /// the image changed under the same path) is a miss, as is another compressor's.
    #[test]
    fn an_entry_is_used_only_for_the_same_stored_bytes_and_compressor() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 20);
        c.save(&key(b"stored A"), b"A");
        let name = DiskBlockCache::name(&key(b"stored A"));
        // Another block's entry under A's name.
        let other = DiskBlockCache::name(&key(b"stored B"));
        c.save(&key(b"stored B"), b"B");
        let dir = tmp.path().join("user").join("blocks");
        std::fs::rename(dir.join(&other), dir.join(&name)).unwrap();
        assert!(c.load(&key(b"stored A")).is_none());
        c.save(&key(b"stored A"), b"A");
        let gzip = BlockKey {
            compressor: 1,
            stored: b"stored A",
        };
        assert!(c.load(&gzip).is_none());
        assert_eq!(c.load(&key(b"stored A")).as_deref(), Some(&b"A"[..]));
    }

    #[test]
    fn damaged_entries_are_misses() {
        // Mapped (a local file system, as here) and read (elsewhere): the same checks.
        for map in [true, false] {
            damaged_entries_are_misses_when(map);
        }
    }

    fn damaged_entries_are_misses_when(map: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cache(tmp.path(), 1 << 20);
        c.map = map;
        let dir = tmp.path().join("user").join("blocks");
        let path = dir.join(DiskBlockCache::name(&key(b"stored")));
        c.save(&key(b"stored"), b"decompressed");
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(
            c.load(&key(b"stored")).as_deref(),
            Some(&b"decompressed"[..])
        );
        for cut in [0, 3, HEADER, whole.len() - 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            assert!(c.load(&key(b"stored")).is_none(), "cut at {cut}");
        }
        let mut longer = whole.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(c.load(&key(b"stored")).is_none(), "a longer file");
        // Decompressed bytes changed (a torn write after a crash, a flipped bit): the CRC.
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(
            c.load(&key(b"stored")).is_none(),
            "changed decompressed bytes"
        );
        std::fs::write(&path, &whole).unwrap();
        assert!(c.load(&key(b"stored")).is_some(), "the whole entry again");
        // A FIFO where an entry should be: a miss at once, not a hang.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
        assert!(c.load(&key(b"stored")).is_none());
    }

    /// After a launch that wrote, the oldest entries go until the directory is within its
    /// bound; temporary files of killed launchers go once stale.
    #[test]
    fn the_size_bound_holds_after_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let block = vec![7u8; 1000];
        let dir = tmp.path().join("user").join("blocks");
        // What one entry takes on this file system (whole blocks of it).
        cache(tmp.path(), 0).save(&key(b"probe"), &block);
        let probe = dir.join(DiskBlockCache::name(&key(b"probe")));
        let entry =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&probe).unwrap()) * 512;
        std::fs::remove_file(&probe).unwrap();
        let c = cache(tmp.path(), 5 * entry);
        let age = |path: &Path, secs: u64| {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let times = std::fs::FileTimes::new().set_accessed(t).set_modified(t);
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_times(times)
                .unwrap();
        };
        for i in 0..20u32 {
            c.save(&key(&i.to_le_bytes()), &block);
            // Distinct modification times, oldest first.
            let name = DiskBlockCache::name(&key(&i.to_le_bytes()));
            age(&dir.join(name), 1_000_000 + u64::from(i));
        }
        let stale = dir.join(".tmp.1.1");
        std::fs::write(&stale, b"half").unwrap();
        age(&stale, 1_000_000);
        // The oldest entry, read: its access time moves (unless the file system is mounted
        // noatime), and it counts as the most recently used.
        let first = dir.join(DiskBlockCache::name(&key(&0u32.to_le_bytes())));
        assert!(c.load(&key(&0u32.to_le_bytes())).is_some());
        let atime_moved = std::fs::metadata(&first)
            .unwrap()
            .accessed()
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .is_ok_and(|d| d > Duration::from_secs(3600));
        c.finish();
        let left = entries(tmp.path());
        assert_eq!(left.len(), 5, "{left:?}");
        let kept: Vec<u32> = match atime_moved {
            true => vec![0, 16, 17, 18, 19],
            false => vec![15, 16, 17, 18, 19],
        };
        for i in kept {
            assert!(
                c.load(&key(&i.to_le_bytes())).is_some(),
                "recently used entry {i} evicted"
            );
        }
    }

    /// A loaded block is a mapping of its entry: it stays whole when the entry is removed or
    /// replaced while the block is in use (eviction by another launch, a rewrite of the name).
    #[test]
    fn a_loaded_block_outlives_its_entry_file() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 20);
        let path = tmp
            .path()
            .join("user")
            .join("blocks")
            .join(DiskBlockCache::name(&key(b"stored")));
        c.save(&key(b"stored"), b"decompressed");
        let held = c.load(&key(b"stored")).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&held[..], b"decompressed");
        c.save(&key(b"stored"), b"other bytes!");
        assert_eq!(&held[..], b"decompressed");
        assert_eq!(
            c.load(&key(b"stored")).as_deref(),
            Some(&b"other bytes!"[..])
        );
    }

    /// Launches writing and reading the same blocks at once see whole entries or none.
    #[test]
    fn concurrent_writers_and_readers_see_whole_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let c = std::sync::Arc::new(cache(tmp.path(), 64 << 20));
        let block: Vec<u8> = (0..128 * 1024).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (c, block) = (c.clone(), block.clone());
                s.spawn(move || {
                    for i in 0..200u32 {
                        let stored = (i % 8).to_le_bytes();
                        match c.load(&key(&stored)) {
                            Some(d) => assert_eq!(&d[..], &block[..]),
                            None => c.save(&key(&stored), &block),
                        }
                    }
                });
            }
        });
        assert_eq!(entries(tmp.path()).len(), 8);
    }
}
