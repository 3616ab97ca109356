//! Open an image file — SIF or bare SquashFS, told apart by their magic bytes, not the
//! file name — and read from it in-process, without mounting.

use crate::image::view::{Entry, EntryKind, ImageDesc, ImageView, OciConfig};
use anyhow::{anyhow, bail, Context, Result};
use image_tools::sif::{self, SifFile};
use image_tools::squashfs::{self, Archive, FileType};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Largest image file read whole into memory (see `ImageView::read_file`).
const TEXT_FILE_MAX: u64 = 16 << 20;

pub struct Image {
    desc: ImageDesc,
    pub archive: Arc<Archive>,
    pub sif: Option<SifFile>,
    oci: Option<OciConfig>,
}

impl Image {
    pub fn open(path: &Path) -> Result<Image> {
        Image::open_as(path, None)
    }

    /// The image at `path`, or, when given, `file`: the image file as the launch's signature
    /// checks opened and read it (`path` then only names it), so that what is mounted is what
    /// was checked, whatever the path names by now.
    pub fn open_as(path: &Path, file: Option<File>) -> Result<Image> {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("image '{}' not found", path.display()))?;
        let shown = path.display().to_string();
        if file.is_none() && path.is_dir() {
            bail!("'{shown}' is a directory (a sandbox, which exec, run and shell take); this needs a .sif or .sqfs image file");
        }
        let file = match file {
            Some(f) => f,
            None => image_tools::image_file::open(&path)
                .with_context(|| format!("cannot open image '{shown}'"))?,
        };
        let file_size = file
            .metadata()
            .with_context(|| format!("stat '{shown}'"))?
            .len();
        let mut magic = [0u8; 64];
        let n = read_prefix(&file, &mut magic).with_context(|| format!("reading '{shown}'"))?;
        let magic = &magic[..n];
        // The SquashFS's place in the file, and in a SIF the size of the partition holding it.
        let (format, offset, partition, sif, oci) = if sif::is_sif(magic) {
            let s = SifFile::read_from(&file).map_err(|e| anyhow!("'{shown}': {e}"))?;
            let part = s
                .primary_squashfs()
                .map_err(|e| anyhow!("'{shown}': {e}"))?;
            let (offset, size) = (part.offset, part.size);
            let oci = sif_oci_config(&s, &file);
            ("SIF", offset, Some(size), Some(s), oci)
        } else if squashfs::is_squashfs(magic) {
            ("SquashFS", 0, None, None, None)
        } else {
            bail!("'{shown}' is neither a SIF file nor a SquashFS image (unknown magic bytes {:02x?})", &magic[..magic.len().min(8)]);
        };
        let archive = Archive::open(file, offset)
            .map_err(|e| anyhow!("'{shown}': SquashFS at offset {offset}: {e}"))?;
        let used = archive.superblock().bytes_used;
        if let Some(size) = partition.filter(|size| used > *size) {
            // Reads would go past the partition, into the SIF's other objects (signatures, a
            // second partition): what a verified partition digest would not cover.
            bail!(
                "'{shown}': the SquashFS at offset {offset} uses {used} bytes but its SIF partition holds only {size}: refusing an image that reads past its partition"
            );
        }
        Ok(Image {
            desc: ImageDesc {
                path,
                format,
                squashfs_offset: offset,
                file_size,
            },
            archive: Arc::new(archive),
            sif,
            oci,
        })
    }

    fn resolve(&self, path: &str) -> Result<Option<squashfs::Inode>> {
        self.archive
            .resolve(path.as_bytes())
            .map_err(|e| anyhow!("'{}': reading {path}: {e}", self.desc.path.display()))
    }
}

fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The OCI image config stored in a SIF (a JSON object named like `oci-config.json`).
fn sif_oci_config(s: &SifFile, file: &File) -> Option<OciConfig> {
    let d = s.oci_config()?;
    if d.size > 16 << 20 {
        return None;
    }
    OciConfig::from_slice(&s.read_object(file, d).ok()?)
}

impl ImageView for Image {
    fn desc(&self) -> &ImageDesc {
        &self.desc
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        // The files read whole are small text (passwd, group, env scripts, labels); a huge
        // (sparse) one would cost its whole size in memory before the command even starts.
        if let Some(inode) = self.resolve(path)? {
            if inode.kind == FileType::File && inode.size > TEXT_FILE_MAX {
                bail!(
                    "'{}': {path} is {} bytes; the launcher reads at most {} MiB of such files",
                    self.desc.path.display(),
                    inode.size,
                    TEXT_FILE_MAX >> 20
                );
            }
        }
        self.archive
            .read_file(path.as_bytes())
            .map_err(|e| anyhow!("'{}': reading {path}: {e}", self.desc.path.display()))
    }

    fn file_size(&self, path: &str) -> Result<Option<u64>> {
        Ok(self
            .resolve(path)?
            .filter(|i| i.kind == FileType::File)
            .map(|i| i.size))
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let shown = || self.desc.path.display().to_string();
        let Some(inode) = self.resolve(path)?.filter(|i| i.kind == FileType::File) else {
            bail!("'{}': {path} is not a regular file", shown());
        };
        self.archive
            .read_at(&inode, offset, buf)
            .map_err(|e| anyhow!("'{}': reading {path}: {e}", shown()))
    }

    fn kind(&self, path: &str) -> Result<Option<EntryKind>> {
        Ok(self.resolve(path)?.map(|i| match i.kind {
            FileType::Dir => EntryKind::Dir,
            FileType::File => EntryKind::File,
            _ => EntryKind::Other,
        }))
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>> {
        let shown = || self.desc.path.display().to_string();
        let Some(inode) = self
            .archive
            .resolve_nofollow(path.as_bytes())
            .map_err(|e| anyhow!("'{}': reading {path}: {e}", shown()))?
        else {
            return Ok(None);
        };
        Ok(Some(match inode.kind {
            FileType::Dir => Entry::Dir { mode: inode.mode },
            FileType::File => Entry::File,
            FileType::Symlink => {
                let target = self
                    .archive
                    .read_link(&inode)
                    .map_err(|e| anyhow!("'{}': reading link {path}: {e}", shown()))?;
                Entry::Symlink(String::from_utf8_lossy(&target).into_owned())
            }
            _ => Entry::Other,
        }))
    }

    fn list_dir(&self, path: &str) -> Result<Vec<String>> {
        match self.resolve(path)? {
            Some(dir) if dir.kind == FileType::Dir => Ok(self
                .archive
                .read_dir(&dir)
                .map_err(|e| anyhow!("'{}': listing {path}: {e}", self.desc.path.display()))?
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .collect()),
            _ => Ok(Vec::new()),
        }
    }

    fn oci_config(&self) -> Option<&OciConfig> {
        self.oci.as_ref()
    }
}
