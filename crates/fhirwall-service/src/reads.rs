//! Reads: the current version (checked against its integrity tags), read and vread with
//! conditional reads (`If-None-Match`, `If-Modified-Since`), and the rendering of a stored
//! version with `_summary` and `_elements`. Every read is audited with the patients it
//! concerns.

use fhirwall_model::{ResourceId, ResourceType, Summary};
use fhirwall_store::StoredVersion;
use serde_json::Value;

use crate::audit::AuditDetail;
use crate::{Call, Done, Failed, Reply, ServiceError, integrity};

/// The current version of a resource (deleted ones included), after checking that the
/// pointer and the version are what the server wrote.
pub(crate) async fn current_version(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
) -> Result<Option<StoredVersion>, ServiceError> {
    let key = call.key(resource_type, id);
    let Some(current) = call.service.inner.store.read_current(&key).await? else {
        return Ok(None);
    };
    let keys = call.service.tenant_keys(call.tenant())?;
    if !integrity::current_is_genuine(&keys.integrity, &current) {
        return Err(integrity::tampered("current version", current.version.seq));
    }
    Ok(Some(current.version))
}

/// Checks a version row found by a query or a history walk.
pub(crate) fn check_version(call: &Call<'_>, row: &StoredVersion) -> Result<(), ServiceError> {
    let keys = call.service.tenant_keys(call.tenant())?;
    if integrity::version_is_genuine(&keys.integrity, row) {
        Ok(())
    } else {
        Err(integrity::tampered("version", row.seq))
    }
}

/// The plaintext of a stored version. A row without a body (a delete) is an error: callers
/// open only versions that have one.
pub(crate) fn open_version(call: &Call<'_>, row: &StoredVersion) -> Result<Vec<u8>, ServiceError> {
    open_row(call.service, row)
}

/// The plaintext of a stored version, its associated data rebuilt from the row.
pub(crate) fn open_row(
    service: &crate::Service,
    row: &StoredVersion,
) -> Result<Vec<u8>, ServiceError> {
    let Some(sealed) = row.sealed_body.as_deref() else {
        return Err(ServiceError::internal());
    };
    Ok(service.inner.envelope.open(
        &fhirwall_crypto::AadContext::Resource {
            tenant: row.key.tenant.as_str(),
            resource_type: row.key.resource_type.as_str(),
            id: row.key.id.as_str(),
            version: row.version,
        },
        sealed,
    )?)
}

pub(crate) fn parse_stored(plain: &[u8]) -> Result<Value, ServiceError> {
    serde_json::from_slice(plain).map_err(|_| ServiceError::internal())
}

pub(crate) fn gone(resource_type: &ResourceType) -> ServiceError {
    ServiceError::gone(format!("This {resource_type} has been deleted."))
}

pub(crate) fn no_such(resource_type: &ResourceType) -> ServiceError {
    ServiceError::not_found(format!("No {resource_type} with this id."))
}

/// The body to send for a stored version, honouring `_summary` and `_elements`.
pub(crate) fn render(
    call: &Call<'_>,
    resource_type: &ResourceType,
    plain: Vec<u8>,
    parsed: Option<Value>,
) -> Result<Vec<u8>, ServiceError> {
    let shape = Shape::of(call.param("_summary"), call.param("_elements"))?;
    if shape.summary == Some(Summary::Count) {
        return Err(ServiceError::invalid(
            "invalid-summary",
            "_summary=count applies to searches only.",
        ));
    }
    shape.render(resource_type, plain, parsed)
}

/// How a resource is cut down for an answer: `_summary` and `_elements`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shape {
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
}

impl Shape {
    pub(crate) fn of(summary: Option<&str>, elements: Option<&str>) -> Result<Shape, ServiceError> {
        Ok(Shape {
            summary: summary
                .map(Summary::parse)
                .transpose()
                .map_err(|e| ServiceError::invalid("invalid-summary", e.to_string()))?,
            elements: elements
                .map(fhirwall_model::parse_elements)
                .transpose()
                .map_err(|e| ServiceError::invalid("invalid-elements", e.to_string()))?,
        })
    }

    /// Whether resources go out whole (no `_summary`, no `_elements`).
    pub(crate) fn is_whole(&self) -> bool {
        self.summary.filter(|s| *s != Summary::Count).is_none() && self.elements.is_none()
    }

    pub(crate) fn render(
        &self,
        resource_type: &ResourceType,
        plain: Vec<u8>,
        parsed: Option<Value>,
    ) -> Result<Vec<u8>, ServiceError> {
        let summary = self.summary.filter(|s| *s != Summary::Count);
        if summary.is_none() && self.elements.is_none() {
            return Ok(plain);
        }
        let mut value = match parsed {
            Some(v) => v,
            None => parse_stored(&plain)?,
        };
        if let Some(info) = resource_type.info() {
            if let Some(summary) = summary {
                value = fhirwall_model::apply_summary(value, info, summary);
            }
            if let Some(elements) = &self.elements {
                value = fhirwall_model::apply_elements(value, info, elements);
            }
        }
        serde_json::to_vec(&value).map_err(|_| ServiceError::internal())
    }
}

/// Whether an `If-None-Match` list names `version` (or is `*`).
fn etag_list_matches(value: &str, version: u64) -> bool {
    value.split(',').any(|tag| {
        let tag = tag.trim();
        tag == "*" || parse_etag(tag) == Some(version)
    })
}

pub(crate) fn parse_etag(tag: &str) -> Option<u64> {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.trim_matches('"').parse().ok()
}

/// The version `If-Match` names, if it was given.
pub(crate) fn if_match(call: &Call<'_>) -> Result<Option<u64>, ServiceError> {
    match &call.request.conditions.if_match {
        None => Ok(None),
        Some(v) => parse_etag(v).map(Some).ok_or_else(|| {
            ServiceError::invalid(
                "invalid-if-match",
                "If-Match must be an ETag such as W/\"3\".",
            )
        }),
    }
}

pub(crate) async fn read(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
) -> Result<Done, Failed> {
    let row = current_version(call, resource_type, id)
        .await?
        .ok_or_else(|| no_such(resource_type))?;
    if row.is_deleted() {
        return Err(gone(resource_type).into());
    }
    respond_with_version(call, resource_type, &row)
}

pub(crate) async fn vread(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
    vid: &str,
) -> Result<Done, Failed> {
    let version: u64 = vid
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ServiceError::not_found("No such version."))?;
    let key = call.key(resource_type, id);
    let row = call
        .service
        .inner
        .store
        .read_version(&key, version)
        .await?
        .ok_or_else(|| ServiceError::not_found("No such version."))?;
    check_version(call, &row)?;
    if row.is_deleted() {
        let mut error = gone(resource_type);
        error.outcome.message = "This version records a deletion.".into();
        return Err(error.into());
    }
    respond_with_version(call, resource_type, &row)
}

/// The answer with one stored version, or 304 when the caller's copy is current.
fn respond_with_version(
    call: &Call<'_>,
    resource_type: &ResourceType,
    row: &StoredVersion,
) -> Result<Done, Failed> {
    let plain = open_version(call, row)?;
    let patients = if resource_type.as_str() == "Patient" {
        vec![format!("Patient/{}", row.key.id)]
    } else {
        let parsed = parse_stored(&plain)?;
        fhirwall_model::patient_references(resource_type, row.key.id.as_str(), &parsed)
    };
    let detail = AuditDetail {
        entities: vec![row.key.versioned_reference(row.version)],
        patients,
        ..AuditDetail::default()
    };
    let conditions = &call.request.conditions;
    let not_modified = match (&conditions.if_none_match, conditions.if_modified_since) {
        (Some(tags), _) => etag_list_matches(tags, row.version),
        (None, Some(since)) => row.last_updated_micros / 1_000_000 <= since.unix_seconds(),
        (None, None) => false,
    };
    let mut reply = if not_modified {
        Reply::status(304)
    } else {
        let bytes = render(call, resource_type, plain, None).map_err(|error| Failed {
            error,
            detail: detail.clone(),
        })?;
        Reply::json(200, bytes)
    };
    reply.version = Some((
        row.version,
        fhirwall_model::Timestamp::from_micros(row.last_updated_micros),
    ));
    Ok(Done::audited(reply, detail))
}
