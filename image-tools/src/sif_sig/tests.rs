//! Upstream's signed test images (tests/data/sif) against their keys, wrong keys, and copies
//! with one byte changed in every signed place.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::*;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/sif")
        .join(name)
}

fn keyring(names: &[&str]) -> Keyring {
    let mut k = Keyring::default();
    for n in names {
        k.add_file(&data(&format!("keys/{n}"))).expect("key loads");
    }
    k
}

const ED: &str = "ed25519-public.pem";
const RSA: &str = "rsa-public.pem";
const PGP: &str = "unit-test-pgp-public.asc";

fn check(file: &str, keys: &[&str], select: Select) -> Report {
    verify(&data(file), &keyring(keys), select).expect("image reads")
}

#[test]
fn key_fingerprints_are_the_envelope_key_ids() {
    let k = keyring(&[ED, RSA, PGP]);
    let fps: Vec<String> = k.keys.iter().map(|k| k.fingerprint()).collect();
    assert_eq!(
        fps,
        [
            "SHA256:x6l8ZblpSSXGaPMCzySedWg88BwIFcz8jlPb6el0mFs",
            "SHA256:BhCwr7qZulYcOMSl2Jt2DuYHxHNnN6th4NdMqR/PGa4",
            "12045c8c0b1004d058de4beda20c27ee7ff7ba84",
        ]
    );
    assert_eq!(k.keys[1].key_type(), "rsa-4096");
}

#[test]
fn every_signed_image_verifies_with_its_keys() {
    for (file, keys, sigs, objects) in [
        ("one-group-signed-dsse.sif", &[ED, RSA][..], 1, vec![1, 2]),
        ("one-group-signed-pgp.sif", &[PGP][..], 1, vec![1, 2]),
        ("two-groups-signed-dsse.sif", &[ED, RSA][..], 1, vec![1, 2]),
        (
            "one-group-signed-legacy-group.sif",
            &[PGP][..],
            1,
            vec![1, 2],
        ),
        ("one-group-signed-legacy-all.sif", &[PGP][..], 2, vec![1]),
    ] {
        let r = check(file, keys, Select::Group(1));
        assert!(r.ok(), "{file}: {r:?}");
        assert_eq!(r.signatures.len(), sigs, "{file}");
        assert_eq!(r.signatures[0].objects, objects, "{file}");
    }
    // Object 2 alone is signed (object 1 is not).
    let r = check("one-group-signed-legacy.sif", &[PGP], Select::Object(2));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.signatures[0].objects, [2]);
    let r = check("one-group-signed-legacy.sif", &[PGP], Select::Group(1));
    assert_eq!(r.uncovered, [(1, "Partition".to_string())]);
    // Ed25519 and RSA both sign the DSSE envelope.
    let r = check("one-group-signed-dsse.sif", &[ED, RSA], Select::Groups);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.signatures[0].format, Some(Format::Dsse));
    assert!(r.signatures[0].signers[0].starts_with("ed25519 SHA256:x6l8"));
    assert!(r.signatures[0].signers[1].starts_with("rsa-4096 SHA256:BhCw"));
    let r = check("two-groups-signed-dsse.sif", &[ED, RSA], Select::Groups);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.signatures[1].objects, [3]);
    let r = check("one-group-signed-pgp.sif", &[PGP], Select::All);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.signatures[0].format, Some(Format::PgpMetadata));
    let r = check("one-group-signed-legacy-all.sif", &[PGP], Select::All);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.signatures[0].format, Some(Format::PgpLegacy));
    // Two groups, but only the first one's objects are signed (one signature each).
    let r = check("two-groups-signed-legacy-all.sif", &[PGP], Select::Group(1));
    assert!(r.ok(), "{r:?}");
    let r = check("two-groups-signed-legacy-all.sif", &[PGP], Select::Groups);
    assert!(!r.ok());
    assert!(r.signatures.iter().all(|s| s.error.is_none()));
    assert_eq!(r.uncovered, [(3, "Partition".to_string())]);
}

#[test]
fn wrong_or_missing_keys_fail() {
    for (file, keys) in [
        ("one-group-signed-dsse.sif", &[PGP][..]),
        ("one-group-signed-dsse.sif", &[][..]),
        // Each of the two signatures needs its key.
        ("one-group-signed-dsse.sif", &[ED][..]),
        ("one-group-signed-dsse.sif", &[RSA][..]),
        ("two-groups-signed-dsse.sif", &[ED][..]),
        ("one-group-signed-pgp.sif", &[ED, RSA][..]),
        ("one-group-signed-legacy.sif", &[ED, RSA][..]),
        ("one-group-signed-legacy-group.sif", &[][..]),
    ] {
        let r = check(file, keys, Select::Groups);
        assert!(!r.ok(), "{file} with {keys:?}: {r:?}");
        assert!(r.signatures.iter().any(|s| s.error.is_some()), "{file}");
    }
    let r = check("one-group-signed-dsse.sif", &[ED], Select::Groups);
    let e = r.signatures[0].error.clone().unwrap_or_default();
    assert!(
        e.contains("SHA256:BhCw") && e.contains("no known key"),
        "{e}"
    );
}

#[test]
fn a_different_key_of_the_same_type_fails() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let pem = other
        .to_public_key_pem(Default::default())
        .expect("encodes");
    let mut keys = keyring(&[RSA]);
    keys.add_text(&pem, "other.pem").expect("loads");
    let r = verify(&data("one-group-signed-dsse.sif"), &keys, Select::Groups).expect("reads");
    assert!(!r.ok());
    // A key ID that names the other key is not even tried...
    assert!(r.signatures[0]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("no known key"));
}

#[test]
fn images_without_signatures_report_none() {
    let r = check("one-group.sif", &[ED, RSA, PGP], Select::Groups);
    assert!(r.signatures.is_empty());
    assert!(!r.ok());
    assert_eq!(r.uncovered.len(), 2);
    let e = verify(&data("one-group.sif"), &keyring(&[]), Select::Group(9)).unwrap_err();
    assert!(e.contains("one-group.sif: has no object group 9"), "{e}");
}

#[test]
fn bad_key_files_are_one_line_errors() {
    let mut k = Keyring::default();
    for (text, want) in [
        ("hello", "not a PEM public key"),
        (
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "unsupported public key",
        ),
        (
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n",
            "not an OpenPGP public key",
        ),
        ("-----BEGIN PRIVATE KEY-----\n", "is a private key"),
    ] {
        let e = k.add_text(text, "k.pem").unwrap_err();
        assert!(
            e.starts_with("k.pem: ") && e.contains(want) && !e.contains('\n'),
            "{e}"
        );
    }
    assert!(k.is_empty());
}

/// Byte ranges of one object's data, its covered descriptor fields and the header's covered
/// fields.
fn descriptor_offsets(sif: &SifFile, id: u32) -> Vec<u64> {
    let slot = sif
        .descriptors
        .iter()
        .position(|d| d.id == id)
        .expect("object exists");
    // The test images have no free slots before their objects.
    let base = sif.header.descriptors_offset as u64 + (slot * DESCRIPTOR_SIZE) as u64;
    // Covered: type, used, link, size, created, uid, gid, name, extra.
    let covered = (0..5)
        .chain(13..17)
        .chain(25..33)
        .chain(41..49)
        .chain(57..DESCRIPTOR_SIZE);
    covered.map(|o| base + o as u64).collect()
}

/// Flips each byte at `offsets` (XOR `mask`) in a copy of `file` and asserts that
/// verification then fails.
fn assert_each_flip_fails(
    file: &str,
    keys: &Keyring,
    select: Select,
    offsets: &[u64],
    masks: &[u8],
    what: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join(file);
    std::fs::copy(data(file), &copy).expect("copy");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy)
        .expect("open copy");
    for &off in offsets {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).expect("read");
        for &mask in masks {
            f.write_all_at(&[b[0] ^ mask], off).expect("write");
            let ok = verify(&copy, keys, select).is_ok_and(|r| r.ok());
            assert!(!ok, "{file}: {what}: byte {off} ^ {mask:#x} still verifies");
        }
        f.write_all_at(&b, off).expect("restore");
    }
    assert!(
        verify(&copy, keys, select).expect("reads").ok(),
        "{file} restored"
    );
}

/// Every byte of small objects; a spread of bytes (and the ends) of larger ones (a digest
/// changes with any byte; what is worth every byte is the parsing of the signature).
fn object_offsets(d: &Descriptor) -> Vec<u64> {
    let step = if d.size <= 64 {
        1
    } else {
        61.max(d.size as usize / 64)
    };
    let mut v: Vec<u64> = (d.offset..d.end()).step_by(step).collect();
    v.push(d.end() - 1);
    v
}

#[test]
fn one_flipped_byte_anywhere_signed_fails() {
    for (file, keys, select) in [
        ("one-group-signed-dsse.sif", &[ED, RSA][..], Select::Groups),
        ("one-group-signed-pgp.sif", &[PGP][..], Select::Groups),
        ("two-groups-signed-dsse.sif", &[ED, RSA][..], Select::Groups),
        ("one-group-signed-legacy.sif", &[PGP][..], Select::Object(2)),
        (
            "one-group-signed-legacy-group.sif",
            &[PGP][..],
            Select::Groups,
        ),
        (
            "one-group-signed-legacy-all.sif",
            &[PGP][..],
            Select::Groups,
        ),
    ] {
        let keys = keyring(keys);
        let sif = SifFile::open(&data(file)).expect("opens");
        let r = verify(&data(file), &keys, select).expect("reads");
        assert!(r.ok(), "{file}: {r:?}");
        let legacy = r
            .signatures
            .iter()
            .all(|s| s.format == Some(Format::PgpLegacy));
        let flips = |offsets: &[u64], masks: &[u8], what: &str| {
            assert_each_flip_fails(file, &keys, select, offsets, masks, what)
        };
        for s in &r.signatures {
            let sig = sif.descriptor(s.id).expect("signature object");
            // Every byte of the signature, also made non-ASCII.
            flips(
                &(sig.offset..sig.end()).collect::<Vec<_>>(),
                &[0x01, 0x80],
                "signature",
            );
            for &id in &s.objects {
                let d = sif.descriptor(id).expect("signed object");
                flips(&object_offsets(d), &[0x01], &format!("object {id}"));
                if !legacy {
                    flips(
                        &descriptor_offsets(&sif, id),
                        &[0x01],
                        &format!("descriptor {id}"),
                    );
                }
            }
        }
        if !legacy {
            flips(
                &(0..45).chain(48..64).collect::<Vec<_>>(),
                &[0x01],
                "header",
            );
        }
    }
}

#[test]
fn oversized_or_garbage_signature_objects_are_errors() {
    use crate::sif::{write, ObjectData, ObjectSpec, WriteOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    for (n, (sig, want)) in [
        (b"xyz".to_vec(), "unrecognised format"),
        (b"{".to_vec(), "DSSE envelope is not valid"),
        (vec![0xff; 10], "is not text"),
        (
            b"{\"payloadType\":\"x\",\"payload\":\"\",\"signatures\":[]}".to_vec(),
            "payload type",
        ),
        (
            format!("{CLEARSIGN_BEGIN}\nHash: SHA256\n\nhi\n").into_bytes(),
            "OpenPGP clear-signed message is not valid",
        ),
        (vec![b'{'; (MAX_SIGNATURE_SIZE + 1) as usize], "more than"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("{n}.sif"));
        let mut part = ObjectSpec::new(DataType::Generic, ObjectData::Bytes(vec![1, 2, 3, 4]));
        part.group_id = Some(1);
        let mut s = ObjectSpec::new(DataType::Signature, ObjectData::Bytes(sig));
        s.link = Link::Group(1);
        s.extra = Extra::Signature {
            hash: HashType::Sha256,
            fingerprint: None,
        };
        write(&path, &WriteOptions::default(), vec![part, s]).expect("writes");
        let r = verify(&path, &keyring(&[ED, RSA, PGP]), Select::Groups).expect("reads");
        assert!(!r.ok());
        let e = r.signatures[0].error.clone().unwrap_or_default();
        assert!(e.contains(want) && !e.contains('\n'), "{n}: {e}");
    }
}
