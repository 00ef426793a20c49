//! US Core 5.0.1 profiles through the public API: registration, meta.profile and $validate-style profiles; it must not depend on network access.

use std::sync::Arc;

use fhirwall_definitions::Definitions;
use fhirwall_validation::{ValidateOptions, Validator};
use serde_json::Value;

use crate::support::{corpus_dir, describe, us_core_profiles};

const US_CORE_PATIENT: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";

fn us_core_validator() -> Option<Validator> {
    let profiles = us_core_profiles()?;
    let validator = Validator::new(Definitions::core());
    assert_eq!(profiles.len(), 8);
    for profile in profiles {
        validator.add_profile(profile).unwrap();
    }
    Some(validator)
}

fn valid_patient() -> Value {
    let text = std::fs::read_to_string(corpus_dir().join("valid/us-core-patient.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_valid_us_core_patient_passes_by_meta_profile_and_by_request() {
    let Some(validator) = us_core_validator() else {
        println!("skipped: US Core profiles are not in the shared folder");
        return;
    };
    assert!(validator.has_profile(US_CORE_PATIENT));
    assert!(validator.has_profile(&format!("{US_CORE_PATIENT}|5.0.1")));
    let mut patient = valid_patient();
    let outcome = validator.validate(&patient, &ValidateOptions::default());
    assert!(outcome.is_valid(), "{}", describe(&outcome));

    // Without meta.profile the profile only applies when asked for.
    patient.as_object_mut().unwrap().remove("meta");
    patient.as_object_mut().unwrap().remove("identifier");
    let outcome = validator.validate(&patient, &ValidateOptions::default());
    assert!(outcome.is_valid(), "{}", describe(&outcome));
    let asked = ValidateOptions {
        profiles: vec![US_CORE_PATIENT.to_owned()],
        ..ValidateOptions::default()
    };
    let outcome = validator.validate(&patient, &asked);
    assert!(!outcome.is_valid());
    assert!(
        outcome
            .errors()
            .any(|i| i.rule == "cardinality-min" && i.expression == "Patient.identifier"),
        "{}",
        describe(&outcome)
    );
}

#[test]
fn removed_profiles_are_unknown_and_give_a_warning() {
    let Some(validator) = us_core_validator() else {
        return;
    };
    validator.remove_profile(US_CORE_PATIENT);
    assert!(!validator.has_profile(US_CORE_PATIENT));
    let mut patient = valid_patient();
    patient.as_object_mut().unwrap().remove("identifier");
    let outcome = validator.validate(&patient, &ValidateOptions::default());
    assert!(outcome.is_valid(), "{}", describe(&outcome));
    let warning = outcome
        .issues
        .iter()
        .find(|i| i.rule == "profile-unknown")
        .expect("a warning for the unknown meta.profile");
    assert_eq!(warning.expression, "Patient.meta.profile[0]");
    assert_eq!(warning.severity, fhirwall_validation::Severity::Warning);
}

#[test]
fn a_replaced_profile_takes_effect() {
    let Some(validator) = us_core_validator() else {
        return;
    };
    let mut profiles = us_core_profiles().unwrap();
    let position = profiles
        .iter()
        .position(|p| p.url == US_CORE_PATIENT)
        .unwrap();
    let mut relaxed = (*profiles.swap_remove(position)).clone();
    for element in &mut relaxed.elements {
        if element.path == "Patient.identifier" {
            element.min = 0;
        }
    }
    validator.add_profile(Arc::new(relaxed)).unwrap();
    let mut patient = valid_patient();
    patient.as_object_mut().unwrap().remove("identifier");
    let outcome = validator.validate(&patient, &ValidateOptions::default());
    assert!(outcome.is_valid(), "{}", describe(&outcome));
}
