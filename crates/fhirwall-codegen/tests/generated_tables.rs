//! Compiles fhirwall-model's committed generated tables into this test and checks facts about them; it must not need the FHIR package.

#[path = "../../fhirwall-model/src/generated/mod.rs"]
mod generated;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use generated::{
    FHIR_VERSION, RESOURCE_TYPES, ResourceTypeInfo, SEARCH_PARAMS, SearchParamDef,
    resource_type_info, search_param_by_url,
};

fn info(name: &str) -> Result<&'static ResourceTypeInfo> {
    resource_type_info(name).with_context(|| format!("{name} missing"))
}

#[test]
fn resource_type_table() -> Result<()> {
    assert_eq!(FHIR_VERSION, "4.0.1");
    assert_eq!(RESOURCE_TYPES.len(), 146);
    assert!(RESOURCE_TYPES.windows(2).all(|pair| match pair {
        [a, b] => a.name < b.name,
        _ => false,
    }));
    for info in RESOURCE_TYPES {
        assert_eq!(resource_type_info(info.name), Some(info));
    }
    for absent in ["Resource", "DomainResource", "patient", "Patient ", ""] {
        assert_eq!(resource_type_info(absent), None, "{absent:?}");
    }
    for present in ["Bundle", "Parameters", "Binary"] {
        info(present)?;
    }

    let patient = info("Patient")?;
    assert!(patient.mandatory_elements.is_empty());
    for summary in ["identifier", "name", "birthDate", "deceased"] {
        assert!(patient.summary_elements.contains(&summary), "{summary}");
    }
    assert!(!patient.summary_elements.contains(&"photo"));
    assert_eq!(patient.choice_elements, ["deceased", "multipleBirth"]);
    assert_eq!(patient.patient_compartment_params, ["link"]);
    assert_eq!(patient.patient_compartment_paths, ["link.other"]);

    let observation = info("Observation")?;
    assert!(observation.mandatory_elements.contains(&"status"));
    assert!(observation.mandatory_elements.contains(&"code"));
    assert!(observation.choice_elements.contains(&"value"));
    assert!(observation.choice_elements.contains(&"effective"));
    assert_eq!(
        observation.patient_compartment_params,
        ["subject", "performer"]
    );
    assert_eq!(
        observation.patient_compartment_paths,
        ["subject", "performer"]
    );

    let encounter = info("Encounter")?;
    assert_eq!(encounter.patient_compartment_paths, ["subject"]);
    let audit = info("AuditEvent")?;
    assert_eq!(
        audit.patient_compartment_paths,
        ["agent.who", "entity.what"]
    );
    let appointment = info("Appointment")?;
    assert_eq!(appointment.patient_compartment_paths, ["participant.actor"]);

    // Inherited elements come from the snapshot: DomainResource's for Patient, Resource's only
    // for Bundle, Binary and Parameters.
    assert!(
        patient
            .summary_elements
            .starts_with(&["id", "meta", "implicitRules"])
    );
    assert!(!info("Bundle")?.summary_elements.contains(&"text"));
    assert_eq!(info("Binary")?.mandatory_elements, ["contentType"]);
    assert!(info("Parameters")?.patient_compartment_params.is_empty());

    // Every type in the compartment has paths for its params, and only those types have params.
    for info in RESOURCE_TYPES {
        assert_eq!(
            info.patient_compartment_params.is_empty(),
            info.patient_compartment_paths.is_empty(),
            "{}",
            info.name
        );
    }
    Ok(())
}

#[test]
fn search_param_table() -> Result<()> {
    assert_eq!(SEARCH_PARAMS.len(), 1400);
    assert!(SEARCH_PARAMS.windows(2).all(|pair| match pair {
        [a, b] => a.url < b.url,
        _ => false,
    }));
    let birthdate = search_param_by_url("http://hl7.org/fhir/SearchParameter/individual-birthdate")
        .context("individual-birthdate missing")?;
    assert_eq!(birthdate.name, "birthdate");
    assert_eq!(birthdate.kind, "date");
    assert!(birthdate.bases.contains(&"Patient"));
    assert!(birthdate.expression.contains("Patient.birthDate"));
    assert!(birthdate.comparators.contains(&"ge"));
    let subject: &SearchParamDef =
        search_param_by_url("http://hl7.org/fhir/SearchParameter/Observation-subject")
            .context("Observation-subject missing")?;
    assert_eq!(subject.kind, "reference");
    assert!(subject.targets.contains(&"Patient"));
    assert_eq!(search_param_by_url("http://example.org/nope"), None);
    Ok(())
}

/// The committed files are rustfmt-clean (skipped when rustfmt is not installed).
#[test]
fn generated_files_are_rustfmt_clean() -> Result<()> {
    let mod_rs =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fhirwall-model/src/generated/mod.rs");
    let output = match Command::new("rustfmt")
        .args(["--edition", "2024", "--check"])
        .arg(&mod_rs)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            println!("rustfmt not runnable ({error}); skipping");
            return Ok(());
        }
    };
    assert!(
        output.status.success(),
        "rustfmt --check failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
