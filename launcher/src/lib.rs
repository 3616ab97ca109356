//! Launcher runtime: a launch is one straight line through four stages, each a folder:
//!
//! 1. `options`: what the user asked for;
//! 2. `gather`: facts read from the host (identity, site config, GPU, CDI, MPI);
//! 3. `plan`: the launch as plain data, printed by `--debug`;
//! 4. `apply`: the system calls that carry it out.
//!
//! `launch` runs them in that order. Beside them, the leaves they use: `image` (opening and
//! reading images in-process), `linker` (ELF facts, ld.so.cache, the glibc guard), `fuse` (the
//! image server used by `apply`), `host_file` (bounded reads of host files), `env_list` (the environment type) and `debug`.
//!
//! Public: the options and `launch` (the `launcher` command), images and `inspect`, and the
//! parsers of site config and CDI specs (the fuzz targets drive them). The rest is the crate's.
pub(crate) mod apply;
pub(crate) mod debug;
pub(crate) mod env_list;
pub(crate) mod fuse;
pub mod gather;
pub(crate) mod host_file;
pub mod image;
pub mod launch;
pub(crate) mod linker;
pub mod options;
pub(crate) mod plan;
