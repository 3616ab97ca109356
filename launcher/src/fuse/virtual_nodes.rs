//! Mount points the image lacks, shown by the FUSE server itself.
//!
//! A bind needs an existing destination. Instead of putting an overlay over the whole image
//! (2 ms to mount, and a layer under every later lookup) just to create a few directories,
//! the server lists them as if the image had them: empty directories and files owned by the
//! caller, under the image directories the plan found them missing from.

use crate::plan::mount_points::{NodeKind, UpperNode};
use image_tools::squashfs::{Archive, FileType};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a virtual node hangs: under an image directory (by inode reference) or another
/// virtual node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Parent {
    Image(u64),
    Virtual(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualNode {
    pub name: Vec<u8>,
    pub dir: bool,
    pub mode: u16,
    /// A file with content (passwd, hosts, ...): shown in place of the image's entry of that
    /// name, if any. Mount points have none (they are empty until something is mounted).
    pub content: Option<Arc<[u8]>>,
}

#[derive(Default, Debug)]
pub struct VirtualNodes {
    nodes: Vec<VirtualNode>,
    children: HashMap<Parent, Vec<usize>>,
}

impl VirtualNodes {
    /// The nodes of `upper` that the image does not have (the others are their parents), and
    /// the files to show with their content (at paths already resolved in the image).
    pub fn build(
        archive: &Archive,
        upper: &[UpperNode],
        files: &[(PathBuf, Vec<u8>)],
    ) -> Result<VirtualNodes, String> {
        let mut v = VirtualNodes::default();
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        let lookup = |p: &Path| {
            archive
                .resolve_nofollow(p.as_os_str().as_bytes())
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        // The directory a node goes in (an earlier virtual node or an image directory), and its name.
        let place = |path: &Path, by_path: &HashMap<PathBuf, usize>| {
            let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(format!("{}: no parent directory", path.display()));
            };
            let parent = match by_path.get(parent_path) {
                Some(i) => Parent::Virtual(*i),
                None => match lookup(parent_path)? {
                    Some(dir) if dir.kind == FileType::Dir => Parent::Image(dir.inode_ref),
                    _ => {
                        return Err(format!(
                            "{}: parent is not a directory in the image",
                            path.display()
                        ))
                    }
                },
            };
            Ok((parent, name.as_bytes().to_vec()))
        };
        for n in upper {
            if lookup(&n.path)?.is_some() {
                continue;
            }
            let (parent, name) = place(&n.path, &by_path)?;
            let idx = v.nodes.len();
            v.nodes.push(VirtualNode {
                name,
                dir: n.kind == NodeKind::Dir,
                mode: (n.mode & 0o7777) as u16,
                content: None,
            });
            v.children.entry(parent).or_default().push(idx);
            by_path.insert(n.path.clone(), idx);
        }
        for (path, content) in files {
            let (parent, name) = place(path, &by_path)?;
            let idx = v.nodes.len();
            let siblings = v.children.entry(parent).or_default();
            siblings.retain(|i| v.nodes[*i].name != name);
            siblings.push(idx);
            v.nodes.push(VirtualNode {
                name,
                dir: false,
                mode: 0o644,
                content: Some(Arc::from(content.as_slice())),
            });
        }
        Ok(v)
    }

    pub fn child(&self, parent: Parent, name: &[u8]) -> Option<usize> {
        self.children
            .get(&parent)?
            .iter()
            .copied()
            .find(|i| self.nodes[*i].name == name)
    }

    /// Whether a name in an image directory is shown by a virtual node instead.
    pub fn shadows(&self, parent: Parent, name: &[u8]) -> bool {
        self.child(parent, name).is_some()
    }

    pub fn children(&self, parent: Parent) -> &[usize] {
        self.children.get(&parent).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn get(&self, idx: usize) -> Option<&VirtualNode> {
        self.nodes.get(idx)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn only_missing_nodes_under_their_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("root/home")).unwrap();
        std::fs::create_dir_all(dir.join("root/etc")).unwrap();
        let img = dir.join("img.sqfs");
        let st = Command::new("mksquashfs")
            .arg(dir.join("root"))
            .arg(&img)
            .args(["-quiet", "-no-progress", "-noappend"])
            .status();
        assert!(
            st.map(|s| s.success()).unwrap_or(false),
            "mksquashfs (squashfs-tools) is needed"
        );
        let archive = Archive::open_path(&img, 0).unwrap();
        let node = |p: &str, dir: bool| UpperNode {
            path: p.into(),
            kind: if dir { NodeKind::Dir } else { NodeKind::File },
            mode: if dir { 0o755 } else { 0o644 },
        };
        let upper = vec![
            node("/home", true),
            node("/home/alice", true),
            node("/home/alice/w", true),
            node("/etc", true),
            node("/etc/hosts", false),
        ];
        let v = VirtualNodes::build(&archive, &upper, &[]).unwrap();
        assert_eq!(v.len(), 3);
        let home = archive
            .resolve_nofollow(b"/home")
            .unwrap()
            .unwrap()
            .inode_ref;
        let alice = v.child(Parent::Image(home), b"alice").unwrap();
        assert!(v.get(alice).unwrap().dir);
        assert!(v.child(Parent::Virtual(alice), b"w").is_some());
        let etc = archive
            .resolve_nofollow(b"/etc")
            .unwrap()
            .unwrap()
            .inode_ref;
        let hosts = v.child(Parent::Image(etc), b"hosts").unwrap();
        assert!(!v.get(hosts).unwrap().dir);
        assert_eq!(v.children(Parent::Image(etc)), &[hosts]);
        assert!(v.child(Parent::Image(etc), b"passwd").is_none());
    }
}
