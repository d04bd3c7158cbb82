//! Composite (row type) text as `record_out` prints it, read the way `record_in` does.
//!
//! ```text
//! ("Main St",12345)    (,)    ("",x)    ("say ""hi""","a\\b")
//! ```
//!
//! Fields are separated by `,` inside parentheses. An empty field is NULL; `""` is the empty
//! string. Inside double quotes `""` is a literal quote; anywhere, `\` escapes the next
//! character. Whitespace is data. Each field is parsed with its declared kind.

use std::borrow::Cow;

use super::{parse_owned, Reason, Value};
use crate::catalog::TypeKind;

pub(super) fn parse_record(fields: &[(String, TypeKind)], text: &str) -> Result<Value<'static>, Reason> {
    let s = text.trim_start_matches(is_ws);
    let b = s.as_bytes();
    if b.first() != Some(&b'(') {
        return Err("expected '('".into());
    }
    let mut i = 1;
    let mut out = Vec::with_capacity(fields.len());
    for (n, (name, kind)) in fields.iter().enumerate() {
        if n > 0 {
            if b.get(i) != Some(&b',') {
                return Err(format!("too few fields (expected {})", fields.len()).into());
            }
            i += 1;
        }
        let (field, next) = read_field(s, i)?;
        i = next;
        let value = match field {
            None => Value::Null,
            Some(t) => parse_owned(kind, t).map_err(|e| format!("field {name:?}: {e}"))?,
        };
        out.push((name.clone(), value));
    }
    match b.get(i) {
        Some(b')') => {}
        Some(b',') => return Err(format!("too many fields (expected {})", fields.len()).into()),
        _ => return Err("expected ')'".into()),
    }
    if !s[i + 1..].trim_end_matches(is_ws).is_empty() {
        return Err("unexpected text after ')'".into());
    }
    Ok(Value::Composite(out))
}

/// One field starting at `i`, up to (not including) the next unquoted `,` or `)`; None for an
/// empty field (NULL). Returns the field and the offset of its terminator.
fn read_field(s: &str, start: usize) -> Result<(Option<Cow<'_, str>>, usize), Reason> {
    let b = s.as_bytes();
    if matches!(b.get(start), Some(b',' | b')')) {
        return Ok((None, start));
    }
    // Borrow a plain unquoted field or one fully quoted without escapes.
    let mut i = start;
    while let Some(&c) = b.get(i) {
        match c {
            b',' | b')' => return Ok((Some(Cow::Borrowed(&s[start..i])), i)),
            b'"' | b'\\' => break,
            _ => i += 1,
        }
    }
    let mut out = String::new();
    let mut i = start;
    let mut in_quotes = false;
    let mut seg = i;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(if in_quotes { "unterminated quoted field" } else { "expected ')'" }.into());
        };
        match c {
            b',' | b')' if !in_quotes => {
                out.push_str(&s[seg..i]);
                return Ok((Some(Cow::Owned(out)), i));
            }
            b'\\' => {
                out.push_str(&s[seg..i]);
                let ch = s[i + 1..].chars().next().ok_or("backslash at the end")?;
                out.push(ch);
                i += 1 + ch.len_utf8();
                seg = i;
            }
            b'"' => {
                out.push_str(&s[seg..i]);
                if in_quotes && b.get(i + 1) == Some(&b'"') {
                    out.push('"');
                    i += 2;
                } else {
                    in_quotes = !in_quotes;
                    i += 1;
                }
                seg = i;
            }
            _ => i += 1,
        }
    }
}

fn is_ws(c: char) -> bool {
    c.is_ascii_whitespace()
}
