//! Search and history: the matching current versions (through the indexing module's plan) or
//! the versions of a resource, a type or the system, as Bundles with paging links. A search
//! parameter the server does not support is left out of the self link and reported in an
//! OperationOutcome entry (or refused with `Prefer: handling=strict`); nothing is accepted and
//! then silently not applied.

use fhirwall_model::{IssueType, OperationOutcome, ResourceId, ResourceType, Timestamp};
use fhirwall_store::{HistoryQuery, Method, StoredVersion};
use serde_json::{Value, json};

use crate::audit::AuditDetail;
use crate::indexing::{Criteria, CriteriaMode, Indexer};
use crate::reads::{check_version, current_version, no_such, open_version, parse_stored, render};
use crate::{Call, Done, Failed, Reply, ServiceError};

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// `_summary=count` counts at most this many matches.
const MAX_COUNTED: usize = 10_000;

/// Current resources matching the criteria (up to `limit`), in commit order. Each match is
/// confirmed through its current pointer and the pointer's integrity tag (a read the store
/// answers from its cache): a pointer moved back to an older version, or to a live version
/// over a deletion, is refused, not served.
pub(crate) async fn find(
    call: &Call<'_>,
    resource_type: &ResourceType,
    criteria: &Criteria,
    after_seq: Option<u64>,
    limit: usize,
) -> Result<Vec<StoredVersion>, ServiceError> {
    let plan = criteria.plan(call.tenant(), resource_type, after_seq, limit);
    let rows = call.service.inner.store.find_current(plan).await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        check_version(call, &row)?;
        let confirmed = current_version(call, resource_type, &row.key.id).await?;
        match confirmed {
            Some(current) if current.version == row.version => found.push(row),
            // Changed since the plan ran (a concurrent write or delete): the newer state
            // decides on the next search.
            Some(current) if current.version > row.version => {}
            _ => return Err(crate::integrity::tampered("search match", row.seq)),
        }
    }
    Ok(found)
}

fn page_size(call: &Call<'_>) -> Result<usize, ServiceError> {
    match call.param("_count") {
        None => Ok(DEFAULT_PAGE),
        Some(v) => v.parse::<usize>().map(|n| n.min(MAX_PAGE)).map_err(|_| {
            ServiceError::invalid("invalid-count", "_count must be a non-negative integer.")
        }),
    }
}

fn cursor(call: &Call<'_>) -> Result<Option<u64>, ServiceError> {
    call.param("_cursor")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ServiceError::invalid("invalid-cursor", "The paging cursor is not valid.")
            })
        })
        .transpose()
}

/// A link URL with the request's own parameters, the cursor replaced.
fn link(call: &Call<'_>, path: &str, cursor: Option<u64>, ignored: &[String]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &call.request.params {
        if k != "_cursor" && !ignored.contains(k) {
            serializer.append_pair(k, v);
        }
    }
    if let Some(c) = cursor {
        serializer.append_pair("_cursor", &c.to_string());
    }
    let query = serializer.finish();
    let base = call.service.fhir_base();
    if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    }
}

fn bundle_reply(bundle: &Value) -> Result<Reply, ServiceError> {
    Ok(Reply::json(
        200,
        serde_json::to_vec(bundle).map_err(|_| ServiceError::internal())?,
    ))
}

pub(crate) async fn search(call: &Call<'_>, resource_type: &ResourceType) -> Result<Done, Failed> {
    // FHIR's default is to ignore search parameters the server does not support (and say so);
    // `Prefer: handling=strict` asks for an error instead.
    let mode = if call.request.strict_handling {
        CriteriaMode::StrictSearch
    } else {
        CriteriaMode::LenientSearch
    };
    let keys = call.service.tenant_keys(call.tenant())?;
    let indexer = Indexer {
        blind: &keys.blind,
        tenant: call.tenant(),
    };
    let criteria = indexer.criteria(resource_type, &call.request.params, mode)?;
    let count = page_size(call)?;
    let after = cursor(call)?;
    // `_count=0` asks for the total alone, as `_summary=count` does.
    let summary_count = call.param("_summary") == Some("count") || count == 0;
    let limit = if summary_count {
        MAX_COUNTED
    } else {
        count + 1
    };
    let mut rows = find(call, resource_type, &criteria, after, limit).await?;
    let path = format!("/{resource_type}");
    let mut bundle = serde_json::Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    bundle.insert("type".into(), json!("searchset"));
    let mut links =
        vec![json!({"relation": "self", "url": link(call, &path, after, &criteria.ignored)})];
    let mut entries = Vec::new();
    if !criteria.ignored.is_empty() {
        let names: Vec<String> = criteria
            .ignored
            .iter()
            .map(|n| n.chars().take(64).collect())
            .collect();
        let outcome = OperationOutcome {
            severity: fhirwall_model::IssueSeverity::Warning,
            issue_type: IssueType::NotSupported,
            code: "search-parameter-ignored",
            message: format!(
                "These parameters are not supported on {resource_type} and were not applied: {}.",
                names.join(", ")
            ),
            expression: None,
            more: Vec::new(),
        };
        entries.push(json!({
            "resource": outcome.to_json(&call.caller.requester.request_id),
            "search": {"mode": "outcome"},
        }));
    }
    if summary_count {
        bundle.insert("total".into(), json!(rows.len()));
        bundle.insert("link".into(), Value::Array(links));
        if !entries.is_empty() {
            bundle.insert("entry".into(), Value::Array(entries));
        }
        return Ok(Done::audited(
            bundle_reply(&Value::Object(bundle))?,
            AuditDetail::default(),
        ));
    }
    let has_more = rows.len() > count;
    rows.truncate(count);
    if has_more {
        if let Some(last) = rows.last() {
            links.push(json!({"relation": "next", "url": link(call, &path, Some(last.seq), &criteria.ignored)}));
        }
    } else if after.is_none() {
        bundle.insert("total".into(), json!(rows.len()));
    }
    let mut detail = AuditDetail::default();
    for row in &rows {
        let plain = open_version(call, row)?;
        let parsed = parse_stored(&plain)?;
        detail.patients.extend(fhirwall_model::patient_references(
            resource_type,
            row.key.id.as_str(),
            &parsed,
        ));
        detail
            .entities
            .push(row.key.versioned_reference(row.version));
        let rendered = render(call, resource_type, plain, Some(parsed))?;
        let resource = parse_stored(&rendered)?;
        entries.push(json!({
            "fullUrl": format!("{}/{resource_type}/{}", call.service.fhir_base(), row.key.id),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    detail.patients.sort();
    detail.patients.dedup();
    bundle.insert("link".into(), Value::Array(links));
    bundle.insert("entry".into(), Value::Array(entries));
    Ok(Done::audited(bundle_reply(&Value::Object(bundle))?, detail))
}

pub(crate) async fn history(
    call: &Call<'_>,
    resource_type: Option<&ResourceType>,
    id: Option<&ResourceId>,
) -> Result<Done, Failed> {
    for (name, _) in &call.request.params {
        if !matches!(
            name.as_str(),
            "_count" | "_since" | "_cursor" | "_format" | "_pretty" | "_summary" | "_elements"
        ) {
            return Err(ServiceError::invalid(
                "unknown-history-parameter",
                "History takes _count, _since and the paging cursor only.",
            )
            .into());
        }
    }
    let count = page_size(call)?;
    let since = call
        .param("_since")
        .map(|value| {
            Timestamp::parse_instant_or_date(value).ok_or_else(|| {
                ServiceError::invalid(
                    "invalid-since",
                    "_since must be a FHIR instant such as 2024-01-01T00:00:00Z.",
                )
            })
        })
        .transpose()?;
    let before = cursor(call)?;
    if let (Some(t), Some(id)) = (resource_type, id)
        && current_version(call, t, id).await?.is_none()
    {
        return Err(no_such(t).into());
    }
    let mut rows = call
        .service
        .inner
        .store
        .history(HistoryQuery {
            tenant: call.tenant().clone(),
            resource_type: resource_type.cloned(),
            id: id.cloned(),
            since_micros: since.map(Timestamp::micros),
            before_seq: before,
            limit: count + 1,
        })
        .await?;
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
    let base = call.service.fhir_base();
    for row in &rows {
        check_version(call, row)?;
        let row_type = &row.key.resource_type;
        let reference = row.key.reference();
        let (method, url, status) = match row.method {
            Method::Create => ("POST", row_type.as_str().to_string(), "201 Created"),
            Method::Update if row.version == 1 => ("PUT", reference.clone(), "201 Created"),
            Method::Update => ("PUT", reference.clone(), "200 OK"),
            Method::Patch => ("PATCH", reference.clone(), "200 OK"),
            Method::Delete => ("DELETE", reference.clone(), "204 No Content"),
        };
        let mut entry = json!({
            "fullUrl": format!("{base}/{reference}"),
            "request": {"method": method, "url": url},
            "response": {
                "status": status,
                "etag": format!("W/\"{}\"", row.version),
                "lastModified": Timestamp::from_micros(row.last_updated_micros).to_fhir_instant(),
            },
        });
        if !row.is_deleted() {
            let plain = open_version(call, row)?;
            let parsed = parse_stored(&plain)?;
            detail.patients.extend(fhirwall_model::patient_references(
                row_type,
                row.key.id.as_str(),
                &parsed,
            ));
            let rendered = render(call, row_type, plain, Some(parsed))?;
            if let Some(map) = entry.as_object_mut() {
                map.insert("resource".into(), parse_stored(&rendered)?);
            }
        }
        detail
            .entities
            .push(row.key.versioned_reference(row.version));
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
    Ok(Done::audited(bundle_reply(&bundle)?, detail))
}
