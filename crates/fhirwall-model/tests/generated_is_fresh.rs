//! Checks that every generated file (`src/generated/`, `fhirwall-definitions/data/`) matches what fhirwall-codegen makes of the FHIR core package; it must pass (skipping) when the package is absent and must never write files.

use std::path::Path;

#[test]
fn generated_tables_match_the_fhir_package() -> Result<(), Box<dyn std::error::Error>> {
    let package = fhirwall_codegen::default_package_path();
    if !package.exists() {
        println!(
            "{} not found; skipping the freshness check of src/generated",
            package.display()
        );
        return Ok(());
    }
    let files = fhirwall_codegen::generate(&package)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stale = fhirwall_codegen::stale_files(&root, &files)?;
    assert!(
        stale.is_empty(),
        "generated files are stale, run `cargo run -p fhirwall-codegen`: {}",
        stale.join(", ")
    );
    Ok(())
}
