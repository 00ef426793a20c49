//! The engine against hand-made resources: each query's exact answer, and the contract with
//! the service (a criterion's plan admits every resource it matches: the plan is a superset).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use fhirwall_search::{Context, Key, Link, Plan, QueryError, SearchIndex};
use serde_json::{Value, json};

const CTX: Context<'static> = Context {
    base_url: "https://fhir.example.org/fhir",
};

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"lastUpdated": "2026-01-02T03:04:05Z", "tag": [{"system": "urn:t", "code": "vip"}]},
        "active": true,
        "identifier": [
            {"system": "urn:mrn", "value": "MRN-1"},
            {"system": "urn:odd", "value": "A,B|C"}
        ],
        "name": [{"family": "Quetzalcoatl", "given": ["Wilhelmina", "José"]}],
        "telecom": [{"system": "phone", "value": "555-0100"}, {"system": "email", "value": "w@example.org"}],
        "gender": "female",
        "birthDate": "1950-01-31",
        "address": [{"line": ["123 Sesame Street"], "city": "Springfield", "postalCode": "49007"}],
        "generalPractitioner": [{"reference": "Practitioner/pr1"}],
        "managingOrganization": {"reference": "https://fhir.example.org/fhir/Organization/o1"}
    })
}

fn weight() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-03-04T10:30:00Z",
        "valueQuantity": {"value": 70.0, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        "component": [{
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
        }]
    })
}

/// Whether a plan lets the resource through, given its keys and id.
fn admits(plan: &Plan, keys: &[Key], id: &str) -> bool {
    match plan {
        Plan::AnyOf(wanted) => wanted.iter().any(|k| keys.contains(k)),
        Plan::All(plans) => plans.iter().all(|p| admits(p, keys, id)),
        Plan::Everything | Plan::LastUpdated(_) => true,
        Plan::Ids(ids) => ids.iter().any(|i| i == id),
    }
}

/// Checks the answer of `name=value` on `resource`, and that a match is admitted by the plan.
fn check(resource: &Value, name: &str, value: &str, expected: bool) {
    let index = SearchIndex::core();
    let rtype = resource["resourceType"].as_str().unwrap();
    let criterion = index
        .parse_in(&CTX, rtype, name, value)
        .unwrap_or_else(|e| panic!("{name}={value}: {e:?}"));
    let matched = criterion.matches(index, resource, &CTX);
    assert_eq!(matched, expected, "{rtype}?{name}={value}");
    if matched {
        let keys = index.keys(rtype, resource, &CTX);
        let id = resource["id"].as_str().unwrap();
        assert!(
            admits(&criterion.plan(), &keys, id),
            "{rtype}?{name}={value}: the plan {:?} misses a match",
            criterion.plan()
        );
    }
}

#[test]
fn strings_match_prefixes_after_normalising() {
    let p = patient();
    for (name, value, expected) in [
        ("family", "quetz", true),
        ("family", "QUETZALCOATL", true),
        ("family", "Quetzalcoatlx", false),
        ("family", "zalco", false),
        ("family:contains", "zalco", true),
        ("family:exact", "Quetzalcoatl", true),
        ("family:exact", "quetzalcoatl", false),
        ("given", "jose", true),
        ("given", "xy,wil", true),
        ("name", "wilh", true),
        ("name", "springfield", false),
        ("address-city", "spring", true),
        ("address", "springf", true),
        ("address", "123 sesame", true),
        ("address", "sesame", false),
        ("address-postalcode", "490", true),
        // One or two letters have no keys: the whole type is tested, with the same answer.
        ("family", "q", true),
        ("family", "qu", true),
        ("family", "zz", false),
        ("given", "jo", true),
        ("family:missing", "false", true),
        ("family:missing", "true", false),
    ] {
        check(&p, name, value, expected);
    }
}

#[test]
fn dates_compare_as_ranges_at_their_precision() {
    let p = patient();
    for (value, expected) in [
        ("1950", true),
        ("1950-01", true),
        ("1950-02", false),
        ("1950-01-31", true),
        ("eq1950-01-31", true),
        ("ne1950-01-31", false),
        ("ne1951", true),
        ("gt1950-01-30", true),
        ("gt1950-01-31", false),
        ("lt1950-01-31", false),
        ("le1950-01-31", true),
        ("ge1951", false),
        ("sa1949", true),
        ("sa1950-01-15", true),
        ("eb1951", true),
        ("eb1950", false),
        ("ap1950-01-31", true),
        // eq: the search range must contain the whole day.
        ("1950-01-31T12:00:00Z", false),
        ("ap1950-01-31T12:00:00Z", true),
    ] {
        check(&p, "birthdate", value, expected);
    }
    let o = weight();
    for (value, expected) in [
        ("2025-03-04", true),
        ("2025-03-04T10:30:00Z", true),
        ("2025-03-04T10:31:00Z", false),
        ("gt2025-03-04T10:00:00+00:00", true),
        ("lt2025-03", false),
        ("ge2025", true),
    ] {
        check(&o, "date", value, expected);
    }
}

#[test]
fn tokens_systems_codes_and_modifiers() {
    let p = patient();
    for (name, value, expected) in [
        ("gender", "female", true),
        ("gender", "male", false),
        ("gender", "male,female", true),
        (
            "gender",
            "http://hl7.org/fhir/administrative-gender|female",
            true,
        ),
        ("gender:not", "male", true),
        ("gender:not", "female", false),
        ("identifier", "urn:mrn|MRN-1", true),
        ("identifier", "MRN-1", true),
        ("identifier", "mrn-1", false),
        ("identifier", "urn:other|MRN-1", false),
        ("identifier", "|MRN-1", false),
        ("identifier", "urn:mrn|", true),
        ("identifier", "urn:odd|A\\,B\\|C", true),
        ("phone", "555-0100", true),
        ("email", "w@example.org", true),
        ("email", "555-0100", false),
        ("active", "true", true),
        ("active", "false", false),
        ("_tag", "urn:t|vip", true),
        ("_tag", "other", false),
        ("_id", "p1", true),
        ("_id", "p2,p3", false),
    ] {
        check(&p, name, value, expected);
    }
    let o = weight();
    for (name, value, expected) in [
        ("code", "http://loinc.org|29463-7", true),
        ("code", "29463-7", true),
        ("code", "http://snomed.info/sct|29463-7", false),
        ("code:text", "body", true),
        ("code:text", "height", false),
        ("category", "vital-signs", true),
        ("combo-code", "8480-6", true),
        ("component-code", "29463-7", false),
    ] {
        check(&o, name, value, expected);
    }
}

#[test]
fn references_by_id_type_url_and_local_base() {
    let p = patient();
    for (name, value, expected) in [
        ("general-practitioner", "Practitioner/pr1", true),
        ("general-practitioner", "pr1", true),
        ("general-practitioner:Practitioner", "pr1", true),
        ("general-practitioner:Organization", "pr1", false),
        ("general-practitioner", "Practitioner/pr2", false),
        ("organization", "Organization/o1", true),
        (
            "organization",
            "https://fhir.example.org/fhir/Organization/o1",
            true,
        ),
        (
            "organization",
            "https://elsewhere.example/fhir/Organization/o1",
            false,
        ),
    ] {
        check(&p, name, value, expected);
    }
    check(&weight(), "subject", "Patient/p1", true);
    check(&weight(), "patient", "p1", true);
    check(&weight(), "subject:missing", "false", true);
}

#[test]
fn quantities_in_canonical_units_and_number_precision() {
    let o = weight();
    for (value, expected) in [
        ("70", true),
        ("70.0", true),
        ("70.04", false),
        ("71", false),
        ("gt60", true),
        ("lt60", false),
        ("ge70", true),
        ("70|http://unitsofmeasure.org|kg", true),
        ("70000|http://unitsofmeasure.org|g", true),
        ("70|http://unitsofmeasure.org|g", false),
        ("70||kg", true),
        ("ap68", true),
        ("ne70", false),
    ] {
        check(&o, "value-quantity", value, expected);
    }
}

#[test]
fn composites_match_within_one_item() {
    let o = weight();
    for (name, value, expected) in [
        ("code-value-quantity", "http://loinc.org|29463-7$gt60", true),
        (
            "code-value-quantity",
            "http://loinc.org|29463-7$lt60",
            false,
        ),
        ("code-value-quantity", "http://loinc.org|8480-6$gt60", false),
        ("component-code-value-quantity", "8480-6$120", true),
        ("component-code-value-quantity", "8480-6$70", false),
        ("combo-code-value-quantity", "29463-7$70", true),
    ] {
        check(&o, name, value, expected);
    }
}

#[test]
fn chains_has_and_refusals_parse() {
    let index = SearchIndex::core();
    let chain = index
        .parse("Observation", "subject:Patient.name", "smith")
        .unwrap();
    assert!(matches!(chain.link(), Some(Link::Chain { .. })));
    let deep = index
        .parse(
            "Observation",
            "subject:Patient.general-practitioner:Practitioner.name",
            "x",
        )
        .unwrap();
    assert!(matches!(deep.link(), Some(Link::Chain { .. })));
    let has = index
        .parse("Patient", "_has:Observation:subject:code", "1234-5")
        .unwrap();
    assert!(matches!(has.link(), Some(Link::Has { .. })));
    let nested = index
        .parse(
            "Patient",
            "_has:Observation:subject:_has:Provenance:target:agent",
            "Practitioner/1",
        )
        .unwrap();
    assert!(matches!(nested.link(), Some(Link::Has { .. })));
    assert!(matches!(
        index.parse("Patient", "frobnicate", "1"),
        Err(QueryError::UnknownParameter(_))
    ));
    for (name, value) in [
        ("birthdate", "not-a-date"),
        ("birthdate", "xx1950"),
        ("gender:frob", "x"),
        ("value-quantity", "abc"),
        ("subject:Patient.frobnicate", "x"),
        ("_has:Observation:subject", "x"),
    ] {
        let rtype = if name.starts_with("value") || name.starts_with("subject") {
            "Observation"
        } else {
            "Patient"
        };
        assert!(
            index.parse(rtype, name, value).is_err(),
            "{rtype}?{name}={value} parsed"
        );
    }
}

#[test]
fn every_core_type_has_its_parameters_and_keys_stay_few() {
    let index = SearchIndex::core();
    let names: Vec<String> = index
        .params("Patient")
        .into_iter()
        .map(|p| p.name)
        .collect();
    for expected in [
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
        "_text",
        "_content",
        "name",
        "family",
        "given",
        "birthdate",
        "identifier",
        "phonetic",
        "address-city",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "Patient lacks {expected}"
        );
    }
    assert!(
        index
            .params("Observation")
            .iter()
            .any(|p| p.name == "code-value-quantity")
    );
    // A Patient like the one above carries a bounded number of keys (postings per write).
    let keys = index.keys("Patient", &patient(), &CTX);
    assert!(keys.len() < 160, "{} keys", keys.len());
    let keys = index.keys("Observation", &weight(), &CTX);
    assert!(keys.len() < 160, "{} keys", keys.len());
}

#[test]
fn custom_parameters_register_and_core_ones_cannot_change() {
    let custom = json!({
        "resourceType": "SearchParameter",
        "url": "https://example.org/SearchParameter/patient-nickname",
        "name": "nickname",
        "status": "active",
        "code": "nickname",
        "base": ["Patient"],
        "type": "string",
        "expression": "Patient.name.where(use = 'nickname').given"
    });
    let index = SearchIndex::core().with_custom(&[custom]).unwrap();
    let mut p = patient();
    p["name"][0]["use"] = json!("nickname");
    let criterion = index.parse("Patient", "nickname", "wil").unwrap();
    assert!(criterion.matches(&index, &p, &CTX));
    // The core package's own definition is accepted as it is (it is already in force)...
    let core = json!({
        "resourceType": "SearchParameter",
        "url": "http://hl7.org/fhir/SearchParameter/individual-family",
        "status": "draft",
        "code": "family",
        "base": ["Patient", "Practitioner"],
        "type": "string",
        "expression": "Patient.name.family | Practitioner.name.family"
    });
    assert!(
        SearchIndex::core()
            .with_custom(std::slice::from_ref(&core))
            .is_ok()
    );
    // ...but not changed.
    let mut changed = core;
    changed["expression"] = json!("Patient.name.given");
    assert!(SearchIndex::core().with_custom(&[changed]).is_err());
}
