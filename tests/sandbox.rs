//! End-to-end: a sandbox directory as the image (issue 17), as the unprivileged test user.
//! The fixture rootfs (tests/setup.sh: busybox, an Apptainer env script and runscript) is such
//! a directory; hostile ones are made per test in the scratch directory.

mod common;
use common::*;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn rootfs() -> String {
    fixture("rootfs")
}

/// The names under `dir`, sorted (to see that a launch changed nothing there).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fresh directory in the scratch area, owned by the test user.
fn scratch_dir(name: &str) -> PathBuf {
    let d = setup().scratch.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let s = setup();
    std::os::unix::fs::chown(&d, Some(s.uid), Some(s.gid)).unwrap();
    d
}

#[test]
fn exec_run_and_binds_in_a_sandbox_directory() {
    let s = setup();
    let root = rootfs();
    let before = listing(Path::new(&root));
    let data = scratch_dir("sandbox-bind");
    std::fs::write(data.join("x"), "from-host\n").unwrap();
    std::fs::set_permissions(data.join("x"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let bind = format!("{}:/opt/in", data.display());
    let out = launcher(&[
        "exec",
        "-B",
        &bind,
        &root,
        "/bin/sh",
        "-c",
        "id -u; id -un; echo \"$IMAGE_VAR\"; cat /opt/in/x; echo \"$APPTAINER_CONTAINER\"; \
         touch /newfile 2>/dev/null && echo writable || echo read-only",
    ])
    .run();
    out.ok();
    assert_eq!(
        out.stdout,
        format!(
            "{}\n{}\nfrom-image\nfrom-host\n{root}\nread-only\n",
            s.uid, s.user
        ),
        "{out:?}"
    );
    // The mount points it lacked (/opt/in, the home directory) were made in a tmpfs layer,
    // never in the directory.
    assert_eq!(listing(Path::new(&root)), before);
    assert!(!Path::new(&root).join("home").join(&s.user).exists());

    let run = launcher(&["run", &root, "a", "b"]).run();
    run.ok();
    assert_eq!(run.stdout, "runscript args: a b\n", "{run:?}");

    // --debug shows the directory as the root, and no FUSE server.
    let dbg = launcher(&["--debug", "exec", &root, "/bin/true"]).run();
    dbg.ok();
    assert!(
        dbg.stderr
            .contains(&format!("image: {root} (sandbox directory)")),
        "{dbg:?}"
    );
    assert!(
        dbg.stderr
            .contains(&format!("root: directory {root} (rbind)")),
        "{dbg:?}"
    );
    assert!(!dbg.stderr.contains("FUSE"), "{dbg:?}");
}

/// A sandbox whose symlinks point at host files: every image path the launcher reads is
/// resolved inside the directory, as inside the container, so nothing of the host leaks in.
#[test]
fn hostile_sandbox_symlinks_stay_inside_the_directory() {
    let s = setup();
    let dir = scratch_dir("sandbox-hostile");
    let fixture = PathBuf::from(rootfs());
    let cp = Command::new("cp")
        .arg("-a")
        .arg(fixture.join("bin"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(cp.success());
    for d in ["etc", ".singularity.d/env", "data"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    // A host file the user can read, which an escaping resolution would pick up.
    let leak = s.scratch.join("sandbox-leak.sh");
    std::fs::write(&leak, "export LEAKED=host\n").unwrap();
    std::fs::set_permissions(&leak, std::fs::Permissions::from_mode(0o644)).unwrap();
    symlink(&leak, dir.join(".singularity.d/env/50-abs.sh")).unwrap();
    symlink(
        format!("../../../../../../../..{}", leak.display()),
        dir.join(".singularity.d/env/51-up.sh"),
    )
    .unwrap();
    symlink(
        "/proc/self/environ",
        dir.join(".singularity.d/env/52-proc.sh"),
    )
    .unwrap();
    std::fs::write(
        dir.join(".singularity.d/env/90-environment.sh"),
        "export MINE=sandbox\n",
    )
    .unwrap();
    // The host's passwd names root; the sandbox's link must not bring it (or the host's
    // shadow, which the user cannot read) in.
    symlink("/etc/shadow", dir.join("etc/passwd")).unwrap();
    symlink("../../../../../../etc/gshadow", dir.join("etc/group")).unwrap();
    let chown = Command::new("chown")
        .args(["-hR", &format!("{}:{}", s.uid, s.gid)])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let d = dir.display().to_string();
    let out = launcher(&[
        "exec",
        &d,
        "/bin/sh",
        "-c",
        "echo \"LEAKED=$LEAKED MINE=$MINE\"; cat /etc/passwd; echo ---; cat /etc/group",
    ])
    .run();
    out.ok();
    let (vars, rest) = out.stdout.split_once('\n').unwrap();
    assert_eq!(vars, "LEAKED= MINE=sandbox", "{out:?}");
    // Only the generated entries: the caller's (and no host account such as root's or
    // the host's groups).
    let (passwd, group) = rest.split_once("---\n").unwrap();
    assert_eq!(
        passwd,
        format!(
            "{}:x:{}:{}::{}:/bin/sh\n",
            s.user,
            s.uid,
            s.gid,
            s.home.display()
        ),
        "{out:?}"
    );
    assert!(!group.contains("root:"), "{out:?}");
    assert!(
        group.contains(&format!("{}:x:{}:", s.user, s.gid)),
        "{out:?}"
    );
    // The directory is unchanged: the generated files were bound over places made in the
    // tmpfs layer, not written through the links.
    assert_eq!(
        std::fs::read_link(dir.join("etc/passwd")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert!(!dir.join("etc/shadow").exists());

    // A FIFO where passwd should be is never opened (that would block until a writer came).
    std::fs::remove_file(dir.join("etc/passwd")).unwrap();
    nix_mkfifo(&dir.join("etc/passwd"));
    let out = as_test_user(&s.bin, Some(60))
        .args(["exec", &d, "/bin/sh", "-c", "id -un"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", s.user)
    );
}

fn nix_mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(ok.success());
    let s = setup();
    std::os::unix::fs::chown(p, Some(s.uid), Some(s.gid)).unwrap();
}

#[test]
fn a_directory_that_is_not_a_root_file_system_is_refused() {
    let dir = scratch_dir("sandbox-not-rootfs");
    std::fs::write(dir.join("results.csv"), "1,2\n").unwrap();
    let d = dir.display().to_string();
    let out = launcher(&["exec", &d, "/bin/true"]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "launcher: error: '{d}' is a directory but not a root file system"
        )),
        "{out:?}"
    );
}
