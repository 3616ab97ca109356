//! Which mount points the image lacks, found by walking it in-process.
//!
//! The image is owned by users that are not mapped in our user namespace, so the caller may
//! not create directories through the overlay (EACCES on the image's /home, say). Instead the
//! missing mount points are made in the overlay's upper layer before it is mounted: this walk
//! finds them, following the image's own symlinks as the kernel would inside the container.

use crate::image::view::{Entry, ImageView};
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

const MAX_LINK_HOPS: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NodeKind {
    Dir,
    File,
}

/// One path to create in the overlay's upper layer, parents first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpperNode {
    pub path: PathBuf,
    pub kind: NodeKind,
    pub mode: u32,
}

/// The nodes to create so that `dst` exists, or an empty list when the image has it.
pub fn missing(image: &dyn ImageView, dst: &Path, leaf: NodeKind) -> Result<Vec<UpperNode>> {
    Ok(match walk(image, dst, leaf, true)? {
        Walk::Exists { .. } => Vec::new(),
        Walk::Missing(nodes) => nodes,
    })
}

/// Where a file served by the FUSE server goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    /// The path `dst` resolves to in the image; a final symlink is replaced, not followed.
    pub path: PathBuf,
    /// Directories on the way (the missing ones are shown as virtual nodes).
    pub parents: Vec<UpperNode>,
}

/// Place a file the launcher provides; None when the image has a directory there (the file
/// is then bound instead, and the bind reports the problem).
pub fn place_file(image: &dyn ImageView, dst: &Path) -> Result<Option<Placement>> {
    Ok(match walk(image, dst, NodeKind::File, false)? {
        Walk::Exists { dir: true, .. } => None,
        Walk::Exists { path, dir: false } => Some(Placement {
            path,
            parents: Vec::new(),
        }),
        Walk::Missing(mut nodes) => nodes.pop().map(|leaf| Placement {
            path: leaf.path,
            parents: nodes,
        }),
    })
}

enum Walk {
    Exists {
        path: PathBuf,
        dir: bool,
    },
    /// The nodes to create, parents first (existing directories on the way included).
    Missing(Vec<UpperNode>),
}

fn walk(image: &dyn ImageView, dst: &Path, leaf: NodeKind, follow_last: bool) -> Result<Walk> {
    let mut todo: VecDeque<OsString> = normal_components(dst);
    let mut resolved = PathBuf::from("/");
    let mut parents: Vec<UpperNode> = Vec::new();
    let mut hops = 0;
    while let Some(name) = todo.pop_front() {
        let next = resolved.join(&name);
        match image.entry(&next.to_string_lossy())? {
            Some(Entry::Dir { mode }) => {
                parents.push(UpperNode {
                    path: next.clone(),
                    kind: NodeKind::Dir,
                    mode: u32::from(mode) & 0o7777,
                });
                resolved = next;
            }
            Some(Entry::Symlink(_)) if todo.is_empty() && !follow_last => {
                return Ok(Walk::Exists {
                    path: next,
                    dir: false,
                })
            }
            Some(Entry::Symlink(target)) => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    bail!(
                        "'{}': too many levels of symbolic links in the image",
                        dst.display()
                    );
                }
                let base = if target.starts_with('/') {
                    PathBuf::from("/")
                } else {
                    resolved.clone()
                };
                let mut rebuilt = normal_components(&base.join(&target));
                rebuilt.extend(todo.drain(..));
                todo = rebuilt;
                resolved = PathBuf::from("/");
                parents.clear();
            }
            Some(_) if todo.is_empty() => {
                return Ok(Walk::Exists {
                    path: next,
                    dir: false,
                })
            }
            Some(_) => bail!(
                "'{}': '{}' in the image is not a directory",
                dst.display(),
                next.display()
            ),
            None => {
                let mut out = parents;
                let mut path = next;
                loop {
                    let last = todo.is_empty();
                    let kind = if last { leaf } else { NodeKind::Dir };
                    let mode = if kind == NodeKind::Dir { 0o755 } else { 0o644 };
                    out.push(UpperNode {
                        path: path.clone(),
                        kind,
                        mode,
                    });
                    match todo.pop_front() {
                        Some(n) => path = path.join(n),
                        None => return Ok(Walk::Missing(out)),
                    }
                }
            }
        }
    }
    // Mounting over the root would hide the whole image (and the pivot needs it).
    if resolved == Path::new("/") {
        bail!(
            "mount destination '{}' is the container's root directory{}: choose a directory inside the image",
            dst.display(),
            if hops > 0 { " (through a symlink in the image)" } else { "" }
        );
    }
    Ok(Walk::Exists {
        path: resolved,
        dir: true,
    })
}

/// Lexical components, `..` clamped at the root (as the kernel does at `/`).
fn normal_components(p: &Path) -> VecDeque<OsString> {
    let mut out: VecDeque<OsString> = VecDeque::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push_back(n.to_os_string()),
            Component::ParentDir => {
                out.pop_back();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::view::fake::FakeImage;

    fn paths(v: &[UpperNode]) -> Vec<(String, NodeKind)> {
        v.iter()
            .map(|n| (n.path.display().to_string(), n.kind))
            .collect()
    }

    #[test]
    fn existing_needs_nothing() {
        let img = FakeImage::new(&[("/etc/passwd", "")], &["/home"]);
        assert!(missing(&img, Path::new("/etc/passwd"), NodeKind::File)
            .unwrap()
            .is_empty());
        assert!(missing(&img, Path::new("/home"), NodeKind::Dir)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn missing_with_parents() {
        let img = FakeImage::new(&[], &["/home"]);
        let got = missing(&img, Path::new("/home/alice/work"), NodeKind::Dir).unwrap();
        assert_eq!(
            paths(&got),
            vec![
                ("/home".into(), NodeKind::Dir),
                ("/home/alice".into(), NodeKind::Dir),
                ("/home/alice/work".into(), NodeKind::Dir)
            ]
        );
        let got = missing(&img, Path::new("/etc/hosts"), NodeKind::File).unwrap();
        assert_eq!(
            paths(&got),
            vec![
                ("/etc".into(), NodeKind::Dir),
                ("/etc/hosts".into(), NodeKind::File)
            ]
        );
    }

    #[test]
    fn files_are_placed_over_the_image_entry_or_beside_missing_parents() {
        let mut img = FakeImage::new(&[("/etc/passwd", "root")], &["/etc/hosts.d", "/usr/share"]);
        img.symlinks.insert("/conf".into(), "etc".into());
        img.symlinks
            .insert("/etc/localtime".into(), "/usr/share/zoneinfo/UTC".into());
        // An image file is shown in place; so is a final symlink (replaced, not followed).
        let p = place_file(&img, Path::new("/etc/passwd")).unwrap().unwrap();
        assert_eq!((p.path, p.parents), (PathBuf::from("/etc/passwd"), vec![]));
        let p = place_file(&img, Path::new("/etc/localtime"))
            .unwrap()
            .unwrap();
        assert_eq!(p.path, PathBuf::from("/etc/localtime"));
        // Symlinks on the way are followed inside the image.
        let p = place_file(&img, Path::new("/conf/group")).unwrap().unwrap();
        assert_eq!(p.path, PathBuf::from("/etc/group"));
        // Missing parents come as directories, the file itself does not.
        let p = place_file(&img, Path::new("/opt/x/y.conf"))
            .unwrap()
            .unwrap();
        assert_eq!(p.path, PathBuf::from("/opt/x/y.conf"));
        assert_eq!(
            paths(&p.parents),
            vec![
                ("/opt".into(), NodeKind::Dir),
                ("/opt/x".into(), NodeKind::Dir)
            ]
        );
        // A directory of the image cannot be replaced by a file.
        assert_eq!(place_file(&img, Path::new("/etc/hosts.d")).unwrap(), None);
    }

    #[test]
    fn follows_image_symlinks_inside() {
        let mut img = FakeImage::new(&[], &["/data", "/etc"]);
        img.symlinks
            .insert("/scratch".into(), "/../../data/s".into());
        img.symlinks
            .insert("/etc/localtime".into(), "../usr/share/zoneinfo/UTC".into());
        img.symlinks.insert("/loop".into(), "/loop".into());
        let got = missing(&img, Path::new("/scratch/x"), NodeKind::Dir).unwrap();
        assert_eq!(
            paths(&got),
            vec![
                ("/data".into(), NodeKind::Dir),
                ("/data/s".into(), NodeKind::Dir),
                ("/data/s/x".into(), NodeKind::Dir)
            ]
        );
        let got = missing(&img, Path::new("/etc/localtime"), NodeKind::File).unwrap();
        assert_eq!(
            got.last().unwrap().path,
            PathBuf::from("/usr/share/zoneinfo/UTC")
        );
        assert!(missing(&img, Path::new("/loop/x"), NodeKind::Dir).is_err());
    }

    #[test]
    fn the_root_is_refused_even_through_a_symlink() {
        let mut img = FakeImage::new(&[], &["/data"]);
        img.symlinks.insert("/data/up".into(), "..".into());
        img.symlinks.insert("/data/root".into(), "/".into());
        for dst in [
            "/",
            "/data/..",
            "/data/up",
            "/data/root",
            "/data/root/data/root",
        ] {
            let err = missing(&img, Path::new(dst), NodeKind::Dir)
                .unwrap_err()
                .to_string();
            assert!(err.contains("container's root directory"), "{dst}: {err}");
        }
        assert!(missing(&img, Path::new("/data/root/data"), NodeKind::Dir)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn file_in_the_way() {
        let img = FakeImage::new(&[("/opt", "")], &[]);
        let err = missing(&img, Path::new("/opt/app"), NodeKind::Dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
