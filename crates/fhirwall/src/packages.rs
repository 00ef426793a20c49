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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    fn temp_file(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fhirwall-packages-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn profile(url: &str) -> Value {
        serde_json::json!({"resourceType": "StructureDefinition", "url": url})
    }

    #[test]
    fn reads_an_npm_package() {
        let path = temp_file("p.tgz");
        let file = std::fs::File::create(&path).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        let mut add = |name: &str, value: &Value| {
            let bytes = serde_json::to_vec(value).unwrap();
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, bytes.as_slice())
                .unwrap();
        };
        add("package/package.json", &serde_json::json!({"name": "x"}));
        add(
            "package/StructureDefinition-a.json",
            &profile("https://e.org/a"),
        );
        add(
            "package/ValueSet-v.json",
            &serde_json::json!({"resourceType": "ValueSet"}),
        );
        add(
            "package/other/StructureDefinition-b.json",
            &profile("https://e.org/b"),
        );
        builder.into_inner().unwrap().finish().unwrap();
        let found = structure_definitions(&path).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0]["url"], "https://e.org/a");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn reads_json_arrays_bundles_and_single_resources() {
        let path = temp_file("p.json");
        let bundle = serde_json::json!([
            profile("https://e.org/1"),
            {"resourceType": "Bundle", "entry": [
                {"resource": profile("https://e.org/2")},
                {"resource": {"resourceType": "Patient"}}
            ]}
        ]);
        std::fs::write(&path, serde_json::to_vec(&bundle).unwrap()).unwrap();
        let urls: Vec<Value> = structure_definitions(&path)
            .unwrap()
            .into_iter()
            .map(|sd| sd["url"].clone())
            .collect();
        assert_eq!(urls, ["https://e.org/1", "https://e.org/2"]);
        std::fs::write(&path, br#"{"resourceType": "Patient"}"#).unwrap();
        assert!(structure_definitions(&path).is_err());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
