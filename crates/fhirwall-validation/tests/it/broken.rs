//! The broken-resource corpus (`tests/corpus/broken`): each file holds one resource with one defect and the issue it must produce; it must not hold valid resources.

use fhirwall_validation::{Issue, ValidateOptions};
use serde_json::Value;

use crate::support::{corpus_dir, describe, errors, read_dir_json, us_core_profiles, validator};

/// Whether `issue` is the one a corpus entry expects.
fn matches(issue: &Issue, expect: &Value) -> bool {
    let field = |name: &str| expect.get(name).and_then(Value::as_str);
    let severity = field("severity").unwrap_or("error");
    issue.severity.code() == severity
        && field("code").is_none_or(|code| issue.code.code() == code)
        && field("rule").is_none_or(|rule| issue.rule == rule)
        && field("expression").is_none_or(|expression| issue.expression == expression)
        && field("constraintKey").is_none_or(|key| issue.constraint_key.as_deref() == Some(key))
}

#[test]
fn every_broken_resource_fails_with_its_issue() {
    let has_us_core = us_core_profiles().is_some();
    let validator = validator();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, text) in read_dir_json(&corpus_dir().join("broken")) {
        if name.starts_with("us-core-") && !has_us_core {
            println!("skipped {name}: the US Core profiles are not in the shared folder");
            continue;
        }
        let case: Value = serde_json::from_str(&text).expect("corpus JSON");
        let expect = case.get("expect").expect("expect");
        let resource = case.get("resource").expect("resource");
        let options = ValidateOptions {
            profiles: case
                .get("profiles")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            ..ValidateOptions::default()
        };
        let outcome = validator.validate(resource, &options);
        checked += 1;
        if !outcome.issues.iter().any(|issue| matches(issue, expect)) {
            failures.push(format!(
                "{name}: expected {expect}, got:\n{}",
                describe(&outcome)
            ));
            continue;
        }
        // One defect each: no error beyond the expected one and those listed as following
        // from it.
        let also: Vec<&Value> = case
            .get("alsoExpected")
            .and_then(Value::as_array)
            .map(|list| list.iter().collect())
            .unwrap_or_default();
        let stray = errors(&outcome)
            .into_iter()
            .filter(|issue| !matches(issue, expect) && !also.iter().any(|a| matches(issue, a)))
            .count();
        if stray > 0 {
            failures.push(format!(
                "{name}: unexpected further errors:\n{}",
                describe(&outcome)
            ));
        }
        for message in outcome.issues.iter().map(|i| &i.message) {
            assert!(!message.is_empty(), "{name}: an issue without a message");
        }
    }
    println!("broken corpus: {checked} resources checked");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_valid_corpus_resource_passes() {
    let has_us_core = us_core_profiles().is_some();
    let validator = validator();
    for (name, text) in read_dir_json(&corpus_dir().join("valid")) {
        if name.starts_with("us-core-") && !has_us_core {
            continue;
        }
        let resource: Value = serde_json::from_str(&text).expect("corpus JSON");
        let outcome = validator.validate(&resource, &ValidateOptions::default());
        assert!(outcome.is_valid(), "{name}:\n{}", describe(&outcome));
        let warnings: Vec<&Issue> = outcome
            .issues
            .iter()
            .filter(|i| i.severity == fhirwall_validation::Severity::Warning)
            .collect();
        assert!(warnings.is_empty(), "{name}:\n{}", describe(&outcome));
    }
}

#[test]
fn a_whitespace_only_narrative_is_a_warning_not_an_error() {
    // txt-2's text asks for content; its R4 expression and the HL7 validator only check the
    // markup, and four of the specification's examples have empty narratives.
    let resource = serde_json::json!({
        "resourceType": "Patient",
        "text": {
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">\n   <pre>\n</pre></div>"
        }
    });
    let outcome = validator().validate(&resource, &ValidateOptions::default());
    assert!(outcome.is_valid(), "{}", describe(&outcome));
    assert!(
        outcome.issues.iter().any(|i| i.rule == "narrative-empty"
            && i.severity == fhirwall_validation::Severity::Warning
            && i.expression == "Patient.text.div"
            && i.constraint_key.as_deref() == Some("txt-2")),
        "{}",
        describe(&outcome)
    );
}
