//! End-to-end: binds, --contain, environment, working directory, run/inspect, and bad input.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn gzip() -> String {
    fixture("busybox-gzip.sqfs")
}

/// A directory owned by the test user, with one file in it.
fn user_dir(name: &str) -> PathBuf {
    let s = setup();
    let d = s.scratch.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("hello.txt"), "hello from the host\n").unwrap();
    std::os::unix::fs::chown(&d, Some(s.uid), Some(s.gid)).unwrap();
    std::os::unix::fs::chown(d.join("hello.txt"), Some(s.uid), Some(s.gid)).unwrap();
    d
}

#[test]
fn bind_to_a_destination_absent_from_the_image() {
    let d = user_dir("bind-absent");
    let spec = format!("{}:/not/in/the/image", d.display());
    let out = launcher(&[
        "exec",
        "-B",
        &spec,
        &gzip(),
        "/bin/sh",
        "-c",
        "cat /not/in/the/image/hello.txt; echo new > /not/in/the/image/w; cat /not/in/the/image/w",
    ])
    .run();
    assert_eq!(out.ok().stdout, "hello from the host\nnew\n");
    assert_eq!(
        std::fs::read_to_string(d.join("w")).unwrap(),
        "new\n",
        "writes reach the host directory"
    );
}

#[test]
fn read_only_binds_and_lists() {
    let a = user_dir("bind-ro-a");
    let b = user_dir("bind-ro-b");
    let spec = format!("{}:/a:ro,{}:/b", a.display(), b.display());
    let out = launcher(&[
        "exec",
        "--bind",
        &spec,
        &gzip(),
        "/bin/sh",
        "-c",
        "touch /a/x 2>&1; touch /b/x && echo b-ok",
    ])
    .run();
    assert!(out.stdout.contains("Read-only file system"), "{out:?}");
    assert!(out.stdout.contains("b-ok"), "{out:?}");
}

#[test]
fn file_bind_and_bind_over_an_image_file() {
    let d = user_dir("bind-file");
    let spec = format!(
        "{}:/etc/motd-new,{}:/data/tree/f1",
        d.join("hello.txt").display(),
        d.join("hello.txt").display()
    );
    let out = sh_with(&["-B", &spec], "cat /etc/motd-new /data/tree/f1");
    assert_eq!(out, "hello from the host\nhello from the host\n");
}

#[test]
fn bind_through_an_image_symlink_stays_inside() {
    // /data/abs-link -> /data/big: the destination is the image's file, never the host's.
    let d = user_dir("bind-symlink");
    let spec = format!("{}:/data/abs-link", d.join("hello.txt").display());
    assert_eq!(
        sh_with(&["-B", &spec], "cat /data/big"),
        "hello from the host\n"
    );
}

#[test]
fn missing_bind_source_is_an_error() {
    let out = launcher(&["exec", "-B", "/does/not/exist:/x", &gzip(), "/bin/true"]).run();
    assert_eq!(out.code, 255);
    assert!(
        out.stderr.starts_with(
            "launcher: error: bind source '/does/not/exist' does not exist on the host"
        ),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

#[test]
fn bare_image_gets_every_mount_point() {
    // No /etc, /tmp, /home, /proc, /dev in this image at all.
    let out = launcher(&[
        "exec",
        &fixture("bare.sqfs"),
        "/bin/sh",
        "-c",
        "ls /; cat /etc/passwd | grep -c :",
    ])
    .run();
    let o = out.ok().stdout.clone();
    for d in ["dev", "etc", "home", "proc", "sys", "tmp"] {
        assert!(o.lines().any(|l| l == d), "{d} missing: {o}");
    }
}

#[test]
fn contain_hides_host_dirs() {
    let s = setup();
    let marker = format!("/tmp/contain-marker-{}", std::process::id());
    std::fs::write(&marker, "x").unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644)).unwrap();
    let home_file = s.home.join(format!("home-marker-{}", std::process::id()));
    std::fs::write(&home_file, "x").unwrap();
    let script = format!(
        "ls {marker} 2>/dev/null || echo tmp-hidden; ls {} 2>/dev/null || echo home-hidden; ls /dev | tr '\\n' ' '; echo; touch $HOME/w && echo home-writable",
        home_file.display()
    );
    let out = sh_with(&["--contain"], &script);
    assert!(out.contains("tmp-hidden"), "{out}");
    assert!(out.contains("home-hidden"), "{out}");
    assert!(out.contains("home-writable"), "{out}");
    let devs = out.lines().nth(2).unwrap();
    assert!(
        devs.contains("null") && devs.contains("urandom") && devs.contains("shm"),
        "{devs}"
    );
    assert!(!devs.contains("loop"), "minimal /dev: {devs}");
    // Without --contain the same files are visible.
    let out = sh(
        &gzip(),
        &format!("cat {marker}; ls {}", home_file.display()),
    );
    assert!(out.starts_with('x'), "{out}");
    std::fs::remove_file(&marker).unwrap();
    std::fs::remove_file(&home_file).unwrap();
}

#[test]
fn environment_precedence() {
    let out = launcher(&[
        "exec",
        "--env",
        "FROM_FLAG=flag",
        "--env",
        "OVERRIDE_ME=user",
        &gzip(),
        "/bin/sh",
        "-c",
        "echo $HOST_VAR $IMAGE_VAR $OVERRIDE_ME $FROM_FLAG $FORWARDED $PATH",
    ])
    .env("HOST_VAR", "host")
    .env("LAUNCHERENV_FORWARDED", "fwd")
    .env("OVERRIDE_ME", "host")
    .run();
    assert_eq!(
        out.ok().stdout,
        "host from-image user flag fwd /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    let out = launcher(&[
        "exec",
        "--cleanenv",
        &gzip(),
        "/bin/sh",
        "-c",
        "echo ${HOST_VAR:-unset} $IMAGE_VAR $SLURM_JOB_ID",
    ])
    .env("HOST_VAR", "host")
    .env("SLURM_JOB_ID", "77")
    .run();
    assert_eq!(out.ok().stdout, "unset from-image 77\n");
}

#[test]
fn env_file() {
    let s = setup();
    let f = s.scratch.join("env-file");
    std::fs::write(&f, "# comment\nA=1\nexport B=\"two words\"\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = launcher(&[
        "exec",
        "--env-file",
        &f.display().to_string(),
        "--env",
        "A=flag",
        &gzip(),
        "/bin/sh",
        "-c",
        "echo $A $B",
    ])
    .run();
    assert_eq!(out.ok().stdout, "flag two words\n");
    std::fs::write(&f, "not an assignment\n").unwrap();
    let out = launcher(&[
        "exec",
        "--env-file",
        &f.display().to_string(),
        &gzip(),
        "/bin/true",
    ])
    .run();
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("line 1"), "{out:?}");
}

#[test]
fn working_directory() {
    let d = user_dir("cwd-test");
    // The current directory is bound and kept.
    let out = launcher(&["exec", &gzip(), "/bin/sh", "-c", "pwd; cat hello.txt"])
        .cwd(&d)
        .run();
    assert_eq!(
        out.ok().stdout,
        format!("{}\nhello from the host\n", d.display())
    );
    // --pwd chooses it inside.
    assert_eq!(sh_with(&["--pwd", "/data/tree/a"], "pwd"), "/data/tree/a\n");
    // A system directory is not bound; absent from the image, the home is used, with a warning.
    let out = launcher(&["exec", &gzip(), "/bin/sh", "-c", "pwd"])
        .cwd("/usr/share")
        .run();
    assert_eq!(out.ok().stdout, format!("{}\n", setup().home.display()));
    assert!(
        out.stderr
            .contains("warning: '/usr/share' does not exist in the container"),
        "{out:?}"
    );
}

#[test]
fn home_options() {
    let d = user_dir("alt-home");
    let spec = format!("{}:/home/other", d.display());
    assert_eq!(
        sh_with(&["--home", &spec], "echo $HOME; cat ~/hello.txt"),
        "/home/other\nhello from the host\n"
    );
    // --no-home: nothing of the host's home inside. A file of the test's own in the home
    // (dotfiles count: `ls -A`) is seen without the option, so the check can fail. Run from
    // `/` (a system directory, never bound): the current directory is bound like any other,
    // also when it is the home (as Apptainer does).
    let s = setup();
    let marker = s
        .home
        .join(format!("no-home-marker-{}", std::process::id()));
    std::fs::write(&marker, "host home\n").unwrap();
    std::os::unix::fs::chown(&marker, Some(s.uid), Some(s.gid)).unwrap();
    let probe = format!(
        "test -e {} && echo bound; ls -A {} 2>/dev/null | wc -l",
        marker.display(),
        s.home.display()
    );
    let run = |flags: &[&str]| {
        let img = gzip();
        let mut args: Vec<&str> = vec!["exec"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&img, "/bin/sh", "-c", &probe]);
        let out = launcher(&args).cwd("/").run();
        out.ok();
        out.stdout
    };
    let with_home = run(&[]);
    let without = run(&["--no-home"]);
    std::fs::remove_file(&marker).unwrap();
    assert!(
        with_home.starts_with("bound\n"),
        "home not bound by default: {with_home}"
    );
    assert_eq!(without.trim(), "0", "--no-home: the host's home is visible");
}

#[test]
fn home_the_user_cannot_enter_is_no_error() {
    // HOME still naming root's home (0700), as after `sudo -u` or a bare setpriv: the user
    // config there cannot be the user's, so it is as if absent.
    let root_home = std::fs::metadata("/root").unwrap();
    assert_eq!(
        root_home.permissions().mode() & 0o077,
        0,
        "/root must be 0700 here"
    );
    let out = launcher(&["exec", &gzip(), "id", "-u"])
        .env("HOME", "/root")
        .run();
    assert_eq!(out.ok().stdout.trim(), setup().uid.to_string());
}

#[test]
fn run_and_shell() {
    assert_eq!(
        launcher(&["run", &gzip(), "a", "b c"]).run().ok().stdout,
        "runscript args: a b c\n"
    );
    let out = launcher(&["run", &fixture("bare.sqfs")]).run();
    assert_eq!(out.code, 255);
    assert!(out.stderr.contains("has no runscript"), "{out:?}");
    // shell reads commands from stdin.
    let mut c = launcher(&["shell", &gzip()]).command();
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo in-shell $0\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-shell /bin/sh\n");
}

#[test]
fn inspect_text_and_json() {
    let img = fixture("singularityce-busybox-amd64.sif");
    let out = launcher(&["inspect", &img]).run();
    let o = out.ok().stdout.clone();
    assert!(o.contains("Squashfs PrimSys amd64"), "{o}");
    assert!(
        o.contains("org.label-schema.usage.singularity.deffile.from: busybox:1.33.1"),
        "{o}"
    );
    let out = launcher(&["inspect", "--json", &img]).run();
    let v: serde_json::Value = serde_json::from_str(&out.ok().stdout).unwrap();
    assert_eq!(v["squashfs"]["offset"], 45056);
    assert_eq!(v["sif"]["descriptors"][3]["type"], "Partition");
    let out = launcher(&["inspect", "--json", &gzip()]).run();
    let v: serde_json::Value = serde_json::from_str(&out.ok().stdout).unwrap();
    assert_eq!(v["format"], "SquashFS");
    assert_eq!(v["squashfs"]["compressor"], "gzip");
}

#[test]
fn bad_images_fail_with_one_clear_line() {
    let s = setup();
    let good = std::fs::read(gzip()).unwrap();
    let truncated = s.scratch.join("truncated.sqfs");
    std::fs::write(&truncated, &good[..good.len() / 3]).unwrap();
    let mut bad_magic = good[..4096].to_vec();
    bad_magic[..4].copy_from_slice(b"nope");
    let wrong = s.scratch.join("wrong-magic.sqfs");
    std::fs::write(&wrong, &bad_magic).unwrap();
    // Copied into the scratch directory: the test user may not be able to enter the checkout.
    let no_squash = s.scratch.join("one-object-generic-json.sif");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/sif/one-object-generic-json.sif"
        ),
        &no_squash,
    )
    .unwrap();
    for p in [&truncated, &wrong, &no_squash] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let cases: Vec<(String, &str)> = vec![
        (truncated.display().to_string(), "truncated"),
        (
            wrong.display().to_string(),
            "neither a SIF file nor a SquashFS image",
        ),
        (no_squash.display().to_string(), "no primary partition"),
        ("/no/such/image.sif".into(), "not found"),
        (s.scratch.display().to_string(), "directory"),
    ];
    for (img, want) in cases {
        let out = launcher(&["exec", &img, "/bin/true"]).run();
        assert_eq!(out.code, 255, "{img}: {out:?}");
        assert!(
            out.stderr.starts_with("launcher: error: "),
            "{img}: {out:?}"
        );
        assert!(out.stderr.contains(&img), "error names the file: {out:?}");
        assert!(
            out.stderr.to_lowercase().contains(&want.to_lowercase()),
            "{img}: want '{want}': {out:?}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{img}: {out:?}");
    }
}

fn sh_with(flags: &[&str], script: &str) -> String {
    let img = gzip();
    let mut args: Vec<&str> = vec!["exec"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[&img, "/bin/sh", "-c", script]);
    let out = launcher(&args).run();
    out.ok();
    out.stdout
}
