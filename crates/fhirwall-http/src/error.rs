//! The one mapping from domain errors to HTTP: the status FHIR gives the error's kind, an
//! OperationOutcome with a stable code and the request's correlation id, and for 401s the
//! bearer challenge (RFC 6750). Internal detail went to the log where it happened.

use axum::response::{IntoResponse, Response};
use fhirwall_service::ServiceError;
use http::{HeaderValue, StatusCode, header};

pub(crate) fn status_of(error: &ServiceError) -> StatusCode {
    StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub(crate) fn error_response(error: ServiceError, request_id: &str) -> Response {
    let body = error.outcome.to_json(request_id);
    let mut response = (
        status_of(&error),
        crate::negotiate::fhir_json_bytes(&body, false),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::negotiate::FHIR_JSON),
    );
    if error.kind == fhirwall_service::ErrorKind::Unauthenticated {
        let challenge = match error.bearer_error {
            Some(code) => format!(
                "Bearer realm=\"fhirwall\", error=\"{code}\", error_description=\"The access token is invalid or expired\""
            ),
            None => "Bearer realm=\"fhirwall\"".to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
    }
    if error.kind == fhirwall_service::ErrorKind::TooManyRequests {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    response
}
