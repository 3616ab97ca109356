//! The dynamic-linking facts of an ELF file (soname, needed libraries, run paths, version needs
//! and definitions), read from its headers, dynamic section and version sections only.
//!
//! goblin's `Elf::parse` also walks the symbol tables and every relocation. A GPU driver's
//! libraries are tens to hundreds of MB with large tables, and `--nv` reads about 25 of them per
//! launch: the full parse cost 27 ms warm (270 ms from a cold page cache) on an H200 node with
//! driver 580, for facts that sit in a few pages of each file. Fields this parse leaves empty:
//! `syms`, `dynsyms`, `strtab`, the relocation sections and `shdr_strtab`.

use goblin::container::Ctx;
use goblin::elf::program_header::PT_INTERP;
use goblin::elf::symver::{VerdefSection, VerneedSection};
use goblin::elf::{dynamic, Dynamic, Elf, ProgramHeader, SectionHeader};
use goblin::error::Result;
use goblin::strtab::Strtab;

/// Parses `bytes` (a whole ELF file, usually memory-mapped) for its dynamic-linking facts.
pub fn parse(bytes: &[u8]) -> Result<Elf<'_>> {
    let header = Elf::parse_header(bytes)?;
    let ctx = Ctx::new(header.container()?, header.endianness()?);
    let mut elf = Elf::lazy_parse(header)?;
    elf.program_headers =
        ProgramHeader::parse(bytes, header.e_phoff as usize, header.e_phnum as usize, ctx)?;
    elf.interpreter = elf
        .program_headers
        .iter()
        .find(|ph| ph.p_type == PT_INTERP && ph.p_filesz != 0)
        .and_then(|ph| {
            let start = usize::try_from(ph.p_offset).ok()?;
            let len = usize::try_from(ph.p_filesz - 1).ok()?;
            std::str::from_utf8(bytes.get(start..start.checked_add(len)?)?).ok()
        });
    elf.section_headers =
        SectionHeader::parse(bytes, header.e_shoff as usize, header.e_shnum as usize, ctx)?;
    elf.dynamic = Dynamic::parse(bytes, &elf.program_headers, ctx)?;
    if let Some(dynamic) = &elf.dynamic {
        let info = &dynamic.info;
        elf.dynstrtab = Strtab::parse(bytes, info.strtab, info.strsz, 0)?;
        if info.soname != 0 {
            elf.soname = elf.dynstrtab.get_at(info.soname);
        }
        if info.needed_count > 0 {
            elf.libraries = dynamic.get_libraries(&elf.dynstrtab);
        }
        for d in &dynamic.dyns {
            let list = match d.d_tag {
                dynamic::DT_RPATH => &mut elf.rpaths,
                dynamic::DT_RUNPATH => &mut elf.runpaths,
                _ => continue,
            };
            if let Some(path) = elf.dynstrtab.get_at(d.d_val as usize) {
                list.push(path);
            }
        }
    }
    elf.verneed = VerneedSection::parse(bytes, &elf.section_headers, ctx)?;
    elf.verdef = VerdefSection::parse(bytes, &elf.section_headers, ctx)?;
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(elf: &Elf) -> (Vec<String>, Vec<String>) {
        let name = |i: usize| elf.dynstrtab.get_at(i).unwrap_or("?").to_string();
        let need = elf
            .verneed
            .iter()
            .flat_map(|s| s.iter())
            .flat_map(|n| n.iter().map(|a| name(a.vna_name)).collect::<Vec<_>>())
            .collect();
        let def = elf
            .verdef
            .iter()
            .flat_map(|s| s.iter())
            .flat_map(|d| d.iter().map(|a| name(a.vda_name)).collect::<Vec<_>>())
            .collect();
        (need, def)
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
        for path in files {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(full) = Elf::parse(&bytes) else {
                continue;
            };
            let light = parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let what = path.display();
            assert_eq!(light.soname, full.soname, "{what}");
            assert_eq!(light.libraries, full.libraries, "{what}");
            assert_eq!(light.rpaths, full.rpaths, "{what}");
            assert_eq!(light.runpaths, full.runpaths, "{what}");
            assert_eq!(light.interpreter, full.interpreter, "{what}");
            assert_eq!(versions(&light), versions(&full), "{what}");
            compared += 1;
        }
        assert!(compared > 10, "only {compared} host ELF files compared");
    }

    #[test]
    fn not_elf_and_truncated_are_errors() {
        assert!(parse(b"#!/bin/sh\necho hi\n").is_err());
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(parse(&sh[..40]).is_err());
        for cut in [64, 200, 1000, 4096] {
            let _ = parse(&sh[..cut.min(sh.len())]); // no panic
        }
    }
}
