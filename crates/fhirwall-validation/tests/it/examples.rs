//! Every resource of the R4 examples package must validate without errors, except an explicit list that HL7's own validator rejects too; it must not time anything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use fhirwall_validation::ValidateOptions;
use serde_json::Value;

use fhirwall_definitions::Definitions;
use fhirwall_validation::Validator;

use crate::support::{describe, errors};

/// Example files that are invalid, with the rule each one breaks. All but the policy entries
/// break a rule HL7's validator enforces as an error (required elements,
/// reference target types, resource id length, error-severity invariants of the core).
const KNOWN_INVALID: &[(&str, &str)] = &[
    // Required elements missing (cardinality min 1 in the core definitions).
    (
        "ImplementationGuide-fhir.json",
        "cardinality-min: ImplementationGuide.name and .status are 1..1 and missing",
    ),
    (
        "ig-r4.json",
        "cardinality-min: ImplementationGuide.name and .status are 1..1 and missing",
    ),
    (
        "Questionnaire-qs1.json",
        "cardinality-min: Questionnaire.item.linkId is 1..1 and missing in nested items",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        "cardinality-min: SearchParameter.base is 1..* and missing",
    ),
    // A resource id longer than 64 characters.
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        "format-id: the id has 66 characters, the id type allows 64",
    ),
    // Reference targets of a type the element does not allow.
    (
        "DeviceMetric-example.json",
        "reference-target-type: parent is Reference(Device) but points to a DeviceDefinition",
    ),
    (
        "DeviceUseStatement-example.json",
        "reference-target-type: reasonReference does not allow Procedure",
    ),
    (
        "MedicationRequest-medrx0301.json",
        "reference-target-type: dispenseRequest.performer is Reference(Organization) but points to a Practitioner",
    ),
    (
        "Observation-clinical-gender.json",
        "reference-target-type: performer does not allow Encounter",
    ),
    // Error-severity invariants of the core.
    (
        "Bundle-dataelements.json",
        "bdl-7: several entries share a fullUrl (de-Quantity.value and others)",
    ),
    (
        "StructureDefinition-Definition.json",
        "sdf-4: a non-abstract logical model without baseDefinition",
    ),
    (
        "StructureDefinition-Event.json",
        "sdf-4: a non-abstract logical model without baseDefinition",
    ),
    (
        "StructureDefinition-FiveWs.json",
        "sdf-4: a non-abstract logical model without baseDefinition",
    ),
    (
        "StructureDefinition-Request.json",
        "sdf-4: a non-abstract logical model without baseDefinition",
    ),
    // Server policy, not a rule HL7 enforces: HL7's validator lets example.org extensions
    // pass, Fhirwall refuses modifier extensions it does not know.
    (
        "Basic-referral.json",
        "modifier-extension-unknown: three example.org modifier extensions",
    ),
    // HL7's validator accepts XML comments in a narrative; Fhirwall refuses them, because a
    // browser may end a comment elsewhere than XML does.
    (
        "PlanDefinition-KDN5.json",
        "narrative-comment: two XML comments in the narrative div",
    ),
];

#[test]
fn every_example_validates() {
    let Some(package) = fhirwall_testdata::examples_package() else {
        println!("skipped: the R4 examples package is not in the shared folder");
        return;
    };
    let files =
        fhirwall_testdata::package_json_files(&package, |_| true).expect("examples package");
    // The core only, as the examples were written for it (one uses an old US Core extension).
    let validator = Validator::new(Definitions::core());
    let validator = &validator;
    let options = ValidateOptions::default();
    // Two threads take files from a shared counter, so one large Bundle does not leave the
    // other core idle.
    let next = AtomicUsize::new(0);
    let mut results: Vec<(String, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut results = Vec::new();
                    loop {
                        let position = next.fetch_add(1, Ordering::Relaxed);
                        let Some((name, bytes)) = files.get(position) else {
                            break;
                        };
                        let value: Value = serde_json::from_slice(bytes).expect("example JSON");
                        if value.get("resourceType").is_none() {
                            // package.json and the index are not resources.
                            continue;
                        }
                        let outcome = validator.validate(&value, &options);
                        let failure = (!errors(&outcome).is_empty()).then(|| describe(&outcome));
                        for issue in &outcome.issues {
                            if issue.rule == "invariant-not-evaluated" {
                                println!("{name}: {}", issue.message);
                            }
                        }
                        results.push((name.clone(), failure));
                    }
                    results
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("validation thread"))
            .collect()
    });
    results.sort();
    let mut unexpected = Vec::new();
    let mut known = 0;
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    for (name, failure) in &results {
        let listed = KNOWN_INVALID.iter().any(|(file, _)| file == name);
        match (failure, listed) {
            (Some(text), false) => {
                for line in text.lines().filter(|l| l.trim_start().starts_with("error")) {
                    let rule = line.split_whitespace().nth(2).unwrap_or("").to_owned();
                    *by_rule.entry(rule).or_default() += 1;
                }
                unexpected.push(format!("{name}\n{text}"));
            }
            (Some(_), true) => known += 1,
            (None, true) => unexpected.push(format!("{name}: listed as invalid but passes")),
            (None, false) => {}
        }
    }
    println!(
        "examples: {} resources validated, {} without errors, {} on the known-invalid list, {} unexpected",
        results.len(),
        results.len() - known - unexpected.len(),
        known,
        unexpected.len()
    );
    if let Ok(dump) = std::env::var("FHIRWALL_EXAMPLE_DUMP") {
        std::fs::write(dump, unexpected.join("\n")).expect("dump");
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected results; errors by rule: {by_rule:?}\nfirst:\n{}",
        unexpected.len(),
        unexpected
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
