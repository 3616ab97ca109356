//! A sandbox directory as an image: a root file system on the host (an Apptainer sandbox, an
//! unpacked rootfs), read in place. The launcher bind-mounts it as the root; the planner reads
//! its passwd, group, env scripts and runscript through this view.
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` against the
//! directory, so the image's symlinks are followed as they will be inside the container: an
//! absolute `etc/passwd -> /etc/shadow` names the directory's own `etc/shadow`, never the
//! host's, and `..` stops at the directory. The reads run as the caller, so the kernel's
//! permission checks are the caller's own: nothing the user could not read anyway.

use crate::image::view::{Entry, EntryKind, ImageDesc, ImageView, OciConfig, DIRECTORY};
use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{fstat, SFlag};
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Largest file read whole (passwd, group, env scripts), as for SquashFS images.
const TEXT_FILE_MAX: u64 = 16 << 20;

/// What a root file system has at least one of; a directory with none of them is refused
/// (a typo'd path or a data directory would otherwise fail later, less clearly).
const ROOTFS_MARKERS: &[&str] = &["/bin", "/usr", "/.singularity.d"];

pub struct DirImage {
    desc: ImageDesc,
    /// The directory, opened once (O_PATH): every read resolves under it.
    root: OwnedFd,
}

impl DirImage {
    pub fn open(path: &Path) -> Result<DirImage> {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("image '{}' not found", path.display()))?;
        let shown = path.display().to_string();
        let root = nix::fcntl::open(
            &path,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .with_context(|| format!("cannot open the sandbox directory '{shown}'"))?;
        let image = DirImage {
            desc: ImageDesc {
                path,
                format: DIRECTORY,
                squashfs_offset: 0,
                file_size: 0,
            },
            root,
        };
        let mut is_rootfs = false;
        for m in ROOTFS_MARKERS {
            is_rootfs |= image.kind(m)? == Some(EntryKind::Dir);
        }
        if !is_rootfs {
            bail!(
                "'{shown}' is a directory but not a root file system (it has no /bin, /usr or /.singularity.d); an image is a .sif or .sqfs file, a sandbox directory, or docker://REF"
            );
        }
        Ok(image)
    }

    fn shown(&self) -> String {
        self.desc.path.display().to_string()
    }

    /// `path` opened under the root as if the root were `/`; None when it does not exist.
    fn open_in_root(&self, path: &str, flags: i32) -> Result<Option<OwnedFd>> {
        match openat2_in_root(&self.root, Path::new(path), flags) {
            Ok(fd) => Ok(Some(fd)),
            // Absent, a component that is not a directory, or a symlink loop: as a SquashFS
            // image answers for a path it cannot resolve.
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(None),
            Err(e) => Err(anyhow!("'{}': {path}: {e}", self.shown())),
        }
    }

    /// The regular file at `path` (symlinks followed inside), opened for reading, and its size.
    /// It is looked at first without being opened for reading, so a FIFO or a device node
    /// planted by a hostile image is never opened (that could block or have side effects).
    fn open_regular(&self, path: &str) -> Result<Option<(File, u64)>> {
        let Some(fd) = self.open_in_root(path, libc::O_PATH)? else {
            return Ok(None);
        };
        let st = fstat(&fd).with_context(|| format!("'{}': stat {path}", self.shown()))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Ok(None);
        }
        // Reopening through /proc/self/fd gives the very inode looked at, with no second
        // resolution of the path (which the directory's owner could change in between).
        let file = File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .with_context(|| format!("'{}': cannot read {path}", self.shown()))?;
        Ok(Some((file, st.st_size as u64)))
    }
}

impl ImageView for DirImage {
    fn desc(&self) -> &ImageDesc {
        &self.desc
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some((file, size)) = self.open_regular(path)? else {
            return Ok(None);
        };
        if size > TEXT_FILE_MAX {
            bail!(
                "'{}': {path} is {size} bytes; the launcher reads at most {} MiB of such files",
                self.shown(),
                TEXT_FILE_MAX >> 20
            );
        }
        let mut out = Vec::with_capacity(size as usize);
        // Bounded even if the file grows after the stat.
        file.take(TEXT_FILE_MAX)
            .read_to_end(&mut out)
            .with_context(|| format!("'{}': reading {path}", self.shown()))?;
        Ok(Some(out))
    }

    fn file_size(&self, path: &str) -> Result<Option<u64>> {
        let Some(fd) = self.open_in_root(path, libc::O_PATH)? else {
            return Ok(None);
        };
        let st = fstat(&fd).with_context(|| format!("'{}': stat {path}", self.shown()))?;
        Ok(
            (SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
                .then_some(st.st_size as u64),
        )
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let Some((file, _)) = self.open_regular(path)? else {
            bail!("'{}': {path} is not a regular file", self.shown());
        };
        let mut n = 0;
        while n < buf.len() {
            match file
                .read_at(&mut buf[n..], offset + n as u64)
                .with_context(|| format!("'{}': reading {path}", self.shown()))?
            {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>> {
        let Some(fd) = self.open_in_root(path, libc::O_PATH)? else {
            return Ok(None);
        };
        let st = fstat(&fd).with_context(|| format!("'{}': stat {path}", self.shown()))?;
        Ok(Some(
            match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                SFlag::S_IFDIR => EntryKind::Dir,
                SFlag::S_IFREG => EntryKind::File,
                _ => EntryKind::Other,
            },
        ))
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>> {
        let Some(fd) = self.open_in_root(path, libc::O_PATH | libc::O_NOFOLLOW)? else {
            return Ok(None);
        };
        let st = fstat(&fd).with_context(|| format!("'{}': stat {path}", self.shown()))?;
        Ok(Some(
            match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                SFlag::S_IFDIR => Entry::Dir {
                    mode: (st.st_mode & 0o7777) as u16,
                },
                SFlag::S_IFREG => Entry::File,
                SFlag::S_IFLNK => {
                    // An empty path reads the link the O_PATH descriptor itself is.
                    let target = nix::fcntl::readlinkat(&fd, "")
                        .with_context(|| format!("'{}': reading link {path}", self.shown()))?;
                    Entry::Symlink(target.to_string_lossy().into_owned())
                }
                _ => Entry::Other,
            },
        ))
    }

    fn list_dir(&self, path: &str) -> Result<Vec<String>> {
        let Some(fd) = self.open_in_root(path, libc::O_PATH | libc::O_DIRECTORY)? else {
            return Ok(Vec::new());
        };
        // Listed through the descriptor already resolved inside the root.
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .with_context(|| format!("'{}': listing {path}", self.shown()))?;
        let mut out = Vec::new();
        for e in listing {
            let e = e.with_context(|| format!("'{}': listing {path}", self.shown()))?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn oci_config(&self) -> Option<&OciConfig> {
        // A sandbox carries its environment and runscript in /.singularity.d, not a config.
        None
    }
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: symlinks and `..`
/// resolved as if `root` were `/`, and no /proc magic links, so nothing leads outside. The
/// one such open: the sandbox view's, and the child's bind sources and destinations
/// (apply/syscalls.rs).
pub fn openat2_in_root(root: &OwnedFd, path: &Path, flags: i32) -> nix::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // Only O_PATH opens: openat2 refuses other flags beside O_PATH (EINVAL).
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // A relative path, so that "/" itself is the root and not an empty name.
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c_path = CString::new(rel.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // With RESOLVE_IN_ROOT the kernel answers EAGAIN for a path with `..` when a rename or
    // a mount anywhere on the machine happened during the walk, as it cannot then prove the
    // `..` stayed inside (openat2(2): "the caller may choose to retry"). On a busy node that
    // is ordinary: a CI run with other tests renaming files failed a sandbox launch on a
    // link "../../../x" this way. Retried a bounded number of times, yielding between, so a
    // user renaming in a tight loop slows a launch but cannot make it spin for ever.
    let mut tries = 0;
    loop {
        // SAFETY: a valid fd, and a C string and open_how that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            // SAFETY: the kernel returned a new fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) });
        }
        let e = Errno::last();
        tries += 1;
        if e != Errno::EAGAIN || tries >= OPENAT2_RACE_TRIES {
            return Err(e);
        }
        std::thread::yield_now();
    }
}

/// How many times an open that raced with renames elsewhere is tried. Under a rename storm of
/// one thread on this 2-CPU machine (the unit test), about one open in ten failed once and
/// one in a thousand twice; none needed a third try.
const OPENAT2_RACE_TRIES: u32 = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn sandbox() -> (tempfile::TempDir, DirImage) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["bin", "etc", ".singularity.d/env", "data"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(r.join("etc/shadow"), "inside\n").unwrap();
        std::fs::write(
            r.join(".singularity.d/env/90-environment.sh"),
            "export A=1\n",
        )
        .unwrap();
        let img = DirImage::open(r).unwrap();
        (t, img)
    }

    #[test]
    fn reads_files_and_lists() {
        let (_t, img) = sandbox();
        assert_eq!(
            img.read_file("/etc/group").unwrap().unwrap(),
            b"root:x:0:\n"
        );
        assert_eq!(img.read_file("/etc/passwd").unwrap(), None);
        assert_eq!(img.kind("/etc").unwrap(), Some(EntryKind::Dir));
        assert_eq!(img.kind("/").unwrap(), Some(EntryKind::Dir));
        assert_eq!(img.file_size("/etc/group").unwrap(), Some(10));
        assert_eq!(
            img.list_dir("/.singularity.d/env").unwrap(),
            vec!["90-environment.sh"]
        );
        assert!(img.list_dir("/nope").unwrap().is_empty());
        let mut buf = [0u8; 4];
        assert_eq!(img.read_at("/etc/group", 2, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"ot:x");
        assert_eq!(img.desc().format, DIRECTORY);
    }

    #[test]
    fn symlinks_resolve_inside_the_directory() {
        let (t, img) = sandbox();
        let r = t.path();
        // Absolute and climbing links name the sandbox's own files, never the host's.
        symlink("/etc/shadow", r.join("etc/passwd")).unwrap();
        symlink("../../../../../../etc/shadow", r.join("data/up")).unwrap();
        symlink("/etc", r.join("data/etc")).unwrap();
        assert_eq!(img.read_file("/etc/passwd").unwrap().unwrap(), b"inside\n");
        assert_eq!(img.read_file("/data/up").unwrap().unwrap(), b"inside\n");
        assert_eq!(
            img.read_file("/data/etc/shadow").unwrap().unwrap(),
            b"inside\n"
        );
        assert_eq!(
            img.read_file("/../../etc/shadow").unwrap().unwrap(),
            b"inside\n"
        );
        assert_eq!(
            img.entry("/etc/passwd").unwrap(),
            Some(Entry::Symlink("/etc/shadow".into()))
        );
        // A link to a host-only file is absent inside.
        symlink("/proc/self/environ", r.join("data/env")).unwrap();
        assert_eq!(img.read_file("/data/env").unwrap(), None);
    }

    #[test]
    fn fifos_are_not_opened() {
        let (t, img) = sandbox();
        nix::unistd::mkfifo(&t.path().join("etc/passwd"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Opening a FIFO for reading would block until a writer came.
        assert_eq!(img.read_file("/etc/passwd").unwrap(), None);
        assert_eq!(img.kind("/etc/passwd").unwrap(), Some(EntryKind::Other));
    }

    /// Renames elsewhere make the kernel answer EAGAIN to a `..` walk under RESOLVE_IN_ROOT;
    /// a launch must not fail for that (it did once in CI, beside other tests).
    #[test]
    fn dotdot_walks_survive_renames_elsewhere() {
        let (t, img) = sandbox();
        symlink("../../../../etc/group", t.path().join("data/up")).unwrap();
        let busy = tempfile::tempdir().unwrap();
        let (a, b) = (busy.path().join("a"), busy.path().join("b"));
        std::fs::write(&a, "x").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renamer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(&a, &b).unwrap();
                    std::fs::rename(&b, &a).unwrap();
                }
            })
        };
        let results: Vec<_> = (0..5000)
            .map(|_| img.read_file("/data/up").map_err(|e| format!("{e:#}")))
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        renamer.join().unwrap();
        for r in results {
            assert_eq!(r.unwrap().as_deref(), Some(&b"root:x:0:\n"[..]));
        }
    }

    #[test]
    fn a_directory_that_is_not_a_rootfs_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("notes.txt"), "x").unwrap();
        let err = format!("{:#}", DirImage::open(t.path()).err().unwrap());
        assert!(err.contains("not a root file system"), "{err}");
        assert!(err.contains(&t.path().display().to_string()), "{err}");
    }
}
