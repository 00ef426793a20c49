//! Test-only: reads the FHIR R4 packages in the shared folder beside the workspace
//! (`../shared/fhir-r4`) for the test suites; it must never be a normal dependency, and it must
//! never write, fetch or unpack anything to disk.
//!
//! Every getter answers `None` when the shared folder lacks the file, so that a test can skip
//! (with a note) instead of failing on a machine without the packages.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The official core package: StructureDefinitions, SearchParameters, ValueSets and the rest.
pub const CORE_PACKAGE: &str = "hl7.fhir.r4.core-4.0.1.tgz";

/// The specification's examples, with the conformance resources of the core package.
pub const EXAMPLES_PACKAGE: &str = "hl7.fhir.r4.examples-4.0.1.tgz";

/// The eight US Core 5.0.1 StructureDefinitions, as one JSON array.
pub const US_CORE_DEFINITIONS: &str = "us-core-5.0.1-structuredefinitions.json";

/// The variable that points at the FHIR packages when the checkout does not sit beside them.
pub const PACKAGES_DIR_VARIABLE: &str = "FHIR_R4_PACKAGES_DIR";

/// The shared FHIR folder: `$FHIR_R4_PACKAGES_DIR` when set, else beside the workspace,
/// `<workspace>/../shared/fhir-r4`.
pub fn shared_fhir_dir() -> PathBuf {
    match std::env::var_os(PACKAGES_DIR_VARIABLE) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fhir-r4"
        )),
    }
}

/// Where the shared file `name` is, or would be; for notes that name the missing file.
pub fn shared_file(name: &str) -> PathBuf {
    shared_fhir_dir().join(name)
}

/// The shared file `name`, when the shared folder has it.
fn present(name: &str) -> Option<PathBuf> {
    Some(shared_file(name)).filter(|path| path.is_file())
}

/// The shared file `name`; when the shared folder lacks it, None after printing the note
/// `skipped: <path> is absent`, so that a test run shows why a test did nothing.
pub fn shared_file_or_skip(name: &str) -> Option<PathBuf> {
    let found = present(name);
    if found.is_none() {
        println!("skipped: {} is absent", shared_file(name).display());
    }
    found
}

/// [`CORE_PACKAGE`], when the shared folder has it.
pub fn core_package() -> Option<PathBuf> {
    present(CORE_PACKAGE)
}

/// [`EXAMPLES_PACKAGE`], when the shared folder has it.
pub fn examples_package() -> Option<PathBuf> {
    present(EXAMPLES_PACKAGE)
}

/// [`US_CORE_DEFINITIONS`], when the shared folder has it.
pub fn us_core_definitions() -> Option<PathBuf> {
    present(US_CORE_DEFINITIONS)
}

/// Hands every `package/*.json` file of the npm package (`.tgz`) at `path` whose name under
/// `package/` `wanted` accepts to `visit`, as (name, bytes), in archive order, while the
/// archive is still being read; files in subfolders (`package/openapi/`) are passed over.
pub fn for_each_package_json(
    path: &Path,
    mut wanted: impl FnMut(&str) -> bool,
    mut visit: impl FnMut(String, Vec<u8>),
) -> io::Result<()> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(path)?));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let entry_path = entry.path()?.to_string_lossy().into_owned();
        let Some(name) = entry_path.strip_prefix("package/") else {
            continue;
        };
        if name.contains('/') || !name.ends_with(".json") || !wanted(name) {
            continue;
        }
        let name = name.to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        visit(name, bytes);
    }
    Ok(())
}

/// Every `package/*.json` file of the npm package at `path` whose name `wanted` accepts, as
/// (name under `package/`, bytes), in archive order.
pub fn package_json_files(
    path: &Path,
    wanted: impl FnMut(&str) -> bool,
) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for_each_package_json(path, wanted, |name, bytes| files.push((name, bytes)))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn the_shared_folder_is_the_variable_or_beside_the_workspace() {
        let dir = shared_fhir_dir();
        match std::env::var_os(PACKAGES_DIR_VARIABLE) {
            Some(set) if !set.is_empty() => assert_eq!(dir, PathBuf::from(set)),
            _ => assert!(
                dir.ends_with("../../../shared/fhir-r4"),
                "{}",
                dir.display()
            ),
        }
        assert_eq!(shared_file(CORE_PACKAGE), dir.join(CORE_PACKAGE));
    }

    #[test]
    fn core_package_lists_top_level_json_files_only() {
        let Some(path) = shared_file_or_skip(CORE_PACKAGE) else {
            return;
        };
        let files = package_json_files(&path, |name| name.starts_with("CompartmentDefinition-"))
            .expect("readable package");
        assert_eq!(files.len(), 6);
        assert!(files.iter().all(|(name, bytes)| {
            !name.contains('/') && name.ends_with(".json") && bytes.first() == Some(&b'{')
        }));
    }

    #[test]
    fn a_missing_file_is_skipped_and_a_missing_archive_is_an_error() {
        assert_eq!(shared_file_or_skip("no-such-package.tgz"), None);
        let missing = shared_file("no-such-package.tgz");
        assert!(package_json_files(&missing, |_| true).is_err());
    }
}
