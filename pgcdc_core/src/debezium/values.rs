//! One column value as Debezium's JSON: the per-type, per-mode encodings of FORMAT.md §6.
//!
//! Where Debezium loses information, pgcdc writes the value instead (each case is listed in
//! the crate README's "Differences from Debezium"):
//! - numeric `NaN`/`±Infinity` in precise mode: the strings `"NaN"`, `"Infinity"`,
//!   `"-Infinity"` (Debezium: null);
//! - `date 'infinity'`/`'-infinity'`: `i32::MAX`/`i32::MIN` days, the values PostgreSQL itself
//!   uses (Debezium: garbage such as -2147472692);
//! - multi-dimensional arrays: nested JSON arrays (Debezium: one null per outer element);
//! - composite types: a JSON object of the fields (Debezium drops the column);
//! - unknown types: their text form (Debezium drops the column).

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;

use super::options::{BinaryMode, DecimalMode, EncoderOptions, HstoreMode, IntervalMode, TimePrecisionMode};
use crate::catalog::TypeKind;
use crate::json;
use crate::value::{civil_from_days, point_wkb, Infinite, Numeric, Value};

/// PGJDBC's `DATE_POSITIVE_INFINITY`/`DATE_NEGATIVE_INFINITY`, which Debezium writes for
/// infinite timestamps in every unit. Kept for compatibility: consumers test for them.
const TIMESTAMP_POS_INFINITY: i64 = 9_223_372_036_825_200_000;
const TIMESTAMP_NEG_INFINITY: i64 = -9_223_372_036_832_400_000;

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Debezium's MicroDuration month: 30.4375 days.
const MICROS_PER_MONTH: i64 = 2_629_800_000_000;

/// Writes `value` (of a column of `kind`) as JSON.
pub fn write_value(out: &mut String, kind: &TypeKind, value: &Value<'_>, opts: &EncoderOptions) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => json::write_i64(out, *i),
        Value::Float4(f) => json::write_f32(out, *f),
        Value::Float8(f) => json::write_f64(out, *f),
        Value::Numeric(n) => write_numeric(out, n, kind, opts.decimal),
        Value::Money(n) => write_numeric(out, n, &TypeKind::Money, opts.decimal),
        Value::Text(s)
        | Value::Json(s)
        | Value::Xml(s)
        | Value::Uuid(s)
        | Value::Range(s)
        | Value::Enum(s)
        | Value::Unknown(s) => json::write_str(out, s),
        Value::Bytes(b) => write_bytes(out, b, opts.binary),
        Value::Date(d) => json::write_i64(
            out,
            match d {
                Infinite::Finite(days) => *days as i64,
                Infinite::PosInfinity => i32::MAX as i64,
                Infinite::NegInfinity => i32::MIN as i64,
            },
        ),
        Value::Time(micros) => {
            let precision = match kind {
                TypeKind::Time { precision } => *precision,
                _ => None,
            };
            let in_millis = match opts.time_precision {
                TimePrecisionMode::Connect => true,
                TimePrecisionMode::Adaptive => precision.is_some_and(|p| p <= 3),
                TimePrecisionMode::AdaptiveTimeMicroseconds => false,
            };
            json::write_i64(out, if in_millis { micros.div_euclid(1000) } else { *micros });
        }
        Value::TimeTz { micros, offset_seconds } => {
            let utc = (micros - *offset_seconds as i64 * 1_000_000).rem_euclid(MICROS_PER_DAY);
            out.push('"');
            write_clock(out, utc, None);
            out.push_str("Z\"");
        }
        Value::Timestamp(ts) => {
            let precision = match kind {
                TypeKind::Timestamp { precision } => *precision,
                _ => None,
            };
            let in_millis = match opts.time_precision {
                TimePrecisionMode::Connect => true,
                _ => precision.is_some_and(|p| p <= 3),
            };
            let v = match ts {
                Infinite::Finite(us) if in_millis => us.div_euclid(1000),
                Infinite::Finite(us) => *us,
                Infinite::PosInfinity if in_millis => TIMESTAMP_POS_INFINITY / 1000,
                Infinite::NegInfinity if in_millis => TIMESTAMP_NEG_INFINITY / 1000,
                Infinite::PosInfinity => TIMESTAMP_POS_INFINITY,
                Infinite::NegInfinity => TIMESTAMP_NEG_INFINITY,
            };
            json::write_i64(out, v);
        }
        Value::TimestampTz(ts) => match ts {
            Infinite::Finite(us) => {
                let precision = match kind {
                    TypeKind::TimestampTz { precision } => precision.unwrap_or(6),
                    _ => 6,
                };
                out.push('"');
                write_iso_timestamp(out, *us, precision.min(6));
                out.push_str("Z\"");
            }
            Infinite::PosInfinity => out.push_str("\"infinity\""),
            Infinite::NegInfinity => out.push_str("\"-infinity\""),
        },
        Value::Interval { months, days, micros } => match opts.interval {
            IntervalMode::Numeric => json::write_i64(
                out,
                (*months as i64)
                    .saturating_mul(MICROS_PER_MONTH)
                    .saturating_add((*days as i64).saturating_mul(MICROS_PER_DAY))
                    .saturating_add(*micros),
            ),
            IntervalMode::String => write_iso_interval(out, *months, *days, *micros),
        },
        Value::Bits { length, bytes } => {
            if matches!(kind, TypeKind::Bit { length: Some(1) }) {
                out.push_str(if bytes.first().is_some_and(|b| *b != 0) { "true" } else { "false" });
            } else {
                let _ = length;
                // io.debezium.data.Bits is bytes whatever binary.handling.mode says.
                write_bytes(out, bytes, BinaryMode::Bytes);
            }
        }
        Value::Point { x, y } => {
            out.push_str("{\"x\":");
            json::write_f64(out, *x);
            out.push_str(",\"y\":");
            json::write_f64(out, *y);
            out.push_str(",\"wkb\":");
            write_bytes(out, &point_wkb(*x, *y), BinaryMode::Bytes);
            out.push_str(",\"srid\":null}");
        }
        Value::Hstore(pairs) => match opts.hstore {
            HstoreMode::Map => write_hstore_object(out, pairs),
            HstoreMode::Json => {
                let mut object = String::new();
                write_hstore_object(&mut object, pairs);
                json::write_str(out, &object);
            }
        },
        Value::Composite(fields) => {
            let field_kinds = match kind {
                TypeKind::Composite { fields } => Some(fields),
                _ => None,
            };
            out.push('{');
            for (i, (name, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json::write_str(out, name);
                out.push(':');
                let k = field_kinds.and_then(|f| f.get(i)).map(|(_, k)| k).unwrap_or(&TypeKind::Text);
                write_value(out, k, v, opts);
            }
            out.push('}');
        }
        Value::Array(elements) => {
            let element_kind = match kind {
                TypeKind::Array(k) => k.as_ref(),
                other => other,
            };
            out.push('[');
            for (i, v) in elements.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // A nested array (next dimension) keeps the array kind.
                if matches!(v, Value::Array(_)) {
                    write_value(out, kind, v, opts);
                } else {
                    write_value(out, element_kind, v, opts);
                }
            }
            out.push(']');
        }
    }
}

fn write_hstore_object(out: &mut String, pairs: &[(String, Option<String>)]) {
    out.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::write_str(out, k);
        out.push(':');
        match v {
            Some(v) => json::write_str(out, v),
            None => out.push_str("null"),
        }
    }
    out.push('}');
}

/// Bytes per `binary.handling.mode` (Connect bytes are base64 in JSON).
pub fn write_bytes(out: &mut String, bytes: &[u8], mode: BinaryMode) {
    out.push('"');
    match mode {
        BinaryMode::Bytes | BinaryMode::Base64 => STANDARD.encode_string(bytes, out),
        BinaryMode::Base64UrlSafe => URL_SAFE.encode_string(bytes, out),
        BinaryMode::Hex => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.reserve(bytes.len() * 2);
            for b in bytes {
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xF) as usize] as char);
            }
        }
    }
    out.push('"');
}

fn write_numeric(out: &mut String, n: &Numeric<'_>, kind: &TypeKind, mode: DecimalMode) {
    let special = match n {
        Numeric::NaN => Some(("NaN", "NAN")),
        Numeric::PosInfinity => Some(("Infinity", "POSITIVE_INFINITY")),
        Numeric::NegInfinity => Some(("-Infinity", "NEGATIVE_INFINITY")),
        Numeric::Finite { .. } => None,
    };
    if let Some((java_double, debezium_name)) = special {
        // String mode names the special value as Debezium's SpecialValueDecimal does.
        json::write_str(out, if mode == DecimalMode::String { debezium_name } else { java_double });
        return;
    }
    match mode {
        DecimalMode::String => json::write_str(out, &n.to_plain_string()),
        DecimalMode::Double => json::write_f64(out, n.to_f64()),
        DecimalMode::Precise => {
            let fixed_scale = match kind {
                TypeKind::Numeric { scale: Some(s), .. } => Some(*s),
                TypeKind::Money => Some(2),
                _ => None,
            };
            match fixed_scale {
                Some(scale) => {
                    // The column's scale is fixed; PostgreSQL prints exactly that many digits,
                    // but rescale defensively (exactly, or keep the printed scale).
                    let scaled = n.rescale(scale);
                    let bytes = scaled.as_ref().unwrap_or(n).to_twos_complement_be().unwrap_or_default();
                    write_bytes(out, &bytes, BinaryMode::Bytes);
                }
                None => {
                    let scale = match n {
                        Numeric::Finite { scale, .. } => *scale,
                        _ => 0,
                    };
                    out.push_str("{\"scale\":");
                    json::write_i64(out, scale as i64);
                    out.push_str(",\"value\":");
                    write_bytes(out, &n.to_twos_complement_be().unwrap_or_default(), BinaryMode::Bytes);
                    out.push('}');
                }
            }
        }
    }
}

/// `HH:MM:SS[.fraction]`; `digits` None = as few fraction digits as needed (Java ISO_LOCAL_TIME).
fn write_clock(out: &mut String, micros_of_day: i64, digits: Option<u32>) {
    let secs = micros_of_day / 1_000_000;
    let frac = micros_of_day % 1_000_000;
    push2(out, secs / 3600);
    out.push(':');
    push2(out, secs / 60 % 60);
    out.push(':');
    push2(out, secs % 60);
    let digits = match digits {
        Some(d) => d.min(6) as usize,
        // As few as needed: drop trailing zeros.
        None if frac == 0 => 0,
        None => 6 - (0..6).take_while(|i| frac % 10i64.pow(*i + 1) == 0).count(),
    };
    if digits > 0 {
        let mut text = [b'0'; 6];
        let mut f = frac;
        for slot in text.iter_mut().rev() {
            *slot = b'0' + (f % 10) as u8;
            f /= 10;
        }
        out.push('.');
        out.push_str(std::str::from_utf8(&text[..digits]).unwrap_or("000000"));
    }
}

fn push2(out: &mut String, v: i64) {
    out.push((b'0' + (v / 10 % 10) as u8) as char);
    out.push((b'0' + (v % 10) as u8) as char);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff` (without zone) for microseconds since the Unix epoch, with
/// `digits` fraction digits; years outside 0000–9999 as Java prints them (`-0043`, `+10000`).
fn write_iso_timestamp(out: &mut String, micros: i64, digits: u32) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        out.push('+');
    } else if year < 0 {
        out.push('-');
    }
    let y = year.unsigned_abs();
    if y < 10000 {
        push2(out, (y / 100) as i64);
        push2(out, (y % 100) as i64);
    } else {
        out.push_str(itoa::Buffer::new().format(y));
    }
    out.push('-');
    push2(out, month as i64);
    out.push('-');
    push2(out, day as i64);
    out.push('T');
    write_clock(out, of_day, Some(digits));
}

/// Debezium's `Interval.toIsoString`: every component, seconds without trailing zeros.
fn write_iso_interval(out: &mut String, months: i32, days: i32, micros: i64) {
    let secs_total = micros / 1_000_000;
    let frac = (micros % 1_000_000).abs();
    let seconds_negative = micros < 0 && secs_total % 60 == 0 && frac != 0;
    out.push_str(&format!(
        "\"P{}Y{}M{}DT{}H{}M{}",
        months / 12,
        months % 12,
        days,
        secs_total / 3600,
        secs_total / 60 % 60,
        if seconds_negative { "-0".to_owned() } else { (secs_total % 60).to_string() },
    ));
    if frac != 0 {
        out.push('.');
        out.push_str(format!("{frac:06}").trim_end_matches('0'));
    }
    out.push_str("S\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn enc(kind: &TypeKind, v: Value<'_>, opts: &EncoderOptions) -> String {
        let mut o = String::new();
        write_value(&mut o, kind, &v, opts);
        o
    }

    #[test]
    fn timestamptz_iso() {
        let d = EncoderOptions::default();
        let k = TypeKind::TimestampTz { precision: None };
        assert_eq!(
            enc(&k, Value::TimestampTz(Infinite::Finite(1705314600000000)), &d),
            "\"2024-01-15T10:30:00.000000Z\""
        );
        // Year 0 is 1 BC: 0000-03-01 is 719468 days before the Unix epoch.
        let bc = (-719_468 * MICROS_PER_DAY) + 12 * 3_600_000_000;
        assert_eq!(enc(&k, Value::TimestampTz(Infinite::Finite(bc)), &d), "\"0000-03-01T12:00:00.000000Z\"");
        let bc = bc - 366 * MICROS_PER_DAY;
        assert_eq!(enc(&k, Value::TimestampTz(Infinite::Finite(bc)), &d), "\"-0001-03-01T12:00:00.000000Z\"");
        let k3 = TypeKind::TimestampTz { precision: Some(3) };
        assert_eq!(enc(&k3, Value::TimestampTz(Infinite::Finite(123_000)), &d), "\"1970-01-01T00:00:00.123Z\"");
        let k0 = TypeKind::TimestampTz { precision: Some(0) };
        assert_eq!(enc(&k0, Value::TimestampTz(Infinite::Finite(0)), &d), "\"1970-01-01T00:00:00Z\"");
    }

    #[test]
    fn timetz_is_utc() {
        let d = EncoderOptions::default();
        let k = TypeKind::TimeTz { precision: None };
        let v = Value::TimeTz { micros: (13 * 3600 + 45 * 60 + 59) * 1_000_000, offset_seconds: 19800 };
        assert_eq!(enc(&k, v, &d), "\"08:15:59Z\"");
        let v = Value::TimeTz { micros: 1_123_456, offset_seconds: 3600 };
        assert_eq!(enc(&k, v, &d), "\"23:00:01.123456Z\"");
    }

    #[test]
    fn intervals() {
        let d = EncoderOptions::default();
        let v = || Value::Interval { months: 14, days: 3, micros: 14_706_789_000 };
        assert_eq!(enc(&TypeKind::Interval, v(), &d), "37091106789000");
        let s = EncoderOptions { interval: IntervalMode::String, ..Default::default() };
        assert_eq!(enc(&TypeKind::Interval, v(), &s), "\"P1Y2M3DT4H5M6.789S\"");
        let neg = Value::Interval { months: 0, days: -1, micros: -7_200_000_000 };
        assert_eq!(enc(&TypeKind::Interval, neg.clone(), &d), "-93600000000");
        assert_eq!(enc(&TypeKind::Interval, neg, &s), "\"P0Y0M-1DT-2H0M0S\"");
    }

    #[test]
    fn timestamps_by_mode() {
        let d = EncoderOptions::default();
        let k = TypeKind::Timestamp { precision: None };
        assert_eq!(enc(&k, Value::Timestamp(Infinite::Finite(1705314600000001)), &d), "1705314600000001");
        assert_eq!(enc(&k, Value::Timestamp(Infinite::NegInfinity), &d), "-9223372036832400000");
        let c = EncoderOptions { time_precision: TimePrecisionMode::Connect, ..Default::default() };
        assert_eq!(enc(&k, Value::Timestamp(Infinite::Finite(1705314600000001)), &c), "1705314600000");
        assert_eq!(enc(&k, Value::Timestamp(Infinite::NegInfinity), &c), "-9223372036832400");
        let t = TypeKind::Time { precision: None };
        assert_eq!(enc(&t, Value::Time(49559123456), &d), "49559123456");
        assert_eq!(enc(&t, Value::Time(49559123456), &c), "49559123");
        assert_eq!(enc(&TypeKind::Time { precision: Some(3) }, Value::Time(49559123000), &d), "49559123");
    }

    #[test]
    fn bytes_modes_and_point() {
        let mut o = EncoderOptions::default();
        assert_eq!(enc(&TypeKind::Bytea, Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef, 0]), &o), "\"3q2+7wA=\"");
        o.binary = BinaryMode::Hex;
        assert_eq!(enc(&TypeKind::Bytea, Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef, 0]), &o), "\"deadbeef00\"");
        assert_eq!(
            enc(&TypeKind::Point, Value::Point { x: 1.5, y: 2.5 }, &EncoderOptions::default()),
            r#"{"x":1.5,"y":2.5,"wkb":"AQEAAAAAAAAAAAD4PwAAAAAAAARA","srid":null}"#
        );
    }

    #[test]
    fn bits_stay_bytes_in_every_binary_mode() {
        let bits = || Value::Bits { length: 4, bytes: vec![0x0a] };
        for mode in [BinaryMode::Bytes, BinaryMode::Base64, BinaryMode::Base64UrlSafe, BinaryMode::Hex] {
            let o = EncoderOptions { binary: mode, ..Default::default() };
            assert_eq!(enc(&TypeKind::Bit { length: Some(4) }, bits(), &o), "\"Cg==\"", "{mode:?}");
            assert_eq!(enc(&TypeKind::Bit { length: None }, bits(), &o), "\"Cg==\"", "{mode:?}");
        }
    }

    #[test]
    fn hstore_modes() {
        let pairs = || Value::Hstore(vec![("a".into(), Some("1".into())), ("b".into(), None)]);
        let mut o = EncoderOptions::default();
        assert_eq!(enc(&TypeKind::Hstore, pairs(), &o), r#""{\"a\":\"1\",\"b\":null}""#);
        o.hstore = HstoreMode::Map;
        assert_eq!(enc(&TypeKind::Hstore, pairs(), &o), r#"{"a":"1","b":null}"#);
    }

    #[test]
    fn nested_arrays_and_composites() {
        let o = EncoderOptions::default();
        let k = TypeKind::Array(Box::new(TypeKind::Int4));
        let v = Value::Array(vec![
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
            Value::Array(vec![Value::Int(3), Value::Null]),
        ]);
        assert_eq!(enc(&k, v, &o), "[[1,2],[3,null]]");
        let k = TypeKind::Composite { fields: vec![("street".into(), TypeKind::Text), ("zip".into(), TypeKind::Int4)] };
        let v = Value::Composite(vec![
            ("street".into(), Value::Text(Cow::Borrowed("Main St"))),
            ("zip".into(), Value::Int(12345)),
        ]);
        assert_eq!(enc(&k, v, &o), r#"{"street":"Main St","zip":12345}"#);
    }
}
