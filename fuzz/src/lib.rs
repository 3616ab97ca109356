//! What the fuzz targets share: a scratch file per process for the input (the launcher
//! opens images by path), a walk of an opened image through the same `Archive`
//! calls the FUSE server (`launcher/src/fuse/server.rs`) and the planner make, and a plan
//! built from a fuzzed site config or injection (`plan_both`).

use image_tools::squashfs::{Archive, FileType, Inode};
use launcher_runtime::gather::injection::Injection;
use launcher_runtime::gather::site_config::SiteConfig;
use launcher_runtime::image::view::{Entry, EntryKind, ImageDesc, ImageView, OciConfig};
use launcher_runtime::options::{Action, LaunchOptions};
use std::collections::HashSet;
use std::path::PathBuf;

/// A per-process scratch directory, on tmpfs when there is one (inputs are written
/// to disk at every run). libFuzzer ends a run with exit(), so nothing removes it then: the
/// first call of each run removes those of runs that are over (their process is gone).
pub fn scratch() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix("launcher-fuzz-") else {
                    continue;
                };
                if pid.parse::<u32>().is_ok()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    make_writable(&e.path());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        base.join(format!("launcher-fuzz-{}", std::process::id()))
    });
    let _ = std::fs::create_dir_all(dir);
    dir.clone()
}

/// Writes the input to this process's image file and returns its path.
pub fn image_file(data: &[u8]) -> PathBuf {
    let p = scratch().join("input.img");
    if std::fs::write(&p, data).is_err() {
        // A full tmpfs is the machine's problem, not a finding.
        std::process::abort();
    }
    p
}

/// Bytes read from files per input: enough for every block of the seeds, small
/// enough that a crafted 1 TB file costs no more than a real one.
const READ_BUDGET: usize = 8 << 20;
/// Inodes visited per input.
const NODE_BUDGET: usize = 20_000;
/// The kernel reads with requests of at most this size (fuse max_read).
const CHUNK: usize = 128 << 10;

/// Walks the whole tree from the root with the FUSE server's operations: readdir
/// (read_dir), lookup of every name, getattr (inode), getxattr/listxattr (xattrs),
/// readlink (read_link), read (read_at, in kernel-sized chunks and at odd offsets),
/// plus the planner's path resolution. Errors are fine; panics, hangs and huge
/// allocations are what the fuzzer looks for.
pub fn walk(a: &Archive) {
    let sb = a.superblock();
    let _ = (sb.block_size, sb.inode_count, sb.has_xattrs());
    for p in [
        &b"/bin/sh"[..],
        b"/etc/passwd",
        b"/usr/bin/env",
        b"/data/abs-link",
        b"/data/rel-link/../..",
        b"/.singularity.d/runscript",
    ] {
        let _ = a.resolve(p);
        let _ = a.resolve_nofollow(p);
    }
    let _ = a.read_file(b"/etc/passwd");
    let _ = a.inode_ref_by_number(1);
    let Ok(root) = a.root() else { return };
    let mut seen = HashSet::new();
    let mut stack: Vec<(Inode, usize)> = vec![(root, 0)];
    let mut nodes = 0usize;
    let mut budget = READ_BUDGET;
    let mut buf = vec![0u8; CHUNK];
    while let Some((dir, depth)) = stack.pop() {
        // The kernel never asks for the same directory twice through one path walk;
        // a crafted cycle is cut here as the kernel's dcache would.
        if !seen.insert(dir.inode_ref) || depth > 256 {
            continue;
        }
        let _ = a.xattrs(&dir);
        let Ok(entries) = a.read_dir(&dir) else {
            continue;
        };
        for e in entries {
            nodes += 1;
            if nodes > NODE_BUDGET {
                return;
            }
            let _ = a.lookup(&dir, &e.name);
            let _ = a.inode_ref_by_number(e.inode_number);
            let Ok(ino) = a.inode(e.inode_ref) else {
                continue;
            };
            let _ = (ino.st_mode(), ino.device(), ino.parent_inode_number());
            if ino.has_xattrs() {
                let _ = a.xattrs(&ino);
            }
            match ino.kind {
                FileType::Dir => stack.push((ino, depth + 1)),
                FileType::Symlink => {
                    let _ = a.read_link(&ino);
                }
                FileType::File => {
                    // A read past the end and one at an odd offset, then the file in order.
                    let _ = a.read_at(&ino, ino.size, &mut buf[..1]);
                    let _ = a.read_at(&ino, ino.size / 2 + 1, &mut buf[..4097]);
                    let mut off = 0u64;
                    while off < ino.size && budget > 0 {
                        let n = CHUNK.min(budget);
                        match a.read_at(&ino, off, &mut buf[..n]) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                off += k as u64;
                                budget = budget.saturating_sub(k);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Checks that staging into `stage_dir` (scratch()/stage/x) wrote nothing beside it,
/// then removes it. A write through a symlink or `..` would show up as a new name in
/// scratch() or scratch()/stage.
pub fn check_contained(stage_dir: &std::path::Path) {
    let names = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let top = scratch();
    let stage = top.join("stage");
    let at_top: Vec<String> = names(&top)
        .into_iter()
        // input.img, and the config and CDI targets' files should this pid's directory be
        // left from one of their runs.
        .filter(|n| !matches!(n.as_str(), "input.img" | "stage" | "xdg" | "cdi"))
        .collect();
    let at_stage: Vec<String> = names(&stage).into_iter().filter(|n| n != "x").collect();
    assert!(
        at_top.is_empty() && at_stage.is_empty(),
        "staging wrote outside its directory: {at_top:?} {at_stage:?}"
    );
    if std::fs::remove_dir_all(stage_dir).is_err() {
        // Not root: modes from the layer may make directories unwritable for their owner.
        make_writable(stage_dir);
        let _ = std::fs::remove_dir_all(stage_dir);
    }
}

fn make_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

/// The smallest image a plan can be built for: /bin/sh and /bin/true, nothing else, so
/// every destination a fuzzed config or CDI spec names is a missing mount point that the
/// planner must turn into a virtual node.
pub struct TinyImage {
    desc: ImageDesc,
}

impl Default for TinyImage {
    fn default() -> Self {
        TinyImage {
            desc: ImageDesc {
                path: "/images/fuzz.sif".into(),
                format: "SquashFS",
                squashfs_offset: 0,
                file_size: 4096,
            },
        }
    }
}

const TINY_FILES: &[&str] = &["/bin/sh", "/bin/true"];

impl ImageView for TinyImage {
    fn desc(&self) -> &ImageDesc {
        &self.desc
    }
    fn read_file(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(TINY_FILES.contains(&path).then(Vec::new))
    }
    fn file_size(&self, path: &str) -> anyhow::Result<Option<u64>> {
        Ok(TINY_FILES.contains(&path).then_some(0))
    }
    fn read_at(&self, _path: &str, _offset: u64, _buf: &mut [u8]) -> anyhow::Result<usize> {
        Ok(0)
    }
    fn kind(&self, path: &str) -> anyhow::Result<Option<EntryKind>> {
        Ok(match path {
            "/" | "/bin" => Some(EntryKind::Dir),
            p if TINY_FILES.contains(&p) => Some(EntryKind::File),
            _ => None,
        })
    }
    fn entry(&self, path: &str) -> anyhow::Result<Option<Entry>> {
        Ok(match self.kind(path)? {
            Some(EntryKind::Dir) => Some(Entry::Dir { mode: 0o755 }),
            Some(_) => Some(Entry::File),
            None => None,
        })
    }
    fn list_dir(&self, path: &str) -> anyhow::Result<Vec<String>> {
        Ok(match path {
            "/" => vec!["bin".into()],
            "/bin" => vec!["sh".into(), "true".into()],
            _ => Vec::new(),
        })
    }
    fn oci_config(&self) -> Option<&OciConfig> {
        None
    }
}

/// Builds the launch plan of `exec /bin/true` on `TinyImage` for a caller with this site
/// config and injection (home: the scratch directory), without and with --contain (the
/// device rules differ), and prints it as --debug does: the site's binds, devices and
/// environment edits and the injection's nodes, mounts and variables all go through the
/// planner's host-integration steps and the mount-point planning. Errors are fine (a bind
/// destination that is not absolute, a missing source).
pub fn plan_both(site: SiteConfig, injection: Injection) {
    let image = TinyImage::default();
    for contain in [false, true] {
        let mut o = LaunchOptions::new(
            "/images/fuzz.sif".into(),
            Action::Exec(vec!["/bin/true".into()]),
        );
        o.contain = contain;
        let _ = launcher_runtime::fuzzing::plan_text(
            &o,
            &scratch(),
            site.clone(),
            injection.clone(),
            &image,
        );
    }
}
