//! Reads the FHIR core package (`.tgz`) into memory; it only reads, and must never write or fetch anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The package name this generator is written for.
pub const EXPECTED_NAME: &str = "hl7.fhir.r4.core";
/// The package version this generator is written for.
pub const EXPECTED_VERSION: &str = "4.0.1";

/// The conformance resources of the package that the generator needs, parsed.
#[derive(Debug)]
pub struct Package {
    /// `name` from `package/package.json`.
    pub name: String,
    /// `version` from `package/package.json`.
    pub version: String,
    /// `package/StructureDefinition-*.json`, keyed by file name (sorted, so iteration is deterministic).
    pub structure_definitions: BTreeMap<String, Value>,
    /// `package/SearchParameter-*.json`, keyed by file name.
    pub search_parameters: BTreeMap<String, Value>,
    /// `package/CompartmentDefinition-patient.json`.
    pub patient_compartment: Value,
    /// `package/ValueSet-*.json`, keyed by file name.
    pub value_sets: BTreeMap<String, Value>,
    /// `package/CodeSystem-*.json`, keyed by file name.
    pub code_systems: BTreeMap<String, Value>,
}

/// Which of the package's top-level files we keep.
enum Wanted {
    Manifest,
    StructureDefinition,
    SearchParameter,
    PatientCompartment,
    ValueSet,
    CodeSystem,
}

fn classify(file_name: &str) -> Option<Wanted> {
    if file_name == "package.json" {
        Some(Wanted::Manifest)
    } else if file_name == "CompartmentDefinition-patient.json" {
        Some(Wanted::PatientCompartment)
    } else if file_name.ends_with(".json") && file_name.starts_with("StructureDefinition-") {
        Some(Wanted::StructureDefinition)
    } else if file_name.ends_with(".json") && file_name.starts_with("SearchParameter-") {
        Some(Wanted::SearchParameter)
    } else if file_name.ends_with(".json") && file_name.starts_with("ValueSet-") {
        Some(Wanted::ValueSet)
    } else if file_name.ends_with(".json") && file_name.starts_with("CodeSystem-") {
        Some(Wanted::CodeSystem)
    } else {
        None
    }
}

/// Reads the gzipped tar at `path`, keeping only the files directly under `package/` that the
/// generator uses, and checks that it is `hl7.fhir.r4.core` 4.0.1.
pub fn read_package(path: &Path) -> Result<Package> {
    let file =
        File::open(path).with_context(|| format!("cannot open FHIR package {}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));

    let mut manifest: Option<Value> = None;
    let mut patient_compartment: Option<Value> = None;
    let mut structure_definitions = BTreeMap::new();
    let mut search_parameters = BTreeMap::new();
    let mut value_sets = BTreeMap::new();
    let mut code_systems = BTreeMap::new();

    let entries = archive
        .entries()
        .with_context(|| format!("cannot read {} as a .tgz", path.display()))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("corrupt entry in {}", path.display()))?;
        let entry_path = entry.path()?.to_string_lossy().into_owned();
        let Some(file_name) = entry_path.strip_prefix("package/") else {
            continue;
        };
        if file_name.contains('/') {
            continue;
        }
        let Some(kind) = classify(file_name) else {
            continue;
        };
        let file_name = file_name.to_owned();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {entry_path}"))?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{entry_path} is not valid JSON"))?;
        let duplicate = match kind {
            Wanted::Manifest => manifest.replace(value).is_some(),
            Wanted::PatientCompartment => patient_compartment.replace(value).is_some(),
            Wanted::StructureDefinition => structure_definitions.insert(file_name, value).is_some(),
            Wanted::SearchParameter => search_parameters.insert(file_name, value).is_some(),
            Wanted::ValueSet => value_sets.insert(file_name, value).is_some(),
            Wanted::CodeSystem => code_systems.insert(file_name, value).is_some(),
        };
        if duplicate {
            bail!("{entry_path} appears twice in {}", path.display());
        }
    }

    let manifest = manifest.context("package/package.json is missing")?;
    let name = manifest
        .get("name")
        .and_then(Value::as_str)
        .context("package.json has no name")?
        .to_owned();
    let version = manifest
        .get("version")
        .and_then(Value::as_str)
        .context("package.json has no version")?
        .to_owned();
    if name != EXPECTED_NAME || version != EXPECTED_VERSION {
        bail!(
            "{} is {name} {version}, but this generator is written for {EXPECTED_NAME} {EXPECTED_VERSION}",
            path.display()
        );
    }
    let patient_compartment =
        patient_compartment.context("package/CompartmentDefinition-patient.json is missing")?;
    if structure_definitions.is_empty() {
        bail!(
            "no package/StructureDefinition-*.json in {}",
            path.display()
        );
    }
    if search_parameters.is_empty() {
        bail!("no package/SearchParameter-*.json in {}", path.display());
    }
    Ok(Package {
        name,
        version,
        structure_definitions,
        search_parameters,
        patient_compartment,
        value_sets,
        code_systems,
    })
}
