//! The dynamic-linking facts of an ELF file (soname, needed libraries, run paths, version needs
//! and definitions), read from its headers, dynamic section and version sections only.
//!
//! goblin's `Elf::parse` also walks the symbol tables and every relocation, and splits the whole
//! dynamic string table into strings. A GPU driver's libraries are tens to hundreds of MB with
//! large tables, and `--nv` reads about 25 of them per launch: the full parse cost 27 ms warm
//! (270 ms from a cold page cache) on an H200 node with driver 580, for facts that sit in a few
//! pages of each file. Here only the strings asked for are looked up.

use anyhow::Context;
use goblin::container::Ctx;
use goblin::elf::program_header::{PT_DYNAMIC, PT_INTERP};
use goblin::elf::section_header::{SHT_GNU_VERDEF, SHT_GNU_VERNEED};
use goblin::elf::symver::{VerdefSection, VerneedSection};
use goblin::elf::{dynamic, Dynamic, Elf, ProgramHeader, SectionHeader};
use goblin::error::Result;

/// What the dynamic loader reads of one ELF file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DynInfo<'a> {
    pub soname: Option<&'a str>,
    /// DT_NEEDED, in order.
    pub needed: Vec<&'a str>,
    pub rpaths: Vec<&'a str>,
    pub runpaths: Vec<&'a str>,
    /// PT_INTERP (programs).
    pub interpreter: Option<&'a str>,
    /// Version names it needs from its libraries (`GLIBC_2.34`, ...).
    pub version_needs: Vec<&'a str>,
    /// Version names it defines (a libc.so.6: `GLIBC_2.2.5` ... `GLIBC_2.36`).
    pub version_defs: Vec<&'a str>,
}

/// The NUL-terminated UTF-8 string at `offset` of a string table; None when out of bounds,
/// unterminated or not UTF-8 (never a panic on a damaged file).
fn str_at(table: &[u8], offset: usize) -> Option<&str> {
    let rest = table.get(offset..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Parses `bytes` (a whole ELF file, usually memory-mapped) for its dynamic-linking facts.
pub fn parse(bytes: &[u8]) -> Result<DynInfo<'_>> {
    let header = Elf::parse_header(bytes)?;
    let ctx = Ctx::new(header.container()?, header.endianness()?);
    let phdrs = ProgramHeader::parse(bytes, header.e_phoff as usize, header.e_phnum as usize, ctx)?;
    let mut info = DynInfo {
        interpreter: phdrs
            .iter()
            .find(|ph| ph.p_type == PT_INTERP && ph.p_filesz != 0)
            .and_then(|ph| {
                let start = usize::try_from(ph.p_offset).ok()?;
                let len = usize::try_from(ph.p_filesz - 1).ok()?;
                std::str::from_utf8(bytes.get(start..start.checked_add(len)?)?).ok()
            }),
        ..DynInfo::default()
    };
    let Some(dynamic) = Dynamic::parse(bytes, &phdrs, ctx)? else {
        return Ok(info); // static: nothing to load, nothing needed
    };
    let d = &dynamic.info;
    let strtab = d
        .strtab
        .checked_add(d.strsz)
        .and_then(|end| bytes.get(d.strtab..end))
        .unwrap_or_default();
    let name = |off: usize| str_at(strtab, off);
    if d.soname != 0 {
        info.soname = name(d.soname);
    }
    for entry in &dynamic.dyns {
        let list = match entry.d_tag {
            dynamic::DT_NEEDED => &mut info.needed,
            dynamic::DT_RPATH => &mut info.rpaths,
            dynamic::DT_RUNPATH => &mut info.runpaths,
            _ => continue,
        };
        list.extend(usize::try_from(entry.d_val).ok().and_then(name));
    }
    let shdrs = SectionHeader::parse(bytes, header.e_shoff as usize, header.e_shnum as usize, ctx)?;
    if let Some(need) = VerneedSection::parse(bytes, &shdrs, ctx)? {
        for n in need.iter() {
            info.version_needs
                .extend(n.iter().filter_map(|a| name(a.vna_name)));
        }
    }
    if let Some(def) = VerdefSection::parse(bytes, &shdrs, ctx)? {
        for v in def.iter() {
            info.version_defs
                .extend(v.iter().filter_map(|a| name(a.vda_name)));
        }
    }
    Ok(info)
}

/// The largest file `sparse_copy` lays out (a libc.so.6 is about 2 MB).
pub const SPARSE_MAX: u64 = 64 << 20;

/// A buffer the size of an ELF file holding just the parts `parse` reads, at their offsets (the
/// rest zero, never touched): for a file that is costly to read whole, such as the libc.so.6 of
/// a compressed image, where this decompresses 2 or 3 of its 16 blocks. `read_at(offset, buf)`
/// fills `buf` from the file and returns how many bytes it read.
pub fn sparse_copy(
    size: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> anyhow::Result<usize>,
) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        size <= SPARSE_MAX,
        "{size} bytes: too large for an ELF library"
    );
    let mut buf = vec![0u8; size as usize];
    let mut fill = |buf: &mut Vec<u8>, offset: u64, len: u64| -> anyhow::Result<()> {
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        let mut at = start;
        while at < end {
            match read_at(at as u64, &mut buf[at..end])? {
                0 => break,
                n => at += n,
            }
        }
        Ok(())
    };
    fill(&mut buf, 0, 64)?;
    let header = Elf::parse_header(&buf).context("not an ELF file")?;
    let ctx = Ctx::new(header.container()?, header.endianness()?);
    let (phoff, phsize) = (header.e_phoff, u64::from(header.e_phentsize));
    fill(&mut buf, phoff, phsize * u64::from(header.e_phnum))?;
    let (shoff, shsize) = (header.e_shoff, u64::from(header.e_shentsize));
    fill(&mut buf, shoff, shsize.max(1))?; // the first one holds the count when e_shnum is 0
    let shnum = match header.e_shnum {
        0 if shoff != 0 => SectionHeader::parse(&buf, shoff as usize, 1, ctx)
            .ok()
            .and_then(|h| h.first().map(|h| h.sh_size))
            .unwrap_or(0),
        n => u64::from(n),
    };
    fill(&mut buf, shoff, shsize.saturating_mul(shnum))?;
    let phdrs = ProgramHeader::parse(&buf, phoff as usize, header.e_phnum as usize, ctx)?;
    for ph in &phdrs {
        if ph.p_type == PT_INTERP || ph.p_type == PT_DYNAMIC {
            fill(&mut buf, ph.p_offset, ph.p_filesz)?;
        }
    }
    if let Some(dynamic) = Dynamic::parse(&buf, &phdrs, ctx)? {
        fill(
            &mut buf,
            dynamic.info.strtab as u64,
            dynamic.info.strsz as u64,
        )?;
    }
    let shdrs = SectionHeader::parse(&buf, shoff as usize, header.e_shnum as usize, ctx)?;
    for sh in shdrs {
        if sh.sh_type == SHT_GNU_VERDEF || sh.sh_type == SHT_GNU_VERNEED {
            fill(&mut buf, sh.sh_offset, sh.sh_size)?;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same facts as goblin's full parse.
    fn full(bytes: &[u8]) -> Option<DynInfo<'_>> {
        let elf = Elf::parse(bytes).ok()?;
        let s = |i: usize| elf.dynstrtab.get_at(i);
        let mut info = DynInfo {
            soname: elf.soname,
            needed: elf.libraries.clone(),
            rpaths: elf.rpaths.clone(),
            runpaths: elf.runpaths.clone(),
            interpreter: elf.interpreter,
            ..DynInfo::default()
        };
        for n in elf.verneed.iter().flat_map(|v| v.iter()) {
            info.version_needs
                .extend(n.iter().filter_map(|a| s(a.vna_name)));
        }
        for d in elf.verdef.iter().flat_map(|v| v.iter()) {
            info.version_defs
                .extend(d.iter().filter_map(|a| s(a.vda_name)));
        }
        Some(info)
    }

    /// The same facts as goblin's full parse, on the host's own libraries and programs.
    #[test]
    fn agrees_with_the_full_parse_on_host_files() {
        let mut files: Vec<std::path::PathBuf> =
            ["/bin/sh", "/usr/bin/env"].iter().map(Into::into).collect();
        for dir in [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
        ] {
            if let Ok(rd) = std::fs::read_dir(dir) {
                let mut libs: Vec<_> = rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().contains(".so"))
                    .collect();
                libs.sort();
                files.extend(libs.into_iter().take(60));
            }
        }
        let mut compared = 0;
        let mut with_versions = 0;
        for path in files {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Some(want) = full(&bytes) else {
                continue;
            };
            let got = parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(got, want, "{}", path.display());
            compared += 1;
            with_versions += usize::from(!got.version_needs.is_empty());
        }
        assert!(compared > 10, "only {compared} host ELF files compared");
        assert!(with_versions > 5, "only {with_versions} with version needs");
        let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let libc = parse(&libc).unwrap();
        assert!(libc.version_defs.contains(&"GLIBC_2.34"), "{libc:?}");
    }

    /// A sparse copy parses to the same facts as the whole file, and reads a small part of it.
    #[test]
    fn sparse_copy_reads_only_what_parse_needs() {
        for path in ["/lib/x86_64-linux-gnu/libc.so.6", "/bin/sh", "/usr/bin/env"] {
            let whole = std::fs::read(path).unwrap();
            let mut read = 0;
            let sparse = sparse_copy(whole.len() as u64, &mut |off, buf| {
                let from = (off as usize).min(whole.len());
                let n = buf.len().min(whole.len() - from);
                buf[..n].copy_from_slice(&whole[from..from + n]);
                read += n;
                Ok(n)
            })
            .unwrap();
            assert_eq!(parse(&sparse).unwrap(), parse(&whole).unwrap(), "{path}");
            assert!(
                read < whole.len() / 4,
                "{path}: read {read} of {}",
                whole.len()
            );
        }
        let mut none = |_: u64, _: &mut [u8]| Ok(0);
        assert!(sparse_copy(1000, &mut none).is_err(), "all zero: not ELF");
        assert!(sparse_copy(SPARSE_MAX + 1, &mut none).is_err());
    }

    #[test]
    fn bad_files_are_errors_or_empty_never_panics() {
        assert!(parse(b"#!/bin/sh\necho hi\n").is_err());
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(parse(&sh[..40]).is_err());
        for cut in [64, 200, 1000, 4096, sh.len() / 2, sh.len() - 1] {
            let _ = parse(&sh[..cut]);
        }
        let mut flipped = sh.clone();
        for i in (0..flipped.len()).step_by(97) {
            flipped[i] ^= 0x5a;
            let _ = parse(&flipped);
        }
        assert_eq!(str_at(b"abc", 0), None, "unterminated");
        assert_eq!(str_at(b"ab\0c\0", 3), Some("c"));
        assert_eq!(str_at(b"\xff\0", 0), None, "not UTF-8");
    }
}
