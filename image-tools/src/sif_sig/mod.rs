//! SIF signatures (format notes §11): verifying the Signature objects Apptainer and
//! SingularityCE write — DSSE envelopes and OpenPGP clear-signed image metadata (sif v2), and
//! the older clear-signed `SIFHASH` digests ("legacy").
//!
//! A v2 signature signs a JSON document with the digests of the header's identity fields,
//! of every descriptor of the signed group (the fields that do not move when the file is
//! rewritten) and of every object's bytes. A legacy signature signs one digest over object
//! bytes only: the header and descriptors are not protected.

#[cfg(fuzzing)]
pub mod fuzzing;
mod keys;
mod sign;
mod sign_pgp;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use sha2::digest::DynDigest;
use sha2::{Sha224, Sha256, Sha384, Sha512, Sha512_224, Sha512_256};

use crate::sif::{DataType, Descriptor, Extra, HashType, Link, SifFile, DESCRIPTOR_SIZE};
pub use keys::{Keyring, PublicKey};
pub use sign::{sign, PrivateKey, SignSelect, Signed};
pub use sign_pgp::PASSPHRASE_ENV;

/// Largest Signature object read (an envelope with a few RSA-4096 signatures is a few KiB).
const MAX_SIGNATURE_SIZE: u64 = 1 << 20;
/// DSSE payload type of SIF image metadata.
const METADATA_MEDIA_TYPE: &str = "application/vnd.sylabs.sif-metadata+json";
const LEGACY_PREFIX: &str = "SIFHASH:\n";
const CLEARSIGN_BEGIN: &str = "-----BEGIN PGP SIGNED MESSAGE-----";

/// Which signatures and objects a verification covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// Every signature; every object in a group must be covered by a verified signature.
    Groups,
    /// Every signature; every object that is not a signature must be covered.
    All,
    /// The signatures of one group (group links, or object links to its members); each member
    /// that is not a signature must be covered.
    Group(u32),
    /// The signatures that cover one object; that object must be covered.
    Object(u32),
}

/// The format of one Signature object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dsse,
    PgpMetadata,
    PgpLegacy,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Dsse => "DSSE",
            Format::PgpMetadata => "OpenPGP",
            Format::PgpLegacy => "legacy OpenPGP, object bytes only",
        })
    }
}

/// What one Signature object says, and whether it holds.
#[derive(Debug, Clone)]
pub struct SignatureReport {
    /// Object ID of the Signature object.
    pub id: u32,
    pub format: Option<Format>,
    /// "group 1", "object 2".
    pub link: String,
    /// Objects the signature covers (IDs, ascending).
    pub objects: Vec<u32>,
    /// One line per signer: "ed25519 SHA256:… (key.pem)".
    pub signers: Vec<String>,
    /// The keys of `signers`, in the same order.
    pub signer_keys: Vec<PublicKey>,
    /// The object whose digest (of its bytes or its descriptor) does not match, when that is
    /// why the signature fails.
    pub mismatch: Option<u32>,
    /// Signatures of a DSSE envelope that no known key verifies, one line each: skipped, as
    /// upstream does, when another signature of the envelope verifies.
    pub skipped: Vec<String>,
    /// Why it does not verify; `None` when it does.
    pub error: Option<String>,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone)]
pub struct Report {
    pub signatures: Vec<SignatureReport>,
    /// Objects that must be covered but no verified signature covers: (ID, type).
    pub uncovered: Vec<(u32, String)>,
}

impl Report {
    /// Every signature verified and every required object is covered.
    pub fn ok(&self) -> bool {
        !self.signatures.is_empty()
            && self.signatures.iter().all(|s| s.error.is_none())
            && self.uncovered.is_empty()
    }
}

/// Opens `path` and checks its signatures against `keys`. Errors only when the file cannot be
/// read as a SIF or the selection names no group of it; a signature that fails is reported in
/// the [`Report`].
pub fn verify(path: &Path, keys: &Keyring, select: Select) -> Result<Report, String> {
    let shown = path.display().to_string();
    let file = crate::image_file::open(path).map_err(|e| format!("{shown}: cannot open: {e}"))?;
    verify_open(&file, &shown, keys, select)
}

/// As [`verify`], of a file already open (`shown` names it in messages): what is checked is
/// that file, whatever its path leads to meanwhile.
pub fn verify_open(
    file: &File,
    shown: &str,
    keys: &Keyring,
    select: Select,
) -> Result<Report, String> {
    let sif = SifFile::read_from(file).map_err(|e| format!("{shown}: {e}"))?;
    let img = Image { sif: &sif, file };
    if let Select::Group(g) = select {
        if !sif.descriptors.iter().any(|d| d.group_id == Some(g)) {
            return Err(format!("{shown}: has no object group {g}"));
        }
    }
    if let Select::Object(id) = select {
        if sif.descriptor(id).is_none() {
            return Err(format!("{shown}: has no object {id}"));
        }
    }
    let mut report = Report {
        signatures: Vec::new(),
        uncovered: Vec::new(),
    };
    let mut covered = BTreeSet::new();
    for d in sif
        .descriptors
        .iter()
        .filter(|d| d.data_type == DataType::Signature)
    {
        let objects = img.linked_objects(d);
        if let Select::Group(g) = select {
            let in_group = match d.link {
                Link::Group(l) => l == g,
                Link::Object(id) => sif.descriptor(id).is_some_and(|o| o.group_id == Some(g)),
                Link::None => false,
            };
            if !in_group {
                continue;
            }
        }
        if let Select::Object(id) = select {
            if !objects.iter().any(|o| o.id == id) {
                continue;
            }
        }
        let mut r = SignatureReport {
            id: d.id,
            format: None,
            link: match d.link {
                Link::Group(g) => format!("group {g}"),
                Link::Object(id) => format!("object {id}"),
                Link::None => "nothing".into(),
            },
            objects: objects.iter().map(|o| o.id).collect(),
            signers: Vec::new(),
            signer_keys: Vec::new(),
            mismatch: None,
            skipped: Vec::new(),
            error: None,
        };
        r.objects.sort_unstable();
        let only = match select {
            Select::Object(id) => Some(id),
            _ => None,
        };
        match img.check_signature(d, &objects, only, keys, &mut r) {
            Ok(()) => covered.extend(r.objects.iter().copied()),
            Err(e) => r.error = Some(e),
        }
        report.signatures.push(r);
    }
    for d in &sif.descriptors {
        let required = d.data_type != DataType::Signature
            && match select {
                Select::Groups => d.group_id.is_some(),
                Select::All => true,
                Select::Group(g) => d.group_id == Some(g),
                Select::Object(id) => d.id == id,
            };
        if required && !covered.contains(&d.id) {
            report.uncovered.push((d.id, d.data_type.to_string()));
        }
    }
    report.uncovered.sort_unstable();
    Ok(report)
}

struct Image<'a> {
    sif: &'a SifFile,
    file: &'a File,
}

/// The signed document of a v2 signature ("image metadata", version 1).
#[derive(Deserialize)]
struct Metadata {
    version: u32,
    header: HeaderMetadata,
    objects: Vec<ObjectMetadata>,
}

#[derive(Deserialize)]
struct HeaderMetadata {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectMetadata {
    relative_id: u32,
    descriptor_digest: String,
    object_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

impl Image<'_> {
    /// The objects a signature covers: the members of a linked group (slot order), or the
    /// linked object.
    fn linked_objects(&self, sig: &Descriptor) -> Vec<&Descriptor> {
        match sig.link {
            Link::Group(g) => self
                .sif
                .descriptors
                .iter()
                .filter(|d| d.group_id == Some(g))
                .collect(),
            Link::Object(id) => self.sif.descriptor(id).into_iter().collect(),
            Link::None => Vec::new(),
        }
    }

    /// `only`: check that one object of a metadata signature, not the whole group (a
    /// signature may list a subset of its group; upstream checks one object this way).
    fn check_signature(
        &self,
        sig: &Descriptor,
        objects: &[&Descriptor],
        only: Option<u32>,
        keys: &Keyring,
        r: &mut SignatureReport,
    ) -> Result<(), String> {
        if objects.is_empty() {
            return Err(format!("links {}, which holds no object", r.link));
        }
        let (hash, fingerprint) = match &sig.extra {
            Extra::Signature { hash, fingerprint } => (*hash, fingerprint.clone()),
            _ => (HashType::from_code(0), None),
        };
        if sig.size > MAX_SIGNATURE_SIZE {
            return Err(format!(
                "is {} bytes, more than the {MAX_SIGNATURE_SIZE} a signature may have",
                sig.size
            ));
        }
        let data = self
            .sif
            .read_object(self.file, sig)
            .map_err(|e| e.to_string())?;
        let text = std::str::from_utf8(&data)
            .map_err(|_| "is not text: neither a DSSE envelope nor an OpenPGP signature")?;
        let signed = if text.starts_with('{') {
            r.format = Some(Format::Dsse);
            check_dsse(text, hash, keys, r)?
        } else if text.starts_with(CLEARSIGN_BEGIN) {
            // Named before the check, so a failure says which kind; the signed text decides.
            r.format = Some(if text.contains("\n\nSIFHASH:\n") {
                Format::PgpLegacy
            } else {
                Format::PgpMetadata
            });
            let plain = check_clearsigned(text, fingerprint.as_deref(), keys, r)?;
            r.format = Some(if plain.starts_with(LEGACY_PREFIX) {
                Format::PgpLegacy
            } else {
                Format::PgpMetadata
            });
            plain
        } else {
            return Err(
                "unrecognised format: neither a DSSE envelope nor an OpenPGP clear-signed message"
                    .into(),
            );
        };
        if r.format == Some(Format::PgpLegacy) {
            return self.check_legacy(&signed, hash, objects, &mut r.mismatch);
        }
        let g = match sig.link {
            Link::Group(g) => g,
            _ => {
                return Err(format!(
                    "signs image metadata but links {}, not a group",
                    r.link
                ))
            }
        };
        self.check_metadata(&signed, g, objects, only, &mut r.mismatch)?;
        if let Some(id) = only {
            r.objects = vec![id];
        }
        Ok(())
    }

    /// Legacy: one digest, of the descriptor's hash type, over the covered objects' bytes.
    fn check_legacy(
        &self,
        plain: &str,
        hash: HashType,
        objects: &[&Descriptor],
        mismatch: &mut Option<u32>,
    ) -> Result<(), String> {
        let hex_digest = plain
            .strip_prefix(LEGACY_PREFIX)
            .unwrap_or(plain)
            .trim_end_matches('\n');
        let alg = match hash {
            HashType::Sha256 => "sha256",
            HashType::Sha384 => "sha384",
            HashType::Sha512 => "sha512",
            other => return Err(format!("unsupported legacy hash {other}")),
        };
        let want = Digest::parse(&format!("{alg}:{hex_digest}"))
            .map_err(|e| format!("legacy digest: {e}"))?;
        let mut h = want.hasher();
        for o in objects {
            self.hash_object(o, h.as_mut())?;
        }
        if h.finalize_reset()[..] != want.value[..] {
            *mismatch = objects.first().map(|o| o.id);
            let ids: Vec<String> = objects.iter().map(|o| o.id.to_string()).collect();
            return Err(format!(
                "object{} {} do{} not match the signed digest",
                if ids.len() > 1 { "s" } else { "" },
                ids.join(", "),
                if ids.len() > 1 { "" } else { "es" }
            ));
        }
        Ok(())
    }

    /// v2: the metadata must list exactly the group's objects, and every digest must match;
    /// with `only`, the metadata must list that object, and the header's and its digests must
    /// match.
    fn check_metadata(
        &self,
        json: &str,
        group: u32,
        objects: &[&Descriptor],
        only: Option<u32>,
        mismatch: &mut Option<u32>,
    ) -> Result<(), String> {
        let md: Metadata =
            serde_json::from_str(json).map_err(|e| format!("signed metadata is not valid: {e}"))?;
        if md.version != 1 {
            return Err(format!(
                "signed metadata version {} is not supported",
                md.version
            ));
        }
        // Upstream's relative IDs count from the group's smallest object ID.
        let min_id = objects.iter().map(|o| o.id).min().unwrap_or(0);
        let mut listed: BTreeMap<u32, &ObjectMetadata> = BTreeMap::new();
        for om in &md.objects {
            let id = min_id.checked_add(om.relative_id).ok_or_else(|| {
                format!(
                    "signed metadata lists relative ID {} out of range",
                    om.relative_id
                )
            })?;
            if listed.insert(id, om).is_some() {
                return Err(format!("signed metadata lists object {id} twice"));
            }
        }
        let members: BTreeSet<u32> = objects.iter().map(|o| o.id).collect();
        let objects: Vec<&Descriptor> = match only {
            Some(id) => {
                if !listed.contains_key(&id) {
                    return Err(format!("object {id} is not signed by it"));
                }
                objects.iter().copied().filter(|o| o.id == id).collect()
            }
            None => {
                if let Some(id) = members.iter().find(|id| !listed.contains_key(id)) {
                    return Err(format!("object {id} of group {group} is not signed"));
                }
                if let Some(id) = listed.keys().find(|id| !members.contains(id)) {
                    return Err(format!("signed object {id} is not in group {group}"));
                }
                objects.to_vec()
            }
        };
        let raw = self.sif.raw_header(self.file).map_err(|e| e.to_string())?;
        let want = Digest::parse(&md.header.digest).map_err(|e| format!("header digest: {e}"))?;
        // Launch script, magic, version and UUID; not the arch, times, counts or offsets.
        let mut h = want.hasher();
        h.update(&raw[0..45]);
        h.update(&raw[48..64]);
        if h.finalize_reset()[..] != want.value[..] {
            return Err("header does not match the signed digest".into());
        }
        for o in &objects {
            let om = listed[&o.id];
            let raw = self
                .sif
                .raw_descriptor(self.file, o.id)
                .map_err(|e| e.to_string())?;
            let want = Digest::parse(&om.descriptor_digest)
                .map_err(|e| format!("descriptor digest of object {}: {e}", o.id))?;
            let mut h = want.hasher();
            h.update(&integrity_fields(&raw, o.id - min_id));
            if h.finalize_reset()[..] != want.value[..] {
                *mismatch = Some(o.id);
                return Err(format!(
                    "descriptor of object {} does not match the signed digest",
                    o.id
                ));
            }
            let want = Digest::parse(&om.object_digest)
                .map_err(|e| format!("object digest of object {}: {e}", o.id))?;
            let mut h = want.hasher();
            self.hash_object(o, h.as_mut())?;
            if h.finalize_reset()[..] != want.value[..] {
                *mismatch = Some(o.id);
                return Err(format!("object {} does not match the signed digest", o.id));
            }
        }
        Ok(())
    }

    fn hash_object(&self, d: &Descriptor, h: &mut dyn DynDigest) -> Result<(), String> {
        let mut r = self
            .sif
            .object_reader(self.file, d)
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| format!("read object {}: {e}", d.id))?;
            if n == 0 {
                return Ok(());
            }
            h.update(&buf[..n]);
        }
    }
}

/// The 557 bytes of a descriptor slot that v2 signatures cover, in upstream's order: type,
/// used, relative ID, raw link, size, created, UID, GID, name, extra. Not the absolute ID,
/// group, offset, padded size or modified time.
fn integrity_fields(raw: &[u8; DESCRIPTOR_SIZE], relative_id: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(557);
    v.extend_from_slice(&raw[0..5]);
    v.extend_from_slice(&relative_id.to_le_bytes());
    v.extend_from_slice(&raw[13..17]);
    v.extend_from_slice(&raw[25..33]);
    v.extend_from_slice(&raw[41..49]);
    v.extend_from_slice(&raw[57..DESCRIPTOR_SIZE]);
    v
}

/// A digest as the metadata spells it: `alg:hex`.
struct Digest {
    alg: &'static str,
    value: Vec<u8>,
}

impl Digest {
    fn parse(s: &str) -> Result<Digest, String> {
        let (alg, hex_value) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}' is not alg:hex"))?;
        let (alg, len) = match alg {
            "sha224" => ("sha224", 28),
            "sha256" => ("sha256", 32),
            "sha384" => ("sha384", 48),
            "sha512" => ("sha512", 64),
            "sha512_224" => ("sha512_224", 28),
            "sha512_256" => ("sha512_256", 32),
            other => return Err(format!("unsupported digest algorithm '{other}'")),
        };
        let value = decode_hex(hex_value).ok_or_else(|| format!("'{s}' is not hex"))?;
        if value.len() != len {
            return Err(format!("'{s}' has {} bytes, {alg} has {len}", value.len()));
        }
        Ok(Digest { alg, value })
    }

    fn hasher(&self) -> Box<dyn DynDigest> {
        match self.alg {
            "sha224" => Box::new(Sha224::default()),
            "sha384" => Box::new(Sha384::default()),
            "sha512" => Box::new(Sha512::default()),
            "sha512_224" => Box::new(Sha512_224::default()),
            "sha512_256" => Box::new(Sha512_256::default()),
            _ => Box::new(Sha256::default()),
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// DSSE pre-authentication encoding (the bytes each signature signs).
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

fn b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    STANDARD.decode(s).or_else(|_| URL_SAFE.decode(s)).ok()
}

/// Checks a DSSE envelope as upstream does (sigstore's DSSE verifier with threshold 1): it
/// holds when at least one of its signatures verifies with a known key. A signature is tried
/// with each key not yet accepted (only the key whose fingerprint is the signature's `keyid`,
/// when it names one); one that no key verifies is skipped and noted in `skipped`. A signature
/// or payload that is not base64 fails the whole envelope. Returns the payload.
fn check_dsse(
    text: &str,
    hash: HashType,
    keys: &Keyring,
    r: &mut SignatureReport,
) -> Result<String, String> {
    let skipped = &mut r.skipped;
    let env: Envelope =
        serde_json::from_str(text).map_err(|e| format!("DSSE envelope is not valid: {e}"))?;
    if env.payload_type != METADATA_MEDIA_TYPE {
        return Err(format!(
            "DSSE payload type is '{}', not {METADATA_MEDIA_TYPE}",
            env.payload_type
        ));
    }
    if env.signatures.is_empty() {
        return Err("DSSE envelope holds no signature".into());
    }
    let payload = b64(&env.payload).ok_or("DSSE payload is not base64")?;
    let msg = pae(&env.payload_type, &payload);
    // Each key counts once, as upstream removes a provider once it accepted a signature.
    let mut unused: Vec<&PublicKey> = keys.keys.iter().filter(|k| k.pgp().is_none()).collect();
    for (i, s) in env.signatures.iter().enumerate() {
        let n = i + 1;
        let sig = b64(&s.sig).ok_or_else(|| format!("DSSE signature {n} is not base64"))?;
        let who = if s.keyid.is_empty() {
            "no key ID".to_string()
        } else {
            s.keyid.clone()
        };
        let mut why = Vec::new();
        let mut tried = false;
        let found = unused.iter().position(|k| {
            if !s.keyid.is_empty() && k.fingerprint() != s.keyid {
                return false;
            }
            tried = true;
            match k.verify_dsse(hash, &msg, &sig) {
                Ok(()) => true,
                Err(e) => {
                    why.push(format!("{e} with {}", k.source));
                    false
                }
            }
        });
        match found {
            Some(at) => {
                let k = unused.remove(at);
                r.signers.push(k.describe());
                r.signer_keys.push(k.clone());
            }
            None if !tried => skipped.push(format!("DSSE signature {n} ({who}): no known key")),
            None => skipped.push(format!("DSSE signature {n} ({who}): {}", why.join("; "))),
        }
    }
    if r.signers.is_empty() {
        return Err(format!(
            "no DSSE signature verifies with a known key: {}",
            skipped.join("; ")
        ));
    }
    String::from_utf8(payload).map_err(|_| "DSSE payload is not text".into())
}

/// Checks an OpenPGP clear-signed message: every signature must verify with a known OpenPGP
/// key, whose primary fingerprint must be the one the descriptor records (if it records one).
/// Returns the signed text (dash-unescaped, `\n` line ends).
fn check_clearsigned(
    text: &str,
    fingerprint: Option<&str>,
    keys: &Keyring,
    r: &mut SignatureReport,
) -> Result<String, String> {
    use pgp::composed::CleartextSignedMessage;
    use pgp::crypto::hash::HashAlgorithm;
    check_armor_crc(text)?;
    let (msg, _) = CleartextSignedMessage::from_string(text)
        .map_err(|e| format!("OpenPGP clear-signed message is not valid: {e}"))?;
    if msg.signatures().is_empty() {
        return Err("OpenPGP message holds no signature".into());
    }
    let signed = msg.signed_text();
    for (i, s) in msg.signatures().iter().enumerate() {
        let n = i + 1;
        match s.hash_alg() {
            Some(
                HashAlgorithm::Sha224
                | HashAlgorithm::Sha256
                | HashAlgorithm::Sha384
                | HashAlgorithm::Sha512,
            ) => {}
            other => {
                return Err(format!(
                    "OpenPGP signature {n}: hash {other:?} is not accepted"
                ))
            }
        }
        let mut found = None;
        for k in keys.keys.iter() {
            let Some(pk) = k.pgp() else { continue };
            let ok = s.verify(&pk.primary_key, signed.as_bytes()).is_ok()
                || pk
                    .public_subkeys
                    .iter()
                    .any(|sk| s.verify(&sk.key, signed.as_bytes()).is_ok());
            if ok {
                found = Some(k);
                break;
            }
        }
        let k = found.ok_or_else(|| format!("OpenPGP signature {n}: no known key verifies it"))?;
        if let Some(fp) = fingerprint {
            if k.fingerprint() != fp {
                return Err(format!(
                    "descriptor names signer {fp}, but the signature is by {}",
                    k.fingerprint()
                ));
            }
        }
        r.signers.push(k.describe());
        r.signer_keys.push(k.clone());
    }
    // The plaintext as the signer wrote it: dash-escaping removed.
    let mut out = String::with_capacity(msg.text().len() + 1);
    for line in msg.text().split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        out.push_str(line.strip_prefix("- ").unwrap_or(line));
        out.push('\n');
    }
    Ok(out)
}

/// The signature armor's CRC24 line (`=XXXX`), when there is one, must match its data, as
/// upstream's Go reader checks (rpgp skips it, as RFC 9580 allows): otherwise a changed
/// checksum would go unnoticed. Current writers leave the line out.
fn check_armor_crc(text: &str) -> Result<(), String> {
    let Some(start) = text.find("-----BEGIN PGP SIGNATURE-----") else {
        return Ok(()); // the parser reports the missing armor
    };
    let armor = &text[start..];
    let mut body = String::new();
    let mut crc_line = None;
    let mut in_body = false;
    for line in armor.lines().skip(1) {
        let line = line.trim_end();
        if line.starts_with("-----END") {
            break;
        }
        if !in_body {
            // Armor headers end at the first empty line.
            in_body = line.is_empty();
            continue;
        }
        match line.strip_prefix('=') {
            Some(c) => crc_line = Some(c),
            None => body.push_str(line),
        }
    }
    let Some(crc_text) = crc_line else {
        return Ok(());
    };
    let bad = || "OpenPGP signature armor: CRC24 checksum does not match".to_string();
    let data = b64(&body).ok_or_else(bad)?;
    let want = b64(crc_text).filter(|c| c.len() == 3).ok_or_else(bad)?;
    let mut crc: u32 = 0xB7_04CE;
    for b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4CFB;
            }
        }
    }
    let crc = crc & 0xFF_FFFF;
    if crc.to_be_bytes()[1..] != want[..] {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
