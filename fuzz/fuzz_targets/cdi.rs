//! CDI specs: the input is a spec directory's one file, read as JSON (`spec.json`) and as
//! YAML (`spec.yaml`) by the launcher's `cdi::load_dirs`, then used as `gpu::gather` uses
//! it: the `--gpu` device choice (`has_kind`, `gpu_devices`), `cdi::apply` of those devices,
//! of each device by name (as `--device` would) and of a name no spec has; then a plan
//! built with the resulting injection (device nodes, mounts, environment).
#![no_main]

use launcher_runtime::gather::cdi;
use launcher_runtime::gather::injection::Injection;
use launcher_runtime::gather::site_config::SiteConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = launcher_fuzz::scratch().join("cdi");
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("spec.json"), data).is_err()
        || std::fs::write(dir.join("spec.yaml"), data).is_err()
    {
        std::process::abort();
    }
    let mut warnings = Vec::new();
    let specs = cdi::load_dirs(&[dir], &mut warnings);
    if specs.is_empty() {
        return;
    }
    let mut names: Vec<String> = Vec::new();
    for s in &specs {
        if cdi::has_kind(&specs, &s.kind) {
            names.extend(cdi::gpu_devices(&specs, &s.kind));
        }
        for d in &s.devices {
            names.push(format!("{}={}", s.kind, d.name));
        }
    }
    let mut inj = Injection::default();
    if cdi::apply(&specs, &names, &mut inj).is_err() {
        // One bad device name fails the whole call; the others still get their edits run.
        for n in &names {
            let _ = cdi::apply(&specs, std::slice::from_ref(n), &mut inj);
        }
    }
    let _ = cdi::apply(&specs, &["fuzz.example/none=0".to_string()], &mut inj);
    launcher_fuzz::plan_both(SiteConfig::default(), inj);
});
