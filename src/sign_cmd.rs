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
    #[arg(
        short = 'k',
        long = "key",
        value_name = "PRIVATE_KEY",
        required_unless_present = "keyidx"
    )]
    key: Option<PathBuf>,
    /// Sign with the OpenPGP secret key at place N (from 0) of the --key file, or, without
    /// --key, of Apptainer's keyring ($APPTAINER_KEYSDIR/pgp-secret, else
    /// ~/.apptainer/keys/pgp-secret), as `apptainer sign --keyidx N`.
    #[arg(long = "keyidx", value_name = "N")]
    keyidx: Option<usize>,
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
    let path = match &args.key {
        Some(k) => k.clone(),
        None => apptainer_secret_keyring()?,
    };
    let key =
        PrivateKey::from_file(&path, passphrase.as_deref(), args.keyidx).map_err(|e| anyhow!(e))?;
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

/// Apptainer's secret keyring, as Apptainer finds it: `$APPTAINER_KEYSDIR` (or
/// `$SINGULARITY_SYPGPDIR`), else `keys/` in `$APPTAINER_CONFIGDIR` (or
/// `$SINGULARITY_CONFIGDIR`), else `~/.apptainer/keys`; the file `pgp-secret` there.
fn apptainer_secret_keyring() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = var("APPTAINER_KEYSDIR")
        .or_else(|| var("SINGULARITY_SYPGPDIR"))
        .or_else(|| {
            var("APPTAINER_CONFIGDIR")
                .or_else(|| var("SINGULARITY_CONFIGDIR"))
                .map(|d| d.join("keys"))
        })
        .or_else(|| var("HOME").map(|h| h.join(".apptainer/keys")))
        .ok_or_else(|| anyhow!("--keyidx without --key: HOME is not set, so Apptainer's keyring cannot be found; give --key FILE"))?;
    Ok(dir.join("pgp-secret"))
}
