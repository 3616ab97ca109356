//! The launch plan: everything a launch will do, as plain data.
//!
//! `build` is pure: it takes the options, the host facts and a read-only view of the image and
//! decides the mount table, generated files, environment, working directory and argv. `apply`
//! only carries the plan out. `--debug` prints it.

use crate::environment::{self, EnvInputs};
use crate::etc_files;
use crate::host::HostInfo;
use crate::image_view::{EntryKind, ImageDesc, ImageView};
use crate::mount_points::{self, NodeKind, UpperNode};
use crate::options::{Action, LaunchOptions};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fmt;
use std::path::{Component, Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum MountStep {
    /// Bind a host path (canonical) onto a path inside the container.
    Bind {
        src: PathBuf,
        dst: PathBuf,
        readonly: bool,
        /// rbind: carry submounts along (/proc, /sys, /dev, user trees).
        recursive: bool,
    },
    /// A fresh tmpfs owned by the caller.
    Tmpfs { dst: PathBuf, mode: u32 },
    /// A file the launcher provides: generated (passwd, group) or a copy of a host file (hosts,
    /// resolv.conf, localtime). With a read-only root the FUSE server shows it at `served_at`
    /// (the path `dst` resolves to in the image), which costs no mount; otherwise it is
    /// written to the staging tmpfs and bound read-only.
    File {
        dst: PathBuf,
        content: Vec<u8>,
        served_at: Option<PathBuf>,
    },
    /// A symbolic link created inside a tmpfs the plan mounted earlier (minimal /dev).
    Symlink { dst: PathBuf, target: PathBuf },
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub image: ImageDesc,
    pub uid: u32,
    pub gid: u32,
    /// `--writable-tmpfs`: the root stays writable (changes vanish at exit).
    pub writable_root: bool,
    pub mounts: Vec<MountStep>,
    /// Mount points the image lacks. A read-only root: the FUSE server shows them as virtual
    /// nodes and the image is the root, with no overlay. `--writable-tmpfs`: they are made in
    /// the overlay's upper layer before it is mounted.
    pub upper: Vec<UpperNode>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Working directories to try if `cwd` turns out not to exist (home, then /).
    pub cwd_fallbacks: Vec<PathBuf>,
    pub argv: Vec<String>,
    /// The program inside the image that argv[0] names (PATH searched), read ahead at start-up.
    pub program: Option<String>,
    /// Site config and host integration (GPU, CDI): what was brought in, for --debug.
    pub injected: Vec<String>,
    pub warnings: Vec<String>,
}

/// Host directories whose binding as the working directory would shadow the image itself.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root", "/run",
    "/sbin", "/sys", "/usr", "/var",
];

/// Device nodes bound into a minimal /dev (`--contain`).
const MINIMAL_DEV: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

pub fn build(opts: &LaunchOptions, host: &HostInfo, image: &dyn ImageView) -> Result<Plan> {
    let mut mounts = Vec::new();
    let mut warnings = Vec::new();
    let mut covered: Vec<(PathBuf, PathBuf)> = Vec::new(); // (host src, container dst) visible inside

    // Kernel file systems: the host's, since we share its PID and network namespaces
    // (MPI and PMIx need them).
    for p in ["/proc", "/sys"] {
        mounts.push(bind(p, p, false, true));
    }
    if opts.contain {
        mounts.push(MountStep::Tmpfs {
            dst: "/dev".into(),
            mode: 0o755,
        });
        for d in MINIMAL_DEV {
            let p = format!("/dev/{d}");
            if Path::new(&p).exists() {
                mounts.push(bind(&p, &p, false, false));
            }
        }
        for d in ["/dev/pts", "/dev/shm", "/dev/mqueue"] {
            if Path::new(d).is_dir() {
                mounts.push(bind(d, d, false, true));
            }
        }
        for (link, target) in [
            ("/dev/ptmx", "pts/ptmx"),
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            mounts.push(MountStep::Symlink {
                dst: link.into(),
                target: target.into(),
            });
        }
    } else {
        mounts.push(bind("/dev", "/dev", false, true));
    }

    // Scratch directories.
    for t in ["/tmp", "/var/tmp"] {
        if opts.contain {
            mounts.push(MountStep::Tmpfs {
                dst: t.into(),
                mode: 0o1777,
            });
        } else if Path::new(t).is_dir() {
            mounts.push(bind(t, t, false, true));
            covered.push((t.into(), t.into()));
        }
    }

    // Home.
    let home_dst = match &opts.home {
        Some((_, dst)) => clean_abs(dst)?,
        None => host.home.clone(),
    };
    if let Some((src, _)) = &opts.home {
        let src = crate::host::canonical_host_path(src, "--home source")?;
        covered.push((src.clone(), home_dst.clone()));
        mounts.push(MountStep::Bind {
            src,
            dst: home_dst.clone(),
            readonly: false,
            recursive: true,
        });
    } else if opts.contain {
        mounts.push(MountStep::Tmpfs {
            dst: home_dst.clone(),
            mode: 0o700,
        });
    } else if !opts.no_home {
        match std::fs::canonicalize(&host.home) {
            Ok(src) if src != Path::new("/") => {
                covered.push((src.clone(), home_dst.clone()));
                covered.push((host.home.clone(), home_dst.clone()));
                mounts.push(MountStep::Bind {
                    src,
                    dst: home_dst.clone(),
                    readonly: false,
                    recursive: true,
                });
            }
            _ => warnings.push(format!(
                "home '{}' not found on the host: not bound",
                host.home.display()
            )),
        }
    }

    // User binds, canonical sources, destinations cleaned (resolved inside the root at apply).
    let mut user_mounts = Vec::new();
    for b in &opts.binds {
        let src_abs = if b.src.is_absolute() {
            b.src.clone()
        } else {
            host.cwd.join(&b.src)
        };
        let src = crate::host::canonical_host_path(&src_abs, "bind source")?;
        let dst =
            clean_abs(&b.dst).with_context(|| format!("bind destination '{}'", b.dst.display()))?;
        covered.push((src.clone(), dst.clone()));
        covered.push((src_abs, dst.clone()));
        user_mounts.push(MountStep::Bind {
            src,
            dst,
            readonly: b.readonly,
            recursive: true,
        });
    }

    // Working directory: where the user is, if it can be seen inside.
    let mut cwd_fallbacks = vec![home_dst.clone(), PathBuf::from("/")];
    let cwd = if let Some(pwd) = &opts.pwd {
        cwd_fallbacks.clear();
        clean_abs(pwd)?
    } else if let Some(inside) = map_into(&covered, &host.cwd) {
        inside
    } else if !opts.contain && !is_system_dir(&host.cwd) {
        if let Ok(src) = std::fs::canonicalize(&host.cwd) {
            mounts.push(MountStep::Bind {
                src,
                dst: host.cwd.clone(),
                readonly: false,
                recursive: true,
            });
        }
        host.cwd.clone()
    } else if let Some(wd) = image.oci_config().and_then(|c| c.working_dir.clone()) {
        PathBuf::from(wd)
    } else {
        host.cwd.clone()
    };

    // Host configuration files, then the generated user database.
    for (f, content) in &host.existing_etc {
        mounts.push(match content {
            Some(content) => MountStep::File {
                dst: f.clone(),
                content: content.clone(),
                served_at: None,
            },
            None => MountStep::Bind {
                src: f.clone(),
                dst: f.clone(),
                readonly: true,
                recursive: false,
            },
        });
    }
    let image_passwd = read_text(image, "/etc/passwd")?;
    let image_group = read_text(image, "/etc/group")?;
    let shell = choose_shell(host, image)?;
    mounts.push(MountStep::File {
        dst: "/etc/passwd".into(),
        content: etc_files::passwd(image_passwd.as_deref(), host, &home_dst, &shell).into_bytes(),
        served_at: None,
    });
    mounts.push(MountStep::File {
        dst: "/etc/group".into(),
        content: etc_files::group(image_group.as_deref(), host).into_bytes(),
        served_at: None,
    });
    let mut injected = Vec::new();
    crate::injection::add_mounts(opts, host, image, &mut mounts, &mut injected, &mut warnings)?;
    mounts.extend(crate::scheduler::binds(&host.env, &covered));
    mounts.extend(user_mounts);

    // Environment.
    let oci_env = image
        .oci_config()
        .map(|c| c.env.clone())
        .unwrap_or_default();
    let mut scripts = Vec::new();
    let mut names = image.list_dir("/.singularity.d/env")?;
    names.sort();
    for name in names.into_iter().filter(|n| n.ends_with(".sh")) {
        let path = format!("/.singularity.d/env/{name}");
        if let Some(text) = read_text(image, &path)? {
            scripts.push((path, text));
        }
    }
    let image_path = image.desc().path.display().to_string();
    let mut launcher_vars = vec![
        ("HOME".to_string(), home_dst.display().to_string()),
        ("LAUNCHER_CONTAINER".to_string(), image_path.clone()),
        (
            "LAUNCHER_NAME".to_string(),
            image
                .desc()
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    ];
    if opts.action == Action::Shell {
        launcher_vars.push(("PS1".to_string(), "Launcher> ".to_string()));
    }
    let mut env = environment::compute(&EnvInputs {
        host: &host.env,
        cleanenv: opts.cleanenv,
        image_oci_env: &oci_env,
        image_env_scripts: &scripts,
        user: &opts.env,
        launcher: &launcher_vars,
    });
    crate::injection::edit_env(&mut env, opts, host);

    let upper = upper_nodes(&mut mounts, image, !opts.writable_tmpfs)?;

    let argv = match &opts.action {
        Action::Exec(argv) => {
            if argv.is_empty() {
                bail!("no command given: usage `launcher exec IMAGE COMMAND [ARGS...]`");
            }
            argv.clone()
        }
        Action::Shell => vec![shell.clone()],
        Action::Run(args) => run_argv(image, args)?,
    };

    let program = program_in_image(image, &argv[0], &env)?;

    Ok(Plan {
        image: image.desc().clone(),
        uid: host.uid,
        gid: host.gid,
        writable_root: opts.writable_tmpfs,
        mounts,
        upper,
        env,
        cwd,
        cwd_fallbacks,
        argv,
        program,
        injected,
        warnings,
    })
}

/// Where argv[0] is in the image, searched like execvp does (binds may still provide it).
fn program_in_image(
    image: &dyn ImageView,
    name: &str,
    env: &[(String, String)],
) -> Result<Option<String>> {
    if name.contains('/') {
        return Ok(Some(name.to_string()));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{}/{name}", dir.trim_end_matches('/'));
        if image.kind(&candidate)? == Some(EntryKind::File) {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

impl Plan {
    pub fn needs_overlay(&self) -> bool {
        self.writable_root
    }

    /// Files the FUSE server shows in place of (or in addition to) the image's.
    pub fn served_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        self.mounts
            .iter()
            .filter_map(|m| match m {
                MountStep::File {
                    content,
                    served_at: Some(at),
                    ..
                } => Some((at.clone(), content.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Mount points to create, for destinations in the image itself (not inside an earlier
/// mount: those are created at apply time inside that mount). With `serve_files`, files the
/// launcher provides are placed for the FUSE server to show (only their parents are needed).
fn upper_nodes(
    mounts: &mut [MountStep],
    image: &dyn ImageView,
    serve_files: bool,
) -> Result<Vec<UpperNode>> {
    let mut out: Vec<UpperNode> = Vec::new();
    let mut earlier: Vec<PathBuf> = Vec::new();
    let add = |out: &mut Vec<UpperNode>, nodes: Vec<UpperNode>| {
        for n in nodes {
            if !out.iter().any(|o| o.path == n.path) {
                out.push(n);
            }
        }
    };
    for m in mounts.iter_mut() {
        let (dst, kind) = match m {
            MountStep::Bind { src, dst, .. } => (
                dst.clone(),
                if src.is_dir() {
                    NodeKind::Dir
                } else {
                    NodeKind::File
                },
            ),
            MountStep::Tmpfs { dst, .. } => (dst.clone(), NodeKind::Dir),
            MountStep::File { dst, .. } => (dst.clone(), NodeKind::File),
            MountStep::Symlink { .. } => continue,
        };
        let inside_earlier = earlier.iter().any(|e| dst.starts_with(e) && dst != *e);
        if !inside_earlier {
            if let MountStep::File { served_at, .. } = m {
                if serve_files {
                    if let Some(place) = mount_points::place_file(image, &dst)? {
                        *served_at = Some(place.path);
                        add(&mut out, place.parents);
                        earlier.push(dst);
                        continue;
                    }
                }
            }
            add(&mut out, mount_points::missing(image, &dst, kind)?);
        }
        earlier.push(dst);
    }
    Ok(out)
}

fn bind(src: &str, dst: &str, readonly: bool, recursive: bool) -> MountStep {
    MountStep::Bind {
        src: src.into(),
        dst: dst.into(),
        readonly,
        recursive,
    }
}

fn read_text(image: &dyn ImageView, path: &str) -> Result<Option<String>> {
    Ok(image
        .read_file(path)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The user's login shell if the image has it, else /bin/sh.
fn choose_shell(host: &HostInfo, image: &dyn ImageView) -> Result<String> {
    let wanted = host.env_var("SHELL").unwrap_or(&host.shell);
    if wanted.starts_with('/') && image.kind(wanted)? == Some(EntryKind::File) {
        return Ok(wanted.to_string());
    }
    Ok("/bin/sh".to_string())
}

/// `launcher run`: the Apptainer runscript, else the OCI entrypoint and cmd.
fn run_argv(image: &dyn ImageView, args: &[String]) -> Result<Vec<String>> {
    const RUNSCRIPT: &str = "/.singularity.d/runscript";
    if image.kind(RUNSCRIPT)? == Some(EntryKind::File) {
        return Ok(std::iter::once(RUNSCRIPT.to_string())
            .chain(args.iter().cloned())
            .collect());
    }
    if let Some(c) = image.oci_config() {
        let mut argv = c.entrypoint.clone();
        argv.extend(if args.is_empty() {
            c.cmd.clone()
        } else {
            args.to_vec()
        });
        if !argv.is_empty() {
            return Ok(argv);
        }
    }
    bail!(
        "image '{}' has no runscript (/.singularity.d/runscript) and no OCI entrypoint or cmd; use `launcher exec IMAGE COMMAND`",
        image.desc().path.display()
    )
}

/// Map a host path into the container through the binds that show it, longest source first.
fn map_into(covered: &[(PathBuf, PathBuf)], host_path: &Path) -> Option<PathBuf> {
    covered
        .iter()
        .filter_map(|(src, dst)| {
            let rest = host_path.strip_prefix(src).ok()?;
            Some((
                src,
                if rest.as_os_str().is_empty() {
                    dst.clone()
                } else {
                    dst.join(rest)
                },
            ))
        })
        .max_by_key(|(src, _)| src.components().count())
        .map(|(_, p)| p)
}

fn is_system_dir(p: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| p == Path::new(d))
        || [
            "/usr/", "/etc/", "/proc/", "/sys/", "/dev/", "/bin/", "/sbin/", "/lib", "/boot/",
        ]
        .iter()
        .any(|d| p.to_string_lossy().starts_with(d))
}

/// Lexically clean an absolute container path: no `.`, `..` clamped at `/`.
pub fn clean_abs(p: &Path) -> Result<PathBuf> {
    if !p.is_absolute() {
        bail!("'{}' is not an absolute path", p.display());
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan:")?;
        writeln!(
            f,
            "  image: {} ({}, SquashFS at offset {}, {} bytes)",
            self.image.path.display(),
            self.image.format,
            self.image.squashfs_offset,
            self.image.file_size
        )?;
        writeln!(
            f,
            "  identity: uid {} gid {} (mapped to themselves)",
            self.uid, self.gid
        )?;
        writeln!(
            f,
            "  root: image via FUSE{}, {}",
            if self.needs_overlay() {
                " + overlay on tmpfs"
            } else {
                ""
            },
            if self.writable_root {
                "writable (--writable-tmpfs, discarded at exit)"
            } else {
                "read-only"
            }
        )?;
        for n in &self.upper {
            writeln!(
                f,
                "    create {:?} {} (mode {:o})",
                n.kind,
                n.path.display(),
                n.mode
            )?;
        }
        writeln!(f, "  mounts:")?;
        for m in &self.mounts {
            match m {
                MountStep::Bind {
                    src,
                    dst,
                    readonly,
                    recursive,
                } => writeln!(
                    f,
                    "    {:<6} {} -> {}{}",
                    if *recursive { "rbind" } else { "bind" },
                    src.display(),
                    dst.display(),
                    if *readonly { " (ro)" } else { "" }
                )?,
                MountStep::Tmpfs { dst, mode } => {
                    writeln!(f, "    tmpfs  {} (mode {:o})", dst.display(), mode)?
                }
                MountStep::File {
                    dst,
                    content,
                    served_at,
                } => writeln!(
                    f,
                    "    file   {} ({} bytes, ro, {})",
                    dst.display(),
                    content.len(),
                    match served_at {
                        Some(p) => format!("served by the image server at {}", p.display()),
                        None => "bound".to_string(),
                    }
                )?,
                MountStep::Symlink { dst, target } => {
                    writeln!(f, "    link   {} -> {}", dst.display(), target.display())?
                }
            }
        }
        writeln!(f, "  cwd: {}", self.cwd.display())?;
        writeln!(f, "  argv: {:?}", self.argv)?;
        if let Some(p) = &self.program {
            writeln!(
                f,
                "  program in the image: {p} (read ahead while the root is built)"
            )?;
        }
        if !self.injected.is_empty() {
            writeln!(f, "  host integration:")?;
            for line in &self.injected {
                writeln!(f, "    {line}")?;
            }
        }
        writeln!(f, "  env:")?;
        for (k, v) in &self.env {
            writeln!(f, "    {k}={v}")?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bind::BindSpec;
    use crate::image_view::fake::FakeImage;
    use crate::image_view::OciConfig;

    fn host() -> HostInfo {
        let tmp = std::env::temp_dir();
        HostInfo {
            uid: 4242,
            gid: 4242,
            groups: vec![],
            user: "alice".into(),
            home: tmp.clone(),
            shell: "/bin/bash".into(),
            gecos: String::new(),
            cwd: "/usr/share".into(),
            env: vec![
                ("SHELL".into(), "/bin/bash".into()),
                ("FOO".into(), "1".into()),
            ],
            group_names: vec![(4242, "alice".into())],
            site: Default::default(),
            injection: Default::default(),
            existing_etc: vec![("/etc/hosts".into(), None)],
        }
    }

    fn image() -> FakeImage {
        FakeImage::new(
            &[
                ("/etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
                ("/bin/sh", ""),
                (
                    "/.singularity.d/env/90-environment.sh",
                    "export APP=/opt/app\n",
                ),
            ],
            &["/opt/app"],
        )
    }

    fn opts(action: Action) -> LaunchOptions {
        LaunchOptions::new("/images/test.sif".into(), action)
    }

    fn dsts(p: &Plan) -> Vec<String> {
        p.mounts
            .iter()
            .map(|m| match m {
                MountStep::Bind { dst, .. }
                | MountStep::Tmpfs { dst, .. }
                | MountStep::File { dst, .. }
                | MountStep::Symlink { dst, .. } => dst.display().to_string(),
            })
            .collect()
    }

    #[test]
    fn default_plan() {
        let h = host();
        let p = build(&opts(Action::Exec(vec!["id".into()])), &h, &image()).unwrap();
        let d = dsts(&p);
        let home = h.home.display().to_string();
        for want in [
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            home.as_str(),
            "/etc/hosts",
            "/etc/passwd",
            "/etc/group",
        ] {
            assert!(d.iter().any(|x| x == want), "{want} missing from {d:?}");
        }
        // /usr/share is a system directory: not bound, but it exists in most images.
        assert!(!d.iter().any(|x| x == "/usr/share"));
        assert_eq!(p.argv, vec!["id"]);
        let env: std::collections::HashMap<_, _> = p.env.iter().cloned().collect();
        assert_eq!(env["APP"], "/opt/app");
        assert_eq!(env["FOO"], "1");
        assert_eq!(env["HOME"], home);
        assert_eq!(env["LAUNCHER_CONTAINER"], "/images/test.sif");
        let passwd = p.mounts.iter().find_map(|m| match m {
            MountStep::File { dst, content, .. } if dst == Path::new("/etc/passwd") => {
                Some(String::from_utf8_lossy(content).into_owned())
            }
            _ => None,
        });
        assert!(passwd
            .unwrap()
            .contains(&format!("alice:x:4242:4242::{home}:/bin/sh")));
        assert!(!p.writable_root);
        assert!(p.to_string().contains("argv: [\"id\"]"));
    }

    #[test]
    fn contain_drops_host_dirs() {
        let mut o = opts(Action::Shell);
        o.contain = true;
        let p = build(&o, &host(), &image()).unwrap();
        let tmpfs: Vec<_> = p
            .mounts
            .iter()
            .filter_map(|m| match m {
                MountStep::Tmpfs { dst, .. } => Some(dst.display().to_string()),
                _ => None,
            })
            .collect();
        assert!(tmpfs.contains(&"/dev".to_string()) && tmpfs.contains(&"/tmp".to_string()));
        assert!(!p
            .mounts
            .iter()
            .any(|m| matches!(m, MountStep::Bind { src, .. } if src == Path::new("/tmp"))));
        assert!(!p
            .mounts
            .iter()
            .any(|m| matches!(m, MountStep::Bind { src, .. } if src == Path::new("/dev"))));
        assert_eq!(p.argv, vec!["/bin/sh"], "bash is not in the image");
    }

    #[test]
    fn user_binds_come_last_and_resolve_relative_sources() {
        let mut o = opts(Action::Exec(vec!["true".into()]));
        o.binds = vec![BindSpec {
            src: "/tmp".into(),
            dst: "/data/../scratch/".into(),
            readonly: true,
        }];
        let p = build(&o, &host(), &image()).unwrap();
        assert_eq!(
            p.mounts.last().unwrap(),
            &MountStep::Bind {
                src: std::fs::canonicalize("/tmp").unwrap(),
                dst: "/scratch".into(),
                readonly: true,
                recursive: true
            }
        );
        o.binds = vec![BindSpec {
            src: "/does/not/exist".into(),
            dst: "/x".into(),
            readonly: false,
        }];
        let err = build(&o, &host(), &image()).unwrap_err().to_string();
        assert!(
            err.contains("/does/not/exist") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn cwd_under_a_bind_maps_inside() {
        let mut h = host();
        h.cwd = std::env::temp_dir().join("sub");
        let mut o = opts(Action::Exec(vec!["pwd".into()]));
        o.home = Some((std::env::temp_dir(), "/home/inside".into()));
        let p = build(&o, &h, &image()).unwrap();
        assert_eq!(p.cwd, PathBuf::from("/home/inside/sub"));
        assert!(p.env.contains(&("HOME".into(), "/home/inside".into())));
    }

    #[test]
    fn run_uses_runscript_then_oci() {
        let mut img = image();
        let p = build(&opts(Action::Run(vec!["a".into()])), &host(), &img);
        assert!(p.unwrap_err().to_string().contains("no runscript"));
        img.oci = Some(OciConfig {
            entrypoint: vec!["/app".into()],
            cmd: vec!["--help".into()],
            ..Default::default()
        });
        let p = build(&opts(Action::Run(vec![])), &host(), &img).unwrap();
        assert_eq!(p.argv, vec!["/app", "--help"]);
        let p = build(&opts(Action::Run(vec!["x".into()])), &host(), &img).unwrap();
        assert_eq!(p.argv, vec!["/app", "x"]);
        img.files
            .insert("/.singularity.d/runscript".into(), b"#!/bin/sh\n".to_vec());
        let p = build(&opts(Action::Run(vec!["x".into()])), &host(), &img).unwrap();
        assert_eq!(p.argv, vec!["/.singularity.d/runscript", "x"]);
    }

    #[test]
    fn clean_paths() {
        assert_eq!(
            clean_abs(Path::new("/a/./b/../c/")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert_eq!(
            clean_abs(Path::new("/../../etc")).unwrap(),
            PathBuf::from("/etc")
        );
        assert!(clean_abs(Path::new("rel")).is_err());
    }
}
