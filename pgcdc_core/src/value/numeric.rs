//! `numeric` and `money`: exact decimals kept as the digits PostgreSQL printed.
//!
//! Encoders need the unscaled integer as Java's `BigInteger.toByteArray()` (Kafka Connect
//! `Decimal`), the plain decimal string, or a correctly rounded double; all three come from the
//! digit string, never from a float. Values up to 38 digits (every `numeric(p,s)` with p <= 38,
//! the hot case) go through `u128`; longer ones (up to PostgreSQL's 131072 + 16383 digits)
//! through base-2^32 limbs.

use std::borrow::Cow;

use super::{Numeric, Reason};

/// Upper bound on digits and scale a value may reach through an exponent (`1e100000`).
/// PostgreSQL itself prints at most 131072 integer and 16383 fraction digits, always plainly.
const MAX_DIGITS: usize = 1 << 18;

impl<'a> Numeric<'a> {
    /// The same value owning its digits.
    pub fn into_owned(self) -> Numeric<'static> {
        match self {
            Numeric::NaN => Numeric::NaN,
            Numeric::PosInfinity => Numeric::PosInfinity,
            Numeric::NegInfinity => Numeric::NegInfinity,
            Numeric::Finite { negative, digits, scale } => {
                Numeric::Finite { negative, digits: Cow::Owned(digits.into_owned()), scale }
            }
        }
    }

    /// The same value with `scale` fraction digits: pads with zeros, or drops trailing zeros.
    /// None when that would drop a non-zero digit (the value would change). NaN and the
    /// infinities have no scale and come back unchanged.
    pub fn rescale(&self, scale: u32) -> Option<Numeric<'a>> {
        let Numeric::Finite { negative, digits, scale: old } = self else {
            return Some(self.clone());
        };
        let negative = *negative;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None; // a hand-built value breaking the digits invariant
        }
        if scale == *old {
            return Some(self.clone());
        }
        if digits == "0" {
            return Some(Numeric::Finite { negative: false, digits: Cow::Borrowed("0"), scale });
        }
        if scale > *old {
            let pad = (scale - *old) as usize;
            let mut s = String::with_capacity(digits.len() + pad);
            s.push_str(digits);
            s.extend(std::iter::repeat_n('0', pad));
            return Some(Numeric::Finite { negative, digits: Cow::Owned(s), scale });
        }
        let drop = (*old - scale) as usize;
        let keep = digits.len().checked_sub(drop);
        let dropped = &digits[keep.unwrap_or(0)..];
        if dropped.bytes().any(|b| b != b'0') {
            return None;
        }
        // All dropped digits were zeros, so `keep` exists (digits has no leading zeros).
        let keep = keep?;
        let digits = match digits {
            Cow::Borrowed(s) => Cow::Borrowed(&s[..keep]),
            Cow::Owned(s) => Cow::Owned(s[..keep].to_owned()),
        };
        Some(Numeric::Finite { negative, digits, scale })
    }

    /// The unscaled value as Java's `BigInteger.toByteArray()`: minimal big-endian two's
    /// complement (`123456781234` → `1C BE 98 FB B2`, `-1234` → `FB 2E`, `0` → `00`). None for
    /// NaN and the infinities.
    pub fn to_twos_complement_be(&self) -> Option<Vec<u8>> {
        let Numeric::Finite { negative, digits, .. } = self else {
            return None;
        };
        let digits = digits.as_bytes();
        if !digits.iter().all(u8::is_ascii_digit) {
            return None; // a hand-built value breaking the digits invariant
        }
        Some(if digits.len() <= 38 {
            twos_complement_small(*negative, digits)
        } else {
            twos_complement_big(*negative, digits)
        })
    }

    /// The value as a plain decimal with its printed scale and no exponent (`12345678.1234`,
    /// `0.000000000000000000001`, `-0.50`); `NaN`, `Infinity`, `-Infinity` otherwise.
    /// (Like the other helpers, it does not panic on a hand-built value whose `digits` are not
    /// ASCII digits; the result is then unspecified.)
    pub fn to_plain_string(&self) -> String {
        match self {
            Numeric::NaN => "NaN".to_owned(),
            Numeric::PosInfinity => "Infinity".to_owned(),
            Numeric::NegInfinity => "-Infinity".to_owned(),
            Numeric::Finite { negative, digits, scale } => {
                let scale = *scale as usize;
                let mut s = String::with_capacity(digits.len() + scale + 3);
                if *negative {
                    s.push('-');
                }
                if scale == 0 {
                    s.push_str(digits);
                } else if let Some((int, frac)) =
                    digits.len().checked_sub(scale).filter(|&n| n > 0).and_then(|n| digits.split_at_checked(n))
                {
                    s.push_str(int);
                    s.push('.');
                    s.push_str(frac);
                } else {
                    s.push_str("0.");
                    s.extend(std::iter::repeat_n('0', scale - digits.len()));
                    s.push_str(digits);
                }
                s
            }
        }
    }

    /// The nearest `f64` (correctly rounded from the exact decimal), NaN or an infinity.
    pub fn to_f64(&self) -> f64 {
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
            1e19, 1e20, 1e21, 1e22,
        ];
        match self {
            Numeric::NaN => f64::NAN,
            Numeric::PosInfinity => f64::INFINITY,
            Numeric::NegInfinity => f64::NEG_INFINITY,
            Numeric::Finite { negative, digits, scale } => {
                // Clinger's fast path: both operands exact, one correctly rounded division.
                let v = if digits.len() <= 15 && (*scale as usize) < POW10.len() {
                    let mut m: u64 = 0;
                    for d in digits.bytes() {
                        m = m * 10 + u64::from(d.wrapping_sub(b'0'));
                    }
                    m as f64 / POW10[*scale as usize]
                } else {
                    // Rust's parser is correctly rounded for any number of digits.
                    format!("{digits}e-{scale}").parse().unwrap_or(f64::NAN)
                };
                if *negative {
                    -v
                } else {
                    v
                }
            }
        }
    }
}

/// [`Numeric::to_twos_complement_be`] for at most 38 digits: < 10^38 < 2^127, so the value and
/// its negation fit `i128`.
fn twos_complement_small(negative: bool, digits: &[u8]) -> Vec<u8> {
    fn minimal<const N: usize>(bytes: [u8; N], sign: u8) -> Vec<u8> {
        // A leading sign byte is redundant while the next byte's top bit carries the same sign.
        let mut start = 0;
        while start + 1 < N && bytes[start] == sign && (bytes[start + 1] & 0x80) == (sign & 0x80) {
            start += 1;
        }
        bytes[start..].to_vec()
    }
    if digits.len() <= 18 {
        // The common case (numeric(p,s) with p <= 18) in 64-bit arithmetic.
        let mut v: i64 = 0;
        for &d in digits {
            v = v * 10 + i64::from(d.wrapping_sub(b'0'));
        }
        let v = if negative { -v } else { v };
        return minimal(v.to_be_bytes(), if v < 0 { 0xFF } else { 0 });
    }
    let mut v: i128 = 0;
    for &d in digits {
        v = v * 10 + i128::from(d.wrapping_sub(b'0'));
    }
    let v = if negative { -v } else { v };
    minimal(v.to_be_bytes(), if v < 0 { 0xFF } else { 0 })
}

/// [`Numeric::to_twos_complement_be`] for any number of digits.
fn twos_complement_big(negative: bool, digits: &[u8]) -> Vec<u8> {
    let mut out = decimal_to_be_magnitude(digits);
    if negative && out != [0] {
        // Two's complement of the magnitude: invert and add one.
        let mut carry = true;
        for b in out.iter_mut().rev() {
            let (v, c) = (!*b).overflowing_add(u8::from(carry));
            *b = v;
            carry = c;
        }
        if out[0] & 0x80 == 0 {
            out.insert(0, 0xFF);
        }
    } else if out[0] & 0x80 != 0 {
        out.insert(0, 0x00);
    }
    out
}

/// Decimal digits (no sign, no leading zeros unless zero) to minimal big-endian magnitude bytes.
fn decimal_to_be_magnitude(digits: &[u8]) -> Vec<u8> {
    // Little-endian base-2^32 limbs; fold in 9 decimal digits (< 2^32) at a time.
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 1);
    let first = match digits.len() % 9 {
        0 => 9,
        n => n,
    };
    let mut start = 0;
    let mut end = first.min(digits.len());
    while start < digits.len() {
        let chunk = &digits[start..end];
        let mut value: u64 = 0;
        for &d in chunk {
            value = value * 10 + u64::from(d.wrapping_sub(b'0'));
        }
        let mul = 10u64.pow(chunk.len() as u32);
        let mut carry = value;
        for limb in limbs.iter_mut() {
            // < 2^32 * 10^9 + 2^32 < 2^64
            let t = u64::from(*limb) * mul + carry;
            *limb = t as u32;
            carry = t >> 32;
        }
        if carry != 0 {
            limbs.push(carry as u32);
        }
        start = end;
        end = (end + 9).min(digits.len());
    }
    let mut out = Vec::with_capacity(limbs.len() * 4 + 1);
    for limb in limbs.iter().rev() {
        out.extend_from_slice(&limb.to_be_bytes());
    }
    let leading = out.iter().take_while(|&&b| b == 0).count();
    if leading == out.len() {
        return vec![0];
    }
    out.drain(..leading);
    out
}

/// `s` without leading zeros ("0" for zero).
fn strip_zeros(s: &str) -> &str {
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0"
    } else {
        t
    }
}

/// `numeric_out` text: `-12.3400`, `NaN`, `Infinity`, `-Infinity`. Exponents (`1.5e-3`, which
/// PostgreSQL never prints) are accepted too.
pub(super) fn parse_numeric(text: &str) -> Result<Numeric<'_>, Reason> {
    let b = text.as_bytes();
    let (negative, body) = match b.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let bb = body.as_bytes();
    let int_len = bb.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = int_len;
    let mut frac = "";
    if bb.get(i) == Some(&b'.') {
        let n = bb[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        frac = &body[i + 1..i + 1 + n];
        i += 1 + n;
    }
    let int = &body[..int_len];
    if int.is_empty() && frac.is_empty() {
        return match body.to_ascii_lowercase().as_str() {
            "nan" if text == body => Ok(Numeric::NaN),
            "infinity" | "inf" if negative => Ok(Numeric::NegInfinity),
            "infinity" | "inf" => Ok(Numeric::PosInfinity),
            _ => Err("not a number".into()),
        };
    }
    if i == bb.len() {
        let int = int.trim_start_matches('0');
        let (digits, scale) = if frac.is_empty() {
            (Cow::Borrowed(strip_zeros(int)), 0)
        } else if int.is_empty() {
            (Cow::Borrowed(strip_zeros(frac)), frac.len())
        } else {
            let mut s = String::with_capacity(int.len() + frac.len());
            s.push_str(int);
            s.push_str(frac);
            (Cow::Owned(s), frac.len())
        };
        let scale = u32::try_from(scale).map_err(|_| "scale too large")?;
        let negative = negative && digits != "0";
        return Ok(Numeric::Finite { negative, digits, scale });
    }
    // An exponent.
    if !matches!(bb[i], b'e' | b'E') {
        return Err("unexpected character in numeric".into());
    }
    let exp_text = &body[i + 1..];
    let exp_digits = exp_text.trim_start_matches(['+', '-']);
    if exp_digits.is_empty()
        || exp_digits.len() > 9
        || exp_text.len() - exp_digits.len() > 1
        || !exp_digits.bytes().all(|c| c.is_ascii_digit())
    {
        return Err("invalid exponent".into());
    }
    let exp: i64 = exp_text.parse().map_err(|_| "invalid exponent")?;
    let mut all = String::with_capacity(int.len() + frac.len());
    all.push_str(int.trim_start_matches('0'));
    all.push_str(frac);
    let all = strip_zeros(&all).to_owned();
    // value = all * 10^(exp - frac.len())
    let shift = exp - frac.len() as i64;
    let (digits, scale) = if shift >= 0 {
        let shift = shift as usize;
        if all == "0" {
            (all, 0)
        } else {
            if all.len() + shift > MAX_DIGITS {
                return Err("numeric exponent too large".into());
            }
            let mut s = all;
            s.extend(std::iter::repeat_n('0', shift));
            (s, 0)
        }
    } else {
        let scale = shift.unsigned_abs() as usize;
        if scale > MAX_DIGITS {
            return Err("numeric exponent too small".into());
        }
        (all, scale)
    };
    let negative = negative && digits != "0";
    Ok(Numeric::Finite { negative, digits: Cow::Owned(digits), scale: scale as u32 })
}

/// `cash_out` text: `$12.34`, `-$1,234.56`, `($5.00)`, `1.234,56 €`, ... The currency symbol
/// and group separators are dropped; the decimal separator is the last `.`/`,` unless that is
/// ambiguous (a lone separator followed by exactly three digits, as in `$1,234` or `1.234 €`,
/// could be a group separator in a zero-decimal locale or a decimal point with three decimals),
/// which is an error. The scale is the number of decimals printed.
pub(super) fn parse_money(text: &str) -> Result<Numeric<'static>, Reason> {
    let t = text.trim_matches(is_space);
    let first = t.find(|c: char| c.is_ascii_digit()).ok_or("no digits")?;
    let last = t.rfind(|c: char| c.is_ascii_digit()).ok_or("no digits")?;
    let (prefix, core, suffix) = (&t[..first], &t[first..=last], &t[last + 1..]);

    // Sign and currency symbol around the number.
    let mut negative = false;
    let (mut prefix, mut suffix) = (prefix, suffix);
    if let (Some(p), Some(s)) = (prefix.strip_prefix('('), suffix.strip_suffix(')')) {
        negative = true;
        (prefix, suffix) = (p, s);
    }
    let mut symbols = 0;
    for part in [prefix, suffix] {
        let mut rest = part.trim_matches(is_space);
        for _ in 0..2 {
            if let Some(r) = rest.strip_prefix('-').or_else(|| rest.strip_suffix('-')) {
                if negative {
                    return Err("more than one sign".into());
                }
                negative = true;
                rest = r.trim_matches(is_space);
            } else if let Some(r) = rest.strip_prefix('+').or_else(|| rest.strip_suffix('+')) {
                rest = r.trim_matches(is_space);
            }
        }
        if rest.is_empty() {
            continue;
        }
        if rest.chars().any(|c| "-+().,'".contains(c) || is_space(c)) {
            return Err("cannot tell the currency symbol from the number".into());
        }
        symbols += 1;
    }
    if symbols > 1 {
        return Err("currency symbols on both sides".into());
    }

    // The decimal separator.
    let dots = core.matches('.').count();
    let commas = core.matches(',').count();
    let other_groups = core.chars().any(|c| c == '\'' || c == '\u{2019}' || is_space(c));
    let decimal = match (dots, commas) {
        (0, 0) => None,
        (_, 0) | (0, _) => {
            let sep = if dots > 0 { '.' } else { ',' };
            let count = dots + commas;
            let pos = core.rfind(sep).unwrap_or(0);
            let after = core.len() - pos - 1;
            if count > 1 {
                None
            } else if after != 3 || other_groups {
                Some(pos)
            } else {
                return Err("ambiguous separator: group or decimal".into());
            }
        }
        _ => {
            let pos = core.rfind(['.', ',']).unwrap_or(0);
            let sep = core.as_bytes()[pos] as char;
            if core.matches(sep).count() != 1 {
                return Err("ambiguous separators".into());
            }
            Some(pos)
        }
    };
    let (int, frac) = match decimal {
        Some(pos) => (&core[..pos], &core[pos + 1..]),
        None => (core, ""),
    };
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return Err("invalid fraction".into());
    }
    // Integer part: digit groups of 3 (Indian 2, except the last) between single separators.
    let mut digits = String::with_capacity(int.len() + frac.len());
    let groups: Vec<&str> = int.split(|c: char| matches!(c, '.' | ',' | '\'' | '\u{2019}') || is_space(c)).collect();
    for (i, g) in groups.iter().enumerate() {
        let ok = match (i, g.len()) {
            (_, 0) => false,
            (0, n) => groups.len() == 1 || n <= 3,
            (i, n) => n == 3 || (n == 2 && i + 1 < groups.len()),
        };
        if !ok || !g.bytes().all(|c| c.is_ascii_digit()) {
            return Err("invalid digit grouping in amount".into());
        }
        digits.push_str(g);
    }
    digits.push_str(frac);
    let digits = strip_zeros(&digits).to_owned();
    let negative = negative && digits != "0";
    let scale = u32::try_from(frac.len()).map_err(|_| "scale too large")?;
    Ok(Numeric::Finite { negative, digits: Cow::Owned(digits), scale })
}

/// Spaces locales put between symbol, sign and digits or between digit groups.
fn is_space(c: char) -> bool {
    c == ' ' || c == '\u{a0}' || c == '\u{202f}' || c == '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin(negative: bool, digits: &str, scale: u32) -> Numeric<'static> {
        Numeric::Finite { negative, digits: Cow::Owned(digits.to_owned()), scale }
    }

    #[test]
    fn parses_plain_numbers() {
        assert_eq!(parse_numeric("12345678.1234").unwrap(), fin(false, "123456781234", 4));
        assert_eq!(parse_numeric("-12.3400").unwrap(), fin(true, "123400", 4));
        assert_eq!(parse_numeric("0.000000000000000000001").unwrap(), fin(false, "1", 21));
        assert_eq!(parse_numeric("0").unwrap(), fin(false, "0", 0));
        assert_eq!(parse_numeric("-0.00").unwrap(), fin(false, "0", 2));
        assert_eq!(parse_numeric("007").unwrap(), fin(false, "7", 0));
        assert_eq!(parse_numeric(".5").unwrap(), fin(false, "5", 1));
        assert_eq!(parse_numeric("5.").unwrap(), fin(false, "5", 0));
        assert_eq!(parse_numeric("NaN").unwrap(), Numeric::NaN);
        assert_eq!(parse_numeric("Infinity").unwrap(), Numeric::PosInfinity);
        assert_eq!(parse_numeric("-Infinity").unwrap(), Numeric::NegInfinity);
        for bad in ["", "-", ".", "1.2.3", "1,5", " 1", "1 ", "-NaN", "0x10", "1e", "1e+-5", "++1"] {
            assert!(parse_numeric(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn borrows_when_it_can() {
        for text in ["12345", "-0.0012", "0.5"] {
            match parse_numeric(text).unwrap() {
                Numeric::Finite { digits: Cow::Borrowed(_), .. } => {}
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn parses_exponents() {
        assert_eq!(parse_numeric("1e5").unwrap(), fin(false, "100000", 0));
        assert_eq!(parse_numeric("1.5e-3").unwrap(), fin(false, "15", 4));
        assert_eq!(parse_numeric("-1.50E+1").unwrap(), fin(true, "150", 1));
        assert_eq!(parse_numeric("0e5").unwrap(), fin(false, "0", 0));
        assert_eq!(parse_numeric("0.0e-2").unwrap(), fin(false, "0", 3));
        assert!(parse_numeric("1e999999999").is_err());
        assert!(parse_numeric("1e-999999999").is_err());
    }

    #[test]
    fn twos_complement_matches_java() {
        let bytes = |t: &str| parse_numeric(t).unwrap().to_twos_complement_be().unwrap();
        assert_eq!(bytes("12345678.1234"), [0x1C, 0xBE, 0x98, 0xFB, 0xB2]);
        assert_eq!(bytes("-12.34"), [0xFB, 0x2E]);
        assert_eq!(bytes("0"), [0x00]);
        assert_eq!(bytes("1"), [0x01]);
        assert_eq!(bytes("-1"), [0xFF]);
        assert_eq!(bytes("127"), [0x7F]);
        assert_eq!(bytes("128"), [0x00, 0x80]);
        assert_eq!(bytes("-128"), [0x80]);
        assert_eq!(bytes("-129"), [0xFF, 0x7F]);
        assert_eq!(bytes("-256"), [0xFF, 0x00]);
        assert_eq!(bytes("1.50"), [0x00, 0x96]);
        assert_eq!(bytes("-1.29"), [0xFF, 0x7F]);
        assert_eq!(Numeric::NaN.to_twos_complement_be(), None);
    }

    #[test]
    fn big_path_beyond_i128() {
        // 2^128 and -2^128 need 17 bytes.
        let two128 = "340282366920938463463374607431768211456";
        let mut expect = vec![0x01];
        expect.extend([0u8; 16]);
        let n = parse_numeric(two128).unwrap();
        assert_eq!(n.to_twos_complement_be().unwrap(), expect);
        let mut neg = vec![0xFF];
        neg.extend([0u8; 16]);
        let minus = format!("-{two128}");
        let n = parse_numeric(&minus).unwrap();
        assert_eq!(n.to_twos_complement_be().unwrap(), neg);
        // 39 nines: 0x02 F0 50 FE 93 8 ... check the top and the low byte only.
        let nines = parse_numeric(&"9".repeat(39)).unwrap().to_twos_complement_be().unwrap();
        assert_eq!(nines.len(), 17);
        assert_eq!(nines[0], 0x02);
        assert_eq!(nines[16], 0xFF);
    }

    proptest::proptest! {
        #[test]
        fn big_path_agrees_with_small_path(v in proptest::prelude::any::<i128>()) {
            proptest::prop_assume!(v != i128::MIN);
            let digits = v.unsigned_abs().to_string();
            if digits.len() <= 38 {
                proptest::prop_assert_eq!(
                    twos_complement_big(v < 0, digits.as_bytes()),
                    twos_complement_small(v < 0, digits.as_bytes())
                );
            }
            proptest::prop_assert_eq!(
                twos_complement_big(v < 0, digits.as_bytes()),
                java_to_byte_array(v)
            );
        }
    }

    /// `BigInteger.valueOf(v).toByteArray()` by its definition: the shortest two's complement
    /// that holds the value and its sign bit.
    fn java_to_byte_array(v: i128) -> Vec<u8> {
        let bits = if v < 0 { 128 - (!v).leading_zeros() } else { 128 - v.leading_zeros() };
        let len = (bits / 8 + 1) as usize;
        v.to_be_bytes()[16 - len.min(16)..].to_vec()
    }

    #[test]
    fn rescale_is_exact() {
        let n = parse_numeric("12.34").unwrap();
        assert_eq!(n.rescale(4).unwrap(), fin(false, "123400", 4));
        assert_eq!(n.rescale(2).unwrap(), n);
        assert_eq!(n.rescale(1), None);
        let n = parse_numeric("-12.3400").unwrap();
        assert_eq!(n.rescale(2).unwrap(), fin(true, "1234", 2));
        assert_eq!(n.rescale(3).unwrap(), fin(true, "12340", 3));
        assert_eq!(n.rescale(1), None);
        let n = parse_numeric("0.00").unwrap();
        assert_eq!(n.rescale(0).unwrap(), fin(false, "0", 0));
        assert_eq!(n.rescale(5).unwrap(), fin(false, "0", 5));
        let n = parse_numeric("100").unwrap();
        assert_eq!(n.rescale(0).unwrap(), n);
        let n = parse_numeric("1.000").unwrap();
        assert_eq!(n.rescale(0).unwrap(), fin(false, "1", 0));
        let n = parse_numeric("0.001").unwrap();
        assert_eq!(n.rescale(2), None);
        assert_eq!(Numeric::NaN.rescale(2), Some(Numeric::NaN));
    }

    #[test]
    fn plain_strings() {
        let s = |t: &str| parse_numeric(t).unwrap().to_plain_string();
        assert_eq!(s("12345678.1234"), "12345678.1234");
        assert_eq!(s("0.000000000000000000001"), "0.000000000000000000001");
        assert_eq!(s("-12.3400"), "-12.3400");
        assert_eq!(s("-0.5"), "-0.5");
        assert_eq!(s("0.00"), "0.00");
        assert_eq!(s("42"), "42");
        assert_eq!(s("1e3"), "1000");
        assert_eq!(s("1.5e-3"), "0.0015");
        assert_eq!(s("NaN"), "NaN");
        assert_eq!(s("-Infinity"), "-Infinity");
    }

    #[test]
    fn doubles_are_correctly_rounded() {
        let f = |t: &str| parse_numeric(t).unwrap().to_f64();
        assert_eq!(f("12345678.1234"), 12345678.1234);
        assert_eq!(f("0.000000000000000000001"), 1e-21);
        assert_eq!(f("-2.5"), -2.5);
        assert_eq!(f("0.1"), 0.1);
        assert_eq!(f("9007199254740993"), 9007199254740992.0);
        // Exactly halfway between 1 and the next double: ties to even; a hair above: rounds up.
        assert_eq!(f("1.00000000000000011102230246251565404236316680908203125"), 1.0);
        assert_eq!(f("1.00000000000000011102230246251565404236316680908203126"), 1.0000000000000002);
        assert_eq!(f(&"9".repeat(400)), f64::INFINITY);
        assert!(f("NaN").is_nan());
        assert_eq!(f("-Infinity"), f64::NEG_INFINITY);
    }

    #[test]
    fn money() {
        let m = |t: &str| parse_money(t).unwrap();
        assert_eq!(m("$12.34"), fin(false, "1234", 2));
        assert_eq!(m("-$1,234.56"), fin(true, "123456", 2));
        assert_eq!(m("$0.00"), fin(false, "0", 2));
        assert_eq!(m("$-1.00"), fin(true, "100", 2));
        assert_eq!(m("($5.00)"), fin(true, "500", 2));
        assert_eq!(m("-$92,233,720,368,547,758.08"), fin(true, "9223372036854775808", 2));
        assert_eq!(m("1.234,56 €"), fin(false, "123456", 2));
        assert_eq!(m("-1.234,56 €"), fin(true, "123456", 2));
        assert_eq!(m("€ 1.234.567,00"), fin(false, "123456700", 2));
        assert_eq!(m("1\u{202f}234,56\u{a0}€"), fin(false, "123456", 2));
        assert_eq!(m("CHF 1'234.50"), fin(false, "123450", 2));
        assert_eq!(m("¥1,234,567"), fin(false, "1234567", 0));
        assert_eq!(m("12.34"), fin(false, "1234", 2));
        assert_eq!(m("₹ 1,23,456.00"), fin(false, "12345600", 2));
        for bad in [
            "",
            "$",
            "$1,234",
            "1.234 €",
            "$1.2.3,4",
            "--$1.00",
            "$1.00 €",
            "$1..00",
            "$,100.00",
            "$1,00,.00",
            "kr. 1.00",
            "$1.0a",
            "-($1.00)",
        ] {
            assert!(parse_money(bad).is_err(), "{bad:?}");
        }
    }
}
