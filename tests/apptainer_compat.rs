//! Apptainer's spelling works: its environment variables (`APPTAINER_<KEY>`, falling back to
//! `SINGULARITY_<KEY>`; `APPTAINERENV_NAME`), its common flags (-C, --cwd, -H, -u, -q, -s,
//! -v, --no-mount, --env A=1,B=2) and the variables runscripts test inside (issue 17).

mod common;
use common::*;

fn img() -> String {
    fixture("busybox-gzip.sqfs")
}

/// A directory the test user can read, holding `x` with `content`.
fn data_dir(name: &str, content: &str) -> String {
    let d = setup().scratch.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("x"), content).unwrap();
    d.display().to_string()
}

#[test]
fn bind_variables_and_flags_add_up() {
    let a = data_dir("app-bind-a", "from A");
    let b = data_dir("app-bind-b", "from B");
    let c = data_dir("app-bind-c", "from C");
    let out = launcher(&[
        "exec",
        "-B",
        &format!("{c}:/opt/c"),
        &img(),
        "/bin/sh",
        "-c",
        "cat /opt/a/x /opt/b/x /opt/c/x",
    ])
    .env("APPTAINER_BIND", &format!("{a}:/opt/a:ro"))
    .env("SINGULARITY_BINDPATH", &format!("{b}:/opt/b"))
    .run();
    out.ok();
    assert_eq!(out.stdout, "from Afrom Bfrom C");
    // APPTAINER_ wins over SINGULARITY_ for the same key.
    let out = launcher(&["exec", &img(), "cat", "/opt/x/x"])
        .env("APPTAINER_BIND", &format!("{a}:/opt/x"))
        .env("SINGULARITY_BIND", &format!("{b}:/opt/x"))
        .run();
    out.ok();
    assert_eq!(out.stdout, "from A");
}

#[test]
fn env_prefixes_and_env_lists() {
    let out = launcher(&[
        "exec",
        "--env",
        "A=1,B=2",
        "--env",
        "L=x,y",
        &img(),
        "/bin/sh",
        "-c",
        "echo $FOO $BAR $A $B $L; echo $PATH; echo $APPTAINER_CONTAINER $SINGULARITY_NAME",
    ])
    .env("APPTAINERENV_FOO", "foo")
    .env("SINGULARITYENV_BAR", "bar")
    .env("APPTAINERENV_PREPEND_PATH", "/first")
    .run();
    out.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "foo bar 1 2 x,y");
    assert!(lines[1].starts_with("/first:"), "{}", lines[1]);
    assert_eq!(
        lines[2],
        format!("{} busybox-gzip.sqfs", img()),
        "{}",
        out.stdout
    );
}

#[test]
fn containall_by_flag_and_by_variable() {
    let probe = "ls -A /tmp | wc -l; echo ${SECRET:-unset}";
    // A file in the host's /tmp that a contained /tmp must not show.
    let marker = std::path::Path::new("/tmp").join(format!("app-marker-{}", std::process::id()));
    std::fs::write(&marker, "x").unwrap();
    for (args, var) in [
        (vec!["exec", "-C"], None),
        (vec!["exec"], Some(("APPTAINER_CONTAINALL", "1"))),
        (vec!["exec"], Some(("SINGULARITY_CONTAINALL", "yes"))),
    ] {
        let mut full = args.clone();
        let image = img();
        full.extend([image.as_str(), "/bin/sh", "-c", probe]);
        let mut l = launcher(&full).env("SECRET", "s");
        if let Some((k, v)) = var {
            l = l.env(k, v);
        }
        let out = l.run();
        out.ok();
        assert_eq!(out.stdout, "0\nunset\n", "{args:?} {var:?}");
    }
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn cwd_home_userns_and_no_mount() {
    let s = setup();
    let home = data_dir("app-home", "h");
    let out = launcher(&[
        "exec",
        "-u",
        "--cwd",
        "/etc",
        "-H",
        &format!("{home}:/home/inside"),
        &img(),
        "/bin/sh",
        "-c",
        "pwd; echo $HOME; cat ~/x",
    ])
    .run();
    out.ok();
    assert_eq!(out.stdout, "/etc\n/home/inside\nh");
    // --no-mount home,tmp: neither the home nor the host's /tmp is there.
    std::fs::write(s.home.join(".app-no-mount"), "x").unwrap();
    let marker = format!("/tmp/app-no-mount-{}", std::process::id());
    std::fs::write(&marker, "x").unwrap();
    let check = format!(
        "test -e {}/.app-no-mount && echo home; test -e {marker} && echo tmp; echo done",
        s.home.display()
    );
    let out = launcher(&[
        "exec",
        "--no-mount",
        "home,tmp",
        &img(),
        "/bin/sh",
        "-c",
        &check,
    ])
    .cwd("/")
    .run();
    out.ok();
    assert_eq!(out.stdout, "done\n");
    let out = launcher(&["exec", &img(), "/bin/sh", "-c", &check])
        .cwd("/")
        .run();
    out.ok();
    assert_eq!(out.stdout, "home\ntmp\ndone\n", "the control sees both");
    let _ = std::fs::remove_file(&marker);
    let out = launcher(&["exec", "--no-mount", "proc", &img(), "/bin/true"]).run();
    assert_eq!(out.code, 255);
    assert!(
        out.stderr.contains("--no-mount proc: not supported"),
        "{out:?}"
    );
}

#[test]
fn quiet_silent_and_verbose() {
    // A warning: HOME names a directory the host does not have, so no home is bound.
    let warns = |pre: &[&str]| {
        let mut args: Vec<&str> = pre.to_vec();
        let image = img();
        args.extend(["exec", image.as_str(), "/bin/true"]);
        let out = launcher(&args)
            .env("HOME", "/nonexistent-home")
            .cwd("/")
            .run();
        out.ok();
        out.stderr.contains("launcher: warning:")
    };
    assert!(warns(&[]), "the control warns");
    assert!(warns(&["-v"]));
    assert!(!warns(&["-q"]));
    assert!(!warns(&["-s"]));
}

#[test]
fn a_bad_boolean_names_the_variable() {
    let out = launcher(&["exec", &img(), "/bin/true"])
        .env("APPTAINER_CONTAIN", "maybe")
        .run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("APPTAINER_CONTAIN='maybe'"), "{out:?}");
}

#[test]
fn inspect_sections_as_apptainer_prints_them() {
    let sif = fixture("singularityce-busybox-amd64.sif");
    let out = launcher(&["inspect", "--labels", &sif]).run();
    out.ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "org.label-schema.usage.singularity.deffile.from: busybox:1.33.1"),
        "{out:?}"
    );
    let out = launcher(&["inspect", "--deffile", &sif]).run();
    out.ok();
    assert_eq!(out.stdout, "BootStrap: docker\nFrom: busybox:1.33.1\n");
    let out = launcher(&["inspect", "-r", &sif]).run();
    out.ok();
    assert!(out.stdout.starts_with("#!/bin/sh"), "{out:?}");
    // Apptainer's JSON shape, alone with -j and a section, and inside our own --json.
    let out = launcher(&["inspect", "-j", "--labels", "--runscript", &sif]).run();
    out.ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["type"], "container");
    assert_eq!(
        v["data"]["attributes"]["labels"]["org.label-schema.build-arch"],
        "amd64"
    );
    assert!(v["data"]["attributes"]["runscript"].is_string());
    let out = launcher(&["inspect", "--json", &sif]).run();
    out.ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["type"], "container");
    assert_eq!(v["format"], "SIF", "our own report is still there");
    assert!(v["data"]["attributes"]["labels"].is_object());
}

#[test]
fn shell_completion_and_manual_page() {
    let out = launcher(&["completion", "bash"]).run();
    out.ok();
    let script = setup().scratch.join("launcher.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(check.success(), "bash -n rejects the completion script");
    assert!(out.stdout.contains("exec") && out.stdout.contains("--containall"));
    let man = launcher(&["man"]).run();
    man.ok();
    assert!(
        man.stdout.contains(".TH launcher 1"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
}

/// An image whose `/.singularity.d/env/90-environment.sh` does what conda's and spack's
/// activation do (source another file, `if`, `$(...)`, functions, `unset`) and prints.
fn activating_image(name: &str, script: &str) -> String {
    let t = busybox_tree(&format!("{name}-tree"));
    let env = t.join(".singularity.d/env");
    std::fs::create_dir_all(&env).unwrap();
    std::fs::write(env.join("90-environment.sh"), script).unwrap();
    // Apptainer's own scripts, as every image it builds carries them: read without a shell.
    std::fs::write(env.join("99-base.sh"), "if [ -z \"$LD_LIBRARY_PATH\" ]; then\n    LD_LIBRARY_PATH=/.singularity.d/libs\nfi\nexport LD_LIBRARY_PATH\n").unwrap();
    std::fs::create_dir_all(t.join("opt/tool/bin")).unwrap();
    std::fs::write(
        t.join("opt/tool/activate"),
        "PATH=\"/opt/tool/bin:$PATH\"\nACTIVATED=yes\n",
    )
    .unwrap();
    let tool = t.join("opt/tool/bin/mytool");
    std::fs::write(&tool, "#!/bin/sh\necho \"tool ran with $ACTIVATED\"\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = setup().scratch.join(format!("{name}.sqfs"));
    mksquashfs(&t, &path, &["-comp", "gzip"]);
    std::fs::remove_dir_all(&t).unwrap();
    path.display().to_string()
}

const ACTIVATE: &str = "\
#!/bin/sh
. /opt/tool/activate
if [ -z \"$FROM_IF\" ]; then
    FROM_IF=set-in-if
fi
COUNT=$(echo a b c)
unset DROP_ME
echo \"a message from the script\"
mark() { FROM_FN=fn; }
mark
";

/// Issue 17: the image's environment scripts are run by its shell when they need one (the
/// parser alone skipped `source`, `if`, `$(...)`): what Apptainer gives, with the same
/// precedence (`--env` and `APPTAINERENV_` over the scripts), and the scripts' own output
/// kept off the command's stdout.
#[test]
fn environment_scripts_that_need_a_shell_are_run_by_the_images_shell() {
    let img = activating_image("activating", ACTIVATE);
    let out = launcher(&["exec", &img, "mytool"]).run();
    assert_eq!(out.ok().stdout, "tool ran with yes\n", "{out:?}");
    assert!(out.stderr.contains("a message from the script"), "{out:?}");
    let out = launcher(&[
        "exec",
        "--env",
        "FROM_IF=user",
        &img,
        "/bin/sh",
        "-c",
        "echo $ACTIVATED $FROM_IF $FROM_FN $COUNT ${DROP_ME:-unset} $FWD $LD_LIBRARY_PATH",
    ])
    .env("DROP_ME", "host")
    .env("APPTAINERENV_FWD", "forwarded")
    .run();
    assert_eq!(
        out.ok().stdout,
        "yes user fn a b c unset forwarded /.singularity.d/libs\n",
        "{out:?}"
    );
    let out = launcher(&["exec", "--debug", &img, "/bin/true"]).run();
    assert!(
        out.ok()
            .stderr
            .contains("env scripts: sourced by the image's /bin/sh at start"),
        "{out:?}"
    );
}

/// Images whose scripts only assign start no shell (the start-up stays as it was), and a
/// script that fails stops the launch with one line.
#[test]
fn plain_scripts_start_no_shell_and_a_failing_script_stops_the_launch() {
    let plain = activating_image("plain-env", "#!/bin/sh\nexport ONLY=assigned\n");
    let out = launcher(&["exec", "--debug", &plain, "/bin/sh", "-c", "echo $ONLY"]).run();
    assert_eq!(out.ok().stdout, "assigned\n");
    assert!(!out.stderr.contains("env scripts: sourced"), "{out:?}");
    let failing = activating_image("failing-env", "#!/bin/sh\nif true; then exit 3; fi\n");
    let out = launcher(&["exec", &failing, "/bin/true"]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr
            .contains("running the image's environment scripts: /bin/sh failed (exit status 3)"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

/// Issue 17: `--overlay DIR` (and `APPTAINER_OVERLAY`) keeps a writable layer in the user's
/// directory: what one launch writes, the next sees; the image file is untouched; what cannot
/// work (a missing directory, with `--writable-tmpfs`) is one clear line.
#[test]
fn an_overlay_directory_keeps_changes_across_launches() {
    let s = setup();
    let dir = s.scratch.join("overlay-dir");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(s.uid), Some(s.gid)).unwrap();
    let d = dir.display().to_string();
    let write = launcher(&[
        "exec",
        "--overlay",
        &d,
        &img(),
        "/bin/sh",
        "-c",
        "echo kept > /etc/from-overlay && mkdir -p /opt/added && touch /opt/added/f",
    ])
    .run();
    write.ok();
    let read = launcher(&[
        "exec",
        &img(),
        "/bin/sh",
        "-c",
        "cat /etc/from-overlay; ls /opt/added; stat -c %u /etc/from-overlay",
    ])
    .env("APPTAINER_OVERLAY", &d)
    .run();
    assert_eq!(
        read.ok().stdout,
        format!("kept\nf\n{}\n", s.uid),
        "{read:?}"
    );
    assert!(dir.join("upper/etc/from-overlay").is_file());
    // Without it, the image is as it was.
    let plain = launcher(&["exec", &img(), "/bin/sh", "-c", "cat /etc/from-overlay"]).run();
    assert_ne!(plain.code, 0, "{plain:?}");
    let debug = launcher(&["exec", "--debug", "--overlay", &d, &img(), "/bin/true"]).run();
    assert!(
        debug
            .ok()
            .stderr
            .contains(&format!("+ overlay in {d} (kept), writable (--overlay)")),
        "{debug:?}"
    );
    for (args, want) in [
        (
            vec!["--overlay", "/nonexistent-overlay"],
            "--overlay /nonexistent-overlay: no such file or directory (a writable overlay \
             directory must exist first: mkdir -p /nonexistent-overlay)"
                .to_string(),
        ),
        (
            vec!["--overlay", &d, "--writable-tmpfs"],
            "--overlay and --writable-tmpfs: choose one".to_string(),
        ),
    ] {
        assert_one_line_error(&args, &want);
    }
}

/// `launcher exec ARGS IMG /bin/true` fails with exit 255 and this one line.
fn assert_one_line_error(args: &[&str], want: &str) {
    let mut all = vec!["exec"];
    all.extend(args);
    let image = img();
    all.extend([image.as_str(), "/bin/true"]);
    let out = launcher(&all).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains(want), "{want}: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

/// A SquashFS image of these files (path, content), made as root, readable by all.
fn layer_image(name: &str, files: &[(&str, &str)]) -> String {
    let tree = setup().scratch.join(format!("{name}-tree"));
    let _ = std::fs::remove_dir_all(&tree);
    for (path, content) in files {
        let p = tree.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let out = setup().scratch.join(format!("{name}.sqfs"));
    mksquashfs(&tree, &out, &[]);
    std::fs::remove_dir_all(&tree).unwrap();
    out.display().to_string()
}

/// A directory owned by the test user.
fn user_dir(name: &str) -> String {
    let s = setup();
    let dir = s.scratch.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(s.uid), Some(s.gid)).unwrap();
    dir.display().to_string()
}

/// Issue 17: `--overlay IMG.sqfs` (several, or a comma list; `APPTAINER_OVERLAY` too) stacks
/// read-only SquashFS layers over the image, each served by a FUSE server of the launcher's
/// own, later ones on top as in Apptainer; a file of a layer replaces the image's, the
/// image's other files stay, and nothing can be written.
#[test]
fn squashfs_overlays_stack_over_the_image_later_ones_on_top() {
    let a = layer_image(
        "layer-a",
        &[
            ("data/mine", "from A\n"),
            ("data/both", "A\n"),
            ("opt/a/added", "added by A\n"),
        ],
    );
    let b = layer_image("layer-b", &[("data/both", "B\n")]);
    let show = "cat /data/mine /data/both /opt/a/added; ls /data/tree/f1";
    let out = launcher(&[
        "exec",
        "--overlay",
        &a,
        "--overlay",
        &b,
        &img(),
        "/bin/sh",
        "-c",
        show,
    ])
    .run();
    assert_eq!(
        out.ok().stdout,
        "from A\nB\nadded by A\n/data/tree/f1\n",
        "{out:?}"
    );
    // Apptainer's comma list and short flag, and its variable: the order given decides.
    let out = launcher(&[
        "exec",
        "-o",
        &format!("{b},{a}"),
        &img(),
        "cat",
        "/data/both",
    ])
    .run();
    assert_eq!(out.ok().stdout, "A\n", "{out:?}");
    let out = launcher(&["exec", &img(), "cat", "/data/both"])
        .env("APPTAINER_OVERLAY", &format!("{a},{b}"))
        .run();
    assert_eq!(out.ok().stdout, "B\n", "{out:?}");
    // Read-only: the layers as much as the image.
    let out = launcher(&[
        "exec",
        "--overlay",
        &a,
        &img(),
        "/bin/sh",
        "-c",
        "echo x > /data/mine",
    ])
    .run();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    // --debug shows the layers, top first.
    let out = launcher(&["exec", "--debug", "-o", &format!("{a},{b}"), &img(), "true"]).run();
    let err = &out.ok().stderr;
    assert!(
        err.contains("root: image via FUSE + 2 read-only layer(s) + overlay on tmpfs, read-only"),
        "{err}"
    );
    let (at_b, at_a) = (
        err.find(&format!("image {b} ")),
        err.find(&format!("image {a} ")),
    );
    assert!(at_b.is_some() && at_b < at_a, "{err}");
    // Over a sandbox directory too (no server for the image, one for each layer).
    let out = launcher(&[
        "exec",
        "-o",
        &format!("{a},{b}"),
        &fixture("rootfs"),
        "cat",
        "/data/mine",
        "/data/both",
    ])
    .run();
    assert_eq!(out.ok().stdout, "from A\nB\n", "{out:?}");
    // The SquashFS of a SIF is a layer too.
    let sif = sif_of(&b, "layer-b.sif", image_tools::sif::PartType::PrimSys);
    let out = launcher(&[
        "exec",
        "-o",
        &format!("{a},{sif}"),
        &img(),
        "cat",
        "/data/both",
    ])
    .run();
    assert_eq!(out.ok().stdout, "B\n", "{out:?}");
}

/// A SIF holding `sqfs` as a partition of type `part`.
fn sif_of(sqfs: &str, name: &str, part: image_tools::sif::PartType) -> String {
    use image_tools::sif::{write, FsType, ObjectData, ObjectSpec, WriteOptions};
    let len = std::fs::metadata(sqfs).unwrap().len();
    let sif = setup().scratch.join(name);
    let fs = match part {
        image_tools::sif::PartType::Overlay => FsType::Ext3,
        _ => FsType::Squash,
    };
    let mut objects = vec![ObjectSpec::partition(
        ObjectData::File {
            path: sqfs.into(),
            len,
        },
        FsType::Squash,
        image_tools::sif::PartType::PrimSys,
        "amd64",
    )];
    if part != image_tools::sif::PartType::PrimSys {
        objects.push(ObjectSpec::partition(
            ObjectData::File {
                path: sqfs.into(),
                len,
            },
            fs,
            part,
            "amd64",
        ));
    }
    write(&sif, &WriteOptions::default(), objects).unwrap();
    std::fs::set_permissions(&sif, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    sif.display().to_string()
}

/// Issue 17: `DIR:ro` is a read-only layer; the writable directory, wherever it is given, is
/// on top of every layer and takes the writes (the read-only directory is never written);
/// `--writable-tmpfs` over read-only layers discards its writes at exit.
#[test]
fn a_read_only_directory_layer_under_the_writable_one() {
    let s = setup();
    let a = layer_image(
        "layer-ro-a",
        &[("data/both", "A\n"), ("data/mine", "from A\n")],
    );
    let ro = s.scratch.join("layer-ro-dir");
    let _ = std::fs::remove_dir_all(&ro);
    std::fs::create_dir_all(ro.join("data")).unwrap();
    std::fs::write(ro.join("data/both"), "D\n").unwrap();
    std::fs::write(ro.join("data/only-d"), "only D\n").unwrap();
    // Writable by the user, so that only the layer's read-only mount can refuse a write.
    std::os::unix::fs::chown(ro.join("data"), Some(s.uid), Some(s.gid)).unwrap();
    let ro = ro.display().to_string();
    let out = launcher(&[
        "exec",
        "--overlay",
        &a,
        "--overlay",
        &format!("{ro}:ro"),
        &img(),
        "/bin/sh",
        "-c",
        "cat /data/both /data/only-d /data/mine; touch /data/new",
    ])
    .run();
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "D\nonly D\nfrom A\n", "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");

    let w = user_dir("layer-rw-dir");
    let out = launcher(&[
        "exec",
        "--overlay",
        &format!("{ro}:ro"),
        "--overlay",
        &w,
        "--overlay",
        &a,
        &img(),
        "/bin/sh",
        "-c",
        "cat /data/both; echo new > /data/both; echo d > /data/only-d; cat /data/both",
    ])
    .run();
    assert_eq!(out.ok().stdout, "A\nnew\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(format!("{w}/upper/data/both")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{ro}/data/only-d")).unwrap(),
        "only D\n"
    );

    let out = launcher(&[
        "exec",
        "--writable-tmpfs",
        "--overlay",
        &a,
        &img(),
        "/bin/sh",
        "-c",
        "echo t > /data/mine; cat /data/mine",
    ])
    .run();
    assert_eq!(out.ok().stdout, "t\n", "{out:?}");
    let out = launcher(&["exec", "--overlay", &a, &img(), "cat", "/data/mine"]).run();
    assert_eq!(out.ok().stdout, "from A\n", "{out:?}");
}

/// Issue 17: a writable overlay directory's `upper/`, made into a SquashFS, is a read-only
/// layer with the same effect: its whiteouts (a deleted file) and opaque directories (a
/// directory made anew) are honoured through the launcher's FUSE server.
#[test]
fn a_squashed_writable_overlay_keeps_its_deletions() {
    let w = user_dir("squash-me");
    let out = launcher(&[
        "exec",
        "--overlay",
        &w,
        &img(),
        "/bin/sh",
        "-c",
        "rm /data/mine && rm -r /data/tree/a && mkdir /data/tree/a && echo n > /data/tree/a/n",
    ])
    .run();
    out.ok();
    let sqfs = setup().scratch.join("squashed.sqfs");
    mksquashfs(
        &std::path::PathBuf::from(&w).join("upper"),
        &sqfs,
        &["-xattrs"],
    );
    let out = launcher(&[
        "exec",
        "--overlay",
        &sqfs.display().to_string(),
        &img(),
        "/bin/sh",
        "-c",
        "ls /data/tree/a; test -e /data/mine || echo gone",
    ])
    .run();
    assert_eq!(out.ok().stdout, "n\ngone\n", "{out:?}");
}

/// Issue 17: what cannot be an overlay is one line naming it: a missing path, a file that
/// is neither SquashFS nor SIF, an ext3 image or a SIF's overlay partition (mounting ext3
/// needs root or fuse2fs), two writable directories, a suffix other than `:ro`.
#[test]
fn overlay_refusals_are_one_line_naming_the_path() {
    let s = setup();
    let a = layer_image("layer-err-a", &[("x", "x")]);
    let ext3 = s.scratch.join("overlay.img");
    let st = std::process::Command::new("mkfs.ext3")
        .args(["-q", "-F"])
        .arg(&ext3)
        .arg("4M")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(&ext3, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let ext3 = ext3.display().to_string();
    let sif_overlay = sif_of(&a, "with-overlay.sif", image_tools::sif::PartType::Overlay);
    let (w1, w2) = (user_dir("ovl-w1"), user_dir("ovl-w2"));
    for (args, want) in [
        (
            vec!["--overlay", "/nonexistent.sqfs:ro"],
            "--overlay /nonexistent.sqfs:ro: no such file or directory".to_string(),
        ),
        (
            vec!["--overlay", "/etc/passwd"],
            "--overlay /etc/passwd: '/etc/passwd' is neither a SIF file nor a SquashFS image"
                .to_string(),
        ),
        (
            vec!["--overlay", &ext3],
            format!("--overlay {ext3}: an ext3 overlay image: not supported (mounting ext3 needs root or fuse2fs)"),
        ),
        (
            vec!["--overlay", &sif_overlay],
            format!("--overlay {sif_overlay}: the SIF has an overlay partition: not supported"),
        ),
        (
            vec!["--overlay", &w1, "--overlay", &w2],
            format!("--overlay {w1} and --overlay {w2}: one writable overlay directory at most"),
        ),
        (
            vec!["--overlay", &format!("{a}:rw")],
            format!("--overlay {a}:rw: unknown suffix ':rw'"),
        ),
    ] {
        assert_one_line_error(&args, &want);
    }
    // The variable's name is in the message when it gave the list.
    let out = launcher(&["exec", &img(), "/bin/true"])
        .env("APPTAINER_OVERLAY", &format!("{a}:xx"))
        .run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "APPTAINER_OVERLAY: --overlay {a}:xx: unknown suffix"
        )),
        "{out:?}"
    );
}

/// Review finding 11: a script that makes one variable longer than execve takes (128 KiB)
/// left the image's `cat` unable to start, reported as "/bin/sh failed (exit status 126)".
/// Now one line names the variable, the script and the limit.
#[test]
fn a_variable_too_long_for_any_program_is_named_with_its_script_and_the_limit() {
    let img = activating_image(
        "too-long-env",
        "#!/bin/sh\nX=x; i=0\nwhile [ $i -lt 18 ]; do X=$X$X; i=$((i+1)); done\n\
         export CONDA_BIG=\"$X\"\nunset X i\n",
    );
    let out = launcher(&["exec", &img, "/bin/true"]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "the image's environment script /.singularity.d/env/90-environment.sh made \
             CONDA_BIG longer (256 KiB) than 128 KiB, the longest variable a program can be \
             started with"
        ),
        "{out:?}"
    );
}

/// Apptainer's flags that have no option here (foreign.rs): never clap's "unexpected
/// argument". Harmless ones run the command; the others are refused in one line that says why
/// and what to do; set through a site module's variable, a refused one is a warning, not a
/// failed job (and `-q` silences it).
#[test]
fn apptainers_other_flags_are_accepted_or_refused_in_one_line() {
    let image = img();
    for accepted in [
        &["--no-init"][..],
        &["--no-privs"],
        &["--drop-caps", "CAP_SYS_ADMIN"],
        &["--disable-cache"],
        &["--sharens"],
        &["--underlay"],
    ] {
        let mut args = vec!["exec"];
        args.extend_from_slice(accepted);
        args.extend([image.as_str(), "/bin/echo", "ran"]);
        let out = launcher(&args).run();
        assert_eq!(out.ok().stdout, "ran\n", "{accepted:?}");
    }
    for (refused, name, hint) in [
        (&["--net"][..], "--net", "host's network"),
        (&["-n"], "--net", "host's network"),
        (&["--network", "none"], "--network", "host's network"),
        (&["--memory", "4G"], "--memory", "srun --mem"),
        (&["-p"], "--pid", "PID"),
        (&["--app", "solver"], "--app", "launcher exec IMAGE PROGRAM"),
        (
            &["--mount", "type=bind,src=/tmp,dst=/mnt"],
            "--mount",
            "--bind",
        ),
        (&["--fusemount", "x"], "--fusemount", "--bind"),
        (&["--add-caps", "CAP_NET_RAW"], "--add-caps", "privileges"),
    ] {
        for verb in ["exec", "run", "shell"] {
            let mut args = vec![verb];
            args.extend_from_slice(refused);
            args.push(image.as_str());
            if verb == "exec" {
                args.push("/bin/true");
            }
            let out = launcher(&args).run();
            assert_eq!(out.code, 255, "{args:?}: {out:?}");
            assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
            assert!(
                out.stderr
                    .starts_with(&format!("launcher: error: {name} is not supported: "))
                    && out.stderr.contains(hint),
                "{args:?}: {out:?}"
            );
        }
    }
    // From the environment: a warning naming the variable, and the job runs.
    let out = launcher(&["exec", &image, "/bin/echo", "ran"])
        .env("APPTAINER_NET", "1")
        .env("SINGULARITY_MEMORY", "4G")
        .run();
    assert_eq!(out.ok().stdout, "ran\n");
    assert!(
        out.stderr
            .contains("warning: ignoring APPTAINER_NET (--net): ")
            && out
                .stderr
                .contains("warning: ignoring SINGULARITY_MEMORY (--memory): "),
        "{out:?}"
    );
    let quiet = launcher(&["-q", "exec", &image, "/bin/true"])
        .env("APPTAINER_NET", "1")
        .run();
    assert_eq!(quiet.ok().stderr, "", "{quiet:?}");
    // Off is off: no warning.
    let off = launcher(&["exec", &image, "/bin/true"])
        .env("APPTAINER_NET", "0")
        .run();
    assert!(!off.ok().stderr.contains("APPTAINER_NET"), "{off:?}");
}

/// Installed as `apptainer` or `singularity` (a symlink, for a site trying its job scripts
/// unchanged): the same program, whose `--version` says what it is; Apptainer's `version`
/// verb prints the bare version.
#[test]
fn invoked_as_apptainer_or_singularity() {
    let s = setup();
    for name in ["apptainer", "singularity"] {
        let link = s.scratch.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&s.bin, &link).unwrap();
        let out = Out::from(
            as_test_user(&link, Some(60))
                .arg("--version")
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout
                .starts_with(&format!("{name} {}", env!("CARGO_PKG_VERSION")))
                && out.stdout.contains(&format!("invoked as {name}")),
            "{out:?}"
        );
        let out = Out::from(
            as_test_user(&link, Some(60))
                .args(["exec", "-B", "/etc/hostname:/h", &img(), "cat", "/h"])
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(
            out.stdout,
            std::fs::read_to_string("/etc/hostname").unwrap(),
            "{out:?}"
        );
        std::fs::remove_file(&link).unwrap();
    }
    let version = launcher(&["version"]).run();
    assert_eq!(
        version.ok().stdout,
        format!("{}\n", env!("CARGO_PKG_VERSION"))
    );
}
