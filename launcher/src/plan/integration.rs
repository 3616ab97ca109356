//! Host integration in the plan: the site config's binds, devices and environment edits, and
//! the gathered injection (GPU, CDI, MPI) as mount steps and environment edits, after the
//! glibc guard has accepted every injected file.

use crate::gather::injection::{HostBind, HostFile, Injection, BIN_DIR, LIB_DIR};
use crate::gather::Gathered;
use crate::image::view::ImageView;
use crate::linker::glibc_guard::{self, GlibcNeeds};
use crate::options::clean_abs;
use crate::options::LaunchOptions;
use crate::plan::environment::EnvEdit;
use crate::plan::MountStep;
use anyhow::{bail, Result};
use std::path::Path;

/// Plan entries for the site config and the injection, placed before the user's binds.
/// `notes` receives the lines --debug shows under "host integration".
pub fn add_mounts(
    opts: &LaunchOptions,
    facts: &Gathered,
    image: &dyn ImageView,
    mounts: &mut Vec<MountStep>,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let (site, inj, paths) = (&facts.site, &facts.injection, &facts.paths);
    notes.extend(inj.notes.iter().cloned());
    warnings.extend(inj.warnings.iter().cloned());
    // Site binds: a source missing on this node is skipped, not fatal (a login node may
    // lack /scratch).
    for spec in &site.binds {
        for b in crate::options::bind::parse_bind_list(spec)? {
            let Some(src) = paths.get(&b.src)?.map(|f| f.canonical.clone()) else {
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
    let site_devices = site.devices.iter().map(|d| HostBind {
        host: d.clone(),
        dst: d.clone(),
        readonly: false,
        origin: "site config".into(),
    });
    let mut unbound: Vec<String> = Vec::new();
    for d in site_devices.chain(inj.devices.iter().cloned()) {
        let Some(found) = paths.get(&d.host)? else {
            warnings.push(format!(
                "device {} ({}): not found on this host: skipped",
                d.host.display(),
                d.origin
            ));
            continue;
        };
        let dst = clean_abs(&d.dst)?;
        // Without --contain /dev is the host's own (rbind): its nodes are there already, and a
        // node it lacks cannot be added (that would create a file in the host's /dev).
        if !opts.contain && dst.starts_with("/dev") {
            if d.host == dst {
                notes.push(format!("device {} (host /dev)", dst.display()));
                continue;
            }
            if paths.get(&dst)?.is_none() {
                unbound.push(dst.display().to_string());
                continue;
            }
        }
        notes.push(format!("device {} -> {}", d.host.display(), dst.display()));
        mounts.push(MountStep::Bind {
            recursive: found.is_dir,
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
        let Some(found) = paths.get(&m.host)? else {
            warnings.push(format!(
                "mount {} ({}): not found on this host: skipped",
                m.host.display(),
                m.origin
            ));
            continue;
        };
        let src = found.canonical.clone();
        let dst = clean_abs(&m.dst)?;
        notes.push(format!(
            "{} mount {} -> {}",
            m.origin,
            src.display(),
            dst.display()
        ));
        mounts.push(MountStep::Bind {
            recursive: found.is_dir,
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
/// user's `--env` again (the user has the last word, except on the variables the site locked,
/// which `policy` has refused to the user and which are edited last), then the injected
/// directories first on LD_LIBRARY_PATH and PATH.
pub fn env_edits(opts: &LaunchOptions, facts: &Gathered) -> Vec<EnvEdit> {
    let locked = facts.site.locked_vars();
    let site_edits = |locked_ones: bool| {
        let ours = |k: &String| locked.contains(k) == locked_ones;
        let site = &facts.site.env;
        let mut edits: Vec<EnvEdit> = Vec::new();
        edits.extend(
            site.unset
                .iter()
                .filter(|k| ours(k))
                .map(|k| EnvEdit::Unset(k.clone())),
        );
        for (k, v) in site.set.iter().filter(|(k, _)| ours(k)) {
            edits.push(EnvEdit::Set(k.clone(), v.clone()));
        }
        for (k, v) in site.prepend.iter().filter(|(k, _)| ours(k)) {
            edits.push(EnvEdit::Prepend(k.clone(), v.clone()));
        }
        for (k, v) in site.append.iter().filter(|(k, _)| ours(k)) {
            edits.push(EnvEdit::Append(k.clone(), v.clone()));
        }
        edits
    };
    let mut edits = site_edits(false);
    let inj = &facts.injection;
    for (k, v) in inj.env.iter().chain(&opts.env) {
        edits.push(EnvEdit::Set(k.clone(), v.clone()));
    }
    edits.extend(site_edits(true));
    if !inj.libs.is_empty() {
        edits.push(EnvEdit::Prepend("LD_LIBRARY_PATH".into(), LIB_DIR.into()));
    }
    if !inj.bins.is_empty() {
        edits.push(EnvEdit::Prepend("PATH".into(), BIN_DIR.into()));
    }
    edits
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::gather::host::HostInfo;
    use crate::gather::site_config::SiteConfig;
    use crate::image::view::fake::FakeImage;
    use crate::linker::glibc_guard::GlibcVersion;
    use crate::options::Action;
    use crate::plan::{self, Plan};

    const HOST_LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    fn facts(inj: Injection) -> Gathered {
        let host = HostInfo {
            uid: 4242,
            gid: 4242,
            user: "alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/sh".into(),
            gecos: String::new(),
            cwd: "/home/alice".into(),
            env: vec![("LD_LIBRARY_PATH".into(), "/host/lib".into())],
            group_names: vec![],
            existing_etc: vec![],
            pmix_dirs: vec![],
        };
        let site = SiteConfig::parse(
            "env:\n  set: {SITE: 'yes'}\n  prepend: {LD_LIBRARY_PATH: /site/lib}\n  unset: [LD_PRELOAD]\n",
            Path::new("site.yaml"),
        )
        .unwrap();
        let paths = crate::gather::paths::typical_host(&[
            (
                "/etc/hostname-not-needed",
                Some(("/etc/hostname-not-needed", false)),
            ),
            ("/bin/ls", Some(("/bin/ls", false))),
            ("/dev/nvidia0", None),
        ]);
        Gathered {
            host,
            site,
            injection: inj,
            paths,
            overlays: Vec::new(),
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
        plan::build(&o, &facts(inj), img)
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
                && n.kind == crate::plan::mount_points::NodeKind::File));
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
