//! Debezium's JSON form of a column value back to a Python object, by the column's type and
//! the feed's Debezium options.
//!
//! Values: the event JSON is turned into Python with the column types from the catalog and
//! the feed's Debezium options (see [`typed`]), so numeric is a `Decimal`, bytea `bytes`,
//! timestamps `datetime`... Where Debezium's format itself loses information the result says
//! what the JSON says: `interval` in numeric mode is microseconds with 30.4375-day months,
//! `timetz` is in UTC, a `varbit`'s leading zeros are gone (`B'0001'` is `"1"`; `B'000'` and
//! `B''` are both `""`). Malformed binary values (invalid base64 or hex) are a `DataError`.

use base64::Engine;
use pgcdc_core::catalog::TypeKind;
use pgcdc_core::debezium::{BinaryMode, DecimalMode, EncoderOptions, HstoreMode, IntervalMode, TimePrecisionMode};
use pgcdc_core::value::{Infinite, Value};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::PgError;
use crate::pgtext::MICROS_PER_DAY;
use crate::values;

/// One column value from its Debezium JSON text, by column type and feed options. Kinds
/// whose JSON is already their Python value go straight to Python, without a parse tree.
pub(super) fn typed_json<'py>(
    py: Python<'py>,
    column: &str,
    kind: &TypeKind,
    raw: &str,
    o: &EncoderOptions,
) -> PyResult<Bound<'py, PyAny>> {
    use TypeKind as K;
    if matches!(
        kind,
        K::Bool
            | K::Int2
            | K::Int4
            | K::Int8
            | K::Oid
            | K::Text
            | K::Xml
            | K::Uuid
            | K::Range
            | K::Enum { .. }
            | K::Unknown { .. }
    ) {
        return values::json(py, raw);
    }
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| PgError::Data(format!("column {column}: {e}")))?;
    typed(py, kind, &v, raw, o)
}

/// One column value from its Debezium JSON form, by column type and feed options.
fn typed<'py>(
    py: Python<'py>,
    kind: &TypeKind,
    v: &serde_json::Value,
    raw: &str,
    o: &EncoderOptions,
) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value as J;
    if v.is_null() {
        return Ok(py.None().into_bound(py));
    }
    let plain = || values::json(py, raw);
    Ok(match kind {
        TypeKind::Float4 | TypeKind::Float8 => match v {
            J::String(s) => pyo3::types::PyFloat::new(py, s.parse::<f64>().unwrap_or(f64::NAN)).into_any(),
            _ => plain()?,
        },
        TypeKind::Numeric { .. } | TypeKind::Money => {
            let scale = match kind {
                TypeKind::Numeric { scale, .. } => *scale,
                _ => Some(2),
            };
            let text = match (v, o.decimal) {
                (J::String(s), DecimalMode::Precise) if !matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
                    twos_complement_to_text(&decode_binary(s, BinaryMode::Bytes)?, scale.unwrap_or(0))
                }
                (J::Object(m), _) => {
                    let sc = m.get("scale").and_then(J::as_u64).unwrap_or(0) as u32;
                    let bytes = m
                        .get("value")
                        .and_then(J::as_str)
                        .map(|s| decode_binary(s, BinaryMode::Bytes))
                        .transpose()?
                        .unwrap_or_default();
                    twos_complement_to_text(&bytes, sc)
                }
                (J::String(s), _) => match s.as_str() {
                    "NAN" => "NaN".into(),
                    "POSITIVE_INFINITY" => "Infinity".into(),
                    "NEGATIVE_INFINITY" => "-Infinity".into(),
                    other => other.to_owned(),
                },
                (J::Number(_), _) => raw.trim().to_owned(),
                _ => return plain(),
            };
            values::decimal_text(py, &text)?
        }
        TypeKind::Bytea => match v {
            J::String(s) => pyo3::types::PyBytes::new(py, &decode_binary(s, o.binary)?).into_any(),
            _ => plain()?,
        },
        TypeKind::Json | TypeKind::Jsonb => match v {
            J::String(s) => values::json(py, s)?,
            _ => plain()?,
        },
        TypeKind::Hstore => match (v, o.hstore) {
            (J::String(s), HstoreMode::Json) => values::json(py, s)?,
            _ => plain()?,
        },
        TypeKind::Date => match v.as_i64() {
            Some(d) if d == i64::from(i32::MAX) => PyString::new(py, "infinity").into_any(),
            Some(d) if d == i64::from(i32::MIN) => PyString::new(py, "-infinity").into_any(),
            Some(d) => values::value(py, &Value::Date(Infinite::Finite(d as i32)), None)?,
            None => plain()?,
        },
        TypeKind::Time { precision } => match v.as_i64() {
            Some(t) => {
                let millis = match o.time_precision {
                    TimePrecisionMode::Connect => true,
                    TimePrecisionMode::Adaptive => precision.is_some_and(|p| p <= 3),
                    TimePrecisionMode::AdaptiveTimeMicroseconds => false,
                };
                values::value(py, &Value::Time(if millis { t * 1000 } else { t }), None)?
            }
            None => plain()?,
        },
        TypeKind::Timestamp { precision } => match v.as_i64() {
            Some(t) => {
                let millis = o.time_precision == TimePrecisionMode::Connect || precision.is_some_and(|p| p <= 3);
                let micros = if millis { t.saturating_mul(1000) } else { t };
                if micros >= 9_223_372_036_825_200_000 {
                    PyString::new(py, "infinity").into_any()
                } else if micros <= -9_223_372_036_832_400_000 {
                    PyString::new(py, "-infinity").into_any()
                } else {
                    values::value(py, &Value::Timestamp(Infinite::Finite(micros)), None)?
                }
            }
            None => plain()?,
        },
        TypeKind::TimestampTz { .. } => match v {
            J::String(s) => match parse_iso_timestamp(s) {
                Some(micros) => values::value(py, &Value::TimestampTz(Infinite::Finite(micros)), Some(s))?,
                None => PyString::new(py, s).into_any(),
            },
            _ => plain()?,
        },
        TypeKind::TimeTz { .. } => match v {
            J::String(s) => match parse_clock(s.trim_end_matches('Z')) {
                Some(micros) => values::value(py, &Value::TimeTz { micros, offset_seconds: 0 }, Some(s))?,
                None => PyString::new(py, s).into_any(),
            },
            _ => plain()?,
        },
        TypeKind::Interval => match (v, o.interval) {
            (J::Number(_), IntervalMode::Numeric) => {
                let micros = v.as_i64().unwrap_or(0);
                Bound::new(py, crate::message::Interval { months: 0, days: 0, microseconds: micros })?.into_any()
            }
            (J::String(s), _) => match parse_iso_interval(s) {
                Some((months, days, micros)) => {
                    Bound::new(py, crate::message::Interval { months, days, microseconds: micros })?.into_any()
                }
                None => PyString::new(py, s).into_any(),
            },
            _ => plain()?,
        },
        TypeKind::Bit { length } => match v {
            J::Bool(b) => PyString::new(py, if *b { "1" } else { "0" }).into_any(),
            J::String(s) => {
                // Bits stay Connect bytes (base64) whatever binary.handling.mode says, as in Debezium.
                let bytes = decode_binary(s, BinaryMode::Bytes)?;
                let len = match length {
                    Some(n) => *n,
                    None => varbit_len(&bytes),
                };
                values::value(py, &Value::Bits { length: len, bytes }, None)?
            }
            _ => plain()?,
        },
        TypeKind::Point => match v {
            J::Object(m) => {
                let x = m.get("x").and_then(J::as_f64).unwrap_or(f64::NAN);
                let y = m.get("y").and_then(J::as_f64).unwrap_or(f64::NAN);
                pyo3::types::PyTuple::new(py, [x, y])?.into_any()
            }
            _ => plain()?,
        },
        TypeKind::Composite { fields } => match v {
            J::Object(m) => {
                let d = PyDict::new(py);
                for (name, fk) in fields {
                    if let Some(fv) = m.get(name) {
                        let raw = fv.to_string();
                        d.set_item(name, typed(py, fk, fv, &raw, o)?)?;
                    }
                }
                d.into_any()
            }
            _ => plain()?,
        },
        TypeKind::Array(elem) => match v {
            J::Array(items) => {
                let l = pyo3::types::PyList::empty(py);
                for it in items {
                    let raw = it.to_string();
                    l.append(typed(py, elem, it, &raw, o)?)?;
                }
                l.into_any()
            }
            _ => plain()?,
        },
        // (typed_json sends the kinds that end here straight to Python: keep its list in step.)
        _ => plain()?,
    })
}

/// Decodes a Debezium binary value (`binary.handling.mode`); malformed text is a DataError
/// (never silently the text's own bytes).
pub(super) fn decode_binary(s: &str, mode: BinaryMode) -> Result<Vec<u8>, PgError> {
    let r = match mode {
        BinaryMode::Bytes | BinaryMode::Base64 => base64::engine::general_purpose::STANDARD.decode(s),
        BinaryMode::Base64UrlSafe => base64::engine::general_purpose::URL_SAFE.decode(s),
        BinaryMode::Hex => {
            return s
                .len()
                .is_multiple_of(2)
                .then(|| (0..s.len() / 2).map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect())
                .flatten()
                .ok_or_else(|| PgError::Data(format!("invalid hex binary value {:?}", preview(s))));
        }
    };
    r.map_err(|e| PgError::Data(format!("invalid base64 binary value {:?}: {e}", preview(s))))
}

pub(super) fn preview(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Length of a varbit from Debezium's BitSet bytes (little-endian, bit 0 = last bit): up to
/// the highest set bit, since leading zeros are not in the JSON. All zeros (or no bytes) is 0.
fn varbit_len(bytes: &[u8]) -> u32 {
    match bytes.iter().rposition(|&b| b != 0) {
        Some(i) => i as u32 * 8 + (8 - bytes[i].leading_zeros()),
        None => 0,
    }
}

/// Big-endian two's complement bytes as decimal digits text.
fn twos_complement_to_text(bytes: &[u8], scale: u32) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // magnitude in base 1e9 limbs
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        // two's complement negate
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    let mut digits = Vec::new(); // little-endian decimal digits
    let mut num: Vec<u32> = mag.iter().map(|&b| b as u32).collect();
    while num.iter().any(|&x| x != 0) {
        let mut rem = 0u32;
        for x in num.iter_mut() {
            let cur = (rem << 8) | *x;
            *x = cur / 10;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    let digits = String::from_utf8(digits).unwrap_or_default();
    values::numeric_text(negative && digits != "0", &digits, scale)
}

/// `HH:MM:SS[.ffffff]` to microseconds.
fn parse_clock(s: &str) -> Option<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut it = hms.split(':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next()?.parse().ok()?;
    let mut us = 0i64;
    if !frac.is_empty() {
        let f = format!("{:0<6}", &frac[..frac.len().min(6)]);
        us = f.parse().ok()?;
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + us)
}

/// `YYYY-MM-DDTHH:MM:SS[.f]Z` (years 1..9999) to microseconds since the Unix epoch.
fn parse_iso_timestamp(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut it = date.split('-');
    let y: i32 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if !(1..=9999).contains(&y) {
        return None;
    }
    let days = pgcdc_core::value::days_from_civil(y, m, d);
    Some(days * MICROS_PER_DAY + parse_clock(time)?)
}

/// Debezium's ISO 8601 interval `P1Y2M3DT4H5M6.789S` to (months, days, microseconds).
fn parse_iso_interval(s: &str) -> Option<(i32, i32, i64)> {
    let s = s.strip_prefix('P')?;
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    let mut months = 0i64;
    let mut days = 0i64;
    let mut micros = 0i64;
    let mut num = String::new();
    for c in date.chars() {
        match c {
            'Y' => months += num.parse::<i64>().ok()? * 12,
            'M' => months += num.parse::<i64>().ok()?,
            'D' => days += num.parse::<i64>().ok()?,
            'W' => days += num.parse::<i64>().ok()? * 7,
            _ => {
                num.push(c);
                continue;
            }
        }
        num.clear();
    }
    for c in time.chars() {
        match c {
            'H' => micros += num.parse::<i64>().ok()? * 3_600_000_000,
            'M' => micros += num.parse::<i64>().ok()? * 60_000_000,
            'S' => {
                let neg = num.starts_with('-');
                let (whole, frac) = num
                    .trim_start_matches('-')
                    .split_once('.')
                    .map_or((num.trim_start_matches('-').to_owned(), String::new()), |(a, b)| {
                        (a.to_owned(), b.to_owned())
                    });
                let f: i64 =
                    if frac.is_empty() { 0 } else { format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()? };
                let v = whole.parse::<i64>().ok()? * 1_000_000 + f;
                micros += if neg { -v } else { v };
            }
            _ => {
                num.push(c);
                continue;
            }
        }
        num.clear();
    }
    Some((i32::try_from(months).ok()?, i32::try_from(days).ok()?, micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twos_complement_decimals() {
        assert_eq!(twos_complement_to_text(&[0x04, 0xE2], 2), "12.50");
        assert_eq!(twos_complement_to_text(&[0xFF], 0), "-1");
        assert_eq!(twos_complement_to_text(&[0xFB, 0x1E], 2), "-12.50");
        assert_eq!(twos_complement_to_text(&[], 0), "0");
        assert_eq!(twos_complement_to_text(&[0x01], 21), "0.000000000000000000001");
    }

    #[test]
    fn varbit_lengths_never_underflow() {
        assert_eq!(varbit_len(&[]), 0); // B''
        assert_eq!(varbit_len(&[0]), 0); // B'000': all leading zeros
        assert_eq!(varbit_len(&[0x01]), 1); // B'0001' -> "1"
        assert_eq!(varbit_len(&[0x06]), 3); // B'110'
        assert_eq!(varbit_len(&[0x00, 0x01]), 9);
        assert_eq!(varbit_len(&[0xFF, 0x00]), 8); // trailing zero bytes (not trimmed)
    }

    #[test]
    fn malformed_binary_is_an_error() {
        assert_eq!(decode_binary("3q2+7w==", BinaryMode::Bytes).unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(decode_binary("DEADbeef", BinaryMode::Hex).unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        assert!(matches!(decode_binary("not base64!", BinaryMode::Base64), Err(PgError::Data(_))));
        assert!(matches!(decode_binary("abc", BinaryMode::Hex), Err(PgError::Data(_))));
        assert!(matches!(decode_binary("zz", BinaryMode::Hex), Err(PgError::Data(_))));
        assert!(matches!(decode_binary("+/8=", BinaryMode::Base64UrlSafe), Err(PgError::Data(_))));
    }

    #[test]
    fn iso_forms() {
        assert_eq!(parse_iso_interval("P1Y2M3DT4H5M6.789S"), Some((14, 3, 14_706_789_000)));
        assert_eq!(parse_clock("13:45:59.123456"), Some(49_559_123_456));
        assert_eq!(parse_iso_timestamp("1970-01-02T00:00:00.000001Z"), Some(86_400_000_001));
    }
}
