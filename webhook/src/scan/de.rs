//! A serde `Deserializer` over a [`Scan`]: decodes a value where it stands in the body, as serde_json does, with
//! strings found through the scanner's quote bitmap instead of byte by byte.
//!
//! It reads a subset of what serde_json reads, exactly as serde_json reads it, and declines the rest (the caller
//! then goes through serde_json): strings with escapes, numbers that are not integers serde_json keeps as integers
//! (fractions, exponents, `-0`, anything beyond 64 bits), byte strings, enums written as objects, keys read as
//! anything but strings, serde_json's raw values, nesting deeper than [`MAX_DEPTH`], and every type mismatch (where
//! serde_json would fail with its own error). The agreement tests and the `fast_path` fuzz target compare both.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, Visitor};

use super::{MAX_DEPTH, Scan, number};

/// The value is not one this reader decodes (serde_json's answer, value or error, is needed).
#[derive(Debug)]
pub struct Declined;

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("declined by the one-pass reader")
    }
}

impl std::error::Error for Declined {}

impl de::Error for Declined {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Declined
    }
}

type Result<T> = std::result::Result<T, Declined>;

impl<'a> Scan<'a> {
    /// The value at the cursor decoded as a `T`, as serde_json decodes it; `None` when declined (see the module
    /// docs) or when serde_json would fail.
    pub fn deserialize<T: de::Deserialize<'a>>(&mut self) -> Option<T> {
        let mut de = De { s: self, depth: 0 };
        T::deserialize(&mut de).ok()
    }
}

struct De<'s, 'a> {
    s: &'s mut Scan<'a>,
    depth: usize,
}

/// An integer as serde_json keeps it: non-negative in a `u64`, negative in an `i64`.
enum Int {
    U(u64),
    I(i64),
}

impl<'a> De<'_, 'a> {
    fn peek(&mut self) -> Result<u8> {
        self.s.peek().ok_or(Declined)
    }

    fn eat(&mut self, c: u8) -> Result<()> {
        self.s.eat(c).ok_or(Declined)
    }

    fn str(&mut self) -> Result<&'a str> {
        self.s.str().ok_or(Declined)
    }

    fn null(&mut self) -> Result<()> {
        match self.s.null() {
            Some(true) => Ok(()),
            _ => Err(Declined),
        }
    }

    fn bool(&mut self) -> Result<bool> {
        match self.s.opt_bool() {
            Some(Some(b)) => Ok(b),
            _ => Err(Declined),
        }
    }

    fn int(&mut self) -> Result<Int> {
        let (b, start) = (self.s.b, self.s.i);
        let end = number(b, start).ok_or(Declined)?;
        let text = &b[start..end];
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let mut n: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                // A fraction or an exponent: serde_json reads an f64.
                return Err(Declined);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(Declined)?;
        }
        let int = if !negative {
            Int::U(n)
        } else if n == 0 {
            // serde_json reads `-0` as the f64 -0.0.
            return Err(Declined);
        } else {
            Int::I(0i64.checked_sub_unsigned(n).ok_or(Declined)?)
        };
        self.s.i = end;
        Ok(int)
    }

    /// An array (`open` = `[`) or an object (`{`), its members read by `visit`. A visitor may stop before the end
    /// (a struct read from an array): serde_json then wants the closing bracket.
    fn container<T>(
        &mut self,
        open: u8,
        visit: impl FnOnce(&mut Members<'_, '_, 'a>) -> Result<T>,
    ) -> Result<T> {
        if self.peek()? != open || self.depth >= MAX_DEPTH {
            return Err(Declined);
        }
        self.s.i += 1;
        self.depth += 1;
        let mut members = Members {
            de: self,
            // `]` and `}` are two code points after `[` and `{`.
            close: open + 2,
            first: true,
            ended: false,
        };
        let out = visit(&mut members).and_then(|value| {
            if !members.ended {
                members.de.eat(members.close)?;
            }
            Ok(value)
        });
        self.depth -= 1;
        out
    }
}

impl<'de> de::Deserializer<'de> for &mut De<'_, 'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b'{' => self.deserialize_map(visitor),
            b'[' => self.deserialize_seq(visitor),
            b'"' => visitor.visit_borrowed_str(self.str()?),
            b't' | b'f' => visitor.visit_bool(self.bool()?),
            b'n' => {
                self.null()?;
                visitor.visit_unit()
            }
            b'-' | b'0'..=b'9' => match self.int()? {
                Int::U(n) => visitor.visit_u64(n),
                Int::I(n) => visitor.visit_i64(n),
            },
            _ => Err(Declined),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_bool(self.bool()?)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    /// Every number type: serde_json hands the visitor the number as it parsed it, whatever type was asked.
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.int()? {
            Int::U(n) => visitor.visit_u64(n),
            Int::I(n) => visitor.visit_i64(n),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Declined)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Declined)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.peek()? == b'n' {
            self.null()?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.null()?;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        // serde_json's raw values and arbitrary-precision numbers go through private newtype names.
        if name.starts_with("$serde_json") {
            return Err(Declined);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.container(b'[', |members| visitor.visit_seq(members))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.container(b'{', |members| visitor.visit_map(members))
    }

    /// serde_json reads a struct from an object or an array.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.peek()? {
            b'{' => self.deserialize_map(visitor),
            b'[' => self.deserialize_seq(visitor),
            _ => Err(Declined),
        }
    }

    /// Unit variants, written as strings; variants with data (objects) are declined.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if self.peek()? != b'"' {
            return Err(Declined);
        }
        let variant: de::value::BorrowedStrDeserializer<'de, Declined> =
            de::value::BorrowedStrDeserializer::new(self.str()?);
        visitor.visit_enum(variant)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.s.skip().ok_or(Declined)?;
        visitor.visit_unit()
    }
}

/// The members of an array or an object, after its opening bracket.
struct Members<'d, 's, 'a> {
    de: &'d mut De<'s, 'a>,
    /// The closing bracket.
    close: u8,
    first: bool,
    ended: bool,
}

impl Members<'_, '_, '_> {
    /// Moves to the next member: `false` at the closing bracket (consumed), and from then on.
    fn next(&mut self) -> Result<bool> {
        if self.ended {
            return Ok(false);
        }
        match self.de.peek()? {
            c if c == self.close => {
                self.de.s.i += 1;
                self.ended = true;
                return Ok(false);
            }
            b',' if !self.first => self.de.s.i += 1,
            _ if self.first => {}
            _ => return Err(Declined),
        }
        self.first = false;
        Ok(true)
    }
}

impl<'de> de::SeqAccess<'de> for Members<'_, '_, 'de> {
    type Error = Declined;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

impl<'de> de::MapAccess<'de> for Members<'_, '_, 'de> {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.next()? {
            return Ok(None);
        }
        let key = self.de.str()?;
        self.de.eat(b':')?;
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }
}

/// An object's key: read only as a string. serde_json also parses keys as numbers or booleans for maps keyed by
/// those; here every request is answered with the string, which such visitors refuse, so those keys are declined.
struct Key<'a>(&'a str);

impl<'de> de::Deserializer<'de> for Key<'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(self.0.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use serde::de::DeserializeOwned;
    use serde_json::Value;

    use super::*;

    /// Reads `text` both ways: the scanner either declines or answers what serde_json answers, and never answers
    /// where serde_json fails. Returns whether the scanner answered.
    fn agree<T: DeserializeOwned + PartialEq + Debug>(text: &str) -> bool {
        let serde = serde_json::from_str::<T>(text);
        let Some(mut s) = Scan::new(text) else {
            return false;
        };
        let Some(ours) = s.deserialize::<T>() else {
            return false;
        };
        if !s.at_end() {
            // Text after the value: the caller, expecting a `,` or a closing bracket, declines.
            return false;
        }
        match serde {
            Ok(v) => assert_eq!(ours, v, "{text:?}"),
            Err(e) => panic!("{text:?}: read {ours:?} where serde_json fails: {e}"),
        }
        true
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct S {
        name: String,
        #[serde(default)]
        count: Option<i32>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        kind: Option<E>,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    enum E {
        Always,
        Never,
    }

    #[test]
    fn values_read_as_serde_json_reads_them_or_are_declined() {
        let texts = [
            "0",
            "1",
            "-1",
            "-0",
            "01",
            "1.5",
            "1e3",
            "-1E-3",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "true",
            "false",
            "null",
            "nul",
            "\"\"",
            "\"a\"",
            "\"a\\nb\"",
            "\"\\u00e9\"",
            "[]",
            "[1,2]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{}",
            "{\"a\":1}",
            "{\"a\":1,}",
            "{\"a\":1,\"a\":2}",
            "{\"a\":[{\"b\":null}]}",
            "{1:2}",
            "{\"a\"1}",
            "[[[[[]]]]]",
            "\"x\"y",
        ];
        let mut read = 0;
        for t in texts {
            read += usize::from(agree::<Value>(t));
            agree::<u64>(t);
            agree::<i64>(t);
            agree::<u8>(t);
            agree::<f64>(t);
            agree::<bool>(t);
            agree::<String>(t);
            agree::<Option<u32>>(t);
            agree::<Vec<u64>>(t);
            agree::<BTreeMap<String, Value>>(t);
            agree::<()>(t);
        }
        // Keys serde_json parses as numbers or booleans are declined.
        assert!(!agree::<BTreeMap<u64, u64>>(r#"{"1":2}"#));
        assert!(!agree::<BTreeMap<bool, u64>>(r#"{"true":2}"#));
        assert!(agree::<BTreeMap<String, u64>>(r#"{"1":2}"#));
        // Most well-formed values are read, not declined.
        assert!(read >= 15, "{read}");
    }

    #[test]
    fn structs_and_enums_read_as_serde_json_reads_them_or_are_declined() {
        let read = [
            r#"{"name":"a"}"#,
            r#"{"name":"a","count":3,"tags":["x","y"],"kind":"Never"}"#,
            r#"{"name":"a","count":null,"unknown":{"deep":[1,{"x":true}]}}"#,
            r#"["a",3,["x"],"Always"]"#,
        ];
        for t in read {
            assert!(agree::<S>(t), "declined {t}");
        }
        let refused = [
            r#"{"name":"a","name":"b"}"#,
            r#"{"count":3}"#,
            r#"{"name":"a","count":"3"}"#,
            r#"{"name":"a","count":3000000000}"#,
            r#"{"name":"a","kind":"Sometimes"}"#,
            r#"{"name":"a","kind":{"Always":null}}"#,
            r#"{"name":1}"#,
            r#"["a",3,["x"],"Always",5]"#,
            r#"{"name":"a\"b"}"#,
            r#"{"name":"a"} "#,
        ];
        for t in refused {
            assert!(!agree::<S>(t), "read {t}");
        }
    }

    /// Every Module of upstream KMM's examples is read by the scanner, to what serde_json reads.
    #[test]
    fn upstream_example_modules_are_read_as_serde_json_reads_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/upstream-kmm/examples");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for doc in serde_norway::Deserializer::from_str(&text) {
                let value: Value = serde::Deserialize::deserialize(doc).unwrap();
                if value["kind"] != "Module" {
                    continue;
                }
                let json = serde_json::to_string(&value).unwrap();
                let serde: kmm_api::Module = serde_json::from_str(&json).unwrap();
                let ours: kmm_api::Module = Scan::new(&json).unwrap().deserialize().expect(&json);
                assert_eq!(
                    serde_json::to_value(&ours).unwrap(),
                    serde_json::to_value(&serde).unwrap()
                );
                read += 1;
            }
        }
        assert!(read >= 3, "{read}");
    }
}
