//! The glibc guard: refuse to inject a host library that the image's glibc cannot load.
//!
//! Host GPU and MPI libraries are built against the host's glibc; an image with an older one
//! fails at dlopen time with "version `GLIBC_2.34' not found", often deep inside a CUDA or
//! MPI call. We read the version needs of each injected file (ELF `.gnu.version_r`) and the
//! versions the image's `libc.so.6` defines (`.gnu.version_d`) and refuse up front, naming
//! both.

use crate::image::view::ImageView;
use anyhow::{Context, Result};
use std::fmt;
use std::path::Path;

/// A `GLIBC_x.y` version, comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlibcVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GlibcVersion {
    /// `GLIBC_2.34` → 2.34; other names (GLIBC_PRIVATE, GLIBC_ABI_DT_RELR) → None.
    pub fn parse_tag(tag: &str) -> Option<GlibcVersion> {
        let v = tag.strip_prefix("GLIBC_")?;
        let mut parts = v.split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = match parts.next() {
            Some(p) => p.ok()?,
            None => 0,
        };
        Some(GlibcVersion {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GLIBC_{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// What one ELF file needs from glibc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlibcNeeds {
    /// The newest `GLIBC_x.y` it needs, from any glibc library (libc, libm, libdl, ...).
    pub newest: Option<GlibcVersion>,
    /// Named needs that are not numbered (`GLIBC_ABI_DT_RELR`): the image must define them.
    pub named: Vec<String>,
}

/// What the image's glibc provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageGlibc {
    pub path: String,
    pub newest: GlibcVersion,
    pub named: Vec<String>,
}

/// Read the needs of a host file (memory-mapped: host driver libraries are tens of MB and
/// only their headers and version sections are read).
pub fn needs_of_file(path: &Path) -> Result<GlibcNeeds> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the map is read-only and private; a host library changing under us (driver
    // update mid-launch) could at worst give goblin inconsistent bytes, which it bounds-checks.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    needs_of(&map).with_context(|| format!("reading ELF version needs of {}", path.display()))
}

/// The glibc versions an ELF image needs (none for a static or non-glibc file).
pub fn needs_of(bytes: &[u8]) -> Result<GlibcNeeds> {
    let elf = crate::linker::elf_dyn::parse(bytes).context("not an ELF file")?;
    Ok(needs_of_names(&elf.version_needs))
}

/// The same, from the version names an ELF file needs (`elf_dyn::DynInfo::version_needs`).
pub fn needs_of_names(names: &[&str]) -> GlibcNeeds {
    let mut out = GlibcNeeds::default();
    for name in names {
        if let Some(v) = GlibcVersion::parse_tag(name) {
            out.newest = out.newest.max(Some(v));
        } else if name.starts_with("GLIBC_ABI_") && !out.named.iter().any(|n| n == name) {
            out.named.push(name.to_string());
        }
    }
    out
}

/// The versions a libc.so.6 defines.
pub fn defined_by(bytes: &[u8]) -> Result<(Option<GlibcVersion>, Vec<String>)> {
    let elf = crate::linker::elf_dyn::parse(bytes).context("not an ELF file")?;
    let mut newest = None;
    let mut named = Vec::new();
    for name in elf.version_defs {
        if let Some(v) = GlibcVersion::parse_tag(name) {
            newest = newest.max(Some(v));
        } else if name.starts_with("GLIBC_") {
            named.push(name.to_string());
        }
    }
    Ok((newest, named))
}

/// Where images keep libc.so.6, most common first.
fn libc_candidates() -> Vec<String> {
    let triplet = if cfg!(target_arch = "x86_64") {
        "x86_64-linux-gnu"
    } else if cfg!(target_arch = "aarch64") {
        "aarch64-linux-gnu"
    } else if cfg!(target_arch = "powerpc64") {
        "powerpc64le-linux-gnu"
    } else {
        "unknown-linux-gnu"
    };
    vec![
        format!("/lib/{triplet}/libc.so.6"),
        format!("/usr/lib/{triplet}/libc.so.6"),
        "/lib64/libc.so.6".into(),
        "/usr/lib64/libc.so.6".into(),
        "/lib/libc.so.6".into(),
        "/usr/lib/libc.so.6".into(),
    ]
}

/// The image's glibc, or None when it has none (musl, static busybox).
pub fn image_glibc(image: &dyn ImageView) -> Result<Option<ImageGlibc>> {
    for path in libc_candidates() {
        let Some(size) = image.file_size(&path)? else {
            continue;
        };
        // Only its headers and version sections: 2 or 3 of a 2 MB libc's blocks.
        let bytes = crate::linker::elf_dyn::sparse_copy(size, &mut |off, buf| {
            image.read_at(&path, off, buf)
        })
        .with_context(|| format!("reading the image's {path}"))?;
        let (newest, named) =
            defined_by(&bytes).with_context(|| format!("reading the image's {path}"))?;
        if let Some(newest) = newest {
            return Ok(Some(ImageGlibc {
                path,
                newest,
                named,
            }));
        }
    }
    Ok(None)
}

/// Why `needs` cannot load with `image`'s glibc, or None when it can.
pub fn refusal(
    what: &str,
    host_path: &Path,
    needs: &GlibcNeeds,
    image: &ImageGlibc,
) -> Option<String> {
    if let Some(n) = needs.newest {
        if n > image.newest {
            return Some(format!(
                "{what} {} needs {n} but the image's glibc ({}) is {}: use an image with a newer glibc, or leave this library out in the site config",
                host_path.display(),
                image.path,
                image.newest
            ));
        }
    }
    for name in &needs.named {
        if !image.named.contains(name) {
            return Some(format!(
                "{what} {} needs {name}, which the image's glibc ({}, {}) does not define",
                host_path.display(),
                image.path,
                image.newest
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let v = |s| GlibcVersion::parse_tag(s);
        assert!(v("GLIBC_2.34") > v("GLIBC_2.4"));
        assert!(v("GLIBC_2.2.5") > v("GLIBC_2.2"));
        assert_eq!(v("GLIBC_PRIVATE"), None);
        assert_eq!(v("GCC_3.0"), None);
        assert_eq!(v("GLIBC_2.34").unwrap().to_string(), "GLIBC_2.34");
    }

    #[test]
    fn reads_the_host_libc_and_a_host_binary() {
        // The test host's own glibc defines what its own programs need.
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/aarch64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
        ]
        .iter()
        .find(|p| Path::new(p).exists());
        let libc = libc.expect("no glibc found on the test host (the test needs one)");
        let (newest, named) = defined_by(&std::fs::read(libc).unwrap()).unwrap();
        let newest = newest.unwrap();
        assert!(newest >= GlibcVersion::parse_tag("GLIBC_2.17").unwrap());
        let needs = needs_of_file(Path::new("/bin/ls")).unwrap();
        let need = needs.newest.unwrap();
        assert!(need <= newest && need.major == 2);
        let image = ImageGlibc {
            path: "/lib/libc.so.6".into(),
            newest,
            named,
        };
        assert_eq!(
            refusal("library", Path::new("/bin/ls"), &needs, &image),
            None
        );
        let old = ImageGlibc {
            newest: GlibcVersion::parse_tag("GLIBC_2.1").unwrap(),
            ..image
        };
        let msg = refusal("library", Path::new("/bin/ls"), &needs, &old).unwrap();
        assert!(
            msg.contains(&format!("needs {need}")) && msg.contains("is GLIBC_2.1"),
            "{msg}"
        );
    }

    #[test]
    fn not_elf_is_an_error() {
        assert!(needs_of(b"#!/bin/sh\n").is_err());
        assert!(needs_of_file(Path::new("/nonexistent/lib.so")).is_err());
    }
}
