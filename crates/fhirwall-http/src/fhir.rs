//! The FHIR REST edge at `/fhir`: turns an HTTP request into one call of the application
//! (`fhirwall-service`) and its reply into an HTTP answer. Here live what is HTTP's alone:
//! the path's routing, content negotiation (once per request), the conditional and `Prefer`
//! headers, reading the body within its limits (FHIR JSON, or FHIR XML turned into JSON), and
//! the answer's headers. Authentication comes first for everything but discovery, and every
//! refusal after it is audited by the service.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use fhirwall_model::{IssueType, JsonLimits, Timestamp};
use fhirwall_service::{
    Conditions, ErrorKind, Interaction, Reply, Request, Requester, ReturnPreference, ServiceError,
};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::error::error_response;
use crate::negotiate::{self, Format};
use crate::state::{Edge, RequestId};

/// More query parameters than this are refused before anything is parsed from them.
const MAX_QUERY_PARAMS: usize = 256;

pub(crate) async fn not_found(Extension(request_id): Extension<RequestId>) -> Response {
    error_response(
        ServiceError::not_found("There is nothing at this address."),
        &request_id.0,
    )
}

pub(crate) async fn entry_root(
    state: State<Edge>,
    request_id: Extension<RequestId>,
    peer: ConnectInfo<SocketAddr>,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    entry(state, request_id, peer, method, uri, headers, body).await
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(crate) async fn entry(
    State(edge): State<Edge>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().strip_prefix("/fhir").unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let params: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .take(MAX_QUERY_PARAMS + 1)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let requester = Requester {
        request_id: request_id.0.clone(),
        source_address: Some(peer.ip().to_string()),
    };
    // The answer's format, negotiated once. A format the client cannot take is refused (406)
    // after authentication, with an audit record; until then answers (401s among them) are
    // JSON.
    let negotiated = negotiate::response_format(&headers, param(&params, "_format"));
    let format = match &negotiated {
        Ok(format) => {
            negotiate::default_to_body_format(&headers, param(&params, "_format"), *format)
        }
        Err(_) => Format::Json,
    };
    let pretty = param(&params, "_pretty") == Some("true");
    // HEAD is GET without the body (hyper leaves the body out).
    let routed_method = if method == http::Method::HEAD {
        http::Method::GET
    } else {
        method
    };
    let response = match (&routed_method, segments.as_slice()) {
        // Discovery answers without a token.
        (&http::Method::GET, ["metadata"]) => match negotiated {
            Err(error) => error_response(error, &request_id.0),
            Ok(_) => json_answer(StatusCode::OK, &edge.service.capability_statement(), pretty),
        },
        _ => {
            let call = EdgeCall {
                edge: &edge,
                requester: &requester,
                method: &routed_method,
                headers: &headers,
                params,
                pretty,
            };
            match call.serve(&segments, negotiated, body).await {
                Ok(response) => response,
                Err(error) => error_response(error, &request_id.0),
            }
        }
    };
    crate::formats::into_format(response, format, pretty, &request_id.0).await
}

/// One FHIR request at the edge.
struct EdgeCall<'a> {
    edge: &'a Edge,
    requester: &'a Requester,
    method: &'a http::Method,
    headers: &'a HeaderMap,
    params: Vec<(String, String)>,
    pretty: bool,
}

impl EdgeCall<'_> {
    async fn serve(
        self,
        segments: &[&str],
        negotiated: Result<Format, ServiceError>,
        body: Body,
    ) -> Result<Response, ServiceError> {
        let service = &self.edge.service;
        let authorization = self
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = service.authenticate(self.requester, authorization).await?;
        let interaction = match Interaction::route(self.method.as_str(), segments) {
            Ok(interaction) => interaction,
            Err(error) => return Err(service.refuse(&caller, None, &self.params, error).await),
        };
        // `POST [type]/_search` carries its parameters in a form body, after the query's.
        let mut body = Some(body);
        let mut params = self.params.clone();
        if *self.method == http::Method::POST && segments.last() == Some(&"_search") {
            let form = match body.take() {
                Some(body) => read_form(self.headers, body, &self.edge.limits).await,
                None => Ok(Vec::new()),
            };
            match form {
                Ok(pairs) => params.extend(pairs),
                Err(error) => {
                    return Err(service
                        .refuse(&caller, Some(&interaction), &self.params, error)
                        .await);
                }
            }
        }
        let params = params;
        let refused = |error: ServiceError| async {
            service
                .refuse(&caller, Some(&interaction), &params, error)
                .await
        };
        if params.len() > MAX_QUERY_PARAMS {
            return Err(refused(ServiceError::invalid(
                "too-many-parameters",
                format!("A request takes at most {MAX_QUERY_PARAMS} query parameters."),
            ))
            .await);
        }
        if let Err(error) = negotiated {
            return Err(refused(error).await);
        }
        let mut request = Request::new(interaction.clone());
        request.params = params.clone();
        request.conditions = conditions(self.headers);
        request.return_preference = return_preference(self.headers);
        request.return_stated = negotiate::states_return_preference(self.headers);
        request.strict_handling = negotiate::prefers_strict_handling(self.headers);
        // The caller's scopes are checked before its body is read.
        if let Err(error) = service.permitted(&caller, &request) {
            return Err(refused(error).await);
        }
        request.body = match body {
            None => None,
            Some(body) => match self.read_body(&interaction, body).await {
                Ok(body) => body,
                Err(error) => return Err(refused(error).await),
            },
        };
        let reply = service.handle(&caller, request).await?;
        Ok(self.answer(reply))
    }

    /// The body the interaction takes, parsed into FHIR JSON; `None` where it takes none.
    async fn read_body(
        &self,
        interaction: &Interaction,
        body: Body,
    ) -> Result<Option<Value>, ServiceError> {
        let limits = &self.edge.limits;
        match interaction {
            Interaction::Create(_)
            | Interaction::Update(..)
            | Interaction::ConditionalUpdate(_)
            | Interaction::Bundle => {
                let format = negotiate::check_content_type(self.headers, false)?;
                let bytes = read_bytes(self.headers, body, limits).await?;
                Ok(Some(parse_body(&bytes, format, limits)?))
            }
            Interaction::Patch(..) => {
                let format = negotiate::check_content_type(self.headers, true)?;
                let bytes = read_bytes(self.headers, body, limits).await?;
                let doc = parse_body(&bytes, format, limits)?;
                // The media type says which patch it is; a body of the other kind is refused
                // rather than read as the wrong one.
                let json_patch = negotiate::is_json_patch(self.headers);
                let fhirpath_patch =
                    doc.get("resourceType").and_then(Value::as_str) == Some("Parameters");
                if json_patch && !doc.is_array() {
                    return Err(ServiceError::invalid(
                        "invalid-patch",
                        "An application/json-patch+json body is a JSON Patch document: an array of operations.",
                    ));
                }
                if !json_patch && !fhirpath_patch {
                    return Err(ServiceError::invalid(
                        "invalid-patch",
                        "A PATCH in FHIR JSON or XML is a FHIRPath Patch: a Parameters resource (send a JSON Patch as application/json-patch+json).",
                    ));
                }
                Ok(Some(doc))
            }
            Interaction::Validate(..) if *self.method == http::Method::POST => {
                let bytes = read_bytes(self.headers, body, limits).await?;
                if bytes.is_empty() {
                    return Ok(None);
                }
                let format = negotiate::check_content_type(self.headers, false)?;
                Ok(Some(parse_body(&bytes, format, limits)?))
            }
            _ => Ok(None),
        }
    }

    /// The HTTP answer for a reply.
    fn answer(&self, reply: Reply) -> Response {
        let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
        let mut response = match reply.body {
            None => status.into_response(),
            Some(bytes) => {
                let bytes = if self.pretty {
                    match serde_json::from_slice::<Value>(&bytes) {
                        Ok(value) => negotiate::fhir_json_bytes(&value, true),
                        Err(_) => bytes,
                    }
                } else {
                    bytes
                };
                fhir_bytes(status, bytes)
            }
        };
        let headers = response.headers_mut();
        if let Some((version, at)) = reply.version {
            if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
                headers.insert(header::ETAG, v);
            }
            let secs = u64::try_from(at.unix_seconds()).unwrap_or(0);
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(when)) {
                headers.insert(header::LAST_MODIFIED, v);
            }
        }
        if let Some(location) = reply.location
            && let Ok(v) = HeaderValue::from_str(&location.url)
        {
            if location.created {
                headers.insert(header::LOCATION, v.clone());
            }
            headers.insert(header::CONTENT_LOCATION, v);
        }
        response
    }
}

/// The preconditions the headers carry.
fn conditions(headers: &HeaderMap) -> Conditions {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Conditions {
        if_match: headers
            .get(header::IF_MATCH)
            .map(|v| v.to_str().unwrap_or("unreadable").to_string()),
        if_none_match: text(header::IF_NONE_MATCH),
        if_modified_since: headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|since| since.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|since| i64::try_from(since.as_secs()).ok())
            .map(Timestamp::from_unix_seconds),
        if_none_exist: headers
            .get("if-none-exist")
            .map(|v| v.to_str().unwrap_or("\u{0}").to_string()),
    }
}

fn return_preference(headers: &HeaderMap) -> ReturnPreference {
    match negotiate::return_preference(headers) {
        negotiate::ReturnPreference::Minimal => ReturnPreference::Minimal,
        negotiate::ReturnPreference::Representation => ReturnPreference::Representation,
        negotiate::ReturnPreference::OperationOutcome => ReturnPreference::OperationOutcome,
    }
}

pub(crate) fn json_answer(status: StatusCode, body: &Value, pretty: bool) -> Response {
    fhir_bytes(status, negotiate::fhir_json_bytes(body, pretty))
}

fn fhir_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(negotiate::FHIR_JSON),
    );
    response
}

async fn read_bytes(
    headers: &HeaderMap,
    body: Body,
    limits: &crate::Limits,
) -> Result<bytes::Bytes, ServiceError> {
    let limit = limits.max_body_bytes;
    let too_large = || {
        ServiceError::new(
            ErrorKind::TooLarge,
            IssueType::TooLong,
            "body-too-large",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && length > limit
    {
        return Err(too_large());
    }
    // A client that trickles its body must not hold a request open indefinitely.
    let collecting = http_body_util::Limited::new(body, limit).collect();
    let collected = tokio::time::timeout(limits.body_read_timeout, collecting)
        .await
        .map_err(|_| {
            ServiceError::new(
                ErrorKind::Timeout,
                IssueType::Timeout,
                "body-timeout",
                "The request body did not arrive in time.",
            )
        })?
        .map_err(|error| {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ServiceError::invalid("body-unreadable", "The request body could not be read.")
            }
        })?;
    Ok(collected.to_bytes())
}

/// The parameters of a form body (`POST [type]/_search`).
async fn read_form(
    headers: &HeaderMap,
    body: Body,
    limits: &crate::Limits,
) -> Result<Vec<(String, String)>, ServiceError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(ServiceError::new(
            ErrorKind::UnsupportedMediaType,
            IssueType::NotSupported,
            "unsupported-media-type",
            "A search by POST takes its parameters as application/x-www-form-urlencoded.",
        ));
    }
    let bytes = read_bytes(headers, body, limits).await?;
    Ok(form_urlencoded::parse(&bytes)
        .take(MAX_QUERY_PARAMS + 1)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// Parses a FHIR JSON or FHIR XML body into the JSON tree the server works on.
fn parse_body(bytes: &[u8], format: Format, limits: &crate::Limits) -> Result<Value, ServiceError> {
    match format {
        Format::Xml => crate::formats::parse_xml(bytes, limits),
        Format::Json => {
            if bytes.is_empty() {
                return Err(ServiceError::invalid(
                    "empty-body",
                    "The request has no body.",
                ));
            }
            fhirwall_model::parse_strict(
                bytes,
                JsonLimits {
                    max_depth: limits.max_json_depth,
                },
            )
            .map_err(|e| {
                let code = match e {
                    fhirwall_model::JsonError::DuplicateKey(_) => "duplicate-key",
                    fhirwall_model::JsonError::TooDeep(_) => "too-deep",
                    fhirwall_model::JsonError::Syntax(_) => "invalid-json",
                };
                ServiceError::new(
                    ErrorKind::Invalid,
                    IssueType::Structure,
                    code,
                    e.to_string(),
                )
            })
        }
    }
}
