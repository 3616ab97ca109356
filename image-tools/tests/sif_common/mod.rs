//! Helpers shared by the sif_* integration tests (a directory, so Cargo does
//! not build it as a test target of its own).
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;

use image_tools::sif::{Descriptor, SifFile, DESCRIPTOR_SIZE};

/// Real SIF fixtures: the repository's `tests/data/sif`. Missing fixtures
/// fail loudly rather than skipping, so a broken checkout cannot pass silently.
pub fn testdata() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sif");
    assert!(
        dir.join("README.md").is_file(),
        "SIF fixtures not found at {}",
        dir.display()
    );
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    testdata().join(name)
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

pub fn open(name: &str) -> (SifFile, File) {
    let path = fixture(name);
    let sif = SifFile::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    (sif, File::open(&path).unwrap())
}

pub fn obj(sif: &SifFile, id: u32) -> &Descriptor {
    sif.descriptor(id)
        .unwrap_or_else(|| panic!("no object {id}"))
}

/// Absolute offset of a field in descriptor slot `slot` of a v2 image.
pub fn slot_field(slot: usize, field: usize) -> usize {
    4096 + slot * DESCRIPTOR_SIZE + field
}

pub fn put_i64(buf: &mut [u8], off: usize, v: i64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// Descriptor field offsets within a slot (format notes §5).
pub const D_TYPE: usize = 0;
pub const D_USED: usize = 4;
pub const D_ID: usize = 5;
pub const D_GROUP: usize = 9;
pub const D_LINK: usize = 13;
pub const D_OFFSET: usize = 17;
pub const D_SIZE: usize = 25;
pub const D_EXTRA: usize = 201;
// Header field offsets (§3).
pub const H_FREE: usize = 80;
pub const H_TOTAL: usize = 88;
pub const H_DESCR_OFFSET: usize = 96;
pub const H_DESCR_SIZE: usize = 104;
