//! The in-process FUSE server that shows the image: lookups and reads through the lazy SquashFS
//! reader, virtual nodes for missing mount points, read-ahead (with its block cache across launches) and page-cache pushes.

pub mod block_cache;
pub mod counts;
pub mod prefetch;
pub mod push;
pub mod report;
pub mod server;
pub mod virtual_nodes;
