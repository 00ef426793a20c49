//! Reads profile packages named in the configuration: FHIR npm packages (.tgz) and JSON files; it only reads files and hands StructureDefinitions on, it must not validate them.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// Largest single file read from a package, against a corrupt or hostile archive.
const MAX_ENTRY_BYTES: u64 = 64 * 1024 * 1024;

/// The StructureDefinitions in one package file.
pub fn structure_definitions(path: &Path) -> anyhow::Result<Vec<Value>> {
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening profile package {}", path.display()))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive
            .entries()
            .with_context(|| format!("reading {}", path.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", path.display()))?;
            let entry_path = entry.path()?.to_string_lossy().into_owned();
            let Some(file_name) = entry_path.strip_prefix("package/") else {
                continue;
            };
            if file_name.contains('/')
                || !file_name.starts_with("StructureDefinition-")
                || !file_name.ends_with(".json")
            {
                continue;
            }
            let mut bytes = Vec::new();
            entry
                .take(MAX_ENTRY_BYTES)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {entry_path} in {}", path.display()))?;
            let value: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{entry_path} in {} is not JSON", path.display()))?;
            collect(value, &mut out);
        }
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        collect(value, &mut out);
    }
    if out.is_empty() {
        bail!("{} holds no StructureDefinition", path.display());
    }
    Ok(out)
}

/// Keeps StructureDefinitions from a resource, a Bundle's entries or a JSON array.
fn collect(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|item| collect(item, out)),
        Value::Object(mut map) => match map.get("resourceType").and_then(Value::as_str) {
            Some("StructureDefinition") => out.push(Value::Object(map)),
            Some("Bundle") => {
                if let Some(Value::Array(entries)) = map.remove("entry") {
                    for mut entry in entries {
                        if let Some(resource) = entry.get_mut("resource").map(Value::take) {
                            collect(resource, out);
                        }
                    }
                }
            }
            _ => {}
        },
        _ => {}
    }
}
