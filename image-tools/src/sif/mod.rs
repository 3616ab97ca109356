//! SIF (Singularity Image Format) reader and writer.
//!
//! Layout notes: `docs/sif-format.md`. A SIF file is a 128-byte
//! header, a table of fixed 585-byte descriptor slots, and data objects at
//! absolute offsets named by the descriptors. The container's root file
//! system is the Partition object of type PrimSys, usually SquashFS, which
//! callers mount at its byte offset.
//!
//! ```no_run
//! # fn main() -> image_tools::sif::Result<()> {
//! use image_tools::sif::SifFile;
//! let sif = SifFile::open(std::path::Path::new("busybox.sif"))?;
//! let root = sif.primary_squashfs()?;
//! println!("squashfs at offset {} ({} bytes)", root.offset, root.size);
//! # Ok(()) }
//! ```

mod descriptor;
mod error;
mod header;
mod le;
mod reader;
mod types;
mod writer;

pub use descriptor::{Descriptor, DESCRIPTOR_SIZE, GROUP_FLAG, MAX_GROUP_ID};
pub use error::{Error, Result};
pub use header::{Header, HEADER_SIZE, UNSET_TIME};
pub use reader::{ObjectReader, SifFile};
pub use types::{
    arch_code, arch_name, CryptoFormat, DataType, Extra, FsType, HashType, Link, MessageType,
    PartType, SbomFormat,
};
pub use writer::{
    add_objects, now, random_uuid, write, ObjectData, ObjectSpec, WriteOptions, DEFAULT_CAPACITY,
    DESCRIPTORS_OFFSET, PARTITION_ALIGNMENT,
};

/// True if `first_bytes` (at least the first 42 bytes of a file) carry the
/// SIF magic. Any version is accepted here so that an unsupported version
/// gets a precise error from [`SifFile::open`] rather than "not a SIF".
pub fn is_sif(first_bytes: &[u8]) -> bool {
    header::has_magic(first_bytes)
}
