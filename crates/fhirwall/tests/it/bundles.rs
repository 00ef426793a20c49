//! Batch and transaction over HTTP: a generated transaction Bundle loads unchanged at
//! `POST /fhir` and its data reads back; a failing transaction stores nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, json};

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures/carebundle-0.5.0-mixed-seed7-0000.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_generated_transaction_bundle_loads_unchanged_and_reads_back() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let bundle = fixture();
    let entries = bundle["entry"].as_array().unwrap().len();
    let r = c
        .post("", &bundle)
        .header("prefer", "return=representation")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let answer = json(r).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["type"], "transaction-response");
    let answers = answer["entry"].as_array().unwrap();
    assert_eq!(answers.len(), entries);
    let mut patient = None;
    for (sent, got) in bundle["entry"].as_array().unwrap().iter().zip(answers) {
        assert_eq!(got["response"]["status"], "201 Created", "{got}");
        let location = got["response"]["location"].as_str().unwrap();
        let reference = location.split("/_history").next().unwrap();
        // Every entry reads back as what was sent, with the urn:uuid references resolved.
        let read = json(c.get(reference).send().await.unwrap()).await;
        assert_eq!(read["resourceType"], sent["resource"]["resourceType"]);
        if read["resourceType"] == "Patient" {
            patient = Some(reference.to_string());
        }
        let text = serde_json::to_string(&read).unwrap();
        assert!(
            !text.contains("urn:uuid:6d367230"),
            "references were resolved: {text}"
        );
    }
    let patient = patient.unwrap();
    let observation = answers
        .iter()
        .map(|a| a["resource"].clone())
        .find(|r| r["resourceType"] == "Observation")
        .unwrap();
    assert_eq!(observation["subject"]["reference"], patient);
    let (ok, out) = server.audit_verify();
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_transaction_with_a_bad_entry_stores_nothing_and_a_batch_keeps_the_good_ones() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Atomic"}]});
    let bad = json!({"resourceType": "Observation", "code": {"text": "no status"}});
    let entries = json!([
        {"fullUrl": "urn:uuid:a", "resource": patient, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:b", "resource": bad, "request": {"method": "POST", "url": "Observation"}},
    ]);
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = c.post("", &transaction).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let outcome = json(r).await;
    assert!(
        outcome["issue"][0]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("Bundle entry 1")
    );
    let count = json(c.get("Patient?_summary=count").send().await.unwrap()).await;
    assert_eq!(count["total"], 0);

    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let answer = json(c.post("", &batch).send().await.unwrap()).await;
    assert_eq!(answer["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(
        answer["entry"][1]["response"]["status"],
        "422 Unprocessable Content"
    );
    let count = json(c.get("Patient?_summary=count").send().await.unwrap()).await;
    assert_eq!(count["total"], 1);

    // The CapabilityStatement says so.
    let metadata = json(c.get("metadata").send().await.unwrap()).await;
    let codes: Vec<&str> = metadata["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"transaction") && codes.contains(&"batch"));
}

#[tokio::test]
async fn search_by_post_with_a_form_body_and_count_zero_gives_the_total() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    for mrn in ["MRN-P1", "MRN-P2"] {
        c.create(&crate::support::patient("Posted", mrn)).await;
    }
    let form = c
        .http
        .post(c.fhir("Patient/_search"))
        .bearer_auth(&c.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("identifier=urn%3Aoid%3A1.2.36.146.595.217.0.1%7CMRN-P1")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let found = json(form).await;
    assert_eq!(found["total"], 1);
    assert!(
        found["link"][0]["url"]
            .as_str()
            .unwrap()
            .contains("identifier="),
        "the self link carries the form's parameters"
    );
    let wrong_type = c
        .http
        .post(c.fhir("Patient/_search"))
        .bearer_auth(&c.token)
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status().as_u16(), 415);
    let counted = json(c.get("Patient?_count=0").send().await.unwrap()).await;
    assert_eq!(counted["total"], 2);
    assert!(counted.get("entry").is_none());
}
