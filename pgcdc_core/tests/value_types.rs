//! `value::parse_text` on every type of the shared typematrix workload (the text PostgreSQL 15
//! sends for `typematrix_dml.sql`), with expected values cross-checked against the Debezium
//! golden output described in `debezium/FORMAT.md` §6, plus edge values.

// The workload's float values are literally 3.14 and 2.718281828459045, not PI and E.
#![allow(clippy::approx_constant)]

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pgcdc_core::catalog::TypeKind;
use pgcdc_core::value::{civil_from_days, parse_text, point_wkb, Infinite, Numeric, Value};

fn ok<'a>(kind: &TypeKind, text: &'a str) -> Value<'a> {
    parse_text(kind, text).unwrap_or_else(|e| panic!("{kind:?} {text:?}: {e}"))
}

fn err(kind: &TypeKind, text: &str) {
    assert!(parse_text(kind, text).is_err(), "{kind:?} {text:?} should fail, got {:?}", parse_text(kind, text));
}

fn text(s: &str) -> Value<'static> {
    Value::Text(Cow::Owned(s.to_owned()))
}

fn num(negative: bool, digits: &str, scale: u32) -> Numeric<'static> {
    Numeric::Finite { negative, digits: Cow::Owned(digits.to_owned()), scale }
}

fn numeric_any() -> TypeKind {
    TypeKind::Numeric { precision: None, scale: None }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

const TS: TypeKind = TypeKind::Timestamp { precision: None };
const TSTZ: TypeKind = TypeKind::TimestampTz { precision: None };

// ---- row 1 of tm_types: typical values -------------------------------------------------

#[test]
fn booleans_and_integers() {
    assert_eq!(ok(&TypeKind::Bool, "t"), Value::Bool(true));
    assert_eq!(ok(&TypeKind::Bool, "f"), Value::Bool(false));
    assert_eq!(ok(&TypeKind::Int2, "32767"), Value::Int(32767));
    assert_eq!(ok(&TypeKind::Int2, "-32768"), Value::Int(-32768));
    assert_eq!(ok(&TypeKind::Int4, "-2147483648"), Value::Int(-2147483648));
    assert_eq!(ok(&TypeKind::Int8, "9223372036854775807"), Value::Int(i64::MAX));
    assert_eq!(ok(&TypeKind::Int8, "-9223372036854775808"), Value::Int(i64::MIN));
    assert_eq!(ok(&TypeKind::Oid, "42"), Value::Int(42));
    assert_eq!(ok(&TypeKind::Oid, "4294967295"), Value::Int(4294967295));
    for (kind, bad) in [
        (TypeKind::Bool, "true "),
        (TypeKind::Bool, "1"),
        (TypeKind::Int2, "32768"),
        (TypeKind::Int4, "2147483648"),
        (TypeKind::Int8, "9223372036854775808"),
        (TypeKind::Oid, "-1"),
        (TypeKind::Oid, "4294967296"),
        (TypeKind::Int4, ""),
        (TypeKind::Int4, "1.0"),
        (TypeKind::Int4, " 1"),
    ] {
        err(&kind, bad);
    }
}

#[test]
fn floats() {
    assert_eq!(ok(&TypeKind::Float4, "3.14"), Value::Float4(3.14));
    assert_eq!(ok(&TypeKind::Float8, "2.718281828459045"), Value::Float8(2.718281828459045));
    assert_eq!(ok(&TypeKind::Float8, "1e-300"), Value::Float8(1e-300));
    assert_eq!(ok(&TypeKind::Float8, "-Infinity"), Value::Float8(f64::NEG_INFINITY));
    assert_eq!(ok(&TypeKind::Float4, "Infinity"), Value::Float4(f32::INFINITY));
    assert_eq!(ok(&TypeKind::Float4, "3.4028235e+38"), Value::Float4(f32::MAX));
    match ok(&TypeKind::Float4, "NaN") {
        Value::Float4(f) => assert!(f.is_nan()),
        v => panic!("{v:?}"),
    }
    match ok(&TypeKind::Float8, "NaN") {
        Value::Float8(f) => assert!(f.is_nan()),
        v => panic!("{v:?}"),
    }
    err(&TypeKind::Float8, "");
    err(&TypeKind::Float8, "1,5");
}

#[test]
fn numerics_match_debezium_bytes() {
    let kind = TypeKind::Numeric { precision: Some(12), scale: Some(4) };
    let Value::Numeric(n) = ok(&kind, "12345678.1234") else { panic!() };
    assert_eq!(n, num(false, "123456781234", 4));
    assert_eq!(b64(&n.to_twos_complement_be().unwrap()), "HL6Y+7I=");
    assert_eq!(n.to_plain_string(), "12345678.1234");
    assert_eq!(n.to_f64(), 1.23456781234E7);

    let Value::Numeric(n) = ok(&numeric_any(), "0.000000000000000000001") else { panic!() };
    assert_eq!(n, num(false, "1", 21));
    assert_eq!(b64(&n.to_twos_complement_be().unwrap()), "AQ==");
    assert_eq!(n.to_plain_string(), "0.000000000000000000001");
    assert_eq!(n.to_f64(), 1.0E-21);

    // X:9 of the supplement: -12.34 in numeric(12,2) → "+y4=".
    let Value::Numeric(n) = ok(&numeric_any(), "-12.34") else { panic!() };
    assert_eq!(b64(&n.to_twos_complement_be().unwrap()), "+y4=");
    let Value::Numeric(n) = ok(&numeric_any(), "-12.3400") else { panic!() };
    assert_eq!(n, num(true, "123400", 4));
    assert_eq!(n.rescale(2).unwrap(), num(true, "1234", 2));

    assert_eq!(ok(&numeric_any(), "NaN"), Value::Numeric(Numeric::NaN));
    assert_eq!(ok(&numeric_any(), "Infinity"), Value::Numeric(Numeric::PosInfinity));
    assert_eq!(ok(&numeric_any(), "-Infinity"), Value::Numeric(Numeric::NegInfinity));
    assert_eq!(ok(&numeric_any(), "0"), Value::Numeric(num(false, "0", 0)));
    assert_eq!(ok(&numeric_any(), "0.00"), Value::Numeric(num(false, "0", 2)));
    let Value::Numeric(zero) = ok(&numeric_any(), "0.00") else { panic!() };
    assert_eq!(zero.to_twos_complement_be().unwrap(), [0]);
    for bad in ["", "abc", "1.2.3", "--1", "1e", "$1"] {
        err(&numeric_any(), bad);
    }
}

#[test]
fn huge_numeric_two_complement_is_exact() {
    // 131072 digits, PostgreSQL's maximum before the point, checked by converting back.
    // (The negative one shorter, to keep the debug test fast.)
    let digits = |n: usize| -> String { (0..n).map(|i| char::from(b'1' + (i * 7 % 9) as u8)).collect() };
    for (negative, len) in [(false, 131_072), (true, 20_000)] {
        let text = if negative { format!("-{}", digits(len)) } else { digits(len) };
        let Value::Numeric(n) = ok(&numeric_any(), &text) else { panic!() };
        let bytes = n.to_twos_complement_be().unwrap();
        assert_eq!(bytes[0] & 0x80 != 0, negative);
        assert_eq!(be_twos_complement_to_decimal(&bytes), text);
    }
}

/// Independent check: signed big-endian bytes back to decimal by repeated division by 10^9.
fn be_twos_complement_to_decimal(bytes: &[u8]) -> String {
    let negative = bytes[0] & 0x80 != 0;
    let mut mag = bytes.to_vec();
    if negative {
        // magnitude = !(v) + 1
        let mut carry = true;
        for b in mag.iter_mut().rev() {
            let (v, c) = (!*b).overflowing_add(u8::from(carry));
            *b = v;
            carry = c;
        }
    }
    // Big-endian u32 limbs.
    while !mag.len().is_multiple_of(4) {
        mag.insert(0, 0);
    }
    let mut limbs: Vec<u32> = mag.chunks(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mut chunks = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem: u64 = 0;
        for l in limbs.iter_mut() {
            let cur = (rem << 32) | u64::from(*l);
            *l = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        chunks.push(rem as u32);
        while limbs.first() == Some(&0) {
            limbs.remove(0);
        }
    }
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    match chunks.pop() {
        None => s.push('0'),
        Some(top) => s.push_str(&top.to_string()),
    }
    for c in chunks.iter().rev() {
        s.push_str(&format!("{c:09}"));
    }
    s
}

#[test]
fn money() {
    let Value::Money(m) = ok(&TypeKind::Money, "$12.34") else { panic!() };
    assert_eq!(m, num(false, "1234", 2));
    assert_eq!(b64(&m.to_twos_complement_be().unwrap()), "BNI=");
    assert_eq!(m.to_plain_string(), "12.34");
    assert_eq!(m.to_f64(), 12.34);
    assert_eq!(ok(&TypeKind::Money, "-$1,234.56"), Value::Money(num(true, "123456", 2)));
    assert_eq!(ok(&TypeKind::Money, "$0.00"), Value::Money(num(false, "0", 2)));
    assert_eq!(ok(&TypeKind::Money, "-$92,233,720,368,547,758.08"), Value::Money(num(true, "9223372036854775808", 2)));
    assert_eq!(ok(&TypeKind::Money, "1.234,56 €"), Value::Money(num(false, "123456", 2)));
    for bad in ["", "$", "$1,234", "12.34 $ €", "$1.2.3", "$ 1 2"] {
        err(&TypeKind::Money, bad);
    }
}

#[test]
fn text_like_kinds_borrow() {
    let s = "héllo \"wörld\" 😀";
    assert!(matches!(ok(&TypeKind::Text, s), Value::Text(Cow::Borrowed(t)) if t == s));
    assert_eq!(ok(&TypeKind::Text, "ab   "), text("ab   "));
    assert_eq!(ok(&TypeKind::Text, ""), text(""));
    for inet in ["192.168.0.1/24", "10.0.0.0/8", "08:00:2b:01:02:03"] {
        assert_eq!(ok(&TypeKind::Text, inet), text(inet));
    }
    let json = r#"{"a": [1, 2, {"b": null}]}"#;
    assert!(matches!(ok(&TypeKind::Json, json), Value::Json(Cow::Borrowed(j)) if j == json));
    assert_eq!(ok(&TypeKind::Jsonb, "[]"), Value::Json(Cow::Borrowed("[]")));
    assert_eq!(ok(&TypeKind::Xml, "<a>x</a>"), Value::Xml(Cow::Borrowed("<a>x</a>")));
    let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(ok(&TypeKind::Uuid, uuid), Value::Uuid(Cow::Borrowed(uuid)));
    for bad in [
        "",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
    ] {
        err(&TypeKind::Uuid, bad);
    }
    let mood = TypeKind::Enum { labels: vec!["sad".into(), "ok".into(), "happy".into()] };
    assert_eq!(ok(&mood, "happy"), Value::Enum(Cow::Borrowed("happy")));
    let unknown = TypeKind::Unknown { name: "tsvector".into() };
    assert_eq!(ok(&unknown, "'a' 'b'"), Value::Unknown(Cow::Borrowed("'a' 'b'")));
}

#[test]
fn bytea() {
    let Value::Bytes(b) = ok(&TypeKind::Bytea, "\\xdeadbeef00") else { panic!() };
    assert_eq!(b64(&b), "3q2+7wA=");
    assert_eq!(ok(&TypeKind::Bytea, "\\x"), Value::Bytes(vec![]));
    assert_eq!(ok(&TypeKind::Bytea, "ab\\\\c\\000"), Value::Bytes(b"ab\\c\0".to_vec()));
    err(&TypeKind::Bytea, "\\xdg");
    err(&TypeKind::Bytea, "\\xd");
}

#[test]
fn dates() {
    assert_eq!(ok(&TypeKind::Date, "2024-02-29"), Value::Date(Infinite::Finite(19782)));
    assert_eq!(ok(&TypeKind::Date, "1900-01-01"), Value::Date(Infinite::Finite(-25567)));
    assert_eq!(ok(&TypeKind::Date, "1970-01-01"), Value::Date(Infinite::Finite(0)));
    assert_eq!(ok(&TypeKind::Date, "1969-12-31"), Value::Date(Infinite::Finite(-1)));
    assert_eq!(ok(&TypeKind::Date, "2000-02-29"), Value::Date(Infinite::Finite(11016)));
    assert_eq!(ok(&TypeKind::Date, "infinity"), Value::Date(Infinite::PosInfinity));
    assert_eq!(ok(&TypeKind::Date, "-infinity"), Value::Date(Infinite::NegInfinity));
    // 44 BC is astronomical year -43; 1 BC is year 0 (a leap year).
    let Value::Date(Infinite::Finite(d)) = ok(&TypeKind::Date, "0044-03-15 BC") else { panic!() };
    assert_eq!(civil_from_days(d.into()), (-43, 3, 15));
    let Value::Date(Infinite::Finite(d)) = ok(&TypeKind::Date, "0001-02-29 BC") else { panic!() };
    assert_eq!(civil_from_days(d.into()), (0, 2, 29));
    let Value::Date(Infinite::Finite(d)) = ok(&TypeKind::Date, "0001-12-31 BC") else { panic!() };
    assert_eq!(d, -719_163);
    // PostgreSQL's range: 4714-11-24 BC (Julian day 0) to 5874897-12-31.
    assert_eq!(ok(&TypeKind::Date, "4714-11-24 BC"), Value::Date(Infinite::Finite(-2_440_588)));
    assert_eq!(ok(&TypeKind::Date, "5874897-12-31"), Value::Date(Infinite::Finite(2_145_042_905)));
    assert_eq!(ok(&TypeKind::Date, "10000-01-01"), Value::Date(Infinite::Finite(2_932_897)));
    for bad in ["2023-02-29", "0002-02-29 BC", "0000-01-01", "2024-02-30", "24-02-29x", "999999999-01-01", "Infinity"] {
        err(&TypeKind::Date, bad);
    }
}

#[test]
fn times() {
    let time = TypeKind::Time { precision: None };
    assert_eq!(ok(&time, "13:45:59.123456"), Value::Time(49_559_123_456));
    assert_eq!(ok(&time, "13:45:59.123"), Value::Time(49_559_123_000));
    assert_eq!(ok(&time, "00:00:00"), Value::Time(0));
    assert_eq!(ok(&time, "24:00:00"), Value::Time(86_400_000_000));
    assert_eq!(ok(&time, "23:59:59.999999"), Value::Time(86_399_999_999));
    for bad in ["24:00:00.5", "25:00:00", "12:60:00", "12:00:60", "12:00:00.1234567", "12:00:00+00", ""] {
        err(&time, bad);
    }

    let timetz = TypeKind::TimeTz { precision: None };
    assert_eq!(ok(&timetz, "13:45:59+05:30"), Value::TimeTz { micros: 49_559_000_000, offset_seconds: 19_800 });
    assert_eq!(ok(&timetz, "21:45:59.123456-03"), Value::TimeTz { micros: 78_359_123_456, offset_seconds: -10_800 });
    assert_eq!(ok(&timetz, "12:00:00+01:02:03"), Value::TimeTz { micros: 43_200_000_000, offset_seconds: 3723 });
    assert_eq!(ok(&timetz, "00:00:00+00"), Value::TimeTz { micros: 0, offset_seconds: 0 });
    assert_eq!(ok(&timetz, "24:00:00-15:59"), Value::TimeTz { micros: 86_400_000_000, offset_seconds: -57_540 });
    // Debezium shows 13:45:59+05:30 as "08:15:59Z": micros - offset.
    let Value::TimeTz { micros, offset_seconds } = ok(&timetz, "13:45:59+05:30") else { panic!() };
    assert_eq!(micros - i64::from(offset_seconds) * 1_000_000, (8 * 3600 + 15 * 60 + 59) * 1_000_000);
    for bad in ["13:45:59", "13:45:59 +05:30", "13:45:59+5:3", "13:45:59+05:60", "13:45:59+05:30 BC"] {
        err(&timetz, bad);
    }
}

#[test]
fn timestamps() {
    assert_eq!(ok(&TS, "2024-01-15 10:30:00.000001"), Value::Timestamp(Infinite::Finite(1_705_314_600_000_001)));
    assert_eq!(ok(&TS, "2024-01-15 10:30:00.123"), Value::Timestamp(Infinite::Finite(1_705_314_600_123_000)));
    assert_eq!(ok(&TS, "1970-01-01 00:00:00"), Value::Timestamp(Infinite::Finite(0)));
    assert_eq!(ok(&TS, "1969-12-31 23:59:59.999999"), Value::Timestamp(Infinite::Finite(-1)));
    assert_eq!(ok(&TS, "-infinity"), Value::Timestamp(Infinite::NegInfinity));
    assert_eq!(ok(&TS, "infinity"), Value::Timestamp(Infinite::PosInfinity));
    assert_eq!(ok(&TS, "10000-01-01 00:00:00"), Value::Timestamp(Infinite::Finite(253_402_300_800_000_000)));
    // Micros since 1970 in an i64 end at 294247-01-10 04:00:54.775807, before PostgreSQL's own
    // end (294276-12-31, counted from 2000): the rest is an error, not a wrapped value.
    assert_eq!(ok(&TS, "294247-01-10 04:00:54.775807"), Value::Timestamp(Infinite::Finite(i64::MAX)));
    err(&TS, "294247-01-10 04:00:54.775808");
    err(&TS, "294276-12-31 23:59:59.999999");
    err(&TSTZ, "294247-01-10 04:00:54.775807-01");
    assert_eq!(
        ok(&TSTZ, "4714-11-24 00:00:00+00 BC"),
        Value::TimestampTz(Infinite::Finite(-2_440_588 * 86_400_000_000))
    );
    for bad in ["2024-01-15 10:30:00+00", "2024-01-15", "2024-01-15  10:30:00", "2024-01-15 10:30"] {
        err(&TS, bad);
    }

    assert_eq!(ok(&TSTZ, "2024-01-15 10:30:00+00"), Value::TimestampTz(Infinite::Finite(1_705_314_600_000_000)));
    assert_eq!(ok(&TSTZ, "2024-01-15 16:00:00.5+05:30"), Value::TimestampTz(Infinite::Finite(1_705_314_600_500_000)));
    assert_eq!(ok(&TSTZ, "2024-01-15 05:30:00-05"), Value::TimestampTz(Infinite::Finite(1_705_314_600_000_000)));
    assert_eq!(
        ok(&TSTZ, "1900-01-01 00:00:00+01:02:03"),
        Value::TimestampTz(Infinite::Finite(-25567 * 86_400_000_000 - 3723 * 1_000_000))
    );
    assert_eq!(ok(&TSTZ, "infinity"), Value::TimestampTz(Infinite::PosInfinity));
    // 0044-03-15 12:00:00+00 BC → Debezium "-0043-03-15T12:00:00.000000Z".
    let Value::TimestampTz(Infinite::Finite(us)) = ok(&TSTZ, "0044-03-15 12:00:00+00 BC") else { panic!() };
    let days = us.div_euclid(86_400_000_000);
    assert_eq!(civil_from_days(days), (-43, 3, 15));
    assert_eq!(us.rem_euclid(86_400_000_000), 12 * 3_600_000_000);
    for bad in [
        "2024-01-15 10:30:00",
        "2024-01-15 10:30:00+00 AD",
        "2024-01-15 10:30:00 +00",
        "2024-01-15 10:30:00+00 BC ",
        "2024-01-15 10:30:00Z",
    ] {
        err(&TSTZ, bad);
    }
}

#[test]
fn intervals() {
    let iv = |t: &str| match ok(&TypeKind::Interval, t) {
        Value::Interval { months, days, micros } => (months, days, micros),
        v => panic!("{v:?}"),
    };
    let (m, d, us) = iv("1 year 2 mons 3 days 04:05:06.789");
    assert_eq!((m, d, us), (14, 3, 14_706_789_000));
    // Debezium MicroDuration: month = 30.4375 days → 37091106789000.
    assert_eq!(((f64::from(m) * 30.4375 + f64::from(d)) * 86_400_000_000.0) as i64 + us, 37_091_106_789_000);
    assert_eq!(iv("-1 days -02:00:00"), (0, -1, -7_200_000_000));
    assert_eq!(iv("-1 day -02:00:00"), (0, -1, -7_200_000_000));
    assert_eq!(iv("00:00:00"), (0, 0, 0));
    assert_eq!(iv("-00:00:00.5"), (0, 0, -500_000));
    assert_eq!(iv("1 mon"), (1, 0, 0));
    assert_eq!(iv("3 years"), (36, 0, 0));
    assert_eq!(iv("-1 years -2 mons +3 days -04:05:06"), (-14, 3, -14_706_000_000));
    assert_eq!(iv("1 day 100:00:00"), (0, 1, 360_000_000_000));
    assert_eq!(iv("+04:00:00"), (0, 0, 14_400_000_000));
    assert_eq!(iv("178000000 years"), (2_136_000_000, 0, 0));
    assert_eq!(iv("-178000000 years"), (-2_136_000_000, 0, 0));
    assert_eq!(iv("2562047788:00:54.775807"), (0, 0, i64::MAX));
    assert_eq!(iv("-2562047788:00:54.775808"), (0, 0, i64::MIN));
    assert_eq!(iv("-2147483648 days"), (0, i32::MIN, 0));
    assert_eq!(iv("infinity"), (i32::MAX, i32::MAX, i64::MAX));
    assert_eq!(iv("-infinity"), (i32::MIN, i32::MIN, i64::MIN));
    for bad in [
        "",
        "178956971 years",
        "2147483647 mons 1 mon",
        "2147483648 days",
        "2562047788:00:54.775808",
        "1 week",
        "1",
        "1.5 years",
        "04:05",
        "01:00:00 02:00:00",
        "1 day 04:60:00",
        "P1Y",
    ] {
        err(&TypeKind::Interval, bad);
    }
}

#[test]
fn bits_points_ranges() {
    let Value::Bits { length, bytes } = ok(&TypeKind::Bit { length: Some(4) }, "1010") else { panic!() };
    assert_eq!((length, b64(&bytes)), (4, "Cg==".to_owned()));
    let Value::Bits { length, bytes } = ok(&TypeKind::Bit { length: None }, "110") else { panic!() };
    assert_eq!((length, b64(&bytes)), (3, "Bg==".to_owned()));
    assert_eq!(ok(&TypeKind::Bit { length: Some(1) }, "1"), Value::Bits { length: 1, bytes: vec![1] });
    assert_eq!(ok(&TypeKind::Bit { length: None }, ""), Value::Bits { length: 0, bytes: vec![] });
    err(&TypeKind::Bit { length: None }, "12");

    assert_eq!(ok(&TypeKind::Point, "(1.5,2.5)"), Value::Point { x: 1.5, y: 2.5 });
    assert_eq!(b64(&point_wkb(1.5, 2.5)), "AQEAAAAAAAAAAAD4PwAAAAAAAARA");
    assert_eq!(ok(&TypeKind::Point, "(-0,1e-300)"), Value::Point { x: -0.0, y: 1e-300 });
    err(&TypeKind::Point, "(1.5)");
    err(&TypeKind::Point, "(a,b)");

    for r in ["[1,10)", r#"["2024-01-01 00:00:00+00","2024-12-31 00:00:00+00")"#, "empty", "{[1,3), [5,7)}", "{}"] {
        assert_eq!(ok(&TypeKind::Range, r), Value::Range(Cow::Borrowed(r)));
    }
    err(&TypeKind::Range, "1,10");
}

#[test]
fn hstore() {
    assert_eq!(
        ok(&TypeKind::Hstore, r#""a"=>"1", "b"=>NULL"#),
        Value::Hstore(vec![("a".into(), Some("1".into())), ("b".into(), None)])
    );
    assert_eq!(
        ok(&TypeKind::Hstore, r#""k\"ey"=>"v\\al", "n"=>"NULL", "e"=>"""#),
        Value::Hstore(vec![
            ("k\"ey".into(), Some("v\\al".into())),
            ("n".into(), Some("NULL".into())),
            ("e".into(), Some(String::new())),
        ])
    );
    assert_eq!(ok(&TypeKind::Hstore, ""), Value::Hstore(vec![]));
    err(&TypeKind::Hstore, r#""a"=>"1"#);
}

// ---- arrays and composites ------------------------------------------------------------------

fn arr(items: Vec<Value<'static>>) -> Value<'static> {
    Value::Array(items)
}

fn int_array() -> TypeKind {
    TypeKind::Array(Box::new(TypeKind::Int4))
}

fn text_array() -> TypeKind {
    TypeKind::Array(Box::new(TypeKind::Text))
}

#[test]
fn arrays_of_the_typematrix() {
    assert_eq!(ok(&int_array(), "{1,NULL,3}"), arr(vec![Value::Int(1), Value::Null, Value::Int(3)]));
    assert_eq!(ok(&int_array(), "{}"), arr(vec![]));
    assert_eq!(ok(&text_array(), "{}"), arr(vec![]));
    let expect = arr(vec![text("a"), text("b c"), Value::Null, text("\"q\"")]);
    assert_eq!(ok(&text_array(), r#"{a,"b c",NULL,"\"q\""}"#), expect);
    assert_eq!(ok(&text_array(), r#"{"a","b c",NULL,"\"q\""}"#), expect);
    assert_eq!(
        ok(&int_array(), "{{1,2},{3,4}}"),
        arr(vec![arr(vec![Value::Int(1), Value::Int(2)]), arr(vec![Value::Int(3), Value::Int(4)])])
    );
}

#[test]
fn array_edge_cases() {
    // Quoted NULL is text; unquoted null in any case is NULL; "" is the empty string.
    assert_eq!(
        ok(&text_array(), r#"{"NULL",null,"",NuLl}"#),
        arr(vec![text("NULL"), Value::Null, text(""), Value::Null])
    );
    // Backslash escapes in and out of quotes; surrounding whitespace of unquoted elements.
    assert_eq!(
        ok(&text_array(), r#"{"a\\b","c,d",e\,f,  g h  ,\ x\ ,"{}"}"#),
        arr(vec![text("a\\b"), text("c,d"), text("e,f"), text("g h"), text(" x "), text("{}")])
    );
    assert_eq!(ok(&text_array(), "{é,\"😀\"}"), arr(vec![text("é"), text("😀")]));
    // Lower bounds are accepted and dropped.
    assert_eq!(ok(&int_array(), "[0:1]={1,2}"), arr(vec![Value::Int(1), Value::Int(2)]));
    assert_eq!(ok(&int_array(), "[1:1][-2:-1]={{7,8}}"), arr(vec![arr(vec![Value::Int(7), Value::Int(8)])]));
    // Three dimensions.
    let three = ok(&int_array(), "{{{1},{2}},{{3},{4}}}");
    let Value::Array(outer) = &three else { panic!() };
    assert_eq!(outer.len(), 2);
    assert_eq!(outer[1], arr(vec![arr(vec![Value::Int(3)]), arr(vec![Value::Int(4)])]));
    // Six dimensions (PostgreSQL's maximum) parse, seven do not.
    assert!(parse_text(&int_array(), "{{{{{{1}}}}}}").is_ok());
    for bad in [
        "",
        "{",
        "{1,2",
        "{1,,2}",
        "{1,{2}}",
        "{{1},2}",
        "{1}x",
        "1,2",
        "{{{{{{{1}}}}}}}",
        "{\"a}",
        "{a\"b\"}",
        "[0:1]{1,2}",
        "[x]={1}",
        "{,}",
        "{1,}",
        "{2147483648}",
        "{1 2}",
    ] {
        err(&int_array(), bad);
    }
    let e = parse_text(&int_array(), "{1,2,x}").unwrap_err();
    assert_eq!(e.type_name, "array");
    assert!(e.reason.contains("element 3") && e.reason.contains("integer"), "{e}");
}

#[test]
fn arrays_of_other_kinds() {
    // numeric(6,2)[] → Debezium ["AJY=","/x8="].
    let kind = TypeKind::Array(Box::new(TypeKind::Numeric { precision: Some(6), scale: Some(2) }));
    let Value::Array(items) = ok(&kind, "{1.50,-2.25}") else { panic!() };
    let bytes: Vec<String> = items
        .iter()
        .map(|v| match v {
            Value::Numeric(n) => b64(&n.to_twos_complement_be().unwrap()),
            v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(bytes, ["AJY=", "/x8="]);
    // date[] → [19782,0].
    let kind = TypeKind::Array(Box::new(TypeKind::Date));
    assert_eq!(
        ok(&kind, "{2024-02-29,1970-01-01,NULL,infinity}"),
        arr(vec![
            Value::Date(Infinite::Finite(19782)),
            Value::Date(Infinite::Finite(0)),
            Value::Null,
            Value::Date(Infinite::PosInfinity)
        ])
    );
    // jsonb[] keeps each element's text.
    let kind = TypeKind::Array(Box::new(TypeKind::Jsonb));
    assert_eq!(
        ok(&kind, r#"{"{\"a\": 1}","[]"}"#),
        arr(vec![Value::Json(Cow::Owned(r#"{"a": 1}"#.into())), Value::Json(Cow::Owned("[]".into()))])
    );
    let kind = TypeKind::Array(Box::new(TypeKind::Uuid));
    assert_eq!(
        ok(&kind, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
        arr(vec![Value::Uuid(Cow::Owned("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()))])
    );
    let kind = TypeKind::Array(Box::new(TSTZ));
    assert_eq!(
        ok(&kind, r#"{"2024-01-15 10:30:00+00","0044-03-15 12:00:00+00 BC"}"#).into_owned(),
        arr(vec![
            Value::TimestampTz(Infinite::Finite(1_705_314_600_000_000)),
            Value::TimestampTz(Infinite::Finite(-63_517_780_800_000_000))
        ])
    );
    let kind = TypeKind::Array(Box::new(TypeKind::Bytea));
    assert_eq!(ok(&kind, r#"{"\\xdead",NULL}"#), arr(vec![Value::Bytes(vec![0xde, 0xad]), Value::Null]));
    let kind = TypeKind::Array(Box::new(TypeKind::Money));
    assert_eq!(ok(&kind, r#"{"$1,234.56"}"#), arr(vec![Value::Money(num(false, "123456", 2))]));
    let kind = TypeKind::Array(Box::new(TypeKind::Interval));
    assert_eq!(
        ok(&kind, r#"{"1 day -00:00:01",00:00:00}"#),
        arr(vec![
            Value::Interval { months: 0, days: 1, micros: -1_000_000 },
            Value::Interval { months: 0, days: 0, micros: 0 }
        ])
    );
}

fn address() -> TypeKind {
    TypeKind::Composite { fields: vec![("street".into(), TypeKind::Text), ("zip".into(), TypeKind::Int4)] }
}

fn comp(fields: Vec<(&str, Value<'static>)>) -> Value<'static> {
    Value::Composite(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

#[test]
fn composites() {
    assert_eq!(
        ok(&address(), r#"("Main St",12345)"#),
        comp(vec![("street", text("Main St")), ("zip", Value::Int(12345))])
    );
    assert_eq!(ok(&address(), "(,)"), comp(vec![("street", Value::Null), ("zip", Value::Null)]));
    assert_eq!(ok(&address(), r#"("",)"#), comp(vec![("street", text("")), ("zip", Value::Null)]));
    assert_eq!(
        ok(&address(), r#"("say ""hi"", \\ \"ok\"",7)"#),
        comp(vec![("street", text(r#"say "hi", \ "ok""#)), ("zip", Value::Int(7))])
    );
    assert_eq!(ok(&address(), r#"(a"b,c"d,-1)"#), comp(vec![("street", text("ab,cd")), ("zip", Value::Int(-1))]));
    assert_eq!(ok(&address(), "( x ,1)"), comp(vec![("street", text(" x ")), ("zip", Value::Int(1))]));
    for bad in ["", "(", "(a)", "(a,1,2)", "(a,1", "a,1)", "(a,x)", r#"("a,1)"#, "(a,1)x", "(a,\\"] {
        err(&address(), bad);
    }
    // Composite with an array and a nested composite; array of composites.
    let outer = TypeKind::Composite {
        fields: vec![("tags".into(), text_array()), ("home".into(), address()), ("at".into(), TSTZ)],
    };
    assert_eq!(
        ok(&outer, r#"("{a,""b c""}","(""Main St"",1)","2024-01-15 10:30:00+00")"#),
        comp(vec![
            ("tags", arr(vec![text("a"), text("b c")])),
            ("home", comp(vec![("street", text("Main St")), ("zip", Value::Int(1))])),
            ("at", Value::TimestampTz(Infinite::Finite(1_705_314_600_000_000))),
        ])
    );
    let kind = TypeKind::Array(Box::new(address()));
    assert_eq!(
        ok(&kind, r#"{"(\"Main St\",12345)","(,)",NULL}"#),
        arr(vec![
            comp(vec![("street", text("Main St")), ("zip", Value::Int(12345))]),
            comp(vec![("street", Value::Null), ("zip", Value::Null)]),
            Value::Null,
        ])
    );
    let empty = TypeKind::Composite { fields: vec![] };
    assert_eq!(ok(&empty, "()"), comp(vec![]));
}

#[test]
fn errors_name_type_and_text() {
    let e = parse_text(&TSTZ, "yesterday").unwrap_err();
    assert_eq!(e.type_name, "timestamptz");
    assert_eq!(e.text, "yesterday");
    assert!(e.to_string().starts_with("cannot convert \"yesterday\" as timestamptz: "), "{e}");
    let e = parse_text(&address(), "(a,x)").unwrap_err();
    assert!(e.reason.contains("zip"), "{e}");
}

#[test]
fn into_owned_keeps_values() {
    let s = String::from("2024-02-29");
    let v = parse_text(&TypeKind::Text, &s).unwrap().into_owned();
    drop(s);
    assert_eq!(v, text("2024-02-29"));
    let s = String::from("-12.3400");
    let v = parse_text(&numeric_any(), &s).unwrap().into_owned();
    drop(s);
    assert_eq!(v, Value::Numeric(num(true, "123400", 4)));
}
