//! `build`: the plan from the options, the gathered facts and a read-only view of the image, in
//! a few named steps. Nothing here reads the host: every host path it asks about was resolved
//! by `gather::paths` (an unanswered question is an error, not a guess).

use crate::gather::overlays::Layer;
use crate::gather::paths::{HostPaths, DEV_DIRS, KERNEL_DIRS, MINIMAL_DEV, SCRATCH_DIRS};
use crate::gather::Gathered;
use crate::image::view::{EntryKind, ImageView};
use crate::options::{clean_abs, Action, LaunchOptions};
use crate::plan::environment::{self, EnvInputs};
use crate::plan::mount_points::{self, NodeKind, UpperNode};
use crate::plan::{etc_files, integration, path_search, scheduler, LowerLayer, MountStep, Plan};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Host directories whose binding as the working directory would shadow the image itself.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root", "/run",
    "/sbin", "/sys", "/usr", "/var",
];

/// The mount table as it grows, with the host paths its binds make visible inside.
#[derive(Default)]
struct Table {
    mounts: Vec<MountStep>,
    /// (host source, container destination) of the binds that show host trees inside: where
    /// the working directory and the PMIx directories may already be visible.
    covered: Vec<(PathBuf, PathBuf)>,
    warnings: Vec<String>,
}

pub fn build(opts: &LaunchOptions, facts: &Gathered, image: &dyn ImageView) -> Result<Plan> {
    let (host, paths) = (&facts.host, &facts.paths);
    let mut table = Table::default();
    kernel_and_dev(opts, paths, &mut table)?;
    scratch_dirs(opts, paths, &mut table)?;
    let home_dst = home(opts, facts, &mut table)?;
    let user_mounts = user_binds(opts, facts, &mut table)?;
    let (cwd, cwd_fallbacks) = working_dir(opts, facts, image, &home_dst, &mut table)?;
    let shell = choose_shell(facts, image)?;
    user_database(facts, image, &home_dst, &shell, &mut table)?;
    let mut injected = Vec::new();
    integration::add_mounts(
        opts,
        facts,
        image,
        &mut table.mounts,
        &mut injected,
        &mut table.warnings,
    )?;
    let pmix = scheduler::binds(&host.pmix_dirs, paths, &table.covered)?;
    table.mounts.extend(pmix);
    table.mounts.extend(user_mounts);

    let (env, env_shell) = environment(opts, facts, image, &home_dst, &mut table.warnings)?;
    // Files are served (no mount) only by the FUSE server of a read-only image file.
    let (overlay_dir, lower) = overlays(opts, facts)?;
    let writable_sandbox = writable(opts, image)?;
    // Not under layers: an overlay's own file at the same path would hide a served one.
    let serve_files = !opts.writable_tmpfs
        && overlay_dir.is_none()
        && lower.is_empty()
        && !image.desc().is_directory();
    let upper = upper_nodes(&mut table.mounts, image, paths, serve_files)?;
    let argv = argv(opts, image, &shell)?;
    let program = match argv.first() {
        Some(name) => program_in_image(image, name, &env)?,
        None => None,
    };

    Ok(Plan {
        image: image.desc().clone(),
        uid: host.uid,
        gid: host.gid,
        writable_root: opts.writable_tmpfs || overlay_dir.is_some(),
        writable_sandbox,
        overlay_dir,
        lower,
        mounts: table.mounts,
        upper,
        foreign_server: false,
        env,
        env_shell,
        cwd,
        cwd_fallbacks,
        argv,
        program,
        injected,
        warnings: table.warnings,
        instance: None,
    })
}

/// Kernel file systems: the host's, since we share its PID and network namespaces (MPI and
/// PMIx need them). /dev: the host's, or with `--contain` a tmpfs with the minimal nodes.
fn kernel_and_dev(opts: &LaunchOptions, paths: &HostPaths, t: &mut Table) -> Result<()> {
    for p in KERNEL_DIRS {
        t.mounts.push(bind(p, p, false, true));
    }
    if !opts.contain {
        t.mounts.push(bind("/dev", "/dev", false, true));
        return Ok(());
    }
    t.mounts.push(MountStep::Tmpfs {
        dst: "/dev".into(),
        mode: 0o755,
    });
    for d in MINIMAL_DEV {
        let p = format!("/dev/{d}");
        if paths.get(Path::new(&p))?.is_some() {
            t.mounts.push(bind(&p, &p, false, false));
        }
    }
    for d in DEV_DIRS {
        if paths.get(Path::new(d))?.is_some_and(|f| f.is_dir) {
            t.mounts.push(bind(d, d, false, true));
        }
    }
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        t.mounts.push(MountStep::Symlink {
            dst: link.into(),
            target: target.into(),
        });
    }
    Ok(())
}

/// /tmp and /var/tmp: the host's, or a fresh tmpfs each with `--contain`.
fn scratch_dirs(opts: &LaunchOptions, paths: &HostPaths, t: &mut Table) -> Result<()> {
    for d in SCRATCH_DIRS {
        if opts.contain {
            t.mounts.push(MountStep::Tmpfs {
                dst: d.into(),
                mode: 0o1777,
            });
        } else if !opts.no_mount_tmp && paths.get(Path::new(d))?.is_some_and(|f| f.is_dir) {
            t.mounts.push(bind(d, d, false, true));
            t.covered.push((d.into(), d.into()));
        }
    }
    Ok(())
}

/// Home: `--home SRC:DST`, else the caller's home (a private tmpfs with `--contain`, nothing
/// with `--no-home`). Returns home's path inside.
fn home(opts: &LaunchOptions, facts: &Gathered, t: &mut Table) -> Result<PathBuf> {
    let host = &facts.host;
    let home_dst = match &opts.home {
        Some((_, dst)) => clean_abs(dst)?,
        None => host.home.clone(),
    };
    if let Some((src, _)) = &opts.home {
        let src = existing(&facts.paths, src, "--home source")?;
        t.covered.push((src.clone(), home_dst.clone()));
        t.mounts.push(MountStep::Bind {
            src,
            dst: home_dst.clone(),
            readonly: false,
            recursive: true,
        });
    } else if opts.contain {
        t.mounts.push(MountStep::Tmpfs {
            dst: home_dst.clone(),
            mode: 0o700,
        });
    } else if !opts.no_home {
        match facts.paths.get(&host.home)? {
            Some(found) if found.canonical != Path::new("/") => {
                let src = found.canonical.clone();
                t.covered.push((src.clone(), home_dst.clone()));
                t.covered.push((host.home.clone(), home_dst.clone()));
                t.mounts.push(MountStep::Bind {
                    src,
                    dst: home_dst.clone(),
                    readonly: false,
                    recursive: true,
                });
            }
            _ => t.warnings.push(format!(
                "home '{}' not found on the host: not bound",
                host.home.display()
            )),
        }
    }
    Ok(home_dst)
}

/// `--bind`: canonical sources, destinations cleaned (resolved inside the root at apply). They
/// go last in the table, so they win over everything else.
fn user_binds(opts: &LaunchOptions, facts: &Gathered, t: &mut Table) -> Result<Vec<MountStep>> {
    let mut out = Vec::new();
    for b in &opts.binds {
        let src_abs = facts.host.cwd.join(&b.src);
        let src = existing(&facts.paths, &src_abs, "bind source")?;
        let dst =
            clean_abs(&b.dst).with_context(|| format!("bind destination '{}'", b.dst.display()))?;
        t.covered.push((src.clone(), dst.clone()));
        t.covered.push((src_abs, dst.clone()));
        out.push(MountStep::Bind {
            src,
            dst,
            readonly: b.readonly,
            recursive: true,
        });
    }
    Ok(out)
}

/// The working directory: `--pwd`, else where the user is if it can be seen inside (bound
/// when it is not a system directory), else the image's OCI WorkingDir. Returns it with the
/// directories to fall back to if it turns out not to exist (home, then /).
fn working_dir(
    opts: &LaunchOptions,
    facts: &Gathered,
    image: &dyn ImageView,
    home_dst: &Path,
    t: &mut Table,
) -> Result<(PathBuf, Vec<PathBuf>)> {
    let host = &facts.host;
    if let Some(pwd) = &opts.pwd {
        return Ok((clean_abs(pwd)?, Vec::new()));
    }
    let fallbacks = vec![home_dst.to_path_buf(), PathBuf::from("/")];
    let cwd = if let Some(inside) = map_into(&t.covered, &host.cwd) {
        inside
    } else if !opts.contain && !opts.no_mount_cwd && !is_system_dir(&host.cwd) {
        if let Some(found) = facts.paths.get(&host.cwd)? {
            t.mounts.push(MountStep::Bind {
                src: found.canonical.clone(),
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
    Ok((cwd, fallbacks))
}

/// Host configuration files (hosts, resolv.conf, localtime), then the generated passwd and
/// group: the image's entries plus the caller's.
fn user_database(
    facts: &Gathered,
    image: &dyn ImageView,
    home_dst: &Path,
    shell: &str,
    t: &mut Table,
) -> Result<()> {
    let host = &facts.host;
    for (f, content) in &host.existing_etc {
        t.mounts.push(match content {
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
    t.mounts.push(MountStep::File {
        dst: "/etc/passwd".into(),
        content: etc_files::passwd(image_passwd.as_deref(), host, home_dst, shell).into_bytes(),
        served_at: None,
    });
    t.mounts.push(MountStep::File {
        dst: "/etc/group".into(),
        content: etc_files::group(image_group.as_deref(), host).into_bytes(),
        served_at: None,
    });
    Ok(())
}

/// The command's environment: host → image (OCI config, then /.singularity.d/env/*.sh) →
/// the launcher's own variables → user, then the site's and the injection's edits.
/// `--overlay`: the writable directory (at most one, not with `--writable-tmpfs`; its
/// `upper/` and `work/` are made inside at launch) and the read-only layers, bottom first.
fn overlays(opts: &LaunchOptions, facts: &Gathered) -> Result<(Option<PathBuf>, Vec<LowerLayer>)> {
    let mut writable: Option<(&str, PathBuf)> = None;
    let mut lower = Vec::new();
    for o in &facts.overlays {
        match &o.layer {
            Layer::Writable(dir) => {
                if let Some((first, _)) = &writable {
                    bail!(
                        "--overlay {first} and --overlay {}: one writable overlay directory at most (add :ro to make a directory a read-only layer)",
                        o.given
                    );
                }
                if opts.writable_tmpfs {
                    bail!(
                        "--overlay and --writable-tmpfs: choose one (both make the root writable; --overlay {}:ro makes the directory a read-only layer)",
                        o.given
                    );
                }
                writable = Some((&o.given, dir.clone()));
            }
            Layer::Dir(dir) => lower.push(LowerLayer::Dir(dir.clone())),
            Layer::Image(desc) => lower.push(LowerLayer::Image(desc.clone())),
        }
    }
    Ok((writable.map(|(_, dir)| dir), lower))
}

/// `--writable`: only a sandbox directory, and only alone (the other two make an overlay).
fn writable(opts: &LaunchOptions, image: &dyn ImageView) -> Result<bool> {
    if !opts.writable {
        return Ok(false);
    }
    if !image.desc().is_directory() {
        bail!(
            "'{}' is read-only: --writable needs a sandbox directory (launcher build --sandbox DIR IMAGE), or use --writable-tmpfs or --overlay DIR",
            image.desc().path.display()
        );
    }
    if opts.writable_tmpfs || !opts.overlays.is_empty() {
        bail!("--writable and --writable-tmpfs or --overlay: choose one");
    }
    Ok(true)
}

/// The environment as planned, and how the child gets the real one when a script needs a
/// shell.
type PlannedEnv = (Vec<(String, String)>, Option<environment::ShellEnv>);

/// The shell that sources the image's environment scripts when they need one.
const SCRIPT_SHELL: &str = "/bin/sh";
/// Where the image's `cat` may be, which reports the shell's environment.
const SCRIPT_CAT: &[&str] = &["/bin/cat", "/usr/bin/cat"];

/// The command's environment as the planner sees it, and, when a script needs a shell, how
/// the child gets the real one (`environment::ShellEnv`).
fn environment(
    opts: &LaunchOptions,
    facts: &Gathered,
    image: &dyn ImageView,
    home_dst: &Path,
    warnings: &mut Vec<String>,
) -> Result<PlannedEnv> {
    let oci_env = image
        .oci_config()
        .map(|c| c.env.clone())
        .unwrap_or_default();
    let mut scripts = Vec::new();
    let mut names = image.list_dir("/.singularity.d/env")?;
    names.sort();
    let image_name = || format!("'{}'", image.desc().path.display());
    // Each script's size is counted before it is read: a hostile image costs at most the
    // bound, not its scripts' size (environment::SCRIPTS_MAX_BYTES).
    let mut budget = environment::ScriptBudget::default();
    for name in names.into_iter().filter(|n| n.ends_with(".sh")) {
        let path = format!("/.singularity.d/env/{name}");
        let Some(size) = image.file_size(&path)? else {
            continue;
        };
        budget.add_script(&path, size).with_context(image_name)?;
        if let Some(text) = read_text(image, &path)? {
            scripts.push((path, text));
        }
    }
    let image_path = image.desc().path.display().to_string();
    let mut launcher_vars = vec![("HOME".to_string(), home_dst.display().to_string())];
    let name = image
        .desc()
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Apptainer's and SingularityCE's names for the same, which runscripts test.
    for prefix in ["LAUNCHER", "APPTAINER", "SINGULARITY"] {
        launcher_vars.push((format!("{prefix}_CONTAINER"), image_path.clone()));
        launcher_vars.push((format!("{prefix}_NAME"), name.clone()));
    }
    if opts.action == Action::Shell {
        launcher_vars.push(("PS1".to_string(), "Launcher> ".to_string()));
    }
    let layers = environment::layers(&EnvInputs {
        host: &facts.host.env,
        cleanenv: opts.cleanenv,
        image_oci_env: &oci_env,
        user: &opts.env,
        launcher: &launcher_vars,
    });
    let mut edits = layers.edits;
    edits.extend(integration::env_edits(opts, facts));
    // Read without a shell first, always: the bounds apply, and PATH for the plan's own
    // look-ups (the child looks again in what the shell reports).
    let parsed =
        environment::apply_scripts(layers.base.clone(), &scripts).with_context(image_name)?;
    let env = environment::apply_edits(parsed, &edits);
    let needs_shell: Vec<&str> = scripts
        .iter()
        .filter(|(path, text)| {
            let name = path.rsplit('/').next().unwrap_or_default();
            !environment::STOCK_SCRIPTS.contains(&name) && !environment::parses_fully(text)
        })
        .map(|(path, _)| path.as_str())
        .collect();
    let Some(first) = needs_shell.first() else {
        return Ok((env, None));
    };
    let mut cat = None;
    for c in SCRIPT_CAT {
        if image.kind(c)? == Some(EntryKind::File) {
            cat = Some(c.to_string());
            break;
        }
    }
    let (Some(_), Some(cat)) = (image.kind(SCRIPT_SHELL)?, cat) else {
        warnings.push(format!(
            "{first} needs a shell and the image has no {SCRIPT_SHELL} or no cat ({}): only \
             its plain assignments are taken",
            SCRIPT_CAT.join(", ")
        ));
        return Ok((env, None));
    };
    // What the site unsets, the image's code never sees (an LD_PRELOAD of the host's would
    // be loaded by the shell itself).
    let unset: Vec<&String> = edits
        .iter()
        .filter_map(|e| match e {
            environment::EnvEdit::Unset(k) => Some(k),
            _ => None,
        })
        .collect();
    let base = layers
        .base
        .into_iter()
        .filter(|(k, _)| !unset.contains(&k))
        .collect();
    let shell = Some(environment::ShellEnv {
        shell: SCRIPT_SHELL.into(),
        cat,
        scripts: scripts.iter().map(|(path, _)| path.clone()).collect(),
        base,
        edits,
    });
    Ok((env, shell))
}

/// The command line: `exec`'s, the shell, or `run`'s runscript or OCI entrypoint and cmd.
fn argv(opts: &LaunchOptions, image: &dyn ImageView, shell: &str) -> Result<Vec<String>> {
    Ok(match &opts.action {
        Action::Exec(argv) => {
            if argv.is_empty() {
                bail!("no command given: usage `launcher exec IMAGE COMMAND [ARGS...]`");
            }
            argv.clone()
        }
        Action::Shell => vec![shell.to_string()],
        Action::Run(args) => run_argv(image, args)?,
        Action::StartInstance(args) => start_argv(image, args)?,
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
    for candidate in path_search::candidates(name, env).filter(|c| c.is_absolute()) {
        let candidate = candidate.display().to_string();
        if image.kind(&candidate)? == Some(EntryKind::File) {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// Mount points to create, for destinations in the image itself (not inside an earlier
/// mount: those are created at apply time inside that mount). With `serve_files`, files the
/// launcher provides are placed for the FUSE server to show (only their parents are needed).
fn upper_nodes(
    mounts: &mut [MountStep],
    image: &dyn ImageView,
    paths: &HostPaths,
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
                if paths.get(src)?.is_some_and(|f| f.is_dir) {
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

/// The canonical form of a host path the user named, or an error that names it.
fn existing(paths: &HostPaths, path: &Path, what: &str) -> Result<PathBuf> {
    match paths.get(path)? {
        Some(found) => Ok(found.canonical.clone()),
        None => bail!("{what} '{}' does not exist on the host", path.display()),
    }
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
fn choose_shell(facts: &Gathered, image: &dyn ImageView) -> Result<String> {
    let host = &facts.host;
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

/// `launcher instance start`: the image's startscript with the arguments, as Apptainer runs
/// it; an empty command line (the instance only holds its mounts) when the image has none.
fn start_argv(image: &dyn ImageView, args: &[String]) -> Result<Vec<String>> {
    const STARTSCRIPT: &str = "/.singularity.d/startscript";
    if image.kind(STARTSCRIPT)? != Some(EntryKind::File) {
        return Ok(Vec::new());
    }
    Ok(std::iter::once(STARTSCRIPT.to_string())
        .chain(args.iter().cloned())
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env_list::get as env_get;
    use crate::gather::host::HostInfo;
    use crate::image::view::fake::FakeImage;
    use crate::image::view::OciConfig;
    use crate::options::bind::BindSpec;
    use crate::plan::environment::EnvEdit;

    /// A host described as data: the usual kernel, /dev and scratch paths, alice's home, and
    /// the data directory /data/alice (with `sub` in it).
    fn facts(host: HostInfo) -> Gathered {
        let dir = |p: &'static str| (p, Some((p, true)));
        let paths = crate::gather::paths::typical_host(&[
            dir("/usr/share"),
            dir("/data/alice"),
            dir("/data/alice/sub"),
            ("/etc/hosts", Some(("/etc/hosts", false))),
            ("/does/not/exist", None),
        ]);
        Gathered {
            host,
            site: Default::default(),
            injection: Default::default(),
            paths,
            overlays: Vec::new(),
        }
    }

    fn host() -> HostInfo {
        HostInfo {
            uid: 4242,
            gid: 4242,
            user: "alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            gecos: String::new(),
            cwd: "/usr/share".into(),
            env: vec![
                ("SHELL".into(), "/bin/bash".into()),
                ("FOO".into(), "1".into()),
            ],
            group_names: vec![(4242, "alice".into())],
            pmix_dirs: vec![],
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
    fn overlays_in_order_one_writable_at_most() {
        use crate::gather::overlays::{Layer, Overlay};
        let layer_image = |path: &str| {
            Layer::Image(crate::image::view::ImageDesc {
                path: path.into(),
                format: "SquashFS",
                squashfs_offset: 0,
                file_size: 1,
            })
        };
        let overlay = |given: &str, layer: Layer| Overlay {
            given: given.into(),
            layer,
        };
        let mut f = facts(host());
        f.overlays = vec![
            overlay("a.sqfs", layer_image("/w/a.sqfs")),
            overlay("/w/ovl", Layer::Writable("/w/ovl".into())),
            overlay("/w/ro:ro", Layer::Dir("/w/ro".into())),
        ];
        let o = opts(Action::Exec(vec!["id".into()]));
        let p = build(&o, &f, &image()).unwrap();
        // The writable directory is the upper layer wherever it was given; the others stay in
        // their order, bottom first.
        assert_eq!(p.overlay_dir, Some(PathBuf::from("/w/ovl")));
        assert_eq!(
            p.lower,
            vec![
                LowerLayer::Image(crate::image::view::ImageDesc {
                    path: "/w/a.sqfs".into(),
                    format: "SquashFS",
                    squashfs_offset: 0,
                    file_size: 1,
                }),
                LowerLayer::Dir("/w/ro".into())
            ]
        );
        assert!(p.writable_root && p.needs_overlay());
        let text = p.to_string();
        assert!(
            text.contains("layers over the image (top first):\n    dir   /w/ro (read-only)\n    image /w/a.sqfs"),
            "{text}"
        );

        // Read-only layers alone: files are bound over them (an overlay's own /etc/passwd
        // would hide a served one), and the root stays read-only.
        f.overlays.remove(1);
        let p = build(&o, &f, &image()).unwrap();
        assert!(!p.writable_root && p.needs_overlay());
        assert!(p.served_files().is_empty());

        f.overlays
            .push(overlay("/w/o2", Layer::Writable("/w/o2".into())));
        f.overlays
            .push(overlay("/w/o3", Layer::Writable("/w/o3".into())));
        let err = build(&o, &f, &image()).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "--overlay /w/o2 and --overlay /w/o3: one writable overlay directory at most"
            ),
            "{err}"
        );
        f.overlays.pop();
        let mut tmpfs = o.clone();
        tmpfs.writable_tmpfs = true;
        let err = build(&tmpfs, &f, &image()).unwrap_err().to_string();
        assert!(
            err.starts_with("--overlay and --writable-tmpfs: choose one"),
            "{err}"
        );
        // --writable-tmpfs over read-only layers is fine.
        f.overlays.pop();
        assert!(build(&tmpfs, &f, &image()).unwrap().writable_root);
    }

    #[test]
    fn default_plan() {
        let h = host();
        let p = build(
            &opts(Action::Exec(vec!["id".into()])),
            &facts(h.clone()),
            &image(),
        )
        .unwrap();
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
    fn scripts_that_need_a_shell_are_left_to_the_images_shell() {
        let conda = "export FIRST=1\n. /opt/conda/etc/profile.d/conda.sh\nconda activate\n";
        let stock = "if [ -z \"$LD_LIBRARY_PATH\" ]; then\n  LD_LIBRARY_PATH=/x\nfi\n";
        let with = |files: &[(&str, &str)]| {
            let mut o = opts(Action::Exec(vec!["true".into()]));
            o.env = vec![("FROM_USER".into(), "u".into())];
            build(&o, &facts(host()), &FakeImage::new(files, &[])).unwrap()
        };
        // Only assignments, and Apptainer's own scripts: read here, no shell.
        let p = with(&[
            ("/bin/sh", ""),
            ("/.singularity.d/env/90-environment.sh", "export A=1\n"),
            ("/.singularity.d/env/99-base.sh", stock),
        ]);
        assert_eq!(p.env_shell, None);
        // A script that sources another: every script, in order, by the image's /bin/sh,
        // then the same edits as without a shell.
        let p = with(&[
            ("/bin/sh", ""),
            ("/bin/cat", ""),
            ("/.singularity.d/env/90-environment.sh", conda),
            ("/.singularity.d/env/99-base.sh", stock),
        ]);
        let sh = p.env_shell.as_ref().unwrap();
        assert_eq!(
            (sh.shell.as_str(), sh.cat.as_str()),
            ("/bin/sh", "/bin/cat")
        );
        assert_eq!(
            sh.scripts,
            [
                "/.singularity.d/env/90-environment.sh",
                "/.singularity.d/env/99-base.sh"
            ]
        );
        assert!(!sh
            .base
            .iter()
            .any(|(k, _)| k == "FIRST" || k == "FROM_USER"));
        assert!(sh
            .edits
            .contains(&EnvEdit::Set("FROM_USER".into(), "u".into())));
        assert_eq!(
            env_get(&p.env, "FIRST"),
            Some("1"),
            "the estimate reads what it can"
        );
        assert!(p
            .to_string()
            .contains("env scripts: sourced by the image's /bin/sh"));
        // No shell in the image: the assignments, and a warning.
        let p = with(&[("/.singularity.d/env/90-environment.sh", conda)]);
        assert_eq!(p.env_shell, None);
        assert_eq!(env_get(&p.env, "FIRST"), Some("1"));
        assert!(p.warnings[0].contains("needs a shell and the image has no /bin/sh or no cat"));
        let p = with(&[
            ("/bin/sh", ""),
            ("/.singularity.d/env/90-environment.sh", conda),
        ]);
        assert_eq!(p.env_shell, None, "no cat: no shell either");
    }

    #[test]
    fn contain_drops_host_dirs() {
        let mut o = opts(Action::Shell);
        o.contain = true;
        let p = build(&o, &facts(host()), &image()).unwrap();
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
        let p = build(&o, &facts(host()), &image()).unwrap();
        assert_eq!(
            p.mounts.last().unwrap(),
            &MountStep::Bind {
                src: "/tmp".into(),
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
        let err = build(&o, &facts(host()), &image()).unwrap_err().to_string();
        assert!(
            err.contains("/does/not/exist") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn cwd_under_a_bind_maps_inside() {
        let mut h = host();
        h.cwd = "/data/alice/sub".into();
        let mut o = opts(Action::Exec(vec!["pwd".into()]));
        o.home = Some(("/data/alice".into(), "/home/inside".into()));
        let p = build(&o, &facts(h), &image()).unwrap();
        assert_eq!(p.cwd, PathBuf::from("/home/inside/sub"));
        assert!(p.env.contains(&("HOME".into(), "/home/inside".into())));
    }

    #[test]
    fn run_uses_runscript_then_oci() {
        let mut img = image();
        let p = build(&opts(Action::Run(vec!["a".into()])), &facts(host()), &img);
        assert!(p.unwrap_err().to_string().contains("no runscript"));
        img.oci = Some(OciConfig {
            entrypoint: vec!["/app".into()],
            cmd: vec!["--help".into()],
            ..Default::default()
        });
        let p = build(&opts(Action::Run(vec![])), &facts(host()), &img).unwrap();
        assert_eq!(p.argv, vec!["/app", "--help"]);
        let p = build(&opts(Action::Run(vec!["x".into()])), &facts(host()), &img).unwrap();
        assert_eq!(p.argv, vec!["/app", "x"]);
        img.files
            .insert("/.singularity.d/runscript".into(), b"#!/bin/sh\n".to_vec());
        let p = build(&opts(Action::Run(vec!["x".into()])), &facts(host()), &img).unwrap();
        assert_eq!(p.argv, vec!["/.singularity.d/runscript", "x"]);
    }

    #[test]
    fn instance_start_runs_the_startscript_if_any() {
        let mut img = image();
        let start = || opts(Action::StartInstance(vec!["a".into()]));
        let p = build(&start(), &facts(host()), &img).unwrap();
        assert!(p.argv.is_empty() && p.program.is_none(), "{p}");
        img.files.insert(
            "/.singularity.d/startscript".into(),
            b"#!/bin/sh\n".to_vec(),
        );
        let p = build(&start(), &facts(host()), &img).unwrap();
        assert_eq!(p.argv, vec!["/.singularity.d/startscript", "a"]);
    }
}
