//! The FHIR model as Fhirwall sees it: resources as JSON trees checked against tables generated
//! from the official definitions, plus the pure operations on them (strict parsing, ids,
//! OperationOutcome, JSON Patch, `_summary`/`_elements`). No I/O, no clocks, no randomness.

pub mod generated;
mod id;
mod json;
mod outcome;
mod patch;
mod subset;
mod timestamp;

pub use id::{IdError, ResourceId, ResourceType, TenantId};
pub use json::{JsonError, JsonLimits, parse_strict};
pub use outcome::{IssueSeverity, IssueType, OperationOutcome};
pub use patch::{PatchError, apply_json_patch};
pub use subset::{SubsetError, Summary, apply_elements, apply_summary, parse_elements};
pub use timestamp::Timestamp;

/// Relative references (`Patient/123`) to the patients a resource concerns, found through the
/// patient compartment's paths. A Patient concerns itself.
pub fn patient_references(
    resource_type: &ResourceType,
    id: &str,
    body: &serde_json::Value,
) -> Vec<String> {
    let mut found = Vec::new();
    if resource_type.as_str() == "Patient" {
        found.push(format!("Patient/{id}"));
        return found;
    }
    let Some(info) = generated::resource_type_info(resource_type.as_str()) else {
        return found;
    };
    for path in info.patient_compartment_paths {
        collect_patient_refs(body, path, &mut found);
    }
    found.sort();
    found.dedup();
    found
}

fn collect_patient_refs(node: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match node {
        serde_json::Value::Array(items) => {
            for item in items {
                collect_patient_refs(item, path, out);
            }
        }
        serde_json::Value::Object(map) => {
            if path.is_empty() {
                if let Some(serde_json::Value::String(reference)) = map.get("reference")
                    && let Some(rest) = reference.strip_prefix("Patient/")
                {
                    let id = rest.split('/').next().unwrap_or_default();
                    if ResourceId::parse(id).is_ok() {
                        out.push(format!("Patient/{id}"));
                    }
                }
                return;
            }
            let (head, tail) = path.split_once('.').unwrap_or((path, ""));
            if let Some(child) = map.get(head) {
                collect_patient_refs(child, tail, out);
            }
        }
        _ => {}
    }
}
