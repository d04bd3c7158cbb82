//! `hstore` text: `"a"=>"1", "b"=>NULL`.
//!
//! `hstore_out` double-quotes every key and value and backslash-escapes `"` and `\` inside;
//! a NULL value is the bare word `NULL`. Unquoted tokens (which `hstore_in` also accepts) are
//! read too, ending at whitespace, `=`, `,` or the end.

use super::Reason;

pub(super) fn parse_hstore(text: &str) -> Result<Vec<(String, Option<String>)>, Reason> {
    let mut p = Parser { s: text, i: 0 };
    let mut pairs = Vec::new();
    p.skip_ws();
    while !p.at_end() {
        let (key, _) = p.token()?;
        p.skip_ws();
        if !p.s[p.i..].starts_with("=>") {
            return Err("expected '=>' after a key".into());
        }
        p.i += 2;
        p.skip_ws();
        let (value, quoted) = p.token()?;
        let value = if !quoted && value.eq_ignore_ascii_case("NULL") { None } else { Some(value) };
        pairs.push((key, value));
        p.skip_ws();
        if p.at_end() {
            break;
        }
        if !p.eat(b',') {
            return Err("expected ',' between pairs".into());
        }
        p.skip_ws();
        if p.at_end() {
            return Err("trailing ','".into());
        }
    }
    Ok(pairs)
}

struct Parser<'a> {
    s: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

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
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A quoted or bare token with backslash escapes resolved, and whether it was quoted.
    fn token(&mut self) -> Result<(String, bool), Reason> {
        let quoted = self.eat(b'"');
        let mut out = String::new();
        let mut seg = self.i;
        loop {
            match self.peek() {
                None if quoted => return Err("unterminated quoted string".into()),
                None => break,
                Some(b'"') if quoted => {
                    out.push_str(&self.s[seg..self.i]);
                    self.i += 1;
                    return Ok((out, true));
                }
                Some(b' ' | b'\t' | b'\n' | b'\r' | b'=' | b',') if !quoted => break,
                Some(b'"') => return Err("unexpected '\"'".into()),
                Some(b'\\') => {
                    out.push_str(&self.s[seg..self.i]);
                    self.i += 1;
                    let ch = self.s[self.i..].chars().next().ok_or("backslash at the end")?;
                    seg = self.i;
                    self.i += ch.len_utf8();
                }
                Some(_) => self.i += 1,
            }
        }
        out.push_str(&self.s[seg..self.i]);
        if out.is_empty() {
            return Err("empty key or value".into());
        }
        Ok((out, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        v.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect()
    }

    #[test]
    fn parses_hstore_out() {
        assert_eq!(parse_hstore(r#""a"=>"1", "b"=>NULL"#).unwrap(), pairs(&[("a", Some("1")), ("b", None)]));
        assert_eq!(parse_hstore("").unwrap(), pairs(&[]));
        assert_eq!(
            parse_hstore(r#""q\"k"=>"v\\w", "NULL"=>"NULL", ""=>"""#).unwrap(),
            pairs(&[("q\"k", Some("v\\w")), ("NULL", Some("NULL")), ("", Some(""))])
        );
        assert_eq!(
            parse_hstore("a=>1, b => NULL,c=>x\\ y").unwrap(),
            pairs(&[("a", Some("1")), ("b", None), ("c", Some("x y"))])
        );
        assert_eq!(parse_hstore(r#""é"=>"😀""#).unwrap(), pairs(&[("é", Some("😀"))]));
        for bad in [r#""a"=>"#, r#""a"=>"1","#, r#""a""#, r#""a"=>"1" "b"=>"2""#, r#""a=>"1""#, "\\"] {
            assert!(parse_hstore(bad).is_err(), "{bad:?}");
        }
    }
}
