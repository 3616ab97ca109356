//! Stage 1, options: what the user asked for, after command-line parsing and before anything
//! is resolved (bind specs are parsed here; their sources are looked up by `gather`).

pub mod apptainer;
pub mod bind;
pub mod env_args;
pub mod instance;
pub mod overlay;

use anyhow::{bail, Result};
use bind::BindSpec;
use std::path::{Component, Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run this command line.
    Exec(Vec<String>),
    /// Run the image's runscript (or OCI entrypoint/cmd) with these arguments.
    Run(Vec<String>),
    /// An interactive shell.
    Shell,
    /// `instance start`: the image's startscript with these arguments, if it has one.
    StartInstance(Vec<String>),
}

/// Which GPU stack `--gpu` brings in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuVendor {
    /// `--gpu`: whichever the host has (NVIDIA, AMD, or both).
    Any,
    /// `--nv`.
    Nvidia,
    /// `--rocm`.
    Amd,
}

/// `--mpi` (check the ABI) or `--mpi=force` (inject even when it does not match).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpiMode {
    On,
    Force,
}

#[derive(Clone, Debug)]
pub struct LaunchOptions {
    pub image: PathBuf,
    /// The image file as the signature checks before the launch (`--verify`, the site's
    /// policy) opened and read it: the launch reads this open file, not the path again, which
    /// whoever can write its directory could have pointed at another file meanwhile.
    pub image_file: Option<std::sync::Arc<std::fs::File>>,
    pub action: Action,
    pub binds: Vec<BindSpec>,
    /// `--contain`: no home/cwd/tmp binds, fresh /tmp, minimal /dev.
    pub contain: bool,
    pub no_home: bool,
    /// `--no-mount tmp`: the image's own /tmp and /var/tmp, not the host's.
    pub no_mount_tmp: bool,
    /// `--no-mount cwd`: the working directory is not bound from the host.
    pub no_mount_cwd: bool,
    /// `--home SRC[:DST]`.
    pub home: Option<(PathBuf, PathBuf)>,
    /// `--pwd DIR`: working directory inside the container.
    pub pwd: Option<PathBuf>,
    pub writable_tmpfs: bool,
    /// `--writable`: a sandbox directory is the root itself, writable; mount points it lacks
    /// are made in it.
    pub writable: bool,
    /// `--overlay`: in the order given (later ones on top). At most one writable directory,
    /// whose `DIR/upper` and `DIR/work` keep the changes; the others are read-only layers.
    pub overlays: Vec<overlay::OverlaySpec>,
    pub cleanenv: bool,
    /// `--env-file` entries then `--env` entries, in that order (later wins).
    pub env: Vec<(String, String)>,
    /// `--gpu`, `--nv`, `--rocm` (None: the site config's default).
    pub gpu: Option<GpuVendor>,
    /// `--no-gpu`: off even when the site config turns it on by default.
    pub no_gpu: bool,
    /// `--device vendor/class=name`: CDI devices.
    pub devices: Vec<String>,
    /// `--mpi[=force]` (None: the site config's default).
    pub mpi: Option<MpiMode>,
    /// `--no-mpi`: off even when the site config turns it on by default.
    pub no_mpi: bool,
    /// Share one instance with the other ranks of a job step on this node (`--no-share`: off).
    pub share: bool,
    /// Which option or variable asked for what the site's locks check, for their refusals.
    pub asked_by: AskedBy,
    /// `instance start` or `instance://NAME`.
    pub instance: Option<instance::InstanceUse>,
}

/// The option or Apptainer variable behind a setting, as the user wrote it: a refusal names
/// what they typed (`--nv`, `APPTAINER_ROCM`, `--env-file vars.env`), not a list of
/// possibilities. Empty where options were made otherwise (the tests'): refusals then name
/// every option that could have asked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AskedBy {
    /// What turned the GPU on: `--gpu`, `--nv`, `--nvccli`, `--rocm`, `APPTAINER_NV`, … (all
    /// that did, comma-separated).
    pub gpu: Option<String>,
    /// `--mpi` or `--mpi=force`.
    pub mpi: Option<String>,
    /// Per variable of `env`, what set it last: `--env NAME`, `--env-file FILE (NAME)`,
    /// `APPTAINER_ENV_FILE=FILE (NAME)`.
    pub env: std::collections::BTreeMap<String, String>,
}

impl LaunchOptions {
    pub fn new(image: PathBuf, action: Action) -> Self {
        LaunchOptions {
            image,
            image_file: None,
            action,
            binds: Vec::new(),
            contain: false,
            no_home: false,
            no_mount_tmp: false,
            no_mount_cwd: false,
            home: None,
            pwd: None,
            writable_tmpfs: false,
            writable: false,
            overlays: Vec::new(),
            cleanenv: false,
            env: Vec::new(),
            gpu: None,
            no_gpu: false,
            devices: Vec::new(),
            mpi: None,
            no_mpi: false,
            share: true,
            asked_by: AskedBy::default(),
            instance: None,
        }
    }
}

/// Lexically clean an absolute container path: no `.`, `..` clamped at `/`.
pub fn clean_abs(p: &Path) -> Result<PathBuf> {
    if !p.is_absolute() {
        bail!("'{}' is not an absolute path", p.display());
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(
            clean_abs(Path::new("/a/./b/../c/")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert_eq!(
            clean_abs(Path::new("/../../etc")).unwrap(),
            PathBuf::from("/etc")
        );
        assert!(clean_abs(Path::new("rel")).is_err());
    }
}
