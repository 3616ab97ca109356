//! What the planner may ask of an image, without mounting it.
//!
//! The real implementations read the SquashFS in-process (`open.rs`) or a sandbox directory
//! (`dir.rs`); tests use `FakeImage`.

use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EntryKind {
    Dir,
    File,
    Other,
}

/// An entry as stored, symlinks not followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u16 },
    Symlink(String),
    File,
    Other,
}

/// The image's OCI config (entrypoint, cmd, env, working directory): image-tools' parser.
pub use image_tools::oci_config::ImageConfig as OciConfig;

/// `ImageDesc::format` of a sandbox directory (bound as the root, no FUSE).
pub const DIRECTORY: &str = "directory";

/// Identity of the image file and where its SquashFS starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageDesc {
    pub path: PathBuf,
    /// "SIF", "SquashFS" or `DIRECTORY`.
    pub format: &'static str,
    pub squashfs_offset: u64,
    pub file_size: u64,
}

impl ImageDesc {
    /// A sandbox directory: bound as the root rather than served by the FUSE server.
    pub fn is_directory(&self) -> bool {
        self.format == DIRECTORY
    }
}

pub trait ImageView {
    fn desc(&self) -> &ImageDesc;
    /// Contents of a regular file (symlinks followed inside the image), None when absent.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Size of the regular file at `path` (symlinks followed), None when absent or not one.
    fn file_size(&self, path: &str) -> Result<Option<u64>>;
    /// Reads from `offset` of the regular file at `path` into `buf`: the bytes read, short
    /// only at the end of the file. For a file needed in part (the ELF headers of a libc).
    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// Kind of the entry at `path` (symlinks followed inside the image), None when absent.
    fn kind(&self, path: &str) -> Result<Option<EntryKind>>;
    /// The entry at `path`, whose parent directories are already resolved (no symlinks).
    fn entry(&self, path: &str) -> Result<Option<Entry>>;
    /// Names in a directory (empty when absent).
    fn list_dir(&self, path: &str) -> Result<Vec<String>>;
    fn oci_config(&self) -> Option<&OciConfig>;
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;

    /// An in-memory image for planner tests: paths to file contents; directories implied.
    pub struct FakeImage {
        pub desc: ImageDesc,
        pub files: BTreeMap<String, Vec<u8>>,
        pub dirs: Vec<String>,
        pub symlinks: BTreeMap<String, String>,
        pub oci: Option<OciConfig>,
    }

    impl FakeImage {
        pub fn new(files: &[(&str, &str)], dirs: &[&str]) -> Self {
            FakeImage {
                desc: ImageDesc {
                    path: "/images/test.sif".into(),
                    format: "SIF",
                    squashfs_offset: 45056,
                    file_size: 1 << 20,
                },
                files: files
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
                dirs: dirs.iter().map(|d| d.to_string()).collect(),
                symlinks: BTreeMap::new(),
                oci: None,
            }
        }
    }

    impl ImageView for FakeImage {
        fn desc(&self) -> &ImageDesc {
            &self.desc
        }
        fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
            Ok(self.files.get(path).cloned())
        }
        fn file_size(&self, path: &str) -> Result<Option<u64>> {
            Ok(self.files.get(path).map(|f| f.len() as u64))
        }
        fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
            let file = self.files.get(path).map(Vec::as_slice).unwrap_or_default();
            let from = file.len().min(offset as usize);
            let n = buf.len().min(file.len() - from);
            buf[..n].copy_from_slice(&file[from..from + n]);
            Ok(n)
        }
        fn kind(&self, path: &str) -> Result<Option<EntryKind>> {
            if self.files.contains_key(path) {
                return Ok(Some(EntryKind::File));
            }
            let prefix = format!("{}/", path.trim_end_matches('/'));
            let is_dir = path == "/"
                || self
                    .dirs
                    .iter()
                    .any(|d| d == path || d.starts_with(&prefix))
                || self.files.keys().any(|f| f.starts_with(&prefix));
            Ok(is_dir.then_some(EntryKind::Dir))
        }
        fn entry(&self, path: &str) -> Result<Option<Entry>> {
            if let Some(t) = self.symlinks.get(path) {
                return Ok(Some(Entry::Symlink(t.clone())));
            }
            Ok(match self.kind(path)? {
                Some(EntryKind::Dir) => Some(Entry::Dir { mode: 0o755 }),
                Some(EntryKind::File) => Some(Entry::File),
                Some(EntryKind::Other) => Some(Entry::Other),
                None => None,
            })
        }
        fn list_dir(&self, path: &str) -> Result<Vec<String>> {
            let prefix = format!("{}/", path.trim_end_matches('/'));
            Ok(self
                .files
                .keys()
                .filter_map(|f| f.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/'))
                .map(str::to_string)
                .collect())
        }
        fn oci_config(&self) -> Option<&OciConfig> {
            self.oci.as_ref()
        }
    }
}
