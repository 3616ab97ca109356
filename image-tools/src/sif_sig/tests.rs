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
        ("one-group-signed-pgp.sif", &[ED, RSA][..]),
        ("one-group-signed-legacy.sif", &[ED, RSA][..]),
        ("one-group-signed-legacy-group.sif", &[][..]),
    ] {
        let r = check(file, keys, Select::Groups);
        assert!(!r.ok(), "{file} with {keys:?}: {r:?}");
        assert!(r.signatures.iter().any(|s| s.error.is_some()), "{file}");
    }
    let r = check("one-group-signed-dsse.sif", &[PGP], Select::Groups);
    let e = r.signatures[0].error.clone().unwrap_or_default();
    assert!(
        e.contains("no DSSE signature verifies")
            && e.contains("SHA256:x6l8")
            && e.contains("SHA256:BhCw")
            && e.contains("no known key"),
        "{e}"
    );
}

/// Upstream (sigstore's DSSE verifier, threshold 1) accepts an envelope when one of its
/// signatures verifies with a key it was given; the others are skipped.
#[test]
fn one_verified_dsse_signature_is_enough() {
    for file in ["one-group-signed-dsse.sif", "two-groups-signed-dsse.sif"] {
        for (key, signer, other) in [
            (ED, "ed25519 SHA256:x6l8", "SHA256:BhCw"),
            (RSA, "rsa-4096 SHA256:BhCw", "SHA256:x6l8"),
        ] {
            let r = check(file, &[key], Select::Groups);
            assert!(r.ok(), "{file} with {key}: {r:?}");
            for s in &r.signatures {
                assert_eq!(s.signers.len(), 1, "{file}");
                assert!(s.signers[0].starts_with(signer), "{file}: {:?}", s.signers);
                assert_eq!(s.skipped.len(), 1, "{file}");
                assert!(
                    s.skipped[0].contains(other) && s.skipped[0].ends_with("no known key"),
                    "{file}: {:?}",
                    s.skipped
                );
            }
        }
        let r = check(file, &[ED, RSA], Select::Groups);
        assert!(r
            .signatures
            .iter()
            .all(|s| s.signers.len() == 2 && s.skipped.is_empty()));
    }
}

#[test]
fn a_different_key_of_the_same_type_fails() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let pem = other
        .to_public_key_pem(Default::default())
        .expect("encodes");
    let mut keys = Keyring::default();
    keys.add_text(&pem, "other.pem").expect("loads");
    let r = verify(&data("one-group-signed-dsse.sif"), &keys, Select::Groups).expect("reads");
    assert!(!r.ok());
    // A key ID that names the other key is not even tried.
    assert!(r.signatures[0]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("no known key"));
    // With the RSA key too, the RSA signature alone verifies the envelope.
    keys.add_file(&data(&format!("keys/{RSA}"))).expect("loads");
    let r = verify(&data("one-group-signed-dsse.sif"), &keys, Select::Groups).expect("reads");
    assert!(r.ok(), "{r:?}");
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

/// The `{"keyid":…,"sig":…}` entries of a DSSE envelope: key ID and byte range.
fn dsse_entries(env: &[u8]) -> Vec<(String, std::ops::Range<u64>)> {
    let text = std::str::from_utf8(env).expect("envelope is text");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("{\"keyid\":\"") {
        let start = from + at;
        let end = start + text[start..].find('}').expect("entry ends") + 1;
        let id_start = start + "{\"keyid\":\"".len();
        let id_end = id_start + text[id_start..].find('"').expect("key ID ends");
        out.push((text[id_start..id_end].to_string(), start as u64..end as u64));
        from = end;
    }
    out
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
            // Every byte of the signature, also made non-ASCII. One verified signature of a
            // DSSE envelope is enough, so with two signers each key alone is given, and the
            // other signer's entry may change.
            if s.format == Some(Format::Dsse) {
                let body = std::fs::read(data(file)).expect("reads");
                for key in keys.keys.iter() {
                    let mut one = Keyring::default();
                    one.keys.push(key.clone());
                    let other = dsse_entries(&body[sig.offset as usize..sig.end() as usize])
                        .into_iter()
                        .filter(|(keyid, _)| *keyid != key.fingerprint())
                        .map(|(_, r)| (r.start + sig.offset)..(r.end + sig.offset))
                        .collect::<Vec<_>>();
                    let offsets: Vec<u64> = (sig.offset..sig.end())
                        .filter(|o| !other.iter().any(|r| r.contains(o)))
                        .collect();
                    assert_each_flip_fails(
                        file,
                        &one,
                        select,
                        &offsets,
                        &[0x01, 0x80],
                        "signature",
                    );
                }
            } else {
                flips(
                    &(sig.offset..sig.end()).collect::<Vec<_>>(),
                    &[0x01, 0x80],
                    "signature",
                );
            }
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

/// Runs openssl with `args` in `dir`; panics with its stderr on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Key pairs made by openssl: (private key file, public key file), in every PEM form
/// `launcher sign` reads.
fn openssl_keys(dir: &std::path::Path) -> Vec<(PathBuf, PathBuf)> {
    let mut made = Vec::new();
    for (name, gen) in [
        ("ed25519", &["genpkey", "-algorithm", "ed25519"][..]),
        (
            "rsa",
            &[
                "genpkey",
                "-algorithm",
                "rsa",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ][..],
        ),
        (
            "p256",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ][..],
        ),
        (
            "p384",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ][..],
        ),
    ] {
        let key = format!("{name}.pem");
        let mut args = gen.to_vec();
        args.extend(["-out", &key]);
        openssl(dir, &args);
        let public = format!("{name}-public.pem");
        openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
        made.push((dir.join(&key), dir.join(&public)));
        // The same key as PKCS#1 (RSA) or SEC1 (EC), with EC parameters first as
        // `openssl ecparam -genkey` writes them.
        let traditional = format!("{name}-traditional.pem");
        match name {
            "rsa" => openssl(
                dir,
                &["rsa", "-in", &key, "-traditional", "-out", &traditional],
            ),
            "p256" | "p384" => {
                openssl(dir, &["ec", "-in", &key, "-out", &traditional]);
                let params = format!("{name}-params.pem");
                openssl(dir, &["ec", "-in", &key, "-param_out", "-out", &params]);
                let both = std::fs::read_to_string(dir.join(&params)).expect("reads")
                    + &std::fs::read_to_string(dir.join(&traditional)).expect("reads");
                std::fs::write(dir.join(&traditional), both).expect("writes");
            }
            _ => continue,
        }
        let text = std::fs::read_to_string(dir.join(&traditional)).expect("reads");
        assert!(
            text.contains("BEGIN RSA PRIVATE KEY") || text.contains("BEGIN EC PRIVATE KEY"),
            "{text}"
        );
        made.push((dir.join(&traditional), dir.join(&public)));
    }
    made
}

fn public_keyring(public: &std::path::Path) -> Keyring {
    let mut k = Keyring::default();
    k.add_file(public).expect("public key loads");
    k
}

#[test]
fn signed_with_openssl_keys_verifies_with_the_public_key_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = openssl_keys(dir.path());
    assert_eq!(keys.len(), 7);
    for (n, (private, public)) in keys.iter().enumerate() {
        let key = PrivateKey::from_file(private, None, None).expect("private key loads");
        assert_eq!(
            key.public().fingerprint(),
            public_keyring(public).keys[0].fingerprint()
        );
        let img = dir.path().join(format!("{n}.sif"));
        std::fs::copy(data("one-group.sif"), &img).expect("copy");
        let signed = sign(&img, &key, SignSelect::Groups).expect("signs");
        assert_eq!(signed.len(), 1);
        assert_eq!((signed[0].id, signed[0].group), (3, 1));
        assert_eq!(signed[0].objects, [1, 2]);
        let r = verify(&img, &public_keyring(public), Select::Groups).expect("reads");
        assert!(r.ok(), "{private:?}: {r:?}");
        assert_eq!(r.signatures[0].format, Some(Format::Dsse));
        // Any other key: not verified.
        let (_, other) = &keys[(n + 2) % keys.len()];
        let r = verify(&img, &public_keyring(other), Select::Groups).expect("reads");
        assert!(!r.ok(), "{private:?} with {other:?}");
        // One byte of the partition changed: not verified.
        let sif = SifFile::open(&img).expect("opens");
        let part = sif.descriptor(2).expect("partition");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .expect("open");
        f.write_all_at(&[0x55], part.offset + 7).expect("write");
        let r = verify(&img, &public_keyring(public), Select::Groups).expect("reads");
        assert!(!r.ok());
        let e = r.signatures[0].error.clone().unwrap_or_default();
        assert!(e.contains("object 2 does not match"), "{e}");
    }
}

/// Upstream's one-group-signed-dsse.sif is one-group.sif signed (deterministically) with two
/// keys: ours, with one key, must differ only in the envelope's signatures and the sizes that
/// follow from them, and carry the same payload.
#[test]
fn signing_writes_what_upstream_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, _) = &openssl_keys(dir.path())[0];
    let img = dir.path().join("one-group.sif");
    std::fs::copy(data("one-group.sif"), &img).expect("copy");
    sign(
        &img,
        &PrivateKey::from_file(private, None, None).expect("loads"),
        SignSelect::Groups,
    )
    .expect("signs");
    let ours = std::fs::read(&img).expect("reads");
    let theirs = std::fs::read(data("one-group-signed-dsse.sif")).expect("reads");
    let sif = SifFile::open(&img).expect("opens");
    let up = SifFile::open(&data("one-group-signed-dsse.sif")).expect("opens");
    let (s, u) = (
        sif.descriptor(3).expect("ours"),
        up.descriptor(3).expect("theirs"),
    );
    assert_eq!(s.offset, u.offset);
    // Header data size (120..128) and the signature's size fields (slot 2, 25..41) differ.
    let slot = sif.header.descriptors_offset as usize + 2 * DESCRIPTOR_SIZE;
    for i in 0..s.offset as usize {
        if (120..128).contains(&i) || (slot + 25..slot + 41).contains(&i) {
            continue;
        }
        assert_eq!(ours[i], theirs[i], "byte {i}");
    }
    let envelope = |b: &[u8], d: &Descriptor| -> serde_json::Value {
        serde_json::from_slice(&b[d.offset as usize..d.end() as usize]).expect("JSON")
    };
    let (a, b) = (envelope(&ours, s), envelope(&theirs, u));
    assert_eq!(a["payloadType"], b["payloadType"]);
    assert_eq!(a["payload"], b["payload"]);
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object().expect("object").keys().cloned().collect()
    };
    assert_eq!(keys(&a), keys(&b));
    assert_eq!(keys(&a["signatures"][0]), keys(&b["signatures"][0]));
    // Same field order as Go's encoder writes.
    let text = std::str::from_utf8(&ours[s.offset as usize..]).expect("text");
    assert!(text.starts_with(
        "{\"payloadType\":\"application/vnd.sylabs.sif-metadata+json\",\"payload\":\""
    ));
    assert!(text.contains("\"signatures\":[{\"keyid\":\"SHA256:"));
}

#[test]
fn signing_selects_groups_and_refuses_what_it_cannot_sign() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = &openssl_keys(dir.path())[0];
    let key = PrivateKey::from_file(private, None, None).expect("loads");
    // Two groups: one signature each, or one for the group asked.
    let img = dir.path().join("two.sif");
    let objects_again = || {
        [1, 1, 2]
            .into_iter()
            .map(|g| {
                let mut o = crate::sif::ObjectSpec::new(
                    DataType::Generic,
                    crate::sif::ObjectData::Bytes(vec![g as u8; 10]),
                );
                o.group_id = Some(g);
                o
            })
            .collect::<Vec<_>>()
    };
    let objects = objects_again();
    crate::sif::write(&img, &Default::default(), objects.clone()).expect("writes");
    let s = sign(&img, &key, SignSelect::Groups).expect("signs");
    assert_eq!(
        s.iter().map(|s| (s.id, s.group)).collect::<Vec<_>>(),
        [(4, 1), (5, 2)]
    );
    assert!(verify(&img, &public_keyring(public), Select::Groups)
        .expect("reads")
        .ok());
    crate::sif::write(&img, &Default::default(), objects).expect("writes");
    let s = sign(&img, &key, SignSelect::Group(2)).expect("signs");
    assert_eq!((s.len(), s[0].objects.clone()), (1, vec![3]));
    let r = verify(&img, &public_keyring(public), Select::Groups).expect("reads");
    assert_eq!(
        r.uncovered,
        [(1, "Generic".to_string()), (2, "Generic".to_string())]
    );
    assert!(verify(&img, &public_keyring(public), Select::Group(2))
        .expect("reads")
        .ok());
    // One object: a signature of its group that lists only it; it verifies that object (as
    // upstream's verify --sif-id), not the group.
    crate::sif::write(&img, &Default::default(), objects_again()).expect("writes");
    let s = sign(&img, &key, SignSelect::Object(2)).expect("signs");
    assert_eq!((s[0].group, s[0].objects.clone()), (1, vec![2]));
    let r = verify(&img, &public_keyring(public), Select::Object(2)).expect("reads");
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.signatures[0].objects, [2]);
    let r = verify(&img, &public_keyring(public), Select::Object(1)).expect("reads");
    assert!(!r.ok());
    let r = verify(&img, &public_keyring(public), Select::Group(1)).expect("reads");
    let e = r.signatures[0].error.clone().unwrap_or_default();
    assert!(e.contains("object 1 of group 1 is not signed"), "{e}");
    // A full group signature checked for one object: that object's digests.
    crate::sif::write(&img, &Default::default(), objects_again()).expect("writes");
    sign(&img, &key, SignSelect::Groups).expect("signs");
    let r = verify(&img, &public_keyring(public), Select::Object(1)).expect("reads");
    assert!(r.ok(), "{r:?}");
    let e = sign(&img, &key, SignSelect::Group(9)).unwrap_err();
    assert!(e.ends_with("has no object group 9"), "{e}");
    // Not a SIF, and a public key where a private one belongs: one line each.
    let junk = dir.path().join("junk.sif");
    std::fs::write(&junk, b"hello").expect("writes");
    let e = sign(&junk, &key, SignSelect::Groups).unwrap_err();
    assert!(
        e.ends_with("not a SIF image; only SIF images can be signed"),
        "{e}"
    );
    assert_eq!(std::fs::read(&junk).expect("reads"), b"hello");
    let e = PrivateKey::from_file(public, None, None)
        .err()
        .unwrap_or_default();
    assert!(e.contains("is a public key"), "{e}");
    // No temporary file is left beside the image.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("lists")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Upstream's two-groups-signed-dsse.sif with its signatures taken out, signed again: each
/// group's payload (relative IDs of group 2 count from its own first object) is upstream's.
#[test]
fn signing_two_groups_writes_upstreams_payloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = &openssl_keys(dir.path())[0];
    let theirs = std::fs::read(data("two-groups-signed-dsse.sif")).expect("reads");
    let up = SifFile::open(&data("two-groups-signed-dsse.sif")).expect("opens");
    let sigs: Vec<&Descriptor> = up
        .descriptors
        .iter()
        .filter(|d| d.data_type == DataType::Signature)
        .collect();
    assert_eq!(sigs.len(), 2);
    // Unsigned: the signature slots (3 and 4) zeroed, the file cut before the first signature,
    // the free count and data size as before signing.
    let mut bytes = theirs[..sigs[0].offset as usize].to_vec();
    let table = up.header.descriptors_offset as usize;
    bytes[table + 3 * DESCRIPTOR_SIZE..table + 5 * DESCRIPTOR_SIZE].fill(0);
    bytes[80..88].copy_from_slice(&(up.header.descriptors_free + 2).to_le_bytes());
    let data_size = sigs[0].offset as i64 - up.header.data_offset;
    bytes[120..128].copy_from_slice(&data_size.to_le_bytes());
    let img = dir.path().join("two.sif");
    std::fs::write(&img, &bytes).expect("writes");
    let s = sign(
        &img,
        &PrivateKey::from_file(private, None, None).expect("loads"),
        SignSelect::Groups,
    )
    .expect("signs");
    assert_eq!(
        s.iter().map(|s| (s.id, s.group)).collect::<Vec<_>>(),
        [(4, 1), (5, 2)]
    );
    let ours = std::fs::read(&img).expect("reads");
    let sif = SifFile::open(&img).expect("opens");
    for u in &sigs {
        let o = sif.descriptor(u.id).expect("ours");
        assert_eq!(
            (o.link, o.group_id, o.extra.clone()),
            (u.link, u.group_id, u.extra.clone())
        );
        let payload = |b: &[u8], d: &Descriptor| -> serde_json::Value {
            let env: serde_json::Value =
                serde_json::from_slice(&b[d.offset as usize..d.end() as usize]).expect("JSON");
            env["payload"].clone()
        };
        assert_eq!(payload(&ours, o), payload(&theirs, u), "signature {}", u.id);
    }
    assert!(verify(&img, &public_keyring(public), Select::Groups)
        .expect("reads")
        .ok());
}

/// A GnuPG home in a temporary directory; its agent is stopped on drop.
struct Gpg {
    dir: tempfile::TempDir,
}

impl Gpg {
    fn new() -> Gpg {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("g")).expect("mkdir");
        // Protected keys with a small S2K count: the default (calibrated to ~100 ms in gpg)
        // takes tens of seconds to unlock in a debug build.
        std::fs::write(dir.path().join("g/gpg-agent.conf"), "s2k-count 65536\n").expect("writes");
        Gpg { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("g")
    }

    /// Runs gpg in batch mode with `passphrase`; returns its stdout.
    fn run(&self, passphrase: &str, args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(self.home())
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase"])
            .arg(passphrase)
            .args(args)
            .output()
            .expect("gpg runs");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A new key for `uid` (`algo`, `usage` as `--quick-gen-key` takes them); returns its
    /// primary fingerprint (lowercase hex).
    fn key(&self, uid: &str, passphrase: &str, algo: &str, usage: &str) -> String {
        self.run(passphrase, &["--quick-gen-key", uid, algo, usage, "never"]);
        let list = self.run("", &["--with-colons", "--list-keys", uid]);
        let list = String::from_utf8(list).expect("text");
        let fpr = list
            .lines()
            .find_map(|l| l.strip_prefix("fpr:::::::::"))
            .expect("fingerprint");
        fpr.trim_end_matches(':').to_ascii_lowercase()
    }

    /// Writes `uid`'s secret key (armored unless `binary`) and public key; returns the paths.
    fn export(&self, uid: &str, passphrase: &str, binary: bool) -> (PathBuf, PathBuf) {
        let name = uid.replace(['@', ' ', '<', '>'], "_");
        let secret = self.dir.path().join(format!("{name}.asc"));
        let public = self.dir.path().join(format!("{name}-public.asc"));
        let mut args = vec!["--export-secret-keys", uid];
        if !binary {
            args.insert(0, "--armor");
        }
        std::fs::write(&secret, self.run(passphrase, &args)).expect("writes");
        std::fs::write(&public, self.run("", &["--armor", "--export", uid])).expect("writes");
        (secret, public)
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// The clear-signed message of Signature object `id`.
fn signature_text(img: &std::path::Path, id: u32) -> String {
    let sif = SifFile::open(img).expect("opens");
    let d = sif.descriptor(id).expect("signature");
    let bytes = std::fs::read(img).expect("reads");
    String::from_utf8(bytes[d.offset as usize..d.end() as usize].to_vec()).expect("text")
}

/// Upstream's one-group-signed-pgp.sif is one-group.sif signed with an OpenPGP key: ours,
/// with a gpg key, must differ only in the signature's bytes, the sizes that follow from them
/// and the fingerprint; the signed text (the image metadata JSON) must be upstream's.
#[test]
fn openpgp_signing_writes_what_upstream_writes() {
    let gpg = Gpg::new();
    let fp = gpg.key("Ed <ed@test>", "", "ed25519", "sign");
    let (secret, public) = gpg.export("ed@test", "", false);
    let key = PrivateKey::from_file(&secret, None, None).expect("loads");
    assert_eq!(key.format(), Format::PgpMetadata);
    assert_eq!(key.public().fingerprint(), fp);
    assert_eq!(key.signing_subkey(), None);
    let img = gpg.dir.path().join("one-group.sif");
    std::fs::copy(data("one-group.sif"), &img).expect("copy");
    let signed = sign(&img, &key, SignSelect::Groups).expect("signs");
    assert_eq!((signed[0].id, signed[0].group), (3, 1));
    let ours = std::fs::read(&img).expect("reads");
    let theirs = std::fs::read(data("one-group-signed-pgp.sif")).expect("reads");
    let sif = SifFile::open(&img).expect("opens");
    let up = SifFile::open(&data("one-group-signed-pgp.sif")).expect("opens");
    let (s, u) = (
        sif.descriptor(3).expect("ours"),
        up.descriptor(3).expect("theirs"),
    );
    assert_eq!(
        (s.offset, s.link, s.group_id),
        (u.offset, u.link, u.group_id)
    );
    assert_eq!(
        s.extra,
        Extra::Signature {
            hash: HashType::Sha256,
            fingerprint: Some(fp.clone())
        }
    );
    // Header data size (120..128), the signature's size fields (slot 2, 25..41) and its
    // fingerprint (extra 4..24) differ.
    let slot = sif.header.descriptors_offset as usize + 2 * DESCRIPTOR_SIZE;
    for i in 0..s.offset as usize {
        if (120..128).contains(&i)
            || (slot + 25..slot + 41).contains(&i)
            || (slot + 205..slot + 225).contains(&i)
        {
            continue;
        }
        assert_eq!(ours[i], theirs[i], "byte {i}");
    }
    let (mine, upstream) = (
        signature_text(&img, 3),
        signature_text(&data("one-group-signed-pgp.sif"), 3),
    );
    let body = |t: &str| -> String {
        let start = t.find("\n\n").expect("headers end") + 2;
        let end = t
            .find("\n-----BEGIN PGP SIGNATURE-----")
            .expect("signature");
        t[start..end].to_string()
    };
    assert_eq!(body(&mine), body(&upstream));
    assert!(mine.starts_with("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{\"version\":1,"));
    assert!(mine.ends_with("\n-----END PGP SIGNATURE-----"), "{mine}");
    // No armor checksum line, as upstream's writer.
    assert!(!mine.lines().any(|l| l.starts_with('=')), "{mine}");
    let r = verify(&img, &public_keyring(&public), Select::All).expect("reads");
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.signatures[0].format, Some(Format::PgpMetadata));
    assert!(r.signatures[0].signers[0].starts_with(&format!("pgp {fp} (")));
    // Upstream's key does not verify it; ours does not verify upstream's.
    let r = verify(&img, &keyring(&[PGP]), Select::All).expect("reads");
    assert!(!r.ok());
    let r = verify(
        &data("one-group-signed-pgp.sif"),
        &public_keyring(&public),
        Select::All,
    )
    .expect("reads");
    assert!(!r.ok());
}

/// RSA and Ed25519 keys, armored and binary; a key whose primary only certifies signs with
/// its newest signing subkey (as gpg does) and its primary fingerprint goes in the
/// descriptor; every one-byte change of the signed partition fails.
#[test]
fn openpgp_keys_of_each_kind_sign_and_verify() {
    let gpg = Gpg::new();
    let rsa_fp = gpg.key("R <rsa@test>", "", "rsa2048", "sign");
    let sub_fp = gpg.key("S <sub@test>", "", "ed25519", "cert");
    gpg.run(
        "",
        &[
            "--quick-add-key",
            &sub_fp.to_ascii_uppercase(),
            "ed25519",
            "sign",
            "never",
        ],
    );
    gpg.run(
        "",
        &[
            "--quick-add-key",
            &sub_fp.to_ascii_uppercase(),
            "cv25519",
            "encr",
            "never",
        ],
    );
    let list = String::from_utf8(gpg.run("", &["--with-colons", "--list-keys", "sub@test"]))
        .expect("text");
    // The signing subkey: the second fpr line (after the primary's), before the encryption one.
    let sub_signing = list
        .lines()
        .filter_map(|l| l.strip_prefix("fpr:::::::::"))
        .nth(1)
        .expect("subkey")
        .trim_end_matches(':')
        .to_ascii_lowercase();
    for (uid, fp, binary, subkey) in [
        ("rsa@test", &rsa_fp, false, None),
        ("sub@test", &sub_fp, false, Some(&sub_signing)),
        ("sub@test", &sub_fp, true, Some(&sub_signing)),
    ] {
        let (secret, public) = gpg.export(uid, "", binary);
        let key = PrivateKey::from_file(&secret, None, None).expect("loads");
        assert_eq!(&key.public().fingerprint(), fp);
        assert_eq!(key.signing_subkey().as_ref(), subkey);
        let img = gpg.dir.path().join(format!("{uid}-{binary}.sif"));
        std::fs::copy(data("one-group.sif"), &img).expect("copy");
        sign(&img, &key, SignSelect::Groups).expect("signs");
        let sif = SifFile::open(&img).expect("opens");
        assert_eq!(
            sif.descriptor(3).expect("signature").extra,
            Extra::Signature {
                hash: HashType::Sha256,
                fingerprint: Some(fp.clone())
            }
        );
        let r = verify(&img, &public_keyring(&public), Select::Groups).expect("reads");
        assert!(r.ok(), "{uid}: {r:?}");
        let part = sif.descriptor(2).expect("partition").clone();
        let good = std::fs::read(&img).expect("reads");
        for at in [part.offset, part.offset + part.size / 2, part.end() - 1] {
            let mut bad = good.clone();
            bad[at as usize] ^= 0x01;
            std::fs::write(&img, &bad).expect("writes");
            let r = verify(&img, &public_keyring(&public), Select::Groups).expect("reads");
            let e = r.signatures[0].error.clone().unwrap_or_default();
            assert!(e.contains("object 2 does not match"), "{uid} at {at}: {e}");
        }
    }
}

#[test]
fn protected_openpgp_keys_need_their_passphrase() {
    let gpg = Gpg::new();
    let fp = gpg.key("P <p@test>", "sekrit", "ed25519", "sign");
    let (secret, public) = gpg.export("p@test", "sekrit", false);
    let shown = secret.display().to_string();
    let e = PrivateKey::from_file(&secret, None, None)
        .err()
        .unwrap_or_default();
    assert_eq!(
        e,
        format!("{shown}: the OpenPGP secret key {fp} is protected by a passphrase; set LAUNCHER_SIGN_PASSPHRASE to it")
    );
    let e = PrivateKey::from_file(&secret, Some("wrong"), None)
        .err()
        .unwrap_or_default();
    assert_eq!(
        e,
        format!("{shown}: wrong passphrase for the OpenPGP secret key {fp} (from LAUNCHER_SIGN_PASSPHRASE)")
    );
    let key = PrivateKey::from_file(&secret, Some("sekrit"), None).expect("unlocks");
    let img = gpg.dir.path().join("p.sif");
    std::fs::copy(data("one-group.sif"), &img).expect("copy");
    sign(&img, &key, SignSelect::Groups).expect("signs");
    assert!(verify(&img, &public_keyring(&public), Select::Groups)
        .expect("reads")
        .ok());
    // The public key, or two secret keys in one file: one line each.
    let e = PrivateKey::from_file(&public, None, None)
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("is an OpenPGP public key; signing needs the secret key"),
        "{e}"
    );
    gpg.key("Q <q@test>", "", "ed25519", "sign");
    let both = gpg.dir.path().join("both.asc");
    std::fs::write(
        &both,
        gpg.run("sekrit", &["--armor", "--export-secret-keys"]),
    )
    .expect("writes");
    let e = PrivateKey::from_file(&both, None, None)
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("holds 2 OpenPGP secret keys") && !e.contains('\n'),
        "{e}"
    );
    // An index picks one of them (as Apptainer's --keyidx); past the end, one line.
    let e = PrivateKey::from_file(&both, None, Some(0))
        .err()
        .unwrap_or_default();
    assert!(e.contains("is protected by a passphrase"), "{e}");
    let q = PrivateKey::from_file(&both, None, Some(1)).expect("loads");
    assert_ne!(q.public().fingerprint(), fp);
    let e = PrivateKey::from_file(&both, None, Some(2))
        .err()
        .unwrap_or_default();
    assert!(
        e.ends_with("holds 2 OpenPGP secret keys; there is no key index 2 (they count from 0)"),
        "{e}"
    );
    let e = PrivateKey::from_file(&public, None, Some(0))
        .err()
        .unwrap_or_default();
    assert!(e.contains("is an OpenPGP public key"), "{e}");
    // A binary public key, binary garbage, a truncated binary secret key: one line each.
    let bin = gpg.dir.path().join("bin");
    for (bytes, want) in [
        (
            gpg.run("", &["--export", "q@test"]),
            "is an OpenPGP public key",
        ),
        (
            vec![0xff, 0xfe, 0x00, 0x01],
            "not a PEM private key or an OpenPGP secret key",
        ),
        (
            gpg.run("", &["--export-secret-keys", "q@test"])[..40].to_vec(),
            "not an OpenPGP secret key",
        ),
    ] {
        std::fs::write(&bin, bytes).expect("writes");
        let e = PrivateKey::from_file(&bin, None, None)
            .err()
            .unwrap_or_default();
        assert!(e.contains(want) && !e.contains('\n'), "{want}: {e}");
    }
}
