//! `_summary` and `_elements`: returning part of a resource, marked SUBSETTED as FHIR requires.

use serde_json::{Map, Value, json};

use crate::generated::ResourceTypeInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubsetError {
    #[error("_summary must be one of true, text, data, count, false")]
    BadSummary,
    #[error("_elements must be a comma-separated list of element names")]
    BadElements,
}

impl Summary {
    pub fn parse(value: &str) -> Result<Self, SubsetError> {
        match value {
            "true" => Ok(Summary::True),
            "text" => Ok(Summary::Text),
            "data" => Ok(Summary::Data),
            "count" => Ok(Summary::Count),
            "false" => Ok(Summary::False),
            _ => Err(SubsetError::BadSummary),
        }
    }
}

/// Whether the JSON key `key` is the element `name`, or a choice-type variant of it
/// (`valueQuantity` for `value[x]`).
fn key_is_element(info: &ResourceTypeInfo, key: &str, name: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    if key == name {
        return true;
    }
    info.choice_elements.contains(&name)
        && key
            .strip_prefix(name)
            .and_then(|rest| rest.chars().next())
            .is_some_and(char::is_uppercase)
}

fn keep(info: &ResourceTypeInfo, key: &str, wanted: &[&str]) -> bool {
    matches!(key, "resourceType" | "id" | "meta")
        || wanted.iter().any(|name| key_is_element(info, key, name))
        || info
            .mandatory_elements
            .iter()
            .any(|name| key_is_element(info, key, name))
}

fn mark_subsetted(resource: &mut Map<String, Value>) {
    let meta = resource
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        let tags = meta
            .entry("tag")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(tags) = tags {
            tags.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "Resource encoded in summary mode"
            }));
        }
    }
}

/// Applies `_summary` to a resource. `Count` is meaningful only for searches and returns the
/// resource unchanged here.
pub fn apply_summary(resource: Value, info: &ResourceTypeInfo, summary: Summary) -> Value {
    let Value::Object(map) = resource else {
        return resource;
    };
    let mut out: Map<String, Value> = match summary {
        Summary::False | Summary::Count => return Value::Object(map),
        Summary::True => map
            .into_iter()
            .filter(|(k, _)| keep(info, k, info.summary_elements))
            .collect(),
        Summary::Text => map
            .into_iter()
            .filter(|(k, _)| keep(info, k, &["text"]))
            .collect(),
        Summary::Data => map.into_iter().filter(|(k, _)| k != "text").collect(),
    };
    mark_subsetted(&mut out);
    Value::Object(out)
}

/// Parses an `_elements` value into top-level element names.
pub fn parse_elements(value: &str) -> Result<Vec<String>, SubsetError> {
    let mut names = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let top = part.split('.').next().unwrap_or(part);
        let top = top.split_once('.').map_or(top, |(t, _)| t);
        if !top.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            || !top.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(SubsetError::BadElements);
        }
        names.push(top.to_string());
    }
    Ok(names)
}

/// Applies `_elements` (already parsed) to a resource.
pub fn apply_elements(resource: Value, info: &ResourceTypeInfo, elements: &[String]) -> Value {
    let Value::Object(map) = resource else {
        return resource;
    };
    let wanted: Vec<&str> = elements.iter().map(String::as_str).collect();
    let mut out: Map<String, Value> = map
        .into_iter()
        .filter(|(k, _)| keep(info, k, &wanted))
        .collect();
    mark_subsetted(&mut out);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn summary_and_elements_on_observation() {
        let info = crate::generated::resource_type_info("Observation").unwrap();
        let obs = json!({"resourceType": "Observation", "id": "1", "status": "final",
            "code": {"text": "x"}, "valueQuantity": {"value": 1}, "text": {"status": "generated"},
            "note": [{"text": "n"}]});
        let s = apply_summary(obs.clone(), info, Summary::True);
        assert!(s.get("valueQuantity").is_some());
        assert!(s.get("note").is_none());
        assert!(s.get("text").is_none());
        assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
        let d = apply_summary(obs.clone(), info, Summary::Data);
        assert!(d.get("text").is_none() && d.get("note").is_some());
        let e = apply_elements(obs, info, &parse_elements("value").unwrap());
        assert!(e.get("valueQuantity").is_some());
        assert!(e.get("status").is_some(), "mandatory elements stay");
        assert!(e.get("note").is_none());
        assert!(parse_elements("a b").is_err());
    }
}
