//! End-to-end: --mpi with fake MPI stacks made of real parts (tests/setup-fakempi.sh): the ABI
//! check, the host library bound under the image's soname, the dependency closure and plugin
//! directories, interconnect device nodes, the site config's mpi keys; then the real thing
//! with Debian's Open MPI when its images are there (tests/setup-mpi.sh).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn fake() -> PathBuf {
    setup().fixtures.join("fakempi")
}

fn image(name: &str) -> String {
    fake().join(format!("{name}.sqfs")).display().to_string()
}

/// A real ld.so.cache listing hostA's "Open MPI" first (then the host's trusted directories).
fn ld_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| ldconfig_cache("mpi", &fake().join("hostA/lib")))
}

/// A site config (readable by the test user) with the test cache and /dev, plus `extra` YAML.
fn config(name: &str, extra: &str) -> String {
    let s = setup();
    let text = format!(
        "host:\n  ld_so_cache: {}\n  dev_dir: {}\n{extra}",
        ld_cache().display(),
        fake().join("dev").display(),
    );
    let path = s.scratch.join(format!("mpi-{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The site config naming hostB's "MPICH" (libmpi.so.12) as the host MPI.
fn mpich_host(name: &str, extra: &str) -> String {
    config(
        name,
        &format!(
            "mpi:\n  libraries: [libmpi.so]\n  library_paths: [{}]\n{extra}",
            fake().join("hostB/lib").display()
        ),
    )
}

fn app_output(impl_: &str, from: &str, transport: &str) -> String {
    format!(
        "mpi {impl_} from {from}\ntransport {transport}\nuid {}\n",
        setup().uid
    )
}

#[test]
fn open_mpi_image_gets_the_host_open_mpi_and_its_closure() {
    let out = launcher(&["exec", "--mpi", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &config("ompi", ""))
        .run();
    assert_eq!(
        out.ok().stdout,
        app_output(
            "host Open MPI",
            "/.launcher.d/libs/libmpi.so.40",
            "host UCX"
        ),
        "{out:?}"
    );
    // Without --mpi the image's own MPI answers.
    let out = launcher(&["exec", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &config("ompi-off", ""))
        .run();
    assert_eq!(
        out.ok().stdout,
        app_output(
            "image Open MPI",
            "/usr/lib/x86_64-linux-gnu/libmpi.so.40",
            "image UCX"
        ),
        "{out:?}"
    );
}

#[test]
fn plugins_config_and_their_libraries_are_bound() {
    let a = fake().join("hostA");
    let components = a.join("lib/openmpi/lib/openmpi3");
    let script = format!(
        "ls {c}; cat {a}/share/openmpi/help-fake.txt {a}/etc/openmpi-mca-params.conf; ls /.launcher.d/libs; id -u",
        c = components.display(),
        a = a.display()
    );
    let out = launcher(&[
        "exec",
        "--mpi",
        "--debug",
        &image("ompi"),
        "/bin/sh",
        "-c",
        &script,
    ])
    .env("LAUNCHER_CONFIG", &config("plugins", ""))
    .run();
    assert_eq!(
        out.ok().stdout,
        format!(
            "mca_btl_fake.so\nfake Open MPI help\nbtl = self\nlibfakefabric.so.1\nlibmpi.so.40\nlibucp.so.0\n{}\n",
            setup().uid
        ),
        "{out:?}"
    );
    // --debug shows the decision and every library and directory brought in.
    for line in [
        format!(
            "mpi: image's Open MPI (libmpi.so.40 in /usr/lib/x86_64-linux-gnu), host's Open MPI (libmpi.so.40 at {}): ABI-compatible: injected",
            a.join("lib/libmpi.so.40.30.0").display()
        ),
        format!(
            "mpi {} -> /.launcher.d/libs/libfakefabric.so.1",
            a.join("lib/libfakefabric.so.1").display()
        ),
        format!(
            "mpi mount {} -> {}",
            components.display(),
            components.display()
        ),
        "LD_LIBRARY_PATH=/.launcher.d/libs".to_string(),
    ] {
        assert!(out.stderr.contains(&line), "missing '{line}' in {out:?}");
    }
}

#[test]
fn mpich_image_gets_the_host_libmpi_12_under_its_own_soname() {
    // Debian calls MPICH libmpich.so.12; Cray MPICH and Intel MPI libmpi.so.12: same ABI.
    let out = launcher(&["exec", "--mpi", &image("mpich"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &mpich_host("mpich", ""))
        .run();
    assert_eq!(
        out.ok().stdout,
        app_output("host MPICH", "/.launcher.d/libs/libmpich.so.12", "none"),
        "{out:?}"
    );
}

#[test]
fn incompatible_pair_is_refused_unless_forced() {
    let cfg = mpich_host("incompatible", "");
    let out = launcher(&["exec", "--mpi", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &cfg)
        .run();
    assert_eq!(out.code, 255, "{out:?}");
    let expected = format!(
        "launcher: error: --mpi: the image's MPI is Open MPI (libmpi.so.40 in /usr/lib/x86_64-linux-gnu), \
         the host's is MPICH ABI (libmpi.so.12 at {}): not ABI-compatible; use --mpi=force to inject anyway\n",
        fake().join("hostB/lib/libmpi.so.12").display()
    );
    assert_eq!(out.stderr, expected, "{out:?}");
    assert_eq!(out.stdout, "");
    let out = launcher(&["exec", "--mpi=force", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &cfg)
        .run();
    // The fake libraries share their entry points, so the forced pair happens to run.
    assert_eq!(
        out.ok().stdout,
        app_output("host MPICH", "/.launcher.d/libs/libmpi.so.40", "none"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "warning: --mpi=force: injecting the host's libmpi.so.12 over the image's libmpi.so.40"
        ),
        "{out:?}"
    );
}

#[test]
fn image_without_mpi_gets_the_host_mpi_with_a_note() {
    let out = launcher(&[
        "exec",
        "--mpi",
        "--debug",
        &fixture("gpu/glibc.sqfs"),
        "/bin/ls",
        "/.launcher.d/libs",
    ])
    .env("LAUNCHER_CONFIG", &config("no-image-mpi", ""))
    .run();
    assert_eq!(
        out.ok().stdout,
        "libfakefabric.so.1\nlibmpi.so.40\nlibucp.so.0\n",
        "{out:?}"
    );
    assert!(
        out.stderr.contains("mpi: the image has no MPI library"),
        "{out:?}"
    );
}

#[test]
fn host_without_mpi_is_an_error_naming_where_it_looked() {
    let cfg = config(
        "no-host-mpi",
        "mpi:\n  libraries: [libnompi.so]\n  library_paths: [/nonexistent/lib]\n",
    );
    let out = launcher(&["exec", "--mpi", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &cfg)
        .run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "launcher: error: --mpi: no MPI library on this host (looked for site config mpi.libraries libnompi.so \
             in mpi.library_paths /nonexistent/lib and the ld.so cache {})\n",
            ld_cache().display()
        ),
        "{out:?}"
    );
}

#[test]
fn site_default_turns_it_on_and_no_mpi_off() {
    let on = config("default", "mpi:\n  default: true\n");
    let out = launcher(&["exec", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &on)
        .run();
    assert!(out.ok().stdout.starts_with("mpi host Open MPI"), "{out:?}");
    let out = launcher(&["exec", "--no-mpi", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &on)
        .run();
    assert!(out.ok().stdout.starts_with("mpi image Open MPI"), "{out:?}");
    // On by default, an incompatible image runs with its own MPI and a warning.
    let mpich_default = mpich_host("default-incompatible", "  default: true\n");
    let out = launcher(&["exec", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &mpich_default)
        .run();
    assert!(out.ok().stdout.starts_with("mpi image Open MPI"), "{out:?}");
    assert!(
        out.stderr.contains("not ABI-compatible")
            && out
                .stderr
                .contains("MPI not injected, the image's own is used"),
        "{out:?}"
    );
}

#[test]
fn contain_binds_interconnect_devices_and_site_binds() {
    let share = fake().join("hostA/share");
    let cfg = config(
        "devices",
        &format!(
            "mpi:\n  binds: [\"{}:/opt/site-mpi:ro\"]\n",
            share.display()
        ),
    );
    let out = launcher(&[
        "exec",
        "--mpi",
        "--contain",
        &image("ompi"),
        "/bin/sh",
        "-c",
        "for d in infiniband/uverbs0 infiniband/rdma_cm cxi0 hfi1_0 xpmem knem; do stat -c \"$d %t %T\" /dev/$d; done; \
         cat /opt/site-mpi/openmpi/help-fake.txt; touch /opt/site-mpi/x 2>/dev/null || echo read-only; id -u",
    ])
    .env("LAUNCHER_CONFIG", &cfg)
    .run();
    assert_eq!(
        out.ok().stdout,
        format!(
            "infiniband/uverbs0 e7 c0\ninfiniband/rdma_cm a 3a\ncxi0 1ff 0\nhfi1_0 f6 0\nxpmem a 3b\nknem a 3c\n\
             fake Open MPI help\nread-only\n{}\n",
            setup().uid
        ),
        "{out:?}"
    );
}

/// The images of tests/setup-mpi.sh (Debian's Open MPI and MPICH unpacked with dpkg -x); it
/// builds them (once) into $LAUNCHER_MPI_FIXTURES. A failed set-up fails the test.
fn real_mpi_image(name: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/setup-mpi.sh");
    let s = setup();
    let st = Command::new("bash")
        .arg(&script)
        .status()
        .expect("running tests/setup-mpi.sh");
    assert!(st.success(), "tests/setup-mpi.sh failed");
    let dir = std::env::var("LAUNCHER_MPI_FIXTURES")
        .unwrap_or_else(|_| format!("{}-mpi", s.fixtures.display()));
    let img = format!("{dir}/{name}");
    assert!(
        Path::new(&img).is_file(),
        "tests/setup-mpi.sh made no {img}"
    );
    img
}

/// The host's `PROGRAM ARGS` (mpirun.openmpi, mpiexec.mpich) as the test user, no site config
/// (the host's real ld.so.cache).
fn host_mpirun(program: &str, args: &[&str]) -> Out {
    let s = setup();
    let out = as_test_user(program, Some(180))
        .args(args)
        .env("LAUNCHER_CONFIG", "")
        // MPI's defaults, single copy between ranks included: the ranks of one mpirun share
        // one user namespace on the node (launcher/src/share.rs).
        .current_dir(&s.scratch)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawning mpirun");
    Out::from(out)
}

/// The bind model with real parts: the host's Debian Open MPI (libmpi.so.40, its closure,
/// components and PMIx) injected into an image that has its own Open MPI, launched by the
/// host's mpirun: hello world with 2 ranks and a small ping-pong.
#[test]
fn real_host_open_mpi_bound_into_the_open_mpi_image() {
    let img = real_mpi_image("openmpi.sqfs");
    if Command::new("mpirun.openmpi")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("mpirun.openmpi missing: tests/setup-mpi.sh installs openmpi-bin");
    }
    let bin = setup().bin.display().to_string();
    let launch = |cmd: &[&str]| {
        let mut args = vec!["-np", "2", "--oversubscribe", &bin, "exec", "--mpi", &img];
        args.extend(cmd);
        host_mpirun("mpirun.openmpi", &args)
    };
    // Host and image carry the same Open MPI: only the dynamic loader tells whose is used.
    let out = launch(&[
        "/bin/sh",
        "-c",
        "LD_DEBUG=libs hello --check-size 2 2>&1 | grep -E 'calling init: .*libmpi\\.so|^hello'",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let from_host = out
        .stdout
        .lines()
        .filter(|l| l.ends_with("calling init: /.launcher.d/libs/libmpi.so.40"))
        .count();
    assert_eq!(from_host, 2, "both ranks load the host's Open MPI: {out:?}");
    assert!(
        !out.stdout.lines().any(|l| l.contains("calling init: ")
            && l.contains("libmpi.so")
            && !l.contains("/.launcher.d/libs/")),
        "a rank loaded the image's own libmpi: {out:?}"
    );
    let ranks: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("hello rank="))
        .collect();
    assert_eq!(ranks.len(), 2, "{out:?}");
    let uid = format!("uid={}", setup().uid);
    assert!(
        ranks
            .iter()
            .all(|l| l.contains("size=2") && l.contains(&uid)),
        "{out:?}"
    );
    assert!(out.stdout.contains("hello ok size=2"), "{out:?}");
    assert_one_user_namespace(&out);
    // Up to 4 MiB: large messages go by CMA single copy, which needs the shared namespace.
    let out = launch(&[
        "pingpong", "--min", "8", "--max", "4194304", "--iters", "50",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("pingpong bytes="))
        .collect();
    assert_eq!(lines.len(), 20, "{out:?}");
    assert!(
        !out.stderr.contains("single_copy_mechanism CMA is"),
        "CMA was not available: {out:?}"
    );
}

/// All ranks' `hello` lines show one user namespace (`ns=`): they shared the node's instance.
fn assert_one_user_namespace(out: &Out) {
    let ns: std::collections::BTreeSet<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("hello rank="))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("ns=")))
        .collect();
    assert_eq!(ns.len(), 1, "ranks in different user namespaces: {out:?}");
}

/// The same with Debian's MPICH (libmpich.so.12, over UCX) and its Hydra launcher.
#[test]
fn real_host_mpich_bound_into_the_mpich_image() {
    let img = real_mpi_image("mpich.sqfs");
    let bin = setup().bin.display().to_string();
    let script =
        "LD_DEBUG=libs hello --check-size 2 2>&1 | grep -E 'calling init: .*libmpich|^hello'";
    let out = host_mpirun(
        "mpiexec.mpich",
        &[
            "-n", "2", &bin, "exec", "--mpi", &img, "/bin/sh", "-c", script,
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("hello ok size=2"), "{out:?}");
    let from_host = out
        .stdout
        .lines()
        .filter(|l| l.ends_with("calling init: /.launcher.d/libs/libmpich.so.12"))
        .count();
    assert_eq!(from_host, 2, "both ranks load the host's MPICH: {out:?}");
    assert_one_user_namespace(&out);
}

/// The incompatible pair with real libraries: the host's Open MPI against the MPICH image.
#[test]
fn real_host_open_mpi_is_refused_for_the_mpich_image() {
    let img = real_mpi_image("mpich.sqfs");
    let cfg = setup().scratch.join("mpi-real-ompi.yaml");
    std::fs::write(&cfg, "mpi:\n  libraries: [libmpi.so]\n").unwrap();
    let out = launcher(&["exec", "--mpi", &img, "hello"])
        .env("LAUNCHER_CONFIG", &cfg.display().to_string())
        .run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "launcher: error: --mpi: the image's MPI is MPICH ABI (libmpich.so.12 in /usr/lib/x86_64-linux-gnu), \
             the host's is Open MPI (libmpi.so.40 at /usr/lib/x86_64-linux-gnu/libmpi.so.40"
        ),
        "{out:?}"
    );
}

/// A site config whose ld.so.cache lists hostC's MPI-5 ABI library, then the host's trusted
/// directories (which hold Debian's real Open MPI and MPICH when tests/setup-mpi.sh ran).
fn abi_host(name: &str, extra: &str) -> String {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    let cache = CACHE.get_or_init(|| ldconfig_cache("mpi-abi", &fake().join("hostC/lib")));
    let path = setup().scratch.join(format!("mpi-{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "host:\n  ld_so_cache: {}\n  dev_dir: {}\n{extra}",
            cache.display(),
            fake().join("dev").display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// README: the MPI-5 standard ABI (`libmpi_abi.so`) is one of the ABIs --mpi checks: the
/// host's libmpi_abi.so.0, found through the ld.so.cache, is bound over the image's.
#[test]
fn mpi5_abi_image_gets_the_host_libmpi_abi() {
    let out = launcher(&[
        "exec",
        "--mpi",
        "--debug",
        &image("abi"),
        "/usr/bin/mpi-app",
    ])
    .env("LAUNCHER_CONFIG", &abi_host("abi", ""))
    .run();
    assert_eq!(
        out.ok().stdout,
        app_output(
            "host MPI-5 ABI",
            "/.launcher.d/libs/libmpi_abi.so.0",
            "none"
        ),
        "{out:?}"
    );
    let want = format!(
        "mpi: image's the MPI-5 standard ABI (libmpi_abi.so.0 in /usr/lib/x86_64-linux-gnu), host's the MPI-5 standard ABI (libmpi_abi.so.0 at {}): ABI-compatible: injected",
        fake().join("hostC/lib/libmpi_abi.so.0.0.0").display()
    );
    assert!(out.stderr.contains(&want), "missing '{want}' in {out:?}");
    // Without --mpi the image's own answers.
    let out = launcher(&["exec", &image("abi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &abi_host("abi-off", ""))
        .run();
    assert_eq!(
        out.ok().stdout,
        app_output(
            "image MPI-5 ABI",
            "/usr/lib/x86_64-linux-gnu/libmpi_abi.so.0",
            "none"
        ),
        "{out:?}"
    );
}

/// An Open MPI image and a host with only the MPI-5 ABI: refused, naming both.
#[test]
fn mpi5_abi_host_is_refused_for_an_open_mpi_image() {
    let cfg = abi_host(
        "abi-only",
        &format!(
            "mpi:\n  libraries: [libmpi_abi.so]\n  library_paths: [{}]\n",
            fake().join("hostC/lib").display()
        ),
    );
    let out = launcher(&["exec", "--mpi", &image("ompi"), "/usr/bin/mpi-app"])
        .env("LAUNCHER_CONFIG", &cfg)
        .run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "launcher: error: --mpi: the image's MPI is Open MPI (libmpi.so.40 in /usr/lib/x86_64-linux-gnu), \
             the host's is the MPI-5 standard ABI (libmpi_abi.so.0 at {}): not ABI-compatible; use --mpi=force to inject anyway\n",
            fake().join("hostC/lib/libmpi_abi.so.0.0.0").display()
        ),
        "{out:?}"
    );
}
