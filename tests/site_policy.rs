//! The site's defaults do not vanish by accident (issue 20, finding 6): the system file
//! `/etc/launcher/launcher.yaml` always applies, `LAUNCHER_CONFIG` adds a file rather than
//! replacing it, and what the system file locks (binds, variables, options) the user cannot
//! change: they get a one-line refusal naming the site file.
//!
//! The system file is the real path. Each launch runs in a private mount namespace (made by
//! root here, as the test process is root) in which an overlay over /etc holds this test's
//! `launcher/launcher.yaml`: the host's /etc is never written, and tests beside this one see
//! nothing of it.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A fresh directory for one test, in the scratch area (the test user can read it).
fn test_dir(name: &str) -> PathBuf {
    let d = setup().scratch.join(format!("policy-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One launch as the test user with `system` as /etc/launcher/launcher.yaml, the variables
/// `env`, and `XDG_CONFIG_HOME` pointing at `dir/xdg` (where a test puts a user file).
fn launch(dir: &Path, system: &str, env: &[(&str, &str)], args: &[&str]) -> Out {
    let upper = dir.join("upper");
    std::fs::create_dir_all(upper.join("launcher")).unwrap();
    std::fs::create_dir_all(dir.join("work")).unwrap();
    std::fs::write(upper.join("launcher/launcher.yaml"), system).unwrap();
    let mut vars = vec![format!("XDG_CONFIG_HOME={}", dir.join("xdg").display())];
    vars.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    let script = format!(
        "mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc && exec {} env \"$@\"",
        upper.display(),
        dir.join("work").display(),
        as_test_user_prefix()
    );
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args(&vars)
        .arg(&setup().bin)
        .args(args)
        .output()
        .unwrap();
    Out::from(out)
}

fn echo(vars: &str) -> Vec<String> {
    vec![
        "exec".into(),
        fixture("busybox-gzip.sqfs"),
        "/bin/sh".into(),
        "-c".into(),
        format!("echo {vars}"),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A refusal: exit 255, one line on stderr, saying `want`.
fn assert_refused(out: &Out, want: &str) {
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains(want), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn the_system_file_always_applies_and_launcher_config_adds_to_it() {
    let dir = test_dir("always");
    let system = "env:\n  set: {SITE: sys}\n";
    let extra = dir.join("job.yaml");
    std::fs::write(&extra, "env:\n  set: {JOB: extra}\n").unwrap();
    let cmd = echo("$SITE ${JOB:-none}");
    for (value, want) in [
        (None, "sys none"),
        (Some(""), "sys none"),
        (Some("/dev/null"), "sys none"),
        (Some(extra.to_str().unwrap()), "sys extra"),
    ] {
        let env: Vec<(&str, &str)> = value.map(|v| ("LAUNCHER_CONFIG", v)).into_iter().collect();
        let out = launch(&dir, system, &env, &args(&cmd));
        assert_eq!(out.ok().stdout.trim(), want, "LAUNCHER_CONFIG={value:?}");
    }
}

const LOCKING: &str = "\
binds: ['/usr/share:/site/share:ro']
mpi: {default: false}
env:
  set: {OMPI_MCA_btl: '^openib', FREE: site}
  unset: [LD_PRELOAD]
locked: [binds, mpi.default, env.set.OMPI_MCA_btl, env.unset]
";

#[test]
fn a_locked_bind_always_applies_and_may_not_be_covered() {
    let dir = test_dir("bind");
    let shown = launch(
        &dir,
        LOCKING,
        &[],
        &[
            "exec",
            &fixture("busybox-gzip.sqfs"),
            "ls",
            "-d",
            "/site/share",
        ],
    );
    assert_eq!(shown.ok().stdout.trim(), "/site/share");
    let cover = format!("{}:/site", dir.display());
    let out = launch(
        &dir,
        LOCKING,
        &[],
        &["exec", "-B", &cover, &fixture("busybox-gzip.sqfs"), "true"],
    );
    assert_refused(
        &out,
        &format!(
            "bind {cover}: it would cover the site's bind at /site/share, which is locked by the \
             site config /etc/launcher/launcher.yaml"
        ),
    );
    // APPTAINER_BIND is the same request, refused the same way.
    let out = launch(
        &dir,
        LOCKING,
        &[("APPTAINER_BIND", &cover)],
        &["exec", &fixture("busybox-gzip.sqfs"), "true"],
    );
    assert_refused(&out, "it would cover the site's bind at /site/share");
}

#[test]
fn a_locked_variable_is_the_sites_and_may_not_be_reset() {
    let dir = test_dir("var");
    let cmd = echo("$OMPI_MCA_btl ${LD_PRELOAD:-unset} $FREE");
    // The host's LD_PRELOAD (one every process has loaded anyway) does not survive a locked
    // unset.
    let out = launch(&dir, LOCKING, &[("LD_PRELOAD", "libc.so.6")], &args(&cmd));
    assert_eq!(out.ok().stdout.trim(), "^openib unset site");
    // What the site did not lock the user still sets.
    let mut free = cmd.clone();
    free.splice(1..1, ["--env".to_string(), "FREE=mine".to_string()]);
    let out = launch(&dir, LOCKING, &[], &args(&free));
    assert_eq!(out.ok().stdout.trim(), "^openib unset mine");
    for (env, extra, want) in [
        (
            None,
            ["--env", "OMPI_MCA_btl=tcp"],
            "--env OMPI_MCA_btl: the variable OMPI_MCA_btl is locked by the site \
             config /etc/launcher/launcher.yaml",
        ),
        (
            None,
            ["--env", "LD_PRELOAD=/tmp/x.so"],
            "--env LD_PRELOAD: the variable LD_PRELOAD is locked",
        ),
        (
            Some(("APPTAINERENV_LD_PRELOAD", "/tmp/x.so")),
            ["--env", "FREE=1"],
            "APPTAINERENV_LD_PRELOAD: the variable LD_PRELOAD is locked",
        ),
    ] {
        let mut c = cmd.clone();
        c.splice(1..1, extra.iter().map(|s| s.to_string()));
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        assert_refused(&launch(&dir, LOCKING, &env, &args(&c)), want);
    }
    // An env file is named as the user gave it: by option or by Apptainer's variable.
    let vars = dir.join("vars.env");
    std::fs::write(&vars, "FREE=1\nLD_PRELOAD=/tmp/x.so\n").unwrap();
    let vars = vars.display().to_string();
    let mut c = cmd.clone();
    c.splice(1..1, ["--env-file".to_string(), vars.clone()]);
    assert_refused(
        &launch(&dir, LOCKING, &[], &args(&c)),
        &format!("--env-file {vars} (LD_PRELOAD): the variable LD_PRELOAD is locked"),
    );
    assert_refused(
        &launch(&dir, LOCKING, &[("APPTAINER_ENV_FILE", &vars)], &args(&cmd)),
        &format!("APPTAINER_ENV_FILE={vars} (LD_PRELOAD): the variable LD_PRELOAD is locked"),
    );
    // A user file (and a LAUNCHER_CONFIG file) that sets it is refused by name.
    let xdg = dir.join("xdg/launcher");
    std::fs::create_dir_all(&xdg).unwrap();
    std::fs::write(
        xdg.join("launcher.yaml"),
        "env:\n  set: {LD_PRELOAD: /tmp/x.so}\n",
    )
    .unwrap();
    let out = launch(&dir, LOCKING, &[], &args(&cmd));
    assert_refused(
        &out,
        &format!(
            "{}: key 'env.set.LD_PRELOAD': the variable LD_PRELOAD is locked by the site config \
             /etc/launcher/launcher.yaml",
            xdg.join("launcher.yaml").display()
        ),
    );
    std::fs::remove_file(xdg.join("launcher.yaml")).unwrap();
    let job = dir.join("job.yaml");
    std::fs::write(&job, "mpi: {default: true}\n").unwrap();
    let out = launch(
        &dir,
        LOCKING,
        &[("LAUNCHER_CONFIG", job.to_str().unwrap())],
        &args(&cmd),
    );
    assert_refused(&out, "job.yaml: key 'mpi.default': 'mpi.default' is locked");
}

#[test]
fn an_option_the_site_locked_is_refused() {
    let dir = test_dir("option");
    let out = launch(
        &dir,
        LOCKING,
        &[],
        &["exec", "--mpi", &fixture("busybox-gzip.sqfs"), "true"],
    );
    assert_refused(
        &out,
        "--mpi: mpi support is locked off by the site config /etc/launcher/launcher.yaml (mpi.default)",
    );
    // The option or variable the user gave is the one named (review finding 14).
    let off = "gpu: {default: false}\nlocked: [gpu]\n";
    for (env, flag, by) in [
        (None, Some("--nv"), "--nv"),
        (None, Some("--rocm"), "--rocm"),
        (Some(("APPTAINER_NV", "1")), None, "APPTAINER_NV"),
        (
            Some(("SINGULARITY_ROCM", "yes")),
            Some("--gpu"),
            "--gpu, SINGULARITY_ROCM",
        ),
    ] {
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let mut a = vec!["exec"];
        a.extend(flag);
        let img = fixture("busybox-gzip.sqfs");
        a.extend([img.as_str(), "true"]);
        assert_refused(
            &launch(&dir, off, &env, &a),
            &format!("launcher: error: {by}: gpu support is locked off by the site config"),
        );
    }
    let out = launch(
        &dir,
        "gpu: {default: true}\nlocked: [gpu]\n",
        &[],
        &["exec", "--no-gpu", &fixture("busybox-gzip.sqfs"), "true"],
    );
    assert_refused(
        &out,
        "--no-gpu: gpu support is locked on by the site config",
    );
    // A lock list anywhere but the system file is refused.
    let job = dir.join("job.yaml");
    std::fs::write(&job, "locked: [binds]\n").unwrap();
    let out = launch(
        &dir,
        "",
        &[("LAUNCHER_CONFIG", job.to_str().unwrap())],
        &["exec", &fixture("busybox-gzip.sqfs"), "true"],
    );
    assert_refused(
        &out,
        "job.yaml: key 'locked': only the system file (/etc/launcher/launcher.yaml) may lock settings",
    );
}

/// A copy of an upstream signed test file (tests/data/sif) in `dir`, readable by the test user.
fn upstream(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sif")
        .join(name);
    let to = dir.join(Path::new(name).file_name().unwrap());
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    to
}

/// The site's signature policy (docs/admin.md "Signed images"): under its directories only
/// images signed by a key of the site keyring run; the user's own keys do not count; a
/// directory, a SquashFS image or a docker:// source cannot be signed and is refused where the
/// rule covers it; overlay images are held to the rule as the image is; locked, the user's
/// files cannot turn it off.
#[test]
fn the_site_signature_policy_runs_only_images_signed_by_the_sites_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = test_dir("signatures");
    let (images, elsewhere) = (dir.join("images"), dir.join("elsewhere"));
    for d in [&images, &elsewhere] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (site_key, site_public) = openssl_key(&dir, "site", &["-algorithm", "ed25519"]);
    let (user_key, user_public) = openssl_key(&dir, "user", &["-algorithm", "ed25519"]);
    // The site keyring at its default place, /etc/launcher/keys (in the overlay); the user's
    // keyring holds the user's key.
    for (keyring, public) in [
        (dir.join("upper/launcher/keys"), &site_public),
        (dir.join("xdg/launcher/keys"), &user_public),
    ] {
        std::fs::create_dir_all(&keyring).unwrap();
        std::fs::copy(public, keyring.join("key.pem")).unwrap();
    }
    let unsigned = elsewhere.join("unsigned.sif");
    let path = |p: &Path| p.display().to_string();
    launcher(&["build", &path(&unsigned), &fixture("rootfs")])
        .run()
        .ok();
    for (name, key) in [
        ("unsigned.sif", None),
        ("signed.sif", Some(&site_key)),
        ("theirs.sif", Some(&user_key)),
    ] {
        let img = path(&images.join(name));
        std::fs::copy(&unsigned, &img).unwrap();
        if let Some(key) = key {
            launcher(&["sign", "-k", key, &img]).run().ok();
        }
    }
    let system = format!(
        "signatures:\n  required: true\n  under: [{}]\nlocked: [signatures]\n",
        images.display()
    );
    let exec = |system: &str, extra: &[&str], img: &str| {
        let mut a = vec!["exec"];
        a.extend(extra);
        a.extend([img, "echo", "ran"]);
        launch(&dir, system, &[], &a)
    };
    let refusal = |img: &str, rule: &str, why: &str| {
        format!(
            "launcher: error: {img}: refused by the site's signature policy ({rule} in \
             /etc/launcher/launcher.yaml): {why}"
        )
    };
    let under = format!("signatures.under {}", images.display());
    let signed = path(&images.join("signed.sif"));
    assert_eq!(exec(&system, &[], &signed).ok().stdout, "ran\n");
    // Outside the rule's directories: no signature needed.
    assert_eq!(exec(&system, &[], &path(&unsigned)).ok().stdout, "ran\n");
    let img = path(&images.join("unsigned.sif"));
    assert_refused(
        &exec(&system, &[], &img),
        &refusal(&img, &under, "it has no signature"),
    );
    // A link from elsewhere is judged by where it leads.
    let link = path(&elsewhere.join("link.sif"));
    std::os::unix::fs::symlink(&img, &link).unwrap();
    assert_refused(
        &exec(&system, &[], &link),
        &refusal(&link, &under, "it has no signature"),
    );
    // Signed by the user's key, which --verify takes from the user's keyring: the site's rule
    // still refuses it.
    let theirs = path(&images.join("theirs.sif"));
    assert_refused(
        &exec(&system, &["--verify"], &theirs),
        &refusal(
            &theirs,
            &under,
            "signature 4 not verified: no DSSE signature verifies with a known key",
        ),
    );
    // An overlay image is an image: under the rule's directories it must be signed too; a
    // signed one, or an overlay directory (which carries no signature, as a bind does not),
    // is let through.
    let ro = |p: &str| format!("{p}:ro");
    let unsigned_img = path(&images.join("unsigned.sif"));
    assert_refused(
        &exec(&system, &["--overlay", &ro(&unsigned_img)], &signed),
        &refusal(&unsigned_img, &under, "it has no signature"),
    );
    let layer_dir = elsewhere.join("layer");
    std::fs::create_dir_all(&layer_dir).unwrap();
    std::fs::set_permissions(&layer_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ok = exec(
        &system,
        &[
            "--overlay",
            &ro(&signed),
            "--overlay",
            &ro(&path(&layer_dir)),
        ],
        &signed,
    );
    assert_eq!(
        ok.ok().stdout,
        "ran
"
    );
    // Locked: the user's file may not turn it off; unlocked, it may.
    let user_file = dir.join("xdg/launcher/launcher.yaml");
    std::fs::write(&user_file, "signatures: {required: false}\n").unwrap();
    assert_refused(
        &exec(&system, &[], &img),
        &format!(
            "{}: key 'signatures.required': 'signatures' is locked by the site config \
             /etc/launcher/launcher.yaml",
            user_file.display()
        ),
    );
    let unlocked = system.replace("locked: [signatures]\n", "");
    assert_eq!(exec(&unlocked, &[], &img).ok().stdout, "ran\n");
    std::fs::remove_file(&user_file).unwrap();

    // A rule for every image: what cannot carry a signature is refused before anything is
    // pulled or mounted.
    let all = "signatures: {required: true}\n";
    let rule = "signatures.required";
    let rootfs = fixture("rootfs");
    assert_refused(
        &exec(all, &[], &rootfs),
        &refusal(&rootfs, rule, "a directory image cannot carry a signature"),
    );
    let sqfs = fixture("busybox-gzip.sqfs");
    assert_refused(
        &exec(all, &[], &sqfs),
        &refusal(
            &sqfs,
            rule,
            "only a SIF image carries a signature, and this is not one",
        ),
    );
    let docker = "docker://localhost:1/none:latest";
    assert_refused(
        &exec(all, &[], docker),
        &refusal(
            docker,
            rule,
            "a source converted at run time gives an unsigned SIF; run a signed SIF instead",
        ),
    );
    // Upstream's image carries an OpenPGP signature by a key the site does not hold.
    let busybox = fixture("singularityce-busybox-amd64.sif");
    assert_refused(
        &exec(all, &[], &busybox),
        &refusal(
            &busybox,
            rule,
            "signature 5 not verified: OpenPGP signature 1: no known key",
        ),
    );
    // Upstream's DSSE-signed test image, with its signer's key in a site keyring named by
    // `signatures.keys`: the rule lets it through (it holds no root file system to run).
    let upstream_keys = dir.join("upstream-keys");
    std::fs::create_dir_all(&upstream_keys).unwrap();
    upstream(&upstream_keys, "keys/ed25519-public.pem");
    let dsse = path(&upstream(&dir, "one-group-signed-dsse.sif"));
    let with_keys = format!(
        "signatures: {{required: true, keys: {}}}\n",
        upstream_keys.display()
    );
    let out = exec(&with_keys, &[], &dsse);
    assert!(!out.stderr.contains("signature policy"), "{out:?}");
    assert_refused(
        &exec(all, &[], &dsse),
        &refusal(&dsse, rule, "signature 3 not verified"),
    );
}
