//! A streaming gzip (RFC 1952) reader for layer blobs: the members' headers are parsed here and their DEFLATE
//! data inflated by zlib-rs in raw mode, straight into the caller's buffer, from the input's own buffer
//! ([`BufRead`]: no copy on the way in).
//!
//! The members' CRC-32 is not computed: a layer blob is checked against its sha256 digest, which covers every
//! compressed byte (and so, DEFLATE being deterministic, every decompressed one); computing the CRC on top cost
//! about a fifth of the inflate time. The trailer's length field (ISIZE) is still checked, and so are the
//! header fields, the end of the DEFLATE data and what follows a member (another member or the end), as
//! `flate2`'s `MultiGzDecoder` does.

use std::io::{self, BufRead, Read};

use flate2::{Decompress, FlushDecompress, Status};

enum State {
    /// Before a member's header.
    Header,
    /// Inside a member's DEFLATE data.
    Body,
    /// After a member's DEFLATE data, before its 8-byte trailer.
    Trailer,
    /// After the last member.
    Done,
}

/// Decompresses every member of a gzip stream.
pub(super) struct Gunzip<R> {
    inner: R,
    inflate: Decompress,
    state: State,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid gzip data: {msg}"),
    )
}

/// Skips a zero-terminated header field (file name, comment).
fn skip_cstr<R: BufRead>(r: &mut R) -> io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gzip header ends early",
            ));
        }
        if let Some(i) = buf.iter().position(|b| *b == 0) {
            r.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        r.consume(n);
    }
}

/// Reads and checks one member header (RFC 1952 section 2.3).
fn read_header<R: BufRead>(r: &mut R) -> io::Result<()> {
    let mut h = [0u8; 10];
    r.read_exact(&mut h)?;
    if h[..2] != [0x1f, 0x8b] {
        return Err(invalid("not a gzip member"));
    }
    if h[2] != 8 {
        return Err(invalid("unknown compression method"));
    }
    let flags = h[3];
    if flags & 0xe0 != 0 {
        return Err(invalid("reserved header flags set"));
    }
    if flags & 0x04 != 0 {
        // FEXTRA: a length, then that many bytes.
        let mut len = [0u8; 2];
        r.read_exact(&mut len)?;
        let len = u64::from(u16::from_le_bytes(len));
        let skipped = io::copy(&mut r.by_ref().take(len), &mut io::sink())?;
        if skipped != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gzip header ends early",
            ));
        }
    }
    if flags & 0x08 != 0 {
        skip_cstr(r)?; // FNAME
    }
    if flags & 0x10 != 0 {
        skip_cstr(r)?; // FCOMMENT
    }
    if flags & 0x02 != 0 {
        let mut crc16 = [0u8; 2]; // FHCRC
        r.read_exact(&mut crc16)?;
    }
    Ok(())
}

impl<R: BufRead> Gunzip<R> {
    /// A reader of the decompressed bytes of `inner`, which must start with a gzip member.
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            inflate: Decompress::new(false),
            state: State::Header,
        }
    }
}

impl<R: BufRead> Read for Gunzip<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Header => {
                    read_header(&mut self.inner)?;
                    self.inflate.reset(false);
                    self.state = State::Body;
                }
                State::Trailer => {
                    let mut t = [0u8; 8];
                    self.inner.read_exact(&mut t)?;
                    let isize = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                    // ISIZE is the member's length modulo 2^32.
                    if u64::from(isize) != self.inflate.total_out() & 0xffff_ffff {
                        return Err(invalid("member length does not match its trailer"));
                    }
                    self.state = if self.inner.fill_buf()?.is_empty() {
                        State::Done
                    } else {
                        State::Header
                    };
                }
                State::Body => {
                    let input = self.inner.fill_buf()?;
                    let end = input.is_empty();
                    let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
                    let flush = if end {
                        FlushDecompress::Finish
                    } else {
                        FlushDecompress::None
                    };
                    let status = self
                        .inflate
                        .decompress(input, out, flush)
                        .map_err(|e| invalid(&e.to_string()))?;
                    let used = usize::try_from(self.inflate.total_in() - in0).unwrap_or(0);
                    let made = usize::try_from(self.inflate.total_out() - out0).unwrap_or(0);
                    self.inner.consume(used);
                    if status == Status::StreamEnd {
                        self.state = State::Trailer;
                    } else if made == 0 && (end || used == 0) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "gzip data ends early",
                        ));
                    }
                    if made > 0 {
                        return Ok(made);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sample(n: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter mixed with a little xorshift noise.
        let mut x: u32 = 0x9e37_79b9;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 7 == 0 { x as u8 } else { (i / 64) as u8 }
            })
            .collect()
    }

    fn gunzip(data: &[u8], buf: usize) -> io::Result<Vec<u8>> {
        let mut r = Gunzip::new(io::BufReader::with_capacity(buf, data));
        let mut out = Vec::new();
        // Small reads too, as the tar reader does for headers.
        let mut piece = vec![0u8; 700];
        loop {
            let k = r.read(&mut piece)?;
            if k == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&piece[..k]);
        }
    }

    #[test]
    fn equals_flate2_for_single_and_multi_member_streams() {
        let a = sample(300_000);
        let b = sample(5_000);
        let mut two = gz(&a, 6);
        two.extend(gz(&b, 1));
        two.extend(gz(b"", 9));
        for (data, want) in [
            (gz(&a, 6), a.clone()),
            (gz(&a, 0), a.clone()),
            (gz(b"", 6), Vec::new()),
            (two, [a.clone(), b.clone()].concat()),
        ] {
            let mut reference = Vec::new();
            flate2::read::MultiGzDecoder::new(data.as_slice())
                .read_to_end(&mut reference)
                .unwrap();
            assert_eq!(reference, want);
            // Input arriving in tiny and in large pieces.
            for buf in [1, 13, 4096, 1 << 20] {
                assert_eq!(gunzip(&data, buf).unwrap(), want, "buffer {buf}");
            }
        }
    }

    #[test]
    fn skips_optional_header_fields() {
        let data = sample(10_000);
        let packed = flate2::GzBuilder::new()
            .filename("modules.tar")
            .comment("a comment")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::default());
        let mut e = packed;
        e.write_all(&data).unwrap();
        let mut packed = e.finish().unwrap();
        assert_eq!(gunzip(&packed, 3).unwrap(), data);
        // FHCRC: set the flag and insert the two bytes after the fixed header (their value is not checked).
        packed[3] |= 0x02;
        let fextra_len = 2 + 4;
        let at = 10 + fextra_len + "modules.tar".len() + 1 + "a comment".len() + 1;
        packed.splice(at..at, [0xaa, 0xbb]);
        assert_eq!(gunzip(&packed, 64).unwrap(), data);
    }

    #[test]
    fn refuses_broken_streams() {
        let data = sample(50_000);
        let good = gz(&data, 6);
        let kind = |bytes: &[u8]| gunzip(bytes, 1024).unwrap_err().kind();
        // Truncated anywhere: in the header, the DEFLATE data, the trailer.
        for cut in [5, 40, good.len() / 2, good.len() - 3] {
            assert_eq!(
                kind(&good[..cut]),
                io::ErrorKind::UnexpectedEof,
                "cut {cut}"
            );
        }
        // Not gzip, or an unknown method, or reserved flags.
        assert_eq!(kind(b"PK\x03\x04 not gzip"), io::ErrorKind::InvalidData);
        let mut m = good.clone();
        m[2] = 7;
        assert_eq!(kind(&m), io::ErrorKind::InvalidData);
        let mut m = good.clone();
        m[3] = 0x80;
        assert_eq!(kind(&m), io::ErrorKind::InvalidData);
        // A wrong length in the trailer.
        let mut m = good.clone();
        let n = m.len();
        m[n - 4] ^= 1;
        assert_eq!(kind(&m), io::ErrorKind::InvalidData);
        // Garbage after the member.
        let mut m = good.clone();
        m.extend_from_slice(b"trailing garbage");
        assert_eq!(kind(&m), io::ErrorKind::InvalidData);
        // Corrupt DEFLATE data (a reserved block type).
        let mut m = good;
        m[10] |= 0x06;
        assert!(gunzip(&m, 1024).is_err());
    }
}
