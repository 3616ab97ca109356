//! Public keys that verify SIF signatures: PEM public keys (Ed25519, RSA, ECDSA P-256/P-384)
//! for DSSE envelopes, armored OpenPGP public keys for clear-signed signatures.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::sif::HashType;

/// Decides whether a key file or directory may be used, from its metadata: `Err(why not)`.
pub type Trust = dyn Fn(&fs::Metadata) -> Result<(), String>;

/// Largest key file read (a keyring of a few keys is a few KiB).
pub(crate) const MAX_KEY_FILE: u64 = 1 << 20;

/// One public key, with where it came from.
#[derive(Clone)]
pub struct PublicKey {
    /// The file it was read from.
    pub source: String,
    pub(crate) kind: KeyKind,
}

#[derive(Clone)]
pub(crate) enum KeyKind {
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Pgp(Box<SignedPublicKey>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why a signature did not verify with a key.
pub(crate) type VerifyError = String;

impl PublicKey {
    /// Key type, e.g. "ed25519", "rsa-4096", "ecdsa-p256", "pgp".
    pub fn key_type(&self) -> String {
        match &self.kind {
            KeyKind::Ed25519(_) => "ed25519".into(),
            KeyKind::Rsa(k) => format!("rsa-{}", k.size() * 8),
            KeyKind::P256(_) => "ecdsa-p256".into(),
            KeyKind::P384(_) => "ecdsa-p384".into(),
            KeyKind::Pgp(_) => "pgp".into(),
        }
    }

    /// The fingerprint signers are named by: the OpenSSH SHA-256 form (`SHA256:<base64>`, what
    /// upstream DSSE envelopes carry as `keyid`) for PEM keys, the primary key's fingerprint
    /// (lowercase hex) for OpenPGP keys.
    pub fn fingerprint(&self) -> String {
        match &self.kind {
            KeyKind::Pgp(k) => hex(k.primary_key.fingerprint().as_bytes()),
            _ => {
                let blob = self.ssh_blob();
                let digest = Sha256::digest(&blob);
                format!(
                    "SHA256:{}",
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
                )
            }
        }
    }

    /// Every byte of the key (an OpenPGP key's packets, its subkeys included; a PEM key's
    /// public parameters): what a remembered verification by this key must change with, where
    /// the fingerprint names only the primary key. `None` if it cannot be written out.
    pub fn material(&self) -> Option<Vec<u8>> {
        match &self.kind {
            KeyKind::Pgp(k) => {
                use pgp::ser::Serialize;
                k.to_bytes().ok()
            }
            _ => Some(self.ssh_blob()),
        }
    }

    /// The primary user ID of an OpenPGP key (the one marked primary, else the first), as
    /// Apptainer names a signing entity; `None` for other keys.
    pub fn user_id(&self) -> Option<String> {
        let KeyKind::Pgp(k) = &self.kind else {
            return None;
        };
        let user = k
            .details
            .users
            .iter()
            .find(|u| u.is_primary())
            .or_else(|| k.details.users.first())?;
        Some(String::from_utf8_lossy(user.id.id()).into_owned())
    }

    /// "ed25519 SHA256:… (file)".
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({})",
            self.key_type(),
            self.fingerprint(),
            self.source
        )
    }

    /// The OpenSSH wire encoding of the public key (RFC 4253 §6.6, RFC 5656 §3.1).
    fn ssh_blob(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, b: &[u8]) {
            // Key parts are a few hundred bytes at most.
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        fn mpint(out: &mut Vec<u8>, b: &[u8]) {
            let b = match b.iter().position(|&x| x != 0) {
                Some(i) => &b[i..],
                None => &[],
            };
            if b.first().is_some_and(|&x| x & 0x80 != 0) {
                let mut v = vec![0u8];
                v.extend_from_slice(b);
                string(out, &v);
            } else {
                string(out, b);
            }
        }
        let mut out = Vec::new();
        match &self.kind {
            KeyKind::Ed25519(k) => {
                string(&mut out, b"ssh-ed25519");
                string(&mut out, k.as_bytes());
            }
            KeyKind::Rsa(k) => {
                string(&mut out, b"ssh-rsa");
                mpint(&mut out, &k.e().to_bytes_be());
                mpint(&mut out, &k.n().to_bytes_be());
            }
            KeyKind::P256(k) => {
                string(&mut out, b"ecdsa-sha2-nistp256");
                string(&mut out, b"nistp256");
                string(&mut out, k.to_encoded_point(false).as_bytes());
            }
            KeyKind::P384(k) => {
                string(&mut out, b"ecdsa-sha2-nistp384");
                string(&mut out, b"nistp384");
                string(&mut out, k.to_encoded_point(false).as_bytes());
            }
            KeyKind::Pgp(_) => {}
        }
        out
    }

    /// Verifies a DSSE signature `sig` over `msg` (the PAE). RSA and ECDSA hash `msg` with
    /// the descriptor's hash; Ed25519 signs `msg` itself.
    pub(crate) fn verify_dsse(
        &self,
        hash: HashType,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), VerifyError> {
        match &self.kind {
            KeyKind::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(sig)
                    .map_err(|e| format!("bad Ed25519 signature: {e}"))?;
                k.verify_strict(msg, &sig)
                    .map_err(|_| "Ed25519 signature does not match".to_string())
            }
            KeyKind::Rsa(k) => {
                let (scheme, digest) = match hash {
                    HashType::Sha256 => (
                        rsa::Pkcs1v15Sign::new::<Sha256>(),
                        Sha256::digest(msg).to_vec(),
                    ),
                    HashType::Sha384 => (
                        rsa::Pkcs1v15Sign::new::<Sha384>(),
                        Sha384::digest(msg).to_vec(),
                    ),
                    HashType::Sha512 => (
                        rsa::Pkcs1v15Sign::new::<Sha512>(),
                        Sha512::digest(msg).to_vec(),
                    ),
                    other => return Err(format!("unsupported hash {other} for RSA")),
                };
                k.verify(scheme, &digest, sig)
                    .map_err(|_| "RSA signature does not match".to_string())
            }
            KeyKind::P256(k) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let sig = p256::ecdsa::DerSignature::from_bytes(sig)
                    .map_err(|e| format!("bad ECDSA signature: {e}"))?;
                let sig = p256::ecdsa::Signature::try_from(sig)
                    .map_err(|e| format!("bad ECDSA signature: {e}"))?;
                k.verify_prehash(&prehash(hash, msg)?, &sig)
                    .map_err(|_| "ECDSA signature does not match".to_string())
            }
            KeyKind::P384(k) => {
                use p384::ecdsa::signature::hazmat::PrehashVerifier;
                let sig = p384::ecdsa::DerSignature::from_bytes(sig)
                    .map_err(|e| format!("bad ECDSA signature: {e}"))?;
                let sig = p384::ecdsa::Signature::try_from(sig)
                    .map_err(|e| format!("bad ECDSA signature: {e}"))?;
                k.verify_prehash(&prehash(hash, msg)?, &sig)
                    .map_err(|_| "ECDSA signature does not match".to_string())
            }
            KeyKind::Pgp(_) => Err("an OpenPGP key does not verify DSSE envelopes".into()),
        }
    }

    pub(crate) fn pgp(&self) -> Option<&SignedPublicKey> {
        match &self.kind {
            KeyKind::Pgp(k) => Some(k),
            _ => None,
        }
    }
}

fn prehash(hash: HashType, msg: &[u8]) -> Result<Vec<u8>, VerifyError> {
    Ok(match hash {
        HashType::Sha256 => Sha256::digest(msg).to_vec(),
        HashType::Sha384 => Sha384::digest(msg).to_vec(),
        HashType::Sha512 => Sha512::digest(msg).to_vec(),
        other => return Err(format!("unsupported hash {other}")),
    })
}

pub(crate) fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// The keys a verification may use.
#[derive(Default)]
pub struct Keyring {
    pub keys: Vec<PublicKey>,
}

impl Keyring {
    /// Adds the keys of one file: a PEM public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC
    /// KEY`) or armored OpenPGP public keys (`BEGIN PGP PUBLIC KEY BLOCK`, one or more).
    pub fn add_file(&mut self, path: &Path) -> Result<(), String> {
        self.add_file_if(path, &path.display().to_string(), &|_| Ok(()))
    }

    /// As [`Keyring::add_file`], if `trust` accepts the opened file's metadata (what is read
    /// is the file that was checked); else an error naming the file (as `shown`) and why.
    fn add_file_if(&mut self, path: &Path, shown: &str, trust: &Trust) -> Result<(), String> {
        let f = fs::File::open(path).map_err(|e| format!("{shown}: cannot open key file: {e}"))?;
        let meta = f
            .metadata()
            .map_err(|e| format!("{shown}: cannot read key file: {e}"))?;
        trust(&meta).map_err(|why| format!("{shown}: not used as a key: {why}"))?;
        let mut text = String::new();
        f.take(MAX_KEY_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{shown}: cannot read key file: {e}"))?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(format!(
                "{shown}: key file is larger than {MAX_KEY_FILE} bytes"
            ));
        }
        self.add_text(&text, shown)
    }

    /// As [`Keyring::add_file`], from the file's text; `source` names it in messages.
    pub fn add_text(&mut self, text: &str, source: &str) -> Result<(), String> {
        if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            let (keys, _) = SignedPublicKey::from_string_many(text)
                .map_err(|e| format!("{source}: not an OpenPGP public key: {e}"))?;
            let before = self.keys.len();
            for k in keys {
                let k = k.map_err(|e| format!("{source}: not an OpenPGP public key: {e}"))?;
                self.keys.push(PublicKey {
                    source: source.to_string(),
                    kind: KeyKind::Pgp(Box::new(k)),
                });
            }
            if self.keys.len() == before {
                return Err(format!("{source}: holds no OpenPGP public key"));
            }
            return Ok(());
        }
        if text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----")
            || text.contains("PRIVATE KEY-----")
        {
            return Err(format!(
                "{source}: is a private key; verify needs the public key"
            ));
        }
        let kind = if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
            KeyKind::Rsa(
                rsa::RsaPublicKey::from_pkcs1_pem(text)
                    .map_err(|e| format!("{source}: not an RSA public key: {e}"))?,
            )
        } else if text.contains("-----BEGIN PUBLIC KEY-----") {
            if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(text) {
                KeyKind::Ed25519(k)
            } else if let Ok(k) = rsa::RsaPublicKey::from_public_key_pem(text) {
                KeyKind::Rsa(k)
            } else if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(text) {
                KeyKind::P256(k)
            } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(text) {
                KeyKind::P384(k)
            } else {
                return Err(format!(
                    "{source}: unsupported public key (Ed25519, RSA, ECDSA P-256 and P-384 are supported)"
                ));
            }
        } else {
            return Err(format!(
                "{source}: not a PEM public key or an armored OpenPGP public key"
            ));
        };
        self.keys.push(PublicKey {
            source: source.to_string(),
            kind,
        });
        Ok(())
    }

    /// Adds every `*.pem` and `*.asc` file of `dir`, in name order. A missing directory
    /// adds nothing.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), String> {
        self.add_dir_if(dir, &|_| Ok(()))
    }

    /// As [`Keyring::add_dir`], if `trust` accepts the directory's metadata and each key
    /// file's (for a directory the caller's environment names, such as one under `$HOME`:
    /// keys in another user's directory would let that user vouch for images). The directory
    /// is opened once and listed through that descriptor, so it cannot be swapped after the
    /// check. A directory `trust` refuses is an error naming it and why.
    pub fn add_dir_if(&mut self, dir: &Path, trust: &Trust) -> Result<(), String> {
        let shown = dir.display();
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir);
        let handle = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{shown}: cannot list key directory: {e}")),
        };
        let meta = handle
            .metadata()
            .map_err(|e| format!("{shown}: cannot list key directory: {e}"))?;
        trust(&meta).map_err(|why| format!("{shown}: key directory not used: {why}"))?;
        let through = Path::new("/proc/self/fd").join(handle.as_raw_fd().to_string());
        let entries = fs::read_dir(&through)
            .map_err(|e| format!("{shown}: cannot list key directory: {e}"))?;
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| {
                let x = Path::new(n).extension();
                x.is_some_and(|x| x == "pem" || x == "asc") && through.join(n).is_file()
            })
            .collect();
        names.sort();
        for n in names {
            // Named by the directory as given, not the descriptor it is read through.
            let name = dir.join(&n).display().to_string();
            self.add_file_if(&through.join(&n), &name, trust)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
