//! envsubst with the semantics of github.com/a8m/envsubst (no restrictions), as upstream KMM uses it.
//!
//! - `$NAME` and `${NAME}`: the value, or `""` when unset;
//! - `$$`: a literal `$`;
//! - `${NAME-default}` / `${NAME:-default}`: the default when unset / unset or empty;
//! - `${NAME=default}` / `${NAME:=default}`: the same (there is no environment to assign to);
//! - `${NAME+alt}` / `${NAME:+alt}`: `alt` when set / set and non-empty, else `""`;
//! - `${#NAME}`: the length of the value;
//! - a `$` not followed by a name or `{` stays as it is; an unterminated `${` is an error.
//!
//! Defaults and alternatives are themselves substituted.

/// Why a template could not be substituted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvsubstError {
    /// `${` without its closing `}`.
    #[error("bad substitution: unterminated \"${{\" at byte {offset} of {template:?}")]
    Unterminated {
        /// Byte offset of the `$`.
        offset: usize,
        /// The template.
        template: String,
    },
    /// `${}` or `${` followed by something that is not a name.
    #[error("bad substitution: {expression:?} in {template:?}")]
    BadExpression {
        /// The expression between the braces.
        expression: String,
        /// The template.
        template: String,
    },
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Substitutes `template`; `lookup` returns a variable's value, or `None` when it is unset.
pub fn envsubst(
    template: &str,
    lookup: impl Fn(&str) -> Option<String> + Copy,
) -> Result<String, EnvsubstError> {
    let bytes = template.as_bytes();
    let mut out = String::with_capacity(template.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&template[literal_start..i]);
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end =
                    matching_brace(bytes, i + 2).ok_or_else(|| EnvsubstError::Unterminated {
                        offset: i,
                        template: template.to_owned(),
                    })?;
                out.push_str(&expand_braced(&template[i + 2..end], template, lookup)?);
                i = end + 1;
            }
            Some(&c) if is_name_start(c) => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && is_name_char(bytes[end]) {
                    end += 1;
                }
                out.push_str(&lookup(&template[start..end]).unwrap_or_default());
                i = end;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
        literal_start = i;
    }
    out.push_str(&template[literal_start..]);
    Ok(out)
}

fn matching_brace(bytes: &[u8], from: usize) -> Option<usize> {
    let mut depth = 1usize;
    let mut j = from;
    while j < bytes.len() {
        match bytes[j] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

fn expand_braced(
    expr: &str,
    template: &str,
    lookup: impl Fn(&str) -> Option<String> + Copy,
) -> Result<String, EnvsubstError> {
    let bad = || EnvsubstError::BadExpression {
        expression: expr.to_owned(),
        template: template.to_owned(),
    };
    let bytes = expr.as_bytes();
    if let Some(name) = expr.strip_prefix('#') {
        if name.is_empty() || !name.bytes().all(is_name_char) || !is_name_start(name.as_bytes()[0])
        {
            return Err(bad());
        }
        return Ok(lookup(name).unwrap_or_default().chars().count().to_string());
    }
    if bytes.is_empty() || !is_name_start(bytes[0]) {
        return Err(bad());
    }
    let mut n = 1;
    while n < bytes.len() && is_name_char(bytes[n]) {
        n += 1;
    }
    let name = &expr[..n];
    let value = lookup(name);
    let rest = &expr[n..];
    if rest.is_empty() {
        return Ok(value.unwrap_or_default());
    }
    let (colon, op_and_word) = match rest.strip_prefix(':') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let mut chars = op_and_word.chars();
    let op = chars.next().ok_or_else(bad)?;
    let word = chars.as_str();
    // With `:`, an empty value counts as unset.
    let set = match &value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    match op {
        '-' | '=' => {
            if set {
                Ok(value.unwrap_or_default())
            } else {
                envsubst(word, lookup)
            }
        }
        '+' => {
            if set {
                envsubst(word, lookup)
            } else {
                Ok(String::new())
            }
        }
        _ => Err(bad()),
    }
}
