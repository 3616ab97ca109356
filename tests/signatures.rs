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
    // Tests run in parallel and copy the same files: each copy is renamed into place whole.
    let tmp = dir.join(format!(
        ".{}.{:?}",
        name.replace('/', "-"),
        std::thread::current().id()
    ));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, &to).unwrap();
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

/// As upstream (sigstore's DSSE verifier, threshold 1): one signature of the envelope that
/// verifies with a known key is enough; the others are listed as skipped.
#[test]
fn dsse_signature_verifies_with_either_key_and_fails_with_none() {
    let img = data("one-group-signed-dsse.sif");
    let out = launcher(&["verify", "-k", &ed(), &img]).run();
    out.ok();
    for want in [
        "  signer ed25519 SHA256:x6l8ZblpSSXGaPMCzySedWg88BwIFcz8jlPb6el0mFs (",
        "  skipped: DSSE signature 2 (SHA256:BhCwr7qZulYcOMSl2Jt2DuYHxHNnN6th4NdMqR/PGa4): no known key",
        &format!("{img}: 1 signature verified, objects 1, 2 signed"),
    ] {
        assert!(out.stdout.contains(want), "want '{want}': {out:?}");
    }
    launcher(&["verify", "-k", &rsa(), &img]).run().ok();
    let out = launcher(&["verify", "--key", &pgp(), &img]).run();
    one_error_line(
        &out,
        &img,
        "signature 3 not verified: no DSSE signature verifies with a known key: DSSE signature 1 (SHA256:x6l8",
    );
    assert!(out.stdout.contains("FAILED: "), "{out:?}");
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
    // (Root's, as a run stopped below may have left it another user's.)
    std::os::unix::fs::chown(&keys, Some(0), Some(0)).unwrap();
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
    // HOME naming another user's home: their keyring directory is not used (they could vouch
    // for any image, as their launcher.yaml could set variables before issue 20), nor a key
    // file others may write. One warning naming it and why.
    let (other_name, other, _) = other_user();
    let img = data("two-groups-signed-dsse.sif");
    std::os::unix::fs::chown(&keys, Some(other), None).unwrap();
    let out = launcher(&["verify", &img]).env("HOME", &h).run();
    assert_ne!(out.code, 0, "{out:?}");
    let why = format!(
        "launcher: warning: {}: key directory not used: it is owned by {other_name} (uid {other}), not by you or root (skipped)",
        keys.display()
    );
    assert!(out.stderr.contains(&why), "{out:?}");
    std::os::unix::fs::chown(&keys, Some(0), None).unwrap();
    let open = keys.join(PathBuf::from(ed()).file_name().unwrap());
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = launcher(&["verify", &img]).env("HOME", &h).run();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_ne!(out.code, 0, "{out:?}");
    let why = format!(
        "{}: not used as a key: it is writable by group or others",
        open.display()
    );
    assert!(out.stderr.contains(&why), "{out:?}");
    launcher(&["verify", &img]).env("HOME", &h).run().ok();
}

#[test]
fn a_tampered_signed_image_fails_with_one_line() {
    // A copy of its own: the other tests read the shared one meanwhile.
    let img = format!("{}.tampered.sif", data("one-group-signed-dsse.sif"));
    std::fs::copy(data("one-group-signed-dsse.sif"), &img).unwrap();
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

/// A directory the test user can write (`launcher sign` writes its temporary file beside the
/// image and renames it over the image).
fn writable_dir(name: &str) -> PathBuf {
    let dir = setup().scratch.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

#[test]
fn signed_with_launcher_sign_verifies_with_the_public_key_only() {
    let dir = writable_dir("sign");
    let keys = [
        openssl_key(&dir, "ed25519", &["-algorithm", "ed25519"]),
        openssl_key(
            &dir,
            "rsa",
            &["-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        openssl_key(
            &dir,
            "p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
    ];
    for (n, (key, public)) in keys.iter().enumerate() {
        let img = dir.join(format!("{n}.sif")).display().to_string();
        std::fs::copy(data("one-group.sif"), &img).unwrap();
        let out = launcher(&["sign", "--key", key, &img]).run();
        out.ok();
        assert!(
            out.stdout
                .contains("signature 3 (DSSE) for group 1: objects 1, 2, signer ")
                && out.stdout.contains(&format!("{img}: 1 signature added")),
            "{out:?}"
        );
        let out = launcher(&["verify", "--key", public, &img]).run();
        out.ok();
        assert!(out.stdout.contains("  verified"), "{out:?}");
        let (_, other) = &keys[(n + 1) % keys.len()];
        let out = launcher(&["verify", "--key", other, &img]).run();
        one_error_line(
            &out,
            &img,
            "signature 3 not verified: no DSSE signature verifies",
        );
        // One byte of the partition changed.
        let sif = image_tools::sif::SifFile::open(std::path::Path::new(&img)).unwrap();
        let at = sif.descriptor(2).unwrap().offset + 3;
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[at as usize] ^= 0x01;
        std::fs::write(&img, &bytes).unwrap();
        let out = launcher(&["verify", "--key", public, &img]).run();
        one_error_line(&out, &img, "object 2 does not match the signed digest");
    }
}

#[test]
fn sign_refuses_with_one_line_and_leaves_the_image_alone() {
    let dir = writable_dir("sign-refused");
    let (key, public) = openssl_key(&dir, "ed25519", &["-algorithm", "ed25519"]);
    let junk = dir.join("junk.sif").display().to_string();
    std::fs::write(&junk, "not an image\n").unwrap();
    let out = launcher(&["sign", "-k", &key, &junk]).run();
    one_error_line(
        &out,
        &junk,
        "not a SIF image; only SIF images can be signed",
    );
    // A public key is not a signing key.
    let img = dir.join("img.sif").display().to_string();
    std::fs::copy(data("one-group.sif"), &img).unwrap();
    let out = launcher(&["sign", "-k", &public, &img]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains("is a public key"), "{out:?}");
    // A directory the user cannot write: no temporary file, no change.
    let ro = data("one-group.sif");
    let before = std::fs::read(&ro).unwrap();
    let out = launcher(&["sign", "-k", &key, &ro]).run();
    one_error_line(&out, &ro, "Permission denied");
    assert_eq!(std::fs::read(&ro).unwrap(), before);
    assert_eq!(
        std::fs::read(&img).unwrap(),
        std::fs::read(data("one-group.sif")).unwrap()
    );
}

#[test]
fn exec_run_shell_verify_refuses_before_mounting_unless_verified() {
    let dir = writable_dir("launch-verify");
    let (key, public) = openssl_key(&dir, "ed25519", &["-algorithm", "ed25519"]);
    let (_, other) = openssl_key(&dir, "other", &["-algorithm", "ed25519"]);
    let unsigned = dir.join("unsigned.sif").display().to_string();
    launcher(&["build", &unsigned, &fixture("rootfs")])
        .run()
        .ok();
    let img = dir.join("signed.sif").display().to_string();
    std::fs::copy(&unsigned, &img).unwrap();
    launcher(&["sign", "-k", &key, &img]).run().ok();
    // The success is remembered in the cache directory (verify_memo.rs): one entry, used by
    // the next launch; a changed image is checked again (the last check below).
    let cache = dir.join("cache");
    let verified = |args: &[&str]| {
        launcher(args)
            .env("LAUNCHER_CACHEDIR", &cache.display().to_string())
            .run()
    };
    let entries = || -> Vec<String> {
        std::fs::read_dir(cache.join("verified"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".lock"))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Not remembered while the image's last change is under 2 s old (verify_memo::SETTLED):
    // where timestamps have 1 s ticks (ext4 with 128-byte inodes, NFS servers keeping
    // seconds), a rewrite in the second of the check kept the identity the memo recorded,
    // and a later launch ran bytes never checked.
    let out = verified(&["exec", "--verify", "--key", &public, &img, "echo", "ran"]);
    assert_eq!(out.ok().stdout, "ran\n", "{out:?}");
    assert!(entries().is_empty(), "a fresh image: {:?}", entries());
    // What runs is decompressed from the checked file alone, not from the block cache
    // (fuse/block_cache.rs), which the user's other containers may have written.
    let out = verified(&[
        "--debug", "exec", "--verify", "--key", &public, &img, "true",
    ]);
    out.ok();
    assert!(
        out.stderr
            .contains("block cache: off (the image's signatures were checked)")
            && !out.stderr.contains("blocks loaded"),
        "{out:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for round in 0..2 {
        let out = verified(&["exec", "--verify", "--key", &public, &img, "echo", "ran"]);
        out.ok();
        assert_eq!(out.stdout, "ran\n", "round {round}: {out:?}");
        assert_eq!(entries().len(), 1, "round {round}: {:?}", entries());
    }
    // Refused with one line, and the command does not run.
    let out = launcher(&["exec", "--verify", "--key", &other, &img, "echo", "ran"]).run();
    one_error_line(
        &out,
        &img,
        "signature 4 not verified: no DSSE signature verifies",
    );
    assert_eq!(out.stdout, "", "{out:?}");
    let out = launcher(&["run", "--verify", &img]).run();
    one_error_line(&out, &img, "no key was given");
    let out = launcher(&["shell", "--verify", "--key", &public, &unsigned]).run();
    one_error_line(&out, &unsigned, "has no signature, so --verify refuses it");
    // Upstream's image carries an OpenPGP signature by a key we do not hold.
    let theirs = fixture("singularityce-busybox-amd64.sif");
    let out = launcher(&["exec", "--verify", "--key", &public, &theirs, "true"]).run();
    one_error_line(
        &out,
        &theirs,
        "signature 5 not verified: OpenPGP signature 1: no known key",
    );
    let sqfs = fixture("bare.sqfs");
    let out = launcher(&["exec", "--verify", &sqfs, "true"]).run();
    one_error_line(&out, &sqfs, "this is not a SIF image");
    // --key alone is an error: it only goes with --verify.
    let out = launcher(&["exec", "--key", &public, &img, "true"]).run();
    assert_ne!(out.code, 0, "{out:?}");
    // A changed byte of the root file system.
    let sif = image_tools::sif::SifFile::open(std::path::Path::new(&img)).unwrap();
    let root = sif.primary_partition().unwrap().clone();
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[(root.offset + root.size / 2) as usize] ^= 0x01;
    std::fs::write(&img, &bytes).unwrap();
    let out = verified(&["exec", "--verify", "--key", &public, &img, "echo", "ran"]);
    one_error_line(&out, &img, "does not match the signed digest");
    assert_eq!(out.stdout, "", "{out:?}");
    assert_eq!(entries().len(), 1, "a failure is not remembered");
    let locks = std::fs::read_dir(cache.join("verified"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        .count();
    assert_eq!(locks, 0, "the lock of a refused check is removed");
    let clean = verified(&["cache", "clean", "--force"]);
    assert!(
        clean
            .ok()
            .stdout
            .contains("removed 1 remembered signature checks"),
        "{clean:?}"
    );
    assert!(entries().is_empty(), "{:?}", entries());
    // A memo directory others may write is not used: nothing is remembered there.
    std::fs::remove_dir_all(cache.join("verified")).unwrap();
    std::fs::create_dir_all(cache.join("verified")).unwrap();
    std::fs::set_permissions(
        cache.join("verified"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(&img, std::fs::read(&unsigned).unwrap()).unwrap();
    launcher(&["sign", "-k", &key, &img]).run().ok();
    verified(&["exec", "--verify", "--key", &public, &img, "true"]).ok();
    assert!(entries().is_empty(), "{:?}", entries());
}

/// `dir/NAME`: the rootfs fixture built into a SIF and signed with a new Ed25519 key; the
/// image and the public key's file.
fn signed_rootfs(dir: &std::path::Path, name: &str) -> (String, String) {
    let (key, public) = openssl_key(dir, "ed25519", &["-algorithm", "ed25519"]);
    let img = dir.join(name).display().to_string();
    launcher(&["build", &img, &fixture("rootfs")]).run().ok();
    launcher(&["sign", "-k", &key, &img]).run().ok();
    (img, public)
}

/// Whoever can write a signed image can add an object in no group without breaking its
/// signatures: `launcher verify` still passes, as upstream's does, since only object groups
/// must be covered. A launch reads the OCI config object (environment, entrypoint), so a check
/// before a launch refuses one that no verified signature covers: before, a groupless
/// `oci-config` added to a signed image set `PATH` and `LD_PRELOAD` for an
/// `exec --verify` (and for an image under the site's signature policy, the same check).
#[test]
fn a_launch_check_refuses_an_unsigned_object_the_launch_reads() {
    use image_tools::sif::{DataType, ObjectData, ObjectSpec};
    let dir = writable_dir("launch-verify-unsigned-object");
    let (img, public) = signed_rootfs(&dir, "signed.sif");
    let added = dir.join("added.sif");
    std::fs::copy(&img, &added).unwrap();
    let config = br#"{"Env":["EVIL=from-an-unsigned-object","PATH=/tmp/evil:/usr/bin:/bin"]}"#;
    let object = ObjectSpec {
        group_id: None,
        name: "oci-config".into(),
        ..ObjectSpec::new(DataType::GenericJson, ObjectData::Bytes(config.to_vec()))
    };
    let ids = image_tools::sif::add_objects(&added, &[object], None).unwrap();
    std::fs::set_permissions(&added, std::fs::Permissions::from_mode(0o644)).unwrap();
    let added = added.display().to_string();
    launcher(&["verify", "--key", &public, &added]).run().ok();
    let out = launcher(&[
        "exec",
        "--verify",
        "--key",
        &public,
        &added,
        "sh",
        "-c",
        "echo $EVIL",
    ])
    .run();
    one_error_line(
        &out,
        &added,
        &format!(
            "object {} (GenericJSON, read by the launch) is not covered by any verified signature",
            ids[0]
        ),
    );
    assert_eq!(out.stdout, "", "{out:?}");
    // The signed image itself still runs.
    let out = launcher(&["exec", "--verify", "--key", &public, &img, "echo", "ran"]).run();
    assert_eq!(out.ok().stdout, "ran\n", "{out:?}");
}

/// The image checked is the image launched: whoever can write the image's directory may
/// rename other files over it while launches run, and no launch may run a file other than the
/// one its check read. Before the launch read the checked open file, it opened the path again:
/// in the review of 2026-12-05, 7 of 30 `exec --verify` launches ran the unsigned image.
#[test]
fn the_file_checked_is_the_file_launched() {
    let dir = writable_dir("launch-verify-swap");
    let (good, public) = signed_rootfs(&dir, "good.sif");
    // The unsigned image: the same root with a marker.
    let tree = dir.join("evil-root");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixture("rootfs"))
        .arg(&tree)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::write(tree.join("marker"), "EVIL\n").unwrap();
    let evil = dir.join("evil.sif").display().to_string();
    launcher(&["build", &evil, &tree.display().to_string()])
        .run()
        .ok();
    let flip = dir.join("flip.sif");
    std::fs::hard_link(&good, &flip).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, flip, tmp) = (stop.clone(), flip.clone(), dir.join(".flip"));
        let (good, evil) = (PathBuf::from(&good), PathBuf::from(&evil));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for src in [&evil, &good] {
                    let _ = std::fs::remove_file(&tmp);
                    std::fs::hard_link(src, &tmp).unwrap();
                    std::fs::rename(&tmp, &flip).unwrap();
                }
            }
        })
    };
    let flip = flip.display().to_string();
    let outs: Vec<Out> = (0..30)
        .map(|_| {
            launcher(&[
                "exec", "--verify", "--key", &public, &flip, "cat", "/marker",
            ])
            .run()
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    for out in &outs {
        assert!(
            !out.stdout.contains("EVIL"),
            "an unchecked image ran: {out:?}"
        );
        let refused = out.stderr.contains("has no signature");
        let ran_good = out.stderr.contains("/marker");
        assert!(refused || ran_good, "{out:?}");
    }
}

/// GnuPG as the test user, with a home of its own under `dir`; its agent is stopped on drop.
struct Gpg {
    home: PathBuf,
}

impl Gpg {
    fn new(dir: &std::path::Path) -> Gpg {
        let s = setup();
        let home = dir.join("gnupg");
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir(&home).unwrap();
        // Protected keys with a small S2K count: gpg's calibrated default takes tens of
        // seconds to unlock in a debug build of the launcher.
        let conf = home.join("gpg-agent.conf");
        std::fs::write(&conf, "s2k-count 65536\n").unwrap();
        for p in [&home, &conf] {
            std::os::unix::fs::chown(p, Some(s.uid), Some(s.gid)).unwrap();
        }
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        Gpg { home }
    }

    fn output(&self, passphrase: &str, args: &[&str]) -> std::process::Output {
        as_test_user("gpg", Some(120))
            .arg("--homedir")
            .arg(&self.home)
            .args([
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                passphrase,
            ])
            .args(args)
            .output()
            .unwrap()
    }

    fn run(&self, passphrase: &str, args: &[&str]) -> Vec<u8> {
        let out = self.output(passphrase, args);
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A new signing key for `uid` (`algo` as `--quick-gen-key` takes it), its armored secret
    /// and public keys written beside the home: (fingerprint, secret file, public file).
    fn key(&self, uid: &str, algo: &str, passphrase: &str) -> (String, String, String) {
        self.run(passphrase, &["--quick-gen-key", uid, algo, "sign", "never"]);
        let list = String::from_utf8(self.run("", &["--with-colons", "--list-keys", uid])).unwrap();
        let fp = list
            .lines()
            .find_map(|l| l.strip_prefix("fpr:::::::::"))
            .unwrap()
            .trim_end_matches(':')
            .to_ascii_lowercase();
        let dir = self.home.parent().unwrap();
        let secret = dir.join(format!("{algo}-secret.asc"));
        let public = dir.join(format!("{algo}-public.asc"));
        let data = self.run(passphrase, &["--armor", "--export-secret-keys", uid]);
        std::fs::write(&secret, data).unwrap();
        std::fs::write(&public, self.run("", &["--armor", "--export", uid])).unwrap();
        for f in [&secret, &public] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        (
            fp,
            secret.display().to_string(),
            public.display().to_string(),
        )
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = as_test_user("gpgconf", Some(30))
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// Signature object 3 of `img` written to a file of its own: the clear-signed message.
fn extract_signature(img: &str) -> String {
    let sif = image_tools::sif::SifFile::open(std::path::Path::new(img)).unwrap();
    let d = sif.descriptor(3).unwrap();
    let bytes = std::fs::read(img).unwrap();
    let msg = format!("{img}.msg");
    std::fs::write(
        &msg,
        &bytes[d.offset as usize..(d.offset + d.size) as usize],
    )
    .unwrap();
    std::fs::set_permissions(&msg, std::fs::Permissions::from_mode(0o644)).unwrap();
    msg
}

/// `launcher sign` with keys gpg made (Ed25519 and RSA): the OpenPGP signature verifies with
/// the public key, with `gpg --verify` too, and fails after a one-byte change of the signed
/// partition; a PEM key still writes DSSE.
#[test]
fn signed_with_an_openpgp_key_verifies_with_launcher_and_gpg() {
    let dir = writable_dir("pgp-sign");
    let gpg = Gpg::new(&dir);
    for (uid, algo) in [("Ed <ed@test>", "ed25519"), ("Rsa <rsa@test>", "rsa2048")] {
        let (fp, secret, public) = gpg.key(uid, algo, "");
        let img = dir.join(format!("{algo}.sif")).display().to_string();
        std::fs::copy(data("one-group.sif"), &img).unwrap();
        let out = launcher(&["sign", "--key", &secret, &img]).run();
        out.ok();
        assert!(
            out.stdout.contains(&format!(
                "signature 3 (OpenPGP) for group 1: objects 1, 2, signer pgp {fp}\n"
            )) && out.stdout.contains(&format!("{img}: 1 signature added")),
            "{out:?}"
        );
        let out = launcher(&["verify", "--key", &public, &img]).run();
        out.ok();
        assert!(
            out.stdout
                .contains(&format!("  signer pgp {fp} ({public})"))
                && out.stdout.contains("  verified"),
            "{out:?}"
        );
        // gpg verifies the message itself: the signed text is the image metadata JSON.
        let msg = extract_signature(&img);
        let out = gpg.output("", &["--verify", &msg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.contains(&format!("Good signature from \"{uid}\"")),
            "{err}"
        );
        let text = std::fs::read_to_string(&msg).unwrap();
        assert!(
            text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{\"version\":1,"),
            "{text}"
        );
        // One byte of the partition changed.
        let sif = image_tools::sif::SifFile::open(std::path::Path::new(&img)).unwrap();
        let at = sif.descriptor(2).unwrap().offset + 3;
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[at as usize] ^= 0x01;
        std::fs::write(&img, &bytes).unwrap();
        let out = launcher(&["verify", "--key", &public, &img]).run();
        one_error_line(&out, &img, "object 2 does not match the signed digest");
    }
    // A PEM key still writes a DSSE envelope.
    let (key, public) = openssl_key(&dir, "pem", &["-algorithm", "ed25519"]);
    let img = dir.join("pem.sif").display().to_string();
    std::fs::copy(data("one-group.sif"), &img).unwrap();
    let out = launcher(&["sign", "--key", &key, &img]).run();
    out.ok();
    assert!(
        out.stdout
            .contains("signature 3 (DSSE) for group 1: objects 1, 2, signer ed25519 SHA256:"),
        "{out:?}"
    );
    launcher(&["verify", "--key", &public, &img]).run().ok();
    assert!(std::fs::read(&img)
        .unwrap()
        .windows(12)
        .any(|w| w == b"\"payloadType"));
}

#[test]
fn a_protected_openpgp_key_signs_only_with_its_passphrase() {
    let dir = writable_dir("pgp-sign-protected");
    let gpg = Gpg::new(&dir);
    let (fp, secret, public) = gpg.key("Prot <prot@test>", "ed25519", "sekrit");
    let img = dir.join("img.sif").display().to_string();
    std::fs::copy(data("one-group.sif"), &img).unwrap();
    let before = std::fs::read(&img).unwrap();
    for (env, want) in [
        (
            None,
            format!("launcher: error: {secret}: the OpenPGP secret key {fp} is protected by a passphrase; set LAUNCHER_SIGN_PASSPHRASE to it\n"),
        ),
        (
            Some("wrong"),
            format!("launcher: error: {secret}: wrong passphrase for the OpenPGP secret key {fp} (from LAUNCHER_SIGN_PASSPHRASE)\n"),
        ),
    ] {
        let mut l = launcher(&["sign", "--key", &secret, &img]);
        if let Some(p) = env {
            l = l.env("LAUNCHER_SIGN_PASSPHRASE", p);
        }
        let out = l.run();
        assert_eq!((out.code, out.stderr.as_str()), (255, want.as_str()), "{out:?}");
        assert_eq!(std::fs::read(&img).unwrap(), before);
    }
    launcher(&["sign", "--key", &secret, &img])
        .env("LAUNCHER_SIGN_PASSPHRASE", "sekrit")
        .run()
        .ok();
    launcher(&["verify", "--key", &public, &img]).run().ok();
    let out = gpg.output("", &["--verify", &extract_signature(&img)]);
    assert!(out.status.success(), "{out:?}");
    // The public key is not a signing key.
    let out = launcher(&["sign", "--key", &public, &img]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr
            .contains("is an OpenPGP public key; signing needs the secret key"),
        "{out:?}"
    );
}

/// `verify --json` prints `apptainer verify --json`'s document: a count of signatures and one
/// entry per verified object (or per object whose digest does not match), the OpenPGP signer
/// named; printed also when the image fails.
#[test]
fn verify_json_prints_apptainers_document() {
    let img = data("one-group-signed-pgp.sif");
    let out = launcher(&["verify", "--json", "--key", &pgp(), &img]).run();
    out.ok();
    let entry = r#"    {
      "Signer": {
        "Partition": "FS",
        "Name": "Unit Test \u003cunit@test.com\u003e",
        "Fingerprint": "12045c8c0b1004d058de4beda20c27ee7ff7ba84",
        "KeyLocal": true,
        "KeyCheck": true,
        "DataCheck": true
      }
    }"#;
    assert_eq!(
        out.stdout,
        format!("{{\n  \"Signatures\": 1,\n  \"SignerKeys\": [\n{entry},\n{entry}\n  ]\n}}\n"),
        "{out:?}"
    );
    assert_eq!(out.stderr, "", "{out:?}");
    // A changed partition byte: the object that does not match, DataCheck false; one error
    // line on stderr as without --json.
    let bad = format!("{img}.json-tampered.sif");
    let mut bytes = std::fs::read(&img).unwrap();
    let sif = image_tools::sif::SifFile::open(std::path::Path::new(&img)).unwrap();
    bytes[sif.descriptor(2).unwrap().offset as usize + 1] ^= 0x01;
    std::fs::write(&bad, &bytes).unwrap();
    let out = launcher(&["verify", "-j", "-k", &pgp(), &bad]).run();
    one_error_line(&out, &bad, "object 2 does not match the signed digest");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["Signatures"], 1, "{out:?}");
    let keys = v["SignerKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{out:?}");
    assert_eq!(keys[0]["Signer"]["DataCheck"], false);
    assert_eq!(keys[0]["Signer"]["KeyCheck"], true);
    // No key verifies it: counted, no entry. DSSE: verified objects, no entity named.
    let out = launcher(&["verify", "-j", "-k", &ed(), &img]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(
        out.stdout,
        "{\n  \"Signatures\": 1,\n  \"SignerKeys\": null\n}\n"
    );
    let out = launcher(&[
        "verify",
        "-j",
        "-k",
        &ed(),
        &data("one-group-signed-dsse.sif"),
    ])
    .run();
    out.ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let keys = v["SignerKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{out:?}");
    assert_eq!(keys[0]["Signer"]["Name"], "unknown");
    assert_eq!(keys[0]["Signer"]["DataCheck"], true);
}

/// `--keyidx N` picks the Nth secret key of Apptainer's keyring (binary `pgp-secret`, found by
/// `$APPTAINER_KEYSDIR` or `~/.apptainer/keys`) or of the `--key` file, as `apptainer sign
/// --keyidx N` does.
#[test]
fn keyidx_selects_a_key_of_apptainers_keyring() {
    let dir = writable_dir("pgp-keyidx");
    let gpg = Gpg::new(&dir);
    let (ed_fp, _, ed_public) = gpg.key("Ed <ed@test>", "ed25519", "");
    let (rsa_fp, _, rsa_public) = gpg.key("Rsa <rsa@test>", "rsa2048", "");
    // Apptainer's keyring holds its entities one after the other, binary.
    let home = dir.join("home");
    let keys = home.join(".apptainer/keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut ring = gpg.run("", &["--export-secret-keys", "ed@test"]);
    ring.extend(gpg.run("", &["--export-secret-keys", "rsa@test"]));
    std::fs::write(keys.join("pgp-secret"), &ring).unwrap();
    for p in [&home, &home.join(".apptainer"), &keys] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        keys.join("pgp-secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let h = home.display().to_string();
    let img = dir.join("img.sif").display().to_string();
    for (idx, env, fp, public) in [
        ("1", ("HOME", h.clone()), &rsa_fp, &rsa_public),
        (
            "0",
            ("APPTAINER_KEYSDIR", keys.display().to_string()),
            &ed_fp,
            &ed_public,
        ),
    ] {
        std::fs::copy(data("one-group.sif"), &img).unwrap();
        let out = launcher(&["sign", "--keyidx", idx, &img])
            .env(env.0, &env.1)
            .run();
        out.ok();
        assert!(
            out.stdout.contains(&format!("signer pgp {fp}\n")),
            "{out:?}"
        );
        launcher(&["verify", "--key", public, &img]).run().ok();
    }
    let ring = keys.join("pgp-secret").display().to_string();
    let out = launcher(&["sign", "--keyidx", "2", &img])
        .env("HOME", &h)
        .run();
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            255,
            format!("launcher: error: {ring}: holds 2 OpenPGP secret keys; there is no key index 2 (they count from 0)\n").as_str()
        ),
        "{out:?}"
    );
    // The keyring as --key: one key must be chosen.
    let out = launcher(&["sign", "--key", &ring, &img]).run();
    assert_eq!(out.code, 255, "{out:?}");
    assert!(
        out.stderr.contains("holds 2 OpenPGP secret keys (")
            && out.stderr.contains("choose one with --keyidx N"),
        "{out:?}"
    );
    launcher(&["sign", "--key", &ring, "--keyidx", "0", &img])
        .run()
        .ok();
}
