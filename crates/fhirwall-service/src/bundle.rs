//! Batch and transaction Bundles posted to the base. A batch runs each entry as the request it
//! stands for (each checked, validated and audited on its own; one failing entry fails alone).
//! A transaction resolves the entries' identities first (new ids for creates, conditional
//! creates, updates and deletes by their criteria), rewrites references to other entries
//! (`urn:uuid:` and other `fullUrl`s) and conditional references (`Patient?identifier=...`),
//! prepares every write in the specification's order (DELETE, POST, PUT and PATCH) through the
//! one write pipeline, and hands them to the store as one atomic commit with their audit
//! records and the transaction's own; reads (GET) run after it. A transaction that fails
//! stores nothing and names the entry that failed and why.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use fhirwall_audit::{Action, EventKind};
use fhirwall_model::{IssueType, ResourceId, ResourceType, Timestamp};
use fhirwall_store::{Method, ResourceKey, StoredVersion, TransactionRequest, WriteConflict};
use serde_json::{Map, Value, json};

use crate::audit::{self, AuditDetail};
use crate::pipeline::{NewVersion, Prepared, Written, prepare};
use crate::reads::{current_version, gone, if_match, no_such, open_version, parse_stored};
use crate::writes::{
    check_create_right, check_update_id, conditional_criteria, location, match_condition,
    new_server_id, patched, query_criteria, resource_body, unmatched_update_id,
};
use crate::{
    Call, Conditions, Done, ErrorKind, Failed, Interaction, Reply, Request, ReturnPreference,
    ServiceError, check_scopes,
};

/// Entries a Bundle may hold.
pub const MAX_BUNDLE_ENTRIES: usize = 1000;

pub(crate) async fn system_bundle(call: &Call<'_>) -> Result<Done, Failed> {
    let bundle = match &call.request.body {
        Some(Value::Object(map)) => map,
        _ => {
            return Err(ServiceError::invalid(
                "not-a-bundle",
                "POST to the base takes a Bundle of type batch or transaction.",
            )
            .into());
        }
    };
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ServiceError::invalid(
            "not-a-bundle",
            "POST to the base takes a Bundle of type batch or transaction.",
        )
        .with_expression("resourceType")
        .into());
    }
    let entries = match bundle.get("entry") {
        None => &[][..],
        Some(Value::Array(entries)) => entries.as_slice(),
        Some(_) => {
            return Err(
                ServiceError::invalid("invalid-bundle", "Bundle.entry must be an array.")
                    .with_expression("Bundle.entry")
                    .into(),
            );
        }
    };
    if entries.len() > MAX_BUNDLE_ENTRIES {
        return Err(ServiceError::new(
            ErrorKind::TooLarge,
            IssueType::TooCostly,
            "too-many-entries",
            format!("A Bundle may hold at most {MAX_BUNDLE_ENTRIES} entries; split it."),
        )
        .into());
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some("batch") => batch(call, entries).await,
        Some("transaction") => transaction(call, entries).await,
        _ => Err(ServiceError::invalid(
            "invalid-bundle-type",
            "POST to the base takes a Bundle of type batch or transaction.",
        )
        .with_expression("Bundle.type")
        .into()),
    }
}

/// One entry, read as the request it stands for.
struct Entry {
    index: usize,
    method: String,
    full_url: Option<String>,
    request: Request,
}

fn entry_error(index: usize, error: ServiceError) -> ServiceError {
    let mut error = error;
    error.outcome.message = format!("Bundle entry {index}: {}", error.outcome.message);
    error
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// Reads one entry's request: method, URL (relative to this server), conditional headers and
/// body.
fn parse_entry(call: &Call<'_>, index: usize, entry: &Value) -> Result<Entry, ServiceError> {
    let invalid = |message: &str| {
        ServiceError::invalid("invalid-entry", message.to_string())
            .with_expression(format!("Bundle.entry[{index}].request"))
    };
    let request = entry
        .get("request")
        .ok_or_else(|| invalid("The entry has no request."))?;
    let method =
        text(request, "method").ok_or_else(|| invalid("The entry has no request.method."))?;
    let url = text(request, "url").ok_or_else(|| invalid("The entry has no request.url."))?;
    let routed_method = match method {
        "GET" | "HEAD" => "GET",
        "POST" | "PUT" | "PATCH" | "DELETE" => method,
        _ => {
            return Err(invalid(
                "request.method must be GET, HEAD, POST, PUT, PATCH or DELETE.",
            ));
        }
    };
    let base = format!("{}/", call.service.fhir_base());
    let relative = match url.strip_prefix(&base) {
        Some(rest) => rest,
        None if url.starts_with("http://") || url.starts_with("https://") => {
            return Err(invalid(
                "request.url must name this server's resources (a relative URL).",
            ));
        }
        None => url.trim_start_matches('/'),
    };
    let (path, query) = relative.split_once('?').unwrap_or((relative, ""));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let interaction = Interaction::route(routed_method, &segments)?;
    if interaction == Interaction::Bundle {
        return Err(invalid(
            "A Bundle entry cannot post another Bundle to the base.",
        ));
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let conditions = Conditions {
        if_match: text(request, "ifMatch").map(str::to_string),
        if_none_match: text(request, "ifNoneMatch").map(str::to_string),
        if_modified_since: text(request, "ifModifiedSince")
            .and_then(Timestamp::parse_instant_or_date),
        if_none_exist: text(request, "ifNoneExist").map(str::to_string),
    };
    let body = match &interaction {
        Interaction::Create(_) | Interaction::Update(..) | Interaction::ConditionalUpdate(_) => {
            Some(
                entry
                    .get("resource")
                    .cloned()
                    .ok_or_else(|| invalid("A POST or PUT entry needs its resource."))?,
            )
        }
        Interaction::Patch(..) => Some(patch_document(entry, index)?),
        _ => None,
    };
    let mut sub = Request::new(interaction);
    sub.params = params;
    sub.conditions = conditions;
    sub.return_preference = if call.request.return_stated {
        call.request.return_preference
    } else {
        ReturnPreference::Minimal
    };
    sub.return_stated = true;
    sub.strict_handling = call.request.strict_handling;
    sub.body = body;
    Ok(Entry {
        index,
        method: method.to_string(),
        full_url: text(entry, "fullUrl").map(str::to_string),
        request: sub,
    })
}

/// A PATCH entry carries a FHIRPath Patch as its Parameters resource, or a JSON Patch as a
/// Binary resource (the specification's way to put a non-FHIR body in a Bundle).
fn patch_document(entry: &Value, index: usize) -> Result<Value, ServiceError> {
    let invalid = || {
        ServiceError::invalid(
            "invalid-patch",
            "A PATCH entry carries a Parameters resource (FHIRPath Patch), or a Binary resource with contentType application/json-patch+json and the patch in data.",
        )
        .with_expression(format!("Bundle.entry[{index}].resource"))
    };
    let resource = entry.get("resource").ok_or_else(invalid)?;
    if text(resource, "resourceType") == Some("Parameters") {
        return Ok(resource.clone());
    }
    if text(resource, "resourceType") != Some("Binary")
        || text(resource, "contentType") != Some("application/json-patch+json")
    {
        return Err(invalid());
    }
    let data = text(resource, "data").ok_or_else(invalid)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| invalid())?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if doc.is_array() {
        Ok(doc)
    } else {
        Err(invalid())
    }
}

fn status_line(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    };
    format!("{status} {reason}").trim_end().to_string()
}

/// A Bundle entry's `response` (and resource, when the answer has one) for a reply.
fn reply_entry(call: &Call<'_>, reply: &Reply) -> Value {
    let mut response = Map::new();
    response.insert("status".into(), json!(status_line(reply.status)));
    if let Some(location) = &reply.location {
        let base = format!("{}/", call.service.fhir_base());
        let relative = location.url.strip_prefix(&base).unwrap_or(&location.url);
        response.insert("location".into(), json!(relative));
    }
    if let Some((version, at)) = reply.version {
        response.insert("etag".into(), json!(format!("W/\"{version}\"")));
        response.insert("lastModified".into(), json!(at.to_fhir_instant()));
    }
    let mut entry = Map::new();
    if let Some(resource) = reply
        .body
        .as_deref()
        .and_then(|body| serde_json::from_slice::<Value>(body).ok())
    {
        if text(&resource, "resourceType") == Some("OperationOutcome") {
            response.insert("outcome".into(), resource);
        } else {
            entry.insert("resource".into(), resource);
        }
    }
    entry.insert("response".into(), Value::Object(response));
    Value::Object(entry)
}

fn error_entry(call: &Call<'_>, error: &ServiceError) -> Value {
    json!({
        "response": {
            "status": status_line(error.status()),
            "outcome": error.outcome.to_json(&call.caller.requester.request_id),
        }
    })
}

fn bundle_reply(kind: &str, entries: Vec<Value>) -> Result<Reply, ServiceError> {
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "entry": entries,
    });
    Ok(Reply::json(
        200,
        serde_json::to_vec(&bundle).map_err(|_| ServiceError::internal())?,
    ))
}

/// A batch: every entry on its own, in order, each audited as the request it stands for.
async fn batch(call: &Call<'_>, entries: &[Value]) -> Result<Done, Failed> {
    let service = call.service;
    let mut answers = Vec::with_capacity(entries.len());
    for (index, raw) in entries.iter().enumerate() {
        let answer = match parse_entry(call, index, raw) {
            Err(error) => {
                let error = service.refuse(call.caller, None, &[], error).await;
                error_entry(call, &error)
            }
            Ok(entry) => {
                // Boxed: a batch entry is served by the same `handle` that serves the batch.
                match Box::pin(service.handle(call.caller, entry.request)).await {
                    Ok(reply) => reply_entry(call, &reply),
                    Err(error) => error_entry(call, &error),
                }
            }
        };
        answers.push(answer);
    }
    Ok(Done::audited(
        bundle_reply("batch-response", answers)?,
        AuditDetail::default(),
    ))
}

/// What a transaction entry does to its resource.
enum Plan {
    /// A create (new id), an update, a patch or a delete of one resource.
    Write(ResourceType, ResourceId),
    /// A conditional create whose condition matched: nothing is written.
    Exists(StoredVersion),
    /// A conditional delete that matched nothing: nothing is written.
    Nothing,
    /// A read, search, history or `$validate`, run after the commit.
    Read,
}

/// The specification's processing order: DELETE, POST, PUT and PATCH, then GET.
fn phase(method: &str) -> u8 {
    match method {
        "DELETE" => 0,
        "POST" => 1,
        "PUT" | "PATCH" => 2,
        _ => 3,
    }
}

async fn transaction(call: &Call<'_>, raw_entries: &[Value]) -> Result<Done, Failed> {
    let service = call.service;
    let failed = |index: usize, error: ServiceError| Failed {
        error: entry_error(index, error),
        detail: AuditDetail {
            subtype: "transaction",
            ..AuditDetail::default()
        },
    };
    let mut entries = Vec::with_capacity(raw_entries.len());
    for (index, raw) in raw_entries.iter().enumerate() {
        entries.push(parse_entry(call, index, raw).map_err(|e| failed(index, e))?);
    }
    for entry in &entries {
        check_scopes(call.caller, &entry.request).map_err(|e| failed(entry.index, e))?;
    }

    // Identities: which resource each entry writes, and what other entries call it.
    let mut plans = Vec::with_capacity(entries.len());
    let mut names: HashMap<String, String> = HashMap::new();
    let mut touched: HashSet<(ResourceType, ResourceId)> = HashSet::new();
    for entry in &entries {
        let sub = sub_call(call, &entry.request);
        let plan = identify(&sub, entry)
            .await
            .map_err(|e| failed(entry.index, e))?;
        if let Plan::Write(t, id) = &plan {
            if !touched.insert((t.clone(), id.clone())) {
                return Err(failed(
                    entry.index,
                    ServiceError::invalid(
                        "duplicate-entry",
                        format!("{t}/{id} is written by another entry of this transaction too."),
                    ),
                ));
            }
            if let Some(full_url) = &entry.full_url {
                names.insert(full_url.clone(), format!("{t}/{id}"));
            }
        }
        if let (Plan::Exists(existing), Some(full_url)) = (&plan, &entry.full_url) {
            names.insert(full_url.clone(), existing.key.reference());
        }
        plans.push(plan);
    }

    // References to other entries and conditional references become `Type/id`.
    for entry in &mut entries {
        if let Some(body) = entry.request.body.as_mut()
            && !matches!(entry.request.interaction, Interaction::Patch(..))
        {
            crate::references::resolve_references(call, body, &names)
                .await
                .map_err(|e| failed(entry.index, e))?;
        }
    }

    // Every write prepared through the one pipeline, in the specification's order.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries.get(i).map_or(3, |e| phase(&e.method)));
    let mut prepared: Vec<(usize, Prepared)> = Vec::new();
    let mut answers: Vec<Option<Value>> = vec![None; entries.len()];
    let mut pending = crate::pipeline::Pending::default();
    for (entry, plan) in entries.iter().zip(&plans) {
        if let Plan::Write(t, id) = plan {
            if entry.method == "DELETE" {
                pending.deleted.insert((t.clone(), id.clone()));
            } else {
                pending.written.insert((t.clone(), id.clone()));
            }
        }
    }
    for &index in &order {
        let (Some(entry), Some(plan)) = (entries.get(index), plans.get(index)) else {
            continue;
        };
        let sub = sub_call(call, &entry.request);
        match plan {
            Plan::Write(t, id) => {
                match build(&sub, t, id).await.map_err(|e| failed(index, e))? {
                    Some(new) => {
                        let references = new
                            .body
                            .as_ref()
                            .map(crate::pipeline::local_references)
                            .unwrap_or_default();
                        let ready = prepare(&sub, new).map_err(|e| failed(index, e))?;
                        crate::pipeline::check_references(&sub, &references, &pending)
                            .await
                            .map_err(|e| failed(index, e))?;
                        prepared.push((index, ready));
                    }
                    // Deleting what is absent changes nothing.
                    None => {
                        if let Some(slot) = answers.get_mut(index) {
                            *slot = Some(reply_entry(call, &Reply::status(204)));
                        }
                    }
                }
            }
            Plan::Exists(existing) => {
                let mut reply = Reply::status(200);
                reply.version = Some((
                    existing.version,
                    Timestamp::from_micros(existing.last_updated_micros),
                ));
                reply.location = Some(location(
                    &sub,
                    &existing.key.resource_type,
                    &existing.key.id,
                    existing.version,
                    false,
                ));
                if let Some(slot) = answers.get_mut(index) {
                    *slot = Some(reply_entry(call, &reply));
                }
            }
            Plan::Nothing => {
                if let Some(slot) = answers.get_mut(index) {
                    *slot = Some(reply_entry(call, &Reply::status(204)));
                }
            }
            Plan::Read => {}
        }
    }

    // One commit: every version with its record, and the transaction's own record.
    let mut detail = AuditDetail::of_request(call.request);
    detail.subtype = "transaction";
    detail.action = Some(Action::Execute);
    for (_, ready) in &prepared {
        detail.entities.push(
            ready
                .request
                .version
                .key
                .versioned_reference(ready.request.version.version),
        );
        detail.patients.extend(ready.patients.iter().cloned());
    }
    detail.patients.sort();
    detail.patients.dedup();
    let record = audit::record(
        service,
        &call.caller.requester,
        Some(call.caller),
        EventKind::Rest,
        detail,
        200,
        call.now,
    );
    let transaction_audit = audit::seal(service, &record, call.now)?;
    let mut writes = Vec::with_capacity(prepared.len());
    let mut after = Vec::with_capacity(prepared.len());
    for (index, ready) in prepared {
        let key = ready.request.version.key.clone();
        let method = ready.request.version.method;
        let (request, rest) = ready.split();
        writes.push(request);
        after.push((index, key, method, rest));
    }
    let outcome = service
        .inner
        .store
        .write_all(TransactionRequest {
            writes,
            audit: transaction_audit,
        })
        .await?;
    if let Err(conflict) = outcome {
        let index = after
            .get(conflict.index)
            .map_or(conflict.index, |(index, ..)| *index);
        let error = match conflict.conflict {
            WriteConflict::VersionMismatch { .. } => ServiceError::new(
                ErrorKind::Conflict,
                IssueType::Conflict,
                "write-contention",
                "The resource changed while the transaction was prepared; retry the transaction.",
            ),
            WriteConflict::GuardMatched { .. } => ServiceError::precondition_failed(
                "A resource matching the entry's condition appeared meanwhile; retry the transaction.",
            ),
        };
        return Err(failed(index, error));
    }
    for (index, key, method, rest) in after {
        let (Some(entry), Some(slot)) = (entries.get(index), answers.get_mut(index)) else {
            continue;
        };
        let sub = sub_call(call, &entry.request);
        let written = rest.committed(service);
        *slot = Some(reply_entry(
            call,
            &written_reply(&sub, &key, method, &written)?,
        ));
    }

    // Reads see the committed state; each is audited as the read it is.
    for (index, entry) in entries.into_iter().enumerate() {
        if matches!(plans.get(index), Some(Plan::Read)) {
            let answer = match Box::pin(service.handle(call.caller, entry.request)).await {
                Ok(reply) => reply_entry(call, &reply),
                Err(error) => error_entry(call, &error),
            };
            if let Some(slot) = answers.get_mut(index) {
                *slot = Some(answer);
            }
        }
    }
    let answers = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| json!({"response": {"status": "200 OK"}})))
        .collect();
    Ok(Done::committed(bundle_reply(
        "transaction-response",
        answers,
    )?))
}

/// A Call for one entry: the transaction's caller and instant, the entry's request.
fn sub_call<'a>(call: &'a Call<'_>, request: &'a Request) -> Call<'a> {
    Call {
        service: call.service,
        caller: call.caller,
        now: call.now,
        request,
    }
}

/// Which resource an entry writes, resolving conditional creates, updates and deletes.
async fn identify(sub: &Call<'_>, entry: &Entry) -> Result<Plan, ServiceError> {
    let interaction = &entry.request.interaction;
    // The audit trail is written by the server only, inside a transaction as outside one.
    if interaction.resource_type().map(ResourceType::as_str) == Some("AuditEvent")
        && interaction.action().writes()
    {
        return Err(ServiceError::new(
            ErrorKind::MethodNotAllowed,
            IssueType::NotSupported,
            "audit-read-only",
            "AuditEvent resources are written by the server only; they can be read and searched.",
        ));
    }
    match interaction {
        Interaction::Create(t) => {
            let Some(condition) = &entry.request.conditions.if_none_exist else {
                return Ok(Plan::Write(t.clone(), new_server_id()?));
            };
            let criteria = query_criteria(sub, t, condition)?;
            Ok(
                match match_condition(sub, t, &criteria, "ifNoneExist").await? {
                    None => Plan::Write(t.clone(), new_server_id()?),
                    Some(one) => Plan::Exists(one),
                },
            )
        }
        Interaction::Update(t, id) | Interaction::Patch(t, id) | Interaction::Delete(t, id) => {
            Ok(Plan::Write(t.clone(), id.clone()))
        }
        Interaction::ConditionalUpdate(t) => {
            let criteria = conditional_criteria(sub, t)?;
            let id = match match_condition(sub, t, &criteria, "the condition").await? {
                Some(one) => one.key.id,
                None => {
                    let body_id = entry.request.body.as_ref().and_then(|b| text(b, "id"));
                    unmatched_update_id(&criteria, body_id)?
                }
            };
            Ok(Plan::Write(t.clone(), id))
        }
        Interaction::ConditionalDelete(t) => {
            let criteria = conditional_criteria(sub, t)?;
            Ok(
                match match_condition(sub, t, &criteria, "the condition").await? {
                    None => Plan::Nothing,
                    Some(one) => Plan::Write(t.clone(), one.key.id),
                },
            )
        }
        _ => Ok(Plan::Read),
    }
}

/// The new version an entry makes of `t/id`, from the current one (None: nothing to write).
async fn build(
    sub: &Call<'_>,
    t: &ResourceType,
    id: &ResourceId,
) -> Result<Option<NewVersion>, ServiceError> {
    let interaction = &sub.request.interaction;
    if let Interaction::Create(_) = interaction {
        let mut map = resource_body(sub, t)?.clone();
        map.insert("id".into(), Value::String(id.as_str().to_string()));
        return Ok(Some(NewVersion::after(
            None,
            t,
            id,
            Method::Create,
            Some(map),
        )));
    }
    let current = current_version(sub, t, id).await?;
    if let Some(expected) = if_match(sub)?
        && current
            .as_ref()
            .is_none_or(|row| row.version != expected || row.is_deleted())
    {
        return Err(ServiceError::precondition_failed(
            "The resource has changed since the version in ifMatch.",
        ));
    }
    match interaction {
        Interaction::Update(..) | Interaction::ConditionalUpdate(_) => {
            let mut map = resource_body(sub, t)?.clone();
            if matches!(interaction, Interaction::ConditionalUpdate(_)) {
                if map
                    .get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|b| b != id.as_str())
                {
                    return Err(ServiceError::invalid(
                        "id-mismatch",
                        "The body's id does not match the resource the condition found.",
                    ));
                }
                map.insert("id".into(), Value::String(id.as_str().to_string()));
            }
            check_update_id(&map, t, id)?;
            check_create_right(sub, t, current.as_ref()).map_err(|f| f.error)?;
            Ok(Some(NewVersion::after(
                current.as_ref(),
                t,
                id,
                Method::Update,
                Some(map),
            )))
        }
        Interaction::Patch(..) => {
            let row = match &current {
                None => return Err(no_such(t)),
                Some(row) if row.is_deleted() => return Err(gone(t)),
                Some(row) => row,
            };
            let doc = sub.request.body.clone().unwrap_or(Value::Null);
            let value = parse_stored(&open_version(sub, row)?)?;
            let map = patched(t, id, &value, &doc)?;
            Ok(Some(NewVersion::after(
                Some(row),
                t,
                id,
                Method::Patch,
                Some(map),
            )))
        }
        Interaction::Delete(..) | Interaction::ConditionalDelete(_) => Ok(current
            .as_ref()
            .filter(|row| !row.is_deleted())
            .map(|row| NewVersion::after(Some(row), t, id, Method::Delete, None))),
        _ => Err(ServiceError::internal()),
    }
}

/// The answer for one committed write of a transaction, as a single write would give it.
fn written_reply(
    sub: &Call<'_>,
    key: &ResourceKey,
    method: Method,
    written: &Written,
) -> Result<Reply, ServiceError> {
    let status = if method == Method::Delete {
        204
    } else if written.created {
        201
    } else {
        200
    };
    let mut reply = match (method, sub.request.return_preference) {
        (Method::Delete, _) | (_, ReturnPreference::Minimal) => Reply::status(status),
        (_, ReturnPreference::OperationOutcome) => {
            let mut outcome = fhirwall_model::OperationOutcome::information(
                if written.created {
                    "created"
                } else {
                    "updated"
                },
                if written.created {
                    "The resource was created."
                } else {
                    "The resource was updated."
                },
            );
            outcome.more = written.warnings.clone();
            Reply::json(
                status,
                serde_json::to_vec(&outcome.to_json(&sub.caller.requester.request_id))
                    .map_err(|_| ServiceError::internal())?,
            )
        }
        (_, ReturnPreference::Representation) => {
            Reply::json(status, written.stored.clone().unwrap_or_default())
        }
    };
    reply.version = Some((written.version, written.at));
    if method != Method::Delete {
        reply.location = Some(location(
            sub,
            &key.resource_type,
            &key.id,
            written.version,
            written.created,
        ));
    }
    Ok(reply)
}
