//! The 128-byte global header at file offset 0 (format notes §3).

use super::error::{Error, Result};
use super::le::{array, escaped, i64_at, put_i64, text};
use super::types::{arch_code, arch_name};

/// Size of the global header.
pub const HEADER_SIZE: usize = 128;
/// Magic bytes at offset 32, NUL included.
pub const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
/// The only version we (and the reference) accept, NUL included.
pub const VERSION: &[u8; 3] = b"01\0";
/// The "no timestamp" value written in deterministic mode: Go's zero time
/// (0001-01-01 UTC) in Unix seconds. Note that 0 is a real 1970 timestamp.
pub const UNSET_TIME: i64 = -62_135_596_800;

pub(crate) const OFF_MAGIC: usize = 32;
pub(crate) const OFF_VERSION: usize = 42;
const OFF_ARCH: usize = 45;
const OFF_UUID: usize = 48;
const OFF_CREATED: usize = 64;
const OFF_MODIFIED: usize = 72;
const OFF_FREE: usize = 80;
const OFF_TOTAL: usize = 88;
const OFF_DESCR_OFFSET: usize = 96;
const OFF_DESCR_SIZE: usize = 104;
const OFF_DATA_OFFSET: usize = 112;
const OFF_DATA_SIZE: usize = 120;
/// The launch script field is 32 bytes; at least one NUL must remain.
pub(crate) const LAUNCH_SCRIPT_MAX: usize = 31;

/// Decoded global header. Counters are kept as the signed values stored on
/// disk so that a corrupt file can be described accurately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// E.g. "#!/usr/bin/env run-singularity\n"; may be empty.
    pub launch_script: String,
    /// "SIF_MAGIC" (validated).
    pub magic: String,
    /// "01" (validated).
    pub version: String,
    /// GOARCH name of the primary partition ("amd64"); "unknown" for `00`.
    pub arch: String,
    /// RFC 4122 byte order; all zero = no ID.
    pub uuid: [u8; 16],
    pub created: i64,
    pub modified: i64,
    pub descriptors_free: i64,
    pub descriptors_total: i64,
    pub descriptors_offset: i64,
    pub descriptors_size: i64,
    pub data_offset: i64,
    /// Advisory only; descriptors are authoritative.
    pub data_size: i64,
}

/// True if the bytes carry the SIF magic at offset 32. The version is not
/// checked, so that an unsupported version is reported as such by the reader.
pub fn has_magic(first_bytes: &[u8]) -> bool {
    first_bytes.get(OFF_MAGIC..OFF_MAGIC + MAGIC.len()) == Some(&MAGIC[..])
}

/// Checks magic and version on a prefix of the file (any length), so that
/// truncated files get the most specific message.
pub(crate) fn check_ident(prefix: &[u8]) -> Result<()> {
    if prefix.len() < OFF_MAGIC + MAGIC.len() {
        return Err(Error::NotSif(format!(
            "file is {} bytes, too short for a SIF header ({HEADER_SIZE} bytes)",
            prefix.len()
        )));
    }
    if !has_magic(prefix) {
        return Err(Error::NotSif(format!(
            "bad magic at offset {OFF_MAGIC}: expected \"SIF_MAGIC\", found \"{}\"",
            escaped(&prefix[OFF_MAGIC..OFF_MAGIC + MAGIC.len()])
        )));
    }
    if let Some(v) = prefix.get(OFF_VERSION..OFF_VERSION + VERSION.len()) {
        if v != VERSION {
            return Err(Error::Unsupported(format!(
                "SIF version \"{}\" is not supported (only \"01\")",
                escaped(v.strip_suffix(&[0]).unwrap_or(v))
            )));
        }
    }
    Ok(())
}

impl Header {
    /// Decodes a full header. Magic and version are checked here; counters are
    /// validated by the reader, which knows the file size.
    pub fn parse(buf: &[u8; HEADER_SIZE]) -> Result<Header> {
        check_ident(buf)?;
        Ok(Header {
            launch_script: text(&buf[..OFF_MAGIC]),
            magic: text(&buf[OFF_MAGIC..OFF_VERSION]),
            version: text(&buf[OFF_VERSION..OFF_ARCH]),
            arch: arch_name(&array(buf, OFF_ARCH)).to_string(),
            uuid: array(buf, OFF_UUID),
            created: i64_at(buf, OFF_CREATED),
            modified: i64_at(buf, OFF_MODIFIED),
            descriptors_free: i64_at(buf, OFF_FREE),
            descriptors_total: i64_at(buf, OFF_TOTAL),
            descriptors_offset: i64_at(buf, OFF_DESCR_OFFSET),
            descriptors_size: i64_at(buf, OFF_DESCR_SIZE),
            data_offset: i64_at(buf, OFF_DATA_OFFSET),
            data_size: i64_at(buf, OFF_DATA_SIZE),
        })
    }

    /// Encodes the header. Fails on a launch script that does not fit or an
    /// arch name we cannot encode. Magic and version are always written as
    /// the supported ones, whatever the struct says.
    pub fn encode(&self) -> Result<[u8; HEADER_SIZE]> {
        let mut buf = [0u8; HEADER_SIZE];
        let script = self.launch_script.as_bytes();
        if script.len() > LAUNCH_SCRIPT_MAX {
            return Err(Error::Invalid(format!(
                "launch script is {} bytes, at most {LAUNCH_SCRIPT_MAX} fit",
                script.len()
            )));
        }
        buf[..script.len()].copy_from_slice(script);
        buf[OFF_MAGIC..OFF_VERSION].copy_from_slice(MAGIC);
        buf[OFF_VERSION..OFF_ARCH].copy_from_slice(VERSION);
        let arch = arch_code(&self.arch)
            .ok_or_else(|| Error::Invalid(format!("unknown architecture \"{}\"", self.arch)))?;
        buf[OFF_ARCH..OFF_UUID].copy_from_slice(&arch);
        buf[OFF_UUID..OFF_CREATED].copy_from_slice(&self.uuid);
        put_i64(&mut buf, OFF_CREATED, self.created);
        put_i64(&mut buf, OFF_MODIFIED, self.modified);
        put_i64(&mut buf, OFF_FREE, self.descriptors_free);
        put_i64(&mut buf, OFF_TOTAL, self.descriptors_total);
        put_i64(&mut buf, OFF_DESCR_OFFSET, self.descriptors_offset);
        put_i64(&mut buf, OFF_DESCR_SIZE, self.descriptors_size);
        put_i64(&mut buf, OFF_DATA_OFFSET, self.data_offset);
        put_i64(&mut buf, OFF_DATA_SIZE, self.data_size);
        Ok(buf)
    }
}
