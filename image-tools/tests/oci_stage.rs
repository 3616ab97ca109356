//! Staging Docker/OCI images made by real tools: umoci builds a multi-layer OCI
//! layout (whiteout, opaque directory, hard link to a lower layer), skopeo copies it
//! to oci-archive and docker-archive. umoci and skopeo are installed with apt-get
//! when missing; if that fails the tests fail (they never skip).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use image_tools::oci::{stage, Error, Source, Staged};
use image_tools::tree::{EntryOverride, Special};

/// Runs a command, failing the test with its output if it does not succeed.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// umoci and skopeo, from Debian packages; a missing tool is a failed set-up.
fn ensure_tools() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (bin, pkg) in [("umoci", "umoci"), ("skopeo", "skopeo")] {
        if Command::new(bin).arg("--version").output().is_ok() {
            continue;
        }
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !apt(&["install", "-y", "-qq", pkg]) {
            apt(&["update", "-qq"]);
            apt(&["install", "-y", "-qq", pkg]);
        }
        assert!(
            Command::new(bin).arg("--version").output().is_ok(),
            "{bin} is not installed and `apt-get install {pkg}` failed (run as root, or install it)"
        );
    }
}

/// A fresh scratch directory under the target dir.
fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "oci-stage-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    p
}

fn write(path: &Path, data: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tar header with raw name bytes: the tar crate's own setters refuse `..` and
/// absolute paths, which is exactly what the hostile layers need.
fn raw_header(kind: tar::EntryType, name: &[u8], link: &[u8], size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    h
}

/// A PAX extended header record: "<len> <key>=<value>\n", len counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

struct Entry<'a> {
    kind: tar::EntryType,
    name: &'a [u8],
    link: &'a [u8],
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a str) -> Entry<'a> {
    Entry {
        kind: tar::EntryType::Regular,
        name: name.as_bytes(),
        link: b"",
        data: data.as_bytes(),
    }
}

fn layer_tar(path: &Path, entries: &[Entry]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for e in entries {
        let h = raw_header(e.kind, e.name, e.link, e.data.len() as u64);
        b.append(&h, e.data).unwrap();
    }
    b.finish().unwrap();
}

/// The test image, in the three formats.
struct Fixture {
    layout: PathBuf,
    zstd_layout: PathBuf,
    v2s2_layout: PathBuf,
    oci_archive: PathBuf,
    docker_archive: PathBuf,
}

const UNIQUE_OWNER: u32 = 1000;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        ensure_tools();
        // Fixtures of earlier runs whose process is gone.
        for e in fs::read_dir(env!("CARGO_TARGET_TMPDIR")).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("oci-stage-")
                .and_then(|r| r.split('-').next());
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = fs::remove_dir_all(Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name));
            }
        }
        let base = scratch("fixture");
        let layout = base.join("layout");
        let image = format!("{}:img", layout.display());
        let bundle = base.join("bundle");
        let rootfs = bundle.join("rootfs");
        run("umoci", &["init", "--layout", layout.to_str().unwrap()]);
        run("umoci", &["new", "--image", &image]);
        run(
            "umoci",
            &[
                "unpack",
                "--rootless",
                "--image",
                &image,
                bundle.to_str().unwrap(),
            ],
        );

        // Layer 1: the base files.
        write(&rootfs.join("etc/hello"), "hello\n", 0o644);
        write(&rootfs.join("etc/gone"), "bye\n", 0o644);
        write(&rootfs.join("opt/app/old1"), "old\n", 0o644);
        write(&rootfs.join("opt/app/sub/old2"), "old\n", 0o600);
        write(&rootfs.join("bin/tool"), "#!/bin/sh\necho tool\n", 0o755);
        write(&rootfs.join("usr/lib/libx.so"), "lib\n", 0o644);
        std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
        run("mkfifo", &[rootfs.join("etc/fifo").to_str().unwrap()]);
        // --refresh-bundle: the next repack diffs against this layer, not the empty image.
        run(
            "umoci",
            &[
                "repack",
                "--refresh-bundle",
                "--image",
                &image,
                bundle.to_str().unwrap(),
            ],
        );

        // Layer 2: umoci writes a whiteout for the deleted file.
        fs::remove_file(rootfs.join("etc/gone")).unwrap();
        write(&rootfs.join("etc/new"), "new\n", 0o644);
        run(
            "umoci",
            &["repack", "--image", &image, bundle.to_str().unwrap()],
        );

        // Layer 3: an opaque /opt/app holding only the new content.
        let newapp = base.join("newapp");
        write(&newapp.join("fresh"), "fresh\n", 0o644);
        run(
            "umoci",
            &[
                "insert",
                "--rootless",
                "--image",
                &image,
                "--opaque",
                newapp.to_str().unwrap(),
                "/opt/app",
            ],
        );

        // Layer 4 (umoci adds it verbatim): what umoci would not write from a
        // directory: a hard link to a layer-1 file, a device, other owners, a PAX xattr.
        let l4 = base.join("layer4.tar");
        {
            let mut b = tar::Builder::new(fs::File::create(&l4).unwrap());
            let h = raw_header(tar::EntryType::Link, b"etc/hello-link", b"etc/hello", 0);
            b.append(&h, &[][..]).unwrap();
            let pax = pax_record("SCHILY.xattr.user.test", b"value");
            let h = raw_header(
                tar::EntryType::XHeader,
                b"PaxHeader/owned",
                b"",
                pax.len() as u64,
            );
            b.append(&h, &pax[..]).unwrap();
            let mut h = raw_header(tar::EntryType::Regular, b"data/owned", b"", 5);
            h.set_uid(UNIQUE_OWNER.into());
            h.set_gid(UNIQUE_OWNER.into());
            h.set_mode(0o4750);
            h.set_mtime(1_234_567_890);
            h.set_cksum();
            b.append(&h, &b"owned"[..]).unwrap();
            let mut h = raw_header(tar::EntryType::Char, b"dev/null", b"", 0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            h.set_mode(0o666);
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
            b.finish().unwrap();
        }
        run(
            "umoci",
            &["raw", "add-layer", "--image", &image, l4.to_str().unwrap()],
        );

        run(
            "umoci",
            &[
                "config",
                "--image",
                &image,
                "--config.env",
                "FOO=bar",
                "--config.entrypoint",
                "/bin/tool",
                "--config.cmd",
                "arg1",
                "--config.cmd",
                "arg2",
                "--config.workingdir",
                "/opt/app",
                "--config.label",
                "org.test=yes",
                "--config.user",
                "1000:1000",
            ],
        );

        let oci_archive = base.join("img-oci.tar");
        let docker_archive = base.join("img-docker.tar");
        let from = format!("oci:{image}");
        run(
            "skopeo",
            &[
                "--insecure-policy",
                "copy",
                &from,
                &format!("oci-archive:{}", oci_archive.display()),
            ],
        );
        run(
            "skopeo",
            &[
                "--insecure-policy",
                "copy",
                &from,
                &format!(
                    "docker-archive:{}:test/img:latest",
                    docker_archive.display()
                ),
            ],
        );
        // The same image with zstd layers, and with Docker v2 schema 2 manifest and media types.
        let zstd_layout = base.join("layout-zstd");
        run(
            "skopeo",
            &[
                "--insecure-policy",
                "copy",
                "--dest-compress",
                "--dest-compress-format",
                "zstd",
                &from,
                &format!("oci:{}:img", zstd_layout.display()),
            ],
        );
        let v2s2_layout = base.join("layout-v2s2");
        run(
            "skopeo",
            &[
                "--insecure-policy",
                "copy",
                "--format",
                "v2s2",
                &from,
                &format!("oci:{}:img", v2s2_layout.display()),
            ],
        );
        Fixture {
            zstd_layout,
            v2s2_layout,
            layout,
            oci_archive,
            docker_archive,
        }
    })
}

/// Every path in the staged tree with its type, content and hard-link group.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(
        root: &Path,
        dir: &Path,
        inodes: &mut BTreeMap<u64, String>,
        out: &mut BTreeMap<String, String>,
    ) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let desc = if m.is_dir() {
                walk(root, &p, inodes, out);
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("symlink {}", fs::read_link(&p).unwrap().display())
            } else {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                format!(
                    "file {:?} links={} first={first}",
                    fs::read_to_string(&p).unwrap(),
                    m.nlink()
                )
            };
            out.insert(rel, desc);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut BTreeMap::new(), &mut out);
    out
}

fn stage_ok(src: &Source) -> (PathBuf, Staged) {
    let dir = scratch("stage");
    let staged = stage(src, "amd64", &dir).unwrap_or_else(|e| panic!("staging {src}: {e}"));
    (dir, staged)
}

fn ov<'a>(s: &'a Staged, p: &str) -> &'a EntryOverride {
    s.overrides.get(Path::new(p)).unwrap_or_else(|| {
        panic!(
            "no override for {p}: {:?}",
            s.overrides.keys().collect::<Vec<_>>()
        )
    })
}

#[test]
fn multi_layer_image_from_umoci() {
    let f = fixture();
    let (dir, s) = stage_ok(&Source::OciLayout {
        dir: f.layout.clone(),
        reference: Some("img".into()),
    });
    let r = &s.root;
    assert_eq!(r, &dir.join("rootfs"));
    assert_eq!(fs::read_to_string(r.join("etc/hello")).unwrap(), "hello\n");
    assert_eq!(fs::read_to_string(r.join("etc/new")).unwrap(), "new\n");
    // Whiteout from layer 2.
    assert!(!r.join("etc/gone").exists());
    assert!(!s.overrides.contains_key(Path::new("etc/gone")));
    // Opaque /opt/app from layer 3.
    let app: Vec<_> = fs::read_dir(r.join("opt/app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(app, ["fresh"]);
    assert!(!s.overrides.contains_key(Path::new("opt/app/old1")));
    assert!(!s.overrides.contains_key(Path::new("opt/app/sub/old2")));
    // Hard link from layer 4 to a layer-1 file: one inode, one set of metadata.
    let a = fs::metadata(r.join("etc/hello")).unwrap();
    let b = fs::metadata(r.join("etc/hello-link")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(ov(&s, "etc/hello-link"), ov(&s, "etc/hello"));
    // Root-owned files as the tar says, whoever staged them.
    let hello = ov(&s, "etc/hello");
    assert_eq!(
        (hello.uid, hello.gid, hello.mode),
        (Some(0), Some(0), Some(0o644))
    );
    assert_eq!(ov(&s, "bin/tool").mode, Some(0o755));
    assert_eq!(ov(&s, "opt/app/fresh").uid, Some(0));
    // Other owners, setuid, mtime and xattrs go to the overrides; the disk copy stays usable.
    let owned = ov(&s, "data/owned");
    assert_eq!(owned.uid, Some(UNIQUE_OWNER));
    assert_eq!(owned.gid, Some(UNIQUE_OWNER));
    assert_eq!(owned.mode, Some(0o4750));
    assert_eq!(owned.mtime, Some(1_234_567_890));
    assert_eq!(
        owned.xattrs,
        Some(vec![(b"user.test".to_vec(), b"value".to_vec())])
    );
    let m = fs::metadata(r.join("data/owned")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750 | 0o600);
    assert_eq!(m.mtime(), 1_234_567_890);
    // Device and fifo: empty placeholders plus the special override.
    assert_eq!(
        ov(&s, "dev/null").special,
        Some(Special::CharDevice { major: 1, minor: 3 })
    );
    assert_eq!(ov(&s, "dev/null").mode, Some(0o666));
    assert_eq!(ov(&s, "etc/fifo").special, Some(Special::Fifo));
    let m = fs::symlink_metadata(r.join("etc/fifo")).unwrap();
    assert!(m.is_file() && m.len() == 0);
    assert!(!m.file_type().is_fifo());
    // Symlinks stay symlinks with their target as written.
    assert_eq!(fs::read_link(r.join("lib")).unwrap(), Path::new("usr/lib"));
    // Every path on disk has an override, with uid/gid/mode/mtime.
    for p in snapshot(r).keys() {
        let o = ov(&s, p);
        assert!(
            o.uid.is_some() && o.gid.is_some() && o.mode.is_some(),
            "{p}: {o:?}"
        );
    }
    assert!(s.manifest_digest.starts_with("sha256:") && s.manifest_digest.len() == 71);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn config_is_parsed() {
    let f = fixture();
    let (dir, s) = stage_ok(&Source::parse(&format!("oci:{}:img", f.layout.display())).unwrap());
    let c = &s.config;
    assert!(c.env.contains(&"FOO=bar".to_string()), "{:?}", c.env);
    assert_eq!(c.entrypoint, ["/bin/tool"]);
    assert_eq!(c.cmd, ["arg1", "arg2"]);
    assert_eq!(c.working_dir.as_deref(), Some("/opt/app"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.labels.get("org.test").map(String::as_str), Some("yes"));
    assert_eq!((c.architecture.as_str(), c.os.as_str()), ("amd64", "linux"));
    assert_eq!(c.raw["config"]["WorkingDir"], "/opt/app");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn three_formats_stage_the_same_tree() {
    let f = fixture();
    let sources = [
        Source::OciLayout {
            dir: f.layout.clone(),
            reference: None,
        },
        Source::parse(&format!("oci-archive:{}", f.oci_archive.display())).unwrap(),
        Source::parse(&format!("docker-archive:{}", f.docker_archive.display())).unwrap(),
    ];
    let base = scratch("variants");
    // `docker save | gzip` and a pre-1.10 archive (`repositories` and `<id>/json` only).
    let gz = base.join("img-docker.tar.gz");
    run(
        "sh",
        &[
            "-c",
            &format!(
                "gzip -c '{}' > '{}'",
                f.docker_archive.display(),
                gz.display()
            ),
        ],
    );
    let legacy = base.join("img-legacy.tar");
    {
        let mut ar = tar::Archive::new(fs::File::open(&f.docker_archive).unwrap());
        let mut b = tar::Builder::new(fs::File::create(&legacy).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap() != Path::new("manifest.json") {
                let h = e.header().clone();
                b.append(&h, &mut e).unwrap();
            }
        }
        b.finish().unwrap();
    }
    let mut sources = sources.to_vec();
    sources.extend([
        Source::OciLayout {
            dir: f.zstd_layout.clone(),
            reference: None,
        },
        Source::OciLayout {
            dir: f.v2s2_layout.clone(),
            reference: None,
        },
        Source::DockerArchive(gz),
        Source::DockerArchive(legacy),
    ]);
    let staged: Vec<_> = sources.iter().map(stage_ok).collect();
    let (_, first) = &staged[0];
    let tree = snapshot(&first.root);
    assert!(tree.contains_key("etc/hello-link"));
    for (src, (_, s)) in sources.iter().zip(&staged).skip(1) {
        assert_eq!(snapshot(&s.root), tree, "{src} stages a different tree");
        assert_eq!(
            s.overrides, first.overrides,
            "{src} has different overrides"
        );
        assert_eq!(s.config.env, first.config.env, "{src}");
        assert_eq!(s.config.entrypoint, first.config.entrypoint, "{src}");
        assert_eq!(s.config.cmd, first.config.cmd, "{src}");
        assert_eq!(s.config.labels, first.config.labels, "{src}");
        assert_eq!(s.config.working_dir, first.config.working_dir, "{src}");
    }
    // The OCI archive holds the very same manifest.
    assert_eq!(staged[1].1.manifest_digest, first.manifest_digest);
    for (dir, _) in staged {
        fs::remove_dir_all(dir).unwrap();
    }
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn source_parsing() {
    assert_eq!(
        Source::parse("docker-archive:app.tar").unwrap(),
        Source::DockerArchive("app.tar".into())
    );
    assert_eq!(
        Source::parse("oci-archive:/x/app.tar").unwrap(),
        Source::OciArchive("/x/app.tar".into())
    );
    assert_eq!(
        Source::parse("oci:./layout:v1").unwrap(),
        Source::OciLayout {
            dir: "./layout".into(),
            reference: Some("v1".into())
        }
    );
    assert_eq!(
        Source::parse("oci:/a/b").unwrap(),
        Source::OciLayout {
            dir: "/a/b".into(),
            reference: None
        }
    );
    assert!(Source::parse("docker://busybox").is_err());
    assert!(Source::parse("oci:").is_err());
}

#[test]
fn wrong_tag_and_platform_are_reported() {
    let f = fixture();
    let dir = scratch("wrong");
    let e = stage(
        &Source::OciLayout {
            dir: f.layout.clone(),
            reference: Some("nope".into()),
        },
        "amd64",
        &dir.join("a"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope") && e.contains("img"), "{e}");
    let e = stage(
        &Source::OciArchive(f.oci_archive.clone()),
        "arm64",
        &dir.join("b"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("linux/amd64") && e.contains("arm64"), "{e}");
    fs::remove_dir_all(dir).unwrap();
}

/// A layout with umoci, plus raw layers added verbatim.
fn layout_with_layers(base: &Path, layers: &[&[Entry]]) -> PathBuf {
    ensure_tools();
    let layout = base.join("layout");
    let image = format!("{}:evil", layout.display());
    run("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    run("umoci", &["new", "--image", &image]);
    for (i, entries) in layers.iter().enumerate() {
        let t = base.join(format!("layer{i}.tar"));
        layer_tar(&t, entries);
        run(
            "umoci",
            &["raw", "add-layer", "--image", &image, t.to_str().unwrap()],
        );
    }
    layout
}

#[test]
fn hostile_layers_stay_inside() {
    let base = scratch("hostile");
    let outside = std::env::temp_dir().join(format!(
        "oci-pwned-{}-{}",
        std::process::id(),
        base.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_dir_all(&outside);
    let outside_s = outside.to_str().unwrap().to_string();
    let escape_name = format!("oci-escape-{}", std::process::id());
    let dotdot = format!("../../../../../../../../{escape_name}");
    let layer1 = [file("etc/passwd", "inside\n")];
    let layer2 = [
        file(&dotdot, "x"),
        file("/abs/path", "abs"),
        file("sub/../../up", "up"),
        Entry {
            kind: tar::EntryType::Symlink,
            name: b"evil",
            link: outside_s.as_bytes(),
            data: b"",
        },
        file("evil/pwned", "pwned"),
        Entry {
            kind: tar::EntryType::Symlink,
            name: b"loop",
            link: b"loop",
            data: b"",
        },
        Entry {
            kind: tar::EntryType::Link,
            name: b"hl",
            link: b"/etc/passwd",
            data: b"",
        },
        Entry {
            kind: tar::EntryType::Link,
            name: b"hl2",
            link: b"../../etc/passwd",
            data: b"",
        },
        // A later file through the symlink again, and replacing the symlink itself.
        file("evil/again", "again"),
        file("evil", "now a file"),
    ];
    let layout = layout_with_layers(&base, &[&layer1, &layer2]);
    // umoci stored the hostile names verbatim (nothing sanitized them before us).
    let verbatim = fs::read_dir(layout.join("blobs/sha256")).unwrap().any(|e| {
        let mut tar = Vec::new();
        let gz = fs::File::open(e.unwrap().path()).unwrap();
        let _ = flate2::read::GzDecoder::new(gz).read_to_end(&mut tar);
        tar.windows(dotdot.len()).any(|w| w == dotdot.as_bytes())
    });
    assert!(verbatim, "no layer blob holds {dotdot:?}");
    let dir = base.join("stage");
    let s = stage(
        &Source::OciLayout {
            dir: layout,
            reference: None,
        },
        "amd64",
        &dir,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = &s.root;
    assert!(!outside.exists(), "{} was created", outside.display());
    assert!(!base.join(&escape_name).exists() && !Path::new("/").join(&escape_name).exists());
    assert!(!dir.join("up").exists() && !base.join("up").exists());
    // Contained: `..` stops at the root, `/` is dropped, the symlink is followed inside.
    assert_eq!(fs::read_to_string(r.join(&escape_name)).unwrap(), "x");
    assert_eq!(fs::read_to_string(r.join("abs/path")).unwrap(), "abs");
    assert_eq!(fs::read_to_string(r.join("up")).unwrap(), "up");
    let inside = r.join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(inside.join("pwned")).unwrap(), "pwned");
    assert_eq!(fs::read_to_string(inside.join("again")).unwrap(), "again");
    assert_eq!(fs::read_to_string(r.join("evil")).unwrap(), "now a file");
    // Hard links point at the image's /etc/passwd, never the host's.
    let pw = fs::metadata(r.join("etc/passwd")).unwrap().ino();
    assert_eq!(fs::metadata(r.join("hl")).unwrap().ino(), pw);
    assert_eq!(fs::metadata(r.join("hl2")).unwrap().ino(), pw);
    assert!(!fs::read_to_string("/etc/passwd")
        .unwrap()
        .contains("inside\n"));
    // Overrides are keyed by the real, contained paths.
    for k in s.overrides.keys() {
        assert!(
            k.is_relative() && !k.components().any(|c| c.as_os_str() == ".."),
            "{k:?}"
        );
    }
    assert!(s
        .overrides
        .contains_key(&inside.strip_prefix(r).unwrap().join("pwned")));

    // A symlink loop as a parent is an error, not a hang.
    let b2 = scratch("hostile-loop");
    let layout = layout_with_layers(
        &b2,
        &[&[
            Entry {
                kind: tar::EntryType::Symlink,
                name: b"loop",
                link: b"loop/x",
                data: b"",
            },
            file("loop/file", "x"),
        ]],
    );
    let e = stage(
        &Source::OciLayout {
            dir: layout,
            reference: None,
        },
        "amd64",
        &b2.join("s"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("symbolic links"), "{e}");

    // Whiteouts naming `..` or `.` are refused rather than deleting the parent.
    for name in [&b"a/.wh..."[..], b".wh...", b"a/.wh..", b"a/.wh."] {
        let b3 = scratch("hostile-wh");
        let layout = layout_with_layers(
            &b3,
            &[
                &[file("a/keep", "k"), file("keep2", "k")],
                &[Entry {
                    kind: tar::EntryType::Regular,
                    name,
                    link: b"",
                    data: b"",
                }],
            ],
        );
        let e = stage(
            &Source::OciLayout {
                dir: layout,
                reference: None,
            },
            "amd64",
            &b3.join("s"),
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::Invalid(_)) && e.to_string().contains("whiteout"),
            "{e}"
        );
        assert!(b3.join("s/rootfs/a/keep").exists() && b3.join("s/rootfs/keep2").exists());
        fs::remove_dir_all(b3).unwrap();
    }

    // A hard link to a file the image does not have is an error.
    let b4 = scratch("hostile-hl");
    let layout = layout_with_layers(
        &b4,
        &[&[Entry {
            kind: tar::EntryType::Link,
            name: b"hl",
            link: b"/etc/shadow",
            data: b"",
        }]],
    );
    let e = stage(
        &Source::OciLayout {
            dir: layout,
            reference: None,
        },
        "amd64",
        &b4.join("s"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not found") && e.contains("layer 1/1"), "{e}");
    assert!(!outside.exists());
    for d in [base, b2, b4] {
        fs::remove_dir_all(d).unwrap();
    }
}

/// The digests of the image's manifest, config and layer blobs.
fn blob_digests(layout: &Path) -> (String, Vec<String>) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(m)).unwrap()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (config, layers)
}

fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

#[test]
fn corrupt_blobs_are_caught() {
    let f = fixture();
    let (config, layers) = blob_digests(&f.layout);
    let targets = [config.clone(), layers[0].clone(), layers[3].clone()];
    for d in &targets {
        let base = scratch("corrupt");
        let copy = base.join("layout");
        run(
            "cp",
            &["-a", f.layout.to_str().unwrap(), copy.to_str().unwrap()],
        );
        let blob = copy
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap());
        let len = fs::metadata(&blob).unwrap().len();
        flip_byte(&blob, len / 2);
        let e = stage(
            &Source::OciLayout {
                dir: copy,
                reference: None,
            },
            "amd64",
            &base.join("s"),
        )
        .unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("digest mismatch") && msg.contains(d.as_str()),
            "{msg}"
        );
        fs::remove_dir_all(base).unwrap();
    }

    // docker-archive: a flipped byte inside a layer's uncompressed tar breaks its diff_id.
    let base = scratch("corrupt-docker");
    let copy = base.join("img.tar");
    fs::copy(&f.docker_archive, &copy).unwrap();
    let manifest: serde_json::Value = {
        let mut ar = tar::Archive::new(fs::File::open(&copy).unwrap());
        let mut found = None;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap() == Path::new("manifest.json") {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                found = Some(serde_json::from_str(&s).unwrap());
            }
        }
        found.expect("manifest.json in the docker archive")
    };
    let first_layer = manifest[0]["Layers"][0].as_str().unwrap().to_string();
    let (pos, size) = {
        let mut ar = tar::Archive::new(fs::File::open(&copy).unwrap());
        let mut found = None;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            if e.path().unwrap() == Path::new(&first_layer) {
                found = Some((e.raw_file_position(), e.size()));
            }
        }
        found.expect("first layer in the docker archive")
    };
    flip_byte(&copy, pos + size / 2);
    let e = stage(&Source::DockerArchive(copy), "amd64", &base.join("s")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains(&first_layer), "{msg}");
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn not_an_image() {
    let base = scratch("junk");
    let junk = base.join("junk.tar");
    fs::File::create(&junk)
        .unwrap()
        .write_all(b"not a tar at all")
        .unwrap();
    let e = stage(
        &Source::DockerArchive(junk.clone()),
        "amd64",
        &base.join("a"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("junk.tar"), "{e}");
    let e = stage(
        &Source::OciLayout {
            dir: base.clone(),
            reference: None,
        },
        "amd64",
        &base.join("b"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("index.json"), "{e}");
    fs::remove_dir_all(base).unwrap();
}

/// A layout whose index.json holds a tagged image index (as multi-arch images do) next
/// to the plain tagged image: selection by tag, then by platform.
#[test]
fn image_index_selects_platform() {
    let f = fixture();
    let base = scratch("index");
    let copy = base.join("layout");
    run(
        "cp",
        &["-a", f.layout.to_str().unwrap(), copy.to_str().unwrap()],
    );
    let index_path = copy.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let image = index["manifests"][0].clone();
    let for_platform = |arch: &str| {
        let mut d = image.clone();
        d.as_object_mut().unwrap().remove("annotations");
        d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        d
    };
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [for_platform("arm64"), for_platform("amd64")],
    }))
    .unwrap();
    use sha2::Digest as _;
    let hex = format!("{:x}", sha2::Sha256::digest(&nested));
    fs::write(copy.join("blobs/sha256").join(&hex), &nested).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let src = |r: Option<&str>| Source::OciLayout {
        dir: copy.clone(),
        reference: r.map(String::from),
    };
    let s = stage(&src(Some("multi")), "amd64", &base.join("a")).unwrap();
    assert_eq!(s.manifest_digest, image["digest"].as_str().unwrap());
    assert!(s.root.join("etc/hello-link").exists());
    let e = stage(&src(Some("multi")), "riscv64", &base.join("b"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no linux/riscv64 image") && e.contains("linux/arm64, linux/amd64"),
        "{e}"
    );
    // The arm64 entry points at an amd64 config: caught, not staged.
    let e = stage(&src(Some("multi")), "arm64", &base.join("c"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("image is for linux/amd64"), "{e}");
    let e = stage(&src(None), "amd64", &base.join("d"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("several images") && e.contains("img, multi"),
        "{e}"
    );
    fs::remove_dir_all(base).unwrap();
}
