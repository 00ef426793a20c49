//! The authorization server's HTTP edge: the SMART discovery document, the token endpoint
//! (a form body read within its limit, answered with OAuth's JSON and `no-store`), and the
//! public JWKS. The grant's rules live in the service.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use fhirwall_service::{Requester, TokenFailure, TokenRequest};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;

use crate::state::{Edge, RequestId};

const MAX_FORM_BYTES: usize = 64 * 1024;

pub(crate) async fn smart_configuration(State(edge): State<Edge>) -> Response {
    json_response(StatusCode::OK, &edge.service.smart_configuration())
}

pub(crate) async fn jwks(State(edge): State<Edge>) -> Response {
    let mut response = json_response(StatusCode::OK, &edge.service.public_jwks());
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, crate::negotiate::fhir_json_bytes(body, false)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An OAuth error answer (RFC 6749 section 5.2).
fn oauth_error(failure: &TokenFailure) -> Response {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = json_response(
        status,
        &json!({"error": failure.error, "error_description": failure.description}),
    );
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fhirwall\", error=\"invalid_client\""),
        );
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    response
}

pub(crate) async fn token_endpoint(
    State(edge): State<Edge>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let who = Requester {
        request_id: request_id.0.clone(),
        source_address: Some(peer.ip().to_string()),
    };
    let request = read_form(&headers, body).await;
    match edge.service.token(&who, request).await {
        Ok(body) => {
            let mut response = json_response(StatusCode::OK, &body);
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(failure) => oauth_error(&failure),
    }
}

/// The token request's form, read within its size limit.
async fn read_form(headers: &HeaderMap, body: Body) -> Result<TokenRequest, TokenFailure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(TokenFailure::new(
            400,
            "invalid_request",
            "The body must be application/x-www-form-urlencoded.",
            "bad-content-type",
        ));
    }
    let bytes = http_body_util::Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| {
            TokenFailure::new(
                400,
                "invalid_request",
                "The body is too large.",
                "too-large",
            )
        })?
        .to_bytes();
    TokenRequest::from_form(
        form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())),
    )
}
