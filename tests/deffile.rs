//! End-to-end: `launcher build OUT app.def` as the unprivileged user. %post runs as fake root
//! (docs/building.md): apt-get from Debian's archive into a Debian 12 base made by
//! tests/setup-debian.sh, useradd, and the images checked with exec, run and inspect. Bad
//! definition files fail with one line, leave no image and no staging directory.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh directory for one test, owned by the test user (definition files, outputs).
fn workdir(name: &str) -> PathBuf {
    let s = setup();
    let d = s.scratch.join(format!("def-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(s.uid), Some(s.gid)).unwrap();
    d
}

fn write_as_user(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    let s = setup();
    std::os::unix::fs::chown(p, Some(s.uid), Some(s.gid)).unwrap();
}

/// The Debian 12 base (mmdebstrap minbase), squashed as root.
fn debian_base() -> String {
    setup();
    let base = format!("{}-debian/bookworm.sqfs", setup().fixtures.display());
    assert!(
        Path::new(&base).is_file(),
        "{base} is missing: tests/setup-debian.sh makes it"
    );
    base
}

/// `launcher build [extra] OUT DEF` in `dir`, as the test user.
fn build(dir: &Path, out: &str, def: &str, extra: &[&str]) -> Out {
    let mut args = vec!["build"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[out, def]);
    launcher(&args).cwd(dir).run()
}

/// Staging directories the test user left under /tmp (its $TMPDIR): those of builds whose
/// process is gone (`launcher-build-PID-...`; tests running at the same time have theirs).
fn leftover_staging() -> Vec<String> {
    let uid = setup().uid;
    std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("launcher-build-")
                .and_then(|rest| rest.split('-').next())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .filter(|e| e.metadata().map(|m| m.uid() == uid).unwrap_or(false))
        .map(|e| e.path().display().to_string())
        .collect()
}

/// Everything in `dir` but the inputs: what a failed build left behind.
fn outputs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".def") && n != "host-file.txt")
        .collect();
    v.sort();
    v
}

#[test]
fn debian_apt_get_in_post_as_fake_root() {
    let base = debian_base();
    let dir = workdir("debian");
    write_as_user(&dir.join("host-file.txt"), "copied from the host\n");
    write_as_user(
        &dir.join("hello.def"),
        &format!(
            "Bootstrap: localimage
From: {base}

%arguments
    PKG=hello

%files
    host-file.txt /opt/from-host.txt

%environment
    export GREETING={{{{ GREETING }}}}

%post
    apt-get update
    apt-get install -y --no-install-recommends {{{{ PKG }}}}
    useradd builder
    # chown to a user the namespace cannot map: faked, and root's in the image
    chown builder /opt/from-host.txt
    id -u > /post-uid

%runscript
    echo \"runscript args: $*\"
    exec hello

%labels
    Maintainer tests
    Purpose deffile

%test
    hello | grep -q 'Hello, world!'

%help
    Says hello.
"
        ),
    );
    let out = build(
        &dir,
        "hello.sif",
        "hello.def",
        &["--compress", "lz4", "--build-arg", "GREETING=bonjour"],
    );
    out.ok();
    assert!(out.stderr.contains("running %test"), "{out:?}");
    let img = dir.join("hello.sif").display().to_string();
    let hello = launcher(&["exec", &img, "hello"]).run();
    assert_eq!(hello.ok().stdout, "Hello, world!\n");
    let run = launcher(&["run", &img, "one", "two three"]).run();
    assert_eq!(
        run.ok().stdout,
        "runscript args: one two three\nHello, world!\n"
    );
    assert_eq!(sh(&img, "echo $GREETING"), "bonjour\n");
    assert_eq!(
        sh(&img, "cat /opt/from-host.txt /post-uid"),
        "copied from the host\n0\n"
    );
    assert!(sh(&img, "grep ^builder: /etc/passwd").starts_with("builder:x:"));
    let labels = launcher(&["inspect", "--labels", &img]).run();
    let labels = &labels.ok().stdout;
    assert!(labels.contains("Maintainer: tests\n"), "{labels}");
    assert!(
        labels.contains("org.label-schema.usage.singularity.deffile.bootstrap: localimage"),
        "{labels}"
    );
    let def = launcher(&["inspect", "--deffile", &img]).run();
    // The definition as built: build arguments substituted.
    assert!(
        def.ok().stdout.contains("export GREETING=bonjour"),
        "{def:?}"
    );
    assert!(def
        .stdout
        .contains("apt-get install -y --no-install-recommends hello"));
    let rs = launcher(&["inspect", "--runscript", &img]).run();
    assert!(rs.ok().stdout.starts_with("#!/bin/sh\n\n"), "{rs:?}");
    let help = launcher(&["inspect", "--helpfile", &img]).run();
    assert!(help.ok().stdout.contains("Says hello."), "{help:?}");
    // Every file root's, as mksquashfs -all-root writes them.
    let sif = std::fs::read(&img).unwrap();
    let offset = sif.windows(4).position(|w| w == b"hsqs").unwrap();
    let listing = Command::new("unsquashfs")
        .args(["-o", &offset.to_string(), "-lln", "-d", ""])
        .arg(&img)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let owners: std::collections::BTreeSet<&str> = listing
        .lines()
        .filter(|l| l.contains('/'))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        owners.into_iter().collect::<Vec<_>>(),
        vec!["0/0"],
        "{listing}"
    );
    assert!(listing.contains("/.singularity.d/Singularity"));
    assert!(leftover_staging().is_empty(), "{:?}", leftover_staging());
}

/// A def file over the small busybox image (fast: no network, no big tree).
fn busybox_def(body: &str) -> String {
    format!(
        "Bootstrap: localimage\nFrom: {}\n\n{body}",
        fixture("busybox-gzip.sqfs")
    )
}

#[test]
fn failing_test_fails_the_build_with_its_output() {
    let dir = workdir("failing-test");
    write_as_user(
        &dir.join("t.def"),
        &busybox_def(
            "%post\n    echo built > /built\n\n%test\n    echo test-output-marker\n    exit 3\n",
        ),
    );
    let out = build(&dir, "t.sif", "t.def", &["--compress", "lz4"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("test-output-marker"), "{out:?}");
    let last = out.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("launcher: error: ")
            && last.contains("t.def:7: %test failed (exit status 3)"),
        "{out:?}"
    );
    assert_eq!(outputs(&dir), Vec::<String>::new());
    assert!(leftover_staging().is_empty(), "{:?}", leftover_staging());
    // --notest builds it anyway.
    build(&dir, "t.sif", "t.def", &["--compress", "lz4", "--notest"]).ok();
    assert_eq!(
        sh(&dir.join("t.sif").display().to_string(), "cat /built"),
        "built\n"
    );
}

#[test]
fn bad_definition_files_fail_with_one_line() {
    let dir = workdir("bad");
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown-section",
            busybox_def("%post\n    true\n%frobnicate\n    x\n"),
            "unknown-section.def:6: %frobnicate: unknown section",
        ),
        (
            "missing-from",
            "Bootstrap: localimage\n\n%post\n    true\n".to_string(),
            "missing-from.def:1: header: 'Bootstrap: localimage' needs a 'From:' header",
        ),
        (
            "post-fails",
            busybox_def("%post\n    echo before\n    false\n    echo never\n"),
            "post-fails.def:4: %post failed (exit status 1)",
        ),
        (
            "missing-file",
            busybox_def("%files\n    /no/such/file /opt/x\n"),
            "missing-file.def:5: %files: '/no/such/file': no such file or directory",
        ),
        (
            "missing-glob",
            busybox_def("%files\n    /no/such/*.txt /opt/\n"),
            "missing-glob.def:5: %files: '/no/such/*.txt': no file matches the pattern",
        ),
        (
            "app-section",
            busybox_def("%appinstall foo\n    make\n"),
            "app-section.def:4: %appinstall: SCIF app sections",
        ),
        (
            "undefined-arg",
            busybox_def("%post\n    echo {{ NOPE }}\n"),
            "undefined-arg.def:5: %post: build argument 'NOPE' is not defined",
        ),
    ];
    for (name, text, want) in cases {
        let def = format!("{name}.def");
        write_as_user(&dir.join(&def), text);
        let out = build(&dir, &format!("{name}.sif"), &def, &["--compress", "lz4"]);
        assert_ne!(out.code, 0, "{name}: {out:?}");
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("launcher: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{name}: {out:?}");
        assert!(errors[0].contains(want), "{name}: want {want:?}\n{out:?}");
        assert!(
            out.stdout.is_empty() || *name == "post-fails",
            "{name}: {out:?}"
        );
    }
    assert_eq!(outputs(&dir), Vec::<String>::new());
    assert!(leftover_staging().is_empty(), "{:?}", leftover_staging());
}

#[test]
fn two_stages_and_fake_root_calls() {
    let dir = workdir("stages");
    let base = fixture("busybox-gzip.sqfs");
    write_as_user(
        &dir.join("two.def"),
        &format!(
            "Bootstrap: localimage
From: {base}
Stage: build

%post
    mkdir -p /out
    echo \"from stage one as $(id -u)\" > /out/artifact
    # what package managers do, which an unprivileged user cannot: all succeed, faked
    chown 1234:5678 /out/artifact
    mknod /dev-node c 1 3 && test ! -e /dev-node
    mkfifo /a-fifo && test -p /a-fifo

Bootstrap: localimage
From: {base}
Stage: final

%files from build
    /out/artifact /opt/artifact
    /o?t/*fact /opt/glob/

%runscript
    cat /opt/artifact
"
        ),
    );
    let out = build(&dir, "two.sqfs", "two.def", &["--compress", "lz4"]);
    out.ok();
    let img = dir.join("two.sqfs").display().to_string();
    assert_eq!(
        launcher(&["run", &img]).run().ok().stdout,
        "from stage one as 0\n"
    );
    // A wildcard source is expanded in the earlier stage's root.
    assert_eq!(sh(&img, "cat /opt/glob/artifact"), "from stage one as 0\n");
    // The first stage's own files are not in the result.
    assert_eq!(sh(&img, "test -e /out/artifact || echo absent"), "absent\n");
}

#[test]
fn docker_archive_bootstrap_keeps_the_oci_environment() {
    let dir = workdir("oci");
    write_as_user(
        &dir.join("oci.def"),
        &format!(
            "Bootstrap: docker-archive\nFrom: {}\n\n%post\n    id -un > /post-user\n\n\
             %environment\n    export FROM_DEF=yes\n",
            fixture("busybox-docker.tar")
        ),
    );
    build(&dir, "oci.sif", "oci.def", &["--compress", "lz4"]).ok();
    let img = dir.join("oci.sif").display().to_string();
    // The OCI config's Env, then %environment appended; the entrypoint stays the runscript.
    assert_eq!(
        sh(&img, "cat /post-user; echo $OCI_VAR $FROM_DEF"),
        "root\nfrom-oci yes\n"
    );
    assert_eq!(
        launcher(&["run", &img, "x", "y"]).run().ok().stdout,
        "x y\n"
    );
}

/// Entries under `dir` not owned by the test user (a sandbox is the caller's, every file).
fn not_owned_by_test_user(dir: &Path) -> Vec<String> {
    let uid = setup().uid;
    let out = Command::new("find")
        .arg(dir)
        .args(["-not", "-uid", &uid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn sandbox_from_a_def_file_changed_as_fake_root_then_built_into_a_sif() {
    let base = debian_base();
    let dir = workdir("sandbox-debian");
    write_as_user(
        &dir.join("sb.def"),
        &format!(
            "Bootstrap: localimage\nFrom: {base}\n\n%post\n    echo built > /built\n\n\
             %runscript\n    exec hello \"$@\"\n"
        ),
    );
    let out = build(&dir, "sb", "sb.def", &["--sandbox"]);
    out.ok();
    let sb = dir.join("sb");
    assert_eq!(
        std::fs::read_to_string(sb.join("built")).unwrap(),
        "built\n"
    );
    assert!(sb.join(".singularity.d/Singularity").is_file());
    assert_eq!(not_owned_by_test_user(&sb), Vec::<String>::new());
    let sbs = sb.display().to_string();
    // A sandbox runs read-only without --writable.
    let ro = launcher(&["exec", &sbs, "touch", "/x"]).run();
    assert_ne!(ro.code, 0, "{ro:?}");
    // apt-get as fake root; the package stays in the directory.
    let apt = launcher(&[
        "exec",
        "--fakeroot",
        "--writable",
        &sbs,
        "/bin/sh",
        "-c",
        "apt-get update && apt-get install -y --no-install-recommends hello && id -u",
    ])
    .run();
    assert!(apt.ok().stdout.ends_with("\n0\n"), "{apt:?}");
    let hello = launcher(&["exec", &sbs, "hello"]).run();
    assert_eq!(hello.ok().stdout, "Hello, world!\n");
    let run = launcher(&["run", "--fakeroot", "--writable", &sbs, "-g", "hi"]).run();
    assert_eq!(run.ok().stdout, "hi\n");
    assert_eq!(not_owned_by_test_user(&sb), Vec::<String>::new());
    // Sandbox → SIF → exec.
    build(&dir, "sb.sif", "sb/", &["--compress", "lz4"]).ok();
    let img = dir.join("sb.sif").display().to_string();
    assert_eq!(
        launcher(&["exec", &img, "hello"]).run().ok().stdout,
        "Hello, world!\n"
    );
    assert_eq!(sh(&img, "cat /built"), "built\n");
    // An existing, non-empty sandbox is kept unless --force.
    let again = build(&dir, "sb", "sb.def", &["--sandbox"]);
    assert_ne!(again.code, 0, "{again:?}");
    assert!(
        again
            .stderr
            .contains("exists and is not empty; use --force"),
        "{again:?}"
    );
    assert!(sb.join("usr/bin/hello").is_file());
    build(&dir, "sb", "sb.def", &["--sandbox", "--force"]).ok();
    assert!(!sb.join("usr/bin/hello").exists());
    assert!(leftover_staging().is_empty(), "{:?}", leftover_staging());
}

#[test]
fn sandboxes_from_images_and_refusals() {
    let dir = workdir("sandbox-sources");
    // From a SquashFS image, a docker archive, and a failing definition file.
    build(
        &dir,
        "from-sqfs",
        &fixture("busybox-gzip.sqfs"),
        &["--sandbox"],
    )
    .ok();
    let sqfs_sb = dir.join("from-sqfs").display().to_string();
    assert_eq!(sh(&sqfs_sb, "echo ok"), "ok\n");
    let archive = format!("docker-archive:{}", fixture("busybox-docker.tar"));
    build(&dir, "from-oci", &archive, &["--sandbox"]).ok();
    let oci_sb = dir.join("from-oci").display().to_string();
    assert_eq!(sh(&oci_sb, "echo $OCI_VAR"), "from-oci\n");
    write_as_user(
        &dir.join("fails.def"),
        &busybox_def("%post\n    touch /partial\n    false\n"),
    );
    let failed = build(&dir, "failed", "fails.def", &["--sandbox"]);
    assert_ne!(failed.code, 0, "{failed:?}");
    assert!(
        failed.stderr.contains("fails.def:4: %post failed"),
        "{failed:?}"
    );
    assert!(!dir.join("failed").exists());
    // Only the two sandboxes: no staging left beside them.
    assert_eq!(outputs(&dir), vec!["from-oci", "from-sqfs"]);
    // Fake root changes a sandbox from a SquashFS image too (busybox: no apt).
    let touched = launcher(&[
        "exec",
        "--fakeroot",
        "--writable",
        &sqfs_sb,
        "/bin/sh",
        "-c",
        "echo kept > /kept; chown 1234 /kept; id -u",
    ])
    .run();
    assert_eq!(touched.ok().stdout, "0\n");
    assert_eq!(sh(&sqfs_sb, "cat /kept"), "kept\n");
    // --writable alone: the caller's own uid inside, the writes kept in the directory.
    let mine = launcher(&[
        "exec",
        "--writable",
        &sqfs_sb,
        "/bin/sh",
        "-c",
        "echo mine > /mine; id -u",
    ])
    .run();
    assert_eq!(mine.ok().stdout, format!("{}\n", setup().uid));
    assert_eq!(
        std::fs::read_to_string(dir.join("from-sqfs/mine")).unwrap(),
        "mine\n"
    );
    // Exit status of the command.
    let status = launcher(&["exec", "-f", "-w", &sqfs_sb, "/bin/sh", "-c", "exit 7"]).run();
    assert_eq!(status.code, 7, "{status:?}");
    // Refusals: one line each, saying what to do instead.
    let img = fixture("busybox-gzip.sqfs");
    let cases: &[(&[&str], &str)] = &[
        (&["--fakeroot", &img], "launcher build --sandbox DIR"),
        (
            &["--fakeroot", "--writable", &img],
            "is read-only: --writable needs a sandbox directory",
        ),
        (&["--writable", &img], "is read-only"),
        (&["--fakeroot", &sqfs_sb], "needs --writable"),
        (
            &["-f", "-w", "-B", "/tmp", &sqfs_sb],
            "--bind is not supported with --fakeroot",
        ),
    ];
    for (opts, want) in cases {
        let mut args = vec!["exec"];
        args.extend_from_slice(opts);
        args.push("true");
        let out = launcher(&args).run();
        assert_eq!(out.code, 255, "{opts:?}: {out:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{opts:?}: {out:?}");
        assert!(lines[0].contains(want), "{opts:?}: want {want:?}: {out:?}");
    }
}

#[test]
fn files_sources_with_wildcards() {
    let dir = workdir("globs");
    for f in ["a.txt", "b.txt", "c.dat", ".hidden.txt"] {
        write_as_user(&dir.join(f), f);
    }
    write_as_user(
        &dir.join("g.def"),
        &busybox_def("%files\n    *.txt /opt/txt\n    [c].dat /opt/one.dat\n    ?.txt\n"),
    );
    build(&dir, "g.sif", "g.def", &["--compress", "lz4"]).ok();
    let img = dir.join("g.sif").display().to_string();
    // Several matches go into the destination as a directory; a hidden file is not matched
    // by `*`; one match is copied as a plain source is; no destination: the same path
    // (a relative one under /).
    assert_eq!(
        sh(
            &img,
            "ls -A /opt/txt; cat /opt/one.dat; echo; ls /a.txt /b.txt"
        ),
        "a.txt\nb.txt\nc.dat\n/a.txt\n/b.txt\n"
    );
}

/// `unsquashfs -lls` of an image: one line per entry, its type and mode first.
fn listing(img: &Path) -> String {
    let out = Command::new("unsquashfs")
        .args(["-lls", "-d", ""])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The unpacked bases in a cache directory (`bases/KEY`), and anything else there but the
/// trees' locks (a temporary tree left behind).
fn cached_bases(cache: &Path) -> (Vec<String>, Vec<String>) {
    let (mut trees, mut other) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(cache.join("bases")).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".lock") {
            continue;
        }
        if n.starts_with("local-") || n.starts_with("docker-") {
            trees.push(n);
        } else {
            other.push(n);
        }
    }
    trees.sort();
    (trees, other)
}

/// A rebuild on the same base reuses its unpacked tree (under an overlay) instead of
/// unpacking it again; what %post changes or deletes stays in its own build; the images are
/// the same as from a fresh unpack; a changed base file is a new base.
#[test]
fn rebuilds_reuse_the_unpacked_base_without_leaking_changes() {
    let dir = workdir("reuse");
    let cache = dir.join("cache");
    let c = cache.display().to_string();
    let base = dir.join("base.sqfs");
    std::fs::copy(fixture("busybox-gzip.sqfs"), &base).unwrap();
    let s = setup();
    std::os::unix::fs::chown(&base, Some(s.uid), Some(s.gid)).unwrap();
    write_as_user(
        &dir.join("r.def"),
        "Bootstrap: localimage\nFrom: base.sqfs\n\n%post\n    echo leaked >> /etc/passwd\n    \
         rm /bin/vi\n    rm -r /usr\n    mkdir -p /opt/new && echo new > /opt/new/file\n\n\
         %test\n    grep -c leaked /etc/passwd\n",
    );
    let run = |args: &[&str]| {
        let mut a = vec!["build", "--compress", "lz4", "--reproducible"];
        a.extend_from_slice(args);
        launcher(&a).cwd(&dir).env("LAUNCHER_CACHEDIR", &c).run()
    };
    let first = run(&["one.sqfs", "r.def"]);
    first.ok();
    assert!(
        first
            .stderr
            .contains("base: unpacked into the cache local-"),
        "{first:?}"
    );
    // %test ran on the overlay too, and saw the append once.
    assert!(first.stdout.starts_with("1\n"), "{first:?}");
    let second = run(&["two.sqfs", "r.def"]);
    second.ok();
    assert!(
        second
            .stderr
            .contains("base: reused the cached tree local-"),
        "{second:?}"
    );
    assert!(second.stdout.starts_with("1\n"), "{second:?}");
    let fresh = run(&["--disable-cache", "fresh.sqfs", "r.def"]);
    fresh.ok();
    assert!(!fresh.stderr.contains("base:"), "{fresh:?}");
    // Byte for byte the same image, reused or not.
    let bytes = |n: &str| std::fs::read(dir.join(n)).unwrap();
    assert!(bytes("one.sqfs") == bytes("two.sqfs"));
    assert!(bytes("one.sqfs") == bytes("fresh.sqfs"));
    // The cached tree is the base as unpacked: nothing %post did reached it.
    let (trees, other) = cached_bases(&cache);
    assert_eq!((trees.len(), other.len()), (1, 0), "{trees:?} {other:?}");
    let tree = cache.join("bases").join(&trees[0]).join("root");
    let passwd = std::fs::read_to_string(tree.join("etc/passwd")).unwrap();
    assert!(!passwd.contains("leaked"));
    assert!(tree.join("bin/vi").exists() && tree.join("usr").is_dir());
    assert!(!tree.join("opt/new").exists());
    // Deleted files are absent from the image, and the overlay's whiteouts (character
    // devices 0:0) did not come along; no other special file appeared.
    let l = listing(&dir.join("two.sqfs"));
    assert!(!l.contains("/bin/vi\n") && !l.contains(" /usr"), "{l}");
    assert!(l.contains(" /opt/new/file\n"), "{l}");
    assert!(
        !l.lines().any(|x| x.starts_with('c') || x.starts_with('b')),
        "{l}"
    );
    assert_eq!(
        sh(
            &dir.join("two.sqfs").display().to_string(),
            "grep -c leaked /etc/passwd"
        ),
        "1\n"
    );
    // A different file under the same name, with the old time: a new base, not the old tree.
    let mtime = std::fs::metadata(&base).unwrap().modified().unwrap();
    std::fs::copy(fixture("busybox-zstd.sqfs"), &base).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&base)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let changed = run(&["three.sqfs", "r.def"]);
    changed.ok();
    assert!(
        changed
            .stderr
            .contains("base: unpacked into the cache local-"),
        "{changed:?}"
    );
    assert_eq!(cached_bases(&cache).0.len(), 2);
    // Listed, and removed, by `launcher cache`.
    let list = launcher(&["cache", "list"])
        .env("LAUNCHER_CACHEDIR", &c)
        .run();
    list.ok();
    assert!(list.stdout.contains("2 unpacked bases"), "{list:?}");
    assert!(list.stdout.contains("localimage base.sqfs"), "{list:?}");
    let clean = launcher(&["cache", "clean", "--force"])
        .env("LAUNCHER_CACHEDIR", &c)
        .run();
    clean.ok();
    assert!(
        clean.stdout.contains("removed 2 unpacked bases"),
        "{clean:?}"
    );
    assert_eq!(cached_bases(&cache), (vec![], vec![]));
    assert!(leftover_staging().is_empty(), "{:?}", leftover_staging());
}

/// Two builds of one base at once, on an empty cache: both succeed, one tree is kept.
#[test]
fn concurrent_builds_of_one_base_share_one_cached_tree() {
    let dir = workdir("reuse-concurrent");
    let cache = dir.join("cache");
    let c = cache.display().to_string();
    write_as_user(
        &dir.join("c.def"),
        &busybox_def("%post\n    echo $$ > /pid\n"),
    );
    let children: Vec<_> = ["a.sqfs", "b.sqfs"]
        .iter()
        .map(|out| {
            launcher(&["build", "--compress", "lz4", out, "c.def"])
                .cwd(&dir)
                .env("LAUNCHER_CACHEDIR", &c)
                .spawn()
        })
        .collect();
    for ch in children {
        let out = ch.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let (trees, other) = cached_bases(&cache);
    assert_eq!((trees.len(), other.len()), (1, 0), "{trees:?} {other:?}");
    for img in ["a.sqfs", "b.sqfs"] {
        let img = dir.join(img).display().to_string();
        assert_eq!(sh(&img, "test -s /pid && echo ok"), "ok\n");
    }
}

/// Where the overlay cannot be mounted (here: a cache path overlayfs options cannot name),
/// the cached tree is copied; where there is no cache to keep it in, the base is unpacked
/// afresh. Either way the build works and the cached tree stays as it was.
#[test]
fn without_an_overlay_or_a_cache_the_base_is_copied_or_unpacked() {
    let dir = workdir("reuse-fallback");
    let cache = dir.join("cache,with-comma");
    let c = cache.display().to_string();
    write_as_user(
        &dir.join("f.def"),
        &busybox_def("%post\n    echo changed >> /etc/passwd\n    rm /bin/vi\n"),
    );
    for (out, cachedir, want) in [
        ("a.sqfs", c.as_str(), "unpacked into the cache local-"),
        ("b.sqfs", c.as_str(), "reused the cached tree local-"),
        (
            "c.sqfs",
            "/proc/no-such-cache",
            "no cache to keep the unpacked base in",
        ),
    ] {
        let o = launcher(&["build", "--compress", "lz4", out, "f.def"])
            .cwd(&dir)
            .env("LAUNCHER_CACHEDIR", cachedir)
            .run();
        o.ok();
        assert!(o.stderr.contains(want), "{o:?}");
        if cachedir == c {
            assert!(o.stderr.contains("no overlay on it"), "{o:?}");
        }
        let img = dir.join(out).display().to_string();
        assert_eq!(
            sh(
                &img,
                "grep -c changed /etc/passwd; test -e /bin/vi || echo gone"
            ),
            "1\ngone\n"
        );
    }
    let (trees, _) = cached_bases(&cache);
    let tree = cache.join("bases").join(&trees[0]).join("root");
    assert!(tree.join("bin/vi").exists());
    assert!(!std::fs::read_to_string(tree.join("etc/passwd"))
        .unwrap()
        .contains("changed"));
}
