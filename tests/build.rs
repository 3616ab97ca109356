//! End-to-end: `launcher build` as the unprivileged user, each image checked three ways:
//! `unsquashfs -l` (listing), a kernel loop mount as root (contents), `launcher exec` (use).

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let p = setup().scratch.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn build(out: &Path, source: &str, extra: &[&str]) -> Out {
    let o = out.display().to_string();
    let mut args = vec!["build"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&o, source]);
    launcher(&args).run()
}

/// `unsquashfs -l` of a SquashFS (at an offset inside a SIF), as a set of paths.
fn listing(image: &Path, offset: u64) -> BTreeSet<String> {
    unsquashfs(image, offset, &["-l", "-d", ""])
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(str::to_string)
        .collect()
}

/// Loop-mount a SquashFS as root and run `check` on the mount point.
fn kernel_mount(image: &Path, offset: u64, check: impl FnOnce(&Path)) {
    let mnt = setup().scratch.join(format!(
        "mnt-{}",
        image.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "squashfs", "-o", &format!("loop,ro,offset={offset}")])
        .arg(image)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "the kernel refused to mount {}",
        image.display()
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mnt)));
    let _ = Command::new("umount").arg(&mnt).status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// `unsquashfs -o OFFSET OPTIONS... IMAGE`'s output; it must succeed.
fn unsquashfs(image: &Path, offset: u64, options: &[&str]) -> String {
    let out = Command::new("unsquashfs")
        .args(["-o", &offset.to_string()])
        .args(options)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs {options:?} {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `unsquashfs -lln`: one line per entry with mode, numeric owner, size and path.
fn long_listing(image: &Path, offset: u64) -> String {
    unsquashfs(image, offset, &["-lln"])
}

fn sif_offset(sif: &Path) -> u64 {
    image_tools::sif::SifFile::open(sif)
        .unwrap()
        .primary_squashfs()
        .unwrap()
        .offset
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn build_from_a_directory_checked_three_ways() {
    let src = fixture("rootfs");
    let want_sha = std::fs::read_to_string(fixture("big.sha256"))
        .unwrap()
        .trim()
        .to_string();
    let image_list: BTreeSet<String> = std::fs::read_to_string(fixture("busybox.list"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // The mksquashfs fixture adds a device and a fifo with pseudo definitions; a directory has neither.
    let expected: BTreeSet<String> = image_list
        .into_iter()
        .filter(|p| p != "/data/chardev" && p != "/data/fifo")
        .collect();
    for (name, extra) in [
        ("dir.sqfs", &[][..]),
        ("dir.sif", &["--compress", "gzip"][..]),
        ("dir-xz.sqfs", &["--compress", "xz"][..]),
        ("dir-lz4.sqfs", &["--compress", "lz4"][..]),
    ] {
        let out = scratch(name);
        build(&out, &src, extra).ok();
        let offset = if name.ends_with(".sif") {
            sif_offset(&out)
        } else {
            0
        };
        assert_eq!(
            listing(&out, offset),
            expected,
            "{name}: unsquashfs listing"
        );
        kernel_mount(&out, offset, |m| {
            assert_eq!(sha256(&m.join("data/big")), want_sha, "{name}");
            assert_eq!(
                std::fs::read_link(m.join("data/abs-link")).unwrap(),
                Path::new("/data/big")
            );
            use std::os::unix::fs::MetadataExt;
            let (a, b) = (
                std::fs::metadata(m.join("data/tree/f1")).unwrap(),
                std::fs::metadata(m.join("data/hardlink-f1")).unwrap(),
            );
            assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "{name}: hard link");
            for p in ["data/private", "tmp", "root", "bin/busybox"] {
                let want = std::fs::symlink_metadata(Path::new(&src).join(p))
                    .unwrap()
                    .mode();
                assert_eq!(
                    std::fs::symlink_metadata(m.join(p)).unwrap().mode(),
                    want,
                    "{name}: mode of {p}"
                );
            }
        });
        let o = out.display().to_string();
        assert_eq!(
            sh(
                &o,
                "sha256sum /data/big | cut -d' ' -f1; cat /data/rel-link"
            ),
            format!("{want_sha}\ndeep\n"),
            "{name}"
        );
    }
    let sif = setup().scratch.join("dir.sif").display().to_string();
    let v = launcher(&["verify", &sif]).run();
    assert!(v.ok().stdout.contains("objects verified"), "{v:?}");
}

#[test]
fn build_from_docker_and_oci_images() {
    let want_sha = std::fs::read_to_string(fixture("big.sha256"))
        .unwrap()
        .trim()
        .to_string();
    let sources = [
        format!("oci:{}:test", fixture("oci-layout")),
        format!("oci-archive:{}", fixture("busybox-oci.tar")),
        format!("docker-archive:{}", fixture("busybox-docker.tar")),
    ];
    let mut first_listing = None;
    for (i, src) in sources.iter().enumerate() {
        let out = scratch(&format!("oci-{i}.sif"));
        build(&out, src, &[]).ok();
        let o = out.display().to_string();
        // The OCI config: environment, entrypoint + cmd for `run`, labels.
        assert_eq!(
            sh(&o, "echo $OCI_VAR; sha256sum /data/big | cut -d' ' -f1"),
            format!("from-oci\n{want_sha}\n"),
            "{src}"
        );
        assert_eq!(
            launcher(&["run", &o]).run().ok().stdout,
            "default-cmd\n",
            "{src}"
        );
        assert_eq!(
            launcher(&["run", &o, "x", "y"]).run().ok().stdout,
            "x y\n",
            "{src}"
        );
        let inspect = launcher(&["inspect", &o]).run();
        assert!(
            inspect.ok().stdout.contains("org.launcher.test"),
            "{inspect:?}"
        );
        let offset = sif_offset(&out);
        // Owners come from the tar headers (root), not from the unprivileged staging tree.
        let lls = long_listing(&out, offset);
        let busybox_line = lls.lines().find(|l| l.ends_with("/bin/busybox")).unwrap();
        assert!(busybox_line.contains(" 0/0 "), "{busybox_line}");
        let l = listing(&out, offset);
        assert!(
            l.contains("/.singularity.d/runscript") && l.contains("/data/tree/a/b/deep.txt"),
            "{src}"
        );
        match &first_listing {
            None => first_listing = Some(l),
            Some(f) => assert_eq!(&l, f, "{src} stages a different tree"),
        }
        kernel_mount(&out, offset, |m| {
            assert_eq!(sha256(&m.join("data/big")), want_sha)
        });
        assert!(launcher(&["verify", &o])
            .run()
            .ok()
            .stdout
            .contains("objects verified"));
    }
}

#[test]
fn reproducible_builds_are_byte_identical() {
    let src = fixture("rootfs");
    for name in ["repro.sif", "repro.sqfs"] {
        let (a, b) = (scratch(&format!("a-{name}")), scratch(&format!("b-{name}")));
        for out in [&a, &b] {
            let o = out.display().to_string();
            launcher(&["build", "--reproducible", &o, &src])
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .run()
                .ok();
        }
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{name} differs between two builds"
        );
    }
}

/// `launcher build` of `source` into `out` with SOURCE_DATE_EPOCH=`epoch` and no other flag.
fn build_at_epoch(out: &Path, source: &str, epoch: &str) {
    let o = out.display().to_string();
    launcher(&["build", &o, source])
        .env("SOURCE_DATE_EPOCH", epoch)
        .run()
        .ok();
}

/// `unsquashfs -mkfs-time` of the SquashFS at `offset` in `image`.
fn mkfs_time(image: &Path, offset: u64) -> String {
    unsquashfs(image, offset, &["-mkfs-time"])
        .trim()
        .to_string()
}

/// Every entry's mtime in seconds, read through a kernel mount: (mtime, path) not at `epoch`.
fn mtimes_not_at(image: &Path, offset: u64, epoch: i64) -> Vec<(i64, String)> {
    let mut wrong = Vec::new();
    kernel_mount(image, offset, |m| {
        use std::os::unix::fs::MetadataExt;
        let mut stack = vec![m.to_path_buf()];
        while let Some(p) = stack.pop() {
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.mtime() != epoch {
                let rel = p.strip_prefix(m).unwrap().display().to_string();
                wrong.push((md.mtime(), format!("/{rel}")));
            }
            if md.is_dir() {
                for e in std::fs::read_dir(&p).unwrap().flatten() {
                    stack.push(e.path());
                }
            }
        }
    });
    wrong.sort();
    wrong
}

/// README: builds are "reproducible with SOURCE_DATE_EPOCH". Set alone (no --reproducible),
/// it fixes what a build's own clock would put in the image: two builds of the same tree are
/// byte-identical, the SquashFS creation time and the SIF's are the epoch, and another
/// epoch gives other bytes.
#[test]
fn source_date_epoch_alone_makes_directory_builds_identical() {
    let src = fixture("rootfs");
    for name in ["sde.sqfs", "sde.sif"] {
        let (a, b, c) = (
            scratch(&format!("a-{name}")),
            scratch(&format!("b-{name}")),
            scratch(&format!("c-{name}")),
        );
        build_at_epoch(&a, &src, "1700000000");
        build_at_epoch(&b, &src, "1700000000");
        build_at_epoch(&c, &src, "1600000000");
        let bytes = |p: &Path| std::fs::read(p).unwrap();
        assert!(
            bytes(&a) == bytes(&b),
            "{name}: two builds with one SOURCE_DATE_EPOCH differ"
        );
        assert!(
            bytes(&a) != bytes(&c),
            "{name}: another SOURCE_DATE_EPOCH gave the same bytes"
        );
        let offset = if name.ends_with(".sif") {
            sif_offset(&a)
        } else {
            0
        };
        assert_eq!(mkfs_time(&a, offset), "1700000000", "{name}");
        assert_eq!(mkfs_time(&c, offset), "1600000000", "{name}");
        if name.ends_with(".sif") {
            let sif = image_tools::sif::SifFile::open(&a).unwrap();
            assert_eq!(sif.header.created, 1700000000, "{name}: SIF creation time");
            assert_eq!(
                sif.header.modified, 1700000000,
                "{name}: SIF modification time"
            );
        }
    }
}

/// SOURCE_DATE_EPOCH as reproducible-builds.org defines it: no time in the output later than
/// the epoch. The fixture tree's files are all newer than 2023, so every mtime must be it.
#[test]
fn source_date_epoch_clamps_every_mtime_inside() {
    let out = scratch("sde-mtimes.sqfs");
    build_at_epoch(&out, &fixture("rootfs"), "1700000000");
    let wrong = mtimes_not_at(&out, 0, 1700000000);
    assert!(
        wrong.is_empty(),
        "{} entries have an mtime other than SOURCE_DATE_EPOCH, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// The same for an OCI source: two builds of one archive with one epoch are byte-identical.
#[test]
fn source_date_epoch_makes_oci_builds_identical() {
    let src = format!("oci-archive:{}", fixture("busybox-oci.tar"));
    for name in ["sde-oci.sqfs", "sde-oci.sif"] {
        let (a, b) = (scratch(&format!("a-{name}")), scratch(&format!("b-{name}")));
        build_at_epoch(&a, &src, "1700000000");
        build_at_epoch(&b, &src, "1700000000");
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{name}: two builds of one OCI archive with one SOURCE_DATE_EPOCH differ"
        );
    }
}

/// README: `launcher verify` recomputes the digests the SIF records. One byte changed in the
/// SquashFS partition must fail it, with one line naming the file; the original passes.
#[test]
fn verify_detects_a_flipped_byte_in_the_partition() {
    let s = setup();
    let good = scratch("verify-good.sif");
    build(&good, &fixture("rootfs"), &[]).ok();
    let g = good.display().to_string();
    let ok = launcher(&["verify", &g]).run();
    assert!(
        ok.ok().stdout.contains(&format!("{g}: ")) && ok.stdout.contains("objects verified"),
        "{ok:?}"
    );
    let bad = scratch("verify-tampered.sif");
    std::fs::copy(&good, &bad).unwrap();
    std::os::unix::fs::chown(&bad, Some(s.uid), Some(s.gid)).unwrap();
    let sif = image_tools::sif::SifFile::open(&bad).unwrap();
    let part = sif.primary_squashfs().unwrap();
    // A byte in the middle of the partition (file data, past the superblock).
    let at = part.offset + part.size / 2;
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(&bad, &bytes).unwrap();
    let b = bad.display().to_string();
    let out = launcher(&["verify", &b]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(
        out.stderr.starts_with(&format!("launcher: error: {b}: "))
            && out.stderr.contains("does not match its recorded digest"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("objects verified"), "{out:?}");
    // The untampered copy still passes.
    launcher(&["verify", &g]).run().ok();
}

#[test]
fn build_errors_leave_nothing_behind() {
    let s = setup();
    let out = scratch("err.sif");
    let o = out.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["build".into(), o.clone(), "/no/such/dir".into()],
            "/no/such/dir",
        ),
        (
            vec!["build".into(), o.clone(), "docker://Bad/Name".into()],
            "malformed repository name",
        ),
        (
            vec![
                "build".into(),
                o.clone(),
                format!("oci-archive:{}", fixture("big.sha256")),
            ],
            "big.sha256",
        ),
        (
            vec![
                "build".into(),
                s.scratch.join("x.img").display().to_string(),
                fixture("rootfs"),
            ],
            "must end in .sif or .sqfs",
        ),
        (
            vec![
                "build".into(),
                "/no/such/dir/x.sif".into(),
                fixture("rootfs"),
            ],
            "does not exist",
        ),
    ];
    for (args, want) in cases {
        let out_run = launcher(&args).run();
        assert_eq!(out_run.code, 255, "{args:?}: {out_run:?}");
        assert!(
            out_run.stderr.contains(want),
            "{args:?}: want '{want}': {out_run:?}"
        );
        assert_eq!(out_run.stderr.lines().count(), 1, "{out_run:?}");
    }
    assert!(!out.exists());
    // An existing output is kept unless --force.
    std::fs::write(&out, "keep me").unwrap();
    std::os::unix::fs::chown(&out, Some(s.uid), Some(s.gid)).unwrap();
    let r = launcher(&["build", &o, &fixture("rootfs")]).run();
    assert_eq!(r.code, 255);
    assert!(r.stderr.contains("--force"), "{r:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    launcher(&["build", "--force", &o, &fixture("rootfs")])
        .run()
        .ok();
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn interrupted_build_leaves_nothing_behind() {
    let s = setup();
    // A source big enough that the build is still running when interrupted.
    let src = s.scratch.join("big-src");
    std::fs::create_dir_all(&src).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 200000000 /dev/urandom > {}/blob",
            src.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    Command::new("chown")
        .args(["-R", &format!("{}:", s.user)])
        .arg(&src)
        .status()
        .unwrap();
    let tmpdir = s.scratch.join("build-tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    std::os::unix::fs::chown(&tmpdir, Some(s.uid), Some(s.gid)).unwrap();
    let out = scratch("interrupted.sif");
    let mut child = launcher(&[
        "build",
        "--compress",
        "gzip",
        &out.display().to_string(),
        &src.display().to_string(),
    ])
    .env("TMPDIR", &tmpdir.display().to_string())
    .spawn();
    // Interrupt it mid-way, known to be so: once the SquashFS it writes in its staging
    // directory appears (TMPDIR/STAGING/.rootfs.squashfs.PID.N.tmp, wrapped in the SIF at the
    // end), stop it (SIGSTOP), check that most of the input is still to be written, and only
    // then send SIGINT and let it go on (SIGCONT).
    let pid = child.id() as i32; // setpriv exec'd the launcher: the same pid
    let temporary = || {
        std::fs::read_dir(&tmpdir)
            .unwrap()
            .flatten()
            .filter_map(|staging| std::fs::read_dir(staging.path()).ok())
            .flat_map(|d| d.flatten())
            .find(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(".rootfs.squashfs.") && n.contains(&format!(".{pid}."))
            })
            .map(|e| e.path())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let tmp_out = loop {
        if let Some(p) = temporary() {
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before writing its temporary output"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary output after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    {
        std::thread::yield_now();
    }
    let written = std::fs::metadata(&tmp_out)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .expect("the build finished before it was stopped: make the input bigger");
    assert!(
        written < 100_000_000,
        "{written} of 200 MB already written when stopped: make the input bigger"
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGINT);
        libc::kill(pid, libc::SIGCONT);
    }
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "the build should have been interrupted"
    );
    assert_eq!(
        std::fs::read_dir(&tmpdir).unwrap().count(),
        0,
        "staging left in TMPDIR"
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&s.scratch)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".interrupted.sif"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&src).unwrap();
}

/// `tar:ROOTFS.tar` (issue 17): a root file system tarball, as `tar` or
/// `mmdebstrap --mode=unshare` write it, plain or compressed, builds an image whose owners are
/// the tar's (not the unprivileged builder's), and `exec tar:...` converts it once into the
/// cache. A missing file or a file that is no tar is one line.
#[test]
fn build_from_a_root_file_system_tarball() {
    let s = setup();
    let dir = s.scratch.join("rootfs-tar");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("extra")).unwrap();
    std::fs::write(dir.join("extra/owned"), "kept\n").unwrap();
    let plain = dir.join("root.tar");
    // As root: the busybox root as root:root, and one file owned by 1234:5678 (what a
    // package's service user would own).
    let tar = |args: &[&str]| {
        let st = Command::new("tar").args(args).status().unwrap();
        assert!(st.success(), "tar {args:?}");
    };
    let p = plain.display().to_string();
    tar(&[
        "-C",
        &fixture("rootfs"),
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "-cf",
        &p,
        ".",
    ]);
    tar(&[
        "-C",
        &dir.join("extra").display().to_string(),
        "--owner=1234",
        "--group=5678",
        "--numeric-owner",
        "-rf",
        &p,
        "./owned",
    ]);
    let mut sources = vec![p.clone()];
    for (flag, ext) in [("-9", "gz"), ("-9", "xz"), ("-19", "zst")] {
        let out = dir.join(format!("root.tar.{ext}"));
        let program = match ext {
            "gz" => "gzip",
            "xz" => "xz",
            _ => "zstd",
        };
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("{program} {flag} -c < {} > {}", p, out.display()))
            .status()
            .unwrap();
        assert!(st.success(), "{program}");
        sources.push(out.display().to_string());
    }
    for src in &sources {
        std::os::unix::fs::chown(src, Some(s.uid), Some(s.gid)).unwrap();
    }
    std::os::unix::fs::chown(&dir, Some(s.uid), Some(s.gid)).unwrap();
    for (i, src) in sources.iter().enumerate() {
        let out = scratch(&format!("tar-{i}.sif"));
        build(&out, &format!("tar:{src}"), &[]).ok();
        let o = out.display().to_string();
        assert_eq!(sh(&o, "cat /owned; echo $((1 + 1))"), "kept\n2\n", "{src}");
        let lls = long_listing(&out, sif_offset(&out));
        let line = |name: &str| {
            lls.lines()
                .find(|l| l.ends_with(name))
                .unwrap_or_else(|| panic!("{name} not in the image: {lls}"))
                .to_string()
        };
        assert!(line("/bin/busybox").contains(" 0/0 "), "{src}: {lls}");
        assert!(line("/owned").contains(" 1234/5678 "), "{src}: {lls}");
    }
    // At run time, like the other archive sources: converted once into the cache.
    let run = launcher(&["exec", &format!("tar:{}", sources[1]), "cat", "/owned"]).run();
    assert_eq!(run.ok().stdout, "kept\n");
    // Errors: one line each, naming the source.
    let out = scratch("tar-bad.sif");
    let o = out.display().to_string();
    for (src, want) in [
        ("tar:/no/such/root.tar".to_string(), "/no/such/root.tar"),
        (format!("tar:{}", fixture("big.sha256")), "big.sha256"),
    ] {
        let r = launcher(&["build", &o, &src]).run();
        assert_eq!(r.code, 255, "{src}: {r:?}");
        assert!(r.stderr.contains(want), "{src}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{src}: {r:?}");
    }
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
