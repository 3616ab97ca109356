//! Image sources at run time, as Apptainer takes them: `exec docker://alpine:3.20 ...` (and
//! `docker-archive:`, `oci-archive:`, `oci:`, `tar:`) builds a SIF once into the cache and runs
//! that; `oras://` is a SIF already, fetched into the blob cache and run from there.
//!
//! The runtime crate only reads images; pulling and converting need image-tools' `build`
//! feature, so this lives in the binary. Cached SIFs are `<cache>/sif/<key>.sif`, the key being
//! the platform manifest's digest for `docker://` (a moved tag gets a new image; an unchanged
//! one is reused without converting again), and the archive's identity for the others. Many
//! ranks of a job may start at once: one converts, under a lock, into a temporary name in the
//! same directory and renames it into place; the others wait for the lock and find it there.

use crate::build_cmd;
use anyhow::{Context, Result};
use image_tools::build::BuildSource;
use image_tools::registry::{self, Cache, PullOptions, Reference};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Prefixes of the sources that are built into the cache before a launch.
const PREFIXES: &[&str] = &[
    "docker://",
    "docker-archive:",
    "oci-archive:",
    "oci:",
    "tar:",
    "oras://",
];

/// Whether `image` names a source to build rather than an image file or directory. An
/// existing path wins (a directory may be called `oci:x`).
pub fn is_source(image: &Path) -> bool {
    let s = image.to_string_lossy();
    PREFIXES.iter().any(|p| s.starts_with(p)) && !image.exists()
}

/// The cached SIF for `spec`, built first if it is not there yet. `insecure`: plain HTTP to
/// the registry. `debug`: say what was reused or built.
pub fn resolve(spec: &str, insecure: bool, debug: bool) -> Result<PathBuf> {
    let arch = build_cmd::host_arch();
    let pull = PullOptions::new(insecure);
    if spec.starts_with("oras://") {
        // A SIF file already: fetched into the blob cache (once; its digest checked) and run
        // from there, nothing converted.
        let r = image_tools::registry::oras::parse(spec)?;
        let pulled = image_tools::registry::oras::pull_sif(&r, &pull)
            .with_context(|| format!("fetching {spec}"))?;
        if debug {
            eprintln!(
                "launcher: debug: {spec} (manifest {}): SIF {} {}",
                pulled.manifest_digest,
                pulled.path.display(),
                if pulled.downloaded {
                    "downloaded"
                } else {
                    "cached"
                }
            );
        }
        return Ok(pulled.path);
    }
    let (key, source) = if spec.starts_with("docker://") {
        let mut r = Reference::parse(spec)?;
        let digest = registry::resolve(&r, arch, &pull)
            .with_context(|| format!("resolving {spec} in its registry"))?;
        // Built from exactly the manifest the key names, even if the tag moves meanwhile.
        r.digest = Some(digest.clone());
        (digest, BuildSource::Registry(r))
    } else {
        let source = BuildSource::parse(spec)?;
        (archive_key(spec, &source)?, source)
    };
    let hex = key.trim_start_matches("sha256:");
    let dir = Cache::default_dir()?.join("sif");
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the image cache {}", dir.display()))?;
    let sif = dir.join(format!("{hex}.sif"));
    if sif.is_file() {
        if debug {
            eprintln!(
                "launcher: debug: {spec} ({key}): cached image {}, no conversion",
                sif.display()
            );
        }
        return Ok(sif);
    }
    let lock_path = dir.join(format!("{hex}.lock"));
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // Other ranks converting the same image: wait for them, then use what they made.
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if sif.is_file() {
        if debug {
            eprintln!(
                "launcher: debug: {spec} ({key}): converted by another launch into {}",
                sif.display()
            );
        }
        return Ok(sif);
    }
    remove_stale_temporaries(&dir);
    // In the same directory, so the rename is atomic; a reader sees no file or a whole one.
    // Named *.sif: the writer tells the format by the extension.
    let tmp = dir.join(format!(".{hex}.tmp-{}.sif", std::process::id()));
    eprintln!("launcher: converting {spec} ({key}) into {}", sif.display());
    let built = build_cmd::convert(&tmp, &source, pull, arch);
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("converting {spec}")));
    }
    std::fs::rename(&tmp, &sif)
        .with_context(|| format!("renaming {} to {}", tmp.display(), sif.display()))?;
    Ok(sif)
}

/// For an archive or layout: its path and identity (device, inode, size, modification time),
/// so a changed archive is converted again.
fn archive_key(spec: &str, source: &BuildSource) -> Result<String> {
    let path = match source {
        BuildSource::Oci(image_tools::oci::Source::DockerArchive(p))
        | BuildSource::Oci(image_tools::oci::Source::OciArchive(p))
        | BuildSource::Oci(image_tools::oci::Source::RootfsTar(p)) => p.clone(),
        // A layout changes through its index.
        BuildSource::Oci(image_tools::oci::Source::OciLayout { dir, .. }) => dir.join("index.json"),
        _ => anyhow::bail!("'{spec}': not an image source"),
    };
    let canon = std::fs::canonicalize(&path)
        .with_context(|| format!("'{spec}': cannot read {}", path.display()))?;
    let m = std::fs::metadata(&canon).with_context(|| format!("stat {}", canon.display()))?;
    let mut h = Sha256::new();
    h.update(format!(
        "{spec}\0{}\0{}:{}:{}:{}.{}",
        canon.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ));
    Ok(format!("{:x}", h.finalize()))
}

/// The converted images in the cache at `root` (those not written for `older`, when given):
/// how many and their bytes; with `remove`, removed. A launch already running from one keeps
/// it open and is not disturbed (the file goes with its last descriptor).
pub fn cached_images(
    root: &Path,
    older: Option<std::time::Duration>,
    remove: bool,
) -> Result<(usize, u64)> {
    let dir = root.join("sif");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let (mut n, mut bytes) = (0, 0);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sif") || name.starts_with('.') {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        let age = m.modified().ok().and_then(|t| t.elapsed().ok());
        if older.is_some_and(|o| age.is_none_or(|a| a < o)) {
            continue;
        }
        if remove {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
        n += 1;
        bytes += m.len();
    }
    Ok((n, bytes))
}

/// Temporary files of conversions whose launcher is gone (killed while converting).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_suffix(".sif")
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_told_from_paths() {
        assert!(is_source(Path::new("docker://alpine:3.20")));
        assert!(is_source(Path::new("oci-archive:/x.tar")));
        assert!(!is_source(Path::new("/images/a.sif")));
        assert!(!is_source(Path::new("docker.sif")));
    }
}
