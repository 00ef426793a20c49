//! The read-only AuditEvent API of a tenant over the audit trail: read by id (the record's sequence
//! number) and search, newest first. Writing is refused: only the server writes the trail.

use fhirwall_audit::AuditRecord;
use fhirwall_model::IssueType;
use serde_json::json;

use crate::audit::{self, AuditDetail};
use crate::{Call, Done, ErrorKind, Failed, Interaction, Reply, ServiceError};

/// Records examined per search at most: searching decrypts records, so a search that matches
/// rarely stops here and offers a next page from where it stopped.
const MAX_SCANNED: usize = 20_000;
const SCAN_PAGE: usize = 500;

/// One search filter on decrypted records.
enum Filter {
    Patient(String),
    Entity(String),
    Agent(String),
    Action(String),
    Subtype(String),
    Outcome(String),
    Date(Comparator, String),
}

#[derive(Clone, Copy)]
enum Comparator {
    Eq,
    Ge,
    Le,
    Gt,
    Lt,
}

impl Filter {
    fn matches(&self, record: &AuditRecord) -> bool {
        match self {
            Filter::Patient(p) => record.patients.iter().any(|r| r == p),
            Filter::Entity(e) => record
                .entities
                .iter()
                .chain(record.patients.iter())
                .any(|r| r == e || r.starts_with(&format!("{e}/_history/"))),
            Filter::Agent(a) => record.client_id.as_deref() == Some(a.as_str()),
            Filter::Action(a) => record.action.code() == a,
            Filter::Subtype(s) => record.subtype == *s,
            Filter::Outcome(o) => record.outcome.code() == o,
            Filter::Date(cmp, value) => {
                // Both are UTC instants in the same fixed format, or a prefix of it (a date),
                // so comparing the common prefix compares the times.
                let len = value.len().min(record.recorded.len());
                let recorded = record.recorded.get(..len).unwrap_or_default();
                match cmp {
                    Comparator::Eq => recorded == value.as_str(),
                    Comparator::Ge => recorded >= value.as_str(),
                    Comparator::Le => recorded <= value.as_str(),
                    Comparator::Gt => recorded > value.as_str(),
                    Comparator::Lt => recorded < value.as_str(),
                }
            }
        }
    }
}

fn reference(value: &str, default_type: &str) -> String {
    if value.contains('/') {
        value.to_string()
    } else {
        format!("{default_type}/{value}")
    }
}

fn parse_date(value: &str) -> Result<Filter, ServiceError> {
    let (cmp, rest) = match value.get(..2) {
        Some("ge") => (Comparator::Ge, value.get(2..).unwrap_or_default()),
        Some("le") => (Comparator::Le, value.get(2..).unwrap_or_default()),
        Some("gt") => (Comparator::Gt, value.get(2..).unwrap_or_default()),
        Some("lt") => (Comparator::Lt, value.get(2..).unwrap_or_default()),
        Some("eq") => (Comparator::Eq, value.get(2..).unwrap_or_default()),
        _ => (Comparator::Eq, value),
    };
    let well_formed = rest.len() >= 4
        && rest
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'T' | b':' | b'.' | b'Z'));
    if !well_formed {
        return Err(ServiceError::invalid(
            "invalid-date",
            "date takes a UTC date or instant, optionally prefixed by ge, le, gt, lt or eq.",
        ));
    }
    Ok(Filter::Date(cmp, rest.trim_end_matches('Z').to_string()))
}

fn bundle_or_event(value: &serde_json::Value) -> Result<Reply, ServiceError> {
    Ok(Reply::json(
        200,
        serde_json::to_vec(value).map_err(|_| ServiceError::internal())?,
    ))
}

pub(crate) async fn audit_event_api(call: &Call<'_>) -> Result<Done, Failed> {
    let service = call.service;
    let tenant = call.tenant();
    let params = &call.request.params;
    let id = match &call.request.interaction {
        Interaction::Read(_, id) => Some(id.as_str().to_string()),
        Interaction::SearchType(_) => None,
        _ => {
            return Err(ServiceError::new(
            ErrorKind::MethodNotAllowed,
            IssueType::NotSupported,
            "audit-read-only",
            "AuditEvent resources are written by the server only; they can be read and searched.",
        )
        .into());
        }
    };
    if let Some(id) = &id {
        let seq: u64 = id
            .parse()
            .map_err(|_| ServiceError::not_found("No AuditEvent with this id."))?;
        let stored = service
            .inner
            .store
            .audit_get(tenant, seq)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::not_found("No AuditEvent with this id."))?;
        let record = audit::open(service, &stored)?;
        let event = record.to_audit_event(&seq.to_string());
        return Ok(Done::audited(
            bundle_or_event(&event)?,
            AuditDetail {
                entities: vec![format!("AuditEvent/{seq}")],
                ..AuditDetail::default()
            },
        ));
    }
    let mut count = 50usize;
    let mut before: Option<u64> = None;
    let mut filters = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_count" => {
                count = value
                    .parse::<usize>()
                    .map_err(|_| {
                        ServiceError::invalid(
                            "invalid-count",
                            "_count must be a non-negative integer.",
                        )
                    })?
                    .min(1000);
            }
            "_cursor" => {
                before = Some(value.parse::<u64>().map_err(|_| {
                    ServiceError::invalid("invalid-cursor", "The paging cursor is not valid.")
                })?);
            }
            "_sort" if value == "-date" => {}
            "_format" | "_pretty" => {}
            "patient" => filters.push(Filter::Patient(reference(value, "Patient"))),
            "entity" => filters.push(Filter::Entity(value.clone())),
            "agent" => filters.push(Filter::Agent(value.clone())),
            "action" => filters.push(Filter::Action(value.clone())),
            "subtype" => filters.push(Filter::Subtype(
                value.rsplit('|').next().unwrap_or(value).to_string(),
            )),
            "outcome" => filters.push(Filter::Outcome(value.clone())),
            "date" => filters.push(parse_date(value)?),
            _ => {
                return Err(ServiceError::invalid(
                    "unknown-search-parameter",
                    "AuditEvent is searched by patient, entity, agent, action, subtype, outcome and date.",
                )
                .into());
            }
        }
    }
    let mut matched = Vec::new();
    let mut scanned = 0usize;
    let mut cursor = before;
    let mut next_cursor = None;
    'scan: loop {
        let page = service
            .inner
            .store
            .audit_page(tenant, cursor, SCAN_PAGE)
            .await
            .map_err(ServiceError::from)?;
        if page.is_empty() {
            break;
        }
        for stored in &page {
            if matched.len() == count {
                next_cursor = cursor;
                break 'scan;
            }
            scanned += 1;
            cursor = Some(stored.seq);
            let record = audit::open(service, stored)?;
            if filters.iter().all(|f| f.matches(&record)) {
                matched.push((stored.seq, record));
            }
            if scanned >= MAX_SCANNED {
                next_cursor = cursor;
                break 'scan;
            }
        }
        if page.len() < SCAN_PAGE {
            break;
        }
    }
    // A full page whose last record is not the trail's first offers a next page.
    if next_cursor.is_none() && matched.len() == count {
        next_cursor = cursor.filter(|c| *c > 1);
    }
    let base = service.fhir_base();
    let own_query: String = {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            if k != "_cursor" {
                serializer.append_pair(k, v);
            }
        }
        serializer.finish()
    };
    let page_url = |c: Option<u64>| {
        let mut url = format!("{base}/AuditEvent?{own_query}");
        if let Some(c) = c {
            url.push_str(&format!("&_cursor={c}"));
        }
        url
    };
    let mut links = vec![json!({"relation": "self", "url": page_url(before)})];
    if let Some(next) = next_cursor {
        links.push(json!({"relation": "next", "url": page_url(Some(next))}));
    }
    let entries: Vec<serde_json::Value> = matched
        .iter()
        .map(|(seq, record)| {
            json!({
                "fullUrl": format!("{base}/AuditEvent/{seq}"),
                "resource": record.to_audit_event(&seq.to_string()),
                "search": {"mode": "match"},
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    Ok(Done::audited(
        bundle_or_event(&bundle)?,
        AuditDetail::default(),
    ))
}
