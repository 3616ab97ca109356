//! Image formats used by the launcher: SIF containers and SquashFS file systems.
//!
//! Reading (`sif`, `squashfs`, `oci_config`, `sif_image`'s verify) needs only the decompressors;
//! making images (`build`, `oci` staging, `registry` pulls, `tree`, `squashfs::write`) is the
//! `build` feature, on by default, which brings the HTTP client, TLS, tar and the tree walker.
//! The launcher's runtime turns it off: a launch compiles and links no HTTP stack.
//! Checking SIF signatures (`sif_sig`: OpenPGP, DSSE with Ed25519/RSA/ECDSA) is the `verify`
//! feature, off by default and on for the `launcher` binary.
// Unpacked bases of definition-file builds, kept for the next build of the same base.
#[cfg(feature = "build")]
pub mod basecache;
#[cfg(feature = "build")]
pub mod build;
// Definition files: pure parsing, used only by builds.
// Definition-file builds: stages, %post as fake root, Apptainer's metadata.
#[cfg(feature = "build")]
pub mod defbuild;
#[cfg(feature = "build")]
pub mod deffile;
// Fake root for definition-file builds (user namespace + seccomp).
#[cfg(feature = "build")]
pub mod fakeroot;
pub mod file_identity;
pub mod image_file;
// Shell wildcards in %files sources.
#[cfg(feature = "build")]
pub mod glob;
#[cfg(feature = "build")]
pub mod oci;
pub mod oci_config;
#[cfg(feature = "build")]
pub mod registry;
pub mod sif;
pub mod sif_image;
#[cfg(feature = "verify")]
pub mod sif_sig;
pub mod squashfs;
// `launcher build --sandbox`: a staged root placed as a directory tree.
#[cfg(feature = "build")]
pub mod sandbox;
#[cfg(feature = "build")]
pub mod tree;
