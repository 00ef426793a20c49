//! Fuzz-style robustness checks: truncated and mutated XML, and mutated JSON, never panic; it must stay deterministic (a fixed seed) and fast.

use fhirwall_definitions::Definitions;
use fhirwall_xml::{XmlLimits, json_to_xml, xml_to_json};
use serde_json::{Map, Value, json};

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % (bound.max(1) as u64)).unwrap()
    }
}

fn sample() -> Value {
    json!({
        "resourceType": "Bundle",
        "id": "b1",
        "type": "collection",
        "entry": [{
            "fullUrl": "urn:uuid:1",
            "resource": {
                "resourceType": "Patient",
                "id": "p1",
                "text": {
                    "status": "generated",
                    "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Hi &amp; <b>there</b></p></div>"
                },
                "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}],
                "extension": [{
                    "url": "http://example.org/x",
                    "extension": [{"url": "a", "valueDecimal": 1.50}]
                }],
                "active": true,
                "name": [{
                    "id": "n1",
                    "family": "Doe",
                    "given": ["A", null],
                    "_given": [null, {"extension": [{"url": "http://example.org/y", "valueBoolean": false}]}]
                }],
                "birthDate": "1970",
                "_birthDate": {"id": "bd"},
                "multipleBirthInteger": 2,
                "managingOrganization": {"reference": "#o1"}
            }
        }]
    })
}

#[test]
fn truncated_and_mutated_xml_never_panics() {
    let defs = Definitions::core();
    let limits = XmlLimits::default();
    let xml = json_to_xml(&sample(), defs, true).unwrap();
    let bytes = xml.as_bytes();
    assert!(xml_to_json(bytes, defs, &limits).is_ok());
    for end in 0..bytes.len() {
        let _ = xml_to_json(&bytes[..end], defs, &limits);
    }
    let interesting: &[u8] = b"<>/\"'&=;:# \n\tax0?!-[]\xff\x00\xc3";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let mut mutated = bytes.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(mutated.len());
            match rng.below(4) {
                0 => mutated[at] = interesting[rng.below(interesting.len())],
                1 => {
                    let end = (at + rng.below(16)).min(mutated.len());
                    mutated.drain(at..end);
                }
                2 => {
                    let end = (at + rng.below(32)).min(mutated.len());
                    let copy = mutated[at..end].to_vec();
                    let to = rng.below(mutated.len());
                    mutated.splice(to..to, copy);
                }
                _ => mutated.insert(at, interesting[rng.below(interesting.len())]),
            }
            if mutated.is_empty() {
                break;
            }
        }
        let _ = xml_to_json(&mutated, defs, &limits);
    }
}

/// Replaces or removes a random node of `value`.
fn mutate(value: &mut Value, rng: &mut Rng) {
    let replacements = [
        Value::Null,
        json!(true),
        json!(7),
        json!("text\u{1}"),
        json!([]),
        json!({}),
        json!([null]),
        json!({"resourceType": "Patient"}),
        json!("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"),
    ];
    match value {
        Value::Object(map) if !map.is_empty() && rng.below(3) > 0 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.below(keys.len())];
            match rng.below(4) {
                0 => {
                    map.remove(key);
                }
                1 => {
                    let item = map.remove(key).unwrap();
                    let mut renamed = Map::new();
                    renamed.insert(format!("_{key}"), item);
                    map.extend(renamed);
                }
                _ => mutate(map.get_mut(key).unwrap(), rng),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.below(3) > 0 => {
            let at = rng.below(items.len());
            mutate(&mut items[at], rng);
        }
        _ => *value = replacements[rng.below(replacements.len())].clone(),
    }
}

#[test]
fn mutated_json_never_panics_and_written_xml_reads_back() {
    let defs = Definitions::core();
    let limits = XmlLimits::default();
    let original = sample();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut written = 0;
    for _ in 0..3000 {
        let mut resource = original.clone();
        for _ in 0..=rng.below(2) {
            mutate(&mut resource, &mut rng);
        }
        for pretty in [false, true] {
            if let Ok(xml) = json_to_xml(&resource, defs, pretty) {
                written += 1;
                if let Err(error) = xml_to_json(xml.as_bytes(), defs, &limits) {
                    panic!("written XML does not read back: {error}\n{resource}\n{xml}");
                }
            }
        }
    }
    assert!(written > 100, "only {written} mutations were writable");
}
