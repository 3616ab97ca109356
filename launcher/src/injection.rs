//! Host files brought into the container: GPU (and MPI) libraries, programs, device nodes,
//! CDI mounts and environment, plus the site config's binds, devices and environment edits.
//!
//! Gathering (`gpu::gather`, later `mpi`) reads the host and fills an `Injection`; this module
//! turns it into plan entries, purely. Libraries are bound read-only one by one into
//! `LIB_DIR`, which goes first on LD_LIBRARY_PATH; programs into `BIN_DIR`, first on PATH.
//! The image is never modified: missing mount points are virtual nodes of the FUSE server.

use crate::glibc_guard::{self, GlibcNeeds};
use crate::host::HostInfo;
use crate::image_view::ImageView;
use crate::options::LaunchOptions;
use crate::plan::{clean_abs, MountStep};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where injected libraries appear inside the container.
pub const LIB_DIR: &str = "/.launcher.d/libs";
/// Where injected programs appear inside the container.
pub const BIN_DIR: &str = "/.launcher.d/bin";

/// One host file to bind into `LIB_DIR` or `BIN_DIR` under `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostFile {
    /// The name inside (a soname such as `libcuda.so.1`, or a program name).
    pub name: String,
    /// The host file, symlinks resolved.
    pub host: PathBuf,
    /// Who asked for it ("nvidia", "rocm", "mpi"): shown by --debug and in errors.
    pub origin: String,
    #[serde(skip)]
    pub glibc: GlibcNeeds,
}

/// A host path bound at a container path (device nodes, CDI mounts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostBind {
    pub host: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
    pub origin: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Injection {
    pub libs: Vec<HostFile>,
    pub bins: Vec<HostFile>,
    pub devices: Vec<HostBind>,
    pub mounts: Vec<HostBind>,
    /// Variables to set (CDI `env`), after the site's edits and before `--env`.
    pub env: Vec<(String, String)>,
    /// Lines for --debug: what was looked for and where it was found (or not).
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

impl Injection {
    pub fn is_empty(&self) -> bool {
        self.libs.is_empty()
            && self.bins.is_empty()
            && self.devices.is_empty()
            && self.mounts.is_empty()
            && self.env.is_empty()
    }

    pub fn extend(&mut self, other: Injection) {
        for l in other.libs {
            if !self.libs.iter().any(|x| x.name == l.name) {
                self.libs.push(l);
            }
        }
        for b in other.bins {
            if !self.bins.iter().any(|x| x.name == b.name) {
                self.bins.push(b);
            }
        }
        for d in other.devices {
            if !self.devices.iter().any(|x| x.dst == d.dst) {
                self.devices.push(d);
            }
        }
        self.mounts.extend(other.mounts);
        self.env.extend(other.env);
        self.notes.extend(other.notes);
        self.warnings.extend(other.warnings);
    }

    /// Resolve library base names through the search directories, then the ld.so cache;
    /// each found name becomes one `HostFile` (glibc needs read). Returns the names not found.
    pub fn add_libraries(
        &mut self,
        origin: &str,
        bases: &[String],
        search: &[PathBuf],
        cache: &crate::ld_cache::LdCache,
    ) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for base in bases {
            let found = find_library(base, search, cache);
            if found.is_empty() {
                missing.push(base.clone());
                continue;
            }
            for (name, path) in found {
                let Ok(real) = std::fs::canonicalize(&path) else {
                    self.notes
                        .push(format!("{origin}: {name}: {} is dangling", path.display()));
                    continue;
                };
                if self.libs.iter().any(|l| l.name == name) {
                    continue;
                }
                let glibc = glibc_guard::needs_of_file(&real)?;
                self.libs.push(HostFile {
                    name,
                    host: real,
                    origin: origin.to_string(),
                    glibc,
                });
            }
        }
        Ok(missing)
    }

    /// Find programs in `dirs` (first hit wins); returns the names not found.
    pub fn add_binaries(
        &mut self,
        origin: &str,
        names: &[String],
        dirs: &[PathBuf],
    ) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for name in names {
            let Some(path) = host_program(name, dirs) else {
                missing.push(name.clone());
                continue;
            };
            let real = crate::host::canonical_host_path(&path, "GPU program")?;
            // Static programs have no glibc needs; scripts are no ELF at all.
            let glibc = glibc_guard::needs_of_file(&real).unwrap_or_default();
            self.bins.push(HostFile {
                name: name.clone(),
                host: real,
                origin: origin.to_string(),
                glibc,
            });
        }
        Ok(missing)
    }
}

/// The first `name` in `dirs` that is not a `#!` script, else the first script. A host's wrapper
/// script (an H200 node's `/usr/bin/nvidia-smi` runs `exec /usr/local/nvidia/bin/nvidia-smi`)
/// names host paths that do not exist in the container; the program it wraps works there.
fn host_program(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let mut script = None;
    for path in dirs.iter().map(|d| d.join(name)).filter(|p| p.is_file()) {
        let mut magic = [0u8; 2];
        let is_script = std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| &magic == b"#!");
        if !is_script {
            return Some(path);
        }
        script.get_or_insert(path);
    }
    script
}

/// Every file named `base` or `base.*` in the search directories (first directory wins for a
/// name), else in the ld.so cache: (name, path as found).
pub fn find_library(
    base: &str,
    search: &[PathBuf],
    cache: &crate::ld_cache::LdCache,
) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for dir in search {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::ld_cache::name_matches(n, base))
            .collect();
        names.sort();
        for n in names {
            if !found.iter().any(|(f, _)| *f == n) {
                found.push((n.clone(), dir.join(&n)));
            }
        }
    }
    if found.is_empty() {
        for e in cache.matching(base) {
            found.push((e.name.clone(), e.path.clone()));
        }
    }
    found
}

/// Plan entries for the site config and the injection, placed before the user's binds.
/// `notes` receives the lines --debug shows under "host integration".
pub fn add_mounts(
    opts: &LaunchOptions,
    host: &HostInfo,
    image: &dyn ImageView,
    mounts: &mut Vec<MountStep>,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    notes.extend(host.injection.notes.iter().cloned());
    warnings.extend(host.injection.warnings.iter().cloned());
    // Site binds: a source missing on this node is skipped, not fatal (a login node may
    // lack /scratch).
    for spec in &host.site.binds {
        for b in crate::bind::parse_bind_list(spec)? {
            let Ok(src) = std::fs::canonicalize(&b.src) else {
                warnings.push(format!(
                    "site config bind '{}': '{}' does not exist on this host: skipped",
                    spec,
                    b.src.display()
                ));
                continue;
            };
            notes.push(format!(
                "site bind {} -> {}",
                src.display(),
                b.dst.display()
            ));
            mounts.push(MountStep::Bind {
                src,
                dst: clean_abs(&b.dst)?,
                readonly: b.readonly,
                recursive: true,
            });
        }
    }
    let site_devices = host.site.devices.iter().map(|d| HostBind {
        host: d.clone(),
        dst: d.clone(),
        readonly: false,
        origin: "site config".into(),
    });
    let inj = &host.injection;
    let mut unbound: Vec<String> = Vec::new();
    for d in site_devices.chain(inj.devices.iter().cloned()) {
        if !d.host.exists() {
            warnings.push(format!(
                "device {} ({}): not found on this host: skipped",
                d.host.display(),
                d.origin
            ));
            continue;
        }
        let dst = clean_abs(&d.dst)?;
        // Without --contain /dev is the host's own (rbind): its nodes are there already, and a
        // node it lacks cannot be added (that would create a file in the host's /dev).
        if !opts.contain && dst.starts_with("/dev") {
            if d.host == dst {
                notes.push(format!("device {} (host /dev)", dst.display()));
                continue;
            }
            if !dst.exists() {
                unbound.push(dst.display().to_string());
                continue;
            }
        }
        notes.push(format!("device {} -> {}", d.host.display(), dst.display()));
        mounts.push(MountStep::Bind {
            recursive: d.host.is_dir(),
            src: d.host,
            dst,
            readonly: false,
        });
    }
    if !unbound.is_empty() {
        warnings.push(format!(
            "devices not bound: /dev is the host's without --contain and has no {}",
            unbound.join(" ")
        ));
    }
    if inj.is_empty() {
        return Ok(());
    }
    check_glibc(inj, image, warnings)?;
    for (dir, files) in [(LIB_DIR, &inj.libs), (BIN_DIR, &inj.bins)] {
        for f in files {
            let dst = Path::new(dir).join(&f.name);
            notes.push(format!(
                "{} {} -> {}",
                f.origin,
                f.host.display(),
                dst.display()
            ));
            mounts.push(MountStep::Bind {
                src: f.host.clone(),
                dst,
                readonly: true,
                recursive: false,
            });
        }
    }
    for m in &inj.mounts {
        let Ok(src) = std::fs::canonicalize(&m.host) else {
            warnings.push(format!(
                "mount {} ({}): not found on this host: skipped",
                m.host.display(),
                m.origin
            ));
            continue;
        };
        let dst = clean_abs(&m.dst)?;
        notes.push(format!(
            "{} mount {} -> {}",
            m.origin,
            src.display(),
            dst.display()
        ));
        mounts.push(MountStep::Bind {
            recursive: src.is_dir(),
            src,
            dst,
            readonly: m.readonly,
        });
    }
    for (k, v) in &inj.env {
        notes.push(format!("env {k}={v}"));
    }
    Ok(())
}

fn check_glibc(inj: &Injection, image: &dyn ImageView, warnings: &mut Vec<String>) -> Result<()> {
    let files: Vec<(&str, &HostFile)> = inj
        .libs
        .iter()
        .map(|l| ("library", l))
        .chain(inj.bins.iter().map(|b| ("program", b)))
        .filter(|(_, f)| f.glibc != GlibcNeeds::default())
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    let Some(image_glibc) = glibc_guard::image_glibc(image)? else {
        warnings.push(format!(
            "the image has no glibc (no libc.so.6): the injected host libraries need one and will not load; glibc check skipped ({} files)",
            files.len()
        ));
        return Ok(());
    };
    for (what, f) in files {
        if let Some(why) = glibc_guard::refusal(
            &format!("{} {what}", f.origin),
            &f.host,
            &f.glibc,
            &image_glibc,
        ) {
            bail!("{why}");
        }
    }
    Ok(())
}

/// Environment edits after the image's: the site's edits, the injection's variables, the
/// user's `--env` again (the user has the last word), then the injected directories first on
/// LD_LIBRARY_PATH and PATH.
pub fn edit_env(env: &mut Vec<(String, String)>, opts: &LaunchOptions, host: &HostInfo) {
    let site = &host.site.env;
    env.retain(|(k, _)| !site.unset.contains(k));
    for (k, v) in &site.set {
        set(env, k, v);
    }
    for (k, v) in &site.prepend {
        let new = join(Some(v), get(env, k));
        set(env, k, &new);
    }
    for (k, v) in &site.append {
        let new = join(get(env, k), Some(v));
        set(env, k, &new);
    }
    let inj = &host.injection;
    for (k, v) in &inj.env {
        set(env, k, v);
    }
    for (k, v) in &opts.env {
        set(env, k, v);
    }
    if !inj.libs.is_empty() {
        let new = join(Some(LIB_DIR), get(env, "LD_LIBRARY_PATH"));
        set(env, "LD_LIBRARY_PATH", &new);
    }
    if !inj.bins.is_empty() {
        let new = join(Some(BIN_DIR), get(env, "PATH"));
        set(env, "PATH", &new);
    }
}

fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn set(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

fn join(first: Option<&str>, second: Option<&str>) -> String {
    match (first, second) {
        (Some(a), Some(b)) => format!("{a}:{b}"),
        (Some(a), None) | (None, Some(a)) => a.to_string(),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_skip_wrapper_scripts() {
        let dir = std::env::temp_dir().join(format!("inj-prog-{}", std::process::id()));
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        for d in [&a, &b, &c] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(a.join("smi"), "#!/bin/sh\nexec /opt/drv/smi \"$@\"\n").unwrap();
        std::fs::write(b.join("smi"), b"\x7fELF...").unwrap();
        std::fs::write(c.join("only-script"), "#!/bin/sh\n").unwrap();
        let dirs = [a.clone(), b.clone(), c.clone()];
        assert_eq!(host_program("smi", &dirs), Some(b.join("smi")));
        assert_eq!(
            host_program("only-script", &dirs),
            Some(c.join("only-script"))
        );
        assert_eq!(host_program("absent", &dirs), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn joins() {
        assert_eq!(join(Some("/a"), Some("/b")), "/a:/b");
        assert_eq!(join(Some("/a"), None), "/a");
        assert_eq!(join(None, Some("/b")), "/b");
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::glibc_guard::GlibcVersion;
    use crate::image_view::fake::FakeImage;
    use crate::options::Action;
    use crate::plan::{self, Plan};

    const HOST_LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    fn host(inj: Injection) -> HostInfo {
        let tmp = std::env::temp_dir();
        HostInfo {
            uid: 4242,
            gid: 4242,
            groups: vec![],
            user: "alice".into(),
            home: tmp.clone(),
            shell: "/bin/sh".into(),
            gecos: String::new(),
            cwd: tmp,
            env: vec![("LD_LIBRARY_PATH".into(), "/host/lib".into())],
            group_names: vec![],
            existing_etc: vec![],
            site: crate::site_config::SiteConfig::parse(
                "env:\n  set: {SITE: 'yes'}\n  prepend: {LD_LIBRARY_PATH: /site/lib}\n  unset: [LD_PRELOAD]\n",
                Path::new("site.yaml"),
            )
            .unwrap(),
            injection: inj,
        }
    }

    /// An image holding the test host's glibc (Debian 12 on x86-64, as tests/setup.sh
    /// expects: elsewhere the test fails, never skips).
    fn image_with_libc() -> FakeImage {
        let libc = std::fs::read(HOST_LIBC)
            .unwrap_or_else(|e| panic!("the test host's glibc {HOST_LIBC}: {e}"));
        let mut img = FakeImage::new(&[("/bin/sh", "")], &[]);
        img.files.insert(HOST_LIBC.into(), libc);
        img
    }

    fn needing(v: &str) -> GlibcNeeds {
        GlibcNeeds {
            newest: GlibcVersion::parse_tag(v),
            named: vec![],
        }
    }

    fn injection(need: &str) -> Injection {
        Injection {
            libs: vec![HostFile {
                name: "libcuda.so.1".into(),
                host: "/etc/hostname-not-needed".into(),
                origin: "nvidia".into(),
                glibc: needing(need),
            }],
            bins: vec![HostFile {
                name: "nvidia-smi".into(),
                host: "/bin/ls".into(),
                origin: "nvidia".into(),
                glibc: needing("GLIBC_2.2.5"),
            }],
            devices: vec![HostBind {
                host: "/dev/null".into(),
                dst: "/dev/nvidia0".into(),
                readonly: false,
                origin: "nvidia".into(),
            }],
            env: vec![("NVIDIA_VISIBLE_DEVICES".into(), "0".into())],
            ..Default::default()
        }
    }

    fn build(inj: Injection, contain: bool, img: &FakeImage) -> Result<Plan> {
        let mut o = LaunchOptions::new("/images/t.sif".into(), Action::Exec(vec!["app".into()]));
        o.contain = contain;
        o.env = vec![("SITE".into(), "user-wins".into())];
        plan::build(&o, &host(inj), img)
    }

    #[test]
    fn libraries_programs_devices_and_env() {
        let img = image_with_libc();
        let p = build(injection("GLIBC_2.17"), true, &img).unwrap();
        let has = |src: &str, dst: &str, ro: bool| {
            p.mounts.iter().any(|m| {
                matches!(m, MountStep::Bind { src: s, dst: d, readonly, .. }
                    if s == Path::new(src) && d == Path::new(dst) && *readonly == ro)
            })
        };
        assert!(
            has(
                "/etc/hostname-not-needed",
                "/.launcher.d/libs/libcuda.so.1",
                true
            ),
            "{p}"
        );
        assert!(has("/bin/ls", "/.launcher.d/bin/nvidia-smi", true), "{p}");
        assert!(has("/dev/null", "/dev/nvidia0", false), "{p}");
        // The image lacks the directories: they are virtual nodes (files as mount points).
        assert!(p
            .upper
            .iter()
            .any(|n| n.path == Path::new("/.launcher.d/libs/libcuda.so.1")
                && n.kind == crate::mount_points::NodeKind::File));
        let env: std::collections::HashMap<_, _> = p.env.iter().cloned().collect();
        assert_eq!(
            env["LD_LIBRARY_PATH"],
            "/.launcher.d/libs:/site/lib:/host/lib"
        );
        assert!(env["PATH"].starts_with("/.launcher.d/bin:"));
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "0");
        assert_eq!(env["SITE"], "user-wins", "--env has the last word");
        let text = p.to_string();
        assert!(text.contains("host integration:"), "{text}");
        assert!(text.contains("nvidia /etc/hostname-not-needed -> /.launcher.d/libs/libcuda.so.1"));
        assert!(text.contains("device /dev/null -> /dev/nvidia0"));
        assert!(text.contains("env NVIDIA_VISIBLE_DEVICES=0"));
    }

    #[test]
    fn device_outside_contain_uses_the_host_dev() {
        let img = image_with_libc();
        let p = build(injection("GLIBC_2.17"), false, &img).unwrap();
        assert!(!p
            .mounts
            .iter()
            .any(|m| matches!(m, MountStep::Bind { dst, .. } if dst == Path::new("/dev/nvidia0"))));
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("/dev is the host's without --contain and has no /dev/nvidia0")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn glibc_too_old_is_refused() {
        let img = image_with_libc();
        let err = build(injection("GLIBC_9.99"), false, &img)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("nvidia library /etc/hostname-not-needed needs GLIBC_9.99 but the image's glibc (/lib/x86_64-linux-gnu/libc.so.6) is GLIBC_2."),
            "{err}"
        );
    }

    #[test]
    fn image_without_glibc_warns() {
        let img = FakeImage::new(&[("/bin/sh", "")], &[]);
        let p = build(injection("GLIBC_9.99"), false, &img).unwrap();
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("the image has no glibc")),
            "{:?}",
            p.warnings
        );
    }
}
