//! Docker and OCI images staged as a root file system for `launcher build`.
//!
//! [`stage`] finds the image for a platform in a `docker save` archive, an OCI
//! image layout (directory or tar), verifies every blob's sha256, and applies the
//! layers in order (whiteouts, opaque directories, hard links across layers) into
//! `<staging_dir>/rootfs`. What an unprivileged user cannot put on disk (ownership,
//! exact modes, device nodes, fifos, xattrs) is returned as [`crate::tree::Overrides`]
//! for the SquashFS writer.
//!
//! ```no_run
//! # fn main() -> image_tools::oci::Result<()> {
//! use image_tools::oci::{stage, Source};
//! let src = Source::parse("docker-archive:app.tar")?;
//! let staged = stage(&src, "amd64", std::path::Path::new("/tmp/stage"))?;
//! println!("{} entries, cmd {:?}", staged.overrides.len(), staged.config.cmd);
//! # Ok(()) }
//! ```

mod blobs;
mod digest;
mod error;
mod image;
mod unpack;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use crate::oci_config::ImageConfig;
pub use error::{Error, Result};
pub(crate) use image::Descriptor;
pub use image::Platform;

use blobs::{Store, TarIndex};
use digest::HashReader;
use image::{Check, LayerRef, Resolved};
use unpack::Unpacker;

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `docker save` output (a tar, possibly gzip- or zstd-compressed).
    DockerArchive(PathBuf),
    /// An OCI image layout in a tar (`skopeo copy ... oci-archive:`).
    OciArchive(PathBuf),
    /// An OCI image layout directory; `reference` selects by the
    /// `org.opencontainers.image.ref.name` annotation.
    OciLayout {
        dir: PathBuf,
        reference: Option<String>,
    },
    /// `tar:PATH`: a plain root file system tarball (what `tar -C root -c .` or
    /// `mmdebstrap --mode=unshare ... out.tar` writes), plain or gzip-, zstd- or
    /// xz-compressed: its one layer, no config.
    RootfsTar(PathBuf),
}

impl Source {
    /// Parses `docker-archive:PATH`, `oci-archive:PATH` or `oci:DIR[:TAG]`.
    ///
    /// For `oci:`, the text after the last `:` is a tag unless it contains a `/`
    /// or the whole text names an existing directory (so `oci:./a:b` with a
    /// directory `./a:b` means that directory).
    pub fn parse(spec: &str) -> Result<Source> {
        let nonempty = |p: &str| {
            if p.is_empty() {
                Err(Error::Invalid(format!("{spec:?}: missing path")))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        if let Some(p) = spec.strip_prefix("docker-archive:") {
            return Ok(Source::DockerArchive(nonempty(p)?));
        }
        if let Some(p) = spec.strip_prefix("oci-archive:") {
            return Ok(Source::OciArchive(nonempty(p)?));
        }
        if let Some(p) = spec.strip_prefix("tar:") {
            return Ok(Source::RootfsTar(nonempty(p)?));
        }
        if let Some(rest) = spec.strip_prefix("oci:") {
            let (dir, reference) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !Path::new(rest).is_dir() => {
                    (d, (!t.is_empty()).then(|| t.to_string()))
                }
                _ => (rest, None),
            };
            return Ok(Source::OciLayout {
                dir: nonempty(dir)?,
                reference,
            });
        }
        Err(Error::Invalid(format!(
            "{spec:?}: unknown image source (expected docker-archive:PATH, oci-archive:PATH, oci:DIR[:TAG] or tar:PATH)"
        )))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
            Source::OciArchive(p) => write!(f, "oci-archive:{}", p.display()),
            Source::RootfsTar(p) => write!(f, "tar:{}", p.display()),
            Source::OciLayout {
                dir,
                reference: None,
            } => write!(f, "oci:{}", dir.display()),
            Source::OciLayout {
                dir,
                reference: Some(r),
            } => write!(f, "oci:{}:{r}", dir.display()),
        }
    }
}

/// A staged image.
#[derive(Debug)]
pub struct Staged {
    /// The root file system: `<staging_dir>/rootfs`.
    pub root: PathBuf,
    /// What the image shows where the staging tree cannot (see [`crate::tree`]).
    pub overrides: crate::tree::Overrides,
    pub config: ImageConfig,
    /// `sha256:<hex>` of the image manifest. A docker archive has no manifest: there
    /// it is the config digest (the Docker image ID). Empty for a root file system tarball.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config blob; empty for a root file system tarball.
    pub config_digest: String,
}

/// Stages the `arch` ("amd64", "arm64", "arm/v7") image of `source` in
/// `staging_dir` (created; the caller removes it, also after an error).
pub fn stage(source: &Source, arch: &str, staging_dir: &Path) -> Result<Staged> {
    fs::create_dir_all(staging_dir)
        .map_err(Error::io(format!("creating {}", staging_dir.display())))?;
    let root = staging_dir.join("rootfs");
    fs::create_dir(&root).map_err(Error::io(format!("creating {}", root.display())))?;
    let scratch = staging_dir.join("archive.tar");
    let result = stage_into(source, arch, &root, &scratch);
    let _ = fs::remove_file(&scratch);
    let (resolved, overrides) = result?;
    Ok(Staged {
        root,
        overrides,
        config: ImageConfig::from_json(resolved.config),
        manifest_digest: resolved.manifest_digest,
        config_digest: resolved.config_digest,
    })
}

fn stage_into(
    source: &Source,
    arch: &str,
    root: &Path,
    scratch: &Path,
) -> Result<(Resolved, crate::tree::Overrides)> {
    let (store, resolved) = match source {
        Source::DockerArchive(p) => {
            let store = Store::Tar(open_archive(p, &source.to_string(), scratch)?);
            let r = image::resolve_docker(&store, None, arch)?;
            (store, r)
        }
        Source::OciArchive(p) => {
            let store = Store::Tar(open_archive(p, &source.to_string(), scratch)?);
            let r = image::resolve_layout(&store, None, arch)?;
            (store, r)
        }
        Source::OciLayout { dir, reference } => {
            if !dir.is_dir() {
                return Err(Error::NotFound(format!("{source}: not a directory")));
            }
            let store = blobs::dir(dir);
            let r = image::resolve_layout(&store, reference.as_deref(), arch)?;
            (store, r)
        }
        Source::RootfsTar(p) => return stage_rootfs_tar(p, &source.to_string(), root),
    };
    let mut unpacker = Unpacker::new(root);
    let n = resolved.layers.len();
    for (i, layer) in resolved.layers.iter().enumerate() {
        let what = format!(
            "{}: layer {}/{n} ({})",
            store.describe(),
            i + 1,
            layer.member
        );
        apply_layer(&store, layer, &mut unpacker, &what)?;
    }
    Ok((resolved, unpacker.overrides))
}

/// A root file system tarball as the image's one layer, with the same containment and
/// ownership records as an OCI layer's (whiteouts mean nothing in it but are handled the
/// same); no config: the image has no environment, entrypoint or labels of its own.
fn stage_rootfs_tar(
    path: &Path,
    name: &str,
    root: &Path,
) -> Result<(Resolved, crate::tree::Overrides)> {
    let file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NotFound(format!("{name}: no such file")))
        }
        r => r.map_err(Error::io(format!("{name}: opening")))?,
    };
    if file
        .metadata()
        .map_err(Error::io(format!("{name}: reading")))?
        .is_dir()
    {
        return Err(Error::Invalid(format!(
            "{name}: is a directory (build from a directory by naming it without tar:)"
        )));
    }
    let mut unpacker = Unpacker::new(root);
    unpack_stream(
        BufReader::with_capacity(1 << 20, file),
        None,
        &mut unpacker,
        name,
    )?;
    let resolved = Resolved {
        manifest_digest: String::new(),
        config_digest: String::new(),
        config: serde_json::Value::Object(Default::default()),
        layers: Vec::new(),
    };
    Ok((resolved, unpacker.overrides))
}

/// Entry points for the fuzz targets in fuzz/ (built only with cfg(fuzzing)).
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::*;

    /// Applies `layer` (a tar, possibly gzip- or zstd-compressed) into the empty
    /// directory `root`, as [`stage`] applies each layer.
    pub fn apply_layer(layer: &[u8], root: &Path) -> Result<crate::tree::Overrides> {
        let mut unpacker = Unpacker::new(root);
        unpack_stream(io::Cursor::new(layer), None, &mut unpacker, "fuzz layer")?;
        Ok(unpacker.overrides)
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
/// The most memory an xz stream may make its decoder use.
const XZ_MEMORY_LIMIT: u64 = 256 << 20;

/// Indexes an archive in place; a compressed one (`docker save | gzip`) is first
/// decompressed to `scratch`, since members are then read by offset.
fn open_archive(path: &Path, name: &str, scratch: &Path) -> Result<TarIndex> {
    let file = File::open(path).map_err(Error::io(format!("{name}: opening")))?;
    let mut head = [0u8; 4];
    let n = file
        .read_at(&mut head, 0)
        .map_err(Error::io(format!("{name}: reading")))?;
    let head = &head[..n];
    if head.starts_with(GZIP_MAGIC) || head.starts_with(ZSTD_MAGIC) {
        let mut dec = decoder(BufReader::new(file), None, name)?;
        let mut out =
            File::create(scratch).map_err(Error::io(format!("creating {}", scratch.display())))?;
        io::copy(&mut dec, &mut out)
            .map_err(|e| Error::Invalid(format!("{name}: decompressing: {e}")))?;
        let file =
            File::open(scratch).map_err(Error::io(format!("opening {}", scratch.display())))?;
        return TarIndex::build(name.to_string(), file);
    }
    TarIndex::build(name.to_string(), file)
}

/// A decompressing reader: the media type decides when it names a compression,
/// else the magic bytes (docker archives have no media types).
fn decoder<'a, R: BufRead + 'a>(
    mut r: R,
    media_type: Option<&str>,
    what: &str,
) -> Result<Box<dyn Read + 'a>> {
    let mt = media_type.unwrap_or("");
    let (gzip, zstd, xz) = if mt.ends_with("gzip") {
        (true, false, false)
    } else if mt.ends_with("zstd") {
        (false, true, false)
    } else {
        let head = r
            .fill_buf()
            .map_err(Error::io(format!("{what}: reading")))?;
        (
            head.starts_with(GZIP_MAGIC),
            head.starts_with(ZSTD_MAGIC),
            head.starts_with(XZ_MAGIC),
        )
    };
    Ok(if xz {
        // Root file system tarballs (`tar -cJf`, mmdebstrap's .tar.xz); no OCI media type
        // names xz. The decoder's memory is bounded as zstd's window is: a hostile header
        // may ask for a 1.5 GiB dictionary, xz -9 needs 65 MiB.
        let stream = liblzma::stream::Stream::new_stream_decoder(
            XZ_MEMORY_LIMIT,
            liblzma::stream::CONCATENATED,
        )
        .map_err(|e| Error::Invalid(format!("{what}: xz: {e}")))?;
        Box::new(liblzma::bufread::XzDecoder::new_stream(r, stream))
    } else if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if zstd {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .map_err(Error::io(format!("{what}: zstd")))?,
        )
    } else {
        Box::new(r)
    })
}

/// Decompresses, checks and applies one layer, streaming.
///
/// The digest is complete only once the whole blob has been read, so it is checked
/// after the layer is applied: the staged tree is scratch until [`stage`] returns
/// Ok, and containment never depends on the content being trusted. A mismatch wins
/// over any other error, since a corrupt blob usually breaks the tar or the
/// compression first.
fn apply_layer(store: &Store, layer: &LayerRef, unpacker: &mut Unpacker, what: &str) -> Result<()> {
    let mt = layer.media_type.as_deref();
    if let Some(mt) = mt {
        if mt.contains("encrypted") || !mt.contains("tar") {
            return Err(Error::Unsupported(format!(
                "{what}: unsupported layer media type {mt:?}"
            )));
        }
    }
    let raw = store.open(&layer.member)?;
    let (res, ver) = match &layer.check {
        Check::Blob(digest, size) => {
            let mut hashed = HashReader::new(raw);
            let res = unpack_stream(
                BufReader::with_capacity(1 << 20, &mut hashed),
                mt,
                unpacker,
                what,
            );
            (res, hashed.verify(what, digest, *size))
        }
        Check::Uncompressed(digest) => {
            let dec = decoder(BufReader::with_capacity(1 << 20, raw), mt, what)?;
            let mut hashed = HashReader::new(dec);
            let res = unpacker.apply_layer(&mut hashed, what);
            (res, hashed.verify(what, digest, None))
        }
        Check::None => (
            unpack_stream(BufReader::with_capacity(1 << 20, raw), mt, unpacker, what),
            Ok(()),
        ),
    };
    match (res, ver) {
        (_, Err(e @ Error::DigestMismatch { .. })) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), ver) => ver,
    }
}

fn unpack_stream<R: BufRead>(
    r: R,
    mt: Option<&str>,
    unpacker: &mut Unpacker,
    what: &str,
) -> Result<()> {
    let mut dec = decoder(r, mt, what)?;
    unpacker.apply_layer(&mut dec, what)?;
    // To the end of the compressed stream, so that its own checks run too.
    io::copy(&mut dec, &mut io::sink())
        .map_err(|e| Error::Invalid(format!("{what}: decompressing: {e}")))?;
    Ok(())
}
