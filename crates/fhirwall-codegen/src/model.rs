//! Turns the parsed package into the plain tables the emitter writes; it must not format Rust or touch files.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::package::Package;

/// One concrete resource type, as `ResourceTypeInfo` in the generated code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    pub name: String,
    pub summary_elements: Vec<String>,
    pub mandatory_elements: Vec<String>,
    pub choice_elements: Vec<String>,
    pub patient_compartment_params: Vec<String>,
    pub patient_compartment_paths: Vec<String>,
    /// How each compartment parameter was resolved, for the comment above the entry.
    pub compartment_notes: Vec<CompartmentNote>,
}

/// How one patient-compartment parameter of a type was turned into element paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompartmentNote {
    pub param: String,
    /// `id` of the SearchParameter that defines the parameter for this type.
    pub search_parameter_id: String,
    pub paths: Vec<String>,
    /// Alternatives of the expression for this type that are not a plain dotted path.
    pub dropped: Vec<String>,
}

/// One SearchParameter, as `SearchParamDef` in the generated code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub bases: Vec<String>,
    pub expression: String,
    pub targets: Vec<String>,
    pub modifiers: Vec<String>,
    pub comparators: Vec<String>,
    pub url: String,
    pub experimental: bool,
    /// `component`: for composite parameters, (definition url, expression) of each part.
    pub components: Vec<(String, String)>,
}

/// Everything the emitter needs.
#[derive(Debug)]
pub struct Model {
    pub fhir_version: String,
    /// Sorted by name (byte order, the order `str::cmp` and the generated binary search use).
    pub resource_types: Vec<ResourceType>,
    /// Sorted by url.
    pub search_params: Vec<SearchParam>,
}

fn str_field<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

fn string_list(value: &Value, field: &str, what: &str) -> Result<Vec<String>> {
    match value.get(field) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{what}: {field} holds a non-string"))
            })
            .collect(),
        Some(_) => bail!("{what}: {field} is not an array"),
    }
}

/// Builds the model from the package, checking the assumptions the generated code relies on.
pub fn build(package: &Package) -> Result<Model> {
    let search_params = search_params(package)?;
    let mut resource_types = resource_types(package)?;
    add_patient_compartment(package, &search_params, &mut resource_types)?;
    let mut fhir_versions = BTreeSet::new();
    for (file, sd) in &package.structure_definitions {
        if let Some(version) = str_field(sd, "fhirVersion") {
            fhir_versions.insert(version.to_owned());
        } else if str_field(sd, "kind") == Some("resource") {
            bail!("{file} has no fhirVersion");
        }
    }
    let fhir_version = match fhir_versions.into_iter().collect::<Vec<_>>().as_slice() {
        [single] => single.clone(),
        other => bail!("StructureDefinitions disagree on fhirVersion: {other:?}"),
    };
    if fhir_version != package.version {
        bail!(
            "StructureDefinitions say FHIR {fhir_version}, package.json says {}",
            package.version
        );
    }
    Ok(Model {
        fhir_version,
        resource_types: resource_types.into_values().collect(),
        search_params,
    })
}

/// Concrete resource types: `kind = resource`, `derivation = specialization`, not abstract.
fn resource_types(package: &Package) -> Result<BTreeMap<String, ResourceType>> {
    let mut types = BTreeMap::new();
    for (file, sd) in &package.structure_definitions {
        let is_concrete_resource = str_field(sd, "kind") == Some("resource")
            && str_field(sd, "derivation") == Some("specialization")
            && sd.get("abstract").and_then(Value::as_bool) != Some(true);
        if !is_concrete_resource {
            continue;
        }
        let name = str_field(sd, "type")
            .with_context(|| format!("{file} has no type"))?
            .to_owned();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("{file}: unexpected resource type name {name:?}");
        }
        let elements = sd
            .get("snapshot")
            .and_then(|snapshot| snapshot.get("element"))
            .and_then(Value::as_array)
            .with_context(|| format!("{file} has no snapshot.element"))?;
        let prefix = format!("{name}.");
        let mut info = ResourceType {
            name: name.clone(),
            summary_elements: Vec::new(),
            mandatory_elements: Vec::new(),
            choice_elements: Vec::new(),
            patient_compartment_params: Vec::new(),
            patient_compartment_paths: Vec::new(),
            compartment_notes: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for element in elements {
            let path = str_field(element, "path")
                .with_context(|| format!("{file}: snapshot element without a path"))?;
            let Some(element_name) = path.strip_prefix(&prefix) else {
                continue;
            };
            if element_name.contains('.') {
                continue;
            }
            if !seen.insert(element_name.to_owned()) {
                bail!("{file}: top-level element {path} appears twice in the snapshot");
            }
            let (base_name, is_choice) = match element_name.strip_suffix("[x]") {
                Some(base_name) => (base_name, true),
                None => (element_name, false),
            };
            if base_name.is_empty() || !base_name.bytes().all(|b| b.is_ascii_alphanumeric()) {
                bail!("{file}: unexpected element name in path {path}");
            }
            if element.get("isSummary").and_then(Value::as_bool) == Some(true) {
                info.summary_elements.push(base_name.to_owned());
            }
            let min = element
                .get("min")
                .and_then(Value::as_u64)
                .with_context(|| format!("{file}: {path} has no min"))?;
            if min >= 1 {
                info.mandatory_elements.push(base_name.to_owned());
            }
            if is_choice {
                info.choice_elements.push(base_name.to_owned());
            }
        }
        if seen.is_empty() {
            bail!("{file}: no top-level elements in the snapshot");
        }
        if types.insert(name.clone(), info).is_some() {
            bail!("resource type {name} is defined twice ({file})");
        }
    }
    if types.is_empty() {
        bail!("the package defines no concrete resource types");
    }
    Ok(types)
}

fn search_params(package: &Package) -> Result<Vec<SearchParam>> {
    let mut by_url = BTreeMap::new();
    for (file, sp) in &package.search_parameters {
        let field = |name: &str| -> Result<String> {
            str_field(sp, name)
                .map(str::to_owned)
                .with_context(|| format!("{file} has no {name}"))
        };
        let param = SearchParam {
            id: field("id")?,
            name: field("code")?,
            kind: field("type")?,
            bases: string_list(sp, "base", file)?,
            expression: str_field(sp, "expression").unwrap_or_default().to_owned(),
            targets: string_list(sp, "target", file)?,
            modifiers: string_list(sp, "modifier", file)?,
            comparators: string_list(sp, "comparator", file)?,
            url: field("url")?,
            experimental: sp.get("experimental").and_then(Value::as_bool) == Some(true),
            components: components(sp, file)?,
        };
        if let Some(previous) = by_url.insert(param.url.clone(), param) {
            bail!("two SearchParameters share the url {}", previous.url);
        }
    }
    Ok(by_url.into_values().collect())
}

/// The `component` list of a composite SearchParameter: (definition, expression) pairs.
fn components(sp: &Value, file: &str) -> Result<Vec<(String, String)>> {
    let Some(list) = sp.get("component") else {
        return Ok(Vec::new());
    };
    let Some(items) = list.as_array() else {
        bail!("{file}: component is not an array");
    };
    items
        .iter()
        .map(|item| {
            let definition = str_field(item, "definition")
                .with_context(|| format!("{file}: a component has no definition"))?;
            let expression = str_field(item, "expression")
                .with_context(|| format!("{file}: a component has no expression"))?;
            Ok((definition.to_owned(), expression.to_owned()))
        })
        .collect()
}

/// Fills `patient_compartment_params` / `_paths` from `CompartmentDefinition-patient.json`.
fn add_patient_compartment(
    package: &Package,
    search_params: &[SearchParam],
    types: &mut BTreeMap<String, ResourceType>,
) -> Result<()> {
    let compartment = &package.patient_compartment;
    if str_field(compartment, "code") != Some("Patient") {
        bail!("CompartmentDefinition-patient.json is not the Patient compartment");
    }
    let resources = compartment
        .get("resource")
        .and_then(Value::as_array)
        .context("CompartmentDefinition-patient.json has no resource list")?;
    for resource in resources {
        let type_name = str_field(resource, "code")
            .context("CompartmentDefinition-patient.json: resource without code")?;
        let params = string_list(resource, "param", "CompartmentDefinition-patient.json")?;
        let info = types.get_mut(type_name).with_context(|| {
            format!("CompartmentDefinition-patient.json names unknown type {type_name}")
        })?;
        if !info.patient_compartment_params.is_empty() {
            bail!("CompartmentDefinition-patient.json lists {type_name} twice");
        }
        for param in params {
            let definition = find_search_param(search_params, type_name, &param)?;
            let reduced = reduce_expression(type_name, &definition.expression);
            if reduced.paths.is_empty() {
                bail!(
                    "patient compartment param {type_name}:{param} ({}) has no plain path in {:?}",
                    definition.id,
                    definition.expression
                );
            }
            for path in &reduced.paths {
                if !info.patient_compartment_paths.contains(path) {
                    info.patient_compartment_paths.push(path.clone());
                }
            }
            info.compartment_notes.push(CompartmentNote {
                param: param.clone(),
                search_parameter_id: definition.id.clone(),
                paths: reduced.paths,
                dropped: reduced.dropped,
            });
            info.patient_compartment_params.push(param);
        }
    }
    Ok(())
}

/// The SearchParameter with this code whose base includes the type. If several match, the
/// non-experimental ones win (the package carries example parameters that shadow real ones).
fn find_search_param<'a>(
    search_params: &'a [SearchParam],
    type_name: &str,
    code: &str,
) -> Result<&'a SearchParam> {
    let matching: Vec<&SearchParam> = search_params
        .iter()
        .filter(|sp| sp.name == code && sp.bases.iter().any(|base| base == type_name))
        .collect();
    let chosen: Vec<&SearchParam> = if matching.len() > 1 {
        matching.into_iter().filter(|sp| !sp.experimental).collect()
    } else {
        matching
    };
    match chosen.as_slice() {
        [single] => Ok(single),
        [] => bail!("no SearchParameter {code} with base {type_name}"),
        several => bail!(
            "{} SearchParameters {code} with base {type_name}",
            several.len()
        ),
    }
}

/// The result of reducing a FHIRPath expression to plain element paths of one type.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reduced {
    pub paths: Vec<String>,
    pub dropped: Vec<String>,
}

/// Splits `expression` at top-level `|`, keeps the alternatives about `type_name`, strips the
/// `Type.` prefix and one trailing `.where(...)`, and keeps what is left if it is a plain dotted
/// path. Alternatives that mention the type but do not reduce are returned in `dropped`.
pub fn reduce_expression(type_name: &str, expression: &str) -> Reduced {
    let prefix = format!("{type_name}.");
    let mut reduced = Reduced::default();
    for alternative in split_top_level(expression, '|') {
        let alternative = alternative.trim();
        let Some(rest) = alternative.strip_prefix(&prefix) else {
            // A parenthesised or cast alternative about this type cannot be reduced; note it.
            if alternative
                .trim_start_matches('(')
                .trim_start()
                .starts_with(&prefix)
            {
                reduced.dropped.push(alternative.to_owned());
            }
            continue;
        };
        let path = strip_trailing_where(rest);
        if is_plain_path(path) {
            if !reduced.paths.iter().any(|known| known == path) {
                reduced.paths.push(path.to_owned());
            }
        } else {
            reduced.dropped.push(alternative.to_owned());
        }
    }
    reduced
}

/// Splits at `separator` where it is outside parentheses, brackets and quotes.
fn split_top_level(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth: i32 = 0;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match quote {
            Some(open) => {
                if c == open {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' | '`' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ if c == separator && depth == 0 => {
                    parts.push(text.get(start..index).unwrap_or_default());
                    start = index + c.len_utf8();
                }
                _ => {}
            },
        }
    }
    parts.push(text.get(start..).unwrap_or_default());
    parts
}

/// `subject.where(resolve() is Patient)` -> `subject`; anything else is returned unchanged.
fn strip_trailing_where(path: &str) -> &str {
    let Some(position) = path.find(".where(") else {
        return path;
    };
    let head = path.get(..position).unwrap_or_default();
    let call = path.get(position + ".where".len()..).unwrap_or_default();
    // `call` starts with `(`; it must close exactly at the end of the string.
    let mut depth: i32 = 0;
    let mut quote: Option<char> = None;
    for (index, c) in call.char_indices() {
        match quote {
            Some(open) => {
                if c == open {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' | '`' => quote = Some(c),
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return if index + 1 == call.len() { head } else { path };
                    }
                }
                _ => {}
            },
        }
    }
    path
}

fn is_plain_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|segment| {
            segment.starts_with(|c: char| c.is_ascii_alphabetic())
                && segment.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_alternatives_for_the_type() {
        let reduced = reduce_expression(
            "CarePlan",
            "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | CareTeam.subject",
        );
        assert_eq!(reduced.paths, vec!["subject".to_owned()]);
        assert!(reduced.dropped.is_empty());
    }

    #[test]
    fn does_not_confuse_type_prefixes() {
        let reduced = reduce_expression(
            "Medication",
            "MedicationAdministration.subject | Medication.code",
        );
        assert_eq!(reduced.paths, vec!["code".to_owned()]);
    }

    #[test]
    fn keeps_several_alternatives_and_dedupes() {
        let reduced = reduce_expression(
            "AuditEvent",
            "AuditEvent.agent.who.where(resolve() is Patient) | AuditEvent.entity.what.where(resolve() is Patient) | AuditEvent.agent.who",
        );
        assert_eq!(
            reduced.paths,
            vec!["agent.who".to_owned(), "entity.what".to_owned()]
        );
    }

    #[test]
    fn drops_what_is_not_a_plain_path() {
        let reduced = reduce_expression(
            "Observation",
            "(Observation.value as CodeableConcept) | Observation.code.where(a = 'b').coding | Observation.x.resolve() | Observation.focus",
        );
        assert_eq!(reduced.paths, vec!["focus".to_owned()]);
        assert_eq!(
            reduced.dropped,
            vec![
                "(Observation.value as CodeableConcept)".to_owned(),
                "Observation.code.where(a = 'b').coding".to_owned(),
                "Observation.x.resolve()".to_owned(),
            ]
        );
    }

    #[test]
    fn split_respects_parentheses_and_quotes() {
        assert_eq!(
            split_top_level("a.where(x | y) | b | c.where('|')", '|'),
            vec!["a.where(x | y) ", " b ", " c.where('|')"]
        );
    }
}
