//! SIF files as `launcher build` writes them, and `launcher verify`.
//!
//! Layout (every object in group 1): the SquashFS root file system as the primary system
//! partition; the image's labels (Labels, JSON); its OCI config (GenericJSON named
//! `oci-config.json`, the form SingularityCE stores too); and last a digest object
//! (GenericJSON named `launcher-digests.json`) holding the SHA-256 of every other object, which
//! `verify` recomputes.

use crate::sif::{
    self, DataType, Extra, FsType, ObjectData, ObjectSpec, PartType, SifFile, WriteOptions,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

pub const DIGESTS_NAME: &str = "launcher-digests.json";
pub const OCI_CONFIG_NAME: &str = "oci-config.json";
pub const LABELS_NAME: &str = "labels.json";
pub const DEFFILE_NAME: &str = "Singularity";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Sif(#[from] sif::Error),
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What goes into a SIF beside the root file system.
#[derive(Debug, Default, Clone)]
pub struct SifContents {
    /// The bare OCI config object (`{"Env": [...], "Cmd": [...], ...}`), if the image has one.
    pub oci_config: Option<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    /// The definition file the image was built from (Apptainer's Deffile object).
    pub deffile: Option<Vec<u8>>,
    /// GOARCH name of the root file system's programs ("amd64").
    pub arch: String,
    /// Seconds since the epoch for the header and descriptors; None = now.
    pub time: Option<i64>,
    pub uuid: UuidFrom,
}

/// Where the SIF's UUID comes from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum UuidFrom {
    /// A random one, each build its own.
    #[default]
    Random,
    Fixed([u8; 16]),
    /// Derived from the time and the digests of the objects, so that identical contents give
    /// an identical file (reproducible builds), whatever directory they were staged in.
    Content,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DigestEntry {
    pub id: u32,
    #[serde(rename = "type")]
    pub data_type: String,
    pub name: String,
    pub size: u64,
    pub digest: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Digests {
    pub algorithm: String,
    pub objects: Vec<DigestEntry>,
}

/// Write `out` from a finished SquashFS image and the image's metadata.
pub fn write(out: &Path, squashfs: &Path, contents: &SifContents) -> Result<()> {
    let sqfs_len = std::fs::metadata(squashfs)
        .map_err(|e| io_err(squashfs, e))?
        .len();
    let mut objects = vec![ObjectSpec {
        name: "rootfs.squashfs".into(),
        ..ObjectSpec::partition(
            ObjectData::File {
                path: squashfs.to_path_buf(),
                len: sqfs_len,
            },
            FsType::Squash,
            PartType::PrimSys,
            contents.arch.clone(),
        )
    }];
    let labels =
        serde_json::to_vec_pretty(&contents.labels).map_err(|e| Error::Invalid(e.to_string()))?;
    objects.push(ObjectSpec {
        name: LABELS_NAME.into(),
        ..ObjectSpec::new(DataType::Labels, ObjectData::Bytes(labels))
    });
    if let Some(def) = &contents.deffile {
        objects.push(ObjectSpec {
            name: DEFFILE_NAME.into(),
            ..ObjectSpec::new(DataType::Deffile, ObjectData::Bytes(def.clone()))
        });
    }
    if let Some(cfg) = &contents.oci_config {
        let bytes = serde_json::to_vec(cfg).map_err(|e| Error::Invalid(e.to_string()))?;
        objects.push(ObjectSpec {
            name: OCI_CONFIG_NAME.into(),
            ..ObjectSpec::new(DataType::GenericJson, ObjectData::Bytes(bytes))
        });
    }
    // Ids are given in order from 1, as the writer assigns them.
    let mut entries = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        entries.push(DigestEntry {
            id: i as u32 + 1,
            data_type: o.data_type.to_string(),
            name: o.name.clone(),
            size: o.data.len(),
            digest: sha256_of(&o.data)?,
        });
    }
    let digests = Digests {
        algorithm: "sha256".into(),
        objects: entries,
    };
    let bytes = serde_json::to_vec_pretty(&digests).map_err(|e| Error::Invalid(e.to_string()))?;
    let uuid = match contents.uuid {
        UuidFrom::Fixed(u) => u,
        UuidFrom::Random => sif::random_uuid()?,
        UuidFrom::Content => name_based_uuid(contents.time.unwrap_or(0), &bytes),
    };
    objects.push(ObjectSpec {
        name: DIGESTS_NAME.into(),
        ..ObjectSpec::new(DataType::GenericJson, ObjectData::Bytes(bytes))
    });
    let opts = WriteOptions {
        launch_script: "#!/usr/bin/env run-singularity\n".into(),
        uuid: Some(uuid),
        time: Some(contents.time.unwrap_or_else(sif::now)),
        ..Default::default()
    };
    sif::write(out, &opts, objects)?;
    Ok(())
}

/// A name-based (version 5 layout) UUID from the time and the digest object's bytes, which
/// name every other object's SHA-256.
fn name_based_uuid(time: i64, digests: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(time.to_le_bytes());
    h.update(digests);
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// One object checked by `verify`.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    pub id: u32,
    pub what: String,
    pub digest: String,
}

/// Recompute every digest a SIF file records: ours (`launcher-digests.json`) and the OCI
/// blob digests of OCI-SIF images. Errors on the first mismatch; an image that records no
/// digest at all is an error too, since nothing could be verified.
pub fn verify(path: &Path) -> Result<Vec<Checked>> {
    let shown = path.display().to_string();
    let file = crate::image_file::open(path).map_err(|e| io_err(path, e))?;
    let sif = SifFile::read_from(&file)?;
    let mut checked = Vec::new();
    if let Some(d) = sif
        .descriptors
        .iter()
        .find(|d| d.data_type == DataType::GenericJson && d.name == DIGESTS_NAME)
    {
        let raw = sif.read_object(&file, d)?;
        let digests: Digests = serde_json::from_slice(&raw)
            .map_err(|e| Error::Invalid(format!("{shown}: {DIGESTS_NAME} is not valid: {e}")))?;
        if digests.algorithm != "sha256" {
            return Err(Error::Invalid(format!(
                "{shown}: unsupported digest algorithm '{}'",
                digests.algorithm
            )));
        }
        for e in &digests.objects {
            let obj = sif.descriptor(e.id).ok_or_else(|| {
                Error::Invalid(format!(
                    "{shown}: object {} ({}) recorded in {DIGESTS_NAME} is missing",
                    e.id, e.name
                ))
            })?;
            let got = stream_sha256(&sif, &file, obj, &shown)?;
            if got != e.digest || obj.size != e.size {
                return Err(Error::Invalid(format!(
                    "{shown}: object {} ({} {}) does not match its recorded digest: recorded {} ({} bytes), found {} ({} bytes)",
                    e.id, e.data_type, e.name, e.digest, e.size, got, obj.size
                )));
            }
            checked.push(Checked {
                id: e.id,
                what: format!("{} {}", e.data_type, e.name),
                digest: got,
            });
        }
    }
    for d in &sif.descriptors {
        if let Extra::OciDigest(want) = &d.extra {
            let got = stream_sha256(&sif, &file, d, &shown)?;
            if &got != want {
                return Err(Error::Invalid(format!(
                    "{shown}: object {} ({}) has digest {got}, expected {want}",
                    d.id, d.data_type
                )));
            }
            checked.push(Checked {
                id: d.id,
                what: d.data_type.to_string(),
                digest: got,
            });
        }
    }
    if checked.is_empty() {
        return Err(Error::Invalid(format!(
            "{shown}: records no digests to verify (not built by launcher, and no OCI blobs)"
        )));
    }
    Ok(checked)
}

fn stream_sha256(sif: &SifFile, file: &File, d: &sif::Descriptor, shown: &str) -> Result<String> {
    let mut r = sif.object_reader(file, d)?;
    hash_reader(&mut r).map_err(|e| Error::Io {
        path: shown.to_string(),
        msg: format!("reading object {}: {e}", d.id),
    })
}

fn sha256_of(data: &ObjectData) -> Result<String> {
    match data {
        ObjectData::Bytes(b) => Ok(format!("sha256:{:x}", Sha256::digest(b))),
        ObjectData::File { path, len } => {
            let f = File::open(path).map_err(|e| io_err(path, e))?;
            hash_reader(&mut f.take(*len)).map_err(|e| io_err(path, e))
        }
    }
}

fn hash_reader(r: &mut dyn Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn write_then_verify_then_tamper() {
        let dir = tempfile::tempdir().unwrap();
        // Any bytes will do as the partition here; the real-image tests use mksquashfs output.
        let sq = dir.path().join("root.sqfs");
        std::fs::write(&sq, b"hsqs-not-really-but-a-payload").unwrap();
        let out = dir.path().join("x.sif");
        let contents = SifContents {
            oci_config: Some(serde_json::json!({"Env": ["A=1"], "Cmd": ["sh"]})),
            labels: [("org.example".to_string(), "yes".to_string())].into(),
            deffile: None,
            arch: "amd64".into(),
            time: Some(1_700_000_000),
            uuid: UuidFrom::Fixed([7; 16]),
        };
        write(&out, &sq, &contents).unwrap();
        let checked = verify(&out).unwrap();
        assert_eq!(checked.len(), 3, "{checked:?}");
        let sif = SifFile::open(&out).unwrap();
        let part = sif.primary_squashfs().unwrap();
        // Flip one byte of the partition: verify names the object.
        let f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
        f.write_at(b"X", part.offset).unwrap();
        let err = verify(&out).unwrap_err().to_string();
        assert!(
            err.contains("object 1") && err.contains("does not match"),
            "{err}"
        );
        // Reproducible with a fixed time and UUID.
        let out2 = dir.path().join("y.sif");
        write(&out2, &sq, &contents).unwrap();
        let out3 = dir.path().join("z.sif");
        write(&out3, &sq, &contents).unwrap();
        assert_eq!(std::fs::read(&out2).unwrap(), std::fs::read(&out3).unwrap());
    }

    #[test]
    fn nothing_to_verify_is_an_error() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sif/one-group.sif");
        let err = verify(&p).unwrap_err().to_string();
        assert!(err.contains("records no digests"), "{err}");
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sif/one-object-oci-blob.sif");
        assert_eq!(verify(&p).unwrap().len(), 1);
    }
}
