//! SMART Backend Services: the discovery document, the token endpoint (client_credentials with
//! a signed client assertion), the public JWKS, and bearer-token checks on FHIR requests.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use fhirwall_audit::EventKind;
use fhirwall_auth::{AccessClaims, AssertionError, ScopeSet};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;

use crate::audit_trail::{self, AuditDetail, Requester};
use crate::error::ApiError;
use crate::server::RequestId;
use crate::state::AppState;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const MAX_FORM_BYTES: usize = 64 * 1024;
const TOKEN_TTL_SECS: i64 = 300;

pub(crate) async fn smart_configuration(State(state): State<AppState>) -> Response {
    let base = &state.inner.base_url;
    let body = json!({
        "token_endpoint": state.token_url(),
        "jwks_uri": format!("{base}/auth/jwks"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "system/*.*"],
        "response_types_supported": ["token"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    });
    json_response(StatusCode::OK, &body)
}

pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    let body = state.inner.tokens.public_jwks();
    let mut response = json_response(StatusCode::OK, &body);
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
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = json_response(
        status,
        &json!({"error": error, "error_description": description}),
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
    response
}

struct TokenFailure {
    status: StatusCode,
    error: &'static str,
    description: String,
    audit_code: &'static str,
}

fn failure(
    status: StatusCode,
    error: &'static str,
    description: impl Into<String>,
    audit_code: &'static str,
) -> TokenFailure {
    TokenFailure {
        status,
        error,
        description: description.into(),
        audit_code,
    }
}

fn store_unavailable() -> TokenFailure {
    failure(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "Try again later.",
        "store",
    )
}

/// RFC 6749 section 5.2: 400 unless the client authenticated with the Authorization header,
/// which backend-services clients never do (they use a client assertion).
fn invalid_client(audit_code: &'static str) -> TokenFailure {
    failure(
        StatusCode::BAD_REQUEST,
        "invalid_client",
        "The client assertion was not accepted.",
        audit_code,
    )
}

pub(crate) async fn token_endpoint(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut who = Requester {
        request_id: request_id.0.clone(),
        source_address: Some(peer.ip().to_string()),
        client_id: None,
    };
    let result = issue_token(&state, &headers, body, &mut who).await;
    let (status, audit_code) = match &result {
        Ok(_) => (200, None),
        Err(f) => (f.status.as_u16(), Some(f.audit_code)),
    };
    let record = audit_trail::record(
        &state,
        &who,
        EventKind::Authentication,
        AuditDetail {
            subtype: "login",
            action: "E",
            ..AuditDetail::default()
        },
        status,
        audit_code,
    );
    if audit_trail::append(&state, &record).await.is_err() {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The server cannot record this request now.",
        );
    }
    match result {
        Ok(body) => {
            let mut response = json_response(StatusCode::OK, &body);
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(f) => oauth_error(f.status, f.error, &f.description),
    }
}

async fn issue_token(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    who: &mut Requester,
) -> Result<serde_json::Value, TokenFailure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The body must be application/x-www-form-urlencoded.",
            "bad-content-type",
        ));
    }
    let bytes = http_body_util::Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| {
            failure(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The body is too large.",
                "too-large",
            )
        })?
        .to_bytes();
    let mut grant_type = None;
    let mut assertion_type = None;
    let mut assertion = None;
    let mut scope = None;
    for (key, value) in form_urlencoded::parse(&bytes) {
        let slot = match key.as_ref() {
            "grant_type" => &mut grant_type,
            "client_assertion_type" => &mut assertion_type,
            "client_assertion" => &mut assertion,
            "scope" => &mut scope,
            _ => continue,
        };
        if slot.is_some() {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("The parameter {key} appears more than once."),
                "repeated-parameter",
            ));
        }
        *slot = Some(value.into_owned());
    }
    match grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Only client_credentials is supported here.",
                "unsupported-grant",
            ));
        }
        None => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required.",
                "missing-grant",
            ));
        }
    }
    if assertion_type.as_deref() != Some(ASSERTION_TYPE) {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            "bad-assertion-type",
        ));
    }
    let assertion = assertion.ok_or_else(|| invalid_client("missing-assertion"))?;
    let claimed =
        fhirwall_auth::peek_client_id(&assertion).map_err(|e| invalid_client(e.code()))?;
    let client = state
        .inner
        .store
        .get_client(&claimed)
        .await
        .map_err(|_| store_unavailable())?
        .ok_or_else(|| invalid_client("unknown-client"))?;
    who.client_id = Some(client.client_id.clone());
    let now = state.inner.clock.now_unix();
    let token_url = state.token_url();
    let verified = match (&client.jwks, &client.jwks_uri) {
        (Some(jwks), _) => {
            let keys = fhirwall_auth::validate_jwks(jwks).map_err(|e| invalid_client(e.code()))?;
            fhirwall_auth::verify_client_assertion(
                &assertion,
                Some(&client.client_id),
                &token_url,
                &keys,
                now,
            )
        }
        (None, Some(uri)) => {
            let instant = std::time::Instant::now();
            let keys = state
                .inner
                .fetcher
                .get(uri, instant)
                .await
                .map_err(|e| invalid_client(e.code()))?;
            match fhirwall_auth::verify_client_assertion(
                &assertion,
                Some(&client.client_id),
                &token_url,
                &keys,
                now,
            ) {
                Err(AssertionError::UnknownKey) => {
                    let keys = state
                        .inner
                        .fetcher
                        .refresh(uri, instant)
                        .await
                        .map_err(|e| invalid_client(e.code()))?;
                    fhirwall_auth::verify_client_assertion(
                        &assertion,
                        Some(&client.client_id),
                        &token_url,
                        &keys,
                        now,
                    )
                }
                other => other,
            }
        }
        (None, None) => return Err(invalid_client("client-without-keys")),
    };
    let claims = verified.map_err(|e| invalid_client(e.code()))?;
    let fresh = state
        .inner
        .store
        .use_jti(&client.client_id, &claims.jti, claims.exp)
        .await
        .map_err(|_| store_unavailable())?;
    if !fresh {
        return Err(invalid_client("replayed-jti"));
    }
    let granted =
        ScopeSet::parse(&client.scope).map_err(|_| invalid_client("bad-registered-scope"))?;
    let scopes = match scope.as_deref().map(str::trim) {
        None | Some("") => granted.clone(),
        Some(requested) => {
            let requested = ScopeSet::parse(requested).map_err(|_| {
                failure(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "The requested scope is malformed.",
                    "bad-scope",
                )
            })?;
            requested.intersect_granted(&granted)
        }
    };
    if scopes.is_empty() {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "None of the requested scopes is granted to this client.",
            "scope-not-granted",
        ));
    }
    let issued = state
        .inner
        .tokens
        .issue(&client.client_id, &scopes, now, TOKEN_TTL_SECS)
        .map_err(|_| {
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Try again later.",
                "issue-failed",
            )
        })?;
    Ok(json!({
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scope,
    }))
}

/// Checks the bearer token of a FHIR request. A failure is audited and answers 401 with a
/// `WWW-Authenticate` challenge (RFC 6750).
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    who: &Requester,
) -> Result<AccessClaims, ApiError> {
    let header_value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = header_value.and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let now = state.inner.clock.now_unix();
    let mut result = match token {
        None => Err(("missing-token", None)),
        Some(token) => {
            verify_cached(state, token, now).map_err(|code| (code, Some("invalid_token")))
        }
    };
    if let Ok(claims) = &result
        && !client_still_registered(state, &claims.client_id, now).await?
    {
        result = Err(("client-removed", Some("invalid_token")));
    }
    match result {
        Ok(claims) => Ok(claims),
        Err((code, error)) => {
            let record = audit_trail::record(
                state,
                who,
                EventKind::Authentication,
                AuditDetail {
                    subtype: "bearer",
                    action: "E",
                    ..AuditDetail::default()
                },
                401,
                Some(code),
            );
            audit_trail::append(state, &record).await?;
            let mut err = ApiError::new(
                StatusCode::UNAUTHORIZED,
                fhirwall_model::IssueType::Login,
                "unauthenticated",
                "A valid bearer access token is required.",
            );
            err.www_authenticate = Some(match error {
                Some(error) => format!(
                    "Bearer realm=\"fhirwall\", error=\"{error}\", error_description=\"The access token is invalid or expired\""
                ),
                None => "Bearer realm=\"fhirwall\"".to_string(),
            });
            Err(err)
        }
    }
}

/// Whether the token's client is still registered, checked at most every few seconds per
/// client, so `fhirwall client remove` cuts off tokens already issued within that time.
async fn client_still_registered(
    state: &AppState,
    client_id: &str,
    now: i64,
) -> Result<bool, ApiError> {
    const RECHECK_SECS: i64 = 5;
    if let Ok(seen) = state.inner.client_seen.lock()
        && seen
            .get(client_id)
            .is_some_and(|at| now - at < RECHECK_SECS)
    {
        return Ok(true);
    }
    let registered = state.inner.store.get_client(client_id).await?.is_some();
    if let Ok(mut seen) = state.inner.client_seen.lock() {
        if registered {
            if seen.len() >= 100_000 {
                seen.clear();
            }
            seen.insert(client_id.to_string(), now);
        } else {
            seen.remove(client_id);
        }
    }
    Ok(registered)
}

fn verify_cached(state: &AppState, token: &str, now: i64) -> Result<AccessClaims, &'static str> {
    let key = fhirwall_crypto::sha256(token.as_bytes());
    if let Ok(cache) = state.inner.token_cache.lock()
        && let Some(claims) = cache.get(&key)
        && claims.exp > now
    {
        return Ok(claims.clone());
    }
    let claims = state
        .inner
        .tokens
        .verify(token, now)
        .map_err(|e| e.code())?;
    if let Ok(mut cache) = state.inner.token_cache.lock() {
        if cache.len() >= 100_000 {
            cache.retain(|_, c| c.exp > now);
            if cache.len() >= 100_000 {
                cache.clear();
            }
        }
        cache.insert(key, claims.clone());
    }
    Ok(claims)
}
