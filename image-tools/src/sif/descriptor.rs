//! Descriptor slots (585 bytes each, format notes §5, §7, §9).

use super::error::{Error, Result};
use super::le::{array, cstr, i64_at, put_i64, put_u32, text, u32_at};
use super::types::{
    arch_code, arch_name, CryptoFormat, DataType, Extra, FsType, HashType, Link, MessageType,
    PartType, SbomFormat,
};

/// Size of one descriptor slot.
pub const DESCRIPTOR_SIZE: usize = 585;
/// Top-nibble flag of group IDs and group links.
pub const GROUP_FLAG: u32 = 0xF000_0000;
/// Largest group ID that fits below the flag.
pub const MAX_GROUP_ID: u32 = 0x0FFF_FFFF;

const OFF_TYPE: usize = 0;
const OFF_USED: usize = 4;
const OFF_ID: usize = 5;
const OFF_GROUP: usize = 9;
const OFF_LINK: usize = 13;
const OFF_OFFSET: usize = 17;
const OFF_SIZE: usize = 25;
const OFF_SIZE_PADDED: usize = 33;
const OFF_CREATED: usize = 41;
const OFF_MODIFIED: usize = 49;
const OFF_UID: usize = 57;
const OFF_GID: usize = 65;
const OFF_NAME: usize = 73;
const OFF_EXTRA: usize = 201;
/// Name field length; a name may fill it with no NUL.
pub const NAME_SIZE: usize = 128;
/// Extra field length.
pub const EXTRA_SIZE: usize = 384;
/// Bytes of the signature entity field that hold the key fingerprint.
const FINGERPRINT_LEN: usize = 20;
/// The signature entity field (after the 4-byte hash type).
const ENTITY_SIZE: usize = 256;

/// One used descriptor slot, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Object ID (≥ 1, unique). Not the slot index in general.
    pub id: u32,
    pub data_type: DataType,
    /// Logical group (flag bits removed); `None` when stored as "no group".
    pub group_id: Option<u32>,
    pub link: Link,
    /// Absolute file offset of the first byte.
    pub offset: u64,
    /// Exact payload length.
    pub size: u64,
    /// Alignment gap *before* the object plus `size`. Never use it to locate data.
    pub size_with_padding: u64,
    pub created: i64,
    pub modified: i64,
    /// Deprecated; v2 writers store 0.
    pub uid: i64,
    pub gid: i64,
    pub name: String,
    pub extra: Extra,
}

impl Descriptor {
    /// End offset (exclusive). Cannot overflow for descriptors from the
    /// reader, which checked it against the file size.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }

    /// Partition metadata, if this is a Partition object.
    pub fn partition(&self) -> Option<(FsType, PartType, &str)> {
        match (&self.data_type, &self.extra) {
            (DataType::Partition, Extra::Partition { fs, part, arch }) => Some((*fs, *part, arch)),
            _ => None,
        }
    }

    /// Decodes a slot; `Ok(None)` for a free slot. Checks only what can be
    /// checked without the rest of the file (signs, ID non-zero).
    pub fn parse(slot: usize, buf: &[u8; DESCRIPTOR_SIZE]) -> Result<Option<Descriptor>> {
        // Any non-zero byte means "used" (the reference treats bools that way).
        if buf[OFF_USED] == 0 {
            return Ok(None);
        }
        let id = u32_at(buf, OFF_ID);
        if id == 0 {
            return Err(Error::Corrupt(format!(
                "descriptor slot {slot}: used slot has object ID 0"
            )));
        }
        let ctx = || format!("descriptor {id} (slot {slot})");
        let unsigned = |off: usize, what: &str| -> Result<u64> {
            let v = i64_at(buf, off);
            u64::try_from(v).map_err(|_| Error::Corrupt(format!("{}: negative {what} {v}", ctx())))
        };
        let data_type = DataType::from_code(u32_at(buf, OFF_TYPE));
        let group_raw = u32_at(buf, OFF_GROUP) & !GROUP_FLAG;
        let link_raw = u32_at(buf, OFF_LINK);
        let link = if link_raw == 0 {
            Link::None
        } else if link_raw & GROUP_FLAG == GROUP_FLAG {
            Link::Group(link_raw & !GROUP_FLAG)
        } else {
            Link::Object(link_raw)
        };
        Ok(Some(Descriptor {
            id,
            data_type,
            group_id: (group_raw != 0).then_some(group_raw),
            link,
            offset: unsigned(OFF_OFFSET, "offset")?,
            size: unsigned(OFF_SIZE, "size")?,
            size_with_padding: unsigned(OFF_SIZE_PADDED, "size with padding")?,
            created: i64_at(buf, OFF_CREATED),
            modified: i64_at(buf, OFF_MODIFIED),
            uid: i64_at(buf, OFF_UID),
            gid: i64_at(buf, OFF_GID),
            name: text(&buf[OFF_NAME..OFF_EXTRA]),
            extra: parse_extra(data_type, &buf[OFF_EXTRA..]),
        }))
    }

    /// Encodes the descriptor into a used slot. Fails on values that cannot
    /// be represented (long name, bad group, unknown arch, …).
    pub fn encode(&self) -> Result<[u8; DESCRIPTOR_SIZE]> {
        let ctx = format!("object {}", self.id);
        let mut buf = [0u8; DESCRIPTOR_SIZE];
        if self.id == 0 {
            return Err(Error::Invalid("object ID 0 is reserved".into()));
        }
        put_u32(&mut buf, OFF_TYPE, self.data_type.code());
        buf[OFF_USED] = 1;
        put_u32(&mut buf, OFF_ID, self.id);
        let group = match self.group_id {
            None => 0,
            Some(g) if (1..=MAX_GROUP_ID).contains(&g) => g,
            Some(g) => {
                return Err(Error::Invalid(format!(
                    "{ctx}: group ID {g} out of range 1..={MAX_GROUP_ID}"
                )))
            }
        };
        put_u32(&mut buf, OFF_GROUP, group | GROUP_FLAG);
        let link = match self.link {
            Link::None => 0,
            Link::Group(g) if (1..=MAX_GROUP_ID).contains(&g) => g | GROUP_FLAG,
            // An object ID with all flag bits set would read back as a group link.
            Link::Object(id) if id != 0 && id & GROUP_FLAG != GROUP_FLAG => id,
            other => {
                return Err(Error::Invalid(format!(
                    "{ctx}: cannot encode link {other:?}"
                )))
            }
        };
        put_u32(&mut buf, OFF_LINK, link);
        let signed = |v: u64, what: &str| {
            i64::try_from(v).map_err(|_| Error::Invalid(format!("{ctx}: {what} {v} too large")))
        };
        put_i64(&mut buf, OFF_OFFSET, signed(self.offset, "offset")?);
        put_i64(&mut buf, OFF_SIZE, signed(self.size, "size")?);
        put_i64(
            &mut buf,
            OFF_SIZE_PADDED,
            signed(self.size_with_padding, "size with padding")?,
        );
        put_i64(&mut buf, OFF_CREATED, self.created);
        put_i64(&mut buf, OFF_MODIFIED, self.modified);
        put_i64(&mut buf, OFF_UID, self.uid);
        put_i64(&mut buf, OFF_GID, self.gid);
        let name = self.name.as_bytes();
        if name.len() > NAME_SIZE {
            return Err(Error::Invalid(format!(
                "{ctx}: name is {} bytes, at most {NAME_SIZE} fit",
                name.len()
            )));
        }
        buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name);
        let extra = encode_extra(self.data_type, &self.extra).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{ctx}: {m}")),
            e => e,
        })?;
        buf[OFF_EXTRA..].copy_from_slice(&extra);
        Ok(buf)
    }
}

fn parse_extra(data_type: DataType, extra: &[u8]) -> Extra {
    match data_type {
        DataType::Partition => Extra::Partition {
            fs: FsType::from_code(u32_at(extra, 0)),
            part: PartType::from_code(u32_at(extra, 4)),
            arch: arch_name(&array(extra, 8)).to_string(),
        },
        DataType::Signature => {
            let fp = &extra[4..4 + FINGERPRINT_LEN];
            Extra::Signature {
                hash: HashType::from_code(u32_at(extra, 0)),
                fingerprint: fp.iter().any(|&b| b != 0).then(|| hex(fp)),
            }
        }
        DataType::CryptoMessage => Extra::CryptoMessage {
            format: CryptoFormat::from_code(u32_at(extra, 0)),
            message: MessageType::from_code(u32_at(extra, 4)),
        },
        DataType::Sbom => Extra::Sbom {
            format: SbomFormat::from_code(u32_at(extra, 0)),
        },
        DataType::OciRootIndex | DataType::OciBlob => Extra::OciDigest(cstr(extra)),
        _ => {
            let end = extra.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            if end == 0 {
                Extra::None
            } else {
                Extra::Raw(extra[..end].to_vec())
            }
        }
    }
}

fn encode_extra(data_type: DataType, extra: &Extra) -> Result<[u8; EXTRA_SIZE]> {
    let mut buf = [0u8; EXTRA_SIZE];
    // Structured extras must match their data type, or the reader would
    // decode them as something else.
    let expect = |want: DataType| {
        if data_type == want {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "{want} metadata given for a {data_type} object"
            )))
        }
    };
    match extra {
        Extra::None => {
            if data_type == DataType::Partition {
                return Err(Error::Invalid(
                    "Partition object needs Extra::Partition metadata".into(),
                ));
            }
        }
        Extra::Partition { fs, part, arch } => {
            expect(DataType::Partition)?;
            put_u32(&mut buf, 0, fs.code());
            put_u32(&mut buf, 4, part.code());
            let code = arch_code(arch)
                .ok_or_else(|| Error::Invalid(format!("unknown architecture \"{arch}\"")))?;
            buf[8..11].copy_from_slice(&code);
        }
        Extra::Signature { hash, fingerprint } => {
            expect(DataType::Signature)?;
            put_u32(&mut buf, 0, hash.code());
            if let Some(fp) = fingerprint {
                let bytes = unhex(fp)
                    .filter(|b| b.len() <= ENTITY_SIZE)
                    .ok_or_else(|| Error::Invalid(format!("bad fingerprint hex \"{fp}\"")))?;
                buf[4..4 + bytes.len()].copy_from_slice(&bytes);
            }
        }
        Extra::CryptoMessage { format, message } => {
            expect(DataType::CryptoMessage)?;
            put_u32(&mut buf, 0, format.code());
            put_u32(&mut buf, 4, message.code());
        }
        Extra::Sbom { format } => {
            expect(DataType::Sbom)?;
            put_u32(&mut buf, 0, format.code());
        }
        Extra::OciDigest(digest) => {
            if !matches!(data_type, DataType::OciRootIndex | DataType::OciBlob) {
                return Err(Error::Invalid(format!(
                    "OCI digest given for a {data_type} object"
                )));
            }
            put_raw(&mut buf, digest.as_bytes())?;
        }
        Extra::Raw(bytes) => put_raw(&mut buf, bytes)?,
    }
    Ok(buf)
}

fn put_raw(buf: &mut [u8; EXTRA_SIZE], bytes: &[u8]) -> Result<()> {
    if bytes.len() > EXTRA_SIZE {
        return Err(Error::Invalid(format!(
            "extra metadata is {} bytes, at most {EXTRA_SIZE} fit",
            bytes.len()
        )));
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
