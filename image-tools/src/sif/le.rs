//! Little-endian field access on fixed-size buffers.
//!
//! SIF structures are packed, so 64-bit fields sit at odd offsets; we read
//! them by offset instead of mapping a struct. Offsets are compile-time
//! constants of this module's callers, so slicing cannot go out of bounds
//! for the fixed-size buffers they pass.

pub(crate) fn array<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[off..off + N]);
    out
}

pub(crate) fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(array(buf, off))
}

pub(crate) fn i64_at(buf: &[u8], off: usize) -> i64 {
    i64::from_le_bytes(array(buf, off))
}

pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_i64(buf: &mut [u8], off: usize, v: i64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Text field: NUL-padded, possibly completely full. Like the reference we
/// strip trailing NULs only; invalid UTF-8 is replaced rather than rejected.
pub(crate) fn text(buf: &[u8]) -> String {
    let end = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Text up to the first NUL (used for OCI digests).
pub(crate) fn cstr(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Bytes shown in an error message: printable ASCII kept, the rest escaped.
pub(crate) fn escaped(buf: &[u8]) -> String {
    buf.iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}
