//! FHIR XML at the edge: XML request bodies become the JSON tree the server works on, and JSON answers become XML when the client asked for it; it must not interpret resources beyond that.
//!
//! The store keeps JSON only. Converting at the edge keeps one representation inside (one
//! validator, one index, one audit shape) and makes every interaction, error answers and
//! Bundles included, speak XML the same way.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use fhirwall_definitions::Definitions;
use fhirwall_model::IssueType;
use http::{HeaderValue, header};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::Limits;
use crate::negotiate::{self, Format};
use fhirwall_service::{ErrorKind, ServiceError};

/// Parses a FHIR XML body (DTDs refused, size and depth limited) into FHIR JSON.
pub(crate) fn parse_xml(bytes: &[u8], limits: &Limits) -> Result<Value, ServiceError> {
    if bytes.is_empty() {
        return Err(ServiceError::invalid(
            "empty-body",
            "The request has no body.",
        ));
    }
    let xml_limits = fhirwall_xml::XmlLimits {
        max_bytes: limits.max_body_bytes,
        max_depth: limits.max_json_depth,
        ..fhirwall_xml::XmlLimits::default()
    };
    fhirwall_xml::xml_to_json(bytes, Definitions::core(), &xml_limits).map_err(|error| {
        let mut api = ServiceError::new(
            ErrorKind::Invalid,
            IssueType::Structure,
            "invalid-xml",
            format!("The XML body is not a valid FHIR resource: {error}"),
        );
        if let Some(expression) = error.expression() {
            api = api.with_expression(expression);
        }
        api
    })
}

/// Serializes a FHIR JSON tree as FHIR XML bytes.
pub(crate) fn xml_bytes(value: &Value, pretty: bool) -> Result<Vec<u8>, ServiceError> {
    fhirwall_xml::json_to_xml(value, Definitions::core(), pretty)
        .map(String::into_bytes)
        .map_err(|error| {
            // Stored content the XML writer cannot express is our defect, not the client's.
            tracing::error!(error = %error, "a JSON answer could not be written as XML");
            ServiceError::internal()
        })
}

/// Rewrites a FHIR JSON answer as FHIR XML when `format` is XML; anything else passes through.
pub(crate) async fn into_format(
    response: Response,
    format: Format,
    pretty: bool,
    request_id: &str,
) -> Response {
    if format == Format::Json {
        return response;
    }
    let is_fhir_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/fhir+json"));
    if !is_fhir_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let converted = match body.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            if bytes.is_empty() {
                return Response::from_parts(parts, Body::empty());
            }
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|_| ServiceError::internal())
                .and_then(|value| xml_bytes(&value, pretty))
        }
        Err(_) => Err(ServiceError::internal()),
    };
    match converted {
        Ok(xml) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(negotiate::FHIR_XML),
            );
            Response::from_parts(parts, Body::from(xml))
        }
        Err(error) => {
            let outcome = error.outcome.to_json(request_id);
            match xml_bytes(&outcome, pretty) {
                Ok(xml) => {
                    let mut response = (crate::error::status_of(&error), xml).into_response();
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(negotiate::FHIR_XML),
                    );
                    response
                }
                Err(_) => crate::error::error_response(error, request_id),
            }
        }
    }
}
