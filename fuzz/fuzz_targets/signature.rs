//! SIF signatures (image-tools/src/sif_sig): the first byte picks a parser, the rest is its
//! input: a whole SIF file verified with every selection, a Signature object's text as a DSSE
//! envelope or an OpenPGP clear-signed message, the signed metadata or legacy digest checked
//! against a real signed SIF, or a key file. The keys are the test keys of tests/data/sif.
#![no_main]

use image_tools::sif_sig::fuzzing::{run, Part};
use image_tools::sif_sig::Keyring;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

const SIGNED: &[u8] = include_bytes!("../../tests/data/sif/one-group-signed-dsse.sif");
const KEYS: [(&str, &str); 3] = [
    (
        "ed25519",
        include_str!("../../tests/data/sif/keys/ed25519-public.pem"),
    ),
    (
        "rsa",
        include_str!("../../tests/data/sif/keys/rsa-public.pem"),
    ),
    (
        "pgp",
        include_str!("../../tests/data/sif/keys/unit-test-pgp-public.asc"),
    ),
];

struct Fixed {
    sif: PathBuf,
    keys: Keyring,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let sif = launcher_fuzz::scratch().join("signed.sif");
        std::fs::write(&sif, SIGNED).expect("write the signed SIF to scratch");
        let mut keys = Keyring::default();
        for (name, text) in KEYS {
            keys.add_text(text, name).expect("the test keys parse");
        }
        Fixed { sif, keys }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let f = fixed();
    let part = Part::from_byte(first);
    let input = match part {
        Part::WholeFile => launcher_fuzz::image_file(rest),
        _ => PathBuf::new(),
    };
    run(part, rest, &input, &f.sif, &f.keys);
});
