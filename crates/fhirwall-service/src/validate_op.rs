//! `$validate`: the outcome of validating a proposed resource, at type or instance level, in
//! modes create, update, delete and profile. It answers 200 with an OperationOutcome whatever
//! it finds (4xx only when the request itself is wrong) and stores nothing.

use fhirwall_model::{IssueType, OperationOutcome, ResourceId, ResourceType};
use fhirwall_validation::ValidateOptions;
use serde_json::Value;

use crate::audit::AuditDetail;
use crate::reads::{current_version, gone, no_such};
use crate::{Call, Done, ErrorKind, Failed, Reply, ServiceError};

/// What `$validate` was asked: a resource (or none for mode delete), a mode, profiles.
struct ValidateRequest {
    resource: Option<Value>,
    mode: Option<String>,
    profiles: Vec<String>,
}

/// Reads `$validate`'s inputs from the query and the body: either the resource itself or a
/// Parameters resource with `resource`, `mode` and `profile`.
fn validate_request(
    call: &Call<'_>,
    resource_type: &ResourceType,
) -> Result<ValidateRequest, ServiceError> {
    let mut request = ValidateRequest {
        resource: None,
        mode: call.param("mode").map(str::to_string),
        profiles: call
            .request
            .params
            .iter()
            .filter(|(k, _)| k == "profile")
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let Some(value) = call.request.body.clone() else {
        return Ok(request);
    };
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
                return Err(ServiceError::invalid(
                    "invalid-parameter",
                    "$validate takes the parameters resource, mode and profile only.",
                )
                .with_expression("Parameters.parameter.name"));
            }
        }
    }
    Ok(request)
}

pub(crate) async fn validate(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: Option<&ResourceId>,
) -> Result<Done, Failed> {
    let request = validate_request(call, resource_type)?;
    let mode = request.mode.as_deref();
    match mode {
        None | Some("create" | "profile") => {}
        Some("update" | "delete") if id.is_some() => {}
        Some("update" | "delete") => {
            return Err(ServiceError::invalid(
                "invalid-mode",
                "Modes update and delete apply to an existing resource: use [type]/[id]/$validate.",
            )
            .into());
        }
        Some(_) => {
            return Err(ServiceError::invalid(
                "invalid-mode",
                "mode must be create, update, delete or profile.",
            )
            .into());
        }
    }
    let mut detail = AuditDetail::default();
    if let Some(id) = id {
        detail.entities.push(format!("{resource_type}/{id}"));
        let current = current_version(call, resource_type, id).await?;
        let exists = current.as_ref().is_some_and(|row| !row.is_deleted());
        if matches!(mode, Some("update" | "delete")) && !exists {
            return Err(Failed {
                error: match current {
                    None => no_such(resource_type),
                    Some(_) => gone(resource_type),
                },
                detail,
            });
        }
    }
    let request_id = &call.caller.requester.request_id;
    if mode == Some("delete") {
        let outcome = OperationOutcome::information(
            "valid",
            "Nothing in this server prevents deleting the resource.",
        );
        return Ok(Done::audited(outcome_reply(&outcome, request_id)?, detail));
    }
    let Some(resource) = request.resource else {
        return Err(Failed {
            error: ServiceError::new(
                ErrorKind::Invalid,
                IssueType::Required,
                "missing-resource",
                "$validate needs the resource to validate (the body, or the parameter resource).",
            ),
            detail,
        });
    };
    let mut outcome = call.service.inner.profiles.validator.validate(
        &resource,
        &ValidateOptions {
            profiles: request.profiles,
            now_millis: Some(call.now.millis()),
        },
    );
    let body_type = resource.get("resourceType").and_then(Value::as_str);
    let mut issues = Vec::new();
    if body_type.is_some_and(|t| t != resource_type.as_str()) {
        issues.push(
            OperationOutcome::error(
                IssueType::Invalid,
                "resource-type-mismatch",
                format!("The resource is not a {resource_type}."),
            )
            .with_expression("resourceType"),
        );
    }
    if mode == Some("update")
        && resource.get("id").and_then(Value::as_str) != id.map(ResourceId::as_str)
    {
        issues.push(
            OperationOutcome::error(
                IssueType::Invalid,
                "id-mismatch",
                "For mode update the resource id must match the id in the URL.",
            )
            .with_expression(format!("{resource_type}.id")),
        );
    }
    issues.extend(
        std::mem::take(&mut outcome.issues)
            .iter()
            .map(crate::profiles::issue_outcome),
    );
    let answer = OperationOutcome::from_issues(issues).unwrap_or_else(|| {
        OperationOutcome::information("valid", "All OK: the resource is valid.")
    });
    Ok(Done::audited(outcome_reply(&answer, request_id)?, detail))
}

fn outcome_reply(outcome: &OperationOutcome, request_id: &str) -> Result<Reply, ServiceError> {
    Ok(Reply::json(
        200,
        serde_json::to_vec(&outcome.to_json(request_id)).map_err(|_| ServiceError::internal())?,
    ))
}
