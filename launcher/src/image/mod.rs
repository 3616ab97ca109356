//! Images read in-process, without mounting: opening SIF or SquashFS files or sandbox
//! directories, the read-only `ImageView` the planner walks, and `inspect`.

pub mod dir;
pub mod inspect;
pub mod open;
pub mod view;

pub use dir::DirImage;
pub use open::Image;

use anyhow::Result;
use image_tools::squashfs::Archive;
use std::path::Path;
use std::sync::Arc;
use view::ImageView;

/// An image as a launch uses it: a file served by the FUSE server, or a directory bound as
/// the root.
pub enum Opened {
    File(Box<Image>),
    Directory(DirImage),
}

impl Opened {
    /// A directory is a sandbox; anything else must be a SIF or SquashFS file. `checked`: the
    /// image file as the signature checks opened it (`Image::open_as`).
    pub fn open(path: &Path, checked: Option<std::fs::File>) -> Result<Opened> {
        if checked.is_none() && path.is_dir() {
            return Ok(Opened::Directory(DirImage::open(path)?));
        }
        Ok(Opened::File(Box::new(Image::open_as(path, checked)?)))
    }

    pub fn view(&self) -> &dyn ImageView {
        match self {
            Opened::File(i) => i.as_ref(),
            Opened::Directory(d) => d,
        }
    }

    /// The SquashFS the FUSE server serves; none for a directory.
    pub fn archive(&self) -> Option<Arc<Archive>> {
        match self {
            Opened::File(i) => Some(i.archive.clone()),
            Opened::Directory(_) => None,
        }
    }
}
