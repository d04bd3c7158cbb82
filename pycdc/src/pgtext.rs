//! PostgreSQL's text forms of parsed values (`DateStyle` ISO, `IntervalStyle` postgres,
//! `TimeZone` UTC: what a replication connection of this package gets), for values whose
//! original text is not at hand: elements of arrays and fields of composites, and what
//! `datetime` cannot hold.

use std::fmt::Write as _;

use pgcdc_core::value::{civil_from_days, Infinite};

pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Hours, minutes, seconds and microseconds of a non-negative number of microseconds.
pub fn hms(micros: i64) -> (i64, i64, i64, i64) {
    let secs = micros / 1_000_000;
    (secs / 3600, secs / 60 % 60, secs % 60, micros % 1_000_000)
}

pub fn date(y: i64, m: u32, d: u32) -> String {
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

pub fn date_days(d: Infinite<i32>) -> String {
    match d {
        Infinite::Finite(days) => {
            let (y, m, d) = civil_from_days(i64::from(days));
            date(y, m, d)
        }
        Infinite::PosInfinity => "infinity".into(),
        Infinite::NegInfinity => "-infinity".into(),
    }
}

/// `.ffffff` without trailing zeros (nothing for whole seconds).
fn push_fraction(out: &mut String, us: i64) {
    if us != 0 {
        let frac = format!("{us:06}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
}

pub fn timestamp(micros: i64, tz: bool) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, us) = hms(micros.rem_euclid(MICROS_PER_DAY));
    let mut out = if y <= 0 { format!("{:04}-{mo:02}-{d:02}", 1 - y) } else { format!("{y:04}-{mo:02}-{d:02}") };
    let _ = write!(out, " {h:02}:{mi:02}:{s:02}");
    push_fraction(&mut out, us);
    if tz {
        out.push_str("+00");
    }
    if y <= 0 {
        out.push_str(" BC");
    }
    out
}

pub fn timestamp_infinite(t: Infinite<i64>, tz: bool) -> String {
    match t {
        Infinite::Finite(micros) => timestamp(micros, tz),
        Infinite::PosInfinity => "infinity".into(),
        Infinite::NegInfinity => "-infinity".into(),
    }
}

pub fn time(micros: i64) -> String {
    let (h, m, s, us) = hms(micros);
    let mut out = format!("{h:02}:{m:02}:{s:02}");
    push_fraction(&mut out, us);
    out
}

/// `13:45:59+05:30`: the offset east of UTC, minutes and seconds only when not zero.
pub fn timetz(micros: i64, offset_seconds: i32) -> String {
    let mut out = time(micros);
    let abs = offset_seconds.unsigned_abs();
    let _ = write!(out, "{}{:02}", if offset_seconds < 0 { '-' } else { '+' }, abs / 3600);
    if !abs.is_multiple_of(3600) {
        let _ = write!(out, ":{:02}", abs / 60 % 60);
        if !abs.is_multiple_of(60) {
            let _ = write!(out, ":{:02}", abs % 60);
        }
    }
    out
}

/// `IntervalStyle = postgres`: `1 year 2 mons 3 days 04:05:06.789`, `-1 days +02:03:00`.
pub fn interval(months: i32, days: i32, micros: i64) -> String {
    if (months, days, micros) == (i32::MAX, i32::MAX, i64::MAX) {
        return "infinity".into();
    }
    if (months, days, micros) == (i32::MIN, i32::MIN, i64::MIN) {
        return "-infinity".into();
    }
    let mut out = String::new();
    let mut is_zero = true;
    let mut is_before = false;
    for (v, unit) in [(i64::from(months / 12), "year"), (i64::from(months % 12), "mon"), (i64::from(days), "day")] {
        if v == 0 {
            continue;
        }
        let _ = write!(
            out,
            "{}{}{v} {unit}{}",
            if is_zero { "" } else { " " },
            if is_before && v > 0 { "+" } else { "" },
            if v != 1 { "s" } else { "" }
        );
        is_before = v < 0;
        is_zero = false;
    }
    if is_zero || micros != 0 {
        let sign = if micros < 0 {
            "-"
        } else if is_before {
            "+"
        } else {
            ""
        };
        let abs = micros.unsigned_abs();
        let secs = abs / 1_000_000;
        let _ = write!(
            out,
            "{}{sign}{:02}:{:02}:{:02}",
            if is_zero { "" } else { " " },
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        push_fraction(&mut out, (abs % 1_000_000) as i64);
    }
    out
}

/// `(1.5,2.5)`.
pub fn point(x: f64, y: f64) -> String {
    format!("({x},{y})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bc_dates_and_timestamps_format_like_postgres() {
        assert_eq!(date(-43, 3, 15), "0044-03-15 BC");
        let micros = pgcdc_core::value::days_from_civil(-43, 3, 15) * MICROS_PER_DAY + 12 * 3_600_000_000;
        assert_eq!(timestamp(micros, true), "0044-03-15 12:00:00+00 BC");
        assert_eq!(timestamp(1_705_314_600_000_001, false), "2024-01-15 10:30:00.000001");
    }

    #[test]
    fn times_format_like_postgres() {
        assert_eq!(time(((13 * 60 + 45) * 60 + 59) * 1_000_000 + 123_456), "13:45:59.123456");
        assert_eq!(time(MICROS_PER_DAY), "24:00:00");
        assert_eq!(timetz(0, 5 * 3600 + 1800), "00:00:00+05:30");
        assert_eq!(timetz(0, -2 * 3600), "00:00:00-02");
    }

    #[test]
    fn intervals_format_like_postgres() {
        // Each is what PostgreSQL 15 prints for the value (SELECT '...'::interval).
        assert_eq!(interval(14, 3, ((4 * 60 + 5) * 60 + 6) * 1_000_000 + 789_000), "1 year 2 mons 3 days 04:05:06.789");
        assert_eq!(interval(0, -1, 2 * 3_600_000_000 + 180_000_000), "-1 days +02:03:00");
        assert_eq!(interval(0, 0, 0), "00:00:00");
        assert_eq!(interval(1, 1, 0), "1 mon 1 day");
        assert_eq!(interval(-13, 0, -1_000_000), "-1 years -1 mons -00:00:01");
        assert_eq!(interval(0, 0, 100 * 3_600_000_000), "100:00:00");
    }
}
