//! Image formats used by the launcher: SIF containers and SquashFS file systems.
pub mod build;
pub mod oci;
pub mod registry;
pub mod sif;
pub mod sif_image;
pub mod squashfs;
pub mod tree;
