//! A one-pass JSON reader for the hot admission paths: it validates the whole body and hands the caller only the
//! fields it asks for, skipping the rest at a few instructions per byte.
//!
//! It never guesses: every method returns `None` on anything it does not read exactly as serde_json would (bad
//! syntax, a string with escapes where the text is wanted, a surrogate escape, nesting deeper than
//! [`MAX_DEPTH`]), and the caller then sends the body through the general serde path, which gives the precise
//! answer or error. The agreement test in `router::tests` and the `fast_path` fuzz target check that both paths
//! answer alike.

mod de;

/// Containers skipped around a value at most (serde_json stops at 128 levels; the fields read on top add fewer
/// than 20).
pub const MAX_DEPTH: usize = 100;

/// A cursor over a JSON text.
pub struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// Where every `"` and `\` is: bit `k` of word `w` for byte `64 w + k`. Computed before reading (vectorised),
    /// so that a string is read by looking its end up, not by testing its bytes one by one.
    marks: Vec<u64>,
}

/// A position to come back to with [`Scan::rewind`].
#[derive(Clone, Copy)]
pub struct Checkpoint(usize);

/// Bit `k` set when byte `k` of `chunk` (at most 64 bytes) is a quote or a backslash, 16 bytes per SIMD compare;
/// and whether the chunk holds a control character (U+0000 to U+001F), found in the same pass. A partial chunk is
/// padded with spaces.
#[inline]
fn mark_bits(chunk: &[u8]) -> (u64, bool) {
    use wide::u8x16;
    let mut block = [b' '; 64];
    let block = match <&[u8; 64]>::try_from(chunk) {
        Ok(full) => full,
        Err(_) => {
            block[..chunk.len()].copy_from_slice(chunk);
            &block
        }
    };
    let (quote, backslash, last_control) =
        (u8x16::splat(b'"'), u8x16::splat(b'\\'), u8x16::splat(0x1f));
    let (bits, low) = block.chunks_exact(16).enumerate().fold(
        (0, u8x16::splat(0xff)),
        |(bits, low), (k, lane)| {
            let v = u8x16::new(lane.try_into().unwrap_or([0; 16]));
            let hits = v.simd_eq(quote) | v.simd_eq(backslash);
            (
                bits | (u64::from(hits.to_bitmask()) << (16 * k)),
                low.min(v),
            )
        },
    );
    // Some byte is a control character exactly when the smallest byte is at most 0x1f.
    (bits, low.min(last_control).simd_eq(low).any())
}

impl<'a> Scan<'a> {
    /// A cursor at the start of `text`; `None` when the text holds a control character anywhere (raw tabs or
    /// newlines, as in indented JSON): serde reads those. A string then ends at the first quote that no backslash
    /// escapes. The text must be compact, as the API server writes it: a space between tokens is not read either
    /// (the method meeting it answers `None`).
    pub fn new(text: &'a str) -> Option<Self> {
        let b = text.as_bytes();
        let mut control = false;
        let marks = b
            .chunks(64)
            .map(|chunk| {
                let (bits, c) = mark_bits(chunk);
                control |= c;
                bits
            })
            .collect();
        if control {
            return None;
        }
        Some(Scan {
            text,
            b,
            i: 0,
            marks,
        })
    }

    /// Where the cursor is.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint(self.i)
    }

    /// Back to where the cursor was.
    pub fn rewind(&mut self, at: Checkpoint) {
        self.i = at.0;
    }

    /// Index of the quote closing the string whose text starts at `i`, and whether the text holds escapes.
    #[inline(always)]
    fn string_end(&self, mut i: usize) -> Option<(usize, bool)> {
        let mut escaped = false;
        loop {
            let word = i / 64;
            let bits = self.marks.get(word)? & (u64::MAX << (i % 64));
            if bits == 0 {
                i = (word + 1) * 64;
                continue;
            }
            let at = word * 64 + bits.trailing_zeros() as usize;
            if self.b[at] == b'"' {
                return Some((at, escaped));
            }
            escaped = true;
            i = escape_end(self.b, at)?;
        }
    }

    /// The next byte, not consumed.
    #[inline(always)]
    pub fn peek(&mut self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// Whether nothing is left.
    pub fn at_end(&self) -> bool {
        self.i == self.b.len()
    }

    /// A string: its text between the quotes, and whether that text holds escapes (then it is not the value).
    #[inline(always)]
    fn string_raw(&mut self) -> Option<(&'a str, bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let (end, escaped) = self.string_end(start)?;
        self.i = end + 1;
        Some((self.text.get(start..end)?, escaped))
    }

    /// A string without escapes, as text.
    #[inline(always)]
    pub fn str(&mut self) -> Option<&'a str> {
        match self.string_raw()? {
            (s, false) => Some(s),
            (_, true) => None,
        }
    }

    /// A string, escapes allowed, skipped.
    #[inline]
    pub fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        self.i = self.string_end(self.i)?.0 + 1;
        Some(())
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.i = literal(self.b, self.i, word)?;
        Some(())
    }

    /// `null` (consumed: `true`) or something else (not consumed: `false`).
    #[inline]
    pub fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Some(true)
        } else {
            Some(false)
        }
    }

    /// A string without escapes, or `null`.
    pub fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.null()? {
            Some(None)
        } else {
            self.str().map(Some)
        }
    }

    /// `true`, `false` or `null`.
    pub fn opt_bool(&mut self) -> Option<Option<bool>> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| Some(true)),
            b'f' => self.literal(b"false").map(|()| Some(false)),
            b'n' => self.literal(b"null").map(|()| None),
            _ => None,
        }
    }

    /// Skips one value of any kind, checking its syntax.
    #[inline]
    pub fn skip(&mut self) -> Option<()> {
        // A string, the most common value, without the machinery for containers.
        if self.peek()? == b'"' {
            return self.skip_str();
        }
        self.skip_value()
    }

    /// One value, skipped, as its JSON text.
    pub fn raw(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.skip()?;
        self.text.get(start..self.i)
    }

    /// An object: `field` is called with each key (without escapes) and must consume its value.
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.str()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, each element read by `item` (which must consume it).
    pub fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(out);
        }
        loop {
            out.push(item(self)?);
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(out);
                }
                _ => return None,
            }
        }
    }
}

/// Index after the escape sequence at `i`. A `\u` escape of a surrogate is left to serde (pairing rules).
#[inline(never)]
fn escape_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 2),
        b'u' => {
            let hex = b.get(i + 2..i + 6)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let code = hex
                .iter()
                .fold(0u32, |n, &h| n * 16 + (h as char).to_digit(16).unwrap_or(0));
            if (0xD800..0xE000).contains(&code) {
                return None;
            }
            Some(i + 6)
        }
        _ => None,
    }
}

#[inline]
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

fn digits(b: &[u8], mut i: usize) -> (usize, usize) {
    let start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    (i, i - start)
}

/// Index after the number at `i`, by JSON's grammar.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i).0,
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let (end, n) = digits(b, i + 1);
        if n == 0 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let (end, n) = digits(b, i);
        if n == 0 {
            return None;
        }
        i = end;
    }
    Some(i)
}

impl Scan<'_> {
    /// Index after `"key":` at `i`.
    #[inline(always)]
    fn key_end(&mut self, i: usize) -> Option<usize> {
        let b = self.b;
        if *b.get(i)? != b'"' {
            return None;
        }
        let i = self.string_end(i + 1)?.0 + 1;
        (*b.get(i)? == b':').then_some(i + 1)
    }

    /// Skips the value at the cursor, its syntax checked.
    fn skip_value(&mut self) -> Option<()> {
        let b = self.b;
        let mut i = self.i;
        // Open containers, innermost highest: bit set for an object.
        let mut stack: u128 = 0;
        let mut depth = 0;
        loop {
            // At a value.
            match *b.get(i)? {
                b'"' => i = self.string_end(i + 1)?.0 + 1,
                open @ (b'{' | b'[') => {
                    let object = open == b'{';
                    i += 1;
                    if *b.get(i)? == open + 2 {
                        // `{}` or `[]` (the closing bracket is two code points after the opening one).
                        i += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return None;
                        }
                        stack |= u128::from(object) << depth;
                        depth += 1;
                        if object {
                            i = self.key_end(i)?;
                        }
                        continue;
                    }
                }
                b't' => i = literal(b, i, b"true")?,
                b'f' => i = literal(b, i, b"false")?,
                b'n' => i = literal(b, i, b"null")?,
                b'-' | b'0'..=b'9' => i = number(b, i)?,
                _ => return None,
            }
            // After a value: close what ends here, then take the next member.
            loop {
                let Some(top) = depth.checked_sub(1) else {
                    self.i = i;
                    return Some(());
                };
                let object = (stack >> top) & 1 == 1;
                match *b.get(i)? {
                    b',' => {
                        i = if object { self.key_end(i + 1)? } else { i + 1 };
                        break;
                    }
                    b'}' if object => {
                        i += 1;
                        depth = top;
                    }
                    b']' if !object => {
                        i += 1;
                        depth = top;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// Marks field `bit` as seen: `None` when it was already (serde's derived structs refuse repeated fields).
#[inline]
pub fn once(seen: &mut u32, bit: u32) -> Option<()> {
    let mask = 1 << bit;
    if *seen & mask != 0 {
        return None;
    }
    *seen |= mask;
    Some(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn skips(text: &str) -> bool {
        let Some(mut s) = Scan::new(text) else {
            return false;
        };
        s.skip().is_some() && s.at_end()
    }

    /// Every text serde_json accepts as a value is skipped, and every text it refuses is refused (or, for
    /// surrogate escapes only, left to serde), on a corpus of tricky shapes.
    #[test]
    fn skipping_agrees_with_serde_json() {
        let cases = [
            r#"{}"#,
            r#"[]"#,
            r#"{"a":[1,-2.5e+3,true,false,null,"x","with spaces inside"]}"#,
            r#"{"a":{"b":{"c":[[],[{}],{"d":"\"\\\/\b\f\n\r\t\u00e9"}]}}}"#,
            r#""plain text that is longer than eight bytes, twice over""#,
            "\"caf\u{e9} \u{1F600}\"",
            r#"0"#,
            r#"-0.0e0"#,
            r#"01"#,
            r#"1."#,
            r#".5"#,
            r#"-"#,
            r#"1e"#,
            r#"1e+"#,
            r#"+1"#,
            r#"tru"#,
            r#"nul"#,
            r#"{"a"}"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"[1 2]"#,
            r#"{"a":1 "b":2}"#,
            r#"{1:2}"#,
            r#"[}"#,
            r#"{]"#,
            r#""unterminated"#,
            "\"tab\tinside\"",
            "\"nl\ninside\"",
            r#""\x""#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\u+123""#,
            r#"[1]]"#,
            r#"{"a":[1,{"b":2}]}x"#,
        ];
        for text in cases {
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(skips(text), serde, "{text}");
        }
        // Whitespace between tokens is left to serde.
        for spaced in [r#" {}"#, r#"{} "#, r#"{"a" :1}"#, r#"[1, 2]"#, r#"{ }"#] {
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(spaced).is_ok());
            assert!(!skips(spaced), "{spaced}");
        }
        // Surrogate escapes are never judged here.
        assert!(!skips(r#""\ud83d\ude00""#));
        // Control characters anywhere (indented JSON) are left to serde.
        assert!(Scan::new("{\n}").is_none());
        // More than MAX_DEPTH containers around a value is left to serde.
        let nested = |n: usize| format!("{}0{}", "[".repeat(n), "]".repeat(n));
        assert!(skips(&nested(MAX_DEPTH)));
        assert!(!skips(&nested(MAX_DEPTH + 1)));
    }

    #[test]
    fn strings_with_escapes_are_not_read_as_text() {
        let mut s = Scan::new(r#"["plain","esc\"aped",null,true]"#).unwrap();
        let got = s
            .list(|s| {
                Some(match s.peek()? {
                    b'"' => format!("{:?}", s.string_raw()?),
                    b'n' => format!("{:?}", s.opt_str()?),
                    _ => format!("{:?}", s.opt_bool()?),
                })
            })
            .unwrap();
        assert_eq!(
            got,
            [
                r#"("plain", false)"#,
                r#"("esc\\\"aped", true)"#,
                "None",
                "Some(true)"
            ]
        );
        assert_eq!(Scan::new(r#""a\nb""#).unwrap().str(), None);
        assert_eq!(Scan::new(r#""ab""#).unwrap().str(), Some("ab"));
    }

    #[test]
    fn objects_hand_each_key_to_the_caller() {
        let mut s = Scan::new(r#"{"a":1,"b":{"c":[2]},"d":"x"}"#).unwrap();
        let mut seen = Vec::new();
        s.object(|s, key| {
            if key == "d" {
                seen.push(format!("d={}", s.str()?));
            } else {
                seen.push(format!("{key}:{}", s.raw()?));
            }
            Some(())
        })
        .unwrap();
        assert!(s.at_end());
        assert_eq!(seen, ["a:1", r#"b:{"c":[2]}"#, "d=x"]);
        let mut seen = 0;
        assert!(once(&mut seen, 3).is_some());
        assert!(once(&mut seen, 3).is_none());
    }
}
