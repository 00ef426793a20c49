//! fhirwall-codegen: generates `fhirwall-model`'s tables from the FHIR R4 core package; it must not be a dependency of the server (dev-dependency only).
//!
//! [`generate`] reads `hl7.fhir.r4.core-4.0.1.tgz` and returns the generated files
//! (`crates/fhirwall-model/src/generated/` and `crates/fhirwall-definitions/data/`, paths relative
//! to the workspace root); [`stale_files`] and [`write_files`] compare them with, or write them
//! into, a workspace. The output is deterministic and already rustfmt-clean, so no rustfmt is
//! needed to produce or check it.

mod definitions;
mod emit;
mod model;
mod package;

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The workspace root, found from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Where the core package is expected: in `$FHIR_R4_PACKAGES_DIR` when set, else
/// `../shared/fhir-r4/hl7.fhir.r4.core-4.0.1.tgz` relative to the workspace root.
pub fn default_package_path() -> PathBuf {
    // The same variable the test-data reader honours, for checkouts not beside `../shared`.
    match std::env::var_os("FHIR_R4_PACKAGES_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("hl7.fhir.r4.core-4.0.1.tgz"),
        _ => workspace_root().join("../shared/fhir-r4/hl7.fhir.r4.core-4.0.1.tgz"),
    }
}

/// The directories the generator owns, relative to the workspace root: a file there that it
/// would not write counts as stale.
const GENERATED_DIRS: &[&str] = &[MODEL_DIR, definitions::DATA_DIR];

/// Where `fhirwall-model`'s generated Rust tables go.
const MODEL_DIR: &str = "crates/fhirwall-model/src/generated";

/// Reads the package at `package_path` and returns `(path, contents)` for every generated file,
/// paths relative to the workspace root, in a fixed order.
pub fn generate(package_path: &Path) -> Result<Vec<(String, String)>> {
    let package = package::read_package(package_path)?;
    let model = model::build(&package)
        .with_context(|| format!("unexpected content in {}", package_path.display()))?;
    let data = definitions::data_json(&package)
        .with_context(|| format!("unexpected content in {}", package_path.display()))?;
    Ok(vec![
        (
            format!("{}/{}", MODEL_DIR, emit::MOD_FILE),
            emit::mod_rs(&model, &package.name, &package.version),
        ),
        (
            format!("{}/{}", MODEL_DIR, emit::SEARCH_PARAMS_FILE),
            emit::search_params_rs(&model, &package.name, &package.version),
        ),
        (
            format!("{}/{}", definitions::DATA_DIR, definitions::DATA_FILE),
            data,
        ),
    ])
}

/// The files under `root` that differ from `files`: missing or different ones, and files in the
/// generated directories the generator would not write. Empty when the workspace is fresh.
pub fn stale_files(root: &Path, files: &[(String, String)]) -> Result<Vec<String>> {
    let mut stale = Vec::new();
    for (name, contents) in files {
        let path = root.join(name);
        match fs::read_to_string(&path) {
            Ok(existing) if existing == *contents => {}
            Ok(_) => stale.push(format!("{name} (differs)")),
            Err(error) if error.kind() == ErrorKind::NotFound => {
                stale.push(format!("{name} (missing)"));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        }
    }
    for dir in GENERATED_DIRS {
        let out_dir = root.join(dir);
        match fs::read_dir(&out_dir) {
            Ok(entries) => {
                let mut extra = Vec::new();
                for entry in entries {
                    let name = format!("{dir}/{}", entry?.file_name().to_string_lossy());
                    if !files.iter().any(|(known, _)| *known == name) {
                        extra.push(format!("{name} (not generated)"));
                    }
                }
                extra.sort();
                stale.extend(extra);
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot list {}", out_dir.display()));
            }
        }
    }
    Ok(stale)
}

/// Writes `files` under `root` (directories created if needed), leaving files whose contents are
/// already right untouched. Returns the names of the files written.
pub fn write_files(root: &Path, files: &[(String, String)]) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for (name, contents) in files {
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if fs::read_to_string(&path).is_ok_and(|existing| existing == *contents) {
            continue;
        }
        fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(name.clone());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model built from the real package, or `None` (test passes) when it is not present.
    fn real_model() -> Result<Option<model::Model>> {
        let path = default_package_path();
        if !path.exists() {
            println!("{} not found; skipping", path.display());
            return Ok(None);
        }
        Ok(Some(model::build(&package::read_package(&path)?)?))
    }

    fn find<'a>(model: &'a model::Model, name: &str) -> Result<&'a model::ResourceType> {
        model
            .resource_types
            .iter()
            .find(|info| info.name == name)
            .with_context(|| format!("{name} missing"))
    }

    #[test]
    fn model_from_the_real_package() -> Result<()> {
        let Some(model) = real_model()? else {
            return Ok(());
        };
        assert_eq!(model.fhir_version, "4.0.1");
        assert_eq!(model.resource_types.len(), 146);
        assert_eq!(model.search_params.len(), 1400);
        let names: Vec<&str> = model
            .resource_types
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        for present in ["Bundle", "Parameters", "Binary", "Patient", "Observation"] {
            assert!(names.contains(&present), "{present}");
        }
        for absent in ["Resource", "DomainResource", "vitalsigns"] {
            assert!(!names.contains(&absent), "{absent}");
        }

        let patient = find(&model, "Patient")?;
        assert!(patient.mandatory_elements.is_empty());
        for summary in ["id", "meta", "identifier", "name", "birthDate", "deceased"] {
            assert!(
                patient.summary_elements.iter().any(|e| e == summary),
                "{summary}"
            );
        }
        assert_eq!(patient.choice_elements, ["deceased", "multipleBirth"]);
        assert_eq!(patient.patient_compartment_params, ["link"]);
        assert_eq!(patient.patient_compartment_paths, ["link.other"]);

        let observation = find(&model, "Observation")?;
        assert_eq!(observation.mandatory_elements, ["status", "code"]);
        assert_eq!(
            observation.patient_compartment_paths,
            ["subject", "performer"]
        );

        let audit = find(&model, "AuditEvent")?;
        assert_eq!(
            audit.patient_compartment_paths,
            ["agent.who", "entity.what"]
        );

        let parameters = find(&model, "Parameters")?;
        assert!(parameters.patient_compartment_params.is_empty());

        let urls: Vec<&str> = model.search_params.iter().map(|p| p.url.as_str()).collect();
        let mut sorted_urls = urls.clone();
        sorted_urls.sort_unstable();
        sorted_urls.dedup();
        assert_eq!(urls, sorted_urls);
        Ok(())
    }

    #[test]
    fn generate_is_deterministic() -> Result<()> {
        let path = default_package_path();
        if !path.exists() {
            println!("{} not found; skipping", path.display());
            return Ok(());
        }
        let first = generate(&path)?;
        let second = generate(&path)?;
        assert_eq!(first, second);
        for (name, contents) in &first {
            assert!(
                contents.starts_with(
                    "//! GENERATED by fhirwall-codegen from hl7.fhir.r4.core 4.0.1 (package/"
                ) || contents.starts_with(
                    "{\"generated\":\"GENERATED by fhirwall-codegen from hl7.fhir.r4.core 4.0.1 (package/"
                ),
                "{name}"
            );
        }
        Ok(())
    }
}
