//! Launcher runtime: options → plan (pure data) → apply (syscalls).
//!
//! Read it in that order: `options`, `plan` (with `environment`, `etc_files`, `image_view`),
//! then `launch` → `supervisor` (with `rootfs`, `syscalls`, `fuse_fs`).
pub mod bind;
pub mod cdi;
pub mod debug;
pub mod elf_dyn;
pub mod environment;
pub mod etc_files;
pub mod fuse_fs;
pub mod glibc_guard;
pub mod gpu;
pub mod host;
pub mod image;
pub mod image_view;
pub mod injection;
pub mod inspect;
pub mod launch;
pub mod ld_cache;
pub mod mount_points;
pub mod mpi;
pub mod options;
pub mod plan;
pub mod prefetch;
pub mod push;
pub mod rootfs;
pub mod scheduler;
pub mod share;
pub mod site_config;
pub mod supervisor;
pub mod syscalls;
pub mod virtual_nodes;
