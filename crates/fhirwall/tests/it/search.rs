//! Search over HTTPS as a client sees it: a generated transaction Bundle loaded unchanged and
//! read back through searches with `_include`, paging links followed as given, compartments,
//! POST `_search`, and a raw copy of the database that holds none of the searched values.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, json, urlencode};

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures/carebundle-0.5.0-mixed-seed7-0000.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn matches(bundle: &Value, mode: &str) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| e["resource"].clone())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_loaded_bundle_reads_back_through_searches_with_includes() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let r = c.post("", &fixture()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Another patient with a condition of its own: a patient's search must not return it.
    let other = c
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Elsewhere"}]}))
        .await;
    let other_id = other["id"].as_str().unwrap();
    let condition = json!({
        "resourceType": "Condition",
        "subject": {"reference": format!("Patient/{other_id}")},
        "code": {"text": "other"},
    });
    c.create(&condition).await;

    let found = json(c.get("Patient?family=dumm").send().await.unwrap()).await;
    let patients = matches(&found, "match");
    assert_eq!(patients.len(), 1, "{found}");
    assert_eq!(found["total"], 1);
    let id = patients[0]["id"].as_str().unwrap().to_string();
    assert!(
        found["entry"][0]["fullUrl"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/Patient/{id}"))
    );

    let by_identifier = json(
        c.get("Patient?identifier=urn:uuid:6f2a1d3e-9c47-5b8a-a1f0-2d4e6c8b0a17|6D367230")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(matches(&by_identifier, "match").len(), 1);
    let by_birth = json(c.get("Patient?birthdate=1961-06").send().await.unwrap()).await;
    assert_eq!(matches(&by_birth, "match").len(), 1);

    let conditions = json(
        c.get(&format!("Condition?patient={id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let conditions = matches(&conditions, "match");
    assert_eq!(conditions.len(), 2, "only this patient's conditions");
    for condition in &conditions {
        assert_eq!(condition["subject"]["reference"], format!("Patient/{id}"));
    }

    let with_patient = json(
        c.get(&format!(
            "Observation?subject=Patient/{id}&_include=Observation:subject&_count=10"
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(matches(&with_patient, "match").len(), 10);
    let included = matches(&with_patient, "include");
    assert_eq!(included.len(), 1);
    assert_eq!(included[0]["id"], id.as_str());

    // Paging links are followed as given, to the end, each resource once.
    let mut seen = std::collections::HashSet::new();
    let mut url = Some(c.fhir(&format!("Observation?patient={id}&_count=7")));
    let mut pages = 0;
    while let Some(next) = url {
        let page = json(
            c.http
                .get(&next)
                .bearer_auth(&c.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        for resource in matches(&page, "match") {
            assert!(seen.insert(resource["id"].as_str().unwrap().to_string()));
        }
        url = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        pages += 1;
        assert!(pages < 20);
    }
    assert_eq!(seen.len(), 34);
    assert_eq!(pages, 5);

    // The same search answered in XML and pretty JSON.
    let xml = c
        .get(&format!("Observation?patient={id}&_count=3"))
        .header("Accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(xml.status(), StatusCode::OK);
    let xml = xml.text().await.unwrap();
    assert!(
        xml.starts_with("<Bundle") || xml.starts_with("<?xml"),
        "{xml}"
    );
    assert_eq!(xml.matches("<entry>").count(), 3, "{xml}");
    assert!(xml.contains("<Observation"), "{xml}");
    let pretty = c
        .get(&format!("Observation?patient={id}&_count=3&_pretty=true"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed: Value = serde_json::from_str(&pretty).unwrap();
    assert_eq!(matches(&parsed, "match").len(), 3);
    assert!(pretty.contains("\n  "), "pretty JSON is indented");

    // The compartment, a count, and POST _search with a form body.
    let compartment = json(
        c.get(&format!("Patient/{id}/Condition"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(matches(&compartment, "match").len(), 2);
    let count = json(
        c.get(&format!("Observation?patient={id}&_summary=count"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(count["total"], 34);
    let posted = c
        .http
        .post(c.fhir("Patient/_search"))
        .bearer_auth(&c.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("family={}", urlencode("Dummett")))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::OK);
    assert_eq!(matches(&json(posted).await, "match").len(), 1);
    let (ok, out) = server.audit_verify();
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_raw_copy_of_the_database_holds_none_of_the_searched_values() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let secrets = [
        "Quetzalcoatl",
        "Wilhelmina",
        "MRN-778899",
        "555-867-5309",
        "Sesame Street",
        "Springfield",
        "wilhelmina.q@example.org",
    ];
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": "MRN-778899"}],
        "name": [{"family": "Quetzalcoatl", "given": ["Wilhelmina"]}],
        "telecom": [
            {"system": "phone", "value": "555-867-5309"},
            {"system": "email", "value": "wilhelmina.q@example.org"}
        ],
        "address": [{"line": ["123 Sesame Street"], "city": "Springfield", "postalCode": "49007"}],
        "birthDate": "1950-01-31",
    });
    let created = c.create(&patient).await;
    let id = created["id"].as_str().unwrap();
    for query in [
        "family=quetzal",
        "given:exact=Wilhelmina",
        "family:contains=zalco",
        "identifier=urn:mrn|MRN-778899",
        "phone=555-867-5309",
        "email=wilhelmina.q@example.org",
        "address-city=springfield",
        "address=123 sesame",
        "birthdate=1950-01-31",
    ] {
        let found = json(c.get(&format!("Patient?{query}")).send().await.unwrap()).await;
        let ids: Vec<Value> = matches(&found, "match")
            .iter()
            .map(|r| r["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!(id)], "{query}: {found}");
    }
    let (ok, out) = server.audit_verify();
    assert!(ok, "{out}");
    drop(c);
    let dir = server.data_dir.clone();
    let mut server = server;
    assert!(server.terminate());
    let mut raw = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            raw.extend(std::fs::read(&path).unwrap());
        }
    }
    let lower: Vec<u8> = raw.to_ascii_lowercase();
    for secret in secrets {
        let needle = secret.to_ascii_lowercase();
        assert!(
            !lower.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the raw database holds {secret}"
        );
    }
}

#[tokio::test]
async fn unknown_parameters_are_reported_and_strict_handling_refuses_them() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    c.create(&json!({"resourceType": "Patient", "name": [{"family": "Known"}]}))
        .await;
    let lenient = json(
        c.get("Patient?family=known&color=blue")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(matches(&lenient, "match").len(), 1);
    let outcome = matches(&lenient, "outcome");
    assert_eq!(outcome.len(), 1);
    assert!(outcome[0].to_string().contains("color"));
    let strict = c
        .get("Patient?family=known&color=blue")
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(strict.status(), StatusCode::BAD_REQUEST);
    let bad = c.get("Patient?birthdate=soon").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(bad).await["resourceType"], "OperationOutcome");
}
