//! Array text as `array_out` prints it, read the way `array_in` does.
//!
//! ```text
//! {1,NULL,3}   {}   {"a","b c",NULL,"\"q\""}   {{1,2},{3,4}}   [0:1]={1,2}
//! ```
//!
//! Elements are separated by `,` (only `box` uses `;`, and we have no box kind). An element is
//! double-quoted when it is empty, has special characters or spells `NULL`; inside quotes `\`
//! escapes the next character. An unquoted `NULL` (any case) is SQL NULL, a quoted one is text.
//! Unquoted elements may also use `\` escapes and lose unescaped surrounding whitespace. Each
//! element is parsed with the element kind; dimensions nest as arrays of arrays. Lower bounds
//! are checked for syntax and dropped.

use std::borrow::Cow;

use super::{parse_owned, Reason, Value};
use crate::catalog::TypeKind;

/// PostgreSQL's MAXDIM.
const MAX_DIMS: usize = 6;

pub(super) fn parse_array(element: &TypeKind, text: &str) -> Result<Value<'static>, Reason> {
    let mut p = Parser { s: text, i: 0, element, count: 0 };
    p.skip_ws();
    if p.peek() == Some(b'[') {
        p.dimensions()?;
    }
    p.skip_ws();
    let value = p.level(1)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("unexpected text after the array".into());
    }
    Ok(value)
}

struct Parser<'a, 'k> {
    s: &'a str,
    i: usize,
    element: &'k TypeKind,
    /// Elements read so far, for error messages.
    count: usize,
}

impl<'a> Parser<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    /// `[lb:ub][lb:ub]=` (or `[ub]`), up to MAX_DIMS.
    fn dimensions(&mut self) -> Result<(), Reason> {
        let mut dims = 0;
        while self.eat(b'[') {
            dims += 1;
            if dims > MAX_DIMS {
                return Err("too many dimensions".into());
            }
            self.bound()?;
            if self.eat(b':') {
                self.bound()?;
            }
            if !self.eat(b']') {
                return Err("invalid array dimensions".into());
            }
        }
        self.skip_ws();
        if !self.eat(b'=') {
            return Err("expected '=' after array dimensions".into());
        }
        Ok(())
    }

    fn bound(&mut self) -> Result<i32, Reason> {
        let start = self.i;
        if !self.eat(b'-') {
            self.eat(b'+');
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.s[start..self.i].parse().map_err(|_| "invalid array bound".into())
    }

    /// `{...}` at nesting `depth`.
    fn level(&mut self, depth: usize) -> Result<Value<'static>, Reason> {
        if depth > MAX_DIMS {
            return Err("too many dimensions".into());
        }
        if !self.eat(b'{') {
            return Err("expected '{'".into());
        }
        let mut items = Vec::new();
        self.skip_ws();
        if self.eat(b'}') {
            return Ok(Value::Array(items));
        }
        let mut nested = None;
        loop {
            self.skip_ws();
            let is_sub = self.peek() == Some(b'{');
            if *nested.get_or_insert(is_sub) != is_sub {
                return Err("elements and sub-arrays mixed at one level".into());
            }
            items.push(if is_sub { self.level(depth + 1)? } else { self.element()? });
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err("unterminated array".into()),
                Some(_) => return Err("expected ',' or '}'".into()),
            }
        }
    }

    fn element(&mut self) -> Result<Value<'static>, Reason> {
        self.count += 1;
        let text = if self.eat(b'"') {
            self.quoted()?
        } else {
            match self.unquoted()? {
                None => return Ok(Value::Null),
                Some(t) => t,
            }
        };
        parse_owned(self.element, text).map_err(|e| format!("element {}: {e}", self.count).into())
    }

    /// After the opening quote, up to and including the closing one.
    fn quoted(&mut self) -> Result<Cow<'a, str>, Reason> {
        let start = self.i;
        let mut out: Option<String> = None;
        let mut seg = start;
        loop {
            match self.peek() {
                None => return Err("unterminated quoted element".into()),
                Some(b'"') => {
                    let end = self.i;
                    self.i += 1;
                    return Ok(match out {
                        None => Cow::Borrowed(&self.s[start..end]),
                        Some(mut o) => {
                            o.push_str(&self.s[seg..end]);
                            Cow::Owned(o)
                        }
                    });
                }
                Some(b'\\') => {
                    out.get_or_insert_with(String::new).push_str(&self.s[seg..self.i]);
                    self.i += 1;
                    let ch = self.s[self.i..].chars().next().ok_or("backslash at the end")?;
                    seg = self.i;
                    self.i += ch.len_utf8();
                }
                Some(_) => self.i += 1,
            }
        }
    }

    /// An unquoted element up to `,` or `}`; None for the NULL keyword.
    fn unquoted(&mut self) -> Result<Option<Cow<'a, str>>, Reason> {
        let start = self.i;
        let mut out: Option<String> = None;
        let mut seg = start;
        // Length of the element without its unescaped trailing whitespace, in `out` terms when
        // escapes were seen, else as an end offset into `s`.
        let mut keep = start;
        loop {
            match self.peek() {
                None | Some(b',' | b'}') => break,
                Some(b'{' | b'"') => return Err("unexpected '{' or '\"' in an unquoted element".into()),
                Some(b'\\') => {
                    let o = out.get_or_insert_with(String::new);
                    o.push_str(&self.s[seg..self.i]);
                    self.i += 1;
                    let ch = self.s[self.i..].chars().next().ok_or("backslash at the end")?;
                    o.push(ch);
                    self.i += ch.len_utf8();
                    seg = self.i;
                    keep = o.len();
                }
                Some(c) => {
                    self.i += 1;
                    if !is_ws(c) {
                        match &out {
                            None => keep = self.i,
                            // Everything since `seg` up to here is kept.
                            Some(o) => keep = o.len() + (self.i - seg),
                        }
                    }
                }
            }
        }
        match out {
            None => {
                let raw = &self.s[start..keep];
                if raw.is_empty() {
                    return Err("empty unquoted element".into());
                }
                if raw.eq_ignore_ascii_case("NULL") {
                    return Ok(None);
                }
                Ok(Some(Cow::Borrowed(raw)))
            }
            Some(mut o) => {
                o.push_str(&self.s[seg..self.i]);
                o.truncate(keep);
                Ok(Some(Cow::Owned(o)))
            }
        }
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}
