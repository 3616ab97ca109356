//! The site's locked settings against what the user asked for: a one-line refusal, before any
//! discovery, when an option, a bind or a forwarded variable would change something the system
//! config locked (issue 20, finding 6; docs/admin.md "Locked settings").
//!
//! A refusal rather than a silent override: a user whose `--env LD_PRELOAD=…` is quietly
//! dropped debugs the wrong thing for an hour; one line naming the site file tells them whom to
//! ask. Later config files are checked when they are loaded (`SiteConfig::load`).

use crate::gather::site_config::{covers, SiteConfig};
use crate::options::LaunchOptions;
use crate::plan::environment::FORWARD_PREFIXES;
use anyhow::{bail, Result};

/// An error naming the first thing the user asked for that the site locked.
pub fn check(opts: &LaunchOptions, host_env: &[(String, String)], site: &SiteConfig) -> Result<()> {
    if site.locked.is_empty() {
        return Ok(());
    }
    let file = site.lock_file();
    // A default is locked only where the system file gives one: locking `mpi` to keep its
    // library lists says nothing about `--mpi`.
    let asked = &opts.asked_by;
    for (key, on, off, on_flags, asked_on, asked_off) in [
        (
            "gpu.default",
            site.gpu.default,
            "--no-gpu",
            asked.gpu.as_deref().unwrap_or("--gpu/--nv/--rocm"),
            opts.gpu.is_some(),
            opts.no_gpu,
        ),
        (
            "mpi.default",
            site.mpi.default,
            "--no-mpi",
            asked.mpi.as_deref().unwrap_or("--mpi"),
            opts.mpi.is_some(),
            opts.no_mpi,
        ),
    ] {
        if !site.is_locked(key) {
            continue;
        }
        let flag = &key[..3];
        match on {
            Some(true) if asked_off => {
                bail!("{off}: {flag} support is locked on by the site config {file} ({key})")
            }
            Some(false) if asked_on => {
                bail!("{on_flags}: {flag} support is locked off by the site config {file} ({key})")
            }
            _ => {}
        }
    }
    let vars = site.locked_vars();
    for (k, _) in &opts.env {
        if vars.contains(k) {
            let by = match asked.env.get(k) {
                Some(by) => by.clone(),
                None => format!("--env/--env-file {k}"),
            };
            bail!("{by}: the variable {k} is locked by the site config {file}");
        }
    }
    for (k, _) in host_env {
        let Some(name) = FORWARD_PREFIXES.iter().find_map(|p| k.strip_prefix(p)) else {
            continue;
        };
        let name = match name {
            "PREPEND_PATH" | "APPEND_PATH" => "PATH",
            n => n,
        };
        if vars.contains(name) {
            bail!("{k}: the variable {name} is locked by the site config {file}");
        }
    }
    // (A symlink in the image that leads a bind elsewhere is not followed here: the lock
    // guards against accidents, not against a user who means to get round it.)
    let locked = site.locked_destinations();
    for b in &opts.binds {
        if let Some(dst) = locked.iter().find(|d| covers(&b.dst, d)) {
            bail!(
                "bind {}:{}: it would cover the site's bind at {}, which is locked by the site \
                 config {file}",
                b.src.display(),
                b.dst.display(),
                dst.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::bind::BindSpec;
    use crate::options::{Action, GpuVendor};
    use std::path::Path;

    fn site(text: &str) -> SiteConfig {
        let path = Path::new("/etc/launcher/launcher.yaml");
        let mut s = SiteConfig::parse(text, path).unwrap();
        s.locked_in = Some(path.into());
        s
    }

    fn opts() -> LaunchOptions {
        LaunchOptions::new("/img.sif".into(), Action::Exec(vec!["true".into()]))
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        crate::env_list::from_pairs(pairs)
    }

    #[test]
    fn nothing_locked_nothing_refused() {
        let s = site("gpu: {default: true}\nenv: {unset: [LD_PRELOAD]}\n");
        let mut o = opts();
        o.no_gpu = true;
        o.env = env(&[("LD_PRELOAD", "x")]);
        check(&o, &env(&[("APPTAINERENV_LD_PRELOAD", "y")]), &s).unwrap();
    }

    #[test]
    fn a_locked_default_refuses_the_opposite_option() {
        let s = site("gpu: {default: true}\nmpi: {default: false}\nlocked: [gpu.default, mpi]\n");
        let mut o = opts();
        o.no_gpu = true;
        let err = check(&o, &[], &s).unwrap_err().to_string();
        assert_eq!(
            err,
            "--no-gpu: gpu support is locked on by the site config \
             /etc/launcher/launcher.yaml (gpu.default)"
        );
        let mut o = opts();
        o.mpi = Some(crate::options::MpiMode::On);
        let err = check(&o, &[], &s).unwrap_err().to_string();
        assert!(err.starts_with("--mpi: mpi support is locked off"), "{err}");
        // Locking a section locks a default only where the file gives one.
        let s = site("mpi: {libraries: [libmpi.so]}\nlocked: [mpi]\n");
        let mut o = opts();
        o.mpi = Some(crate::options::MpiMode::On);
        check(&o, &[], &s).unwrap();
        let s = site("gpu: {default: true}\nmpi: {default: false}\nlocked: [gpu.default, mpi]\n");
        // Asking for what is locked on is no conflict.
        let mut o = opts();
        o.gpu = Some(GpuVendor::Any);
        o.no_mpi = true;
        check(&o, &[], &s).unwrap();
    }

    #[test]
    fn locked_variables_refuse_env_and_forwarded_variables() {
        let s = site(
            "env:\n  set: {OMPI_MCA_btl: '^openib', FREE: x}\n  prepend: {PATH: /site/bin}\n  \
             unset: [LD_PRELOAD]\nlocked: [env.unset, env.set.OMPI_MCA_btl, env.prepend]\n",
        );
        assert_eq!(
            s.locked_vars().into_iter().collect::<Vec<_>>(),
            ["LD_PRELOAD", "OMPI_MCA_btl", "PATH"]
        );
        let mut o = opts();
        o.env = env(&[("FREE", "mine"), ("LD_PRELOAD", "/tmp/x.so")]);
        let err = check(&o, &[], &s).unwrap_err().to_string();
        assert_eq!(
            err,
            "--env/--env-file LD_PRELOAD: the variable LD_PRELOAD is locked by the site config \
             /etc/launcher/launcher.yaml"
        );
        let err = check(&opts(), &env(&[("SINGULARITYENV_OMPI_MCA_btl", "tcp")]), &s)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("SINGULARITYENV_OMPI_MCA_btl: the variable OMPI_MCA_btl is locked"),
            "{err}"
        );
        let err = check(&opts(), &env(&[("APPTAINERENV_PREPEND_PATH", "/x")]), &s)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the variable PATH is locked"), "{err}");
        check(
            &opts(),
            &env(&[("APPTAINERENV_FREE", "1"), ("LD_PRELOAD", "host")]),
            &s,
        )
        .unwrap();
    }

    #[test]
    fn a_refusal_names_the_option_or_variable_that_asked() {
        let s = site(
            "gpu: {default: false}\nmpi: {default: false}\nenv: {unset: [LD_PRELOAD]}\n\
             locked: [gpu, mpi, env]\n",
        );
        for by in ["--nv", "--rocm", "APPTAINER_NV", "--gpu, SINGULARITY_ROCM"] {
            let mut o = opts();
            o.gpu = Some(GpuVendor::Any);
            o.asked_by.gpu = Some(by.into());
            let err = check(&o, &[], &s).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "{by}: gpu support is locked off by the site config \
                     /etc/launcher/launcher.yaml (gpu.default)"
                )
            );
        }
        let mut o = opts();
        o.mpi = Some(crate::options::MpiMode::Force);
        o.asked_by.mpi = Some("--mpi=force".into());
        let err = check(&o, &[], &s).unwrap_err().to_string();
        assert!(
            err.starts_with("--mpi=force: mpi support is locked off"),
            "{err}"
        );
        for by in [
            "--env LD_PRELOAD",
            "--env-file /home/u/vars.env (LD_PRELOAD)",
            "APPTAINER_ENV_FILE=/home/u/vars.env (LD_PRELOAD)",
        ] {
            let mut o = opts();
            o.env = env(&[("FREE", "1"), ("LD_PRELOAD", "/tmp/x.so")]);
            o.asked_by.env.insert("LD_PRELOAD".into(), by.into());
            let err = check(&o, &[], &s).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "{by}: the variable LD_PRELOAD is locked by the site config \
                     /etc/launcher/launcher.yaml"
                )
            );
        }
    }

    #[test]
    fn a_user_bind_may_not_cover_a_locked_site_bind() {
        let s = site("binds: ['/site/ca:/etc/ssl/certs:ro']\ndevices: [/dev/infiniband]\nlocked: [binds, devices]\n");
        let bind = |src: &str, dst: &str| BindSpec {
            src: src.into(),
            dst: dst.into(),
            readonly: false,
        };
        for dst in [
            "/etc/ssl/certs",
            "/etc/ssl",
            "/etc",
            "/dev/infiniband",
            "/",
            "/etc/ssl/certs/",
            "/etc/x/../ssl",
            "/etc/./ssl",
        ] {
            let mut o = opts();
            o.binds = vec![bind("/home/u/x", dst)];
            let err = check(&o, &[], &s).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("bind /home/u/x:{dst}: it would cover")),
                "{err}"
            );
        }
        // Beside or inside a locked bind is fine: the site's bind still shows.
        for dst in ["/etc/ssl/private", "/etc/ssl/certs/mine.pem", "/opt"] {
            let mut o = opts();
            o.binds = vec![bind("/home/u/x", dst)];
            check(&o, &[], &s).unwrap();
        }
    }
}
