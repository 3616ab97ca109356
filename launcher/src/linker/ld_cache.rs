//! The host's dynamic linker cache (`/etc/ld.so.cache`), read directly.
//!
//! `ldconfig -p` would cost a process per launch (thousands per job on a big allocation) and
//! its text output changes between glibc versions. The file format is stable: the
//! "glibc-ld.so.cache1.1" layout that glibc writes since 2.32, optionally after the old
//! "ld.so-1.7.0" table that older glibc wrote in front of it. Only entries for the host's
//! own ABI (64-bit x86-64, AArch64, ...) are kept: a 32-bit libcuda is of no use to us.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const MAGIC_NEW: &[u8] = b"glibc-ld.so.cache1.1";
const MAGIC_OLD: &[u8] = b"ld.so-1.7.0";
const NEW_HEADER: usize = 48;
const NEW_ENTRY: usize = 24;
const OLD_HEADER: usize = 16; // 11-byte magic, padded to 12, then nlibs
const OLD_ENTRY: usize = 12;

/// `flags` of an entry: low byte the library type, high byte the ABI.
const FLAG_TYPE_MASK: i32 = 0x00ff;
const FLAG_ELF_LIBC6: i32 = 0x0003;
const FLAG_REQUIRED_MASK: i32 = 0xff00;

/// The ABI bits of the running host (glibc's ldconfig.h values).
pub fn host_abi() -> i32 {
    if cfg!(target_arch = "x86_64") {
        0x0300
    } else if cfg!(target_arch = "aarch64") {
        0x0a00
    } else if cfg!(target_arch = "powerpc64") {
        0x0500
    } else if cfg!(target_arch = "s390x") {
        0x0400
    } else {
        0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// The name the loader looks up (usually a soname, `libcuda.so.1`).
    pub name: String,
    pub path: PathBuf,
    pub flags: i32,
}

/// The entries of one cache file, in the file's order (the loader's order of preference).
#[derive(Clone, Debug, Default)]
pub struct LdCache {
    pub entries: Vec<CacheEntry>,
}

impl LdCache {
    pub fn read(path: &Path) -> Result<LdCache> {
        // Real caches are a few hundred KiB.
        let bytes = crate::host_file::read_host_file(path, 64 << 20)
            .with_context(|| format!("reading the ld.so cache {}", path.display()))?;
        LdCache::parse(&bytes).with_context(|| format!("ld.so cache {}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<LdCache> {
        if bytes.starts_with(MAGIC_NEW) {
            return parse_new(bytes, 0);
        }
        if !bytes.starts_with(MAGIC_OLD) {
            bail!("not an ld.so cache (unknown magic)");
        }
        let nlibs = u32_at(bytes, 12)? as usize;
        let strings = nlibs
            .checked_mul(OLD_ENTRY)
            .and_then(|n| n.checked_add(OLD_HEADER))
            .context("entry count overflows")?;
        if strings > bytes.len() {
            bail!("{nlibs} entries do not fit in {} bytes", bytes.len());
        }
        // A new-format cache usually follows the old table, 8-byte aligned; it is the better one.
        let new_at = strings.next_multiple_of(8);
        if bytes.len() > new_at && bytes[new_at..].starts_with(MAGIC_NEW) {
            return parse_new(bytes, new_at);
        }
        Ok(LdCache {
            entries: read_entries(bytes, OLD_HEADER, OLD_ENTRY, nlibs, strings)?,
        })
    }

    /// Entries usable by this host's loader: ELF libc6 libraries of the host's ABI.
    pub fn for_abi(&self, abi: i32) -> impl Iterator<Item = &CacheEntry> {
        self.entries.iter().filter(move |e| {
            e.flags & FLAG_TYPE_MASK == FLAG_ELF_LIBC6 && e.flags & FLAG_REQUIRED_MASK == abi
        })
    }

    /// The first entry named exactly `name` for the host's ABI.
    pub fn lookup(&self, name: &str) -> Option<&Path> {
        self.for_abi(host_abi())
            .find(|e| e.name == name)
            .map(|e| e.path.as_path())
    }

    /// Every host-ABI entry whose name is `base` or `base.`-something (`libcuda.so` matches
    /// `libcuda.so` and `libcuda.so.1`, not `libcudart.so`), one per name, first one wins.
    pub fn matching(&self, base: &str) -> Vec<&CacheEntry> {
        let mut out: Vec<&CacheEntry> = Vec::new();
        for e in self.for_abi(host_abi()) {
            if name_matches(&e.name, base) && !out.iter().any(|o| o.name == e.name) {
                out.push(e);
            }
        }
        out
    }
}

/// `libcuda.so` matches `libcuda.so` and `libcuda.so.1`, not `libcudart.so`.
pub fn name_matches(name: &str, base: &str) -> bool {
    name == base || name.strip_prefix(base).is_some_and(|r| r.starts_with('.'))
}

/// The new format; string offsets count from the start of its header (`base`).
fn parse_new(bytes: &[u8], base: usize) -> Result<LdCache> {
    let nlibs = u32_at(bytes, base + 20)? as usize;
    let endian = *bytes.get(base + 28).context("truncated header")?;
    // 0: written before the field existed (native); 2: little-endian; 3: big-endian.
    let native = if cfg!(target_endian = "little") { 2 } else { 3 };
    if endian != 0 && endian != native {
        bail!("written for the other byte order (flag {endian})");
    }
    if base + NEW_HEADER + nlibs.saturating_mul(NEW_ENTRY) > bytes.len() {
        bail!("{nlibs} entries do not fit in {} bytes", bytes.len());
    }
    Ok(LdCache {
        entries: read_entries(bytes, base + NEW_HEADER, NEW_ENTRY, nlibs, base)?,
    })
}

/// `nlibs` entries of `entry_size` bytes from `table`, each starting with flags, key and value
/// (u32 offsets counted from `strings`); both formats share that layout.
fn read_entries(
    bytes: &[u8],
    table: usize,
    entry_size: usize,
    nlibs: usize,
    strings: usize,
) -> Result<Vec<CacheEntry>> {
    let mut entries = Vec::with_capacity(nlibs);
    for i in 0..nlibs {
        let at = table + i * entry_size;
        let flags = u32_at(bytes, at)? as i32;
        let key = strings + u32_at(bytes, at + 4)? as usize;
        let value = strings + u32_at(bytes, at + 8)? as usize;
        entries.push(CacheEntry {
            name: cstr_at(bytes, key)?,
            path: PathBuf::from(cstr_at(bytes, value)?),
            flags,
        });
    }
    Ok(entries)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    let b = bytes
        .get(at..at + 4)
        .with_context(|| format!("truncated at byte {at}"))?;
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn cstr_at(bytes: &[u8], at: usize) -> Result<String> {
    let rest = bytes
        .get(at..)
        .with_context(|| format!("string offset {at} past the end"))?;
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .with_context(|| format!("unterminated string at {at}"))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(name_matches("libcuda.so.1", "libcuda.so"));
        assert!(name_matches("libcuda.so", "libcuda.so"));
        assert!(!name_matches("libcudart.so.12", "libcuda.so"));
        assert!(!name_matches("libcuda.so1", "libcuda.so"));
    }

    #[test]
    fn a_device_or_fifo_as_the_cache_is_refused_not_read() {
        let e = LdCache::read(Path::new("/dev/zero")).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("cache");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = LdCache::read(&fifo).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }

    use super::*;
    use std::process::Command;

    /// A cache made by the real ldconfig from a directory holding one small library.
    /// A cache made by ldconfig with a library built by gcc (tests/setup.sh installs it:
    /// without it the test fails, never skips).
    fn real_cache(tag: &str, format: Option<&str>) -> (tempfile::TempDir, LdCache) {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("launcher-ldcache-{tag}-"))
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("f.c"), "int fake_cuda(void) { return 42; }\n").unwrap();
        let lib = dir.join("lib/libfakecuda.so.1.2");
        let gcc = Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libfakecuda.so.1", "-o"])
            .arg(&lib)
            .arg(dir.join("f.c"))
            .status()
            .expect("running gcc (tests/setup.sh installs it)");
        assert!(gcc.success(), "gcc failed to build the test library: {gcc}");
        std::fs::write(
            dir.join("ld.so.conf"),
            format!("{}\n", dir.join("lib").display()),
        )
        .unwrap();
        let mut cmd = Command::new("/sbin/ldconfig");
        cmd.arg("-X").arg("-C").arg(dir.join("ld.so.cache"));
        cmd.arg("-f").arg(dir.join("ld.so.conf"));
        if let Some(f) = format {
            cmd.args(["-c", f]);
        }
        // ldconfig also wants the soname link in the directory (-X: do not make it).
        std::os::unix::fs::symlink("libfakecuda.so.1.2", dir.join("lib/libfakecuda.so.1")).unwrap();
        let st = cmd.status().expect("running ldconfig");
        assert!(st.success());
        let cache = LdCache::read(&dir.join("ld.so.cache")).unwrap();
        (tmp, cache)
    }

    #[test]
    fn reads_a_cache_made_by_ldconfig() {
        let (dir, cache) = real_cache("new", None);
        assert_eq!(
            cache.lookup("libfakecuda.so.1"),
            Some(dir.path().join("lib/libfakecuda.so.1").as_path())
        );
        // The host's own libraries are there too (ldconfig adds the trusted directories).
        assert!(cache.lookup("libc.so.6").is_some(), "{:?}", cache.entries);
        let m = cache.matching("libfakecuda.so");
        assert_eq!(m.len(), 1);
        assert!(cache.matching("libfakecud").is_empty());
    }

    #[test]
    fn reads_the_compat_format() {
        // glibc 2.36's ldconfig still writes old+new with `-c compat`.
        let (_dir, cache) = real_cache("compat", Some("compat"));
        assert!(cache.lookup("libfakecuda.so.1").is_some());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(LdCache::parse(b"").is_err());
        assert!(LdCache::parse(b"nonsense").is_err());
        let mut b = MAGIC_NEW.to_vec();
        b.resize(NEW_HEADER, 0);
        b[20] = 5; // five entries, none present
        assert!(LdCache::parse(&b).is_err());
        let mut b = MAGIC_OLD.to_vec();
        b.resize(OLD_HEADER, 0xff);
        assert!(LdCache::parse(&b).is_err());
    }
}
