//! Positional reads from the image file, bounds-checked against the image.

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{corrupt, Error, Result};

/// The image: one shared file, read only with `pread`, so any number of
/// threads can read at once without seeking.
pub(crate) struct Disk {
    file: File,
    /// Where the image starts in the file.
    base: u64,
    /// Image length (`bytes_used`); no read goes past it.
    len: u64,
    /// Bytes read from the file so far: `--debug` prints it, to show that a launch reads a
    /// few MB of a large image, not all of it (docs/slurm.md, "Scale"). One relaxed add per
    /// `pread`, which itself costs a system call.
    read: AtomicU64,
}

/// Reads up to this size go through the thread's reused buffer; larger ones get their own.
const SCRATCH_MAX: usize = 1 << 20;

thread_local! {
    // Compressed blocks are read into one buffer per thread: a new buffer per read is zeroed
    // and page-faulted in every time, and in a short-lived launch nearly every page of it is
    // a first touch.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

impl Disk {
    pub(crate) fn new(file: File, base: u64, len: u64) -> Disk {
        Disk {
            file,
            base,
            len,
            read: AtomicU64::new(0),
        }
    }

    /// Bytes read from the image file so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Fills `buf` from image position `pos`; `what` names the structure for errors.
    pub(crate) fn read_exact(
        &self,
        pos: u64,
        buf: &mut [u8],
        what: &dyn std::fmt::Display,
    ) -> Result<()> {
        let end = pos.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(corrupt(format!(
                "{what}: {} bytes at {pos} lie past the image end {}",
                buf.len(),
                self.len
            )));
        }
        let at = self
            .base
            .checked_add(pos)
            .ok_or_else(|| corrupt(format!("{what}: position {pos} overflows")))?;
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| Error::io(format_args!("reading {what} at image offset {pos}"), e))
    }

    /// Reads `len` bytes at `pos` into this thread's scratch buffer and hands them to `f`.
    pub(crate) fn with_bytes<T>(
        &self,
        pos: u64,
        len: usize,
        what: &dyn std::fmt::Display,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let reuse = len <= SCRATCH_MAX;
        // Taken out while in use: a nested call finds it empty and allocates its own.
        let mut buf = if reuse { SCRATCH.take() } else { Vec::new() };
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let out = self
            .read_exact(pos, &mut buf[..len], what)
            .and_then(|()| f(&buf[..len]));
        if reuse {
            SCRATCH.set(buf);
        }
        out
    }

    /// Reads up to `max` bytes at `pos`, fewer only at the image end.
    pub(crate) fn read_upto(
        &self,
        pos: u64,
        max: usize,
        what: &dyn std::fmt::Display,
    ) -> Result<Vec<u8>> {
        let avail = self.len.saturating_sub(pos);
        let n = usize::try_from(avail).unwrap_or(usize::MAX).min(max);
        let mut buf = vec![0u8; n];
        self.read_exact(pos, &mut buf, what)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn disk(bytes: &[u8]) -> Disk {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Disk::new(f, 0, bytes.len() as u64)
    }

    #[test]
    fn scratch_reads_nest_and_grow() {
        let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        let d = disk(&data);
        let what = &"test";
        // Nested: the inner call must not see (or clobber) the outer call's bytes.
        let (outer, inner) = d
            .with_bytes(10, 100, what, |a| {
                let inner = d.with_bytes(1000, 50, what, |b| Ok(b.to_vec()))?;
                Ok((a.to_vec(), inner))
            })
            .unwrap();
        assert_eq!(outer, data[10..110]);
        assert_eq!(inner, data[1000..1050]);
        // Smaller after larger reuses the buffer; larger than the scratch limit is fresh.
        for (pos, len) in [(5, 4096), (7, 3), (0, SCRATCH_MAX + 1), (1, 2 << 20)] {
            let got = d.with_bytes(pos, len, what, |b| Ok(b.to_vec())).unwrap();
            assert_eq!(got, data[pos as usize..pos as usize + len]);
        }
        // Past the end: an error, and the closure is not called.
        assert!(d
            .with_bytes(3 << 20, 1, what, |_| -> Result<()> { panic!("called") })
            .is_err());
    }

    #[test]
    fn counts_the_bytes_read_from_the_file() {
        let d = disk(&[7u8; 10_000]);
        let what = &"test";
        assert_eq!(d.bytes_read(), 0);
        d.with_bytes(100, 4096, what, |_| Ok(())).unwrap();
        assert_eq!(d.read_upto(9_000, 4096, what).unwrap().len(), 1000);
        assert_eq!(d.bytes_read(), 5096);
        // A read refused as past the end reads nothing.
        assert!(d.with_bytes(9_999, 2, what, |_| Ok(())).is_err());
        assert_eq!(d.bytes_read(), 5096);
    }
}
