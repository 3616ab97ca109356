//! `launcher verify` on upstream's signed SIF images (tests/data/sif), as the test user:
//! DSSE and OpenPGP signatures, legacy ones, keys from --key and from the user's keyring
//! directory, wrong keys, tampered copies, unsigned images.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;

/// A copy of an upstream file the test user can read (the checkout may be private to root).
fn data(name: &str) -> String {
    let s = setup();
    let dir = s.scratch.join("sif-signatures");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let to = dir.join(name.replace('/', "-"));
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sif")
        .join(name);
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    to.display().to_string()
}

fn ed() -> String {
    data("keys/ed25519-public.pem")
}
fn rsa() -> String {
    data("keys/rsa-public.pem")
}
fn pgp() -> String {
    data("keys/unit-test-pgp-public.asc")
}

fn one_error_line(out: &Out, image: &str, want: &str) {
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(
        out.stderr
            .starts_with(&format!("launcher: error: {image}: "))
            && out.stderr.contains(want),
        "want '{want}': {out:?}"
    );
}

#[test]
fn dsse_signature_verifies_with_both_keys() {
    let img = data("one-group-signed-dsse.sif");
    let out = launcher(&["verify", "--key", &ed(), "--key", &rsa(), &img]).run();
    out.ok();
    for want in [
        "signature 3 (DSSE) for group 1: objects 1, 2",
        "  signer ed25519 SHA256:x6l8ZblpSSXGaPMCzySedWg88BwIFcz8jlPb6el0mFs (",
        "  signer rsa-4096 SHA256:BhCwr7qZulYcOMSl2Jt2DuYHxHNnN6th4NdMqR/PGa4 (",
        "  verified",
        &format!("{img}: 1 signature verified, objects 1, 2 signed"),
    ] {
        assert!(out.stdout.contains(want), "want '{want}': {out:?}");
    }
    assert_eq!(out.stderr, "", "{out:?}");
}

#[test]
fn dsse_signature_with_one_key_missing_or_a_wrong_key_fails() {
    let img = data("one-group-signed-dsse.sif");
    let out = launcher(&["verify", "-k", &ed(), &img]).run();
    one_error_line(
        &out,
        &img,
        "signature 3 not verified: DSSE signature 2 (SHA256:BhCw",
    );
    assert!(out.stdout.contains("FAILED: "), "{out:?}");
    let out = launcher(&["verify", "--key", &pgp(), &img]).run();
    one_error_line(&out, &img, "no known key");
    // No key at all: the message says where keys are looked for.
    let out = launcher(&["verify", &img]).run();
    one_error_line(&out, &img, "no key was given: use --key FILE");
}

#[test]
fn openpgp_and_legacy_signatures_verify() {
    let img = data("one-group-signed-pgp.sif");
    let out = launcher(&["verify", "--key", &pgp(), &img]).run();
    out.ok();
    assert!(
        out.stdout
            .contains("signature 3 (OpenPGP) for group 1: objects 1, 2")
            && out
                .stdout
                .contains("  signer pgp 12045c8c0b1004d058de4beda20c27ee7ff7ba84 ("),
        "{out:?}"
    );
    let img = data("one-group-signed-legacy-all.sif");
    let out = launcher(&["verify", "--all", "--key", &pgp(), &img]).run();
    out.ok();
    assert!(
        out.stdout
            .contains("signature 4 (legacy OpenPGP, object bytes only) for object 2: objects 2"),
        "{out:?}"
    );
    // Group 2 of this image is not signed: the whole image fails, group 1 passes.
    let img = data("two-groups-signed-legacy-all.sif");
    let out = launcher(&["verify", "--key", &pgp(), &img]).run();
    one_error_line(
        &out,
        &img,
        "object 3 (Partition) is not covered by any verified signature",
    );
    launcher(&["verify", "--group", "1", "--key", &pgp(), &img])
        .run()
        .ok();
}

#[test]
fn keys_in_the_users_keyring_directory_are_used() {
    let s = setup();
    let home = s.scratch.join("sig-home");
    let keys = home.join(".config/launcher/keys");
    std::fs::create_dir_all(&keys).unwrap();
    for k in [ed(), rsa(), pgp()] {
        let name = PathBuf::from(&k);
        std::fs::copy(&k, keys.join(name.file_name().unwrap())).unwrap();
    }
    // Not a key file: ignored by name.
    std::fs::write(keys.join("README"), "not a key").unwrap();
    for p in [
        &home,
        &home.join(".config"),
        &home.join(".config/launcher"),
        &keys,
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let h = home.display().to_string();
    let img = data("two-groups-signed-dsse.sif");
    let out = launcher(&["verify", &img]).env("HOME", &h).run();
    out.ok();
    assert!(
        out.stdout
            .contains("signature 4 (DSSE) for group 1: objects 1, 2")
            && out
                .stdout
                .contains("signature 5 (DSSE) for group 2: objects 3")
            && out.stdout.contains(&format!(
                "{img}: 2 signatures verified, objects 1, 2, 3 signed"
            )),
        "{out:?}"
    );
    let out = launcher(&["verify", "-g", "2", &img]).env("HOME", &h).run();
    out.ok();
    assert!(!out.stdout.contains("signature 4"), "{out:?}");
    let img = data("one-group-signed-legacy-group.sif");
    launcher(&["verify", &img]).env("HOME", &h).run().ok();
    // Only object 2 carries a (legacy) signature: the image fails, object 2 passes.
    let img = data("one-group-signed-legacy.sif");
    let out = launcher(&["verify", &img]).env("HOME", &h).run();
    one_error_line(&out, &img, "object 1 (Partition) is not covered");
    launcher(&["verify", "--sif-id", "2", &img])
        .env("HOME", &h)
        .run()
        .ok();
}

#[test]
fn a_tampered_signed_image_fails_with_one_line() {
    let img = data("one-group-signed-dsse.sif");
    let sif = image_tools::sif::SifFile::open(std::path::Path::new(&img)).unwrap();
    let part = sif.descriptor(2).unwrap().clone();
    let sig = sif.descriptor(3).unwrap().clone();
    let good = std::fs::read(&img).unwrap();
    for (at, want) in [
        (
            part.offset + 100,
            "object 2 does not match the signed digest",
        ),
        (sig.offset + sig.size - 10, "not verified: DSSE"),
    ] {
        let mut bytes = good.clone();
        bytes[at as usize] ^= 0x01;
        std::fs::write(&img, &bytes).unwrap();
        let out = launcher(&["verify", "-k", &ed(), "-k", &rsa(), &img]).run();
        one_error_line(&out, &img, want);
    }
    std::fs::write(&img, &good).unwrap();
    launcher(&["verify", "-k", &ed(), "-k", &rsa(), &img])
        .run()
        .ok();
}

#[test]
fn an_unsigned_image_with_a_key_fails() {
    let img = data("one-group.sif");
    let out = launcher(&["verify", "--key", &ed(), &img]).run();
    one_error_line(&out, &img, "has no signature");
    // Without a key option: no signature and no recorded digests either.
    let out = launcher(&["verify", &img]).run();
    one_error_line(
        &out,
        &img,
        "has no signature (and records no digests to check)",
    );
    let out = launcher(&["verify", "--key", &ed(), "--group", "7", &img]).run();
    one_error_line(&out, &img, "has no object group 7");
    let out = launcher(&["verify", "--key", "/nonexistent.pem", &img]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr
            .starts_with("launcher: error: /nonexistent.pem: cannot open key file"),
        "{out:?}"
    );
}
