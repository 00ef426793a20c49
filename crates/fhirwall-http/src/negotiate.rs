//! Content negotiation and the small header grammars: Accept, `_format`, Content-Type, Prefer.

use http::HeaderMap;

use crate::error::ApiError;

pub(crate) const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

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

/// Checks that the response can be JSON, from `_format` (which wins) or Accept. 406 otherwise.
pub(crate) fn check_accept(headers: &HeaderMap, format: Option<&str>) -> Result<(), ApiError> {
    if let Some(format) = format {
        let mime = media_type(format);
        if is_json_type(&mime) {
            return Ok(());
        }
        return Err(ApiError::new(
            http::StatusCode::NOT_ACCEPTABLE,
            fhirwall_model::IssueType::NotSupported,
            "format-not-supported",
            "This server answers in application/fhir+json only (_format=json).",
        ));
    }
    let Some(accept) = headers.get(http::header::ACCEPT) else {
        return Ok(());
    };
    let accept = accept.to_str().unwrap_or_default();
    if accept.trim().is_empty() {
        return Ok(());
    }
    let acceptable = accept.split(',').any(|part| {
        let mime = media_type(part);
        let refused = part
            .split(';')
            .skip(1)
            .any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
        !refused && (is_json_type(&mime) || mime == "*/*" || mime == "application/*")
    });
    if acceptable {
        Ok(())
    } else {
        Err(ApiError::new(
            http::StatusCode::NOT_ACCEPTABLE,
            fhirwall_model::IssueType::NotSupported,
            "format-not-supported",
            "This server answers in application/fhir+json only.",
        ))
    }
}

/// The body of a write must be FHIR JSON (or, for PATCH, a JSON Patch). 415 otherwise.
pub(crate) fn check_content_type(headers: &HeaderMap, patch: bool) -> Result<(), ApiError> {
    let mime = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type)
        .unwrap_or_default();
    let ok = if patch {
        mime == "application/json-patch+json"
    } else {
        matches!(
            mime.as_str(),
            "application/fhir+json" | "application/json" | "application/json+fhir"
        )
    };
    if ok {
        Ok(())
    } else {
        let expected = if patch {
            "application/json-patch+json"
        } else {
            "application/fhir+json"
        };
        Err(ApiError::new(
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            fhirwall_model::IssueType::NotSupported,
            "unsupported-media-type",
            format!("The request body must be {expected}."),
        ))
    }
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
        assert!(check_accept(&HeaderMap::new(), None).is_ok());
        assert!(check_accept(&headers("accept", "application/fhir+json"), None).is_ok());
        assert!(check_accept(&headers("accept", "text/html, */*;q=0.8"), None).is_ok());
        assert!(check_accept(&headers("accept", "application/fhir+xml"), None).is_err());
        assert!(check_accept(&HeaderMap::new(), Some("xml")).is_err());
        assert!(check_accept(&headers("accept", "application/fhir+xml"), Some("json")).is_ok());
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
