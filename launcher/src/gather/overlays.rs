//! `--overlay`: what each entry is on the host: a directory (the writable layer, or a
//! read-only one with `:ro`), or a SquashFS image (bare, or a SIF's primary partition) opened
//! here like the image itself, to be served by a FUSE server of its own. Refused with one
//! line each: a missing path, an ext3 overlay image and a SIF's overlay partition (mounting
//! ext3 needs root or fuse2fs), anything else that is neither SquashFS nor SIF.

use crate::image::view::ImageDesc;
use crate::image::Image;
use crate::options::overlay::OverlaySpec;
use crate::options::LaunchOptions;
use anyhow::{bail, Context, Result};
use image_tools::sif::PartType;
use image_tools::squashfs::Archive;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One `--overlay` entry, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlay {
    /// The entry as the user wrote it (for the planner's refusals).
    pub given: String,
    pub layer: Layer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layer {
    /// A directory without `:ro` (canonical): the writable layer.
    Writable(PathBuf),
    /// `DIR:ro` (canonical): a read-only layer.
    Dir(PathBuf),
    /// A SquashFS or SIF image: a read-only layer.
    Image(ImageDesc),
}

/// The entries of `opts.overlays` in order, and the archives of the image layers (in the
/// order of those layers), which the launch serves.
pub fn gather(opts: &LaunchOptions, cwd: &Path) -> Result<(Vec<Overlay>, Vec<Arc<Archive>>)> {
    let mut found = Vec::new();
    let mut archives = Vec::new();
    for spec in &opts.overlays {
        let (layer, archive) = classify(spec, &cwd.join(&spec.path))?;
        archives.extend(archive);
        found.push(Overlay {
            given: spec.given.clone(),
            layer,
        });
    }
    Ok((found, archives))
}

fn classify(spec: &OverlaySpec, path: &Path) -> Result<(Layer, Option<Arc<Archive>>)> {
    let given = &spec.given;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if spec.readonly {
                bail!("--overlay {given}: no such file or directory");
            }
            bail!(
                "--overlay {given}: no such file or directory (a writable overlay directory must exist first: mkdir -p {})",
                spec.path.display()
            );
        }
        Err(e) => bail!("--overlay {given}: {e}"),
    };
    if meta.is_dir() {
        let canonical = std::fs::canonicalize(path)
            .with_context(|| format!("--overlay {given}: resolving the path"))?;
        let layer = match spec.readonly {
            true => Layer::Dir(canonical),
            false => Layer::Writable(canonical),
        };
        return Ok((layer, None));
    }
    if is_ext3(path) {
        bail!(
            "--overlay {given}: an ext3 overlay image: not supported (mounting ext3 needs root or fuse2fs); use a directory as the writable overlay, or a SquashFS image (mksquashfs DIR IMG.sqfs) as a read-only one"
        );
    }
    let image = Image::open(path).with_context(|| format!("--overlay {given}"))?;
    if let Some(sif) = &image.sif {
        if sif
            .descriptors
            .iter()
            .any(|d| matches!(d.partition(), Some((_, PartType::Overlay, _))))
        {
            bail!(
                "--overlay {given}: the SIF has an overlay partition: not supported (its ext3 file system needs root or fuse2fs to mount); use a directory overlay"
            );
        }
    }
    let desc = crate::image::view::ImageView::desc(&image).clone();
    Ok((Layer::Image(desc), Some(image.archive.clone())))
}

/// An ext2/3/4 file system: its superblock's magic 0xEF53 at byte 1080.
fn is_ext3(path: &Path) -> bool {
    let mut magic = [0u8; 2];
    image_tools::image_file::open(path)
        .and_then(|f| f.read_exact_at(&mut magic, 1080))
        .is_ok_and(|()| magic == [0x53, 0xef])
}
