//! Writing a new SIF file in one go, laid out like the reference writer
//! (format notes §8), so deterministic output matches it byte for byte.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::descriptor::{hex, Descriptor, DESCRIPTOR_SIZE};
use super::error::{Error, Result};
use super::header::{Header, HEADER_SIZE, UNSET_TIME};
use super::types::{DataType, Extra, Link, PartType};

/// Descriptor slots in a new image unless asked otherwise.
pub const DEFAULT_CAPACITY: usize = 48;
/// Where the reference puts the descriptor table.
pub const DESCRIPTORS_OFFSET: u64 = 4096;
/// Default alignment of Partition objects (other types are unaligned).
pub const PARTITION_ALIGNMENT: u64 = 4096;
/// Copy buffer for streaming file-backed objects.
const COPY_CHUNK: usize = 1 << 20;

/// Where an object's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectData {
    Bytes(Vec<u8>),
    /// The first `len` bytes of a file, streamed (for big partitions).
    File {
        path: PathBuf,
        len: u64,
    },
}

impl ObjectData {
    /// Payload length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ObjectData::Bytes(b) => b.len() as u64,
            ObjectData::File { len, .. } => *len,
        }
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One object to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    pub data_type: DataType,
    pub data: ObjectData,
    /// Defaults to `Some(1)` like the reference; signatures use `None`.
    pub group_id: Option<u32>,
    pub link: Link,
    pub name: String,
    /// Must be `Extra::Partition` for partitions. For OCI objects,
    /// `Extra::None` means "compute the sha256 digest of the data".
    pub extra: Extra,
    /// 0 = default: 4096 for partitions, 1 (none) for everything else.
    pub alignment: u64,
}

impl ObjectSpec {
    /// The descriptor of this object as object `id`, placed after `end` (the end of the
    /// furthest object so far) at its alignment: one constructor for a whole-image write and
    /// for objects added to an existing image (`sign`).
    fn placed(&self, id: u32, end: u64, extra: Extra, time: i64) -> Result<Descriptor> {
        let align = match self.alignment {
            0 if self.data_type == DataType::Partition => PARTITION_ALIGNMENT,
            0 => 1,
            a => a,
        };
        let size = self.data.len();
        let start = end
            .checked_next_multiple_of(align)
            .filter(|s| s.checked_add(size).is_some_and(|e| e <= i64::MAX as u64))
            .ok_or_else(|| Error::Invalid(format!("object {id}: file would exceed 2^63 bytes")))?;
        Ok(Descriptor {
            id,
            data_type: self.data_type,
            group_id: self.group_id,
            link: self.link,
            offset: start,
            size,
            size_with_padding: start - end + size,
            created: time,
            modified: time,
            uid: 0,
            gid: 0,
            name: self.name.clone(),
            extra,
        })
    }

    /// An object in group 1, unlinked, unnamed, default alignment, no extra.
    pub fn new(data_type: DataType, data: ObjectData) -> ObjectSpec {
        ObjectSpec {
            data_type,
            data,
            group_id: Some(1),
            link: Link::None,
            name: String::new(),
            extra: Extra::None,
            alignment: 0,
        }
    }

    /// A partition object with its metadata.
    pub fn partition(
        data: ObjectData,
        fs: super::FsType,
        part: PartType,
        arch: impl Into<String>,
    ) -> ObjectSpec {
        ObjectSpec {
            extra: Extra::Partition {
                fs,
                part,
                arch: arch.into(),
            },
            ..ObjectSpec::new(DataType::Partition, data)
        }
    }
}

/// Image-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// At most 31 bytes, e.g. "#!/usr/bin/env run-singularity\n".
    pub launch_script: String,
    /// Header arch when there is no primary partition ("" = `00`). With a
    /// primary partition the header takes its arch; a different non-empty
    /// value here is an error.
    pub arch: String,
    /// `None` = nil UUID (deterministic). See [`random_uuid`].
    pub uuid: Option<[u8; 16]>,
    /// Unix seconds for every timestamp; `None` = the reference's
    /// deterministic "unset" time. See [`now`].
    pub time: Option<i64>,
    pub descriptor_capacity: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            launch_script: String::new(),
            arch: String::new(),
            uuid: None,
            time: None,
            descriptor_capacity: DEFAULT_CAPACITY,
        }
    }
}

/// A random (version 4) UUID from the kernel's random source.
pub fn random_uuid() -> Result<[u8; 16]> {
    let mut u = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .map_err(Error::io("read /dev/urandom"))?;
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok(u)
}

/// Current time as Unix seconds, for [`WriteOptions::time`].
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Writes a new SIF at `path` holding `objects` (IDs 1, 2, … in order).
///
/// The file is written under a temporary name in the same directory and
/// renamed over `path` only when complete; on error it is removed.
pub fn write(path: &Path, opts: &WriteOptions, objects: Vec<ObjectSpec>) -> Result<()> {
    let plan = Plan::new(opts, &objects)?;
    let tmp = TempFile::create(path)?;
    plan.write_into(&tmp.file, &objects)?;
    tmp.file
        .sync_all()
        .map_err(Error::io(format!("sync {}", tmp.path.display())))?;
    tmp.commit(path)
}

/// Adds `objects` to the existing SIF at `path` as the reference's `AddObject` does (format
/// notes §8): each takes the first free descriptor slot, with ID slot + 1, and is written after
/// the furthest object, aligned; the header's free count, data size and modified time follow.
/// Every other byte of the image stays as it was (signatures cover the header's identity fields
/// and the descriptors). The image is copied to a temporary file beside it, changed there and
/// renamed over `path` only when complete, so a failure leaves `path` untouched.
///
/// `time` is the new objects' created/modified time and the header's modified time; `None`
/// means now, or the unset time for a deterministic image (nil UUID, unset times), as the
/// reference does. Primary system partitions and OCI objects without a digest are refused.
/// Returns the new objects' IDs.
pub fn add_objects(path: &Path, objects: &[ObjectSpec], time: Option<i64>) -> Result<Vec<u32>> {
    let shown = path.display();
    let mut src = File::open(path).map_err(Error::io(format!("open {shown}")))?;
    let mut sif = super::SifFile::read_from(&src)?;
    let h = &sif.header;
    let deterministic = h.uuid == [0; 16] && h.created == UNSET_TIME && h.modified == UNSET_TIME;
    let time = time.unwrap_or(if deterministic { UNSET_TIME } else { now() });
    let data_offset = u64::try_from(h.data_offset)
        .map_err(|_| Error::Corrupt(format!("negative data offset {}", h.data_offset)))?;
    let mut end = sif
        .descriptors
        .iter()
        .map(|d| d.end())
        .max()
        .unwrap_or(data_offset)
        .max(data_offset);
    let mut planned = Vec::with_capacity(objects.len());
    for spec in objects {
        let ObjectData::Bytes(_) = &spec.data else {
            return Err(Error::Invalid(
                "objects added to an image must be given as bytes".into(),
            ));
        };
        if matches!(
            spec.extra,
            Extra::Partition {
                part: PartType::PrimSys,
                ..
            }
        ) || (matches!(spec.data_type, DataType::OciRootIndex | DataType::OciBlob)
            && spec.extra == Extra::None)
        {
            return Err(Error::Invalid(format!(
                "adding a {} object to an image is not supported",
                spec.data_type
            )));
        }
        let slot = sif.first_free_slot().ok_or_else(|| {
            Error::Invalid(format!(
                "{shown}: no free descriptor slot (all {} are used)",
                sif.header.descriptors_total
            ))
        })?;
        let id = u32::try_from(slot + 1)
            .map_err(|_| Error::Invalid(format!("object ID {} would overflow", slot + 1)))?;
        if sif.descriptor(id).is_some() {
            return Err(Error::Invalid(format!(
                "{shown}: free slot {slot} would give ID {id}, which object ID is already used"
            )));
        }
        let d = spec.placed(id, end, spec.extra.clone(), time)?;
        let raw = d.encode()?;
        end = d.offset + d.size;
        // Later objects see this slot and ID as used.
        sif.descriptors.push(d.clone());
        sif.mark_used(slot);
        planned.push((slot, d, raw));
    }
    let mut head = [0u8; HEADER_SIZE];
    src.read_exact_at(&mut head, 0)
        .map_err(Error::io(format!("read {shown}")))?;
    let free = sif.header.descriptors_free - planned.len() as i64;
    head[72..80].copy_from_slice(&time.to_le_bytes());
    head[80..88].copy_from_slice(&free.max(0).to_le_bytes());
    // end − data offset ≤ i64::MAX, checked above.
    head[120..128].copy_from_slice(&((end - data_offset) as i64).to_le_bytes());

    let mut tmp = TempFile::create(path)?;
    let tmp_shown = tmp.path.display().to_string();
    std::io::copy(&mut src, &mut tmp.file)
        .map_err(Error::io(format!("copy {shown} to {tmp_shown}")))?;
    let mode = src
        .metadata()
        .map_err(Error::io(format!("stat {shown}")))?
        .permissions();
    tmp.file
        .set_permissions(mode)
        .map_err(Error::io(format!("chmod {tmp_shown}")))?;
    let table = sif.table_offset();
    for ((slot, d, raw), spec) in planned.iter().zip(objects) {
        write_object(&tmp.file, spec, d, false)?;
        let pos = table + (slot * DESCRIPTOR_SIZE) as u64;
        tmp.file
            .write_all_at(raw, pos)
            .map_err(Error::io(format!("write descriptor of object {}", d.id)))?;
    }
    tmp.file
        .write_all_at(&head, 0)
        .map_err(Error::io("write SIF header"))?;
    tmp.file
        .sync_all()
        .map_err(Error::io(format!("sync {tmp_shown}")))?;
    tmp.commit(path)?;
    Ok(planned.iter().map(|(_, d, _)| d.id).collect())
}

/// The layout: header and descriptors computed before any byte is written,
/// so invalid input fails without touching the file system.
struct Plan {
    header: Header,
    descriptors: Vec<Descriptor>,
    /// Indexes of OCI objects whose digest is computed while streaming.
    digest_pending: Vec<usize>,
    file_len: u64,
}

impl Plan {
    fn new(opts: &WriteOptions, objects: &[ObjectSpec]) -> Result<Plan> {
        let cap = opts.descriptor_capacity;
        if cap as u64 >= u64::from(u32::MAX) {
            return Err(Error::Invalid(format!(
                "descriptor capacity {cap} too large"
            )));
        }
        if objects.len() > cap {
            return Err(Error::Invalid(format!(
                "{} objects do not fit in {cap} descriptor slots",
                objects.len()
            )));
        }
        let time = opts.time.unwrap_or(UNSET_TIME);
        let table_len = cap as u64 * DESCRIPTOR_SIZE as u64;
        let data_offset = DESCRIPTORS_OFFSET + table_len;

        let mut end = data_offset; // E in the notes: end of the furthest object
        let mut descriptors = Vec::with_capacity(objects.len());
        let mut digest_pending = Vec::new();
        let mut primary: Option<(u32, String)> = None;
        for (i, spec) in objects.iter().enumerate() {
            let id = i as u32 + 1; // i < cap < u32::MAX
            let mut extra = spec.extra.clone();
            if matches!(spec.data_type, DataType::OciRootIndex | DataType::OciBlob)
                && extra == Extra::None
            {
                match &spec.data {
                    ObjectData::Bytes(b) => {
                        extra = Extra::OciDigest(sha256_digest(Sha256::new_with_prefix(b)))
                    }
                    // Placeholder of the right shape, replaced after streaming.
                    ObjectData::File { .. } => {
                        extra = Extra::OciDigest(format!("sha256:{}", "0".repeat(64)));
                        digest_pending.push(i);
                    }
                }
            }
            if let Extra::Partition {
                part: PartType::PrimSys,
                arch,
                ..
            } = &extra
            {
                if let Some((other, _)) = &primary {
                    return Err(Error::Invalid(format!(
                        "objects {other} and {id} are both primary system partitions"
                    )));
                }
                primary = Some((id, arch.clone()));
            }
            let d = spec.placed(id, end, extra, time)?;
            d.encode()?; // validate now, before creating the file
            end = d.offset + d.size;
            descriptors.push(d);
        }

        let arch = match primary {
            Some((id, arch)) => {
                if !opts.arch.is_empty() && opts.arch != arch {
                    return Err(Error::Invalid(format!(
                        "WriteOptions.arch \"{}\" differs from primary partition {id} arch \"{arch}\"",
                        opts.arch
                    )));
                }
                arch
            }
            None => opts.arch.clone(),
        };
        let header = Header {
            launch_script: opts.launch_script.clone(),
            magic: "SIF_MAGIC".into(),
            version: "01".into(),
            arch,
            uuid: opts.uuid.unwrap_or([0; 16]),
            created: time,
            modified: time,
            descriptors_free: (cap - objects.len()) as i64,
            descriptors_total: cap as i64,
            descriptors_offset: DESCRIPTORS_OFFSET as i64,
            descriptors_size: table_len as i64,
            data_offset: data_offset as i64,
            // Bounded by i64::MAX through the start/size check above.
            data_size: (end - data_offset) as i64,
        };
        header.encode()?; // validate launch script and arch now
        Ok(Plan {
            header,
            descriptors,
            digest_pending,
            file_len: end,
        })
    }

    fn write_into(mut self, file: &File, objects: &[ObjectSpec]) -> Result<()> {
        // Extending with set_len leaves alignment gaps and unused slots as zeros.
        file.set_len(self.file_len)
            .map_err(Error::io("extend SIF file"))?;
        for (i, (spec, d)) in objects.iter().zip(&mut self.descriptors).enumerate() {
            let want_digest = self.digest_pending.contains(&i);
            let digest = write_object(file, spec, d, want_digest)?;
            if let Some(digest) = digest {
                d.extra = Extra::OciDigest(digest);
            }
        }
        for (slot, d) in self.descriptors.iter().enumerate() {
            let pos = DESCRIPTORS_OFFSET + (slot * DESCRIPTOR_SIZE) as u64;
            file.write_all_at(&d.encode()?, pos)
                .map_err(Error::io("write descriptor table"))?;
        }
        // Header last, as the reference does.
        let header: [u8; HEADER_SIZE] = self.header.encode()?;
        file.write_all_at(&header, 0)
            .map_err(Error::io("write SIF header"))?;
        Ok(())
    }
}

/// Writes one object's payload at its offset; returns its sha256 digest
/// when asked to compute one.
fn write_object(
    file: &File,
    spec: &ObjectSpec,
    d: &Descriptor,
    want_digest: bool,
) -> Result<Option<String>> {
    let werr = || Error::io(format!("write object {} at offset {}", d.id, d.offset));
    match &spec.data {
        ObjectData::Bytes(b) => {
            file.write_all_at(b, d.offset).map_err(werr())?;
            Ok(want_digest.then(|| sha256_digest(Sha256::new_with_prefix(b))))
        }
        ObjectData::File { path, len } => {
            let src = File::open(path).map_err(Error::io(format!(
                "open {} (object {})",
                path.display(),
                d.id
            )))?;
            let mut src = src.take(*len);
            let mut hasher = want_digest.then(Sha256::new);
            let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(*len).unwrap_or(COPY_CHUNK))];
            let mut done = 0u64;
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io(format!("read {}", path.display()))(e)),
                };
                file.write_all_at(&buf[..n], d.offset + done)
                    .map_err(werr())?;
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                done += n as u64;
            }
            if done != *len {
                return Err(Error::Invalid(format!(
                    "object {}: {} ended after {done} of {len} bytes",
                    d.id,
                    path.display()
                )));
            }
            Ok(hasher.map(sha256_digest))
        }
    }
}

fn sha256_digest(h: Sha256) -> String {
    format!("sha256:{}", hex(&h.finalize()))
}

/// A temporary file beside the target, removed on drop unless committed.
struct TempFile {
    file: File,
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    fn create(target: &Path) -> Result<TempFile> {
        let name = target
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{} is not a file path", target.display())))?;
        let dir = target.parent().unwrap_or(Path::new(""));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}-{nanos}", std::process::id()));
        let path = dir.join(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io(format!("create {}", path.display())))?;
        Ok(TempFile {
            file,
            path,
            committed: false,
        })
    }

    fn commit(mut self, target: &Path) -> Result<()> {
        fs::rename(&self.path, target).map_err(Error::io(format!(
            "rename {} to {}",
            self.path.display(),
            target.display()
        )))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error that got us here matters more.
            let _ = fs::remove_file(&self.path);
        }
    }
}
