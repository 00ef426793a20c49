//! The CapabilityStatement, generated from what this server really implements, and the
//! read-only AuditEvent API over the audit trail.

use fhirwall_model::IssueType;
use http::StatusCode;
use serde_json::{Value, json};

use crate::audit_trail::{self, AuditDetail};
use crate::error::ApiError;
use crate::state::AppState;

fn has_identifier_param(type_name: &str) -> bool {
    fhirwall_model::generated::SEARCH_PARAMS
        .iter()
        .any(|p| p.name == "identifier" && p.bases.contains(&type_name))
}

pub(crate) fn capability_statement(state: &AppState) -> Value {
    let base = state.fhir_base();
    let mut resources = Vec::new();
    for info in fhirwall_model::generated::RESOURCE_TYPES {
        let mut search_params = vec![json!({
            "name": "_id", "type": "token",
            "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"
        })];
        if info.name == "AuditEvent" {
            resources.push(json!({
                "type": "AuditEvent",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "versioning": "no-version",
                "readHistory": false,
                "updateCreate": false,
            }));
            continue;
        }
        if has_identifier_param(info.name) {
            search_params.push(json!({
                "name": "identifier", "type": "token",
                "documentation": "Exact match on system|value, |value, system| or value."
            }));
        }
        resources.push(json!({
            "type": info.name,
            "interaction": [
                {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"},
                {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
                {"code": "create"}, {"code": "search-type"}
            ],
            "versioning": "versioned-update",
            "readHistory": true,
            "updateCreate": true,
            "conditionalCreate": true,
            "conditionalRead": "full-support",
            "conditionalUpdate": true,
            "conditionalDelete": "single",
            "searchParam": search_params,
        }));
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-28",
        "publisher": "Fhirwall",
        "kind": "instance",
        "software": {"name": "Fhirwall", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Fhirwall FHIR server", "url": base},
        "fhirVersion": fhirwall_model::generated::FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                "description": "SMART Backend Services (client_credentials with private_key_jwt, RS384 or ES384).",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": state.token_url()}]
                }]
            },
            "resource": resources,
            "interaction": [{"code": "history-system"}],
        }],
    })
}

/// GET AuditEvent (newest first, paged) and GET AuditEvent/[seq]. Writing is refused: the
/// trail is written by the server only.
pub(crate) async fn audit_event_api(
    state: &AppState,
    params: &[(String, String)],
    path: &crate::fhir::AuditPath,
) -> Result<super::fhir::DoneAlias, super::fhir::FailedAlias> {
    if path.writes || path.history {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueType::NotSupported,
            "audit-read-only",
            "AuditEvent resources are written by the server only; they can be read and searched.",
        )
        .into());
    }
    let pretty = params.iter().any(|(k, v)| k == "_pretty" && v == "true");
    if let Some(id) = &path.id {
        let seq: u64 = id
            .parse()
            .map_err(|_| ApiError::not_found("No AuditEvent with this id."))?;
        let stored = state
            .inner
            .store
            .audit_get(seq)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("No AuditEvent with this id."))?;
        let record = audit_trail::open(state, &stored)?;
        let event = record.to_audit_event(&seq.to_string());
        return Ok(super::fhir::done(
            crate::fhir::fhir_json(StatusCode::OK, &event, pretty),
            AuditDetail {
                entities: vec![format!("AuditEvent/{seq}")],
                ..AuditDetail::default()
            },
        ));
    }
    let mut count = 50usize;
    let mut before = None;
    for (name, value) in params {
        match name.as_str() {
            "_count" => {
                count = value
                    .parse::<usize>()
                    .map_err(|_| {
                        ApiError::bad_request(
                            "invalid-count",
                            "_count must be a non-negative integer.",
                        )
                    })?
                    .min(1000);
            }
            "_cursor" => {
                before = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request("invalid-cursor", "The paging cursor is not valid.")
                })?);
            }
            "_format" | "_pretty" => {}
            _ => {
                return Err(ApiError::bad_request(
                    "unknown-search-parameter",
                    "AuditEvent is searched by _count and the paging cursor only.",
                )
                .into());
            }
        }
    }
    let rows = state
        .inner
        .store
        .audit_page(before, count + 1)
        .await
        .map_err(ApiError::from)?;
    let base = state.fhir_base();
    let mut entries = Vec::new();
    let mut links = vec![
        json!({"relation": "self", "url": format!("{base}/AuditEvent?_count={count}{}", before.map(|b| format!("&_cursor={b}")).unwrap_or_default())}),
    ];
    for (index, stored) in rows.iter().enumerate() {
        if index == count {
            if let Some(prev) = rows.get(count - 1) {
                links.push(json!({"relation": "next", "url": format!("{base}/AuditEvent?_count={count}&_cursor={}", prev.seq)}));
            }
            break;
        }
        let record = audit_trail::open(state, stored)?;
        entries.push(json!({
            "fullUrl": format!("{base}/AuditEvent/{}", stored.seq),
            "resource": record.to_audit_event(&stored.seq.to_string()),
            "search": {"mode": "match"},
        }));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    Ok(super::fhir::done(
        crate::fhir::fhir_json(StatusCode::OK, &bundle, pretty),
        AuditDetail::default(),
    ))
}
