//! Signing SIF images as upstream's `integrity.Signer` does: one Signature object per object
//! group, in no group, linked to the group, its bytes signing the image metadata JSON (format
//! notes §11). With a PEM key pair (`apptainer sign --key`, `singularity sign --key`): a DSSE
//! envelope, hash type SHA-256, no fingerprint. With an OpenPGP secret key (`apptainer sign
//! --keyidx`): an OpenPGP clear-signed message, the hash it used and the primary key's
//! fingerprint in the descriptor.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::keys::{hex, KeyKind, MAX_KEY_FILE};
use super::sign_pgp::PgpSigner;
use super::{integrity_fields, pae, Format, PublicKey, METADATA_MEDIA_TYPE};
use crate::sif::{
    add_objects, DataType, Descriptor, Extra, HashType, Link, ObjectData, ObjectSpec, SifFile,
};

/// A private key that signs: a PEM key (DSSE envelopes) or an OpenPGP secret key
/// (clear-signed messages).
pub struct PrivateKey {
    kind: PrivateKind,
    /// The matching public key (its fingerprint is the envelope's `keyid`, or the primary
    /// OpenPGP fingerprint the descriptor records).
    public: PublicKey,
}

enum PrivateKind {
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Pgp(Box<PgpSigner>),
}

impl PrivateKey {
    /// Reads a private key, its kind told by its content: an OpenPGP secret key, armored
    /// (`BEGIN PGP PRIVATE KEY BLOCK`) or binary, unlocked with `passphrase` when it is
    /// protected; or a PEM private key (see [`PrivateKey::from_pem`]). `index`: the key at
    /// that place (from 0) of a file of several OpenPGP secret keys, as Apptainer's keyring
    /// (`--keyidx`); without it the file must hold one key.
    pub fn from_file(
        path: &Path,
        passphrase: Option<&str>,
        index: Option<usize>,
    ) -> Result<PrivateKey, String> {
        let shown = path.display().to_string();
        let f = File::open(path).map_err(|e| format!("{shown}: cannot open key file: {e}"))?;
        let mut data = Vec::new();
        f.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("{shown}: cannot read key file: {e}"))?;
        if data.len() as u64 > MAX_KEY_FILE {
            return Err(format!(
                "{shown}: key file is larger than {MAX_KEY_FILE} bytes"
            ));
        }
        Self::from_bytes(&data, passphrase, index, &shown)
    }

    /// As [`PrivateKey::from_file`], from the file's bytes; `source` names it in messages.
    pub fn from_bytes(
        data: &[u8],
        passphrase: Option<&str>,
        index: Option<usize>,
        source: &str,
    ) -> Result<PrivateKey, String> {
        // A binary OpenPGP key starts with a Secret-Key packet (tag 5: old format 0x94..0x97,
        // new format 0xC5), a public one with a Public-Key packet (tag 6).
        match data.first() {
            Some(0x94..=0x97 | 0xC5) => {
                return Self::from_pgp(data, false, passphrase, index, source)
            }
            Some(0x98..=0x9B | 0xC6) => {
                return Err(format!(
                    "{source}: is an OpenPGP public key; signing needs the secret key (gpg --export-secret-keys --armor)"
                ))
            }
            _ => {}
        }
        let Ok(text) = std::str::from_utf8(data) else {
            return Err(format!(
                "{source}: not a PEM private key or an OpenPGP secret key"
            ));
        };
        if text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----") {
            Self::from_pgp(data, true, passphrase, index, source)
        } else if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            Err(format!(
                "{source}: is an OpenPGP public key; signing needs the secret key (gpg --export-secret-keys --armor)"
            ))
        } else if index.is_some() {
            Err(format!(
                "{source}: a key index selects an OpenPGP secret key in a keyring, and this is not one"
            ))
        } else {
            Self::from_pem(text, source)
        }
    }

    fn from_pgp(
        data: &[u8],
        armored: bool,
        passphrase: Option<&str>,
        index: Option<usize>,
        source: &str,
    ) -> Result<PrivateKey, String> {
        let signer = PgpSigner::read(data, armored, passphrase, index, source)?;
        let public = PublicKey {
            source: source.to_string(),
            kind: KeyKind::Pgp(Box::new(signer.public())),
        };
        Ok(PrivateKey {
            kind: PrivateKind::Pgp(Box::new(signer)),
            public,
        })
    }

    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`: Ed25519, RSA, ECDSA P-256/P-384),
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`). Encrypted keys are
    /// refused. `source` names the file in messages.
    pub fn from_pem(text: &str, source: &str) -> Result<PrivateKey, String> {
        let kind = if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || text.contains("Proc-Type: 4,ENCRYPTED")
        {
            return Err(format!(
                "{source}: encrypted private keys are not supported (write a decrypted copy with `openssl pkey`)"
            ));
        } else if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
            PrivateKind::Rsa(Box::new(
                rsa::RsaPrivateKey::from_pkcs1_pem(text)
                    .map_err(|e| format!("{source}: not an RSA private key: {e}"))?,
            ))
        } else if let Some(block) = pem_block(text, "EC PRIVATE KEY") {
            // `openssl ecparam -genkey` writes an EC PARAMETERS block first.
            if let Ok(k) = p256::SecretKey::from_sec1_pem(block) {
                PrivateKind::P256(k.into())
            } else if let Ok(k) = p384::SecretKey::from_sec1_pem(block) {
                PrivateKind::P384(k.into())
            } else {
                return Err(format!(
                    "{source}: unsupported EC private key (P-256 and P-384 are supported)"
                ));
            }
        } else if text.contains("-----BEGIN PRIVATE KEY-----") {
            if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(text) {
                PrivateKind::Ed25519(k)
            } else if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(text) {
                PrivateKind::Rsa(Box::new(k))
            } else if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(text) {
                PrivateKind::P256(k)
            } else if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(text) {
                PrivateKind::P384(k)
            } else {
                return Err(format!(
                    "{source}: unsupported private key (Ed25519, RSA, ECDSA P-256 and P-384 are supported)"
                ));
            }
        } else if text.contains("PUBLIC KEY-----") {
            return Err(format!(
                "{source}: is a public key; signing needs the private key"
            ));
        } else {
            return Err(format!(
                "{source}: not a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) or an OpenPGP secret key"
            ));
        };
        let public = match &kind {
            PrivateKind::Ed25519(k) => KeyKind::Ed25519(k.verifying_key()),
            PrivateKind::Rsa(k) => KeyKind::Rsa(k.to_public_key()),
            PrivateKind::P256(k) => KeyKind::P256(*k.verifying_key()),
            PrivateKind::P384(k) => KeyKind::P384(*k.verifying_key()),
            PrivateKind::Pgp(s) => KeyKind::Pgp(Box::new(s.public())),
        };
        Ok(PrivateKey {
            kind,
            public: PublicKey {
                source: source.to_string(),
                kind: public,
            },
        })
    }

    /// The matching public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The signature format this key writes.
    pub fn format(&self) -> Format {
        match self.kind {
            PrivateKind::Pgp(_) => Format::PgpMetadata,
            _ => Format::Dsse,
        }
    }

    /// For an OpenPGP key that signs with a subkey: that subkey's fingerprint.
    pub fn signing_subkey(&self) -> Option<String> {
        match &self.kind {
            PrivateKind::Pgp(s) if s.signs_with_subkey() => Some(s.signing_key_fingerprint()),
            _ => None,
        }
    }

    /// The Signature object's bytes for image metadata `payload`, the hash type and signer
    /// fingerprint its descriptor records.
    fn sign_metadata(&self, payload: &[u8]) -> Result<(Vec<u8>, HashType, Option<String>), String> {
        if let PrivateKind::Pgp(s) = &self.kind {
            let text = std::str::from_utf8(payload).map_err(|_| "metadata is not text")?;
            let (bytes, hash) = s.clearsign(text)?;
            return Ok((bytes, hash, Some(s.fingerprint())));
        }
        let sig = self.sign(&pae(METADATA_MEDIA_TYPE, payload))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let env = EnvelopeOut {
            payload_type: METADATA_MEDIA_TYPE,
            payload: b64.encode(payload),
            signatures: vec![SignatureOut {
                keyid: self.public.fingerprint(),
                sig: b64.encode(sig),
            }],
        };
        let bytes = serde_json::to_vec(&env).map_err(|e| format!("encode envelope: {e}"))?;
        Ok((bytes, HashType::Sha256, None))
    }

    /// Signs the DSSE pre-authentication encoding `msg` as sigstore's signers do with SHA-256:
    /// Ed25519 over `msg` itself, RSA PKCS#1 v1.5 and ECDSA (ASN.1 DER) over its SHA-256.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        use ed25519_dalek::Signer as _;
        let digest = Sha256::digest(msg);
        Ok(match &self.kind {
            PrivateKind::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
            PrivateKind::Rsa(k) => k
                .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest)
                .map_err(|e| format!("RSA signing failed: {e}"))?,
            PrivateKind::P256(k) => {
                use p256::ecdsa::signature::hazmat::PrehashSigner;
                let s: p256::ecdsa::Signature = k
                    .sign_prehash(&digest)
                    .map_err(|e| format!("ECDSA signing failed: {e}"))?;
                s.to_der().as_bytes().to_vec()
            }
            PrivateKind::P384(k) => {
                use p384::ecdsa::signature::hazmat::PrehashSigner;
                let s: p384::ecdsa::Signature = k
                    .sign_prehash(&digest)
                    .map_err(|e| format!("ECDSA signing failed: {e}"))?;
                s.to_der().as_bytes().to_vec()
            }
            PrivateKind::Pgp(_) => {
                return Err("an OpenPGP key does not sign DSSE envelopes".into());
            }
        })
    }
}

/// The text of the first PEM block labelled `label`, markers included.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = start + text[start..].find(&end)? + end.len();
    Some(&text[start..stop])
}

/// What to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignSelect {
    /// Every object group, one signature each.
    Groups,
    /// One object group.
    Group(u32),
    /// One object (signed in a signature of its group that lists only it).
    Object(u32),
}

/// One Signature object written.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Object ID of the new Signature object.
    pub id: u32,
    pub group: u32,
    /// Objects it covers.
    pub objects: Vec<u32>,
}

#[derive(Serialize)]
struct MetadataOut {
    version: u32,
    header: HeaderOut,
    objects: Vec<ObjectOut>,
}

#[derive(Serialize)]
struct HeaderOut {
    digest: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectOut {
    relative_id: u32,
    descriptor_digest: String,
    object_digest: String,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    #[serde(rename = "payloadType")]
    payload_type: &'a str,
    payload: String,
    signatures: Vec<SignatureOut>,
}

#[derive(Serialize)]
struct SignatureOut {
    keyid: String,
    sig: String,
}

/// Adds a signature by `key` (DSSE or OpenPGP, by the key's kind) for each selected object group of the SIF at `path`. The
/// image is rewritten through a temporary file beside it and renamed into place, so it is
/// either fully signed or untouched.
pub fn sign(path: &Path, key: &PrivateKey, select: SignSelect) -> Result<Vec<Signed>, String> {
    let shown = path.display().to_string();
    let file = crate::image_file::open(path).map_err(|e| format!("{shown}: cannot open: {e}"))?;
    let mut head = [0u8; 64];
    let n = file
        .take(64)
        .read(&mut head)
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let file = File::open(path).map_err(|e| format!("{shown}: cannot open: {e}"))?;
    if !crate::sif::is_sif(&head[..n]) {
        return Err(format!(
            "{shown}: not a SIF image; only SIF images can be signed"
        ));
    }
    let sif = SifFile::read_from(&file).map_err(|e| format!("{shown}: {e}"))?;
    let members = |g: u32| -> Vec<&Descriptor> {
        let mut v: Vec<&Descriptor> = sif
            .descriptors
            .iter()
            .filter(|d| d.group_id == Some(g))
            .collect();
        v.sort_by_key(|d| d.id);
        v
    };
    // (group, objects to sign)
    let mut plan: Vec<(u32, Vec<&Descriptor>)> = Vec::new();
    match select {
        SignSelect::Groups => {
            let mut groups: Vec<u32> = sif.descriptors.iter().filter_map(|d| d.group_id).collect();
            groups.sort_unstable();
            groups.dedup();
            if groups.is_empty() {
                return Err(format!("{shown}: has no object group to sign"));
            }
            for g in groups {
                plan.push((g, members(g)));
            }
        }
        SignSelect::Group(g) => {
            let m = members(g);
            if m.is_empty() {
                return Err(format!("{shown}: has no object group {g}"));
            }
            plan.push((g, m));
        }
        SignSelect::Object(id) => {
            let d = sif
                .descriptor(id)
                .ok_or_else(|| format!("{shown}: has no object {id}"))?;
            let g = d.group_id.ok_or_else(|| {
                format!("{shown}: object {id} is in no object group; only grouped objects can be signed")
            })?;
            plan.push((g, vec![d]));
        }
    }
    let raw_header = sif.raw_header(&file).map_err(|e| format!("{shown}: {e}"))?;
    let mut h = Sha256::new();
    h.update(&raw_header[0..45]);
    h.update(&raw_header[48..64]);
    let header_digest = format!("sha256:{}", hex(&h.finalize()));
    let mut specs = Vec::new();
    let mut signed = Vec::new();
    for (g, objects) in &plan {
        // Relative IDs count from the smallest ID of the whole group.
        let min_id = members(*g).iter().map(|d| d.id).min().unwrap_or(0);
        let mut out = Vec::new();
        for d in objects {
            let raw = sif
                .raw_descriptor(&file, d.id)
                .map_err(|e| format!("{shown}: {e}"))?;
            let rel = d.id - min_id;
            let descriptor_digest = format!(
                "sha256:{}",
                hex(&Sha256::digest(integrity_fields(&raw, rel)))
            );
            let mut h = Sha256::new();
            let mut r = sif
                .object_reader(&file, d)
                .map_err(|e| format!("{shown}: {e}"))?;
            std::io::copy(&mut r, &mut h)
                .map_err(|e| format!("{shown}: read object {}: {e}", d.id))?;
            out.push(ObjectOut {
                relative_id: rel,
                descriptor_digest,
                object_digest: format!("sha256:{}", hex(&h.finalize())),
            });
        }
        let md = MetadataOut {
            version: 1,
            header: HeaderOut {
                digest: header_digest.clone(),
            },
            objects: out,
        };
        let payload = serde_json::to_vec(&md).map_err(|e| format!("encode metadata: {e}"))?;
        let (bytes, hash, fingerprint) = key.sign_metadata(&payload)?;
        let mut spec = ObjectSpec::new(DataType::Signature, ObjectData::Bytes(bytes));
        spec.group_id = None;
        spec.link = Link::Group(*g);
        spec.extra = Extra::Signature { hash, fingerprint };
        specs.push(spec);
        signed.push(Signed {
            id: 0,
            group: *g,
            objects: objects.iter().map(|d| d.id).collect(),
        });
    }
    drop(file);
    let ids = add_objects(path, &specs, None).map_err(|e| format!("{shown}: {e}"))?;
    for (s, id) in signed.iter_mut().zip(ids) {
        s.id = id;
    }
    Ok(signed)
}
