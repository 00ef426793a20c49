//! The instant of the request: invariants that read the clock see the caller's instant, and without one they are left unevaluated, never failed; it must not read the system clock.

use std::sync::Arc;

use fhirwall_definitions::{Constraint, Definitions, Severity as ConstraintSeverity};
use fhirwall_validation::{Outcome, ValidateOptions, Validator};
use serde_json::json;

use crate::support::describe;

const PROFILE: &str = "http://fhirwall.test/StructureDefinition/patient-born-in-the-past";

/// A validator holding a Patient profile whose one extra invariant reads the clock.
fn validator_with_clock_invariant() -> Validator {
    let validator = Validator::new(Definitions::core());
    let core = Definitions::core()
        .structure_by_url("http://hl7.org/fhir/StructureDefinition/Patient")
        .unwrap();
    let mut profile = (**core).clone();
    profile.url = PROFILE.to_owned();
    profile.elements[0].constraints.push(Constraint {
        key: "test-clock-1".to_owned(),
        severity: ConstraintSeverity::Error,
        human: "The birth date is not in the future".to_owned(),
        expression: Some("birthDate.empty() or birthDate <= today()".to_owned()),
    });
    validator.add_profile(Arc::new(profile)).unwrap();
    validator
}

fn validate_at(validator: &Validator, now_millis: Option<i64>) -> Outcome {
    let patient = json!({
        "resourceType": "Patient",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
        "birthDate": "2025-06-01"
    });
    let options = ValidateOptions {
        profiles: vec![PROFILE.to_owned()],
        now_millis,
    };
    validator.validate(&patient, &options)
}

#[test]
fn invariants_read_the_instant_the_caller_gives() {
    let validator = validator_with_clock_invariant();
    // 2024-01-01T00:00:00Z: the birth date is in the future.
    let before = validate_at(&validator, Some(1_704_067_200_000));
    assert!(!before.is_valid(), "{}", describe(&before));
    assert!(
        before
            .errors()
            .any(|i| i.rule == "invariant" && i.constraint_key.as_deref() == Some("test-clock-1")),
        "{}",
        describe(&before)
    );
    // 2026-01-01T00:00:00Z: it is in the past.
    let after = validate_at(&validator, Some(1_767_225_600_000));
    assert!(after.is_valid(), "{}", describe(&after));
}

#[test]
fn without_an_instant_a_clock_invariant_is_not_evaluated() {
    let validator = validator_with_clock_invariant();
    let outcome = validate_at(&validator, None);
    assert!(outcome.is_valid(), "{}", describe(&outcome));
    assert!(
        outcome
            .issues
            .iter()
            .any(|i| i.rule == "invariant-not-evaluated" && i.message.contains("test-clock-1")),
        "{}",
        describe(&outcome)
    );
    // The default options have no instant.
    assert_eq!(ValidateOptions::default().now_millis, None);
}
