//! Host files brought into the container: GPU (and MPI) libraries, programs, device nodes,
//! CDI mounts and environment, plus the site config's binds, devices and environment edits.
//!
//! Gathering (`gpu::gather`, `mpi::gather`) reads the host and fills an `Injection`;
//! `plan::integration` turns it into plan entries. Libraries are bound read-only one by one
//! into `LIB_DIR`, which goes first on LD_LIBRARY_PATH; programs into `BIN_DIR`, first on PATH.
//! The image is never modified: missing mount points are virtual nodes of the FUSE server.

use crate::linker::glibc_guard::{self, GlibcNeeds};
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

/// Where injected libraries appear inside the container.
pub const LIB_DIR: &str = "/.launcher.d/libs";
/// Where injected programs appear inside the container.
pub const BIN_DIR: &str = "/.launcher.d/bin";

/// One host file to bind into `LIB_DIR` or `BIN_DIR` under `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostFile {
    /// The name inside (a soname such as `libcuda.so.1`, or a program name).
    pub name: String,
    /// The host file, symlinks resolved.
    pub host: PathBuf,
    /// Who asked for it ("nvidia", "rocm", "mpi"): shown by --debug and in errors.
    pub origin: String,
    #[serde(skip)]
    pub glibc: GlibcNeeds,
}

/// A host path bound at a container path (device nodes, CDI mounts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostBind {
    pub host: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
    pub origin: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Injection {
    pub libs: Vec<HostFile>,
    pub bins: Vec<HostFile>,
    pub devices: Vec<HostBind>,
    pub mounts: Vec<HostBind>,
    /// Variables to set (CDI `env`), after the site's edits and before `--env`.
    pub env: Vec<(String, String)>,
    /// Lines for --debug: what was looked for and where it was found (or not).
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

impl Injection {
    pub fn is_empty(&self) -> bool {
        self.libs.is_empty()
            && self.bins.is_empty()
            && self.devices.is_empty()
            && self.mounts.is_empty()
            && self.env.is_empty()
    }

    pub fn extend(&mut self, other: Injection) {
        for l in other.libs {
            if !self.libs.iter().any(|x| x.name == l.name) {
                self.libs.push(l);
            }
        }
        for b in other.bins {
            if !self.bins.iter().any(|x| x.name == b.name) {
                self.bins.push(b);
            }
        }
        for d in other.devices {
            if !self.devices.iter().any(|x| x.dst == d.dst) {
                self.devices.push(d);
            }
        }
        self.mounts.extend(other.mounts);
        self.env.extend(other.env);
        self.notes.extend(other.notes);
        self.warnings.extend(other.warnings);
    }

    /// Resolve library base names through the search directories, then the ld.so cache;
    /// each found name becomes one `HostFile` (glibc needs read). Returns the names not found.
    pub fn add_libraries(
        &mut self,
        origin: &str,
        bases: &[String],
        search: &[PathBuf],
        cache: &crate::linker::ld_cache::LdCache,
    ) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for base in bases {
            let found = find_library(base, search, cache);
            if found.is_empty() {
                missing.push(base.clone());
                continue;
            }
            for (name, path) in found {
                let Ok(real) = std::fs::canonicalize(&path) else {
                    self.notes
                        .push(format!("{origin}: {name}: {} is dangling", path.display()));
                    continue;
                };
                if self.libs.iter().any(|l| l.name == name) {
                    continue;
                }
                let glibc = glibc_guard::needs_of_file(&real)?;
                self.libs.push(HostFile {
                    name,
                    host: real,
                    origin: origin.to_string(),
                    glibc,
                });
            }
        }
        Ok(missing)
    }

    /// Find programs in `dirs` (first hit wins); returns the names not found.
    pub fn add_binaries(
        &mut self,
        origin: &str,
        names: &[String],
        dirs: &[PathBuf],
    ) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for name in names {
            let Some(path) = host_program(name, dirs) else {
                missing.push(name.clone());
                continue;
            };
            let real = crate::gather::host::canonical_host_path(&path, "GPU program")?;
            // Static programs have no glibc needs; scripts are no ELF at all.
            let glibc = glibc_guard::needs_of_file(&real).unwrap_or_default();
            self.bins.push(HostFile {
                name: name.clone(),
                host: real,
                origin: origin.to_string(),
                glibc,
            });
        }
        Ok(missing)
    }
}

/// The first `name` in `dirs` that is not a `#!` script, else the first script. A host's wrapper
/// script (an H200 node's `/usr/bin/nvidia-smi` runs `exec /usr/local/nvidia/bin/nvidia-smi`)
/// names host paths that do not exist in the container; the program it wraps works there.
fn host_program(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let mut script = None;
    for path in dirs.iter().map(|d| d.join(name)).filter(|p| p.is_file()) {
        let mut magic = [0u8; 2];
        let is_script = std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| &magic == b"#!");
        if !is_script {
            return Some(path);
        }
        script.get_or_insert(path);
    }
    script
}

/// Every file named `base` or `base.*` in the search directories (first directory wins for a
/// name), else in the ld.so cache: (name, path as found).
pub fn find_library(
    base: &str,
    search: &[PathBuf],
    cache: &crate::linker::ld_cache::LdCache,
) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for dir in search {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::linker::ld_cache::name_matches(n, base))
            .collect();
        names.sort();
        for n in names {
            if !found.iter().any(|(f, _)| *f == n) {
                found.push((n.clone(), dir.join(&n)));
            }
        }
    }
    if found.is_empty() {
        for e in cache.matching(base) {
            found.push((e.name.clone(), e.path.clone()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_skip_wrapper_scripts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        for d in [&a, &b, &c] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(a.join("smi"), "#!/bin/sh\nexec /opt/drv/smi \"$@\"\n").unwrap();
        std::fs::write(b.join("smi"), b"\x7fELF...").unwrap();
        std::fs::write(c.join("only-script"), "#!/bin/sh\n").unwrap();
        let dirs = [a.clone(), b.clone(), c.clone()];
        assert_eq!(host_program("smi", &dirs), Some(b.join("smi")));
        assert_eq!(
            host_program("only-script", &dirs),
            Some(c.join("only-script"))
        );
        assert_eq!(host_program("absent", &dirs), None);
    }
}
