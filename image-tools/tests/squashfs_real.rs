//! The SquashFS reader against real images built by `mksquashfs`, for every
//! compressor and the layout options that change the on-disk structures.
//! They fail where squashfs-tools is not installed (tests/setup.sh installs it).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use image_tools::squashfs::{is_squashfs, Archive, Compressor, Error, FileType, Inode};

const BIG_LEN: usize = 3 * 1024 * 1024 + 1234;
const MANY: usize = 3000;
const LONG_TARGET_LEN: usize = 5203;

/// The tests need real images: a missing mksquashfs is a failed set-up, never a skipped test.
fn have_mksquashfs() -> bool {
    let ok = Command::new("mksquashfs").arg("-version").output().is_ok();
    assert!(
        ok,
        "mksquashfs not installed: run tests/setup.sh (apt-get install squashfs-tools)"
    );
    ok
}

/// A scratch directory (tempfile's, removed on drop).
fn scratch_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("sqfs-test-{tag}-"))
        .tempdir()
        .unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), compressible only a little.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Every 4th byte repeats so that compressors find something to do.
            if i % 4 == 0 {
                b'a'
            } else {
                x as u8
            }
        })
        .collect()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Sets a user xattr; false where the file system refuses.
fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    let n = CString::new(name).unwrap();
    let rc = unsafe {
        libc::lsetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    rc == 0
}

/// What the tree holds beyond what std::fs can tell us.
struct Tree {
    src: PathBuf,
    pseudo: PathBuf,
    xattrs: bool,
}

/// Builds the source tree (and a pseudo-definition file for what an
/// unprivileged process cannot create: devices, a socket, a 5 KiB symlink).
fn build_tree(dir: &Path) -> Tree {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), noise(BIG_LEN, 7)).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("exact"), noise(128 * 1024, 3)).unwrap();
    fs::write(src.join("small.txt"), b"hello squashfs\n").unwrap();
    {
        // 1 MiB hole, some data, then a hole to the end.
        let mut f = fs::File::create(src.join("sparse")).unwrap();
        f.set_len(2 * 1024 * 1024 + 10).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"in the middle of nowhere", 1024 * 1024 + 5)
            .unwrap();
        f.flush().unwrap();
    }
    fs::write(src.join("hard1"), b"shared by two names").unwrap();
    fs::hard_link(src.join("hard1"), src.join("hard2")).unwrap();
    std::os::unix::fs::symlink("/small.txt", src.join("abs_link")).unwrap();
    std::os::unix::fs::symlink("nested/a/b", src.join("rel_dir_link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("loop_b", src.join("loop_a")).unwrap();
    std::os::unix::fs::symlink("loop_a", src.join("loop_b")).unwrap();
    let deep = src.join("nested/a/b/c");
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("deep.txt"), b"deep").unwrap();
    std::os::unix::fs::symlink("../../../../small.txt", deep.join("up")).unwrap();
    std::os::unix::fs::symlink("/../../small.txt", deep.join("up_abs")).unwrap();
    let many = src.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..MANY {
        fs::write(many.join(format!("entry_{i:05}")), format!("{i}\n")).unwrap();
    }
    let private = src.join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(src.join("suid"), b"#!/bin/true\n").unwrap();
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(src.join("owned"), b"owned by someone").unwrap();
    let _ = std::os::unix::fs::lchown(src.join("owned"), Some(12345), Some(54321));
    let fifo = cstr(&src.join("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // The same long value on two files: mksquashfs stores it once, out of line.
    let long_value = noise(3000, 11);
    let xattrs = set_xattr(&src.join("small.txt"), "user.comment", b"a value")
        && set_xattr(&src.join("small.txt"), "user.long", &long_value)
        && set_xattr(&src.join("big.bin"), "user.long", &long_value)
        && set_xattr(&private, "user.dir", b"on a dir");
    if !xattrs {
        eprintln!(
            "user xattrs not supported on {}: not testing them",
            src.display()
        );
    }
    let pseudo = dir.join("pseudo");
    let mut p = fs::File::create(&pseudo).unwrap();
    writeln!(p, "dev d 755 0 0").unwrap();
    writeln!(p, "dev/null c 666 0 0 1 3").unwrap();
    writeln!(p, "dev/sda1 b 660 0 6 8 1").unwrap();
    writeln!(p, "dev/big c 600 0 0 259 74565").unwrap();
    writeln!(p, "sock i 644 0 0 s").unwrap();
    writeln!(p, "long_link s 777 0 0 {}", long_target()).unwrap();
    Tree {
        src,
        pseudo,
        xattrs,
    }
}

fn long_target() -> String {
    let mut t = "dir/".repeat(LONG_TARGET_LEN / 4);
    t.push_str("end");
    t
}

fn mksquashfs(tree: &Tree, img: &Path, args: &[&str]) {
    let out = Command::new("mksquashfs")
        .arg(&tree.src)
        .arg(img)
        .args(["-noappend", "-no-progress", "-quiet", "-pf"])
        .arg(&tree.pseudo)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mksquashfs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kind_of(m: &fs::Metadata) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        FileType::Dir
    } else if t.is_file() {
        FileType::File
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::Fifo
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_block_device() {
        FileType::BlockDev
    } else {
        FileType::CharDev
    }
}

fn read_all(a: &Archive, ino: &Inode) -> Vec<u8> {
    let mut out = vec![0u8; ino.size as usize + 10];
    // Odd-sized chunks so reads straddle block boundaries.
    let mut at = 0;
    loop {
        let end = (at + 100_003).min(out.len());
        let n = a.read_at(ino, at as u64, &mut out[at..end]).unwrap();
        if n == 0 {
            break;
        }
        at += n;
    }
    assert_eq!(at as u64, ino.size);
    out.truncate(at);
    out
}

/// Compares the image directory `ino` with the source directory `src`, recursively.
fn compare_dir(a: &Archive, ino: &Inode, src: &Path, counts: &mut BTreeMap<&'static str, usize>) {
    let entries = a.read_dir(ino).unwrap();
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries of {} are sorted", src.display());
    for e in &entries {
        let path = src.join(std::ffi::OsStr::from_bytes(&e.name));
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue; // a pseudo entry, checked on its own
        };
        let child = a.inode(e.inode_ref).unwrap();
        assert_eq!(child.inode_number, e.inode_number, "{}", path.display());
        assert_eq!(child.kind, e.kind, "{}", path.display());
        assert_eq!(child.kind, kind_of(&m), "{}", path.display());
        assert_eq!(
            u32::from(child.mode),
            m.mode() & 0o7777,
            "{}",
            path.display()
        );
        assert_eq!(child.st_mode(), m.mode(), "{}", path.display());
        assert_eq!(
            (child.uid, child.gid),
            (m.uid(), m.gid()),
            "{}",
            path.display()
        );
        assert_eq!(i64::from(child.mtime), m.mtime(), "{}", path.display());
        if child.kind != FileType::Dir {
            assert_eq!(u64::from(child.nlink), m.nlink(), "{}", path.display());
        }
        match child.kind {
            FileType::Dir => {
                *counts.entry("dirs").or_default() += 1;
                compare_dir(a, &child, &path, counts);
            }
            FileType::File => {
                *counts.entry("files").or_default() += 1;
                assert_eq!(child.size, m.len(), "{}", path.display());
                let want = fs::read(&path).unwrap();
                assert!(read_all(a, &child) == want, "content of {}", path.display());
            }
            FileType::Symlink => {
                *counts.entry("symlinks").or_default() += 1;
                let want = fs::read_link(&path).unwrap();
                assert_eq!(a.read_link(&child).unwrap(), want.as_os_str().as_bytes());
                assert_eq!(child.size, want.as_os_str().len() as u64);
            }
            _ => *counts.entry("special").or_default() += 1,
        }
    }
    // Everything in the source is in the image.
    for d in fs::read_dir(src).unwrap() {
        let name = d.unwrap().file_name();
        assert!(
            names.contains(&name.as_bytes()),
            "{} missing from image",
            src.join(name).display()
        );
    }
}

fn res(a: &Archive, p: &str) -> Option<Inode> {
    a.resolve(p.as_bytes()).unwrap()
}

/// Everything the tree's special cases need, beyond the recursive comparison.
fn check_specials(a: &Archive, tree: &Tree, expect_xattrs: bool) {
    let root = a.root().unwrap();
    assert_eq!(root.kind, FileType::Dir);
    let mut counts = BTreeMap::new();
    compare_dir(a, &root, &tree.src, &mut counts);
    assert_eq!(counts["files"], MANY + 10, "{counts:?}");
    assert_eq!(counts["symlinks"], 7, "{counts:?}");

    // Hard links: one inode, two names.
    let h1 = a.lookup_entry(&root, b"hard1").unwrap().unwrap();
    let h2 = a.lookup_entry(&root, b"hard2").unwrap().unwrap();
    assert_eq!(
        (h1.inode_ref, h1.inode_number),
        (h2.inode_ref, h2.inode_number)
    );
    assert_eq!(a.inode(h1.inode_ref).unwrap().nlink, 2);

    // Big directory: first, middle, last, missing, before-first, after-last.
    let many = res(a, "/many").unwrap();
    for i in [0, 1, MANY / 2, 1234, MANY - 2, MANY - 1] {
        let name = format!("entry_{i:05}");
        let ino = a.lookup(&many, name.as_bytes()).unwrap().unwrap();
        assert_eq!(read_all(a, &ino), format!("{i}\n").as_bytes());
    }
    for missing in [
        "entry_03000",
        "entry_00000x",
        "a",
        "zzz",
        "entry_01234 ",
        "entry_",
    ] {
        assert!(
            a.lookup(&many, missing.as_bytes()).unwrap().is_none(),
            "{missing}"
        );
    }
    assert_eq!(a.read_dir(&many).unwrap().len(), MANY);

    // Special files from the pseudo definitions.
    let null = res(a, "/dev/null").unwrap();
    assert_eq!(
        (null.kind, null.mode, null.device()),
        (FileType::CharDev, 0o666, (1, 3))
    );
    let sda = res(a, "/dev/sda1").unwrap();
    assert_eq!(
        (sda.kind, sda.gid, sda.device()),
        (FileType::BlockDev, 6, (8, 1))
    );
    assert_eq!(res(a, "/dev/big").unwrap().device(), (259, 74565));
    assert_eq!(res(a, "/sock").unwrap().kind, FileType::Socket);
    assert_eq!(res(a, "/fifo").unwrap().kind, FileType::Fifo);
    let long = a.resolve_nofollow(b"/long_link").unwrap().unwrap();
    assert_eq!(long.kind, FileType::Symlink);
    assert_eq!(a.read_link(&long).unwrap(), long_target().as_bytes());

    // Path resolution and symlinks.
    let small = b"hello squashfs\n".to_vec();
    assert_eq!(a.read_file(b"/small.txt").unwrap().unwrap(), small);
    assert_eq!(a.read_file(b"/abs_link").unwrap().unwrap(), small);
    assert_eq!(a.read_file(b"nested/a/b/c/up").unwrap().unwrap(), small);
    assert_eq!(
        a.read_file(b"/nested/a/b/c/up_abs").unwrap().unwrap(),
        small
    );
    assert_eq!(
        a.read_file(b"/rel_dir_link/c/deep.txt").unwrap().unwrap(),
        b"deep"
    );
    assert_eq!(
        a.read_file(b"/rel_dir_link/../../../small.txt")
            .unwrap()
            .unwrap(),
        small
    );
    assert_eq!(
        a.read_file(b"/../../.././small.txt").unwrap().unwrap(),
        small
    );
    assert_eq!(
        a.read_file(b"//nested//a/./b/c/deep.txt").unwrap().unwrap(),
        b"deep"
    );
    assert!(a.read_file(b"/dangling").unwrap().is_none());
    assert!(a.read_file(b"/nope").unwrap().is_none());
    assert!(a.read_file(b"/small.txt/x").unwrap().is_none());
    assert!(a.read_file(b"/many").is_err());
    assert_eq!(res(a, "/").unwrap().inode_ref, root.inode_ref);
    assert_eq!(res(a, "/rel_dir_link").unwrap().kind, FileType::Dir);
    assert_eq!(
        a.resolve_nofollow(b"/abs_link").unwrap().unwrap().kind,
        FileType::Symlink
    );
    let e = a.resolve(b"/loop_a").unwrap_err();
    assert_eq!(e.errno(), libc::ELOOP, "{e}");
    assert!(a.resolve(b"/long_link").unwrap().is_none());

    // Reads: past EOF, partial at EOF, sparse ranges.
    let big = res(a, "/big.bin").unwrap();
    let want = noise(BIG_LEN, 7);
    let mut buf = vec![0u8; 5000];
    assert_eq!(a.read_at(&big, BIG_LEN as u64, &mut buf).unwrap(), 0);
    assert_eq!(a.read_at(&big, u64::MAX, &mut buf).unwrap(), 0);
    assert_eq!(
        a.read_at(&big, BIG_LEN as u64 - 100, &mut buf).unwrap(),
        100
    );
    assert_eq!(buf[..100], want[BIG_LEN - 100..]);
    assert_eq!(a.read_at(&big, 131_000, &mut buf).unwrap(), 5000);
    assert_eq!(buf[..], want[131_000..136_000]);
    let sparse = res(a, "/sparse").unwrap();
    let s = read_all(a, &sparse);
    assert!(s[..1024 * 1024 + 5].iter().all(|&b| b == 0));
    assert_eq!(&s[1024 * 1024 + 5..][..24], b"in the middle of nowhere");
    assert!(s[1024 * 1024 + 29..].iter().all(|&b| b == 0));
    assert!(a.read_at(&root, 0, &mut buf).is_err());
    assert!(a.read_link(&big).is_err());
    assert!(a.read_dir(&big).is_err());
    assert_eq!(a.lookup(&big, b"x").unwrap_err().errno(), libc::ENOTDIR);

    // Extended attributes.
    let small_ino = res(a, "/small.txt").unwrap();
    let mut x = a.xattrs(&small_ino).unwrap();
    x.sort();
    if expect_xattrs && tree.xattrs {
        let long_value = noise(3000, 11);
        assert_eq!(
            x,
            vec![
                (b"user.comment".to_vec(), b"a value".to_vec()),
                (b"user.long".to_vec(), long_value.clone()),
            ]
        );
        assert_eq!(
            a.xattrs(&big).unwrap(),
            vec![(b"user.long".to_vec(), long_value)]
        );
        let private = res(a, "/private").unwrap();
        assert_eq!(
            a.xattrs(&private).unwrap(),
            vec![(b"user.dir".to_vec(), b"on a dir".to_vec())]
        );
    } else {
        assert!(x.is_empty());
    }
    assert!(a.xattrs(&root).unwrap().is_empty());
}

/// Builds one image per entry and checks it fully.
fn check_variants(variants: &[(&str, &[&str], bool)]) {
    if !have_mksquashfs() {
        return;
    }
    let dir = scratch_dir("variants");
    let tree = build_tree(dir.path());
    for (name, args, xattrs) in variants {
        let img = dir.path().join(format!("{name}.sqfs"));
        mksquashfs(&tree, &img, args);
        let a = Archive::open_path(&img, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_specials(&a, &tree, *xattrs);
        eprintln!("{name}: ok ({} bytes)", a.superblock().bytes_used);
    }
}

#[test]
fn every_compressor() {
    check_variants(&[
        ("gzip", &["-comp", "gzip"], true),
        ("lzma", &["-comp", "lzma"], true),
        ("lzo", &["-comp", "lzo"], true),
        ("xz", &["-comp", "xz"], true),
        ("lz4", &["-comp", "lz4"], true),
        ("zstd", &["-comp", "zstd"], true),
    ]);
}

#[test]
fn compressor_options_and_layouts() {
    check_variants(&[
        // Compressor options stored in the image (flag + metadata block).
        (
            "xz-bcj",
            &["-comp", "xz", "-Xbcj", "x86", "-Xdict-size", "50%"],
            true,
        ),
        ("lz4-hc", &["-comp", "lz4", "-Xhc"], true),
        (
            "zstd-19",
            &["-comp", "zstd", "-Xcompression-level", "19"],
            true,
        ),
        (
            "gzip-opts",
            &[
                "-comp",
                "gzip",
                "-Xcompression-level",
                "1",
                "-Xwindow-size",
                "10",
            ],
            true,
        ),
        (
            "lzo-opts",
            &[
                "-comp",
                "lzo",
                "-Xalgorithm",
                "lzo1x_999",
                "-Xcompression-level",
                "9",
            ],
            true,
        ),
        ("uncompressed", &["-noI", "-noD", "-noF", "-noX"], true),
        ("no-fragments", &["-no-fragments"], true),
        ("always-fragments", &["-always-use-fragments"], true),
        ("no-xattrs", &["-no-xattrs"], false),
        ("no-exports", &["-no-exports"], true),
        ("block-4k", &["-b", "4096"], true),
        ("block-1m", &["-b", "1M", "-comp", "zstd"], true),
        ("no-dups", &["-no-duplicates", "-comp", "lz4"], true),
    ]);
}

#[test]
fn superblock_and_export_table() {
    if !have_mksquashfs() {
        return;
    }
    let dir = scratch_dir("sb");
    let tree = build_tree(dir.path());
    let img = dir.path().join("img");
    mksquashfs(&tree, &img, &["-comp", "xz", "-b", "65536"]);
    let a = Archive::open_path(&img, 0).unwrap();
    let sb = a.superblock();
    assert_eq!(
        (sb.compressor.clone(), sb.block_size),
        (Compressor::Xz, 65536)
    );
    assert!(is_squashfs(&fs::read(&img).unwrap()));
    // The export table maps every inode number back to its reference.
    let root = a.root().unwrap();
    for e in a.read_dir(&root).unwrap() {
        assert_eq!(
            a.inode_ref_by_number(e.inode_number).unwrap(),
            Some(e.inode_ref)
        );
    }
    assert_eq!(
        a.inode_ref_by_number(root.inode_number).unwrap(),
        Some(root.inode_ref)
    );

    let img2 = dir.path().join("img2");
    mksquashfs(&tree, &img2, &["-no-exports"]);
    let a = Archive::open_path(&img2, 0).unwrap();
    assert_eq!(a.inode_ref_by_number(1).unwrap(), None);
}

#[test]
fn open_at_offset_and_concurrent_reads() {
    if !have_mksquashfs() {
        return;
    }
    let dir = scratch_dir("offset");
    let tree = build_tree(dir.path());
    let img = dir.path().join("img");
    mksquashfs(&tree, &img, &["-comp", "zstd"]);
    let mut wrapped = noise(12_345, 99);
    wrapped.extend(fs::read(&img).unwrap());
    wrapped.extend(noise(777, 5)); // trailing junk is fine too
    let wimg = dir.path().join("wrapped");
    fs::write(&wimg, &wrapped).unwrap();
    assert!(Archive::open_path(&wimg, 0).is_err());
    assert!(Archive::open_path(&wimg, 12_344).is_err());
    let a = Archive::open_path(&wimg, 12_345).unwrap();
    check_specials(&a, &tree, true);

    // Many threads reading the same and different files at once.
    let want = noise(BIG_LEN, 7);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (a, want) = (&a, &want);
            s.spawn(move || {
                let big = a.resolve(b"/big.bin").unwrap().unwrap();
                for round in 0..20u64 {
                    let off = (round * 77_777 + t * 12_345) % BIG_LEN as u64;
                    let mut buf = vec![0u8; 300_000];
                    let n = a.read_at(&big, off, &mut buf).unwrap();
                    assert_eq!(buf[..n], want[off as usize..off as usize + n]);
                    let name = format!("/many/entry_{:05}", (round * 131 + t) % MANY as u64);
                    assert!(a.read_file(name.as_bytes()).unwrap().is_some());
                }
            });
        }
    });
}

#[test]
fn file_larger_than_4gib() {
    if !have_mksquashfs() {
        return;
    }
    let dir = scratch_dir("huge");
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let size: u64 = (5 << 30) + 12_345;
    let at: u64 = (9 << 29) + 100; // 4.5 GiB + 100
    let data = noise(300_000, 17);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(src.join("huge")).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&data, at).unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
    }
    let img = dir.path().join("img");
    let out = Command::new("mksquashfs")
        .arg(&src)
        .arg(&img)
        .args(["-noappend", "-no-progress", "-quiet", "-comp", "lz4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = Archive::open_path(&img, 0).unwrap();
    let huge = a.resolve(b"/huge").unwrap().unwrap();
    assert_eq!(huge.size, size);
    let mut buf = vec![0u8; 400_000];
    assert_eq!(a.read_at(&huge, at - 50_000, &mut buf).unwrap(), buf.len());
    assert!(buf[..50_000].iter().all(|&b| b == 0));
    assert_eq!(buf[50_000..350_000], data[..]);
    assert!(buf[350_000..].iter().all(|&b| b == 0));
    assert_eq!(a.read_at(&huge, size - 10, &mut buf).unwrap(), 10);
    assert_eq!(&buf[6..10], b"tail");
    assert!(buf[..6].iter().all(|&b| b == 0));
    assert_eq!(a.read_at(&huge, 3 << 30, &mut buf[..1000]).unwrap(), 1000);
    assert!(buf[..1000].iter().all(|&b| b == 0));
}

/// Walks everything reachable, reading all data, with caps so a corrupt image
/// with directory cycles still ends. Errors are fine; panics and hangs are not.
fn walk_everything(a: &Archive) {
    fn go(a: &Archive, ino: &Inode, depth: usize, budget: &mut usize) {
        if depth > 8 || *budget == 0 {
            return;
        }
        *budget -= 1;
        let _ = a.xattrs(ino);
        match ino.kind {
            FileType::Dir => {
                let Ok(entries) = a.read_dir(ino) else { return };
                for e in entries.iter().take(50) {
                    let _ = a.lookup(ino, &e.name);
                    if let Ok(child) = a.inode(e.inode_ref) {
                        go(a, &child, depth + 1, budget);
                    }
                }
            }
            FileType::File => {
                let mut buf = vec![0u8; 1 << 20];
                let mut at = 0u64;
                while at < ino.size.min(8 << 20) {
                    match a.read_at(ino, at, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => at += n as u64,
                    }
                }
            }
            FileType::Symlink => {
                let _ = a.read_link(ino);
            }
            _ => {}
        }
    }
    if let Ok(root) = a.root() {
        let mut budget = 400;
        go(a, &root, 0, &mut budget);
    }
    let _ = a.resolve(b"/nested/a/b/c/up");
    let _ = a.inode_ref_by_number(1);
}

#[test]
fn corrupt_images_error_without_panicking() {
    if !have_mksquashfs() {
        return;
    }
    let dir = scratch_dir("corrupt");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("f"), noise(30_000, 1)).unwrap();
    fs::write(src.join("d/small"), b"small").unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("d/e/n{i}")), format!("{i}")).unwrap();
    }
    std::os::unix::fs::symlink("d/small", src.join("l")).unwrap();
    let _ = set_xattr(&src.join("f"), "user.k", b"v");
    let pseudo = dir.path().join("pseudo");
    fs::write(&pseudo, "null c 666 0 0 1 3\n").unwrap();
    let tree = Tree {
        src,
        pseudo,
        xattrs: true,
    };
    let bad = dir.path().join("bad");
    for comp in ["gzip", "xz", "lz4", "zstd", "lzo", "lzma"] {
        let img = dir.path().join(format!("{comp}.img"));
        mksquashfs(&tree, &img, &["-comp", comp, "-b", "4096"]);
        let good = fs::read(&img).unwrap();
        let a = Archive::open_path(&img, 0).unwrap();
        walk_everything(&a);
        let tables = a.superblock().inode_table_start as usize;

        // Truncation anywhere: open fails, never panics.
        let used = a.superblock().bytes_used as usize;
        for cut in [0, 1, 50, 95, 96, 200, tables, used - 1] {
            fs::write(&bad, &good[..cut.min(good.len())]).unwrap();
            assert!(Archive::open_path(&bad, 0).is_err(), "cut at {cut}");
        }
        // Wrong magic, version, compressor.
        for (at, byte, unsupported) in [(0, b'x', false), (28, 3, true), (20, 9, true)] {
            let mut b = good.clone();
            b[at] = byte;
            fs::write(&bad, &b).unwrap();
            let e = Archive::open_path(&bad, 0).err().unwrap();
            assert_eq!(matches!(e, Error::Unsupported(_)), unsupported, "{e}");
            assert!(!e.to_string().contains('\n'));
            assert!(e.to_string().contains(bad.to_str().unwrap()), "{e}");
        }
        // Flipped bits everywhere in the superblock and the tables, and a
        // sample of the data.
        let step = if comp == "gzip" { 1 } else { 11 };
        let t0 = std::time::Instant::now();
        let positions = (0..96)
            .chain((tables..good.len()).step_by(step))
            .chain((96..tables).step_by(997));
        for (n, pos) in positions.enumerate() {
            let mut b = good.clone();
            b[pos] ^= 1 << (n % 8);
            fs::write(&bad, &b).unwrap();
            if let Ok(a) = Archive::open_path(&bad, 0) {
                walk_everything(&a);
            }
            // Whole bytes replaced, too.
            b[pos] = [0x00, 0xff, 0x80, 0x7f][n % 4];
            fs::write(&bad, &b).unwrap();
            if let Ok(a) = Archive::open_path(&bad, 0) {
                walk_everything(&a);
            }
        }
        eprintln!(
            "{comp}: {} table bytes, flips done in {:?}",
            good.len() - tables,
            t0.elapsed()
        );
    }
}

/// `cargo test -p image-tools --release --test squashfs_real -- --ignored --nocapture open_time`
#[test]
#[ignore]
fn open_time_does_not_grow_with_file_count() {
    if !have_mksquashfs() {
        return;
    }
    let dir = scratch_dir("opentime");
    let mut results = Vec::new();
    for files in [100usize, 100_000] {
        let src = dir.path().join(format!("src{files}"));
        for i in 0..files {
            let d = src.join(format!("d{:03}", i / 1000));
            if i % 1000 == 0 {
                fs::create_dir_all(&d).unwrap();
            }
            fs::write(d.join(format!("f{i}")), format!("{i}")).unwrap();
        }
        let img = dir.path().join(format!("img{files}"));
        let out = Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args(["-noappend", "-no-progress", "-quiet"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let _ = fs::remove_dir_all(&src);
        let size = fs::metadata(&img).unwrap().len();
        // First open: page cache is warm (just written), caches of the archive cold.
        let mut times = Vec::new();
        for _ in 0..200 {
            let t = std::time::Instant::now();
            let a = Archive::open_path(&img, 0).unwrap();
            let root = a.root().unwrap();
            times.push(t.elapsed());
            assert_eq!(root.kind, FileType::Dir);
        }
        let first = times[0];
        times.sort();
        let median = times[times.len() / 2];
        eprintln!(
            "{files:>7} files, image {size:>9} bytes: open+root first {first:?}, median {median:?}, max {:?}",
            times[times.len() - 1]
        );
        results.push(median);
    }
    assert!(
        results[1] < std::time::Duration::from_millis(5),
        "{results:?}"
    );
}

/// `cargo test -p image-tools --release --test squashfs_real -- --ignored --nocapture read_throughput`
#[test]
#[ignore]
fn read_throughput() {
    if !have_mksquashfs() {
        return;
    }
    let dir = scratch_dir("throughput");
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let data = noise(64 << 20, 5);
    fs::write(src.join("f"), &data).unwrap();
    for comp in ["gzip", "zstd", "lz4", "xz"] {
        let img = dir.path().join(format!("{comp}.img"));
        let out = Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args(["-noappend", "-no-progress", "-quiet", "-comp", comp])
            .output()
            .unwrap();
        assert!(out.status.success());
        let a = Archive::open_path(&img, 0).unwrap();
        let f = a.resolve(b"/f").unwrap().unwrap();
        let mut buf = vec![0u8; 128 << 10];
        let t = std::time::Instant::now();
        let mut at = 0u64;
        while at < f.size {
            at += a.read_at(&f, at, &mut buf).unwrap() as u64;
        }
        let cold = t.elapsed();
        let t = std::time::Instant::now();
        let mut big = vec![0u8; 8 << 20];
        let mut at = 0u64;
        let a2 = Archive::open_path(&img, 0).unwrap();
        while at < f.size {
            at += a2.read_at(&f, at, &mut big).unwrap() as u64;
        }
        let cold_big = t.elapsed();
        let mb = f.size as f64 / (1 << 20) as f64;
        eprintln!(
            "{comp}: 128 KiB reads {:.0} MiB/s, 8 MiB reads {:.0} MiB/s (decompressing, page cache warm)",
            mb / cold.as_secs_f64(),
            mb / cold_big.as_secs_f64()
        );
    }
}
