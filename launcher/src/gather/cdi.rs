//! Container Device Interface specs: vendor-written descriptions of what a device needs
//! inside a container (device nodes, mounts, environment, hooks).
//!
//! Specs are JSON or YAML files in `/etc/cdi` and `/var/run/cdi` (site config: `cdi.spec_dirs`;
//! later directories win, as in the CDI specification). A device is named
//! `vendor/class=name` (`nvidia.com/gpu=0`). Hooks run as root in the container's
//! namespaces, which an unprivileged launch cannot do: they are skipped with a warning.

use crate::gather::injection::{HostBind, Injection};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub container_edits: Edits,
    /// The file it was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub container_edits: Edits,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    /// Path on the host (default: `path`).
    #[serde(default)]
    pub host_path: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
}

/// All readable specs of the given directories, in priority order (last wins). Files that
/// do not parse are reported in `warnings` and left out: one broken vendor file must not
/// stop a launch that does not use it.
pub fn load_dirs(dirs: &[PathBuf], warnings: &mut Vec<String>) -> Vec<Spec> {
    let mut specs = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "yaml" | "yml")
                )
            })
            .collect();
        files.sort();
        for f in files {
            match load_file(&f) {
                Ok(s) => specs.push(s),
                Err(e) => warnings.push(format!("CDI spec skipped: {e:#}")),
            }
        }
    }
    specs
}

pub fn load_file(path: &Path) -> Result<Spec> {
    let bytes = crate::host_file::read_host_file(path, 16 << 20)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
    let mut spec: Spec = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?
    } else {
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}", path.display()))?
    };
    if parse_kind(&spec.kind).is_none() {
        bail!(
            "{}: kind '{}' is not vendor/class",
            path.display(),
            spec.kind
        );
    }
    spec.file = path.to_path_buf();
    Ok(spec)
}

/// `vendor/class` with a dot in the vendor (`nvidia.com/gpu`).
fn parse_kind(kind: &str) -> Option<(&str, &str)> {
    let (vendor, class) = kind.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    (ok(vendor) && ok(class)).then_some((vendor, class))
}

/// Split `vendor/class=name`.
pub fn parse_device_name(full: &str) -> Result<(&str, &str)> {
    match full.split_once('=') {
        Some((kind, name)) if parse_kind(kind).is_some() && !name.is_empty() => Ok((kind, name)),
        _ => bail!("--device '{full}': expected a CDI device name vendor/class=name (e.g. nvidia.com/gpu=0)"),
    }
}

/// Whether any spec describes devices of `kind`.
pub fn has_kind(specs: &[Spec], kind: &str) -> bool {
    specs
        .iter()
        .any(|s| s.kind == kind && !s.devices.is_empty())
}

/// The devices of `kind` that `--gpu` takes: the spec's `all` device if there is one,
/// else every device.
pub fn gpu_devices(specs: &[Spec], kind: &str) -> Vec<String> {
    let names: Vec<&str> = specs
        .iter()
        .filter(|s| s.kind == kind)
        .flat_map(|s| s.devices.iter().map(|d| d.name.as_str()))
        .collect();
    if names.contains(&"all") {
        return vec![format!("{kind}=all")];
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let full = format!("{kind}={n}");
        if !out.contains(&full) {
            out.push(full);
        }
    }
    out
}

/// Apply the edits of the named devices (each spec's own edits once) to `inj`.
pub fn apply(specs: &[Spec], names: &[String], inj: &mut Injection) -> Result<()> {
    let mut spec_edits_done: Vec<&Path> = Vec::new();
    for full in names {
        let (kind, name) = parse_device_name(full)?;
        // Later specs win.
        let hit = specs.iter().rev().find_map(|s| {
            (s.kind == kind)
                .then(|| s.devices.iter().find(|d| d.name == name).map(|d| (s, d)))
                .flatten()
        });
        let Some((spec, device)) = hit else {
            let known: Vec<String> = specs
                .iter()
                .flat_map(|s| {
                    s.devices
                        .iter()
                        .map(move |d| format!("{}={}", s.kind, d.name))
                })
                .collect();
            bail!(
                "CDI device '{full}' not found in the CDI specs{}",
                if known.is_empty() {
                    " (none found: see cdi.spec_dirs in the site config)".to_string()
                } else {
                    format!(" (known: {})", known.join(", "))
                }
            );
        };
        inj.notes.push(format!(
            "CDI {full} from {} (cdiVersion {})",
            spec.file.display(),
            spec.cdi_version
        ));
        if !spec_edits_done.contains(&spec.file.as_path()) {
            spec_edits_done.push(&spec.file);
            apply_edits(&spec.container_edits, &spec.kind, &spec.file, inj);
        }
        apply_edits(&device.container_edits, full, &spec.file, inj);
    }
    Ok(())
}

fn apply_edits(e: &Edits, origin: &str, file: &Path, inj: &mut Injection) {
    for kv in &e.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => inj.env.push((k.to_string(), v.to_string())),
            _ => inj.warnings.push(format!(
                "CDI {origin} ({}): env entry '{kv}' is not NAME=VALUE: skipped",
                file.display()
            )),
        }
    }
    for d in &e.device_nodes {
        let host = d.host_path.clone().unwrap_or_else(|| d.path.clone());
        inj.devices.push(HostBind {
            host: host.into(),
            dst: d.path.clone().into(),
            readonly: false,
            origin: format!("CDI {origin}"),
        });
    }
    for m in &e.mounts {
        inj.mounts.push(HostBind {
            host: m.host_path.clone().into(),
            dst: m.container_path.clone().into(),
            readonly: m.options.iter().any(|o| o == "ro"),
            origin: format!("CDI {origin}"),
        });
    }
    for h in &e.hooks {
        inj.warnings.push(format!(
            "CDI {origin} ({}): {} hook '{}{}' skipped: hooks run as root in the container's namespaces, which an unprivileged launch cannot do",
            file.display(),
            h.hook_name,
            h.path,
            h.args
                .iter()
                .skip(1)
                .map(|a| format!(" {a}"))
                .collect::<String>()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
      "cdiVersion": "0.6.0",
      "kind": "vendor.example/gpu",
      "containerEdits": {"env": ["VENDOR_DRIVER=1"]},
      "devices": [
        {"name": "0", "containerEdits": {
          "env": ["VENDOR_VISIBLE=0"],
          "deviceNodes": [{"path": "/dev/vgpu0", "hostPath": "/tmp/dev/vgpu0", "type": "c", "major": 195, "minor": 0}],
          "mounts": [{"hostPath": "/opt/vendor/lib", "containerPath": "/usr/lib/vendor", "options": ["ro", "nosuid", "bind"]}],
          "hooks": [{"hookName": "createContainer", "path": "/usr/bin/vendor-ctk", "args": ["vendor-ctk", "hook", "update-ldcache"]}]
        }},
        {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/vgpu1"}]}}
      ],
      "annotations": {"unknown": "fields are ignored"}
    }"#;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, t) in files {
            std::fs::write(d.path().join(n), t).unwrap();
        }
        d
    }

    #[test]
    fn json_and_yaml_specs() {
        let yaml = "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n  - name: all\n    containerEdits:\n      deviceNodes:\n        - path: /dev/nvidia0\n";
        let d = dir_with(&[
            ("a.json", JSON),
            ("b.yaml", yaml),
            ("broken.json", "{"),
            ("ignored.txt", "x"),
        ]);
        let mut warnings = Vec::new();
        let specs = load_dirs(
            &[d.path().to_path_buf(), "/nonexistent".into()],
            &mut warnings,
        );
        assert_eq!(specs.len(), 2);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("broken.json"));
        assert!(has_kind(&specs, "nvidia.com/gpu"));
        assert_eq!(
            gpu_devices(&specs, "nvidia.com/gpu"),
            vec!["nvidia.com/gpu=all"]
        );
        assert_eq!(
            gpu_devices(&specs, "vendor.example/gpu"),
            vec!["vendor.example/gpu=0", "vendor.example/gpu=1"]
        );
    }

    #[test]
    fn applies_env_nodes_mounts_and_skips_hooks() {
        let d = dir_with(&[("a.json", JSON)]);
        let specs = load_dirs(&[d.path().to_path_buf()], &mut Vec::new());
        let mut inj = Injection::default();
        apply(
            &specs,
            &["vendor.example/gpu=0".into(), "vendor.example/gpu=1".into()],
            &mut inj,
        )
        .unwrap();
        assert_eq!(
            inj.env,
            vec![
                ("VENDOR_DRIVER".to_string(), "1".to_string()),
                ("VENDOR_VISIBLE".to_string(), "0".to_string())
            ],
            "spec-wide edits once, then the device's"
        );
        assert_eq!(inj.devices.len(), 2);
        assert_eq!(inj.devices[0].host, PathBuf::from("/tmp/dev/vgpu0"));
        assert_eq!(inj.devices[1].host, PathBuf::from("/dev/vgpu1"));
        assert!(inj.mounts[0].readonly);
        assert_eq!(inj.warnings.len(), 1);
        assert!(
            inj.warnings[0]
                .contains("createContainer hook '/usr/bin/vendor-ctk hook update-ldcache' skipped"),
            "{:?}",
            inj.warnings
        );
        let err = apply(&specs, &["vendor.example/gpu=7".into()], &mut inj)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not found") && err.contains("vendor.example/gpu=0"),
            "{err}"
        );
    }

    #[test]
    fn device_names() {
        assert_eq!(
            parse_device_name("nvidia.com/gpu=0").unwrap(),
            ("nvidia.com/gpu", "0")
        );
        for bad in [
            "gpu0",
            "nvidia.com/gpu",
            "nvidia.com/gpu=",
            "/gpu=0",
            "a b/c=d",
        ] {
            assert!(parse_device_name(bad).is_err(), "{bad}");
        }
    }
}
