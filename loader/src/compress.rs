//! Module file compression: `.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`, detected by magic bytes (the file name is only a
//! fallback for empty input). Recompression uses the settings the kernel's `scripts/Makefile.modinst` uses, so a
//! re-signed module stays loadable by the kernel's in-kernel decompressor and by kmod.

use std::io::{Read, Write};
use std::path::Path;

use thiserror::Error;

/// Decompressed modules larger than this are refused (a decompression bomb guard; the largest Debian module is
/// about 20 MiB).
pub const MAX_MODULE_SIZE: u64 = 1 << 30;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum CompressError {
    #[error("failed to decompress {codec} data")]
    Decompress {
        codec: Compression,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to decompress {codec} data: output exceeds {MAX_MODULE_SIZE} bytes")]
    DecompressTooLarge { codec: Compression },
    #[error("failed to compress {codec} data")]
    Compress {
        codec: Compression,
        #[source]
        source: std::io::Error,
    },
}

/// How a module file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        })
    }
}

impl Compression {
    /// Detects the codec from the first bytes, falling back to the file extension.
    pub fn detect(data: &[u8], path: Option<&Path>) -> Compression {
        if data.starts_with(b"\xfd7zXZ\0") {
            Compression::Xz
        } else if data.starts_with(b"\x28\xb5\x2f\xfd") {
            Compression::Zstd
        } else if data.starts_with(b"\x1f\x8b") {
            Compression::Gzip
        } else if data.is_empty() {
            path.map_or(Compression::None, Compression::from_path)
        } else {
            Compression::None
        }
    }

    /// The codec implied by a file name (`.ko.xz`, `.ko.zst`, `.ko.gz`).
    pub fn from_path(path: &Path) -> Compression {
        match path.extension().and_then(|e| e.to_str()) {
            Some("xz") => Compression::Xz,
            Some("zst") => Compression::Zstd,
            Some("gz") => Compression::Gzip,
            _ => Compression::None,
        }
    }

    /// The file-name suffix after `.ko` (empty for uncompressed modules).
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
            Compression::Gzip => ".gz",
        }
    }
}

fn read_limited(codec: Compression, reader: impl Read) -> Result<Vec<u8>, CompressError> {
    let mut out = Vec::new();
    reader
        .take(MAX_MODULE_SIZE + 1)
        .read_to_end(&mut out)
        .map_err(|source| CompressError::Decompress { codec, source })?;
    if out.len() as u64 > MAX_MODULE_SIZE {
        return Err(CompressError::DecompressTooLarge { codec });
    }
    Ok(out)
}

/// Decompresses `data` (a borrowed copy for uncompressed input).
pub fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, CompressError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Xz => read_limited(codec, xz2::read::XzDecoder::new_multi_decoder(data)),
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::new(data)
                .map_err(|source| CompressError::Decompress { codec, source })?;
            read_limited(codec, dec)
        }
        Compression::Gzip => read_limited(codec, flate2::read::MultiGzDecoder::new(data)),
    }
}

/// Compresses `data` like the kernel's `modules_install` does: `xz --check=crc32 --lzma2=dict=1MiB`,
/// `zstd` (level 3), `gzip -n` (level 6, no name, no time stamp).
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, CompressError> {
    let wrap = |source| CompressError::Compress { codec, source };
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Xz => {
            let mut opts = xz2::stream::LzmaOptions::new_preset(6).map_err(|e| wrap(e.into()))?;
            opts.dict_size(1 << 20);
            let mut filters = xz2::stream::Filters::new();
            filters.lzma2(&opts);
            let stream =
                xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32)
                    .map_err(|e| wrap(e.into()))?;
            let mut enc = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
            enc.write_all(data).map_err(wrap)?;
            enc.finish().map_err(wrap)
        }
        Compression::Zstd => zstd::stream::encode_all(data, 3).map_err(wrap),
        Compression::Gzip => {
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::new(6));
            enc.write_all(data).map_err(wrap)?;
            enc.finish().map_err(wrap)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn round_trips_every_codec_and_detects_it() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [
            Compression::None,
            Compression::Xz,
            Compression::Zstd,
            Compression::Gzip,
        ] {
            let packed = compress(codec, &data).unwrap();
            assert_eq!(Compression::detect(&packed, None), codec);
            assert_eq!(decompress(codec, &packed).unwrap(), data);
        }
        assert_eq!(
            Compression::from_path(Path::new("a.ko.zst")),
            Compression::Zstd
        );
        assert_eq!(
            Compression::detect(b"", Some(Path::new("a.ko.gz"))),
            Compression::Gzip
        );
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let mut packed = compress(Compression::Xz, b"hello module").unwrap();
        let n = packed.len();
        packed.truncate(n - 8);
        assert!(decompress(Compression::Xz, &packed).is_err());
        assert!(decompress(Compression::Gzip, b"\x1f\x8bgarbage").is_err());
    }
}
