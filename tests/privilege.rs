//! End-to-end: what the command can and cannot do. It runs as the caller with no
//! capabilities and no_new_privs (see also exec.rs `identity_is_the_callers`); a setuid
//! program in the image gains nothing; the image and everything outside the binds is
//! read-only.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Prints real, effective and saved uid and gid, then whether setuid(0) worked.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
int main(void) {
    uid_t r, e, s; gid_t gr, ge, gs;
    getresuid(&r, &e, &s); getresgid(&gr, &ge, &gs);
    int su = setuid(0);
    printf("uid %u %u %u gid %u %u %u setuid0 %d\n", r, e, s, gr, ge, gs, su);
    return 0;
}
"#;

/// An image with a setuid-root and a setgid-root copy of the probe (made as root, so
/// mksquashfs stores owner 0 and modes 4755 / 2755).
fn setuid_image() -> String {
    static IMG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMG.get_or_init(make_setuid_image).clone()
}

fn make_setuid_image() -> String {
    let s = setup();
    let t = s.scratch.join("suid-tree");
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::fs::copy(s.fixtures.join("rootfs/bin/busybox"), t.join("bin/busybox")).unwrap();
    for a in ["sh", "stat", "cat", "touch", "mkdir", "mount", "ls", "echo"] {
        std::os::unix::fs::symlink("busybox", t.join("bin").join(a)).unwrap();
    }
    std::fs::create_dir_all(t.join("data")).unwrap();
    std::fs::write(t.join("data/file"), "image\n").unwrap();
    let src = s.scratch.join("probe.c");
    std::fs::write(&src, PROBE_C).unwrap();
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(t.join("bin/probe"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "gcc -static probe.c");
    std::fs::copy(t.join("bin/probe"), t.join("bin/suid-probe")).unwrap();
    std::fs::copy(t.join("bin/probe"), t.join("bin/sgid-probe")).unwrap();
    std::fs::set_permissions(
        t.join("bin/suid-probe"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::set_permissions(
        t.join("bin/sgid-probe"),
        std::fs::Permissions::from_mode(0o2755),
    )
    .unwrap();
    let img = s.scratch.join("suid.sqfs");
    let st = Command::new("mksquashfs")
        .arg(&t)
        .arg(&img)
        .args(["-noappend", "-quiet", "-no-progress", "-comp", "zstd"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_dir_all(&t).unwrap();
    img.display().to_string()
}

#[test]
fn setuid_programs_in_the_image_gain_nothing() {
    let s = setup();
    let img = setuid_image();
    let out = sh(
        &img,
        "stat -c '%a %u' /bin/suid-probe /bin/sgid-probe; /bin/probe; /bin/suid-probe; /bin/sgid-probe",
    );
    let (u, g) = (s.uid, s.gid);
    let me = format!("uid {u} {u} {u} gid {g} {g} {g} setuid0 -1");
    // The modes are served as stored (root is unmapped: 65534), and change nothing.
    assert_eq!(
        out,
        format!("4755 65534\n2755 65534\n{me}\n{me}\n{me}\n"),
        "a setuid or setgid program changed identity"
    );
}

#[test]
fn the_command_cannot_mount_or_write_the_image() {
    let img = setuid_image();
    // `mine` in the fixture is owned by the caller: still read-only, as the whole image.
    let out = launcher(&[
        "exec",
        &img,
        "/bin/sh",
        "-c",
        "mount -t tmpfs none /data 2>&1; echo mount=$?; \
         { echo x >/data/file; } 2>&1; echo write=$?; \
         mkdir /newdir 2>&1; echo mkdir=$?; \
         echo x >/etc/passwd 2>&1; echo passwd=$?; \
         ls /oldroot 2>&1; echo oldroot=$?",
    ])
    .run();
    let o = &out.ok().stdout;
    for want in ["mount=1", "write=1", "mkdir=1", "passwd=1", "oldroot=1"] {
        assert!(o.contains(want), "{want}: {o}");
    }
    assert!(o.contains("Read-only file system"), "{o}");
    let lower = o.to_lowercase();
    assert!(
        lower.contains("not permitted") || lower.contains("permission denied"),
        "{o}"
    );
    // Owned by the caller in the image, and still read-only.
    let out = launcher(&[
        "exec",
        &fixture("busybox-gzip.sqfs"),
        "/bin/sh",
        "-c",
        "stat -c %u /data/mine; { echo x >/data/mine; } 2>&1; echo write=$?",
    ])
    .run();
    let o = &out.ok().stdout;
    assert!(o.starts_with(&format!("{}\n", setup().uid)), "{o}");
    assert!(
        o.contains("Read-only file system") && o.contains("write=1"),
        "{o}"
    );
}

#[test]
fn writes_reach_only_the_binds() {
    let s = setup();
    let img = setuid_image();
    let before = std::fs::read(&img).unwrap();
    let outside = Path::new("/var/tmp").join(format!("reliab-outside-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bound = s.scratch.join("bound");
    std::fs::create_dir_all(&bound).unwrap();
    std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o777)).unwrap();
    let spec = format!("{}:/data/bound", bound.display());
    // With a writable tmpfs over the image, writes land in memory only; --contain hides
    // the host's /tmp and /var/tmp (bound by default).
    let out = launcher(&[
        "exec",
        "--writable-tmpfs",
        "-B",
        &spec,
        "--contain",
        &img,
        "/bin/sh",
        "-c",
        &format!(
            "echo changed >/data/file && echo new >/data/new && echo kept >/data/bound/f && \
             ls {0} 2>&1; echo x >{0}/leak 2>/dev/null; echo leak=$?",
            outside.display()
        ),
    ])
    .cwd("/")
    .run();
    let o = &out.ok().stdout;
    assert!(o.contains("leak=") && !o.contains("leak=0"), "{o}");
    assert_eq!(std::fs::read_to_string(bound.join("f")).unwrap(), "kept\n");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "a write reached the host outside the binds"
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "the image file changed"
    );
    std::fs::remove_dir_all(&outside).unwrap();
}

/// Issue 20, finding 5: with HOME naming another user's home, that user's
/// `~/.config/launcher/launcher.yaml` set LD_PRELOAD, variables and binds for the caller. A
/// user config is now taken only from a file owned by the caller or root and writable by no
/// one else; any other is ignored with one warning naming the file and its owner.
#[test]
fn a_user_config_not_the_callers_is_ignored() {
    let s = setup();
    let img = fixture("busybox-gzip.sqfs");
    let config = "env:\n  set: {LD_PRELOAD: /nonexistent-preload.so, FROM_CONFIG: applied}\n\
                  binds: [\"/etc:/from-config:ro\"]\n";
    let probe = "echo \"[$FROM_CONFIG][$LD_PRELOAD]\"; test -d /from-config && echo bound; true";
    let run = |home: &Path| {
        launcher(&["exec", &img, "/bin/sh", "-c", probe])
            .env("HOME", &home.display().to_string())
            .run()
    };
    // Writes HOME/.config/launcher/launcher.yaml, the directories and file owned by `uid`.
    let place = |home: &Path, uid: u32, mode: u32| -> std::path::PathBuf {
        let dir = home.join(".config/launcher");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("launcher.yaml");
        std::fs::write(&file, config).unwrap();
        for p in [home, &home.join(".config"), &dir] {
            std::os::unix::fs::chown(p, Some(uid), None).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::os::unix::fs::chown(&file, Some(uid), None).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        file
    };
    let ignored = |out: &Out, file: &Path, why: &str| {
        out.ok();
        assert_eq!(out.stdout, "[][]\n", "{out:?}");
        let warnings: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("launcher: warning: "))
            .collect();
        assert_eq!(warnings.len(), 1, "{out:?}");
        assert!(warnings[0].contains(&file.display().to_string()), "{out:?}");
        assert!(warnings[0].contains(why), "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    };

    // Another user's home and file: ignored, naming that user.
    let (other, other_uid, other_home) = other_user();
    let theirs = place(&other_home, other_uid, 0o644);
    let out = run(&other_home);
    ignored(&out, &theirs, &other);
    std::fs::remove_dir_all(other_home.join(".config")).unwrap();

    // The caller's own file, and one of root's: applied.
    let own_home = s.scratch.join("config-home");
    let own = place(&own_home, s.uid, 0o644);
    let out = run(&own_home);
    out.ok();
    assert!(
        out.stdout
            .starts_with("[applied][/nonexistent-preload.so]\n")
            && out.stdout.ends_with("bound\n"),
        "{out:?}"
    );
    place(&own_home, s.uid, 0o644);
    std::os::unix::fs::chown(&own, Some(0), Some(0)).unwrap();
    let out = run(&own_home);
    assert!(out.stdout.starts_with("[applied]"), "{out:?}");

    // The caller's own file, but writable by others: ignored.
    place(&own_home, s.uid, 0o666);
    ignored(&run(&own_home), &own, "writable by group or others");
    place(&own_home, s.uid, 0o664);
    ignored(&run(&own_home), &own, "writable by group or others");

    std::fs::remove_dir_all(&own_home).unwrap();
}
