//! Content negotiation and the small header grammars: Accept, `_format`, Content-Type, Prefer; it must not parse or write bodies.

use http::HeaderMap;

use fhirwall_service::{ErrorKind, ServiceError};

pub(crate) const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub(crate) const FHIR_XML: &str = "application/fhir+xml; charset=utf-8";

/// Serializes a JSON tree; never fails for trees built from parsed JSON.
pub(crate) fn fhir_json_bytes(value: &serde_json::Value, pretty: bool) -> Vec<u8> {
    let result = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    result.unwrap_or_else(|_| b"{}".to_vec())
}

fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_json_type(mime: &str) -> bool {
    matches!(
        mime,
        "application/fhir+json"
            | "application/json"
            | "application/json+fhir"
            | "json"
            | "text/json"
    )
}

/// The wire format of a request or response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Xml,
}

fn is_xml_type(mime: &str) -> bool {
    matches!(
        mime,
        "application/fhir+xml" | "application/xml" | "application/xml+fhir" | "xml" | "text/xml"
    )
}

fn not_acceptable(message: &'static str) -> ServiceError {
    ServiceError::new(
        ErrorKind::NotAcceptable,
        fhirwall_model::IssueType::NotSupported,
        "format-not-supported",
        message,
    )
}

/// The q-value of one Accept member (1 when absent; 0 for anything unreadable).
fn quality(part: &str) -> f32 {
    for parameter in part.split(';').skip(1) {
        let parameter = parameter.trim();
        if let Some(q) = parameter
            .strip_prefix("q=")
            .or_else(|| parameter.strip_prefix("Q="))
        {
            return q
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(0.0);
        }
    }
    1.0
}

/// The response format, from `_format` (which wins) or Accept: FHIR JSON or FHIR XML, JSON
/// when the client does not mind. 406 when neither is acceptable.
pub(crate) fn response_format(
    headers: &HeaderMap,
    format: Option<&str>,
) -> Result<Format, ServiceError> {
    if let Some(format) = format {
        let mime = media_type(format);
        if is_json_type(&mime) {
            return Ok(Format::Json);
        }
        if is_xml_type(&mime) {
            return Ok(Format::Xml);
        }
        return Err(not_acceptable(
            "This server answers in FHIR JSON (_format=json) or FHIR XML (_format=xml).",
        ));
    }
    let mut best: Option<(f32, Format)> = None;
    let mut any_header = false;
    for value in headers.get_all(http::header::ACCEPT) {
        let accept = value.to_str().unwrap_or_default();
        for part in accept.split(',') {
            if part.trim().is_empty() {
                continue;
            }
            any_header = true;
            let mime = media_type(part);
            let candidate = if is_json_type(&mime) || mime == "*/*" || mime == "application/*" {
                Format::Json
            } else if is_xml_type(&mime) {
                Format::Xml
            } else {
                continue;
            };
            let q = quality(part);
            if q <= 0.0 {
                continue;
            }
            // Equal weights keep the earlier member, as listed by the client.
            if best.is_none_or(|(best_q, _)| q > best_q) {
                best = Some((q, candidate));
            }
        }
    }
    match best {
        Some((_, format)) => Ok(format),
        None if !any_header => Ok(Format::Json),
        None => Err(not_acceptable(
            "This server answers in application/fhir+json or application/fhir+xml.",
        )),
    }
}

/// A client that states no preference (no `_format`, no Accept or only `*/*`) gets the format
/// it wrote its body in, as HAPI and others answer: an XML client gets XML back.
pub(crate) fn default_to_body_format(
    headers: &HeaderMap,
    format_param: Option<&str>,
    negotiated: Format,
) -> Format {
    if format_param.is_some() {
        return negotiated;
    }
    let states_preference = headers.get_all(http::header::ACCEPT).iter().any(|value| {
        value.to_str().is_ok_and(|accept| {
            accept
                .split(',')
                .map(media_type)
                .any(|mime| !mime.is_empty() && mime != "*/*")
        })
    });
    if states_preference {
        return negotiated;
    }
    match headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type)
    {
        Some(mime) if is_xml_type(&mime) => Format::Xml,
        _ => negotiated,
    }
}

/// Whether the request body is a JSON Patch document (by its media type).
pub(crate) fn is_json_patch(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type)
        .is_some_and(|mime| mime == "application/json-patch+json")
}

/// The body of a write must be FHIR JSON or FHIR XML (for PATCH also a JSON Patch; a PATCH in
/// FHIR JSON or XML is a FHIRPath Patch). 415 otherwise. Returns the body's format.
pub(crate) fn check_content_type(headers: &HeaderMap, patch: bool) -> Result<Format, ServiceError> {
    let mime = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type)
        .unwrap_or_default();
    if patch && mime == "application/json-patch+json" {
        return Ok(Format::Json);
    }
    if matches!(
        mime.as_str(),
        "application/fhir+json" | "application/json" | "application/json+fhir"
    ) {
        return Ok(Format::Json);
    } else if matches!(
        mime.as_str(),
        "application/fhir+xml" | "application/xml" | "application/xml+fhir" | "text/xml"
    ) {
        return Ok(Format::Xml);
    }
    let expected = if patch {
        "application/json-patch+json (JSON Patch), or application/fhir+json or application/fhir+xml (a FHIRPath Patch Parameters resource)"
    } else {
        "application/fhir+json or application/fhir+xml"
    };
    Err(ServiceError::new(
        ErrorKind::UnsupportedMediaType,
        fhirwall_model::IssueType::NotSupported,
        "unsupported-media-type",
        format!("The request body must be {expected}."),
    ))
}

/// What the client asked to get back from a write (`Prefer: return=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

pub(crate) fn return_preference(headers: &HeaderMap) -> ReturnPreference {
    for value in headers.get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split([',', ';']) {
            match part.trim().to_ascii_lowercase().as_str() {
                "return=minimal" => return ReturnPreference::Minimal,
                "return=representation" => return ReturnPreference::Representation,
                "return=operationoutcome" => return ReturnPreference::OperationOutcome,
                _ => {}
            }
        }
    }
    ReturnPreference::Representation
}

/// Whether the client stated `Prefer: return=` at all.
pub(crate) fn states_return_preference(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split([',', ';'])
                .any(|part| part.trim().to_ascii_lowercase().starts_with("return="))
        })
    })
}

/// `Prefer: handling=strict`: refuse unsupported search parameters instead of ignoring them.
pub(crate) fn prefers_strict_handling(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split([',', ';'])
                .any(|part| part.trim().eq_ignore_ascii_case("handling=strict"))
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, http::HeaderValue::from_static(value));
        h
    }

    #[test]
    fn accept() {
        let format = |h: &HeaderMap, f| response_format(h, f).ok();
        assert_eq!(format(&HeaderMap::new(), None), Some(Format::Json));
        assert_eq!(
            format(&headers("accept", "application/fhir+json"), None),
            Some(Format::Json)
        );
        assert_eq!(
            format(&headers("accept", "text/html, */*;q=0.8"), None),
            Some(Format::Json)
        );
        assert_eq!(
            format(&headers("accept", "application/fhir+xml"), None),
            Some(Format::Xml)
        );
        assert_eq!(
            format(
                &headers(
                    "accept",
                    "application/fhir+json;q=0.5, application/fhir+xml"
                ),
                None
            ),
            Some(Format::Xml)
        );
        assert_eq!(
            format(
                &headers("accept", "application/fhir+xml, application/fhir+json"),
                None
            ),
            Some(Format::Xml)
        );
        assert_eq!(
            format(&headers("accept", "application/fhir+xml;q=0"), None),
            None
        );
        assert_eq!(format(&headers("accept", "text/html"), None), None);
        assert_eq!(format(&HeaderMap::new(), Some("xml")), Some(Format::Xml));
        assert_eq!(
            format(&HeaderMap::new(), Some("application/fhir+xml")),
            Some(Format::Xml)
        );
        assert_eq!(format(&HeaderMap::new(), Some("turtle")), None);
        assert_eq!(
            format(&headers("accept", "application/fhir+xml"), Some("json")),
            Some(Format::Json)
        );
    }

    #[test]
    fn no_preference_answers_in_the_body_format() {
        let mut h = headers("content-type", "application/fhir+xml");
        assert_eq!(default_to_body_format(&h, None, Format::Json), Format::Xml);
        assert_eq!(
            default_to_body_format(&h, Some("json"), Format::Json),
            Format::Json
        );
        h.insert("accept", http::HeaderValue::from_static("*/*"));
        assert_eq!(default_to_body_format(&h, None, Format::Json), Format::Xml);
        h.insert(
            "accept",
            http::HeaderValue::from_static("application/fhir+json"),
        );
        assert_eq!(default_to_body_format(&h, None, Format::Json), Format::Json);
        let h = headers("content-type", "application/fhir+json");
        assert_eq!(default_to_body_format(&h, None, Format::Json), Format::Json);
    }

    #[test]
    fn content_type() {
        assert_eq!(
            check_content_type(
                &headers("content-type", "application/fhir+xml;charset=utf-8"),
                false
            )
            .ok(),
            Some(Format::Xml)
        );
        assert_eq!(
            check_content_type(&headers("content-type", "application/fhir+json"), false).ok(),
            Some(Format::Json)
        );
        assert!(check_content_type(&headers("content-type", "text/plain"), false).is_err());
        // A PATCH in FHIR JSON or XML is a FHIRPath Patch; JSON Patch has its own type.
        assert_eq!(
            check_content_type(&headers("content-type", "application/fhir+xml"), true).ok(),
            Some(Format::Xml)
        );
        assert_eq!(
            check_content_type(
                &headers("content-type", "application/json-patch+json"),
                true
            )
            .ok(),
            Some(Format::Json)
        );
        assert!(check_content_type(&headers("content-type", "text/plain"), true).is_err());
        assert!(
            check_content_type(
                &headers("content-type", "application/json-patch+json"),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn prefer() {
        assert_eq!(
            return_preference(&headers("prefer", "return=minimal")),
            ReturnPreference::Minimal
        );
        assert_eq!(
            return_preference(&headers("prefer", "return=OperationOutcome")),
            ReturnPreference::OperationOutcome
        );
        assert_eq!(
            return_preference(&HeaderMap::new()),
            ReturnPreference::Representation
        );
    }
}
