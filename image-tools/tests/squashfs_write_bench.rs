//! Build time and image size of the SquashFS writer against mksquashfs on a
//! ~100 MB mixed tree. Ignored by default; run in release:
//!   cargo test --release -p image-tools --test squashfs_write_bench -- --ignored --nocapture
//! SQFS_BENCH_THREADS sets the thread count of both (default 2).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use image_tools::squashfs::write::{write_dir, WriteCompressor, WriteOptions};
use image_tools::tree::Overrides;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Text-like bytes: words from a small vocabulary, compressible as source code is.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "fn", "let", "mut", "return", "struct", "impl", "self", "data", "value", "config",
        "error", "result", "=", "{", "}", "(", ")", ";", "if", "else", "for", "while", "0", "1",
        "42", "name", "path", "file", "buffer", "index", "len",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let r = rng.next();
        out.extend(WORDS[(r % WORDS.len() as u64) as usize].as_bytes());
        out.push(if r & 0x700 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn random(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|_| rng.next().to_le_bytes())
        .take(len)
        .collect()
}

fn make_tree(root: &Path) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = 0u64;
    let mut put = |p: &Path, d: Vec<u8>| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        total += d.len() as u64;
        fs::write(p, d).unwrap();
    };
    // 40 MB of text in files of 1 KB .. 2 MB.
    let mut n = 0;
    let mut text_bytes = 0;
    while text_bytes < 40 << 20 {
        let len = 1024 + (rng.next() % (2 << 20)) as usize;
        put(
            &root.join(format!("src/mod{}/file{n}.rs", n % 17)),
            text(&mut rng, len),
        );
        text_bytes += len;
        n += 1;
    }
    // 20 MB incompressible.
    for i in 0..5 {
        put(
            &root.join(format!("blobs/blob{i}.bin")),
            random(&mut rng, 4 << 20),
        );
    }
    // 10 MB of zeros.
    put(&root.join("zeros/disk.img"), vec![0; 8 << 20]);
    put(&root.join("zeros/small.img"), vec![0; 2 << 20]);
    // 10,000 small files, ~20 MB, some duplicated.
    for i in 0..10_000 {
        let len = 100 + (rng.next() % 4000) as usize;
        let d = if i % 50 == 0 {
            b"duplicate content\n".repeat(40)
        } else {
            text(&mut rng, len)
        };
        put(&root.join(format!("small/d{}/f{i}.txt", i % 100)), d);
    }
    total
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

#[test]
#[ignore]
fn bench_against_mksquashfs() {
    let threads: usize = std::env::var("SQFS_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    let total = make_tree(&src);
    println!("tree: {:.1} MB", total as f64 / 1e6);
    for (comp, name, level) in [
        (WriteCompressor::Zstd, "zstd", Some("15")),
        (WriteCompressor::Gzip, "gzip", None),
    ] {
        let ours = dir.path().join(format!("ours-{name}"));
        let theirs = dir.path().join(format!("theirs-{name}"));
        let opts = WriteOptions {
            compressor: comp,
            threads,
            mkfs_time: Some(0),
            ..WriteOptions::default()
        };
        let (mut best_ours, mut best_theirs) = (Duration::MAX, Duration::MAX);
        // Alternate the two and keep the best of each: the machine is shared.
        for _ in 0..2 {
            let (r, t) = time(|| write_dir(&src, &Overrides::new(), &ours, &opts));
            r.unwrap();
            best_ours = best_ours.min(t);
            let (st, t) = time(|| {
                let mut c = Command::new("mksquashfs");
                c.arg(&src)
                    .arg(&theirs)
                    .args(["-noappend", "-quiet", "-no-progress", "-comp", name])
                    .args(["-processors", &threads.to_string()]);
                if let Some(l) = level {
                    c.args(["-Xcompression-level", l]);
                }
                c.status().expect("mksquashfs")
            });
            assert!(st.success());
            best_theirs = best_theirs.min(t);
        }
        let (so, st) = (
            fs::metadata(&ours).unwrap().len(),
            fs::metadata(&theirs).unwrap().len(),
        );
        println!(
            "{name}: ours {:.2}s {so} B, mksquashfs {:.2}s {st} B: time x{:.2}, size x{:.4}",
            best_ours.as_secs_f64(),
            best_theirs.as_secs_f64(),
            best_ours.as_secs_f64() / best_theirs.as_secs_f64(),
            so as f64 / st as f64
        );
    }
}
