//! What a caller's scopes let it do, where a weaker check would be a hole: a patch needs read
//! rights (its outcome tells the content), a PUT that brings back a deleted resource needs
//! create rights, and the audit trail is reached only with a scope that names AuditEvent.
//! Also: the audit record of a search keeps no searched value.

use fhirwall_service::{ErrorKind, Interaction, Request};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_patch_needs_read_rights_besides_update() {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    let update_only = caller("system/Patient.u");
    let documents = [
        (
            "a patch that would apply",
            json!([{"op": "replace", "path": "/name/0/family", "value": "Roe"}]),
        ),
        // Whether a `test` fails (422) or passes would tell the caller the content.
        (
            "a failing test",
            json!([{"op": "test", "path": "/name/0/family", "value": "Nope"}]),
        ),
        (
            "a passing test",
            json!([{"op": "test", "path": "/name/0/family", "value": "Doe"}]),
        ),
        ("an empty patch", json!([])),
    ];
    let records_before = app.audit_count().await;
    for (name, document) in &documents {
        let result = app
            .handle(&update_only, patch(&pid, document.clone()))
            .await;
        assert_eq!(refused(result), ErrorKind::Forbidden, "{name}");
    }
    let records = app.audit_records().await;
    let refusals: Vec<_> = records.iter().skip(records_before).collect();
    assert_eq!(refusals.len(), documents.len(), "each refusal is audited");
    for record in refusals {
        assert_eq!(record.subtype, "patch");
        assert_eq!(record.http_status, 403);
        assert_eq!(record.outcome_code.as_deref(), Some("insufficient-scope"));
    }
    assert_eq!(
        app.history_entries(&pid).await.len(),
        1,
        "no version written"
    );

    let read_update = caller("system/Patient.ru");
    let (_, document) = &documents[0];
    let patched = app
        .handle(&read_update, patch(&pid, document.clone()))
        .await
        .unwrap();
    assert_eq!(patched.status, 200);
    assert_eq!(patched.version.map(|(v, _)| v), Some(2));
    assert_eq!(body(&patched)["name"][0]["family"], "Roe");
}

#[tokio::test]
async fn a_put_that_brings_back_a_deleted_resource_needs_create_rights() {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    let mut body_in = patient_body("MRN-1");
    body_in["id"] = json!(pid.as_str());

    // Update rights are enough while the resource lives.
    let live = app
        .handle(&caller("system/Patient.u"), update(&pid, body_in.clone()))
        .await
        .unwrap();
    assert_eq!(live.status, 200);

    let update_delete = caller("system/Patient.ud");
    assert_eq!(
        app.handle(&update_delete, delete(&pid))
            .await
            .unwrap()
            .status,
        204
    );
    let versions = app.version_count().await;
    for scopes in [
        "system/Patient.ud",
        "system/Patient.u",
        "system/Patient.rus",
    ] {
        let result = app
            .handle(&caller(scopes), update(&pid, body_in.clone()))
            .await;
        assert_eq!(refused(result), ErrorKind::Forbidden, "{scopes}");
    }
    // Nor may update rights create at an id never used.
    let mut fresh = patient_body("MRN-2");
    fresh["id"] = json!("never-used");
    let result = app
        .handle(
            &caller("system/Patient.u"),
            update(&id("never-used"), fresh),
        )
        .await;
    assert_eq!(refused(result), ErrorKind::Forbidden);
    assert_eq!(app.version_count().await, versions, "nothing written");
    assert_eq!(
        refused(app.handle(&admin(), read(&pid)).await),
        ErrorKind::Gone
    );

    let create_update = caller("system/Patient.cu");
    let revived = app
        .handle(&create_update, update(&pid, body_in))
        .await
        .unwrap();
    assert_eq!(revived.status, 201, "an un-delete creates");
    assert_eq!(revived.version.map(|(v, _)| v), Some(4));
    assert_eq!(app.handle(&admin(), read(&pid)).await.unwrap().status, 200);
}

/// FHIR: an update answers 201 when it created the resource; bringing a deleted resource back
/// is a create (the scope check above treats it as one).
#[tokio::test]
async fn a_put_that_brings_back_a_deleted_resource_answers_created() {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    app.handle(&admin(), delete(&pid)).await.unwrap();
    let mut body_in = patient_body("MRN-1");
    body_in["id"] = json!(pid.as_str());
    let revived = app
        .handle(&caller("system/Patient.cu"), update(&pid, body_in))
        .await
        .unwrap();
    assert_eq!(revived.status, 201);
    assert!(revived.location.unwrap().created);
}

fn audit_search(params: &[(&str, &str)]) -> Request {
    Request::new(Interaction::SearchType(audit_event())).with_params(pairs(params))
}

fn audit_read(seq: &str) -> Request {
    Request::new(Interaction::Read(audit_event(), id(seq)))
}

#[tokio::test]
async fn the_audit_trail_needs_a_scope_naming_audit_event() {
    let app = App::new().await;
    app.create_patient("MRN-1").await;
    let refused_cases = [
        "system/*.rs",
        "system/*.cruds",
        "system/*.read",
        "system/Patient.rs",
    ];
    for scopes in refused_cases {
        let who = caller(scopes);
        let search = app.handle(&who, audit_search(&[])).await;
        assert_eq!(
            refused(search),
            ErrorKind::Forbidden,
            "search with {scopes}"
        );
        let read_one = app.handle(&who, audit_read("1")).await;
        assert_eq!(
            refused(read_one),
            ErrorKind::Forbidden,
            "read with {scopes}"
        );
    }

    for scopes in ["system/AuditEvent.rs", "system/AuditEvent.read"] {
        let who = caller(scopes);
        let bundle = body(&app.handle(&who, audit_search(&[])).await.unwrap());
        assert_eq!(bundle["type"], "searchset", "{scopes}");
        let entries = bundle["entry"].as_array().unwrap();
        assert!(!entries.is_empty(), "{scopes}");
        assert!(
            entries
                .iter()
                .all(|e| e["resource"]["resourceType"] == "AuditEvent")
        );
        let event = body(&app.handle(&who, audit_read("1")).await.unwrap());
        assert_eq!(event["resourceType"], "AuditEvent");
        assert_eq!(event["id"], "1");
    }

    // Only the server writes the trail, whatever the scopes say.
    let writer = caller("system/AuditEvent.cruds");
    let write = app
        .handle(
            &writer,
            Request::new(Interaction::Create(audit_event())).with_body(json!({
                "resourceType": "AuditEvent"
            })),
        )
        .await;
    assert_eq!(refused(write), ErrorKind::MethodNotAllowed);
}

#[tokio::test]
async fn the_audit_record_of_a_search_keeps_names_and_controls_but_no_values() {
    let app = App::new().await;
    app.create_patient("SECRET-123").await;
    let found = app
        .handle(
            &admin(),
            search(&[("identifier", "urn:mrn|SECRET-123"), ("_count", "5")]),
        )
        .await
        .unwrap();
    assert_eq!(body(&found)["total"], 1);
    let records = app.audit_records().await;
    let record = records.last().unwrap();
    assert_eq!(record.subtype, "search-type");
    let query = record.query.clone().unwrap();
    for secret in ["SECRET-123", "SECRET", "urn:mrn", "urn%3Amrn", "mrn"] {
        assert!(!query.contains(secret), "{secret} in {query}");
    }
    assert!(query.contains("_count=5"), "{query}");
    assert!(query.starts_with("identifier=%23"), "{query}");

    // The same value searched twice hashes alike; another value does not.
    app.handle(&admin(), search(&[("identifier", "urn:mrn|SECRET-123")]))
        .await
        .unwrap();
    app.handle(&admin(), search(&[("identifier", "urn:mrn|OTHER-9")]))
        .await
        .unwrap();
    let records = app.audit_records().await;
    let hash_of = |record: &fhirwall_audit::AuditRecord| -> String {
        let query = record.query.clone().unwrap();
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("identifier="))
            .unwrap()
            .to_string()
    };
    let n = records.len();
    assert_eq!(hash_of(&records[n - 3]), hash_of(&records[n - 2]));
    assert_ne!(hash_of(&records[n - 2]), hash_of(&records[n - 1]));

    // What the auditor sees through the API carries the same redacted query.
    let bundle = body(
        &app.handle(&auditor(), audit_search(&[("subtype", "search-type")]))
            .await
            .unwrap(),
    );
    let text = serde_json::to_string(&bundle).unwrap();
    assert!(!text.contains("SECRET-123"), "{text}");
    assert!(!text.contains("OTHER-9"), "{text}");
}
