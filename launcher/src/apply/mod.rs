//! Stage 4, apply: carry a plan out with system calls: the child's namespaces, FUSE mount, root
//! and exec (`child`, through `syscalls`), the launcher's server and supervision, or joining a
//! node's shared instance (`share`), or holding a named one (`instance`).

pub mod channel;
pub mod child;
pub mod instance;
pub mod rootfs;
pub mod share;
pub mod supervise;
pub mod supervisor;
pub mod syscalls;
