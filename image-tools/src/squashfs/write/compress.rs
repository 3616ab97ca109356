//! Block compression for the writer: one [`Encoder`] per thread, reused for
//! every block, since setting up a zstd or zlib state costs more than a small block.

use std::io;

use super::WriteCompressor;

/// A compressor with its level, checked and resolved to mksquashfs's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Codec {
    pub(crate) kind: WriteCompressor,
    pub(crate) level: i32,
    /// xz dictionary: the block size, so the kernel's preallocated decoder fits it.
    pub(crate) dict_size: u32,
}

impl Codec {
    /// Resolves `level` (None = mksquashfs's default) and rejects levels the
    /// compressor does not have.
    pub(crate) fn new(
        kind: WriteCompressor,
        level: Option<i32>,
        block_size: u32,
    ) -> Result<Codec, String> {
        let (default, range) = match kind {
            WriteCompressor::Zstd => (15, 1..=22),
            WriteCompressor::Gzip => (9, 1..=9),
            WriteCompressor::Xz => (6, 0..=9),
            // lz4_flex has no HC mode: a level is accepted and ignored.
            WriteCompressor::Lz4 => (0, i32::MIN..=i32::MAX),
        };
        let level = level.unwrap_or(default);
        if !range.contains(&level) {
            return Err(format!(
                "{kind:?} compression level {level} outside {}..={}",
                range.start(),
                range.end()
            ));
        }
        Ok(Codec {
            kind,
            level,
            dict_size: block_size,
        })
    }

    /// Superblock compressor id.
    pub(crate) fn id(self) -> u16 {
        match self.kind {
            WriteCompressor::Gzip => 1,
            WriteCompressor::Xz => 4,
            WriteCompressor::Lz4 => 5,
            WriteCompressor::Zstd => 6,
        }
    }

    /// The compressor options block body, written only where mksquashfs
    /// writes one: always for lz4 (the kernel refuses lz4 images without it),
    /// and for a non-default zstd/gzip level (informational).
    pub(crate) fn options(self) -> Option<Vec<u8>> {
        match self.kind {
            WriteCompressor::Lz4 => {
                // Version 1 = the legacy LZ4 block format; flags 0 = no HC.
                let mut v = 1u32.to_le_bytes().to_vec();
                v.extend(0u32.to_le_bytes());
                Some(v)
            }
            WriteCompressor::Zstd if self.level != 15 => {
                Some((self.level as u32).to_le_bytes().to_vec())
            }
            WriteCompressor::Gzip if self.level != 9 => {
                let mut v = (self.level as u32).to_le_bytes().to_vec();
                v.extend(15u16.to_le_bytes()); // window bits
                v.extend(0u16.to_le_bytes()); // default strategy
                Some(v)
            }
            _ => None,
        }
    }
}

/// Per-thread compression state.
pub(crate) enum Encoder {
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    Gzip(Box<flate2::Compress>),
    Xz(Box<liblzma::stream::Filters>),
    Lz4(Vec<u8>),
}

impl Encoder {
    pub(crate) fn new(c: Codec) -> io::Result<Encoder> {
        Ok(match c.kind {
            WriteCompressor::Zstd => Encoder::Zstd(Box::new(zstd::bulk::Compressor::new(c.level)?)),
            WriteCompressor::Gzip => Encoder::Gzip(Box::new(flate2::Compress::new(
                flate2::Compression::new(c.level as u32),
                true,
            ))),
            WriteCompressor::Xz => {
                let mut opts = liblzma::stream::LzmaOptions::new_preset(c.level as u32)
                    .map_err(io::Error::other)?;
                opts.dict_size(c.dict_size);
                let mut f = liblzma::stream::Filters::new();
                f.lzma2(&opts);
                Encoder::Xz(Box::new(f))
            }
            WriteCompressor::Lz4 => Encoder::Lz4(Vec::new()),
        })
    }

    /// Compresses `src`; `None` when the result would not be smaller (the
    /// block is then stored uncompressed).
    pub(crate) fn compress(&mut self, src: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if src.is_empty() {
            return Ok(None);
        }
        // Room for one byte less than the input: anything longer is useless.
        let limit = src.len() - 1;
        match self {
            Encoder::Zstd(z) => {
                let mut out = Vec::with_capacity(limit);
                match z.compress_to_buffer(src, &mut out) {
                    Ok(_) => Ok(Some(out)),
                    // "Destination buffer is too small" is the only error a
                    // valid level can give here.
                    Err(_) => Ok(None),
                }
            }
            Encoder::Gzip(z) => {
                z.reset();
                let mut out = Vec::with_capacity(limit);
                match z.compress_vec(src, &mut out, flate2::FlushCompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => Ok(Some(out)),
                    Ok(_) => Ok(None),
                    Err(e) => Err(io::Error::other(e)),
                }
            }
            Encoder::Xz(filters) => {
                use liblzma::stream::{Action, Check, Status, Stream};
                // CRC32, as mksquashfs: the kernel's xz decoder checks no other.
                let mut s =
                    Stream::new_stream_encoder(filters, Check::Crc32).map_err(io::Error::other)?;
                let mut out = Vec::with_capacity(limit);
                loop {
                    let consumed = s.total_in() as usize;
                    let before = s.total_out();
                    match s.process_vec(&src[consumed..], &mut out, Action::Finish) {
                        Ok(Status::StreamEnd) => return Ok(Some(out)),
                        Ok(_) if out.len() >= limit => return Ok(None),
                        Ok(_) if s.total_out() == before && s.total_in() as usize == consumed => {
                            return Ok(None)
                        }
                        Ok(_) => {}
                        Err(e) => return Err(io::Error::other(e)),
                    }
                }
            }
            Encoder::Lz4(buf) => {
                buf.resize(lz4_flex::block::get_maximum_output_size(src.len()), 0);
                let n = lz4_flex::block::compress_into(src, buf).map_err(io::Error::other)?;
                Ok((n < src.len()).then(|| buf[..n].to_vec()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_shrinks_text_and_gives_up_on_noise() {
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("line {}\n", i % 100).into_bytes())
            .collect();
        let mut x = 1u64;
        let noise: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for kind in [
            WriteCompressor::Zstd,
            WriteCompressor::Gzip,
            WriteCompressor::Xz,
            WriteCompressor::Lz4,
        ] {
            let mut e = Encoder::new(Codec::new(kind, None, 131072).unwrap()).unwrap();
            for _ in 0..2 {
                let z = e.compress(&text).unwrap().unwrap();
                assert!(z.len() < text.len() / 4, "{kind:?}");
                assert!(e.compress(&noise).unwrap().is_none(), "{kind:?}");
            }
        }
        assert!(Codec::new(WriteCompressor::Gzip, Some(10), 4096).is_err());
        assert!(Codec::new(WriteCompressor::Zstd, Some(0), 4096).is_err());
    }
}
