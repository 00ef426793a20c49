//! Values as search sees them: strings normalised (case, accents, spaces), FHIR dates as
//! ranges of instants at their precision, numbers and quantities (with the common UCUM units
//! converted to one canonical unit), tokens and references, taken from the nodes a
//! parameter's expression selects.

use serde_json::Value;

/// Lower case, Latin accents folded, runs of whitespace and punctuation as one space, trimmed.
pub(crate) fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        let folded = fold(c);
        for f in folded.chars() {
            if f.is_alphanumeric() {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.extend(f.to_lowercase());
            } else {
                space = true;
            }
        }
    }
    out
}

/// The letter without its accent, for the Latin letters names use.
fn fold(c: char) -> std::borrow::Cow<'static, str> {
    let s = match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' | 'Ā' | 'Ă' | 'Ą' => "a",
        'æ' | 'Æ' => "ae",
        'ç' | 'ć' | 'č' | 'ĉ' | 'ċ' | 'Ç' | 'Ć' | 'Č' | 'Ĉ' | 'Ċ' => "c",
        'ď' | 'đ' | 'Ď' | 'Đ' | 'ð' | 'Ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'È' | 'É' | 'Ê' | 'Ë' | 'Ē' | 'Ĕ' | 'Ė' | 'Ę' | 'Ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' | 'Ĝ' | 'Ğ' | 'Ġ' | 'Ģ' => "g",
        'ĥ' | 'ħ' | 'Ĥ' | 'Ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'Ì' | 'Í' | 'Î' | 'Ï' | 'Ĩ' | 'Ī' | 'Ĭ' | 'Į' | 'İ' => "i",
        'ĵ' | 'Ĵ' => "j",
        'ķ' | 'Ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' | 'Ĺ' | 'Ļ' | 'Ľ' | 'Ŀ' | 'Ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'Ñ' | 'Ń' | 'Ņ' | 'Ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' | 'Ō' | 'Ŏ' | 'Ő' => "o",
        'œ' | 'Œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' | 'Ŕ' | 'Ŗ' | 'Ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'Ś' | 'Ŝ' | 'Ş' | 'Š' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' | 'Ţ' | 'Ť' | 'Ŧ' => "t",
        'þ' | 'Þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'Ù' | 'Ú' | 'Û' | 'Ü' | 'Ũ' | 'Ū' | 'Ŭ' | 'Ů' | 'Ű' | 'Ų' => "u",
        'ŵ' | 'Ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' | 'Ý' | 'Ÿ' | 'Ŷ' => "y",
        'ź' | 'ż' | 'ž' | 'Ź' | 'Ż' | 'Ž' => "z",
        other => return std::borrow::Cow::Owned(other.to_string()),
    };
    std::borrow::Cow::Borrowed(s)
}

/// American Soundex of a word (letters only), for `phonetic`.
pub(crate) fn soundex(word: &str) -> Option<String> {
    let letters: Vec<char> = normalize(word)
        .chars()
        .filter(char::is_ascii_alphabetic)
        .collect();
    let first = *letters.first()?;
    let code = |c: char| match c {
        'b' | 'f' | 'p' | 'v' => '1',
        'c' | 'g' | 'j' | 'k' | 'q' | 's' | 'x' | 'z' => '2',
        'd' | 't' => '3',
        'l' => '4',
        'm' | 'n' => '5',
        'r' => '6',
        'h' | 'w' => 'h',
        _ => '0',
    };
    let mut out = String::new();
    out.push(first.to_ascii_uppercase());
    let mut last = code(first);
    for &c in letters.iter().skip(1) {
        let d = code(c);
        if d == 'h' {
            continue;
        }
        if d != '0' && d != last {
            out.push(d);
        }
        last = d;
        if out.len() == 4 {
            break;
        }
    }
    while out.len() < 4 {
        out.push('0');
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Dates

/// Milliseconds since 1970 (UTC), both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub low: i64,
    pub high: i64,
}

pub(crate) const MIN_MS: i64 = -62_135_596_800_000; // 0001-01-01
pub(crate) const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The range a FHIR date, dateTime or instant stands for, at its precision (`1980` is the
/// whole year). A time without a zone is read as UTC.
pub(crate) fn date_range(text: &str) -> Option<Range> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year = parts.next().filter(|y| y.len() == 4).and_then(digits)?;
    let month = parts.next().map(|m| digits(m).filter(|_| m.len() == 2));
    let day = parts.next().map(|d| digits(d).filter(|_| d.len() == 2));
    if parts.next().is_some() || !(1..=9999).contains(&year) {
        return None;
    }
    let month = match month {
        None => None,
        Some(Some(m)) if (1..=12).contains(&m) => Some(m),
        Some(_) => return None,
    };
    let day = match (month, day) {
        (_, None) => None,
        (Some(m), Some(Some(d))) if d >= 1 && d <= days_in_month(year, m) => Some(d),
        _ => return None,
    };
    let (first_day, last_day) = match (month, day) {
        (None, _) => (
            days_from_civil(year, 1, 1),
            days_from_civil(year + 1, 1, 1) - 1,
        ),
        (Some(m), None) => {
            let first = days_from_civil(year, m, 1);
            (first, first + days_in_month(year, m) - 1)
        }
        (Some(m), Some(d)) => {
            let day = days_from_civil(year, m, d);
            (day, day)
        }
    };
    let Some(time) = time else {
        return Some(Range {
            low: first_day * DAY_MS,
            high: (last_day + 1) * DAY_MS - 1,
        });
    };
    day?;
    // hh:mm[:ss[.fff]][Z|+hh:mm|-hh:mm]
    let (clock, offset_ms) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(pos) = time.rfind(['+', '-']).filter(|&p| p >= 5) {
        let (c, zone) = time.split_at(pos);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone.get(1..)?.split_once(':')?;
        let (h, m) = (digits(h)?, digits(m)?);
        (c, sign * (h * 3_600_000 + m * 60_000))
    } else {
        (time, 0)
    };
    let mut fields = clock.split(':');
    let hour = fields.next().and_then(digits).filter(|h| *h < 24)?;
    let minute = fields.next().and_then(digits).filter(|m| *m < 60)?;
    let (second, fraction, precision_ms) = match fields.next() {
        None => (0, 0, 60_000),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let s = digits(whole).filter(|s| *s < 61)?;
            if frac.is_empty() {
                (s, 0, 1_000)
            } else {
                let f = digits(frac)?;
                let len = u32::try_from(frac.len()).ok()?;
                let ms = if len >= 3 {
                    f / 10_i64.checked_pow(len - 3)?
                } else {
                    f * 10_i64.pow(3 - len)
                };
                (s, ms, 1)
            }
        }
    };
    let start = first_day * DAY_MS + hour * 3_600_000 + minute * 60_000 + second * 1000 + fraction
        - offset_ms;
    Some(Range {
        low: start,
        high: start + precision_ms - 1,
    })
}

// ---------------------------------------------------------------------------------------
// Numbers and units

/// A number with the range its written precision implies (`100` is [99.5, 100.5)).
pub(crate) fn number_range(text: &str) -> Option<(f64, f64, f64)> {
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() || text.contains(['x', 'X', 'i', 'I', 'n', 'N']) {
        return None;
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let exponent: i32 = match text.split_once(['e', 'E']) {
        Some((_, e)) => e.parse().ok()?,
        None => 0,
    };
    let decimals = mantissa
        .split_once('.')
        .map_or(0, |(_, f)| i32::try_from(f.len()).unwrap_or(0));
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Some((value, value - half, value + half))
}

/// A UCUM unit expressed in its canonical unit: (canonical code, factor, offset), so that
/// `canonical = value * factor + offset`.
pub(crate) fn ucum_canonical(code: &str) -> Option<(String, f64, f64)> {
    fn atom(unit: &str) -> Option<(&'static str, f64, f64)> {
        Some(match unit {
            "g" => ("g", 1.0, 0.0),
            "mg" => ("g", 1e-3, 0.0),
            "ug" | "mcg" => ("g", 1e-6, 0.0),
            "ng" => ("g", 1e-9, 0.0),
            "kg" => ("g", 1e3, 0.0),
            "[lb_av]" => ("g", 453.592_37, 0.0),
            "[oz_av]" => ("g", 28.349_523_125, 0.0),
            "m" => ("m", 1.0, 0.0),
            "cm" => ("m", 1e-2, 0.0),
            "mm" => ("m", 1e-3, 0.0),
            "km" => ("m", 1e3, 0.0),
            "[in_i]" => ("m", 0.0254, 0.0),
            "[ft_i]" => ("m", 0.3048, 0.0),
            "L" | "l" => ("L", 1.0, 0.0),
            "dL" | "dl" => ("L", 1e-1, 0.0),
            "mL" | "ml" => ("L", 1e-3, 0.0),
            "uL" | "ul" => ("L", 1e-6, 0.0),
            "s" => ("s", 1.0, 0.0),
            "ms" => ("s", 1e-3, 0.0),
            "min" => ("s", 60.0, 0.0),
            "h" => ("s", 3600.0, 0.0),
            "d" => ("s", 86_400.0, 0.0),
            "wk" => ("s", 604_800.0, 0.0),
            "mo" => ("s", 2_629_800.0, 0.0),
            "a" => ("s", 31_557_600.0, 0.0),
            "K" => ("K", 1.0, 0.0),
            "Cel" => ("K", 1.0, 273.15),
            "[degF]" => ("K", 5.0 / 9.0, 255.372_222_222),
            "mm[Hg]" => ("mm[Hg]", 1.0, 0.0),
            "kPa" => ("mm[Hg]", 7.500_615_75, 0.0),
            "%" => ("%", 1.0, 0.0),
            "mol" => ("mol", 1.0, 0.0),
            "mmol" => ("mol", 1e-3, 0.0),
            "umol" => ("mol", 1e-6, 0.0),
            "1" => ("1", 1.0, 0.0),
            "{beats}" | "{beat}" | "/min" => return None,
            _ => return None,
        })
    }
    if let Some(found) = atom(code) {
        return Some((found.0.to_string(), found.1, found.2));
    }
    // a/b with both parts convertible (no offsets): mg/dL, mmol/L, /min, {beats}/min.
    let (num, den) = code.split_once('/')?;
    if den.contains('/') {
        return None;
    }
    let (n_unit, n_factor) = if num.is_empty() || num.starts_with('{') {
        ("1".to_string(), 1.0)
    } else {
        let (u, f, o) = atom(num)?;
        if o != 0.0 {
            return None;
        }
        (u.to_string(), f)
    };
    let (d_unit, d_factor, d_offset) = atom(den)?;
    if d_offset != 0.0 {
        return None;
    }
    Some((format!("{n_unit}/{d_unit}"), n_factor / d_factor, 0.0))
}

/// The decimal exponent bucket of a number (its magnitude), for coarse keys.
pub(crate) fn magnitude(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return "0".into();
    }
    let sign = if value < 0.0 { "-" } else { "+" };
    let e = value.abs().log10().floor() as i64;
    format!("{sign}{e}")
}

// ---------------------------------------------------------------------------------------
// Element values

/// A token: a code with its system, the texts that describe it, and for identifiers the type.
#[derive(Debug, Clone, Default)]
pub(crate) struct Token {
    pub system: Option<String>,
    pub code: String,
    /// A `code` element: its system is the one its binding implies, which the element does not
    /// say; a query's `system|code` matches it by code.
    pub implicit: bool,
    pub texts: Vec<String>,
    /// Identifier.type codings (system, code).
    pub types: Vec<(Option<String>, String)>,
}

fn text_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn coding_token(coding: &Value, extra_text: Option<&str>) -> Option<Token> {
    let code = text_of(coding, "code")?;
    let mut texts = Vec::new();
    if let Some(display) = text_of(coding, "display") {
        texts.push(display.to_string());
    }
    if let Some(t) = extra_text {
        texts.push(t.to_string());
    }
    Some(Token {
        system: text_of(coding, "system").map(str::to_string),
        code: code.to_string(),
        texts,
        ..Token::default()
    })
}

/// The tokens of a node of type `type_name`.
pub(crate) fn tokens(type_name: &str, value: &Value) -> Vec<Token> {
    match (type_name, value) {
        ("Coding", _) => coding_token(value, None).into_iter().collect(),
        ("CodeableConcept", _) => {
            let text = text_of(value, "text");
            let mut out: Vec<Token> = value
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| coding_token(c, text))
                .collect();
            if out.is_empty()
                && let Some(t) = text
            {
                // A concept known by its text alone is found by :text only.
                out.push(Token {
                    code: String::new(),
                    texts: vec![t.to_string()],
                    ..Token::default()
                });
            }
            out
        }
        ("Identifier", _) => {
            let Some(v) = text_of(value, "value") else {
                return Vec::new();
            };
            let ty = value.get("type");
            let mut texts = Vec::new();
            if let Some(t) = ty.and_then(|t| text_of(t, "text")) {
                texts.push(t.to_string());
            }
            let types = ty
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        text_of(c, "system").map(str::to_string),
                        text_of(c, "code")?.to_string(),
                    ))
                })
                .collect();
            vec![Token {
                system: text_of(value, "system").map(str::to_string),
                code: v.to_string(),
                texts,
                types,
                ..Token::default()
            }]
        }
        ("ContactPoint", _) => text_of(value, "value")
            .map(|v| Token {
                system: None,
                code: v.to_string(),
                ..Token::default()
            })
            .into_iter()
            .collect(),
        (_, Value::String(s)) => vec![Token {
            system: None,
            code: s.clone(),
            implicit: type_name == "code",
            ..Token::default()
        }],
        (_, Value::Bool(b)) => vec![Token {
            code: b.to_string(),
            implicit: true,
            ..Token::default()
        }],
        (_, Value::Number(n)) => vec![Token {
            code: n.to_string(),
            ..Token::default()
        }],
        _ => Vec::new(),
    }
}

/// The strings of a node: (part, text) with the part of a HumanName or Address it is
/// (`family`, `city`...) or `""` for a plain string.
pub(crate) fn strings(type_name: &str, value: &Value) -> Vec<(&'static str, String)> {
    let parts: &[&'static str] = match type_name {
        "HumanName" => &["family", "given", "prefix", "suffix", "text"],
        "Address" => &[
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ],
        _ => {
            return match value {
                Value::String(s) => vec![("", s.clone())],
                _ => Vec::new(),
            };
        }
    };
    let mut out = Vec::new();
    for part in parts {
        match value.get(*part) {
            Some(Value::String(s)) => out.push((*part, s.clone())),
            Some(Value::Array(items)) => {
                for item in items {
                    if let Value::String(s) = item {
                        out.push((*part, s.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The date ranges of a node: date, dateTime, instant, Period, Timing events.
pub(crate) fn dates(type_name: &str, value: &Value) -> Vec<Range> {
    match (type_name, value) {
        ("Period", _) => {
            let start = text_of(value, "start").and_then(date_range);
            let end = text_of(value, "end").and_then(date_range);
            if start.is_none() && end.is_none() {
                return Vec::new();
            }
            vec![Range {
                low: start.map_or(MIN_MS, |r| r.low),
                high: end.map_or(MAX_MS, |r| r.high),
            }]
        }
        ("Timing", _) => value
            .get("event")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(date_range)
            .collect(),
        (_, Value::String(s)) => date_range(s).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// A quantity's value range, its units, and its value in the canonical unit when it has one.
#[derive(Debug, Clone)]
pub(crate) struct QuantityValue {
    pub low: f64,
    pub high: f64,
    pub system: Option<String>,
    pub code: Option<String>,
    pub unit: Option<String>,
    pub canonical: Option<(String, f64, f64)>,
}

fn json_number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

pub(crate) fn quantities(type_name: &str, value: &Value) -> Vec<QuantityValue> {
    let one = |q: &Value, low: f64, high: f64| {
        let system = text_of(q, "system").map(str::to_string);
        let code = text_of(q, "code").map(str::to_string);
        let canonical = if system.as_deref() == Some("http://unitsofmeasure.org") {
            code.as_deref().and_then(ucum_canonical).map(|(u, f, o)| {
                let a = low * f + o;
                let b = high * f + o;
                (u, a.min(b), a.max(b))
            })
        } else {
            None
        };
        QuantityValue {
            low,
            high,
            system,
            code,
            unit: text_of(q, "unit").map(str::to_string),
            canonical,
        }
    };
    match type_name {
        "Range" => {
            let low = value.get("low");
            let high = value.get("high");
            let l = json_number(low.and_then(|q| q.get("value")));
            let h = json_number(high.and_then(|q| q.get("value")));
            if l.is_none() && h.is_none() {
                return Vec::new();
            }
            let units = low.or(high).unwrap_or(value);
            vec![one(
                units,
                l.unwrap_or(f64::NEG_INFINITY),
                h.unwrap_or(f64::INFINITY),
            )]
        }
        _ => match json_number(value.get("value")) {
            Some(v) => vec![one(value, v, v)],
            None => match value {
                Value::Number(n) => n
                    .as_f64()
                    .map(|v| QuantityValue {
                        low: v,
                        high: v,
                        system: None,
                        code: None,
                        unit: None,
                        canonical: None,
                    })
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            },
        },
    }
}

/// A reference as search keys it: `Type/id` for a resource of this server, the URL for one
/// elsewhere (or a canonical), and the identifier of a logical reference.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReferenceValue {
    pub local: Option<(String, String)>,
    pub url: Option<String>,
    pub identifier: Option<(Option<String>, String)>,
}

pub(crate) fn local_of(text: &str, base_url: &str) -> Option<(String, String)> {
    let rest = if let Some(r) = (!base_url.is_empty())
        .then(|| text.strip_prefix(base_url))
        .flatten()
        .and_then(|r| r.strip_prefix('/'))
    {
        r
    } else if text.contains("://") || text.starts_with('#') || text.starts_with("urn:") {
        return None;
    } else {
        text
    };
    let mut parts = rest.split('/');
    let (t, id) = (parts.next()?, parts.next()?);
    if !matches!(parts.next(), None | Some("_history")) {
        return None;
    }
    let is_type = t.chars().next().is_some_and(char::is_uppercase)
        && t.chars().all(|c| c.is_ascii_alphanumeric());
    let is_id = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (is_type && is_id).then(|| (t.to_string(), id.to_string()))
}

pub(crate) fn references(type_name: &str, value: &Value, base_url: &str) -> Vec<ReferenceValue> {
    match (type_name, value) {
        ("Reference", _) => {
            let mut out = ReferenceValue::default();
            if let Some(r) = text_of(value, "reference") {
                out.local = local_of(r, base_url);
                if out.local.is_none() && r.contains("://") {
                    out.url = Some(r.to_string());
                }
            }
            if let Some(i) = value.get("identifier")
                && let Some(v) = text_of(i, "value")
            {
                out.identifier = Some((text_of(i, "system").map(str::to_string), v.to_string()));
            }
            vec![out]
        }
        (_, Value::String(s)) => {
            // canonical or uri used as a reference
            vec![ReferenceValue {
                local: local_of(s, base_url),
                url: Some(s.clone()),
                identifier: None,
            }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn strings_fold_case_and_accents() {
        assert_eq!(normalize("  Müller-Lüdenscheidt "), "muller ludenscheidt");
        assert_eq!(normalize("ÉLODIE"), "elodie");
        assert_eq!(soundex("Robert").unwrap(), "R163");
        assert_eq!(soundex("Rupert").unwrap(), "R163");
        assert_eq!(soundex("Tymczak").unwrap(), "T522");
    }

    #[test]
    fn dates_are_ranges_at_their_precision() {
        let year = date_range("1974").unwrap();
        assert_eq!(year.low, days_from_civil(1974, 1, 1) * DAY_MS);
        assert_eq!(year.high, days_from_civil(1975, 1, 1) * DAY_MS - 1);
        let day = date_range("1974-12-25").unwrap();
        assert_eq!(day.high - day.low, DAY_MS - 1);
        let t = date_range("2024-05-01T10:00:00+02:00").unwrap();
        assert_eq!(t.low, date_range("2024-05-01T08:00:00Z").unwrap().low);
        assert_eq!(t.high - t.low, 999);
        assert!(date_range("2024-02-30").is_none());
        assert!(date_range("yesterday").is_none());
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn numbers_carry_their_precision_and_units_convert() {
        let (v, lo, hi) = number_range("100").unwrap();
        assert_eq!((v, lo, hi), (100.0, 99.5, 100.5));
        let (_, lo, hi) = number_range("5.40").unwrap();
        assert!((lo - 5.395).abs() < 1e-9 && (hi - 5.405).abs() < 1e-9);
        let (u, f, _) = ucum_canonical("mg").unwrap();
        assert_eq!((u.as_str(), f), ("g", 1e-3));
        let (u, f, _) = ucum_canonical("mg/dL").unwrap();
        assert_eq!(u, "g/L");
        assert!((f - 1e-2).abs() < 1e-12);
    }
}
