//! Launcher runtime: options → plan (pure data) → apply (syscalls).
//!
//! Read it in that order: `options`, `plan` (with `environment`, `etc_files`, `image_view`),
//! then `launch` → `supervisor` (with `rootfs`, `syscalls`, `fuse_fs`).
pub mod bind;
pub mod debug;
pub mod environment;
pub mod etc_files;
pub mod fuse_fs;
pub mod host;
pub mod image;
pub mod image_view;
pub mod inspect;
pub mod launch;
pub mod mount_points;
pub mod options;
pub mod plan;
pub mod prefetch;
pub mod push;
pub mod rootfs;
pub mod scheduler;
pub mod supervisor;
pub mod syscalls;
pub mod virtual_nodes;
