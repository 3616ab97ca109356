//! End-to-end bad-input matrix: damaged and crafted images, impossible options and a host
//! without FUSE or user namespaces. Every case must end with exit 255 and one line
//! `launcher: error: ...` (or, for damage the launcher cannot see before the command runs,
//! with EIO inside and no crash), never a panic or a hang, and leave nothing behind.
//!
//! The host-state cases (/dev/fuse, user namespaces) change nothing global: they run the
//! launcher in a private mount namespace or a child user namespace set up as root.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: a launch takes well under a second; only a hang comes near it.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` with a deadline; a run past it is killed and reported as a hang.
fn run_bounded(mut cmd: Command, what: &str) -> Out {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {LIMIT:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// A file in the scratch directory the test user can read.
fn scratch_file(name: &str, bytes: &[u8]) -> String {
    let p = setup().scratch.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p.display().to_string()
}

/// Exit 255, a single `launcher: error:` line containing every `want`, no panic, and no
/// process left that names `needle` (the image path: unique per case).
fn assert_clean_failure(out: &Out, what: &str, want: &[&str], needle: &str) {
    assert_eq!(out.code, 255, "{what}: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
    assert!(
        out.stderr.starts_with("launcher: error: "),
        "{what}: {out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{what}: {out:?}");
    for w in want {
        assert!(
            out.stderr.to_lowercase().contains(&w.to_lowercase()),
            "{what}: want '{w}': {out:?}"
        );
    }
    assert!(wait_gone(needle), "{what}: processes left behind");
}

/// The launcher may fail (255, its own error) or the command may fail, but it must not
/// crash, panic or hang.
fn assert_no_crash(out: &Out, what: &str) {
    assert!(out.code >= 0, "{what}: killed by a signal: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
    if out.code == 255 && out.stdout.is_empty() {
        assert!(out.stderr.contains("launcher: error: "), "{what}: {out:?}");
    }
}

fn exec(img: &str, args: &[&str]) -> Out {
    let mut all = vec!["exec", img];
    all.extend_from_slice(args);
    run_bounded(launcher(&all).command(), img)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The test user's entries in the host's temporary directories, but for the test processes'
/// scratch directories and the shared instances' rendezvous directory. (A refused launch
/// mounts nothing, and could not touch the host's mount table anyway: what it could leave
/// is its processes, checked per case, and files.)
fn user_temp_files() -> BTreeSet<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let uid = setup().uid;
    ["/tmp", "/var/tmp", "/dev/shm"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .map(|e| e.path())
        .filter(|p| {
            *p != share_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("launcher-e2e-"))
        })
        .collect()
}

#[test]
fn truncated_images_fail_cleanly() {
    let files = user_temp_files();
    let good = std::fs::read(fixture("busybox-gzip.sqfs")).unwrap();
    let sb_end = 96;
    // The file is padded to 4 KiB: the image proper ends at bytes_used.
    let used = u64_at(&good, 40) as usize;
    for cut in [0, 1, 4, 50, sb_end - 1, sb_end, 4096, used / 2, used - 1] {
        let img = scratch_file(&format!("trunc-{cut}.sqfs"), &good[..cut]);
        let out = exec(&img, &["/bin/true"]);
        assert_clean_failure(&out, &img, &[&img], &img);
    }
    let sif = std::fs::read(fixture("singularityce-busybox-amd64.sif")).unwrap();
    for cut in [31, 100, 128, 4096, 40000, sif.len() / 2, sif.len() - 1] {
        let img = scratch_file(&format!("trunc-{cut}.sif"), &sif[..cut]);
        let out = exec(&img, &["/bin/true"]);
        assert_clean_failure(&out, &img, &[&img], &img);
    }
    let new: Vec<_> = user_temp_files().difference(&files).cloned().collect();
    assert!(new.is_empty(), "files left by refused launches: {new:?}");
}

/// Bit flips all over the superblock and through the metadata tables of a small image:
/// the launcher either refuses the image with one line, or runs and the damaged parts
/// read as errors inside; it never crashes or hangs.
#[test]
fn bit_flipped_images_never_crash_or_hang() {
    let good = std::fs::read(fixture("bare.sqfs")).unwrap();
    let inode_start = u64_at(&good, 64) as usize;
    let end = (u64_at(&good, 40) as usize).min(good.len());
    let mut positions: Vec<usize> = (0..96).collect();
    let step = ((end - inode_start) / 48).max(1);
    positions.extend((inode_start..end).step_by(step));
    let mut refused = 0;
    for pos in positions {
        let mut bad = good.clone();
        bad[pos] ^= 0x5a;
        let img = scratch_file(&format!("flip-{pos}.sqfs"), &bad);
        let out = exec(
            &img,
            &[
                "/bin/sh",
                "-c",
                "ls -lR / >/dev/null 2>&1; cat /bin/busybox >/dev/null; echo ran",
            ],
        );
        assert_no_crash(&out, &format!("flip at {pos}"));
        if out.code == 255 && out.stdout.is_empty() {
            refused += 1;
            assert_eq!(out.stderr.lines().count(), 1, "flip at {pos}: {out:?}");
            assert!(out.stderr.contains(&img), "flip at {pos}: {out:?}");
        }
        assert!(wait_gone(&img), "flip at {pos}: processes left behind");
        let _ = std::fs::remove_file(&img);
    }
    assert!(refused > 0, "no flip was caught at open");
}

/// Sizes and counts far beyond the file, in SquashFS superblocks and SIF headers and
/// descriptors.
#[test]
fn huge_counts_sizes_and_offsets_fail_cleanly() {
    let sq = std::fs::read(fixture("busybox-gzip.sqfs")).unwrap();
    let bytes_used = u64_at(&sq, 40);
    // (what, offset, little-endian bytes)
    let sq_cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("inode count", 4, u32::MAX.to_le_bytes().to_vec()),
        ("block size", 12, (1u32 << 31).to_le_bytes().to_vec()),
        ("fragment count", 16, u32::MAX.to_le_bytes().to_vec()),
        ("id count", 26, u16::MAX.to_le_bytes().to_vec()),
        ("bytes used", 40, (u64::MAX / 2).to_le_bytes().to_vec()),
        ("id table", 48, (bytes_used + 4096).to_le_bytes().to_vec()),
        ("inode table", 64, (bytes_used + 1).to_le_bytes().to_vec()),
        ("directory table", 72, u64::MAX.to_le_bytes().to_vec()),
        (
            "fragment table",
            80,
            (bytes_used - 2).to_le_bytes().to_vec(),
        ),
        ("root inode", 32, (u64::MAX >> 8).to_le_bytes().to_vec()),
    ];
    for (what, off, val) in sq_cases {
        let mut bad = sq.clone();
        bad[off..off + val.len()].copy_from_slice(&val);
        let img = scratch_file(&format!("huge-{}.sqfs", what.replace(' ', "-")), &bad);
        let out = exec(&img, &["/bin/true"]);
        assert_clean_failure(&out, what, &[&img], &img);
    }

    let sif = std::fs::read(sif_testdata("one-group.sif")).unwrap();
    let descr = u64_at(&sif, 96) as usize;
    let slot = 585;
    let sif_cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("descriptors total", 88, i64::MAX.to_le_bytes().to_vec()),
        ("descriptors free", 80, (-5i64).to_le_bytes().to_vec()),
        (
            "descriptors offset",
            96,
            (1i64 << 40).to_le_bytes().to_vec(),
        ),
        (
            "object size",
            descr + slot + 25,
            (i64::MAX - 10).to_le_bytes().to_vec(),
        ),
        (
            "object offset",
            descr + slot + 17,
            (1i64 << 50).to_le_bytes().to_vec(),
        ),
        (
            "object overlaps header",
            descr + slot + 17,
            8i64.to_le_bytes().to_vec(),
        ),
        // The System partition (slot 0) retyped as a second PrimSys.
        (
            "two primary partitions",
            descr + 201 + 4,
            2u32.to_le_bytes().to_vec(),
        ),
    ];
    for (what, off, val) in sif_cases {
        let mut bad = sif.clone();
        bad[off..off + val.len()].copy_from_slice(&val);
        let img = scratch_file(&format!("huge-{}.sif", what.replace(' ', "-")), &bad);
        let out = exec(&img, &["/bin/true"]);
        assert_clean_failure(&out, what, &[&img], &img);
        if what == "two primary partitions" {
            assert!(out.stderr.contains("primary"), "{out:?}");
        }
    }
}

/// A SIF whose primary partition is smaller than the SquashFS inside it would have reads go
/// past the partition, into objects a partition digest does not cover: refused.
#[test]
fn a_squashfs_larger_than_its_partition_is_refused() {
    let sif = std::fs::read(sif_testdata("one-group.sif")).unwrap();
    let descr = u64_at(&sif, 96) as usize;
    // The second descriptor (the SquashFS PrimSys partition, 4096 bytes holding 249 used).
    let size_at = descr + 585 + 25;
    assert_eq!(u64_at(&sif, size_at), 4096, "the fixture changed");
    let mut bad = sif.clone();
    bad[size_at..size_at + 8].copy_from_slice(&100i64.to_le_bytes());
    let img = scratch_file("short-partition.sif", &bad);
    let out = exec(&img, &["/bin/true"]);
    assert_clean_failure(&out, "short partition", &[&img, "past its partition"], &img);
    // The untouched file passes this check (it then has no /bin/true to run).
    let good = scratch_file("one-group.sif", &sif);
    let out = exec(&good, &["/bin/true"]);
    assert!(!out.stderr.contains("past its partition"), "{out:?}");
}

fn sif_testdata(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sif")
        .join(name);
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// Finds `name` in an uncompressed directory table and returns the position of its entry
/// (offset u16, inode number delta i16, type u16, name size u16, name).
fn dir_entry(img: &[u8], name: &[u8]) -> usize {
    let dir_start = u64_at(img, 72) as usize;
    let at = img[dir_start..]
        .windows(name.len())
        .position(|w| w == name)
        .unwrap_or_else(|| {
            panic!(
                "{} not in the directory table",
                String::from_utf8_lossy(name)
            )
        })
        + dir_start;
    at - 8
}

/// A SquashFS whose directory entries loop back to the root and to their own parent,
/// made by patching a mksquashfs image (uncompressed metadata, one inode block), plus
/// symlink loops mksquashfs writes as they are.
fn cyclic_image() -> String {
    let t = busybox_tree("cyclic-tree");
    std::fs::create_dir_all(t.join("loop/cycle_to_root_xxxxxxxxxxxx")).unwrap();
    std::fs::create_dir_all(t.join("loop/parent_dir_yyyyyyyyyyyy/cycle_to_parent_zzzzzzz"))
        .unwrap();
    std::fs::create_dir_all(t.join("links")).unwrap();
    std::os::unix::fs::symlink("l2", t.join("links/l1")).unwrap();
    std::os::unix::fs::symlink("l1", t.join("links/l2")).unwrap();
    std::os::unix::fs::symlink("/links/self", t.join("links/self")).unwrap();
    std::os::unix::fs::symlink("/", t.join("links/root")).unwrap();
    std::os::unix::fs::symlink("../..", t.join("links/up")).unwrap();
    let path = setup().scratch.join("cyclic.sqfs");
    mksquashfs(&t, &path, &["-noI", "-noD", "-noF", "-noX", "-no-exports"]);
    let mut img = std::fs::read(&path).unwrap();
    assert!(
        u64_at(&img, 72) - u64_at(&img, 64) < 8192,
        "the inode table must be one metadata block for this patch"
    );
    let root_off = (u64_at(&img, 32) & 0xffff) as u16;
    let e = dir_entry(&img, b"cycle_to_root_xxxxxxxxxxxx");
    img[e..e + 2].copy_from_slice(&root_off.to_le_bytes());
    let parent = dir_entry(&img, b"parent_dir_yyyyyyyyyyyy");
    let parent_off = [img[parent], img[parent + 1]];
    let e = dir_entry(&img, b"cycle_to_parent_zzzzzzz");
    img[e..e + 2].copy_from_slice(&parent_off);
    std::fs::write(&path, &img).unwrap();
    std::fs::remove_dir_all(&t).unwrap();
    path.display().to_string()
}

#[test]
fn directory_cycles_and_symlink_loops_end() {
    let img = cyclic_image();
    // The kernel refuses the aliased directories (EIO or ELOOP); every walk ends.
    let out = exec(
        &img,
        &[
            "/bin/sh",
            "-c",
            "find / -xdev >/dev/null 2>&1; ls -R /loop >/dev/null 2>&1; \
             cat /links/l1 /links/self 2>/dev/null; \
             cd /loop/parent_dir_yyyyyyyyyyyy/cycle_to_parent_zzzzzzz/cycle_to_parent_zzzzzzz 2>/dev/null; \
             echo walked",
        ],
    );
    assert_no_crash(&out, "cycles");
    assert_eq!(out.stdout, "walked\n", "{out:?}");
    // The planner's own walks (mount points, working directory) end too.
    let d = setup().scratch.join("bind-src");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = d.display().to_string();
    let through_cycle =
        format!("{src}:/loop/cycle_to_root_xxxxxxxxxxxx/loop/cycle_to_root_xxxxxxxxxxxx/new");
    let out = exec(&img, &["-B", &through_cycle, "/bin/true"]);
    assert_no_crash(&out, "bind through a cycle");
    let out = exec(&img, &["-B", &format!("{src}:/links/l1/x"), "/bin/true"]);
    assert_clean_failure(
        &out,
        "bind through a symlink loop",
        &["symbolic links"],
        &img,
    );
    let out = exec(&img, &["--pwd", "/links/self", "/bin/true"]);
    assert_no_crash(&out, "cwd through a symlink loop");
    assert!(out.code != 0, "{out:?}");
}

/// An image of a busybox tree plus the file `/NAME` (first in the directory walk, so its blocks
/// come first after the superblock), whose first data block is then damaged.
fn eio_image(name: &str) -> String {
    let t = busybox_tree(&format!("{name}-tree"));
    let text: String = (0..20000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(t.join(name), text).unwrap();
    let path = setup().scratch.join(format!("{name}.sqfs"));
    mksquashfs(&t, &path, &["-comp", "gzip"]);
    std::fs::remove_dir_all(&t).unwrap();
    let mut img = std::fs::read(&path).unwrap();
    assert_eq!(
        img[96], 0x78,
        "expected a zlib stream at the first data block"
    );
    for b in &mut img[97..120] {
        *b = 0xff;
    }
    std::fs::write(&path, &img).unwrap();
    path.display().to_string()
}

/// A valid image whose first data block is damaged: reading that file inside gives EIO,
/// the launcher reports it once and goes on serving the rest.
#[test]
fn corrupt_data_block_reads_as_eio() {
    let img = eio_image("0corrupt");
    let out = exec(
        &img,
        &[
            "/bin/sh",
            "-c",
            "cat /0corrupt >/dev/null; echo rc=$?; cat /etc/passwd >/dev/null && echo after",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "rc=1\nafter\n", "{out:?}");
    assert!(out.stderr.contains("Input/output error"), "{out:?}");
    assert!(
        out.stderr.contains("launcher: error reading the image"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

/// Issue 20, finding 1: `launcher exec eio.sqfs sh -c 'cat /corrupt; echo after' 2>&1 | wc -c`
/// hung for good. busybox `cat` splices the file into the pipe that is also the launcher's
/// stderr, holding the pipe while it waits for the page; the FUSE worker wrote its error
/// message to that pipe before it replied. The run must end (within a generous limit), show
/// the error, and leave no process behind, none in D state.
#[test]
fn corrupt_data_block_with_output_through_a_pipe_does_not_hang() {
    // The file name is in the command lines of the launcher (image path), sh and cat.
    let tag = format!("0eio-pipe-{}", std::process::id());
    let img = eio_image(&tag);
    // Close-on-exec: a process other tests start meanwhile must not keep the pipe open.
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut cmd = launcher(&[
        "exec",
        &img,
        "/bin/sh",
        "-c",
        &format!("cat /{tag}; echo after"),
    ])
    .command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(w.try_clone().unwrap()))
        .stderr(Stdio::from(w));
    let mut child = cmd.spawn().expect("spawning");
    // Our copies of the write end go with the Command: the reader sees EOF when the
    // launcher and everything it started are gone.
    drop(cmd);
    // `wc -c`: read everything.
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::fs::File::from(r).read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let left = process_states(&tag);
            // The launcher first, then what it started: cat waits in D until it is killed
            // itself, and the launcher cannot be reaped before that.
            let _ = child.kill();
            for pid in pids_matching(&tag) {
                // SAFETY: kill(2) with a pid and a signal number.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = child.wait();
            assert_gone(&tag, "left after killing a hung run");
            panic!("output through a pipe: still running after {LIMIT:?} (a hang): {left:#?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = reader.join().unwrap();
    let in_d: Vec<_> = process_states(&tag)
        .into_iter()
        .filter(|(_, state)| {
            state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('D'))
        })
        .collect();
    assert!(in_d.is_empty(), "processes in D state: {in_d:#?}");
    assert_gone(&tag, "processes left behind");
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("Input/output error"), "{text}");
    assert!(text.contains("launcher: error reading the image"), "{text}");
    // The launcher's line is written by a thread of its own: before or after the others.
    assert!(text.lines().any(|l| l == "after"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// (pid, "TID (COMM) STATE wchan=WCHAN") for every thread of every process whose command
/// line names `needle` (a FUSE worker stuck in D is a thread of the launcher, not its main one).
fn process_states(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for p in pids_matching(needle) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            // "TID (COMM) STATE ...": COMM may hold spaces and parentheses.
            let head = stat.rsplit_once(')').map_or(stat.clone(), |(a, rest)| {
                format!("{a}) {}", rest.split_whitespace().next().unwrap_or("?"))
            });
            out.push((p, format!("{head} wchan={wchan}")));
        }
    }
    out
}

#[test]
fn impossible_commands_and_paths_fail_cleanly() {
    let img = fixture("busybox-gzip.sqfs");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["/no/such/cmd"],
            vec!["cannot execute", "/no/such/cmd", "missing in the image"],
        ),
        (vec!["nosuchcmd"], vec!["'nosuchcmd' not found", "PATH="]),
        (vec!["/data"], vec!["cannot execute", "permission denied"]),
        (
            vec!["--pwd", "/nonexistent", "/bin/true"],
            vec!["working directory '/nonexistent' does not exist"],
        ),
        (
            vec!["-B", "/does/not/exist:/x", "/bin/true"],
            vec!["bind source '/does/not/exist' does not exist"],
        ),
        (
            vec!["-B", "/etc:/", "/bin/true"],
            vec!["'/' is the container's root directory", "inside the image"],
        ),
        (
            vec!["-B", "/etc:/data/tree/a/../../..", "/bin/true"],
            vec!["container's root directory"],
        ),
    ];
    for (args, want) in cases {
        let out = exec(&img, &args);
        let needle = args[args.len() - 1];
        assert_clean_failure(&out, &format!("{args:?}"), &want, needle);
    }
    // A destination that reaches the root through one of the image's symlinks.
    let t = busybox_tree("rootlink-tree");
    std::fs::create_dir_all(t.join("data")).unwrap();
    std::os::unix::fs::symlink("/", t.join("data/rootlink")).unwrap();
    std::os::unix::fs::symlink("..", t.join("data/up")).unwrap();
    let path = setup().scratch.join("rootlink.sqfs");
    mksquashfs(&t, &path, &["-comp", "lz4"]);
    std::fs::remove_dir_all(&t).unwrap();
    let img = path.display().to_string();
    for dst in ["/data/rootlink", "/data/up"] {
        let out = exec(&img, &["-B", &format!("/etc:{dst}"), "/bin/true"]);
        assert_clean_failure(
            &out,
            dst,
            &[
                dst,
                "container's root directory (through a symlink in the image)",
            ],
            &img,
        );
    }
}

/// A huge (sparse) file where the launcher reads a small text file is refused before it
/// costs its size in memory.
#[test]
fn huge_text_files_in_the_image_are_refused() {
    let t = busybox_tree("huge-passwd-tree");
    let f = std::fs::File::create(t.join("etc/passwd")).unwrap();
    f.set_len(64 << 20).unwrap();
    let path = setup().scratch.join("huge-passwd.sqfs");
    mksquashfs(&t, &path, &["-comp", "lz4"]);
    std::fs::remove_dir_all(&t).unwrap();
    let img = path.display().to_string();
    let out = exec(&img, &["/bin/true"]);
    assert_clean_failure(
        &out,
        "64 MiB /etc/passwd",
        &["/etc/passwd", "at most 16 MiB"],
        &img,
    );
}

/// Issue 20, finding 3: the image's environment scripts had no bounds. A script that doubles
/// a variable 40 times drove the launcher to gigabytes and an allocation abort; many
/// variables or a huge script cost time and memory in proportion. Each is now refused
/// before the command starts, with one line naming the script. (The launcher runs under a
/// 4 GiB address-space limit here, so that a launcher without the bounds fails this test
/// quickly instead of taking the machine's memory.)
#[test]
fn hostile_environment_scripts_are_refused() {
    let doubling: String = std::iter::once("X=0123456789abcdef\n".to_string())
        .chain((0..40).map(|_| "export X=\"$X$X\"\n".to_string()))
        .collect();
    let many: String = (0..5000).map(|i| format!("export V{i}=x\n")).collect();
    let comment_line = format!("# {}\n", "x".repeat(77));
    let big: String = comment_line.repeat(600 * 1024 / comment_line.len());
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "env-doubling",
            vec![("90-x.sh", doubling)],
            vec![
                "/.singularity.d/env/90-x.sh",
                "line 15",
                "value of X",
                "128 KiB",
            ],
        ),
        (
            "env-many",
            vec![("90-many.sh", many)],
            vec!["/.singularity.d/env/90-many.sh", "4096 variables"],
        ),
        (
            "env-big",
            vec![
                ("10-a.sh", big.clone()),
                ("20-b.sh", big.clone()),
                ("30-c.sh", big),
            ],
            vec!["/.singularity.d/env/20-b.sh", "1 MiB"],
        ),
    ];
    for (name, scripts, want) in cases {
        let img = env_script_image(name, &scripts);
        let mut cmd = launcher(&["exec", &img, "/bin/true"]).command();
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let lim = libc::rlimit {
                    rlim_cur: 4 << 30,
                    rlim_max: 4 << 30,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = run_bounded(cmd, name);
        assert_clean_failure(&out, name, &want, &img);
    }
}

/// The launcher as the test user, started by `sh -c SETUP; exec setpriv ...` as root in
/// a private mount namespace (nothing changes on the host).
fn in_private_mount_ns(setup_script: &str, img: &str) -> Out {
    let s = setup();
    let script = format!(
        "set -e; {setup_script}; exec {} {} exec {img} /bin/true",
        as_test_user_prefix(),
        s.bin.display()
    );
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("HOME", &s.home)
        .current_dir(&s.home);
    run_bounded(c, "private mount namespace")
}

/// The shared fixture under a name of its own, so that "no process left" can look for it.
fn unique_link(name: &str) -> String {
    let p = setup().scratch.join(name);
    let _ = std::fs::remove_file(&p);
    std::os::unix::fs::symlink(fixture("busybox-gzip.sqfs"), &p).unwrap();
    p.display().to_string()
}

#[test]
fn dev_fuse_missing_or_unreadable() {
    let img = unique_link("devfuse.sqfs");
    let out = in_private_mount_ns(
        "mount -t tmpfs tmpfs /dev; mknod -m 666 /dev/null c 1 3",
        &img,
    );
    assert_clean_failure(
        &out,
        "no /dev/fuse",
        &["/dev/fuse", "hint:", "modprobe fuse"],
        &img,
    );
    let out = in_private_mount_ns(
        "mount -t tmpfs tmpfs /mnt; mknod -m 600 /mnt/fuse c 10 229; mount --bind /mnt/fuse /dev/fuse",
        &img,
    );
    assert_clean_failure(
        &out,
        "unreadable /dev/fuse",
        &["/dev/fuse", "permission denied", "chmod 0666 /dev/fuse"],
        &img,
    );
}

/// user.max_user_namespaces is per user namespace: root makes a child user namespace
/// (mapping root and the test user), sets the limit to 0 there only, and runs the
/// launcher in it as the test user.
#[test]
fn user_namespaces_disabled() {
    let s = setup();
    let img = unique_link("nouserns.sqfs");
    let script = format!(
        "while [ \"$(id -u)\" != 0 ]; do sleep 0.01; done; \
         exec sh -c 'echo 0 >/proc/sys/user/max_user_namespaces && \
         exec {} {} exec {img} /bin/true'",
        as_test_user_prefix().replace('\'', ""),
        s.bin.display()
    );
    let mut c = Command::new("unshare");
    c.args(["--user", "sh", "-c", &script])
        .env("HOME", &s.home)
        .current_dir(&s.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id();
    let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/ns/user"))
        .ok()
        .as_ref()
        == Some(&ours)
    {
        assert!(Instant::now() < deadline, "unshare --user did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The shell waits for its map, then execs again: capabilities in the new namespace
    // are granted at an exec as uid 0, and it was unmapped at the first one.
    let map = |id: u32| format!("0 0 1\n{id} {id} 1\n");
    std::fs::write(format!("/proc/{pid}/uid_map"), map(s.uid)).unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), map(s.gid)).unwrap();
    let out = child.wait_with_output().unwrap();
    let out = Out::from(out);
    assert_clean_failure(
        &out,
        "max_user_namespaces=0",
        &[
            "cannot create a user namespace",
            "hint:",
            "user.max_user_namespaces",
        ],
        &img,
    );
    assert_ne!(
        std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .unwrap()
            .trim(),
        "0",
        "the host's limit must be untouched"
    );
}

/// Issue 17's small ones, seen with a real Debian image: `verify` of a bare SquashFS says what
/// the file is (not the bytes where a SIF's magic would be), once; `exec IMAGE /usr` says the
/// command is a directory.
#[test]
fn verify_of_a_bare_squashfs_and_exec_of_a_directory_say_what_they_are() {
    let sqfs = fixture("busybox-zstd.sqfs");
    let out = launcher(&["verify", &sqfs]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.contains("a bare SquashFS image, not a SIF") && !out.stderr.contains("\\x"),
        "{out:?}"
    );
    let out = launcher(&["exec", &sqfs, "/usr"]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains("cannot execute '/usr'") && out.stderr.contains("it is a directory"),
        "{out:?}"
    );
}

/// A FIFO where an image is expected (another user's, in a shared image directory): opening
/// it waited for a writer, so every command naming it hung until killed (review of
/// 2026-12-05). Each now says what the file is, at once.
#[test]
fn a_fifo_named_as_an_image_is_refused_at_once() {
    let s = setup();
    let dir = s.scratch.join("fifo-image");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("image.sif");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666)).unwrap();
    let f = fifo.display().to_string();
    for args in [
        vec!["exec", &f, "true"],
        vec!["exec", "--verify", &f, "true"],
        vec!["verify", &f],
        vec!["inspect", &f],
        vec![
            "exec",
            "--overlay",
            &f,
            &fixture("busybox-zstd.sqfs"),
            "true",
        ],
    ] {
        // Bounded: the bug was a hang.
        let out = Out::from(
            as_test_user(&s.bin, Some(20))
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, 255, "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("a FIFO, not an image file") && out.stderr.contains(&f),
            "{args:?}: {out:?}"
        );
    }
}
