//! OpenPGP secret keys for `launcher sign`: the clear-signed form of a SIF signature, as
//! upstream's `integrity.Signer` writes it with an OpenPGP entity (`apptainer sign --keyidx`,
//! `singularity sign` without `--key`): the image metadata JSON, clear-signed with a v4 text
//! signature; the descriptor records the hash and the primary key's fingerprint.

use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, Deserializable, SignedPublicKey, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{
    SecretKey, SecretSubkey, Signature, SignatureConfig, SignatureType, Subpacket, SubpacketData,
    SubpacketType,
};
use pgp::types::{
    KeyDetails, KeyVersion, Password, PlainSecretParams, SecretParams, SigningKey, Timestamp,
};

use super::keys::hex;
use crate::sif::HashType;

/// Environment variable that holds the passphrase of a protected key (Apptainer reads it from
/// the terminal or standard input and has no variable).
pub const PASSPHRASE_ENV: &str = "LAUNCHER_SIGN_PASSPHRASE";

/// An OpenPGP secret key, with the (sub)key that signs picked and, if it was protected,
/// unlocked.
pub(crate) struct PgpSigner {
    key: SignedSecretKey,
    /// `None`: the primary key signs; `Some(i)`: secret subkey `i`.
    signer: Option<usize>,
}

impl PgpSigner {
    /// Reads one OpenPGP secret key, armored (`BEGIN PGP PRIVATE KEY BLOCK`) or binary (as
    /// `gpg --export-secret-keys` writes it with or without `--armor`), picks the key that
    /// signs as gpg does (the newest valid signing subkey, else the primary key if it may
    /// sign) and checks `passphrase` unlocks it. `index`: the key at that place of a file of
    /// several (Apptainer's `--keyidx`). `source` names the file in messages.
    pub(crate) fn read(
        data: &[u8],
        armored: bool,
        passphrase: Option<&str>,
        index: Option<usize>,
        source: &str,
    ) -> Result<PgpSigner, String> {
        let bad = |e: pgp::errors::Error| format!("{source}: not an OpenPGP secret key: {e}");
        let mut keys = Vec::new();
        if armored {
            let text = std::str::from_utf8(data)
                .map_err(|_| format!("{source}: armored key is not text"))?;
            let (iter, _) = SignedSecretKey::from_string_many(text).map_err(bad)?;
            for k in iter {
                keys.push(k.map_err(bad)?);
            }
        } else {
            for k in SignedSecretKey::from_bytes_many(data).map_err(bad)? {
                keys.push(k.map_err(bad)?);
            }
        }
        let key = match (keys.len(), index) {
            (0, _) => return Err(format!("{source}: holds no OpenPGP secret key")),
            (n, Some(i)) if i >= n => {
                return Err(format!(
                    "{source}: holds {n} OpenPGP secret key{}; there is no key index {i} (they count from 0)",
                    if n == 1 { "" } else { "s" }
                ))
            }
            (_, Some(i)) => keys.swap_remove(i),
            (1, None) => keys.remove(0),
            (n, None) => {
                let fps: Vec<String> = keys
                    .iter()
                    .map(|k| hex(k.primary_key.fingerprint().as_bytes()))
                    .collect();
                return Err(format!(
                    "{source}: holds {n} OpenPGP secret keys ({}); choose one with --keyidx N (from 0), or export the one to sign with (gpg --export-secret-keys --armor FINGERPRINT)",
                    fps.join(", ")
                ));
            }
        };
        let fp = hex(key.primary_key.fingerprint().as_bytes());
        if key.primary_key.version() != KeyVersion::V4 {
            // SIF's descriptor holds a 20-byte (v4) fingerprint, and Apptainer reads 20 bytes.
            return Err(format!(
                "{source}: OpenPGP key {fp} is a {:?} key; only v4 keys (what gpg makes) can sign SIF images",
                key.primary_key.version()
            ));
        }
        if !key.details.revocation_signatures.is_empty() {
            return Err(format!("{source}: OpenPGP key {fp} is revoked"));
        }
        let now = Timestamp::now().as_secs();
        let primary_fp = key.primary_key.fingerprint();
        let self_sigs: Vec<&Signature> = key
            .details
            .direct_signatures
            .iter()
            .chain(key.details.users.iter().flat_map(|u| u.signatures.iter()))
            .filter(|s| {
                s.issuer_fingerprint().iter().any(|f| **f == primary_fp)
                    || s.issuer_key_id()
                        .iter()
                        .any(|id| **id == key.primary_key.legacy_key_id())
            })
            .collect();
        if let Some(s) = newest(self_sigs.iter().copied()) {
            if expired(key.primary_key.created_at().as_secs(), s, now) {
                return Err(format!("{source}: OpenPGP key {fp} has expired"));
            }
        }
        let primary_pub = key.primary_key.public_key();
        // gpg's choice: the newest subkey that may sign, is bound, not revoked and not expired.
        let mut signer = None;
        let mut newest_at = 0;
        for (i, sk) in key.secret_subkeys.iter().enumerate() {
            let binding = newest(
                sk.signatures
                    .iter()
                    .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding)),
            );
            let Some(binding) = binding else { continue };
            let revoked = sk
                .signatures
                .iter()
                .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation));
            if revoked
                || !binding.key_flags().sign()
                || !sk.key.algorithm().can_sign()
                || expired(sk.key.created_at().as_secs(), binding, now)
                || sk.verify_bindings(primary_pub).is_err()
            {
                continue;
            }
            let at = sk.key.created_at().as_secs();
            if signer.is_none() || at >= newest_at {
                signer = Some(i);
                newest_at = at;
            }
        }
        if signer.is_none() {
            // The primary key signs when a self-signature allows it, or when none carries key
            // flags at all (older keys: usage follows from the algorithm).
            let has_flags = self_sigs.iter().any(|s| {
                s.config().is_some_and(|c| {
                    c.hashed_subpackets()
                        .any(|p| p.typ() == SubpacketType::KeyFlags)
                })
            });
            let may_sign = if has_flags {
                self_sigs.iter().any(|s| s.key_flags().sign())
            } else {
                key.primary_key.algorithm().can_sign()
            };
            if !may_sign {
                return Err(format!(
                    "{source}: OpenPGP key {fp} has no key that may sign (no signing subkey that is valid, and the primary key is not for signing)"
                ));
            }
        }
        let mut s = PgpSigner { key, signer };
        let encrypted = match s.signer {
            Some(i) => s.key.secret_subkeys[i].key.secret_params().is_encrypted(),
            None => s.key.primary_key.secret_params().is_encrypted(),
        };
        if encrypted {
            let which = s.signing_key_fingerprint();
            let Some(passphrase) = passphrase else {
                return Err(format!(
                    "{source}: the OpenPGP secret key {which} is protected by a passphrase; set {PASSPHRASE_ENV} to it"
                ));
            };
            // Unlocked once (the S2K derivation is deliberately slow), then kept in memory as
            // a plain key for every signature of this run.
            let password = Password::from(passphrase);
            let wrong = || {
                format!(
                    "{source}: wrong passphrase for the OpenPGP secret key {which} (from {PASSPHRASE_ENV})"
                )
            };
            let plain = |_: &_, p: &PlainSecretParams| Ok(SecretParams::Plain(p.clone()));
            match s.signer {
                Some(i) => {
                    let k = &mut s.key.secret_subkeys[i].key;
                    let params = k.unlock(&password, plain).ok().and_then(|r| r.ok());
                    let params = params.ok_or_else(wrong)?;
                    *k = SecretSubkey::new(k.public_key().clone(), params)
                        .map_err(|e| format!("{source}: {e}"))?;
                }
                None => {
                    let k = &mut s.key.primary_key;
                    let params = k.unlock(&password, plain).ok().and_then(|r| r.ok());
                    let params = params.ok_or_else(wrong)?;
                    *k = SecretKey::new(k.public_key().clone(), params)
                        .map_err(|e| format!("{source}: {e}"))?;
                }
            }
        }
        Ok(s)
    }

    pub(crate) fn public(&self) -> SignedPublicKey {
        self.key.to_public_key()
    }

    /// The primary key's fingerprint (lowercase hex), what the descriptor records.
    pub(crate) fn fingerprint(&self) -> String {
        hex(self.key.primary_key.fingerprint().as_bytes())
    }

    /// The fingerprint of the (sub)key that makes the signatures.
    pub(crate) fn signing_key_fingerprint(&self) -> String {
        match self.signer {
            Some(i) => hex(self.key.secret_subkeys[i].key.fingerprint().as_bytes()),
            None => self.fingerprint(),
        }
    }

    /// Whether a subkey, not the primary key, signs.
    pub(crate) fn signs_with_subkey(&self) -> bool {
        self.signer.is_some()
    }

    /// Clear-signs `text` (the image metadata JSON); returns the message as upstream lays
    /// it out (no armor checksum, no newline after the last armor line) and the hash used.
    pub(crate) fn clearsign(&self, text: &str) -> Result<(Vec<u8>, HashType), String> {
        let (out, hash) = match self.signer {
            Some(i) => clearsign_with(&self.key.secret_subkeys[i].key, &Password::empty(), text),
            None => clearsign_with(&self.key.primary_key, &Password::empty(), text),
        }
        .map_err(|e| format!("OpenPGP signing failed: {e}"))?;
        // Check what was written, with the public key a verifier will use.
        let (msg, _) = CleartextSignedMessage::from_string(&out)
            .map_err(|e| format!("OpenPGP signing: the message does not parse back: {e}"))?;
        let verified = match self.signer {
            Some(i) => msg.verify(self.key.secret_subkeys[i].key.public_key()),
            None => msg.verify(self.key.primary_key.public_key()),
        }
        .is_ok();
        if !verified || msg.signed_text() != text {
            return Err("OpenPGP signing: the signature does not verify with the key".into());
        }
        let hash = match hash {
            HashAlgorithm::Sha384 => HashType::Sha384,
            HashAlgorithm::Sha512 => HashType::Sha512,
            _ => HashType::Sha256,
        };
        Ok((out.into_bytes(), hash))
    }
}

/// The signature with the latest creation time.
fn newest<'a>(sigs: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    sigs.max_by_key(|s| s.created().map_or(0, |t| t.as_secs()))
}

/// Whether the key created at `created` has expired by `now`, by the expiry `sig` sets.
fn expired(created: u32, sig: &Signature, now: u32) -> bool {
    sig.key_expiration_time()
        .map(|d| d.as_secs())
        .is_some_and(|d| d > 0 && u64::from(created) + u64::from(d) <= u64::from(now))
}

/// A v4 text signature over `text` (upstream's clear-signing: creation time and issuer in the
/// hashed area), SHA-256 unless the key asks for a longer hash (ECDSA P-384/P-521).
fn clearsign_with<K: SigningKey>(
    key: &K,
    password: &Password,
    text: &str,
) -> pgp::errors::Result<(String, HashAlgorithm)> {
    let hash = match key.hash_alg() {
        h @ (HashAlgorithm::Sha384 | HashAlgorithm::Sha512) => h,
        _ => HashAlgorithm::Sha256,
    };
    let mut config = SignatureConfig::v4(SignatureType::Text, key.algorithm(), hash);
    config.hashed_subpackets = vec![
        Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::now()))?,
        Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint()))?,
    ];
    config.unhashed_subpackets = vec![Subpacket::regular(SubpacketData::IssuerKeyId(
        key.legacy_key_id(),
    ))?];
    let msg = CleartextSignedMessage::new(text, config, key, password)?;
    let mut out = msg.to_armored_string(ArmorOptions {
        headers: None,
        include_checksum: false,
    })?;
    // Upstream's message ends with the END line itself.
    while out.ends_with('\n') {
        out.pop();
    }
    Ok((out, hash))
}
