//! The token grant (SMART Backend Services): a registered client's signed assertion buys an
//! access token whose caller has the client's id, the default tenant and the granted scopes;
//! an assertion is good once, and each refusal names its reason in the audit record only.

use fhirwall_audit::EventKind;
use fhirwall_auth::ScopeSet;
use fhirwall_auth::testkeys::TestClientKey;
use fhirwall_model::TenantId;
use fhirwall_service::{ErrorKind, TokenRequest};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_client_assertion_buys_a_token_that_authenticates_the_client() {
    let app = App::new().await;
    let key = TestClientKey::generate_es384("client-key-1").unwrap();
    let client_id = app
        .add_client(&key, "system/Patient.rs system/Observation.rs")
        .await;
    let pid = app.create_patient("MRN-1").await;
    let who = requester_from("192.0.2.50");

    let assertion = app.assertion(&key, &client_id, "jti-1");
    let answer = app
        .service
        .token(
            &who,
            Ok(token_request(assertion.clone(), Some("system/Patient.rs"))),
        )
        .await
        .unwrap();
    assert_eq!(answer["token_type"], "bearer");
    assert_eq!(answer["scope"], "system/Patient.rs");
    assert_eq!(answer["expires_in"], 300);
    let token = answer["access_token"].as_str().unwrap().to_string();
    let login = app.audit_records().await.pop().unwrap();
    assert_eq!(login.kind, EventKind::Authentication);
    assert_eq!(login.subtype, "login");
    assert_eq!(login.http_status, 200);
    assert_eq!(login.client_id.as_deref(), Some(client_id.as_str()));
    assert!(!serde_json::to_string(&login).unwrap().contains(&token));

    let authorization = format!("Bearer {token}");
    let caller = app
        .service
        .authenticate(&who, Some(&authorization))
        .await
        .unwrap();
    assert_eq!(caller.client_id, client_id);
    assert_eq!(caller.tenant, TenantId::default_tenant());
    assert_eq!(caller.tenant.as_str(), "default");
    assert_eq!(caller.scopes, ScopeSet::parse("system/Patient.rs").unwrap());
    // The scheme is case-insensitive.
    let lower = format!("bearer {token}");
    assert!(app.service.authenticate(&who, Some(&lower)).await.is_ok());

    // The caller can do what the token grants and nothing more.
    assert_eq!(app.handle(&caller, read(&pid)).await.unwrap().status, 200);
    assert_eq!(
        refused(app.handle(&caller, create(patient_body("MRN-2"))).await),
        ErrorKind::Forbidden
    );
    let records = app.audit_records().await;
    let refusal = records.last().unwrap();
    assert_eq!(refusal.client_id.as_deref(), Some(client_id.as_str()));
    assert_eq!(refusal.http_status, 403);

    // The same assertion again is a replay.
    let replay = app
        .service
        .token(
            &who,
            Ok(token_request(assertion, Some("system/Patient.rs"))),
        )
        .await
        .unwrap_err();
    assert_eq!(replay.error, "invalid_client");
    assert_eq!(replay.audit_code, "replayed-jti");
    assert_eq!(replay.status, 400);
    // So is another assertion reusing the jti.
    let reused = app.token_request(&key, &client_id, "jti-1", None);
    let replay = app.service.token(&who, Ok(reused)).await.unwrap_err();
    assert_eq!(replay.audit_code, "replayed-jti");
    let records = app.audit_records().await;
    let last = records.last().unwrap();
    assert_eq!(last.outcome_code.as_deref(), Some("replayed-jti"));
    assert_eq!(last.http_status, 400);

    // Without a requested scope the client gets everything it was granted.
    let all = app.token_request(&key, &client_id, "jti-2", None);
    let answer = app.service.token(&who, Ok(all)).await.unwrap();
    assert_eq!(answer["scope"], "system/Patient.rs system/Observation.rs");

    // The token expires with the clock, after a few seconds' leeway.
    app.clock.advance_secs(304);
    assert!(
        app.service
            .authenticate(&who, Some(&authorization))
            .await
            .is_ok()
    );
    app.clock.advance_secs(1);
    let expired = app
        .service
        .authenticate(&who, Some(&authorization))
        .await
        .unwrap_err();
    assert_eq!(expired.kind, ErrorKind::Unauthenticated);
}

#[tokio::test]
async fn a_removed_client_is_cut_off() {
    let app = App::new().await;
    let key = TestClientKey::generate_es384("client-key-1").unwrap();
    let client_id = app.add_client(&key, "system/Patient.rs").await;
    let who = requester_from("192.0.2.51");
    let request = app.token_request(&key, &client_id, "jti-1", None);
    let answer = app.service.token(&who, Ok(request)).await.unwrap();
    let authorization = format!("Bearer {}", answer["access_token"].as_str().unwrap());
    app.service
        .authenticate(&who, Some(&authorization))
        .await
        .unwrap();

    fhirwall_store::AuthState::remove_client(
        app.store.as_ref(),
        &TenantId::default_tenant(),
        &client_id,
    )
    .await
    .unwrap();
    // The registration is re-checked every few seconds, not on every request.
    app.clock.advance_secs(6);
    let error = app
        .service
        .authenticate(&who, Some(&authorization))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unauthenticated);
    let records = app.audit_records().await;
    assert_eq!(
        records.last().unwrap().outcome_code.as_deref(),
        Some("client-removed")
    );
}

#[tokio::test]
async fn bad_token_requests_are_refused_with_their_reason_in_the_audit_record() {
    let app = App::new().await;
    let key = TestClientKey::generate_es384("client-key-1").unwrap();
    let stranger = TestClientKey::generate_es384("client-key-1").unwrap();
    let client_id = app.add_client(&key, "system/Patient.rs").await;
    let now = app.service.now().unix_seconds();
    let token_url = app.service.token_url();
    let claims =
        |iat: i64, aud: &str, jti: &str| TestClientKey::assertion_claims(&client_id, aud, iat, jti);
    let sign = |key: &TestClientKey, claims: serde_json::Value| {
        key.sign_with(&key.assertion_header(), &claims).unwrap()
    };
    let form = |assertion: String| token_request(assertion, None);
    let cases: Vec<(&str, TokenRequest, &str)> = vec![
        (
            "an unregistered client",
            form(
                stranger
                    .sign_assertion("no-such-client", &token_url, now, "j1")
                    .unwrap(),
            ),
            "unknown-client",
        ),
        (
            "another key under the registered kid",
            form(sign(&stranger, claims(now, &token_url, "j2"))),
            "bad_signature",
        ),
        (
            "an assertion for another audience",
            form(sign(
                &key,
                claims(now, "https://elsewhere.test/token", "j3"),
            )),
            "wrong_audience",
        ),
        (
            "an expired assertion",
            form(sign(&key, claims(now - 3600, &token_url, "j4"))),
            "expired",
        ),
        (
            "a scope that is not granted",
            token_request(
                sign(&key, claims(now, &token_url, "j5")),
                Some("system/Observation.rs"),
            ),
            "scope-not-granted",
        ),
        (
            "another grant type",
            TokenRequest {
                grant_type: Some("password".into()),
                ..form(sign(&key, claims(now, &token_url, "j6")))
            },
            "unsupported-grant",
        ),
        (
            "no assertion",
            TokenRequest {
                client_assertion: None,
                ..form(String::new())
            },
            "missing-assertion",
        ),
    ];
    for (name, request, audit_code) in cases {
        let refusal = app
            .service
            .token(&requester_from("192.0.2.52"), Ok(request))
            .await
            .unwrap_err();
        assert_eq!(refusal.audit_code, audit_code, "{name}");
        assert_eq!(refusal.status, 400, "{name}");
        // The caller hears only that the assertion was not accepted; the record says why.
        assert!(!refusal.description.contains(audit_code), "{name}");
        let records = app.audit_records().await;
        let record = records.last().unwrap();
        assert_eq!(record.outcome_code.as_deref(), Some(audit_code), "{name}");
        assert_eq!(record.subtype, "login", "{name}");
    }
    // None of the refusals used up the client: a good assertion still works.
    let good = app.token_request(&key, &client_id, "j-good", None);
    let answer = app
        .service
        .token(&requester_from("192.0.2.52"), Ok(good))
        .await
        .unwrap();
    assert_eq!(answer["scope"], json!("system/Patient.rs"));
}
