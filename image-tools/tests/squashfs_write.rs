//! The SquashFS writer against three readers: this crate's, `unsquashfs`
//! and the Linux kernel (loop mount). They need squashfs-tools and root (for
//! mount); where either is missing they fail, never skip.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use image_tools::squashfs::write::{write_dir, WriteCompressor, WriteOptions};
use image_tools::squashfs::{Archive, FileType, Inode};
use image_tools::tree::{EntryOverride, Overrides, Special};
use sha2::{Digest, Sha256};

const BS: u32 = 131072;
const MANY: usize = 2000;
const T0: i64 = 1_600_000_000;

/// What a reader shows for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    /// 'd', '-', 'l', 'c', 'b', 'p', 's'
    kind: char,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    /// Regular files: size and sha256; symlinks: target; devices: (major, minor).
    size: u64,
    sha: String,
    target: Vec<u8>,
    dev: (u32, u32),
    nlink: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

type Listing = BTreeMap<String, Node>;

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Deterministic noise (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

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

fn user_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = cstr(p);
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(m >= 0, "getxattr {}", p.display());
        v.truncate(m as usize);
        out.push((name.to_vec(), v));
    }
    out.sort();
    out
}

fn set_mtime(p: &Path, t: i64) {
    let ts = [
        libc::timespec {
            tv_sec: t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: t,
            tv_nsec: 0,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

fn mkfifo(p: &Path) {
    assert_eq!(unsafe { libc::mkfifo(cstr(p).as_ptr(), 0o644) }, 0);
}

fn write(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap();
}

/// The test tree, with user xattrs: a temporary directory without them is a failed set-up
/// (the xattr comparison would be lost), never a reason to compare less.
fn make_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let bs = BS as usize;
    write(&root.join("empty"), b"");
    write(&root.join("one"), b"x");
    write(&root.join("bs-1"), &noise(bs - 1, 1));
    write(&root.join("bs"), &noise(bs, 2));
    write(&root.join("bs+1"), &noise(bs + 1, 3));
    write(&root.join("random3m"), &noise(3 << 20, 4));
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i} of some text\n").into_bytes())
        .collect();
    write(&root.join("text"), &text);
    // Same content as "text": stored once.
    write(&root.join("text-copy"), &text);
    // Sparse: data, a hole of three blocks, data, and a zero tail.
    {
        let mut f = fs::File::create(root.join("sparse")).unwrap();
        f.write_all(&noise(1000, 5)).unwrap();
        f.set_len(4 * BS as u64 + 10).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"end", 4 * BS as u64 + 7).unwrap();
    }
    write(&root.join("zeros"), &vec![0u8; 2 * bs + 5]);
    let many = root.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..MANY {
        write(
            &many.join(format!("file-with-a-longish-name-{i:05}")),
            format!("{i}").as_bytes(),
        );
    }
    let deep = root.join("a/b/c/d");
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("leaf"), b"leaf\n");
    fs::create_dir(root.join("a/empty-dir")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("a/b/c/d/leaf", root.join("rel-link")).unwrap();
    symlink("x".repeat(3000), root.join("long-link")).unwrap();
    symlink("dangling/../nowhere", root.join("a/dangling")).unwrap();
    write(&root.join("hard1"), b"linked content");
    fs::hard_link(root.join("hard1"), root.join("a/hard2")).unwrap();
    fs::hard_link(root.join("hard1"), root.join("a/b/hard3")).unwrap();
    mkfifo(&root.join("fifo"));
    write(&root.join("setuid"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    write(&root.join("private"), b"secret");
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(root.join("private"), Some(1234), Some(5678)).unwrap();
    set_mtime(&root.join("one"), T0);
    set_mtime(&root.join("abs-link"), T0 + 1);
    let big = vec![b'v'; 300];
    let set = set_xattr(&root.join("one"), "user.short", b"value")
        && set_xattr(&root.join("one"), "user.big", &big)
        && set_xattr(&root.join("bs"), "user.big", &big)
        && set_xattr(&root.join("bs"), "user.other", b"")
        && set_xattr(&root.join("a"), "user.dir", b"on a dir")
        && set_xattr(&root.join("text-copy"), "user.short", b"value")
        && set_xattr(&root.join("hard1"), "user.short", b"value");
    assert!(
        set,
        "user xattrs cannot be set under {}: run the tests with TMPDIR on a file system that \
         has them (ext4, xfs, btrfs, tmpfs since Linux 6.6)",
        root.display()
    );
}

/// The listing of a directory tree through std::fs (the source, or a mount).
fn from_fs(root: &Path) -> Listing {
    let mut out = Listing::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let mut n = Node {
            kind: '?',
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            size: 0,
            sha: String::new(),
            target: Vec::new(),
            dev: (0, 0),
            nlink: md.nlink() as u32,
            xattrs: user_xattrs(&p),
        };
        if ft.is_dir() {
            n.kind = 'd';
            let mut subdirs = 0;
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    subdirs += 1;
                }
                todo.push(rel.join(e.file_name()));
            }
            // Some file systems do not count subdirectories; squashfs does.
            n.nlink = 2 + subdirs;
        } else if ft.is_file() {
            n.kind = '-';
            let data = fs::read(&p).unwrap();
            n.size = data.len() as u64;
            n.sha = sha(&data);
        } else if ft.is_symlink() {
            n.kind = 'l';
            n.target = fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec();
        } else if ft.is_char_device() || ft.is_block_device() {
            n.kind = if ft.is_char_device() { 'c' } else { 'b' };
            n.dev = (libc::major(md.rdev()), libc::minor(md.rdev()));
        } else if ft.is_fifo() {
            n.kind = 'p';
        } else if ft.is_socket() {
            n.kind = 's';
        }
        out.insert(format!("/{}", rel.display()), n);
    }
    out
}

fn apply_overrides(mut l: Listing, ov: &Overrides) -> Listing {
    for (path, o) in ov {
        let n = l
            .get_mut(&format!("/{}", path.display()))
            .expect("override path exists");
        if let Some(v) = o.uid {
            n.uid = v;
        }
        if let Some(v) = o.gid {
            n.gid = v;
        }
        if let Some(v) = o.mode {
            n.perm = v;
        }
        if let Some(v) = o.mtime {
            n.mtime = v;
        }
        if let Some(s) = o.special {
            (n.kind, n.dev) = match s {
                Special::CharDevice { major, minor } => ('c', (major, minor)),
                Special::BlockDevice { major, minor } => ('b', (major, minor)),
                Special::Fifo => ('p', (0, 0)),
            };
            n.size = 0;
            n.sha.clear();
        }
        if let Some(x) = &o.xattrs {
            n.xattrs = x.clone();
            n.xattrs.sort();
        }
    }
    l
}

fn kind_char(k: FileType) -> char {
    match k {
        FileType::Dir => 'd',
        FileType::File => '-',
        FileType::Symlink => 'l',
        FileType::CharDev => 'c',
        FileType::BlockDev => 'b',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
    }
}

fn from_archive(img: &Path) -> Listing {
    let a = Archive::open_path(img, 0).unwrap();
    let mut out = Listing::new();
    let mut todo: Vec<(String, Inode)> = vec![(String::new(), a.root().unwrap())];
    while let Some((path, ino)) = todo.pop() {
        let mut n = Node {
            kind: kind_char(ino.kind),
            perm: u32::from(ino.mode),
            uid: ino.uid,
            gid: ino.gid,
            mtime: i64::from(ino.mtime),
            size: 0,
            sha: String::new(),
            target: Vec::new(),
            dev: (0, 0),
            nlink: ino.nlink,
            xattrs: a.xattrs(&ino).unwrap(),
        };
        // The export table maps every inode number back to this inode.
        let by_number = a.inode_ref_by_number(ino.inode_number).unwrap();
        assert_eq!(by_number, Some(ino.inode_ref), "export table for {path}");
        match ino.kind {
            FileType::Dir => {
                for e in a.read_dir(&ino).unwrap() {
                    let child = a.inode(e.inode_ref).unwrap();
                    assert_eq!(child.inode_number, e.inode_number);
                    assert_eq!(child.kind, e.kind);
                    // Lookups go through the directory index where there is one.
                    let found = a.lookup_entry(&ino, &e.name).unwrap().unwrap();
                    assert_eq!(found, e);
                    todo.push((
                        format!("{path}/{}", String::from_utf8_lossy(&e.name)),
                        child,
                    ));
                }
            }
            FileType::File => {
                let mut data = vec![0u8; ino.size as usize];
                assert_eq!(a.read_at(&ino, 0, &mut data).unwrap(), data.len());
                n.size = ino.size;
                n.sha = sha(&data);
            }
            FileType::Symlink => n.target = a.read_link(&ino).unwrap(),
            FileType::CharDev | FileType::BlockDev => n.dev = ino.device(),
            _ => {}
        }
        out.insert(if path.is_empty() { "/".into() } else { path }, n);
    }
    out
}

fn perm_string(kind: char, perm: u32) -> String {
    let mut s = String::new();
    s.push(kind);
    for (i, (r, w, x)) in [(0o400, 0o200, 0o100), (0o40, 0o20, 0o10), (0o4, 0o2, 0o1)]
        .iter()
        .enumerate()
    {
        s.push(if perm & r != 0 { 'r' } else { '-' });
        s.push(if perm & w != 0 { 'w' } else { '-' });
        let special = [0o4000, 0o2000, 0o1000][i] & perm != 0;
        let exec = perm & x != 0;
        s.push(match (i, special, exec) {
            (2, true, true) => 't',
            (2, true, false) => 'T',
            (_, true, true) => 's',
            (_, true, false) => 'S',
            (_, false, true) => 'x',
            _ => '-',
        });
    }
    s
}

fn unsquashfs_available() {
    let ok = Command::new("unsquashfs").arg("-help").output().is_ok();
    assert!(
        ok,
        "unsquashfs not installed: run tests/setup.sh (apt-get install squashfs-tools)"
    );
}

/// path -> "perms uid/gid size-or-dev [-> target]" from `unsquashfs -lln`.
fn unsquashfs_lln(img: &Path) -> BTreeMap<String, String> {
    unsquashfs_available();
    let out = Command::new("unsquashfs")
        .arg("-lln")
        .arg(img)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs -lln: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(i) = line.find("squashfs-root") else {
            continue;
        };
        let f: Vec<&str> = line[..i].split_whitespace().collect();
        let path = line[i + "squashfs-root".len()..].to_string();
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        // perms uid/gid size date time, or perms uid/gid major, minor date time.
        let size = if f.len() == 6 {
            format!("{} {}", f[2], f[3])
        } else {
            f[2].to_string()
        };
        let (path, target) = match path.split_once(" -> ") {
            Some((p, t)) => (p.to_string(), format!(" -> {t}")),
            None => (path, String::new()),
        };
        m.insert(path, format!("{} {} {size}{target}", f[0], f[1]));
    }
    m
}

fn lln_expected(l: &Listing) -> BTreeMap<String, String> {
    l.iter()
        .map(|(p, n)| {
            let size = match n.kind {
                // unsquashfs 4.5 lists the stored number split at bit 8,
                // which differs from the kernel's split for minors over 255.
                'c' | 'b' => {
                    let (ma, mi) = n.dev;
                    let raw = (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & 0xfff00) << 12);
                    format!("{}, {}", raw >> 8, raw & 0xff)
                }
                '-' => n.size.to_string(),
                'l' => n.target.len().to_string(),
                _ => String::new(),
            };
            let target = if n.kind == 'l' {
                format!(" -> {}", String::from_utf8_lossy(&n.target))
            } else {
                String::new()
            };
            let mut line = format!(
                "{} {}/{} {size}{target}",
                perm_string(n.kind, n.perm),
                n.uid,
                n.gid
            );
            if n.kind == 'd' || n.kind == 'p' || n.kind == 's' {
                line = format!("{} {}/{}", perm_string(n.kind, n.perm), n.uid, n.gid);
            }
            (p.clone(), line)
        })
        .collect()
}

/// Compares `unsquashfs -lln` with the expected listing (directory sizes and
/// fifo sizes are unsquashfs's own: ignored).
fn check_lln(img: &Path, want: &Listing) {
    let got = unsquashfs_lln(img);
    let want = lln_expected(want);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "unsquashfs paths"
    );
    for (p, w) in &want {
        let g = &got[p];
        if w.starts_with('d') || w.starts_with('p') || w.starts_with('s') {
            assert!(
                g.starts_with(w.as_str()),
                "{p}: unsquashfs {g:?}, want {w:?}"
            );
        } else {
            assert_eq!(g, w, "{p}");
        }
    }
}

/// Mounts `img` with the kernel and returns what std::fs sees.
fn from_kernel(img: &Path, dir: &Path) -> Listing {
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-t", "squashfs", "-o", "loop,ro"])
        .arg(img)
        .arg(&mnt)
        .output()
        .expect("running mount");
    assert!(
        out.status.success(),
        "the kernel could not loop-mount {} (needs root and loop devices): {}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let l = std::panic::catch_unwind(|| from_fs(&mnt));
    let um = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(um.success(), "umount {}", mnt.display());
    l.unwrap()
}

fn opts(c: WriteCompressor) -> WriteOptions {
    WriteOptions {
        compressor: c,
        threads: 2,
        mkfs_time: Some(T0 as u32),
        ..WriteOptions::default()
    }
}

fn roundtrip(c: WriteCompressor) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let img = dir.path().join("img.sqfs");
    let stats = write_dir(&src, &Overrides::new(), &img, &opts(c)).unwrap();
    assert_eq!(
        stats.duplicates, 1,
        "text-copy has text's content (and xattrs apart)"
    );
    assert_eq!(fs::metadata(&img).unwrap().len() % 4096, 0);
    assert_eq!(stats.bytes_out, fs::metadata(&img).unwrap().len());
    let want = from_fs(&src);
    let got = from_archive(&img);
    assert_eq!(got.len(), want.len());
    for (p, w) in &want {
        assert_eq!(got.get(p), Some(w), "{p} ({c:?}, our reader)");
    }
    assert_eq!(got["/a/hard2"].nlink, 3);
    let a = Archive::open_path(&img, 0).unwrap();
    assert_eq!(u64::from(a.superblock().inode_count), stats.inodes);
    check_lln(&img, &want);
    let kernel = from_kernel(&img, dir.path());
    for (p, w) in &want {
        assert_eq!(kernel.get(p), Some(w), "{p} ({c:?}, kernel)");
    }
    assert_eq!(kernel.len(), want.len());
}

#[test]
fn roundtrip_zstd() {
    roundtrip(WriteCompressor::Zstd);
}

#[test]
fn roundtrip_gzip() {
    roundtrip(WriteCompressor::Gzip);
}

#[test]
fn roundtrip_xz() {
    roundtrip(WriteCompressor::Xz);
}

#[test]
fn roundtrip_lz4() {
    roundtrip(WriteCompressor::Lz4);
}

#[test]
fn overrides_show_in_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("dev")).unwrap();
    write(&src.join("dev/null"), b"");
    write(&src.join("dev/pipe"), b"");
    write(&src.join("dev/sda"), b"");
    write(&src.join("owned"), b"data");
    write(&src.join("cap"), b"binary");
    fs::create_dir(src.join("tmp")).unwrap();
    let mut ov = Overrides::new();
    let set = |ov: &mut Overrides, p: &str, o: EntryOverride| {
        ov.insert(PathBuf::from(p), o);
    };
    set(
        &mut ov,
        "dev/null",
        EntryOverride {
            special: Some(Special::CharDevice { major: 1, minor: 3 }),
            mode: Some(0o666),
            ..Default::default()
        },
    );
    set(
        &mut ov,
        "dev/pipe",
        EntryOverride {
            special: Some(Special::Fifo),
            mode: Some(0o600),
            ..Default::default()
        },
    );
    set(
        &mut ov,
        "dev/sda",
        EntryOverride {
            special: Some(Special::BlockDevice {
                major: 259,
                minor: 0x12345,
            }),
            uid: Some(0),
            gid: Some(6),
            mode: Some(0o660),
            ..Default::default()
        },
    );
    set(
        &mut ov,
        "owned",
        EntryOverride {
            uid: Some(1000),
            gid: Some(100),
            mode: Some(0o4711),
            mtime: Some(T0 + 99),
            ..Default::default()
        },
    );
    set(
        &mut ov,
        "cap",
        EntryOverride {
            xattrs: Some(vec![(
                b"security.capability".to_vec(),
                vec![1, 0, 0, 2, 0x20],
            )]),
            ..Default::default()
        },
    );
    set(
        &mut ov,
        "tmp",
        EntryOverride {
            mode: Some(0o1777),
            uid: Some(0),
            ..Default::default()
        },
    );
    set(
        &mut ov,
        "",
        EntryOverride {
            mode: Some(0o755),
            mtime: Some(T0),
            ..Default::default()
        },
    );
    let img = dir.path().join("img");
    let o = WriteOptions {
        all_root: true,
        ..opts(WriteCompressor::Zstd)
    };
    write_dir(&src, &ov, &img, &o).unwrap();
    let mut base = from_fs(&src);
    for n in base.values_mut() {
        (n.uid, n.gid) = (0, 0);
    }
    let want = apply_overrides(base, &ov);
    let got = from_archive(&img);
    assert_eq!(got, want);
    assert_eq!(got["/dev/null"].kind, 'c');
    assert_eq!(got["/dev/null"].dev, (1, 3));
    assert_eq!(got["/dev/sda"].dev, (259, 0x12345));
    assert_eq!(got["/owned"].perm, 0o4711);
    check_lln(&img, &want);
    // The kernel shows the same (only user.* xattrs are compared there).
    let mut kernel = from_kernel(&img, dir.path());
    let mut want_k = want.clone();
    for n in want_k.values_mut().chain(kernel.values_mut()) {
        n.xattrs.retain(|(k, _)| k.starts_with(b"user."));
    }
    assert_eq!(kernel, want_k);
}

#[test]
fn reproducible_across_threads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let mut images = Vec::new();
    for (i, threads) in [1usize, 2, 2].into_iter().enumerate() {
        let img = dir.path().join(format!("img{i}"));
        let o = WriteOptions {
            threads,
            ..opts(WriteCompressor::Zstd)
        };
        write_dir(&src, &Overrides::new(), &img, &o).unwrap();
        images.push(fs::read(&img).unwrap());
    }
    assert!(images[0] == images[1], "1 vs 2 threads differ");
    assert!(images[1] == images[2], "two runs differ");
}

#[test]
fn errors_name_the_path_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write(&src.join("f"), &noise(3 << 20, 9));
    let o = opts(WriteCompressor::Zstd);

    let missing = dir.path().join("no-such-dir");
    let e = write_dir(&missing, &Overrides::new(), &dir.path().join("x"), &o).unwrap_err();
    assert!(e.to_string().contains("no-such-dir"), "{e}");
    assert!(!dir.path().join("x").exists());

    let out = dir.path().join("no-such-out-dir/img");
    let e = write_dir(&src, &Overrides::new(), &out, &o).unwrap_err();
    assert!(e.to_string().contains("no-such-out-dir"), "{e}");
    assert!(!e.to_string().contains('\n'));

    for bs in [0, 1000, 3 << 12, 2 << 20] {
        let o = WriteOptions {
            block_size: bs,
            ..opts(WriteCompressor::Zstd)
        };
        let e = write_dir(&src, &Overrides::new(), &dir.path().join("y"), &o).unwrap_err();
        assert!(e.to_string().contains("block size"), "{e}");
    }

    // An output file system too small for the image: the write fails
    // part-way and the partial file is removed.
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs (needs root)");
    let r = write_dir(&src, &Overrides::new(), &small.join("img"), &o);
    let left: Vec<_> = fs::read_dir(&small).unwrap().collect();
    let _ = Command::new("umount").arg(&small).status();
    let e = r.unwrap_err();
    assert!(e.to_string().contains("img"), "{e}");
    assert!(left.is_empty(), "partial output left: {left:?}");
}

/// Leaves the test tree and its images (one per compressor) in
/// $SQFS_WRITE_OUT, for checks with other readers (squashfuse, unsquashfs -d).
#[test]
#[ignore]
fn images_for_manual_checks() {
    let out = PathBuf::from(std::env::var_os("SQFS_WRITE_OUT").expect("SQFS_WRITE_OUT"));
    let src = out.join("src");
    make_tree(&src);
    for (c, name) in [
        (WriteCompressor::Zstd, "zstd"),
        (WriteCompressor::Gzip, "gzip"),
        (WriteCompressor::Xz, "xz"),
        (WriteCompressor::Lz4, "lz4"),
    ] {
        write_dir(
            &src,
            &Overrides::new(),
            &out.join(format!("{name}.sqfs")),
            &opts(c),
        )
        .unwrap();
    }
}

#[test]
fn zero_blocks_are_holes_and_noise_is_stored_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    write(&src.join("zeros"), &vec![0u8; 64 * BS as usize + 100]);
    let img = dir.path().join("img");
    write_dir(&src, &Overrides::new(), &img, &opts(WriteCompressor::Zstd)).unwrap();
    // 8 MiB of zeros take no data blocks at all.
    assert_eq!(fs::metadata(&img).unwrap().len(), 4096);
    assert_eq!(from_archive(&img), from_fs(&src));

    write(&src.join("noise"), &noise(4 * BS as usize, 7));
    write_dir(&src, &Overrides::new(), &img, &opts(WriteCompressor::Gzip)).unwrap();
    let len = fs::metadata(&img).unwrap().len();
    // Incompressible blocks are stored as they are, not grown.
    assert!(len <= 4 * u64::from(BS) + 4096, "{len}");
    assert_eq!(from_archive(&img), from_fs(&src));
}

#[test]
fn non_default_levels_are_read_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    write(&src.join("d/text"), &b"some text ".repeat(50_000));
    write(&src.join("small"), b"small");
    let want = from_fs(&src);
    // What unsquashfs -s reports: the compressor always; the level where the format records
    // one (zstd and gzip options; xz and lz4 options carry no level).
    for (c, level, shown) in [
        (
            WriteCompressor::Zstd,
            3,
            &["Compression zstd", "compression-level 3"][..],
        ),
        (
            WriteCompressor::Gzip,
            1,
            &["Compression gzip", "compression-level 1"][..],
        ),
        (WriteCompressor::Xz, 9, &["Compression xz"][..]),
        (WriteCompressor::Lz4, 0, &["Compression lz4"][..]),
    ] {
        let img = dir.path().join(format!("{c:?}"));
        let o = WriteOptions {
            level: Some(level),
            ..opts(c)
        };
        write_dir(&src, &Overrides::new(), &img, &o).unwrap();
        assert_eq!(from_archive(&img), want, "{c:?}");
        check_lln(&img, &want);
        let s = Command::new("unsquashfs")
            .arg("-s")
            .arg(&img)
            .output()
            .unwrap();
        assert!(s.status.success(), "unsquashfs -s {c:?}: {s:?}");
        let s = String::from_utf8_lossy(&s.stdout);
        for want in shown {
            assert!(
                s.lines().any(|l| l.trim() == *want),
                "{c:?}: no line '{want}' in: {s}"
            );
        }
        assert_eq!(from_kernel(&img, dir.path()), want, "{c:?}");
    }
}
