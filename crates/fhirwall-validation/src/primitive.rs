//! Lexical checks of FHIR primitive values (the regexes of datatypes.html, hand-written so nothing is compiled per call; dates and times are fhirwall-fhirpath's); it must not look at anything but the one value.

use serde_json::Value;

/// The longest string FHIR allows (datatypes.html: "< 1MB (1024*1024) characters").
pub(crate) const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Why a primitive value was refused: a rule id and the sentence tail that explains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FormatError {
    pub(crate) rule: &'static str,
    pub(crate) expected: &'static str,
}

const fn format_error(rule: &'static str, expected: &'static str) -> FormatError {
    FormatError { rule, expected }
}

/// What JSON type a primitive needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonKind {
    String,
    Number,
    Boolean,
}

/// The JSON type FHIR's JSON format uses for a primitive type.
pub(crate) fn json_kind(type_name: &str) -> JsonKind {
    match type_name {
        "boolean" => JsonKind::Boolean,
        "integer" | "positiveInt" | "unsignedInt" | "decimal" | "integer64" => JsonKind::Number,
        _ => JsonKind::String,
    }
}

/// Checks one primitive value of `type_name` whose JSON type is already known to be right.
pub(crate) fn check_primitive(type_name: &str, value: &Value) -> Result<(), FormatError> {
    match value {
        Value::String(text) => check_string_primitive(type_name, text),
        Value::Number(number) => check_number_primitive(type_name, number.as_str()),
        _ => Ok(()),
    }
}

fn check_number_primitive(type_name: &str, text: &str) -> Result<(), FormatError> {
    match type_name {
        "integer" => check_integer(text, i64::from(i32::MIN), "format-integer"),
        "positiveInt" => check_integer(text, 1, "format-positiveInt"),
        "unsignedInt" => check_integer(text, 0, "format-unsignedInt"),
        // serde_json only accepts numbers of JSON's grammar, which is the decimal regex of
        // FHIR; a very long mantissa is still a valid decimal.
        _ => Ok(()),
    }
}

fn check_integer(text: &str, minimum: i64, rule: &'static str) -> Result<(), FormatError> {
    let expected = match rule {
        "format-positiveInt" => "a whole number from 1 to 2147483647",
        "format-unsignedInt" => "a whole number from 0 to 2147483647",
        _ => "a whole number from -2147483648 to 2147483647",
    };
    // Only the digits of a whole number: `1.0` and `1e2` are decimals, not integers.
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format_error(rule, expected));
    }
    match text.parse::<i64>() {
        Ok(number) if number >= minimum && number <= i64::from(i32::MAX) => Ok(()),
        _ => Err(format_error(rule, expected)),
    }
}

fn check_string_primitive(type_name: &str, text: &str) -> Result<(), FormatError> {
    if text.is_empty() {
        return Err(format_error(
            "empty-string",
            "a value with at least one character (FHIR forbids empty strings)",
        ));
    }
    if type_name != "base64Binary" && type_name != "xhtml" && text.len() > MAX_STRING_BYTES {
        return Err(format_error("string-too-long", "at most 1 MiB of text"));
    }
    if type_name != "xhtml" && has_delete_character(text) {
        return Err(format_error(
            "string-control-characters",
            "text without control characters other than tab, carriage return and line feed",
        ));
    }
    match type_name {
        "code" => check_code(text),
        "id" => check_id(text),
        "uri" | "url" | "canonical" => check_uri(text),
        "oid" => check_oid(text),
        "uuid" => check_uuid(text),
        "base64Binary" => check_base64(text),
        "date" => check_date(text),
        "dateTime" => check_date_time(text),
        "instant" => check_instant(text),
        "time" => check_time(text),
        _ => Ok(()),
    }
}

/// DEL, a control character XML carries but no FHIR text needs. The control characters XML
/// cannot carry are refused before this, by [`has_character_xml_cannot_carry`].
fn has_delete_character(text: &str) -> bool {
    text.contains('\u{7f}')
}

/// Whether a string holds a character that no FHIR XML document can carry, so that every XML
/// answer including the value would fail: one XML 1.0's `Char` production leaves out (C0
/// controls other than TAB, LF and CR; U+FFFE and U+FFFF), or another of Unicode's
/// noncharacters (U+FDD0 to U+FDEF, and the last two code points of every plane), which are
/// never text to interchange. JSON can spell all of them as `\u` escapes, so they must be
/// refused on input, whatever the element's type.
pub(crate) fn has_character_xml_cannot_carry(text: &str) -> bool {
    text.chars().any(is_character_xml_cannot_carry)
}

fn is_character_xml_cannot_carry(c: char) -> bool {
    let code = u32::from(c);
    matches!(code, 0x0..=0x8 | 0xB | 0xC | 0xE..=0x1F | 0xFDD0..=0xFDEF) || code & 0xFFFE == 0xFFFE
}

/// `[^\s]+(\s[^\s]+)*`: no leading, trailing or doubled whitespace. `\s` is the whitespace
/// of XML Schema regexes (space, tab, CR, LF), the dialect the specification's regexes are
/// written in; a non-breaking space is an ordinary character there.
pub(crate) fn check_code(text: &str) -> Result<(), FormatError> {
    let mut previous_was_space = true;
    for c in text.chars() {
        let is_space = matches!(c, ' ' | '\t' | '\r' | '\n');
        if is_space && previous_was_space {
            return Err(format_error(
                "format-code",
                "a code without leading, trailing or repeated whitespace",
            ));
        }
        previous_was_space = is_space;
    }
    if previous_was_space {
        return Err(format_error(
            "format-code",
            "a code without leading, trailing or repeated whitespace",
        ));
    }
    Ok(())
}

/// `[A-Za-z0-9\-\.]{1,64}`.
pub(crate) fn is_valid_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub(crate) fn check_id(text: &str) -> Result<(), FormatError> {
    if is_valid_id(text) {
        Ok(())
    } else {
        Err(format_error(
            "format-id",
            "1 to 64 letters, digits, '-' or '.'",
        ))
    }
}

/// `\S*`: a URI has no whitespace.
fn check_uri(text: &str) -> Result<(), FormatError> {
    if text.chars().any(char::is_whitespace) {
        Err(format_error("format-uri", "a URI without whitespace"))
    } else {
        Ok(())
    }
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`.
pub(crate) fn is_valid_oid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut arcs = rest.split('.');
    match arcs.next() {
        Some("0" | "1" | "2") => {}
        _ => return false,
    }
    let mut count = 0;
    for arc in arcs {
        count += 1;
        let valid = arc == "0"
            || (!arc.is_empty()
                && !arc.starts_with('0')
                && arc.bytes().all(|b| b.is_ascii_digit()));
        if !valid {
            return false;
        }
    }
    count > 0
}

fn check_oid(text: &str) -> Result<(), FormatError> {
    if is_valid_oid(text) {
        Ok(())
    } else {
        Err(format_error(
            "format-oid",
            "urn:oid: followed by a dotted OID such as 1.2.3",
        ))
    }
}

/// `urn:uuid:` and a lower-case 8-4-4-4-12 hex UUID.
pub(crate) fn is_valid_uuid_urn(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:uuid:") else {
        return false;
    };
    let groups: [usize; 5] = [8, 4, 4, 4, 12];
    let mut parts = rest.split('-');
    for expected in groups {
        match parts.next() {
            Some(part)
                if part.len() == expected
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

fn check_uuid(text: &str) -> Result<(), FormatError> {
    if is_valid_uuid_urn(text) {
        Ok(())
    } else {
        Err(format_error(
            "format-uuid",
            "urn:uuid: followed by a lower-case UUID",
        ))
    }
}

/// Base64 with optional whitespace: groups of four alphabet characters, padding only at the end.
fn check_base64(text: &str) -> Result<(), FormatError> {
    let error = format_error(
        "format-base64Binary",
        "base64 text (A-Z, a-z, 0-9, '+', '/', padded with '=')",
    );
    let mut count = 0usize;
    let mut padding = 0usize;
    for b in text.bytes() {
        if b.is_ascii_whitespace() {
            continue;
        }
        if b == b'=' {
            padding += 1;
        } else if padding > 0 {
            // Data after padding.
            return Err(error);
        } else if !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/') {
            return Err(error);
        }
        count += 1;
    }
    if !count.is_multiple_of(4) || padding > 2 {
        return Err(error);
    }
    Ok(())
}

// The date and time forms are fhirwall-fhirpath's: FHIRPath reads the same values with the
// same grammar and calendar, and the two must never disagree on what a valid date is.

fn check_date(text: &str) -> Result<(), FormatError> {
    if fhirwall_fhirpath::is_fhir_date(text) {
        Ok(())
    } else {
        Err(format_error(
            "format-date",
            "YYYY, YYYY-MM or YYYY-MM-DD with a real month and day",
        ))
    }
}

fn check_date_time(text: &str) -> Result<(), FormatError> {
    if fhirwall_fhirpath::is_fhir_date_time(text) {
        Ok(())
    } else {
        Err(format_error(
            "format-dateTime",
            "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss) with a time zone (Z or +hh:mm)",
        ))
    }
}

fn check_instant(text: &str) -> Result<(), FormatError> {
    if fhirwall_fhirpath::is_fhir_instant(text) {
        Ok(())
    } else {
        Err(format_error(
            "format-instant",
            "YYYY-MM-DDThh:mm:ss(.sss) with a time zone (Z or +hh:mm)",
        ))
    }
}

fn check_time(text: &str) -> Result<(), FormatError> {
    if fhirwall_fhirpath::is_fhir_time(text) {
        Ok(())
    } else {
        Err(format_error(
            "format-time",
            "hh:mm:ss or hh:mm:ss.sss without a time zone",
        ))
    }
}

/// Whether a primitive type is written as text that holds a URI (for `#local` references).
pub(crate) fn is_uri_type(type_name: &str) -> bool {
    matches!(type_name, "uri" | "url" | "canonical" | "oid" | "uuid")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn ok(ty: &str, value: Value) -> bool {
        check_primitive(ty, &value).is_ok()
    }

    #[test]
    fn dates_follow_the_spec_regex_and_the_calendar() {
        for good in ["2020", "2020-02", "2020-02-29", "0001-01-01", "2000-02-29"] {
            assert!(ok("date", json!(good)), "{good}");
        }
        for bad in [
            "0000",
            "20",
            "2020-13",
            "2020-00",
            "2021-02-29",
            "2020-04-31",
            "2020-1-01",
            "2020-01-01T10:00:00Z",
            "1900-02-29",
            " 2020",
        ] {
            assert!(!ok("date", json!(bad)), "{bad}");
        }
    }

    #[test]
    fn date_times_need_a_zone_with_a_time() {
        for good in [
            "2015",
            "2015-02",
            "2015-02-07",
            "2015-02-07T13:28:17-05:00",
            "2015-02-07T13:28:17.239+02:00",
            "2017-01-01T00:00:00.000Z",
            "2015-02-07T23:59:60Z",
            "2015-02-07T13:28:17+14:00",
        ] {
            assert!(ok("dateTime", json!(good)), "{good}");
        }
        for bad in [
            "2015-02-07T13:28:17",
            "2015-02-07T13:28Z",
            "2015-02T13:28:17Z",
            "2015-02-07T24:00:00Z",
            "2015-02-07T13:28:17+14:30",
            "2015-02-07T13:28:17.Z",
            "2015-02-07 13:28:17Z",
        ] {
            assert!(!ok("dateTime", json!(bad)), "{bad}");
        }
    }

    #[test]
    fn instants_need_full_precision() {
        assert!(ok("instant", json!("2015-02-07T13:28:17.239+02:00")));
        assert!(!ok("instant", json!("2015-02-07")));
        assert!(!ok("instant", json!("2015-02-07T13:28:17")));
        assert!(ok("time", json!("13:28:17")));
        assert!(ok("time", json!("13:28:17.5")));
        assert!(!ok("time", json!("13:28")));
        assert!(!ok("time", json!("13:28:17Z")));
    }

    #[test]
    fn characters_xml_cannot_carry_are_found() {
        for refused in [
            '\u{0}',
            '\u{1}',
            '\u{8}',
            '\u{b}',
            '\u{c}',
            '\u{e}',
            '\u{1f}',
            '\u{fdd0}',
            '\u{fdef}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{1fffe}',
            '\u{1ffff}',
            '\u{10fffe}',
            '\u{10ffff}',
        ] {
            assert!(is_character_xml_cannot_carry(refused), "{refused:?}");
            assert!(has_character_xml_cannot_carry(&format!("a{refused}b")));
        }
        for carried in [
            '\t',
            '\n',
            '\r',
            ' ',
            '\u{7f}',
            '\u{85}',
            '\u{9f}',
            '\u{a0}',
            '\u{fdcf}',
            '\u{fdf0}',
            '\u{fffd}',
            '\u{10000}',
            '\u{1fffd}',
            '\u{10fffd}',
        ] {
            assert!(!is_character_xml_cannot_carry(carried), "{carried:?}");
        }
        assert!(!has_character_xml_cannot_carry(
            "tab\tline feed\ncarriage return\r"
        ));
    }

    #[test]
    fn integers_have_ranges() {
        assert!(ok("integer", json!(-2147483648i64)));
        assert!(!ok("integer", json!(2147483648i64)));
        assert!(!ok("integer", serde_json::from_str("1.0").unwrap()));
        assert!(!ok("integer", serde_json::from_str("1e2").unwrap()));
        assert!(ok("positiveInt", json!(1)));
        assert!(!ok("positiveInt", json!(0)));
        assert!(ok("unsignedInt", json!(0)));
        assert!(!ok("unsignedInt", json!(-1)));
        assert!(ok("decimal", serde_json::from_str("1.50").unwrap()));
    }

    #[test]
    fn strings_codes_ids_and_identifiers() {
        assert!(!ok("string", json!("")));
        assert!(!ok("string", json!("a\u{007f}b")));
        assert!(ok("string", json!("tab\tand\nnewline")));
        assert!(ok("code", json!("a b")));
        for bad in [" a", "a ", "a  b", "a\t b"] {
            assert!(!ok("code", json!(bad)), "{bad:?}");
        }
        assert!(ok("id", json!("a-B.9")));
        assert!(!ok("id", json!("a_b")));
        assert!(!ok("id", json!("x".repeat(65))));
        assert!(ok("oid", json!("urn:oid:1.2.840.10008")));
        assert!(!ok("oid", json!("urn:oid:3.1")));
        assert!(!ok("oid", json!("urn:oid:1.02")));
        assert!(!ok("oid", json!("urn:oid:1")));
        assert!(ok(
            "uuid",
            json!("urn:uuid:a76d9bbf-f293-4fb7-ad4c-2851cac77162")
        ));
        assert!(!ok(
            "uuid",
            json!("urn:uuid:A76D9BBF-F293-4FB7-AD4C-2851CAC77162")
        ));
        assert!(!ok("uri", json!("http://a b")));
        assert!(ok("base64Binary", json!("aGVs bG8=")));
        assert!(!ok("base64Binary", json!("aGVsbG8")));
        assert!(!ok("base64Binary", json!("aG=sbG8=")));
    }
}
