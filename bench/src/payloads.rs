//! Realistic FHIR R4 request bodies: a US Core-like Patient (about 3 KB) and a vital-signs
//! Observation (about 1.5 KB).
//!
//! Each body is built once as JSON with marker strings in it and compiled into a [`Template`];
//! a request fills the markers with its own sequence number, patient reference, value and time.
//! That keeps every created resource distinct while the load generator, which shares the CPU
//! with the server, spends about a microsecond per body instead of building JSON each time.

use serde_json::{Value, json};

/// The request's sequence number, 12 digits: identifier values.
const SEQ: &str = "__SEQ__";
/// A social-security-like number derived from the sequence number.
const SSN: &str = "__SSN__";
/// The id of the patient an Observation is about.
const PATIENT: &str = "__PATIENT__";
/// A dateTime with a zone.
const WHEN: &str = "__WHEN__";
/// A JSON number: the quotes of the marker string go too.
const VALUE: &str = "\"__VALUE__\"";

enum Piece {
    Text(Vec<u8>),
    Hole(usize),
}

/// A body with holes, filled by position from the markers it was compiled with.
pub struct Template {
    pieces: Vec<Piece>,
    literal_len: usize,
}

impl Template {
    /// Splits `text` at every occurrence of any of `markers`; hole `i` is `markers[i]`.
    pub fn compile(text: &str, markers: &[&str]) -> Template {
        let mut pieces = Vec::new();
        let mut literal_len = 0;
        let mut rest = text;
        loop {
            let next = markers
                .iter()
                .enumerate()
                .filter_map(|(hole, marker)| rest.find(marker).map(|at| (at, hole, marker.len())))
                .min();
            let Some((at, hole, len)) = next else {
                break;
            };
            let (literal, tail) = rest.split_at(at);
            if !literal.is_empty() {
                literal_len += literal.len();
                pieces.push(Piece::Text(literal.as_bytes().to_vec()));
            }
            pieces.push(Piece::Hole(hole));
            rest = tail.get(len..).unwrap_or_default();
        }
        if !rest.is_empty() {
            literal_len += rest.len();
            pieces.push(Piece::Text(rest.as_bytes().to_vec()));
        }
        Template {
            pieces,
            literal_len,
        }
    }

    /// Appends the body with hole `i` replaced by `args[i]` (empty when absent).
    pub fn render_into(&self, args: &[&str], out: &mut Vec<u8>) {
        out.reserve(self.literal_len + 64);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text),
                Piece::Hole(hole) => {
                    if let Some(arg) = args.get(*hole) {
                        out.extend_from_slice(arg.as_bytes());
                    }
                }
            }
        }
    }

    /// The number of holes.
    pub fn holes(&self) -> usize {
        self.pieces
            .iter()
            .filter(|piece| matches!(piece, Piece::Hole(_)))
            .count()
    }
}

/// SplitMix64: a fixed, dependency-free way to pick varied but reproducible field values.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn pick<'a>(list: &[&'a str], seed: u64, salt: u64) -> &'a str {
    let len = list.len() as u64;
    if len == 0 {
        return "";
    }
    let at = usize::try_from(mix(seed ^ salt.wrapping_mul(0x100_0000_01b3)) % len).unwrap_or(0);
    list.get(at).copied().unwrap_or_default()
}

const GIVEN_FEMALE: &[&str] = &[
    "Amy", "Maria", "Aisha", "Olivia", "Mei", "Fatima", "Sofia", "Grace", "Lucia", "Hannah",
];
const GIVEN_MALE: &[&str] = &[
    "James", "Luis", "Kwame", "Noah", "Wei", "Omar", "Mateo", "Ethan", "Ravi", "Daniel",
];
const MIDDLE: &[&str] = &["V.", "Lee", "Marie", "Ann", "J.", "Ray", "Rose", "Alan"];
/// The family names of the Patients (the searches of the harness use them).
pub const FAMILY: &[&str] = &[
    "Shaw",
    "Garcia",
    "Okafor",
    "Nguyen",
    "Chen",
    "Haddad",
    "Rodriguez",
    "Johnson",
    "Patel",
    "Kowalski",
    "Williams",
    "Andersson",
];
const STREETS: &[&str] = &[
    "Elm Street",
    "Oak Avenue",
    "Maple Drive",
    "Cedar Lane",
    "Pine Road",
    "Lakeview Boulevard",
    "Washington Street",
    "Sunset Court",
];
/// City, county, state, postal code.
const PLACES: &[(&str, &str, &str, &str)] = &[
    ("Springfield", "Sangamon", "IL", "62701"),
    ("Madison", "Dane", "WI", "53703"),
    ("Columbus", "Franklin", "OH", "43215"),
    ("Austin", "Travis", "TX", "78701"),
    ("Portland", "Multnomah", "OR", "97204"),
    ("Raleigh", "Wake", "NC", "27601"),
    ("Denver", "Denver", "CO", "80202"),
    ("Albany", "Albany", "NY", "12207"),
];
/// Race code, race display, ethnicity code, ethnicity display.
const RACE_ETHNICITY: &[(&str, &str, &str, &str)] = &[
    ("2106-3", "White", "2186-5", "Not Hispanic or Latino"),
    (
        "2054-5",
        "Black or African American",
        "2186-5",
        "Not Hispanic or Latino",
    ),
    ("2028-9", "Asian", "2186-5", "Not Hispanic or Latino"),
    ("2106-3", "White", "2135-2", "Hispanic or Latino"),
    (
        "1002-5",
        "American Indian or Alaska Native",
        "2186-5",
        "Not Hispanic or Latino",
    ),
    (
        "2076-8",
        "Native Hawaiian or Other Pacific Islander",
        "2186-5",
        "Not Hispanic or Latino",
    ),
];
/// Language code, display, text.
const LANGUAGES: &[(&str, &str, &str)] = &[
    ("en-US", "English (United States)", "English"),
    ("es-MX", "Spanish (Mexico)", "Spanish"),
    ("zh-CN", "Chinese (China)", "Chinese"),
    ("ar", "Arabic", "Arabic"),
    ("vi", "Vietnamese", "Vietnamese"),
];

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

fn identifier_type(code: &str, display: &str) -> Value {
    json!({
        "coding": [coding("http://terminology.hl7.org/CodeSystem/v2-0203", code, display)]
    })
}

/// One Patient variant with the `__SEQ__` and `__SSN__` markers in its identifiers.
fn patient_variant(variant: u64) -> Value {
    let female = mix(variant).is_multiple_of(2);
    let (gender, birth_sex, prefix, given_list) = if female {
        ("female", "F", "Ms.", GIVEN_FEMALE)
    } else {
        ("male", "M", "Mr.", GIVEN_MALE)
    };
    let given = pick(given_list, variant, 1);
    let middle = pick(MIDDLE, variant, 2);
    let family = pick(FAMILY, variant, 3);
    let maiden = pick(FAMILY, variant, 4);
    let street = pick(STREETS, variant, 5);
    let (city, county, state, zip) = PLACES
        .get(usize::try_from(mix(variant ^ 7) % PLACES.len() as u64).unwrap_or(0))
        .copied()
        .unwrap_or(("Springfield", "Sangamon", "IL", "62701"));
    let (race_code, race, eth_code, eth) = RACE_ETHNICITY
        .get(usize::try_from(mix(variant ^ 8) % RACE_ETHNICITY.len() as u64).unwrap_or(0))
        .copied()
        .unwrap_or(("2106-3", "White", "2186-5", "Not Hispanic or Latino"));
    let (lang_code, lang_display, lang_text) = LANGUAGES
        .get(usize::try_from(mix(variant ^ 9) % LANGUAGES.len() as u64).unwrap_or(0))
        .copied()
        .unwrap_or(("en-US", "English (United States)", "English"));
    let year = 1940 + mix(variant ^ 10) % 70;
    let month = 1 + mix(variant ^ 11) % 12;
    let day = 1 + mix(variant ^ 12) % 28;
    let house = 10 + mix(variant ^ 13) % 9000;
    let phone = 1000 + mix(variant ^ 14) % 9000;
    let contact_given = pick(GIVEN_MALE, variant, 15);
    let email_given = given.to_lowercase();
    let email_family = family.to_lowercase();
    json!({
        "resourceType": "Patient",
        "meta": {
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]
        },
        "extension": [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": coding("urn:oid:2.16.840.1.113883.6.238", race_code, race)
                    },
                    { "url": "text", "valueString": race }
                ]
            },
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": coding("urn:oid:2.16.840.1.113883.6.238", eth_code, eth)
                    },
                    { "url": "text", "valueString": eth }
                ]
            },
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                "valueCode": birth_sex
            },
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": maiden
            },
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": { "city": city, "state": state, "country": "US" }
            }
        ],
        "identifier": [
            {
                "use": "usual",
                "type": identifier_type("MR", "Medical Record Number"),
                "system": "http://hospital.example.org/fhir/sid/mrn",
                "value": format!("MRN-{SEQ}")
            },
            {
                "use": "official",
                "type": identifier_type("SS", "Social Security Number"),
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": SSN
            },
            {
                "use": "secondary",
                "type": identifier_type("DL", "Driver's License Number"),
                "system": format!("urn:oid:2.16.840.1.113883.4.3.{}", 1 + mix(variant ^ 16) % 56),
                "value": format!("D{SEQ}")
            },
            {
                "use": "secondary",
                "type": identifier_type("MB", "Member Number"),
                "system": "http://payer.example.com/fhir/sid/member-id",
                "value": format!("MBR-{SEQ}-01"),
                "assigner": { "display": "Example Health Plan" }
            }
        ],
        "active": true,
        "name": [
            {
                "use": "official",
                "family": family,
                "given": [given, middle],
                "prefix": [prefix]
            },
            {
                "use": "maiden",
                "family": maiden,
                "given": [given],
                "period": { "end": format!("{}-06-01", year + 25) }
            }
        ],
        "telecom": [
            { "system": "phone", "value": format!("555-{:03}-{phone}", 200 + variant % 700), "use": "home" },
            { "system": "phone", "value": format!("555-{:03}-{phone}", 900 - variant % 700), "use": "mobile", "rank": 1 },
            { "system": "email", "value": format!("{email_given}.{email_family}@example.com"), "use": "home" }
        ],
        "gender": gender,
        "birthDate": format!("{year}-{month:02}-{day:02}"),
        "deceasedBoolean": false,
        "address": [
            {
                "use": "home",
                "type": "both",
                "text": format!("{house} {street}, {city}, {state} {zip}"),
                "line": [format!("{house} {street}"), "Apt 2B"],
                "city": city,
                "district": county,
                "state": state,
                "postalCode": zip,
                "country": "US",
                "period": { "start": "2016-04-01" }
            }
        ],
        "maritalStatus": {
            "coding": [coding("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married")],
            "text": "Married"
        },
        "multipleBirthBoolean": false,
        "contact": [
            {
                "relationship": [
                    {
                        "coding": [coding("http://terminology.hl7.org/CodeSystem/v2-0131", "N", "Next-of-Kin")]
                    }
                ],
                "name": { "use": "usual", "family": family, "given": [contact_given] },
                "telecom": [
                    { "system": "phone", "value": format!("555-{:03}-{phone}", 100 + variant % 800), "use": "mobile" }
                ],
                "gender": "male"
            }
        ],
        "communication": [
            {
                "language": {
                    "coding": [coding("urn:ietf:bcp:47", lang_code, lang_display)],
                    "text": lang_text
                },
                "preferred": true
            }
        ],
        "generalPractitioner": [{ "display": "Dr. Adam Careful" }],
        "managingOrganization": { "display": "Example General Hospital" }
    })
}

/// Compiled Patient variants; [`Patients::body`] fills one per request.
pub struct Patients {
    variants: Vec<Template>,
}

impl Patients {
    /// Distinct name/address/demographics combinations cycled through.
    pub const VARIANTS: u64 = 64;

    pub fn new() -> Result<Self, serde_json::Error> {
        let mut variants = Vec::new();
        for variant in 0..Self::VARIANTS {
            let text = serde_json::to_string(&patient_variant(variant))?;
            variants.push(Template::compile(&text, &[SEQ, SSN]));
        }
        Ok(Patients { variants })
    }

    /// The body of request `seq`: variant `seq % VARIANTS`, identifiers from `seq`.
    pub fn body(&self, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let seq_text = format!("{seq:012}");
        let ssn = format!(
            "9{:02}-{:02}-{:04}",
            seq % 100,
            (seq / 100) % 100,
            (seq / 10_000) % 10_000
        );
        let at = usize::try_from(seq % Self::VARIANTS).unwrap_or(0);
        if let Some(template) = self.variants.get(at) {
            template.render_into(&[&seq_text, &ssn], &mut out);
        }
        out
    }
}

/// One vital sign: LOINC code and display, UCUM unit and code, normal range, value decimals.
struct Vital {
    loinc: &'static str,
    display: &'static str,
    unit: &'static str,
    ucum: &'static str,
    low: f64,
    high: f64,
    decimals: usize,
}

const VITALS: &[Vital] = &[
    Vital {
        loinc: "8867-4",
        display: "Heart rate",
        unit: "beats/minute",
        ucum: "/min",
        low: 60.0,
        high: 100.0,
        decimals: 0,
    },
    Vital {
        loinc: "9279-1",
        display: "Respiratory rate",
        unit: "breaths/minute",
        ucum: "/min",
        low: 12.0,
        high: 20.0,
        decimals: 0,
    },
    Vital {
        loinc: "8310-5",
        display: "Body temperature",
        unit: "C",
        ucum: "Cel",
        low: 36.1,
        high: 37.2,
        decimals: 1,
    },
    Vital {
        loinc: "2708-6",
        display: "Oxygen saturation in Arterial blood",
        unit: "%",
        ucum: "%",
        low: 95.0,
        high: 100.0,
        decimals: 0,
    },
    Vital {
        loinc: "29463-7",
        display: "Body weight",
        unit: "kg",
        ucum: "kg",
        low: 45.0,
        high: 110.0,
        decimals: 1,
    },
    Vital {
        loinc: "8302-2",
        display: "Body height",
        unit: "cm",
        ucum: "cm",
        low: 150.0,
        high: 195.0,
        decimals: 1,
    },
];

fn quantity(value: Value, vital: &Vital) -> Value {
    json!({
        "value": value,
        "unit": vital.unit,
        "system": "http://unitsofmeasure.org",
        "code": vital.ucum
    })
}

/// One Observation kind with `__SEQ__`, `__PATIENT__`, `__WHEN__` and `"__VALUE__"` markers.
fn observation_kind(vital: &Vital) -> Value {
    let category = "vital-signs";
    json!({
        "resourceType": "Observation",
        "meta": {
            "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]
        },
        "identifier": [
            {
                "system": "http://hospital.example.org/fhir/sid/observation-id",
                "value": format!("OBS-{SEQ}")
            }
        ],
        "status": "final",
        "category": [
            {
                "coding": [coding("http://terminology.hl7.org/CodeSystem/observation-category", category, "Vital Signs")],
                "text": "Vital Signs"
            }
        ],
        "code": {
            "coding": [coding("http://loinc.org", vital.loinc, vital.display)],
            "text": vital.display
        },
        "subject": { "reference": format!("Patient/{PATIENT}") },
        "effectiveDateTime": WHEN,
        "issued": WHEN,
        "performer": [{ "display": "Nurse Jamie Rivera, RN" }],
        "valueQuantity": quantity(Value::String("__VALUE__".into()), vital),
        "interpretation": [
            {
                "coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "N", "Normal")],
                "text": "Normal"
            }
        ],
        "bodySite": {
            "coding": [coding("http://snomed.info/sct", "368209003", "Right arm")]
        },
        "method": { "text": "Automated vital signs monitor" },
        "device": { "display": "Bedside monitor, ward 4 east" },
        "referenceRange": [
            {
                "low": quantity(json!(vital.low), vital),
                "high": quantity(json!(vital.high), vital),
                "type": {
                    "coding": [coding("http://terminology.hl7.org/CodeSystem/referencerange-meaning", "normal", "Normal Range")]
                },
                "text": format!("{} to {} {}", vital.low, vital.high, vital.unit)
            }
        ]
    })
}

/// Compiled Observation kinds; [`Observations::body`] fills one per request.
pub struct Observations {
    kinds: Vec<(Template, &'static Vital)>,
}

impl Observations {
    pub fn new() -> Result<Self, serde_json::Error> {
        let mut kinds = Vec::new();
        for vital in VITALS {
            let text = serde_json::to_string(&observation_kind(vital))?;
            kinds.push((
                Template::compile(&text, &[SEQ, PATIENT, WHEN, VALUE]),
                vital,
            ));
        }
        Ok(Observations { kinds })
    }

    /// The body of request `seq` about `Patient/{patient_id}`: the vital sign, its value
    /// (inside the normal range) and its time all vary with `seq`.
    pub fn body(&self, seq: u64, patient_id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let at = usize::try_from(seq % self.kinds.len().max(1) as u64).unwrap_or(0);
        let Some((template, vital)) = self.kinds.get(at) else {
            return out;
        };
        let steps = ((vital.high - vital.low) * 10.0) as u64 + 1;
        let value = vital.low + (mix(seq) % steps) as f64 / 10.0;
        let value = format!("{value:.prec$}", prec = vital.decimals);
        let when = format!(
            "2025-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            1 + seq % 12,
            1 + (seq / 12) % 28,
            (seq / 7) % 24,
            (seq / 3) % 60,
            seq % 60
        );
        let seq_text = format!("{seq:012}");
        template.render_into(&[&seq_text, patient_id, &when, &value], &mut out);
        out
    }
}

/// The (min, max) body size in bytes over the first `samples` requests.
pub fn size_range(samples: u64, body: impl Fn(u64) -> Vec<u8>) -> (usize, usize) {
    let mut min = usize::MAX;
    let mut max = 0;
    for seq in 0..samples {
        let len = body(seq).len();
        min = min.min(len);
        max = max.max(len);
    }
    if samples == 0 { (0, 0) } else { (min, max) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn template_fills_holes_in_order() {
        let t = Template::compile("a__X__b__Y__c__X__", &["__X__", "__Y__"]);
        assert_eq!(t.holes(), 3);
        let mut out = Vec::new();
        t.render_into(&["1", "2"], &mut out);
        assert_eq!(out, b"a1b2c1");
    }

    #[test]
    fn patient_bodies_are_valid_distinct_and_about_3_kb() {
        let patients = Patients::new().unwrap();
        let a: Value = serde_json::from_slice(&patients.body(1)).unwrap();
        let b: Value = serde_json::from_slice(&patients.body(1 + Patients::VARIANTS)).unwrap();
        assert_eq!(a["resourceType"], "Patient");
        assert_ne!(a["identifier"], b["identifier"]);
        assert_eq!(a["identifier"][0]["value"], "MRN-000000000001");
        let (min, max) = size_range(256, |seq| patients.body(seq));
        assert!(min > 2_600 && max < 3_600, "{min}..{max}");
    }

    #[test]
    fn observation_bodies_are_valid_and_about_1_5_kb() {
        let observations = Observations::new().unwrap();
        for seq in 0..64 {
            let body = observations.body(seq, "abc-123");
            let value: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["subject"]["reference"], "Patient/abc-123");
            assert!(value["valueQuantity"]["value"].is_number());
            let low = value["referenceRange"][0]["low"]["value"].to_string();
            let high = value["referenceRange"][0]["high"]["value"].to_string();
            let v = value["valueQuantity"]["value"].to_string();
            let (low, high, v): (f64, f64, f64) = (
                low.parse().unwrap(),
                high.parse().unwrap(),
                v.parse().unwrap(),
            );
            assert!(low <= v && v <= high, "{low} <= {v} <= {high}");
        }
        let (min, max) = size_range(64, |seq| {
            observations.body(seq, "0195f3c2-8e6b-7a1d-9c4e-2f6a8b0c1d3e")
        });
        assert!(min > 1_200 && max < 1_800, "{min}..{max}");
    }
}
