//! Writes: create (with `If-None-Exist`), update (update-as-create), JSON Patch, delete, and
//! conditional update and delete. Each builds its new version and goes through the one write
//! pipeline (`pipeline::write_loop`); the answer is shaped by `Prefer: return=`.

use fhirwall_auth::Interaction as Permission;
use fhirwall_model::{IssueType, OperationOutcome, ResourceId, ResourceType, Timestamp};
use fhirwall_store::{Method, NoMatchGuard, StoredVersion};
use serde_json::{Map, Value};

use crate::audit::AuditDetail;
use crate::indexing::CriteriaMode;
use crate::pipeline::{NewVersion, Outcome, Written, write_loop};
use crate::reads::{gone, if_match, no_such, open_version, parse_stored, render};
use crate::search::find_matches;
use crate::{Call, Done, ErrorKind, Failed, Location, Reply, ReturnPreference, ServiceError};

/// The body of a create or update: a JSON object holding one resource of the path's type.
pub(crate) fn resource_body<'a>(
    call: &Call<'a>,
    resource_type: &ResourceType,
) -> Result<&'a Map<String, Value>, ServiceError> {
    match &call.request.body {
        None => Err(ServiceError::invalid(
            "empty-body",
            "The request has no body.",
        )),
        Some(Value::Object(map)) => {
            check_resource_shape(map, resource_type)?;
            Ok(map)
        }
        Some(_) => Err(ServiceError::new(
            ErrorKind::Invalid,
            IssueType::Structure,
            "not-a-resource",
            "The body must be a JSON object holding one FHIR resource.",
        )),
    }
}

/// The right resourceType, a well-formed id if any, a meta that is an object if present.
pub(crate) fn check_resource_shape(
    map: &Map<String, Value>,
    resource_type: &ResourceType,
) -> Result<(), ServiceError> {
    match map.get("resourceType") {
        Some(Value::String(t)) if t == resource_type.as_str() => {}
        Some(Value::String(_)) => {
            return Err(ServiceError::invalid(
                "resource-type-mismatch",
                format!("The body's resourceType does not match the URL ({resource_type})."),
            )
            .with_expression("resourceType"));
        }
        _ => {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
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
            return Err(ServiceError::invalid(
                "invalid-id",
                "The body's id is not a valid FHIR id.",
            )
            .with_expression(format!("{resource_type}.id")));
        }
    }
    match map.get("meta") {
        None | Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(ServiceError::new(
                ErrorKind::Invalid,
                IssueType::Structure,
                "invalid-meta",
                "meta must be an object.",
            )
            .with_expression(format!("{resource_type}.meta")));
        }
    }
    if map.keys().any(|k| k.is_empty()) {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
            IssueType::Structure,
            "empty-key",
            "The body has an empty property name.",
        ));
    }
    Ok(())
}

pub(crate) fn location(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
    version: u64,
    created: bool,
) -> Location {
    Location {
        url: format!(
            "{}/{resource_type}/{id}/_history/{version}",
            call.service.fhir_base()
        ),
        created,
    }
}

fn outcome_body(call: &Call<'_>, outcome: &OperationOutcome) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec(&outcome.to_json(&call.caller.requester.request_id))
        .map_err(|_| ServiceError::internal())
}

/// The answer to a successful write, shaped by `Prefer: return=`.
fn write_reply(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
    written: &Written,
    created: bool,
) -> Result<Reply, ServiceError> {
    let status = if created { 201 } else { 200 };
    let mut reply = match call.request.return_preference {
        ReturnPreference::Minimal => Reply::status(status),
        ReturnPreference::OperationOutcome => {
            let message = if created {
                "The resource was created."
            } else {
                "The resource was updated."
            };
            let mut outcome =
                OperationOutcome::information(if created { "created" } else { "updated" }, message);
            outcome.more = written.warnings.clone();
            Reply::json(status, outcome_body(call, &outcome)?)
        }
        ReturnPreference::Representation => {
            Reply::json(status, written.stored.clone().unwrap_or_default())
        }
    };
    reply.version = Some((written.version, written.at));
    reply.location = Some(location(call, resource_type, id, written.version, created));
    Ok(reply)
}

fn written_reply(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
    outcome: Outcome,
) -> Result<Done, Failed> {
    match outcome {
        Outcome::Written(written) => Ok(Done::committed(write_reply(
            call,
            resource_type,
            id,
            &written,
            written.created,
        )?)),
        Outcome::Unchanged => Err(ServiceError::internal().into()),
        Outcome::GuardMatched(_) => Err(ServiceError::precondition_failed(
            "A resource matching the condition appeared meanwhile; retry.",
        )
        .into()),
    }
}

/// A fresh server-assigned id (UUIDv7: time-ordered, so new rows land at the end of indexes).
pub(crate) fn new_server_id() -> Result<ResourceId, ServiceError> {
    ResourceId::parse(&uuid::Uuid::now_v7().to_string()).map_err(|_| ServiceError::internal())
}

/// The criteria of a condition written as a query (`If-None-Exist`, `ifNoneExist`, the part
/// after `Type?` of a conditional reference), with or without the `Type?` before it.
pub(crate) fn query_criteria(
    call: &Call<'_>,
    resource_type: &ResourceType,
    query: &str,
) -> Result<crate::indexing::Criteria, ServiceError> {
    let query = query.split_once('?').map_or(query, |(_, q)| q);
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let search = crate::search::search_index(call);
    crate::search::indexer(call, &search)?.criteria(
        resource_type,
        &params,
        CriteriaMode::Conditional,
    )
}

/// What a condition matches: nothing or one resource; more than one is a 412 (`many` says
/// what matched too often).
pub(crate) async fn match_condition(
    call: &Call<'_>,
    resource_type: &ResourceType,
    criteria: &crate::indexing::Criteria,
    many: &str,
) -> Result<Option<StoredVersion>, ServiceError> {
    let mut found = find_matches(call, resource_type, criteria, 2).await?;
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(ServiceError::precondition_failed(format!(
            "More than one resource matches {many}."
        ))),
    }
}

/// The id a conditional update writes when its condition matched nothing: the `_id`
/// criterion, else the body's id, else a new one; the two must agree when both are given.
pub(crate) fn unmatched_update_id(
    criteria: &crate::indexing::Criteria,
    body_id: Option<&str>,
) -> Result<ResourceId, ServiceError> {
    match (&criteria.single_id(), body_id) {
        (Some(cid), Some(bid)) if cid.as_str() != bid => Err(ServiceError::invalid(
            "id-mismatch",
            "The body's id does not match the _id criterion.",
        )),
        (Some(cid), _) => Ok(cid.clone()),
        (None, Some(bid)) => ResourceId::parse(bid).map_err(|_| {
            ServiceError::invalid("invalid-id", "The body's id is not a valid FHIR id.")
        }),
        (None, None) => new_server_id(),
    }
}

pub(crate) async fn create(call: &Call<'_>, resource_type: &ResourceType) -> Result<Done, Failed> {
    let map = resource_body(call, resource_type)?;
    let mut guard = None;
    if let Some(condition) = &call.request.conditions.if_none_exist {
        let criteria = query_criteria(call, resource_type, condition)?;
        if let Some(existing) =
            match_condition(call, resource_type, &criteria, "If-None-Exist").await?
        {
            // Nothing is written, but an invalid body is still the client's error to hear
            // about, whether or not a match exists.
            call.service.inner.profiles.check_write(
                &Value::Object(map.clone()),
                false,
                call.now,
            )?;
            return existing_match(call, resource_type, &existing);
        }
        // A create always gets a new server id, so an `_id` criterion that matched nothing
        // stays unmatched; identifier criteria are re-checked at commit time by the guard.
        let terms = guard_terms(call, resource_type, &criteria)?;
        if !terms.is_empty() {
            guard = Some(NoMatchGuard { terms });
        }
    }
    let id = new_server_id()?;
    let outcome = write_loop(call, resource_type, &id, None, Some(None), |current| {
        if current.is_some() {
            // A fresh UUIDv7 is never taken; if it were, this is our defect.
            return Err(ServiceError::internal().into());
        }
        let mut new =
            NewVersion::after(None, resource_type, &id, Method::Create, Some(map.clone()));
        new.guard = guard.clone();
        Ok(Some(new))
    })
    .await?;
    match outcome {
        Outcome::GuardMatched(ids) => {
            // Another request created a match between our search and our commit.
            if let [only] = ids.as_slice()
                && let Some(existing) =
                    crate::reads::current_version(call, resource_type, only).await?
            {
                return existing_match(call, resource_type, &existing);
            }
            Err(
                ServiceError::precondition_failed("More than one resource matches If-None-Exist.")
                    .into(),
            )
        }
        other => written_reply(call, resource_type, &id, other),
    }
}

/// The terms a conditional write re-checks at commit (see `Criteria::guard_terms`).
pub(crate) fn guard_terms(
    call: &Call<'_>,
    resource_type: &ResourceType,
    criteria: &crate::indexing::Criteria,
) -> Result<Vec<fhirwall_store::IndexTerm>, ServiceError> {
    let search = crate::search::search_index(call);
    let indexer = crate::search::indexer(call, &search)?;
    Ok(criteria.guard_terms(&indexer, resource_type))
}

/// Conditional create found its match: 200 with the existing resource, nothing written.
fn existing_match(
    call: &Call<'_>,
    resource_type: &ResourceType,
    existing: &StoredVersion,
) -> Result<Done, Failed> {
    let plain = open_version(call, existing)?;
    let parsed = parse_stored(&plain)?;
    let patients =
        fhirwall_model::patient_references(resource_type, existing.key.id.as_str(), &parsed);
    let mut reply = match call.request.return_preference {
        ReturnPreference::Minimal => Reply::status(200),
        ReturnPreference::OperationOutcome => Reply::json(
            200,
            outcome_body(
                call,
                &OperationOutcome::information(
                    "exists",
                    "A matching resource exists; nothing was created.",
                ),
            )?,
        ),
        ReturnPreference::Representation => {
            Reply::json(200, render(call, resource_type, plain, Some(parsed))?)
        }
    };
    reply.version = Some((
        existing.version,
        Timestamp::from_micros(existing.last_updated_micros),
    ));
    reply.location = Some(location(
        call,
        resource_type,
        &existing.key.id,
        existing.version,
        true,
    ));
    Ok(Done::audited(
        reply,
        AuditDetail {
            entities: vec![existing.key.versioned_reference(existing.version)],
            patients,
            ..AuditDetail::default()
        },
    ))
}

/// Whether the caller may create `resource_type` where `current` shows nothing live: a PUT
/// to an id that never existed, or to one that was deleted, creates a resource.
pub(crate) fn check_create_right(
    call: &Call<'_>,
    resource_type: &ResourceType,
    current: Option<&StoredVersion>,
) -> Result<(), Failed> {
    let creating = current.is_none_or(StoredVersion::is_deleted);
    if creating && !call.caller.may(resource_type.as_str(), Permission::Create) {
        return Err(ServiceError::forbidden(format!(
            "The access token's scopes do not allow create on {resource_type} (this update would create the resource)."
        ))
        .into());
    }
    Ok(())
}

pub(crate) async fn update(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
) -> Result<Done, Failed> {
    let map = resource_body(call, resource_type)?;
    check_update_id(map, resource_type, id)?;
    let expected = if_match(call)?;
    put_version(call, resource_type, id, expected, None, map).await
}

/// Update and the two ways of conditional update: the body as the next version.
async fn put_version(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
    expected: Option<u64>,
    guard: Option<NoMatchGuard>,
    map: &Map<String, Value>,
) -> Result<Done, Failed> {
    let outcome = write_loop(call, resource_type, id, expected, None, |current| {
        check_create_right(call, resource_type, current)?;
        let mut new = NewVersion::after(
            current,
            resource_type,
            id,
            Method::Update,
            Some(map.clone()),
        );
        new.guard = guard.clone();
        Ok(Some(new))
    })
    .await?;
    written_reply(call, resource_type, id, outcome)
}

pub(crate) async fn patch(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
) -> Result<Done, Failed> {
    let patch_doc = match &call.request.body {
        Some(doc @ Value::Array(_)) => doc.clone(),
        Some(doc @ Value::Object(map))
            if map.get("resourceType").and_then(Value::as_str) == Some("Parameters") =>
        {
            doc.clone()
        }
        _ => {
            return Err(ServiceError::invalid(
                "invalid-patch",
                "A patch is a JSON Patch document (an array of operations) or a FHIRPath Patch (a Parameters resource).",
            )
            .into());
        }
    };
    let expected = if_match(call)?;
    let outcome = write_loop(call, resource_type, id, expected, None, |current| {
        let current = match current {
            None => return Err(no_such(resource_type).into()),
            Some(row) if row.is_deleted() => return Err(gone(resource_type).into()),
            Some(row) => row,
        };
        let value = parse_stored(&open_version(call, current)?)?;
        let map = patched(resource_type, id, &value, &patch_doc)?;
        Ok(Some(NewVersion::after(
            Some(current),
            resource_type,
            id,
            Method::Patch,
            Some(map),
        )))
    })
    .await?;
    written_reply(call, resource_type, id, outcome)
}

pub(crate) async fn delete(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
    known: Option<StoredVersion>,
) -> Result<Done, Failed> {
    let expected = if_match(call)?;
    let outcome = write_loop(
        call,
        resource_type,
        id,
        expected,
        known.map(Some),
        |current| {
            // Deleting what is absent or already deleted succeeds and changes nothing.
            Ok(current
                .filter(|row| !row.is_deleted())
                .map(|row| NewVersion::after(Some(row), resource_type, id, Method::Delete, None)))
        },
    )
    .await?;
    match outcome {
        Outcome::Written(written) => {
            let mut reply = match call.request.return_preference {
                ReturnPreference::OperationOutcome => Reply::json(
                    200,
                    outcome_body(
                        call,
                        &OperationOutcome::information("deleted", "The resource was deleted."),
                    )?,
                ),
                _ => Reply::status(204),
            };
            reply.version = Some((written.version, written.at));
            Ok(Done::committed(reply))
        }
        Outcome::Unchanged | Outcome::GuardMatched(_) => {
            Ok(Done::audited(Reply::status(204), AuditDetail::default()))
        }
    }
}

/// The result of a patch on the current content: a JSON Patch document (an array) or a
/// FHIRPath Patch (a Parameters resource). A resource of the same type and id, or why not (400
/// for a malformed patch, 422 for one that cannot apply or leaves no valid resource).
pub(crate) fn patched(
    resource_type: &ResourceType,
    id: &ResourceId,
    current: &Value,
    patch_doc: &Value,
) -> Result<Map<String, Value>, ServiceError> {
    let patched = if patch_doc.is_array() {
        fhirwall_model::apply_json_patch(current, patch_doc).map_err(|e| {
            let kind = if matches!(e, fhirwall_model::PatchError::TestFailed { .. }) {
                ErrorKind::Unprocessable
            } else {
                ErrorKind::Invalid
            };
            ServiceError::new(kind, IssueType::Processing, "patch-failed", e.to_string())
        })?
    } else {
        fhirwall_validation::apply_fhirpath_patch(current, patch_doc).map_err(|e| {
            let kind = match e {
                fhirwall_validation::FhirPathPatchError::Malformed(_) => ErrorKind::Invalid,
                fhirwall_validation::FhirPathPatchError::NotApplicable(_) => {
                    ErrorKind::Unprocessable
                }
            };
            ServiceError::new(kind, IssueType::Processing, "patch-failed", e.to_string())
        })?
    };
    let Value::Object(map) = patched else {
        return Err(ServiceError::new(
            ErrorKind::Unprocessable,
            IssueType::Processing,
            "patch-failed",
            "The patch did not leave a resource.",
        ));
    };
    check_resource_shape(&map, resource_type).map_err(|e| e.with_kind(ErrorKind::Unprocessable))?;
    if map.get("id").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(ServiceError::new(
            ErrorKind::Unprocessable,
            IssueType::Processing,
            "patch-changed-id",
            "A patch may not change or remove the resource id.",
        ));
    }
    Ok(map)
}

/// An update's body must carry the id of its URL.
pub(crate) fn check_update_id(
    map: &Map<String, Value>,
    resource_type: &ResourceType,
    id: &ResourceId,
) -> Result<(), ServiceError> {
    match map.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id.as_str() => Ok(()),
        Some(_) => Err(ServiceError::invalid(
            "id-mismatch",
            "The body's id does not match the id in the URL.",
        )
        .with_expression(format!("{resource_type}.id"))),
        None => Err(ServiceError::new(
            ErrorKind::Invalid,
            IssueType::Required,
            "missing-id",
            "An update must carry the resource id in the body.",
        )
        .with_expression(format!("{resource_type}.id"))),
    }
}

/// A conditional update's or delete's criteria: its parameters, minus the answer's format.
pub(crate) fn conditional_criteria(
    call: &Call<'_>,
    resource_type: &ResourceType,
) -> Result<crate::indexing::Criteria, ServiceError> {
    let params: Vec<(String, String)> = call
        .request
        .params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .cloned()
        .collect();
    let search = crate::search::search_index(call);
    crate::search::indexer(call, &search)?.criteria(
        resource_type,
        &params,
        CriteriaMode::Conditional,
    )
}

pub(crate) async fn conditional_update(
    call: &Call<'_>,
    resource_type: &ResourceType,
) -> Result<Done, Failed> {
    let criteria = conditional_criteria(call, resource_type)?;
    let mut map = resource_body(call, resource_type)?.clone();
    let body_id = map.get("id").and_then(Value::as_str).map(str::to_string);
    let matched = match_condition(call, resource_type, &criteria, "the condition").await?;
    let expected = if_match(call)?;
    match matched {
        None => {
            let id = unmatched_update_id(&criteria, body_id.as_deref())?;
            let terms = guard_terms(call, resource_type, &criteria)?;
            let guard = (!terms.is_empty()).then_some(NoMatchGuard { terms });
            map.insert("id".into(), Value::String(id.as_str().to_string()));
            put_version(call, resource_type, &id, expected, guard, &map).await
        }
        Some(one) => {
            if body_id.as_deref().is_some_and(|b| b != one.key.id.as_str()) {
                return Err(ServiceError::invalid(
                    "id-mismatch",
                    "The body's id does not match the resource the condition found.",
                )
                .into());
            }
            map.insert("id".into(), Value::String(one.key.id.as_str().to_string()));
            let expected = expected.or(Some(one.version));
            put_version(call, resource_type, &one.key.id, expected, None, &map).await
        }
    }
}

pub(crate) async fn conditional_delete(
    call: &Call<'_>,
    resource_type: &ResourceType,
) -> Result<Done, Failed> {
    let criteria = conditional_criteria(call, resource_type)?;
    match match_condition(call, resource_type, &criteria, "the condition").await? {
        None => Ok(Done::audited(Reply::status(204), AuditDetail::default())),
        Some(one) => delete(call, resource_type, &one.key.id.clone(), Some(one)).await,
    }
}
