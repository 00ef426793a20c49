//! A test-only `Model` built from the core package's StructureDefinition snapshots, and the
//! index of their invariants by element path. It must not be used outside tests.

use std::collections::{HashMap, HashSet};

use fhirwall_fhirpath::{Child, Model};
use serde_json::Value;

const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";

/// One invariant as a StructureDefinition declares it.
#[derive(Debug, Clone)]
pub struct Invariant {
    pub key: String,
    pub severity: String,
    pub expression: String,
}

#[derive(Default)]
pub struct PackageModel {
    elements: HashMap<String, HashMap<String, (Vec<String>, bool)>>,
    base: HashMap<String, String>,
    resources: HashSet<String>,
    primitives: HashSet<String>,
    /// Invariants of the base definitions by element path (a type name for a type's root).
    pub invariants: HashMap<String, Vec<Invariant>>,
    /// Invariants of the resource profiles (by canonical URL), by element path.
    pub profile_invariants: HashMap<String, HashMap<String, Vec<Invariant>>>,
    /// Every invariant of every StructureDefinition, profiles included: (definition id, path,
    /// invariant).
    pub all_invariants: Vec<(String, String, Invariant)>,
}

fn str_of<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// The type code of one `ElementDefinition.type`, with R4's System types (`id`, `url`) mapped
/// to the FHIR type the fhir-type extension names.
fn type_code(t: &Value) -> Option<String> {
    let code = str_of(t, "code")?;
    if code.starts_with("http://hl7.org/fhirpath/System.") {
        let fhir = t
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| str_of(e, "url") == Some(FHIR_TYPE_EXT))
            .and_then(|e| str_of(e, "valueUrl"));
        if let Some(fhir) = fhir {
            return Some(fhir.to_owned());
        }
    }
    Some(code.to_owned())
}

impl PackageModel {
    pub fn from_definitions<'v>(definitions: impl Iterator<Item = &'v Value>) -> Self {
        let mut model = PackageModel::default();
        for sd in definitions {
            if str_of(sd, "resourceType") != Some("StructureDefinition") {
                continue;
            }
            let id = str_of(sd, "id").unwrap_or_default().to_owned();
            let kind = str_of(sd, "kind").unwrap_or_default();
            let derivation = str_of(sd, "derivation");
            let type_name = str_of(sd, "type").unwrap_or_default().to_owned();
            let elements: Vec<&Value> = sd
                .pointer("/snapshot/element")
                .and_then(Value::as_array)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let mut declared = Vec::new();
            for element in &elements {
                let path = str_of(element, "path").unwrap_or_default();
                for c in element
                    .get("constraint")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let (Some(key), Some(expression)) =
                        (str_of(c, "key"), str_of(c, "expression"))
                    {
                        let invariant = Invariant {
                            key: key.to_owned(),
                            severity: str_of(c, "severity").unwrap_or("error").to_owned(),
                            expression: expression.to_owned(),
                        };
                        declared.push((path.to_owned(), invariant.clone()));
                        model
                            .all_invariants
                            .push((id.clone(), path.to_owned(), invariant));
                    }
                }
            }
            if derivation == Some("constraint") {
                if kind == "resource"
                    && let Some(url) = str_of(sd, "url")
                {
                    let by_path = model.profile_invariants.entry(url.to_owned()).or_default();
                    for (path, invariant) in declared {
                        by_path.entry(path).or_default().push(invariant);
                    }
                }
                // A profile is not a type of its own; it only names its base type.
                model.base.entry(id).or_insert(type_name);
                continue;
            }
            if kind == "logical" {
                continue;
            }
            if let Some(base) = str_of(sd, "baseDefinition").and_then(|b| b.rsplit('/').next()) {
                model.base.insert(type_name.clone(), base.to_owned());
            }
            match kind {
                "resource" => {
                    model.resources.insert(type_name.clone());
                }
                "primitive-type" => {
                    model.primitives.insert(type_name.clone());
                }
                _ => {}
            }
            for (path, invariant) in declared {
                model.invariants.entry(path).or_default().push(invariant);
            }
            for (i, element) in elements.iter().enumerate() {
                let path = str_of(element, "path").unwrap_or_default();
                let Some((parent, name)) = path.rsplit_once('.') else {
                    continue;
                };
                let (name, is_choice) = match name.strip_suffix("[x]") {
                    Some(n) => (n, true),
                    None => (name, false),
                };
                let has_children = elements
                    .get(i + 1)
                    .and_then(|next| str_of(next, "path"))
                    .is_some_and(|next| next.starts_with(&format!("{path}.")));
                let types: Vec<String> =
                    if let Some(reference) = str_of(element, "contentReference") {
                        vec![reference.trim_start_matches('#').to_owned()]
                    } else if has_children {
                        let code = element
                            .get("type")
                            .and_then(Value::as_array)
                            .and_then(|t| t.first())
                            .and_then(type_code)
                            .unwrap_or_else(|| "BackboneElement".to_owned());
                        model.base.insert(path.to_owned(), code);
                        vec![path.to_owned()]
                    } else {
                        element
                            .get("type")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(type_code)
                            .collect()
                    };
                model
                    .elements
                    .entry(parent.to_owned())
                    .or_default()
                    .insert(name.to_owned(), (types, is_choice));
            }
        }
        model
    }
}

impl Model for PackageModel {
    fn child(&self, parent_type: &str, name: &str) -> Option<Child<'_>> {
        self.elements
            .get(parent_type)?
            .get(name)
            .map(|(types, is_choice)| Child {
                types,
                is_choice: *is_choice,
            })
    }

    fn base_type(&self, type_name: &str) -> Option<&str> {
        self.base.get(type_name).map(String::as_str)
    }

    fn is_resource_type(&self, name: &str) -> bool {
        self.resources.contains(name)
    }

    fn is_primitive(&self, type_name: &str) -> bool {
        self.primitives.contains(type_name)
    }
}
