//! One step of a plan's mount table: the vocabulary shared by the planner, its helpers and
//! `apply`.

use serde::Serialize;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum MountStep {
    /// Bind a host path (canonical) onto a path inside the container.
    Bind {
        src: PathBuf,
        dst: PathBuf,
        readonly: bool,
        /// rbind: carry submounts along (/proc, /sys, /dev, user trees).
        recursive: bool,
    },
    /// A fresh tmpfs owned by the caller.
    Tmpfs { dst: PathBuf, mode: u32 },
    /// A file the launcher provides: generated (passwd, group) or a copy of a host file (hosts,
    /// resolv.conf, localtime). With a read-only root the FUSE server shows it at `served_at`
    /// (the path `dst` resolves to in the image), which costs no mount; otherwise it is
    /// written to the staging tmpfs and bound read-only.
    File {
        dst: PathBuf,
        content: Vec<u8>,
        served_at: Option<PathBuf>,
    },
    /// A symbolic link created inside a tmpfs the plan mounted earlier (minimal /dev).
    Symlink { dst: PathBuf, target: PathBuf },
}
