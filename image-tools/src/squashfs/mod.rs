//! Lazy SquashFS reader: opens by reading only the superblock and small tables.
