//! Shared helpers of the integration tests: the validator and the shared FHIR packages; it must not assert anything itself.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use fhirwall_definitions::{Definitions, StructureDef};
use fhirwall_validation::{Outcome, Severity, Validator};
use serde_json::Value;

/// The folder of the test corpus.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus"))
}

/// One validator for the corpus tests: the core, the test profiles of the corpus, and the US
/// Core profiles when the shared folder has them.
pub fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let validator = Validator::new(Definitions::core());
        for (_, text) in read_dir_json(&corpus_dir().join("profiles")) {
            let value: Value = serde_json::from_str(&text).expect("test profile is JSON");
            let profile = StructureDef::from_json(&value).expect("test profile parses");
            validator
                .add_profile(Arc::new(profile))
                .expect("test profile registers");
        }
        if let Some(profiles) = us_core_profiles() {
            for profile in profiles {
                validator
                    .add_profile(profile)
                    .expect("US Core profile registers");
            }
        }
        validator
    })
}

/// The `.json` files of a folder as (file name, text), sorted by name.
pub fn read_dir_json(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("corpus folder")
        .map(|entry| entry.expect("folder entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read_to_string(&path).expect("corpus file"))
        })
        .collect();
    files.sort();
    files
}

/// The eight US Core 5.0.1 StructureDefinitions, or None when the shared folder is absent.
pub fn us_core_profiles() -> Option<Vec<Arc<StructureDef>>> {
    let text = std::fs::read_to_string(fhirwall_testdata::us_core_definitions()?).ok()?;
    let list: Vec<Value> = serde_json::from_str(&text).expect("US Core file is JSON");
    Some(
        list.iter()
            .map(|sd| Arc::new(StructureDef::from_json(sd).expect("US Core profile parses")))
            .collect(),
    )
}

/// The issues of an outcome, one line each, for assertion messages.
pub fn describe(outcome: &Outcome) -> String {
    outcome
        .issues
        .iter()
        .map(|i| {
            format!(
                "  {} {} {} @ {}: {}",
                i.severity.code(),
                i.code.code(),
                i.rule,
                i.expression,
                i.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Errors only.
pub fn errors(outcome: &Outcome) -> Vec<&fhirwall_validation::Issue> {
    outcome
        .issues
        .iter()
        .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
        .collect()
}
