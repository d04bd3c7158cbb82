//! PostgreSQL values as Python objects, exactly.
//!
//! | PostgreSQL                         | Python                                                  |
//! |------------------------------------|---------------------------------------------------------|
//! | bool                               | `bool`                                                  |
//! | int2/int4/int8/oid                 | `int`                                                   |
//! | float4/float8                      | `float` (float4 by its shortest decimal form: 3.14)     |
//! | numeric, money                     | `decimal.Decimal` (exact, scale kept; NaN, ±Infinity)   |
//! | text, varchar, char, name, inet, cidr, macaddr, uuid, xml, enum, range, unknown types | `str` |
//! | bytea                              | `bytes`                                                 |
//! | json, jsonb                        | `dict`/`list`/`str`/`int`/`float`/`bool`/`None`          |
//! | date                               | `datetime.date`                                         |
//! | timestamp                          | `datetime.datetime` (naive)                             |
//! | timestamptz                        | `datetime.datetime` (aware, UTC)                        |
//! | time / timetz                      | `datetime.time` (timetz with its fixed offset)          |
//! | interval                           | `pgcdc.Interval(months, days, microseconds)`            |
//! | bit, varbit                        | `str` of 0/1                                            |
//! | point                              | `(x, y)` tuple of floats                                |
//! | hstore                             | `dict[str, str | None]`                                 |
//! | composite                          | `dict` by field name                                    |
//! | arrays                             | nested `list`s                                          |
//!
//! What `datetime` cannot hold stays text, in PostgreSQL's spelling: `infinity`/`-infinity`
//! dates and timestamps, years before 1 or after 9999 (`0044-03-15 BC`), and `24:00:00`.

use std::borrow::Cow;

use bytes::Bytes;
use pgcdc_core::catalog::TypeKind;
use pgcdc_core::value::{civil_from_days, parse_text, Infinite, Numeric, Value};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple};

use crate::errors::PgError;
use crate::pgtext::{self, hms, MICROS_PER_DAY};

/// One column of a row as pgoutput sent it, owning its bytes (a slice of the frame).
#[derive(Debug, Clone)]
pub enum Col {
    Null,
    /// Unchanged TOAST value: not sent.
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

struct Types {
    decimal: Py<PyAny>,
    date: Py<PyAny>,
    datetime: Py<PyAny>,
    time: Py<PyAny>,
    timezone: Py<PyAny>,
    timedelta: Py<PyAny>,
    utc: Py<PyAny>,
}

fn types(py: Python<'_>) -> PyResult<&Types> {
    static TYPES: PyOnceLock<Types> = PyOnceLock::new();
    TYPES.get_or_try_init(py, || {
        let dt = py.import("datetime")?;
        Ok(Types {
            decimal: py.import("decimal")?.getattr("Decimal")?.unbind(),
            date: dt.getattr("date")?.unbind(),
            datetime: dt.getattr("datetime")?.unbind(),
            time: dt.getattr("time")?.unbind(),
            timezone: dt.getattr("timezone")?.unbind(),
            timedelta: dt.getattr("timedelta")?.unbind(),
            utc: dt.getattr("timezone")?.getattr("utc")?.unbind(),
        })
    })
}

/// Converts one column; `Ok(None)` for an unchanged TOAST value (the caller leaves it out).
pub fn column<'py>(
    py: Python<'py>,
    kind: &TypeKind,
    col: &Col,
    table: &str,
    name: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(Some(match col {
        Col::Null => py.None().into_bound(py),
        Col::Unchanged => return Ok(None),
        Col::Binary(b) => PyBytes::new(py, b).into_any(),
        Col::Text(b) => {
            let text = std::str::from_utf8(b)
                .map_err(|_| PgError::Data(format!("column {table}.{name}: text is not valid UTF-8")))?;
            let v = parse_text(kind, text).map_err(|e| PgError::Data(format!("column {table}.{name}: {e}")))?;
            value(py, &v, Some(text))?
        }
    }))
}

/// Converts a parsed value. `text` is the value's own text form when known (top-level columns),
/// used for what `datetime` cannot represent.
pub fn value<'py>(py: Python<'py>, v: &Value<'_>, text: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float4(f) => {
            // The shortest decimal that reads back as this f32, as PostgreSQL prints it.
            let shortest: f64 = format!("{f}").parse().unwrap_or(f64::from(*f));
            PyFloat::new(py, shortest).into_any()
        }
        Value::Float8(f) => PyFloat::new(py, *f).into_any(),
        Value::Numeric(n) | Value::Money(n) => decimal(py, n)?,
        Value::Text(s) | Value::Xml(s) | Value::Uuid(s) | Value::Range(s) | Value::Enum(s) | Value::Unknown(s) => {
            PyString::new(py, s).into_any()
        }
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::Json(s) => json(py, s)?,
        Value::Date(d) => match d {
            Infinite::Finite(days) => {
                let (y, m, d) = civil_from_days(i64::from(*days));
                if (1..=9999).contains(&y) {
                    types(py)?.date.bind(py).call1((y, m, d))?
                } else {
                    PyString::new(py, text.unwrap_or(&pgtext::date(y, m, d))).into_any()
                }
            }
            Infinite::PosInfinity => PyString::new(py, "infinity").into_any(),
            Infinite::NegInfinity => PyString::new(py, "-infinity").into_any(),
        },
        Value::Timestamp(t) | Value::TimestampTz(t) => {
            let tz = matches!(v, Value::TimestampTz(_));
            match t {
                Infinite::Finite(micros) => match timestamp(py, *micros, tz)? {
                    Some(o) => o,
                    None => {
                        let fallback = pgtext::timestamp(*micros, tz);
                        PyString::new(py, text.unwrap_or(&fallback)).into_any()
                    }
                },
                Infinite::PosInfinity => PyString::new(py, "infinity").into_any(),
                Infinite::NegInfinity => PyString::new(py, "-infinity").into_any(),
            }
        }
        Value::Time(micros) => match time(py, *micros, None)? {
            Some(o) => o,
            None => PyString::new(py, "24:00:00").into_any(),
        },
        Value::TimeTz { micros, offset_seconds } => {
            let t = types(py)?;
            let delta = t.timedelta.bind(py).call1((0, *offset_seconds))?;
            let tz = t.timezone.bind(py).call1((delta,))?;
            match time(py, *micros, Some(tz))? {
                Some(o) => o,
                None => PyString::new(py, text.unwrap_or("24:00:00")).into_any(),
            }
        }
        Value::Interval { months, days, micros } => {
            Bound::new(py, crate::message::Interval { months: *months, days: *days, microseconds: *micros })?.into_any()
        }
        Value::Bits { length, bytes } => PyString::new(py, &bits(*length, bytes)).into_any(),
        Value::Point { x, y } => PyTuple::new(py, [*x, *y])?.into_any(),
        Value::Hstore(pairs) => {
            let d = PyDict::new(py);
            for (k, v) in pairs {
                d.set_item(k, v.as_deref())?;
            }
            d.into_any()
        }
        Value::Composite(fields) => {
            let d = PyDict::new(py);
            for (k, v) in fields {
                d.set_item(k, value(py, v, None)?)?;
            }
            d.into_any()
        }
        Value::Array(items) => {
            let l = PyList::empty(py);
            for it in items {
                l.append(value(py, it, None)?)?;
            }
            l.into_any()
        }
    })
}

pub fn decimal<'py>(py: Python<'py>, n: &Numeric<'_>) -> PyResult<Bound<'py, PyAny>> {
    let s: Cow<'_, str> = match n {
        Numeric::NaN => "NaN".into(),
        Numeric::PosInfinity => "Infinity".into(),
        Numeric::NegInfinity => "-Infinity".into(),
        Numeric::Finite { negative, digits, scale } => numeric_text(*negative, digits, *scale).into(),
    };
    decimal_text(py, &s)
}

/// `decimal.Decimal(text)`.
pub fn decimal_text<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    types(py)?.decimal.bind(py).call1((text,))
}

/// `(-1)^negative * digits * 10^-scale` as plain decimal text.
pub fn numeric_text(negative: bool, digits: &str, scale: u32) -> String {
    let scale = scale as usize;
    let mut s = String::with_capacity(digits.len() + scale + 3);
    if negative {
        s.push('-');
    }
    if scale == 0 {
        s.push_str(digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        s.push_str(int);
        s.push('.');
        s.push_str(frac);
    } else {
        s.push_str("0.");
        for _ in 0..scale - digits.len() {
            s.push('0');
        }
        s.push_str(digits);
    }
    s
}

fn timestamp<'py>(py: Python<'py>, micros: i64, tz: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let rem = micros.rem_euclid(MICROS_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    if !(1..=9999).contains(&y) {
        return Ok(None);
    }
    let (h, mi, s, us) = hms(rem);
    let t = types(py)?;
    let mut parts = vec![
        y.into_pyobject(py)?.into_any(),
        mo.into_pyobject(py)?.into_any(),
        d.into_pyobject(py)?.into_any(),
        h.into_pyobject(py)?.into_any(),
        mi.into_pyobject(py)?.into_any(),
        s.into_pyobject(py)?.into_any(),
        us.into_pyobject(py)?.into_any(),
    ];
    if tz {
        parts.push(t.utc.bind(py).clone());
    }
    let args = PyTuple::new(py, parts)?;
    Ok(Some(t.datetime.bind(py).call1(args)?))
}

fn time<'py>(py: Python<'py>, micros: i64, tz: Option<Bound<'py, PyAny>>) -> PyResult<Option<Bound<'py, PyAny>>> {
    if !(0..MICROS_PER_DAY).contains(&micros) {
        return Ok(None);
    }
    let (h, m, s, us) = hms(micros);
    let t = types(py)?.time.bind(py);
    Ok(Some(match tz {
        Some(tz) => t.call1((h, m, s, us, tz))?,
        None => t.call1((h, m, s, us))?,
    }))
}

/// The bit string back from Debezium's BitSet bytes (see `pgcdc_core::value::Value::Bits`).
pub fn bits(length: u32, bytes: &[u8]) -> String {
    (0..length as usize)
        .map(|i| {
            let bit = length as usize - 1 - i;
            let set = bytes.get(bit / 8).is_some_and(|b| b >> (bit % 8) & 1 == 1);
            if set {
                '1'
            } else {
                '0'
            }
        })
        .collect()
}

/// JSON text as Python objects, keys in the text's order, exactly like `json.loads`:
/// integers of any size are `int` (a 30-digit jsonb number is not rounded through a float),
/// numbers with a fraction or exponent are `float`.
///
/// A small parser of its own rather than serde_json: without serde_json's
/// `arbitrary_precision` (which would change number handling for the whole workspace,
/// pgcdc_core included) serde cannot hand over the text of a big integer.
pub fn json<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    let mut p = JsonParser { py, s: text.as_bytes(), text, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters").into());
    }
    Ok(v)
}

/// Nesting deeper than this is refused (a stack overflow is not an option).
const JSON_MAX_DEPTH: usize = 1000;

struct JsonParser<'a, 'py> {
    py: Python<'py>,
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'py> JsonParser<'_, 'py> {
    fn err(&self, what: &str) -> PgError {
        PgError::Data(format!("invalid JSON: {what} at offset {}", self.i))
    }

    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        if depth > JSON_MAX_DEPTH {
            return Err(self.err("nesting too deep").into());
        }
        let py = self.py;
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let d = PyDict::new(py);
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(d.into_any());
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return Err(self.err("expected a string key").into());
                    }
                    let k = self.string()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return Err(self.err("expected ':'").into());
                    }
                    self.i += 1;
                    self.ws();
                    let v = self.value(depth + 1)?;
                    d.set_item(k, v)?;
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(d.into_any());
                        }
                        _ => return Err(self.err("expected ',' or '}'").into()),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let l = PyList::empty(py);
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(l.into_any());
                }
                loop {
                    self.ws();
                    l.append(self.value(depth + 1)?)?;
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(l.into_any());
                        }
                        _ => return Err(self.err("expected ',' or ']'").into()),
                    }
                }
            }
            Some(b'"') => Ok(self.string()?.into_any()),
            Some(b't') => self.literal("true", PyBool::new(py, true).to_owned().into_any()),
            Some(b'f') => self.literal("false", PyBool::new(py, false).to_owned().into_any()),
            Some(b'n') => self.literal("null", py.None().into_bound(py)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character").into()),
            None => Err(self.err("unexpected end").into()),
        }
    }

    fn literal(&mut self, word: &str, v: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal").into())
        }
    }

    fn number(&mut self) -> PyResult<Bound<'py, PyAny>> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while p.s.get(p.i).is_some_and(u8::is_ascii_digit) {
                p.i += 1;
            }
            p.i - from
        };
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let int_digits = digits(self);
        if int_digits == 0 || (int_digits > 1 && self.s[self.i - int_digits] == b'0') {
            return Err(self.err("invalid number").into());
        }
        let mut integer = true;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            integer = false;
            if digits(self) == 0 {
                return Err(self.err("invalid number").into());
            }
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            integer = false;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("invalid number").into());
            }
        }
        let token = &self.text[start..self.i];
        let py = self.py;
        if integer {
            if let Ok(i) = token.parse::<i64>() {
                return Ok(i.into_pyobject(py)?.into_any());
            }
            // Beyond 64 bits: Python's int() is exact at any size.
            return py.get_type::<pyo3::types::PyInt>().call1((token,));
        }
        let f: f64 = token.parse().map_err(|_| self.err("invalid number"))?;
        Ok(PyFloat::new(py, f).into_any())
    }

    fn string(&mut self) -> PyResult<Bound<'py, PyString>> {
        self.i += 1; // the opening quote
        let start = self.i;
        while let Some(&b) = self.s.get(self.i) {
            match b {
                b'"' => {
                    let v = PyString::new(self.py, &self.text[start..self.i]);
                    self.i += 1;
                    return Ok(v);
                }
                b'\\' => break,
                0..=0x1f => return Err(self.err("control character in string").into()),
                _ => self.i += 1,
            }
        }
        // With escapes: build it.
        let mut out = String::from(&self.text[start..self.i]);
        loop {
            let Some(&b) = self.s.get(self.i) else { return Err(self.err("unterminated string").into()) };
            match b {
                b'"' => {
                    self.i += 1;
                    return Ok(PyString::new(self.py, &out));
                }
                b'\\' => {
                    self.i += 1;
                    let esc = self.s.get(self.i).copied().ok_or_else(|| self.err("unterminated string"))?;
                    self.i += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("lone leading surrogate").into());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid trailing surrogate").into());
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(c.ok_or_else(|| self.err("lone trailing surrogate"))?);
                        }
                        _ => return Err(self.err("invalid escape").into()),
                    }
                }
                0..=0x1f => return Err(self.err("control character in string").into()),
                _ => {
                    // Copy one UTF-8 character (the input is a &str, so it is well formed).
                    let len = match b {
                        0x00..=0x7f => 1,
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        _ => 4,
                    };
                    out.push_str(&self.text[self.i..self.i + len]);
                    self.i += len;
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, PgError> {
        let h = self.text.get(self.i..self.i + 4).ok_or_else(|| self.err("short \\u escape"))?;
        if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.err("invalid \\u escape"));
        }
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("invalid \\u escape"))?;
        self.i += 4;
        Ok(v)
    }
}

/// Re-indents compact JSON like Python's `json.dumps(indent=n)` without parsing values, so
/// numbers and key order stay exactly as they are.
pub fn indent_json(compact: &str, indent: usize) -> String {
    let mut out = String::with_capacity(compact.len() * 2);
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let bytes = compact.as_bytes();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth * indent {
            out.push(' ');
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if in_str {
            // Copy string contents verbatim (UTF-8 continuation bytes included).
            let start = i;
            while i < bytes.len() {
                let b = bytes[i];
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_str = false;
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push_str(&compact[start..i]);
            continue;
        }
        match c {
            b'"' => {
                in_str = true;
                out.push('"');
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                if bytes.get(i + 1) == Some(&close) {
                    out.push(c as char);
                    out.push(close as char);
                    i += 2;
                    continue;
                }
                out.push(c as char);
                depth += 1;
                newline(&mut out, depth);
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c as char);
            }
            b',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            b':' => out.push_str(": "),
            b' ' | b'\n' | b'\t' | b'\r' => {}
            _ => {
                // A number or literal: copy up to the next structural byte.
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b',' | b'}' | b']' | b':' | b' ' | b'\n') {
                    i += 1;
                }
                out.push_str(&compact[start..i]);
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_text_places_the_point() {
        assert_eq!(numeric_text(false, "123456781234", 4), "12345678.1234");
        assert_eq!(numeric_text(false, "1", 21), "0.000000000000000000001");
        assert_eq!(numeric_text(true, "5", 1), "-0.5");
        assert_eq!(numeric_text(false, "42", 0), "42");
        assert_eq!(numeric_text(false, "1234", 4), "0.1234");
    }

    #[test]
    fn bits_round_trip() {
        assert_eq!(bits(4, &[0x0A]), "1010");
        assert_eq!(bits(3, &[0x06]), "110");
        assert_eq!(bits(9, &[0x01, 0x01]), "100000001");
        assert_eq!(bits(4, &[]), "0000");
    }

    #[test]
    fn indents_like_python() {
        let s = indent_json(r#"{"a":[1,{"b":"x, {y}: \"z\""}],"c":{},"d":[]}"#, 2);
        assert_eq!(
            s,
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": \"x, {y}: \\\"z\\\"\"\n    }\n  ],\n  \"c\": {},\n  \"d\": []\n}"
        );
    }
}
