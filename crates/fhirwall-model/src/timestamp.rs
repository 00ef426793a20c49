//! A point in time as the server records it: microseconds since the Unix epoch, truncated to
//! milliseconds (FHIR instants carry milliseconds). Only a value; reading the clock is the
//! application's business (`fhirwall-service`'s `Clock`).

/// Microseconds since the Unix epoch, UTC, a whole number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// A timestamp from microseconds, truncated to the millisecond.
    pub fn from_micros(micros: i64) -> Self {
        Timestamp(micros - micros.rem_euclid(1000))
    }

    pub fn from_unix_seconds(seconds: i64) -> Self {
        Timestamp(seconds.saturating_mul(1_000_000))
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// The FHIR `instant` form, `2024-01-31T12:00:00.123Z`.
    pub fn to_fhir_instant(self) -> String {
        let nanos = i128::from(self.0) * 1000;
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        time.format(&format).unwrap_or_default()
    }

    /// Parses `_since`-style input: an RFC 3339 instant, or a date alone (the start of that
    /// day in UTC).
    pub fn parse_instant_or_date(value: &str) -> Option<Self> {
        let rfc3339 = time::format_description::well_known::Rfc3339;
        if let Ok(t) = time::OffsetDateTime::parse(value, &rfc3339) {
            return i64::try_from(t.unix_timestamp_nanos() / 1000)
                .ok()
                .map(Timestamp::from_micros);
        }
        let date_format = time::macros::format_description!("[year]-[month]-[day]");
        let date = time::Date::parse(value, &date_format).ok()?;
        let t = date.midnight().assume_utc();
        i64::try_from(t.unix_timestamp_nanos() / 1000)
            .ok()
            .map(Timestamp::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_to_milliseconds_and_formats() {
        let t = Timestamp::from_micros(1_700_000_000_123_456);
        assert_eq!(t.micros(), 1_700_000_000_123_000);
        assert_eq!(t.to_fhir_instant(), "2023-11-14T22:13:20.123Z");
        assert_eq!(t.unix_seconds(), 1_700_000_000);
    }

    #[test]
    fn parses_instants_and_dates() {
        assert_eq!(
            Timestamp::parse_instant_or_date("2023-11-14T22:13:20.123Z"),
            Some(Timestamp::from_micros(1_700_000_000_123_000))
        );
        assert_eq!(
            Timestamp::parse_instant_or_date("1970-01-02"),
            Some(Timestamp::from_unix_seconds(86_400))
        );
        assert_eq!(Timestamp::parse_instant_or_date("yesterday"), None);
    }
}
