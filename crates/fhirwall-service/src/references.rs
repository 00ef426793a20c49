//! References between the entries of a transaction: every `reference` that names another
//! entry by its `fullUrl` (`urn:uuid:...`, or an absolute URL) becomes that entry's `Type/id`,
//! and every conditional reference (`Patient?identifier=...`) becomes the one resource its
//! criteria match. An unresolvable one fails the transaction; nothing else is touched.

use std::collections::HashMap;

use fhirwall_model::ResourceType;
use serde_json::Value;

use crate::writes::{match_condition, query_criteria};
use crate::{Call, ServiceError};

/// Rewrites every `reference` in `body` that names another entry (by its `fullUrl`) or is a
/// conditional reference (`Type?criteria`, resolved to the one resource that matches).
pub(crate) async fn resolve_references(
    call: &Call<'_>,
    body: &mut Value,
    names: &HashMap<String, String>,
) -> Result<(), ServiceError> {
    let mut wanted = Vec::new();
    collect_references(body, &mut wanted);
    let mut resolved: HashMap<String, String> = HashMap::new();
    for reference in wanted {
        if resolved.contains_key(&reference) {
            continue;
        }
        if let Some(name) = names.get(&reference) {
            resolved.insert(reference, name.clone());
            continue;
        }
        if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
            return Err(ServiceError::invalid(
                "unresolved-reference",
                "A reference names a urn: that is no entry's fullUrl in this transaction.",
            ));
        }
        if let Some((type_name, query)) = reference.split_once('?')
            && !type_name.contains('/')
        {
            let t = ResourceType::parse(type_name).map_err(|_| {
                ServiceError::invalid(
                    "invalid-reference",
                    "A conditional reference must start with a resource type.",
                )
            })?;
            // Resolving is a search: whether it matches tells what the server holds, so it
            // takes the right to search that type.
            if !call
                .caller
                .may(t.as_str(), fhirwall_auth::Interaction::Search)
            {
                return Err(ServiceError::forbidden(format!(
                    "A conditional reference searches {t}, which the access token's scopes do not allow."
                )));
            }
            let criteria = query_criteria(call, &t, query)?;
            match match_condition(call, &t, &criteria, "a conditional reference").await? {
                Some(one) => {
                    resolved.insert(reference, one.key.reference());
                }
                None => {
                    return Err(ServiceError::precondition_failed(
                        "A conditional reference matches no resource.",
                    ));
                }
            }
        }
    }
    if !resolved.is_empty() {
        rewrite_references(body, &resolved);
    }
    Ok(())
}

fn collect_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("reference", Value::String(reference)) => out.push(reference.clone()),
                    _ => collect_references(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_references(item, out)),
        _ => {}
    }
}

fn rewrite_references(value: &mut Value, resolved: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match (key.as_str(), &*child) {
                    ("reference", Value::String(reference)) => {
                        if let Some(name) = resolved.get(reference) {
                            *child = Value::String(name.clone());
                        }
                    }
                    _ => rewrite_references(child, resolved),
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rewrite_references(item, resolved)),
        _ => {}
    }
}
