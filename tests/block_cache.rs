//! End-to-end: the block cache (launcher/src/fuse/block_cache.rs), decompressed blocks of the
//! command's program kept across launches, as the unprivileged test user. Each test gives
//! the user a runtime directory of its own (`XDG_RUNTIME_DIR`), so its cache is its own.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A runtime directory private to the test user; the cache is `DIR/launcher/blocks`.
fn runtime_dir(name: &str) -> PathBuf {
    let s = setup();
    let dir = s.scratch.join(format!("{name}-run"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&dir, Some(s.uid), Some(s.gid)).unwrap();
    dir
}

fn cache_of(run: &Path) -> PathBuf {
    run.join("launcher").join("blocks")
}

/// `exec --debug IMAGE busybox md5sum /bin/busybox` with this runtime directory (and these
/// environment settings): the checksum the command printed, and (loaded, saved) blocks.
fn md5_of_busybox(image: &str, run: &Path, env: &[(&str, &str)]) -> (String, (u64, u64)) {
    let mut l = launcher(&[
        "--debug",
        "exec",
        image,
        "/bin/busybox",
        "md5sum",
        "/bin/busybox",
    ])
    .env("XDG_RUNTIME_DIR", &run.display().to_string());
    for (k, v) in env {
        l = l.env(k, v);
    }
    let out = l.run();
    out.ok();
    let sum = out
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    (sum, counts(&out.stderr))
}

/// The "N blocks loaded, M saved" of a `--debug` run.
fn counts(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("blocks loaded"))
        .unwrap_or_else(|| panic!("no block cache line in:\n{stderr}"));
    let nums: Vec<u64> = line
        .rsplit(':')
        .next()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn md5(path: &Path) -> String {
    let out = std::process::Command::new("md5sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn cache_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The first launch decompresses the program and saves its blocks; the next one loads them
/// and runs the same bytes. The cache is the user's alone.
#[test]
fn a_second_launch_takes_the_programs_blocks_from_the_cache() {
    let s = setup();
    let run = runtime_dir("second");
    let image = fixture("busybox-zstd.sqfs");
    let want = md5(&s.fixtures.join("rootfs/bin/busybox"));
    let (sum, (loaded, saved)) = md5_of_busybox(&image, &run, &[]);
    assert_eq!(sum, want);
    assert!(
        saved > 0 && loaded == 0,
        "first launch: {loaded} loaded, {saved} saved"
    );
    let (sum, (loaded, again)) = md5_of_busybox(&image, &run, &[]);
    assert_eq!(sum, want, "the bytes run from the cache differ");
    // (A block the first command's page faults decompressed before the read-ahead did was
    // not saved then: it may be saved now.)
    assert!(
        loaded > again && again < saved,
        "second launch: {loaded} loaded, {again} saved"
    );
    let dir = cache_of(&run);
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (s.uid, 0o700));
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o777),
            (s.uid, 0o600),
            "{:?}",
            e.path()
        );
    }
    // Off when asked: nothing loaded or saved.
    let out = launcher(&[
        "--debug",
        "exec",
        "--fuse-no-block-cache",
        &image,
        "/bin/true",
    ])
    .env("XDG_RUNTIME_DIR", &run.display().to_string())
    .run();
    out.ok();
    assert!(
        out.stderr
            .contains("block cache: off (--fuse-no-block-cache)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("blocks loaded"), "{}", out.stderr);
}

/// Two launches filling an empty cache at once both run the right bytes, and so does the
/// launch after them, from what they wrote.
#[test]
fn two_concurrent_launches_share_the_cache() {
    let s = setup();
    let run = runtime_dir("concurrent");
    let image = fixture("busybox-zstd.sqfs");
    let want = md5(&s.fixtures.join("rootfs/bin/busybox"));
    let both: Vec<_> = (0..2)
        .map(|_| {
            let run = run.clone();
            let image = image.clone();
            std::thread::spawn(move || md5_of_busybox(&image, &run, &[]))
        })
        .collect();
    for t in both {
        let (sum, _) = t.join().unwrap();
        assert_eq!(sum, want);
    }
    let (sum, (loaded, _)) = md5_of_busybox(&image, &run, &[]);
    assert_eq!(sum, want);
    assert!(loaded > 0, "nothing loaded after two launches");
    let temp: Vec<_> = std::fs::read_dir(cache_of(&run))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(temp.is_empty(), "temporary files left: {temp:?}");
}

/// An image file replaced at the same path, in place (same inode) or by a rename: the
/// launch runs the new program's bytes, never blocks the cache kept from the old one.
#[test]
fn a_changed_image_at_the_same_path_never_serves_stale_blocks() {
    let s = setup();
    let run = runtime_dir("changed");
    let old_tree = busybox_tree("bc-old-tree");
    let new_tree = busybox_tree("bc-new-tree");
    // The new busybox differs inside a block (a help text) and at its end, and still runs.
    let mut bytes = std::fs::read(new_tree.join("bin/busybox")).unwrap();
    let at = bytes
        .windows(22)
        .position(|w| w == b"BusyBox is copyrighted")
        .expect("busybox's copyright text");
    bytes[at..at + 7].copy_from_slice(b"BUSYBOX");
    bytes.extend_from_slice(&[0x5a; 5000]);
    std::fs::write(new_tree.join("bin/busybox"), &bytes).unwrap();
    let (old_img, new_img) = (s.scratch.join("bc-old.sqfs"), s.scratch.join("bc-new.sqfs"));
    mksquashfs(&old_tree, &old_img, &["-comp", "zstd"]);
    mksquashfs(&new_tree, &new_img, &["-comp", "zstd"]);
    let (old_sum, new_sum) = (
        md5(&old_tree.join("bin/busybox")),
        md5(&new_tree.join("bin/busybox")),
    );
    assert_ne!(old_sum, new_sum);
    let path = s.scratch.join("bc-changing.sqfs");
    let image = path.display().to_string();
    std::fs::copy(&old_img, &path).unwrap();
    assert_eq!(md5_of_busybox(&image, &run, &[]).0, old_sum);
    assert_eq!(md5_of_busybox(&image, &run, &[]).0, old_sum);
    // In place: the same inode, new bytes.
    let ino = std::fs::metadata(&path).unwrap().ino();
    std::fs::write(&path, std::fs::read(&new_img).unwrap()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    let (sum, (loaded, saved)) = md5_of_busybox(&image, &run, &[]);
    assert_eq!(
        sum, new_sum,
        "stale blocks served after an in-place rewrite"
    );
    assert!(
        saved > 0,
        "the changed blocks were not decompressed ({loaded} loaded)"
    );
    // Renamed over: back to the old image.
    let tmp = s.scratch.join("bc-changing.sqfs.new");
    std::fs::copy(&old_img, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert_eq!(md5_of_busybox(&image, &run, &[]).0, old_sum);
    assert_eq!(md5_of_busybox(&image, &run, &[]).0, old_sum);
    for p in [old_tree, new_tree] {
        std::fs::remove_dir_all(p).unwrap();
    }
}

/// The site's bound holds: after each launch, the cache holds at most `block_cache.max_mb`;
/// with 0, there is no cache at all.
#[test]
fn the_size_bound_holds() {
    let s = setup();
    let run = runtime_dir("bound");
    let config = s.scratch.join("bc-bound.yaml");
    std::fs::write(&config, "block_cache:\n  max_mb: 1\n").unwrap();
    let config = config.display().to_string();
    for image in ["busybox-zstd.sqfs", "busybox-gzip.sqfs", "busybox-xz.sqfs"] {
        let (sum, (_, saved)) =
            md5_of_busybox(&fixture(image), &run, &[("LAUNCHER_CONFIG", &config)]);
        assert_eq!(sum, md5(&s.fixtures.join("rootfs/bin/busybox")));
        assert!(saved > 0, "{image}: nothing saved");
        let held = cache_bytes(&cache_of(&run));
        assert!(
            held <= 1 << 20,
            "{image}: the cache holds {held} bytes, over 1 MiB"
        );
    }
    let off = s.scratch.join("bc-off.yaml");
    std::fs::write(&off, "block_cache:\n  max_mb: 0\n").unwrap();
    let run = runtime_dir("bound-off");
    let out = launcher(&[
        "--debug",
        "exec",
        &fixture("busybox-zstd.sqfs"),
        "/bin/true",
    ])
    .env("XDG_RUNTIME_DIR", &run.display().to_string())
    .env("LAUNCHER_CONFIG", &off.display().to_string())
    .run();
    out.ok();
    assert!(out
        .stderr
        .contains("block cache: off (the site config's block_cache.max_mb is 0)"));
    assert!(!cache_of(&run).exists(), "a cache was made with max_mb 0");
}

/// `cache list` shows this node's block cache, `cache clean` says what it would remove and,
/// with `--force`, removes it.
#[test]
fn cache_clean_empties_the_block_cache() {
    let s = setup();
    let run = runtime_dir("clean");
    let image = fixture("busybox-zstd.sqfs");
    md5_of_busybox(&image, &run, &[]);
    let dir = cache_of(&run);
    let held = std::fs::read_dir(&dir).unwrap().count();
    assert!(held > 0, "nothing cached");
    let cachedir = s.scratch.join("bc-clean-cache").display().to_string();
    let cache = |args: &[&str]| {
        launcher(args)
            .env("XDG_RUNTIME_DIR", &run.display().to_string())
            .env("LAUNCHER_CACHEDIR", &cachedir)
            .run()
    };
    let out = cache(&["cache", "list"]);
    out.ok();
    assert!(
        out.stdout
            .contains(&format!("block cache of this node: {}", dir.display()))
            && out.stdout.contains(&format!("{held} blocks")),
        "{out:?}"
    );
    let out = cache(&["cache", "clean"]);
    out.ok();
    assert!(
        out.stdout.contains(&format!("would remove {held} blocks")),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        held,
        "removed without --force"
    );
    let out = cache(&["cache", "clean", "--force"]);
    out.ok();
    assert!(
        out.stdout.contains(&format!("removed {held} blocks")),
        "{out:?}"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}
