//! A staged root file system and what the image must show where the staging tree cannot.
//!
//! Images are staged in a plain directory by an unprivileged user, who cannot chown files,
//! create device nodes, or keep modes the umask or ownership would change. The OCI layer
//! code records, per path, what the tar headers said; the SquashFS writer stores that
//! instead of what it finds on disk.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A special file that the staging tree holds as an empty regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Special {
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

/// What to store for one path instead of what is on disk; `None` fields keep the disk's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryOverride {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits, with setuid/setgid/sticky (no file-type bits).
    pub mode: Option<u32>,
    /// Seconds since the epoch.
    pub mtime: Option<i64>,
    pub special: Option<Special>,
    /// Extended attributes to store (full names, e.g. "security.capability").
    pub xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Overrides keyed by path relative to the staging root, without a leading `/`
/// (the root itself is the empty path).
pub type Overrides = BTreeMap<PathBuf, EntryOverride>;
