//! Bounded reads of host files the launcher parses (ld.so.cache, CDI specs): a leaf used by
//! `gather` and `linker`, so that a hostile or odd file cannot hang or exhaust a launch.

use anyhow::{Context, Result};
use std::path::Path;

/// Read a host file the launcher parses (ld.so.cache, CDI specs): a regular file of at most
/// `limit` bytes. Opened non-blocking so a FIFO cannot hang the launch, and never read past the
/// limit, so `/dev/zero` named by a config cannot exhaust memory.
pub fn read_host_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{}: not a regular file", path.display());
    }
    if meta.len() > limit {
        anyhow::bail!(
            "{}: {} bytes, more than the {limit} this file may have",
            path.display(),
            meta.len()
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}
