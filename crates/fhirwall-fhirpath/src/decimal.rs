//! Exact decimal numbers for FHIRPath (a 128-bit mantissa and a decimal scale); it must never
//! round-trip through binary floating point except for the transcendental functions.

use std::cmp::Ordering;
use std::fmt;

/// The largest scale (digits after the point) a decimal may carry; 10^38 still fits in an i128,
/// which keeps every alignment below free of overflow.
const MAX_SCALE: u32 = 38;

/// How many digits after the point a division keeps when it does not terminate earlier; the
/// FHIRPath specification asks for at least 8.
const DIVISION_SCALE: u32 = 8;

/// A decimal number `mantissa × 10^-scale`. The scale is kept as written, so `1.0` and `1` are
/// equal but print differently, as FHIR requires for decimals that must round-trip.
#[derive(Clone, Copy, Debug)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

fn pow10(exp: u32) -> Option<i128> {
    10i128.checked_pow(exp)
}

impl Decimal {
    /// The integer `value` with scale 0.
    pub fn from_i64(value: i64) -> Self {
        Decimal {
            mantissa: i128::from(value),
            scale: 0,
        }
    }

    /// Builds a decimal from its parts; None when the scale is beyond what is supported.
    pub fn new(mantissa: i128, scale: u32) -> Option<Self> {
        (scale <= MAX_SCALE).then_some(Decimal { mantissa, scale })
    }

    /// Parses FHIR/JSON decimal text: an optional sign, digits, an optional fraction and an
    /// optional exponent. None when it is not a number or does not fit 38 significant digits.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let (negative, rest) = match bytes.first() {
            Some(b'-') => (true, text.get(1..)?),
            Some(b'+') => (false, text.get(1..)?),
            _ => (false, text),
        };
        let (number, exponent) = match rest.find(['e', 'E']) {
            Some(at) => (rest.get(..at)?, rest.get(at + 1..)?.parse::<i32>().ok()?),
            None => (rest, 0),
        };
        let (int_part, frac_part) = match number.find('.') {
            Some(at) => (number.get(..at)?, number.get(at + 1..)?),
            None => (number, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let mut mantissa: i128 = 0;
        for c in int_part.bytes().chain(frac_part.bytes()) {
            if !c.is_ascii_digit() {
                return None;
            }
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(c - b'0'))?;
        }
        if negative {
            mantissa = -mantissa;
        }
        let mut scale = i64::try_from(frac_part.len()).ok()? - i64::from(exponent);
        if scale < 0 {
            mantissa = mantissa.checked_mul(pow10(u32::try_from(-scale).ok()?)?)?;
            scale = 0;
        }
        Decimal::new(mantissa, u32::try_from(scale).ok()?)
    }

    /// Digits after the point as written.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Whether the value has no fractional part (whatever its scale).
    pub fn is_integer(&self) -> bool {
        self.split().1 == 0
    }

    /// The integer value when the number is whole and fits an i64.
    pub fn to_i64(&self) -> Option<i64> {
        let (int, frac) = self.split();
        if frac != 0 {
            return None;
        }
        i64::try_from(int).ok()
    }

    /// An approximation for the functions that FHIRPath defines through floating point.
    pub fn to_f64(&self) -> f64 {
        // The text round-trip is exact to the nearest double, which a division by 10^scale is not.
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    /// The decimal nearest to `value` as Rust prints it; None for NaN or infinities.
    pub fn from_f64(value: f64) -> Option<Self> {
        if !value.is_finite() {
            return None;
        }
        let mut d = Decimal::parse(&format!("{value}"))?;
        // Floating results carry noise past the 15th digit; 8 digits is what FHIRPath promises.
        if d.scale > DIVISION_SCALE {
            d = d.round(DIVISION_SCALE)?;
        }
        Some(d.trimmed())
    }

    /// The integer part and the fractional remainder (as a mantissa at this scale).
    fn split(&self) -> (i128, i128) {
        match pow10(self.scale) {
            Some(p) => (self.mantissa / p, self.mantissa % p),
            None => (0, self.mantissa),
        }
    }

    /// The same value with trailing zeros after the point removed.
    pub fn trimmed(self) -> Self {
        let mut d = self;
        while d.scale > 0 && d.mantissa % 10 == 0 {
            d.mantissa /= 10;
            d.scale -= 1;
        }
        d
    }

    /// The mantissa rescaled to `scale` (which must not be smaller than the current one).
    fn mantissa_at(&self, scale: u32) -> Option<i128> {
        self.mantissa
            .checked_mul(pow10(scale.checked_sub(self.scale)?)?)
    }

    /// The mantissa and scale with trailing zeros removed: equal values have equal parts.
    pub(crate) fn canonical_parts(&self) -> (i128, u32) {
        let t = self.trimmed();
        (t.mantissa, t.scale)
    }

    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        let scale = self.scale.max(other.scale);
        let m = self
            .mantissa_at(scale)?
            .checked_add(other.mantissa_at(scale)?)?;
        Decimal::new(m, scale)
    }

    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.checked_add(other.checked_neg()?)
    }

    pub fn checked_neg(self) -> Option<Self> {
        Some(Decimal {
            mantissa: self.mantissa.checked_neg()?,
            scale: self.scale,
        })
    }

    pub fn abs(self) -> Option<Self> {
        Some(Decimal {
            mantissa: self.mantissa.checked_abs()?,
            scale: self.scale,
        })
    }

    pub fn checked_mul(self, other: Self) -> Option<Self> {
        let mut m = self.mantissa.checked_mul(other.mantissa)?;
        let mut scale = self.scale.checked_add(other.scale)?;
        // Trailing zeros beyond the operands' own precision carry no information and only cost
        // range.
        while scale > self.scale.max(other.scale) && m % 10 == 0 {
            m /= 10;
            scale -= 1;
        }
        match Decimal::new(m, scale) {
            Some(d) => Some(d),
            None => Decimal { mantissa: m, scale }.round_to_max(),
        }
    }

    fn round_to_max(self) -> Option<Self> {
        let drop = self.scale.checked_sub(MAX_SCALE)?;
        let p = pow10(drop)?;
        Decimal::new(round_half_up_div(self.mantissa, p)?, MAX_SCALE)
    }

    /// Division to at least 8 digits after the point, rounded half up, trailing zeros removed.
    /// None for a zero divisor or a result out of range.
    pub fn checked_div(self, other: Self) -> Option<Self> {
        if other.mantissa == 0 {
            return None;
        }
        let target = DIVISION_SCALE.max(self.scale).max(other.scale);
        // value = (a / 10^sa) / (b / 10^sb); mantissa at `target` = a * 10^(target - sa + sb) / b.
        let shift = target.checked_add(other.scale)?.checked_sub(self.scale)?;
        let numerator = self.mantissa.checked_mul(pow10(shift)?)?;
        let q = round_half_up_div(numerator, other.mantissa)?;
        Some(Decimal::new(q, target)?.trimmed())
    }

    /// Truncated division, as FHIRPath's `div` defines it for decimals.
    pub fn checked_div_trunc(self, other: Self) -> Option<Self> {
        if other.mantissa == 0 {
            return None;
        }
        let scale = self.scale.max(other.scale);
        let q = self
            .mantissa_at(scale)?
            .checked_div(other.mantissa_at(scale)?)?;
        Decimal::new(q, 0)
    }

    /// The remainder of truncated division, with the sign of the dividend.
    pub fn checked_rem(self, other: Self) -> Option<Self> {
        if other.mantissa == 0 {
            return None;
        }
        let scale = self.scale.max(other.scale);
        let r = self
            .mantissa_at(scale)?
            .checked_rem(other.mantissa_at(scale)?)?;
        Decimal::new(r, scale)
    }

    /// Rounds half away from zero to `digits` after the point.
    pub fn round(self, digits: u32) -> Option<Self> {
        if digits >= self.scale {
            return Some(self);
        }
        let p = pow10(self.scale - digits)?;
        Decimal::new(round_half_up_div(self.mantissa, p)?, digits)
    }

    /// The largest integer not above the value.
    pub fn floor(self) -> Option<Self> {
        let (int, frac) = self.split();
        let int = if frac < 0 { int.checked_sub(1)? } else { int };
        Decimal::new(int, 0)
    }

    /// The smallest integer not below the value.
    pub fn ceiling(self) -> Option<Self> {
        let (int, frac) = self.split();
        let int = if frac > 0 { int.checked_add(1)? } else { int };
        Decimal::new(int, 0)
    }

    /// The integer part.
    pub fn truncate(self) -> Option<Self> {
        Decimal::new(self.split().0, 0)
    }

    /// Raises to a whole power exactly; None when it does not fit.
    pub fn checked_powi(self, exp: u32) -> Option<Self> {
        let mut result = Decimal::from_i64(1);
        for _ in 0..exp {
            result = result.checked_mul(self)?;
        }
        Some(result)
    }

    /// Equivalence (`~`): equal after rounding both to the smaller number of decimal places.
    pub fn equivalent(&self, other: &Self) -> bool {
        let a = self.trimmed();
        let b = other.trimmed();
        let digits = a.scale.min(b.scale);
        match (a.round(digits), b.round(digits)) {
            (Some(x), Some(y)) => x.cmp(&y) == Ordering::Equal,
            _ => false,
        }
    }
}

/// `numerator / denominator` rounded half away from zero.
fn round_half_up_div(numerator: i128, denominator: i128) -> Option<i128> {
    let q = numerator.checked_div(denominator)?;
    let r = numerator.checked_rem(denominator)?;
    if r == 0 {
        return Some(q);
    }
    // Compare 2|r| with |d| without overflow: |r| >= |d| - |r|.
    let r_abs = r.checked_abs()?;
    let d_abs = denominator.checked_abs()?;
    if r_abs >= d_abs - r_abs {
        let away = if (numerator < 0) == (denominator < 0) {
            1
        } else {
            -1
        };
        q.checked_add(away)
    } else {
        Some(q)
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        // Integer parts first, then the remainders at a common scale: both steps stay below
        // 10^38, so no alignment can overflow.
        let (ia, fa) = self.split();
        let (ib, fb) = other.split();
        match ia.cmp(&ib) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
        let scale = self.scale.max(other.scale);
        let fa = fa.saturating_mul(pow10(scale - self.scale).unwrap_or(i128::MAX));
        let fb = fb.saturating_mul(pow10(scale - other.scale).unwrap_or(i128::MAX));
        fa.cmp(&fb)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let negative = self.mantissa < 0;
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if negative {
            f.write_str("-")?;
        }
        if scale == 0 {
            return f.write_str(&digits);
        }
        if digits.len() <= scale {
            f.write_str("0.")?;
            for _ in 0..scale - digits.len() {
                f.write_str("0")?;
            }
            return f.write_str(&digits);
        }
        let (int, frac) = digits.split_at(digits.len() - scale);
        write!(f, "{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn parse_and_print_keep_the_scale() {
        assert_eq!(d("1.0").to_string(), "1.0");
        assert_eq!(d("-0.005").to_string(), "-0.005");
        assert_eq!(d("1e3").to_string(), "1000");
        assert_eq!(d("1.5E-2").to_string(), "0.015");
        assert_eq!(
            d("12345678901234567890.123456789").to_string(),
            "12345678901234567890.123456789"
        );
        assert!(Decimal::parse("1.2.3").is_none());
        assert!(Decimal::parse("").is_none());
        assert!(Decimal::parse("abc").is_none());
    }

    #[test]
    fn arithmetic_is_exact() {
        assert_eq!(d("0.1").checked_add(d("0.2")).unwrap(), d("0.3"));
        assert_eq!(d("1.5").checked_mul(d("2")).unwrap().to_string(), "3.0");
        assert_eq!(d("10").checked_div(d("4")).unwrap().to_string(), "2.5");
        assert_eq!(
            d("1").checked_div(d("3")).unwrap().to_string(),
            "0.33333333"
        );
        assert_eq!(
            d("2").checked_div(d("3")).unwrap().to_string(),
            "0.66666667"
        );
        assert!(d("1").checked_div(d("0")).is_none());
        assert_eq!(d("7.5").checked_div_trunc(d("2")).unwrap().to_string(), "3");
        assert_eq!(d("7.5").checked_rem(d("2")).unwrap().to_string(), "1.5");
        assert_eq!(d("-1.5").round(0).unwrap().to_string(), "-2");
        assert_eq!(d("3.14159").round(2).unwrap().to_string(), "3.14");
        assert_eq!(d("-1.1").floor().unwrap().to_string(), "-2");
        assert_eq!(d("-1.1").ceiling().unwrap().to_string(), "-1");
        assert_eq!(d("1.1").ceiling().unwrap().to_string(), "2");
    }

    #[test]
    fn comparison_ignores_scale() {
        assert_eq!(d("1.0"), d("1"));
        assert!(d("0.99999") < d("1"));
        assert!(d("-2") < d("-1.5"));
        assert!(
            d("100000000000000000000000000000000000.1")
                > d("0.00000000000000000000000000000000000001")
        );
        assert!(d("1.23").equivalent(&d("1.2")));
        assert!(!d("1.26").equivalent(&d("1.2")));
    }
}
