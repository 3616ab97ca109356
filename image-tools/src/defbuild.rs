//! `launcher build OUT app.def`: an image from an Apptainer definition file, unprivileged.
//!
//! Per stage, in order: the root is staged in a directory the caller owns (`From:` unpacked
//! from a SIF/SquashFS file, copied from a directory, or an OCI/Docker image staged as
//! `build` stages one), or, for an image build from a SIF/SquashFS file or `docker`, is an
//! overlay on that base's tree unpacked once into the cache (`basecache`, `OverlayRoot`); `%setup` runs on the host as the caller; `%files` are copied in;
//! `%post` runs as fake root in the staged root (`fakeroot`); the Apptainer metadata files
//! are written. The last stage's root is then written as SquashFS with every file root's
//! (as `mksquashfs -all-root`), wrapped in a SIF with the definition as its own object, and
//! `%test` runs first unless `notest`. Everything lives in the caller's staging directory,
//! removed on success and failure; OUT is written under a temporary name and renamed.

use crate::basecache;
use crate::build::{BuildOptions, BuildReport, Error, OutputKind, Result, Staging};
use crate::deffile::{Bootstrap, Definition, Script, Stage};
use crate::fakeroot::{self, resolve_in_root, FakerootCommand};
use crate::oci;
use crate::registry;
use crate::squashfs::{Archive, FileType, Inode};
use crate::tree::Overrides;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a definition-file build needs beside the usual build options.
pub struct DefBuild<'a> {
    pub def: &'a Definition,
    /// The definition file as named on the command line (errors name it).
    pub def_name: &'a str,
    /// Skip `%test`.
    pub notest: bool,
    /// Build image files on a cached unpacked base (`basecache`) under an overlay, instead
    /// of unpacking the base afresh (`--disable-cache` turns it off; sandboxes never do).
    pub reuse_base: bool,
    pub opts: &'a BuildOptions,
}

/// What keeps a stage's root there: the overlay's keeper process, then the cached base's
/// lock (dropped in this order: unmounted first, then released to `cache clean`).
#[derive(Default)]
struct Kept {
    overlay: Option<fakeroot::OverlayRoot>,
    _base: Option<basecache::Entry>,
}

/// Shell words that source the image's environment scripts, as a launch applies them.
pub const SOURCE_ENV_SCRIPTS: &str =
    "for f in /.singularity.d/env/*.sh; do [ -f \"$f\" ] && . \"$f\"; done;";

/// The PATH of `%post` and `%test`: the image's environment is not applied to them.
const BUILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn fail(msg: String) -> Error {
    Error::Usage(msg)
}

fn io_err(p: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: p.display().to_string(),
        msg: e.to_string(),
    }
}

/// Builds `out` from the definition. `staging` is the caller's (a signal handler removes it).
pub fn build(out: &Path, b: &DefBuild, staging: &Staging) -> Result<BuildReport> {
    let kind = OutputKind::from_path(out)?;
    // `_kept` holds the overlays (and so the roots) until the image is written.
    let (root, overrides, pull, _kept) = build_root(b, staging, b.reuse_base)?;
    let root = root.as_path();
    let opts = b.opts;
    crate::build::write_output(
        root,
        &overrides,
        out,
        kind,
        opts.write_options(true),
        staging,
        pull,
        || {
            Ok(opts.sif_contents(
                None,
                read_labels(root)?,
                Some(b.def.text.clone().into_bytes()),
            ))
        },
    )
}

/// `launcher build --sandbox DIR app.def`: the last stage's root as a directory tree at
/// `dir` (which `sandbox::check_target` allowed; `staging` beside it), after `%test`.
pub fn build_sandbox(
    dir: &Path,
    b: &DefBuild,
    staging: &Staging,
) -> Result<Option<registry::PullReport>> {
    // The tree is renamed into place: a fresh unpack, not an overlay.
    let (root, overrides, pull, _kept) = build_root(b, staging, false)?;
    crate::sandbox::install(&root, &overrides, dir, &staging.0)?;
    Ok(pull)
}

/// Every stage in order; the last one's root (tested unless `notest`), the ownership and
/// modes its staging recorded (ownership dropped: everything is root's), and the pull.
#[allow(clippy::type_complexity)]
fn build_root(
    b: &DefBuild,
    staging: &Staging,
    reuse: bool,
) -> Result<(PathBuf, Overrides, Option<registry::PullReport>, Vec<Kept>)> {
    let mut roots: Vec<(Option<String>, PathBuf)> = Vec::new();
    let mut kept: Vec<Kept> = Vec::new();
    let mut pull = None;
    let mut overrides = Overrides::new();
    let n = b.def.stages.len();
    for (i, stage) in b.def.stages.iter().enumerate() {
        if n > 1 {
            eprintln!(
                "launcher: stage {}/{n}{}: {} {}",
                i + 1,
                stage
                    .name
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                stage.bootstrap.name(),
                stage.from
            );
        }
        let (root, ov, pulled, keep) = bootstrap(stage, i, b, staging, reuse)?;
        if pulled.is_some() {
            pull = pulled;
        }
        let overlay = keep.overlay.as_ref();
        run_stage(stage, &root, overlay, &roots, b)?;
        if i + 1 == n {
            overrides = ov;
            if !b.notest {
                if let Some(t) = stage.test.as_ref().filter(|t| !t.is_empty()) {
                    run_test(&root, overlay, t, b)?;
                }
            }
        }
        roots.push((stage.name.clone(), root));
        kept.push(keep);
    }
    let (_, root) = roots
        .pop()
        .ok_or_else(|| fail(format!("{}: no stage to build", b.def_name)))?;
    // Ownership recorded by an OCI staging is dropped: everything is root's (all_root), as
    // in Apptainer's images; device nodes, modes and xattrs the layers recorded stay.
    for o in overrides.values_mut() {
        o.uid = None;
        o.gid = None;
    }
    Ok((root, overrides, pull, kept))
}

/// The stage's starting root, in the staging directory: unpacked there, or (`reuse`) an
/// overlay on the cached unpacked base.
#[allow(clippy::type_complexity)]
fn bootstrap(
    stage: &Stage,
    i: usize,
    b: &DefBuild,
    staging: &Staging,
    reuse: bool,
) -> Result<(PathBuf, Overrides, Option<registry::PullReport>, Kept)> {
    let dir = staging.0.join(format!("stage-{i}"));
    let at = |e: Error| {
        fail(format!(
            "{}:{}: From: {}: {e}",
            b.def_name, stage.line, stage.from
        ))
    };
    let oci_source = |spec: String| -> Result<_> {
        let src = oci::Source::parse(&spec).map_err(|e| at(e.into()))?;
        stage_oci(&src, &dir, b.opts).map(|(r, o)| (r, o, None, Kept::default()))
    };
    match stage.bootstrap {
        Bootstrap::Scratch => {
            let root = dir.join("root");
            std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
            Ok((root, Overrides::new(), None, Kept::default()))
        }
        Bootstrap::LocalImage => {
            let from = Path::new(&stage.from);
            // A directory base is copied, not unpacked: nothing to reuse.
            if reuse && from.is_file() {
                // The tree is cached under the digest of the bytes hashed: a file replaced or
                // rewritten between the hash and the end of the unpack would put other bytes
                // under that key. Its identity before and after tells (a rename or a write
                // changes the inode or its ctime).
                let before = file_identity(from).map_err(at)?;
                let key = basecache::local_key(from).map_err(at)?;
                let source = format!("localimage {}", from.display());
                let fill = |root: &Path| {
                    unpack_local(from, root)?;
                    if file_identity(from)? != before {
                        return Err(fail(format!(
                            "{}: changed while the build read it; build again",
                            from.display()
                        )));
                    }
                    Ok(Overrides::new())
                };
                if let Some((root, ov, keep)) =
                    on_cached_base(&dir, &key, &source, fill).map_err(at)?
                {
                    return Ok((root, ov, None, keep));
                }
            }
            let root = dir.join("root");
            std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
            unpack_local(from, &root).map_err(at)?;
            Ok((root, Overrides::new(), None, Kept::default()))
        }
        Bootstrap::Docker => {
            let spec = if stage.from.starts_with("docker://") {
                stage.from.clone()
            } else {
                format!("docker://{}", stage.from)
            };
            let r = registry::Reference::parse(&spec).map_err(|e| at(e.into()))?;
            let pulled = registry::pull(&r, &b.opts.arch, &b.opts.pull, &dir.join("layout"))
                .map_err(|e| at(e.into()))?;
            if let Some(key) =
                basecache::docker_key(&pulled.report.manifest_digest).filter(|_| reuse)
            {
                let source = format!("docker {spec}@{}", pulled.report.manifest_digest);
                let fill = |root: &Path| {
                    // Staged beside the tree's directory, then renamed to it.
                    let tmp = root.parent().unwrap_or(root).join("oci");
                    let (staged, ov) = stage_oci(&pulled.source, &tmp, b.opts)?;
                    std::fs::remove_dir(root).map_err(|e| io_err(root, e))?;
                    std::fs::rename(&staged, root).map_err(|e| io_err(root, e))?;
                    crate::build::remove_tree(&tmp);
                    Ok(ov)
                };
                if let Some((root, ov, keep)) = on_cached_base(&dir, &key, &source, fill)? {
                    return Ok((root, ov, Some(pulled.report), keep));
                }
            }
            let (root, ov) = stage_oci(&pulled.source, &dir, b.opts)?;
            Ok((root, ov, Some(pulled.report), Kept::default()))
        }
        Bootstrap::Oci => oci_source(format!("oci:{}", stage.from)),
        Bootstrap::OciArchive => oci_source(format!("oci-archive:{}", stage.from)),
        Bootstrap::DockerArchive => oci_source(format!("docker-archive:{}", stage.from)),
    }
}

/// The cached tree of the base `key` (unpacked by `fill` if not cached yet) under an overlay
/// whose changes go to `dir` (the stage's staging directory): the merged root as this process
/// reaches it. Where the kernel refuses the overlay, a copy of the cached tree (reflinked
/// where the file system can, as `cp -a` does by default). None where there is no cache to
/// keep a tree in (no home directory, a read-only one): the caller stages afresh.
fn on_cached_base(
    dir: &Path,
    key: &str,
    source: &str,
    fill: impl FnOnce(&Path) -> Result<Overrides>,
) -> Result<Option<(PathBuf, Overrides, Kept)>> {
    let cache_root = match registry::Cache::default_dir()
        .map_err(Error::from)
        .and_then(|c| {
            let bases = basecache::dir(&c);
            std::fs::create_dir_all(&bases).map_err(|e| io_err(&bases, e))?;
            Ok(c)
        }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "launcher: base: no cache to keep the unpacked base in ({e}); unpacking it afresh"
            );
            return Ok(None);
        }
    };
    let entry = basecache::get_or_fill(&cache_root, key, source, fill)?;
    let overrides = entry.overrides()?;
    let how = if entry.reused {
        "reused the cached tree"
    } else {
        "unpacked into the cache"
    };
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).map_err(|e| io_err(d, e))?;
    }
    match fakeroot::OverlayRoot::mount(&entry.root(), &upper, &work, &merged) {
        Ok(ov) => {
            eprintln!("launcher: base: {how} {key} ({source}), under an overlay");
            Ok(Some((
                ov.path().to_path_buf(),
                overrides,
                Kept {
                    overlay: Some(ov),
                    _base: Some(entry),
                },
            )))
        }
        Err(e) => {
            eprintln!("launcher: base: {how} {key} ({source}); no overlay on it ({e}): copying it");
            let root = dir.join("root");
            std::fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
            unpack_local(&entry.root(), &root)?;
            Ok(Some((root, overrides, Kept::default())))
        }
    }
}

fn stage_oci(src: &oci::Source, dir: &Path, opts: &BuildOptions) -> Result<(PathBuf, Overrides)> {
    let staged = oci::stage(src, &opts.arch, &dir.join("oci"))?;
    crate::build::add_apptainer_files(&staged.root, &staged.config)?;
    Ok((staged.root, staged.overrides))
}

fn file_identity(p: &Path) -> Result<crate::file_identity::FileIdentity> {
    let m = std::fs::metadata(p).map_err(|e| io_err(p, e))?;
    Ok(crate::file_identity::FileIdentity::of(&m))
}

/// `Bootstrap: localimage`: a SIF's primary SquashFS partition, a bare SquashFS file, or a
/// directory (a sandbox), into `root`.
pub(crate) fn unpack_local(from: &Path, root: &Path) -> Result<()> {
    let meta = std::fs::metadata(from).map_err(|e| io_err(from, e))?;
    if meta.is_dir() {
        let out = Command::new("cp")
            .arg("-a")
            .arg("--")
            .arg(from.join("."))
            .arg(root)
            .output()
            .map_err(|e| io_err(Path::new("cp"), e))?;
        if !out.status.success() {
            return Err(fail(format!(
                "copying the directory: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        return Ok(());
    }
    let offset = match crate::sif::SifFile::open(from) {
        Ok(sif) => {
            sif.primary_squashfs()
                .map_err(|e| fail(format!("{}: {e}", from.display())))?
                .offset
        }
        Err(_) => 0,
    };
    let archive = Archive::open_path(from, offset)?;
    let mut links = HashMap::new();
    let top = archive.root()?;
    unpack_dir(&archive, &top, root, &mut links)?;
    Ok(())
}

/// Writes the directory `dir` of the archive into `dest` (which exists), recursively. Device
/// nodes and sockets cannot be made unprivileged and are left out (the build's /dev is the
/// host's few); xattrs are not restored. Hard links are kept.
fn unpack_dir(
    a: &Archive,
    dir: &Inode,
    dest: &Path,
    links: &mut HashMap<u32, PathBuf>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in a.read_dir(dir)? {
        let name = OsStr::from_bytes(&e.name);
        let p = dest.join(name);
        let inode = a.inode(e.inode_ref)?;
        match inode.kind {
            FileType::Dir => {
                std::fs::create_dir(&p).map_err(|er| io_err(&p, er))?;
                unpack_dir(a, &inode, &p, links)?;
            }
            FileType::File => {
                if inode.nlink > 1 {
                    if let Some(first) = links.get(&inode.inode_number) {
                        std::fs::hard_link(first, &p).map_err(|er| io_err(&p, er))?;
                        continue;
                    }
                    links.insert(inode.inode_number, p.clone());
                }
                let f = std::fs::File::create(&p).map_err(|er| io_err(&p, er))?;
                copy_file(a, &inode, &f).map_err(|er| fail(format!("{}: {er}", p.display())))?;
            }
            FileType::Symlink => {
                let target = a.read_link(&inode)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &p)
                    .map_err(|er| io_err(&p, er))?;
                continue;
            }
            FileType::Fifo => {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                    .map_err(|_| fail(format!("{}: NUL in name", p.display())))?;
                // SAFETY: c is a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(io_err(&p, std::io::Error::last_os_error()));
                }
            }
            _ => continue,
        }
        // Modes (after the contents: a read-only directory is filled first) and times.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(u32::from(inode.mode)))
            .map_err(|er| io_err(&p, er))?;
        set_mtime(&p, inode.mtime);
    }
    Ok(())
}

/// Sets the modification time by path, without opening (a fifo's open would block).
fn set_mtime(p: &Path, mtime: u32) {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return;
    };
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            // `as _`: time_t is i64 on both glibc and musl (64-bit), but musl's alias is
            // deprecated in the libc crate.
            tv_sec: mtime as _,
            tv_nsec: 0,
        },
    ];
    // SAFETY: c is a NUL-terminated path and times an array of two timespecs. A failure
    // only leaves the time of the unpacking, which the image does not depend on.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

fn copy_file(a: &Archive, inode: &Inode, f: &std::fs::File) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < inode.size {
        let n = a.read_at(inode, off, &mut buf)?;
        if n == 0 {
            break;
        }
        f.write_all_at(&buf[..n], off)
            .map_err(|e| fail(format!("writing: {e}")))?;
        off += n as u64;
    }
    f.set_len(inode.size)
        .map_err(|e| fail(format!("writing: {e}")))?;
    Ok(())
}

/// %setup, %files, %post and the metadata files of one stage.
fn run_stage(
    stage: &Stage,
    root: &Path,
    overlay: Option<&fakeroot::OverlayRoot>,
    earlier: &[(Option<String>, PathBuf)],
    b: &DefBuild,
) -> Result<()> {
    if let Some(s) = stage.setup.as_ref().filter(|s| !s.is_empty()) {
        eprintln!("launcher: running %setup on the host");
        let status = Command::new("/bin/sh")
            .arg("-e")
            .arg("-c")
            .arg(&s.body)
            .env("APPTAINER_ROOTFS", root)
            .env("SINGULARITY_ROOTFS", root)
            .status()
            .map_err(|e| fail(format!("{}:{}: %setup: {e}", b.def_name, s.line)))?;
        if !status.success() {
            return Err(fail(format!(
                "{}:{}: %setup failed ({})",
                b.def_name,
                s.line,
                describe(status)
            )));
        }
    }
    for files in &stage.files {
        let from_root = match &files.from {
            None => None,
            Some(name) => Some(
                earlier
                    .iter()
                    .find(|(n, _)| n.as_ref() == Some(name))
                    .map(|(_, r)| r.clone())
                    .ok_or_else(|| {
                        fail(format!(
                            "{}:{}: %files: no stage '{name}'",
                            b.def_name, files.line
                        ))
                    })?,
            ),
        };
        for c in &files.copies {
            copy_files(root, from_root.as_deref(), &c.src, c.dst.as_deref()).map_err(|m| {
                fail(format!(
                    "{}:{}: %files: '{}': {m}",
                    b.def_name, c.line, c.src
                ))
            })?;
        }
    }
    // /.singularity.d/env exists for %post to append to $APPTAINER_ENVIRONMENT (91-environment.sh),
    // as in Apptainer's builds.
    let meta = resolve_in_root(root, "/.singularity.d", true).map_err(|e| io_err(root, e))?;
    std::fs::create_dir_all(meta.join("env")).map_err(|e| io_err(&meta, e))?;
    if let Some(s) = stage.post.as_ref().filter(|s| !s.is_empty()) {
        eprintln!("launcher: running %post as fake root");
        let shell = s.shell().unwrap_or("/bin/sh").to_string();
        let status = fake(
            root,
            overlay,
            vec![shell, "-e".into(), "-c".into(), s.body.clone()],
            false,
        )
        .map_err(|e| fail(format!("{}:{}: %post: {e}", b.def_name, s.line)))?;
        if !status.success() {
            return Err(fail(format!(
                "{}:{}: %post failed ({})",
                b.def_name,
                s.line,
                describe(status)
            )));
        }
    }
    write_metadata(root, stage, b)
}

/// Runs argv as fake root in `root` with the build's environment: %post, %test, and
/// `launcher exec|run|shell --fakeroot --writable DIR` (`inherit_stdin` for a shell).
pub fn fake(
    root: &Path,
    overlay: Option<&fakeroot::OverlayRoot>,
    argv: Vec<String>,
    inherit_stdin: bool,
) -> std::result::Result<std::process::ExitStatus, fakeroot::Error> {
    let mut env = vec![
        ("PATH".to_string(), BUILD_PATH.to_string()),
        ("HOME".to_string(), "/root".to_string()),
        ("LANG".to_string(), "C".to_string()),
        ("APPTAINER_ROOTFS".to_string(), "/".to_string()),
        (
            "APPTAINER_ENVIRONMENT".to_string(),
            "/.singularity.d/env/91-environment.sh".to_string(),
        ),
    ];
    // Proxies and the terminal type pass through: downloads and progress output need them.
    for k in [
        "TERM",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    fakeroot::run(&FakerootCommand {
        root,
        argv,
        env,
        inherit_stdin,
        overlay,
    })
}

/// `%test`: the image's test script, with its environment, as fake root.
fn run_test(
    root: &Path,
    overlay: Option<&fakeroot::OverlayRoot>,
    t: &Script,
    b: &DefBuild,
) -> Result<()> {
    eprintln!("launcher: running %test (skip it with --notest)");
    let script = format!("{SOURCE_ENV_SCRIPTS} exec /.singularity.d/test");
    let status = fake(
        root,
        overlay,
        vec!["/bin/sh".into(), "-c".into(), script],
        false,
    )
    .map_err(|e| fail(format!("{}:{}: %test: {e}", b.def_name, t.line)))?;
    if !status.success() {
        return Err(fail(format!(
            "{}:{}: %test failed ({}); its output is above; --notest skips it",
            b.def_name,
            t.line,
            describe(status)
        )));
    }
    Ok(())
}

fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".into(),
    }
}

/// One `%files` line, its source's wildcards expanded (on the host, or in `from_root`):
/// each match is copied as a source without wildcards would be; several go into `dst` as a
/// directory.
fn copy_files(
    root: &Path,
    from_root: Option<&Path>,
    src: &str,
    dst: Option<&str>,
) -> std::result::Result<(), String> {
    if !crate::glob::has_magic(src) {
        return copy_in(root, from_root, src, dst);
    }
    let in_stage = |p: &str| {
        from_root.and_then(|r| {
            let abs = if p.starts_with('/') {
                p.to_string()
            } else {
                format!("/{p}")
            };
            resolve_in_root(r, &abs, true).ok()
        })
    };
    let found = match from_root {
        None => crate::glob::expand(src, &crate::glob::on_host)?,
        Some(_) => crate::glob::expand(src, &in_stage)?,
    };
    let dir_dst;
    let dst = match dst {
        Some(d) if found.len() > 1 && !d.ends_with('/') => {
            dir_dst = format!("{d}/");
            Some(dir_dst.as_str())
        }
        d => d,
    };
    for f in &found {
        copy_in(root, from_root, f, dst).map_err(|m| format!("{f}: {m}"))?;
    }
    Ok(())
}

/// One `%files` line: `src` (a host path, or in `from_root`) to `dst` in `root` (default: the
/// same path). A directory destination, or one ending in `/`, receives the source inside it.
fn copy_in(
    root: &Path,
    from_root: Option<&Path>,
    src: &str,
    dst: Option<&str>,
) -> std::result::Result<(), String> {
    let src_path = match from_root {
        Some(r) => resolve_in_root(r, src, true).map_err(|e| e.to_string())?,
        None => PathBuf::from(src),
    };
    if std::fs::symlink_metadata(&src_path).is_err() {
        return Err("no such file or directory".into());
    }
    let dst = dst.unwrap_or(src);
    let dst_abs = if dst.starts_with('/') {
        dst.to_string()
    } else {
        format!("/{dst}")
    };
    let resolved = resolve_in_root(root, &dst_abs, true).map_err(|e| e.to_string())?;
    let base = Path::new(src)
        .file_name()
        .ok_or_else(|| "the source names no file".to_string())?;
    let target = if dst.ends_with('/') || resolved.is_dir() {
        std::fs::create_dir_all(&resolved).map_err(|e| format!("{}: {e}", resolved.display()))?;
        resolved.join(base)
    } else {
        let parent = resolve_in_root(
            root,
            Path::new(&dst_abs)
                .parent()
                .and_then(|p| p.to_str())
                .unwrap_or("/"),
            true,
        )
        .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        parent.join(Path::new(&dst_abs).file_name().unwrap_or(base))
    };
    // A symlink at the target would be followed by cp, possibly out of the tree.
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    let out = Command::new("cp")
        .args(["-dR", "--preserve=mode,timestamps,links", "--"])
        .arg(&src_path)
        .arg(&target)
        .output()
        .map_err(|e| format!("running cp: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(())
}

/// `/.singularity.d/{Singularity,runscript,startscript,test,runscript.help,labels.json,
/// env/90-environment.sh}`, as Apptainer writes them.
fn write_metadata(root: &Path, stage: &Stage, b: &DefBuild) -> Result<()> {
    let meta = resolve_in_root(root, "/.singularity.d", true).map_err(|e| io_err(root, e))?;
    let env_dir = meta.join("env");
    std::fs::create_dir_all(&env_dir).map_err(|e| io_err(&env_dir, e))?;
    if let Some(e) = stage.environment.as_ref().filter(|s| !s.is_empty()) {
        let p = env_dir.join("90-environment.sh");
        if p.is_file() {
            // Apptainer appends to the base image's script.
            let mut old = std::fs::read_to_string(&p).map_err(|er| io_err(&p, er))?;
            old.push('\n');
            old.push_str(&dedent(&e.body));
            old.push('\n');
            write(&p, &old, 0o755)?;
        } else {
            write(&p, &format!("#!/bin/sh\n\n{}\n", dedent(&e.body)), 0o755)?;
        }
    }
    for (script, name) in [
        (&stage.runscript, "runscript"),
        (&stage.startscript, "startscript"),
        (&stage.test, "test"),
    ] {
        if let Some(s) = script.as_ref().filter(|s| !s.is_empty()) {
            let (shebang, body) = s.shebang_and_body();
            write(&meta.join(name), &format!("{shebang}\n\n{body}\n"), 0o755)?;
        }
    }
    let help = stage.help.as_ref().filter(|s| !s.is_empty());
    if let Some(h) = help {
        write(
            &meta.join("runscript.help"),
            &format!("{}\n", h.body),
            0o644,
        )?;
    }
    // The definition; an earlier one (the base image's) goes to bootstrap_history.
    let def = meta.join("Singularity");
    if def.is_file() {
        let hist = meta.join("bootstrap_history");
        std::fs::create_dir_all(&hist).map_err(|e| io_err(&hist, e))?;
        let n = std::fs::read_dir(&hist).map(|d| d.count()).unwrap_or(0);
        let to = hist.join(format!("Singularity{n}"));
        std::fs::rename(&def, &to).map_err(|e| io_err(&to, e))?;
    }
    write(&def, &b.def.text, 0o644)?;
    // Labels: the base image's, then the build's, then %labels (not replacing either, as
    // Apptainer does without --force).
    let mut labels = read_labels(root)?;
    let epoch = b.opts.reproducible.map(i64::from).unwrap_or_else(now);
    let t = Utc::from_epoch(epoch);
    labels.insert("org.label-schema.schema-version".into(), "1.0".into());
    labels.insert("org.opencontainers.image.created".into(), t.rfc3339());
    labels.insert("org.label-schema.build-date".into(), t.apptainer());
    labels.insert(
        "org.label-schema.usage.launcher.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    if help.is_some() {
        labels.insert(
            "org.label-schema.usage".into(),
            "/.singularity.d/runscript.help".into(),
        );
        labels.insert(
            "org.label-schema.usage.apptainer.runscript.help".into(),
            "/.singularity.d/runscript.help".into(),
        );
    }
    for (k, v) in &stage.header {
        labels.insert(
            format!("org.label-schema.usage.singularity.deffile.{k}"),
            v.clone(),
        );
    }
    let arch = b.opts.arch.split('/').next().unwrap_or("amd64").to_string();
    labels.insert("org.opencontainers.image.architecture".into(), arch.clone());
    labels.insert("org.label-schema.build-arch".into(), arch);
    for (k, v) in &stage.labels {
        if labels.contains_key(k) {
            eprintln!("launcher: warning: label {k} already exists; not replacing it");
        } else {
            labels.insert(k.clone(), v.clone());
        }
    }
    let text = serde_json::to_string_pretty(&labels).unwrap_or_else(|_| "{}".into());
    write(&meta.join("labels.json"), &text, 0o644)
}

/// The body without the indentation all its lines share. Definition files indent section
/// bodies; a shell does not mind, but `launcher exec` reads an image's environment scripts
/// without one and takes only unindented (top-level) assignments.
fn dedent(body: &str) -> String {
    let indent = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
        .min()
        .unwrap_or(0);
    body.lines()
        .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_labels(root: &Path) -> Result<BTreeMap<String, String>> {
    let meta =
        resolve_in_root(root, "/.singularity.d/labels.json", true).map_err(|e| io_err(root, e))?;
    match std::fs::read(&meta) {
        Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_default()),
        Err(_) => Ok(BTreeMap::new()),
    }
}

fn write(p: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(p).map_err(|e| io_err(p, e))?;
    }
    std::fs::write(p, text).map_err(|e| io_err(p, e))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err(p, e))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A UTC time, for the build labels (no time-zone database needed).
struct Utc {
    y: i64,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
    wd: u32,
}

impl Utc {
    fn from_epoch(t: i64) -> Utc {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let mo = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(mo <= 2);
        Utc {
            y,
            mo,
            d,
            h: secs / 3600,
            mi: secs / 60 % 60,
            s: secs % 60,
            // 1970-01-01 was a Thursday.
            wd: (days + 4).rem_euclid(7) as u32,
        }
    }

    fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.y, self.mo, self.d, self.h, self.mi, self.s
        )
    }

    /// Apptainer's `org.label-schema.build-date`: `Thursday_1_January_1970_0:0:0_UTC`.
    fn apptainer(&self) -> String {
        const DAYS: [&str; 7] = [
            "Sunday",
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
        ];
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        format!(
            "{}_{}_{}_{}_{}:{}:{}_UTC",
            DAYS[self.wd as usize % 7],
            self.d,
            MONTHS[(self.mo as usize + 11) % 12],
            self.y,
            self.h,
            self.mi,
            self.s
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_bodies_lose_their_common_indent() {
        assert_eq!(
            dedent("    export A=1\n\n    if x; then\n        B=2\n    fi\n"),
            "export A=1\n\nif x; then\n    B=2\nfi"
        );
    }

    #[test]
    fn build_dates() {
        let t = Utc::from_epoch(0);
        assert_eq!(t.rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(t.apptainer(), "Thursday_1_January_1970_0:0:0_UTC");
        let t = Utc::from_epoch(1_709_251_199); // 2024-02-29 23:59:59, a Thursday
        assert_eq!(t.rfc3339(), "2024-02-29T23:59:59Z");
        assert_eq!(t.apptainer(), "Thursday_29_February_2024_23:59:59_UTC");
    }

    #[test]
    fn files_are_copied_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        let src = d.path().join("tool");
        std::fs::write(&src, "x").unwrap();
        let s = src.to_str().unwrap();
        copy_in(&root, None, s, Some("/bin/")).unwrap();
        assert!(root.join("usr/bin/tool").is_file());
        copy_in(&root, None, s, Some("/opt/renamed")).unwrap();
        assert!(root.join("opt/renamed").is_file());
        copy_in(&root, None, s, None).unwrap();
        assert!(root.join(s.trim_start_matches('/')).is_file());
        assert_eq!(
            copy_in(&root, None, "/no/such", None).unwrap_err(),
            "no such file or directory"
        );
    }
}
