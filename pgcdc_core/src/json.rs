//! JSON text exactly as Debezium's Kafka `JsonConverter` (Jackson) writes it.
//!
//! Written by hand onto a `String` because the encoder's hot path must not build trees:
//! - strings: `"` `\` and control characters escaped (`\b \t \n \f \r`, else `\u00XX` upper
//!   case), other BMP characters raw, characters beyond U+FFFF as a UTF-16 surrogate pair
//!   `\uD83D\uDE00` (what the golden files show);
//! - floating point in Java's `Double.toString`/`Float.toString` form (`1.0E-21`,
//!   `1.23456781234E7`, `3.14`), with NaN and infinities as quoted strings.

use std::fmt::Write as _;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `s` as a JSON string literal.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    write_str_body(out, s);
    out.push('"');
}

/// Bytes that need work: ASCII specials, and lead bytes of 4-byte UTF-8 sequences
/// (characters beyond the BMP, written as surrogate pairs).
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i < 0x20 || i == b'"' as usize || i == b'\\' as usize || i >= 0xF0;
        i += 1;
    }
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `v` that is zero. Exact for the lowest such byte (a borrow
/// only marks bytes above a zero one), which is all [`first_needing_escape`] asks.
const fn zero_bytes(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v & HIGHS
}

/// Offset of the first byte of these 8 (in memory order) that [`NEEDS_ESCAPE`] names, if any:
/// long texts are scanned a word at a time, not a byte.
fn first_needing_escape(chunk: [u8; 8]) -> Option<usize> {
    let w = u64::from_le_bytes(chunk);
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let quote = zero_bytes(w ^ (ONES * b'"' as u64));
    let backslash = zero_bytes(w ^ (ONES * b'\\' as u64));
    let beyond_bmp = zero_bytes((w & (ONES * 0xF0)) ^ (ONES * 0xF0));
    let hits = control | quote | backslash | beyond_bmp;
    (hits != 0).then(|| (hits.trailing_zeros() / 8) as usize)
}

/// Appends the escaped contents of a JSON string, without the quotes.
pub fn write_str_body(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            match first_needing_escape(chunk.try_into().expect("8 bytes")) {
                None => {
                    i += 8;
                    continue;
                }
                Some(at) => i += at,
            }
        }
        let b = bytes[i];
        if !NEEDS_ESCAPE[b as usize] {
            i += 1;
            continue;
        }
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x09 => out.push_str("\\t"),
            0x0A => out.push_str("\\n"),
            0x0C => out.push_str("\\f"),
            0x0D => out.push_str("\\r"),
            0x00..=0x1F => {
                out.push_str("\\u00");
                out.push(HEX_UPPER[(b >> 4) as usize] as char);
                out.push(HEX_UPPER[(b & 0xF) as usize] as char);
            }
            _ => {
                // A character beyond the BMP: `s` is valid UTF-8, so one char starts here.
                let c = s[i..].chars().next().unwrap_or('\u{FFFD}');
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str("\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX_UPPER[((*unit >> shift) & 0xF) as usize] as char);
                    }
                }
                i += c.len_utf8();
                start = i;
                continue;
            }
        }
        i += 1;
        start = i;
    }
    out.push_str(&s[start..]);
}

pub fn write_i64(out: &mut String, v: i64) {
    out.push_str(itoa::Buffer::new().format(v));
}

pub fn write_u64(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// A JSON number in Java `Double.toString` form, or a quoted `"NaN"`/`"Infinity"`/`"-Infinity"`.
pub fn write_f64(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str(non_finite(v.is_nan(), v > 0.0));
        return;
    }
    let mut buf = ryu::Buffer::new();
    write_java_float(out, buf.format_finite(v));
}

/// A JSON number in Java `Float.toString` form (shortest digits of the `f32`).
pub fn write_f32(out: &mut String, v: f32) {
    if !v.is_finite() {
        out.push_str(non_finite(v.is_nan(), v > 0.0));
        return;
    }
    let mut buf = ryu::Buffer::new();
    write_java_float(out, buf.format_finite(v));
}

fn non_finite(nan: bool, positive: bool) -> &'static str {
    match (nan, positive) {
        (true, _) => "\"NaN\"",
        (false, true) => "\"Infinity\"",
        (false, false) => "\"-Infinity\"",
    }
}

/// Rewrites ryu's shortest representation (`1e-21`, `12345678.1234`, `0.001`, `3.0`) into
/// Java's layout: plain decimal for 1e-3 <= |v| < 1e7, else `d.dddE<exp>`.
fn write_java_float(out: &mut String, ryu_text: &str) {
    let (negative, text) = match ryu_text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, ryu_text),
    };
    // Split into significant digits and a decimal exponent: value = 0.DIGITS * 10^point.
    let (mantissa, exp10) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = String::with_capacity(int_part.len() + frac_part.len());
    digits.push_str(int_part);
    digits.push_str(frac_part);
    let mut point = int_part.len() as i32 + exp10;
    // Normalise: strip leading zeros (moving the point) and trailing zeros.
    let leading = digits.bytes().take_while(|&b| b == b'0').count();
    if leading == digits.len() {
        out.push_str(if negative { "-0.0" } else { "0.0" });
        return;
    }
    digits.drain(..leading);
    point -= leading as i32;
    while digits.ends_with('0') {
        digits.pop();
    }
    if negative {
        out.push('-');
    }
    // Java: plain notation when 10^-3 <= |v| < 10^7, i.e. -2 <= point <= 7.
    if (-2..=7).contains(&point) {
        if point <= 0 {
            out.push_str("0.");
            for _ in point..0 {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let p = point as usize;
            if digits.len() <= p {
                out.push_str(&digits);
                for _ in digits.len()..p {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..p]);
                out.push('.');
                out.push_str(&digits[p..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        out.push('.');
        if digits.len() > 1 {
            out.push_str(&digits[1..]);
        } else {
            out.push('0');
        }
        let _ = write!(out, "E{}", point - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        let mut o = String::new();
        write_str(&mut o, v);
        o
    }

    /// The escaping rules one byte at a time, for comparison with the word-at-a-time scan.
    fn escaped_bytewise(v: &str) -> String {
        let mut o = String::from("\"");
        for c in v.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '\u{8}' => o.push_str("\\b"),
                '\t' => o.push_str("\\t"),
                '\n' => o.push_str("\\n"),
                '\u{c}' => o.push_str("\\f"),
                '\r' => o.push_str("\\r"),
                c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04X}", c as u32)),
                c if (c as u32) > 0xFFFF => {
                    for unit in c.encode_utf16(&mut [0u16; 2]) {
                        o.push_str(&format!("\\u{:04X}", unit));
                    }
                }
                c => o.push(c),
            }
        }
        o.push('"');
        o
    }

    #[test]
    fn the_word_scan_finds_every_special_at_every_offset() {
        let specials = ['"', '\\', '\n', '\u{0}', '\u{1f}', '😀', '𝄞'];
        let fillers = ["a", "é", "€", " ", "\u{7f}", "\u{ff}", "~"];
        for filler in fillers {
            for len in 0..24 {
                for at in 0..=len {
                    for special in specials {
                        let mut v: String = filler.repeat(at);
                        v.push(special);
                        v.push_str(&filler.repeat(len - at));
                        v.push(special);
                        assert_eq!(s(&v), escaped_bytewise(&v), "{v:?}");
                    }
                }
            }
        }
        // Bytes next to the thresholds: 0x1F/0x20 (controls), 0xEF/0xF0 (4-byte leads).
        let edge = "\u{1f} \u{fff}\u{10000}!\"#\\]";
        for start in 0..edge.len() {
            if edge.is_char_boundary(start) {
                assert_eq!(s(&edge[start..]), escaped_bytewise(&edge[start..]));
            }
        }
    }

    #[test]
    fn strings_escape_like_jackson() {
        assert_eq!(s("héllo \"wörld\" 😀"), r#""héllo \"wörld\" \uD83D\uDE00""#);
        assert_eq!(s("a\\b\n\t\r\u{8}\u{c}\u{1}\u{1f}/"), r#""a\\b\n\t\r\b\f\u0001\u001F/""#);
        assert_eq!(s(""), "\"\"");
        assert_eq!(s("𝄞x𝄞"), r#""\uD834\uDD1Ex\uD834\uDD1E""#);
        assert_eq!(s("\u{7f}\u{2028}€"), "\"\u{7f}\u{2028}€\"");
    }

    fn d(v: f64) -> String {
        let mut o = String::new();
        write_f64(&mut o, v);
        o
    }

    fn f(v: f32) -> String {
        let mut o = String::new();
        write_f32(&mut o, v);
        o
    }

    #[test]
    #[allow(clippy::approx_constant)] // the golden files' values, not approximations
    fn doubles_follow_java_to_string() {
        assert_eq!(d(2.718281828459045), "2.718281828459045");
        assert_eq!(d(1e-21), "1.0E-21");
        assert_eq!(d(12345678.1234), "1.23456781234E7");
        assert_eq!(d(12.34), "12.34");
        assert_eq!(d(1.5), "1.5");
        assert_eq!(d(1.0), "1.0");
        assert_eq!(d(0.0), "0.0");
        assert_eq!(d(-0.0), "-0.0");
        assert_eq!(d(0.001), "0.001");
        assert_eq!(d(0.0001), "1.0E-4");
        assert_eq!(d(9999999.0), "9999999.0");
        assert_eq!(d(10000000.0), "1.0E7");
        assert_eq!(d(-123.0), "-123.0");
        assert_eq!(d(1e300), "1.0E300");
        assert_eq!(d(f64::NAN), "\"NaN\"");
        assert_eq!(d(f64::NEG_INFINITY), "\"-Infinity\"");
        assert_eq!(d(f64::INFINITY), "\"Infinity\"");
    }

    #[test]
    #[allow(clippy::approx_constant)]
    fn floats_follow_java_to_string() {
        assert_eq!(f(3.14), "3.14");
        assert_eq!(f(1e10), "1.0E10");
        assert_eq!(f(f32::NAN), "\"NaN\"");
    }
}
