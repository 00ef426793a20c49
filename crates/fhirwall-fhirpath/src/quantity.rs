//! FHIRPath Quantity values: a decimal and a unit (a UCUM code or a calendar duration keyword),
//! with comparison through a small table of UCUM units. It must not claim two units are
//! comparable unless the table says so.

use std::cmp::Ordering;
use std::fmt;

use crate::decimal::Decimal;

/// A System.Quantity.
#[derive(Clone, Debug)]
pub struct Quantity {
    pub value: Decimal,
    /// The UCUM code, or a calendar keyword (`year`, `month`, ... always singular here).
    pub unit: String,
}

/// The calendar duration keywords of FHIRPath quantity literals, singular and plural.
const CALENDAR: [&str; 8] = [
    "year",
    "month",
    "week",
    "day",
    "hour",
    "minute",
    "second",
    "millisecond",
];

/// The singular calendar keyword for `word` (which may be plural), if it is one.
pub fn calendar_keyword(word: &str) -> Option<&'static str> {
    let singular = word.strip_suffix('s').unwrap_or(word);
    CALENDAR.iter().copied().find(|k| *k == singular)
}

/// A dimension and the factor to its base unit, for the UCUM units whose comparison FHIR data
/// commonly needs. Metric prefixes are spelled out rather than parsed so that nothing
/// unexpected becomes comparable.
fn ucum_factor(unit: &str) -> Option<(&'static str, &'static str)> {
    Some(match unit {
        // Calendar keywords below a month are the same durations as their UCUM codes.
        "s" | "second" => ("s", "1"),
        "ms" | "millisecond" => ("s", "0.001"),
        "us" => ("s", "0.000001"),
        "min" | "minute" => ("s", "60"),
        "h" | "hour" => ("s", "3600"),
        "d" | "day" => ("s", "86400"),
        "wk" | "week" => ("s", "604800"),
        "mo" => ("s", "2629800"),
        "a" => ("s", "31557600"),
        // Calendar years and months are not UCUM years and months; they only compare with
        // each other.
        "year" => ("calendar-month", "12"),
        "month" => ("calendar-month", "1"),
        "g" => ("g", "1"),
        "kg" => ("g", "1000"),
        "mg" => ("g", "0.001"),
        "ug" => ("g", "0.000001"),
        "ng" => ("g", "0.000000001"),
        "pg" => ("g", "0.000000000001"),
        "m" => ("m", "1"),
        "km" => ("m", "1000"),
        "cm" => ("m", "0.01"),
        "mm" => ("m", "0.001"),
        "um" => ("m", "0.000001"),
        "nm" => ("m", "0.000000001"),
        "[in_i]" => ("m", "0.0254"),
        "[ft_i]" => ("m", "0.3048"),
        "L" | "l" => ("L", "1"),
        "dL" | "dl" => ("L", "0.1"),
        "cL" | "cl" => ("L", "0.01"),
        "mL" | "ml" => ("L", "0.001"),
        "uL" | "ul" => ("L", "0.000001"),
        "1" => ("1", "1"),
        "%" => ("1", "0.01"),
        "mmol/L" => ("mol/L", "0.001"),
        "mol/L" => ("mol/L", "1"),
        "umol/L" => ("mol/L", "0.000001"),
        "mg/dL" => ("g/L", "0.01"),
        "g/dL" => ("g/L", "10"),
        "g/L" => ("g/L", "1"),
        "mg/L" => ("g/L", "0.001"),
        "[lb_av]" => ("g", "453.59237"),
        "[oz_av]" => ("g", "28.349523125"),
        "Cel" => ("Cel", "1"),
        _ => return None,
    })
}

impl Quantity {
    pub fn new(value: Decimal, unit: impl Into<String>) -> Self {
        Quantity {
            value,
            unit: unit.into(),
        }
    }

    /// The value in the base unit of its dimension, when the unit is in the table.
    fn base(&self) -> Option<(&'static str, Decimal)> {
        let (dimension, factor) = ucum_factor(&self.unit)?;
        Some((dimension, self.value.checked_mul(Decimal::parse(factor)?)?))
    }

    /// Ordering when the units are the same or convertible; None when they are not comparable.
    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        if self.unit == other.unit {
            return Some(self.value.cmp(&other.value));
        }
        let (da, a) = self.base()?;
        let (db, b) = other.base()?;
        (da == db).then(|| a.cmp(&b))
    }

    /// Equivalence: like comparison, but calendar years and months also match UCUM `a` and
    /// `mo`, and the values are compared at the lower precision.
    pub fn equivalent(&self, other: &Self) -> bool {
        let ucum = |q: &Quantity| -> Quantity {
            let unit = match q.unit.as_str() {
                "year" => "a",
                "month" => "mo",
                other => other,
            };
            Quantity::new(q.value, unit)
        };
        let a = ucum(self);
        let b = ucum(other);
        if a.unit == b.unit {
            return a.value.equivalent(&b.value);
        }
        match (a.base(), b.base()) {
            (Some((da, x)), Some((db, y))) => da == db && x.equivalent(&y),
            _ => false,
        }
    }

    /// Converts `other` to this quantity's unit, for addition and subtraction.
    pub fn convert_to_unit_of(&self, other: &Self) -> Option<Decimal> {
        if self.unit == other.unit {
            return Some(other.value);
        }
        let (da, _) = ucum_factor(&self.unit)?;
        let (db, b) = other.base()?;
        if da != db {
            return None;
        }
        let (_, factor) = ucum_factor(&self.unit)?;
        b.checked_div(Decimal::parse(factor)?)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if calendar_keyword(&self.unit).is_some() {
            write!(f, "{} {}", self.value, self.unit)
        } else {
            write!(f, "{} '{}'", self.value, self.unit)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn q(v: &str, u: &str) -> Quantity {
        Quantity::new(Decimal::parse(v).unwrap(), u)
    }

    #[test]
    fn units_convert_within_a_dimension() {
        assert_eq!(q("1", "g").compare(&q("1000", "mg")), Some(Ordering::Equal));
        assert_eq!(
            q("1", "kg").compare(&q("999", "g")),
            Some(Ordering::Greater)
        );
        assert_eq!(q("1", "kg").compare(&q("1", "m")), None);
        assert_eq!(q("1", "[foo]").compare(&q("1", "[bar]")), None);
        assert_eq!(q("7", "day").compare(&q("1", "wk")), Some(Ordering::Equal));
        assert_eq!(q("1", "year").compare(&q("1", "a")), None);
        assert!(q("1", "year").equivalent(&q("1", "a")));
        assert_eq!(
            q("1", "kg")
                .convert_to_unit_of(&q("500", "g"))
                .unwrap()
                .to_string(),
            "0.5"
        );
        assert_eq!(q("4", "mg").to_string(), "4 'mg'");
        assert_eq!(q("1", "year").to_string(), "1 year");
        assert_eq!(calendar_keyword("months"), Some("month"));
        assert_eq!(calendar_keyword("mo"), None);
    }
}
