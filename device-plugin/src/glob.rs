//! Matching device-node globs (`spec.devices.paths`) with globset's semantics, without its regex engine for the
//! common patterns.
//!
//! kmm-api validates the globs with `globset` (default options: `*` and `?` also match `/`, `\` escapes). Compiling
//! a globset matcher builds a regex, and the regex engine's code and lazy-DFA cache are a large share of this agent's
//! resident memory. Patterns made of literals, `?`, `*` and bracket classes (`/dev/simple_kmod*`, `/dev/nvidia[0-9]`)
//! are matched here byte by byte, exactly as globset's regex would (`(?-u)`, dot matches newline); patterns with
//! alternation (`{a,b}`), `**` or POSIX classes (`[[:digit:]]`) fall back to globset. The unit tests cross-check the
//! two on generated patterns and paths.

use globset::{Glob, GlobMatcher};

/// A compiled device-node glob.
#[derive(Clone, Debug)]
pub enum PathGlob {
    /// Literals, `?`, `*` and classes: matched here.
    Simple(Vec<Token>),
    /// Anything else: globset's matcher.
    Full(GlobMatcher),
}

/// One element of a simple glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// This byte.
    Literal(u8),
    /// Any one byte (`?`).
    Any,
    /// Any sequence of bytes, `/` included (`*`).
    Star,
    /// One byte in (or, negated, not in) the inclusive ranges.
    Class {
        /// `[!...]` or `[^...]`.
        negated: bool,
        /// Inclusive byte ranges.
        ranges: Vec<(u8, u8)>,
    },
}

impl PathGlob {
    /// Compiles `pattern`; an error only for a pattern globset refuses (kmm-api refuses those before).
    pub fn new(pattern: &str) -> Result<Self, globset::Error> {
        match parse_simple(pattern) {
            Some(tokens) => Ok(Self::Simple(tokens)),
            None => Ok(Self::Full(Glob::new(pattern)?.compile_matcher())),
        }
    }

    /// Whether `path` matches.
    pub fn is_match(&self, path: &str) -> bool {
        match self {
            Self::Simple(tokens) => match_simple(tokens, path.as_bytes()),
            Self::Full(m) => m.is_match(path),
        }
    }
}

/// The tokens of a pattern within the simple subset, else `None` (including every pattern globset refuses).
fn parse_simple(pattern: &str) -> Option<Vec<Token>> {
    if !pattern.is_ascii() {
        return None;
    }
    let mut bytes = pattern.bytes().peekable();
    let mut tokens = Vec::new();
    while let Some(b) = bytes.next() {
        tokens.push(match b {
            b'?' => Token::Any,
            b'*' if bytes.peek() == Some(&b'*') => return None,
            b'*' => Token::Star,
            b'{' | b'}' => return None,
            b'\\' => Token::Literal(bytes.next()?),
            b'[' => parse_class(&mut bytes)?,
            b => Token::Literal(b),
        });
    }
    Some(tokens)
}

/// A bracket class after its `[`, as globset's parser reads it; `None` for POSIX classes and malformed classes.
fn parse_class(bytes: &mut std::iter::Peekable<std::str::Bytes<'_>>) -> Option<Token> {
    let negated = matches!(bytes.peek(), Some(b'!' | b'^'));
    if negated {
        bytes.next();
    }
    let mut ranges: Vec<(u8, u8)> = Vec::new();
    let mut first = true;
    let mut in_range = false;
    loop {
        let b = bytes.next()?;
        match b {
            b']' if first => ranges.push((b']', b']')),
            b']' => break,
            b'-' if first => ranges.push((b'-', b'-')),
            b'-' if in_range => {
                extend_last(&mut ranges, b'-')?;
                in_range = false;
            }
            b'-' => in_range = true,
            b'[' if !in_range && bytes.peek() == Some(&b':') => return None,
            b if in_range => {
                extend_last(&mut ranges, b)?;
                in_range = false;
            }
            b => ranges.push((b, b)),
        }
        first = false;
    }
    if in_range {
        ranges.push((b'-', b'-'));
    }
    Some(Token::Class { negated, ranges })
}

fn extend_last(ranges: &mut [(u8, u8)], end: u8) -> Option<()> {
    let last = ranges.last_mut()?;
    if end < last.0 {
        return None;
    }
    last.1 = end;
    Some(())
}

fn token_matches(t: &Token, b: u8) -> bool {
    match t {
        Token::Literal(l) => *l == b,
        Token::Any => true,
        Token::Star => false,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&b)) != *negated
        }
    }
}

/// Wildcard matching with single-byte tokens and `*`: on a mismatch, the last `*` takes one more byte (linear in
/// practice, never exponential).
fn match_simple(tokens: &[Token], s: &[u8]) -> bool {
    let (mut t, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, i));
                t += 1;
            }
            Some(tok) if token_matches(tok, s[i]) => {
                t += 1;
                i += 1;
            }
            _ => match star {
                Some((st, si)) => {
                    t = st + 1;
                    i = si + 1;
                    star = Some((st, si + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|t| *t == Token::Star)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn globset_match(p: &str, path: &str) -> Option<bool> {
        Glob::new(p)
            .ok()
            .map(|g| g.compile_matcher().is_match(path))
    }

    #[test]
    fn table() {
        for (p, path, want) in [
            ("/dev/simple_kmod*", "/dev/simple_kmod0", true),
            ("/dev/simple_kmod*", "/dev/simple_kmod", true),
            ("/dev/simple_kmod*", "/dev/simple_kmo", false),
            ("/dev/*", "/dev/dri/card0", true), // `*` crosses `/`, as in globset's default
            ("/dev/nvidia[0-9]", "/dev/nvidia7", true),
            ("/dev/nvidia[0-9]", "/dev/nvidiactl", false),
            ("/dev/nvidia[!0-9]*", "/dev/nvidiactl", true),
            ("/dev/x[]]", "/dev/x]", true),
            ("/dev/x[-a]", "/dev/x-", true),
            ("/dev/x[a-]", "/dev/x-", true),
            ("/dev/x?", "/dev/x/", true),
            ("/dev/a\\*b", "/dev/a*b", true),
            ("/dev/a\\*b", "/dev/axb", false),
            ("/dev/a,b", "/dev/a,b", true),
            ("/dev/*a*b*c", "/dev/xxaxxbxxbxc", true),
            ("/dev/*a*b*c", "/dev/xxaxxbxxbxcd", false),
        ] {
            let g = PathGlob::new(p).unwrap();
            assert!(matches!(g, PathGlob::Simple(_)), "{p} is simple");
            assert_eq!(g.is_match(path), want, "{p} vs {path}");
            assert_eq!(globset_match(p, path), Some(want), "globset: {p} vs {path}");
        }
    }

    #[test]
    fn outside_the_subset_falls_back_to_globset() {
        for (p, path, want) in [
            ("/dev/{a,b}0", "/dev/b0", true),
            ("/dev/**/card*", "/dev/card0", true),
            ("/dev/**/card*", "/dev/dri/card0", true),
            ("/dev/x[[:digit:]]", "/dev/x1", true),
        ] {
            let g = PathGlob::new(p).unwrap();
            assert!(matches!(g, PathGlob::Full(_)), "{p} falls back");
            assert_eq!(g.is_match(path), want, "{p} vs {path}");
        }
        for bad in ["/dev/[a", "/dev/a\\", "/dev/[b-a]", "/dev/a}"] {
            assert_eq!(
                PathGlob::new(bad).is_err(),
                Glob::new(bad).is_err(),
                "{bad}"
            );
        }
    }

    /// Generated patterns and paths over a small alphabet: the simple matcher agrees with globset wherever the
    /// pattern is in the subset, and a pattern it refuses is one globset refuses or one outside the subset.
    #[test]
    fn agrees_with_globset_on_generated_cases() {
        const PAT: &[&str] = &[
            "a", "b", "/", "-", "]", "[", "*", "?", "\\", "!", "^", "[a-b]", "[!a]", "[]a]", "[-]",
            ",",
        ];
        const PATH: &[u8] = b"ab/-][*?\\!^,c";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut simple = 0;
        for _ in 0..20_000 {
            let p: String = (0..1 + next(6)).map(|_| PAT[next(PAT.len())]).collect();
            let parsed = parse_simple(&p);
            let Ok(g) = Glob::new(&p) else {
                assert!(parsed.is_none(), "{p:?}: globset refuses it");
                continue;
            };
            let Some(tokens) = parsed else { continue };
            simple += 1;
            let m = g.compile_matcher();
            for _ in 0..8 {
                let path: String = (0..next(7))
                    .map(|_| PATH[next(PATH.len())] as char)
                    .collect();
                assert_eq!(
                    match_simple(&tokens, path.as_bytes()),
                    m.is_match(&path),
                    "pattern {p:?} path {path:?}"
                );
            }
        }
        assert!(simple > 5_000, "only {simple} simple patterns generated");
    }
}
