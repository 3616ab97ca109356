//! End-to-end: --nv/--gpu with a fake GPU stack made of real parts (tests/setup-gpu.sh),
//! CDI devices, the glibc guard, and the site config (LAUNCHER_CONFIG).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn image() -> String {
    fixture("gpu/glibc.sqfs")
}

fn gpu_dir() -> PathBuf {
    setup().fixtures.join("gpu")
}

/// A real ld.so.cache listing the fake driver directory (and the host's trusted
/// directories), made with ldconfig now that the fixtures are at their final path.
fn ld_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| ldconfig_cache("gpu", &gpu_dir().join("lib")))
}

/// A site config file (readable by the test user) for the fake stack, plus `extra` YAML.
fn config(name: &str, extra: &str) -> String {
    let s = setup();
    let empty = s.scratch.join("no-cdi");
    std::fs::create_dir_all(&empty).unwrap();
    let text = format!(
        "# test site config\nhost:\n  ld_so_cache: {}\n  dev_dir: {}\ngpu:\n  nvidia:\n    binary_paths: [{}]\n{extra}",
        ld_cache().display(),
        gpu_dir().join("dev").display(),
        gpu_dir().join("bin").display(),
    );
    let text = if extra.contains("cdi:") {
        text
    } else {
        format!("{text}cdi:\n  spec_dirs: [{}]\n", empty.display())
    };
    let path = s.scratch.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn uid_line() -> String {
    format!("uid {}", setup().uid)
}

#[test]
fn nv_app_dlopens_the_injected_libcuda() {
    let out = launcher(&["exec", "--nv", &image(), "/usr/bin/gpu-app"])
        .env("LAUNCHER_CONFIG", &config("nv", ""))
        .run();
    assert_eq!(
        out.ok().stdout,
        format!(
            "driver version 12040\nloaded from /.launcher.d/libs/libcuda.so.1\n{}\n",
            uid_line()
        ),
        "{out:?}"
    );
    // Without --contain /dev is the host's: the test's fake nodes cannot be added to it.
    assert!(
        out.stderr.contains("/dev is the host's without --contain"),
        "{out:?}"
    );
}

#[test]
fn without_gpu_nothing_is_injected() {
    let out = launcher(&["exec", &image(), "/usr/bin/gpu-app"])
        .env("LAUNCHER_CONFIG", &config("nv-off", ""))
        .run();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("libcuda.so.1"), "{out:?}");
    // The site config may turn it on by default; --no-gpu turns it off again.
    let on = config("nv-default", "  default: true\n");
    let out = launcher(&["exec", &image(), "/usr/bin/gpu-app"])
        .env("LAUNCHER_CONFIG", &on)
        .run();
    assert!(
        out.ok().stdout.starts_with("driver version 12040"),
        "{out:?}"
    );
    let out = launcher(&["exec", "--no-gpu", &image(), "/usr/bin/gpu-app"])
        .env("LAUNCHER_CONFIG", &on)
        .run();
    assert_eq!(out.code, 1, "{out:?}");
}

#[test]
fn host_nvidia_smi_runs_with_the_injected_nvml() {
    let out = launcher(&["exec", "--gpu", &image(), "nvidia-smi"])
        .env("LAUNCHER_CONFIG", &config("smi", ""))
        .run();
    assert_eq!(
        out.ok().stdout,
        "fake nvidia-smi: driver 550.00-fake\n",
        "{out:?}"
    );
}

#[test]
fn contain_binds_the_visible_gpus_only() {
    let out = launcher(&[
        "exec",
        "--nv",
        "--contain",
        &image(),
        "/bin/sh",
        "-c",
        "for d in nvidia0 nvidia1 nvidiactl nvidia-uvm; do if [ -c /dev/$d ]; then stat -c \"$d %t %T\" /dev/$d; else echo \"$d absent\"; fi; done; id -u",
    ])
    .env("LAUNCHER_CONFIG", &config("visible", ""))
    .env("CUDA_VISIBLE_DEVICES", "1")
    .run();
    assert_eq!(
        out.ok().stdout,
        format!(
            "nvidia0 absent\nnvidia1 c3 1\nnvidiactl c3 ff\nnvidia-uvm eb 0\n{}\n",
            setup().uid
        ),
        "{out:?}"
    );
}

#[test]
fn debug_lists_every_library_device_and_variable() {
    let out = launcher(&[
        "--debug",
        "exec",
        "--nv",
        "--contain",
        &image(),
        "/bin/true",
    ])
    .env("LAUNCHER_CONFIG", &config("debug", ""))
    .run();
    out.ok();
    let lib = gpu_dir().join("lib");
    for want in [
        format!(
            "nvidia {}/libcuda.so.550.00 -> /.launcher.d/libs/libcuda.so.1",
            lib.display()
        ),
        format!(
            "nvidia {}/libnvidia-ml.so.550.00 -> /.launcher.d/libs/libnvidia-ml.so.1",
            lib.display()
        ),
        format!(
            "nvidia {}/nvidia-smi -> /.launcher.d/bin/nvidia-smi",
            gpu_dir().join("bin").display()
        ),
        format!(
            "device {}/nvidia0 -> /dev/nvidia0",
            gpu_dir().join("dev").display()
        ),
        "LD_LIBRARY_PATH=/.launcher.d/libs".to_string(),
        "PATH=/.launcher.d/bin:".to_string(),
    ] {
        assert!(out.stderr.contains(&want), "missing '{want}' in {out:?}");
    }
}

#[test]
fn glibc_guard_refuses_a_library_too_new_for_the_image() {
    let cfg = config(
        "future",
        "    libraries: [libcuda.so, libnvidia-future.so]\n",
    );
    let out = launcher(&["exec", "--nv", &image(), "/usr/bin/gpu-app"])
        .env("LAUNCHER_CONFIG", &cfg)
        .run();
    assert_eq!(out.code, 255, "{out:?}");
    let want = format!(
        "launcher: error: nvidia library {}/libnvidia-future.so.1 needs GLIBC_2.99 but the image's glibc (/lib/x86_64-linux-gnu/libc.so.6) is GLIBC_2.",
        gpu_dir().join("lib").display()
    );
    assert!(out.stderr.starts_with(&want), "{out:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn image_without_glibc_gets_a_warning() {
    let out = launcher(&["exec", "--nv", &fixture("busybox-gzip.sqfs"), "/bin/true"])
        .env("LAUNCHER_CONFIG", &config("musl", ""))
        .run();
    assert!(
        out.ok().stderr.contains("the image has no glibc"),
        "{out:?}"
    );
}

#[test]
fn cdi_device_applies_env_nodes_and_mounts_and_skips_hooks() {
    let cfg = config(
        "cdi",
        &format!("cdi:\n  spec_dirs: [{}]\n", gpu_dir().join("cdi").display()),
    );
    let out = launcher(&[
        "exec",
        "--contain",
        "--device",
        "vendor.example/gpu=0",
        &image(),
        "/bin/sh",
        "-c",
        "echo $VENDOR_DRIVER $VENDOR_VISIBLE_DEVICES; stat -c '%F %t %T' /dev/vgpu0; cat /opt/vendor/README; touch /opt/vendor/x 2>/dev/null || echo ro; id -u",
    ])
    .env("LAUNCHER_CONFIG", &cfg)
    .run();
    assert_eq!(
        out.ok().stdout,
        format!(
            "fake-1.0 0\ncharacter special file f0 0\nvendor data\nro\n{}\n",
            setup().uid
        ),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("createContainer hook '/usr/bin/vendor-ctk hook update-ldcache' skipped"),
        "{out:?}"
    );
    let out = launcher(&[
        "exec",
        "--device",
        "vendor.example/gpu=9",
        &image(),
        "/bin/true",
    ])
    .env("LAUNCHER_CONFIG", &cfg)
    .run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr
            .contains("CDI device 'vendor.example/gpu=9' not found in the CDI specs (known: vendor.example/gpu=0)"),
        "{out:?}"
    );
}

#[test]
fn site_config_binds_and_environment() {
    let share = gpu_dir().join("vendor-share");
    let cfg = config(
        "site",
        &format!(
            "binds: ['{}:/site/share:ro', /nonexistent/site/dir]\nenv:\n  set: {{SITE_NAME: testsite}}\n  prepend: {{PATH: /site/bin}}\n  unset: [DROP_ME]\n",
            share.display()
        ),
    );
    let out = launcher(&[
        "exec",
        &fixture("busybox-gzip.sqfs"),
        "/bin/sh",
        "-c",
        "cat /site/share/README; echo $SITE_NAME ${DROP_ME:-unset}; echo $PATH",
    ])
    .env("LAUNCHER_CONFIG", &cfg)
    .env("DROP_ME", "1")
    .run();
    assert!(
        out.ok()
            .stdout
            .starts_with("vendor data\ntestsite unset\n/site/bin:/"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("'/nonexistent/site/dir' does not exist on this host: skipped"),
        "{out:?}"
    );
}

#[test]
fn site_config_errors_name_file_line_and_key() {
    let s = setup();
    for (name, text, want) in [
        (
            "typo",
            "binds: []\ngpu:\n  nvidai: {}\n",
            ":3: unknown key 'gpu.nvidai'",
        ),
        (
            "type",
            "gpu:\n  default: sometimes\n",
            ":2: key 'gpu.default': invalid type",
        ),
    ] {
        let path = s.scratch.join(format!("bad-{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        let out = launcher(&["exec", &fixture("busybox-gzip.sqfs"), "/bin/true"])
            .env("LAUNCHER_CONFIG", &path.display().to_string())
            .run();
        assert_eq!(out.code, 255, "{out:?}");
        let want = format!("launcher: error: {}{want}", path.display());
        assert!(out.stderr.starts_with(&want), "want '{want}' in {out:?}");
    }
}

/// A site config for the fake ROCm stack (gpu/rocm): its own ld.so.cache, /dev with kfd and
/// dri/, rocm-smi's directory, no CDI spec.
fn rocm_config(name: &str) -> String {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    let cache = CACHE.get_or_init(|| ldconfig_cache("rocm", &gpu_dir().join("rocm/lib")));
    let s = setup();
    let empty = s.scratch.join("no-cdi");
    std::fs::create_dir_all(&empty).unwrap();
    let text = format!(
        "host:\n  ld_so_cache: {}\n  dev_dir: {}\ngpu:\n  rocm:\n    binary_paths: [{}]\ncdi:\n  spec_dirs: [{}]\n",
        cache.display(),
        gpu_dir().join("dev").display(),
        gpu_dir().join("rocm/bin").display(),
        empty.display(),
    );
    let path = s.scratch.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// README: `--rocm` brings in the host's AMD driver libraries (through ld.so.cache, at
/// /.launcher.d/libs, first on LD_LIBRARY_PATH), programs and device nodes.
#[test]
fn rocm_app_dlopens_the_injected_hip_runtime_and_rocm_smi_runs() {
    let out = launcher(&["exec", "--rocm", &image(), "/usr/bin/rocm-app"])
        .env("LAUNCHER_CONFIG", &rocm_config("rocm"))
        .run();
    assert_eq!(
        out.ok().stdout,
        format!(
            "hip runtime 60200000\nloaded from /.launcher.d/libs/libamdhip64.so.6\n{}\n",
            uid_line()
        ),
        "{out:?}"
    );
    let out = launcher(&[
        "exec",
        "--rocm",
        &image(),
        "/bin/sh",
        "-c",
        // The host's own libdrm and libdrm_amdgpu (ROCm's list has them) may be there too.
        "rocm-smi; ls /.launcher.d/libs | grep -v '^libdrm'",
    ])
    .env("LAUNCHER_CONFIG", &rocm_config("rocm-smi"))
    .run();
    assert_eq!(
        out.ok().stdout,
        "fake rocm-smi: ROCm 6.2.0-fake\nlibamdhip64.so.6\nlibhsa-runtime64.so.1\nlibrocm_smi64.so.7\n",
        "{out:?}"
    );
    // Without --rocm nothing is there.
    let out = launcher(&["exec", &image(), "/usr/bin/rocm-app"])
        .env("LAUNCHER_CONFIG", &rocm_config("rocm-off"))
        .run();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("libamdhip64.so.6"), "{out:?}");
}

/// `--rocm --contain`: /dev/kfd and only the render node ROCR_VISIBLE_DEVICES names.
#[test]
fn rocm_contain_binds_kfd_and_the_visible_render_node() {
    let out = launcher(&[
        "exec",
        "--rocm",
        "--contain",
        &image(),
        "/bin/sh",
        "-c",
        "for d in kfd dri/card0 dri/renderD128 dri/renderD129; do if [ -c /dev/$d ]; then stat -c \"$d %t %T\" /dev/$d; else echo \"$d absent\"; fi; done; /usr/bin/rocm-app",
    ])
    .env("LAUNCHER_CONFIG", &rocm_config("rocm-visible"))
    .env("ROCR_VISIBLE_DEVICES", "1")
    .run();
    assert_eq!(
        out.ok().stdout,
        format!(
            "kfd ee 0\ndri/card0 absent\ndri/renderD128 absent\ndri/renderD129 e2 81\nhip runtime 60200000\nloaded from /.launcher.d/libs/libamdhip64.so.6\n{}\n",
            uid_line()
        ),
        "{out:?}"
    );
}

/// README: `--gpu` uses the host's driver "CDI specs, else ld.so.cache". With an nvidia.com/gpu
/// spec (gpu/cdi-nvidia, nvidia-ctk's shape) its `all` device and common edits are applied and
/// NVIDIA's built-in lists are not, though the ld.so.cache lists the fake driver. (AMD has no
/// spec here, so --gpu still looks for ROCm's built-in list: the host's libdrm may come in.)
#[test]
fn gpu_uses_the_nvidia_cdi_spec_instead_of_the_built_in_lists() {
    let cfg = config(
        "cdi-nvidia",
        &format!(
            "cdi:\n  spec_dirs: [{}]\n",
            gpu_dir().join("cdi-nvidia").display()
        ),
    );
    let out = launcher(&[
        "exec",
        "--gpu",
        "--contain",
        &image(),
        "/bin/sh",
        "-c",
        "echo $CDI_NVIDIA_DEVICE $NVIDIA_VISIBLE_DEVICES; \
         for d in nvidia0 nvidia1 nvidiactl nvidia-uvm; do if [ -c /dev/$d ]; then stat -c \"$d %t %T\" /dev/$d; else echo \"$d absent\"; fi; done; \
         ls /.launcher.d/libs 2>/dev/null | grep -E 'cuda|nvidia' || echo no-built-in-nvidia-libs; /usr/bin/gpu-app",
    ])
    .env("LAUNCHER_CONFIG", &cfg)
    .run();
    assert_eq!(
        out.ok().stdout,
        format!(
            "all void\nnvidia0 c3 0\nnvidia1 c3 1\nnvidiactl c3 ff\nnvidia-uvm absent\nno-built-in-nvidia-libs\n\
             driver version 12040\nloaded from /lib/x86_64-linux-gnu/libcuda.so.1\n{}\n",
            uid_line()
        ),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "createContainer hook '/usr/bin/nvidia-ctk hook update-ldcache --folder /lib/x86_64-linux-gnu' skipped"
        ),
        "{out:?}"
    );
    // The same config without the spec: the built-in lists (control: the spec made the difference).
    let out = launcher(&["exec", "--gpu", &image(), "/usr/bin/gpu-app"])
        .env("LAUNCHER_CONFIG", &config("cdi-nvidia-off", ""))
        .run();
    assert!(
        out.ok()
            .stdout
            .contains("loaded from /.launcher.d/libs/libcuda.so.1"),
        "{out:?}"
    );
}

/// `--gpu` on an NVIDIA node whose ld.so.cache also lists libdrm (Mesa needs it on most hosts)
/// brings in NVIDIA's libraries only: libdrm, in ROCm's list, no longer makes the node look
/// like an AMD one (issue 20's review). An AMD node is one with /dev/kfd.
#[test]
fn gpu_on_a_node_without_kfd_brings_no_rocm_libraries() {
    let s = setup();
    let dir = s.scratch.join("nv-only");
    let _ = std::fs::remove_dir_all(&dir);
    let (lib, dev) = (dir.join("lib"), dir.join("dev"));
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(&dev).unwrap();
    let cp = |args: &[&str]| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(args.join(" "))
            .status()
            .unwrap();
        assert!(st.success(), "{args:?}");
    };
    cp(&[
        "cp -a",
        &format!("{}/lib/.", gpu_dir().display()),
        &lib.display().to_string(),
    ]);
    cp(&[
        "cp -a",
        &format!("{}/dev/nvidia*", gpu_dir().display()),
        &dev.display().to_string(),
    ]);
    std::fs::write(dir.join("drm.c"), "int drmAvailable(void) { return 1; }\n").unwrap();
    cp(&[
        "gcc -shared -fPIC -Wl,-soname,libdrm.so.2 -o",
        &lib.join("libdrm.so.2.4.0").display().to_string(),
        &dir.join("drm.c").display().to_string(),
        "&& ln -s libdrm.so.2.4.0",
        &lib.join("libdrm.so.2").display().to_string(),
    ]);
    let cache = ldconfig_cache("nv-only", &lib);
    let empty = s.scratch.join("no-cdi");
    std::fs::create_dir_all(&empty).unwrap();
    let cfg = s.scratch.join("nv-only.yaml");
    std::fs::write(
        &cfg,
        format!(
            "host:\n  ld_so_cache: {}\n  dev_dir: {}\ncdi:\n  spec_dirs: [{}]\n",
            cache.display(),
            dev.display(),
            empty.display()
        ),
    )
    .unwrap();
    let out = launcher(&["--debug", "exec", "--gpu", &image(), "/bin/true"])
        .env("LAUNCHER_CONFIG", cfg.to_str().unwrap())
        .run();
    out.ok();
    assert!(
        out.stderr.contains("/.launcher.d/libs/libcuda.so.1"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("libdrm"), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "rocm: no {} on this host",
            dev.join("kfd").display()
        )),
        "{out:?}"
    );
}
