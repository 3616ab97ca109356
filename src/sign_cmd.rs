//! `launcher sign`: adds DSSE signatures to a SIF image, in the format Apptainer and
//! SingularityCE write and verify (`apptainer verify --key PUBLIC_KEY`).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use image_tools::sif_sig::{self, PrivateKey, SignSelect};

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The private key to sign with: PEM, Ed25519 or ECDSA P-256/P-384 (PKCS#8 or SEC1) or RSA
    /// (PKCS#8 or PKCS#1), not encrypted.
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
    let key = PrivateKey::from_file(&args.key).map_err(|e| anyhow!(e))?;
    let select = match (args.group, args.object) {
        (Some(g), _) => SignSelect::Group(g),
        (None, Some(id)) => SignSelect::Object(id),
        (None, None) => SignSelect::Groups,
    };
    let signed = sif_sig::sign(&args.image, &key, select).map_err(|e| anyhow!(e))?;
    let shown = args.image.display();
    let who = format!("{} {}", key.public().key_type(), key.public().fingerprint());
    for s in &signed {
        let objects: Vec<String> = s.objects.iter().map(|o| o.to_string()).collect();
        println!(
            "signature {} (DSSE) for group {}: objects {}, signer {who}",
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
