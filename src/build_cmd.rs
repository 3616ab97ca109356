//! `launcher build OUT SOURCE`: the command-line side (options, progress, interruption).

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use image_tools::build::{self, BuildOptions, BuildSource, Staging};
use image_tools::registry::PullOptions;
use image_tools::squashfs::write::WriteCompressor;
use nix::sys::signal::{SigSet, Signal};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Compress {
    Zstd,
    Gzip,
    Xz,
    Lz4,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Image to write: NAME.sif (SIF with a SquashFS root) or NAME.sqfs (bare SquashFS);
    /// with --sandbox, a directory.
    pub output: PathBuf,
    /// A directory, a SIF or SquashFS image, docker-archive:FILE.tar, oci-archive:FILE.tar, oci:DIR[:TAG],
    /// tar:ROOTFS.tar (a root file system tarball, plain/gz/xz/zst),
    /// docker://REF (pulled from a registry: ubuntu:24.04, ghcr.io/org/img:tag, host:port/repo@sha256:...),
    /// or an Apptainer definition file (app.def; %post runs as fake root, docs/building.md).
    pub source: String,
    /// Definition files: NAME=VALUE for {{ NAME }} (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub build_arg: Vec<String>,
    /// Definition files: a file of NAME=VALUE lines for {{ NAME }}.
    #[arg(long = "build-arg-file", value_name = "FILE")]
    pub build_arg_file: Option<PathBuf>,
    /// Definition files: do not run %test after the build.
    #[arg(short = 'T', long)]
    pub notest: bool,
    /// Definition files: unpack the base afresh, neither reusing nor keeping an unpacked tree
    /// in the cache (the blob cache of docker:// pulls is still used).
    #[arg(long)]
    pub disable_cache: bool,
    /// Accepted for Apptainer's spelling: definition files always build as fake root.
    #[arg(short = 'f', long)]
    pub fakeroot: bool,
    /// Compressor for the SquashFS.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compress: Compress,
    /// Compression level (default: mksquashfs's, e.g. zstd 15, gzip 9).
    #[arg(long)]
    pub level: Option<i32>,
    /// SquashFS block size in bytes (4 KiB to 1 MiB, a power of two).
    #[arg(long, default_value_t = 131072)]
    pub block_size: u32,
    /// Byte-identical output for identical input: times from SOURCE_DATE_EPOCH (or 0).
    #[arg(long)]
    pub reproducible: bool,
    /// Platform to take from a multi-arch image, and the SIF's arch (default: this host's).
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// docker:// sources: talk plain HTTP to the registry (a local one) instead of HTTPS.
    #[arg(long)]
    pub insecure: bool,
    /// Overwrite OUTPUT if it exists.
    #[arg(short = 'F', long)]
    pub force: bool,
    /// Write a writable directory tree (a sandbox) at OUTPUT instead of an image: run it with
    /// `launcher exec DIR`, change it with `launcher exec --fakeroot --writable DIR`.
    #[arg(short = 's', long)]
    pub sandbox: bool,
}

/// `launcher pull [OUTPUT] docker://REF`, as Apptainer's `pull`: a build from a registry with
/// Apptainer's default file name.
#[derive(Args)]
pub struct PullArgs {
    /// The SIF file to write (default: NAME_TAG.sif, in --dir or the current directory), then
    /// the image: docker://REF (built into a SIF), or oras://REF (a SIF file kept in a
    /// registry, fetched as it is).
    #[arg(required = true, num_args = 1..=2, value_name = "[OUTPUT] URI")]
    pub args: Vec<String>,
    /// Where the default-named file goes.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Talk plain HTTP to the registry (a local one) instead of HTTPS.
    #[arg(long, alias = "nohttps")]
    pub insecure: bool,
    /// Platform to take from a multi-arch image (default: this host's).
    #[arg(long, default_value = host_arch())]
    pub arch: String,
    /// Overwrite OUTPUT if it exists.
    #[arg(short = 'F', long)]
    pub force: bool,
}

/// `launcher push IMAGE.sif oras://REF`, as Apptainer's `push`: the SIF file as an OCI
/// artifact in a registry.
#[derive(Args)]
pub struct PushArgs {
    /// The SIF file to push.
    pub image: PathBuf,
    /// Where: oras://HOST[:PORT]/REPOSITORY[:TAG] (tag `latest` when none is given).
    pub uri: String,
    /// Talk plain HTTP to the registry (a local one) instead of HTTPS.
    #[arg(long, alias = "nohttps")]
    pub insecure: bool,
}

/// `launcher push`: the SIF file (told by its magic, not its name) into the registry.
pub fn push(args: PushArgs) -> Result<i32> {
    use image_tools::registry::{oras, PullOptions};
    if !args.uri.starts_with("oras://") {
        bail!(
            "'{}': launcher push takes oras://REF (a SIF file kept in an OCI registry)",
            args.uri
        );
    }
    let reference = oras::parse(&args.uri)?;
    let shown = args.image.display();
    if let Err(e) = image_tools::sif::SifFile::open(&args.image) {
        bail!("'{shown}': not a SIF file ({e}); oras:// keeps SIF files: build one with `launcher build OUT.sif {shown}`");
    }
    let digest = oras::push_sif(&args.image, &reference, &PullOptions::new(args.insecure))?;
    eprintln!("launcher: pushed {shown} to oras://{reference} (manifest {digest})");
    Ok(0)
}

impl PullArgs {
    /// `pull`: a SIF artifact (`oras://`) is fetched as it is; a `docker://` image is built.
    pub fn run(self) -> Result<i32> {
        match self.args.as_slice() {
            [.., uri] if uri.starts_with("oras://") => self.pull_oras(),
            _ => run(self.into_build()?),
        }
    }

    fn pull_oras(self) -> Result<i32> {
        use image_tools::registry::{oras, PullOptions};
        let (out, uri) = match self.args.as_slice() {
            [uri] => (None, uri.clone()),
            [out, uri] => (Some(PathBuf::from(out)), uri.clone()),
            _ => bail!("usage: launcher pull [OUTPUT] oras://REF"),
        };
        let reference = oras::parse(&uri)?;
        let output = match out {
            Some(o) => o,
            None => self
                .dir
                .unwrap_or_default()
                .join(default_pull_name(&reference.to_string())?),
        };
        if output.exists() && !self.force {
            bail!("'{}' exists; use --force to overwrite it", output.display());
        }
        let pulled = oras::pull_sif(&reference, &PullOptions::new(self.insecure))?;
        oras::copy_out(&pulled, &output)?;
        eprintln!(
            "launcher: {uri} ({}) written to {}",
            pulled.digest,
            output.display()
        );
        Ok(0)
    }

    pub fn into_build(self) -> Result<BuildArgs> {
        let (out, uri) = match self.args.as_slice() {
            [uri] => (None, uri.clone()),
            [out, uri] => (Some(PathBuf::from(out)), uri.clone()),
            _ => bail!("usage: launcher pull [OUTPUT] docker://REF"),
        };
        if !uri.starts_with("docker://") {
            bail!(
                "'{uri}': launcher pull takes docker://REF images (other sources: launcher build)"
            );
        }
        let output = match out {
            Some(o) => o,
            None => self.dir.unwrap_or_default().join(default_pull_name(&uri)?),
        };
        Ok(BuildArgs {
            output,
            source: uri,
            build_arg: Vec::new(),
            build_arg_file: None,
            notest: false,
            disable_cache: false,
            fakeroot: false,
            compress: Compress::Zstd,
            level: None,
            block_size: 131072,
            reproducible: false,
            arch: self.arch,
            insecure: self.insecure,
            force: self.force,
            sandbox: false,
        })
    }
}

/// This node's block cache of the caller (launcher_runtime::launch::block_cache_sweep).
fn node_block_cache(
    older: Option<std::time::Duration>,
    remove: bool,
) -> Option<(std::path::PathBuf, u64, u64)> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    launcher_runtime::launch::block_cache_sweep(&env, older, remove)
}

/// `launcher cache list|clean`.
pub enum CacheAction {
    List,
    Clean { days: Option<u64>, force: bool },
}

pub fn cache(action: CacheAction) -> Result<i32> {
    use image_tools::registry::{cache_usage, clean_cache, Cache};
    let root = Cache::default_dir()?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match action {
        CacheAction::List => {
            let u = cache_usage(&root)?;
            println!("cache: {}", root.display());
            println!(
                "  {} blobs, {} partial downloads, {:.1} MiB",
                u.blobs,
                u.partial,
                mib(u.bytes)
            );
            let (n, bytes) = crate::image_source::cached_images(&root, None, false)?;
            println!(
                "  {n} converted images (exec docker://...), {:.1} MiB",
                mib(bytes)
            );
            let bases = image_tools::basecache::list(&root)?;
            println!(
                "  {} unpacked bases (definition-file builds), {:.1} MiB",
                bases.len(),
                mib(bases.iter().map(|b| b.bytes).sum())
            );
            for b in &bases {
                println!("    {} {:.1} MiB {}", b.key, mib(b.bytes), b.source);
            }
            if let Some((dir, n, bytes)) = node_block_cache(None, false) {
                println!(
                    "block cache of this node: {}\n  {n} blocks, {:.1} MiB",
                    dir.display(),
                    mib(bytes)
                );
            }
        }
        CacheAction::Clean { days, force } => {
            let older = days.map(|d| std::time::Duration::from_secs(d.saturating_mul(86_400)));
            if !force {
                let u = cache_usage(&root)?;
                let bases = image_tools::basecache::list(&root)?;
                println!(
                    "would remove up to {} blobs and {} partial downloads ({:.1} MiB), {} unpacked bases ({:.1} MiB) from {}{}; run with --force to remove them",
                    u.blobs,
                    u.partial,
                    mib(u.bytes),
                    bases.len(),
                    mib(bases.iter().map(|b| b.bytes).sum()),
                    root.display(),
                    days.map(|d| format!(" (those unused for {d} days)")).unwrap_or_default()
                );
                if let Some((dir, n, bytes)) = node_block_cache(older, false) {
                    println!(
                        "would remove {n} blocks ({:.1} MiB) from this node's block cache {}",
                        mib(bytes),
                        dir.display()
                    );
                }
                return Ok(0);
            }
            let r = clean_cache(&root, older)?;
            println!(
                "removed {} blobs and {} partial downloads ({:.1} MiB) from {}",
                r.blobs,
                r.partial,
                mib(r.bytes),
                root.display()
            );
            let (n, bytes) = crate::image_source::cached_images(&root, older, true)?;
            println!("removed {n} converted images ({:.1} MiB)", mib(bytes));
            let checks = crate::verify_memo::clean(&root, older);
            println!("removed {checks} remembered signature checks");
            if let Some((dir, n, bytes)) = node_block_cache(older, true) {
                println!(
                    "removed {n} blocks ({:.1} MiB) from this node's block cache {}",
                    mib(bytes),
                    dir.display()
                );
            }
            let b = image_tools::basecache::clean(&root, older)?;
            println!(
                "removed {} unpacked bases ({:.1} MiB){}",
                b.trees,
                mib(b.bytes),
                if b.in_use > 0 {
                    format!("; {} in use by a running build, left", b.in_use)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(0)
}

/// Apptainer's name for a pulled image: the repository's last component and the tag
/// (`ubuntu_24.04.sif`, `img_latest.sif`), or the digest's first 12 hex digits.
fn default_pull_name(uri: &str) -> Result<String> {
    let r = image_tools::registry::Reference::parse(uri)?;
    let name = r.repository.rsplit('/').next().unwrap_or(&r.repository);
    let version = match (&r.digest, &r.tag) {
        (Some(d), _) => d.trim_start_matches("sha256:").chars().take(12).collect(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".to_string(),
    };
    Ok(format!("{name}_{version}.sif"))
}

/// The host's architecture in Go's (and so SIF's and OCI's) spelling.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// Build `out` (a .sif) from `source` with the defaults of `launcher build`, for an image
/// source given at run time (`exec docker://...`). No signal handling of its own: the launch
/// that follows forwards signals, and a killed conversion leaves only a temporary file that
/// the next one removes.
pub fn convert(out: &Path, source: &BuildSource, pull: PullOptions, arch: &str) -> Result<()> {
    let opts = BuildOptions {
        compressor: WriteCompressor::Zstd,
        level: None,
        block_size: 131072,
        reproducible: None,
        arch: arch.to_string(),
        tmpdir: std::env::temp_dir(),
        threads: 0,
        pull,
    };
    let staging = Staging::create(&opts.tmpdir)?;
    let started = Instant::now();
    let report = build::build(out, source, &opts, &staging)?;
    if let Some(p) = &report.pull {
        eprintln!(
            "launcher: pulled {} ({}): {} blobs, downloaded {}, cached {}",
            p.name, p.manifest_digest, p.blobs, p.downloaded, p.cached
        );
    }
    eprintln!(
        "launcher: converted in {:.1} s ({} bytes)",
        started.elapsed().as_secs_f64(),
        report.bytes
    );
    Ok(())
}

pub fn run(args: BuildArgs) -> Result<i32> {
    let out = &args.output;
    // A sandbox is staged beside its directory (renamed into place when done).
    let mut tmpdir = std::env::temp_dir();
    if args.sandbox {
        tmpdir = image_tools::sandbox::check_target(out, args.force)?;
    } else {
        build::OutputKind::from_path(out)?;
        if out.exists() && !args.force {
            bail!("'{}' exists; use --force to overwrite it", out.display());
        }
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                bail!(
                    "'{}': the output directory '{}' does not exist",
                    out.display(),
                    parent.display()
                );
            }
        }
    }
    let deffile = read_deffile(&args)?;
    let source = match deffile {
        Some(_) => None,
        None => Some(BuildSource::parse(&args.source)?),
    };
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    let opts = BuildOptions {
        compressor: match args.compress {
            Compress::Zstd => WriteCompressor::Zstd,
            Compress::Gzip => WriteCompressor::Gzip,
            Compress::Xz => WriteCompressor::Xz,
            Compress::Lz4 => WriteCompressor::Lz4,
        },
        level: args.level,
        block_size: args.block_size,
        reproducible: if args.reproducible {
            Some(epoch.unwrap_or(0))
        } else {
            epoch
        },
        arch: args.arch.clone(),
        tmpdir,
        threads: 0,
        pull: PullOptions::new(args.insecure),
    };
    let staging = Staging::create(&opts.tmpdir)?;
    clean_up_on_signal(&staging.0, out)?;
    let started = Instant::now();
    if args.sandbox {
        let pull = match (&source, &deffile) {
            (Some(source), _) => build::build_sandbox(out, source, &opts, &staging),
            (None, Some(def)) => {
                image_tools::defbuild::build_sandbox(out, &def_build(def, &args, &opts), &staging)
            }
            (None, None) => bail!("'{}': nothing to build", args.source),
        }
        .with_context(|| format!("building the sandbox '{}'", out.display()))?;
        drop(staging);
        if let Some(p) = &pull {
            print_pull(p);
        }
        eprintln!(
            "launcher: built the sandbox {} in {:.1} s",
            out.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(0);
    }
    let report = match (&source, &deffile) {
        (Some(source), _) => build::build(out, source, &opts, &staging)
            .with_context(|| format!("building '{}'", out.display()))?,
        (None, Some(def)) => {
            image_tools::defbuild::build(out, &def_build(def, &args, &opts), &staging)
                .with_context(|| format!("building '{}'", out.display()))?
        }
        (None, None) => bail!("'{}': nothing to build", args.source),
    };
    drop(staging);
    if let Some(p) = &report.pull {
        print_pull(p);
    }
    eprintln!(
        "launcher: built {} ({:?}, {} bytes, {} inodes, {} files, {} duplicates) in {:.1} s",
        report.output.display(),
        report.kind,
        report.bytes,
        report.stats.inodes,
        report.stats.files,
        report.stats.duplicates,
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// One quiet line; "downloaded 0" on a rebuild shows the cache at work.
fn print_pull(p: &image_tools::registry::PullReport) {
    eprintln!(
        "launcher: pulled {} ({}): {} blobs, downloaded {} ({} bytes{}), cached {}",
        p.name,
        p.manifest_digest,
        p.blobs,
        p.downloaded,
        p.bytes_downloaded,
        if p.resumed > 0 {
            format!(", {} resumed", p.resumed)
        } else {
            String::new()
        },
        p.cached
    );
}

/// A definition-file build of `def` (warning about build arguments it does not use).
fn def_build<'a>(
    def: &'a image_tools::deffile::Definition,
    args: &'a BuildArgs,
    opts: &'a BuildOptions,
) -> image_tools::defbuild::DefBuild<'a> {
    for a in &def.unused_args {
        eprintln!("launcher: warning: --build-arg {a} is not used by the definition file");
    }
    image_tools::defbuild::DefBuild {
        def,
        def_name: &args.source,
        notest: args.notest,
        reuse_base: !args.disable_cache,
        opts,
    }
}

/// The source as a definition file, parsed with the build arguments, if it is one: a file
/// named `*.def`, or any file whose first header line is `Bootstrap:`.
fn read_deffile(args: &BuildArgs) -> Result<Option<image_tools::deffile::Definition>> {
    let path = Path::new(&args.source);
    if !path.is_file() {
        if path.extension().is_some_and(|e| e == "def") && !path.exists() {
            bail!("'{}': no such definition file", path.display());
        }
        return Ok(None);
    }
    let looks_like = |text: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .is_some_and(|l| l.to_ascii_lowercase().starts_with("bootstrap:"))
    };
    let is_def = path.extension().is_some_and(|e| e == "def");
    let text = if is_def {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the definition file '{}'", path.display()))?
    } else {
        // Only a small text file can be a definition; images and archives are binary.
        match std::fs::metadata(path) {
            Ok(m) if m.len() < 1 << 20 => match std::fs::read_to_string(path) {
                Ok(t) if looks_like(&t) => t,
                _ => return Ok(None),
            },
            _ => return Ok(None),
        }
    };
    let mut build_args = std::collections::BTreeMap::new();
    if let Some(f) = &args.build_arg_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading --build-arg-file '{}'", f.display()))?;
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let (k, v) = t
                .split_once('=')
                .with_context(|| format!("{}:{}: expected NAME=VALUE", f.display(), n + 1))?;
            build_args.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    for a in &args.build_arg {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("--build-arg '{a}': expected NAME=VALUE"))?;
        build_args.insert(k.to_string(), v.to_string());
    }
    let def = image_tools::deffile::parse(&args.source, &text, &build_args)?;
    Ok(Some(def))
}

/// On SIGINT/SIGTERM/SIGHUP: remove the staging tree and any temporary output, then exit.
fn clean_up_on_signal(staging: &Path, out: &Path) -> Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;
    let staging = staging.to_path_buf();
    let out = out.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = set.wait().map(|s| s as i32).unwrap_or(libc::SIGTERM);
            build::remove_tree(&staging);
            remove_temporaries(&out);
            eprintln!("launcher: build interrupted; nothing was left behind");
            std::process::exit(128 + sig);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// The writers' temporary files beside OUT (`.NAME.PID.N.tmp`, `.NAME.tmp-PID-N`).
fn remove_temporaries(out: &Path) {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.");
    let pid = std::process::id().to_string();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) && n.contains(&pid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulled_images_are_named_as_apptainer_names_them() {
        let n = |u: &str| default_pull_name(u).unwrap();
        assert_eq!(n("docker://ubuntu:24.04"), "ubuntu_24.04.sif");
        assert_eq!(n("docker://ghcr.io/org/tool"), "tool_latest.sif");
        assert_eq!(n("docker://localhost:5000/a/b:1"), "b_1.sif");
        let d = format!("docker://busybox@sha256:{}", "ab".repeat(32));
        assert_eq!(n(&d), "busybox_abababababab.sif");
    }
}
