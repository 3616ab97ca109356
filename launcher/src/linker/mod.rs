//! What the dynamic linker will see: ELF dynamic-linking facts, the host's ld.so.cache, and the
//! glibc guard that refuses host libraries too new for the image's glibc.

pub mod elf_dyn;
pub mod glibc_guard;
pub mod ld_cache;
