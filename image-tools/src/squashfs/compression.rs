//! Block decompression for every SquashFS 4.0 compressor.
//!
//! Each call is bounded: the output never grows past `max_out` (the metadata
//! block size or the image block size), whatever the input claims.

use std::cell::RefCell;

use super::error::{corrupt, Result};
use super::superblock::Compressor;

/// Memory limit for the lzma/xz decoders: squashfs dictionaries are at most
/// the block size (1 MiB), so a larger demand can only come from a bad header.
const LZMA_MEMLIMIT: u64 = 64 << 20;

/// Decompresses one block into a new buffer of at most `max_out` bytes.
pub(crate) fn decompress(kind: &Compressor, src: &[u8], max_out: usize) -> Result<Vec<u8>> {
    let out = match kind {
        Compressor::Gzip => gzip(src, max_out),
        Compressor::Xz => liblzma_stream(src, max_out, false),
        Compressor::Lzma => liblzma_stream(src, max_out, true),
        Compressor::Lzo => {
            let mut out = vec![0u8; max_out];
            lzokay::decompress::decompress(src, &mut out)
                .map(|n| {
                    out.truncate(n);
                    out
                })
                .map_err(|e| format!("{e:?}"))
        }
        Compressor::Lz4 => {
            let mut out = vec![0u8; max_out];
            lz4_flex::block::decompress_into(src, &mut out)
                .map(|n| {
                    out.truncate(n);
                    out
                })
                .map_err(|e| e.to_string())
        }
        Compressor::Zstd => zstd_decompress(src, max_out),
    };
    out.map_err(|e| corrupt(format!("{kind:?} decompression failed: {e}")))
}

thread_local! {
    // Decoder states are reused per thread: setting one up costs more than
    // decompressing a small metadata block.
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static ZLIB: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
}

fn zstd_decompress(src: &[u8], max_out: usize) -> std::result::Result<Vec<u8>, String> {
    ZSTD.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|e| e.to_string())?;
        let d = match &mut *slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
        };
        d.decompress(src, max_out).map_err(|e| e.to_string())
    })
}

fn gzip(src: &[u8], max_out: usize) -> std::result::Result<Vec<u8>, String> {
    ZLIB.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|e| e.to_string())?;
        let d = match &mut *slot {
            Some(d) => {
                d.reset(true);
                d
            }
            None => slot.insert(flate2::Decompress::new(true)),
        };
        gzip_with(d, src, max_out)
    })
}

fn gzip_with(
    d: &mut flate2::Decompress,
    src: &[u8],
    max_out: usize,
) -> std::result::Result<Vec<u8>, String> {
    use flate2::{FlushDecompress, Status};
    // One spare byte tells "exactly max_out" apart from "more than max_out".
    let mut out = Vec::with_capacity(max_out + 1);
    loop {
        let before = (d.total_in(), d.total_out());
        let consumed = usize::try_from(d.total_in()).map_err(|e| e.to_string())?;
        let rest = src.get(consumed..).unwrap_or_default();
        match d.decompress_vec(rest, &mut out, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) => break,
            Ok(_) if out.len() > max_out => return Err("output exceeds block size".into()),
            Ok(_) if (d.total_in(), d.total_out()) == before => {
                return Err("truncated stream".into())
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if out.len() > max_out {
        return Err("output exceeds block size".into());
    }
    Ok(out)
}

fn liblzma_stream(src: &[u8], max_out: usize, alone: bool) -> std::result::Result<Vec<u8>, String> {
    use liblzma::stream::{Action, Status, Stream};
    let mut s = if alone {
        Stream::new_lzma_decoder(LZMA_MEMLIMIT)
    } else {
        Stream::new_stream_decoder(LZMA_MEMLIMIT, 0)
    }
    .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(max_out + 1);
    loop {
        let before = (s.total_in(), s.total_out());
        let consumed = usize::try_from(s.total_in()).map_err(|e| e.to_string())?;
        let rest = src.get(consumed..).unwrap_or_default();
        match s.process_vec(rest, &mut out, Action::Finish) {
            Ok(Status::StreamEnd) => break,
            Ok(_) if out.len() > max_out => return Err("output exceeds block size".into()),
            Ok(_) if (s.total_in(), s.total_out()) == before => {
                return Err("truncated stream".into())
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if out.len() > max_out {
        return Err("output exceeds block size".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..20000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn gzip_roundtrip_and_limits() {
        let data = sample();
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        let z = e.finish().unwrap();
        assert_eq!(decompress(&Compressor::Gzip, &z, data.len()).unwrap(), data);
        assert!(decompress(&Compressor::Gzip, &z, data.len() - 1).is_err());
        assert!(decompress(&Compressor::Gzip, &z[..z.len() / 2], data.len()).is_err());
        assert!(decompress(&Compressor::Gzip, b"garbage!", 100).is_err());
    }

    #[test]
    fn other_codecs_roundtrip_and_reject_garbage() {
        let data = sample();
        let lz4 = lz4_flex::block::compress(&data);
        assert_eq!(
            decompress(&Compressor::Lz4, &lz4, data.len()).unwrap(),
            data
        );
        assert!(decompress(&Compressor::Lz4, &lz4, 100).is_err());
        let zs = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(
            decompress(&Compressor::Zstd, &zs, data.len()).unwrap(),
            data
        );
        assert!(decompress(&Compressor::Zstd, &zs, 100).is_err());
        let mut xz = Vec::new();
        let mut enc = liblzma::write::XzEncoder::new(&mut xz, 6);
        enc.write_all(&data).unwrap();
        enc.finish().unwrap();
        assert_eq!(decompress(&Compressor::Xz, &xz, data.len()).unwrap(), data);
        assert!(decompress(&Compressor::Xz, &xz, 100).is_err());
        for c in [
            Compressor::Gzip,
            Compressor::Lzma,
            Compressor::Lzo,
            Compressor::Xz,
            Compressor::Lz4,
            Compressor::Zstd,
        ] {
            for junk in [
                &b""[..],
                b"\x00",
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            ] {
                let _ = decompress(&c, junk, 8192);
            }
        }
    }
}
