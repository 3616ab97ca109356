//! `--gpu` / `--nv` / `--rocm` / `--device`: find the host's GPU stack before planning.
//!
//! With CDI specs for the vendor's kind (`nvidia.com/gpu`, `amd.com/gpu`), their edits are
//! used. Otherwise the built-in lists below (or the site config's) are resolved through the
//! host's ld.so cache, and the device nodes are taken from /dev (site config `host.dev_dir`).
//! With `--contain`, only the GPUs named by CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES /
//! ROCR_VISIBLE_DEVICES get their nodes.

use crate::gather::cdi;
use crate::gather::host::HostInfo;
use crate::gather::injection::{HostBind, Injection};
use crate::gather::site_config::SiteConfig;
use crate::gather::site_config::VendorConfig;
use crate::linker::ld_cache::LdCache;
use crate::options::{GpuVendor, LaunchOptions};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// NVIDIA driver libraries (user space of the kernel driver, so they must come from the host).
pub const NVIDIA_LIBRARIES: &[&str] = &[
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so",
    "libnvidia-opencl.so",
    "libnvidia-allocator.so",
    "libnvidia-cfg.so",
    "libnvidia-compiler.so",
    "libnvidia-fatbinaryloader.so",
    "libnvidia-opticalflow.so",
    "libnvidia-encode.so",
    "libnvcuvid.so",
    "libnvidia-nscq.so",
    "libnvidia-pkcs11.so",
    "libnvidia-pkcs11-openssl3.so",
    "libnvidia-eglcore.so",
    "libnvidia-glcore.so",
    "libnvidia-glsi.so",
    "libnvidia-glvkspirv.so",
    "libnvidia-rtcore.so",
    "libnvidia-tls.so",
    "libnvoptix.so",
    "libGLX_nvidia.so",
    "libEGL_nvidia.so",
    "libGLESv2_nvidia.so",
    "libGLESv1_CM_nvidia.so",
];
pub const NVIDIA_BINARIES: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];
/// AMD ROCm libraries that talk to the kernel driver (the rest of ROCm belongs in the image).
pub const ROCM_LIBRARIES: &[&str] = &[
    "libamdhip64.so",
    "libhsa-runtime64.so",
    "libhsakmt.so",
    "libamd_comgr.so",
    "librocm_smi64.so",
    "libdrm_amdgpu.so",
    "libdrm.so",
];
pub const ROCM_BINARIES: &[&str] = &["rocm-smi", "rocminfo"];
/// Where programs are looked for, before the caller's PATH. `/usr/local/nvidia/bin` is where
/// driver containers and cloud GPU nodes put nvidia-smi (seen on an H200 node, driver 580).
const DEFAULT_BINARY_PATHS: &[&str] = &[
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
    "/usr/local/bin",
    "/usr/local/nvidia/bin",
    "/opt/rocm/bin",
];
/// NVIDIA nodes every GPU needs besides its own /dev/nvidiaN.
const NVIDIA_CONTROL_NODES: &[&str] = &[
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
    "nvidia-caps",
];
/// AMD render nodes start at this minor: GPU N is /dev/dri/renderD(128+N).
const RENDER_MINOR_BASE: u32 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vendor {
    Nvidia,
    Amd,
}

impl Vendor {
    fn cdi_kind(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia.com/gpu",
            Vendor::Amd => "amd.com/gpu",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Amd => "rocm",
        }
    }
}

/// Whether GPU support is on for this launch.
pub fn requested(opts: &LaunchOptions, site: &SiteConfig) -> Option<GpuVendor> {
    if opts.no_gpu {
        return None;
    }
    opts.gpu
        .or_else(|| (site.gpu.default == Some(true)).then_some(GpuVendor::Any))
}

/// Everything `--gpu` and `--device` bring in, read from the host.
pub fn gather(opts: &LaunchOptions, host: &HostInfo, site: &SiteConfig) -> Result<Injection> {
    let mut inj = Injection::default();
    let gpu = requested(opts, site);
    if gpu.is_none() && opts.devices.is_empty() {
        return Ok(inj);
    }
    let specs = cdi::load_dirs(&site.cdi_dirs(), &mut inj.warnings);
    let mut names: Vec<String> = opts.devices.clone();
    let Some(gpu) = gpu else {
        cdi::apply(&specs, &names, &mut inj)?;
        return Ok(inj);
    };
    let vendors: &[Vendor] = match gpu {
        GpuVendor::Any => &[Vendor::Nvidia, Vendor::Amd],
        GpuVendor::Nvidia => &[Vendor::Nvidia],
        GpuVendor::Amd => &[Vendor::Amd],
    };
    let mut builtin: Vec<Vendor> = Vec::new();
    for v in vendors {
        if cdi::has_kind(&specs, v.cdi_kind()) {
            names.extend(cdi::gpu_devices(&specs, v.cdi_kind()));
        } else {
            builtin.push(*v);
        }
    }
    cdi::apply(&specs, &names, &mut inj)?;
    if !builtin.is_empty() {
        let cache_path = site.ld_so_cache();
        let cache = match LdCache::read(&cache_path) {
            Ok(c) => c,
            Err(e) => {
                inj.warnings.push(format!(
                    "{e:#}: GPU libraries are looked up in the site config's library_paths only"
                ));
                LdCache::default()
            }
        };
        let dev_dir = site.dev_dir();
        for v in builtin {
            // libdrm, in ROCm's list, is on most hosts (Mesa needs it): under `--gpu` it
            // must not make an NVIDIA or GPU-less node look like an AMD one. The ROCm
            // compute node /dev/kfd is what an AMD GPU node has.
            if v == Vendor::Amd && gpu == GpuVendor::Any && !dev_dir.join("kfd").exists() {
                inj.notes.push(format!(
                    "{}: no {} on this host",
                    v.name(),
                    dev_dir.join("kfd").display()
                ));
                continue;
            }
            let cfg = match v {
                Vendor::Nvidia => &site.gpu.nvidia,
                Vendor::Amd => &site.gpu.rocm,
            };
            let found = add_vendor(&mut inj, v, cfg, &cache, &dev_dir, opts.contain, &host.env)?;
            if !found && gpu != GpuVendor::Any {
                inj.warnings.push(format!(
                    "--{}: no {} driver libraries found on this host (ld.so cache {})",
                    if v == Vendor::Nvidia { "nv" } else { "rocm" },
                    v.name(),
                    cache_path.display()
                ));
            }
        }
    }
    if gpu == GpuVendor::Any && inj.is_empty() {
        inj.warnings.push(
            "--gpu: no GPU found on this host (no CDI spec, no NVIDIA or ROCm driver libraries)"
                .into(),
        );
    }
    Ok(inj)
}

/// The built-in way for one vendor; false when the host has none of its libraries.
fn add_vendor(
    inj: &mut Injection,
    v: Vendor,
    cfg: &VendorConfig,
    cache: &LdCache,
    dev_dir: &Path,
    contain: bool,
    env: &[(String, String)],
) -> Result<bool> {
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (libs, bins) = match v {
        Vendor::Nvidia => (owned(NVIDIA_LIBRARIES), owned(NVIDIA_BINARIES)),
        Vendor::Amd => (owned(ROCM_LIBRARIES), owned(ROCM_BINARIES)),
    };
    let libs = cfg.libraries.clone().unwrap_or(libs);
    let bins = cfg.binaries.clone().unwrap_or(bins);
    let before = inj.libs.len();
    let missing = inj.add_libraries(v.name(), &libs, &cfg.library_paths, cache)?;
    if inj.libs.len() == before {
        inj.notes
            .push(format!("{}: no driver libraries on this host", v.name()));
        return Ok(false);
    }
    if !missing.is_empty() {
        inj.notes.push(format!(
            "{}: not on this host: {}",
            v.name(),
            missing.join(" ")
        ));
    }
    let lookup = |k: &str| crate::env_list::get(env, k);
    let bin_dirs = cfg
        .binary_paths
        .clone()
        .unwrap_or_else(|| default_binary_dirs(lookup("PATH")));
    let missing = inj.add_binaries(v.name(), &bins, &bin_dirs)?;
    if !missing.is_empty() {
        inj.notes.push(format!(
            "{}: programs not on this host: {}",
            v.name(),
            missing.join(" ")
        ));
    }
    let nodes = match v {
        Vendor::Nvidia => {
            let visible = if contain {
                visible(lookup("NVIDIA_VISIBLE_DEVICES").or(lookup("CUDA_VISIBLE_DEVICES")))
            } else {
                None
            };
            nvidia_nodes(dev_dir, visible.as_deref())
        }
        Vendor::Amd => {
            let visible = if contain {
                visible(lookup("ROCR_VISIBLE_DEVICES"))
            } else {
                None
            };
            amd_nodes(dev_dir, visible.as_deref())
        }
    };
    for rel in nodes {
        inj.devices.push(HostBind {
            host: dev_dir.join(&rel),
            dst: Path::new("/dev").join(&rel),
            readonly: false,
            origin: v.name().into(),
        });
    }
    Ok(true)
}

/// The built-in program directories, then the absolute directories of the caller's PATH (as
/// `which nvidia-smi` would find it), each once.
fn default_binary_dirs(path: Option<&str>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = DEFAULT_BINARY_PATHS.iter().map(PathBuf::from).collect();
    for d in path.unwrap_or("").split(':') {
        let d = PathBuf::from(d);
        if d.is_absolute() && !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// GPU indices from a *_VISIBLE_DEVICES value; None means all (unset, `all`, UUIDs).
fn visible(value: Option<&str>) -> Option<Vec<u32>> {
    let value = value?.trim();
    if value.is_empty() || value == "all" {
        return None;
    }
    if value == "none" || value == "void" {
        return Some(Vec::new());
    }
    value
        .split(',')
        .map(|s| s.trim().parse::<u32>().ok())
        .collect()
}

/// /dev entries (relative) for NVIDIA: the GPUs asked for plus the control nodes.
fn nvidia_nodes(dev_dir: &Path, visible: Option<&[u32]>) -> Vec<PathBuf> {
    let mut gpus: Vec<(u32, String)> = std::fs::read_dir(dev_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| Some((n.strip_prefix("nvidia")?.parse::<u32>().ok()?, n)))
                .collect()
        })
        .unwrap_or_default();
    gpus.sort();
    let mut out: Vec<PathBuf> = gpus
        .into_iter()
        .filter(|(i, _)| visible.is_none_or(|v| v.contains(i)))
        .map(|(_, n)| PathBuf::from(n))
        .collect();
    if out.is_empty() && visible.is_some_and(|v| v.is_empty()) {
        return out;
    }
    for n in NVIDIA_CONTROL_NODES {
        if dev_dir.join(n).exists() {
            out.push(PathBuf::from(n));
        }
    }
    out
}

/// /dev entries (relative) for AMD: /dev/kfd and the render nodes of the GPUs asked for.
fn amd_nodes(dev_dir: &Path, visible: Option<&[u32]>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if dev_dir.join("kfd").exists() {
        out.push(PathBuf::from("kfd"));
    }
    match visible {
        None => {
            if dev_dir.join("dri").is_dir() {
                out.push(PathBuf::from("dri"));
            }
        }
        Some(v) => {
            for i in v {
                let rel = PathBuf::from(format!("dri/renderD{}", RENDER_MINOR_BASE + i));
                if dev_dir.join(&rel).exists() {
                    out.push(rel);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_dirs_add_the_callers_path() {
        let dirs = default_binary_dirs(Some("/opt/x/bin:relative:/usr/bin::/home/u/bin"));
        assert_eq!(
            dirs[..DEFAULT_BINARY_PATHS.len()],
            default_binary_dirs(None)[..]
        );
        assert!(dirs.contains(&PathBuf::from("/usr/local/nvidia/bin")));
        let extra: Vec<_> = dirs[DEFAULT_BINARY_PATHS.len()..].to_vec();
        assert_eq!(
            extra,
            [PathBuf::from("/opt/x/bin"), PathBuf::from("/home/u/bin")]
        );
    }

    #[test]
    fn visible_values() {
        assert_eq!(visible(None), None);
        assert_eq!(visible(Some("all")), None);
        assert_eq!(visible(Some("0,2")), Some(vec![0, 2]));
        assert_eq!(visible(Some("none")), Some(vec![]));
        assert_eq!(visible(Some("GPU-8a9c3f2e-1111")), None, "UUIDs: all nodes");
    }

    #[test]
    fn device_node_selection() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        std::fs::create_dir_all(d.join("dri")).unwrap();
        std::fs::create_dir_all(d.join("nvidia-caps")).unwrap();
        for n in [
            "nvidia0",
            "nvidia1",
            "nvidia10",
            "nvidiactl",
            "nvidia-uvm",
            "kfd",
            "dri/renderD128",
            "dri/renderD129",
        ] {
            std::fs::write(d.join(n), "").unwrap();
        }
        let names = |v: Vec<PathBuf>| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(nvidia_nodes(&d, None)),
            vec![
                "nvidia0",
                "nvidia1",
                "nvidia10",
                "nvidiactl",
                "nvidia-uvm",
                "nvidia-caps"
            ]
        );
        assert_eq!(
            names(nvidia_nodes(&d, Some(&[1]))),
            vec!["nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps"]
        );
        assert!(nvidia_nodes(&d, Some(&[])).is_empty());
        assert_eq!(names(amd_nodes(&d, None)), vec!["kfd", "dri"]);
        assert_eq!(
            names(amd_nodes(&d, Some(&[1]))),
            vec!["kfd", "dri/renderD129"]
        );
    }
}
