//! Stage 4, apply: carry a plan out with system calls: fork, namespaces, the FUSE mount, the
//! root, exec and supervision, or joining a node's shared instance.

pub mod rootfs;
pub mod share;
pub mod supervisor;
pub mod syscalls;
