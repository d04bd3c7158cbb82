//! `date`, `time`, `timetz`, `timestamp`, `timestamptz` and `interval` in the text PostgreSQL
//! prints with `DateStyle = ISO` and `IntervalStyle = postgres`:
//!
//! ```text
//! date         2024-02-29        0044-03-15 BC        infinity   -infinity
//! time         13:45:59.123456   24:00:00
//! timetz       13:45:59+05:30    21:45:59.123456-03   12:00:00+01:02:03 (LMT offsets)
//! timestamp    2024-01-15 10:30:00.000001             10000-01-01 00:00:00
//! timestamptz  2024-01-15 16:00:00.5+05:30            0044-03-15 12:00:00+00 BC
//! interval     1 year 2 mons 3 days 04:05:06.789      -1 days -02:00:00   1 day 100:00:00
//! ```
//!
//! Calendar arithmetic is proleptic Gregorian with astronomical years (1 BC is year 0, 44 BC is
//! year -43), as PostgreSQL and `java.time` both use.

use super::{Infinite, Reason};

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Days from 1970-01-01 to the given proleptic Gregorian date (astronomical `year`: 0 is 1 BC).
/// `month` is 1–12 and `day` 1–31; they are not validated (nonsense in, nonsense out, no panic).
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    // Shift to a year starting in March so the leap day is the year's last day, then count
    // 400-year eras of 146097 days from 0000-03-01.
    let (month, day) = (i64::from(month), i64::from(day));
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian `(year, month, day)` of a day count from 1970-01-01, with an
/// astronomical year (0 is 1 BC). The inverse of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = era * 400 + yoe + i128::from(month <= 2);
    (year as i64, month, day)
}

fn is_leap(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A byte cursor over ASCII date/time text.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor { b: text.as_bytes(), i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), Reason> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(what.into())
        }
    }

    /// `min..=max` ASCII digits (greedy up to `max`; more digits following is an error).
    fn number(&mut self, min: usize, max: usize, what: &'static str) -> Result<u64, Reason> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            if self.i - start == max {
                return Err(what.into());
            }
            v = v * 10 + u64::from(c - b'0');
            self.i += 1;
        }
        if self.i - start < min {
            return Err(what.into());
        }
        Ok(v)
    }

    fn at_end(&self) -> bool {
        self.i == self.b.len()
    }

    /// Consumes a trailing ` BC` era marker.
    fn bc(&mut self) -> bool {
        if self.b[self.i..] == *b" BC" {
            self.i += 3;
            true
        } else {
            false
        }
    }
}

/// `YYYY-MM-DD` (any number of year digits) → (printed year, month, day), validated later.
fn date_fields(c: &mut Cursor<'_>) -> Result<(i32, u32, u32), Reason> {
    let year = c.number(1, 9, "invalid year")? as i32;
    c.expect(b'-', "expected '-' after the year")?;
    let month = c.number(2, 2, "invalid month")? as u32;
    c.expect(b'-', "expected '-' after the month")?;
    let day = c.number(2, 2, "invalid day")? as u32;
    Ok((year, month, day))
}

/// Days since the epoch of a printed date, `bc` turning year N BC into astronomical 1 - N.
fn epoch_days(year: i32, month: u32, day: u32, bc: bool) -> Result<i64, Reason> {
    if year == 0 {
        return Err("year 0 does not exist (1 BC precedes 1 AD)".into());
    }
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err("no such date".into());
    }
    Ok(days_from_civil(year, month, day))
}

/// `HH:MM:SS[.ffffff]` → micros since midnight; `24:00:00` is allowed.
fn time_of_day(c: &mut Cursor<'_>) -> Result<i64, Reason> {
    let hour = c.number(1, 2, "invalid hour")?;
    c.expect(b':', "expected ':' after the hour")?;
    let minute = c.number(2, 2, "invalid minute")?;
    c.expect(b':', "expected ':' after the minute")?;
    let second = c.number(2, 2, "invalid second")?;
    let fraction = fraction(c)?;
    if minute > 59 || second > 59 || hour > 24 || (hour == 24 && (minute, second, fraction) != (0, 0, 0)) {
        return Err("time of day out of range".into());
    }
    Ok((hour * 3600 + minute * 60 + second) as i64 * MICROS_PER_SECOND + fraction)
}

/// Two ASCII digits at `b[i..i + 2]`.
fn two_digits(b: &[u8], i: usize) -> Option<u32> {
    let (a, c) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
    (a < 10 && c < 10).then_some(u32::from(a) * 10 + u32::from(c))
}

/// Fast path for the usual `YYYY-MM-DD` prefix (4-digit year): the fields, or None to take
/// the general path.
fn fixed_date(b: &[u8]) -> Option<(i32, u32, u32)> {
    let p: &[u8; 10] = b.get(..10)?.try_into().ok()?;
    if p[4] != b'-' || p[7] != b'-' {
        return None;
    }
    let year = two_digits(p, 0)? * 100 + two_digits(p, 2)?;
    Some((year as i32, two_digits(p, 5)?, two_digits(p, 8)?))
}

/// Fast path for the usual `YYYY-MM-DD HH:MM:SS` prefix (4-digit year, hour < 24): the
/// fields and the whole-second time of day, or None to take the general path.
fn fixed_timestamp(b: &[u8]) -> Option<(i32, u32, u32, i64)> {
    let (year, month, day) = fixed_date(b)?;
    let p: &[u8; 19] = b.get(..19)?.try_into().ok()?;
    if p[10] != b' ' || p[13] != b':' || p[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (two_digits(p, 11)?, two_digits(p, 14)?, two_digits(p, 17)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let tod = i64::from(hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND;
    Some((year, month, day, tod))
}

/// `[.ffffff]` → micros (at most 6 digits: more would need rounding PostgreSQL never does).
fn fraction(c: &mut Cursor<'_>) -> Result<i64, Reason> {
    if !c.eat(b'.') {
        return Ok(0);
    }
    let start = c.i;
    let v = c.number(1, 6, "invalid fraction of a second (at most 6 digits)")?;
    Ok(v as i64 * 10i64.pow(6 - (c.i - start) as u32))
}

/// `+HH[:MM[:SS]]` / `-HH...` → seconds east of UTC.
fn utc_offset(c: &mut Cursor<'_>) -> Result<i32, Reason> {
    let negative = match c.peek() {
        Some(b'+') => false,
        Some(b'-') => true,
        _ => return Err("expected a UTC offset like +05:30".into()),
    };
    c.i += 1;
    let hours = c.number(1, 2, "invalid offset hours")?;
    let minutes = if c.eat(b':') { c.number(2, 2, "invalid offset minutes")? } else { 0 };
    let seconds = if c.eat(b':') { c.number(2, 2, "invalid offset seconds")? } else { 0 };
    if minutes > 59 || seconds > 59 {
        return Err("offset out of range".into());
    }
    let total = (hours * 3600 + minutes * 60 + seconds) as i32;
    Ok(if negative { -total } else { total })
}

pub(super) fn parse_date(text: &str) -> Result<Infinite<i32>, Reason> {
    match text {
        "infinity" => return Ok(Infinite::PosInfinity),
        "-infinity" => return Ok(Infinite::NegInfinity),
        _ => {}
    }
    let mut c = Cursor::new(text);
    let (year, month, day) = match fixed_date(c.b) {
        Some(fields) if c.b.get(10).is_none_or(|&b| b == b' ') => {
            c.i = 10;
            fields
        }
        _ => date_fields(&mut c)?,
    };
    let bc = c.bc();
    if !c.at_end() {
        return Err("unexpected text after the date".into());
    }
    let days = epoch_days(year, month, day, bc)?;
    Ok(Infinite::Finite(i32::try_from(days).map_err(|_| "date out of range")?))
}

pub(super) fn parse_time(text: &str) -> Result<i64, Reason> {
    let mut c = Cursor::new(text);
    let micros = time_of_day(&mut c)?;
    if !c.at_end() {
        return Err("unexpected text after the time".into());
    }
    Ok(micros)
}

pub(super) fn parse_timetz(text: &str) -> Result<(i64, i32), Reason> {
    let mut c = Cursor::new(text);
    let micros = time_of_day(&mut c)?;
    let offset = utc_offset(&mut c)?;
    if !c.at_end() {
        return Err("unexpected text after the offset".into());
    }
    Ok((micros, offset))
}

/// `timestamp` (`with_tz` false: no offset allowed) or `timestamptz` (offset required; the
/// result is UTC).
pub(super) fn parse_timestamp(text: &str, with_tz: bool) -> Result<Infinite<i64>, Reason> {
    match text {
        "infinity" => return Ok(Infinite::PosInfinity),
        "-infinity" => return Ok(Infinite::NegInfinity),
        _ => {}
    }
    let mut c = Cursor::new(text);
    let (year, month, day, tod) = match fixed_timestamp(c.b) {
        Some(fields) => {
            c.i = 19;
            let (year, month, day, tod) = fields;
            (year, month, day, tod + fraction(&mut c)?)
        }
        None => {
            let (year, month, day) = date_fields(&mut c)?;
            if !(c.eat(b' ') || c.eat(b'T')) {
                return Err("expected a space between date and time".into());
            }
            (year, month, day, time_of_day(&mut c)?)
        }
    };
    let offset = if with_tz { utc_offset(&mut c)? } else { 0 };
    let bc = c.bc();
    if !c.at_end() {
        return Err(if with_tz { "unexpected text after the offset" } else { "unexpected text after the time" }.into());
    }
    let days = epoch_days(year, month, day, bc)?;
    days.checked_mul(MICROS_PER_DAY)
        .and_then(|m| m.checked_add(tod))
        .and_then(|m| m.checked_sub(i64::from(offset) * MICROS_PER_SECOND))
        .map(Infinite::Finite)
        .ok_or_else(|| "timestamp out of range".into())
}

/// `IntervalStyle = postgres`: `[N year[s]] [N mon[s]] [N day[s]] [[+|-]H:MM:SS[.f]]`, each
/// number signed on its own, hours unbounded; `00:00:00` for zero. `infinity`/`-infinity`
/// (PostgreSQL 17) become all fields at their maximum/minimum, PostgreSQL's own encoding.
pub(super) fn parse_interval(text: &str) -> Result<(i32, i32, i64), Reason> {
    match text {
        "infinity" => return Ok((i32::MAX, i32::MAX, i64::MAX)),
        "-infinity" => return Ok((i32::MIN, i32::MIN, i64::MIN)),
        _ => {}
    }
    const OVERFLOW: &str = "interval out of range";
    let (mut months, mut days, mut micros) = (0i32, 0i32, 0i64);
    let mut tokens = text.split_ascii_whitespace();
    let (mut any, mut seen_time) = (false, false);
    while let Some(token) = tokens.next() {
        any = true;
        if token.contains(':') {
            if seen_time {
                return Err("two time parts".into());
            }
            seen_time = true;
            micros = micros.checked_add(interval_time(token)?).ok_or(OVERFLOW)?;
            continue;
        }
        let n: i64 = token.parse().map_err(|_| "expected a number or a time")?;
        let unit = tokens.next().ok_or("number without a unit")?;
        let add = |field: i32, n: i64| -> Result<i32, Reason> {
            i32::try_from(n).ok().and_then(|n| field.checked_add(n)).ok_or_else(|| OVERFLOW.into())
        };
        match unit {
            "year" | "years" => months = add(months, n.checked_mul(12).ok_or(OVERFLOW)?)?,
            "mon" | "mons" => months = add(months, n)?,
            "day" | "days" => days = add(days, n)?,
            _ => return Err("unknown interval unit".into()),
        }
    }
    if !any {
        return Err("empty interval".into());
    }
    Ok((months, days, micros))
}

/// `[+|-]H+:MM:SS[.ffffff]` (hours may exceed 24) → signed micros.
fn interval_time(token: &str) -> Result<i64, Reason> {
    let mut c = Cursor::new(token);
    let negative = c.eat(b'-');
    if !negative {
        c.eat(b'+');
    }
    let hours = c.number(1, 19, "invalid hours")?;
    c.expect(b':', "expected ':' after the hours")?;
    let minutes = c.number(2, 2, "invalid minutes")?;
    c.expect(b':', "expected ':' after the minutes")?;
    let seconds = c.number(2, 2, "invalid seconds")?;
    let fraction = fraction(&mut c)?;
    if !c.at_end() || minutes > 59 || seconds > 59 {
        return Err("invalid time part".into());
    }
    let magnitude =
        i128::from(hours) * 3_600_000_000 + i128::from(minutes * 60 + seconds) * 1_000_000 + i128::from(fraction);
    let v = if negative { -magnitude } else { magnitude };
    i64::try_from(v).map_err(|_| "interval out of range".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_edges() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29), 19782);
        assert_eq!(days_from_civil(1900, 1, 1), -25567);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(days_from_civil(0, 3, 1), -719_468);
        assert_eq!(days_from_civil(0, 2, 29), -719_469);
        assert_eq!(days_from_civil(-4713, 11, 24), -2_440_588); // PostgreSQL's Julian day 0
        for d in [-2_440_588, -719_469, -1, 0, 1, 19782, 2_932_896, 2_147_483_647] {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y as i32, m, day), d, "{d}");
        }
        assert!((1..=12).contains(&civil_from_days(i64::MIN).1));
        assert!((1..=12).contains(&civil_from_days(i64::MAX).1));
    }

    #[test]
    fn rejects_impossible_dates() {
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "0000-01-01",
            "2024-1-01",
            "2024-01-01 AD",
            "2024-01-01 bc",
            "",
            "infinity ",
            "+infinity",
        ] {
            assert!(parse_date(bad).is_err(), "{bad:?}");
        }
        assert!(parse_date("2000-02-29").is_ok());
        assert!(parse_date("0005-02-29 BC").is_ok()); // astronomical -4 is leap
        assert!(parse_date("0001-02-29 BC").is_ok()); // astronomical 0 is leap
        assert!(parse_date("0002-02-29 BC").is_err());
    }

    #[test]
    fn rejects_bad_times() {
        for bad in [
            "24:00:01",
            "24:00:00.000001",
            "23:60:00",
            "23:59:60",
            "1:2:3",
            "12:00",
            "12:00:00.1234567",
            "12:00:00.",
            "12:00:00+01",
            "-01:00:00",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_time("24:00:00").unwrap(), MICROS_PER_DAY);
        assert_eq!(parse_time("0:00:00.5").unwrap(), 500_000);
    }
}
