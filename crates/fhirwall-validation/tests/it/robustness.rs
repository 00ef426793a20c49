//! Hostile and malformed input: validation must never panic and must stay bounded; it must not assert on exact issues.

use fhirwall_validation::ValidateOptions;
use serde_json::{Value, json};

use crate::support::{corpus_dir, read_dir_json, validator};

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => json!([]),
        2 => json!({}),
        3 => json!(""),
        4 => json!(-1),
        5 => json!(true),
        6 => json!([null, {"extension": []}]),
        7 => json!({"resourceType": "Patient", "contained": [{"resourceType": "Bundle"}]}),
        8 => json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script/></div>"),
        9 => json!({"reference": "#"}),
        10 => {
            json!({"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "extension": [{}]})
        }
        _ => json!(1e308),
    }
}

/// Replaces, removes or adds one random node.
fn mutate(value: &mut Value, rng: &mut Rng, depth: usize) {
    match value {
        Value::Object(object) if !object.is_empty() && depth < 12 => {
            let keys: Vec<String> = object.keys().cloned().collect();
            let key = keys[rng.below(keys.len())].clone();
            match rng.below(5) {
                0 => *object.get_mut(&key).unwrap() = odd_value(rng),
                1 => {
                    object.remove(&key);
                }
                2 => {
                    object.insert(format!("_{key}"), odd_value(rng));
                }
                _ => mutate(object.get_mut(&key).unwrap(), rng, depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 12 => {
            let index = rng.below(items.len());
            if rng.below(4) == 0 {
                items[index] = odd_value(rng);
            } else {
                mutate(&mut items[index], rng, depth + 1);
            }
        }
        _ => *value = odd_value(rng),
    }
}

#[test]
fn mutated_resources_never_panic() {
    let validator = validator();
    let options = ValidateOptions::default();
    let mut seeds: Vec<Value> = read_dir_json(&corpus_dir().join("valid"))
        .into_iter()
        .map(|(_, text)| serde_json::from_str(&text).unwrap())
        .collect();
    for (_, text) in read_dir_json(&corpus_dir().join("broken")) {
        let case: Value = serde_json::from_str(&text).unwrap();
        seeds.push(case["resource"].clone());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..2000 {
        let mut resource = seeds[round % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut resource, &mut rng, 0);
        }
        let outcome = validator.validate(&resource, &options);
        assert!(outcome.issues.len() <= 2 * 100 + 2);
    }
}

#[test]
fn deep_and_wide_input_is_bounded() {
    let validator = validator();
    // Extensions nested 60 deep (the server limits JSON depth to 64).
    let mut extension = json!({"url": "http://example.org/leaf", "valueString": "x"});
    for _ in 0..30 {
        extension = json!({"url": "http://example.org/node", "extension": [extension]});
    }
    let patient = json!({"resourceType": "Patient", "extension": [extension]});
    let outcome = validator.validate(&patient, &ValidateOptions::default());
    assert!(outcome.is_valid());

    // Bundles nested in Bundles.
    let mut bundle = json!({"resourceType": "Patient"});
    for _ in 0..20 {
        bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bundle}]});
    }
    let _ = validator.validate(&bundle, &ValidateOptions::default());

    // Thousands of faults: the issue list stays capped.
    let names: Vec<Value> = (0..5000).map(|_| json!({"family": ""})).collect();
    let patient = json!({"resourceType": "Patient", "name": names});
    let outcome = validator.validate(&patient, &ValidateOptions::default());
    assert!(!outcome.is_valid());
    assert!(outcome.issues.len() <= 202);
    assert!(outcome.issues.iter().any(|i| i.rule == "too-many-issues"));

    // Non-objects at the root.
    for root in [json!(null), json!([]), json!("Patient"), json!(1)] {
        assert!(
            !validator
                .validate(&root, &ValidateOptions::default())
                .is_valid()
        );
    }
}
