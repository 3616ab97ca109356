//! Entry points for the `signature` fuzz target in fuzz/ (built only with cfg(fuzzing)).
//!
//! A fuzzer cannot forge a signature, so a whole-file run of [`super::verify`] stops at the
//! signature check and never reaches the parsers behind it. Each parser that reads bytes an
//! image author controls is therefore also driven on its own: the DSSE envelope, the
//! OpenPGP clear-signed message (with its armor checksum), the signed metadata and legacy
//! digests as checked against a real SIF, and key files.

use super::*;

/// Which parser one input drives (its first byte, modulo the count).
#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// The input is a SIF file: [`verify`] with every selection.
    WholeFile,
    /// The input is a Signature object's text, checked as a DSSE envelope.
    Dsse,
    /// The input is a Signature object's text, checked as an OpenPGP clear-signed message.
    ClearSigned,
    /// The input is the signed text of a v2 signature (metadata JSON), checked against `sif`.
    Metadata,
    /// The input is the signed text of a legacy signature (`SIFHASH:` and a digest).
    Legacy,
    /// The input is a key file.
    KeyFile,
}

impl Part {
    pub fn from_byte(b: u8) -> Part {
        match b % 6 {
            0 => Part::WholeFile,
            1 => Part::Dsse,
            2 => Part::ClearSigned,
            3 => Part::Metadata,
            4 => Part::Legacy,
            _ => Part::KeyFile,
        }
    }
}

fn report() -> SignatureReport {
    SignatureReport {
        id: 0,
        format: None,
        link: "group 1".into(),
        objects: Vec::new(),
        signers: Vec::new(),
        signer_keys: Vec::new(),
        mismatch: None,
        skipped: Vec::new(),
        error: None,
    }
}

/// Drives `part` with `data`. `input` is a file holding `data` (the whole-file part opens
/// images by path); `sif` is a real signed SIF the metadata and legacy parts check against;
/// `keys` the keys every part may use. Errors are the expected outcome; panics, hangs and
/// huge allocations are what the fuzzer looks for.
pub fn run(part: Part, data: &[u8], input: &Path, sif: &Path, keys: &Keyring) {
    let text = String::from_utf8_lossy(data);
    match part {
        Part::WholeFile => {
            for select in [
                Select::Groups,
                Select::All,
                Select::Group(1),
                Select::Object(2),
            ] {
                if let Ok(r) = verify(input, keys, select) {
                    let _ = r.ok();
                }
            }
        }
        Part::Dsse => {
            for hash in [HashType::Sha256, HashType::Sha512] {
                let _ = check_dsse(&text, hash, keys, &mut report());
            }
        }
        Part::ClearSigned => {
            let _ = check_clearsigned(&text, None, keys, &mut report());
        }
        Part::Metadata | Part::Legacy => {
            let Ok(file) = File::open(sif) else { return };
            let Ok(s) = SifFile::read_from(&file) else {
                return;
            };
            let img = Image {
                sif: &s,
                file: &file,
            };
            let objects: Vec<&Descriptor> = s
                .descriptors
                .iter()
                .filter(|d| d.group_id == Some(1))
                .collect();
            let mut mismatch = None;
            if matches!(part, Part::Metadata) {
                for only in [None, objects.first().map(|o| o.id)] {
                    let _ = img.check_metadata(&text, 1, &objects, only, &mut mismatch);
                }
            } else {
                for hash in [HashType::Sha256, HashType::Sha384, HashType::from_code(9)] {
                    let _ = img.check_legacy(&text, hash, &objects, &mut mismatch);
                }
            }
        }
        Part::KeyFile => {
            let mut ring = Keyring::default();
            if ring.add_text(&text, "fuzz").is_ok() {
                for k in &ring.keys {
                    let _ = (k.key_type(), k.fingerprint(), k.user_id(), k.describe());
                }
            }
        }
    }
}
