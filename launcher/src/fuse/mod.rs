//! The in-process FUSE server that shows the image: lookups and reads through the lazy SquashFS
//! reader, virtual nodes for missing mount points, read-ahead and page-cache pushes.

pub mod counts;
pub mod prefetch;
pub mod push;
pub mod report;
pub mod server;
pub mod virtual_nodes;
