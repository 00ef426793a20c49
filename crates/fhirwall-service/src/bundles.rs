//! History: the versions of a resource, a type or the system, newest first, as Bundles with
//! paging links. (Search lives in `search.rs`.)

use fhirwall_model::{ResourceId, ResourceType, Timestamp};
use fhirwall_store::{HistoryQuery, Method};
use serde_json::{Value, json};

use crate::audit::AuditDetail;
use crate::reads::{check_version, current_version, no_such, open_version, parse_stored, render};
use crate::{Call, Done, Failed, Reply, ServiceError};

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

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
