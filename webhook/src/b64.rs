//! Base64 of a patch written piece by piece, with the large pieces shared by many patches (a Module's init
//! container, 700 bytes) encoded once, when the Module is prepared.
//!
//! Base64 maps each group of 3 input bytes to 4 output characters, so a shared text's encoding depends only on
//! where it starts relative to the groups: [`SharedText`] keeps the encoding of its middle for each of the three
//! starting positions, and [`Encoder`] encodes only the bytes around it (the 0-2 bytes completing the group before
//! it, and its 0-2 trailing bytes, which join the next piece).

use std::sync::Arc;

/// JSON text shared by many patches, with its base64 precomputed.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedText {
    text: Box<str>,
    /// `encoded[k]`: base64 of `text[k .. k + 3 * n]`, the longest run of whole groups after `k` bytes.
    encoded: [Box<[u8]>; 3],
}

impl SharedText {
    /// `text` with its three encodings.
    pub fn new(text: impl Into<Box<str>>) -> Arc<SharedText> {
        let text = text.into();
        let b = text.as_bytes();
        let encoded = [0, 1, 2].map(|k| {
            let from = k.min(b.len());
            let whole = (b.len() - from) / 3 * 3;
            base64_simd::STANDARD.encode_type::<Box<[u8]>>(&b[from..from + whole])
        });
        Arc::new(SharedText { text, encoded })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Where text made of plain bytes and [`SharedText`]s is written: a `Vec<u8>` (the text itself) or an
/// [`Encoder`] (its base64, shared texts copied from their precomputed base64).
pub trait Sink {
    /// The buffer plain bytes are written to.
    fn buf(&mut self) -> &mut Vec<u8>;
    /// Writes a shared text.
    fn shared(&mut self, text: &SharedText);
}

impl Sink for Vec<u8> {
    fn buf(&mut self) -> &mut Vec<u8> {
        self
    }

    fn shared(&mut self, text: &SharedText) {
        self.extend_from_slice(text.as_str().as_bytes());
    }
}

impl Sink for Encoder<'_> {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    fn shared(&mut self, text: &SharedText) {
        self.push_shared(text);
    }
}

/// Writes base64 (standard alphabet, padded) of the bytes pushed, at the end of `out`.
pub struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    /// Bytes pushed and not encoded yet.
    pending: Vec<u8>,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Encoder {
            out,
            pending: Vec::with_capacity(512),
        }
    }

    /// Appends a shared text, copying its precomputed encoding.
    pub fn push_shared(&mut self, shared: &SharedText) {
        let t = shared.text.as_bytes();
        // Bytes of `t` completing the last group of what is pending.
        let k = (3 - self.pending.len() % 3) % 3;
        let middle = &shared.encoded[k];
        if k > t.len() || middle.is_empty() {
            self.pending.extend_from_slice(t);
            return;
        }
        self.pending.extend_from_slice(&t[..k]);
        base64_simd::STANDARD.encode_append(&self.pending, self.out);
        self.pending.clear();
        self.out.extend_from_slice(middle);
        self.pending
            .extend_from_slice(&t[k + middle.len() / 4 * 3..]);
    }

    /// Encodes what is left, padded.
    pub fn finish(self) {
        base64_simd::STANDARD.encode_append(&self.pending, self.out);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Any mix of plain and shared pieces encodes exactly as the concatenation of their bytes.
    #[test]
    fn pieces_encode_as_their_concatenation() {
        let texts = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "abcde",
            "{\"name\":\"kmm-wait-simple-kmod\"}",
        ];
        for prefix in texts {
            for shared in texts {
                for middle in texts {
                    for shared2 in texts {
                        for suffix in texts {
                            let (s1, s2) = (SharedText::new(shared), SharedText::new(shared2));
                            let mut out = b"x".to_vec();
                            let mut e = Encoder::new(&mut out);
                            e.buf().extend_from_slice(prefix.as_bytes());
                            e.push_shared(&s1);
                            e.buf().extend_from_slice(middle.as_bytes());
                            e.push_shared(&s2);
                            e.buf().extend_from_slice(suffix.as_bytes());
                            e.finish();
                            let whole = format!("{prefix}{shared}{middle}{shared2}{suffix}");
                            let want =
                                format!("x{}", base64_simd::STANDARD.encode_to_string(&whole));
                            assert_eq!(String::from_utf8(out).unwrap(), want, "{whole:?}");
                        }
                    }
                }
            }
        }
    }
}
