//! Reads JSON files out of the FHIR packages (`.tgz`) in the shared folder; tests only, and it
//! must never write or fetch anything.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The shared FHIR folder beside the workspace.
pub fn shared_file(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fhir-r4"
    ))
    .join(name)
}

/// A parsed package file.
pub struct JsonFile {
    pub name: String,
    pub size: usize,
    pub value: Value,
}

/// Every `package/*.json` file of the archive whose name `wanted` accepts, parsed, in archive
/// order. None (with a note printed) when the archive is absent.
pub fn read_json_files(archive: &str, wanted: impl Fn(&str) -> bool) -> Option<Vec<JsonFile>> {
    let path = shared_file(archive);
    let Ok(file) = File::open(&path) else {
        println!("skipped: {} is not available", path.display());
        return None;
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in tar.entries().expect("readable archive") {
        let mut entry = entry.expect("readable entry");
        let name = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .into_owned();
        let Some(file_name) = name.strip_prefix("package/") else {
            continue;
        };
        if file_name.contains('/') || !file_name.ends_with(".json") || !wanted(file_name) {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("readable file");
        // A few package files (the index, some examples) are not resources; keep what parses.
        if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
            out.push(JsonFile {
                name: file_name.to_owned(),
                size: bytes.len(),
                value,
            });
        }
    }
    Some(out)
}
