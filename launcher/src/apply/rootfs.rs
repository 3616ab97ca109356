//! Build the container's root from a plan, inside the staging tmpfs, then enter it.
//!
//! Runs in the forked child, in its own mount namespace, after it pivoted into the staging
//! tmpfs: the host is then at `/oldroot`, the FUSE-mounted image (or the bound sandbox
//! directory) at `/image`. The root is the image itself, or an overlay (image below, tmpfs
//! above) where mount points absent from the image must be created and no FUSE server can
//! show them (`--writable-tmpfs`, a directory); it is made read-only afterwards unless
//! `--writable-tmpfs`, or made by a rank whose image server shows another rank's mount points
//! (`Plan::for_foreign_server`). A rank of a shared instance with mounts of its own builds
//! its root the same way in a copy of the instance's staging, with its pieces (upper layer,
//! staged files, the new root) in a tmpfs of its own at `OWN` (`Layout::in_own_tmpfs`).

use crate::apply::syscalls::Syscalls;
use crate::plan::mount_points::NodeKind;
use crate::plan::{LowerLayer, MountStep, Plan};
use anyhow::{Context, Result};
use nix::mount::MsFlags;
use std::path::{Path, PathBuf};

/// Fixed places inside the staging tmpfs.
pub struct Layout {
    pub image: PathBuf,
    /// Where the read-only overlay images are mounted, one directory each (`overlay_image`).
    pub overlays: PathBuf,
    pub oldroot: PathBuf,
    pub newroot: PathBuf,
    /// Holds `upper` and `work`.
    pub rw: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub files: PathBuf,
}

/// The directory of the staging tmpfs where the overlay images are mounted, one directory
/// each (`Layout::overlay_image`).
pub const OVERLAYS: &str = "overlays";

/// Where, in the staging tmpfs of a shared instance, a rank with a mount namespace of its own
/// mounts a tmpfs of its own for its root's pieces (the staging tmpfs is one for all ranks).
pub const OWN: &str = "/own";

impl Layout {
    /// Paths as seen after pivoting into the staging tmpfs.
    pub fn in_staging() -> Layout {
        Layout::under(Path::new("/"))
    }

    /// The same, for a rank's root built in its own tmpfs at `OWN`: the image and the host
    /// are the instance's, the rest the rank's.
    pub fn in_own_tmpfs() -> Layout {
        Layout::under(Path::new(OWN))
    }

    /// Where the image layer `n` of `Plan::lower` is mounted.
    pub fn overlay_image(&self, n: usize) -> PathBuf {
        self.overlays.join(n.to_string())
    }

    fn under(own: &Path) -> Layout {
        Layout {
            image: "/image".into(),
            overlays: Path::new("/").join(OVERLAYS),
            oldroot: "/oldroot".into(),
            newroot: own.join("newroot"),
            rw: own.join("rw"),
            upper: own.join("rw/upper"),
            work: own.join("rw/work"),
            files: own.join("files"),
        }
    }
}

/// A sandbox directory, at `layout.image`: resolved under the host's root like any bind
/// source, and read-only with whatever is mounted under it before anything is built on top.
/// (An image file is mounted there by FUSE before the pivot.)
pub fn bind_image_dir(sys: &dyn Syscalls, plan: &Plan, layout: &Layout) -> Result<()> {
    if !plan.image.is_directory() {
        return Ok(());
    }
    let source = sys.source(&layout.oldroot, &plan.image.path)?;
    sys.mount(
        Some(&source.path),
        &layout.image,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .with_context(|| {
        format!(
            "binding the sandbox directory {}",
            plan.image.path.display()
        )
    })?;
    if plan.writable_sandbox {
        // `--writable DIR`: the sandbox is the root itself, written in place.
        return Ok(());
    }
    sys.make_readonly(&layout.image, true)
}

/// Assemble the root at `layout.newroot` (the image is at `layout.image`).
pub fn assemble(sys: &dyn Syscalls, plan: &Plan, layout: &Layout) -> Result<()> {
    for d in [
        &layout.newroot,
        &layout.files,
        &layout.rw,
        &layout.upper,
        &layout.work,
    ] {
        sys.mkdir(d, 0o755)?;
    }
    if plan.needs_overlay() {
        // `--overlay DIR`: the layers are in the user's directory (found under the host's
        // root like a bind source), kept for the next launch; else in the staging tmpfs.
        // The directory is named by its descriptor's /proc path (held until the mount is made):
        // no ':' or ',' of a user's directory name can reach overlayfs's option string.
        let held;
        let (upper, work) = match &plan.overlay_dir {
            Some(dir) => {
                held = sys.source(&layout.oldroot, dir)?;
                let (upper, work) = (held.path.join("upper"), held.path.join("work"));
                sys.mkdir(&upper, 0o755)?;
                sys.mkdir(&work, 0o755)?;
                (upper, work)
            }
            None => (layout.upper.clone(), layout.work.clone()),
        };
        for n in &plan.upper {
            let p = upper.join(n.path.strip_prefix("/").unwrap_or(&n.path));
            match n.kind {
                NodeKind::Dir => sys.mkdir(&p, n.mode)?,
                NodeKind::File => sys.write_file(&p, b"")?,
            }
        }
        // Read-only layers, top first as overlayfs lists them, the image last; a directory
        // named like the writable one (held until the mount is made).
        let mut held_lower = Vec::new();
        let mut lowerdir = String::new();
        for (n, layer) in plan.lower.iter().enumerate().rev() {
            let path = match layer {
                LowerLayer::Image(_) => layout.overlay_image(n),
                LowerLayer::Dir(dir) => {
                    let held = sys.source(&layout.oldroot, dir)?;
                    let path = held.path.clone();
                    held_lower.push(held);
                    path
                }
            };
            lowerdir.push_str(&format!("{}:", path.display()));
        }
        lowerdir.push_str(&layout.image.display().to_string());
        let overlay = format!(
            "lowerdir={lowerdir},upperdir={},workdir={},userxattr",
            upper.display(),
            work.display()
        );
        let what = match &plan.overlay_dir {
            Some(dir) => format!(
                "creating the container root with the overlay in {} (overlayfs needs kernel >= \
                 5.11 unprivileged, and a local file system for its layers: not NFS or Lustre)",
                dir.display()
            ),
            None => "creating the container root (overlayfs over the image; needs kernel >= 5.11 \
                     for unprivileged overlay)"
                .to_string(),
        };
        let what = match plan.lower.len() {
            0 => what,
            n => format!("{what}, with {n} read-only layer(s)"),
        };
        sys.mount(
            Some(Path::new("overlay")),
            &layout.newroot,
            Some("overlay"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(&overlay),
        )
        .context(what)?;
        drop(held_lower);
    } else {
        // A directory's submounts come along (they are part of what the user named).
        let flags = if plan.image.is_directory() {
            MsFlags::MS_BIND | MsFlags::MS_REC
        } else {
            MsFlags::MS_BIND
        };
        sys.mount(Some(&layout.image), &layout.newroot, None, flags, None)
            .context("using the image as the container root")?;
    }

    for (n, step) in plan.mounts.iter().enumerate() {
        apply_step(sys, layout, n, step)?;
    }
    if !plan.writable_root && !plan.writable_sandbox {
        sys.make_readonly(&layout.newroot, false)?;
    }
    Ok(())
}

fn apply_step(sys: &dyn Syscalls, layout: &Layout, n: usize, step: &MountStep) -> Result<()> {
    match step {
        MountStep::Bind {
            src,
            dst,
            readonly,
            recursive,
        } => {
            let source = sys.source(&layout.oldroot, src)?;
            let kind = if source.real.is_dir() {
                NodeKind::Dir
            } else {
                NodeKind::File
            };
            let target = sys.mount_point(&layout.newroot, dst, kind)?;
            let mut flags = MsFlags::MS_BIND;
            if *recursive {
                flags |= MsFlags::MS_REC;
            }
            sys.mount(Some(&source.path), &target.path, None, flags, None)
                .with_context(|| format!("binding {} to {}", src.display(), dst.display()))?;
            if *readonly {
                sys.make_readonly(&target.real, *recursive)?;
            }
        }
        MountStep::Tmpfs { dst, mode } => {
            let target = sys.mount_point(&layout.newroot, dst, NodeKind::Dir)?;
            let data = format!("mode={mode:o}");
            sys.mount(
                Some(Path::new("tmpfs")),
                &target.path,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(&data),
            )
            .with_context(|| format!("tmpfs on {}", dst.display()))?;
        }
        // The FUSE server shows it: nothing to mount.
        MountStep::File {
            served_at: Some(_), ..
        } => {}
        MountStep::File { dst, content, .. } => {
            let staged = layout.files.join(format!("{n}"));
            sys.write_file(&staged, content)?;
            let target = sys.mount_point(&layout.newroot, dst, NodeKind::File)?;
            sys.mount(Some(&staged), &target.path, None, MsFlags::MS_BIND, None)
                .with_context(|| format!("binding generated {}", dst.display()))?;
            sys.make_readonly(&target.real, false)?;
        }
        MountStep::Symlink { dst, target } => {
            let link = layout.newroot.join(dst.strip_prefix("/").unwrap_or(dst));
            sys.symlink(target, &link)?;
        }
    }
    Ok(())
}

/// Make `layout.newroot` the root and drop every view of the host and the staging area.
pub fn enter(sys: &dyn Syscalls, layout: &Layout) -> Result<()> {
    sys.chdir(&layout.newroot)?;
    // pivot_root(".", "."): the old root ends up stacked on the new one, then is detached;
    // no directory in the image is needed for it.
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount_detach(Path::new("."))?;
    sys.chdir(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::syscalls::{assert_in_order, mount_call, Call, Recorder};
    use crate::image::view::ImageDesc;

    /// The overlay mounted as the new root, with these options (top layer first).
    fn overlay_root_mount(options: &str) -> Call {
        mount_call(
            Some("overlay"),
            "/newroot",
            Some("overlay"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options),
        )
    }

    fn plan(mounts: Vec<MountStep>, writable: bool) -> Plan {
        Plan {
            image: ImageDesc {
                path: "/i.sqfs".into(),
                format: "SquashFS",
                squashfs_offset: 0,
                file_size: 1,
            },
            uid: 1,
            gid: 1,
            writable_root: writable,
            writable_sandbox: false,
            overlay_dir: None,
            lower: vec![],
            mounts,
            upper: vec![crate::plan::mount_points::UpperNode {
                path: "/data".into(),
                kind: NodeKind::Dir,
                mode: 0o755,
            }],
            foreign_server: false,
            env: vec![],
            env_shell: None,
            cwd: "/".into(),
            cwd_fallbacks: vec![],
            argv: vec!["true".into()],
            program: None,
            injected: vec![],
            warnings: vec![],
            instance: None,
        }
    }

    #[test]
    fn mount_sequence() {
        let rec = Recorder::default();
        let p = plan(
            vec![
                MountStep::Bind {
                    src: "/proc".into(),
                    dst: "/proc".into(),
                    readonly: false,
                    recursive: true,
                },
                MountStep::Bind {
                    src: "/srv/data".into(),
                    dst: "/data".into(),
                    readonly: true,
                    recursive: true,
                },
                MountStep::Tmpfs {
                    dst: "/tmp".into(),
                    mode: 0o1777,
                },
                MountStep::File {
                    dst: "/etc/passwd".into(),
                    content: "a\n".into(),
                    served_at: None,
                },
                MountStep::Symlink {
                    dst: "/dev/fd".into(),
                    target: "/proc/self/fd".into(),
                },
            ],
            false,
        );
        assemble(&rec, &p, &Layout::in_staging()).unwrap();
        enter(&rec, &Layout::in_staging()).unwrap();
        let calls = rec.calls.into_inner();
        let bind = MsFlags::MS_BIND;
        let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
        let readonly = |target: &str, recursive| Call::MakeReadonly {
            target: target.into(),
            recursive,
        };
        assert_in_order(
            &calls,
            &[
                // Read-only: the image itself is the root; missing mount points are virtual nodes.
                mount_call(Some("/image"), "/newroot", None, bind, None),
                mount_call(Some("/oldroot/proc"), "/newroot/proc", None, rbind, None),
                mount_call(
                    Some("/oldroot/srv/data"),
                    "/newroot/data",
                    None,
                    rbind,
                    None,
                ),
                readonly("/newroot/data", true),
                mount_call(
                    Some("tmpfs"),
                    "/newroot/tmp",
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=1777"),
                ),
                Call::WriteFile {
                    path: "/files/3".into(),
                    len: 2,
                },
                mount_call(Some("/files/3"), "/newroot/etc/passwd", None, bind, None),
                readonly("/newroot/etc/passwd", false),
                Call::Symlink {
                    target: "/proc/self/fd".into(),
                    link: "/newroot/dev/fd".into(),
                },
                readonly("/newroot", false),
                Call::PivotRoot {
                    new_root: ".".into(),
                    put_old: ".".into(),
                },
                Call::UmountDetach(".".into()),
                Call::Chdir("/".into()),
            ],
        );
    }

    #[test]
    fn a_directory_is_bound_read_only_and_gets_an_overlay_for_missing_mount_points() {
        let rec = Recorder::default();
        let mut p = plan(vec![], false);
        p.image = ImageDesc {
            path: "/srv/sandbox".into(),
            format: crate::image::view::DIRECTORY,
            squashfs_offset: 0,
            file_size: 0,
        };
        bind_image_dir(&rec, &p, &Layout::in_staging()).unwrap();
        assemble(&rec, &p, &Layout::in_staging()).unwrap();
        let calls = rec.calls.into_inner();
        let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
        assert_in_order(
            &calls,
            &[
                // Resolved under the host's root, which is the old root by now.
                mount_call(Some("/oldroot/srv/sandbox"), "/image", None, rbind, None),
                Call::MakeReadonly {
                    target: "/image".into(),
                    recursive: true,
                },
                // /data is missing: made in the upper layer, then the overlay.
                Call::Mkdir {
                    path: "/rw/upper/data".into(),
                    mode: 0o755,
                },
                overlay_root_mount("lowerdir=/image,upperdir=/rw/upper,workdir=/rw/work,userxattr"),
                Call::MakeReadonly {
                    target: "/newroot".into(),
                    recursive: false,
                },
            ],
        );
        // With every mount point present: the directory itself is the root, submounts too.
        let rec = Recorder::default();
        p.upper.clear();
        bind_image_dir(&rec, &p, &Layout::in_staging()).unwrap();
        assemble(&rec, &p, &Layout::in_staging()).unwrap();
        let calls = rec.calls.into_inner();
        assert_in_order(
            &calls,
            &[
                mount_call(Some("/oldroot/srv/sandbox"), "/image", None, rbind, None),
                mount_call(Some("/image"), "/newroot", None, rbind, None),
            ],
        );
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "overlay")));
    }

    #[test]
    fn a_writable_sandbox_is_the_root_itself_never_read_only() {
        let rec = Recorder::default();
        let mut p = plan(vec![], false);
        p.image = ImageDesc {
            path: "/srv/sandbox".into(),
            format: crate::image::view::DIRECTORY,
            squashfs_offset: 0,
            file_size: 0,
        };
        // /data is missing: made in the directory by the mount step, not in an overlay.
        p.writable_sandbox = true;
        bind_image_dir(&rec, &p, &Layout::in_staging()).unwrap();
        assemble(&rec, &p, &Layout::in_staging()).unwrap();
        let calls = rec.calls.into_inner();
        let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
        assert_in_order(
            &calls,
            &[
                mount_call(Some("/oldroot/srv/sandbox"), "/image", None, rbind, None),
                mount_call(Some("/image"), "/newroot", None, rbind, None),
            ],
        );
        assert!(
            !calls.iter().any(|c| matches!(c, Call::MakeReadonly { .. })
                || matches!(c, Call::Mount { fstype: Some(t), .. } if t == "overlay")),
            "{calls:?}"
        );
    }

    fn layer_image(path: &str) -> LowerLayer {
        LowerLayer::Image(ImageDesc {
            path: path.into(),
            format: "SquashFS",
            squashfs_offset: 0,
            file_size: 1,
        })
    }

    #[test]
    fn read_only_layers_stack_under_a_tmpfs_upper_and_the_root_is_made_read_only() {
        let rec = Recorder::default();
        let mut p = plan(vec![], false);
        // Bottom first, as given: a.sqfs, then the directory, then b.sqfs on top.
        p.lower = vec![
            layer_image("/a.sqfs"),
            LowerLayer::Dir("/srv/ro".into()),
            layer_image("/b.sqfs"),
        ];
        assert!(p.needs_overlay());
        assemble(&rec, &p, &Layout::in_staging()).unwrap();
        let calls = rec.calls.into_inner();
        assert_in_order(
            &calls,
            &[
                Call::Mkdir {
                    path: "/rw/upper/data".into(),
                    mode: 0o755,
                },
                // overlayfs lists the top layer first: the image is the bottom one.
                overlay_root_mount(
                    "lowerdir=/overlays/2:/oldroot/srv/ro:/overlays/0:/image,\
                         upperdir=/rw/upper,workdir=/rw/work,userxattr",
                ),
                Call::MakeReadonly {
                    target: "/newroot".into(),
                    recursive: false,
                },
            ],
        );
    }

    #[test]
    fn read_only_layers_go_under_the_writable_directory() {
        let rec = Recorder::default();
        let mut p = plan(vec![], true);
        p.overlay_dir = Some("/home/u/ovl".into());
        p.lower = vec![layer_image("/a.sqfs")];
        assemble(&rec, &p, &Layout::in_staging()).unwrap();
        let calls = rec.calls.into_inner();
        assert_in_order(
            &calls,
            &[
                Call::Mkdir {
                    path: "/oldroot/home/u/ovl/upper".into(),
                    mode: 0o755,
                },
                overlay_root_mount(
                    "lowerdir=/overlays/0:/image,upperdir=/oldroot/home/u/ovl/upper,\
                         workdir=/oldroot/home/u/ovl/work,userxattr",
                ),
            ],
        );
        assert!(!calls.iter().any(
            |c| matches!(c, Call::MakeReadonly { target, .. } if target.starts_with("/newroot"))
        ));
    }

    #[test]
    fn writable_root_stays_writable() {
        let rec = Recorder::default();
        assemble(&rec, &plan(vec![], true), &Layout::in_staging()).unwrap();
        let calls = rec.calls.borrow();
        assert!(!calls.iter().any(
            |c| matches!(c, Call::MakeReadonly { target, .. } if target.starts_with("/newroot"))
        ));
        // The overlay's upper layer gets the missing mount points first.
        let mkdir = calls
            .iter()
            .position(|c| {
                *c == Call::Mkdir {
                    path: "/rw/upper/data".into(),
                    mode: 0o755,
                }
            })
            .unwrap();
        let overlay = calls
            .iter()
            .position(|c| {
                matches!(c, Call::Mount { src: Some(s), target, fstype: Some(t), .. }
                    if s == Path::new("overlay") && target == Path::new("/newroot") && t == "overlay")
            })
            .unwrap();
        assert!(mkdir < overlay, "{calls:?}");
    }
}
