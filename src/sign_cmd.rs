//! `launcher sign`: adds signatures to a SIF image, in the formats Apptainer and
//! SingularityCE write and verify: a DSSE envelope with a PEM key (`apptainer verify --key
//! PUBLIC_KEY`), an OpenPGP clear-signed message with an OpenPGP secret key (`apptainer
//! verify` with the public key in its keyring).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use image_tools::sif_sig::{self, PrivateKey, SignSelect};

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The private key to sign with, its kind told by its content: an OpenPGP secret key
    /// (armored or binary, as `gpg --export-secret-keys` writes it; a protected one is unlocked
    /// with $LAUNCHER_SIGN_PASSPHRASE), or a PEM key, Ed25519 or ECDSA P-256/P-384 (PKCS#8 or
    /// SEC1) or RSA (PKCS#8 or PKCS#1), not encrypted.
    #[arg(short = 'k', long = "key", value_name = "PRIVATE_KEY", required = true)]
    key: PathBuf,
    /// Sign only object group ID (default: one signature per object group).
    #[arg(
        short = 'g',
        long = "group",
        visible_alias = "group-id",
        value_name = "ID",
        conflicts_with = "object"
    )]
    group: Option<u32>,
    /// Sign only object ID (a signature of its group that lists only that object).
    #[arg(short = 'i', long = "sif-id", value_name = "ID")]
    object: Option<u32>,
    /// Image file (.sif); rewritten in place through a temporary file beside it.
    image: PathBuf,
}

pub fn run(args: SignArgs) -> Result<i32> {
    let passphrase = std::env::var(sif_sig::PASSPHRASE_ENV)
        .ok()
        .filter(|p| !p.is_empty());
    let key = PrivateKey::from_file(&args.key, passphrase.as_deref()).map_err(|e| anyhow!(e))?;
    let select = match (args.group, args.object) {
        (Some(g), _) => SignSelect::Group(g),
        (None, Some(id)) => SignSelect::Object(id),
        (None, None) => SignSelect::Groups,
    };
    let signed = sif_sig::sign(&args.image, &key, select).map_err(|e| anyhow!(e))?;
    let shown = args.image.display();
    let mut who = format!("{} {}", key.public().key_type(), key.public().fingerprint());
    if let Some(sub) = key.signing_subkey() {
        who.push_str(&format!(" (signing subkey {sub})"));
    }
    let format = key.format();
    for s in &signed {
        let objects: Vec<String> = s.objects.iter().map(|o| o.to_string()).collect();
        println!(
            "signature {} ({format}) for group {}: objects {}, signer {who}",
            s.id,
            s.group,
            objects.join(", ")
        );
    }
    println!(
        "{shown}: {} signature{} added",
        signed.len(),
        if signed.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}
