//! FHIRPath Date, DateTime and Time values with partial precision: parsing, comparison,
//! calendar arithmetic and printing, and the lexical forms of FHIR's `date`, `dateTime`,
//! `instant` and `time`, which share the one grammar and calendar. It must not read the system
//! clock (the caller gives the evaluation its instant).

use std::cmp::Ordering;
use std::fmt;

use crate::decimal::Decimal;

/// How much of a date/time value is known. Seconds and fractions of seconds count as one
/// precision for comparison, as the specification says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Fraction,
}

/// A Date or DateTime. A Date is a value whose precision is at most `Day` and that has no
/// timezone; the System type of an item says which of the two it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTimeValue {
    year: i32,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    nanos: u32,
    frac_digits: u8,
    precision: Precision,
    /// Offset from UTC in minutes, when one was given.
    tz: Option<i16>,
}

/// A Time of day with partial precision and no timezone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeValue {
    hour: u8,
    minute: u8,
    second: u8,
    nanos: u32,
    frac_digits: u8,
    precision: Precision,
}

/// A cursor over ASCII text for the fixed-width date grammar.
struct Scan<'s> {
    bytes: &'s [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn digits(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let c = self.peek()?;
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
            self.at += 1;
        }
        Some(v)
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// Reads `hh[:mm[:ss[.f+]]]` into (hour, minute, second, nanos, frac_digits, precision).
    fn time(&mut self) -> Option<(u8, u8, u8, u32, u8, Precision)> {
        let hour = u8::try_from(self.digits(2)?).ok()?;
        if hour > 23 {
            return None;
        }
        if !self.eat(b':') {
            return Some((hour, 0, 0, 0, 0, Precision::Hour));
        }
        let minute = u8::try_from(self.digits(2)?).ok()?;
        if minute > 59 {
            return None;
        }
        if !self.eat(b':') {
            return Some((hour, minute, 0, 0, 0, Precision::Minute));
        }
        let second = u8::try_from(self.digits(2)?).ok()?;
        // A leap second (60) is accepted as FHIR's instant grammar does.
        if second > 60 {
            return None;
        }
        if !self.eat(b'.') {
            return Some((hour, minute, second, 0, 0, Precision::Second));
        }
        let mut nanos = 0u32;
        let mut count = 0u8;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            if count < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
                count += 1;
            }
            self.at += 1;
        }
        if count == 0 {
            return None;
        }
        for _ in count..9 {
            nanos *= 10;
        }
        Some((hour, minute, second, nanos, count, Precision::Fraction))
    }
}

/// Whether `year` of the proleptic Gregorian calendar has a 29 February.
fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i32, month: u8, day: u8) -> i64 {
    // Shift the year to start in March so the leap day is the last day of the year.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

const NANOS_PER_MILLI: i128 = 1_000_000;
const NANOS_PER_SECOND: i128 = 1_000_000_000;
const NANOS_PER_DAY: i128 = 86_400 * NANOS_PER_SECOND;

/// The units date/time arithmetic accepts: calendar keywords and the UCUM codes the
/// specification allows for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeUnit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl TimeUnit {
    pub fn parse(unit: &str) -> Option<Self> {
        Some(match unit {
            "year" | "years" => TimeUnit::Year,
            "month" | "months" => TimeUnit::Month,
            "week" | "weeks" | "wk" => TimeUnit::Week,
            "day" | "days" | "d" => TimeUnit::Day,
            "hour" | "hours" | "h" => TimeUnit::Hour,
            "minute" | "minutes" | "min" => TimeUnit::Minute,
            "second" | "seconds" | "s" => TimeUnit::Second,
            "millisecond" | "milliseconds" | "ms" => TimeUnit::Millisecond,
            _ => return None,
        })
    }

    /// Length in nanoseconds of the fixed-length units.
    fn nanos(self) -> Option<i128> {
        Some(match self {
            TimeUnit::Week => 7 * NANOS_PER_DAY,
            TimeUnit::Day => NANOS_PER_DAY,
            TimeUnit::Hour => 3_600 * NANOS_PER_SECOND,
            TimeUnit::Minute => 60 * NANOS_PER_SECOND,
            TimeUnit::Second => NANOS_PER_SECOND,
            TimeUnit::Millisecond => NANOS_PER_MILLI,
            TimeUnit::Year | TimeUnit::Month => return None,
        })
    }
}

/// `amount` in nanoseconds for a fixed-length unit; fractions below a nanosecond are dropped.
fn amount_nanos(amount: &Decimal, unit: TimeUnit) -> Option<i128> {
    let per = unit.nanos()?;
    let total = amount.checked_mul(Decimal::new(per, 0)?)?.truncate()?;
    total.to_string().parse().ok()
}

impl DateTimeValue {
    /// Parses `YYYY[-MM[-DD[Thh[:mm[:ss[.f+]]][Z|±hh:mm]]]]`, the shared grammar of FHIR `date`,
    /// `dateTime` and `instant` and of FHIRPath literals (which may also end in a bare `T`).
    /// The flag says whether the text had a time part (`T`), i.e. whether it is a DateTime.
    pub fn parse(text: &str) -> Option<(Self, bool)> {
        let mut s = Scan {
            bytes: text.as_bytes(),
            at: 0,
        };
        let year = i32::try_from(s.digits(4)?).ok()?;
        let mut v = DateTimeValue {
            year,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            nanos: 0,
            frac_digits: 0,
            precision: Precision::Year,
            tz: None,
        };
        if s.eat(b'-') {
            v.month = u8::try_from(s.digits(2)?).ok()?;
            if !(1..=12).contains(&v.month) {
                return None;
            }
            v.precision = Precision::Month;
            if s.eat(b'-') {
                v.day = u8::try_from(s.digits(2)?).ok()?;
                if v.day < 1 || v.day > days_in_month(year, v.month) {
                    return None;
                }
                v.precision = Precision::Day;
            }
        }
        let mut has_time = false;
        if s.eat(b'T') {
            has_time = true;
            if !s.done() && s.peek().is_some_and(|c| c.is_ascii_digit()) {
                if v.precision != Precision::Day {
                    return None;
                }
                let (h, m, sec, n, fd, p) = s.time()?;
                v.hour = h;
                v.minute = m;
                v.second = sec;
                v.nanos = n;
                v.frac_digits = fd;
                v.precision = p;
            }
        }
        if !s.done() {
            if !has_time || v.precision < Precision::Hour {
                return None;
            }
            v.tz = Some(parse_tz(&mut s)?);
        }
        s.done().then_some((v, has_time))
    }

    /// A UTC date-time from milliseconds since the Unix epoch (for now()).
    pub fn from_unix_millis(millis: i64) -> Self {
        let days = millis.div_euclid(86_400_000);
        let ms_of_day = millis.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        DateTimeValue {
            year,
            month,
            day,
            hour: u8::try_from(secs / 3600).unwrap_or(0),
            minute: u8::try_from(secs / 60 % 60).unwrap_or(0),
            second: u8::try_from(secs % 60).unwrap_or(0),
            nanos: u32::try_from(ms_of_day % 1000).unwrap_or(0) * 1_000_000,
            frac_digits: 3,
            precision: Precision::Fraction,
            tz: Some(0),
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The same instant reduced to the date (for today()).
    pub fn date_part(&self) -> Self {
        self.truncated(Precision::Day)
    }

    /// The time of day (for timeOfDay()).
    pub fn time_part(&self) -> TimeValue {
        TimeValue {
            hour: self.hour,
            minute: self.minute,
            second: self.second,
            nanos: self.nanos,
            frac_digits: self.frac_digits,
            precision: self.precision.max(Precision::Hour),
        }
    }

    fn truncated(&self, precision: Precision) -> Self {
        let mut v = *self;
        if precision < Precision::Month {
            v.month = 1;
        }
        if precision < Precision::Day {
            v.day = 1;
        }
        if precision < Precision::Hour {
            v.hour = 0;
            v.tz = None;
        }
        if precision < Precision::Minute {
            v.minute = 0;
        }
        if precision < Precision::Second {
            v.second = 0;
        }
        if precision < Precision::Fraction {
            v.nanos = 0;
            v.frac_digits = 0;
        }
        v.precision = v.precision.min(precision);
        v
    }

    /// Nanoseconds since the epoch of the value with missing parts at their lowest, in local
    /// time (the offset is not applied).
    fn local_nanos(&self) -> i128 {
        let days = i128::from(days_from_civil(self.year, self.month, self.day));
        let secs =
            i128::from(self.hour) * 3600 + i128::from(self.minute) * 60 + i128::from(self.second);
        days * NANOS_PER_DAY + secs * NANOS_PER_SECOND + i128::from(self.nanos)
    }

    fn with_local_nanos(&self, total: i128) -> Option<Self> {
        let days = i64::try_from(total.div_euclid(NANOS_PER_DAY)).ok()?;
        let rest = total.rem_euclid(NANOS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        if !(1..=9999).contains(&year) {
            return None;
        }
        let secs = rest / NANOS_PER_SECOND;
        Some(DateTimeValue {
            year,
            month,
            day,
            hour: u8::try_from(secs / 3600).ok()?,
            minute: u8::try_from(secs / 60 % 60).ok()?,
            second: u8::try_from(secs % 60).ok()?,
            nanos: u32::try_from(rest % NANOS_PER_SECOND).ok()?,
            ..*self
        })
    }

    /// The value moved to UTC when it carries a time and an offset. A value without an offset
    /// is taken as UTC: FHIR requires an offset whenever a time is given, so this only matters
    /// for FHIRPath literals.
    fn to_utc(self) -> Self {
        match self.tz {
            Some(offset) if offset != 0 && self.precision >= Precision::Hour => {
                let shifted = self.local_nanos() - i128::from(offset) * 60 * NANOS_PER_SECOND;
                match self.with_local_nanos(shifted) {
                    Some(mut v) => {
                        v.tz = Some(0);
                        v
                    }
                    None => self,
                }
            }
            _ => self,
        }
    }

    /// Ordering with partial precision: None when the values are equal as far as both are
    /// known but one is more precise (the comparison is then unknown).
    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        let a = self.to_utc();
        let b = other.to_utc();
        let fields = [
            (Precision::Year, i64::from(a.year), i64::from(b.year)),
            (Precision::Month, i64::from(a.month), i64::from(b.month)),
            (Precision::Day, i64::from(a.day), i64::from(b.day)),
            (Precision::Hour, i64::from(a.hour), i64::from(b.hour)),
            (Precision::Minute, i64::from(a.minute), i64::from(b.minute)),
            (
                Precision::Second,
                i64::from(a.second) * 1_000_000_000 + i64::from(a.nanos),
                i64::from(b.second) * 1_000_000_000 + i64::from(b.nanos),
            ),
        ];
        compare_fields(&fields, a.precision, b.precision)
    }

    /// Equivalence (`~`): values of different precision are not equivalent.
    pub fn equivalent(&self, other: &Self) -> bool {
        let pa = self.precision.min(Precision::Second);
        let pb = other.precision.min(Precision::Second);
        pa == pb && self.compare(other) == Some(Ordering::Equal)
    }

    /// Calendar arithmetic (`+`/`-` with a time-valued quantity). The value keeps its
    /// precision: missing parts are filled with their lowest value for the computation and
    /// dropped again afterwards. None when the result leaves years 1-9999.
    pub fn add(&self, amount: &Decimal, unit: TimeUnit) -> Option<Self> {
        let mut v = *self;
        match unit {
            TimeUnit::Year | TimeUnit::Month => {
                // Calendar units move whole years and months; a fraction is truncated.
                let n = amount.truncate()?.to_i64()?;
                let months = if unit == TimeUnit::Year {
                    n.checked_mul(12)?
                } else {
                    n
                };
                let total = i64::from(v.year)
                    .checked_mul(12)?
                    .checked_add(i64::from(v.month) - 1)?
                    .checked_add(months)?;
                v.year = i32::try_from(total.div_euclid(12)).ok()?;
                v.month = u8::try_from(total.rem_euclid(12) + 1).ok()?;
                if !(1..=9999).contains(&v.year) {
                    return None;
                }
                v.day = v.day.min(days_in_month(v.year, v.month));
                Some(v)
            }
            _ => {
                let delta = amount_nanos(amount, unit)?;
                let moved = v.with_local_nanos(v.local_nanos().checked_add(delta)?)?;
                Some(moved.truncated(self.precision))
            }
        }
    }

    fn fmt_date(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        if self.precision >= Precision::Month {
            write!(f, "-{:02}", self.month)?;
        }
        if self.precision >= Precision::Day {
            write!(f, "-{:02}", self.day)?;
        }
        Ok(())
    }
}

impl fmt::Display for DateTimeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_date(f)?;
        if self.precision >= Precision::Hour {
            f.write_str("T")?;
            fmt_time(
                f,
                self.hour,
                self.minute,
                self.second,
                self.nanos,
                self.frac_digits,
                self.precision,
            )?;
            match self.tz {
                Some(0) => f.write_str("Z")?,
                Some(offset) => {
                    let sign = if offset < 0 { '-' } else { '+' };
                    let abs = offset.unsigned_abs();
                    write!(f, "{sign}{:02}:{:02}", abs / 60, abs % 60)?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

fn fmt_time(
    f: &mut fmt::Formatter<'_>,
    hour: u8,
    minute: u8,
    second: u8,
    nanos: u32,
    frac_digits: u8,
    precision: Precision,
) -> fmt::Result {
    write!(f, "{hour:02}")?;
    if precision >= Precision::Minute {
        write!(f, ":{minute:02}")?;
    }
    if precision >= Precision::Second {
        write!(f, ":{second:02}")?;
    }
    if precision >= Precision::Fraction && frac_digits > 0 {
        let digits = format!("{nanos:09}");
        let keep = usize::from(frac_digits).min(digits.len());
        write!(f, ".{}", digits.get(..keep).unwrap_or(""))?;
    }
    Ok(())
}

fn parse_tz(s: &mut Scan<'_>) -> Option<i16> {
    if s.eat(b'Z') {
        return Some(0);
    }
    let sign: i16 = if s.eat(b'+') {
        1
    } else if s.eat(b'-') {
        -1
    } else {
        return None;
    };
    let h = i16::try_from(s.digits(2)?).ok()?;
    if !s.eat(b':') {
        return None;
    }
    let m = i16::try_from(s.digits(2)?).ok()?;
    if h > 14 || m > 59 {
        return None;
    }
    Some(sign * (h * 60 + m))
}

/// Compares field by field down to the coarser precision of the two.
fn compare_fields(
    fields: &[(Precision, i64, i64)],
    pa: Precision,
    pb: Precision,
) -> Option<Ordering> {
    let pa = pa.min(Precision::Second);
    let pb = pb.min(Precision::Second);
    for &(precision, a, b) in fields {
        let has_a = pa >= precision;
        let has_b = pb >= precision;
        match (has_a, has_b) {
            (true, true) => match a.cmp(&b) {
                Ordering::Equal => {}
                unequal => return Some(unequal),
            },
            (false, false) => return Some(Ordering::Equal),
            _ => return None,
        }
    }
    Some(Ordering::Equal)
}

/// The largest time-zone offset FHIR allows, in minutes: its regex ends at `±14:00`, while a
/// FHIRPath literal may write up to `±14:59`.
const FHIR_MAX_OFFSET_MINUTES: i16 = 14 * 60;

/// Whether a value read by [`DateTimeValue::parse`] has what FHIR's `dateTime` and `instant`
/// need once a time is given: a year from 0001 (FHIRPath also reads 0000), seconds, and an
/// offset within FHIR's range.
fn has_fhir_time_and_offset(value: &DateTimeValue) -> bool {
    value.year >= 1
        && value.precision >= Precision::Second
        && value
            .tz
            .is_some_and(|offset| offset.abs() <= FHIR_MAX_OFFSET_MINUTES)
}

/// Whether `text` is a FHIR `date`: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, year 0001 to 9999, with
/// a real month and day of the month (29 February only in leap years).
pub fn is_fhir_date(text: &str) -> bool {
    matches!(DateTimeValue::parse(text), Some((value, false)) if value.year >= 1)
}

/// Whether `text` is a FHIR `dateTime`: a FHIR `date`, or a full date followed by
/// `Thh:mm:ss(.f+)` and a time zone (`Z` or `±hh:mm` up to `±14:00`).
pub fn is_fhir_date_time(text: &str) -> bool {
    match DateTimeValue::parse(text) {
        Some((value, false)) => value.year >= 1,
        Some((value, true)) => has_fhir_time_and_offset(&value),
        None => false,
    }
}

/// Whether `text` is a FHIR `instant`: `YYYY-MM-DDThh:mm:ss(.f+)` and a time zone.
pub fn is_fhir_instant(text: &str) -> bool {
    matches!(DateTimeValue::parse(text), Some((value, true)) if has_fhir_time_and_offset(&value))
}

/// Whether `text` is a FHIR `time`: `hh:mm:ss(.f+)`, hours 00 to 23, a leap second allowed,
/// no time zone.
pub fn is_fhir_time(text: &str) -> bool {
    TimeValue::parse(text).is_some_and(|value| value.precision >= Precision::Second)
}

impl TimeValue {
    /// Parses `hh[:mm[:ss[.f+]]]` (FHIR `time` and FHIRPath time literals after `@T`).
    pub fn parse(text: &str) -> Option<Self> {
        let mut s = Scan {
            bytes: text.as_bytes(),
            at: 0,
        };
        let (hour, minute, second, nanos, frac_digits, precision) = s.time()?;
        s.done().then_some(TimeValue {
            hour,
            minute,
            second,
            nanos,
            frac_digits,
            precision,
        })
    }

    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        let fields = [
            (Precision::Hour, i64::from(self.hour), i64::from(other.hour)),
            (
                Precision::Minute,
                i64::from(self.minute),
                i64::from(other.minute),
            ),
            (
                Precision::Second,
                i64::from(self.second) * 1_000_000_000 + i64::from(self.nanos),
                i64::from(other.second) * 1_000_000_000 + i64::from(other.nanos),
            ),
        ];
        compare_fields(&fields, self.precision, other.precision)
    }

    pub fn equivalent(&self, other: &Self) -> bool {
        self.precision.min(Precision::Second) == other.precision.min(Precision::Second)
            && self.compare(other) == Some(Ordering::Equal)
    }

    /// Time arithmetic wraps around midnight; calendar units larger than an hour are refused.
    pub fn add(&self, amount: &Decimal, unit: TimeUnit) -> Option<Self> {
        if !matches!(
            unit,
            TimeUnit::Hour | TimeUnit::Minute | TimeUnit::Second | TimeUnit::Millisecond
        ) {
            return None;
        }
        let delta = amount_nanos(amount, unit)?;
        let current =
            (i128::from(self.hour) * 3600 + i128::from(self.minute) * 60 + i128::from(self.second))
                * NANOS_PER_SECOND
                + i128::from(self.nanos);
        let total = current.checked_add(delta)?.rem_euclid(NANOS_PER_DAY);
        let secs = total / NANOS_PER_SECOND;
        let mut v = *self;
        v.hour = u8::try_from(secs / 3600).ok()?;
        if self.precision >= Precision::Minute {
            v.minute = u8::try_from(secs / 60 % 60).ok()?;
        }
        if self.precision >= Precision::Second {
            v.second = u8::try_from(secs % 60).ok()?;
        }
        if self.precision >= Precision::Fraction {
            v.nanos = u32::try_from(total % NANOS_PER_SECOND).ok()?;
        }
        Some(v)
    }
}

impl fmt::Display for TimeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_time(
            f,
            self.hour,
            self.minute,
            self.second,
            self.nanos,
            self.frac_digits,
            self.precision,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn dt(s: &str) -> DateTimeValue {
        DateTimeValue::parse(s).unwrap().0
    }

    #[test]
    fn parses_and_prints_every_precision() {
        for text in [
            "2020",
            "2020-02",
            "2020-02-29",
            "2020-02-29T10",
            "2020-02-29T10:30",
            "2020-02-29T10:30:05",
            "2020-02-29T10:30:05.123",
            "2020-02-29T10:30:05.123+05:30",
            "2020-02-29T10:30:05Z",
            "2020-02-29T10:30:05-04:00",
        ] {
            assert_eq!(dt(text).to_string(), text);
        }
        assert_eq!(dt("2015T").to_string(), "2015");
        assert!(DateTimeValue::parse("2019-02-29").is_none());
        assert!(DateTimeValue::parse("2019-13").is_none());
        assert!(DateTimeValue::parse("2019-01-01T25:00").is_none());
        assert!(DateTimeValue::parse("2019-01-01X").is_none());
        assert_eq!(
            TimeValue::parse("10:15:00.5").unwrap().to_string(),
            "10:15:00.5"
        );
    }

    #[test]
    fn fhir_forms_are_the_fhirpath_grammar_with_fhir_limits() {
        for date in ["2020", "2020-02", "2020-02-29", "2000-02-29", "0001-01-01"] {
            assert!(is_fhir_date(date), "{date}");
            assert!(is_fhir_date_time(date), "{date}");
            assert!(!is_fhir_instant(date), "{date}");
        }
        for not_date in [
            "0000",
            "1900-02-29",
            "2021-02-29",
            "2020-04-31",
            "2020T",
            "2020-1",
        ] {
            assert!(!is_fhir_date(not_date), "{not_date}");
        }
        for full in [
            "2015-02-07T13:28:17-05:00",
            "2015-02-07T13:28:17.239+02:00",
            "2015-02-07T23:59:60Z",
            "2015-02-07T13:28:17+14:00",
            "2015-02-07T13:28:17-13:59",
        ] {
            assert!(is_fhir_date_time(full), "{full}");
            assert!(is_fhir_instant(full), "{full}");
            assert!(!is_fhir_date(full), "{full}");
        }
        for not_full in [
            "2015-02-07T",
            "2015-02-07T13:28:17",
            "2015-02-07T13:28Z",
            "2015-02-07T13Z",
            "2015-02-07T13:28:17.Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(!is_fhir_date_time(not_full), "{not_full}");
            assert!(!is_fhir_instant(not_full), "{not_full}");
        }
        // FHIRPath literals may carry offsets past FHIR's +14:00.
        assert!(DateTimeValue::parse("2015-02-07T13:28:17+14:30").is_some());
        assert!(!is_fhir_date_time("2015-02-07T13:28:17+14:30"));
        assert!(is_fhir_time("13:28:17"));
        assert!(is_fhir_time("13:28:17.5"));
        assert!(is_fhir_time("23:59:60"));
        assert!(!is_fhir_time("13:28"));
        assert!(!is_fhir_time("24:00:00"));
        assert!(!is_fhir_time("13:28:17Z"));
    }

    #[test]
    fn comparison_with_partial_precision() {
        assert_eq!(
            dt("2020-01-01").compare(&dt("2020-01-02")),
            Some(Ordering::Less)
        );
        assert_eq!(dt("2020-01").compare(&dt("2020-01-02")), None);
        assert_eq!(
            dt("2020-02").compare(&dt("2020-01-02")),
            Some(Ordering::Greater)
        );
        assert_eq!(
            dt("2020-01-01T10:00:00+02:00").compare(&dt("2020-01-01T08:00:00Z")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            dt("2020-01-01T10:00:00").compare(&dt("2020-01-01T10:00:00.000")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            dt("2020-01-01T00:30:00+01:00").compare(&dt("2019-12-31T23:30:00Z")),
            Some(Ordering::Equal)
        );
        assert!(!dt("2020-01-01").equivalent(&dt("2020-01-01T00:00:00Z")));
    }

    #[test]
    fn calendar_arithmetic() {
        let one = Decimal::from_i64(1);
        assert_eq!(
            dt("2020-01-31")
                .add(&one, TimeUnit::Month)
                .unwrap()
                .to_string(),
            "2020-02-29"
        );
        assert_eq!(
            dt("2020-02-29")
                .add(&one, TimeUnit::Year)
                .unwrap()
                .to_string(),
            "2021-02-28"
        );
        assert_eq!(
            dt("2020-12-31")
                .add(&one, TimeUnit::Day)
                .unwrap()
                .to_string(),
            "2021-01-01"
        );
        assert_eq!(
            dt("2020-12-31T23:30:00Z")
                .add(&Decimal::from_i64(45), TimeUnit::Minute)
                .unwrap()
                .to_string(),
            "2021-01-01T00:15:00Z"
        );
        assert_eq!(
            dt("2014")
                .add(&Decimal::from_i64(24), TimeUnit::Month)
                .unwrap()
                .to_string(),
            "2016"
        );
        assert_eq!(
            dt("2020-03-01")
                .add(&Decimal::from_i64(-1), TimeUnit::Day)
                .unwrap()
                .to_string(),
            "2020-02-29"
        );
        assert_eq!(
            TimeValue::parse("23:00")
                .unwrap()
                .add(&Decimal::from_i64(2), TimeUnit::Hour)
                .unwrap()
                .to_string(),
            "01:00"
        );
        assert_eq!(
            DateTimeValue::from_unix_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            DateTimeValue::from_unix_millis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
