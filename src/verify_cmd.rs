//! `launcher verify`: the signatures of a SIF image (DSSE and OpenPGP, as Apptainer and
//! SingularityCE write them), or, for an unsigned image built by the launcher, the digests it
//! records.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use image_tools::sif::{DataType, SifFile};
use image_tools::sif_sig::{self, Keyring, Select};

/// The site's keyring: every `*.pem` and `*.asc` file in it is a trusted key.
const SITE_KEYS: &str = "/etc/launcher/keys";

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A public key to verify with: PEM (Ed25519, RSA, ECDSA) or an armored OpenPGP public
    /// key; repeatable. The *.pem and *.asc files in ~/.config/launcher/keys/ and
    /// /etc/launcher/keys/ are used too.
    #[arg(short = 'k', long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Require every object of the image, not only those in object groups, to be covered by a
    /// verified signature.
    #[arg(short = 'a', long, conflicts_with_all = ["group", "object"])]
    all: bool,
    /// Verify only the signatures of object group ID.
    #[arg(
        short = 'g',
        long = "group",
        visible_alias = "group-id",
        value_name = "ID",
        conflicts_with = "object"
    )]
    group: Option<u32>,
    /// Verify only the signatures that cover object ID (e.g. a legacy signature of one object).
    #[arg(short = 'i', long = "sif-id", value_name = "ID")]
    object: Option<u32>,
    /// Image file (.sif).
    image: PathBuf,
}

/// `$XDG_CONFIG_HOME/launcher/keys`, else `$HOME/.config/launcher/keys`.
fn user_keys() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("launcher/keys"))
}

pub fn run(args: VerifyArgs) -> Result<i32> {
    let shown = args.image.display().to_string();
    let sif = SifFile::open(&args.image).map_err(|e| anyhow!("{shown}: {e}"))?;
    let signed = sif
        .descriptors
        .iter()
        .any(|d| d.data_type == DataType::Signature);
    let asked = !args.keys.is_empty() || args.all || args.group.is_some() || args.object.is_some();
    if !signed && !asked {
        return digests_only(&args.image, &shown);
    }

    let mut keys = Keyring::default();
    for k in &args.keys {
        keys.add_file(k).map_err(|e| anyhow!(e))?;
    }
    let mut dirs: Vec<PathBuf> = user_keys().into_iter().collect();
    dirs.push(PathBuf::from(SITE_KEYS));
    for d in &dirs {
        if let Err(e) = keys.add_dir(d) {
            launcher_runtime::debug::warn(format_args!("{e} (skipped)"));
        }
    }

    let select = match (args.all, args.group, args.object) {
        (true, _, _) => Select::All,
        (false, Some(g), _) => Select::Group(g),
        (false, None, Some(id)) => Select::Object(id),
        (false, None, None) => Select::Groups,
    };
    let report = sif_sig::verify(&args.image, &keys, select).map_err(|e| anyhow!(e))?;
    if report.signatures.is_empty() {
        match select {
            Select::Group(g) => bail!("{shown}: no signature covers object group {g}"),
            Select::Object(id) => bail!("{shown}: no signature covers object {id}"),
            _ => bail!("{shown}: has no signature"),
        }
    }
    for s in &report.signatures {
        let format = s.format.map(|f| format!(" ({f})")).unwrap_or_default();
        println!(
            "signature {}{format} for {}: objects {}",
            s.id,
            s.link,
            list(&s.objects)
        );
        for who in &s.signers {
            println!("  signer {who}");
        }
        match &s.error {
            None => println!("  verified"),
            Some(e) => println!("  FAILED: {e}"),
        }
    }
    let all_verified = report.signatures.iter().all(|s| s.error.is_none());
    for (id, what) in report.uncovered.iter().filter(|_| all_verified) {
        println!("object {id} ({what}): not covered by a verified signature");
    }
    if let Some(s) = report.signatures.iter().find(|s| s.error.is_some()) {
        let failed = report
            .signatures
            .iter()
            .filter(|s| s.error.is_some())
            .count();
        let more = if failed > 1 {
            format!(" (and {} more signatures failed)", failed - 1)
        } else {
            String::new()
        };
        let e = s.error.as_deref().unwrap_or_default();
        let hint = if keys.is_empty() {
            format!(
                "; no key was given: use --key FILE, or put keys in {}/ or {SITE_KEYS}/",
                dirs[0].display()
            )
        } else {
            String::new()
        };
        bail!("{shown}: signature {} not verified: {e}{more}{hint}", s.id);
    }
    if let Some((id, what)) = report.uncovered.first() {
        bail!(
            "{shown}: object {id} ({what}) is not covered by any verified signature{}",
            if report.uncovered.len() > 1 {
                format!(" (nor are {} more objects)", report.uncovered.len() - 1)
            } else {
                String::new()
            }
        );
    }
    let covered: std::collections::BTreeSet<u32> = report
        .signatures
        .iter()
        .flat_map(|s| s.objects.iter().copied())
        .collect();
    println!(
        "{shown}: {} signature{} verified, objects {} signed",
        report.signatures.len(),
        if report.signatures.len() == 1 {
            ""
        } else {
            "s"
        },
        list(&covered.into_iter().collect::<Vec<_>>())
    );
    Ok(0)
}

fn list(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An unsigned image: the digests the launcher's build records (and OCI blob digests). They
/// show the image is intact, not who made it.
fn digests_only(image: &Path, shown: &str) -> Result<i32> {
    let checked = image_tools::sif_image::verify(image).map_err(|e| {
        let e = e.to_string();
        if e.contains("records no digests") {
            anyhow!("{shown}: has no signature (and records no digests to check)")
        } else {
            anyhow!(e)
        }
    })?;
    for c in &checked {
        println!("object {:>2}  {:<40} {}", c.id, c.what, c.digest);
    }
    println!("{shown}: {} objects verified", checked.len());
    println!("{shown}: not signed: the digests show the image is intact, not who made it");
    Ok(0)
}
