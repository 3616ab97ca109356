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
    /// Image to write: NAME.sif (SIF with a SquashFS root) or NAME.sqfs (bare SquashFS).
    pub output: PathBuf,
    /// A directory, docker-archive:FILE.tar, oci-archive:FILE.tar, oci:DIR[:TAG] or
    /// docker://REF (pulled from a registry: ubuntu:24.04, ghcr.io/org/img:tag, host:port/repo@sha256:...).
    pub source: String,
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
}

/// The host's architecture in Go's (and so SIF's and OCI's) spelling.
fn host_arch() -> &'static str {
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

pub fn run(args: BuildArgs) -> Result<i32> {
    let out = &args.output;
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
    let source = BuildSource::parse(&args.source)?;
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
        tmpdir: std::env::temp_dir(),
        threads: 0,
        pull: PullOptions::new(args.insecure),
    };
    let staging = Staging::create(&opts.tmpdir)?;
    clean_up_on_signal(&staging.0, out)?;
    let started = Instant::now();
    let report = build::build(out, &source, &opts, &staging)
        .with_context(|| format!("building '{}'", out.display()))?;
    drop(staging);
    if let Some(p) = &report.pull {
        // One quiet line; "downloaded 0" on a rebuild shows the cache at work.
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
