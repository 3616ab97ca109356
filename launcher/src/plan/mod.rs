//! Stage 3, plan: everything a launch will do, as plain data (mounts, generated files,
//! environment, argv), decided from the options, the gathered facts and the image; `--debug`
//! prints it.
//!
//! `build` is pure: it takes the options, the host facts and a read-only view of the image and
//! decides the mount table, generated files, environment, working directory and argv. `apply`
//! only carries the plan out. `--debug` prints it.

mod build;
pub mod environment;
pub mod etc_files;
pub mod integration;
pub mod mount_points;
pub mod path_search;
pub mod policy;
pub mod scheduler;
pub mod step;

pub use build::build;
pub use step::MountStep;

use crate::image::view::ImageDesc;
use crate::plan::mount_points::UpperNode;
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub image: ImageDesc,
    pub uid: u32,
    pub gid: u32,
    /// `--writable-tmpfs` or `--overlay`: the root stays writable.
    pub writable_root: bool,
    /// `--writable` on a sandbox directory: the directory itself is the writable root (no
    /// overlay; missing mount points are made in it).
    pub writable_sandbox: bool,
    /// `--overlay DIR`: the host directory (canonical) whose `upper/` and `work/` are the
    /// overlay's layers, kept after the launch; None: a tmpfs, discarded.
    pub overlay_dir: Option<PathBuf>,
    /// `--overlay IMG.sqfs`, `--overlay DIR:ro`: read-only layers between the image and the
    /// writable layer (if any), bottom first (Apptainer's order: later overlays on top).
    pub lower: Vec<LowerLayer>,
    pub mounts: Vec<MountStep>,
    /// Mount points the image lacks. A read-only root: the FUSE server shows them as virtual
    /// nodes and the image is the root, with no overlay. `--writable-tmpfs`: they are made in
    /// the overlay's upper layer before it is mounted.
    pub upper: Vec<UpperNode>,
    /// The image server was started for another rank's plan (a rank of a shared job step
    /// with a mount namespace of its own, see `for_foreign_server`): it shows none of this
    /// plan's mount points or files, so the root is an overlay whose upper layer has them.
    pub foreign_server: bool,
    pub env: Vec<(String, String)>,
    /// Some when the image's environment scripts need a shell: the child runs it and the
    /// environment is what it reports, edited (`env` is then the planner's estimate).
    pub env_shell: Option<environment::ShellEnv>,
    pub cwd: PathBuf,
    /// Working directories to try if `cwd` turns out not to exist (home, then /).
    pub cwd_fallbacks: Vec<PathBuf>,
    pub argv: Vec<String>,
    /// The program inside the image that argv[0] names (PATH searched), read ahead at start-up.
    pub program: Option<String>,
    /// Site config and host integration (GPU, CDI): what was brought in, for --debug.
    pub injected: Vec<String>,
    pub warnings: Vec<String>,
    /// `instance start`: the named instance this launch creates and holds.
    pub instance: Option<NamedInstance>,
}

/// A read-only layer over the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LowerLayer {
    /// A SquashFS (bare, or a SIF's primary partition) served by a FUSE server of its own,
    /// mounted in the staging tmpfs at `/overlays/N`, N its place in `Plan::lower`.
    Image(ImageDesc),
    /// A host directory (canonical).
    Dir(PathBuf),
}

/// A named instance (`launcher instance start IMAGE NAME`): what `instance list` shows and
/// `exec instance://NAME` needs, published by its leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NamedInstance {
    pub name: String,
    pub image: PathBuf,
    /// The node it runs on (`apply::share::node_name`): a shared rendezvous directory holds
    /// other nodes' instances too.
    pub node: String,
    /// Where the instance's (and its startscript's) output goes.
    pub log_out: PathBuf,
    pub log_err: PathBuf,
}

impl Plan {
    /// An overlay over the image: for `--writable-tmpfs` and `--overlay`, and for a sandbox
    /// directory that lacks mount points (no FUSE server shows them; the directory itself is
    /// not changed). With read-only layers only, its upper layer is a tmpfs holding the mount
    /// points, and the root is made read-only once built.
    pub fn needs_overlay(&self) -> bool {
        self.writable_root
            || !self.lower.is_empty()
            || self.foreign_server
            || (self.image.is_directory() && !self.upper.is_empty() && !self.writable_sandbox)
    }

    /// This plan for a rank that builds its root over an image server started for another
    /// rank of its job step (different binds or options, one server and user namespace per
    /// node): that server shows the other rank's mount points and files, not these, so every
    /// file is bound and the missing mount points are made in an overlay's upper layer (a
    /// sandbox directory has no server: nothing changes).
    pub fn for_foreign_server(&self) -> Plan {
        let mut plan = self.clone();
        if plan.image.is_directory() {
            return plan;
        }
        plan.foreign_server = true;
        for m in &mut plan.mounts {
            if let MountStep::File { served_at, .. } = m {
                *served_at = None;
            }
        }
        plan
    }

    /// Files the FUSE server shows in place of (or in addition to) the image's.
    pub fn served_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        self.mounts
            .iter()
            .filter_map(|m| match m {
                MountStep::File {
                    content,
                    served_at: Some(at),
                    ..
                } => Some((at.clone(), content.clone())),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan:")?;
        if self.image.is_directory() {
            writeln!(
                f,
                "  image: {} (sandbox directory)",
                self.image.path.display()
            )?;
        } else {
            writeln!(
                f,
                "  image: {} ({}, SquashFS at offset {}, {} bytes)",
                self.image.path.display(),
                self.image.format,
                self.image.squashfs_offset,
                self.image.file_size
            )?;
        }
        writeln!(
            f,
            "  identity: uid {} gid {} (mapped to themselves)",
            self.uid, self.gid
        )?;
        writeln!(
            f,
            "  root: {}{}, {}",
            if self.image.is_directory() {
                format!("directory {} (rbind)", self.image.path.display())
            } else {
                "image via FUSE".to_string()
            },
            match (&self.overlay_dir, self.needs_overlay()) {
                _ if !self.lower.is_empty() => format!(
                    " + {} read-only layer(s){}",
                    self.lower.len(),
                    match &self.overlay_dir {
                        Some(dir) => format!(" + overlay in {} (kept)", dir.display()),
                        None => " + overlay on tmpfs".to_string(),
                    }
                ),
                (Some(dir), _) => format!(" + overlay in {} (kept)", dir.display()),
                (None, true) => " + overlay on tmpfs".to_string(),
                (None, false) => String::new(),
            },
            match (&self.overlay_dir, self.writable_root) {
                _ if self.writable_sandbox =>
                    "writable (--writable: changes kept in the directory)",
                (Some(_), _) => "writable (--overlay)",
                (None, true) => "writable (--writable-tmpfs, discarded at exit)",
                (None, false) => "read-only",
            }
        )?;
        for n in &self.upper {
            writeln!(
                f,
                "    create {:?} {} (mode {:o})",
                n.kind,
                n.path.display(),
                n.mode
            )?;
        }
        if !self.lower.is_empty() {
            writeln!(f, "  layers over the image (top first):")?;
        }
        for (n, layer) in self.lower.iter().enumerate().rev() {
            match layer {
                LowerLayer::Image(i) => writeln!(
                    f,
                    "    image {} ({}, SquashFS at offset {}, FUSE server of its own at /overlays/{n})",
                    i.path.display(),
                    i.format,
                    i.squashfs_offset
                )?,
                LowerLayer::Dir(d) => writeln!(f, "    dir   {} (read-only)", d.display())?,
            }
        }
        writeln!(f, "  mounts:")?;
        for m in &self.mounts {
            match m {
                MountStep::Bind {
                    src,
                    dst,
                    readonly,
                    recursive,
                } => writeln!(
                    f,
                    "    {:<6} {} -> {}{}",
                    if *recursive { "rbind" } else { "bind" },
                    src.display(),
                    dst.display(),
                    if *readonly { " (ro)" } else { "" }
                )?,
                MountStep::Tmpfs { dst, mode } => {
                    writeln!(f, "    tmpfs  {} (mode {:o})", dst.display(), mode)?
                }
                MountStep::File {
                    dst,
                    content,
                    served_at,
                } => writeln!(
                    f,
                    "    file   {} ({} bytes, ro, {})",
                    dst.display(),
                    content.len(),
                    match served_at {
                        Some(p) => format!("served by the image server at {}", p.display()),
                        None => "bound".to_string(),
                    }
                )?,
                MountStep::Symlink { dst, target } => {
                    writeln!(f, "    link   {} -> {}", dst.display(), target.display())?
                }
            }
        }
        if let Some(i) = &self.instance {
            writeln!(
                f,
                "  instance: {} (held until `instance stop`; output to {} and {})",
                i.name,
                i.log_out.display(),
                i.log_err.display()
            )?;
        }
        writeln!(f, "  cwd: {}", self.cwd.display())?;
        writeln!(f, "  argv: {:?}", self.argv)?;
        if let Some(p) = &self.program {
            if self.image.is_directory() {
                writeln!(f, "  program in the image: {p}")?;
            } else {
                writeln!(
                    f,
                    "  program in the image: {p} (read ahead while the root is built)"
                )?;
            }
        }
        if !self.injected.is_empty() {
            writeln!(f, "  host integration:")?;
            for line in &self.injected {
                writeln!(f, "    {line}")?;
            }
        }
        match &self.env_shell {
            None => writeln!(f, "  env:")?,
            Some(sh) => {
                writeln!(
                    f,
                    "  env scripts: sourced by the image's {} at start ({} scripts), then {} edits",
                    sh.shell,
                    sh.scripts.len(),
                    sh.edits.len()
                )?;
                writeln!(f, "  env (read without a shell, before the scripts run):")?;
            }
        }
        for (k, v) in &self.env {
            writeln!(f, "    {k}={v}")?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}
