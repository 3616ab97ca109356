//! Opening and validating a SIF file (format notes §10).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::descriptor::{Descriptor, DESCRIPTOR_SIZE};
use super::error::{Error, Result};
use super::header::{check_ident, Header, HEADER_SIZE};
use super::types::{DataType, Extra, FsType, PartType};

/// Largest slot count the reference allows (it must fit a u32 below the max).
const MAX_DESCRIPTORS: i64 = u32::MAX as i64 - 1;
/// Slots read per positional read: a bounded buffer (~64 KiB) however large
/// the table claims to be.
const SLOTS_PER_READ: usize = 112;

/// A parsed, validated SIF file. Holds no file handle: object data is read
/// through the `File` passed to [`SifFile::read_object`] / [`SifFile::object_reader`].
#[derive(Debug, Clone)]
pub struct SifFile {
    pub header: Header,
    /// Used slots only, in slot order (not in ID or file order).
    pub descriptors: Vec<Descriptor>,
    /// Slot index of each entry of `descriptors` (same order).
    slots: Vec<usize>,
    table_offset: u64,
    file_size: u64,
    warnings: Vec<String>,
}

impl SifFile {
    /// Opens and validates the SIF file at `path`.
    pub fn open(path: &Path) -> Result<SifFile> {
        let file =
            crate::image_file::open(path).map_err(Error::io(format!("open {}", path.display())))?;
        Self::read_from(&file)
    }

    /// Parses and validates a SIF from an open file using positional reads
    /// (the file's cursor is not used).
    ///
    /// Checks: magic; version "01"; 0 ≤ free ≤ total; descriptor table inside
    /// the file and after the header; unique non-zero IDs; every object inside
    /// the file and clear of the header, the table and every other object; at
    /// most one PrimSys partition.
    pub fn read_from(file: &File) -> Result<SifFile> {
        let file_size = file.metadata().map_err(Error::io("stat SIF file"))?.len();

        let mut head = [0u8; HEADER_SIZE];
        // Bounded by HEADER_SIZE, so the cast cannot truncate.
        let have = file_size.min(HEADER_SIZE as u64) as usize;
        file.read_exact_at(&mut head[..have], 0)
            .map_err(Error::io("read SIF header"))?;
        // Identify first, so a short non-SIF file is "not a SIF" and a short
        // SIF with a bad version is "unsupported", before "truncated".
        check_ident(&head[..have])?;
        if have < HEADER_SIZE {
            return Err(Error::Corrupt(format!(
                "truncated header: file is {file_size} bytes, the header needs {HEADER_SIZE}"
            )));
        }
        let header = Header::parse(&head)?;
        let (table_offset, slots) = check_table(&header, file_size)?;

        let mut sif = SifFile {
            header,
            descriptors: Vec::new(),
            slots: Vec::new(),
            table_offset,
            file_size,
            warnings: Vec::new(),
        };
        sif.read_descriptors(file, table_offset, slots)?;
        sif.check_objects(table_offset, slots)?;
        Ok(sif)
    }

    fn read_descriptors(&mut self, file: &File, table_offset: u64, slots: usize) -> Result<()> {
        let mut ids: HashMap<u32, usize> = HashMap::new();
        let mut buf = vec![0u8; SLOTS_PER_READ.min(slots) * DESCRIPTOR_SIZE];
        let mut slot = 0;
        while slot < slots {
            let n = SLOTS_PER_READ.min(slots - slot);
            let chunk = &mut buf[..n * DESCRIPTOR_SIZE];
            let pos = table_offset + (slot * DESCRIPTOR_SIZE) as u64;
            file.read_exact_at(chunk, pos)
                .map_err(Error::io(format!("read descriptor table at offset {pos}")))?;
            for raw in chunk.chunks_exact(DESCRIPTOR_SIZE) {
                let mut slot_buf = [0u8; DESCRIPTOR_SIZE];
                slot_buf.copy_from_slice(raw);
                if let Some(d) = Descriptor::parse(slot, &slot_buf)? {
                    if let Some(first) = ids.insert(d.id, slot) {
                        return Err(Error::Corrupt(format!(
                            "descriptor slots {first} and {slot} both use object ID {}",
                            d.id
                        )));
                    }
                    self.check_bounds(slot, &d)?;
                    self.descriptors.push(d);
                    self.slots.push(slot);
                }
                slot += 1;
            }
        }
        let expected = self.header.descriptors_total - self.header.descriptors_free;
        if self.descriptors.len() as i64 != expected {
            // The reference trusts the counters; a mismatch is suspicious but
            // the slots are authoritative, so only note it.
            self.warnings.push(format!(
                "header counts {expected} used descriptors but {} slots are used",
                self.descriptors.len()
            ));
        }
        Ok(())
    }

    fn check_bounds(&self, slot: usize, d: &Descriptor) -> Result<()> {
        // Both were parsed from non-negative i64 (< 2^63), so the sum fits u64.
        let end = d.offset + d.size;
        if end > self.file_size {
            return Err(Error::Corrupt(format!(
                "descriptor {} (slot {slot}): object extends past end of file \
                 (offset {} + size {} > file size {})",
                d.id, d.offset, d.size, self.file_size
            )));
        }
        Ok(())
    }

    /// Cross-object checks: no overlap with header, table or each other; one PrimSys.
    fn check_objects(&self, table_offset: u64, slots: usize) -> Result<()> {
        let table_end = table_offset + (slots * DESCRIPTOR_SIZE) as u64;
        for d in self.descriptors.iter().filter(|d| d.size > 0) {
            if d.offset < HEADER_SIZE as u64 {
                return Err(Error::Corrupt(format!(
                    "descriptor {}: object at offset {} overlaps the {HEADER_SIZE}-byte header",
                    d.id, d.offset
                )));
            }
            if d.offset < table_end && table_offset < d.end() {
                return Err(Error::Corrupt(format!(
                    "descriptor {}: object [{}, {}) overlaps the descriptor table [{table_offset}, {table_end})",
                    d.id,
                    d.offset,
                    d.end()
                )));
            }
        }

        // Sweep in file order, comparing with the furthest-reaching object so
        // far (an object can overlap one that is not its direct predecessor).
        let mut by_offset: Vec<&Descriptor> =
            self.descriptors.iter().filter(|d| d.size > 0).collect();
        by_offset.sort_by_key(|d| (d.offset, d.end()));
        let mut furthest: Option<&Descriptor> = None;
        for d in by_offset {
            if let Some(prev) = furthest {
                if d.offset < prev.end() {
                    return Err(Error::Corrupt(format!(
                        "objects {} [{}, {}) and {} [{}, {}) overlap",
                        prev.id,
                        prev.offset,
                        prev.end(),
                        d.id,
                        d.offset,
                        d.end()
                    )));
                }
            }
            if furthest.is_none_or(|p| d.end() > p.end()) {
                furthest = Some(d);
            }
        }

        let prims: Vec<u32> = self
            .descriptors
            .iter()
            .filter(|d| is_primary(d))
            .map(|d| d.id)
            .collect();
        if prims.len() > 1 {
            return Err(Error::Corrupt(format!(
                "{} primary system partitions (objects {prims:?}), at most one allowed",
                prims.len()
            )));
        }
        Ok(())
    }

    /// Length of the file when it was opened.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Non-fatal oddities found while reading (e.g. header counters that
    /// disagree with the slots).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The 585 bytes of the descriptor slot of object `id`, as stored (signatures cover some
    /// of its fields as raw bytes). `file` must be the file this `SifFile` was read from.
    pub fn raw_descriptor(&self, file: &File, id: u32) -> Result<[u8; DESCRIPTOR_SIZE]> {
        let i = self
            .descriptors
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(|| Error::NotFound(format!("no object with ID {id}")))?;
        // The table was checked to lie inside the file when it was read.
        let pos = self.table_offset + (self.slots[i] * DESCRIPTOR_SIZE) as u64;
        let mut buf = [0u8; DESCRIPTOR_SIZE];
        file.read_exact_at(&mut buf, pos)
            .map_err(Error::io(format!(
                "read descriptor of object {id} at offset {pos}"
            )))?;
        Ok(buf)
    }

    /// The 128 header bytes, as stored.
    pub fn raw_header(&self, file: &File) -> Result<[u8; HEADER_SIZE]> {
        let mut buf = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut buf, 0)
            .map_err(Error::io("read SIF header"))?;
        Ok(buf)
    }

    /// Absolute offset of descriptor slot 0.
    pub(crate) fn table_offset(&self) -> u64 {
        self.table_offset
    }

    /// Records `slot` as used (by an object being added).
    pub(crate) fn mark_used(&mut self, slot: usize) {
        self.slots.push(slot);
    }

    /// The first descriptor slot no object uses, if any.
    pub(crate) fn first_free_slot(&self) -> Option<usize> {
        let total = usize::try_from(self.header.descriptors_total).ok()?;
        let used: HashSet<usize> = self.slots.iter().copied().collect();
        (0..total).find(|s| !used.contains(s))
    }

    /// The descriptor with object ID `id`.
    pub fn descriptor(&self, id: u32) -> Option<&Descriptor> {
        self.descriptors.iter().find(|d| d.id == id)
    }

    /// The Partition object of type PrimSys (the container root), if any.
    pub fn primary_partition(&self) -> Option<&Descriptor> {
        self.descriptors.iter().find(|d| is_primary(d))
    }

    /// The OCI image config a launch takes the environment, entrypoint, cmd and working
    /// directory from: the first GenericJSON object named `oci-config` (as SingularityCE names
    /// it), if any. One place, so that a signature check before a launch can require the very
    /// object the launch reads to be signed.
    pub fn oci_config(&self) -> Option<&Descriptor> {
        self.descriptors
            .iter()
            .find(|d| d.data_type == DataType::GenericJson && d.name.contains("oci-config"))
    }

    /// The primary partition, required to be SquashFS.
    pub fn primary_squashfs(&self) -> Result<&Descriptor> {
        let d = self
            .primary_partition()
            .ok_or_else(|| Error::NotFound("SIF has no primary partition".into()))?;
        match &d.extra {
            Extra::Partition {
                fs: FsType::Squash, ..
            } => Ok(d),
            Extra::Partition { fs, .. } => Err(Error::NotFound(format!(
                "SIF has no SquashFS primary partition (found {fs})"
            ))),
            // is_primary only matches Partition extras.
            _ => Err(Error::NotFound("SIF has no primary partition".into())),
        }
    }

    /// Reads the whole object `d` into memory. `file` must be the file this
    /// `SifFile` was read from.
    pub fn read_object(&self, file: &File, d: &Descriptor) -> Result<Vec<u8>> {
        self.check_in_file(d)?;
        let len = usize::try_from(d.size).map_err(|_| {
            Error::Invalid(format!(
                "object {} ({} bytes) does not fit in memory",
                d.id, d.size
            ))
        })?;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, d.offset)
            .map_err(Error::io(format!(
                "read object {} at offset {}",
                d.id, d.offset
            )))?;
        Ok(data)
    }

    /// A `Read + Seek` view of object `d`, for streaming large objects.
    pub fn object_reader<'f>(&self, file: &'f File, d: &Descriptor) -> Result<ObjectReader<'f>> {
        self.check_in_file(d)?;
        Ok(ObjectReader {
            file,
            start: d.offset,
            len: d.size,
            pos: 0,
        })
    }

    /// Guards against descriptors that did not come from this file.
    fn check_in_file(&self, d: &Descriptor) -> Result<()> {
        match d.offset.checked_add(d.size) {
            Some(end) if end <= self.file_size => Ok(()),
            _ => Err(Error::Invalid(format!(
                "object {} (offset {} + size {}) is not inside this {}-byte file",
                d.id, d.offset, d.size, self.file_size
            ))),
        }
    }
}

fn is_primary(d: &Descriptor) -> bool {
    d.data_type == DataType::Partition
        && matches!(
            d.extra,
            Extra::Partition {
                part: PartType::PrimSys,
                ..
            }
        )
}

/// Validates the header counters; returns (table offset, slot count), both
/// bounded by the file size so later allocations are too.
fn check_table(h: &Header, file_size: u64) -> Result<(u64, usize)> {
    let (free, total) = (h.descriptors_free, h.descriptors_total);
    if free < 0 || total < 0 {
        return Err(Error::Corrupt(format!(
            "negative descriptor count (free {free}, total {total})"
        )));
    }
    if free > total {
        return Err(Error::Corrupt(format!(
            "header says {free} descriptors are free but only {total} exist"
        )));
    }
    if total > MAX_DESCRIPTORS {
        return Err(Error::Corrupt(format!(
            "descriptor count {total} exceeds the maximum {MAX_DESCRIPTORS}"
        )));
    }
    // total < 2^32, so this fits easily in i64/u64.
    let table_len = total * DESCRIPTOR_SIZE as i64;
    if h.descriptors_size < table_len {
        return Err(Error::Corrupt(format!(
            "descriptor table size {} is smaller than {total} slots × {DESCRIPTOR_SIZE} = {table_len}",
            h.descriptors_size
        )));
    }
    if table_len == 0 {
        return Ok((0, 0));
    }
    let off = h.descriptors_offset;
    if off < HEADER_SIZE as i64 {
        return Err(Error::Corrupt(format!(
            "descriptor table offset {off} overlaps the {HEADER_SIZE}-byte header"
        )));
    }
    let off = off as u64; // non-negative, checked above
    let table_len = table_len as u64;
    match off.checked_add(table_len) {
        Some(end) if end <= file_size => {}
        _ => {
            return Err(Error::Corrupt(format!(
                "descriptor table extends past end of file \
                 (offset {off} + {total} × {DESCRIPTOR_SIZE} bytes > file size {file_size})"
            )))
        }
    }
    // table_len <= file_size, and total < 2^32 fits usize on 64-bit targets.
    let slots = usize::try_from(total)
        .map_err(|_| Error::Unsupported(format!("{total} descriptors on this platform")))?;
    Ok((off, slots))
}

/// Bounded positional reader over one object (see [`SifFile::object_reader`]).
#[derive(Debug)]
pub struct ObjectReader<'f> {
    file: &'f File,
    start: u64,
    len: u64,
    pos: u64,
}

impl ObjectReader<'_> {
    /// Object length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty object.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ObjectReader<'_> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let target = match from {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start of SIF object",
            )),
        }
    }
}
