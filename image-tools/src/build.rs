//! `launcher build OUT SOURCE`: a SquashFS or SIF image from a directory or a Docker/OCI image.
//!
//! One straight line: parse the source → pull it (`docker://`, into the blob cache and a
//! small OCI layout) → stage it (OCI images only; a directory is read in place) → add the Apptainer metadata files to a staged tree → write the SquashFS in-process →
//! wrap it in a SIF when OUT ends in `.sif`. Staging lives under `$TMPDIR` and is removed on
//! success, failure and interruption; OUT is written under a temporary name and renamed, so a
//! failed build never leaves a partial image behind.

use crate::oci::{self, ImageConfig};
use crate::registry::{self, PullOptions, PullReport};
use crate::sif_image::{self, SifContents, UuidFrom};
use crate::squashfs::write::{self as sqfs_write, WriteCompressor, WriteOptions, WriteStats};
use crate::tree::Overrides;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    // Transparent: the message is the source's, which anyhow's chain would repeat.
    #[error(transparent)]
    Oci(#[from] oci::Error),
    // Transparent: the message is the source's, which anyhow's chain would repeat.
    #[error(transparent)]
    Squashfs(#[from] crate::squashfs::Error),
    // Transparent: the message is the source's, which anyhow's chain would repeat.
    #[error(transparent)]
    Sif(#[from] sif_image::Error),
    // Transparent: the message is the source's, which anyhow's chain would repeat.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the root file system comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildSource {
    Directory(PathBuf),
    Oci(oci::Source),
    /// `docker://REF`: pulled from a registry.
    Registry(registry::Reference),
    /// A SIF file (its primary SquashFS partition) or a bare SquashFS image, unpacked.
    Image(PathBuf),
}

impl BuildSource {
    pub fn parse(spec: &str) -> Result<BuildSource> {
        if spec.starts_with("docker://") {
            return Ok(BuildSource::Registry(registry::Reference::parse(spec)?));
        }
        if ["docker-archive:", "oci-archive:", "oci:", "tar:"]
            .iter()
            .any(|p| spec.starts_with(p))
        {
            return Ok(BuildSource::Oci(oci::Source::parse(spec)?));
        }
        let p = PathBuf::from(spec);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => Ok(BuildSource::Directory(p)),
            Ok(_) if is_image_file(&p) => Ok(BuildSource::Image(p)),
            Ok(_) => Err(Error::Usage(format!(
                "'{spec}' is a file but not a SIF or SquashFS image; to build from an archive say which kind: docker-archive:{spec}, oci-archive:{spec}, or tar:{spec} for a root file system tarball"
            ))),
            Err(e) => Err(Error::Io { path: spec.to_string(), msg: format!("cannot read the source directory: {e}") }),
        }
    }
}

/// A SIF file or a SquashFS image, by its first bytes.
fn is_image_file(p: &Path) -> bool {
    use std::io::Read;
    let mut first = [0u8; 64];
    let n = std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut first))
        .unwrap_or(0);
    let first = &first[..n];
    crate::sif::is_sif(first) || first.starts_with(b"hsqs")
}

/// Output format, from OUT's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Sif,
    Squashfs,
}

impl OutputKind {
    pub fn from_path(out: &Path) -> Result<OutputKind> {
        match out.extension().and_then(|e| e.to_str()) {
            Some("sif") => Ok(OutputKind::Sif),
            Some("sqfs" | "squashfs" | "sqsh") => Ok(OutputKind::Squashfs),
            _ => Err(Error::Usage(format!(
                "'{}': the output must end in .sif or .sqfs",
                out.display()
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub compressor: WriteCompressor,
    pub level: Option<i32>,
    pub block_size: u32,
    /// `SOURCE_DATE_EPOCH`: fixed times, UUID and order for byte-identical rebuilds.
    pub reproducible: Option<u32>,
    /// Platform to pick from a multi-arch OCI index, and the SIF's arch ("amd64").
    pub arch: String,
    /// Where staging goes ($TMPDIR by default).
    pub tmpdir: PathBuf,
    pub threads: usize,
    /// For `docker://` sources: HTTP or HTTPS, the blob cache, progress bars.
    pub pull: PullOptions,
}

impl BuildOptions {
    /// The SquashFS writer's settings; `all_root`: every file owned by root (definition-file
    /// builds, whose %post ran as a fake root).
    pub(crate) fn write_options(&self, all_root: bool) -> WriteOptions {
        WriteOptions {
            compressor: self.compressor,
            level: self.level,
            block_size: self.block_size,
            threads: self.threads,
            mkfs_time: self.reproducible,
            clamp_mtime: self.reproducible,
            all_root,
            ..WriteOptions::default()
        }
    }

    /// What a built SIF holds besides its root file system: the architecture, time and UUID
    /// these options ask for, with the image's config, labels and definition file. One place
    /// for both kinds of build (from a tree or image, and from a definition file).
    pub(crate) fn sif_contents(
        &self,
        oci_config: Option<serde_json::Value>,
        labels: std::collections::BTreeMap<String, String>,
        deffile: Option<Vec<u8>>,
    ) -> SifContents {
        SifContents {
            oci_config,
            labels,
            deffile,
            arch: self.arch.split('/').next().unwrap_or("amd64").to_string(),
            time: self.reproducible.map(i64::from),
            uuid: match self.reproducible {
                Some(_) => UuidFrom::Content,
                None => UuidFrom::Random,
            },
        }
    }
}

#[derive(Debug)]
pub struct BuildReport {
    pub output: PathBuf,
    pub kind: OutputKind,
    pub stats: WriteStats,
    pub bytes: u64,
    /// What pulling a `docker://` source did.
    pub pull: Option<PullReport>,
}

/// A staging directory removed when dropped (success, error or panic alike).
pub struct Staging(pub PathBuf);

impl Staging {
    pub fn create(parent: &Path) -> Result<Staging> {
        let name = format!("launcher-build-{}-{:x}", std::process::id(), nanos());
        let p = parent.join(name);
        std::fs::create_dir_all(&p).map_err(|e| Error::Io {
            path: p.display().to_string(),
            msg: format!("cannot create the staging directory: {e}"),
        })?;
        Ok(Staging(p))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// Remove a staging tree, making directories writable first (layers may hold 0555 dirs).
pub fn remove_tree(p: &Path) {
    if std::fs::remove_dir_all(p).is_ok() || !p.exists() {
        return;
    }
    for e in walkdir::WalkDir::new(p).into_iter().flatten() {
        if e.file_type().is_dir() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
    let _ = std::fs::remove_dir_all(p);
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Build `out` from `source`. `staging` must be created by the caller (so that a signal
/// handler can remove it too) and is used for OCI images and for the SquashFS of a SIF.
pub fn build(
    out: &Path,
    source: &BuildSource,
    opts: &BuildOptions,
    staging: &Staging,
) -> Result<BuildReport> {
    let kind = OutputKind::from_path(out)?;
    let (root, overrides, config, pull) = stage_source(source, opts, staging, false)?;
    write_output(
        &root,
        &overrides,
        out,
        kind,
        opts.write_options(false),
        staging,
        pull,
        || {
            let labels = config
                .as_ref()
                .map(|c| c.labels.clone())
                .unwrap_or_default();
            Ok(opts.sif_contents(config.as_ref().map(oci_config_object), labels, None))
        },
    )
}

/// Writes the staged `root` to `out`: a SquashFS file, or a SIF whose SquashFS partition is
/// made in `staging` first and whose other objects `contents` gives. Shared by builds from
/// a source and from a definition file.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_output(
    root: &Path,
    overrides: &Overrides,
    out: &Path,
    kind: OutputKind,
    wopts: WriteOptions,
    staging: &Staging,
    pull: Option<PullReport>,
    contents: impl FnOnce() -> Result<SifContents>,
) -> Result<BuildReport> {
    let stats = match kind {
        OutputKind::Squashfs => sqfs_write::write_dir(root, overrides, out, &wopts)?,
        OutputKind::Sif => {
            let sqfs = staging.0.join("rootfs.squashfs");
            let stats = sqfs_write::write_dir(root, overrides, &sqfs, &wopts)?;
            sif_image::write(out, &sqfs, &contents()?)?;
            stats
        }
    };
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(BuildReport {
        output: out.to_path_buf(),
        kind,
        stats,
        bytes,
        pull,
    })
}

/// `launcher build --sandbox DIR SOURCE`: the source's root as a directory tree at `dir`,
/// which `sandbox::check_target` allowed; `staging` must be beside it (made in the directory
/// `check_target` returned), so that the finished tree is renamed into place.
pub fn build_sandbox(
    dir: &Path,
    source: &BuildSource,
    opts: &BuildOptions,
    staging: &Staging,
) -> Result<Option<PullReport>> {
    let (root, overrides, _, pull) = stage_source(source, opts, staging, true)?;
    crate::sandbox::install(&root, &overrides, dir, &staging.0)?;
    Ok(pull)
}

/// The source's root file system: a directory in place (or copied into the staging when
/// `copy`, for a sandbox), an image unpacked, an OCI image staged.
type StagedSource = (PathBuf, Overrides, Option<ImageConfig>, Option<PullReport>);

fn stage_source(
    source: &BuildSource,
    opts: &BuildOptions,
    staging: &Staging,
    copy: bool,
) -> Result<StagedSource> {
    Ok(match source {
        BuildSource::Directory(dir) if copy => {
            let root = staging.0.join("root");
            crate::sandbox::copy_tree(dir, &root)?;
            (root, Overrides::new(), None, None)
        }
        BuildSource::Directory(dir) => (dir.clone(), Overrides::new(), None, None),
        BuildSource::Image(file) => {
            let root = staging.0.join("root");
            std::fs::create_dir(&root).map_err(|e| io_err(&root, e))?;
            crate::defbuild::unpack_local(file, &root)?;
            (root, Overrides::new(), None, None)
        }
        BuildSource::Oci(src) => {
            let (root, ov, config) = stage_image(src, opts, staging)?;
            (root, ov, config, None)
        }
        BuildSource::Registry(r) => {
            let pulled = registry::pull(r, &opts.arch, &opts.pull, &staging.0.join("layout"))?;
            let (root, ov, config) = stage_image(&pulled.source, opts, staging)?;
            (root, ov, config, Some(pulled.report))
        }
    })
}

/// Unpacks an OCI/Docker image into the staging directory, with Apptainer's metadata files.
fn stage_image(
    src: &oci::Source,
    opts: &BuildOptions,
    staging: &Staging,
) -> Result<(PathBuf, Overrides, Option<ImageConfig>)> {
    let staged = oci::stage(src, &opts.arch, &staging.0.join("oci"))?;
    add_apptainer_files(&staged.root, &staged.config)?;
    Ok((staged.root, staged.overrides, Some(staged.config)))
}

/// The bare config object SIF images carry (what SingularityCE stores as oci-config.json).
fn oci_config_object(c: &ImageConfig) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    if !c.env.is_empty() {
        o.insert("Env".into(), c.env.clone().into());
    }
    if !c.entrypoint.is_empty() {
        o.insert("Entrypoint".into(), c.entrypoint.clone().into());
    }
    if !c.cmd.is_empty() {
        o.insert("Cmd".into(), c.cmd.clone().into());
    }
    if let Some(w) = &c.working_dir {
        o.insert("WorkingDir".into(), w.clone().into());
    }
    if let Some(u) = &c.user {
        o.insert("User".into(), u.clone().into());
    }
    if !c.labels.is_empty() {
        o.insert(
            "Labels".into(),
            serde_json::to_value(&c.labels).unwrap_or_default(),
        );
    }
    serde_json::Value::Object(o)
}

/// `/.singularity.d/{env/90-environment.sh,runscript,labels.json}`, so Apptainer runs our
/// images as we do: the image's environment, and `run` = entrypoint + cmd.
pub(crate) fn add_apptainer_files(root: &Path, c: &ImageConfig) -> Result<()> {
    let dir = root.join(".singularity.d");
    let env_dir = dir.join("env");
    std::fs::create_dir_all(&env_dir).map_err(|e| io_err(&env_dir, e))?;
    let mut env =
        String::from("#!/bin/sh\n# Written by launcher build from the image's OCI config.\n");
    for kv in &c.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.push_str(&format!("export {k}={}\n", sh_quote(v)));
        }
    }
    write_file(&env_dir.join("90-environment.sh"), &env, 0o755)?;
    let mut run = String::from("#!/bin/sh\n# Written by launcher build: the OCI entrypoint, then the arguments or the OCI cmd.\n");
    let entry: Vec<String> = c.entrypoint.iter().map(|w| sh_quote(w)).collect();
    let cmd: Vec<String> = c.cmd.iter().map(|w| sh_quote(w)).collect();
    if entry.is_empty() && cmd.is_empty() {
        run.push_str("exec /bin/sh \"$@\"\n");
    } else {
        run.push_str(&format!(
            "if [ $# -gt 0 ]; then\n    exec {} \"$@\"\nelse\n    exec {}\nfi\n",
            if entry.is_empty() {
                String::new()
            } else {
                entry.join(" ")
            },
            entry
                .iter()
                .chain(cmd.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    write_file(&dir.join("runscript"), &run, 0o755)?;
    let labels = serde_json::to_string_pretty(&c.labels).unwrap_or_else(|_| "{}".into());
    write_file(&dir.join("labels.json"), &labels, 0o644)?;
    Ok(())
}

/// Single-quote a word for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn write_file(p: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, text).map_err(|e| io_err(p, e))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err(p, e))
}

fn io_err(p: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: p.display().to_string(),
        msg: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_outputs() {
        assert!(matches!(
            BuildSource::parse("oci-archive:/x.tar").unwrap(),
            BuildSource::Oci(_)
        ));
        assert!(matches!(
            BuildSource::parse("/").unwrap(),
            BuildSource::Directory(_)
        ));
        assert!(matches!(
            BuildSource::parse("docker://ubuntu").unwrap(),
            BuildSource::Registry(r) if r.repository == "library/ubuntu"
        ));
        assert!(BuildSource::parse("docker://Bad:ref:x")
            .unwrap_err()
            .to_string()
            .starts_with("docker://"));
        assert!(BuildSource::parse("/etc/passwd")
            .unwrap_err()
            .to_string()
            .contains("docker-archive:"));
        let d = tempfile::tempdir().unwrap();
        let sqfs = d.path().join("img");
        std::fs::write(&sqfs, b"hsqs and more").unwrap();
        assert_eq!(
            BuildSource::parse(sqfs.to_str().unwrap()).unwrap(),
            BuildSource::Image(sqfs)
        );
        assert!(BuildSource::parse("/no/such/dir")
            .unwrap_err()
            .to_string()
            .contains("/no/such/dir"));
        assert_eq!(
            OutputKind::from_path(Path::new("a.sif")).unwrap(),
            OutputKind::Sif
        );
        assert_eq!(
            OutputKind::from_path(Path::new("a.sqfs")).unwrap(),
            OutputKind::Squashfs
        );
        assert!(OutputKind::from_path(Path::new("a.img")).is_err());
    }

    #[test]
    fn quoting_and_runscript() {
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        let dir = tempfile::tempdir().unwrap();
        let c = ImageConfig {
            env: vec!["A=x y".into()],
            entrypoint: vec!["/app".into()],
            cmd: vec!["--help".into()],
            ..ImageConfig::from_json(serde_json::json!({}))
        };
        add_apptainer_files(dir.path(), &c).unwrap();
        let run = std::fs::read_to_string(dir.path().join(".singularity.d/runscript")).unwrap();
        assert!(
            run.contains("exec '/app' \"$@\"") && run.contains("exec '/app' '--help'"),
            "{run}"
        );
        let env = std::fs::read_to_string(dir.path().join(".singularity.d/env/90-environment.sh"))
            .unwrap();
        assert!(env.contains("export A='x y'"), "{env}");
    }
}
