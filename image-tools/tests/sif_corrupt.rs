//! Corrupt and hostile inputs, made by mutating copies of real fixtures.
//! Each must be an `Err` with a clear message: never a panic, never a huge
//! allocation.

mod sif_common;

use std::io::Write;

use image_tools::sif::{Error, SifFile};
use sif_common::*;

/// Writes `bytes` to a scratch file and opens it.
fn open_bytes(bytes: &[u8]) -> image_tools::sif::Result<SifFile> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    SifFile::open(f.path())
}

/// Mutates a copy of `name`; the result must fail with a message containing `needle`.
fn expect_err(name: &str, needle: &str, mutate: impl FnOnce(&mut Vec<u8>)) -> Error {
    let mut bytes = fixture_bytes(name);
    mutate(&mut bytes);
    let err = open_bytes(&bytes).expect_err(needle);
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "{name}: expected \"{needle}\" in \"{msg}\""
    );
    assert!(!msg.contains('\n'), "one-line message: {msg}");
    err
}

#[test]
fn bad_magic() {
    let err = expect_err("one-group.sif", "bad magic at offset 32", |b| {
        b[32..41].copy_from_slice(b"SIF_MAGIX")
    });
    assert!(matches!(err, Error::NotSif(_)));
    expect_err("empty.sif", "found \"\\x00\\x00", |b| b[32..42].fill(0));
}

#[test]
fn unsupported_versions() {
    for v in ["02", "00"] {
        let err = expect_err(
            "one-group.sif",
            &format!("SIF version \"{v}\" is not supported"),
            |b| b[42..44].copy_from_slice(v.as_bytes()),
        );
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    }
}

#[test]
fn truncated_descriptor_table() {
    expect_err(
        "one-group.sif",
        "descriptor table extends past end of file",
        |b| b.truncate(4096 + 585 * 10 + 7),
    );
    // More slots than the file holds.
    expect_err("empty.sif", "descriptor table extends past end of file (offset 4096 + 60 × 585 bytes > file size 32176)", |b| {
        put_i64(b, H_TOTAL, 60);
        put_i64(b, H_FREE, 60);
        put_i64(b, H_DESCR_SIZE, 60 * 585);
    });
    expect_err(
        "empty.sif",
        "descriptor table size 100 is smaller than 48 slots",
        |b| put_i64(b, H_DESCR_SIZE, 100),
    );
    expect_err(
        "empty.sif",
        "descriptor table offset 64 overlaps the 128-byte header",
        |b| put_i64(b, H_DESCR_OFFSET, 64),
    );
    expect_err(
        "empty.sif",
        "descriptor table extends past end of file",
        |b| put_i64(b, H_DESCR_OFFSET, i64::MAX),
    );
}

#[test]
fn object_past_eof() {
    let err = expect_err("one-group-signed-dsse.sif", "", |b| {
        put_i64(b, slot_field(2, D_SIZE), 999_999)
    });
    assert_eq!(
        err.to_string(),
        "corrupt SIF: descriptor 3 (slot 2): object extends past end of file \
         (offset 40960 + size 999999 > file size 42654)"
    );
    expect_err(
        "one-group.sif",
        "offset 40961 + size 4096 > file size 40960",
        |b| put_i64(b, slot_field(1, D_OFFSET), 40961),
    );
    expect_err(
        "one-group.sif",
        "offset 9223372036854775807 + size 9223372036854775807 > file size",
        |b| {
            put_i64(b, slot_field(1, D_OFFSET), i64::MAX);
            put_i64(b, slot_field(1, D_SIZE), i64::MAX);
        },
    );
    expect_err(
        "one-group.sif",
        "descriptor 2 (slot 1): negative offset -1",
        |b| put_i64(b, slot_field(1, D_OFFSET), -1),
    );
    expect_err("one-group.sif", "negative size", |b| {
        put_i64(b, slot_field(0, D_SIZE), -4)
    });
}

#[test]
fn overlapping_objects() {
    expect_err(
        "one-group.sif",
        "objects 2 [36864, 40960) and 1 [36964, 36968) overlap",
        |b| put_i64(b, slot_field(0, D_OFFSET), 36864 + 100),
    );
    // Overlap with an object that is not the immediate predecessor in file order.
    expect_err("two-groups-signed-dsse.sif", "overlap", |b| {
        put_i64(b, slot_field(3, D_OFFSET), 36864 + 4095)
    });
    expect_err(
        "one-group.sif",
        "overlaps the descriptor table [4096, 32176)",
        |b| put_i64(b, slot_field(0, D_OFFSET), 5000),
    );
    expect_err("one-group.sif", "overlaps the 128-byte header", |b| {
        put_i64(b, slot_field(0, D_OFFSET), 100)
    });
}

#[test]
fn two_primary_partitions() {
    let err = expect_err(
        "one-group.sif",
        "2 primary system partitions (objects [1, 2])",
        |b| put_u32(b, slot_field(0, D_EXTRA + 4), 2),
    );
    assert!(matches!(err, Error::Corrupt(_)));
}

#[test]
fn descriptor_counters() {
    expect_err(
        "empty.sif",
        "49 descriptors are free but only 48 exist",
        |b| put_i64(b, H_FREE, 49),
    );
    expect_err("empty.sif", "negative descriptor count", |b| {
        put_i64(b, H_FREE, -1)
    });
    expect_err("empty.sif", "negative descriptor count", |b| {
        put_i64(b, H_TOTAL, i64::MIN)
    });
}

/// Counts far beyond the file must be rejected from the header alone, before
/// any allocation sized by them.
#[test]
fn huge_descriptor_counts() {
    for total in [u32::MAX as i64 - 2, 1 << 24, 100_000] {
        expect_err(
            "one-group.sif",
            "descriptor table extends past end of file",
            |b| {
                put_i64(b, H_TOTAL, total);
                put_i64(b, H_FREE, 0);
                put_i64(b, H_DESCR_SIZE, i64::MAX);
            },
        );
    }
    for total in [u32::MAX as i64, 1 << 40, i64::MAX] {
        expect_err("one-group.sif", "exceeds the maximum", |b| {
            put_i64(b, H_TOTAL, total);
            put_i64(b, H_FREE, 0);
        });
    }
}

#[test]
fn bad_ids() {
    expect_err(
        "one-group.sif",
        "descriptor slots 0 and 1 both use object ID 1",
        |b| put_u32(b, slot_field(1, D_ID), 1),
    );
    expect_err(
        "one-group.sif",
        "descriptor slot 1: used slot has object ID 0",
        |b| put_u32(b, slot_field(1, D_ID), 0),
    );
}

#[test]
fn odd_but_legal_values_are_accepted() {
    let mut b = fixture_bytes("one-group.sif");
    // Unknown data type, unknown fs, "used" byte not 1, arch code not in table.
    put_u32(&mut b, slot_field(0, D_TYPE), 0x4999);
    b[slot_field(1, D_USED)] = 7;
    put_u32(&mut b, slot_field(1, D_EXTRA), 77);
    b[45..48].copy_from_slice(b"99\0");
    // Header counters disagreeing with the slots only warn.
    put_i64(&mut b, H_FREE, 40);
    let sif = open_bytes(&b).unwrap();
    assert_eq!(
        sif.descriptors[0].data_type,
        image_tools::sif::DataType::Unknown(0x4999)
    );
    assert_eq!(sif.header.arch, "unknown");
    assert_eq!(sif.warnings().len(), 1, "{:?}", sif.warnings());
    let err = sif.primary_squashfs().unwrap_err().to_string();
    assert_eq!(
        err,
        "SIF has no SquashFS primary partition (found unknown (0x4d))"
    );
    // Group link flag and link fields decode without validation of targets.
    put_u32(&mut b, slot_field(0, D_LINK), 0xF000_0009);
    put_u32(&mut b, slot_field(0, D_GROUP), 0);
    let sif = open_bytes(&b).unwrap();
    assert_eq!(sif.descriptors[0].link, image_tools::sif::Link::Group(9));
    assert_eq!(sif.descriptors[0].group_id, None);
}

#[test]
fn truncated_files() {
    let full = fixture_bytes("one-group.sif");
    let larger = [
        128,
        4095,
        4096,
        4096 + 585,
        4096 + 585 * 2 - 1,
        32175,
        32176,
        32768,
        32771,
        32772,
        36864,
        40000,
        40959,
    ];
    for len in (0..=200).chain(larger) {
        let err = open_bytes(&full[..len]).expect_err(&format!("length {len}"));
        let msg = err.to_string();
        match len {
            0..=41 => assert!(
                matches!(err, Error::NotSif(_)) && msg.contains(&format!("file is {len} bytes")),
                "{len}: {msg}"
            ),
            42..=127 => assert!(msg.contains("truncated header"), "{len}: {msg}"),
            128..=32175 => assert!(
                msg.contains("descriptor table extends past end of file"),
                "{len}: {msg}"
            ),
            _ => assert!(
                msg.contains("object extends past end of file"),
                "{len}: {msg}"
            ),
        }
    }
    // A truncated file with a bad version says so rather than "truncated".
    let mut v = full[..50].to_vec();
    v[42..44].copy_from_slice(b"02");
    assert!(matches!(open_bytes(&v), Err(Error::Unsupported(_))));
}

/// Random byte corruption of header and descriptor table: Ok or Err, never a
/// panic. Deterministic (fixed-seed xorshift), no extra dependency.
#[test]
fn random_corruption_never_panics() {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let f = tempfile::NamedTempFile::new().unwrap();
    let mut errors = 0;
    for name in [
        "two-groups-signed-dsse.sif",
        "singularityce-busybox-amd64.sif",
        "edge-capacity-one.sif",
    ] {
        let base = fixture_bytes(name);
        // Where the interesting bytes are: header + used descriptor slots.
        let hot = (4096 + 585 * 5).min(base.len());
        for _ in 0..300 {
            let mut b = base.clone();
            for _ in 0..(1 + next() % 4) {
                let pos = if next() % 4 == 0 {
                    (next() % 128) as usize
                } else {
                    (next() as usize) % hot
                };
                b[pos] = next() as u8;
            }
            f.as_file().set_len(0).unwrap();
            std::os::unix::fs::FileExt::write_all_at(f.as_file(), &b, 0).unwrap();
            if SifFile::read_from(f.as_file()).is_err() {
                errors += 1;
            }
        }
    }
    assert!(
        errors > 0,
        "corruption should be detected at least sometimes"
    );
}
