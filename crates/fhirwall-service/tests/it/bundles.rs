//! Batch and transaction Bundles posted to the base: references between entries, conditional
//! entries and references, the processing order, atomicity (a failing entry stores nothing of
//! a transaction), per-entry scopes and validation, and what the audit trail keeps.

use fhirwall_service::{ErrorKind, Interaction, Request};
use serde_json::{Value, json};

use crate::support::*;

/// A Bundle request whose client asks for the entries' resources back
/// (`Prefer: return=representation`).
fn bundle(kind: &str, entries: Vec<Value>) -> Request {
    let mut request = unstated_bundle(kind, entries);
    request.return_stated = true;
    request
}

/// A Bundle request that states no return preference.
fn unstated_bundle(kind: &str, entries: Vec<Value>) -> Request {
    Request::new(Interaction::Bundle).with_body(json!({
        "resourceType": "Bundle",
        "type": kind,
        "entry": entries,
    }))
}

fn post(full_url: &str, resource: Value) -> Value {
    json!({"fullUrl": full_url, "resource": resource,
           "request": {"method": "POST", "url": resource["resourceType"].clone()}})
}

fn observation(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
           "subject": {"reference": subject}})
}

async fn count(app: &App, type_name: &str) -> u64 {
    let mut request = search(&[("_summary", "count")]);
    request.interaction =
        Interaction::SearchType(fhirwall_model::ResourceType::parse(type_name).unwrap());
    body(&app.handle(&admin(), request).await.unwrap())["total"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_transaction_resolves_urn_uuid_references_and_answers_each_entry() {
    let app = App::new().await;
    let patient_urn = "urn:uuid:0b2f4f2e-6a83-4b6e-9d7a-2f1c1f6e0001";
    let reply = app
        .handle(
            &admin(),
            bundle(
                "transaction",
                vec![
                    post(
                        "urn:uuid:0b2f4f2e-6a83-4b6e-9d7a-2f1c1f6e0002",
                        observation(patient_urn),
                    ),
                    post(patient_urn, patient_body("MRN-T1")),
                ],
            ),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let answer = body(&reply);
    assert_eq!(answer["type"], "transaction-response");
    let entries = answer["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for entry in entries {
        assert_eq!(entry["response"]["status"], "201 Created");
        assert!(
            entry["response"]["etag"]
                .as_str()
                .unwrap()
                .starts_with("W/")
        );
    }
    // Answers come in the Bundle's order; the Observation points at the created Patient.
    let patient_location = entries[1]["response"]["location"].as_str().unwrap();
    let patient_ref = patient_location.split("/_history").next().unwrap();
    assert!(patient_ref.starts_with("Patient/"));
    assert_eq!(
        entries[0]["resource"]["subject"]["reference"], patient_ref,
        "the urn:uuid reference became the new Patient's id"
    );
    assert_eq!(count(&app, "Patient").await, 1);
    assert_eq!(count(&app, "Observation").await, 1);

    // The trail has each write's record and one for the transaction, which names both.
    let records = app.audit_records().await;
    let transaction = records
        .iter()
        .find(|r| r.subtype == "transaction")
        .expect("a transaction record");
    assert_eq!(transaction.entities.len(), 2);
    assert!(transaction.patients.iter().any(|p| p == patient_ref));
    assert_eq!(records.iter().filter(|r| r.subtype == "create").count(), 2);
}

#[tokio::test]
async fn a_failing_entry_stores_nothing_of_the_transaction_and_is_named() {
    let app = App::new().await;
    let audit_before = app.audit_count().await;
    let result = app
        .handle(
            &admin(),
            bundle(
                "transaction",
                vec![
                    post("urn:uuid:1", patient_body("MRN-T2")),
                    // An Observation without its required status breaks the definitions.
                    post(
                        "urn:uuid:2",
                        json!({"resourceType": "Observation", "code": {"text": "x"}}),
                    ),
                ],
            ),
        )
        .await;
    let error = result.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unprocessable);
    assert!(
        error.outcome.message.contains("Bundle entry 1"),
        "{}",
        error.outcome.message
    );
    assert_eq!(
        count(&app, "Patient").await,
        0,
        "nothing of the transaction was stored"
    );
    assert_eq!(app.version_count().await, 0);
    // Only the refusal itself is audited (and the count searches above).
    let records = app.audit_records().await;
    assert!(
        records
            .iter()
            .skip(audit_before)
            .all(|r| r.subtype != "create")
    );

    // A urn: reference that no entry has as fullUrl is refused too.
    let error = app
        .handle(
            &admin(),
            bundle(
                "transaction",
                vec![post("urn:uuid:3", observation("urn:uuid:nowhere"))],
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Invalid);
    assert_eq!(count(&app, "Observation").await, 0);
}

#[tokio::test]
async fn conditional_entries_and_conditional_references_resolve_to_existing_resources() {
    let app = App::new().await;
    let existing = app.create_patient("MRN-T3").await;
    let versions_before = app.version_count().await;
    let reply = app
        .handle(
            &admin(),
            bundle(
                "transaction",
                vec![
                    json!({"fullUrl": "urn:uuid:p", "resource": patient_body("MRN-T3"),
                           "request": {"method": "POST", "url": "Patient",
                                       "ifNoneExist": "identifier=urn:mrn|MRN-T3"}}),
                    post("urn:uuid:o1", observation("urn:uuid:p")),
                    post(
                        "urn:uuid:o2",
                        observation("Patient?identifier=urn:mrn|MRN-T3"),
                    ),
                ],
            ),
        )
        .await
        .unwrap();
    let answer = body(&reply);
    assert_eq!(answer["entry"][0]["response"]["status"], "200 OK");
    let expected = format!("Patient/{existing}");
    assert_eq!(
        answer["entry"][1]["resource"]["subject"]["reference"],
        expected
    );
    assert_eq!(
        answer["entry"][2]["resource"]["subject"]["reference"],
        expected
    );
    assert_eq!(
        app.version_count().await,
        versions_before + 2,
        "no new Patient version"
    );

    // A conditional reference that matches nothing fails the transaction.
    let error = app
        .handle(
            &admin(),
            bundle(
                "transaction",
                vec![post(
                    "urn:uuid:o3",
                    observation("Patient?identifier=urn:mrn|NOBODY"),
                )],
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::PreconditionFailed);
}

#[tokio::test]
async fn updates_patches_deletes_and_reads_in_one_transaction() {
    let app = App::new().await;
    let a = app.create_patient("MRN-T4").await;
    let b = app.create_patient("MRN-T5").await;
    let mut updated = patient_body("MRN-T4");
    updated["id"] = json!(a.as_str());
    updated["gender"] = json!("female");
    let patch = base64_json(&json!([{"op": "add", "path": "/active", "value": true}]));
    let reply = app
        .handle(
            &admin(),
            bundle(
                "transaction",
                vec![
                    json!({"request": {"method": "GET", "url": format!("Patient/{b}")}}),
                    json!({"resource": updated,
                           "request": {"method": "PUT", "url": format!("Patient/{a}"), "ifMatch": "W/\"1\""}}),
                    json!({"resource": {"resourceType": "Binary",
                                        "contentType": "application/json-patch+json", "data": patch},
                           "request": {"method": "PATCH", "url": format!("Patient/{b}")}}),
                ],
            ),
        )
        .await
        .unwrap();
    let answer = body(&reply);
    assert_eq!(answer["entry"][1]["response"]["status"], "200 OK");
    assert_eq!(answer["entry"][1]["response"]["etag"], "W/\"2\"");
    assert_eq!(answer["entry"][2]["response"]["status"], "200 OK");
    // The read runs after the writes and sees the patch.
    assert_eq!(answer["entry"][0]["resource"]["active"], true);
    assert_eq!(
        body(&app.handle(&admin(), read(&a)).await.unwrap())["gender"],
        "female"
    );

    // Deleting and writing one resource in one transaction is refused: each entry touches
    // its own resource.
    let error = app
        .handle(
            &admin(),
            bundle(
                "transaction",
                vec![
                    json!({"request": {"method": "DELETE", "url": format!("Patient/{a}")}}),
                    json!({"resource": {"resourceType": "Binary",
                                        "contentType": "application/json-patch+json", "data": patch},
                           "request": {"method": "PATCH", "url": format!("Patient/{a}")}}),
                ],
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Invalid);

    // A stale ifMatch fails the whole transaction, the delete in it included.
    let mut stale = patient_body("MRN-T4");
    stale["id"] = json!(a.as_str());
    let error = app
        .handle(
            &admin(),
            bundle(
                "transaction",
                vec![
                    json!({"request": {"method": "DELETE", "url": format!("Patient/{b}")}}),
                    json!({"resource": stale,
                           "request": {"method": "PUT", "url": format!("Patient/{a}"), "ifMatch": "W/\"1\""}}),
                ],
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::PreconditionFailed);
    assert_eq!(app.handle(&admin(), read(&b)).await.unwrap().status, 200);
}

fn base64_json(value: &Value) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = serde_json::to_vec(value).unwrap();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn every_entry_is_checked_against_the_callers_scopes() {
    let app = App::new().await;
    let patients_only = caller("system/Patient.c");
    let error = app
        .handle(
            &patients_only,
            bundle(
                "transaction",
                vec![
                    post("urn:uuid:p", patient_body("MRN-T6")),
                    post("urn:uuid:o", observation("urn:uuid:p")),
                ],
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Forbidden);
    assert!(error.outcome.message.contains("Bundle entry 1"));
    assert_eq!(count(&app, "Patient").await, 0);
}

#[tokio::test]
async fn a_batch_answers_each_entry_on_its_own() {
    let app = App::new().await;
    let reply = app
        .handle(
            &admin(),
            bundle(
                "batch",
                vec![
                    post("urn:uuid:a", patient_body("MRN-B1")),
                    post("urn:uuid:b", json!({"resourceType": "Observation"})),
                    json!({"request": {"method": "GET", "url": "Patient/does-not-exist"}}),
                    json!({"request": {"method": "GET"}}),
                ],
            ),
        )
        .await
        .unwrap();
    let answer = body(&reply);
    assert_eq!(answer["type"], "batch-response");
    let statuses: Vec<&str> = answer["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses[0], "201 Created");
    assert!(statuses[1].starts_with("4"), "{statuses:?}");
    assert_eq!(statuses[2], "404 Not Found");
    assert_eq!(statuses[3], "400 Bad Request");
    assert_eq!(
        answer["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(count(&app, "Patient").await, 1, "the good entry was stored");
}

#[tokio::test]
async fn bundles_that_are_not_batches_or_transactions_are_refused() {
    let app = App::new().await;
    for kind in ["collection", "searchset", "document"] {
        let error = app
            .handle(&admin(), bundle(kind, vec![]))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{kind}");
    }
    let too_many: Vec<Value> = (0..1001)
        .map(|i| post(&format!("urn:uuid:{i}"), patient_body("MRN-X")))
        .collect();
    let error = app
        .handle(&admin(), bundle("transaction", too_many))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::TooLarge);
}

#[tokio::test]
async fn a_conditional_reference_needs_the_right_to_search_its_type() {
    let app = App::new().await;
    app.create_patient("MRN-T7").await;
    // May create Observations, may not search Patients: resolving the reference would tell
    // whether a Patient with this identifier exists.
    let observer = caller("system/Observation.c");
    let error = app
        .handle(
            &observer,
            bundle(
                "transaction",
                vec![post(
                    "urn:uuid:o",
                    observation("Patient?identifier=urn:mrn|MRN-T7"),
                )],
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Forbidden);
    assert_eq!(count(&app, "Observation").await, 0);
    let allowed = caller("system/Observation.c system/Patient.s");
    let reply = app
        .handle(
            &allowed,
            bundle(
                "transaction",
                vec![post(
                    "urn:uuid:o",
                    observation("Patient?identifier=urn:mrn|MRN-T7"),
                )],
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        body(&reply)["entry"][0]["response"]["status"],
        "201 Created"
    );
}

#[tokio::test]
async fn a_transaction_cannot_write_the_audit_trail() {
    let app = App::new().await;
    let everything = caller("system/*.cruds system/AuditEvent.cruds");
    let event = json!({"resourceType": "AuditEvent", "type": {"code": "rest"},
        "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": true}],
        "source": {"observer": {"display": "forged"}}});
    let error = app
        .handle(
            &everything,
            bundle("transaction", vec![post("urn:uuid:e", event.clone())]),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::MethodNotAllowed);
    let reply = app
        .handle(
            &everything,
            bundle("batch", vec![post("urn:uuid:e", event)]),
        )
        .await
        .unwrap();
    assert_eq!(
        body(&reply)["entry"][0]["response"]["status"],
        "405 Method Not Allowed"
    );
    assert_eq!(app.version_count().await, 0);
}

#[tokio::test]
async fn without_a_return_preference_entries_answer_with_their_response_alone() {
    let app = App::new().await;
    let reply = app
        .handle(
            &admin(),
            unstated_bundle(
                "transaction",
                vec![post("urn:uuid:q", patient_body("MRN-T8"))],
            ),
        )
        .await
        .unwrap();
    let entry = &body(&reply)["entry"][0];
    assert_eq!(entry["response"]["status"], "201 Created");
    assert!(entry["response"]["location"].is_string());
    assert!(entry.get("resource").is_none(), "{entry}");
}
