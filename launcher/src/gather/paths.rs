//! Host paths the planner asks about, resolved before planning so that `plan::build` touches no
//! file system: for each path, whether it exists, its canonical form and whether it is a
//! directory.
//!
//! `HostPaths::gather` knows the planner's questions (the fixed kernel and /dev paths, home,
//! the working directory, bind and --home sources, the site's binds and devices, the injection's
//! files, devices and mounts, the PMIx directories of a job step). The canonical form of each
//! path found is recorded as a path of its own, so the planner can ask whether a bind source it
//! got from here is a directory. A question nobody gathered is an error that names the path,
//! not a silent "absent": the unit tests and the end-to-end suite catch a gap at once.

use crate::gather::host::HostInfo;
use crate::gather::injection::Injection;
use crate::gather::site_config::SiteConfig;
use crate::options::bind::parse_bind_list;
use crate::options::{clean_abs, LaunchOptions};
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Kernel file systems bound from the host.
pub const KERNEL_DIRS: &[&str] = &["/proc", "/sys"];
/// Device nodes bound into a minimal /dev (`--contain`).
pub const MINIMAL_DEV: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Directories bound into a minimal /dev when the host has them.
pub const DEV_DIRS: &[&str] = &["/dev/pts", "/dev/shm", "/dev/mqueue"];
/// Scratch directories: the host's, or a tmpfs with `--contain`.
pub const SCRATCH_DIRS: &[&str] = &["/tmp", "/var/tmp"];

/// What the host has at one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The path with every symlink resolved.
    pub canonical: PathBuf,
    pub is_dir: bool,
}

#[derive(Clone, Debug, Default)]
pub struct HostPaths {
    /// `None`: the path does not exist (or cannot be resolved) on this host.
    entries: BTreeMap<PathBuf, Option<Found>>,
}

impl HostPaths {
    /// Resolve every path the planner will ask about for this launch.
    pub fn gather(
        opts: &LaunchOptions,
        host: &HostInfo,
        site: &SiteConfig,
        injection: &Injection,
    ) -> Result<HostPaths> {
        let mut paths = HostPaths::default();
        let fixed = KERNEL_DIRS
            .iter()
            .chain(DEV_DIRS)
            .chain(SCRATCH_DIRS)
            .map(PathBuf::from)
            .chain(MINIMAL_DEV.iter().map(|d| Path::new("/dev").join(d)))
            .chain([PathBuf::from("/dev")]);
        for p in fixed {
            paths.resolve(&p);
        }
        paths.resolve(&host.home);
        paths.resolve(&host.cwd);
        for (f, _) in &host.existing_etc {
            paths.resolve(f);
        }
        if let Some((src, _)) = &opts.home {
            paths.resolve(src);
        }
        for b in &opts.binds {
            paths.resolve(&host.cwd.join(&b.src));
        }
        for spec in &site.binds {
            for b in parse_bind_list(spec)? {
                paths.resolve(&b.src);
            }
        }
        // Devices: the host node, and (without --contain, where /dev is the host's) whether the
        // host has a node at the destination.
        for d in site.devices.iter() {
            paths.resolve(d);
            if let Ok(dst) = clean_abs(d) {
                paths.resolve(&dst);
            }
        }
        for d in &injection.devices {
            paths.resolve(&d.host);
            if let Ok(dst) = clean_abs(&d.dst) {
                paths.resolve(&dst);
            }
        }
        for m in &injection.mounts {
            paths.resolve(&m.host);
        }
        for f in injection.libs.iter().chain(&injection.bins) {
            paths.resolve(&f.host);
        }
        for d in &host.pmix_dirs {
            paths.resolve(d);
        }
        Ok(paths)
    }

    fn resolve(&mut self, path: &Path) {
        if self.entries.contains_key(path) {
            return;
        }
        let found = std::fs::canonicalize(path).ok().map(|canonical| Found {
            is_dir: canonical.is_dir(),
            canonical,
        });
        if let Some(f) = &found {
            self.entries.entry(f.canonical.clone()).or_insert_with(|| {
                Some(Found {
                    canonical: f.canonical.clone(),
                    is_dir: f.is_dir,
                })
            });
        }
        self.entries.insert(path.to_path_buf(), found);
    }

    /// What the host has at `path`: `Ok(None)` when it does not exist there.
    pub fn get(&self, path: &Path) -> Result<Option<&Found>> {
        self.entries.get(path).map(Option::as_ref).ok_or_else(|| {
            anyhow!(
                "internal error: the host path '{}' was not gathered before planning",
                path.display()
            )
        })
    }

    /// Record a path by hand (unit tests describe hosts as data).
    #[cfg(test)]
    pub fn insert(&mut self, path: impl Into<PathBuf>, found: Option<Found>) {
        self.entries.insert(path.into(), found);
    }

    /// A host described as data: `(path, Some((canonical, is_dir)))` or `(path, None)`.
    #[cfg(test)]
    pub fn from_list(list: &[(&str, Option<(&str, bool)>)]) -> HostPaths {
        let mut paths = HostPaths::default();
        for (p, found) in list {
            paths.insert(
                *p,
                found.map(|(canonical, is_dir)| Found {
                    canonical: canonical.into(),
                    is_dir,
                }),
            );
        }
        paths
    }
}

/// A host described as data for unit tests: the usual kernel, /dev and scratch paths (no
/// /dev/mqueue), `/home/alice`, plus `extra`.
#[cfg(test)]
pub fn typical_host(extra: &[(&str, Option<(&str, bool)>)]) -> HostPaths {
    let dirs = [
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/tmp",
        "/var/tmp",
        "/home/alice",
    ];
    let nodes = ["null", "zero", "full", "random", "urandom", "tty"].map(|n| format!("/dev/{n}"));
    let mut paths = HostPaths::from_list(extra);
    for d in dirs {
        paths.insert(
            d,
            Some(Found {
                canonical: d.into(),
                is_dir: true,
            }),
        );
    }
    for n in nodes {
        paths.insert(
            n.clone(),
            Some(Found {
                canonical: n.into(),
                is_dir: false,
            }),
        );
    }
    paths.insert("/dev/mqueue", None);
    paths
}
