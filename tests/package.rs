//! The Debian packages (issue 19): `scripts/package.sh` packages the binary under test, and
//! what it installs works as the unprivileged user: the binary runs an image, the man page
//! and completions are there and well formed, nothing is put in /etc; and launcher-spank, the
//! SPANK plugin with its plugstack.conf line.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_package_installs_a_working_launcher_with_its_man_page_and_completions() {
    let s = setup();
    let dir = s.scratch.join("package");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let debs = run(Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package.sh"))
        .env("LAUNCHER_BIN", &s.bin)
        .env("LAUNCHER_PACKAGE_DIR", &dir));
    let debs: Vec<&str> = debs.lines().collect();
    assert_eq!(
        debs.len(),
        2,
        "the launcher and launcher-spank packages: {debs:?}"
    );
    let deb = debs[0];
    let version = run(Command::new(&s.bin).arg("--version"));
    assert!(
        deb.ends_with(&format!(
            "launcher_{}_{}.deb",
            version.split_whitespace().nth(1).unwrap(),
            run(Command::new("dpkg").arg("--print-architecture")).trim()
        )),
        "{deb}"
    );
    let field = |name: &str| run(Command::new("dpkg-deb").args(["-f", deb, name]));
    assert_eq!(field("Package").trim(), "launcher");
    assert!(
        field("Depends").starts_with("libc6 (>= 2."),
        "{}",
        field("Depends")
    );
    let contents = run(Command::new("dpkg-deb").args(["-c", deb]));
    for path in [
        "./usr/bin/launcher",
        "./usr/share/man/man1/launcher.1.gz",
        "./usr/share/bash-completion/completions/launcher",
        "./usr/share/zsh/vendor-completions/_launcher",
        "./usr/share/fish/vendor_completions.d/launcher.fish",
        "./usr/share/doc/launcher/copyright",
        "./usr/share/doc/launcher/examples/launcher.yaml",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    assert!(!contents.contains("./etc/"), "nothing in /etc:\n{contents}");
    assert!(
        contents.lines().all(|l| l.contains(" root/root ")),
        "{contents}"
    );

    // What the package installs, unpacked where the test user can run it.
    let root = dir.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    let bin = root.join("usr/bin/launcher");
    let out = as_test_user(&bin, Some(60))
        .args([
            "exec",
            &fixture("busybox-gzip.sqfs"),
            "/bin/sh",
            "-c",
            "echo from $LAUNCHER_NAME",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from busybox-gzip.sqfs\n"
    );
    let man = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/launcher.1.gz")));
    assert!(
        man.starts_with(".ie") || man.contains(".TH launcher"),
        "{man}"
    );
    run(Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/launcher")));

    // launcher-spank: the plugin in Slurm's plugin directory, its plugstack.conf line as an
    // example (tests/spank.rs runs the plugin on the test cluster), tied to this launcher and
    // to the Slurm release it was built for.
    let spank = debs[1];
    assert!(
        spank.ends_with(&format!(
            "launcher-spank_{}_{}.deb",
            version.split_whitespace().nth(1).unwrap(),
            run(Command::new("dpkg").arg("--print-architecture")).trim()
        )),
        "{spank}"
    );
    let field = |name: &str| run(Command::new("dpkg-deb").args(["-f", spank, name]));
    assert_eq!(field("Package").trim(), "launcher-spank");
    let depends = field("Depends");
    assert!(
        depends.contains(&format!(
            "launcher (= {})",
            version.split_whitespace().nth(1).unwrap()
        )) && depends.contains("slurm-client (>= "),
        "{depends}"
    );
    let contents = run(Command::new("dpkg-deb").args(["-c", spank]));
    let plugin = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|p| p.ends_with("/slurm-wlm/spank_launcher.so"))
        .unwrap_or_else(|| panic!("no spank_launcher.so:\n{contents}"))
        .trim_start_matches('.')
        .to_string();
    assert!(!contents.contains("./etc/"), "nothing in /etc:\n{contents}");
    let root = dir.join("spank-root");
    run(Command::new("dpkg-deb").arg("-x").arg(spank).arg(&root));
    let conf =
        std::fs::read_to_string(root.join("usr/share/doc/launcher-spank/examples/plugstack.conf"))
            .unwrap();
    assert!(
        conf.lines()
            .any(|l| l == format!("required {plugin} launcher=/usr/bin/launcher")),
        "{conf}"
    );
    let symbols = run(Command::new("objdump")
        .arg("-T")
        .arg(root.join(plugin.trim_start_matches('/'))));
    for sym in ["slurm_spank_init", "slurm_spank_task_init", "plugin_name"] {
        assert!(symbols.contains(sym), "{sym} not exported:\n{symbols}");
    }
}

/// The static build (scripts/package-static.sh, issue 19): a musl binary with no program
/// interpreter and no shared library, archived with its man page and completions, runs an image
/// as the user. Built here in debug, in a target directory of its own (the suite's build
/// directory stays the suite's): a few minutes on two cores, the first time.
#[test]
fn the_static_build_needs_no_libc_and_runs_an_image_as_the_user() {
    let s = setup();
    let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/static-test");
    run(Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build", "--locked", "-q", "--bin", "launcher", "--target", &target,
        ])
        .env("CARGO_TARGET_DIR", &target_dir));
    let bin = target_dir.join(&target).join("debug/launcher");
    let dir = s.scratch.join("package-static");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tgz = run(Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package-static.sh"))
        .env("LAUNCHER_BIN", &bin)
        .env("LAUNCHER_PACKAGE_DIR", &dir));
    let tgz = tgz.trim();
    assert!(tgz.ends_with("-static.tar.gz"), "{tgz}");
    // The bare binary beside it, for sites that copy one file.
    let bare = dir.join(format!("launcher-{}-linux-musl", std::env::consts::ARCH));
    let version = run(Command::new(&bare).arg("--version"));
    assert!(version.starts_with("launcher "), "{version}");
    run(Command::new("tar").arg("-C").arg(&dir).arg("-xzf").arg(tgz));
    let top = dir.join(
        Path::new(tgz)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".tar.gz"),
    );
    let unpacked = top.join("bin/launcher");
    let headers = run(Command::new("readelf").arg("-lW").arg(&unpacked));
    assert!(!headers.contains("INTERP"), "{headers}");
    for path in [
        "share/man/man1/launcher.1.gz",
        "share/bash-completion/completions/launcher",
        "share/zsh/site-functions/_launcher",
        "share/fish/vendor_completions.d/launcher.fish",
    ] {
        assert!(top.join(path).is_file(), "{path} missing");
    }
    // The archive's directories are world-readable; the scratch directory is the test user's
    // to enter.
    let out = as_test_user(&unpacked, Some(60))
        .args([
            "exec",
            &fixture("busybox-zstd.sqfs"),
            "/bin/sh",
            "-c",
            "echo from $LAUNCHER_NAME; id -u",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("from busybox-zstd.sqfs\n"), "{stdout}");
}
