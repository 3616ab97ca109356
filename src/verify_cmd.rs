//! `launcher verify`: the signatures of a SIF image (DSSE and OpenPGP, as Apptainer and
//! SingularityCE write them), or, for an unsigned image built by the launcher, the digests it
//! records.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use image_tools::sif::{DataType, SifFile};
use image_tools::sif_sig::{self, Keyring, Select};
use launcher_runtime::gather::site_config::SiteConfig;

/// The site's keyring: every `*.pem` and `*.asc` file in it is a trusted key.
const SITE_KEYS: &str = launcher_runtime::gather::site_config::DEFAULT_SITE_KEYS;

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
    /// Print the result as `apptainer verify --json` does (on standard output, also when the
    /// image does not verify): the number of signatures, and one entry per object a signature
    /// verified, or the object whose digest does not match.
    #[arg(short = 'j', long)]
    json: bool,
    /// Apptainer's `--local` (`-l`): verify with local keys only. Accepted: no keyserver is
    /// ever asked.
    #[arg(short = 'l', long, hide = true)]
    local: bool,
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
    let file = image_tools::image_file::open(&args.image)
        .map_err(|e| anyhow!("{shown}: cannot open: {e}"))?;
    let head = head(&file, &args.image)?;
    if !image_tools::sif::is_sif(&head) {
        // Named for what it is, not by the bytes where a SIF's magic would be.
        if image_tools::squashfs::is_squashfs(&head) {
            bail!("{shown}: a bare SquashFS image, not a SIF: it holds no signatures or digests to verify (`launcher build OUT.sif {shown}` wraps it in a SIF, which `launcher sign` signs)");
        }
        bail!("{shown}: not a SIF image (no SIF header), so there is nothing to verify");
    }
    let sif = SifFile::read_from(&file).map_err(|e| anyhow!("{shown}: {e}"))?;
    let signed = sif
        .descriptors
        .iter()
        .any(|d| d.data_type == DataType::Signature);
    let asked = !args.keys.is_empty() || args.all || args.group.is_some() || args.object.is_some();
    if !signed && !asked && !args.json {
        return digests_only(&args.image, &shown);
    }

    let (keys, dirs) = keyring(&args.keys)?;

    let select = match (args.all, args.group, args.object) {
        (true, _, _) => Select::All,
        (false, Some(g), _) => Select::Group(g),
        (false, None, Some(id)) => Select::Object(id),
        (false, None, None) => Select::Groups,
    };
    let report = sif_sig::verify_open(&file, &shown, &keys, select).map_err(|e| anyhow!(e))?;
    if args.json {
        print!("{}", apptainer_json(&report, &sif));
    }
    if report.signatures.is_empty() {
        match select {
            Select::Group(g) => bail!("{shown}: no signature covers object group {g}"),
            Select::Object(id) => bail!("{shown}: no signature covers object {id}"),
            _ => bail!("{shown}: has no signature"),
        }
    }
    for s in report.signatures.iter().filter(|_| !args.json) {
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
        for what in &s.skipped {
            println!("  skipped: {what}");
        }
        match &s.error {
            None => println!("  verified"),
            Some(e) => println!("  FAILED: {e}"),
        }
    }
    let all_verified = report.signatures.iter().all(|s| s.error.is_none());
    for (id, what) in report
        .uncovered
        .iter()
        .filter(|_| all_verified && !args.json)
    {
        println!("object {id} ({what}): not covered by a verified signature");
    }
    if let Some(why) = failure(&report) {
        bail!("{shown}: {why}{}", no_key_hint(&keys, &report, &dirs));
    }
    if args.json {
        return Ok(0);
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

/// `apptainer verify --json`'s document for `report`, byte for byte as Go's encoder writes it
/// (two-space indent, `<`, `>` and `&` escaped, `null` for no entries). As there, an entry
/// names its signer only for an OpenPGP signature (DSSE signatures have no entity upstream:
/// name "unknown", no fingerprint, `KeyCheck` false); `KeyLocal`: the key came from `--key` or
/// the user's keyring, not the site's.
fn apptainer_json(report: &sif_sig::Report, sif: &SifFile) -> String {
    let string = |v: &str| -> String {
        serde_json::to_string(v)
            .unwrap_or_default()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
    };
    let mut entries = Vec::new();
    for s in &report.signatures {
        let pgp = s.format.is_some_and(|f| f != sif_sig::Format::Dsse);
        let signer = s.signer_keys.first().filter(|_| pgp);
        let name = signer
            .and_then(|k| k.user_id())
            .unwrap_or_else(|| "unknown".into());
        let fingerprint = signer.map(|k| k.fingerprint()).unwrap_or_default();
        let local = signer.is_some_and(|k| !k.source.starts_with(&format!("{SITE_KEYS}/")));
        let verified = s.objects.iter().filter(|_| s.error.is_none());
        let checks = verified
            .map(|id| (*id, true))
            .chain(s.mismatch.map(|id| (id, false)));
        for (id, data_ok) in checks {
            let partition = sif
                .descriptor(id)
                .map_or("Unknown", |d| apptainer_type(d.data_type));
            entries.push(format!(
                "    {{\n      \"Signer\": {{\n        \"Partition\": {},\n        \"Name\": {},\n        \"Fingerprint\": {},\n        \"KeyLocal\": {local},\n        \"KeyCheck\": {},\n        \"DataCheck\": {data_ok}\n      }}\n    }}",
                string(partition),
                string(&name),
                string(&fingerprint),
                signer.is_some(),
            ));
        }
    }
    let keys = match entries.is_empty() {
        true => "null".to_string(),
        false => format!("[\n{}\n  ]", entries.join(",\n")),
    };
    format!(
        "{{\n  \"Signatures\": {},\n  \"SignerKeys\": {keys}\n}}\n",
        report.signatures.len()
    )
}

/// The names upstream's SIF library gives data types (what Apptainer's JSON shows).
fn apptainer_type(t: DataType) -> &'static str {
    match t {
        DataType::Deffile => "Def.FILE",
        DataType::EnvVar => "Env.Vars",
        DataType::Labels => "JSON.Labels",
        DataType::Partition => "FS",
        DataType::Signature => "Signature",
        DataType::GenericJson => "JSON.Generic",
        DataType::Generic => "Generic/Raw",
        DataType::CryptoMessage => "Cryptographic Message",
        DataType::Sbom => "SBOM",
        DataType::OciRootIndex => "OCI.RootIndex",
        DataType::OciBlob => "OCI.Blob",
        _ => "Unknown",
    }
}

/// The keys given, then those of the user's and the site's keyring directories (a directory
/// that cannot be read is skipped with a warning). Returns the directories too, for hints.
fn keyring(files: &[PathBuf]) -> Result<(Keyring, Vec<PathBuf>)> {
    let mut keys = Keyring::default();
    for k in files {
        keys.add_file(k).map_err(|e| anyhow!(e))?;
    }
    let mut dirs: Vec<PathBuf> = user_keys().into_iter().collect();
    dirs.push(PathBuf::from(SITE_KEYS));
    for d in &dirs {
        // The user's directory is named by HOME or XDG_CONFIG_HOME: one of another user's, or
        // open to others, would let them vouch for images (as for the user config, issue 20).
        let added = match d.as_path() == Path::new(SITE_KEYS) {
            true => keys.add_dir(d),
            false => keys.add_dir_if(d, &callers_own),
        };
        if let Err(e) = added {
            launcher_runtime::debug::warn(format_args!("{e} (skipped)"));
        }
    }
    Ok((keys, dirs))
}

/// A key file or directory the caller may rely on: the caller's or root's, and writable by
/// no one else (`site_config::trust`, the rule for the user config).
fn callers_own(m: &std::fs::Metadata) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let name_of = |uid: u32| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    };
    let caller = nix::unistd::getuid().as_raw();
    launcher_runtime::gather::site_config::trust(m.uid(), m.mode(), caller, &name_of)
}

/// The image file the checks before a launch read, opened by the first of them; the launch
/// then reads this open file (`LaunchOptions::image_file`), never the path again.
pub type CheckedFile = Option<std::fs::File>;

/// `image` opened into `slot` unless a check did already.
fn open_checked<'s>(image: &Path, slot: &'s mut CheckedFile) -> Result<&'s std::fs::File> {
    if slot.is_none() {
        let f = image_tools::image_file::open(image)
            .map_err(|e| anyhow!("{}: cannot open: {e}", image.display()))?;
        *slot = Some(f);
    }
    slot.as_ref()
        .ok_or_else(|| anyhow!("{}: not opened", image.display()))
}

/// `exec/run/shell --verify`: the image's signatures must verify, as `launcher verify IMAGE`
/// with the same keys would say (every object group covered); else one line saying why.
pub fn check_before_launch(
    image: &Path,
    key_files: &[PathBuf],
    slot: &mut CheckedFile,
) -> Result<()> {
    let shown = image.display().to_string();
    // A directory, like a FIFO, is refused by the open ("a directory, not an image file").
    let file = open_checked(image, slot)?;
    if !is_sif(file, image)? {
        bail!("{shown}: --verify checks SIF signatures, and this is not a SIF image");
    }
    let (keys, dirs) = keyring(key_files)?;
    crate::verify_memo::checked(image, file, &keys, "--verify", |file| {
        let report = launch_report(file, &shown, &keys)?;
        if report.signatures.is_empty() {
            bail!("{shown}: has no signature, so --verify refuses it");
        }
        if let Some(why) = failure(&report) {
            bail!("{shown}: {why}{}", no_key_hint(&keys, &report, &dirs));
        }
        Ok(())
    })
}

/// What a check before a launch finds in the open image: its signatures as `launcher verify`
/// sees them (every object group), and, as uncovered, any object the launch reads that no
/// verified signature covers although it is in no group: the root partition and the OCI
/// config (environment, entrypoint). Those `launcher verify` does not require, as upstream
/// does not; but anyone who can write the image could add a groupless `oci-config` object
/// (`LD_PRELOAD`, `PATH`) to a signed image without breaking its signatures.
fn launch_report(file: &std::fs::File, shown: &str, keys: &Keyring) -> Result<sif_sig::Report> {
    let mut report =
        sif_sig::verify_open(file, shown, keys, Select::Groups).map_err(|e| anyhow!(e))?;
    let sif = SifFile::read_from(file).map_err(|e| anyhow!("{shown}: {e}"))?;
    let covered: std::collections::BTreeSet<u32> = report
        .signatures
        .iter()
        .filter(|s| s.error.is_none())
        .flat_map(|s| s.objects.iter().copied())
        .collect();
    let read = [sif.primary_partition(), sif.oci_config()];
    for d in read.into_iter().flatten() {
        let listed = report.uncovered.iter().any(|(id, _)| *id == d.id);
        if !covered.contains(&d.id) && !listed {
            let what = format!("{}, read by the launch", d.data_type);
            report.uncovered.push((d.id, what));
        }
    }
    report.uncovered.sort_unstable();
    Ok(report)
}

/// The site's signature policy (`signatures` in the site config, docs/admin.md "Signed
/// images"): when it applies to `image`, the image must be a SIF whose every object group is
/// covered by a signature that verifies with a key of the site keyring (the user's keys do not
/// count); else one line naming the image, the rule and the file. `source`: `image` is a
/// docker:// (or other) source, to be converted into an unsigned SIF.
pub fn check_site_policy(
    image: &Path,
    source: bool,
    site: &SiteConfig,
    slot: &mut CheckedFile,
) -> Result<()> {
    let shown = image.display().to_string();
    let paths = match source {
        // A source has no path: only a rule for every image applies to it.
        true => Vec::new(),
        false => {
            let given = std::path::absolute(image)
                .map_err(|e| anyhow!("{shown}: cannot make the path absolute: {e}"))?;
            let mut paths = vec![given];
            paths.extend(std::fs::canonicalize(image).ok());
            paths
        }
    };
    let Some(rule) = site.signature_rule(&paths) else {
        return Ok(());
    };
    let refuse = |why: &str| {
        anyhow!(
            "{shown}: refused by the site's signature policy ({} in {}): {why}",
            rule.rule,
            rule.file
        )
    };
    if source {
        return Err(refuse(
            "a source converted at run time gives an unsigned SIF; run a signed SIF instead",
        ));
    }
    if image.is_dir() {
        return Err(refuse("a directory image cannot carry a signature"));
    }
    let file = open_checked(image, slot)?;
    if !is_sif(file, image)? {
        return Err(refuse(
            "only a SIF image carries a signature, and this is not one",
        ));
    }
    let mut keys = Keyring::default();
    if let Err(e) = keys.add_dir(&rule.keys) {
        return Err(refuse(&format!("the site keyring: {e}")));
    }
    if keys.is_empty() {
        return Err(refuse(&format!(
            "the site keyring {} holds no key (*.pem, *.asc)",
            rule.keys.display()
        )));
    }
    crate::verify_memo::checked(image, file, &keys, "site policy", |file| {
        let report = launch_report(file, &shown, &keys)?;
        if report.signatures.is_empty() {
            return Err(refuse("it has no signature"));
        }
        match failure(&report) {
            Some(why) => Err(refuse(&why)),
            None => Ok(()),
        }
    })
}

/// Whether the open `file` (the image at `image`) starts as a SIF file does.
fn is_sif(file: &std::fs::File, image: &Path) -> Result<bool> {
    Ok(image_tools::sif::is_sif(&head(file, image)?))
}

/// The first bytes of the open `file` (the image at `image`): as many as a format's magic
/// needs.
fn head(file: &std::fs::File, image: &Path) -> Result<Vec<u8>> {
    let mut head = vec![0u8; 64];
    let n = std::os::unix::fs::FileExt::read_at(file, &mut head, 0)
        .map_err(|e| anyhow!("{}: cannot read: {e}", image.display()))?;
    head.truncate(n);
    Ok(head)
}

/// Where keys are looked for, when a signature failed and no key was given at all.
fn no_key_hint(keys: &Keyring, report: &sif_sig::Report, dirs: &[PathBuf]) -> String {
    let failed = report.signatures.iter().any(|s| s.error.is_some());
    match keys.is_empty() && failed {
        true => format!(
            "; no key was given: use --key FILE, or put keys in {}/ or {SITE_KEYS}/",
            dirs[0].display()
        ),
        false => String::new(),
    }
}

/// Why a report does not verify, in one line: the first failed signature, else the first
/// uncovered object.
fn failure(report: &sif_sig::Report) -> Option<String> {
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
        return Some(format!("signature {} not verified: {e}{more}", s.id));
    }
    if let Some((id, what)) = report.uncovered.first() {
        return Some(format!(
            "object {id} ({what}) is not covered by any verified signature{}",
            if report.uncovered.len() > 1 {
                format!(" (nor are {} more objects)", report.uncovered.len() - 1)
            } else {
                String::new()
            }
        ));
    }
    None
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
