//! End-to-end: `launcher build docker://...` against a real local registry (Debian's
//! `docker-registry`, the Distribution registry) on 127.0.0.1, fed with the fixture image by
//! skopeo. The registry's access log is the independent witness of what was downloaded.

mod common;
use common::*;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry process on a free port, killed (by its own pid) when dropped.
struct Registry {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Registry {
    /// Starts a registry storing under a fresh directory; `htpasswd` turns on Basic auth.
    fn start(name: &str, htpasswd: Option<&str>) -> Registry {
        let dir = setup().scratch.join(format!("registry-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // Bind-then-release finds a free port; the registry takes it right after.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some(users) = htpasswd {
            let file = dir.join("htpasswd");
            std::fs::write(&file, users).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(registry_binary())
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting docker-registry (tests/setup.sh installs it)");
        let r = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not start listening on {port}:\n{}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Access-log lines (`"GET /v2/... HTTP/1.1" STATUS SIZE`) for blob GETs after `from` bytes of log.
    fn blob_gets(&self, from: usize) -> Vec<String> {
        self.log()[from..]
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .map(String::from)
            .collect()
    }

    /// Pushes an image with skopeo (plain HTTP).
    fn push(&self, src: &str, dest: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(extra)
            .arg(src)
            .arg(format!("docker://{}/{dest}", self.host()))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {src}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry binary the package ships (found with dpkg, so a missing package fails loudly).
fn registry_binary() -> PathBuf {
    let out = Command::new("dpkg")
        .args(["-L", "docker-registry"])
        .output()
        .expect("running dpkg");
    assert!(
        out.status.success(),
        "the docker-registry package is not installed (tests/setup.sh installs it)"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("/usr/bin/"))
        .map(PathBuf::from)
        .expect("docker-registry ships no binary in /usr/bin")
}

fn scratch(name: &str) -> PathBuf {
    let p = setup().scratch.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// A per-test cache directory the user can create.
fn cache_dir(name: &str) -> PathBuf {
    let p = setup().scratch.join(format!("cache-{name}"));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn build(out: &Path, source: &str, cache: &Path, extra: &[&str]) -> Out {
    let o = out.display().to_string();
    let mut args = vec!["build", "--force"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&o, source]);
    launcher(&args)
        .env("XDG_CACHE_HOME", &cache.display().to_string())
        .run()
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn big_sha() -> String {
    std::fs::read_to_string(fixture("big.sha256"))
        .unwrap()
        .trim()
        .to_string()
}

/// The image works: the big file, the config's env, and `run` = entrypoint + cmd.
fn check_image(sif: &Path, oci_var: &str) {
    let s = sif.display().to_string();
    assert_eq!(
        sh(&s, "sha256sum /data/big | cut -d' ' -f1; echo \"$OCI_VAR\""),
        format!("{}\n{oci_var}\n", big_sha())
    );
    let out = launcher(&["run", &s]).run();
    out.ok();
    assert_eq!(out.stdout, "default-cmd\n");
}

/// `sha256:<hex>` digests of the regular files in a cache's blob directory.
fn cached_blobs(cache: &Path) -> Vec<(String, PathBuf)> {
    let dir = cache.join("launcher/blobs/sha256");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

#[test]
fn pull_build_cache_digest_resume_and_errors() {
    let reg = Registry::start("main", None);
    let layout = format!("oci:{}:test", fixture("oci-layout"));
    reg.push(&layout, "test/busybox:1", &[]);
    let src = format!("docker://{}/test/busybox:1", reg.host());
    let cache = cache_dir("main");
    let sif = scratch("reg.sif");

    // First build: everything comes from the registry.
    let out = build(&sif, &src, &cache, &["--insecure"]);
    out.ok();
    assert!(out.stderr.contains("downloaded 2 ("), "{out:?}");
    check_image(&sif, "from-oci");
    // The config and the layer, plus the manifest, each named by its digest.
    let blobs = cached_blobs(&cache);
    assert_eq!(blobs.len(), 3, "{blobs:?}");
    for (hex, path) in &blobs {
        assert_eq!(&sha256(path), hex, "cached blob {}", path.display());
    }
    assert_eq!(reg.blob_gets(0).len(), 2, "{}", reg.log());

    // Second build: nothing downloaded, as the registry's log confirms.
    let mark = reg.log().len();
    let out = build(&sif, &src, &cache, &["--insecure"]);
    out.ok();
    assert!(
        out.stderr.contains("downloaded 0 (0 bytes), cached 2"),
        "{out:?}"
    );
    assert_eq!(reg.blob_gets(mark), Vec::<String>::new());
    check_image(&sif, "from-oci");

    // By digest: the manifest is checked against it.
    let digest = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(&src)
        .output()
        .unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "skopeo inspect: {digest:?}");
    let by_digest = scratch("reg-digest.sif");
    let out = build(
        &by_digest,
        &format!("docker://{}/test/busybox@{digest}", reg.host()),
        &cache,
        &["--insecure"],
    );
    out.ok();
    assert!(out.stderr.contains(&digest), "{out:?}");
    check_image(&by_digest, "from-oci");

    // Resume: half of the layer left as a partial download, the blob itself gone.
    let (layer_hex, layer_path) = blobs
        .iter()
        .max_by_key(|(_, p)| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let data = std::fs::read(&layer_path).unwrap();
    let partial = layer_path.with_extension("partial");
    std::fs::write(&partial, &data[..data.len() / 2]).unwrap();
    std::os::unix::fs::chown(&partial, Some(setup().uid), Some(setup().gid)).unwrap();
    std::fs::remove_file(&layer_path).unwrap();
    let mark = reg.log().len();
    let out = build(&sif, &src, &cache, &["--insecure"]);
    out.ok();
    assert!(
        out.stderr.contains("downloaded 1 (") && out.stderr.contains("1 resumed"),
        "{out:?}"
    );
    let gets = reg.blob_gets(mark);
    let rest = data.len() - data.len() / 2;
    assert!(
        gets.len() == 1
            && gets[0].contains(&layer_hex)
            && gets[0].contains(&format!("\" 206 {rest} ")),
        "expected one ranged GET of the rest of the layer ({rest} bytes): {gets:?}"
    );
    assert_eq!(sha256(&layer_path), layer_hex);
    assert!(!partial.exists());
    check_image(&sif, "from-oci");

    // A corrupt cached blob is noticed and fetched again.
    std::fs::write(&layer_path, b"not the layer").unwrap();
    let out = build(&sif, &src, &cache, &["--insecure"]);
    out.ok();
    assert!(out.stderr.contains("downloaded 1 ("), "{out:?}");
    assert_eq!(sha256(&layer_path), layer_hex);

    // Errors: one line, exit 255.
    let missing = build(
        &scratch("missing.sif"),
        &format!("docker://{}/test/busybox:nope", reg.host()),
        &cache,
        &["--insecure"],
    );
    assert_eq!(missing.code, 255, "{missing:?}");
    assert!(
        missing.stderr.contains("no such image or tag") && missing.stderr.lines().count() == 1,
        "{missing:?}"
    );
    assert!(!scratch("missing.sif").exists());
    let tls = build(&scratch("tls.sif"), &src, &cache, &[]);
    assert_eq!(tls.code, 255, "{tls:?}");
    assert!(tls.stderr.contains("--insecure"), "{tls:?}");
    let free_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = build(
        &scratch("refused.sif"),
        &format!("docker://127.0.0.1:{free_port}/test/busybox:1"),
        &cache,
        &["--insecure"],
    );
    assert_eq!(refused.code, 255, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains(&format!("127.0.0.1:{free_port}: connection refused")),
        "{refused:?}"
    );
    let bad = build(&scratch("bad.sif"), "docker://Bad/Name", &cache, &[]);
    assert_eq!(bad.code, 255, "{bad:?}");
    assert!(bad.stderr.contains("malformed repository name"), "{bad:?}");
}

/// A two-platform index made from the fixture: linux/amd64 is the fixture image, linux/arm64
/// the same layers under a config that says arm64 and sets OCI_VAR=from-arm64.
fn make_multi_arch_layout(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let st = Command::new("cp")
        .arg("-a")
        .arg(fixture("oci-layout"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |data: &[u8]| -> (String, usize) {
        let tmp = dir.join("tmp-blob");
        std::fs::write(&tmp, data).unwrap();
        let hex = sha256(&tmp);
        std::fs::rename(&tmp, dir.join("blobs/sha256").join(&hex)).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m_desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "test")
        .unwrap()
        .clone();
    let manifest_bytes = std::fs::read(blob(m_desc["digest"].as_str().unwrap())).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    config["architecture"] = "arm64".into();
    let env: Vec<serde_json::Value> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            if e == "OCI_VAR=from-oci" {
                "OCI_VAR=from-arm64".into()
            } else {
                e.clone()
            }
        })
        .collect();
    config["config"]["Env"] = env.into();
    let (cd, cs) = put(config.to_string().as_bytes());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (m2d, m2s) = put(manifest.to_string().as_bytes());
    let oci_manifest = "application/vnd.oci.image.manifest.v1+json";
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": oci_manifest, "digest": m_desc["digest"], "size": m_desc["size"],
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": oci_manifest, "digest": m2d, "size": m2s,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}
        ]
    });
    let (id, is) = put(idx.to_string().as_bytes());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": is,
                       "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    });
    std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
}

#[test]
fn multi_arch_index_picks_the_platform() {
    let reg = Registry::start("multi", None);
    let layout = setup().scratch.join("multi-layout");
    make_multi_arch_layout(&layout);
    reg.push(
        &format!("oci:{}:multi", layout.display()),
        "test/multi:1",
        &["--all"],
    );
    let src = format!("docker://{}/test/multi:1", reg.host());
    let cache = cache_dir("multi");

    let amd = scratch("multi-amd64.sif");
    build(&amd, &src, &cache, &["--insecure"]).ok();
    check_image(&amd, "from-oci");

    let arm = scratch("multi-arm64.sif");
    let out = build(&arm, &src, &cache, &["--insecure", "--arch", "arm64"]);
    out.ok();
    // Same layer, new config: only the config is downloaded.
    assert!(
        out.stderr.contains("downloaded 1 (") && out.stderr.contains("cached 1"),
        "{out:?}"
    );
    check_image(&arm, "from-arm64");

    let out = build(
        &scratch("multi-riscv.sif"),
        &src,
        &cache,
        &["--insecure", "--arch", "riscv64"],
    );
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr
            .contains("no linux/riscv64 image (available: linux/amd64, linux/arm64/v8)"),
        "{out:?}"
    );
}

#[test]
fn basic_auth_with_credentials_from_docker_config() {
    let hash = Command::new("htpasswd")
        .args(["-Bbn", "puller", "s3cret-pw"])
        .output()
        .expect("running htpasswd (apache2-utils; tests/setup.sh installs it)");
    assert!(hash.status.success());
    let reg = Registry::start("auth", Some(&String::from_utf8_lossy(&hash.stdout)));
    reg.push(
        &format!("oci:{}:test", fixture("oci-layout")),
        "test/private:1",
        &["--dest-creds", "puller:s3cret-pw"],
    );
    let src = format!("docker://{}/test/private:1", reg.host());
    let cache = cache_dir("auth");
    let sif = scratch("auth.sif");

    // No credentials: a clear refusal that names where they go.
    let out = build(&sif, &src, &cache, &["--insecure"]);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains("requires authentication")
            && out.stderr.contains(".docker/config.json"),
        "{out:?}"
    );

    // Credentials in $DOCKER_CONFIG/config.json.
    let config_dir = setup().scratch.join("docker-config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let write_config = |user_pass: &str| {
        let auth = Command::new("sh")
            .args(["-c", &format!("printf %s '{user_pass}' | base64 -w0")])
            .output()
            .unwrap();
        let json = format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            reg.host(),
            String::from_utf8_lossy(&auth.stdout)
        );
        std::fs::write(config_dir.join("config.json"), json).unwrap();
        std::os::unix::fs::chown(config_dir.join("config.json"), Some(setup().uid), None).unwrap();
    };
    let build_with_config = || {
        let o = sif.display().to_string();
        launcher(&["build", "--force", "--insecure", &o, &src])
            .env("XDG_CACHE_HOME", &cache.display().to_string())
            .env("DOCKER_CONFIG", &config_dir.display().to_string())
            .run()
    };
    write_config("puller:wrong-pw");
    let out = build_with_config();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains("denied access") && !out.stderr.contains("wrong-pw"),
        "{out:?}"
    );
    write_config("puller:s3cret-pw");
    let out = build_with_config();
    out.ok();
    assert!(!out.stderr.contains("s3cret"), "{out:?}");
    check_image(&sif, "from-oci");
}

/// `launcher pull` as Apptainer users type it: the default name NAME_TAG.sif (in --dir), an
/// explicit output, and the layer cache in `$APPTAINER_CACHEDIR` (issue 17).
#[test]
fn pull_names_the_image_and_uses_apptainers_cache_dir() {
    let reg = Registry::start("pull", None);
    let layout = format!("oci:{}:test", fixture("oci-layout"));
    reg.push(&layout, "test/busybox:1", &[]);
    let src = format!("docker://{}/test/busybox:1", reg.host());
    let dir = setup().scratch.join("pulled");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let cache = cache_dir("apptainer");
    let d = dir.display().to_string();
    let out = launcher(&["pull", "--insecure", "--dir", &d, &src])
        .env("APPTAINER_CACHEDIR", &cache.display().to_string())
        .run();
    out.ok();
    let sif = dir.join("busybox_1.sif");
    assert!(sif.is_file(), "{out:?}");
    check_image(&sif, "from-oci");
    assert!(
        !cached_blobs(&cache).is_empty(),
        "layers cached under $APPTAINER_CACHEDIR/launcher"
    );
    // An explicit output; an existing one needs --force.
    let named = dir.join("mine.sif").display().to_string();
    launcher(&["pull", "--insecure", &named, &src])
        .env("APPTAINER_CACHEDIR", &cache.display().to_string())
        .run()
        .ok();
    let again = launcher(&["pull", "--insecure", &named, &src]).run();
    assert_eq!(again.code, 255, "{again:?}");
    assert!(again.stderr.contains("use --force"), "{again:?}");
    // The cache, as `apptainer cache list|clean` users expect.
    let c = cache.display().to_string();
    let list = launcher(&["cache", "list"])
        .env("APPTAINER_CACHEDIR", &c)
        .run();
    list.ok();
    assert!(
        list.stdout.contains(&format!("cache: {c}/launcher")),
        "{list:?}"
    );
    assert!(!list.stdout.contains(" 0 blobs"), "{list:?}");
    let dry = launcher(&["cache", "clean"])
        .env("APPTAINER_CACHEDIR", &c)
        .run();
    dry.ok();
    assert!(dry.stdout.contains("run with --force"), "{dry:?}");
    assert!(
        !cached_blobs(&cache).is_empty(),
        "nothing removed without --force"
    );
    launcher(&["cache", "clean", "--force"])
        .env("APPTAINER_CACHEDIR", &c)
        .run()
        .ok();
    assert!(cached_blobs(&cache).is_empty());
    let other = launcher(&["pull", "library://x/y"]).run();
    assert_eq!(other.code, 255);
    assert!(other.stderr.contains("takes docker://REF"), "{other:?}");
}

/// A definition file with `Bootstrap: docker` from the registry: the base comes through the
/// blob cache (a rebuild downloads nothing), %post runs as fake root on the staged layers.
#[test]
fn definition_file_bootstraps_from_the_registry() {
    let reg = Registry::start("deffile", None);
    let layout = format!("oci:{}:test", fixture("oci-layout"));
    reg.push(&layout, "test/busybox:def", &[]);
    let cache = cache_dir("deffile");
    let def = scratch("from-registry.def");
    std::fs::write(
        &def,
        format!(
            "Bootstrap: docker\nFrom: {}/test/busybox:def\n\n%post\n    echo \"built as $(id -u)\" > /built\n",
            reg.host()
        ),
    )
    .unwrap();
    let sif = scratch("from-registry.sif");
    let def = def.display().to_string();
    let out = build(&sif, &def, &cache, &["--insecure", "--compress", "lz4"]);
    out.ok();
    assert!(out.stderr.contains("downloaded 2 ("), "{out:?}");
    let img = sif.display().to_string();
    assert_eq!(
        sh(&img, "cat /built; echo $OCI_VAR"),
        "built as 0\nfrom-oci\n"
    );
    assert!(
        out.stderr.contains("base: unpacked into the cache docker-"),
        "{out:?}"
    );
    let out = build(&sif, &def, &cache, &["--insecure", "--compress", "lz4"]);
    out.ok();
    assert!(
        out.stderr.contains("downloaded 0 (0 bytes), cached 2"),
        "{out:?}"
    );
    // The layers are not staged again either: the unpacked tree (and what its layers
    // recorded: the OCI environment) comes from the cache.
    assert!(
        out.stderr.contains("base: reused the cached tree docker-"),
        "{out:?}"
    );
    assert_eq!(
        sh(&img, "cat /built; echo $OCI_VAR"),
        "built as 0\nfrom-oci\n"
    );
}

/// The converted images in a cache (`<cache>/launcher/sif/*.sif`) and anything else there
/// but their locks (temporaries a conversion left).
fn cached_sifs(cache: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let dir = cache.join("launcher/sif");
    let (mut sifs, mut other) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") {
            continue;
        }
        if name.ends_with(".sif") && !name.starts_with('.') {
            sifs.push(e.path());
        } else {
            other.push(name);
        }
    }
    sifs.sort();
    (sifs, other)
}

/// `exec docker://...` as Apptainer users type it (issue 17): the first run pulls and
/// converts into the cache, keyed by the manifest digest; a second run reuses that file
/// without converting (its mtime is unchanged); ranks starting at once convert it once.
#[test]
fn exec_docker_source_converts_once_into_the_cache() {
    let reg = Registry::start("runtime", None);
    let layout = format!("oci:{}:test", fixture("oci-layout"));
    reg.push(&layout, "test/busybox:1", &[]);
    let src = format!("docker://{}/test/busybox:1", reg.host());
    let cache = cache_dir("runtime");
    let c = cache.display().to_string();
    let script = "echo \"$OCI_VAR\"; id -u; cat /data/tree/a/b/deep.txt";
    let want = format!("from-oci\n{}\ndeep\n", setup().uid);

    let first = launcher(&["exec", "--nohttps", &src, "/bin/sh", "-c", script])
        .env("APPTAINER_CACHEDIR", &c)
        .run();
    first.ok();
    assert_eq!(first.stdout, want, "{first:?}");
    assert!(first.stderr.contains("launcher: converting"), "{first:?}");
    let (sifs, other) = cached_sifs(&cache);
    assert_eq!(sifs.len(), 1, "{sifs:?}");
    assert!(other.is_empty(), "left behind: {other:?}");
    // Named by the platform manifest's digest, which the registry serves for the tag.
    let hex = sifs[0].file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(hex.len(), 64, "{sifs:?}");
    assert!(reg.log().contains(&format!("sha256:{hex}")) || first.stderr.contains(&hex));
    let mtime = std::fs::metadata(&sifs[0]).unwrap().modified().unwrap();

    // Again, with Apptainer's variable instead of the flag: no conversion.
    let log_from = reg.log().len();
    let second = launcher(&["--debug", "exec", &src, "/bin/sh", "-c", script])
        .env("APPTAINER_CACHEDIR", &c)
        .env("APPTAINER_NOHTTPS", "1")
        .run();
    second.ok();
    assert_eq!(second.stdout, want, "{second:?}");
    assert!(!second.stderr.contains("converting"), "{second:?}");
    assert!(
        second
            .stderr
            .contains(&format!("cached image {}", sifs[0].display())),
        "{second:?}"
    );
    assert!(
        second
            .stderr
            .contains(&format!("image: {} (SIF", sifs[0].display())),
        "{second:?}"
    );
    assert_eq!(cached_sifs(&cache).0, sifs);
    assert_eq!(
        std::fs::metadata(&sifs[0]).unwrap().modified().unwrap(),
        mtime
    );
    assert!(reg.blob_gets(log_from).is_empty(), "no layer fetched again");

    // Four ranks at once on an empty cache: one converts, the others wait and reuse it.
    let cache = cache_dir("runtime-ranks");
    let c = cache.display().to_string();
    let ranks: Vec<_> = (0..4)
        .map(|_| {
            launcher(&["exec", "--nohttps", &src, "/bin/sh", "-c", script])
                .env("APPTAINER_CACHEDIR", &c)
                .spawn()
        })
        .collect();
    let mut conversions = 0;
    for r in ranks {
        let out = r.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{stderr}");
        conversions += stderr.matches("launcher: converting").count();
    }
    assert_eq!(conversions, 1);
    let (sifs, other) = cached_sifs(&cache);
    assert_eq!(sifs.len(), 1, "{sifs:?}");
    assert!(other.is_empty(), "left behind: {other:?}");

    // `cache clean --force` while a launch runs from the cached image: the running one is not
    // disturbed (it holds the file open; the image server reads it lazily, after the clean),
    // the file is gone from the cache, and the next launch converts it again.
    let reader = launcher(&[
        "exec",
        "--nohttps",
        &src,
        "/bin/sh",
        "-c",
        "read go; cat /data/tree/a/b/deep.txt; sha256sum /data/big | cut -c1-64",
    ])
    .env("APPTAINER_CACHEDIR", &c)
    .command()
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Started once its command waits on stdin: the image is mounted from the cached file.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shell_waiting("/bin/sh\0-c\0read go") {
        assert!(Instant::now() < deadline, "the reader never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let clean = launcher(&["cache", "clean", "--force"])
        .env("APPTAINER_CACHEDIR", &c)
        .run();
    clean.ok();
    assert!(
        clean.stdout.contains("removed 1 converted images"),
        "{clean:?}"
    );
    assert!(cached_sifs(&cache).0.is_empty(), "the cached image stayed");
    let mut reader = reader;
    {
        use std::io::Write;
        reader.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let out = reader.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("deep\n{}\n", big_sha()),
        "the running launch lost its image"
    );
    let again = launcher(&["exec", "--nohttps", &src, "/bin/true"])
        .env("APPTAINER_CACHEDIR", &c)
        .run();
    again.ok();
    assert!(again.stderr.contains("launcher: converting"), "{again:?}");
}

/// Whether a process's command line starts with `prefix` (arguments joined by NUL).
fn shell_waiting(prefix: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| c.starts_with(prefix.as_bytes()))
            .unwrap_or(false)
    })
}

/// `oras://` (issue 17): a SIF pushed to the registry as Apptainer pushes it, pulled back
/// byte for byte (by name and with Apptainer's default file name), run straight from the
/// registry (fetched once into the blob cache), with credentials where the registry wants
/// them. Not a SIF, or not a SIF artifact: one line each.
#[test]
fn oras_push_pull_and_exec_of_a_sif() {
    let hash = Command::new("htpasswd")
        .args(["-Bbn", "pusher", "0ras-pw"])
        .output()
        .expect("running htpasswd (apache2-utils; tests/setup.sh installs it)");
    assert!(hash.status.success());
    let reg = Registry::start("oras", Some(&String::from_utf8_lossy(&hash.stdout)));
    let config_dir = setup().scratch.join("docker-config-oras");
    std::fs::create_dir_all(&config_dir).unwrap();
    let auth = Command::new("sh")
        .args(["-c", "printf %s 'pusher:0ras-pw' | base64 -w0"])
        .output()
        .unwrap();
    std::fs::write(
        config_dir.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            reg.host(),
            String::from_utf8_lossy(&auth.stdout)
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(config_dir.join("config.json"), Some(setup().uid), None).unwrap();
    let docker_config = config_dir.display().to_string();
    let cache = cache_dir("oras");
    let c = cache.display().to_string();
    let run = |args: &[&str]| {
        launcher(args)
            .env("DOCKER_CONFIG", &docker_config)
            .env("XDG_CACHE_HOME", &c)
            .run()
    };
    let sif = fixture("singularityce-busybox-amd64.sif");
    let uri = format!("oras://{}/lab/busybox:1.0", reg.host());

    // Without credentials the registry's refusal, in one line.
    let anon = launcher(&["push", "--insecure", &sif, &uri]).run();
    assert_eq!(anon.code, 255, "{anon:?}");
    assert!(anon.stderr.contains("requires authentication"), "{anon:?}");
    assert_eq!(anon.stderr.lines().count(), 1, "{anon:?}");

    run(&["push", "--nohttps", &sif, &uri]).ok();
    // The manifest is Apptainer's: the SIF config type, one SIF layer with its file name.
    let manifest = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "pusher:0ras-pw",
        ])
        .arg(format!("docker://{}/lab/busybox:1.0", reg.host()))
        .output()
        .unwrap();
    let manifest = String::from_utf8_lossy(&manifest.stdout).into_owned();
    assert!(
        manifest.contains("application/vnd.sylabs.sif.config.v1+json")
            && manifest.contains("application/vnd.sylabs.sif.layer.v1.sif")
            && manifest.contains("singularityce-busybox-amd64.sif"),
        "{manifest}"
    );

    let dir = setup().scratch.join("oras-pulled");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let d = dir.display().to_string();
    run(&["pull", "--insecure", "--dir", &d, &uri]).ok();
    assert_eq!(
        sha256(&dir.join("busybox_1.0.sif")),
        sha256(Path::new(&sif))
    );
    let named = dir.join("again.sif").display().to_string();
    run(&["pull", "--insecure", &named, &uri]).ok();
    assert_eq!(sha256(Path::new(&named)), sha256(Path::new(&sif)));
    let exists = run(&["pull", "--insecure", &named, &uri]);
    assert_eq!(exists.code, 255, "{exists:?}");
    assert!(exists.stderr.contains("--force"), "{exists:?}");

    // Run from the registry (a cache of its own): the SIF is fetched once, the second run
    // downloads nothing.
    let run_cache = cache_dir("oras-run").display().to_string();
    let exec = |args: &[&str]| {
        launcher(args)
            .env("DOCKER_CONFIG", &docker_config)
            .env("XDG_CACHE_HOME", &run_cache)
            .run()
    };
    let before = reg.blob_gets(0).len();
    let out = exec(&["exec", "--nohttps", &uri, "/bin/sh", "-c", "echo from-oras"]);
    assert_eq!(out.ok().stdout, "from-oras\n");
    let once = reg.blob_gets(0).len();
    assert!(once > before, "the first run fetched nothing");
    exec(&["exec", "--nohttps", &uri, "/bin/true"]).ok();
    assert_eq!(reg.blob_gets(0).len(), once, "the second run fetched again");

    // Not a SIF file to push; a container image is no SIF artifact to pull.
    let not_sif = run(&["push", "--insecure", &fixture("busybox-zstd.sqfs"), &uri]);
    assert_eq!(not_sif.code, 255, "{not_sif:?}");
    assert!(not_sif.stderr.contains("not a SIF file"), "{not_sif:?}");
    assert_eq!(not_sif.stderr.lines().count(), 1, "{not_sif:?}");
    reg.push(
        &format!("oci:{}:test", fixture("oci-layout")),
        "lab/container:1",
        &["--dest-creds", "pusher:0ras-pw"],
    );
    let container = format!("oras://{}/lab/container:1", reg.host());
    let wrong = run(&["pull", "--insecure", "--force", &named, &container]);
    assert_eq!(wrong.code, 255, "{wrong:?}");
    assert!(
        wrong.stderr.contains("not a SIF artifact") && wrong.stderr.contains("docker://"),
        "{wrong:?}"
    );
    assert_eq!(wrong.stderr.lines().count(), 1, "{wrong:?}");
}
