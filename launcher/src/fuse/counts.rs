//! How many requests of each kind the image server answered, printed by `--debug` when the
//! command is done.
//!
//! Request counts are the measure of the server's cost that a shared machine does not blur:
//! `find + cat` over small files is judged by requests per file (benches/smallfiles.sh), and
//! a change that adds a round trip per file shows here before it shows in any timing. One
//! relaxed atomic add per request: nothing next to the request's two context switches.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The requests the server sees, by FUSE opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Readlink,
    Open,
    Read,
    Flush,
    Release,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Statfs,
    Getxattr,
    Listxattr,
    Access,
}

const ALL: [Op; 16] = [
    Op::Lookup,
    Op::Forget,
    Op::Getattr,
    Op::Readlink,
    Op::Open,
    Op::Read,
    Op::Flush,
    Op::Release,
    Op::Opendir,
    Op::Readdir,
    Op::Readdirplus,
    Op::Releasedir,
    Op::Statfs,
    Op::Getxattr,
    Op::Listxattr,
    Op::Access,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Readlink => "readlink",
            Op::Open => "open",
            Op::Read => "read",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Statfs => "statfs",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Access => "access",
        }
    }
}

/// Requests answered so far, by opcode; also pages stored into the page cache ahead of reads
/// (`push`), which is where the READs that never came went.
#[derive(Default)]
pub struct RequestCounts {
    by_op: [AtomicU64; ALL.len()],
    pushed_files: AtomicU64,
}

impl RequestCounts {
    pub fn count(&self, op: Op) {
        self.by_op[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A file whose contents were stored in the page cache (wholly or in part).
    pub fn pushed_file(&self) {
        self.pushed_files.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, op: Op) -> u64 {
        self.by_op[op as usize].load(Ordering::Relaxed)
    }
}

/// `lookup 12, read 3, ... (total 15); files pushed 40`: the opcodes seen, in a fixed order.
impl fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut total = 0;
        for op in ALL {
            let n = self.get(op);
            if n > 0 {
                write!(f, "{} {n}, ", op.name())?;
                total += n;
            }
        }
        write!(
            f,
            "(total {total}); files pushed {}",
            self.pushed_files.load(Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_opcode_in_a_fixed_order() {
        let c = RequestCounts::default();
        c.count(Op::Read);
        c.count(Op::Lookup);
        c.count(Op::Read);
        c.pushed_file();
        assert_eq!(c.get(Op::Read), 2);
        assert_eq!(c.to_string(), "lookup 1, read 2, (total 3); files pushed 1");
        for (i, op) in ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "ALL is in declaration order");
        }
    }
}
