//! The life of one Patient through the plain interactions: create, read, update, vread, patch,
//! delete, history, and update-as-create.

use fhirwall_service::{ErrorKind, Interaction, Request};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_patient_lives_through_create_read_update_patch_delete_and_history() {
    let app = App::new().await;
    let who = admin();

    let created = app
        .handle(&who, create(patient_body("MRN-1")))
        .await
        .unwrap();
    assert_eq!(created.status, 201);
    let created_body = body(&created);
    let pid = id(created_body["id"].as_str().unwrap());
    assert_eq!(created_body["meta"]["versionId"], "1");
    assert_eq!(created.version.map(|(v, _)| v), Some(1));
    let location = created.location.clone().unwrap();
    assert!(location.created);
    assert_eq!(
        location.url,
        format!("{BASE_URL}/fhir/Patient/{pid}/_history/1")
    );

    let read_back = app.handle(&who, read(&pid)).await.unwrap();
    assert_eq!(read_back.status, 200);
    assert_eq!(body(&read_back), created_body);

    let updated = app.update_patient(&pid, "MRN-1", "Roe").await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.version.map(|(v, _)| v), Some(2));
    assert!(!updated.location.as_ref().unwrap().created);
    assert_eq!(body(&updated)["name"][0]["family"], "Roe");

    let first = app
        .handle(
            &who,
            Request::new(Interaction::Vread(patient(), pid.clone(), "1".into())),
        )
        .await
        .unwrap();
    assert_eq!(body(&first)["name"][0]["family"], "Doe");
    assert_eq!(body(&first)["meta"]["versionId"], "1");
    let missing_version = app
        .handle(
            &who,
            Request::new(Interaction::Vread(patient(), pid.clone(), "9".into())),
        )
        .await;
    assert_eq!(refused(missing_version), ErrorKind::NotFound);

    let patched = app
        .handle(
            &who,
            patch(
                &pid,
                json!([
                    {"op": "test", "path": "/name/0/family", "value": "Roe"},
                    {"op": "replace", "path": "/name/0/given/0", "value": "Beth"},
                    {"op": "add", "path": "/gender", "value": "female"}
                ]),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.status, 200);
    assert_eq!(patched.version.map(|(v, _)| v), Some(3));
    let patched_body = body(&patched);
    assert_eq!(patched_body["name"][0]["given"][0], "Beth");
    assert_eq!(patched_body["gender"], "female");
    assert_eq!(patched_body["meta"]["versionId"], "3");

    let deleted = app.handle(&who, delete(&pid)).await.unwrap();
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.version.map(|(v, _)| v), Some(4));
    assert_eq!(refused(app.handle(&who, read(&pid)).await), ErrorKind::Gone);
    // Deleting what is already deleted succeeds and writes nothing.
    assert_eq!(app.handle(&who, delete(&pid)).await.unwrap().status, 204);

    let history = app.history_entries(&pid).await;
    let summary: Vec<(String, String, String)> = history
        .iter()
        .map(|entry| {
            (
                entry["request"]["method"].as_str().unwrap().to_string(),
                entry["response"]["status"].as_str().unwrap().to_string(),
                entry["response"]["etag"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("DELETE", "204 No Content", "W/\"4\""),
        ("PATCH", "200 OK", "W/\"3\""),
        ("PUT", "200 OK", "W/\"2\""),
        ("POST", "201 Created", "W/\"1\""),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(m, s, e)| ((*m).into(), (*s).into(), (*e).into()))
        .collect();
    assert_eq!(
        summary, expected,
        "history is newest first, one entry per version"
    );
    assert!(
        history[0].get("resource").is_none(),
        "a deletion has no body"
    );
    assert_eq!(history[1]["resource"]["gender"], "female");
}

#[tokio::test]
async fn an_update_to_an_unused_id_creates_the_resource() {
    let app = App::new().await;
    let pid = id("chosen-by-client");
    let mut body_in = patient_body("MRN-7");
    body_in["id"] = json!("chosen-by-client");
    let reply = app.handle(&admin(), update(&pid, body_in)).await.unwrap();
    assert_eq!(reply.status, 201);
    assert_eq!(reply.version.map(|(v, _)| v), Some(1));
    assert!(reply.location.unwrap().created);
    let history = app.history_entries(&pid).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["request"]["method"], "PUT");
    assert_eq!(history[0]["response"]["status"], "201 Created");
}

/// Malformed writes are the client's error, and none of them writes a version.
#[tokio::test]
async fn malformed_writes_are_invalid_and_write_nothing() {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    let cases: Vec<(&str, Request, ErrorKind)> = vec![
        (
            "create without a body",
            Request::new(Interaction::Create(patient())),
            ErrorKind::Invalid,
        ),
        (
            "create of another type",
            create(json!({"resourceType": "Observation"})),
            ErrorKind::Invalid,
        ),
        (
            "update without an id in the body",
            update(&pid, patient_body("MRN-1")),
            ErrorKind::Invalid,
        ),
        (
            "update whose body names another id",
            update(&pid, {
                let mut b = patient_body("MRN-1");
                b["id"] = json!("other");
                b
            }),
            ErrorKind::Invalid,
        ),
        (
            "patch that is not an array",
            patch(&pid, json!({"op": "remove", "path": "/name"})),
            ErrorKind::Invalid,
        ),
        (
            "patch whose test fails",
            patch(
                &pid,
                json!([{"op": "test", "path": "/name/0/family", "value": "Nope"}]),
            ),
            ErrorKind::Unprocessable,
        ),
        (
            "patch that changes the id",
            patch(
                &pid,
                json!([{"op": "replace", "path": "/id", "value": "x"}]),
            ),
            ErrorKind::Unprocessable,
        ),
    ];
    for (name, request, expected) in cases {
        let result = app.handle(&admin(), request).await;
        assert_eq!(refused(result), expected, "{name}");
    }
    assert_eq!(app.version_count().await, 1);
}
