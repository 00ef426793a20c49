//! Conditional interactions: create with If-None-Exist, update and delete by identifier, and
//! the preconditions If-Match and If-None-Match.

use fhirwall_service::{ErrorKind, Interaction, Request};
use serde_json::json;

use crate::support::*;

fn conditional_create(mrn: &str) -> Request {
    let mut request = create(patient_body(mrn));
    request.conditions.if_none_exist = Some(format!("identifier=urn:mrn|{mrn}"));
    request
}

#[tokio::test]
async fn a_conditional_create_creates_once_then_answers_with_the_match() {
    let app = App::new().await;
    let first = app
        .handle(&admin(), conditional_create("MRN-1"))
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    let first_body = body(&first);
    let versions_before = app.version_count().await;
    assert_eq!(versions_before, 1);

    let second = app
        .handle(&admin(), conditional_create("MRN-1"))
        .await
        .unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(
        body(&second),
        first_body,
        "the existing resource, unchanged"
    );
    assert_eq!(second.version.map(|(v, _)| v), Some(1));
    assert_eq!(app.version_count().await, 1, "nothing was written");

    // The `Patient?` prefix is allowed, and another identifier is another resource.
    let mut prefixed = create(patient_body("MRN-2"));
    prefixed.conditions.if_none_exist = Some("Patient?identifier=urn:mrn|MRN-2".into());
    assert_eq!(app.handle(&admin(), prefixed).await.unwrap().status, 201);
    assert_eq!(app.version_count().await, 2);
}

#[tokio::test]
async fn a_conditional_create_needs_search_rights_as_well() {
    let app = App::new().await;
    let result = app
        .handle(&caller("system/Patient.c"), conditional_create("MRN-1"))
        .await;
    assert_eq!(refused(result), ErrorKind::Forbidden);
    assert_eq!(app.version_count().await, 0);
}

#[tokio::test]
async fn conditional_update_and_delete_find_their_resource_by_identifier() {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    let other = app.create_patient("MRN-2").await;
    let by_mrn = pairs(&[("identifier", "urn:mrn|MRN-1")]);

    let mut changed = patient_body("MRN-1");
    changed["name"][0]["family"] = json!("Roe");
    let updated = app
        .handle(
            &admin(),
            Request::new(Interaction::ConditionalUpdate(patient()))
                .with_params(by_mrn.clone())
                .with_body(changed),
        )
        .await
        .unwrap();
    assert_eq!(updated.status, 200);
    assert_eq!(body(&updated)["id"], pid.as_str());
    assert_eq!(updated.version.map(|(v, _)| v), Some(2));
    let current = body(&app.handle(&admin(), read(&pid)).await.unwrap());
    assert_eq!(current["name"][0]["family"], "Roe");

    // No match: the conditional update creates.
    let created = app
        .handle(
            &admin(),
            Request::new(Interaction::ConditionalUpdate(patient()))
                .with_params(pairs(&[("identifier", "urn:mrn|MRN-3")]))
                .with_body(patient_body("MRN-3")),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201);

    let deleted = app
        .handle(
            &admin(),
            Request::new(Interaction::ConditionalDelete(patient())).with_params(by_mrn.clone()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.status, 204);
    assert_eq!(
        refused(app.handle(&admin(), read(&pid)).await),
        ErrorKind::Gone
    );
    assert_eq!(
        app.handle(&admin(), read(&other)).await.unwrap().status,
        200
    );

    // Nothing matches any more: deleting again changes nothing.
    let versions = app.version_count().await;
    let again = app
        .handle(
            &admin(),
            Request::new(Interaction::ConditionalDelete(patient())).with_params(by_mrn),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 204);
    assert_eq!(app.version_count().await, versions);
}

#[tokio::test]
async fn conditions_need_criteria_and_match_at_most_one() {
    let app = App::new().await;
    app.create_patient("MRN-1").await;
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("no criteria", &[]),
        ("an unknown parameter", &[("shoe-size", "42")]),
        ("a result parameter", &[("_count", "1")]),
    ];
    for (name, params) in cases {
        let result = app
            .handle(
                &admin(),
                Request::new(Interaction::ConditionalDelete(patient())).with_params(pairs(params)),
            )
            .await;
        assert_eq!(refused(result), ErrorKind::Invalid, "{name}");
    }
    // A second Patient with the same identifier (an update-as-create, which no condition
    // guards) makes the condition ambiguous.
    let mut twin = patient_body("MRN-1");
    twin["id"] = json!("twin");
    app.handle(&admin(), update(&id("twin"), twin))
        .await
        .unwrap();
    let ambiguous = app
        .handle(
            &admin(),
            Request::new(Interaction::ConditionalDelete(patient()))
                .with_params(pairs(&[("identifier", "urn:mrn|MRN-1")])),
        )
        .await;
    assert_eq!(refused(ambiguous), ErrorKind::PreconditionFailed);
    assert_eq!(app.version_count().await, 2, "nothing was deleted");
}

#[tokio::test]
async fn if_match_must_name_the_current_version() {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    let mut body_in = patient_body("MRN-1");
    body_in["id"] = json!(pid.as_str());

    let mut stale = update(&pid, body_in.clone());
    stale.conditions.if_match = Some("W/\"9\"".into());
    assert_eq!(
        refused(app.handle(&admin(), stale).await),
        ErrorKind::PreconditionFailed
    );
    let mut stale_patch = patch(
        &pid,
        json!([{"op": "add", "path": "/gender", "value": "male"}]),
    );
    stale_patch.conditions.if_match = Some("W/\"2\"".into());
    assert_eq!(
        refused(app.handle(&admin(), stale_patch).await),
        ErrorKind::PreconditionFailed
    );
    let mut stale_delete = delete(&pid);
    stale_delete.conditions.if_match = Some("W/\"0\"".into());
    assert_eq!(
        refused(app.handle(&admin(), stale_delete).await),
        ErrorKind::PreconditionFailed
    );
    let mut garbled = update(&pid, body_in.clone());
    garbled.conditions.if_match = Some("version one".into());
    assert_eq!(
        refused(app.handle(&admin(), garbled).await),
        ErrorKind::Invalid
    );
    assert_eq!(app.version_count().await, 1);

    let mut current = update(&pid, body_in);
    current.conditions.if_match = Some("W/\"1\"".into());
    let reply = app.handle(&admin(), current).await.unwrap();
    assert_eq!(reply.version.map(|(v, _)| v), Some(2));
}

#[tokio::test]
async fn if_none_match_on_a_read_answers_not_modified_for_the_current_version() {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    let cases = [
        ("W/\"1\"", 304),
        ("\"1\"", 304),
        ("*", 304),
        ("W/\"7\", W/\"1\"", 304),
        ("W/\"2\"", 200),
    ];
    for (tag, status) in cases {
        let mut request = read(&pid);
        request.conditions.if_none_match = Some(tag.into());
        let reply = app.handle(&admin(), request).await.unwrap();
        assert_eq!(reply.status, status, "If-None-Match: {tag}");
        assert_eq!(reply.body.is_some(), status == 200, "If-None-Match: {tag}");
        assert_eq!(reply.version.map(|(v, _)| v), Some(1));
    }
}
