//! The FHIR REST API at `/fhir`: path routing, authentication and scope checks, the RESTful
//! interactions (create, read, vread, update, patch, delete, history, conditional create,
//! update and delete, a search by `_id` and `identifier`), and the audit record of each.
//! Every ePHI read is audited durably before the response leaves; every write commits with
//! its audit record.

// Refusals carry their audit detail with them; they are built once per failed request, so
// their size does not matter.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use fhirwall_audit::EventKind;
use fhirwall_auth::{AccessClaims, Interaction as Perm};
use fhirwall_crypto::AadContext;
use fhirwall_model::{IssueType, JsonLimits, OperationOutcome, ResourceId, ResourceType, Summary};
use fhirwall_store::{
    CurrentQuery, Expect, HistoryQuery, IndexTerm, Method, NoMatchGuard, StoredVersion,
    WriteConflict, WriteRequest,
};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use crate::audit_trail::{self, AuditDetail, Requester, format_instant};
use crate::error::ApiError;
use crate::negotiate::{self, Format, ReturnPreference};
use crate::server::RequestId;
use crate::state::AppState;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
const WRITE_ATTEMPTS: usize = 8;

/// One FHIR request being served.
struct Call {
    state: AppState,
    who: Requester,
    method: http::Method,
    headers: HeaderMap,
    params: Vec<(String, String)>,
    raw_query: Option<String>,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn pretty(&self) -> bool {
        self.param("_pretty") == Some("true")
    }

    fn tenant(&self) -> &str {
        &self.state.inner.tenant
    }
}

/// What the path and method ask for.
#[derive(Debug, Clone)]
enum Interaction {
    Read(ResourceType, String),
    Vread(ResourceType, String, String),
    Create(ResourceType),
    Update(ResourceType, String),
    Patch(ResourceType, String),
    Delete(ResourceType, String),
    SearchType(ResourceType),
    ConditionalUpdate(ResourceType),
    ConditionalDelete(ResourceType),
    HistoryType(ResourceType),
    HistoryInstance(ResourceType, String),
    HistorySystem,
    /// `$validate` at type level (None) or instance level.
    Validate(ResourceType, Option<String>),
}

impl Interaction {
    fn subtype(&self) -> &'static str {
        match self {
            Interaction::Read(..) => "read",
            Interaction::Vread(..) => "vread",
            Interaction::Create(..) => "create",
            Interaction::Update(..) | Interaction::ConditionalUpdate(..) => "update",
            Interaction::Patch(..) => "patch",
            Interaction::Delete(..) | Interaction::ConditionalDelete(..) => "delete",
            Interaction::SearchType(..) => "search-type",
            Interaction::HistoryType(..) => "history-type",
            Interaction::HistoryInstance(..) => "history-instance",
            Interaction::HistorySystem => "history-system",
            Interaction::Validate(..) => "validate",
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Interaction::Create(..) => "C",
            Interaction::Update(..)
            | Interaction::Patch(..)
            | Interaction::ConditionalUpdate(..) => "U",
            Interaction::Delete(..) | Interaction::ConditionalDelete(..) => "D",
            Interaction::SearchType(..)
            | Interaction::HistoryType(..)
            | Interaction::HistorySystem
            | Interaction::Validate(..) => "E",
            _ => "R",
        }
    }

    fn resource_type(&self) -> Option<&ResourceType> {
        match self {
            Interaction::Read(t, _)
            | Interaction::Vread(t, _, _)
            | Interaction::Create(t)
            | Interaction::Update(t, _)
            | Interaction::Patch(t, _)
            | Interaction::Delete(t, _)
            | Interaction::SearchType(t)
            | Interaction::ConditionalUpdate(t)
            | Interaction::ConditionalDelete(t)
            | Interaction::HistoryType(t)
            | Interaction::HistoryInstance(t, _)
            | Interaction::Validate(t, _) => Some(t),
            Interaction::HistorySystem => None,
        }
    }

    /// The SMART permissions the interaction needs before it looks at any data.
    fn permissions(&self, conditional_create: bool) -> Vec<Perm> {
        match self {
            Interaction::Read(..) | Interaction::Vread(..) | Interaction::HistoryInstance(..) => {
                vec![Perm::Read]
            }
            Interaction::Create(..) if conditional_create => vec![Perm::Create, Perm::Search],
            Interaction::Create(..) => vec![Perm::Create],
            Interaction::Update(..) | Interaction::Patch(..) => vec![Perm::Update],
            Interaction::Delete(..) => vec![Perm::Delete],
            Interaction::SearchType(..)
            | Interaction::HistoryType(..)
            | Interaction::HistorySystem => {
                vec![Perm::Search]
            }
            Interaction::ConditionalUpdate(..) => vec![Perm::Update, Perm::Search],
            Interaction::ConditionalDelete(..) => vec![Perm::Delete, Perm::Search],
            // Validating a proposed resource reads nothing stored; asking about an existing
            // one (mode update or delete) tells whether it exists.
            Interaction::Validate(_, None) => vec![Perm::Create],
            Interaction::Validate(_, Some(_)) => vec![Perm::Read],
        }
    }
}

/// A successful answer and what its audit record must say. `audit` is None when the record
/// already committed with the write.
pub(crate) struct Done {
    response: Response,
    audit: Option<AuditDetail>,
}

pub(crate) fn done(response: Response, audit: AuditDetail) -> Done {
    Done {
        response,
        audit: Some(audit),
    }
}

/// A refusal and what is known about what it touched.
pub(crate) struct Failed {
    error: ApiError,
    detail: AuditDetail,
}

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Self {
        Failed {
            error,
            detail: AuditDetail::default(),
        }
    }
}

pub(crate) async fn not_found(Extension(request_id): Extension<RequestId>) -> Response {
    ApiError::not_found("There is nothing at this address.").into_response_with(&request_id.0)
}

pub(crate) async fn entry_root(
    state: State<AppState>,
    request_id: Extension<RequestId>,
    peer: ConnectInfo<SocketAddr>,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    entry(state, request_id, peer, method, uri, headers, body).await
}

pub(crate) async fn entry(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().strip_prefix("/fhir").unwrap_or_default();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let params: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let call = Call {
        state,
        who: Requester {
            request_id: request_id.0.clone(),
            source_address: Some(peer.ip().to_string()),
            client_id: None,
        },
        method,
        headers,
        params,
        raw_query: uri.query().map(str::to_string),
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    // A format the client cannot take is refused (406) inside `serve`, after authentication
    // and with an audit record; until then answers (401s among them) are JSON.
    let format = negotiate::response_format(&call.headers, call.param("_format"))
        .map(|format| {
            negotiate::default_to_body_format(&call.headers, call.param("_format"), format)
        })
        .unwrap_or(Format::Json);
    let pretty = call.pretty();
    // Discovery answers without a token.
    let response = match (call.method.clone(), segs.as_slice()) {
        (http::Method::GET, ["metadata"]) => {
            match negotiate::response_format(&call.headers, call.param("_format")) {
                Err(e) => e.into_response_with(&request_id.0),
                Ok(_) => {
                    let body = crate::capability::capability_statement(&call.state);
                    fhir_json(StatusCode::OK, &body, pretty)
                }
            }
        }
        (http::Method::GET, [".well-known", "smart-configuration"]) => {
            return crate::auth::smart_configuration(State(call.state.clone())).await;
        }
        _ => match serve(call, &segs, body).await {
            Ok(response) => response,
            Err(error) => error.into_response_with(&request_id.0),
        },
    };
    crate::formats::into_format(response, format, pretty, &request_id.0).await
}

fn parse_type(name: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(name).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotSupported,
            "unknown-resource-type",
            "The path does not name a FHIR R4 resource type.",
        )
    })
}

fn parse_id(id: &str) -> Result<String, ApiError> {
    ResourceId::parse(id)
        .map(|id| id.as_str().to_string())
        .map_err(|_| {
            ApiError::bad_request(
                "invalid-id",
                "A resource id is 1 to 64 characters of A-Z, a-z, 0-9, '-' and '.'.",
            )
        })
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        "method-not-allowed",
        "This interaction is not supported at this address.",
    )
}

fn route(method: &http::Method, segs: &[&str]) -> Result<Interaction, ApiError> {
    use http::Method as M;
    let interaction = match segs {
        [] => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                IssueType::NotSupported,
                "not-supported",
                "Batch, transaction and system-level search are not supported by this server.",
            ));
        }
        ["_history"] if *method == M::GET => Interaction::HistorySystem,
        ["_history"] | [_, "_history"] if *method != M::GET => return Err(method_not_allowed()),
        [t] if t.starts_with('$') || t.starts_with('_') => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                IssueType::NotSupported,
                "not-supported",
                "This operation is not supported by this server.",
            ));
        }
        [t] => {
            let t = parse_type(t)?;
            match *method {
                M::GET => Interaction::SearchType(t),
                M::POST => Interaction::Create(t),
                M::PUT => Interaction::ConditionalUpdate(t),
                M::DELETE => Interaction::ConditionalDelete(t),
                _ => return Err(method_not_allowed()),
            }
        }
        [t, "_history"] if *method == M::GET => Interaction::HistoryType(parse_type(t)?),
        [t, "$validate"] if *method == M::POST => Interaction::Validate(parse_type(t)?, None),
        [t, id, "$validate"] if *method == M::POST || *method == M::GET => {
            Interaction::Validate(parse_type(t)?, Some(parse_id(id)?))
        }
        [_, "$validate"] | [_, _, "$validate"] => return Err(method_not_allowed()),
        [t, "_search"] => {
            let _ = parse_type(t)?;
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                IssueType::NotSupported,
                "not-supported",
                "Search by POST is not supported yet; use GET.",
            ));
        }
        [t, id] => {
            let t = parse_type(t)?;
            if id.starts_with('$') {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    IssueType::NotSupported,
                    "not-supported",
                    "This operation is not supported by this server.",
                ));
            }
            let id = parse_id(id)?;
            match *method {
                M::GET => Interaction::Read(t, id),
                M::PUT => Interaction::Update(t, id),
                M::PATCH => Interaction::Patch(t, id),
                M::DELETE => Interaction::Delete(t, id),
                _ => return Err(method_not_allowed()),
            }
        }
        [t, id, "_history"] if *method == M::GET => {
            Interaction::HistoryInstance(parse_type(t)?, parse_id(id)?)
        }
        [t, id, "_history", vid] if *method == M::GET => {
            Interaction::Vread(parse_type(t)?, parse_id(id)?, (*vid).to_string())
        }
        [_, _, "_history", ..] => return Err(method_not_allowed()),
        _ => return Err(ApiError::not_found("There is nothing at this address.")),
    };
    Ok(interaction)
}

async fn serve(mut call: Call, segs: &[&str], body: Body) -> Result<Response, ApiError> {
    let interaction = route(&call.method, segs)?;
    let claims = crate::auth::authenticate(&call.state, &call.headers, &call.who).await?;
    call.who.client_id = Some(claims.client_id.clone());
    let mut base_detail = AuditDetail {
        subtype: interaction.subtype(),
        action: interaction.action(),
        query: call.raw_query.clone(),
        ..AuditDetail::default()
    };
    if let Some(t) = interaction.resource_type() {
        match &interaction {
            Interaction::Read(_, id)
            | Interaction::Validate(_, Some(id))
            | Interaction::Update(_, id)
            | Interaction::Patch(_, id)
            | Interaction::Delete(_, id)
            | Interaction::HistoryInstance(_, id) => base_detail.entities.push(format!("{t}/{id}")),
            Interaction::Vread(_, id, vid) => base_detail
                .entities
                .push(format!("{t}/{id}/_history/{vid}")),
            _ => {}
        }
    }
    let result = match check_scopes(&claims, &interaction, &call.headers) {
        Err(e) => Err(Failed::from(e)),
        Ok(()) => match negotiate::response_format(&call.headers, call.param("_format")) {
            Err(e) => Err(Failed::from(e)),
            Ok(_) => {
                // The server's own trail is read-only; validating a proposed AuditEvent is not
                // a write, so `$validate` goes the common way.
                if interaction.resource_type().map(ResourceType::as_str) == Some("AuditEvent")
                    && !matches!(interaction, Interaction::Validate(..))
                {
                    crate::audit_api::audit_event_api(
                        &call.state,
                        &call.params,
                        &interaction_parts(&interaction),
                    )
                    .await
                } else {
                    run(&call, &claims, &interaction, body).await
                }
            }
        },
    };
    match result {
        Ok(done) => {
            if let Some(mut detail) = done.audit {
                if detail.subtype.is_empty() {
                    detail.subtype = base_detail.subtype;
                    detail.action = base_detail.action;
                }
                if detail.entities.is_empty() {
                    detail.entities = base_detail.entities.clone();
                }
                detail.query = base_detail.query.clone();
                let status = done.response.status().as_u16();
                let record = audit_trail::record(
                    &call.state,
                    &call.who,
                    EventKind::Rest,
                    detail,
                    status,
                    None,
                );
                audit_trail::append(&call.state, &record).await?;
            }
            Ok(done.response)
        }
        Err(failed) => {
            let mut detail = failed.detail;
            detail.subtype = base_detail.subtype;
            detail.action = base_detail.action;
            if detail.entities.is_empty() {
                detail.entities = base_detail.entities;
            }
            detail.query = base_detail.query;
            let status = failed.error.status.as_u16();
            let record = audit_trail::record(
                &call.state,
                &call.who,
                EventKind::Rest,
                detail,
                status,
                Some(failed.error.outcome.code),
            );
            audit_trail::append(&call.state, &record).await?;
            Err(failed.error)
        }
    }
}

/// (method, type, id) of an AuditEvent request, for the read-only AuditEvent API.
pub(crate) struct AuditPath {
    pub writes: bool,
    pub id: Option<String>,
    pub history: bool,
}

fn interaction_parts(interaction: &Interaction) -> AuditPath {
    match interaction {
        Interaction::Read(_, id) => AuditPath {
            writes: false,
            id: Some(id.clone()),
            history: false,
        },
        Interaction::SearchType(_) => AuditPath {
            writes: false,
            id: None,
            history: false,
        },
        Interaction::Vread(..)
        | Interaction::HistoryInstance(..)
        | Interaction::HistoryType(..) => AuditPath {
            writes: false,
            id: None,
            history: true,
        },
        _ => AuditPath {
            writes: true,
            id: None,
            history: false,
        },
    }
}

fn check_scopes(
    claims: &AccessClaims,
    interaction: &Interaction,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let conditional_create = headers.contains_key("if-none-exist");
    let type_name = interaction
        .resource_type()
        .map_or("*", ResourceType::as_str);
    for perm in interaction.permissions(conditional_create) {
        if !claims.scopes.allows_system(type_name, perm) {
            return Err(ApiError::forbidden(format!(
                "The access token's scopes do not allow {} on {type_name}.",
                interaction.subtype()
            )));
        }
    }
    Ok(())
}

async fn run(
    call: &Call,
    claims: &AccessClaims,
    interaction: &Interaction,
    body: Body,
) -> Result<Done, Failed> {
    match interaction {
        Interaction::Read(t, id) => read(call, t, id).await,
        Interaction::Vread(t, id, vid) => vread(call, t, id, vid).await,
        Interaction::Create(t) => create(call, t, body).await,
        Interaction::Update(t, id) => update(call, claims, t, id, body).await,
        Interaction::Patch(t, id) => patch(call, t, id, body).await,
        Interaction::Delete(t, id) => delete(call, t, id, None).await,
        Interaction::ConditionalUpdate(t) => conditional_update(call, claims, t, body).await,
        Interaction::ConditionalDelete(t) => conditional_delete(call, t).await,
        Interaction::SearchType(t) => search(call, t).await,
        Interaction::HistoryType(t) => history(call, Some(t), None).await,
        Interaction::HistoryInstance(t, id) => history(call, Some(t), Some(id)).await,
        Interaction::HistorySystem => history(call, None, None).await,
        Interaction::Validate(t, id) => validate_operation(call, t, id.as_deref(), body).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// Sets `key` on a JSON object (a no-op on anything else).
fn put(value: &mut Value, key: &str, new: Value) {
    if let Some(map) = value.as_object_mut() {
        map.insert(key.to_string(), new);
    }
}

pub(crate) fn fhir_json(status: StatusCode, body: &Value, pretty: bool) -> Response {
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

fn version_headers(response: &mut Response, version: u64, last_updated_micros: i64) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        headers.insert(header::ETAG, v);
    }
    let secs = u64::try_from(last_updated_micros / 1_000_000).unwrap_or(0);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(when)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
}

async fn read_body(call: &Call, body: Body) -> Result<bytes::Bytes, ApiError> {
    let limit = call.state.inner.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            "body-too-large",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    };
    if let Some(length) = call
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && length > limit
    {
        return Err(too_large());
    }
    // A client that trickles its body must not hold a request open indefinitely.
    let collecting = http_body_util::Limited::new(body, limit).collect();
    let collected = tokio::time::timeout(call.state.inner.limits.body_read_timeout, collecting)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
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
                ApiError::bad_request("body-unreadable", "The request body could not be read.")
            }
        })?;
    Ok(collected.to_bytes())
}

fn parse_json(call: &Call, bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty-body",
            "The request has no body.",
        ));
    }
    fhirwall_model::parse_strict(
        bytes,
        JsonLimits {
            max_depth: call.state.inner.limits.max_json_depth,
        },
    )
    .map_err(|e| {
        let code = match e {
            fhirwall_model::JsonError::DuplicateKey(_) => "duplicate-key",
            fhirwall_model::JsonError::TooDeep(_) => "too-deep",
            fhirwall_model::JsonError::Syntax(_) => "invalid-json",
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            IssueType::Structure,
            code,
            e.to_string(),
        )
    })
}

/// Parses a FHIR JSON or FHIR XML body into the JSON tree the server works on.
fn parse_body(call: &Call, bytes: &[u8], format: Format) -> Result<Value, ApiError> {
    match format {
        Format::Json => parse_json(call, bytes),
        Format::Xml => crate::formats::parse_xml(bytes, &call.state.inner.limits),
    }
}

/// Parses and checks a resource body for `resource_type`: an object, the right resourceType,
/// a well-formed id if any, and a meta that is an object if present.
async fn read_resource(
    call: &Call,
    resource_type: &ResourceType,
    body: Body,
) -> Result<Map<String, Value>, ApiError> {
    let format = negotiate::check_content_type(&call.headers, false)?;
    let bytes = read_body(call, body).await?;
    let value = parse_body(call, &bytes, format)?;
    let Value::Object(map) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            IssueType::Structure,
            "not-a-resource",
            "The body must be a JSON object holding one FHIR resource.",
        ));
    };
    check_resource_shape(&map, resource_type)?;
    Ok(map)
}

fn check_resource_shape(
    map: &Map<String, Value>,
    resource_type: &ResourceType,
) -> Result<(), ApiError> {
    match map.get("resourceType") {
        Some(Value::String(t)) if t == resource_type.as_str() => {}
        Some(Value::String(_)) => {
            return Err(ApiError::bad_request(
                "resource-type-mismatch",
                format!("The body's resourceType does not match the URL ({resource_type})."),
            )
            .with_expression("resourceType"));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                IssueType::Required,
                "missing-resource-type",
                "The body has no resourceType.",
            )
            .with_expression("resourceType"));
        }
    }
    match map.get("id") {
        None => {}
        Some(Value::String(id)) if ResourceId::parse(id).is_ok() => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid-id",
                "The body's id is not a valid FHIR id.",
            )
            .with_expression(format!("{resource_type}.id")));
        }
    }
    match map.get("meta") {
        None | Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                IssueType::Structure,
                "invalid-meta",
                "meta must be an object.",
            )
            .with_expression(format!("{resource_type}.meta")));
        }
    }
    if map.keys().any(|k| k.is_empty()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            IssueType::Structure,
            "empty-key",
            "The body has an empty property name.",
        ));
    }
    Ok(())
}

/// The stored form of a version: resourceType, id and meta first, with the server's
/// versionId and lastUpdated.
fn stamp(
    mut map: Map<String, Value>,
    resource_type: &ResourceType,
    id: &str,
    version: u64,
    micros: i64,
) -> Value {
    let mut meta = match map.remove("meta") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    meta.shift_remove("versionId");
    meta.shift_remove("lastUpdated");
    let mut new_meta = Map::new();
    new_meta.insert("versionId".into(), Value::String(version.to_string()));
    new_meta.insert("lastUpdated".into(), Value::String(format_instant(micros)));
    new_meta.extend(meta);
    let mut out = Map::with_capacity(map.len() + 3);
    out.insert(
        "resourceType".into(),
        Value::String(resource_type.as_str().into()),
    );
    out.insert("id".into(), Value::String(id.into()));
    out.insert("meta".into(), Value::Object(new_meta));
    for (k, v) in map {
        if k != "resourceType" && k != "id" {
            out.insert(k, v);
        }
    }
    Value::Object(out)
}

/// The blind-index terms of a resource's identifiers, for conditional operations and search:
/// `value` (any system), `system|value`, and `|value` for identifiers without a system. Each
/// term is a random-looking key, so each costs a B-tree page per write; a system-only term
/// (`system|`) would be a posting list per system and is not kept.
fn identifier_terms(call: &Call, resource_type: &ResourceType, resource: &Value) -> Vec<IndexTerm> {
    let mut terms = Vec::new();
    let identifiers = match resource.get("identifier") {
        Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
        Some(obj @ Value::Object(_)) => vec![obj],
        _ => return terms,
    };
    for identifier in identifiers {
        let system = identifier.get("system").and_then(Value::as_str);
        let Some(value) = identifier.get("value").and_then(Value::as_str) else {
            continue;
        };
        terms.push(term(call, resource_type, &format!("v:{value}")));
        match system {
            Some(system) => terms.push(term(call, resource_type, &format!("sv:{system}|{value}"))),
            None => terms.push(term(call, resource_type, &format!("ns:{value}"))),
        }
    }
    terms.sort_by_key(|a| a.0);
    terms.dedup();
    terms
}

fn term(call: &Call, resource_type: &ResourceType, normalized: &str) -> IndexTerm {
    IndexTerm(call.state.inner.blind.term(
        call.tenant(),
        resource_type.as_str(),
        "identifier",
        normalized,
    ))
}

/// The criteria of a conditional interaction or a search: `_id` and `identifier` only.
#[derive(Default)]
struct Criteria {
    id: Option<String>,
    /// Each inner list is one `identifier` parameter; its entries are OR'd (comma values).
    identifier_terms: Vec<Vec<IndexTerm>>,
    /// Parameters a lenient search left out.
    ignored: Vec<String>,
}

const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_summary",
    "_elements",
    "_format",
    "_pretty",
    "_cursor",
    "_total",
    "_sort",
];

fn parse_criteria(
    call: &Call,
    resource_type: &ResourceType,
    params: &[(String, String)],
    allow_or: bool,
    lenient: bool,
) -> Result<Criteria, ApiError> {
    let mut criteria = Criteria::default();
    for (name, value) in params {
        match name.as_str() {
            "_id" => {
                if criteria.id.is_some() || value.contains(',') && !allow_or {
                    return Err(ApiError::bad_request(
                        "unsupported-search",
                        "_id may be given once, with one value.",
                    ));
                }
                if value.contains(',') {
                    return Err(ApiError::bad_request(
                        "unsupported-search",
                        "_id with several values is not supported yet.",
                    ));
                }
                criteria.id = Some(parse_id(value)?);
            }
            "identifier" => {
                let values: Vec<&str> = value.split(',').collect();
                if values.len() > 1 && !allow_or {
                    return Err(ApiError::bad_request(
                        "unsupported-search",
                        "A conditional interaction takes one identifier value per parameter.",
                    ));
                }
                let mut alternatives = Vec::new();
                for v in values {
                    let normalized = match v.split_once('|') {
                        None => format!("v:{v}"),
                        Some(("", value)) => format!("ns:{value}"),
                        Some((_, "")) => {
                            return Err(ApiError::bad_request(
                                "unsupported-search",
                                "identifier=system| (any value in a system) is not supported; give system|value or value.",
                            ));
                        }
                        Some((system, value)) => format!("sv:{system}|{value}"),
                    };
                    if v.is_empty() || v == "|" {
                        return Err(ApiError::bad_request(
                            "invalid-search",
                            "identifier needs a value.",
                        ));
                    }
                    alternatives.push(term(call, resource_type, &normalized));
                }
                criteria.identifier_terms.push(alternatives);
            }
            n if RESULT_PARAMS.contains(&n) => {}
            _ if lenient => criteria.ignored.push(name.clone()),
            _ => {
                return Err(ApiError::bad_request(
                    "unknown-search-parameter",
                    format!(
                        "The search parameter '{}' is not supported on {resource_type}; this server searches by _id and identifier.",
                        name.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
    }
    Ok(criteria)
}

/// The criteria of a conditional interaction: at least one of `_id` and `identifier`, one value
/// each.
fn parse_conditional_criteria(
    call: &Call,
    resource_type: &ResourceType,
    params: &[(String, String)],
    interaction: &str,
) -> Result<Criteria, ApiError> {
    let criteria = parse_criteria(call, resource_type, params, false, false)?;
    if criteria.id.is_none() && criteria.identifier_terms.is_empty() {
        return Err(ApiError::bad_request(
            "invalid-condition",
            format!("A conditional {interaction} needs _id or identifier criteria."),
        ));
    }
    Ok(criteria)
}

/// Current resources matching the criteria (up to `limit`), in commit order.
async fn find(
    call: &Call,
    resource_type: &ResourceType,
    criteria: &Criteria,
    after_seq: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredVersion>, ApiError> {
    let store = &call.state.inner.store;
    // Expand OR'd identifier values into separate queries and merge them.
    let mut combos: Vec<Vec<IndexTerm>> = vec![Vec::new()];
    for alternatives in &criteria.identifier_terms {
        let mut next = Vec::new();
        for combo in &combos {
            for alt in alternatives {
                let mut c = combo.clone();
                c.push(*alt);
                next.push(c);
            }
        }
        combos = next;
        if combos.len() > 64 {
            return Err(ApiError::bad_request(
                "search-too-complex",
                "Too many identifier alternatives.",
            ));
        }
    }
    let mut found: Vec<StoredVersion> = Vec::new();
    for terms in combos {
        let rows = store
            .find_current(CurrentQuery {
                tenant: call.tenant().to_string(),
                resource_type: resource_type.as_str().to_string(),
                id: criteria.id.clone(),
                terms,
                after_seq,
                limit,
            })
            .await?;
        for row in rows {
            if !found.iter().any(|f| f.id == row.id) {
                found.push(row);
            }
        }
    }
    found.sort_by_key(|r| r.seq);
    found.truncate(limit);
    Ok(found)
}

fn open_version(call: &Call, row: &StoredVersion) -> Result<Vec<u8>, ApiError> {
    if row.sealed_body.is_none() {
        return Err(ApiError::internal());
    }
    Ok(call.state.open_version(row)?)
}

fn patients_of(resource_type: &ResourceType, id: &str, body: &Value) -> Vec<String> {
    fhirwall_model::patient_references(resource_type, id, body)
}

/// The body to send for a stored version, honouring `_summary`, `_elements` and `_pretty`.
fn render(
    call: &Call,
    resource_type: &ResourceType,
    plain: Vec<u8>,
    parsed: Option<Value>,
) -> Result<Vec<u8>, ApiError> {
    let summary = call
        .param("_summary")
        .map(Summary::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid-summary", e.to_string()))?;
    let elements = call
        .param("_elements")
        .map(fhirwall_model::parse_elements)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid-elements", e.to_string()))?;
    if summary.is_none() && elements.is_none() && !call.pretty() {
        return Ok(plain);
    }
    let mut value = match parsed {
        Some(v) => v,
        None => serde_json::from_slice(&plain).map_err(|_| ApiError::internal())?,
    };
    if let Some(info) = resource_type.info() {
        if let Some(summary) = summary {
            if summary == Summary::Count {
                return Err(ApiError::bad_request(
                    "invalid-summary",
                    "_summary=count applies to searches only.",
                ));
            }
            value = fhirwall_model::apply_summary(value, info, summary);
        }
        if let Some(elements) = &elements {
            value = fhirwall_model::apply_elements(value, info, elements);
        }
    }
    Ok(negotiate::fhir_json_bytes(&value, call.pretty()))
}

fn etag_list_matches(value: &str, version: u64) -> bool {
    value.split(',').any(|tag| {
        let tag = tag.trim();
        tag == "*" || parse_etag(tag) == Some(version)
    })
}

fn parse_etag(tag: &str) -> Option<u64> {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.trim_matches('"').parse().ok()
}

fn if_match(call: &Call) -> Result<Option<u64>, ApiError> {
    match call.headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(parse_etag)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-if-match",
                    "If-Match must be an ETag such as W/\"3\".",
                )
            }),
    }
}

fn precondition_failed(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        IssueType::Conflict,
        "precondition-failed",
        message,
    )
}

fn gone(resource_type: &ResourceType) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        IssueType::Deleted,
        "deleted",
        format!("This {resource_type} has been deleted."),
    )
}

// ---------------------------------------------------------------------------------------------
// Reads

async fn read(call: &Call, resource_type: &ResourceType, id: &str) -> Result<Done, Failed> {
    let row = current_version(call, resource_type.as_str(), id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No {resource_type} with this id.")))?;
    if row.is_deleted() {
        return Err(gone(resource_type).into());
    }
    respond_with_version(call, resource_type, &row).await
}

async fn respond_with_version(
    call: &Call,
    resource_type: &ResourceType,
    row: &StoredVersion,
) -> Result<Done, Failed> {
    let entity = format!("{resource_type}/{}/_history/{}", row.id, row.version);
    let plain = open_version(call, row)?;
    let patients = if resource_type.as_str() == "Patient" {
        vec![format!("Patient/{}", row.id)]
    } else {
        let parsed: Value = serde_json::from_slice(&plain).map_err(|_| ApiError::internal())?;
        patients_of(resource_type, &row.id, &parsed)
    };
    let detail = AuditDetail {
        entities: vec![entity],
        patients,
        ..AuditDetail::default()
    };
    let not_modified = call
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_list_matches(v, row.version))
        || (!call.headers.contains_key(header::IF_NONE_MATCH)
            && call
                .headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .and_then(|since| since.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|since| {
                    row.last_updated_micros / 1_000_000 <= since.as_secs() as i64
                }));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let bytes = render(call, resource_type, plain, None).map_err(|e| Failed {
            error: e,
            detail: detail.clone(),
        })?;
        fhir_bytes(StatusCode::OK, bytes)
    };
    version_headers(&mut response, row.version, row.last_updated_micros);
    Ok(Done {
        response,
        audit: Some(detail),
    })
}

async fn vread(
    call: &Call,
    resource_type: &ResourceType,
    id: &str,
    vid: &str,
) -> Result<Done, Failed> {
    let version: u64 = vid
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::not_found("No such version."))?;
    let row = call
        .state
        .inner
        .store
        .read_version(call.tenant(), resource_type.as_str(), id, version)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("No such version."))?;
    if row.is_deleted() {
        let mut error = gone(resource_type);
        error.outcome.message = "This version records a deletion.".into();
        return Err(error.into());
    }
    respond_with_version(call, resource_type, &row).await
}

// ---------------------------------------------------------------------------------------------
// Writes

/// Everything needed to store one new version.
struct NewVersion {
    resource_type: ResourceType,
    id: String,
    version: u64,
    method: Method,
    expect: Expect,
    guard: Option<NoMatchGuard>,
    body: Option<Map<String, Value>>,
}

struct Written {
    version: u64,
    micros: i64,
    stored: Option<Vec<u8>>,
    /// What validation warned about, for `Prefer: return=OperationOutcome`.
    warnings: Vec<OperationOutcome>,
}

/// The current version of a resource (deleted ones included), as the store has it.
async fn current_version(
    call: &Call,
    resource_type: &str,
    id: &str,
) -> Result<Option<StoredVersion>, ApiError> {
    call.state
        .inner
        .store
        .read_current(call.tenant(), resource_type, id)
        .await
        .map_err(ApiError::from)
}

/// Seals the version and its audit record and hands both to the store in one write.
async fn commit(call: &Call, new: NewVersion) -> Result<Result<Written, WriteConflict>, ApiError> {
    let micros = call.state.inner.clock.now_micros();
    let validation = &call.state.inner.validation;
    let is_structure_definition = new.resource_type.as_str() == "StructureDefinition";
    let mut profile = None;
    let mut warnings = Vec::new();
    let (stored, terms, patients) = match new.body {
        Some(map) => {
            // Nothing is sealed, stored or audited as written unless it is valid.
            let unstamped = Value::Object(map);
            warnings = validation.check_write(&unstamped, new.method == Method::Patch)?;
            if is_structure_definition {
                profile = validation.prepare_profile(&unstamped)?;
            }
            let Value::Object(map) = unstamped else {
                return Err(ApiError::internal());
            };
            let value = stamp(map, &new.resource_type, &new.id, new.version, micros);
            let terms = identifier_terms(call, &new.resource_type, &value);
            let patients = patients_of(&new.resource_type, &new.id, &value);
            (
                Some(negotiate::fhir_json_bytes(&value, false)),
                terms,
                patients,
            )
        }
        None => (None, Vec::new(), Vec::new()),
    };
    let sealed = match &stored {
        Some(bytes) => Some(call.state.inner.envelope.seal(
            &AadContext::Resource {
                tenant: call.tenant(),
                resource_type: new.resource_type.as_str(),
                id: &new.id,
                version: new.version,
            },
            bytes,
        )?),
        None => None,
    };
    let status = if new.method == Method::Create || new.expect == Expect::Absent {
        201
    } else if new.method == Method::Delete {
        204
    } else {
        200
    };
    let subtype = match new.method {
        Method::Create => "create",
        Method::Update => "update",
        Method::Patch => "patch",
        Method::Delete => "delete",
    };
    let action = match new.method {
        Method::Create => "C",
        Method::Update | Method::Patch => "U",
        Method::Delete => "D",
    };
    let record = audit_trail::record(
        &call.state,
        &call.who,
        EventKind::Rest,
        AuditDetail {
            subtype,
            action,
            entities: vec![format!(
                "{}/{}/_history/{}",
                new.resource_type, new.id, new.version
            )],
            patients,
            query: call.raw_query.clone(),
        },
        status,
        None,
    );
    let audit = audit_trail::seal(&call.state, &record)?;
    let outcome = call
        .state
        .inner
        .store
        .write(WriteRequest {
            version: StoredVersion {
                tenant: call.tenant().to_string(),
                resource_type: new.resource_type.as_str().to_string(),
                id: new.id.clone(),
                version: new.version,
                last_updated_micros: micros,
                method: new.method,
                sealed_body: sealed,
                seq: 0,
            },
            expect: new.expect,
            guard: new.guard,
            index_terms: terms,
            audit,
        })
        .await?;
    if outcome.is_ok() && is_structure_definition {
        match profile {
            Some(profile) => validation.register(&new.id, profile),
            None => validation.unregister(&new.id),
        }
    }
    Ok(outcome.map(|_| Written {
        version: new.version,
        micros,
        stored,
        warnings,
    }))
}

/// The answer to a successful write, shaped by `Prefer: return=`.
fn write_response(
    call: &Call,
    resource_type: &ResourceType,
    id: &str,
    written: &Written,
    created: bool,
) -> Result<Response, ApiError> {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = match negotiate::return_preference(&call.headers) {
        ReturnPreference::Minimal => status.into_response(),
        ReturnPreference::OperationOutcome => {
            let message = if created {
                "The resource was created."
            } else {
                "The resource was updated."
            };
            let mut outcome =
                OperationOutcome::information(if created { "created" } else { "updated" }, message);
            outcome.more = written.warnings.clone();
            fhir_json(
                status,
                &outcome.to_json(&call.who.request_id),
                call.pretty(),
            )
        }
        ReturnPreference::Representation => {
            let plain = written.stored.clone().unwrap_or_default();
            let bytes = if call.pretty() {
                let v: Value = serde_json::from_slice(&plain).map_err(|_| ApiError::internal())?;
                negotiate::fhir_json_bytes(&v, true)
            } else {
                plain
            };
            fhir_bytes(status, bytes)
        }
    };
    version_headers(&mut response, written.version, written.micros);
    let location = format!(
        "{}/{resource_type}/{id}/_history/{}",
        call.state.fhir_base(),
        written.version
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        if created {
            response.headers_mut().insert(header::LOCATION, v.clone());
        }
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

async fn create(call: &Call, resource_type: &ResourceType, body: Body) -> Result<Done, Failed> {
    let map = read_resource(call, resource_type, body).await?;
    let mut guard = None;
    if let Some(condition) = call.headers.get("if-none-exist") {
        let condition = condition.to_str().map_err(|_| {
            ApiError::bad_request("invalid-condition", "If-None-Exist is not readable.")
        })?;
        let condition = condition.split_once('?').map_or(condition, |(_, q)| q);
        let params: Vec<(String, String)> = form_urlencoded::parse(condition.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let criteria = parse_conditional_criteria(call, resource_type, &params, "create")?;
        let matches = find(call, resource_type, &criteria, None, 2).await?;
        match matches.as_slice() {
            [] => {}
            [existing] => {
                // Nothing is written, but an invalid body is still the client's error to hear
                // about, whether or not a match exists.
                let _warnings = call
                    .state
                    .inner
                    .validation
                    .check_write(&Value::Object(map.clone()), false)?;
                return existing_match(call, resource_type, existing);
            }
            _ => {
                return Err(
                    precondition_failed("More than one resource matches If-None-Exist.").into(),
                );
            }
        }
        // A create always gets a new server id, so an `_id` criterion that matched nothing
        // stays unmatched; identifier criteria are re-checked at commit time by the guard.
        let terms: Vec<IndexTerm> = criteria
            .identifier_terms
            .iter()
            .filter_map(|alts| alts.first().copied())
            .collect();
        if !terms.is_empty() {
            guard = Some(NoMatchGuard { terms });
        }
    }
    for _ in 0..WRITE_ATTEMPTS {
        let id = uuid::Uuid::now_v7().to_string();
        let outcome = commit(
            call,
            NewVersion {
                resource_type: resource_type.clone(),
                id: id.clone(),
                version: 1,
                method: Method::Create,
                expect: Expect::Absent,
                guard: guard.clone(),
                body: Some(map.clone()),
            },
        )
        .await?;
        match outcome {
            Ok(written) => {
                let response = write_response(call, resource_type, &id, &written, true)?;
                return Ok(Done {
                    response,
                    audit: None,
                });
            }
            Err(WriteConflict::GuardMatched { ids }) => {
                // Another request created a match between our search and our commit.
                if let [only] = ids.as_slice() {
                    let existing = current_version(call, resource_type.as_str(), only).await?;
                    if let Some(existing) = existing {
                        return existing_match(call, resource_type, &existing);
                    }
                }
                return Err(
                    precondition_failed("More than one resource matches If-None-Exist.").into(),
                );
            }
            Err(WriteConflict::VersionMismatch { .. }) => continue,
        }
    }
    Err(ApiError::internal().into())
}

/// Conditional create found its match: 200 with the existing resource, nothing written.
fn existing_match(
    call: &Call,
    resource_type: &ResourceType,
    existing: &StoredVersion,
) -> Result<Done, Failed> {
    let plain = open_version(call, existing)?;
    let parsed: Value = serde_json::from_slice(&plain).map_err(|_| ApiError::internal())?;
    let patients = patients_of(resource_type, &existing.id, &parsed);
    let mut response = match negotiate::return_preference(&call.headers) {
        ReturnPreference::Minimal => StatusCode::OK.into_response(),
        ReturnPreference::OperationOutcome => fhir_json(
            StatusCode::OK,
            &OperationOutcome::information(
                "exists",
                "A matching resource exists; nothing was created.",
            )
            .to_json(&call.who.request_id),
            call.pretty(),
        ),
        ReturnPreference::Representation => fhir_bytes(
            StatusCode::OK,
            render(call, resource_type, plain, Some(parsed))?,
        ),
    };
    version_headers(
        &mut response,
        existing.version,
        existing.last_updated_micros,
    );
    let location = format!(
        "{}/{resource_type}/{}/_history/{}",
        call.state.fhir_base(),
        existing.id,
        existing.version
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(Done {
        response,
        audit: Some(AuditDetail {
            entities: vec![format!(
                "{resource_type}/{}/_history/{}",
                existing.id, existing.version
            )],
            patients,
            ..AuditDetail::default()
        }),
    })
}

async fn update(
    call: &Call,
    claims: &AccessClaims,
    resource_type: &ResourceType,
    id: &str,
    body: Body,
) -> Result<Done, Failed> {
    let map = read_resource(call, resource_type, body).await?;
    match map.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "id-mismatch",
                "The body's id does not match the id in the URL.",
            )
            .with_expression(format!("{resource_type}.id"))
            .into());
        }
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                IssueType::Required,
                "missing-id",
                "An update must carry the resource id in the body.",
            )
            .with_expression(format!("{resource_type}.id"))
            .into());
        }
    }
    let expected = if_match(call)?;
    write_version(
        call,
        Some(claims),
        resource_type,
        id,
        expected,
        None,
        |_| Ok(map.clone()),
    )
    .await
}

/// The read-check-write loop shared by update, patch and conditional update: looks at the
/// current version, builds the new body from it, and commits only if nothing changed meanwhile.
async fn write_version(
    call: &Call,
    claims: Option<&AccessClaims>,
    resource_type: &ResourceType,
    id: &str,
    expected: Option<u64>,
    guard: Option<NoMatchGuard>,
    build: impl Fn(Option<&Value>) -> Result<Map<String, Value>, ApiError>,
) -> Result<Done, Failed> {
    let is_patch = call.method == http::Method::PATCH;
    let _queue = call.state.lock_resource(resource_type.as_str(), id).await;
    for _ in 0..WRITE_ATTEMPTS {
        let current = current_version(call, resource_type.as_str(), id).await?;
        if let Some(expected) = expected {
            match &current {
                Some(row) if row.version == expected && !row.is_deleted() => {}
                _ => {
                    return Err(precondition_failed(
                        "The resource has changed since the version in If-Match.",
                    )
                    .into());
                }
            }
        }
        let creating = current.as_ref().is_none_or(StoredVersion::is_deleted);
        if creating && is_patch {
            return Err(match current {
                None => ApiError::not_found(format!("No {resource_type} with this id.")),
                Some(_) => gone(resource_type),
            }
            .into());
        }
        if current.is_none()
            && !claims.is_some_and(|c| c.scopes.allows_system(resource_type.as_str(), Perm::Create))
        {
            return Err(ApiError::forbidden(format!(
                "The access token's scopes do not allow create on {resource_type}."
            ))
            .into());
        }
        let current_value = match &current {
            Some(row) if !row.is_deleted() && is_patch => {
                let plain = open_version(call, row)?;
                Some(serde_json::from_slice::<Value>(&plain).map_err(|_| ApiError::internal())?)
            }
            _ => None,
        };
        let body = build(current_value.as_ref())?;
        let (version, expect) = match &current {
            None => (1, Expect::Absent),
            Some(row) => (row.version + 1, Expect::Current(row.version)),
        };
        let outcome = commit(
            call,
            NewVersion {
                resource_type: resource_type.clone(),
                id: id.to_string(),
                version,
                method: if is_patch {
                    Method::Patch
                } else {
                    Method::Update
                },
                expect,
                guard: guard.clone(),
                body: Some(body),
            },
        )
        .await?;
        match outcome {
            Ok(written) => {
                let created = current.is_none();
                let response = write_response(call, resource_type, id, &written, created)?;
                return Ok(Done {
                    response,
                    audit: None,
                });
            }
            Err(WriteConflict::VersionMismatch { .. }) if expected.is_some() => {
                return Err(precondition_failed(
                    "The resource has changed since the version in If-Match.",
                )
                .into());
            }
            Err(WriteConflict::VersionMismatch { .. }) => continue,
            Err(WriteConflict::GuardMatched { .. }) => {
                return Err(precondition_failed(
                    "A resource matching the condition appeared meanwhile; retry.",
                )
                .into());
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        IssueType::Conflict,
        "write-contention",
        "The resource is being changed by others; retry.",
    )
    .into())
}

async fn patch(
    call: &Call,
    resource_type: &ResourceType,
    id: &str,
    body: Body,
) -> Result<Done, Failed> {
    negotiate::check_content_type(&call.headers, true)?;
    let bytes = read_body(call, body).await?;
    let patch_doc = parse_json(call, &bytes)?;
    if !patch_doc.is_array() {
        return Err(ApiError::bad_request(
            "invalid-patch",
            "A JSON Patch document is an array of operations.",
        )
        .into());
    }
    let expected = if_match(call)?;
    let type_for_check = resource_type.clone();
    let id_owned = id.to_string();
    // Patch never creates, so there is no create permission to check.
    write_version(
        call,
        None,
        resource_type,
        id,
        expected,
        None,
        move |current| {
            let current = current.ok_or_else(ApiError::internal)?;
            let patched = fhirwall_model::apply_json_patch(current, &patch_doc).map_err(|e| {
                let status = if matches!(e, fhirwall_model::PatchError::TestFailed { .. }) {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::BAD_REQUEST
                };
                ApiError::new(status, IssueType::Processing, "patch-failed", e.to_string())
            })?;
            let Value::Object(map) = patched else {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    IssueType::Processing,
                    "patch-failed",
                    "The patch did not leave a resource.",
                ));
            };
            check_resource_shape(&map, &type_for_check).map_err(|mut e| {
                e.status = StatusCode::UNPROCESSABLE_ENTITY;
                e
            })?;
            if map.get("id").and_then(Value::as_str) != Some(id_owned.as_str()) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    IssueType::Processing,
                    "patch-changed-id",
                    "A patch may not change or remove the resource id.",
                ));
            }
            Ok(map)
        },
    )
    .await
}

async fn delete(
    call: &Call,
    resource_type: &ResourceType,
    id: &str,
    known: Option<StoredVersion>,
) -> Result<Done, Failed> {
    let expected = if_match(call)?;
    let mut known = known;
    let _queue = call.state.lock_resource(resource_type.as_str(), id).await;
    for _ in 0..WRITE_ATTEMPTS {
        let current = match known.take() {
            Some(row) => Some(row),
            None => current_version(call, resource_type.as_str(), id).await?,
        };
        if let Some(expected) = expected
            && current
                .as_ref()
                .is_none_or(|r| r.version != expected || r.is_deleted())
        {
            return Err(precondition_failed(
                "The resource has changed since the version in If-Match.",
            )
            .into());
        }
        let Some(row) = current.filter(|r| !r.is_deleted()) else {
            // Deleting what is absent or already deleted succeeds and changes nothing.
            return Ok(Done {
                response: StatusCode::NO_CONTENT.into_response(),
                audit: Some(AuditDetail::default()),
            });
        };
        let outcome = commit(
            call,
            NewVersion {
                resource_type: resource_type.clone(),
                id: id.to_string(),
                version: row.version + 1,
                method: Method::Delete,
                expect: Expect::Current(row.version),
                guard: None,
                body: None,
            },
        )
        .await?;
        match outcome {
            Ok(written) => {
                let mut response = match negotiate::return_preference(&call.headers) {
                    ReturnPreference::OperationOutcome => fhir_json(
                        StatusCode::OK,
                        &OperationOutcome::information("deleted", "The resource was deleted.")
                            .to_json(&call.who.request_id),
                        call.pretty(),
                    ),
                    _ => StatusCode::NO_CONTENT.into_response(),
                };
                version_headers(&mut response, written.version, written.micros);
                return Ok(Done {
                    response,
                    audit: None,
                });
            }
            Err(WriteConflict::VersionMismatch { .. }) if expected.is_some() => {
                return Err(precondition_failed(
                    "The resource has changed since the version in If-Match.",
                )
                .into());
            }
            Err(_) => continue,
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        IssueType::Conflict,
        "write-contention",
        "The resource is being changed by others; retry.",
    )
    .into())
}

fn conditional_params(call: &Call) -> Vec<(String, String)> {
    call.params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .cloned()
        .collect()
}

async fn conditional_update(
    call: &Call,
    claims: &AccessClaims,
    resource_type: &ResourceType,
    body: Body,
) -> Result<Done, Failed> {
    let params = conditional_params(call);
    let criteria = parse_conditional_criteria(call, resource_type, &params, "update")?;
    let map = read_resource(call, resource_type, body).await?;
    let body_id = map.get("id").and_then(Value::as_str).map(str::to_string);
    let matches = find(call, resource_type, &criteria, None, 2).await?;
    let expected = if_match(call)?;
    match matches.as_slice() {
        [] => {
            let id = match (&criteria.id, &body_id) {
                (Some(cid), Some(bid)) if cid != bid => {
                    return Err(ApiError::bad_request(
                        "id-mismatch",
                        "The body's id does not match the _id criterion.",
                    )
                    .into());
                }
                (Some(cid), _) => cid.clone(),
                (None, Some(bid)) => bid.clone(),
                (None, None) => uuid::Uuid::now_v7().to_string(),
            };
            let terms: Vec<IndexTerm> = criteria
                .identifier_terms
                .iter()
                .filter_map(|a| a.first().copied())
                .collect();
            let guard = (!terms.is_empty()).then_some(NoMatchGuard { terms });
            let mut map = map;
            map.insert("id".into(), Value::String(id.clone()));
            write_version(
                call,
                Some(claims),
                resource_type,
                &id,
                expected,
                guard,
                |_| Ok(map.clone()),
            )
            .await
        }
        [one] => {
            if body_id.as_deref().is_some_and(|b| b != one.id) {
                return Err(ApiError::bad_request(
                    "id-mismatch",
                    "The body's id does not match the resource the condition found.",
                )
                .into());
            }
            let mut map = map;
            map.insert("id".into(), Value::String(one.id.clone()));
            let expected = expected.or(Some(one.version));

            write_version(
                call,
                Some(claims),
                resource_type,
                &one.id,
                expected,
                None,
                |_| Ok(map.clone()),
            )
            .await
        }
        _ => Err(precondition_failed("More than one resource matches the condition.").into()),
    }
}

async fn conditional_delete(call: &Call, resource_type: &ResourceType) -> Result<Done, Failed> {
    let params = conditional_params(call);
    let criteria = parse_conditional_criteria(call, resource_type, &params, "delete")?;
    let matches = find(call, resource_type, &criteria, None, 2).await?;
    match matches.as_slice() {
        [] => Ok(Done {
            response: StatusCode::NO_CONTENT.into_response(),
            audit: Some(AuditDetail::default()),
        }),
        [one] => delete(call, resource_type, &one.id.clone(), Some(one.clone())).await,
        _ => Err(precondition_failed("More than one resource matches the condition.").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Search and history

fn page_size(call: &Call) -> Result<usize, ApiError> {
    match call.param("_count") {
        None => Ok(DEFAULT_PAGE),
        Some(v) => v.parse::<usize>().map(|n| n.min(MAX_PAGE)).map_err(|_| {
            ApiError::bad_request("invalid-count", "_count must be a non-negative integer.")
        }),
    }
}

fn cursor(call: &Call) -> Result<Option<u64>, ApiError> {
    call.param("_cursor")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request("invalid-cursor", "The paging cursor is not valid.")
            })
        })
        .transpose()
}

/// A link URL with the request's own parameters, the cursor replaced.
fn link(call: &Call, path: &str, cursor: Option<u64>, ignored: &[String]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &call.params {
        if k != "_cursor" && !ignored.contains(k) {
            serializer.append_pair(k, v);
        }
    }
    if let Some(c) = cursor {
        serializer.append_pair("_cursor", &c.to_string());
    }
    let query = serializer.finish();
    if query.is_empty() {
        format!("{}{path}", call.state.fhir_base())
    } else {
        format!("{}{path}?{query}", call.state.fhir_base())
    }
}

async fn search(call: &Call, resource_type: &ResourceType) -> Result<Done, Failed> {
    // FHIR's default is to ignore search parameters the server does not support (and leave
    // them out of the self link); `Prefer: handling=strict` asks for an error instead.
    // Conditional interactions are always strict: ignoring a criterion would widen the match.
    let lenient = !negotiate::prefers_strict_handling(&call.headers);
    let criteria = parse_criteria(call, resource_type, &call.params, true, lenient)?;
    let count = page_size(call)?;
    let after = cursor(call)?;
    let summary_count = call.param("_summary") == Some("count");
    let limit = if summary_count { 10_000 } else { count + 1 };
    let mut rows = find(call, resource_type, &criteria, after, limit).await?;
    let path = format!("/{resource_type}");
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
    });
    let mut links =
        vec![json!({"relation": "self", "url": link(call, &path, after, &criteria.ignored)})];
    if summary_count {
        put(&mut bundle, "total", json!(rows.len()));
        put(&mut bundle, "link", Value::Array(links));
        return Ok(Done {
            response: fhir_json(StatusCode::OK, &bundle, call.pretty()),
            audit: Some(AuditDetail::default()),
        });
    }
    let has_more = rows.len() > count;
    rows.truncate(count);
    if has_more {
        if let Some(last) = rows.last() {
            links.push(json!({"relation": "next", "url": link(call, &path, Some(last.seq), &criteria.ignored)}));
        }
    } else if after.is_none() {
        put(&mut bundle, "total", json!(rows.len()));
    }
    let mut entries = Vec::new();
    let mut detail = AuditDetail::default();
    for row in &rows {
        let plain = open_version(call, row)?;
        let parsed: Value = serde_json::from_slice(&plain).map_err(|_| ApiError::internal())?;
        detail
            .patients
            .extend(patients_of(resource_type, &row.id, &parsed));
        detail.entities.push(format!(
            "{resource_type}/{}/_history/{}",
            row.id, row.version
        ));
        let rendered = render(call, resource_type, plain, Some(parsed))?;
        let resource: Value =
            serde_json::from_slice(&rendered).map_err(|_| ApiError::internal())?;
        entries.push(json!({
            "fullUrl": format!("{}/{resource_type}/{}", call.state.fhir_base(), row.id),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    detail.patients.sort();
    detail.patients.dedup();
    put(&mut bundle, "link", Value::Array(links));
    put(&mut bundle, "entry", Value::Array(entries));
    Ok(Done {
        response: fhir_json(StatusCode::OK, &bundle, call.pretty()),
        audit: Some(detail),
    })
}

fn parse_since(value: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid-since",
            "_since must be a FHIR instant such as 2024-01-01T00:00:00Z.",
        )
    };
    let rfc3339 = time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(value, &rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| bad());
    }
    // A date alone means the start of that day in UTC.
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(value, &date_format).map_err(|_| bad())?;
    let t = date.midnight().assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| bad())
}

async fn history(
    call: &Call,
    resource_type: Option<&ResourceType>,
    id: Option<&str>,
) -> Result<Done, Failed> {
    for (name, _) in &call.params {
        if !matches!(
            name.as_str(),
            "_count" | "_since" | "_cursor" | "_format" | "_pretty" | "_summary" | "_elements"
        ) {
            return Err(ApiError::bad_request(
                "unknown-history-parameter",
                "History takes _count, _since and the paging cursor only.",
            )
            .into());
        }
    }
    let count = page_size(call)?;
    let since = call.param("_since").map(parse_since).transpose()?;
    let before = cursor(call)?;
    if let (Some(t), Some(id)) = (resource_type, id) {
        let exists = current_version(call, t.as_str(), id).await?;
        if exists.is_none() {
            return Err(ApiError::not_found(format!("No {t} with this id.")).into());
        }
    }
    let mut rows = call
        .state
        .inner
        .store
        .history(HistoryQuery {
            tenant: call.tenant().to_string(),
            resource_type: resource_type.map(|t| t.as_str().to_string()),
            id: id.map(str::to_string),
            since_micros: since,
            before_seq: before,
            limit: count + 1,
        })
        .await
        .map_err(ApiError::from)?;
    let has_more = rows.len() > count;
    rows.truncate(count);
    let path = match (resource_type, id) {
        (Some(t), Some(id)) => format!("/{t}/{id}/_history"),
        (Some(t), None) => format!("/{t}/_history"),
        _ => "/_history".to_string(),
    };
    let mut links = vec![json!({"relation": "self", "url": link(call, &path, before, &[])})];
    if has_more && let Some(last) = rows.last() {
        links.push(json!({"relation": "next", "url": link(call, &path, Some(last.seq), &[])}));
    }
    let mut entries = Vec::new();
    let mut detail = AuditDetail::default();
    for row in &rows {
        let row_type = ResourceType::parse(&row.resource_type).map_err(|_| ApiError::internal())?;
        let full_url = format!(
            "{}/{}/{}",
            call.state.fhir_base(),
            row.resource_type,
            row.id
        );
        let (method, url, status) = match row.method {
            Method::Create => ("POST", row.resource_type.clone(), "201 Created"),
            Method::Update if row.version == 1 => (
                "PUT",
                format!("{}/{}", row.resource_type, row.id),
                "201 Created",
            ),
            Method::Update => ("PUT", format!("{}/{}", row.resource_type, row.id), "200 OK"),
            Method::Patch => (
                "PATCH",
                format!("{}/{}", row.resource_type, row.id),
                "200 OK",
            ),
            Method::Delete => (
                "DELETE",
                format!("{}/{}", row.resource_type, row.id),
                "204 No Content",
            ),
        };
        let mut entry = json!({
            "fullUrl": full_url,
            "request": {"method": method, "url": url},
            "response": {
                "status": status,
                "etag": format!("W/\"{}\"", row.version),
                "lastModified": format_instant(row.last_updated_micros),
            },
        });
        if !row.is_deleted() {
            let plain = open_version(call, row)?;
            let parsed: Value = serde_json::from_slice(&plain).map_err(|_| ApiError::internal())?;
            detail
                .patients
                .extend(patients_of(&row_type, &row.id, &parsed));
            let rendered = render(call, &row_type, plain, Some(parsed))?;
            let resource = serde_json::from_slice(&rendered).map_err(|_| ApiError::internal())?;
            put(&mut entry, "resource", resource);
        }
        detail.entities.push(format!(
            "{}/{}/_history/{}",
            row.resource_type, row.id, row.version
        ));
        entries.push(entry);
    }
    detail.patients.sort();
    detail.patients.dedup();
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "history",
        "link": links,
        "entry": entries,
    });
    Ok(Done {
        response: fhir_json(StatusCode::OK, &bundle, call.pretty()),
        audit: Some(detail),
    })
}

// ---------------------------------------------------------------------------------------------
// $validate

/// What `$validate` was asked: a resource (or none for mode delete), a mode, profiles.
struct ValidateRequest {
    resource: Option<Value>,
    mode: Option<String>,
    profiles: Vec<String>,
}

/// Reads `$validate`'s inputs from the query and the body: either the resource itself or a
/// Parameters resource with `resource`, `mode` and `profile`.
async fn validate_request(
    call: &Call,
    resource_type: &ResourceType,
    body: Body,
) -> Result<ValidateRequest, ApiError> {
    let mut request = ValidateRequest {
        resource: None,
        mode: call.param("mode").map(str::to_string),
        profiles: call
            .params
            .iter()
            .filter(|(k, _)| k == "profile")
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let bytes = if call.method == http::Method::POST {
        read_body(call, body).await?
    } else {
        bytes::Bytes::new()
    };
    if bytes.is_empty() {
        return Ok(request);
    }
    let format = negotiate::check_content_type(&call.headers, false)?;
    let value = parse_body(call, &bytes, format)?;
    let is_parameters = value.get("resourceType").and_then(Value::as_str) == Some("Parameters")
        && resource_type.as_str() != "Parameters";
    if !is_parameters {
        request.resource = Some(value);
        return Ok(request);
    }
    let mut value = value;
    let parameters = match value.get_mut("parameter").map(Value::take) {
        Some(Value::Array(parameters)) => parameters,
        _ => Vec::new(),
    };
    for mut parameter in parameters {
        let name = parameter.get("name").and_then(Value::as_str).unwrap_or("");
        match name {
            "resource" => {
                request.resource = parameter.as_object_mut().and_then(|p| p.remove("resource"));
            }
            "mode" => {
                request.mode = parameter
                    .get("valueCode")
                    .or_else(|| parameter.get("valueString"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            "profile" => {
                if let Some(url) = ["valueCanonical", "valueUri", "valueString"]
                    .iter()
                    .find_map(|k| parameter.get(*k).and_then(Value::as_str))
                {
                    request.profiles.push(url.to_string());
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid-parameter",
                    "$validate takes the parameters resource, mode and profile only.",
                )
                .with_expression("Parameters.parameter.name"));
            }
        }
    }
    Ok(request)
}

/// `$validate`: the outcome of validating a proposed resource (200 with an OperationOutcome
/// whatever it finds; 4xx only when the request itself is wrong). Nothing is stored.
async fn validate_operation(
    call: &Call,
    resource_type: &ResourceType,
    id: Option<&str>,
    body: Body,
) -> Result<Done, Failed> {
    let request = validate_request(call, resource_type, body).await?;
    let mode = request.mode.as_deref();
    match mode {
        None | Some("create" | "profile") => {}
        Some("update" | "delete") if id.is_some() => {}
        Some("update" | "delete") => {
            return Err(ApiError::bad_request(
                "invalid-mode",
                "Modes update and delete apply to an existing resource: use [type]/[id]/$validate.",
            )
            .into());
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid-mode",
                "mode must be create, update, delete or profile.",
            )
            .into());
        }
    }
    let mut detail = AuditDetail::default();
    if let Some(id) = id {
        detail.entities.push(format!("{resource_type}/{id}"));
        let current = current_version(call, resource_type.as_str(), id).await?;
        let exists = current.as_ref().is_some_and(|row| !row.is_deleted());
        if matches!(mode, Some("update" | "delete")) && !exists {
            return Err(Failed {
                error: match current {
                    None => ApiError::not_found(format!("No {resource_type} with this id.")),
                    Some(_) => gone(resource_type),
                },
                detail,
            });
        }
    }
    if mode == Some("delete") {
        let outcome = OperationOutcome::information(
            "valid",
            "Nothing in this server prevents deleting the resource.",
        );
        return Ok(done(
            fhir_json(
                StatusCode::OK,
                &outcome.to_json(&call.who.request_id),
                call.pretty(),
            ),
            detail,
        ));
    }
    let Some(resource) = request.resource else {
        return Err(Failed {
            error: ApiError::new(
                StatusCode::BAD_REQUEST,
                IssueType::Required,
                "missing-resource",
                "$validate needs the resource to validate (the body, or the parameter resource).",
            ),
            detail,
        });
    };
    let mut outcome = call.state.inner.validation.validator.validate(
        &resource,
        &fhirwall_validation::ValidateOptions {
            profiles: request.profiles,
            ..Default::default()
        },
    );
    let body_type = resource.get("resourceType").and_then(Value::as_str);
    let mut extra = Vec::new();
    if body_type.is_some_and(|t| t != resource_type.as_str()) {
        extra.push(
            OperationOutcome::error(
                IssueType::Invalid,
                "resource-type-mismatch",
                format!("The resource is not a {resource_type}."),
            )
            .with_expression("resourceType"),
        );
    }
    if mode == Some("update") && resource.get("id").and_then(Value::as_str) != id {
        extra.push(
            OperationOutcome::error(
                IssueType::Invalid,
                "id-mismatch",
                "For mode update the resource id must match the id in the URL.",
            )
            .with_expression(format!("{resource_type}.id")),
        );
    }
    let mut issues = extra;
    issues.extend(
        std::mem::take(&mut outcome.issues)
            .iter()
            .map(crate::validation::issue_outcome),
    );
    let answer = OperationOutcome::from_issues(issues).unwrap_or_else(|| {
        OperationOutcome::information("valid", "All OK: the resource is valid.")
    });
    Ok(done(
        fhir_json(
            StatusCode::OK,
            &answer.to_json(&call.who.request_id),
            call.pretty(),
        ),
        detail,
    ))
}
